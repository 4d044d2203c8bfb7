"""Issue 28 must-show: `edgecls search` on the built-in `shapes` set against this machine, at a budget the default
`simple` model misses, against three hand-picked baselines that meet it.

    nice -n 10 python -m benchmarks.device_search [--work DIR] [--trials 12] [--epochs 10] [--patience 3]
    python -m benchmarks.device_search --summary --work DIR      # the results again from what DIR holds

1. The device: the `desktop-cpu` profile at 1 thread (a profile JSON written into the work folder), measured by
   the search's own DeviceLab (the bench worker, interleaved rounds' median p50 of the int8 artifact).
2. The default `simple` model (edgecls train's defaults on shapes: 48 px RGB, widths 16,32,64,128, two convs a
   block) and three hand-picked baselines are trained, converted and measured by the search's own trial code
   (`edgecls.search.trial.run_trial` with no earlier trials, so nothing is pruned): the same recipe (`edgecls
   search`'s default 10 epochs and patience 3, no augmentation, seed 0, the same split), the same int8 gate, the
   same measurement. The budget is --budget-ms (default 0.1 ms: the default model's int8 artifact takes about
   0.18 ms here).
3. The search, by the CLI (`edgecls search ... --out WORK/search`), killed with SIGKILL once a trial has finished
   training but not yet been measured (so a resumed search must not train it again), then run again with the same
   command: stages.log of every trial shows how often each was trained.
4. The chosen artifact re-measured by `edgecls bench` (the CLI, its default 3 fresh processes and 10 rounds)
   three times, alternated with the search's own DeviceLab re-measuring OUT/bundle (so both see the same load):
   the median of the three bench runs (each run's figure kept) against the figure the search recorded; the latency
   model's leave-one-out error over the measured trials, the error of each prediction made before its trial was
   measured, and what pruning saved.
5. Each trial's origin (trial.json's `origin`: the warm start's default and its scalings, or sampled by TPE), and
   whether the chosen trial and the best baseline were scored on the same test images (their runs' split.json).

The commit of the code measured is recorded in settings.json (run it from a clean worktree of that commit, e.g.
`git worktree add --detach /tmp/snap HEAD`, so edits made in the working tree meanwhile cannot change it).

Writes benchmarks/results/device_search.txt and .json, and docs/img/search-front.png. Everything runs on this
machine's CPUs, shared with other work: latencies are medians of interleaved rounds, still noisy (said in the
results with the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FRONT = REPO / "docs" / "img" / "search-front.png"
PROFILE = "desktop-cpu-1t"
# (name, model, options, size, why)
DEFAULT = (
    "default simple",
    "simple",
    {"widths": [16, 32, 64, 128], "convs_per_block": 2},
    48,
    "edgecls train's default",
)
BASELINES = (
    (
        "simple half width",
        "simple",
        {"widths": [8, 16, 32, 64], "convs_per_block": 2},
        48,
        "the default at half the filters: a quarter of its MACs, what one tries first",
    ),
    (
        "mobilenetv3small a=0.5 minimalistic",
        "mobilenetv3small",
        {"alpha": 0.5, "minimalistic": True},
        48,
        "Keras' smallest MobileNetV3; minimalistic has no hard-swish, which int8 runs slowly here",
    ),
    (
        "mobilenetv2 a=0.35",
        "mobilenetv2",
        {"alpha": 0.35},
        48,
        "the narrowest MobileNetV2 Keras ships, the usual edge baseline",
    ),
)


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def commit() -> str:
    """The commit of the code this script runs (REPO's HEAD), with ' + uncommitted edits' when its tree is dirty."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "edgecls", "runtime", "devices"],
                           capture_output=True, text=True)  # fmt: skip
    return (head.stdout.strip() or "unknown") + (" + uncommitted edits" if dirty.stdout.strip() else "")


def write_profile(work: Path) -> Path:
    """desktop-cpu with threads 1: the device of this benchmark."""
    from edgecls.devices.profiles import load_profile

    data = json.loads((REPO / "devices" / "profiles" / "desktop-cpu.json").read_text())
    data.update(name=PROFILE, threads=1, description="desktop-cpu at 1 thread (benchmarks/device_search.py)")
    path = work / f"{PROFILE}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    load_profile(str(path))  # refuse a profile the product would refuse, here
    return path


def context(args, profile: Path, budget):
    """The TrialContext `edgecls search` would build for these settings (edgecls.search.api._context)."""
    from edgecls.search import api
    from edgecls.search.device import DeviceLab
    from edgecls.search.trial import TrialContext

    cfg = api.SearchConfig(data="shapes", device=str(profile), budget=budget, out=str(args.work / "search"))
    facts = api._data_facts(cfg)
    return TrialContext(
        data=facts["root"],
        budget=budget,
        lab=DeviceLab(str(profile), progress=say),
        data_color=facts["color"],
        num_classes=facts["classes"],
        epochs=args.epochs,
        patience=args.patience,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_drop=cfg.max_drop,
        calibration_size=cfg.calibration_size,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        progress=say,
    )


def run_fixed(work: Path, number: int, spec: tuple, ctx):
    """One hand-picked candidate through the search's own stages (nothing earlier: never pruned); kept on disk."""
    from edgecls.search import trial as trials
    from edgecls.search.types import Candidate, Trial

    name, model, options, size, _ = spec
    folder = work / "baselines" / f"{number:04d}"
    if (folder / trials.TRIAL_JSON).is_file():
        done, _ = trials.load(folder)
        if done.status:
            say(f"{name}: done earlier ({done.status})")
            return done
    folder.mkdir(parents=True, exist_ok=True)
    trial = Trial(number=number, candidate=Candidate(model, size, "stretch", options))
    trials.save(folder, trial)
    say(f"{name}: training, converting, measuring")
    trial = trials.run_trial(trial, folder, ctx, [])
    say(trials.line(trial, number + 1, len(BASELINES) + 1))
    return trial


def search_command(args, profile: Path, budget_ms: float) -> list:
    return [
        sys.executable, "-m", "edgecls.cli", "search", "--data", "shapes", "--device", str(profile),
        "--max-latency-ms", f"{budget_ms:g}", "--trials", str(args.trials), "--epochs", str(args.epochs),
        "--patience", str(args.patience), "--out", str(args.work / "search"),
    ]  # fmt: skip


def stage_lines(out: Path) -> dict:
    """trial number -> its stages.log lines (train started / train done, pid, time)."""
    lines = {}
    for log in sorted((out / "trials").glob("*/stages.log")):
        lines[int(log.parent.name)] = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    return lines


def trial_states(out: Path) -> dict:
    states = {}
    for path in sorted((out / "trials").glob("*/trial.json")):
        states[int(path.parent.name)] = json.loads(path.read_text()).get("status")
    return states


def kill_mid_search(args, command: list, log) -> dict:
    """Start the search; once `--kill-after` trials have finished and a later one has finished training (its bundle
    not yet measured), SIGKILL the search's whole process group. What was on disk at that moment."""
    out = args.work / "search"
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while proc.poll() is None:
        time.sleep(0.5)
        states, stages = trial_states(out), stage_lines(out)
        finished = [n for n, s in states.items() if s]
        trained = [
            n for n, ls in stages.items() if states.get(n) is None and any(l["event"] == "train done" for l in ls)
        ]
        if len(finished) >= args.kill_after and trained:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            say(
                f"SIGKILL to the search while trial {trained[0]} was converting or measuring ({len(finished)} finished)"
            )
            return {"killed_at": time.time(), "finished": finished, "in_flight": trained, "states": states}
    raise SystemExit(f"the search ended (exit {proc.returncode}) before it could be killed: see {log.name}")


def run_search(args, profile: Path, budget_ms: float) -> dict:
    """The search, killed once and resumed to the end; the kill record (kept in WORK/kill.json)."""
    out, record_path = args.work / "search", args.work / "kill.json"
    command = search_command(args, profile, budget_ms)
    if (out / "trials.json").is_file():
        say("search: finished earlier")
        return json.loads(record_path.read_text())
    with open(args.work / "search.log", "a") as log:
        if not record_path.is_file():
            say("search: " + " ".join(command[2:]))
            record = kill_mid_search(args, command, log)
            record["command"] = "edgecls " + " ".join(command[4:])
            record_path.write_text(json.dumps(record, indent=2))
        say("search: resumed with the same command")
        started = time.time()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            raise SystemExit(f"the resumed search exited {done.returncode}: see {args.work / 'search.log'}")
    record = json.loads(record_path.read_text())
    record["resume_seconds"] = round(time.time() - started, 1)
    record_path.write_text(json.dumps(record, indent=2))
    return record


def measure_again(args, bundle: Path, searched) -> dict:
    """The chosen artifact re-measured 3 times by `edgecls bench` (the CLI at 1 thread, its defaults: 3 fresh
    processes, 10 rounds), each run alternated with the search's own DeviceLab re-measuring OUT/bundle, so both
    see the same load; kept in WORK/bench-again.json (a rerun of --summary reuses it)."""
    path = args.work / "bench-again.json"
    if path.is_file():
        return json.loads(path.read_text())
    from edgecls.search.device import DeviceLab

    lab = DeviceLab(str(args.work / f"{PROFILE}.json"), progress=say)
    runs, lab_runs = [], []
    for i in range(3):
        out = args.work / f"bench-chosen-{i}.json"
        command = [sys.executable, "-m", "edgecls.cli", "bench", str(bundle), "--artifacts", searched.artifact]
        command += ["--threads", "1", "--no-keras", "--engines", "", "--json", str(out)]
        say(f"bench run {i + 1}/3: edgecls " + " ".join(command[4:]))
        subprocess.run(command, check=True, capture_output=True, text=True)
        records = json.loads(out.read_text())["records"]
        runs.append(float(next(r["p50_ms"] for r in records if r["artifact"] == searched.artifact)))
        say(f"search's DeviceLab re-measure {i + 1}/3")
        lab_runs.append(lab.measure(str(bundle)).latency_ms)
    again = {
        "search_p50_ms": searched.latency_ms,
        "bench_runs_p50_ms": runs,
        "bench_p50_ms": statistics.median(runs),
        "lab_runs_p50_ms": lab_runs,
        "lab_p50_ms": statistics.median(lab_runs),
        "order": "bench, lab, bench, lab, bench, lab",
    }
    path.write_text(json.dumps(again, indent=2))
    return again


def trial_origins(out: Path) -> dict:
    """trial number -> where it came from (trial.json's `origin`: a warm start, or sampled by TPE)."""
    origins = {}
    for path in sorted((out / "trials").glob("*/trial.json")):
        data = json.loads(path.read_text())
        origins[int(data["number"])] = data.get("origin") or "not recorded"
    return origins


def same_test_split(chosen, baselines) -> dict:
    """Whether the chosen trial's run and each baseline's were tested on the very same images (split.json)."""

    def test_files(trial):
        try:
            return sorted(json.loads((Path(trial.run_dir) / "split.json").read_text())["splits"]["test"])
        except (TypeError, OSError, ValueError, KeyError):
            return None

    mine = test_files(chosen)
    return {str(b.number): mine is not None and mine == test_files(b) for b in baselines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="work folder (kept; a rerun reuses what finished)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--budget-ms", type=float, default=0.1)
    parser.add_argument("--kill-after", type=int, default=3, help="finished trials before the SIGKILL")
    parser.add_argument("--summary", action="store_true", help="only write the results from --work")
    args = parser.parse_args()
    args.work = Path(args.work or tempfile.mkdtemp(prefix="device-search-")).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        measure_all(args)
    summarize(args)


def measure_all(args) -> None:
    from edgecls.search.types import Budget

    started = time.time()
    say(f"work folder {args.work}")
    profile = write_profile(args.work)
    budget = Budget(args.budget_ms)
    settings = {**vars(args), "work": str(args.work), "commit": commit()}
    (args.work / "settings.json").write_text(json.dumps(settings, indent=2))
    ctx = context(args, profile, budget)
    for number, spec in enumerate((DEFAULT, *BASELINES)):
        run_fixed(args.work, number, spec, ctx)
    run_search(args, profile, args.budget_ms)
    say(f"measured in {time.time() - started:.0f} s")


def summarize(args) -> None:
    """benchmarks/results/device_search.{txt,json} and docs/img/search-front.png from what WORK holds."""
    from edgecls.search import report
    from edgecls.search.api import finished
    from edgecls.search.types import Budget

    settings = json.loads((args.work / "settings.json").read_text())
    budget = Budget(settings["budget_ms"])
    fixed = [fixed_trial(args.work, n) for n in range(len(BASELINES) + 1)]
    if any(t is None or not t.status for t in fixed):
        raise SystemExit(f"the default and the baselines are not all measured in {args.work}: run without --summary")
    out = args.work / "search"
    trials = finished(out)
    chosen = report.choose(trials, budget)
    origins = trial_origins(out)
    doc = {
        "machine": machine(),
        "commit": settings.get("commit") or commit(),
        "settings": {k: settings[k] for k in ("trials", "epochs", "patience", "budget_ms", "kill_after")},
        "device": f"{PROFILE}: the desktop-cpu profile at 1 thread, on this machine",
        "budget_ms": budget.latency_ms,
        "default": figures(fixed[0], DEFAULT, budget),
        "baselines": [figures(t, spec, budget) for t, spec in zip(fixed[1:], BASELINES)],
        "chosen": figures(chosen, None, budget) if chosen else None,
        "trials": [{**figures(t, None, budget), "origin": origins.get(t.number, "")} for t in trials],
        "front": [t.number for t in report.pareto_front(trials)],
    }
    if chosen:
        doc["chosen"]["origin"] = origins.get(chosen.number, "")
        doc["bench_again"] = measure_again(args, out / "bundle", chosen.measurement)
        shipped = (out / "bundle" / "manifest.json").read_bytes()
        doc["bench_again"]["out_bundle_is_the_chosen_trials"] = (
            shipped == (out / "trials" / f"{chosen.number:04d}" / "bundle" / "manifest.json").read_bytes()
        )
        report.plot_front(trials, budget, FRONT, title=f"edgecls search on shapes: {doc['device']}")
    doc["same_test_split"] = same_test_split(chosen, fixed[1:]) if chosen else None
    doc["latency_model"] = latency_model(trials)
    doc["kill"] = kill_story(args.work)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "device_search.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "device_search.txt").write_text("\n".join(text_lines(doc)) + "\n")
    say(f"wrote {RESULTS / 'device_search.txt'}, {RESULTS / 'device_search.json'}" + (f", {FRONT}" if chosen else ""))


def fixed_trial(work: Path, number: int):
    from edgecls.search import trial as trials

    folder = work / "baselines" / f"{number:04d}"
    return trials.load(folder)[0] if (folder / trials.TRIAL_JSON).is_file() else None


def machine() -> dict:
    from edgecls.runtime.bench.machine import describe

    info = describe()
    flags = "AVX-512 VNNI" if "avx512_vnni" in info.get("cpu_flags", []) else "no VNNI"
    return {
        "cpu": info.get("cpu") or platform.processor(),
        "summary": f"{info.get('cpu')} ({flags}), {info.get('cores_usable')} cores, {info.get('os')}",
        "load": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def figures(trial, spec, budget) -> dict:
    """One trial's row: what it is, its measured figures, its accuracies (the test split is the same for all)."""
    from edgecls.search import report
    from edgecls.search.space import describe

    m, run = trial.measurement, Path(trial.run_dir) if trial.run_dir else None
    metrics = json.loads((run / "metrics.json").read_text()) if run and (run / "metrics.json").is_file() else {}
    return {
        "number": trial.number,
        "name": spec[0] if spec else describe(trial.candidate),
        "why": spec[4] if spec else "",
        "candidate": describe(trial.candidate),
        "network": json.dumps([trial.candidate.model, trial.candidate.model_options, trial.candidate.image_size]),
        "macs": trial.candidate.macs,
        "params": trial.candidate.params,
        "status": trial.status,
        "predicted_ms": trial.predicted_ms,
        "p50_ms": m.latency_ms if m else None,
        "p90_ms": m.latency_p90_ms if m else None,
        "peak_rss_mb": m.peak_rss_mb if m else None,
        "measure_s": m.seconds if m else None,
        "artifact": m.artifact if m else None,
        "artifact_sha256": artifact_sha256(trial.bundle_dir, m.artifact if m else None),
        "val_accuracy": trial.val_accuracy,
        "keras_test_accuracy": metrics.get("test_accuracy"),
        "int8_test_accuracy": trial.test_accuracy,
        "test_images": test_images(run),
        "meets": report.meets(trial, budget),
        "train_s": trial.train_seconds,
        "convert_s": trial.convert_seconds,
        "reason": trial.reason,
    }


def artifact_sha256(bundle: str | None, artifact: str | None) -> str | None:
    """The measured artifact's sha256 from its bundle's manifest: two trials with the same one timed the same file."""
    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        return next(a["sha256"] for a in manifest["artifacts"] if a["name"] == artifact)
    except (TypeError, OSError, ValueError, KeyError, StopIteration):
        return None


def test_images(run: Path | None) -> int | None:
    """How many images the run's test split holds (its split.json)."""
    try:
        return len(json.loads((run / "split.json").read_text())["splits"]["test"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def latency_model(trials) -> dict:
    """Leave-one-out error of the model fitted to every measured trial; the error of each prediction made before
    its trial was measured; what pruning saved (measured trials' median device and train+convert seconds)."""
    from edgecls.search.latency import LatencyModel
    from edgecls.search.types import PRUNED

    measured = [t for t in trials if t.measurement is not None]
    ahead = [
        abs(t.predicted_ms - t.measurement.latency_ms) / t.measurement.latency_ms
        for t in measured
        if t.predicted_ms is not None
    ]
    pruned = [t for t in trials if t.status == PRUNED]
    device_s = statistics.median([t.measurement.seconds for t in measured]) if measured else 0.0
    work_s = statistics.median([t.train_seconds + t.convert_seconds for t in measured]) if measured else 0.0
    return {
        "leave_one_out": LatencyModel.from_trials(trials).held_out_errors(),
        "predicted_before_measured": {
            "n": len(ahead),
            "median": statistics.median(ahead) if ahead else None,
            "worst": max(ahead) if ahead else None,
        },
        "trials": len(trials),
        "measured": len(measured),
        "pruned": len(pruned),
        "device_seconds_saved": round(len(pruned) * device_s, 1),
        "train_convert_seconds_saved": round(len(pruned) * work_s, 1),
        "median_measure_s": device_s,
        "median_train_convert_s": work_s,
    }


def kill_story(work: Path) -> dict:
    """The kill record and, per trial, how often training started and finished (stages.log)."""
    record = json.loads((work / "kill.json").read_text()) if (work / "kill.json").is_file() else {}
    stages = stage_lines(work / "search")
    counts = {
        n: {e: sum(1 for l in lines if l["event"] == e) for e in ("train started", "train done")}
        for n, lines in stages.items()
    }
    record["trainings"] = counts
    record["trained_twice"] = [n for n, c in counts.items() if c["train done"] > 1]
    record["restarted"] = [
        n for n, c in counts.items() if c["train started"] > c["train done"] or c["train started"] > 1
    ]
    return record


def _pct(value) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else "-"


def _ms(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def row(r: dict) -> str:
    return (
        f"{r['number']:>3} {r['candidate'][:58]:<58} {r['status'] or 'running':<13} {_ms(r['predicted_ms']):>7} "
        f"{_ms(r['p50_ms']):>7} {_pct(r['val_accuracy']):>7} {_pct(r['keras_test_accuracy']):>7} "
        f"{_pct(r['int8_test_accuracy']):>7}"
    )


HEADER = (
    f"{'#':>3} {'candidate':<58} {'status':<13} {'pred ms':>7} {'p50 ms':>7} {'val':>7} {'test':>7} {'int8 test':>7}"
)


def text_lines(doc: dict) -> list:
    m, b = doc["machine"], doc["budget_ms"]
    lines = [
        "# edgecls search on the built-in shapes set (2,500 images, 5 classes, 48 px RGB) against this machine",
        f"# device: {doc['device']}; {m['summary'] or m['cpu']}; load {', '.join(f'{x:.2f}' for x in m['load'])} "
        f"at the end; {m['when']}",
        f"# code measured: edgecls at commit {doc.get('commit') or 'not recorded'}",
        "# 2 CPU cores shared with other engineers' work: latencies are medians of interleaved rounds, still noisy",
        f"# recipe for every model (search trials and baselines alike): {doc['settings']['epochs']} epochs, early "
        f"stopping patience {doc['settings']['patience']}, no augmentation, seed 0, one split (test = 500 images), "
        "int8 through the 1-point gate, the int8 artifact the profile runs measured at 1 thread",
        f"# reproduce: nice -n 10 python -m benchmarks.device_search --trials {doc['settings']['trials']} "
        f"--epochs {doc['settings']['epochs']} --patience {doc['settings']['patience']} --budget-ms {b:g}",
        "",
        f"budget: {b:g} ms p50 (tflite-int8 invoke, 1 thread)",
        f"default simple model: {_ms(doc['default']['p50_ms'])} ms p50: "
        + ("MISSES the budget" if not doc["default"]["meets"] else "meets the budget (pick a lower --budget-ms)"),
        "",
        "baselines (hand-picked, trained, converted and measured exactly as the search's trials):",
        HEADER,
        *[row(r) + f"  {r['name']}: {r['why']}" for r in (doc["default"], *doc["baselines"])],
        "",
        *verdict(doc),
        "",
        f"all {len(doc['trials'])} search trials (# = OUT/trials/NNNN; front: {', '.join(map(str, doc['front']))}; "
        "accuracies: val = Keras on the validation split, test = Keras on the test split, int8 test = the shipped "
        "artifact; origin = trial.json's: the warm start or sampled by TPE):",
        HEADER + "  origin",
        *[row(r) + f"  {r.get('origin') or '-'}" for r in doc["trials"]],
        *origin_lines(doc["trials"]),
        "",
        *model_lines(doc["latency_model"]),
        "",
        *kill_lines(doc["kill"]),
        "",
        *same_network_lines(doc),
        "",
        "front: docs/img/search-front.png (the search's own front.png, retitled)",
    ]
    return lines


def same_network_lines(doc: dict) -> list:
    """The same network measured more than once (a baseline the search drew again, or two resize modes of a
    square-image set, which give one and the same model): how far apart its measurements are, the noise floor."""
    groups: dict = {}
    for where, rows in (("baseline", [doc["default"], *doc["baselines"]]), ("trial", doc["trials"])):
        for r in rows:
            if r["p50_ms"] is not None:
                groups.setdefault(r["network"], []).append((f"{where} {r['number']}", r["p50_ms"]))
    lines = []
    for seen in groups.values():
        if len(seen) > 1:
            lo, hi = min(v for _, v in seen), max(v for _, v in seen)
            shown = ", ".join(f"{w} {_ms(v)}" for w, v in seen)
            lines.append(f"the same network measured {len(seen)} times: {shown} ms ({(hi / lo - 1) * 100:.0f} % apart)")
    return lines or ["no network was measured twice"]


def verdict(doc: dict) -> list:
    chosen, within = doc["chosen"], [r for r in doc["baselines"] if r["meets"]]
    if not chosen:
        return ["the search chose nothing: no trial met the budget"]
    lines = [
        f"chosen: trial {chosen['number']} ({chosen.get('origin') or 'origin not recorded'}): {chosen['candidate']}, "
        f"{_ms(chosen['p50_ms'])} ms p50"
    ]
    if not within:
        return [*lines, "no baseline met the budget: nothing to compare the chosen model with"]
    best = max(within, key=lambda r: (r["int8_test_accuracy"] or 0, -(r["p50_ms"] or 0)))
    gain = (chosen["int8_test_accuracy"] or 0) - (best["int8_test_accuracy"] or 0)
    n = chosen.get("test_images") or 500
    word = "AT LEAST AS ACCURATE AS" if gain >= 0 else "LESS ACCURATE THAN"
    same = (doc.get("same_test_split") or {}).get(str(best["number"]))
    lines += twin_lines(doc, chosen) + [
        f"best baseline whose own timing met the budget: {best['name']}: int8 test {_pct(best['int8_test_accuracy'])}, "
        f"{_ms(best['p50_ms'])} ms p50",
        f"the search's choice is {word} the best baseline: int8 test {_pct(chosen['int8_test_accuracy'])} vs "
        f"{_pct(best['int8_test_accuracy'])} ({gain * 100:+.1f} points, {gain * n:+.0f} of {n} test images); "
        f"Keras test {_pct(chosen['keras_test_accuracy'])} vs {_pct(best['keras_test_accuracy'])}; "
        + ("the same test images (split.json identical)" if same else "NOT shown to be the same test images"),
    ]
    return lines + bench_lines(doc, chosen)


def twin_lines(doc: dict, chosen: dict) -> list:
    """A baseline that is the chosen network itself (seeded training: the same weights): the search ties it, whatever
    the budget call its own noisy measurement got; the same artifact file (sha256) says so outright."""
    lines = []
    for r in doc["baselines"]:
        if r["network"] != chosen["network"]:
            continue
        same_file = r.get("artifact_sha256") and r["artifact_sha256"] == chosen.get("artifact_sha256")
        apart = (max(r["p50_ms"], chosen["p50_ms"]) / min(r["p50_ms"], chosen["p50_ms"]) - 1) * 100
        lines.append(
            f"the chosen network IS baseline {r['number']} ({r['name']})"
            + (", the very same int8 file (sha256 equal)" if same_file else "")
            + f": int8 test {_pct(r['int8_test_accuracy'])} both; against it the search TIES, it found nothing more "
            f"accurate within the budget. Timed {_ms(r['p50_ms'])} ms as the baseline and {_ms(chosen['p50_ms'])} ms "
            f"in the search ({apart:.0f} % apart on this shared machine)"
            + ("" if r["meets"] else ": the baseline's one timing landed over the budget, so the line below skips it")
        )
    return lines


def bench_lines(doc: dict, chosen: dict) -> list:
    again = doc.get("bench_again")
    if not again:
        return []
    ratio = again["bench_p50_ms"] / again["search_p50_ms"]
    ok = "within" if abs(ratio - 1) <= 0.15 else "NOT within"
    lines = [
        f"re-measured by `edgecls bench OUT/bundle --artifacts {chosen['artifact']} --threads 1` (3 runs, alternated "
        "with the search's DeviceLab re-measuring OUT/bundle): bench runs "
        + ", ".join(_ms(v) for v in again.get("bench_runs_p50_ms", [again["bench_p50_ms"]]))
        + f" ms p50, median {_ms(again['bench_p50_ms'])} ms vs the search's {_ms(again['search_p50_ms'])} ms: "
        f"{(ratio - 1) * 100:+.1f} %, {ok} 15 %"
        + (
            ""
            if again.get("out_bundle_is_the_chosen_trials", True)
            else " (OUT/bundle is NOT the chosen trial's bundle)"
        )
    ]
    if again.get("lab_runs_p50_ms"):
        lines.append(
            "the search's DeviceLab on OUT/bundle between those runs: "
            + ", ".join(_ms(v) for v in again["lab_runs_p50_ms"])
            + f" ms p50, median {_ms(again['lab_p50_ms'])} ms"
        )
    return lines


def origin_lines(rows: list) -> list:
    """How many trials each source proposed, and the best each reached within the budget."""
    groups: dict = {}
    for r in rows:
        kind = "warm start" if (r.get("origin") or "").startswith("warm start") else (r.get("origin") or "-")
        groups.setdefault(kind, []).append(r)
    lines = []
    for kind, members in groups.items():
        good = [r for r in members if r["meets"] and r["int8_test_accuracy"] is not None]
        best = max(good, key=lambda r: r["int8_test_accuracy"]) if good else None
        lines.append(
            f"{kind}: {len(members)} trials ({', '.join(str(r['number']) for r in members)}); best within budget: "
            + (f"trial {best['number']}, int8 test {_pct(best['int8_test_accuracy'])}" if best else "none")
        )
    return lines


def model_lines(lm: dict) -> list:
    loo, ahead = lm["leave_one_out"], lm["predicted_before_measured"]
    return [
        f"latency model (MACs -> ms on this device), leave-one-out over the {loo['n']} measured trials: median "
        f"{_pct(loo['median'])}, worst {_pct(loo['worst'])} relative error",
        f"predictions made before their trial was measured (n {ahead['n']}): median {_pct(ahead['median'])}, worst "
        f"{_pct(ahead['worst'])}",
        f"pruned before training: {lm['pruned']} candidates ({lm['measured']} trials measured on the device, "
        f"{lm['trials']} rows in the table); "
        f"device time saved about {lm['device_seconds_saved']:.0f} s ({lm['pruned']} x the median "
        f"measurement, {lm['median_measure_s']:.1f} s), train + convert about "
        f"{lm['train_convert_seconds_saved']:.0f} s",
    ]


def kill_lines(kill: dict) -> list:
    if not kill.get("finished") and not kill.get("in_flight"):
        return ["kill -9: not run"]
    twice = kill["trained_twice"]
    return [
        f"kill -9: the search was killed (SIGKILL to its process group) with trials {kill['finished']} finished and "
        f"trial {kill['in_flight']} trained but not yet measured; the same command then resumed it "
        f"({kill.get('resume_seconds', '-')} s to the end)",
        "trainings per trial after the resume (stages.log: started/done): "
        + ", ".join(f"{n}: {c['train started']}/{c['train done']}" for n, c in sorted(kill["trainings"].items())),
        "no trial was trained twice" if not twice else f"TRAINED TWICE: trials {twice}",
    ]


if __name__ == "__main__":
    main()
