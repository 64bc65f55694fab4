"""Sparsity tables of a model, in the manner of Distiller's (`tfprune inspect`).

`sparsity_table(model)` lists every weight: shape, parameters, non-zeros,
element sparsity, and the whole structures that are zero: filters (slices
of the last axis), channels (axis -2) and, for rank-2 weights, rows.
Pruning wrappers are stripped first (masks applied) and L0 gates folded
(closed gates are zero filters), so pruned weights, zeros left by a
proximal regularizer and closed gates all count the same way.

Example:
>>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
>>> _ = model.get_layer("d").kernel.assign(np.zeros((3, 2), "float32"))
>>> [(r["shape"], r["sparsity"], r["zero_filters"]) for r in sparsity_table(model)["rows"]]
[([3, 2], 1.0, 2), ([2], 1.0, 0)]
"""

import csv
import io
import json

import keras
import numpy as np

from tfprune import thinning, zeros

COLUMNS = (
    "weight", "shape", "parameters", "nonzeros", "sparsity",
    "zero_filters", "zero_channels", "zero_rows",
)  # fmt: skip


def _zero_slices(value, axis):
    return int(np.sum(zeros.zero_slices(value, axis)))


def sparsity_table(model, sizes=False):
    """`{"rows": [...], "totals": {...}}` for every float weight of `model`.

    With `sizes`, totals include the `.keras` file size, raw and gzip.
    """
    plain = thinning.plain(model) if isinstance(model, keras.Model) else model
    rows = []
    for variable in plain.weights:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        rank = value.ndim
        rows.append(
            {
                "weight": variable.path.removeprefix(f"{plain.name}/"),  # as built alone or inside
                "shape": list(value.shape),
                "parameters": int(value.size),
                "nonzeros": int(np.count_nonzero(value)),
                "sparsity": float(1.0 - np.count_nonzero(value) / max(value.size, 1)),
                "zero_filters": _zero_slices(value, -1) if rank >= 2 else 0,
                "zero_channels": _zero_slices(value, -2) if rank >= 2 else 0,
                "zero_rows": _zero_slices(value, 0) if rank == 2 else 0,
            }
        )
    parameters = sum(r["parameters"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    totals = {
        "parameters": parameters,
        "nonzeros": nonzeros,
        "sparsity": 1.0 - nonzeros / max(parameters, 1),
    }
    if sizes and isinstance(plain, keras.Model):
        totals["keras_bytes"], totals["keras_gzip_bytes"] = thinning.keras_size(plain)
    return {"rows": rows, "totals": totals}


def format_table(table, fmt="table"):
    """The table as `"table"` (aligned text), `"csv"` or `"json"`."""
    if fmt == "json":
        return json.dumps(table, indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        for row in table["rows"]:
            writer.writerow(dict(row, shape="x".join(str(d) for d in row["shape"])))
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"Argument `fmt` must be 'table', 'csv' or 'json'. Received: fmt={fmt!r}")
    header = f"{'weight':<40}{'shape':>16}{'params':>10}{'nonzero':>10}{'sparsity':>10}"
    header += f"{'filters0':>9}{'chans0':>8}{'rows0':>7}"
    lines = [header, "-" * len(header)]
    for r in table["rows"]:
        shape = "x".join(str(d) for d in r["shape"]) or "scalar"
        lines.append(
            f"{r['weight'][-39:]:<40}{shape:>16}{r['parameters']:>10}{r['nonzeros']:>10}"
            f"{r['sparsity']:>10.2%}{r['zero_filters']:>9}{r['zero_channels']:>8}{r['zero_rows']:>7}"
        )
    t = table["totals"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<40}{'':>16}{t['parameters']:>10}{t['nonzeros']:>10}{t['sparsity']:>10.2%}")
    if "keras_bytes" in t:
        lines.append(
            f".keras size of the plain model (no optimizer state): {t['keras_bytes']} bytes, "
            f"gzip {t['keras_gzip_bytes']} bytes"
        )
    return "\n".join(lines)
