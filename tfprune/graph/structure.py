"""The walk over a model's graph and the `Structure` it yields.

`build(model)` runs each node's rule in graph order (nested models are
walked inside their caller) and numbers the units group by group; the
`Structure` answers which units are prunable, fixed or blocked, which
weights hold them, and what the model costs with some units removed.

Example:
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name="a")(x)
>>> model = keras.Model(x, keras.layers.Conv2D(2, 1, name="b")(y))
>>> structure = build(model)
>>> a = next(g for g in structure.groups if g.name == "a")
>>> keep = np.ones(structure.size, bool)
>>> keep[a.units[0]] = False  # one output channel of 'a' removed
>>> structure.count("params"), structure.count("params", keep)
(122.0, 92.0)
"""

import dataclasses
import math

import keras
import numpy as np
from keras import layers as L

from tfprune import cloning
from tfprune.graph.builder import Builder, Term, UnknownLayerError
from tfprune.graph.rules import input_layer, no_rule_why, opaque, rule_for


@dataclasses.dataclass
class Group:
    """The units of one channel space."""

    name: str
    units: np.ndarray  # unit indices
    producers: tuple
    prunable: bool
    reason: str = ""

    @property
    def size(self):
        return int(len(self.units))


def unwrapped(op):
    """The layer a pruning wrapper holds (the graph sees through wrappers)."""
    from tfprune.wrapper import PruneLowMagnitude

    return op.layer if isinstance(op, PruneLowMagnitude) else op


def graph_of(model):
    if isinstance(model, keras.Sequential):
        if getattr(model, "_functional", None) is None:
            raise ValueError(
                f"Model '{model.name}' is a Sequential model without an input shape: "
                "build it (`keras.Input` first, or call it once) before pruning channels."
            )
        return model._functional
    return model


def nodes(model):
    graph = graph_of(model)

    def call_index(node):  # a node of a model rebuilt around the layer may not be listed
        inbound = node.operation._inbound_nodes
        return next((i for i, other in enumerate(inbound) if other is node), len(inbound))

    for depth in sorted(graph._nodes_by_depth, reverse=True):
        yield from sorted(graph._nodes_by_depth[depth], key=call_index)


def build(model, layers=None, strict=True):
    """The channel `Structure` of a Sequential or Functional model.

    Args:
        model: the model (pruning wrappers are seen through).
        layers: a predicate `layer -> bool` selecting the producers whose
            channels may be removed (default: all).
    """
    if not cloning.is_graph_model(model):
        raise ValueError(
            "Channels can be removed from Sequential and Functional models only (their "
            f"graph shows which channels are coupled). Received: model={model!r} of type "
            f"{type(model).__name__}"
        )
    b = Builder()
    for s in _walk(b, model):
        b.fix(s, "model output")
    for name, op in b.layers.items():  # weights no rule describes: fixed
        if isinstance(op, keras.layers.Layer) and name not in b.counted_params:
            b.cost(op, "params", sum(int(np.prod(w.shape)) for w in op.weights))
    return Structure(b, layers, strict)


def _walk(b, model, inputs=None):
    """Runs the rules over a graph model's nodes; returns its outputs' slots.

    `inputs`: slots of the inputs of a nested model's call (None: the
    outermost model, whose inputs are fixed).
    """
    slots = {}
    graph = graph_of(model)
    if inputs is not None:
        for tensor, s in zip(graph.inputs, inputs):
            slots[id(tensor)] = s
    for node in nodes(model):
        op = unwrapped(node.operation)
        if node.is_input and inputs is not None:
            s = slots[id(node.outputs[0])]
            if isinstance(op, L.InputLayer):
                b.resize(op, "batch_shape", s)  # a nested model's input width
            continue
        known = b.layers.setdefault(op.name, op)
        if known is not op:
            raise ValueError(
                f"Two layers of model '{model.name}' are named '{op.name}' (one in a nested "
                "model): channel pruning tells layers apart by name. Rename one."
            )
        args = [slots.get(id(t)) for t in node.input_tensors]
        if node.is_input:
            out = input_layer(b, op, node, args)
        elif any(s is None for s in args):
            out = opaque(b, op, [s for s in args if s is not None], node.outputs)
        elif cloning.is_graph_model(op):
            del b.layers[op.name]  # its layers are counted one by one
            out = _walk(b, op, args)
        else:
            rule = rule_for(op)
            if rule is None:
                b.unruled.add(op.name)
                out = opaque(b, op, args, node.outputs, no_rule_why(op))
            else:
                out = rule(b, op, node, args)
        for tensor, s in zip(node.outputs, out):
            if len(tensor.shape) and tensor.shape[-1] is not None and len(s) != tensor.shape[-1]:
                raise AssertionError(f"rule for '{op.name}' gave {len(s)} channels")
            slots[id(tensor)] = np.asarray(s, dtype=np.int64)
    return [slots[id(t)] for t in graph.outputs]


class Structure:
    """Units, groups, members and costs of one model (see `build`)."""

    def __init__(self, b, selected=None, strict=True):
        roots = {}
        order = []
        n_slots = len(b.parent)
        root_of = np.array([b.find(i) for i in range(n_slots)], dtype=np.int64)
        group_of = np.array([b._find(b.group_parent, i) for i in range(n_slots)], dtype=np.int64)
        # Units numbered group by group, so a group's units are contiguous.
        by_group = {}
        for slot in range(n_slots):
            root = root_of[slot]
            if root not in roots:
                roots[root] = None
                by_group.setdefault(group_of[slot], []).append(root)
        index = {}
        for members in by_group.values():
            for root in members:
                index[root] = len(index)
                order.append(root)
        self.size = len(index)
        self.slot_unit = np.array([index[r] for r in root_of], dtype=np.int64)
        self.layers = b.layers
        # Layers with weights that no rule describes: their FLOPs are not counted.
        self.uncounted = sorted(name for name in b.unruled if b.layers[name].weights)
        self.resizes = {
            name: [(key, self.slot_unit[s]) for key, s in entries]
            for name, entries in b.resizes.items()
        }
        unit_fixed = {}
        for slot, reason in b.fixed.items():
            unit_fixed.setdefault(int(self.slot_unit[slot]), reason)
        unit_blocked, unit_why = {}, {}
        for slot, (name, why) in b.blocked.items():
            unit_blocked.setdefault(int(self.slot_unit[slot]), name)
            unit_why.setdefault(int(self.slot_unit[slot]), why)
        producers = [set() for _ in range(self.size)]
        # (layer, "out" or "heads", index) of each producer channel in a unit
        self.positions = {}
        for slot, producer in enumerate(b.producer):
            if producer is not None:
                unit = int(self.slot_unit[slot])
                producers[unit].add(producer[0])
                self.positions[producer] = unit
        self.members = {}
        for member in b.members.values():
            member.units = self.slot_unit[member.slots]
            self.members.setdefault(member.layer, []).append(member)
        self.costs = {
            kind: [
                Term(t.layer, t.coefficient, tuple(self.slot_unit[s] for s in t.spaces))
                for t in terms
            ]
            for kind, terms in b.costs.items()
        }
        selected = selected or (lambda layer: True)
        self.groups = []
        self.unit_group = np.zeros(self.size, dtype=np.int64)
        self.prunable = np.zeros(self.size, dtype=bool)
        self.blocked_by = unit_blocked
        self.fixed_by = unit_fixed
        for members in by_group.values():
            units = np.array([index[r] for r in members], dtype=np.int64)
            names = sorted({p for u in units for p in producers[u]}, key=list(b.layers).index)
            reason = ""
            if not names:
                reason = "no layer produces these channels"
            elif any(int(u) in unit_fixed for u in units) and all(
                int(u) in unit_fixed for u in units
            ):
                reason = unit_fixed[int(units[0])]
            elif not all(selected(b.layers[n]) for n in names):
                reason = "a producer is not selected"
            prunable_units = [
                int(u) for u in units if int(u) not in unit_fixed and int(u) not in unit_blocked
            ]
            blocked = [unit_blocked[u] for u in units.tolist() if u in unit_blocked]
            if blocked and not reason and strict:
                why = next(unit_why[u] for u in units.tolist() if u in unit_why)
                raise UnknownLayerError(_blocked_message(self, blocked[0], why, names))
            if blocked and not prunable_units:
                reason = f"read by '{blocked[0]}', which has no channel rule"
            group = Group(names[0] if names else f"group_{len(self.groups)}", units,
                          tuple(names), not reason and bool(prunable_units), reason)
            if group.prunable:
                self.prunable[prunable_units] = True
            self.unit_group[units] = len(self.groups)
            self.groups.append(group)

    # ------------------------------------------------------------ queries
    def count(self, kind, keep=None):
        """Total parameters or FLOPs (`kind`) with the units `keep` kept."""
        keep = np.ones(self.size, bool) if keep is None else np.asarray(keep, bool)
        return sum(self.layer_counts(kind, keep).values())

    def layer_counts(self, kind, keep=None):
        keep = np.ones(self.size, bool) if keep is None else np.asarray(keep, bool)
        totals = {}
        for term in self.costs[kind]:
            value = term.coefficient * math.prod(int(keep[s].sum()) for s in term.spaces)
            totals[term.layer] = totals.get(term.layer, 0.0) + value
        return totals


def _blocked_message(structure, layer_name, why, producers):
    layer = structure.layers.get(layer_name)
    kind = type(layer).__name__ if layer is not None else "?"
    what = "Layer" if isinstance(layer, keras.layers.Layer) else "Operation"
    start = (
        f"{what} '{layer_name}' ({kind}) reads channels that removing channels of "
        f"{', '.join(repr(p) for p in producers)} would change"
    )
    if why != no_rule_why(layer):  # a rule that cannot follow this call
        return f"{start}, and tfprune cannot follow them through it{why}. Leave those layers out with `layers=`."
    if not isinstance(layer, keras.layers.Layer):
        return (
            f"{start}, and tfprune has no rule for the `keras.ops` operation {kind}: use the "
            "Keras layer that does the same, if there is one, or leave those layers out with "
            "`layers=`."
        )
    return (
        f"{start}, and tfprune has no rule for how {kind} maps channels. Describe it with "
        f"`tfprune.graph.register({kind}, rule)` (e.g. `tfprune.graph.passthrough` for an "
        "element-wise layer), or leave those layers out with `layers=`."
    )
