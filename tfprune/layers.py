"""What each layer prunes: the one table every stage reads.

The prunable weights of a layer are found by three rules, in order:

1. A layer with a `get_prunable_weights()` method (`PrunableLayer`) names
   its own weights.
2. A layer type in `LAYER_SPECS` (matched with `isinstance`, most specific
   class first) prunes the weights listed there, each a `WeightSpec`: the
   attribute holding it and which of its axes index input and output
   channels. Types listed with `()` prune nothing.
3. Any other layer prunes the weights its sublayers prune, at any depth:
   an `LSTM` prunes its cell's kernels, `Bidirectional` both directions,
   a KerasHub transformer block the `Dense`/`EinsumDense` layers inside its
   attention and feed-forward parts, a user's block its `Dense` layers.

Weights a layer owns itself that no rule names are left alone when they are
vector-like (at most one axis longer than 1: biases, scales, normalization
statistics, class tokens). A weight with two or more such axes on a layer no
rule describes cannot be interpreted (is it a kernel? which axis is a
channel?): `uninterpretable_weights` reports it, and whole-model pruning
refuses the model, naming every such layer.

Example:
>>> describe(keras.layers.Dense(4))
(WeightSpec(path='kernel', in_axis=0, out_axis=1, optional=False),)
>>> has_prunable_weights(keras.layers.Dropout(0.5))
False
>>> lstm = keras.layers.LSTM(3)
>>> lstm.build((None, 5, 2))
>>> [spec.path for _, spec in prunable_weights(lstm)]
['lstm_cell/kernel', 'lstm_cell/recurrent_kernel']
"""

import abc
import dataclasses
import sys

import keras
from keras import layers as L
from keras.src.layers.rnn.conv_lstm import ConvLSTMCell


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """A prunable weight of a layer type.

    Args:
        path: attribute path from the layer to the variable (`"kernel"`,
            `"_query_dense.kernel"`); for weights found in sublayers, the
            sublayer names are prepended with `/` (`"lstm_cell/kernel"`).
        in_axis: axis indexing input channels, or None.
        out_axis: axis indexing output channels, or None.
        optional: the attribute may be absent (e.g. untied output embeddings).
    """

    path: str
    in_axis: int | None = -2
    out_axis: int | None = -1
    optional: bool = False

    @property
    def name(self):
        """A readable name for variables derived from this weight."""
        name = self.path.replace("/", "_").replace(".", "_")
        while "__" in name:
            name = name.replace("__", "_")
        return name.strip("_")


class PrunableLayer(abc.ABC):
    """Interface of custom layers that can be pruned.

    Implement `get_prunable_weights()` to return the variables to prune
    (return `[]` for a layer whose weights must not be pruned).

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


_CELL = (WeightSpec("kernel", 0, 1), WeightSpec("recurrent_kernel", 0, 1))


def einsum_letters(layer):
    """An `EinsumDense`'s equation as its input, kernel and output letters.

    >>> einsum_letters(keras.layers.EinsumDense("btd,ndh->btnh", (None, 2, 4)))
    ('btd', 'ndh', 'btnh')
    """
    inputs, rest = layer.equation.replace(" ", "").split(",")
    kernel, output = rest.split("->")
    return inputs, kernel, output


def _einsum_specs(layer):
    """`EinsumDense`: channel axes read from the equation (`"btd,ndh->btnh"`)."""
    inputs, kernel, output = einsum_letters(layer)
    contracted = [i for i, c in enumerate(kernel) if c in inputs and c not in output]
    produced = [i for i, c in enumerate(kernel) if c in output and c not in inputs]
    return (
        WeightSpec(
            "kernel",
            contracted[-1] if contracted else None,
            produced[-1] if produced else None,
        ),
    )


# Layer type -> its prunable weights (a tuple of WeightSpecs, or a function of
# the layer returning one). `()`: a layer with weights that are not pruned.
LAYER_SPECS = {
    L.Dense: _kernel(0, 1),
    L.EinsumDense: _einsum_specs,
    L.Conv1D: _kernel(),
    L.Conv2D: _kernel(),
    L.Conv3D: _kernel(),
    L.Conv1DTranspose: _kernel(-1, -2),
    L.Conv2DTranspose: _kernel(-1, -2),
    L.Conv3DTranspose: _kernel(-1, -2),
    L.SeparableConv1D: (WeightSpec("pointwise_kernel"),),
    L.SeparableConv2D: (WeightSpec("pointwise_kernel"),),
    L.Embedding: (WeightSpec("embeddings", 0, 1),),
    L.ReversibleEmbedding: (
        WeightSpec("embeddings", 0, 1),
        WeightSpec("reverse_embeddings", 0, 1, optional=True),
    ),
    L.SimpleRNNCell: _CELL,
    L.LSTMCell: _CELL,
    L.GRUCell: _CELL,
    ConvLSTMCell: (WeightSpec("kernel"), WeightSpec("recurrent_kernel")),
    L.MultiHeadAttention: (
        WeightSpec("_query_dense.kernel", 0, None),
        WeightSpec("_key_dense.kernel", 0, None),
        WeightSpec("_value_dense.kernel", 0, None),
        WeightSpec("_output_dense.kernel", None, -1),
    ),
    # Kernels that are not pruned (as in TFMOT), and weights that are not
    # kernels although they have two long axes.
    L.DepthwiseConv1D: (),
    L.DepthwiseConv2D: (),
    L.PReLU: (),
    L.Normalization: (),
    # Its call assigns the kernel, which a mask in the forward pass cannot follow.
    L.SpectralNormalization: (),
}


def register(layer_class, specs):
    """Describes a layer type: its prunable weights, as `WeightSpec`s.

    For layer types of a library that cannot implement `PrunableLayer`.
    `specs=()` declares a layer type whose weights are not pruned.

    Example:
    >>> class Table(keras.layers.Layer):
    ...     pass
    >>> register(Table, (WeightSpec("table", 0, 1),))
    >>> describe(Table())
    (WeightSpec(path='table', in_axis=0, out_axis=1, optional=False),)
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise TypeError(
            "Argument `layer_class` must be a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}"
        )
    if not callable(specs):
        specs = tuple(specs)
        for spec in specs:
            if not isinstance(spec, WeightSpec):
                raise TypeError(
                    "Argument `specs` must hold `WeightSpec`s. "
                    f"Received: specs={specs!r}"
                )
    LAYER_SPECS[layer_class] = specs


def _register_keras_hub():
    """KerasHub layer types whose own weights need a word (once imported)."""
    hub = sys.modules.get("keras_hub")
    if hub is None or getattr(_register_keras_hub, "done", False):
        return
    _register_keras_hub.done = True
    # A table of positions, not a kernel: not pruned.
    position = getattr(getattr(hub, "layers", None), "PositionEmbedding", None)
    if position is not None:
        LAYER_SPECS.setdefault(position, ())


def is_custom_prunable(layer):
    """True for layers that name their own prunable weights."""
    method = getattr(layer, "get_prunable_weights", None)
    return isinstance(layer, PrunableLayer) or (
        callable(method) and not getattr(method, "_tfprune_table", False)
    )


def describe(layer):
    """The `WeightSpec`s a layer's own type prunes.

    Returns None for a layer that names its own weights (`PrunableLayer`) and
    for a layer no table entry describes (its sublayers are searched).
    """
    if is_custom_prunable(layer):
        return None
    _register_keras_hub()
    for cls in type(layer).__mro__:
        if cls in LAYER_SPECS:
            specs = LAYER_SPECS[cls]
            return specs(layer) if callable(specs) else specs
    return None


def sublayers(layer):
    """The layers `layer` holds directly (its children in the layer tree)."""
    return layer._flatten_layers(include_self=False, recursive=False)


def fully_built(layer):
    """True when the layer and every layer it holds are built."""
    return all(sub.built for sub in layer._flatten_layers(include_self=True, recursive=True))


def resolve(layer, path):
    """Follows an attribute path (`"_query_dense.kernel"`) from a built layer."""
    obj = layer
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _own_weights(layer):
    """Weights `layer` holds itself, not through a sublayer."""
    inner = {id(w) for sub in sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in inner]


def _is_vector_like(variable):
    return sum(1 for d in variable.shape if d is None or d > 1) <= 1


def _walk(layer, prefix=""):
    """Yields `(layer, prefix, specs)` for every layer a rule describes."""
    specs = describe(layer)
    if specs is not None or is_custom_prunable(layer):
        yield layer, prefix, specs
        return
    yield layer, prefix, None
    for sub in sublayers(layer):
        yield from _walk(sub, f"{prefix}{sub.name}/")


def _custom_weights(layer):
    variables = list(layer.get_prunable_weights())
    for v in variables:
        if not isinstance(v, keras.Variable):
            raise TypeError(
                f"`get_prunable_weights()` of layer '{layer.name}' must return "
                f"Keras variables. Received: {v!r}"
            )
    return [(v, WeightSpec(v.name, -2 if len(v.shape) >= 2 else None, -1)) for v in variables]


def prunable_weights(layer):
    """`[(variable, WeightSpec)]` of a built layer and its sublayers.

    Each variable appears once (a weight shared by two sublayers is pruned
    once).
    """
    return [(variable, spec) for variable, spec, _ in prunable_weights_with_owners(layer)]


def prunable_units(model):
    """The layers of `model` that own prunable weights as a unit: the top-most
    built layers with prunable weights (a composite layer, not also its
    sublayers), nested models followed but not units themselves, each weight
    in one unit."""
    claimed, units = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.Model) or not layer.built:
            continue
        ids = {id(variable) for variable, _ in prunable_weights(layer)}
        if ids and not ids & claimed:
            units.append(layer)
        claimed |= ids
    return units


def holder(owner, spec):
    """The layer holding a spec's variable: `owner` for `"kernel"`, the
    `_query_dense` sublayer for `"_query_dense.kernel"`."""
    path = spec.path.rsplit("/", 1)[-1]
    return resolve(owner, path.rsplit(".", 1)[0]) if "." in path else owner


def prunable_weights_with_owners(layer):
    """`[(variable, WeightSpec, owner)]`: `owner` is the layer a rule described."""
    found, seen = [], set()
    for owner, prefix, specs in _walk(layer):
        if specs is None and not is_custom_prunable(owner):
            continue  # rule 3: its sublayers are walked
        if specs is None:
            pairs = _custom_weights(owner)
        else:
            pairs = []
            for spec in specs:
                if spec.optional and not _has_path(owner, spec.path):
                    continue
                pairs.append((resolve(owner, spec.path), spec))
        for variable, spec in pairs:
            if id(variable) not in seen:
                seen.add(id(variable))
                path = f"{prefix}{spec.path}"
                found.append((variable, dataclasses.replace(spec, path=path), owner))
    return found


def _has_path(layer, path):
    try:
        return resolve(layer, path) is not None
    except AttributeError:
        return False


def uninterpretable_weights(layer):
    """`{layer path: [weight names]}` of weights no rule can interpret.

    A layer no rule describes that owns a weight with two or more axes longer
    than 1 is reported (unbuilt layers have no weights yet: nothing to report).
    """
    found = {}
    for owner, prefix, specs in _walk(layer):
        if specs is not None or is_custom_prunable(owner):
            continue
        odd = [w.name for w in _own_weights(owner) if not _is_vector_like(w)]
        if odd:
            found[(prefix.rstrip("/") or owner.name, type(owner).__name__)] = odd
    return found


def check_interpretable(layers, wrapped=False):
    """Raises one `ValueError` naming every layer whose weights can't be read
    (`wrapped`: layers the user wrapped one by one)."""
    problems = {}
    for layer in layers:
        for (path, kind), names in uninterpretable_weights(layer).items():
            problems.setdefault((layer.name, path, kind), names)
    if not problems:
        return
    lines = [
        f"  - layer '{path if path == top else top + '/' + path}' of type {kind}: "
        f"weights {names}"
        for (top, path, kind), names in problems.items()
    ]
    raise ValueError(
        "tfprune cannot tell how to prune the weights of these layers (weights "
        "with two or more axes on a layer type it does not know):\n"
        + "\n".join(lines)
        + "\nWays out: make the layer a `tfprune.PrunableLayer` (implement "
        "`get_prunable_weights()`; return [] to prune nothing); describe its "
        "type with `tfprune.layers.register(cls, specs)`; or "
        + (
            "leave it unwrapped."
            if wrapped
            else "wrap only the layers you want with `keras.models.clone_model(model, "
            "clone_function=...)` and `tfprune.prune_low_magnitude(layer)`."
        )
    )


def has_prunable_weights(layer):
    """True if wrapping `layer` would prune something.

    Custom layers: yes. Known types: from the table. Other layers: from their
    weights once they and their sublayers are built, else from their
    sublayers (an unbuilt layer with no sublayers: no).
    """
    if is_custom_prunable(layer):
        return True
    specs = describe(layer)
    if specs is not None:
        return len(specs) > 0
    if fully_built(layer):
        return bool(prunable_weights(layer))
    return any(has_prunable_weights(sub) for sub in sublayers(layer))


def attach_get_prunable_weights(layer):
    """Gives a built-in layer TFMOT's `get_prunable_weights()` method."""
    if is_custom_prunable(layer):
        return

    def get_prunable_weights():
        return [variable for variable, _ in prunable_weights(layer)]

    get_prunable_weights._tfprune_table = True
    object.__setattr__(layer, "get_prunable_weights", get_prunable_weights)
