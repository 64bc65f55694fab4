"""XNNPACK sparse inference: dense vs sparse TFLite latency of a pruned MobileNet.

Model: MobileNet v1 (`--alpha`, `--size`, 1000 classes) as
`keras.applications.MobileNet` builds it, but with the stem conv and the
stride-2 depthwise convs padded by `ZeroPadding2D(1)` (Keras pads them
'same' and (0, 1): `tfprune.xnnpack.xnnpack_report` says what that breaks),
batch statistics of random images. Its 1x1 convs are pruned to 80% and 90%
by magnitude (`prune_low_magnitude` with `ConstantSparsity` and
`PruneForLatencyOnXNNPack`, one `update_masks`), stripped and converted to
`.tflite` twice: weights stored dense, and stored sparse
(`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`, which adds DENSIFY ops: the
TFLite delegate asks XNNPACK for sparse inference only for such weights).

Each runtime (`tf.lite`, and `ai_edge_litert` where installed) times every
file with its default XNNPACK delegate, batch 1, 1 and 2 threads, files
interleaved in every repeat (medians). Whether XNNPACK ran its sparse
kernels: the sparse run's output is compared bit for bit with the dense
run's on the same weights (XNNPACK's sparse path runs in NCHW with other
kernels, so its sums round differently). `--qemu PATH` repeats that check
with `ai_edge_litert` under `qemu-x86_64 -cpu Nehalem`, an x86 CPU without
AVX: XNNPACK turns sparse inference off on x86 CPUs with AVX.

Published speed-ups (Elsen et al. 2019; TF blog 2021): 1.3-2.4x on ARM phones.
Prints the findings and the table last, writes `results/xnnpack.json`.

    python bench/xnnpack.py              # about 3 minutes on 2 CPU cores
    python bench/xnnpack.py --quick      # a smoke run
    python bench/xnnpack.py --qemu /path/to/qemu-x86_64   # with the no-AVX check
"""

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common

SPARSITIES = (0.8, 0.9)


# ------------------------------------------------------------------ models
def mobilenet(alpha, size, xnnpack=True):
    """MobileNet v1; `xnnpack`: stride-2 convs padded by ZeroPadding2D(1)."""
    import keras
    from keras import layers as L

    if not xnnpack:
        return keras.applications.MobileNet(input_shape=(size, size, 3), alpha=alpha, weights=None)
    inputs = keras.Input((size, size, 3))
    x = L.ZeroPadding2D(1, name="conv1_pad")(inputs)
    x = L.Conv2D(int(32 * alpha), 3, strides=2, use_bias=False, name="conv1")(x)
    x = L.ReLU(6.0)(L.BatchNormalization()(x))
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    blocks += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (filters, strides) in enumerate(blocks, start=1):
        if strides == 2:
            x = L.ZeroPadding2D(1, name=f"conv_pad_{i}")(x)
        padding = "same" if strides == 1 else "valid"
        x = L.DepthwiseConv2D(3, strides=strides, padding=padding, use_bias=False,
                              name=f"conv_dw_{i}")(x)  # fmt: skip
        x = L.ReLU(6.0)(L.BatchNormalization()(x))
        x = L.Conv2D(int(filters * alpha), 1, use_bias=False, name=f"conv_pw_{i}")(x)
        x = L.ReLU(6.0)(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Reshape((int(1024 * alpha),))(x)
    return keras.Model(inputs, L.Dense(1000, name="predictions")(x), name="mobilenet_xnnpack")


def _verdict(report):
    failed = [c.name for c in report.conditions if not c.holds]
    return "meets all" if report.ok else "fails " + ", ".join(failed)


def _sizes(content):
    return len(content), len(gzip.compress(content))


# ------------------------------------------------------------------ worker
def _interpreters():
    """`{runtime: Interpreter class}`: tf.lite, and ai_edge_litert where installed."""
    import tensorflow as tf

    found = {"tf.lite": tf.lite.Interpreter}
    try:
        from ai_edge_litert.interpreter import Interpreter

        found["ai_edge_litert"] = Interpreter
    except ImportError:
        pass
    return found


def _op_counts(Interpreter, content):
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    return {"DENSIFY": names.count("DENSIFY"), "DELEGATE": names.count("DELEGATE"),
            "ops": len(names)}  # fmt: skip


def _runner(Interpreter, content, threads):
    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def run(x):
        interpreter.set_tensor(source, x)
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return run


def time_files(Interpreter, contents, x, threads, repeats, inner):
    """Median ms per invoke of each file, all interleaved; and outputs."""
    runners = {key: _runner(Interpreter, content, threads) for key, content in contents.items()}
    outputs = {key: run(x).copy() for key, run in runners.items()}  # also warms up
    keys = list(runners)
    samples = {key: [] for key in keys}
    before, wall = _cpu_seconds(), time.perf_counter()
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order
            run = runners[key]
            start = time.perf_counter()
            for _ in range(inner):
                run(x)
            samples[key].append(1000 * (time.perf_counter() - start) / inner)
    busy = (_cpu_seconds() - before) / (time.perf_counter() - wall)  # CPUs this process got
    return {k: _common.median(v) for k, v in samples.items()}, outputs, samples, busy


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(config):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfprune
    from tfprune.xnnpack import xnnpack_report

    rng = np.random.default_rng(0)
    size, alpha = config["size"], config["alpha"]
    result = {"versions": _common.versions("tfprune"), "cpu_flags": _cpu_flags()}
    result["keras_mobilenet"] = _verdict(xnnpack_report(mobilenet(alpha, size, xnnpack=False)))
    print("keras.applications.MobileNet:", result["keras_mobilenet"], flush=True)

    model = mobilenet(alpha, size)
    for layer in model.layers:  # batch statistics of one batch of random images
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(rng.normal(size=(8, size, size, 3)).astype("float32"), training=True)
    variants = {"dense": (model, False)}
    files = {"dense": {"sparsity_1x1": 0.0, "xnnpack_report": _verdict(xnnpack_report(model))}}
    for sparsity in config["sparsities"]:
        pruned = tfprune.prune_low_magnitude(
            model,
            pruning_schedule=tfprune.ConstantSparsity(sparsity, 0),
            pruning_policy=tfprune.PruneForLatencyOnXNNPack(),
        )
        tfprune.update_masks(pruned)
        plain = tfprune.strip_pruning(pruned)
        report = xnnpack_report(plain)
        tag = f"{round(sparsity * 100)}%"
        found = report.condition("sparsity")
        zeros = sum(c["zeros"] for c in report.convs) / sum(c["params"] for c in report.convs)
        for encoding in ("dense-stored", "sparse-stored"):
            key = f"{tag} {encoding}"
            variants[key] = (plain, encoding == "sparse-stored")
            files[key] = {"sparsity_1x1": zeros, "xnnpack_report": _verdict(report)}
        print(tag, found.found, _verdict(report), flush=True)
    contents = {}
    for key, (keras_model, sparse) in variants.items():
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        if sparse:
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        contents[key] = converter.convert()
        path = os.path.join(config["dir"], key.replace("%", "").replace(" ", "-") + ".tflite")
        with open(path, "wb") as f:
            f.write(contents[key])
        files[key].update(path=path, bytes=_sizes(contents[key])[0],
                          gzip_bytes=_sizes(contents[key])[1])  # fmt: skip
    x = rng.normal(size=(1, size, size, 3)).astype("float32")
    np.save(os.path.join(config["dir"], "x.npy"), x)
    runtimes = _interpreters()
    result["runtimes"] = list(runtimes)
    for key in files:
        files[key]["ops"] = _op_counts(runtimes["tf.lite"], contents[key])
    result["files"] = files
    result["times"] = {}
    result["load_before"] = _common.load_average()
    for name, Interpreter in runtimes.items():
        for threads in config["threads"]:
            medians, outputs, samples, busy = time_files(
                Interpreter, contents, x, threads, config["repeats"], config["inner"]
            )
            same = {}
            for key in contents:
                if key.endswith("sparse-stored"):
                    twin = outputs[key.replace("sparse-stored", "dense-stored")]
                    same[key] = {"bit_identical": bool(np.array_equal(outputs[key], twin)),
                                 "max_abs_diff": float(np.abs(outputs[key] - twin).max())}  # fmt: skip
            result["times"][f"{name}|{threads}"] = {
                "median_ms": medians, "samples_ms": samples, "vs_dense_stored": same,
                "max_abs_output": float(np.abs(outputs["dense"]).max()), "cpus_used": busy,
            }  # fmt: skip
            print(
                name, threads, json.dumps({k: round(v, 2) for k, v in medians.items()}), flush=True
            )
    result["load_after"] = _common.load_average()
    _common.write_worker_result(config, result)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return None
    return sorted(f for f in set(flags) if f in ("sse4_2", "avx", "avx2", "fma", "avx512f"))


# ------------------------------------------------- no-AVX check (under qemu)
def probe(config):
    """Runs under `qemu-x86_64 -cpu Nehalem`: only NumPy and ai_edge_litert."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    x = np.load(os.path.join(config["dir"], "x.npy"))
    out = {}
    for key, path in config["paths"].items():
        with open(path, "rb") as f:
            content = f.read()
        run = _runner(Interpreter, content, 1)
        out[key] = run(x).copy()  # also warms up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run(x)
            times.append(1000 * (time.perf_counter() - start))
        out[key + " ms"] = sorted(times)[1]
    result = {}
    for key in config["paths"]:
        if key.endswith("sparse-stored"):
            twin = out[key.replace("sparse-stored", "dense-stored")]
            result[key] = {"bit_identical": bool(np.array_equal(out[key], twin)),
                           "max_abs_diff": float(np.abs(out[key] - twin).max()),
                           "emulated_ms": out[key + " ms"],
                           "emulated_ms_dense_stored": out[key.replace("sparse", "dense") + " ms"]}  # fmt: skip
    with open(config["out"], "w") as f:
        json.dump(result, f)


def run_probe(qemu, script, files, directory):
    paths = {k: v["path"] for k, v in files.items() if k != "dense"}
    out = os.path.join(directory, "probe.json")
    config = {"dir": directory, "paths": paths, "out": out}
    print("  [qemu -cpu Nehalem] running ...", flush=True)
    env = _common.worker_env("tfprune", "tensorflow")
    proc = subprocess.run(
        [qemu, "-cpu", "Nehalem", sys.executable, script, "--probe", json.dumps(config)],
        env=env, capture_output=True, text=True, timeout=1800, cwd=_common.REPO,
    )  # fmt: skip
    if proc.returncode != 0 or not os.path.exists(out):
        print(f"  [qemu] FAILED (exit {proc.returncode}): {proc.stderr[-1500:]}")
        return {"error": proc.stderr[-1500:]}
    with open(out) as f:
        return json.load(f)


# ------------------------------------------------------------------ parent
def findings(result, probe_result):
    flags = result.get("cpu_flags") or []
    sparse_keys = [k for k in result["files"] if k.endswith("sparse-stored")]
    densify = {k: result["files"][k]["ops"]["DENSIFY"] for k in sparse_keys}
    checks = [v for t in result["times"].values() for v in t["vs_dense_stored"].values()]
    identical = all(c["bit_identical"] for c in checks)
    ratios = [
        t["median_ms"][k.replace("sparse-stored", "dense-stored")] / t["median_ms"][k]
        for t in result["times"].values() for k in sparse_keys
    ]  # fmt: skip
    lines = [
        f"CPU flags: {', '.join(flags) or 'unknown'}; runtimes: {', '.join(result['runtimes'])}; "
        f"load average {result['load_before'][0]} before, {result['load_after'][0]} after; "
        "CPUs the process got while timing: "
        + ", ".join(
            f"{run.replace('|', ' ')} thread(s) {t['cpus_used']:.2f}"
            for run, t in result["times"].items()
        )
        + ".",
        "Sparse-stored files hold their 1x1 kernels sparse-encoded: "
        + ", ".join(f"{k}: {n} DENSIFY ops" for k, n in densify.items())
        + ".",
        f"Outputs of sparse-stored vs dense-stored files (same weights) under XNNPACK: "
        f"{'bit-identical in every run' if identical else 'DIFFERENT in some runs'}; "
        f"speed-up of sparse-stored over dense-stored: {min(ratios):.2f}-{max(ratios):.2f}x.",
    ]
    if identical:
        lines.append(
            "=> On this CPU XNNPACK runs the sparse files with its dense NHWC kernels: no sparse "
            "(SpMM) kernels. "
            + ("Expected: XNNPACK disables sparse inference on x86 CPUs with AVX "
               "(xnn_is_chw_compatible_config in src/xnnpack/hardware-config.h)."
               if "avx" in flags else "")
        )  # fmt: skip
    if probe_result and "error" not in probe_result:
        diffs = [v["max_abs_diff"] for v in probe_result.values()]
        same = all(v["bit_identical"] for v in probe_result.values())
        lines.append(
            "Under qemu -cpu Nehalem (x86 without AVX), ai_edge_litert gives "
            + ("bit-identical outputs too." if same else
               f"different outputs for sparse-stored files (max |diff| {max(diffs):.2g}): the same "
               "build switches to its sparse NCHW kernels when the CPU lacks AVX. Emulated ms, "
               "sparse-stored vs dense-stored (instruction counts, not hardware timings): "
               + ", ".join(f"{k.split()[0]} {v['emulated_ms']:.0f} vs "
                           f"{v['emulated_ms_dense_stored']:.0f}" for k, v in probe_result.items())
               + ".")
        )  # fmt: skip
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--inner", type=int, default=3, help="invokes per timed sample")
    parser.add_argument("--qemu", help="qemu-x86_64 binary: also check on a CPU without AVX")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.probe:
        return probe(json.loads(args.probe))
    config = {
        "alpha": args.alpha, "size": args.size, "repeats": args.repeats, "inner": args.inner,
        "threads": [1, 2], "sparsities": list(SPARSITIES), "backend": "tensorflow",
    }  # fmt: skip
    if args.quick:
        config.update(alpha=0.25, size=96, repeats=3, inner=1)
    script = os.path.abspath(__file__)
    print("XNNPACK: dense vs sparse TFLite latency")
    with tempfile.TemporaryDirectory() as directory:
        config["dir"] = directory
        result = _common.run_worker(script, "xnnpack", "tensorflow", config, "tfprune",
                                    backend="tensorflow")  # fmt: skip
        if "error" in result:
            sys.exit(1)
        probe_result = (
            run_probe(args.qemu, script, result["files"], directory) if args.qemu else None
        )
    for entry in result["files"].values():
        entry.pop("path", None)
    lines = findings(result, probe_result)
    _common.save_results("xnnpack", {
        "config": {k: v for k, v in config.items() if k != "dir"},
        **{k: v for k, v in result.items() if k != "worker_wall_s"},
        "no_avx_probe": probe_result, "findings": lines,
    })  # fmt: skip
    print(f"\nkeras.applications.MobileNet (alpha {config['alpha']}): {result['keras_mobilenet']} "
          "(xnnpack_report); the benchmark's variant pads its stride-2 convs by ZeroPadding2D(1).")  # fmt: skip
    print()
    print("\n".join(lines))
    rows = []
    for run, entry in result["times"].items():
        runtime, threads = run.split("|")
        dense = entry["median_ms"]["dense"]
        for key, ms in entry["median_ms"].items():
            info = result["files"][key]
            twin = entry["vs_dense_stored"].get(key)
            rows.append([
                runtime, threads, key, _common.fmt(info["sparsity_1x1"], ".1%"),
                info["xnnpack_report"], f"{info['bytes'] / 1e6:.2f}", f"{info['gzip_bytes'] / 1e6:.2f}",
                info["ops"]["DENSIFY"], _common.fmt(ms, ".2f"), _common.fmt(dense / ms, ".2f"),
                "" if twin is None else _common.fmt(
                    entry["median_ms"][key.replace("sparse", "dense")] / ms, ".2f"),
                "" if twin is None else ("yes" if twin["bit_identical"] else "NO"),
            ])  # fmt: skip
    print()
    print(_common.table(
        ["runtime", "threads", "file", "1x1 zeros", "xnnpack_report", "MB", "gzip MB",
         "DENSIFY", "ms", "vs dense", "vs dense-stored", "same bits"],
        rows,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
