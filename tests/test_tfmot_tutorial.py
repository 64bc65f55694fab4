"""TFMOT's pruning tutorials, run with `tfmot.sparsity.keras` replaced by tfprune.

The code follows the "Pruning in Keras" example and the comprehensive guide
(prune the whole model, prune only Dense layers through clone_model, a custom
PrunableLayer, PruningSummaries, prune_scope loading, strip_pruning, export).
Only the import and the data (scikit-learn digits instead of MNIST, which
cannot be downloaded here) differ.
"""

import os
import tempfile

import numpy as np
import pytest
from conftest import only_backends

pytestmark = only_backends("tensorflow", reason="the tutorials are written with tf.keras")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images / 16.0).astype("float32")
    return images[:1400], d.target[:1400], images[1400:], d.target[1400:]


def test_pruning_in_keras_example(digits, tmp_path):
    import tensorflow as tf

    import tfprune as sparsity  # was: tensorflow_model_optimization.sparsity.keras

    train_images, train_labels, test_images, test_labels = digits
    model = tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(8, 8)),
            tf.keras.layers.Reshape(target_shape=(8, 8, 1)),
            tf.keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation="relu"),
            tf.keras.layers.MaxPooling2D(pool_size=(2, 2)),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train_images, train_labels, epochs=4, validation_split=0.1, verbose=0)
    _, baseline_model_accuracy = model.evaluate(test_images, test_labels, verbose=0)

    prune_low_magnitude = sparsity.prune_low_magnitude
    batch_size = 8  # the tutorial's 128 with 60000 MNIST images; digits are few
    epochs = 2
    validation_split = 0.1
    num_images = train_images.shape[0] * (1 - validation_split)
    end_step = np.ceil(num_images / batch_size).astype(np.int32) * epochs
    pruning_params = {
        "pruning_schedule": sparsity.PolynomialDecay(
            initial_sparsity=0.50, final_sparsity=0.80, begin_step=0, end_step=end_step
        )
    }
    model_for_pruning = prune_low_magnitude(model, **pruning_params)
    model_for_pruning.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model_for_pruning.summary(print_fn=lambda *a, **k: None)
    logdir = tempfile.mkdtemp()
    callbacks = [
        sparsity.UpdatePruningStep(),
        sparsity.PruningSummaries(log_dir=logdir),
    ]
    model_for_pruning.fit(
        train_images,
        train_labels,
        batch_size=batch_size,
        epochs=epochs,
        validation_split=validation_split,
        callbacks=callbacks,
        verbose=0,
    )
    _, model_for_pruning_accuracy = model_for_pruning.evaluate(test_images, test_labels, verbose=0)
    assert model_for_pruning_accuracy > 0.5 and baseline_model_accuracy > 0.5

    model_for_export = sparsity.strip_pruning(model_for_pruning)
    pruned_keras_file = str(tmp_path / "pruned.h5")
    tf.keras.models.save_model(model_for_export, pruned_keras_file, include_optimizer=False)
    # 158 steps per epoch, end_step 316: masks were last updated at step 300.
    assert end_step == 316
    sparsity = float(pruning_params["pruning_schedule"](300)[1])
    for layer in model_for_export.layers:
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
            kernel = layer.kernel.numpy()
            kept = int(np.round(np.float32(kernel.size) * (1 - np.float32(sparsity))))
            assert np.count_nonzero(kernel) == kept

    converter = tf.lite.TFLiteConverter.from_keras_model(model_for_export)
    try:
        pruned_tflite_model = converter.convert()
    except Exception as e:  # pragma: no cover - depends on the TF build
        pytest.skip(f"TFLite conversion unavailable in this TensorFlow: {e}")
    assert len(pruned_tflite_model) > 0


def test_prune_only_dense_layers_with_clone_model(digits):
    import tensorflow as tf

    import tfprune

    base_model = tf.keras.Sequential(
        [
            tf.keras.Input((64,)),
            tf.keras.layers.Dense(32, activation="relu"),
            tf.keras.layers.Dropout(0.2),
            tf.keras.layers.Dense(10),
        ]
    )

    def apply_pruning_to_dense(layer):
        if isinstance(layer, tf.keras.layers.Dense):
            return tfprune.prune_low_magnitude(
                layer, tfprune.ConstantSparsity(0.5, begin_step=0, frequency=1)
            )
        return layer

    model_for_pruning = tf.keras.models.clone_model(
        base_model, clone_function=apply_pruning_to_dense
    )
    wrapped = [layer for layer in model_for_pruning.layers if isinstance(layer, tfprune.PruneLowMagnitude)]
    assert len(wrapped) == 2
    train_images, train_labels, _, _ = digits
    model_for_pruning.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model_for_pruning.fit(
        train_images.reshape(-1, 64), train_labels, epochs=1, verbose=0,
        callbacks=[tfprune.UpdatePruningStep()],
    )
    for layer in wrapped:
        kernel = layer.layer.kernel.numpy()
        assert np.count_nonzero(kernel) == kernel.size // 2


def test_custom_prunable_layer_and_prune_scope(tmp_path):
    import tensorflow as tf

    import tfprune

    @tf.keras.utils.register_keras_serializable(package="tutorial")
    class MyDenseLayer(tf.keras.layers.Dense, tfprune.PrunableLayer):
        def get_prunable_weights(self):
            # Prune bias also, though that usually harms model accuracy too much.
            return [self.kernel, self.bias]

    model_for_pruning = tf.keras.Sequential(
        [
            tf.keras.Input((20,)),
            tfprune.prune_low_magnitude(
                MyDenseLayer(20), tfprune.ConstantSparsity(0.5, 0, frequency=1)
            ),
            tf.keras.layers.Flatten(),
        ]
    )
    model_for_pruning.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 20)).astype("float32")
    model_for_pruning.fit(
        x, x, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()]
    )
    wrapper = model_for_pruning.layers[0]
    assert [w.name for w in wrapper.prunable_weights] == ["kernel", "bias"]
    assert np.count_nonzero(wrapper.layer.bias.numpy()) == 10

    keras_model_file = os.path.join(str(tmp_path), "m.keras")
    model_for_pruning.save(keras_model_file)
    with tfprune.prune_scope():
        loaded_model = tf.keras.models.load_model(keras_model_file)
    np.testing.assert_array_equal(loaded_model.predict(x, verbose=0), model_for_pruning.predict(x, verbose=0))
