"""The daemon's HTTP side: /healthz, /metrics, /latest and the preview (/, /stream/N) on a ThreadingHTTPServer.

Bound to 127.0.0.1 unless told otherwise. With a token, every endpoint wants
`Authorization: Bearer TOKEN` (compared in constant time) and answers 401 without it. A browser
cannot send that header for the preview's <img> streams, so `/?token=TOKEN` (the link the daemon
prints) answers with a session cookie (HttpOnly, SameSite=Strict, derived from the token, not the
token) and a redirect to `/`, and the cookie is accepted like the header. Request lines go to the
debug log with any `token=` value blanked; headers (where the token travels) are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.daemon")


class StatusServer:
    """Serves the daemon's state; each callable is read per request, so answers are always current.

    health() -> (healthy: bool, detail: dict); latest() -> dict; metrics() -> (body bytes, content type).
    idle_timeout: seconds a connection may stay silent, or a viewer stop reading, before it is dropped.
    """

    def __init__(
        self,
        *,
        health,
        latest,
        metrics,
        preview=None,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        idle_timeout: float = 10.0,
    ):
        routes = {"/healthz": self._healthz, "/latest": self._latest, "/metrics": self._metrics}
        if preview is not None:
            routes["/"] = self._page
        self._stopping = threading.Event()
        handler = type(
            "_BoundHandler",
            (_Handler,),
            {
                "routes": routes,
                "token": (token or "").encode() or None,
                "preview": preview,
                "stopping": self._stopping,
                "timeout": idle_timeout,
            },
        )
        self._health, self._latest_fn, self._metrics_fn = health, latest, metrics
        self._preview = preview
        try:
            self._server = _Server((host, port), handler)
        except OSError as exc:
            raise EdgeclsError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}: pick another --port or --host"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends open preview streams
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _healthz(self):
        healthy, detail = self._health()
        return (200 if healthy else 503), "application/json", _json(detail)

    def _latest(self):
        return 200, "application/json", _json(self._latest_fn())

    def _metrics(self):
        body, content_type = self._metrics_fn()
        return 200, content_type, body

    def _page(self):
        from runtime.daemon.preview import page

        return 200, "text/html; charset=utf-8", page(self._preview.names())


class _Server(ThreadingHTTPServer):
    """A thread per connection (daemon threads: stop() never waits for a viewer), quiet about clients that leave."""

    daemon_threads = True
    request_queue_size = 128  # 5 (the default backlog) makes a burst of scrapers wait out SYN retries

    def handle_error(self, request, client_address):
        # socketserver prints a traceback on stderr for any error; a client that hung up or went silent is routine.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("http %s: connection ended: %s: %s", client_address[0], type(exc).__name__, exc)
        else:
            log.error("http %s: %s: %s", client_address[0], type(exc).__name__, exc, exc_info=True)


def _json(data) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode()


COOKIE = "edgecls_session"
_TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """A request line or path with any `token=` value blanked, for logs."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


def session_cookie(token: bytes) -> str:
    """The preview's cookie value: an HMAC of the token, so the cookie jar never holds the token itself."""
    return hmac.new(token, b"edgecls preview session v1", hashlib.sha256).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    token: bytes | None = None
    server_version = "edgecls"
    sys_version = ""
    # A client that connects and never sends (or a viewer that stopped reading) would hold its thread forever.
    timeout = 10.0

    def log_message(self, fmt, *args):  # the request line only, token blanked; never headers
        log.debug("http %s: %s", self.client_address[0], redact(fmt % args))

    def _authorized(self) -> bool:
        if self.token is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return True
        # Parsed by hand: a browser sends every cookie of this host whatever the port (another app's
        # `prefs={"a":1}` included), and http.cookies drops all cookies after the first it dislikes.
        name, expected = self._cookie_name(), session_cookie(self.token).encode()
        for part in self.headers.get("Cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name and hmac.compare_digest(value.strip().strip('"').encode(), expected):
                return True
        return False

    def _cookie_name(self) -> str:
        """Per port: two daemons on one host (cookies ignore ports) must not sign each other out."""
        return f"{COOKIE}_{self.server.server_address[1]}"

    def _login(self, query: str) -> bool:
        """`/?token=TOKEN` from a browser: set the session cookie and redirect to `/` (the token leaves the URL bar)."""
        # Split by hand and percent-decoded only: parse_qs turns the '+' of a base64 token into a space.
        given = [unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if k == "token"]
        if self.token is None or self.preview is None or not given:
            return False
        if not hmac.compare_digest(given[-1].encode(), self.token):
            return False
        cookie = f"{self._cookie_name()}={session_cookie(self.token)}; Path=/; HttpOnly; SameSite=Strict"
        self._send(303, "text/plain; charset=utf-8", b"signed in\n", {"Location": "/", "Set-Cookie": cookie})
        return True

    def _send(self, status: int, content_type: str, body: bytes, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/" and "token=" in query and self._login(query):
            return
        if not self._authorized():
            challenge = {"WWW-Authenticate": 'Bearer realm="edgecls"'}
            if path == "/" and self.preview is not None:  # a browser: a one-field form that comes back as /?token=
                from runtime.daemon.preview import sign_in_page

                self._send(401, "text/html; charset=utf-8", sign_in_page(wrong="token=" in query), challenge)
            else:
                self._send(401, "application/json", _json({"error": "missing or wrong bearer token"}), challenge)
            return
        route = self.routes.get(path)
        if route is None and self.preview is not None and path.startswith("/stream/") and self.command == "GET":
            self._stream(path[len("/stream/") :])
            return
        if route is None:
            self._send(404, "application/json", _json({"error": "not found", "endpoints": sorted(self.routes)}))
            return
        try:
            status, content_type, body = route()
        except Exception as exc:  # a broken endpoint answers 500 and the server keeps serving
            log.error("http %s failed: %s: %s", redact(self.path), type(exc).__name__, exc, exc_info=True)
            status, content_type, body = 500, "application/json", _json({"error": f"{type(exc).__name__}: {exc}"})
        self._send(status, content_type, body)

    do_HEAD = do_GET

    def _stream(self, which: str) -> None:
        """/stream/<index>: the source's newest classified frame, annotated, as MJPEG until the client leaves."""
        from runtime.daemon.preview import BOUNDARY, MAX_FPS, annotate, jpeg, part

        names = self.preview.names()
        if not which.isdigit() or int(which) >= len(names):
            self._send(404, "application/json", _json({"error": "no such source", "sources": len(names)}))
            return
        index = int(which)
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        sent = None
        try:
            while not self.stopping.is_set():
                shown = self.preview.frame(index)  # (image, result, fps) or None before the first result
                if shown is not None and shown[1]["frame"] != sent:
                    image, result, fps = shown
                    self.wfile.write(part(jpeg(annotate(image, result, fps)), result["frame"]))
                    self.wfile.flush()
                    sent = result["frame"]
                self.stopping.wait(1 / MAX_FPS)
        except OSError:  # the viewer closed the page (broken pipe, reset) or stopped reading (timeout)
            pass
        self.close_connection = True
