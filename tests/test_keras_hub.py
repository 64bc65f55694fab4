"""KerasHub backbones built from small configs (random weights, no downloads).

A backbone keeps its class when pruned: every `Dense`, `EinsumDense` and
`Embedding` inside its transformer blocks and embeddings is pruned where it
is. Its config describes the unpruned backbone, so training resumes by
pruning a freshly built backbone and loading the pruned weights.
"""

import keras
import numpy as np
import pytest
from conftest import SAME_PATH_ON_JAX, except_on_jax, to_numpy
from helpers import assert_exact_sparsity, assert_same_predictions, keep_count, step_of, wrappers

import tfprune

keras_hub = pytest.importorskip("keras_hub")

SEQUENCE = 8
SMALL = dict(vocabulary_size=40, num_layers=2, hidden_dim=8, intermediate_dim=16)
BACKBONES = {
    "bert": lambda: keras_hub.models.BertBackbone(
        num_heads=2, max_sequence_length=SEQUENCE, **SMALL
    ),
    "gpt2": lambda: keras_hub.models.GPT2Backbone(
        num_heads=2, max_sequence_length=SEQUENCE, **SMALL
    ),
    "llama": lambda: keras_hub.models.LlamaBackbone(
        num_query_heads=2, num_key_value_heads=1, **SMALL
    ),
    "gemma": lambda: keras_hub.models.GemmaBackbone(
        num_query_heads=2, num_key_value_heads=1, head_dim=4, **SMALL
    ),
}
PRUNED_TYPES = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


def _inputs(backbone, n=4, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {}
    for name in backbone.input:
        if name == "token_ids":
            inputs[name] = rng.integers(1, 40, size=(n, SEQUENCE)).astype("int32")
        elif name == "segment_ids":
            inputs[name] = np.zeros((n, SEQUENCE), "int32")
        else:
            inputs[name] = np.ones((n, SEQUENCE), "int32")
    return inputs


def _sequence_output(outputs):
    return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


def _train(backbone, inputs, steps=2):
    """A regression head on the backbone's sequence output, trained `steps` steps."""
    x = {name: keras.Input((SEQUENCE,), dtype="int32", name=name) for name in inputs}
    features = keras.layers.GlobalAveragePooling1D()(_sequence_output(backbone(x)))
    head = keras.Model(x, keras.layers.Dense(1)(features))
    head.compile("sgd", "mse")
    n = len(next(iter(inputs.values())))
    head.fit(inputs, np.zeros((n, 1)), batch_size=n // steps, verbose=0,
             callbacks=[tfprune.UpdatePruningStep()])


def _leaf_kernels(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, PRUNED_TYPES) and not isinstance(layer, tfprune.PruneLowMagnitude)
    ]


@pytest.mark.parametrize("name", except_on_jax(sorted(BACKBONES), keep=("bert",)))
def test_backbone_is_pruned_where_its_layers_are(name, tmp_path):
    backbone = BACKBONES[name]()
    inputs = _inputs(backbone)
    schedule = tfprune.ConstantSparsity(0.5, 0, frequency=1)
    pruned = tfprune.prune_low_magnitude(backbone, pruning_schedule=schedule)
    assert type(pruned) is type(backbone) and pruned is not backbone
    assert not pruned.compiled

    masked = {id(v) for w in wrappers(pruned) for v in w.prunable_weights}
    kernels = _leaf_kernels(pruned)
    assert kernels and all(
        id(getattr(layer, "_kernel", getattr(layer, "_embeddings", None))) in masked
        for layer in kernels
    )
    _train(pruned, inputs)
    for wrapper in wrappers(pruned):
        assert step_of(wrapper) == 2
        assert_exact_sparsity(wrapper, 0.5)

    stripped = tfprune.strip_pruning(pruned)
    assert type(stripped) is type(backbone) and not wrappers(stripped)
    assert stripped.get_config() == backbone.get_config()
    expected = _sequence_output(pruned.predict(inputs, verbose=0))
    assert_same_predictions(_sequence_output(stripped.predict(inputs, verbose=0)), expected)

    # The finished model saves and loads as a plain backbone.
    stripped.save(tmp_path / "stripped.keras")
    restored = keras.models.load_model(tmp_path / "stripped.keras")
    np.testing.assert_allclose(
        _sequence_output(restored.predict(inputs, verbose=0)), expected, rtol=1e-6, atol=1e-6
    )


@SAME_PATH_ON_JAX
def test_resume_mid_schedule_by_pruning_a_fresh_backbone_and_loading_weights(tmp_path):
    backbone = BACKBONES["bert"]()
    inputs = _inputs(backbone, n=4)
    schedule = tfprune.PolynomialDecay(0.2, 0.6, begin_step=0, end_step=4, frequency=1)
    pruned = tfprune.prune_low_magnitude(backbone, pruning_schedule=schedule)
    _train(pruned, inputs)  # steps 1, 2
    path = tmp_path / "pruned.weights.h5"
    pruned.save_weights(path)

    resumed = tfprune.prune_low_magnitude(
        type(backbone).from_config(backbone.get_config()), pruning_schedule=schedule
    )
    resumed.load_weights(path)
    for a, b in zip(wrappers(pruned), wrappers(resumed)):
        assert step_of(b) == step_of(a) == 2
        for (_, mask_a, _), (_, mask_b, _) in zip(a.pruning_vars, b.pruning_vars):
            np.testing.assert_array_equal(to_numpy(mask_a), to_numpy(mask_b))
    _train(resumed, inputs)  # steps 3, 4: the schedule goes on to 0.6
    for wrapper in wrappers(resumed):
        assert step_of(wrapper) == 4
        assert_exact_sparsity(wrapper, 0.6)


@SAME_PATH_ON_JAX
def test_task_model_keeps_its_class():
    # A KerasHub task's fit runs its input pipeline with tf.data (or grain).
    pytest.importorskip("tensorflow")
    backbone = BACKBONES["bert"]()
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    pruned = tfprune.prune_low_magnitude(task, tfprune.ConstantSparsity(0.5, 0, frequency=1))
    assert type(pruned) is type(task)
    assert type(pruned.backbone) is type(backbone) and pruned.backbone is not backbone
    inputs = _inputs(backbone)
    pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(inputs, np.array([0, 1, 0, 1]), batch_size=2, verbose=0,
               callbacks=[tfprune.UpdatePruningStep()])
    for wrapper in wrappers(pruned):
        assert_exact_sparsity(wrapper, 0.5)
    stripped = tfprune.strip_pruning(pruned)
    assert type(stripped) is type(task)
    assert_same_predictions(stripped.predict(inputs, verbose=0), pruned.predict(inputs, verbose=0))


def test_task_model_filters_and_sensitivity_rows():
    backbone = BACKBONES["bert"]()
    task = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    pruned = tfprune.prune(task, None, granularity="filter")  # a graph rebuilt around the backbone
    assert {w.layer.name for w in wrappers(pruned)} == {"pooled_dense", "logits"}
    tfprune.update_masks(pruned, 0.5)
    kernel = to_numpy(pruned.backbone.get_layer("prune_low_magnitude_pooled_dense").layer.kernel)
    assert (np.abs(kernel).sum(axis=0) == 0).sum() == kernel.shape[1] // 2  # whole filters
    inputs = _inputs(backbone)
    result = tfprune.sensitivity(task, inputs, np.array([0, 1, 0, 1]), sparsities=(0.5,), verbose=0)
    assert sorted(result.layers) == sorted(unit.name for unit in tfprune.layers.prunable_units(task))
    assert "bert_backbone" not in result.layers  # its layers are the rows, each weight once
    assert sum(result.parameters.values()) <= sum(int(np.prod(v.shape)) for v in task.trainable_weights)


def test_keras_hub_layers_in_a_users_model(tmp_path):
    tokens = keras.Input((SEQUENCE,), dtype="int32")
    h = keras_hub.layers.TokenAndPositionEmbedding(40, SEQUENCE, 8)(tokens)
    h = keras_hub.layers.TransformerEncoder(16, 2)(h)
    h = keras_hub.layers.TransformerDecoder(16, 2)(h)
    model = keras.Model(tokens, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h)))
    pruned = tfprune.prune_low_magnitude(model, tfprune.ConstantSparsity(0.5, 0, frequency=1))
    # token embedding (not the position table); q, k, v, o and two feed-forward
    # kernels in each block; the head
    assert sum(len(w.pruning_vars) for w in wrappers(pruned)) == 1 + 6 + 6 + 1
    x = np.random.default_rng(0).integers(1, 40, size=(4, SEQUENCE)).astype("int32")
    pruned.compile("sgd", "mse")
    pruned.fit(x, np.zeros((4, 1)), batch_size=2, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    for wrapper in wrappers(pruned):
        assert_exact_sparsity(wrapper, 0.5)
    expected = pruned.predict(x, verbose=0)
    stripped = tfprune.strip_pruning(pruned)
    # KerasHub's TransformerDecoder.from_config builds the layer with both of its
    # shapes, so compare with the model after its own config round trip.
    reloaded = keras.Model.from_config(model.get_config())
    assert stripped.get_config() == reloaded.get_config()
    assert_same_predictions(stripped.predict(x, verbose=0), expected)
    pruned.save(tmp_path / "pruned.keras")
    assert_same_predictions(keras.models.load_model(tmp_path / "pruned.keras").predict(x, verbose=0), expected)


@pytest.mark.parametrize("scope", ["global", "erk"])
@pytest.mark.parametrize("name", except_on_jax(["bert", "llama"], keep=("llama",)))
def test_engine_scopes_over_a_backbone(name, scope):
    backbone = BACKBONES[name]()
    inputs = _inputs(backbone)
    target = 0.8
    pruned = tfprune.prune(backbone, tfprune.ConstantSparsity(target, 0, frequency=1), scope=scope)
    assert type(pruned) is type(backbone)
    assert len({id(w.pruner) for w in wrappers(pruned)}) == 1
    _train(pruned, inputs, steps=1)
    masks = [to_numpy(m) for w in wrappers(pruned) for _, m, _ in w.pruning_vars]
    total, kept = sum(m.size for m in masks), sum(int(m.sum()) for m in masks)
    per_weight = [1 - m.mean() for m in masks]
    if scope == "global":
        assert kept == keep_count(total, target)
    else:  # ERK: the budgets sum to the target up to rounding per weight
        assert abs(kept - (1 - target) * total) <= len(masks)
    assert max(per_weight) - min(per_weight) > 0.1  # budgets differ between weights


@SAME_PATH_ON_JAX
def test_a_regularized_backbone_keeps_its_penalties_when_pruned_and_stripped():
    """A backbone's config does not hold its inner layers' regularizers: the
    copies that pruning and stripping make carry them over, weight by weight."""
    backbone = BACKBONES["bert"]()
    tfprune.regularize(backbone, tfprune.regularizers.L1(0.01))
    expected = sorted(float(to_numpy(loss)) for loss in backbone.losses)
    pruned = tfprune.prune_low_magnitude(backbone, tfprune.ConstantSparsity(0.0, 0))
    for model in (pruned, tfprune.strip_pruning(pruned)):
        got = sorted(float(to_numpy(loss)) for loss in model.losses)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_head_granularity_on_a_bert_backbone():
    backbone = BACKBONES["bert"]()
    pruned = tfprune.prune(backbone, None, granularity="head")
    tfprune.update_masks(pruned, 0.5)
    blocks = wrappers(pruned)
    assert len(blocks) == 2  # one per transformer block (its attention's heads)
    for block in blocks:
        bias = [to_numpy(m) for (_, m, _), s in zip(block.pruning_vars, block._specs)
                if s.path.endswith("_query_dense.bias")][0]
        assert bias.all(axis=1).tolist().count(True) == 1  # 1 of 2 heads kept


@SAME_PATH_ON_JAX
def test_a_recipe_names_a_backbones_blocks():
    from tfprune import recipes

    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=16,
    )  # fmt: skip
    schedule = {"type": "constant", "target_sparsity": 0.5, "begin_step": 0, "frequency": 1}
    one = recipes.Recipe.from_config(
        {"pruners": {"blocks": {"layers": ["transformer_layer_\\d"], "schedule": schedule}}}
    )
    pruned = one.apply(backbone, steps_per_epoch=10)
    assert sorted(w.layer.name for w in wrappers(pruned)) == ["transformer_layer_0",
                                                              "transformer_layer_1"]  # fmt: skip
    two = recipes.Recipe.from_config({"pruners": {
        "first": {"layers": ["transformer_layer_0"], "schedule": schedule},
        "second": {"layers": ["transformer_layer_1"], "schedule": schedule},
    }})  # fmt: skip
    with pytest.raises(recipes.RecipeError, match=r"^recipe: pruners.second: Model "
                       rf"'{backbone.name}' \(GPT2Backbone\) is copied from its constructor's "
                       r"arguments, which cannot hold the pruning wrappers it has"):  # fmt: skip
        two.apply(backbone, steps_per_epoch=10)
    pruned = tfprune.prune(backbone, None, layers=["token_embedding"])  # by hand: the same
    with pytest.raises(ValueError, match=r"prune all its layers in one call"):
        tfprune.prune(pruned, None, layers=["transformer_layer_0"])
    # a new model on the pruned backbone's tensors (transfer learning)
    head = keras.Model(pruned.input, keras.layers.Dense(2)(pruned.output))
    assert len(wrappers(head)) == 1
    inputs = _inputs(backbone)
    np.testing.assert_allclose(
        to_numpy(head.layers[-1](pruned(inputs))), to_numpy(head(inputs)), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(recipes.RecipeError, match=r"'query' matches no layer with prunable "
                       r"weights \(they are: token_embedding, transformer_layer_0, "):  # fmt: skip
        recipes.Recipe.from_config(
            {"pruners": {"q": {"layers": ["query"], "schedule": schedule}}}
        ).apply(backbone)
