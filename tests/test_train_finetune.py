"""Fine-tuning keeps the best epoch of both phases and continues TensorBoard's epoch count.

Issue 16 points 4 and 9. One real MobileNetV2 transfer-learning run (alpha 0.35, 32 px): the backbone
is randomly initialised with BatchNorm statistics measured on the images (so its features carry
signal), the head trains 3 epochs, then the top 100 layers fine-tune for 2 epochs, which on this data
makes the validation loss worse (backbone seed 1): the best epoch is in the head phase.
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
