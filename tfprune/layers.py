"""What each layer type prunes: the one table every stage reads.

A layer type is described once, as a tuple of `WeightSpec`s: where the
prunable weight lives (an attribute path from the layer) and which of its axes
are the input and output channels. The wrapper, the mask shapes (`MByN` lays
weights out by channel), and later structural pruning all read this table.

Layers are matched with `isinstance`, most specific class first, so subclasses
of supported layers work. Custom layers take part by implementing
`PrunableLayer.get_prunable_weights()` (any layer with that method does).

Example:
>>> describe(keras.layers.Dense(4))
(WeightSpec(path='kernel', in_axis=0, out_axis=1),)
>>> describe(keras.layers.Dropout(0.5))
()
"""

import abc
import dataclasses

import keras
from keras import layers as L


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A prunable weight of a layer type.

    Args:
        path: attribute path from the layer to the variable (`"kernel"`,
            `"cell.recurrent_kernel"`, `"_query_dense.kernel"`).
        in_axis: axis indexing input channels, or None.
        out_axis: axis indexing output channels, or None.
    """

    path: str
    in_axis: int = -2
    out_axis: int = -1

    @property
    def name(self):
        """A readable name for variables derived from this weight."""
        return self.path.replace(".", "_").replace("__", "_").strip("_")


class PrunableLayer(abc.ABC):
    """Interface of custom layers that can be pruned.

    Implement `get_prunable_weights()` to return the variables to prune.

    Example:
    >>> class Scale(keras.layers.Layer, PrunableLayer):
    ...     def build(self, input_shape):
    ...         self.w = self.add_weight(shape=(input_shape[-1],))
    ...     def call(self, x):
    ...         return x * self.w
    ...     def get_prunable_weights(self):
    ...         return [self.w]
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """Returns the list of variables to prune."""
        raise NotImplementedError


def _kernel(in_axis=-2, out_axis=-1):
    return (WeightSpec("kernel", in_axis, out_axis),)


_RNN_CELL = (
    WeightSpec("cell.kernel", 0, 1),
    WeightSpec("cell.recurrent_kernel", 0, 1),
)

# Layer type -> its prunable weights. Order matters only for readability:
# lookup picks the most specific class in a layer's MRO.
LAYER_SPECS = {
    L.Dense: _kernel(0, 1),
    L.EinsumDense: _kernel(0, -1),
    L.Conv1D: _kernel(),
    L.Conv2D: _kernel(),
    L.Conv3D: _kernel(),
    L.Conv1DTranspose: _kernel(-1, -2),
    L.Conv2DTranspose: _kernel(-1, -2),
    L.Conv3DTranspose: _kernel(-1, -2),
    L.SeparableConv1D: (WeightSpec("pointwise_kernel"),),
    L.SeparableConv2D: (WeightSpec("pointwise_kernel"),),
    L.Embedding: (WeightSpec("embeddings", 0, 1),),
    L.SimpleRNN: _RNN_CELL,
    L.LSTM: _RNN_CELL,
    L.GRU: _RNN_CELL,
    L.MultiHeadAttention: (
        WeightSpec("_query_dense.kernel", 0, None),
        WeightSpec("_key_dense.kernel", 0, None),
        WeightSpec("_value_dense.kernel", 0, None),
        WeightSpec("_output_dense.kernel", None, -1),
    ),
}

# Layers with nothing to prune: accepted, and left alone.
NOTHING_TO_PRUNE = (
    L.InputLayer,
    L.Activation,
    L.ReLU,
    L.LeakyReLU,
    L.PReLU,
    L.ELU,
    L.Softmax,
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
    L.UnitNormalization,
    L.Normalization,
    L.Rescaling,
    L.Resizing,
    L.CenterCrop,
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
    L.ActivityRegularization,
    L.Flatten,
    L.Reshape,
    L.Permute,
    L.RepeatVector,
    L.Cropping1D,
    L.Cropping2D,
    L.Cropping3D,
    L.UpSampling1D,
    L.UpSampling2D,
    L.UpSampling3D,
    L.ZeroPadding1D,
    L.ZeroPadding2D,
    L.ZeroPadding3D,
    L.Masking,
    L.Identity,
    L.Lambda,
    L.DepthwiseConv1D,
    L.DepthwiseConv2D,
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
    L.Add,
    L.Subtract,
    L.Multiply,
    L.Average,
    L.Maximum,
    L.Minimum,
    L.Concatenate,
    L.Dot,
)


def is_custom_prunable(layer):
    """True for layers that name their own prunable weights."""
    return isinstance(layer, PrunableLayer) or callable(
        getattr(layer, "get_prunable_weights", None)
    )


def describe(layer):
    """The `WeightSpec`s of a layer, `()` if it has nothing to prune.

    Raises:
        ValueError: for a layer type tfprune does not know, naming the layer
            and `PrunableLayer`.
    """
    if is_custom_prunable(layer):
        return None  # resolved from get_prunable_weights() once built
    for cls in type(layer).__mro__:
        if cls in LAYER_SPECS:
            return LAYER_SPECS[cls]
    if isinstance(layer, NOTHING_TO_PRUNE):
        return ()
    raise ValueError(
        f"Layer '{layer.name}' of type {type(layer).__name__} is not supported "
        "for pruning. Supported are the built-in Keras layers listed in "
        "`tfprune.layers.LAYER_SPECS` and `NOTHING_TO_PRUNE` (and their "
        "subclasses); make a custom layer prunable by subclassing "
        "`tfprune.PrunableLayer` and implementing `get_prunable_weights()`."
    )


def is_supported(layer):
    try:
        describe(layer)
    except ValueError:
        return False
    return True


def has_prunable_weights(layer):
    """True if wrapping `layer` would prune something (custom layers: yes)."""
    spec = describe(layer)
    return spec is None or len(spec) > 0


def resolve(layer, path):
    """Follows an attribute path (`"cell.kernel"`) from a built layer."""
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def prunable_weights(layer):
    """`[(variable, WeightSpec)]` of a built layer, read from the table."""
    specs = describe(layer)
    if specs is None:
        variables = list(layer.get_prunable_weights())
        for v in variables:
            if not isinstance(v, keras.Variable):
                raise TypeError(
                    f"`get_prunable_weights()` of layer '{layer.name}' must return "
                    f"Keras variables. Received: {v!r}"
                )
        return [
            (v, WeightSpec(v.name, -2 if len(v.shape) >= 2 else None, -1))
            for v in variables
        ]
    return [(resolve(layer, spec.path), spec) for spec in specs]
