"""Bytes of pruning state per pruned weight element: tfprune vs TFMOT.

For an MLP 784-300-100-10 and a CNN (28x28x1 -> Conv 32 -> Conv 64 -> MaxPool
-> Dense 128 -> Dense 10), wrapped with `prune_low_magnitude`, sums the bytes
(`size * itemsize`) of every variable a pruning wrapper owns beyond the
wrapped layer's own weights (tfprune: a boolean mask and a float32 threshold per
pruned weight, one int64 `pruning_step` per wrapper; TFMOT, in a subprocess
with TF_USE_LEGACY_KERAS=1: a float32 mask, a float32 threshold, an int64
`pruning_step`, also on the layers it wraps without pruning anything) and
divides by the number of pruned weight elements. Target: tfprune <= 1 byte per
element.

"No loss of saved information" check (tfprune, per backend): an MLP is
pruned and trained part of the way through a `PolynomialDecay` schedule, saved
to `.keras`, reloaded with `keras.models.load_model`, and its masks,
thresholds, pruning steps, all weights (optimizer state included) and
predictions are compared with the original; both then train one more epoch
on the same batches and the new masks are compared again (resume check).

Peak training memory (TensorFlow and JAX): `keras.applications.MobileNetV2`
(96x96, `weights=None`, batch 8, random images) trained for 40 steps, dense
and pruned (`ConstantSparsity(0.9, 0, frequency=10)`, so four mask updates),
each in a fresh subprocess; reported is the process's peak resident size
(`ru_maxrss`) and its difference, beside the bytes of pruning state.

Commands (from the repository root):

    .venv/bin/python bench/memory.py           # 3 backends + TFMOT + peak (~3 min)
    .venv/bin/python bench/memory.py --quick   # TF backend + TFMOT
    .venv/bin/python bench/memory.py --backends jax

Results: bench/results/memory.json.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "memory"
TARGET = 1.0


# --------------------------------------------------------------------- worker
def _models(keras):
    L = keras.layers
    mlp = keras.Sequential(
        [
            keras.Input((784,)),
            L.Dense(300, activation="relu"),
            L.Dense(100, activation="relu"),
            L.Dense(10),
        ]
    )
    cnn = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(32, 3, activation="relu"),
            L.Conv2D(64, 3, activation="relu"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(128, activation="relu"),
            L.Dense(10),
        ]
    )
    return {"mlp": mlp, "cnn": cnn}


def _role(name):
    name = name.split("/")[-1].split(":")[0]
    for role in ("mask", "threshold", "pruning_step"):
        if name.endswith(role):
            return role
    return name


def _state(model, np):
    """Pruning-state bytes by role, and pruned element count."""
    by_role = {}
    elements = 0
    wrappers = 0
    for layer in model.layers:
        if type(layer).__name__ != "PruneLowMagnitude":
            continue
        wrappers += 1
        inner = {id(v) for v in layer.layer.weights}
        for v in layer.weights:
            if id(v) in inner:
                continue
            dtype = np.dtype(getattr(v.dtype, "name", v.dtype))
            nbytes = int(np.prod(v.shape)) * dtype.itemsize
            entry = by_role.setdefault(_role(v.name), {"bytes": 0, "count": 0, "dtypes": []})
            entry["bytes"] += nbytes
            entry["count"] += 1
            if dtype.name not in entry["dtypes"]:
                entry["dtypes"].append(dtype.name)
        for weight, _, _ in layer.pruning_vars:
            elements += int(np.prod(weight.shape))
    total = sum(e["bytes"] for e in by_role.values())
    weight_bytes = sum(
        int(np.prod(v.shape)) * np.dtype(getattr(v.dtype, "name", v.dtype)).itemsize
        for layer in model.layers
        if type(layer).__name__ == "PruneLowMagnitude"
        for v in layer.layer.weights
    )
    return {
        "wrappers": wrappers,
        "pruned_elements": elements,
        "state_bytes": total,
        "bytes_per_element": total / elements,
        "mask_bytes_per_element": by_role.get("mask", {}).get("bytes", 0) / elements,
        "by_role": by_role,
        "wrapped_layer_weight_bytes": weight_bytes,
    }


def _save_reload_check(keras, tfprune, np, tmp):
    """Prune + train an MLP, save to .keras, reload, compare everything."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1024, 784)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((784, 10)).astype("float32"), axis=1)
    keras.utils.set_random_seed(0)
    model = _models(keras)["mlp"]
    schedule = tfprune.PolynomialDecay(
        initial_sparsity=0.2, final_sparsity=0.9, begin_step=0, end_step=100, frequency=4
    )
    model = tfprune.prune_low_magnitude(model, pruning_schedule=schedule)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    fit = {"batch_size": 32, "verbose": 0, "shuffle": False}
    model.fit(x, y, epochs=1, callbacks=[tfprune.UpdatePruningStep()], **fit)
    path = os.path.join(tmp, "pruned.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    def state(m):
        out = []
        for layer in tfprune.wrapper.collect_prunable_layers(m):
            for weight, mask, threshold in layer.pruning_vars:
                out.append(
                    {
                        "layer": layer.name,
                        "mask": keras.ops.convert_to_numpy(mask),
                        "threshold": keras.ops.convert_to_numpy(threshold),
                        "weight": keras.ops.convert_to_numpy(weight),
                        "step": int(keras.ops.convert_to_numpy(layer.pruning_step)),
                    }
                )
        return out

    a, b = state(model), state(loaded)
    check = {
        "pruned_layers": len(a),
        "steps_trained": a[0]["step"] if a else None,
        "mask_sparsity": [float(1 - s["mask"].mean()) for s in a],
        "mask_dtype": str(a[0]["mask"].dtype) if a else None,
        "masks_identical": len(a) == len(b)
        and all(np.array_equal(p["mask"], q["mask"]) for p, q in zip(a, b)),
        "thresholds_identical": all(
            np.array_equal(p["threshold"], q["threshold"]) for p, q in zip(a, b)
        ),
        "pruning_steps_identical": all(p["step"] == q["step"] for p, q in zip(a, b)),
        "weights_identical": all(
            np.array_equal(p, q) for p, q in zip(model.get_weights(), loaded.get_weights())
        )
        and len(model.get_weights()) == len(loaded.get_weights()),
    }
    opt_a = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    opt_b = [keras.ops.convert_to_numpy(v) for v in loaded.optimizer.variables]
    check["optimizer_state_identical"] = len(opt_a) == len(opt_b) and all(
        np.array_equal(p, q) for p, q in zip(opt_a, opt_b)
    )
    pa = keras.ops.convert_to_numpy(model.predict(x[:256], verbose=0))
    pb = keras.ops.convert_to_numpy(loaded.predict(x[:256], verbose=0))
    check["predictions_identical"] = bool(np.array_equal(pa, pb))
    check["predictions_max_abs_diff"] = float(np.max(np.abs(pa - pb)))
    # Resume: one more epoch on the same batches from both.
    model.fit(x, y, epochs=1, callbacks=[tfprune.UpdatePruningStep()], **fit)
    loaded.fit(x, y, epochs=1, callbacks=[tfprune.UpdatePruningStep()], **fit)
    a2, b2 = state(model), state(loaded)
    check["resume_steps"] = [a2[0]["step"], b2[0]["step"]]
    check["resume_masks_identical"] = all(
        np.array_equal(p["mask"], q["mask"]) for p, q in zip(a2, b2)
    )
    check["resume_weights_max_abs_diff"] = float(
        max(np.max(np.abs(p["weight"] - q["weight"])) for p, q in zip(a2, b2))
    )
    check["file_bytes_pruned_keras"] = os.path.getsize(path)
    check["saved_file"] = _saved_file_breakdown(path, np, sum(s["weight"].size for s in a))
    stripped = tfprune.strip_pruning(loaded)
    stripped_path = os.path.join(tmp, "stripped.keras")
    stripped.save(stripped_path)
    check["file_bytes_stripped_keras"] = os.path.getsize(stripped_path)
    return check


def _saved_file_breakdown(path, np, pruned_elements):
    """Bytes of each part of a `.keras` file's `model.weights.h5`.

    `layers/<wrapper>/vars/*` are what the wrappers save themselves (the
    pruning state); `layers/<wrapper>/layer/*` is the wrapped layer.
    """
    import zipfile

    try:
        import h5py
    except ImportError:
        return {"error": "h5py missing"}
    import io

    with zipfile.ZipFile(path) as archive:
        data = archive.read("model.weights.h5")
    parts = {"wrapper_own": 0, "wrapped_layers": 0, "optimizer": 0, "other": 0}
    wrapper_own = []
    with h5py.File(io.BytesIO(data), "r") as f:

        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            nbytes = int(obj.size) * obj.dtype.itemsize
            pieces = name.split("/")
            if pieces[0] == "optimizer":
                parts["optimizer"] += nbytes
            elif len(pieces) > 2 and pieces[0] == "layers" and pieces[2] == "vars":
                parts["wrapper_own"] += nbytes
                wrapper_own.append([name, list(obj.shape), str(obj.dtype)])
            elif pieces[0] == "layers":
                parts["wrapped_layers"] += nbytes
            else:
                parts["other"] += nbytes

        f.visititems(visit)
    return {
        "bytes": parts,
        "wrapper_own_datasets": wrapper_own,
        "wrapper_own_bytes_per_element": parts["wrapper_own"] / pruned_elements,
        "wrapper_own_float32_weight_copies": sum(
            1 for _, shape, dtype in wrapper_own if dtype == "float32" and len(shape) >= 2
        ),
    }


def _peak_worker(cfg):
    """Trains MobileNetV2 dense or pruned; returns the process's peak RSS."""
    import resource

    import keras
    import numpy as np

    import tfprune

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), weights=None, classes=10)
    callbacks = []
    if cfg["variant"] == "pruned":
        schedule = tfprune.ConstantSparsity(0.9, 0, frequency=10)
        model = tfprune.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks = [tfprune.UpdatePruningStep()]
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(0)
    x = rng.random((160, 96, 96, 3)).astype("float32")
    y = rng.integers(0, 10, 160).astype("int32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    state = _state(model, np) if cfg["variant"] == "pruned" else None
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    C.write_worker_result(
        cfg,
        {"variant": cfg["variant"], "versions": C.versions("tfprune"),
         "peak_rss_mb": peak_kb / 1024, "state": state, "params": model.count_params()},
    )  # fmt: skip


def worker(cfg):
    kind = cfg["kind"]
    if kind == "peak":
        return _peak_worker(cfg)
    import numpy as np

    if kind == "tfmot":
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        prune = tfmot.sparsity.keras.prune_low_magnitude
        schedule = tfmot.sparsity.keras.ConstantSparsity(0.9, 0)
        tfprune = None
    else:
        import keras

        import tfprune
        import tfprune.wrapper  # noqa: F401

        prune = tfprune.prune_low_magnitude
        schedule = tfprune.ConstantSparsity(0.9, 0)
    result = {"kind": kind, "versions": C.versions(kind), "models": {}}
    for name, model in _models(keras).items():
        pruned = prune(model, pruning_schedule=schedule)
        pruned.build(model.input_shape)
        result["models"][name] = _state(pruned, np)
    if tfprune is not None and cfg.get("save_check", True):
        with tempfile.TemporaryDirectory() as tmp:
            result["save_reload"] = _save_reload_check(keras, tfprune, np, tmp)
    C.write_worker_result(cfg, result)


# --------------------------------------------------------------------- parent
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="TF backend only")
    parser.add_argument("--backends", default=None, help="default tensorflow,jax,torch")
    parser.add_argument("--no-tfmot", action="store_true")
    parser.add_argument("--no-peak", action="store_true", help="skip peak training memory")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    backends = C.parse_backends(
        args.backends or ("tensorflow" if args.quick else "tensorflow,jax,torch")
    )
    print(f"memory: backends={backends}")
    runs = {}
    for backend in backends:
        runs[f"tfprune[{backend}]"] = C.run_worker(
            __file__, NAME, f"tfprune-{backend}", {"kind": "tfprune"}, "tfprune", backend
        )
    if not args.no_tfmot:
        runs["tfmot[tf_keras]"] = C.run_worker(
            __file__, NAME, "tfmot", {"kind": "tfmot"}, "tfmot"
        )
    peaks = {}
    if not args.no_peak:
        for backend in [b for b in backends if b in ("tensorflow", "jax")]:
            for variant in ("dense", "pruned"):
                peaks[f"{backend}-{variant}"] = C.run_worker(
                    __file__, NAME, f"peak-{backend}-{variant}",
                    {"kind": "peak", "variant": variant}, "tfprune", backend,
                )  # fmt: skip
    C.save_results(
        NAME,
        {
            "command": " ".join(["python", "bench/memory.py"] + sys.argv[1:]),
            "target_bytes_per_element": TARGET,
            "runs": runs,
            "peak_training_memory": peaks,
        },
    )
    report(runs)
    report_peaks(peaks)


def report_peaks(peaks):
    rows = []
    for backend in ("tensorflow", "jax"):
        dense, pruned = peaks.get(f"{backend}-dense"), peaks.get(f"{backend}-pruned")
        if not dense or not pruned:
            continue
        if "error" in dense or "error" in pruned:
            rows.append([backend, "ERROR", "", "", "", ""])
            continue
        state = pruned["state"]
        rows.append([
            backend, f"{dense['peak_rss_mb']:.0f}", f"{pruned['peak_rss_mb']:.0f}",
            f"{pruned['peak_rss_mb'] - dense['peak_rss_mb']:+.0f}",
            f"{pruned['peak_rss_mb'] / dense['peak_rss_mb']:.3f}x",
            f"{state['state_bytes'] / 2**20:.2f} MB ({state['bytes_per_element']:.5f} B/elem)",
        ])  # fmt: skip
    if rows:
        print("\nPeak training memory, MobileNetV2 96x96, batch 8, 40 steps (process peak RSS, MB)")
        print(C.table(["backend", "dense", "pruned", "difference", "pruned/dense",
                       "pruning state"], rows))  # fmt: skip


def report(runs):
    rows = []
    for name, run in runs.items():
        if "error" in run:
            rows.append([name, "ERROR " + run["error"]] + [""] * 8)
            continue
        for model, s in run["models"].items():
            roles = s["by_role"]
            detail = ", ".join(
                f"{role} {e['count']}x{'/'.join(e['dtypes'])} {e['bytes']} B"
                for role, e in roles.items()
            )
            is_tfprune = name.startswith("tfprune")
            bpe = s["bytes_per_element"]
            rows.append(
                [
                    name,
                    model,
                    s["pruned_elements"],
                    s["state_bytes"],
                    f"{bpe:.5f}",
                    f"{s['mask_bytes_per_element']:.3f}",
                    f"{100 * s['state_bytes'] / s['wrapped_layer_weight_bytes']:.1f}%",
                    f"<={TARGET:g}" if is_tfprune else "",
                    ("yes" if bpe <= TARGET else "NO (masks alone: yes)"
                     if s["mask_bytes_per_element"] <= TARGET else "NO")
                    if is_tfprune else "",
                    detail,
                ]
            )  # fmt: skip
    print("\nPruning state per pruned weight element")
    print(
        C.table(
            ["framework", "model", "pruned elems", "state B", "B/elem", "mask B/elem",
             "vs layer weights", "target", "met", "variables"],
            rows,
        )
    )  # fmt: skip
    checks = [(n, r["save_reload"]) for n, r in runs.items() if "save_reload" in r]
    if checks:
        keys = [
            "masks_identical", "thresholds_identical", "pruning_steps_identical",
            "weights_identical", "optimizer_state_identical", "predictions_identical",
            "resume_masks_identical",
        ]  # fmt: skip
        print("\nSave (.keras) -> load_model -> compare (MLP pruned mid-schedule)")
        rows = []
        for name, c in checks:
            rows.append(
                [name, c["steps_trained"], c["mask_dtype"],
                 "/".join(f"{s:.2f}" for s in c["mask_sparsity"])]
                + ["yes" if c[k] else "NO" for k in keys]
                + [f"{c['resume_weights_max_abs_diff']:.1e}",
                   f"{c['file_bytes_pruned_keras'] / 1e6:.2f}/{c['file_bytes_stripped_keras'] / 1e6:.2f}"]
            )  # fmt: skip
        print(
            C.table(
                ["framework", "step", "mask dtype", "sparsity"]
                + [k.replace("_identical", "") + " ==" for k in keys]
                + ["resume max|dw|", "file MB pruned/stripped"],
                rows,
            )
        )
        print("\nSaved file (model.weights.h5): what the pruning wrappers write themselves")
        rows = []
        for name, c in checks:
            f = c.get("saved_file") or {}
            if "bytes" not in f:
                rows.append([name, f.get("error", "-"), "", "", ""])
                continue
            kinds = sorted({f"{tuple(shape)} {dtype}" for _, shape, dtype in f["wrapper_own_datasets"]})
            rows.append(
                [name, f["bytes"]["wrapper_own"], f"{f['wrapper_own_bytes_per_element']:.3f}",
                 f["wrapper_own_float32_weight_copies"], "; ".join(kinds)]
            )  # fmt: skip
        print(
            C.table(
                ["framework", "wrapper bytes", "B/pruned elem", "float32 weight copies",
                 "datasets"],
                rows,
            )
        )  # fmt: skip


if __name__ == "__main__":
    main()
