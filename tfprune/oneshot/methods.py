"""One-shot pruning of one layer, `W` laid out `(features, outputs)`.

Each method gets the layer's kernel as a matrix and the statistics of its
inputs over the calibration data, `G = X^T X` (summed over `n` rows), and
returns the pruned matrix. Counts are exact: of `size` weights (a layer, an
output unit, or a block), `size - keep_count(size, sparsity)` are pruned, ties
broken by position, so `sparsity=0` changes nothing.

- `magnitude`: the smallest `|W_ij|` of the layer.
- `wanda` (Sun et al., 2023): `|W_ij| * ||X_i||_2`, compared within each output
  unit `j`, so every output keeps the same number of inputs.
- `sparsegpt` (Frantar & Alistarh, 2023): `H = 2/n X^T X + lambda I`
  (`lambda = dampening * mean(diag H)`; inputs never active get a unit
  diagonal and zero weights), `U` the upper Cholesky factor of `H^-1`. Input
  features are processed in blocks; in a block the weights with the smallest
  `w^2 / U_ii^2` are pruned, and each column's error `(w - q) / U_ii` is
  spread over the block's later columns (`W[:, i:] -= err U[i, i:]`) and,
  after the block, over every later column (`W[:, end:] -= Err U[block, end:]`),
  so the layer's output on the calibration data is reconstructed.

`m_by_n=(m, n)`: `m` zeros in every `n` consecutive input features of each
output (groups restart at each kernel position of a convolution, as in
`tfprune.masking.MByN`), instead of a sparsity.

Example:
>>> W = np.array([[1.0, -4.0], [3.0, 0.5]])
>>> magnitude(W, 0.5).tolist()
[[0.0, -4.0], [3.0, 0.0]]
"""

import numpy as np
from keras import ops

from tfprune import selection


def keep_count(size, sparsity):
    """`selection.keep_count` as a Python int (TFMOT's rule, float32)."""
    return int(ops.convert_to_numpy(selection.keep_count(size, sparsity)))


def lowest(scores, count):
    """Boolean mask of the `count` lowest scores (ties: lower index first)."""
    flat = scores.ravel()
    mask = np.zeros(flat.size, bool)
    if count > 0:
        mask[np.argsort(flat, kind="stable")[:count]] = True
    return mask.reshape(scores.shape)


def _smallest_reaching(low, high, count_at, count):
    """The smallest integer `v` in `[low, high]` with `count_at(v) >= count`."""
    while low < high:
        middle = (low + high) // 2
        if count_at(middle) >= count:
            high = middle
        else:
            low = middle + 1
    return low


def lowest_in_pieces(pieces, count):
    """`lowest` over pieces of one array, without putting them together.

    `pieces` are `(scores, positions)`: non-negative scores and each one's
    position in the whole array. The `count`-th lowest score `t` is found by
    bisection on its bit pattern, counting each piece alone; then the ties at
    `t` go lowest position first, found the same way. Returns a mask per
    piece, equal to the pieces of `lowest` of the whole.
    """
    scores = [np.asarray(s, np.float64).ravel() for s, _ in pieces]
    positions = [np.asarray(p, np.int64).ravel() for _, p in pieces]
    masks = [np.zeros(s.size, bool) for s in scores]
    if count > 0:
        ordered = [np.sort(s) for s in scores]

        def at_most(bits):  # elements scoring <= the float64 of `bits`
            value = np.int64(bits).view(np.float64)
            return sum(int(np.searchsorted(o, value, side="right")) for o in ordered)

        top = max(int(o[-1:].view(np.int64)[0]) for o in ordered if o.size)
        t = np.int64(_smallest_reaching(0, top, at_most, count)).view(np.float64)
        below = [s < t for s in scores]
        ties = [np.sort(p[s == t]) for s, p in zip(scores, positions)]
        needed = count - sum(int(b.sum()) for b in below)

        def ties_up_to(position):
            return sum(int(np.searchsorted(tie, position, side="right")) for tie in ties)

        last = _smallest_reaching(0, max(int(t[-1]) for t in ties if t.size), ties_up_to, needed)
        masks = [b | ((s == t) & (p <= last)) for b, s, p in zip(below, scores, positions)]
    return [m.reshape(np.shape(s)) for m, (s, _) in zip(masks, pieces)]


def groups(features, width, n):
    """`(start, length)` of the N:M groups along the features.

    Groups of `n` restart every `width` features (one kernel position's input
    channels); the last group of a position may be shorter.
    """
    found = []
    for base in range(0, features, width):
        for start in range(base, base + width, n):
            found.append((start, min(n, base + width - start)))
    return found


def _prune_groups(scores, mask, m_by_n, width):
    """Marks the `m` lowest of every group of `n` per output (column)."""
    m, n = m_by_n
    for start, length in groups(scores.shape[0], width, n):
        count = max(0, length - (n - m))  # a short group keeps up to n - m
        if count:
            block = scores[start : start + length]
            order = np.argsort(block, axis=0, kind="stable")[:count]
            np.put_along_axis(mask[start : start + length], order, True, axis=0)
    return mask


def magnitude(W, sparsity, m_by_n=None, width=None):
    """The smallest `|W|` of the layer (or of each N:M group)."""
    scores = np.abs(W)
    if m_by_n:
        mask = _prune_groups(scores, np.zeros(W.shape, bool), m_by_n, width or W.shape[0])
    else:
        mask = lowest(scores, W.size - keep_count(W.size, sparsity))
    return np.where(mask, 0.0, W).astype(W.dtype)


def magnitude_in_pieces(pieces, outputs, sparsity):
    """`magnitude` of a layer whose columns come in pieces `(W, column ids)`,
    `outputs` columns in all."""
    features = pieces[0][0].shape[0]
    size = features * outputs
    found = [
        (np.abs(W), np.arange(features)[:, None] * outputs + np.asarray(columns)[None, :])
        for W, columns in pieces
    ]
    masks = lowest_in_pieces(found, size - keep_count(size, sparsity))
    return [np.where(m, 0.0, W).astype(W.dtype) for m, (W, _) in zip(masks, pieces)]


def wanda(W, G, sparsity, m_by_n=None, width=None):
    """`|W_ij| * ||X_i||_2`, pruned within each output unit (column)."""
    norms = np.sqrt(np.maximum(np.diag(G), 0.0))
    scores = np.abs(W) * norms[:, None]
    mask = np.zeros(W.shape, bool)
    if m_by_n:
        mask = _prune_groups(scores, mask, m_by_n, width or W.shape[0])
    else:
        count = W.shape[0] - keep_count(W.shape[0], sparsity)
        if count:
            order = np.argsort(scores, axis=0, kind="stable")[:count]
            np.put_along_axis(mask, order, True, axis=0)
    return np.where(mask, 0.0, W).astype(W.dtype)


def _blocks(features, block_size, m_by_n, width):
    """Column ranges of about `block_size` that never split an N:M group."""
    if not m_by_n:
        return [(s, min(s + block_size, features)) for s in range(0, features, block_size)]
    found, start = [], 0
    for group_start, length in groups(features, width, m_by_n[1]):
        end = group_start + length
        if end - start >= block_size or end == features:
            found.append((start, end))
            start = end
    return found


def sparsegpt(W, G, n, sparsity, m_by_n=None, width=None, dampening=0.01, block_size=128):
    """SparseGPT's pruning with OBS reconstruction (see the module)."""
    pieces = [(W, np.arange(np.shape(W)[1]))]
    return sparsegpt_in_pieces(pieces, G, n, sparsity, m_by_n, width, dampening, block_size)[0]


def sparsegpt_in_pieces(
    pieces, G, n, sparsity, m_by_n=None, width=None, dampening=0.01, block_size=128
):  # fmt: skip
    """`sparsegpt` of a layer whose columns (outputs) come in pieces
    `(W, column ids)`: every output is reconstructed alone, and a block's
    mask is chosen across all of them with `lowest_in_pieces`."""
    H = 2.0 * np.asarray(G, dtype=np.float64) / max(n, 1)
    features = H.shape[0]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[np.diag_indices(features)] += dampening * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = U^T U
    width = width or features
    group_at = {start: length for start, length in groups(features, width, m_by_n[1])} if m_by_n else {}
    # Weights of inputs never active in the calibration data change no output
    # there: they rank first (score 0) but count in the budget, so counts stay
    # exact and sparsity 0 changes nothing.
    live = (~dead).astype(np.float64)
    Wts = [np.array(W, dtype=np.float64).T for W, _ in pieces]  # (outputs, features)
    for start, end in _blocks(features, block_size, m_by_n, width):
        U1 = U[start:end, start:end]
        d = np.diag(U1)
        W1s = [Wt[:, start:end].copy() for Wt in Wts]
        if m_by_n:
            pruned = [np.zeros(W1.shape, bool) for W1 in W1s]
        else:
            size = (end - start) * sum(W1.shape[0] for W1 in W1s)
            found = [
                (W1**2 / d[None, :] ** 2 * live[None, start:end], np.asarray(columns)[:, None] * (end - start)
                 + np.arange(end - start)[None, :])
                for W1, (_, columns) in zip(W1s, pieces)
            ]  # fmt: skip
            pruned = lowest_in_pieces(found, size - keep_count(size, sparsity))
        for Wt, W1, mask in zip(Wts, W1s, pruned):
            Q1 = np.zeros_like(W1)
            Err1 = np.zeros_like(W1)
            for i in range(end - start):
                if m_by_n and (start + i) in group_at:
                    length = group_at[start + i]
                    m, n_ = m_by_n
                    count = max(0, length - (n_ - m))
                    if count:
                        scores = W1[:, i : i + length] ** 2 / d[None, i : i + length] ** 2
                        scores = scores * live[None, start + i : start + i + length]
                        order = np.argsort(scores, axis=1, kind="stable")[:, :count]
                        np.put_along_axis(mask[:, i : i + length], order, True, axis=1)
                w = W1[:, i]
                q = np.where(mask[:, i], 0.0, w)
                Q1[:, i] = q
                err = (w - q) / d[i]
                W1[:, i:] -= np.outer(err, U1[i, i:])
                Err1[:, i] = err
            Wt[:, start:end] = Q1
            Wt[:, end:] -= Err1 @ U[start:end, end:]
    return [Wt.T.astype(np.asarray(W).dtype) for Wt, (W, _) in zip(Wts, pieces)]
