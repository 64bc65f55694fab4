"""Mask updates scheduled by the host between the training steps of `fit`.

Inside `fit` the host knows which step runs next, so `UpdatePruningStep`
asks each pruner's schedule on the host (NumPy, microseconds) before every
step and picks one of two kinds of compiled training step:

- a plain step (almost every step at `frequency=100`): the step counter and
  the masked weights, with no schedule, no branch and no mask computation;
- an updating step (pruning steps only): the same, after recomputing the
  masks of the pruners that are due, without a branch.

Each set of due pruners gets its own compiled step, traced on first use and
kept across `fit` calls, so a pruning step costs one dispatch, as any other
step, and no value crosses between host and device. Outside `fit` (custom
loops, `steps_per_execution > 1`) the step decides for itself in the graph.

    before step s + 1:  due = {pruner: schedule(s + 1) prunes}
                        model.train_function = compiled step for `due`

Example:
>>> schedule = HostSchedule([])
>>> schedule.next_step()   # no wrappers: nothing is ever due
()
"""

import weakref

from keras import ops

from tfprune import pruner as pruner_lib


class HostSchedule:
    """Counts training steps on the host and says which jobs update next.

    Args:
        wrappers: the trainable `PruneLowMagnitude` wrappers of a model, each
            with its state built and its `pruning_step` at 0 or more (read
            once, here).
    """

    def __init__(self, wrappers):
        self.jobs = pruner_lib.groups([w for w in wrappers if w.pruning_vars])
        self.steps = [
            max(int(ops.convert_to_numpy(members[0].pruning_step)), 0)
            for _, members in self.jobs
        ]

    def next_step(self):
        """Counts one step; returns the indices of the jobs due at it."""
        due, decided = [], {}
        for j, (pruner, _) in enumerate(self.jobs):
            self.steps[j] += 1
            # Pruners built by one call share their schedule: ask it once.
            key = (id(pruner.pruning_schedule), pruner.granularity.pattern, self.steps[j])
            if key not in decided:
                decided[key] = bool(pruner.decision(self.steps[j])[0])
            if decided[key]:
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
        self.jobs = schedule.jobs
        jobs = tuple((id(pruner), *map(id, members)) for pruner, members in self.jobs)
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
        if due == self.current:
            return
        self._mark(due)
        if due not in self.steps:
            self.steps[due] = _new_train_function(self.model)
        else:
            self.model.train_function = self.steps[due]
        self.current = due

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
