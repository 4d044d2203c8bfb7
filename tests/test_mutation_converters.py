"""Direct tests for converters/ mutants that survived benchmarks/mutation.py (issue 15 point 14).

The remedies' descriptions name how many calibration images they use; the notes each build
returns must agree, for every remedy, not only the ones a failing accuracy gate happens to reach.
A pruned onnx-int8 bundle must carry labels and head in the ONNX file and labels.txt, and measure
its artifact against the pruned model, with the manifest's figures matching the table's.
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


@pytest.fixture(scope="module")
def pruned_onnx_bundle(tiny_run_dir, tmp_path_factory):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("mutation-converters") / "bundle"
    return convert(
        tiny_run_dir,
        out,
        ConvertOptions(
            formats=parse_formats("onnx-int8"),
            prune="structured=0.5",
            prune_epochs=1,
            max_prune_drop=100.0,
            calibration_size=8,
            max_drop=100.0,
        ),
    )


def test_a_pruned_onnx_bundle_carries_labels_and_head_and_measures_against_the_pruned_model(
    pruned_onnx_bundle, tiny_run_dir
):
    import json

    onnx = pytest.importorskip("onnx")
    meta = json.loads((tiny_run_dir / "metadata.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(pruned_onnx_bundle.bundle / "model_int8.onnx")).metadata_props}
    labels = (tiny_run_dir / "labels.txt").read_text().split() if (tiny_run_dir / "labels.txt").exists() else None
    assert set(props) == {"labels", "preprocess", "head"}
    assert json.loads(props["labels"]) == pruned_onnx_bundle.manifest["labels"] == (labels or meta["labels"])
    assert props["head"] == meta.get("head", "softmax") == pruned_onnx_bundle.manifest["head"]
    labels_txt = (pruned_onnx_bundle.bundle / "labels.txt").read_text()
    assert labels_txt == "".join(f"{label}\n" for label in pruned_onnx_bundle.manifest["labels"])

    # after pruning, artifacts are measured against the pruned model (one test, not two: mutmut maps the
    # fixture's convert() call to the first test that uses it, so a second test would never see its mutants)
    manifest = pruned_onnx_bundle.manifest
    pruning = manifest["pruning"]
    assert manifest["reference_accuracy"] == round(pruning["accuracy_after"], 6)
    assert manifest["source"]["accuracy"] == round(pruning["accuracy_before"], 6)
    art = manifest["artifacts"][0]
    row = pruned_onnx_bundle.table.splitlines()[2].split()  # name size accuracy Δpoints agree max|Δp| ...
    assert float(row[3]) == pytest.approx(100 * (art["accuracy"] - pruning["accuracy_after"]), abs=0.006)
    # int8 moves probabilities: the manifest records by how much, as the table does
    assert art["agreement"] == round(art["agreement"], 6) and art["accuracy"] == round(art["accuracy"], 6)
    assert art["max_prob_diff"] > 0 and art["max_prob_diff"] == pytest.approx(float(row[5]), abs=6e-6)


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


def test_the_accuracy_gate_and_manifest_use_the_exact_drop_and_agreement(tiny_run_dir, tmp_path):
    """A model whose int8 artifact disagrees with it on known images: the gate's drop is 100 x the accuracy
    difference (not more), and the manifest's agreement is the true fraction rounded to 6 places.

    Keras separates 'square' (class 1) from 'circle' (class 0) by a logit margin of about 1e-4, far below one int8
    step, so the int8 artifact sees a tie and answers class 0 on every image.
    """
    import json
    import shutil

    import keras

    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    test = load_run_splits(open_run(run), names=("test",))["test"]
    green = test.x[..., 1].mean(axis=(1, 2)) - (test.x[..., 0] + test.x[..., 2]).mean(axis=(1, 2)) / 2
    cut = float(np.sort(green)[-2] + np.sort(green)[-1]) / 2  # class 1 for the greenest image only
    inputs = keras.Input(test.x.shape[1:])
    feature = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(3)(feature)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    t = 1e-3
    model.layers[2].set_weights(
        [np.array([[0, -t / 2, 0], [0, t, 0], [0, -t / 2, 0]], np.float32), np.array([0, -t * cut, -10], np.float32)]
    )
    model.save(run / "model.keras")
    keras_pred = model.predict(test.x, verbose=0).argmax(1)
    assert keras_pred.sum() == 1  # one image is called square by Keras
    keras_acc, int8_acc = float((keras_pred == test.y).mean()), float((test.y == 0).mean())
    drop = 100 * (keras_acc - int8_acc)
    assert drop > 0, "the greenest test image must be a square for this test to see the gate"

    bundle = tmp_path / "bundle"
    convert(run, bundle, ConvertOptions(formats=parse_formats("tflite-int8"), max_drop=drop + 0.4 * drop / 100))
    artifact = json.loads((bundle / "manifest.json").read_text())["artifacts"][0]
    assert artifact["accuracy"] == round(int8_acc, 6)
    assert artifact["agreement"] == round(float((keras_pred == 0).mean()), 6)
