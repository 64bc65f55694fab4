"""Sensitivity analysis: how much each layer can lose alone (Distiller's).

`sensitivity(model, x, y)` prunes each prunable layer alone, by magnitude,
over a sweep of sparsities, evaluates the model on `(x, y)` after each, and
restores the weights: `Sensitivity.rows` holds `(layer, sparsity, metric)`.
With `granularity="filter"` whole channels go instead of single weights:
on a Sequential or Functional model a row is a coupled group of the channel
dependency graph (`tfprune.graph`; a producer with everything tied to it,
named `"conv_a+conv_b"` when a merge ties several), pruned exactly as
`tfprune.prune(..., granularity="filter")` prunes it (its producers'
filters, the normalizations and every reader's input slice); on other models
a row is one layer's output filters (kernel slice and bias). Channels go
lowest mean |w| first.

The metric is accuracy when `y` holds class labels (integers, or one-hot
rows) and the model outputs scores per class; otherwise the negative mean
squared error (higher is better either way).

`Sensitivity.allocate(target)` turns the measurements into per-layer
sparsities meeting an overall weight sparsity (Distiller's sensitivity-driven
allocation): every layer takes the largest measured sparsity whose metric
stays within one tolerance of the dense model's, the tolerance being the
smallest that reaches the target. Per layer (element granularity, or one
layer's filters), the result is a `{layer: sparsity}` scope for
`tfprune.prune(model, schedule, scope=...)`; coupled channel groups
(`"conv_a+conv_b"`) are not layers: `tfprune.recipes.from_sensitivity(...,
groups=result.groups)` turns them into a recipe whose `max_sparsity` holds
each group's producers at its allocation.

Example:
>>> import numpy as np
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
>>> x, y = np.eye(4, dtype="float32"), np.array([0, 1, 2, 0])
>>> result = sensitivity(model, x, y, sparsities=(0.5,), verbose=0)
>>> [(layer, s) for layer, s, _ in result.rows]
[('d', 0.0), ('d', 0.5)]
"""

import csv

import keras
import numpy as np

from tfprune import checks, cloning, selection
from tfprune import graph as graph_lib
from tfprune import layers as layer_specs

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def measure(model, x, y, batch_size=256):
    """`(value, name)` of the model on `(x, y)`: accuracy for class labels
    (integers or one-hot rows) and scores per class, else `-mse`."""
    prediction = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
    y = np.asarray(y)
    if prediction.ndim == 2 and prediction.shape[1] > 1:
        labels = y.argmax(axis=-1) if y.ndim == 2 and y.shape[1] == prediction.shape[1] else y
        if np.issubdtype(labels.dtype, np.floating) and labels.size and np.all(labels == np.round(labels)):
            labels = labels.astype("int64")  # class labels stored as floats
        if np.issubdtype(np.asarray(labels).dtype, np.integer) and labels.size == len(prediction):
            return float(np.mean(prediction.argmax(axis=-1) == labels.reshape(-1))), "accuracy"
    return -float(np.mean((prediction.reshape(y.shape) - y) ** 2)), "-mse"


def _pruned_values(weights, specs, holder_bias, sparsity, granularity):
    """New values of a layer's weights with `sparsity` of them removed."""
    values = [np.asarray(keras.ops.convert_to_numpy(w)) for w in weights]
    out = []
    for value, spec in zip(values, specs):
        if granularity == "element":
            keep = selection.keep_count(value.size, sparsity)
            order = np.argsort(-np.abs(value).reshape(-1), kind="stable")
            mask = np.zeros(value.size, bool)
            mask[order[:keep]] = True
            out.append(value * mask.reshape(value.shape))
            continue
        axis = spec.out_axis % value.ndim
        other = tuple(a for a in range(value.ndim) if a != axis)
        norms = np.abs(value).mean(axis=other)
        keep = selection.keep_count(len(norms), sparsity)
        kept = np.zeros(len(norms), bool)
        kept[np.argsort(-norms, kind="stable")[:keep]] = True
        view = [1] * value.ndim
        view[axis] = len(norms)
        out.append(value * kept.reshape(view))
        if holder_bias is not None and holder_bias[1] is not None:
            holder_bias[1] = holder_bias[1] * kept
    return out


class Sensitivity:
    """Measured sensitivities: `rows` of `(layer, sparsity, metric)`."""

    def __init__(self, rows, parameters, granularity, groups=None):
        self.rows = rows
        self.parameters = parameters  # prunable weights (a group's: all it carries)
        self.granularity = granularity
        self.groups = groups  # coupled: {row name: producer layer names}

    @property
    def layers(self):
        return list(dict.fromkeys(layer for layer, _, _ in self.rows))

    def curve(self, layer):
        return [(s, m) for name, s, m in self.rows if name == layer]

    def to_csv(self, path):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["layer", "sparsity", "metric"])
            writer.writerows(self.rows)

    def table(self):
        sparsities = sorted({s for _, s, _ in self.rows})
        head = f"{'layer':<28}" + "".join(f"{s:>8.0%}" for s in sparsities)
        lines = [head, "-" * len(head)]
        for layer in self.layers:
            values = dict(self.curve(layer))
            lines.append(
                f"{layer[:27]:<28}" + "".join(f"{values.get(s, float('nan')):>8.4f}" for s in sparsities)
            )
        return "\n".join(lines)

    def plot(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for layer in self.layers:
            ax.plot(*zip(*self.curve(layer)), marker="o", markersize=3, label=layer)
        ax.set_xlabel(f"sparsity of the layer alone ({self.granularity})")
        ax.set_ylabel("metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def allocate(self, target):
        """`{layer: sparsity}` reaching `target` overall weight sparsity.

        The smallest common tolerance `t` of the dense metric that reaches
        the target decides which measured sparsities each layer may take
        (those within `t`); from the allocation of the tolerance below it, the
        layers `t` lets further go up one measured sparsity at a time (least
        drop first, then most weights), in rounds, until the target is
        reached. Flat curves (a coarse metric) share the target evenly
        instead of all taking their sparsest measurement.
        """
        if not checks.is_number(target) or not 0.0 <= target < 1.0:
            raise ValueError(f"Argument `target` must be in [0, 1). Received: target={target!r}")
        dense = {layer: dict(self.curve(layer)).get(0.0) for layer in self.layers}
        total = sum(self.parameters.values())
        drops = sorted({max(dense[layer] - m, 0.0) for layer, _, m in self.rows})

        def within(layer, tolerance):  # [(sparsity, drop)] the tolerance allows
            curve = [(s, dense[layer] - m) for s, m in self.curve(layer)]
            return sorted((s, d) for s, d in curve if d <= tolerance)

        def reached(chosen):
            removed = sum(chosen[name] * self.parameters[name] for name in chosen) / total
            return removed >= target - 1e-9

        start = {layer: 0.0 for layer in self.layers}
        for tolerance in drops:
            sparsest = {layer: within(layer, tolerance)[-1][0] for layer in self.layers}
            if reached(sparsest):
                break
            start = sparsest
        else:
            raise ValueError(
                f"Argument `target` ({target}) is more than the measured sparsities reach "
                f"({max(s for _, s, _ in self.rows)} for every layer)."
            )
        steps = {  # the sparsities above the start the tolerance allows, with their drops
            layer: [(s, d) for s, d in within(layer, tolerance) if s > start[layer]]
            for layer in self.layers
        }
        chosen = dict(start)
        while not reached(chosen):
            movers = [layer for layer in self.layers if steps[layer]]
            movers.sort(key=lambda layer: (steps[layer][0][1], -self.parameters[layer]))
            for layer in movers:
                chosen[layer] = steps[layer].pop(0)[0]
                if reached(chosen):
                    break
        return chosen


def sensitivity(
    model, x, y, *, sparsities=DEFAULT_SPARSITIES, granularity="element", layers=None,
    batch_size=256, verbose=1,
):  # fmt: skip
    """Prunes each layer alone over `sparsities` and measures the model.

    Args:
        model: a built Keras model (left as it was).
        x, y: evaluation data.
        sparsities: fractions to try (0.0 is always measured too).
        granularity: `"element"` or `"filter"`.
        layers: layer names (default: every layer with prunable weights).
        batch_size: rows per batch when measuring.
        verbose: 1 shows a `keras.utils.Progbar`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"Argument `model` must be a keras.Model. Received: model={model!r}")
    if not checks.is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"Argument `batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if granularity not in ("element", "filter"):
        raise ValueError(
            f"Argument `granularity` must be 'element' or 'filter'. Received: granularity={granularity!r}"
        )
    given = sparsities
    if isinstance(given, (str, bytes)) or not hasattr(given, "__iter__") or not all(
        checks.is_number(s) for s in given
    ):
        raise TypeError(
            f"Argument `sparsities` must be a list of numbers in [0, 1). Received: sparsities={given!r}"
        )
    sparsities = sorted({0.0, *(float(s) for s in given)})
    if any(not 0.0 <= s < 1.0 for s in sparsities):
        raise ValueError(f"Argument `sparsities` must be in [0, 1). Received: sparsities={given!r}")
    if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
        raise TypeError(f"Argument `layers` must be a list of layer names. Received: layers={layers!r}")
    rows_x, rows_y = (len(keras.tree.flatten(data)[0]) for data in (x, y))
    if rows_x != rows_y:
        raise ValueError(
            f"Arguments `x` and `y` must hold as many rows. Received: {rows_x} rows of x, {rows_y} of y"
        )
    if granularity == "filter" and cloning.is_graph_model(model):
        return _coupled(model, x, y, sparsities, layers, batch_size, verbose)
    candidates = layer_specs.prunable_units(model)  # a nested model's layers, not it too
    if layers is not None:
        names = {layer.name for layer in candidates}
        missing = sorted(set(layers) - names)
        if missing:
            raise ValueError(
                f"Argument `layers` names layers without prunable weights or not in the "
                f"model: {missing}. Received: layers={list(layers)!r}"
            )
        candidates = [layer for layer in candidates if layer.name in set(layers)]
    jobs = []
    for layer in candidates:
        found = layer_specs.prunable_weights_with_owners(layer)
        if granularity == "filter":
            found = [(w, s, o) for w, s, o in found if s.out_axis is not None]
        if found:
            jobs.append((layer, found))
    rows, parameters = [], {}
    bar = keras.utils.Progbar(len(jobs) * len(sparsities), verbose=verbose)
    baseline = measure(model, x, y, batch_size)[0]
    for layer, found in jobs:
        weights = [w for w, _, _ in found]
        specs = [s for _, s, _ in found]
        parameters[layer.name] = sum(int(np.prod(w.shape)) for w in weights)
        bias = getattr(layer, "bias", None) if granularity == "filter" else None
        saved = [np.asarray(keras.ops.convert_to_numpy(w)) for w in weights]
        saved_bias = None if bias is None else np.asarray(keras.ops.convert_to_numpy(bias))
        try:
            for s in sparsities:
                if s == 0.0:
                    rows.append((layer.name, 0.0, baseline))
                else:
                    holder = None if bias is None else [bias, saved_bias.copy()]
                    for w, value in zip(weights, _pruned_values(weights, specs, holder, s, granularity)):
                        w.assign(value)
                    if holder is not None and len(weights) == 1:
                        bias.assign(holder[1])
                    rows.append((layer.name, s, measure(model, x, y, batch_size)[0]))
                    for w, value in zip(weights, saved):
                        w.assign(value)
                    if bias is not None:
                        bias.assign(saved_bias)
                bar.add(1)
        finally:
            for w, value in zip(weights, saved):
                w.assign(value)
            if bias is not None:
                bias.assign(saved_bias)
    return Sensitivity(rows, parameters, granularity)


def _coupled(model, x, y, sparsities, layers, batch_size, verbose):
    """Each coupled channel group of a graph model alone, over `sparsities`."""
    from tfprune import api

    structure = graph_lib.build(model, strict=False)
    groups = [g for g in structure.groups if g.prunable]
    if layers is not None:
        producers = {name for g in groups for name in g.producers}
        missing = sorted(set(layers) - producers)
        if missing:
            raise ValueError(
                f"Argument `layers` names layers that produce no prunable channel group: "
                f"{missing}. Received: layers={list(layers)!r}"
            )
        groups = [g for g in groups if set(g.producers) & set(layers)]
    full = structure.count("params")
    rows, parameters, names = [], {}, {}
    saved = model.get_weights()
    bar = keras.utils.Progbar(len(groups) * len(sparsities), verbose=verbose)
    baseline = measure(model, x, y, batch_size)[0]
    try:
        for group in groups:
            name = "+".join(group.producers)
            names[name] = list(group.producers)
            keep = np.ones(structure.size, bool)
            keep[group.units] = False
            parameters[name] = int(round(full - structure.count("params", keep)))
            wrapped = api.prune(model, None, granularity="filter", layers=list(group.producers))
            for s in sparsities:
                if s == 0.0:
                    rows.append((name, 0.0, baseline))
                else:
                    api.update_masks(wrapped, s)
                    rows.append((name, s, measure(wrapped, x, y, batch_size)[0]))
                bar.add(1)
            model.set_weights(saved)  # the wrappers mask the model's own variables
    finally:
        model.set_weights(saved)
    return Sensitivity(rows, parameters, "filter", names)
