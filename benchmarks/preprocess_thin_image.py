"""Center-crop before and after issue 15 point 1: crop in source pixels, then resize once.

Times the old (resize the whole image, then crop) and the new center-crop side by side on
camera-sized frames, interleaved round by round so both see the same machine load, and
preprocesses the 1x65000 PNG in a child process to measure its peak-RSS growth. The old
code is run on that file only under a 2 GB address-space limit (it needs ~10 GB).

    python benchmarks/preprocess_thin_image.py [--rounds 30] [--calls 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecls.runtime.atomic import write_text  # noqa: E402
from edgecls.runtime.preprocess import PreprocessSpec, _interpolation, resize  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "preprocess_thin_image.txt"


def old_center_crop(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The center-crop branch of `edgecls.runtime.preprocess.resize` before the fix, verbatim."""
    h, w = image.shape[:2]
    th, tw = spec.height, spec.width
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    scaled = cv2.resize(image, (nw, nh), interpolation=_interpolation(cv2, spec.interpolation, (h, w), (nh, nw)))
    top, left = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(scaled[top : top + th, left : left + tw])


def _per_call_us(fn, image, spec, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(image, spec)
    return (time.perf_counter() - start) / calls * 1e6


def time_frames(rounds: int, calls: int) -> list:
    rows = []
    rng = np.random.default_rng(0)
    for h, w in ((480, 640), (720, 1280), (1080, 1920)):
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        spec = PreprocessSpec(224, 224, resize="center-crop", dtype="uint8")
        old, new = [], []
        for _ in range(rounds):  # interleaved: a busy moment on the machine hits both
            old.append(_per_call_us(old_center_crop, image, spec, calls))
            new.append(_per_call_us(resize, image, spec, calls))
        rows.append((f"{w}x{h}", statistics.median(old), statistics.median(new)))
    return rows


_THIN = r"""
import json, resource, sys, time
import cv2, numpy as np
sys.path.insert(0, sys.argv[3])
from edgecls.runtime.preprocess import PreprocessSpec, load_image, preprocess, resize
from benchmarks.preprocess_thin_image import old_center_crop
which, path = sys.argv[1], sys.argv[2]
spec = PreprocessSpec(224, 224, resize="center-crop", dtype="uint8")
fn = resize if which == "new" else old_center_crop
fn(np.zeros((8, 8, 3), np.uint8), spec)  # warm up OpenCV
vm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, ((vm_kb << 10) + (2 << 30), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    out = fn(load_image(path), spec)
    result = {"shape": list(out.shape)}
except Exception as exc:
    result = {"error": str(exc).strip().splitlines()[-1][:200]}
result["seconds"] = time.perf_counter() - start
result["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""


def thin_image(which: str, path: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _THIN, which, str(path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()

    lines = [
        "# center-crop to 224x224: old (resize whole image, then crop) vs new (crop, then resize once)",
        f"# {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), Python {platform.python_version()}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}; cv2 threads {cv2.getNumThreads()}; "
        f"load average {os.getloadavg()[0]:.1f} at the start",
        f"# median of {args.rounds} interleaved rounds x {args.calls} calls, microseconds per call",
        "",
        f"{'frame':>10} {'old us':>9} {'new us':>9} {'new/old':>8}",
    ]
    for frame, old, new in time_frames(args.rounds, args.calls):
        lines.append(f"{frame:>10} {old:9.1f} {new:9.1f} {new / old:8.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "thin.png"
        cv2.imwrite(str(png), np.full((1, 65000, 3), 128, np.uint8))
        lines += [
            "",
            f"1x65000 PNG ({png.stat().st_size} bytes) -> 224x224 center-crop, in a child process "
            f"limited to +2 GB of address space:",
        ]
        for which in ("old", "new"):
            r = thin_image(which, png)
            outcome = f"shape {r['shape']}" if "shape" in r else f"failed: {r['error']}"
            lines.append(
                f"  {which}: {outcome}; {r.get('seconds', float('nan')):.3f} s; "
                f"peak RSS growth {r.get('rss_growth_mb', float('nan')):.1f} MB"
            )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    write_text(RESULT, text)


if __name__ == "__main__":
    main()
