"""Copies of Sequential and Functional models with some layers replaced.

`copy_model(model, replace)` returns a new model in which every layer (at
any depth of nested graph models, each shared layer once) is
`replace(copy_of_layer)`; nothing the caller holds is modified.

- A Sequential or Functional model is rebuilt on copies of its inputs:
  each layer and `keras.ops` node (slices, `tanh`, `+`) is copied from its
  config and called with the recorded arguments (keyword-called layers,
  dict outputs, nested and shared models, a shared layer's calls in their
  order), and weights are copied once the new graph is built. Layer and
  input names and `trainable` carry over, so `get_config()` is unchanged
  when `replace` changes nothing.
- A subclass of Functional with its own `get_config` (KerasHub backbones
  and task models) keeps its class: it is rebuilt from its config, its
  weights are copied, and the replacements take the layers' places in its
  graph; its attributes (`backbone.transformer_layers`) still reach the
  layers themselves.

Layers of a sub-model that every call runs with `training=False` (a frozen
base in transfer learning) are copied as they are. The copy is not compiled.

Example:
>>> x = keras.Input((4,), name="features")
>>> model = keras.Model(x, keras.ops.tanh(keras.layers.Dense(2, name="fc")(x)))
>>> copy = copy_model(model, lambda copy, layer: copy)
>>> copy is model, copy.get_config() == model.get_config()
(False, True)
"""

import contextlib

import keras
from keras import tree
from keras.src.models.functional import Functional
from keras.src.ops.node import KerasHistory
from keras.src.saving import serialization_lib

__all__ = ["copy_model", "copy_weights", "graph_operations", "is_graph_model"]


def is_graph_model(model):
    """True for Sequential and Functional models (subclasses included)."""
    return isinstance(model, (keras.Sequential, Functional))


def keeps_its_class(model):
    """A Functional subclass whose config is its constructor's arguments."""
    return (
        isinstance(model, Functional)
        and not isinstance(model, keras.Sequential)
        and type(model).get_config not in (Functional.get_config, keras.Model.get_config)
    )


def graph_operations(model):
    """The operations of a graph model's graph, in a stable order."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    return list(model._operations)


@contextlib.contextmanager
def _classes_in_scope(model):
    """Every class of the model's layer tree is known to deserialization.

    Models are copied through their configs; a custom layer class need not be
    registered for that (only to load a saved file, as anywhere in Keras).
    The configs come from the caller's own live objects, not from a file, so
    `Lambda` layers holding Python lambdas are copied too (safe mode off).
    Keras's own classes are left to Keras, which finds them by module: by
    bare name, the `Add` layer would shadow the `Add` operation of an
    `x + y` in the same graph (MobileNetV3).
    """
    objects = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for obj in (layer, getattr(layer, "pruning_schedule", None)):
            if obj is not None and not type(obj).__module__.startswith("keras."):
                cls = type(obj)
                objects.setdefault(cls.__name__, cls)
                objects.setdefault(keras.saving.get_registered_name(cls), cls)
    with keras.saving.custom_object_scope(objects), serialization_lib.SafeModeScope(False):
        yield


def copy_model(model, replace, weights_source=None):
    """Copies a Sequential or Functional model, each layer through `replace`.

    Args:
        model: a Sequential or Functional model.
        replace: `(copy, layer) -> new layer`, called with a copy of each of
            the model's layers that nobody else holds (built or not) and the
            layer it copies (built, to decide from); it may return the copy
            itself, wrap it or unwrap it.
        weights_source: `layer -> layer` giving the weights of a layer whose
            replacement no longer holds its copy (e.g. a wrapper's layer when
            `replace` unwraps). Default: the layer itself.

    Returns:
        The new, uncompiled model.
    """
    rewriter = _Rewriter(replace, weights_source or (lambda layer: layer))
    with _classes_in_scope(model):
        new = rewriter.rewrite(model)
    for source, copy, replacement in rewriter.pairs:
        if replacement is copy or getattr(replacement, "layer", None) is copy:
            copy_weights(source, copy)
        else:
            copy_weights(rewriter.weights_source(source), replacement)
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
    for mine, theirs in zip(source.weights, target.weights):
        # A regularizer attached to a weight that the layer's config does not
        # describe (layers a KerasHub model builds itself) goes along.
        if getattr(mine, "regularizer", None) is not None and getattr(theirs, "regularizer", 0) is None:
            theirs.regularizer = mine.regularizer


def _transfer_weights(source, target, weights_source):
    """Copies weights between two graph models built from one config."""
    pairs = list(zip(graph_operations(source), graph_operations(target)))
    if len(graph_operations(source)) != len(graph_operations(target)):
        raise ValueError(
            f"Model '{source.name}' could not be copied from its config: the "
            "copy has another graph. Its `get_config()` may not describe it."
        )
    for s, t in pairs:
        if is_graph_model(s) and is_graph_model(t):
            _transfer_weights(s, t, weights_source)
        elif isinstance(s, keras.layers.Layer):
            if type(s) is not type(t):
                s = weights_source(s)
            copy_weights(s, t)


def _inference_only_operations(model):
    """Ids of sub-models that every call in `model` makes with `training=False`.

    Only sub-models: a layer's recorded `training=False` may be its own
    default (recurrent layers record it for every call).
    """
    if isinstance(model, keras.Sequential):
        return set()
    calls = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is None or node.is_input or not is_graph_model(node.operation):
                continue
            frozen = node.arguments.kwargs.get("training") is False
            key = id(node.operation)
            calls[key] = calls.get(key, True) and frozen
    return {key for key, frozen in calls.items() if frozen}


class _Rewriter:
    """Replaces the layers of a graph model in a copy.

    With `copies=True` each layer is copied from its config (its weights are
    copied once the new graph is built); with `copies=False` the model is a
    fresh copy already and its layers are used as they are.
    """

    def __init__(self, replace, weights_source, copies=True):
        self.replace = replace
        self.weights_source = weights_source
        self.copies = copies
        self.pairs = []  # (layer, its copy, the copy's replacement)
        self.cache = {}

    def rewrite(self, model):
        if keeps_its_class(model):
            if self.copies:
                model = _fresh_copy(model, self.weights_source)
                return _Rewriter(self.replace, self.weights_source, False).rewrite(model)
        frozen = _inference_only_operations(model)
        new = {
            id(op): self.rewrite_operation(op, frozen=id(op) in frozen)
            for op in graph_operations(model)
        }
        if keeps_its_class(model):
            return _swap_in_place(model, new)
        if isinstance(model, keras.Sequential):
            first = model._layers[0] if model._layers else None
            layers = [new[id(layer)] for layer in model.layers]
            if isinstance(first, keras.layers.InputLayer):
                layers.insert(0, self._input(first))
            rebuilt = keras.Sequential(layers, name=model.name, trainable=model.trainable)
            if model.built and not rebuilt.built:
                rebuilt.build_from_config(model.get_build_config())
            return rebuilt
        inputs = tree.map_structure(
            lambda t: self._input(t._keras_history.operation), model._inputs_struct
        )
        outputs = _replay(model, inputs, new)
        return Functional(inputs, outputs, name=model.name, trainable=model.trainable)

    def _input(self, input_layer):
        return _copy(input_layer).output if self.copies else input_layer.output

    def rewrite_operation(self, op, frozen=False):
        key = id(op)
        if key in self.cache:
            return self.cache[key]
        if is_graph_model(op) and not frozen:
            new = self.rewrite(op)
        elif not self.copies:
            keep = frozen or not isinstance(op, keras.layers.Layer)
            new = op if keep else self.replace(op, op)
        elif isinstance(op, keras.layers.Layer):
            copy = _copy(op)
            new = copy if frozen else self.replace(copy, op)
            self.pairs.append((op, copy, new))
        else:  # a keras.ops node: stateless
            new = _copy(op)
        self.cache[key] = new
        return new


def _replay(model, inputs, new):
    """Calls `new[id(op)]` for every node of `model`'s graph, on `inputs`.

    Nodes run deepest first and, within a depth, in the order their operation
    was called, so a shared layer's calls keep their node indices.
    """
    tensors = {id(x): y for x, y in zip(model.inputs, keras.tree.flatten(inputs))}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        nodes = model._nodes_by_depth[depth]
        for node in sorted(nodes, key=lambda n: n.operation._inbound_nodes.index(n)):
            if node.is_input or any(id(x) not in tensors for x in node.input_tensors):
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            outputs = new[id(node.operation)](*args, **kwargs)
            for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
                tensors[id(x)] = y
    return keras.tree.pack_sequence_as(
        model._outputs_struct, [tensors[id(x)] for x in model.outputs]
    )


def _copy(op):
    """A new layer or operation with the same config (weights not copied)."""
    if is_graph_model(op):
        return copy_model(op, lambda copy, layer: copy)
    config = op.get_config()
    if isinstance(op, keras.layers.Layer) and "name" not in config:
        # Some custom layers leave their name out of their config.
        try:
            return type(op).from_config({**config, "name": op.name})
        except TypeError:
            pass
    try:
        return type(op).from_config(config)
    except Exception as error:
        raise ValueError(
            f"Layer '{op.name}' of type {type(op).__name__} cannot be rebuilt from "
            f"its config: `{type(op).__name__}.from_config(layer.get_config())` "
            f"raised {type(error).__name__}: {error}. The model is copied so that "
            "it stays untouched; give the layer a `get_config()` returning its "
            "constructor arguments (and accept `**kwargs` in `__init__`), or wrap "
            "the layers you want pruned in its `__init__` with "
            "`tfprune.prune_low_magnitude(layer)`."
        ) from error


def _fresh_copy(model, weights_source):
    """The model rebuilt from its own config, with its weights."""
    fresh = type(model).from_config(model.get_config())
    if model.built and not fresh.built:
        fresh.build_from_config(model.get_build_config())
    _transfer_weights(model, fresh, weights_source)
    return fresh


def _adopt_nodes(replacement, op):
    """Makes `replacement` the operation of `op`'s nodes, as a call would:
    its inbound and outbound nodes, and the history of their output tensors
    (so a new model can be built on the swapped model's tensors)."""
    replacement._inbound_nodes = list(op._inbound_nodes)
    replacement._outbound_nodes = list(op._outbound_nodes)
    for index, node in enumerate(replacement._inbound_nodes):
        node.operation = replacement
        for position, tensor in enumerate(node.outputs):
            tensor._keras_history = KerasHistory(replacement, index, position)


def _swap_in_place(model, new):
    """Puts each `new[id(op)]` in the place of `op` in `model`'s graph."""
    for op in graph_operations(model):
        replacement = new[id(op)]
        if replacement is op:
            continue
        for nodes in model._nodes_by_depth.values():
            for node in nodes:
                if node.operation is op:
                    node.operation = replacement
        _adopt_nodes(replacement, op)
        model._operations[model._operations.index(op)] = replacement
        layers = model._layers
        for i, layer in enumerate(layers):
            if layer is op:
                layers[i] = replacement
        if isinstance(replacement, keras.layers.Layer) and not replacement.built:
            replacement.build_from_config(op.get_build_config() or {})
            replacement.built = True
    return model
