"""The pruner: the decision of which weights, how many and when.

A `Pruner` composes the engine's pieces for one model:

    step ──► schedule ──► (should_prune, target)
    weights / gradients / activations ──► criterion ──► scores
    scores ──► granularity ──► unit scores per selection
    unit scores, target ──► scope ──► which units are kept ──► masks

The pruning wrappers (`PruneLowMagnitude`) hold the state (masks,
thresholds, step, the criterion's accumulators) and apply it; the pruner
computes new values for that state at pruning steps. Every wrapper created
by one `tfprune.prune` call shares one pruner (its `group`): a layer-wise
scope updates each wrapper at its own call, a cross-layer scope (`"global"`,
`"lamp"`, `"erk"`) updates all of them at once, on the first wrapper's call
of the step, from every layer's scores.

Example:
>>> pruner = Pruner(ConstantSparsity(0.5, 0), criterion="magnitude", scope="global")
>>> pruner.scope
Global()
"""

import collections
import functools
import uuid
import weakref

import keras
import numpy as np
from keras import ops

from tfprune import allocation, backend, scoring, selection, structured
from tfprune import granularity as granularity_lib
from tfprune import schedules as schedules_lib
from tfprune.schedules import ConstantSparsity  # noqa: F401 (docstring example)

try:  # reading float32 weights inside a mixed-precision call
    from keras.src.backend import AutocastScope as _AutocastScope
except ImportError:  # pragma: no cover
    from keras.src.backend.common.variables import AutocastScope as _AutocastScope

SelectionInfo = collections.namedtuple("SelectionInfo", ["layer", "shape", "size"])


@keras.saving.register_keras_serializable(package="tfprune")
class Pruner:
    """Which weights are pruned, how many and when, for one model.

    Args:
        pruning_schedule: a `PruningSchedule` (when and how much), or None:
            masks change only when `tfprune.update_masks` is called.
        criterion: `"magnitude"`, `"random"`, `"taylor"`, `"movement"`,
            `"apoz"`, `"activation_mean"` or a `tfprune.Criterion`.
        granularity: `"element"`, `"block"`, `"m_by_n"`, `"filter"`,
            `"channel"`, `"row"`, `"column"`, `"head"` or a `Granularity`.
        scope: `"layer"`, `"global"`, `"lamp"`, `"erk"`, a `{layer name:
            sparsity}` dict, or a `Scope` (e.g. `SensitivityThreshold`).
        min_sparsity: a float, or `{layer name: float}`: each layer prunes at
            least this much.
        max_sparsity: likewise, at most this much. Every weight keeps at
            least one unit.
        group: the name shared by the wrappers of one pruner (generated).
    """

    def __init__(
        self,
        pruning_schedule,
        criterion="magnitude",
        granularity="element",
        scope="layer",
        *,
        min_sparsity=None,
        max_sparsity=None,
        group=None,
    ):
        self.pruning_schedule = (
            None if pruning_schedule is None else schedules_lib.get(pruning_schedule)
        )
        self.criterion = scoring.get(criterion)
        self.granularity = granularity_lib.get(granularity)
        self.scope = allocation.get(scope)
        self.min_sparsity = (
            None if min_sparsity is None else allocation.per_layer("min_sparsity", min_sparsity)
        )
        self.max_sparsity = (
            None if max_sparsity is None else allocation.per_layer("max_sparsity", max_sparsity)
        )
        self._check_combination()
        self._check_bounds()
        self.group = group or f"pruner_{uuid.uuid4().hex[:12]}"
        self.members = []
        self._last_token = None
        # prune_low_magnitude keeps every score tied at the threshold (TFMOT);
        # the engine keeps exactly k, ties broken by position.
        self.keep_ties = False

    @property
    def cross_layer(self):
        """Whether every member is updated at once (from all layers' scores)."""
        return not self.scope.per_layer or isinstance(self.granularity, structured.Coupled)

    def _check_bounds(self):
        """`min_sparsity` at most `max_sparsity`, for every layer both name."""
        low, high = self.min_sparsity, self.max_sparsity
        if low is None or high is None:
            return
        names = {*(low if isinstance(low, dict) else ()), *(high if isinstance(high, dict) else ())}
        for name in names or {None}:
            a, b = allocation.for_layer(low, name), allocation.for_layer(high, name)
            if a is not None and b is not None and a > b:
                where = "" if name is None else f" for layer {name!r}"
                raise ValueError(
                    f"`min_sparsity` must not exceed `max_sparsity`{where}. "
                    f"Received: min_sparsity={low!r}, max_sparsity={high!r}"
                )

    def _check_combination(self):
        kind = self.scope.kind
        if isinstance(self.criterion, scoring.BatchNormScale) and not isinstance(
            self.granularity, structured.Coupled
        ):
            raise ValueError(
                "Criterion 'bn_scale' ranks channels by the BatchNormalization scales they "
                "pass through, so it takes granularity='filter' or 'channel' on a "
                f"Sequential or Functional model. Received: granularity={self.granularity!r}"
            )
        if isinstance(self.criterion, scoring._ChannelStatistic) and isinstance(
            self.granularity,
            (granularity_lib.Channel, granularity_lib.Row, granularity_lib.MByNGranularity),
        ):
            raise ValueError(
                f"Criterion {self.criterion!r} scores a layer's output channels, and the units "
                f"of granularity={self.granularity!r} lie along its inputs: every unit would "
                "score the same. Use granularity 'element', 'block', 'filter' or 'column'."
            )
        if isinstance(self.granularity, structured.Coupled) and type(self.scope) not in (
            allocation.LayerWise,
            allocation.Global,
        ):
            raise ValueError(
                "Channels of coupled groups take scope='layer' (each group prunes the "
                "schedule's fraction) or scope='global' (one ranking over all groups). "
                f"Received: scope={self.scope!r}"
            )
        if self.granularity.pattern and not isinstance(self.scope, allocation.LayerWise):
            raise ValueError(
                f"Granularity {self.granularity!r} fixes the sparsity of every weight, "
                f"so it takes scope='layer' only. Received: scope={self.scope!r}"
            )
        if kind == "threshold":
            if not isinstance(self.granularity, granularity_lib.Element) or not isinstance(
                self.criterion, scoring.Magnitude
            ):
                raise ValueError(
                    f"Scope {self.scope!r} thresholds weight magnitudes, so it takes "
                    "criterion='magnitude' and granularity='element'. Received: "
                    f"criterion={self.criterion!r}, granularity={self.granularity!r}"
                )
            if self.min_sparsity is not None or self.max_sparsity is not None:
                raise ValueError(
                    f"Scope {self.scope!r} sets no sparsity, so `min_sparsity` and "
                    "`max_sparsity` do not apply. Received: "
                    f"min_sparsity={self.min_sparsity!r}, max_sparsity={self.max_sparsity!r}"
                )
        if (
            isinstance(self.scope, allocation.Explicit)
            and self.pruning_schedule is not None
            and not schedules_lib.final_sparsity(self.pruning_schedule)
        ):
            raise ValueError(
                "A `{layer name: sparsity}` scope follows the schedule's shape up to "
                "its final sparsity, which this schedule does not state (no "
                "`final_sparsity` or `target_sparsity` > 0). Received: "
                f"pruning_schedule={self.pruning_schedule!r}"
            )

    # ------------------------------------------------------------ the layers
    def applies_to(self, layer):
        """Whether a built `layer` has weights this pruner would mask."""
        if self.scope.layer_names is not None and layer.name not in self.scope.layer_names:
            return False
        return bool(self.granularity.weights(layer))

    def weights(self, layer):
        """`[(variable, WeightSpec)]` the wrapper of `layer` masks."""
        return self.granularity.weights(layer)

    def validate(self, weights, specs):
        """Raises if the granularity's structure or the criterion's needs do
        not fit these weights."""
        self.granularity.validate(weights, specs)
        self.criterion.check(weights, specs)

    def check(self, layer):
        """Raises, for a built `layer`, what building its wrapper would."""
        found = self.granularity.weights(layer)
        self.validate([w for w, _ in found], [s for _, s in found])

    def build_state(self, wrapper, weights, specs):
        """Validates the weights and creates the wrapper's criterion state."""
        self.validate(weights, specs)

        def add_weight(name, shape, initializer):
            return wrapper.add_weight(
                name=name,
                shape=tuple(shape),
                initializer=initializer,
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )

        state = self.criterion.build(add_weight, weights, specs)
        selections = self.granularity.selections(weights, specs)
        sigmas = []
        if self.scope.kind == "threshold":
            # sigma of each weight, measured at the first pruning step (-1: not yet)
            sigmas = [
                add_weight(f"{specs[s.scored[0]].name}_sigma", (), keras.initializers.Constant(-1.0))
                for s in selections
            ]
        return state, selections, sigmas

    # ------------------------------------------------------------ each step
    def decision(self, step):
        """`(should_prune, target sparsity)` at `step` (int or tensor)."""
        if self.pruning_schedule is None:
            if isinstance(step, int):
                return False, 0.0
            return ops.convert_to_tensor(False), ops.convert_to_tensor(0.0, "float32")
        if self.granularity.pattern:  # the N:M pattern is chosen once
            first = self._pattern_step
            if isinstance(step, int):
                return step == first, 0.0
            return ops.equal(step, first), ops.convert_to_tensor(0.0, "float32")
        return self.pruning_schedule(step)

    def next_update(self, step):
        """The first step `>= step` whose `decision` updates the masks, -1 if
        none, or None when only asking `decision` at each step can tell."""
        if self.pruning_schedule is None:
            return -1
        if self.granularity.pattern:
            return self._pattern_step if step <= self._pattern_step else -1
        next_step = getattr(self.pruning_schedule, "_next_pruning_step", None)
        return None if next_step is None else next_step(step)

    @property
    def _pattern_step(self):
        """The one step at which an N:M pattern is chosen: the schedule's
        first, once the criterion has the statistics it ranks by."""
        begin = int(getattr(self.pruning_schedule, "begin_step", 1))
        return max(1, begin, 1 + self.criterion.steps_before_ready)

    def _members_for(self, wrapper):
        """The wrappers to update at this call: itself, or all once per step."""
        if not self.cross_layer:
            return [wrapper]
        token = wrapper._step_token()
        if self._last_token is not None and self._last_token() is token:
            return None
        try:
            self._last_token = weakref.ref(token)
        except TypeError:  # pragma: no cover
            self._last_token = None
        members = [m for m in (self.members or [wrapper]) if m._state_built]
        return members if wrapper in members else [wrapper]

    def on_step(self, wrapper, due=False):
        """Called by a wrapper at each training step: updates masks when due.

        `due=True`: the host has asked the schedule, and this compiled step
        updates the masks without a branch (`tfprune.updater`).
        """
        members = self._members_for(wrapper)
        if not members:
            return
        if wrapper._host_step is not None and not due:
            # The host counted the step: the schedule answers in NumPy.
            should_prune, sparsity = self.decision(wrapper._host_step)
            if bool(should_prune) and bool(self._ready(members)):
                assign(self.compute(members, sparsity))
            return
        step = ops.convert_to_tensor(wrapper.pruning_step)
        should_prune, sparsity = self.decision(step)
        ready = self._ready(members)
        if due and ready is True:
            assign(self.compute(members, sparsity))
            return
        should_prune = ops.logical_and(
            ops.convert_to_tensor(True if due else should_prune), ops.convert_to_tensor(ready)
        )
        variables = self.updated_variables(members)

        def new_values():
            values = dict((id(v), value) for v, value in self.compute(members, sparsity))
            return [values[id(v)] for v in variables]

        def old_values():
            return [backend.read(v) for v in variables]

        if not backend.branches_may_assign():
            # Select the new values in the branch, assign after it.
            assign(list(zip(variables, ops.cond(should_prune, new_values, old_values))))
        else:
            # Assign inside the branch: steps without an update copy nothing.
            def update():
                assign(list(zip(variables, new_values())))
                return ops.convert_to_tensor(True)

            ops.cond(should_prune, update, lambda: ops.convert_to_tensor(False))

    def _ready(self, members):
        ready = [self.criterion.ready(m._criterion_state) for m in members]
        if all(r is True for r in ready):
            return True
        return ops.all(ops.stack([ops.convert_to_tensor(r) for r in ready]))

    def observe(self, wrapper, outputs, training):
        """Updates the criterion's statistics after a call of the layer.

        Gradient statistics are taken in training calls only; activation
        statistics also while `collect_statistics` runs.
        """
        criterion = self.criterion
        if not (criterion.needs_gradients or criterion.needs_outputs):
            return
        if criterion.needs_gradients and not training:
            return
        gradients = None
        if criterion.needs_gradients:
            if not wrapper._probes:
                return
            gradients = [backend.read(p) for p in wrapper._probes]
        if criterion.needs_outputs:
            outputs = keras.tree.flatten(outputs)[0]
        with _AutocastScope(None):
            weights = wrapper._scoring_values()
            assign(criterion.update(wrapper._criterion_state, weights, gradients, outputs))

    # -------------------------------------------------------- the new state
    def updated_variables(self, members):
        """Every variable `compute` assigns, in its order."""
        found = []
        for m in members:
            found += [mask for _, mask, _ in m.pruning_vars]
            found += [t for _, _, t in m.pruning_vars]
            found += [v for v, _ in self.criterion.reset(m._criterion_state)]
            found += list(m._sigmas)
        return found

    def compute(self, members, sparsity):
        """`[(variable, new value)]`: masks, thresholds and reset statistics."""
        if isinstance(self.granularity, structured.Coupled):
            with _AutocastScope(None):
                return structured.compute(self, members, sparsity)
        updates = []
        with _AutocastScope(None):
            entries = []  # (wrapper, selection index, selection, its scores)
            for m in members:
                member_scores = _MemberScores(self.criterion, m)
                entries += [(m, j, sel, member_scores) for j, sel in enumerate(m._selections)]
            if self.granularity.pattern:
                keeps = None
            else:
                units = [scores.units(sel) for _, _, sel, scores in entries]
                keeps, thresholds, sigma_updates = self._select(entries, units, sparsity)
            for n, (m, _, sel, scores) in enumerate(entries):
                if keeps is None:
                    masks = sel.pattern([scores.scores[i] for i in sel.scored])
                    threshold = ops.convert_to_tensor(0.0, "float32")
                else:
                    masks = sel.expand(keeps[n])
                    threshold = thresholds[n]
                for i, mask in zip(sel.masked, masks):
                    _, mask_var, threshold_var = m.pruning_vars[i]
                    updates.append((mask_var, ops.cast(mask, "bool")))
                    updates.append((threshold_var, ops.reshape(ops.cast(threshold, "float32"), ())))
        if keeps is not None:
            updates += sigma_updates
        for m in members:
            updates += self.criterion.reset(m._criterion_state)
        return updates

    def _select(self, entries, units, sparsity):
        """Which units each selection keeps: `(keeps, thresholds, sigma updates)`."""
        kind = self.scope.kind
        infos = [
            SelectionInfo(m.layer.name, sel.shape, sel.size) for m, _, sel, _ in entries
        ]
        if kind != "budget":  # thresholds and global rankings read tensors
            units = [_as_tensor(u) for u in units]
        if kind == "threshold":
            return self._select_by_threshold(entries, units, infos)
        if self.criterion.signed:
            units = self._non_negative(units)
        units = [_pruned_lowest(entry, u) for entry, u in zip(entries, units)]
        if kind == "ranking":
            keeps, threshold = self._select_globally(units, infos, sparsity)
            return keeps, [threshold] * len(units), []
        final = schedules_lib.final_sparsity(self.pruning_schedule)
        keeps, thresholds = [], []
        for u, info, s in zip(units, infos, self.scope.sparsities(infos, sparsity, final)):
            s = self._capped(s, info.layer)
            if self.keep_ties:  # TFMOT's rule: every score at the threshold stays
                keep, threshold = selection.threshold_mask(u, s)
            else:
                keep, threshold = selection.top_k_mask(u, selection.keep_count(info.size, s))
            keeps.append(keep)
            thresholds.append(threshold)
        return keeps, thresholds, []

    def _non_negative(self, units):
        if self.scope.per_layer:
            return [selection.non_negative(u) for u in units]
        largest = ops.max(ops.stack([selection.largest_magnitude(u) for u in units]))
        return [selection.non_negative(u, largest) for u in units]

    def _capped(self, sparsity, layer):
        low = allocation.for_layer(self.min_sparsity, layer)
        high = allocation.for_layer(self.max_sparsity, layer)
        if low is None and high is None:
            return sparsity
        return ops.clip(
            ops.cast(sparsity, "float32"),
            0.0 if low is None else low,
            0.999999 if high is None else high,
        )

    def _select_globally(self, units, infos, sparsity):
        """One exact top-k over every unit, with per-layer caps."""
        units = [self.scope.transform(u) for u in units]
        forced, allowed = [], []
        for u, info in zip(units, infos):
            high = allocation.for_layer(self.max_sparsity, info.layer)
            low = allocation.for_layer(self.min_sparsity, info.layer)
            if high is None:  # every weight keeps its best unit
                forced.append(_best_unit(u, info.size))
            else:
                forced.append(selection.top_k_mask(u, selection.keep_count(info.size, high))[0])
            if low is not None:
                allowed.append(selection.top_k_mask(u, selection.keep_count(info.size, low))[0])
            else:
                allowed.append(ops.ones((info.size,), "bool"))
        flat = ops.concatenate([ops.cast(u, "float32") for u in units])
        forced_flat = ops.concatenate(forced)
        eligible = ops.logical_and(ops.concatenate(allowed), ops.logical_not(forced_flat))
        total = selection.keep_count(int(flat.shape[0]), sparsity)
        room = total - ops.sum(ops.cast(forced_flat, "int32"))
        rest, threshold = selection.top_k_mask(flat, room, eligible)
        keep = ops.logical_or(forced_flat, rest)
        keeps, start = [], 0
        for info in infos:
            keeps.append(keep[start : start + info.size])
            start += info.size
        return keeps, threshold

    def _select_by_threshold(self, entries, units, infos):
        keeps, thresholds, updates = [], [], []
        for (m, j, sel, scores), u, info in zip(entries, units, infos):
            sigma_var = m._sigmas[j]
            weight = ops.cast(scores.values[sel.scored[0]], "float32")
            sigma = ops.where(
                ops.less(backend.read(sigma_var), 0.0), ops.std(weight), backend.read(sigma_var)
            )
            mask_var = m.pruning_vars[sel.masked[0]][1]
            kept = ops.reshape(backend.read(mask_var), (-1,))
            keep = self.scope.keep(u, sigma, kept, info.layer)
            keeps.append(ops.logical_or(keep, _best_unit(u, info.size)))
            thresholds.append(self.scope.threshold(sigma, info.layer))
            updates.append((sigma_var, ops.reshape(sigma, ())))
        return keeps, thresholds, updates

    # ------------------------------------------------------------- config
    def get_config(self):
        return {
            "pruning_schedule": (
                None
                if self.pruning_schedule is None
                else keras.saving.serialize_keras_object(self.pruning_schedule)
            ),
            "criterion": keras.saving.serialize_keras_object(self.criterion),
            "granularity": keras.saving.serialize_keras_object(self.granularity),
            "scope": keras.saving.serialize_keras_object(self.scope),
            "min_sparsity": self.min_sparsity,
            "max_sparsity": self.max_sparsity,
            "group": self.group,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("pruning_schedule", "criterion", "granularity", "scope"):
            if isinstance(config.get(key), dict) and "class_name" in config[key]:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def __repr__(self):
        return (
            f"Pruner({self.pruning_schedule!r}, criterion={self.criterion!r}, "
            f"granularity={self.granularity!r}, scope={self.scope!r})"
        )


class _MemberScores:
    """One wrapper's scoring values, scores and unit scores, each computed
    when first asked for: element-wise scores of element units stay
    `selection.ElementScores`, computed where the selection reads them."""

    def __init__(self, criterion, wrapper):
        self.criterion = criterion
        self.wrapper = wrapper

    @functools.cached_property
    def values(self):
        return self.wrapper._scoring_values()

    @functools.cached_property
    def scores(self):
        return self.criterion.scores(self.values, self.wrapper._criterion_state)

    def units(self, selection):
        score = self.criterion.element_score
        if selection.elementwise and score is not None:
            return self.wrapper._element_scores(selection.scored[0], score)
        return selection.unit_scores([self.scores[i] for i in selection.scored])


def _as_tensor(units):
    if isinstance(units, selection.ElementScores):
        return units.flat().value()
    return units


_SMALLEST_NORMAL = np.float32(np.finfo(np.float32).tiny)


def _pruned_lowest(entry, units):
    """Unit scores where the units pruned now rank below every live unit.

    A pruned weight's Taylor score is `|0 * g| = 0`, as is a live weight's
    that got no gradient: ranked by position among equals, a pruned weight
    would come back (its mask set, its value 0) in place of a live one. So
    live units score at least the smallest normal float and pruned ones 0
    (scores are non-negative here; subnormal ones rank as that float).
    Element scores computed from the masked weight (magnitude) are left as
    they are: a live weight scoring 0 there is a zero weight.
    """
    if isinstance(units, selection.ElementScores):
        return units
    wrapper, _, sel, _ = entry
    masks = [ops.cast(backend.read(wrapper.pruning_vars[i][1]), "float32") for i in sel.scored]
    live = ops.greater(ops.reshape(sel.unit_scores(masks), (-1,)), 0.0)
    return ops.where(live, ops.maximum(ops.cast(units, "float32"), _SMALLEST_NORMAL), 0.0)


def _best_unit(unit_scores, size):
    """A mask of the highest-scoring unit (the first of equals)."""
    return ops.equal(ops.arange(size, dtype="int32"), ops.cast(ops.argmax(unit_scores), "int32"))


def assign(pairs):
    """Assigns `[(variable, value)]`."""
    for variable, value in pairs:
        variable.assign(value)
