"""Issue 26 must-show: v2 started from v1 (`train --init-from`) against v2 trained from scratch.

    nice -n 10 python -m benchmarks.improvement_loop [--work DIR] [--epochs 30]

The whole loop on the digits (the UCI set scikit-learn ships, 1,797 8x8 images), with the real commands:

1. the images of each class alternate between the dataset (v1's half) and a pool (the other half);
2. v1 = `edgecls train --data dataset/` (24 px grey, `simple` 16,32,64), converted by `edgecls convert`;
3. the pool is run through the daemon, `edgecls run bundles/v1 --source pool/ --capture captures/
   --capture-every 1 --fps 40 --results results.jsonl`: every frame lands in captures/.unlabelled/ as JPEG + sidecar;
4. the captures are labelled on the labelling page (`edgecls label captures/ --token-file ... --exit-when-done`)
   in headless Chromium with its keys (tests/label_captures.py --browser: the true class's key among 1-9, else
   `n` and its name), the truth of each frame found from its sidecar's frame number -> the daemon's result
   line for it -> the pool file name;
5. v2 = `train --init-from v1 --data dataset/ --data captures/` and, on exactly v2's train/val/test files
   (a pre-split folder of symlinks made from v2's split.json), the same model from scratch; both for --epochs
   epochs with early stopping off, each epoch's model scored on v1's fixed test split;
6. `edgecls compare v1 v2` (McNemar on v1's test split).

Writes benchmarks/results/improvement_loop.txt and .png (improvement_loop_seedN.* with --seed N). About 8 minutes
on two shared cores. `--summary` reads those files and writes improvement_loop_summary.txt: per seed the epochs
each run needed to reach the from-scratch run's kept accuracy (exactly, and within one test image), the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SUMMARY = "improvement_loop_summary.txt"
FPS = 40  # the folder played as a live camera: capture writes each frame (JPEG + sidecar) before the next comes
INPUT = {"image_size": 24, "color": "gray", "model_options": {"widths": (16, 32, 64)}}


def say(line: str) -> None:
    print(line, flush=True)


def edgecls(*args, **kw) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgecls.cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        raise SystemExit(f"edgecls {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return result


def halves(work: Path) -> tuple:
    """dataset/<class>/ (even images of each class) and pool/c<class>-<n>.png (odd ones, truth in the name)."""
    from edgecls.core.datasets.builtin import materialize

    dataset, pool = work / "dataset", work / "pool"
    for class_dir in sorted(materialize("digits").iterdir()):
        for i, f in enumerate(sorted(class_dir.iterdir())):
            if i % 2 == 0:
                (dataset / class_dir.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dataset / class_dir.name / f.name)
            else:
                pool.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, pool / f"c{class_dir.name}-{f.stem}.png")
    return dataset, pool


def capture(work: Path, bundle: Path, pool: Path) -> Path:
    captures, results = work / "captures", work / "results.jsonl"
    n = len(list(pool.iterdir()))
    edgecls(
        "run", bundle, "--source", pool, "--capture", captures, "--capture-every", "1", "--capture-max-mb", "200",
        "--results", results, "--max-frames", n, "--fps", FPS, "--port", "0", timeout=600,
    )  # fmt: skip
    return captures


def label_on_the_page(work: Path, captures: Path) -> int:
    """Every capture labelled on `edgecls label`'s page in headless Chromium, by its keys (tests/label_captures.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.label_captures import label

    return label(captures, work / "results.jsonl", browser=True)


def test_scorer(v1: Path):
    """A Keras callback recording each epoch's accuracy on v1's fixed test split."""
    import keras
    import numpy as np

    from edgecls.core import rundir
    from edgecls.core.rundata import load_run_splits

    split = load_run_splits(rundir.open_run(v1), ["test"])["test"]

    class ScoreOnV1Test(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.accuracy = []

        def on_epoch_end(self, epoch, logs=None):
            probs = self.model.predict(split.x, verbose=0, batch_size=256)
            self.accuracy.append(float(np.mean(probs.argmax(axis=1) == split.y)))

    return ScoreOnV1Test()


def presplit_like(run: Path, folder: Path) -> Path:
    """folder/{train,val,test}/<class>/ symlinks to exactly the files of `run`'s split.json."""
    record = json.loads((run / "split.json").read_text())
    root = Path(json.loads((run / "metadata.json").read_text())["dataset"]["source"])
    for name, entries in record["splits"].items():
        for i, (path, _, label) in enumerate(entries):
            link = folder / name / record["labels"][label] / f"{i:05d}{Path(path).suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink((root / path).resolve(), link)
    return folder


def train_watched(v1: Path, out: Path, epochs: int, seed: int, **kw) -> tuple:
    from edgecls.train import TrainConfig, train

    scorer = test_scorer(v1)
    started = time.perf_counter()
    result = train(
        TrainConfig(out=str(out), epochs=epochs, patience=0, seed=seed, verbose=0, callbacks=(scorer,), **kw)
    )
    return scorer.accuracy, result.metrics["test_accuracy"], time.perf_counter() - started


def first_epoch(curve: list, target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(curve) if a >= target - 1e-9), None)


def plot(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], marker="o", markersize=3, label=name)
    ax.axhline(100 * target, color="grey", linestyle="--", label=f"from-scratch accuracy ({100 * target:.1f} %)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy on v1's fixed test split (%)")
    ax.set_title("digits: v2 started from v1 (--init-from) vs v2 from scratch, same data")
    ax.set_ylim(max(0, 100 * min(min(c) for c in curves.values()) - 5), 100.5)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def recorded_runs() -> dict:
    """{seed: (n test images, from-scratch kept accuracy, init-from curve, scratch curve)} from the results files."""
    runs = {}
    for path in sorted(RESULTS.glob("improvement_loop*.txt")):
        if path.name == SUMMARY:
            continue
        text = path.read_text()
        seed = int(re.search(r"seed (\d+)", text).group(1))
        n = int(re.search(r"on its test split \((\d+) images\)", text).group(1))
        target = float(re.search(r"from-scratch accuracy \(its kept epoch.*?: ([0-9.]+)", text).group(1))
        rows = re.findall(r"^ +\d+ +([0-9.]+) +([0-9.]+)$", text, re.M)
        runs[seed] = (n, target, [float(a) for a, _ in rows], [float(b) for _, b in rows])
    return runs


def summarize() -> str:
    """Per seed: the first epoch whose model reaches the from-scratch run's kept accuracy on v1's test split,
    exactly and within one test image (target - 1/n), for both runs; the medians; the seeds showing a gain."""
    runs = recorded_runs()
    lines = [
        "# Issue 26 summary over seeds (python -m benchmarks.improvement_loop --summary), from the per-epoch",
        "# tables of improvement_loop.txt (seed 0) and improvement_loop_seedN.txt; 2 shared noisy cores.",
        "# target: the from-scratch run's kept model (lowest val loss), scored on v1's fixed test split;",
        "# counted in images right of v1's n test images (the tables' 4-decimal accuracies times n, rounded);",
        "# 'exact': the first epoch with at least as many right as the target, 'within one image': one fewer.",
        "",
        "seed   target  exact: init-from scratch  within one image: init-from scratch",
    ]
    cells = {"exact": [], "one": []}
    for seed, (n, target, init, scratch) in sorted(runs.items()):
        # in images right of n: the tables' accuracies are rounded to 4 decimals, an image is 1/n
        right, init, scratch = round(target * n), [round(a * n) for a in init], [round(a * n) for a in scratch]
        exact = (first_epoch(init, right), first_epoch(scratch, right))
        one = (first_epoch(init, right - 1), first_epoch(scratch, right - 1))
        cells["exact"].append(exact)
        cells["one"].append(one)
        lines.append(f"{seed:>4}  {right}/{n}  {exact[0]!s:>17} {exact[1]!s:>7}  {one[0]!s:>27} {one[1]!s:>7}")
    lines.append("")
    for key, what in (("exact", "exactly"), ("one", "within one image")):
        pairs = [p for p in cells[key] if None not in p]
        init, scratch = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        fewer = sum(a < b for a, b in pairs)
        ties = sum(a == b for a, b in pairs)
        lines.append(
            f"{what}: median epochs --init-from {init:g}, from scratch {scratch:g}; --init-from needed fewer "
            f"epochs in {fewer} of {len(pairs)} seeds, as many in {ties}, more in {len(pairs) - fewer - ties}"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="Working folder (default: a temporary one, removed).")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="Seeds the splits and training (results_seedN.txt).")
    parser.add_argument(
        "--summary", action="store_true", help="Only summarize the seeds' results files (improvement_loop_summary.txt)."
    )
    args = parser.parse_args()
    if args.summary:
        text = summarize()
        (RESULTS / SUMMARY).write_text(text)
        say(text)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="improvement-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.train import TrainConfig, train

    dataset, pool = halves(work)
    say(f"dataset {sum(1 for _ in dataset.rglob('*.png'))} images, pool {len(list(pool.iterdir()))}")
    v1 = work / "runs" / "v1"
    v1_result = train(
        TrainConfig(data=str(dataset), out=str(v1), epochs=args.epochs, seed=args.seed, verbose=0, **INPUT)
    )
    say(f"v1 test accuracy {v1_result.metrics['test_accuracy']:.4f}")
    bundle = work / "bundles" / "v1"
    convert(v1, bundle, ConvertOptions())
    captures = capture(work, bundle, pool)
    captured = len(list((captures / ".unlabelled").rglob("*.jpg")))
    say(f"daemon captured {captured} frames")
    labelled = label_on_the_page(work, captures)
    say(f"labelled {labelled} frames on the page, by keyboard in headless Chromium")
    init_curve, init_acc, init_s = train_watched(
        v1, work / "runs" / "v2", args.epochs, args.seed, data=(str(dataset), str(captures)), init_from=str(v1)
    )
    scratch_data = presplit_like(work / "runs" / "v2", work / "scratch-data")
    scratch_curve, scratch_acc, scratch_s = train_watched(
        v1, work / "runs" / "v2-scratch", args.epochs, args.seed, data=str(scratch_data), **INPUT
    )
    verdict = edgecls("compare", v1, work / "runs" / "v2").stdout.splitlines()[-1]
    write_results(
        args, v1_result.metrics, captured, labelled, (init_curve, init_acc, init_s),
        (scratch_curve, scratch_acc, scratch_s), verdict, time.perf_counter() - started,
    )  # fmt: skip
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def write_results(args, v1_metrics, captured, labelled, init, scratch, verdict, seconds) -> None:
    (init_curve, init_acc, init_s), (scratch_curve, scratch_acc, scratch_s) = init, scratch
    target = scratch_acc  # the from-scratch run's kept model (lowest val loss), scored on v1's test split
    reach_init, reach_scratch = first_epoch(init_curve, target), first_epoch(scratch_curve, target)
    lines = [
        "# Issue 26: v2 with --init-from v1 against v2 from scratch (python -m benchmarks.improvement_loop)",
        f"# {platform.node()}, {platform.processor() or platform.machine()}, 2 shared noisy cores; "
        f"one run, seed {args.seed}",
        "",
        f"v1: half of each digit class, test accuracy {v1_metrics['test_accuracy']:.4f} "
        f"on its test split ({v1_metrics['n']} images)",
        f"the other half through the daemon: {captured} frames captured, "
        f"{labelled} labelled on the page by keyboard (headless Chromium)",
        "v2 trains on v1's dataset + the labelled captures; v1's test split is the test split of both v2 runs",
        "",
        f"from-scratch accuracy (its kept epoch, on v1's test split): {target:.4f}",
        f"epochs to reach it: --init-from v1 {reach_init}, from scratch {reach_scratch} "
        f"(of {args.epochs}; early stopping off)",
        f"kept models: --init-from {init_acc:.4f} in {init_s:.0f} s, "
        f"from scratch {scratch_acc:.4f} in {scratch_s:.0f} s (wall time on shared, busy cores: not a speed figure)",
        "epochs to first reach 98 % / 99 %: --init-from "
        + " / ".join(str(first_epoch(init_curve, t)) for t in (0.98, 0.99))
        + ", from scratch "
        + " / ".join(str(first_epoch(scratch_curve, t)) for t in (0.98, 0.99)),
        f"edgecls compare v1 v2: {verdict}",
        f"(one image of v1's {v1_metrics['n']} test images is {100 / v1_metrics['n']:.2f} points: kept models that "
        "differ by one image are not different, as McNemar's p says; the epochs to get there are the finding)",
        "",
        "epoch  init-from  scratch   (accuracy on v1's fixed test split after each epoch)",
    ]
    for i in range(max(len(init_curve), len(scratch_curve))):
        a = f"{init_curve[i]:.4f}" if i < len(init_curve) else ""
        b = f"{scratch_curve[i]:.4f}" if i < len(scratch_curve) else ""
        lines.append(f"{i + 1:>5}  {a:>9}  {b:>7}")
    lines.append("")
    lines.append(f"total {seconds:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    name = "improvement_loop" + (f"_seed{args.seed}" if args.seed else "")
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
    plot({"--init-from v1": init_curve, "from scratch": scratch_curve}, target, RESULTS / f"{name}.png")
    say("\n".join(lines))


if __name__ == "__main__":
    main()
