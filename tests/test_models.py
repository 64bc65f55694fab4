"""Whole-model pruning of the models people have, on every backend.

Each model is pruned with `prune_low_magnitude(model)`, trained a few steps at
a constant 50% (masks recomputed every step) and checked: every prunable
weight at any depth has a mask keeping exactly `k` weights with the stored
pruned weights at zero, the stripped model has the original's classes and
config, and predictions of pruned, stripped and reloaded models are equal.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND, except_on_jax, only_backends, to_numpy
from helpers import assert_exact_sparsity, assert_same_predictions, keep_count, step_of, wrappers

import tfprune

L = keras.layers
EVERY_STEP = tfprune.ConstantSparsity(0.5, 0, frequency=1)


def _sequence_model(recurrent):
    return keras.Sequential(
        [keras.Input((6,), dtype="int32"), L.Embedding(30, 8), recurrent, L.Dense(3)]
    )


def _ops_graph():
    x = keras.Input((5, 4), name="tokens")
    h = L.Dense(6, name="proj")(x)
    h = keras.ops.tanh(h)[:, 0]  # a keras.ops call and a slice
    h = L.Dense(6, name="mix")(h) + h
    return keras.Model(x, {"logits": L.Dense(3, name="logits")(h), "score": L.Dense(1)(h)})


def _lambda_layer():
    x = keras.Input((4,))
    h = L.Lambda(lambda t: t * 2.0, name="double")(L.Dense(3, name="first")(x))
    return keras.Model(x, L.Dense(2)(h))


def _keyword_attention():
    x = keras.Input((5, 8))
    h = L.MultiHeadAttention(2, 4, name="mha")(query=x, value=x, key=x)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(x, L.Dense(3)(h))


class Block(L.Layer):
    """A user's composite layer, not registered as serializable."""

    def __init__(self, units=6, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = L.Dense(units, activation="relu")
        self.outer = L.Dense(units)

    def call(self, x):
        return self.outer(self.inner(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def _nested_and_shared():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(5, name="inner_dense")], name="inner")
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    shared = L.Dense(4, name="shared")
    h = L.Concatenate()([inner(shared(a)), inner(shared(b))])
    return keras.Model([a, b], L.Dense(3)(Block(name="block")(h)))


def _augmented_cnn():
    return keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            L.RandomFlip(),
            L.RandomRotation(0.1),
            L.RandomZoom(0.1),
            L.RandomContrast(0.1),
            L.RandomCrop(10, 10),
            L.GaussianNoise(0.1),
            L.Conv2D(4, 3, name="conv"),
            L.DepthwiseConv2D(3),
            L.GlobalAveragePooling2D(),
            L.RMSNormalization(),
            L.Dense(3),
        ]
    )


def _preprocessing_graph():
    x = keras.Input((4,))
    h = L.Discretization(bin_boundaries=[-0.5, 0.0, 0.5])(x)
    h = L.CategoryEncoding(4, output_mode="count")(h)
    h = L.Concatenate()([h, L.Hashing(8, output_mode="one_hot")(L.Reshape((4, 1))(x))[:, 0]])
    return keras.Model(x, L.Dense(3)(h))


def _attention_and_time_distributed():
    x = keras.Input((5, 4))
    h = L.Attention(use_scale=True)([x, x])
    h = L.TimeDistributed(L.Dense(6, name="td_dense"))(h)
    h = L.SpectralNormalization(L.Dense(4))(L.Flatten()(h))
    return keras.Model(x, L.Dense(3)(h))


# name -> (builder, input maker, expected pruned weight paths' endings)
MODELS = {
    "lstm": (lambda: _sequence_model(L.LSTM(4)), "ints", 4),
    "gru": (lambda: _sequence_model(L.GRU(4)), "ints", 4),
    "simple_rnn": (lambda: _sequence_model(L.SimpleRNN(4)), "ints", 4),
    "rnn_cell": (lambda: _sequence_model(L.RNN(L.LSTMCell(4))), "ints", 4),
    "stacked_cells": (
        lambda: _sequence_model(L.RNN(L.StackedRNNCells([L.GRUCell(4), L.SimpleRNNCell(3)]))),
        "ints",
        6,
    ),
    "bidirectional": (lambda: _sequence_model(L.Bidirectional(L.LSTM(4))), "ints", 6),
    "masked_lstm": (
        lambda: keras.Sequential(
            [keras.Input((6,), dtype="int32"), L.Embedding(30, 8, mask_zero=True), L.LSTM(4),
             L.Dense(3)]
        ),
        "ints",
        4,
    ),
    "conv_lstm_1d": (
        lambda: keras.Sequential(
            [keras.Input((3, 6, 2)), L.ConvLSTM1D(3, 3), L.Flatten(), L.Dense(3)]
        ),
        (3, 6, 2),
        3,
    ),
    "conv_lstm_2d": (
        lambda: keras.Sequential(
            [keras.Input((2, 5, 5, 2)), L.ConvLSTM2D(2, 3), L.Flatten(), L.Dense(3)]
        ),
        (2, 5, 5, 2),
        3,
    ),
    "ops_slices_dict_outputs": (_ops_graph, (5, 4), 4),
    "keyword_called_attention": (_keyword_attention, (5, 8), 5),
    "lambda_layer": (_lambda_layer, (4,), 2),
    "nested_shared_custom": (_nested_and_shared, [(4,), (4,)], 5),
    "augmentation": (_augmented_cnn, (12, 12, 3), 2),
    "preprocessing": (_preprocessing_graph, (4,), 1),
    "attention_time_distributed": (_attention_and_time_distributed, (5, 4), 2),
}


def _inputs(spec, n=8, seed=0):
    rng = np.random.default_rng(seed)
    if spec == "ints":
        return rng.integers(0, 30, size=(n, 6)).astype("int32")
    if isinstance(spec, list):
        return [_inputs(s, n, seed + i) for i, s in enumerate(spec)]
    return rng.normal(size=(n, *spec)).astype("float32")


def _targets(model, n=8):
    outputs = model.outputs if isinstance(model, keras.Sequential) else model.output
    if isinstance(outputs, dict):
        return {k: np.zeros((n, v.shape[-1]), "float32") for k, v in outputs.items()}
    return np.zeros((n, model.outputs[0].shape[-1]), "float32")


def _without_lambda_code(config):
    """A Lambda's marshalled bytecode changes on any config round trip."""
    for layer in config["layers"]:
        if layer["class_name"] == "Lambda":
            layer["config"]["function"]["config"].pop("code")
    return config


def _masks(model):
    return [m for w in wrappers(model) for _, m, _ in w.pruning_vars]


def _flat(outputs):
    if isinstance(outputs, dict):
        return [np.asarray(outputs[k]) for k in sorted(outputs)]
    return [np.asarray(outputs)]


@pytest.mark.parametrize(
    "name",
    except_on_jax(
        sorted(MODELS),
        keep=("augmentation", "lstm", "keyword_called_attention", "ops_slices_dict_outputs"),
    ),
)
def test_whole_model_pruning_reaches_every_kernel(name, tmp_path):
    if name == "preprocessing" and BACKEND != "tensorflow":
        pytest.skip("Keras runs Hashing/Discretization in fit on TensorFlow only")
    build, spec, expected_masks = MODELS[name]
    model = build()
    x = _inputs(spec)
    before = [w.copy() for w in model.get_weights()]
    original_config = model.get_config()

    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert not pruned.compiled
    assert len(_masks(pruned)) == expected_masks
    pruned.compile("sgd", "mse")
    pruned.fit(x, _targets(model), batch_size=4, epochs=1, verbose=0,
               callbacks=[tfprune.UpdatePruningStep()])
    for wrapper in wrappers(pruned):
        assert step_of(wrapper) == 2
        assert_exact_sparsity(wrapper, 0.5)

    stripped = tfprune.strip_pruning(pruned)
    assert not wrappers(stripped) and not stripped.compiled
    assert _without_lambda_code(stripped.get_config()) == _without_lambda_code(original_config)
    expected = _flat(pruned.predict(x, verbose=0))
    for a, b in zip(expected, _flat(stripped.predict(x, verbose=0))):
        assert_same_predictions(b, a)

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    restored = keras.models.load_model(path, custom_objects={"Block": Block}, safe_mode=False)
    for a, b in zip(_masks(pruned), _masks(restored)):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for a, b in zip(expected, _flat(restored.predict(x, verbose=0))):
        assert_same_predictions(b, a)
    restored.compile("sgd", "mse")  # resumed mid-schedule: steps 3 and 4
    restored.fit(x, _targets(model), batch_size=4, epochs=1, verbose=0,
                 callbacks=[tfprune.UpdatePruningStep()])
    for wrapper in wrappers(restored):
        assert step_of(wrapper) == 4
        assert_exact_sparsity(wrapper, 0.5)

    for a, b in zip(model.get_weights(), before):  # the original is untouched
        np.testing.assert_array_equal(a, b)


def test_recurrent_layers_prune_both_kernels_of_every_direction():
    model = _sequence_model(L.Bidirectional(L.LSTM(4, name="lstm"), name="bi"))
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    (bi,) = [w for w in wrappers(pruned) if w.layer.name == "bi"]
    cells = [bi.layer.forward_layer.cell, bi.layer.backward_layer.cell]
    assert bi.prunable_weights == [
        v for cell in cells for v in (cell.kernel, cell.recurrent_kernel)
    ]


def test_names_survive_pruning_and_stripping():
    x = keras.Input((4,))  # auto-named input: input_layer_N
    model = keras.Model(x, L.Dense(2)(L.Dense(3)(x)))
    pruned = tfprune.prune_low_magnitude(model)
    assert pruned.input_names if hasattr(pruned, "input_names") else True
    assert [t._keras_history.operation.name for t in pruned.inputs] == [
        t._keras_history.operation.name for t in model.inputs
    ]
    assert [w.layer.name for w in wrappers(pruned)] == [layer.name for layer in model.layers[1:]]
    assert tfprune.strip_pruning(pruned).get_config() == model.get_config()


def test_compiled_model_gives_uncompiled_pruned_and_stripped_models():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 3)), verbose=0)
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert not pruned.compiled
    pruned.compile("adam", "mse")
    pruned.fit(np.ones((4, 4)), np.ones((4, 3)), verbose=0,
               callbacks=[tfprune.UpdatePruningStep()])
    stripped = tfprune.strip_pruning(pruned)
    assert not stripped.compiled and getattr(stripped, "optimizer", None) is None
    assert len(stripped.weights) == 2  # kernel and bias: no optimizer slots


def _frozen_base_model(trainable):
    base = keras.Sequential([keras.Input((6,)), L.Dense(8, name="base_dense")], name="base")
    base.trainable = trainable
    x = keras.Input((6,))
    return keras.Model(x, L.Dense(2, name="head")(base(x, training=False)))


@pytest.mark.parametrize("trainable", [False, True])
def test_sub_model_called_with_training_false_is_not_pruned(trainable):
    model = _frozen_base_model(trainable)
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert [w.layer.name for w in wrappers(pruned)] == ["head"]
    base_kernel = to_numpy(pruned.get_layer("base").get_layer("base_dense").kernel).copy()
    pruned.compile("adam", "mse")
    pruned.fit(np.ones((8, 6)), np.ones((8, 2)), verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    kernel = to_numpy(pruned.get_layer("base").get_layer("base_dense").kernel)
    assert np.all(kernel != 0)
    if not trainable:
        np.testing.assert_array_equal(kernel, base_kernel)
    assert_exact_sparsity(wrappers(pruned)[0], 0.5)


def test_frozen_layers_are_not_wrapped_and_frozen_wrappers_keep_their_masks():
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="a"), L.Dense(2, name="b")])
    model.get_layer("a").trainable = False
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert [w.layer.name for w in wrappers(pruned)] == ["b"]
    wrapper = wrappers(pruned)[0]
    wrapper.trainable = False  # frozen after pruning: masks stay all ones
    pruned.compile("adam", "mse")
    pruned.fit(np.ones((8, 6)), np.ones((8, 2)), verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    assert to_numpy(wrapper.pruning_vars[0][1]).all()


def test_custom_prunable_layer_needs_no_registration():
    class Scale(L.Layer, tfprune.PrunableLayer):  # defined locally: not registered
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="w")

        def call(self, x):
            return x @ self.w

        def get_prunable_weights(self):
            return [self.w]

    model = keras.Sequential([keras.Input((4,)), Scale(name="scale"), L.Dense(2)])
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert len(wrappers(pruned)) == 2
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    stripped = tfprune.strip_pruning(pruned)
    assert [type(layer).__name__ for layer in stripped.layers] == ["Scale", "Dense"]
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    assert_same_predictions(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))


def test_pruning_policy_must_be_a_pruning_policy():
    with pytest.raises(TypeError, match=r"pruning_policy.*object"):
        tfprune.prune_low_magnitude(keras.Sequential([keras.Input((2,)), L.Dense(2)]),
                                    pruning_policy=object())
    with pytest.raises(TypeError, match="pruning_policy"):
        tfprune.prune_low_magnitude(L.Dense(2), pruning_policy="xnnpack")


@only_backends("tensorflow", reason="tf.saved_model needs the TensorFlow backend")
def test_tf_saved_model_and_export_of_a_pruned_model(tmp_path):
    import tensorflow as tf

    model = _sequence_model(L.LSTM(4))
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    pruned.compile("adam", "mse")
    x = _inputs("ints")
    pruned.fit(x, np.zeros((8, 3)), verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    tf.saved_model.save(pruned, str(tmp_path / "saved"))
    pruned.export(str(tmp_path / "exported"))
    expected = pruned.predict(x, verbose=0)
    for directory in ("saved", "exported"):
        loaded = tf.saved_model.load(str(tmp_path / directory))  # keep it alive
        if directory == "exported":
            served = loaded.serve(x)
        else:
            signature = loaded.signatures["serving_default"]
            (name,) = signature.structured_input_signature[1]
            (served,) = signature(**{name: tf.constant(x)}).values()
        np.testing.assert_allclose(served.numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="graph copying is backend-independent; slow on JAX/torch CPU"
)
def test_keras_application_mobilenet_v2():
    model = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), weights=None, classes=4, alpha=0.35
    )
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    convs = [layer for layer in model.layers if type(layer) is L.Conv2D]
    assert len(wrappers(pruned)) == len(convs) + 1  # every Conv2D and the classifier
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    stripped = tfprune.strip_pruning(pruned)
    assert stripped.get_config() == model.get_config()
    np.testing.assert_allclose(stripped.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_layer_that_cannot_be_rebuilt_from_its_config_is_named():
    class Sub(L.Layer):  # TFMOT's subclassed-layer case: __init__ takes no arguments
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2D(2, 3, padding="same")
            self.dense = L.Dense(4)

        def call(self, x):
            return self.dense(L.Flatten()(self.conv(x)))

    x = keras.Input((7, 7, 3))
    model = keras.Model(x, Sub()(x))
    with pytest.raises(ValueError, match=r"of type Sub cannot be rebuilt from its config"):
        tfprune.prune_low_magnitude(model, sparsity_m_by_n=(2, 4))


def test_unbuilt_sequential_with_an_lstm():
    model = keras.Sequential([L.Embedding(30, 8), L.LSTM(4), L.Dense(1)])  # no Input
    pruned = tfprune.prune_low_magnitude(model, pruning_schedule=EVERY_STEP)
    assert len(wrappers(pruned)) == 3
    pruned.compile("sgd", "mse")
    pruned.fit(_inputs("ints"), np.zeros((8, 1)), batch_size=4, verbose=0,
               callbacks=[tfprune.UpdatePruningStep()])
    assert len(_masks(pruned)) == 4
    for wrapper in wrappers(pruned):
        assert_exact_sparsity(wrapper, 0.5)


@pytest.mark.parametrize("scope", ["global", "erk", "lamp"])
def test_engine_scopes_over_a_model_with_an_lstm(scope):
    model = keras.Sequential(
        [keras.Input((6,), dtype="int32"), L.Embedding(30, 8, name="emb"),
         L.LSTM(8, name="lstm"), L.Dense(3, name="out")]
    )
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.75, 0, frequency=1), scope=scope)
    x = np.random.default_rng(0).integers(0, 30, size=(8, 6)).astype("int32")
    y = np.random.default_rng(1).integers(0, 3, size=(8,))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    masks = {m.path: keras.ops.convert_to_numpy(m) for w in wrappers(pruned)
             for _, m, _ in w.pruning_vars}
    assert len(masks) == 4  # embeddings, both LSTM kernels, output kernel
    total = sum(m.size for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if scope == "erk":
        assert abs(kept - 0.25 * total) <= len(masks)
    else:
        assert kept == keep_count(total, 0.75)
    assert len({round(1 - m.mean(), 3) for m in masks.values()}) > 1
