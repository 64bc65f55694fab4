"""Channels that are provably zero, from a model's weights.

`thin` removes a channel when nothing reads it: every weight reading it is
zero, *or the value it reads is exactly zero*. This module finds the second
kind. It walks the graph (nested models included) with, for every tensor, a
boolean per channel: "this channel is 0.0 for every input".

- Sources: a `Conv`/`Dense`/`SeparableConv`/`Conv*Transpose`/`Embedding`
  channel whose kernel slice and bias are zero and whose activation maps 0
  to 0; a `BatchNormalization` channel with zero scale and shift; a
  `Rescaling` channel with zero scale and offset.
- Carried through: activations with `f(0) = 0` (ReLU, swish, GELU, tanh,
  linear; not sigmoid), pooling, padding, cropping, up-sampling, dropout,
  flatten/reshape (by position), concatenation (by offset), depthwise convs
  without a bias (or a zero one); `Add`/`Subtract`/`Average`/`Maximum`/
  `Minimum` where every input is zero (and no operand is a constant:
  `x + 1.0` is not zero); `Multiply` where any input is zero.
- Everything else (normalizations, unknown layers) is assumed non-zero.

`dead_reads(model)` returns, for the read weights of each consumer
(`(layer, weight path, axis)` as in `tfprune.graph`), which input channels
they read as exact zeros.

Example:
>>> x = keras.Input((4,))
>>> h = keras.layers.Dense(3, activation="relu", name="a")(x)
>>> model = keras.Model(x, keras.layers.Dense(2, name="b")(h))
>>> model.get_layer("a").set_weights([np.zeros((4, 3)), np.zeros(3)])
>>> dead_reads(model)[("b", "kernel", 0)].tolist()
[True, True, True]
"""

import keras
import numpy as np
from keras import layers as L

from tfprune import cloning
from tfprune import graph as graph_lib

_CARRY = tuple(
    getattr(L, name)
    for name in (
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity", "Masking",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
        "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
        "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
        "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    )
    if hasattr(L, name)
)  # fmt: skip
_ALL_ZERO = ("Add", "Subtract", "Average", "Maximum", "Minimum")


def _value(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def keeps_zero(function):
    """Whether an activation maps 0 to exactly 0."""
    if function is None:
        return True
    try:  # two channels: a softmax over one warns
        return not np.any(_value(function(keras.ops.zeros((1, 2), "float32"))))
    except Exception:  # an activation that needs more than a vector
        return False


def zero_slices(weight, axis):
    """Per index of `axis`: whether the weight's slice there is all zero."""
    axis = axis % weight.ndim
    other = tuple(a for a in range(weight.ndim) if a != axis)
    return ~np.any(weight != 0, axis=other) if other else weight == 0


def _producer(layer, kernel_axis):
    zero = zero_slices(_value(layer.kernel if not hasattr(layer, "pointwise_kernel")
                               else layer.pointwise_kernel), kernel_axis)  # fmt: skip
    if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
        zero &= _value(layer.bias) == 0
    return zero if keeps_zero(getattr(layer, "activation", None)) else np.zeros_like(zero)


def _rule(op, node, zeros):
    """Zero channels of the outputs of one node, from its inputs'."""
    first = zeros[0] if zeros else None
    width = [len(z) for z in zeros]
    if isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return [_producer(op, -2)]
    if isinstance(op, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        kernel = zero_slices(_value(op.kernel), -2)  # per input channel
        zero = np.repeat(first | kernel, op.depth_multiplier)
        if op.use_bias:
            zero &= _value(op.bias) == 0
        return [zero if keeps_zero(op.activation) else np.zeros_like(zero)]
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D, L.SeparableConv1D, L.SeparableConv2D)):
        return [_producer(op, -1)]
    if isinstance(op, L.Dense):
        return [_producer(op, 1)]
    if isinstance(op, L.Embedding):
        return [zero_slices(_value(op.embeddings), 1)]
    if isinstance(op, L.BatchNormalization):
        zero = np.ones(width[0], bool)
        zero &= _value(op.gamma) == 0 if op.scale else False
        zero &= _value(op.beta) == 0 if op.center else True
        return [zero]
    if isinstance(op, L.Rescaling):
        scale = np.broadcast_to(np.asarray(op.scale, "float32"), (width[0],))
        offset = np.broadcast_to(np.asarray(op.offset, "float32"), (width[0],))
        return [((first | (scale == 0)) & (offset == 0))]
    if isinstance(op, (L.Activation, L.ReLU, L.LeakyReLU, L.ELU)):
        function = getattr(op, "activation", None) or op.call
        return [first if keeps_zero(function) else np.zeros_like(first)]
    if isinstance(op, _CARRY):
        return [first for _ in node.outputs]
    if isinstance(op, (L.Flatten, L.Reshape)):
        source, target = node.input_tensors[0].shape[1:], node.outputs[0].shape[1:]
        if target and source and target[-1] == source[-1]:
            return [first]
        if None in source or None in target or not target:
            return [np.zeros(node.outputs[0].shape[-1] or 1, bool)]
        rows = np.broadcast_to(first, tuple(source)).reshape(tuple(target)).reshape(-1, target[-1])
        return [rows.all(axis=0)]
    if isinstance(op, L.Concatenate) and op.axis in (-1, len(node.outputs[0].shape) - 1):
        return [np.concatenate(zeros)]
    name = type(op).__name__
    if name in _ALL_ZERO and graph_lib.constant_operands(node):  # x + 1.0 is not zero where x is
        return [np.zeros(t.shape[-1] or 1, bool) for t in node.outputs]
    if name in _ALL_ZERO or name == "Multiply":
        full = max(width)
        wide = [z for z in zeros if len(z) == full]
        narrow = [np.broadcast_to(z, (full,)) for z in zeros if len(z) == 1 and full > 1]
        if name == "Multiply":
            return [np.logical_or.reduce(wide + narrow)]
        return [np.logical_and.reduce(wide + narrow)]
    if not isinstance(op, keras.layers.Layer) and len(zeros) == 1:  # keras.ops unary nodes
        if name in graph_lib.UNARY_OPS and keeps_zero(getattr(keras.ops, _snake(name), None)):
            return [first]
    return [np.zeros(t.shape[-1] or 1, bool) if len(t.shape) else np.zeros(1, bool)
            for t in node.outputs]  # fmt: skip


def _snake(name):
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _reads(op, node, zeros, found):
    """Records which input channels each read weight of `op` sees as zero."""
    first = zeros[0] if zeros else None
    if isinstance(op, (L.Conv1D, L.Conv2D, L.Conv3D)) and not isinstance(
        op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
    ):
        per_group = len(first) // op.groups
        dead = first.reshape(op.groups, per_group).all(axis=0)
        _add(found, (op.name, "kernel", -2), dead)
    elif isinstance(op, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        _add(found, (op.name, "kernel", -1), first)
    elif isinstance(op, (L.SeparableConv1D, L.SeparableConv2D)):
        _add(found, (op.name, "pointwise_kernel", -2), np.repeat(first, op.depth_multiplier))
    elif isinstance(op, L.Dense):
        _add(found, (op.name, "kernel", 0), first)
    elif isinstance(op, L.MultiHeadAttention):
        by_id = {id(t): z for t, z in zip(node.input_tensors, zeros)}
        query = graph_lib.call_input(node, "query", 0)
        value = graph_lib.call_input(node, "value", 1)
        key = graph_lib.call_input(node, "key", 2)
        key = value if key is None else key
        for part, tensor in (("_query_dense", query), ("_key_dense", key), ("_value_dense", value)):
            _add(found, (op.name, f"{part}.kernel", 0), by_id[id(tensor)])
    elif isinstance(op, L.RNN) and hasattr(op, "cell"):
        _add(found, (op.name, "cell.kernel", 0), first)


def _add(found, key, dead):
    # a layer called several times reads a channel as zero only if every call does
    found[key] = dead if key not in found else (found[key] & dead)


def _walk(model, found, inputs=None):
    zeros = {}
    graph = graph_lib.graph_of(model)
    if inputs is not None:
        for tensor, z in zip(graph.inputs, inputs):
            zeros[id(tensor)] = z
    for node in graph_lib.nodes(model):
        op = graph_lib.unwrapped(node.operation)
        if node.is_input:
            if inputs is None:
                for t in node.outputs:
                    zeros[id(t)] = np.zeros(t.shape[-1] or 1, bool)
            continue
        args = [zeros.get(id(t)) for t in node.input_tensors]
        if any(z is None for z in args) or any(len(t.shape) == 0 for t in node.input_tensors):
            out = [np.zeros(t.shape[-1] or 1, bool) for t in node.outputs]
        elif cloning.is_graph_model(op):
            out = _walk(op, found, args)
        else:
            try:
                out = _rule(op, node, args)
                _reads(op, node, args, found)
            except (AttributeError, ValueError, TypeError):
                out = [np.zeros(t.shape[-1] or 1, bool) for t in node.outputs]
        for tensor, z in zip(node.outputs, out):
            n = tensor.shape[-1] if len(tensor.shape) else 1
            if z is None or len(z) != (n or len(z)):
                z = np.zeros(n or 1, bool)
            zeros[id(tensor)] = np.asarray(z, bool)
    return [zeros[id(t)] for t in graph.outputs]


def dead_reads(model):
    """`{(layer, weight path, axis): channels read as exact zeros}` (see module)."""
    found = {}
    _walk(model, found)
    return found
