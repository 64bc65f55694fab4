"""Thinning: latency of dense vs thinned MobileNetV2 and ResNet50, against FLOPs.

For each model (`keras.applications`, `weights=None`, `--size` inputs) the
TensorFlow worker removes 30%, 50% and 75% of the channels of every
prunable group (`tfprune.prune(..., granularity="filter", round_to=8)`,
magnitude, then `tfprune.thin`), checks that the thinned model computes what the
masked one does, saves each model as `.keras` and times inference with
Keras (TensorFlow, the forward pass in a `tf.function`) and the TFLite
interpreter; a JAX worker loads the same files and times them with Keras
(JAX, `stateless_call` under `jax.jit`). Times are medians of `--repeats`
runs after warm-up, batch 1 and 32, all variants of a model measured side
by side in one process.

Reported per variant: FLOP ratio (thinned/dense, as `tfprune.count_flops`
counts them), parameter ratio, speed-up (dense time / thinned time) and its
efficiency: speed-up divided by the FLOP reduction (dense/thinned FLOPs);
the target is at least 0.8. Prints the table last, writes
`results/thinning.json` and `results/thinning.png`.

    python bench/thinning.py             # about 15 minutes on 2 CPU cores
    python bench/thinning.py --quick     # a smoke run
"""

import argparse
import json
import os
import sys
import tempfile
import time

import _common

MODELS = ("MobileNetV2", "ResNet50")


# ------------------------------------------------------------------ workers
def _timer(fn, x, repeats):
    for _ in range(2):
        fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return _common.median(times)


def _inference(model):
    """The model's forward pass compiled once (no `predict` data handling)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        step = jax.jit(
            lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0]
        )
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        return lambda x: step(tv, ntv, x).block_until_ready()
    import tensorflow as tf

    step = tf.function(lambda x: model(x, training=False))
    return lambda x: step(x).numpy()


def _keras_times(paths, config):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for key, path in paths.items():
        model = keras.models.load_model(path)
        run = _inference(model)
        out[key] = {}
        for batch in config["batches"]:
            x = rng.normal(size=(batch, config["size"], config["size"], 3)).astype("float32")
            out[key][str(batch)] = _timer(run, x, config["repeats"])
    return out


def _tflite_times(models, config):
    import numpy as np
    import tensorflow as tf

    try:  # the LiteRT package, where installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    rng = np.random.default_rng(0)
    out = {}
    for key, model in models.items():
        content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
        out[key] = {}
        for batch in config["batches"]:
            interpreter = Interpreter(model_content=content, num_threads=os.cpu_count())
            source = interpreter.get_input_details()[0]
            target = interpreter.get_output_details()[0]
            interpreter.resize_tensor_input(source["index"], (batch, config["size"], config["size"], 3))
            interpreter.allocate_tensors()
            x = rng.normal(size=(batch, config["size"], config["size"], 3)).astype("float32")

            def run(x, interpreter=interpreter, source=source, target=target):
                interpreter.set_tensor(source["index"], x)
                interpreter.invoke()
                return interpreter.get_tensor(target["index"])

            if batch == config["batches"][0]:
                error = float(np.abs(run(x) - model.predict_on_batch(x)).max())
                out[key]["tflite_max_abs_error"] = error
            out[key][str(batch)] = _timer(run, x, config["repeats"])
    return out


def digits(epochs, budget=0.5):
    """The demo's CNN: dense, then structured AGP to `budget` of its FLOPs
    removed while fine-tuning, thinned: test accuracies and FLOPs."""
    import keras
    import numpy as np

    import tfprune
    from tfprune import demo

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = demo.load_digits_split(0)
    dense = demo.build_cnn()
    demo._compile(dense, 1e-3)
    dense.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    steps = int(np.ceil(len(x_train) / 32))
    schedule = tfprune.AGP(budget, begin_step=0, end_step=steps * max(1, epochs - 5), frequency=steps)
    pruned = tfprune.prune(dense, schedule, granularity="filter", budget="flops")
    demo._compile(pruned, 5e-4)
    pruned.fit(
        x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
        callbacks=[tfprune.UpdatePruningStep()],
    )  # fmt: skip
    small = tfprune.thin(pruned)
    demo._compile(small, 5e-4)
    return {
        "dense_accuracy": float(dense.evaluate(x_test, y_test, verbose=0)[1]),
        "thinned_accuracy": float(small.evaluate(x_test, y_test, verbose=0)[1]),
        "flop_ratio": tfprune.count_flops(small) / tfprune.count_flops(dense),
        "param_ratio": small.count_params() / dense.count_params(),
        "layers": {
            layer.name: getattr(layer, "filters", getattr(layer, "units", None))
            for layer in small.layers
            if hasattr(layer, "filters") or hasattr(layer, "units")
        },
    }


def worker_tensorflow(config):
    import keras
    import numpy as np

    import tfprune

    rng = np.random.default_rng(0)
    result = {"versions": _common.versions("tfprune"), "models": {}, "paths": {}}
    result["digits"] = digits(config["digits_epochs"])
    print("digits", json.dumps(result["digits"]), flush=True)
    size = config["size"]
    x = rng.normal(loc=100.0, scale=50.0, size=(8, size, size, 3)).astype("float32")
    for name in config["models"]:
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
        norms = [n for n in model.layers if isinstance(n, keras.layers.BatchNormalization)]
        for n in norms:  # BatchNormalization statistics of real-looking inputs
            n.momentum = 0.0
        model(x, training=True)
        variants = {"dense": model}
        info = {"dense": {"flops": tfprune.count_flops(model), "params": model.count_params()}}
        for fraction in config["fractions"]:
            start = time.perf_counter()
            pruned = tfprune.prune(model, None, granularity="filter", round_to=8)
            tfprune.update_masks(pruned, fraction)
            small = tfprune.thin(pruned)
            key = f"{int(round(fraction * 100))}%"
            error = float(np.abs(pruned.predict_on_batch(x) - small.predict_on_batch(x)).max())
            variants[key] = small
            info[key] = {
                "flops": tfprune.count_flops(small),
                "params": small.count_params(),
                "thin_seconds": round(time.perf_counter() - start, 1),
                "max_abs_difference_vs_masked": error,
            }
        paths = {}
        for key, variant in variants.items():
            path = os.path.join(config["dir"], f"{name}-{key.rstrip('%')}.keras")
            variant.save(path)
            paths[key] = path
        result["paths"][name] = paths
        times = {"keras-tensorflow": _keras_times(paths, config)}
        times["tflite"] = _tflite_times(variants, config)
        result["models"][name] = {"variants": info, "times": times}
        print(name, json.dumps(info), flush=True)
    _common.write_worker_result(config, result)


def worker_jax(config):
    result = {"versions": _common.versions("tfprune"), "times": {}}
    for name, paths in config["paths"].items():
        result["times"][name] = _keras_times(paths, config)
    _common.write_worker_result(config, result)


# ------------------------------------------------------------------- parent
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        {"tensorflow": worker_tensorflow, "jax": worker_jax}[config["backend"]](config)
        return
    config = {
        "models": list(MODELS),
        "fractions": [0.3, 0.5, 0.75],
        "batches": [1, 32],
        "size": args.size,
        "repeats": args.repeats,
        "digits_epochs": 20,
    }
    if args.quick:
        config.update(
            models=["MobileNetV2"], fractions=[0.5], batches=[1, 4], size=64, repeats=2,
            digits_epochs=2,
        )  # fmt: skip
    script = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory() as directory:
        config["dir"] = directory
        print("Thinning: dense vs thinned latency")
        tf_result = _common.run_worker(
            script, "thinning", "tensorflow", dict(config, backend="tensorflow"), "tfprune",
            backend="tensorflow",
        )
        if "error" in tf_result:
            sys.exit(1)
        jax_result = _common.run_worker(
            script, "thinning", "jax", dict(config, backend="jax", paths=tf_result["paths"]),
            "tfprune", backend="jax",
        )
    rows, records = [], []
    for name, entry in tf_result["models"].items():
        times = dict(entry["times"])
        if "times" in jax_result:
            times["keras-jax"] = jax_result["times"][name]
        dense = entry["variants"]["dense"]
        for key, info in entry["variants"].items():
            if key == "dense":
                continue
            flop_ratio = info["flops"] / dense["flops"]
            for runtime, per_variant in times.items():
                for batch in config["batches"]:
                    speedup = per_variant["dense"][str(batch)] / per_variant[key][str(batch)]
                    efficiency = speedup * flop_ratio
                    records.append(
                        {
                            "model": name, "channels_removed": key, "runtime": runtime,
                            "batch": batch, "flop_ratio": flop_ratio,
                            "param_ratio": info["params"] / dense["params"],
                            "dense_ms": 1000 * per_variant["dense"][str(batch)],
                            "thinned_ms": 1000 * per_variant[key][str(batch)],
                            "speedup": speedup, "efficiency": efficiency,
                        }
                    )  # fmt: skip
                    rows.append(
                        [name, key, runtime, batch, _common.fmt(flop_ratio),
                         _common.fmt(info["params"] / dense["params"]),
                         _common.fmt(1000 * per_variant["dense"][str(batch)], ".1f"),
                         _common.fmt(1000 * per_variant[key][str(batch)], ".1f"),
                         _common.fmt(speedup, ".2f"), _common.fmt(efficiency, ".2f"),
                         "yes" if efficiency >= 0.8 else "NO"]
                    )  # fmt: skip
    payload = {
        "config": {k: v for k, v in config.items() if k != "dir"},
        "variants": {n: e["variants"] for n, e in tf_result["models"].items()},
        "tflite_max_abs_error": {
            n: {k: v.get("tflite_max_abs_error") for k, v in e["times"]["tflite"].items()}
            for n, e in tf_result["models"].items()
        },
        "records": records,
        "digits": tf_result["digits"],
        "versions": {"tensorflow": tf_result["versions"], "jax": jax_result.get("versions")},
    }
    _common.save_results("thinning", payload)
    _plot(records)
    print()
    print(
        _common.table(
            ["model", "removed", "runtime", "batch", "FLOPs", "params", "dense ms",
             "thin ms", "speed-up", "efficiency", ">=0.8"],
            rows,
        )
    )  # fmt: skip
    d = tf_result["digits"]
    print(
        f"\nDigits CNN, 50% of FLOPs removed by structured AGP while fine-tuning: test accuracy "
        f"{d['dense_accuracy']:.2%} dense -> {d['thinned_accuracy']:.2%} thinned "
        f"(FLOPs x{d['flop_ratio']:.3f}, parameters x{d['param_ratio']:.3f}; {d['layers']})"
    )


def _plot(records):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"keras-tensorflow": "o", "keras-jax": "s", "tflite": "^"}
    for (model, runtime, batch), color in zip(
        sorted({(r["model"], r["runtime"], r["batch"]) for r in records}),
        plt.cm.tab20.colors,
    ):
        points = sorted(
            (1 / r["flop_ratio"], r["speedup"])
            for r in records
            if (r["model"], r["runtime"], r["batch"]) == (model, runtime, batch)
        )
        ax.plot(*zip(*points), marker=markers.get(runtime, "o"), color=color,
                label=f"{model} {runtime} b{batch}")  # fmt: skip
    top = max(1 / r["flop_ratio"] for r in records) * 1.05
    ax.plot([1, top], [1, top], "k--", linewidth=1, label="speed-up = FLOP reduction")
    ax.plot([1, top], [0.8, 0.8 * top], "k:", linewidth=1, label="80% of it")
    ax.set_xlabel("FLOP reduction (dense / thinned FLOPs)")
    ax.set_ylabel("measured speed-up (dense / thinned time)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    path = os.path.join(_common.RESULTS, "thinning.png")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"Saved {os.path.relpath(path, _common.REPO)}")


if __name__ == "__main__":
    main()
