"""Granularity: which weights are kept or removed together.

A granularity turns the pruned weights of one layer into *selections*: sets
of units that compete for one budget. A unit is what is kept or removed
whole; its score is a reduction of its elements' scores (`"mean"` by
default, so magnitude scores rank structures by mean `|w|`, as Distiller's
L1-ranked pruner).

- `"element"`: every weight is a selection of single elements.
- `"block"`: rank-2 blocks (`block_size`, scored by `block_pooling_type`).
- `"m_by_n"`: `m` zeros in every `n` weights along the input channel (a
  pattern: the sparsity comes from `(m, n)`, not from the schedule).
- `"filter"`: output channels: the kernel slice and its bias, so the layer's
  pre-activation output of a pruned channel is zero.
- `"channel"`: input channels (the kernel slice reading one input channel).
- `"row"` / `"column"`: rows (axis 0: one input of a `Dense`) or columns
  (axis 1: one output of a `Dense`, bias not included) of rank-2 weights.
- `"head"`: attention heads of `MultiHeadAttention` layers (KerasHub's
  attention layers included): a head's slices of the query, key, value and
  output kernels and of the query, key and value biases go together.

Structures are masked whole here; removing them from the model is a
separate step.

Example:
>>> dense = keras.layers.Dense(3)
>>> dense.build((None, 4))
>>> weights = Filter().weights(dense)
>>> [spec.path for _, spec in weights]
['kernel', 'bias']
>>> [s.size for s in Filter().selections([w for w, _ in weights], [s for _, s in weights])]
[3]
"""

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from tfprune import layers as layer_specs
from tfprune import masking
from tfprune.configurable import Configurable


@dataclasses.dataclass(frozen=True)
class Selection:
    """Units of one layer competing for one budget.

    Attributes:
        scored: indices (into the layer's pruned weights) of the weights whose
            scores rank the units.
        masked: indices of every weight the units mask, `scored` first.
        size: number of units.
        shape: shape of the first scored weight (for ERK budgets).
        unit_scores: `[scores of scored weights] -> 1-D unit scores`.
        expand: `1-D boolean keep -> [mask of each masked weight]`.
        pattern: for pattern granularities, `[scores] -> [mask]` (no budget).
        elementwise: the units are the elements of the one scored weight, in
            order (`unit_scores` only flattens).
    """

    scored: tuple
    masked: tuple
    size: int
    shape: tuple
    unit_scores: Callable
    expand: Callable
    pattern: Callable = None
    elementwise: bool = False


REDUCTIONS = ("mean", "sum", "max", "l2")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"Argument `reduction` must be one of {REDUCTIONS}. "
            f"Received: reduction={reduction!r}"
        )


def reduce_units(tensors, axes, reduction):
    """Per-unit reduction over several tensors sharing a unit axis.

    `tensors[i]` has its units along `axes[i]`; each unit's elements in every
    tensor are reduced together (`mean`: their sum over their count).
    """
    rows = []
    for t, axis in zip(tensors, axes):
        t = ops.cast(t, "float32")
        t = ops.moveaxis(t, axis, 0)
        rows.append(ops.reshape(t, (t.shape[0], -1)))
    if reduction == "max":
        return ops.max(ops.concatenate(rows, axis=1), axis=1)
    if reduction == "l2":
        return ops.sqrt(sum(ops.sum(ops.square(r), axis=1) for r in rows))
    total = sum(ops.sum(r, axis=1) for r in rows)
    if reduction == "sum":
        return total
    return ops.divide(total, float(sum(r.shape[1] for r in rows)))


def broadcast_units(keep, shape, axis):
    """A unit mask along `axis` broadcast to a weight of `shape`."""
    axis = axis % len(shape)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return ops.broadcast_to(ops.reshape(keep, view), shape)


class Granularity(Configurable):
    """Base class: `weights(layer)` to mask and their `selections`."""

    pattern = False

    def weights(self, layer):
        """`[(variable, WeightSpec)]` this granularity masks in a built layer."""
        return layer_specs.prunable_weights(layer)

    def validate(self, weights, specs):
        """Raises `ValueError` for weights this granularity cannot prune."""

    def selections(self, weights, specs):
        raise NotImplementedError

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, repr(sorted(self.get_config().items()))))


def _flat_selection(index, shape):
    return Selection(
        (index,),
        (index,),
        int(np.prod(shape)),
        tuple(shape),
        lambda scores: ops.reshape(scores[0], (-1,)),
        lambda keep: [ops.reshape(keep, shape)],
        elementwise=True,
    )


@keras.saving.register_keras_serializable(package="tfprune")
class Element(Granularity):
    """Single weights."""

    def selections(self, weights, specs):
        return [_flat_selection(i, tuple(w.shape)) for i, w in enumerate(weights)]


@keras.saving.register_keras_serializable(package="tfprune")
class BlockGranularity(Granularity):
    """Rank-2 blocks of `block_size`, scored by `pooling` ("AVG" or "MAX")."""

    def __init__(self, block_size=(1, 1), pooling="AVG"):
        masking.granularity_from_args(block_size, pooling)
        self.block = masking.Block(tuple(int(b) for b in block_size), pooling)

    def validate(self, weights, specs):
        for w, spec in zip(weights, specs):
            self.block.validate(w.shape, spec.path)

    def selections(self, weights, specs):
        found = []
        for i, w in enumerate(weights):
            shape = tuple(w.shape)
            if self.block.block_size == (1, 1):
                found.append(_flat_selection(i, shape))
                continue
            bh, bw = self.block.block_size
            pooled = (-(-shape[0] // bh), -(-shape[1] // bw))
            found.append(
                Selection(
                    (i,),
                    (i,),
                    pooled[0] * pooled[1],
                    shape,
                    lambda scores: ops.reshape(self.block.pool(ops.cast(scores[0], "float32")), (-1,)),
                    lambda keep, p=pooled, s=shape: [self.block.expand(ops.reshape(keep, p), s)],
                )
            )
        return found

    def get_config(self):
        return {"block_size": tuple(self.block.block_size), "pooling": self.block.pooling}


@keras.saving.register_keras_serializable(package="tfprune")
class MByNGranularity(Granularity):
    """`m` zeros in every `n` weights along the input channel (TFLite layout)."""

    pattern = True

    def __init__(self, m=2, n=4):
        masking.granularity_from_args(sparsity_m_by_n=(m, n))
        self.m, self.n = int(m), int(n)

    def _for(self, spec):
        return masking.MByN(
            self.m,
            self.n,
            -2 if spec.in_axis is None else spec.in_axis,
            -1 if spec.out_axis is None else spec.out_axis,
        )

    def validate(self, weights, specs):
        for w, spec in zip(weights, specs):
            self._for(spec).validate(w.shape, spec.path)

    def selections(self, weights, specs):
        found = []
        for i, (w, spec) in enumerate(zip(weights, specs)):
            flat = _flat_selection(i, tuple(w.shape))
            pattern = self._for(spec)
            found.append(dataclasses.replace(flat, pattern=lambda s, p=pattern: [p(s[0], 0.0)[0]]))
        return found

    def get_config(self):
        return {"m": self.m, "n": self.n}


class _Structure(Granularity):
    """Units along one axis of each weight, reduced by `reduction`."""

    def __init__(self, reduction="mean"):
        _check_reduction(reduction)
        self.reduction = reduction

    def axis(self, weight, spec):
        raise NotImplementedError

    def weights(self, layer):
        return [
            (w, s) for w, s in layer_specs.prunable_weights(layer) if self.axis(w, s) is not None
        ]

    def _selection(self, scored, masked, weights, axes):
        size = weights[scored[0]].shape[axes[scored[0]]]
        shapes = {i: tuple(weights[i].shape) for i in masked}

        def unit_scores(scores):
            return reduce_units(scores, [axes[i] for i in scored], self.reduction)

        def expand(keep):
            return [broadcast_units(keep, shapes[i], axes[i]) for i in masked]

        return Selection(scored, masked, int(size), shapes[scored[0]], unit_scores, expand)

    def selections(self, weights, specs):
        axes = [self.axis(w, s) for w, s in zip(weights, specs)]
        return [self._selection((i,), (i,), weights, axes) for i in range(len(weights))]

    def get_config(self):
        return {"reduction": self.reduction}


def _is_bias(spec):
    return spec.in_axis is None and spec.out_axis == 0 and spec.path.endswith("bias")


@keras.saving.register_keras_serializable(package="tfprune")
class Filter(_Structure):
    """Output channels: the kernel slice and the bias entry of each channel.

    A bias is masked with its kernel when it is the holder's `bias`, has one
    entry per output channel, and no other kernel of the layer shares it (an
    LSTM cell's bias serves two kernels: it stays).
    """

    def axis(self, weight, spec):
        return spec.out_axis

    def weights(self, layer):
        found = []
        weights = layer_specs.prunable_weights_with_owners(layer)
        holders = [layer_specs.holder(owner, spec) for _, spec, owner in weights]
        for (w, spec, _), holder in zip(weights, holders):
            if spec.out_axis is None:
                continue
            found.append((w, spec))
            bias = getattr(holder, "bias", None)
            if (
                isinstance(bias, keras.Variable)
                and tuple(bias.shape) == (w.shape[spec.out_axis],)
                and sum(h is holder for h in holders) == 1
            ):
                stem = spec.path[: max(spec.path.rfind("."), spec.path.rfind("/")) + 1]
                found.append((bias, layer_specs.WeightSpec(f"{stem}bias", None, 0)))
        return found

    def selections(self, weights, specs):
        axes = [s.out_axis for s in specs]
        found = []
        for i, spec in enumerate(specs):
            if _is_bias(spec):
                continue  # selected with the kernel before it
            has_bias = i + 1 < len(specs) and _is_bias(specs[i + 1])
            masked = (i, i + 1) if has_bias else (i,)
            found.append(self._selection((i,), masked, weights, axes))
        return found


@keras.saving.register_keras_serializable(package="tfprune")
class Channel(_Structure):
    """Input channels: the kernel slice reading each input channel."""

    def axis(self, weight, spec):
        return spec.in_axis


@keras.saving.register_keras_serializable(package="tfprune")
class Row(_Structure):
    """Rows (axis 0) of rank-2 weights: for `Dense`, one input each."""

    def axis(self, weight, spec):
        return 0 if len(weight.shape) == 2 else None


@keras.saving.register_keras_serializable(package="tfprune")
class Column(_Structure):
    """Columns (axis 1) of rank-2 weights: for `Dense`, one output each."""

    def axis(self, weight, spec):
        return 1 if len(weight.shape) == 2 else None


# MultiHeadAttention's weights and the axis holding heads in each.
_HEAD_AXES = (
    ("_query_dense.kernel", 1),
    ("_key_dense.kernel", 1),
    ("_value_dense.kernel", 1),
    ("_output_dense.kernel", 0),
    ("_query_dense.bias", 0),
    ("_key_dense.bias", 0),
    ("_value_dense.bias", 0),
)


@keras.saving.register_keras_serializable(package="tfprune")
class Head(_Structure):
    """Attention heads of `keras.layers.MultiHeadAttention` (and subclasses)."""

    def weights(self, layer):
        found = []
        for owner, prefix, _ in layer_specs._walk(layer):
            if not isinstance(owner, keras.layers.MultiHeadAttention):
                continue
            for path, axis in _HEAD_AXES:
                try:
                    variable = layer_specs.resolve(owner, path)
                except AttributeError:
                    continue
                if not isinstance(variable, keras.Variable):
                    continue
                if variable.shape[axis] != owner.num_heads:
                    raise ValueError(
                        f"Layer '{owner.name}': `{path}` of shape {tuple(variable.shape)} "
                        f"has no axis of its {owner.num_heads} heads at position {axis}."
                    )
                found.append((variable, layer_specs.WeightSpec(f"{prefix}{path}", None, axis)))
        return found

    def axis(self, weight, spec):
        return spec.out_axis

    def selections(self, weights, specs):
        axes = [s.out_axis for s in specs]
        groups = {}
        for i, spec in enumerate(specs):
            suffix = next(p for p, _ in _HEAD_AXES if spec.path.endswith(p))
            groups.setdefault(spec.path[: -len(suffix)], []).append(i)
        found = []
        for members in groups.values():
            scored = tuple(i for i in members if specs[i].path.endswith("kernel"))
            masked = scored + tuple(i for i in members if i not in scored)
            found.append(self._selection(scored, masked, weights, axes))
        return found


GRANULARITIES = {
    "element": Element,
    "block": BlockGranularity,
    "m_by_n": MByNGranularity,
    "filter": Filter,
    "channel": Channel,
    "row": Row,
    "column": Column,
    "head": Head,
}


def get(identifier, block_size=None, block_pooling_type=None, sparsity_m_by_n=None):
    """A `Granularity` from its name (with its options) or an instance."""
    if isinstance(identifier, Granularity):
        return identifier
    if identifier == "block":
        return BlockGranularity(block_size or (1, 1), block_pooling_type or "AVG")
    if identifier == "m_by_n":
        return MByNGranularity(*(sparsity_m_by_n or (2, 4)))
    if isinstance(identifier, str) and identifier in GRANULARITIES:
        return GRANULARITIES[identifier]()
    raise ValueError(
        f"Argument `granularity` must be one of {sorted(GRANULARITIES)} or a "
        f"`tfprune.granularity.Granularity` instance. Received: granularity={identifier!r}"
    )


def from_tfmot_args(block_size=(1, 1), block_pooling_type="AVG", sparsity_m_by_n=None):
    """The granularity TFMOT's `prune_low_magnitude` arguments name."""
    legacy = masking.granularity_from_args(block_size, block_pooling_type, sparsity_m_by_n)
    if isinstance(legacy, masking.MByN):
        return MByNGranularity(legacy.m, legacy.n)
    if isinstance(legacy, masking.Block):
        return BlockGranularity(legacy.block_size, legacy.pooling)
    return Element()
