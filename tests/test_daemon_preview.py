"""runtime/daemon/preview.py: annotated MJPEG per source, opened in a real headless Chromium."""

import http.client
import logging
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.conftest import require_tool

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.http import COOKIE  # noqa: E402
from edgecls.runtime.daemon.preview import BOUNDARY  # noqa: E402
from tests.daemon_helpers import wait_for, write_test_video  # noqa: E402
from tests.mjpeg_server import MjpegServer  # noqa: E402


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("daemon-preview") / "clip.avi")


@pytest.fixture
def daemon(tiny_bundle, video):
    server = MjpegServer(fps=25).start()
    d = Daemon(tiny_bundle, [video, server.url], port=0, sinks=[], source_options={"loop": True}).start()
    deadline = time.monotonic() + 30
    while not all(loop.shown for loop in d.loops) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(loop.shown for loop in d.loops), d.health()
    yield d
    d.stop()
    server.kill()


def read_parts(url, count, timeout=10):
    """The first `count` parts of a real multipart MJPEG response: (headers, jpeg bytes) each."""
    parts = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
        while len(parts) < count:
            assert response.readline().strip() == f"--{BOUNDARY}".encode()
            headers = {}
            while line := response.readline().strip():
                key, _, value = line.decode().partition(":")
                headers[key.lower()] = value.strip()
            body = response.read(int(headers["content-length"]))
            response.readline()
            parts.append((headers, body))
    return parts


def test_preview_streams_are_flowing_annotated_frames(daemon):
    page = urllib.request.urlopen(daemon.url + "/", timeout=5).read().decode()
    assert page.count('<img src="/stream/') == 2
    assert re.findall(r'(?:src|href)="(?!/)', page) == [] and "@import" not in page  # no external assets
    for index in (0, 1):
        parts = read_parts(f"{daemon.url}/stream/{index}", 4)
        frames = [int(h["x-frame"]) for h, _ in parts]
        assert frames == sorted(set(frames)), frames  # new frames, in order: the stream flows
        image = cv2.imdecode(np.frombuffer(parts[-1][1], np.uint8), cv2.IMREAD_COLOR)
        assert image.shape[1] >= 320  # small camera frames are enlarged for the text
        band = image[: image.shape[0] // 12]
        assert (band[..., 1] > 150).sum() > 20 and band[..., 0].mean() < 60  # green text on the black band


def _chromium_screenshot(url: str, width: int, height: int):
    """The page at `url` as headless Chromium draws it (BGR array), or the test fails with Chromium's stderr."""
    chromium = require_tool("chromium", "chromium-browser", package="chromium")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "preview.png"
        done = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={tmp}/profile",
                f"--window-size={width},{height}",
                "--timeout=8000",
                f"--screenshot={shot}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shot.exists(), done.stderr[-2000:]
        return cv2.imread(str(shot))


def test_preview_page_renders_in_headless_chromium(daemon):
    image = _chromium_screenshot(daemon.url + "/", 1100, 700)
    assert image is not None and image.shape[:2] == (700, 1100)
    # Each <img> is 480 px wide at x = 8 + 4 + i*(480+8...); find the frames by their content, not coordinates.
    green = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    bright = image.max(axis=2) > 200
    assert green.sum() > 200, "no annotation text in the screenshot"
    assert bright.sum() > 2000, "no frame content (white shapes) in the screenshot"
    print(f"screenshot: {green.sum()} annotation pixels, {bright.sum()} bright pixels")


TOKEN = "tok-51c0ffee-preview-not-in-logs"


def request(url, path, headers=None, read_bytes=None):
    """(status, headers, body) from a real HTTP request; read_bytes limits reading an endless stream."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read(read_bytes) if read_bytes else response.read()
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


@pytest.fixture
def guarded(tiny_bundle, video, caplog):
    caplog.set_level(logging.DEBUG, logger="edgecls")
    d = Daemon(tiny_bundle, [video], port=0, token=TOKEN, sinks=[], source_options={"loop": True}).start()
    wait_for(lambda: all(loop.shown for loop in d.loops), 30, "a classified frame")
    yield d
    d.stop()
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.get_records("teardown")
    assert any("GET /?token=*** " in r.getMessage() for r in records)  # request lines were logged...
    assert not [r.getMessage() for r in records if TOKEN in r.getMessage()]  # ...never with the token


def test_browser_signs_in_with_the_token_once_and_gets_a_cookie_not_the_token(guarded):
    status, headers, body = request(guarded.url, "/")
    assert status == 401 and b'name="token"' in body  # a browser gets a sign-in form, not JSON
    status, headers, body = request(guarded.url, "/?token=wrong-" + TOKEN)
    assert status == 401 and b"not the right one" in body and "Set-Cookie" not in headers
    status, headers, _ = request(guarded.url, "/?token=" + TOKEN)
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert TOKEN not in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = {"Cookie": cookie.split(";", 1)[0]}
    assert request(guarded.url, "/", jar)[0] == 200
    assert request(guarded.url, "/latest", jar)[0] == 200
    status, headers, chunk = request(guarded.url, "/stream/0", jar, read_bytes=2000)
    assert status == 200 and headers["Content-Type"].startswith("multipart/x-mixed-replace")
    assert b"\xff\xd8" in chunk  # a JPEG is flowing
    assert cookie.startswith(f"{COOKIE}_{urlsplit(guarded.url).port}=")  # per port: daemons side by side
    forged = {"Cookie": f"{COOKIE}_{urlsplit(guarded.url).port}={'0' * 64}"}
    for path in ("/", "/latest", "/stream/0", "/metrics", "/healthz"):
        assert request(guarded.url, path, forged, read_bytes=200)[0] == 401, path
    # the token in the query string of anything but the sign-in page is no way in
    assert request(guarded.url, "/latest?token=" + TOKEN)[0] == 401


def test_preview_behind_a_token_renders_in_headless_chromium(guarded):
    image = _chromium_screenshot(f"{guarded.url}/?token={TOKEN}", 900, 600)
    green = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    bright = image.max(axis=2) > 200
    assert green.sum() > 200, "no annotated frame: the redirect's cookie did not reach the <img> stream"
    assert bright.sum() > 2000


def test_annotate_turns_a_grayscale_frame_into_bgr():
    from edgecls.runtime.daemon.preview import annotate

    gray = np.full((240, 320), 128, np.uint8)  # 320 wide: no enlargement, only the conversion
    out = annotate(gray, {"top1": "cat", "score": 0.5}, 2.0)
    assert out.shape == (240, 320, 3) and out.dtype == np.uint8
    band = max(18, 240 // 12)
    assert (out[band + 1 :] == 128).all()  # below the band (rows 0..band): the gray value on every channel
    assert (out[:band, :, 0] == 0).all() and out[:band, :, 1].max() > 0  # black band, green text


def test_annotate_draws_the_text_four_pixels_from_the_left_edge():
    from edgecls.runtime.daemon.preview import TEXT, annotate

    frame = np.full((240, 320, 3), 200, np.uint8)
    result, fps = {"top1": "dog", "score": 0.75}, 12.5
    band = max(18, 240 // 12)
    out = annotate(frame, result, fps)[:band]
    # The same text drawn at x = 0 on a black band: annotate's copy must be that image shifted right by 4.
    ref = np.zeros((band, 320 + 8, 3), np.uint8)
    cv2.putText(ref, "dog 0.75  12.5 fps", (0, band - 5), cv2.FONT_HERSHEY_SIMPLEX, band / 30, TEXT, 1, cv2.LINE_AA)
    assert ref[:, :4].any()  # the glyphs' own bearing starts inside the first 4 columns, so a shift shows
    np.testing.assert_array_equal(out[:, :4], 0)
    np.testing.assert_array_equal(out[:, 4:], ref[:, : 320 - 4])
