"""The channel dependency graph, coupled channel pruning and thinning."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from conftest import BACKEND, except_on_jax, only_backends, to_numpy
from helpers import tflite_predict

import tfprune
from tfprune import graph, thinning
from tfprune.selection import keep_count

# The graph and thinning are backend-independent Python and NumPy; JAX (slow to
# run eager ops the first time) runs the tests that train, mask and thin.
graph_logic = pytest.mark.skipif(
    BACKEND == "jax", reason="backend-independent graph logic; JAX runs the training tests"
)


def calibrate(model, x):
    """BatchNormalization statistics of `x` (momentum 0 for one training call),
    so that the outputs depend on the inputs and equality checks mean something."""
    norms = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    saved = [n.momentum for n in norms]
    for n in norms:
        n.momentum = 0.0
    model(x, training=True)
    for n, m in zip(norms, saved):
        n.momentum = m


def assert_same_outputs(a, b, x, atol=1e-4):
    ya, yb = to_numpy(a(x, training=False)), to_numpy(b(x, training=False))
    assert ya.shape == yb.shape
    np.testing.assert_allclose(ya, yb, atol=atol, rtol=0)
    return ya


def zoo():
    """A model using every channel rule of image models."""
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", name="stem")(x)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = keras.layers.ReLU(name="stem_relu")(h)
    # residual block: the shortcut and the branch prune together
    r = keras.layers.Conv2D(8, 1, name="reduce")(h)
    r = keras.layers.BatchNormalization(name="reduce_bn")(r)
    r = keras.layers.Activation("swish", name="reduce_swish")(r)
    r = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(r)
    r = keras.layers.Conv2D(16, 1, name="expand")(r)
    r = keras.layers.BatchNormalization(name="expand_bn")(r)
    h = keras.layers.Add(name="add")([h, r])
    # squeeze-excite: the gate multiplies the channels it was computed from
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(h)
    s = keras.layers.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = keras.layers.Conv2D(16, 1, activation="sigmoid", name="se_expand")(s)
    h = keras.layers.Multiply(name="se")([h, s])
    # two branches concatenated (offsets), one a grouped conv
    a = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(h)
    b = keras.layers.Conv2D(8, 1, name="pre")(h)
    b = keras.layers.Conv2D(12, 1, groups=4, name="grouped")(b)
    c = keras.layers.Concatenate(name="concat")([a, b])
    c = keras.layers.MaxPooling2D(name="pool")(c)
    c = keras.layers.Conv2D(8, 3, padding="same", name="tail")(c)
    c = keras.layers.GroupNormalization(groups=4, name="gn")(c)
    f = keras.layers.Flatten(name="flat")(c)
    f = keras.layers.Dense(12, activation="relu", name="fc")(f)
    return keras.Model(x, keras.layers.Dense(5, name="logits")(f), name="zoo")


def sizes(model):
    found = {}
    for layer in model.layers:
        for key in ("filters", "units", "num_heads", "groups", "output_dim"):
            if hasattr(layer, key) and not isinstance(getattr(layer, key), (list, tuple)):
                found.setdefault(layer.name, getattr(layer, key))
    return found


@graph_logic
# ----------------------------------------------------------------- graph
def test_the_graph_couples_residual_merges_concatenations_and_gates():
    structure = graph.build(zoo())
    groups = {g.name: g for g in structure.groups if g.prunable}
    # stem, expand and the gate's expand share the residual stream's channels
    assert set(groups["stem"].producers) == {"stem", "expand", "se_expand"}
    assert groups["stem"].size == 16
    # a grouped conv (4 groups) removes the same filter from each group, and
    # reads the same input from each group: 12 filters in 3 units, 8 inputs in 2
    assert groups["grouped"].size == 3 and groups["pre"].size == 2
    # the concatenation does not couple its inputs
    assert groups["sep"].size == 8
    # GroupNormalization removes whole groups: 4 units of 2 channels
    assert groups["tail"].size == 4
    assert {g.name for g in structure.groups if not g.prunable} >= {"logits"}
    assert structure.count("params") == zoo().count_params()


@graph_logic
def test_counts_of_params_and_flops_follow_the_layers():
    x = keras.Input((10, 10, 3))
    y = keras.layers.Conv2D(4, 3, name="c")(x)  # 8x8x4 outputs, 27 inputs each
    model = keras.Model(x, keras.layers.Dense(2, name="d")(keras.layers.Flatten()(y)))
    assert tfprune.count_params(model) == model.count_params() == 3 * 3 * 3 * 4 + 4 + 256 * 2 + 2
    assert tfprune.count_flops(model) == 2 * (8 * 8 * 27 * 4) + 2 * (256 * 2)


@graph_logic
def test_flops_of_einsum_dense_and_a_warning_for_layers_no_rule_counts():
    x = keras.Input((5, 8))
    einsum = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 4), name="e")
    same_as_dense = keras.Model(x, einsum(x))
    assert tfprune.count_flops(same_as_dense) == 2 * 5 * 8 * 4
    assert tfprune.count_flops(keras.Model(x, keras.layers.Dense(4)(x))) == 2 * 5 * 8 * 4
    x3 = keras.Input((5, 7, 8))
    heads = keras.layers.EinsumDense("...c,cde->...de", output_shape=(2, 4))(x3)
    assert tfprune.count_flops(keras.Model(x3, heads)) == 2 * 5 * 7 * 8 * (2 * 4)
    lstm = 2 * 5 * 4 * (8 * 3 + 3 * 3)  # 5 steps, 4 gates, input and recurrent kernels
    both = keras.layers.Bidirectional(keras.layers.LSTM(3))(x)
    assert tfprune.count_flops(keras.Model(x, both)) == 2 * lstm
    steps = keras.layers.TimeDistributed(keras.layers.Dense(4))(x)
    assert tfprune.count_flops(keras.Model(x, steps)) == 5 * 2 * 8 * 4

    class Twice(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 6))

        def call(self, x):
            return keras.ops.matmul(x, self.w)

    model = keras.Model(x, keras.layers.Dense(2, name="d")(Twice(name="mine")(x)))
    with pytest.warns(UserWarning, match=r"no FLOPs for .*'mine' \(Twice\)\. The total leaves"):
        assert tfprune.count_flops(model) == 2 * 5 * 6 * 2  # the Dense alone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfprune.count_flops(same_as_dense)  # every layer counted: no warning


# -------------------------------------------------------- masking, thinning
@graph_logic
@pytest.mark.parametrize("granularity", ["filter", "channel"])
def test_masked_model_equals_the_thinned_one_for_every_rule(rng, granularity):
    model = zoo()
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    calibrate(model, x)
    pruned = tfprune.prune(model, None, granularity=granularity)
    kinds = {type(w.layer).__name__ for w in tfprune.wrapper.collect_prunable_layers(pruned)}
    assert {"BatchNormalization", "DepthwiseConv2D", "GroupNormalization"} <= kinds
    tfprune.update_masks(pruned, 0.5)
    small, plan = tfprune.thin(pruned, return_plan=True)
    y = assert_same_outputs(pruned, small, x)
    assert y.std(axis=0).mean() > 1e-3  # the outputs depend on the inputs
    assert sizes(small) == {
        "stem": 8, "expand": 8, "se_expand": 8, "reduce": 4, "se_reduce": 2, "sep": 4,
        "pre": 4, "grouped": 8, "tail": 4, "gn": 2, "fc": 6, "logits": 5,
    }  # fmt: skip
    assert plan.kept == []
    report = tfprune.thinning_report(model, small)
    t = report.totals
    assert (t["params_before"], t["params_after"]) == (model.count_params(), small.count_params())
    assert t["flops_after"] == tfprune.count_flops(small) < t["flops_before"]
    assert t["keras_bytes_after"] < t["keras_bytes_before"]
    assert {r["layer"]: r["params_after"] for r in report.rows}["stem"] == 3 * 3 * 3 * 8 + 8
    assert "total" in str(report) and f"x{report.ratio('params'):.3f}" in str(report)
    # nothing of tfprune is left in the thinned model
    assert all(type(layer).__module__.startswith("keras.") for layer in small.layers)
    assert small.count_params() < model.count_params() / 2
    # the plan replays on a freshly built model of the same architecture
    fresh = tfprune.apply_plan(zoo(), json.loads(plan.to_json()))
    assert fresh.get_config() == small.get_config()
    fresh.set_weights(small.get_weights())
    assert_same_outputs(small, fresh, x, atol=0)


def sequence_model():
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 16, name="embed")(tokens)
    h = keras.layers.LSTM(12, return_sequences=True, name="lstm")(h)
    h = keras.layers.GRU(10, return_sequences=True, name="gru")(h)
    q = keras.layers.Dense(16, name="proj")(h)
    a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(q, q)
    h = keras.layers.Add()([q, a])
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(3, name="out")(h))


def prelu_model():
    """PReLU with a slope per channel and per element, on convs and Dense."""
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(x)
    h = keras.layers.PReLU(shared_axes=[1, 2], name="shared")(h)
    h = keras.layers.Conv2D(6, 3, name="c2")(h)
    h = keras.layers.PReLU(name="per_element")(h)  # a slope per pixel and channel
    h = keras.layers.Dense(5, name="d")(keras.layers.Flatten()(h))
    h = keras.layers.PReLU(name="per_unit")(h)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h))


@graph_logic
@pytest.mark.parametrize("build", [zoo, sequence_model, prelu_model])
def test_the_cost_polynomial_predicts_the_thinned_counts(rng, build):
    # Budgets choose channels by the predicted counts: each rule must count
    # every weight and FLOP its layer loses with a channel.
    model = build()
    structure = graph.build(model)
    assert structure.count("params") == model.count_params()
    for _ in range(3):
        remove = structure.prunable & (rng.random(structure.size) < 0.5)
        for units in [g.units for g in structure.groups] + thinning._resized_units(structure):
            if len(units) and remove[units].all():
                remove[units[0]] = False
        small = thinning.apply_keep(model, structure, ~remove)
        assert structure.count("params", ~remove) == small.count_params() < model.count_params()
        assert structure.count("flops", ~remove) == tfprune.count_flops(small)


@graph_logic
def test_sequence_models_thin_units_and_heads(rng):
    model = sequence_model()
    x = rng.integers(0, 20, size=(8, 6)).astype("int32")
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x)
    assert sizes(small) == {
        "embed": 8, "lstm": 6, "gru": 5, "proj": 8, "mha": 2, "out": 3
    }  # fmt: skip


@graph_logic
def test_layer_normalization_keeps_its_channels(rng):
    x = keras.Input((5, 8))
    h = keras.layers.Dense(8, name="d1")(x)
    h = keras.layers.LayerNormalization(name="ln")(h)
    model = keras.Model(x, keras.layers.Dense(2, name="d2")(keras.layers.Dense(6, name="mid")(h)))
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    assert sizes(tfprune.thin(pruned)) == {"d1": 8, "mid": 3, "d2": 2}


@graph_logic
def test_a_model_without_removable_channels_is_refused_with_the_reasons():
    x = keras.Input((5, 8))
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(8, name="d1")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="d2")(h))
    before = [w.copy() for w in model.get_weights()]
    message = (
        r"No channel of model '.*' can be removed \(granularity='filter' follows its channel "
        r"dependency graph\): every channel is fixed \(.*normalized.*; model output\)"
    )
    with pytest.raises(ValueError, match=message):
        tfprune.prune(model, None, granularity="filter")
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Dense", "LayerNormalization", "Dense"
    ]  # fmt: skip
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))


@graph_logic
@pytest.mark.parametrize("activation", ["softmax", "sparsemax"])
def test_channels_a_softmax_mixes_are_kept_without_a_warning(rng, activation):
    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(6, name="h"),
        keras.layers.Dense(6, name="mixed", activation=activation), keras.layers.Dense(2, name="out"),
    ])  # fmt: skip
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = tfprune.thin(pruned)
    assert not [w for w in caught if "softmax" in str(w.message)]
    assert sizes(small) == {"h": 3, "mixed": 6, "out": 2}
    assert_same_outputs(pruned, small, rng.normal(size=(4, 4)).astype("float32"))


@graph_logic
@pytest.mark.parametrize("options", [{}, {"scope": "global"}, {"budget": "flops"}, {"budget": "params"}])
def test_min_sparsity_bounds_a_group_in_every_selection(options):
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(30, 3, name="b")(keras.layers.Conv2D(40, 3, name="a")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(h)))
    model.get_layer("a").kernel.assign(model.get_layer("a").kernel * 10)  # its filters rank first
    pruned = tfprune.prune(model, None, granularity="filter", min_sparsity={"a": 0.9}, **options)
    tfprune.update_masks(pruned, 0.5)
    assert sizes(tfprune.thin(pruned))["a"] == keep_count(40, 0.9)


def test_counts_and_reports_refuse_what_is_not_a_graph_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    for call, argument, value in [
        (lambda: tfprune.count_params(None), "model", "None"),
        (lambda: tfprune.count_flops("model.keras"), "model", "'model.keras'"),
        (lambda: tfprune.thinning_report(None, model), "before", "None"),
        (lambda: tfprune.thinning_report(model, 3), "after", "3"),
    ]:
        with pytest.raises(ValueError, match=f"Argument `{argument}` must be .* Received: {argument}={value}"):
            call()


@graph_logic
def test_a_graph_with_the_add_layer_and_an_add_operation_thins(rng):
    """Keras's `Add` layer and the `Add` operation of `h + 3.0` share a class
    name; rebuilding the graph must not mistake one for the other."""
    x = keras.Input((8,))
    h = keras.layers.Add(name="sum")([keras.layers.Dense(8, name="a")(x), keras.layers.Dense(8, name="b")(x)])
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h + 3.0))
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert sizes(small) == {"a": 4, "b": 4, "out": 2}
    assert_same_outputs(pruned, small, rng.normal(size=(4, 8)).astype("float32"))


@graph_logic
def test_thin_keeps_zero_channels_that_are_still_read(rng):
    """Per-layer filters zero a conv's outputs, but BatchNormalization's shift
    makes them a constant the next conv reads: they stay, and the plan says why."""
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", name="c1")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model(x, keras.layers.Conv2D(3, 3, padding="same", name="c2")(h))
    model.get_layer("bn").beta.assign(np.full(4, 0.5, "float32"))
    pruned = tfprune.prune(model, None, granularity=tfprune.granularity.Filter(), layers=["c1"])
    tfprune.update_masks(pruned, 0.5)
    with pytest.warns(UserWarning, match="thin kept 2 channel"):
        small, plan = tfprune.thin(tfprune.strip_pruning(pruned), return_plan=True)
    assert small.get_layer("c1").filters == 4
    assert len(plan.kept) == 2 and "'c2' reads it" in plan.kept[0]["reason"]
    assert_same_outputs(pruned, small, rng.normal(size=(4, 6, 6, 2)).astype("float32"))


@graph_logic
@pytest.mark.parametrize(
    "combine, kept",
    [
        (lambda h: h + 1.0, 3),  # the zero channel reads 1.0
        (lambda h: keras.ops.add(h, 1.0), 3),
        (lambda h: keras.ops.maximum(h, 0.5), 3),
        (lambda h: h - 1.0, 3),
        (lambda h: keras.ops.minimum(h, -1.0), 3),
        (lambda h: h * 2.0, 2),  # zero still
        (lambda h: h + np.arange(3, dtype="float32"), 3),  # per channel: nothing removable
    ],
)
def test_a_channel_combined_with_a_constant_is_zero_only_if_it_stays_zero(combine, kept):
    x = keras.Input((4,))
    h = keras.layers.Dense(3, activation="relu", name="a")(x)
    model = keras.Model(x, keras.layers.Dense(2, name="b")(combine(h)))
    model.get_layer("a").set_weights([np.array([[1, 0, 1]] * 4, "float32"), np.zeros(3, "float32")])
    model.get_layer("b").set_weights([np.ones((3, 2), "float32"), np.zeros(2, "float32")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "thin kept 1 channel(s) whose producers are zero"
        small = tfprune.thin(model)
    assert small.get_layer("a").units == kept
    assert_same_outputs(model, small, np.ones((1, 4), "float32"))


@graph_logic
def test_a_per_channel_constant_fixes_the_channels_it_is_combined_with():
    x = keras.Input((4,))
    h = keras.layers.Dense(3, name="a")(x) + np.arange(3, dtype="float32")
    model = keras.Model(x, keras.layers.Dense(2, name="b")(h))
    group = [g for g in graph.build(model).groups if "a" in g.producers][0]
    assert not group.prunable and "per-channel constant" in group.reason


@graph_logic
def test_unknown_layer_on_a_coupled_path_is_named_before_anything_changes():
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    x = keras.Input((4,))
    h = Scale(name="my_scale")(keras.layers.Dense(8, name="d1")(x))
    model = keras.Model(x, keras.layers.Dense(2, name="d2")(h))
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"Layer 'my_scale' \(Scale\) reads channels .*'d1'.*register"):
        tfprune.prune(model, None, granularity="filter")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    graph.register(Scale, graph.passthrough)
    try:
        pruned = tfprune.prune(model, None, granularity="filter")
        tfprune.update_masks(pruned, 0.5)
        assert tfprune.thin(pruned).get_layer("d1").units == 4
    finally:
        del graph.RULES[Scale]


@graph_logic
def test_a_blocked_path_says_why_the_rule_cannot_follow_it():
    x = keras.Input((8,))
    h = keras.layers.Reshape((3, 4), name="r")(keras.layers.Dense(12, name="d")(x))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match=r"Layer 'r' \(Reshape\) .* cannot follow them through it "
                       r"\(channels split across axes\)\. Leave"):  # fmt: skip
        tfprune.prune(model, None, granularity="filter")
    a, b = keras.layers.Dense(6, name="a")(x), keras.layers.Dense(6, name="b")(x)
    model = keras.Model(x, keras.layers.Dense(2)(keras.ops.concatenate([a, b], axis=-1)))
    with pytest.raises(ValueError, match=r"Operation '\w+' \(Concatenate\) .* the `keras.ops` operation"):
        tfprune.prune(model, None, granularity="filter")


@graph_logic
def test_bad_plans_are_refused(tmp_path):
    model = zoo()
    with pytest.raises(ValueError, match="Argument `plan` must be"):
        tfprune.apply_plan(model, {"removed": {}})
    with pytest.raises(ValueError, match=r"no such plan file. Received: plan='missing.json'"):
        tfprune.apply_plan(model, "missing.json")
    with pytest.raises(ValueError, match="neither a plan file nor plan JSON"):
        tfprune.apply_plan(model, '{"format": ')
    (tmp_path / "garbled.json").write_text("not json")  # a file that exists: its content is wrong
    with pytest.raises(ValueError, match="neither a plan file nor plan JSON"):
        tfprune.apply_plan(model, str(tmp_path / "garbled.json"))
    plan = {"format": "tfprune.plan", "version": 1, "removed": {"nope": {"out": [0]}}}
    with pytest.raises(ValueError, match="layer 'nope'"):
        tfprune.apply_plan(model, plan)
    partial = {"format": "tfprune.plan", "version": 1, "removed": {"stem": {"out": [0]}}}
    with pytest.raises(ValueError, match="coupled to the removed ones"):
        tfprune.apply_plan(model, partial)  # 'expand' and 'se_expand' share it
    small = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(2, name="out")]
    )
    every = {"format": "tfprune.plan", "version": 1, "removed": {"hidden": {"out": list(range(8))}}}
    with pytest.raises(ValueError, match="every channel of 'hidden'; the group keeps at least one"):
        tfprune.apply_plan(small, every)
    for removed in ({"hidden": [0, 1]}, None, {"hidden": {"out": ["a"]}}):
        with pytest.raises(ValueError, match="Argument `plan` must hold `removed`"):
            tfprune.apply_plan(small, {"format": "tfprune.plan", "version": 1, "removed": removed})


# ------------------------------------------------------- budgets, training
@graph_logic
def test_round_to_and_per_layer_limits(rng):
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(40, 3, name="a")(x)
    h = keras.layers.Conv2D(30, 3, name="b")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    pruned = tfprune.prune(
        model, None, granularity="filter", round_to=np.int64(8), max_sparsity={"b": 0.2}
    )
    tfprune.update_masks(pruned, 0.7)
    # a: 40 * 0.3 = 12 kept, rounded up to 16; b: at most 20% removed: 24
    assert sizes(tfprune.thin(pruned)) == {"a": 16, "b": 24, "out": 2}


@graph_logic
@pytest.mark.parametrize("budget", ["flops", "params"])
def test_a_flops_or_parameter_budget_removes_that_fraction(budget):
    model = zoo()
    pruned = tfprune.prune(model, None, granularity="filter", budget=budget)
    tfprune.update_masks(pruned, 0.4)
    count = tfprune.count_flops if budget == "flops" else tfprune.count_params
    kept = count(tfprune.thin(pruned)) / count(model)
    # at most the target; short of it by less than the costliest unit (removing
    # others only makes a unit cheaper)
    structure = graph.build(model)
    full = structure.count(budget)
    costliest = max(
        full - structure.count(budget, np.arange(structure.size) != u)
        for u in np.flatnonzero(structure.prunable)
    )
    assert 0.6 - costliest / full <= kept <= 0.6, (kept, costliest / full)


@graph_logic
@pytest.mark.parametrize("budget", ["flops", "params"])
def test_a_budget_beyond_reach_removes_every_removable_channel(budget):
    # Input, output and the first layer's inputs stay: 99% cannot be reached.
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, name="a"),
                              keras.layers.Dense(16, name="b"), keras.layers.Dense(2, name="out")])  # fmt: skip
    # a, b keep one unit each: 64+1, 1+1 and 2+2 parameters; 2*64, 2*1 and 2*2 FLOPs
    least = {"params": 71 / 1346, "flops": 134 / 2624}[budget]
    message = f"budget='{budget}' cannot reach sparsity=0.99: .* leaves {least:.1%}"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pruned = tfprune.prune(model, None, granularity="filter", budget=budget)
        tfprune.update_masks(pruned, 0.9)
    assert not [w for w in seen if "cannot reach" in str(w.message)]  # a reachable target
    with pytest.warns(UserWarning, match=message):
        tfprune.update_masks(pruned, 0.99)
    assert sizes(tfprune.thin(pruned)) == {"a": 1, "b": 1, "out": 2}  # each group keeps its best
    schedule = tfprune.ConstantSparsity(0.98, 0)
    with pytest.warns(UserWarning, match="cannot reach the schedule's final sparsity=0.98") as seen:
        tfprune.prune(model, schedule, granularity="filter", budget=budget)
    ours = [w for w in seen if "cannot reach" in str(w.message)]
    assert [w.filename for w in ours] == [__file__]  # the user's line, not the library's


@graph_logic
def test_a_budget_with_round_to_counts_the_rounded_channels():
    model = zoo()
    pruned = tfprune.prune(model, None, granularity="filter", budget="flops", round_to=4)
    tfprune.update_masks(pruned, 0.4)
    small = tfprune.thin(pruned)
    assert tfprune.count_flops(small) / tfprune.count_flops(model) <= 0.6
    for name in ("stem", "reduce", "sep", "tail"):
        assert sizes(small)[name] % 4 == 0, sizes(small)


@pytest.mark.parametrize("criterion", [pytest.param("magnitude", marks=graph_logic), "taylor"])
def test_structured_agp_during_fit_masks_exact_counts_and_thins(rng, criterion):
    model = zoo()
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=64)
    calibrate(model, x)
    schedule = tfprune.PolynomialDecay(0.0, 0.5, begin_step=2, end_step=6, frequency=2)
    pruned = tfprune.prune(model, schedule, granularity="filter", criterion=criterion)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    binding = pruned.get_layer("prune_low_magnitude_stem").pruner.binding
    bias = to_numpy(pruned.get_layer("prune_low_magnitude_stem").pruning_vars[1][1])
    assert int(bias.sum()) == keep_count(16, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x)
    assert sizes(small)["stem"] == 8 and sizes(small)["tail"] == 4
    assert binding.structure.size == graph.build(model).size


@pytest.mark.parametrize("budget", except_on_jax(["channels", "flops"], keep={"flops"}))
def test_cross_layer_budgets_with_limits_run_inside_fit(rng, budget):
    model = zoo()
    x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=16)
    pruned = tfprune.prune(
        model, tfprune.ConstantSparsity(0.5, 0, frequency=1), granularity="filter",
        scope="global", budget=budget, max_sparsity={"stem": 0.25},
    )  # fmt: skip
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x)
    assert sizes(small)["stem"] >= keep_count(16, 0.25)  # the limit held in the compiled step
    assert tfprune.count_params(small) < tfprune.count_params(model)


@graph_logic
def test_coupled_pruning_survives_saving_mid_training(rng, tmp_path):
    model = zoo()
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=32)
    schedule = tfprune.PolynomialDecay(0.0, 0.5, begin_step=1, end_step=8, frequency=1)
    pruned = tfprune.prune(model, schedule, granularity="filter", criterion="movement")
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    path = tmp_path / "half.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    loaded.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    small = tfprune.thin(loaded)
    assert_same_outputs(loaded, small, x)
    assert sizes(small)["stem"] == 8


# ------------------------------------------------- keras.applications (TF)
LOADER = """
import json, sys
import numpy as np, keras
assert "tfprune" not in sys.modules
for path in sys.argv[1:]:
    model = keras.models.load_model(path + ".keras")
    x, y = np.load(path + ".x.npy"), np.load(path + ".y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), y, atol=1e-5, rtol=0)
assert not any(m.startswith("tfprune") for m in sys.modules)
print("ok", len(sys.argv) - 1)
"""


@only_backends("tensorflow", reason="TFLite; the graph is backend-independent (zoo tests)")
def test_keras_applications_thin_to_half_and_load_without_tfprune(rng, tmp_path):
    import tensorflow as tf

    saved = []
    x = rng.normal(loc=100.0, scale=50.0, size=(8, 32, 32, 3)).astype("float32")
    # ResNet50 (residual adds, covered here by the others' and by the zoo) is
    # checked in bench/thinning.py: equal outputs, TFLite, at 30/50/75%.
    for name in ("MobileNetV2", "DenseNet121", "EfficientNetB0"):
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(32, 32, 3), classifier_activation=None
        )
        calibrate(model, x)
        pruned = tfprune.prune(model, None, granularity="filter")
        tfprune.update_masks(pruned, 0.5)
        small = tfprune.thin(pruned)
        y = assert_same_outputs(pruned, small, x)
        assert y.std(axis=0).mean() > 1e-4, name
        assert small.count_params() <= model.count_params() / 2, name
        path = str(tmp_path / name)
        small.save(path + ".keras")
        np.save(path + ".x.npy", x)
        np.save(path + ".y.npy", to_numpy(small(x)))
        saved.append(path)
        if name == "EfficientNetB0":  # (MobileNetV2 and ResNet50: bench/thinning.py)
            content = tf.lite.TFLiteConverter.from_keras_model(small).convert()
            np.testing.assert_allclose(tflite_predict(x, model_content=content), y, atol=1e-4)
        if name == "MobileNetV2":
            flops = tfprune.prune(model, None, granularity="filter", budget="flops")
            tfprune.update_masks(flops, 0.5)
            ratio = tfprune.count_flops(tfprune.thin(flops)) / tfprune.count_flops(model)
            assert abs(ratio - 0.5) <= 0.005, (name, ratio)
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", LOADER, *saved], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "ok 3" in out.stdout, out.stderr[-2000:]


@graph_logic
def test_layers_of_keras_applications_models_thin(rng):
    from keras.src.applications.convnext import ConvNeXt  # the generic builder of ConvNeXtTiny...

    model = ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 24, 32], default_size=32,
                     input_shape=(32, 32, 3), weights=None, classifier_activation=None,
                     layer_scale_init_value=0.5)  # fmt: skip
    x = rng.normal(loc=100.0, scale=50.0, size=(4, 32, 32, 3)).astype("float32")
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x)
    # the 4x expansions lose half; LayerNormalization keeps the residual stream
    assert sizes(small)["convnext_stage_3_block_0_pointwise_conv_1"] == 64
    scales = [layer for layer in small.layers if type(layer).__name__ == "LayerScale"]
    assert [layer.projection_dim for layer in scales] == [8, 16, 24, 32]
    assert tfprune.count_params(small) == small.count_params() < model.count_params()
    # between two convolutions its factors go with the channels
    from keras.src.applications.convnext import LayerScale

    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, name="c1")(inputs)
    h = LayerScale(0.5, 8, name="scale")(h)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c2")(keras.layers.ReLU()(h)))
    model.get_layer("scale").gamma.assign(rng.uniform(0.5, 1.5, size=8).astype("float32"))
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x[:, :8, :8])
    assert small.get_layer("scale").projection_dim == 4 and small.get_layer("c1").filters == 4
    assert tfprune.count_params(small) == small.count_params()
    # InceptionResNetV2's residual `x + scale * r` couples its two inputs as an Add
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer

    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 1, name="a")(inputs)
    r = keras.layers.Conv2D(8, 3, padding="same", name="r")(a)
    h = keras.layers.ReLU()(CustomScaleLayer(0.2, name="residual")([a, r]))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c2")(h))
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, x[:, :8, :8])
    assert small.get_layer("a").filters == small.get_layer("r").filters == 4


@graph_logic
def test_nested_models_thin_inside_and_frozen_ones_keep_their_channels(rng):
    inner_x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="base_conv")(inner_x)
    h = keras.layers.BatchNormalization(name="base_bn")(h)
    base = keras.Model(inner_x, keras.layers.ReLU(name="base_relu")(h), name="base")
    x = keras.Input((8, 8, 3))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(base(x))
    h = keras.layers.Dense(6, activation="relu", name="fc")(h)
    model = keras.Model(x, keras.layers.Dense(2, name="head")(h))
    data = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    calibrate(model, data)
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert_same_outputs(pruned, small, data)
    assert small.get_layer("base").get_layer("base_conv").filters == 4
    assert small.get_layer("fc").units == 3
    base.trainable = False  # a frozen base keeps its channels; the head is pruned
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert small.get_layer("base").get_layer("base_conv").filters == 8
    assert small.get_layer("fc").units == 3


@graph_logic
def test_sizes_leave_out_the_optimizer_state(rng):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64), keras.layers.Dense(2)])
    untrained = thinning.keras_size(model)[0]
    model.compile("adam", "mse")
    x, y = rng.normal(size=(8, 8)), rng.normal(size=(8, 2))
    model.fit(x, y, verbose=0)
    # two Adam moments per weight would add about 2 * 4 * 706 bytes; the compile config stays
    assert untrained <= thinning.keras_size(model)[0] < untrained + 1000
    model.fit(x, y, verbose=0)  # the optimizer is back in place
    assert int(to_numpy(model.optimizer.iterations)) == 2


@graph_logic
def test_a_group_with_every_channel_zero_keeps_one_without_a_warning(rng):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="h"),
                              keras.layers.Dense(2, name="out")])  # fmt: skip
    model.get_layer("h").kernel.assign(np.zeros((4, 6), "float32"))  # e.g. every gate closed
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        small, plan = tfprune.thin(model, return_plan=True)
    assert small.get_layer("h").units == 1
    assert [note["reason"] for note in plan.kept] == [thinning.KEEPS_ONE]
    x = rng.normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(small(x)), to_numpy(model(x)), atol=1e-6)


@graph_logic
def test_a_layer_keeps_a_channel_when_its_group_keeps_others(rng):
    """A concatenation joined to another tensor by a residual add: one group
    of two layers' channels, and one layer's may all go."""
    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(x)
    c = keras.layers.Conv2D(8, 3, padding="same", name="c")(x)
    h = keras.layers.Add()([keras.layers.Concatenate()([a, b]), c])
    model = keras.Model(x, keras.layers.Conv2D(2, 1, name="d")(h))
    model.get_layer("a").kernel.assign(model.get_layer("a").kernel * 0.01)  # a's filters rank last
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    small = tfprune.thin(pruned)
    assert sizes(small)["a"] == 1 and sizes(small)["b"] == 4 and sizes(small)["c"] == 5
    assert_same_outputs(pruned, small, rng.normal(size=(2, 8, 8, 3)).astype("float32"))
    with pytest.raises(ValueError, match=r"removes every channel of layer 'a' \(filters\)"):
        tfprune.apply_plan(model, tfprune.Plan({"a": {"out": [0, 1, 2, 3]}, "c": {"out": [0, 1, 2, 3]}}))
