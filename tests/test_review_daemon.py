"""Review of the daemon (issue 7) with hostile but valid inputs: secrets in URIs, silent and bursty HTTP clients,
a results folder that refuses rotation, a token with a newline, a camera that changes its frame size."""

import json
import logging
import select
import socket
import time
import urllib.request

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.http import StatusServer  # noqa: E402
from edgecls.runtime.daemon.sinks import JsonlFileSink  # noqa: E402
from edgecls.runtime.daemon.supervisor import Backoff  # noqa: E402
from edgecls.runtime.sources import SourceError, parse_source, redact_uri  # noqa: E402
from tests.conftest import write_image  # noqa: E402
from tests.daemon_helpers import ListSink, wait_for  # noqa: E402
from tests.daemon_helpers import http_get as get
from tests.mjpeg_server import MjpegServer  # noqa: E402

SECRET = "pw-9c41e7-secret"


def _status_server(**options):
    return StatusServer(
        health=lambda: (True, {"status": "ok"}),
        latest=dict,
        metrics=lambda: (b"edgecls_up 1\n", "text/plain"),
        **options,
    ).start()


def test_i7_p4_redact_uri_hides_passwords_with_odd_characters_tokens_and_secret_parameters():
    assert redact_uri("rtsp://admin:hunter2@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert redact_uri("rtsp://admin:p@ss/w:rd@cam/live") == "rtsp://admin:***@cam/live"  # "@" and "/" in it
    assert redact_uri("https://TOKEN123@cam/x") == "https://***@cam/x"
    assert redact_uri("http://cam/snap.cgi?user=a&password=xyz&ch=1") == "http://cam/snap.cgi?user=a&password=***&ch=1"
    for plain in ("http://127.0.0.1:8080/stream.mjpg", "/dev/video0", "0", "videotestsrc ! appsink"):
        assert redact_uri(plain) == plain
    with pytest.raises(SourceError) as error:  # a typo'd scheme is taken for a path: its error hides the password
        parse_source(f"rtps://admin:{SECRET}@cam/live")
    assert SECRET not in str(error.value)


def test_i7_p4_a_password_in_a_source_uri_reaches_no_log_healthz_metrics_or_latest(tiny_bundle, caplog):
    """The dead camera's reason ("cannot open source URI") used to carry the raw URI into /healthz and the log."""
    server = MjpegServer(fps=25).start()
    live = server.url.replace("http://", f"http://admin:{SECRET}@")  # the test server ignores credentials
    dead = f"http://admin:{SECRET}@127.0.0.1:9/stream.mjpg"  # port 9: connection refused
    caplog.set_level(logging.DEBUG)
    daemon = Daemon(
        tiny_bundle, [live, dead], port=0, sinks=[ListSink()], stall_timeout=1.0, backoff=Backoff(0.1, 0.3)
    ).start()
    try:
        dead_name = daemon.supervisors[1].name
        wait_for(lambda: "cannot open" in daemon.supervisors[1].stats.reason, 30, "the dead source's reason")
        wait_for(lambda: daemon.loops[0].stats.latest, 30, "a result from the live source")
        bodies = [get(daemon.url + path)[1].decode() for path in ("/healthz", "/metrics", "/latest", "/")]
    finally:
        daemon.stop()
        server.kill()
    assert "cannot open" in json.loads(bodies[0])["sources"][dead_name]["reason"]
    assert [b for b in bodies if SECRET in b] == []
    assert [r.getMessage() for r in caplog.records if SECRET in r.getMessage()] == []
    assert "admin:***@" in bodies[2]  # the sources are still named, only the password is gone


def test_i7_p4_connections_that_never_send_are_dropped_and_block_nobody():
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


def test_i7_p4_a_burst_of_50_scrapers_is_accepted_at_once_and_all_answered():
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


def test_i7_p5_results_keep_flowing_to_the_file_when_rotation_fails(tmp_path, caplog):
    """A rotation that cannot rename (here path.1 is a folder) used to close the file and lose every later result."""
    path = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.1").mkdir()
    (tmp_path / "results.jsonl.1" / "keep").write_text("x")
    sink = JsonlFileSink(path, max_bytes=200, backups=1)
    for i in range(20):
        sink.write({"frame": i, "pad": "x" * 20})
    sink.close()
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == list(range(20))
    assert len([r for r in caplog.records if "cannot rotate" in r.getMessage()]) == 1  # said once, not per line


def test_i7_p4_token_from_the_environment_loses_its_trailing_newline(monkeypatch):
    from edgecls.commands.run import TOKEN_ENV, _read_token

    monkeypatch.setenv(TOKEN_ENV, "tok-1234\n")  # as `EDGECLS_RUN_TOKEN=$(cat file)` or an env file can leave it
    assert _read_token(None) == "tok-1234"
    monkeypatch.setenv(TOKEN_ENV, "  \n")
    assert _read_token(None) is None


def test_i7_p2_sources_that_change_frame_size_keep_being_classified(tiny_bundle, tmp_path):
    """A camera reconfigured mid-stream (64x48, then 160x120 on the same connection) and a folder of mixed sizes."""
    for i, (h, w) in enumerate([(32, 32), (240, 320), (17, 91), (480, 64)]):
        write_image(tmp_path / "stills" / f"{i}.png", np.full((h, w, 3), 50 * i, np.uint8))
    server = MjpegServer(fps=25, resize_after=10).start()
    sink = ListSink()
    daemon = Daemon(tiny_bundle, [server.url, tmp_path / "stills"], port=0, sinks=[sink]).start()
    try:
        wait_for(
            lambda: [r for r in sink.results if r["source"] == server.url and r["frame"] >= 30],
            30,
            "stream results well past the size change",
        )
        wait_for(lambda: daemon.supervisors[1].state == "ended", 30, "the folder to end")
        with urllib.request.urlopen(daemon.url + "/stream/0", timeout=10) as stream:  # annotates any size
            assert b"image/jpeg" in stream.read(2000)
    finally:
        daemon.stop()
        server.kill()
    assert [loop.stats.errors for loop in daemon.loops] == [0, 0]
    assert len([r for r in sink.results if r["source"] == str(tmp_path / "stills")]) == 4
    assert daemon.supervisors[0].stats.outages == 0
