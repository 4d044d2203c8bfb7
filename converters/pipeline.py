"""`convert`: run directory -> (prune) -> export every format -> verify in the runtime -> bundle.

The bundle is built in a temp directory and renamed into place only when every artifact
passed the accuracy gate, so a failed or interrupted convert leaves nothing that looks complete.
"""

from __future__ import annotations

import platform
import tarfile
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters import calibration as calib
from converters import onnx as onnx_export
from converters.formats import FORMATS, ExportFormat
from converters.macs import count_macs
from converters.quiet import quiet
from converters.reference import ReferenceStats
from converters.tflite import to_tflite
from converters.verify import compare, format_table
from edgecls import __version__
from edgecls.data import iter_batches, predict_split
from edgecls.metrics import probabilities
from edgecls.outputs import bundle_guard
from edgecls.progress import progress
from edgecls.rundir import open_run
from runtime.atomic import check_output, staged_dir, write_bytes, write_json, write_text
from runtime.bundle import LABELS, MANIFEST, Artifact, Manifest, TensorQuant, sha256_file
from runtime.errors import EdgeclsError
from runtime.session import ModelSession


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


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict
    table: str
    seconds: float


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
        self.qat = qat  # () -> converters.qat.QatResult: fine-tunes, so only called when its attempt comes

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
            onnx_export.export_onnx(self.model, self._onnx_fp32, self.sample)
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
                kept = onnx_export.quantize_int8(self.onnx_fp32(), out, data, opts)
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
        from converters.qat import QatOptions, quantization_aware_tflite

        return quantization_aware_tflite(
            model,
            run,
            splits,
            QatOptions(epochs=options.qat_epochs, calibration_size=options.calibration_size, seed=options.seed),
        )

    return build


def _prune(run, model, splits, options: ConvertOptions, reference: dict):
    from converters.prune import prune_model

    model, report = prune_model(model, options.prune, splits, run, epochs=options.prune_epochs, seed=options.seed)
    test = splits["test"]
    pruned_probs = probabilities(model.predict(test.x, batch_size=64, verbose=0))
    report["accuracy_before"] = reference["accuracy"]
    report["accuracy_after"] = float((pruned_probs.argmax(1) == test.y).mean())
    drop = 100 * (report["accuracy_before"] - report["accuracy_after"])
    progress(
        f"pruned ({options.prune}): params {report['params_before']:,} -> {report['params_after']:,}, "
        f"MACs {report['macs_before']:,} -> {report['macs_after']:,} "
        f"({report['macs_before'] / max(1, report['macs_after']):.2f}x fewer), "
        f"accuracy {report['accuracy_before']:.4f} -> {report['accuracy_after']:.4f}"
    )
    if drop > options.max_prune_drop:
        raise AccuracyGateError(
            f"pruning ({options.prune}) lost {drop:.2f} accuracy points after fine-tuning "
            f"(limit {options.max_prune_drop}): "
            f"prune less, fine-tune longer (--prune-epochs), or raise --max-prune-drop"
        )
    return model, pruned_probs, report


def convert(run_path, out, options: ConvertOptions | None = None) -> ConvertResult:
    options = options or ConvertOptions()
    started = time.perf_counter()
    out = Path(out)
    if not options.formats:
        raise EdgeclsError("no formats to export: pass --formats")
    run = open_run(run_path)
    guard = bundle_guard(run)
    check_output(out, options.overwrite, **guard)  # before the model loads: a refusal costs nothing
    model = run.load_model()
    expected = tuple(run.metadata["input_shape"])
    if tuple(model.input_shape[1:]) != expected:
        raise EdgeclsError(
            f"{run.model_path} takes input {tuple(model.input_shape[1:])} but metadata.json says {expected}: "
            "the run directory is inconsistent"
        )

    from edgecls.rundata import load_run_splits

    progress("reading the run's data (train for calibration, test for verification)")
    # Pruning fine-tunes on whole splits in memory; otherwise large splits stream (edgecls.data).
    splits = load_run_splits(
        run, ("train", "val", "test") if options.prune else ("train", "test"), options.workers, stream=not options.prune
    )
    if "test" not in splits:
        raise EdgeclsError("the run has no test split to verify artifacts on: train with --test-fraction > 0")
    test = splits["test"]
    ref_probs, _ = predict_split(lambda x: probabilities(model.predict_on_batch(x)), test)
    reference = {
        "accuracy": float((ref_probs.argmax(1) == test.y).mean()),
        "macs": count_macs(model),
        "params": int(model.count_params()),
    }
    source_accuracy = reference["accuracy"]
    pruning = {}
    if options.prune:
        model, ref_probs, pruning = _prune(run, model, splits, options, reference)
        reference.update(accuracy=pruning["accuracy_after"], macs=pruning["macs_after"], params=pruning["params_after"])
    sampler = calib.CalibrationSampler(splits["train"], options.seed)
    calibration = sampler.draw(options.calibration_size)
    calib.check_shape(calibration, expected)
    # Only its size and fingerprint are kept: each int8 format draws the set again (memory, issue 10).
    calibration = {"size": int(len(calibration)), "fingerprint": calib.fingerprint(calibration)}

    labels, head = run.labels, run.metadata.get("head", "softmax")
    rows, artifacts, references = [], [], {}
    with (
        tempfile.TemporaryDirectory(prefix="edgecls-convert-") as work,
        staged_dir(out, overwrite=options.overwrite, **guard) as stage,
    ):
        exporter = _Exporter(
            model,
            Path(work),
            sampler,
            options,
            next(iter_batches(test, 1))[0],
            qat=_qat_source(model, run, splits, options),
        )
        all_right = ref_probs.argmax(1) == test.y  # check images must be right in Keras and in every artifact
        for i, fmt in enumerate(options.formats, 1):
            target = stage / fmt.file
            failures = []
            for description, build in exporter.attempts(fmt):
                progress(
                    f"[{i}/{len(options.formats)}] {fmt.name}: converting"
                    + (f" ({description})" if description else "")
                )
                try:
                    with quiet():
                        built = build(target)
                except EdgeclsError:
                    raise
                except Exception as exc:  # the converters raise many types; name the format and the way out
                    first = next((l for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
                    raise EdgeclsError(
                        f"{fmt.name} conversion failed: {first[:300]} (leave it out with --formats)"
                    ) from exc
                if fmt.format == "onnx":
                    onnx_export.set_metadata(
                        target, {"labels": labels, "preprocess": run.preprocess.to_dict(), "head": head}
                    )
                    onnx_export.check(target)
                progress(f"[{i}/{len(options.formats)}] {fmt.name}: verifying on {len(test.y)} test images")
                session = ModelSession(target, fmt.format, head=head)
                stats = ReferenceStats(labels, run.preprocess)  # gathered in the same pass over the test split
                predicted, _ = predict_split(session.predict, test, each=stats.update)
                result = compare(predicted, ref_probs, test.y, labels)
                drop = 100 * (reference["accuracy"] - result["accuracy"])
                if drop <= options.max_drop:
                    break
                failures.append(f"{description or fmt.name}: -{drop:.2f} points")
                progress(f"    lost {drop:.2f} points (limit {options.max_drop}); trying the next remedy")
            else:
                raise AccuracyGateError(
                    f"{fmt.name} loses more than {options.max_drop} accuracy points whatever we try "
                    f"({'; '.join(failures)}): ship without it (--formats) or raise --max-drop"
                )
            all_right &= predicted.argmax(1) == test.y
            # What the device's drift monitoring compares with: this artifact's answers on the test split.
            references[fmt.name] = stats.result()
            note = {"remedy": description} if failures else {}
            if failures:
                note["failed_attempts"] = failures
            if fmt.precision == "int8":
                note["calibration"] = description
            note.update(built)  # calibration_images, kept_in_float: read off what was built
            if result["per_class_recall_change"]:
                note["per_class_recall_change"] = result["per_class_recall_change"]
            artifacts.append(
                Artifact(
                    name=fmt.name,
                    file=fmt.file,
                    format=fmt.format,
                    precision=fmt.precision,
                    size_bytes=target.stat().st_size,
                    sha256=sha256_file(target),
                    input=_tensor_quant(session.backend.input_spec),
                    output=_tensor_quant(session.backend.output_spec),
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
            session = None  # its runtime's buffers go before the next format converts

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
                "test_images": int(len(test.y)),
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
        write_text(stage / LABELS, "\n".join(labels) + "\n")
        write_text(stage / "verification.txt", table + "\n")
        manifest.checks = _write_checks(stage, test, all_right, labels, options.check_images)
        manifest.files = {
            name: sha256_file(stage / name)
            for name in (LABELS, "verification.txt", *(c["file"] for c in manifest.checks))
        }
        write_json(stage / MANIFEST, manifest.to_dict())
    if options.tar:
        _write_tar(out)
    return ConvertResult(out, manifest.to_dict(), table, time.perf_counter() - started)


def _write_checks(stage: Path, test, right: np.ndarray, labels: list, count: int) -> list:
    """Copy up to `count` test images (classes in turn) that Keras and every artifact classify right.

    Only images every format gets right: a check image must fail the smoke test because the device is
    wrong, not because the model was. The file's own bytes are kept, so the device decodes what the
    user's data looked like.
    """
    by_class = [[i for i in np.flatnonzero(right) if test.y[i] == c] for c in range(len(labels))]
    chosen = []
    for turn in range(count):
        for indices in by_class:
            if len(chosen) < count and turn < len(indices):
                chosen.append(int(indices[turn]))
    checks = []
    for n, i in enumerate(chosen):
        source = Path(test.paths[i])
        name = f"check-{n:02d}{source.suffix.lower()}"
        write_bytes(stage / name, source.read_bytes())
        checks.append({"file": name, "label": labels[int(test.y[i])]})
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


def _write_tar(bundle: Path) -> Path:
    """BUNDLE.tar beside the directory, written to a temp name and renamed."""
    target = bundle.with_name(bundle.name + ".tar")
    tmp = target.with_name(f".{target.name}.partial")
    with tarfile.open(tmp, "w") as tar:
        tar.add(bundle, arcname=bundle.name)
    tmp.replace(target)
    return target
