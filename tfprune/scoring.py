"""Saliency: how important each weight is. Masks keep the highest scores.

A criterion maps the weights of a layer to scores of the same shapes (or
shapes that broadcast to them). It is kept apart from the mask (see
`tfprune.selection` and `tfprune.pruner`): scores may change at every step while
a mask changes only at pruning steps, and either can be read at any time.

Built-in criteria, by name:

- `"magnitude"`: `|w|` (`Magnitude(p=2)`: `w**2`), Han et al. (2015).
- `"random"`: uniform scores drawn once per weight, so masks are nested as
  sparsity grows; reproducible under `keras.utils.set_random_seed` or `seed`.
- `"taylor"`: first-order Taylor / OBD-style saliency, `sum_t |w * dL/dw|`
  over the training steps since the last mask update (Molchanov et al.).
- `"movement"`: `-sum_t w * dL/dw` over all training steps (Sanh et al.,
  2020): weights moving away from zero score high. Scores are signed.
- `"apoz"`: `1 - APoZ`, APoZ being the average percentage of zeros of each
  output channel of the layer (Hu et al., 2016, "Network Trimming").
- `"activation_mean"`: mean `|activation|` of each output channel.

Criteria with history keep accumulators in the pruning wrapper (saved with
the model). Gradients reach them through a variable that Keras overwrites
with its raw gradient (`overwrite_with_gradient`), so they work inside plain
`model.fit` on every backend; they lag by one step: step `t`'s gradient
`g_t` is scored at step `t + 1`'s call, against the weight that call reads,
`w_{t+1}` (after the update `g_t` made), so `w` in the sums above is the
weight one step later (Taylor: `sum |w_{t+1} g_t|`). With SGD that adds
about `lr * g_t**2` per step to movement's score, small at fine-tuning
rates; keeping `w_t` would cost a copy of every pruned weight. Activation statistics are
collected in training calls, or over calibration data with
`tfprune.collect_statistics(model, data)`.

A user-defined criterion subclasses `Criterion` and implements `scores`:

>>> import numpy as np
>>> class SquaredMagnitude(Criterion):
...     def scores(self, weights, state):
...         return [ops.square(w) for w in weights]
>>> s = SquaredMagnitude().scores([np.array([-2.0, 0.5], "float32")], {})
>>> ops.convert_to_numpy(s[0]).tolist()
[4.0, 0.25]
"""

import zlib

import keras
import numpy as np
from keras import ops

from tfprune import checks
from tfprune.backend import read
from tfprune.configurable import Configurable


def magnitude(weight):
    """Magnitude saliency, `|w|` (Han et al., 2015): the default score."""
    return ops.abs(ops.cast(weight, "float32"))


def squared_magnitude(weight):
    """`w**2`, the L2 magnitude saliency."""
    return ops.square(ops.cast(weight, "float32"))


class Criterion(Configurable):
    """Base class of importance criteria.

    Subclasses implement `scores(weights, state)`. Criteria with history also
    implement `build` (create accumulators with `add_weight`), `update` (called
    once per training step, after the layer's call) and `reset` (values of the
    accumulators after a mask update).

    Class attributes:
        needs_gradients: `update` receives `gradients`, the raw gradient of
            the loss with respect to each weight (of the previous step).
        needs_outputs: `update` receives the layer's `outputs` (channels
            last); the layer must have a single pruned weight with output
            channels.
        signed: scores may be negative (only their order matters).
        steps_before_ready: training steps of statistics the criterion
            needs before its scores can rank at a step's mask update (an
            N:M pattern, chosen once, is chosen after them): 0 without
            statistics; 1 for outputs (recorded after the call); 2 for
            gradients (a step's gradient reaches the next step's call).
        element_score: None, or a module-level function `score(weight)`
            when each score is a function of its own weight only (then a
            mask update computes the scores where it reads them, see
            `selection.ElementScores`).
    """

    needs_gradients = False
    needs_outputs = False
    signed = False
    steps_before_ready = 0
    element_score = None

    def check(self, weights, specs):
        """Raises if the criterion cannot score these weights (before `build`)."""
        del weights, specs

    def build(self, add_weight, weights, specs):
        """Creates the criterion's state: returns `{name: variable}`.

        `add_weight(name, shape, initializer)` creates a non-trainable float32
        variable of the pruning wrapper.
        """
        del add_weight, weights, specs
        return {}

    def update(self, state, weights, gradients=None, outputs=None):
        """Returns `[(variable, new value)]` for one step's statistics."""
        del state, weights, gradients, outputs
        return []

    def reset(self, state):
        """Returns `[(variable, value)]` to assign after masks are updated."""
        del state
        return []

    def ready(self, state):
        """Whether the statistics can rank weights (a boolean tensor or bool)."""
        del state
        return True

    def scores(self, weights, state):
        """Scores of `weights` (a list of tensors): one tensor per weight."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="tfprune")
class Magnitude(Criterion):
    """`|w|` for `p=1` (L1), `w**2` for `p=2` (L2)."""

    def __init__(self, p=1):
        if not checks.is_integer(p) or p not in (1, 2):
            raise ValueError(f"Argument `p` must be 1 or 2. Received: p={p!r}")
        self.p = int(p)

    @property
    def element_score(self):
        return magnitude if self.p == 1 else squared_magnitude

    def scores(self, weights, state):
        del state
        return [self.element_score(w) for w in weights]

    def get_config(self):
        return {"p": self.p}


@keras.saving.register_keras_serializable(package="tfprune")
class Random(Criterion):
    """Uniform random scores, drawn once per weight and kept.

    Args:
        seed: an int; None draws one from NumPy's global generator when the
            state is built (reproducible under `keras.utils.set_random_seed`).
    """

    def __init__(self, seed=None):
        if seed is not None and not checks.is_integer(seed):
            raise TypeError(f"Argument `seed` must be an int or None. Received: seed={seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"Argument `seed` must be >= 0. Received: seed={seed!r}")
        self.seed = None if seed is None else int(seed)

    def build(self, add_weight, weights, specs):
        seed = self.seed if self.seed is not None else int(np.random.randint(2**31 - 1))
        variables = []
        for weight, spec in zip(weights, specs):
            rng = np.random.default_rng([seed, zlib.crc32(spec.path.encode())])
            values = rng.random(tuple(weight.shape), dtype=np.float32)
            variables.append(
                add_weight(f"{spec.name}_random_scores", weight.shape, lambda shape, dtype, v=values: v)
            )
        return {"scores": variables}

    def scores(self, weights, state):
        return [read(v) for v in state["scores"]]

    def get_config(self):
        return {"seed": self.seed}


class _Accumulated(Criterion):
    """Scores accumulated from gradients: `acc += step_score(w, grad)`."""

    needs_gradients = True
    steps_before_ready = 2
    resets = True

    def build(self, add_weight, weights, specs):
        return {
            "acc": [
                add_weight(f"{spec.name}_{self.suffix}", weight.shape, "zeros")
                for weight, spec in zip(weights, specs)
            ]
        }

    def update(self, state, weights, gradients=None, outputs=None):
        return [
            (acc, ops.add(read(acc), self.step_score(ops.cast(w, "float32"), ops.cast(g, "float32"))))
            for acc, w, g in zip(state["acc"], weights, gradients)
        ]

    def reset(self, state):
        if not self.resets:
            return []
        return [(acc, ops.zeros(acc.shape, "float32")) for acc in state["acc"]]

    def ready(self, state):
        # All-zero statistics (no gradient seen yet) cannot rank anything.
        nonzero = [ops.any(ops.not_equal(read(acc), 0.0)) for acc in state["acc"]]
        return ops.any(ops.stack(nonzero))

    def scores(self, weights, state):
        return [read(acc) for acc in state["acc"]]


@keras.saving.register_keras_serializable(package="tfprune")
class Taylor(_Accumulated):
    """`sum_t |w * dL/dw|` since the last mask update (first-order Taylor)."""

    suffix = "taylor"

    def step_score(self, weight, gradient):
        return ops.abs(ops.multiply(weight, gradient))


@keras.saving.register_keras_serializable(package="tfprune")
class Movement(_Accumulated):
    """`-sum_t w * dL/dw` over all training steps (movement pruning)."""

    suffix = "movement"
    signed = True
    resets = False

    def step_score(self, weight, gradient):
        return ops.negative(ops.multiply(weight, gradient))


class _ChannelStatistic(Criterion):
    """A statistic of each output channel of the layer, broadcast to its weights.

    Every pruned weight of the layer must index the layer's output channels
    (a `Dense` or `Conv` kernel and its bias).
    """

    needs_outputs = True
    steps_before_ready = 1

    def check(self, weights, specs):
        sizes = {
            None if s.out_axis is None else w.shape[s.out_axis] for w, s in zip(weights, specs)
        }
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                f"Criterion '{type(self).__name__}' scores the output channels of a "
                "layer, so every pruned weight must index them (a Dense or Conv "
                f"kernel). Received weights {[s.path for s in specs]} with output "
                f"sizes {sorted(sizes, key=str)}"
            )
        return sizes.pop()

    def build(self, add_weight, weights, specs):
        channels = self.check(weights, specs)
        return {
            "total": add_weight("activation_total", (channels,), "zeros"),
            "count": add_weight("activation_count", (), "zeros"),
            "out_axes": [s.out_axis for s in specs],
        }

    def update(self, state, weights, gradients=None, outputs=None):
        outputs = ops.cast(outputs, "float32")
        flat = ops.reshape(outputs, (-1, outputs.shape[-1]))
        rows = ops.cast(ops.shape(flat)[0], "float32")
        return [
            (state["total"], ops.add(read(state["total"]), ops.sum(self.statistic(flat), axis=0))),
            (state["count"], ops.add(read(state["count"]), rows)),
        ]

    def reset(self, state):
        return [
            (state["total"], ops.zeros(state["total"].shape, "float32")),
            (state["count"], ops.zeros((), "float32")),
        ]

    def ready(self, state):
        return ops.greater(read(state["count"]), 0.0)

    def scores(self, weights, state):
        channel = ops.divide(read(state["total"]), ops.maximum(read(state["count"]), 1.0))
        out = []
        for w, axis in zip(weights, state["out_axes"]):
            shape = [1] * len(w.shape)
            shape[axis] = w.shape[axis]
            out.append(ops.broadcast_to(ops.reshape(channel, shape), w.shape))
        return out


@keras.saving.register_keras_serializable(package="tfprune")
class APoZ(_ChannelStatistic):
    """`1 - APoZ` per output channel: channels that are mostly zero score low."""

    def statistic(self, flat):
        return ops.cast(ops.not_equal(flat, 0.0), "float32")


@keras.saving.register_keras_serializable(package="tfprune")
class ActivationMean(_ChannelStatistic):
    """Mean `|activation|` per output channel."""

    def statistic(self, flat):
        return ops.abs(flat)


@keras.saving.register_keras_serializable(package="tfprune")
class BatchNormScale(Criterion):
    """`|γ|` of `BatchNormalization` scales: network slimming (Liu et al., 2017).

    For channels of coupled groups (`granularity="filter"` on a graph model):
    a channel scores the scales of the normalizations it passes through
    (reduced by `reduction`); no other weight counts. Train with
    `tfprune.regularizers.L1` on the scales (`gamma_regularizer`) first.
    """

    def build(self, add_weight, weights, specs):
        del add_weight, weights
        return {"scored": [spec.path.split(".")[-1] == "gamma" for spec in specs]}

    def scores(self, weights, state):
        return [magnitude(w) if s else None for w, s in zip(weights, state["scored"])]


CRITERIA = {
    "magnitude": Magnitude,
    "random": Random,
    "taylor": Taylor,
    "movement": Movement,
    "apoz": APoZ,
    "activation_mean": ActivationMean,
    "bn_scale": BatchNormScale,
}


def get(identifier):
    """A `Criterion` from its name or an instance."""
    if isinstance(identifier, Criterion):
        return identifier
    if isinstance(identifier, str) and identifier in CRITERIA:
        return CRITERIA[identifier]()
    raise ValueError(
        f"Argument `criterion` must be one of {sorted(CRITERIA)} or a "
        f"`tfprune.Criterion` instance. Received: criterion={identifier!r}"
    )
