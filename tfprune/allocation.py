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

Example:
>>> [round(s, 3) for s in erk([(100, 10), (1000, 1000)], 0.9)]
[0.0, 0.901]
"""

import numpy as np
from keras import ops

from tfprune import masking


def _check_target(target):
    if not 0.0 <= float(target) < 1.0:
        raise ValueError(f"Argument `target` must be in [0, 1). Received: target={target}")


def uniform(shapes, target):
    """Every weight at `target`."""
    _check_target(target)
    return [float(target)] * len(shapes)


def erk(shapes, target):
    """Per-weight sparsities with Erdős–Rényi-Kernel densities (see module)."""
    _check_target(target)
    sizes = np.array([np.prod(s) for s in shapes], dtype=np.float64)
    raw = np.array([np.sum(s) / np.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = (1.0 - target) * sizes.sum() - sizes[dense].sum()
        eps = budget / np.sum(raw[~dense] * sizes[~dense])
        density = np.where(dense, 1.0, eps * raw)
        over = (density > 1.0) & ~dense
        if not over.any():
            return [float(1.0 - d) for d in density]
        dense |= over


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
    _, threshold = masking.threshold_mask(flat, target)
    masks = [ops.greater_equal(ops.cast(s, "float32"), threshold) for s in scores]
    return masks, threshold


def lamp_scores(weight):
    """LAMP scores of one weight: `w_i^2` over the sum of `w_j^2` with `|w_j| >= |w_i|`."""
    squares = ops.reshape(ops.square(ops.cast(weight, "float32")), (-1,))
    order = ops.argsort(squares)  # ascending
    ranked = ops.take(squares, order)
    at_least = ops.flip(ops.cumsum(ops.flip(ranked, 0)), 0)  # suffix sums
    scores = ops.where(at_least > 0, ranked / ops.maximum(at_least, 1e-30), 0.0)
    inverse = ops.argsort(order)
    return ops.reshape(ops.take(scores, inverse), ops.shape(weight))
