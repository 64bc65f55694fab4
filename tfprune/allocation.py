"""How a sparsity budget is split across weights.

One target sparsity for a model becomes one sparsity (or one mask) per pruned
weight:

- `uniform`: every weight at the target (TFMOT's layer-wise pruning).
- `erk`: Erdős–Rényi-Kernel (Evci et al., 2020). Density is proportional to
  the sum of a weight's dimensions over their product,

      density_l = eps * sum(shape_l) / prod(shape_l),

  with `eps` solved so that the kept weights total `(1 - target) * N`; a layer
  whose density would exceed 1 stays dense and the rest is solved again.
  Small layers (often the first and last) keep more of their weights.
- `explicit`: a `{weight name: sparsity}` dict (Distiller's sensitivities).
- `global_masks`: one threshold over the scores of all weights, so exactly
  `k = keep_count(N, target)` scores are kept overall (ties at the threshold
  kept) and per-weight sparsities differ (Han et al., 2015).
- `lamp_scores`: layer-adaptive magnitude scores (Lee et al., 2021),
  `w_i^2 / sum_{|w_j| >= |w_i|} w_j^2` within each weight, to rank across
  weights with one global threshold.

The scope objects at the end of the module are what `tfprune.prune(...,
scope=...)` takes: `LayerWise` ("layer"), `ERK` ("erk"), `Explicit` (a dict),
`Global` ("global"), `LAMP` ("lamp"), and Distiller's threshold pruners
`SensitivityThreshold` and `Splicing`.

Example:
>>> [round(s, 3) for s in erk([(100, 10), (1000, 1000)], 0.9)]
[0.0, 0.901]
"""

import keras
import numpy as np
from keras import ops

from tfprune import selection
from tfprune.configurable import Configurable


def _check_target(target):
    if not 0.0 <= float(target) < 1.0:
        raise ValueError(f"Argument `target` must be in [0, 1). Received: target={target}")


def uniform(shapes, target):
    """Every weight at `target`."""
    _check_target(target)
    return [float(target)] * len(shapes)


def erk(shapes, target):
    """Per-weight sparsities with Erdős–Rényi-Kernel densities (see module).

    `target` may be a tensor (a schedule's value inside a compiled step): the
    solve is unrolled (at most one pass per weight turning dense). It runs in
    float32 in one fixed order either way, each product kept apart from the
    sum after it (no fused multiply-add), so a Python float on the host and a
    tensor on any backend give the same bits, and the same kept counts.
    """
    host = isinstance(target, (int, float, np.floating, np.integer))
    if host:
        _check_target(target)
    xp = np if host else ops
    target = np.float32(target) if host else ops.cast(target, "float32")
    sizes = [np.float32(np.prod(s)) for s in shapes]
    weighted = [np.float32(np.sum(s)) for s in shapes]  # raw density x size: sum(shape)
    raw = [np.float32(np.sum(s) / np.prod(s)) for s in shapes]
    total = np.float32(sum(float(np.prod(s)) for s in shapes))
    zero, one = np.float32(0), np.float32(1)

    def ordered_sum(values):
        result = values[0]
        for value in values[1:]:
            result = xp.add(result, value)
        return result

    def apart(product):  # a no-op clip between a product and the sum after it
        return xp.maximum(product, zero)

    dense = [False] * len(shapes)
    for _ in range(len(shapes) + 1):
        held = ordered_sum([xp.where(d, size, zero) for d, size in zip(dense, sizes)])
        budget = xp.subtract(apart(xp.multiply(xp.subtract(one, target), total)), held)
        spread = ordered_sum([xp.where(d, zero, w) for d, w in zip(dense, weighted)])
        eps = xp.divide(budget, xp.maximum(spread, np.float32(1e-30)))
        density = [xp.where(d, one, apart(xp.multiply(eps, r))) for d, r in zip(dense, raw)]
        dense = [xp.logical_or(d, xp.greater(x, one)) for d, x in zip(dense, density)]
    sparsity = [xp.subtract(one, x) for x in density]
    if host:
        return [float(v) for v in sparsity]
    return sparsity


def explicit(names, sparsities):
    """Sparsities from a `{name: sparsity}` dict covering every name."""
    missing = [n for n in names if n not in sparsities]
    if missing:
        raise ValueError(
            "Argument `sparsities` must give a sparsity for every pruned weight. "
            f"Missing: {missing}. Received: sparsities={sparsities!r}"
        )
    for name in names:
        _check_target(sparsities[name])
    return [float(sparsities[n]) for n in names]


def global_masks(scores, target):
    """Masks keeping the `keep_count(N, target)` largest scores of all weights.

    Returns `(masks, threshold)`: one boolean mask per score tensor and the
    shared threshold (the k-th largest score overall).
    """
    _check_target(target)
    flat = ops.concatenate([ops.reshape(ops.cast(s, "float32"), (-1,)) for s in scores])
    _, threshold = selection.threshold_mask(flat, target)
    masks = [ops.greater_equal(ops.cast(s, "float32"), threshold) for s in scores]
    return masks, threshold


def lamp_scores(weight):
    """LAMP scores of one weight: `w_i^2` over the sum of `w_j^2` with `|w_j| >= |w_i|`."""
    squares = ops.reshape(ops.square(ops.cast(weight, "float32")), (-1,))
    order = ops.argsort(squares)  # ascending
    ranked = ops.take(squares, order)
    suffix = ops.flip(ops.cumsum(ops.flip(ranked, 0)), 0)
    # Tied weights all count each other: the suffix sum from the first of them.
    at_least = ops.take(suffix, ops.searchsorted(ranked, ranked, side="left"))
    scores = ops.where(at_least > 0, ranked / ops.maximum(at_least, 1e-30), 0.0)
    inverse = ops.argsort(order)
    return ops.reshape(ops.take(scores, inverse), ops.shape(weight))


def per_layer(name, value, low=0.0, high=1.0):
    """Validates a float or a `{layer name: float}` dict; returns it normalized."""
    if isinstance(value, dict):
        if not value:
            raise ValueError(f"Argument `{name}` must not be an empty dict.")
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"Argument `{name}` must map layer names (str) to values. "
                    f"Received key {key!r} in {name}={value!r}"
                )
            _check_range(name, item, low, high, shown=value)
        return {k: float(v) for k, v in value.items()}
    return _check_range(name, value, low, high)


def _check_range(name, value, low, high, shown=None):
    shown = value if shown is None else shown
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(
            f"Argument `{name}` must be a number or a dict of numbers. Received: {name}={shown!r}"
        )
    if not low <= float(value) < high:
        raise ValueError(f"Argument `{name}` must be in [{low}, {high}). Received: {name}={shown!r}")
    return float(value)


def for_layer(value, layer_name, default=None):
    """The value of a per-layer option for one layer."""
    if isinstance(value, dict):
        return value.get(layer_name, default)
    return value if value is not None else default


class Scope(Configurable):
    """Base class: how a target sparsity becomes masks across layers.

    `kind` says how the pruner uses it:

    - `"budget"`: `sparsities(infos, target, final)` gives one sparsity per
      selection (each keeps its largest scores, TFMOT's rule). `per_layer`
      scopes need only one layer at a time.
    - `"ranking"`: one ranking of every unit of every layer, exact overall
      count; `transform(unit_scores)` may rescale a layer's scores first.
    - `"threshold"`: masks from thresholds `s * sigma`, the schedule only
      saying when.
    """

    kind = "budget"
    per_layer = True
    forward_only = False
    layer_names = None  # None: every layer; else only these are pruned


@keras.saving.register_keras_serializable(package="tfprune")
class LayerWise(Scope):
    """Every layer at the target (TFMOT's pruning)."""

    def sparsities(self, infos, target, final):
        del final
        return [target] * len(infos)


@keras.saving.register_keras_serializable(package="tfprune")
class ERK(Scope):
    """Erdős–Rényi-Kernel budgets over the pruner's layers (see `erk`)."""

    per_layer = False

    def sparsities(self, infos, target, final):
        del final
        return erk([info.shape for info in infos], target)


@keras.saving.register_keras_serializable(package="tfprune")
class Explicit(Scope):
    """A sparsity per layer name (Distiller's `sensitivities` for levels).

    Each value is the layer's sparsity at the end of the schedule; along the
    way a layer follows the schedule's shape, `s_l * s(t) / s_final`. Layers
    not named are not pruned.
    """

    def __init__(self, sparsities):
        if not isinstance(sparsities, dict):
            raise TypeError(
                "Argument `sparsities` must be a dict {layer name: sparsity}. "
                f"Received: sparsities={sparsities!r}"
            )
        self.sparsities_by_layer = per_layer("sparsities", sparsities)
        self.layer_names = tuple(self.sparsities_by_layer)

    def sparsities(self, infos, target, final):
        if not final:  # no schedule: the dict's values as they are
            ratio = np.float32(1.0)
        elif isinstance(target, (int, float, np.floating)):
            ratio = np.float32(target) / np.float32(final)
        else:
            ratio = ops.divide(ops.cast(target, "float32"), np.float32(final))
        return [self.sparsities_by_layer[info.layer] * ratio for info in infos]

    def get_config(self):
        return {"sparsities": dict(self.sparsities_by_layer)}


@keras.saving.register_keras_serializable(package="tfprune")
class Global(Scope):
    """One threshold over every unit of every layer (Han et al., 2015).

    The overall count is exact: `keep_count(N, target)` units are kept, ties
    at the threshold broken by position, and per-layer sparsities differ.
    """

    kind = "ranking"
    per_layer = False

    def transform(self, unit_scores):
        return unit_scores


@keras.saving.register_keras_serializable(package="tfprune")
class LAMP(Global):
    """Layer-adaptive magnitude scores (Lee et al., 2021), then one threshold.

    Each unit's score `u` becomes `u**2 / sum(u_j**2 for u_j >= u)` within its
    layer (`lamp_scores`), so every layer keeps its largest unit (score 1).
    """

    def transform(self, unit_scores):
        return lamp_scores(unit_scores)


@keras.saving.register_keras_serializable(package="tfprune")
class SensitivityThreshold(Scope):
    """Distiller's sensitivity pruner: keep `|w| > s * sigma`.

    `sigma` is the standard deviation of the weight, measured once at the
    first pruning step; as the weight is pruned and trained, more of it falls
    under the threshold. The schedule says when masks update; its sparsity is
    not used.

    Args:
        sensitivity: `s`, a float, or a `{layer name: s}` dict (layers not
            named are not pruned).
    """

    kind = "threshold"

    def __init__(self, sensitivity):
        self.sensitivity = per_layer("sensitivity", sensitivity, 0.0, float("inf"))
        if isinstance(self.sensitivity, dict):
            self.layer_names = tuple(self.sensitivity)

    def keep(self, magnitudes, sigma, kept, layer):
        del kept
        return ops.greater(magnitudes, for_layer(self.sensitivity, layer) * sigma)

    def threshold(self, sigma, layer):
        return for_layer(self.sensitivity, layer) * sigma

    def get_config(self):
        return {"sensitivity": self.sensitivity}


@keras.saving.register_keras_serializable(package="tfprune")
class Splicing(Scope):
    """Dynamic network surgery (Guo et al., 2016): pruning with splicing.

    Two thresholds with hysteresis, `low * sigma <= high * sigma` (`sigma` as
    in `SensitivityThreshold`): a weight is pruned when `|w| < low * sigma`,
    spliced back when `|w| >= high * sigma`, and keeps its state in between.
    Masks apply on the forward pass only: pruned weights keep their stored
    values and receive gradients, so they can grow back. Stored weights are
    masked by `strip_pruning`.

    Args:
        low: multiplier of `sigma` under which a weight is pruned.
        high: multiplier of `sigma` from which a weight is spliced back.
    """

    kind = "threshold"
    forward_only = True

    def __init__(self, low, high):
        self.low = _check_range("low", low, 0.0, float("inf"))
        self.high = _check_range("high", high, 0.0, float("inf"))
        if self.high < self.low:
            raise ValueError(
                "Argument `high` must be >= `low`. "
                f"Received: low={low!r}, high={high!r}"
            )

    def keep(self, magnitudes, sigma, kept, layer):
        del layer
        stay = ops.logical_and(kept, ops.greater_equal(magnitudes, self.low * sigma))
        return ops.logical_or(stay, ops.greater_equal(magnitudes, self.high * sigma))

    def threshold(self, sigma, layer):
        del layer
        return self.low * sigma

    def get_config(self):
        return {"low": self.low, "high": self.high}


SCOPES = {"layer": LayerWise, "global": Global, "lamp": LAMP, "erk": ERK}


def get(identifier):
    """A `Scope` from its name, a `{layer name: sparsity}` dict or an instance."""
    if isinstance(identifier, Scope):
        return identifier
    if isinstance(identifier, dict):
        per_layer("scope", identifier)  # named as the caller passed it
        return Explicit(identifier)
    if isinstance(identifier, str) and identifier in SCOPES:
        return SCOPES[identifier]()
    raise ValueError(
        f"Argument `scope` must be one of {sorted(SCOPES)}, a dict "
        "{layer name: sparsity} or a `tfprune.allocation.Scope` instance. "
        f"Received: scope={identifier!r}"
    )
