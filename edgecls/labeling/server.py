"""The labelling page's HTTP server: the daemon's hardened server (runtime/daemon/http.py) with the page's routes.

Reused as is: bounded worker threads and a request read whole before a thread takes it (slowloris), the bearer
token or the session cookie a sign-in link (`/?token=`) or form sets, the wrong-token back-off, Host checks when
there is no token. Added: GET `/` (the page), `/api/state`, `/image?frame=ID`, and POST `/api/decide`
(`{"frame": ID, "label": NAME}`, or `"discard": true`) and `/api/undo`, JSON only and only from the page's own
origin (a page on another port of the same host is same-site, so the cookie alone would let it post). A frame ID
is only ever looked up among the frames waiting (never joined to a path as given), so `..` or an absolute path in
any parameter finds nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import parse_qs, unquote

from edgecls.labeling.store import FrameGone, LabelStore
from edgecls.runtime.daemon.config import HttpConfig, allowed_host_names
from edgecls.runtime.daemon.http import (
    MAX_FORM_BYTES,
    _allowed_hosts,
    _Guesses,
    _Handler,
    _is_loopback,
    _Server,
    _token_bytes,
)
from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.labeling")

_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class LabelServer:
    """Serves `store` on host:port (port 0: any free port); `stop()` ends it."""

    def __init__(self, store: LabelStore, host: str = "127.0.0.1", port: int = 8090, token: str | None = None):
        self.store = store
        self._stopping = threading.Event()
        config = HttpConfig(host=host, port=port, token=token)
        handler = type(
            "_BoundLabelHandler",
            (_LabelHandler,),
            {
                "store": store,
                "token": _token_bytes(token),
                "preview": True,  # turns on the sign-in link and form of the daemon's handler
                "stopping": self._stopping,
                "timeout": config.idle_timeout,
                "allowed_hosts": None if token else _allowed_hosts(host, allowed_host_names(())),
                "guesses": _Guesses(),
                "streams": threading.BoundedSemaphore(1),
            },
        )
        try:
            self._server = _Server(
                (host, port),
                handler,
                workers=config.workers,
                max_pending=config.max_pending,
                request_timeout=config.idle_timeout,
            )
        except OSError as exc:
            raise EdgeclsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}: pick another --port") from exc
        if not token and not _is_loopback(host):
            log.warning("the label page on %s has no token: anyone who can reach it can move your captures", host)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> LabelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


class _LabelHandler(_Handler):
    store: LabelStore

    def _allowed(self, path: str, link: list) -> bool:
        """The token check of the daemon's GET, for every route here; a browser at `/` gets the sign-in form."""
        if self.token is None:
            return True
        given, valid = self._credentials()
        if valid:
            self.guesses.succeeded(self.client_address[0])
            return True
        if given:
            self.guesses.failed(self.client_address[0])
        if path == "/":
            self._sign_in_page(wrong=bool(link))
        else:
            self._error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="edgecls"'})
        return False

    def _sign_in_page(self, wrong: bool) -> None:
        from edgecls.labeling.page import sign_in_page

        challenge = {"WWW-Authenticate": 'Bearer realm="edgecls"'}
        self._send(401, "text/html; charset=utf-8", sign_in_page(wrong=wrong), challenge)

    def _get(self):
        path, _, query = self.path.partition("?")
        link = [unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if k == "token"]
        if path == "/" and link and self._sign_in(link):
            return
        if not self._allowed(path, link):
            return
        if path == "/":
            from edgecls.labeling.page import page

            self._send(200, "text/html; charset=utf-8", page())
        elif path == "/api/state":
            self.store.refresh(at_most_every_s=2.0)
            self._reply(200, self.store.state())
        elif path == "/image":
            self._image(parse_qs(query).get("frame", [""])[-1])
        else:
            self._error(404, "not found: the page is /, its API /api/state, /api/decide, /api/undo")

    def _image(self, frame_id: str) -> None:
        frame = self.store.frame(frame_id)  # only frames waiting: never a path as given
        if frame is None:
            self._error(404, "no such frame waiting for a label")
            return
        path = self.store.inbox / frame.id
        try:
            body = path.read_bytes()
        except OSError:
            self._error(404, "that frame was just labelled or moved")
            return
        self._send(200, _TYPES.get(path.suffix.lower(), "application/octet-stream"), body)

    def _post(self):
        path = self.path.partition("?")[0]
        if path == "/":
            super()._post()  # the sign-in form
            return
        if not self._allowed(path, []):
            return
        if path not in ("/api/decide", "/api/undo"):
            self._error(404, "not found: POST /api/decide or /api/undo", {"Allow": "GET, HEAD"})
            return
        if self._cross_site():
            return
        body = self._body()
        if body is None:
            return
        try:
            if path == "/api/undo":
                answer = {"undone": self.store.undo()}
            else:
                answer = {"moved": self._decide(body)}
        except FrameGone as exc:
            self._reply(409, {"error": str(exc), **self.store.state()})
            return
        except EdgeclsError as exc:
            self._reply(400, {"error": str(exc), **self.store.state()})
            return
        except OSError as exc:  # the disk, not the client: answered, never a dropped connection (_guarded's reading)
            log.error("label: %s failed: %s", path, exc)
            self._reply(500, {"error": f"{path} failed: {exc.strerror or exc} (disk full?)", **self.store.state()})
            return
        self.store.refresh(at_most_every_s=2.0)  # frames captured meanwhile, so "nothing left" is true
        self._reply(200, {**answer, **self.store.state()})

    def _cross_site(self) -> bool:
        """Refuse a POST another page sent: the session cookie goes with any request from the same host, whatever
        the port (a local dev server, Label Studio on :8080), so a form there could otherwise move frames here.
        Browsers name the sender in Origin and Sec-Fetch-Site; a form or a fetch without a CORS preflight cannot
        send Content-Type: application/json."""
        site, origin, host = self.headers.get("Sec-Fetch-Site"), self.headers.get("Origin"), self.headers.get("Host")
        if site not in (None, "same-origin", "none") or origin not in (None, f"http://{host}", f"https://{host}"):
            self._error(403, f"refused a request from another page ({origin or site}): use the labelling page itself")
            return True
        if self.headers.get_content_type() != "application/json":
            self._error(415, "send the body as JSON, with Content-Type: application/json")
            return True
        return False

    def _decide(self, body: dict) -> list:
        frame_id = body.get("frame")
        if not isinstance(frame_id, str):
            raise EdgeclsError('send {"frame": ID, "label": NAME} or {"frame": ID, "discard": true}')
        label = None if body.get("discard") is True else body.get("label")
        if label is None and body.get("discard") is not True:
            raise EdgeclsError('send a "label" (a class name) or "discard": true')
        return self.store.decide(frame_id, label)

    def _body(self) -> dict | None:
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._error(411 if length < 0 else 413, f"send the JSON body with a Content-Length up to {MAX_FORM_BYTES}")
            self.close_connection = True
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._error(400, "the body must be a JSON object")
            return None
        return body

    def _reply(self, status: int, data: dict) -> None:
        self._send(status, "application/json", (json.dumps(data) + "\n").encode())
