"""How each layer type maps channels: one rule per layer class.

A rule is `rule(b, layer, node, inputs) -> [slots of each output]`: `b` is
the `Builder`, `node` the call (its `input_tensors`, `outputs`,
`arguments`), `inputs` the slots of each input tensor. It ties slots that
go together, names the layer's weights (`b.member`) and its costs
(`b.cost`: FLOPs are `2 x` multiply-accumulates of convolutions, dense and
attention products; element-wise work is not counted).

Rules live in one table, `RULES`, matched most specific class first;
`register(cls, rule)` adds one. `opaque` is what a layer without a rule
gets: its inputs are blocked, its outputs fixed.

Example: a custom element-wise activation layer passes channels through:
>>> class Swish(keras.layers.Layer):
...     def call(self, x):
...         return x * keras.ops.sigmoid(x)
>>> register(Swish, passthrough)
>>> rule_for(Swish()) is passthrough
True
"""

import importlib
import math

import keras
import numpy as np
from keras import layers as L

from tfprune import cloning
from tfprune import layers as layers_lib
from tfprune.graph.builder import Builder


def _last(tensor):
    return tensor.shape[-1]


def _spatial(shape):
    """Product of the dims between batch and channels (None counts 1)."""
    return int(np.prod([d or 1 for d in shape[1:-1]]))


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def opaque(b, layer, inputs, outputs, why=""):
    """A layer whose channel mapping is not followed: the channels it reads
    are blocked (`why` says why), those it writes are fixed."""
    for s in inputs:
        if s is not None:
            b.block(s, layer, why)
    return [_fixed_new(b, o, f"output of '{layer.name}'{why}") for o in outputs]


def _fixed_new(b, tensor, reason):
    n = _last(tensor) if len(tensor.shape) else 1
    slots = b.new(int(n or 1))
    b.fix(slots, reason)
    return slots


def _softmax_like(activation):
    """Whether an activation mixes the channels of its input (a softmax over
    them, or `glu`, which gates one half by the other)."""
    name = getattr(activation, "__name__", str(activation))
    return name in ("softmax", "log_softmax", "sparsemax", "glu")


def no_rule_why(op):
    if cloning.is_graph_model(op):
        return " (a nested model)"
    if not isinstance(op, keras.layers.Layer):
        return f" (no rule for the keras.ops operation {type(op).__name__})"
    return f" (no rule for {type(op).__name__})"


# -------------------------------------------------------------------- rules
# A rule is `rule(b, layer, node, inputs) -> [slots of each output]`, where
# `inputs` holds the slots of each input tensor of the call.


def passthrough(b, layer, node, inputs):
    """Channel `c` in, channel `c` out (activations, pooling, dropout, ...)."""
    if not _channels_last(layer):
        return opaque(b, layer, inputs, node.outputs, " (channels_first)")
    return [inputs[0] for _ in node.outputs]


def fixed_channels(b, layer, node, inputs):
    """Channels mixed together (softmax, LayerNormalization): none removable."""
    for s in inputs:
        b.fix(s, f"normalized together by '{layer.name}'")
    return [inputs[0] if _last(o) == len(inputs[0]) else _fixed_new(b, o, "") for o in node.outputs]


def activation(b, layer, node, inputs):
    if _softmax_like(layer.activation):
        return fixed_channels(b, layer, node, inputs)
    return passthrough(b, layer, node, inputs)


def softmax(b, layer, node, inputs):
    axis = getattr(layer, "axis", -1)
    rank = len(node.input_tensors[0].shape)
    if axis in (-1, rank - 1):
        return fixed_channels(b, layer, node, inputs)
    return passthrough(b, layer, node, inputs)


def _output_activation(b, layer, out):
    if _softmax_like(getattr(layer, "activation", None)):
        b.fix(out, f"softmax of '{layer.name}'")


def batch_normalization(b, layer, node, inputs):
    rank = len(node.input_tensors[0].shape)
    if layer.axis not in (-1, rank - 1):
        return opaque(b, layer, inputs, node.outputs, " (not the last axis)")
    s = inputs[0]
    for path in ("gamma", "beta"):
        if getattr(layer, path, None) is not None:
            b.member(layer, path, 0, s, "write")
    for path in ("moving_mean", "moving_variance"):
        b.member(layer, path, 0, s, "carry")
    if b.params_once(layer):
        b.cost(layer, "params", len(layer.weights), s)
    return [s]


def group_normalization(b, layer, node, inputs):
    rank = len(node.input_tensors[0].shape)
    if layer.axis not in (-1, rank - 1):
        return opaque(b, layer, inputs, node.outputs, " (not the last axis)")
    s = inputs[0]
    size = len(s) // layer.groups
    for g in range(layer.groups):  # a group's channels are normalized together
        b.tie(s[g * size : (g + 1) * size])
    b.resize(layer, "groups", s[::size])
    for path in ("gamma", "beta"):
        if getattr(layer, path, None) is not None:
            b.member(layer, path, 0, s, "write")
    if b.params_once(layer):
        b.cost(layer, "params", len(layer.weights), s)
    return [s]


def layer_normalization(b, layer, node, inputs):
    return fixed_channels(b, layer, node, inputs)


def _outputs(b, layer, out, size_key, *kernel_params):
    """The output channels of a weighted producer: the config entry sizing
    them, the bias, a softmax that fixes them, and the parameter terms
    (`(coefficient, *spaces)` of the kernels, then the bias)."""
    b.resize(layer, size_key, out)
    if layer.use_bias:
        b.member(layer, "bias", 0, out, "write")
    _output_activation(b, layer, out)
    if b.params_once(layer):
        for coefficient, *spaces in kernel_params:
            b.cost(layer, "params", coefficient, *spaces)
        if layer.use_bias:
            b.cost(layer, "params", 1, out)


def conv(b, layer, node, inputs):
    if not _channels_last(layer):
        return opaque(b, layer, inputs, node.outputs, " (channels_first)")
    s = inputs[0]
    groups = getattr(layer, "groups", 1)
    per_group_in = len(s) // groups
    out = b.fresh(layer, layer.filters)
    per_group_out = layer.filters // groups
    for j in range(per_group_in):  # grouped: the j-th input of every group
        b.tie(s[j::per_group_in])
    for j in range(per_group_out):
        b.tie(out[j::per_group_out])
    b.member(layer, "kernel", -2, s[:per_group_in], "read")
    b.member(layer, "kernel", -1, out, "write")
    window = int(np.prod(layer.kernel_size))
    _outputs(b, layer, out, "filters", (window / groups, s, out))
    b.cost(layer, "flops", 2 * window * _spatial(node.outputs[0].shape) / groups, s, out)
    return [out]


def conv_transpose(b, layer, node, inputs):
    if not _channels_last(layer):
        return opaque(b, layer, inputs, node.outputs, " (channels_first)")
    s = inputs[0]
    out = b.fresh(layer, layer.filters)
    b.member(layer, "kernel", -1, s, "read")
    b.member(layer, "kernel", -2, out, "write")
    window = int(np.prod(layer.kernel_size))
    _outputs(b, layer, out, "filters", (window, s, out))
    b.cost(layer, "flops", 2 * window * _spatial(node.input_tensors[0].shape), s, out)
    return [out]


def depthwise_conv(b, layer, node, inputs):
    if not _channels_last(layer):
        return opaque(b, layer, inputs, node.outputs, " (channels_first)")
    s = inputs[0]
    m = layer.depth_multiplier
    out = np.repeat(s, m)  # output c*m + j comes from input c
    b.member(layer, "kernel", -2, s, "write")
    if layer.use_bias:
        b.member(layer, "bias", 0, out, "write")
    window = int(np.prod(layer.kernel_size))
    if b.params_once(layer):
        b.cost(layer, "params", window + (1 if layer.use_bias else 0), out)
    b.cost(layer, "flops", 2 * window * _spatial(node.outputs[0].shape), out)
    return [out]


def separable_conv(b, layer, node, inputs):
    if not _channels_last(layer):
        return opaque(b, layer, inputs, node.outputs, " (channels_first)")
    s = inputs[0]
    m = layer.depth_multiplier
    mid = np.repeat(s, m)
    out = b.fresh(layer, layer.filters)
    b.member(layer, "depthwise_kernel", -2, s, "write")
    b.member(layer, "pointwise_kernel", -2, mid, "read")
    b.member(layer, "pointwise_kernel", -1, out, "write")
    window = int(np.prod(layer.kernel_size))
    _outputs(b, layer, out, "filters", (window, mid), (1, mid, out))
    spatial = _spatial(node.outputs[0].shape)
    b.cost(layer, "flops", 2 * window * spatial, mid)
    b.cost(layer, "flops", 2 * spatial, mid, out)
    return [out]


def dense(b, layer, node, inputs):
    s = inputs[0]
    out = b.fresh(layer, layer.units)
    b.member(layer, "kernel", 0, s, "read")
    b.member(layer, "kernel", 1, out, "write")
    _outputs(b, layer, out, "units", (1, s, out))
    b.cost(layer, "flops", 2 * _spatial(node.input_tensors[0].shape), s, out)
    return [out]


def einsum_dense(b, layer, node, inputs):
    """Fixed channels (no rule maps an equation's axes to channels yet), but
    its FLOPs count: 2 per output element per kernel entry summed into it."""
    out = opaque(b, layer, inputs, node.outputs, " (channels of an EinsumDense)")
    lhs, kernel, output = layers_lib.einsum_letters(layer)
    sizes = dict(zip(kernel, layer.kernel.shape))
    shape = node.input_tensors[0].shape
    explicit = lhs.replace("...", "")
    offset = len(shape) - len(explicit)  # axes "..." stands for, the batch axis first
    for axis, letter in enumerate(explicit, start=offset):
        sizes.setdefault(letter, 1 if axis == 0 else shape[axis] or 1)  # per example
    elements = int(np.prod([sizes[letter] for letter in output.replace("...", "")]))
    if "..." in output:
        elements *= _spatial(tuple(shape[:offset]) + (1,))
    summed = [size for letter, size in zip(kernel, layer.kernel.shape) if letter not in output]
    b.cost(layer, "flops", 2 * elements * int(np.prod(summed)))
    return out


def embedding(b, layer, node, inputs):
    out = b.fresh(layer, layer.output_dim)
    b.member(layer, "embeddings", 1, out, "write")
    b.resize(layer, "output_dim", out)
    if b.params_once(layer):
        b.cost(layer, "params", layer.input_dim, out)
    return [out]


def call_input(node, name, position):
    """The tensor passed as argument `name` (or positional `position`)."""
    args, kwargs = node.arguments.args, node.arguments.kwargs
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    return None


def multi_head_attention(b, layer, node, inputs):
    slots = {id(t): s for t, s in zip(node.input_tensors, inputs)}
    query = call_input(node, "query", 0)
    value = call_input(node, "value", 1)
    key = call_input(node, "key", 2)
    key = value if key is None else key
    q, v, k = slots[id(query)], slots[id(value)], slots[id(key)]
    heads = b.fresh(layer, layer.num_heads, key="heads")
    b.resize(layer, "num_heads", heads)
    for part, source in (("_query_dense", q), ("_key_dense", k), ("_value_dense", v)):
        b.member(layer, f"{part}.kernel", 0, source, "read")
        b.member(layer, f"{part}.kernel", 1, heads, "write")
        if layer._use_bias:
            b.member(layer, f"{part}.bias", 0, heads, "write")
    if layer._output_shape is None:
        out = q  # the output has the query's width: channel c goes with query c
    else:
        out = b.fresh(layer, int(np.prod(layer._output_shape)))
        b.fix(out, f"output_shape of '{layer.name}'")
    b.member(layer, "_output_dense.kernel", 0, heads, "read")
    b.member(layer, "_output_dense.kernel", -1, out, "write")
    if layer._use_bias:
        b.member(layer, "_output_dense.bias", 0, out, "write")
    kd, vd = layer._key_dim, layer._value_dim or layer._key_dim
    tq = _spatial(query.shape)
    tk = _spatial(key.shape)
    if b.params_once(layer):
        bias = 1 if layer._use_bias else 0
        for source, width in ((q, kd), (k, kd), (v, vd)):
            b.cost(layer, "params", width, source, heads)
            b.cost(layer, "params", width * bias, heads)
        b.cost(layer, "params", vd, heads, out)
        b.cost(layer, "params", bias, out)
    for source, width, steps in ((q, kd, tq), (k, kd, tk), (v, vd, tk)):
        b.cost(layer, "flops", 2 * steps * width, source, heads)
    b.cost(layer, "flops", 2 * tq * tk * (kd + vd), heads)
    b.cost(layer, "flops", 2 * tq * vd, heads, out)
    outputs = [out]
    if len(node.outputs) > 1:  # attention scores: one row per head
        outputs.append(_fixed_new(b, node.outputs[1], f"scores of '{layer.name}'"))
    return outputs


_GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}


def recurrent(b, layer, node, inputs):
    gates = next((g for name, g in _GATES.items() if isinstance(layer, getattr(L, name))), None)
    if gates is None or getattr(layer, "stateful", False):
        return opaque(b, layer, inputs, node.outputs)
    s = inputs[0]
    units = b.fresh(layer, layer.cell.units)
    tiled = np.tile(units, gates)  # gate-major columns: [gate, unit]
    b.resize(layer, "units", units)
    b.member(layer, "cell.kernel", 0, s, "read")
    b.member(layer, "cell.kernel", 1, tiled, "write")
    b.member(layer, "cell.recurrent_kernel", 0, units, "read")
    b.member(layer, "cell.recurrent_kernel", 1, tiled, "write")
    if layer.cell.use_bias:
        b.member(layer, "cell.bias", -1, tiled, "write")
    steps = node.input_tensors[0].shape[1] or 1
    if b.params_once(layer):
        b.cost(layer, "params", gates, s, units)
        b.cost(layer, "params", gates, units, units)
        if layer.cell.use_bias:
            bias_rows = int(np.prod(layer.cell.bias.shape)) // (gates * layer.cell.units)
            b.cost(layer, "params", gates * bias_rows, units)
    b.cost(layer, "flops", 2 * steps * gates, s, units)
    b.cost(layer, "flops", 2 * steps * gates, units, units)
    return [units for _ in node.outputs]  # sequences, and the h (and c) states


class _Call:
    """What a rule reads of a node: its tensors (and call arguments)."""

    def __init__(self, input_shapes, output_shapes):
        self.input_tensors = [keras.KerasTensor(shape) for shape in input_shapes]
        self.outputs = [keras.KerasTensor(shape) for shape in output_shapes]
        self.arguments = None


def _inner_flops(b, layer, inner, input_shape, output_shape, times=1):
    """Counts `times` calls of `inner` (a wrapped layer's own layer) on
    tensors of these shapes as `layer`'s FLOPs, every channel kept: its rule
    runs on a scratch graph. A layer no rule describes stays uncounted."""
    rule = rule_for(inner)
    if rule is None:
        b.unruled.add(layer.name)
        return
    scratch = Builder()
    rule(scratch, inner, _Call([input_shape], [output_shape]), [scratch.new(int(input_shape[-1] or 1))])
    flops = sum(t.coefficient * math.prod(len(s) for s in t.spaces) for t in scratch.costs["flops"])
    b.cost(layer, "flops", times * flops)


def time_distributed(b, layer, node, inputs):
    """Fixed channels; FLOPs: the inner layer's on one step, times the steps."""
    out = opaque(b, layer, inputs, node.outputs, " (channels inside a TimeDistributed)")
    x, y = node.input_tensors[0].shape, node.outputs[0].shape
    step_in, step_out = (x[0], *x[2:]), (y[0], *y[2:])
    _inner_flops(b, layer, layer.layer, step_in, step_out, times=x[1] or 1)
    return out


def bidirectional(b, layer, node, inputs):
    """Fixed channels; FLOPs: the forward and the backward layer's."""
    out = opaque(b, layer, inputs, node.outputs, " (channels of a Bidirectional)")
    x = node.input_tensors[0].shape
    for inner in (layer.forward_layer, layer.backward_layer):
        units = getattr(getattr(inner, "cell", None), "units", None)
        if not isinstance(units, int):  # a cell without one width: not counted
            b.unruled.add(layer.name)
            continue
        _inner_flops(b, layer, inner, x, (x[0], units))
    return out


def merge(b, layer, node, inputs):
    """Element-wise merges: channel `c` of every input goes together."""
    widest = max(len(s) for s in inputs)
    full = [s for s in inputs if len(s) == widest]
    for s in full[1:]:
        b.union(full[0], s)
    # Inputs of width 1 broadcast over the channels: not coupled.
    if any(len(s) not in (1, widest) for s in inputs):
        return opaque(b, layer, inputs, node.outputs, " (inputs of other widths)")
    return [full[0]]


def concatenate(b, layer, node, inputs):
    rank = len(node.outputs[0].shape)
    if layer.axis in (-1, rank - 1):
        return [np.concatenate(inputs)]
    return merge(b, layer, node, inputs)


def reshape(b, layer, node, inputs):
    """Flatten and Reshape: channels follow their positions, if knowable."""
    source, target = node.input_tensors[0].shape[1:], node.outputs[0].shape[1:]
    s = inputs[0]
    if target and source and target[-1] == source[-1] and len(s) == source[-1]:
        if isinstance(layer, L.Reshape):
            b.resize(layer, "target_shape", s)
        return [s]  # spatial dims reshaped, channels unchanged
    if None in source or None in target or not target:
        return opaque(b, layer, inputs, node.outputs, " (dynamic shape)")
    positions = np.broadcast_to(s, tuple(source)).reshape(tuple(target))
    rows = positions.reshape(-1, target[-1])
    if not (rows == rows[:1]).all():
        return opaque(b, layer, inputs, node.outputs, " (channels split across axes)")
    if isinstance(layer, L.Reshape):
        b.resize(layer, "target_shape", rows[0])
    return [rows[0]]


def input_layer(b, layer, node, inputs):
    return [_fixed_new(b, o, "model input") for o in node.outputs]


def prelu(b, layer, node, inputs):
    s = inputs[0]
    if layer.alpha.shape[-1] != len(s):
        return fixed_channels(b, layer, node, inputs)
    b.member(layer, "alpha", -1, s, "write")
    if b.params_once(layer):
        b.cost(layer, "params", math.prod(layer.alpha.shape[:-1]), s)
    return [s]


def layer_scale(b, layer, node, inputs):
    """A learned factor per channel, `x * gamma` (ConvNeXt's LayerScale)."""
    s = inputs[0]
    if tuple(layer.gamma.shape) != (len(s),):
        return fixed_channels(b, layer, node, inputs)
    b.member(layer, "gamma", 0, s, "write")
    b.resize(layer, "projection_dim", s)
    if b.params_once(layer):
        b.cost(layer, "params", 1, s)
    return [s]


UNARY_OPS = {
    "Relu", "Relu6", "Sigmoid", "Silu", "Swish", "HardSigmoid", "HardSilu", "HardSwish",
    "Gelu", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign", "Tanh", "Abs", "Negative",
    "Square", "Sqrt", "Exp", "Log", "Cast", "Celu", "Glu", "LogSigmoid", "Mish",
}  # fmt: skip
BINARY_OPS = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"}


def constant_operands(node):
    """The operands of a call that are not graph tensors (`x + 1.0`: `[1.0]`)."""
    leaves = keras.tree.flatten((node.arguments.args, node.arguments.kwargs))
    return [v for v in leaves if v is not None and not isinstance(v, keras.KerasTensor)]


def operation(b, op, node, inputs):
    """`keras.ops` nodes of a functional graph (`x + y`, `ops.relu(x)`)."""
    name = type(op).__name__
    if name in UNARY_OPS and len(inputs) == 1:
        return [inputs[0]]
    if name in BINARY_OPS:
        if len(inputs) == 1:  # a tensor and a constant
            if any(np.ndim(c) and np.shape(c)[-1] > 1 for c in constant_operands(node)):
                b.fix(inputs[0], f"combined with a per-channel constant by '{op.name}'")
            return [inputs[0]]
        return merge(b, op, node, inputs)
    return opaque(b, op, inputs, node.outputs, no_rule_why(op))


RULES = {
    L.InputLayer: input_layer,
    L.Conv1DTranspose: conv_transpose,
    L.Conv2DTranspose: conv_transpose,
    L.Conv3DTranspose: conv_transpose,
    L.DepthwiseConv1D: depthwise_conv,
    L.DepthwiseConv2D: depthwise_conv,
    L.SeparableConv1D: separable_conv,
    L.SeparableConv2D: separable_conv,
    L.Conv1D: conv,
    L.Conv2D: conv,
    L.Conv3D: conv,
    L.Dense: dense,
    L.EinsumDense: einsum_dense,
    L.TimeDistributed: time_distributed,
    L.Bidirectional: bidirectional,
    L.Embedding: embedding,
    L.MultiHeadAttention: multi_head_attention,
    L.LSTM: recurrent,
    L.GRU: recurrent,
    L.SimpleRNN: recurrent,
    L.BatchNormalization: batch_normalization,
    L.GroupNormalization: group_normalization,
    L.LayerNormalization: layer_normalization,
    L.Softmax: softmax,
    L.Activation: activation,
    L.PReLU: prelu,
    L.Add: merge,
    L.Subtract: merge,
    L.Multiply: merge,
    L.Average: merge,
    L.Maximum: merge,
    L.Minimum: merge,
    L.Concatenate: concatenate,
    L.Flatten: reshape,
    L.Reshape: reshape,
}
for _name in (
    "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Identity", "Rescaling", "Masking",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
):  # fmt: skip
    if hasattr(L, _name):
        RULES[getattr(L, _name)] = passthrough


# Layers of keras.applications models that Keras does not export: ConvNeXt's
# `x * gamma`, and InceptionResNetV2's residual `x + scale * r` (a scalar).
for _module, _name, _rule in (
    ("convnext", "LayerScale", layer_scale),
    ("inception_resnet_v2", "CustomScaleLayer", merge),
):
    try:
        _class = getattr(importlib.import_module(f"keras.src.applications.{_module}"), _name)
    except (ImportError, AttributeError):  # pragma: no cover (another Keras layout)
        continue
    if isinstance(_class, type):
        RULES[_class] = _rule


def register(layer_class, rule):
    """Describes how a layer type maps channels (see the rules in this module).

    Example: a custom element-wise activation layer passes channels through:
    >>> class Swish(keras.layers.Layer):
    ...     def call(self, x):
    ...         return x * keras.ops.sigmoid(x)
    >>> register(Swish, passthrough)
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.Operation)):
        raise TypeError(
            f"Argument `layer_class` must be a layer class. Received: layer_class={layer_class!r}"
        )
    if not callable(rule):
        raise TypeError(f"Argument `rule` must be callable. Received: rule={rule!r}")
    RULES[layer_class] = rule


def rule_for(op):
    for cls in type(op).__mro__:
        if cls in RULES:
            return RULES[cls]
    if not isinstance(op, keras.layers.Layer):
        return operation
    return None
