"""The pruning engine: criteria, granularities, scopes, threshold pruners."""

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import compile_model, data, fit, keep_count, wrappers

import tfprune
from tfprune import allocation, scoring
from tfprune import granularity as granularity_lib


def cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(32, activation="relu", name="fc1"),
            keras.layers.Dense(4, name="fc2"),
        ]
    )


def masks_of(model):
    return {
        mask.path: to_numpy(mask) for w in wrappers(model) for _, mask, _ in w.pruning_vars
    }


def kernels(model):
    return [(w.layer.name, to_numpy(weight)) for w in wrappers(model) for weight, _, _ in w.pruning_vars]


def one_pruning_step(model, x, y, **kwargs):
    """Trains one step with a zero learning rate: masks come from the weights as they are."""
    compile_model(model, keras.optimizers.SGD(0.0))
    fit(model, x[:8], y[:8], batch_size=8, **kwargs)


# ------------------------------------------------------------------ scopes
@pytest.mark.parametrize("target", [0.5, 0.9, 0.97])
def test_global_scope_hits_the_target_exactly_with_the_globally_smallest(target):
    model = cnn()
    before = [np.abs(w) for w in model.get_weights()[::2]]  # kernels
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(target, 0, frequency=1), scope="global")
    x, y = data((8, 8, 3), classes=4)
    one_pruning_step(pruned, x, y)
    masks = [to_numpy(m) for w in wrappers(pruned) for _, m, _ in w.pruning_vars]
    flat = np.concatenate([b.ravel() for b in before])
    kept = np.concatenate([b[m] for b, m in zip(before, masks)])
    dropped = np.concatenate([b[~m] for b, m in zip(before, masks)])
    assert kept.size == keep_count(flat.size, target)  # exact, overall
    # every weight keeps at least its largest; the others are the globally largest
    forced = [b.max() for b, m in zip(before, masks) if m.sum() == 1]
    ranked = np.sort(kept)[len(forced) :] if forced else kept
    assert all(f < dropped.max() for f in forced) or not forced
    assert dropped.max() < ranked.min()  # exactly the globally smallest
    per_layer = [1 - m.mean() for m in masks]
    assert max(per_layer) - min(per_layer) > 0.05  # layers differ
    thresholds = {float(to_numpy(t)) for w in wrappers(pruned) for _, _, t in w.pruning_vars}
    assert thresholds == {float(ranked.min())}


@pytest.mark.parametrize(
    "low, high, where",
    [(0.8, 0.2, ""), ({"conv1": 0.6}, {"conv1": 0.5}, " for layer 'conv1'"), (0.7, {"conv1": 0.5}, " for layer 'conv1'")],
)
def test_min_sparsity_above_max_sparsity_is_refused(low, high, where):
    with pytest.raises(ValueError, match=f"`min_sparsity` must not exceed `max_sparsity`{where}. Received: "):
        tfprune.Pruner(tfprune.ConstantSparsity(0.5, 0), scope="global", min_sparsity=low, max_sparsity=high)
    tfprune.Pruner(tfprune.ConstantSparsity(0.5, 0), scope="global", min_sparsity=0.2, max_sparsity=0.2)


def test_global_scope_caps_and_one_unit_per_weight():
    model = cnn()
    pruned = tfprune.prune(
        model,
        tfprune.ConstantSparsity(0.9, 0, frequency=1),
        scope="global",
        max_sparsity={"conv1": 0.5},
        min_sparsity=0.2,
    )
    tfprune.update_masks(pruned, 0.9)
    sizes = {w.layer.name: to_numpy(w.pruning_vars[0][1]) for w in wrappers(pruned)}
    assert sizes["conv1"].sum() == keep_count(sizes["conv1"].size, 0.5)  # capped at 50%
    for name, mask in sizes.items():
        assert mask.sum() <= keep_count(mask.size, 0.2), name
        assert mask.sum() >= 1
    total = sum(m.size for m in sizes.values())
    assert sum(int(m.sum()) for m in sizes.values()) == keep_count(total, 0.9)


def test_lamp_scope_keeps_each_layers_largest_and_the_exact_total():
    model = cnn()
    pruned = tfprune.prune(model, None, scope="lamp")
    tfprune.update_masks(pruned, 0.95)
    total = kept = 0
    for w in wrappers(pruned):
        weight, mask, _ = w.pruning_vars[0]
        # the weights were masked in place: the largest of each layer survives
        mask = to_numpy(mask)
        total += mask.size
        kept += int(mask.sum())
    assert kept == keep_count(total, 0.95)
    # LAMP ranks by normalized scores: the result equals a global threshold on them
    original = [np.abs(k) for k in model.get_weights()[::2]]
    lamp = np.concatenate([to_numpy(allocation.lamp_scores(o)).ravel() for o in original])
    masks = np.concatenate([to_numpy(w.pruning_vars[0][1]).ravel() for w in wrappers(pruned)])
    assert lamp[~masks].max() <= lamp[masks].min()
    assert all(np.abs(o).max() in np.abs(o)[m] for o, m in zip(original, [to_numpy(w.pruning_vars[0][1]) for w in wrappers(pruned)]))


def test_erk_budgets_sum_to_the_target_and_favour_first_and_last_layers():
    model = cnn()
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.9, 0, frequency=1), scope="erk")
    x, y = data((8, 8, 3), classes=4)
    one_pruning_step(pruned, x, y)
    shapes = [tuple(w.pruning_vars[0][0].shape) for w in wrappers(pruned)]
    expected = allocation.erk(shapes, 0.9)
    masks = [to_numpy(w.pruning_vars[0][1]) for w in wrappers(pruned)]
    for mask, s in zip(masks, expected):
        assert int(mask.sum()) == keep_count(mask.size, s)
    density = [m.mean() for m in masks]
    total = sum(m.size for m in masks)
    assert sum(int(m.sum()) for m in masks) == pytest.approx((1 - 0.9) * total, abs=len(masks))
    assert density[0] > density[2] and density[-1] > density[2]


def test_dict_scope_follows_the_schedule_and_prunes_only_named_layers():
    model = cnn()
    schedule = tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, frequency=1)
    pruned = tfprune.prune(model, schedule, scope={"conv2": 0.4, "fc1": 0.8})
    assert [w.layer.name for w in wrappers(pruned)] == ["conv2", "fc1"]
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(pruned)
    fit(pruned, x, y, batch_size=8)  # 4 steps: the schedule's end
    for w, s in zip(wrappers(pruned), [0.4, 0.8]):
        mask = to_numpy(w.pruning_vars[0][1])
        assert int(mask.sum()) == keep_count(mask.size, s)


# ------------------------------------------------------------- structures
def test_filter_granularity_zeroes_whole_output_channels_and_their_outputs():
    # A Filter instance prunes each layer on its own (the string "filter"
    # follows the dependency graph: tests/test_thinning.py).
    model = cnn()
    pruned = tfprune.prune(
        model, tfprune.ConstantSparsity(0.5, 0, frequency=1), granularity=granularity_lib.Filter()
    )
    x, y = data((8, 8, 3), classes=4)
    one_pruning_step(pruned, x, y)
    conv1 = wrappers(pruned)[0]
    (kernel, kmask, _), (bias, bmask, _) = conv1.pruning_vars
    kmask, bmask = to_numpy(kmask), to_numpy(bmask)
    pruned_channels = np.flatnonzero(~bmask)
    assert len(pruned_channels) == 4
    assert np.all(~kmask[..., pruned_channels]) and np.all(kmask[..., bmask])
    assert np.all(to_numpy(kernel)[..., pruned_channels] == 0)
    assert np.all(to_numpy(bias)[pruned_channels] == 0)
    # the layer's outputs of those channels are exactly zero
    probe = keras.Model(pruned.inputs[0], pruned.get_layer(conv1.name).output)
    out = to_numpy(probe(x))
    assert np.all(out[..., pruned_channels] == 0) and np.any(out[..., bmask] != 0)
    # ranked by mean |w| of the kernel slice (Distiller's L1-ranked pruner)
    original = np.abs(model.get_layer("conv1").get_weights()[0]).mean(axis=(0, 1, 2))
    assert set(pruned_channels) == set(np.argsort(original)[:4])


@pytest.mark.parametrize(
    "granularity, axis",
    [("channel", 0), ("row", 0), ("column", 1)],
)
def test_dense_structures_mask_whole_slices(granularity, axis):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, name="d")])
    pruned = tfprune.prune(model, None, granularity=granularity_lib.get(granularity))
    tfprune.update_masks(pruned, 0.5)
    mask = to_numpy(wrappers(pruned)[0].pruning_vars[0][1])
    units = mask.all(axis=1 - axis)
    assert np.array_equal(mask.any(axis=1 - axis), units)  # whole slices
    assert int(units.sum()) == mask.shape[axis] // 2


def test_head_granularity_masks_whole_attention_heads():
    inputs = keras.Input((6, 16))
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")
    model = keras.Model(inputs, attention(inputs, inputs))
    pruned = tfprune.prune(model, None, granularity="head")
    tfprune.update_masks(pruned, 0.5)
    (wrapper,) = wrappers(pruned)
    kept = None
    for _, mask, _ in wrapper.pruning_vars:
        mask = to_numpy(mask)
        axis = 0 if mask.ndim == 2 or mask.shape[0] == 4 else 1
        heads = np.moveaxis(mask, axis, 0).reshape(4, -1)
        assert np.all(heads.all(axis=1) == heads.any(axis=1))  # whole heads
        kept = heads.all(axis=1) if kept is None else kept
        assert np.array_equal(heads.all(axis=1), kept)  # the same heads everywhere
    assert int(kept.sum()) == 2
    x = np.random.default_rng(0).normal(size=(2, 6, 16)).astype("float32")
    stripped = tfprune.strip_pruning(pruned)
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(pruned(x)), rtol=1e-5, atol=1e-6)


def test_block_and_m_by_n_through_prune():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, name="d")])
    pruned = tfprune.prune(model, None, granularity="block", block_size=(2, 2))
    tfprune.update_masks(pruned, 0.5)
    mask = to_numpy(wrappers(pruned)[0].pruning_vars[0][1])
    blocks = mask.reshape(4, 2, 4, 2)
    assert np.all(blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3)))
    assert mask.sum() == 32
    with pytest.raises(ValueError, match="scope='layer' only"):
        tfprune.prune(model, None, granularity="m_by_n", scope="global")


# ---------------------------------------------------------------- criteria
def test_taylor_needs_gradients_and_ranks_zero_gradients_lowest():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.25, 0, frequency=3), criterion="taylor")
    with pytest.raises(ValueError, match="needs gradients"):
        tfprune.update_masks(pruned, 0.25)
    assert np.all(masks_of(pruned)[wrappers(pruned)[0].pruning_vars[0][1].path])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype("float32")
    x[:, 2] = 0.0  # input 2 is always zero: its weights get no gradient
    y = rng.integers(0, 4, 24)
    compile_model(pruned, keras.optimizers.SGD(0.01))
    fit(pruned, x, y, batch_size=8)  # 3 steps: the masks update at step 3
    mask = to_numpy(wrappers(pruned)[0].pruning_vars[0][1])
    assert int(mask.sum()) == keep_count(mask.size, 0.25)
    assert not mask[2].any()  # the zero-gradient row went first
    assert mask[[0, 1, 3, 4, 5]].sum() == mask.sum()


def test_taylor_never_revives_a_pruned_weight_in_place_of_a_live_one_without_gradient():
    # Inputs 0-5 are always zero: their live weights score 0, as pruned ones do.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    x[:, :6] = 0.0
    y = rng.integers(0, 4, 64)
    inputs = keras.Input((12,))
    hidden = keras.layers.Dense(64, activation="relu", name="d")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(hidden))
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.6, 0, frequency=2), criterion="taylor")
    compile_model(pruned, keras.optimizers.Adam(0.01))
    fit(pruned, x, y, batch_size=16, epochs=2)  # 8 steps: 4 mask updates
    for w in wrappers(pruned):
        kernel, mask = to_numpy(w.pruning_vars[0][0]), to_numpy(w.pruning_vars[0][1])
        assert int(mask.sum()) == keep_count(mask.size, 0.6)
        assert int((kernel != 0).sum()) == int(mask.sum())  # every kept weight is live


def test_movement_scores_and_exact_counts():
    model = cnn()
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.7, 0, frequency=2), criterion="movement")
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(pruned)
    fit(pruned, x, y, batch_size=8)
    for w in wrappers(pruned):
        mask = to_numpy(w.pruning_vars[0][1])
        assert int(mask.sum()) == keep_count(mask.size, 0.7)
        movement = to_numpy(w._criterion_state["acc"][0])
        assert np.any(movement < 0) and np.any(movement > 0)  # signed scores


class _FixedSignedScores(tfprune.Criterion):
    """Signed scores given per layer: small ones beside one large negative."""

    signed = True

    def __init__(self, by_layer):
        self.by_layer = by_layer

    def scores(self, weights, state):
        values = self.by_layer[int(weights[0].shape[-1])]
        return [keras.ops.reshape(keras.ops.convert_to_tensor(values), weights[0].shape)]


def _top_k_by_position(scores, k):
    order = np.lexsort((np.arange(scores.size), -scores.astype(np.float64)))
    keep = np.zeros(scores.size, bool)
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_signed_scores_keep_their_order_beside_a_large_negative_one(scope):
    # Distinct scores 1e-3 apart in 1e-6 steps, and -1e5: shifting by the
    # minimum in float32 would round the small ones into ties.
    first = np.linspace(1e-3, 2e-3, 20).astype("float32")
    first[-1] = -1e5
    second = np.linspace(-3e-6, 3e-6, 15).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="a"), keras.layers.Dense(3, name="b")])
    by_layer = {5: first, 3: second}
    pruned = tfprune.prune(model, None, criterion=_FixedSignedScores(by_layer), scope=scope,
                           layers=["a", "b"])  # fmt: skip
    tfprune.update_masks(pruned, 0.5)
    masks = {w.layer.name: to_numpy(w.pruning_vars[0][1]).ravel() for w in wrappers(pruned)}
    if scope == "layer":
        assert np.array_equal(masks["a"], _top_k_by_position(first, 10))
        assert np.array_equal(masks["b"], _top_k_by_position(second, 8))
    else:
        # Every layer keeps its best weight; the rest of the 18 are ranked together.
        both = np.concatenate([first, second])
        forced = np.zeros(both.size, bool)
        forced[[np.argmax(first), first.size + np.argmax(second)]] = True
        rest = _top_k_by_position(np.where(forced, -np.inf, both), 18 - 2)
        assert np.array_equal(np.concatenate([masks["a"], masks["b"]]), forced | rest)


def test_signed_scores_map_to_non_negative_ones_in_order():
    from tfprune import selection

    rng = np.random.default_rng(0)
    scores = np.concatenate([
        rng.normal(size=2000) * 10.0 ** rng.integers(-30, 30, 2000), [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38],
    ]).astype("float32")  # fmt: skip
    images = to_numpy(selection.non_negative(scores))
    assert images.dtype == np.float32 and np.all(np.isfinite(images)) and np.all(images >= 0)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(images[order]) >= 0)  # the same order
    small = np.abs(scores) < 2.0 ** (127 - 125)  # 3e38 is 1.76 * 2**127: below 2**(127 - 125), 0
    assert images.min() >= np.finfo(np.float32).tiny  # normal floats: 0.0 stays below them
    assert len(np.unique(images[~small])) == len(np.unique(scores[~small]))  # distinct stay distinct
    assert len(np.unique(images[small])) == 1


def test_random_is_seeded_reproducible_and_nested():
    model = cnn()

    def masks(seed, sparsity, again=None):
        pruned = again or tfprune.prune(model, None, criterion="random", seed=seed)
        tfprune.update_masks(pruned, sparsity)
        return pruned, [to_numpy(w.pruning_vars[0][1]) for w in wrappers(pruned)]

    a, half = masks(7, 0.5)
    _, most = masks(7, 0.8, again=a)
    _, same = masks(7, 0.5)
    _, other = masks(8, 0.5)
    assert all(np.array_equal(p, q) for p, q in zip(half, same))
    assert not all(np.array_equal(p, q) for p, q in zip(half, other))
    assert all(np.all(q <= p) for p, q in zip(half, most))  # nested
    keras.utils.set_random_seed(3)
    _, first = masks(None, 0.5)
    keras.utils.set_random_seed(3)
    _, second = masks(None, 0.5)
    assert all(np.array_equal(p, q) for p, q in zip(first, second))


def test_apoz_from_calibration_data_prunes_dead_channels():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu", name="d")])
    kernel = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    bias = np.array([0, 0, -100, 0, -100, 0], "float32")  # channels 2 and 4 never fire
    model.layers[0].set_weights([kernel, bias])
    pruned = tfprune.prune(model, None, criterion="apoz", granularity=granularity_lib.Filter())
    with pytest.raises(ValueError, match="collect_statistics"):
        tfprune.update_masks(pruned, 1 / 3)
    x = np.random.default_rng(1).normal(size=(40, 5)).astype("float32")
    with pytest.raises(ValueError, match=r"steps=True"):
        tfprune.collect_statistics(pruned, [x[:20], x[20:]], steps=True)
    with pytest.raises(TypeError, match=r"`data` must be an iterable of batches .*Received: data=None"):
        tfprune.collect_statistics(pruned, None)
    with pytest.raises(ValueError, match=r"`data` holds no batch.*Received: data=\[\]"):
        tfprune.collect_statistics(pruned, [])
    with pytest.raises(ValueError, match=r"batch_size=0"):
        tfprune.collect_statistics(pruned, x, batch_size=0)
    tfprune.collect_statistics(pruned, [x[:20], x[20:]], steps=np.int64(2))
    state = [to_numpy(wrappers(pruned)[0]._criterion_state[k]) for k in ("total", "count")]
    tfprune.update_masks(pruned, 1 / 3)
    bias_mask = to_numpy(wrappers(pruned)[0].pruning_vars[1][1])
    assert bias_mask.tolist() == [True, True, False, True, False, True]
    # One array (or an (x, y) tuple) is split into batches: the same statistics.
    for inputs in (x, (x, np.zeros(40))):
        again = tfprune.prune(model, None, criterion="apoz", granularity=granularity_lib.Filter())
        tfprune.collect_statistics(again, inputs, batch_size=20)
        got = [to_numpy(wrappers(again)[0]._criterion_state[k]) for k in ("total", "count")]
        for a, b in zip(got, state):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_activation_mean_collected_during_training():
    model = cnn()
    pruned = tfprune.prune(
        model,
        tfprune.ConstantSparsity(0.5, 0, frequency=4),
        criterion="activation_mean",
        granularity=granularity_lib.Filter(),
    )
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(pruned)
    fit(pruned, x, y, batch_size=8)
    for w in wrappers(pruned):
        bias_mask = to_numpy(w.pruning_vars[1][1])
        assert int(bias_mask.sum()) == bias_mask.size // 2


def test_user_defined_criterion():
    @keras.saving.register_keras_serializable(package="test")
    class Inverse(tfprune.Criterion):
        """Keeps the smallest weights (an odd criterion, easy to check)."""

        def scores(self, weights, state):
            return [1.0 / (keras.ops.abs(w) + 1.0) for w in weights]

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="d")])
    pruned = tfprune.prune(model, None, criterion=Inverse())
    original = np.abs(model.get_weights()[0])
    tfprune.update_masks(pruned, 0.75)
    mask = to_numpy(wrappers(pruned)[0].pruning_vars[0][1])
    assert set(original[mask]) == set(np.sort(original.ravel())[:4])


# ------------------------------------------------------ threshold pruners
def test_sensitivity_pruner_thresholds_are_s_sigma_of_the_first_step():
    model = cnn()
    pruned = tfprune.prune(
        model, tfprune.ConstantSparsity(0.5, 0, frequency=2), scope=tfprune.SensitivityThreshold(0.6)
    )
    before = {name: w for name, w in kernels(pruned)}
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(pruned, keras.optimizers.SGD(0.0))
    fit(pruned, x, y, batch_size=8)  # pruning steps 2 and 4, weights unchanged
    for w in wrappers(pruned):
        _, mask, threshold = w.pruning_vars[0]
        sigma = before[w.layer.name].std()
        assert float(to_numpy(threshold)) == pytest.approx(0.6 * sigma, rel=1e-5)
        assert float(to_numpy(w._sigmas[0])) == pytest.approx(sigma, rel=1e-5)
        weight = np.abs(before[w.layer.name])
        np.testing.assert_array_equal(to_numpy(mask), weight > float(to_numpy(threshold)))


def test_splicing_revives_a_weight_that_grows_back():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="d")])
    pruned = tfprune.prune(model, None, scope=tfprune.Splicing(low=0.8, high=1.5))
    (wrapper,) = wrappers(pruned)
    weight, mask, _ = wrapper.pruning_vars[0]
    tfprune.update_masks(pruned)
    m = to_numpy(mask)
    w = to_numpy(weight)
    sigma = float(to_numpy(wrapper._sigmas[0]))
    assert not m.all() and np.array_equal(m, np.abs(w) >= 0.8 * sigma)
    assert np.array_equal(to_numpy(weight), w)  # stored weights are not masked
    i, j = np.argwhere(~m)[0]
    w[i, j] = 1.2 * sigma  # between the thresholds: stays pruned
    weight.assign(w)
    tfprune.update_masks(pruned)
    assert not to_numpy(mask)[i, j]
    w[i, j] = 1.6 * sigma  # past the upper threshold: spliced back
    weight.assign(w)
    tfprune.update_masks(pruned)
    assert to_numpy(mask)[i, j]
    # pruned weights still get gradients (masks on the forward pass only)
    x, y = data((10,), n=16, classes=10)
    compile_model(pruned, keras.optimizers.SGD(0.1))
    before = to_numpy(weight)
    fit(pruned, x, y, batch_size=16)
    after = to_numpy(weight)
    assert np.any(after[~to_numpy(mask)] != before[~to_numpy(mask)])
    stripped = tfprune.strip_pruning(pruned).layers[0].get_weights()[0]
    assert np.all(stripped[~to_numpy(mask)] == 0)


# ------------------------------------------------------- lottery tickets
def test_rewind_restores_unpruned_weights_bit_exactly_and_keeps_masks():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(3, name="d2"),
        ]
    )
    snap = tfprune.snapshot_weights(model)  # of the dense model, before pruning
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.6, 0, frequency=2), scope="global")
    x, y = data((6,), n=32, classes=3)
    compile_model(pruned)
    fit(pruned, x, y, batch_size=8, epochs=2)
    masks = masks_of(pruned)
    tfprune.rewind_weights(pruned, snap)
    assert all(np.array_equal(masks[k], v) for k, v in masks_of(pruned).items())
    for w in wrappers(pruned):
        for weight, mask, _ in w.pruning_vars:
            original = snap.values[f"{w.layer.name}/{weight.name}"]
            value, mask = to_numpy(weight), to_numpy(mask)
            np.testing.assert_array_equal(value[mask], original[mask])
            assert np.all(value[~mask] == 0)
    bn = pruned.get_layer("bn")
    for variable in bn.weights:  # normalization statistics too
        np.testing.assert_array_equal(to_numpy(variable), snap.values[f"bn/{variable.name}"])
    with pytest.raises(ValueError, match="does not fit"):
        tfprune.rewind_weights(cnn(), snap)
    for call in (lambda: tfprune.snapshot_weights("x"), lambda: tfprune.rewind_weights("x", snap)):
        with pytest.raises(TypeError, match=r"Argument `model` must be a Keras model or layer. Received: model='x'"):
            call()


def test_iterative_magnitude_pruning_recipe():
    model = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="a"), keras.layers.Dense(3, name="b")]
    )
    pruned = tfprune.prune(model, None, scope="global")
    ticket = tfprune.snapshot_weights(pruned)
    x, y = data((12,), n=48, classes=3)
    total = 12 * 16 + 16 * 3
    previous = None
    for round_ in range(1, 4):
        compile_model(pruned)
        fit(pruned, x, y, batch_size=16)
        target = 1 - 0.5**round_
        tfprune.update_masks(pruned, target)
        tfprune.rewind_weights(pruned, ticket)
        masks = [to_numpy(w.pruning_vars[0][1]) for w in wrappers(pruned)]
        assert sum(int(m.sum()) for m in masks) == keep_count(total, target)
        if previous is not None:  # pruned weights stay pruned (they are zero)
            assert all(np.all(m <= p) for m, p in zip(masks, previous))
        previous = masks
        for w, m in zip(wrappers(pruned), masks):
            value = to_numpy(w.pruning_vars[0][0])
            start = ticket.values[f"{w.layer.name}/kernel"]
            np.testing.assert_array_equal(value, np.where(m, start, 0))


# ------------------------------------------------------------------ saving
@pytest.mark.parametrize(
    "options",
    [
        {"scope": "global", "criterion": "taylor"},
        {"scope": "erk", "criterion": "random", "seed": 3},
        {"granularity": "filter", "criterion": "movement"},
        {"scope": "lamp"},
        {"scope": "splicing"},
    ],
    ids=["global-taylor", "erk-random", "filter-movement", "lamp", "splicing"],
)
def test_engine_state_survives_keras_save_and_load_mid_training(tmp_path, options):
    options = dict(options)
    if options.get("scope") == "splicing":
        options["scope"] = tfprune.Splicing(0.5, 1.0)
    model = cnn()
    schedule = tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    pruned = tfprune.prune(model, schedule, **options)
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(pruned)
    fit(pruned, x, y, batch_size=8, shuffle=False)
    path = str(tmp_path / "mid.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(wrappers(pruned), wrappers(loaded)):
        assert a.pruner.get_config() == b.pruner.get_config()
        for va, vb in zip(a.variables, b.variables):
            np.testing.assert_array_equal(to_numpy(va), to_numpy(vb))
    fit(pruned, x, y, batch_size=8, shuffle=False)
    fit(loaded, x, y, batch_size=8, shuffle=False)
    assert len({id(w.pruner) for w in wrappers(loaded)}) == 1  # one pruner again
    assert len(wrappers(loaded)[0].pruner.members) == len(wrappers(loaded))
    for a, b in zip(wrappers(pruned), wrappers(loaded)):
        for (_, ma, _), (_, mb, _) in zip(a.pruning_vars, b.pruning_vars):
            np.testing.assert_array_equal(to_numpy(ma), to_numpy(mb))
    if options.get("scope") in ("global", "lamp"):
        total = sum(to_numpy(m).size for w in wrappers(loaded) for _, m, _ in w.pruning_vars)
        kept = sum(int(to_numpy(m).sum()) for w in wrappers(loaded) for _, m, _ in w.pruning_vars)
        assert kept == keep_count(total, 0.8)


# ------------------------------------------------------------------ hybrids
def test_different_pruners_on_different_layers_and_one_after_another():
    model = cnn()
    convs = tfprune.prune(
        model,
        tfprune.ConstantSparsity(0.5, 0, frequency=2),
        granularity=granularity_lib.Filter(),
        layers=["conv1", "conv2"],
    )
    both = tfprune.prune(convs, tfprune.ConstantSparsity(0.9, 0, frequency=2), scope="global", layers=["fc1", "fc2"])
    kinds = {w.layer.name: (type(w.pruner.granularity).__name__, type(w.pruner.scope).__name__) for w in wrappers(both)}
    assert kinds == {
        "conv1": ("Filter", "LayerWise"),
        "conv2": ("Filter", "LayerWise"),
        "fc1": ("Element", "Global"),
        "fc2": ("Element", "Global"),
    }
    x, y = data((8, 8, 3), n=32, classes=4)
    compile_model(both)
    fit(both, x, y, batch_size=8)
    fc = [to_numpy(w.pruning_vars[0][1]) for w in wrappers(both)[-2:]]
    assert sum(int(m.sum()) for m in fc) == keep_count(sum(m.size for m in fc), 0.9)
    # then elements: the filters removed first stay removed
    stage2 = tfprune.prune(tfprune.strip_pruning(both), tfprune.ConstantSparsity(0.7, 0, frequency=2), layers=["conv1", "conv2"])
    compile_model(stage2)
    fit(stage2, x, y, batch_size=8)
    conv1 = wrappers(stage2)[0]
    kernel = to_numpy(conv1.pruning_vars[0][0])
    removed = ~to_numpy(wrappers(both)[0].pruning_vars[1][1])
    assert np.all(kernel[..., removed] == 0)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"criterion": "l3"}, ValueError, r"criterion='l3'"),
        ({"granularity": "kernel"}, ValueError, r"granularity='kernel'"),
        ({"scope": "everything"}, ValueError, r"scope='everything'"),
        ({"seed": 1}, ValueError, r"criterion='magnitude', seed=1"),
        ({"scope": {"nope": 0.5}}, ValueError, r"Argument `scope` names layers .*\['nope'\]"),
        ({"scope": {"fc1": 1.5}}, ValueError, r"Argument `scope` must be .*scope=\{'fc1': 1.5\}"),
        ({"layers": ["fc9"]}, ValueError, r"Argument `layers` names layers .*\['fc9'\]"),
        ({"layers": "fc1"}, TypeError, r"layers='fc1'"),
        ({"max_sparsity": 1.0}, ValueError, r"max_sparsity=1.0"),
        (
            {"min_sparsity": {"flatten": 0.5}},
            ValueError,
            r"`min_sparsity` names layers this pruner does not prune: \['flatten'\] .*"
            r"the layers it wraps: \['conv1', 'conv2', 'fc1', 'fc2'\]",
        ),
        (
            {"max_sparsity": {"fc1": 0.5}, "layers": ["conv1"]},
            ValueError,
            r"`max_sparsity` names layers this pruner does not prune: \['fc1'\]",
        ),
        (
            {"max_sparsity": {"fc2": 0.5}, "granularity": "filter"},
            ValueError,
            r"\['fc2'\] \(limits apply to the producers of its coupled channel groups: "
            r"\['conv1', 'conv2', 'fc1'\]\)",
        ),
        ({"reduction": "median", "granularity": "filter"}, ValueError, r"reduction='median'"),
        (
            {"scope": tfprune.SensitivityThreshold(0.5), "granularity": granularity_lib.Filter()},
            ValueError,
            "granularity='element'",
        ),
        ({"scope": "lamp", "granularity": "filter"}, ValueError, r"coupled groups .*scope=LAMP"),
        ({"budget": "flops"}, ValueError, r"granularity='element', budget='flops'"),
        ({"granularity": "filter", "round_to": 0}, ValueError, r"round_to=0"),
        (
            {"granularity": "filter", "block_size": (2, 2)},
            ValueError,
            r"`block_size` do not apply to granularity='filter'.*block_size=\(2, 2\)",
        ),
        (
            {"granularity": "row", "sparsity_m_by_n": (2, 4)},
            ValueError,
            r"`sparsity_m_by_n` do not apply .*sparsity_m_by_n=\(2, 4\)",
        ),
        (
            {"granularity": "block", "block_size": (2, 2), "sparsity_m_by_n": (2, 4)},
            ValueError,
            r"`sparsity_m_by_n` do not apply to granularity='block'",
        ),
        (
            {"granularity": "m_by_n", "block_pooling_type": "MAX"},
            ValueError,
            r"`block_pooling_type` do not apply .*block_pooling_type='MAX'",
        ),
        ({"granularity": "head"}, ValueError, r"No layer of 'sequential.*' has weights .*Head"),
        ({"granularity": "block", "block_size": 2}, TypeError, r"`block_size` must be a tuple .*block_size=2"),
        ({"granularity": "filter", "block_size": 2}, ValueError, r"do not apply .*block_size=2"),
    ],
)
def test_bad_arguments_raise_before_anything_is_touched(kwargs, error, match):
    model = cnn()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        tfprune.prune(model, tfprune.ConstantSparsity(0.5, 0), **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_update_masks_rejects_a_bad_sparsity_and_leaves_masks():
    pruned = tfprune.prune(cnn(), None, scope="global")
    with pytest.raises(ValueError, match=r"sparsity=1.2"):
        tfprune.update_masks(pruned, 1.2)
    with pytest.raises(ValueError, match="no schedule"):
        tfprune.update_masks(pruned)
    for bad in ("0.5", {"conv1": 0.5}):
        with pytest.raises(TypeError, match=r"`sparsity` must be a float in \[0, 1\). Received: sparsity="):
            tfprune.update_masks(pruned, bad)
    assert all(m.all() for m in masks_of(pruned).values())


def test_update_masks_refuses_a_model_with_nothing_to_update():
    model = cnn()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"holds no pruning wrappers.*Received: model='sequential"):
        tfprune.update_masks(model, 0.5)  # the unpruned model by mistake
    with pytest.raises(TypeError, match=r"Received: model=\[1, 2\]"):
        tfprune.update_masks([1, 2], 0.5)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_single_layer_or_a_list_gets_the_checks_a_model_gets():
    schedule = tfprune.ConstantSparsity(0.5, 0)
    built = keras.layers.Dense(4, name="a")
    built.build((None, 3))
    for kwargs, match in (
        ({"layers": ["b"]}, r"Argument `layers` names layers not in the layers given: \['b'\]"),
        ({"max_sparsity": {"zzz": 0.3}}, r"Argument `max_sparsity` names layers not in the layers given"),
        ({"granularity": "head"}, r"Layer 'a' has no weights this pruner can prune"),
        ({"scope": {"zzz": 0.3}}, r"Argument `scope` names layers not in the layers given: \['zzz'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            tfprune.prune(built, schedule, **kwargs)
        with pytest.raises(ValueError, match=match.replace("Layer 'a' has no", "No layer of 'the list' has")):
            tfprune.prune([built], schedule, **kwargs)
    with pytest.raises(TypeError, match=r"Argument `model` must be a keras.Model .*Received: model=<Dense"):
        tfprune.hold_sparsity(built)


def test_scores_and_masks_can_be_read_at_any_step():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.5, 0, frequency=100), criterion="taylor")
    (wrapper,) = wrappers(pruned)
    x, y = data((6,), n=16, classes=4)
    compile_model(pruned, keras.optimizers.SGD(0.01))
    fit(pruned, x, y, batch_size=8)  # 2 steps, no pruning step yet
    scores = to_numpy(wrapper.importance_scores()[0])
    assert scores.shape == (6, 4) and np.all(scores >= 0) and np.any(scores > 0)
    assert to_numpy(wrapper.pruning_vars[0][1]).all()  # masks unchanged between pruning steps
    fit(pruned, x, y, batch_size=8)
    assert np.any(to_numpy(wrapper.importance_scores()[0]) != scores)  # scores moved on


@pytest.mark.parametrize("setting", ["jit_compile", "steps_per_execution", "mixed_float16"])
def test_global_taylor_under_xla_multi_step_and_mixed_precision(setting):
    from conftest import BACKEND

    compile_kwargs = {}
    if setting == "jit_compile":
        if BACKEND == "torch":
            pytest.skip("torch.compile is slow to compile; covered by the TFMOT path")
        compile_kwargs["jit_compile"] = True
    if setting == "steps_per_execution":
        if BACKEND == "torch":
            pytest.skip("Keras allows steps_per_execution > 1 only on TF and JAX")
        compile_kwargs["steps_per_execution"] = 4
    if setting == "mixed_float16":
        keras.config.set_dtype_policy("mixed_float16")
    model = cnn()
    schedule = tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=8, frequency=2)
    pruned = tfprune.prune(model, schedule, scope="global", criterion="taylor")
    x, y = data((8, 8, 3), n=64, classes=4)
    compile_model(pruned, **compile_kwargs)
    fit(pruned, x, y, batch_size=8)
    masks = [to_numpy(m) for w in wrappers(pruned) for _, m, _ in w.pruning_vars]
    assert all(int(to_numpy(w.pruning_step)) == 8 for w in wrappers(pruned))
    total = sum(m.size for m in masks)
    assert sum(int(m.sum()) for m in masks) == keep_count(total, 0.8)


@pytest.mark.parametrize("criterion", ["taylor", "movement"])
def test_an_n_m_pattern_waits_for_the_criterions_statistics(criterion):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu", name="d"),
                              keras.layers.Dense(3, name="o")])  # fmt: skip
    pruned = tfprune.prune(model, tfprune.ConstantSparsity(0.5, 0, frequency=1), criterion=criterion,
                           granularity="m_by_n", layers=["d"])  # fmt: skip
    compile_model(pruned)
    x, y = data((8,), n=32, classes=3)
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    mask = to_numpy(wrappers(pruned)[0].pruning_vars[0][1])
    assert (mask.reshape(2, 4, 8).sum(axis=1) == 2).all()  # 2 of every 4 inputs, per output


def test_an_n_m_group_cut_short_keeps_its_weights_under_signed_scores():
    from tfprune import masking

    scores = -1 - np.random.default_rng(0).random((6, 3)).astype("float32")  # all below 0
    keep = to_numpy(masking.MByN(2, 4)(scores, 0.5)[0])
    assert keep[4:].all() and (keep[:4].sum(axis=0) == 2).all()  # the last group has 2 of 4


def test_built_layers_are_checked_when_wrapped_and_criteria_check_their_arguments():
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 6, 6, 3))
    for to_prune in (conv, [conv]):
        with pytest.raises(ValueError, match=r"rank-2"):
            tfprune.prune(to_prune, tfprune.ConstantSparsity(0.5, 0), granularity="block", block_size=(2, 2))
    with pytest.raises(ValueError, match=r"`seed` must be >= 0. Received: seed=-1"):
        tfprune.prune(cnn(), None, criterion="random", seed=-1)
    with pytest.raises(ValueError, match=r"p=True"):
        scoring.Magnitude(True)
    for granularity in ("row", "m_by_n"):  # one score per output channel: all tie
        with pytest.raises(ValueError, match=r"lie along its inputs"):
            tfprune.prune(cnn(), None, criterion="apoz", granularity=granularity)
    with pytest.raises(ValueError, match=r"lie along its inputs"):  # coupled channels score producers
        tfprune.prune([keras.layers.Dense(3)], None, criterion="apoz", granularity="channel")


def test_lamp_scores_tie_equal_weights():
    scores = to_numpy(allocation.lamp_scores(np.array([[3.0, -1.0], [2.0, 1.0], [1.0, 1.0]], "float32")))
    np.testing.assert_allclose(scores, [[1.0, 1 / 17], [4 / 13, 1 / 17], [1 / 17, 1 / 17]], rtol=1e-6)
