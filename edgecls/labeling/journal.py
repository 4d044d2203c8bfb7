"""The append-only journal of labelling decisions: one JSON line each, fsynced before and after every move.

A move is written as `begin` (which files go where, destinations already chosen) before the first rename and
`done` after the last, so after a kill the next start knows every move that was under way (`pending`) and which
decisions can be undone (`undoable`), whatever the page or the server remembered.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("edgecls.labeling")


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read()
        self._next = 1 + max((r.get("seq", 0) for r in self.records), default=0)

    def _read(self) -> list:
        if not self.path.exists():
            return []
        records, torn = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("seq"), int):
                records.append(record)
            else:
                # What a kill during an append leaves. Skipping it is safe: a torn `begin` had no rename yet (it
                # is fsynced first), and a torn `done` leaves its `begin` open, which the next start repairs.
                torn += 1
        if torn:
            log.warning("label: %s: skipped %d torn line(s) a killed server left", self.path, torn)
        return records

    def append(self, record: dict) -> dict:
        record = {**record, "t": round(time.time(), 3)}
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size and not self._ends_with_newline(fd):
                os.write(fd, b"\n")  # after a torn line, start a fresh one
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)
        return record

    @staticmethod
    def _ends_with_newline(fd: int) -> bool:
        return os.pread(fd, 1, os.fstat(fd).st_size - 1) == b"\n"

    def begin(self, op: str, files: list, **extra) -> int:
        """A move about to happen: `files` are [source, destination] pairs relative to CAPTURES, image first."""
        seq = self._next
        self._next += 1
        self.append({"seq": seq, "op": op, "state": "begin", "files": files, **extra})
        return seq

    def end(self, seq: int, state: str = "done", **extra) -> None:
        self.append({"seq": seq, "state": state, **extra})

    def pending(self) -> list:
        """`begin` records without an end: moves a kill interrupted."""
        ended = {r["seq"] for r in self.records if r.get("state") != "begin"}
        return [r for r in self.records if r.get("state") == "begin" and r["seq"] not in ended]

    def undoable(self) -> list:
        """Finished decisions not undone yet, oldest first (the last one is what undo takes back)."""
        begins = {r["seq"]: r for r in self.records if r.get("state") == "begin"}
        stack = []
        for record in self.records:
            if record.get("state") != "done":
                continue
            begun = begins.get(record["seq"], {})
            if begun.get("op") == "undo":
                stack = [s for s in stack if s["seq"] != begun.get("undoes")]
            elif begun:
                stack.append(begun)
        return stack
