"""Pruning under data parallelism: TF MirroredStrategy and JAX DataParallel.

Both need their devices configured before the framework starts, so each case
runs in its own process (2 logical CPU devices). Run in one pass of the suite.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import only_backends

pytestmark = only_backends(
    "tensorflow", reason="backend-independent (subprocesses); run in the TensorFlow pass only"
)

COMMON = """
import json, sys
import numpy as np
import keras, tfprune

ENGINE = False

def build():
    dense = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3)])
    schedule = tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=1)
    if ENGINE:  # one global ranking over both layers, from gradients
        model = tfprune.prune(dense, schedule, scope="global", criterion="taylor")
    else:
        model = tfprune.prune_low_magnitude(dense, schedule)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 20)).astype("float32")
y = rng.integers(0, 3, 64)

def report(model):
    out = []
    for w in model.layers:
        mask = w.pruning_vars[0][1]
        kernel = keras.ops.convert_to_numpy(w.layer.kernel)
        m = keras.ops.convert_to_numpy(mask)
        out.append({"step": int(keras.ops.convert_to_numpy(w.pruning_step)),
                    "kept": int(m.sum()), "size": int(m.size),
                    "replicas_equal": replicas_equal(mask),
                    "stored_zero": bool(np.all(kernel[m == 0] == 0))})
    return out
"""

MIRRORED = """
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
""" + COMMON + """
def replicas_equal(variable):
    values = [v.numpy() for v in variable.value.values]
    return len(values) == 2 and all((v == values[0]).all() for v in values)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for ENGINE in (False, True):
    with strategy.scope():
        model = build()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    first = report(model)
    model.save(sys.argv[1])
    with strategy.scope():
        restored = keras.models.load_model(sys.argv[1])
    restored.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    print("RESULT", json.dumps([ENGINE, first, report(restored)]))
"""

DATA_PARALLEL = """
import os
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
""" + COMMON + """
def replicas_equal(variable):
    shards = [np.asarray(s.data) for s in variable.value.addressable_shards]
    return len(shards) == 2 and all((s == shards[0]).all() for s in shards)

devices = keras.distribution.list_devices("cpu")
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
for ENGINE in (False, True):
    model = build()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    first = report(model)
    model.save(sys.argv[1])
    restored = keras.models.load_model(sys.argv[1])
    restored.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    print("RESULT", json.dumps([ENGINE, first, report(restored)]))
"""


def _keep(size, sparsity):
    import numpy as np

    return int(max(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity))), 1))


@pytest.mark.parametrize(
    "script, needs",
    [(MIRRORED, "tensorflow"), (DATA_PARALLEL, "jax")],
    ids=["tf-mirrored", "jax-data-parallel"],
)
def test_pruning_under_data_parallelism(script, needs, tmp_path):
    """TFMOT's API and the engine's global Taylor ranking, in one process each."""
    if importlib.util.find_spec(needs) is None:
        pytest.skip(f"{needs} is not installed")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path / "m.keras")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
    assert [json.loads(line[len("RESULT "):])[0] for line in lines] == [False, True]
    for line in lines:
        _check(*json.loads(line[len("RESULT "):]))


def _check(engine, first, resumed):
    schedule_at_4 = 0.8 + (0.0 - 0.8) * (1 - 4 / 8) ** 3
    for layers, step, sparsity in [(first, 4, schedule_at_4), (resumed, 8, 0.8)]:
        # the checkpoint restored under the strategy continues
        for layer in layers:
            assert layer["step"] == step
            assert layer["replicas_equal"] and layer["stored_zero"]
            if not engine:
                assert layer["kept"] == _keep(layer["size"], sparsity)
        if engine:
            total = sum(layer["size"] for layer in layers)
            assert sum(layer["kept"] for layer in layers) == _keep(total, sparsity)
