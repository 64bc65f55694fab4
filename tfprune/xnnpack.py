"""Whether a model meets XNNPACK's conditions for sparse inference (`tfprune inspect --xnnpack`).

XNNPACK, TFLite's CPU delegate, runs part of a float model in NCHW layout
with sparse 1x1 convolutions (Elsen et al., "Fast Sparse ConvNets", 2019;
1.3-2.4x faster on ARM phones) when that part

- starts at a 3x3 stride-2 `Conv2D` on 3 input channels padded by 1 on
  each side (`ZeroPadding2D(1)`, then `padding="valid"`): `stem`;
- has 1x1 `Conv2D` kernels that are more than 2/3 zeros, counted over all
  of them together: `sparsity`;
- ends at a spatial mean (`GlobalAveragePooling2D`) before every output:
  `end`;
- holds only operators XNNPACK runs in NCHW between them: `ops` (the
  rules of `PruneForLatencyOnXNNPack`, less subtraction: XNNPACK's NCHW
  subgraph has ADD and MUL but not SUB).

`xnnpack_report(model)` checks each and names the layers that break it.
Pruning wrappers are stripped (masks applied) first. Outside the model,
the `.tflite` file must store the weights sparse (`tfprune export --sparse`,
`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`): only then does the delegate ask
for sparse inference; and XNNPACK never uses it on x86 CPUs with AVX.

Example:
>>> inputs = keras.Input((16, 16, 3))
>>> x = keras.layers.ZeroPadding2D(1)(inputs)
>>> x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
>>> x = keras.layers.Conv2D(8, 1, name="pw")(x)
>>> x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
>>> model = keras.Model(inputs, x)
>>> report = xnnpack_report(model)
>>> report.ok, [c.name for c in report.conditions if not c.holds]
(False, ['sparsity'])
>>> report.condition("sparsity").problems
['pw: 1x1 conv with 0.0% zeros, needs > 66.7%']
>>> keep = np.arange(64).reshape(1, 1, 8, 8) % 4 == 0  # 75% zeros
>>> _ = model.get_layer("pw").kernel.assign(np.where(keep, 1.0, 0.0))
>>> xnnpack_report(model).ok
True
"""

import csv
import dataclasses
import io
import json

import keras
import numpy as np
from keras import layers as L
from keras.src.ops import numpy as knp

from tfprune import cloning, thinning
from tfprune.policy import PruneForLatencyOnXNNPack, _consumers, _producers

THRESHOLD = 2 / 3  # XNNPACK: sparse only if zeros * 3 > params * 2 over the 1x1 convs

NOTES = (
    "Export with sparse weights (`tfprune export --format tflite --sparse`): the TFLite "
    "delegate asks XNNPACK for sparse inference only for weights stored sparse (DENSIFY).",
    "XNNPACK never runs sparse on x86 CPUs with AVX (it finds dense faster there); the "
    "speed-ups are for ARM and WebAssembly.",
)

_STEM = "a 3x3 stride-2 Conv2D on 3 input channels after ZeroPadding2D(1), padding 'valid'"
_REQUIREMENTS = {
    "stem": f"every input reaches {_STEM}",
    "sparsity": "the 1x1 Conv2D kernels between stem and end are more than 2/3 zeros in total",
    "end": "every output comes from a spatial mean (GlobalAveragePooling2D)",
    "ops": "only operators XNNPACK runs in NCHW between stem and end",
}
# XNNPACK's NCHW subgraph has binary ADD and MUL, not SUB (TFMOT's policy accepts `Sub`).
_SUBTRACT = (L.Subtract, knp.Subtract)


@dataclasses.dataclass
class Condition:
    """One condition: `holds`, what was `found`, and `problems` ("layer: why")."""

    name: str
    requirement: str
    holds: bool
    found: str = ""
    problems: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Report:
    """`xnnpack_report`'s result: `ok` when every condition holds."""

    model: str
    conditions: list
    convs: list  # per 1x1 conv between stem and end: {"layer", "params", "zeros", "sparsity"}
    notes: tuple = NOTES

    @property
    def ok(self):
        return all(c.holds for c in self.conditions)

    def condition(self, name):
        return next(c for c in self.conditions if c.name == name)

    def to_dict(self):
        return {
            "model": self.model,
            "ok": self.ok,
            "conditions": [dataclasses.asdict(c) for c in self.conditions],
            "convs": self.convs,
            "notes": list(self.notes),
        }

    def to_json(self, indent=1):
        return json.dumps(self.to_dict(), indent=indent)

    def text(self):
        failed = [c for c in self.conditions if not c.holds]
        verdict = (
            "yes" if self.ok else f"no ({len(failed)} of {len(self.conditions)} conditions fail)"
        )
        lines = [f"XNNPACK sparse inference for '{self.model}': {verdict}"]
        for c in self.conditions:
            found = f": {c.found}" if c.found else ""
            lines.append(f"  [{'ok' if c.holds else 'FAIL'}] {c.name}: {c.requirement}{found}")
            lines.extend(f"         {p}" for p in c.problems)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    __str__ = text

    def format(self, fmt="table"):
        """As `"table"` (text), `"json"` or `"csv"` (a row per problem)."""
        if fmt in ("table", "text"):
            return self.text()
        if fmt == "json":
            return self.to_json()
        if fmt == "csv":
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(["condition", "holds", "problem"])
            for c in self.conditions:
                for problem in c.problems or [""]:
                    writer.writerow([c.name, c.holds, problem])
            return out.getvalue()
        raise ValueError(f"Argument `fmt` must be 'table', 'json' or 'csv'. Received: fmt={fmt!r}")


# ------------------------------------------------------------------ helpers
def _pads(layer):
    """`((top, bottom), (left, right))` of a `ZeroPadding2D`."""
    return tuple(tuple(int(v) for v in side) for side in layer.padding)


def _padding_before(layer):
    """The `ZeroPadding2D` feeding `layer` alone, else None."""
    producers = _producers(layer)
    if len(producers) == 1 and isinstance(producers[0], L.ZeroPadding2D):
        return producers[0]
    return None


def _size(values):
    return "x".join(str(int(v)) for v in values)


def _stride(values):
    return str(int(values[0])) if len(set(values)) == 1 else _size(values)


def _stem_problems(layer):
    """Why `layer`, the first weighted layer after an input, is no stem."""
    if not isinstance(layer, L.Conv2D) or isinstance(layer, L.DepthwiseConv2D):
        return [f"stem {layer.name}: {type(layer).__name__}, needs {_STEM}"]
    found = []
    if tuple(layer.kernel_size) != (3, 3):
        found.append(f"kernel {_size(layer.kernel_size)}")
    if tuple(layer.strides) != (2, 2):
        found.append(f"stride {_stride(layer.strides)}")
    channels = int(layer.kernel.shape[2]) * int(layer.groups)
    if channels != 3:
        found.append(f"{channels} input channels")
    pad = _padding_before(layer)
    if layer.padding.lower() != "valid":
        found.append(f"padding '{layer.padding}'")
    elif pad is None:
        found.append("no ZeroPadding2D(1) before it")
    elif _pads(pad) != ((1, 1), (1, 1)):
        found.append(f"padded {_pads(pad)} by '{pad.name}'")
    if not found:  # not expected: _is_start and this list check the same things
        return [f"stem {layer.name}: not a stem"]
    return [f"stem {layer.name}: {', '.join(found)}; needs {_STEM}"]


def _weighted(layer):
    return any(hasattr(layer, a) for a in ("kernel", "depthwise_kernel", "embeddings"))


def _activation_name(function):
    name = keras.activations.serialize(function)
    return name if isinstance(name, str) else name.get("config", name)


def _op_problem(policy, layer, outputs):
    """Why `layer` between stem and end breaks the sparse subgraph, else None."""
    name, kind = layer.name, type(layer).__name__
    if isinstance(layer, _SUBTRACT):
        return f"{name}: subtraction (XNNPACK's NCHW subgraph has ADD and MUL, not SUB)"
    if isinstance(layer, keras.Model):
        return f"{name}: a nested model; rebuild the graph without nesting to check it"
    if not policy._supported(layer):
        return f"{name}: {_why(layer, kind)}"
    activation = getattr(layer, "activation", None)
    if activation is not None and not isinstance(layer, L.Activation):
        act = _activation_name(activation)
        if act != "linear" and not policy._supported(L.Activation(activation)):
            return f"{name}: fused activation '{act}' is not run in NCHW by XNNPACK"
    if id(layer) in outputs:
        return f"{name}: a model output inside the sparse subgraph (its tensors must stay inside)"
    return None


def _why(layer, kind):
    if isinstance(layer, L.DepthwiseConv2D):
        k, s = tuple(layer.kernel_size), tuple(layer.strides)
        if layer.depth_multiplier != 1:
            return f"DepthwiseConv2D with depth_multiplier {layer.depth_multiplier}, needs 1"
        if tuple(layer.dilation_rate) != (1, 1):
            return f"DepthwiseConv2D with dilation {_size(layer.dilation_rate)}, needs none"
        if k not in ((3, 3), (5, 5)) or s not in ((1, 1), (2, 2)):
            return (
                f"{_size(k)} stride-{_stride(s)} DepthwiseConv2D, needs 3x3 or 5x5, stride 1 or 2"
            )
        half = k[0] // 2
        pad = _padding_before(layer)
        if layer.padding.lower() == "same":
            padding = "padding 'same' at stride 2"
        elif pad is None:
            padding = "no padding"
        else:
            padding = f"padding {_pads(pad)} from '{pad.name}'"
        return (
            f"{_size(k)} stride-{_stride(s)} DepthwiseConv2D with {padding}, needs {half} on each side "
            f"(ZeroPadding2D({half}) then 'valid', or 'same' at stride 1)"
        )
    if isinstance(layer, L.Conv2D):
        found = [f"{_size(layer.kernel_size)} Conv2D"]
        if tuple(layer.strides) != (1, 1):
            found.append(f"stride {_stride(layer.strides)}")
        if tuple(layer.dilation_rate) != (1, 1):
            found.append(f"dilation {_size(layer.dilation_rate)}")
        if layer.groups != 1:
            found.append(f"{layer.groups} groups")
        return f"{' '.join(found)}, needs 1x1 convs with stride 1 (no dilation or groups)"
    if isinstance(layer, L.BatchNormalization):
        return f"BatchNormalization over axis {layer.axis}, needs the channels axis (-1)"
    if isinstance(layer, L.UpSampling2D):
        return f"UpSampling2D '{layer.interpolation}', needs 'bilinear'"
    if isinstance(layer, L.GlobalAveragePooling2D):
        return "GlobalAveragePooling2D without keepdims inside the subgraph"
    if isinstance(layer, L.Activation):
        return (
            f"activation '{_activation_name(layer.activation)}', needs relu, relu6, "
            "leaky_relu, elu or sigmoid"
        )
    return f"{kind} between the stem and the spatial mean is not supported"


def _rank(layer, outputs=True):
    node = layer._inbound_nodes[0] if layer._inbound_nodes else None
    tensors = (node.output_tensors if outputs else node.input_tensors) if node else []
    return len(tensors[0].shape) if tensors else None


def _ends(policy, model):
    """The spatial means every output comes from, and the outputs that lack one."""
    ends, problems = [], []
    for tensor in model.outputs:
        out = tensor._keras_history.operation
        found = policy._lookup_layers([out], policy._is_end, _producers)
        ends.extend(e for e in found if e not in ends)
        if found:
            continue
        # the layer where the spatial axes go: 4-D in, not 4-D out
        seen, stack, cut = {id(out)}, [out], None
        while stack and cut is None:
            layer = stack.pop()
            if _rank(layer, outputs=False) == 4 and _rank(layer) != 4:
                cut = layer
            for p in _producers(layer):
                if id(p) not in seen and not policy._is_end(p):
                    seen.add(id(p))
                    stack.append(p)
        if cut is None:
            problems.append(f"output {out.name}: no spatial mean before it")
        else:
            problems.append(
                f"output {out.name}: spatial axes removed by {type(cut).__name__} "
                f"'{cut.name}', needs GlobalAveragePooling2D"
            )
    return ends, problems


# --------------------------------------------------------------------- main
def xnnpack_report(model):
    """Checks `model` against XNNPACK's sparse-inference conditions.

    Args:
        model: a Sequential or Functional model, pruned (with wrappers) or plain.

    Returns:
        A `Report`: `ok`, `conditions` (`stem`, `sparsity`, `end`, `ops`, each
        with `holds`, `found` and `problems`), `convs` (the 1x1 convs counted),
        `text()`, `to_dict()`, `to_json()` and `format(fmt)`.
    """
    if not isinstance(model, keras.Model) or not cloning.is_graph_model(model):
        raise ValueError(
            "Argument `model` must be a Sequential or Functional `keras.Model` (its graph shows "
            f"what XNNPACK would run). Received: model={model!r}"
        )
    model = thinning.plain(model)
    if not model.built:
        raise ValueError(f"Model '{model.name}' is not built: call it on data or give it an Input.")
    policy = PruneForLatencyOnXNNPack()
    inputs = [t._keras_history.operation for t in model.inputs]
    outputs = {id(t._keras_history.operation) for t in model.outputs}

    # stem: the first weighted layer on every path from an input
    stems, stem_problems = [], []
    seen, stack = {id(i) for i in inputs}, list(inputs)
    while stack:
        layer = stack.pop()
        if _weighted(layer):
            if layer not in stems:
                stems.append(layer)
                if not policy._is_start(layer):
                    stem_problems.extend(_stem_problems(layer))
            continue
        following = _consumers(layer)
        if not following:
            stem_problems.append(
                f"output {layer.name}: reached from an input without a convolution"
            )
        for nxt in following:
            if id(nxt) not in seen:
                seen.add(id(nxt))
                stack.append(nxt)
    good = [s for s in stems if policy._is_start(s)]

    # between stem(s) and end(s): every node, and the 1x1 convs
    convs_first = [s for s in stems if isinstance(s, L.Conv2D)]
    visited, seen = [], {id(s) for s in convs_first}
    stack = [c for s in convs_first for c in _consumers(s)]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if policy._is_end(layer):
            continue
        visited.append(layer)
        stack.extend(reversed(_consumers(layer)))
    order = {id(op): i for i, op in enumerate(getattr(model, "operations", model.layers))}
    visited.sort(key=lambda op: order.get(id(op), len(order)))
    op_problems = [p for p in (_op_problem(policy, op, outputs) for op in visited) if p]

    ones = [v for v in visited if isinstance(v, L.Layer) and policy.allow_pruning(v)]
    if not convs_first:  # nothing to walk from: count every 1x1 conv
        ones = [layer for layer in model.layers if policy.allow_pruning(layer)]
    convs = []
    for layer in ones:
        kernel = np.asarray(keras.ops.convert_to_numpy(layer.kernel))
        zeros = int(kernel.size - np.count_nonzero(kernel))
        convs.append({"layer": layer.name, "params": int(kernel.size), "zeros": zeros,
                      "sparsity": zeros / max(kernel.size, 1)})  # fmt: skip
    params = sum(c["params"] for c in convs)
    zeros = sum(c["zeros"] for c in convs)
    if not convs:
        sparsity = Condition("sparsity", _REQUIREMENTS["sparsity"], False, "no 1x1 Conv2D",
                             ["no 1x1 Conv2D between the stem and the spatial mean"])  # fmt: skip
    else:
        holds = zeros * 3 > params * 2
        sparsity = Condition(
            "sparsity", _REQUIREMENTS["sparsity"], holds,
            f"{zeros / params:.1%} ({zeros} of {params} weights in {len(convs)} convs)",
            [] if holds else [
                f"{c['layer']}: 1x1 conv with {c['sparsity']:.1%} zeros, needs > {THRESHOLD:.1%}"
                for c in convs if c["zeros"] * 3 <= c["params"] * 2
            ],
        )  # fmt: skip

    ends, end_problems = _ends(policy, model)
    conditions = [
        Condition("stem", _REQUIREMENTS["stem"], not stem_problems and bool(good),
                  ", ".join(s.name for s in good), stem_problems or ([] if good else ["no stem"])),
        sparsity,
        Condition("end", _REQUIREMENTS["end"], not end_problems, ", ".join(e.name for e in ends),
                  end_problems),
        Condition("ops", _REQUIREMENTS["ops"], bool(convs_first) and not op_problems,
                  f"{len(visited)} nodes checked" if convs_first else "not checked: no Conv2D stem",
                  op_problems),
    ]  # fmt: skip
    return Report(model.name, conditions, convs)
