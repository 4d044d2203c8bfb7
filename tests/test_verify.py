"""edgecls.converters.verify: the accuracy gate's verdict, counted in images, exact at the limit.

A crafted model whose int8 artifact ties pins the drop the gate is given and the agreement the manifest records.
"""

import numpy as np

from edgecls.converters.verify import format_recall, format_table, gate_passes


def test_gate_counts_images_so_a_loss_exactly_at_the_limit_passes():
    assert 100 * (0.99 - 0.98) > 1.0  # what a float comparison of accuracies would have refused
    assert gate_passes(99, 98, 100, 1.0)  # 1 image of 100 is 1 point
    assert gate_passes(1, 0, 320, 0.3125)  # 1 image of 320 is 0.3125 points
    assert not gate_passes(99, 97, 100, 1.0) and not gate_passes(2, 0, 320, 0.3125)
    assert gate_passes(50, 50, 100, 0.0) and not gate_passes(50, 49, 100, 0.0)


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


def test_the_verification_table_names_what_the_artifacts_were_judged_against():
    row = {"name": "onnx-int8", "size_bytes": 5266, "accuracy": 0.9, "agreement": 0.95, "max_prob_diff": 0.07}
    convert, imported = format_table([row], 0.92).splitlines(), format_table([row], 0.92, "source").splitlines()
    assert convert[1].split() == ["keras", "0.9200"] and imported[1].split() == ["source", "0.9200"]
    assert imported[2].split()[:4] == ["onnx-int8", "5,266", "0.9000", "-2.00"]
    recall = format_recall(["a"], {"a": 3}, {"a": 1.0}, {"onnx-int8": {"a": 2 / 3}}, "source").splitlines()
    assert recall[0] == "per-class recall: source, then each artifact's change in points"
    assert recall[1].split()[:3] == ["class", "images", "source"] and recall[2].split() == [
        "a",
        "3",
        "1.0000",
        "-33.33",
    ]


def test_the_gate_fails_an_artifact_whose_probabilities_are_nan():
    from edgecls.converters.verify import compare, result_passes

    y = np.array([0, 1, 1, 0])
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    nan = np.full_like(reference, np.nan)  # what a NaN mean gives, in the source model and its artifact alike
    result = compare(nan, nan, y, ["a", "b"])  # argmax of NaN rows is 0 for both: agreement 1.0, no image lost
    assert result["agreement"] == 1.0 and result["reference_right"] == result["right"]
    assert not result_passes(result, len(y), 1.0)
    assert result_passes(compare(reference, reference, y, ["a", "b"]), len(y), 1.0)
