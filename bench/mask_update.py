"""Time of ONE mask update against the natural ways to compute the same mask.

For a float32 weight of 4096x4096 (16.8M elements, Gaussian) at sparsity 0.9,
per Keras backend (each in its own subprocess, one CPU thread), each method
computes `(mask, threshold)` with TFMOT's rule: `k = max(round(n (1 - s)), 1)`
in float32, `threshold` the k-th largest `|w|`, `mask = |w| >= threshold`.

- tfprune: the update a training step runs, through the public API: the
  `PruneLowMagnitude` wrapper of a `Dense(4096)` on 4096 inputs and its
  pruner's `compute` (scores of the masked weight, exact radix select, new
  mask and threshold), compiled as the step is (`tf.function`, plus XLA on
  TensorFlow; `jax.jit`; eager PyTorch without autograd).
- The natural alternatives on the same backend: `np.partition` (NumPy, the
  same data on the host), `tf.math.top_k` / `jax.lax.top_k` with `k`, and
  `torch.kthvalue`; TFMOT's own method, a full sort (`top_k` with `k = n`).
- The floor: one fused element-wise pass over the weight, `|w|` (reads and
  writes float32), compiled the same way; also a pass that writes a boolean
  (`|w| >= t`, what the new mask costs alone).

Every mask is compared with NumPy's. Targets (TensorFlow and JAX): tfprune at
least 2x faster than the best alternative and within 4 float32 passes' time.
`--shapes` adds the layers of the overhead benchmark's MLP/CNN.

    .venv/bin/python bench/mask_update.py            # 3 backends (~4 min)
    .venv/bin/python bench/mask_update.py --quick    # 2048x2048

Results: bench/results/mask_update.json.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NAME = "mask_update"
TARGET_SPEEDUP, TARGET_PASSES = 2.0, 4.0
SMALL_SHAPES = [(784, 300), (300, 100), (3, 3, 32, 64), (576, 128)]


# --------------------------------------------------------------------- worker
def _compiler(backend):
    """`compile(fn, xla=False)` and `sync(value)` for a backend."""
    if backend == "tensorflow":
        import tensorflow as tf

        def sync(value):  # a scalar read waits for the computation
            return [
                v.numpy() for v in tf.nest.flatten(value) if tf.is_tensor(v) and v.shape.rank == 0
            ]

        return (lambda fn, xla=False: tf.function(fn, jit_compile=xla)), sync
    if backend == "jax":
        import jax

        return (lambda fn, xla=False: jax.jit(fn)), jax.block_until_ready

    import torch

    def eager(fn, xla=False):
        def run(*args):
            with torch.no_grad():
                return fn(*args)

        return run

    def sync(value):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return value

    return eager, sync


def _wrapper_update(keras, tfprune, compile_fn, shape, sparsity, values, xla=False):
    """A compiled `update() -> (mask, threshold)`: one pruner `compute` of a
    wrapped layer holding `values` as its kernel (the update a step runs)."""
    if len(shape) == 2:
        layer, inputs = keras.layers.Dense(shape[1]), (None, shape[0])
    else:
        layer, inputs = keras.layers.Conv2D(shape[3], shape[:2]), (None, 8, 8, shape[2])
    wrapper = tfprune.PruneLowMagnitude(layer, tfprune.ConstantSparsity(sparsity, 0))
    wrapper.build(inputs)
    kernel, mask, threshold = wrapper.pruning_vars[0]
    kernel.assign(values)

    def compute():
        new = dict((id(v), value) for v, value in wrapper.pruner.compute([wrapper], sparsity))
        return new[id(mask)], new[id(threshold)]

    if keras.backend.backend() != "jax":
        return compile_fn(compute, xla)
    import jax
    from keras.src.backend.common.stateless_scope import StatelessScope

    variables = wrapper.weights

    @jax.jit
    def pure(state):
        with StatelessScope(state_mapping=list(zip(variables, state))):
            return compute()

    return lambda: pure([v.value for v in variables])


def _alternatives(backend, k, n):
    """The backend's own k-th largest: `fn(w) -> (mask, threshold)`."""
    if backend == "tensorflow":
        import tensorflow as tf

        def top(w, count):
            a = tf.abs(w)
            values = tf.math.top_k(tf.reshape(a, [-1]), count, sorted=True).values
            return a >= values[k - 1], values[k - 1]

        return {"top_k": lambda w: top(w, k), "full sort (TFMOT)": lambda w: top(w, n)}
    if backend == "jax":
        import jax

        def top(w, count):
            a = abs(w)
            values = jax.lax.top_k(a.reshape(-1), count)[0]
            return a >= values[k - 1], values[k - 1]

        return {"top_k": lambda w: top(w, k), "full sort (TFMOT)": lambda w: top(w, n)}
    import torch

    def kth(w):
        a = torch.abs(w)
        t = torch.kthvalue(a.reshape(-1), n - k + 1).values
        return a >= t, t

    def full_sort(w):
        a = torch.abs(w)
        values = torch.topk(a.reshape(-1), n, sorted=True).values
        return a >= values[k - 1], values[k - 1]

    return {"kthvalue": kth, "full sort (TFMOT)": full_sort}


def _time(methods, sync, reps):
    """Median ms of `reps` calls of each `name: (fn, args)` after one warm-up.

    Methods under 1 s are timed side by side, one call of each in turn per
    round, so that the ratios between them (tfprune against the element-wise
    pass and `np.partition`) see the same machine; slower ones (sorts) get 2
    calls each afterwards.
    """
    def call(name):
        fn, args = methods[name]
        start = time.perf_counter()
        sync(fn(*args))
        return time.perf_counter() - start

    fast, slow = [], []
    for name in methods:  # warm-up
        (slow if call(name) > 1.0 else fast).append(name)
    times = {name: [] for name in methods}
    for _ in range(reps):
        for name in fast:
            times[name].append(call(name))
    for name in slow:
        times[name] += [call(name), call(name)]
    return {name: 1e3 * C.median(times[name]) for name in methods}


def _numpy_mask(w, k):
    a = np.abs(w)
    flat = a.reshape(-1)
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    return a >= threshold, threshold


def worker(cfg):
    backend = cfg["backend"]
    C.configure_threads(cfg.get("threads"), "tfprune", backend)
    load_begin = C.load_average()
    import keras
    from keras import ops

    import tfprune

    compile_fn, sync = _compiler(backend)
    sparsity, reps = cfg["sparsity"], cfg["reps"]
    rng = np.random.default_rng(0)
    result = {"backend": backend, "versions": C.versions("tfprune"), "shapes": []}
    shapes = [tuple(cfg["size"])] + [tuple(s) for s in cfg["small_shapes"]]
    for shape in shapes:
        w = rng.standard_normal(shape).astype("float32")
        n = w.size
        k = max(int(np.round(np.float32(n) * (np.float32(1) - np.float32(sparsity)))), 1)
        x = ops.convert_to_tensor(w)
        update = _wrapper_update(keras, tfprune, compile_fn, shape, sparsity, w)
        methods = {"tfprune": (update, ())}
        if backend == "tensorflow":
            xla = _wrapper_update(keras, tfprune, compile_fn, shape, sparsity, w, xla=True)
            methods["tfprune, XLA"] = (xla, ())
        big = shape == shapes[0]
        for name, fn in _alternatives(backend, k, n).items():
            if big or name.startswith("full"):
                methods[name] = (compile_fn(fn), (x,))
        methods["np.partition"] = (_numpy_mask, (w, k))
        if big:
            methods["pass |w| (float32 out)"] = (compile_fn(lambda w: ops.abs(w)), (x,))
            t = ops.convert_to_tensor(np.float32(1.0))
            methods["pass |w| >= t (bool out)"] = (
                compile_fn(lambda w, t: ops.greater_equal(ops.abs(w), t)),
                (x, t),
            )
        reference, _ = _numpy_mask(w, k)
        same = {}
        for name, (fn, args) in methods.items():
            if not name.startswith("pass"):
                mask = np.asarray(keras.ops.convert_to_numpy(fn(*args)[0])).astype(bool)
                same[name] = bool(np.array_equal(mask.reshape(reference.shape), reference))
        ms = _time(methods, sync, reps if big else cfg["small_reps"])
        rows = {name: {"ms": ms[name], "same_mask_as_numpy": same.get(name)} for name in methods}
        result["shapes"].append({"shape": list(shape), "n": n, "k": k, "methods": rows})
    result["load_average"] = {"begin": load_begin, "end": C.load_average()}
    C.write_worker_result(cfg, result)


# --------------------------------------------------------------------- parent
def verdict(backend, methods):
    """`(speed-up over the best alternative, passes, met)` for tfprune."""
    tfprune_ms = methods["tfprune"]["ms"]
    alternatives = {
        name: m["ms"] for name, m in methods.items()
        if not name.startswith(("tfprune", "pass", "full"))
    }  # fmt: skip
    best = min(alternatives, key=alternatives.get)
    speedup = alternatives[best] / tfprune_ms
    passes = tfprune_ms / methods["pass |w| (float32 out)"]["ms"]
    met = None
    if backend != "torch":
        met = speedup >= TARGET_SPEEDUP and passes <= TARGET_PASSES
    return best, speedup, passes, met


def report(runs, size):
    rows, verdicts = [], []
    for backend, run in runs.items():
        if "error" in run:
            rows.append([backend, "ERROR " + run["error"], "", "", ""])
            continue
        big = run["shapes"][0]
        base = big["methods"]["tfprune"]["ms"]
        for name, m in big["methods"].items():
            same = m["same_mask_as_numpy"]
            rows.append([
                backend, name, C.fmt(m["ms"], ".1f"), f"{m['ms'] / base:.2f}",
                "" if same is None else ("yes" if same else "NO"),
            ])  # fmt: skip
        best, speedup, passes, met = verdict(backend, big["methods"])
        verdicts.append([
            backend, C.fmt(base, ".1f"), f"{best} {big['methods'][best]['ms']:.1f}",
            f"{speedup:.2f}x", f"{passes:.2f}",
            "report" if met is None else ("yes" if met else "NO"),
        ])  # fmt: skip
    small = []
    for backend, run in runs.items():
        for item in run.get("shapes", [])[1:]:
            m = item["methods"]
            small.append([
                backend, "x".join(map(str, item["shape"])), item["n"],
                C.fmt(m["tfprune"]["ms"], ".2f"), C.fmt(m["np.partition"]["ms"], ".2f"),
                C.fmt(m["full sort (TFMOT)"]["ms"], ".2f"),
                "yes" if all(v["same_mask_as_numpy"] for v in m.values()) else "NO",
            ])  # fmt: skip
    if small:
        print("\nSmall weights (layers of the overhead benchmark), one update each, ms (median)")
        print(C.table(["backend", "shape", "n", "tfprune", "np.partition", "full sort",
                       "same masks"], small))  # fmt: skip
    print("\nLoad average (1/5/15 min) at worker begin -> end (2 cores; > 2 means contention):")
    for backend, run in runs.items():
        if run.get("load_average"):
            print(f"  {backend:10s} {run['load_average']['begin']} -> {run['load_average']['end']}")
    print(f"\nOne mask update, {size}x{size} float32, sparsity 0.9, ms (median); x = ms / tfprune's")
    print(C.table(["backend", "method", "ms", "x tfprune", "mask == NumPy's"], rows))
    print(
        f"\nVerdict: tfprune vs the best alternative (target >= {TARGET_SPEEDUP:.0f}x) and in "
        f"float32 passes (target <= {TARGET_PASSES:.0f}); TensorFlow and JAX"
    )
    print(C.table(["backend", "tfprune ms", "best alternative ms", "speed-up", "passes", "met"],
                  verdicts))  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048x2048, fewer repeats")
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--size", type=int, default=None, help="the weight is size x size")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--reps", type=int, default=None, help="timed runs (default 5)")
    parser.add_argument("--no-shapes", action="store_true", help="skip the small weights")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: defaults)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    size = args.size or (2048 if args.quick else 4096)
    cfg = {
        "size": [size, size],
        "sparsity": args.sparsity,
        "reps": args.reps or (2 if args.quick else 5),
        "small_shapes": [] if args.no_shapes else SMALL_SHAPES,
        "small_reps": 5 if args.quick else 21,
        "threads": args.threads or None,
    }
    backends = C.parse_backends(args.backends)
    print(f"mask_update: {size}x{size} float32, sparsity {args.sparsity}, backends={backends}")
    runs = {
        b: C.run_worker(__file__, NAME, b, dict(cfg, backend=b), "tfprune", b) for b in backends
    }
    C.save_results(
        NAME,
        {
            "command": " ".join(["python", "bench/mask_update.py"] + sys.argv[1:]),
            "config": cfg,
            "targets": {"speedup_over_best_alternative": TARGET_SPEEDUP,
                        "float32_passes": TARGET_PASSES},  # fmt: skip
            "runs": runs,
        },
    )
    report(runs, size)


if __name__ == "__main__":
    main()
