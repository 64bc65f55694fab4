"""Masks from scores: `(scores, target sparsity, granularity) -> mask`.

Scores are non-negative importance values with the shape of the weight
(magnitude `|w|` by default, see `tfprune.scoring`). A granularity decides the
shape of what is kept or removed (TFMOT's `prune_low_magnitude` options):

- `Unstructured()`: single elements.
- `Block((bh, bw), "AVG" | "MAX")`: rank-2 blocks, scored by the average or
  maximum score of their elements.
- `MByN(m, n)`: `m` zeros in every `n` consecutive elements along the input
  channel (TFLite layout), independent of the target sparsity.

The kept count and threshold follow TFMOT's rule (`tfprune.selection`).

Example:
>>> import numpy as np
>>> scores = np.abs(np.arange(-5, 5, dtype="float32"))
>>> mask, threshold = Unstructured()(scores, 0.5)
>>> ops.convert_to_numpy(mask).astype(int).tolist(), float(threshold)
([1, 1, 1, 0, 0, 0, 0, 0, 1, 1], 3.0)
"""

import dataclasses

import numpy as np
from keras import ops

from tfprune.selection import keep_count, threshold_mask  # noqa: F401 (keep_count: as before)


@dataclasses.dataclass(frozen=True)
class Unstructured:
    """Element-wise granularity: each weight is kept or removed alone."""

    def validate(self, shape, name="weight"):
        del shape, name

    def __call__(self, scores, sparsity):
        return threshold_mask(scores, sparsity)


@dataclasses.dataclass(frozen=True)
class Block:
    """Rank-2 blocks of `block_size`, scored by `pooling` ("AVG" or "MAX").

    Blocks tile the weight from index (0, 0); blocks cut by the edge are scored
    over their elements inside the weight. `k` is counted in blocks.

    Example:
    >>> w = np.array([[1, 1, 0, 0], [1, 1, 0, 9]], "float32")
    >>> mask, _ = Block((2, 2), "AVG")(w, 0.5)
    >>> ops.convert_to_numpy(mask).astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    """

    block_size: tuple = (1, 1)
    pooling: str = "AVG"

    def validate(self, shape, name="weight"):
        if len(shape) != 2:
            raise ValueError(
                f"Block sparsity (block_size={tuple(self.block_size)}) needs "
                f"rank-2 weights; `{name}` has shape {tuple(shape)}."
            )

    def pool(self, scores):
        bh, bw = self.block_size
        rows, cols = scores.shape
        out_rows, out_cols = -(-rows // bh), -(-cols // bw)
        padded = ops.pad(scores, ((0, out_rows * bh - rows), (0, out_cols * bw - cols)))
        blocks = ops.reshape(padded, (out_rows, bh, out_cols, bw))
        if self.pooling == "MAX":  # scores are >= 0, so zero padding is inert
            return ops.max(ops.max(blocks, axis=3), axis=1)
        counts = np.outer(
            np.minimum(bh, rows - bh * np.arange(out_rows)),
            np.minimum(bw, cols - bw * np.arange(out_cols)),
        ).astype("float32")
        return ops.divide(ops.sum(ops.sum(blocks, axis=3), axis=1), ops.convert_to_tensor(counts))

    def expand(self, block_mask, shape):
        bh, bw = self.block_size
        mask = ops.repeat(ops.repeat(block_mask, bh, axis=0), bw, axis=1)
        return mask[: shape[0], : shape[1]]

    def __call__(self, scores, sparsity):
        scores = ops.cast(scores, "float32")
        block_mask, threshold = threshold_mask(self.pool(scores), sparsity)
        return self.expand(block_mask, scores.shape), threshold


@dataclasses.dataclass(frozen=True)
class MByN:
    """`m` zeros in every `n` consecutive weights along the input channel.

    The weight is laid out as TFLite stores it, output channel first and input
    channel last (`Dense (in, out) -> (out, in)`, `Conv2D (h, w, in, out) ->
    (out, h, w, in)`); each row is cut into groups of `n` and the `n - m`
    largest scores of each group are kept (the lower index wins a tie).

    Example:
    >>> w = np.array([[4.0], [1.0], [3.0], [2.0]], "float32")  # Dense (in=4, out=1)
    >>> mask, _ = MByN(2, 4)(w, 0.0)
    >>> ops.convert_to_numpy(mask).astype(int).ravel().tolist()
    [1, 0, 1, 0]
    """

    m: int = 2
    n: int = 4
    in_axis: int = -2
    out_axis: int = -1

    def validate(self, shape, name="weight"):
        if len(shape) < 2:
            raise ValueError(
                f"sparsity_m_by_n=({self.m}, {self.n}) needs weights of rank >= 2; "
                f"`{name}` has shape {tuple(shape)}."
            )

    def _layout(self, rank):
        in_axis, out_axis = self.in_axis % rank, self.out_axis % rank
        middle = [a for a in range(rank) if a not in (in_axis, out_axis)]
        return [out_axis] + middle + [in_axis]

    def __call__(self, scores, sparsity):
        del sparsity  # the pattern fixes the sparsity at m / n
        scores = ops.cast(scores, "float32")
        shape = tuple(scores.shape)
        perm = self._layout(len(shape))
        laid_out = ops.transpose(scores, perm)
        rows = laid_out.shape
        matrix = ops.reshape(laid_out, (-1, rows[-1]))
        channels = rows[-1]
        groups = -(-channels // self.n)
        # Padding ranks last, below any score (signed criteria score below 0).
        padded = ops.pad(matrix, ((0, 0), (0, groups * self.n - channels)), constant_values=-np.inf)
        grouped = ops.reshape(padded, (-1, groups, self.n, 1))
        others = ops.swapaxes(grouped, 2, 3)
        lower = np.tril(np.ones((self.n, self.n), bool), -1)  # j < i
        beaten_by = ops.logical_or(
            ops.greater(others, grouped),
            ops.logical_and(ops.equal(others, grouped), lower),
        )
        rank = ops.sum(ops.cast(beaten_by, "int32"), axis=-1)
        keep = ops.less(rank, self.n - self.m)
        keep = ops.reshape(keep, (-1, groups * self.n))[:, :channels]
        keep = ops.reshape(keep, rows)
        inverse = list(np.argsort(perm))
        return ops.transpose(keep, inverse), ops.convert_to_tensor(0.0, "float32")


def granularity_from_args(block_size=(1, 1), block_pooling_type="AVG", sparsity_m_by_n=None):
    """Validates TFMOT's arguments and returns the granularity they name."""
    block_size = _check_pair("block_size", block_size)
    if block_pooling_type not in ("AVG", "MAX"):
        raise ValueError(
            "Argument `block_pooling_type` must be 'AVG' or 'MAX'. "
            f"Received: block_pooling_type={block_pooling_type!r}"
        )
    if sparsity_m_by_n:
        m, n = _check_pair("sparsity_m_by_n", sparsity_m_by_n)
        if m >= n:
            raise ValueError(
                "Argument `sparsity_m_by_n` must be (m, n) with m < n (m zeros in "
                f"every n weights). Received: sparsity_m_by_n={sparsity_m_by_n!r}"
            )
        if block_size != (1, 1):
            raise ValueError(
                "Arguments `sparsity_m_by_n` and `block_size` cannot be combined. "
                f"Received: sparsity_m_by_n={sparsity_m_by_n!r}, block_size={block_size!r}"
            )
        return MByN(m, n)
    if block_size != (1, 1):
        return Block(block_size, block_pooling_type)
    return Unstructured()


def _check_pair(name, value):
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(
            f"Argument `{name}` must be a tuple of 2 positive integers. "
            f"Received: {name}={value!r}"
        ) from None
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(
            f"Argument `{name}` must be a tuple of 2 positive integers. "
            f"Received: {name}={value!r}"
        )
    if min(pair) < 1:
        raise ValueError(
            f"Argument `{name}` must be a tuple of 2 positive integers. "
            f"Received: {name}={value!r}"
        )
    return tuple(int(v) for v in pair)
