"""Threads on a busy device: engine x inference threads x competing CPU-bound processes x cores.

    python3 benchmarks/threads.py BUNDLE [--artifacts tflite-int8,onnx-int8] [--threads 1,2,4] [--load 0,1,2]
        [--cores 2,4] [--rounds 5] [--runs 100] [--out benchmarks/results/threads]

Engines per artifact: LiteRT (XNNPACK) for .tflite; for .onnx ONNX Runtime with its intra-op threads spinning
(its default) and not spinning (`session.intra_op.allow_spinning` 0), and OpenVINO where it is installed.
`--cores K` pins the measurement and the competing processes to CPUs 0..K-1 with `taskset`, emulating a K-core
device (a K the machine does not have is reported as skipped, never silently measured on fewer cores). Each
competing process is a Python busy loop pinned to the same CPUs: what a decoder or another service costs.

Measurement: for each core count and load, rounds; in every round each (engine, threads) runs once in a fresh
process (`edgecls.runtime.bench.rounds` with one row: load, warm up, `--runs` timed invokes), so one engine's
spinning threads never sit beside another's, and load drifting over minutes falls on every row alike. A cell is
the median of its round medians, with (max - min) / median of them as its spread. Writes OUT.txt and OUT.json.
Timings are only worth reporting from a machine that is otherwise quiet: say so with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BUSY_LOOP = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    pass\n"


def cpu_set(cores: int) -> str | None:
    """The taskset CPU list for `cores` (0..cores-1), or None when taskset or that many CPUs are missing."""
    from edgecls.runtime.backends.threads import usable_cpus

    usable = usable_cpus()
    if not shutil.which("taskset") or cores > usable:
        return None
    return f"0-{cores - 1}" if cores > 1 else "0"


def pinned(command: list, cpus: str | None) -> list:
    return ["taskset", "-c", cpus, *command] if cpus else command


@contextlib.contextmanager
def competing(count: int, cpus: str | None = None, own_session: bool = False):
    """`count` CPU-bound Python busy loops (pinned to `cpus` when given), stopped and reaped on exit. `own_session`:
    each in a session of its own, as another service or login would be; with autogroup scheduling the kernel then
    shares the CPUs between sessions first, and a thread's nice counts only within its own."""
    procs = [
        subprocess.Popen(pinned([sys.executable, "-c", BUSY_LOOP], cpus), start_new_session=own_session)
        for _ in range(count)
    ]
    try:
        time.sleep(0.5 if procs else 0)  # let the scheduler see them before anything is timed
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def engine_rows(bundle, artifacts) -> list:
    """[{"label", "artifact", "engine", "spinning"}]: each artifact in every engine configuration worth comparing."""
    from edgecls.runtime.backends.registry import available_backends

    installed = available_backends()
    rows = []
    for artifact in bundle.manifest.artifacts:
        if artifacts and artifact.name not in artifacts:
            continue
        if artifact.format == "tflite":
            rows.append({"label": f"{artifact.name} litert", "artifact": artifact.name, "engine": None})
            continue
        for spinning in (True, False):
            label = f"{artifact.name} onnxruntime spin={int(spinning)}"
            rows.append({"label": label, "artifact": artifact.name, "engine": "onnxruntime", "spinning": spinning})
        if installed.get("openvino"):
            rows.append({"label": f"{artifact.name} openvino", "artifact": artifact.name, "engine": "openvino"})
    return rows


class RoundFailed(Exception):
    """One cell's round could not be measured (its one-line reason); the other cells go on."""


def one_round(bundle: Path, row: dict, threads: int, runs: int, cpus: str | None, frame: Path) -> float:
    """The median invoke (ms) of `row` at `threads` in a fresh pinned process: one round of one cell."""
    job = {
        "bundle": str(bundle),
        "rows": [row],
        "threads": threads,
        "rounds": 1,
        "round_runs": runs,
        "budget_s": None,
        "max_warmup_s": 5.0,
        "frame": str(frame),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    command = pinned([sys.executable, "-m", "edgecls.runtime.bench.rounds", json.dumps(job)], cpus)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
        if errors:
            why = errors[-1]
        elif proc.returncode < 0:
            why = f"killed by signal {-proc.returncode}"
        else:
            why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RoundFailed(f"{row['label']} threads={threads}: {why}")
    samples = json.loads(proc.stdout.strip().splitlines()[-1])["rows"][row["label"]]["round_samples_ms"][0]
    return statistics.median(samples)


def measure(args, bundle_path: Path, rows: list, frame: Path) -> list:
    """One cell per (cores, load, row, threads): its round medians; progress lines as it goes."""
    cells = []
    for cores in args.cores:
        cpus = cpu_set(cores)
        if cpus is None:
            print(f"cores={cores}: skipped (taskset missing or fewer CPUs here)", flush=True)
            cells += [{"cores": cores, "skipped": True}]
            continue
        for load in args.load:
            medians, failed = {}, {}
            with competing(load, cpus):
                for r in range(args.rounds):
                    for row in rows:
                        for threads in args.threads:
                            if (row["label"], threads) in failed:
                                continue
                            try:
                                ms = one_round(bundle_path, row, threads, args.runs, cpus, frame)
                            except RoundFailed as exc:
                                print(f"error: cores={cores} load={load}: {exc} (left out)", flush=True)
                                failed[(row["label"], threads)] = str(exc)
                                continue
                            medians.setdefault((row["label"], threads), []).append(ms)
                    print(f"cores={cores} load={load}: round {r + 1}/{args.rounds} done", flush=True)
            for (label, threads), values in medians.items():
                if (label, threads) not in failed:
                    cells.append(cell(cores, load, label, threads, values))
            cells += [
                {"cores": cores, "load": load, "row": label, "threads": threads, "failed": why}
                for (label, threads), why in failed.items()
            ]
    return cells


def cell(cores: int, load: int, label: str, threads: int, round_medians: list) -> dict:
    median = statistics.median(round_medians)
    spread = 100 * (max(round_medians) - min(round_medians)) / median if len(round_medians) > 1 else None
    return {
        "cores": cores,
        "load": load,
        "row": label,
        "threads": threads,
        "p50_ms": round(median, 4),
        "round_p50s_ms": [round(v, 4) for v in round_medians],
        "spread_pct": None if spread is None else round(spread, 1),
    }


def table(cells: list) -> list:
    """Plain-text lines: one per row and threads, a column per (cores, load)."""
    measured = [c for c in cells if not c.get("skipped") and not c.get("failed")]
    keys = sorted({(c["cores"], c["load"]) for c in measured})
    rows = list(dict.fromkeys((c["row"], c["threads"]) for c in measured))
    by = {(c["row"], c["threads"], c["cores"], c["load"]): c for c in measured}
    width = max([len(r) for r, _ in rows] + [10])
    head = f"{'engine':<{width}}  thr  " + "  ".join(f"{k}c load {l}".rjust(14) for k, l in keys)
    lines = [head]
    for label, threads in rows:
        values = []
        for k, l in keys:
            c = by.get((label, threads, k, l))
            spread = "" if c is None or c["spread_pct"] is None else f" ({c['spread_pct']:.0f}%)"
            values.append(("-" if c is None else f"{c['p50_ms']:.3f}{spread}").rjust(14))
        lines.append(f"{label:<{width}}  {threads:>3}  " + "  ".join(values))
    skipped = sorted({c["cores"] for c in cells if c.get("skipped")})
    if skipped:
        lines.append(f"not measured: {', '.join(f'{k} cores' for k in skipped)} (this machine has fewer CPUs)")
    lines += [f"failed: {c['cores']} cores, load {c['load']}: {c['failed']}" for c in cells if c.get("failed")]
    return lines


def _ints(text: str) -> list:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--artifacts", default="tflite-int8,onnx-int8", help="comma-separated artifact names")
    p.add_argument("--threads", type=_ints, default=[1, 2, 4])
    p.add_argument("--load", type=_ints, default=[0, 1, 2], help="competing CPU-bound processes")
    p.add_argument("--cores", type=_ints, default=[2, 4], help="CPUs to pin to with taskset")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=100, help="timed invokes per cell and round")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "threads"))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from edgecls.runtime.atomic import write_text
    from edgecls.runtime.bench.frame import synthetic_frame
    from edgecls.runtime.bench.machine import describe
    from edgecls.runtime.bundle import load_bundle

    bundle_path = Path(args.bundle).resolve()
    bundle = load_bundle(bundle_path)
    rows = engine_rows(bundle, [a for a in args.artifacts.split(",") if a])
    with tempfile.TemporaryDirectory() as tmp:
        frame = synthetic_frame(Path(tmp) / "frame.jpg", gray=bundle.manifest.preprocess.color == "gray")
        cells = measure(args, bundle_path, rows, frame)
    host = describe()
    header = [
        f"# invoke p50 (ms; median of {args.rounds} round medians, spread = (max-min)/median) by engine, inference "
        f"threads, CPUs pinned (taskset) and competing CPU-bound processes; {bundle_path.name}",
        f"# {host.get('cpu')}, {host.get('cores')} cores, load average at the end {host.get('load_average')}, "
        f"{time.strftime('%Y-%m-%d')}; each cell's rounds ran in fresh processes, interleaved",
    ]
    lines = header + table(cells)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out + ".txt", "\n".join(lines) + "\n")
    write_text(args.out + ".json", json.dumps({"machine": host, "settings": vars(args), "cells": cells}, indent=2))
    print("\n".join(lines[2:]))
    if any(c.get("failed") for c in cells):
        sys.exit(
            f"error: {sum(bool(c.get('failed')) for c in cells)} cell(s) failed (listed above); the others "
            f"are in {args.out}.txt and .json"
        )


if __name__ == "__main__":
    main()
