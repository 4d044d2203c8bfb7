"""runtime/daemon/http.py on real sockets: odd paths, slow, silent and bursty clients, Host checks, tokens."""

from __future__ import annotations

import http.client
import logging
import select
import socket
import threading
import time
from urllib.parse import quote

import pytest

from edgecls.runtime.daemon.http import StatusServer
from tests.daemon_helpers import http_get as get

TOKEN = "tok-4f1d9a-secret"


class _Preview:
    """The preview's provider: two named sources, no frame classified yet."""

    def names(self):
        return ["cam0", "cam1"]

    def frame(self, index):
        return None


def _server(**options):
    return StatusServer(
        health=lambda: (True, {"status": "ok"}),
        latest=dict,
        metrics=lambda: (b"edgecls_up 1\n", "text/plain"),
        preview=_Preview(),
        **options,
    ).start()


def _address(server):
    host, port = server.url[len("http://") :].rsplit(":", 1)
    return host.strip("[]"), int(port)


def _connect(server, source: str, timeout: float = 10):
    """A connection from `source` (127.x.y.z, or ::1 to a server bound to ::) to the server's port."""
    host, port = _address(server)
    if host == "::":  # both families reach it: through the loopback of the source's
        host = "::1" if ":" in source else "127.0.0.1"
    sock = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def _raw(server, request: bytes, source: str = "127.0.0.1", timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with _connect(server, source, timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def _status(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


def _get(server, path, headers=None, method="GET", body=None):
    conn = http.client.HTTPConnection(*_address(server), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- any path gets a status code


@pytest.mark.parametrize(
    "path",
    [b"/stream/\xb2", b"/stream/\xb9", b"/stream/" + b"7" * 5000, b"/stream/-1", b"/stream/0x1", b"/stream/2"],
    ids=["superscript two", "superscript one", "5000 digits", "negative", "hex", "past the end"],
)
def test_any_stream_path_is_answered_with_a_status_code_not_a_dropped_connection(path, caplog):
    caplog.set_level(logging.DEBUG, logger="edgecls")
    server = _server()
    try:
        answer = _raw(server, b"GET " + path + b" HTTP/1.0\r\n\r\n")
    finally:
        server.stop()
    assert _status(answer) == 404, answer[:200]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback either


# ---------------------------------------------------------------- slow and silent clients


def test_a_client_trickling_its_headers_is_cut_off_at_the_request_deadline():
    """A timeout per read lets a byte every 0.3 s hold the connection for ever (slowloris)."""
    server = _server(idle_timeout=1.0)
    sock = socket.create_connection(_address(server), timeout=10)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started, closed = time.monotonic(), False
        while time.monotonic() - started < 4.0 and not closed:
            try:
                sock.sendall(b"X")
                sock.settimeout(0.3)
                closed = sock.recv(100) == b""
            except TimeoutError:
                pass
            except OSError:  # reset: closed as well
                closed = True
        took = time.monotonic() - started
    finally:
        sock.close()
        server.stop()
    assert closed and took < 2.0, f"still open after {took:.1f} s of trickling"


def test_silent_and_slow_connections_take_no_threads_and_requests_are_still_answered_at_once():
    server = _server(idle_timeout=5.0)
    before = threading.active_count()
    idle = [socket.create_connection(_address(server), timeout=10) for _ in range(120)]
    slow = [socket.create_connection(_address(server), timeout=10) for _ in range(40)]
    try:
        for sock in slow:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.5)
        threads = threading.active_count() - before
        started = time.monotonic()
        status = _get(server, "/healthz")[0]
        took = time.monotonic() - started
    finally:
        for sock in idle + slow:
            sock.close()
        server.stop()
    assert threads <= 4, f"{threads} threads for 160 connections that sent no whole request"
    assert status == 200 and took < 1.0, (status, took)


def test_connections_beyond_the_waiting_limit_are_refused_with_503():
    """Full (4 waiting): a newcomer takes the place of the oldest connection of the client holding the most (answered
    503), its own client's on a tie; another client is never kept out."""
    server = _server(host="::", max_pending=4)
    v4 = [_connect(server, "127.0.0.1") for _ in range(3)]
    v6 = [_connect(server, "::1")]
    try:
        time.sleep(0.3)
        v6.append(_connect(server, "::1"))  # full: 127/8 holds the most, its oldest goes
        assert _status(v4[0].recv(100)) == 503
        v4.append(_connect(server, "127.0.0.1"))  # 2 + 2: a tie, this client's own oldest goes
        assert _status(v4[1].recv(100)) == 503
        assert _status(_raw(server, b"GET /healthz HTTP/1.0\r\n\r\n", "::1")) == 200
    finally:
        for sock in v4 + v6:
            sock.close()
        server.stop()


def test_one_client_with_many_silent_connections_cannot_keep_out_its_own_next_request():
    """120 silent connections from one address (more than the 100 that may wait): its next, real request is answered,
    from the same address and from another; its own oldest silent ones are the ones dropped."""
    server = _server(token=TOKEN, max_pending=100)
    silent = []
    try:
        for _ in range(120):
            sock = _connect(server, "127.0.0.1")
            sock.sendall(b"G")
            silent.append(sock)
        time.sleep(0.5)
        request = f"GET /healthz HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        same = _status(_raw(server, request, "127.0.0.1", timeout=3))
        other = _status(_raw(server, request, "127.0.0.2", timeout=3))
    finally:
        for sock in silent:
            sock.close()
        server.stop()
    assert (same, other) == (200, 200)


def test_a_body_that_never_comes_holds_no_worker_and_requests_are_still_answered_at_once():
    """48 unauthenticated sign-in posts announce a 4,096-byte body and send none: the body is waited for before a
    worker is given (16 of them), so a health check with the right token is answered at once."""
    server = _server(token=TOKEN, idle_timeout=10.0)
    before = threading.active_count()
    stuck = []
    try:
        for _ in range(48):
            sock = _connect(server, "127.0.0.1")
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
            stuck.append(sock)
        time.sleep(0.5)
        threads = threading.active_count() - before
        started = time.monotonic()
        status = _get(server, "/healthz", {"Authorization": f"Bearer {TOKEN}"})[0]
        took = time.monotonic() - started
    finally:
        for sock in stuck:
            sock.close()
        server.stop()
    assert status == 200 and took < 1.0, (status, took)
    assert threads <= 4, f"{threads} threads for 48 requests whose body never came"


def test_a_sign_in_form_sent_in_pieces_is_read_whole():
    server = _server(token=TOKEN)
    try:
        with _connect(server, "127.0.0.1") as sock:
            body = f"token={quote(TOKEN)}".encode()
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            time.sleep(0.3)
            sock.sendall(body[:5])
            time.sleep(0.3)
            sock.sendall(body[5:])
            answer = sock.recv(4096)
    finally:
        server.stop()
    assert _status(answer) == 303 and b"Set-Cookie" in answer


def test_preview_viewers_beyond_the_limit_get_503_and_requests_are_still_served():
    server = _server(max_streams=2)
    viewers = [socket.create_connection(_address(server), timeout=10) for _ in range(2)]
    try:
        for sock in viewers:
            sock.sendall(b"GET /stream/0 HTTP/1.0\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.0 200"
        assert _status(_raw(server, b"GET /stream/1 HTTP/1.0\r\n\r\n")) == 503
        assert _status(_raw(server, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200
    finally:
        for sock in viewers:
            sock.close()
        server.stop()


def test_a_port_in_use_is_refused_with_the_cause_and_the_fix():
    from edgecls.runtime.errors import EdgeclsError

    first = _server()
    try:
        with pytest.raises(EdgeclsError, match="cannot listen on .*: pick another --port"):
            _server(port=_address(first)[1])
    finally:
        first.stop()


# ---------------------------------------------------------------- Host check (DNS rebinding)


def test_a_token_less_daemon_refuses_a_foreign_host_name():
    server = _server()
    port = _address(server)[1]
    try:
        assert _get(server, "/healthz", {"Host": f"attacker.example:{port}"})[0] == 403
        assert _get(server, "/", {"Host": "rebind.attacker.example"})[0] == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"{socket.gethostname()}"):
            assert _get(server, "/healthz", {"Host": host})[0] == 200, host
        assert _status(_raw(server, b"GET /healthz HTTP/1.0\r\n\r\n")) == 200  # no Host (not a browser): served
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("given", "name"), [("pi.lan:18089", "pi.lan"), ("http://cam.lan/", "cam.lan"), ("cam.lan/x", "cam.lan")]
)
def test_an_allowed_host_with_a_port_scheme_or_path_is_refused_naming_the_name_to_give(given, name):
    from edgecls.runtime.errors import EdgeclsError

    with pytest.raises(EdgeclsError, match=f"give the name alone, such as '{name}'"):
        _server(allowed_hosts=[given])


def test_host_names_given_to_the_daemon_are_accepted_and_a_token_makes_the_check_unneeded():
    named = _server(allowed_hosts=["camera.lan"])
    guarded = _server(token=TOKEN)
    try:
        assert _get(named, "/healthz", {"Host": "camera.lan:8080"})[0] == 200
        assert _get(named, "/healthz", {"Host": "other.lan"})[0] == 403
        auth = {"Authorization": f"Bearer {TOKEN}", "Host": "any-name.example"}
        assert _get(guarded, "/healthz", auth)[0] == 200
    finally:
        named.stop()
        guarded.stop()


# ---------------------------------------------------------------- token guessing


def test_wrong_tokens_are_answered_429_after_ten_and_other_clients_are_not_affected():
    server = _server(host="::", token=TOKEN)
    try:
        statuses = [_get(server, "/healthz", {"Authorization": f"Bearer guess-{i}"})[0] for i in range(40)]
        status, headers, _ = _get(server, "/healthz", {"Authorization": f"Bearer {TOKEN}"})
        link = _get(server, f"/?token={TOKEN}")[0]
        # http.client reached "::" from ::1: another client is any IPv4 address
        other = _raw(server, f"GET /healthz HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode(), "127.0.0.1")
    finally:
        server.stop()
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 30  # 40 guesses, 10 checked: each one more doubles the wait
    assert status == 429 and int(headers["Retry-After"]) >= 1  # even the right token waits: no oracle
    assert link == 429  # the sign-in link counts too
    assert _status(other) == 200  # another address signs in as usual


def test_a_locked_out_client_is_logged_once_a_minute_with_its_count_and_counted(caplog):
    """A scraper with an old token: its operator finds it in the log (one WARNING naming the client and the count,
    not one per request) and in the counts /metrics exposes; each 429 says when to retry."""
    server = _server(token=TOKEN)
    try:
        with caplog.at_level(logging.WARNING, logger="edgecls.daemon"):
            answers = [_get(server, "/metrics", {"Authorization": "Bearer stale"}) for _ in range(30)]
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if "wrong tokens" in r.getMessage()]
    assert len(warnings) == 1 and "10 wrong tokens from 127.0.0.0/8" in warnings[0], warnings
    assert [a[0] for a in answers[:10]] == [401] * 10 and {a[0] for a in answers[10:]} == {429}
    assert all(int(a[1]["Retry-After"]) >= 1 for a in answers[10:])
    assert (server.guesses.wrong, server.guesses.refused) == (10, 20)  # the 10th already waits


def test_many_addresses_of_one_machine_or_network_share_one_count_of_wrong_tokens():
    """60 loopback addresses (127/8 is one machine) x 3 guesses: answered 429 from the 11th guess on, not 600 x 401."""
    server = _server(token=TOKEN)
    statuses = []
    try:
        for a in range(2, 62):
            for i in range(3):
                request = f"GET /healthz HTTP/1.0\r\nAuthorization: Bearer guess{i}\r\n\r\n".encode()
                statuses.append(_status(_raw(server, request, f"127.0.1.{a}")))
    finally:
        server.stop()
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}


@pytest.mark.parametrize(
    ("address", "client"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.45.3.9", "127.0.0.0/8"),
        ("::ffff:127.0.0.5", "127.0.0.0/8"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_a_client_is_an_ipv4_address_all_of_loopback_or_an_ipv6_64(address, client):
    from edgecls.runtime.daemon.http import client_of

    assert client_of(address) == client


def test_a_right_token_resets_the_count_of_wrong_ones():
    server = _server(token=TOKEN)
    try:
        for _ in range(3):
            assert [_get(server, "/latest", {"Authorization": "Bearer nope"})[0] for _ in range(9)] == [401] * 9
            assert _get(server, "/latest", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        server.stop()


# ---------------------------------------------------------------- the sign-in form


def test_the_sign_in_form_posts_the_token_and_gets_a_session_cookie():
    server = _server(token=TOKEN)
    try:
        status, _, page = _get(server, "/")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        wrong = _get(server, "/", form, "POST", "token=wrong")
        status_in, headers, _ = _get(server, "/", form, "POST", f"token={TOKEN}")
        cookie = headers.get("Set-Cookie", "").split(";", 1)[0]
        signed_in = _get(server, "/", {"Cookie": cookie})[0]
    finally:
        server.stop()
    assert status == 401 and b'method="post"' in page and b'name="token"' in page
    assert wrong[0] == 401 and b"not the right one" in wrong[2] and "Set-Cookie" not in wrong[1]
    assert status_in == 303 and headers["Location"] == "/" and TOKEN not in headers["Set-Cookie"]
    assert signed_in == 200


def test_a_sign_in_form_without_a_length_or_too_long_is_refused():
    server = _server(token=TOKEN)
    try:
        assert _status(_raw(server, b"POST / HTTP/1.0\r\n\r\ntoken=" + TOKEN.encode())) == 411
        assert _status(_raw(server, b"POST / HTTP/1.0\r\nContent-Length: 99999\r\n\r\n")) == 413
        assert _get(server, "/healthz", {"Content-Length": "0"}, "POST", "")[0] == 405
    finally:
        server.stop()


# ---------------------------------------------------------------- an open bind warns


def test_binding_beyond_loopback_without_a_token_warns_once_at_start(caplog):
    caplog.set_level(logging.WARNING, logger="edgecls")
    for options in ({"host": "127.0.0.1"}, {"host": "0.0.0.0", "token": TOKEN}):
        _server(**options).stop()
    assert not [r for r in caplog.records if "no token" in r.getMessage()]
    _server(host="0.0.0.0").stop()
    warnings = [r.getMessage() for r in caplog.records if "no token" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "--token-file" in warnings[0]


# ---------------------------------------------------------------- non-ASCII tokens


def test_a_non_ascii_token_works_from_utf8_and_latin1_clients():
    cyrillic, accented = "ключ-7d2e-тайный", "pässwört-91c3"
    servers = [_server(token=cyrillic), _server(token=accented)]
    try:
        utf8 = _raw(servers[0], b"GET /healthz HTTP/1.0\r\nAuthorization: Bearer " + cyrillic.encode() + b"\r\n\r\n")
        latin1 = _get(servers[1], "/healthz", {"Authorization": f"Bearer {accented}"})[0]  # http.client: latin-1
        utf8_accented = _raw(
            servers[1], b"GET /healthz HTTP/1.0\r\nAuthorization: Bearer " + accented.encode() + b"\r\n\r\n"
        )
        wrong = _raw(servers[0], "GET /healthz HTTP/1.0\r\nAuthorization: Bearer ключ\r\n\r\n".encode())
        link = _get(servers[0], "/?token=" + quote(cyrillic))[0]  # the sign-in link, percent-encoded UTF-8
    finally:
        for server in servers:
            server.stop()
    assert _status(utf8) == 200 and latin1 == 200 and _status(utf8_accented) == 200
    assert _status(wrong) == 401
    assert link == 303


def test_a_token_no_header_can_carry_is_refused_at_start_with_the_reason():
    from edgecls.runtime.errors import EdgeclsError

    for bad in ("two words", "tab\there", "bell\x07"):
        with pytest.raises(EdgeclsError, match="printable"):
            _server(token=bad)


# ---------------------------------------------------------------- the same through a real `edgecls run`


def _run_daemon(tiny_bundle, tmp_path, *options):
    """A real `edgecls run` on a looping clip with HTTP; returns (process, port, stderr lines) once it serves."""
    from tests.daemon_helpers import start_cli_daemon, write_test_video

    clip = write_test_video(tmp_path / "clip.avi", frames=10)
    process, url, lines = start_cli_daemon(tiny_bundle, clip, *options)
    return process, int(url.rsplit(":", 1)[1]), lines


def _stop(process):
    process.terminate()
    process.wait(20)


def _ask(port, request: bytes) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return _status(data)


def test_a_real_daemon_open_to_the_network_without_a_token_warns_and_refuses_foreign_hosts(tiny_bundle, tmp_path):
    process, port, lines = _run_daemon(tiny_bundle, tmp_path, "--host", "0.0.0.0")
    try:
        foreign = _ask(port, b"GET /healthz HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n")
        local = _ask(port, f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    finally:
        _stop(process)
    assert [line for line in lines if "no token" in line and "0.0.0.0" in line], "".join(lines)
    assert (foreign, local) == (403, 200)


def test_a_host_name_given_with_allowed_host_is_served_and_others_still_refused(tiny_bundle, tmp_path):
    process, port, _ = _run_daemon(tiny_bundle, tmp_path, "--allowed-host", "pi.lan")
    try:
        named = _ask(port, f"GET /metrics HTTP/1.1\r\nHost: pi.lan:{port}\r\n\r\n".encode())
        foreign = _ask(port, b"GET /healthz HTTP/1.1\r\nHost: rebind.attacker.example\r\n\r\n")
    finally:
        _stop(process)
    assert (named, foreign) == (200, 403)


def test_a_real_daemon_takes_a_non_ascii_token_from_its_token_file(tiny_bundle, tmp_path):
    token = "ключ-7d2e-тайный"
    (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
    process, port, _ = _run_daemon(tiny_bundle, tmp_path, "--token-file", str(tmp_path / "token"))
    try:
        right = _ask(port, b"GET /metrics HTTP/1.0\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")
        wrong = _ask(port, b"GET /metrics HTTP/1.0\r\nAuthorization: Bearer " + token[:-1].encode() + b"\r\n\r\n")
    finally:
        _stop(process)
    assert (right, wrong) == (200, 401)


def _ask_from(port, source: str, request: bytes) -> bytes:
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((source, port))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_a_real_daemon_names_a_client_sending_an_old_token_in_its_log_and_metrics(tiny_bundle, tmp_path):
    """A scraper with a stale token on this machine: 15 wrong tokens; the daemon's log names 127.0.0.0/8 once, the
    429 says when to retry, and /metrics (read over IPv6, another client) counts the wrong tokens and the 429s."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    process, port, lines = _run_daemon(tiny_bundle, tmp_path, "--host", "::", "--token-file", str(tmp_path / "token"))
    try:
        stale = b"GET /metrics HTTP/1.0\r\nAuthorization: Bearer old-token\r\n\r\n"
        answers = [_ask_from(port, "127.0.0.1", stale) for _ in range(15)]
        metrics = _ask_from(port, "::1", f"GET /metrics HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    finally:
        _stop(process)
    assert [_status(a) for a in answers] == [401] * 10 + [429] * 5
    assert all(b"\r\nRetry-After: " in a for a in answers[10:])
    assert _status(metrics) == 200
    assert b"edgecls_http_wrong_tokens_total 10.0" in metrics and b"edgecls_http_locked_out_total 5.0" in metrics
    warnings = [line for line in lines if "wrong tokens from 127.0.0.0/8" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], "".join(lines)[-2000:]


def test_a_real_daemon_refuses_an_allowed_host_with_a_port_in_one_line(tiny_bundle, tmp_path):
    from tests.conftest import cli_error, run_cli

    done = run_cli(
        "run", tiny_bundle, "--source", tmp_path, "--port", "0", "--allowed-host", "pi.lan:18089", timeout=60
    )
    assert "--allowed-host 'pi.lan:18089'" in cli_error(done) and "'pi.lan'" in cli_error(done)


def _status_server(**options):
    return StatusServer(
        health=lambda: (True, {"status": "ok"}),
        latest=dict,
        metrics=lambda: (b"edgecls_up 1\n", "text/plain"),
        **options,
    ).start()


def test_connections_that_never_send_are_dropped_and_block_nobody():
    server = _status_server(idle_timeout=0.5)
    host, port = server.url[len("http://") :].split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    try:
        assert get(server.url + "/healthz")[0] == 200  # served while 20 silent clients hold connections
        for sock in idle:  # each is closed by the server (EOF), instead of holding a thread forever
            assert sock.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_burst_of_50_scrapers_is_accepted_at_once_and_all_answered():
    """With the default listen backlog (5), most of 50 simultaneous connects waited out a 1 s SYN retry."""
    server = _status_server()
    host, port = server.url[len("http://") :].split(":")
    socks = []
    try:
        for _ in range(50):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, int(port)))
            socks.append(sock)
        pending, deadline = list(socks), time.monotonic() + 0.8  # under the kernel's first SYN retry (1 s)
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
            pending = [s for s in pending if s not in writable]
        assert not pending, f"{len(pending)} of 50 connections not accepted within 0.8 s"
        for sock in socks:
            sock.setblocking(True)
            sock.settimeout(10)
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        answers = []
        for sock in socks:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0])
        assert answers == [b"HTTP/1.0 200 OK"] * 50
    finally:
        for sock in socks:
            sock.close()
        server.stop()


def _get_no_redirect(url, headers):
    import urllib.request

    request = urllib.request.Request(url, headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_the_session_cookie_is_read_beside_another_apps_cookie_on_the_same_host():
    """Cookies ignore ports: a browser sends the daemon every cookie of 127.0.0.1 / the device's address (Grafana,
    Jupyter, a router UI...). http.cookies.SimpleCookie drops every cookie after one it dislikes (a JSON value, a
    space), so the signed-in browser is sent back to the sign-in form for ever."""
    from edgecls.runtime.daemon.http import COOKIE, session_cookie

    server = _server(token=TOKEN)
    try:
        valid = f"{COOKIE}_{server.url.rsplit(':', 1)[1]}={session_cookie(TOKEN.encode())}"
        assert _get_no_redirect(server.url + "/", {"Cookie": valid})[0] == 200  # alone, the cookie works
        for other in ('prefs={"theme":"dark"}', "lang=en US"):
            status, _ = _get_no_redirect(server.url + "/", {"Cookie": f"{other}; {valid}"})
            assert status == 200, f"with another app's cookie {other!r} first: {status}"
    finally:
        server.stop()


def test_the_documented_sign_in_link_works_for_a_base64_token():
    """README: open http://HOST:PORT/?token=... once. Tokens from `openssl rand -base64` hold '+', which parse_qs
    reads as a space: the link a user pastes answers "That token is not the right one"."""
    token = "q7+Vd/2kZ9+Xc1=="
    server = _server(token=token)
    try:
        status, headers = _get_no_redirect(server.url + "/?token=" + token, {})
        assert status == 303 and "Set-Cookie" in headers, status
    finally:
        server.stop()


def test_a_request_without_the_token_gets_a_json_error_and_a_bearer_challenge():
    import json
    import urllib.error
    import urllib.request

    from edgecls.runtime.daemon.http import StatusServer

    server = StatusServer(
        health=lambda: (True, {"status": "ok"}), latest=lambda: {}, metrics=lambda: (b"", "text/plain"), token="s3cret"
    ).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/healthz", timeout=10)
        assert caught.value.code == 401
        assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="edgecls"'
        assert caught.value.headers["Content-Type"] == "application/json"
        assert json.loads(caught.value.read()) == {"error": "missing or wrong bearer token"}
    finally:
        server.stop()


def test_healthz_never_shows_more_frames_classified_than_captured(tiny_bundle, tmp_path):
    """A real daemon classifying a video as fast as it can: every /healthz body, polled while it runs, has
    classified <= frames for its source (both counted at the moment of the answer)."""
    import json

    from tests.daemon_helpers import start_cli_daemon, write_test_video

    clip = write_test_video(tmp_path / "clip.avi", frames=40)
    process, url, lines = start_cli_daemon(tiny_bundle, clip, "--every-frame")
    try:
        bodies = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline or not any(
            b["sources"][s]["classified"] for b in bodies for s in b["sources"]
        ):
            status, body = get(url + "/healthz")
            assert status in (200, 503), body  # 503 until the first frame
            bodies.append(json.loads(body))
            assert time.monotonic() < deadline + 30, "no frame classified"
    finally:
        process.terminate()
        process.wait(10)
    counts = [(d["frames"], d["classified"]) for b in bodies for d in b["sources"].values()]
    assert len(counts) >= 100 and counts[-1][1] > 100  # polled often, while many frames went through
    assert all(classified <= frames for frames, classified in counts), [c for c in counts if c[1] > c[0]][:5]


def test_metrics_never_show_more_frames_processed_than_captured(tiny_bundle, tmp_path):
    """The same real daemon scraped at /metrics: every scrape has edgecls_frames_processed <= edgecls_frames_captured
    (the collector counts captures now, after the processed counter, not the watchdog's copy up to 100 ms old)."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.daemon_helpers import start_cli_daemon, write_test_video

    def counts(body: str) -> dict:
        found = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name in ("edgecls_frames_processed_total", "edgecls_frames_captured_total"):
                    found[sample.name.split("_")[2]] = sample.value
        return found

    clip = write_test_video(tmp_path / "clip.avi", frames=40)
    process, url, _ = start_cli_daemon(tiny_bundle, clip, "--every-frame")
    try:
        scrapes = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline or not any(s.get("processed") for s in scrapes):
            status, body = get(url + "/metrics")
            assert status == 200, body
            scrapes.append(counts(body.decode()))
            assert time.monotonic() < deadline + 30, "no frame classified"
    finally:
        process.terminate()
        process.wait(10)
    assert len(scrapes) >= 100 and scrapes[-1]["processed"] > 100  # scraped often, while many frames went through
    ahead = [s for s in scrapes if s["processed"] > s["captured"]]
    assert not ahead, ahead[:5]
