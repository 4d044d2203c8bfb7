"""Training and convert on a dataset larger than memory: peak RSS, and time per image against the code
before streaming (issue 10).

    python3 benchmarks/train_memory.py [--images 20000] [--data DIR] [--old /tmp/edgecls-old] [--skip-big]
                                       [--convert-path DIR] [--out FILE]

1. Writes a class-per-folder set of `--images` generated shapes at 256x256 (edgecls.core.datasets.shapes,
   JPEG quality 95) into --data, once: it is reused when complete.
2. `/usr/bin/time -v edgecls train --data BIG --model mobilenetv2 --alpha 0.35 --image-size 224 --epochs 1`:
   the peak RSS (target: at most 3 GB).
3. The same command on the built-in 2,500-image shapes set, with the code before streaming (--old: a tree
   from `git archive HEAD`, run with PYTHONPATH) and with this code, --repeats runs each in ABBA order (the
   machine is shared: its load drifts): seconds per image by `train_seconds` and by CPU time (target:
   within +-10 %).
4. `/usr/bin/time -v edgecls convert` on the big run: the peak RSS (target: at most 2 GB). `--convert-path`
   puts a folder first on PYTHONPATH for this step only (a converters/ tree with unmerged wiring).

Every command runs from /tmp with PYTHONPATH naming the tree it measures, so the checkout in the working
directory cannot shadow it. Writes benchmarks/results/train_memory.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAIN = ["--model", "mobilenetv2", "--alpha", "0.35", "--image-size", "224", "--epochs", "1", "--quiet", "--overwrite"]
GB = 2**30


def _write_class(args) -> int:
    import cv2
    import numpy as np

    from edgecls.core.datasets.shapes import render_shape

    folder, kind, label, count, size = args
    folder = Path(folder) / kind
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            image = render_shape(kind, np.random.default_rng([label, i]), size)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            path.write_bytes(buf.tobytes())
    return count


def make_dataset(folder: Path, images: int, size: int = 256) -> Path:
    """`images` generated shapes (an equal share per class) as JPEGs under folder/<class>/, once."""
    from edgecls.core.datasets.shapes import SHAPES

    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{images} {size}\n":
        return folder
    per_class = images // len(SHAPES)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_write_class, [(str(folder), kind, i, per_class, size) for i, kind in enumerate(SHAPES)]))
    done.write_text(f"{images} {size}\n")
    print(f"wrote {per_class * len(SHAPES):,} images to {folder} in {time.perf_counter() - started:.0f}s", flush=True)
    return folder


def timed(args: list, pythonpath: str, log: Path, must_pass: bool = True) -> dict:
    """Run `python -m edgecls.cli ARGS` under /usr/bin/time -v; peak RSS, wall seconds and exit code."""
    env = {**os.environ, "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("EDGECLS_IN_MEMORY_MB", None)  # the default limit, as a user gets it
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "edgecls.cli", *map(str, args)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd="/tmp", env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write_text(
        proc.stdout + "\n--- stderr ---\n" + proc.stderr + f"\nedgecls-benchmark-wall-seconds: {seconds:.2f}\n"
    )
    if proc.returncode != 0 and must_pass:
        raise SystemExit(f"{' '.join(command[3:6])} ... failed (exit {proc.returncode}); see {log}")
    return from_log(log)


def from_log(log: Path) -> dict:
    """Peak RSS, CPU and wall seconds of a command `timed` ran, read back from its log."""
    text = log.read_text()
    field = lambda name: re.search(rf"{name}: ([\d.]+)", text).group(1)  # noqa: E731
    rss = int(field(r"Maximum resident set size \(kbytes\)")) * 1024
    cpu = float(field(r"User time \(seconds\)")) + float(field(r"System time \(seconds\)"))
    code = int(field("Exit status"))
    return {
        "rss": rss,
        "wall": float(field("edgecls-benchmark-wall-seconds")),
        "cpu": cpu,
        "log": str(log),
        "code": code,
    }


def train_seconds(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["train_seconds"]


def images_used(run: Path) -> int:
    return sum(json.loads((run / "metadata.json").read_text())["dataset"]["counts"].values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--data", type=Path, default=Path("/tmp/edgecls-bench/shapes-20k-256"))
    p.add_argument("--work", type=Path, default=Path("/tmp/edgecls-bench/train-memory"))
    p.add_argument(
        "--old", type=Path, default=Path("/tmp/edgecls-old"), help="the code before streaming (git archive HEAD)"
    )
    p.add_argument("--skip-big", action="store_true", help="only the 2,500-image comparison")
    p.add_argument("--skip-old", action="store_true", help="no comparison with the old code")
    p.add_argument("--repeats", type=int, default=2, help="runs per side of the comparison, in ABBA order")
    p.add_argument(
        "--reuse-big-run", action="store_true", help="measure convert on the big run a previous call trained"
    )
    p.add_argument("--convert-path", default="", help="a folder put first on PYTHONPATH for the convert step")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_memory.txt")
    args = p.parse_args()
    if not Path("/usr/bin/time").is_file():
        raise SystemExit("/usr/bin/time is missing: apt-get install -y time")

    from edgecls.runtime.bench.machine import cpu_model

    args.work.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# edgecls train/convert memory and speed (issue 10), {date.today()}",
        f"# {cpu_model()}, {os.cpu_count()} cores (shared), {platform.machine()}, "
        f"Python {platform.python_version()}; GB = 2^30 bytes",
        f"# train: edgecls train --data DATA {' '.join(TRAIN[:-2])}",
    ]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    new = str(REPO)
    if args.skip_old and args.out.is_file():  # keep the comparison an earlier call measured
        kept = [l for l in args.out.read_text().splitlines() if l.startswith(("shapes 2,500", "time per image"))]
        lines += (
            [f"(comparison below from an earlier call, {date.fromtimestamp(args.out.stat().st_mtime)})", *kept]
            if kept
            else []
        )
    if not args.skip_old:
        sides = {"before": str(args.old), "streaming": new}
        order = ["before", "streaming", "streaming", "before"] * (args.repeats // 2) + ["before", "streaming"] * (
            args.repeats % 2
        )
        runs = {name: [] for name in sides}
        for i, name in enumerate(order):  # ABBA: a load that drifts during the runs weighs on both sides alike
            run = args.work / f"shapes2500-{name}"
            result = timed(
                ["train", "--data", "shapes", "--out", run, *TRAIN],
                sides[name],
                args.work / f"shapes2500-{name}-{i}.log",
            )
            n = images_used(run)
            runs[name].append(result | {"per_image": train_seconds(run) / n, "cpu_per_image": result["cpu"] / n})
            say(
                f"shapes 2,500 ({name:>9}): {n:,} images, peak RSS {result['rss'] / GB:.2f} GB, train_seconds "
                f"{train_seconds(run):.1f} s = {1000 * runs[name][-1]['per_image']:.1f} ms/image, "
                f"wall {result['wall']:.1f} s, "
                f"CPU {result['cpu']:.0f} s = {1000 * runs[name][-1]['cpu_per_image']:.1f} ms/image, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
        mean = {
            name: {k: sum(r[k] for r in rs) / len(rs) for k in ("per_image", "cpu_per_image")}
            for name, rs in runs.items()
        }
        change = mean["streaming"]["per_image"] / mean["before"]["per_image"] - 1
        cpu = mean["streaming"]["cpu_per_image"] / mean["before"]["cpu_per_image"] - 1
        say(
            f"time per image, streaming vs before (mean of {len(runs['before'])} runs each): {100 * change:+.1f} % "
            f"(train_seconds), {100 * cpu:+.1f} % (CPU time) (target: within +-10 %)"
        )
    if not args.skip_big:
        data = make_dataset(args.data, args.images)
        run, log = args.work / "big-run", args.work / "big-train.log"
        if args.reuse_big_run and (run / "metrics.json").is_file() and log.is_file():
            result = from_log(log)  # measured by an earlier run of this script (the code it trained with unchanged)
            say(f"(train figures below from {log}, written {date.fromtimestamp(log.stat().st_mtime)})")
        else:
            result = timed(["train", "--data", data, "--out", run, *TRAIN], new, log)
        n = images_used(run)
        say(
            f"train on {n:,} images of 256x256: peak RSS {result['rss'] / GB:.2f} GB (target: <= 3 GB), "
            f"{result['wall']:.0f} s wall, {1000 * train_seconds(run) / n:.1f} ms/image, "
            f"test accuracy {json.loads((run / 'metrics.json').read_text())['test_accuracy']:.4f}"
        )
        path = os.pathsep.join(p for p in (args.convert_path, new) if p)
        if args.convert_path:
            say(f"(convert below ran with {args.convert_path} first on PYTHONPATH)")
        bundle = args.work / "big-bundle"
        result = timed(
            ["convert", run, "--out", bundle, "--overwrite"], path, args.work / "big-convert.log", must_pass=False
        )
        head = (
            f"convert of that run: peak RSS {result['rss'] / GB:.2f} GB (target: <= 2 GB), "
            f"{result['wall']:.0f} s wall, "
        )
        if result["code"]:  # the accuracy gate may refuse an artifact of a one-epoch model; memory is still measured
            error = [l for l in Path(result["log"]).read_text().splitlines() if l.startswith("error:")]
            say(head + f"exit {result['code']}: {error[-1] if error else 'see ' + result['log']}")
        else:
            manifest = json.loads((bundle / "manifest.json").read_text())
            say(
                head + f"{len(manifest['artifacts'])} artifacts verified on "
                f"{manifest['source']['test_images']:,} test images, "
                f"{manifest['calibration']['size']} calibration images"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
