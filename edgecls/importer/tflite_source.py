"""A .tflite classifier from elsewhere (Model Maker, MediaPipe, Edge Impulse) -> a verified bundle.

The model is taken as it is, at its own precision (read from its tensor types: int8 when its input or
weights are 8-bit integers, fp16 when it holds float16 weights, else fp32): one artifact, the user's file
byte for byte. Its preprocessing comes from the input tensor (shape, and dtype: a uint8 input takes the
pixels as they are) and its TFLite Metadata (`tflite_metadata`), the options filling the rest. With
`--data` the artifact is verified against LiteRT called directly, fed as a user would feed it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecls.converters.formats import FORMATS
from edgecls.importer import foreign_bundle as fb
from edgecls.importer.labels import check_count, parse_labels, read_labels
from edgecls.importer.request import ImportRequest, ImportResult, ModelHints
from edgecls.importer.tflite_metadata import read_metadata
from edgecls.runtime import formats as names
from edgecls.runtime.errors import EdgeclsError, MissingDependencyError

SAID = "the model's TFLite Metadata"


def import_tflite(request: ImportRequest, progress) -> ImportResult:
    """`edgecls import MODEL.tflite`: read, settle preprocessing and labels, verify with --data, write the bundle."""
    runner = LiteRTRunner(request.model, request.input_name, request.output_name)
    metadata = read_metadata(request.model)
    hints = _hints(runner, metadata, request.declared)
    lines = [f"read from the model: {', '.join(sorted(set(hints.said_by.values())))}"] if hints.said_by else []
    lines += [f"warning: {line}" for line in metadata.warnings]
    spec, output = fb.settle_spec(hints, request.declared, lines)
    fb.check_out(request)  # before any work: a refusal costs nothing
    units = runner.units(spec)
    head = "sigmoid" if units == 1 else "softmax"
    labels = _labels(request, hints, 2 if units == 1 else units, lines)
    data = fb.load_data(request, labels, spec) if request.data is not None else None
    said_output = hints.output is not None or request.declared.output is not None
    if not said_output:
        output = fb.probe_output(runner.run, spec, data, lines, runner.output["quantization"][0])
    source = fb.SourceModel("tflite", Path(request.model), lambda x: fb.to_probs(runner.run(x), output, head))
    plan = fb.Plan(
        request, spec, output, head, labels, source, [], fb.preprocessing_from(hints, request.declared), lines
    )
    if not said_output:
        plan.preprocessing_from["output"] = "model"
    precision = runner.precision()
    fmt = FORMATS[f"{names.TFLITE.name}-{precision}"]
    fb.wanted_formats(request.formats, (fmt.name,), f"this TFLite model (taken as it is, {precision})")
    lines.append(f"taken as it is: {fmt.name} (the model's own precision)")
    tensors = {k: v for k, v in (("input_name", request.input_name), ("output_name", request.output_name)) if v}
    plan.candidates.append(fb.Candidate(fmt, lambda work: fb.as_is(request.model), tensors))
    return fb.write_foreign_bundle(plan, data, progress)


class LiteRTRunner:
    """The model in LiteRT's Interpreter, called directly, one image at a time, as a user's script would."""

    def __init__(self, path, input_name: str | None, output_name: str | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise MissingDependencyError("ai-edge-litert", "runtime", "needed to run TFLite models") from exc
        try:
            self.interpreter = Interpreter(model_path=str(path))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EdgeclsError(
                f"{path} is not a TFLite model LiteRT can load ({first[:200]}): export it again"
            ) from None
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self.input = inputs[fb.pick_tensor([d["name"] for d in inputs], input_name, "input", "--input")]
        self.output = outputs[fb.pick_tensor([d["name"] for d in outputs], output_name, "output", "--output-name")]
        self.layout = "NHWC"

    def dims(self) -> list:
        shape = self.input.get("shape_signature", self.input["shape"])
        return [int(d) if d > 0 else None for d in shape]

    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, H, W, C) as `preprocess` makes it (floats, or uint8 pixels for a uint8 model) -> raw outputs, float."""
        outs = [self._one(image) for image in x]
        return np.stack(outs).reshape(len(x), -1)

    def _one(self, image: np.ndarray) -> np.ndarray:
        tensor = image.transpose(2, 0, 1) if self.layout == "NCHW" else image
        dtype, (scale, zero) = self.input["dtype"], self.input["quantization"]
        if dtype == np.uint8 and image.dtype == np.uint8:
            fed = tensor  # raw pixels
        elif dtype in (np.int8, np.uint8):
            info = np.iinfo(dtype)
            fed = np.clip(np.round(tensor / scale) + zero, info.min, info.max).astype(dtype)
        else:
            fed = tensor.astype(dtype)
        self.interpreter.set_tensor(self.input["index"], fed[None])
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0]
        o_scale, o_zero = self.output["quantization"]
        return (y.astype(np.float64) - o_zero) * o_scale if o_scale else y.astype(np.float64)

    def units(self, spec) -> int:
        """Output units, by running the model once; its failure is one line."""
        try:
            return int(self.run(np.zeros((1, *spec.shape), spec.dtype)).shape[1])
        except (ValueError, RuntimeError) as exc:  # LiteRT's "Cannot set tensor" and kernel failures
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EdgeclsError(
                f"the model does not run on a {spec.tensor_shape} input ({first[:200]}): "
                f"check --size and --color against the model's input"
            ) from None

    def precision(self) -> str:
        """int8 when the input or any weight tensor is 8-bit, fp16 when a tensor is float16, else fp32."""
        kinds = {np.dtype(t["dtype"]).name for t in self.interpreter.get_tensor_details()}
        if np.dtype(self.input["dtype"]).name in ("int8", "uint8") or kinds & {"int8", "uint8"}:
            return names.INT8
        return names.FP16 if "float16" in kinds else names.FP32


def _hints(runner: LiteRTRunner, metadata, declared) -> ModelHints:
    """The input tensor's shape and dtype, then the metadata of the input and output used."""
    dims = runner.dims()
    hint = fb.input_shape_hints(dims, declared)
    if hint["size"] is None:  # LiteRT would need the input resized before each run, and the runtime does not
        raise EdgeclsError(
            f"the model's input height and width are not fixed (shape {fb.shown(dims)}): edgecls imports TFLite "
            f"models with a fixed input size, so convert it again with one"
        )
    runner.layout = hint["layout"].upper()
    said = {name: "the model's input shape" for name, value in hint.items() if value is not None}
    i, o = (
        _index(runner.interpreter.get_input_details(), runner.input),
        _index(runner.interpreter.get_output_details(), runner.output),
    )
    found = {"mean": metadata.mean.get(i), "std": metadata.std.get(i), "color": metadata.color.get(i)}
    if o in metadata.labels:
        found["labels"] = parse_labels(metadata.labels[o], f"the model's label file {metadata.label_file[o]}")
    found = {k: v for k, v in found.items() if v is not None}
    said.update({name: SAID for name in found})
    return ModelHints(said_by=said, raw_input=runner.input["dtype"] == np.uint8, **hint, **found)


def _index(details: list, chosen: dict) -> int:
    return next(k for k, d in enumerate(details) if d["index"] == chosen["index"])


def _labels(request: ImportRequest, hints: ModelHints, count: int, lines: list) -> list:
    if request.labels_file is not None:
        labels = read_labels(request.labels_file, count)
        if hints.labels is not None and list(hints.labels) != labels:
            lines.append(f"warning: {SAID} names other labels than --labels {request.labels_file}: using --labels")
        return labels
    if hints.labels is None:
        raise EdgeclsError(
            "the model carries no label file in its metadata: pass --labels FILE (one label a line, in class order)"
        )
    check_count(hints.labels, count, "the model's label file")
    return hints.labels
