"""Pruning schedules: pure functions of the training step.

A schedule maps a step to `(should_prune, sparsity)`. The math is written once
against the `keras.ops` API and runs on whatever the step is: a backend tensor
(traced by `tf.function`, XLA, `jax.jit` or run eagerly by PyTorch) gives
backend tensors; a Python or NumPy integer gives NumPy values computed on the
host (no device op, no host round trip). Piecewise math uses `clip`/`where`,
never a Python branch on a tensor.

Determinism: the built-in schedules compute with `tfprune.exact`, correctly
rounded float32 operations that no graph rewriter changes, so the host and the
tensor path give the same bits on every backend and CPU, also under XLA and
`jax.jit`. `pow` is used only for a non-integer `power` of `PolynomialDecay`
and between pruning events of `ExponentialDecay` (values then agree to a few
ulps).

Subclass `PruningSchedule` and implement `__call__(step)` to write your own;
the protected helpers `_should_prune_in_step`, `_validate_step` and
`_validate_sparsity` have the same names and arguments as in TFMOT.
"""

import numbers
import warnings

import keras
import numpy as np
from keras import ops

from tfprune import checks, exact

_PACKAGE = "tfprune"


_is_int = checks.is_integer
_is_number = checks.is_number


def _check_int(name, value):
    if not _is_int(value):
        raise TypeError(
            f"Argument `{name}` must be an integer. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return int(value)


def _check_number(name, value):
    if not _is_number(value):
        raise TypeError(
            f"Argument `{name}` must be a number. "
            f"Received: {name}={value!r} of type {type(value).__name__}"
        )
    return float(value)


class _HostOps:
    """The `keras.ops` functions schedules use, computed by NumPy on the host."""

    @staticmethod
    def convert_to_tensor(x, dtype=None):
        return np.asarray(x, dtype=dtype)

    @staticmethod
    def cast(x, dtype):
        return np.asarray(x).astype(dtype)

    def __getattr__(self, name):  # logical_and, mod, power, clip, ... as in NumPy
        return getattr(np, name)


_HOST_OPS = _HostOps()


def _is_host_step(step):
    return isinstance(step, (numbers.Integral, np.ndarray, np.generic))


def _ops(step):
    """`keras.ops` for a tensor step; the same functions on NumPy for a host step."""
    return _HOST_OPS if _is_host_step(step) else ops


def _to_step(step):
    """Checks the step: a Python int or NumPy integer (kept on the host) or a tensor."""
    if isinstance(step, (bool, float, np.bool_, np.floating)):
        raise TypeError(
            f"Argument `step` must be an integer or an integer tensor. "
            f"Received: step={step!r}"
        )
    if _is_host_step(step):
        host = np.asarray(step)
        if host.dtype.kind not in "iu":
            raise TypeError(
                f"Argument `step` must be an integer or an integer tensor. "
                f"Received: step={step!r} of dtype {host.dtype}"
            )
        return host.astype("int64")
    return ops.convert_to_tensor(step)


def final_sparsity(schedule):
    """The sparsity a built-in schedule ends at (None if it does not say, or
    for no schedule)."""
    for name in ("final_sparsity", "target_sparsity"):
        if hasattr(schedule, name):
            return float(getattr(schedule, name))
    return None


class PruningSchedule:
    """Base class of pruning schedules: `step -> (should_prune, sparsity)`.

    `should_prune` is a boolean scalar saying whether masks are recomputed at
    this step; `sparsity` is a float32 scalar, the fraction of weights to
    remove (backend tensors for a tensor step, NumPy values for an integer
    step). Implement `__call__` and `get_config`.

    Example:
    >>> class Halfway(PruningSchedule):
    ...     def __call__(self, step):
    ...         return (self._should_prune_in_step(step, 0, -1, 10),
    ...                 keras.ops.convert_to_tensor(0.5, "float32"))
    ...     def get_config(self):
    ...         return {}
    >>> [bool(Halfway()(s)[0]) for s in (0, 5, 10)]
    [True, False, True]
    """

    @staticmethod
    def _should_prune_in_step(step, begin_step, end_step, frequency):
        """True at `begin_step + j * frequency` while `step <= end_step`.

        `end_step = -1` (any negative value) means "prune forever".
        """
        step = _to_step(step)
        xp = _ops(step)
        in_range = xp.logical_and(
            xp.greater_equal(step, begin_step),
            xp.logical_or(
                xp.less_equal(step, end_step),
                xp.convert_to_tensor(end_step < 0),
            ),
        )
        on_turn = xp.equal(xp.mod(step - begin_step, frequency), 0)
        return xp.logical_and(in_range, on_turn)

    @staticmethod
    def _validate_step(begin_step, end_step, frequency, allow_negative_1):
        """Checks step arguments; `allow_negative_1` permits `end_step=-1`.

        A schedule with an end should prune more than once within its window:
        when `end_step > begin_step` and `frequency` exceeds
        `end_step - begin_step`, a `UserWarning` names `frequency`: the only
        pruning step is `begin_step` and the end is never reached (`PolynomialDecay(0, 0.8, 0, 100,
        frequency=1000)` prunes at step 0 only, before the first training
        step). `end_step == begin_step` is a one-off prune at `begin_step` and is
        legal with any `frequency` (as in TFMOT); with `end_step=-1` there is no
        window to check.
        """
        begin_step = _check_int("begin_step", begin_step)
        end_step = _check_int("end_step", end_step)
        frequency = _check_int("frequency", frequency)
        if begin_step < 0:
            raise ValueError(
                "Argument `begin_step` must be >= 0. "
                f"Received: begin_step={begin_step}"
            )
        if end_step == -1 and not allow_negative_1:
            raise ValueError(
                "Argument `end_step` must be >= 0 (this schedule needs an "
                f"end). Received: end_step={end_step}"
            )
        if end_step < -1:
            raise ValueError(
                "Argument `end_step` must be -1 (no end) or >= 0. "
                f"Received: end_step={end_step}"
            )
        if end_step != -1 and end_step < begin_step:
            raise ValueError(
                "Argument `end_step` must be >= `begin_step` (or -1). "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        if frequency <= 0:
            raise ValueError(
                f"Argument `frequency` must be > 0. Received: frequency={frequency}"
            )
        if end_step > begin_step and frequency > end_step - begin_step:
            # A warning, not an error: TFMOT accepts such schedules (its own
            # tests build `PolynomialDecay(0.2, 0.8, 0, 10)` with frequency 100).
            warnings.warn(
                "Argument `frequency` should be <= end_step - begin_step "
                f"({end_step - begin_step}): this schedule prunes only at step "
                f"{begin_step}{' (before the first training step, 1: never inside fit)' if begin_step == 0 else ''}"
                " and never reaches its end (use end_step=begin_step "
                f"for a one-off prune). Received: frequency={frequency}, "
                f"begin_step={begin_step}, end_step={end_step}",
                UserWarning,
                stacklevel=3,
            )

    @staticmethod
    def _validate_sparsity(sparsity, variable_name):
        """Checks that `0 <= sparsity < 1`."""
        sparsity = _check_number(variable_name, sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(
                f"Argument `{variable_name}` must be in [0, 1). "
                f"Received: {variable_name}={sparsity}"
            )

    def __call__(self, step):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `__call__(step)` returning "
            "(should_prune, sparsity)."
        )

    def get_config(self):
        raise NotImplementedError(
            f"{type(self).__name__} must implement `get_config()`."
        )

    def _next_pruning_step(self, step):
        """The first step `>= step` at which this schedule prunes, -1 if none,
        or None when only calling the schedule can tell (any subclass that
        does not say otherwise). Lets the host skip the steps in between.
        """
        return None

    @classmethod
    def from_config(cls, config):
        """Builds a schedule from `get_config()`, also TFMOT's nested form."""
        config = dict(config)
        if set(config) == {"class_name", "config"}:
            config = dict(config["config"])
        return cls(**config)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        except NotImplementedError:
            args = "..."
        return f"{type(self).__name__}({args})"


class _RangeSchedule(PruningSchedule):
    """A schedule that prunes every `frequency` steps from `begin_step`.

    Subclasses give `_sparsity(step)` and list their constructor arguments in
    `_ARGS` (which is also their config).
    """

    _ARGS = ()

    @property
    def _last_pruning_step(self):
        return self.end_step

    def _sparsity(self, step):
        raise NotImplementedError

    def __call__(self, step):
        step = _to_step(step)
        should_prune = self._should_prune_in_step(
            step, self.begin_step, self._last_pruning_step, self.frequency
        )
        return should_prune, self._sparsity(step)

    def _next_pruning_step(self, step):
        """`begin + j * frequency >= step`, the first not after the last pruning
        step (-1 if none is left), as `__call__` decides."""
        if (
            type(self).__call__ is not _RangeSchedule.__call__
            or type(self)._should_prune_in_step is not PruningSchedule._should_prune_in_step
        ):
            return None  # a subclass decides otherwise
        turns = -(-max(step - self.begin_step, 0) // self.frequency)
        found = self.begin_step + turns * self.frequency
        last = self._last_pruning_step
        return found if last < 0 or found <= last else -1

    def get_config(self):
        return {name: getattr(self, name) for name in self._ARGS}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConstantSparsity(_RangeSchedule):
    """Constant sparsity, applied every `frequency` steps in a step range.

        should_prune(step) = begin <= step and (step <= end or end == -1)
                             and (step - begin) % frequency == 0
        sparsity(step) = target_sparsity

    Example:
    >>> s = ConstantSparsity(0.5, begin_step=0, frequency=100)
    >>> [(bool(s(t)[0]), float(s(t)[1])) for t in (0, 1, 100)]
    [(True, 0.5), (False, 0.5), (True, 0.5)]

    Args:
        target_sparsity: fraction of weights to prune, in [0, 1).
        begin_step: first step at which to prune.
        end_step: last step at which to prune; -1 to prune forever;
            `begin_step` for a one-off prune at `begin_step`.
        frequency: prune every `frequency` steps; a value larger than
            `end - begin` warns (the schedule would prune only at `begin`).
    """

    _ARGS = ("target_sparsity", "begin_step", "end_step", "frequency")

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        self._validate_sparsity(target_sparsity, "target_sparsity")
        self._validate_step(begin_step, end_step, frequency, True)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def _sparsity(self, step):
        xp = _ops(step)
        return xp.convert_to_tensor(self.target_sparsity, dtype="float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PolynomialDecay(_RangeSchedule):
    """Sparsity rising polynomially from `initial_sparsity` to `final_sparsity`.

        p = clip((step - begin) / (end - begin), 0, 1)
        sparsity = final + (initial - final) * (1 - p) ** power

    Masks are recomputed at `begin + j * frequency` up to `end`. If
    `end - begin` is not a multiple of `frequency`, the last mask update
    happens before `end`, so `final_sparsity` is never applied (use `AGP`).

    Values are computed with correctly rounded float32 operations only:
    `1 - p` as `(end - step)` times the reciprocal of `end - begin`, and an
    integer `power` (the default 3, or 1, 2, ...) by square-and-multiply. They
    are identical on the host and the tensor path, on every backend and CPU, and
    within 1e-6 of TFMOT's. A non-integer `power` multiplies in
    `pow(1 - p, frac(power))`, whose last bits may differ by a few ulps
    between libraries (NumPy, Eigen, XLA, PyTorch).

    Example:
    >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
    >>> [round(float(s(t)[1]), 4) for t in (0, 50, 100, 200)]
    [0.0, 0.7, 0.8, 0.8]
    >>> float(s(0)[1]), float(s(100)[1])  # exact at both ends
    (0.0, 0.800000011920929)

    Args:
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
        final_sparsity: sparsity from `end_step` on, in [0, 1).
        begin_step: first pruning step.
        end_step: step at which `final_sparsity` is reached; must be
            > `begin_step` (TFMOT divides by zero when they are equal).
        power: exponent of the polynomial (3 is the cubic of Zhu & Gupta).
        frequency: prune every `frequency` steps; a value larger than
            `end - begin` warns (the schedule would prune only at `begin`).
    """

    _ARGS = (
        "initial_sparsity", "final_sparsity", "begin_step", "end_step", "power", "frequency",
    )

    def __init__(
        self,
        initial_sparsity,
        final_sparsity,
        begin_step,
        end_step,
        power=3,
        frequency=100,
    ):
        self._validate_sparsity(initial_sparsity, "initial_sparsity")
        self._validate_sparsity(final_sparsity, "final_sparsity")
        self._validate_step(begin_step, end_step, frequency, False)
        if end_step == begin_step:
            raise ValueError(
                "Argument `end_step` must be > `begin_step` for PolynomialDecay "
                "(use ConstantSparsity for a one-off prune). "
                f"Received: end_step={end_step}, begin_step={begin_step}"
            )
        power = _check_number("power", power)
        if not power > 0 or power == float("inf"):  # NaN fails `> 0`
            raise ValueError(f"Argument `power` must be a finite number > 0. Received: power={power}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = int(power) if float(power).is_integer() else power
        self.frequency = int(frequency)

    def _sparsity(self, step):
        xp = _ops(step)
        span = self.end_step - self.begin_step
        one_minus_p = exact.fraction(xp, xp.clip(self.end_step - step, 0, span), span)
        decay = exact.static_power(xp, one_minus_p, self.power)
        return exact.interpolate(xp, self.initial_sparsity, self.final_sparsity, decay)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialDecay(_RangeSchedule):
    """Sparsity approaching `final_sparsity` geometrically.

    Every `frequency` steps the remaining density shrinks by a factor
    `(1 - rate)`, capped at `final_sparsity`:

        sparsity = min(final, 1 - (1 - initial) * (1 - rate) ** ((step - begin) / frequency))

    for `step >= begin` (`initial_sparsity` before). With
    `q, r = divmod(step - begin, frequency)`, the power is
    `(1 - rate) ** q * (1 - rate) ** (r / frequency)`: the first factor by
    square-and-multiply over the bits of `q` (the squares `(1 - rate) ** 2 ** i`
    are computed on the host in float64 and rounded to float32 once, so the
    error is a few ulps for any `q`), the second with `pow`, and only
    between pruning events (`r != 0`; it is exactly 1 at them). So at every
    pruning event the value is computed with correctly rounded float32
    operations only and is identical on the host and the tensor path, on every
    backend and CPU; between events (values seen only in logs) it may differ
    by a few ulps.

    Example:
    >>> s = ExponentialDecay(0.9, rate=0.5, begin_step=0, frequency=10)
    >>> [round(float(s(t)[1]), 4) for t in (0, 10, 20, 100)]
    [0.0, 0.5, 0.75, 0.9]
    >>> float(s(30)[1])  # 1 - 0.5 ** 3, exact
    0.875

    Args:
        final_sparsity: the cap, in [0, 1).
        rate: fraction of the remaining weights pruned per `frequency` steps,
            in (0, 1).
        begin_step: first pruning step.
        end_step: last pruning step, or -1 to prune forever.
        frequency: prune every `frequency` steps; a value larger than
            `end - begin` warns (the schedule would prune only at `begin`).
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
    """

    _ARGS = (
        "final_sparsity", "rate", "begin_step", "end_step", "frequency", "initial_sparsity",
    )

    def __init__(
        self,
        final_sparsity,
        rate,
        begin_step,
        end_step=-1,
        frequency=100,
        initial_sparsity=0.0,
    ):
        self._validate_sparsity(final_sparsity, "final_sparsity")
        self._validate_sparsity(initial_sparsity, "initial_sparsity")
        rate = _check_number("rate", rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"Argument `rate` must be in (0, 1). Received: rate={rate}")
        self._validate_step(begin_step, end_step, frequency, True)
        self.final_sparsity = float(final_sparsity)
        self.rate = rate
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        self.initial_sparsity = float(initial_sparsity)

    def _sparsity(self, step):
        xp = _ops(step)
        elapsed = xp.maximum(step - self.begin_step, 0)
        events = xp.floor_divide(elapsed, self.frequency)
        rest = xp.mod(elapsed, self.frequency)
        base = np.float32(1.0 - self.rate)
        # base ** (rest / frequency): pow between events only, exactly 1 at events
        power = xp.where(
            xp.equal(rest, 0),
            np.float32(1),
            xp.power(base, exact.fraction(xp, rest, self.frequency)),
        )
        # times base ** events (exact at every pruning event)
        power = exact.multiply_by_integer_power(xp, power, base, events)
        # 1 - (1 - initial) * power, written as 1 + (initial - 1) * power
        sparsity = exact.interpolate(xp, self.initial_sparsity, 1.0, power)
        return xp.minimum(np.float32(self.final_sparsity), sparsity)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AGP(_RangeSchedule):
    """Automated gradual pruning (Zhu & Gupta, 2017), discrete.

    Sparsity rises from `initial_sparsity` to `final_sparsity` over
    `n = (end_step - begin_step) // frequency` pruning events, fast at first
    and slowly at the end:

        k = clip((step - begin) // frequency, 0, n)
        sparsity = final + (initial - final) * (1 - k / n) ** 3

    Masks are recomputed at `begin + j * frequency`, `j = 0..n`, so the final
    sparsity is reached at a pruning event even when `end - begin` is not a
    multiple of `frequency`. Values are computed with correctly rounded float32
    operations only (`1 - k / n` as `n - k` times the reciprocal of `n`, the
    cube as two multiplies), so they are identical on the host and the tensor
    path, on every backend and CPU.

    Example:
    >>> s = AGP(final_sparsity=0.9, begin_step=0, end_step=1000, frequency=100)
    >>> [round(float(s(step)[1]), 3) for step in (0, 100, 500, 1000)]
    [0.0, 0.244, 0.787, 0.9]

    Args:
        final_sparsity: sparsity reached at the last pruning event, in [0, 1).
        begin_step: first pruning step.
        end_step: the last pruning event is the last `begin + j * frequency`
            not after `end_step`.
        frequency: steps between pruning events.
        initial_sparsity: sparsity at `begin_step`, in [0, 1).
    """

    _ARGS = ("final_sparsity", "begin_step", "end_step", "frequency", "initial_sparsity")

    def __init__(
        self, final_sparsity, begin_step, end_step, frequency=100, initial_sparsity=0.0
    ):
        self._validate_sparsity(final_sparsity, "final_sparsity")
        self._validate_sparsity(initial_sparsity, "initial_sparsity")
        self._validate_step(begin_step, end_step, frequency, False)
        if (end_step - begin_step) // frequency < 1:
            raise ValueError(
                "Argument `end_step` must be at least `begin_step + frequency` "
                "so that AGP has at least one pruning event after the first. "
                f"Received: begin_step={begin_step}, end_step={end_step}, "
                f"frequency={frequency}"
            )
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        self.initial_sparsity = float(initial_sparsity)

    @property
    def num_events(self):
        """`n`, the number of pruning events after the first."""
        return (self.end_step - self.begin_step) // self.frequency

    @property
    def _last_pruning_step(self):
        """The step of the last pruning event, `begin + n * frequency`."""
        return self.begin_step + self.num_events * self.frequency

    def _sparsity(self, step):
        xp = _ops(step)
        n = self.num_events
        k = xp.clip(xp.floor_divide(step - self.begin_step, self.frequency), 0, n)
        decay = exact.static_power(xp, exact.fraction(xp, n - k, n), 3)
        return exact.interpolate(xp, self.initial_sparsity, self.final_sparsity, decay)


def get(identifier):
    """Returns a schedule from an instance or a Keras config dict."""
    if isinstance(identifier, PruningSchedule):
        return identifier
    if isinstance(identifier, dict):
        schedule = keras.saving.deserialize_keras_object(
            identifier,
            custom_objects={
                c.__name__: c
                for c in (ConstantSparsity, PolynomialDecay, ExponentialDecay, AGP)
            },
        )
        if isinstance(schedule, PruningSchedule):
            return schedule
    raise TypeError(
        "Argument `pruning_schedule` must be a `PruningSchedule` instance. "
        f"Received: pruning_schedule={identifier!r}"
    )
