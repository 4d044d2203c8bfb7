"""The rollout journal: one JSON object per line, appended and fsynced before the step it names goes on.

A re-run of the same rollout reads it back (`Journal.events`) and resumes; an unfinished journal of another
bundle for the same fleet file refuses a new rollout until it is finished or `--abandon`ed. Default place:
$XDG_STATE_HOME/edgecls/rollouts (~/.local/state/edgecls/rollouts), one folder per fleet file, one journal per
bundle version in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from edgecls.runtime.atomic import write_bytes
from edgecls.runtime.errors import EdgeclsError

DONE = "done"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edgecls" / "rollouts"


def fleet_folder(fleet_path, *, resolve: bool = True) -> Path:
    """The journals of one fleet file: named by its name and a hash of its real path (however it is spelled;
    resolve=False: the absolute path as spelled, where journals were kept before)."""
    path = Path(fleet_path).resolve() if resolve else Path(fleet_path).absolute()
    return state_dir() / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def point_to(fleet_path, journal: Path) -> None:
    """Note a journal kept elsewhere (--journal) in the fleet's folder, so its rollout counts as this fleet's."""
    journal = journal.resolve()
    pointer = fleet_folder(fleet_path) / f"{hashlib.sha256(str(journal).encode()).hexdigest()[:12]}.journal"
    if not pointer.exists():
        write_bytes(pointer, str(journal).encode())


def journals(fleet_path) -> list:
    """Every journal of the fleet file: those in its folder (and the folder its spelling named before) and
    those that --journal put elsewhere."""
    found: list = []
    for folder in dict.fromkeys((fleet_folder(fleet_path), fleet_folder(fleet_path, resolve=False))):
        if not folder.is_dir():
            continue
        found += sorted(folder.glob("*.jsonl"))
        for pointer in sorted(folder.glob("*.journal")):
            try:
                found.append(Path(pointer.read_text().strip()))
            except (OSError, UnicodeDecodeError):
                continue
    return [p for p in dict.fromkeys(found) if p.is_file()]


def default_path(fleet_path, version: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in version)[:80] or "bundle"
    return fleet_folder(fleet_path) / f"{safe}.jsonl"


class Journal:
    """Append-only JSON lines at `path`; every line fsynced (and the folder, when the file is new)."""

    def __init__(self, path):
        self.path = Path(path)

    def events(self) -> list:
        """Every complete line; a last line cut by a kill mid-write is ignored (its step never happened)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise EdgeclsError(f"cannot read the rollout journal {self.path}: {exc.strerror or exc}") from exc
        events = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                if not text.endswith("\n") and number == text.count("\n") + 1 and line.startswith('{"'):
                    break  # the torn last line
                if not line.startswith('{"'):
                    self._not_ours(number)
                raise EdgeclsError(
                    f"the rollout journal {self.path} line {number} is not JSON: it was edited; move it away to "
                    f"start over (devices may then be between versions: check `edgecls status --targets`)"
                ) from None
            if not isinstance(event, dict) or not isinstance(event.get("step"), str):
                self._not_ours(number)
            events.append(event)
        return events

    def _not_ours(self, number: int):
        raise EdgeclsError(
            f"{self.path} is not a rollout journal (line {number} is no journal event): give --journal a new file "
            f"or one a rollout wrote; this one is left as it is"
        )

    def append(self, step: str, **fields) -> dict:
        event = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step, **fields}
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as out:
            out.seek(0)
            text = out.read()
            kept = text.rfind(b"\n") + 1
            if kept < out.tell():  # a line torn by a kill: that step never happened, its bytes go
                if not text[kept:].startswith(b'{"'):
                    self._not_ours(text.count(b"\n") + 1)
                out.truncate(kept)
            out.write(json.dumps(event, sort_keys=True).encode() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        if new:
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return event

    def finished(self) -> bool:
        events = self.events()
        return bool(events) and events[-1]["step"] == DONE


@contextlib.contextmanager
def fleet_lock(fleet_path):
    """Held (flock(2), exclusive) for a whole rollout of the fleet file: a second host process is refused."""
    folder = fleet_folder(fleet_path)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise EdgeclsError(
                f"another rollout of {fleet_path} is running (process {pid}, lock {folder / 'lock'}): wait for it "
                f"to finish or stop it, then run this command again"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def unfinished_others(fleet_path, mine: Path) -> list:
    """Unfinished journals of the same fleet file other than `mine`."""
    mine = Path(mine).resolve()
    return [
        p for p in journals(fleet_path) if p.resolve() != mine and Journal(p).events() and not Journal(p).finished()
    ]


def last_steps(fleet_path) -> dict:
    """device name -> (time, step) of its newest journal event, over every journal of the fleet file."""
    newest: dict = {}
    for path in journals(fleet_path):
        try:
            events = Journal(path).events()
        except EdgeclsError:
            continue
        for event in events:
            for name in [event["device"]] if "device" in event else event.get("devices", []):
                if name not in newest or event["time"] >= newest[name][0]:
                    newest[name] = (event["time"], f"{event['step']} {event.get('version', '')}".strip())
    return newest
