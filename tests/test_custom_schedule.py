"""A TFMOT user's custom schedule (tf.math ops, tf.cond) runs unchanged.

The class below is the `ExponentialPruning` schedule of a well-known TFMOT
Q&A, with only its import changed from `tfmot.sparsity.keras` to `tfprune`.
"""

import numpy as np
import pytest
from conftest import BACKEND, only_backends, to_numpy

pytestmark = only_backends(
    "tensorflow", reason="the schedule is written with tf.math ops and tf.cond"
)


def make_schedule_class():
    import tensorflow as tf

    import tfprune

    PruningSchedule = tfprune.PruningSchedule

    class ExponentialPruning(PruningSchedule):
        def __init__(self, rate=0.01, begin_step=0, frequency=100, max_sparsity=0.9):
            self.rate = rate
            self.begin_step = begin_step
            self.frequency = frequency
            self.max_sparsity = max_sparsity

            # Validation functions provided by the parent class
            self._validate_step(self.begin_step, -1, self.frequency, True)
            self._validate_sparsity(self.max_sparsity, "Max Sparsity")

        def __call__(self, step):
            p = tf.math.divide(
                tf.cast(step - self.begin_step, tf.float32),
                tf.constant(self.frequency, dtype=tf.float32),
            )
            sparsity = tf.math.subtract(
                tf.constant(1, dtype=tf.float32),
                tf.math.pow(tf.constant(1 - self.rate, dtype=tf.float32), p),
            )
            sparsity = tf.cond(
                tf.math.greater(sparsity, tf.constant(self.max_sparsity, dtype=tf.float32)),
                lambda: tf.constant(self.max_sparsity, dtype=tf.float32),
                lambda: sparsity,
            )
            return (
                self._should_prune_in_step(step, self.begin_step, -1, self.frequency),
                sparsity,
            )

        def get_config(self):
            return {
                "class_name": self.__class__.__name__,
                "config": {
                    "rate": self.rate,
                    "begin_step": self.begin_step,
                    "frequency": self.frequency,
                    "max_sparsity": self.max_sparsity,
                },
            }

    return ExponentialPruning


def test_custom_schedule_values():
    import tensorflow as tf

    schedule = make_schedule_class()(rate=0.5, begin_step=0, frequency=2, max_sparsity=0.9)
    for step in (0, 2, 4, 100):
        prune, sparsity = schedule(tf.constant(step, tf.int64))
        assert bool(prune) is True
        assert float(sparsity) == pytest.approx(min(0.9, 1 - 0.5 ** (step / 2)), abs=1e-6)
    assert bool(schedule(tf.constant(3, tf.int64))[0]) is False


def test_custom_schedule_validation_uses_base_helpers():
    cls = make_schedule_class()
    with pytest.raises(ValueError, match="Max Sparsity"):
        cls(max_sparsity=1.5)
    with pytest.raises(ValueError, match="frequency"):
        cls(frequency=0)


def test_custom_schedule_prunes_a_model_in_fit_and_round_trips(tmp_path):
    import keras

    import tfprune

    assert BACKEND == "tensorflow"
    cls = make_schedule_class()
    model = keras.Sequential(
        [
            keras.Input((16,)),
            tfprune.prune_low_magnitude(
                keras.layers.Dense(8, activation="relu"), cls(rate=1 / 8, frequency=1)
            ),
            keras.layers.Dense(2),
        ]
    )
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 16)), rng.normal(size=(64, 2))
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[tfprune.UpdatePruningStep()])
    wrapper = model.layers[0]
    assert int(to_numpy(wrapper.pruning_step)) == 16
    expected = min(0.9, 1 - (7 / 8) ** 16)
    kept = int(max(np.round(np.float32(128) * (np.float32(1) - np.float32(expected))), 1))
    kernel = to_numpy(wrapper.layer.kernel)
    assert int(np.count_nonzero(kernel)) == kept
    path = tmp_path / "custom.keras"
    model.save(path)
    restored = keras.models.load_model(path, custom_objects={"ExponentialPruning": cls})
    assert restored.layers[0].pruning_schedule.get_config() == wrapper.pruning_schedule.get_config()
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
