"""The channel dependency graph of a Sequential or Functional model.

Removing output channel `c` of a `Conv2D` also removes channel `c` of the
`BatchNormalization` after it, the input slice `c` of every layer reading
it, and channel `c` of every tensor added to it by a residual connection.
`build(model)` finds these couplings: every channel of every tensor is a
*slot*; the rule of each layer type says how its output slots relate to its
input slots, and slots that must be removed together are joined into one
*unit*. A *group* is the set of units one channel space holds (a producer's
output channels and everything tied to them by merges): layer-wise budgets
prune a fraction of each group.

Each rule also names the layer's weights and the unit of each index of
their channel axes (its *members*: written, read or carried, see
`builder`), and the layer's cost in parameters and FLOPs as a polynomial in
its channel counts.

A channel reaching a model output, coming from a model input, or
normalized together with its neighbours (`LayerNormalization`, a softmax)
is *fixed*: never removed. A layer with no rule that reads channels of a
unit makes that unit *blocked*: asking to prune it raises an error naming
the layer.

- `builder`: slots, units (a union-find), members and cost terms;
- `rules`: the rule of each layer type, `RULES`, `register`;
- `structure`: the walk over the graph, `build`, `Structure`.

Example:
>>> import keras
>>> x = keras.Input((8, 8, 3))
>>> y = keras.layers.Conv2D(4, 3, name="a")(x)
>>> y = keras.layers.BatchNormalization(name="bn")(y)
>>> model = keras.Model(x, keras.layers.Conv2D(2, 1, name="b")(y))
>>> structure = build(model)
>>> [(g.name, g.size) for g in structure.groups if g.prunable]
[('a', 4)]
"""

from tfprune.graph.builder import ROLES, Builder, Member, Term, UnknownLayerError
from tfprune.graph.rules import (
    RULES,
    UNARY_OPS,
    activation,
    batch_normalization,
    call_input,
    concatenate,
    constant_operands,
    conv,
    dense,
    fixed_channels,
    merge,
    opaque,
    passthrough,
    register,
    reshape,
    rule_for,
)
from tfprune.graph.structure import Group, Structure, build, graph_of, nodes, unwrapped

__all__ = [
    "ROLES", "RULES", "UNARY_OPS", "Builder", "Group", "Member", "Structure", "Term",
    "UnknownLayerError", "activation", "batch_normalization", "build", "call_input",
    "concatenate", "constant_operands", "conv", "dense", "fixed_channels", "graph_of", "merge",
    "nodes", "opaque", "passthrough", "register", "reshape", "rule_for", "unwrapped",
]  # fmt: skip
