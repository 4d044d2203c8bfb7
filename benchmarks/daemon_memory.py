"""Daemon memory over time: RSS after 1,000 frames vs after 10,000 (issue 7: within 10 MB).

    python3 benchmarks/daemon_memory.py BUNDLE [--frames 10000] [--every 1000]

Runs the real daemon (edgecls.runtime.daemon.Daemon) on a looping 640x480 MJPG video, every frame classified
as fast as the model goes, with the HTTP server up and scraped, results going to a counting sink;
samples the process's RSS each `--every` frames. Writes benchmarks/results/daemon_memory.txt and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def write_video(path: Path, frames: int = 60) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    rng = np.random.default_rng(0)
    for i in range(frames):
        image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        cv2.putText(image, str(i % 10), (250, 330), cv2.FONT_HERSHEY_SIMPLEX, 8, (255, 255, 255), 20)
        writer.write(image)
    writer.release()
    return path


class CountingSink:
    def __init__(self):
        self.count = 0

    def write(self, result: dict) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--frames", type=int, default=10_000)
    p.add_argument("--every", type=int, default=1_000)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "daemon_memory"))
    args = p.parse_args()

    from edgecls.runtime.daemon import Daemon

    with tempfile.TemporaryDirectory() as tmp:
        video = write_video(Path(tmp) / "clip.avi")
        sink = CountingSink()
        daemon = Daemon(
            args.bundle,
            [str(video)],
            sinks=[sink],
            port=0,
            max_frames=args.frames,
            source_options={"loop": True, "every_frame": True},
        )
        samples, started = [], time.perf_counter()
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()
        next_mark = args.every
        while runner.is_alive() or sink.count >= next_mark:
            if sink.count >= next_mark:
                if daemon.url:  # a scrape now and then, as Prometheus would
                    urllib.request.urlopen(daemon.url + "/metrics", timeout=10).read()
                samples.append(
                    {
                        "frames": sink.count,
                        "rss_mb": round(rss_mb(), 1),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(
                    f"{sink.count:>7} frames  RSS {samples[-1]['rss_mb']:7.1f} MB  {samples[-1]['seconds']:6.1f} s",
                    flush=True,
                )
                next_mark += args.every
            time.sleep(0.005)
        runner.join()

    at = {s["frames"] // args.every * args.every: s["rss_mb"] for s in samples}
    first, last = at.get(args.every), at.get(args.frames // args.every * args.every)
    growth = None if first is None or last is None else round(last - first, 1)
    record = {
        "bundle": str(args.bundle),
        "frames": sink.count,
        "samples": samples,
        "growth_mb_1k_to_last": growth,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    Path(args.out + ".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# daemon RSS over time: {args.bundle}, looping 640x480 MJPG video, every frame, /metrics scraped",
        f"# {platform.machine()}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
        *(f"{s['frames']:>7} frames  RSS {s['rss_mb']:7.1f} MB  at {s['seconds']:6.1f} s" for s in samples),
        f"growth from {args.every} to {args.frames // args.every * args.every} frames: {growth} MB "
        "(target: within 10 MB)",
    ]
    Path(args.out + ".txt").write_text("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
