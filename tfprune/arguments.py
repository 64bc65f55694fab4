"""`prune`'s keyword arguments read into engine parts, each checked first.

Each function raises the `ValueError`/`TypeError` `prune` raises for a bad
argument, before any model is touched.

>>> granularity_from("filter", "l2", (1, 1), "AVG", None)
Filter(reduction='l2')
>>> check_granularity_options("filter", (2, 2), "AVG", None)
Traceback (most recent call last):
...
ValueError: Argument(s) `block_size` do not apply to granularity='filter' (block_size and block_pooling_type: 'block' or 'element'; sparsity_m_by_n: 'm_by_n' or 'element'). Received: block_size=(2, 2)
"""

import keras

from tfprune import granularity as granularity_lib
from tfprune import masking, scoring, structured
from tfprune.policy import PruningPolicy


def criterion_from(criterion, seed):
    if seed is not None:
        if criterion != "random":
            raise ValueError(
                "Argument `seed` applies to criterion='random' only. "
                f"Received: criterion={criterion!r}, seed={seed!r}"
            )
        return scoring.Random(seed)
    return criterion


def chosen_granularity(
    coupled, granularity, scope, reduction, budget, round_to,
    block_size, block_pooling_type, sparsity_m_by_n,
):  # fmt: skip
    """The granularity `prune`'s arguments name (coupled: `structured.Coupled`)."""
    check_granularity_options(granularity, block_size, block_pooling_type, sparsity_m_by_n)
    if coupled:
        chosen = structured.Coupled(granularity, reduction, budget, round_to)  # validates
        if budget != "channels" and scope not in ("layer", "global"):
            raise ValueError(
                "A FLOPs or parameter budget ranks channels globally. "
                f"Received: budget={budget!r}, scope={scope!r}"
            )
        return chosen
    if budget != "channels" or round_to is not None:
        raise ValueError(
            "Arguments `budget` and `round_to` apply to granularity='filter' or "
            "'channel' on a Sequential or Functional model (coupled channels). "
            f"Received: granularity={granularity!r}, budget={budget!r}, round_to={round_to!r}"
        )
    return granularity_from(granularity, reduction, block_size, block_pooling_type, sparsity_m_by_n)


def check_granularity_options(granularity, block_size, block_pooling_type, sparsity_m_by_n):
    """Block and N:M options given to a granularity that does not use them are refused."""
    given = {}
    if not isinstance(block_size, (tuple, list)) or tuple(block_size) != (1, 1):
        given["block_size"] = block_size
    if block_pooling_type != "AVG":
        given["block_pooling_type"] = block_pooling_type
    if sparsity_m_by_n is not None:
        given["sparsity_m_by_n"] = sparsity_m_by_n
    uses = {
        "element": set(given),  # TFMOT's arguments name the granularity
        "block": {"block_size", "block_pooling_type"},
        "m_by_n": {"sparsity_m_by_n"},
    }.get(granularity if isinstance(granularity, str) else None, set())
    unused = {name: value for name, value in given.items() if name not in uses}
    if unused:
        received = ", ".join(f"{name}={value!r}" for name, value in unused.items())
        raise ValueError(
            f"Argument(s) {', '.join(f'`{n}`' for n in unused)} do not apply to "
            f"granularity={granularity!r} (block_size and block_pooling_type: 'block' or "
            f"'element'; sparsity_m_by_n: 'm_by_n' or 'element'). Received: {received}"
        )


def granularity_from(granularity, reduction, block_size, block_pooling_type, sparsity_m_by_n):
    masking.granularity_from_args(block_size, block_pooling_type, sparsity_m_by_n)
    if granularity == "element" and (tuple(block_size) != (1, 1) or sparsity_m_by_n):
        return granularity_lib.from_tfmot_args(block_size, block_pooling_type, sparsity_m_by_n)
    if isinstance(granularity, str) and granularity in ("filter", "channel", "row", "column", "head"):
        return granularity_lib.GRANULARITIES[granularity](reduction)
    if reduction != "mean":
        raise ValueError(
            "Argument `reduction` applies to structures (filter, channel, row, column, "
            f"head). Received: granularity={granularity!r}, reduction={reduction!r}"
        )
    return granularity_lib.get(granularity, block_size, block_pooling_type, sparsity_m_by_n)


def layer_selector(layers):
    if layers is None:
        return lambda layer: True
    if callable(layers):
        return layers
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError(
            "Argument `layers` must be a list of layer names or a function "
            f"`layer -> bool`. Received: layers={layers!r}"
        )
    names = set(layers)
    return lambda layer: layer.name in names


def check_names(target, layers, pruner):
    """Names given in `layers` or a per-layer dict must name layers of the
    target: a graph model, or a list of layers."""
    if isinstance(target, keras.Model):
        everything = target._flatten_layers(include_self=False, recursive=True)
        holder = f"model '{target.name}'"
    else:
        everything = [
            inner
            for layer in target
            if isinstance(layer, keras.layers.Layer)
            for inner in layer._flatten_layers(include_self=True, recursive=True)
        ]
        holder = "the layers given"
    known = {layer.name for layer in everything}  # a wrapper's layer is flattened too
    named = {}
    if layers is not None and not callable(layers):
        named["layers"] = list(layers)
    for option in ("min_sparsity", "max_sparsity"):
        if isinstance(getattr(pruner, option), dict):
            named[option] = list(getattr(pruner, option))
    if pruner.scope.layer_names is not None:
        named["scope"] = list(pruner.scope.layer_names)
    for argument, names in named.items():
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"Argument `{argument}` names layers not in {holder}: {unknown}. "
                f"Its layers: {sorted(known)}"
            )


def check_limits(min_sparsity, max_sparsity, limited, what):
    """Per-layer limits must name layers the pruner sets a sparsity for."""
    for option, value in (("min_sparsity", min_sparsity), ("max_sparsity", max_sparsity)):
        if isinstance(value, dict):
            idle = [name for name in value if name not in limited]
            if idle:
                raise ValueError(
                    f"Argument `{option}` names layers this pruner does not prune: {idle} "
                    f"(limits apply to {what}: {sorted(limited)}). Received: {option}={value!r}"
                )


def check_policy(pruning_policy):
    if pruning_policy is not None and not isinstance(pruning_policy, PruningPolicy):
        raise TypeError(
            "Argument `pruning_policy` must be a `tfprune.PruningPolicy` instance "
            f"or None. Received: pruning_policy={pruning_policy!r} of type "
            f"{type(pruning_policy).__name__}"
        )
