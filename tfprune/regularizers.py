"""Sparsity by regularization: L1 and group lasso, with an optional proximal step.

`L1(strength)` adds `λ·Σ|w|` to the loss; `GroupLasso(strength, granularity)`
adds `λ·Σ_g sqrt(|g|)·‖W_g‖₂` over the weight's structures (`"filter"`: the
last axis, a kernel's output channels; `"channel"`: axis -2, its input
channels; `"row"`/`"column"`: axes 0/1 of rank-2 weights). Both are Keras
regularizers: pass one as a `kernel_regularizer`, or attach one to every
prunable weight of a model with `tfprune.regularize(model, regularizer)`.

By themselves they act through the gradient: a (sub)gradient step never lands
a weight on exactly zero; it oscillates around it. `tfprune.SoftThreshold()`
makes them proximal (ISTA): after every optimizer update, inside the
compiled step, each regularized weight takes the proximal step of its
penalty with `η` the optimizer's current learning rate,

    L1:          w   <- sign(w) · max(0, |w| − ηλ)
    group lasso: W_g <- max(0, 1 − ηλ·sqrt(|g|) / ‖W_g‖₂) · W_g

and the penalty's own gradient is switched off for those weights (it still
appears in the reported loss), so the shrinkage is applied once, exactly: a
group whose norm is under `ηλ·sqrt(|g|)` lands on zero and stays there
until the data's gradient pushes it out again. Gradients are never masked,
so zeroed weights can grow back (Distiller's distinction between a
regularizer's mask and a pruning mask). The gradient of `‖W_g‖₂` is taken
as 0 at a zero group (no NaN).

With pruning on the same weight the pruning mask wins: `SoftThreshold` does
not touch weights a pruning wrapper masks (their penalty acts through the
gradient, and the pruning mask decides what is zero).

Example:
>>> reg = GroupLasso(0.1, granularity="filter")
>>> w = np.array([[3.0, 0.1], [4.0, 0.1]], "float32")   # filter norms 5 and 0.14
>>> round(float(reg(w)), 4)                               # 0.1 * sqrt(2) * (5 + 0.1414)
0.7271
>>> keras.ops.convert_to_numpy(reg.proximal(w, 1.0))[:, 1].tolist()
[0.0, 0.0]
"""

import math

import keras
import numpy as np
from keras import ops

from tfprune import checks

GROUP_AXES = {"filter": -1, "channel": -2, "row": 0, "column": 1}


def _check_strength(strength):
    if not checks.is_finite_number(strength) or strength < 0:
        raise ValueError(
            f"Argument `strength` must be a finite number >= 0. Received: strength={strength!r}"
        )
    return float(strength)


class _Proximal(keras.regularizers.Regularizer):
    """A regularizer whose penalty can be applied by a proximal step instead
    of through the gradient (for the variables `SoftThreshold` handles)."""

    def __init__(self, strength):
        self.strength = _check_strength(strength)

    def penalty(self, x):
        raise NotImplementedError

    def proximal(self, x, learning_rate):
        raise NotImplementedError

    def __call__(self, x):
        return self.penalty(x)

    def get_config(self):
        return {"strength": self.strength}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="tfprune")
class L1(_Proximal):
    """`strength · Σ|w|`; its proximal step is soft thresholding."""

    def penalty(self, x):
        return self.strength * ops.sum(ops.abs(ops.cast(x, "float32")))

    def proximal(self, x, learning_rate):
        x = ops.convert_to_tensor(x)
        shrink = ops.cast(learning_rate, x.dtype) * self.strength
        return ops.sign(x) * ops.maximum(ops.abs(x) - shrink, 0.0)

    def zero_mask(self, x):
        """Elements that are exactly zero."""
        return ops.equal(ops.convert_to_tensor(x), 0)


def _group_norms(x, axis):
    """`(‖W_g‖₂ per group, |g|)`; the gradient at a zero group is 0."""
    x = ops.cast(x, "float32")
    axis = axis % len(x.shape)
    other = tuple(a for a in range(len(x.shape)) if a != axis)
    squares = ops.sum(ops.square(x), axis=other) if other else ops.square(x)
    positive = ops.greater(squares, 0.0)
    norms = ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0)
    size = int(np.prod([x.shape[a] for a in other])) if other else 1
    return norms, size


@keras.saving.register_keras_serializable(package="tfprune")
class GroupLasso(_Proximal):
    """`strength · Σ_g sqrt(|g|) · ‖W_g‖₂` over the weight's structures.

    Args:
        strength: λ.
        granularity: `"filter"` (last axis), `"channel"` (axis -2), `"row"`
            (axis 0) or `"column"` (axis 1).
    """

    def __init__(self, strength=0.01, granularity="filter"):
        super().__init__(strength)
        if not isinstance(granularity, str) or granularity not in GROUP_AXES:
            raise ValueError(
                f"Argument `granularity` must be one of {sorted(GROUP_AXES)}. "
                f"Received: granularity={granularity!r}"
            )
        self.granularity = granularity
        self.axis = GROUP_AXES[granularity]

    def _check(self, x):
        rank = len(x.shape)
        if self.granularity == "channel" and rank < 2 or (
            self.granularity in ("row", "column") and rank != 2
        ):
            raise ValueError(
                f"GroupLasso(granularity={self.granularity!r}) needs a weight of rank "
                f"{'2' if self.granularity != 'channel' else '>= 2'}; received shape "
                f"{tuple(x.shape)}."
            )

    def penalty(self, x):
        self._check(x)
        norms, size = _group_norms(x, self.axis)
        return self.strength * math.sqrt(size) * ops.sum(norms)

    def proximal(self, x, learning_rate):
        x = ops.convert_to_tensor(x)
        self._check(x)
        norms, size = _group_norms(x, self.axis)
        shrink = ops.cast(learning_rate, "float32") * self.strength * math.sqrt(size)
        scale = ops.maximum(1.0 - shrink / ops.maximum(norms, 1e-30), 0.0)
        view = [1] * len(x.shape)
        view[self.axis] = x.shape[self.axis]
        return x * ops.cast(ops.reshape(scale, view), x.dtype)

    def zero_mask(self, x):
        """Groups (along the group axis) that are exactly zero."""
        norms, _ = _group_norms(x, self.axis)
        return ops.equal(norms, 0.0)

    def get_config(self):
        return {"strength": self.strength, "granularity": self.granularity}


class ReportedOnly:
    """A regularizer whose penalty is reported in the loss without a gradient
    (its proximal step applies it instead)."""

    def __init__(self, regularizer):
        self.regularizer = regularizer

    def __call__(self, x):
        return ops.stop_gradient(self.regularizer(x))


def regularize(model, regularizer, layers=None, replace=False):
    """Attaches `regularizer` to every prunable weight of `model` (any depth),
    or of the layers named in `layers`.

    A weight holds one regularizer: one it has already (the user's own, or
    another `regularize`'s) is a `ValueError` naming it, unless `replace`.

    The layers' `kernel_regularizer` (or the matching attribute) is set too,
    so a saved model keeps it. Returns the model (changed in place).

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = regularize(model, L1(1e-3))
    >>> model.layers[0].kernel_regularizer
    L1(strength=0.001)
    """
    from tfprune import layers as layer_specs

    if not isinstance(regularizer, keras.regularizers.Regularizer) and not callable(regularizer):
        raise TypeError(
            "Argument `regularizer` must be a `keras.regularizers.Regularizer`. "
            f"Received: regularizer={regularizer!r}"
        )
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"Argument `model` must be a Keras model or layer. Received: model={model!r}")
    if layers is not None and (
        isinstance(layers, str) or not all(isinstance(name, str) for name in layers)
    ):
        raise TypeError(f"Argument `layers` must be a list of layer names. Received: layers={layers!r}")
    everything = list(model._flatten_layers(include_self=True, recursive=True))
    if layers is not None:
        missing = sorted(set(layers) - {layer.name for layer in everything})
        if missing:
            raise ValueError(
                f"Argument `layers` names layers that model '{model.name}' does not have: "
                f"{missing}. Received: layers={list(layers)!r}"
            )
        everything = [  # the named layers and the layers inside them
            inner
            for layer in everything
            if layer.name in layers
            for inner in layer._flatten_layers(include_self=True, recursive=True)
        ]
    found = []
    for layer in everything:
        if isinstance(layer, keras.Model) or not layer.built:
            continue
        own = {id(w) for w in layer._trainable_variables} if hasattr(
            layer, "_trainable_variables"
        ) else None
        for variable, spec in layer_specs.prunable_weights(layer):
            if own is not None and id(variable) not in own:
                continue  # a sublayer's weight: attached at the sublayer
            found.append((layer, variable, spec))
    if not found:
        raise ValueError(f"Model '{model.name}' has no prunable weights to regularize.")
    if not isinstance(replace, bool):
        raise TypeError(f"Argument `replace` must be True or False. Received: replace={replace!r}")
    if isinstance(regularizer, GroupLasso):
        for layer, variable, _ in found:
            try:
                regularizer._check(variable)
            except ValueError as error:
                raise ValueError(
                    f"{str(error).rstrip('.')} (weight '{variable.path}' of layer '{layer.name}'); choose "
                    "weights of that rank with `layers`."
                ) from None
    held = [(layer, v) for layer, v, _ in found if getattr(v, "regularizer", None) is not None]
    if held and not replace:
        layer, variable = held[0]
        raise ValueError(
            f"Weight '{variable.path}' of layer '{layer.name}' already has the regularizer "
            f"{variable.regularizer!r} (and {len(held) - 1} other weight(s) one); a weight holds "
            "one regularizer: pass `replace=True` to replace them, or `layers` to choose others."
        )
    for layer, variable, spec in found:
        variable.regularizer = regularizer
        name = spec.path.split(".")[-1].split("/")[-1].lstrip("_")
        # the constructor argument that saves it: kernel_regularizer,
        # recurrent_regularizer (of recurrent_kernel), embeddings_regularizer
        for attribute in (f"{name}_regularizer", f"{name.replace('_kernel', '')}_regularizer"):
            if hasattr(layer, attribute):
                setattr(layer, attribute, regularizer)
                break
    for layer in model._flatten_layers(include_self=True, recursive=True):
        # MultiHeadAttention saves one regularizer for its four projections.
        if isinstance(layer, keras.layers.MultiHeadAttention) and layer.built:
            parts = (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
            if all(part.kernel.regularizer is regularizer for part in parts):
                layer._kernel_regularizer = regularizer
    return model


def regularized_variables(model):
    """`[(variable, regularizer)]` of the model's weights with a proximal
    (tfprune) regularizer."""
    found = []
    for v in model.trainable_variables:
        regularizer = getattr(v, "regularizer", None)
        if isinstance(regularizer, ReportedOnly):  # while SoftThreshold trains
            regularizer = regularizer.regularizer
        if isinstance(regularizer, _Proximal):
            found.append((v, regularizer))
    return found


class _ProximalStep(keras.constraints.Constraint):
    """The proximal step of a regularizer, after each optimizer update."""

    def __init__(self, regularizer, optimizer, inner=None):
        self.regularizer = regularizer
        self.optimizer = optimizer
        self.inner = inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        stepped = self.regularizer.proximal(w, self.optimizer.learning_rate)
        accumulated = self.optimizer.gradient_accumulation_steps
        if accumulated:  # Keras applies constraints after every micro-batch too
            due = ops.equal(ops.mod(self.optimizer._iterations.value + 1, accumulated), 0)
            return ops.where(due, stepped, ops.convert_to_tensor(w))
        return stepped


class SoftThreshold(keras.callbacks.Callback):
    """Makes `L1` and `GroupLasso` proximal: a soft-thresholding step after
    every optimizer update (see the module docstring).

    While training, each regularized weight that no pruning wrapper masks
    gets its regularizer's proximal step as a constraint (inside the compiled
    step, every backend), and its penalty is reported in the loss without a
    gradient. After training, `masks` holds each weight's zero pattern
    (elements for L1, groups for group lasso), by variable path. Keras calls
    no `on_train_end` when `fit` raises (an interrupt): the proximal steps
    then stay on the weights until the next `fit` with a `SoftThreshold`,
    which takes them off before putting its own on (one step per update).

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> _ = regularize(model, GroupLasso(0.1))
    >>> model.compile("sgd", "mse")
    >>> _ = model.fit(np.zeros((8, 4)), np.zeros((8, 3)), verbose=0,
    ...               callbacks=[SoftThreshold()])
    """

    def __init__(self):
        super().__init__()
        self.masks = {}
        self._installed = []

    def on_train_begin(self, logs=None):
        from tfprune.wrapper import collect_prunable_layers

        masked = {
            id(v) for w in collect_prunable_layers(self.model) for v, _, _ in w.pruning_vars
        }
        self._installed = []
        for variable, regularizer in regularized_variables(self.model):
            if id(variable) in masked:
                continue  # the pruning mask wins
            constraint = variable.constraint
            while isinstance(constraint, _ProximalStep):  # left by a fit that raised
                constraint = constraint.inner
            self._installed.append((variable, regularizer, constraint))
            variable.constraint = _ProximalStep(regularizer, self.model.optimizer, constraint)
            variable.regularizer = ReportedOnly(regularizer)
        # The compiled step reads constraints and losses when traced.
        self.model.train_function = None
        self.model.make_train_function()

    def on_train_end(self, logs=None):
        for variable, regularizer, constraint in self._installed:
            variable.constraint = constraint
            variable.regularizer = regularizer
            self.masks[variable.path] = ops.convert_to_numpy(regularizer.zero_mask(variable))
        self._installed = []
        self.model.train_function = None  # traced again without the proximal steps


class RegularizationWindow(keras.callbacks.Callback):
    """Applies `regularizer` only from training step `begin_step` up to (not
    including) `end_step` (-1: to the end), as Distiller's regularizer policies.

    Outside the window the weights it regularizes have no penalty and no
    proximal step. The compiled step is traced again at the window's edges
    only; the host counts the steps (no device read per step). With
    `steps_per_execution > 1`, each edge must start an execution (a
    `ValueError` at the start of training says which does not).

    Example:
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> reg = L1(0.1)
    >>> _ = regularize(model, reg)
    >>> model.compile("sgd", "mse")
    >>> _ = model.fit(np.zeros((8, 4)), np.zeros((8, 3)), batch_size=4, epochs=2, verbose=0,
    ...               callbacks=[RegularizationWindow(reg, begin_step=2)])
    >>> model.layers[0].kernel.regularizer is reg   # attached again after training
    True
    """

    def __init__(self, regularizer, begin_step=0, end_step=-1):
        super().__init__()
        for name, value in (("begin_step", begin_step), ("end_step", end_step)):
            if not checks.is_integer(value) or value < -1:
                raise ValueError(f"Argument `{name}` must be an int >= 0 (or -1). Received: {name}={value!r}")
        if not isinstance(regularizer, keras.regularizers.Regularizer):
            raise TypeError(
                "Argument `regularizer` must be a keras.regularizers.Regularizer (the one "
                f"`regularize` attached). Received: regularizer={regularizer!r}"
            )
        begin_step, end_step = int(begin_step), int(end_step)
        if begin_step < 0 or (end_step != -1 and end_step <= begin_step):
            raise ValueError(
                "Arguments `begin_step` and `end_step` must satisfy 0 <= begin_step < end_step "
                f"(or end_step=-1). Received: begin_step={begin_step}, end_step={end_step}"
            )
        self.regularizer = regularizer
        self.begin_step = begin_step
        self.end_step = end_step
        self._saved = None

    def _ours(self, value):
        if isinstance(value, ReportedOnly):
            value = value.regularizer
        return value is self.regularizer

    def on_train_begin(self, logs=None):
        self._start = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self._done = self._base = 0
        self._saved = None  # taken at the first batch, after SoftThreshold has installed
        self._check_executions()

    def _check_executions(self):
        """The host switches the window between executions: with several steps
        per execution, each edge ahead must start one (steps restart each epoch)."""
        per_execution = int(getattr(self.model, "steps_per_execution", 1) or 1)
        per_epoch = (self.params or {}).get("steps")
        if per_execution == 1:
            return
        for name, edge in (("begin_step", self.begin_step), ("end_step", self.end_step)):
            ahead = edge - self._start
            if edge == -1 or ahead <= 0:
                continue
            if (ahead % per_epoch if per_epoch else ahead) % per_execution:
                raise ValueError(
                    f"RegularizationWindow: `{name}`={edge} falls inside an execution of "
                    f"steps_per_execution={per_execution} steps (this run starts at step "
                    f"{self._start}, {per_epoch} steps an epoch); choose an edge that starts one."
                )

    def on_train_batch_begin(self, batch, logs=None):
        step = self._start + self._base + batch
        active = step >= self.begin_step and (self.end_step == -1 or step < self.end_step)
        if self._saved is None:
            self._saved = [
                (v, v.regularizer, v.constraint)
                for v in self.model.trainable_variables
                if self._ours(getattr(v, "regularizer", None))
            ]
            self._active = True
        if active != self._active:
            self._switch(active)
            self.model.train_function = None  # the step reads losses and constraints when traced
            self.model.make_train_function()

    def on_train_batch_end(self, batch, logs=None):
        self._done = self._base + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        self._base = self._done

    def _switch(self, active):
        for variable, regularizer, constraint in self._saved:
            if active:
                variable.regularizer, variable.constraint = regularizer, constraint
            else:
                variable.regularizer = None
                if isinstance(constraint, _ProximalStep):
                    variable.constraint = constraint.inner
        self._active = active

    def on_train_end(self, logs=None):
        if self._saved is not None and not self._active:
            # Only what is still switched off: a SoftThreshold that ended
            # first has restored the weights' own regularizer and constraint.
            self._saved = [s for s in self._saved if s[0].regularizer is None]
            self._switch(True)
            self.model.train_function = None  # the next fit traces its step with them
