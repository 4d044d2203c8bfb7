"""What the int8 artifacts' notes claim (calibration images, layers kept in float) is what was built."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgecls.converters import onnx as onnx_export
from edgecls.converters.calibration import fingerprint, representative_set


def _weighted_nodes(path):
    """(name, op_type, weight comes through DequantizeLinear) for each Conv/Gemm/MatMul, in graph order."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return [
        (n.name, n.op_type, producer.get(n.input[1]) == "DequantizeLinear")
        for n in graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
    ]


def _train_split(run_dir):
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    return load_run_splits(open_run(run_dir), ("train",))["train"]


def test_first_and_last_layers_kept_in_float_have_no_dequantized_weights(tiny_run_dir, tmp_path):
    from edgecls.core.rundir import open_run

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    x = _train_split(tiny_run_dir).x
    onnx_export.export_onnx(open_run(tiny_run_dir).load_model(), fp32, x)
    options = onnx_export.OnnxQuantOptions(keep_ends_in_float=True)
    kept = onnx_export.quantize_int8(fp32, int8, x[:16], options)

    nodes = _weighted_nodes(int8)
    assert len(nodes) >= 3
    assert kept == (nodes[0][0], nodes[-1][0])  # the ends of the graph that was quantized
    assert [name for name, _, dequantized in nodes if not dequantized] == list(kept)  # and only they stay float
    # the cause: pre-processing fused the exported MatMul (+ bias Add) into a Gemm with another name
    exported_last = _weighted_nodes(fp32)[-1]
    assert nodes[-1][1] == "Gemm" and exported_last[1] == "MatMul" and exported_last[0] not in kept


def test_unknown_node_names_are_refused_not_silently_ignored(tiny_run_dir, tmp_path):
    from edgecls.core.rundir import open_run

    fp32 = tmp_path / "fp32.onnx"
    x = _train_split(tiny_run_dir).x
    onnx_export.export_onnx(open_run(tiny_run_dir).load_model(), fp32, x)
    last_exported = _weighted_nodes(fp32)[-1][0]  # renamed by pre-processing
    with pytest.raises(ValueError, match="not in the graph being quantized"):
        onnx_export.quantize_int8(
            fp32, tmp_path / "int8.onnx", x[:4], onnx_export.OnnxQuantOptions(exclude_nodes=(last_exported,))
        )


def test_manifest_says_which_layers_are_float_and_the_file_agrees(tiny_run_dir, tmp_path, monkeypatch):
    from edgecls.converters.export import ExportContext
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    every = ExportContext.attempts
    # start at the last remedy (the real one, real conversion) instead of waiting for the others to fail
    monkeypatch.setattr(
        ExportContext, "attempts", lambda self, fmt: [a for a in every(self, fmt) if "kept in float" in a[0]]
    )
    result = convert(
        tiny_run_dir,
        tmp_path / "bundle",
        ConvertOptions(formats=parse_formats("onnx-int8"), calibration_size=16, max_drop=100.0),
    )
    notes = result.manifest["artifacts"][0]["notes"]
    nodes = _weighted_nodes(tmp_path / "bundle" / "model_int8.onnx")
    assert "first and last layers kept in float" in notes["calibration"]
    assert notes["kept_in_float"] == [name for name, _, dequantized in nodes if not dequantized]
    assert notes["kept_in_float"] == [nodes[0][0], nodes[-1][0]]


def test_notes_and_table_report_the_calibration_images_really_used(tiny_run_dir, tmp_path):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    available = len(_train_split(tiny_run_dir).y)
    assert available < 1000
    result = convert(
        tiny_run_dir,
        tmp_path / "bundle",
        ConvertOptions(formats=parse_formats("tflite-int8,onnx-int8"), calibration_size=1000, max_drop=100.0),
    )
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        assert f"{available} calibration images" in art["notes"]["calibration"]
        assert "1000" not in art["notes"]["calibration"]
        assert art["notes"]["calibration_images"] == available
    assert result.table.count(f"{available} calibration images") == 2 and "1000" not in result.table
    assert manifest["calibration"]["size"] == available and manifest["calibration"]["requested"] == 1000


def test_an_artifact_built_by_a_remedy_records_the_calibration_set_it_used(tiny_run_dir, tmp_path, monkeypatch):
    from edgecls.converters.export import ExportContext
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    every = ExportContext.attempts
    # the real "more calibration data" remedy, run first instead of after a failure
    monkeypatch.setattr(
        ExportContext, "attempts", lambda self, fmt: [a for a in every(self, fmt) if a[0].startswith("more")]
    )
    result = convert(
        tiny_run_dir,
        tmp_path / "bundle",
        ConvertOptions(formats=parse_formats("tflite-int8,onnx-int8"), calibration_size=8, max_drop=100.0),
    )
    train = _train_split(tiny_run_dir).x
    used = representative_set(train, min(32, len(train)), 0)
    assert len(used) > 8
    top = result.manifest["calibration"]
    assert top["size"] == 8 and top["fingerprint"] == fingerprint(representative_set(train, 8, 0))
    for art in result.manifest["artifacts"]:
        notes = art["notes"]
        assert notes["calibration"] == f"more calibration data ({len(used)} images)"
        assert notes["calibration_images"] == len(used)
        assert notes["calibration_fingerprint"] == fingerprint(used) != top["fingerprint"]


def _remedies(fmt_name, train_images, qat_source=None, **options):
    """The descriptions of `fmt_name`'s attempts, in the order convert tries them (nothing is built)."""
    from edgecls.converters.calibration import CalibrationSampler
    from edgecls.converters.export import ExportContext
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions
    from edgecls.core.data import LoadedSplit

    x = np.zeros((train_images, 8, 8, 3), np.float32)
    split = LoadedSplit(x, np.zeros(train_images, np.int64), [f"{i}.png" for i in range(train_images)])
    context = ExportContext(
        None, Path("unused"), CalibrationSampler(split), ConvertOptions(**options), x[:1], qat_source
    )
    return [description for description, _ in context.attempts(FORMATS[fmt_name])]


def _never_called():
    raise AssertionError("listing the attempts must not fine-tune: QAT runs only when its attempt comes")


def test_onnx_int8_remedies_are_tried_in_the_order_that_decides_which_artifact_ships():
    assert _remedies("onnx-int8", 40, calibration_size=4) == [
        "QDQ per-channel, minmax, 4 calibration images",
        "more calibration data (16 images)",
        "percentile calibration (16 images)",
        "entropy calibration (16 images)",
        "first and last layers kept in float (16 images)",
    ]
    # the training split holds no more than asked: "more calibration data" would be the same set, so it is left out
    assert _remedies("onnx-int8", 10, calibration_size=16, calibration_method="entropy") == [
        "QDQ per-channel, entropy, 10 calibration images",
        "percentile calibration (10 images)",
        "entropy calibration (10 images)",
        "first and last layers kept in float (10 images)",
    ]


def test_tflite_int8_remedies_are_tried_in_the_order_that_decides_which_artifact_ships():
    assert _remedies("tflite-int8", 40, _never_called, calibration_size=4, qat="remedy") == [
        "per-channel, 4 calibration images",
        "more calibration data (16 images)",
        "quantization-aware training (3 epochs)",
    ]
    assert _remedies("tflite-int8", 10, _never_called, calibration_size=16, qat="remedy", qat_epochs=1) == [
        "per-channel, 10 calibration images",
        "quantization-aware training (1 epoch)",
    ]
    assert _remedies("tflite-int8", 40, _never_called, calibration_size=4, qat="always") == [
        "quantization-aware training (3 epochs)"
    ]
    never = ["per-channel, 4 calibration images", "more calibration data (16 images)"]
    assert _remedies("tflite-int8", 40, _never_called, calibration_size=4, qat="never") == never
    assert _remedies("tflite-int8", 40, None, calibration_size=4, qat="remedy") == never  # no QAT source: none


@pytest.mark.parametrize("fmt_name", ["tflite-fp32", "tflite-fp16", "onnx-fp32"])
def test_float_formats_have_one_attempt_and_no_remedy(fmt_name):
    assert _remedies(fmt_name, 40, _never_called, calibration_size=4) == [""]
