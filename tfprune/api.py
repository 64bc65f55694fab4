"""`prune_low_magnitude`, `strip_pruning` and `prune_scope`.

Models are copied (`tfprune.cloning`): every layer is copied (config and
weights), so the model passed in is never modified, and a failed call leaves
it as it was.

Example:
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
>>> pruned = prune_low_magnitude(model, ConstantSparsity(0.5, 0))
>>> [type(layer).__name__ for layer in pruned.layers]
['PruneLowMagnitude']
>>> [type(layer).__name__ for layer in strip_pruning(pruned).layers]
['Dense']
"""

import keras

from tfprune import cloning, masking
from tfprune import layers as layer_specs
from tfprune import schedules as schedules_lib
from tfprune.policy import PruningPolicy
from tfprune.schedules import ConstantSparsity
from tfprune.wrapper import PruneLowMagnitude


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
    - a Sequential or Functional model (nested models, shared layers,
      `keras.ops` nodes and Functional subclasses such as KerasHub backbones
      included) returns a new, uncompiled model with the same weights (and
      the same predictions) in which every layer with prunable weights at
      any depth is wrapped (see `tfprune.layers` for what each layer
      prunes). Layers with nothing to prune, frozen layers
      (`trainable=False`) and sub-models every call runs with
      `training=False` are copied unwrapped. A model holding layers whose
      weights cannot be interpreted raises one `ValueError` naming them all,
      before anything is copied.

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
        pruning_policy: a `PruningPolicy` choosing which layers to wrap
            (`TypeError` for anything else).
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
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise TypeError(
            "Argument `pruning_policy` must be a `tfprune.PruningPolicy` instance "
            f"or None. Received: pruning_policy={pruning_policy!r} of type "
            f"{type(pruning_policy).__name__}"
        )

    def should_wrap(layer):
        if isinstance(layer, PruneLowMagnitude) or cloning.is_graph_model(layer):
            return False
        if not layer.trainable or not layer_specs.has_prunable_weights(layer):
            return False
        return pruning_policy is None or pruning_policy.allow_pruning(layer)

    if isinstance(to_prune, (list, tuple)):
        for layer in to_prune:
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(
                    "Argument `to_prune` must hold only Keras layers. "
                    f"Received an element {layer!r}"
                )
        layer_specs.check_interpretable(to_prune)  # all-or-nothing: validate first
        return [
            PruneLowMagnitude(layer, **params) if should_wrap(layer) else layer
            for layer in to_prune
        ]

    if isinstance(to_prune, keras.Model):
        if not cloning.is_graph_model(to_prune):
            raise ValueError(
                f"Model '{to_prune.name}' is a subclassed model, which cannot be "
                "cloned. Wrap its layers in its `__init__` instead, e.g. "
                "`self.dense = tfprune.prune_low_magnitude(keras.layers.Dense(10))`."
            )
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        layer_specs.check_interpretable(_unwrapped_layers(to_prune))

        def replace(copy, layer):
            return PruneLowMagnitude(copy, **params) if should_wrap(layer) else copy

        return cloning.copy_model(to_prune, replace, weights_source=_inner_layer)

    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)

    raise ValueError(
        "`prune_low_magnitude` can only prune a keras.layers.Layer, a list of "
        "layers, or a Sequential or Functional keras.Model. Received: "
        f"to_prune={to_prune!r} of type {type(to_prune).__name__}"
    )


def _unwrapped_layers(model):
    """The layers of a graph model's graphs that are not pruning wrappers."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if cloning.is_graph_model(layer):
            found += _unwrapped_layers(layer)
        elif not isinstance(layer, PruneLowMagnitude):
            found.append(layer)
    return found


def _inner_layer(layer):
    """The layer a wrapper holds, its stored weights masked."""
    if isinstance(layer, PruneLowMagnitude):
        if layer.built:
            layer.apply_mask()
        return layer.layer
    return layer


def strip_pruning(model):
    """Removes pruning wrappers, keeping the sparse weights.

    Returns a model of the original layer types whose weights are the masked
    weights, so its predictions equal the pruned model's. Sequential and
    Functional models are copied, uncompiled and without optimizer state (the
    pruned model can keep training); subclassed models are stripped in place
    and returned. A single wrapper returns a copy of its layer.

    Args:
        model: a `keras.Model` (or a `PruneLowMagnitude` layer).
    """
    if isinstance(model, PruneLowMagnitude):
        layer = _inner_layer(model)
        copy = type(layer).from_config(layer.get_config())
        cloning.copy_weights(layer, copy)
        return copy
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model` instance. "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not cloning.is_graph_model(model):
        return _strip_in_place(model)

    def replace(copy, layer):
        return copy.layer if isinstance(copy, PruneLowMagnitude) else copy

    return cloning.copy_model(model, replace, weights_source=_inner_layer)


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
