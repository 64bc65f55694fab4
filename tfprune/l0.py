"""L0 regularization with hard-concrete gates (Louizos, Welling & Kingma, 2018).

`L0Gate(layer)` multiplies each output channel of `layer` by a gate
`z ∈ [0, 1]` with a trainable `log_alpha` per channel:

    training:   u ~ U(0, 1) (one draw per example and channel)
                s = sigmoid((log u − log(1 − u) + log_alpha) / β)
                z = clip(s·(ζ − γ) + γ, 0, 1)
    evaluation: z = clip(sigmoid(log_alpha)·(ζ − γ) + γ, 0, 1)

with β = `temperature` (2/3), γ = −0.1, ζ = 1.1, and adds the expected L0
norm `λ·Σ sigmoid(log_alpha − β·log(−γ/ζ))` to the loss (a regularizer of
`log_alpha`, so Keras adds it on every backend). `droprate_init` sets
where `log_alpha` starts, as in Louizos et al.'s code: near
`log(1 − droprate_init) − log(droprate_init)` (small noise, σ = 0.01), so
`sigmoid(log_alpha)` (the concrete variable's mean before stretching)
starts at `1 − droprate_init`. It is not the probability that a gate is
closed: with the stretch and clip, a training gate is exactly 0 less often
(0.17 at `droprate_init=0.5`), and an evaluation gate is closed only from
`droprate_init ≥ 11/12` (`sigmoid(log_alpha)·1.2 − 0.1 ≤ 0`).

The gate acts before the layer's activation (`act(z·(Wx + b))`), so at
evaluation it folds exactly into the kernel and bias (a
`BatchNormalization`'s scale and shift). A closed gate makes the channel
exactly zero there; `tfprune.thin` folds the gates, finds the channels that
are then zero wherever they are read (`tfprune.zeros`) and removes them:
a plain Keras model with the same outputs as the gated one at evaluation.

`add_l0_gates(model)` gates every `Conv`/`Dense` of a Sequential or
Functional model whose channels can be removed; where a layer's only reader
is a `BatchNormalization`, the gate goes on that normalization instead (so
that a closed channel is zero after it, not its shift).

Example:
>>> import numpy as np
>>> gate = L0Gate(keras.layers.Dense(4), l0_strength=0.01, droprate_init=0.5)
>>> _ = gate(np.ones((2, 3), "float32"))
>>> gate.open_channels().shape
(4,)
"""

import math

import keras
from keras import ops

from tfprune import checks, cloning

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


@keras.saving.register_keras_serializable(package="tfprune")
class L0Penalty(keras.regularizers.Regularizer):
    """`strength · Σ sigmoid(log_alpha − β·log(−γ/ζ))`: the expected number of
    open gates (of `log_alpha`), times `strength`."""

    def __init__(self, strength, temperature=BETA):
        self.strength = _check("strength", strength, 0.0, math.inf, low_open=False)
        self.temperature = _check("temperature", temperature, 0.0, math.inf)

    def __call__(self, log_alpha):
        shift = self.temperature * math.log(-GAMMA / ZETA)
        return self.strength * ops.sum(ops.sigmoid(ops.cast(log_alpha, "float32") - shift))

    def get_config(self):
        return {"strength": self.strength, "temperature": self.temperature}


def _check(name, value, low, high, low_open=True, high_open=True):
    ok = checks.is_number(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        raise ValueError(
            f"Argument `{name}` must be a number in {'(' if low_open else '['}{low}, {high}"
            f"{')' if high_open else ']'}. Received: {name}={value!r}"
        )
    return float(value)


def check_gate_arguments(l0_strength, droprate_init, temperature, seed):
    """`(l0_strength, droprate_init, temperature)` as floats, or a ValueError
    (a TypeError for a seed that is not an int) naming the argument."""
    if seed is not None and not checks.is_integer(seed):
        raise TypeError(f"Argument `seed` must be an int or None. Received: seed={seed!r}")
    return (
        _check("l0_strength", l0_strength, 0.0, math.inf, low_open=False),
        _check("droprate_init", droprate_init, 0.0, 1.0),
        _check("temperature", temperature, 0.0, math.inf),
    )


@keras.saving.register_keras_serializable(package="tfprune")
class L0Gate(keras.layers.Wrapper):
    """Hard-concrete gates on the output channels of `layer` (see the module).

    Args:
        layer: a layer with channels last (`Conv*`, `Dense`,
            `BatchNormalization`, ...).
        l0_strength: λ of the expected-L0 penalty.
        droprate_init: `1 − sigmoid(log_alpha)` at initialization (see
            the module docstring; not the probability of a closed gate).
        temperature: β.
        seed: seed of the gates' noise.
    """

    def __init__(
        self, layer, l0_strength=1e-3, droprate_init=0.5, temperature=BETA, seed=None, **kwargs
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"Argument `layer` must be a Keras layer. Received: layer={layer!r}")
        self.l0_strength, self.droprate_init, self.temperature = check_gate_arguments(
            l0_strength, droprate_init, temperature, seed
        )
        kwargs.setdefault("name", f"l0_gate_{layer.name}")
        super().__init__(layer, **kwargs)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = layer.supports_masking

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        channels = self.layer.compute_output_shape(input_shape)[-1]
        mean = math.log(1.0 - self.droprate_init) - math.log(self.droprate_init)
        self.log_alpha = self.add_weight(
            name="log_alpha",
            shape=(channels,),
            initializer=keras.initializers.RandomNormal(mean, 0.01, seed=self.seed),
            regularizer=L0Penalty(self.l0_strength, self.temperature),
        )
        self.built = True

    # ------------------------------------------------------------ the gates
    def gates(self, training=False, batch=None):
        """The gates: sampled (shape `(batch, channels)`) or deterministic."""
        log_alpha = ops.cast(self.log_alpha, "float32")
        if not training:
            s = ops.sigmoid(log_alpha)
        else:
            eps = 1e-6
            u = keras.random.uniform(
                (batch, log_alpha.shape[0]), eps, 1.0 - eps, seed=self.seed_generator
            )
            s = ops.sigmoid((ops.log(u) - ops.log(1.0 - u) + log_alpha) / self.temperature)
        return ops.clip(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def open_channels(self):
        """The evaluation-time keep mask (NumPy booleans)."""
        return ops.convert_to_numpy(self.gates(False)) > 0.0

    def expected_open(self):
        """The expected number of open gates (the penalty over λ)."""
        return float(ops.convert_to_numpy(L0Penalty(1.0, self.temperature)(self.log_alpha)))

    def call(self, inputs, training=None, **kwargs):
        activation = getattr(self.layer, "activation", None)
        swap = activation is not None and activation is not keras.activations.linear
        kwargs = dict(kwargs)
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        if swap:
            object.__setattr__(self.layer, "activation", keras.activations.linear)
        try:
            y = self.layer(inputs, **kwargs)
        finally:
            if swap:
                object.__setattr__(self.layer, "activation", activation)
        batch = ops.shape(y)[0]
        z = self.gates(bool(training), batch)
        if training:
            z = ops.reshape(z, (batch,) + (1,) * (len(y.shape) - 2) + (z.shape[-1],))
        y = y * ops.cast(z, y.dtype)
        return activation(y) if swap else y

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            l0_strength=self.l0_strength,
            droprate_init=self.droprate_init,
            temperature=self.temperature,
            seed=self.seed,
        )
        return config


def fold(gate):
    """A copy of the gated layer with the evaluation gates folded into it."""
    layer = gate.layer
    copy = type(layer).from_config(layer.get_config())
    cloning.copy_weights(layer, copy)
    z = ops.convert_to_numpy(gate.gates(False))
    if isinstance(layer, keras.layers.BatchNormalization):
        if not layer.scale:
            raise ValueError(
                f"Gate '{gate.name}': BatchNormalization '{layer.name}' has no scale "
                "(scale=False), so its gates cannot be folded into it."
            )
        paths = ["gamma"] + (["beta"] if layer.center else [])
        axis = {"gamma": 0, "beta": 0}
    else:
        kernel, kernel_axis = "kernel", -1
        if isinstance(layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)):
            kernel = "pointwise_kernel"
        elif isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                keras.layers.Conv3DTranspose)):  # fmt: skip
            kernel_axis = -2
        paths, axis = [kernel], {kernel: kernel_axis, "bias": 0}
        if getattr(layer, "use_bias", False) and getattr(copy, "bias", None) is not None:
            paths.append("bias")
        if getattr(copy, kernel, None) is None or len(z) != getattr(copy, kernel).shape[kernel_axis]:
            raise ValueError(
                f"Gate '{gate.name}' on layer '{layer.name}' of type {type(layer).__name__}: "
                "its gates cannot be folded into the layer's weights."
            )
    for name in paths:
        variable = getattr(copy, name)
        value = ops.convert_to_numpy(variable)
        view = [1] * value.ndim
        view[axis[name] % value.ndim] = len(z)
        variable.assign(value * z.reshape(view).astype(value.dtype))
    return copy


def strip_gates(model):
    """The model without gates: each gated layer with its gates folded in."""
    if not cloning.is_graph_model(model):
        raise ValueError(
            f"Argument `model` must be a Sequential or Functional model. Received: model={model!r}"
        )

    def replace(copy, layer):
        return copy.layer if isinstance(copy, L0Gate) else copy

    def weights_source(layer):
        return fold(layer) if isinstance(layer, L0Gate) else layer

    return cloning.copy_model(model, replace, weights_source=weights_source)


def gates_of(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, L0Gate)
    ]


def add_l0_gates(model, l0_strength=1e-3, droprate_init=0.5, temperature=BETA, seed=None):
    """Gates every `Conv`/`Dense` of a model whose channels can be removed.

    Returns a new model (the input is left as it was); a layer whose only
    reader is a `BatchNormalization` has its gates on that normalization.
    """
    from tfprune import graph as graph_lib

    check_gate_arguments(l0_strength, droprate_init, temperature, seed)
    if not cloning.is_graph_model(model):
        raise ValueError(
            "Argument `model` must be a Sequential or Functional model (the gates are "
            f"placed from its graph). Received: model={model!r}"
        )
    structure = graph_lib.build(model, strict=False)
    removable = {
        group_layer
        for g in structure.groups
        if g.prunable
        for group_layer in g.producers
    }
    readers = _readers(model)
    targets = set()
    for name in removable:
        layer = structure.layers[name]
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                                  keras.layers.Conv3D, keras.layers.SeparableConv1D,
                                  keras.layers.SeparableConv2D)):  # fmt: skip
            continue
        after = readers.get(name, [])
        if len(after) == 1 and isinstance(after[0], keras.layers.BatchNormalization) and (
            after[0].scale
        ):
            targets.add(after[0].name)
        else:
            targets.add(name)
    if not targets:
        raise ValueError(f"Model '{model.name}' has no Conv or Dense channels to gate.")
    counter = iter(range(1 << 30))

    def replace(copy, layer):
        if layer.name not in targets:
            return copy
        return L0Gate(
            copy,
            l0_strength=l0_strength,
            droprate_init=droprate_init,
            temperature=temperature,
            seed=None if seed is None else int(seed) + next(counter),
        )

    return cloning.copy_model(model, replace)


def _readers(model):
    """`{layer name: [layers calling its outputs]}` over the graph (nested too)."""
    from tfprune import graph as graph_lib

    found = {}
    producer = {}
    for node in graph_lib.nodes(model):
        op = node.operation
        for t in node.input_tensors:
            if id(t) in producer:
                found.setdefault(producer[id(t)], []).append(op)
        for t in node.outputs:
            producer[id(t)] = op.name
        if cloning.is_graph_model(op):
            found.update(_readers(op))
    return found


def gate_report(model):
    """`{gate name: (open channels, channels)}` at evaluation."""
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    return {
        g.name: (int(g.open_channels().sum()), int(g.open_channels().size))
        for g in gates_of(model)
    }

