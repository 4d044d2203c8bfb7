"""The append-only journal of labelling decisions: one JSON line each, fsynced before and after every move.

A move is written as `begin` (which files go where, destinations already chosen) before the first rename and
`done` after the last, so after a kill the next start knows every move that was under way (`pending`) and which
decisions can be undone (`undoable`), whatever the page or the server remembered.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.labeling")


class Journal:
    """The journal of one CAPTURES, shared by every process labelling it (a second server, `--import`): they
    append only while holding the store's file lock, and `sync` reads what the others appended before each move,
    so sequence numbers stay unique and undo and repair see every process's decisions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeclsError(f"cannot make {self.path.parent}: {exc.strerror or exc} (a read-only disk?)") from exc
        self.records: list = []
        self._read_to = 0  # bytes of the file read so far: always the end of a whole line
        self.sync()

    @property
    def next_seq(self) -> int:
        return 1 + max((r["seq"] for r in self.records), default=0)

    def sync(self) -> None:
        """Read the lines appended since the last read (by this process or another); a line without its newline
        yet is left for later, as another process may be writing it."""
        try:
            with open(self.path, "rb") as journal:
                journal.seek(self._read_to)
                data = journal.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise EdgeclsError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        whole = data[: data.rfind(b"\n") + 1]
        self._read_to += len(whole)
        torn = 0
        for line in whole.decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                self.records.append(record)
            elif line:
                # What a kill during an append leaves. Skipping it is safe: a torn `begin` had no rename yet (it
                # is fsynced first), and a torn `done` leaves its `begin` open, which the next start repairs.
                torn += 1
        if torn:
            log.warning("label: %s: skipped %d torn line(s) a killed server left", self.path, torn)

    def append(self, record: dict) -> dict:
        """Write `record` as one line and fsync it; a write that fails (a full disk) is one EdgeclsError."""
        record = {**record, "t": round(time.time(), 3)}
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                    line = b"\n" + line  # after a torn line, start a fresh one
                while line:  # a short count (a disk filling up) writes the rest, or fails with its errno
                    written = os.write(fd, line)
                    if not written:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    line = line[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise EdgeclsError(
                f"cannot write the journal {self.path}: {exc.strerror or exc} (disk full?): free some space and retry"
            ) from exc
        self.records.append(record)
        self._read_to = self._size()
        return record

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return self._read_to

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        return os.pread(fd, 1, os.fstat(fd).st_size - 1) == b"\n"

    def begin(self, op: str, files: list, **extra) -> int:
        """A move about to happen: `files` are [source, destination] pairs relative to CAPTURES, image first."""
        seq = self.next_seq
        self.append({"seq": seq, "op": op, "state": "begin", "files": files, **extra})
        return seq

    def end(self, seq: int, state: str = "done", **extra) -> None:
        self.append({"seq": seq, "state": state, **extra})

    def skip(self, seq: int, reason: str) -> None:
        """Decision `seq` cannot be undone (its files were moved by hand): undo passes over it from now on."""
        self.append({"seq": self.next_seq, "op": "undo", "state": "skipped", "undoes": seq, "reason": reason})

    def pending(self) -> list:
        """`begin` records without an end: moves a kill interrupted."""
        ended = {r["seq"] for r in self.records if r.get("state") != "begin"}
        return [r for r in self.records if r.get("state") == "begin" and r["seq"] not in ended]

    def undoable(self) -> list:
        """Finished decisions not undone yet, oldest first (the last one is what undo takes back)."""
        begins = {r["seq"]: r for r in self.records if r.get("state") == "begin"}
        stack = []
        for record in self.records:
            if record.get("state") == "skipped":
                stack = [s for s in stack if s["seq"] != record.get("undoes")]
            if record.get("state") != "done":
                continue
            begun = begins.get(record["seq"], {})
            if begun.get("op") == "undo":
                stack = [s for s in stack if s["seq"] != begun.get("undoes")]
            elif begun:
                stack.append(begun)
        return stack
