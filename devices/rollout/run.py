"""`edgecls flash --canary`: the staged rollout, step by step, each step journaled before it is taken.

Resuming (the same command again after Ctrl-C or kill -9): devices the journal shows "flashing" but not "flashed"
are flashed again (a flash of the same bundle finishes or confirms an interrupted one; "flashing" records the
slot the device ran, so a device that answers "unchanged" then is still rolled back); "rolling back" but not
"rolled back" are asked their status and rolled back only while `current` is still the new version; a watch
without its verdict is watched again whole (a window needs its own first sample); the baseline is kept.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgecls.devices import flash as flashing
from edgecls.devices.fleet import fleet_with_profile, read_fleet
from edgecls.devices.fleet_prometheus import target_groups
from edgecls.devices.rollout import judge as judging
from edgecls.devices.rollout.journal import DONE, Journal, default_path, fleet_lock, point_to, unfinished_others
from edgecls.devices.rollout.plan import Criteria, choose_canaries, parse_share, plan_waves
from edgecls.devices.rollout.watch import PrometheusReader, Window, watch
from edgecls.runtime.bundle import MANIFEST, load_bundle
from edgecls.runtime.daemon.config import read_token
from edgecls.runtime.errors import EdgeclsError


@dataclass
class RolloutOptions:
    canary: str = "10%"
    waves: str = "100%"
    watch_s: float = 900.0
    watch_waves_s: float | None = None  # None: as watch_s; 0: waves are not watched
    baseline_s: float | None = None  # None: min(watch_s, 300)
    criteria: Criteria = field(default_factory=Criteria)
    prometheus: str | None = None
    token_file: str | None = None  # the daemons' bearer token (None: $EDGECLS_TOKEN, else none)
    journal: str | None = None
    abandon: bool = False
    every_s: float = 2.0  # seconds between samples
    say: object = field(default=lambda message: None, repr=False)


@dataclass
class RolloutResult:
    result: str  # promoted | rolled back
    lines: list
    journal: str


_BAD = ("failed", "rolled back")  # flash results that fail a wave before any watch


class _Rollout:
    def __init__(self, bundle_path, fleet_path, flash_options, options: RolloutOptions):
        self.bundle_path, self.fleet_path = str(Path(bundle_path).absolute()), str(Path(fleet_path).resolve())
        self.flash_options, self.options, self.say = flash_options, options, options.say
        self.devices = {d.name: d for d in fleet_with_profile(read_fleet(fleet_path), flash_options.profile)}
        target_groups(list(self.devices.values()))  # refuses two devices naming one daemon, however spelled
        load_bundle(bundle_path)  # a bundle that cannot be flashed is refused before anything is journaled
        manifest = (Path(bundle_path) / MANIFEST).read_bytes() if Path(bundle_path).is_dir() else b""
        self.sha256 = hashlib.sha256(manifest or Path(bundle_path).read_bytes()).hexdigest()
        self.version = f"{Path(bundle_path).name}-{self.sha256[:12]}"
        self.journal = Journal(options.journal or default_path(fleet_path, self.version))
        self.reader = PrometheusReader(options.prometheus) if options.prometheus else None
        self.token = read_token(options.token_file)
        if self.reader:
            self._check_scrapes(options)
        self.lines: list = []
        self.unplanned: list = []  # devices added to the fleet file after the rollout was planned
        self._lock = threading.Lock()

    def _check_scrapes(self, options: RolloutOptions) -> None:
        """Refuse watches shorter than 4 of Prometheus's scrape intervals: a window's frames/s needs scrapes."""
        addresses = [d.metrics_address for d in self.devices.values() if d.metrics_address]
        interval = self.reader.scrape_interval(addresses)
        baseline = min(options.watch_s, 300.0) if options.baseline_s is None else options.baseline_s
        waves = options.watch_s if options.watch_waves_s is None else options.watch_waves_s
        for option, seconds in (("--watch", options.watch_s), ("--baseline", baseline), ("--watch-waves", waves)):
            if interval and 0 < seconds < 4 * interval:
                raise EdgeclsError(
                    f"--prometheus scrapes these devices every {interval:g} s: {option} {seconds:g} s is too short, "
                    f"a watch needs at least 4 scrapes ({4 * interval:g} s): watch longer, or leave out --prometheus"
                )

    # ----------------------------------------------------------------- the journal
    def log(self, step: str, **fields) -> dict:
        with self._lock:
            return self.journal.append(step, version=self.version, **fields)

    def done_steps(self, step: str) -> dict:
        """device -> its last event of `step` in the journal."""
        return {e["device"]: e for e in self.journal.events() if e["step"] == step and "device" in e}

    def _check_journal(self) -> list:
        """The journal's events after refusing what must not be resumed or started."""
        events = self.journal.events()
        if events and events[-1]["step"] == DONE:
            rotated = self.journal.path.with_suffix(f".{int(time.time())}.jsonl")
            os.replace(self.journal.path, rotated)  # a finished rollout run again starts a new one
            self.say(f"the last rollout of this bundle finished ({events[-1].get('result')}): kept as {rotated}")
            events = []
        planned = next((e for e in events if e["step"] == "planned"), None)
        other = planned and (planned["sha256"], str(Path(planned["fleet"]).resolve())) != (self.sha256, self.fleet_path)
        if planned and (other or self.options.abandon):
            if not self.options.abandon:
                raise EdgeclsError(
                    f"the journal {self.journal.path} holds an unfinished rollout of {planned['bundle']} to "
                    f"{planned['fleet']}: run that command again to finish it, or add --abandon to leave it as it is"
                )
            self._abandon(self.journal)
            events = []
        for other in unfinished_others(self.fleet_path, self.journal.path):
            first = Journal(other).events()[0]
            if not self.options.abandon:
                raise EdgeclsError(
                    f"an unfinished rollout of {first.get('bundle')} to this fleet ({other}): run its command again "
                    f"to finish it, or add --abandon to leave its devices as they are and start this one"
                )
            self._abandon(Journal(other))
        return events

    def _abandon(self, journal: Journal) -> None:
        journal.append(DONE, result="abandoned")
        self.say(f"abandoned the unfinished rollout in {journal.path}: its devices keep what they run now")
        if journal.path == self.journal.path:
            os.replace(journal.path, journal.path.with_suffix(f".{int(time.time())}.jsonl"))

    # ----------------------------------------------------------------- planning and the baseline
    def plan(self, events: list) -> dict:
        planned = next((e for e in events if e["step"] == "planned"), None)
        if planned:
            gone = [n for wave in planned["waves"] for n in wave if n not in self.devices]
            if gone:
                raise EdgeclsError(
                    f"the unfinished rollout in {self.journal.path} names {', '.join(gone)}, no longer in "
                    f"{self.fleet_path}: put them back to finish it, or add --abandon"
                )
            self.say(f"resuming the rollout journaled in {self.journal.path}")
            planned_names = {n for wave in planned["waves"] for n in wave}
            self.unplanned = [n for n in self.devices if n not in planned_names]
            if self.unplanned:
                self.say(f"not in this rollout's plan, not flashed: {', '.join(self.unplanned)}")
            return planned
        devices = list(self.devices.values())
        canaries = choose_canaries(devices, parse_share(self.options.canary, "--canary"))
        waves = plan_waves(devices, canaries, self.options.waves)
        for d in devices:
            if d.metrics_url is None:
                self.say(
                    f"{d.name}: no metrics URL (give metrics=http://HOST:PORT in the fleet file, or a profile with "
                    f"health_url): flashed but not watched"
                )
        watch_s = self.options.watch_s
        return self.log(
            "planned",
            bundle=self.bundle_path,
            sha256=self.sha256,
            fleet=self.fleet_path,
            waves=waves,
            criteria=self.options.criteria.to_dict(),
            watch_s=watch_s,
            watch_waves_s=watch_s if self.options.watch_waves_s is None else self.options.watch_waves_s,
            baseline_s=min(watch_s, 300.0) if self.options.baseline_s is None else self.options.baseline_s,
        )

    def watched(self, names) -> dict:
        return {n: self.devices[n].metrics_url for n in names if self.devices[n].metrics_url}

    def baseline(self, planned: dict) -> dict:
        found = next((e for e in self.journal.events() if e["step"] == "baseline"), None)
        if found is None:
            seconds, watched = planned["baseline_s"], self.watched(self.devices)
            if watched:
                self.say(f"measuring every watched device for {seconds:g} s before anything is flashed")
            windows = self._watch(watched, seconds) if watched else {}
            if windows and all(w.fps is None for w in windows.values()):
                error = next((w.error for w in windows.values() if w.error), "no answer")
                raise EdgeclsError(
                    f"the baseline counted no frames on any of the {len(windows)} watched devices ({error}): nothing "
                    f"was flashed; check their metrics= URLs, --token-file or --prometheus, then run this again"
                )
            found = self.log("baseline", windows={n: w.to_dict() for n, w in windows.items()})
        return {n: Window.from_dict(w) for n, w in found["windows"].items()}

    def _watch(self, devices: dict, seconds: float) -> dict:
        every = min(self.options.every_s, max(0.5, seconds / 20))  # a short watch still gets about 20 samples
        return watch(devices, seconds, reader=self.reader, every_s=every, say=self.say, token=self.token)

    # ----------------------------------------------------------------- flashing and rolling back
    def flash_wave(self, number: int, names: list) -> dict:
        """name -> its "flashed" event, flashing those without one (again, if one was cut off)."""
        flashed = self.done_steps("flashed")
        todo = [n for n in names if n not in flashed]
        was = self._currents(todo) if todo else {}
        for name in todo:
            self.log("flashing", device=name, wave=number, was=was[name])
        if todo:
            self.say(f"wave {number}: flashing {', '.join(todo)}")
            entries = [(self.devices[n].target, self.devices[n].profile) for n in todo]
            for name, r in zip(todo, flashing.flash(self.bundle_path, entries, self.flash_options)):
                flashed[name] = self.log(
                    "flashed", device=name, wave=number, result=r.result, slot=r.slot, reason=r.reason
                )
                self.say(f"{name}: {r.result} {r.slot}" + (f" ({r.reason})" if r.reason and not r.ok else ""))
        return {n: flashed[n] for n in names}

    def _currents(self, names: list) -> dict:
        """name -> the slot `current` names now (None: none, or the device did not answer)."""

        def current(name: str):
            try:
                return flashing.status(self.devices[name].target, self._options_for(name)).get("current")
            except (EdgeclsError, OSError):
                return None

        with ThreadPoolExecutor(max_workers=max(1, min(self.flash_options.jobs, len(names)))) as pool:
            return dict(zip(names, pool.map(current, names)))

    @staticmethod
    def _changed(event: dict, first: dict) -> bool:
        """Whether this rollout switched a device to the new slot: installed, or "unchanged" on a re-run after a
        flash that finished but was cut off before its "flashed" line (its `first` "flashing" says what it ran)."""
        if event["result"] == "installed":
            return True
        return event["result"] == "unchanged" and "was" in first and first["was"] != event["slot"]

    def _options_for(self, name: str):
        return replace(self.flash_options, profile=self.devices[name].profile)

    def roll_back(self, names: list, flashed: dict, reasons: dict) -> None:
        """Roll back every device of the wave the rollout installed, and say why, one line each."""
        done = self.done_steps("rolled back")
        firsts: dict = {}
        for e in self.journal.events():
            if e["step"] == "flashing" and "device" in e:
                firsts.setdefault(e["device"], e)
        for name in names:
            event, why = flashed[name], "; ".join(reasons.get(name) or []) or "its wave failed"
            if not self._changed(event, firsts.get(name, {})):
                self.lines.append(f"{name}: {why}: not changed ({event['result']})")
                continue
            if name not in done:
                self.log("rolling back", device=name)
                self._roll_back_one(name, event["slot"])
                self.log("rolled back", device=name)
            self.lines.append(f"{name}: {why}: rolled back")

    def _roll_back_one(self, name: str, slot: str) -> None:
        target, options = self.devices[name].target, self._options_for(name)
        if flashing.status(target, options).get("current") != slot:
            return  # a rollback cut off by a kill had already switched back
        flashing.rollback(target, options)


def rollout(bundle_path, fleet_path, flash_options, options: RolloutOptions) -> RolloutResult:
    """Flash the canaries, watch, promote wave by wave or roll back; resumes from the journal."""
    r = _Rollout(bundle_path, fleet_path, flash_options, options)
    with fleet_lock(r.fleet_path):
        if options.journal:
            point_to(r.fleet_path, r.journal.path)
        return _run(r)


def _run(r: _Rollout) -> RolloutResult:
    planned = r.plan(r._check_journal())
    r.say(f"journal: {r.journal.path}")
    r.say(f"criteria: {Criteria(**planned['criteria']).describe()}")
    waves = planned["waves"]
    before = r.baseline(planned)
    updated: set = set()
    for number, names in enumerate(waves):
        result = _wave(r, planned, number, names, before, updated)
        if result is not None:
            return result
        updated.update(names)
    r.log(DONE, result="promoted")
    if r.unplanned:
        r.lines.append(
            f"not in this rollout (added to the fleet file after it was planned), still on what they ran: "
            f"{', '.join(r.unplanned)}: flash them with a rollout of their own"
        )
    return RolloutResult("promoted", r.lines or ["every device runs the new bundle"], str(r.journal.path))


def _wave(r: _Rollout, planned: dict, number: int, names: list, before: dict, updated: set):
    """Flash and judge one wave; a RolloutResult when it was rolled back, else None."""
    flashed = r.flash_wave(number, names)
    verdict = next((e for e in r.journal.events() if e["step"] == "verdict" and e["wave"] == number), None)
    if verdict is None:
        reasons = {n: [f"flash {e['result']}: {e['reason']}"] for n, e in flashed.items() if e["result"] in _BAD}
        seconds = planned["watch_s"] if number == 0 else planned["watch_waves_s"]
        watched = r.watched(names)
        if not reasons and seconds > 0 and watched:
            others = [n for n in r.watched(r.devices) if n not in updated and n not in names]
            r.log("watching", wave=number, seconds=seconds, devices=sorted(watched), others=others)
            r.say(f"wave {number}: watching {', '.join(watched)} for {seconds:g} s against {len(others)} others")
            after = r._watch({**watched, **r.watched(others)}, seconds)
            slots = {n: flashed[n]["slot"] for n in watched}
            reasons = judging.judge(list(watched), before, after, others, Criteria(**planned["criteria"]), slots)
            for n in watched:
                line = "; ".join(reasons[n]) if reasons[n] else judging.describe(n, before.get(n) or Window(), after[n])
                r.say(f"{n}: {line}")
        failing = {n: why for n, why in reasons.items() if why}
        verdict = r.log("verdict", wave=number, ok=not failing, reasons=failing)
    if verdict["ok"]:
        if number + 1 < len(planned["waves"]):
            r.log("promoting", wave=number + 1, devices=planned["waves"][number + 1])
        return None
    r.roll_back(names, flashed, verdict["reasons"])
    untouched = [n for wave in planned["waves"][number + 1 :] for n in wave]
    if untouched:
        r.lines.append(f"not touched: {', '.join(untouched)}")
    kept = [n for wave in planned["waves"][:number] for n in wave]
    if kept:
        r.lines.append(
            f"still on the new bundle (their waves passed): {', '.join(kept)}: `edgecls rollback` them to undo"
        )
    r.log(DONE, result="rolled back", wave=number)
    return RolloutResult("rolled back", r.lines, str(r.journal.path))
