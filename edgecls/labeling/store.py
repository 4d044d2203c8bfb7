"""The captures waiting for a label, and the moves that label them (runtime/daemon/capture.py writes the layout).

`CAPTURES/.unlabelled/SOURCE/TIME-FRAME.jpg` (+ `.json` sidecar) is a frame to label; a decision renames the image,
then its sidecar, into `CAPTURES/<label>/` or `CAPTURES/.discarded/` (never a delete; a name already there gets a
`-1`, `-2` suffix, never overwritten), between a journal `begin` and `done` (journal.py). Decisions happen under one
lock, a thread lock and flock(2) on `.labels/lock` (a second server or an `--import` on the same CAPTURES takes it
too), and only for a frame still in the inbox, so a second tab or a double click cannot move a file twice.

A kill can stop a move between its two renames: each rename is atomic, so the image is in exactly one place, and
the next start (`repair`) reads the unfinished `begin` and moves the sidecar to wherever its image is, finishing
the move (image already moved) or taking it back (image not moved yet).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.labeling.journal import Journal
from edgecls.labeling.names import check_label, same_class
from edgecls.runtime.atomic import _fsync_dir
from edgecls.runtime.daemon.capture import INBOX
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.lockfile import file_lock

log = logging.getLogger("edgecls.labeling")

DISCARDED = ".discarded"
STATE = ".labels"  # the journal; a dot folder, so `train --data CAPTURES` ignores it
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_KEYS = 9
# Tests only: seconds to pause between a move's image rename and its sidecar rename, so a test can kill -9 there.
PAUSE_MID_MOVE_ENV = "EDGECLS_LABEL_TEST_PAUSE_MID_MOVE_S"


class FrameGone(EdgeclsError):
    """The frame is no longer in the inbox: decided in another tab, by a double click, or moved by hand."""


@dataclass
class Frame:
    id: str  # the image's path under CAPTURES/.unlabelled, with '/'
    score: float | None = None  # the model's top-1 score; None: no answer, shown first
    topk: list = field(default_factory=list)  # [(label, score)] best first
    source: str | None = None
    sidecar: bool = False  # read; a frame seen between the daemon's two writes (image, then sidecar) has none yet

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "score": self.score,
            "top1": self.topk[0][0] if self.topk else None,
            "topk": [{"label": l, "score": s} for l, s in self.topk],
            "source": self.source,
        }


def read_sidecar(image: Path) -> dict:
    """The capture's sidecar beside `image`, or {} when it is missing or unreadable."""
    try:
        data = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _topk(entries) -> list:
    """Sidecar top-k ([{"label", "score"}] or [[label, score]]) as [(label, score)]; malformed entries skipped."""
    out = []
    for entry in entries if isinstance(entries, list) else []:
        label, score = (
            (entry.get("label"), entry.get("score")) if isinstance(entry, dict) else (list(entry) + [None, None])[:2]
        )
        if isinstance(label, str):
            out.append((label, float(score) if isinstance(score, (int, float)) else None))
    return out


def _hint(exc: OSError, path: Path) -> str:
    """What to do about a move that failed with `exc`."""
    if exc.errno == errno.EXDEV:
        return f"is {path.parent} on another disk?"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "disk full? free some space and retry"
    if exc.errno == errno.ENAMETOOLONG:
        return "a name too long for the disk: type a shorter class name"
    return f"can this user write to {path.parent}?"


def _this_batch(decisions: list) -> list:
    """The decisions since the last one that emptied the inbox (`left`: frames waiting before it, journaled since
    this field came; older decisions all count): a new batch of captures starts its progress at zero."""
    emptied = [i for i, d in enumerate(decisions) if d.get("left") == 1]
    return decisions[emptied[-1] + 1 :] if emptied else decisions


class LabelStore:
    """scorer: None (the sidecars' scores), or callable(paths) -> [(score, [(label, score)])] (a bundle's view)."""

    def __init__(self, root, scorer=None, labels=(), progress=None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EdgeclsError(f"{root} is not a folder: give the --capture folder of `edgecls run`")
        self.inbox = self.root / INBOX
        self.scorer, self.model_labels, self.progress = scorer, list(labels), progress
        self.lock = threading.RLock()  # held by every move, and by readers of the frames and the journal
        self._held = 0  # how deep this process holds the file lock (the thread lock makes it one thread's)
        self.journal = Journal(self.root / STATE / "journal.jsonl")
        self.repairs: list = []
        with self._locked():  # repairs what a killed process left
            pass
        self._frames: dict = {}
        self._refreshed = 0.0
        self.refresh()

    # -- what is waiting ---------------------------------------------------------------------------------------

    def _images(self) -> list:
        if not self.inbox.is_dir():
            return []
        found = []
        for path in self.inbox.rglob("*"):
            hidden = any(part.startswith(".") for part in path.relative_to(self.inbox).parts)  # temp files, too
            if hidden or path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink():
                continue
            if path.is_file():
                found.append(path.relative_to(self.inbox).as_posix())
        return sorted(found)

    def refresh(self, at_most_every_s: float = 0.0) -> None:
        """Pick up new captures (a daemon may still be writing them) and forget frames moved away by hand."""
        if time.monotonic() - self._refreshed < at_most_every_s:
            return
        with self.lock:
            present = self._images()
            new = [i for i in present if i not in self._frames]
            for frame in self._score(new):
                self._frames[frame.id] = frame
            for frame in self._frames.values():
                if not frame.sidecar and frame.id not in new:
                    self._read_sidecar(frame)
            for gone in set(self._frames) - set(present):
                del self._frames[gone]
            self._refreshed = time.monotonic()

    def _read_sidecar(self, frame: Frame) -> None:
        """The sidecar's source, and its scores unless a bundle scores the frames; nothing while it is missing."""
        sidecar = read_sidecar(self.inbox / frame.id)
        if not sidecar:
            return
        frame.sidecar, frame.source = True, sidecar.get("source")
        if self.scorer is None:
            score = sidecar.get("score")
            frame.score = score if isinstance(score, (int, float)) else None
            frame.topk = _topk(sidecar.get("topk"))

    def _score(self, ids: list) -> list:
        frames = [Frame(frame_id) for frame_id in ids]
        for frame in frames:
            self._read_sidecar(frame)
        if self.scorer is not None and ids:
            for start in range(0, len(ids), 64):
                chunk = frames[start : start + 64]
                for frame, (score, topk) in zip(chunk, self.scorer([self.inbox / f.id for f in chunk])):
                    frame.score, frame.topk = score, topk
                if self.progress:
                    self.progress(f"scored {start + len(chunk)} of {len(ids)} frames")
        return frames

    def ordered(self) -> list:
        """Frames waiting, most uncertain first (no score at all before the lowest score)."""
        with self.lock:
            frames = list(self._frames.values())
        return sorted(frames, key=lambda f: (f.score is not None, f.score or 0.0, f.id))

    def frame(self, frame_id: str) -> Frame | None:
        return self._frames.get(frame_id)

    def was_labelled(self, frame_id: str) -> bool:
        """Whether the journal moved `frame_id` out of the inbox (here, or in another process)."""
        with self.lock:
            self.journal.sync()
            return any(r.get("op") == "move" and r.get("frame") == frame_id for r in self.journal.records)

    def known_labels(self) -> list:
        """Class folders already in CAPTURES, and the bundle's labels."""
        folders = [
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and not p.is_symlink()
        ]
        return sorted(set(folders) | set(self.model_labels))

    def keys_for(self, frame: Frame) -> list:
        """The labels keys 1-9 choose for `frame`: its top-k first, then the known labels."""
        ordered = [label for label, _ in frame.topk] + self.known_labels()
        return list(dict.fromkeys(ordered))[:MAX_KEYS]

    def state(self) -> dict:
        """What the page shows: the most uncertain frame, its keys, the progress, what undo would take back."""
        with self.lock:
            self.journal.sync()  # decisions another process made since
            ordered = self.ordered()
            undoable = self.journal.undoable()
        head = ordered[0] if ordered else None
        return {
            "frame": None if head is None else {**head.to_dict(), "keys": self.keys_for(head)},
            "left": len(ordered),
            "total": len(ordered) + len(_this_batch(undoable)),  # restarts included
            "labels": self.known_labels(),
            "undo": None if not undoable else {"frame": undoable[-1].get("frame"), "to": undoable[-1]["files"][0][1]},
        }

    # -- decisions ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """The thread lock, and flock(2) on CAPTURES/.labels/lock shared with every other process labelling these
        captures (a second `edgecls label`, an `--import` while the page is used); the journal is read again under
        it, and a move a killed process left unfinished is repaired (no live process can be inside one then)."""
        with self.lock:
            if self._held:
                self._held += 1
                try:
                    yield
                finally:
                    self._held -= 1
                return
            try:
                held = file_lock(self.root / STATE / "lock")
                held.__enter__()
            except OSError as exc:
                raise EdgeclsError(
                    f"cannot lock {self.root / STATE / 'lock'}: {exc.strerror or exc}: is {self.root} writable?"
                ) from exc
            self._held = 1
            try:
                self.journal.sync()
                if self.journal.pending():
                    self.repairs += self._repair()
                yield
            finally:
                self._held = 0
                held.__exit__(None, None, None)

    def decide(self, frame_id: str, label: str | None) -> list:
        """Move the frame into CAPTURES/<label>/ (None: .discarded/); [[from, to], ...] relative to CAPTURES."""
        with self._locked():
            folder_name = DISCARDED if label is None else same_class(check_label(label), self.known_labels())
            image = self.inbox / frame_id
            if frame_id not in self._frames or not image.is_file():
                self._frames.pop(frame_id, None)
                raise FrameGone(
                    f"frame {frame_id} was already labelled (in another tab?) or moved: showing the next one"
                )
            pairs = self._pairs(image, self.root / folder_name)
            named = None if label is None else folder_name  # the class as its folder is named (NFC, or the existing)
            self._journaled("move", pairs, frame=frame_id, label=named, left=len(self._frames))
            del self._frames[frame_id]
            return pairs

    def undo(self) -> str:
        """Take the last decision back: its files return to the inbox; the frame's id."""
        with self._locked():
            undoable = self.journal.undoable()
            if not undoable:
                raise EdgeclsError("nothing to undo")
            last = undoable[-1]
            image_src, image_dst = last["files"][0]
            if not (self.root / image_dst).is_file():
                self.journal.skip(last["seq"], f"{image_dst} is no longer there")
                more = " (u again undoes the decision before it)" if len(undoable) > 1 else ""
                raise EdgeclsError(f"cannot undo: {image_dst} is no longer there (moved by hand?): passed over{more}")
            back = self._pairs(self.root / image_dst, (self.root / image_src).parent, Path(image_src).stem)
            self._journaled("undo", back, undoes=last["seq"], frame=last.get("frame"))
            frame_id = (self.root / back[0][1]).relative_to(self.inbox).as_posix()
        self.refresh()
        return frame_id

    def _pairs(self, image: Path, folder: Path, stem: str | None = None) -> list:
        """[[from, to]] for the image and its sidecar, to the first free name in `folder` (never an overwrite)."""
        try:
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise EdgeclsError(
                    f"{folder} is not a plain folder: labelled frames go only into folders under {self.root}"
                )
            files = [image] + [p for p in (image.with_suffix(".json"),) if p.is_file()]
            base = stem or image.stem
            for n in itertools.count():
                name = base if n == 0 else f"{base}-{n}"
                targets = [folder / (name + f.suffix) for f in files]
                if not any(t.exists() or t.is_symlink() for t in targets):
                    break
        except OSError as exc:
            raise EdgeclsError(f"cannot look into {folder}: {exc.strerror or exc} ({_hint(exc, folder)})") from exc
        return [
            [f.relative_to(self.root).as_posix(), t.relative_to(self.root).as_posix()] for f, t in zip(files, targets)
        ]

    def _journaled(self, op: str, pairs: list, **extra) -> None:
        """`begin`, the renames, `done`; a rename that fails (another disk, permissions) is taken back: `aborted`."""
        seq = self.journal.begin(op, pairs, **extra)
        done: list = []  # the renames this move made: only these are taken back
        try:
            self._move(pairs, done)
        except EdgeclsError as exc:
            for src, dst in reversed(done):
                os.rename(self.root / dst, self.root / src)
            self.journal.end(seq, "aborted", error=str(exc))
            raise
        self.journal.end(seq)

    def _move(self, pairs: list, done: list) -> None:
        pause = float(os.environ.get(PAUSE_MID_MOVE_ENV) or 0)
        folders = set()
        for i, (src, dst) in enumerate(pairs):
            source, target = self.root / src, self.root / dst
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(source, target)
            except FileNotFoundError as exc:
                if i > 0 and not source.exists():  # the daemon's --capture-max-bytes removed the sidecar just now
                    continue
                raise FrameGone(f"{src} was removed meanwhile (the capture daemon's size cap?)") from exc
            except OSError as exc:
                raise EdgeclsError(f"cannot move {src} to {dst}: {exc.strerror or exc} ({_hint(exc, target)})") from exc
            done.append((src, dst))
            folders |= {source.parent, target.parent}
            if i == 0 and pause:
                time.sleep(pause)
        for folder in folders:
            _fsync_dir(folder)

    # -- after a kill ------------------------------------------------------------------------------------------

    def _repair(self) -> list:
        """Finish or take back moves a kill interrupted (under the file lock); one line per move saying which."""
        said = []
        for record in self.journal.pending():
            pairs = record["files"]
            forward = (self.root / pairs[0][1]).exists() and not (self.root / pairs[0][0]).exists()
            if not forward and not (self.root / pairs[0][0]).exists():
                self.journal.end(record["seq"], "aborted", repaired="image in neither place (moved by hand?)")
                said.append(f"an interrupted move of {pairs[0][0]} was dropped: the image is in neither place")
                continue
            for pair in pairs[1:]:  # the sidecar goes where its image is
                want, other = (pair[1], pair[0]) if forward else (pair[0], pair[1])
                if (self.root / other).exists() and not (self.root / want).exists():
                    (self.root / want).parent.mkdir(parents=True, exist_ok=True)
                    os.rename(self.root / other, self.root / want)
                    _fsync_dir((self.root / want).parent)
            self.journal.end(record["seq"], "done" if forward else "aborted", repaired=True)
            where = pairs[0][1] if forward else pairs[0][0]
            said.append(
                f"finished a move a kill interrupted: {where} and its sidecar are together"
                if forward
                else f"took back a move a kill interrupted: {where} stays unlabelled"
            )
        for line in said:
            log.warning("label: %s", line)
        return said
