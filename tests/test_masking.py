import functools

import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import keep_count

from tfprune import masking, scoring, selection


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 65537])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_kth_largest_matches_sort(size, sparsity):
    rng = np.random.default_rng(size)
    scores = np.abs(rng.normal(size=size)).astype("float32")
    k = keep_count(size, sparsity)
    got = float(to_numpy(selection.kth_largest(scores, k)))
    assert got == np.sort(scores)[::-1][k - 1]
    mask, threshold = selection.threshold_mask(scores, sparsity)
    mask = to_numpy(mask)
    assert int(mask.sum()) == k
    assert float(to_numpy(threshold)) == got


def test_keep_count_is_tfmot_rule():
    assert int(to_numpy(selection.keep_count(100, 0.5))) == 50
    assert int(to_numpy(selection.keep_count(5, 0.5))) == 2  # 2.5 rounds half to even
    assert int(to_numpy(selection.keep_count(7, 0.5))) == 4  # 3.5 -> 4
    assert int(to_numpy(selection.keep_count(10, 0.999))) == 1  # never empty


def test_ties_at_threshold_are_kept():
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0], "float32")
    mask, threshold = selection.threshold_mask(scores, 0.5)  # k = 3
    assert to_numpy(mask).tolist() == [True, True, True, True, False, False]
    assert float(to_numpy(threshold)) == 2.0


def test_extreme_values():
    scores = np.array([0.0, 1e-45, 1e-38, 3.4e38, np.inf, 1.0], "float32")
    for k in range(1, 7):
        got = float(to_numpy(selection.kth_largest(scores, k)))
        assert got == np.sort(scores)[::-1][k - 1]


def test_block_avg_and_max_with_partial_blocks():
    w = np.arange(1, 16, dtype="float32").reshape(3, 5)
    for pooling in ("AVG", "MAX"):
        g = masking.Block((2, 2), pooling)
        pooled = to_numpy(g.pool(w))
        assert pooled.shape == (2, 3)
        if pooling == "MAX":
            assert pooled.tolist() == [[7, 9, 10], [12, 14, 15]]
        else:
            assert pooled[0, 2] == pytest.approx((5 + 10) / 2)
            assert pooled[1, 2] == pytest.approx(15.0)
        mask, _ = g(w, 0.5)
        mask = to_numpy(mask)
        assert mask.shape == (3, 5)
        for r in range(0, 3, 2):
            for c in range(0, 5, 2):
                block = mask[r : r + 2, c : c + 2]
                assert block.min() == block.max()


def test_m_by_n_dense_and_conv_layouts():
    rng = np.random.default_rng(0)
    dense = np.abs(rng.normal(size=(12, 5))).astype("float32")
    mask = to_numpy(masking.MByN(2, 4, in_axis=0, out_axis=1)(dense, 0.0)[0])
    groups = mask.T.reshape(5, 3, 4)
    assert np.all(groups.sum(-1) == 2)
    conv = np.abs(rng.normal(size=(3, 3, 8, 4))).astype("float32")
    mask = to_numpy(masking.MByN(1, 4)(conv, 0.0)[0])
    groups = np.transpose(mask, (3, 0, 1, 2)).reshape(-1, 2, 4)
    assert np.all(groups.sum(-1) == 3)
    scores = np.transpose(conv, (3, 0, 1, 2)).reshape(-1, 2, 4)
    smallest = scores.argmin(-1)
    assert np.all(np.take_along_axis(groups, smallest[..., None], -1) == 0)


def test_m_by_n_ties_keep_lower_index_and_ragged_groups():
    w = np.array([[1.0], [1.0], [1.0], [1.0], [5.0], [2.0]], "float32")  # in=6
    mask = to_numpy(masking.MByN(2, 4, in_axis=0, out_axis=1)(w, 0.0)[0]).ravel()
    assert mask.tolist() == [True, True, False, False, True, True]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(block_size=(1, 0)), ValueError, "block_size"),
        (dict(block_size=(1, 2, 3)), TypeError, "block_size"),
        (dict(block_size=(1.5, 2)), TypeError, "block_size"),
        (dict(block_pooling_type="avg"), ValueError, "block_pooling_type"),
        (dict(sparsity_m_by_n=(2, 2)), ValueError, "sparsity_m_by_n"),
        (dict(sparsity_m_by_n=2), TypeError, "sparsity_m_by_n"),
        (dict(sparsity_m_by_n=(2, 4), block_size=(2, 2)), ValueError, "cannot be combined"),
    ],
)
def test_granularity_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        masking.granularity_from_args(**kwargs)


def test_granularity_from_args():
    assert masking.granularity_from_args() == masking.Unstructured()
    assert masking.granularity_from_args((2, 4), "MAX") == masking.Block((2, 4), "MAX")
    assert masking.granularity_from_args(sparsity_m_by_n=[2, 4]) == masking.MByN(2, 4)


def test_mask_update_traces_under_jit():
    backend = keras.backend.backend()
    scores = np.abs(np.random.default_rng(0).normal(size=(64, 32))).astype("float32")
    fn = masking.Unstructured()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda s, p: masking.Unstructured()(s, p), jit_compile=True)
    elif backend == "jax":
        import jax

        fn = jax.jit(lambda s, p: masking.Unstructured()(s, p))
    mask, _ = fn(scores, np.float32(0.75))
    assert int(to_numpy(mask).sum()) == keep_count(64 * 32, 0.75)


@functools.cache
def _compiled_variants():
    """The mask update as it runs in training: traced and compiled."""
    backend = keras.backend.backend()
    plain = masking.Unstructured()
    if backend == "tensorflow":
        import tensorflow as tf

        return {
            "graph": tf.function(lambda s, p: plain(s, p)),
            "xla": tf.function(lambda s, p: plain(s, p), jit_compile=True),
        }
    if backend == "jax":
        import jax

        return {"jit": jax.jit(lambda s, p: plain(s, p))}
    return {"eager": plain}


def _radix_cases():
    rng = np.random.default_rng(7)
    n = selection.SORT_BELOW + 1000  # above the sort cut-off: radix select
    gaussian = np.abs(rng.normal(size=n))
    mostly_zero = np.where(rng.random(n) < 0.9, 0.0, gaussian)  # pruned weights
    # every value within one high-bits bin, plus outliers far above and below
    one_bin = 1.0 + rng.integers(0, 1 << 15, n) * np.float32(2**-23)
    one_bin[:50] = 1e30
    one_bin[50:100] = 1e-30
    ties = np.repeat(rng.random(n // 100), 100)[:n]
    ties = np.concatenate([ties, np.zeros(n - ties.size)])
    extremes = np.concatenate([[np.inf, 3.4e38, 1e-45], gaussian[3:]])
    return {
        "gaussian": gaussian,
        "mostly_zero": mostly_zero,
        "one_bin": one_bin,
        "ties": ties,
        "extremes": extremes,
    }


@pytest.mark.parametrize("case", sorted(_radix_cases()))
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.995])
def test_radix_select_compiled_matches_sort(case, sparsity):
    scores = _radix_cases()[case].astype("float32")
    k = keep_count(scores.size, sparsity)
    expected = np.sort(scores)[::-1][k - 1]
    for name, fn in _compiled_variants().items():
        mask, threshold = fn(scores, np.float32(sparsity))
        assert float(to_numpy(threshold)) == expected, name
        assert to_numpy(mask).tolist() == (scores >= expected).tolist(), name


def _top_k_reference(scores, k, eligible=None):
    """The k largest scores, ties by position (lower index first)."""
    scores = np.where(eligible, scores, 0) if eligible is not None else scores
    order = np.lexsort((np.arange(scores.size), -scores))
    keep = np.zeros(scores.size, bool)
    candidates = order if eligible is None else order[eligible[order]]
    keep[candidates[:k]] = True
    return keep


def _compiled(fn):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn


@pytest.mark.parametrize("k_fraction", [0.05, 0.1, 0.6])
def test_element_scores_of_masked_weights_match_numpy(k_fraction):
    # Large enough for the sliced scans (with a remainder), a tenth of the
    # weights pruned (stored zeros), a run of ties, and masked-out weights
    # that are not zero (forward-only masks): their score must be 0.
    rng = np.random.default_rng(3)
    n = 2**19 + 2**18 + 777
    w = rng.normal(size=n).astype("float32")
    w[rng.random(n) < 0.1] = 0.0
    w[1000:6000] = 2.5
    mask = rng.random(n) > 0.3
    scores = np.abs(np.where(mask, w, 0)).astype("float32")
    k = int(n * k_fraction)
    of_masked = selection.of_masked(scoring.magnitude)
    lazy = selection.ElementScores(of_masked, (w, mask))

    top_k = _compiled(lambda w, m: selection.top_k_mask(selection.ElementScores(of_masked, (w, m)), k))
    keep, threshold = top_k(w, mask)
    assert to_numpy(keep).tolist() == _top_k_reference(scores, k).tolist()
    assert float(to_numpy(threshold)) == np.sort(scores)[::-1][k - 1]

    tfmot = _compiled(
        lambda w, m: selection.threshold_mask(selection.ElementScores(of_masked, (w, m)), 1 - k / n)
    )
    keep, threshold = tfmot(w, mask)
    kept = keep_count(n, 1 - k / n)
    expected = np.sort(scores)[::-1][kept - 1]
    assert float(to_numpy(threshold)) == expected
    assert to_numpy(keep).tolist() == (scores >= expected).tolist()
    assert float(to_numpy(selection.kth_largest(lazy, k))) == np.sort(scores)[::-1][k - 1]


def test_top_k_with_eligible_on_sliced_scans():
    rng = np.random.default_rng(4)
    n = 2**19 + 2**18 + 5
    scores = np.abs(rng.normal(size=n)).astype("float32")
    scores[rng.random(n) < 0.5] = 0.0
    eligible = rng.random(n) < 0.7
    for k in (1000, int(0.5 * n)):  # the second: fewer eligible non-zeros than k
        keep, _ = _compiled(lambda s, e, k=k: selection.top_k_mask(s, k, e))(scores, eligible)
        assert to_numpy(keep).tolist() == _top_k_reference(scores, k, eligible).tolist()


def _predicted_case(name):
    """Scores of `PREDICT_FROM` elements and more: one histogram pass where a
    sample predicts the bin of the threshold, two where it does not."""
    rng = np.random.default_rng(11)
    n = selection.PREDICT_FROM + 17
    if name == "ties":
        return np.repeat(rng.random(n // 1000 + 1), 1000)[:n].astype("float32")
    scores = np.abs(rng.normal(size=n)).astype("float32")
    if name == "misleading":  # every sampled score far above the others: the prediction misses
        stride = n // selection._SAMPLE
        scores[stride // 2 : stride * selection._SAMPLE : stride] = 1e6
    if name == "mostly_zero":
        scores[rng.random(n) < 0.9] = 0.0
    if name == "pruned":  # pruned to 0.9 before: the threshold is the smallest non-zero
        scores[scores < np.sort(scores)[n - keep_count(n, 0.9)]] = 0.0
    return scores


@pytest.mark.parametrize("case", ["gaussian", "misleading", "mostly_zero", "pruned", "ties"])
def test_predicted_select_matches_sort(case):
    scores = _predicted_case(case)
    ordered = np.sort(scores)[::-1]
    for sparsity in (0.0, 0.5, 0.9, 0.995):
        k = keep_count(scores.size, sparsity)
        for name, fn in _compiled_variants().items():
            mask, threshold = fn(scores, np.float32(sparsity))
            assert float(to_numpy(threshold)) == ordered[k - 1], (name, sparsity)
            assert int(to_numpy(mask).sum()) == int(np.sum(scores >= ordered[k - 1])), name
    keep, _ = _compiled(lambda s: selection.top_k_mask(s, 1000))(scores)
    assert to_numpy(keep).tolist() == _top_k_reference(scores, 1000).tolist()


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_scans_in_slices_match_numpy(monkeypatch, sparsity):
    # The sliced scans run on large weights only (16M elements on PyTorch);
    # here slices of 4096 cover a small one, with a remainder, zeros and ties.
    from tfprune import backend

    monkeypatch.setattr(backend, "scan_slice", lambda size: 4096 if size >= 8192 else None)
    rng = np.random.default_rng(5)
    n = selection.SORT_BELOW + 2048 + 17 + int(sparsity * 10)  # a shape of its own: traced anew
    w = rng.normal(size=n).astype("float32")
    w[rng.random(n) < 0.2] = 0.0
    w[100:400] = -1.5
    mask = rng.random(n) > 0.1
    scores = np.abs(np.where(mask, w, 0)).astype("float32")
    lazy = selection.ElementScores(selection.of_masked(scoring.magnitude), (w, mask))
    keep, threshold = selection.threshold_mask(lazy, sparsity)
    expected = np.sort(scores)[::-1][keep_count(n, sparsity) - 1]
    assert float(to_numpy(threshold)) == expected
    assert to_numpy(keep).tolist() == (scores >= expected).tolist()
    k = int(n * (1 - sparsity))
    keep, _ = selection.top_k_mask(lazy, k)
    assert to_numpy(keep).tolist() == _top_k_reference(scores, k).tolist()


def test_torch_scatter_histogram_matches_bincount():
    if keras.backend.backend() != "torch":
        pytest.skip("the PyTorch histogram off a CPU")
    import torch

    from tfprune import backend

    ids = torch.tensor([0, 3, 3, 9, 8, 7, 2**31 - 1, 0], dtype=torch.int32)
    clamped = torch.clamp(ids, max=8)
    assert backend._scattered_counts(clamped, 8).tolist() == [2, 0, 0, 2, 0, 0, 0, 1]
    assert backend.histogram(ids, 8).tolist() == [2, 0, 0, 2, 0, 0, 0, 1]
