"""One-shot pruning: NumPy oracles for each formula, layer types, models."""

import keras
import numpy as np
import pytest
from conftest import SAME_PATH_ON_JAX, to_numpy

import tfprune
from tfprune.oneshot import calibration, features


# ---------------------------------------------------------------- oracles
def oracle_keep(size, sparsity):
    return int(max(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity))), 1))


def oracle_magnitude(W, s):
    flat = np.abs(W).ravel()
    pruned = np.argsort(flat, kind="stable")[: W.size - oracle_keep(W.size, s)]
    out = W.copy().ravel()
    out[pruned] = 0
    return out.reshape(W.shape)


def oracle_wanda(W, X, s):
    """Sun et al.: S_ij = |W_ij| * ||X_j||, pruned per output (Keras layout: column)."""
    norms = np.sqrt((X.astype(np.float64) ** 2).sum(axis=0))
    out = W.copy()
    for j in range(W.shape[1]):
        scores = np.abs(W[:, j]) * norms
        drop = np.argsort(scores, kind="stable")[: W.shape[0] - oracle_keep(W.shape[0], s)]
        out[drop, j] = 0
    return out


def oracle_sparsegpt(W, X, s, damp=0.01, block=128):
    """OBS written with an explicit inverse Hessian, one column eliminated at a time.

    Removing weight q of input i from every output row: the other inputs j > i
    move by -(w_i - q) / Hinv_ii * Hinv_ij, and input i leaves the problem
    (Hinv <- Hinv - Hinv[:, i] Hinv[i, :] / Hinv_ii). The mask of a block is
    chosen at its start by w^2 / Hinv_ii, Hinv_ii taken once the inputs
    before i have left.
    """
    n = X.shape[0]
    H = 2.0 / n * X.astype(np.float64).T @ X.astype(np.float64)
    Wt = W.astype(np.float64).T.copy()
    F = H.shape[0]
    dead = np.diag(H) == 0  # inputs never active: their weights score 0 (pruned first)
    H[dead, dead] = 1
    H += damp * np.mean(np.diag(H)) * np.eye(F)
    Hinv = np.linalg.inv(H)
    for start in range(0, F, block):
        end = min(start + block, F)
        # the diagonals each column will see, from eliminating the ones before it
        trial = Hinv.copy()
        diag = []
        for i in range(start, end):
            diag.append(trial[i, i])
            trial = trial - np.outer(trial[:, i], trial[i, :]) / trial[i, i]
        scores = Wt[:, start:end] ** 2 / np.array(diag)[None, :] * ~dead[None, start:end]
        k = scores.size - oracle_keep(scores.size, s)
        drop = np.zeros(scores.size, bool)
        drop[np.argsort(scores.ravel(), kind="stable")[:k]] = True
        drop = drop.reshape(scores.shape)
        for i in range(start, end):
            w = Wt[:, i].copy()
            q = np.where(drop[:, i - start], 0.0, w)
            err = (w - q) / Hinv[i, i]
            Wt[:, i:] -= np.outer(err, Hinv[i, i:])
            Wt[:, i] = q
            Hinv = Hinv - np.outer(Hinv[:, i], Hinv[i, :]) / Hinv[i, i]
    return Wt.T


def correlated_inputs(n=512, features_=32, seed=0):
    """Inputs with unequal scales (two outliers) and strong correlations (rank 8 + noise)."""
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.normal(0, 1.0, size=features_))
    scales[:2] *= 6
    low_rank = rng.normal(size=(n, 8)) @ rng.normal(size=(8, features_))
    return ((low_rank + 0.3 * rng.normal(size=(n, features_))) * scales).astype("float32")


def dense_model(features_=32, units=16, seed=1):
    model = keras.Sequential([keras.Input((features_,)), keras.layers.Dense(units, name="d")])
    rng = np.random.default_rng(seed)
    model.layers[0].set_weights([rng.normal(size=(features_, units)).astype("float32"), np.zeros(units, "float32")])
    return model


def kernel_of(model, name="d"):
    return to_numpy(model.get_layer(name).kernel).astype(np.float64)


# ------------------------------------------------------- the formulas
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_each_method_matches_its_numpy_oracle(method):
    X = correlated_inputs()
    model = dense_model()
    W = kernel_of(model)
    pruned = tfprune.oneshot(model, X, sparsity=0.5, method=method, block_size=8, verbose=0)
    got = kernel_of(pruned)
    want = {
        "magnitude": lambda: oracle_magnitude(W, 0.5),
        "wanda": lambda: oracle_wanda(W, X, 0.5),
        "sparsegpt": lambda: oracle_sparsegpt(W, X, 0.5, block=8),
    }[method]()
    np.testing.assert_array_equal(got == 0, want == 0)  # the same mask
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(W).max())
    assert (got == 0).sum() == W.size - oracle_keep(W.size, 0.5)
    np.testing.assert_array_equal(kernel_of(model), W)  # the input model is untouched


def test_reconstruction_error_orders_sparsegpt_wanda_magnitude():
    for seed in range(3):
        X = correlated_inputs(seed=seed)
        model = dense_model(seed=seed + 10)
        W = kernel_of(model)
        errors = {}
        for method in ["magnitude", "wanda", "sparsegpt"]:
            pruned = tfprune.oneshot(model, X, sparsity=0.5, method=method, verbose=0)
            errors[method] = np.linalg.norm(X @ W - X @ kernel_of(pruned))
        # measured: sparsegpt / wanda 0.51-0.62, wanda / magnitude 0.27-0.36
        assert errors["sparsegpt"] < 0.75 * errors["wanda"], errors
        assert errors["wanda"] < 0.6 * errors["magnitude"], errors


def test_wanda_keeps_the_same_count_in_every_output():
    X = correlated_inputs()
    pruned = tfprune.oneshot(dense_model(), X, sparsity=0.75, method="wanda", verbose=0)
    kept = (kernel_of(pruned) != 0).sum(axis=0)
    assert kept.tolist() == [oracle_keep(32, 0.75)] * 16


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_holds_group_by_group(method):
    X = correlated_inputs()
    pruned = tfprune.oneshot(dense_model(), X, method=method, sparsity_m_by_n=(2, 4), block_size=8, verbose=0)
    W = kernel_of(pruned)
    groups = (W != 0).reshape(8, 4, 16)  # 32 inputs: 8 groups of 4, per output
    assert np.all(groups.sum(axis=1) == 2)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_inputs_never_active_count_in_the_budget(method):
    X = correlated_inputs()
    X[:, :6] = 0.0  # six inputs the calibration data never uses
    model = dense_model()
    size = kernel_of(model).size
    for sparsity in (0.0, 0.25, 0.5):
        W = kernel_of(tfprune.oneshot(model, X, sparsity=sparsity, method=method, verbose=0))
        zeros = (W == 0).sum(axis=0) if method == "wanda" else (W == 0).sum()
        expected = 32 - oracle_keep(32, sparsity) if method == "wanda" else size - oracle_keep(size, sparsity)
        assert np.all(zeros == expected), (sparsity, zeros)
        if method != "magnitude" and sparsity >= 0.25:
            assert np.all(W[:6] == 0)  # they go first: they change no output on this data
    W = kernel_of(tfprune.oneshot(model, X, method=method, sparsity_m_by_n=(2, 4), verbose=0))
    assert (W == 0).sum() == size // 2
    np.testing.assert_allclose(
        kernel_of(tfprune.oneshot(model, X, sparsity=0.0, method="sparsegpt", verbose=0)),
        kernel_of(model), rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def test_sparsity_zero_changes_nothing():
    X = correlated_inputs()
    model = dense_model()
    for method in ["magnitude", "wanda", "sparsegpt"]:
        pruned = tfprune.oneshot(model, X, sparsity=0.0, method=method, verbose=0)
        np.testing.assert_allclose(kernel_of(pruned), kernel_of(model), rtol=1e-5, atol=1e-5)
        if method != "sparsegpt":
            np.testing.assert_array_equal(kernel_of(pruned), kernel_of(model))


# ------------------------------------------------------------ layer types
def im2col(x, k, stride=1):
    """Patches of a 'valid' Conv2D: per image, per output position, the
    (kernel row, kernel column, channel) values."""
    n, h, w, c = x.shape
    rows = []
    for image in x:
        for i in range(0, h - k + 1, stride):
            for j in range(0, w - k + 1, stride):
                rows.append(image[i : i + k, j : j + k, :].reshape(-1))
    return np.stack(rows)


def test_conv2d_features_are_im2col_patches_and_sparsegpt_matches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 7, 7, 3)).astype("float32") * np.array([1.0, 5.0, 0.2], "float32")
    model = keras.Sequential([keras.Input((7, 7, 3)), keras.layers.Conv2D(6, 3, strides=2, name="c")])
    view = features.view_of(model.layers[0])
    patches = to_numpy(view.to_rows(x))
    np.testing.assert_allclose(patches, im2col(x, 3, 2), rtol=1e-6)
    K = to_numpy(model.layers[0].kernel).astype(np.float64)
    pruned = tfprune.oneshot(model, x, sparsity=0.5, method="sparsegpt", block_size=9, verbose=0)
    got = to_numpy(pruned.get_layer("c").kernel).reshape(27, 6)
    want = oracle_sparsegpt(K.reshape(27, 6), im2col(x, 3, 2), 0.5, block=9)
    np.testing.assert_array_equal(got == 0, want == 0)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    # 2:4 groups restart at every kernel position (3 channels: groups of 3, 1 zero... kept <= 2)
    two_four = tfprune.oneshot(model, x, sparsity_m_by_n=(2, 4), method="wanda", verbose=0)
    kernel = to_numpy(two_four.get_layer("c").kernel)
    assert np.all((kernel != 0).sum(axis=2) == 2)


def test_a_grouped_convolution_is_pruned_group_by_group():
    """Each group of `groups=2` is a matrix product of its own inputs: its
    patches, its Hessian, its SparseGPT reconstruction."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6, 6, 4)).astype("float32") * np.array([1.0, 5.0, 0.2, 2.0], "float32")
    model = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(6, 3, groups=2, name="g")])
    view = features.view_of(model.layers[0])
    assert (view.features, view.groups) == (18, 2)
    patches = to_numpy(view.to_rows(x))
    for g in range(2):
        np.testing.assert_allclose(patches[:, 18 * g : 18 * (g + 1)], im2col(x[..., 2 * g : 2 * g + 2], 3, 1))
    K = to_numpy(model.layers[0].kernel).astype(np.float64).reshape(18, 6)
    pruned = tfprune.oneshot(model, x, sparsity=0.5, method="sparsegpt", block_size=9, verbose=0)
    got = to_numpy(pruned.get_layer("g").kernel).reshape(18, 6)
    for g in range(2):
        want = oracle_sparsegpt(K[:, 3 * g : 3 * g + 3], im2col(x[..., 2 * g : 2 * g + 2], 3, 1), 0.5, block=9)
        np.testing.assert_array_equal(got[:, 3 * g : 3 * g + 3] == 0, want == 0)
        np.testing.assert_allclose(got[:, 3 * g : 3 * g + 3], want, rtol=1e-3, atol=1e-4)
    for method in ("magnitude", "wanda"):
        kernel = to_numpy(tfprune.oneshot(model, x, sparsity=0.5, method=method, verbose=0).get_layer("g").kernel)
        assert (kernel == 0).sum() == 54, method  # 27 of each group's 54
    owl = tfprune.oneshot(model, x, sparsity=0.5, method="wanda", scope="owl", verbose=0)
    assert (to_numpy(owl.get_layer("g").kernel) == 0).sum() == 54  # one layer: the target itself


def test_einsum_dense_features_follow_the_equation():
    layer = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4), name="q")
    layer.build((None, 5, 6))
    view = features.view_of(layer)
    assert (view.features, view.outputs) == (6, 8)
    out = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 6), name="o")
    out.build((None, 5, 2, 4))
    view = features.view_of(out)
    assert (view.features, view.outputs) == (8, 6)
    kernel = to_numpy(out.kernel)
    np.testing.assert_array_equal(view.kernel_of(view.to_matrix(kernel)), kernel)
    x = np.random.default_rng(0).normal(size=(3, 5, 2, 4)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(view.to_rows(x)) @ view.to_matrix(kernel),
        to_numpy(out(x)).reshape(-1, 6) - to_numpy(out.bias) if out.bias is not None else to_numpy(out(x)).reshape(-1, 6),
        rtol=1e-5, atol=1e-5,
    )


# ---------------------------------------------------------------- models
def test_sequential_calibration_uses_the_pruned_earlier_layers():
    rng = np.random.default_rng(0)
    X = correlated_inputs()
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(12, activation="relu", name="a"), keras.layers.Dense(5, name="b")]
    )
    pruned = tfprune.oneshot(model, X, sparsity=0.5, method="wanda", verbose=0)
    # the oracle for the second layer sees the first layer's pruned outputs
    a = pruned.get_layer("a")
    hidden = np.maximum(X @ to_numpy(a.kernel) + to_numpy(a.bias), 0)
    want = oracle_wanda(kernel_of(model, "b"), hidden, 0.5)
    np.testing.assert_array_equal(kernel_of(pruned, "b") == 0, want == 0)
    del rng


def test_calibration_data_forms():
    X = correlated_inputs(n=40)
    assert [b.shape[0] for b in calibration.batches(X, batch_size=16)] == [16, 16, 8]
    assert len(calibration.batches((X, np.zeros(40)), batch_size=32)) == 2
    assert len(calibration.batches([(X[:20], None), (X[20:], None)])) == 2
    assert len(calibration.batches({"x": X}, batch_size=40)) == 1
    with pytest.raises(ValueError, match="calibration_data"):
        calibration.batches(np.zeros((0, 24), "float32"))
    with pytest.raises(ValueError, match="calibration_data"):
        calibration.batches([])
    with pytest.raises(ValueError, match="calibration_data"):
        calibration.batches({})
    with pytest.raises(ValueError, match="NaN or infinite"):
        calibration.batches(np.full((4, 3), np.nan, "float32"))
    with pytest.raises(ValueError, match=r"at least one batch .*calibration_data=\[1.0, 2.0\]"):
        calibration.batches([1.0, 2.0])  # numbers, not batches
    with pytest.raises(ValueError, match="numeric arrays with a batch axis"):
        calibration.batches(np.array([["a"], ["b"]]))


def test_a_list_of_single_examples_is_stacked_into_batches():
    X = correlated_inputs(n=40)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(12, name="a"), keras.layers.Dense(5, name="b")])
    want = tfprune.oneshot(model, X, sparsity=0.5, method="sparsegpt", batch_size=16, verbose=0)
    for rows in ([row for row in X], X.astype("float64").tolist()):
        got = tfprune.oneshot(model, rows, sparsity=0.5, method="sparsegpt", batch_size=16, verbose=0)
        for name in "ab":
            np.testing.assert_array_equal(kernel_of(got, name) == 0, kernel_of(want, name) == 0)
    assert [b.shape for b in calibration.batches(list(X), batch_size=16, model=model)] == [(16, 32), (16, 32), (8, 32)]
    # a list of batches stays a list of batches
    assert [b.shape for b in calibration.batches([X[:30], X[30:]], model=model)] == [(30, 32), (10, 32)]
    with pytest.raises(ValueError, match=r"calibration_data.* single examples .*pad them to one shape"):
        calibration.batches([X[0], X[1, :16]], model=model)
    before = kernel_of(model, "a")
    with pytest.raises(ValueError, match="calibration_data"):
        tfprune.oneshot(model, [X[0], X[1, :16]], sparsity=0.5, inplace=True, verbose=0)
    np.testing.assert_array_equal(kernel_of(model, "a"), before)


def test_a_failure_part_way_leaves_the_model_as_it_was():
    X = correlated_inputs()
    X[:, 1] = X[:, 0]  # a singular X^T X: no Cholesky without dampening
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, name="a"),
                              keras.layers.Dense(64, name="b"), keras.layers.Dense(2, name="c")])  # fmt: skip
    before = [kernel_of(model, n) for n in "abc"]
    with pytest.raises(ValueError, match=r"layer 'b' .*raise `dampening`. Received: dampening=1e-12"):
        tfprune.oneshot(model, X, method="sparsegpt", dampening=1e-12, inplace=True, verbose=0)
    for name, kernel in zip("abc", before):
        np.testing.assert_array_equal(kernel_of(model, name), kernel)


@pytest.mark.parametrize("data_format, shape", [("channels_last", (16, 4)), ("channels_first", (4, 16))])
def test_causal_conv1d_features_are_the_past_only(data_format, shape):
    from tfprune.oneshot import features

    layer = keras.layers.Conv1D(8, 3, padding="causal", dilation_rate=2, data_format=data_format,
                                use_bias=False)  # fmt: skip
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype("float32")
    try:
        y = to_numpy(layer(x))
    except Exception as error:  # TensorFlow's CPU kernels: NCHW on some CPUs only
        if "only supports the NHWC tensor format" not in str(error):
            raise
        pytest.skip("TensorFlow cannot run a channels_first convolution on this CPU")
    y = np.moveaxis(y, 1, -1) if data_format == "channels_first" else y
    view = features.view_of(layer)
    rows = to_numpy(view.to_rows(x)) @ view.to_matrix(to_numpy(layer.kernel))
    np.testing.assert_allclose(rows, y.reshape(-1, 8), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sparsity": 1.0}, ValueError, "sparsity=1.0"),
        ({"sparsity": "half"}, TypeError, "sparsity='half'"),
        ({"method": "obs"}, ValueError, "method='obs'"),
        ({"sparsity_m_by_n": (4, 2)}, ValueError, r"sparsity_m_by_n=\(4, 2\)"),
        ({"dampening": 0}, ValueError, "dampening=0"),
        ({"block_size": 0}, ValueError, "block_size=0"),
        ({"block_size": np.int64(8), "sparsity": np.int64(2)}, ValueError, r"sparsity=np.int64\(2\)"),
        ({"dampening": float("inf")}, ValueError, "dampening=inf"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"batch_size": True}, ValueError, "batch_size=True"),
        ({"batch_size": 2.5}, ValueError, "batch_size=2.5"),
        ({"owl": {"spread": 0.1}}, ValueError, r"`owl` applies to scope='owl'. Received: scope='layer'"),
        ({"owl": {"threshold": "x"}, "scope": "owl"}, ValueError, r"'threshold' must be a number > 0"),
        ({"owl": {"spread": -5}, "scope": "owl"}, ValueError, r"'spread' must be a number in \[0, 0.5\]"),
        ({"sparsity_m_by_n": ()}, ValueError, r"sparsity_m_by_n=\(\)"),
        ({"sparsity_m_by_n": 0}, ValueError, r"sparsity_m_by_n=0"),
        ({"inplace": "yes"}, TypeError, r"`inplace` must be True or False. Received: inplace='yes'"),
    ],
)
def test_bad_arguments_raise_before_anything_is_touched(kwargs, error, match):
    model = dense_model()
    before = kernel_of(model)
    with pytest.raises(error, match=match):
        tfprune.oneshot(model, correlated_inputs(), **{"inplace": True, "verbose": 0, **kwargs})
    np.testing.assert_array_equal(kernel_of(model), before)


def test_digits_model_held_out_loss_orders_the_methods():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=500, random_state=0, stratify=digits.target
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu", name="h"), keras.layers.Dense(10, name="out")]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    losses = {}
    for method in ["magnitude", "wanda", "sparsegpt"]:
        pruned = tfprune.oneshot(model, x_train[:256], sparsity=0.8, method=method, verbose=0)
        pruned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[method] = pruned.evaluate(x_test, y_test, verbose=0)
        weights = pruned.get_weights()
        assert all(((w == 0).mean() > 0.79) for w in weights[::2])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # Measured: magnitude 0.84, wanda 1.54, sparsegpt 0.31. On these [0, 1] pixels,
    # with no outlier features, Wanda's per-output budget loses to magnitude.
    assert losses["sparsegpt"] < 0.6 * min(losses["wanda"], losses["magnitude"]), losses


@SAME_PATH_ON_JAX
def test_tiny_keras_hub_decoder_is_pruned_in_every_transformer_layer():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        max_sequence_length=8,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    data = {
        "token_ids": rng.integers(1, 40, size=(16, 8)).astype("int32"),
        "padding_mask": np.ones((16, 8), "int32"),
    }
    pruned = tfprune.oneshot(backbone, data, sparsity=0.5, method="sparsegpt", verbose=0)
    assert type(pruned) is type(backbone)
    # the same texts one by one, as a tokenizer returns them
    texts = [{name: array[i] for name, array in data.items()} for i in range(16)]
    one_by_one = tfprune.oneshot(backbone, texts, sparsity=0.5, method="wanda", verbose=0)
    by_batch = tfprune.oneshot(backbone, data, sparsity=0.5, method="wanda", verbose=0)
    for a, b in zip(one_by_one.weights, by_batch.weights):
        np.testing.assert_array_equal(to_numpy(a) == 0, to_numpy(b) == 0)
    seen = 0
    for block in pruned.transformer_layers:
        for layer in block._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
                kernel = to_numpy(layer.kernel)
                assert (kernel == 0).sum() >= 0.49 * kernel.size, layer.name
                seen += 1
    assert seen == 2 * 6  # q, k, v, output, and the two feed-forward layers
    out = pruned(data)
    assert np.all(np.isfinite(to_numpy(out)))


def test_owl_budgets_average_to_the_target_and_favour_outlier_layers():
    X = correlated_inputs(n=256)
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64, activation="relu", name="a"),
         keras.layers.Dense(32, activation="relu", name="b"), keras.layers.Dense(8, name="c")]
    )
    # the oracle: each layer's outlier ratio on the dense model's inputs
    inputs, h = {}, X.astype(np.float64)
    for name in "abc":
        layer = model.get_layer(name)
        inputs[name] = h
        h = h @ kernel_of(model, name) + to_numpy(layer.bias)
        h = np.maximum(h, 0) if name != "c" else h
    ratio = {}
    for name in "abc":
        scores = np.abs(kernel_of(model, name)) * np.sqrt((inputs[name] ** 2).sum(axis=0))[:, None]
        ratio[name] = np.mean(scores > 5 * scores.mean())
    pruned = tfprune.oneshot(model, X, sparsity=0.6, method="magnitude", scope="owl", verbose=0)
    sizes = {n: kernel_of(model, n).size for n in "abc"}
    zeros = {n: int((kernel_of(pruned, n) == 0).sum()) for n in "abc"}
    assert abs(sum(zeros.values()) - 0.6 * sum(sizes.values())) <= 3  # rounding per layer
    for target in (0.0, 0.02, 0.95):  # the clip at 0 or 1 does not move the average
        budgets = tfprune.oneshot(model, X, sparsity=target, method="magnitude", scope="owl", verbose=0)
        total = sum(int((kernel_of(budgets, n) == 0).sum()) for n in "abc")
        assert abs(total - target * sum(sizes.values())) <= 3, (target, total)
    sparsity = {n: zeros[n] / sizes[n] for n in "abc"}
    assert len(set(ratio.values())) > 1
    for x in "abc":  # more outliers keep more (equal ratios: equal budgets, up to rounding)
        for y in "abc":
            if ratio[x] > ratio[y]:
                assert sparsity[x] < sparsity[y], (ratio, sparsity)
            elif ratio[x] == ratio[y]:
                assert abs(sparsity[x] - sparsity[y]) <= 1 / min(sizes[x], sizes[y]), (ratio, sparsity)
    assert max(sparsity.values()) - min(sparsity.values()) <= 2 * 0.08 + 0.01
    with pytest.raises(ValueError, match="scope='owl', sparsity_m_by_n"):
        tfprune.oneshot(model, X, scope="owl", sparsity_m_by_n=(2, 4), verbose=0)


def test_recovery_fine_tuning_with_distillation_keeps_the_masks():
    X = correlated_inputs(n=128)
    y = (X[:, 0] > 0).astype("int32") + (X[:, 1] > 0).astype("int32")
    teacher = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(16, activation="relu", name="h"), keras.layers.Dense(3, name="o")]
    )
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(X, y, epochs=3, batch_size=32, verbose=0)
    pruned = tfprune.oneshot(teacher, X, sparsity=0.7, method="sparsegpt", verbose=0)
    zeros = {n: kernel_of(pruned, n) == 0 for n in "ho"}
    student = tfprune.hold_sparsity(pruned)
    distiller = tfprune.distill(student, teacher, temperature=2.0, alpha=0.3)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = kernel_of(pruned, "h").copy()
    history = distiller.fit(X, y, epochs=3, batch_size=32, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    assert np.all(np.isfinite(history.history["loss"]))
    recovered = tfprune.strip_pruning(student)
    for n in "ho":
        assert np.array_equal(kernel_of(recovered, n) == 0, zeros[n])  # the same zeros
    assert not np.array_equal(kernel_of(recovered, "h"), before)  # the kept weights trained
    teacher_before = [w.copy() for w in teacher.get_weights()]
    distiller.fit(X, y, epochs=1, batch_size=32, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, teacher.get_weights()))
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    with pytest.raises(ValueError, match="alpha=2"):
        tfprune.distill(student, teacher, alpha=2)
    with pytest.raises(ValueError, match="temperature=0"):
        tfprune.distill(student, teacher, temperature=0)
    wider = keras.Sequential([keras.Input(teacher.inputs[0].shape[1:]), keras.layers.Dense(7)])
    with pytest.raises(ValueError, match=r"as many logits.*with 7"):
        tfprune.distill(student, wider)


MODEL_PARALLEL = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"
import keras, numpy as np
import tfprune

def build():
    x = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name="d1")(x)
    h = keras.layers.Dense(32, activation="relu", name="d2")(h)
    return keras.Model(x, keras.layers.Dense(8, name="out")(h))

rng = np.random.default_rng(0)
x = (rng.normal(size=(256, 16)) * np.linspace(0.1, 3.0, 16)).astype("float32")
keras.utils.set_random_seed(0)
single = build()
weights = single.get_weights()
mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), keras.distribution.list_devices())
layout = keras.distribution.LayoutMap(mesh)
layout["d.*kernel"] = (None, "model")  # outputs split over the two devices
layout["out.*kernel"] = ("model", None)  # inputs split
from tfprune import backend
pieces = []  # layers pruned piece by piece, where their pieces live
pieces_by_device = backend.pieces_by_device
def spy(variable, axes):
    found = pieces_by_device(variable, axes)
    if found is not None:
        pieces.append(variable.path.split("/")[-2])
    return found
backend.pieces_by_device = spy
results = {}
for method, m_by_n in [("magnitude", None), ("wanda", None), ("sparsegpt", None), ("sparsegpt", (2, 4))]:
    keras.distribution.set_distribution(None)
    ref = tfprune.oneshot(single, x, sparsity=0.5, method=method, sparsity_m_by_n=m_by_n, verbose=0)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    laid_out = build()
    laid_out.set_weights(weights)
    pieces.clear()
    pruned = tfprune.oneshot(laid_out, x, sparsity=0.5, method=method, sparsity_m_by_n=m_by_n,
                             verbose=0)
    rows = [sorted(pieces)]
    for name in ("d1", "d2", "out"):
        a = keras.ops.convert_to_numpy(ref.get_layer(name).kernel)
        value = pruned.get_layer(name).kernel.value
        b = np.asarray(value)
        rows.append([name, bool(np.array_equal(a == 0, b == 0)), float(np.mean(b == 0)),
                     float(np.abs(a - b).max()), list(value.sharding.spec),
                     len(value.sharding.device_set)])
    results[f"{method}{m_by_n or ''}"] = rows
print(json.dumps(results))
"""


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="ModelParallel of the JAX backend")
def test_model_parallel_run_gives_the_single_device_masks(tmp_path):
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "model_parallel.py"
    script.write_text(MODEL_PARALLEL)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == {"magnitude", "wanda", "sparsegpt", "sparsegpt(2, 4)"}
    # Kernels split along their outputs are pruned piece by piece on their devices (only
    # counts of scores cross pieces); the one split along its inputs is read whole.
    pieces = {key: rows.pop(0) for key, rows in results.items()}
    assert all(found == ["d1", "d2"] for found in pieces.values()), pieces
    for rows in results.values():
        for name, same_mask, sparsity, difference, spec, devices in rows:
            assert same_mask and sparsity == 0.5, (name, rows)
            assert difference < 1e-5  # the kept values: float32 sums in another order at most
            assert devices == 2 and spec == ([None, "model"] if name != "out" else ["model", None])


def test_lowest_in_pieces_is_lowest_of_the_whole(rng):
    from tfprune.oneshot import methods

    for trial in range(20):
        scores = rng.integers(0, 6, size=(7, 12)).astype("float64")  # many ties
        if trial % 2:
            scores = rng.random((7, 12)) * 1e-3
        cuts = sorted(rng.choice(np.arange(1, 12), size=2, replace=False))
        positions = np.arange(scores.size).reshape(scores.shape)
        parts = np.split(np.arange(12), cuts)
        pieces = [(scores[:, p], positions[:, p]) for p in parts]
        for count in (0, 1, 30, 84):
            whole = methods.lowest(scores, count)
            found = methods.lowest_in_pieces(pieces, count)
            np.testing.assert_array_equal(np.concatenate(found, axis=1), whole)
