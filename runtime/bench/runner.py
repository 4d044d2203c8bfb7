"""The parent side: one fresh worker process per (repeat, artifact, threads), pooled into one record each.

Repeats go round-robin (repeat 1 of every artifact, then repeat 2, ...) so that a burst of other work on
the machine lands on several artifacts a little rather than on one a lot, and the spread of the per-repeat
medians says how much one bench run can be trusted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgecls.runtime.bench import frame as frames
from edgecls.runtime.bench import machine
from edgecls.runtime.bench.stats import spread_pct, summarize
from edgecls.runtime.bundle import Bundle, load_bundle
from edgecls.runtime.errors import EdgeclsError

FORMAT = "edgecls-bench/1"
STAGES = ("decode", "preprocess", "invoke", "postprocess", "frame", "total", "overhead")


@dataclass
class BenchOptions:
    artifacts: list | None = None  # names; None: every artifact of the bundle
    threads: list = field(default_factory=lambda: [1])  # None in the list: the engine's default
    repeats: int = 3
    runs: int = 200
    frame_runs: int | None = None  # None: as many as `runs`
    budget_s: float | None = 10.0  # per timed phase of one repeat
    max_warmup_s: float = 10.0
    frame: str | None = None  # an image file; None: a synthetic 640x480 JPEG
    data: str | None = None
    top_k: int = 5
    python: str = sys.executable
    timeout_s: float = 900.0

    def validate(self) -> None:
        if self.repeats < 1 or self.runs < 1:
            raise EdgeclsError("--repeats and --runs must be at least 1")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgeclsError("--threads values must be at least 1")
        self.threads = list(dict.fromkeys(self.threads))  # 1,1 would time twice and pool both as one record

    def job(self, threads, frame: Path, repeat: int) -> dict:
        """The settings every worker job carries, whatever it times (--data is scored on the first repeat only)."""
        return {
            "threads": threads,
            "runs": self.runs,
            "frame_runs": self.frame_runs or self.runs,
            "budget_s": self.budget_s,
            "max_warmup_s": self.max_warmup_s,
            "frame": str(frame),
            "top_k": self.top_k,
            "data": self.data if repeat == 0 else None,
        }


@dataclass(frozen=True)
class Timed:
    """What one record times, as its first keys say: an artifact of the bundle, or the Keras model it came from."""

    artifact: str
    file: str
    format: str
    precision: str
    size_bytes: int
    macs: int | None = None
    bundle_accuracy: float | None = None

    @classmethod
    def of(cls, artifact) -> Timed:
        return cls(
            artifact.name,
            artifact.file,
            artifact.format,
            artifact.precision,
            artifact.size_bytes,
            artifact.macs,
            artifact.accuracy,
        )

    def record(self, threads, host: dict, repeats: list) -> dict:
        """Its record at one thread count: what it is, the machine it ran on, and its repeats pooled."""
        static = {
            "artifact": self.artifact,
            "file": self.file,
            "format": self.format,
            "precision": self.precision,
            "threads": threads,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "bundle_accuracy": self.bundle_accuracy,
            "machine": host,
        }
        return pool(static, repeats)


def select_artifacts(bundle: Bundle, names) -> list:
    """The bundle's artifacts by name, in manifest order; an unknown name is an error that lists the known ones."""
    if not names:
        return list(bundle.manifest.artifacts)
    for name in names:
        bundle.artifact(name)  # raises BundleError naming what the bundle has
    return [a for a in bundle.manifest.artifacts if a.name in names]


def data_note(folder, labels) -> str | None:
    """Checks --data before any timing; a note naming its folders that are not classes of the bundle, or None.

    A misspelt class folder would otherwise drop its images from the accuracy without a word.
    """
    from edgecls.runtime.bench.worker import dataset_images

    items, unknown = dataset_images(folder, labels)
    if not unknown:
        return None
    shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return (
        f"note: --data {folder}: {len(unknown)} folder(s) not named after a class of the bundle are left out of "
        f"the accuracy ({shown}); the classes are {', '.join(labels[:8])}{', ...' if len(labels) > 8 else ''}"
    )


def edgecls_home() -> Path:
    """The folder that holds the imported `edgecls` package (taken from sys.modules: it is imported already, as
    this module's parent; no import of it here)."""
    return Path(sys.modules[__name__.split(".")[0]].__file__).absolute().parent.parent


def run_worker(job: dict, python: str, timeout_s: float, module: str = "edgecls.runtime.bench.worker") -> dict:
    """Run one measurement in a fresh interpreter; its one-line error becomes ours."""
    what = job.get("artifact") or Path(str(job.get("model"))).name  # a Keras job names a model, not an artifact
    # The worker must import this very runtime (a checkout, or the one the device installed), wherever we run from:
    # the folder that holds the imported edgecls package (a checkout's root, or site-packages), never one inside it,
    # where its runtime/ or core/ would import as top-level packages.
    root = str(edgecls_home())
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    try:
        proc = subprocess.run(
            [python, "-m", module, json.dumps(job)], capture_output=True, text=True, timeout=timeout_s, env=env
        )
    except subprocess.TimeoutExpired:
        raise EdgeclsError(
            f"benchmarking {what} took longer than {timeout_s:.0f} s: lower --runs or --time-budget"
        ) from None
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error: ")]
        why = errors[-1][len("error: ") :] if errors else (lines[-1] if lines else f"exit status {proc.returncode}")
        raise EdgeclsError(f"benchmarking {what} failed: {why}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdgeclsError(f"benchmarking {what} printed no result: {proc.stdout[-200:]!r}") from None


def pool(static: dict, repeats: list) -> dict:
    """One record from the repeats of one artifact at one thread count."""
    invoke = [x for r in repeats for x in r["invoke_samples"]]
    record = dict(static)
    record.update(summarize(invoke))
    record["repeats"] = len(repeats)
    record["p50_repeats_ms"] = [summarize(r["invoke_samples"])["p50_ms"] for r in repeats]
    record["p50_spread_pct"] = spread_pct(record["p50_repeats_ms"])
    record["p99_runs"] = record.get("runs", 0)  # how many samples the p99 stands on (tables mark it below 100)
    record["throughput_ips"] = 1000.0 / record["mean_ms"] if record.get("mean_ms") else None
    macs = record.get("macs")
    record["gmacs_per_s"] = macs / (record["p50_ms"] / 1000) / 1e9 if macs and record.get("p50_ms") else None
    frame = {}
    for stage in STAGES:
        values = [x for r in repeats for x in r["frame_samples"].get(stage, [])]
        frame[stage] = summarize(values)
    record["frame"] = frame
    # The whole frame as issue 8 defines it: decode -> preprocess -> invoke -> top-k, timed end to end per frame
    # (a p99 of a sum is not the sum of the stages' p99s). "total" keeps the decode-excluded frame.
    record["frame_p50_ms"] = frame["frame"].get("p50_ms")
    record["frame_p90_ms"] = frame["frame"].get("p90_ms")
    record["frame_p99_ms"] = frame["frame"].get("p99_ms")
    record["frame_p50_repeats_ms"] = [summarize(r["frame_samples"]["frame"])["p50_ms"] for r in repeats]
    record["frame_throughput_fps"] = 1000.0 / frame["frame"]["mean_ms"] if frame["frame"].get("mean_ms") else None
    # Preprocess + quantize + top-k per frame against the engine alone; decode is the camera's or the file's cost.
    overhead = frame["overhead"].get("p50_ms")
    record["overhead_ms"] = overhead
    record["overhead_pct_of_invoke"] = (
        100.0 * overhead / record["p50_ms"] if overhead is not None and record.get("p50_ms") else None
    )
    for key in ("import_ms", "load_ms", "first_inference_ms", "warmup_runs", "warmup_ms"):
        values = sorted(r[key] for r in repeats if r.get(key) is not None)
        record[key] = values[len(values) // 2] if values else None
    record["settled"] = all(r.get("settled") for r in repeats)
    record["peak_rss_mb"] = max(r["peak_rss_mb"] for r in repeats)
    record["rss_before_load_mb"] = min(
        (r["rss_before_load_mb"] for r in repeats if r.get("rss_before_load_mb")), default=None
    )
    for key in ("backend", "backend_version", "provider"):
        record[key] = repeats[0].get(key)
    record["pids"] = [r.get("pid") for r in repeats]  # one fresh process per repeat, checkable
    record["engines_loaded"] = sorted({m for r in repeats for m in r.get("engines_loaded", [])})
    for key in ("accuracy", "accuracy_images", "unreadable_images", "skipped_folders"):
        if key in repeats[0]:
            record[key] = repeats[0][key]
    return record


def _frame_for(bundle: Bundle, options: BenchOptions, folder: Path) -> Path:
    if options.frame:
        frame = Path(options.frame)
        if not frame.is_file():
            raise EdgeclsError(f"--frame {frame} is not an image file")
        from edgecls.runtime.preprocess import load_image

        try:
            load_image(frame)  # a bad file is an error here, once, not in every worker
        except EdgeclsError as exc:
            raise EdgeclsError(f"--frame: {exc}") from None
        return frame.resolve()
    return frames.synthetic_frame(folder / "frame-640x480.jpg", gray=bundle.manifest.preprocess.color == "gray")


def run_bench(
    bundle_path,
    options: BenchOptions | None = None,
    progress: Callable[[str], None] | None = None,
    extra_jobs: Callable | None = None,
    notify: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark every selected artifact at every thread count; returns the JSON document (see FORMAT).

    `progress` hears what is being timed; `notify` (default: `progress`) hears notes the user must see.
    """
    options = options or BenchOptions()
    options.validate()
    say = progress or (lambda msg: None)
    bundle = load_bundle(bundle_path)
    artifacts = select_artifacts(bundle, options.artifacts)
    for artifact in artifacts:
        bundle.verify(artifact)  # a damaged bundle is refused before minutes of timing
    if options.data:
        note = data_note(options.data, bundle.labels)
        if note:
            (notify or say)(note)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgecls-bench-") as tmp:
        frame = _frame_for(bundle, options, Path(tmp))
        results = _time_artifacts(bundle, artifacts, options, frame, say)
        host = machine.describe()
        records = [Timed.of(a).record(t, host, results[(a.name, t)]) for a in artifacts for t in options.threads]
        if extra_jobs is not None:
            records += extra_jobs(bundle, options, frame, host, say)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "bundle": {
            "path": str(bundle_path),
            "labels": len(bundle.labels),
            "input": list(bundle.manifest.preprocess.shape),
            "source": bundle.manifest.source.get("model", {}),
        },
        # `artifacts`: the --artifacts selection (None: all), so --compare knows a missing artifact from one
        # not asked for.
        "settings": {
            "repeats": options.repeats,
            "runs": options.runs,
            "frame_runs": options.frame_runs or options.runs,
            "time_budget_s": options.budget_s,
            "max_warmup_s": options.max_warmup_s,
            "threads": options.threads,
            "artifacts": [a.name for a in artifacts] if options.artifacts else None,
            "frame": options.frame or "synthetic 640x480 JPEG",
            "data": options.data,
        },
        "machine": host,
        "records": records,
    }


def _time_artifacts(bundle: Bundle, artifacts: list, options: BenchOptions, frame: Path, say) -> dict:
    """{(artifact name, threads): [one worker result per repeat]}, repeats round-robin over the artifacts."""
    results: dict = {}
    for rep in range(options.repeats):
        for artifact in artifacts:
            for threads in options.threads:
                say(f"[{rep + 1}/{options.repeats}] {artifact.name} threads={threads or 'default'}")
                job = {
                    "bundle": str(Path(bundle.root).resolve()),
                    "artifact": artifact.name,
                    "format": artifact.format,
                    **options.job(threads, frame, rep),
                }
                results.setdefault((artifact.name, threads), []).append(
                    run_worker(job, options.python, options.timeout_s)
                )
    return results
