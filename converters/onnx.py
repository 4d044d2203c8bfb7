"""ONNX export (Keras 3's own `model.export(format="onnx")`) and ONNX Runtime static int8 quantization; and
the attempts `convert` makes for each precision (the formats table registers them)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgecls.converters.export import calibration_notes, without_notes
from edgecls.runtime.errors import MissingDependencyError


def fp32_attempts(context, fmt) -> list:
    """The fp32 export as it is: nothing to remedy."""
    return [("", without_notes(lambda out: out.write_bytes(_fp32_export(context).read_bytes())))]


def int8_attempts(context, fmt) -> list:
    """QDQ int8 on the asked calibration set, then the remedies in turn (see `quantized_attempts`)."""
    return quantized_attempts(
        lambda: _fp32_export(context),
        context.calibration,
        (context.calibration_count(), context.calibration_count(4)),
        context.options.calibration_method,
        context.workdir,
    )


def quantized_attempts(fp32, calibration, counts: tuple, method: str, workdir: Path, input_name=None) -> list:
    """QDQ int8 of the fp32 model `fp32()` on `calibration(factor)` images, then the remedies in turn: more
    images, percentile and entropy calibration, the first and last layers kept in float.

    counts: (images in the asked set, images in the set 4 times larger: fewer when the data has fewer);
    input_name: the model input the calibration images feed (None: the first that is not an initializer).
    Convert's int8 and an imported ONNX model's int8 are made by the same attempts."""
    (n, more), base = counts, OnnxQuantOptions(calibration=method)

    def quant(opts, factor=1):
        def build(out):
            data = calibration(factor)
            kept = quantize_int8(fp32(), out, data, opts, workdir=workdir, input_name=input_name)
            return {**calibration_notes(data), **({"kept_in_float": list(kept)} if kept else {})}

        return build

    return [
        (f"QDQ {base.describe()}, {n} calibration images", quant(base)),
        *([(f"more calibration data ({more} images)", quant(base, 4))] if more > n else []),  # else the same set
        (f"percentile calibration ({more} images)", quant(replace(base, calibration="percentile"), 4)),
        (f"entropy calibration ({more} images)", quant(replace(base, calibration="entropy"), 4)),
        (f"first and last layers kept in float ({more} images)", quant(replace(base, keep_ends_in_float=True), 4)),
    ]


def finish(path: Path, run) -> None:
    """After each build: the run's labels, preprocessing and head inside the file, then ONNX's own checker."""
    set_metadata(
        path,
        {"labels": run.labels, "preprocess": run.preprocess.to_dict(), "head": run.metadata.get("head", "softmax")},
    )
    check(path)


def _fp32_export(context) -> Path:
    """The fp32 export, made once per convert in the stage's work folder; every ONNX attempt starts from it."""
    path = context.cache.get("onnx-fp32-export")
    if path is None:
        path = context.cache["onnx-fp32-export"] = context.workdir / "fp32-export.onnx"
        export_onnx(context.model, path, context.sample)
    return path


def export_onnx(model, path: Path, sample: np.ndarray) -> None:
    """Write an fp32 ONNX model. Keras needs the model called once before export."""
    try:
        import tf2onnx  # noqa: F401  (Keras' exporter uses it for the TensorFlow backend)
    except ImportError as exc:
        raise MissingDependencyError("tf2onnx", "convert", "Keras exports ONNX through it") from exc
    model.predict(sample[:1], verbose=0)
    model.export(str(path), format="onnx", verbose=False)


def set_metadata(path: Path, props: dict) -> None:
    """Store key/value metadata (labels, preprocessing) inside the ONNX file itself."""
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for key, value in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(m, str(path))


def check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


@dataclass(frozen=True)
class OnnxQuantOptions:
    """Typed options for onnxruntime's quantize_static (QDQ format).

    Activations default to uint8 with int8 weights (U8S8), the pair ONNX Runtime's CPU kernels
    are built for (VNNI's dot product is u8 x s8; ARM64 has U8S8 kernels too). x86 without VNNI
    has no S8S8 conv kernel: ORT rewrites an int8-activation graph to uint8 when it loads it, but
    only partly (each residual Add is left with one int8 and one uint8 input), so MobileNetV2 kept
    15 Conv and 10 Add in float behind Q/DQ pairs plus 30 layout Transposes, and ran only 1.07x
    faster than fp32 (issue 8 point 6, benchmarks/onnx_int8.py).

    Weights default to 7 bits (reduce_range): without VNNI the u8 x s8 kernels sum pairs of
    products in int16 (VPMADDUBSW), which saturates with full-range weights; the digits CNN lost
    5 accuracy points to it (0.969 -> 0.919), 7-bit weights keep it at 0.972 at the same speed.
    """

    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 (U8S8, fast on ORT CPU) | int8 (S8S8)
    calibration: str = "minmax"  # minmax | percentile | entropy
    percentile: float = 99.999
    exclude_nodes: tuple = ()  # node names in the pre-processed graph, the one quantized
    keep_ends_in_float: bool = False  # the first and last Conv/Gemm/MatMul of the graph that is quantized
    reduce_range: bool = True  # 7-bit weights: no int16 saturation in x86 kernels without VNNI

    def describe(self) -> str:
        parts = [("per-channel" if self.per_channel else "per-tensor"), self.calibration]
        if self.activation_type != "uint8":
            parts.append(f"{self.activation_type} activations")
        if not self.reduce_range:
            parts.append("8-bit weights")
        if self.keep_ends_in_float:
            parts.append("first and last layers kept in float")
        if self.exclude_nodes:
            parts.append(f"{len(self.exclude_nodes)} node(s) kept in float")
        return ", ".join(parts)


class _ArrayReader:
    """CalibrationDataReader over a preloaded array, one sample per call."""

    def __init__(self, name: str, data: np.ndarray):
        self._name, self._data, self._i = name, data.astype(np.float32), 0

    def get_next(self):
        if self._i >= len(self._data):
            return None
        self._i += 1
        return {self._name: self._data[self._i - 1 : self._i]}

    def rewind(self):
        self._i = 0


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    options: OnnxQuantOptions,
    workdir: Path | None = None,
    input_name: str | None = None,
) -> tuple:
    """Static QDQ int8 quantization (per-channel by default) calibrated on `calibration`.

    Returns the names of the nodes kept in float. They are looked up in the pre-processed graph,
    the one actually quantized: pre-processing fuses MatMul + Add into a Gemm with a new name, so a
    name taken from the exported file would silently match nothing. `workdir`: where our temp folder goes
    (convert's stage, which a kill -9 leaves for the next convert to remove). `input_name`: the input the
    calibration images feed (None: the graph's first input that is not an initializer).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[options.calibration]
    input_name = input_name or real_inputs(onnx.load(str(fp32_path), load_external_data=False).graph)[0].name
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        prepped = Path(tmp) / "prep.onnx"
        _pre_process(fp32_path, prepped)
        excluded = _excluded(weighted_nodes(prepped), [n.name for n in onnx.load(str(prepped)).graph.node], options)
        extra = {"CalibPercentile": options.percentile} if options.calibration == "percentile" else {}
        activation = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[options.activation_type]
        quantize_static(
            str(prepped),
            str(out_path),
            _ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            calibrate_method=method,
            nodes_to_exclude=list(excluded),
            extra_options=extra,
        )
    return excluded


def _pre_process(fp32_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)


def _excluded(weighted: list, names: list, options: OnnxQuantOptions) -> tuple:
    unknown = [n for n in options.exclude_nodes if n not in names]
    if unknown:
        raise ValueError(
            f"node(s) {', '.join(unknown)} not in the graph being quantized (names change in pre-processing)"
        )
    ends = (weighted[:1] + weighted[-1:]) if options.keep_ends_in_float else []
    return tuple(dict.fromkeys([*ends, *options.exclude_nodes]))


def real_inputs(graph) -> list:
    """The graph's inputs that are fed at run time: an old exporter (IR < 4) lists every weight as an input too."""
    weights = {init.name for init in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def weighted_nodes(path: Path) -> list:
    """Names of Conv/Gemm/MatMul nodes in graph order (candidates to keep in float)."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
