"""The Keras baseline of `edgecls bench`: the source model's per-frame call, as users would ship it without us.

The bundle holds no Keras file; its manifest names the run it was converted from (`source.run`) and the
model's sha256, so the baseline is that run's model.keras when it is still the same file, or `--keras
MODEL.keras` when given. Timed in a fresh process per thread count (TensorFlow fixes its thread pools when
it starts) with the same warm-up, statistics and whole-frame split as the runtime's artifacts:
`model(x, training=False)` eagerly, one frame at a time.

    python -m edgecls.bench_keras JOB_JSON     (the worker; `keras_records` runs it)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import FP32

KERAS_ARTIFACT = "keras"


def tensorflow_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None and importlib.util.find_spec("keras") is not None


def source_model(bundle, explicit=None) -> tuple[Path | None, str]:
    """(model.keras path or None, why not): `explicit` if given, else the bundle's source run if unchanged."""
    from edgecls.runtime.bundle import sha256_file

    if explicit:
        path = Path(explicit)
        if not path.is_file() or path.suffix != ".keras":
            raise EdgeclsError(f"--keras {path} is not a .keras model file: pass the run's model.keras")
        return path, ""
    source = bundle.manifest.source or {}
    if not source.get("run"):
        return None, "the bundle names no source run: pass --keras MODEL.keras for the Keras baseline"
    path = Path(source["run"]) / "model.keras"
    if not path.is_file():
        return None, f"the source model {path} is not on this machine: pass --keras MODEL.keras for the Keras baseline"
    if source.get("model_sha256") and sha256_file(path) != source["model_sha256"]:
        return None, f"{path} changed since this bundle was converted: pass --keras MODEL.keras to time it anyway"
    return path, ""


class _KerasEngine:
    """The Keras model behind the frame probe's `run`, so its frame splits like an artifact's."""

    name = "keras"

    def __init__(self, model):
        self.model = model

    def run(self, batch):
        return self.model(batch, training=False).numpy()


def check_fits(model, name: str, spec, labels: list, head: str) -> None:
    """Refuse a model that cannot be the bundle's source: another input size or another number of classes.

    Without this a mismatch surfaces as an IndexError deep in top-k, after seconds of timing.
    """
    fix = "pass the model.keras of the run this bundle was converted from"
    expected = tuple(spec.shape)
    got = tuple(model.input_shape[1:]) if isinstance(model.input_shape, tuple) else None
    if got is None or len(got) != len(expected) or any(g is not None and g != e for g, e in zip(got, expected)):
        raise EdgeclsError(f"--keras {name} takes input {got}, the bundle feeds {expected}: {fix}")
    units = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    allowed = {len(labels)} | ({1} if head == "sigmoid" and len(labels) == 2 else set())
    if units not in allowed:
        raise EdgeclsError(f"--keras {name} outputs {units} classes, the bundle has {len(labels)} labels: {fix}")


def measure(job: dict) -> dict:
    """Load, first call, warm-up, timed calls, whole frames, accuracy, RSS of one Keras model: one worker result."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from edgecls.runtime.bench.frame import frame_stages
    from edgecls.runtime.bench.machine import package_versions
    from edgecls.runtime.bench.worker import accuracy, invoke_phases, rss_mb, worker_record
    from edgecls.runtime.preprocess import PreprocessSpec, load_image, preprocess

    rss_start = rss_mb()
    t = time.perf_counter()
    import keras
    import tensorflow as tf

    if job.get("threads"):  # before any op runs: TensorFlow fixes its pools on first use
        tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    model = keras.models.load_model(job["model"], compile=False)
    load_ms = (time.perf_counter() - t) * 1000
    spec, labels, head = PreprocessSpec.from_dict(job["preprocess"]), job["labels"], job.get("head", "softmax")
    check_fits(model, Path(job["model"]).name, spec, labels, head)
    engine = _KerasEngine(model)
    batch = preprocess(load_image(job["frame"]), spec)[None]
    invoke = invoke_phases(lambda: engine.run(batch), job)

    def classify(image):
        # The runtime's own probabilities and top-k, so the frame's last stage is the same work as an artifact's.
        from edgecls.runtime.session import to_probabilities

        probs = to_probabilities(engine.run(preprocess(image, spec)[None]), head, job.get("output", "probs"))[0]
        order = np.argsort(-probs, kind="stable")[: job.get("top_k", 5)]
        return [(labels[i], float(probs[i])) for i in order]

    frame = frame_stages(classify, engine, Path(job["frame"]), job.get("frame_runs", job["runs"]), job.get("budget_s"))
    engine_row = {
        "backend": "keras",
        "backend_version": package_versions(("tensorflow",)).get("tensorflow"),
        "provider": "CPU" if not tf.config.list_physical_devices("GPU") else "GPU",
    }
    scored = accuracy(lambda p: classify(load_image(p))[0][0], job["data"], labels) if job.get("data") else None
    timings = {"import_ms": import_ms, "load_ms": load_ms, **invoke, "frame_samples": frame}
    return worker_record(timings, engine_row, rss_start, scored)


def keras_records(model_path: Path, say=None):
    """An `extra_jobs` hook for `edgecls.runtime.bench.run_bench`: the Keras model at each thread count, pooled like
    artifacts."""
    from edgecls.runtime.bench.runner import Timed, run_worker

    def extra(bundle, options, frame, host, progress):
        results = {}
        for rep in range(options.repeats):
            for threads in options.threads:
                progress(f"[{rep + 1}/{options.repeats}] keras threads={threads or 'default'}")
                job = {
                    "model": str(model_path),
                    "preprocess": bundle.manifest.preprocess.to_dict(),
                    "artifact": KERAS_ARTIFACT,
                    "labels": bundle.labels,
                    "head": bundle.manifest.head,
                    "output": bundle.manifest.output,
                    **options.job(threads, frame, rep),
                }
                results.setdefault(threads, []).append(
                    run_worker(job, options.python, options.timeout_s, module="edgecls.bench_keras")
                )
        source = bundle.manifest.source or {}
        timed = Timed(
            KERAS_ARTIFACT,
            model_path.name,
            "keras",
            FP32,
            model_path.stat().st_size,
            source.get("macs"),
            source.get("accuracy"),
        )
        return [timed.record(t, host, results[t]) for t in options.threads]

    return extra


def main(argv=None) -> int:
    from edgecls.runtime.bench.worker import serve_job

    return serve_job(measure, argv)


if __name__ == "__main__":
    sys.exit(main())
