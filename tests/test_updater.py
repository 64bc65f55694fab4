"""Mask updates scheduled by the host inside `fit` (`tfprune.updater`)."""

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import compile_model, data, fit, keep_count, mlp, step_of, wrappers

import tfprune
from tfprune import updater


def _model(schedule):
    keras.utils.set_random_seed(3)
    model = mlp()
    model.layers[1].rate = 0.0  # no dropout: two runs see the same steps
    return compile_model(tfprune.prune_low_magnitude(model, schedule), keras.optimizers.SGD(0.05))


def _masks(model):
    return [to_numpy(m).copy() for w in wrappers(model) for _, m, _ in w.pruning_vars]


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append(_masks(self.model))


SCHEDULE = tfprune.PolynomialDecay(0.2, 0.8, begin_step=0, end_step=6, power=1, frequency=3)


def test_fit_and_the_in_graph_step_give_the_same_masks_at_the_same_steps():
    x, y = data((20,), n=56)  # 7 steps of 8
    by_fit = _model(SCHEDULE)
    recorder = _Recorder()
    fit(by_fit, x, y, shuffle=False, callbacks=[tfprune.UpdatePruningStep(), recorder])

    by_step = _model(SCHEDULE)  # the same weights; the step decides in the graph
    callback = tfprune.UpdatePruningStep()
    callback.set_model(by_step)
    callback.on_train_begin()
    assert not any(w._host_updates for w in wrappers(by_step))
    stepped = []
    for start in range(0, 56, 8):
        by_step.train_on_batch(x[start : start + 8], y[start : start + 8])
        stepped.append(_masks(by_step))
    callback.on_epoch_end(batch=-1)  # the custom-loop idiom: stored weights sparse

    assert all(w._host_updates for w in wrappers(by_fit))
    kept = [[int(m.sum()) for m in step] for step in recorder.masks]
    size = 20 * 16
    # Updates at steps 3 and 6 only (sparsity 0.5 and 0.8 there).
    assert [k[0] for k in kept] == [size, size] + [keep_count(size, 0.5)] * 3 + [
        keep_count(size, 0.8)
    ] * 2
    for a, b in zip(recorder.masks, stepped):
        for mask_a, mask_b in zip(a, b):
            np.testing.assert_array_equal(mask_a, mask_b)
    for a, b in zip(by_fit.get_weights(), by_step.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Two compiled steps: plain, and with both layers' updates; on JAX the
    # updates run between two plain steps.
    expected = [(), (0, 1)] if keras.backend.backend() != "jax" else [()]
    assert sorted(updater.compiled_steps(by_fit)) == expected


def test_steps_are_kept_across_fits_and_dropped_on_recompile():
    x, y = data((20,), n=24)
    model = _model(tfprune.ConstantSparsity(0.5, 0, frequency=2))
    fit(model, x, y)
    steps = updater.compiled_steps(model)
    fit(model, x, y)
    assert updater.compiled_steps(model) == steps  # nothing traced again
    compile_model(model, keras.optimizers.Adam(1e-3))
    fit(model, x, y, epochs=2)
    assert all(a is not b for a, b in zip(updater.compiled_steps(model).values(), steps.values()))
    for w in wrappers(model):
        assert step_of(w) == 12
        for _, mask, _ in w.pruning_vars:
            assert int(to_numpy(mask).sum()) == keep_count(mask.shape[0] * mask.shape[1], 0.5)


def test_a_custom_loop_after_fit_updates_in_the_step():
    x, y = data((20,), n=16)
    model = _model(tfprune.ConstantSparsity(0.5, 0, frequency=4))
    fit(model, x, y)  # steps 1-2 by fit: no update yet
    assert all(int(m.sum()) == m.size for m in _masks(model))
    callback = tfprune.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    model.train_on_batch(x[:8], y[:8])  # step 3
    assert all(int(m.sum()) == m.size for m in _masks(model))
    model.train_on_batch(x[8:], y[8:])  # step 4: the step updates the masks itself
    assert [int(m.sum()) for m in _masks(model)] == [keep_count(320, 0.5), keep_count(48, 0.5)]


def test_fit_masks_stored_weights_before_its_first_step():
    """Inside `fit` layers may read their stored weights as they are
    (TensorFlow, PyTorch): pruned weights made non-zero outside training are
    masked again before the first step, so training sees the masked model."""
    x, y = data((20,), n=8)
    model = _model(tfprune.ConstantSparsity(0.5, begin_step=1, frequency=100))
    fit(model, x, y)  # step 1: masks at 0.5
    masks = _masks(model)
    assert int(masks[0].sum()) == keep_count(320, 0.5)
    kernel = wrappers(model)[0].layer.kernel
    kernel.assign(np.ones(kernel.shape, "float32"))  # pruned positions non-zero
    expected = model.evaluate(x, y, verbose=0)  # inference masks in the graph
    compile_model(model, keras.optimizers.SGD(0.0))
    history = fit(model, x, y, shuffle=False)  # step 2: no update, weights kept
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-6)
    stored = to_numpy(kernel)
    assert np.all(stored[~masks[0]] == 0) and np.all(stored[masks[0]] == 1)


@pytest.mark.parametrize("criterion", [None, "taylor", "movement"])
def test_inside_fit_pruned_weights_are_zero_after_every_step(criterion):
    """The mask constraint zeroes pruned weights after each optimizer update
    with the mask its step used (on JAX the layer hands it over, and masks
    change between steps): Adam's momentum would move them otherwise. So do
    criteria that read gradients, whose forward pass stays masked."""
    x, y = data((20,), n=56)  # 7 steps of 8; updates at steps 3 and 6
    keras.utils.set_random_seed(3)
    model = mlp()
    model.layers[1].rate = 0.0
    if criterion is None:
        model = tfprune.prune_low_magnitude(model, SCHEDULE)
    else:
        model = tfprune.prune(model, SCHEDULE, criterion=criterion)
    model = compile_model(model, keras.optimizers.Adam(0.05))
    seen = []

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            getattr(self.model, "jax_state_sync", lambda: None)()  # JAX: state to variables
            seen.append(
                [
                    (int(to_numpy(mask).sum()), float(np.abs(to_numpy(w)[~to_numpy(mask)]).max(initial=0)))
                    for layer in wrappers(self.model)
                    for w, mask, _ in layer.pruning_vars
                ]
            )

    fit(model, x, y, shuffle=False, callbacks=[tfprune.UpdatePruningStep(), Check()])
    size = 20 * 16
    kept = [keep_count(size, s) for s in (0.2, 0.2, 0.5, 0.5, 0.5, 0.8, 0.8)]
    assert [step[0][0] for step in seen] == [size, size] + kept[2:]
    assert all(largest == 0.0 for step in seen for _, largest in step)


class _EveryThird(tfprune.ConstantSparsity):
    """A subclass deciding its own pruning steps: the host must ask it."""

    def __call__(self, step):
        return self._should_prune_in_step(step, 1, -1, 3), super().__call__(step)[1]


def _host_due_steps(pruner, start, horizon):
    wrapper = type("W", (), {})()
    wrapper.pruner, wrapper._state_built = pruner, True
    wrapper.pruning_step = np.int64(start)
    wrapper.pruning_vars = [None]
    schedule = updater.HostSchedule([wrapper])
    return [step for step in range(start + 1, horizon) if schedule.next_step() == (0,)]


def test_a_due_update_without_statistics_keeps_every_mask_on_every_backend():
    """Taylor scores have no statistics before the first step's gradient
    reaches them (they lag by one step): the update due then keeps every
    mask, whether it runs in the step or between steps (JAX, where the
    update decides it itself rather than the host reading it). With a
    global ranking, which keeps exactly `k`, running it would keep half."""
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    schedule = tfprune.ConstantSparsity(0.5, 0, frequency=1)
    pruned = tfprune.prune(model, schedule, criterion="taylor", scope="global")
    x, y = data((6,), n=32, classes=4)
    compile_model(pruned, keras.optimizers.SGD(0.01))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            (layer,) = wrappers(self.model)
            statistics = to_numpy(layer._criterion_state["acc"][0])
            seen.append((int(to_numpy(layer.pruning_vars[0][1]).sum()), bool(np.any(statistics))))

    fit(pruned, x, y, callbacks=[tfprune.UpdatePruningStep(), Record()])  # 4 steps
    assert seen == [(24, False), (24, True), (12, True), (12, True)]


def test_the_host_schedule_skips_to_each_update_as_asking_every_step_would():
    schedules = [
        tfprune.ConstantSparsity(0.5, begin_step=7, frequency=5),
        tfprune.ConstantSparsity(0.5, begin_step=4, end_step=31, frequency=9),
        tfprune.PolynomialDecay(0.1, 0.8, begin_step=3, end_step=40, frequency=6),
        tfprune.ExponentialDecay(0.9, 0.2, begin_step=0, end_step=50, frequency=7),
        tfprune.AGP(0.8, begin_step=2, end_step=45, frequency=10),  # last event 42
        _EveryThird(0.5, begin_step=0),
    ]
    for schedule in schedules:
        for pruner in (
            tfprune.Pruner(pruning_schedule=schedule),
            tfprune.Pruner(pruning_schedule=schedule, granularity="m_by_n"),
        ):
            expected_skip = not isinstance(schedule, _EveryThird) or pruner.granularity.pattern
            assert (pruner.next_update(0) is not None) == bool(expected_skip)
            for start in (0, 4, 20, 60):
                asked = [s for s in range(start + 1, 80) if bool(pruner.decision(s)[0])]
                assert _host_due_steps(pruner, start, 80) == asked, (schedule, start)
    assert _host_due_steps(tfprune.Pruner(pruning_schedule=schedules[4]), 0, 80) == [
        2, 12, 22, 32, 42
    ]
