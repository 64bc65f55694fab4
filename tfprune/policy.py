"""Pruning policies: which layers of a model get a pruning wrapper.

Example:
>>> class OnlyDense(PruningPolicy):
...     def allow_pruning(self, layer):
...         return isinstance(layer, keras.layers.Dense)
...     def ensure_model_supports_pruning(self, model):
...         pass
"""

import abc

import keras
from keras import layers as L
from keras.src.ops import numpy as knp

# Nodes that XNNPACK runs inside the sparse subgraph whatever their
# configuration. Besides layers, Keras 3 records `x + y`, `x - y`, `x * y`
# and `keras.ops.add/subtract/multiply/copy` as op nodes (`knp.Add`, ...):
# TFMOT's accepted TF ops `AddV2`, `Sub`, `Mul` and `Identity`
# (`keras.ops.copy` is `tf.identity` on TensorFlow).
_ALWAYS_SUPPORTED = (
    L.Add,
    L.Subtract,
    L.Multiply,
    L.Identity,
    L.ZeroPadding2D,
    L.ReLU,
    L.LeakyReLU,
    L.ELU,
    L.Dropout,
    knp.Add,
    knp.Subtract,
    knp.Multiply,
    knp.Copy,
)


class PruningPolicy(abc.ABC):
    """Decides per layer whether `prune_low_magnitude` wraps it.

    Subclass and implement `allow_pruning(layer)` and
    `ensure_model_supports_pruning(model)` (raise `ValueError` for a model
    the policy cannot handle).
    """

    @abc.abstractmethod
    def allow_pruning(self, layer):
        """True if `layer` should be wrapped."""
        raise NotImplementedError

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model):
        """Raises `ValueError` if the policy cannot prune `model`."""
        raise NotImplementedError


def _unwrap(layer):
    inner = getattr(layer, "layer", None)
    from tfprune.wrapper import PruneLowMagnitude

    return inner if isinstance(layer, PruneLowMagnitude) else layer


def _producers(layer):
    found = []
    for node in layer._inbound_nodes:
        for parent in node.parent_nodes:
            if parent.operation not in found:
                found.append(parent.operation)
    return found


def _consumers(layer):
    found = []
    for node in layer._outbound_nodes:
        op = node.operation
        while isinstance(op, keras.Sequential):
            op = op.layers[0]
        if op not in found:
            found.append(op)
    return found


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the 1x1 `Conv2D` layers of an XNNPACK sparse-inference graph.

    XNNPACK runs sparse 1x1 convolutions fast (Elsen et al., "Fast Sparse
    ConvNets", 2019) on a subgraph that starts at a stride-2 3x3 `Conv2D` on
    3 input channels after `ZeroPadding2D(1)` and ends at
    `GlobalAveragePooling2D(keepdims=True)`. `ensure_model_supports_pruning`
    checks that every input branch reaches such a start, every output branch
    such an end, and that every node between them is supported by XNNPACK:
    layers, and the Keras 3 op nodes of `x + y`, `x - y`, `x * y`,
    `keras.ops.add`, `keras.ops.subtract`, `keras.ops.multiply` and
    `keras.ops.copy` (an operand may be a constant).

    Example:
    >>> inputs = keras.Input((32, 32, 3))
    >>> x = keras.layers.ZeroPadding2D(1)(inputs)
    >>> x = keras.layers.Conv2D(8, 3, strides=2)(x)
    >>> x = x + keras.layers.Conv2D(8, 1)(x)  # an `Add` op node
    >>> x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    >>> model = keras.Model(inputs, x)
    >>> policy = PruneForLatencyOnXNNPack()
    >>> policy.ensure_model_supports_pruning(model)
    >>> [layer.kernel_size for layer in model.layers if policy.allow_pruning(layer)]
    [(1, 1)]
    """

    def allow_pruning(self, layer):
        return isinstance(layer, L.Conv2D) and tuple(layer.kernel_size) == (1, 1)

    def _lookup_layers(self, source_layers, stop_fn, next_fn):
        to_visit = list(source_layers)
        used = list(source_layers)
        found = []
        while to_visit:
            layer = to_visit.pop()
            if stop_fn(layer):
                if layer not in found:
                    found.append(layer)
                continue
            next_layers = next_fn(layer)
            if not next_layers:
                return []
            for nxt in next_layers:
                if nxt not in used:
                    used.append(nxt)
                    to_visit.append(nxt)
        return found

    def _is_start(self, layer):
        layer = _unwrap(layer)
        if not isinstance(layer, L.Conv2D) or isinstance(layer, L.DepthwiseConv2D):
            return False
        producers = [_unwrap(p) for p in _producers(layer)]
        return (
            tuple(layer.kernel.shape[:3]) == (3, 3, 3)
            and tuple(layer.strides) == (2, 2)
            and layer.padding.lower() == "valid"
            and len(producers) == 1
            and isinstance(producers[0], L.ZeroPadding2D)
            and tuple(map(tuple, producers[0].padding)) == ((1, 1), (1, 1))
        )

    def _is_end(self, layer):
        return isinstance(_unwrap(layer), L.GlobalAveragePooling2D)

    def _supported(self, layer):
        layer = _unwrap(layer)
        if isinstance(layer, _ALWAYS_SUPPORTED):
            return True
        if isinstance(layer, L.DepthwiseConv2D):
            return self._depthwise_supported(layer)
        if isinstance(layer, L.Conv2D):
            return (
                layer.groups == 1
                and tuple(layer.dilation_rate) == (1, 1)
                and tuple(layer.kernel_size) == (1, 1)
                and tuple(layer.strides) == (1, 1)
            )
        if isinstance(layer, L.GlobalAveragePooling2D):
            return bool(layer.keepdims)
        if isinstance(layer, L.BatchNormalization):
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            return [a % 4 for a in axis] == [3]
        if isinstance(layer, L.UpSampling2D):
            return layer.interpolation == "bilinear"
        if isinstance(layer, L.Activation):
            name = keras.activations.serialize(layer.activation)
            name = name if isinstance(name, str) else name.get("config", name)
            return name in ("relu", "relu6", "leaky_relu", "elu", "sigmoid")
        return False

    def _depthwise_supported(self, layer):
        padding = layer.padding.lower()
        producers = [_unwrap(p) for p in _producers(layer)]
        zero_padding = (
            tuple(map(tuple, producers[0].padding))
            if len(producers) == 1 and isinstance(producers[0], L.ZeroPadding2D)
            else None
        )
        k, s = tuple(layer.kernel_size), tuple(layer.strides)
        cases = (
            k == (3, 3) and s == (1, 1) and padding == "same",
            k == (3, 3) and s in ((1, 1), (2, 2)) and padding == "valid"
            and zero_padding == ((1, 1), (1, 1)),
            k == (5, 5) and s == (1, 1) and padding == "same",
            k == (5, 5) and s in ((1, 1), (2, 2)) and padding == "valid"
            and zero_padding == ((2, 2), (2, 2)),
        )
        return (
            layer.depth_multiplier == 1
            and tuple(layer.dilation_rate) == (1, 1)
            and any(cases)
        )

    def ensure_model_supports_pruning(self, model):
        if not isinstance(model, keras.Sequential) and not isinstance(
            model, keras.src.models.functional.Functional
        ):
            raise ValueError(
                f"{type(self).__name__} supports Sequential and Functional models "
                f"only. Received a subclassed model '{model.name}'."
            )
        if not model.built:
            raise ValueError(
                f"{type(self).__name__} needs a built model. Received unbuilt "
                f"model '{model.name}'."
            )
        inputs = [t._keras_history.operation for t in model.inputs]
        starts = self._lookup_layers(inputs, self._is_start, _consumers)
        if not starts:
            raise ValueError(
                "Could not find a `Conv2D` 3x3 layer with stride 2x2, 3 input "
                "channels and 'valid' padding, preceded by `ZeroPadding2D(1)`, "
                "in every input branch of the model."
            )
        outputs = [t._keras_history.operation for t in model.outputs]
        ends = self._lookup_layers(outputs, self._is_end, _producers)
        if not ends:
            raise ValueError(
                "Could not find a `GlobalAveragePooling2D` layer in every output "
                "branch of the model."
            )

        def visit(layer):
            if layer not in ends and not self._supported(layer):
                kind = "Layer" if isinstance(layer, L.Layer) else "Operation"
                raise ValueError(
                    f"{kind} {type(_unwrap(layer)).__name__} ('{layer.name}') is "
                    f"not supported by the {type(self).__name__} pruning policy."
                )
            return layer in ends

        self._lookup_layers(
            [c for s in starts for c in _consumers(s)], visit, _consumers
        )
