"""Channel slots joined into units: the union-find the rules fill.

Every channel of every tensor is a slot. `Builder.union(a, b)` makes slots
`a[i]` and `b[i]` one unit (removed together); `member` records which unit
each index of a weight's channel axis belongs to, with its role:

- `"write"`: the weight computes the channel (a producer's kernel slice and
  bias, a normalization's scale and shift, a depthwise kernel). Masked.
- `"read"`: the weight reads the channel (a consumer's input slice). Masked.
  A unit all of whose reads are exactly zero can be removed without
  changing any output: this is what `thin` checks.
- `"carry"`: sliced along when a channel is removed, never masked
  (BatchNormalization's moving statistics).

`cost` records a layer's parameters or FLOPs as a `Term`: a coefficient
times the product of kept counts of some slot spaces.

Example:
>>> b = Builder()
>>> out, reads = b.new(4), b.new(4)
>>> b.union(out, reads)
>>> b.find(int(reads[2])) == b.find(int(out[2]))
True
"""

import dataclasses

import numpy as np

ROLES = ("write", "read", "carry")


@dataclasses.dataclass
class Member:
    """One channel axis of one weight of a layer, in units."""

    layer: str
    path: str
    axis: int
    slots: np.ndarray
    role: str
    units: np.ndarray = None  # filled in by `Structure`


@dataclasses.dataclass
class Term:
    """`coefficient x product of kept counts of `spaces``, for one layer."""

    layer: str
    coefficient: float
    spaces: tuple  # slot arrays; the count of a space is its kept positions


class UnknownLayerError(ValueError):
    """A layer without a channel rule reads channels that would be removed."""


class Builder:
    """Union-find over channel slots, filled by the rules."""

    def __init__(self):
        self.parent = []
        self.group_parent = []
        self.producer = []  # per slot: (layer name, index) or None
        self.fixed = {}  # slot -> reason
        self.blocked = {}  # slot -> (layer name, why no rule follows it)
        self.members = {}  # (layer, path, axis) -> Member
        self.costs = {"flops": [], "params": []}
        self.counted_params = set()
        self.fresh_cache = {}
        self.layers = {}  # name -> layer
        self.resizes = {}  # layer name -> [(config key, slots)]
        self.unruled = set()  # names of the layers no rule describes

    # ----------------------------------------------------------- union-find
    def _find(self, parent, i):
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def find(self, i):
        return self._find(self.parent, i)

    def union(self, a, b):
        """Slots `a[i]` and `b[i]` are removed together (same unit)."""
        for i, j in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            ri, rj = self.find(i), self.find(j)
            if ri != rj:
                self.parent[max(ri, rj)] = min(ri, rj)
            gi, gj = self._find(self.group_parent, i), self._find(self.group_parent, j)
            if gi != gj:
                self.group_parent[max(gi, gj)] = min(gi, gj)

    def tie(self, slots):
        """All of `slots` form one unit."""
        slots = np.asarray(slots)
        if len(slots) > 1:
            self.union(np.repeat(slots[:1], len(slots) - 1), slots[1:])

    def new(self, n, producer=None):
        start = len(self.parent)
        ids = list(range(start, start + n))
        self.parent += ids
        self.group_parent += [start] * n  # one producer's slots: one group
        self.producer += [None if producer is None else (*producer, i) for i in range(n)]
        return np.arange(start, start + n, dtype=np.int64)

    def fresh(self, layer, n, key="out"):
        """Output slots of a producer (the same for every call of the layer)."""
        cache_key = (id(layer), key)
        if cache_key not in self.fresh_cache:
            self.fresh_cache[cache_key] = self.new(n, (layer.name, key))
        return self.fresh_cache[cache_key]

    def resize(self, layer, key, slots):
        """`layer.get_config()[key]` becomes the number of kept `slots` (for a
        tuple, its last entry)."""
        entries = self.resizes.setdefault(layer.name, [])
        if key not in [k for k, _ in entries]:
            entries.append((key, np.asarray(slots, dtype=np.int64)))

    def fix(self, slots, reason):
        for s in np.asarray(slots).tolist():
            self.fixed.setdefault(s, reason)

    def block(self, slots, layer, why=""):
        for s in np.asarray(slots).tolist():
            self.blocked.setdefault(s, (layer.name, why))

    # --------------------------------------------------------- weights, costs
    def member(self, layer, path, axis, slots, role):
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}")
        slots = np.asarray(slots, dtype=np.int64)
        key = (layer.name, path, axis)
        old = self.members.get(key)
        if old is None:
            self.members[key] = Member(layer.name, path, axis, slots, role)
        else:  # a shared layer: every call reads through the same weight
            self.union(old.slots, slots)

    def cost(self, layer, kind, coefficient, *spaces):
        self.costs[kind].append(
            Term(layer.name, float(coefficient), tuple(np.asarray(s) for s in spaces))
        )

    def params_once(self, layer):
        """True the first time a layer's parameters are counted."""
        if layer.name in self.counted_params:
            return False
        self.counted_params.add(layer.name)
        return True
