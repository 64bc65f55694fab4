"""Helpers shared by the benchmarks in this folder (not a benchmark itself).

Every benchmark runs its measurements in worker subprocesses, one per Keras
backend (the backend is fixed at `import keras`) and one for TFMOT (which
needs `TF_USE_LEGACY_KERAS=1` and rewires `tf.keras` on import). The parent
process imports neither TensorFlow nor Keras; it starts the workers, collects
their JSON and prints the tables.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

# Quiet TensorFlow's C++ logging in the workers.
_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


def worker_env(kind, backend=None, repo=None):
    """Environment of a worker: `kind` is "tfprune" or "tfmot".

    `repo`: a directory holding another `tfprune` package (an older version
    to compare with), imported instead of this checkout's.
    """
    env = dict(os.environ)
    env.update(_QUIET)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo, REPO, HERE, env.get("PYTHONPATH", "")) if p
    )
    if kind == "tfmot":
        env["TF_USE_LEGACY_KERAS"] = "1"
        env.pop("KERAS_BACKEND", None)
    else:
        env.pop("TF_USE_LEGACY_KERAS", None)
        env["KERAS_BACKEND"] = backend
    return env


def checkout(ref):
    """The `tfprune` package of git `ref`, extracted to a temporary directory."""
    import tempfile

    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = os.path.join(tempfile.gettempdir(), f"tfprune-{sha}")
    if not os.path.isdir(os.path.join(target, "tfprune")):
        os.makedirs(target, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", ref, "tfprune"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target, sha


def run_worker(script, name, tag, config, kind, backend=None, timeout=1800, repo=None):
    """Runs `script --worker CONFIG_JSON` in a subprocess; returns its JSON.

    The worker writes its result to `config["out"]`. Its output goes to
    `bench/results/<name>-<tag>.log.tmp`; on failure the tail is printed and
    `{"error": ...}` is returned.
    """
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, f"{name}-{tag}.json.tmp")
    log = os.path.join(RESULTS, f"{name}-{tag}.log.tmp")
    if os.path.exists(out):
        os.remove(out)
    config = dict(config, out=out)
    cmd = [sys.executable, script, "--worker", json.dumps(config)]
    start = time.perf_counter()
    print(f"  [{tag}] running ...", flush=True)
    with open(log, "w") as log_file:
        try:
            proc = subprocess.run(
                cmd,
                env=worker_env(kind, backend, repo),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=REPO,
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elapsed = time.perf_counter() - start
    if code != 0 or not os.path.exists(out):
        with open(log) as f:
            tail = f.read()[-3000:]
        print(f"  [{tag}] FAILED (exit {code}) after {elapsed:.0f}s; log tail:\n{tail}")
        return {"error": f"exit {code}", "log_tail": tail[-1500:]}
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    print(f"  [{tag}] done in {elapsed:.0f}s", flush=True)
    result["worker_wall_s"] = round(elapsed, 1)
    return result


def configure_threads(threads, kind, backend=None):
    """Limits a worker to `threads` CPU threads (None: library defaults).

    Call at the start of a worker, before Keras is imported. On a small,
    shared machine, one thread per process makes timings less sensitive to
    other processes (a multi-threaded op waits for its slowest thread).
    """
    if not threads:
        return
    n = str(int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = n
    if backend == "jax":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
        ).strip()
    if kind == "tfmot" or backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(int(n))
        tf.config.threading.set_inter_op_parallelism_threads(int(n))
    if backend == "torch":
        import torch

        torch.set_num_threads(int(n))
        torch.set_num_interop_threads(int(n))


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def write_worker_result(config, result):
    with open(config["out"], "w") as f:
        json.dump(result, f)


def save_results(name, payload):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    payload = dict(payload)
    payload.setdefault("machine", machine_info())
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
    print(f"\nSaved {os.path.relpath(path, REPO)}")
    return path


def machine_info():
    """Where a run was measured: the CPU model and its AVX-512 support matter
    (NumPy's `np.partition` and sorts use AVX-512 kernels where there is one)."""
    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "avx512f": "avx512f" in flags,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def versions(kind):
    """Library versions inside a worker."""
    info = {}
    if kind == "tfmot":
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf_keras

        info.update(tensorflow=tf.__version__, tf_keras=tf_keras.__version__)
        info["tfmot"] = getattr(tfmot, "__version__", "?")
    else:
        import keras

        info.update(keras=keras.__version__, backend=keras.backend.backend())
        mod = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
            keras.backend.backend()
        )
        if mod:
            info[mod] = __import__(mod).__version__
    return info


def median(values):
    return statistics.median(values) if values else float("nan")


def table(headers, rows):
    """A plain-text table; numbers are expected already formatted."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    return "\n".join(out)


def fmt(value, spec=".3f"):
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "nan"
    return format(value, spec)


def parse_backends(text):
    backends = [b.strip() for b in text.split(",") if b.strip()]
    for b in backends:
        if b not in ("tensorflow", "jax", "torch"):
            raise SystemExit(f"unknown backend {b!r}; use tensorflow, jax or torch")
    return backends
