"""The same schedule objects drive plain PyTorch and JAX/optax loops.

Each example in `examples/` runs in its own process with its backend, so this
module runs whatever the current KERAS_BACKEND is.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import only_backends
from helpers import keep_count

# Each example starts its own process with its own backend: once per suite.
pytestmark = only_backends(
    "tensorflow", reason="backend-independent (subprocesses); run in the TensorFlow pass only"
)

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


def run_example(name, backend):
    code = (
        "import json, runpy, sys; sys.argv = ['x'];"
        f"m = runpy.run_path({str(EXAMPLES / name)!r});"
        "acc, sp = m['main'](); print('RESULT', json.dumps([acc, sp]))"
    )
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize(
    "name, backend, needs",
    [
        ("torch_loop.py", "torch", ["torch"]),
        ("jax_optax_loop.py", "jax", ["jax", "optax"]),
    ],
)
def test_training_loop_outside_keras(name, backend, needs):
    for module in needs:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    accuracy, sparsities = run_example(name, backend)
    # Last pruning event at end_step=150 applies the final 0.9 exactly.
    assert sparsities == [
        pytest.approx(1 - keep_count(32 * 64, 0.9) / (32 * 64)),
        pytest.approx(1 - keep_count(64, 0.9) / 64),
    ]
    assert accuracy > 0.9
