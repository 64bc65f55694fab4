"""Where a pruned training step's time goes on TensorFlow: the mask
constraint, and the forms it could take, side by side in one run.

Inside `fit` a pruned layer reads its stored weights as they are, and a
constraint zeroes the pruned ones after every optimizer update
(`tfprune.wrapper._MaskConstraint`). On TensorFlow without XLA that
constraint is the one pass a plain pruned step adds. Each variant below
trains the same `keras.applications` model at `ConstantSparsity(0.9, 0,
frequency=100)` (plain steps only, after the warm-up), one thread:

    dense       the model without pruning
    library     tfprune as it is: `Select(mask, w, zeros_like(w))`
    no-mask     the constraint returns its input (masks and counters kept,
                stored weights not masked: the floor of a pruned step)
    where       a `SelectV2` from a scalar zero
    multiply    `w * cast(mask)`
    xla-all     the constraints off, one XLA function masking every pruned
                weight after the optimizer's update

Per-step times are medians over each round's steps (robust to a busy
machine); ratios are per-round medians against the dense model's round.

    python bench/constraint.py                     # ResNet50 at 32x32, batch 8
    python bench/constraint.py --model mobilenetv2 --rounds 3
"""

import argparse
import json
import statistics
import time

import _common as C

VARIANTS = ("dense", "library", "no-mask", "where", "multiply", "xla-all")
SHAPES = {"resnet50": (32, 32, 3), "mobilenetv2": (96, 96, 3)}


def _constraint_forms(tf, W):
    """The constraint's forms, as `_MaskConstraint` subclasses."""

    def inner(self, w):
        return tf.convert_to_tensor(w if self.inner is None else self.inner(w))

    class NoMask(W._MaskConstraint):
        def __call__(self, w):
            return inner(self, w)

    class Where(W._MaskConstraint):
        def __call__(self, w):
            w = inner(self, w)
            return tf.where(self.mask.value, w, tf.zeros((), w.dtype))

    class Multiply(W._MaskConstraint):
        def __call__(self, w):
            w = inner(self, w)
            return w * tf.cast(self.mask.value, w.dtype)

    return {"no-mask": NoMask, "where": Where, "multiply": Multiply}


def _mask_all_after_step(tf, model, pairs):
    """The model's train step with the constraints off and one XLA function
    masking every `(weight, mask)` after it."""
    cls_step = type(model).train_step
    compiled = {}

    def mask_all():
        for w, m in pairs:
            w.assign(tf.raw_ops.Select(condition=m.value, x=w.value, y=tf.zeros_like(w.value)))

    def train_step(data):
        saved = [(w, w.constraint) for w, _ in pairs]
        for w, c in saved:
            w.constraint = c.inner
        try:
            logs = cls_step(model, data)
        finally:
            for w, c in saved:
                w.constraint = c
        compiled.setdefault("fn", tf.function(mask_all, jit_compile=True))()
        return logs

    object.__setattr__(model, "train_step", train_step)


def worker(cfg):
    C.configure_threads(cfg["threads"], "tfprune", "tensorflow")
    import keras
    import numpy as np
    import tensorflow as tf

    import tfprune
    from tfprune import wrapper as W

    steps, shape = cfg["steps"], SHAPES[cfg["model"]]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 8, *shape)).astype("float32")
    y = rng.integers(0, 10, steps * 8)
    forms = _constraint_forms(tf, W)
    models = {}
    for variant in cfg["variants"]:
        keras.utils.set_random_seed(0)
        app = {
            "resnet50": keras.applications.ResNet50,
            "mobilenetv2": keras.applications.MobileNetV2,
        }
        model = app[cfg["model"]](input_shape=shape, weights=None, classes=10)
        if variant != "dense":
            schedule = tfprune.ConstantSparsity(0.9, 0, frequency=100)
            model = tfprune.prune_low_magnitude(model, pruning_schedule=schedule)
            pairs = [
                (w, m)
                for layer in model._flatten_layers()
                if isinstance(layer, W.PruneLowMagnitude)
                for w, m, _ in layer.pruning_vars
            ]
            for w, _ in pairs:
                if variant in forms:
                    w.constraint.__class__ = forms[variant]
            if variant == "xla-all":
                _mask_all_after_step(tf, model, pairs)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        models[variant] = model

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def train(variant):
        timer = StepTimer()
        timer.times = []
        callbacks = [] if variant == "dense" else [tfprune.UpdatePruningStep()]
        models[variant].fit(
            x, y, batch_size=8, verbose=0, shuffle=False, callbacks=callbacks + [timer]
        )
        return statistics.median(timer.times) * 1000

    for variant in cfg["variants"]:  # tracing, and the mask update of step 1
        train(variant)
    load = C.load_average()
    rounds = [{v: train(v) for v in cfg["variants"]} for _ in range(cfg["rounds"])]
    C.write_worker_result(
        cfg,
        {"rounds": rounds, "load_average": {"begin": load, "end": C.load_average()},
         "versions": C.versions("tfprune")},
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per round (< 100: no update)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS)) or (
        [] if "dense" in variants else ["(dense missing)"]
    )
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; of {', '.join(VARIANTS)} with dense")
    cfg = dict(
        model=args.model,
        rounds=args.rounds,
        steps=args.steps,
        variants=variants,
        threads=args.threads,
    )
    result = C.run_worker(
        __file__, "constraint", args.model, cfg, "tfprune", "tensorflow", timeout=3600
    )
    if "error" in result:
        raise SystemExit(1)
    rows = []
    for v in variants:
        times = [r[v] for r in result["rounds"]]
        ratios = [r[v] / r["dense"] for r in result["rounds"]]
        extra = [r[v] - r["dense"] for r in result["rounds"]]
        rows.append(
            [v, C.fmt(statistics.median(times), ".1f"), C.fmt(statistics.median(extra), ".1f"),
             f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f})"]
        )  # fmt: skip
    C.save_results(f"constraint-{args.model}", {"config": cfg, **result})
    print(f"\nload average {result['load_average']}")
    print(f"{args.model}, TensorFlow, one step (median ms of each round's {args.steps} steps):")
    print(C.table(["variant", "step ms", "- dense ms", "/ dense (range)"], rows))


if __name__ == "__main__":
    main()
