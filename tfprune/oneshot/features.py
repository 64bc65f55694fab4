"""A layer as a matrix product: its input features and its kernel as `(F, out)`.

One-shot methods see every prunable layer as `Y = X @ W`: `X` has one row per
calibration row / token / patch and one column per input feature, `W` is the
kernel laid out `(features, outputs)`.

- `Dense`: features are the last input axis; `W` is the kernel.
- `EinsumDense`: features are the kernel axes whose letter the output lacks
  (GPT-2's query kernel `(32, 2, 16)` has 32; its output projection
  `(2, 16, 32)` has 2 x 16).
- `Conv1D/2D/3D`: features are the im2col patches, one per (kernel
  position, input channel), in the order of `kernel.reshape(-1, out)`,
  taken with `keras.ops.conv` and an identity kernel. A grouped convolution
  (`groups=g`) is `g` matrix products: group `k`'s outputs read only its
  input channels, so its rows hold each group's patches side by side
  (`g x features` columns) and each group is pruned as a layer of its own.

Example:
>>> dense = keras.layers.Dense(3)
>>> dense.build((None, 4))
>>> view = view_of(dense)
>>> view.features, view.outputs
(4, 3)
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from tfprune import layers as layers_lib


@dataclasses.dataclass
class LayerView:
    """How one layer's inputs and kernel map to `X` and `W`."""

    layer: keras.layers.Layer
    features: int
    outputs: int
    to_rows: object  # inputs -> X (n, features)
    to_matrix: object  # kernel value (NumPy) -> W (features, outputs)
    from_matrix: object  # (W, kernel shape) -> kernel value
    group_width: int  # input channels per kernel position (N:M groups restart there)
    in_axis: int
    out_axis: int
    output_axes: tuple = ()  # the kernel axes W's columns come from
    groups: int = 1  # matrix products side by side (a grouped convolution)

    def group_slices(self):
        """`(rows' columns, W's columns)` of each group's matrix product."""
        width = self.outputs // self.groups
        return [
            (slice(g * self.features, (g + 1) * self.features), slice(g * width, (g + 1) * width))
            for g in range(self.groups)
        ]

    def columns(self, index):
        """The columns of `W` a piece of the kernel (`index`: a slice per axis,
        splitting only the output axes) holds, as indices into the whole `W`."""
        shape = tuple(self.layer.kernel.shape)
        ids = np.arange(self.outputs).reshape([shape[a] for a in self.output_axes])
        return ids[tuple(index[a] for a in self.output_axes)].ravel()

    def kernel_of(self, W, shape=None):
        """The kernel value of matrix `W` (of a slice of `shape` along the output axes)."""
        return self.from_matrix(W, tuple(self.layer.kernel.shape) if shape is None else shape)


def supported(layer):
    """Whether one-shot pruning can treat `layer` as a matrix product."""
    try:
        view_of(layer)
    except ValueError:
        return False
    return True


def view_of(layer):
    """The `LayerView` of a built Dense, EinsumDense or Conv layer."""
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_view(layer)
    if isinstance(layer, keras.layers.Dense):
        shape = tuple(layer.kernel.shape)
        return LayerView(
            layer, shape[0], shape[1],
            lambda x: ops.reshape(ops.cast(x, "float32"), (-1, shape[0])),
            lambda k: k, lambda w, _: w, shape[0], 0, 1, (1,),
        )  # fmt: skip
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)) and not isinstance(
        layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    ):
        return _conv_view(layer)
    raise ValueError(
        f"Layer '{layer.name}' of type {type(layer).__name__} is not a Dense, "
        "EinsumDense or Conv1D/2D/3D layer."
    )


def _conv_view(layer):
    shape = tuple(layer.kernel.shape)  # spatial..., in / groups, out
    features = int(np.prod(shape[:-1]))  # of one group
    groups = int(layer.groups)
    full = features * groups  # patches of every input channel
    identity = np.eye(full, dtype="float32").reshape(shape[:-2] + (shape[-2] * groups, full))

    def to_rows(x):
        x, padding = ops.cast(x, "float32"), layer.padding
        if padding == "causal":  # Conv1D: the past only, left-padded as the layer does
            width = layer.dilation_rate[0] * (shape[0] - 1)
            time = 1 if layer.data_format == "channels_last" else 2
            x = ops.pad(x, [(width, 0) if axis == time else (0, 0) for axis in range(3)])
            padding = "valid"
        patches = ops.conv(
            x,
            ops.convert_to_tensor(identity),
            strides=layer.strides,
            padding=padding,
            data_format=layer.data_format,
            dilation_rate=layer.dilation_rate,
        )
        if layer.data_format == "channels_first":
            patches = ops.moveaxis(patches, 1, -1)
        if groups > 1:  # (position, group, channel) -> (group, position, channel)
            positions = features // shape[-2]
            patches = ops.reshape(patches, (-1, positions, groups, shape[-2]))
            patches = ops.transpose(patches, (0, 2, 1, 3))
        return ops.reshape(patches, (-1, full))

    return LayerView(
        layer, features, shape[-1], to_rows,
        lambda k: k.reshape(features, -1), lambda w, like: w.reshape(like),
        shape[-2], -2, -1, (len(shape) - 1,), groups,
    )  # fmt: skip


def _einsum_view(layer):
    inputs, kernel, output = layers_lib.einsum_letters(layer)
    equation = f"{inputs},{kernel}->{output}"
    if "." in kernel:
        raise ValueError(f"Layer '{layer.name}': equation {equation!r} has '...' in the kernel.")
    contracted = [c for c in kernel if c in inputs and c not in output]
    batched = [c for c in kernel if c in inputs and c in output]
    if not contracted or batched:
        raise ValueError(
            f"Layer '{layer.name}': equation {equation!r} is not a plain matrix "
            "product over the kernel's input axes."
        )
    shape = tuple(layer.kernel.shape)
    kernel_in = [kernel.index(c) for c in contracted]
    kernel_rest = [i for i in range(len(kernel)) if i not in kernel_in]
    features = int(np.prod([shape[i] for i in kernel_in]))
    outputs = int(np.prod([shape[i] for i in kernel_rest]))
    permutation = kernel_in + kernel_rest
    inverse = list(np.argsort(permutation))
    explicit = inputs.replace("...", "")

    def to_rows(x):
        rank = len(x.shape)
        offset = rank - len(explicit)  # "..." fills the leading axes
        axes = [offset + explicit.index(c) for c in contracted]
        others = [a for a in range(rank) if a not in axes]
        x = ops.transpose(ops.cast(x, "float32"), others + axes)
        return ops.reshape(x, (-1, features))

    def to_matrix(k):
        return np.transpose(k, permutation).reshape(features, -1)

    def from_matrix(w, like):
        return np.transpose(w.reshape([like[i] for i in permutation]), inverse)

    in_axis = kernel_in[-1]
    out_axis = kernel_rest[-1] if kernel_rest else in_axis
    return LayerView(
        layer, features, outputs, to_rows, to_matrix, from_matrix, shape[in_axis],
        in_axis, out_axis, tuple(kernel_rest),
    )  # fmt: skip
