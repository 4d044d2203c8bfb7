"""What the distillation and QAT benchmarks share: runs and bundles made by the `edgecls` CLI (the
product's path) in a work folder that keeps finished ones, and the results file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def work_folder(path: str | None, prefix: str) -> Path:
    """`--work`, else a new temp folder; finished runs there are reused by `train`."""
    work = Path(path or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def cli(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`edgecls ARGS` in a subprocess; with `check`, a failure stops the benchmark with the command and its stderr."""
    cmd = [sys.executable, "-m", "edgecls.cli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode and check:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done


REUSED: set = set()  # runs found finished in the work folder (the results say how many)
TRAIN_SECONDS: dict = {}  # run -> its own training time, reused or not: what a pass from scratch costs


def train(out: Path, *args) -> dict:
    """`edgecls train --out OUT ARGS --quiet --overwrite`, unless OUT holds a finished run; its summary."""
    if (out / "metrics.json").is_file():
        REUSED.add(str(out))
    else:
        cli("train", "--out", out, *args, "--quiet", "--overwrite")
    return read_run(out)


def read_run(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    metadata = json.loads((out / "metadata.json").read_text())
    kept = metadata["train"].get("kept_epoch") or {}
    TRAIN_SECONDS[str(out)] = metrics.get("train_seconds", 0.0)
    return {
        "accuracy": 100 * metrics["test_accuracy"],
        "params": metadata["model"]["parameters"],
        "teacher": metadata.get("teacher"),
        "test_images": metadata["dataset"]["counts"]["test"],
        "val_loss": kept.get("value") if kept.get("monitor") == "val_loss" else None,
    }


def convert(run: Path, out: Path, *args) -> dict:
    """`edgecls convert RUN --out OUT ARGS --overwrite`; the bundle's manifest, with its
    verification report as `report`."""
    cli("convert", run, "--out", out, *args, "--overwrite")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["report"] = (out / "verification.txt").read_text()
    return manifest


def write_results(path: Path, lines: list, started: float, work: Path) -> None:
    reused = (
        (
            f" ({len(REUSED)} finished runs there reused, made by an earlier pass; the {len(TRAIN_SECONDS)} runs "
            f"trained in {sum(TRAIN_SECONDS.values()):.0f} s in all)"
        )
        if REUSED
        else ""
    )
    lines = [*lines, f"# {time.perf_counter() - started:.0f} s; runs in {work}{reused}"]
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
