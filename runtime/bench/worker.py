"""One artifact at one thread count, measured in a process that loads nothing else.

    python3 -m edgecls.runtime.bench.worker '{"bundle": ..., "artifact": ..., "threads": 1, ...}'

Prints one JSON object (raw samples included; the parent pools repeats). A fresh process per
measurement makes peak RSS mean "this artifact" and keeps one engine's thread pool or allocator
from slowing the next.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecls.runtime.bench.stats import timed_runs, warm_up


def _proc_status_mb(field: str) -> float | None:
    """A size from /proc/self/status (VmRSS, VmHWM) in MB, or None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Current resident set size of this process."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's own peak RSS. On Linux, VmHWM: ru_maxrss keeps the parent's peak across a vfork + exec
    (so a worker started by a 1 GB quickstart process reported 1 GB whatever it ran)."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


ENGINE_MODULES = ("ai_edge_litert", "tflite_runtime", "onnxruntime", "openvino", "tensorflow", "keras", "torch")


def engines_loaded() -> list:
    """The inference engines imported into this process: a tflite worker that loaded onnxruntime or TensorFlow
    would report their memory and start-up cost as its own."""
    return [name for name in ENGINE_MODULES if name in sys.modules]


def dataset_images(folder, labels) -> tuple[list, list]:
    """([(path, class index)], [folders that are not classes of the bundle]) of a class-per-folder dataset."""
    from edgecls.runtime.errors import DataError
    from edgecls.runtime.preprocess import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--data {folder} is not a folder: pass a folder with one sub-folder of images per class")
    index = {label: i for i, label in enumerate(labels)}
    items, unknown = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in index:
            unknown.append(sub.name)
            continue
        items += [
            (f, index[sub.name]) for f in sorted(sub.rglob("*")) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not items:
        raise DataError(
            f"--data {folder} has no images in folders named after the bundle's classes "
            f"({', '.join(labels[:5])}{', ...' if len(labels) > 5 else ''})"
        )
    return items, unknown


def accuracy(classify_file, folder, labels) -> dict:
    """Top-1 accuracy of `classify_file(path) -> label` on a class-per-folder dataset; unreadable images count apart."""
    from edgecls.runtime.errors import ImageDecodeError

    items, unknown = dataset_images(folder, labels)
    correct = failed = 0
    for path, truth in items:
        try:
            correct += classify_file(path) == labels[truth]
        except ImageDecodeError:
            failed += 1
    scored = len(items) - failed
    return {
        "accuracy": correct / scored if scored else None,
        "accuracy_images": scored,
        "unreadable_images": failed,
        "skipped_folders": unknown,
    }


def _engine_module(fmt: str, engine: str | None = None) -> tuple[str, str]:
    from edgecls.runtime.backends.registry import available_backends, backends_for

    installed = available_backends()
    for cls in backends_for(fmt, (engine,) if engine else None):
        if installed[cls.name]:
            return cls.module, cls.package
    return "", ""


@dataclass(frozen=True)
class EngineChoice:
    """What a Classifier reads from a profile to pick an engine and set it: `backends` in order, ORT's spinning."""

    backends: tuple = ()
    ort_allow_spinning: bool | None = None


def open_row(bundle: str, artifact: str, engine: str | None, threads, top_k: int = 5, allow_spinning=None):
    """A Classifier of `artifact` in `engine` (None: the format's default engine); allow_spinning: ONNX Runtime's
    idle threads spin (None: its default)."""
    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.errors import EdgeclsError

    profile = EngineChoice((engine,) if engine else (), allow_spinning)
    classifier = Classifier(bundle, artifact=artifact, profile=profile, threads=threads, top_k=top_k)
    if engine and classifier.backend_name != engine:  # it fell back to the default: not the row asked for
        raise EdgeclsError(
            f"{engine} could not load {artifact} here ({classifier.backend_name} did instead): "
            f"is {engine} installed whole? (`python -c 'import {engine}'`)"
        )
    return classifier


def import_engine(module: str, package: str) -> None:
    """Import the engine's module; a broken install (a missing shared library) is a one-line error naming it."""
    from edgecls.runtime.errors import EdgeclsError

    try:
        importlib.import_module(module)
    except ImportError as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise EdgeclsError(f"{package} is installed but cannot be imported ({why}): reinstall it") from None


def invoke_phases(run, job: dict) -> dict:
    """The engine alone on a ready input: its first call, warm-up until the latency settles, then timed calls."""
    t = time.perf_counter()
    run()
    first_ms = (time.perf_counter() - t) * 1000
    warm = warm_up(run, max_seconds=job.get("max_warmup_s", 10.0))
    return {"first_inference_ms": first_ms, **warm, "invoke_samples": timed_runs(run, job["runs"], job.get("budget_s"))}


def worker_record(timings: dict, engine: dict, rss_start: float | None, scored: dict | None) -> dict:
    """One worker's result: its `timings` (start-up, `invoke_phases`, frame samples), the `engine` that ran
    (backend, backend_version, provider), memory, its pid and, with --data, the `scored` accuracy."""
    record = {**timings, **engine, "rss_before_load_mb": rss_start, "pid": os.getpid(), **(scored or {})}
    record["peak_rss_mb"] = peak_rss_mb()
    record["engines_loaded"] = engines_loaded()
    return record


def measure(job: dict) -> dict:
    """Load, first inference, warm-up, timed invokes, timed whole frames, accuracy, RSS: one record."""
    from edgecls.runtime.bench.frame import frame_stages
    from edgecls.runtime.bench.machine import package_versions
    from edgecls.runtime.preprocess import load_image

    rss_start = rss_mb()
    module, package = _engine_module(job["format"], job.get("engine"))
    t = time.perf_counter()
    if module:
        import_engine(module, package)
    import_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    classifier = open_row(job["bundle"], job["artifact"], job.get("engine"), job.get("threads"), job.get("top_k", 5))
    load_ms = (time.perf_counter() - t) * 1000
    backend = classifier.session.backend

    # Invoke alone: the engine on an input already preprocessed and quantized (in the model's layout), as TFLite's
    # benchmark_model times it.
    batch = classifier.prepare(load_image(job["frame"]))[None]
    invoke = invoke_phases(lambda: backend.run(batch), job)
    frame = frame_stages(
        lambda image: classifier.classify(image, "rgb"),
        backend,
        Path(job["frame"]),
        job.get("frame_runs", job["runs"]),
        job.get("budget_s"),
    )
    engine = {
        "backend": backend.name,
        "backend_version": package_versions((package,)).get(package) if package else None,
        "provider": (getattr(backend, "providers", None) or ["CPU"])[0],
    }
    scored = None
    if job.get("data"):
        scored = accuracy(lambda p: classifier.classify_file(p).label, job["data"], classifier.labels)
    timings = {"import_ms": import_ms, "load_ms": load_ms, **invoke, "frame_samples": frame}
    return worker_record(timings, engine, rss_start, scored)


def serve_job(measure_job, argv=None) -> int:
    """A worker process's whole life: the job as JSON in argv[1], its record as JSON on stdout, errors in one line."""
    from edgecls.runtime.errors import EdgeclsError

    argv = sys.argv[1:] if argv is None else argv
    try:
        print(json.dumps(measure_job(json.loads(argv[0]))))
    except EdgeclsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return serve_job(measure, argv)


if __name__ == "__main__":
    sys.exit(main())
