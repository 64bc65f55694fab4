import keras
import numpy as np
import pytest

import tfprune
from tfprune import layers as layer_specs


def _built(layer, shape):
    layer.build(shape)
    return layer


def _paths(layer):
    return [spec.path for _, spec in layer_specs.prunable_weights(layer)]


def test_every_spec_resolves_on_built_layers():
    for layer, shape in [
        (keras.layers.Dense(3), (None, 4)),
        (keras.layers.LSTM(3), (None, 5, 4)),
        (keras.layers.Conv2DTranspose(3, 2), (None, 6, 6, 4)),
        (keras.layers.EinsumDense("btd,ndh->btnh", (None, 2, 3)), (None, 5, 4)),
    ]:
        _built(layer, shape)
        for variable, spec in layer_specs.prunable_weights(layer):
            assert isinstance(variable, keras.Variable)
            rank = len(variable.shape)
            for axis in (spec.in_axis, spec.out_axis):
                assert axis is None or -rank <= axis < rank


def test_channel_axes():
    layer = _built(keras.layers.Conv2DTranspose(5, 2), (None, 6, 6, 3))
    (variable, spec), = layer_specs.prunable_weights(layer)
    assert variable.shape[spec.out_axis] == 5 and variable.shape[spec.in_axis] == 3


@pytest.mark.parametrize(
    "equation, output_shape, input_shape, axes",
    [
        ("ab,bc->ac", (7,), (None, 4), (0, 1)),  # a Dense
        ("btd,ndh->btnh", (5, 2, 3), (None, 5, 6), (1, 2)),  # per-head query projection
        ("btnh,nhd->btd", (5, 6), (None, 5, 2, 3), (1, 2)),  # attention output
    ],
)
def test_einsum_dense_axes_come_from_the_equation(equation, output_shape, input_shape, axes):
    layer = _built(keras.layers.EinsumDense(equation, output_shape), input_shape)
    (_, spec), = layer_specs.prunable_weights(layer)
    assert (spec.in_axis, spec.out_axis) == axes


def test_recurrent_and_composite_layers_prune_their_sublayers_kernels():
    assert _paths(_built(keras.layers.GRU(2), (None, 3, 4))) == [
        "gru_cell/kernel", "gru_cell/recurrent_kernel",
    ]
    bi = _built(keras.layers.Bidirectional(keras.layers.LSTM(2, name="l")), (None, 3, 4))
    assert _paths(bi) == [
        "forward_l/lstm_cell/kernel", "forward_l/lstm_cell/recurrent_kernel",
        "backward_l/lstm_cell/kernel", "backward_l/lstm_cell/recurrent_kernel",
    ]
    td = _built(keras.layers.TimeDistributed(keras.layers.Dense(3, name="fc")), (None, 2, 4))
    assert _paths(td) == ["fc/kernel"]


def test_weightless_and_vector_only_layers_have_nothing_to_prune():
    for layer, shape in [
        (keras.layers.RandomFlip(), (None, 8, 8, 3)),
        (keras.layers.RMSNormalization(), (None, 4)),
        (keras.layers.BatchNormalization(), (None, 4)),
        (keras.layers.Attention(use_scale=True), [(None, 2, 4), (None, 2, 4)]),
        (keras.layers.DepthwiseConv2D(3), (None, 8, 8, 3)),
    ]:
        layer.build(shape)
        assert not layer_specs.has_prunable_weights(layer), layer.name
        assert layer_specs.uninterpretable_weights(layer) == {}
    assert not layer_specs.has_prunable_weights(keras.layers.Dropout(0.5))


class Table(keras.layers.Layer):
    def build(self, input_shape):
        self.table = self.add_weight(shape=(input_shape[-1], 3), name="table")
        self.scale = self.add_weight(shape=(3,), name="scale")

    def call(self, x):
        return x @ self.table * self.scale


def test_unknown_layer_with_a_matrix_is_uninterpretable_and_named():
    layer = _built(Table(name="lookup_table"), (None, 4))
    assert layer_specs.uninterpretable_weights(layer) == {("lookup_table", "Table"): ["table"]}
    with pytest.raises(ValueError, match=r"lookup_table' of type Table: weights \['table'\]"):
        layer_specs.check_interpretable([layer])


def test_register_describes_a_library_layer_type():
    class Registered(Table):
        pass

    layer_specs.register(Registered, (layer_specs.WeightSpec("table", 0, 1),))
    layer = _built(Registered(), (None, 4))
    assert _paths(layer) == ["table"]
    with pytest.raises(TypeError, match="layer_class"):
        layer_specs.register(object, ())
    with pytest.raises(TypeError, match="specs"):
        layer_specs.register(Registered, ("table",))


def test_get_prunable_weights_is_added_to_wrapped_builtin_layers():
    wrapper = tfprune.prune_low_magnitude(keras.layers.LSTM(2))
    assert callable(wrapper.layer.get_prunable_weights)  # at wrap time, as TFMOT
    wrapper.build((None, 3, 4))
    cell = wrapper.layer.cell
    assert [v.path for v in wrapper.layer.get_prunable_weights()] == [
        cell.kernel.path, cell.recurrent_kernel.path,
    ]
    assert wrapper.prunable_weights == wrapper.layer.get_prunable_weights()


def test_prunable_layer_must_return_variables():
    class Bad(keras.layers.Layer, tfprune.PrunableLayer):
        def get_prunable_weights(self):
            return ["kernel"]

    with pytest.raises(TypeError, match="get_prunable_weights"):
        layer_specs.prunable_weights(Bad())


def test_shared_weight_is_pruned_once():
    class Tied(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.a = keras.layers.Dense(4, name="a")
            self.b = self.a  # the same layer under two names

        def call(self, x):
            return self.b(self.a(x))

    layer = Tied()
    layer(np.ones((1, 4), "float32"))
    assert _paths(layer) == ["a/kernel"]
