"""TFMOT oracle: TensorFlow Model Optimization's pruning numbers, out of process.

Importing `tensorflow_model_optimization` (and `tf_keras` with
`TF_USE_LEGACY_KERAS=1`) rewires `tf.keras`, so it must never happen in the
test process. `tests/test_tfmot_parity.py` runs this file as a script:

    python tfmot_oracle.py request.json result.npz

`request.json` holds `{"inputs": "<arrays.npz>", "tasks": [...]}`; array
arguments of the tasks are keys of the inputs file. Each task has an `id` and
an `op`:

- `"schedule"`: `class` (`"PolynomialDecay"` or `"ConstantSparsity"`),
  `config` (constructor keyword arguments) and `steps` (list of ints). Writes
  `<id>::should_prune` (bool) and `<id>::sparsity` (float32), one per step.
- `"mask"`: `weight` (input key), `sparsity`, `block_size`,
  `block_pooling_type`, `sparsity_m_by_n` (null or `[m, n]`). Runs TFMOT's
  `Pruning.conditional_mask_update()` at step 1 of
  `ConstantSparsity(sparsity, begin_step=0, frequency=1)`, i.e. the code path
  of a pruning step inside `PruneLowMagnitude`. Writes `<id>::mask` (float32,
  as TFMOT stores it) and `<id>::threshold`.
- `"fit"`: `weights` (input keys, in `model.set_weights` order), `units`
  (list of Dense widths), `input_dim`, `x`, `y` (input keys), `batch_size`,
  `schedule` (`{"class", "config"}`), `prune_kwargs` (extra arguments of
  `prune_low_magnitude`). Trains a `tf_keras` Sequential of Dense layers
  wrapped by TFMOT's `prune_low_magnitude` for one epoch with SGD (learning
  rate 0) and `UpdatePruningStep`. Writes `<id>::mask<i>`,
  `<id>::threshold<i>`, `<id>::kernel<i>` and `<id>::step<i>` per layer.

A task that raises writes `<id>::error` (the message) instead; the other tasks
still run. `__meta__::versions` holds the TensorFlow and TFMOT versions.

Nothing here runs on import (pytest's `--doctest-modules` imports this file).
"""

import json
import os
import sys
import traceback


def _schedule(pruning_schedule, spec):
    cls = getattr(pruning_schedule, spec["class"])
    return cls(**spec["config"])


def _run_schedule(tf, pruning_schedule, task, inputs):
    del inputs
    schedule = _schedule(pruning_schedule, task)
    # TFMOT's wrapper passes its int64 `pruning_step` variable; the schedule
    # math is elementwise, so a vector of steps gives the per-step values.
    steps = tf.constant(task["steps"], dtype=tf.int64)
    should_prune, sparsity = schedule(steps)
    return {
        "should_prune": should_prune.numpy().astype(bool),
        "sparsity": sparsity.numpy().astype("float32"),
    }


def _run_mask(tf, pruning_schedule, pruning_impl, task, inputs):
    weight = tf.Variable(inputs[task["weight"]].astype("float32"), name="kernel")
    mask = tf.Variable(tf.ones_like(weight), name="mask")
    threshold = tf.Variable(tf.zeros([], tf.float32), name="threshold")
    step = tf.Variable(1, dtype=tf.int64, name="pruning_step")
    m_by_n = task.get("sparsity_m_by_n")
    pruning = pruning_impl.Pruning(
        training_step_fn=lambda: step,
        pruning_vars=[(weight, mask, threshold)],
        pruning_schedule=pruning_schedule.ConstantSparsity(
            task["sparsity"], begin_step=0, frequency=1
        ),
        block_size=tuple(task.get("block_size", (1, 1))),
        block_pooling_type=task.get("block_pooling_type", "AVG"),
        sparsity_m_by_n=tuple(m_by_n) if m_by_n else None,
    )
    pruning.conditional_mask_update()
    return {
        "mask": mask.numpy(),
        "threshold": threshold.numpy().astype("float32"),
    }


def _run_fit(tf, pruning_schedule, task, inputs):
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prune,
        pruning_callbacks,
        pruning_wrapper,
    )

    keras = tf.keras  # tf_keras, because TF_USE_LEGACY_KERAS=1
    tf.keras.utils.set_random_seed(0)
    layers = [keras.Input((task["input_dim"],))]
    layers += [keras.layers.Dense(units) for units in task["units"]]
    model = keras.Sequential(layers)
    model.set_weights([inputs[key] for key in task["weights"]])
    pruned = prune.prune_low_magnitude(
        model,
        pruning_schedule=_schedule(pruning_schedule, task["schedule"]),
        **task.get("prune_kwargs", {}),
    )
    pruned.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    pruned.fit(
        inputs[task["x"]],
        inputs[task["y"]],
        batch_size=task["batch_size"],
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[pruning_callbacks.UpdatePruningStep()],
    )
    out = {}
    wrappers = [
        layer
        for layer in pruned.layers
        if isinstance(layer, pruning_wrapper.PruneLowMagnitude)
    ]
    for i, layer in enumerate(wrappers):
        weight, mask, threshold = layer.pruning_vars[0]
        out[f"mask{i}"] = mask.numpy()
        out[f"threshold{i}"] = threshold.numpy()
        out[f"kernel{i}"] = weight.numpy()
        out[f"step{i}"] = layer.pruning_step.numpy()
    return out


def main(argv):
    if len(argv) != 3:
        print("usage: tfmot_oracle.py request.json result.npz", file=sys.stderr)
        return 2
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        pruning_impl,
        pruning_schedule,
    )

    with open(argv[1]) as f:
        request = json.load(f)
    inputs = {}
    if request.get("inputs"):
        with np.load(request["inputs"]) as data:
            inputs = {key: data[key] for key in data.files}

    results = {
        "__meta__::versions": np.array(
            [tf.__version__, tensorflow_model_optimization.__version__]
        )
    }
    for task in request["tasks"]:
        try:
            op = task["op"]
            if op == "schedule":
                out = _run_schedule(tf, pruning_schedule, task, inputs)
            elif op == "mask":
                out = _run_mask(tf, pruning_schedule, pruning_impl, task, inputs)
            elif op == "fit":
                out = _run_fit(tf, pruning_schedule, task, inputs)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception:  # reported per task by the test
            out = {"error": np.array(traceback.format_exc())}
        for name, value in out.items():
            results[f"{task['id']}::{name}"] = np.asarray(value)

    np.savez(argv[2], **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
