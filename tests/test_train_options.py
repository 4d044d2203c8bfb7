"""edgecls.train: every training option is checked before any image is read or any epoch runs."""

import math

import pytest

from edgecls.core.augment import AugmentSpec
from edgecls.runtime.errors import EdgeclsError
from edgecls.train import TrainConfig, train
from tests.conftest import cli_error, run_cli

BAD_OPTIONS = [
    (["--shear", "2"], "'--shear'"),
    (["--zoom", "1.5"], "'--zoom'"),
    (["--zoom", "1"], "'--zoom'"),  # RandomZoom would zoom in to nothing
    (["--brightness", "1.5"], "'--brightness'"),
    (["--shift", "1.5"], "'--shift'"),
    (["--rotation", "-5"], "'--rotation'"),
    (["--widths", "0,8"], "widths (0, 8) are invalid"),
    (["--widths", "8,x"], "--widths '8,x' is invalid"),
    (["--model", "mobilenetv2", "--alpha", "-1"], "'--alpha'"),
    (["--model", "mobilenetv2", "--alpha", "0"], "'--alpha'"),
    (["--lr", "0"], "'--lr'"),
    (["--lr", "-0.1"], "'--lr'"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--momentum", "1"], "'--momentum'"),
    (["--momentum", "-0.5"], "'--momentum'"),
    (["--val-fraction", "1.2"], "'--val-fraction'"),
    (["--test-fraction", "-0.1"], "'--test-fraction'"),
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "leave no images for training"),
    (["--model", "simple", "--weights", "{weights}"], "model simple has no option(s) weights"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_out_of_range_options_are_one_line_errors_before_the_data_loads(tmp_path, shapes_folder, args, message):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not read")
    args = [str(weights) if a == "{weights}" else a for a in args]
    result = run_cli("train", "--data", shapes_folder, "--out", tmp_path / "out", "--epochs", "1", *args)
    assert message in cli_error(result)
    assert "data:" not in result.stderr  # refused before the dataset was scanned or decoded
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"augment": AugmentSpec(shear=2.0)},
        {"augment": AugmentSpec(zoom=1.5)},
        {"augment": AugmentSpec(brightness=1.5)},
        {"augment": AugmentSpec(rotation=math.inf)},
        {"model_options": {"widths": (0, 8)}},
        {"model": "mobilenetv2", "model_options": {"alpha": -1.0}},
        {"model_options": {"dropout": 1.0}},
        {"learning_rate": 0.0},
        {"learning_rate": -1e-3},
        {"momentum": 1.0},
        {"val_fraction": -0.1},
        {"test_fraction": 1.0},
        {"val_fraction": 0.6, "test_fraction": 0.4},
        {"batch_size": 0},
        {"epochs": 0},
        {"image_size": 4},
        {"patience": -1},
        {"optimizer": "rmsprop"},
        {"strategy": "tpu"},
        {"head": "tanh"},
        {"class_weight": "heavy"},
        {"fine_tune_layers": 4},
        {"fine_tune_epochs": 2},
    ],
    ids=str,
)
def test_the_python_api_validates_the_same_ranges_before_reading_data(tmp_path, changes):
    cfg = TrainConfig(data=str(tmp_path / "no-such-dataset"), out=str(tmp_path / "out"), **changes)
    with pytest.raises(EdgeclsError) as caught:
        cfg.validate()
    with pytest.raises(EdgeclsError) as again:
        train(cfg)  # the dataset does not exist: the option error must come first
    assert str(again.value) == str(caught.value) and "does not exist" not in str(caught.value)


def test_fine_tuning_a_model_without_a_frozen_backbone_fails_before_training(tmp_path, shapes_folder):
    result = run_cli(
        "train",
        "--data",
        shapes_folder,
        "--out",
        tmp_path / "out",
        "--model",
        "simple",
        "--fine-tune-layers",
        "4",
        "--fine-tune-epochs",
        "2",
        "--epochs",
        "1",
    )
    assert "--fine-tune-layers needs a frozen pretrained backbone" in cli_error(result)
    assert "data:" not in result.stderr and "Epoch" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_the_api_checks_fine_tuning_before_the_dataset(tmp_path):
    cfg = TrainConfig(
        data=str(tmp_path / "no-such-dataset"),
        out=str(tmp_path / "out"),
        model="mobilenetv2",
        fine_tune_layers=10,
        fine_tune_epochs=1,
    )  # no --weights: nothing is frozen
    with pytest.raises(EdgeclsError, match="frozen pretrained backbone"):
        train(cfg)


def test_valid_options_pass_validation(tmp_path):
    TrainConfig(
        data="x",
        out="y",
        augment=AugmentSpec(rotation=180, shift=1, shear=1, zoom=0.99, brightness=1),
        learning_rate=10.0,
        momentum=0.0,
        val_fraction=0.0,
        test_fraction=0.99,
        model="mobilenetv2",
        model_options={"alpha": 0.35, "dropout": 0.0},
    ).validate()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--widths", "8,,16"], "--widths '8,,16' is invalid"),
        (["--seed", "-1"], "'--seed': -1 is not in the range"),
        (["--seed", str(2**32)], "'--seed': 4294967296 is not in the range"),
    ],
)
def test_seed_and_widths_typos_are_one_line_errors(tmp_path, shapes_folder, args, message):
    result = run_cli(
        "train", "--data", shapes_folder, "--out", tmp_path / "run", "--epochs", "1", "--image-size", "16", *args
    )
    assert message in cli_error(result)
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_a_seed_numpy_cannot_take_before_reading_data(tmp_path):
    with pytest.raises(EdgeclsError, match="--seed -1 is out of range"):
        train(TrainConfig(data=str(tmp_path / "missing"), out=str(tmp_path / "run"), seed=-1))
