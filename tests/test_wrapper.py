import keras
import numpy as np
import pytest
from conftest import BACKEND, only_backends, to_numpy
from helpers import (
    assert_exact_sparsity,
    assert_same_predictions,
    compile_model,
    data,
    fit,
    keep_count,
    mlp,
    step_of,
    wrappers,
)

import tfprune

EVERY_STEP = dict(pruning_schedule=tfprune.ConstantSparsity(0.5, begin_step=0, frequency=1))


def test_wrapper_name_and_defaults():
    wrapper = tfprune.PruneLowMagnitude(keras.layers.Dense(3, name="d"))
    assert wrapper.name == "prune_low_magnitude_d"
    assert wrapper.pruning_schedule.get_config() == {
        "target_sparsity": 0.5,
        "begin_step": 0,
        "end_step": -1,
        "frequency": 100,
    }
    assert wrapper.block_size == (1, 1) and wrapper.block_pooling_type == "AVG"
    assert wrapper.sparsity_m_by_n is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(block_pooling_type="MIN"), ValueError, "block_pooling_type='MIN'"),
        (dict(block_size=(0, 2)), ValueError, "block_size"),
        (dict(block_size=3), TypeError, "block_size=3"),
        (dict(sparsity_m_by_n=(4, 2)), ValueError, "sparsity_m_by_n"),
        (dict(pruning_schedule=0.5), TypeError, "pruning_schedule=0.5"),
    ],
)
def test_bad_wrapper_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tfprune.PruneLowMagnitude(keras.layers.Dense(2), **kwargs)


def test_not_a_layer():
    with pytest.raises(ValueError, match="layer"):
        tfprune.PruneLowMagnitude("dense")


def test_block_size_needs_rank_2_weights():
    wrapper = tfprune.prune_low_magnitude(keras.layers.Conv2D(4, 3), block_size=(2, 2))
    with pytest.raises(ValueError, match="rank-2"):
        wrapper.build((None, 8, 8, 3))


def test_training_steps_prune_to_exact_sparsity_and_keep_stored_zeros():
    x, y = data((20,), n=64)
    model = compile_model(
        tfprune.prune_low_magnitude(
            mlp(), tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
        )
    )
    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if BACKEND == "jax":
                self.model.jax_state_sync()
            for w in wrappers(self.model):
                kernel, mask = w.pruning_vars[0][0], w.pruning_vars[0][1]
                k, m = to_numpy(kernel), to_numpy(mask)
                seen.append((step_of(w), int(m.sum()), bool(np.all(k[m == 0] == 0))))

    fit(model, x, y, epochs=2, callbacks=[tfprune.UpdatePruningStep(), Check()])
    for w in wrappers(model):
        assert step_of(w) == 16
        assert_exact_sparsity(w, 0.8)
    assert [s for s, _, _ in seen[::2]] == list(range(1, 17))
    if BACKEND in ("tensorflow", "torch"):  # after every training step
        assert all(zero for _, _, zero in seen)


def test_stored_weights_are_sparse_at_epoch_ends_and_after_fit():
    x, y = data((20,), n=64)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.6, 0, frequency=3)),
        optimizer=keras.optimizers.Adam(0.05),
    )
    checked = []

    class AtEpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for w in wrappers(self.model):
                assert_exact_sparsity(w, 0.6)
            checked.append(epoch)

    fit(model, x, y, epochs=3, callbacks=[tfprune.UpdatePruningStep(), AtEpochEnd()])
    assert checked == [0, 1, 2]
    for w in wrappers(model):
        assert_exact_sparsity(w, 0.6)


@only_backends("tensorflow", reason="gradients taken with tf.GradientTape")
def test_pruned_weights_get_zero_gradient():
    import tensorflow as tf

    wrapper = tfprune.prune_low_magnitude(keras.layers.Dense(4), **EVERY_STEP)
    model = keras.Sequential([keras.Input((6,)), wrapper])
    callback = tfprune.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 6)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) ** 2)  # step 1: masks computed
    grad = tape.gradient(loss, wrapper.layer.kernel).numpy()
    mask = to_numpy(wrapper.pruning_vars[0][1])
    assert mask.sum() == 12
    assert np.all(grad[mask == 0] == 0) and np.all(grad[mask == 1] != 0)


def test_pruned_weights_get_no_gradient_and_are_not_revived():
    """Adam's momentum would move pruned weights; the mask stops it."""
    x, y = data((20,), n=64)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.7, begin_step=3, end_step=3)),
        optimizer=keras.optimizers.Adam(0.05),
    )
    fit(model, x, y, epochs=4)
    for w in wrappers(model):
        assert step_of(w) == 32
        assert_exact_sparsity(w, 0.7)


def test_masks_follow_scores_of_masked_weights():
    wrapper = tfprune.prune_low_magnitude(keras.layers.Dense(1, use_bias=False), **EVERY_STEP)
    model = compile_model(keras.Sequential([keras.Input((4,)), wrapper]), optimizer="sgd")
    model.build((None, 4))
    wrapper.layer.kernel.assign(np.array([[4.0], [-3.0], [1.0], [-2.0]], "float32"))
    x = np.ones((1, 4), "float32")
    y = np.zeros((1,), "int32")
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    fit(model, x, y.astype("float32"))
    assert to_numpy(wrapper.pruning_vars[0][1]).ravel().tolist() == [1, 1, 0, 0]
    assert float(to_numpy(wrapper.pruning_vars[0][2])) == 3.0
    np.testing.assert_allclose(model.predict(x, verbose=0), [[1.0]])


def test_wrapping_a_trained_model_keeps_predictions_and_original():
    x, y = data((20,), n=64)
    model = compile_model(mlp())
    model.fit(x, y, epochs=1, verbose=0)
    before = model.predict(x, verbose=0)
    weights = [w.copy() for w in model.get_weights()]
    pruned = tfprune.prune_low_magnitude(model, **EVERY_STEP)
    assert_same_predictions(pruned.predict(x, verbose=0), before)
    compile_model(pruned)
    fit(pruned, x, y)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)  # the original is untouched


def test_predict_evaluate_and_validation_do_not_advance_the_step():
    x, y = data((20,), n=32)
    model = compile_model(tfprune.prune_low_magnitude(mlp(), **EVERY_STEP))
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert all(step_of(w) == -1 for w in wrappers(model))
    fit(model, x, y, epochs=2, validation_data=(x, y))
    assert all(step_of(w) == 8 for w in wrappers(model))
    model.evaluate(x, y, verbose=0)
    model.predict(x, verbose=0)
    assert all(step_of(w) == 8 for w in wrappers(model))


def test_training_without_callback_raises_naming_the_callback():
    x, y = data((20,), n=16)
    model = compile_model(tfprune.prune_low_magnitude(mlp(), **EVERY_STEP))
    np.testing.assert_equal(model.predict(x, verbose=0).shape, (16, 3))  # inference is fine
    if BACKEND == "jax":
        pytest.skip(
            "Keras's JAX trainer leaves variables unset after any error in the first "
            "step; the error itself is covered on TensorFlow and PyTorch"
        )
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="UpdatePruningStep"):
        model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    fit(model, x, y)  # and the model still trains once the callback is added
    assert all(step_of(w) == 2 for w in wrappers(model))


@only_backends("tensorflow", "jax", reason="Keras allows steps_per_execution > 1 only on TF and JAX")
@pytest.mark.parametrize("jit_compile", ["auto", False])
def test_steps_per_execution_counts_every_step(jit_compile):
    x, y = data((20,), n=80)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), **EVERY_STEP), steps_per_execution=4,
        jit_compile=jit_compile,
    )  # fmt: skip
    fit(model, x, y, epochs=2)
    for w in wrappers(model):
        assert step_of(w) == 20
        assert_exact_sparsity(w, 0.5)


@only_backends("tensorflow", "jax", reason="torch.compile takes minutes per model; see test below")
def test_jit_compile_reaches_exact_sparsity():
    x, y = data((20,), n=32)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.9, 0, frequency=1)),
        jit_compile=True,
    )
    fit(model, x, y, epochs=2)
    for w in wrappers(model):
        assert step_of(w) == 8
        assert_exact_sparsity(w, 0.9)


def test_shared_layer_counts_steps_not_calls():
    shared = tfprune.prune_low_magnitude(keras.layers.Dense(8, name="shared"), **EVERY_STEP)
    a, b = keras.Input((8,)), keras.Input((8,))
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([shared(a), shared(shared(b))]))
    model = compile_model(keras.Model([a, b], out))
    x, y = data((8,), n=24)
    fit(model, [x, x], y, epochs=2)
    assert step_of(shared) == 6
    assert_exact_sparsity(shared, 0.5)


class SubclassedNoTraining(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = tfprune.prune_low_magnitude(
            keras.layers.Dense(16, activation="relu"),
            tfprune.ConstantSparsity(0.75, 0, frequency=1),
        )
        self.blocks = [
            tfprune.prune_low_magnitude(
                keras.layers.Dense(16), tfprune.ConstantSparsity(0.75, 0, frequency=1)
            )
        ]
        self.out = keras.layers.Dense(3)

    def call(self, x):  # no `training` argument: Keras passes none
        return self.out(self.blocks[0](self.hidden(x)))


def test_subclassed_model_with_wrapped_layers_in_init():
    x, y = data((20,), n=32)
    model = compile_model(SubclassedNoTraining())
    fit(model, x, y, epochs=2, validation_data=(x, y))
    found = wrappers(model)
    assert len(found) == 2
    for w in found:
        assert step_of(w) == 8
        assert_exact_sparsity(w, 0.75)
    before = model.predict(x, verbose=0)
    stripped = tfprune.strip_pruning(model)
    assert not wrappers(stripped)
    assert isinstance(stripped.hidden, keras.layers.Dense)
    assert isinstance(stripped.blocks[0], keras.layers.Dense)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), before, rtol=1e-6, atol=1e-6)
    # a plain model: no mask constraint left on its kernels
    assert stripped.hidden.kernel.constraint is None and stripped.blocks[0].kernel.constraint is None


def test_nested_models_and_non_prunable_layers():
    inner = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(12), keras.layers.BatchNormalization()],
        name="inner",
    )
    inputs = keras.Input((20,))
    h = inner(inputs)
    h = keras.layers.Activation("relu")(h)
    outputs = keras.layers.Dense(3)(keras.layers.Dropout(0.2)(h))
    model = keras.Model(inputs, outputs)
    x, y = data((20,), n=32)
    before = model.predict(x, verbose=0)
    pruned = tfprune.prune_low_magnitude(model, **EVERY_STEP)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), before, rtol=1e-6, atol=1e-6)
    names = sorted(type(layer).__name__ for layer in pruned._flatten_layers(include_self=False))
    assert names.count("PruneLowMagnitude") == 2
    assert "BatchNormalization" in names and "Dropout" in names
    compile_model(pruned)
    fit(pruned, x, y, epochs=1)
    for w in wrappers(pruned):
        assert step_of(w) == 4
        assert_exact_sparsity(w, 0.5)
    stripped = tfprune.strip_pruning(pruned)
    assert not wrappers(stripped)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


class Scale(keras.layers.Layer, tfprune.PrunableLayer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="random_normal")

    def call(self, x):
        return x * self.w

    def get_prunable_weights(self):
        return [self.w]


class Unknown(keras.layers.Layer):
    """A layer type tfprune cannot interpret: it owns a matrix."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="w")

    def call(self, x):
        return x @ self.w


def test_custom_prunable_layer():
    x, y = data((20,), n=32)
    wrapper = tfprune.prune_low_magnitude(Scale(), **EVERY_STEP)
    model = compile_model(keras.Sequential([keras.Input((20,)), wrapper, keras.layers.Dense(2)]))
    fit(model, x, y)
    assert_exact_sparsity(wrapper, 0.5)
    assert int(np.count_nonzero(to_numpy(wrapper.layer.w))) == 10


def test_uninterpretable_layers_are_all_named_and_the_model_is_untouched():
    model = keras.Sequential(
        [keras.Input((4,)), Unknown(name="mystery"), keras.layers.Dense(4), Unknown(name="mystery2")]
    )
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"(?s)'mystery'.*'mystery2'.*PrunableLayer.*clone_function"):
        tfprune.prune_low_magnitude(model)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert not wrappers(model)


def test_uninterpretable_layer_wrapped_alone_is_refused_when_built():
    built = Unknown(name="seen")
    built.build((None, 4))
    with pytest.raises(ValueError, match=r"'seen' of type Unknown: weights \['w'\]"):
        tfprune.prune_low_magnitude(built)
    wrapper = tfprune.prune_low_magnitude(Unknown(name="unbuilt"))
    # (the way out is not the wrapping that was just refused)
    with pytest.raises(ValueError, match=r"(?s)'unbuilt' of type Unknown.*or leave it unwrapped\.$"):
        wrapper(np.ones((1, 4), "float32"))


def test_layers_with_vector_weights_only_are_left_alone():
    class Scaled(keras.layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), name="scale")

        def call(self, x):
            return x * self.scale

    model = keras.Sequential([keras.Input((4,)), Scaled(name="scaled"), keras.layers.Dense(2)])
    pruned = tfprune.prune_low_magnitude(model, **EVERY_STEP)
    assert [type(layer).__name__ for layer in pruned.layers] == ["Scaled", "PruneLowMagnitude"]


class MyDense(keras.layers.Dense):
    pass


def test_subclass_of_supported_layer_is_supported():
    wrapper = tfprune.prune_low_magnitude(MyDense(4), **EVERY_STEP)
    model = compile_model(keras.Sequential([keras.Input((20,)), wrapper]))
    fit(model, *data((20,), n=16, classes=4))
    assert_exact_sparsity(wrapper, 0.5)


def _functional(wrapper_fn, input_shape, integer_vocab=None):
    inputs = keras.Input(input_shape, dtype="int32" if integer_vocab else "float32")
    h = wrapper_fn(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


LAYERS = {
    "Dense": (lambda: keras.layers.Dense(4), (6,), None),
    "EinsumDense": (
        lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"),
        (6,),
        None,
    ),
    "Conv1D": (lambda: keras.layers.Conv1D(4, 3), (10, 3), None),
    "Conv2D": (lambda: keras.layers.Conv2D(4, 3), (8, 8, 3), None),
    "Conv3D": (lambda: keras.layers.Conv3D(2, 2), (4, 4, 4, 2), None),
    "Conv1DTranspose": (lambda: keras.layers.Conv1DTranspose(4, 3), (10, 3), None),
    "Conv2DTranspose": (lambda: keras.layers.Conv2DTranspose(4, 3), (6, 6, 3), None),
    "Conv3DTranspose": (lambda: keras.layers.Conv3DTranspose(2, 2), (3, 3, 3, 2), None),
    "SeparableConv1D": (lambda: keras.layers.SeparableConv1D(4, 3), (10, 3), None),
    "SeparableConv2D": (lambda: keras.layers.SeparableConv2D(4, 3), (8, 8, 3), None),
    "Embedding": (lambda: keras.layers.Embedding(20, 4), (5,), 20),
    "SimpleRNN": (lambda: keras.layers.SimpleRNN(4), (5, 3), None),
    "LSTM": (lambda: keras.layers.LSTM(4), (5, 3), None),
    "GRU": (lambda: keras.layers.GRU(4), (5, 3), None),
}

EXPECTED_WEIGHTS = {
    "SeparableConv1D": ["pointwise_kernel"],
    "SeparableConv2D": ["pointwise_kernel"],
    "Embedding": ["embeddings"],
    "SimpleRNN": ["kernel", "recurrent_kernel"],
    "LSTM": ["kernel", "recurrent_kernel"],
    "GRU": ["kernel", "recurrent_kernel"],
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_registry_layers_prune_exactly(name):
    make, shape, vocab = LAYERS[name]
    wrapper = tfprune.prune_low_magnitude(make(), tfprune.ConstantSparsity(0.6, 0, frequency=1))
    model = compile_model(_functional(wrapper, shape, vocab))
    x, y = data(shape, n=16, integer_vocab=vocab)
    fit(model, x, y)
    assert [w.name for w in wrapper.prunable_weights] == EXPECTED_WEIGHTS.get(name, ["kernel"])
    assert step_of(wrapper) == 2
    assert_exact_sparsity(wrapper, 0.6)


def test_multi_head_attention():
    mha = tfprune.prune_low_magnitude(
        keras.layers.MultiHeadAttention(num_heads=2, key_dim=4),
        tfprune.ConstantSparsity(0.5, 0, frequency=1),
    )
    q = keras.Input((5, 8))
    v = keras.Input((3, 8))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(mha(q, v)))
    model = compile_model(keras.Model([q, v], out))
    xq, y = data((5, 8), n=16)
    xv, _ = data((3, 8), n=16, seed=1)
    fit(model, [xq, xv], y)
    assert len(mha.pruning_vars) == 4
    assert_exact_sparsity(mha, 0.5)
    stripped = tfprune.strip_pruning(model)
    np.testing.assert_allclose(
        stripped.predict([xq, xv], verbose=0), model.predict([xq, xv], verbose=0), atol=1e-5
    )


def test_layers_with_nothing_to_prune_are_accepted():
    for layer in (
        keras.layers.BatchNormalization(),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.DepthwiseConv2D(3),
        keras.layers.MaxPooling2D(),
    ):
        wrapper = tfprune.prune_low_magnitude(layer)
        assert wrapper.layer is layer


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_reaches_exact_sparsity(policy):
    keras.config.set_dtype_policy(policy)
    x, y = data((20,), n=32)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.9, 0, frequency=1))
    )
    fit(model, x, y, epochs=2)
    for w in wrappers(model):
        assert w.compute_dtype == policy.split("_")[1]
        assert step_of(w) == 8
        assert_exact_sparsity(w, 0.9)


def test_block_sparsity_in_training():
    wrapper = tfprune.prune_low_magnitude(
        keras.layers.Dense(8), tfprune.ConstantSparsity(0.5, 0, frequency=1),
        block_size=(2, 4), block_pooling_type="MAX",
    )
    model = compile_model(keras.Sequential([keras.Input((16,)), wrapper]))
    fit(model, *data((16,), n=16, classes=8))
    mask = to_numpy(wrapper.pruning_vars[0][1])
    blocks = mask.reshape(8, 2, 2, 4)
    assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3)))
    assert int(blocks[:, 0, :, 0].sum()) == keep_count(16, 0.5)


def test_m_by_n_sparsity_in_training():
    wrapper = tfprune.prune_low_magnitude(
        keras.layers.Dense(6), tfprune.ConstantSparsity(0.5, 0, frequency=1),
        sparsity_m_by_n=(2, 4),
    )
    model = compile_model(keras.Sequential([keras.Input((16,)), wrapper]))
    fit(model, *data((16,), n=16, classes=6), epochs=2)
    kernel = to_numpy(wrapper.layer.kernel)  # (in=16, out=6)
    groups = kernel.T.reshape(6, 4, 4)
    assert np.all((groups != 0).sum(axis=-1) <= 2)
    mask = to_numpy(wrapper.pruning_vars[0][1]).T.reshape(6, 4, 4)
    assert np.all(mask.sum(axis=-1) == 2)


@only_backends("tensorflow", reason="custom loop written with tf.GradientTape")
def test_custom_training_loop_tensorflow():
    import tensorflow as tf

    model = tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.8, 0, frequency=1))
    optimizer = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = data((20,), n=40)
    step_callback = tfprune.UpdatePruningStep()
    step_callback.set_model(model)
    step_callback.on_train_begin()

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)

    for i in range(0, 40, 8):
        step_callback.on_train_batch_begin(batch=-1)
        train_step(x[i : i + 8], y[i : i + 8])
    step_callback.on_epoch_end(batch=-1)
    for w in wrappers(model):
        assert step_of(w) == 5
        assert_exact_sparsity(w, 0.8)


@only_backends("torch", reason="custom loop written with torch autograd")
def test_custom_training_loop_torch():
    import torch

    model = tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.8, 0, frequency=1))
    model.build((None, 20))
    optimizer = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x, y = data((20,), n=40)
    step_callback = tfprune.UpdatePruningStep()
    step_callback.set_model(model)
    step_callback.on_train_begin()
    for i in range(0, 40, 8):
        loss = loss_fn(torch.tensor(y[i : i + 8]), model(torch.tensor(x[i : i + 8]), training=True))
        model.zero_grad()
        loss.backward()
        variables = model.trainable_variables
        optimizer.apply([v.value.grad for v in variables], variables)
    step_callback.on_epoch_end(batch=-1)
    for w in wrappers(model):
        assert step_of(w) == 5
        assert_exact_sparsity(w, 0.8)


def test_training_resumes_from_a_loaded_step(tmp_path):
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.PolynomialDecay(0.0, 0.8, 0, 12, frequency=1))
    )
    x, y = data((20,), n=24)
    fit(model, x, y, epochs=1, batch_size=8, callbacks=[tfprune.UpdatePruningStep()])
    path = str(tmp_path / "three.weights.h5")
    model.save_weights(path)
    fit(model, x, y, epochs=1, batch_size=8, callbacks=[tfprune.UpdatePruningStep()])
    assert [step_of(w) for w in wrappers(model)] == [6, 6]
    model.load_weights(path)
    assert [step_of(w) for w in wrappers(model)] == [3, 3]
    fit(model, x[:8], y[:8], epochs=1, batch_size=8, callbacks=[tfprune.UpdatePruningStep()])
    for w in wrappers(model):
        assert step_of(w) == 4
        assert_exact_sparsity(w, float(tfprune.PolynomialDecay(0.0, 0.8, 0, 12, frequency=1)(4)[1]))


def test_mask_constraint_masks_the_stored_weight_in_slices():
    from tfprune.wrapper import _MaskConstraint

    values = np.arange(1, 600_001, dtype="float32").reshape(600, 1000)  # 2**18-element slices
    keep = np.random.default_rng(0).random(values.shape) > 0.5
    weight = keras.Variable(values)
    mask = keras.Variable(keep, dtype="bool", trainable=False)
    weight.assign(_MaskConstraint(mask, keras.constraints.NonNeg())(weight))
    np.testing.assert_array_equal(to_numpy(weight), np.where(keep, values, 0))
    np.testing.assert_array_equal(to_numpy(mask), keep)


def test_stateless_call_returns_the_advanced_step_and_leaves_its_inputs():
    # Inside `fit` a wrapper advances its step in place where it can; in a
    # stateless call the new step belongs to the returned state only.
    model = tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.5, 0, frequency=1))
    model.build((None, 20))
    callback = tfprune.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    x, _ = data((20,), n=4)
    positions = [
        i for i, v in enumerate(model.non_trainable_variables) if "pruning_step" in v.path
    ]
    steps = [model.non_trainable_variables[i] for i in positions]
    assert len(steps) == 2
    trainable = [keras.ops.copy(v.value) for v in model.trainable_variables]
    non_trainable = [keras.ops.copy(v.value) for v in model.non_trainable_variables]
    before = [int(to_numpy(v)) for v in steps]
    _, new_state = model.stateless_call(trainable, non_trainable, x, training=True)
    assert [int(to_numpy(non_trainable[i])) for i in positions] == before
    assert [int(to_numpy(new_state[i])) for i in positions] == [b + 1 for b in before]
    assert [int(to_numpy(v)) for v in steps] == before


def test_step_increment_in_a_stateless_scope_leaves_the_mapped_value():
    from keras.src.backend.common.stateless_scope import StatelessScope

    from tfprune import backend

    step = keras.Variable(3, dtype="int64", trainable=False)
    given = keras.ops.convert_to_tensor(np.int64(5))
    with StatelessScope(state_mapping=[(step, given)]) as scope:
        backend.increment(step)
        assert int(to_numpy(scope.get_current_value(step))) == 6
    assert int(to_numpy(given)) == 5
    assert int(to_numpy(step)) == 3
    backend.increment(step)
    assert int(to_numpy(step)) == 4


def test_constraint_in_a_stateless_scope_leaves_the_mapped_value():
    from keras.src.backend.common.stateless_scope import StatelessScope

    from tfprune import backend

    weight = keras.Variable(np.ones(4, "float32"))
    given = keras.ops.convert_to_tensor(np.full(4, 2.0, "float32"))
    mask = keras.ops.convert_to_tensor(np.array([True, False, True, False]))
    with StatelessScope(state_mapping=[(weight, given)]):
        masked = backend.masked_in_place(weight.value, mask)
    assert to_numpy(masked).tolist() == [2.0, 0.0, 2.0, 0.0]
    assert to_numpy(given).tolist() == [2.0] * 4
    masked = backend.masked_in_place(weight.value, mask)  # outside: in place on PyTorch
    weight.assign(masked)
    assert to_numpy(weight).tolist() == [1.0, 0.0, 1.0, 0.0]
