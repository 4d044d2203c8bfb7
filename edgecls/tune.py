"""Hyperparameter search on keras-tuner, each trial a real `edgecls.train.train` run.

keras-tuner's oracles (random, Bayesian, Hyperband) choose the values; every trial is trained by
the project's own `train()`, so it reads the data through the same split (the same seed), the same
preprocessing and the same evaluation as `edgecls train`. Trials are scored on the validation split;
the test split stays out of the choice and only reports the winner.

The best trial is not retrained: its run directory, exactly as it was scored, becomes `--out`
(a normal run that `convert`, `evaluate` and `explain` take), with `tuning/` inside it: trials.csv,
trials.json, trials.png and keras-tuner's own state (tuning/tuner/). The other trials' runs are
deleted when the search ends. `--out` is written atomically: an interrupted search leaves nothing.

Hyperband gives its later rounds more epochs; each trial trains from scratch for its round's
budget (`train()` owns the model and does not resume one), which costs time, not correctness.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.core.progress import progress
from edgecls.models import DEFAULT_MODEL, model_entry, pretrained_models, tunable_models
from edgecls.runtime.errors import EdgeclsError

SEARCHES = ("random", "bayesian", "hyperband")
OBJECTIVES = {"val_accuracy": "max", "val_loss": "min"}
TUNING_DIR = "tuning"
TRIALS_JSON, TRIALS_CSV, TRIALS_PNG = "trials.json", "trials.csv", "trials.png"

# The search space every model shares; each registered model adds its own (edgecls.models, `search`).
LEARNING_RATE = (1e-4, 1e-2)
DROPOUT = (0.0, 0.5, 0.1)  # min, max, step
L2 = (0.0, 1e-5, 1e-4, 1e-3)
BATCH_SIZES = (16, 32, 64)


@dataclass
class TuneConfig:
    data: str
    out: str
    model: str = DEFAULT_MODEL
    trials: int = 10
    search: str = "random"
    max_epochs: int = 10
    objective: str = "val_accuracy"
    image_size: int | None = None
    color: str | None = None
    weights: str | None = None  # a pretrained backbone (models that take one): the fine-tuning depth is searched
    alpha: float = 1.0  # with --weights: the width the weights file was made for
    patience: int = 3
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    augment: bool = True
    overwrite: bool = False
    verbose: int | str = 0


@dataclass
class TuneResult:
    run_dir: Path
    best: dict
    trials: list = field(default_factory=list)
    seconds: float = 0.0


def declare_space(hp, cfg: TuneConfig, image_size: int) -> None:
    """Register the search space for `cfg.model` on a keras_tuner.HyperParameters."""
    hp.Float("learning_rate", *LEARNING_RATE, sampling="log")
    hp.Float("dropout", DROPOUT[0], DROPOUT[1], step=DROPOUT[2])
    hp.Choice("l2", list(L2))
    hp.Choice("batch_size", list(BATCH_SIZES))
    model_entry(cfg.model).search.declare(hp, image_size, bool(cfg.weights))


def train_config(cfg: TuneConfig, values: dict, out, epochs: int | None = None):
    """The `TrainConfig` of one trial: the tuner's values over the fixed options of `cfg`."""
    from edgecls.core.augment import AugmentSpec
    from edgecls.train import TrainConfig

    epochs = epochs or cfg.max_epochs
    options = {"dropout": round(float(values["dropout"]), 6), "l2": float(values["l2"])}
    own, fine_tune = model_entry(cfg.model).search.options(values, cfg)
    options.update(own)
    return TrainConfig(
        data=cfg.data,
        out=str(out),
        model=cfg.model,
        model_options=options,
        image_size=cfg.image_size,
        color=cfg.color,
        epochs=epochs,
        batch_size=int(values["batch_size"]),
        learning_rate=float(values["learning_rate"]),
        patience=cfg.patience,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        augment=None if cfg.augment else AugmentSpec.off(),
        fine_tune_layers=fine_tune,
        fine_tune_epochs=epochs if fine_tune else 0,
        verbose=cfg.verbose,
    )


def _validate(cfg: TuneConfig) -> None:
    if cfg.search not in SEARCHES:
        raise EdgeclsError(f"unknown search {cfg.search!r}: use one of {', '.join(SEARCHES)} (--search)")
    if cfg.model not in tunable_models():
        raise EdgeclsError(f"tune has a search space for {' and '.join(tunable_models())}, not {cfg.model!r} (--model)")
    if cfg.objective not in OBJECTIVES:
        raise EdgeclsError(f"unknown objective {cfg.objective!r}: use one of {', '.join(OBJECTIVES)} (--objective)")
    for flag, value in (("--trials", cfg.trials), ("--max-epochs", cfg.max_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EdgeclsError(f"{flag} {value!r} is out of range: use a whole number of 1 or more")
    if cfg.weights and cfg.model not in pretrained_models():
        raise EdgeclsError(
            f"--weights is a pretrained backbone of {', '.join(pretrained_models())}: "
            "use it with one of those (--model)"
        )
    if not cfg.val_fraction or cfg.val_fraction <= 0:
        raise EdgeclsError("tuning scores trials on the validation split: use a --val-fraction above 0")


def _guard(root) -> dict:
    """`--out` is a run (replaces only a run or an empty folder) that also holds `tuning/`."""
    from edgecls.core.outputs import RUN_CONTENTS, run_guard

    guard = run_guard(root)
    guard["contents"] = RUN_CONTENTS | {TUNING_DIR}
    return guard


@contextmanager
def _quiet_search():
    """keras-tuner prints the traceback of every failed trial (ours get one line), and TensorFlow warns
    that `fit` retraces, which one new model per trial always does."""
    import logging

    from keras_tuner.src import config

    tf_log = logging.getLogger("tensorflow")
    before = config.DEBUG, tf_log.level
    config.DEBUG = False
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        config.DEBUG = before[0]
        tf_log.setLevel(before[1])


def _one_line(text: str) -> str:
    """The cause in one line: `Type: first line of the message`, not TensorFlow's closing "Hint:" lines.

    A traceback (keras-tuner's own trial message) ends with the exception: what follows its last indented
    (frame) line."""
    lines = [l for l in str(text or "").splitlines() if l.strip()]
    if lines and lines[0].startswith("Traceback"):
        frames = [n for n, l in enumerate(lines) if l[:1].isspace()]
        lines = lines[frames[-1] + 1 :] if frames else lines[1:]
    lines = [l.strip() for l in lines if not l.strip().startswith("Hint:")]
    return lines[0][:300] if lines else ""


def _oracle(cfg: TuneConfig, hp):
    import keras_tuner as kt

    objective = kt.Objective(cfg.objective, OBJECTIVES[cfg.objective])
    # seed 0 would mean "random" to keras-tuner (`seed or randint`): shift it, so --seed 0 repeats too
    # A failed trial is a row in the table, not the end; with every trial failed, tune() says why in one line
    # (keras-tuner would raise its own multi-line RuntimeError at its limit, so the limit is never reached).
    common = dict(
        objective=objective, hyperparameters=hp, seed=cfg.seed + 1, max_consecutive_failed_trials=cfg.trials + 1
    )
    if cfg.search == "random":
        return kt.oracles.RandomSearchOracle(max_trials=cfg.trials, **common)
    if cfg.search == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(max_trials=cfg.trials, **common)
    oracle = kt.oracles.HyperbandOracle(max_epochs=cfg.max_epochs, factor=3, **common)
    oracle.max_trials = cfg.trials  # Hyperband has no max_trials argument; the base oracle stops on it
    return oracle


def _make_tuner(cfg: TuneConfig, oracle, directory: Path, runs: Path, records: dict):
    import keras_tuner as kt

    from edgecls.train import train

    class _Fatal(kt.errors.FatalError):
        """An EdgeclsError (bad data, bad option) ends the search: every other trial would hit it too."""

        def __init__(self, error: EdgeclsError):
            super().__init__(str(error))
            self.error = error

    class EdgeclsTuner(kt.Tuner):
        fatal = _Fatal

        def run_trial(self, trial, *args, **kwargs):
            values = trial.hyperparameters.values
            epochs = values.get("tuner/epochs")  # Hyperband's budget for this round
            out = runs / f"trial_{trial.trial_id}"
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items() if not k.startswith("tuner/"))
            progress(
                f"trial {trial.trial_id} ({len(records) + 1}/{cfg.trials}): {shown}"
                + (f", {epochs} epochs" if epochs else "")
            )
            started = time.perf_counter()
            record = records.setdefault(trial.trial_id, {"run": out})
            try:
                result = train(train_config(cfg, values, out, epochs))
            except EdgeclsError as exc:
                raise _Fatal(exc) from exc
            except Exception as exc:  # one configuration failing (out of memory, NaN) is a result of the search
                record.update(
                    seconds=round(time.perf_counter() - started, 2), message=_one_line(f"{type(exc).__name__}: {exc}")
                )
                progress(f"trial {trial.trial_id} failed: {record['message']}")
                raise kt.errors.FailedTrialError(record["message"]) from exc
            metrics, history = result.metrics, result.history
            if "val_accuracy" not in metrics or not history.get("val_loss"):
                raise _Fatal(
                    EdgeclsError(
                        "the validation split is empty, so trials cannot be scored: add images or raise --val-fraction"
                    )
                )
            scores = {"val_accuracy": float(metrics["val_accuracy"]), "val_loss": _finite_min(history["val_loss"])}
            if not all(math.isfinite(v) for v in scores.values()):  # diverged (NaN/inf): failed, never the best
                record.update(
                    seconds=round(time.perf_counter() - started, 2),
                    message=f"diverged: val_loss {scores['val_loss']}, val_accuracy {scores['val_accuracy']}",
                )
                progress(f"trial {trial.trial_id} failed: {record['message']}")
                raise kt.errors.FailedTrialError(record["message"])
            record.update(
                scores,
                test_accuracy=float(metrics["test_accuracy"]),
                epochs=len(history.get("loss", [])),
                seconds=round(time.perf_counter() - started, 2),
            )
            progress(
                f"trial {trial.trial_id}: val_accuracy {scores['val_accuracy']:.4f}, val_loss {scores['val_loss']:.4f}"
            )
            return scores

    return EdgeclsTuner(oracle=oracle, directory=str(directory), project_name="tuner", overwrite=True)


def _finite_min(values) -> float:
    """The best finite validation loss (the epoch train() keeps), NaN when no epoch had one: min() over a
    list holding NaN depends on where the NaN sits."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return min(finite) if finite else math.nan


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rows(oracle, records: dict, objective: str) -> list:
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        record = records.get(trial_id, {})
        status = str(getattr(trial.status, "value", trial.status))
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                "score": None if trial.score is None else round(float(trial.score), 6),
                "objective": objective,
                **{
                    k: (round(record[k], 6) if isinstance(record.get(k), float) else record.get(k))
                    for k in ("val_accuracy", "val_loss", "test_accuracy", "epochs", "seconds")
                },
                "hyperparameters": dict(trial.hyperparameters.values),
                "message": record.get("message") or (_one_line(trial.message) if status != "COMPLETED" else ""),
            }
        )
    return rows


def _csv(rows: list) -> str:
    names = sorted({k for row in rows for k in row["hyperparameters"]})
    fixed = ["trial", "status", "score", "val_accuracy", "val_loss", "test_accuracy", "epochs", "seconds"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fixed + names + ["message"])
    for row in rows:
        writer.writerow(
            [("" if row[k] is None else row[k]) for k in fixed]
            + [row["hyperparameters"].get(n, "") for n in names]
            + [row["message"]]
        )
    return buf.getvalue()


def _plot(rows: list, objective: str, best_id: str, path) -> None:
    """Score by trial, the best so far as a step line, failed trials as crosses on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from edgecls.runtime.atomic import write_bytes

    better = max if OBJECTIVES[objective] == "max" else min
    fig, ax = plt.subplots(figsize=(7, 3.6))
    done = [(int(r["trial"]), r["score"]) for r in rows if _finite(r["score"])]
    failed = [int(r["trial"]) for r in rows if not _finite(r["score"])]
    if done:
        xs, ys = zip(*done)
        ax.plot(xs, ys, "o", label=objective)
        ax.step(xs, [better(ys[: n + 1]) for n in range(len(ys))], where="post", alpha=0.6, label="best so far")
        best = next(r for r in rows if r["trial"] == best_id)
        ax.plot(
            [int(best_id)],
            [best["score"]],
            "*",
            markersize=14,
            color="gold",
            markeredgecolor="black",
            label=f"best (trial {best_id})",
        )
    if failed:
        low = min((s for _, s in done), default=0.0)
        ax.plot(failed, [low] * len(failed), "x", color="red", label="failed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (validation)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def best_row(rows: list, objective: str) -> dict | None:
    """The completed trial with the best objective; ties (common on a small validation split) go to
    the lower validation loss, then the earlier trial."""
    done = [
        r
        for r in rows
        if r["status"] == "COMPLETED"
        and _finite(r["score"])
        and all(r.get(k) is None or _finite(r[k]) for k in OBJECTIVES)
    ]
    if not done:
        return None
    sign = -1 if OBJECTIVES[objective] == "max" else 1
    return min(
        done, key=lambda r: (sign * r["score"], r["val_loss"] if _finite(r["val_loss"]) else math.inf, int(r["trial"]))
    )


def _finite(value) -> bool:
    """A score that can be compared: a diverged trial's NaN would never lose (nothing compares below NaN)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def tune(cfg: TuneConfig) -> TuneResult:
    """Search, then make the best trial's run directory `cfg.out` (with `tuning/` inside)."""
    from edgecls.runtime.atomic import staged_dir

    started = time.perf_counter()
    _validate(cfg)
    guard, hp = _prepare(cfg)
    records: dict = {}
    with staged_dir(cfg.out, cfg.overwrite, **guard) as stage:
        tuning = stage / TUNING_DIR
        runs = tuning / "runs"
        oracle = _oracle(cfg, hp)
        tuner = _make_tuner(cfg, oracle, tuning, runs, records)
        progress(
            f"searching {cfg.model} with {cfg.search} search: {cfg.trials} trials of up to {cfg.max_epochs} epochs, "
            f"scored by {cfg.objective} on the validation split"
        )
        try:
            with _quiet_search():
                tuner.search(verbose=0)
        except tuner.fatal as exc:
            raise exc.error from None
        rows = _rows(oracle, records, cfg.objective)
        best = best_row(rows, cfg.objective)
        if best is None:
            last = next((r["message"] for r in reversed(rows) if r["message"]), "no trial ran")
            raise EdgeclsError(f"no trial completed ({len(rows)} failed; last: {last}): see the messages above")
        best_run = records[best["trial"]]["run"]
        for entry in os.listdir(best_run):  # the winner, as it was scored, becomes the run directory
            os.replace(best_run / entry, stage / entry)
        shutil.rmtree(runs, ignore_errors=True)
        _write_tuning(stage, cfg, rows, best)
    return TuneResult(Path(cfg.out), best, rows, time.perf_counter() - started)


def _prepare(cfg: TuneConfig) -> tuple:
    """(what `--out` may replace, the search space): every fixed option is checked, as `train` would, before
    the search, and the first trial's model options against the image size (MobileNetV2 below 32 px)."""
    from edgecls.core.datasets import resolve_dataset
    from edgecls.models import check_options
    from edgecls.runtime.atomic import check_output
    from edgecls.train import preprocess_spec_for

    root, builtin = resolve_dataset(cfg.data)
    guard = _guard(root)
    check_output(cfg.out, cfg.overwrite, **guard)  # a refusal costs nothing
    shared = {"dropout": 0.0, "l2": 0.0, "batch_size": 1, "learning_rate": 1e-3}
    probe = train_config(cfg, {**shared, **model_entry(cfg.model).search.probe}, cfg.out)
    probe.validate()  # every fixed option, as `train` would check it
    spec = preprocess_spec_for(probe, builtin.defaults if builtin else {})

    import keras_tuner as kt

    hp = kt.HyperParameters()
    declare_space(hp, cfg, spec.height if spec.height <= spec.width else spec.width)
    first = train_config(cfg, dict(hp.values), cfg.out)  # the defaults: first choices, lowest values
    check_options(cfg.model, spec.shape, **first.model_options)  # e.g. MobileNetV2 below 32 px: refused now
    return guard, hp


def _write_tuning(stage: Path, cfg: TuneConfig, rows: list, best: dict) -> None:
    """The winner's metadata.json says how it was found; tuning/ holds every trial (json, csv, plot)."""
    import json

    from edgecls.core import rundir
    from edgecls.runtime.atomic import write_json, write_text

    tuning = stage / TUNING_DIR
    metadata = json.loads((stage / rundir.METADATA_FILE).read_text(encoding="utf-8"))
    metadata["tuning"] = {
        "search": cfg.search,
        "trial": best["trial"],
        "trials": len(rows),
        "objective": cfg.objective,
        "score": best["score"],
        "hyperparameters": best["hyperparameters"],
    }
    write_json(stage / rundir.METADATA_FILE, metadata)
    write_json(
        tuning / TRIALS_JSON,
        {
            "search": cfg.search,
            "model": cfg.model,
            "objective": cfg.objective,
            "direction": OBJECTIVES[cfg.objective],
            "best": best["trial"],
            "trials": rows,
        },
    )
    write_text(tuning / TRIALS_CSV, _csv(rows))
    _plot(rows, cfg.objective, best["trial"], tuning / TRIALS_PNG)
