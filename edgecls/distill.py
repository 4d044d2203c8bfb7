"""Knowledge distillation: a student learns from the labels and from a trained teacher's softened answers.

loss = alpha * CE(labels, student) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

over logits (Hinton et al. 2015; the Keras "Knowledge Distillation" example). T^2 keeps the soft
term's gradients at the scale of the hard one's as T changes. The teacher is a finished run
directory, loaded read-only and never trained; it sees the very tensors the student sees (the run's
`edgecls.runtime.preprocess` output), so its preprocessing must be the student's: a teacher whose image
size, colour, resize, normalization or classes differ is refused. Resizing inside the graph is not
offered: `edgecls.runtime.preprocess` resizes the decoded image once from its full resolution, and a second
resampling of the student's tensor is not the tensor the teacher was trained on.

Heads: the models end in a Dense with softmax (K units) or sigmoid (one unit, two classes). Their
logits are read from that Dense (its kernel and bias over its input), and a one-unit logit z becomes
the two logits [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)]: teacher and student may use
either head. The student that is saved is the plain student model: the teacher is not inside it.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

# On digits (benchmarks/results/distillation.txt) no setting reached the student-alone accuracy on every seed,
# at 10 epochs or converged, though every one lowered the student's held-out loss. T=2, alpha 0.75 did best at
# 10 epochs (mean +1.67, worst -0.84) but is unmeasured converged; T=2 with half the weight on the labels is kept.
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5  # weight of the labels; the teacher gets the rest
HEAD_ACTIVATIONS = ("softmax", "sigmoid")


def check_settings(temperature, alpha) -> None:
    """Refuse a temperature or alpha training would choke on (one line, naming the option)."""
    try:
        ok = math.isfinite(float(temperature)) and float(temperature) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EdgeclsError(f"--temperature {temperature!r} is out of range: use a value above 0, e.g. 4")
    try:
        ok = 0.0 <= float(alpha) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EdgeclsError(
            f"--distill-alpha {alpha!r} is out of range: use a value from 0 (teacher only) to 1 (labels only)"
        )


# --- the teacher --------------------------------------------------------------------------------


def _normalization(spec) -> str | None:
    """The `--normalize` value that gives `spec`'s mean/std, or None (no flag gives it)."""
    return spec.normalization()


def teacher_defaults(teacher) -> dict:
    """The teacher's image size, colour and normalization as `TrainConfig` fields: the student's
    defaults when `--teacher` is given, so that the usual case needs no repeated flags."""
    spec = teacher.preprocess
    found = {"color": spec.color, "normalize": _normalization(spec), "resize": spec.resize}
    if spec.height == spec.width:
        found["image_size"] = spec.height
    return {k: v for k, v in found.items() if v is not None}


def _fmt_norm(spec) -> str:
    return _normalization(spec) or f"mean {list(spec.mean)} std {list(spec.std)}"


def check_teacher(teacher, spec, labels: list) -> None:
    """Refuse a teacher whose input tensors or classes are not the student's, in one line with the fix."""
    t = teacher.preprocess
    diffs, fixes = [], []
    if (t.height, t.width) != (spec.height, spec.width):
        diffs.append(f"image size {t.width}x{t.height} (student {spec.width}x{spec.height})")
        fixes.append(f"--image-size {t.height}" if t.height == t.width else "a teacher trained on square images")
    for name, flag in (("color", "--color"), ("resize", "--resize")):
        if getattr(t, name) != getattr(spec, name):
            diffs.append(f"{name} {getattr(t, name)} (student {getattr(spec, name)})")
            fixes.append(f"{flag} {getattr(t, name)}")
    if t.mean != spec.mean or t.std != spec.std:
        diffs.append(f"normalization {_fmt_norm(t)} (student {_fmt_norm(spec)})")
        fixes.append(f"--normalize {_normalization(t)}" if _normalization(t) else "a teacher trained with --normalize")
    for name in ("interpolation", "dtype", "pad_value", "layout"):
        if getattr(t, name) != getattr(spec, name):
            diffs.append(f"{name} {getattr(t, name)} (student {getattr(spec, name)})")
            fixes.append("a teacher trained by this edgecls version")
    if list(teacher.labels) != list(labels):
        diffs.append(f"classes {', '.join(teacher.labels)} (student {', '.join(labels)})")
        fixes.append("the teacher's dataset (the same class folders)")
    if diffs:
        raise EdgeclsError(
            f"the teacher {teacher.path} was trained on other input than the student: {'; '.join(diffs)}: "
            f"train the student with {', '.join(dict.fromkeys(fixes))}"
        )


def check_split(teacher, test_digests) -> None:
    """Refuse when the teacher trained on images the student is tested on: the student's test accuracy
    would then carry what the teacher memorized of them. Runs without split.json cannot be checked."""
    from edgecls.core.rundata import trained_on

    seen = trained_on(teacher)
    leaked = sum(1 for d in test_digests if d in seen)
    if leaked:
        split = teacher.metadata.get("dataset", {})
        raise EdgeclsError(
            f"{leaked} of the student's {len(test_digests)} test images were training images of the teacher "
            f"{teacher.path}: train the student on the teacher's split (--seed {teacher.metadata.get('seed', 0)} "
            f"--val-fraction {split.get('val_fraction', 0.1):g} --test-fraction {split.get('test_fraction', 0.2):g})"
        )


def open_teacher(path, out=None):
    """The teacher's run (metadata only: a refusal costs nothing); refuses the student's own --out."""
    from edgecls.core.rundir import open_run

    if out is not None and Path(out).resolve() == Path(path).resolve():
        raise EdgeclsError(f"--teacher {path} is the run being written (--out): give the student another --out")
    return open_run(path)


def load_teacher(path, out=None):
    """(run, Keras model) of the teacher run, read-only (never trained, never written)."""
    teacher = open_teacher(path, out)
    model = teacher.load_model()
    model.trainable = False
    head_layer(model, f"teacher {path}")
    return teacher, model


def teacher_record(teacher, temperature: float, alpha: float) -> dict:
    """What the student's metadata.json records about its teacher."""
    import json

    from edgecls.core import rundir
    from edgecls.runtime.bundle import sha256_file

    metrics = {}
    try:
        metrics = json.loads((teacher.path / rundir.METRICS_FILE).read_text())
    except (OSError, ValueError):
        pass
    return {
        "run": str(Path(teacher.path).resolve()),
        "model_sha256": sha256_file(teacher.model_path),
        "model": teacher.metadata.get("model", {}),
        "head": teacher.metadata.get("head"),
        "test_accuracy": metrics.get("test_accuracy"),
        "temperature": float(temperature),
        "alpha": float(alpha),
    }


# --- logits ---------------------------------------------------------------------------------------


def head_layer(model, what: str = "the model"):
    """The Dense that ends `model` with a softmax or sigmoid, else a refusal naming what is there."""
    import keras

    last = model.outputs[0]._keras_history.operation if len(model.outputs) == 1 else None
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if not isinstance(last, keras.layers.Dense) or activation not in HEAD_ACTIVATIONS:
        found = (
            f"{last.name} ({type(last).__name__}, {activation or 'no activation'})"
            if last is not None
            else "several outputs"
        )
        raise EdgeclsError(
            f"{what} does not end in a Dense layer with a softmax or sigmoid (it ends in {found}): "
            f"distillation reads the logits there; use a model from `edgecls train`"
        )
    return last


class Logits:
    """`model`'s logits as (N, classes), sharing its layers: the head Dense's kernel and bias over its
    input; a one-unit sigmoid logit z becomes [0, z]."""

    def __init__(self, model, what: str = "the model"):
        import keras

        self.head = head_layer(model, what)
        self.features = keras.Model(model.inputs[0], self.head.input, name=f"{model.name}_features")
        self.sigmoid = self.head.activation.__name__ == "sigmoid"

    def __call__(self, x, training=False):
        from keras import ops

        z = ops.matmul(self.features(x, training=training), self.head.kernel)
        if self.head.use_bias:
            z = z + self.head.bias
        return ops.concatenate([ops.zeros_like(z), z], axis=-1) if self.sigmoid else z


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float, sample_weight=None):
    """The mean over the batch of alpha * CE + (1 - alpha) * T^2 * KL (see the module docstring)."""
    from keras import ops

    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    log_p = ops.log_softmax(student_logits, axis=-1)
    ce = -ops.take_along_axis(log_p, ops.expand_dims(labels, -1), axis=-1)[:, 0]
    soft_t = ops.softmax(teacher_logits / temperature, axis=-1)
    kl = ops.sum(
        soft_t
        * (
            ops.log_softmax(teacher_logits / temperature, axis=-1)
            - ops.log_softmax(student_logits / temperature, axis=-1)
        ),
        axis=-1,
    )
    per_image = alpha * ce + (1.0 - alpha) * temperature**2 * kl
    if sample_weight is not None:
        per_image = per_image * ops.cast(ops.reshape(sample_weight, (-1,)), per_image.dtype)
    return ops.mean(per_image), ops.mean(ce), ops.mean(kl)  # mean: Keras' "sum over batch size"


# --- the model that trains ------------------------------------------------------------------------


def _distiller_class():
    import keras

    class Distiller(keras.Model):
        """Trains `student` against labels and a frozen `teacher` (the Keras example's compute_loss).

        `call` returns the student's logits (N, classes); the student itself keeps its own head
        and is what gets saved. Compile with `optimizer` only: the loss is the distillation loss,
        the metric top-1 accuracy. Evaluation (`val_loss`) is the student's cross-entropy on the
        labels alone, as in the Keras example: the epoch kept, early stopping and the learning-rate
        schedule then judge the student as they judge one trained alone.
        """

        def __init__(
            self, student, teacher, temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA, **kw
        ):
            super().__init__(**kw)
            check_settings(temperature, alpha)
            self.student, self.teacher = student, teacher
            self.teacher.trainable = False
            self.temperature, self.alpha = float(temperature), float(alpha)
            self._student_logits = Logits(student, "the student")
            self._teacher_logits = Logits(teacher, "the teacher")
            if student.output_shape[-1] != teacher.output_shape[-1] and 1 not in (
                student.output_shape[-1],
                teacher.output_shape[-1],
            ):
                raise EdgeclsError(
                    f"the teacher has {teacher.output_shape[-1]} outputs and the student "
                    f"{student.output_shape[-1]}: they must classify the same classes"
                )
            self.ce_tracker = keras.metrics.Mean(name="student_loss")
            self.kd_tracker = keras.metrics.Mean(name="distillation_loss")

        def compile(self, optimizer="adam", **kw):
            kw.setdefault("metrics", [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
            super().compile(optimizer=optimizer, **kw)

        def call(self, x, training=False):
            return self._student_logits(x, training=training)

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            teacher = keras.ops.stop_gradient(self._teacher_logits(x, training=False))
            loss, ce, kl = distillation_loss(y_pred, teacher, y, self.temperature, self.alpha, sample_weight)
            self.ce_tracker.update_state(ce)
            self.kd_tracker.update_state(kl)
            if not training:
                loss = distillation_loss(y_pred, teacher, y, self.temperature, 1.0, sample_weight)[0]
            for extra in self.student.losses:  # weight decay: the student's only (the teacher's is frozen)
                loss = loss + self._aggregate_additional_loss(extra)
            return loss

    return Distiller


_DISTILLER = None


def __getattr__(name):  # `from edgecls.distill import Distiller` without importing Keras at module import
    global _DISTILLER
    if name == "Distiller":
        _DISTILLER = _DISTILLER or _distiller_class()
        return _DISTILLER
    raise AttributeError(name)
