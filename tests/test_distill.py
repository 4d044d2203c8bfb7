"""edgecls.distill: knowledge distillation's loss, the saved student, the teacher checks."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec


def _dense_model(units: int, activation: str, kernel: np.ndarray, bias: np.ndarray, name: str):
    import keras

    inputs = keras.Input(shape=(kernel.shape[0],), name="image")
    outputs = keras.layers.Dense(units, activation=activation, name="predictions")(inputs)
    model = keras.Model(inputs, outputs, name=name)
    model.get_layer("predictions").set_weights([kernel, bias])
    return model


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _formula(s, t, y, temperature, alpha, w=None):
    """The issue's loss by hand: alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))."""
    ce = -_log_softmax(s)[np.arange(len(y)), y]
    pt = np.exp(_log_softmax(t / temperature))
    kl = (pt * (_log_softmax(t / temperature) - _log_softmax(s / temperature))).sum(axis=1)
    per_image = alpha * ce + (1 - alpha) * temperature**2 * kl
    return float(np.mean(per_image * (1 if w is None else w)))


def test_loss_equals_the_formula_on_a_hand_computed_batch():
    from edgecls.distill import Distiller

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 2, 1, 2, 0, 1])
    ks, bs = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    kt, bt = 3 * rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    student = _dense_model(3, "softmax", ks, bs, "student")
    teacher = _dense_model(3, "softmax", kt, bt, "teacher")
    distiller = Distiller(student, teacher, temperature=2.5, alpha=0.3)
    distiller.compile("adam")
    s_logits, t_logits = x @ ks + bs, x @ kt + bt
    np.testing.assert_allclose(np.asarray(distiller(x)), s_logits, rtol=1e-5, atol=1e-5)  # logits, not probabilities
    loss = float(distiller.compute_loss(x, y, distiller(x)))
    assert loss == pytest.approx(_formula(s_logits, t_logits, y, 2.5, 0.3), rel=1e-5)
    w = np.array([1.0, 2.0, 0.5, 0.0, 1.0, 3.0], np.float32)  # class weights arrive as sample weights
    loss_w = float(distiller.compute_loss(x, y, distiller(x), sample_weight=w))
    assert loss_w == pytest.approx(_formula(s_logits, t_logits, y, 2.5, 0.3, w), rel=1e-5)
    # evaluation judges the student on the labels alone (alpha 1: plain, weighted cross-entropy)
    loss_eval = float(distiller.compute_loss(x, y, distiller(x), sample_weight=w, training=False))
    assert loss_eval == pytest.approx(_formula(s_logits, t_logits, y, 2.5, 1.0, w), rel=1e-5)
    # alpha 1 is plain cross-entropy
    assert float(Distiller(student, teacher, 2.5, 1.0).compute_loss(x, y, distiller(x))) == pytest.approx(
        _formula(s_logits, t_logits, y, 2.5, 1.0), rel=1e-5
    )


def test_sigmoid_heads_read_as_two_logits():
    """A one-unit sigmoid logit z is the two-class logits [0, z]; the teacher may have either head."""
    from edgecls.distill import Distiller

    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1])
    ks, bs = rng.normal(size=(3, 1)).astype(np.float32), rng.normal(size=1).astype(np.float32)
    kt, bt = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    distiller = Distiller(_dense_model(1, "sigmoid", ks, bs, "s"), _dense_model(2, "softmax", kt, bt, "t"), 3.0, 0.5)
    distiller.compile("adam")
    z = x @ ks + bs
    s_logits = np.concatenate([np.zeros_like(z), z], axis=1)
    # the training pipeline gives a sigmoid student its labels as float (N, 1)
    loss = float(distiller.compute_loss(x, y.astype(np.float32)[:, None], distiller(x)))
    assert loss == pytest.approx(_formula(s_logits, x @ kt + bt, y, 3.0, 0.5), rel=1e-5)


def test_only_the_student_learns():
    import keras

    from edgecls.distill import Distiller
    from edgecls.models import create_model

    keras.utils.set_random_seed(0)
    teacher = create_model("simple", 3, (16, 16, 3), widths=(8,))
    student = create_model("simple", 3, (16, 16, 3), widths=(4,))
    before_t, before_s = teacher.get_weights(), student.get_weights()
    distiller = Distiller(student, teacher)
    distiller.compile(keras.optimizers.Adam(1e-2))
    assert len(distiller.trainable_variables) == len(student.trainable_variables)
    x = np.random.default_rng(0).uniform(0, 1, (16, 16, 16, 3)).astype(np.float32)
    distiller.fit(x, np.arange(16) % 3, epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before_t, teacher.get_weights()))
    assert not all(np.array_equal(a, b) for a, b in zip(before_s, student.get_weights()))


def test_student_saved_without_the_teacher_loads_and_predicts(tiny_run_dir, tmp_path):
    import keras

    from edgecls.core.data import make_tf_dataset
    from edgecls.core.rundata import load_run_splits
    from edgecls.distill import Distiller, load_teacher
    from edgecls.models import create_model

    teacher_run, teacher = load_teacher(tiny_run_dir)
    train = load_run_splits(teacher_run, ("train",))["train"]
    keras.utils.set_random_seed(0)
    student = create_model("simple", len(teacher_run.labels), teacher_run.preprocess.shape, widths=(4,))
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)
    distiller.compile(keras.optimizers.Adam(1e-3))
    distiller.fit(make_tf_dataset(train, 16, True, 0), epochs=1, verbose=0, shuffle=False)
    student.save(tmp_path / "model.keras")

    loaded = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert loaded.count_params() == student.count_params() < teacher.count_params()
    assert {l.name for l in loaded.layers} == {l.name for l in student.layers}
    np.testing.assert_allclose(loaded.predict(train.x, verbose=0), student.predict(train.x, verbose=0), atol=1e-6)
    probs = loaded.predict(train.x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the student's own softmax head, not logits


def _one_error_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_teacher_with_other_preprocessing_is_refused_in_one_line(tiny_run_dir):
    from edgecls.core.rundir import open_run
    from edgecls.distill import check_teacher

    teacher = open_run(tiny_run_dir)
    same = teacher.preprocess
    check_teacher(teacher, same, teacher.labels)  # the same input: accepted

    with pytest.raises(EdgeclsError) as excinfo:
        check_teacher(teacher, PreprocessSpec.scaled(16, 16, 1 / 255, 0.0, color="rgb"), teacher.labels)
    line = _one_error_line(excinfo)
    assert "image size 32x32 (student 16x16)" in line and "--image-size 32" in line

    with pytest.raises(EdgeclsError) as excinfo:
        check_teacher(teacher, PreprocessSpec.scaled(32, 32, 1 / 127.5, -1.0, color="gray"), teacher.labels)
    line = _one_error_line(excinfo)
    assert "color rgb (student gray)" in line and "--color rgb" in line
    assert "normalization scale (student symmetric)" in line and "--normalize scale" in line

    with pytest.raises(EdgeclsError) as excinfo:
        check_teacher(teacher, same, list(reversed(teacher.labels)))
    assert "classes" in _one_error_line(excinfo)


def test_teacher_preprocessing_is_the_students_default(tiny_run_dir):
    from edgecls.core.rundir import open_run
    from edgecls.distill import teacher_defaults

    assert teacher_defaults(open_run(tiny_run_dir)) == {
        "image_size": 32,
        "color": "rgb",
        "normalize": "scale",
        "resize": "stretch",
    }


def test_a_letterboxed_teacher_gives_the_student_its_resize(tiny_run_dir, tmp_path):
    """A teacher trained with --resize letterbox was refused ("resize letterbox (student stretch)") although the
    help says the teacher's preprocessing is the student's default: --resize had a fixed default of stretch."""
    import json
    import shutil
    from dataclasses import replace

    from edgecls.core.rundir import open_run
    from edgecls.distill import check_teacher, teacher_defaults
    from edgecls.train import TrainConfig, preprocess_spec_for

    teacher_dir = tmp_path / "teacher"
    shutil.copytree(tiny_run_dir, teacher_dir)
    meta = json.loads((teacher_dir / "metadata.json").read_text())
    meta["preprocess"]["resize"] = "letterbox"
    (teacher_dir / "metadata.json").write_text(json.dumps(meta))
    teacher = open_run(teacher_dir)
    cfg = TrainConfig(data="unused", out=str(tmp_path / "s"), teacher=str(teacher_dir))
    cfg = replace(cfg, **{k: v for k, v in teacher_defaults(teacher).items() if getattr(cfg, k) is None})
    spec = preprocess_spec_for(cfg, {})
    assert spec.resize == "letterbox"
    check_teacher(teacher, spec, teacher.labels)  # accepted
    assert preprocess_spec_for(TrainConfig(data="unused", out="x"), {}).resize == "stretch"  # without a teacher


def test_distillation_settings_without_a_teacher_are_refused(shapes_folder, tmp_path):
    """--temperature / --distill-alpha without --teacher were ignored but recorded in metadata.train."""
    from conftest import cli_error, run_cli

    for flag, value in (("--temperature", "4"), ("--distill-alpha", "0.2")):
        line = cli_error(
            run_cli("train", "--data", shapes_folder, "--out", tmp_path / "s", "--epochs", "1", flag, value)
        )
        assert "give --teacher" in line, line
    assert not (tmp_path / "s").exists()


def test_teacher_that_trained_on_the_students_test_images_is_refused(tiny_run_dir):
    from edgecls.core.rundir import open_run
    from edgecls.core.splits import read_split_record
    from edgecls.distill import check_split

    teacher = open_run(tiny_run_dir)
    record = read_split_record(teacher.path)
    check_split(teacher, [d for _, d, _ in record.splits["test"]])  # the teacher's own test split: fine
    leaked = [d for _, d, _ in record.splits["train"][:3]]
    with pytest.raises(EdgeclsError) as excinfo:
        check_split(teacher, leaked)
    assert "3 of the student's 3 test images were training images of the teacher" in _one_error_line(excinfo)


def test_bad_settings_and_heads_are_refused():
    import keras

    from edgecls.distill import Distiller, check_settings

    for temperature, alpha, flag in (
        (0, 0.1, "--temperature"),
        (float("nan"), 0.1, "--temperature"),
        (4, 1.5, "--distill-alpha"),
        (4, -0.1, "--distill-alpha"),
    ):
        with pytest.raises(EdgeclsError, match=flag):
            check_settings(temperature, alpha)
    inputs = keras.Input(shape=(3,))
    linear = keras.Model(inputs, keras.layers.Dense(2, name="out")(inputs))
    softmax = _dense_model(2, "softmax", np.ones((3, 2), np.float32), np.zeros(2, np.float32), "t")
    with pytest.raises(EdgeclsError, match="does not end in a Dense layer with a softmax or sigmoid"):
        Distiller(linear, softmax)


@pytest.mark.slow
def test_train_with_teacher_records_it_and_the_student_converts(tiny_run_dir, shapes_folder, tmp_path):
    import json

    from conftest import run_cli

    student = tmp_path / "student"
    done = run_cli(
        "train",
        "--data",
        shapes_folder,
        "--out",
        student,
        "--widths",
        "4",
        "--epochs",
        "1",
        "--quiet",
        "--teacher",
        tiny_run_dir,
        "--temperature",
        "3",
        "--distill-alpha",
        "0.2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = json.loads((student / "metadata.json").read_text())
    assert metadata["teacher"]["run"] == str(tiny_run_dir.resolve())
    assert (metadata["teacher"]["temperature"], metadata["teacher"]["alpha"]) == (3.0, 0.2)
    assert metadata["preprocess"] == json.loads((tiny_run_dir / "metadata.json").read_text())["preprocess"]  # inherited
    bundle = tmp_path / "bundle"
    done = run_cli("convert", student, "--out", bundle, "--formats", "tflite-fp32", "--max-drop", "100")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (bundle / "model_fp32.tflite").is_file()


def test_cli_refuses_a_teacher_with_other_preprocessing(tiny_run_dir, shapes_folder, tmp_path):
    from conftest import cli_error, run_cli

    line = cli_error(
        run_cli(
            "train",
            "--data",
            shapes_folder,
            "--out",
            tmp_path / "s",
            "--image-size",
            "16",
            "--epochs",
            "1",
            "--teacher",
            tiny_run_dir,
        )
    )
    assert "image size 32x32 (student 16x16)" in line and "--image-size 32" in line
    assert not (tmp_path / "s").exists()


def test_cli_refuses_a_teacher_of_other_classes(tiny_run_dir, shapes_folder, tmp_path):
    """Checked before any data loads: exit 1, one `error:` line naming both class lists, no run written."""
    import shutil

    from conftest import cli_error, run_cli

    data = tmp_path / "data"
    classes = sorted(p.name for p in shapes_folder.iterdir() if p.is_dir())
    for name in classes[:2]:
        shutil.copytree(shapes_folder / name, data / name)
    shutil.copytree(shapes_folder / classes[2], data / "other")
    line = cli_error(
        run_cli("train", "--data", data, "--out", tmp_path / "s", "--epochs", "1", "--teacher", tiny_run_dir)
    )
    assert f"classes {', '.join(classes)} (student {', '.join(sorted([*classes[:2], 'other']))})" in line
    assert "the teacher's dataset" in line
    assert not (tmp_path / "s").exists()


def test_teacher_is_not_the_students_out(tiny_run_dir):
    from edgecls.distill import open_teacher

    with pytest.raises(EdgeclsError, match="is the run being written"):
        open_teacher(tiny_run_dir, tiny_run_dir / ".." / tiny_run_dir.name)
