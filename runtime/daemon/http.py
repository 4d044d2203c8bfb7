"""The daemon's HTTP side: /healthz, /metrics, /latest and the preview (/, /stream/N) on a bounded thread pool.

Bound to 127.0.0.1 unless told otherwise. With a token, every endpoint wants
`Authorization: Bearer TOKEN` (compared in constant time) and answers 401 without it. A browser
cannot send that header for the preview's <img> streams, so the sign-in form (POST `/`, the token
in the body) or the link `/?token=TOKEN` answers with a session cookie (HttpOnly, SameSite=Strict,
derived from the token, not the token) and a redirect to `/`, and the cookie is accepted like the
header. A client that keeps sending wrong tokens is answered 429 (with Retry-After) for a doubling time, the
right token included: answering it during the wait would tell a guesser which of its tries was right. A
client is an IPv4 address (all of 127/8 as one), or an IPv6 /64, so many addresses buy no more tries; a
locked-out client is logged (once a minute, with its count: a scraper with an old token) and counted in
/metrics. Request lines go to the debug log with secrets blanked; headers (where the token travels) are
never logged.

Without a token, a request naming a Host that is not an IP address, a localhost name, this machine's
name or one of `allowed_hosts` is refused (a DNS-rebinding page in a browser names its own domain).

Threads are bounded: a connection holds none until its whole request (head, and a body up to
MAX_FORM_BYTES) has arrived (one selector thread reads them all), then one of `workers` threads answers
it; a request must arrive whole within `request_timeout` of the accept. When `max_pending` connections
wait, a new one takes the place of the oldest of the client holding the most (answered 503): one client
cannot crowd out the others, nor its own next real request. (A fixed cap per client below the table's
size made an attacker with more connections than the cap churn, reconnecting each one dropped: 0.42 of
the frames/s in benchmarks/daemon_attacks.py; this way a passive flood costs nothing until the table is full.)
So silent or slow clients (slowloris) cannot multiply threads, hold them, or slow classification.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import ipaddress
import json
import logging
import queue
import re
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import unquote, unquote_plus

from edgecls.runtime.daemon.config import HOST, HttpConfig, allowed_host_names
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.redact import redact as _redact_secrets

log = logging.getLogger("edgecls.daemon")

FREE_FAILURES = 10  # wrong tokens a client may send before it must wait
MAX_LOCKOUT_S = 60.0
WARN_EVERY_S = 60.0  # a locked-out client is logged at most this often
MAX_FORM_BYTES = 4096  # a request body (the sign-in form) is read before a worker takes the request
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 52\r\n\r\n"
    b'{"error": "too many connections, retry in a second"}'
)


class StatusServer:
    """Serves the daemon's state; each callable is read per request, so answers are always current.

    health() -> (healthy: bool, detail: dict); latest() -> dict; metrics() -> (body bytes, content type).
    config: an `HttpConfig` (host, port, token, allowed_hosts, timeouts, workers, max_pending, max_streams), or
    its fields as keywords. workers: threads serving requests; max_streams of them may hold preview streams
    (more viewers get 503). max_pending: connections whose request has not fully arrived (they hold no
    thread); beyond, the oldest of the client (`client_of`) holding the most is answered 503 to make room.
    """

    def __init__(self, config: HttpConfig | None = None, *, health, latest, metrics, preview=None, **settings):
        if config is None:
            config = HttpConfig(**settings)
        elif settings:
            raise TypeError("give an HttpConfig or its fields as keywords, not both")
        host, port, token = config.host, config.port, config.token
        allowed = allowed_host_names(config.allowed_hosts)
        routes = {"/healthz": self._healthz, "/latest": self._latest, "/metrics": self._metrics}
        if preview is not None:
            routes["/"] = self._page
        self._stopping = threading.Event()
        self.guesses = _Guesses()  # wrong tokens per client; its counts are in /metrics
        handler = type(
            "_BoundHandler",
            (_Handler,),
            {
                "routes": routes,
                "token": _token_bytes(token),
                "preview": preview,
                "stopping": self._stopping,
                "timeout": config.idle_timeout,
                "allowed_hosts": None if token else _allowed_hosts(host, allowed),
                "guesses": self.guesses,
                "streams": threading.BoundedSemaphore(max(1, min(config.max_streams, config.workers - 1))),
            },
        )
        self._health, self._latest_fn, self._metrics_fn = health, latest, metrics
        self._preview = preview
        try:
            self._server = _Server(
                (host, port),
                handler,
                workers=config.workers,
                max_pending=config.max_pending,
                request_timeout=config.idle_timeout if config.request_timeout is None else config.request_timeout,
            )
        except OSError as exc:
            raise EdgeclsError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}: pick another --port or --host"
            ) from exc
        if not token and not _is_loopback(host):
            log.warning(
                "HTTP on %s:%d has no token: anyone who can reach this address sees the camera and the results; "
                "set a token (--token-file) or bind to %s (--host)",
                host,
                self._server.server_address[1],
                HOST,
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

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
        from edgecls.runtime.daemon.preview import page

        return 200, "text/html; charset=utf-8", page(self._preview.names())


def _token_bytes(token: str | None) -> bytes | None:
    """The token as UTF-8; a token no HTTP header can carry (control characters, spaces) is refused here."""
    if not token:
        return None
    if any(not c.isprintable() or c.isspace() for c in token):
        raise EdgeclsError(
            "the token must be one word of printable characters (no spaces or control characters): "
            "make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token.encode()


def client_of(address) -> str:
    """Who a connection counts as, for the wrong-token back-off and the pending cap: an IPv4 address (all of 127/8,
    one machine, as one), an IPv6 /64 (what one host or LAN gets), an ::ffff:-mapped IPv4 as that IPv4."""
    text = str(address).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return "127.0.0.0/8" if ip.is_loopback else str(ip)
    return str(ipaddress.ip_network((ip, 64), strict=False))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, extra) -> frozenset | None:
    """Host names a token-less daemon answers: localhost names, this machine's names, the bind name, the extras."""
    names = {"localhost", host.lower()} | {h.lower().rstrip(".") for h in extra}
    if "*" in names:
        return None
    name = socket.gethostname().lower().rstrip(".")  # not getfqdn(): a reverse DNS lookup can hang a start
    if name:
        names |= {name, name.split(".", 1)[0], name.split(".", 1)[0] + ".local"}
    return frozenset(names)


def _host_allowed(value: str, allowed: frozenset) -> bool:
    host = value.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return True  # a rebinding page cannot name an IP address: its origin is its own domain
    except ValueError:
        return host in allowed or host.endswith(".localhost")


class _Guesses:
    """Wrong tokens per client (`client_of`): after FREE_FAILURES, a wait that doubles with each further one (to 60 s).

    A client silent for FORGET_S starts again from nothing, so a typo weeks later costs no wait. A client that
    has to wait is logged at most once per WARN_EVERY_S, naming it and its count. `wrong` and `refused` count
    every wrong token and every 429, for /metrics.
    """

    MAX_CLIENTS = 4096
    FORGET_S = 600.0

    def __init__(self):
        self._lock = threading.Lock()
        self._clients: dict = {}  # client -> [failures, blocked until, last failure, last warning]: monotonic times
        self.wrong = 0
        self.refused = 0

    def wait_left(self, address: str) -> float:
        with self._lock:
            entry = self._clients.get(client_of(address))
            left = 0.0 if entry is None else max(0.0, entry[1] - time.monotonic())
            if left > 0:
                self.refused += 1
        return left

    def failed(self, address: str) -> None:
        client, now = client_of(address), time.monotonic()
        with self._lock:
            self.wrong += 1
            failures, _, last, warned = self._clients.pop(client, (0, 0.0, now, None))
            failures = 1 if now - last > self.FORGET_S else failures + 1
            over = failures - FREE_FAILURES  # the 10th wrong token already waits 1 s
            until = now + min(MAX_LOCKOUT_S, 2.0 ** min(over, 16)) if over >= 0 else 0.0
            if over >= 0 and (warned is None or now - warned >= WARN_EVERY_S):
                warned = now
                log.warning(
                    "http: %d wrong tokens from %s in a row: it is answered 429 (the right token too) for up to %.0f s "
                    "after each further one; a scraper or script there may have an old token",
                    failures,
                    client,
                    MAX_LOCKOUT_S,
                )
            self._clients[client] = (failures, until, now, warned)
            while len(self._clients) > self.MAX_CLIENTS:  # a flood of addresses must not grow memory
                self._clients.pop(next(iter(self._clients)))

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._clients.pop(client_of(address), None)


class _Server(HTTPServer):
    """Connections wait, without a thread, until their request head (line and headers) has arrived; then one of
    a fixed pool of worker threads (started as needed) answers it and closes the connection.

    Silent and slow clients (slowloris) cost a socket, not a thread: a head not complete within
    `request_timeout` of the accept is dropped, and beyond `max_pending` waiting a new connection is answered
    503 and closed. So `workers` bounds the threads, and a worker only waits for a client's body (up to the
    same deadline) or a preview viewer.
    """

    request_queue_size = 128  # 5 (the default backlog) makes a burst of scrapers wait out SYN retries

    def __init__(self, address, handler, *, workers: int, max_pending: int, request_timeout: float):
        if ":" in address[0]:  # an IPv6 address; "::" takes IPv4 clients too (as ::ffff:a.b.c.d)
            self.address_family = socket.AF_INET6
            address = (address[0].strip("[]"), address[1])
        self._ready: queue.Queue = queue.Queue()  # (socket, address, head bytes, deadline), or None to end a worker
        self._workers, self._max_workers, self._idle = [], workers, 0
        self._pool_lock = threading.Lock()
        self.current = threading.local()  # what the handler of this worker's connection reads: head, deadline
        self._heads = None
        super().__init__(address, handler)  # on a failed bind it calls server_close() itself
        self._heads = _HeadReader(self._dispatch, self.shutdown_request, max_pending, request_timeout)

    def server_bind(self):
        if self.address_family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request, client_address):
        self._heads.add(request, client_address)

    def _dispatch(self, request, client_address, head: bytes, deadline: float) -> None:
        with self._pool_lock:
            if self._ready.qsize() >= self._idle and len(self._workers) < self._max_workers:
                worker = threading.Thread(target=self._work, name=f"http-{len(self._workers)}", daemon=True)
                self._workers.append(worker)
                self._idle += 1
                worker.start()
        self._ready.put((request, client_address, head, deadline))

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            request, client_address, self.current.head, self.current.deadline = item
            with self._pool_lock:
                self._idle -= 1
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)
                with self._pool_lock:
                    self._idle += 1

    def server_close(self) -> None:
        super().server_close()
        if self._heads is not None:
            self._heads.close()
        while True:  # answered by nobody now: closed, not left to time out
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        for _ in self._workers:
            self._ready.put(None)

    def handle_error(self, request, client_address):
        # socketserver prints a traceback on stderr for any error; a client that hung up or went silent is routine.
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("http %s: connection ended: %s: %s", client_address[0], type(exc).__name__, exc)
        else:
            log.error("http %s: %s: %s", client_address[0], type(exc).__name__, exc, exc_info=True)


class _HeadReader:
    """One thread and a selector: reads each new connection's request (head, and a body up to MAX_FORM_BYTES)
    without blocking, hands a complete one to `dispatch`, and drops connections whose deadline passed.

    When `max_pending` wait, a newcomer takes the place of the oldest connection of the client with the most (its
    own client's on a tie), which is answered 503 and closed; the newcomer's request is read at once.
    """

    MAX_HEAD = 65536 + 100 * 1024  # the request line and headers stdlib accepts at most; more is its 414/431

    def __init__(self, dispatch, drop, max_pending: int, timeout: float):
        self._dispatch, self._drop, self._max_pending, self._timeout = dispatch, drop, max_pending, timeout
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._new: list = []
        self._lock = threading.Lock()
        self._pending: dict = {}  # socket -> [address, head so far, deadline, client]
        self._clients: dict = {}  # client -> its waiting sockets, oldest first
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="http-heads", daemon=True)
        self._thread.start()

    def add(self, sock, address) -> None:
        with self._lock:
            self._new.append((sock, address, time.monotonic() + self._timeout))
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._thread.join(2.0)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # the wake-up pipe is full: the thread is awake anyway
            pass

    def _run(self) -> None:
        try:
            while not self._closed:
                now = time.monotonic()
                wait = min((entry[2] for entry in self._pending.values()), default=now + 1.0) - now
                for key, _ in self._selector.select(max(0.0, min(wait, 1.0))):
                    if key.data is None:
                        self._take_new()
                    else:
                        self._read(key.fileobj)
                self._expire()
        finally:
            for sock in list(self._pending):
                self._forget(sock)
                self._drop(sock)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _take_new(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        with self._lock:
            new, self._new = self._new, []
        for sock, address, deadline in new:
            client = client_of(address[0])
            if len(self._pending) >= self._max_pending:  # full: the biggest client gives way (this one, on a tie)
                mine = self._clients.get(client, [])
                biggest = max(self._clients.values(), key=len)
                self._refuse(mine[0] if mine and len(mine) >= len(biggest) else biggest[0])
            sock.setblocking(False)
            self._pending[sock] = [address, b"", deadline, client]
            self._clients.setdefault(client, []).append(sock)
            self._selector.register(sock, selectors.EVENT_READ, address)
            self._read(sock)  # a request sent with the connect is usually here: served before later ones can evict it

    def _refuse(self, sock) -> None:
        self._forget(sock)
        try:
            sock.setblocking(False)
            sock.send(_BUSY)
        except OSError:
            pass
        self._drop(sock)

    def _read(self, sock) -> None:
        entry = self._pending.get(sock)
        if entry is None:  # dropped earlier in this round (a client's oldest, to make room)
            return
        try:
            chunk = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client left before its request was whole
            self._forget(sock)
            self._drop(sock)
            return
        entry[1] += chunk
        head = entry[1]
        if _complete(head) or len(head) > self.MAX_HEAD:
            self._forget(sock)
            sock.setblocking(True)
            self._dispatch(sock, entry[0], head, entry[2])

    def _expire(self) -> None:
        now = time.monotonic()
        for sock in [s for s, entry in self._pending.items() if entry[2] <= now]:
            self._forget(sock)
            self._drop(sock)

    def _forget(self, sock) -> None:
        entry = self._pending.pop(sock, None)
        if entry is not None:
            mine = self._clients.get(entry[3], [])
            if sock in mine:
                mine.remove(sock)
            if not mine:
                self._clients.pop(entry[3], None)
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([0-9]{1,9})[ \t]*\r?\n", re.IGNORECASE)


def _complete(data: bytes) -> bool:
    """Whether the request is all here: its head, and its body when it declares one small enough to wait for
    (a larger one is answered 413 without being read, so it is not waited for)."""
    end = _HEAD_END.search(data)
    if end is None:
        return False
    length = _LENGTH.search(data, 0, end.start() + 2)
    if length is None or int(length.group(1)) > MAX_FORM_BYTES:
        return True
    return len(data) - end.end() >= int(length.group(1))


class _DeadlineReader(io.RawIOBase):
    """The request as read so far (its head), then the socket with one deadline for the whole request (the
    body included), not a timeout per read: a client sending a byte at a time cannot hold the worker."""

    def __init__(self, sock, head: bytes, deadline: float):
        self._sock, self._head, self.deadline = sock, head, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


def _json(data) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode()


COOKIE = "edgecls_session"


def redact(text: str) -> str:
    """A request line or path with any `token=` (or other secret) value blanked, for logs."""
    return _redact_secrets(text)


def session_cookie(token: bytes) -> str:
    """The preview's cookie value: an HMAC of the token, so the cookie jar never holds the token itself."""
    return hmac.new(token, b"edgecls preview session v1", hashlib.sha256).hexdigest()


def _same(given: bytes, token: bytes) -> bool:
    return hmac.compare_digest(given, token)


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    token: bytes | None = None
    server_version = "edgecls"
    sys_version = ""
    # A viewer that stopped reading would hold its thread forever.
    timeout = 10.0
    allowed_hosts: frozenset | None = None
    guesses: _Guesses
    streams: threading.BoundedSemaphore

    def setup(self):
        super().setup()
        self.rfile.close()  # socket.makefile's reader: replaced by the head already read, then the deadline
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, self.server.current.head, self.server.current.deadline)
        )
        self._answered = False

    def handle(self):
        # One request per connection: the next one waits for its head again without a thread (see _Server).
        self.handle_one_request()
        self.close_connection = True

    def log_message(self, fmt, *args):  # the request line only, secrets blanked; never headers
        log.debug("http %s: %s", self.client_address[0], redact(fmt % args))

    def _credentials(self) -> tuple:
        """(given any, valid): the bearer header or the session cookie."""
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given_any = bool(header)
        # Header values arrive decoded as latin-1: back to the bytes sent, which a UTF-8 client made of the token.
        raw = given.strip().encode("latin-1", "replace")
        if scheme.lower() == "bearer" and (_same(raw, self.token) or _same(raw, self._latin1_token())):
            return True, True
        # Parsed by hand: a browser sends every cookie of this host whatever the port (another app's
        # `prefs={"a":1}` included), and http.cookies drops all cookies after the first it dislikes.
        name, expected = self._cookie_name(), session_cookie(self.token).encode()
        for part in self.headers.get("Cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                given_any = True
                if _same(value.strip().strip('"').encode("latin-1", "replace"), expected):
                    return True, True
        return given_any, False

    def _latin1_token(self) -> bytes:
        """The token as a client that encodes headers as latin-1 (Python's http.client) sends it."""
        try:
            return self.token.decode().encode("latin-1")
        except UnicodeEncodeError:
            return self.token

    def _cookie_name(self) -> str:
        """Per port: two daemons on one host (cookies ignore ports) must not sign each other out."""
        return f"{COOKIE}_{self.server.server_address[1]}"

    def _sign_in(self, given: list) -> bool:
        """A token from the form (POST) or the link (`/?token=`): set the session cookie and redirect to `/`."""
        if self.token is None or self.preview is None or not given:
            return False
        if not _same(given[-1].encode(), self.token):
            self.guesses.failed(self.client_address[0])
            return False
        self.guesses.succeeded(self.client_address[0])
        cookie = f"{self._cookie_name()}={session_cookie(self.token)}; Path=/; HttpOnly; SameSite=Strict"
        self._send(303, "text/plain; charset=utf-8", b"signed in\n", {"Location": "/", "Set-Cookie": cookie})
        return True

    def _send(self, status: int, content_type: str, body: bytes, extra: dict | None = None) -> None:
        self.connection.settimeout(self.timeout)  # writing: a viewer gets idle_timeout to take the bytes
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._send(status, "application/json", _json({"error": message}), extra)

    def do_GET(self):
        self._guarded(self._get)

    do_HEAD = do_GET

    def do_POST(self):
        self._guarded(self._post)

    def _guarded(self, serve) -> None:
        """Any request gets a status code: an unexpected error is a 500 (or a closed stream), never a dropped link."""
        try:
            if self._refused():
                return
            serve()
        except OSError:
            raise  # the client left or timed out: socketserver logs it quietly
        except Exception as exc:
            log.error("http %s failed: %s: %s", redact(self.path), type(exc).__name__, exc, exc_info=True)
            if not self._answered:
                self._error(500, f"{type(exc).__name__}: {exc}")
            self.close_connection = True

    def _refused(self) -> bool:
        """A foreign Host on a token-less daemon, or a client that must wait after wrong tokens: answered here."""
        host = self.headers.get("Host")
        if self.allowed_hosts is not None and host is not None and not _host_allowed(host, self.allowed_hosts):
            self._error(
                403,
                f"Host {host[:100]!r} is not one of this daemon's names: open it by IP address or localhost, "
                "add the name to its allowed hosts, or give it a token",
            )
            return True
        wait = self.guesses.wait_left(self.client_address[0]) if self.token else 0.0
        if wait > 0:
            self._error(429, f"too many wrong tokens: retry in {wait:.0f} s", {"Retry-After": str(int(wait) + 1)})
            self.close_connection = True
            return True
        return False

    def _post(self):
        path = self.path.partition("?")[0]
        if path != "/" or self.preview is None or self.token is None:
            self._error(405, "only the sign-in form posts, to /", {"Allow": "GET, HEAD"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_FORM_BYTES:
            self._error(411 if length < 0 else 413, f"send the form with a Content-Length up to {MAX_FORM_BYTES}")
            self.close_connection = True
            return
        form = self.rfile.read(length).decode("utf-8", "replace")
        given = [unquote_plus(v) for k, _, v in (p.partition("=") for p in form.split("&")) if k == "token"]
        if not self._sign_in(given):
            self._sign_in_page(wrong=True)

    def _sign_in_page(self, wrong: bool) -> None:
        from edgecls.runtime.daemon.preview import sign_in_page

        challenge = {"WWW-Authenticate": 'Bearer realm="edgecls"'}
        self._send(401, "text/html; charset=utf-8", sign_in_page(wrong=wrong), challenge)

    def _get(self):
        path, _, query = self.path.partition("?")
        # The link: split by hand and percent-decoded only, as parse_qs turns the '+' of a base64 token into a space.
        link = [unquote(v) for k, _, v in (p.partition("=") for p in query.split("&")) if k == "token"]
        if path == "/" and link and self._sign_in(link):
            return
        if self.token is not None:
            given, valid = self._credentials()
            if not valid:
                if given:
                    self.guesses.failed(self.client_address[0])
                if path == "/" and self.preview is not None:  # a browser: a one-field form that posts the token
                    self._sign_in_page(wrong=bool(link))
                else:
                    self._error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="edgecls"'})
                return
            self.guesses.succeeded(self.client_address[0])
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

    def _stream(self, which: str) -> None:
        """/stream/<index>: the source's newest classified frame, annotated, as MJPEG until the client leaves."""
        names = self.preview.names()
        # ASCII digits only, and few: str.isdigit() takes '²' and int() refuses more than 4,300 digits.
        if not re.fullmatch(r"[0-9]{1,9}", which) or int(which) >= len(names):
            self._send(404, "application/json", _json({"error": "no such source", "sources": len(names)}))
            return
        if not self.streams.acquire(blocking=False):
            self._error(503, "too many preview viewers: close one", {"Retry-After": "5"})
            return
        try:
            self._serve_stream(int(which))
        finally:
            self.streams.release()

    def _serve_stream(self, index: int) -> None:
        from edgecls.runtime.daemon.preview import BOUNDARY, MAX_FPS, annotate, jpeg, part

        self.connection.settimeout(self.timeout)
        self._answered = True
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
