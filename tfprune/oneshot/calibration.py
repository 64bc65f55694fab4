"""Calibration: batches of model inputs, call order, and input statistics.

A layer's inputs are captured at any depth (inside KerasHub blocks too) by
giving the layer instance its own `call` for the duration of a pass: Keras
calls `self.call`, so the instance attribute sees every call, and removing it
restores the class's method.

Example:
>>> [b.shape for b in batches(np.zeros((70, 3), "float32"), batch_size=32)]
[(32, 3), (32, 3), (6, 3)]
"""

import contextlib

import keras
import numpy as np
from keras import ops

from tfprune import checks


def batches(calibration_data, batch_size=32, model=None, argument="calibration_data"):
    """The model inputs of `calibration_data`, as a list of batches.

    Accepts a NumPy array (or a dict of arrays) of inputs, split into batches
    of `batch_size` rows; a tuple `(x, y)` (y ignored); a `tf.data.Dataset`;
    or an iterable of batches (arrays, dicts or `(x, y)` tuples). Given the
    `model`, a list of single examples (arrays, nested lists of numbers or
    dicts, each one axis short of the model's inputs: the token ids of one
    text) is stacked and split as one array. `argument`: the name errors
    give the data.
    """
    check_batch_size(batch_size)
    data = calibration_data
    if isinstance(data, tuple) and len(data) in (1, 2, 3) and not _is_batch_list(data):
        data = data[0]
    rows = _stacked_rows(data, _input_ranks(model), argument)
    if rows is not None:
        data = rows
    if isinstance(data, (np.ndarray, dict)) or hasattr(data, "shape"):
        found = _split(data, batch_size)
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes)):
        found = []
        for batch in data:
            if isinstance(batch, (tuple, list)) and len(batch) in (1, 2, 3):
                batch = batch[0]
            found.append(keras.tree.map_structure(np.asarray, batch))
    else:
        found = []
    if not found or _rows(found[0]) == 0:
        raise ValueError(
            f"Argument `{argument}` must hold at least one batch of model "
            f"inputs. Received: {argument}={_describe(calibration_data)}"
        )
    for batch in found:
        for array in keras.tree.flatten(batch):
            numeric = np.issubdtype(array.dtype, np.number) or array.dtype == bool
            if not numeric or array.ndim == 0:
                raise ValueError(
                    f"Argument `{argument}` must hold batches of numeric arrays with a "
                    f"batch axis. Received: an array of dtype {array.dtype} and shape {array.shape}"
                )
            if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
                raise ValueError(
                    f"Argument `{argument}` holds NaN or infinite values "
                    f"(an array of shape {array.shape})."
                )
    return found


def check_batch_size(batch_size):
    if not checks.is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")


def _input_ranks(model):
    """The ranks of a model's inputs (batch axis included), if all are equal."""
    try:
        inputs = keras.tree.flatten(model.inputs) if model is not None else []
    except (AttributeError, ValueError):  # a subclassed model: inputs unknown
        return None
    ranks = {len(tensor.shape) for tensor in inputs}
    return ranks.pop() if len(ranks) == 1 else None


def _stacked_rows(data, rank, argument):
    """`data` stacked along a new batch axis if it is a list of single
    examples of `rank - 1` axes; None if it is not."""
    if rank is None or not isinstance(data, list) or not data:
        return None
    rows = []
    for item in data:
        try:
            row = keras.tree.map_structure(np.asarray, item) if isinstance(item, dict) else np.asarray(item)
        except ValueError:  # a ragged nested list
            return None
        leaves = keras.tree.flatten(row)
        if not leaves or any(leaf.dtype == object or leaf.ndim != rank - 1 for leaf in leaves):
            return None
        rows.append(row)
    try:
        return keras.tree.map_structure(lambda *leaves: np.stack(leaves), *rows)
    except ValueError as error:
        raise ValueError(
            f"Argument `{argument}` is a list of single examples that cannot be stacked "
            f"into one batch (pad them to one shape): {error}"
        ) from None


def _is_batch_list(data):
    return all(isinstance(b, (tuple, list)) for b in data)


def _rows(batch):
    leaves = keras.tree.flatten(batch)
    return len(leaves[0]) if leaves and np.ndim(leaves[0]) else 0


def _split(data, batch_size):
    data = keras.tree.map_structure(np.asarray, data)
    rows = _rows(data)
    return [
        keras.tree.map_structure(lambda a, s=start: a[s : s + batch_size], data)
        for start in range(0, rows, batch_size)
    ]


def _describe(data):
    if hasattr(data, "shape"):
        return f"array of shape {tuple(data.shape)}"
    return repr(data)[:200]


@contextlib.contextmanager
def hooked(layers, hook):
    """Calls `hook(layer, inputs)` before every call of each layer."""
    try:
        for layer in layers:
            original = type(layer).call.__get__(layer)

            def call(*args, __layer=layer, __original=original, **kwargs):
                inputs = args[0] if args else next(iter(kwargs.values()))
                hook(__layer, inputs)
                return __original(*args, **kwargs)

            object.__setattr__(layer, "call", call)
        yield
    finally:
        for layer in layers:
            if "call" in vars(layer):
                object.__delattr__(layer, "call")


def call_order(model, candidates, batch):
    """`[(layer, id of its first input)]` in the order one forward pass calls them."""
    seen = []

    def record(layer, inputs):
        if all(layer is not s for s, _ in seen):
            seen.append((layer, id(inputs)))

    with hooked(candidates, record):
        model(_head(batch), training=False)
    return seen


def _head(batch, rows=2):
    return keras.tree.map_structure(lambda a: a[:rows], batch)


def input_statistics(model, views, data):
    """`{layer id: (G, n)}`: `G = X^T X` of each layer's inputs over `data`."""
    sums = {id(v.layer): [None, 0] for v in views}
    by_layer = {id(v.layer): v for v in views}

    def accumulate(layer, inputs):
        rows = by_layer[id(layer)].to_rows(inputs)
        gram = ops.matmul(ops.transpose(rows), rows)
        entry = sums[id(layer)]
        entry[0] = gram if entry[0] is None else ops.add(entry[0], gram)
        entry[1] += int(rows.shape[0])

    with hooked([v.layer for v in views], accumulate):
        for batch in data:
            model(batch, training=False)
    return {
        key: (np.asarray(ops.convert_to_numpy(g), dtype=np.float64), n)
        for key, (g, n) in sums.items()
    }


def input_norms(model, views, data):
    """`{layer id: ||X_i||_2 per input feature}` of every layer, in one pass."""
    sums = {id(v.layer): None for v in views}
    by_layer = {id(v.layer): v for v in views}

    def accumulate(layer, inputs):
        squares = ops.sum(ops.square(by_layer[id(layer)].to_rows(inputs)), axis=0)
        key = id(layer)
        sums[key] = squares if sums[key] is None else ops.add(sums[key], squares)

    with hooked([v.layer for v in views], accumulate):
        for batch in data:
            model(batch, training=False)
    return {k: np.sqrt(np.asarray(ops.convert_to_numpy(v), np.float64)) for k, v in sums.items()}
