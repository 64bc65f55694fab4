import keras
import numpy as np
import pytest
from conftest import BACKEND, only_backends, to_numpy

import tfprune
from tfprune import schedules
from tfprune.selection import keep_count


def values(schedule, steps):
    out = [schedule(s) for s in steps]
    return [bool(to_numpy(p)) for p, _ in out], [float(to_numpy(v)) for _, v in out]


def test_polynomial_decay_formula_and_turns():
    s = tfprune.PolynomialDecay(0.1, 0.9, begin_step=10, end_step=110, power=3, frequency=7)
    steps = list(range(0, 140))
    prune, sparsity = values(s, steps)
    for step, p, v in zip(steps, prune, sparsity):
        frac = min(max((step - 10) / 100, 0.0), 1.0)
        assert v == pytest.approx(0.9 + (0.1 - 0.9) * (1 - frac) ** 3, abs=1e-6)
        assert p == (10 <= step <= 110 and (step - 10) % 7 == 0)


def test_polynomial_decay_does_not_reach_final_between_turns():
    s = tfprune.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=250, frequency=100)
    prune, sparsity = values(s, [0, 100, 200, 250, 300])
    assert prune == [True, True, True, False, False]
    assert sparsity[2] < 0.8  # last prune at 200: final 0.8 never applied


def test_constant_sparsity():
    s = tfprune.ConstantSparsity(0.6, begin_step=5, end_step=25, frequency=10)
    prune, sparsity = values(s, [0, 4, 5, 15, 25, 35])
    assert prune == [False, False, True, True, True, False]
    assert sparsity == pytest.approx([0.6] * 6)
    forever = tfprune.ConstantSparsity(0.5, 0)
    assert values(forever, [0, 1, 100, 10**7])[0] == [True, False, True, True]


def test_exponential_decay():
    s = tfprune.ExponentialDecay(0.9, rate=0.2, begin_step=100, frequency=50, initial_sparsity=0.1)
    steps = [0, 100, 150, 175, 300, 5000]
    prune, sparsity = values(s, steps)
    for step, v in zip(steps, sparsity):
        expected = min(0.9, 1 - 0.9 * 0.8 ** (max(step - 100, 0) / 50))
        assert v == pytest.approx(expected, abs=1e-6)
    assert prune == [False, True, True, False, True, True]


def test_agp_reaches_final_at_an_event_when_span_not_multiple_of_frequency():
    s = tfprune.AGP(0.9, begin_step=10, end_step=260, frequency=100)  # n = 2
    steps = [0, 10, 110, 210, 250, 260, 310]
    prune, sparsity = values(s, steps)
    assert prune == [False, True, True, True, False, False, False]
    assert sparsity == pytest.approx(
        [0.0, 0.0, 0.9 * (1 - 0.5**3), 0.9, 0.9, 0.9, 0.9], abs=1e-6
    )


def test_agp_docstring_values():
    s = tfprune.AGP(final_sparsity=0.9, begin_step=0, end_step=1000, frequency=100)
    assert [round(float(to_numpy(s(t)[1])), 3) for t in (0, 100, 500, 1000)] == [0.0, 0.244, 0.787, 0.9]


@pytest.mark.parametrize(
    "step", [7, np.int64(7), np.int32(7), "tensor32", "tensor64"], ids=str
)
def test_step_types(step):
    if step == "tensor32":
        step = keras.ops.convert_to_tensor(7, "int32")
    elif step == "tensor64":
        step = keras.ops.convert_to_tensor(7, "int64")
    s = tfprune.PolynomialDecay(0.0, 0.5, 0, 14, frequency=7)
    p, v = s(step)
    assert bool(to_numpy(p)) is True
    assert float(to_numpy(v)) == pytest.approx(0.5 * (1 - 0.5**3), abs=1e-6)
    assert to_numpy(v).dtype == np.float32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: tfprune.ConstantSparsity(1.0, 0), "target_sparsity=1.0"),
        (lambda: tfprune.ConstantSparsity(-0.1, 0), "target_sparsity=-0.1"),
        (lambda: tfprune.ConstantSparsity(0.5, -1), "begin_step=-1"),
        (lambda: tfprune.ConstantSparsity(0.5, 10, end_step=5), "end_step=5"),
        (lambda: tfprune.ConstantSparsity(0.5, 0, frequency=0), "frequency=0"),
        (lambda: tfprune.PolynomialDecay(0.0, 0.5, 10, 10), "end_step=10"),
        (lambda: tfprune.PolynomialDecay(0.0, 0.5, 0, -1), "end_step=-1"),
        (lambda: tfprune.PolynomialDecay(0.0, 1.5, 0, 10), "final_sparsity=1.5"),
        (lambda: tfprune.ExponentialDecay(0.9, rate=1.0, begin_step=0), "rate=1.0"),
        (lambda: tfprune.ExponentialDecay(0.9, rate=0.0, begin_step=0), "rate=0.0"),
        (lambda: tfprune.AGP(0.9, 0, 50, frequency=100), "frequency=100"),
    ],
)
def test_bad_arguments_raise_value_error_naming_argument(make, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: tfprune.PolynomialDecay(0, 0.8, 0, 100, frequency=1000),
            "frequency=1000, begin_step=0, end_step=100",
        ),
        (lambda: tfprune.ConstantSparsity(0.5, 10, 15, frequency=6), "frequency=6"),
        (lambda: tfprune.ExponentialDecay(0.9, 0.1, 0, 99, frequency=100), "frequency=100"),
    ],
)
def test_frequency_beyond_the_window_warns_naming_frequency(make, message):
    # A warning, not an error: TFMOT builds such schedules in its own tests.
    with pytest.warns(UserWarning, match="`frequency`.*" + message):
        schedule = make()
    assert bool(schedule(schedule.begin_step)[0])


def test_frequency_up_to_the_window_and_one_off_windows_are_legal():
    two_events = tfprune.PolynomialDecay(0.0, 0.8, 0, 100, frequency=100)
    prune, sparsity = values(two_events, [0, 50, 100])
    assert prune == [True, False, True] and sparsity[2] == np.float32(0.8)
    one_off = tfprune.ConstantSparsity(0.5, begin_step=10, end_step=10, frequency=100)
    assert values(one_off, [0, 10, 11, 110])[0] == [False, True, False, False]


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="begin_step"):
        tfprune.ConstantSparsity(0.5, 1.5)
    with pytest.raises(TypeError, match="target_sparsity"):
        tfprune.ConstantSparsity("0.5", 0)
    schedule = tfprune.ConstantSparsity(0.5, 0)
    for step in (1.0, np.float32(2.0), np.array(3.5), True):
        with pytest.raises(TypeError, match="step="):
            schedule(step)


ALL = [
    tfprune.ConstantSparsity(0.5, 3, 30, 4),
    tfprune.PolynomialDecay(0.1, 0.7, 0, 90, power=2, frequency=3),
    tfprune.ExponentialDecay(0.8, 0.3, 2, frequency=5, initial_sparsity=0.2),
    tfprune.AGP(0.9, 0, 1000, frequency=100, initial_sparsity=0.05),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_config_is_constructor_arguments_and_round_trips(schedule):
    config = schedule.get_config()
    assert type(schedule)(**config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(restored) is type(schedule)
    assert restored.get_config() == config
    for step in (0, 3, 50, 2000):
        a, b = schedule(step), restored(step)
        assert bool(to_numpy(a[0])) == bool(to_numpy(b[0]))
        assert float(to_numpy(a[1])) == float(to_numpy(b[1]))


def test_from_config_accepts_tfmot_nested_form():
    s = tfprune.PolynomialDecay.from_config(
        {
            "class_name": "PolynomialDecay",
            "config": {
                "initial_sparsity": 0.0,
                "final_sparsity": 0.5,
                "begin_step": 0,
                "end_step": 10,
                "power": 3,
                "frequency": 1,
            },
        }
    )
    assert s.final_sparsity == 0.5 and s.frequency == 1


def test_schedule_traces_under_jit():
    s = tfprune.PolynomialDecay(0.0, 0.8, 0, 100, frequency=10)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda t: s(t), jit_compile=True)
    elif BACKEND == "jax":
        import jax

        fn = jax.jit(lambda t: s(t))
    else:
        fn = s
    p, v = fn(keras.ops.convert_to_tensor(50, "int32"))
    assert bool(to_numpy(p)) and float(to_numpy(v)) == pytest.approx(0.7, abs=1e-6)


def test_get_rejects_non_schedules():
    with pytest.raises(TypeError, match="pruning_schedule"):
        schedules.get(0.5)
    with pytest.raises(TypeError, match=r"Received: pruning_schedule=\{'foo': 1\}"):
        schedules.get({"foo": 1})  # a dict that is no schedule's config
    dense = keras.saving.serialize_keras_object(keras.layers.Dense(2))
    with pytest.raises(TypeError, match="pruning_schedule"):
        schedules.get(dense)
    config = keras.saving.serialize_keras_object(tfprune.ConstantSparsity(0.5, 0))
    assert schedules.get(config).get_config() == tfprune.ConstantSparsity(0.5, 0).get_config()


# Every kind of schedule, integer and non-integer powers, steps up to 59 and a few
# far ones (near the int32 limit too).
CASES = [
    tfprune.ConstantSparsity(0.7, 3, end_step=40, frequency=4),
    tfprune.PolynomialDecay(0.1, 0.83, 5, 47, power=3, frequency=3),
    tfprune.PolynomialDecay(0.0, 0.9, 0, 30, power=1.5, frequency=1),
    tfprune.PolynomialDecay(0.0, 0.8, 0, 50, power=1, frequency=1),
    tfprune.PolynomialDecay(0.2, 0.95, 7, 57, power=2, frequency=2),
    tfprune.PolynomialDecay(0.6, 0.1, 0, 45, power=5, frequency=1),
    tfprune.PolynomialDecay(0.05, 0.9, 3, 1003, power=2.7, frequency=10),
    tfprune.PolynomialDecay(0.0, 0.75, 0, 59, power=0.5, frequency=1),
    tfprune.ExponentialDecay(0.9, rate=0.3, begin_step=2, frequency=5),
    tfprune.ExponentialDecay(0.95, rate=0.05, begin_step=0, frequency=1, initial_sparsity=0.1),
    tfprune.ExponentialDecay(0.99, rate=0.01, begin_step=5, end_step=50, frequency=3),
    tfprune.AGP(0.95, 4, 44, frequency=7),
    tfprune.AGP(0.8, 0, 59, frequency=1, initial_sparsity=0.05),
]
STEPS = list(range(60)) + [997, 10_003, 10**6, 2**31 - 1]
SIZES = np.concatenate([np.arange(1, 5001), [784 * 300, 4096 * 4096, 2**24 + 1]])
# `pow` is not correctly rounded: libraries differ by a few ulps of the power
# (<= 1), so by a few eps in `final + c * power` (|c| < 1). Absolute, not
# relative: near `begin` the sum cancels to a small number.
POW_ATOL = 4 * np.finfo(np.float32).eps


def promises_bits(schedule, step):
    """Where schedules.py computes without `pow`, so every path gives the same bits."""
    if isinstance(schedule, tfprune.PolynomialDecay):
        return float(schedule.power).is_integer()
    if isinstance(schedule, tfprune.ExponentialDecay):  # at pruning events
        return step <= schedule.begin_step or (step - schedule.begin_step) % schedule.frequency == 0
    return True


def assert_same_values(schedule, step, host, tensor):
    host_prune, host_sparsity = host
    tensor_prune, tensor_sparsity = (to_numpy(x) for x in tensor)
    assert bool(host_prune) == bool(tensor_prune), step
    assert np.asarray(host_sparsity).dtype == tensor_sparsity.dtype == np.float32
    if promises_bits(schedule, step):
        assert np.float32(host_sparsity) == np.float32(tensor_sparsity), step
    else:
        np.testing.assert_allclose(host_sparsity, tensor_sparsity, rtol=0, atol=POW_ATOL)


def int32(step):
    return keras.ops.convert_to_tensor(step, "int32")


@pytest.mark.parametrize("schedule", CASES, ids=repr)
def test_host_and_tensor_paths_give_the_same_bits(schedule):
    for step in STEPS:
        host = schedule(step)
        assert isinstance(host[0], (np.ndarray, np.generic)), step
        assert_same_values(schedule, step, host, schedule(int32(step)))


def compiled_paths(fn):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return [tf.function(fn), tf.function(fn, jit_compile=True)]
    if BACKEND == "jax":
        import jax

        return [jax.jit(fn)]
    return []  # PyTorch runs the tensor path eagerly (test above)


@only_backends("tensorflow", "jax", reason="graph and XLA compilation")
@pytest.mark.parametrize("schedule", CASES, ids=repr)
def test_compiled_tensor_path_gives_the_host_bits(schedule):
    # Grappler reassociates constants, XLA fuses a multiply and an add into one
    # FMA and turns a division by a constant into a multiplication: the
    # schedules leave them nothing to rewrite, also in the kept count computed
    # after them in the same graph (as the wrapper does).
    kept = compiled_paths(lambda step: keep_count(SIZES, schedule(step)[1]))
    for fn, kept_fn in zip(compiled_paths(schedule), kept):
        for step in STEPS:
            assert_same_values(schedule, step, schedule(step), fn(int32(step)))
            if promises_bits(schedule, step):
                np.testing.assert_array_equal(
                    to_numpy(kept_fn(int32(step))),
                    to_numpy(keep_count(SIZES, schedule(step)[1])),
                )


@pytest.mark.parametrize("schedule", CASES, ids=repr)
def test_kept_count_is_the_same_on_both_paths(schedule):
    for step in STEPS:
        if not promises_bits(schedule, step):
            continue
        host = keep_count(SIZES, schedule(step)[1])
        tensor = keep_count(SIZES, schedule(int32(step))[1])
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(host), keras.ops.convert_to_numpy(tensor)
        )


@pytest.mark.parametrize("rate, initial", [(0.3, 0.0), (0.05, 0.1), (0.01, 0.0), (0.001, 0.2)])
def test_exponential_decay_at_events_is_the_capped_geometric_decay(rate, initial):
    s = tfprune.ExponentialDecay(0.9, rate, begin_step=3, frequency=7, initial_sparsity=initial)
    base = float(np.float32(1 - rate))
    u = np.finfo(np.float32).eps / 2
    for j in range(201):
        got = float(to_numpy(s(int32(3 + 7 * j))[1]))
        want = min(float(np.float32(0.9)), 1 - float(np.float32(1 - initial)) * base**j)
        # rounded once each: the squares base ** 2 ** i used, the multiplies by
        # them, 1 + (initial - 1) * power and (initial - 1)
        assert abs(got - want) <= (2 * bin(j).count("1") + 2) * u, j
        assert got <= np.float32(0.9)
    for step in (0, 3):
        assert s(step)[1] == np.float32(1) - np.float32(1 - initial)
    for step in (10**6, 2**31 - 1):  # far past the cap: the power underflows to 0
        assert s(step)[1] == np.float32(0.9)
        assert to_numpy(s(int32(step))[1]) == np.float32(0.9)
