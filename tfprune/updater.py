"""Running mask updates: which wrappers update together, now, or at the
steps of `fit` the host schedules.

- `bind` gives the wrappers of one pruner one shared `Pruner`; `groups`
  splits wrappers into update jobs (a layer-wise pruner updates each
  wrapper alone, a cross-layer one all its members at once).
- `update_masks` recomputes every job's masks now, outside training (on JAX
  as one compiled function per job, kept for the next call).
- `HostSchedule` and `StepVariants` schedule the updates inside `fit`.

Inside `fit` the host knows which step runs next, so `UpdatePruningStep`
asks each pruner's schedule on the host (NumPy, microseconds) before every
step and picks one of two kinds of compiled training step:

- a plain step (almost every step at `frequency=100`): the step counter and
  the layers on their stored weights, which the mask constraint keeps at
  zero where pruned; no schedule, no branch and no mask computation;
- an updating step (pruning steps only): the same, after recomputing the
  masks of the pruners that are due, without a branch.

Each set of due pruners gets its own compiled step, traced on first use and
kept across `fit` calls, so a pruning step costs one dispatch, as any other
step, and no value crosses between host and device. On JAX, whose optimizer
cannot read a mask computed inside the step, the due jobs instead run
between two steps as compiled updates of their own, and every step is the
plain one. Outside `fit` (custom loops, `steps_per_execution > 1`) the step
decides for itself in the graph.

    before step s + 1:  due = {pruner: schedule(s + 1) prunes}
                        model.train_function = compiled step for `due`
                        (JAX: run the due updates now; the plain step)

Example:
>>> schedule = HostSchedule([])
>>> schedule.next_step()   # no wrappers: nothing is ever due
()
"""

import functools
import weakref

import numpy as np
from keras import ops

from tfprune import allocation, backend, checks
from tfprune.pruner import assign


def bind(wrappers):
    """Gives the wrappers of one pruner (same `group`) one shared `Pruner`.

    Wrappers loaded from a file each hold a copy of their pruner; a pruner
    that ranks across layers needs them together. Returns True when anything
    changed (a compiled step must then be traced again).
    """
    groups, changed = {}, False
    for wrapper in wrappers:
        pruner = groups.setdefault(wrapper.pruner.group, wrapper.pruner)
        if wrapper.pruner is not pruner:
            wrapper._set_pruner(pruner)
            changed = True
    for pruner in groups.values():
        members = [w for w in wrappers if w.pruner is pruner]
        if [id(m) for m in pruner.members] != [id(m) for m in members]:
            pruner.members = members
            changed = True
    return changed


def groups(wrappers):
    """`[(pruner, members)]`: the built wrappers whose masks are computed
    together, each group once. A layer-wise pruner updates each member alone;
    a cross-layer one (global ranking, coupled channels) all its built
    members at once.
    """
    found, seen = [], set()
    for wrapper in wrappers:
        if not wrapper._state_built:
            continue
        pruner = wrapper.pruner
        members = [wrapper]
        if pruner.cross_layer:
            members = [m for m in pruner.members if m._state_built] or members
        key = tuple(id(m) for m in members)
        if key not in seen:
            seen.add(key)
            found.append((pruner, members))
    return found


def update_masks(wrappers, sparsity=None):
    """Recomputes every mask now (outside training), eagerly.

    `sparsity` overrides the schedule's target; None uses the schedule's
    value at each wrapper's current step.
    """
    if sparsity is not None:
        if not checks.is_number(sparsity):
            raise TypeError(f"Argument `sparsity` must be a float in [0, 1). Received: sparsity={sparsity!r}")
        allocation.per_layer("sparsity", sparsity)  # in [0, 1)
    bind(wrappers)
    jobs = []
    for pruner, members in groups(wrappers):
        wrapper = members[0]
        target = sparsity
        if target is None:
            if pruner.pruning_schedule is None:
                if pruner.scope.kind != "threshold" and not isinstance(
                    pruner.scope, allocation.Explicit
                ):
                    raise ValueError(
                        "Argument `sparsity` is needed: the pruner has no schedule. "
                        "Received: sparsity=None"
                    )
                target = 0.0
            else:
                step = max(int(ops.convert_to_numpy(wrapper.pruning_step)), 0)
                target = pruner.pruning_schedule(step)[1]
        if not bool(pruner._ready(members)):
            raise ValueError(
                f"Criterion {pruner.criterion!r} has no statistics yet for layer "
                f"'{wrapper.layer.name}': it needs gradients (train a few steps) or "
                "activations (`tfprune.collect_statistics(model, data)`) first."
            )
        jobs.append((pruner, members, np.float32(target)))
    # Checked everything first: a failed call changes nothing.
    for pruner, members, target in jobs:
        assign(_compiled_update(pruner, members)(target))


# The compiled update of each job: {pruner: {member ids: update}}.
_UPDATES = weakref.WeakKeyDictionary()


def _compiled_update(pruner, members):
    """`update(sparsity) -> [(variable, new value)]` of one job, compiled
    once per job (`backend.compiled_updates`)."""
    kept = _UPDATES.setdefault(pruner, {})
    key = tuple(id(m) for m in members)
    if key not in kept:
        kept[key] = backend.compiled_updates(
            functools.partial(pruner.compute, members),
            _variables_read(members),
            pruner.updated_variables(members),
        )
    return kept[key]


def _variables_read(members):
    """Every variable of the wrappers `members`, each once (what an update reads)."""
    return list({id(v): v for m in members for v in m.weights}.values())


def _job_ids(jobs):
    """A key naming `[(pruner, members)]` jobs by identity."""
    return tuple((id(pruner), *map(id, members)) for pruner, members in jobs)


# The compiled updates run between steps (JAX), per model: {jobs: update}.
_BETWEEN = weakref.WeakKeyDictionary()


def _masking_updates(jobs, sparsities):
    """Each job's update at its sparsity, then its members' stored weights
    masked by the new masks (`keep_stored_weights_sparse`), as a pruning
    step inside the compiled step does. A job whose criterion has no
    statistics yet (`Pruner._ready`) keeps every value, decided here rather
    than on the host. Assigns; returns no pairs (under
    `backend.compiled_updates` the assignments are the results)."""
    for (pruner, members), sparsity in zip(jobs, sparsities):
        ready = pruner._ready(members)
        changed = _job_targets(pruner, members)
        before = None if ready is True else [backend.read(v) for v in changed]
        assign(pruner.compute(members, sparsity))
        for m in members:
            m.keep_stored_weights_sparse()
        if before is not None:
            assign((v, ops.where(ready, backend.read(v), old)) for v, old in zip(changed, before))
    return []


def _job_targets(pruner, members):
    """What a job's update between steps may change: the pruner's variables
    and the members' pruned weights."""
    return pruner.updated_variables(members) + [w for m in members for w, _, _ in m.pruning_vars]


def _decision(pruner, step, known):
    """`pruner.decision(step)`, kept in `known`: pruners built by one call
    share their schedule, which is asked once per step."""
    key = (id(pruner.pruning_schedule), pruner.granularity.pattern, step)
    if key not in known:
        known[key] = pruner.decision(step)
    return known[key]


class HostSchedule:
    """Counts training steps on the host and says which jobs update next.

    Args:
        wrappers: the trainable `PruneLowMagnitude` wrappers of a model, each
            with its state built and its `pruning_step` at 0 or more (read
            once, here).
    """

    def __init__(self, wrappers):
        self.jobs = groups([w for w in wrappers if w.pruning_vars])
        self.steps = [
            max(int(ops.convert_to_numpy(members[0].pruning_step)), 0)
            for _, members in self.jobs
        ]
        # Each job's next update (`Pruner.next_update`), found once per update
        # instead of asking the schedule at every step; None: ask every step.
        self._next = [pruner.next_update(s + 1) for (pruner, _), s in zip(self.jobs, self.steps)]

    def next_step(self):
        """Counts one step; returns the indices of the jobs due at it."""
        due, decided = [], {}
        for j, (pruner, _) in enumerate(self.jobs):
            step = self.steps[j] = self.steps[j] + 1
            if self._next[j] is not None:
                if step == self._next[j]:
                    due.append(j)
                    self._next[j] = pruner.next_update(step + 1)
                continue
            if bool(_decision(pruner, step, decided)[0]):
                due.append(j)
        return tuple(due)


# The compiled steps of each model, kept across `fit` calls:
# {model: (the jobs they were traced for, {due job indices: train function})}.
_STEPS = weakref.WeakKeyDictionary()


class StepVariants:
    """The model's compiled training step for each set of due jobs.

    `select(due)` marks the due wrappers (read when a step is traced) and
    makes `model.train_function` the step compiled for them, tracing it on
    first use. Created at the start of `fit`, it keeps the steps of an
    earlier `fit` unless `fresh` (the wrappers changed), the model was
    compiled again (its train function is not one of them) or the jobs
    differ.
    """

    def __init__(self, model, schedule, fresh):
        self.model = model
        self.schedule = schedule
        self.jobs = schedule.jobs
        jobs = _job_ids(self.jobs)
        kept_jobs, steps = _STEPS.get(model, (None, {}))
        current = getattr(model, "train_function", None)
        self.current = next((due for due, fn in steps.items() if fn is current), None)
        if fresh or kept_jobs != jobs or self.current is None:
            self._mark(())
            steps = {(): _new_train_function(model)}
            _STEPS[model] = (jobs, steps)
            self.current = ()
        self.steps = steps

    def select(self, due):
        if due and not backend.constraints_may_read_variables():
            self._update_between_steps(due)
            due = ()
        if due == self.current:
            return
        self._mark(due)
        if due not in self.steps:
            self.steps[due] = _new_train_function(self.model)
        else:
            self.model.train_function = self.steps[due]
        self.current = due

    def _update_between_steps(self, due):
        """Runs the due jobs now, between two steps (JAX).

        Under JAX `fit` the optimizer cannot read a mask computed inside the
        step (`backend.constraints_may_read_variables`), so the host writes
        the training state back to the variables, runs one compiled update
        for every job due (new masks, and the stored weights masked by them)
        and the trainer reads the state again before the step. Only the
        sparsities cross, host to device: whether a criterion has its
        statistics is decided inside the update.
        """
        self.model.jax_state_sync()
        jobs = [self.jobs[j] for j in due]
        kept = _BETWEEN.setdefault(self.model, {})
        key = _job_ids(jobs)
        if key not in kept:
            reads = _variables_read([m for _, ms in jobs for m in ms])
            targets = [v for pruner, ms in jobs for v in _job_targets(pruner, ms)]
            kept[key] = backend.compiled_updates(
                functools.partial(_masking_updates, jobs), reads, targets
            )
        known = {}
        sparsities = [
            np.float32(_decision(self.jobs[j][0], self.schedule.steps[j], known)[1]) for j in due
        ]
        assign(kept[key](sparsities))

    def _mark(self, due):
        due = set(due)
        for j, (_, members) in enumerate(self.jobs):
            for wrapper in members:
                wrapper._update_due = j in due


def _new_train_function(model):
    """`model.make_train_function(force=True)`, traced anew on first call.

    `jax.jit` keeps the trace of a function it has seen, and Keras jits the
    bound `model.train_step`, whose copies compare equal: a fresh function
    stands in for it while the new train function is made. On JAX the
    training state is first written back to the variables (the trainer
    reads it again before the next step), which Keras needs to lay out a
    distributed step.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is None:
        model.make_train_function(force=True)
        return model.train_function
    sync()
    cls_step = type(model).train_step

    def train_step(*args, **kwargs):
        return cls_step(model, *args, **kwargs)

    object.__setattr__(model, "train_step", train_step)
    try:
        model.make_train_function(force=True)
    finally:
        object.__delattr__(model, "train_step")
    return model.train_function


def compiled_steps(model):
    """`{due job indices: train function}` kept for `model` ({} if none)."""
    try:
        return dict(_STEPS.get(model, (None, {}))[1])
    except TypeError:  # pragma: no cover (not weakly referenceable)
        return {}


def forget(model):
    """Drops the compiled steps kept for `model`."""
    try:
        _STEPS.pop(model, None)
    except TypeError:  # pragma: no cover (not weakly referenceable)
        pass
