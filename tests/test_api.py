import keras
import numpy as np
import pytest
from conftest import to_numpy
from helpers import compile_model, data, fit, mlp, wrappers

import tfprune

PARAMS = dict(pruning_schedule=tfprune.ConstantSparsity(0.5, 0, frequency=1))


def test_public_api_names():
    for name in (
        "prune_low_magnitude", "PruneLowMagnitude", "strip_pruning", "prune_scope",
        "UpdatePruningStep", "PruningSummaries", "PruningSchedule", "ConstantSparsity",
        "PolynomialDecay", "ExponentialDecay", "AGP", "PrunableLayer", "PruningPolicy",
        "PruneForLatencyOnXNNPack",
    ):
        assert hasattr(tfprune, name), name


def test_signature_defaults_match_tfmot():
    import inspect

    sig = inspect.signature(tfprune.prune_low_magnitude)
    assert list(sig.parameters) == [
        "to_prune", "pruning_schedule", "block_size", "block_pooling_type",
        "pruning_policy", "sparsity_m_by_n", "kwargs",
    ]
    assert sig.parameters["pruning_schedule"].default.get_config() == {
        "target_sparsity": 0.5, "begin_step": 0, "end_step": -1, "frequency": 100,
    }
    assert sig.parameters["block_size"].default == (1, 1)
    assert sig.parameters["block_pooling_type"].default == "AVG"
    assert sig.parameters["pruning_policy"].default is None
    assert sig.parameters["sparsity_m_by_n"].default is None


def test_prune_a_layer_with_kwargs():
    wrapper = tfprune.prune_low_magnitude(keras.layers.Dense(3), name="custom_name", **PARAMS)
    assert isinstance(wrapper, tfprune.PruneLowMagnitude) and wrapper.name == "custom_name"


def test_prune_a_list_of_layers():
    layers = [keras.layers.Dense(8), keras.layers.Dropout(0.1), keras.layers.Dense(2)]
    pruned = tfprune.prune_low_magnitude(layers, **PARAMS)
    assert [type(layer).__name__ for layer in pruned] == [
        "PruneLowMagnitude", "Dropout", "PruneLowMagnitude",
    ]
    model = compile_model(keras.Sequential([keras.Input((20,)), *pruned]))
    fit(model, *data((20,), n=16))
    assert len(wrappers(model)) == 2


def test_first_layer_with_input_shape_in_sequential():
    model = keras.Sequential(
        [tfprune.prune_low_magnitude(keras.layers.Dense(2, input_shape=(3,)), **PARAMS)]
    )
    assert model.built or model(np.ones((1, 3), "float32")).shape == (1, 2)


def test_bad_to_prune():
    with pytest.raises(ValueError, match="to_prune"):
        tfprune.prune_low_magnitude("not a model")


def test_subclassed_model_is_rejected_with_guidance():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match=r"__init__.*prune_low_magnitude\(keras.layers.Dense\(10\)\)"):
        tfprune.prune_low_magnitude(Net())
    # the suggestion runs as written (`prune` has no default schedule)
    with pytest.raises(ValueError, match=r"tfprune.prune\(keras.layers.Dense\(10\), schedule\)"):
        tfprune.prune(Net(), None)


def test_already_wrapped_layers_are_kept():
    model = keras.Sequential(
        [
            keras.Input((20,)),
            tfprune.prune_low_magnitude(keras.layers.Dense(8), tfprune.ConstantSparsity(0.9, 0)),
            keras.layers.Dense(2),
        ]
    )
    pruned = tfprune.prune_low_magnitude(model, **PARAMS)
    schedules = [w.pruning_schedule.get_config()["target_sparsity"] for w in wrappers(pruned)]
    assert schedules == [0.9, 0.5]


def test_strip_pruning_restores_types_predictions_and_sparse_weights():
    x, y = data((20,), n=32)
    pruned = compile_model(tfprune.prune_low_magnitude(mlp(), **PARAMS))
    fit(pruned, x, y)
    stripped = tfprune.strip_pruning(pruned)
    assert [type(layer).__name__ for layer in stripped.layers] == ["Dense", "Dropout", "Dense"]
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0))
    for layer in (stripped.layers[0], stripped.layers[2]):
        kernel = to_numpy(layer.kernel)
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    assert stripped.layers[0].kernel.constraint is None


def test_strip_pruning_shared_layer_functional():
    shared = keras.layers.Dense(8)
    a, b = keras.Input((8,)), keras.Input((8,))
    model = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
    pruned = compile_model(tfprune.prune_low_magnitude(model, **PARAMS), optimizer="sgd")
    x, _ = data((8,), n=16)
    pruned.compile(optimizer="sgd", loss="mse")
    pruned.fit([x, x], np.zeros((16, 8)), epochs=1, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    assert len(wrappers(pruned)) == 1
    stripped = tfprune.strip_pruning(pruned)
    assert not wrappers(stripped)
    np.testing.assert_array_equal(
        stripped.predict([x, x], verbose=0), pruned.predict([x, x], verbose=0)
    )


def test_strip_pruning_bad_input():
    with pytest.raises(ValueError, match="model"):
        tfprune.strip_pruning("model")


def test_strip_a_single_wrapper():
    wrapper = tfprune.prune_low_magnitude(keras.layers.Dense(2), **PARAMS)
    wrapper.build((None, 4))
    layer = tfprune.strip_pruning(wrapper)
    assert type(layer) is keras.layers.Dense and layer.built
