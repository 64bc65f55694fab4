"""Callbacks: `UpdatePruningStep` (required to train) and `PruningSummaries`.

Example:
>>> callbacks = [UpdatePruningStep()]   # model.fit(x, y, callbacks=callbacks)
"""

import os

import keras
import numpy as np

from tfprune import structured
from tfprune import updater as updater_lib
from tfprune.wrapper import collect_prunable_layers


def _check_model(callback, method):
    if getattr(callback, "_model", None) is None:
        raise ValueError(
            f"`{type(callback).__name__}.{method}()` was called before "
            "`set_model(model)`. `model.fit` calls it; in a custom training loop "
            f"call `callback.set_model(model)` before `{method}()`."
        )


class UpdatePruningStep(keras.callbacks.Callback):
    """Enables pruning during training and keeps stored weights sparse.

    With this callback, every `PruneLowMagnitude` wrapper anywhere in the
    model's layer tree advances its `pruning_step` once per training step
    (inside the compiled step, so `steps_per_execution > 1` counts every step)
    and updates its masks as its schedule says. Inside `fit` the callback
    asks the schedules on the host before each step and runs a step compiled
    with the mask updates at pruning steps only, a plain one otherwise
    (`tfprune.updater`); in custom loops and with `steps_per_execution > 1`
    the step decides in the graph. At each epoch end and at the end of training the masks are
    applied to the stored weights.

    Training a pruned model without it raises a `ValueError`.

    Custom training loops use the same calls as with TFMOT:

    ```python
    step_callback = tfprune.UpdatePruningStep()
    step_callback.set_model(model)
    step_callback.on_train_begin()          # once, before the first step
    for x, y in dataset:
        step_callback.on_train_batch_begin(batch=-1)   # optional, a no-op
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))  # advances the step
        ...apply gradients...
    step_callback.on_epoch_end(batch=-1)    # writes the masks into the weights
    ```
    """

    def __init__(self):
        super().__init__()
        self.prunable_layers = []
        self._training = False
        self._schedule = None

    def _set_training(self, value):
        for layer in self.prunable_layers:
            layer._fit_training = value

    def on_train_begin(self, logs=None):
        _check_model(self, "on_train_begin")
        self.prunable_layers = collect_prunable_layers(self.model)
        for layer in self.prunable_layers:
            # A new wrapper's step is -1 (as in TFMOT): training starts at 0.
            if layer._state_built and int(keras.ops.convert_to_numpy(layer.pruning_step)) < 0:
                layer.pruning_step.assign(0)
        retrace = any(not layer._step_callback_attached for layer in self.prunable_layers)
        # Wrappers of one pruner act together (a global threshold).
        retrace = updater_lib.bind(self.prunable_layers) or retrace
        structured.bind_model(self.model, self.prunable_layers)
        host = self._host_decides()
        for layer in self.prunable_layers:
            layer._step_callback_attached = True
            layer._host_step = None  # read `pruning_step` again (it may have been set)
            retrace = retrace or layer._host_updates != host
            layer._host_updates = host
        self._schedule = self._variants = None
        if host:
            trained = [layer for layer in self.prunable_layers if layer._trained]
            for layer in trained:
                layer.keep_stored_weights_sparse()  # read as they are in the steps
            self._schedule = updater_lib.HostSchedule(trained)
            self._variants = updater_lib.StepVariants(self.model, self._schedule, fresh=retrace)
        elif retrace and getattr(self.model, "compiled", False):
            # A train function traced before (without this callback, or with
            # the host's kind of update) must be traced again.
            updater_lib.forget(self.model)
            self.model.make_train_function(force=True)
        self._training = True
        self._set_training(True)

    def _host_decides(self):
        """Whether the host schedules the mask updates (in `fit`).

        `fit` gives its callbacks their `params` and calls
        `on_train_batch_begin` before every step, unless one call runs several
        steps (`steps_per_execution > 1`); wrappers built on their first call
        have no state to update yet. Elsewhere the step updates the masks.
        """
        steps_per_execution = getattr(self.model, "steps_per_execution", 1)
        return (
            bool(self.params)
            and isinstance(steps_per_execution, int)
            and steps_per_execution == 1
            and all(layer._state_built for layer in self.prunable_layers)
        )

    def on_train_batch_begin(self, batch, logs=None):
        """Picks the compiled step for the coming step: with the mask updates
        due at it, or plain (inside `fit`, `tfprune.updater`).

        In a custom training loop it may be called before each step, as with
        TFMOT, or not at all: the step itself updates the masks there.
        """
        if getattr(self, "_variants", None) is not None:
            self._variants.select(self._schedule.next_step())

    def on_test_begin(self, logs=None):
        self._set_training(False)

    def on_test_end(self, logs=None):
        self._set_training(self._training)

    def on_predict_begin(self, logs=None):
        self._set_training(False)

    def on_predict_end(self, logs=None):
        self._set_training(self._training)

    def on_epoch_end(self, epoch=None, logs=None, batch=None):
        # `batch` is accepted for TFMOT's custom-loop idiom on_epoch_end(batch=-1).
        _check_model(self, "on_epoch_end")
        for layer in self.prunable_layers:
            if not self._kept_sparse_by_steps(layer):
                layer.keep_stored_weights_sparse()

    def _kept_sparse_by_steps(self, layer):
        """Whether `fit`'s steps keep the stored weights of `layer` masked
        (`PruneLowMagnitude._stored_weights_masked`: the mask constraint after
        every optimizer update, the updates themselves); masking them at an
        epoch's end would then change nothing."""
        return self._schedule is not None and layer._trained and layer._stored_weights_masked()

    def on_train_end(self, logs=None):
        for layer in self.prunable_layers:
            layer.keep_stored_weights_sparse()
        self._training = False
        self._set_training(False)
        self._schedule = self._variants = None  # the steps of this `fit` are over


def _pruning_logs(model):
    """Sparsity of every pruning mask, regularized weight and L0 gate set.

    Zeros from a proximal regularizer and closed gates count as pruned.
    """
    from tfprune import l0, regularizers

    logs = {}
    masked = set()
    for layer in collect_prunable_layers(model):
        for weight, mask, threshold in layer.pruning_vars:
            masked.add(id(weight))
            mask_value = keras.ops.convert_to_numpy(mask)
            logs[f"{mask.path}/sparsity"] = float(1.0 - np.mean(mask_value))
            logs[f"{threshold.path}/threshold"] = float(
                keras.ops.convert_to_numpy(threshold)
            )
    for variable, _ in regularizers.regularized_variables(model):
        if id(variable) not in masked:
            value = keras.ops.convert_to_numpy(variable)
            logs[f"{variable.path}/sparsity"] = float(np.mean(value == 0))
    for gate in l0.gates_of(model):
        logs[f"{gate.log_alpha.path}/sparsity"] = float(1.0 - np.mean(gate.open_channels()))
    return logs


def _check_summary_writer():
    """Raises `ImportError` now if summaries could not be written later."""
    missing = []
    for module in ("tensorflow", "tensorboard"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(
            "`PruningSummaries` writes TensorBoard event files, which needs "
            f"{' and '.join(missing)} (on every Keras backend); "
            f"{' and '.join(missing)} could not be imported. Install them with "
            "`pip install \"tfprune[tensorflow]\"` (or `pip install tensorflow tensorboard`)."
        )


class PruningSummaries(keras.callbacks.TensorBoard):
    """TensorBoard scalars of each mask's sparsity and threshold.

    Writes `<mask path>/sparsity` and `<threshold path>/threshold` for every
    pruned weight at each epoch end, at the optimizer's iteration count, beside
    the usual `TensorBoard` logs. In a custom training loop that calls only
    `on_epoch_begin` (TFMOT's guide does), it writes there. Needs TensorFlow
    and TensorBoard (`pip install tfprune[tensorflow]`).

    Args:
        log_dir: directory of the event files, a non-empty string.
        update_freq: passed to `keras.callbacks.TensorBoard`.
        **kwargs: passed to `keras.callbacks.TensorBoard`.
    """

    def __init__(self, log_dir, update_freq="epoch", **kwargs):
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise ValueError(
                "Argument `log_dir` must be a non-empty string. "
                f"Received: log_dir={log_dir!r}"
            )
        _check_summary_writer()
        super().__init__(log_dir=os.fspath(log_dir), update_freq=update_freq, **kwargs)
        self._fitting = False  # inside `fit` (between its train begin and end)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._fitting = True

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._fitting = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._fitting:
            return super().on_epoch_begin(epoch, logs)
        _check_model(self, "on_epoch_begin")
        self._write()  # a custom loop: this is its one call per epoch

    def on_epoch_end(self, epoch, logs=None):
        _check_model(self, "on_epoch_end")
        if logs is not None:
            super().on_epoch_end(epoch, logs)
        self._write()

    def _write(self):
        import tensorflow as tf

        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        with self._train_writer.as_default():
            for name, value in _pruning_logs(self.model).items():
                tf.summary.scalar(name, value, step=step)
        self._train_writer.flush()
