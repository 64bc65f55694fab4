import keras
import pytest

import tfprune
from tfprune import layers as layer_specs


def test_every_spec_resolves_on_built_layers():
    built = {
        keras.layers.Dense: lambda: keras.layers.Dense(3),
        keras.layers.LSTM: lambda: keras.layers.LSTM(3),
        keras.layers.Conv2DTranspose: lambda: keras.layers.Conv2DTranspose(3, 2),
    }
    shapes = {
        keras.layers.Dense: (None, 4),
        keras.layers.LSTM: (None, 5, 4),
        keras.layers.Conv2DTranspose: (None, 6, 6, 4),
    }
    for cls, make in built.items():
        layer = make()
        layer.build(shapes[cls])
        for variable, spec in layer_specs.prunable_weights(layer):
            assert isinstance(variable, keras.Variable)
            rank = len(variable.shape)
            for axis in (spec.in_axis, spec.out_axis):
                assert axis is None or -rank <= axis < rank


def test_channel_axes():
    layer = keras.layers.Conv2DTranspose(5, 2)
    layer.build((None, 6, 6, 3))
    (variable, spec), = layer_specs.prunable_weights(layer)
    assert variable.shape[spec.out_axis] == 5 and variable.shape[spec.in_axis] == 3


def test_is_supported_and_nothing_to_prune():
    assert layer_specs.is_supported(keras.layers.GRU(2))
    assert layer_specs.describe(keras.layers.GlobalAveragePooling2D()) == ()
    assert not layer_specs.has_prunable_weights(keras.layers.Dropout(0.5))

    class Odd(keras.layers.Layer):
        pass

    assert not layer_specs.is_supported(Odd())


def test_prunable_layer_must_return_variables():
    class Bad(keras.layers.Layer, tfprune.PrunableLayer):
        def get_prunable_weights(self):
            return ["kernel"]

    with pytest.raises(TypeError, match="get_prunable_weights"):
        layer_specs.prunable_weights(Bad())
