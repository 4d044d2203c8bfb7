"""`search(cfg)`: run trials until `cfg.trials` reached training, then write the report and the chosen model.

What counts toward --trials: trials that reached training (measured, over budget, gate-failed, failed). A
candidate pruned by the latency model cost no training and no device time, so it is extra; proposals stop at
MAX_PROPOSALS x --trials in all, with a line saying the space is mostly over budget. The first trials are the
warm start (study.py): `edgecls train`'s default, then the default scaled down to the budget.

OUT, everything written atomically:
  search.json       what was asked (data, device, budget, space) and the data's fingerprint (its classes and
                    the seeded split's files and sizes): a resumed search or a second worker must ask the same
                    of the same data; `trials` may grow. Its "format" marks OUT as a search of ours.
  study.journal     Optuna's journal (study.py): resumable after a kill, shared by workers through file locks
  trials/NNNN/      trial.json, stages.log, run/, bundle/ (trial.py)
  trials.csv, trials.json, front.png   the table and the Pareto front (report.py)
  run/, bundle/     the chosen trial's run and bundle, copied whole: `edgecls flash OUT/bundle ...` takes it;
                    the report counts as written only once OUT/bundle holds the chosen trial's manifest (or
                    trials.json says none was chosen, and then every run says so again, exiting non-zero)

Several workers: start the same `edgecls search ... --out OUT` on several machines with OUT on a shared
filesystem (NFS, SMB: one whose locks all of them see). Each claims new trials under OUT/.search.lock, so
together they train exactly `trials` (a running trial counts until it is pruned, then another is claimed); the
device lab serialises their measurements. The worker that finishes the
last trial writes the report; `report(out)` (`edgecls search --report OUT`) rewrites it from the disk.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecls.core.progress import progress as say
from edgecls.runtime.atomic import _STAGE, remove_stale_stages, write_json
from edgecls.runtime.errors import EdgeclsError
from edgecls.search import space
from edgecls.search import study as studies
from edgecls.search import trial as trials_
from edgecls.search.types import PRUNED, STATUSES, Budget, Trial

SEARCH_JSON, LOCK = "search.json", ".search.lock"
FORMAT = "edgecls-search/1"
FRONT_PNG = "front.png"
MAX_REPEATS = 50  # proposals in a row that repeat a tried candidate: the space is used up
MAX_PROPOSALS = 3  # x --trials: candidates proposed in all (pruned ones included) before the search gives up
# What a search of ours holds at its top level; --overwrite replaces nothing else.
CONTENTS = {
    SEARCH_JSON,
    LOCK,
    studies.JOURNAL,
    trials_.TRIALS_DIR,
    "trials.csv",
    "trials.json",
    FRONT_PNG,
    "run",
    "bundle",
}


@dataclass
class SearchConfig:
    data: str
    device: str  # a profile name or JSON (measured here), or user@host[:port]
    budget: Budget
    out: str
    trials: int = 12
    models: tuple = space.DEFAULT_MODELS
    sizes: tuple | None = None  # None: space.default_sizes(the data's size)
    epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    seed: int = 0
    max_drop: float = 1.0  # accuracy points the int8 artifact may lose (the gate)
    calibration_size: int = 100
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    profile: str | None = None  # an SSH device's profile
    ssh_config: str | None = None
    overwrite: bool = False
    measure: object = None  # device.MeasureSettings: how long each measurement times (None: the lab's default)

    def settings(self) -> dict:
        """What must be the same to resume or join a search: everything but trials, overwrite, the measurement's
        length and how the device is reached (ssh_config: each host its own)."""
        data = self.data if not os.path.exists(self.data) else os.path.abspath(self.data)
        kept = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("trials", "overwrite", "out", "data", "measure", "ssh_config")
        }
        kept.update(
            data=data,
            budget=self.budget.to_dict(),
            models=list(self.models),
            sizes=None if self.sizes is None else [int(s) for s in self.sizes],
        )
        return kept


@dataclass
class SearchResult:
    out: Path
    trials: list = field(default_factory=list)  # every finished Trial
    chosen: Trial | None = None
    reported: bool = False  # False: other workers still run trials; the last of them writes the report
    seconds: float = 0.0


def _positive(flag: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EdgeclsError(f"{flag} {value!r} is not a budget: use a number above 0")


def validate(cfg: SearchConfig) -> None:
    """One-line errors for every setting, before anything is read or written."""
    _positive("--max-latency-ms", cfg.budget.latency_ms)
    _positive("--max-ram-mb", cfg.budget.ram_mb, optional=True)
    _positive("--max-size-mb", cfg.budget.size_mb, optional=True)
    from edgecls.converters.options import check_max_drop

    check_max_drop(cfg.max_drop)  # nan, inf or negative: every candidate would train, then fail the gate
    for flag, value, low in (
        ("--trials", cfg.trials, 1),
        ("--epochs", cfg.epochs, 1),
        ("--patience", cfg.patience, 0),
        ("--batch-size", cfg.batch_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise EdgeclsError(f"{flag} {value!r} is out of range: use a whole number of {low} or more")
    unknown = [m for m in cfg.models if m not in space.MODELS]
    if not cfg.models or unknown:
        raise EdgeclsError(f"--models {','.join(unknown) or '(none)'}: choose among {', '.join(space.MODELS)}")
    if cfg.sizes is not None and (not cfg.sizes or any(not 8 <= int(s) <= 1024 for s in cfg.sizes)):
        raise EdgeclsError(f"--sizes {cfg.sizes}: give image sizes from 8 to 1024, e.g. --sizes 32,48,64")
    if not str(cfg.data or "").strip():
        raise EdgeclsError("no --data given: pass a class-per-folder directory or a built-in name (digits, shapes)")


def _apart(out, root) -> None:
    """OUT inside the data would become a class of it (and the data inside OUT would go with --overwrite)."""
    out, root = Path(os.path.abspath(out)).resolve(), Path(root).resolve()
    if out == root or root in out.parents or out in root.parents:
        raise EdgeclsError(f"--out {out} and the data {root} overlap: choose an --out outside the data")


def _is_ours(out: Path) -> bool:
    try:
        doc = json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and str(doc.get("format", "")).startswith("edgecls-search/")


def prepare_out(cfg: SearchConfig, fingerprint: dict | None = None, lab=None) -> tuple:
    """(OUT, resumed?): a new, empty or missing OUT is started; a search of ours with the same settings (and
    data `fingerprint`, when both have one) is resumed (or with --overwrite replaced); anything else is refused,
    naming why; with `lab` (a DeviceLab), the machine it measures is recorded, and a local profile's search resumed
    or joined from another machine is refused. Decided under OUT's lock, so workers started together agree: the
    first writes search.json, the others join it."""
    out = Path(os.path.abspath(cfg.out))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgeclsError(f"--out {out} is not a folder: choose another --out")
    if out.is_dir() and not (out / SEARCH_JSON).exists() and not (out / LOCK).exists():
        _refuse_foreign(out)  # before the lock file is made in someone else's folder
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        entries = [p for p in out.iterdir() if p.name != LOCK]
        machine = lab.describe() if lab is not None else None
        new = {"format": FORMAT, "settings": cfg.settings(), "data": fingerprint, "machine": machine, "artifact": None}
        if not entries:
            write_json(out / SEARCH_JSON, new)
            return out, False
        _refuse_foreign(out)
        if not cfg.overwrite:
            _check_same(out, cfg, fingerprint)
            refused = lab.same_machine(_doc(out).get("machine")) if lab is not None else None
            if refused:
                raise EdgeclsError(refused)
            return out, True
        remove_stale_stages(out)  # OUT/run's or OUT/bundle's stage left by a killed report
        entries = [p for p in out.iterdir() if p.name != LOCK]
        foreign = sorted(p.name for p in entries if p.name not in CONTENTS and not _our_stage(p.name))
        if foreign:
            raise EdgeclsError(
                f"--out {out} is a search but also holds {', '.join(foreign[:3])}, which edgecls did not write, "
                "so --overwrite will not replace it: move those out or choose another --out"
            )
        for child in entries:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        write_json(out / SEARCH_JSON, new)
    return out, False


def _doc(out: Path) -> dict:
    return json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))


def _our_stage(name: str) -> bool:
    """A stage of OUT/run or OUT/bundle (runtime.atomic's name pattern), as a report being written leaves it."""
    m = _STAGE.match(name)
    return bool(m) and m["name"] in ("run", "bundle")


def _refuse_foreign(out: Path) -> None:
    if any(p.name != LOCK for p in out.iterdir()) and not _is_ours(out):
        raise EdgeclsError(
            f"--out {out} already holds files and is not an edgecls search (no {SEARCH_JSON}): "
            "choose another --out (a search never replaces what it did not write)"
        )


def _check_same(out: Path, cfg: SearchConfig, fingerprint: dict | None = None) -> None:
    doc = json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))
    before, now = doc.get("settings", {}), cfg.settings()
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        k = changed[0]
        raise EdgeclsError(
            f"--out {out} holds a search with {k} {before.get(k)!r}, not {now[k]!r}: resume it with the same "
            "settings, choose another --out, or pass --overwrite to start again"
        )
    was = doc.get("data")
    if not fingerprint or not was or was == fingerprint:
        return  # a search.json written before fingerprints: nothing to compare
    what = (
        f"classes {', '.join(was['classes'])}, not {', '.join(fingerprint['classes'])}"
        if was.get("classes") != fingerprint["classes"]
        else "other images (files added, removed or changed since)"
    )
    raise EdgeclsError(
        f"--out {out} holds a search of {cfg.data} with {what}: trials on other data cannot be compared; "
        "choose another --out, or pass --overwrite to start again"
    )


@contextmanager
def _locked(out: Path):
    """OUT/.search.lock, held while a worker claims a trial or writes the report (flock: a killed holder frees it)."""
    from edgecls.runtime.lockfile import file_lock

    with file_lock(out / LOCK, what="edgecls search"):
        yield


def read_trials(out: Path) -> list:
    """(Trial, folder, trial.json dict) for every trial folder of OUT, by number."""
    found = []
    for folder in sorted((Path(out) / trials_.TRIALS_DIR).glob("[0-9]" * 4)):
        if (folder / trials_.TRIAL_JSON).is_file():
            trial, data = trials_.load(folder)
            found.append((trial, folder, data))
    return found


def finished(out: Path) -> list:
    return [t for t, _, d in read_trials(out) if t.status in STATUSES]


def _data_facts(cfg: SearchConfig) -> dict:
    """The data's classes, colour and image size (what the space and every trial need), read once."""
    from edgecls.core.datasets import resolve_dataset, scan_folder

    root, builtin = resolve_dataset(cfg.data)
    dataset = scan_folder(root, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if not dataset.splits.get("val"):
        raise EdgeclsError(
            f"{root} leaves no validation images, and the search ranks candidates on them: add images or raise "
            "use a data folder with more images per class"
        )
    defaults = builtin.defaults if builtin else {}
    size = defaults.get("image_size") or _first_image_size(dataset)
    facts = {"root": str(root), "color": defaults.get("color", "rgb"), "size": size, "classes": len(dataset.labels)}
    facts["fingerprint"] = _fingerprint(dataset)
    return {**facts, "widths": defaults.get("widths")}  # the simple widths `edgecls train` uses on this data


def _fingerprint(dataset) -> dict:
    """The data as the trials see it: its classes and a sha256 of the seeded split's files (split, path, bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for split in sorted(dataset.splits):
        for sample in sorted(dataset.splits[split], key=lambda s: str(s.path)):
            path = Path(sample.path)
            rel = os.path.relpath(path, dataset.root) if getattr(dataset, "root", None) else str(path)
            digest.update(f"{split}\0{rel}\0{path.stat().st_size}\n".encode())
    return {"classes": list(dataset.labels), "files": digest.hexdigest()}


def _first_image_size(dataset) -> int:
    import cv2

    for sample in dataset.splits.get("train", []):
        image = cv2.imread(str(sample.path), cv2.IMREAD_UNCHANGED)
        if image is not None:
            return int(min(image.shape[:2]))
    return 64


def _check_models(cfg: SearchConfig, progress) -> None:
    usable = space.usable_models(cfg.models, cfg.sizes)
    if not usable:
        raise EdgeclsError(
            f"--models {','.join(cfg.models)} need images of {space.BACKBONE_MIN_SIZE} px or more and --sizes "
            f"{','.join(map(str, cfg.sizes))} has none: add a larger size or the simple model"
        )
    if len(usable) < len(cfg.models):
        left = [m for m in cfg.models if m not in usable]
        progress(f"note: {', '.join(left)} left out: they need {space.BACKBONE_MIN_SIZE} px or more (--sizes)")


def counted(trials) -> int:
    """How many of `trials` count toward --trials: those that reached training (measured, over budget, gate
    failed, failed, or still running); a candidate pruned before training is extra."""
    return sum(1 for t in trials if t.status != PRUNED)


def _claim(cfg: SearchConfig, out: Path, study, default: dict | None) -> tuple | None:
    """Under the lock: tell the study what finished unheard, adopt a stale trial, else start a new one (the warm
    start's enqueued ones first). Returns (Trial, folder, optuna number) or None when `cfg.trials` trials reached
    training, or MAX_PROPOSALS x `cfg.trials` were proposed (the space is mostly over budget)."""
    held = read_trials(out)
    studies.fail_phantoms(study, [d.get("optuna_number") for _, _, d in held])
    for trial, folder, data in held:
        if trial.status and not data.get("told"):
            studies.tell(study, data["optuna_number"], trial, cfg.budget)
            trials_.save(folder, trial, told=True)
    for trial, folder, data in held:
        if trials_.is_stale(folder, data):
            trials_.save(folder, trial, owner=trials_.owner())
            return trial, folder, data["optuna_number"]
    if counted(t for t, _, _ in held) >= cfg.trials:
        return None
    if len(held) >= MAX_PROPOSALS * cfg.trials:
        say(
            f"{len(held)} candidates proposed, {len(held) - counted(t for t, _, _ in held)} of them pruned as over "
            f"the budget: the space is mostly over budget, stopping (allow smaller --sizes or raise the budget)"
        )
        return None
    studies.warm_start(study, cfg, default)
    by_key = {t.candidate.key(): t for t, _, _ in held}
    for _ in range(MAX_REPEATS):
        proposal = studies.ask(study, cfg.seed, cfg.trials)
        candidate = space.suggest(proposal, cfg)
        seen = by_key.get(candidate.key())
        if seen is None:
            trial = Trial(number=len(held), candidate=candidate)
            folder = trials_.folder_of(out, trial.number)
            folder.mkdir(parents=True, exist_ok=True)
            origin = studies.origin(proposal)
            trials_.save(folder, trial, owner=trials_.owner(), optuna_number=proposal.number, origin=origin)
            return trial, folder, proposal.number
        if seen.status:  # the same candidate, the same result: told again, not trained again
            studies.tell(study, proposal.number, seen, cfg.budget, same_as=seen.number)
        else:
            studies.fail(study, proposal.number, same_as=seen.number)
    say(f"the search space gave only candidates already tried in {MAX_REPEATS} proposals: stopping at {len(held)}")
    return None


def _context(cfg: SearchConfig, out: Path, facts: dict, lab, progress) -> trials_.TrialContext:
    doc = json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))

    def remember(artifact: str) -> None:
        with _locked(out):
            now = json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))
            if not now.get("artifact"):
                write_json(out / SEARCH_JSON, {**now, "artifact": artifact})

    return trials_.TrialContext(
        data=facts["root"],
        budget=cfg.budget,
        lab=lab,
        data_color=facts["color"],
        num_classes=facts["classes"],
        epochs=cfg.epochs,
        patience=cfg.patience,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_drop=cfg.max_drop,
        calibration_size=cfg.calibration_size,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        artifact=doc.get("artifact"),
        on_artifact=remember,
        progress=progress,
    )


def search(cfg: SearchConfig, progress=say) -> SearchResult:
    """Run (or resume, or join) the search in cfg.out; the worker that finishes the last trial reports."""
    from edgecls.search.device import DeviceLab

    started = time.perf_counter()
    validate(cfg)
    facts = _data_facts(cfg)
    if cfg.sizes is None:
        cfg.sizes = space.default_sizes(facts["size"])
    _check_models(cfg, progress)
    lab = DeviceLab(cfg.device, profile=cfg.profile, ssh_config=cfg.ssh_config, settings=cfg.measure, progress=progress)
    _apart(cfg.out, facts["root"])
    out, resumed = prepare_out(cfg, facts["fingerprint"], lab)
    study = studies.open_study(out)
    ctx = _context(cfg, out, facts, lab, progress)
    done = counted(finished(out))
    progress(
        f"{'resuming' if resumed else 'searching'} {out}: {done}/{cfg.trials} trials finished; "
        f"{', '.join(cfg.models)} at {', '.join(map(str, cfg.sizes))} px, on {lab.label}, budget "
        f"{cfg.budget.latency_ms:g} ms"
    )
    default = space.train_default(cfg, facts["size"], facts["widths"])
    last = None
    while True:
        with _locked(out):
            claimed = _claim(cfg, out, study, default)
        if claimed is None:
            break
        trial, folder, number = claimed
        origin = trials_.load(folder)[1].get("origin") or "adopted"
        progress(f"trial #{trial.number} ({origin}): {space.describe(trial.candidate)}")
        trial = trials_.run_trial(trial, folder, ctx, finished(out))
        studies.tell(study, number, trial, cfg.budget)
        trials_.save(folder, trial, told=True, finished_at=time.time())
        progress(trials_.line(trial, _position(out, trial, cfg.trials)))
        last = trial.number
    return _finish(cfg, out, last, started, progress)


def _position(out: Path, trial: Trial, total: int) -> str:
    """The progress line's label: `#4 (3/12)` (the 3rd of --trials 12) or `#4 (pruned: not counted)`."""
    if trial.status == PRUNED:
        return f"#{trial.number} (pruned: not counted in --trials)"
    return f"#{trial.number} ({counted(t for t, _, _ in read_trials(out) if t.number <= trial.number)}/{total})"


def _finish(cfg: SearchConfig, out: Path, last: int | None, started: float, progress) -> SearchResult:
    """Report when every trial is finished and this worker finished the last of them (or none reported yet)."""
    with _locked(out):
        held = read_trials(out)
        done = [t for t, _, _ in held if t.status in STATUSES]
        running = len(held) - len(done)
        ends = {t.number: d.get("finished_at", 0) for t, _, d in held}
        last_done = max(ends, key=ends.get) if ends else None
        mine = last is not None and last == last_done
        if not running and last is None and _reported(out):
            progress(f"all {len(done)} trials were finished already: see {out / 'trials.csv'} and {out / 'bundle'} "
                     f"(to write them again: edgecls search --report {out})")  # fmt: skip
            return SearchResult(out, done, None, False, time.perf_counter() - started)
        if running or (not mine and _reported(out)):
            progress(
                f"{counted(done)}/{cfg.trials} trials finished here and by other workers; "
                f"{'the worker that finishes the last one writes' if running else 'another worker wrote'} the "
                f"report (or: edgecls search --report {out})"
            )
            return SearchResult(out, done, None, False, time.perf_counter() - started)
        chosen = write_report(out, progress)
    return SearchResult(out, done, chosen, True, time.perf_counter() - started)


def _reported(out: Path) -> bool:
    """Whether the report is whole: OUT/bundle holds the chosen trial's manifest. Not when trials.json names no
    chosen trial (the report is written again, and says again that none meets the budget) or a kill cut the
    report short (trials.json is its first file, OUT/bundle its last)."""
    try:
        chosen = json.loads((out / "trials.json").read_text(encoding="utf-8")).get("chosen")
        mine = (out / "bundle" / "manifest.json").read_bytes()
        return (
            isinstance(chosen, int)
            and mine == (trials_.folder_of(out, chosen) / trials_.BUNDLE / "manifest.json").read_bytes()
        )
    except (OSError, ValueError, AttributeError):
        return False


def report(out, progress=say) -> SearchResult:
    """`edgecls search --report OUT`: the table, the front and the chosen run and bundle, from what is on disk."""
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    if not _is_ours(out):
        raise EdgeclsError(f"{out} is not an edgecls search (no {SEARCH_JSON}): give the --out of a search")
    with _locked(out):
        chosen = write_report(out, progress)
    return SearchResult(out, finished(out), chosen, True, time.perf_counter() - started)


def write_report(out: Path, progress=say) -> Trial:
    """trials.csv/json, front.png, and the chosen trial's run and bundle as OUT/run and OUT/bundle.

    No trial meets the budget: the table and front are still written, then EdgeclsError names the fastest."""
    from edgecls.search import report as reports

    doc = json.loads((out / SEARCH_JSON).read_text(encoding="utf-8"))
    budget = Budget.from_dict(doc["settings"]["budget"])
    done = finished(out)
    reports.write_table(done, out, budget=budget, device=doc["settings"].get("device"))
    reports.plot_front(done, budget, out / FRONT_PNG)
    chosen = reports.choose(done, budget)
    progress(f"report: {out / 'trials.csv'}, {out / 'trials.json'}, {out / FRONT_PNG} ({reports.counts(done)})")
    if chosen is None:
        measured = [t for t in done if t.measurement is not None]
        fastest = min(measured, key=lambda t: t.measurement.latency_ms, default=None)
        best = (
            f"the fastest measured was {fastest.measurement.latency_ms:.3g} ms p50 "
            f"(#{fastest.number}: trials/{fastest.number:04d}, {space.describe(fastest.candidate)})"
            if fastest
            else "none was measured"
        )
        raise EdgeclsError(
            f"no trial meets the budget of {budget.latency_ms:g} ms in {len(done)} trials: {best}; raise the budget, "
            "run more --trials, or allow smaller --sizes"
        )
    folder = trials_.folder_of(out, chosen.number)  # not the paths in trial.json: another host's mount
    _publish(folder / trials_.RUN, out / "run", "metadata.json")
    _publish(folder / trials_.BUNDLE, out / "bundle", "manifest.json")
    m = chosen.measurement
    progress(
        f"chosen: #{chosen.number} (trials/{chosen.number:04d}), {space.describe(chosen.candidate)}: "
        f"val {chosen.val_accuracy:.3g}, "
        f"{m.artifact} {m.latency_ms:.3g} ms p50 on {m.device}: {out / 'bundle'} (edgecls flash takes it as it is)"
    )
    return chosen


def _publish(source: Path, final: Path, marker: str) -> None:
    """Copy a trial's run or bundle to OUT/run or OUT/bundle through a stage renamed into place."""
    from edgecls.runtime.atomic import staged_dir

    with staged_dir(final, overwrite=True, marker=marker) as stage:
        shutil.copytree(source, stage, dirs_exist_ok=True, symlinks=True)
