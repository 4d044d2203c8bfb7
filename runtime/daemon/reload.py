"""Hot model reload: on SIGHUP, or when the bundle path is a symlink (a flashed `current`) that now points elsewhere.

The new bundle is loaded and verified (sha256, input shape) on this thread while the old model
keeps serving; only a loaded Classifier is handed to the loops, which adopt it between two frames.
A bundle that fails to load is refused: the old model stays, and why is logged, kept for /healthz
(`refused`, apart from `bundle`, which always names the bundle serving) and counted in metrics. A refused
target is not retried until the link moves again or SIGHUP.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("edgecls.daemon")


class Reloader:
    """Watches `path` and swaps the model; `request()` (from any thread, not a signal handler) reloads it.

    load(path) -> a ready Classifier (raises on a bad bundle); swap(classifier) installs it.
    metrics: a `edgecls.runtime.daemon.metrics.Metrics` or None. poll_s: how often the link is read.

    serving: the resolved path the model in use was loaded from (default: where `path` points now). A daemon
    resolves its link once and loads from there, so a switch during its start is seen here as a move.
    """

    def __init__(self, path, *, load, swap, metrics=None, poll_s: float = 0.5, serving: str | None = None):
        self.path = str(path)
        self._load, self._swap, self._metrics = load, swap, metrics
        self.poll_s = poll_s
        self.target = os.path.realpath(self.path) if serving is None else str(serving)  # the bundle serving
        self.refused: dict | None = None  # {"bundle", "error", "at"} of the last refused target, until one loads
        self._seen = (self.target, None)  # the link at the last look: only a move (or SIGHUP) is worth a load
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_attempt: float | None = None  # time.time() of the last load attempt
        self._requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reload", daemon=True)

    def start(self) -> Reloader:
        self._thread.start()
        return self

    def stop(self, timeout: float = 0.2) -> None:
        """Does not wait for a load in progress: its result is dropped with the daemon."""
        self._stop.set()
        self._requested.set()
        self._thread.join(timeout)

    def request(self) -> None:
        self._requested.set()

    def status(self) -> dict:
        """For /healthz: which bundle serves, and the one refused since (None when the last reload worked)."""
        return {
            "bundle": self.target,
            "refused": None if self.refused is None else dict(self.refused),
            "reloads": self.reloads,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_attempt": self.last_attempt,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            requested = self._requested.wait(self.poll_s)
            if self._stop.is_set():
                return
            self._requested.clear()
            seen = self._look()
            moved, self._seen = seen != self._seen, seen
            target = seen[0]
            if requested or (moved and target != self.target):
                self.reload(target, "SIGHUP" if requested else f"{self.path} now points to {target}")

    def _look(self) -> tuple:
        """(where the path points, which link that is): a flash renames a new link over `current` each time, so
        a refused release flashed again is a move even when the rollback in between came and went unseen."""
        try:
            st = os.lstat(self.path)
            link = (st.st_ino, st.st_mtime_ns)
        except OSError:
            link = None
        return os.path.realpath(self.path), link

    def reload(self, target: str, why: str) -> bool:
        """Load `target`; swap it in when it loads, else keep the old model. True when swapped."""
        log.info("reloading the model (%s)", why)
        self.last_attempt = time.time()
        try:
            classifier = self._load(target)
        except Exception as exc:  # any failure keeps the old model serving
            self.failures += 1
            self.last_error = f"{target}: {type(exc).__name__}: {exc}"
            # Remembered apart from the serving one: not retried until the link moves again or SIGHUP.
            self.refused = {"bundle": target, "error": f"{type(exc).__name__}: {exc}", "at": self.last_attempt}
            log.error("model reload refused, the old model keeps serving: %s", self.last_error)
            if self._metrics is not None:
                self._metrics.reload_done(ok=False)
            return False
        self._swap(classifier)
        self.target, self.last_error, self.refused = target, None, None
        self.reloads += 1
        log.info("model reloaded from %s (%d labels)", target, len(classifier.labels))
        if self._metrics is not None:
            self._metrics.reload_done(ok=True)
        return True
