"""The `tfprune` command line, through its real entry point (subprocesses)."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, only_backends
from helpers import tflite_predict

import tfprune
from tfprune import __main__ as cli
from tfprune import l0, recipes, sparsity

pytestmark = only_backends(
    "tensorflow", reason="backend-independent (subprocesses); run in the TensorFlow pass only"
)


def run(*args, log_level="3"):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL=log_level)
    return subprocess.run(
        [sys.executable, "-m", "tfprune", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def saved(tmp_path):
    """A pruned, regularized and gated model, saved: every kind of zero."""
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="conv")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(6, name="fc")(h)
    model = keras.Model(x, keras.layers.Dense(2, name="out")(h))
    model.get_layer("fc").kernel.assign(np.zeros((4, 6), "float32"))  # a regularizer's zeros
    gated = tfprune.add_l0_gates(model, droprate_init=0.1, seed=0)
    conv_gate = next(g for g in l0.gates_of(gated) if g.layer.name == "conv")
    conv_gate.log_alpha.assign(np.array([-10.0, 5.0, 5.0, 5.0], "float32"))  # one closed gate
    pruned = tfprune.prune_low_magnitude(gated, tfprune.ConstantSparsity(0.5, 0))
    path = tmp_path / "model.keras"
    pruned.save(path)
    return path, pruned


def test_inspect_reports_pruned_regularized_and_gated_zeros(saved):
    path, pruned = saved
    out = run("inspect", str(path), "--format", "json")
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    rows = {r["weight"]: r for r in table["rows"]}
    conv = next(r for name, r in rows.items() if name.endswith("conv/kernel"))
    assert conv["zero_filters"] == 1  # the closed gate, folded
    fc = next(r for name, r in rows.items() if name.endswith("fc/kernel"))
    assert fc["sparsity"] == 1.0 and fc["zero_rows"] == 4
    assert table["totals"] == pytest.approx(
        sparsity.sparsity_table(pruned, sizes=True)["totals"], rel=0.1
    )
    assert table["totals"]["keras_gzip_bytes"] < table["totals"]["keras_bytes"]
    # the other formats in process (each subprocess imports TensorFlow: seconds)
    text = sparsity.format_table(sparsity.sparsity_table(pruned, sizes=True))
    assert "total" in text and ".keras size" in text
    csv_text = sparsity.format_table(sparsity.sparsity_table(pruned), "csv")
    assert csv_text.splitlines()[0] == ",".join(sparsity.COLUMNS)
    assert len(csv_text.splitlines()) == 1 + len(table["rows"])


def test_inspect_refuses_bad_input_with_exit_code_2(tmp_path, capsys):
    missing = run("inspect", str(tmp_path / "nope.keras"))
    assert missing.returncode == 2
    last = missing.stderr.strip().splitlines()[-1]  # (after TensorFlow's own start-up lines)
    assert last == f"tfprune: error: no such model file: {tmp_path / 'nope.keras'}"
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    assert cli.main(["inspect", str(junk)]) == 2  # in process: a subprocess costs seconds
    err = capsys.readouterr().err
    assert err.startswith("tfprune: error: cannot load") and len(err.strip().splitlines()) == 1
    assert cli.main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"tfprune: error: {tmp_path} is a directory, not a saved model file\n"



def test_inspect_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "--format", "xml", "model.keras"])
    assert exit_info.value.code == 2 and "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", "--help"])
    assert exit_info.value.code == 0
    assert "zero filters/channels/rows" in " ".join(capsys.readouterr().out.split())


# ---------------------------------------------------------------- schedule
def test_schedule_prints_the_updates_a_training_run_sees_and_plots_them(tmp_path, capsys):
    png = tmp_path / "curve.png"
    result = run("schedule", "polynomial", "--initial-sparsity", "0.5", "--final-sparsity",
                 "0.9", "--begin-step", "0", "--end-step", "1000", "--frequency", "100",
                 "--plot", str(tmp_path / "curve"))  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"plot: {png}" in out  # the file Matplotlib writes for a name without a suffix
    lines = [line.split() for line in out.splitlines()[2:12]]
    # step 0 is never a training step: the first update is at step 100
    schedule = tfprune.PolynomialDecay(0.5, 0.9, 0, 1000, frequency=100)
    expected = [[str(s), f"{float(schedule(s)[1]):.4f}"] for s in range(100, 1001, 100)]
    assert lines == expected
    assert "10 mask updates" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a real image
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.05  # not blank


def test_schedule_from_a_config_file(tmp_path, capsys):
    saved = tmp_path / "s.json"
    schedule = tfprune.AGP(0.8, begin_step=10, end_step=50, frequency=20)
    saved.write_text(json.dumps(keras.saving.serialize_keras_object(schedule)))
    assert cli.main(["schedule", "--config", str(saved), "--steps", "60"]) == 0
    steps = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert steps == ["10", "30", "50"]
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"schedule": "constant", "target_sparsity": 0.5, "begin_step": 0,
                                "frequency": 5}))  # fmt: skip
    assert cli.main(["schedule", "--config", str(flat), "--steps", "10"]) == 0
    assert "2 mask updates" in capsys.readouterr().out
    typed = tmp_path / "typed.json"  # `type:`, as a recipe writes it
    typed.write_text(json.dumps({"type": "agp", "final_sparsity": 0.8, "begin_step": 10,
                                 "end_step": 50, "frequency": 20}))  # fmt: skip
    assert cli.main(["schedule", "--config", str(typed), "--steps", "60"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == steps


@pytest.mark.parametrize(
    "args, message",
    [
        (["schedule", "polynomial", "--initial-sparsity", "0.5", "--final-sparsity", "1.5",
          "--begin-step", "0", "--end-step", "10"], "final_sparsity"),
        (["schedule", "constant", "--target-sparsity", "0.5", "--begin-step", "0", "--rate", "0.1"],
         "schedule: unknown key 'rate' (allowed: type, target_sparsity, begin_step, end_step, "
         "frequency, begin_epoch, end_epoch, frequency_epochs)"),
        (["schedule", "--config", "missing.json"], "config: no such file: missing.json"),
        (["schedule"], "give a schedule name"),
        (["schedule", "agp", "--final-sparsity", "0.9", "--steps", "-3"], "--steps=-3"),
        (["schedule", "--config", "s.json", "--final-sparsity", "0.5"],
         "cannot be combined with a schedule name or its flags. Received: --config=s.json and "
         "--final-sparsity=0.5"),
        (["schedule", "agp", "--config", "s.json"], "Received: --config=s.json and agp"),
    ],
)  # fmt: skip
def test_schedule_refuses_bad_values_with_exit_code_2(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfprune: error: ") and message in err and len(err.splitlines()) == 1


def test_schedule_refuses_bad_values_through_the_entry_point():
    out = run("schedule", "agp", "--final-sparsity", "0.9", "--begin-step", "10", "--end-step", "5")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1].startswith(
        "tfprune: error: schedule: Argument `end_step` must be"
    )


# ----------------------------------------------------------- strip, export
def test_strip_and_export_write_plain_and_sparse_models(saved, tmp_path, capsys):
    path, pruned = saved
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype("float32")
    expected = keras.ops.convert_to_numpy(pruned(x, training=False))
    out = tmp_path / "plain.keras"
    result = run("strip", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    raw, zipped = map(int, re.search(r"(\d+) bytes, gzip (\d+) bytes", result.stdout).groups())
    assert raw == out.stat().st_size and zipped < raw
    plain = keras.models.load_model(out)
    kinds = (tfprune.PruneLowMagnitude, l0.L0Gate)
    assert not any(isinstance(layer, kinds) for layer in plain.layers)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(plain(x)), expected, atol=1e-5)
    for sparse in (False, True):
        target = tmp_path / f"m{int(sparse)}.tflite"
        args = ["export", str(path), "--format", "tflite", "--out", str(target)]
        if sparse:  # through the entry point
            result = run(*args, "--sparse", log_level="0")
            assert result.returncode == 0, result.stderr[-2000:]
            assert "SavedModel" not in result.stderr  # the converter's C++ log is held back
            last = result.stdout.strip().splitlines()[-1]
        else:
            assert cli.main(args) == 0
            last = capsys.readouterr().out.strip().splitlines()[-1]
        raw, zipped = map(int, re.search(r"(\d+) bytes, gzip (\d+) bytes", last).groups())
        np.testing.assert_allclose(tflite_predict(x, model_path=str(target)), expected, atol=1e-4)
        assert raw == target.stat().st_size and zipped < raw
    saved_model = tmp_path / "saved"
    assert cli.main(["export", str(path), "--format", "savedmodel", "--out", str(saved_model)]) == 0
    assert (saved_model / "saved_model.pb").exists()
    assert cli.main(["export", str(path), "--format", "keras", "--out", str(tmp_path / "k.keras"),
                     "--sparse"]) == 2  # fmt: skip
    assert "--sparse applies to --format tflite" in capsys.readouterr().err


def test_native_output_is_replayed_only_when_the_block_fails(capfd):
    with cli._native_output_held():
        os.write(2, b"converter log\n")
        os.write(1, b"signature\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError, match="conversion failed"):
        with cli._native_output_held():
            os.write(2, b"converter log\n")
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == "converter log\n"


# ------------------------------------------------------------- sensitivity
def _classifier(rng):
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32") + 2 * (x[:, 2] > 0)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="relu", name="h"),
         keras.layers.Dense(4, name="out")]
    )  # fmt: skip
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=30, verbose=0)
    return model, x, y


def test_sensitivity_measures_each_layer_alone_and_restores_it(rng):
    model, x, y = _classifier(rng)
    before = [w.copy() for w in model.get_weights()]
    result = tfprune.sensitivity(model, x, y, sparsities=(0.5, 0.9), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert [(layer, s) for layer, s, _ in result.rows] == [
        ("h", 0.0), ("h", 0.5), ("h", 0.9), ("out", 0.0), ("out", 0.5), ("out", 0.9)
    ]
    # one cell by hand: 'h' at 50%, its 48 smallest |w| zeroed
    kernel = before[0].copy()
    kernel.reshape(-1)[np.argsort(np.abs(kernel).reshape(-1), kind="stable")[:48]] = 0
    model.get_layer("h").kernel.assign(kernel)
    expected = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    model.set_weights(before)
    assert dict(result.curve("h"))[0.5] == expected
    assert dict(result.curve("h"))[0.0] == float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    filters = tfprune.sensitivity(model, x, y, sparsities=(0.5,), granularity="filter", verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # coupled: one group (h's units; the outputs stay), its 6*16 + 16 + 16*4 weights
    assert filters.groups == {"h": ["h"]} and filters.parameters == {"h": 176}
    pruned = tfprune.prune(model, None, granularity="filter")
    tfprune.update_masks(pruned, 0.5)
    expected = float(np.mean(pruned.predict(x, verbose=0).argmax(-1) == y))
    model.set_weights(before)
    assert filters.rows[1] == ("h", 0.5, expected)


def test_sensitivity_over_coupled_channels_names_merged_groups(rng):
    x_in = keras.Input((6,))
    a = keras.layers.Dense(8, name="a")(x_in)
    b = keras.layers.Dense(8, name="b")(x_in)
    h = keras.layers.Add()([a, b])
    c = keras.layers.Dense(4, activation="relu", name="c")(h)
    model = keras.Model(x_in, keras.layers.Dense(3, name="out")(c))
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16)
    result = tfprune.sensitivity(model, x, y, sparsities=(0.5,), granularity="filter", verbose=0)
    assert result.groups == {"a+b": ["a", "b"], "c": ["c"]}
    assert result.parameters == {"a+b": 2 * (6 * 8 + 8) + 8 * 4, "c": 8 * 4 + 4 + 4 * 3}
    recipe = recipes.from_sensitivity({"a+b": 0.5, "c": 0.0}, 0.4, "filter", result.groups)
    pruned = recipe.apply(model, steps_per_epoch=10)
    tfprune.update_masks(pruned, 0.5)
    assert tfprune.thin(pruned).get_layer("a").units == 4
    with pytest.raises(ValueError, match=r"produce no prunable channel group: \['out'\]"):
        tfprune.sensitivity(model, x, y, granularity="filter", layers=["out"], verbose=0)


def test_sensitivity_rows_are_the_layers_that_own_their_weights(rng):
    body = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(8, name="d2")], name="body"
    )
    x_in = keras.Input((6,))
    model = keras.Model(x_in, keras.layers.Dense(4, name="head")(body(x_in)))
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=16).astype("float32")  # class labels stored as floats
    result = tfprune.sensitivity(model, x, y, sparsities=(0.5,), verbose=0)
    assert sorted(result.layers) == ["d1", "d2", "head"]  # not "body" besides its layers
    assert result.parameters == {"d1": 48, "d2": 64, "head": 32}
    accuracy = float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))
    assert dict(result.curve("head"))[0.0] == accuracy


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sparsities": ("0.5",)}, TypeError, r"sparsities=\('0.5',\)"),
        ({"sparsities": (False, 0.5)}, TypeError, r"sparsities=\(False, 0.5\)"),
        ({"sparsities": 0.5}, TypeError, r"sparsities=0.5"),
        ({"layers": "h"}, TypeError, r"layers='h'"),
        ({"y": np.zeros(3)}, ValueError, r"as many rows. Received: 64 rows of x, 3 of y"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive int. Received: batch_size=0"),
        ({"batch_size": "a"}, ValueError, r"batch_size='a'"),
        ({"model": "m.keras"}, TypeError, r"`model` must be a keras.Model. Received: model='m.keras'"),
    ],
)
def test_sensitivity_refuses_bad_arguments(rng, kwargs, error, match):
    model, x, y = _classifier(rng)
    arguments = {"model": model, "x": x, "y": y, "verbose": 0, **kwargs}
    with pytest.raises(error, match=match):
        tfprune.sensitivity(**arguments)


def test_sensitivity_allocation_meets_the_overall_target():
    from tfprune.sensitivity import Sensitivity

    rows = [("a", 0.0, 1.0), ("a", 0.5, 0.99), ("a", 0.9, 0.5),
            ("b", 0.0, 1.0), ("b", 0.5, 0.95), ("b", 0.9, 0.94)]  # fmt: skip
    result = Sensitivity(rows, {"a": 100, "b": 300}, "element")
    assert result.allocate(0.6) == {"a": 0.5, "b": 0.9}  # tolerance 0.06: (50 + 270) / 400
    assert result.allocate(0.3) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="more than the measured sparsities reach"):
        result.allocate(0.95)
    assert result.allocate(np.float32(0.3)) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="target=False"):
        result.allocate(False)


def test_sensitivity_allocation_shares_flat_curves_evenly():
    # An accuracy on few rows often does not move: every drop is 0, and every
    # layer could take its sparsest measurement (75% for a 50% target).
    from tfprune.sensitivity import Sensitivity

    rows = [(name, s, 0.5) for name in ("a", "b") for s in (0.0, 0.25, 0.5, 0.75)]
    result = Sensitivity(rows, {"a": 100, "b": 300}, "filter")
    assert result.allocate(0.5) == {"a": 0.5, "b": 0.5}
    # rounds of one step each, the larger layer first: 25% each, then b to 50%
    assert result.allocate(0.3) == {"a": 0.25, "b": 0.5}
    # a tolerance moves only the layers it lets go further, from the allocation below it
    rows = [("a", 0.0, 1.0), ("a", 0.5, 1.0), ("a", 0.9, 1.0),
            ("b", 0.0, 1.0), ("b", 0.3, 0.98), ("b", 0.6, 0.98), ("b", 0.9, 0.9)]  # fmt: skip
    result = Sensitivity(rows, {"a": 100, "b": 100}, "element")
    assert result.allocate(0.45) == {"a": 0.9, "b": 0.0}
    assert result.allocate(0.55) == {"a": 0.9, "b": 0.3}  # not b's 0.6, within the same tolerance
    assert result.allocate(0.8) == {"a": 0.9, "b": 0.9}


def test_sensitivity_command_writes_table_csv_plot_and_scope(rng, tmp_path):
    model, x, y = _classifier(rng)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = run("sensitivity", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"),
              "--sparsities", "0.5,0.9", "--csv", str(tmp_path / "s.csv"), "--plot",
              str(tmp_path / "s.png"), "--budget", "0.5", "--scope-out", str(tmp_path / "s.json"),
              "--recipe-out", str(tmp_path / "r.yaml"), "--quiet")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "layer,sparsity,metric" and len(lines) == 7
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    scope = json.loads((tmp_path / "s.json").read_text())
    sizes = {"h": 6 * 16, "out": 16 * 4}
    assert sum(scope[k] * sizes[k] for k in scope) / sum(sizes.values()) >= 0.5
    assert "50%" in out.stdout and "90%" in out.stdout
    recipe = recipes.load(str(tmp_path / "r.yaml")).get_config()["pruners"]["sensitivity"]
    assert recipe["scope"] == {k: v for k, v in scope.items() if v > 0}
    assert recipe["schedule"]["final_sparsity"] == 0.5


def test_sensitivity_command_refuses_bad_data(tmp_path, capsys):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 6), "float32"))
    out = run("sensitivity", "m.keras", "--data", str(tmp_path / "bad.npz"))
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        f"tfprune: error: {tmp_path / 'bad.npz'} lacks 'y' (has ['x'])"
    )
    assert cli.main(["sensitivity", "m.keras", "--data", str(tmp_path / "none.npz")]) == 2
    assert "no such data file" in capsys.readouterr().err


def test_sensitivity_command_refuses_a_scope_of_coupled_groups(rng, tmp_path, capsys):
    model, x, y = _classifier(rng)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = cli.main(["sensitivity", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"),
                     "--granularity", "filter", "--budget", "0.3", "--scope-out",
                     str(tmp_path / "s.json"), "--quiet"])  # fmt: skip
    assert code == 2 and "coupled channel groups, not layers: use --recipe-out" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_schedule_types_match_the_recipes():
    assert cli.SCHEDULE_TYPES == tuple(sorted(recipes.SCHEDULES))


# ------------------------------------------------------------------- prune
RECIPE = """\
pruners:
  filters:
    granularity: filter
    schedule: {type: constant, target_sparsity: 0.5, begin_step: 0, frequency: 1}
training: {epochs: 1, batch_size: 8, learning_rate: 1.0e-3}
thin: true
"""


def test_prune_command_prunes_by_a_recipe_and_thins(rng, tmp_path):
    x_in = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x_in)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x_in, keras.layers.Dense(3, name="out")(h))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=32)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_val=x[:8], y_val=y[:8])
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = run("prune", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--recipe",
              str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o.keras"), "--quiet")  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    thinned = keras.models.load_model(tmp_path / "o.keras")
    assert thinned.get_layer("conv").filters == 4 and not l0.gates_of(thinned)
    before = 3 * 3 * 2 * 8 + 8 + 8 * 3 + 3
    after = 3 * 3 * 2 * 4 + 4 + 4 * 3 + 3
    assert f"parameters: {before} before, {after} after" in out.stdout
    assert re.search(r"accuracy on the validation data: \d\.\d{4} before, \d\.\d{4} after", out.stdout)
    # a recipe error: exit code 2 and one line naming where
    (tmp_path / "bad.yaml").write_text(RECIPE.replace("granularity", "granularty"))
    bad = run("prune", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.npz"), "--recipe",
              str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o2.keras"))  # fmt: skip
    assert bad.returncode == 2 and not (tmp_path / "o2.keras").exists()
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "tfprune: error: recipe: pruners.filters: unknown key 'granularty' (allowed: layers, "
    )


def test_prune_command_refuses_bad_input(rng, tmp_path, capsys):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    model.save(tmp_path / "uncompiled.keras")
    model.compile("sgd", "mse")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4), "float32"), y=np.zeros(4, "int32"))
    np.savez(tmp_path / "half.npz", x=np.zeros((4, 4)), y=np.zeros(4), x_val=np.zeros((2, 4)))
    (tmp_path / "r.yaml").write_text(RECIPE.replace("granularity: filter", "layers: [conv]"))
    common = ["--out", str(tmp_path / "o.keras")]
    cases = [
        (["--data", str(tmp_path / "d.npz"), "--recipe", str(tmp_path / "none.yaml")],
         f"tfprune: error: recipe: no such file: {tmp_path / 'none.yaml'}"),
        (["--data", str(tmp_path / "half.npz"), "--recipe", str(tmp_path / "r.yaml")],
         f"tfprune: error: {tmp_path / 'half.npz'} has one of 'x_val' and 'y_val' without the other"),
        (["--data", str(tmp_path / "d.npz"), "--recipe", str(tmp_path / "r.yaml")],
         "tfprune: error: recipe: pruners.filters.layers: 'conv' matches no layer with prunable "
         "weights (they are: d)"),
    ]  # fmt: skip
    for args, message in cases:
        assert cli.main(["prune", str(tmp_path / "m.keras"), *args, *common]) == 2
        assert capsys.readouterr().err.strip() == message
    args = ["--data", str(tmp_path / "d.npz"), "--recipe", str(tmp_path / "r.yaml"), *common]
    assert cli.main(["prune", str(tmp_path / "uncompiled.keras"), *args]) == 2
    assert capsys.readouterr().err.strip() == (
        "tfprune: error: recipe: training: needs a `loss`: the model has no compiled loss"
    )
    assert not (tmp_path / "o.keras").exists()


# -------------------------------------------------------------------- demo
def test_demo_through_the_entry_point():
    out = run("demo", "--epochs", "2", "--prune-epochs", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^(\w+/kernel)\s+(\d+)\s+([\d.]+)%$", out.stdout, flags=re.M)
    assert [name for name, _, _ in rows] == ["conv1/kernel", "conv2/kernel", "dense1/kernel",
                                             "logits/kernel"]  # fmt: skip
    for _, size, shown in rows:
        kept = max(round(int(size) * 0.1), 1)
        assert shown == f"{100 * (1 - kept / int(size)):.2f}"
    accuracy = re.search(r"test accuracy\s+([\d.]+)%\s+([\d.]+)%", out.stdout)
    assert accuracy and all(0 < float(a) <= 100 for a in accuracy.groups())
    gzip = re.search(r"weights gzip \(bytes\)\s+([\d,]+)\s+([\d,]+)", out.stdout)
    dense, pruned = (int(v.replace(",", "")) for v in gzip.groups())
    assert pruned < dense / 3


def test_demo_refuses_bad_values(capsys):
    assert cli.main(["demo", "--final-sparsity", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tfprune: error: Argument `final_sparsity` must be in [0, 1). Received: final_sparsity=1.5"
    )
    assert cli.main(["demo", "--epochs", "0"]) == 2
    assert "Argument `epochs` must be a positive integer. Received: epochs=0" in capsys.readouterr().err


# ---------------------------------------------------------- inspect --xnnpack
def test_inspect_xnnpack_says_which_layer_breaks_which_condition(tmp_path, capsys):
    from test_xnnpack import mobilenet, prune_1x1

    prune_1x1(mobilenet(), 0.8).save(tmp_path / "pruned.keras")
    out = run("inspect", "--xnnpack", str(tmp_path / "pruned.keras"), "--format", "json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["ok"] is True and [c["name"] for c in report["conditions"]] == [
        "stem", "sparsity", "end", "ops"
    ]  # fmt: skip
    mobilenet(stem_strides=1).save(tmp_path / "dense.keras")
    assert cli.main(["inspect", "--xnnpack", str(tmp_path / "dense.keras")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("XNNPACK sparse inference for 'mini_mobilenet': no (2 of 4 conditions fail)")
    assert "pw_1: 1x1 conv with 0.0% zeros, needs > 66.7%" in text
    assert "stem conv1: stride 1; needs a 3x3 stride-2 Conv2D on 3 input channels" in text


def test_outputs_and_data_are_checked_before_any_work(rng, tmp_path, capsys):
    model, x, y = _classifier(rng)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "short.npz", x=x, y=y[:10])
    np.savez(tmp_path / "shape.npz", x=x[:, :5], y=y)
    (tmp_path / "r.yaml").write_text(RECIPE.replace("granularity: filter\n", ""))
    (tmp_path / "folder.tflite").mkdir()
    m, d = str(tmp_path / "m.keras"), str(tmp_path / "d.npz")
    cases = [
        (["strip", m, "--out", str(tmp_path / "plain")], "must end in .keras or .h5"),
        (["strip", m, "--out", str(tmp_path / "no" / "p.keras")], "no such directory"),
        (["export", m, "--format", "tflite", "--out", str(tmp_path / "folder.tflite")], "is a directory"),
        (["prune", m, "--data", d, "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")],
         "must end in .keras or .h5"),
        (["prune", m, "--data", str(tmp_path / "short.npz"), "--recipe", str(tmp_path / "r.yaml"),
          "--out", str(tmp_path / "o.keras")], "'x' has 64 rows and 'y' 10"),
        (["sensitivity", m, "--data", d, "--scope-out", str(tmp_path / "s.json")], "give --budget"),
        (["sensitivity", m, "--data", d, "--budget", "1.5"], "--budget must be an overall sparsity in [0, 1): 1.5"),
        (["export", m, "--format", "tflite", "--out", str(tmp_path / "t.keras")], "must end in .tflite"),
        (["sensitivity", m, "--data", d, "--csv", str(tmp_path / "no" / "s.csv")], "--csv"),
        (["schedule", "agp", "--final-sparsity", "0.9", "--plot", str(tmp_path / "no" / "c.png")],
         "--plot"),
        (["schedule", "polynomial", "--initial-sparsity", "0", "--final-sparsity", "0.9", "--begin-step", "0", "--end-step", "9",
          "--frequency", "1", "--power", "nan"], "`power` must be a finite number > 0"),
    ]  # fmt: skip
    for args, message in cases:
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d.npz", "folder.tflite", "m.keras", "r.yaml", "shape.npz", "short.npz"
    ]  # nothing written
    assert cli.main(["sensitivity", m, "--data", str(tmp_path / "shape.npz"), "--quiet"]) == 2
    err = capsys.readouterr().err  # the cause, not Keras's header line
    assert "Exception encountered" not in err and "shape" in err, err


def test_prune_command_takes_a_model_that_still_holds_wrappers(rng, tmp_path, capsys):
    model, x, y = _classifier(rng)
    pruned = tfprune.prune_low_magnitude(model, tfprune.ConstantSparsity(0.5, 0))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.save(tmp_path / "wrapped.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "r.yaml").write_text(RECIPE.replace("granularity: filter\n", ""))
    code = cli.main(["prune", str(tmp_path / "wrapped.keras"), "--data", str(tmp_path / "d.npz"),
                     "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o.keras"), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "o.keras").exists()


def test_recipes_and_schedules_refuse_non_finite_numbers():
    with pytest.raises(recipes.RecipeError, match=r"`learning_rate` must be a finite number > 0"):
        recipes.Recipe.from_config({"pruners": {"p": {"schedule": {"type": "constant", "target_sparsity": 0.5, "begin_step": 0}}},
                                    "training": {"learning_rate": float("nan")}})  # fmt: skip
    with pytest.raises(ValueError, match=r"power=nan"):
        tfprune.PolynomialDecay(0.0, 0.9, 0, 100, power=float("nan"))


def test_table_names_weights_by_their_layers_however_they_were_copied():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="dense1"),
                              keras.layers.Dense(3, name="logits")])  # fmt: skip
    for variant in (model, tfprune.add_l0_gates(model, seed=0)):  # gates folded: layers copied
        names = [r["weight"] for r in sparsity.sparsity_table(variant)["rows"]]
        assert names == ["dense1/kernel", "dense1/bias", "logits/kernel", "logits/bias"]
