"""The README's engine examples run as written (on a small model and data)."""

import pathlib
import re

import keras
import numpy as np
from conftest import only_backends

import tfprune

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


@only_backends("tensorflow", "torch", reason="backend-independent; JAX runs the training tests")
def test_the_thinning_example_runs(tmp_path, monkeypatch):
    (block,) = _section("Thinning: remove channels, get a smaller model")
    resnet = "keras.applications.ResNet50(weights=None, input_shape=(128, 128, 3))"
    assert resnet in block
    block = block.replace(resnet, "build_model()")

    def build_model():  # a small residual network with ResNet50's first layer name
        x = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(16, 3, padding="same", name="conv1_conv")(x)
        h = keras.layers.BatchNormalization(name="bn")(h)
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="mid")(h)
        r = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="branch")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(keras.layers.Add(name="add")([h, r]))
        return keras.Model(x, keras.layers.Dense(3, name="head")(h), name="small")

    monkeypatch.chdir(tmp_path)
    namespace = {"keras": keras, "tfprune": tfprune, "build_model": build_model}
    # the weights the last lines load: those of the first example's thinned model
    exec(compile(block.split("# Half of the FLOPs")[0], str(README), "exec"), namespace)
    namespace["small"].save_weights("thinned.weights.h5")
    exec(compile(block, str(README), "exec"), namespace)
    # before training nothing is masked: the plan removes nothing
    assert namespace["plan"].total_removed == 0
    assert namespace["same"].get_layer("conv1_conv").filters == 16
    flops = tfprune.thin(namespace["pruned"])  # the FLOPs budget, one shot
    ratio = tfprune.count_flops(flops) / tfprune.count_flops(build_model())
    assert 0.3 < ratio <= 0.5 and flops.get_layer("branch").filters % 8 == 0
    assert flops.get_layer("conv1_conv").filters >= 12


@only_backends("tensorflow", "torch", reason="backend-independent; JAX runs the training tests")
def test_the_regularization_example_runs():
    (block,) = _section("Sparsity by regularization: group lasso, soft thresholding, L0 gates")
    block = block.replace("epochs=10", "epochs=1")
    rng = np.random.default_rng(0)
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    model = keras.Model(x, keras.layers.Dense(3, name="head")(h))
    namespace = {
        "keras": keras,
        "tfprune": tfprune,
        "model": model,
        "x": rng.normal(size=(16, 6, 6, 2)).astype("float32"),
        "y": rng.integers(0, 3, 16),
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    }
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["small"].get_layer("conv").filters == 4
    assert isinstance(namespace["gated"].get_layer("l0_gate_bn"), tfprune.L0Gate)


@only_backends("tensorflow", reason="backend-independent plumbing (recipes are tested on two backends)")
def test_the_recipe_example_runs(tmp_path, monkeypatch):
    import yaml

    from tfprune import demo

    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Recipes\n"):text.index("\n## ", text.index("### Recipes\n"))]
    config = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[0])
    assert config["pruners"]["dense"]["layers"] == ["dense\\d"]
    assert config["training"]["epochs"] == 3  # 10 steps each below: the schedule ends at 20
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    x, x_val, y, y_val = demo.load_digits_split()
    model = demo.build_cnn()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    namespace = {"tfprune": tfprune, "model": model, "x": x[:320], "y": y[:320],
                 "x_val": x_val[:64], "y_val": y_val[:64]}  # fmt: skip
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(block, str(README), "exec"), namespace)
    plain = namespace["plain"]
    assert plain.get_layer("conv1").filters == 16 and plain.get_layer("conv2").filters == 64
    kernel = keras.ops.convert_to_numpy(plain.get_layer("dense1").kernel)
    assert (kernel.reshape(-1, 4, kernel.shape[-1]) == 0).sum(axis=1).min() == 2  # 2:4 along inputs
