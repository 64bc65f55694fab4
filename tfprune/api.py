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

import inspect

import keras

from tfprune import (
    arguments,
    backend,
    checks,
    cloning,
    graph,
    masking,
    structured,
    updater,
)
from tfprune import layers as layer_specs
from tfprune import schedules as schedules_lib
from tfprune.oneshot import calibration
from tfprune.pruner import Pruner
from tfprune.schedules import ConstantSparsity
from tfprune.wrapper import PruneLowMagnitude, collect_prunable_layers


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
    arguments.check_policy(pruning_policy)

    def wrap(layer):
        return PruneLowMagnitude(layer, **params)

    def applies_to(layer):
        return layer_specs.has_prunable_weights(layer)

    if isinstance(to_prune, keras.layers.Layer) and not isinstance(to_prune, keras.Model):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    return _wrap(to_prune, wrap, applies_to, pruning_policy, "prune_low_magnitude")


def prune(
    to_prune,
    pruning_schedule,
    *,
    criterion="magnitude",
    granularity="element",
    scope="layer",
    layers=None,
    pruning_policy=None,
    min_sparsity=None,
    max_sparsity=None,
    reduction="mean",
    seed=None,
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
    budget="channels",
    round_to=None,
):
    """Wraps a model (or layers) for pruning by any criterion, structure and scope.

    The general entry point of the engine (see `tfprune.Pruner`); it returns
    the same kind of wrapped model as `prune_low_magnitude`, so
    `UpdatePruningStep`, `strip_pruning`, saving and summaries work unchanged.

    Example:
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16),
    ...                           keras.layers.Dense(4)])
    >>> pruned = prune(model, ConstantSparsity(0.9, 0), scope="global")
    >>> [layer.pruner.scope for layer in pruned.layers]
    [Global(), Global()]

    Args:
        to_prune: a Sequential or Functional `keras.Model` (KerasHub backbones
            included), a layer or a list of layers.
        pruning_schedule: when and how much (`PruningSchedule`); None: masks
            change only when `tfprune.update_masks(model, sparsity)` is called.
        criterion: `"magnitude"`, `"random"`, `"taylor"`, `"movement"`,
            `"apoz"`, `"activation_mean"`, or a `tfprune.Criterion`.
        granularity: `"element"`, `"block"`, `"m_by_n"`, `"filter"`,
            `"channel"`, `"row"`, `"column"`, `"head"`, or a `Granularity`.
            Only layers with weights of that structure are wrapped (the
            structures); `"block"` and `"m_by_n"` take every prunable
            weight, so blocks need rank-2 weights (`layers=` picks them). On a
            Sequential or Functional model, `"filter"` and `"channel"` follow
            the channel dependency graph (`tfprune.structured`): coupled
            channels are masked together across layers, and
            `tfprune.thin` removes them.
        scope: `"layer"`, `"global"`, `"lamp"`, `"erk"`, a `{layer name:
            sparsity}` dict, or a `Scope` (`SensitivityThreshold`,
            `Splicing`).
        layers: names of the layers to prune, or a function `layer -> bool`
            (default: every layer with prunable weights). Layers already
            wrapped keep their pruner, so several calls give different
            layers different pruners (not on a KerasHub model, which is
            copied from its constructor's arguments: one call).
        pruning_policy: a `PruningPolicy`, as in `prune_low_magnitude`.
        min_sparsity: a float or `{layer name: float}`: the least a layer is
            pruned.
        max_sparsity: likewise, the most.
        reduction: how a structure's score reduces its elements' scores:
            `"mean"` (mean |w| for magnitude), `"sum"`, `"max"` or `"l2"`.
        seed: seed of `criterion="random"`.
        block_size, block_pooling_type: blocks of `granularity="block"`.
        sparsity_m_by_n: `(m, n)` of `granularity="m_by_n"`.
        budget: for coupled channels, what the schedule's sparsity counts:
            `"channels"`, `"flops"` or `"params"` (the fraction of the model's
            FLOPs or parameters to remove, ranked globally).
        round_to: for coupled channels, keep each group's channel count a
            multiple of this (e.g. 8).

    Returns:
        The wrapped model, layer or list.
    """
    selected = arguments.layer_selector(layers)
    coupled = (
        isinstance(to_prune, keras.Model)
        and cloning.is_graph_model(to_prune)
        and granularity in ("filter", "channel")
    )
    chosen = arguments.chosen_granularity(
        coupled, granularity, scope, reduction, budget, round_to,
        block_size, block_pooling_type, sparsity_m_by_n,
    )  # fmt: skip
    structure = None
    if coupled:
        # Checked before anything is touched: unknown layers on coupled paths.
        everything = graph.build(to_prune, strict=False)
        excluded = [
            name for name in structured.producers(everything)
            if not selected(everything.layers[name])
        ]
        structure = graph.build(to_prune, lambda layer: layer.name not in excluded)
        if not structure.prunable.any():
            blocked = {
                f"read by '{n}', which has no channel rule" for n in structure.blocked_by.values()
            }
            reasons = [r for r in dict.fromkeys([*structure.fixed_by.values(), *sorted(blocked)])
                       if r != "model input"]  # fmt: skip
            raise ValueError(
                f"No channel of model '{to_prune.name}' can be removed "
                f"(granularity={granularity!r} follows its channel dependency graph): every "
                f"channel is fixed ({'; '.join(reasons[:4])}"
                f"{'; ...' if len(reasons) > 4 else ''}). A layer without a channel rule fixes "
                "the channels it reads and writes (`tfprune.graph.register` adds one); "
                "granularity='element', or `tfprune.granularity.Filter()` for each layer's "
                "filters on their own, prunes without the graph."
            )
        arguments.check_limits(
            min_sparsity, max_sparsity,
            {p for g in structure.groups if structure.prunable[g.units].any() for p in g.producers},
            "the producers of its coupled channel groups",
        )  # fmt: skip
        chosen = structured.Coupled(**{**chosen.get_config(), "excluded": excluded})
        if scope == "layer" and budget != "channels":
            scope = "global"  # a FLOPs or parameter budget is shared by all groups
    pruner = Pruner(
        pruning_schedule,
        criterion=arguments.criterion_from(criterion, seed),
        granularity=chosen,
        scope=scope,
        min_sparsity=min_sparsity,
        max_sparsity=max_sparsity,
    )
    arguments.check_policy(pruning_policy)
    wrapped_names = structured.wrapped_layer_names(structure) if coupled else None

    def applies_to(layer):
        if coupled:
            return layer.name in wrapped_names
        if not selected(layer):
            return False
        if layer_specs.fully_built(layer):
            if not pruner.applies_to(layer):
                return False
            pruner.check(layer)  # what building its wrapper would raise, raised now
            return True
        return layer_specs.has_prunable_weights(layer)

    def wrap(layer):
        return PruneLowMagnitude(layer, pruner=pruner)

    single = isinstance(to_prune, keras.layers.Layer) and not isinstance(to_prune, keras.Model)
    if single or isinstance(to_prune, (list, tuple)) or cloning.is_graph_model(to_prune):
        arguments.check_names([to_prune] if single else to_prune, layers, pruner)
    if single:
        if not applies_to(to_prune):
            raise ValueError(
                f"Layer '{to_prune.name}' has no weights this pruner can prune "
                f"(granularity={pruner.granularity!r}, layers={layers!r})."
            )
        arguments.check_limits(min_sparsity, max_sparsity, {to_prune.name}, "the layers it wraps")
        wrapped = wrap(to_prune)
        updater.bind([wrapped])
        return wrapped
    result = _wrap(to_prune, wrap, applies_to, pruning_policy, "prune")
    wrappers = (
        [w for w in result if isinstance(w, PruneLowMagnitude)]
        if isinstance(result, list)
        else collect_prunable_layers(result)
    )
    if not coupled:
        arguments.check_limits(
            min_sparsity, max_sparsity,
            {w.layer.name for w in wrappers if w.pruner is pruner}, "the layers it wraps",
        )  # fmt: skip
    if not any(w.pruner is pruner for w in wrappers):
        raise ValueError(
            f"No layer of {getattr(to_prune, 'name', 'the list')!r} has weights this pruner "
            f"can prune (granularity={pruner.granularity!r}, layers={layers!r}, "
            f"scope={pruner.scope!r})."
        )
    updater.bind(wrappers)
    if coupled:
        structured.bind(pruner, result)
    return result


def check_arguments(**options):
    """Checks keyword arguments of `prune` that need no model (a recipe, as
    it loads), with `prune`'s defaults for the others; raises what `prune`
    would. `"filter"` and `"channel"` are taken as coupled channels, as on a
    Sequential or Functional model.

    >>> check_arguments(granularity="filter", round_to=0)
    Traceback (most recent call last):
    ...
    ValueError: Argument `round_to` must be a positive int or None. Received: round_to=0
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(prune).parameters.items()
        if parameter.kind == inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"`prune` has no arguments {unknown}. Its options: {sorted(defaults)}")
    a = {**defaults, **options}
    chosen = arguments.chosen_granularity(
        a["granularity"] in ("filter", "channel"), a["granularity"], a["scope"], a["reduction"],
        a["budget"], a["round_to"], a["block_size"], a["block_pooling_type"], a["sparsity_m_by_n"],
    )  # fmt: skip
    Pruner(
        None,
        criterion=arguments.criterion_from(a["criterion"], a["seed"]),
        granularity=chosen,
        scope=a["scope"],
        min_sparsity=a["min_sparsity"],
        max_sparsity=a["max_sparsity"],
    )


def _wrap(to_prune, wrap, applies_to, pruning_policy, function):
    """Wraps a list of layers or every prunable layer of a graph model."""

    def should_wrap(layer):
        if isinstance(layer, PruneLowMagnitude) or cloning.is_graph_model(layer):
            return False
        if not layer.trainable or not applies_to(layer):
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
        return [wrap(layer) if should_wrap(layer) else layer for layer in to_prune]

    if isinstance(to_prune, keras.Model):
        if not cloning.is_graph_model(to_prune):
            schedule_example = ", schedule" if function == "prune" else ""
            raise ValueError(
                f"Model '{to_prune.name}' is a subclassed model, which cannot be "
                "cloned. Wrap its layers in its `__init__` instead, e.g. "
                f"`self.dense = tfprune.{function}(keras.layers.Dense(10){schedule_example})`."
            )
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        _check_rebuildable(to_prune)
        layer_specs.check_interpretable(_unwrapped_layers(to_prune))

        def replace(copy, layer):
            return wrap(copy) if should_wrap(layer) else copy

        return cloning.copy_model(to_prune, replace, weights_source=_inner_layer)

    raise ValueError(
        f"`{function}` can only prune a keras.layers.Layer, a list of "
        "layers, or a Sequential or Functional keras.Model. Received: "
        f"to_prune={to_prune!r} of type {type(to_prune).__name__}"
    )


def _check_rebuildable(model):
    """A model copied from its constructor's arguments (a KerasHub backbone or
    task) cannot carry the wrappers it holds into the copy: refused, instead
    of silently dropping them."""
    for inner in [model, *model._flatten_layers(include_self=False, recursive=True)]:
        if not (isinstance(inner, keras.Model) and cloning.keeps_its_class(inner)):
            continue
        held = [op.name for op in cloning.graph_operations(inner) if isinstance(op, PruneLowMagnitude)]
        if held:
            raise ValueError(
                f"Model '{inner.name}' ({type(inner).__name__}) is copied from its constructor's "
                f"arguments, which cannot hold the pruning wrappers it has ({held[:3]}...): prune "
                "all its layers in one call, or `tfprune.strip_pruning` it first."
            )


def update_masks(model, sparsity=None):
    """Recomputes the masks of every pruning wrapper of `model` now.

    One-shot pruning outside training (after `collect_statistics` for the
    activation criteria, or between the rounds of iterative magnitude pruning):
    each wrapper's pruner scores its weights and keeps what its scope says.
    Stored weights are masked too.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    >>> pruned = prune(model, None, scope="global")
    >>> update_masks(pruned, 0.75)
    >>> int(keras.ops.convert_to_numpy(pruned.layers[0].pruning_vars[0][1]).sum())
    8

    Args:
        model: a pruned model (or a pruning wrapper).
        sparsity: the target; None uses each schedule's value at the
            wrapper's current step.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "Argument `model` must be a pruned Keras model or a pruning wrapper. "
            f"Received: model={model!r}"
        )
    wrappers = collect_prunable_layers(model)
    if not wrappers:
        raise ValueError(
            f"Argument `model` holds no pruning wrappers: nothing to update. Prune it first "
            f"(`tfprune.prune` or `tfprune.prune_low_magnitude`). Received: model={model.name!r}"
        )
    if isinstance(model, keras.Model) and cloning.is_graph_model(model):
        updater.bind(wrappers)
        structured.bind_model(model, wrappers)
    if sparsity is not None:
        for pruner in {id(w.pruner): w.pruner for w in wrappers}.values():
            if getattr(pruner, "binding", None) is not None:
                structured.warn_if_out_of_reach(pruner.binding, sparsity, "sparsity")
    updater.update_masks(wrappers, sparsity)
    for wrapper in wrappers:
        wrapper.keep_stored_weights_sparse()


def hold_sparsity(model):
    """Wraps a sparse model so that training keeps its zeros.

    Every layer with prunable weights is wrapped with masks equal to its
    current non-zero pattern and no schedule, so `fit` (with
    `UpdatePruningStep`) updates only the kept weights: recovery
    fine-tuning after `tfprune.oneshot`. `strip_pruning` returns the plain
    model afterwards.

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _ = model.layers[0].kernel.assign(keras.ops.zeros((4, 2)))
    >>> held = hold_sparsity(model)
    >>> bool(keras.ops.convert_to_numpy(held.layers[0].pruning_vars[0][1]).any())
    False
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Argument `model` must be a keras.Model (its layers are wrapped with their "
            f"non-zero patterns). Received: model={model!r}"
        )
    held = prune(model, None)
    for wrapper in collect_prunable_layers(held):
        for weight, mask, _ in wrapper.pruning_vars:
            mask.assign(keras.ops.not_equal(weight.value, 0))
    return held


def collect_statistics(model, data, steps=None, batch_size=32):
    """Runs `model` over calibration data so activation criteria can score.

    For `criterion="apoz"` or `"activation_mean"`: every pruning wrapper
    accumulates its layer's output statistics over the batches (inference
    mode, no weights change). `update_masks(model, sparsity)` then prunes
    by them; training continues to accumulate until the next mask update.

    Args:
        model: a pruned model.
        data: an iterable of batches (inputs, or `(inputs, targets)`
            tuples), or the inputs as one array (or dict of arrays, or an
            `(inputs, targets)` tuple of them), split into batches.
        steps: the number of batches to use (default: all).
        batch_size: rows per batch where `data` is one array.
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a pruned Keras model. Received: model={model!r}")
    wrappers = collect_prunable_layers(model)
    if not any(w.pruner.criterion.needs_outputs for w in wrappers):
        raise ValueError(
            f"Model '{model.name}' has no pruning wrapper whose criterion uses "
            "activations (criterion='apoz' or 'activation_mean')."
        )
    if steps is not None and (not checks.is_integer(steps) or steps < 1):
        raise ValueError(f"Argument `steps` must be a positive int or None. Received: steps={steps!r}")
    calibration.check_batch_size(batch_size)
    if isinstance(data, (str, bytes)) or not (hasattr(data, "__iter__") or hasattr(data, "shape")):
        raise TypeError(
            "Argument `data` must be an iterable of batches (inputs, or (inputs, targets) "
            f"tuples), or an array of inputs. Received: data={data!r}"
        )
    one_array = isinstance(data, dict) or hasattr(data, "shape")
    if one_array or (isinstance(data, tuple) and hasattr(data[0] if data else None, "shape")):
        data = calibration.batches(data, batch_size, model, argument="data")
    for wrapper in wrappers:
        wrapper._collecting = True
    try:
        seen = 0
        for n, batch in enumerate(data):
            if steps is not None and n >= steps:
                break
            inputs = batch[0] if isinstance(batch, tuple) else batch
            model(inputs, training=False)
            seen += 1
        if not seen:
            raise ValueError(f"Argument `data` holds no batch: nothing to collect. Received: data={data!r}")
    finally:
        for wrapper in wrappers:
            wrapper._collecting = False


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
    and returned (their `__init__` still wraps layers, so a `.keras` file of
    one loads wrapped: keep its weights with `save_weights`). A single
    wrapper returns a copy of its layer.

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
        for name, value in backend.attributes(owner):
            if isinstance(value, PruneLowMagnitude):
                _set_attribute(owner, name, value.release())
            elif isinstance(value, (list, tuple)) or type(value).__name__ == "TrackedList":
                for i, item in enumerate(list(value)):
                    if isinstance(item, PruneLowMagnitude) and isinstance(value, list):
                        value[i] = item.release()
        layers_list = getattr(owner, "_layers", None)
        if isinstance(layers_list, list):
            for i, item in enumerate(layers_list):
                if isinstance(item, PruneLowMagnitude):
                    layers_list[i] = item.release()
    return model


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
