"""One trial of `edgecls search`, in stages, each kept on disk before the next starts.

count MACs -> ask the latency model (fitted to the device's measurements so far) -> pruned: stop, nothing
trained -> train (short, early-stopped, the search's seed and split) -> convert to the artifact the device
runs (int8, through the accuracy gate) -> measure on the device -> meets or over the budget.

OUT/trials/NNNN/trial.json is rewritten atomically after every stage, and a stage whose product is on disk
is never run again: a trained run (train writes it atomically: it is there whole or not at all) goes
straight to convert, a bundle straight to the device, a saved measurement straight to the verdict.
`stages.log` gets one line when training, conversion and measurement start and one when each ends (pid, host,
time): the proof that no candidate is trained, converted or measured twice across kills.

A trial being run keeps `heartbeat` fresh (a thread touches it every BEAT_S); a trial.json without a status whose
heartbeat went stale (its process is gone, or on another host silent for `STALE_S`) is adopted by the next
worker or resumed search, which carries on from its last finished stage. STALE_S (180 s) comfortably exceeds
NFS's default attribute cache (acregmax 60 s) plus BEAT_S: a live worker on another host, whose touches this
host may see up to a minute late, never looks stale.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgecls.core.progress import progress as say
from edgecls.runtime.atomic import pid_alive, write_json
from edgecls.runtime.errors import EdgeclsError
from edgecls.search import space
from edgecls.search.types import FAILED, GATE_FAILED, MEETS, OVER_BUDGET, PRUNED, Budget, Trial

TRIALS_DIR = "trials"
TRIAL_JSON, STAGES_LOG, HEARTBEAT = "trial.json", "stages.log", "heartbeat"
RUN, BUNDLE = "run", "bundle"
BEAT_S, STALE_S = 5.0, 180.0
INT8_ARTIFACTS = ("tflite-int8", "onnx-int8")


@dataclass
class TrialContext:
    """What every trial of one search shares. `lab` is a DeviceLab; `artifact` the device's pick, once a bundle
    told it (None: the profile's preferred int8 artifact is converted, and the lab asked which it runs)."""

    data: str
    budget: Budget
    lab: object
    data_color: str
    num_classes: int
    epochs: int
    patience: int
    seed: int
    batch_size: int
    max_drop: float
    calibration_size: int
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    artifact: str | None = None
    on_artifact: object = None  # called with the device's artifact the first time a bundle tells it
    progress: object = say


def folder_of(out: Path, number: int) -> Path:
    return Path(out) / TRIALS_DIR / f"{number:04d}"


def save(folder: Path, trial: Trial, **extra) -> None:
    """trial.json, atomically, keeping the keys other than Trial's (owner, optuna's number)."""
    path = folder / TRIAL_JSON
    kept = {}
    if path.is_file():
        kept = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in trial.to_dict()}
    write_json(path, {**kept, **extra, **trial.to_dict()})


def load(folder: Path) -> tuple:
    """(Trial, the whole trial.json dict)."""
    data = json.loads((folder / TRIAL_JSON).read_text(encoding="utf-8"))
    return Trial.from_dict(data), data


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def is_stale(folder: Path, data: dict) -> bool:
    """An unfinished trial nobody runs: its process is gone (this host) or its heartbeat is old (any host)."""
    if data.get("status"):
        return False
    who = data.get("owner") or {}
    if who.get("host") == socket.gethostname() and not pid_alive(int(who.get("pid", 0))):
        return True  # else its heartbeat decides (a pid reused by another process keeps no heartbeat fresh)
    try:
        return time.time() - (folder / HEARTBEAT).stat().st_mtime > STALE_S
    except FileNotFoundError:
        return time.time() - float(who.get("since", 0)) > STALE_S


class Heartbeat:
    """Touch `folder/heartbeat` every BEAT_S seconds while the trial runs (a context manager)."""

    def __init__(self, folder: Path):
        self.path, self.stop = Path(folder) / HEARTBEAT, threading.Event()
        self.thread = threading.Thread(target=self._beat, name="search-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            self.path.touch()
            if self.stop.wait(BEAT_S):
                return

    def __enter__(self):
        self.path.touch()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _log(folder: Path, event: str) -> None:
    """One line in stages.log (appended: a log, not a product)."""
    line = json.dumps({"event": event, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
    with open(folder / STAGES_LOG, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def channels_for(model: str, data_color: str) -> tuple:
    """(color, channels) a candidate trains with: the data's own, except that the backbones need RGB."""
    color = data_color if model == "simple" else "rgb"
    return color, 1 if color == "gray" else 3


def run_trial(trial: Trial, folder: Path, ctx: TrialContext, finished: list) -> Trial:
    """Take `trial` from its last finished stage to a status; `finished`: the search's finished trials (the
    latency model is fitted to them). A stage that fails for this candidate only ends the trial with its
    line; an EdgeclsError that every trial would meet (bad data) is raised."""
    folder = Path(folder)
    with Heartbeat(folder):
        if not trial.candidate.macs:
            try:
                trial.candidate = space.count(
                    trial.candidate, channels_for(trial.candidate.model, ctx.data_color)[1], ctx.num_classes
                )
            except EdgeclsError as exc:
                return _end(folder, trial, FAILED, f"refused by the model: {exc}")
            save(folder, trial)
        run_dir = folder / RUN
        if not (run_dir / "metadata.json").is_file():
            if not _plausible(trial, folder, ctx, finished):
                return trial
            if not _train(trial, folder, ctx):
                return trial
        elif trial.run_dir is None:  # killed between train's rename and the save
            _read_run(trial, run_dir)
            save(folder, trial)
        if not (folder / BUNDLE / "manifest.json").is_file() and not _convert(trial, folder, ctx):
            return trial
        return _measure(trial, folder, ctx)


def _end(folder: Path, trial: Trial, status: str, reason: str) -> Trial:
    trial.status, trial.reason = status, " ".join(str(reason).split())[:400]
    save(folder, trial)
    return trial


def _plausible(trial: Trial, folder: Path, ctx: TrialContext, finished: list) -> bool:
    from edgecls.search.latency import LatencyModel

    model = LatencyModel.from_trials(list(finished))
    plausible, predicted, reason = model.decide(trial.candidate, ctx.budget)
    trial.predicted_ms = None if predicted is None else float(predicted)
    if not plausible:
        _end(folder, trial, PRUNED, reason)
        return False
    save(folder, trial)
    return True


def train_config(trial: Trial, folder: Path, ctx: TrialContext):
    from edgecls.core.augment import AugmentSpec
    from edgecls.train import TrainConfig

    c = trial.candidate
    return TrainConfig(
        data=ctx.data,
        out=str(folder / RUN),
        model=c.model,
        model_options=space.model_options(c),
        image_size=c.image_size,
        color=channels_for(c.model, ctx.data_color)[0],
        resize=c.resize,
        epochs=ctx.epochs,
        patience=ctx.patience,
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        val_fraction=ctx.val_fraction,
        test_fraction=ctx.test_fraction,
        augment=AugmentSpec.off(),
        workers=1,
        verbose=0,
    )


def _train(trial: Trial, folder: Path, ctx: TrialContext) -> bool:
    """Train the candidate into folder/run; False when the trial ended here (failed)."""
    import keras

    from edgecls.runtime.errors import DataError
    from edgecls.train import train

    started = time.perf_counter()
    _log(folder, "train started")
    try:
        train(train_config(trial, folder, ctx))
    except DataError:
        raise  # the data: every trial would fail the same way
    except EdgeclsError as exc:
        _end(folder, trial, FAILED, f"training refused: {exc}")
        return False
    except Exception as exc:  # noqa: BLE001 - one candidate failing (out of memory, NaN) is a result of the search
        _end(folder, trial, FAILED, f"training failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
        return False
    finally:
        keras.backend.clear_session()
    _log(folder, "train done")
    trial.train_seconds = round(time.perf_counter() - started, 2)
    _read_run(trial, folder / RUN)
    save(folder, trial)
    return True


def _read_run(trial: Trial, run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    trial.run_dir = str(run_dir)
    trial.val_accuracy = metrics.get("val_accuracy")


def _convert(trial: Trial, folder: Path, ctx: TrialContext) -> bool:
    """Convert the run to the device's artifact through the gate into folder/bundle; False when it ended here."""
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import AccuracyGateError, ConvertOptions, convert

    names = [ctx.artifact or preferred_int8(ctx.lab)]
    options = ConvertOptions(
        formats=[FORMATS[n] for n in names],
        max_drop=ctx.max_drop,
        calibration_size=ctx.calibration_size,
        seed=ctx.seed,
        qat="never",  # a candidate that loses accuracy in int8 is a result, not something to repair here
        workers=1,
    )
    started = time.perf_counter()
    _log(folder, "convert started")
    try:
        convert(folder / RUN, folder / BUNDLE, options)
    except AccuracyGateError as exc:
        _end(folder, trial, GATE_FAILED, str(exc))
        return False
    except EdgeclsError as exc:
        _end(folder, trial, FAILED, f"convert failed: {exc}")
        return False
    _log(folder, "convert done")
    trial.convert_seconds = round(time.perf_counter() - started, 2)
    trial.bundle_dir = str(folder / BUNDLE)
    save(folder, trial)
    return True


def preferred_int8(lab) -> str:
    """The int8 artifact the device's profile prefers (before any bundle exists to ask `lab.artifact_for`):
    converting one artifact, not every int8 one, also keeps a format the device never runs out of the gate."""
    preference = [a for a in getattr(getattr(lab, "profile", None), "artifacts", ()) if a in INT8_ARTIFACTS]
    return preference[0] if preference else INT8_ARTIFACTS[0]


def _measure(trial: Trial, folder: Path, ctx: TrialContext) -> Trial:
    bundle = folder / BUNDLE
    trial.bundle_dir = str(bundle)
    if ctx.artifact is None:
        ctx.artifact = ctx.lab.artifact_for(str(bundle))
        if ctx.on_artifact:
            ctx.on_artifact(ctx.artifact)
    if trial.measurement is None:
        _log(folder, "measure started")
        try:
            trial.measurement = ctx.lab.measure(str(bundle))
        except EdgeclsError as exc:
            if _device_failed(ctx.lab, exc):
                raise  # every trial would meet it: the search stops, and a resume measures this one again
            return _end(folder, trial, FAILED, f"measurement failed: {exc}")
        _log(folder, "measure done")
        save(folder, trial)
    trial.test_accuracy = _artifact_accuracy(bundle, trial.measurement.artifact)
    status, reason = judge(trial, ctx.budget)
    return _end(folder, trial, status, reason)


def _device_failed(lab, exc: EdgeclsError) -> bool:
    """Whether a failed measurement was the device's (lock lost, unreachable), not this bundle's (a bench worker
    out of memory, an artifact the runtime refuses): the device is asked to describe itself again."""
    if "measurement lock" in str(exc):
        return True
    try:
        lab._probe_machine()
    except Exception:  # noqa: BLE001 - whatever keeps the device from answering is the device's failure
        return True
    return False


def _artifact_accuracy(bundle: Path, artifact: str) -> float | None:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return next((a.get("accuracy") for a in manifest.get("artifacts", []) if a.get("name") == artifact), None)


def judge(trial: Trial, budget: Budget) -> tuple:
    """(status, one line) of a measured trial against every limit of the budget, as the report chooses: a limit
    whose figure was not measured (RAM, size) is missed."""
    from edgecls.search.report import misses

    over = misses(trial, budget)
    if over:
        return OVER_BUDGET, "over budget: " + ", ".join(over)
    return MEETS, f"meets {budget.latency_ms:g} ms"


def line(trial: Trial, label, total: int | None = None) -> str:
    """The trial's progress line, from what it reached; `label` says which trial (`#2 (3/12)`; with `total`,
    `label/total` as before: `line(trial, 3, 12)`):
    "trial #2 (3/12): mobilenetv3small a=0.5 64px stretch 5.1 MMAC: predicted 2.1 ms, trained val 0.93, int8 gate ok,
    measured 1.8 ms p50 (meets 3 ms)"."""
    label = label if total is None else f"{label}/{total}"
    parts = []
    parts.append("predicted " + (f"{trial.predicted_ms:.3g} ms" if trial.predicted_ms is not None else "- ms"))
    if trial.status == PRUNED:
        return f"trial {label}: {space.describe(trial.candidate)}: {parts[0]}: pruned ({trial.reason})"
    if trial.val_accuracy is not None:
        parts.append(f"trained val {trial.val_accuracy:.3g}")
    if trial.status == GATE_FAILED:
        parts.append(f"int8 gate failed ({trial.reason})")
    elif trial.bundle_dir:
        parts.append("int8 gate ok")
    m = trial.measurement
    if m is not None:
        parts.append(f"measured {m.latency_ms:.3g} ms p50" + (" (emulated)" if m.emulated else ""))
    head = f"trial {label}: {space.describe(trial.candidate)}: " + ", ".join(parts)
    if trial.status in (MEETS, OVER_BUDGET):
        return head + f" ({trial.reason})"
    if trial.status == FAILED:
        return head + f": failed ({trial.reason})"
    return head
