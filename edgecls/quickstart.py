"""`edgecls quickstart`: the whole chain on built-in data, in one folder, in a few minutes.

train -> convert (prune, int8, TFLite + ONNX, accuracy gate) -> bench -> flash into a local folder -> a
camera-like video of held-out test images through the daemon with its HTTP preview -> Grad-CAM and charts
-> a summary. Each step calls the API its own command calls; only the settings are chosen here (small
images, few epochs), so what a newcomer sees working is what they will use.

    OUT/quickstart.json   edgecls-quickstart/1: what ran and what it wrote (marks OUT as ours for --overwrite);
                          its status is running, complete, failed (with the error) or interrupted
    OUT/.quickstart.lock  flock(2) held for the whole run: one quickstart into OUT at a time
    OUT/summary.txt       the printed summary
    OUT/run/ bundle/ bench/ device/ explain/     each step's own product, written atomically by its API
    OUT/camera.avi  preview.jpg  accuracy.png
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgecls.core.progress import progress
from edgecls.runtime.atomic import _TEMP_FILE, check_output, write_bytes, write_json, write_text
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import ONNX_FP32, ONNX_INT8, TFLITE_FP32, TFLITE_INT8
from edgecls.runtime.lockfile import LockBusy, file_lock, holder

MARKER = "quickstart.json"
LOCK = ".quickstart.lock"
FORMAT = "edgecls-quickstart/1"

RUN, BUNDLE, BENCH, DEVICE, EXPLAIN = "run", "bundle", "bench", "device", "explain"
VIDEO, PREVIEW, ACCURACY_PNG, SUMMARY = "camera.avi", "preview.jpg", "accuracy.png", "summary.txt"
FILES = (MARKER, SUMMARY, VIDEO, PREVIEW, ACCURACY_PNG)  # written by write_bytes: never a folder or a link
CONTENTS = frozenset({*FILES, LOCK, RUN, BUNDLE, BENCH, DEVICE, EXPLAIN})
FORMATS = ",".join(f.name for f in (TFLITE_FP32, TFLITE_INT8, ONNX_FP32, ONNX_INT8))
PROFILE = "desktop-cpu"  # this machine is the "device": int8 LiteRT first, like a desktop without a GPU
DATASETS = ("digits", "shapes")
STEPS = 6
VIDEO_FPS = 10.0
VIDEO_HOLD = 5  # frames each test image stays in view: a slow camera pan over the cards
FRAME_SIDE = 240  # the video's frames are at least this wide, a whole multiple of the model's input


@dataclass(frozen=True)
class Plan:
    """The settings of one quickstart: small enough for minutes on two cores, good enough to pass the gates."""

    image_size: int
    epochs: int
    prune: str = "structured=0.25"
    prune_epochs: int = 2
    calibration_size: int = 100
    max_drop: float = 2.0  # accuracy points; the test split is small (a point is 3-4 digits images)
    max_prune_drop: float = 3.0
    bench_runs: int = 100
    bench_budget_s: float = 2.0
    keras_baseline: bool = True
    daemon_seconds: float = 5.0
    explain_images: int = 16


# --quick: fewer epochs, the rest shortened alike for both datasets.
QUICK = dict(
    prune_epochs=1,
    calibration_size=50,
    bench_runs=20,
    bench_budget_s=0.5,
    keras_baseline=False,
    daemon_seconds=3.0,
    explain_images=4,
)
PLANS = {
    ("digits", False): Plan(image_size=16, epochs=6),
    ("digits", True): Plan(image_size=16, epochs=3, **QUICK),
    ("shapes", False): Plan(image_size=32, epochs=10),
    ("shapes", True): Plan(image_size=32, epochs=4, **QUICK),
}


@dataclass
class QuickstartOptions:
    out: str = "quickstart"
    data: str = "digits"
    quick: bool = False
    overwrite: bool = False
    seed: int = 0


@dataclass
class QuickstartResult:
    out: Path
    summary: str
    record: dict  # what quickstart.json holds
    files: dict = field(default_factory=dict)  # what -> path, every file the summary names
    seconds: float = 0.0


def guard() -> dict:
    """For `quickstart --out`: only a quickstart folder of ours, holding only what quickstart writes, is reused."""
    return {"marker": MARKER, "contents": CONTENTS}


def quickstart(options: QuickstartOptions | None = None) -> QuickstartResult:
    """Run the chain into `options.out`; every refusal (a folder that is not ours) comes before any work."""
    options = options or QuickstartOptions()
    if options.data not in DATASETS:
        raise EdgeclsError(f"unknown quickstart dataset {options.data!r}: use {' or '.join(DATASETS)}")
    started = time.monotonic()
    out = Path(options.out)
    plan = PLANS[(options.data, options.quick)]
    _check_outputs(out, options)
    record = {
        "format": FORMAT,
        "status": "running",
        "data": options.data,
        "quick": options.quick,
        "seed": options.seed,
        "plan": asdict(plan),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": {},
    }
    with _exclusive(out):
        _remove_temp_files(out)  # under the lock: only a killed quickstart's
        write_json(out / MARKER, record)  # first: an interrupted quickstart leaves a folder --overwrite may replace
        try:
            return _chain(out, options, plan, record, started)
        except BaseException as exc:
            # The record must not say "running" for a quickstart that is gone; a kill -9 is the only exception.
            interrupted = isinstance(exc, KeyboardInterrupt)
            record.update(
                status="interrupted" if interrupted else "failed", seconds=round(time.monotonic() - started, 1)
            )
            if not interrupted:
                record["error"] = _error_line(exc)
            try:
                write_json(out / MARKER, record)
            except OSError:
                pass  # a full disk: the error being raised says more than this one
            raise


def _chain(out: Path, options: QuickstartOptions, plan: Plan, record: dict, started: float) -> QuickstartResult:
    """The six steps, each into its own part of OUT; `record` collects their timings."""

    def step(n: int, name: str, what: str):
        progress(f"[{n}/{STEPS}] {name}: {what}")
        return _Timer(record["steps"], name)

    size = f"{plan.image_size}x{plan.image_size}"
    with step(1, "train", f"{options.data} at {size}, {plan.epochs} epochs -> {out / RUN}"):
        trained = _train(out / RUN, options, plan)
    with step(2, "convert", f"{plan.prune}, {FORMATS.replace(',', ', ')}, accuracy gate -> {out / BUNDLE}"):
        converted = _convert(out / RUN, out / BUNDLE, options, plan)
    with step(
        3, "bench", f"latency of every artifact{' and the Keras model' if plan.keras_baseline else ''} -> {out / BENCH}"
    ):
        bench_doc = _bench(out / BUNDLE, out / BENCH, plan)
    with step(4, "flash", f"to the local folder {out / DEVICE} (profile {PROFILE})"):
        flashed = _flash(out / BUNDLE, out / DEVICE)
    held_out = _held_out(out / RUN, options.seed)
    with step(5, "daemon", f"{VIDEO} of held-out test images, {plan.daemon_seconds:g} s with the HTTP preview"):
        video_labels = _write_video(out / VIDEO, held_out, plan)
        daemon = _run_daemon(out / DEVICE / "current", out / VIDEO, video_labels, out / PREVIEW, plan)
    with step(6, "pictures", f"accuracy per format, Grad-CAM of {plan.explain_images} test images"):
        accuracy_chart(converted.manifest, out / ACCURACY_PNG)
        sheet = _explain(out / RUN, out / EXPLAIN, held_out[: plan.explain_images], options.overwrite)

    files = {
        "model": out / RUN / "model.keras",
        "bundle": out / BUNDLE / "manifest.json",
        "device": out / DEVICE / "current" / "manifest.json",
        "video": out / VIDEO,
        "training curves": out / RUN / "curves.png",
        "confusion matrix": out / RUN / "confusion_matrix.png",
        "latency chart": out / BENCH / "bench.png",
        "accuracy chart": out / ACCURACY_PNG,
        "grad-cam": sheet,
        "preview": out / PREVIEW,
        "bench table": out / BENCH / "bench.md",
        "verification": out / BUNDLE / "verification.txt",
        "summary": out / SUMMARY,
        "record": out / MARKER,
    }
    seconds = time.monotonic() - started
    record.update(
        status="complete",
        seconds=round(seconds, 1),
        test_accuracy=trained.metrics["test_accuracy"],
        accuracy=_accuracy_rows(converted.manifest),
        latency=[_latency_row(r) for r in bench_doc["records"]],
        flash={"result": flashed.result, "slot": flashed.slot, "smoke": flashed.smoke},
        daemon={k: v for k, v in daemon.items() if k != "health"},
        files={k: str(Path(v).relative_to(out)) for k, v in files.items()},
    )
    summary = format_summary(out, options, plan, converted, bench_doc, flashed, daemon, files, seconds)
    write_text(out / SUMMARY, summary + "\n")
    write_json(out / MARKER, record)
    return QuickstartResult(out, summary, record, files, seconds)


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, EdgeclsError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    return (text.splitlines() or [type(exc).__name__])[0]


@contextmanager
def _exclusive(out: Path):
    """Create OUT and hold its lock for the whole run: a second quickstart into OUT refuses instead of replacing
    the products the first is writing.

    flock(2) on OUT/.quickstart.lock (runtime/lockfile.py), as the device folder's `.lock`: the kernel releases
    it when its holder dies, so a killed quickstart never blocks the next."""
    with ExitStack() as held:
        try:
            out.mkdir(parents=True, exist_ok=True)
            # 2 s: another quickstart's `_holder` holds it shared for a moment
            held.enter_context(file_lock(out / LOCK, timeout=2.0, what=""))
        except LockBusy as busy:
            _refuse_in_use(out, busy.holder)
        except OSError as exc:
            raise EdgeclsError(
                f"cannot write {out.absolute()} ({exc.strerror or exc}): run from a folder you can write, or pass "
                f"--out with one (e.g. --out ~/edgecls-quickstart)"
            ) from None
        yield


def _holder(out: Path) -> str | None:
    """Who holds OUT's lock (the line its holder wrote), or None; creates and changes nothing."""
    return holder(out / LOCK)


def _refuse_in_use(out: Path, holder: str) -> None:
    who = holder.strip() or "another process"
    pid = re.match(r"pid (\d+)", who)
    stop = f" (kill {pid[1]})" if pid else ""
    raise EdgeclsError(
        f"output {out} is in use by another quickstart ({who}): wait for it to finish or stop it{stop}, "
        f"or choose another --out"
    )


def _leftovers_only(out: Path) -> bool:
    """OUT holds only what a quickstart killed before its first record leaves (its lock, the record's temp file):
    nothing of value, so OUT counts as empty, as check_output counts an empty folder."""
    if out.is_symlink() or not out.is_dir():
        return False
    entries = list(out.iterdir())
    return bool(entries) and all(
        entry.is_file()
        and not entry.is_symlink()
        and (entry.name == LOCK or ((m := _TEMP_FILE.match(entry.name)) is not None and m["name"] == MARKER))
        for entry in entries
    )


def _remove_temp_files(out: Path) -> None:
    """write_bytes' temp files of OUT's own files: under the lock, only a killed quickstart's (check_output
    tolerates them in a folder of ours; here they go)."""
    for entry in out.iterdir():
        m = _TEMP_FILE.match(entry.name)
        if m and m["name"] in FILES and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)


class _Timer:
    def __init__(self, steps: dict, name: str):
        self.steps, self.name = steps, name

    def __enter__(self):
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.steps[self.name] = round(time.monotonic() - self.started, 1)
        return False


def _check_outputs(out: Path, options: QuickstartOptions) -> None:
    """OUT and every product inside it, checked before minutes of work: each step refuses what its command refuses."""
    from edgecls import bench_report, explain
    from edgecls.core.datasets.builtin import cache_root
    from edgecls.core.outputs import RUN_CONTENTS, bundle_contents
    from edgecls.runtime.bundle import MANIFEST

    holder = _holder(out)
    if holder is not None:
        _refuse_in_use(out, holder)
    if not _leftovers_only(out):
        check_output(out, options.overwrite, protect={"the built-in dataset cache": cache_root()}, **guard())
    if not out.is_dir():
        return
    for name in FILES:
        path = out / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise EdgeclsError(
                f"output {path} is {'a link' if path.is_symlink() else 'a folder'} that quickstart did not write "
                f"(it writes a file there): move it out of {out} or choose another --out"
            )
    check_output(out / RUN, options.overwrite, marker="metadata.json", contents=RUN_CONTENTS)
    check_output(out / BUNDLE, options.overwrite, marker=MANIFEST, contents=bundle_contents)
    check_output(out / EXPLAIN, options.overwrite, marker=explain.MANIFEST, contents=explain._contents)  # explain_run's
    bench_report.check_out_dir(out / BENCH)
    if (out / DEVICE).exists():
        from edgecls.devices.targets import LocalTarget

        LocalTarget(out / DEVICE).check_root()


def _train(run_dir: Path, options: QuickstartOptions, plan: Plan):
    from edgecls.train import TrainConfig, train

    return train(
        TrainConfig(
            data=options.data,
            out=str(run_dir),
            image_size=plan.image_size,
            epochs=plan.epochs,
            seed=options.seed,
            overwrite=options.overwrite,
            verbose=2,
        )
    )


def _convert(run_dir: Path, bundle_dir: Path, options: QuickstartOptions, plan: Plan):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    return convert(
        run_dir,
        bundle_dir,
        ConvertOptions(
            formats=parse_formats(FORMATS),
            prune=plan.prune,
            prune_epochs=plan.prune_epochs,
            max_prune_drop=plan.max_prune_drop,
            calibration_size=plan.calibration_size,
            max_drop=plan.max_drop,
            overwrite=options.overwrite,
            seed=options.seed,
            temp_in_stage=True,  # quickstart owns its process: TF's temp files go with the stage if killed
        ),
    )


def _bench(bundle_dir: Path, bench_dir: Path, plan: Plan) -> dict:
    from edgecls import bench_keras, bench_report
    from edgecls.runtime.bench.runner import BenchOptions, run_bench
    from edgecls.runtime.bundle import load_bundle

    extra = None
    if plan.keras_baseline:
        model, why = bench_keras.source_model(load_bundle(bundle_dir))
        if model is None:
            progress(f"note: no Keras baseline: {why}")
        else:
            extra = bench_keras.keras_records(model)
    options = BenchOptions(threads=[1], repeats=1, runs=plan.bench_runs, budget_s=plan.bench_budget_s, max_warmup_s=1.0)
    doc = run_bench(bundle_dir, options, progress=lambda m: progress(f"    {m}"), extra_jobs=extra)
    bench_report.write_outputs(doc, out_dir=bench_dir)
    return doc


def _flash(bundle_dir: Path, device_dir: Path):
    from edgecls.devices.flash import FlashOptions, flash
    from edgecls.devices.profiles import load_profile

    [result] = flash(
        bundle_dir, [str(device_dir)], FlashOptions(profile=load_profile(PROFILE), say=lambda m: progress(f"    {m}"))
    )
    if not result.ok:
        raise EdgeclsError(f"flashing {device_dir} {result.result}: {result.reason}")
    return result


def _held_out(run_dir: Path, seed: int) -> list:
    """The run's own test images (never trained on), classes in turn so any prefix shows every class."""
    from edgecls.core.rundata import run_dataset
    from edgecls.core.rundir import open_run

    run = open_run(run_dir)
    samples = list(run_dataset(run, names=("test",)).splits.get("test") or [])
    if not samples:
        raise EdgeclsError(f"{run_dir} has no test images to show the daemon: train with a test split")
    random.Random(seed).shuffle(samples)
    by_class = [[s for s in samples if s.label == c] for c in range(len(run.labels))]
    ordered = [group[i] for i in range(max(map(len, by_class))) for group in by_class if i < len(group)]
    return [(s.path, run.labels[s.label]) for s in ordered]


def _write_video(path: Path, held_out: list, plan: Plan) -> list:
    """An MJPG AVI that looks like a camera pointed at the test images one after another; returns each frame's label.

    Frames are whole multiples of the model's input, so the daemon's resize gives back what training saw.
    Long enough to outlast the daemon's run: frames it cannot keep up with are dropped, as from a camera.
    """
    import cv2

    side = plan.image_size * math.ceil(FRAME_SIDE / plan.image_size)
    count = math.ceil((plan.daemon_seconds + 3) * VIDEO_FPS / VIDEO_HOLD)
    shown = [held_out[i % len(held_out)] for i in range(count)]
    labels = []
    with tempfile.TemporaryDirectory(prefix="edgecls-quickstart-") as tmp:
        staged = Path(tmp) / path.name  # OpenCV picks the container by the file's suffix: no temp suffix here
        writer = cv2.VideoWriter(str(staged), cv2.VideoWriter_fourcc(*"MJPG"), VIDEO_FPS, (side, side))
        if not writer.isOpened():
            raise EdgeclsError(
                "OpenCV cannot write an MJPG video here: install opencv-python (not -headless builds without video I/O)"
            )
        try:
            for image_path, label in shown:
                image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
                if image is None:
                    raise EdgeclsError(f"cannot read test image {image_path}: the dataset cache is damaged, delete it")
                frame = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
                for _ in range(VIDEO_HOLD):
                    writer.write(frame)
                    labels.append(label)
        finally:
            writer.release()
        write_bytes(path, staged.read_bytes())
    return labels


class _Results:
    """A daemon sink that keeps each classified frame's index and label (the daemon's own sinks write them out)."""

    def __init__(self):
        self.results = []

    def write(self, result: dict) -> None:
        self.results.append((result["frame"], result["top1"]))

    def close(self) -> None:
        pass


def _run_daemon(bundle: Path, video: Path, labels: list, preview: Path, plan: Plan) -> dict:
    """The daemon on the flashed `current`, as a device runs it; its HTTP side read once, then stopped."""
    from edgecls.devices.profiles import load_profile
    from edgecls.runtime.daemon import Daemon

    sink = _Results()
    daemon = Daemon(bundle, [str(video)], profile=load_profile(PROFILE), threads=1, port=0, sinks=[sink])
    started = time.monotonic()
    daemon.start()
    try:
        progress(f"    daemon serving the preview on {daemon.url}")
        while time.monotonic() - started < plan.daemon_seconds or not sink.results:
            if time.monotonic() - started > plan.daemon_seconds + 30:
                _, health = daemon.health()
                reason = next((s["reason"] for s in health["sources"].values() if s.get("reason")), "no reason given")
                raise EdgeclsError(f"the daemon classified no frame of {video} in 30 s ({reason})")
            time.sleep(0.1)
        status, health = _get(daemon.url + "/healthz")
        health = json.loads(health)
        metrics = _frames_processed(_get(daemon.url + "/metrics")[1].decode())
        page_ok = _get(daemon.url + "/")[0] == 200
        snapshot = _first_frame(daemon.url + "/stream/0")
        seconds = time.monotonic() - started
    finally:
        daemon.stop()
    write_bytes(preview, snapshot)
    results = list(sink.results)
    agree = sum(labels[frame] == top1 for frame, top1 in results if frame < len(labels))
    return {
        "classified": len(results),
        "agree": agree,
        "seconds": round(seconds, 1),
        "healthz": status,
        "status": health.get("status"),
        "frames_processed_total": metrics,
        "preview_page": page_ok,
        "artifact": daemon.classifier.artifact.name,
        "health": health,
    }


def _get(url: str) -> tuple:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 from /healthz is an answer
        return exc.code, exc.read()


def _frames_processed(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "edgecls_frames_processed_total"
    )


def _first_frame(url: str) -> bytes:
    """The first JPEG of the preview's MJPEG stream: what a browser on the preview page shows."""
    with urllib.request.urlopen(url, timeout=10) as stream:
        length = None
        while True:
            line = stream.readline()
            if not line:
                raise EdgeclsError(f"the preview stream {url} ended before its first frame")
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif not line.strip() and length is not None:
                return stream.read(length)


def _explain(run_dir: Path, out: Path, held_out: list, overwrite: bool) -> Path:
    from edgecls.explain import explain_run

    truths = {str(p): label for p, label in held_out}  # the captions say "true → predicted (p)"
    result = explain_run(run_dir, [p for p, _ in held_out], out, overwrite=overwrite, truths=truths)
    return out / result.sheets[0] if result.sheets else out / result.explanations[0].png


def _accuracy_rows(manifest: dict) -> list:
    source = manifest.get("source", {})
    rows = [{"name": "keras", "accuracy": source.get("accuracy")}]
    if manifest.get("pruning"):
        rows.append({"name": "keras pruned", "accuracy": manifest.get("reference_accuracy")})
    return rows + [
        {"name": a["name"], "accuracy": a["accuracy"], "size_bytes": a["size_bytes"]} for a in manifest["artifacts"]
    ]


def accuracy_chart(manifest: dict, path) -> None:
    """`accuracy_figure` as a PNG at `path`, written atomically."""
    import matplotlib.pyplot as plt

    fig = accuracy_figure(manifest)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def accuracy_figure(manifest: dict):
    """Held-out accuracy of the Keras model (before and after pruning) and of each artifact, as bars on an axis
    from 0, coloured as in the latency chart, with a legend. A matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from edgecls.bench_report import BAR_COLOURS, KERAS_BAR

    rows = _accuracy_rows(manifest)
    names, values = [r["name"] for r in rows], [r["accuracy"] or 0.0 for r in rows]
    kinds = [
        KERAS_BAR if n.startswith(KERAS_BAR) else next((k for k in BAR_COLOURS if n.endswith(k)), "") for n in names
    ]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.7))
    bars = ax.barh(range(len(rows)), values, color=[BAR_COLOURS.get(k, "tab:blue") for k in kinds])
    ax.legend(  # the same colours as the latency chart's
        handles=[Patch(color=c, label=k) for k, c in BAR_COLOURS.items() if k in kinds],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in values], label_type="center", color="white", fontsize=9)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)  # from 0: a zoomed axis makes a drop of 0.3 points look large; the labels give the digits
    ax.set_xlabel(f"accuracy on {manifest.get('source', {}).get('test_images', '?')} held-out test images")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("accuracy per format (the gate: each artifact against the pruned Keras model)", fontsize=9, pad=22)
    return fig


def _latency_row(record: dict) -> dict:
    return {
        k: record.get(k) for k in ("artifact", "threads", "p50_ms", "p90_ms", "frame_p50_ms", "load_ms", "size_bytes")
    }


def _load(machine: dict) -> str:
    load = machine.get("load_average")
    return f"{load[0]:.1f}" if isinstance(load, (list, tuple)) and load else "?"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def latency_table(doc: dict, pruned: bool = False) -> str:
    """The few columns a newcomer reads first; bench/bench.md has them all. The Keras baseline is the run's
    model as trained: with `pruned`, the artifacts are smaller than it."""
    header = ("artifact", "p50 ms", "p90 ms", "frame p50", "load ms", "MB")
    body = [
        (
            r["artifact"] + (" (unpruned)" if r["artifact"] == "keras" and pruned else ""),
            *(_ms(r.get(k)) for k in ("p50_ms", "p90_ms", "frame_p50_ms", "load_ms")),
            f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") else "-",
        )
        for r in doc["records"]
    ]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in (header, *body)
    )


def format_summary(
    out: Path, options, plan: Plan, converted, bench_doc: dict, flashed, daemon: dict, files: dict, seconds: float
) -> str:
    manifest = converted.manifest
    source, pruning = manifest.get("source", {}), manifest.get("pruning") or {}
    shape = "x".join(map(str, bench_doc["bundle"]["input"]))
    minutes, secs = divmod(round(seconds), 60)
    machine = bench_doc.get("machine", {})
    rel = {k: str(Path(v).relative_to(out)) for k, v in files.items()}
    pruned = (
        (
            f"; pruned {pruning.get('params_before', 0):,} -> {pruning.get('params_after', 0):,} parameters, "
            f"accuracy {source.get('accuracy', 0):.4f} before"
        )
        if pruning
        else ""
    )
    smoke = flashed.smoke or {}
    lines = [
        f"edgecls quickstart: {options.data}, {len(manifest['labels'])} classes, input {shape}, done in "
        f"{minutes}m{secs:02d}s{' (--quick)' if options.quick else ''}",
        "",
        f"accuracy on {source.get('test_images', '?')} held-out test images (keras: the pruned model{pruned})",
        converted.table,
        "",
        f"latency per image in ms, 1 thread, on this machine ({machine.get('cpu')}, {machine.get('cores')} cores, "
        f"load {_load(machine)}); every column: {out / BENCH / 'bench.md'}",
        latency_table(bench_doc, pruned=bool(pruning)),
        "",
        f"flash:   {smoke.get('artifact', '?')} installed in {out / DEVICE} (profile {PROFILE}): current -> "
        f"releases/{flashed.slot}, smoke test {smoke.get('correct', '?')}/{smoke.get('checks', '?')} check images "
        "right",
        f"daemon:  {daemon['classified']} frames of {VIDEO} classified in {daemon['seconds']:g} s with "
        f"{daemon['artifact']}, {daemon['agree']} of them as the test image shown; /healthz {daemon['healthz']} "
        f"{daemon['status']}, /metrics edgecls_frames_processed_total {daemon['frames_processed_total']:g} when read",
        "",
        f"written to {out}/",
        f"  model     {rel['model']}  {rel['bundle']}  {rel['device']}  {rel['video']}",
        f"  pictures  {rel['training curves']}  {rel['confusion matrix']}  {rel['latency chart']}  "
        f"{rel['accuracy chart']}  {rel['grad-cam']}  {rel['preview']}",
        f"  details   {rel['summary']}  {rel['record']}  {rel['bench table']}  {rel['verification']}",
        f"next: edgecls run {out / DEVICE / 'current'} --source 0 --port 8080   (your camera; preview on "
        f"http://127.0.0.1:8080)",
    ]
    return "\n".join(lines)
