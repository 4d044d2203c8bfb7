"""Real ONNX classifiers that edgecls's converter did not make, built offline with `onnx.helper`.

`pytorch_style(folder, data)` writes what a PyTorch/timm export looks like: one float input [N, 3, H, W]
(NCHW) expecting ImageNet mean/std normalization, and logits out (no softmax) from
Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm. The convolutions are fixed colour
and edge detectors; the Gemm is fitted (multinomial logistic regression in NumPy, on the features ONNX
Runtime computes for the class-per-folder set `data`) so the model genuinely separates its classes.
No metadata_props: preprocessing must be declared (`--layout nchw` is read from the shape).

`two_inputs`, `rank2_input` and `winml` are small variants for the error paths and Windows ML's image
metadata (`Image.BitmapPixelFormat`, `Image.NominalPixelRange`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # 0..255 pixel units, torchvision's
IMAGENET_STD = (58.395, 57.12, 57.375)
SIZE = 32
OPSET = 17


def conv_weights(rng: np.random.Generator) -> tuple:
    """First conv: 3 colour detectors (one input channel each, centre tap) and 5 random 3x3 filters."""
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1[:3] = 0
    for c in range(3):
        w1[c, c, 1, 1] = 1.0
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    w2[:3] = 0
    for c in range(3):
        w2[c, c, 1, 1] = 1.0
    return w1, np.zeros(8, np.float32), w2, np.zeros(8, np.float32)


def _graph_nodes(with_gemm: bool) -> list:
    from onnx import helper

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
    ]
    if with_gemm:
        nodes.append(helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"))
    return nodes


def _model(weights: dict, input_shape: list, output: str, units: int, extra_inputs=()):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        _graph_nodes(output == "logits"),
        "pytorch_style_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape), *extra_inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", units])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch-stand-in")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def user_preprocess(image_rgb: np.ndarray) -> np.ndarray:
    """What a PyTorch user writes: RGB uint8 (H, W, 3) at the model's size -> (1, 3, H, W) float32."""
    x = (image_rgb.astype(np.float32) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return x.transpose(2, 0, 1)[None]


def class_images(data: Path) -> tuple:
    """Every image of the class-per-folder set at SIZE x SIZE (RGB uint8), and its class index."""
    import cv2

    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    images, y = [], []
    for k, label in enumerate(labels):
        for path in sorted((data / label).iterdir()):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            images.append(cv2.resize(bgr, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[..., ::-1])
            y.append(k)
    return labels, np.stack(images), np.asarray(y)


def fit_head(features: np.ndarray, y: np.ndarray, classes: int, steps: int = 2000) -> tuple:
    """Multinomial logistic regression by gradient descent on standardized features, folded back."""
    mu, sd = features.mean(0), features.std(0) + 1e-6
    z = (features - mu) / sd
    w, b = np.zeros((classes, z.shape[1])), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        logits = z @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.5 * ((p - onehot).T @ z / len(z) + 1e-3 * w)
        b -= 0.5 * (p - onehot).mean(0)
    return (w / sd).astype(np.float32), (b - (w / sd) @ mu).astype(np.float32)


def pytorch_style(folder: Path, data: Path) -> tuple:
    """(model.onnx, labels.txt) fitted to `data`'s classes; see the module docstring."""
    import onnx
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = conv_weights(rng)
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    features_model = _model(weights, ["N", 3, SIZE, SIZE], "features", 8)
    session = ort.InferenceSession(features_model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels, images, y = class_images(data)
    x = np.concatenate([user_preprocess(image) for image in images])
    features = session.run(["features"], {"input": x})[0]
    fc_w, fc_b = fit_head(features, y, len(labels))
    model = _model({**weights, "fc_w": fc_w, "fc_b": fc_b}, ["N", 3, SIZE, SIZE], "logits", len(labels))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder / "model.onnx", folder / "labels.txt"


def _saved(model, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _random_head(classes: int) -> dict:
    rng = np.random.default_rng(1)
    w1, b1, w2, b2 = conv_weights(rng)
    fc_w, fc_b = rng.normal(0, 1, (classes, 8)).astype(np.float32), np.zeros(classes, np.float32)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "fc_w": fc_w, "fc_b": fc_b}


def two_inputs(path: Path) -> Path:
    """The classifier with a second real input ("scale", [1]) that it does not even use."""
    from onnx import TensorProto, helper

    extra = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])
    return _saved(_model(_random_head(3), ["N", 3, SIZE, SIZE], "logits", 3, extra_inputs=[extra]), path)


def rank2_input(path: Path) -> Path:
    """A tabular classifier: input [N, 16] (not an image) -> Gemm -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(2).normal(0, 1, (3, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w"], ["logits"], transB=1)],
        "tabular",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return _saved(model, path)


def winml(path: Path, pixel_format: str = "Bgr8", pixel_range: str = "Normalized_0_1") -> Path:
    """The classifier (random head, 3 classes) with Windows ML's image metadata on it."""
    model = _model(_random_head(3), ["N", 3, SIZE, SIZE], "logits", 3)
    for key, value in (("Image.BitmapPixelFormat", pixel_format), ("Image.NominalPixelRange", pixel_range)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return _saved(model, path)


def photos(folder: Path, count: int = 60, size: int = SIZE) -> list:
    """`count` real photos at the model's size: seeded crops of scikit-learn's two sample photos (china.jpg,
    flower.jpg: scikit-image's data set is not installed here), shrunk with OpenCV's INTER_AREA and written as PNG.
    At the model's size, the import's resize is the identity, so a user's NumPy preprocessing needs none."""
    import cv2
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(3)
    sources = load_sample_images().images  # RGB uint8 (427, 640, 3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        side = int(rng.integers(48, 400))
        top, left = int(rng.integers(0, image.shape[0] - side)), int(rng.integers(0, image.shape[1] - side))
        crop = cv2.resize(image[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
        path = folder / f"photo-{i:03d}.png"
        cv2.imwrite(str(path), crop[..., ::-1])
        paths.append(path)
    return paths


def read_rgb(path: Path) -> np.ndarray:
    """A user's own decode: the PNG as RGB uint8 (H, W, 3)."""
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def with_softmax(path: Path) -> Path:
    """The classifier (random head, 3 classes) ending in its own Softmax: probabilities out."""
    from onnx import helper

    model = _model(_random_head(3), ["N", 3, SIZE, SIZE], "logits", 3)
    graph = model.graph
    graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    graph.output[0].name = "probs"
    return _saved(model, path)


def flash_and_run(bundle: Path, device: Path, images: Path) -> list:
    """`edgecls flash` to a local folder (its smoke test runs the bundle's check images), then `edgecls run` on
    `images` from the installed release: the daemon's simple mode's rows."""
    from tests.conftest import run_cli

    done = run_cli("flash", bundle, device)
    assert done.returncode == 0 and "installed" in done.stdout, done.stdout + done.stderr[-2000:]
    done = run_cli("run", device / "current", "--source", images, "--every-frame", "--max-frames", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def dynamic_size(path: Path) -> Path:
    """The classifier (random head, 3 classes) with a symbolic height and width: [N, 3, H, W]."""
    return _saved(_model(_random_head(3), ["N", 3, "H", "W"], "logits", 3), path)


def variant(path: Path, shape=("N", 3, SIZE, SIZE), elem_type: str = "FLOAT", weights_as_inputs: bool = False) -> Path:
    """The classifier (random head, 3 classes, logits) with another input: a fixed or huge `shape`, a uint8 or
    float16 input (`elem_type`, cast to float inside), or its weights listed as graph inputs too, as exporters
    before IR 4 wrote them."""
    from onnx import TensorProto, helper

    model = _model(_random_head(3), list(shape), "logits", 3)
    graph = model.graph
    if elem_type != "FLOAT":
        kind = getattr(TensorProto, elem_type)
        graph.input[0].name = "pixels"
        graph.input[0].type.tensor_type.elem_type = kind
        graph.node.insert(0, helper.make_node("Cast", ["pixels"], ["input"], to=TensorProto.FLOAT, name="cast"))
    if weights_as_inputs:
        graph.input.extend(
            helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in graph.initializer
        )
        model.ir_version = 3
    return _saved(model, path)
