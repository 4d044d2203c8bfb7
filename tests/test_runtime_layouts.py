"""The runtime's input layouts, mean/std normalization, logits outputs and named tensors (models made elsewhere).

Real models built offline: an ONNX classifier written with onnx.helper the way a PyTorch export looks (NCHW float
input `pixel_values`, per-channel ImageNet-like mean/std, a Conv, global pooling and a Gemm, logits out, a second
`features` output first), the same network in NHWC, and a LiteRT int8-input NCHW model converted from Keras.
Real photos: the samples that ship with scikit-learn and matplotlib.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.runtime.bundle import load_bundle, sha256_file
from edgecls.runtime.classifier import Classifier
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec, load_image, pixels, preprocess
from edgecls.runtime.session import ModelSession, quantize
from tests.conftest import REPO, cli_error, run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

H, W = 36, 44  # not square: a transpose that swaps height and width cannot pass
LABELS = ["ant", "bee", "cat", "dog", "eel"]
# Non-uniform per channel, so a channel swap or a missing transpose changes every score.
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
FEATURES = 6


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _photos() -> list:
    """Real photos that ship with installed packages (no download): scikit-learn's two and matplotlib's one."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    cbook = pytest.importorskip("matplotlib.cbook")
    images = Path(sklearn_datasets.__file__).parent / "images"
    return [
        images / "china.jpg",
        images / "flower.jpg",
        Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
    ]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """The photos and 3 crops of each (12 images: corners and centres differ in colour and texture)."""
    folder = tmp_path_factory.mktemp("photos")
    for path in _photos():
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        crops = {"whole": image, "left": image[:, : w // 2], "top": image[: h // 2], "centre": image[h // 4 : -h // 4]}
        for name, crop in crops.items():
            cv2.imwrite(str(folder / f"{path.stem}-{name}.png"), crop)
    return folder


def _onnx_model(path: Path, layout: str = "NCHW", dtype: str = "float32", size=(H, W), batch="N") -> Path:
    """conv 3x3/2 -> global average pool -> `features` -> gemm -> `logits`, with fixed random weights.

    layout NHWC puts a Transpose in front (what a Keras export looks like); dtype uint8 takes raw pixels and
    normalizes inside (Cast, Sub mean, Div std); size ("h", "w") leaves height and width open, as an export with
    dynamic axes does; batch 1 fixes the batch dimension, as a plain torch.onnx.export does. Outputs: `features`
    first, `logits` second.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    shape = [batch, 3, *size] if layout == "NCHW" else [batch, *size, 3]
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.UINT8
    inits = _grey_centred(rng)
    nodes, x = [], "pixel_values"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    if dtype != "float32":
        inits.update(mean=np.reshape(MEAN, (1, 3, 1, 1)), std=np.reshape(STD, (1, 3, 1, 1)))
        nodes += [
            helper.make_node("Cast", [x], ["float"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["float", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["normalized"]),
        ]
        x = "normalized"
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"]),
        helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "foreign",
        [helper.make_tensor_value_info("pixel_values", elem, shape)],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, FEATURES]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, len(LABELS)]),
        ],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _grey_centred(rng) -> dict:
    """Weights whose logits are 0 for a uniform grey image: random weights alone put every photo in one class
    (what all photos share dominates their features); centred on grey, the photos' colours decide."""
    weights = {
        "conv_w": rng.normal(0, 0.5, (FEATURES, 3, 3, 3)),
        "conv_b": rng.normal(0, 0.1, FEATURES),
        "fc_w": rng.normal(0, 0.5, (FEATURES, len(LABELS))),
    }
    grey = (np.full((3, H, W), 128.0) - np.reshape(MEAN, (3, 1, 1))) / np.reshape(STD, (3, 1, 1))
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)))
    conv = np.array(
        [
            [[np.sum(padded[:, i : i + 3, j : j + 3] * w) + b for j in range(0, W, 2)] for i in range(0, H, 2)]
            for w, b in zip(weights["conv_w"], weights["conv_b"])
        ]
    )
    features = conv.mean(axis=(1, 2))
    weights["fc_b"] = -features @ weights["fc_w"]
    return weights


def write_bundle(folder: Path, model: Path, spec: PreprocessSpec, **fields) -> Path:
    """A bundle of one artifact as an importer writes it; `fields` override manifest keys (None deletes one).

    Artifact keys go in `artifact={...}` (None values delete them too)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / model.name)
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    fmt = model.suffix[1:]
    artifact = {
        "name": f"{fmt}-fp32",
        "file": model.name,
        "format": fmt,
        "precision": "fp32",
        "size_bytes": model.stat().st_size,
        "sha256": sha256_file(model),
        "input": {"dtype": "float32", "scale": 0.0, "zero_point": 0},
        "output": {"dtype": "float32", "scale": 0.0, "zero_point": 0},
        "notes": {},
        "input_name": "",
        "output_name": "logits",
    }
    artifact.update(fields.pop("artifact", {}))
    manifest = {
        "format": "edgecls-bundle/1",
        "labels": LABELS,
        "input": {"shape": [1, *spec.tensor_shape], **spec.to_dict()},
        "head": "softmax",
        "output": "logits",
        "reference_accuracy": None,
        "artifacts": [{k: v for k, v in artifact.items() if v is not None}],
        "source": {"kind": "import", "framework": "onnx", "file": model.name},
        "files": {"labels.txt": sha256_file(folder / "labels.txt")},
        "checks": [],
    }
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}, indent=1))
    return folder


def nchw_spec(**kw) -> PreprocessSpec:
    # interpolation "linear": exactly what cv2.resize does by default, as the user's own preprocessing below
    return PreprocessSpec(H, W, mean=MEAN, std=STD, interpolation="linear", layout="NCHW", **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("foreign-onnx")
    return {
        "nchw": _onnx_model(folder / "nchw.onnx"),
        "nhwc": _onnx_model(folder / "nhwc.onnx", layout="NHWC"),
        "nchw-uint8": _onnx_model(folder / "nchw_uint8.onnx", dtype="uint8"),
    }


@pytest.fixture(scope="module")
def nchw_bundle(tmp_path_factory, models) -> Path:
    return write_bundle(tmp_path_factory.mktemp("b") / "nchw", models["nchw"], nchw_spec())


def _users_own_preprocessing(path: Path) -> np.ndarray:
    """What a PyTorch user writes next to onnxruntime: OpenCV decode and resize, (x - mean) / std, HWC -> CHW."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = cv2.resize(image, (W, H)).astype(np.float32)
    x = (x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return x.transpose(2, 0, 1)[None]


def test_an_nchw_mean_std_logits_model_classifies_like_onnxruntime_with_numpy_preprocessing(
    nchw_bundle, models, photo_folder
):
    session = ort.InferenceSession(str(models["nchw"]), providers=["CPUExecutionProvider"])
    classifier = Classifier(nchw_bundle, top_k=len(LABELS))
    files = sorted(photo_folder.iterdir())
    expected = np.concatenate(
        [_softmax(session.run(["logits"], {"pixel_values": _users_own_preprocessing(f)})[0]) for f in files]
    )
    got = [classifier.classify_file(f) for f in files]
    probs = np.array([[dict(p.topk)[label] for label in LABELS] for p in got])
    assert [p.label for p in got] == [LABELS[k] for k in expected.argmax(axis=1)]
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    assert len({p.label for p in got}) > 1 and expected.max() < 0.999  # the photos tell classes apart, softly


def test_edgecls_predict_gives_the_same_probabilities_on_an_nchw_logits_bundle(nchw_bundle, models, photo_folder):
    session = ort.InferenceSession(str(models["nchw"]), providers=["CPUExecutionProvider"])
    result = run_cli("predict", str(nchw_bundle), str(photo_folder), "--json", "--top-k", str(len(LABELS)), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(list(photo_folder.iterdir()))
    for line in lines:
        want = _softmax(session.run(["logits"], {"pixel_values": _users_own_preprocessing(Path(line["path"]))})[0])[0]
        got = {entry["label"]: entry["score"] for entry in line["topk"]}
        assert line["top1"] == LABELS[int(want.argmax())]
        np.testing.assert_allclose([got[label] for label in LABELS], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixed", [1, 4])
def test_an_onnx_model_with_a_fixed_batch_dimension_runs_any_batch_in_chunks_of_that_size(
    tmp_path, models, photo_folder, fixed
):
    """A plain torch.onnx.export fixes the batch at 1: verification's batches of 64 and bench's batches failed with
    onnxruntime's INVALID_ARGUMENT (Got: 4 Expected: 1). 10 images: chunks of 4 leave a remainder of 2."""
    fixed_model = _onnx_model(tmp_path / "fixed.onnx", batch=fixed)
    spec = nchw_spec()
    x = np.stack([preprocess(load_image(f), spec) for f in sorted(photo_folder.iterdir())[:10]])
    open_batch = ModelSession(models["nchw"], "onnx", layout="NCHW", output="logits", output_name="logits")
    session = ModelSession(fixed_model, "onnx", layout="NCHW", output="logits", output_name="logits")
    assert session.input_spec.shape[0] == fixed
    expected = open_batch.predict(x)
    np.testing.assert_allclose(session.predict(x), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(session.predict(x, batch_size=3), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(session.run_prepared(x[:1].transpose(0, 3, 1, 2)), expected[:1], atol=1e-6, rtol=0)


def test_the_same_network_in_nhwc_and_nchw_gives_the_same_scores(tmp_path, models, photo_folder):
    nhwc = write_bundle(tmp_path / "nhwc", models["nhwc"], replace(nchw_spec(), layout="NHWC"))
    a, b = Classifier(nhwc, top_k=len(LABELS)), Classifier(write_bundle(tmp_path / "nchw", models["nchw"], nchw_spec()))
    assert a.session.input_spec.shape[1:] == (H, W, 3) and b.session.input_spec.shape[1:] == (3, H, W)
    images = [load_image(f) for f in sorted(photo_folder.iterdir())]
    np.testing.assert_allclose(
        a.infer(np.stack([a.prepare(im) for im in images])),
        b.infer(np.stack([b.prepare(im) for im in images])),
        atol=1e-6,
    )


@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_prepare_equals_the_transposed_float_path_bit_for_bit(nchw_bundle, photo_folder, order):
    """Classifier.prepare (uint8 planes through the table) == preprocess, transpose, quantize; so do the daemon's
    prepare_pixels and the float API (`probabilities`, which transposes inside)."""
    classifier = Classifier(nchw_bundle)
    for path in sorted(photo_folder.iterdir())[:4]:
        image = load_image(path)
        image = np.ascontiguousarray(image[..., ::-1]) if order == "bgr" else image
        expected = quantize(
            preprocess(image, classifier.spec, order).transpose(2, 0, 1)[None], classifier.session.input_spec
        )[0]
        got = classifier.prepare(image, order)
        assert got.shape == (3, H, W) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(classifier.prepare_pixels(pixels(image, classifier.spec, order)), expected)
        np.testing.assert_array_equal(
            classifier.infer(got[None]), classifier.probabilities(preprocess(image, classifier.spec, order)[None])
        )


def test_a_raw_uint8_nchw_model_gets_its_pixels_transposed(tmp_path, models, photo_folder):
    spec = nchw_spec(dtype="uint8")
    bundle = write_bundle(tmp_path / "u8", models["nchw-uint8"], spec, artifact={"input": {"dtype": "uint8"}})
    classifier, reference = (
        Classifier(bundle, top_k=len(LABELS)),
        Classifier(write_bundle(tmp_path / "f", models["nchw"], nchw_spec())),
    )
    image = load_image(sorted(photo_folder.iterdir())[0])
    got = classifier.prepare(image)
    assert got.dtype == np.uint8 and got.shape == (3, H, W)
    np.testing.assert_array_equal(got, pixels(image, spec).transpose(2, 0, 1))
    # the model normalizes inside as the float model's table does outside: the same scores
    np.testing.assert_allclose(classifier.infer(got[None]), reference.infer(reference.prepare(image)[None]), atol=1e-5)


# ------------------------------------------------------------------------------------- old manifests, named tensors


def test_an_old_manifest_without_layout_output_or_tensor_names_means_nhwc_probabilities_first_tensors(tmp_path, models):
    """A manifest written before imports existed: no `output`, no `input.layout`, no artifact tensor names.

    The NHWC model's first output is `features` (6 values, not 5 probabilities), so the old meaning is visible:
    the first output, taken as probabilities as it is."""
    spec = PreprocessSpec(H, W, mean=MEAN, std=STD)
    bundle = write_bundle(
        tmp_path / "old", models["nhwc"], spec, output=None, artifact={"input_name": None, "output_name": None}
    )
    raw = json.loads((bundle / "manifest.json").read_text())
    del raw["input"]["layout"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert "output" not in raw and "output_name" not in raw["artifacts"][0] and "layout" not in raw["input"]

    manifest = load_bundle(bundle).manifest
    assert manifest.output == "probs" and manifest.preprocess.layout == "NHWC"
    assert manifest.artifacts[0].input_name == manifest.artifacts[0].output_name == ""
    assert manifest.to_dict()["input"]["shape"] == [1, H, W, 3]
    session = ModelSession.for_artifact(bundle / "nhwc.onnx", manifest, manifest.artifacts[0])
    x = preprocess(np.full((H, W, 3), 90, np.uint8), spec)[None]
    direct = ort.InferenceSession(str(models["nhwc"]), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.predict(x), direct.run(["features"], {"pixel_values": x})[0])


def test_a_named_output_is_the_one_read(tmp_path, models):
    """The model's first output is `features`; the manifest names `logits`: the scores are softmax(logits)."""
    classifier = Classifier(write_bundle(tmp_path / "named", models["nchw"], nchw_spec()))
    assert classifier.session.backend.output_spec.name == "logits"
    x = preprocess(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8), classifier.spec)[None]
    direct = ort.InferenceSession(str(models["nchw"]), providers=["CPUExecutionProvider"])
    features, logits = direct.run(["features", "logits"], {"pixel_values": x.transpose(0, 3, 1, 2)})
    np.testing.assert_allclose(classifier.probabilities(x), _softmax(logits), atol=1e-6, rtol=0)
    assert features.shape[1] != len(LABELS)  # reading the first output instead could not even give 5 scores


@pytest.mark.parametrize(
    ("field", "name", "listed"),
    [("output_name", "prob", "'features', 'logits'"), ("input_name", "input.1", "'pixel_values'")],
)
def test_a_tensor_name_the_onnx_model_lacks_is_a_one_line_error_listing_its_names(
    tmp_path, models, field, name, listed
):
    bundle = write_bundle(tmp_path / "wrong", models["nchw"], nchw_spec(), artifact={field: name})
    with pytest.raises(EdgeclsError) as err:
        Classifier(bundle)
    message = str(err.value)
    kind = field.split("_")[0]
    assert "\n" not in message and f"has no {kind} named '{name}'" in message and f"its {kind}s are {listed}" in message


def test_a_wrong_name_through_edgecls_predict_is_one_line_and_exit_one(tmp_path, models, photo_folder):
    bundle = write_bundle(tmp_path / "wrong", models["nchw"], nchw_spec(), artifact={"output_name": "scores"})
    result = run_cli("predict", str(bundle), str(sorted(photo_folder.iterdir())[0]), cwd=REPO)
    assert result.returncode == 1
    assert "has no output named 'scores': its outputs are 'features', 'logits'" in cli_error(result)


# ------------------------------------------------------------------------ LiteRT: an int8-input NCHW model, by name


@pytest.fixture(scope="module")
def litert_nchw(tmp_path_factory, photo_folder) -> dict:
    """A Keras model that takes NCHW (a Permute in front), with `features` and `logits` outputs, converted to
    int8 LiteRT with int8 input and outputs by edgecls' own converter; {"model", "logits", "features", "input"}."""
    pytest.importorskip("tensorflow")
    import keras

    from edgecls.converters.tflite import to_tflite

    keras.utils.set_random_seed(3)
    inputs = keras.Input((3, H, W))
    x = keras.layers.Permute((2, 3, 1))(inputs)
    x = keras.layers.Conv2D(FEATURES, 3, strides=2, padding="same")(x)
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(features)
    model = keras.Model(inputs, [features, logits])
    spec = nchw_spec()
    representative = np.stack(
        [preprocess(load_image(f), spec).transpose(2, 0, 1) for f in sorted(photo_folder.iterdir())]
    )
    path = tmp_path_factory.mktemp("litert") / "nchw_int8.tflite"
    path.write_bytes(to_tflite(model, "int8", representative))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    outputs = {int(d["shape"][-1]): d for d in interpreter.get_output_details()}
    return {
        "model": path,
        "logits": outputs[len(LABELS)]["name"],
        "features": outputs[FEATURES]["name"],
        "input": interpreter.get_input_details()[0],
    }


def _litert_bundle(folder: Path, litert_nchw: dict, output_name: str) -> Path:
    scale, zero_point = litert_nchw["input"]["quantization"]
    return write_bundle(
        folder,
        litert_nchw["model"],
        nchw_spec(),
        artifact={
            "name": "tflite-int8",
            "precision": "int8",
            "input": {"dtype": "int8", "scale": scale, "zero_point": zero_point},
            "output_name": output_name,
        },
    )


def test_an_int8_nchw_litert_model_prepares_bit_for_bit_and_reads_its_named_logits(tmp_path, litert_nchw, photo_folder):
    from ai_edge_litert.interpreter import Interpreter

    classifier = Classifier(_litert_bundle(tmp_path / "b", litert_nchw, litert_nchw["logits"]), top_k=len(LABELS))
    tensor = classifier.session.input_spec
    assert classifier.backend_name == "litert" and tensor.dtype == "int8" and tensor.shape[1:] == (3, H, W)
    assert classifier.session.backend.output_spec.name == litert_nchw["logits"]
    direct = Interpreter(model_path=str(litert_nchw["model"]))
    direct.allocate_tensors()
    out = next(d for d in direct.get_output_details() if d["name"] == litert_nchw["logits"])
    for path in sorted(photo_folder.iterdir())[:6]:
        image = load_image(path)
        prepared = classifier.prepare(image)
        expected = quantize(preprocess(image, classifier.spec).transpose(2, 0, 1)[None], tensor)[0]
        assert prepared.dtype == np.int8
        np.testing.assert_array_equal(prepared, expected)
        direct.set_tensor(litert_nchw["input"]["index"], expected[None])
        direct.invoke()
        scale, zero_point = out["quantization"]
        logits = (direct.get_tensor(out["index"]).astype(np.float32) - zero_point) * np.float32(scale)
        np.testing.assert_allclose(classifier.infer(prepared[None]), _softmax(logits.astype(np.float64)), atol=1e-6)


def test_a_litert_output_name_the_model_lacks_lists_its_names(tmp_path, litert_nchw):
    with pytest.raises(EdgeclsError) as err:
        Classifier(_litert_bundle(tmp_path / "b", litert_nchw, "Identity:0"))
    names = sorted([litert_nchw["features"], litert_nchw["logits"]])
    message = str(err.value)
    assert "\n" not in message and "has no output named 'Identity:0'" in message
    assert all(repr(n) in message for n in names)


# ------------------------------------------------------------------------------------------ bench and drift


def _by_predicted_label(photo_folder: Path, models: dict, dest: Path) -> Path:
    """The photos in class folders named by what onnxruntime with the user's preprocessing predicts."""
    session = ort.InferenceSession(str(models["nchw"]), providers=["CPUExecutionProvider"])
    for path in sorted(photo_folder.iterdir()):
        logits = session.run(["logits"], {"pixel_values": _users_own_preprocessing(path)})[0]
        (dest / LABELS[int(logits.argmax())]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / LABELS[int(logits.argmax())] / path.name)
    return dest


def test_bench_times_an_nchw_logits_bundle_and_scores_it_like_onnxruntime(nchw_bundle, models, photo_folder, tmp_path):
    import subprocess
    import sys

    data = _by_predicted_label(photo_folder, models, tmp_path / "data")
    out = tmp_path / "bench.json"
    args = ["--threads", "1", "--repeats", "1", "--runs", "10", "--data", str(data), "--json", str(out), "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "edgecls.runtime.bench", str(nchw_bundle), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    openvino = ["onnx-fp32@openvino"] if importlib.util.find_spec("openvino") else []  # an opt-in engine's row
    assert [r["artifact"] for r in records] == ["onnx-fp32", *openvino]
    for record in records:  # ONNX Runtime, and OpenVINO where installed, serve the NCHW logits bundle alike
        assert 0 < record["min_ms"] <= record["p50_ms"] <= record["max_ms"]
        for stage in ("preprocess", "invoke", "postprocess", "frame"):
            assert record["frame"][stage]["p50_ms"] > 0, stage
        assert record["accuracy_images"] == 12 and record["accuracy"] == 1.0, record["artifact"]


def test_drift_statistics_of_a_logits_bundle_are_of_probabilities(tmp_path, models, photo_folder):
    """convert's reference (ReferenceStats over ModelSession.predict) and the daemon's window count the same bins,
    and the window's mean confidence is the mean top-1 softmax probability, not a logit."""
    from edgecls.converters.reference import ReferenceStats
    from edgecls.runtime.daemon import Daemon

    bundle = write_bundle(tmp_path / "b", models["nchw"], nchw_spec())
    manifest = load_bundle(bundle).manifest
    files = sorted(photo_folder.iterdir())
    x = np.stack([preprocess(load_image(f), manifest.preprocess) for f in files])
    session = ModelSession.for_artifact(bundle / "nchw.onnx", manifest, manifest.artifacts[0])
    reference = ReferenceStats(LABELS, manifest.preprocess).update(x, session.predict(x)).result()
    raw = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**raw, "reference": {"onnx-fp32": reference}}))

    daemon = Daemon(bundle, [photo_folder], sinks=[], drift_window=20, max_frames=len(files))
    daemon.run()
    drift = daemon.drift.source(str(photo_folder))
    direct = ort.InferenceSession(str(models["nchw"]), providers=["CPUExecutionProvider"])
    top1 = [_softmax(direct.run(["logits"], {"pixel_values": _users_own_preprocessing(f)})[0]).max() for f in files]
    counted = daemon.drift.reference_for(daemon.classifier).counts
    assert drift.frames == len(files) and drift.counts() == {k: list(v) for k, v in counted.items()}
    assert drift.status()["confidence"]["window_mean"] == pytest.approx(np.mean(top1), abs=2e-4)
    assert 0.2 < np.mean(top1) < 1.0  # probabilities; these logits reach several units


@pytest.fixture(scope="module")
def litert_camera_bytes(tmp_path_factory, photo_folder) -> Path:
    """A quantized NCHW LiteRT model that takes camera bytes as they are (uint8 input, scale 2/255, zero point 128:
    real input = (pixel - 128) * scale, about -1..1), as TF Hub's and many exported quantized models do."""
    tf = pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((3, H, W))
    x = keras.layers.Permute((2, 3, 1))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(FEATURES, 3, strides=2, padding="same")(x))
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS))(x))
    spec = nchw_spec(dtype="uint8")
    pixels_nchw = np.stack([pixels(load_image(f), spec).transpose(2, 0, 1) for f in sorted(photo_folder.iterdir())])
    corners = np.stack([np.zeros((3, H, W)), np.full((3, H, W), 255.0)])  # the whole 0..255 range is calibrated

    def samples():
        for image in [*pixels_nchw, *corners]:
            yield [((image[None].astype(np.float32) - 128) * (2 / 255)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    path = tmp_path_factory.mktemp("camera-bytes") / "bytes.tflite"
    path.write_bytes(converter.convert())
    return path


def test_a_quantized_model_that_takes_camera_bytes_gets_the_pixels_as_they_are(
    tmp_path, litert_camera_bytes, photo_folder
):
    """spec dtype uint8: the pixels are the model's own input values, never quantized again with its scale."""
    from ai_edge_litert.interpreter import Interpreter

    spec = nchw_spec(dtype="uint8")
    bundle = write_bundle(tmp_path / "b", litert_camera_bytes, spec, artifact={"output_name": ""})
    classifier = Classifier(bundle, top_k=len(LABELS))
    tensor = classifier.session.input_spec
    assert tensor.dtype == "uint8" and tensor.scale == pytest.approx(2 / 255, rel=0.05) and tensor.zero_point != 0
    direct = Interpreter(model_path=str(litert_camera_bytes))
    direct.allocate_tensors()
    (out,) = direct.get_output_details()
    assert out["dtype"] == np.float32  # inference_output_type stays float: no dequantization here
    for path in sorted(photo_folder.iterdir())[:4]:
        image = load_image(path)
        expected = np.ascontiguousarray(pixels(image, spec).transpose(2, 0, 1))
        np.testing.assert_array_equal(classifier.prepare(image), expected)
        direct.set_tensor(direct.get_input_details()[0]["index"], expected[None])
        direct.invoke()
        logits = direct.get_tensor(out["index"]).astype(np.float64)
        np.testing.assert_allclose(classifier.infer(classifier.prepare(image)[None]), _softmax(logits), atol=1e-6)
        # the float API (verification's path) feeds the same bytes: preprocess gives uint8 pixels for this spec
        np.testing.assert_allclose(classifier.probabilities(preprocess(image, spec)[None]), _softmax(logits), atol=1e-6)


def test_the_flash_smoke_test_checks_an_nchw_logits_bundle_by_its_check_images(tmp_path, models, photo_folder):
    """Check images labelled with what onnxruntime predicts pass; the same images with another label fail."""
    from edgecls.runtime.install.smoke import smoke_test

    data = _by_predicted_label(photo_folder, models, tmp_path / "data")
    checks = [(f, f.parent.name) for f in sorted(data.rglob("*.png"))[:4]]

    def bundle_with(folder: Path, relabel) -> Path:
        bundle = write_bundle(folder, models["nchw"], nchw_spec())
        raw = json.loads((bundle / "manifest.json").read_text())
        for i, (path, label) in enumerate(checks):
            shutil.copy(path, bundle / f"check-{i:02d}.png")
            raw["checks"].append({"file": f"check-{i:02d}.png", "label": relabel(label)})
            raw["files"][f"check-{i:02d}.png"] = sha256_file(bundle / f"check-{i:02d}.png")
        (bundle / "manifest.json").write_text(json.dumps(raw))
        return bundle

    good = smoke_test(bundle_with(tmp_path / "good", lambda label: label), {}, None, min_runs=3)
    assert good["ok"] and good["correct"] == len(checks), good
    other = {label: next(x for x in LABELS if x != label) for label in LABELS}
    bad = smoke_test(bundle_with(tmp_path / "bad", other.get), {}, None, min_runs=3)
    assert not bad["ok"] and f"{len(checks)} of {len(checks)} check images got the wrong label" in bad["reason"]


def test_a_model_with_open_height_and_width_takes_the_manifests_size_and_a_fixed_other_size_is_refused(
    tmp_path, models, photo_folder
):
    dynamic = _onnx_model(tmp_path / "dynamic.onnx", size=("h", "w"))
    classifier = Classifier(write_bundle(tmp_path / "d", dynamic, nchw_spec()), top_k=len(LABELS))
    assert classifier.session.input_spec.shape == (-1, 3, -1, -1)
    image = load_image(sorted(photo_folder.iterdir())[0])
    fixed = Classifier(write_bundle(tmp_path / "f", models["nchw"], nchw_spec()))
    np.testing.assert_array_equal(
        classifier.infer(classifier.prepare(image)[None]), fixed.infer(fixed.prepare(image)[None])
    )
    with pytest.raises(
        EdgeclsError,
        match=r"takes input \(3, 36, 44\) but the manifest's preprocessing gives "
        r"\(3, 44, 36\) \(NCHW\): the bundle is inconsistent",
    ):
        Classifier(write_bundle(tmp_path / "w", models["nchw"], replace(nchw_spec(), height=W, width=H)))
