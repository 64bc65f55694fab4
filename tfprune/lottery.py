"""Lottery tickets: snapshot weights, then rewind them while keeping masks.

`snapshot_weights(model)` copies every weight of a model (kernels, biases,
normalization statistics), leaving out pruning state (masks, thresholds,
steps, criterion statistics). `rewind_weights(model, snapshot)` writes the
copies back, masked, so pruned weights stay zero and the masks are kept:
the "winning ticket" restarts from the snapshot's values (Frankle & Carbin,
2019; rewinding to an early step, Frankle et al., 2020). The optimizer's
state is left alone: recompile the model or reset the optimizer for a fresh
start.

Iterative magnitude pruning (train, prune p%, rewind, repeat):

```python
pruned = tfprune.prune(model, None, scope="global")   # masks change on request
ticket = tfprune.snapshot_weights(pruned)              # at initialization
for round in range(1, rounds + 1):
    pruned.compile(...)                                 # fresh optimizer state
    pruned.fit(x, y, epochs=e, callbacks=[tfprune.UpdatePruningStep()])
    tfprune.update_masks(pruned, 1 - (1 - p) ** round)
    tfprune.rewind_weights(pruned, ticket)
```

Example:
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="fc")])
>>> snap = snapshot_weights(model)
>>> sorted(snap.values)
['fc/bias', 'fc/kernel']
"""

import keras
import numpy as np
from keras import ops

from tfprune import backend
from tfprune import layers as layer_specs
from tfprune.wrapper import collect_prunable_layers


class WeightSnapshot:
    """Copies of a model's weights by name (`snapshot.values["dense/kernel"]`)."""

    def __init__(self, values):
        self.values = values

    def __repr__(self):
        return f"WeightSnapshot({len(self.values)} weights)"


def _pruning_state(model):
    """Ids of the variables holding pruning state, and the pruned weights' masks."""
    state, masks, stored_only = set(), {}, set()
    for wrapper in collect_prunable_layers(model):
        if not wrapper._state_built:
            continue
        state |= {id(v) for v in wrapper._mask_variables}
        state |= {id(v) for v in wrapper._state_variables}
        state.add(id(wrapper.pruning_step))
        for weight, mask, _ in wrapper.pruning_vars:
            if wrapper.forward_only:
                stored_only.add(id(weight))
            else:
                masks[id(weight)] = mask
    return state, masks, stored_only


def _walk(layer, prefix, state, found):
    """`found[name] = variable` for every weight under `layer`, named by the
    layer names leading to it (pruning wrappers skipped: `dense/kernel`)."""
    from tfprune.wrapper import PruneLowMagnitude

    if isinstance(layer, PruneLowMagnitude):
        _walk(layer.layer, prefix, state, found)
        return
    name = f"{prefix}{layer.name}/"
    for variable in layer_specs._own_weights(layer):
        if id(variable) in state or any(v is variable for v in found.values()):
            continue
        key = f"{name}{variable.name}"
        if key in found:
            raise ValueError(
                f"Two weights are named '{key}'; give the layers unique names "
                "to snapshot them."
            )
        found[key] = variable
    for sub in layer_specs.sublayers(layer):
        _walk(sub, name, state, found)


def _weights(model):
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    state, masks, _ = _pruning_state(model)
    found = {}
    for layer in layer_specs.sublayers(model):
        _walk(layer, "", state, found)
    return found, masks


def snapshot_weights(model):
    """A copy of every weight of `model` except pruning state (any step)."""
    found, _ = _weights(model)
    return WeightSnapshot(
        {path: np.array(ops.convert_to_numpy(v)) for path, v in found.items()}
    )


def rewind_weights(model, snapshot):
    """Restores the weights captured by `snapshot`, keeping every mask.

    Pruned weights stay exactly zero (the snapshot's values are masked);
    masks, steps and criterion statistics are not touched, nor is the
    optimizer's state. The snapshot may come from the model before it was
    pruned: weights are matched by the names of the layers holding them
    (`dense/kernel`; a pruning wrapper adds no level).

    Raises:
        ValueError: a weight of the snapshot is missing from the model or has
            another shape (nothing is changed).
    """
    if not isinstance(snapshot, WeightSnapshot):
        raise TypeError(
            "Argument `snapshot` must come from `tfprune.snapshot_weights`. "
            f"Received: snapshot={snapshot!r}"
        )
    found, masks = _weights(model)
    missing = [p for p in snapshot.values if p not in found]
    wrong = [
        f"{p}: {snapshot.values[p].shape} vs {tuple(found[p].shape)}"
        for p in snapshot.values
        if p in found and tuple(found[p].shape) != snapshot.values[p].shape
    ]
    if missing or wrong:
        raise ValueError(
            f"The snapshot does not fit model '{model.name}'. Weights missing "
            f"from the model: {missing}; shapes that differ: {wrong}"
        )
    for path, value in snapshot.values.items():
        variable = found[path]
        value = ops.convert_to_tensor(value, dtype=variable.dtype)
        mask = masks.get(id(variable))
        if mask is not None:
            value = backend.masked(value, mask.value)
        variable.assign(value)
