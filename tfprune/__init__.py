"""tfprune: pruning for Keras 3 on TensorFlow, JAX and PyTorch.

A superset of TFMOT's `tfmot.sparsity.keras` API: change the import and keep
the code.
"""

from tfprune.api import prune_low_magnitude, prune_scope, strip_pruning
from tfprune.callbacks import PruningSummaries, UpdatePruningStep
from tfprune.layers import PrunableLayer
from tfprune.policy import PruneForLatencyOnXNNPack, PruningPolicy
from tfprune.schedules import (
    AGP,
    ConstantSparsity,
    ExponentialDecay,
    PolynomialDecay,
    PruningSchedule,
)
from tfprune.wrapper import PruneLowMagnitude

__version__ = "0.1.0"

__all__ = [
    "AGP",
    "ConstantSparsity",
    "ExponentialDecay",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "prune_low_magnitude",
    "prune_scope",
    "strip_pruning",
]
