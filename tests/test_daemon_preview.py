"""runtime/daemon/preview.py: annotated MJPEG per source, opened in a real headless Chromium."""

import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_tool

cv2 = pytest.importorskip("cv2")

from edgecls.runtime.daemon import Daemon  # noqa: E402
from edgecls.runtime.daemon.preview import BOUNDARY  # noqa: E402
from tests.daemon_helpers import write_test_video  # noqa: E402
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


def test_preview_page_renders_in_headless_chromium(daemon):
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
                "--window-size=1100,700",
                "--timeout=8000",
                f"--screenshot={shot}",
                daemon.url + "/",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shot.exists(), done.stderr[-2000:]
        image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (700, 1100)
    # Each <img> is 480 px wide at x = 8 + 4 + i*(480+8...); find the frames by their content, not coordinates.
    green = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    bright = image.max(axis=2) > 200
    assert green.sum() > 200, "no annotation text in the screenshot"
    assert bright.sum() > 2000, "no frame content (white shapes) in the screenshot"
    print(f"screenshot: {green.sum()} annotation pixels, {bright.sum()} bright pixels")
