"""One GET of the daemon's /healthz that ends by a deadline, whatever the other end does.

urllib's timeout bounds each read, not the request: an answer trickled one byte every few seconds, or an
endless body, would hold a flash (and its lock) forever or fill the memory. Here the whole request, from the
connect to the last byte, ends at its deadline (a timer shuts the socket down), the body is capped, and
redirects are never followed (a redirect would carry the bearer token to another address).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse

from edgecls.runtime.install.layout import InstallError
from edgecls.runtime.redact import redact

BODY_MAX = 1 << 20  # a daemon's /healthz is a few KiB
READ_S = 5.0  # one read at most; the request's deadline may be shorter


class HealthTimeout(OSError):
    """No complete answer by the request's deadline."""


class HealthTooLarge(ValueError):
    """An answer over BODY_MAX: not a daemon's /healthz."""


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a health URL (in words naming the fix), or None.

    A password or token in it would be shown in results and status and stored in device.json: the token
    belongs in a file on the device (health_token_file)."""
    if any(c.isspace() or not c.isprintable() or ord(c) > 127 for c in url):
        return (
            f"health_url {redact(url)!r} holds a space, a line break or a non-ASCII character, which cannot be "
            f"sent in a request: percent-encode it (a space is %20), or use the daemon's plain /healthz"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"health_url {redact(url)!r} is not an http:// URL such as http://127.0.0.1:8080/healthz"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (parts.netloc.endswith(":") and port is None):
        return f"health_url {redact(url)!r} has no valid port: give one from 1 to 65535, such as :8080"
    if "@" in parts.netloc or redact(url) != url:
        return (
            f"health_url {redact(url)} holds a user name, password or token (user:pass@ or ?token=), which would "
            f"be shown and stored in clear: remove it and put the daemon's token in a file on the device named "
            f"by health_token_file"
        )
    return None


def health_get(url: str, token: str = "", deadline_s: float = 5.0) -> tuple:
    """(status, Location header, body) of GET `url` within `deadline_s` overall.

    Raises HealthTimeout past the deadline, HealthTooLarge over BODY_MAX, OSError/HTTPException otherwise."""
    problem = url_problem(url)
    if problem:
        raise InstallError(problem)
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + deadline_s
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=min(READ_S, deadline_s))
    addresses = _resolve(parts.hostname, conn.port, deadline_s)  # bounded: the lookup may hang on a dead DNS
    conn._create_connection = lambda _address, timeout, source=None: _connect(addresses, timeout, source)
    sock: list = []
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (sock,))
    timer.daemon = True
    timer.start()
    try:
        conn.connect()
        sock.append(conn.sock)  # kept: http.client drops conn.sock once a response says it will close
        if time.monotonic() >= deadline:
            _cut(sock)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        body = bytearray()
        while len(body) <= BODY_MAX:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HealthTimeout(f"no complete answer within {deadline_s:g} s")
            sock[0].settimeout(min(READ_S, left))
            chunk = response.read1(64 * 1024)
            if not chunk:
                break
            body += chunk
        if len(body) > BODY_MAX:
            raise HealthTooLarge(f"an answer of more than {BODY_MAX >> 20} MiB, which is not a daemon's /healthz")
        if time.monotonic() >= deadline:  # the end was the timer's shutdown, not the answer's
            raise HealthTimeout(f"no complete answer within {deadline_s:g} s")
        if response.length:  # fewer bytes than Content-Length said
            raise http.client.IncompleteRead(bytes(body), response.length)
        return response.status, response.getheader("Location") or "", bytes(body)
    except HealthTimeout:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() >= deadline:
            raise HealthTimeout(f"no complete answer within {deadline_s:g} s") from exc
        if isinstance(exc, TimeoutError):
            raise HealthTimeout(f"nothing received for {min(deadline_s, READ_S):g} s") from exc
        raise
    finally:
        timer.cancel()
        conn.close()
        for s in sock:
            s.close()


def _resolve(host: str, port: int, deadline_s: float) -> list:
    """getaddrinfo within `deadline_s`: the lookup runs in a daemon thread (the C resolver cannot be cut short,
    and a DNS server that never answers takes 10 s or more); past the deadline it is left to end on its own."""
    found: dict = {}

    def look() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc

    lookup = threading.Thread(target=look, name="health-lookup", daemon=True)
    lookup.start()
    lookup.join(deadline_s)
    if lookup.is_alive():
        raise HealthTimeout(f"the name {host!r} was not resolved within {deadline_s:g} s (check the DNS)")
    if "error" in found:
        raise found["error"]
    return found["addresses"]


def _connect(addresses: list, timeout: float, source=None) -> socket.socket:
    """Connect to the first of the resolved addresses that answers (as socket.create_connection does)."""
    error: OSError = OSError("no address to connect to")
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(address)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error


def _cut(sock: list) -> None:
    """At the deadline: end whatever read is waiting (it returns at once, as at the end of the stream)."""
    for s in sock:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
