"""Model builders and checks shared by the tests."""

import keras
import numpy as np

import tfprune


def keep_count(size, sparsity):
    """TFMOT's k: max(round_half_even(size * (1 - s)), 1) in float32."""
    kept = np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity)))
    return int(max(kept, 1))


def data(shape, n=32, classes=2, seed=0, integer_vocab=None):
    rng = np.random.default_rng(seed)
    if integer_vocab:
        x = rng.integers(0, integer_vocab, size=(n, *shape)).astype("int32")
    else:
        x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, classes, size=(n,)).astype("int32")
    return x, y


def mlp(input_dim=20, hidden=16, classes=3, name=None):
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            keras.layers.Dense(hidden, activation="relu", name="hidden"),
            keras.layers.Dropout(0.1, name="dropout"),
            keras.layers.Dense(classes, name="logits"),
        ],
        name=name,
    )


def compile_model(model, optimizer="adam", **kwargs):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )
    return model


def fit(model, x, y, epochs=1, batch_size=8, callbacks=None, **kwargs):
    callbacks = [tfprune.UpdatePruningStep()] if callbacks is None else callbacks
    return model.fit(
        x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=callbacks, **kwargs
    )


def wrappers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, tfprune.PruneLowMagnitude)
    ]


def step_of(wrapper):
    return int(keras.ops.convert_to_numpy(wrapper.pruning_step))


def assert_exact_sparsity(wrapper, sparsity):
    """Each mask keeps exactly k weights and stored pruned weights are zero."""
    for weight, mask, _ in wrapper.pruning_vars:
        w = keras.ops.convert_to_numpy(weight)
        m = keras.ops.convert_to_numpy(mask)
        assert m.dtype == np.bool_
        assert int(m.sum()) == keep_count(m.size, sparsity), weight.path
        assert np.all(w[m == 0] == 0), f"stored pruned weights of {weight.path} not zero"


def on_accelerator():
    """True when the backend computes on a GPU or TPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def assert_same_predictions(actual, expected):
    """Predictions of two models holding the same (masked) weights.

    Equal on CPU. On a GPU the pruned model multiplies by `where(mask, w, 0)`
    inside a fused kernel and the stripped one by stored zeros, and float32
    matmuls may run in TF32 (10-bit mantissa), so they agree to its rounding.
    """
    if on_accelerator():
        np.testing.assert_allclose(actual, expected, rtol=5e-3, atol=5e-3)
    else:
        np.testing.assert_array_equal(actual, expected)


def tflite_predict(x, model_path=None, model_content=None):
    """The TFLite interpreter's output for a batch `x` (TensorFlow needed)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=model_path, model_content=model_content)
    source, result = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(source["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(result["index"])
