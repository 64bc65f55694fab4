"""`PruneLowMagnitude`: the layer wrapper that owns pruning state.

The wrapper holds, for each prunable weight of the wrapped layer, a boolean
mask (1 byte per element) and a float32 threshold, plus one `int64`
`pruning_step`. Nothing else in tfprune holds state. During a training call it

1. advances `pruning_step` once per training step (first step is 1; a layer
   shared by several calls in one model still advances once),
2. asks the schedule `(should_prune, sparsity) = schedule(step)` and, when
   `should_prune`, recomputes every mask from the scores of the masked weights,
3. runs the wrapped layer on `weight * mask` (the mask is in the graph: pruned
   weights get no gradient).

Inside `fit` the host asks the schedule instead and picks a step compiled
with the mask update at pruning steps, without it at others
(`tfprune.updater`): no schedule and no branch in the compiled step. There
the stored weights are `weight * mask` at every step (masked when training
begins, after each update and by the constraint below), so the layer reads
them as they are: no masked copy in the forward pass. Pruned weights then
get gradients, as in TFMOT, and the constraint discards what the optimizer
does with them.

Stored weights of pruned positions are kept at exactly zero: a constraint
re-applies the mask after every optimizer update (on JAX inside `fit` only,
where the layer hands it its step's mask); on every backend the masks are
applied to the stored weights at epoch ends, at the end of `fit`, when saving
and by `strip_pruning`.

Example:
>>> import numpy as np
>>> layer = PruneLowMagnitude(keras.layers.Dense(2, name="fc"), ConstantSparsity(0.5, 0))
>>> layer.name
'prune_low_magnitude_fc'
"""

import contextlib
import inspect
import warnings
import weakref

import keras
from keras import ops
from keras.src.backend.common import stateless_scope as _stateless_scope

from tfprune import backend, granularity, selection
from tfprune import layers as layer_specs
from tfprune import pruner as pruner_lib
from tfprune import schedules as schedules_lib
from tfprune.schedules import ConstantSparsity

MISSING_CALLBACK_MESSAGE = (
    "Layer '{name}' is a pruning wrapper being trained without the "
    "`UpdatePruningStep` callback. Pass `callbacks=[tfprune.UpdatePruningStep()]` "
    "to `model.fit`; in a custom training loop call "
    "`tfprune.UpdatePruningStep().set_model(model)` and `.on_train_begin()` "
    "before the first step (see the `UpdatePruningStep` docstring)."
)


class _MaskConstraint(keras.constraints.Constraint):
    """Re-applies a mask after each optimizer update.

    On JAX the optimizer updates the weights in a scope of its own, where
    the mask variable is not part of a compiled step's state: there the
    layer hands over the mask its training step received (`step_mask`, set
    by each call inside `fit`); a step without one leaves the weight to the
    masked forward pass.
    """

    def __init__(self, mask, inner=None):
        self.mask = mask
        self.inner = inner
        self.step_mask = None

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        if backend.constraints_may_read_variables():
            return backend.masked_in_place(w, self.mask)
        mask, self.step_mask = self.step_mask, None  # used by one update only
        if mask is None:
            # Traced, or in the optimizer's own scope (JAX `fit` without
            # `jit_compile`): the mask variable cannot be read there.
            if backend.traced(w) or _stateless_scope.in_stateless_scope():
                return w
            mask = self.mask.value
        return backend.masked(w, mask)


def _attribute_refs(layer, variable):
    """Every `(owner, attribute)` of the layer tree that holds `variable`."""
    refs = []
    for owner in layer._flatten_layers(include_self=True, recursive=True):
        for name, value in list(vars(owner).items()):
            if value is variable:
                refs.append((owner, name))
    return refs


@keras.saving.register_keras_serializable(package="tfprune")
class PruneLowMagnitude(keras.layers.Wrapper):
    """Wraps a layer so that its weights are pruned during training.

    Args:
        layer: the Keras layer to prune: a built-in layer listed in
            `tfprune.layers.LAYER_SPECS`, or a layer implementing
            `PrunableLayer.get_prunable_weights()`.
        pruning_schedule: a `PruningSchedule` giving the target sparsity per
            step. Default `ConstantSparsity(0.5, 0)`.
        block_size: `(height, width)` of blocks pruned together in rank-2
            weights; `(1, 1)` prunes single weights.
        block_pooling_type: how a block is scored, `'AVG'` or `'MAX'`.
        sparsity_m_by_n: `(m, n)` for `m` zeros in every `n` consecutive
            weights along the input channel (e.g. `(2, 4)`); the pattern is
            computed once, at step `max(1, begin_step)` of the schedule.
        pruner: a `tfprune.Pruner` deciding which weights, how many and
            when (criterion, granularity, scope); it replaces the four
            arguments above. `tfprune.prune` passes one.
        **kwargs: passed to `keras.layers.Layer` (e.g. `name`).
    """

    def __init__(
        self,
        layer,
        pruning_schedule=ConstantSparsity(0.5, 0),  # noqa: B008 (TFMOT default)
        block_size=(1, 1),
        block_pooling_type="AVG",
        sparsity_m_by_n=None,
        pruner=None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                "Argument `layer` must be a `keras.layers.Layer` instance. "
                f"Received: layer={layer!r}"
            )
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped by PruneLowMagnitude."
            )
        if pruner is not None and not isinstance(pruner, pruner_lib.Pruner):
            raise TypeError(
                "Argument `pruner` must be a `tfprune.Pruner` or None. "
                f"Received: pruner={pruner!r}"
            )
        self._tfmot_arguments = pruner is None
        if pruner is not None and (
            tuple(block_size) != (1, 1) or block_pooling_type != "AVG" or sparsity_m_by_n
        ):
            raise ValueError(
                "Arguments `block_size`, `block_pooling_type` and `sparsity_m_by_n` "
                "cannot be combined with `pruner` (give the pruner a granularity). "
                f"Received: block_size={block_size!r}, block_pooling_type="
                f"{block_pooling_type!r}, sparsity_m_by_n={sparsity_m_by_n!r}"
            )
        if pruner is None:
            pruning_schedule = schedules_lib.get(pruning_schedule)
            pruner = pruner_lib.Pruner(
                pruning_schedule,
                granularity=granularity.from_tfmot_args(
                    block_size, block_pooling_type, sparsity_m_by_n
                ),
            )
            pruner.keep_ties = True
        self.block_size = tuple(int(b) for b in block_size)
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = (
            tuple(int(v) for v in sparsity_m_by_n) if sparsity_m_by_n else None
        )
        layer_specs.check_interpretable([layer], wrapped=True)  # built layers: before anything
        layer_specs.attach_get_prunable_weights(layer)  # TFMOT's make_prunable
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self._adopt_call_signature(layer)
        if getattr(layer, "_input_shape_arg", None) is not None:
            self._input_shape_arg = layer._input_shape_arg
        self.supports_masking = layer.supports_masking
        # References to variables and layers owned elsewhere are kept out of
        # Keras's tracking, or the layer's weights would be saved twice.
        self._untracked("pruner", pruner)
        self._untracked("_pruning_vars", [])
        self._untracked("_swaps", [])
        self._untracked("_probes", [])
        self._untracked("_sigmas", [])
        self._untracked("_selections", [])
        self._untracked("_criterion_state", {})
        self._untracked("_state_variables", [])
        self._collecting = False
        self._state_built = False
        # Set by UpdatePruningStep: training is allowed, and what `training=None`
        # means inside `fit` (subclassed models whose `call` has no `training`).
        self._step_callback_attached = False
        self._fit_training = False
        self._last_call_context = None
        # `pruning_step` as a Python int where the host counts steps
        # (`backend.host_counts_steps()`); None: read the variable first.
        self._host_step = None
        # Set by UpdatePruningStep inside `fit`: the host asks the schedule
        # and `_update_due` says, when a step is traced, whether that compiled
        # step updates this wrapper's masks (`tfprune.updater`).
        self._host_updates = False
        self._update_due = False

    # ------------------------------------------------------------------ build
    def _adopt_call_signature(self, layer):
        """Takes the wrapped layer's call signature (plus `training`).

        Keras binds call arguments to this signature, so a wrapper is called
        exactly as its layer: `wrapper(query=q, value=v)`, masks and
        call-context arguments included.
        """
        signature = layer._call_signature
        params = list(signature.parameters.values())
        if "training" not in signature.parameters:
            training = inspect.Parameter(
                "training", inspect.Parameter.KEYWORD_ONLY, default=None
            )
            if params and params[-1].kind == inspect.Parameter.VAR_KEYWORD:
                params.insert(len(params) - 1, training)
            else:
                params.append(training)
        self._call_signature = signature.replace(parameters=params)
        self.call_signature_parameters = [p.name for p in params]
        self._call_has_training_arg = True
        self._call_has_mask_arg = "mask" in self.call_signature_parameters
        self._call_context_args = set(layer._call_context_args) | {"training"}
        self._call_has_context_arg = {
            arg: arg in self.call_signature_parameters for arg in self._call_context_args
        }
        self._convert_input_args = layer._convert_input_args
        self._allow_non_tensor_positional_args = layer._allow_non_tensor_positional_args

    def __call__(self, *args, **kwargs):
        if not self._state_built:
            inner = {k: v for k, v in kwargs.items() if k != "training"}
            self._build_layer(args, inner)
        return super().__call__(*args, **kwargs)

    def _build_layer(self, args, kwargs):
        """Builds the wrapped layer as its own first call would, then the state.

        A symbolic call on the arguments' shapes goes through the layer's own
        `__call__`, so every argument counts (`MultiHeadAttention(query=q,
        value=v)`), sublayers built only when called (a custom block without
        `build`) are built, and the layer records the build config it would
        record anyway. It runs outside of this wrapper's own output-spec
        tracing, where no state may be created.
        """
        if not layer_specs.fully_built(self.layer):

            def symbolic(x):
                if isinstance(x, keras.KerasTensor) or not hasattr(x, "shape"):
                    return x
                dtype = keras.backend.standardize_dtype(x.dtype)
                return keras.KerasTensor(tuple(x.shape), dtype=dtype)

            args, kwargs = keras.tree.map_structure(symbolic, (args, kwargs))
            self.layer(*args, **kwargs)
        if layer_specs.fully_built(self.layer):
            self._create_pruning_state_unlocked()

    def build(self, input_shape=None):
        if not self.layer.built and input_shape is not None:
            self.layer.build(input_shape)
        if layer_specs.fully_built(self.layer):
            self._create_pruning_state()
        # Otherwise (sublayers built on the layer's first call) the state is
        # created on the first call.

    def get_build_config(self):
        config = super().get_build_config() or {}
        if self.layer.built:
            config["layer_build_config"] = self.layer.get_build_config()
        return config

    def build_from_config(self, config):
        layer_config = config.get("layer_build_config")
        if layer_config and not self.layer.built:
            self.layer.build_from_config(layer_config)
        if not self.built:
            self.build(config.get("input_shape"))
            self.built = True
        elif not self._state_built and layer_specs.fully_built(self.layer):
            self._create_pruning_state_unlocked()

    def _create_pruning_state_unlocked(self):
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self._create_pruning_state()
        finally:
            if locked:
                self._tracker.lock()

    def _create_pruning_state(self):
        if self._state_built:
            return
        layer_specs.check_interpretable([self.layer], wrapped=True)
        weights = self.pruner.weights(self.layer)
        self.pruner.validate([w for w, _ in weights], [s for _, s in weights])
        pruning_vars = []
        for variable, spec in weights:
            mask = self.add_weight(
                name=f"{spec.name}_mask",
                shape=variable.shape,
                initializer="ones",
                dtype="bool",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
            threshold = self.add_weight(
                name=f"{spec.name}_threshold",
                shape=(),
                initializer="zeros",
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="only_first_replica",
            )
            pruning_vars.append((variable, mask, threshold))
        self._untracked("_pruning_vars", pruning_vars)
        # Held in an attribute so that TensorFlow's object graph reaches them
        # (tf.saved_model.save exports only tracked variables).
        self._mask_variables = [v for _, mask, t in pruning_vars for v in (mask, t)]
        self.pruning_step = self.add_weight(
            name="pruning_step",
            shape=(),
            # -1 until training starts, as in TFMOT (`UpdatePruningStep` sets 0).
            initializer=keras.initializers.Constant(-1),
            dtype=backend.step_dtype(),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
        )
        specs = [spec for _, spec in weights]
        self._untracked("_specs", specs)
        state, selections, sigmas = self.pruner.build_state(
            self, [w for w, _ in weights], specs
        )
        self._untracked("_criterion_state", state)
        self._untracked("_selections", selections)
        self._untracked("_sigmas", sigmas)
        if self.pruner.criterion.needs_gradients:
            # Keras writes each weight's raw gradient into its probe.
            self._untracked(
                "_probes",
                [
                    self.add_weight(
                        name=f"{spec.name}_gradient",
                        shape=variable.shape,
                        initializer="zeros",
                        dtype=variable.dtype,
                        trainable=True,
                        overwrite_with_gradient=True,
                    )
                    for variable, spec in weights
                ],
            )
        self._untracked(
            "_state_variables",
            [v for v in keras.tree.flatten(state) if isinstance(v, keras.Variable)]
            + list(sigmas)
            + list(self._probes),
        )
        swaps = []
        for variable, _, _ in self.pruning_vars:
            refs = _attribute_refs(self.layer, variable)
            if not refs:
                warnings.warn(
                    f"Layer '{self.layer.name}': weight '{variable.path}' is not "
                    "held in an attribute, so the mask is applied to the stored "
                    "weight before each call instead of inside the graph.",
                    stacklevel=2,
                )
            swaps.append(refs)
        self._untracked("_swaps", swaps)
        if not self.forward_only:
            for variable, mask, _ in self.pruning_vars:
                if not isinstance(variable.constraint, _MaskConstraint):
                    variable.constraint = _MaskConstraint(mask, variable.constraint)
        self._state_built = True

    @property
    def pruning_schedule(self):
        return self.pruner.pruning_schedule

    @property
    def forward_only(self):
        """Masks apply to the forward pass only (splicing): stored weights stay."""
        return self.pruner.scope.forward_only

    def _set_pruner(self, pruner):
        self._untracked("pruner", pruner)

    def _scoring_values(self):
        """The weights the criterion scores: masked, or stored ones when masks
        apply to the forward pass only."""
        if self.forward_only:
            return [backend.read(w) for w, _, _ in self.pruning_vars]
        return [backend.masked(w.value, mask.value) for w, mask, _ in self.pruning_vars]

    def _element_scores(self, index, score):
        """`selection.ElementScores` of `score` over pruned weight `index`, as
        `_scoring_values` gives it (masked unless masks are forward-only)."""
        weight, mask, _ = self.pruning_vars[index]
        if self.forward_only:
            return selection.ElementScores(score, (backend.read(weight),))
        return selection.ElementScores(selection.of_masked(score), (weight.value, mask.value))

    # ------------------------------------------------------------------- call
    def call(self, *args, training=None, **kwargs):
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        if not self._state_built:
            output = self.layer(*args, **kwargs)  # builds the layer
            self._create_pruning_state_unlocked()
            if not self._training_call(training):
                return output
        training_call = self._training_call(training)
        constrained = training_call and self._constrained_in_fit()
        stored = constrained and not self._probes
        if training_call:
            if not self._step_callback_attached:
                raise ValueError(MISSING_CALLBACK_MESSAGE.format(name=self.name))
            if self._advance_step() and self.pruning_vars:
                if not self._host_updates:
                    self.pruner.on_step(self)
                elif self._update_due:
                    self.pruner.on_step(self, due=True)
                    if stored:
                        self.apply_mask()  # the new zeros, before the forward pass
        if constrained and not backend.constraints_may_read_variables():
            for weight, mask, _ in self.pruning_vars:
                weight.constraint.step_mask = mask.value  # this step's mask
        if stored:
            outputs = self.layer(*args, **kwargs)
        else:
            with self._masked_weights():
                outputs = self.layer(*args, **kwargs)
        if self.pruning_vars and (training_call or self._collecting):
            self.pruner.observe(self, outputs, training_call)
        return outputs

    @property
    def _trained(self):
        """Whether training changes this layer: the wrapper and the wrapped
        layer are both trainable. A frozen layer keeps its masks: pruning
        weights the optimizer cannot adjust would only cost accuracy."""
        return self.trainable and self.layer.trainable

    def _training_call(self, training):
        """Whether this call prunes: a training call of a `_trained` layer."""
        if not self._trained:
            return False
        if training is None:
            return self._fit_training
        return bool(training)

    def _step_token(self):
        """An object that lives exactly as long as one forward pass.

        Under JAX `fit` the model runs in one `StatelessScope` (its layers each
        open their own call context); elsewhere the outermost call context
        spans the forward pass.
        """
        scope = _stateless_scope.get_stateless_scope()
        return scope if scope is not None else self._get_call_context()

    def _advance_step(self):
        """Advances `pruning_step` once per forward pass of the model."""
        context = self._step_token()
        last = self._last_call_context
        if last is not None and last() is context:
            return False
        try:
            self._untracked("_last_call_context", weakref.ref(context))
        except TypeError:  # pragma: no cover
            self._untracked("_last_call_context", None)
        if self._host_updates:  # the host decides; the step is >= 0 already
            backend.increment(self.pruning_step)
            return True
        # A step of -1 (state built after `on_train_begin`) starts at 0 too.
        if backend.host_counts_steps():
            if self._host_step is None:
                self._host_step = max(int(ops.convert_to_numpy(self.pruning_step)), 0)
                self.pruning_step.assign(self._host_step)
            self._host_step += 1
            backend.increment(self.pruning_step)  # a device op: no host data
        else:
            self._host_step = None
            self.pruning_step.assign(ops.maximum(self.pruning_step, 0) + 1)
        return True

    def _stored_weights_masked(self):
        """Whether the stored weights equal the masked ones at every training
        step, so the layer can read them as they are.

        Inside `fit` (the host schedules the updates), the mask constraint
        zeroes pruned weights after every optimizer update,
        `UpdatePruningStep` masks them when training begins, and a pruning
        step masks them after its update (on JAX the host updates masks and
        weights between two steps, `tfprune.updater`). Pruned
        weights then get gradients, as in TFMOT, but the constraint discards
        what the optimizer does with them; criteria that read gradients
        (probes) keep the masked pass, and the constraint all the same.
        """
        return self._constrained_in_fit() and not self._probes

    def _constrained_in_fit(self):
        """Whether the host schedules the updates (inside `fit`) and the mask
        constraint zeroes pruned weights after every optimizer update."""
        return self._host_updates and all(
            isinstance(w.constraint, _MaskConstraint) for w, _, _ in self.pruning_vars
        )

    @contextlib.contextmanager
    def _masked_weights(self):
        """Runs the wrapped layer on `weight * mask` instead of `weight`."""
        saved = []
        probes = self._probes or [None] * len(self._swaps)
        try:
            for (weight, mask, _), refs, probe in zip(self.pruning_vars, self._swaps, probes):
                value = weight.value  # autocast under mixed precision
                masked = backend.masked(value, mask.value)
                if self.forward_only:  # gradients reach pruned weights too
                    masked = value + ops.stop_gradient(masked - value)
                if probe is not None:  # zero, whose gradient is dL/d(masked)
                    probe_value = probe.value
                    masked = masked + (probe_value - ops.stop_gradient(probe_value))
                if not refs:
                    weight.assign(backend.masked(weight.value, mask.value))
                for owner, name in refs:
                    saved.append((owner, name, vars(owner)[name]))
                    object.__setattr__(owner, name, masked)
            yield
        finally:
            for owner, name, original in reversed(saved):
                object.__setattr__(owner, name, original)

    # ---------------------------------------------------------------- helpers
    def _untracked(self, name, value):
        object.__setattr__(self, name, value)

    @property
    def pruning_vars(self):
        """`[(weight, mask, threshold)]` for each pruned weight (as in TFMOT)."""
        return list(self._pruning_vars)

    def apply_mask(self):
        """Sets the stored pruned weights to exactly zero: `w <- w * mask`."""
        for weight, mask, _ in self.pruning_vars:
            weight.assign(backend.masked_in_place(weight.value, mask.value))

    def release(self):
        """`apply_mask`, then the weights get their own constraints back: the
        wrapped layer, returned, is a plain layer again (`strip_pruning` in place)."""
        self.apply_mask()
        for weight, _, _ in self.pruning_vars:
            if isinstance(weight.constraint, _MaskConstraint):
                weight.constraint = weight.constraint.inner
        return self.layer

    def keep_stored_weights_sparse(self):
        """`apply_mask`, except where masks apply to the forward pass only."""
        if not self.forward_only:
            self.apply_mask()

    def importance_scores(self):
        """The criterion's current scores of each pruned weight (any step).

        Scores are what the next mask update ranks; they may change every
        step while the masks (`pruning_vars`) change only at pruning steps.
        """
        if not self._state_built:
            return []
        return self.pruner.criterion.scores(self._scoring_values(), self._criterion_state)

    @property
    def prunable_weights(self):
        return [w for w, _, _ in self.pruning_vars]

    def compute_output_spec(self, *args, **kwargs):
        # Masks change values, never shapes or dtypes: ask the layer.
        if not self.layer._call_has_training_arg:
            kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._host_step = None  # the loaded step is read again on the next step

    def save_own_variables(self, store):
        if self._state_built:
            self.keep_stored_weights_sparse()  # a saved file is sparse
        super().save_own_variables(store)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(
                    self.pruning_schedule
                ),
                "block_size": self.block_size,
                "block_pooling_type": self.block_pooling_type,
                "sparsity_m_by_n": self.sparsity_m_by_n,
            }
        )
        if not self._tfmot_arguments:
            config["pruner"] = keras.saving.serialize_keras_object(self.pruner)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(
            config.pop("layer"), custom_objects=custom_objects
        )
        pruner = config.pop("pruner", None)
        if isinstance(pruner, dict):
            config["pruner"] = keras.saving.deserialize_keras_object(
                pruner, custom_objects=custom_objects
            )
        schedule = config.pop("pruning_schedule")
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(
                schedule, custom_objects=custom_objects
            )
        return cls(layer, pruning_schedule=schedule, **config)


def collect_prunable_layers(model):
    """Every `PruneLowMagnitude` in the layer tree of `model` (any depth)."""
    if isinstance(model, PruneLowMagnitude):
        return [model]
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, PruneLowMagnitude)
    ]
