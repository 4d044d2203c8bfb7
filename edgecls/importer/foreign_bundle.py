"""A verified bundle from model files that are ready as they are: what the ONNX and TFLite importers share.

A source (`onnx_source`, `tflite_source`) reads the model, settles its preprocessing, output kind and labels,
and hands over a `Plan`: the user's model as its own framework runs it (`SourceModel`, the reference every
artifact is judged against) and the artifacts to write (`Candidate`s: the file as it is, or int8 attempts in
remedy order). With `--data` (a class-per-folder set whose folder names are labels) the set is split into a
calibration part and a test part (`DATA_TEST_FRACTION`, or its own train/ and test/ folders); every artifact
is verified against the source model on the test part through the runtime that will run it, gated like
`convert`'s, and reference statistics and check images are recorded, so drift and the flash smoke test work.
Without `--data` the artifacts are written unverified and the manifest's `source.verified_on_data` says so.

The bundle is staged and renamed into place only when complete (`converters.output.claimed_stage`), and it
never replaces the user's model, their data or a folder that is not a bundle.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgecls import __version__
from edgecls.converters.export import Judging, tensor_quant, verified_attempts
from edgecls.converters.manifest import judge, runtime_versions, write_bundle
from edgecls.converters.output import check_tar_output, claimed_stage, publish_tar, write_tar
from edgecls.converters.testsplit import TINY_SPLIT, TestSplitReport
from edgecls.converters.verify import by_file
from edgecls.core.outputs import bundle_contents
from edgecls.importer.request import ImportRequest, ImportResult, resolve_spec
from edgecls.runtime.atomic import check_output, write_json, write_text
from edgecls.runtime.bundle import LABELS, MANIFEST, Artifact, Manifest, check_listed_names, sha256_file
from edgecls.runtime.errors import DataError, EdgeclsError
from edgecls.runtime.preprocess import PreprocessSpec
from edgecls.runtime.session import ModelSession

DATA_TEST_FRACTION = 0.5  # of each class of --data (without its own test/ folder): the rest calibrates int8
CALIBRATION_SIZE = 200  # images int8 is calibrated on (4x for the remedies), as convert's default
WORK = ".work"  # inside the stage: temp files (quantization's pre-processed graph)
MAX_SIDE = 4096  # pixels: a larger input (declared, or read from metadata) is a mistake, not a classifier


@dataclass
class SourceModel:
    """The user's model in its own framework, fed as its user would feed it."""

    framework: str  # the manifest's source.framework: onnx | tflite
    path: Path
    predict: Callable  # (N, H, W, C) batch as `preprocess` makes it -> probabilities (N, classes)
    params: int | None = None


@dataclass
class Candidate:
    """One artifact to write: `attempts(workdir)` gives (description, build(out) -> notes) pairs in remedy order
    (`workdir`: the stage's folder for temp files)."""

    fmt: object  # converters.formats.ExportFormat
    attempts: Callable
    tensors: dict = field(default_factory=dict)  # input_name/output_name for the manifest, when named


@dataclass
class Plan:
    request: ImportRequest
    spec: PreprocessSpec
    output: str  # probs | logits
    head: str  # softmax | sigmoid (one output unit)
    labels: list
    source: SourceModel
    candidates: list  # Candidate per artifact, in bundle order
    preprocessing_from: dict  # field -> model | option | default
    lines: list = field(default_factory=list)  # what the user should read (ImportResult.lines)
    calibration: dict = field(default_factory=dict)  # the manifest's record of the int8 calibration set


@dataclass
class DataSet:
    """--data read for an import: its calibration and test splits, labels as the model's class indices."""

    root: Path
    splits: dict  # train (calibration) and test: LoadedSplit or StreamedSplit
    seed: int


@dataclass
class Answers:
    """The source model's answers on the test split: what `converters.manifest.judge` reads as the reference."""

    test: object
    paths: list
    y: np.ndarray
    probs: np.ndarray
    split_report: TestSplitReport
    macs: int | None = None

    @property
    def accuracy(self) -> float:
        return float(self.right().mean())

    def right(self) -> np.ndarray:
        return self.probs.argmax(1) == self.y


def import_guard(request: ImportRequest) -> dict:
    """What `--overwrite` may replace: a bundle only, never the model file, the labels file or the data set (nor
    inside them); the same as `importer.api.check_out` checks before any work."""
    protect = {"the model": Path(request.model)}
    if request.data is not None:
        protect["the --data folder"] = Path(request.data)
    if request.labels_file is not None:
        protect["the labels file"] = Path(request.labels_file)
    return {"marker": MANIFEST, "protect": protect, "contents": bundle_contents}


def check_out(request: ImportRequest) -> Path:
    """The absolute --out, refused before any work when writing it could destroy something not ours."""
    out = Path(os.path.abspath(request.out))
    check_output(out, request.overwrite, **import_guard(request))
    if request.tar:
        check_tar_output(out, request.overwrite)
    return out


def load_data(request: ImportRequest, labels: list, spec: PreprocessSpec) -> DataSet:
    """--data's images through our one preprocessing function, split into calibration and test parts."""
    from edgecls.core.data import open_splits
    from edgecls.core.datasets.folder import scan_folder
    from edgecls.core.splits import Sample

    dataset = scan_folder(  # one class is enough to verify on (a model's classes need not all be there)
        request.data, val_fraction=0.0, test_fraction=DATA_TEST_FRACTION, seed=request.seed, min_classes=1
    )
    unknown = [name for name in dataset.labels if name not in labels]
    if unknown:
        shown = ", ".join(labels[:8]) + (f" and {len(labels) - 8} more" if len(labels) > 8 else "")
        raise DataError(
            f"--data folder {unknown[0]!r} is not one of the model's labels ({shown}): "
            f"name each class folder after its label"
        )
    index = [labels.index(name) for name in dataset.labels]
    samples = {
        name: [Sample(s.path, index[s.label], s.digest) for s in dataset.splits[name]] for name in ("train", "test")
    }
    if not samples["test"]:
        raise DataError(
            f"--data {request.data} leaves no test image: give at least three images per class "
            f"(or its own train/ and test/ folders)"
        )
    splits = open_splits(samples, spec)
    return DataSet(Path(request.data), splits, request.seed)


def source_answers(source: SourceModel, data: DataSet, labels: list, max_drop: float) -> Answers:
    """The source model on the test split, by file, and what the split holds (warnings for a tiny one)."""
    found = by_file(source.predict, data.splits["test"])
    paths = list(found)
    y = np.asarray([found[p][1] for p in paths])
    probs = np.stack([found[p][0] for p in paths]).astype(np.float32)
    counts = np.bincount(y, minlength=len(labels))
    per_class = {label: int(counts[i]) for i, label in enumerate(labels) if counts[i]}
    report = TestSplitReport(len(y), per_class, None, None, "import")
    if len(y) < TINY_SPLIT:
        report.warnings.append(
            f"only {len(y)} test images: one image is {100 / len(y):.1f} accuracy points"
            + (f", more than --max-drop {max_drop:g}" if 100 / len(y) > max_drop else "")
        )
    return Answers(data.splits["test"], paths, y, probs, report)


def write_foreign_bundle(plan: Plan, data: DataSet | None, progress) -> ImportResult:
    """The bundle of `plan`'s artifacts at --out, verified on `data` when given; staged, then renamed."""
    request = plan.request
    out = check_out(request)
    guard = import_guard(request)
    for line in plan.lines:  # what was read from the model, decided or skipped: the user reads it first
        progress(line)
    with claimed_stage(out, request.overwrite, guard) as stage:
        work = stage / WORK
        work.mkdir()
        if data is not None:
            manifest, table = _verified_bundle(stage, work, plan, data, progress)
        else:
            manifest, table = _unverified_bundle(stage, work, plan, progress)
        shutil.rmtree(work)
        tar = write_tar(stage, out) if request.tar else None
    if tar is not None:
        publish_tar(tar, out, request.overwrite)
    return ImportResult(out, manifest, table, plan.lines)


def _verified_bundle(stage: Path, work: Path, plan: Plan, data: DataSet, progress) -> tuple:
    request = plan.request
    progress(f"running the {plan.source.framework} model on the test images of {data.root}")
    answers = source_answers(plan.source, data, plan.labels, request.max_drop)
    for warning in answers.split_report.warnings:
        plan.lines.append(f"warning: {warning}")
        progress(plan.lines[-1])
    judging = Judging(
        plan.labels,
        plan.spec,
        request.max_drop,
        len(plan.candidates),
        advice="raise --max-drop, or import without --data to ship the model unverified and without int8",
    )
    verified = []
    for i, candidate in enumerate(plan.candidates, 1):
        v = verified_attempts(
            i,
            candidate.fmt,
            candidate.attempts(work),
            stage / candidate.fmt.file,
            lambda target, c=candidate: open_session(target, c, plan),
            answers,
            judging,
        )
        v.tensors = candidate.tensors
        verified.append(v)
    judged = judge(stage, answers, verified, plan.labels, [], request)
    manifest = _manifest(plan, judged.artifacts, round(answers.accuracy, 6), verified_on=data)
    manifest.reference = judged.references
    manifest.source.update(test_images=int(len(answers.y)), test_split=answers.split_report.to_dict())
    table = write_bundle(stage, manifest, answers, judged, request.check_images, "source")
    return manifest.to_dict(), table


def _unverified_bundle(stage: Path, work: Path, plan: Plan, progress) -> tuple:
    """Each artifact built (its first attempt), opened and run once in the runtime; nothing measured."""
    artifacts, rows = [], []
    for i, candidate in enumerate(plan.candidates, 1):
        fmt = candidate.fmt
        description, build = candidate.attempts(work)[0]
        progress(f"[{i}/{len(plan.candidates)}] {fmt.name}: writing" + (f" ({description})" if description else ""))
        target = stage / fmt.file
        notes = build(target) or {}
        session = open_session(target, candidate, plan)
        probs = session.predict(np.zeros((1, *plan.spec.shape), plan.spec.dtype))
        if probs.shape != (1, len(plan.labels)):
            raise EdgeclsError(
                f"{fmt.name} gives {probs.shape[1:]} outputs in the runtime but there are {len(plan.labels)} labels"
            )
        spec = session.backend.input_spec, session.backend.output_spec
        artifacts.append(
            Artifact(
                name=fmt.name,
                file=fmt.file,
                format=fmt.format,
                precision=fmt.precision,
                size_bytes=target.stat().st_size,
                sha256=sha256_file(target),
                input=tensor_quant(spec[0]),
                output=tensor_quant(spec[1]),
                notes={**notes, "verified_on_data": False},
                **candidate.tensors,
            )
        )
        rows.append(f"{fmt.name:<12} {artifacts[-1].size_bytes:>10,}  not verified on data (no --data)")
    manifest = _manifest(plan, artifacts, None, verified_on=None)
    table = "\n".join([f"{'artifact':<12} {'size':>10}  note", *rows])
    write_text(stage / LABELS, "\n".join(plan.labels) + "\n")
    write_text(stage / "verification.txt", "not verified on data: import with --data DIR to verify\n" + table + "\n")
    manifest.files = {name: sha256_file(stage / name) for name in (LABELS, "verification.txt")}
    check_listed_names(manifest, stage)
    write_json(stage / MANIFEST, manifest.to_dict())
    return manifest.to_dict(), table


def open_session(target: Path, candidate: Candidate, plan: Plan) -> ModelSession:
    """The artifact as the runtime will open it from the manifest (layout, output kind, named tensors)."""
    return ModelSession(
        target, candidate.fmt.format, head=plan.head, layout=plan.spec.layout, output=plan.output, **candidate.tensors
    )


def _manifest(plan: Plan, artifacts: list, accuracy, verified_on: DataSet | None) -> Manifest:
    request, source = plan.request, plan.source
    return Manifest(
        labels=plan.labels,
        preprocess=plan.spec,
        head=plan.head,
        output=plan.output,
        artifacts=artifacts,
        reference_accuracy=accuracy,
        source={
            "kind": "import",
            "framework": source.framework,
            "file": Path(request.model).name,
            "sha256": sha256_file(request.model),
            "verified_on_data": verified_on is not None,
            "data": str(verified_on.root.resolve()) if verified_on is not None else None,
            "preprocessing_from": dict(plan.preprocessing_from),
            **({"params": source.params} if source.params is not None else {}),
        },
        calibration=plan.calibration,
        versions={"edgecls": __version__, **runtime_versions(), "python": platform.python_version()},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def settle_spec(hints, declared, lines: list) -> tuple:
    """`resolve_spec` of the model's hints and the options, refused in one line when what either gives cannot be
    run: a normalization that is not finite, the model's own one that does not fit (the options can override
    it), a side over MAX_SIDE. A uint8-input model takes its pixels as they are: options that normalize are
    ignored with a warning."""
    _check_normalization("--mean/--std", declared.mean, declared.std, 3)
    if declared.mean is None and declared.std is None and declared.normalize is None and not hints.raw_input:
        where = hints.said_by.get("mean") or hints.said_by.get("std") or "the model"
        _check_normalization(where, hints.mean, hints.std, hints.channels or 3, " (override it with --mean/--std)")
    spec, output = resolve_spec(hints, declared, lambda line: lines.append(f"warning: {line}"))
    if max(spec.height, spec.width) > MAX_SIDE:
        raise EdgeclsError(
            f"input size {spec.height}x{spec.width} is over {MAX_SIDE} pixels a side: give the model's real size "
            f"with --size N or --size WxH"
        )
    if hints.raw_input and (declared.mean, declared.std, declared.normalize) != (None, None, None):
        lines.append("warning: the model takes uint8 pixels as they are: --normalize/--mean/--std ignored")
    return spec, output


def _check_normalization(where: str, mean, std, channels: int, fix: str = "") -> None:
    for name, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        if not all(np.isfinite(v) for v in values):
            raise EdgeclsError(f"{where} gives {name} {values}: it must be finite numbers{fix}")
        if len(values) not in (1, channels):
            raise EdgeclsError(f"{where} gives {len(values)} {name} values: it needs 1 or {channels}{fix}")
        if name == "std" and any(v == 0 for v in values):
            raise EdgeclsError(f"{where} gives std {values}: it must not be 0{fix}")


def preprocessing_from(hints, declared) -> dict:
    """The manifest's source.preprocessing_from: for each field, whether the model, an option or a default set it
    (a uint8-input model's normalization is the model's, whatever the options say)."""
    if hints.raw_input:  # its normalization is inside it (or its input's quantization)
        hints = replace(hints, mean=(0.0,), std=(1.0,))
        declared = replace(declared, mean=None, std=None, normalize=None)
    normalized = declared.normalize is not None
    said = {
        "size": (hints.size, declared.size),
        "color": (hints.color, declared.color),
        "layout": (hints.layout, declared.layout),
        "mean": (hints.mean, declared.mean if not normalized else declared.normalize),
        "std": (hints.std, declared.std if not normalized else declared.normalize),
        "resize": (None, declared.resize),
        "output": (hints.output, declared.output),
    }
    return {
        name: "option" if option is not None else "model" if model is not None else "default"
        for name, (model, option) in said.items()
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, as a user would compute them (float64, the maximum subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probs(outputs: np.ndarray, step: float = 0.0) -> bool:
    """Rows in [0, 1] that sum to 1 (or one sigmoid unit in [0, 1]): the model already ends in a softmax.

    step: the output's quantization step (a uint8 softmax's rows sum to 1 within one step per class)."""
    y = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    in_range = bool(np.all((y >= -1e-6) & (y <= 1 + 1e-6)))
    tolerance = 1e-3 + step * y.shape[1]
    return in_range and (y.shape[1] == 1 or bool(np.allclose(y.sum(axis=1), 1.0, rtol=0, atol=tolerance)))


def to_probs(outputs: np.ndarray, output: str, head: str) -> np.ndarray:
    """The source model's raw outputs as probabilities, the way its user would: softmax of logits, the
    one-unit sigmoid head as two classes."""
    y = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if head == "sigmoid" and y.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-y)) if output == "logits" else y
        return np.concatenate([1.0 - p, p], axis=1)
    return softmax(y) if output == "logits" else y


def input_shape_hints(dims: list, declared) -> dict:
    """layout, channels and size from the input's shape (None for a dimension not fixed); rank 4 only."""
    if len(dims) == 2:
        raise EdgeclsError(
            f"the model's input is not an image (shape {shown(dims)}, rank 2): edgecls imports image "
            f"classifiers that take a [N, C, H, W] or [N, H, W, C] tensor"
        )
    if len(dims) != 4:
        raise EdgeclsError(f"the model's input has rank {len(dims)} (shape {shown(dims)}): edgecls needs rank 4 images")
    return _layout(dims, declared)


def _layout(dims: list, declared) -> dict:
    """size, channels and layout from [N, C, H, W] or [N, H, W, C]; --layout decides when both could be."""
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    layout = "nchw" if first and not last else "nhwc" if last and not first else None
    if layout is None and declared.layout is None:
        raise EdgeclsError(
            f"the model's input shape {shown(dims)} does not say where its channels are: "
            f"give --layout nchw or --layout nhwc (and --size N when its height and width are not fixed)"
        )
    if layout is not None and declared.layout not in (None, layout):
        raise EdgeclsError(
            f"--layout {declared.layout} contradicts the model's input shape {shown(dims)} ({layout}): "
            f"leave --layout out"
        )
    layout = layout or declared.layout
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    size = (h, w) if h and w else None
    if size is not None and declared.size is not None and tuple(declared.size) != size:
        raise EdgeclsError(
            f"--size {declared.size[1]}x{declared.size[0]} contradicts the model's fixed input {w}x{h} "
            f"(shape {shown(dims)}): leave --size out"
        )
    return {"layout": layout, "channels": c, "size": size}


def shown(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def pick_tensor(found: list, wanted: str | None, what: str, option: str) -> int:
    """The index in `found` (the model's input or output names) of the one to use: the named one, or the only one."""
    if wanted is not None:
        if wanted not in found:
            raise EdgeclsError(f"the model has no {what} named {wanted!r}: its {what}s are {', '.join(found)}")
        if what == "input" and len(found) > 1:
            raise EdgeclsError(
                f"the model also needs input(s) {', '.join(n for n in found if n != wanted)}, and edgecls feeds "
                f"one image: export the model with the image as its only input"
            )
        return found.index(wanted)
    if what == "input" and len(found) > 1:
        raise EdgeclsError(
            f"the model has {len(found)} inputs ({', '.join(found)}) but edgecls imports models whose only input "
            f"is the image: export the model with the image as its only input"
        )
    if len(found) != 1:
        raise EdgeclsError(
            f"the model has {len(found)} {what}s ({', '.join(found)}): name the image one with {option} NAME"
        )
    return 0


OUTPUT_PROBE = 4  # inputs run through a model that does not say whether it ends in a softmax


def sample_inputs(spec: PreprocessSpec, data: DataSet | None) -> np.ndarray:
    """A few inputs as `preprocess` makes them: the data's first test images, else seeded random images."""
    from edgecls.core.data import iter_batches
    from edgecls.runtime.preprocess import preprocess

    if data is not None:
        return next(iter_batches(data.splits["test"], OUTPUT_PROBE))[0]
    images = np.random.default_rng(0).integers(0, 256, (OUTPUT_PROBE, spec.height, spec.width, 3), dtype=np.uint8)
    return np.stack([preprocess(image, spec) for image in images])


def probe_output(run, spec: PreprocessSpec, data: DataSet | None, lines: list, step: float = 0.0) -> str:
    """probs or logits, from the model's raw outputs `run(x)` on a few inputs; a line says which, and the override."""
    x = sample_inputs(spec, data)
    if looks_like_probs(run(x), step):
        lines.append(f"output: probabilities (rows in 0..1 summing to 1 on {len(x)} inputs); else pass --output logits")
        return "probs"
    lines.append(
        f"output: logits (rows on {len(x)} inputs are not probabilities), softmax applied by edgecls; "
        f"if the model ends in its own softmax, pass --output probs"
    )
    return "logits"


def as_is(model_path) -> list:
    """The one attempt of an artifact that is the user's file, byte for byte."""

    def build(out: Path) -> dict:
        out.write_bytes(Path(model_path).read_bytes())
        return {}

    return [("the model file as it is", build)]


def wanted_formats(formats: str | None, offered: tuple, source: str) -> tuple:
    """The artifact names --formats asks for among those the source `offered` (None or "all": every one)."""
    if not formats or formats.strip() == "all":
        return offered
    wanted = tuple(dict.fromkeys(v.strip() for v in formats.split(",") if v.strip()))
    unknown = [name for name in wanted if name not in offered]
    if unknown or not wanted:
        raise EdgeclsError(
            f"--formats {formats}: {source} yields {', '.join(offered)}"
            + (f", not {', '.join(unknown)}" if unknown else "")
            + ": choose from those, or leave --formats out"
        )
    return wanted
