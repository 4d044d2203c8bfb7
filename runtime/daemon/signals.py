"""SIGTERM/SIGINT/SIGHUP for the daemon, acted on by a thread: the handlers themselves take no lock.

A Python signal handler runs in the main thread between two bytecodes, possibly while that thread holds a
lock (inside `Event.wait`, or inside another handler's `Event.set`). A handler that takes the same
non-re-entrant lock (`Event.set` does) then waits on its own thread forever: a burst of signals (a
`systemctl reload` loop, an impatient Ctrl-C) froze the daemon for good. Here the handlers only set plain
attributes, and the C-level handler wakes a watcher thread through `signal.set_wakeup_fd`; that thread
calls `on_stop` / `on_reload` as ordinary code.
"""

from __future__ import annotations

import select
import signal
import socket
import threading

POLL_S = 0.5  # the watcher also looks at the flags this often, in case the wake-up byte was lost


class SignalWatcher:
    """`install()` from the main thread (else it does nothing and returns False); `uninstall()` restores all."""

    def __init__(self, on_stop, on_reload=None):
        self._on_stop, self._on_reload = on_stop, on_reload
        self.stop_requested = False  # set by the handlers: plain attributes, no lock
        self.reload_requests = 0
        self._previous: dict = {}
        self._previous_fd = -1
        self._closed = False
        self._thread = None
        self._r = self._w = None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)  # set_wakeup_fd wants a non-blocking fd: a full buffer drops bytes, never blocks
        self._previous_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._stop_handler)
        if self._on_reload is not None and hasattr(signal, "SIGHUP"):
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload_handler)
        self._thread = threading.Thread(target=self._run, name="signals", daemon=True)
        self._thread.start()
        return True

    def uninstall(self) -> None:
        if self._thread is None:
            return
        for sig, handler in self._previous.items():  # None: a handler not set from Python; the default did it
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._closed = True
        try:
            self._w.send(b"\0")
        except OSError:
            pass
        self._thread.join(1.0)
        self._r.close()
        self._w.close()
        self._thread = None

    def _stop_handler(self, signum, frame) -> None:
        self.stop_requested = True

    def _reload_handler(self, signum, frame) -> None:
        self.reload_requests += 1

    def _run(self) -> None:
        stopped, reloads = False, 0
        while not self._closed:
            try:
                select.select([self._r], [], [], POLL_S)
                while self._r.recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return
            if self.stop_requested and not stopped:
                stopped = True
                self._on_stop()
            if self.reload_requests != reloads:
                reloads = self.reload_requests
                self._on_reload()
