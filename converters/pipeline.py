"""`convert`: run directory -> (prune) -> export every format -> verify in the runtime -> bundle.

The bundle is built in a temp directory and renamed into place only when every artifact
passed the accuracy gate, so a failed or interrupted convert leaves nothing that looks complete.

Temp files: ours (the ONNX export, quantization's pre-processed graph) are written into the stage's
`.work` folder by explicit paths, so a kill -9 leaves them where the next convert into that folder
removes them. The libraries' own (TF's SavedModel and autograph files, ONNX Runtime's) follow
`tempfile.tempdir`, which belongs to the whole process: a library caller's convert leaves it alone
(another thread's temp files must not land in our stage and be deleted with it), and those files
are cleaned by the libraries' own try/finally. Only the CLI, which owns its process, points it at
`.work` (`ConvertOptions.temp_in_stage`), under a lock held for the whole convert and always restored.
"""

from __future__ import annotations

import math
import numbers
import os
import platform
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np

from edgecls import __version__
from edgecls.converters import calibration as calib
from edgecls.converters import onnx as onnx_export
from edgecls.converters import testsplit
from edgecls.converters.formats import FORMATS, ExportFormat
from edgecls.converters.macs import count_macs
from edgecls.converters.output import check_tar_output, claimed_stage, publish_tar, write_tar
from edgecls.converters.quiet import quiet
from edgecls.converters.reference import ReferenceStats
from edgecls.converters.tflite import to_tflite
from edgecls.converters.verify import compare, format_recall, format_table
from edgecls.core.data import iter_batches
from edgecls.core.metrics import probabilities
from edgecls.core.outputs import bundle_guard
from edgecls.core.progress import progress
from edgecls.core.rundir import open_run
from edgecls.runtime.atomic import check_output, write_bytes, write_json, write_text
from edgecls.runtime.bundle import LABELS, MANIFEST, Artifact, Manifest, TensorQuant, check_listed_names, sha256_file
from edgecls.runtime.errors import DataError, EdgeclsError
from edgecls.runtime.session import ModelSession


class AccuracyGateError(EdgeclsError):
    """An artifact lost more accuracy than allowed and no remedy recovered it."""


@dataclass
class ConvertOptions:
    formats: list = field(default_factory=lambda: list(FORMATS.values()))
    prune: str | None = None  # "structured=0.5" | "sparsity=0.7"
    prune_epochs: int = 8
    max_prune_drop: float = 1.0  # accuracy points
    calibration_size: int = 200
    calibration_method: str = "minmax"  # for ONNX: minmax | percentile | entropy
    max_drop: float = 1.0  # accuracy points an artifact may lose against Keras
    overwrite: bool = False
    tar: bool = False
    check_images: int = 6  # held-out images kept in the bundle for the on-device smoke test after a flash
    seed: int = 0
    workers: int = 4
    qat: str = "remedy"  # tflite-int8 quantization-aware training: remedy (when PTQ fails the gate) | always | never
    qat_epochs: int = 3
    allow_partial_test: bool = False  # verify on a test split that lost images since training (recorded)
    temp_in_stage: bool = False  # the libraries' temp files in the stage too: for a process that does nothing else


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict
    table: str
    seconds: float
    test_split: str = ""  # what verification ran on, one line (the first of verification.txt)


def _tensor_quant(spec) -> TensorQuant:
    return TensorQuant(spec.dtype, float(spec.scale), int(spec.zero_point))


class _Exporter:
    """Writes one format's file; `attempts` lists (description, build) in remedy order."""

    def __init__(
        self,
        model,
        workdir: Path,
        train: calib.CalibrationSampler,
        options: ConvertOptions,
        sample: np.ndarray,
        qat=None,
    ):
        self.model, self.workdir, self.train, self.options, self.sample = model, workdir, train, options, sample
        self._onnx_fp32: Path | None = None
        self.qat = qat  # () -> edgecls.converters.qat.QatResult: fine-tunes, so only called when its attempt comes

    def tflite_qat(self, out) -> dict:
        result = self.qat()
        write_bytes(out, result.tflite)
        return result.notes

    def calibration(self, factor: int = 1) -> np.ndarray:
        return self.train.draw(self.calibration_count(factor))

    def calibration_count(self, factor: int = 1) -> int:
        """Images the representative set really holds: the training split may have fewer than asked."""
        return min(len(self.train), self.options.calibration_size * factor)

    def onnx_fp32(self) -> Path:
        if self._onnx_fp32 is None:
            self._onnx_fp32 = self.workdir / "fp32-export.onnx"
            onnx_export.export_onnx(self.model, self._onnx_fp32, self.sample)  # the workdir: in the stage
        return self._onnx_fp32

    def attempts(self, fmt: ExportFormat):
        """(description, build) pairs; build(out) writes the file and returns notes for the manifest."""
        n, more = self.calibration_count(), self.calibration_count(4)
        if fmt.format == "tflite":
            if fmt.precision != "int8":
                return [("", _without_notes(lambda out: write_bytes(out, to_tflite(self.model, fmt.precision))))]

            def tflite_int8(factor=1):
                def build(out):
                    data = self.calibration(factor)
                    write_bytes(out, to_tflite(self.model, "int8", data))
                    return _calibration_notes(data)

                return build

            epochs = self.options.qat_epochs
            qat = (
                [(f"quantization-aware training ({epochs} epoch{'s' if epochs != 1 else ''})", self.tflite_qat)]
                if self.qat is not None and self.options.qat != "never"
                else []
            )
            if self.options.qat == "always":
                return qat
            return (
                [(f"per-channel, {n} calibration images", tflite_int8())]
                + ([(f"more calibration data ({more} images)", tflite_int8(4))] if more > n else [])
                + qat
            )
        if fmt.precision == "fp32":
            return [("", _without_notes(lambda out: out.write_bytes(self.onnx_fp32().read_bytes())))]
        base = onnx_export.OnnxQuantOptions(calibration=self.options.calibration_method)

        def quant(opts, factor=1):
            def build(out):
                data = self.calibration(factor)
                kept = onnx_export.quantize_int8(self.onnx_fp32(), out, data, opts, workdir=self.workdir)
                return {**_calibration_notes(data), **({"kept_in_float": list(kept)} if kept else {})}

            return build

        return [
            (f"QDQ {base.describe()}, {n} calibration images", quant(base)),
            *([(f"more calibration data ({more} images)", quant(base, 4))] if more > n else []),  # else the same set
            (f"percentile calibration ({more} images)", quant(replace(base, calibration="percentile"), 4)),
            (f"entropy calibration ({more} images)", quant(replace(base, calibration="entropy"), 4)),
            (f"first and last layers kept in float ({more} images)", quant(replace(base, keep_ends_in_float=True), 4)),
        ]


def _calibration_notes(data: np.ndarray) -> dict:
    """The set this artifact was calibrated on: a remedy's larger set is not the manifest's `calibration`."""
    return {"calibration_images": int(len(data)), "calibration_fingerprint": calib.fingerprint(data)}


def _without_notes(write):
    def build(out) -> dict:
        write(out)
        return {}

    return build


def _qat_source(model, run, splits, options: ConvertOptions):
    def build():
        from edgecls.converters.qat import QatOptions, quantization_aware_tflite

        return quantization_aware_tflite(
            model,
            run,
            splits,
            QatOptions(epochs=options.qat_epochs, calibration_size=options.calibration_size, seed=options.seed),
        )

    return build


def _prune(run, model, splits, options: ConvertOptions, reference: dict, reference_right: int):
    from edgecls.converters.prune import prune_model

    model, report = prune_model(model, options.prune, splits, run, epochs=options.prune_epochs, seed=options.seed)
    test = splits["test"]
    pruned_probs = probabilities(model.predict(test.x, batch_size=64, verbose=0))
    report["accuracy_before"] = reference["accuracy"]
    pruned_right = int((pruned_probs.argmax(1) == test.y).sum())
    report["accuracy_after"] = pruned_right / len(test.y)
    drop = 100 * (report["accuracy_before"] - report["accuracy_after"])
    progress(
        f"pruned ({options.prune}): params {report['params_before']:,} -> {report['params_after']:,}, "
        f"MACs {report['macs_before']:,} -> {report['macs_after']:,} "
        f"({report['macs_before'] / max(1, report['macs_after']):.2f}x fewer), "
        f"accuracy {report['accuracy_before']:.4f} -> {report['accuracy_after']:.4f}"
    )
    if not gate_passes(reference_right, pruned_right, len(test.y), options.max_prune_drop):
        raise AccuracyGateError(
            f"pruning ({options.prune}) lost {drop:.2f} accuracy points after fine-tuning "
            f"(limit {options.max_prune_drop}): "
            f"prune less, fine-tune longer (--prune-epochs), or raise --max-prune-drop"
        )
    return model, pruned_probs, report


def convert(run_path, out, options: ConvertOptions | None = None) -> ConvertResult:
    options = options or ConvertOptions()
    started = time.perf_counter()
    out = Path(os.path.abspath(out))  # `--out .` has a name, and a parent to stage in
    check_options(options)
    run = open_run(run_path)
    check_labels(run.labels)
    guard = bundle_guard(run)
    check_output(out, options.overwrite, **guard)  # before the model loads: a refusal costs nothing
    if options.tar:
        check_tar_output(out, options.overwrite)
    with claimed_stage(out, options.overwrite, guard) as stage:
        work = stage / WORK
        work.mkdir()
        with _temp_files_in(work, options.temp_in_stage):
            manifest, table, split_line = _convert_into(stage, work, run, run_path, options)
        shutil.rmtree(work)
        tar = write_tar(stage, out) if options.tar else None
    if tar is not None:
        publish_tar(tar, out, options.overwrite)
    return ConvertResult(out, manifest, table, time.perf_counter() - started, split_line)


WORK = ".work"  # inside the stage: temp files of the conversion


def check_max_drop(value: float, option: str = "--max-drop") -> None:
    """A limit of accuracy points given by a user must be a number of 0 or more (nan compares false with
    everything: `drop > nan` would turn the gate off)."""
    if not _number(value) or not math.isfinite(value) or value < 0:
        raise EdgeclsError(f"{option} {value} is not a number of accuracy points of 0 or more: use e.g. {option} 1")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ConvertOptions field -> (least value, the CLI option): whole numbers
_COUNTS = {
    "prune_epochs": (1, "--prune-epochs"),
    "calibration_size": (1, "--calibration-size"),
    "check_images": (0, "--check-images"),
    "seed": (0, "--seed"),
    "workers": (1, "workers"),
    "qat_epochs": (1, "--qat-epochs"),
}


def check_options(options: ConvertOptions) -> None:
    """Every numeric option, before any work: the CLI checks its flags too, a library caller is checked here.

    The two limits in accuracy points must be finite (a negative one, demanding a gain, makes every
    attempt fail, which tests use; the CLI refuses it)."""
    if not options.formats:
        raise EdgeclsError("no formats to export: pass --formats")
    for name, option in (("max_drop", "--max-drop"), ("max_prune_drop", "--max-prune-drop")):
        value = getattr(options, name)
        if not _number(value) or not math.isfinite(value):
            raise EdgeclsError(f"{option} {value} is not a number of accuracy points: use e.g. {option} 1")
    for name, (least, option) in _COUNTS.items():
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise EdgeclsError(f"{option} {value!r} is not a whole number of {least} or more")


def check_labels(labels: list) -> None:
    """labels.txt holds one label a line: a class name with a line break would read back as two."""
    broken = [label for label in labels if "\n" in label]
    if broken:
        raise EdgeclsError(
            f"class name {broken[0]!r} holds a line break, which labels.txt cannot hold: "
            f"rename its class folder and train again"
        )


_TEMP_LOCK = threading.Lock()  # held by a convert that redirects tempfile.tempdir, for its whole run


@contextmanager
def _temp_files_in(folder: Path, redirect: bool):
    """With `redirect`, the libraries' temp files go to `folder` (in the stage) for the block; see the module."""
    if not redirect:
        yield
        return
    with _TEMP_LOCK:
        saved = tempfile.tempdir
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = saved


def gate_passes(reference_right: int, artifact_right: int, images: int, max_drop: float) -> bool:
    """Whether the artifact lost at most `max_drop` points, counted in images: exact at the limit (99 -> 98 of
    100 is 1 point, not 1.0000000000000009), the limit read as the decimal the user typed."""
    allowed = Fraction(repr(float(max_drop))) * images / 100
    return (reference_right - artifact_right) <= allowed


def _by_file(predict, split, each=None) -> dict:
    """path -> (output, label) of the split's images that decoded in this pass."""
    found = {}
    for x, y, paths in iter_batches(split, 32):
        outputs = np.asarray(predict(x))
        if each is not None:
            each(x, outputs)
        found.update((p, (o, int(t))) for p, o, t in zip(paths, outputs, y))
    if not found:
        raise DataError(f"no readable images in the {getattr(split, 'name', '') or 'test'} split")
    return found


def _load_data(run, options: ConvertOptions) -> tuple:
    """(splits, split kind, changed since training): an old run's recomputed split is checked as evaluate does."""
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.splits import read_split_record

    recorded = read_split_record(run.path) is not None
    names = ("train", "val", "test") if options.prune or not recorded else ("train", "test")
    progress("reading the run's data (train for calibration, test for verification)")
    # Pruning fine-tunes on whole splits in memory; otherwise large splits stream (edgecls.core.data).
    splits = load_run_splits(run, names, options.workers, stream=not options.prune)
    if "test" not in splits:
        raise EdgeclsError("the run has no test split to verify artifacts on: train with --test-fraction > 0")
    changed = False
    fingerprint = run.metadata.get("dataset", {}).get("fingerprint")
    if not recorded and fingerprint:
        from edgecls.core.data import fingerprint as dataset_fingerprint

        changed = dataset_fingerprint(run.labels, {n: splits[n] for n in names if n in splits}) != fingerprint
    return splits, ("recorded" if recorded else "recomputed"), changed


def _convert_into(stage: Path, work: Path, run, run_path, options: ConvertOptions) -> tuple:
    """Everything of a convert that writes into the stage; returns (manifest dict, table, test split line)."""
    model = run.load_model()
    expected = tuple(run.metadata["input_shape"])
    if tuple(model.input_shape[1:]) != expected:
        raise EdgeclsError(
            f"{run.model_path} takes input {tuple(model.input_shape[1:])} but metadata.json says {expected}: "
            "the run directory is inconsistent"
        )
    splits, split_kind, changed = _load_data(run, options)
    test = splits["test"]
    keras_out = _by_file(lambda x: probabilities(model.predict_on_batch(x)), test)
    paths = list(keras_out)  # the files verified, in order; a file that stops decoding later leaves every side
    y = np.asarray([keras_out[p][1] for p in paths])
    split_report = testsplit.check(run, y, split_kind, changed, max_drop=options.max_drop)
    testsplit.enforce(split_report, options.allow_partial_test)
    ref_probs = np.stack([keras_out[p][0] for p in paths])
    reference = {
        "accuracy": float((ref_probs.argmax(1) == y).mean()),
        "macs": count_macs(model),
        "params": int(model.count_params()),
    }
    source_accuracy = reference["accuracy"]
    pruning = {}
    if options.prune:
        reference_right = int((ref_probs.argmax(1) == y).sum())
        model, pruned, pruning = _prune(run, model, splits, options, reference, reference_right)
        index = {p: k for k, p in enumerate(test.paths)}  # pruning runs in memory: every file decoded once
        ref_probs = pruned[[index[p] for p in paths]]
        reference.update(accuracy=pruning["accuracy_after"], macs=pruning["macs_after"], params=pruning["params_after"])
    labels = run.labels
    testsplit.check_training_split(labels, splits["train"].y)
    sampler = calib.CalibrationSampler(splits["train"], options.seed)
    calibration = sampler.draw(options.calibration_size)
    calib.check_shape(calibration, expected)
    # Only its size and fingerprint are kept: each int8 format draws the set again (memory, issue 10).
    calibration = {"size": int(len(calibration)), "fingerprint": calib.fingerprint(calibration)}

    head = run.metadata.get("head", "softmax")
    exporter = _Exporter(
        model, work, sampler, options, next(iter_batches(test, 1))[0], qat=_qat_source(model, run, splits, options)
    )
    verified = []  # per format: what _export_verified returns
    for i, fmt in enumerate(options.formats, 1):
        verified.append(_export_verified(i, fmt, stage, exporter, run, test, paths, ref_probs, y, options))
    # The files every pass decoded: a file that stopped decoding mid-run is dropped from every side.
    common = [i for i, p in enumerate(paths) if all(p in v["probs"] for v in verified)]
    kept = set(common)
    dropped = [p for i, p in enumerate(paths) if i not in kept]
    if dropped:
        progress(
            f"warning: {len(dropped)} test image(s) stopped decoding or changed during verification "
            f"(first: {dropped[0]})"
        )
        split_report = testsplit.check(run, y[common], split_kind, changed, dropped, options.max_drop)
        testsplit.enforce(
            split_report, options.allow_partial_test, " (files stopped decoding or changed during verification)"
        )
        paths, y, ref_probs = [paths[i] for i in common], y[common], ref_probs[common]
        reference["accuracy"] = float((ref_probs.argmax(1) == y).mean())
        if not options.prune:
            source_accuracy = reference["accuracy"]
    rows, artifacts, references, recalls, keras_recall = [], [], {}, {}, {}
    all_right = ref_probs.argmax(1) == y  # check images must be right in Keras and in every artifact
    for v in verified:
        fmt, description, failures = v["fmt"], v["description"], v["failures"]
        predicted = np.stack([v["probs"][p] for p in paths])
        result = compare(predicted, ref_probs, y, labels)
        if dropped and not gate_passes(result["reference_right"], result["right"], len(y), options.max_drop):
            raise AccuracyGateError(
                f"{fmt.name} loses more than {options.max_drop} accuracy points on the test images left after "
                f"{len(dropped)} stopped decoding or changed: restore them and convert again"
            )
        all_right &= predicted.argmax(1) == y
        recalls[fmt.name], keras_recall = result["per_class_recall"], result["reference_per_class_recall"]
        # What the device's drift monitoring compares with: this artifact's answers on the test split.
        references[fmt.name] = v["stats"].result()
        note = {"remedy": description} if failures else {}
        if failures:
            note["failed_attempts"] = failures
        if fmt.precision == "int8":
            note["calibration"] = description
        note.update(v["built"])  # calibration_images, kept_in_float: read off what was built
        if result["per_class_recall_change"]:
            note["per_class_recall_change"] = result["per_class_recall_change"]
        target = stage / fmt.file
        artifacts.append(
            Artifact(
                name=fmt.name,
                file=fmt.file,
                format=fmt.format,
                precision=fmt.precision,
                size_bytes=target.stat().st_size,
                sha256=sha256_file(target),
                input=v["input"],
                output=v["output"],
                accuracy=round(result["accuracy"], 6),
                agreement=round(result["agreement"], 6),
                max_prob_diff=round(result["max_prob_diff"], 6),
                macs=reference["macs"],
                notes=note,
            )
        )
        rows.append(
            {
                "name": fmt.name,
                "size_bytes": artifacts[-1].size_bytes,
                **result,
                "note": f"fixed by: {description}" if failures else description,
            }
        )

    import keras
    import tensorflow as tf

    manifest = Manifest(
        labels=labels,
        preprocess=run.preprocess,
        head=head,
        artifacts=artifacts,
        reference_accuracy=round(reference["accuracy"], 6),
        source={
            "run": str(Path(run_path).resolve()),
            "model_sha256": sha256_file(run.model_path),
            "model": run.metadata.get("model", {}),
            "accuracy": round(source_accuracy, 6),
            "dataset_fingerprint": run.metadata.get("dataset", {}).get("fingerprint"),
            "test_images": int(len(y)),
            "test_split": split_report.to_dict(),
            "params": reference["params"],
            "macs": reference["macs"],
        },
        calibration={
            "size": calibration["size"],
            "requested": options.calibration_size,
            "fingerprint": calibration["fingerprint"],
            "method": options.calibration_method,
            "drawn_from": "train",
            "seed": options.seed,
        },
        pruning=pruning,
        reference=references,
        versions={
            "edgecls": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            **_runtime_versions(),
            "python": platform.python_version(),
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    table = format_table(rows, reference["accuracy"])
    text = "\n".join(
        [split_report.summary(), table, "", format_recall(labels, split_report.per_class, keras_recall, recalls)]
    )
    write_text(stage / LABELS, "\n".join(labels) + "\n")
    write_text(stage / "verification.txt", text + "\n")
    manifest.checks = _write_checks(stage, paths, y, all_right, labels, options.check_images)
    manifest.files = {
        name: sha256_file(stage / name) for name in (LABELS, "verification.txt", *(c["file"] for c in manifest.checks))
    }
    check_listed_names(manifest, stage)  # what predict and flash would refuse is never written
    write_json(stage / MANIFEST, manifest.to_dict())
    return manifest.to_dict(), table, split_report.summary()


def _export_verified(i, fmt, stage, exporter, run, test, paths, ref_probs, y, options) -> dict:
    """Build one format, trying its remedies in turn until one passes the gate; its answers by file."""
    labels, head = run.labels, run.metadata.get("head", "softmax")
    target, total = stage / fmt.file, len(options.formats)
    failures = []
    attempts = exporter.attempts(fmt)
    for n, (description, build) in enumerate(attempts, 1):
        progress(f"[{i}/{total}] {fmt.name}: converting" + (f" ({description})" if description else ""))
        try:
            with quiet():
                built = build(target)
        except EdgeclsError:
            raise
        except Exception as exc:  # the converters raise many types; name the format and the way out
            first = next((l for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
            raise EdgeclsError(f"{fmt.name} conversion failed: {first[:300]} (leave it out with --formats)") from exc
        if fmt.format == "onnx":
            onnx_export.set_metadata(target, {"labels": labels, "preprocess": run.preprocess.to_dict(), "head": head})
            onnx_export.check(target)
        progress(f"[{i}/{total}] {fmt.name}: verifying on {len(paths)} test images")
        session = ModelSession(target, fmt.format, head=head)
        stats = ReferenceStats(labels, run.preprocess)  # gathered in the same pass over the test split
        found = _by_file(session.predict, test, each=stats.update)
        both = [k for k, p in enumerate(paths) if p in found]  # a file that stopped decoding is judged without
        predicted = np.stack([found[paths[k]][0] for k in both])
        result = compare(predicted, ref_probs[both], y[both], labels)
        if gate_passes(result["reference_right"], result["right"], len(both), options.max_drop):
            break
        drop = 100 * (result["reference_right"] - result["right"]) / len(both)
        failures.append(f"{description or fmt.name}: -{drop:.2f} points")
        last = n == len(attempts)
        progress(
            f"    lost {drop:.2f} points (limit {options.max_drop}); "
            + ("no remedy left" if last else "trying the next remedy")
        )
    else:
        raise AccuracyGateError(
            f"{fmt.name} loses more than {options.max_drop} accuracy points whatever we try "
            f"({'; '.join(failures)}): ship without it (--formats) or raise --max-drop"
        )
    spec = session.backend.input_spec, session.backend.output_spec
    return {
        "fmt": fmt,
        "description": description,
        "failures": failures,
        "built": built,
        "input": _tensor_quant(spec[0]),
        "output": _tensor_quant(spec[1]),
        "probs": {p: o for p, (o, _) in found.items()},
        "stats": stats,
    }


def _write_checks(stage: Path, paths: list, y: np.ndarray, right: np.ndarray, labels: list, count: int) -> list:
    """Copy up to `count` test images (classes in turn) that Keras and every artifact classify right.

    Only images every format gets right: a check image must fail the smoke test because the device is
    wrong, not because the model was. The file's own bytes are kept, so the device decodes what the
    user's data looked like.
    """
    by_class = [[i for i in np.flatnonzero(right) if y[i] == c] for c in range(len(labels))]
    chosen = []
    for turn in range(count):
        for indices in by_class:
            if len(chosen) < count and turn < len(indices):
                chosen.append(int(indices[turn]))
    checks = []
    for n, i in enumerate(chosen):
        source = Path(paths[i])
        name = f"check-{n:02d}{source.suffix.lower()}"
        write_bytes(stage / name, source.read_bytes())
        checks.append({"file": name, "label": labels[int(y[i])]})
    return checks


def _runtime_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("onnx", "onnxruntime", "ai-edge-litert", "tf2onnx"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found
