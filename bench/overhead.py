"""Training-time overhead of pruning: epoch time pruned / dense.

Measures, for tfprune (Keras 3; TensorFlow backend by default) and for TFMOT
(tf_keras, in its own subprocess with TF_USE_LEGACY_KERAS=1), on the same data:

- (a) MLP 784-300-100-10 on synthetic data (12000 samples of 784 Gaussian
  features, labels from a random linear teacher, 10 classes, batch 128,
  94 steps per epoch);
- (b) a small CNN (Conv 32 - Conv 64 - MaxPool - Dense 128 - Dense 10) on
  scikit-learn's `load_digits` (1797 images 8x8x1, batch 32, 57 steps per
  epoch; random images of the same shape if scikit-learn is missing);
- (c) with `--models mobilenetv2,resnet50,transformer`: `keras.applications`
  MobileNetV2 (96x96, batch 8) and ResNet50 (32x32, batch 8), `weights=None`,
  on random images, and a one-block transformer classifier (length 64,
  embedding 128, 4 heads, batch 32) on random tokens; 100 steps per epoch
  (one mask update per epoch at f=100), one epoch per slot.

Each model is trained dense and pruned with `ConstantSparsity(0.9,
begin_step=0, frequency=f)` for f = 1 (mask update at every step) and f = 100.
All variants of a worker are built, compiled and warmed up past their
first mask update (trace and compile excluded, reported apart as
`warmup_s`); then `--rounds` rounds each train every variant for one slot
of epochs (1, 2 for the CNN), in an order rotated each round, so dense and
pruned runs are interleaved. An epoch is timed from
`on_epoch_begin` to `on_epoch_end` (after the pruning callback's epoch-end
work). Reported: median epoch times, and the median over rounds of the
pruned/dense ratio of the same round.

Targets: tfprune <= 1.05x at frequency=100 and <= 1.3x at frequency=1.

Commands (from the repository root):

    .venv/bin/python bench/overhead.py            # full run, TF backend + TFMOT (~5 min)
    .venv/bin/python bench/overhead.py --quick    # smoke run (~1.5 min)
    .venv/bin/python bench/overhead.py --backends tensorflow,jax,torch
    .venv/bin/python bench/overhead.py --ablate   # + f=1 without mask updates
    .venv/bin/python bench/overhead.py --xla      # + TF backend with jit_compile=True

`--xla` adds a tfprune run on the TensorFlow backend whose dense and pruned
models are both compiled with `jit_compile=True` (Keras 3 leaves XLA off on
CPU-only TensorFlow by default; the JAX backend always compiles with XLA).

`--reference REF` adds, per backend, a run of the `tfprune` package of git
ref REF (extracted to a temporary directory), so a change's effect on the
overhead is measured in the same run as the code after it.

`--ablate` adds a tfprune variant at f=1 whose mask recomputation is disabled
(the pruner's per-step decision is a no-op), splitting the overhead into per-step
bookkeeping (masked forward, constraint, step counter, schedule, cond) and the
mask updates themselves.

Results: bench/results/overhead.json.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "overhead"
FREQS = (1, 100)
TARGETS = {1: 1.3, 100: 1.05}
TORCH_TARGETS = {1: None, 100: 1.2}  # PyTorch: f=100 only


def target(freq, backend):
    """The pruned/dense target of a run (None: reported only)."""
    return (TORCH_TARGETS if backend.startswith("torch") else TARGETS)[freq]


# --------------------------------------------------------------------- worker
# Real models (keras.applications, weights=None) on small synthetic inputs:
# (input shape, samples, batch). The transformer classifier reads token ids.
# 100 steps per epoch, so that an epoch at frequency=100 holds one mask update.
IMAGES = {"mobilenetv2": ((96, 96, 3), 800, 8), "resnet50": ((32, 32, 3), 800, 8)}
TOKENS = (64, 2000, 3200, 32)  # sequence length, vocabulary, samples, batch


def _data(model_name, quick, np):
    rng = np.random.default_rng(0)
    if model_name in IMAGES:
        shape, n, batch = IMAGES[model_name]
        x = rng.random((n // 2 if quick else n, *shape)).astype("float32")
        return x, rng.integers(0, 10, len(x)).astype("int32"), batch, f"random {shape} images"
    if model_name == "transformer":
        length, vocab, n, batch = TOKENS
        x = rng.integers(1, vocab, (n // 2 if quick else n, length)).astype("int32")
        y = (x[:, 0] % 10).astype("int32")  # learnable from the first token
        return x, y, batch, f"random token ids, length {length}"
    if model_name == "mlp":
        n = 2560 if quick else 12000
        x = rng.standard_normal((n, 784)).astype("float32")
        teacher = rng.standard_normal((784, 10)).astype("float32")
        y = np.argmax(x @ teacher, axis=1).astype("int32")
        return x, y, 128, "synthetic 784-d Gaussian, linear teacher"
    try:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype("float32")[..., None]
        y = digits.target.astype("int32")
        source = "sklearn load_digits"
    except ImportError:
        x = rng.random((1797, 8, 8, 1)).astype("float32")
        y = rng.integers(0, 10, 1797).astype("int32")
        source = "random 8x8x1 (scikit-learn missing)"
    return x, y, 32, source


def _model(keras, model_name):
    L = keras.layers
    if model_name == "mobilenetv2":
        return keras.applications.MobileNetV2(input_shape=IMAGES[model_name][0], weights=None, classes=10)
    if model_name == "resnet50":
        return keras.applications.ResNet50(input_shape=IMAGES[model_name][0], weights=None, classes=10)
    if model_name == "transformer":  # one encoder block, 4 heads of 32
        length, vocab, _, _ = TOKENS
        tokens = keras.Input((length,), dtype="int32")
        h = L.Embedding(vocab, 128)(tokens)
        a = L.MultiHeadAttention(4, 32)(h, h)
        h = L.LayerNormalization()(h + a)
        f = L.Dense(128)(L.Dense(512, activation="relu")(h))
        h = L.LayerNormalization()(h + f)
        return keras.Model(tokens, L.Dense(10)(L.GlobalAveragePooling1D()(h)))
    if model_name == "mlp":
        return keras.Sequential(
            [
                keras.Input((784,)),
                L.Dense(300, activation="relu"),
                L.Dense(100, activation="relu"),
                L.Dense(10),
            ]
        )
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(32, 3, padding="same", activation="relu"),
            L.Conv2D(64, 3, activation="relu"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(128, activation="relu"),
            L.Dense(10),
        ]
    )


def worker(cfg):
    import numpy as np

    kind = cfg["kind"]
    C.configure_threads(cfg.get("threads"), kind, cfg.get("backend"))
    load_begin = C.load_average()
    if kind == "tfmot":
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        sparsity = tfmot.sparsity.keras
        prune = sparsity.prune_low_magnitude
        schedule = sparsity.ConstantSparsity
        step_callback = sparsity.UpdatePruningStep
    else:
        import keras

        import tfprune

        prune = tfprune.prune_low_magnitude
        schedule = tfprune.ConstantSparsity
        step_callback = tfprune.UpdatePruningStep

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    result = {"kind": kind, "versions": C.versions(kind), "models": {}}
    for model_name in cfg["models"]:
        x, y, batch, source = _data(model_name, cfg["quick"], np)
        variants = ["dense"] + [f"f{f}" for f in FREQS]
        if cfg.get("ablate") and kind == "tfprune":
            variants.append("f1_no_mask_update")
        models = {}
        for variant in variants:
            keras.utils.set_random_seed(0)
            model = _model(keras, model_name)
            if variant != "dense":
                freq = int(variant.split("_")[0][1:])
                try:
                    model = prune(model, pruning_schedule=schedule(0.9, 0, frequency=freq))
                except ValueError as error:  # TFMOT prunes no MultiHeadAttention
                    result["models"][model_name] = {"error": str(error).splitlines()[0]}
                    break
                if variant.endswith("no_mask_update"):
                    for layer in model.layers:
                        if type(layer).__name__ == "PruneLowMagnitude":
                            layer.pruner.on_step = lambda wrapper, due=False: None
            compile_args = {"jit_compile": True} if cfg.get("jit_compile") else {}
            model.compile(
                optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                **compile_args,
            )
            models[variant] = model

        if model_name in result["models"]:
            continue

        def train(variant, epochs, models=models, x=x, y=y, batch=batch):
            timer = EpochTimer()
            callbacks = [] if variant == "dense" else [step_callback()]
            models[variant].fit(
                x,
                y,
                batch_size=batch,
                epochs=epochs,
                verbose=0,
                shuffle=True,
                callbacks=callbacks + [timer],
            )
            return timer.times

        warm = {}
        steps_per_epoch = -(-len(x) // batch)
        for variant in variants:  # trace/compile up to the first mask update, excluded
            freq = 1 if variant == "dense" else int(variant.split("_")[0][1:])
            start = time.perf_counter()
            train(variant, max(1, -(-(freq + 1) // steps_per_epoch)))
            warm[variant] = time.perf_counter() - start
        print(f"{model_name}: warm-up {warm}", flush=True)  # progress, in the worker's log
        epochs = cfg["epochs_per_slot"][model_name]
        slots = {v: [] for v in variants}
        for r in range(cfg["rounds"]):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                slots[variant].append(C.median(train(variant, epochs)))
        ratios = {
            v: [p / d for p, d in zip(slots[v], slots["dense"])]
            for v in variants
            if v != "dense"
        }
        sparsities = {}
        for variant in variants:
            if variant == "dense":
                continue
            zeros = total = 0
            for layer in models[variant].layers:
                for weight, _, _ in getattr(layer, "pruning_vars", []):
                    kernel = keras.ops.convert_to_numpy(weight) if kind != "tfmot" else weight.numpy()
                    zeros += int(np.sum(kernel == 0))
                    total += kernel.size
            sparsities[variant] = zeros / max(total, 1)
        result["models"][model_name] = {
            "data": source,
            "samples": int(len(x)),
            "batch": batch,
            "steps_per_epoch": int(-(-len(x) // batch)),
            "epochs_per_slot": epochs,
            "warmup_s": warm,
            "slot_epoch_s": slots,
            "median_epoch_s": {v: C.median(t) for v, t in slots.items()},
            "round_ratios": ratios,
            "median_ratio": {v: C.median(r) for v, r in ratios.items()},
            "final_kernel_sparsity": sparsities,
        }
    result["load_average"] = {"begin": load_begin, "end": C.load_average()}
    C.write_worker_result(cfg, result)


# --------------------------------------------------------------------- parent
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    parser.add_argument("--backends", default="tensorflow", help="tfprune backends, comma separated")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7, torch 3; quick 2)")
    parser.add_argument("--no-tfmot", action="store_true", help="skip the TFMOT worker")
    parser.add_argument("--ablate", action="store_true", help="add f=1 without mask updates")
    parser.add_argument(
        "--xla", action="store_true",
        help="add a TensorFlow-backend run compiled with jit_compile=True (XLA)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", default=None,
        help="git ref of tfprune to time beside this checkout (e.g. a commit before a change)",
    )  # fmt: skip
    parser.add_argument(
        "--models", default="mlp,cnn", help="of mlp, cnn, mobilenetv2, resnet50, transformer"
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="CPU threads per worker (default 1; 0 = library defaults)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=int, default=1800,
        help="seconds per worker (default 1800; XLA compiles real models for minutes)",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    models = [m for m in args.models.split(",") if m]
    backends = C.parse_backends(args.backends)
    base = {
        "quick": args.quick,
        "models": models,
        "ablate": args.ablate,
        "epochs_per_slot": {
            "mlp": 1, "cnn": 1 if args.quick else 2, "mobilenetv2": 1, "resnet50": 1,
            "transformer": 1,
        },  # fmt: skip
        "threads": args.threads or None,
    }

    def rounds_for(backend):
        if args.rounds:
            return args.rounds
        if args.quick:
            return 2
        return 3 if backend == "torch" else 7

    print(f"overhead: models={models} backends={backends} quick={args.quick} xla={args.xla}")
    runs = {}
    labels = list(backends) + (["tensorflow-xla"] if args.xla else [])
    for label in labels:
        backend = label.split("-")[0]
        cfg = dict(
            base, kind="tfprune", backend=backend, rounds=rounds_for(backend),
            jit_compile=label.endswith("-xla"),
        )  # fmt: skip
        runs[f"tfprune[{label}]"] = C.run_worker(
            __file__, NAME, f"tfprune-{label}", cfg, "tfprune", backend, timeout=args.timeout
        )
    if args.reference:
        repo, sha = C.checkout(args.reference)
        for backend in backends:
            label = f"{backend}@{sha}"
            cfg = dict(base, kind="tfprune", backend=backend, rounds=rounds_for(backend),
                       ablate=False, jit_compile=False)  # fmt: skip
            runs[f"tfprune[{label}]"] = C.run_worker(
                __file__, NAME, f"tfprune-{label}", cfg, "tfprune", backend, repo=repo,
                timeout=args.timeout,
            )
            labels.append(label)
    if not args.no_tfmot:
        cfg = dict(base, kind="tfmot", rounds=rounds_for("tensorflow"))
        runs["tfmot[tf_keras]"] = C.run_worker(
            __file__, NAME, "tfmot", cfg, "tfmot", timeout=args.timeout
        )

    C.save_results(
        NAME,
        {
            "command": " ".join(["python", "bench/overhead.py"] + sys.argv[1:]),
            "targets_pruned_over_dense": {f"f{k}": v for k, v in TARGETS.items()},
            "runs": runs,
        },
    )
    report(runs, models, labels, args)


def _get(run, model, key, variant):
    try:
        return run["models"][model][key][variant]
    except (KeyError, TypeError):
        return None


def _ratio_cell(run, model, variant):
    ratio = _get(run, model, "median_ratio", variant)
    values = _get(run, model, "round_ratios", variant)
    if ratio is None:
        return "-", "-"
    spread = f"{min(values):.2f}-{max(values):.2f}" if values else ""
    return f"{ratio:.2f}x", spread


def report(runs, models, backends, args):
    tfmot = runs.get("tfmot[tf_keras]", {})
    headers = [
        "model", "freq", "tfprune backend",
        "tfprune dense s", "tfprune pruned s", "tfprune ratio", "(range)", "target", "met",
        "first epochs s",
        "TFMOT dense s", "TFMOT pruned s", "TFMOT ratio", "(range)",
        "TFMOT/tfprune pruned",
    ]  # fmt: skip
    rows = []
    for model in models:
        for backend in backends:
            run = runs.get(f"tfprune[{backend}]", {})
            for freq in FREQS:
                v = f"f{freq}"
                ratio = _get(run, model, "median_ratio", v)
                pruned = _get(run, model, "median_epoch_s", v)
                tfmot_pruned = _get(tfmot, model, "median_epoch_s", v)
                goal = target(freq, backend)
                met = "-" if ratio is None or goal is None else ("yes" if ratio <= goal else "NO")
                warm = _get(run, model, "warmup_s", v)
                rows.append(
                    [
                        model, freq, backend,
                        C.fmt(_get(run, model, "median_epoch_s", "dense")),
                        C.fmt(pruned),
                        *_ratio_cell(run, model, v),
                        "report" if goal is None else f"<={goal}x", met,
                        C.fmt(warm),
                        C.fmt(_get(tfmot, model, "median_epoch_s", "dense")),
                        C.fmt(tfmot_pruned),
                        *_ratio_cell(tfmot, model, v),
                        "-" if not (pruned and tfmot_pruned) else f"{tfmot_pruned / pruned:.2f}x",
                    ]
                )  # fmt: skip
            if args.ablate:
                v = "f1_no_mask_update"
                rows.append(
                    [model, "1*", backend,
                     C.fmt(_get(run, model, "median_epoch_s", "dense")),
                     C.fmt(_get(run, model, "median_epoch_s", v)),
                     *_ratio_cell(run, model, v), "", "", "", "", "", "", "", ""]
                )  # fmt: skip
    print("\nFinal kernel sparsity of pruned models (sanity check, target 0.9):")
    for name, run in runs.items():
        for model in models:
            sp = (run.get("models", {}).get(model) or {}).get("final_kernel_sparsity")
            if sp:
                text = ", ".join(f"{k}={v:.3f}" for k, v in sp.items())
                steps = run["models"][model]["steps_per_epoch"]
                print(f"  {name:22s} {model}: {text}  ({steps} steps/epoch)")
    print("\nLoad average (1/5/15 min) at worker begin -> end (2 cores; > 2 means contention):")
    for name, run in runs.items():
        load = run.get("load_average")
        if load:
            print(f"  {name:22s} {load['begin']} -> {load['end']}")
    for name, run in runs.items():
        if "error" in run:
            print(f"  {name}: ERROR {run['error']}")
    if args.ablate:
        print("\n1* = f=1 with mask recomputation disabled (per-step bookkeeping only)")
    print(
        "\nSteady-state epoch time (median over rounds), pruned/dense ratio (median of per-round"
        "\nratios); first epochs s: the warm-up up to the first mask update (tracing, compiling)"
    )
    print(C.table(headers, rows))


if __name__ == "__main__":
    main()
