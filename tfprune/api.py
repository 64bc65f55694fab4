"""`prune_low_magnitude`, `strip_pruning` and `prune_scope`.

Models are rebuilt with `keras.models.clone_model`: every layer is copied
(config and weights), so the model passed in is never modified, and a failed
call leaves it as it was.

Example:
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
>>> pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0))
>>> [type(layer).__name__ for layer in pruned.layers]
['PruneLowMagnitude']
>>> [type(layer).__name__ for layer in strip_pruning(pruned).layers]
['Dense']
"""

import keras

from tfprune import layers as layer_specs
from tfprune import masking
from tfprune import schedules as schedules_lib
from tfprune.schedules import ConstantSparsity
from tfprune.wrapper import PruneLowMagnitude


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or isinstance(
        model, keras.src.models.functional.Functional
    )


def _copy_layer(layer):
    """A new layer with the same config (weights are copied after building)."""
    config = keras.saving.serialize_keras_object(layer)
    return keras.saving.deserialize_keras_object(config)


def _copy_weights(pairs):
    for source, target in pairs:
        if source.built and target.built:
            target.set_weights(source.get_weights())


def _clone(model, clone_layer):
    """Clones a Sequential/Functional model through `clone_layer(layer)`.

    `clone_layer` returns `(new_layer, weight_source, weight_target)` and the
    weights are copied once the clone is built.
    """
    pairs = []

    def clone_function(layer):
        new_layer, source, target = clone_layer(layer)
        if source is not None:
            pairs.append((source, target))
        return new_layer

    # Sequential models list their layers; only Functional ones replay calls.
    call_function = None if isinstance(model, keras.Sequential) else _call_layer
    clone = keras.models.clone_model(
        model, clone_function=clone_function, call_function=call_function, recursive=True
    )
    _copy_weights(pairs)
    return clone


def _call_layer(layer, *args, **kwargs):
    """Calls a cloned layer with the recorded arguments its `call` accepts.

    A wrapper's call takes `mask`; the layer it wrapped may not (Dense).
    """
    accepted = getattr(layer, "call_signature_parameters", None)
    if accepted is not None and "kwargs" not in accepted:
        for name in ("mask", "training"):
            if name in kwargs and name not in accepted and kwargs[name] is None:
                kwargs.pop(name)
    return layer(*args, **kwargs)


def prune_low_magnitude(
    to_prune,
    pruning_schedule=ConstantSparsity(0.5, 0),  # noqa: B008 (TFMOT default)
    block_size=(1, 1),
    block_pooling_type="AVG",
    pruning_policy=None,
    sparsity_m_by_n=None,
    **kwargs,
):
    """Wraps a layer, a list of layers or a model for magnitude pruning.

    - a layer returns a `PruneLowMagnitude` wrapping it;
    - a list returns a list where each layer with prunable weights is wrapped;
    - a Sequential or Functional model (nested models and shared layers
      included) returns a new, uncompiled model with the same weights (and
      the same predictions) in which every layer with prunable weights is
      wrapped; layers with nothing to prune are copied unwrapped.

    Subclassed models are pruned by wrapping their layers in `__init__`:
    `self.dense = tfprune.prune_low_magnitude(keras.layers.Dense(10))`.

    Example:
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> pruned = prune_low_magnitude(model, ConstantSparsity(0.8, begin_step=0))
    >>> pruned.layers[0].name.startswith("prune_low_magnitude_dense")
    True

    Args:
        to_prune: a `keras.layers.Layer`, a list of layers, or a Sequential or
            Functional `keras.Model`.
        pruning_schedule: a `PruningSchedule`.
        block_size: `(height, width)` of blocks pruned together (rank-2
            weights only).
        block_pooling_type: `'AVG'` or `'MAX'`, how a block is scored.
        pruning_policy: a `PruningPolicy` choosing which layers to wrap.
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)` for 2:4 sparsity.
        **kwargs: passed to the wrapper when `to_prune` is a single layer.

    Returns:
        The wrapped layer, list or model.
    """
    params = {
        "pruning_schedule": schedules_lib.get(pruning_schedule),
        "block_size": block_size,
        "block_pooling_type": block_pooling_type,
        "sparsity_m_by_n": sparsity_m_by_n,
    }
    masking.granularity_from_args(block_size, block_pooling_type, sparsity_m_by_n)

    def should_wrap(layer):
        if isinstance(layer, PruneLowMagnitude) or isinstance(layer, keras.Model):
            return False
        if not layer_specs.has_prunable_weights(layer):
            return False
        return pruning_policy is None or pruning_policy.allow_pruning(layer)

    if isinstance(to_prune, (list, tuple)):
        for layer in to_prune:
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(
                    "Argument `to_prune` must hold only Keras layers. "
                    f"Received an element {layer!r}"
                )
            layer_specs.describe(layer)  # all-or-nothing: validate first
        return [
            PruneLowMagnitude(layer, **params) if should_wrap(layer) else layer
            for layer in to_prune
        ]

    if isinstance(to_prune, keras.Model):
        if not _is_graph_model(to_prune):
            raise ValueError(
                f"Model '{to_prune.name}' is a subclassed model, which cannot be "
                "cloned. Wrap its layers in its `__init__` instead, e.g. "
                "`self.dense = tfprune.prune_low_magnitude(keras.layers.Dense(10))`."
            )
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        wrapped = {
            id(inner)
            for w in to_prune._flatten_layers(include_self=False, recursive=True)
            if isinstance(w, PruneLowMagnitude)
            for inner in w.layer._flatten_layers()
        }
        for layer in to_prune._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, (keras.Model, PruneLowMagnitude)) or id(layer) in wrapped:
                continue
            layer_specs.describe(layer)  # all-or-nothing: validate first

        def clone_layer(layer):
            copy = _copy_layer(layer)
            if should_wrap(layer):
                return PruneLowMagnitude(copy, **params), layer, copy
            return copy, layer, copy

        return _clone(to_prune, clone_layer)

    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)

    raise ValueError(
        "`prune_low_magnitude` can only prune a keras.layers.Layer, a list of "
        "layers, or a Sequential or Functional keras.Model. Received: "
        f"to_prune={to_prune!r} of type {type(to_prune).__name__}"
    )


def _stripped_copy(wrapper):
    if wrapper.built:
        wrapper.apply_mask()
    copy = _copy_layer(wrapper.layer)
    return copy, wrapper.layer, copy


def strip_pruning(model):
    """Removes pruning wrappers, keeping the sparse weights.

    Returns a model of the original layer types whose weights are the masked
    weights, so its predictions equal the pruned model's. Sequential and
    Functional models are cloned (the pruned model can keep training);
    subclassed models are stripped in place and returned. A single wrapper
    returns a copy of its layer.

    Args:
        model: a `keras.Model` (or a `PruneLowMagnitude` layer).
    """
    if isinstance(model, PruneLowMagnitude):
        copy, source, target = _stripped_copy(model)
        _copy_weights([(source, target)] if source.built else [])
        if source.built and not target.built:
            target.build_from_config(source.get_build_config())
            _copy_weights([(source, target)])
        return copy
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model` instance. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not _is_graph_model(model):
        return _strip_in_place(model)

    def clone_layer(layer):
        if isinstance(layer, PruneLowMagnitude):
            return _stripped_copy(layer)
        copy = _copy_layer(layer)
        return copy, layer, copy

    return _clone(model, clone_layer)


def _strip_in_place(model):
    """Replaces every wrapper in a subclassed model's layer tree by its layer."""
    owners = [model] + model._flatten_layers(include_self=False, recursive=True)
    for owner in owners:
        if isinstance(owner, PruneLowMagnitude):
            continue
        for name, value in _attributes(owner):
            if isinstance(value, PruneLowMagnitude):
                value.apply_mask()
                _set_attribute(owner, name, value.layer)
            elif isinstance(value, (list, tuple)) or type(value).__name__ == "TrackedList":
                for i, item in enumerate(list(value)):
                    if isinstance(item, PruneLowMagnitude) and isinstance(value, list):
                        item.apply_mask()
                        value[i] = item.layer
        layers_list = getattr(owner, "_layers", None)
        if isinstance(layers_list, list):
            for i, item in enumerate(layers_list):
                if isinstance(item, PruneLowMagnitude):
                    layers_list[i] = item.layer
    return model


def _attributes(owner):
    items = list(vars(owner).items())
    modules = vars(owner).get("_modules")  # PyTorch backend keeps sublayers here
    if isinstance(modules, dict):
        items += list(modules.items())
    return items


def _set_attribute(owner, name, value):
    modules = vars(owner).get("_modules")
    if isinstance(modules, dict) and name in modules:
        modules[name] = value
    else:
        object.__setattr__(owner, name, value)


def prune_scope():
    """A scope in which `keras.models.load_model` knows the pruning classes.

    tfprune's classes are registered, so `.keras` files load without it; it is
    kept for code written against TFMOT.

    Example:
    >>> with prune_scope():
    ...     pass
    """
    return keras.saving.custom_object_scope(
        {
            "PruneLowMagnitude": PruneLowMagnitude,
            "ConstantSparsity": schedules_lib.ConstantSparsity,
            "PolynomialDecay": schedules_lib.PolynomialDecay,
            "ExponentialDecay": schedules_lib.ExponentialDecay,
            "AGP": schedules_lib.AGP,
        }
    )
