"""`tfprune.xnnpack.xnnpack_report`: XNNPACK's sparse-inference conditions, per layer."""

import csv
import io
import json

import keras
import numpy as np
import pytest
from conftest import SAME_PATH_ON_JAX
from keras import layers as L

import tfprune
from tfprune.xnnpack import xnnpack_report

STEM = "needs a 3x3 stride-2 Conv2D on 3 input channels after ZeroPadding2D(1), padding 'valid'"


def mobilenet(stem_padding=1, stem_strides=2, channels=3, end=None, between=None):
    """A small MobileNet-v1 of XNNPACK-friendly blocks; arguments break a condition."""
    inputs = keras.Input((16, 16, channels))
    x = L.ZeroPadding2D(stem_padding, name="stem_pad")(inputs)
    x = L.Conv2D(8, 3, strides=stem_strides, use_bias=False, name="conv1")(x)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.ReLU(6.0, name="conv1_relu")(x)
    for i, (filters, strides) in enumerate([(16, 1), (24, 2), (24, 1)], start=1):
        if strides == 2:
            x = L.ZeroPadding2D(1, name=f"pad_{i}")(x)
            x = L.DepthwiseConv2D(3, strides=2, use_bias=False, name=f"dw_{i}")(x)
        else:
            x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw_{i}")(x)
        x = L.ReLU(6.0, name=f"dw_{i}_relu")(x)
        y = L.Conv2D(filters, 1, use_bias=False, name=f"pw_{i}")(x)
        y = L.BatchNormalization(name=f"pw_{i}_bn")(y)
        x = y + x if y.shape == x.shape else y  # a Keras `Add` op node
        x = L.ReLU(6.0, name=f"pw_{i}_relu")(x)
    if between is not None:
        x = between(x)
    x = (end or L.GlobalAveragePooling2D(keepdims=True, name="gap"))(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="mini_mobilenet")


def prune_1x1(model, sparsity=0.8):
    pruned = tfprune.prune_low_magnitude(
        model,
        pruning_schedule=tfprune.ConstantSparsity(sparsity, 0),
        pruning_policy=tfprune.PruneForLatencyOnXNNPack(),
    )
    tfprune.update_masks(pruned)
    return pruned


def failing(report):
    return {c.name: c.problems for c in report.conditions if not c.holds}


def set_zeros(layer, fraction):
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    flat = np.ones(kernel.size, "float32")
    flat[: int(round(fraction * kernel.size))] = 0.0
    layer.kernel.assign(flat.reshape(kernel.shape))


@SAME_PATH_ON_JAX  # the module's doctest runs the report on JAX
def test_mobilenet_qualifies_after_pruning_1x1_convs_to_80_percent():
    model = mobilenet()
    dense = xnnpack_report(model)
    assert failing(dense) == {
        "sparsity": [f"pw_{i}: 1x1 conv with 0.0% zeros, needs > 66.7%" for i in (1, 2, 3)]
    }
    pruned = prune_1x1(model, 0.8)
    for candidate in (pruned, tfprune.strip_pruning(pruned)):  # wrapped and plain
        report = xnnpack_report(candidate)
        assert report.ok
        assert [(c.name, c.holds, c.found) for c in report.conditions] == [
            ("stem", True, "conv1"),
            ("sparsity", True, "80.0% (870 of 1088 weights in 3 convs)"),
            ("end", True, "gap"),
            ("ops", True, "19 nodes checked"),
        ]
        assert [(c["layer"], c["params"], c["zeros"]) for c in report.convs] == [
            ("pw_1", 128, 102), ("pw_2", 384, 307), ("pw_3", 576, 461),
        ]  # fmt: skip
    text = xnnpack_report(pruned).text()
    assert text.splitlines()[0] == "XNNPACK sparse inference for 'mini_mobilenet': yes"
    assert "  [ok] sparsity: " in text and "note: XNNPACK never runs sparse on x86" in text


@SAME_PATH_ON_JAX
def test_sparsity_is_counted_over_all_1x1_convs_together():
    model = mobilenet()
    for name, fraction in (("pw_1", 0.0), ("pw_2", 0.9), ("pw_3", 0.9)):
        set_zeros(model.get_layer(name), fraction)
    # 0 + 346 + 518 zeros of 128 + 384 + 576: 79.4% in total though pw_1 is dense
    assert xnnpack_report(model).ok
    set_zeros(model.get_layer("pw_3"), 0.412)
    report = xnnpack_report(model)
    assert report.condition("sparsity").found == "53.6% (583 of 1088 weights in 3 convs)"
    assert failing(report) == {
        "sparsity": [
            "pw_1: 1x1 conv with 0.0% zeros, needs > 66.7%",
            "pw_3: 1x1 conv with 41.1% zeros, needs > 66.7%",
        ]
    }
    for name in ("pw_1", "pw_2", "pw_3"):  # exactly 2/3 is not enough: XNNPACK needs more
        layer = model.get_layer(name)
        kernel = np.ones(layer.kernel.shape, "float32").reshape(-1)
        kernel[: kernel.size * 2 // 3] = 0.0
        layer.kernel.assign(kernel.reshape(layer.kernel.shape))
    assert not xnnpack_report(model).condition("sparsity").holds


@SAME_PATH_ON_JAX
@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"stem_strides": 1}, f"stem conv1: stride 1; {STEM}"),
        ({"channels": 4}, f"stem conv1: 4 input channels; {STEM}"),
        ({"stem_padding": ((0, 1), (0, 1))}, f"stem conv1: padded ((0, 1), (0, 1)) by 'stem_pad'; {STEM}"),
    ],
)  # fmt: skip
def test_stem_problems(kwargs, problem):
    report = xnnpack_report(mobilenet(**kwargs))
    assert report.condition("stem").problems == [problem]
    assert not report.ok


@SAME_PATH_ON_JAX
def test_stem_with_same_padding_and_a_dense_stem():
    inputs = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", name="conv1")(inputs)
    x = L.Conv2D(8, 1, name="pw")(x)
    report = xnnpack_report(keras.Model(inputs, L.GlobalAveragePooling2D()(x)))
    assert failing(report)["stem"] == [f"stem conv1: padding 'same'; {STEM}"]
    mlp = keras.Sequential([keras.Input((4,)), L.Dense(2, name="d")])
    report = xnnpack_report(mlp)
    assert failing(report) == {
        "stem": ["stem d: Dense, " + STEM],
        "sparsity": ["no 1x1 Conv2D between the stem and the spatial mean"],
        "end": ["output d: no spatial mean before it"],
        "ops": [],
    }
    assert report.condition("ops").found == "not checked: no Conv2D stem"


@SAME_PATH_ON_JAX
def test_end_problems():
    report = xnnpack_report(mobilenet(end=L.Flatten(name="flat")))
    assert failing(report) == {
        "sparsity": [f"pw_{i}: 1x1 conv with 0.0% zeros, needs > 66.7%" for i in (1, 2, 3)],
        "end": [
            "output logits: spatial axes removed by Flatten 'flat', needs GlobalAveragePooling2D"
        ],
        "ops": [
            "flat: Flatten between the stem and the spatial mean is not supported",
            "flatten: Flatten between the stem and the spatial mean is not supported",
            "logits: Dense between the stem and the spatial mean is not supported",
        ],
    }
    report = xnnpack_report(mobilenet(end=L.GlobalMaxPooling2D(keepdims=True, name="gmp")))
    assert report.condition("end").problems == [
        "output logits: spatial axes removed by Flatten 'flatten', needs GlobalAveragePooling2D"
    ]
    assert report.condition("ops").problems[0] == (
        "gmp: GlobalMaxPooling2D between the stem and the spatial mean is not supported"
    )


@SAME_PATH_ON_JAX
@pytest.mark.parametrize(
    "between, problem",
    [
        (lambda x: L.Conv2D(24, 3, padding="same", name="c3")(x),
         "c3: 3x3 Conv2D, needs 1x1 convs with stride 1 (no dilation or groups)"),
        (lambda x: L.Conv2D(24, 1, strides=2, name="c1s2")(x),
         "c1s2: 1x1 Conv2D stride 2, needs 1x1 convs with stride 1 (no dilation or groups)"),
        (lambda x: L.DepthwiseConv2D(3, strides=2, padding="same", name="dws")(x),
         "dws: 3x3 stride-2 DepthwiseConv2D with padding 'same' at stride 2, needs 1 on each "
         "side (ZeroPadding2D(1) then 'valid', or 'same' at stride 1)"),
        (lambda x: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dwm")(x),
         "dwm: DepthwiseConv2D with depth_multiplier 2, needs 1"),
        (lambda x: L.DepthwiseConv2D(7, padding="same", name="dw7")(x),
         "dw7: 7x7 stride-1 DepthwiseConv2D, needs 3x3 or 5x5, stride 1 or 2"),
        (lambda x: L.Activation("gelu", name="act")(x),
         "act: activation 'gelu', needs relu, relu6, leaky_relu, elu or sigmoid"),
        (lambda x: L.Conv2D(24, 1, activation="tanh", name="pwt")(x),
         "pwt: fused activation 'tanh' is not run in NCHW by XNNPACK"),
        (lambda x: L.UpSampling2D(name="up")(x), "up: UpSampling2D 'nearest', needs 'bilinear'"),
        (lambda x: L.Subtract(name="sub")([x, L.Conv2D(24, 1, name="pw_s")(x)]),
         "sub: subtraction (XNNPACK's NCHW subgraph has ADD and MUL, not SUB)"),
        (lambda x: L.Reshape((8, 2, 24), name="reshape")(x),
         "reshape: Reshape between the stem and the spatial mean is not supported"),
    ],
)  # fmt: skip
def test_ops_problems(between, problem):
    report = xnnpack_report(mobilenet(between=between))
    assert report.condition("ops").problems == [problem]
    assert not report.ok


@SAME_PATH_ON_JAX
def test_supported_ops_between_and_an_output_inside_the_subgraph():
    def between(x):
        x = L.UpSampling2D(interpolation="bilinear")(x)
        x = L.Multiply()([x, L.Activation("sigmoid")(x)])
        x = L.BatchNormalization()(x * 2.0)
        return L.LeakyReLU()(L.Dropout(0.1)(x))

    assert xnnpack_report(prune_1x1(mobilenet(between=between))).ok
    model = prune_1x1(mobilenet())
    inner = tfprune.strip_pruning(model)
    two = keras.Model(inner.inputs, [inner.outputs[0], inner.get_layer("pw_2_relu").output])
    assert failing(xnnpack_report(two)) == {
        "end": ["output pw_2_relu: no spatial mean before it"],
        "ops": [
            "pw_2_relu: a model output inside the sparse subgraph (its tensors must stay inside)"
        ],
    }


@SAME_PATH_ON_JAX
def test_formats_and_invalid_models():
    report = xnnpack_report(mobilenet(stem_strides=1))
    data = json.loads(report.format("json"))
    assert data["ok"] is False and data == report.to_dict()
    assert [c["name"] for c in data["conditions"]] == ["stem", "sparsity", "end", "ops"]
    rows = list(csv.reader(io.StringIO(report.format("csv"))))
    assert rows[:2] == [
        ["condition", "holds", "problem"],
        ["stem", "False", f"stem conv1: stride 1; {STEM}"],
    ]
    assert str(report) == report.format("table") == report.text()
    with pytest.raises(ValueError, match="fmt"):
        report.format("xml")

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Sequential or Functional"):
        xnnpack_report(Sub())
