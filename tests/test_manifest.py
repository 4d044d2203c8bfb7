"""edgecls.converters.manifest: the bundle's manifest, labels and verification table, judged on the model converted.

A pruned onnx-int8 bundle must carry labels and head in the ONNX file and labels.txt, and measure
its artifact against the pruned model, with the manifest's figures matching the table's.
"""

import pytest


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
