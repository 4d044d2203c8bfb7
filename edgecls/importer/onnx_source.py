"""An ONNX classifier from elsewhere (PyTorch/timm, Windows ML, Ultralytics exports) -> a verified bundle.

The fp32 artifact is the user's file unchanged (its sha256 is the manifest's `source.sha256` and the
artifact's own); with `--data` an int8 one is added, made by the same QDQ attempts and remedies as
`convert`'s (`converters.onnx.quantized_attempts`), calibrated on the data's calibration part in the model's
own layout, and gated against the fp32 source in ONNX Runtime.

What the model says about its input comes from its input tensor's shape (layout, size, channels) and its
`metadata_props`: edgecls's own keys (labels, preprocess, head: `converters.onnx.set_metadata`), Windows ML's
image keys (`Image.BitmapPixelFormat`, `Image.NominalPixelRange`) and Ultralytics' (`names`, `imgsz`).
"""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgecls.converters.formats import FORMATS
from edgecls.converters.onnx import quantized_attempts, real_inputs
from edgecls.importer import foreign_bundle as fb
from edgecls.importer.labels import check_count, check_labels, read_labels
from edgecls.importer.request import ImportRequest, ImportResult, ModelHints
from edgecls.runtime import formats as names
from edgecls.runtime.errors import EdgeclsError, MissingDependencyError

WINML_COLORS = {"Rgb8": "rgb", "Bgr8": "bgr", "Gray8": "gray"}
WINML_RANGES = {  # (mean, std) in 0..255 pixel units
    "NominalRange_0_255": ((0.0,), (1.0,)),
    "Normalized_0_1": ((0.0,), (255.0,)),
    "Normalized_1_1": ((127.5,), (127.5,)),
}
UINT8 = 2  # onnx.TensorProto.UINT8: a model that takes the pixels as they are
TENSOR_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def import_onnx(request: ImportRequest, progress) -> ImportResult:
    """`edgecls import MODEL.onnx`: read, settle preprocessing and labels, verify with --data, write the bundle."""
    model = load_model(request.model)
    inputs, outputs = real_inputs(model.graph), list(model.graph.output)
    inp = inputs[fb.pick_tensor([i.name for i in inputs], request.input_name, "input", "--input")]
    out = outputs[fb.pick_tensor([o.name for o in outputs], request.output_name, "output", "--output-name")]
    props = {p.key: p.value for p in model.metadata_props}
    hints = model_hints(props, _dims(inp), request.declared, inp.type.tensor_type.elem_type == UINT8)
    lines = [f"read from the model: {', '.join(sorted(set(hints.said_by.values())))}"] if hints.said_by else []
    spec, output = fb.settle_spec(hints, request.declared, lines)
    spec = _own_resize(props, spec, request.declared, lines)
    fb.check_out(request)  # before any work: a refusal costs nothing
    runner = OnnxRunner(request.model, inp.name, out.name, spec.layout)
    units = runner.units(spec)
    head = "sigmoid" if units == 1 else "softmax"
    labels = _labels(request, hints, 2 if units == 1 else units, lines)
    data = fb.load_data(request, labels, spec) if request.data is not None else None
    said_output = hints.output is not None or request.declared.output is not None
    if not said_output:
        output = fb.probe_output(runner.run, spec, data, lines)
    source = fb.SourceModel(
        "onnx", Path(request.model), lambda x: fb.to_probs(runner.run(x), output, head), _params(model)
    )
    tensors = {"input_name": inp.name, "output_name": out.name}
    plan = fb.Plan(
        request, spec, output, head, labels, source, [], fb.preprocessing_from(hints, request.declared), lines
    )
    if not said_output:
        plan.preprocessing_from["output"] = "model"  # its outputs on sample inputs
    wanted = fb.wanted_formats(request.formats, (names.ONNX_FP32.name, names.ONNX_INT8.name), "an ONNX model")
    if names.ONNX_FP32.name in wanted:
        plan.candidates.append(
            fb.Candidate(FORMATS[names.ONNX_FP32.name], lambda work: fb.as_is(request.model), tensors)
        )
    why_not = _no_int8(runner, inputs, model)
    if names.ONNX_INT8.name in wanted and why_not:
        if not plan.candidates:
            raise EdgeclsError(f"onnx-int8 cannot be made: {why_not}")
        lines.append(f"int8 skipped: {why_not}")
    elif names.ONNX_INT8.name in wanted and data is not None:
        plan.candidates.append(_int8(request, data, spec, inp.name, tensors, plan))
    elif names.ONNX_INT8.name in wanted:
        if not plan.candidates:
            raise EdgeclsError("onnx-int8 needs --data DIR to calibrate and verify it on")
        lines.append("int8 skipped: no --data to calibrate and verify it on (import with --data DIR to add it)")
    return fb.write_foreign_bundle(plan, data, progress)


def _no_int8(runner, inputs: list, model) -> str:
    """Why int8 cannot be calibrated on this model ("" when it can): its calibration feeds one float32 image."""
    if runner.dtype != np.float32:
        return f"the model's input is {np.dtype(runner.dtype).name}, int8 is calibrated on float32 inputs"
    if len(model.graph.input) != len(inputs):
        return "the model lists its weights as inputs (IR < 4): re-export it with a recent exporter to add int8"
    return ""


def load_model(path):
    """The ONNX ModelProto at `path`; a file that does not parse is a one-line error."""
    try:
        import onnx
        from onnx.external_data_helper import uses_external_data
    except ImportError as exc:
        raise MissingDependencyError("onnx", "convert", "needed to read ONNX models") from exc
    try:
        model = onnx.load(str(path), load_external_data=False)  # external data is refused below, unread
    except Exception as exc:  # protobuf's DecodeError, onnx's own, OSError for external data
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise EdgeclsError(f"{path} is not an ONNX model that loads ({first[:200]}): export it again") from None
    if not len(model.graph.node) or not len(model.graph.input):
        raise EdgeclsError(f"{path} is not an ONNX model (no graph): export it again")
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise EdgeclsError(
            f"{path} keeps its weights in external data files, which edgecls does not copy: re-save it as one file "
            f"(onnx.save(onnx.load(path), path, save_as_external_data=False))"
        )
    return model


def _dims(tensor) -> list:
    """The tensor's shape, None for a dimension that is not fixed."""
    shape = tensor.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]


def model_hints(props: dict, dims: list, declared, raw_input: bool = False) -> ModelHints:
    """What the input shape and the metadata_props say (see the module docstring)."""
    hint = fb.input_shape_hints(dims, declared)
    hint["raw_input"] = raw_input
    said = {name: "the model's input shape" for name, value in hint.items() if value not in (None, False)}
    for key, found in (_own(props), _winml(props), _ultralytics(props)):
        for name, value in found.items():
            if hint.get(name) is None:
                hint[name], said[name] = value, key
    return ModelHints(said_by=said, **hint)


def _own(props: dict) -> tuple:
    """edgecls's own metadata (a model our converter wrote): its labels and preprocessing."""
    found = {}
    try:
        if "preprocess" in props:
            p = json.loads(props["preprocess"])
            found.update(size=(int(p["height"]), int(p["width"])), color=p.get("color"))
            found.update(mean=_floats(p["mean"]), std=_floats(p["std"]), output="probs")
        if "labels" in props:
            found["labels"] = [str(label) for label in json.loads(props["labels"])]
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgeclsError(
            f"the model's edgecls metadata does not read ({exc}): pass --labels and the options"
        ) from None
    return "the model's edgecls metadata", {k: v for k, v in found.items() if v is not None}


def _floats(values) -> tuple:
    if not isinstance(values, list):
        raise TypeError(f"{values!r} is not a list of numbers")
    return tuple(float(v) for v in values)


def _own_resize(props: dict, spec, declared, lines: list):
    """The resize mode and letterbox padding our converter wrote, unless --resize says otherwise (a warning)."""
    if "preprocess" not in props:
        return spec
    p = json.loads(props["preprocess"])  # read once already by _own
    if declared.resize is not None:
        if p.get("resize", declared.resize) != declared.resize:
            lines.append(
                f"warning: the model's edgecls metadata says resize {p['resize']}, "
                f"--resize says {declared.resize}: using --resize"
            )
        return spec
    try:
        return replace(spec, resize=p.get("resize", spec.resize), pad_value=int(p.get("pad_value", spec.pad_value)))
    except (TypeError, ValueError) as exc:
        raise EdgeclsError(
            f"the model's edgecls metadata does not read ({exc}): pass --labels and the options"
        ) from None


def _winml(props: dict) -> tuple:
    found = {}
    if props.get("Image.BitmapPixelFormat") in WINML_COLORS:
        found["color"] = WINML_COLORS[props["Image.BitmapPixelFormat"]]
    if props.get("Image.NominalPixelRange") in WINML_RANGES:
        found["mean"], found["std"] = WINML_RANGES[props["Image.NominalPixelRange"]]
    return "the model's Windows ML image metadata", found


def _ultralytics(props: dict) -> tuple:
    """Ultralytics writes `names` as a Python dict literal ({0: 'cat', ...}) and `imgsz` as a list."""
    found = {}
    try:
        if "names" in props:
            names_ = ast.literal_eval(props["names"])
            if isinstance(names_, dict) and sorted(names_) == list(range(len(names_))):
                found["labels"] = [str(names_[i]) for i in range(len(names_))]
        if "imgsz" in props:
            size = ast.literal_eval(props["imgsz"])
            size = [size, size] if isinstance(size, int) else list(size)
            found["size"] = (int(size[0]), int(size[1]))
    except (ValueError, SyntaxError, TypeError, IndexError):
        pass  # not Ultralytics' form: the options decide
    return "the model's Ultralytics metadata", found


def _labels(request: ImportRequest, hints: ModelHints, count: int, lines: list) -> list:
    if request.labels_file is not None:
        labels = read_labels(request.labels_file, count)
        if hints.labels is not None and list(hints.labels) != labels:
            where = hints.said_by.get("labels", "the model")
            lines.append(f"warning: {where} names other labels than --labels {request.labels_file}: using --labels")
        return labels
    if hints.labels is None:
        raise EdgeclsError("the model carries no labels: pass --labels FILE (one label a line, in class order)")
    check_count(hints.labels, count, "the model's own labels")  # counted as they are, never joined and split again
    return check_labels(hints.labels, "the model's own labels")


class OnnxRunner:
    """The model in ONNX Runtime, called directly: float HWC batches transposed to the model's layout."""

    def __init__(self, path, input_name: str, output_name: str, layout: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EdgeclsError(
                f"onnxruntime {ort.__version__} cannot load {path} ({first[:240]}): export it with an opset and IR "
                f"version this onnxruntime supports (e.g. torch.onnx.export(..., opset_version=17)), "
                f"or upgrade onnxruntime"
            ) from None
        self.input_name, self.output_name, self.layout = input_name, output_name, layout
        found = next(i for i in self.session.get_inputs() if i.name == input_name)
        self.dtype = TENSOR_TYPES.get(found.type)
        if self.dtype is None:
            raise EdgeclsError(f"the model's input {input_name} is a {found.type}: edgecls feeds float or uint8 images")
        self.one_at_a_time = bool(found.shape) and found.shape[0] == 1  # a fixed batch of 1

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        rows = [x[i : i + 1] for i in range(len(x))] if self.one_at_a_time else [x]
        out = [self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(r)})[0] for r in rows]
        return np.concatenate([o.reshape(len(r), -1) for o, r in zip(out, rows)])

    def units(self, spec) -> int:
        """Output units, by running the model once (the output's shape is often symbolic); its failure is one line."""
        try:
            return int(self.run(np.zeros((1, *spec.shape), np.float32)).shape[1])
        except Exception as exc:  # onnxruntime's InvalidArgument/Fail for an input it cannot take
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EdgeclsError(
                f"the model does not run on a {spec.tensor_shape} input ({first[:200]}): "
                f"check --size, --layout and --color against the model's input"
            ) from None


def _int8(request: ImportRequest, data, spec, input_name: str, tensors: dict, plan) -> fb.Candidate:
    """QDQ int8 attempts calibrated on the data's calibration part, in the model's layout."""
    from edgecls.converters import calibration as calib

    train = data.splits["train"]
    if not len(train.y):
        raise EdgeclsError(f"--data {request.data} leaves no images to calibrate int8 on: give more images per class")
    sampler = calib.CalibrationSampler(train, request.seed)
    count = lambda factor: min(len(sampler), fb.CALIBRATION_SIZE * factor)  # noqa: E731

    def calibration(factor: int) -> np.ndarray:
        x = sampler.draw(count(factor)).astype(np.float32)
        return x.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else x

    drawn = calibration(1)
    plan.calibration.update(
        size=int(len(drawn)),
        requested=fb.CALIBRATION_SIZE,
        fingerprint=calib.fingerprint(drawn),
        method="minmax",
        drawn_from="data",
        seed=request.seed,
    )
    return fb.Candidate(
        FORMATS[names.ONNX_INT8.name],
        lambda work: quantized_attempts(
            lambda: Path(request.model), calibration, (count(1), count(4)), "minmax", work, input_name
        ),
        tensors,
    )


def _params(model) -> int:
    return int(sum(np.prod(init.dims, dtype=np.int64) for init in model.graph.initializer))
