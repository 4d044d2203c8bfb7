"""Silence the converters' own chatter (signatures printed to stdout, C++ logs), keep our progress.

fd 1 belongs to the whole process, so nested or concurrent blocks (converts in threads of one program)
share one redirection: the first block in saves fd 1 and points it at /dev/null, the last one out puts
it back. Restoring per block would hand fd 1 a saved /dev/null when blocks end out of order.
While any block runs, every thread's stdout is silenced; stderr (our progress) never is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings

_lock = threading.Lock()
_depth = 0
_saved: int | None = None  # a duplicate of fd 1 as it was before the first block


def _enter() -> None:
    global _depth, _saved
    with _lock:
        if _depth == 0:
            sys.stdout.flush()
            saved = os.dup(1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
            except OSError:
                os.close(saved)
                raise
            finally:
                os.close(devnull)
            _saved = saved
        _depth += 1


def _leave() -> None:
    global _depth, _saved
    with _lock:
        _depth -= 1
        if _depth == 0:
            sys.stdout.flush()
            saved, _saved = _saved, None
            try:
                os.dup2(saved, 1)
            finally:
                os.close(saved)


@contextlib.contextmanager
def quiet():
    """Send fd 1 (Python and C++ stdout) to /dev/null and mute Python warnings for the block."""
    _enter()
    try:
        # catch_warnings swaps a module global too: it is only as thread-safe as Python's warnings module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _leave()
