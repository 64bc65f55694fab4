"""One-shot pruning of a trained model from calibration data.

    pruned = tfprune.oneshot(model, calibration_data, sparsity=0.5, method="sparsegpt")

Layers are pruned in the order the model calls them, each calibrated on the
inputs the model produces *with the layers before it already pruned*; layers
that read the same tensor (an attention block's query, key and value) share
one pass. Statistics are accumulated batch by batch: one layer's `X^T X` at a
time, never the model's activations. See `tfprune.oneshot.methods` for the
formulas and `tfprune.oneshot.features` for how each layer type is read.

Example:
>>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
>>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
>>> pruned = oneshot(model, x, sparsity=0.5, method="wanda", verbose=0)
>>> kernel = keras.ops.convert_to_numpy(pruned.layers[0].kernel)
>>> (kernel == 0).sum(axis=0).tolist()  # every output keeps 4 of its 8 inputs
[4, 4, 4, 4]
"""

import keras
import numpy as np
from keras import ops

from tfprune import backend, checks, cloning
from tfprune.oneshot import calibration, features, methods

METHODS = ("magnitude", "wanda", "sparsegpt")


def oneshot(
    model,
    calibration_data,
    *,
    sparsity=0.5,
    method="sparsegpt",
    sparsity_m_by_n=None,
    dampening=0.01,
    block_size=128,
    scope="layer",
    owl=None,
    inplace=False,
    batch_size=32,
    verbose=1,
):
    """Prunes a trained model in one shot, from calibration data.

    Args:
        model: a built Keras model (Sequential, Functional, KerasHub backbones
            and task models; any model with `inplace=True`).
        calibration_data: model inputs: a NumPy array or dict of arrays, a
            tuple `(x, y)` (y ignored), a `tf.data.Dataset`, an iterable of
            batches, or a list of single examples (one axis short of the
            model's inputs), stacked into batches.
        sparsity: fraction of each layer's weights set to zero, in [0, 1).
        method: `"magnitude"`, `"wanda"` or `"sparsegpt"`.
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)`: `m` zeros in every `n`
            consecutive input weights of each output, instead of `sparsity`.
        dampening: SparseGPT's `lambda / mean(diag H)`, > 0.
        block_size: SparseGPT's columns per block, >= 1.
        scope: `"layer"` (every layer at `sparsity`) or `"owl"` (outlier-
            weighted layer-wise budgets averaging `sparsity`, see
            `owl_sparsities`; not with `sparsity_m_by_n`).
        owl: options of `owl_sparsities`: `{"threshold": 5.0, "spread": 0.08}`.
        inplace: prune `model` itself instead of a copy.
        batch_size: rows per batch when `calibration_data` is one array.
        verbose: 1 shows a progress bar over the layers.

    Returns:
        A plain Keras model of the same architecture (pruned weights exactly
        0.0): a copy, or `model` with `inplace=True`.
    """
    _check(sparsity, method, sparsity_m_by_n, dampening, block_size)
    if not isinstance(inplace, bool):
        raise TypeError(f"Argument `inplace` must be True or False. Received: inplace={inplace!r}")
    if scope not in ("layer", "owl"):
        raise ValueError(f"Argument `scope` must be 'layer' or 'owl'. Received: scope={scope!r}")
    if scope == "owl" and sparsity_m_by_n:
        raise ValueError(
            "Argument `scope='owl'` sets per-layer sparsities, which N:M patterns do not "
            f"have. Received: scope='owl', sparsity_m_by_n={sparsity_m_by_n!r}"
        )
    _check_owl(owl, scope)
    data = calibration.batches(calibration_data, batch_size, model)
    if not inplace:
        if not cloning.is_graph_model(model):
            raise ValueError(
                f"Model '{model.name}' is a subclassed model, which cannot be copied; "
                "pass `inplace=True` to prune it in place."
            )
        model = cloning.copy_model(model, lambda copy, layer: copy)
    candidates = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if layer.built and features.supported(layer)
    ]
    order = calibration.call_order(model, candidates, data[0])
    budgets = {}
    if scope == "owl":
        views = [features.view_of(layer) for layer, _ in order]
        budgets = owl_sparsities(views, calibration.input_norms(model, views, data), sparsity, **(owl or {}))
    progress = keras.utils.Progbar(len(order), verbose=verbose, unit_name="layer")
    # With `inplace`, a failure part-way (a Hessian SparseGPT cannot factor,
    # an interrupt) restores the kernels pruned so far.
    saved = [(layer.kernel, np.array(ops.convert_to_numpy(layer.kernel))) for layer, _ in order]
    saved = saved if inplace else []
    try:
        for group in _groups_by_input(order):
            views = [features.view_of(layer) for layer in group]
            stats = calibration.input_statistics(model, views, data)
            for view in views:
                gram, rows = stats[id(view.layer)]
                target = budgets.get(id(view.layer), sparsity)
                _prune_layer(view, gram, rows, target, method, sparsity_m_by_n, dampening, block_size)
                progress.add(1)
    except BaseException:
        for kernel, value in saved:
            kernel.assign(value)
        raise
    return model


def owl_sparsities(views, norms, sparsity, threshold=5.0, spread=0.08):
    """OWL budgets (Yin et al., 2024): layers with more outliers keep more.

    A layer's outlier ratio `D` is the fraction of its Wanda scores
    `|W_ij| * ||X_i||` above `threshold` times their mean. Densities are `D`
    rescaled to a range of `2 * spread` and shifted so that the kept weights
    total `(1 - sparsity)` of all weights (an average weighted by size);
    each is clipped to [0, 1].

    Returns `{id(layer): sparsity}`.
    """
    ratios, sizes = [], []
    for view in views:
        W = view.to_matrix(np.asarray(ops.convert_to_numpy(view.layer.kernel)))
        scores = np.abs(W)
        for rows, columns in view.group_slices():
            scores[:, columns] *= norms[id(view.layer)][rows, None]
        ratios.append(float(np.mean(scores > threshold * scores.mean())))
        sizes.append(W.size)
    ratios, sizes = np.array(ratios), np.array(sizes, dtype=np.float64)
    span = ratios.max() - ratios.min()
    scaled = (ratios - ratios.min()) / span * 2 * spread if span > 0 else np.zeros_like(ratios)
    # The shift that makes the clipped densities average (1 - sparsity) by
    # size: a monotone function of the shift, found by bisection.
    target = (1.0 - sparsity) * sizes.sum()

    def kept(shift):
        return np.sum(np.clip(scaled + shift, 0.0, 1.0) * sizes)

    low, high = -1.0 - scaled.max(), 1.0 - scaled.min()
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) < target else (low, middle)
    density = np.clip(scaled + high, 0.0, 1.0)
    return {id(v.layer): float(1.0 - d) for v, d in zip(views, density)}


def _groups_by_input(order):
    """Consecutive layers that read the same tensor are calibrated together."""
    found = []
    for layer, input_id in order:
        if found and found[-1][1] == input_id:
            found[-1][0].append(layer)
        else:
            found.append(([layer], input_id))
    return [layers for layers, _ in found]


def _prune_layer(view, gram, rows, sparsity, method, m_by_n, dampening, block_size):
    kernel = view.layer.kernel
    if view.groups > 1:  # each group's matrix product alone
        W = view.to_matrix(np.asarray(ops.convert_to_numpy(kernel)))
        for features, columns in view.group_slices():
            part = W[:, columns]
            W[:, columns] = _pruned(
                view, [(part, np.arange(part.shape[1]))], gram[features, features], rows,
                sparsity, method, m_by_n, dampening, block_size,
            )[0]  # fmt: skip
        kernel.assign(view.kernel_of(W).astype(W.dtype))
        return
    laid_out = backend.pieces_by_device(kernel, view.output_axes)
    if laid_out is None:  # one piece: the whole kernel
        shape = tuple(kernel.shape)
        laid_out = ([tuple(slice(None) for _ in shape)], [np.asarray(ops.convert_to_numpy(kernel))],
                    lambda new: kernel.assign(new[0]))  # fmt: skip
    indices, pieces, put = laid_out
    # A kernel laid out over devices along its outputs is pruned piece by
    # piece where each piece lives; only scores' counts cross pieces.
    matrices = [(view.to_matrix(p), view.columns(index)) for p, index in zip(pieces, indices)]
    new = _pruned(view, matrices, gram, rows, sparsity, method, m_by_n, dampening, block_size)
    put([view.kernel_of(W, p.shape).astype(p.dtype) for W, p in zip(new, pieces)])


def _pruned(view, matrices, gram, rows, sparsity, method, m_by_n, dampening, block_size):
    """The pruned pieces `W` of `matrices`, `[(W, column ids)]` of one matrix
    product whose inputs have the statistics `gram` over `rows` rows."""
    width = view.group_width
    outputs = sum(len(ids) for _, ids in matrices)
    if method == "wanda":
        new = [methods.wanda(W, gram, sparsity, m_by_n, width) for W, _ in matrices]
    elif method == "magnitude" and m_by_n:
        new = [methods.magnitude(W, sparsity, m_by_n, width) for W, _ in matrices]
    elif method == "magnitude":
        new = methods.magnitude_in_pieces(matrices, outputs, sparsity)
    else:
        try:
            new = methods.sparsegpt_in_pieces(
                matrices, gram, rows, sparsity, m_by_n, width, dampening, block_size
            )
        except np.linalg.LinAlgError:
            raise ValueError(
                f"SparseGPT cannot factor the damped Hessian of layer '{view.layer.name}' "
                f"(not positive definite); raise `dampening`. Received: dampening={dampening!r}"
            ) from None
    return new


def _check_owl(owl, scope):
    if owl is None:
        return
    if scope != "owl":
        raise ValueError(f"Argument `owl` applies to scope='owl'. Received: scope={scope!r}, owl={owl!r}")
    if not isinstance(owl, dict) or set(owl) - {"threshold", "spread"}:
        raise ValueError(
            "Argument `owl` must be a dict with keys 'threshold' and/or 'spread'. "
            f"Received: owl={owl!r}"
        )
    threshold, spread = owl.get("threshold", 5.0), owl.get("spread", 0.08)
    if not checks.is_finite_number(threshold) or threshold <= 0:
        raise ValueError(f"Argument `owl`: 'threshold' must be a number > 0. Received: owl={owl!r}")
    if not checks.is_finite_number(spread) or not 0 <= spread <= 0.5:
        raise ValueError(f"Argument `owl`: 'spread' must be a number in [0, 0.5]. Received: owl={owl!r}")


def _check(sparsity, method, m_by_n, dampening, block_size):
    if not checks.is_number(sparsity):
        raise TypeError(f"Argument `sparsity` must be a float in [0, 1). Received: sparsity={sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"Argument `sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {METHODS}. Received: method={method!r}")
    if m_by_n is not None:
        from tfprune import masking

        chosen = masking.granularity_from_args(sparsity_m_by_n=m_by_n or None)  # m < n, positive ints
        if not isinstance(chosen, masking.MByN):
            raise ValueError(
                f"Argument `sparsity_m_by_n` must be (m, n) or None. Received: sparsity_m_by_n={m_by_n!r}"
            )
    if not checks.is_finite_number(dampening) or not dampening > 0:
        raise ValueError(f"Argument `dampening` must be a finite number > 0. Received: dampening={dampening!r}")
    if not checks.is_integer(block_size) or block_size < 1:
        raise ValueError(f"Argument `block_size` must be an int >= 1. Received: block_size={block_size!r}")
