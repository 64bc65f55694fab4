"""The exact k-th largest score, and the masks it gives.

Selection follows TFMOT's rule: of `n` scores keep

    k = max(round_half_to_even(n * (1 - sparsity)), 1)

the largest, ties at the threshold kept (`mask = scores >= threshold`, the
threshold being the k-th largest score; `threshold_mask`). The engine's
`top_k_mask` keeps exactly `k`, ties broken by position.

The threshold is found by an exact radix select over the float32 bit
patterns of the (non-negative) scores instead of sorting the whole tensor:
a histogram of the high 16 bits, one of the low 15 bits inside the bin
found, then the compare that writes the mask. From `PREDICT_FROM` elements
(TensorFlow and JAX) a sample of the scores predicts the high bin, and the
first two passes become one where the prediction holds (the second runs
where it does not, so the result is exact either way). `ElementScores`
lets every pass compute the scores of what it reads (e.g. `|w * mask|`)
instead of reading a scores tensor.

Example:
>>> import numpy as np
>>> scores = np.abs(np.arange(-5, 5, dtype="float32"))
>>> mask, threshold = threshold_mask(scores, 0.5)
>>> ops.convert_to_numpy(mask).astype(int).tolist(), float(threshold)
([1, 1, 1, 0, 0, 0, 0, 0, 1, 1], 3.0)
"""

import dataclasses
import functools

import numpy as np
from keras import ops

from tfprune import backend
from tfprune.backend import histogram

_HIGH_BITS = 16  # first radix pass: bits 30..15 of the pattern
_LOW_BITS = 15  # second radix pass: bits 14..0
_SAMPLE = 1 << 16  # scores sampled to predict the high bin of the threshold
_WINDOW = 16  # high bins around the prediction counted pattern by pattern


def keep_count(size, sparsity):
    """`k = max(round_half_to_even(size * (1 - sparsity)), 1)`, in float32.

    The arithmetic is float32, as in TFMOT, so the same `k` comes out.
    """
    sparsity = ops.cast(sparsity, "float32")
    kept = ops.round(ops.multiply(np.float32(size), 1.0 - sparsity))
    return ops.cast(ops.maximum(kept, 1.0), "int32")


def _high_ids(values):
    """The high bits (30..15) of float32 `values`' bit patterns."""
    return ops.right_shift(ops.view(values, "int32"), _LOW_BITS)


def _low_ids(values, high_bin):
    """Offsets of the bit patterns from the first pattern of `high_bin`.

    With the sign bit cleared, elements of the bin land in [0, 2**15);
    elements below it wrap to >= 2**31 - base and elements above it stay
    >= 2**15, so both fall outside the histogram and are not counted.
    """
    base = ops.left_shift(high_bin, _LOW_BITS)
    return ops.bitwise_and(ops.subtract(ops.view(values, "int32"), base), 0x7FFFFFFF)


def _float32(scores):
    return ops.cast(scores, "float32")


@dataclasses.dataclass(frozen=True, eq=False)
class ElementScores:
    """Scores given as `fn(*sources)`, an element-wise function of tensors of
    one shape, computed where they are read.

    A mask update reads its scores two or three times (one or two
    histograms, and the compare that writes the mask). Given the sources,
    each read computes the scores inside its own loop or fused kernel, so no
    whole-tensor copy of them is stored: the magnitude of a masked weight is
    `fn(weight, mask)`.
    `fn` should be one module-level function (compiled selections are keyed
    on it). A plain tensor is `ElementScores.of(tensor)`.

    Example:
    >>> scores = ElementScores(lambda w: ops.abs(w), (np.array([-3.0, 1.0], "float32"),))
    >>> ops.convert_to_numpy(scores.value()).tolist()
    [3.0, 1.0]
    """

    fn: object
    sources: tuple

    @classmethod
    def of(cls, scores):
        if isinstance(scores, ElementScores):
            return scores
        return cls(_float32, (scores,))

    @property
    def shape(self):
        return tuple(self.sources[0].shape)

    @property
    def size(self):
        return int(np.prod(self.shape))

    def value(self):
        """The scores as one float32 tensor."""
        return ops.cast(self.fn(*self.sources), "float32")

    def flat(self):
        return ElementScores(self.fn, tuple(ops.reshape(s, (-1,)) for s in self.sources))

    def part(self, start, size):
        """Scores of flat elements `[start, start + size)` (of a flat `self`);
        `start` a Python int or, inside a compiled loop, a traced one."""
        if isinstance(start, int):
            sources = tuple(s[start : start + size] for s in self.sources)
        else:
            sources = tuple(ops.slice(s, (start,), (size,)) for s in self.sources)
        return ElementScores(self.fn, sources).value()

    def sample(self, count):
        """`count` scores of a flat `self`, one from the middle of each of
        its first `count` runs of `size // count` elements."""
        stride = self.size // count
        sources = tuple(
            ops.reshape(s[: count * stride], (count, stride))[:, stride // 2] for s in self.sources
        )
        return ElementScores(self.fn, sources).value()


@functools.cache
def of_masked(score):
    """`fn(weight, mask)`: `score` of the masked weight, one function per
    `score` (an `ElementScores` function for a pruning wrapper's weights)."""

    def score_of_masked(weight, mask):
        return score(backend.masked(weight, mask))

    return score_of_masked


def _scanned_histogram(scores, ids_of, length, in_place=False):
    """`histogram(ids_of(scores.value()), length)` of flat `ElementScores`, in
    slices where that is faster.

    On a CPU a whole-tensor temporary (the scores, their bit patterns, the
    ids) can land in fresh memory on every call, and the page faults cost
    more than the histogram; a loop over slices of
    `backend.scan_slice(size)` elements computes them slice by slice in
    cache (the select of 16M elements: about 4x faster under XLA, 3x on
    PyTorch). Elsewhere one pass. `in_place`: every id is below `length`,
    and each slice's counts are scattered into the running counts
    (`backend.add_histogram`) instead of added to them as a new histogram,
    which costs a whole-array add per slice when `length` is large.
    """
    size = scores.size
    piece = backend.scan_slice(size)
    if piece is None:
        return histogram(ids_of(scores.value()), length)
    pieces = size // piece

    def add(counts, ids):
        if in_place:
            return backend.add_histogram(counts, ids)
        return ops.add(counts, histogram(ids, length))

    def body(i, counts):
        return add(counts, ids_of(scores.part(i * piece, piece)))

    counts = ops.fori_loop(0, pieces, body, ops.zeros((length,), "int32"))
    if size > pieces * piece:
        rest = scores.part(pieces * piece, size - pieces * piece)
        counts = add(counts, ids_of(rest))
    return counts


def _elementwise(scores, fn):
    """`fn(scores.value())` for an element-wise `fn` of flat `ElementScores`.

    Compiled (XLA), `fn` fuses with the scores into one loop that stores
    only its result. Eagerly every op stores a whole tensor, so there the
    scores are computed slice by slice where the scans are
    (`_scanned_histogram`) and the results joined.
    """
    size = scores.size
    piece = backend.scan_slice(size)
    if piece is None or not backend.dynamic_shapes_allowed():
        return fn(scores.value())
    return ops.concatenate(
        [fn(scores.part(start, min(piece, size - start))) for start in range(0, size, piece)]
    )


def _select_flat(counts, k):
    cumulative = ops.cumsum(counts)
    total = cumulative[-1]
    at_or_above = total - cumulative + counts  # count of bins >= b
    index = ops.sum(ops.cast(ops.greater_equal(at_or_above, k), "int32")) - 1
    above = total - ops.take(cumulative, index)  # count of bins > index
    return index, k - above


def _select_bin(counts, k, width=256):
    """Index of the histogram bin holding the k-th largest element.

    Returns `(bin, rank)`, where `rank` is the position (1-based) of the k-th
    largest element among the elements of that bin. The bins are searched as
    a `(n / width, width)` grid, row totals first, so no scan runs over all
    `n` bins: XLA's cumulative sum on a CPU is a windowed reduction. Eager
    (PyTorch) it is one linear pass, and each op costs a dispatch: the bins
    are searched flat.
    """
    size = counts.shape[0]
    if size <= width or size % width or backend.dynamic_shapes_allowed():
        return _select_flat(counts, k)
    grid = ops.reshape(counts, (size // width, width))
    row, rank = _select_flat(ops.sum(grid, axis=1), k)
    column, rank = _select_flat(ops.take(grid, row, axis=0), rank)
    return row * width + column, rank


# Below this many elements one sort is cheaper than two 2**16-bin histograms.
SORT_BELOW = 1 << 14
# From this many elements a compiled select predicts the high bin from a sample.
PREDICT_FROM = 1 << 22


def kth_largest(scores, k):
    """Exact k-th largest value of non-negative float32 `scores` (any shape;
    a tensor or `ElementScores`).

    Radix select: non-negative IEEE floats order like their bit patterns, so a
    histogram of the high bits locates the bin of the k-th largest value and a
    histogram of the low bits inside that bin locates the value itself; from
    `PREDICT_FROM` elements one pass does both where a sample predicts the
    bin (`_predicted_select`). Small tensors (fewer than `SORT_BELOW`
    elements) are sorted instead; all give the same value.

    Example:
    >>> float(kth_largest(np.array([0.5, 3.0, 2.0, 2.0], "float32"), 2))
    2.0
    """
    return _compiled(_kth_largest, ElementScores.of(scores), ops.cast(k, "int32"))


def threshold_mask(scores, sparsity):
    """Keeps the `keep_count` largest scores and every score tied with the
    last of them (TFMOT's rule); returns `(mask, threshold)`. `scores`: a
    tensor or `ElementScores`.
    """
    scores = ElementScores.of(scores)
    keep, threshold = _compiled(_at_or_above_kth, scores, keep_count(scores.size, sparsity))
    return ops.reshape(keep, scores.shape), threshold


def top_k_mask(scores, k, eligible=None):
    """Exactly the `k` largest of non-negative 1-D float32 `scores` (a tensor
    or `ElementScores`).

    Ties at the threshold are broken by position (lower index first), so the
    count is exact even where many scores are equal (zeros of pruned weights).
    With `eligible` (a boolean vector) only eligible entries are kept; fewer
    than `k` eligible keeps all of them. Returns `(mask, threshold)`.

    Example:
    >>> mask, _ = top_k_mask(np.array([1.0, 0.0, 2.0, 0.0, 0.0], "float32"), 3)
    >>> ops.convert_to_numpy(mask).astype(int).tolist()
    [1, 1, 1, 0, 0]
    """
    return _compiled(_top_k, ElementScores.of(scores), ops.cast(k, "int32"), eligible)


def _compiled(select, scores, *args):
    """`select(sources, fn, *args)` on the flat scores, as one compiled
    function where it pays (`backend.fused`: XLA on TensorFlow)."""
    scores = scores.flat()
    if backend.dynamic_shapes_allowed() and backend.scan_slice(scores.size) is None:
        # Eager whole-tensor ops store every result anyway: compute the scores once.
        scores = ElementScores.of(scores.value())
    if scores.size < SORT_BELOW:
        return select(scores.sources, scores.fn, *args)
    return backend.fused(select)(scores.sources, scores.fn, *args)


def _kth_largest(sources, fn, k):
    return _select(ElementScores(fn, tuple(sources)), k)[0]


def _at_or_above_kth(sources, fn, k):
    scores = ElementScores(fn, tuple(sources))
    threshold = _select(scores, k)[0]
    return _elementwise(scores, lambda values: ops.greater_equal(values, threshold)), threshold


def _top_k(sources, fn, k, eligible):
    scores = ElementScores(fn, tuple(sources))
    if eligible is not None:
        values = scores.value()
        scores = ElementScores.of(ops.where(eligible, values, ops.zeros_like(values)))
    threshold, needed, ties = _select(scores, ops.maximum(k, 1))

    def first_ties():
        """Index after the last tie kept: the first `room` ties by position."""
        values = scores.value()
        tied = ops.equal(values, threshold)
        if eligible is not None:
            tied = ops.logical_and(tied, eligible)
        room = k - ops.sum(ops.cast(ops.greater(values, threshold), "int32"))
        before = ops.sum(ops.cast(ops.less(ops.cumsum(ops.cast(tied, "int32")), room), "int32"))
        return ops.where(ops.greater(room, 0), before + 1, 0)

    size = scores.size
    if eligible is None:
        # Usually every score equal to the threshold is kept: the scan over
        # positions (a cumulative sum) runs only when some are not.
        limit = ops.cond(ops.equal(needed, ties), lambda: ops.convert_to_tensor(size), first_ties)
    else:
        limit = first_ties()
    # One element-wise pass: above the threshold, or a tie before the limit.
    values = scores.value()
    tied = ops.logical_and(
        ops.equal(values, threshold), ops.less(ops.arange(size, dtype="int32"), limit)
    )
    if eligible is not None:
        tied = ops.logical_and(tied, eligible)
    keep = ops.logical_and(ops.logical_or(ops.greater(values, threshold), tied), ops.greater(k, 0))
    return keep, threshold


def _select(scores, k):
    """`(t, needed, ties)` of flat `ElementScores`: the k-th largest score
    `t`, how many scores equal `t`, and how many of those the k largest hold.
    """
    size = scores.size
    if size < SORT_BELOW:
        flat = scores.value()
        threshold = ops.take(ops.sort(flat), size - k)
        above = ops.sum(ops.cast(ops.greater(flat, threshold), "int32"))
        ties = ops.sum(ops.cast(ops.equal(flat, threshold), "int32"))
        return threshold, k - above, ties
    if size >= PREDICT_FROM and not backend.dynamic_shapes_allowed():
        return _predicted_select(scores, k)
    high_counts = _scanned_histogram(scores, _high_ids, 1 << _HIGH_BITS)
    high_bin, rank = _select_bin(high_counts, k)
    return _low_pass(scores, high_bin, rank)


def _low_pass(scores, high_bin, rank):
    """The second radix pass: `_select`'s result from the high bin holding
    the k-th largest score and its rank there."""
    low_counts = _scanned_histogram(
        scores, lambda values: _low_ids(values, high_bin), 1 << _LOW_BITS
    )
    return _threshold(high_bin, low_counts, rank)


def _threshold(high_bin, low_counts, rank):
    # A low bin holds one bit pattern: `needed` of its elements are kept.
    low_bin, needed = _select_bin(low_counts, rank)
    threshold_bits = ops.bitwise_or(ops.left_shift(high_bin, _LOW_BITS), low_bin)
    threshold = ops.view(ops.cast(threshold_bits, "int32"), "float32")
    return threshold, needed, ops.take(low_counts, low_bin)


def _predicted_select(scores, k):
    """`_select` in one histogram pass where a sample predicts the high bin.

    In a sample of `s = _SAMPLE` scores the k-th largest of all has rank
    about `r = k * s / n`, within `d = 4 sqrt(r (1 - r / s)) + 2` (four
    binomial standard deviations). One pass counts the elements of a window
    of `_WINDOW` high bins by their bit pattern (those bins' low histograms)
    and every other element by its high bin; the window reaches one bin above
    the sample's `(r - d)`-th largest and reaches down from there, so it also
    holds the threshold of a weight already pruned to the target, the
    smallest of its non-zero scores, where the sample's `r`-th largest may be
    a zero. If the k-th largest score lies in the window, its low histogram
    is already counted; otherwise (a sample unlike the rest) the second pass
    runs. The result is exact either way. On a CPU a histogram pass costs a
    scatter per element, about 2.5 element-wise passes under XLA.
    """
    high_size, window = 1 << _HIGH_BITS, _WINDOW << _LOW_BITS
    count = min(_SAMPLE, scores.size)
    expected = ops.multiply(ops.cast(k, "float32"), count / scores.size)
    spread = 4.0 * ops.sqrt(ops.multiply(expected, 1.0 - expected / count)) + 2.0
    top, _ = _select_bin(
        histogram(_high_ids(scores.sample(count)), high_size),
        ops.clip(ops.cast(expected - spread, "int32"), 1, count),
    )
    first = ops.clip(top - (_WINDOW - 2), 0, high_size - _WINDOW)
    base = ops.left_shift(first, _LOW_BITS)

    def ids_of(values):
        bits = ops.view(values, "int32")
        offset = ops.subtract(bits, base)
        inside = ops.logical_and(ops.greater_equal(offset, 0), ops.less(offset, window))
        return ops.where(inside, ops.add(offset, high_size), ops.right_shift(bits, _LOW_BITS))

    counts = _scanned_histogram(scores, ids_of, high_size + window, in_place=True)
    low_counts = ops.reshape(counts[high_size:], (_WINDOW, 1 << _LOW_BITS))
    # The window's high bins counted nothing: their elements are in `low_counts`.
    high_counts = ops.slice_update(counts[:high_size], (first,), ops.sum(low_counts, axis=1))
    high_bin, rank = _select_bin(high_counts, k)
    row = ops.subtract(high_bin, first)
    in_window = ops.logical_and(ops.greater_equal(row, 0), ops.less(row, _WINDOW))
    return ops.cond(
        in_window,
        lambda: _threshold(high_bin, ops.take(low_counts, ops.clip(row, 0, _WINDOW - 1), axis=0), rank),
        lambda: _low_pass(scores, high_bin, rank),
    )


def largest_magnitude(scores):
    """`max |scores|`, the reference of `non_negative`."""
    return ops.max(ops.abs(ops.cast(scores, "float32")))


def non_negative(scores, largest=None):
    """Signed float32 scores mapped to non-negative ones in the same order.

    A float's magnitude orders like its bit pattern `a`, so a score becomes
    the float whose pattern is `M + (a - base)` (`M - (a - base)` if
    negative), where `M` is the pattern of 2.0 (the image of 0) and `base`
    the pattern of `2**(e - 125)`, `2**e` being the power of two at or
    below `largest` (0 for `e < 125`). Distinct scores keep distinct images
    and their order, except those smaller in magnitude than `2**(e - 125)`,
    which rank as 0. Images are normal floats from about `2**-125` (CPUs
    flushing subnormals to zero still order them), and 0.0 is left free
    below all of them. (Subtracting the minimum instead rounds distinct
    scores near 0 together where the minimum is large.) `largest`: the
    largest magnitude of all the scores ranked together (default: these).

    >>> images = non_negative(np.array([-1e5, 1e-3, 1.0000001e-3, 0.0, -0.0], "float32"))
    >>> np.argsort(ops.convert_to_numpy(images), kind="stable").tolist()
    [0, 3, 4, 1, 2]
    """
    scores = ops.cast(scores, "float32")
    if largest is None:
        largest = largest_magnitude(scores)
    exponent = ops.right_shift(ops.view(ops.cast(largest, "float32"), "int32"), 23)
    base = ops.left_shift(ops.maximum(exponent - 125, 0), 23)
    magnitude = ops.bitwise_and(ops.view(scores, "int32"), 0x7FFFFFFF)
    offset = ops.clip(ops.subtract(magnitude, base), 0, (126 << 23) - 1)
    two = np.int32(128 << 23)
    bits = ops.where(ops.less(scores, 0.0), ops.subtract(two, offset), ops.add(two, offset))
    return ops.view(ops.cast(bits, "int32"), "float32")
