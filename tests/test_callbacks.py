import keras
import numpy as np
import pytest
from conftest import only_backends, to_numpy
from helpers import compile_model, data, fit, keep_count, mlp, wrappers

import tfprune


@pytest.mark.parametrize("log_dir", ["", None, 3])
def test_pruning_summaries_rejects_empty_log_dir(log_dir):
    with pytest.raises(ValueError, match="log_dir"):
        tfprune.PruningSummaries(log_dir=log_dir)


@only_backends("tensorflow", "jax", "torch", reason="needs TensorFlow's tf.summary")
def test_pruning_summaries_writes_sparsity_and_threshold(tmp_path):
    pytest.importorskip("tensorflow", reason="PruningSummaries writes with tf.summary")
    pytest.importorskip("tensorboard", reason="reading event files needs tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    x, y = data((20,), n=32)
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.75, 0, frequency=1))
    )
    fit(
        model,
        x,
        y,
        epochs=2,
        callbacks=[tfprune.UpdatePruningStep(), tfprune.PruningSummaries(log_dir=str(tmp_path))],
    )
    files = list((tmp_path / "train").glob("events.out.tfevents.*"))
    assert files
    scalars = {}
    for f in files:
        acc = event_accumulator.EventAccumulator(str(f), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            import tensorflow as tf

            if not tag.endswith(("/sparsity", "/threshold")):
                continue
            scalars[tag] = [
                (e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)
            ]
    sparsity_tags = [t for t in scalars if t.endswith("/sparsity")]
    threshold_tags = [t for t in scalars if t.endswith("/threshold")]
    assert len(sparsity_tags) == 2 and len(threshold_tags) == 2
    for tag in sparsity_tags:
        assert [step for step, _ in scalars[tag]] == [4, 8]
        assert scalars[tag][-1][1] == pytest.approx(0.75, abs=1e-3)
    wrapper = wrappers(model)[0]
    threshold = float(to_numpy(wrapper.pruning_vars[0][2]))
    tag = f"{wrapper.pruning_vars[0][2].path}/threshold"
    assert scalars[tag][-1][1] == pytest.approx(threshold)


@only_backends("tensorflow", reason="backend-independent callback logic; TensorFlow writes the events")
def test_pruning_summaries_in_tfmots_custom_loop_write_at_epoch_begin(tmp_path):
    """TFMOT's guide calls `on_epoch_begin` only; a callback not yet given a
    model says so."""
    pytest.importorskip("tensorboard", reason="reading event files needs tensorboard")
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    with pytest.raises(ValueError, match=r"`PruningSummaries.on_epoch_end\(\)` was called before `set_model"):
        tfprune.PruningSummaries(log_dir=str(tmp_path / "none")).on_epoch_end(0)
    x, y = data((20,), n=8)
    model = compile_model(tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.75, 0, frequency=1)))
    step, log = tfprune.UpdatePruningStep(), tfprune.PruningSummaries(log_dir=str(tmp_path))
    for callback in (step, log):
        callback.set_model(model)
    step.on_train_begin()
    for epoch in range(2):
        log.on_epoch_begin(epoch=epoch)  # as the guide's loop: before the epoch's steps
        model.train_on_batch(x, y)
        step.on_epoch_end(epoch)
    seen = {}
    for f in (tmp_path / "train").glob("events.out.tfevents.*"):
        acc = event_accumulator.EventAccumulator(str(f), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            if tag.endswith("/sparsity"):
                seen.setdefault(tag, []).extend(float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag))
    assert len(seen) == 2 and all(values == [0.0, pytest.approx(0.75, abs=1e-3)] for values in seen.values())


def test_update_pruning_step_finds_wrappers_anywhere():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = tfprune.prune_low_magnitude(
                keras.layers.Dense(8), tfprune.ConstantSparsity(0.5, 0, frequency=1)
            )

        def call(self, x):
            return self.inner(x)

    model = compile_model(
        keras.Sequential([keras.Input((20,)), Block(), keras.layers.Dense(2)])
    )
    fit(model, *data((20,), n=16))
    found = wrappers(model)
    assert len(found) == 1 and int(to_numpy(found[0].pruning_step)) == 2
    assert int(to_numpy(found[0].pruning_vars[0][1]).sum()) == 80


def test_epoch_end_applies_masks_to_stored_weights():
    model = compile_model(
        tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.5, 0, frequency=1))
    )
    fit(model, *data((20,), n=16))
    wrapper = wrappers(model)[0]
    kernel = to_numpy(wrapper.layer.kernel)
    kernel[:] = 1.0
    wrapper.layer.kernel.assign(kernel)
    callback = tfprune.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_end(0)
    stored = to_numpy(wrapper.layer.kernel)
    np.testing.assert_array_equal(stored, to_numpy(wrapper.pruning_vars[0][1]).astype("float32"))


@pytest.mark.parametrize("missing", ["tensorboard", "tensorflow"])
def test_pruning_summaries_says_what_to_install_at_construction(missing, monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, missing, None)  # import fails
    with pytest.raises(ImportError, match=rf"{missing}.*pip install"):
        tfprune.PruningSummaries(log_dir=str(tmp_path))


@pytest.mark.parametrize("method", ["on_train_begin", "on_epoch_end"])
def test_update_pruning_step_before_set_model_says_so(method):
    with pytest.raises(ValueError, match=rf"{method}\(\)` was called before `set_model"):
        getattr(tfprune.UpdatePruningStep(), method)()


def test_pruning_step_is_minus_one_until_training_starts():
    model = tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.5, 0, frequency=1))
    assert [int(to_numpy(w.pruning_step)) for w in wrappers(model)] == [-1, -1]
    callback = tfprune.UpdatePruningStep()
    callback.set_model(model)
    callback.on_train_begin()
    assert [int(to_numpy(w.pruning_step)) for w in wrappers(model)] == [0, 0]


def test_epoch_end_masks_a_frozen_wrapper_and_fit_keeps_the_trained_ones_sparse():
    """Inside `fit` the steps keep trained wrappers' stored weights masked, so
    the epoch's end leaves them; a frozen wrapper is masked there (as TFMOT)."""
    model = tfprune.prune_low_magnitude(mlp(), tfprune.ConstantSparsity(0.5, 0, frequency=100))
    model.build((None, 20))
    tfprune.update_masks(model, sparsity=0.5)
    trained, frozen = wrappers(model)[:2]
    frozen.trainable = False
    for wrapper in (trained, frozen):
        wrapper.layer.kernel.assign(np.ones(wrapper.layer.kernel.shape, "float32"))
    frozen_kernel = frozen.layer.kernel
    masked_at = []

    class Watch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            masked_at.append(bool(np.all(to_numpy(frozen_kernel)[~to_numpy(frozen.pruning_vars[0][1])] == 0)))

    compile_model(model)
    fit(model, *data((20,), n=16), epochs=2, callbacks=[tfprune.UpdatePruningStep(), Watch()])
    assert masked_at == [False, True]  # not at train begin: at the first epoch's end
    for wrapper in (trained, frozen):
        kernel, mask = to_numpy(wrapper.layer.kernel), to_numpy(wrapper.pruning_vars[0][1])
        assert int(mask.sum()) == keep_count(mask.size, 0.5)
        assert np.all(kernel[~mask] == 0) and np.all(kernel[mask] != 0)
