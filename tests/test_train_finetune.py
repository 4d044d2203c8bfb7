"""Transfer learning in training (edgecls.train with the registry's pretrained backbones): fine-tuning keeps the
best epoch of both phases and continues TensorBoard's epoch count; a new backbone trains frozen from a weights
file, then fine-tunes its top; `--weights imagenet` comes from Keras' cache, or offline names what to download.

The first two: one real MobileNetV2 transfer-learning run (alpha 0.35, 32 px): the backbone is randomly
initialised with BatchNorm statistics measured on the images (so its features carry signal), the head trains
3 epochs, then the top 100 layers fine-tune for 2 epochs, which on this data makes the validation loss worse
(backbone seed 1): the best epoch is in the head phase.
"""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

HEAD_EPOCHS, FINE_TUNE_EPOCHS = 3, 2


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, shapes_folder):
    import keras

    from edgecls.core.data import load_split
    from edgecls.core.datasets import scan_folder
    from edgecls.train import TrainConfig, preprocess_spec_for, train

    root = tmp_path_factory.mktemp("finetune")
    cfg = TrainConfig(
        data=str(shapes_folder),
        out=str(root / "run"),
        model="mobilenetv2",
        image_size=32,
        epochs=HEAD_EPOCHS,
        fine_tune_layers=100,
        fine_tune_epochs=FINE_TUNE_EPOCHS,
        batch_size=8,
        learning_rate=0.01,
        val_fraction=0.3,
        tensorboard=True,
        seed=0,
        verbose=0,
    )
    spec = preprocess_spec_for(cfg, {})
    images = load_split(sum(scan_folder(shapes_folder).splits.values(), []), spec).x
    keras.utils.set_random_seed(1)  # the backbone's random weights: a draw where fine-tuning hurts
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # one training-mode pass sets the moving statistics to the data's
    backbone(images, training=True)
    weights = root / "backbone.weights.h5"
    backbone.save_weights(weights)
    cfg.model_options = {"alpha": 0.35, "weights": str(weights)}
    result = train(cfg)
    val = scan_folder(shapes_folder, cfg.val_fraction, cfg.test_fraction, cfg.seed).splits["val"]
    return result, load_split(val, spec)


def test_the_saved_model_is_the_best_epoch_over_both_phases(fine_tuned):
    import keras

    result, val = fine_tuned
    losses = result.history["val_loss"]
    assert len(losses) == HEAD_EPOCHS + FINE_TUNE_EPOCHS
    best = int(np.argmin(losses))

    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    probs = np.clip(model.predict(val.x, verbose=0), 1e-7, 1 - 1e-7)
    saved_loss = float(-np.log(probs[np.arange(len(val.y)), val.y]).mean())
    assert saved_loss == pytest.approx(losses[best], abs=1e-4)
    kept = json.loads((result.run_dir / "metadata.json").read_text())["train"]["kept_epoch"]
    phase = "head" if best < HEAD_EPOCHS else "fine-tune"
    assert kept == {
        "epoch": best + 1,
        "phase": phase,
        "monitor": "val_loss",
        "value": pytest.approx(losses[best], abs=1e-5),
    }
    # What makes this a regression test here: fine-tuning made things worse, so the last phase's best
    # (what was saved before) is clearly not the best epoch.
    assert phase == "head" and min(losses[HEAD_EPOCHS:]) > losses[best] + 0.05, losses


def test_tensorboard_epochs_of_fine_tuning_follow_the_head_epochs(fine_tuned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, _ = fine_tuned
    for phase_dir in ("train", "validation"):
        steps = []
        for events in sorted((result.run_dir / "tensorboard" / phase_dir).glob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
            acc.Reload()
            steps += [e.step for e in acc.Tensors("epoch_loss")]
        assert sorted(steps) == list(range(HEAD_EPOCHS + FINE_TUNE_EPOCHS)), (phase_dir, steps)


def _random_backbone_file(path, factory, **kw):
    """A no-top backbone of Keras applications, randomly initialised, saved as a weights file."""
    backbone = factory(input_shape=(32, 32, 3), include_top=False, weights=None, **kw)
    backbone.save_weights(path)
    return backbone


def test_a_new_backbone_trains_frozen_from_a_weights_file_then_fine_tunes_its_top(tmp_path, shapes_folder):
    """MobileNetV3-Small with --weights FILE: the bottom of the backbone is the file's after both phases; its top
    conv (in the 3 layers unfrozen) moved only if the kept epoch is a fine-tuning one."""
    import keras

    from edgecls.train import TrainConfig, train

    keras.utils.set_random_seed(2)
    backbone = _random_backbone_file(
        tmp_path / "v3.weights.h5", keras.applications.MobileNetV3Small, alpha=0.75, include_preprocessing=False
    )
    cfg = TrainConfig(
        data=str(shapes_folder),
        out=str(tmp_path / "run"),
        model="mobilenetv3small",
        model_options={"alpha": 0.75, "weights": str(tmp_path / "v3.weights.h5")},
        image_size=32,
        epochs=1,
        fine_tune_layers=3,
        fine_tune_epochs=1,
        batch_size=8,
        learning_rate=0.01,
        seed=0,
        verbose=0,
    )
    result = train(cfg)
    assert len(result.history["val_loss"]) == 2
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    for name in ("conv", "expanded_conv_depthwise", "expanded_conv_10_project"):  # never unfrozen
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], backbone.get_layer(name).get_weights()[0])
    kept = json.loads((result.run_dir / "metadata.json").read_text())["train"]["kept_epoch"]["phase"]
    top = np.array_equal(model.get_layer("conv_1").get_weights()[0], backbone.get_layer("conv_1").get_weights()[0])
    assert top == (kept == "head"), kept


def test_imagenet_weights_offline_name_the_file_its_url_and_the_cache_folder_in_one_line(tmp_path, shapes_folder):
    """No network (here and in CI): Keras' download fails; the error says what to fetch and where to put it."""
    from tests.conftest import cli_error, run_cli

    home = tmp_path / "keras-home"
    done = run_cli(
        "train", "--data", shapes_folder, "--out", tmp_path / "run", "--model", "efficientnetb0",
        "--weights", "imagenet", "--image-size", 32, "--epochs", 1,
        env={"KERAS_HOME": str(home)},
    )  # fmt: skip
    line = cli_error(done)
    assert "cannot download the ImageNet weights of EfficientNet-B0" in line, line
    url = "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5"
    assert f"download {url} and put it in {home / 'models'} as efficientnetb0_notop.h5" in line, line
    assert line.endswith("or pass the file with --weights FILE"), line
    assert not (tmp_path / "run").exists()


def test_imagenet_weights_found_in_the_keras_cache_are_used_offline(tmp_path, shapes_folder, monkeypatch):
    """The file under the name Keras wants, in $KERAS_HOME/models (MobileNetV2's files have no md5 to match):
    the run's backbone starts from it, frozen."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format  # Keras' own download format (.h5, not .weights.h5)

    from edgecls.models import imagenet_weights_file
    from edgecls.train import TrainConfig, train

    keras.utils.set_random_seed(3)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    cache = tmp_path / "keras-home" / "models"
    cache.mkdir(parents=True)
    with h5py.File(cache / imagenet_weights_file("mobilenetv2", (32, 32, 3), 0.35).name, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    cfg = TrainConfig(
        data=str(shapes_folder),
        out=str(tmp_path / "run"),
        model="mobilenetv2",
        model_options={"alpha": 0.35, "weights": "imagenet"},
        image_size=32,
        epochs=1,
        batch_size=8,
        seed=0,
        verbose=0,
    )
    result = train(cfg)
    model = keras.models.load_model(result.run_dir / "model.keras", compile=False)
    for name in ("Conv1", "block_16_project"):
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], backbone.get_layer(name).get_weights()[0])
