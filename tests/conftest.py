"""Shared test helpers. The backend comes from KERAS_BACKEND (see Makefile)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def only_backends(*names, reason):
    return pytest.mark.skipif(BACKEND not in names, reason=reason)


# JAX compiles every eager op the first time it meets it, so its pass is the
# slowest; tests of backend-independent code paths that other cases already
# run on JAX skip it.
SAME_PATH_ON_JAX = pytest.mark.skipif(
    BACKEND == "jax", reason="the same code path runs on JAX in a sibling case"
)


def except_on_jax(values, keep):
    """Parameters for `parametrize`: on JAX only those in `keep` run."""
    return [v if v in keep else pytest.param(v, marks=SAME_PATH_ON_JAX) for v in values]


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
