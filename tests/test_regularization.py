"""Sparsity by regularization: L1 / group lasso with soft thresholding, L0 gates,
network slimming."""

import json
import math

import keras
import numpy as np
import pytest
from conftest import SAME_PATH_ON_JAX, to_numpy

import tfprune
from tfprune import l0
from tfprune.regularizers import L1, GroupLasso


def dense_model(units=4, inputs=3, regularizer=None):
    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(units, kernel_regularizer=regularizer, name="d")]
    )


@SAME_PATH_ON_JAX
# ------------------------------------------------------------- penalties
@pytest.mark.parametrize(
    "granularity, axis", [("filter", -1), ("channel", -2), ("row", 0), ("column", 1)]
)
def test_group_lasso_penalty_is_the_closed_form(rng, granularity, axis):
    w = rng.normal(size=(5, 3)).astype("float32")
    w[:, 1] = 0.0
    reg = GroupLasso(0.3, granularity=granularity)
    other = 1 - (axis % 2)
    norms = np.sqrt((w.astype("float64") ** 2).sum(axis=other))
    expected = 0.3 * math.sqrt(w.shape[other]) * norms.sum()
    assert float(to_numpy(reg(w))) == pytest.approx(expected, rel=1e-6)
    assert float(to_numpy(L1(0.2)(w))) == pytest.approx(0.2 * np.abs(w).sum(), rel=1e-6)


def test_bad_regularizer_arguments():
    with pytest.raises(ValueError, match=r"strength=-1"):
        L1(-1)
    with pytest.raises(ValueError, match=r"granularity='block'"):
        GroupLasso(0.1, granularity="block")
    with pytest.raises(ValueError, match="needs a weight of rank 2"):
        GroupLasso(0.1, granularity="row")(np.zeros((2, 2, 2), "float32"))
    with pytest.raises(TypeError, match=r"`model` must be a Keras model or layer. Received: model='m'"):
        tfprune.gate_report("m")
    with pytest.raises(TypeError, match=r"`model` must be a pruned Keras model. Received: model='m'"):
        tfprune.collect_statistics("m", [np.zeros((1, 2))])


@SAME_PATH_ON_JAX
def test_regularizers_round_trip_through_keras_saving(tmp_path):
    model = dense_model()
    tfprune.regularize(model, GroupLasso(0.05, granularity="column"))
    path = tmp_path / "reg.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    reg = loaded.get_layer("d").kernel_regularizer
    assert isinstance(reg, GroupLasso) and reg.get_config() == {
        "strength": 0.05,
        "granularity": "column",
    }
    assert loaded.get_layer("d").kernel.regularizer is not None


# ------------------------------------------------------ proximal steps
def fit_once(model, x, y, lr, callbacks=()):
    model.compile(keras.optimizers.SGD(lr), "mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=list(callbacks))


def test_soft_threshold_zeroes_exactly_the_groups_under_the_threshold():
    # Zero inputs: the data gives the kernel no gradient, so one step is the
    # proximal step alone: W_g <- max(0, 1 - lr*lam*sqrt(|g|)/||W_g||) W_g.
    model = dense_model(units=4, inputs=3, regularizer=GroupLasso(0.5))
    kernel = np.array(
        [[0.1, 1.0, 0.0, -0.2], [0.1, 2.0, 0.0, 0.1], [0.1, 2.0, 0.0, 0.1]], "float32"
    )
    model.get_layer("d").set_weights([kernel, np.zeros(4, "float32")])
    x, y = np.zeros((4, 3), "float32"), np.zeros((4, 4), "float32")
    callback = tfprune.SoftThreshold()
    fit_once(model, x, y, lr=0.1, callbacks=[callback])
    threshold = 0.1 * 0.5 * math.sqrt(3)  # 0.0866
    norms = np.linalg.norm(kernel.astype("float64"), axis=0)  # 0.173, 3, 0, 0.245
    expected = kernel * np.maximum(0.0, 1 - threshold / np.maximum(norms, 1e-30))
    got = to_numpy(model.get_layer("d").kernel)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not np.isnan(got).any()
    # a group at or under the threshold is exactly zero: column 2 (already
    # zero) stays, the others shrink but survive
    assert (got[:, 2] == 0).all() and (got[:, [0, 1, 3]] != 0).all()
    logs = tfprune.callbacks._pruning_logs(model)  # zeros count as pruned
    assert logs[f"{model.get_layer('d').kernel.path}/sparsity"] == 0.25
    model.get_layer("d").set_weights([np.full((3, 4), 0.04, "float32"), np.zeros(4, "float32")])
    fit_once(model, x, y, lr=0.1, callbacks=[callback])  # norms 0.069 < 0.0866
    assert (to_numpy(model.get_layer("d").kernel) == 0).all()
    assert callback.masks[model.get_layer("d").kernel.path].tolist() == [True] * 4


def test_soft_threshold_l1_and_regrowth_when_the_data_push(rng):
    model = dense_model(units=2, inputs=2, regularizer=L1(0.1))
    model.get_layer("d").set_weights([np.array([[0.005, 1.0], [-1.0, 0.5]], "float32"),
                                      np.zeros(2, "float32")])  # fmt: skip
    zeros = np.zeros((4, 2), "float32")
    fit_once(model, zeros, np.zeros((4, 2), "float32"), lr=0.1, callbacks=[tfprune.SoftThreshold()])
    got = to_numpy(model.get_layer("d").kernel)
    np.testing.assert_allclose(got, [[0.0, 0.99], [-0.99, 0.49]], atol=1e-6)
    assert got[0, 0] == 0.0
    # the data push the zero weight out: gradients were never masked
    x = np.tile(np.array([[1.0, 0.0]], "float32"), (8, 1))
    y = np.tile(np.array([[3.0, 0.0]], "float32"), (8, 1))
    fit_once(model, x, y, lr=0.1, callbacks=[tfprune.SoftThreshold()])
    assert to_numpy(model.get_layer("d").kernel)[0, 0] > 0.1


@SAME_PATH_ON_JAX
def test_without_soft_threshold_the_penalty_is_a_gradient_step():
    model = dense_model(units=1, inputs=2, regularizer=GroupLasso(0.5))
    kernel = np.array([[3.0], [4.0]], "float32")  # norm 5
    model.get_layer("d").set_weights([kernel, np.zeros(1, "float32")])
    fit_once(model, np.zeros((2, 2), "float32"), np.zeros((2, 1), "float32"), lr=0.1)
    # d/dW of lam*sqrt(2)*||W|| = lam*sqrt(2)*W/||W||
    expected = kernel - 0.1 * 0.5 * math.sqrt(2) * kernel / 5.0
    np.testing.assert_allclose(to_numpy(model.get_layer("d").kernel), expected, rtol=1e-6)


@SAME_PATH_ON_JAX
def test_a_zeroed_group_keeps_a_finite_gradient():
    model = dense_model(units=2, inputs=2, regularizer=GroupLasso(0.5))
    model.get_layer("d").set_weights(
        [np.array([[0.0, 1.0], [0.0, 1.0]], "float32"), np.zeros(2, "float32")]
    )
    x = np.ones((4, 2), "float32")
    fit_once(model, x, np.ones((4, 2), "float32"), lr=0.01)
    assert np.isfinite(to_numpy(model.get_layer("d").kernel)).all()


def test_the_pruning_mask_wins_over_the_regularizers():
    x = keras.Input((3,))
    h = keras.layers.Dense(4, name="pruned", kernel_regularizer=GroupLasso(0.5))(x)
    model = keras.Model(x, keras.layers.Dense(4, name="free", kernel_regularizer=GroupLasso(0.5))(h))
    small = np.full((3, 4), 0.04, "float32")  # every column under the threshold
    model.get_layer("pruned").set_weights([small, np.zeros(4, "float32")])
    model.get_layer("free").set_weights([np.full((4, 4), 0.03, "float32"), np.zeros(4, "float32")])
    pruned = tfprune.prune(model, None, layers=["pruned"])  # no schedule: masks stay ones
    pruned.compile(keras.optimizers.SGD(0.1), "mse")
    pruned.fit(np.zeros((4, 3), "float32"), np.zeros((4, 4), "float32"), verbose=0,
               callbacks=[tfprune.UpdatePruningStep(), tfprune.SoftThreshold()])  # fmt: skip
    stripped = tfprune.strip_pruning(pruned)
    assert (to_numpy(stripped.get_layer("free").kernel) == 0).all()  # thresholded
    got = to_numpy(stripped.get_layer("pruned").kernel)  # not thresholded: a gradient step
    assert (got != 0).all() and (got < 0.04).all()


# ---------------------------------------------------------------- L0 gates
def test_l0_gate_samples_follow_the_hard_concrete_distribution():
    gate = l0.L0Gate(keras.layers.Dense(3), l0_strength=0.1, droprate_init=0.3, seed=0)
    gate.build((None, 2))
    log_alpha = np.array([-1.0, 0.0, 2.0], "float32")
    gate.log_alpha.assign(log_alpha)
    z = to_numpy(gate.gates(training=True, batch=40000))
    beta, gamma, zeta = 2 / 3, -0.1, 1.1

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def logit(p):
        return math.log(p / (1 - p))

    p_closed = sigmoid(beta * logit(-gamma / (zeta - gamma)) - log_alpha)
    p_open = 1 - sigmoid(beta * logit((1 - gamma) / (zeta - gamma)) - log_alpha)
    np.testing.assert_allclose((z == 0).mean(axis=0), p_closed, atol=0.015)
    np.testing.assert_allclose((z == 1).mean(axis=0), p_open, atol=0.015)
    assert ((z >= 0) & (z <= 1)).all()
    # the penalty is lam * sum P(gate != 0), in closed form
    open_probability = sigmoid(log_alpha - beta * math.log(-gamma / zeta))
    np.testing.assert_allclose(open_probability, 1 - p_closed, rtol=1e-6)
    np.testing.assert_allclose((z > 0).mean(axis=0), open_probability, atol=0.015)
    penalty = float(to_numpy(gate.log_alpha.regularizer(gate.log_alpha)))
    assert penalty == pytest.approx(0.1 * open_probability.sum(), rel=1e-6)
    # evaluation: deterministic, clip(sigmoid(a)(zeta - gamma) + gamma, 0, 1)
    first, second = to_numpy(gate.gates(False)), to_numpy(gate.gates(False))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, np.clip(sigmoid(log_alpha) * 1.2 - 0.1, 0, 1), rtol=1e-6)


@SAME_PATH_ON_JAX
def test_droprate_init_sets_the_initial_open_probability():
    gate = l0.L0Gate(keras.layers.Dense(200), droprate_init=0.2, seed=1)
    gate.build((None, 2))
    assert to_numpy(gate.log_alpha).mean() == pytest.approx(math.log(0.8 / 0.2), abs=0.01)
    with pytest.raises(ValueError, match=r"droprate_init=1.0"):
        l0.L0Gate(keras.layers.Dense(2), droprate_init=1.0)


def gated_cnn():
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(6, 3, padding="same", activation="swish", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(5, activation="relu", name="fc")(h)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h))


@SAME_PATH_ON_JAX
def test_closed_gates_thin_to_a_smaller_model_with_the_same_outputs(rng, tmp_path):
    model = gated_cnn()
    gated = tfprune.add_l0_gates(model, l0_strength=0.01, droprate_init=0.2, seed=3)
    gates = {g.layer.name: g for g in l0.gates_of(gated)}
    assert sorted(gates) == ["bn1", "c2", "fc"]  # c1's gates sit on its normalization
    for gate in gates.values():  # close every other gate
        a = to_numpy(gate.log_alpha)
        a[::2] = -10.0
        gate.log_alpha.assign(a)
    x = rng.normal(size=(6, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 2, size=6)
    gated.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gated.fit(x, y, epochs=1, verbose=0)  # trains, with the penalty in the loss
    assert len(gated.losses) == 3
    path = tmp_path / "gated.keras"
    gated.save(path)
    loaded = keras.models.load_model(path)
    small = tfprune.thin(loaded)
    expected = to_numpy(gated(x, training=False))
    np.testing.assert_allclose(to_numpy(small(x, training=False)), expected, atol=1e-5)
    opened = {name: int(g.open_channels().sum()) for name, g in gates.items()}
    logs = tfprune.callbacks._pruning_logs(gated)  # closed gates count as pruned
    assert logs[f"{gates['c2'].log_alpha.path}/sparsity"] == 0.5
    assert small.get_layer("c1").filters == opened["bn1"] == 4
    assert small.get_layer("c2").filters == opened["c2"] == 3
    assert small.get_layer("fc").units == opened["fc"] == 2
    assert all(not isinstance(layer, l0.L0Gate) for layer in small.layers)


@SAME_PATH_ON_JAX
# -------------------------------------------------------- network slimming
def test_network_slimming_l1_on_scales_then_thin(rng):
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn1", gamma_regularizer=L1(1.0))(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="c2")(h)
    h = keras.layers.BatchNormalization(name="bn2", gamma_regularizer=L1(1.0))(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    data = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    labels = rng.integers(0, 3, size=32)
    for name in ("bn1", "bn2"):  # scales of several sizes: the small ones reach zero
        model.get_layer(name).gamma.assign(rng.permutation(np.linspace(0.1, 1.5, 8)).astype("float32"))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(data, labels, batch_size=8, epochs=2, verbose=0, callbacks=[tfprune.SoftThreshold()])
    scales = np.abs(to_numpy(model.get_layer("bn1").gamma))
    assert 0 < (scales == 0).sum() < 8, scales  # the proximal step zeroes some exactly
    pruned = tfprune.prune(model, None, granularity="filter", criterion="bn_scale")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").filters == 4
    kept = np.flatnonzero(
        to_numpy(pruned.get_layer("prune_low_magnitude_bn1").pruning_vars[0][1])
    )
    assert set(kept) == set(np.argsort(-scales, kind="stable")[:4])  # the largest scales
    np.testing.assert_allclose(
        to_numpy(small(data, training=False)), to_numpy(pruned(data, training=False)), atol=1e-5
    )
    with pytest.raises(ValueError, match="bn_scale"):
        tfprune.prune(model, None, granularity="element", criterion="bn_scale")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_bn_scale_leaves_channels_without_a_normalization_whole(scope):
    """A channel no normalization scales has no score: ranking it by its
    position would remove the hidden Dense's largest units. It stays, and a
    global budget spreads over the normalized channels."""
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(8, activation="relu", name="fc")(h)
    model = keras.Model(x, keras.layers.Dense(3, name="out")(h))
    model.get_layer("bn1").gamma.assign(np.array([5, 1, 7, 2, 8, 3, 6, 4], "float32"))
    pruned = tfprune.prune(model, None, granularity="filter", criterion="bn_scale", scope=scope)
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert small.get_layer("fc").units == 8
    assert small.get_layer("c1").filters == 4
    kept = to_numpy(pruned.get_layer("prune_low_magnitude_bn1").pruning_vars[0][1])
    assert np.flatnonzero(kept).tolist() == [0, 2, 4, 6]  # scales 5, 7, 8, 6


@SAME_PATH_ON_JAX
def test_channel_group_lasso_zeros_are_removed_by_thin(rng):
    """Zeroed input channels of a consumer are unread: `thin` removes them exactly."""
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x)
    h = keras.layers.Conv2D(4, 3, name="c2", kernel_regularizer=GroupLasso(0.5, "channel"))(h)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(h)))
    kernel = to_numpy(model.get_layer("c2").kernel).copy()
    kernel[:, :, :3, :] *= 0.01  # three input channels with small norms
    model.get_layer("c2").kernel.assign(kernel)
    data = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    model.compile(keras.optimizers.SGD(0.05), "mse")
    model.fit(data, np.zeros((8, 2), "float32"), verbose=0, callbacks=[tfprune.SoftThreshold()])
    zero = (to_numpy(model.get_layer("c2").kernel) == 0).all(axis=(0, 1, 3))
    assert zero[:3].all() and not zero[3:].any()
    small = tfprune.thin(model)
    assert small.get_layer("c1").filters == 5
    np.testing.assert_allclose(to_numpy(small(data)), to_numpy(model(data)), atol=1e-5)
    # a plain model: the regularizer did its work, and the file loads without tfprune
    assert small.losses == [] and "tfprune" not in json.dumps(small.get_config())
    assert model.get_layer("c2").kernel.regularizer is not None  # the input keeps it


def test_group_lasso_of_rows_refuses_a_kernel_of_another_rank_before_attaching():
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="c"), keras.layers.Flatten(),
         keras.layers.Dense(3, name="d")]
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"needs a weight of rank 2; received shape \(3, 3, 1, 4\) "
                       r"\(weight '.*c/kernel' of layer 'c'\)"):  # fmt: skip
        tfprune.regularize(model, GroupLasso(0.1, granularity="row"))
    assert all(w.regularizer is None for w in model.weights) and model.losses == []
    tfprune.regularize(model, GroupLasso(0.1, granularity="row"), layers=["d"])
    assert len(model.losses) == 1


@SAME_PATH_ON_JAX
def test_regularize_reaches_layers_at_any_depth(tmp_path):
    tokens = keras.Input((5,), dtype="int32")
    h = keras.layers.Embedding(10, 8, name="embed")(tokens)
    h = keras.layers.LSTM(6, return_sequences=True, name="lstm")(h)
    h = keras.layers.MultiHeadAttention(2, 3, name="mha")(h, h)
    model = keras.Model(tokens, keras.layers.Dense(2, name="out")(h))
    tfprune.regularize(model, L1(1e-3))
    regularized = [v.path for v, _ in tfprune.regularizers.regularized_variables(model)]
    for fragment in ("embed/embeddings", "lstm_cell/kernel", "lstm_cell/recurrent_kernel",
                     "query/kernel", "attention_output/kernel", "out/kernel"):  # fmt: skip
        assert any(fragment in path for path in regularized), (fragment, regularized)
    assert len(model.losses) == len(regularized)
    model.save(tmp_path / "r.keras")
    loaded = keras.models.load_model(tmp_path / "r.keras")
    assert len(tfprune.regularizers.regularized_variables(loaded)) == len(regularized)


@pytest.mark.parametrize("proximal", [True, False])
def test_a_regularization_window_applies_the_penalty_only_inside_it(proximal):
    # Zero inputs: the data's gradient on the kernel is 0, so only the penalty moves it,
    # by lr * strength per step in the window (a proximal step, or an SGD step on λ|w|).
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    kernel = np.array([[0.5, -0.5, 0.002]] * 4, "float32")
    model.layers[0].kernel.assign(kernel)
    reg = L1(0.1)
    tfprune.regularize(model, reg)
    model.compile(keras.optimizers.SGD(0.01), "mse")
    window = tfprune.regularizers.RegularizationWindow(reg, begin_step=1, end_step=3)
    callbacks = [window, tfprune.SoftThreshold()] if proximal else [window]
    model.fit(np.zeros((8, 4)), np.zeros((8, 3)), batch_size=2, epochs=2, verbose=0,
              shuffle=False, callbacks=callbacks)  # fmt: skip  (8 steps; the window holds 2)
    after = to_numpy(model.layers[0].kernel)
    np.testing.assert_allclose(after[:, :2], [[0.498, -0.498]] * 4, rtol=0, atol=1e-6)
    if proximal:
        assert (after[:, 2] == 0).all()  # 0.002 - 0.001 = 0.001, then soft-thresholded to 0
    assert model.layers[0].kernel.regularizer is reg  # attached again after training


def test_a_fit_after_a_window_closed_trains_with_the_penalty_again():
    """The step compiled while the window was closed is not reused by the
    next `fit`: the regularizer is attached again, and so is its penalty."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, kernel_initializer="ones")])
    reg = L1(0.1)
    tfprune.regularize(model, reg)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.zeros((4, 2), "float32")  # only the penalty moves the kernel: 0.01 per step
    window = tfprune.regularizers.RegularizationWindow(reg, begin_step=4, end_step=8)
    model.fit(x, x, batch_size=1, verbose=0, callbacks=[window])  # steps 0-3: closed
    np.testing.assert_array_equal(to_numpy(model.layers[0].kernel), 1.0)
    model.fit(x, x, batch_size=1, verbose=0, callbacks=[window])  # steps 4-7: open
    np.testing.assert_allclose(to_numpy(model.layers[0].kernel), 0.96, rtol=0, atol=1e-6)
    model.fit(x, x, batch_size=1, verbose=0, callbacks=[window])  # steps 8-11: closed again
    model.fit(x, x, batch_size=1, verbose=0)  # no window: the penalty as attached
    np.testing.assert_allclose(to_numpy(model.layers[0].kernel), 0.92, rtol=0, atol=1e-6)


def test_regularization_window_arguments_are_checked():
    with pytest.raises(ValueError, match=r"begin_step=3, end_step=3"):
        tfprune.regularizers.RegularizationWindow(L1(0.1), begin_step=3, end_step=3)
    with pytest.raises(ValueError, match=r"`begin_step` must be an int >= 0 \(or -1\). Received: begin_step=1.5"):
        tfprune.regularizers.RegularizationWindow(L1(0.1), begin_step=1.5)
    with pytest.raises(TypeError, match=r"`regularizer` must be a keras.regularizers.Regularizer.*regularizer=None"):
        tfprune.regularizers.RegularizationWindow(None)
    window = tfprune.regularizers.RegularizationWindow(L1(0.1), begin_step=np.int64(2))
    assert window.begin_step == 2 and type(window.begin_step) is int


def _zero_data_fit(model, callbacks, epochs=1, batch_size=2):
    """Zero inputs: only the penalty moves the kernel (see the window test)."""
    model.fit(np.zeros((12, 4)), np.zeros((12, 3)), batch_size=batch_size, epochs=epochs,
              verbose=0, shuffle=False, callbacks=callbacks)  # fmt: skip


def _l1_model(kernel=0.5):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.layers[0].kernel.assign(np.full((4, 3), kernel, "float32"))
    reg = L1(0.01)
    tfprune.regularize(model, reg)
    return model, reg


def test_soft_threshold_steps_once_per_update_with_gradient_accumulation():
    model, _ = _l1_model()
    model.compile(keras.optimizers.SGD(1.0, gradient_accumulation_steps=2), "mse")
    _zero_data_fit(model, [tfprune.SoftThreshold()])  # 6 batches: 3 updates
    np.testing.assert_allclose(to_numpy(model.layers[0].kernel), 0.5 - 3 * 0.01, rtol=0, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="Keras: steps_per_execution 1 on PyTorch")
def test_a_window_edge_inside_an_execution_is_refused():
    model, reg = _l1_model()
    model.compile(keras.optimizers.SGD(1.0), "mse", steps_per_execution=4)
    window = tfprune.regularizers.RegularizationWindow(reg, begin_step=2, end_step=4)
    with pytest.raises(ValueError, match=r"`begin_step`=2 falls inside an execution of steps_per_execution=4"):
        _zero_data_fit(model, [window])
    model, reg = _l1_model()
    model.compile(keras.optimizers.SGD(1.0), "mse", steps_per_execution=2)
    window = tfprune.regularizers.RegularizationWindow(reg, begin_step=2, end_step=4)
    _zero_data_fit(model, [window])  # edges on executions: two proximal-free SGD steps on λ|w|
    np.testing.assert_allclose(to_numpy(model.layers[0].kernel), 0.5 - 2 * 0.01, rtol=0, atol=1e-6)


@pytest.mark.parametrize("soft_threshold_first", [False, True])
def test_the_window_and_soft_threshold_restore_the_weights_in_either_order(soft_threshold_first):
    model, reg = _l1_model()
    model.compile(keras.optimizers.SGD(1.0), "mse")
    window = tfprune.regularizers.RegularizationWindow(reg, begin_step=0, end_step=1)
    callbacks = [tfprune.SoftThreshold(), window] if soft_threshold_first else [window, tfprune.SoftThreshold()]
    _zero_data_fit(model, callbacks)
    kernel = model.layers[0].kernel
    assert kernel.regularizer is reg and kernel.constraint is None


def test_regularize_refuses_to_replace_a_regularizer_unless_asked():
    model = dense_model(regularizer=keras.regularizers.L2(1e-2))
    with pytest.raises(ValueError, match=r"Weight 'sequential.*/d/kernel' of layer 'd' already has the regularizer"):
        tfprune.regularize(model, L1(1e-3))
    assert isinstance(model.get_layer("d").kernel.regularizer, keras.regularizers.L2)
    tfprune.regularize(model, L1(1e-3), replace=True)
    assert isinstance(model.get_layer("d").kernel.regularizer, L1)


def test_numpy_numbers_are_numbers_and_l0_penalty_checks_its_arguments():
    assert L1(np.float32(0.5)).strength == 0.5 and GroupLasso(np.int64(1)).strength == 1.0
    gate = l0.L0Gate(keras.layers.Dense(2), droprate_init=np.float32(0.25), seed=np.int64(3))
    gate.build((None, 2))
    assert gate.get_config()["seed"] == 3
    for bad, match in ((True, "strength=True"), (-1, "strength=-1"), ("0.5", "strength='0.5'")):
        with pytest.raises(ValueError, match=match):
            l0.L0Penalty(bad)
    with pytest.raises(ValueError, match="temperature=0"):
        l0.L0Penalty(1.0, 0)
    with pytest.raises(ValueError, match=r"granularity=\['filter'\]"):
        GroupLasso(0.1, granularity=["filter"])


def test_soft_threshold_after_a_fit_that_raised_steps_once():
    # Keras calls no on_train_end when fit raises: the next SoftThreshold
    # takes the weights' own constraint back instead of stacking a second step.
    model, reg = _l1_model()
    model.compile(keras.optimizers.SGD(1.0), "mse")
    interrupted = tfprune.SoftThreshold()
    interrupted.set_model(model)
    interrupted.on_train_begin()  # ... and the fit stopped there
    _zero_data_fit(model, [tfprune.SoftThreshold()])  # 6 updates of one proximal step each
    np.testing.assert_allclose(to_numpy(model.layers[0].kernel), 0.5 - 6 * 0.01, rtol=0, atol=1e-6)
    assert model.layers[0].kernel.constraint is None and model.layers[0].kernel.regularizer is reg
