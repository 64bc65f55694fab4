"""Recipes: the format, its checks, the shipped examples, and `tfprune prune`."""

import json
import pathlib

import keras
import numpy as np
import pytest
from conftest import only_backends

import tfprune
from tfprune import demo, l0, recipes
from tfprune.wrapper import collect_prunable_layers

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples" / "recipes"
RECIPES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))

pytestmark = only_backends(
    "tensorflow", "torch", reason="backend-independent plumbing; the engine's numbers are "
    "tested on every backend elsewhere"
)


def _pruners(model):
    return {w.layer.name: w.pruner for w in collect_prunable_layers(model)}


def _schedule(pruner):
    return pruner.pruning_schedule.get_config()


def test_every_shipped_recipe_applies_to_the_digits_cnn():
    assert [p.name for p in RECIPES] == [
        "agp_90.yaml", "filters_thin.yaml", "l0_gates.json", "mixed.yaml"
    ]
    model = demo.build_cnn()
    before = [w.copy() for w in model.get_weights()]
    loaded = {p.name: recipes.load(str(p)) for p in RECIPES}
    applied = {name: recipe.apply(model, steps_per_epoch=45) for name, recipe in loaded.items()}
    (window,) = [c for c in loaded["mixed.yaml"].callbacks(45) if hasattr(c, "begin_step")]
    assert (window.begin_step, window.end_step) == (45, -1)
    # agp_90: every layer, AGP over epochs 0..3 of 45 steps
    agp = _pruners(applied["agp_90.yaml"])
    assert sorted(agp) == ["conv1", "conv2", "dense1", "logits"]
    assert {(k, _schedule(agp["conv1"])[k]) for k in ("begin_step", "end_step", "frequency")} == {
        ("begin_step", 0), ("end_step", 135), ("frequency", 10)
    }
    # filters_thin: conv1's filters and conv2, which reads them
    filters = _pruners(applied["filters_thin.yaml"])
    assert sorted(filters) == ["conv1", "conv2"]
    assert type(filters["conv1"].granularity).__name__ == "Coupled"
    # mixed: two pruners and an L1 on the classifier
    mixed = applied["mixed.yaml"]
    pruners = _pruners(mixed)
    assert pruners["conv1"] is pruners["conv2"] and pruners["conv1"] is not pruners["dense1"]
    assert type(pruners["conv1"].scope).__name__ == "Global"
    assert (pruners["dense1"].granularity.m, pruners["dense1"].granularity.n) == (2, 4)
    assert _schedule(pruners["conv1"])["end_step"] == 90
    logits = next(layer for layer in mixed._flatten_layers() if layer.name == "logits")
    assert logits.kernel.regularizer.get_config() == {"strength": 0.1}
    # l0: gates, no wrappers
    assert len(l0.gates_of(applied["l0_gates.json"])) == 3
    # the input model is left as it was
    assert not collect_prunable_layers(model) and not l0.gates_of(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.get_layer("logits").kernel.regularizer is None


def test_epochs_become_steps():
    schedule = recipes.schedule_from_config(
        {"type": "polynomial", "initial_sparsity": 0.1, "final_sparsity": 0.7,
         "begin_epoch": 1, "end_epoch": 3, "frequency_epochs": 0.5}, steps_per_epoch=10
    )  # fmt: skip
    assert schedule.get_config() == tfprune.PolynomialDecay(0.1, 0.7, 10, 30, frequency=5).get_config()


def test_a_schedule_in_epochs_whose_frequency_outlasts_its_window_is_refused():
    """Two epochs of 44 steps with TFMOT's default frequency of 100 steps: the
    masks would update at the window's first step only (at the initial
    sparsity), so the run would end dense."""
    config = {"type": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.5,
              "begin_epoch": 0, "end_epoch": 2}  # fmt: skip
    with pytest.raises(recipes.RecipeError, match=r"`frequency` \(100 steps\) is longer than the pruning window, steps 0 to 88"):
        recipes.schedule_from_config(config, steps_per_epoch=44)
    schedule = recipes.schedule_from_config({**config, "frequency": 11}, steps_per_epoch=44)
    assert schedule.get_config()["end_step"] == 88
    one_off = {"type": "constant", "target_sparsity": 0.5, "begin_step": 5, "end_step": 50}
    assert recipes.schedule_from_config(one_off).get_config()["frequency"] == 100  # prunes once


def test_negative_epochs_are_refused_and_an_end_epoch_of_minus_one_never_ends():
    config = {"type": "constant", "target_sparsity": 0.5, "begin_epoch": 0, "end_epoch": -1}
    schedule = recipes.schedule_from_config(config, steps_per_epoch=50)
    assert schedule.get_config() == tfprune.ConstantSparsity(0.5, 0, -1).get_config()
    for key in ("begin_epoch", "end_epoch"):
        with pytest.raises(recipes.RecipeError, match=f"`{key}` must be >= 0. Received: {key}=-3"):
            recipes.schedule_from_config({**config, key: -3}, steps_per_epoch=50)


def test_proximal_must_be_a_boolean():
    config = {"regularizers": {"a": {"type": "l1", "layers": ["d"], "proximal": "false"}}}
    with pytest.raises(recipes.RecipeError, match=r"regularizers.a: `proximal` must be true or false. Received: proximal='false'"):
        recipes.Recipe.from_config(config)


def test_a_model_with_two_outputs_counts_its_steps_from_the_samples():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, name="d")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1, name="a")(h), keras.layers.Dense(1, name="b")(h)])
    model.compile("adam", ["mse", "mse"])
    rng = np.random.default_rng(0)
    x, y = rng.random((320, 4), "float32"), [rng.random((320, 1)), rng.random((320, 1))]
    recipe = recipes.Recipe.from_config({
        "pruners": {"p": {"layers": ["d"], "schedule": {
            "type": "polynomial", "initial_sparsity": 0.0, "final_sparsity": 0.5,
            "begin_epoch": 0, "end_epoch": 2, "frequency_epochs": 1}}},
        "training": {"epochs": 1, "batch_size": 32},
    })  # fmt: skip
    seen, apply = [], recipe.apply
    recipe.apply = lambda model, steps_per_epoch: seen.append(steps_per_epoch) or apply(model, steps_per_epoch)
    recipe.run(model, x, y, verbose=0)
    assert seen == [10]  # 320 samples in batches of 32


def test_compile_like_inherits_a_dict_loss_its_weights_and_metrics():
    inputs = keras.Input((4,))
    h = keras.layers.Dense(8, name="d")(inputs)
    model = keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(h), "b": keras.layers.Dense(1, name="b")(h)})
    model.compile(
        "sgd", loss={"a": "mse", "b": keras.losses.MeanAbsoluteError()},
        loss_weights={"a": 1.0, "b": 0.0}, metrics={"a": [keras.metrics.MeanAbsoluteError(name="err")]},
    )  # fmt: skip
    recipe = recipes.Recipe.from_config({
        "pruners": {"p": {"layers": ["d"], "schedule": SCHEDULE}}, "training": {"epochs": 2},
    })  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.random((64, 4), "float32")
    y = {"a": rng.random((64, 1), "float32"), "b": rng.random((64, 1), "float32")}
    _, history = recipe.run(model, x, y, verbose=0)
    assert {"a_err", "a_loss", "b_loss", "loss"} <= set(history.history)
    # loss weights inherited: the total is the first output's loss alone
    assert history.history["loss"][-1] == pytest.approx(history.history["a_loss"][-1], rel=1e-5)
    assert history.history["b_loss"][-1] > 0
    pruned = recipe.apply(model, 2)
    recipe.compile(pruned, like=model)
    assert pruned.loss["a"] == "mse" and pruned.loss["b"] is not model.loss["b"]  # fresh objects
    recipe.training["metrics"] = ["mse"]  # the recipe's own metrics win
    recipe.compile(pruned, like=model)
    assert pruned.get_compile_config()["metrics"] == ["mse"]


def _model():
    return keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, name="h1"), keras.layers.Dense(8, name="h2"),
        keras.layers.Dense(3, name="out"),
    ])  # fmt: skip


SCHEDULE = {"type": "constant", "target_sparsity": 0.5, "begin_step": 0, "frequency": 1}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"pruners": {"p": {"schedule": SCHEDULE}}, "epochs": 3},
         "recipe: unknown key 'epochs' (allowed: version, pruners, regularizers, training, thin)"),
        ({"version": 2, "pruners": {"p": {"schedule": SCHEDULE}}}, "recipe: version: must be 1"),
        ({"training": {"epochs": 2}}, "recipe: needs at least one entry under `pruners` or `regularizers`"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "sparsity_m_n": [2, 4]}}},
         "recipe: pruners.p: unknown key 'sparsity_m_n' (allowed: layers, schedule, criterion,"),
        ({"pruners": {"p": {"criterion": "magnitude"}}}, "recipe: pruners.p: needs a `schedule`"),
        ({"pruners": {"a": {"schedule": SCHEDULE}, "b": {"schedule": SCHEDULE}}},
         "recipe: pruners: only one pruner may leave out `layers` (it takes the layers the others "
         "do not name). Received: ['a', 'b']"),
        ({"pruners": {"p": {"schedule": {**SCHEDULE, "type": "cosine"}}}},
         "recipe: pruners.p.schedule: `type` must be one of constant, polynomial, exponential, "
         "agp. Received: type='cosine'"),
        ({"pruners": {"p": {"schedule": {**SCHEDULE, "target_sparsity": 1.5}}}},
         "recipe: pruners.p.schedule: Argument `target_sparsity`"),
        ({"pruners": {"p": {"schedule": {**SCHEDULE, "begin_epoch": 1}}}},
         "recipe: pruners.p.schedule: give `begin_epoch` or `begin_step`, not both"),
        ({"pruners": {"p": {"schedule": {**SCHEDULE, "frequency": "often"}}}},
         "recipe: pruners.p.schedule: `frequency` must be a number. Received: frequency='often'"),
        ({"pruners": {"p": {"schedule": {"type": "polynomial", "initial_sparsity": 0.0,
                                         "final_sparsity": 0.5, "begin_step": 0, "end_step": 50}}}},
         "recipe: pruners.p.schedule: `frequency` (100 steps) is longer than the pruning window, "
         "steps 0 to 50: masks would update at step 0 only"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "layers": ["h[1"]}}},
         "recipe: pruners.p.layers: 'h[1' is not a regular expression"),
        ({"regularizers": {"r": {"type": "l2"}}},
         "recipe: regularizers.r: `type` must be one of l1, group_lasso, l0. Received: type='l2'"),
        ({"regularizers": {"r": {"type": "l1", "granularity": "filter"}}},
         "recipe: regularizers.r: unknown key 'granularity' (allowed: type, strength, layers, proximal, "
         "begin_step, end_step, begin_epoch, end_epoch)"),
        ({"regularizers": {"r": {"type": "group_lasso", "strength": -1}}},
         "recipe: regularizers.r: Argument `strength`"),
        ({"pruners": {"p": {"schedule": SCHEDULE}}, "training": {"epochs": 0}},
         "recipe: training: `epochs` must be a positive integer. Received: epochs=0"),
        ({"pruners": {"p": {"schedule": SCHEDULE}}, "training": {"lr": 0.1}},
         "recipe: training: unknown key 'lr'"),
        ({"pruners": {"p": {"schedule": SCHEDULE}}, "training": {"optimizer": "foo"}},
         "recipe: training.optimizer: Could not interpret optimizer identifier: foo"),
        ({"regularizers": {"r": {"type": "l1", "begin_epoch": 2, "end_epoch": 1}}},
         "recipe: regularizers.r: the window ends before it begins (epochs 2 to 1)"),
        ({"regularizers": {"r": {"type": "l1", "begin_step": 5, "end_step": 5}}},
         "recipe: regularizers.r: the window ends before it begins (steps 5 to 5)"),
        ({"version": True, "pruners": {"p": {"schedule": SCHEDULE}}},
         "recipe: version: must be 1. Received: version=True"),
        ({"regularizers": {"r": {"type": "l0", "seed": "x"}}},
         "recipe: regularizers.r: Argument `seed` must be an int or None. Received: seed='x'"),
        ({"regularizers": {"r": {"type": "l0", "droprate_init": 1.5}}},
         "recipe: regularizers.r: Argument `droprate_init` must be a number in (0.0, 1.0). "
         "Received: droprate_init=1.5"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "granularity": "kernel"}}},
         "recipe: pruners.p: Argument `granularity` must be one of"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "granularity": "filter", "round_to": 0}}},
         "recipe: pruners.p: Argument `round_to` must be a positive int or None. Received: round_to=0"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "scope": "lamp", "min_sparsity": 0.9,
                            "max_sparsity": 0.5}}},
         "recipe: pruners.p: `min_sparsity` must not exceed `max_sparsity`"),
        ({"pruners": {"p": {"schedule": SCHEDULE, "criterion": "taylor", "seed": 3}}},
         "recipe: pruners.p: Argument `seed` applies to criterion='random' only"),
        ({"regularizers": {"r": {"type": "l1", "begin_epoch": 1, "begin_step": 3}}},
         "recipe: regularizers.r: give `begin_epoch` or `begin_step`, not both"),
        ({"regularizers": {"r": {"type": "l0", "begin_epoch": 1}}},
         "recipe: regularizers.r: unknown key 'begin_epoch' (allowed: type, strength, "
         "droprate_init, seed)"),
    ],
)  # fmt: skip
def test_bad_recipes_are_refused_with_where_and_why(config, message):
    with pytest.raises(recipes.RecipeError) as caught:
        recipes.Recipe.from_config(config)
    assert str(caught.value).startswith(message), str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "pruners, message",
    [
        ({"p": {"layers": ["conv.*"], "schedule": SCHEDULE}},
         "recipe: pruners.p.layers: 'conv.*' matches no layer with prunable weights "
         "(they are: h1, h2, out)"),
        ({"a": {"layers": ["h."], "schedule": SCHEDULE}, "b": {"layers": ["h2"], "schedule": SCHEDULE}},
         "recipe: pruners.b.layers: layer 'h2' is pruned by pruners.a too"),
        ({"a": {"layers": ["h1", "h2", "out"], "schedule": SCHEDULE}, "b": {"schedule": SCHEDULE}},
         "recipe: pruners.b: every layer is named by another pruner; give `layers`"),
        ({"a": {"layers": ["h1"], "granularity": "filter", "schedule": SCHEDULE},
          "b": {"layers": ["h2"], "schedule": SCHEDULE}},
         "recipe: pruners.b.layers: layer 'h2' is already pruned by pruners.a (its channels "
         "are coupled"),
    ],
)  # fmt: skip
def test_recipes_are_checked_against_the_model_before_it_is_touched(pruners, message):
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    recipe = recipes.Recipe.from_config(
        {"pruners": pruners, "regularizers": {"r": {"type": "l1", "strength": 0.1}}}
    )
    with pytest.raises(recipes.RecipeError) as caught:
        recipe.apply(model, steps_per_epoch=4)
    assert str(caught.value).startswith(message), str(caught.value)
    assert not collect_prunable_layers(model)
    assert all(layer.kernel.regularizer is None for layer in model.layers)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_run_trains_by_the_recipe_and_returns_a_plain_model(rng, tmp_path):
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 3, size=40)
    recipe = recipes.Recipe.from_config({
        "pruners": {
            "hidden": {"layers": ["h\\d"], "scope": "global", "schedule": {
                "type": "polynomial", "initial_sparsity": 0.25, "final_sparsity": 0.75,
                "begin_epoch": 0, "end_epoch": 1, "frequency": 1}},
            "out": {"schedule": {**SCHEDULE, "target_sparsity": 0.5}, "granularity": "row"},
        },
        "training": {"epochs": 2, "batch_size": 8, "optimizer": "sgd", "learning_rate": 0.01,
                     "loss": {"class_name": "SparseCategoricalCrossentropy",
                              "config": {"from_logits": True}}},
    })  # fmt: skip
    path = tmp_path / "r.json"
    recipe.save(str(path))
    assert recipes.load(str(path)).get_config() == recipe.get_config()
    plain, history = recipes.load(str(path)).run(_model(), x, y, verbose=0)
    assert len(history.history["loss"]) == 2
    assert not collect_prunable_layers(plain)
    zeros = {layer.name: keras.ops.convert_to_numpy(layer.kernel) == 0 for layer in plain.layers}
    assert (zeros["h1"].sum() + zeros["h2"].sum()) == 0.75 * (48 + 64)  # one global budget
    assert zeros["out"].all(axis=1).sum() == 4  # half of the 8 rows, whole


def test_sensitivity_allocation_becomes_a_recipe(tmp_path):
    recipe = recipes.from_sensitivity({"h1": 0.5, "h2": 0.0, "out": 0.9}, 0.6)
    recipe.save(str(tmp_path / "r.yaml"))
    config = recipes.load(str(tmp_path / "r.yaml")).get_config()
    pruner = config["pruners"]["sensitivity"]
    assert pruner["scope"] == {"h1": 0.5, "out": 0.9} and pruner["layers"] == ["h1", "out"]
    pruned = recipes.load(str(tmp_path / "r.yaml")).apply(_model(), steps_per_epoch=10)
    tfprune.update_masks(pruned, 0.6)  # the schedule's end: each layer at its own
    zeros = {w.layer.name: float(np.mean(keras.ops.convert_to_numpy(w.layer.kernel) == 0))
             for w in collect_prunable_layers(pruned)}  # fmt: skip
    assert zeros == {"h1": 0.5, "out": 22 / 24}  # keeps round(24 * 0.1) = 2 weights
    # ten updates an epoch, at least one a step: three steps an epoch still prune
    for steps_per_epoch, frequency in ((3, 1), (100, 10)):
        wrapper = collect_prunable_layers(recipe.apply(_model(), steps_per_epoch))[0]
        schedule = wrapper.pruner.pruning_schedule
        assert schedule.get_config()["frequency"] == frequency
        last = 2 * steps_per_epoch  # the end of epoch 2
        assert [bool(schedule(s)[0]) for s in (last - frequency, last)] == [True, True]
        assert float(schedule(last)[1]) == pytest.approx(0.6)


def test_parse_errors_and_missing_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("pruners: [unclosed\n")
    with pytest.raises(recipes.RecipeError, match=r"^recipe: cannot parse .*bad.yaml: "):
        recipes.load(str(tmp_path / "bad.yaml"))
    with pytest.raises(recipes.RecipeError, match=r"^recipe: no such file: .*none.json$"):
        recipes.load(str(tmp_path / "none.json"))
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(recipes.RecipeError, match=r"^recipe: .*list.json does not hold a mapping$"):
        recipes.load(str(tmp_path / "list.json"))


def test_regularizer_windows_become_callbacks_in_steps():
    from tfprune.regularizers import RegularizationWindow, SoftThreshold

    recipe = recipes.Recipe.from_config({"regularizers": {
        "early": {"type": "l1", "strength": 0.1, "layers": ["h1"], "end_epoch": 2},
        "late": {"type": "group_lasso", "strength": 0.1, "layers": ["h2"], "begin_epoch": 1.5,
                 "proximal": True},
        "always": {"type": "l1", "layers": ["out"]},
    }})  # fmt: skip
    with pytest.raises(recipes.RecipeError, match="call `apply` before `callbacks`"):
        recipe.callbacks(10)
    model = recipe.apply(_model())
    callbacks = recipe.callbacks(steps_per_epoch=10)
    windows = [c for c in callbacks if isinstance(c, RegularizationWindow)]
    assert [(w.begin_step, w.end_step) for w in windows] == [(0, 20), (15, -1)]
    layers = {layer.name: layer for layer in model.layers}
    assert windows[0].regularizer is layers["h1"].kernel.regularizer
    assert windows[1].regularizer is layers["h2"].kernel.regularizer
    assert isinstance(callbacks[-1], SoftThreshold)  # after the windows


def test_a_window_of_fractional_epochs_is_checked_in_steps():
    from tfprune.regularizers import RegularizationWindow

    recipe = recipes.Recipe.from_config({"regularizers": {
        "brief": {"type": "l1", "begin_epoch": 0.2, "end_epoch": 0.4},
    }})  # fmt: skip
    recipe.apply(_model())
    windows = [c for c in recipe.callbacks(10) if isinstance(c, RegularizationWindow)]
    assert [(w.begin_step, w.end_step) for w in windows] == [(2, 4)]
    with pytest.raises(recipes.RecipeError, match=r"^recipe: regularizers.brief: the window ends before it begins \(steps 0 to 0\)"):
        recipe.callbacks(steps_per_epoch=1)  # 0.2 and 0.4 epochs of one step: no window


def test_errors_that_need_the_model_name_the_entry():
    recipe = recipes.Recipe.from_config({"pruners": {
        "p": {"layers": ["h1"], "max_sparsity": {"h2": 0.5}, "schedule": SCHEDULE},
    }})  # fmt: skip
    model = _model()
    with pytest.raises(recipes.RecipeError, match=(
        r"^recipe: pruners.p: Argument `max_sparsity` names layers this pruner does not "
        r"prune: \['h2'\]"
    )):  # fmt: skip
        recipe.apply(model, steps_per_epoch=4)
    assert not collect_prunable_layers(model)


def test_the_pruner_without_layers_takes_what_the_others_leave():
    recipe = recipes.Recipe.from_config({"pruners": {
        "rest": {"schedule": SCHEDULE},  # listed first, applied last
        "channels": {"layers": ["h1"], "granularity": "filter", "schedule": SCHEDULE},
    }})  # fmt: skip
    pruners = _pruners(recipe.apply(_model(), steps_per_epoch=4))
    assert pruners["h1"] is pruners["h2"]  # h2 reads h1's channels: the channel pruner's
    assert type(pruners["h1"].granularity).__name__ == "Coupled"
    assert type(pruners["out"].granularity).__name__ == "Element"
