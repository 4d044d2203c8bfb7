"""How well does `edgecls search`'s latency model (MACs -> ms) predict candidates it has not seen?

    python -m benchmarks.latency_model --threads 1          # build, convert, measure, fit: results/latency_model.*
    python -m benchmarks.latency_model --report --threads 1 # refit and report from results/latency_model.json
    python -m benchmarks.latency_model --name latency_model_default_threads   # desktop-cpu as it is (no threads set)

Trains nothing: each candidate is an untrained model of the search's families (simple, MobileNetV2, MobileNetV3
Small/Large, EfficientNet-B0) at several widths and input sizes, converted to tflite-int8 by the real converter
(`edgecls import` of the .keras file, calibrated on a few random images) and measured by `DeviceLab` on this
machine (profile desktop-cpu, at --threads or its own: the bench's worker, p50 of the interleaved rounds).
Untrained weights give the latency of trained ones: an int8 graph runs the same kernels on the same shapes
whatever the weights' values (no sparsity or early exit in LiteRT's int8 path). Every candidate is measured
twice in two passes (A then B), so the measurement's own noise stands beside the model's error.

The report: leave-one-out relative error of each form (affine in MACs per family, log-log per family), and a
split fit (half of each family, seeded) predicting the other half: median and worst; then a replay of a search at
a few budgets (latency, then RAM) in 300 random orders, counting the measurements the pruning would have saved
and any wrong prunes.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

# (model, image size, options): MACs from ~0.1 M to ~400 M
CANDIDATES = [
    ("simple", 32, {"widths": (8, 16)}),
    ("simple", 48, {"widths": (8, 16, 32)}),
    ("simple", 64, {"widths": (16, 32)}),
    ("simple", 64, {"widths": (16, 32, 64)}),
    ("simple", 96, {"widths": (16, 32, 64, 128)}),
    ("simple", 96, {"widths": (32, 64, 128)}),
    ("simple", 128, {"widths": (8, 16, 32, 64)}),
    ("simple", 128, {"widths": (16, 32, 64, 128)}),
    ("simple", 160, {"widths": (16, 32, 64, 128)}),
    ("mobilenetv2", 96, {"alpha": 0.35}),
    ("mobilenetv2", 128, {"alpha": 0.35}),
    ("mobilenetv2", 128, {"alpha": 0.5}),
    ("mobilenetv2", 128, {"alpha": 0.75}),
    ("mobilenetv2", 160, {"alpha": 0.5}),
    ("mobilenetv2", 160, {"alpha": 1.0}),
    ("mobilenetv2", 224, {"alpha": 1.0}),
    ("mobilenetv3small", 96, {"alpha": 0.75}),
    ("mobilenetv3small", 128, {"alpha": 1.0}),
    ("mobilenetv3small", 160, {"alpha": 1.0}),
    ("mobilenetv3small", 224, {"alpha": 0.75}),
    ("mobilenetv3large", 128, {"alpha": 0.75}),
    ("mobilenetv3large", 160, {"alpha": 1.0}),
    ("efficientnetb0", 96, {}),
    ("efficientnetb0", 128, {}),
]
NORMALIZE = {"simple": "scale"}  # the backbones take [-1, 1] (their registered default)


def _random_data(folder: Path) -> Path:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            cv2.imwrite(str(folder / label / f"{i}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    (folder.parent / "labels.txt").write_text("a\nb\nc\n")
    return folder


def build_bundle(model: str, size: int, options: dict, folder: Path, data: Path):
    """An untrained candidate as a tflite-int8 bundle (the real converter); returns (Candidate, bundle path)."""
    from edgecls.converters.macs import count_macs, count_params
    from edgecls.importer.api import import_model
    from edgecls.importer.request import Declared, ImportRequest
    from edgecls.models import create_model
    from edgecls.search.types import Candidate

    keras_model = create_model(model, 3, (size, size, 3), **options)
    candidate = Candidate(model, size, "stretch", options, count_macs(keras_model), count_params(keras_model))
    folder.mkdir(parents=True, exist_ok=True)
    keras_model.save(folder / "model.keras")
    request = ImportRequest(
        model=folder / "model.keras",
        out=folder / "bundle",
        labels_file=data.parent / "labels.txt",
        data=data,
        declared=Declared(normalize=NORMALIZE.get(model, "symmetric")),
        max_drop=100.0,  # untrained: the gate would refuse a random model's agreement, and latency is all we want
        formats="tflite-int8",
        overwrite=True,
    )
    import_model(request)
    return candidate, folder / "bundle"


def profile_file(work: Path, threads: int | None) -> str:
    """desktop-cpu at `threads` (None: as it is, the engine's default threads) as a profile file in `work`."""
    if threads is None:
        return "desktop-cpu"
    from dataclasses import asdict

    from edgecls.devices.profiles import load_profile

    data = {**asdict(load_profile("desktop-cpu")), "name": f"desktop-cpu-{threads}t", "threads": threads}
    path = work / f"desktop-cpu-{threads}t.json"
    path.write_text(json.dumps(data))
    return str(path)


def measure_all(work: Path, threads: int | None) -> list:
    """Build every candidate (kept in `work` from an earlier run), then measure all of them in pass A and again
    in pass B (interleaved passes)."""
    from edgecls.search.device import DeviceLab
    from edgecls.search.types import Candidate

    data = _random_data(work / "data" / "images")
    built = []
    for i, (model, size, options) in enumerate(CANDIDATES, 1):
        t = time.time()
        folder = work / f"c{i:02d}"
        if (folder / "bundle" / "manifest.json").is_file() and (folder / "candidate.json").is_file():
            built.append((Candidate.from_dict(json.loads((folder / "candidate.json").read_text())), folder / "bundle"))
            continue
        candidate, bundle = build_bundle(model, size, options, folder, data)
        (folder / "candidate.json").write_text(json.dumps(candidate.to_dict()))
        print(
            f"[{i}/{len(CANDIDATES)}] built {model} {size}px {options}: {candidate.macs / 1e6:.1f} MMACs "
            f"({time.time() - t:.0f} s)",
            flush=True,
        )
        built.append((candidate, bundle))
    lab = DeviceLab(profile_file(work, threads))
    points = [{"candidate": c.to_dict(), "passes": []} for c, _ in built]
    for name in ("A", "B"):
        for point, (candidate, bundle) in zip(points, built):
            m = lab.measure(bundle)
            point["passes"].append(m.to_dict())
            print(
                f"pass {name}: {candidate.model} {candidate.image_size}px {m.latency_ms:.3f} ms "
                f"(rss {m.peak_rss_mb:.0f} MB, {m.seconds:.1f} s)",
                flush=True,
            )
    return points


def trials_of(points: list, which) -> list:
    """Measured Trials from the points, as the search keeps them: pass `which` (0: A, 1: B), or "min": the faster
    of the two (on a shared machine, the pass another process slowed down is the slower one)."""
    from edgecls.search.types import MEETS, Candidate, Measurement, Trial

    def measurement(p):
        passes = p["passes"] if which == "min" else [p["passes"][which]]
        return Measurement.from_dict(min(passes, key=lambda m: m["latency_ms"]))

    return [
        Trial(i, Candidate.from_dict(p["candidate"]), MEETS, measurement=measurement(p)) for i, p in enumerate(points)
    ]


def _rel(pred: float, actual: float) -> float:
    return abs(pred - actual) / actual


def split_errors(trials: list, form: str, seed: int) -> list:
    """Fit on a seeded half of each family, predict the rest: relative errors."""
    from edgecls.search.latency import LatencyModel

    rng = random.Random(seed)
    fit, held = [], []
    for family in sorted({t.candidate.model for t in trials}):
        members = [t for t in trials if t.candidate.model == family]
        rng.shuffle(members)
        half = (len(members) + 1) // 2
        fit += members[:half]
        held += members[half:]
    model = LatencyModel.from_trials(fit, form=form)
    return [_rel(model.predict(t.candidate), t.measurement.latency_ms) for t in held]


ORDERS = 300  # random orders replayed per budget: 10 hid most wrong prunes (they hang on the first few points)


def replay(trials: list, budget_ms: float, seed: int, ram_mb: float | None = None) -> dict:
    """A search's order of candidates at one budget: measured unless the model (fitted so far) prunes it."""
    from edgecls.search.latency import LatencyModel
    from edgecls.search.types import PRUNED, Budget

    order = list(trials)
    random.Random(seed).shuffle(order)
    done, saved, wrong = [], 0, []
    budget = Budget(budget_ms, ram_mb=ram_mb)
    for t in order:
        plausible, _, _ = LatencyModel.from_trials(done).decide(t.candidate, budget)
        if plausible:
            done.append(t)
            continue
        saved += 1
        m = t.measurement
        if m.latency_ms <= budget_ms and (ram_mb is None or m.peak_rss_mb <= ram_mb):  # met it: a wrong prune
            wrong.append(
                f"{t.candidate.model} {t.candidate.image_size}px {json.dumps(t.candidate.model_options)} "
                f"({t.measurement.latency_ms:.2f} ms)"
            )
        done.append(type(t)(t.number, t.candidate, PRUNED))
    meets = sum(
        t.measurement.latency_ms <= budget_ms and (ram_mb is None or t.measurement.peak_rss_mb <= ram_mb)
        for t in trials
    )
    return {"saved": saved, "wrong": len(wrong), "wrongly_pruned": wrong, "meets": meets}


def report(points: list, threads: int | None) -> str:
    from edgecls.runtime.bench.machine import describe

    host = points[0]["passes"][0]["device"]
    lines = [
        "Latency model of `edgecls search` (MACs -> ms per architecture family) on held-out candidates",
        f"device: {host}: tflite-int8 on LiteRT, "
        + (f"{threads} thread(s)" if threads else "the profile's threads (none set: the engine's default)"),
        "CPU: AMD EPYC Zen 4 with AVX-512 VNNI, 2 cores, shared with 3 other engineers' builds and tests: loaded and "
        f"noisy (load average at report time {describe()['load_average']})",
        "candidates: untrained (an int8 graph runs the same kernels on the same shapes whatever its weights' values, "
        "so its latency is a trained one's), converted by the real converter, each measured twice (pass A, then B)",
        f"command: python -m benchmarks.latency_model{f' --threads {threads}' if threads else ''}",
        "",
        f"{'model':<18}{'size':>5} {'options':<27}{'MMACs':>9}{'params':>10}{'A ms':>9}{'B ms':>9}{'B/A':>7}"
        f"{'RSS MB':>8}{'size MB':>9}",
    ]
    noise = []
    for p in points:
        c, (a, b) = p["candidate"], p["passes"]
        noise.append(_rel(b["latency_ms"], a["latency_ms"]))
        options = json.dumps(c["model_options"]).replace(" ", "")
        lines.append(
            f"{c['model']:<18}{c['image_size']:>5} {options:<27}{c['macs'] / 1e6:>9.2f}{c['params']:>10}"
            f"{a['latency_ms']:>9.3f}{b['latency_ms']:>9.3f}{b['latency_ms'] / a['latency_ms']:>7.2f}"
            f"{a['peak_rss_mb']:>8.0f}{a['size_mb']:>9.3f}"
        )
    lines += ["", f"measurement noise, |B - A| / A: median {statistics.median(noise):.1%}, worst {max(noise):.1%}"]
    for which, name in ((0, "pass A"), (1, "pass B"), ("min", "the faster of A and B")):
        lines += ["", f"fitted on {name}:", *_errors_and_replay(trials_of(points, which), replays=which == 0)]
    return "\n".join(lines) + "\n"


def _errors_and_replay(trials: list, replays: bool = True) -> list:
    """Held-out errors of each form, the default model's coefficients, and (`replays`) the replayed searches
    (on pass A only: 300 orders per budget take minutes on the shared machine)."""
    from edgecls.search.latency import FORMS, LatencyModel

    lines = []
    for form in FORMS:
        loo = LatencyModel.from_trials(trials, form=form).held_out_errors()
        splits = [e for seed in range(5) for e in split_errors(trials, form, seed)]
        lines.append(
            f"  {form:<7} leave-one-out ({loo['n']} candidates): median {loo['median']:.1%}, worst {loo['worst']:.1%}; "
            f"half of each family fitted, the other half predicted (5 seeded splits, {len(splits)} predictions): "
            f"median {statistics.median(splits):.1%}, worst {max(splits):.1%}"
        )
    model = LatencyModel.from_trials(trials)
    lines.append(f"  {model.form} (the default) fitted on all: {json.dumps(model.to_dict()['fits'])}")
    budgets = [(ms, None, f"{ms} ms") for ms in (0.25, 0.5, 1.0, 2.0, 3.0, 5.0)]
    budgets += [(1e9, mb, f"RAM {mb} MB") for mb in (72, 73, 74, 75, 76)]
    for budget, ram_mb, name in budgets if replays else []:
        runs = [replay(trials, budget, seed, ram_mb) for seed in range(ORDERS)]
        saved = [r["saved"] for r in runs]
        lines.append(
            f"  replayed search, budget {name} ({runs[0]['meets']} of {len(trials)} meet it), {ORDERS} random "
            f"orders: measurements saved median {statistics.median(saved)} (range {min(saved)}-{max(saved)}), "
            f"wrong prunes (pruned, yet measured within the budget) {sum(r['wrong'] for r in runs)} of "
            f"{sum(saved)} prunes"
            + (
                f": {', '.join(sorted({w for r in runs for w in r['wrongly_pruned']}))}"
                if any(r["wrong"] for r in runs)
                else ""
            )
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="refit from the saved measurements, measure nothing")
    parser.add_argument("--work", default="/tmp/edgecls-latency-model", help="folder for the candidates' bundles")
    parser.add_argument(
        "--threads", type=int, help="desktop-cpu at this many threads (default: the profile's, the engine's default)"
    )
    parser.add_argument("--name", default="latency_model", help="results/NAME.json and results/NAME.txt")
    args = parser.parse_args(argv)
    from edgecls.runtime.atomic import write_text

    if not args.report:
        points = measure_all(Path(args.work), args.threads)
        write_text(RESULTS / f"{args.name}.json", json.dumps(points, indent=1) + "\n")
    points = json.loads((RESULTS / f"{args.name}.json").read_text())
    text = report(points, args.threads)
    write_text(RESULTS / f"{args.name}.txt", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
