"""`--artifact fastest` on MobileNetV2-224 (issue 25 point 4): bench, choose, flash, and the daemon's rate with
the choice against the profile's own first artifact.

    python -m benchmarks.fastest_choice [--work DIR] [--rounds 5] [--frames 300]

Builds (once, cached in --work) MobileNetV2 alpha 1.0 at 224x224 as benchmarks/bench_reference.py does (random
initial weights trained one epoch on generated shapes: its speed, not its accuracy, is the point; the accuracy gate
is open) with two artifacts, tflite-int8 and onnx-int8; runs `edgecls bench --data --json` (OpenVINO's row where it
is installed); `edgecls flash --device intel-cpu --artifact fastest --bench` into a local folder; then the real
daemon (`edgecls run --every-frame --max-frames N --results`) on a 640x480 MJPG clip, interleaved A,B,A,B: A with
`--artifact fastest` on the flashed folder, B with intel-cpu's own choice (onnx-int8 in OpenVINO) on the bundle,
both at one thread (the bench's); each round's artifact and engine are the daemon's own (its -v log line).
The rate is (frames - 1) / (last ts - first ts) of the results, so start-up is not counted; medians of the rounds.
Writes benchmarks/results/fastest_choice.txt and fastest_choice_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results"


def build_bundle(work: Path) -> Path:
    """MobileNetV2-224 with tflite-int8 and onnx-int8 (cached in `work`)."""
    from benchmarks.bench_reference import _shapes_folder
    from edgecls.converters.formats import FORMATS
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.train import TrainConfig, train

    bundle, run, data = work / "mnv2-bundle", work / "mnv2-run", work / "shapes224"
    if (bundle / "manifest.json").is_file():
        return bundle
    if not data.is_dir():
        _shapes_folder(data)
    if not (run / "metadata.json").is_file():
        print("training MobileNetV2-224 (one epoch) ...", flush=True)
        cfg = TrainConfig(
            data=str(data), out=str(run), model="mobilenetv2", model_options={"alpha": 1.0}, image_size=224,
            epochs=1, batch_size=16, seed=0, verbose=0,
        )  # fmt: skip
        train(cfg)
    print("converting (tflite-int8, onnx-int8) ...", flush=True)
    formats = [f for f in FORMATS.values() if f.name in ("tflite-int8", "onnx-int8")]
    convert(run, bundle, ConvertOptions(formats=formats, calibration_size=32, max_drop=100.0))
    return bundle


def cli(*args, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "edgecls.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )
    if check and done.returncode != 0:
        raise SystemExit(f"edgecls {args[0]} failed: {done.stderr[-2000:]}")
    return done


def clip(path: Path, frames: int = 60) -> Path:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    writer.release()
    return path


def daemon_rate(current: Path, video: Path, results: Path, frames: int, env: dict, *options) -> dict:
    """Frames per second of the real daemon, from its results' timestamps, and its median infer step."""
    results.unlink(missing_ok=True)
    done = cli("-v", "run", current, "--source", video, "--loop", "--every-frame", "--max-frames", frames,
               "--results", results, *options, env=env)  # fmt: skip
    lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    span = lines[-1]["ts"] - lines[0]["ts"]
    loaded = re.findall(r"loaded (\S+) \(\S+\) with (\S+)", done.stderr)  # -v: the Classifier's own log line
    return {
        "fps": (len(lines) - 1) / span,
        "infer_ms": statistics.median(r["latency_ms"]["infer"] for r in lines),
        "artifact": lines[-1]["model"]["artifact"],
        "backend": loaded[-1][1] if loaded else "not logged",
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgecls-fastest-choice"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    bundle = build_bundle(args.work)
    bench = args.work / "bench.json"
    print("benchmarking ...", flush=True)
    cli("bench", bundle, "--threads", "1", "--repeats", "1", "--runs", "100", "--rounds", "10", "--no-keras",
        "--data", args.work / "shapes224", "--json", bench)  # fmt: skip
    profiles = args.work / "profiles"
    env = {"EDGECLS_PROFILES": str(profiles)}
    profiles.mkdir(exist_ok=True)
    device = args.work / "device"
    # --no-smoke: the smoke test's latency budget is a real intel-cpu's, which a shared machine under load misses
    # (the chosen engine is still checked to load here before the flash)
    flashed = cli("flash", bundle, device, "--device", "intel-cpu", "--artifact", "fastest", "--bench", bench,
                  "--no-smoke", env=env)  # fmt: skip
    chosen = [line for line in flashed.stderr.splitlines() if "fastest" in line or "left out" in line]
    video = clip(args.work / "clip.avi")
    runs = {"fastest": [], "intel-cpu": []}
    for r in range(args.rounds):  # A, B, A, B: load from other processes falls on both alike
        # B runs the bundle itself: the flashed release holds only the chosen artifact
        for name, model, options in (
            ("fastest", device / "current", ("--artifact", "fastest", "--device", "intel-cpu")),
            ("intel-cpu", bundle, ("--device", "intel-cpu", "--threads", "1")),
        ):
            result = daemon_rate(model, video, args.work / "results.jsonl", args.frames, env, *options)
            runs[name].append(result)
            print(f"round {r + 1} {name}: {result['fps']:.1f} fps, infer {result['infer_ms']:.2f} ms", flush=True)
    write(bench, chosen, runs, args, load_before)


def write(bench: Path, chosen: list, runs: dict, args, load_before: list) -> None:
    doc = json.loads(bench.read_text())
    m = doc["machine"]
    lines = [
        "# --artifact fastest on MobileNetV2-224 (python -m benchmarks.fastest_choice)",
        f"machine: {m['cpu']}, {m['cores']} cores (shared with other work), {m['arch']}, flags "
        f"{','.join(m['cpu_flags'])}; load average (os.getloadavg) at the start {load_before}, at the bench "
        f"{m['load_average']}",
        "",
        "bench (edgecls bench --threads 1 --rounds 10 --data: p50 = median of the interleaved round medians;",
        "spread = (max - min) / median of the round medians: rows within it of the fastest are tied, and the",
        "profile's order chooses among them):",
    ]
    for r in doc["records"]:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        spread = "-" if r.get("round_spread_pct") is None else f"{r['round_spread_pct']:.1f} %"
        lines.append(
            f"  {r['artifact']:<20} {r['backend']:<12} p50 {r['p50_ms']:7.3f} ms  spread {spread:>7}  accuracy {acc}"
        )
    lines += [
        "",
        "edgecls flash --device intel-cpu --artifact fastest --bench bench.json:",
        *map("  {}".format, chosen),
    ]
    lines += ["", f"the daemon, {args.frames} frames of a 640x480 MJPG clip, --every-frame, {args.rounds} rounds A,B:"]
    for name, results in runs.items():
        fps = [x["fps"] for x in results]
        infer = statistics.median(x["infer_ms"] for x in results)
        served = ", ".join(sorted({f"{x['artifact']} in {x['backend']}" for x in results}))  # every round's
        lines.append(
            f"  {name:<10} {served}: fps {', '.join(f'{f:.1f}' for f in fps)} (median {statistics.median(fps):.1f})"
        )
        each = ", ".join(f"{x['infer_ms']:.2f}" for x in results)
        lines.append(f"  {'':<10} infer ms {each} (median {infer:.2f})")
    a, b = (statistics.median(x["fps"] for x in runs[k]) for k in ("fastest", "intel-cpu"))
    pairs = list(zip(runs["fastest"], runs["intel-cpu"]))
    faster = sum(x["fps"] > y["fps"] for x, y in pairs)
    quicker = sum(x["infer_ms"] < y["infer_ms"] for x, y in pairs)
    lines.append(
        f"  ratio of the medians, fastest / intel-cpu's own choice: fps {a / b:.2f}; the choice had the higher fps in "
        f"{faster} of {len(pairs)} rounds, the lower infer median in {quicker} of {len(pairs)}"
    )
    lines.append(f"  load average after: {[round(x, 2) for x in os.getloadavg()]}; finished {time.ctime()}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fastest_choice.txt").write_text("\n".join(lines) + "\n")
    (OUT / "fastest_choice_bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
