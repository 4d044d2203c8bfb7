"""Daemon throughput against the model's own speed (issue 7: frames/s >= 0.85 x 1 / invoke).

    python3 benchmarks/daemon_throughput.py BUNDLE [--artifact tflite-int8] [--threads 1] [--seconds 20] [--rounds 3]
        [--competing 1] [--out benchmarks/results/daemon_throughput]

Side by side, in one process and alternating: (a) the artifact's bare invoke on a prepared tensor, timed
in a tight loop (the best the model can do), and (b) the real daemon (edgecls.runtime.daemon.Daemon) classifying
every frame of a looping 640x480 MJPG video, a source faster than the model, with the HTTP server up.
Frames/s counts results published after a 2 s warm-up; `--competing N` runs N CPU-bound busy loops meanwhile
(the issue's "one competing process"), and each round records the load average. Writes OUT.txt and OUT.json.

`--sources N` runs N copies of the clip as N sources sharing the one model: the ratio is then their frames/s in
total. `--fps F` paces each source at F frames/s like a camera that keeps only its newest frame (frames the model
has no time for are dropped by design, not a loss), and each round reports every source's frames/s and its
latency from capture to result (`frame_age_ms` of each result), p50 and p99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_video(path: Path, frames: int = 90) -> Path:
    """A camera-like clip: smooth gradients and a moving shape (noise would make decoding the bottleneck)."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    y, x = np.mgrid[0:480, 0:640]
    for i in range(frames):
        image = np.stack([(x // 3 + i) % 256, (y // 2) % 256, ((x + y) // 5) % 256], axis=-1).astype(np.uint8)
        cv2.circle(image, (100 + 5 * i, 240), 80, (40, 200, 255), -1)
        cv2.putText(image, str(i % 10), (300, 330), cv2.FONT_HERSHEY_SIMPLEX, 6, (255, 255, 255), 12)
        writer.write(image)
    writer.release()
    return path


def invoke_ms(classifier, runs: int = 300) -> float:
    """Median of the backend's own run() on one prepared tensor: the model alone."""
    import numpy as np

    tensor = classifier.prepare(np.zeros((480, 640, 3), np.uint8), "bgr")[None]
    backend = classifier.session.backend
    for _ in range(30):
        backend.run(tensor)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        backend.run(tensor)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


class Collect:
    """A sink keeping the publish times, sources, ages and per-step latencies of the results."""

    def __init__(self):
        self.times, self.pre, self.infer, self.post, self.sources, self.ages = [], [], [], [], [], []

    def write(self, result: dict) -> None:
        self.times.append(time.perf_counter())
        lat = result["latency_ms"]
        self.pre.append(lat["pre"])
        self.infer.append(lat["infer"])
        self.post.append(lat["post"])
        self.sources.append(result["source"])
        self.ages.append(result["frame_age_ms"])

    def close(self) -> None:
        pass


def _percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def daemon_fps(classifier, videos, seconds: float, warmup: float = 2.0, fps: float | None = None) -> dict:
    """The real daemon on `videos` (a path, or one path per source) for `seconds` after `warmup`: every frame as fast
    as the model takes them, or each source paced at `fps` keeping only its newest frame."""
    from edgecls.runtime.daemon import Daemon

    videos = [videos] if isinstance(videos, (str, Path)) else list(videos)
    paced = {"loop": True, "every_frame": False, "realtime": True, "fps": fps}
    sink = Collect()
    daemon = Daemon(
        None,
        [str(v) for v in videos],
        classifier=classifier,
        sinks=[sink],
        port=0,
        duration=seconds + warmup,
        source_options=paced if fps else {"loop": True, "every_frame": True},
    )
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    runner.join()
    start = sink.times[0] + warmup
    kept = [i for i, t in enumerate(sink.times) if t >= start]
    span = sink.times[kept[-1]] - sink.times[kept[0]]
    per_source = {}
    for supervisor in daemon.supervisors:  # every source, one without a result after the warm-up too
        mine = [i for i in kept if sink.sources[i] == supervisor.name]
        ages = [sink.ages[i] for i in mine]
        own = sink.times[mine[-1]] - sink.times[mine[0]] if len(mine) > 1 else 0.0
        per_source[supervisor.name] = {
            "fps": round((len(mine) - 1) / own, 1) if own else 0.0,
            "latency_p50_ms": round(_percentile(ages, 50), 2) if ages else None,
            "latency_p99_ms": round(_percentile(ages, 99), 2) if ages else None,
        }
    return {
        "fps": (len(kept) - 1) / span,
        "frames": len(kept),
        "pre_ms": statistics.median(sink.pre[i] for i in kept),
        "infer_ms": statistics.median(sink.infer[i] for i in kept),
        "post_ms": statistics.median(sink.post[i] for i in kept),
        "per_source": per_source,
    }


def cpu_name() -> str:
    from edgecls.runtime.bench.machine import cpu_model

    return cpu_model() or platform.processor() or "unknown CPU"


def measure_rounds(classifier, video: Path, args) -> list:
    """`args.rounds` rounds of invoke, daemon, invoke; one printed line per round."""
    rounds = []
    for r in range(args.rounds):
        before = invoke_ms(classifier)
        run = daemon_fps(classifier, video, args.seconds, fps=args.fps)
        after = invoke_ms(classifier)
        invoke = statistics.median([before, after])
        rounds.append(
            {
                "invoke_ms": round(invoke, 3),
                "invoke_before_ms": round(before, 3),
                "invoke_after_ms": round(after, 3),
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in run.items()},
                "ratio": round(run["fps"] * invoke / 1000, 3),
                "load_average": [round(v, 2) for v in os.getloadavg()],
            }
        )
        print(
            f"round {r + 1}: invoke {invoke:.2f} ms (1/invoke {1000 / invoke:.0f}/s)  "
            f"daemon {run['fps']:.0f} frames/s "
            f"over {run['frames']} frames  ratio {rounds[-1]['ratio']:.2f}  (pre {run['pre_ms']:.2f} ms, "
            f"infer {run['infer_ms']:.2f} ms, post {run['post_ms']:.3f} ms)",
            flush=True,
        )
        if len(run["per_source"]) > 1 or args.fps:
            print("  " + source_line(run["per_source"]), flush=True)
    return rounds


def source_line(per_source: dict) -> str:
    """Each source's frames/s and capture-to-result latency p50/p99, numbered in the order they started."""
    return "; ".join(
        f"source {n + 1}: {s['fps']:.1f}/s, latency p50 {s['latency_p50_ms']:.1f} p99 {s['latency_p99_ms']:.1f} ms"
        if s["latency_p50_ms"] is not None
        else f"source {n + 1}: no result after the warm-up"
        for n, s in enumerate(per_source.values())
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--artifact", default="tflite-int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--competing", type=int, default=0, help="CPU-bound Python busy loops running meanwhile")
    p.add_argument(
        "--own-session",
        action="store_true",
        help="start each busy loop in a session of its own (another service's), not as this one's child",
    )
    p.add_argument("--sources", type=int, default=1, help="copies of the clip, each a source sharing the model")
    p.add_argument("--fps", type=float, help="pace each source at this rate, newest frame only (default: every frame)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "daemon_throughput"))
    args = p.parse_args()

    from benchmarks.threads import competing
    from edgecls.runtime.atomic import write_text
    from edgecls.runtime.classifier import Classifier

    classifier = Classifier(args.bundle, artifact=args.artifact, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp, competing(args.competing, own_session=args.own_session):
        clip = write_video(Path(tmp) / "clip.avi")
        video = [clip] * args.sources if args.sources > 1 else clip
        rounds = measure_rounds(classifier, video, args)
    ratio = statistics.median(r["ratio"] for r in rounds)
    machine = f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    record = {
        "bundle": str(args.bundle),
        "artifact": args.artifact,
        "threads": args.threads,
        "competing_processes": args.competing,
        "competing_in_own_session": args.own_session,
        "sources": args.sources,
        "fps_per_source": args.fps,
        "backend": classifier.backend_name,
        "rounds": rounds,
        "median_ratio": ratio,
        "machine": machine,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out + ".json", json.dumps(record, indent=2) + "\n")
    lines = [
        f"# daemon throughput vs invoke: {args.bundle} {args.artifact}, {args.threads} inference thread(s), "
        f"{classifier.backend_name}; {args.sources} source(s) of a looping 640x480 MJPG video, "
        f"{f'each paced at {args.fps:g} frames/s (newest frame only)' if args.fps else 'every frame'}; "
        f"{args.competing} competing CPU-bound process(es)"
        + (" each in a session of its own" if args.own_session and args.competing else ""),
        f"# {machine}, {time.strftime('%Y-%m-%d')}",
        *(
            f"round {i + 1}: invoke {r['invoke_ms']:.2f} ms -> {1000 / r['invoke_ms']:.0f}/s; "
            f"daemon {r['fps']:.0f} frames/s; "
            f"ratio {r['ratio']:.2f}; per frame pre {r['pre_ms']:.2f} ms "
            f"infer {r['infer_ms']:.2f} ms post {r['post_ms']:.3f} ms"
            + (f"\n  {source_line(r['per_source'])}" if len(r["per_source"]) > 1 or args.fps else "")
            for i, r in enumerate(rounds)
        ),
        f"median ratio frames/s x invoke: {ratio:.2f} "
        + (
            f"(the sources offer {args.sources * args.fps:g} frames/s in all: this is the model's share they use)"
            if args.fps
            else "(issue 25: >= 0.95 at rest, >= 0.88 beside one CPU-bound process, >= 0.9 in total with 4 sources)"
        ),
    ]
    write_text(args.out + ".txt", "\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
