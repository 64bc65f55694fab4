import keras
import pytest

import tfprune


def xnnpack_model(start_padding=1):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ZeroPadding2D(start_padding)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Conv2D(16, 1)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_xnnpack_policy_prunes_only_1x1_convs():
    pruned = tfprune.prune_low_magnitude(
        xnnpack_model(), pruning_policy=tfprune.PruneForLatencyOnXNNPack()
    )
    wrapped = [layer.layer for layer in pruned.layers if isinstance(layer, tfprune.PruneLowMagnitude)]
    assert len(wrapped) == 1
    assert isinstance(wrapped[0], keras.layers.Conv2D)
    assert tuple(wrapped[0].kernel_size) == (1, 1)


def test_xnnpack_policy_rejects_models_without_a_sparse_subgraph():
    with pytest.raises(ValueError, match="ZeroPadding2D"):
        tfprune.prune_low_magnitude(
            xnnpack_model(start_padding=2), pruning_policy=tfprune.PruneForLatencyOnXNNPack()
        )
    mlp = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Conv2D"):
        tfprune.prune_low_magnitude(mlp, pruning_policy=tfprune.PruneForLatencyOnXNNPack())


def test_xnnpack_policy_rejects_unsupported_layers_in_subgraph():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid")(x)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)  # 3x3 conv: not sparse-friendly
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match="not supported"):
        tfprune.prune_low_magnitude(model, pruning_policy=tfprune.PruneForLatencyOnXNNPack())


def test_custom_policy():
    class OnlyLast(tfprune.PruningPolicy):
        def allow_pruning(self, layer):
            return layer.name == "last"

        def ensure_model_supports_pruning(self, model):
            if len(model.layers) < 2:
                raise ValueError("too small")

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2, name="last")]
    )
    pruned = tfprune.prune_low_magnitude(model, pruning_policy=OnlyLast())
    assert [type(layer).__name__ for layer in pruned.layers] == ["Dense", "PruneLowMagnitude"]
