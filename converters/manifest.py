"""The bundle's files from the verified artifacts: the manifest, labels, verification.txt and check images."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgecls import __version__
from edgecls.converters.verify import AccuracyGateError, compare, format_recall, format_table, gate_passes
from edgecls.runtime.atomic import write_bytes, write_json, write_text
from edgecls.runtime.bundle import LABELS, MANIFEST, Artifact, Manifest, check_listed_names, sha256_file


@dataclass
class Judged:
    """Every verified artifact measured on the same test files as the reference."""

    artifacts: list = field(default_factory=list)  # Artifact per format
    rows: list = field(default_factory=list)  # verification table rows
    references: dict = field(default_factory=dict)  # artifact name -> reference statistics (drift monitoring)
    max_drop: float = 1.0  # the gate's limit (--max-drop), recorded in the manifest
    recalls: dict = field(default_factory=dict)  # artifact name -> per-class recall
    keras_recall: dict = field(default_factory=dict)
    all_right: np.ndarray | None = None  # test images right in Keras and in every artifact


def judge(stage: Path, reference, verified: list, labels: list, dropped: list, options) -> Judged:
    """Each artifact against the reference on the files every pass decoded; its manifest entry and table row."""
    # check images must be right in Keras and in every artifact
    judged = Judged(all_right=reference.right(), max_drop=float(options.max_drop))
    for v in verified:
        fmt, description, failures = v.fmt, v.description, v.failures
        predicted = np.stack([v.probs[p] for p in reference.paths])
        result = compare(predicted, reference.probs, reference.y, labels)
        if dropped and not gate_passes(result["reference_right"], result["right"], len(reference.y), options.max_drop):
            raise AccuracyGateError(
                f"{fmt.name} loses more than {options.max_drop} accuracy points on the test images left after "
                f"{len(dropped)} stopped decoding or changed: restore them and convert again"
            )
        judged.all_right &= predicted.argmax(1) == reference.y
        judged.recalls[fmt.name], judged.keras_recall = result["per_class_recall"], result["reference_per_class_recall"]
        # What the device's drift monitoring compares with: this artifact's answers on the test split.
        judged.references[fmt.name] = v.stats.result()
        target = stage / fmt.file
        judged.artifacts.append(
            Artifact(
                name=fmt.name,
                file=fmt.file,
                format=fmt.format,
                precision=fmt.precision,
                size_bytes=target.stat().st_size,
                sha256=sha256_file(target),
                input=v.input,
                output=v.output,
                accuracy=round(result["accuracy"], 6),
                agreement=round(result["agreement"], 6),
                max_prob_diff=round(result["max_prob_diff"], 6),
                macs=reference.macs,
                notes=_notes(v, result),
                **v.tensors,  # input_name/output_name of an imported model with several (empty for convert's)
            )
        )
        judged.rows.append(
            {
                "name": fmt.name,
                "size_bytes": judged.artifacts[-1].size_bytes,
                **result,
                "note": f"fixed by: {description}" if failures else description,
            }
        )
    return judged


def _notes(v, result: dict) -> dict:
    note = {"remedy": v.description} if v.failures else {}
    if v.failures:
        note["failed_attempts"] = v.failures
    if v.fmt.artifact.calibrated:
        note["calibration"] = v.description
    note.update(v.built)  # calibration_images, kept_in_float: read off what was built
    if result["per_class_recall_change"]:
        note["per_class_recall_change"] = result["per_class_recall_change"]
    return note


def build_manifest(run, run_path, reference, judged: Judged, calibration: dict) -> Manifest:
    """The manifest of the verified artifacts: where they came from, what they were calibrated and measured on."""
    import keras
    import tensorflow as tf

    return Manifest(
        labels=run.labels,
        preprocess=run.preprocess,
        head=run.metadata.get("head", "softmax"),
        artifacts=judged.artifacts,
        reference_accuracy=round(reference.accuracy, 6),
        max_drop=judged.max_drop,
        source={
            "run": str(Path(run_path).resolve()),
            "model_sha256": sha256_file(run.model_path),
            "model": run.metadata.get("model", {}),
            "accuracy": round(reference.source_accuracy, 6),
            "dataset_fingerprint": run.metadata.get("dataset", {}).get("fingerprint"),
            "test_images": int(len(reference.y)),
            "test_split": reference.split_report.to_dict(),
            "params": reference.params,
            "macs": reference.macs,
        },
        calibration=calibration,
        pruning=reference.pruning,
        reference=judged.references,
        versions={
            "edgecls": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            **runtime_versions(),
            "python": platform.python_version(),
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_bundle(
    stage: Path, manifest: Manifest, reference, judged: Judged, check_images: int, reference_name: str = "keras"
) -> str:
    """labels.txt, verification.txt, the check images, then manifest.json (last: it lists the others);
    returns the verification table. `reference_name`: what the artifacts were judged against (its table row)."""
    labels, split_report = manifest.labels, reference.split_report
    table = format_table(judged.rows, reference.accuracy, reference_name)
    recall = format_recall(labels, split_report.per_class, judged.keras_recall, judged.recalls, reference_name)
    text = "\n".join([split_report.summary(), table, "", recall])
    write_text(stage / LABELS, "\n".join(labels) + "\n")
    write_text(stage / "verification.txt", text + "\n")
    manifest.checks = _write_checks(stage, reference.paths, reference.y, judged.all_right, labels, check_images)
    manifest.files = {
        name: sha256_file(stage / name) for name in (LABELS, "verification.txt", *(c["file"] for c in manifest.checks))
    }
    check_listed_names(manifest, stage)  # what predict and flash would refuse is never written
    write_json(stage / MANIFEST, manifest.to_dict())
    return table


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


def runtime_versions() -> dict:
    """Versions of the export and runtime packages installed here (those absent are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in ("onnx", "onnxruntime", "ai-edge-litert", "tf2onnx"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found
