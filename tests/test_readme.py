"""The README's engine examples run as written (on a small model and data)."""

import pathlib
import re

import keras
import numpy as np

import tfprune
from conftest import only_backends

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _section(title):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_pruning_engine_examples_run():
    blocks = _section("The pruning engine")
    assert len(blocks) == 3
    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="fc1"),
            keras.layers.Dense(3, name="fc2"),
        ]
    )
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, 16)
    namespace = {
        "keras": keras,
        "tfprune": tfprune,
        "model": model,
        "schedule": tfprune.ConstantSparsity(0.5, 0, frequency=2),
        "calibration_batches": [x[:8], x[8:]],
        "x": x,
        "y": y,
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    for block in blocks:
        block = block.replace("epochs=5", "epochs=1").replace("range(1, 6)", "range(1, 3)")
        exec(compile(block, str(README), "exec"), namespace)
    pruned = namespace["pruned"]  # the last example's model: two rounds of IMP
    masks = [keras.ops.convert_to_numpy(m) for w in pruned.layers
             if isinstance(w, tfprune.PruneLowMagnitude) for _, m, _ in w.pruning_vars]
    total = sum(m.size for m in masks)
    assert sum(int(m.sum()) for m in masks) == round(total * 0.8**2)


@only_backends("tensorflow", reason="one-shot pruning computes in NumPy; slow on JAX CPU")
def test_the_one_shot_example_runs():
    import pytest

    pytest.importorskip("keras_hub")
    (block,) = _section("One-shot pruning from calibration data")
    small = {  # the same code on a tiny GPT-2 and 8 rows of 16 tokens
        "vocabulary_size=50257": "vocabulary_size=40",
        "num_layers=4": "num_layers=1",
        "num_heads=4": "num_heads=2",
        "hidden_dim=256": "hidden_dim=8",
        "intermediate_dim=1024": "intermediate_dim=16",
        "max_sequence_length=128": "max_sequence_length=16",
        "keras.Input((128,)": "keras.Input((16,)",
    }
    for old, new in small.items():
        assert old in block
        block = block.replace(old, new)
    rng = np.random.default_rng(0)
    namespace = {
        "keras": keras,
        "tfprune": tfprune,
        "token_ids": rng.integers(1, 40, size=(8, 16)).astype("int32"),
        "padding_mask": np.ones((8, 16), "int32"),
        "labels": rng.integers(0, 2, size=(8,)),
    }
    exec(compile(block, str(README), "exec"), namespace)
    kernel = keras.ops.convert_to_numpy(namespace["recovered"].get_layer("head").kernel)
    assert (kernel == 0).sum() == kernel.size // 2
