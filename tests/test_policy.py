import re

import keras
import pytest
from keras import layers as L
from keras import ops

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


def xnnpack_stem(shape=(8, 8, 3)):
    """`Input -> ZeroPadding2D(1) -> Conv2D 3x3/2`, where the sparse subgraph starts."""
    inputs = keras.Input(shape)
    x = L.ZeroPadding2D(1)(inputs)
    return inputs, L.Conv2D(16, 3, strides=2, padding="valid")(x)


def conv1x1(x, filters=16):
    return L.Conv2D(filters, 1)(x)


def tfmot_tf_ops_block(x):
    # TFMOT's testFunctionalModelWithTFOpsForLatencyOnXNNPackPolicy. `tf.identity`
    # has no symbolic Keras 3 form; `keras.ops.copy` is `tf.identity` on TF.
    residual = conv1x1(x)
    x = x + residual
    x = x - residual
    x = x * residual
    return ops.copy(x)


# Blocks between the stem and `GlobalAveragePooling2D`. Operators and
# `keras.ops` calls on KerasTensors are op nodes (`keras.src.ops.numpy.Add`...),
# not layers; with a constant operand the node has a single parent.
SUPPORTED_BLOCKS = {
    "operator_add_residual": lambda x: x + conv1x1(x),
    "ops_add": lambda x: ops.add(x, conv1x1(x)),
    "operator_subtract": lambda x: x - conv1x1(x),
    "ops_subtract": lambda x: ops.subtract(conv1x1(x), x),
    "operator_multiply": lambda x: x * conv1x1(x),
    "ops_multiply": lambda x: ops.multiply(x, conv1x1(x)),
    "ops_multiply_same_tensor": lambda x: ops.multiply(x, x) + conv1x1(x),
    "constant_operands": lambda x: 1.0 - conv1x1(x * 2.0) + 0.5,
    "ops_copy": lambda x: ops.copy(conv1x1(x)),
    "identity_layer": lambda x: L.Identity()(conv1x1(x)),
    "add_layer": lambda x: L.Add()([x, conv1x1(x)]),
    "subtract_layer": lambda x: L.Subtract()([x, conv1x1(x)]),
    "multiply_layer": lambda x: L.Multiply()([x, conv1x1(x)]),
    "tfmot_tf_ops": tfmot_tf_ops_block,
}


def model_with_block(block):
    inputs, x = xnnpack_stem()
    x = L.GlobalAveragePooling2D(keepdims=True)(block(x))
    return keras.Model(inputs, x)


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS.values(), ids=SUPPORTED_BLOCKS.keys())
def test_xnnpack_policy_accepts_arithmetic_nodes(block):
    model = model_with_block(block)
    policy = tfprune.PruneForLatencyOnXNNPack()
    policy.ensure_model_supports_pruning(model)
    allowed = [op for op in model.operations if policy.allow_pruning(op)]
    assert [type(op) for op in allowed] == [L.Conv2D]
    assert tuple(allowed[0].kernel_size) == (1, 1)


UNSUPPORTED_BLOCKS = {
    "ops_tanh": lambda x: ops.tanh(conv1x1(x)),
    "operator_divide": lambda x: x / conv1x1(x),
    "divide_by_constant": lambda x: conv1x1(x) / 2.0,
    "operator_negative": lambda x: -conv1x1(x),
    # TFMOT's testPruneUnsupportedModelForLatencyOnXNNPackPolicyMiddleLayer.
    "max_pooling_layer": lambda x: L.MaxPooling2D(2)(conv1x1(x)),
}


@pytest.mark.parametrize("block", UNSUPPORTED_BLOCKS.values(), ids=UNSUPPORTED_BLOCKS.keys())
def test_xnnpack_policy_rejects_unsupported_node_naming_it(block):
    inputs, x = xnnpack_stem()
    x = block(x)
    node = x._keras_history.operation
    x = L.GlobalAveragePooling2D(keepdims=True)(conv1x1(x))
    model = keras.Model(inputs, x)
    kind = "Layer" if isinstance(node, L.Layer) else "Operation"
    message = f"{kind} {type(node).__name__} ('{node.name}') is not supported"
    with pytest.raises(ValueError, match=re.escape(message)):
        tfprune.PruneForLatencyOnXNNPack().ensure_model_supports_pruning(model)


def tfmot_two_branch_model():
    """TFMOT's testFunctionalModelForLatencyOnXNNPackPolicy: 6 1x1 convs."""
    i1 = keras.Input((16, 16, 3))
    x1 = L.Conv2D(16, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(i1))
    x1 = L.Add()([L.DepthwiseConv2D(3, padding="same")(x1), conv1x1(x1)])

    i2 = keras.Input((16, 16, 3))
    x2 = L.Conv2D(8, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(i2))
    x2 = L.ZeroPadding2D(1)(x2)
    x2 = L.DepthwiseConv2D(3, strides=2, padding="valid")(x2)
    x2_1 = L.GlobalAveragePooling2D(keepdims=True)(x2)
    x2_1 = L.Activation("sigmoid")(conv1x1(x2_1, 32))
    x2_2 = L.UpSampling2D(interpolation="bilinear")(conv1x1(x2, 32))
    x2 = conv1x1(L.Multiply()([x2_1, x2_2]))

    x = L.GlobalAveragePooling2D(keepdims=True)(L.Add()([x1, x2]))
    return keras.Model([i1, i2], [conv1x1(x, 7), conv1x1(x, 3)])


def residual_ops_model():
    """`x + conv(x)`, then `keras.ops.multiply` by a gate: 3 1x1 convs."""
    inputs, x = xnnpack_stem()
    x = x + conv1x1(x)
    gate = L.Activation("sigmoid")(conv1x1(x))
    x = conv1x1(ops.multiply(x, gate))
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    return keras.Model(inputs, L.Flatten()(x))


@pytest.mark.parametrize(
    "build, expected",
    [
        pytest.param(tfmot_two_branch_model, 6, id="tfmot_add_multiply_layers"),
        pytest.param(residual_ops_model, 3, id="residual_ops"),
        pytest.param(lambda: model_with_block(tfmot_tf_ops_block), 1, id="tfmot_tf_ops"),
    ],
)
def test_xnnpack_policy_wraps_exactly_the_1x1_convs(build, expected):
    pruned = tfprune.prune_low_magnitude(build(), pruning_policy=tfprune.PruneForLatencyOnXNNPack())
    layers = pruned.layers
    wrapped = [layer.layer for layer in layers if isinstance(layer, tfprune.PruneLowMagnitude)]
    assert len(wrapped) == expected
    assert all(type(layer) is L.Conv2D for layer in wrapped)
    assert all(tuple(layer.kernel_size) == (1, 1) for layer in wrapped)
    unwrapped = [layer for layer in layers if isinstance(layer, L.Conv2D)]
    assert all(tuple(layer.kernel_size) != (1, 1) for layer in unwrapped)


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
