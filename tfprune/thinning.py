"""Thinning: a smaller plain Keras model without the removed channels.

`thin(model)` takes a channel-pruned model (wrapped, or stripped) and
returns a new Sequential or Functional model of ordinary Keras layers whose
`filters`/`units`/heads are reduced and whose weights are the kept slices.

A channel is removed only where that provably leaves every output
unchanged: every weight that *reads* it (the input slices of the layers
consuming it, through residual merges, concatenations and depthwise convs)
is exactly zero, it is not a model output and no layer without a rule reads
it. What the channel's own producer computes then does not matter: a
pruned filter followed by a normalization carries a constant (its shift),
which the next layer reads through zero weights. Whole-group masking
(`tfprune.prune(..., granularity="filter")`) zeroes the reads, so every
masked channel goes; channels that look dead but are still read are kept
and listed in the plan's `"kept"` notes.

`thin` records what it removed as a `Plan` (JSON);
`apply_plan(model, plan)` removes the same channels from a freshly built
model of the same architecture, e.g. to load thinned weights into code that
builds the model itself.

Example:
>>> x = keras.Input((4,))
>>> h = keras.layers.Dense(8, name="hidden")(x)
>>> model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
>>> w = model.get_layer("out").kernel
>>> _ = w.assign(np.where(np.arange(8)[:, None] < 3, keras.ops.convert_to_numpy(w), 0.0))
>>> small, plan = thin(model, return_plan=True)
>>> small.get_layer("hidden").units, plan.removed["hidden"]["out"]
(3, [3, 4, 5, 6, 7])
"""

import gzip
import json
import os
import tempfile
import warnings

import keras
import numpy as np
from keras.src.models.functional import Functional

from tfprune import checks, cloning, zeros
from tfprune import graph as graph_lib
from tfprune import layers as layer_specs

PLAN_FORMAT = "tfprune.plan"


class Plan:
    """Which channels of which layers were removed.

    Attributes:
        removed: `{layer name: {"out" | "heads": [removed indices]}}`.
        kept: notes on channels that looked removable but were kept.
    """

    def __init__(self, removed, kept=None):
        self.removed = {
            str(layer): {str(k): sorted(int(i) for i in v) for k, v in entry.items()}
            for layer, entry in removed.items()
        }
        self.kept = list(kept or [])

    def to_dict(self):
        return {"format": PLAN_FORMAT, "version": 1, "removed": self.removed, "kept": self.kept}

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    def save(self, path):
        with open(path, "w") as f:
            f.write(self.to_json(indent=1))

    @classmethod
    def load(cls, source):
        """A plan from a `Plan`, a dict, a JSON string or a JSON file path."""
        if isinstance(source, Plan):
            return source
        if isinstance(source, (str, os.PathLike)) and os.path.exists(source):
            with open(source) as f:
                source = f.read()
        elif isinstance(source, os.PathLike) or (
            isinstance(source, str) and not source.lstrip().startswith("{")
        ):
            raise ValueError(f"Argument `plan`: no such plan file. Received: plan={str(source)!r}")
        if isinstance(source, str):
            try:
                source = json.loads(source)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"Argument `plan` is neither a plan file nor plan JSON: {error}. "
                    f"Received: plan={source[:80]!r}"
                ) from None
        if not isinstance(source, dict) or source.get("format") != PLAN_FORMAT:
            raise ValueError(
                "Argument `plan` must be a `tfprune.Plan`, its `to_dict()`, its JSON or a "
                f"file holding it (format {PLAN_FORMAT!r}). Received: plan={source!r:.200}"
            )
        try:
            return cls(source.get("removed", {}), source.get("kept", []))
        except (AttributeError, TypeError, ValueError):
            raise ValueError(
                "Argument `plan` must hold `removed`: `{layer name: {'out' | 'heads': "
                f"[channel indices]}}`. Received: plan={source!r:.200}"
            ) from None

    @property
    def total_removed(self):
        return sum(len(v) for entry in self.removed.values() for v in entry.values())

    def __repr__(self):
        return f"Plan({len(self.removed)} layers, {self.total_removed} channels removed)"


# --------------------------------------------------------------- deciding
def _values(layer, path):
    return keras.ops.convert_to_numpy(layer_specs.resolve(layer, path))


KEEPS_ONE = "the group keeps at least one channel"


def removable_units(structure, dead=None):
    """`(remove, kept notes)`: units nothing reads: every weight reading them
    is exactly zero or reads an exactly-zero value (`dead`, see
    `tfprune.zeros.dead_reads`)."""
    dead = dead or {}
    read = np.zeros(structure.size, dtype=bool)
    produced = np.zeros(structure.size, dtype=bool)  # a producer's slice is non-zero
    producer_units = {}
    for (layer, _, _), unit in structure.positions.items():
        producer_units.setdefault(layer, set()).add(unit)
    readers = {}
    for name, members in structure.members.items():
        layer = structure.layers[name]
        for m in members:
            if m.role == "carry":
                continue
            nonzero = ~zeros.zero_slices(_values(layer, m.path), m.axis)
            zero_input = dead.get((name, m.path, m.axis))
            if m.role == "read" and zero_input is not None and len(zero_input) == len(nonzero):
                nonzero = nonzero & ~zero_input
            hit = np.zeros(structure.size, dtype=bool)
            hit[m.units[nonzero]] = True
            if m.role == "read":
                read |= hit
                for u in np.flatnonzero(hit):
                    readers.setdefault(int(u), name)
            elif m.role == "write" and name in producer_units:
                mine = np.zeros(structure.size, dtype=bool)
                mine[list(producer_units[name])] = True
                produced |= hit & mine
    candidates = structure.prunable | _unselected_but_free(structure)
    remove = candidates & ~read
    notes = []
    for units in _resized_units(structure):  # a layer keeps at least one channel
        if len(units) and remove[units].all():
            remove[units[0]] = False
    for g in structure.groups:
        units = g.units
        if remove[units].all():  # a tensor keeps at least one channel
            remove[units[0]] = False
        dead = [int(u) for u in units if candidates[u] and not remove[u] and not produced[u]]
        for u in dead:
            notes.append(
                {
                    "group": g.name,
                    "unit": u,
                    "reason": f"its producers' weights are zero, but '{readers.get(u, '?')}' "
                    "reads it through non-zero weights (after a normalization or an activation "
                    "a zero channel can be a non-zero constant)"
                    if u in readers
                    else KEEPS_ONE,
                }
            )
    return remove, notes


def _resized_units(structure):
    """The units of each resized layer setting (a layer's `filters`, `units`,
    ...): one group can hold several layers, joined by a concatenation."""
    return [units for entries in structure.resizes.values() for _, units in entries]


def _unselected_but_free(structure):
    """Units of groups that are only unprunable for lack of selection."""
    free = np.zeros(structure.size, dtype=bool)
    for g in structure.groups:
        if not g.prunable and g.reason == "a producer is not selected":
            for u in g.units.tolist():
                if u not in structure.fixed_by and u not in structure.blocked_by:
                    free[u] = True
    return free


# ---------------------------------------------------------------- rebuild
def plain(model):
    """The model without pruning wrappers (masks applied) and L0 gates (folded):
    itself when it has neither."""
    from tfprune import l0
    from tfprune.api import strip_pruning
    from tfprune.wrapper import collect_prunable_layers

    if collect_prunable_layers(model):
        model = strip_pruning(model)
    if l0.gates_of(model):
        model = l0.strip_gates(model)
    return model


def _check_graph_model(model, argument="model"):
    if not isinstance(model, keras.Model) or not cloning.is_graph_model(model):
        raise ValueError(
            f"Argument `{argument}` must be a Sequential or Functional `keras.Model` (its "
            f"graph shows which channels are coupled). Received: {argument}={model!r}"
        )


def _check_model(model):
    _check_graph_model(model)
    if isinstance(model, Functional) and cloning.keeps_its_class(model):
        raise ValueError(
            f"Model '{model.name}' of type {type(model).__name__} is built from its own "
            "constructor arguments, which cannot say that a layer has fewer channels; "
            "thin its layers' graph as a plain `keras.Model(inputs, outputs)` instead."
        )


def _kept_count(units, keep):
    return int(np.count_nonzero(keep[units]))


def _resized(config, entries, keep):
    config = dict(config)
    for key, units in entries:
        count = _kept_count(units, keep)
        if isinstance(config[key], (list, tuple)):  # a shape: its last entry
            config[key] = tuple(config[key][:-1]) + (count,)
        else:
            config[key] = count
    return config


def _edit_layer_configs(layer_configs, structure, keep):
    for entry in layer_configs:
        entry.pop("build_config", None)
        if isinstance(entry.get("config", {}).get("layers"), list):  # a nested model
            _edit_layer_configs(entry["config"]["layers"], structure, keep)
            continue
        name = entry["config"].get("name", entry.get("name"))
        if name in structure.resizes:
            entry["config"] = _resized(entry["config"], structure.resizes[name], keep)


def _without_own_regularizers(config):
    """Drops tfprune's regularizers (L1, GroupLasso) from a model config, in
    place: their work is the zeros thinning removes, and a plain model loads
    without tfprune."""
    if isinstance(config, dict):
        for key, value in config.items():
            registered = isinstance(value, dict) and str(value.get("registered_name", ""))
            if key.endswith("_regularizer") and registered and registered.startswith("tfprune>"):
                config[key] = None
            else:
                _without_own_regularizers(value)
    elif isinstance(config, list):
        for item in config:
            _without_own_regularizers(item)


def _rebuild(model, structure, keep):
    config = model.get_config()
    _without_own_regularizers(config)
    with cloning._classes_in_scope(model):
        if isinstance(model, keras.Sequential):
            _edit_layer_configs(config["layers"], structure, keep)
            new = keras.Sequential.from_config(config)
            if not new.built:
                new.build(model.inputs[0].shape if model.inputs else None)
        else:
            _edit_layer_configs(config["layers"], structure, keep)
            new = keras.Model.from_config(config)
    return new


def _slice(value, axes, keep):
    for axis, units in axes:
        value = np.compress(keep[units], value, axis=axis % value.ndim)
    return value


def _copy_weights(model, new, structure, keep):
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if cloning.is_graph_model(layer):
            _copy_weights(layer, new.get_layer(layer.name), structure, keep)
            continue
        if layer.name not in structure.layers or not layer.weights:
            continue
        target = new.get_layer(layer.name)
        axes = {}
        for m in structure.members.get(layer.name, []):
            variable = layer_specs.resolve(layer, m.path)
            axes.setdefault(id(variable), []).append((m.axis, m.units))
        values = []
        for variable in layer.weights:
            value = keras.ops.convert_to_numpy(variable)
            values.append(_slice(value, axes.get(id(variable), []), keep))
        for variable, value in zip(target.weights, values):
            if tuple(variable.shape) != value.shape:
                raise AssertionError(
                    f"'{layer.name}': {variable.path} is {tuple(variable.shape)}, "
                    f"sliced weight is {value.shape}"
                )
        target.set_weights(values)


def _plan(structure, keep, notes):
    removed = {}
    for (layer, key, index), unit in structure.positions.items():
        if not keep[unit]:
            removed.setdefault(layer, {}).setdefault(key, []).append(index)
    return Plan(removed, notes)


def apply_keep(model, structure, keep):
    """The model without the units `keep` drops (a new model)."""
    new = _rebuild(model, structure, keep)
    _copy_weights(model, new, structure, keep)
    return new


def thin(model, *, return_plan=False):
    """Removes masked channels: a smaller model computing the same outputs.

    Args:
        model: a Sequential or Functional model pruned with
            `tfprune.prune(..., granularity="filter")` (wrapped or stripped),
            or any such model whose zero weights make channels unused.
        return_plan: also return the `Plan` of removed channels.

    Returns:
        A new plain Keras model (uncompiled), or `(model, plan)`.
    """
    _check_model(model)
    stripped = plain(model)
    structure = graph_lib.build(stripped, strict=False)
    remove, notes = removable_units(structure, zeros.dead_reads(stripped))
    read = [note for note in notes if note["reason"] != KEEPS_ONE]  # (not: a group's last one)
    if read:
        warnings.warn(
            f"thin kept {len(read)} channel(s) whose producers are zero but whose readers are "
            f"not (e.g. group '{read[0]['group']}': {read[0]['reason']}); prune with "
            "granularity='filter' on the whole model to mask both. `thin(..., "
            "return_plan=True)` lists them in `plan.kept`.",
            stacklevel=2,
        )
    keep = ~remove
    new = apply_keep(stripped, structure, keep)
    if return_plan:
        return new, _plan(structure, keep, notes)
    return new


def apply_plan(model, plan):
    """Removes a plan's channels from a model of the same architecture.

    The model's weights are sliced (its own values, not the thinned
    model's): load the thinned weights afterwards, e.g.
    `apply_plan(build_model(), "plan.json").load_weights("thin.weights.h5")`.

    Args:
        model: a Sequential or Functional model with the layers the plan names.
        plan: a `Plan`, its dict or JSON, or the path of its JSON file.
    """
    _check_model(model)
    plan = Plan.load(plan)
    stripped = plain(model)
    structure = graph_lib.build(stripped, strict=False)
    keep = np.ones(structure.size, dtype=bool)
    for layer, entry in plan.removed.items():
        for key, indices in entry.items():
            for index in indices:
                unit = structure.positions.get((layer, key, index))
                if unit is None:
                    raise ValueError(
                        f"Argument `plan` removes {key} channel {index} of layer '{layer}', "
                        f"which model '{model.name}' does not have. Received: plan={plan!r}"
                    )
                keep[unit] = False
    for group in structure.groups:
        if not keep[group.units].any():
            raise ValueError(
                f"Argument `plan` removes every channel of {', '.join(map(repr, group.producers))}; "
                f"{KEEPS_ONE}. Received: plan={plan!r}"
            )
    for layer, entries in structure.resizes.items():
        for key, units in entries:
            if len(units) and not keep[units].any():
                raise ValueError(
                    f"Argument `plan` removes every channel of layer '{layer}' ({key}); a layer "
                    f"keeps at least one. Received: plan={plan!r}"
                )
    fixed = [u for u in np.flatnonzero(~keep) if u in structure.fixed_by]
    if fixed:
        raise ValueError(
            f"Argument `plan` removes channels model '{model.name}' cannot lose "
            f"({structure.fixed_by[fixed[0]]}). Received: plan={plan!r}"
        )
    expected = _plan(structure, keep, [])
    if expected.removed != plan.removed:
        raise ValueError(
            "Argument `plan` does not fit the model: channels coupled to the removed "
            "ones (by residual merges or shared inputs) are not all listed. "
            f"Received: plan={plan!r}"
        )
    return apply_keep(stripped, structure, keep)


# ----------------------------------------------------------------- report
def keras_size(model):
    """`(raw bytes, gzip bytes)` of the model saved as `.keras`, without its
    optimizer's state (so a trained model and its thinned copy compare like
    for like)."""
    optimizer = getattr(model, "optimizer", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        try:
            if optimizer is not None:
                model.optimizer = None
            model.save(path)
        finally:
            if optimizer is not None:
                model.optimizer = optimizer
        with open(path, "rb") as f:
            data = f.read()
    return len(data), len(gzip.compress(data))


class Report:
    """Parameters and FLOPs per layer, and `.keras` sizes, before and after."""

    def __init__(self, before, after, sizes=True):
        self.rows = []
        before, after = plain(before), plain(after)  # once each: stripping copies
        b = graph_lib.build(before, strict=False)
        a = graph_lib.build(after, strict=False)
        counts = {k: (b.layer_counts(k), a.layer_counts(k)) for k in ("params", "flops")}
        for name in b.layers:
            if isinstance(b.layers[name], keras.layers.InputLayer):
                continue
            row = {"layer": name}
            for kind, (cb, ca) in counts.items():
                row[f"{kind}_before"] = int(round(cb.get(name, 0)))
                row[f"{kind}_after"] = int(round(ca.get(name, 0)))
            if any(row[k] for k in row if k != "layer"):
                self.rows.append(row)
        self.totals = {
            f"{kind}_{when}": int(round(sum(c.values())))
            for kind, (cb, ca) in counts.items()
            for when, c in (("before", cb), ("after", ca))
        }
        if sizes:
            for when, model in (("before", before), ("after", after)):
                raw, zipped = keras_size(model)
                self.totals[f"keras_bytes_{when}"] = raw
                self.totals[f"keras_gzip_{when}"] = zipped

    def ratio(self, kind):
        return self.totals[f"{kind}_after"] / max(self.totals[f"{kind}_before"], 1)

    def to_dict(self):
        return {"rows": self.rows, "totals": self.totals}

    def __str__(self):
        head = f"{'layer':<32}{'params':>22}{'FLOPs':>26}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r['layer'][:31]:<32}{r['params_before']:>10} -> {r['params_after']:<8}"
                f"{r['flops_before']:>13} -> {r['flops_after']:<10}"
            )
        t = self.totals
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<32}{t['params_before']:>10} -> {t['params_after']:<8}"
            f"{t['flops_before']:>13} -> {t['flops_after']:<10}"
        )
        lines.append(
            f"parameters x{self.ratio('params'):.3f}, FLOPs x{self.ratio('flops'):.3f}"
        )
        if "keras_bytes_before" in t:
            lines.append(
                f".keras size {t['keras_bytes_before']} -> {t['keras_bytes_after']} bytes "
                f"(gzip {t['keras_gzip_before']} -> {t['keras_gzip_after']})"
            )
        return "\n".join(lines)


def report(before, after, *, sizes=True):
    """A `Report` comparing a model with its thinned version.

    Example: `print(tfprune.thinning_report(model, tfprune.thin(model)))`.
    """
    _check_graph_model(before, "before")
    _check_graph_model(after, "after")
    return Report(before, after, sizes=sizes)


def count_params(model):
    """Parameters of a graph model, as the dependency graph counts them."""
    _check_graph_model(model)
    return int(round(graph_lib.build(plain(model), strict=False).count("params")))


def count_flops(model):
    """FLOPs of one forward pass of one example (2 per multiply-accumulate of
    convolutions, dense layers and attention; element-wise work not counted).

    Layers with weights that no rule describes (a KerasHub
    `TransformerEncoder`, custom layers) count no FLOPs: a warning names them.
    """
    _check_graph_model(model)
    structure = graph_lib.build(plain(model), strict=False)
    if structure.uncounted:
        names = ", ".join(
            f"'{name}' ({type(structure.layers[name]).__name__})" for name in structure.uncounted
        )
        checks.warn_user(
            f"count_flops counts no FLOPs for layers tfprune has no rule for: {names}. "
            "The total leaves them out."
        )
    return int(round(structure.count("flops")))
