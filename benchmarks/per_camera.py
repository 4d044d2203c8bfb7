"""What per-camera settings cost and save (issue 30): the view per frame, and max_fps's CPU time.

    python3 benchmarks/per_camera.py BUNDLE [--frames 300] [--rounds 5] [--seconds 8] [--pairs 3]

1. The view on the hot path: a 640x480 and a 1280x720 BGR frame through `SourceView.apply` and then
   `preprocess.pixels` (the resize to the bundle's input size that `Classifier.prepare` does), for no view, a ROI (the
   middle half of each side), rotate 90, rotate 180, and both. The variants take turns frame by frame (a busy
   machine slows them alike); medians per variant, and the ratio to no view. Beside them, rotating after the resize
   (on the model-size pixels), the alternative the view does not take: it is not exact (section 1b counts the
   pixels it changes per resize mode). OpenCV runs on one thread here (cv2.setNumThreads(1)): its idle worker
   threads otherwise compete with the timed thread on a busy 2-core machine, and a no-op read 0.5 ms.
2. max_fps: a real `edgecls run` (a subprocess) on a 640x480 video paced at 30 fps, with `--set cam.max_fps=5` and
   without, taking turns: frames classified per second (from /metrics) and the process's CPU seconds per second
   (/proc/PID/stat, user + system), medians over the pairs.

Writes benchmarks/results/per_camera.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = ((640, 480), (1280, 720))
VIEWS = {  # name -> (roi, rotate)
    "none": (None, 0),
    "roi": ((0.25, 0.25, 0.5, 0.5), 0),
    "rotate 90": (None, 90),
    "rotate 180": (None, 180),
    "roi + rotate 90": ((0.25, 0.25, 0.5, 0.5), 90),
    "roi + rotate 180": ((0.25, 0.25, 0.5, 0.5), 180),
}


def view_costs(spec, width: int, height: int, frames: int, rounds: int) -> dict:
    """Median microseconds per variant: {name: (view alone, view + resize)}, plus the rotate-after-resize variant."""
    import cv2
    import numpy as np

    from edgecls.runtime.preprocess import pixels
    from edgecls.runtime.view import SourceView

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    views = {name: SourceView("cam", roi, rotate) for name, (roi, rotate) in VIEWS.items()}
    alone = {name: [] for name in views}
    full = {name: [] for name in [*views, "resize, then rotate 180"]}
    for _ in range(rounds):
        for _ in range(frames):
            for name, view in views.items():
                t0 = time.perf_counter()
                seen = view.apply(image)
                t1 = time.perf_counter()
                px = pixels(seen, spec, "bgr")
                del seen, px  # freeing is part of the frame's cost (and not the next variant's)
                t2 = time.perf_counter()
                alone[name].append(t1 - t0)
                full[name].append(t2 - t0)
            t0 = time.perf_counter()
            px = cv2.rotate(pixels(image, spec, "bgr"), cv2.ROTATE_180)
            del px
            full["resize, then rotate 180"].append(time.perf_counter() - t0)
    median = lambda values: statistics.median(values) * 1e6  # noqa: E731
    return {name: (median(alone[name]) if name in alone else None, median(full[name])) for name in full}


def after_resize_differences(width: int, height: int, size: int = 224) -> list:
    """Lines: for each resize mode (box-linear), the model pixels that differ between rotating the frame and
    rotating after the resize (for 90: resized to the swapped size first), of size x size x 3."""
    import cv2
    import numpy as np

    from edgecls.runtime.preprocess import RESIZE_MODES, PreprocessSpec, pixels

    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8), (5, 5), 0)
    lines = []
    for mode in RESIZE_MODES:
        spec = PreprocessSpec(size, size, resize=mode)
        counts = []
        for code in (cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE):
            exact = pixels(cv2.rotate(image, code), spec, "bgr").astype(int)
            after = cv2.rotate(pixels(image, spec, "bgr"), code)
            counts.append(f"{int((exact != after).sum())} differ (max {int(np.abs(exact - after).max())})")
        lines.append(f"  {width}x{height} {mode:<12} rotate 180: {counts[0]:<22} rotate 90: {counts[1]}")
    return lines


def write_clip(path: Path, frames: int = 90) -> Path:
    """A 640x480 MJPG video at 30 fps: a white disc moving across a grey ramp."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    ramp = np.tile(np.linspace(30, 200, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
    for i in range(frames):
        image = ramp.copy()
        cv2.circle(image, (40 + 6 * i, 240), 60, (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return path


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _processed(url: str) -> float:
    body = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^edgecls_frames_processed_total\{source="cam"\} (\S+)$', body, re.M))


def daemon_run(bundle: str, clip: Path, max_fps: float | None, seconds: float) -> tuple:
    """(classified frames per second, CPU seconds per second) of a real `edgecls run` over `seconds`."""
    command = [sys.executable, "-m", "edgecls.cli", "run", bundle, "--source", f"cam={clip}", "--loop", "--port", "0"]
    command += ["--results", os.devnull] + (["--set", f"cam.max_fps={max_fps:g}"] if max_fps else [])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline and process.poll() is None:
            started = [json.loads(x) for x in list(lines) if x.startswith('{"event": "started"')]
            url = started[0]["url"] if started else None
            time.sleep(0.05)
        if url is None:
            raise SystemExit("the daemon did not start:\n" + "".join(lines)[-2000:])
        time.sleep(2.0)  # model loaded, first frames classified
        t0, cpu0, n0 = time.monotonic(), _cpu_seconds(process.pid), _processed(url)
        time.sleep(seconds)
        t1, cpu1, n1 = time.monotonic(), _cpu_seconds(process.pid), _processed(url)
        return (n1 - n0) / (t1 - t0), (cpu1 - cpu0) / (t1 - t0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def main(argv=None) -> int:
    import cv2

    from edgecls.runtime.bundle import load_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--frames", type=int, default=300, help="frames per round and variant (part 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per daemon run (part 2)")
    parser.add_argument("--pairs", type=int, default=3, help="capped and uncapped runs, taking turns (part 2)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "per_camera.txt"))
    args = parser.parse_args(argv)
    spec = load_bundle(args.bundle).manifest.preprocess
    cv2.setNumThreads(1)
    out = [
        f"# per-camera settings: cost of the view per frame, and CPU saved by max_fps ({time.strftime('%Y-%m-%d')})",
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other work (noisy: "
        "compare side by side, medians and ratios)",
        f"# command: python3 benchmarks/per_camera.py {' '.join(sys.argv[1:] if argv is None else argv)}",
        f"# bundle input {spec.width}x{spec.height} {spec.color}, resize {spec.resize}, interpolation "
        f"{spec.interpolation}",
        "",
        "## 1. The view, then the resize to the model's size (microseconds per frame, medians, variants interleaved)",
    ]
    for width, height in SIZES:
        costs = view_costs(spec, width, height, args.frames, args.rounds)
        base = costs["none"][1]
        out += ["", f"{width}x{height} frame:", f"  {'view':<26}{'view alone':>12}{'view+resize':>13}{'ratio':>8}"]
        for name, (alone, total) in costs.items():
            shown = "-" if alone is None else f"{alone:.1f}"
            out.append(f"  {name:<26}{shown:>12}{total:>13.1f}{total / base:>8.2f}")
        print("\n".join(out[-len(costs) - 2 :]), flush=True)
    out += [
        "",
        "## 1b. Rotating after the resize instead: model pixels that differ from rotating the crop (of 224x224x3)",
    ]
    for width, height in SIZES:
        out += after_resize_differences(width, height)
    print("\n".join(out[-6:]), flush=True)
    out += ["", "## 2. max_fps = 5 on a 640x480 video paced at 30 fps (real `edgecls run`, runs taking turns)"]
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "clip.avi")
        runs = {"no cap": [], "max_fps 5": []}
        for pair in range(args.pairs):
            for name, cap in (("no cap", None), ("max_fps 5", 5.0)):
                rate, cpu = daemon_run(args.bundle, clip, cap, args.seconds)
                runs[name].append((rate, cpu))
                print(f"pair {pair + 1}: {name}: {rate:.2f} classified/s, {cpu:.3f} CPU s/s", flush=True)
                out.append(f"  pair {pair + 1} {name:<10} {rate:6.2f} classified/s  {cpu:.3f} CPU s/s")
    med = {name: [statistics.median(v[i] for v in values) for i in (0, 1)] for name, values in runs.items()}
    out += [
        "",
        f"  medians: no cap {med['no cap'][0]:.2f} classified/s, {med['no cap'][1]:.3f} CPU s/s; "
        f"max_fps 5 {med['max_fps 5'][0]:.2f} classified/s, {med['max_fps 5'][1]:.3f} CPU s/s",
        f"  CPU with max_fps 5 / without: {med['max_fps 5'][1] / med['no cap'][1]:.2f} "
        f"(classified frames: {med['max_fps 5'][0] / med['no cap'][0]:.2f}); the video is still decoded at 30 fps",
    ]
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out[-3:]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
