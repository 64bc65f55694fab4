import numpy as np
import pytest
from conftest import to_numpy
from helpers import keep_count

from tfprune import allocation

SHAPES = [(3, 3, 3, 16), (3, 3, 16, 32), (2048, 128), (128, 10)]  # a small CNN


def _kept(shapes, sparsities):
    return sum((1 - s) * np.prod(shape) for shape, s in zip(shapes, sparsities))


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_erk_budget_sums_to_the_target_and_favours_small_layers(target):
    sparsities = allocation.erk(SHAPES, target)
    total = sum(np.prod(s) for s in SHAPES)
    assert _kept(SHAPES, sparsities) == pytest.approx((1 - target) * total, rel=1e-6)  # float32
    assert all(0.0 <= s < 1.0 for s in sparsities)
    # the first and last layers keep more of their weights than the big middle one
    assert sparsities[0] < sparsities[2] and sparsities[3] < sparsities[2]


def test_erk_caps_dense_layers_and_solves_the_rest_again():
    sparsities = allocation.erk([(100, 10), (1000, 1000)], 0.9)
    assert sparsities[0] == 0.0
    assert sparsities[1] == pytest.approx(1 - (0.1 * 1_001_000 - 1000) / 1e6)


def test_erk_gives_the_same_bits_for_a_host_float_and_a_tensor():
    # update_masks passes a float, a schedule inside fit a tensor: the same
    # kept counts either way (a float64 host solve once differed by a weight).
    from keras import ops

    rng = np.random.default_rng(0)
    for _ in range(60):
        shapes = [tuple(int(d) for d in rng.integers(1, 300, rng.integers(2, 5))) for _ in range(rng.integers(2, 6))]
        target = float(np.float32(rng.uniform(0.05, 0.99)))
        host = allocation.erk(shapes, target)
        tensor = [float(to_numpy(s)) for s in allocation.erk(shapes, ops.convert_to_tensor(target, "float32"))]
        assert host == tensor, (shapes, target)
    shapes = [(784, 300), (300, 100), (100, 10)]
    assert [keep_count(int(np.prod(s)), x) for s, x in zip(shapes, allocation.erk(shapes, 0.634))] == [
        keep_count(int(np.prod(s)), float(to_numpy(x)))
        for s, x in zip(shapes, allocation.erk(shapes, ops.convert_to_tensor(0.634, "float32")))
    ]


def test_uniform_and_explicit():
    assert allocation.uniform(SHAPES, 0.7) == [0.7] * 4
    assert allocation.explicit(["a", "b"], {"a": 0.5, "b": 0.25, "c": 0.9}) == [0.5, 0.25]
    with pytest.raises(ValueError, match=r"Missing: \['b'\]"):
        allocation.explicit(["a", "b"], {"a": 0.5})
    with pytest.raises(ValueError, match="target=1.0"):
        allocation.erk(SHAPES, 1.0)


@pytest.mark.parametrize("target", [0.3, 0.75, 0.99])
def test_global_masks_keep_exactly_the_globally_largest(target, rng):
    scores = [np.abs(rng.normal(size=s)).astype("float32") * scale
              for s, scale in zip([(20, 30), (7, 5), (64,)], [1.0, 3.0, 0.1])]
    masks, threshold = allocation.global_masks(scores, target)
    masks = [to_numpy(m) for m in masks]
    flat = np.concatenate([s.ravel() for s in scores])
    k = keep_count(flat.size, target)
    assert sum(int(m.sum()) for m in masks) == k
    kept = np.concatenate([s[m] for s, m in zip(scores, masks)])
    dropped = np.concatenate([s[~m] for s, m in zip(scores, masks)])
    assert dropped.size == 0 or dropped.max() < kept.min()
    assert float(to_numpy(threshold)) == kept.min()
    # per-weight sparsities differ: the scaled-down weight loses the most
    assert masks[2].mean() <= masks[0].mean() <= masks[1].mean()
    assert masks[2].mean() < masks[1].mean()


def test_lamp_scores_match_the_definition(rng):
    w = rng.normal(size=(6, 5)).astype("float32")
    got = to_numpy(allocation.lamp_scores(w))
    squares = (w**2).ravel()
    want = np.array([x / squares[squares >= x].sum() for x in squares]).reshape(w.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.max() == pytest.approx(1.0)  # the largest weight of each tensor
    np.testing.assert_array_equal(to_numpy(allocation.lamp_scores(np.zeros((3,), "float32"))), 0)
