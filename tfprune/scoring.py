"""Saliency: how important each weight is. Masks keep the highest scores.

A scorer maps a weight tensor to non-negative scores of the same shape. It is
kept apart from the mask (see `tfprune.masking`): scores can change while a
mask is kept, and a mask can be read or reset without touching scores.

Example:
>>> import numpy as np
>>> ops.convert_to_numpy(magnitude(np.array([-2.0, 0.5]))).tolist()
[2.0, 0.5]
"""

from keras import ops


def magnitude(weight):
    """Magnitude saliency, `|w|` (Han et al., 2015): the default score."""
    return ops.abs(ops.cast(weight, "float32"))


_SCORERS = {"magnitude": magnitude}


def get(identifier):
    """Returns a scorer from its name or a callable."""
    if callable(identifier):
        return identifier
    if identifier in _SCORERS:
        return _SCORERS[identifier]
    raise ValueError(
        f"Argument `scorer` must be one of {sorted(_SCORERS)} or a callable. "
        f"Received: scorer={identifier!r}"
    )

