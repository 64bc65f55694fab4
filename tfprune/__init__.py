"""tfprune: pruning for Keras 3 on TensorFlow, JAX and PyTorch.

A superset of TFMOT's `tfmot.sparsity.keras` API: change the import and keep
the code.
"""

from tfprune import recipes, regularizers
from tfprune.allocation import SensitivityThreshold, Splicing
from tfprune.api import (
    collect_statistics,
    hold_sparsity,
    prune,
    prune_low_magnitude,
    prune_scope,
    strip_pruning,
    update_masks,
)
from tfprune.callbacks import PruningSummaries, UpdatePruningStep
from tfprune.distillation import Distiller, distill
from tfprune.l0 import L0Gate, L0Penalty, add_l0_gates, gate_report, strip_gates
from tfprune.layers import PrunableLayer
from tfprune.lottery import rewind_weights, snapshot_weights
from tfprune.oneshot import oneshot
from tfprune.policy import PruneForLatencyOnXNNPack, PruningPolicy
from tfprune.pruner import Pruner
from tfprune.regularizers import SoftThreshold, regularize
from tfprune.schedules import (
    AGP,
    ConstantSparsity,
    ExponentialDecay,
    PolynomialDecay,
    PruningSchedule,
)
from tfprune.scoring import Criterion
from tfprune.sensitivity import sensitivity
from tfprune.thinning import Plan, apply_plan, count_flops, count_params, thin
from tfprune.thinning import report as thinning_report
from tfprune.wrapper import PruneLowMagnitude
from tfprune.xnnpack import xnnpack_report

__version__ = "0.1.0"

__all__ = [
    "AGP",
    "ConstantSparsity",
    "Criterion",
    "Distiller",
    "L0Gate",
    "L0Penalty",
    "ExponentialDecay",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPolicy",
    "PruningSchedule",
    "Plan",
    "Pruner",
    "PruningSummaries",
    "SensitivityThreshold",
    "SoftThreshold",
    "Splicing",
    "UpdatePruningStep",
    "add_l0_gates",
    "apply_plan",
    "collect_statistics",
    "count_flops",
    "count_params",
    "distill",
    "gate_report",
    "hold_sparsity",
    "oneshot",
    "prune",
    "prune_low_magnitude",
    "prune_scope",
    "regularize",
    "recipes",
    "regularizers",
    "sensitivity",
    "rewind_weights",
    "snapshot_weights",
    "strip_gates",
    "strip_pruning",
    "thin",
    "thinning_report",
    "update_masks",
    "xnnpack_report",
]
