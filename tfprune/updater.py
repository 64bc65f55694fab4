"""Mask updates launched by the host between the training steps of `fit`.

Inside `fit` the host knows which step runs next, so `UpdatePruningStep`
asks each pruner's schedule on the host (NumPy, a few microseconds) before
every step and, at pruning steps only, runs one separately compiled function
that recomputes the due masks. The compiled training step then holds no
schedule, no branch and no mask computation: the step counter and the
masked weights only. Outside `fit` (custom loops, `steps_per_execution > 1`)
the training step decides for itself, as the wrappers always can.

    before step s + 1:  due = [(pruner, members, target)
                               for each pruner whose schedule prunes at s + 1]
                        if due: update(targets)   # tf.function / jax.jit / eager

Example:
>>> updater = MaskUpdater(model=None, wrappers=[])
>>> updater.before_step()   # nothing is due: no device work at all
False
"""

import weakref

import numpy as np
from keras import ops

from tfprune import backend
from tfprune import pruner as pruner_lib


def jobs_of(wrappers):
    """`[(pruner, members)]`: the wrappers whose masks are computed together.

    A layer-wise pruner updates each member alone; a cross-layer one (global
    ranking, coupled channels) all its built members at once.
    """
    jobs, seen = [], set()
    for wrapper in wrappers:
        if not (wrapper._state_built and wrapper.pruning_vars):
            continue
        pruner = wrapper.pruner
        if pruner.cross_layer:
            members = [m for m in pruner.members if m._state_built] or [wrapper]
        else:
            members = [wrapper]
        key = tuple(id(m) for m in members)
        if key not in seen:
            seen.add(key)
            jobs.append((pruner, members))
    return jobs


# Compiled updates of each model, kept across `fit` calls: {model: {key: run}}.
_COMPILED = weakref.WeakKeyDictionary()


class MaskUpdater:
    """Runs the due mask updates before each training step, from the host.

    Args:
        model: the model being trained (on JAX its training state is written
            back to the variables before an update and read again after).
        wrappers: the model's trainable `PruneLowMagnitude` wrappers, each
            with its state built and its `pruning_step` at 0 or more.
    """

    def __init__(self, model, wrappers):
        self.model = model
        self.jobs = jobs_of(wrappers)
        # The step each job's wrappers will be at after the next training step.
        self.steps = [
            max(int(ops.convert_to_numpy(members[0].pruning_step)), 0)
            for _, members in self.jobs
        ]
        try:
            self._compiled = _COMPILED.setdefault(model, {})
        except TypeError:  # no model (or one that takes no weak reference)
            self._compiled = {}

    def before_step(self):
        """Counts one step and runs the updates due at it; True if any ran."""
        due = []
        for j, (pruner, members) in enumerate(self.jobs):
            self.steps[j] += 1
            should_prune, sparsity = pruner.decision(self.steps[j])
            if bool(should_prune):
                due.append((j, np.float32(sparsity)))
        if not due:
            return False
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()  # the trainer reads every variable again before the step
        due = [(j, s) for j, s in due if bool(self.jobs[j][0]._ready(self.jobs[j][1]))]
        if not due:
            return False
        jobs = [self.jobs[j] for j, _ in due]
        # The pruners and wrappers themselves: a compiled update holds them.
        key = tuple((id(pruner), *map(id, members)) for pruner, members in jobs)
        if key not in self._compiled:
            self._compiled[key] = self._compile(jobs)
        self._compiled[key]([s for _, s in due])
        return True

    @staticmethod
    def _compile(jobs):
        def compute(targets):
            updates = []
            for (pruner, members), target in zip(jobs, targets):
                updates += pruner.compute(members, target)
            return updates

        members = [m for _, group in jobs for m in group]
        reads = list({id(v): v for m in members for v in m.weights}.values())
        targets = [v for pruner, group in jobs for v in pruner.updated_variables(group)]
        return backend.compile_assignments(compute, reads, targets, pruner_lib.assign)
