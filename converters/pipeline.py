"""`convert`: run directory -> (prune) -> export every format -> verify in the runtime -> bundle.

Named stages over the formats table: load the reference (`source`), draw the calibration set, for each
format export -> verify -> remedies (`export`), keep the test files every pass decoded, judge each artifact
and write the bundle (`manifest`).

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

import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgecls.converters import calibration as calib
from edgecls.converters import testsplit
from edgecls.converters.export import ExportContext, export_verified
from edgecls.converters.manifest import build_manifest, judge, write_bundle
from edgecls.converters.options import ConvertOptions, check_max_drop, check_options
from edgecls.converters.output import check_tar_output, claimed_stage, publish_tar, write_tar
from edgecls.converters.source import load_reference
from edgecls.converters.verify import AccuracyGateError, gate_passes
from edgecls.core.data import iter_batches
from edgecls.core.outputs import bundle_guard
from edgecls.core.rundir import open_run
from edgecls.runtime.atomic import check_output
from edgecls.runtime.errors import EdgeclsError

__all__ = [
    "AccuracyGateError",
    "ConvertOptions",
    "ConvertResult",
    "check_labels",
    "check_max_drop",
    "check_options",
    "convert",
    "gate_passes",
]


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict
    table: str
    seconds: float
    test_split: str = ""  # what verification ran on, one line (the first of verification.txt)


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


def check_labels(labels: list) -> None:
    """labels.txt holds one label a line: a class name with a line break would read back as two."""
    broken = [label for label in labels if "\n" in label]
    if broken:
        raise EdgeclsError(
            f"class name {broken[0]!r} holds a line break, which labels.txt cannot hold: "
            f"rename its class folder and train again"
        )


def _convert_into(stage: Path, work: Path, run, run_path, options: ConvertOptions) -> tuple:
    """Everything of a convert that writes into the stage; returns (manifest dict, table, test split line)."""
    reference = load_reference(run, options)
    sampler, calibration = _calibration(run, reference, options)
    context = ExportContext(
        reference.model,
        work,
        sampler,
        options,
        next(iter_batches(reference.test, 1))[0],
        qat=_qat_source(reference.model, run, reference.splits, options),
    )
    verified = [export_verified(i, fmt, stage, context, run, reference) for i, fmt in enumerate(options.formats, 1)]
    dropped = reference.keep_common(run, [v.probs for v in verified], options)
    judged = judge(stage, reference, verified, run.labels, dropped, options)
    manifest = build_manifest(run, run_path, reference, judged, calibration)
    if options.import_source is not None:
        _imported(manifest, options.import_source)
    table = write_bundle(stage, manifest, reference, judged, options.check_images)
    return manifest.to_dict(), table, reference.split_report.summary()


def _imported(manifest, record: dict) -> None:
    """An imported model's bundle names the user's model, not the work run it was converted through; without
    data its reference accuracy (on generated images the source model labelled) means nothing."""
    kept = ("accuracy", "test_images", "test_split", "params", "macs")
    manifest.source = {**record, **{k: manifest.source[k] for k in kept if k in manifest.source}}
    if not record.get("verified_on_data"):
        manifest.reference_accuracy = None
        manifest.source["accuracy"] = None


def _calibration(run, reference, options: ConvertOptions) -> tuple:
    """(the sampler every int8 format draws from, the manifest's `calibration` record)."""
    testsplit.check_training_split(run.labels, reference.splits["train"].y)
    sampler = calib.CalibrationSampler(reference.splits["train"], options.seed)
    drawn = sampler.draw(options.calibration_size)
    calib.check_shape(drawn, tuple(run.metadata["input_shape"]))
    # Only its size and fingerprint are kept: each int8 format draws the set again (memory, issue 10).
    return sampler, {
        "size": int(len(drawn)),
        "requested": options.calibration_size,
        "fingerprint": calib.fingerprint(drawn),
        "method": options.calibration_method,
        "drawn_from": "train",
        "seed": options.seed,
    }


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
