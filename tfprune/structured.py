"""Channel pruning that follows the dependency graph (`tfprune.graph`).

With `granularity="filter"` (or `"channel"`) on a Sequential or Functional
model, `tfprune.prune` masks *coupled groups*: removing channel `c` masks
the producers' kernel slices and biases, the normalizations' scale and
shift (so the channel is exactly zero after them), the depthwise kernels it
passes through and the input slices of every layer reading it, including
everything tied to it by residual merges, concatenations and squeeze-excite
multiplies. The masked model computes what `tfprune.thin` will return.

A unit's score reduces (`reduction`, default mean) the criterion's scores
of every element of every weight slice the unit masks. Budgets:

- `budget="channels"` with `scope="layer"`: each group removes the
  schedule's fraction of its channels; with `scope="global"`, that fraction
  of all channels, ranked across groups.
- `budget="flops"` / `"params"`: the schedule's sparsity is the fraction of
  the model's FLOPs (parameters) to remove; units are ranked globally and
  removed lowest first until the cost, counted through the graph (removing
  a channel also shrinks its consumers), reaches the target.

`round_to=8` keeps each group's channel count a multiple of 8 (rounded up);
`max_sparsity` / `min_sparsity` (per producer layer name) bound what a group
loses; every group keeps at least one channel.

Example:
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(8, 3, name="conv")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> y = keras.layers.GlobalAveragePooling2D()(y)
>>> model = keras.Model(x, keras.layers.Dense(2, name="head")(y))
>>> import tfprune
>>> pruned = tfprune.prune(model, None, granularity="filter")
>>> tfprune.update_masks(pruned, 0.5)
>>> tfprune.thin(pruned).get_layer("conv").filters
4
"""

import numbers

import keras
import numpy as np
from keras import ops

from tfprune import backend, checks, selection
from tfprune import graph as graph_lib
from tfprune import layers as layer_specs
from tfprune import schedules as schedules_lib
from tfprune.granularity import Granularity, _check_reduction

BUDGETS = ("channels", "flops", "params")
_CARRY = {"moving_mean", "moving_variance"}


@keras.saving.register_keras_serializable(package="tfprune")
class Coupled(Granularity):
    """Channels of coupled groups, across layers (see the module docstring).

    Args:
        kind: `"filter"` or `"channel"` (the same units in a graph: a
            channel is removed with its producers and its readers).
        reduction: `"mean"`, `"sum"`, `"max"` or `"l2"` over a unit's elements.
        budget: `"channels"`, `"flops"` or `"params"`.
        round_to: keep each group's channel count a multiple of this.
    """

    def __init__(
        self, kind="filter", reduction="mean", budget="channels", round_to=None, excluded=()
    ):
        if kind not in ("filter", "channel"):
            raise ValueError(f"Argument `kind` must be 'filter' or 'channel'. Received: kind={kind!r}")
        _check_reduction(reduction)
        if budget not in BUDGETS:
            raise ValueError(f"Argument `budget` must be one of {BUDGETS}. Received: budget={budget!r}")
        if round_to is not None and (
            isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1
        ):
            raise ValueError(
                f"Argument `round_to` must be a positive int or None. Received: round_to={round_to!r}"
            )
        round_to = None if round_to is None else int(round_to)
        self.kind, self.reduction, self.budget, self.round_to = kind, reduction, budget, round_to
        # producers left out by `layers=`: their channels stay
        self.excluded = tuple(sorted(str(n) for n in excluded))

    def selects(self, layer):
        return layer.name not in self.excluded

    def weights(self, layer):
        """Every float weight of the layer but normalization statistics.

        Each gets the axis of the layer's output channels where it has one
        (activation criteria broadcast their per-channel statistic along it).
        """
        found = []
        paths = _weight_paths(layer)
        out_axes = _output_axes(layer)
        for variable in layer.weights:
            path = paths.get(id(variable))
            if path is None or path.split(".")[-1] in _CARRY:
                continue
            if not keras.backend.is_float_dtype(variable.dtype):
                continue
            out_axis = out_axes.get(id(variable), 0 if len(variable.shape) == 1 else None)
            found.append((variable, layer_specs.WeightSpec(path, None, out_axis)))
        return found

    def selections(self, weights, specs):
        return []  # decided across layers by `compute`

    def get_config(self):
        return {
            "kind": self.kind,
            "reduction": self.reduction,
            "budget": self.budget,
            "round_to": self.round_to,
            "excluded": list(self.excluded),
        }


def _output_axes(layer):
    """`{id(variable): axis of the layer's output channels}` for its kernels."""
    axes = {}
    if isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)):
        if layer.depth_multiplier == 1:
            axes[id(layer.kernel)] = -2
        return axes
    for spec in layer_specs.describe(layer) or ():
        try:
            variable = layer_specs.resolve(layer, spec.path)
        except AttributeError:
            continue
        if spec.out_axis is not None:
            axes[id(variable)] = spec.out_axis
    return axes


def _weight_paths(layer):
    """`{id(variable): attribute path}` for the weights of `layer` (one level
    of sublayers: `_query_dense.kernel`, `cell.kernel`)."""
    paths = {}
    for name, value in backend.attributes(layer):
        if isinstance(value, keras.Variable):
            paths.setdefault(id(value), name)
    for name, sub in backend.attributes(layer):
        if isinstance(sub, keras.layers.Layer):
            for attr, value in backend.attributes(sub):
                if isinstance(value, keras.Variable):
                    paths.setdefault(id(value), f"{name}.{attr}")
    return paths


# ------------------------------------------------------------------ binding
class Binding:
    """The structure of one pruned model, as the pruner's compute reads it."""

    def __init__(
        self,
        structure,
        granularity,
        min_sparsity=None,
        max_sparsity=None,
        wrapped=None,
        scored=(),
        criterion=None,
    ):
        self.structure = structure
        self.size = structure.size
        self.eligible = structure.prunable.copy()
        if wrapped is not None:
            # A channel touching a layer this pruner does not mask (frozen,
            # or left out by a pruning policy) stays.
            for name, members in structure.members.items():
                if name not in wrapped:
                    for m in members:
                        if m.role != "carry":
                            self.eligible[m.units] = False
        self.axes = weight_axes(structure)
        if scored:  # wrappers the criterion scores: a channel it gives no score stays
            self.eligible &= ranked_units(self.size, self.axes, scored, criterion)

        self.groups = []  # (start, stop, eligible count, fixed count, low, high)
        for g in structure.groups:
            start, stop = int(g.units.min()), int(g.units.max()) + 1
            eligible = int(self.eligible[start:stop].sum())
            if not eligible:
                continue
            high = _cap(max_sparsity, g.producers, min)
            low = _cap(min_sparsity, g.producers, max)
            self.groups.append((start, stop, eligible, (stop - start) - eligible, low, high))
        self.round_to = granularity.round_to
        self.budget = granularity.budget
        if self.budget != "channels":
            self._cost_tables(self.budget)

    def _cost_tables(self, kind):
        terms = self.structure.costs[kind]
        flat, space_ids, a, b, coef = [], [], [], [], []
        n_spaces = 0
        for t in terms:
            ids = []
            for space in t.spaces:
                flat.append(space)
                space_ids.append(np.full(len(space), n_spaces))
                ids.append(n_spaces)
                n_spaces += 1
            if len(ids) > 2:
                raise AssertionError("cost terms have at most two channel spaces")
            ids += [-1] * (2 - len(ids))
            a.append(ids[0])
            b.append(ids[1])
            coef.append(t.coefficient)
        self.cost_units = np.concatenate(flat).astype("int32") if flat else np.zeros(0, "int32")
        self.cost_spaces = np.concatenate(space_ids).astype("int32") if flat else self.cost_units
        self.n_spaces = n_spaces
        # index n_spaces holds the count 1 (terms with fewer spaces)
        self.cost_a = np.where(np.array(a) < 0, n_spaces, a).astype("int32")
        self.cost_b = np.where(np.array(b) < 0, n_spaces, b).astype("int32")
        self.cost_coef = np.array(coef, dtype="float64")
        self.full_cost = float(self.structure.count(kind))
        # With `round_to`, costs are taken from per-group kept counts: a space
        # holds a fixed share of each group's units.
        unit_group = self.structure.unit_group
        n_groups = len(self.structure.groups)
        share = np.zeros((n_spaces, n_groups), dtype=np.float64)
        for s, space in enumerate(flat):
            np.add.at(share[s], unit_group[space], 1.0)
        group_sizes = np.array([g.size for g in self.structure.groups], dtype=np.float64)
        self.space_share = (share / group_sizes).astype("float32")
        self.unit_group = unit_group.astype("int32")
        self.n_groups = n_groups
        self.group_sizes = group_sizes.astype("float32")
        self.roundable = np.zeros(n_groups, dtype=bool)
        for g in range(n_groups):
            self.roundable[g] = bool(self.eligible[self.structure.groups[g].units].any())

    def cost(self, keep):
        """The budget's cost with the units `keep` kept (traceable), as a
        fraction of the full cost; with `round_to`, of each group's kept
        count rounded up."""
        if self.round_to:
            kept = ops.segment_sum(
                ops.cast(keep, "float32"), self.unit_group, num_segments=self.n_groups
            )
            rounded = ops.minimum(ops.ceil(kept / self.round_to) * self.round_to, self.group_sizes)
            kept = ops.where(self.roundable, rounded, kept)
            counts = ops.matmul(ops.convert_to_tensor(self.space_share), kept)
        else:
            kept = ops.take(ops.cast(keep, "float32"), self.cost_units)
            counts = ops.segment_sum(kept, self.cost_spaces, num_segments=self.n_spaces)
        counts = ops.concatenate([counts, ops.ones((1,), "float32")])
        # in float32, relative to the full cost, so that large models stay exact enough
        scale = np.float32(1.0 / max(self.full_cost, 1.0))
        coef = ops.convert_to_tensor((self.cost_coef * scale).astype("float32"))
        return ops.sum(coef * ops.take(counts, self.cost_a) * ops.take(counts, self.cost_b))

    def forced_counts(self):
        """How many units each group keeps whatever the budget: its best one,
        or what its `max_sparsity` keeps (>= 1)."""
        return [
            1 if high is None else selection.keep_count(eligible, high)
            for _, _, eligible, _, _, high in self.groups
        ]

    def least_cost(self):
        """The smallest fraction of the budget's cost a selection reaches:
        every eligible unit removed but each group's best (or what its
        `max_sparsity` keeps), rounded up to `round_to`."""
        keep = ~self.eligible
        for (start, stop, *_), count in zip(self.groups, self.forced_counts()):
            keep[np.flatnonzero(self.eligible[start:stop])[:count] + start] = True
        return float(ops.convert_to_numpy(self.cost(keep)))


def warn_if_out_of_reach(binding, sparsity, source):
    """Warns when a FLOPs/params `sparsity` asks for more than removing every
    removable unit gives (`source` names where the sparsity came from)."""
    if binding.budget == "channels" or sparsity is None:
        return
    least = binding.least_cost()
    if 1.0 - float(sparsity) < least - 1e-6:
        checks.warn_user(
            f"budget={binding.budget!r} cannot reach {source}={float(sparsity):g}: removing "
            f"every removable channel leaves {least:.1%} of the model's {binding.budget} "
            "(the channels that must stay: model inputs and outputs, layers left out, each "
            "group's best, `max_sparsity`). Pruning removes every removable channel instead."
        )


def _cap(value, producers, pick):
    if value is None:
        return None
    if isinstance(value, dict):
        found = [float(value[p]) for p in producers if p in value]
        return pick(found) if found else None
    return float(value)


def weight_axes(structure):
    """`{layer name: {id(variable): [(axis, units, role)]}}`: where each unit
    lies in the weights it masks."""
    axes = {}
    for name, members in structure.members.items():
        layer = structure.layers[name]
        for m in members:
            if m.role == "carry":
                continue
            variable = layer_specs.resolve(layer, m.path)
            axes.setdefault(name, {}).setdefault(id(variable), []).append(
                (m.axis, m.units.astype("int32"), m.role)
            )
    return axes


def _scored_slices(axes, members, criterion):
    """`(variable, score, axis, units)` of each weight slice whose elements
    the criterion scores (activation statistics: the slices a layer writes)."""
    for m in members:
        scores = criterion.scores(m._scoring_values(), m._criterion_state)
        layer_axes = axes.get(m.layer.name, {})
        for (variable, _, _), score in zip(m.pruning_vars, scores):
            if score is None:  # a weight the criterion does not score
                continue
            for axis, units, role in layer_axes.get(id(variable), []):
                if not criterion.needs_outputs or role == "write":
                    yield variable, score, axis, units


def ranked_units(size, axes, members, criterion):
    """Which of `size` units some scored weight slice covers. A criterion may
    score a few weights only (`"bn_scale"`: normalizations' scales), and a
    channel with no score would be ranked by its position: it stays."""
    ranked = np.zeros(size, dtype=bool)
    for *_, units in _scored_slices(axes, members, criterion):
        ranked[units] = True
    return ranked


def bind(pruner, model):
    """Builds the pruner's coupled structure from the (wrapped) model."""
    structure = graph_lib.build(model, pruner.granularity.selects)
    wrapped = {m.layer.name for m in pruner.members} if pruner.members else None
    members = [m for m in pruner.members if m._state_built]
    pruner.binding = Binding(
        structure, pruner.granularity, pruner.min_sparsity, pruner.max_sparsity, wrapped,
        members, pruner.criterion,
    )  # fmt: skip
    final = schedules_lib.final_sparsity(pruner.pruning_schedule)  # None without a schedule
    warn_if_out_of_reach(pruner.binding, final, "the schedule's final sparsity")
    return pruner.binding


def bind_model(model, wrappers):
    """Binds every coupled pruner of `wrappers` that has no structure yet."""
    for pruner in {id(w.pruner): w.pruner for w in wrappers}.values():
        if isinstance(pruner.granularity, Coupled) and getattr(pruner, "binding", None) is None:
            bind(pruner, model)


def wrapped_layer_names(structure):
    """Layers with a masked weight slice in a prunable unit."""
    return {
        name
        for name, members in structure.members.items()
        if any(m.role != "carry" and structure.prunable[m.units].any() for m in members)
    }


def producers(structure):
    return sorted({layer for layer, _, _ in structure.positions})


# ------------------------------------------------------------------ compute
def unit_scores(binding, members, criterion, reduction):
    """One score per unit: `reduction` over the scores of all its elements.

    Activation statistics describe the channels a layer writes, so with an
    activation criterion only the writing slices count.
    """
    n = binding.size
    total = ops.zeros((n,), "float32")
    counts = np.zeros(n, dtype=np.float64)  # elements behind each unit's score
    for variable, score, axis, units in _scored_slices(binding.axes, members, criterion):
        shape = tuple(variable.shape)
        score = ops.broadcast_to(ops.cast(score, "float32"), shape)
        axis = axis % len(shape)
        np.add.at(counts, units, int(np.prod(shape)) // shape[axis])
        other = tuple(a for a in range(len(score.shape)) if a != axis)
        if reduction == "max":
            vec = ops.max(score, axis=other) if other else score
            total = ops.maximum(total, ops.segment_max(vec, units, num_segments=n))
            continue
        if reduction == "l2":
            score = ops.square(score)
        vec = ops.sum(score, axis=other) if other else score
        total = total + ops.segment_sum(vec, units, num_segments=n)
    if reduction == "mean":
        return ops.divide(total, ops.convert_to_tensor(np.maximum(counts, 1.0).astype("float32")))
    if reduction == "l2":
        return ops.sqrt(total)
    return total


def _group_keep_counts(binding, sparsity):
    """Units each group keeps (of its eligible ones) at a layer-wise sparsity."""
    counts = []
    for _, _, eligible, _, low, high in binding.groups:
        s = ops.cast(sparsity, "float32")
        if low is not None or high is not None:
            s = ops.clip(s, 0.0 if low is None else low, 0.999999 if high is None else high)
        counts.append(selection.keep_count(eligible, s))
    return counts


def _rounded(binding, counts):
    if not binding.round_to:
        return counts
    r = binding.round_to
    out = []
    for k, (_, _, eligible, fixed, _, _) in zip(counts, binding.groups):
        total = ops.cast(k, "int32") + fixed
        total = ((total + r - 1) // r) * r
        out.append(ops.minimum(ops.maximum(total - fixed, 1), eligible))
    return out


def _per_group_top_k(binding, scores, counts):
    keep = ops.logical_not(ops.convert_to_tensor(binding.eligible))
    pieces, cursor = [], 0
    for (start, stop, _, _, _, _), k in zip(binding.groups, counts):
        if start > cursor:
            pieces.append(keep[cursor:start])
        eligible = ops.convert_to_tensor(binding.eligible[start:stop])
        chosen, _ = selection.top_k_mask(scores[start:stop], ops.maximum(k, 1), eligible)
        pieces.append(ops.logical_or(chosen, keep[start:stop]))
        cursor = stop
    if cursor < binding.size:
        pieces.append(keep[cursor:])
    return ops.concatenate(pieces)


def _group_sums(binding, keep):
    return [
        ops.sum(ops.cast(ops.logical_and(keep[a:b], binding.eligible[a:b]), "int32"))
        for a, b, *_ in binding.groups
    ]


def _forced(binding, scores):
    """Units kept whatever the budget: each group's best, and `max_sparsity`."""
    return _per_group_top_k(binding, scores, binding.forced_counts())


def _allowed(binding, scores):
    """Units a cross-layer selection may keep: of a group with a
    `min_sparsity`, its best `keep_count(eligible, min_sparsity)`; all others."""
    counts = [
        eligible if low is None else selection.keep_count(eligible, low)
        for _, _, eligible, _, low, _ in binding.groups
    ]
    return _per_group_top_k(binding, scores, counts)


def select(binding, scores, sparsity, per_layer):
    """The boolean keep vector over all units."""
    scores = selection.non_negative(scores)
    if binding.budget == "channels" and per_layer:
        counts = _rounded(binding, _group_keep_counts(binding, sparsity))
        return _per_group_top_k(binding, scores, counts)
    forced = _forced(binding, scores)
    eligible = ops.logical_and(binding.eligible, ops.logical_not(forced))
    permitted = None  # under `min_sparsity`: the most a group may keep
    if any(low is not None for *_, low, _ in binding.groups):
        permitted = ops.logical_or(_allowed(binding, scores), forced)
        eligible = ops.logical_and(eligible, permitted)
    if binding.budget == "channels":
        total = selection.keep_count(int(binding.eligible.sum()), sparsity)
        room = total - ops.sum(ops.cast(ops.logical_and(forced, binding.eligible), "int32"))
        chosen, _ = selection.top_k_mask(scores, room, eligible)
        keep = ops.logical_or(ops.logical_or(chosen, forced), ~binding.eligible)
    else:
        keep = _keep_by_cost(binding, scores, eligible, sparsity, permitted)
    if binding.round_to:
        keep = _per_group_top_k(binding, scores, _rounded(binding, _group_sums(binding, keep)))
    return keep


def _keep_by_cost(binding, scores, removable, sparsity, permitted=None):
    """Removes the lowest-scoring units until the cost falls to `1 - sparsity`
    of the full cost: a binary search on the score threshold's bit pattern.
    Units outside `permitted` (a boolean vector) are removed first; a target
    no removal reaches removes every removable unit."""
    bits = ops.view(ops.cast(scores, "float32"), "int32")
    target = 1.0 - ops.cast(sparsity, "float32")

    def keep_at(threshold):  # removes removable units scoring below `threshold`
        keep = ops.logical_not(ops.logical_and(removable, ops.less(bits, threshold)))
        return keep if permitted is None else ops.logical_and(keep, permitted)

    def enough(threshold):
        return ops.less_equal(binding.cost(keep_at(threshold)), target)

    below = ops.convert_to_tensor(0, "int32")  # the largest threshold not enough
    for bit in range(30, -1, -1):
        candidate = ops.bitwise_or(below, 1 << bit)
        below = ops.where(enough(candidate), below, candidate)
    # A target beyond reach (the channels that must stay cost more) leaves
    # `below` at the top: every removable unit goes, as close as it gets.
    top = np.int32(2**31 - 1)
    above = ops.minimum(below, top - 1) + 1
    threshold = ops.where(enough(ops.convert_to_tensor(0, "int32")), 0, above)
    return keep_at(threshold)


def masks(binding, members, keep):
    """`[(mask variable, value)]` of every member wrapper's weights."""
    updates = []
    for m in members:
        axes = binding.axes.get(m.layer.name, {})
        for variable, mask_var, threshold_var in m.pruning_vars:
            shape = tuple(variable.shape)
            mask = ops.ones(shape, "bool")
            for axis, units, _ in axes.get(id(variable), []):
                axis = axis % len(shape)
                view = [1] * len(shape)
                view[axis] = shape[axis]
                kept = ops.reshape(ops.take(keep, units), view)
                mask = ops.logical_and(mask, ops.broadcast_to(kept, shape))
            updates.append((mask_var, mask))
            updates.append((threshold_var, ops.convert_to_tensor(0.0, "float32")))
    return updates


def compute(pruner, members, sparsity):
    """The pruner's new masks for coupled channels (all members at once)."""
    binding = getattr(pruner, "binding", None)
    if binding is None:
        raise ValueError(
            "This channel pruner has no dependency graph yet: train with "
            "`tfprune.UpdatePruningStep()` or call `tfprune.update_masks(model, ...)`, "
            "which build it from the model."
        )
    scores = unit_scores(binding, members, pruner.criterion, pruner.granularity.reduction)
    keep = select(binding, scores, sparsity, pruner.scope.per_layer)
    updates = masks(binding, members, keep)
    for m in members:
        updates += pruner.criterion.reset(m._criterion_state)
    return updates
