"""Knowledge distillation, to recover a pruned model's accuracy.

`Distiller(student, teacher)` is a Keras model that runs the student and
trains it on

    loss = alpha * task_loss(y, student(x))
           + (1 - alpha) * T^2 * KL(softmax(teacher(x) / T) || softmax(student(x) / T))

(Hinton et al., 2015), the task loss being the one given to `compile`. It is
plain Keras (`compute_loss` is overridden), so it trains with `fit` on every
backend; the teacher's weights are not trained (its own `trainable` flags are
left as they are). A pruned student keeps its masks with
`tfprune.UpdatePruningStep()`.

Example:
>>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
>>> distiller = Distiller(student, teacher, temperature=2.0, alpha=0.5)
>>> distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
"""

import keras
from keras import ops

from tfprune import checks


class Distiller(keras.Model):
    """Trains `student` to match `teacher`'s softened outputs (see module).

    Args:
        student: the model being trained (e.g. a pruned model).
        teacher: the reference model (e.g. the dense model); not trained.
        temperature: `T > 0`, softens both distributions.
        alpha: weight of the task loss, in [0, 1]; `1 - alpha` goes to the
            distillation term.
    """

    def __init__(self, student, teacher, temperature=2.0, alpha=0.1, **kwargs):
        for name, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise TypeError(
                    f"Argument `{name}` must be a keras.Model. Received: {name}={model!r}"
                )
        outputs = [getattr(m, "outputs", None) for m in (student, teacher)]
        widths = [found[0].shape[-1] if found else None for found in outputs]
        if all(widths) and widths[0] != widths[1]:
            raise ValueError(
                "Arguments `student` and `teacher` must output as many logits: the "
                f"distillation term compares them class by class. Received: student "
                f"'{student.name}' with {widths[0]}, teacher '{teacher.name}' with {widths[1]}"
            )
        if not checks.is_finite_number(temperature) or temperature <= 0:
            raise ValueError(
                f"Argument `temperature` must be a finite number > 0. Received: temperature={temperature!r}"
            )
        if not checks.is_number(alpha) or not 0 <= alpha <= 1:
            raise ValueError(f"Argument `alpha` must be in [0, 1]. Received: alpha={alpha!r}")
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    # The teacher is frozen here without touching its own `trainable` flags:
    # only the student's weights are trained; the teacher's are state.
    @property
    def trainable_weights(self):
        return self.student.trainable_weights

    @property
    def non_trainable_weights(self):
        seen = {id(v) for v in self.student.trainable_weights}
        found = []
        for v in self.student.non_trainable_weights + self.teacher.weights:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)
        return found

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        task = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        t = self.temperature
        teacher_logits = ops.stop_gradient(self.teacher(x, training=False))
        soft_teacher = ops.softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
        log_student = ops.log_softmax(ops.cast(y_pred, "float32") / t, axis=-1)
        log_teacher = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
        kl = ops.mean(ops.sum(soft_teacher * (log_teacher - log_student), axis=-1))
        return self.alpha * task + (1.0 - self.alpha) * (t**2) * kl


def distill(student, teacher, temperature=2.0, alpha=0.1):
    """A `Distiller` of `student` from `teacher`, ready to compile and fit."""
    return Distiller(student, teacher, temperature=temperature, alpha=alpha)
