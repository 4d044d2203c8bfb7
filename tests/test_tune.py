"""edgecls.tune: hyperparameter search (`edgecls tune`) on keras-tuner; the best trial is a run `convert` takes."""

import csv
import json
import math

import pytest

from edgecls.runtime.errors import EdgeclsError
from tests.conftest import cli_error, make_home_like, run_cli, snapshot


@pytest.mark.slow
def test_three_random_trials_give_a_run_that_convert_accepts(tmp_path, shapes_folder):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.core.outputs import bundle_guard
    from edgecls.core.rundir import open_run
    from edgecls.runtime.atomic import check_output

    out = tmp_path / "tuned"
    result = run_cli(
        "tune",
        "--data",
        shapes_folder,
        "--out",
        out,
        "--trials",
        3,
        "--search",
        "random",
        "--max-epochs",
        1,
        "--image-size",
        16,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads((out / "tuning" / "trials.json").read_text())
    trials = table["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 3 and all(t["epochs"] == 1 for t in trials)
    assert (
        len({json.dumps(t["hyperparameters"], sort_keys=True) for t in trials}) == 3
    )  # three different configurations
    with open(out / "tuning" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [t["trial"] for t in trials] and {
        "learning_rate",
        "base_width",
        "blocks",
        "dropout",
        "l2",
        "batch_size",
    } <= set(rows[0])
    assert (out / "tuning" / "trials.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "tuning" / "tuner" / "oracle.json").is_file()  # keras-tuner's own state
    assert not (out / "tuning" / "runs").exists()  # the losing trials' runs are gone
    assert f"best: trial {table['best']}" in result.stdout

    # The run directory is the best trial itself: its options are that trial's values.
    best = next(t for t in trials if t["trial"] == table["best"])
    scores = [t["score"] for t in trials]
    assert best["score"] == max(scores)
    hp = best["hyperparameters"]
    run = open_run(out)
    meta = run.metadata
    assert meta["tuning"]["trial"] == table["best"] and meta["tuning"]["hyperparameters"] == hp
    assert meta["model"]["options"]["widths"] == [hp["base_width"] * 2**i for i in range(hp["blocks"])]
    assert (
        meta["model"]["options"]["dropout"] == pytest.approx(hp["dropout"])
        and meta["model"]["options"]["l2"] == hp["l2"]
    )
    assert meta["train"]["batch_size"] == hp["batch_size"] and meta["train"]["learning_rate"] == pytest.approx(
        hp["learning_rate"]
    )
    assert meta["input_shape"] == [16, 16, 3] and (out / "split.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)

    bundle = tmp_path / "bundle"
    check_output(bundle, False, **bundle_guard(run))  # what `edgecls convert` checks first
    converted = convert(out, bundle, ConvertOptions(formats=parse_formats("tflite-fp32"), check_images=0))
    manifest = json.loads((converted.bundle / "manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["tflite-fp32"]


def test_search_space_follows_the_model_and_the_image_size():
    import keras_tuner as kt

    from edgecls.tune import TuneConfig, declare_space, train_config

    def space(cfg, size):
        hp = kt.HyperParameters()
        declare_space(hp, cfg, size)
        return {p.name: p for p in hp.space}

    simple = space(TuneConfig("shapes", "out"), 8)
    assert set(simple) == {"learning_rate", "dropout", "l2", "batch_size", "base_width", "blocks"}
    assert max(simple["blocks"].values) == 3  # 8 px: three poolings at most
    assert max(space(TuneConfig("shapes", "out"), 64)["blocks"].values) == 4
    cfg = train_config(
        TuneConfig("shapes", "out"),
        {
            "learning_rate": 0.002,
            "dropout": 0.30000000000000004,
            "l2": 1e-4,
            "batch_size": 16,
            "base_width": 8,
            "blocks": 3,
        },
        "trial",
    )
    assert cfg.model_options == {"widths": (8, 16, 32), "dropout": 0.3, "l2": 1e-4}
    assert (cfg.batch_size, cfg.learning_rate, cfg.epochs, cfg.fine_tune_layers) == (16, 0.002, 10, 0)

    scratch = space(TuneConfig("shapes", "out", model="mobilenetv2"), 32)
    assert "alpha" in scratch and "fine_tune_layers" not in scratch and "base_width" not in scratch
    pretrained = TuneConfig("shapes", "out", model="mobilenetv2", weights="w.h5", alpha=0.5, max_epochs=4)
    assert "fine_tune_layers" in space(pretrained, 32) and "alpha" not in space(pretrained, 32)
    values = {"learning_rate": 1e-3, "dropout": 0.2, "l2": 0.0, "batch_size": 32, "fine_tune_layers": 40}
    cfg = train_config(pretrained, values, "trial", epochs=2)  # Hyperband's round budget
    assert cfg.model_options["alpha"] == 0.5 and (cfg.fine_tune_layers, cfg.fine_tune_epochs, cfg.epochs) == (40, 2, 2)
    assert train_config(pretrained, {**values, "fine_tune_layers": 0}, "trial").fine_tune_epochs == 0


def test_best_trial_breaks_ties_by_validation_loss():
    from edgecls.tune import best_row

    rows = [
        {"trial": "0", "status": "COMPLETED", "score": 0.5, "val_loss": 0.9},
        {"trial": "1", "status": "FAILED", "score": None, "val_loss": None},
        {"trial": "2", "status": "COMPLETED", "score": 0.5, "val_loss": 0.7},
        {"trial": "3", "status": "COMPLETED", "score": 0.25, "val_loss": 0.1},
    ]
    assert best_row(rows, "val_accuracy")["trial"] == "2"
    assert best_row([{**r, "score": r["val_loss"]} for r in rows], "val_loss")["trial"] == "3"
    assert best_row(rows[1:2], "val_accuracy") is None


@pytest.mark.parametrize("case", ["out-file", "out-home", "out-dataset", "no-val", "mobilenet-16px", "weights-simple"])
def test_tune_refuses_before_any_trial(tmp_path, shapes_folder, case):
    from edgecls.tune import TuneConfig, tune

    out = tmp_path / "out"
    cfg = TuneConfig(data=str(shapes_folder), out=str(out), trials=1, max_epochs=1, image_size=16)
    if case == "out-file":
        out.write_text("a file")
    elif case == "out-home":
        cfg.out = str(make_home_like(tmp_path / "home"))
    elif case == "out-dataset":
        cfg.out = str(shapes_folder / "runs")
    elif case == "no-val":
        cfg.val_fraction = 0.0
    elif case == "mobilenet-16px":
        cfg.model = "mobilenetv2"
    elif case == "weights-simple":
        cfg.weights = str(out)
    before = [snapshot(tmp_path), snapshot(shapes_folder)]
    with pytest.raises(EdgeclsError) as error:
        tune(cfg)
    expected = {
        "out-file": "not a folder",
        "out-home": "not an edgecls run",
        "out-dataset": "lies inside the dataset",
        "no-val": "--val-fraction above 0",
        "mobilenet-16px": "at least 32x32",
        "weights-simple": "a pretrained backbone of mobilenetv2, mobilenetv3small, mobilenetv3large, efficientnetb0",
    }[case]
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert [snapshot(tmp_path), snapshot(shapes_folder)] == before


def test_tune_output_may_be_replaced_only_when_it_is_ours(tmp_path):
    """A tuned run holds tuning/ beside the run's files: --overwrite replaces it, but not with someone's file in it."""
    from edgecls.runtime.atomic import check_output
    from edgecls.tune import _guard

    out = tmp_path / "tuned"
    (out / "tuning" / "tuner").mkdir(parents=True)
    (out / "metadata.json").write_text(json.dumps({"format": "edgecls-run/1"}))
    (out / "model.keras").write_bytes(b"zip")
    guard = _guard(tmp_path / "data")
    check_output(out, True, **guard)
    with pytest.raises(EdgeclsError, match="already exists"):
        check_output(out, False, **guard)
    (out / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(EdgeclsError, match="photo.jpg"):
        check_output(out, True, **guard)


def test_tune_cli_bad_search_is_one_error_line(tmp_path, shapes_folder):
    message = cli_error(run_cli("tune", "--data", shapes_folder, "--out", tmp_path / "o", "--search", "grid"))
    assert "'grid'" in message and "random" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # two real trainings: about 50 s on a busy 2-core machine
def test_a_trial_whose_validation_loss_diverged_is_failed_and_never_the_run(tmp_path, shapes_folder, monkeypatch):
    """Fault injection on real training: the first trial's validation loss is NaN in every epoch (a diverged
    run), so it is a FAILED row with the reason, and the other trial is the run; trials.json stays strict JSON."""
    import math

    import edgecls.train
    from edgecls.tune import TuneConfig, tune

    real, calls = edgecls.train.train, []

    def first_diverges(cfg):
        result = real(cfg)
        calls.append(cfg.out)
        if len(calls) == 1:
            result.history["val_loss"] = [math.nan] * len(result.history["val_loss"])
        return result

    monkeypatch.setattr(edgecls.train, "train", first_diverges)
    out = tmp_path / "tuned"
    result = tune(
        TuneConfig(data=str(shapes_folder), out=str(out), trials=2, max_epochs=1, image_size=16, objective="val_loss")
    )
    table = json.loads((out / "tuning" / "trials.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    first, second = table["trials"]
    assert first["status"] == "FAILED" and first["message"].startswith("diverged: val_loss nan"), first
    assert second["status"] == "COMPLETED" and table["best"] == second["trial"] == result.best["trial"]
    assert math.isfinite(result.best["score"])


def test_a_failure_message_is_the_exception_and_its_first_line():
    """TensorFlow ends an OOM message with "Hint:" lines; keras-tuner's trial message is a whole traceback."""
    from edgecls.tune import _one_line

    oom = "ResourceExhaustedError: OOM when allocating tensor\nHint: If you want to see a list of allocated tensors"
    assert _one_line(oom) == "ResourceExhaustedError: OOM when allocating tensor"
    traceback = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in run\n    train(cfg)\n'
        "ValueError: bad shape\nsecond line of the message\n"
    )
    assert _one_line(traceback) == "ValueError: bad shape"
    assert _one_line("") == ""


def test_tune_every_trial_failing_is_one_error_line_with_the_cause(tmp_path, shapes_folder, monkeypatch):
    """Fault injection: every trial hits TensorFlow's out-of-memory error. keras-tuner raises its own RuntimeError
    (with tracebacks in the text) at the N-th consecutive failure, since max_consecutive_failed_trials == trials
    (edgecls/tune.py:_oracle), so tune()'s 'no trial completed' is unreachable; and _one_line keeps TF's last
    line (the Hint), dropping the cause."""
    import tensorflow as tf

    import edgecls.train
    from edgecls.tune import TuneConfig, tune

    def out_of_memory(cfg):
        raise tf.errors.ResourceExhaustedError(
            None,
            None,
            "OOM when allocating tensor with shape[64,64,3,3]\n"
            "Hint: If you want to see a list of allocated tensors when OOM "
            "happens, add report_tensor_allocations_upon_oom to RunOptions.",
        )

    monkeypatch.setattr(edgecls.train, "train", out_of_memory)
    out = tmp_path / "tuned"
    with pytest.raises(EdgeclsError) as error:
        tune(TuneConfig(data=str(shapes_folder), out=str(out), trials=2, max_epochs=1, image_size=16))
    message = str(error.value)
    assert "\n" not in message and "no trial completed" in message and "OOM when allocating" in message, message
    assert not out.exists()


def test_tune_a_diverged_trial_never_wins():
    """train() has no NaN guard, so a diverged trial COMPLETES with val_loss NaN; with --objective val_loss and
    that trial first, edgecls/tune.py:best_row returns it (nothing compares below NaN)."""
    from edgecls.tune import best_row

    rows = [
        {"trial": "0", "status": "COMPLETED", "score": math.nan, "val_loss": math.nan},
        {"trial": "1", "status": "COMPLETED", "score": 0.7, "val_loss": 0.7},
    ]
    assert best_row(rows, "val_loss")["trial"] == "1"
