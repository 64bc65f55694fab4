"""Recipes: a whole pruning job in one YAML or JSON file.

In the spirit of Distiller's compression schedules: named pruners and
regularizers, each with the layers it acts on, and policies by step or by
epoch. A recipe maps onto tfprune objects (`tfprune.prune`, the schedules,
`tfprune.regularize`, `tfprune.add_l0_gates`) and callbacks
(`UpdatePruningStep`, `SoftThreshold`), and is checked before anything is
touched: an unknown key, a bad value or a layer pattern matching nothing
raises `RecipeError` (a `ValueError`) naming where in the recipe it is.

    version: 1
    pruners:
      convs:                      # any name
        layers: ["conv.*"]        # regular expressions, matched in full against
                                  # the names of the layers tfprune.prune wraps
                                  # (nested Sequential/Functional models followed;
                                  # a custom block, e.g. a KerasHub transformer
                                  # layer, is one); default: applied last, every
                                  # layer the other pruners did not wrap
        criterion: magnitude      # and any other argument of tfprune.prune:
        granularity: filter       # granularity, scope, reduction, min_sparsity,
        schedule:                 # max_sparsity, budget, round_to, seed, ...
          type: polynomial        # constant | polynomial | exponential | agp
          final_sparsity: 0.5
          begin_epoch: 0          # or begin_step
          end_epoch: 3            # or end_step
          frequency: 10           # steps (or frequency_epochs)
    regularizers:
      lasso:
        type: group_lasso         # l1 | group_lasso | l0
        strength: 1.0e-4
        granularity: filter
        layers: ["dense.*"]
        proximal: true            # soft thresholding after every update
        begin_epoch: 1            # its policy: epochs (or steps) 1 up to 3,
        end_epoch: 3              # end excluded (default: the whole run)
    training:
      epochs: 4
      batch_size: 32
      optimizer: adam             # a Keras identifier or {class_name, config}
      learning_rate: 1.0e-3
      loss: sparse_categorical_crossentropy   # default: the model's own
      metrics: [accuracy]
    thin: false                   # also remove pruned channels (tfprune.thin)

Epochs become steps with the run's steps per epoch (`ceil(samples /
batch_size)`), so `begin_epoch: 1` starts pruning after the first epoch.

Example:
>>> recipe = Recipe.from_config({"pruners": {"all": {"schedule": {
...     "type": "constant", "target_sparsity": 0.5, "begin_step": 0, "frequency": 1}}}})
>>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d")])
>>> pruned = recipe.apply(model, steps_per_epoch=10)
>>> [layer.name for layer in pruned.layers]
['prune_low_magnitude_d']
"""

import contextlib
import inspect
import json
import math
import os
import re
import warnings

import keras

from tfprune import checks

# Schedule types by their short names, with the arguments each takes.
SCHEDULES = {
    "constant": ("ConstantSparsity", ("target_sparsity", "begin_step", "end_step", "frequency")),
    "polynomial": (
        "PolynomialDecay",
        ("initial_sparsity", "final_sparsity", "begin_step", "end_step", "power", "frequency"),
    ),
    "exponential": (
        "ExponentialDecay",
        ("final_sparsity", "rate", "begin_step", "end_step", "frequency", "initial_sparsity"),
    ),
    "agp": ("AGP", ("final_sparsity", "begin_step", "end_step", "frequency", "initial_sparsity")),
}
_FLOATS = {"target_sparsity", "initial_sparsity", "final_sparsity", "power", "rate"}
_IN_EPOCHS = {"begin_epoch": "begin_step", "end_epoch": "end_step", "frequency_epochs": "frequency"}

# A regularizer's policy: the steps (or epochs) it applies in, end excluded.
WINDOW = ("begin_step", "end_step", "begin_epoch", "end_epoch")
REGULARIZERS = {
    "l1": ("strength", "layers", "proximal", *WINDOW),
    "group_lasso": ("strength", "granularity", "layers", "proximal", *WINDOW),
    "l0": ("strength", "droprate_init", "seed"),
}
TRAINING = ("epochs", "batch_size", "optimizer", "learning_rate", "loss", "metrics")
TOP = ("version", "pruners", "regularizers", "training", "thin")
# `tfprune.prune` arguments a pruner may set (besides `layers` and `schedule`).
_NOT_IN_RECIPES = {"to_prune", "pruning_schedule", "layers", "pruning_policy"}


class RecipeError(ValueError):
    """A recipe that cannot be applied; the message says where and why."""


def _fail(where, message):
    raise RecipeError(f"recipe: {where}: {message}" if where else f"recipe: {message}")


@contextlib.contextmanager
def _located(where):
    """Turns a `ValueError`/`TypeError` raised inside into a `RecipeError`
    naming the entry `where`, with the error's first line."""
    try:
        yield
    except RecipeError:
        raise
    except (ValueError, TypeError) as error:
        raise RecipeError(f"recipe: {where}: {str(error).splitlines()[0]}") from error


def _mapping(value, where):
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping. Received: {value!r}")
    return value


def _known(config, allowed, where):
    unknown = [key for key in config if key not in allowed]
    if unknown:
        _fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")


def _pruner_arguments():
    from tfprune import api

    names = inspect.signature(api.prune).parameters
    return tuple(name for name in names if name not in _NOT_IN_RECIPES)


def schedule_from_config(config, steps_per_epoch=None, where="schedule", check_only=False):
    """A `PruningSchedule` from `{"type": "polynomial", ...}` (or a saved
    schedule's `{"class_name": ..., "config": ...}`).

    `begin_epoch`, `end_epoch` and `frequency_epochs` are converted with
    `steps_per_epoch`; each may be given in steps or in epochs, not both.
    With `check_only`, a schedule in epochs is checked for its keys and
    types only (its values are checked once the steps per epoch are known).
    """
    from tfprune import schedules

    config = _mapping(config, where)
    if "class_name" in config:  # a Keras-serialized schedule
        with _located(where):
            return schedules.get(config)
    config = dict(config)
    name = config.pop("type", None)
    if name not in SCHEDULES:
        _fail(where, f"`type` must be one of {', '.join(SCHEDULES)}. Received: type={name!r}")
    class_name, allowed = SCHEDULES[name]
    _known(config, ("type", *allowed, *(k for k, v in _IN_EPOCHS.items() if v in allowed)), where)
    values = {}
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"`{key}` must be a number. Received: {key}={value!r}")
        if key in _IN_EPOCHS:
            step_key = _IN_EPOCHS[key]
            if step_key in config:
                _fail(where, f"give `{key}` or `{step_key}`, not both")
            if key == "end_epoch" and value == -1:  # as `end_step: -1`: never ends
                values[step_key] = -1
                continue
            if value < 0:
                _fail(where, f"`{key}` must be >= 0. Received: {key}={value!r}")
            if check_only and steps_per_epoch is None:
                continue
            if steps_per_epoch is None:
                _fail(where, f"`{key}` needs the steps per epoch of a training run")
            steps = value * steps_per_epoch
            values[step_key] = max(int(round(steps)), 1 if key == "frequency_epochs" else 0)
        elif key in _FLOATS:
            values[key] = float(value)
        elif value != int(value):
            _fail(where, f"`{key}` must be a whole number of steps. Received: {key}={value!r}")
        else:
            values[key] = int(value)
    if check_only and steps_per_epoch is None and set(config) & set(_IN_EPOCHS):
        return None
    with _located(where), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a window shorter than `frequency`: refused below
        schedule = getattr(schedules, class_name)(**values)
    begin, end, frequency = schedule.begin_step, schedule.end_step, schedule.frequency
    if name != "constant" and begin < end < begin + frequency:
        _fail(
            where,
            f"`frequency` ({frequency} steps) is longer than the pruning window, steps {begin} "
            f"to {end}: masks would update at step {begin} only, at the initial sparsity, "
            "and never reach the final one; give a smaller `frequency` (or `frequency_epochs`)",
        )
    return schedule


def read_mapping(path, kind="recipe"):
    """The mapping in a `.yaml`/`.yml` or `.json` file; a `RecipeError`
    starting with `kind` when the file is missing, unreadable or not a mapping."""
    if not os.path.isfile(path):
        raise RecipeError(f"{kind}: no such file: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except Exception as error:  # the parser's own message, on one line
        raise RecipeError(f"{kind}: cannot parse {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise RecipeError(f"{kind}: {path} does not hold a mapping")
    return config


def load(path):
    """The recipe in a `.yaml`/`.yml` or `.json` file."""
    return Recipe.from_config(read_mapping(path))


class Recipe:
    """A parsed, checked recipe (see the module docstring).

    `apply(model, steps_per_epoch)` returns the model set up for training
    (gated, regularized, wrapped); `callbacks(steps_per_epoch)` the callbacks it needs;
    `run(model, x, y)` does all of it, trains, and returns the plain model.
    """

    def __init__(self, pruners, regularizers, training, thin):
        self.pruners = pruners
        self.regularizers = regularizers
        self.training = training
        self.thin = thin
        self._made = {}  # by `apply`: the regularizer objects attached, by entry name

    @classmethod
    def from_config(cls, config):
        config = _mapping(config, "")
        _known(config, TOP, "")
        version = config.get("version", 1)
        if isinstance(version, bool) or version != 1:
            _fail("version", f"must be 1. Received: version={version!r}")
        pruners = _mapping(config.get("pruners", {}) or {}, "pruners")
        regularizers = _mapping(config.get("regularizers", {}) or {}, "regularizers")
        if not pruners and not regularizers:
            _fail("", "needs at least one entry under `pruners` or `regularizers`")
        allowed = ("layers", "schedule", *_pruner_arguments())
        for name, pruner in pruners.items():
            where = f"pruners.{name}"
            _known(_mapping(pruner, where), allowed, where)
            if "schedule" not in pruner:
                _fail(where, "needs a `schedule`")
            _patterns(pruner.get("layers"), where)
            schedule_from_config(pruner["schedule"], None, f"{where}.schedule", check_only=True)
            _pruner_options(pruner, where, check_only=True)
        open_ended = [name for name, p in pruners.items() if p.get("layers") is None]
        if len(open_ended) > 1:
            _fail(
                "pruners",
                "only one pruner may leave out `layers` (it takes the layers the others do not "
                f"name). Received: {open_ended}",
            )
        for name, regularizer in regularizers.items():
            where = f"regularizers.{name}"
            kind = _mapping(regularizer, where).get("type")
            if kind not in REGULARIZERS:
                _fail(where, f"`type` must be one of {', '.join(REGULARIZERS)}. Received: type={kind!r}")
            _known(regularizer, ("type", *REGULARIZERS[kind]), where)
            _patterns(regularizer.get("layers"), where)
            _make_regularizer(regularizer, where)  # checks values
            if kind == "l0":
                _l0_options(regularizer, where)
            if not isinstance(regularizer.get("proximal", False), bool):
                _fail(where, f"`proximal` must be true or false. Received: proximal={regularizer['proximal']!r}")
            _window(regularizer, None, where, check_only=True)
        l0 = [name for name, r in regularizers.items() if r["type"] == "l0"]
        if len(l0) > 1:
            _fail("regularizers", f"one `l0` entry gates the whole model. Received: {l0}")
        training = _mapping(config.get("training", {}) or {}, "training")
        _known(training, TRAINING, "training")
        for key in ("epochs", "batch_size"):
            value = training.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail("training", f"`{key}` must be a positive integer. Received: {key}={value!r}")
        rate = training.get("learning_rate", 1.0)
        if not checks.is_finite_number(rate) or rate <= 0:
            _fail("training", f"`learning_rate` must be a finite number > 0. Received: learning_rate={rate!r}")
        if "optimizer" in training:
            with _located("training.optimizer"):
                keras.optimizers.get(training["optimizer"])  # an identifier Keras knows
        thin = config.get("thin", False)
        if not isinstance(thin, bool):
            _fail("thin", f"must be true or false. Received: thin={thin!r}")
        return cls(pruners, regularizers, training, thin)

    def get_config(self):
        return {
            "version": 1,
            "pruners": self.pruners,
            "regularizers": self.regularizers,
            "training": self.training,
            "thin": self.thin,
        }

    def save(self, path):
        """Writes the recipe as YAML (`.yaml`/`.yml`) or JSON."""
        with open(path, "w", encoding="utf-8") as f:
            if path.endswith((".yaml", ".yml")):
                import yaml

                yaml.safe_dump(self.get_config(), f, sort_keys=False)
            else:
                json.dump(self.get_config(), f, indent=1)

    def _layer_names(self, model):
        """`{entry: [layer names]}` for every pruner and regularizer naming
        layers; raises if a pattern matches nothing or two pruners claim a layer."""
        from tfprune import cloning
        from tfprune import layers as layer_specs

        def units(graph):  # what `tfprune.prune` wraps: a graph's layers, nested graphs followed
            for layer in graph.layers:
                if cloning.is_graph_model(layer):
                    yield from units(layer)
                elif layer_specs.prunable_weights(layer) or (
                    not layer.built and layer_specs.has_prunable_weights(layer)
                ):
                    yield layer.name

        if cloning.is_graph_model(model):
            candidates = list(dict.fromkeys(units(model)))
        else:  # a subclassed model: any layer with prunable weights, once per name
            candidates = list(dict.fromkeys(
                layer.name
                for layer in model._flatten_layers(include_self=False, recursive=True)
                if layer_specs.prunable_weights(layer)
            ))  # fmt: skip
        chosen, claimed = {}, {}
        entries = [(f"pruners.{n}", p) for n, p in self.pruners.items()]
        entries += [(f"regularizers.{n}", r) for n, r in self.regularizers.items()]
        for where, entry in entries:
            patterns = entry.get("layers")
            if patterns is None:
                continue
            names = []
            for pattern in _patterns(patterns, where):
                matched = [n for n in candidates if re.fullmatch(pattern, n)]
                if not matched:
                    _fail(
                        f"{where}.layers",
                        f"{pattern!r} matches no layer with prunable weights "
                        f"(they are: {', '.join(candidates)})",
                    )
                names += [n for n in matched if n not in names]
            chosen[where] = names
            if where.startswith("pruners."):
                for name in names:
                    if name in claimed:
                        _fail(f"{where}.layers", f"layer {name!r} is pruned by {claimed[name]} too")
                    claimed[name] = where
        for where, entry in entries:
            if where.startswith("pruners.") and entry.get("layers") is None:
                rest = [n for n in candidates if n not in claimed]
                if not rest:
                    _fail(where, "every layer is named by another pruner; give `layers`")
                chosen[where] = rest
        return chosen

    def apply(self, model, steps_per_epoch=None):
        """A copy of `model` set up for training by the recipe: gated, wrapped
        and regularized (the input model is left as it was)."""
        from tfprune import api, cloning
        from tfprune.l0 import add_l0_gates
        from tfprune.regularizers import regularize
        from tfprune.wrapper import collect_prunable_layers

        names = self._layer_names(model)  # checks before anything is touched
        schedules = {
            name: schedule_from_config(p["schedule"], steps_per_epoch, f"pruners.{name}.schedule")
            for name, p in self.pruners.items()
        }
        if not self.pruners and not any(r["type"] == "l0" for r in self.regularizers.values()):
            if not cloning.is_graph_model(model):
                _fail("regularizers", "without pruners a recipe needs a Sequential or Functional model")
            model = cloning.copy_model(model, lambda copy, layer: copy)  # weights included
        for entry in self.regularizers.values():
            if entry["type"] == "l0":
                model = add_l0_gates(model, **_l0_options(entry, "regularizers"))
        owners = {}  # layer name -> the pruner entry wrapping it
        # The pruner without `layers` goes last and takes what the others left.
        order = sorted(self.pruners.items(), key=lambda item: item[1].get("layers") is None)
        for name, entry in order:
            where = f"pruners.{name}"
            if entry.get("layers") is None:
                names[where] = [n for n in names[where] if n not in owners]
                if not names[where]:
                    _fail(where, "the other pruners wrap every layer; give `layers`")
            taken = [n for n in names[where] if n in owners]
            if taken:
                _fail(
                    f"{where}.layers",
                    f"layer {taken[0]!r} is already pruned by {owners[taken[0]]} (its channels "
                    "are coupled to the layers that pruner names); a layer has one pruner",
                )
            with _located(where):
                model = api.prune(
                    model, schedules[name], layers=names[where], **_pruner_options(entry, where)
                )
            wrapped = {wrapper.layer.name for wrapper in collect_prunable_layers(model)}
            lost = sorted(set(owners) - wrapped)
            if lost:  # a model rebuilt from its constructor arguments keeps one pruner's wrappers
                _fail(
                    f"{where}",
                    f"pruning model '{model.name}' ({type(model).__name__}) again dropped the "
                    f"wrappers of {owners[lost[0]]} (layer {lost[0]!r}); give this model one pruner",
                )
            for layer_name in wrapped:
                owners.setdefault(layer_name, where)
        self._made = {}
        for name, entry in self.regularizers.items():
            if entry["type"] != "l0":
                where = f"regularizers.{name}"
                self._made[name] = _make_regularizer(entry, where)
                with _located(where):
                    regularize(model, self._made[name], layers=names.get(where))
        return model

    def callbacks(self, steps_per_epoch=None):
        """The callbacks training the model `apply` returned needs: pruning
        steps, regularizers' windows (`steps_per_epoch` converts epochs), and
        the proximal steps."""
        from tfprune.callbacks import UpdatePruningStep
        from tfprune.regularizers import RegularizationWindow, SoftThreshold

        found = [UpdatePruningStep()] if self.pruners else []
        for name, entry in self.regularizers.items():
            window = _window(entry, steps_per_epoch, f"regularizers.{name}")
            if window is not None:
                if name not in self._made:
                    _fail(f"regularizers.{name}", "call `apply` before `callbacks`")
                found.append(RegularizationWindow(self._made[name], *window))
        if any(r.get("proximal") for r in self.regularizers.values()):
            found.append(SoftThreshold())  # after the windows (see RegularizationWindow)
        return found

    def _compile_arguments(self, like):
        """`model.compile`'s loss, loss weights and metrics: the recipe's, or
        where it gives none, fresh copies of those `like` was compiled with."""
        inherited = {}
        if like is not None and getattr(like, "compiled", False):
            config = like.get_compile_config()
            try:
                config = keras.saving.deserialize_keras_object(config)
            except Exception:  # an unregistered custom object: the objects themselves
                config = dict(like._compile_config.config)
            inherited = {k: config.get(k) for k in ("loss", "loss_weights", "metrics", "weighted_metrics")}
        arguments = dict(inherited)
        if "loss" in self.training:
            loss = self.training["loss"]
            if isinstance(loss, dict) and "class_name" in loss:  # a serialized loss
                loss = keras.losses.get(loss)
            arguments.update(loss=loss, loss_weights=None)
        if "metrics" in self.training:
            arguments.update(metrics=self.training["metrics"], weighted_metrics=None)
        if arguments.get("loss") is None:
            _fail("training", "needs a `loss`: the model has no compiled loss")
        return arguments

    def compile(self, model, like=None):
        """Compiles `model` with the recipe's optimizer, loss and metrics (loss,
        loss weights and metrics default to those `like` was compiled with)."""
        arguments = self._compile_arguments(like)
        optimizer = keras.optimizers.get(self.training.get("optimizer", "adam"))
        if "learning_rate" in self.training:
            optimizer.learning_rate = float(self.training["learning_rate"])
        model.compile(optimizer, **arguments)
        return model

    def run(self, model, x, y, validation_data=None, verbose=1):
        """Applies the recipe to `model`, trains it on `(x, y)` and returns
        `(plain model, history)`: wrappers stripped, gates folded (and
        channels removed when the recipe says `thin: true`)."""
        from tfprune import thinning

        self._compile_arguments(model)  # the loss is checked before anything is built
        batch_size = self.training.get("batch_size", 32)
        samples = len(keras.tree.flatten(y)[0])  # `y` may be a list or dict of outputs
        steps_per_epoch = math.ceil(samples / batch_size)
        pruned = self.apply(model, steps_per_epoch)
        self.compile(pruned, like=model)
        history = pruned.fit(
            x, y, batch_size=batch_size, epochs=self.training.get("epochs", 1),
            validation_data=validation_data, callbacks=self.callbacks(steps_per_epoch),
            verbose=verbose,
        )  # fmt: skip
        plain = thinning.thin(pruned) if self.thin else thinning.plain(pruned)
        return plain, history


def _patterns(patterns, where):
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        _fail(f"{where}.layers", f"must be a list of regular expressions. Received: {patterns!r}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            _fail(f"{where}.layers", f"{pattern!r} is not a regular expression: {error}")
    return patterns


def _pruner_options(entry, where, check_only=False):
    """The keyword arguments of `tfprune.prune` a pruner entry gives (lists as
    tuples); with `check_only`, those that need no model are checked."""
    from tfprune import api

    options = {k: _tuples(v) for k, v in entry.items() if k not in ("layers", "schedule")}
    if check_only:
        with _located(where):
            api.check_arguments(**options)
    return options


def _l0_options(entry, where):
    """The keyword arguments of `add_l0_gates` an `l0` entry gives, checked."""
    from tfprune import l0

    options = {
        "l0_strength": entry.get("strength", 1e-3),
        "droprate_init": entry.get("droprate_init", 0.5),
        "seed": entry.get("seed"),
    }
    with _located(where):
        l0.check_gate_arguments(temperature=l0.BETA, **options)
    return options


def _window(entry, steps_per_epoch, where, check_only=False):
    """`(begin_step, end_step)` of a regularizer's policy, or None (always).

    With `check_only` (no steps per epoch yet), values are checked and the
    order of the edges only where both are in the same unit."""
    if not any(key in entry for key in WINDOW):
        return None
    bounds, units = [], []
    for edge, default in (("begin", 0), ("end", -1)):
        step, epoch = entry.get(f"{edge}_step"), entry.get(f"{edge}_epoch")
        if step is not None and epoch is not None:
            _fail(where, f"give `{edge}_epoch` or `{edge}_step`, not both")
        value = epoch if step is None else step
        key = f"{edge}_epoch" if step is None else f"{edge}_step"
        if value is None:
            bounds.append(default)
            units.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            _fail(where, f"`{key}` must be a number >= 0. Received: {key}={value!r}")
        if step is None:
            if check_only:
                bounds.append(value)
                units.append("epochs")
                continue
            if steps_per_epoch is None:
                _fail(where, f"`{key}` needs the steps per epoch of a training run")
            value = value * steps_per_epoch
        elif value != int(value):
            _fail(where, f"`{key}` must be a whole number of steps. Received: {key}={value!r}")
        bounds.append(int(round(value)))
        units.append("steps")
    comparable = not check_only or units[0] in (None, units[1])
    if bounds[1] != -1 and comparable and bounds[1] <= bounds[0]:
        unit = "epochs" if "epochs" in units else "steps"
        _fail(where, f"the window ends before it begins ({unit} {bounds[0]} to {bounds[1]})")
    return None if check_only else tuple(bounds)


def _tuples(value):
    return tuple(value) if isinstance(value, list) else value


def _make_regularizer(entry, where):
    from tfprune import regularizers

    strength = entry.get("strength", 1e-4)
    with _located(where):
        if entry["type"] == "l1":
            return regularizers.L1(strength)
        if entry["type"] == "group_lasso":
            return regularizers.GroupLasso(strength, entry.get("granularity", "filter"))
        from tfprune.l0 import L0Penalty

        return L0Penalty(strength)


def from_sensitivity(scope, target, granularity="element", groups=None, epochs=3):
    """A recipe pruning to the sparsities of `Sensitivity.allocate(target)`,
    polynomially over the first `epochs - 1` epochs (masks updated ten times
    an epoch), then fine-tuning one more.

    Element (and per-layer filter) allocations become a `{layer: sparsity}`
    scope. Coupled channel groups (`groups`: `Sensitivity.groups`, each row's
    producer layers) become a layer-wise channel pruner whose `max_sparsity`
    holds each group at its allocation while the schedule rises to the largest.
    """
    chosen = {name: float(s) for name, s in scope.items() if s > 0}
    if not chosen:
        raise ValueError(f"Argument `scope` prunes no layer. Received: scope={scope!r}")
    end = max(epochs - 1, 1)
    schedule = {
        "type": "polynomial", "initial_sparsity": 0.0, "final_sparsity": float(target),
        "begin_epoch": 0, "end_epoch": end, "frequency_epochs": 0.1,
    }  # fmt: skip
    if groups is None:
        pruner = {"granularity": granularity, "scope": chosen}
        layers = list(chosen)
    else:
        limits = {layer: s for name, s in chosen.items() for layer in groups[name]}
        pruner = {"granularity": "filter", "max_sparsity": limits}
        layers = list(limits)
        schedule["final_sparsity"] = max(chosen.values())
    pruner = {"layers": [re.escape(layer) for layer in layers], **pruner, "schedule": schedule}
    return Recipe.from_config(
        {"pruners": {"sensitivity": pruner}, "training": {"epochs": epochs, "batch_size": 32}}
    )
