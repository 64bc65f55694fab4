"""The `tfprune` command line (also `python -m tfprune`).

    tfprune demo                       prune a small CNN on digits to 90% with AGP
    tfprune inspect MODEL.keras        sparsity table of a saved model (--xnnpack: sparse-inference check)
    tfprune schedule polynomial ...    a schedule's sparsity at its pruning steps (and a plot)
    tfprune strip MODEL.keras --out OUT.keras          a plain model: wrappers and gates removed
    tfprune export MODEL.keras --format tflite --out OUT.tflite [--sparse]
    tfprune sensitivity MODEL.keras --data DATA.npz [--budget 0.7 --recipe-out R.yaml]
    tfprune prune MODEL.keras --data DATA.npz --recipe R.yaml --out OUT.keras
"""

import argparse
import contextlib
import io
import os
import re
import sys

# The schedule types of `tfprune.recipes.SCHEDULES` (named here so that
# `--help` does not import Keras).
SCHEDULE_TYPES = ("agp", "constant", "exponential", "polynomial")


def _quiet():
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # tf.function's retracing notes (a model per layer or group in `sensitivity`) are not
    # the user's concern here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _fail(message):
    print(f"tfprune: error: {message}", file=sys.stderr)
    return 2


def _message(error):
    """The line of an exception's text that says what went wrong (Keras puts
    a header first, and colour codes)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered")]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def _native_output_held():
    """Hold what native code writes to stdout and stderr (the TFLite converter's
    C++ log lines, Keras's printed signature) and replay it only if the block
    raises."""
    import tempfile

    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as held:
        try:
            for fd in saved:
                os.dup2(held.fileno(), fd)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, original in saved.items():
                    os.dup2(original, fd)
                    os.close(original)
        except BaseException:
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise


def _output_problem(path, flag="--out", suffixes=None):
    """Why `path` cannot be written (checked before any work), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{flag} {path}: no such directory {folder}"
    if os.path.isdir(path) and suffixes is not None:
        return f"{flag} {path} is a directory"
    if suffixes and not path.endswith(suffixes):
        return f"{flag} {path} must end in {' or '.join(suffixes)}"
    return None


def _load(path):
    """A saved `.keras` model, or None (with the error printed)."""
    if os.path.isdir(path):
        return None, _fail(f"{path} is a directory, not a saved model file")
    if not os.path.isfile(path):
        return None, _fail(f"no such model file: {path}")
    import keras

    import tfprune  # noqa: F401 (registers the pruning classes)

    try:
        return keras.models.load_model(path), 0
    except Exception as error:  # a file Keras cannot read: say so in one line
        return None, _fail(f"cannot load {path}: {type(error).__name__}: {error}".splitlines()[0])


def inspect(args):
    model, code = _load(args.model)
    if model is None:
        return code
    if args.xnnpack:
        from tfprune.xnnpack import xnnpack_report

        try:
            report = xnnpack_report(model)
        except ValueError as error:  # a subclassed or unbuilt model
            return _fail(_message(error))
        print(report.format(args.format))
        return 0
    from tfprune import sparsity

    print(sparsity.format_table(sparsity.sparsity_table(model, sizes=True), args.format))
    return 0


def _schedule_from(args):
    """The schedule the flags or the config file describe."""
    from tfprune import recipes

    flags = {
        key: getattr(args, key)
        for key in ("target_sparsity", "initial_sparsity", "final_sparsity", "rate",
                    "power", "begin_step", "end_step", "frequency")  # fmt: skip
        if getattr(args, key) is not None
    }
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive number of steps. Received: --steps={args.steps}")
    if args.config:
        given = ([args.name] if args.name else []) + [
            f"--{key.replace('_', '-')}={value}" for key, value in flags.items()
        ]
        if given:
            raise ValueError(
                f"--config describes the whole schedule; it cannot be combined with a "
                f"schedule name or its flags. Received: --config={args.config} and {' '.join(given)}"
            )
        config = recipes.read_mapping(args.config, "config")  # a ValueError if it cannot
        # `schedule: NAME` names the type here; `type: NAME` as in recipes
        if "class_name" not in config and "type" not in config:
            config = dict(config)
            config["type"] = config.pop("schedule", None)
        where = args.config
    else:
        config = {**flags, "type": args.name}
        where = "schedule"
    try:
        return recipes.schedule_from_config(config, where=where)
    except recipes.RecipeError as error:
        raise ValueError(str(error).removeprefix("recipe: ")) from None


def _horizon(schedule, steps):
    if steps is not None:
        return steps
    config = schedule.get_config()
    end = config.get("end_step", -1)
    if end is not None and end >= 0:
        return end + config.get("frequency", 100)
    return config.get("begin_step", 0) + 10 * config.get("frequency", 100)


def schedule_table(schedule, steps):
    """`[(step, sparsity)]` at every step where masks update, up to `steps`.

    Training steps count from 1 (as in TFMOT: the step advances before the
    masks are updated), so a schedule's step 0 never prunes.
    """
    points = []
    for step in range(1, steps + 1):
        should_prune, sparsity = schedule(step)
        if bool(should_prune):
            points.append((step, float(sparsity)))
    return points


def _plot_schedule(schedule, points, steps, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plots need matplotlib (`pip install tfprune[plots]`)") from None
    targets = [float(schedule(s)[1]) for s in range(steps + 1)]
    held, current, i = [], 0.0, 0
    for s in range(steps + 1):  # the masks hold the value of the last update
        while i < len(points) and points[i][0] <= s:
            current = points[i][1]
            i += 1
        held.append(current)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(steps + 1), targets, color="0.6", linewidth=1, label="schedule's target")
    ax.step(range(steps + 1), held, where="post", label="sparsity the masks hold")
    if points:
        ax.plot(*zip(*points), "o", markersize=4, label="mask updates")
    ax.set_xlabel("step")
    ax.set_ylabel("sparsity")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(repr(schedule), fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _image_path(path):
    """The file a plot of `path` is written to (Matplotlib adds `.png` to a
    name without a suffix); None stays None."""
    if path and not os.path.splitext(path)[1]:
        return path + ".png"
    return path


def schedule_command(args):
    args.plot = _image_path(args.plot)
    problem = args.plot and _output_problem(args.plot, "--plot", suffixes=())
    if problem:
        return _fail(problem)
    try:
        schedule = _schedule_from(args)
        steps = _horizon(schedule, args.steps)
        points = schedule_table(schedule, steps)
        if args.plot:
            _plot_schedule(schedule, points, steps, args.plot)
    except (ValueError, TypeError, OSError) as error:
        return _fail(_message(error))
    print(f"{schedule!r}: {len(points)} mask updates in training steps 1..{steps}")
    print(f"{'step':>8}  sparsity")
    for step, value in points:
        print(f"{step:>8}  {value:.4f}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _sizes(path):
    """`(raw bytes, gzip bytes)` of a file, or of every file under a directory."""
    import gzip

    files = [path] if os.path.isfile(path) else [
        os.path.join(root, name) for root, _, names in os.walk(path) for name in sorted(names)
    ]
    raw = zipped = 0
    for name in files:
        with open(name, "rb") as f:
            data = f.read()
        raw += len(data)
        zipped += len(gzip.compress(data))
    return raw, zipped


def _plain(model):
    from tfprune import thinning

    return thinning.plain(model)  # wrappers stripped (masks applied), gates folded


_KERAS_FILES = (".keras", ".h5")


def _save(model, path):
    """Saves `model`; the error message when it cannot, else None."""
    try:
        model.save(path)
    except (OSError, ValueError) as error:
        return f"cannot write {path}: {_message(error)}"
    return None


def strip_command(args):
    problem = _output_problem(args.out, suffixes=_KERAS_FILES)
    if problem:
        return _fail(problem)
    model, code = _load(args.model)
    if model is None:
        return code
    problem = _save(_plain(model), args.out)
    if problem:
        return _fail(problem)
    raw, zipped = _sizes(args.out)
    print(f"{args.out}: {raw} bytes, gzip {zipped} bytes")
    return 0


def export_command(args):
    if args.sparse and args.format != "tflite":
        return _fail("--sparse applies to --format tflite (TFLite's sparse weight encoding)")
    problem = _output_problem(
        args.out, suffixes={"keras": _KERAS_FILES, "tflite": (".tflite",)}.get(args.format)
    )
    if problem:
        return _fail(problem)
    import keras

    if args.format != "keras" and keras.backend.backend() == "torch":
        return _fail(f"--format {args.format} needs the TensorFlow or JAX backend (KERAS_BACKEND)")
    model, code = _load(args.model)
    if model is None:
        return code
    plain = _plain(model)
    if args.format == "keras":
        problem = _save(plain, args.out)
        if problem:
            return _fail(problem)
    else:
        try:
            if args.format == "savedmodel":
                plain.export(args.out, format="tf_saved_model", verbose=False)
            else:
                import tensorflow as tf

                converter = tf.lite.TFLiteConverter.from_keras_model(plain)
                if args.sparse:
                    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
                # Keras prints the signature; the converter logs from C++.
                with _native_output_held(), contextlib.redirect_stdout(io.StringIO()):
                    flat = converter.convert()
                with open(args.out, "wb") as f:  # written once converted: no empty file
                    f.write(flat)
        except ImportError as error:
            return _fail(f"--format {args.format} needs TensorFlow: {error}")
        except Exception as error:
            return _fail(f"cannot export {args.model} as {args.format}: {_message(error)}")
    raw, zipped = _sizes(args.out)
    print(f"{args.out}: {raw} bytes, gzip {zipped} bytes")
    return 0


def _load_data(path):
    """The arrays of a `.npz` data file: `x`, `y` and, when present, `x_val`, `y_val`."""
    import numpy as np

    if not os.path.isfile(path):
        raise ValueError(f"no such data file: {path}")
    try:
        data = np.load(path)
    except Exception as error:
        raise ValueError(f"cannot read {path} as .npz: {type(error).__name__}") from None
    keys = set(getattr(data, "files", []))
    missing = [k for k in ("x", "y") if k not in keys]
    if missing:
        raise ValueError(f"{path} lacks {' and '.join(repr(k) for k in missing)} (has {sorted(keys)})")
    if ("x_val" in keys) != ("y_val" in keys):
        raise ValueError(f"{path} has one of 'x_val' and 'y_val' without the other")
    found = {key: data[key] for key in ("x", "y", "x_val", "y_val") if key in keys}
    for x, y in (("x", "y"), ("x_val", "y_val")):
        if x in found and len(found[x]) != len(found[y]):
            raise ValueError(f"{path}: '{x}' has {len(found[x])} rows and '{y}' {len(found[y])}")
    return found


def _evaluation(data):
    """`(x, y)` to measure on: the validation arrays when present."""
    if "x_val" in data:
        return data["x_val"], data["y_val"]
    return data["x"], data["y"]


def sensitivity_command(args):
    import json

    if (args.scope_out or args.recipe_out) and args.budget is None:
        return _fail("--scope-out and --recipe-out write an allocation: give --budget")
    if args.budget is not None and not 0.0 <= args.budget < 1.0:
        return _fail(f"--budget must be an overall sparsity in [0, 1): {args.budget}")
    args.plot = _image_path(args.plot)
    for flag in ("csv", "plot", "scope_out", "recipe_out"):
        path = getattr(args, flag)
        problem = path and _output_problem(path, f"--{flag.replace('_', '-')}", suffixes=())
        if problem:
            return _fail(problem)
    try:
        x, y = _evaluation(_load_data(args.data))
        sparsities = [float(s) for s in args.sparsities.split(",")]
    except ValueError as error:
        return _fail(str(error))
    model, code = _load(args.model)
    if model is None:
        return code
    from tfprune import cloning
    from tfprune.sensitivity import sensitivity

    model = _plain(model)
    if args.scope_out and args.granularity == "filter" and cloning.is_graph_model(model):
        return _fail(
            "--scope-out writes a {layer: sparsity} scope, and with --granularity filter the rows "
            "are coupled channel groups, not layers: use --recipe-out"
        )
    try:
        result = sensitivity(
            model, x, y, sparsities=sparsities, granularity=args.granularity,
            verbose=0 if args.quiet else 1,
        )  # fmt: skip
        scope = None if args.budget is None else result.allocate(args.budget)
    except ValueError as error:
        return _fail(_message(error))
    print(result.table())
    try:
        if args.csv:
            result.to_csv(args.csv)
            print(f"csv: {args.csv}")
        if args.plot:
            result.plot(args.plot)
            print(f"plot: {args.plot}")
        if scope is not None:
            print(f"per-layer sparsities for {args.budget:.0%} overall: {scope}")
            if args.scope_out:
                with open(args.scope_out, "w") as f:
                    json.dump(scope, f, indent=1)
                print(f"scope: {args.scope_out}")
            if args.recipe_out:
                from tfprune import recipes

                recipe = recipes.from_sensitivity(scope, args.budget, args.granularity, result.groups)
                recipe.save(args.recipe_out)
                print(f"recipe: {args.recipe_out}")
    except OSError as error:
        return _fail(f"cannot write: {_message(error)}")
    return 0


def prune_command(args):
    from tfprune import recipes, sparsity

    problem = _output_problem(args.out, suffixes=_KERAS_FILES)
    if problem:
        return _fail(problem)
    try:
        data = _load_data(args.data)
        recipe = recipes.load(args.recipe)
    except ValueError as error:
        return _fail(_message(error))
    model, code = _load(args.model)
    if model is None:
        return code
    from tfprune.sensitivity import measure

    x, y = _evaluation(data)
    plain = _plain(model)  # wrappers a saved model still holds: stripped, masks applied
    if getattr(model, "compiled", False) and not getattr(plain, "compiled", False):
        plain.compile_from_config(model.get_compile_config())  # the loss the recipe may take
    validation = (data["x_val"], data["y_val"]) if "x_val" in data else None
    try:
        before, name = measure(plain, x, y)
        result, _ = recipe.run(
            plain, data["x"], data["y"], validation_data=validation, verbose=0 if args.quiet else 2
        )
        after, _ = measure(result, x, y)
    except ValueError as error:
        return _fail(_message(error))
    print(sparsity.format_table(sparsity.sparsity_table(result), "table"))
    on = "validation" if validation else "training"
    print(f"{name} on the {on} data: {before:.4f} before, {after:.4f} after")
    print(f"parameters: {plain.count_params()} before, {result.count_params()} after")
    problem = _save(result, args.out)
    if problem:
        return _fail(problem)
    raw, zipped = _sizes(args.out)
    print(f"{args.out}: {raw} bytes, gzip {zipped} bytes")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tfprune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    demo_parser = sub.add_parser(
        "demo",
        help="prune a small CNN on digits to 90%% with AGP",
        description="Trains a small CNN on scikit-learn's digits, prunes a copy with AGP while "
        "fine-tuning, and prints per-layer sparsity, test accuracy and weight sizes (raw "
        "and gzip), dense vs pruned.",
    )
    demo_parser.add_argument("--epochs", type=int, default=20, help="dense training epochs")
    demo_parser.add_argument("--prune-epochs", type=int, default=20, help="pruning epochs")
    demo_parser.add_argument("--final-sparsity", type=float, default=0.9)
    inspect_parser = sub.add_parser(
        "inspect",
        help="sparsity table of a saved .keras model",
        description="Per weight: shape, parameters, non-zeros, element sparsity, zero "
        "filters/channels/rows; totals and the plain model's .keras size (no optimizer state), raw "
        "and gzip. Pruning "
        "wrappers are stripped and L0 gates folded first.",
    )
    inspect_parser.add_argument("model", help="a .keras file")
    inspect_parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    inspect_parser.add_argument(
        "--xnnpack",
        action="store_true",
        help="instead: whether the model meets XNNPACK's sparse-inference conditions (a 3x3 "
        "stride-2 stem on 3 channels, 1x1 convs more than 2/3 zeros, a spatial mean at the "
        "end, only supported ops between) and which layer breaks which",
    )
    schedule_parser = sub.add_parser(
        "schedule",
        help="a schedule's sparsity at its pruning steps, and a plot",
        description="Prints the steps where masks update and the sparsity each sets "
        "(as a training run would see them), from flags or a JSON/YAML config "
        "(`{\"schedule\": \"polynomial\", \"final_sparsity\": 0.9, ...}` or a saved "
        "schedule's `{\"class_name\": ..., \"config\": ...}`); --plot writes the curve.",
    )
    schedule_parser.add_argument("name", nargs="?", choices=SCHEDULE_TYPES)
    schedule_parser.add_argument("--config", help="a JSON or YAML file describing the schedule")
    for flag in ("target-sparsity", "initial-sparsity", "final-sparsity", "rate", "power"):
        schedule_parser.add_argument(f"--{flag}", type=float)
    for flag in ("begin-step", "end-step", "frequency"):
        schedule_parser.add_argument(f"--{flag}", type=int)
    schedule_parser.add_argument("--steps", type=int, help="last step shown (default: the end)")
    schedule_parser.add_argument("--plot", help="write the curve to this PNG file")
    strip_parser = sub.add_parser(
        "strip", help="save a plain model: pruning wrappers stripped, L0 gates folded"
    )
    strip_parser.add_argument("model", help="a .keras file")
    strip_parser.add_argument("--out", required=True, help="the .keras file to write")
    export_parser = sub.add_parser(
        "export",
        help="export a plain model to .keras, a SavedModel or .tflite",
        description="Strips wrappers and folds gates, then exports; prints the result's "
        "size raw and gzip. --sparse writes TFLite's sparse weight encoding "
        "(tf.lite.Optimize.EXPERIMENTAL_SPARSITY).",
    )
    export_parser.add_argument("model", help="a .keras file")
    export_parser.add_argument("--format", choices=("keras", "savedmodel", "tflite"), required=True)
    export_parser.add_argument("--out", required=True, help="file (or directory) to write")
    export_parser.add_argument("--sparse", action="store_true", help="TFLite sparse encoding")
    sens = sub.add_parser(
        "sensitivity",
        help="prune each layer alone over a sweep of sparsities and evaluate",
        description="Prints the metric (accuracy for class labels, else -MSE) of the model "
        "with each layer alone pruned by magnitude at each sparsity; --csv and --plot "
        "write them; --budget turns them into per-layer sparsities reaching that overall "
        "sparsity (a {layer: sparsity} scope for tfprune.prune); --recipe-out writes them "
        "as a recipe for `tfprune prune`. --granularity filter removes whole channels: "
        "on a Sequential or Functional model one coupled group of the dependency graph "
        "at a time (producers, normalizations and readers together).",
    )
    sens.add_argument("model", help="a .keras file")
    sens.add_argument("--data", required=True, help=".npz with x, y (x_val, y_val used if present)")
    sens.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    sens.add_argument("--granularity", choices=("element", "filter"), default="element")
    sens.add_argument("--csv", help="write the measurements to this CSV file")
    sens.add_argument("--plot", help="write metric vs sparsity per layer to this PNG file")
    sens.add_argument("--budget", type=float, help="overall sparsity to allocate")
    sens.add_argument("--scope-out", help="write the allocated {layer: sparsity} to this JSON")
    sens.add_argument("--recipe-out", help="write a recipe pruning to the allocation (YAML/JSON)")
    sens.add_argument("--quiet", action="store_true", help="no progress bar")
    prune_parser = sub.add_parser(
        "prune",
        help="prune and fine-tune a saved model by a recipe",
        description="Applies a recipe (YAML or JSON: pruners, regularizers, training; see "
        "examples/recipes/) to the model, trains it on x, y (validating on x_val, y_val "
        "when present), prints the sparsity table and the metric before and after, and "
        "saves the plain (stripped, or thinned) model.",
    )
    prune_parser.add_argument("model", help="a .keras file")
    prune_parser.add_argument("--data", required=True, help=".npz with x, y (and x_val, y_val)")
    prune_parser.add_argument("--recipe", required=True, help="a .yaml, .yml or .json recipe")
    prune_parser.add_argument("--out", required=True, help="the .keras file to write")
    prune_parser.add_argument("--quiet", action="store_true", help="no training log")
    args = parser.parse_args(argv)
    _quiet()
    if args.command in (None, "demo"):
        from tfprune import demo

        options = {k: getattr(args, k, d) for k, d in
                   (("epochs", 20), ("prune_epochs", 20), ("final_sparsity", 0.9))}  # fmt: skip
        try:
            demo.main(**options)
        except ValueError as error:
            return _fail(_message(error))
        return 0
    if args.command == "inspect":
        return inspect(args)
    if args.command == "sensitivity":
        return sensitivity_command(args)
    if args.command == "prune":
        return prune_command(args)
    if args.command == "strip":
        return strip_command(args)
    if args.command == "export":
        return export_command(args)
    if args.command == "schedule":
        if not args.name and not args.config:
            return _fail("give a schedule name (e.g. `polynomial`) or --config FILE")
        return schedule_command(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
