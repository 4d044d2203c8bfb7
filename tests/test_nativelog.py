"""edgecls.runtime.daemon.nativelog: what native libraries write to stderr goes through our log, secrets masked."""

from __future__ import annotations

import http.server
import logging
import os
import threading

import pytest

from edgecls.runtime.daemon.nativelog import native_output_to_log


def test_a_native_line_quoting_a_secret_url_is_logged_masked(caplog):
    """Written to the real fd 2 as FFmpeg writes it, at debug level and as a serious (warning) line."""
    lines = [
        b"[hls @ 0x55d0] Error when loading first segment 'http://admin:seg-SECRET@cam/seg0.ts?token=tok-SECRET'\n",
        b"[tcp @ 0x55d1] fatal: cannot open rtsp://viewer:fatal-SECRET@cam/live?auth=auth-SECRET\n",
        b"[http @ 0x55d2] header: Authorization: Basic aGVhZGVy-SECRET\n",
    ]
    with caplog.at_level(logging.DEBUG, logger="edgecls.native"):
        with native_output_to_log():
            for line in lines:
                os.write(2, line)
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "edgecls.native"]
    assert len(logged) == 3, logged
    assert [m for _, m in logged if "SECRET" in m] == [], logged
    assert "'http://admin:***@cam/seg0.ts?token=***'" in logged[0][1]
    assert logged[1][0] == "WARNING" and "rtsp://viewer:***@cam/live?auth=***" in logged[1][1]


class _Playlist(http.server.BaseHTTPRequestHandler):
    """An HLS playlist whose segment URL carries a password and a token; the segment itself is missing (404)."""

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path.startswith("/live.m3u8"):
            body = (
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
                f"http://admin:segpw-SECRET@127.0.0.1:{port}/seg0.ts?token=segtok-SECRET\n#EXT-X-ENDLIST\n"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.apple.mpegurl")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_real_daemon_in_debug_masks_the_segment_url_ffmpeg_reports(tiny_bundle, tmp_path):
    pytest.importorskip("cv2")
    from tests.conftest import run_cli

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Playlist)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = f"http://127.0.0.1:{server.server_address[1]}/live.m3u8?token=listtok-SECRET"
    try:
        done = run_cli(
            "--debug",
            "run",
            tiny_bundle,
            "--source",
            source,
            "--port",
            "0",
            "--wait-for-sources",
            "--duration",
            "6",
            timeout=60,
        )
    finally:
        server.shutdown()
    native = [line for line in done.stderr.splitlines() if "native:" in line]
    assert any("seg0.ts" in line for line in native), done.stderr[-3000:]  # FFmpeg did quote the segment's URL
    assert "SECRET" not in done.stderr, [line for line in done.stderr.splitlines() if "SECRET" in line][:5]
