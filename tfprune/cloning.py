"""Copies of Sequential and Functional models with some layers replaced.

`copy_model(model, replace)` rebuilds the model's graph on new inputs:
every layer (at any depth of nested graph models, each shared layer once)
becomes `replace(layer)`, every `keras.ops` node (slices, `tanh`, `+`) a copy
of itself, and weights are copied after the new graph is built. Layer and
input names, call arguments (keyword-called layers, dict outputs, nested and
shared models) and the model's `trainable` flag carry over; the copy is not
compiled. The model passed in is never modified.

`prune_low_magnitude` and `strip_pruning` are both a `replace` function.

Example:
>>> x = keras.Input((4,), name="features")
>>> model = keras.Model(x, keras.ops.tanh(keras.layers.Dense(2, name="fc")(x)))
>>> copy = copy_model(model, lambda layer: (copy_layer(layer), layer, None))
>>> copy.get_config() == model.get_config()
True
"""

import contextlib

import keras
from keras import tree
from keras.src.models.functional import Functional

__all__ = ["copy_layer", "copy_model", "copy_weights", "is_graph_model"]


def is_graph_model(model):
    """True for Sequential and Functional models (subclasses included)."""
    return isinstance(model, (keras.Sequential, Functional))


def copy_layer(layer):
    """A new layer (or operation) with the same config; weights are not copied."""
    return type(layer).from_config(layer.get_config())


@contextlib.contextmanager
def _classes_in_scope(model):
    """Every class of the model's layer tree is known to deserialization.

    Layers are copied through their configs; a custom layer class need not be
    registered for that (only to load a saved file, as anywhere in Keras).
    """
    objects = {}
    layers = [model]
    if isinstance(model, keras.layers.Layer):
        layers += model._flatten_layers(include_self=False, recursive=True)
    for layer in layers:
        for obj in (layer, getattr(layer, "pruning_schedule", None)):
            if obj is None:
                continue
            cls = type(obj)
            objects.setdefault(cls.__name__, cls)
            objects.setdefault(keras.saving.get_registered_name(cls), cls)
    with keras.saving.custom_object_scope(objects):
        yield


def copy_model(model, replace):
    """Copies a Sequential or Functional model, each layer through `replace`.

    Args:
        model: a Sequential or Functional model (subclasses of Functional
            give a Functional model).
        replace: `layer -> (new_layer, weight_source, weight_target)`; the
            weights of `weight_source` are copied into `weight_target` once
            the new model is built (None: nothing to copy).

    Returns:
        The new, uncompiled model.
    """
    pairs = []
    with _classes_in_scope(model):
        new = _Copier(replace, pairs).copy_graph(model)
    for source, target in pairs:
        copy_weights(source, target)
    return new


def copy_weights(source, target):
    """Copies `source`'s weights into `target` (built from `source` if needed)."""
    if source is None or target is None or not source.weights:
        return
    if not target.built:
        target.build_from_config(source.get_build_config())
    values = source.get_weights()
    if len(values) != len(target.weights):
        raise ValueError(
            f"Layer '{source.name}' could not be copied: the copy has "
            f"{len(target.weights)} weights where the layer has {len(values)}. "
            "Its `get_config()` may not describe it completely."
        )
    target.set_weights(values)


def _inference_only_operations(model):
    """Ids of operations that every call in `model` makes with `training=False`."""
    calls = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is None or node.is_input:
                continue
            frozen = node.arguments.kwargs.get("training") is False
            key = id(node.operation)
            calls[key] = calls.get(key, True) and frozen
    return {key for key, frozen in calls.items() if frozen}


class _Copier:
    def __init__(self, replace, pairs):
        self.replace = replace
        self.pairs = pairs
        self.cache = {}

    def copy_graph(self, model, replace=None):
        replace = replace or self.replace
        if isinstance(model, keras.Sequential):
            return self._copy_sequential(model, replace)
        return self._copy_functional(model, replace)

    def copy_operation(self, operation, replace):
        key = id(operation)
        if key in self.cache:
            return self.cache[key]
        if is_graph_model(operation):
            new = self.copy_graph(operation, replace)
        elif isinstance(operation, keras.layers.Layer):
            new, source, target = replace(operation)
            if source is not None:
                self.pairs.append((source, target))
        else:  # a keras.ops node: stateless
            new = copy_layer(operation)
        self.cache[key] = new
        return new

    def _copy_sequential(self, model, replace):
        layers = [self.copy_operation(layer, replace) for layer in model.layers]
        first = model._layers[0] if model._layers else None
        if isinstance(first, keras.layers.InputLayer):
            layers.insert(0, copy_layer(first).output)
        new = keras.Sequential(layers, name=model.name, trainable=model.trainable)
        if model.built and not new.built:
            new.build_from_config(model.get_build_config())
        return new

    def _copy_functional(self, model, replace):
        frozen = _inference_only_operations(model)
        plain = _plain_copy

        def operation_fn(operation):
            return self.copy_operation(operation, plain if id(operation) in frozen else replace)

        inputs = tree.map_structure(
            lambda t: copy_layer(t._keras_history.operation).output, model._inputs_struct
        )
        outputs = model._run_through_graph(
            inputs, operation_fn=operation_fn, call_fn=lambda op, *a, **k: op(*a, **k)
        )
        return Functional(inputs, outputs, name=model.name, trainable=model.trainable)


def _plain_copy(layer):
    copy = copy_layer(layer)
    return copy, layer, copy
