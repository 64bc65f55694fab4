"""tfprune on an accelerator, without TensorFlow: overhead and mask update.

For a machine that has JAX (and/or PyTorch), keras and tfprune installed but
NO TensorFlow. The script never imports TensorFlow: by default it installs an
import hook that makes `import tensorflow` fail, as on such a machine, and it
checks at the end that no `tensorflow` module was loaded. scikit-learn is not
needed (synthetic data only).

Measures, on the Keras JAX backend by default (`--backend torch` for PyTorch):

1. Overhead: epoch time of an MLP 784-300-100-10 on synthetic data (12000
   samples, 784 Gaussian features, labels from a random linear teacher,
   batch 128), dense vs pruned with `ConstantSparsity(0.9, begin_step=0,
   frequency=f)` for f = 1 and f = 100. One warm-up epoch per variant
   (compile excluded), then `--rounds` rounds in rotated order; medians and
   the median of per-round pruned/dense ratios. Targets: <= 1.5x at f=1,
   <= 1.05x at f=100.
2. Mask update: one `(mask, threshold)` computation on an NxN float32 weight
   (`--sizes`, default 4096 and 8192) at sparsity 0.9: tfprune's radix select
   (`tfprune.selection.threshold_mask(abs(w), 0.9)`, under `jax.jit`) vs
   TFMOT's full sort in the backend's own ops (`lax.top_k` with k = n, as
   TFMOT does, and `jnp.sort`), threshold = (k-1)-th largest,
   k = max(round(n * (1 - s)), 1) in float32. Masks are checked identical.
   Target: full sort / tfprune >= 10x.

Also printed: the device (`jax.devices()` / `torch.cuda.get_device_name`) and
a static check of which tfprune modules import TensorFlow at top level.

Commands:

    KERAS_BACKEND=jax python bench/gpu.py            # full run (a few minutes)
    KERAS_BACKEND=jax python bench/gpu.py --quick    # smoke run
    python bench/gpu.py --backend torch               # Keras PyTorch backend

Results: bench/results/gpu.json (or `--out PATH`).
"""

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time

TARGETS = {1: 1.5, 100: 1.05}
MASK_TARGET = 10.0


def _block_tensorflow():
    """Makes `import tensorflow` fail, as on a machine without it.

    A `None` entry in `sys.modules` makes `import tensorflow` raise
    ImportError and `importlib.util.find_spec("tensorflow")` return None
    (libraries probing for optional modules, e.g. torch._dynamo, see it absent).
    """
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        raise SystemExit("tensorflow was imported before bench/gpu.py could block it")
    sys.modules["tensorflow"] = None


def _median(values):
    return statistics.median(values) if values else float("nan")


def _table(headers, rows):
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def static_tensorflow_imports(package_dir):
    """tfprune modules importing tensorflow at top level vs inside functions."""
    top, lazy = [], []
    for file in sorted(os.listdir(package_dir)):
        if not file.endswith(".py"):
            continue
        with open(os.path.join(package_dir, file)) as f:
            tree = ast.parse(f.read())
        parents = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if not any(n == "tensorflow" or n.startswith("tensorflow.") for n in names):
                continue
            scope, parent = None, parents.get(node)
            while parent is not None:
                if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    scope = parent.name
                    break
                parent = parents.get(parent)
            where = f"{file}:{node.lineno}"
            (lazy if scope else top).append(where + (f" (in {scope})" if scope else ""))
    return {"top_level": top, "inside_functions": lazy}


# ------------------------------------------------------------------ overhead
def overhead(keras, tfprune, np, args):
    rng = np.random.default_rng(0)
    n = 2560 if args.quick else 12000
    x = rng.standard_normal((n, 784)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((784, 10)).astype("float32"), axis=1)
    L = keras.layers

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    variants = ["dense", "f1", "f100"]
    models = {}
    for variant in variants:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((784,)),
                L.Dense(300, activation="relu"),
                L.Dense(100, activation="relu"),
                L.Dense(10),
            ]
        )
        if variant != "dense":
            schedule = tfprune.ConstantSparsity(0.9, 0, frequency=int(variant[1:]))
            model = tfprune.prune_low_magnitude(model, pruning_schedule=schedule)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        models[variant] = model

    def train(variant):
        timer = EpochTimer()
        callbacks = [] if variant == "dense" else [tfprune.UpdatePruningStep()]
        models[variant].fit(
            x, y, batch_size=128, epochs=1, verbose=0, callbacks=callbacks + [timer]
        )
        return timer.times[0]

    warm = {v: train(v) for v in variants}
    slots = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants[r % 3 :] + variants[: r % 3]:
            slots[variant].append(train(variant))
    ratios = {
        v: [p / d for p, d in zip(slots[v], slots["dense"])] for v in variants[1:]
    }
    sparsity = {}
    for v in variants[1:]:
        kernels = [
            keras.ops.convert_to_numpy(w)
            for layer in models[v].layers
            for w, _, _ in getattr(layer, "pruning_vars", [])
        ]
        sparsity[v] = float(
            sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
        )
    return {
        "samples": n,
        "steps_per_epoch": -(-n // 128),
        "warmup_s": warm,
        "epoch_s": slots,
        "median_epoch_s": {v: _median(t) for v, t in slots.items()},
        "round_ratios": ratios,
        "median_ratio": {v: _median(r) for v, r in ratios.items()},
        "final_kernel_sparsity": sparsity,
    }


# --------------------------------------------------------------- mask update
def _methods(backend_name, sparsity):
    """name -> (compiled fn, sync fn, to_tensor, to_numpy)."""
    from keras import ops

    from tfprune import selection

    def tfprune_fn(w):
        return selection.threshold_mask(ops.abs(w), sparsity)

    if backend_name == "jax":
        import jax
        import jax.numpy as jnp

        def keep(n):
            k = jnp.round(jnp.float32(n) * (jnp.float32(1) - jnp.float32(sparsity)))
            return jnp.maximum(k, 1.0).astype(jnp.int32)

        def top_k(w):
            a = jnp.abs(w)
            flat = a.reshape(-1)
            values, _ = jax.lax.top_k(flat, flat.shape[0])
            t = values[keep(flat.shape[0]) - 1]
            return a >= t, t

        def sort(w):
            a = jnp.abs(w)
            flat = a.reshape(-1)
            values = jnp.sort(flat)  # ascending: k-th largest is at n - k
            t = values[flat.shape[0] - keep(flat.shape[0])]
            return a >= t, t

        fns = {
            "tfprune": jax.jit(tfprune_fn),
            "full_top_k": jax.jit(top_k),
            "full_sort": jax.jit(sort),
        }
        return fns, jax.block_until_ready, jnp.asarray, np_of

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def keep_t(n):
        k = torch.round(
            torch.tensor(float(n), dtype=torch.float32)
            * (1 - torch.tensor(sparsity, dtype=torch.float32))
        )
        return max(int(k.item()), 1)

    def top_k_t(w):
        a = torch.abs(w)
        flat = a.reshape(-1)
        values, _ = torch.topk(flat, flat.numel())
        t = values[keep_t(flat.numel()) - 1]
        return a >= t, t

    def sort_t(w):
        a = torch.abs(w)
        flat = a.reshape(-1)
        values, _ = torch.sort(flat)
        t = values[flat.numel() - keep_t(flat.numel())]
        return a >= t, t

    def sync(value):
        if device == "cuda":
            torch.cuda.synchronize()
        return value

    fns = {"tfprune": tfprune_fn, "full_top_k": top_k_t, "full_sort": sort_t}
    return fns, sync, lambda a: torch.from_numpy(a).to(device), np_of


def np_of(value):
    import keras

    return keras.ops.convert_to_numpy(value)


def mask_update(backend_name, np, args):
    fns, sync, to_tensor, to_numpy = _methods(backend_name, 0.9)
    out = []
    rng = np.random.default_rng(0)
    sizes = [1024] if args.quick else [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        w = rng.standard_normal((size, size)).astype("float32")
        x = to_tensor(w)
        entry = {"size": size, "n": size * size, "median_s": {}, "errors": {}}
        masks = {}
        live = {}
        for name, fn in fns.items():
            try:
                m, t = sync(fn(x))  # compile + first run
                masks[name] = (to_numpy(m).astype(bool), float(to_numpy(t)))
                live[name] = fn
            except Exception as error:  # e.g. top_k with k = n unsupported
                entry["errors"][name] = f"{type(error).__name__}: {str(error)[:200]}"
        times = {name: [] for name in live}
        for _ in range(args.reps):
            for name, fn in live.items():
                start = time.perf_counter()
                sync(fn(x))
                times[name].append(time.perf_counter() - start)
        entry["median_s"] = {k: _median(v) for k, v in times.items()}
        entry["times_s"] = times
        if "tfprune" in masks:
            ref, ref_t = masks["tfprune"]
            entry["identical_to_tfprune"] = {
                k: bool(np.array_equal(m, ref)) and t == ref_t for k, (m, t) in masks.items()
            }
            entry["kept"] = int(ref.sum())
            entry["threshold"] = ref_t
        out.append(entry)
        del x
    return out


# ---------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default=None, choices=["jax", "torch"],
                        help="Keras backend (default: $KERAS_BACKEND if jax/torch, else jax)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=None, help="overhead rounds (7; quick 2)")
    parser.add_argument("--sizes", default="4096,8192", help="mask update sizes (NxN)")
    parser.add_argument("--reps", type=int, default=None, help="mask update reps (7; quick 3)")
    parser.add_argument("--allow-tensorflow", action="store_true", help="do not block TF imports")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.reps = args.reps or (3 if args.quick else 7)
    env_backend = os.environ.get("KERAS_BACKEND")
    backend_name = args.backend or (env_backend if env_backend in ("jax", "torch") else "jax")
    os.environ["KERAS_BACKEND"] = backend_name
    if not args.allow_tensorflow:
        _block_tensorflow()

    import keras
    import numpy as np

    import tfprune

    assert keras.backend.backend() == backend_name, keras.backend.backend()
    if backend_name == "jax":
        import jax

        devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
        versions = {"jax": jax.__version__}
    else:
        import torch

        devices = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else ["cpu"]
        )
        versions = {"torch": torch.__version__}
    versions.update(keras=keras.__version__, tfprune=tfprune.__version__)
    print(f"gpu.py: backend={backend_name} devices={devices} versions={versions}")
    static = static_tensorflow_imports(os.path.dirname(tfprune.__file__))

    print("\n[1/2] overhead (MLP 784-300-100-10) ...", flush=True)
    over = overhead(keras, tfprune, np, args)
    print("[2/2] mask update ...", flush=True)
    masks = mask_update(backend_name, np, args)
    tf_loaded = sorted(
        m
        for m, module in sys.modules.items()
        if module is not None and (m == "tensorflow" or m.startswith("tensorflow."))
    )

    rows = []
    for freq in (1, 100):
        v = f"f{freq}"
        ratio = over["median_ratio"][v]
        r = over["round_ratios"][v]
        rows.append(
            [freq, f"{over['median_epoch_s']['dense']:.3f}", f"{over['median_epoch_s'][v]:.3f}",
             f"{ratio:.2f}x", f"{min(r):.2f}-{max(r):.2f}", f"<={TARGETS[freq]}x",
             "yes" if ratio <= TARGETS[freq] else "NO", f"{over['final_kernel_sparsity'][v]:.3f}"]
        )  # fmt: skip
    print(f"\nOverhead on {devices[0]} ({backend_name}), {over['steps_per_epoch']} steps/epoch")
    print(_table(["freq", "dense s", "pruned s", "ratio", "(range)", "target", "met", "sparsity"], rows))

    rows = []
    for entry in masks:
        base = entry["median_s"].get("tfprune")
        for name, seconds in entry["median_s"].items():
            ratio = seconds / base if base else float("nan")
            rows.append(
                [f"{entry['size']}x{entry['size']}", name, f"{1e3 * seconds:.2f}",
                 "1x" if name == "tfprune" else f"{ratio:.1f}x",
                 "" if name == "tfprune" else ("yes" if ratio >= MASK_TARGET else "NO"),
                 "yes" if entry.get("identical_to_tfprune", {}).get(name) else "NO"]
            )  # fmt: skip
        for name, error in entry["errors"].items():
            rows.append([f"{entry['size']}x{entry['size']}", name, "ERROR", error, "", ""])
    print(f"\nOne mask update at sparsity 0.9 on {devices[0]} (median of {args.reps})")
    print(_table(["weight", "method", "ms", "this / tfprune", f">={MASK_TARGET:g}x", "same mask"], rows))

    print("\nTensorFlow modules loaded during the run:", tf_loaded or "none")
    print("tfprune modules importing tensorflow at top level:", static["top_level"] or "none")
    print("  (inside functions, run only on the TF backend:", static["inside_functions"], ")")

    result = {
        "command": " ".join(["python", "bench/gpu.py"] + sys.argv[1:]),
        "backend": backend_name,
        "devices": devices,
        "versions": versions,
        "platform": platform.platform(),
        "tensorflow_blocked": not args.allow_tensorflow,
        "tensorflow_modules_loaded": tf_loaded,
        "tfprune_static_tensorflow_imports": static,
        "overhead": over,
        "overhead_targets": {f"f{k}": v for k, v in TARGETS.items()},
        "mask_update": masks,
        "mask_update_target": MASK_TARGET,
    }
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gpu.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nSaved {out}")
    if tf_loaded:
        sys.exit("tensorflow was imported")


if __name__ == "__main__":
    main()
