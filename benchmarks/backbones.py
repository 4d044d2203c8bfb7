"""The backbone table: params, MACs, int8 drop per format and dataset, latency per format, side by side.

    nice -n 10 python -m benchmarks.backbones [--work DIR] [--size 96] [--epochs 4] [--rounds 5]

Every backbone of the registry that comes from Keras applications (MobileNetV2, MobileNetV3-Small and
-Large, EfficientNet-B0) is trained from scratch by `edgecls train` (random init: no network here for
ImageNet weights), briefly, at a small size, on two sets:

- shapes: the built-in synthetic set (5 classes);
- photos: six distinct real photos of scikit-image (astronaut, coffee, chelsea, rocket, hubble deep
  field, immunohistochemistry), one class each, 80 random crops (a third to four fifths of a side,
  flips, brightness) per photo, made offline here: a stand-in for a real photo set.

Then `edgecls convert` twice per run: (1) every format with `--max-drop 100 --no-qat` (the drop of each
format's first, post-training attempt, measured and never refused; this bundle is the one timed) and
(2) the formats that lost more than 1 point again under the default gate (1 point, `--qat remedy`): does
a remedy (more calibration data, percentile/entropy calibration, the ends kept in float, QAT) rescue it,
or does convert refuse in one line? Latency: every artifact of the shapes bundles, one image per call
on one thread (the model alone, input already quantized), interleaved: each round times every artifact
of every backbone in turn; the figure is the median over all rounds. Writes benchmarks/results/backbones.txt.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import _runs

BACKBONES = ("mobilenetv2", "mobilenetv3small", "mobilenetv3large", "efficientnetb0")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
FORMATS = ("tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8")
INT8 = ("tflite-int8", "onnx-int8")


def make_photos(folder: Path, per_class: int = 80, side: int = 128, seed: int = 0) -> Path:
    """Random crops of six distinct photos, one class per photo (PNG files, class-per-folder)."""
    from PIL import Image
    from skimage import data

    if (folder / PHOTOS[-1]).is_dir():
        return folder
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        photo = getattr(data, name)()[..., :3]
        h, w = photo.shape[:2]
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            crop = int(min(h, w) * rng.uniform(0.33, 0.8))
            y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            image = Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side), Image.BILINEAR)
            pixels = np.asarray(image, np.float32) * rng.uniform(0.7, 1.3)
            if rng.random() < 0.5:
                pixels = pixels[:, ::-1]
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name / f"{i:03d}.png")
    return folder


def drops(manifest: dict) -> dict:
    """Accuracy points each artifact lost against the Keras model on the test split."""
    reference = manifest["reference_accuracy"]
    return {a["name"]: 100 * (reference - a["accuracy"]) for a in manifest["artifacts"]}


def remedy(run: Path, out: Path, failing: list) -> dict:
    """The failing formats again under the default gate: format -> what happened, in a few words."""
    done = _runs.cli("convert", run, "--out", out, "--formats", ",".join(failing), "--overwrite", check=False)
    if done.returncode:
        line = next((l for l in reversed(done.stderr.splitlines()) if l.startswith("error")), done.stderr[-300:])
        return {f: f"refused: {line.strip()}" for f in failing}
    manifest = json.loads((out / "manifest.json").read_text())
    found = drops(manifest)
    return {
        a["name"]: f"passed, -{found[a['name']]:.2f} points ({a['notes'].get('remedy') or 'first attempt'})"
        for a in manifest["artifacts"]
    }


def model_counts(run: Path, size: int) -> tuple:
    import keras

    from edgecls.converters.macs import count_macs, count_params

    model = keras.models.load_model(run / "model.keras", compile=False)
    return count_params(model), count_macs(model)


def time_bundles(bundles: dict, rounds: int, runs: int) -> dict:
    """(backbone, artifact) -> median ms over all rounds, each round timing every artifact in turn."""
    from edgecls.runtime.bundle import load_bundle
    from edgecls.runtime.session import ModelSession, quantize

    sessions = {}
    for name, path in bundles.items():
        bundle = load_bundle(path)
        x = np.random.default_rng(0).random((1, *bundle.manifest.preprocess.shape), dtype=np.float32)
        for art in bundle.manifest.artifacts:
            session = ModelSession.for_artifact(bundle.verify(art), bundle.manifest, art, threads=1)
            batch = quantize(x, session.backend.input_spec)
            for _ in range(10):
                session.backend.run(batch)
            sessions[name, art.name] = (session, batch)
    times: dict = {key: [] for key in sessions}
    for r in range(rounds):
        for key, (session, batch) in sessions.items():
            for _ in range(runs):
                t = time.perf_counter()
                session.backend.run(batch)
                times[key].append((time.perf_counter() - t) * 1000)
        print(f"latency round {r + 1}/{rounds} done", flush=True)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per artifact per round")
    parser.add_argument("--out", default="benchmarks/results/backbones.txt")
    args = parser.parse_args()
    started = time.perf_counter()
    work = _runs.work_folder(args.work, "edgecls-backbones-")
    sets = {"shapes": "shapes", "photos": str(make_photos(work / "photos-data"))}
    rows, bundles = {}, {}
    for name in BACKBONES:
        for set_name, data in sets.items():
            print(f"{name} on {set_name}: training", flush=True)
            run = work / f"{name}-{set_name}"
            summary = _runs.train(
                run, "--data", data, "--model", name, "--image-size", args.size, "--epochs", args.epochs, "--seed", 0
            )
            print(f"{name} on {set_name}: converting", flush=True)
            manifest = _runs.convert(run, work / f"{name}-{set_name}.bundle", "--max-drop", 100, "--no-qat")
            lost = drops(manifest)
            failing = [f for f in INT8 if lost[f] > 1.0]
            rescued = remedy(run, work / f"{name}-{set_name}-gate.bundle", failing) if failing else {}
            rows[name, set_name] = {"accuracy": summary["accuracy"], "drops": lost, "remedies": rescued}
            print(f"{name} on {set_name}: {json.dumps(rows[name, set_name])}", flush=True)
            if set_name == "shapes":
                bundles[name] = work / f"{name}-{set_name}.bundle"
    latency = time_bundles(bundles, args.rounds, args.runs)
    lines = _table(rows, latency, {n: model_counts(work / f"{n}-shapes", args.size) for n in BACKBONES}, args)
    _runs.write_results(Path(args.out), lines, started, work)


def _table(rows: dict, latency: dict, counts: dict, args) -> list:
    lines = [
        f"# backbones at {args.size} px, trained from scratch {args.epochs} epochs (edgecls train, seed 0); "
        f"CPU: {platform.processor() or platform.machine()} (AMD EPYC Zen 4, AVX-512 VNNI), 2 cores shared with "
        "6 other engineers' work: noisy, compare within a round",
        f"# latency: one image per call, 1 thread, {args.rounds} interleaved rounds x {args.runs} calls, median ms",
        "",
        f"{'backbone':18} {'params':>9} {'MACs':>7}  " + "  ".join(f"{f:>11}" for f in FORMATS),
    ]
    for name in BACKBONES:
        params, macs = counts[name]
        cells = "  ".join(f"{latency.get((name, f), float('nan')):>8.2f} ms" for f in FORMATS)
        lines.append(f"{name:18} {params / 1e6:>8.2f}M {macs / 1e6:>6.1f}M  {cells}")
    lines += [
        "",
        "# int8 drop: accuracy points lost against the Keras model on the test split (+ = lost), first post-training "
        "attempt",
    ]
    lines.append(f"{'backbone':18} {'set':7} {'keras acc':>9}  " + "  ".join(f"{f:>11}" for f in INT8))
    for (name, set_name), row in rows.items():
        cells = "  ".join(f"{row['drops'][f]:>+11.2f}" for f in INT8)
        lines.append(f"{name:18} {set_name:7} {row['accuracy']:>8.2f}%  {cells}")
    lines += ["", "# formats that lost more than 1 point, converted again under the default gate (--max-drop 1)"]
    for (name, set_name), row in rows.items():
        for fmt, outcome in row["remedies"].items():
            lines.append(f"{name} {set_name} {fmt}: {outcome}")
    if not any(row["remedies"] for row in rows.values()):
        lines.append("(none lost more than 1 point)")
    return lines


if __name__ == "__main__":
    main()
