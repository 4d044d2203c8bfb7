"""`edgecls label CAPTURES`: the page served until SIGTERM/Ctrl-C (or, with exit_when_done, until nothing is left)."""

from __future__ import annotations

import secrets
import signal
import threading

from edgecls.labeling.server import LabelServer
from edgecls.labeling.store import LabelStore
from edgecls.runtime.daemon.config import TOKEN_ENV, read_token


def session_token(token_file) -> tuple:
    """(token, where it came from): --token-file, else EDGECLS_RUN_TOKEN, else one made for this session."""
    token = read_token(token_file)
    if token_file is not None:
        return token, f"token from {token_file}"
    if token:
        return token, f"token from {TOKEN_ENV}"
    return secrets.token_urlsafe(24), "a token made for this session; the link signs you in"


def serve(store: LabelStore, host: str, port: int, token_file, exit_when_done: bool, say) -> int:
    """Serve the page; `say(line)` prints the URL line and the end; returns the number of frames still left."""
    token, origin = session_token(token_file)
    server = LabelServer(store, host, port, token).start()
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    link = server.url if token_file is not None or origin.startswith("token from") else f"{server.url}?token={token}"
    try:
        say(f"edgecls label: {link} ({origin})")
        while not stop.wait(0.5):
            if exit_when_done:
                store.refresh()
                if not store.ordered():
                    say("edgecls label: nothing left to label")
                    break
    finally:
        server.stop()
        with store.lock:  # a decision under way finishes both its renames before the process ends
            pass
        for number, handler in previous.items():
            signal.signal(number, handler)
    return len(store.ordered())
