"""edgecls.converters.export: each format's attempts (the export, then the remedies) and its verification.

The remedies' descriptions name how many calibration images they use; the notes each build
returns must agree, for every remedy, not only the ones a failing accuracy gate happens to reach.
A two-class run's sigmoid head is read from the run and verified with.
"""

import re

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def test_every_onnx_int8_remedy_calibrates_on_the_images_its_description_names(tiny_keras, tmp_path):
    from edgecls.converters.calibration import CalibrationSampler
    from edgecls.converters.export import ExportContext
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions
    from edgecls.core.data import LoadedSplit

    train = np.random.default_rng(0).random((40, 8, 8, 3), dtype=np.float32)
    split = LoadedSplit(train, np.zeros(40, np.int64), [f"{i}.png" for i in range(40)])
    exporter = ExportContext(
        tiny_keras, tmp_path, CalibrationSampler(split), ConvertOptions(calibration_size=4), train[:2]
    )
    attempts = exporter.attempts(FORMATS["onnx-int8"])
    # 4 asked for; the remedies take 4 x 4 = 16 (40 are available)
    assert [re.search(r"(\d+) calibration images|\((\d+) images\)", d).group(0) for d, _ in attempts] == [
        "4 calibration images"
    ] + ["(16 images)"] * 4
    for i, (description, build) in enumerate(attempts):
        notes = build(tmp_path / f"attempt{i}.onnx")
        assert notes["calibration_images"] == (4 if i == 0 else 16), description


def test_a_sigmoid_head_run_is_converted_and_verified_as_two_classes(shapes_folder, tmp_path):
    """A two-class run has one sigmoid output: convert must read the head from the run and verify with it."""
    import json
    import shutil

    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.core.augment import AugmentSpec
    from edgecls.runtime.classifier import Classifier
    from edgecls.train import TrainConfig, train

    data = tmp_path / "two"
    for kind in ("circle", "triangle"):  # red vs blue: learnt in a few epochs
        shutil.copytree(shapes_folder / kind, data / kind)
    run = tmp_path / "run"
    train(
        TrainConfig(
            data=str(data),
            out=str(run),
            image_size=16,
            epochs=6,
            batch_size=8,
            seed=0,
            augment=AugmentSpec.off(),
            model_options={"widths": (8,)},
            verbose=0,
        )
    )
    keras_accuracy = json.loads((run / "metrics.json").read_text())["test_accuracy"]
    assert keras_accuracy >= 0.8  # above chance, or a wrong head could not show
    bundle = tmp_path / "bundle"
    convert(run, bundle, ConvertOptions(formats=parse_formats("tflite-fp32"), max_drop=0.0))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["head"] == "sigmoid"
    artifact = manifest["artifacts"][0]
    assert artifact["accuracy"] == pytest.approx(keras_accuracy) and artifact["agreement"] == 1.0
    prediction = Classifier(bundle, top_k=2).classify_file(next((data / "triangle").iterdir()))
    assert [label for label, _ in prediction.topk] == ["triangle", "circle"]
    assert sum(score for _, score in prediction.topk) == pytest.approx(1.0, abs=1e-5)
