"""`convert`: real TFLite/ONNX conversions of a tiny trained model, verified in the real runtimes."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecls.core.outputs import bundle_guard
from edgecls.core.rundir import open_run
from edgecls.runtime.atomic import check_output
from edgecls.runtime.bundle import load_bundle, sha256_file
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.session import ModelSession
from tests.conftest import cli_error, run_cli, snapshot


def _keras_probs(run_dir, x):
    import keras

    from edgecls.core.metrics import probabilities

    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    return probabilities(model.predict(x, verbose=0))


def _test_tensors(run_dir):
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run

    return load_run_splits(open_run(run_dir), ("test",))["test"]


def test_bundle_has_every_format_with_hashes_and_labels(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    names = [a["name"] for a in manifest["artifacts"]]
    assert names == ["tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8"]
    assert manifest["labels"] == ["circle", "square", "triangle"]
    assert (tiny_bundle / "labels.txt").read_text().split() == manifest["labels"]
    assert manifest["input"]["shape"] == [1, 32, 32, 3] and manifest["input"]["layout"] == "NHWC"
    assert manifest["input"]["color"] == "rgb" and manifest["input"]["resize"] == "stretch"
    for art in manifest["artifacts"]:
        path = tiny_bundle / art["file"]
        assert sha256_file(path) == art["sha256"] and path.stat().st_size == art["size_bytes"]
        assert 0 <= art["accuracy"] <= 1 and 0 <= art["agreement"] <= 1 and art["macs"] > 0
    for name, sha in manifest["files"].items():
        assert sha256_file(tiny_bundle / name) == sha
    int8 = next(a for a in manifest["artifacts"] if a["name"] == "tflite-int8")
    assert int8["input"]["dtype"] == "int8" and int8["input"]["scale"] > 0
    assert int8["output"]["dtype"] == "int8" and int8["output"]["scale"] > 0
    assert manifest["calibration"]["size"] == 32 and len(manifest["calibration"]["fingerprint"]) == 64
    assert len(manifest["source"]["model_sha256"]) == 64 and manifest["reference_accuracy"] is not None
    assert {"tensorflow", "onnxruntime", "ai-edge-litert"} <= set(manifest["versions"])
    assert tiny_bundle.with_name("tiny-bundle.tar").is_file()


def test_int8_tflite_stores_weights_as_int8(tiny_bundle):
    sizes = {a.name: a.size_bytes for a in load_bundle(tiny_bundle).manifest.artifacts}
    assert sizes["tflite-int8"] < 0.5 * sizes["tflite-fp32"]
    assert sizes["tflite-fp16"] < 0.7 * sizes["tflite-fp32"]


def test_onnx_int8_weights_are_stored_as_int8(tiny_bundle):
    import onnx

    graph = onnx.load(str(tiny_bundle / "model_int8.onnx")).graph
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    big_float = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    assert len(int8) >= 3 and not big_float  # every conv/dense kernel quantized, none left in float


def test_onnx_files_pass_the_full_checker_and_carry_labels(tiny_bundle):
    import onnx

    for name in ("model_fp32.onnx", "model_int8.onnx"):
        model = onnx.load(str(tiny_bundle / name))
        onnx.checker.check_model(model, full_check=True)
        props = {p.key: p.value for p in model.metadata_props}
        assert json.loads(props["labels"]) == ["circle", "square", "triangle"]
        assert json.loads(props["preprocess"])["height"] == 32
    ops = {n.op_type for n in onnx.load(str(tiny_bundle / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_fp32_artifacts_match_keras_and_int8_stays_close(tiny_run_dir, tiny_bundle):
    test = _test_tensors(tiny_run_dir)
    ref = _keras_probs(tiny_run_dir, test.x)
    bundle = load_bundle(tiny_bundle)
    for art in bundle.manifest.artifacts:
        probs = ModelSession(bundle.verify(art), art.format, head=bundle.manifest.head).predict(test.x)
        diff = np.abs(probs - ref).max()
        assert diff == pytest.approx(art.max_prob_diff, abs=1e-5), art.name  # manifest tells the truth
        if art.precision == "fp32":
            assert diff < 1e-4, art.name
            assert (probs.argmax(1) == ref.argmax(1)).all()
        else:
            assert diff < 0.2, art.name


def test_failed_accuracy_gate_tries_remedies_and_leaves_no_bundle(tiny_run_dir, tmp_path, capsys):
    """A negative limit (the library's way to fail every attempt; the CLI refuses it) tries every remedy."""
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import AccuracyGateError, ConvertOptions, convert

    out = tmp_path / "never"
    options = ConvertOptions(formats=parse_formats("onnx-int8"), max_drop=-50, calibration_size=16)
    with pytest.raises(AccuracyGateError) as refused:
        convert(tiny_run_dir, out, options)
    error = str(refused.value)
    assert "onnx-int8 loses more than -50 accuracy points" in error
    for remedy in ("more calibration data", "percentile", "entropy", "kept in float"):
        assert remedy in error
    said = capsys.readouterr().err
    assert said.count("trying the next remedy") == 4 and said.count("no remedy left") == 1
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("no-metadata", "no metadata.json"),
        ("corrupt-model", "cannot load"),
        ("exists", "already exists"),
        ("bad-format", "unknown format(s) tflite-int4"),
        ("bad-prune", "cannot read --prune"),
    ],
)
def test_convert_bad_input_is_one_clear_line(tiny_run_dir, tmp_path, case, message):
    import shutil

    run = tmp_path / "run"
    out = tmp_path / "bundle"
    args = ["--formats", "tflite-fp32"]
    if case != "missing":
        shutil.copytree(tiny_run_dir, run)
    if case == "no-metadata":
        (run / "metadata.json").unlink()
    if case == "corrupt-model":
        (run / "model.keras").write_bytes(b"PK\x03\x04 broken zip")
    if case == "exists":  # an empty folder may be used; one holding anything is not replaced without --overwrite
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "bad-format":
        args = ["--formats", "tflite-int4"]
    if case == "bad-prune":
        args += ["--prune", "half"]
    result = run_cli("convert", run, "--out", out, *args)
    assert message in cli_error(result)
    assert case == "exists" or not out.exists()
    assert case != "exists" or (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("prune", ["structured=0.5", "sparsity=0.6"])
def test_convert_with_pruning_reports_before_and_after(tiny_run_dir, tmp_path, prune):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    result = convert(
        tiny_run_dir,
        tmp_path / "pruned",
        ConvertOptions(
            formats=parse_formats("tflite-int8"),
            prune=prune,
            prune_epochs=1,
            max_prune_drop=100.0,
            calibration_size=16,
            max_drop=100.0,
        ),
    )
    pruning = result.manifest["pruning"]
    assert pruning["method"] == prune.split("=")[0] and pruning["fine_tune_epochs"] == 1
    assert {"accuracy_before", "accuracy_after", "params_before", "params_after", "macs_before", "macs_after"} <= set(
        pruning
    )
    if prune.startswith("structured"):
        assert pruning["macs_before"] / pruning["macs_after"] > 3.5  # 8,16 -> 4,8 filters
        assert result.manifest["artifacts"][0]["macs"] == pruning["macs_after"]
        assert pruning["batchnorm_recalibrated"] == 4 and pruning["refit_images"] > 0  # BN refit after pruning
    else:
        assert pruning["sparsity"] == pytest.approx(0.6, abs=0.02)
        assert pruning["nonzero_params_after"] < 0.5 * pruning["params_after"]
    assert result.manifest["source"]["accuracy"] == pytest.approx(pruning["accuracy_before"], abs=1e-6)


def _fake_run(path, **metadata):
    """A folder that looks like a run edgecls wrote (metadata.json and model.keras)."""
    path.mkdir(parents=True)
    meta = {"format": "edgecls-run/1", "labels": ["a", "b"], "input_shape": [16, 16, 3], "preprocess": {}, **metadata}
    (path / "metadata.json").write_text(json.dumps(meta))
    (path / "model.keras").write_bytes(b"old model")
    return path


def test_convert_never_writes_into_the_built_in_dataset_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "shapes-v1" / "circle").mkdir(parents=True)
    run = _fake_run(tmp_path / "run", dataset={"source": "shapes", "builtin": "shapes"})
    before = snapshot(cache)
    result = run_cli("convert", run, "--out", cache / "shapes-v1" / "bundle", env={"EDGECLS_DATA": str(cache)})
    assert "lies inside the built-in dataset cache" in cli_error(result)
    assert snapshot(cache) == before
    monkeypatch.setenv("EDGECLS_DATA", str(cache))
    with pytest.raises(EdgeclsError, match="is the built-in dataset cache"):
        check_output(cache, True, **bundle_guard(open_run(run)))


# A convert that prunes, fine-tunes with QAT and quantizes both containers, then lists the edgecls modules it loaded.
_CONVERT_AND_LIST_MODULES = """
import json, sys
from edgecls.converters.formats import parse_formats
from edgecls.converters.pipeline import ConvertOptions, convert

options = ConvertOptions(
    formats=parse_formats("tflite-int8,onnx-int8"), prune="structured=0.5", prune_epochs=1, max_prune_drop=100.0,
    qat="always", qat_epochs=1, calibration_size=8, check_images=0, max_drop=100.0,
)
convert(sys.argv[1], sys.argv[2], options)
print(json.dumps(sorted(m for m in sys.modules if m == "edgecls" or m.startswith("edgecls."))))
"""
_BELOW_TRAINING = ("edgecls.runtime", "edgecls.core", "edgecls.converters")


def test_a_convert_loads_no_edgecls_module_above_the_converters(tiny_run_dir, tmp_path):
    """The import-linter contract sees `import` statements only; this sees what a real convert loads, by any means."""
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT_AND_LIST_MODULES, str(tiny_run_dir), str(tmp_path / "bundle")],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert {"edgecls.converters.prune", "edgecls.converters.qat", "edgecls.converters.onnx"} <= set(loaded)
    below = [m for m in loaded if m == "edgecls" or any(m == p or m.startswith(p + ".") for p in _BELOW_TRAINING)]
    assert sorted(set(loaded) - set(below)) == []


def test_converters_import_no_module_by_a_name_in_a_string():
    """importlib.import_module / __import__ would hide an import from the import-linter contracts."""
    import edgecls.converters

    found = []
    for path in sorted(Path(edgecls.converters.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("import_module", "__import__"):
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []
