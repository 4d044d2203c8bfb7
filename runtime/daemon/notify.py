"""systemd's notify protocol without a library: one datagram per message to $NOTIFY_SOCKET.

The daemon says READY=1 once the first frame has been classified (sources run, the model works),
WATCHDOG=1 every half `WatchdogSec` but only when frames were classified since the last ping (so
systemd restarts a daemon whose every source is down or whose loop hangs), and STOPPING=1 on stop.
Outside systemd ($NOTIFY_SOCKET unset) nothing is sent and nothing runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger("edgecls.daemon")


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one sd_notify datagram ("READY=1\\nSTATUS=..."); False when there is no socket or it failed.

    socket_path: a filesystem path, or `@name` for an abstract socket (default: $NOTIFY_SOCKET).
    """
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":  # vsock:// and friends are for VMs; not ours to handle
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:  # systemd gone or the socket not writable: the daemon itself must keep running
        log.debug("sd_notify to %s failed: %s", path, exc)
        return False
    return True


def watchdog_interval(environ=None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when systemd wants none."""
    environ = os.environ if environ is None else environ
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):  # meant for another process (we were started by a wrapper)
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class SystemdNotifier:
    """A small thread that reports the daemon's progress to systemd.

    progress(): frames classified so far, over every source; READY and WATCHDOG follow it.
    status(): a one-line STATUS= text for `systemctl status`.
    """

    def __init__(self, progress, status=lambda: "", *, socket_path: str | None = None, interval: float | None = None):
        self.socket_path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.interval = interval
        self._progress, self._status = progress, status
        self.ready = False
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sd_notify", daemon=True)

    @classmethod
    def from_env(cls, progress, status=lambda: ""):
        """None outside systemd (no $NOTIFY_SOCKET)."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return None
        return cls(progress, status, interval=watchdog_interval())

    def send(self, message: str) -> bool:
        return notify(message, self.socket_path)

    def start(self) -> SystemdNotifier:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(0.5)
        self.send("STOPPING=1")

    def _run(self) -> None:
        tick = min(0.2, self.interval or 0.2)
        pinged_at, pinged_progress = time.monotonic(), self._progress()
        while not self._stop.wait(tick):
            progress = self._progress()
            if not self.ready and progress > 0:
                self.ready = self.send(f"READY=1\nSTATUS={self._status()}") or self.ready
                pinged_at, pinged_progress = time.monotonic(), progress
                continue
            if not self.ready or self.interval is None or time.monotonic() - pinged_at < self.interval:
                continue
            if progress > pinged_progress:  # frames flowed since the last ping: we are alive and useful
                self.pings += self.send(f"WATCHDOG=1\nSTATUS={self._status()}")
                pinged_at, pinged_progress = time.monotonic(), progress
