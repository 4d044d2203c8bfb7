"""The parent side: one fresh worker process per (repeat, row, threads), then one interleaved pass per thread
count, pooled into one record per row (an artifact in its default engine, or `artifact@engine` for an opt-in
engine such as OpenVINO).

Latency (p50) comes from the interleaved pass (`rounds.py`): every row loaded in one process and timed in rounds,
A, B, C, A, B, C..., the median of its round medians, so load from other processes falls on every row alike.
The fresh processes give what needs a process of its own (load, first inference, peak RSS, whole frame,
accuracy) and, with `rounds=0`, the latency too, as before: repeats round-robin over the rows, the spread of
their per-repeat medians saying how much one run can be trusted.
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
from edgecls.runtime.bench.stats import round_statistic, spread_pct, summarize
from edgecls.runtime.bundle import MANIFEST, Bundle, load_bundle, sha256_file
from edgecls.runtime.errors import EdgeclsError

FORMAT = "edgecls-bench/1"
# Each round of a row starts with one untimed call (rounds.interleave): the rows timed in between took the caches
ROUNDS_P50 = "median of interleaved round medians, each round's first call untimed (its warm-up)"
STAGES = ("decode", "preprocess", "invoke", "postprocess", "frame", "total", "overhead")


@dataclass
class BenchOptions:
    artifacts: list | None = None  # names; None: every artifact of the bundle
    threads: list = field(default_factory=lambda: [1])  # None in the list: the backend's default
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
    engines: list | None = None  # opt-in engines timed beside each artifact's default; None: every installed one
    rounds: int = 10  # of the interleaved pass (0: none; latency from the fresh processes as before)
    round_runs: int = 20  # invokes per row and round

    def validate(self) -> None:
        if self.repeats < 1 or self.runs < 1:
            raise EdgeclsError("--repeats and --runs must be at least 1")
        if self.rounds < 0 or self.round_runs < 1:
            raise EdgeclsError("--rounds must be at least 0 (0: no interleaved pass) and --round-runs at least 1")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgeclsError("--threads values must be at least 1")
        self.threads = list(dict.fromkeys(self.threads))  # 1,1 would time twice and pool both as one record
        if self.engines is not None:  # openvino,openvino: the same, for rows
            self.engines = list(dict.fromkeys(self.engines))

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
    engine: str | None = None  # an opt-in engine (the row is `artifact@engine`); None: the format's default
    sha256: str | None = None  # the artifact file's, from the manifest: which exact file was timed

    @classmethod
    def of(cls, artifact, engine: str | None = None) -> Timed:
        return cls(
            row_label(artifact.name, engine),
            artifact.file,
            artifact.format,
            artifact.precision,
            artifact.size_bytes,
            artifact.macs,
            artifact.accuracy,
            engine,
            artifact.sha256,
        )

    def record(self, threads, host: dict, repeats: list, interleaved: dict | None = None) -> dict:
        """Its record at one thread count: what it is, the machine it ran on, its repeats and rounds pooled."""
        static = {
            "artifact": self.artifact,
            "engine": self.engine,
            "file": self.file,
            "sha256": self.sha256,
            "format": self.format,
            "precision": self.precision,
            "threads": threads,
            "size_bytes": self.size_bytes,
            "macs": self.macs,
            "bundle_accuracy": self.bundle_accuracy,
            "machine": host,
        }
        return pool(static, repeats, interleaved)


def row_label(artifact: str, engine: str | None) -> str:
    """A row's name in records and tables: the artifact's, `artifact@engine` for an opt-in engine."""
    return f"{artifact}@{engine}" if engine else artifact


def bench_rows(artifacts: list, engines) -> list:
    """[(artifact, engine)]: each artifact in its default engine (None), then in each opt-in engine that runs its
    format and is installed (`engines`: those named only; None: all; an unknown name is an error)."""
    from edgecls.runtime.backends.registry import OPT_IN, available_backends

    opt_in = {cls.name: fmt for fmt, classes in OPT_IN.items() for cls in classes}
    unknown = [e for e in engines or () if e not in opt_in]
    if unknown:
        raise EdgeclsError(f"--engines {','.join(unknown)}: the engines to add are {', '.join(opt_in) or 'none'}")
    installed = available_backends()
    wanted = [e for e in (opt_in if engines is None else engines) if installed.get(e)]
    missing = [e for e in engines or () if not installed.get(e)]
    if missing:
        raise EdgeclsError(f"--engines {','.join(missing)}: not installed here (pip install 'edgecls[openvino]')")
    return [(a, e) for a in artifacts for e in (None, *(e for e in wanted if opt_in[e] == a.format))]


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
    # A Keras job names a model, not an artifact; the interleaved pass names rows
    what = (
        job.get("label")
        or job.get("artifact")
        or (Path(str(job["model"])).name if job.get("model") else "the interleaved pass")
    )
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
        raise EdgeclsError(f"benchmarking {what} failed: {_failure(proc)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise EdgeclsError(f"benchmarking {what} printed no result: {proc.stdout[-200:]!r}") from None


def _failure(proc: subprocess.CompletedProcess) -> str:
    """Why a worker failed: its own one-line error; else the signal that killed it (the OOM killer's SIGKILL
    leaves the engine's last log line, unrelated, at the end of stderr); else its last line or exit status."""
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    if errors:
        return errors[-1][len("error: ") :]
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode} (out of memory, or stopped by someone)"
    return lines[-1] if lines else f"exit status {proc.returncode}"


def interleaved_latency(round_samples: list) -> dict:
    """Invoke statistics of one row's interleaved rounds: p50 the median of the round medians
    (`stats.round_statistic`), with the round medians and their spread; p90/p99 (and mean, min, max) of the same
    number of samples from every round, so a round the time budget cut short (a slow one) weighs as much as the
    others, and never below the p50 (`p90_p99_method`)."""
    rounds = [r for r in round_samples if r]
    equal = min((len(r) for r in rounds), default=0)
    pooled = summarize([x for r in rounds for x in r[:equal]])
    by_round = round_statistic([summarize(r)["p50_ms"] for r in rounds])
    for key in ("p90_ms", "p99_ms"):  # almost always true already; a handful of samples may need it
        if key in pooled and "p50_ms" in by_round:
            pooled[key] = max(pooled[key], by_round["p50_ms"])
    return {
        **pooled,
        **by_round,
        "p50_method": ROUNDS_P50,
        "p90_p99_method": f"the first {equal} samples of every round pooled, at least the p50",
    }


def pool(static: dict, repeats: list, interleaved: dict | None = None) -> dict:
    """One record from the repeats of one row at one thread count, and its interleaved rounds if any."""
    invoke = [x for r in repeats for x in r["invoke_samples"]]
    record = dict(static)
    record.update(summarize(invoke))
    record["repeats"] = len(repeats)
    record["p50_repeats_ms"] = [summarize(r["invoke_samples"])["p50_ms"] for r in repeats]
    record["p50_spread_pct"] = spread_pct(record["p50_repeats_ms"])
    record["fresh_p50_ms"] = record.get("p50_ms")
    record["p50_method"] = "median of fresh processes' samples"
    if interleaved is not None:
        record.update(interleaved_latency(interleaved["round_samples_ms"]))
        record["round_samples_ms"] = interleaved["round_samples_ms"]  # raw, so a reader can check the medians
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
        rows = bench_rows(artifacts, options.engines)
        results, left_out = _time_artifacts(bundle, rows, options, frame, say)
        for gone in left_out:
            (notify or say)(f"note: {gone['row']} left out (an opt-in engine's row): {gone['why']}")
        rows = [(a, e) for a, e in rows if not any(g["row"] == row_label(a.name, e) for g in left_out)]
        rounds, schedules = _interleaved(bundle, rows, options, frame, say, notify or say)
        host = machine.describe()
        records = [
            Timed.of(a, e).record(t, host, results[(row_label(a.name, e), t)], rounds.get((row_label(a.name, e), t)))
            for a, e in rows
            for t in options.threads
        ]
        if extra_jobs is not None:
            records += extra_jobs(bundle, options, frame, host, say)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "bundle": {
            "path": str(bundle_path),
            # What `--artifact fastest` matches a bench to: this exact bundle, wherever it was copied.
            "manifest_sha256": sha256_file(Path(bundle.root) / MANIFEST),
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
            "engines": options.engines,
            "latency": latency_method(options, schedules),
        },
        "schedules": schedules,
        "left_out": left_out,  # rows of opt-in engines that failed: {"row", "threads", "why"}
        "machine": host,
        "records": records,
    }


def latency_method(options: BenchOptions, schedules: dict | None = None) -> dict:
    """How the records' p50 was obtained, written into the bench document beside the numbers; `schedules`: the
    interleaved passes that ran (a thread count missing there failed: its p50 is the fresh processes')."""
    if not options.rounds:
        return {"p50": "median of every timed invoke of the fresh processes", "spread": "p50_spread_pct"}
    failed = [t for t in options.threads if schedules is not None and str(t) not in schedules]
    return {
        **({"interleaved_failed_threads": failed} if failed else {}),
        "p50": "median of the round medians of an interleaved pass: every row loaded in one process per thread "
        "count and timed in rounds A, B, C, A, B, C... after each warmed up, each round of a row after one "
        "untimed call",
        "rounds": options.rounds,
        "runs_per_round": options.round_runs,
        "spread": "round_spread_pct = (max - min) / median of the round medians; round_iqr_ms their IQR",
        "fresh_processes": "load_ms, first_inference_ms, peak_rss_mb, frame, accuracy; their own p50: fresh_p50_ms",
    }


def _time_artifacts(bundle: Bundle, rows: list, options: BenchOptions, frame: Path, say) -> tuple[dict, list]:
    """({(row label, threads): [one worker result per repeat]}, [rows left out]), repeats round-robin over the rows.

    A row of an opt-in engine that fails (a model it cannot read, a broken install) is left out, with why, and
    the others are timed; a default engine's failure is the bench's."""
    results: dict = {}
    left_out: list = []
    for rep in range(options.repeats):
        for artifact, engine in rows:
            label = row_label(artifact.name, engine)
            if any(gone["row"] == label for gone in left_out):
                continue
            for threads in options.threads:
                say(f"[{rep + 1}/{options.repeats}] {label} threads={threads or 'default'}")
                job = {
                    "bundle": str(Path(bundle.root).resolve()),
                    "artifact": artifact.name,
                    "label": label,
                    "engine": engine,
                    "format": artifact.format,
                    **options.job(threads, frame, rep),
                }
                try:
                    results.setdefault((label, threads), []).append(run_worker(job, options.python, options.timeout_s))
                except EdgeclsError as exc:
                    if engine is None:
                        raise
                    left_out.append({"row": label, "threads": threads, "why": str(exc)})
                    break
    return results, left_out


def _interleaved(bundle: Bundle, rows: list, options: BenchOptions, frame: Path, say, note) -> tuple[dict, dict]:
    """({(row label, threads): {"round_samples_ms": [...]}}, {threads: the schedule that ran}): one process per
    thread count times every row in interleaved rounds (see `rounds.py`). A pass that fails (its process killed)
    leaves its thread count's p50 to the fresh processes, with a note, and keeps every result."""
    if not options.rounds:
        return {}, {}
    results, schedules = {}, {}
    for threads in options.threads:
        say(f"interleaved: {options.rounds} rounds of {len(rows)} rows, threads={threads or 'default'}")
        job = {
            "bundle": str(Path(bundle.root).resolve()),
            "rows": [{"label": row_label(a.name, e), "artifact": a.name, "engine": e} for a, e in rows],
            "threads": threads,
            "rounds": options.rounds,
            "round_runs": options.round_runs,
            "budget_s": options.budget_s,
            "max_warmup_s": options.max_warmup_s,
            "frame": str(frame),
        }
        try:
            done = run_worker(job, options.python, options.timeout_s, module="edgecls.runtime.bench.rounds")
        except EdgeclsError as exc:
            note(f"note: {exc}: the p50 at threads={threads or 'default'} is the fresh processes' (p50_method)")
            continue
        schedules[str(threads)] = done["schedule"]
        results.update({(label, threads): row for label, row in done["rows"].items()})
    return results, schedules
