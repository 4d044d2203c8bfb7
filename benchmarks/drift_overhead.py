"""What drift monitoring costs per frame (issue 12): `SourceLoop.classify` with and without a drift window.

    python3 benchmarks/drift_overhead.py BUNDLE [--artifact tflite-int8] [--frames 3000] [--rounds 5]

Side by side in one process, taking turns frame by frame: the same 640x480 BGR camera frame through two loops over one
classifier, one with drift monitoring (brightness measured, window updated, checks amortized) and one without.
Reports the median per-frame time of each, the difference in microseconds and percent. A tiny model makes the
overhead most visible: on a real model it disappears in the inference time. Writes
benchmarks/results/drift_overhead.txt.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Named:
    def __init__(self, name):
        self.name = name


class _Frame:
    def __init__(self, image, index):
        self.image, self.index, self.source, self.name, self.age_ms = image, index, "cam", None, 0.0


def per_frame_us(loops, image, frames: int) -> list:
    """Median per loop of `frames` timings of loop.classify, the loops taking turns frame by frame (so a busy
    machine slows both alike)."""
    times = [[] for _ in loops]
    for i in range(frames):
        for loop, spent in zip(loops, times):
            t = time.perf_counter()
            loop.classify(_Frame(image, i))
            spent.append(time.perf_counter() - t)
    return [statistics.median(t) * 1e6 for t in times]


def main(argv=None) -> int:
    import numpy as np

    from edgecls.runtime.classifier import Classifier
    from edgecls.runtime.daemon.loop import SourceLoop
    from edgecls.runtime.monitor.drift import DriftMonitor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--artifact")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "drift_overhead.txt"))
    args = parser.parse_args(argv)

    clf = Classifier(args.bundle, args.artifact, threads=1)
    monitor = DriftMonitor(500)
    if monitor.reference_for(clf) is None:
        print("the bundle has no reference statistics: convert it again", file=sys.stderr)
        return 1
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([(x // 3) % 256, (y // 2) % 256, ((x + y) // 5) % 256], axis=-1).astype(np.uint8)
    plain = SourceLoop(_Named("cam"), clf, lambda r: None)
    watched = SourceLoop(_Named("cam"), clf, lambda r: None, drift=monitor.source("cam"))
    per_frame_us([plain, watched], image, 200)  # warm up both
    lines = [
        f"# drift overhead: {args.bundle} {clf.artifact.name} ({clf.backend_name}, 1 thread), 640x480 BGR frame "
        f"-> {clf.spec.height}x{clf.spec.width}; SourceLoop.classify median per frame, {args.frames} frames "
        f"a round",
        f"# {platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
    ]
    off, on = [], []
    for r in range(args.rounds):
        a, b = per_frame_us([plain, watched] if r % 2 else [watched, plain], image, args.frames)
        off.append(a if r % 2 else b)
        on.append(b if r % 2 else a)
        lines.append(
            f"round {r + 1}: without drift {off[-1]:.1f} us, with drift {on[-1]:.1f} us, "
            f"+{on[-1] - off[-1]:.1f} us ({100 * (on[-1] / off[-1] - 1):+.1f} %)"
        )
    a, b = statistics.median(off), statistics.median(on)
    lines.append(f"median: without {a:.1f} us, with {b:.1f} us: +{b - a:.1f} us per frame ({100 * (b / a - 1):+.1f} %)")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
