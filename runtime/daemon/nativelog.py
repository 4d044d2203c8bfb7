"""Native libraries' stderr (OpenCV, FFmpeg, GStreamer, LiteRT) through our logging, at debug level.

OpenCV's `[ WARN:0@1.2] ...`, FFmpeg's `Connection refused` and LiteRT's `INFO: Created TensorFlow
Lite XNNPACK delegate` are written by C/C++ code straight to file descriptor 2, where no Python
logging setting reaches them: in a daemon's journal they read like errors and interleave with our
own lines. `native_output_to_log()` points fd 2 at a pipe whose reader thread logs each line on the
`edgecls.native` logger at DEBUG, and moves Python's own stderr (our log handlers, tracebacks,
faulthandler) to a duplicate of the real one, so nothing of ours is captured or lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading

log = logging.getLogger("edgecls.native")


def _pump(fd: int) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip("\r")
                if text.strip():
                    log.debug("native: %s", text)
        if pending.strip():
            log.debug("native: %s", pending.decode("utf-8", "replace"))


@contextlib.contextmanager
def native_output_to_log():
    """Within the block, whatever native code writes to fd 2 is logged at debug level instead."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    python_stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                              errors="backslashreplace")
    old_stderr = sys.stderr
    moved = _retarget_handlers(old_stderr, python_stderr)
    sys.stderr = python_stderr
    fault_was_on = faulthandler.is_enabled()
    faulthandler.enable(python_stderr)  # a crash's traceback must reach the real stderr, not the pipe
    os.dup2(write_end, 2)
    os.close(write_end)
    reader = threading.Thread(target=_pump, args=(read_end,), name="native-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        os.dup2(real, 2)  # closes the pipe's last write end: the reader drains and ends
        os.close(real)
        reader.join(1.0)
        sys.stderr = old_stderr
        for handler in moved:
            handler.setStream(old_stderr)
        if fault_was_on:
            faulthandler.enable(old_stderr)
        else:
            faulthandler.disable()
        python_stderr.close()


def _retarget_handlers(old, new) -> list:
    """Stream handlers writing to the old sys.stderr object follow it to the real stderr's duplicate."""
    moved = []
    loggers = [logging.getLogger()] + [l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
                moved.append(handler)
    return moved
