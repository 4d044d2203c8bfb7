"""`edgecls import` on the four source kinds people bring: agreement with the source framework, int8 drop.

    nice -n 10 python -m benchmarks.import_sources [--work DIR]

The sources are the test fixture factories (tests/foreign_keras.py, foreign_onnx.py, foreign_tflite.py), made
offline on a generated shapes set (5 classes, 30 images each, 64 px) and briefly trained or fitted on it:
a Teachable-Machine-shaped folder (Keras 2 .h5 by tf_keras), MobileNetV3-Small as .keras (its own Rescaling
layer read), a PyTorch-style ONNX (NCHW, ImageNet mean/std, logits) and a .tflite with TFLite Metadata.
Each is imported with --data (the set split by seed into calibration and test halves) and --max-drop 100, so
every artifact's first attempt is measured, never refused (the default gate is 1 point). Then, on every image
of the set (150): top-1 of our fp32 artifact (edgecls's runtime, the bundle's preprocessing) against the
source model run in its own framework (Keras, tf_keras, ONNX Runtime, LiteRT) on the same normalized input;
and each fp16/int8 artifact's accuracy drop against the source model on the test half, as the gate measures it
(75 images: one image is 1.33 points).
Writes benchmarks/results/import_sources.txt.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import foreign_keras as fk  # noqa: E402

from edgecls.importer.api import import_model  # noqa: E402
from edgecls.importer.request import Declared, ImportRequest  # noqa: E402


def _sources(work: Path, data: Path) -> list:
    """(name, model path, labels file or None, Declared, source predict(x NHWC normalized) -> probs)."""
    import keras
    import tf_keras

    from tests import foreign_onnx, foreign_tflite

    teachable = fk.teachable_folder(work / "teachable", data)
    tm = tf_keras.models.load_model(teachable / "keras_model.h5", compile=False)
    keras_file = fk.mobilenetv3_keras(work, data)
    v3 = keras.models.load_model(keras_file, compile=False)
    onnx_file, onnx_labels = foreign_onnx.pytorch_style(work / "onnx", data)
    tflite_file = foreign_tflite.with_metadata(work / "tflite", data)
    return [
        ("Teachable Machine .h5", teachable, None, Declared(), lambda x, spec: tm.predict(x, verbose=0)),
        (
            "Keras .keras",
            keras_file,
            work / "labels.txt",
            Declared(),
            lambda x, spec: v3.predict(_raw(x, spec), verbose=0),
        ),
        (
            "PyTorch-style ONNX",
            onnx_file,
            onnx_labels,
            Declared(normalize="imagenet", output="logits"),
            _ort(onnx_file),
        ),
        ("TFLite (Metadata)", tflite_file, None, Declared(), _litert(tflite_file)),
    ]


def _raw(x, spec):
    return x * np.float32(spec.std) + np.float32(spec.mean)


def _ort(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x, spec: session.run(None, {name: x.transpose(0, 3, 1, 2).astype(np.float32)})[0]


def _litert(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    i, o = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def predict(x, spec):
        out = []
        for one in x:
            interpreter.set_tensor(i, one[None].astype(np.float32))
            interpreter.invoke()
            out.append(interpreter.get_tensor(o)[0].copy())
        return np.stack(out)

    return predict


def _row(name: str, model, labels, declared, predict, data: Path, out: Path) -> str:
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.preprocess import preprocess_file

    started = time.perf_counter()
    result = import_model(ImportRequest(model, out, labels, data=data, declared=declared, max_drop=100.0))
    seconds = time.perf_counter() - started
    bundle = load_bundle(out)
    spec = bundle.manifest.preprocess
    paths = sorted(p for p in data.rglob("*.png"))
    x = np.stack([preprocess_file(p, spec) for p in paths])
    source = np.asarray(predict(x, spec)).argmax(1)
    artifacts = {a["name"]: a for a in result.manifest["artifacts"]}
    fp32 = next(n for n in artifacts if n.endswith("fp32"))
    classifier = Classifier(out, artifact=fp32)
    index = {label: k for k, label in enumerate(bundle.manifest.labels)}
    ours = np.asarray([index[classifier.classify_file(p).label] for p in paths])
    agree = float((ours == source).mean())
    reference = result.manifest["reference_accuracy"]
    drops = [
        f"{n} {100 * (reference - a['accuracy']):+.2f}"
        for n, a in artifacts.items()
        if a["precision"] != "fp32" and reference is not None and a.get("accuracy") is not None
    ]
    return (
        f"{name:<22} {fp32:<12} {agree:>7.2%} ({int((ours == source).sum())}/{len(paths)})  "
        f"source acc {reference if reference is None else f'{reference:.4f}'}  "
        f"drop vs source (points): {', '.join(drops) or 'none made (kept at its own precision)'}  [{seconds:.0f}s]"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="import_sources_"))
    data = fk.shapes_folder(work / "data")
    (work / "labels.txt").write_text("\n".join(fk.LABELS) + "\n")
    rows = []
    for i, (name, model, labels, declared, predict) in enumerate(_sources(work, data)):
        rows.append(_row(name, model, labels, declared, predict, data, work / f"bundle{i}"))
        print(rows[-1], flush=True)
    header = (
        f"edgecls import, four source kinds, shapes set 5 classes x 30 images at 64 px, --data split 50/50; "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}\n"
        "source                 artifact     top-1 agreement with the source framework (all images), "
        "source accuracy on the test half, fp16/int8 drop as the gate measures it (positive: lost)\n"
    )
    text = header + "\n".join(rows) + "\n"
    results = ROOT / "benchmarks" / "results" / "import_sources.txt"
    results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
