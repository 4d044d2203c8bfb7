"""Native libraries' stderr (OpenCV, FFmpeg, GStreamer, LiteRT) through our logging, at debug level.

OpenCV's `[ WARN:0@1.2] ...`, FFmpeg's `Connection refused` and LiteRT's `INFO: Created TensorFlow
Lite XNNPACK delegate` are written by C/C++ code straight to file descriptor 2, where no Python
logging setting reaches them: in a daemon's journal they read like errors and interleave with our
own lines. `native_output_to_log()` points fd 2 at a pipe whose reader thread logs each line on the
`edgecls.native` logger at DEBUG (secrets masked by runtime/redact.py), and moves Python's own stderr (our
log handlers, tracebacks, faulthandler) to a duplicate of the real one, so nothing of ours is captured or lost.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import re
import sys
import threading

from edgecls.runtime.redact import redact

log = logging.getLogger("edgecls.native")


# Lines that explain a crash (Qt's "could not connect to display" before an abort, a C++ terminate, a
# failed assertion) are logged as warnings: the process may be gone before anyone turns on --debug.
# Plain substring tests on the lowered bytes: a case-insensitive regex alternation costs ~8 ms per 64 KiB.
_SERIOUS = (
    b"fatal",
    b"abort",
    b"terminate called",
    b"could not connect",
    b"assertion failed",
    b"assert failed",
    b"segmentation fault",
    b"core dumped",
    b"out of memory",
)


def _serious(data: bytes) -> bool:
    low = data.lower()
    return any(word in low for word in _SERIOUS)


MAX_LINE = 8192  # a "line" that never ends (progress redrawn with \r, binary junk) is logged in pieces


def _emit(line: bytes, level: int) -> None:
    text = line.decode("utf-8", "replace").strip()
    if text:  # FFmpeg quotes the URLs it opens (an HLS segment's, with its password and token): masked like ours
        log.log(level, "native: %s", redact(text))


def _emit_all(data: bytes) -> None:
    """Each line at debug level, the serious ones at warning; without debug, only serious lines are looked at."""
    debug = log.isEnabledFor(logging.DEBUG)
    if not debug and not _serious(data):  # the common case: one scan of the chunk, no per-line work
        return
    for line in _LINE_END.split(data):
        serious = _serious(line)
        if serious or debug:
            _emit(line, logging.WARNING if serious else logging.DEBUG)


def _pump(fd: int) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            data = pending + chunk  # only the unfinished tail is carried over, at most MAX_LINE bytes
            end = max(data.rfind(b"\n"), data.rfind(b"\r"))
            if end >= 0:
                _emit_all(data[:end])
                pending = data[end + 1 :]
            else:
                pending = data
            if len(pending) > MAX_LINE:
                _emit_all(pending)
                pending = b""
        _emit_all(pending)


_LINE_END = re.compile(rb"\r\n|\r|\n")
_depth = 0  # nested use is a no-op: the inner block would take the pipe for the real stderr


@contextlib.contextmanager
def native_output_to_log():
    """Within the block, whatever native code writes to fd 2 is logged at debug level instead.

    The pipe's write end is non-blocking: native code that writes while holding the GIL (so the
    reader cannot run) loses the excess chatter instead of freezing the whole process on a full pipe.
    """
    global _depth
    if _depth:
        yield
        return
    _depth += 1
    try:
        with _redirected():
            yield
    finally:
        _depth -= 1


@contextlib.contextmanager
def _redirected():
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    python_stderr = os.fdopen(
        os.dup(real), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace"
    )
    old_stderr = sys.stderr
    moved = _retarget_handlers(old_stderr, python_stderr)
    sys.stderr = python_stderr
    fault_was_on = faulthandler.is_enabled()
    faulthandler.enable(python_stderr)  # a crash's traceback must reach the real stderr, not the pipe
    os.set_blocking(write_end, False)
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
        faulthandler.disable()
        if fault_was_on:
            try:
                faulthandler.enable(old_stderr)
            except (AttributeError, ValueError, OSError):  # a stand-in stderr without a file descriptor
                pass
        python_stderr.close()


def _retarget_handlers(old, new) -> list:
    """Stream handlers writing to the old sys.stderr object follow it to the real stderr's duplicate."""
    moved = []
    loggers = [logging.getLogger()] + [
        l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)
                moved.append(handler)
    return moved
