"""runtime/daemon/preview.py: annotated MJPEG per source, opened in a real headless Chromium."""

import http.client
import http.server
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


class _SceneServer(MjpegServer):
    """tests/mjpeg_server.py's camera, sending `scenes` (JPEG bytes) in turn: frame i is scenes[i % len(scenes)]."""

    def __init__(self, scenes, fps=10.0):
        super().__init__(fps=fps)
        self.scenes = scenes

    def start(self):
        import threading

        from tests.mjpeg_server import _Server

        scenes = self.scenes

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for i in range(10**6):
                        body = scenes[i % len(scenes)]
                        head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(body)
                        self.wfile.write(head + body + b"\r\n")
                        time.sleep(1 / server.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        server = self._server = _Server(("127.0.0.1", 0), Handler)
        server.stopping, server.fps = threading.Event(), self.fps
        self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self


CORNER = (920, 360, 360, 360)  # x, y, w, h: the bottom-right corner of a 1280x720 frame


def _corner_scenes(count=12):
    """1280x720 JPEG scenes: a shape of the fixture classes in the bottom-right corner (the one that matters), one
    of each other class in two other corners. Returns (jpeg bytes, class of the corner's shape) per scene."""
    from tests.conftest import FIXTURE_COLOURS, render_fixture_image

    rng, kinds = np.random.default_rng(7), list(FIXTURE_COLOURS)
    scenes = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        others = [k for k in kinds if k != kind]
        canvas = np.full((720, 1280, 3), 60, np.uint8)
        for (x, y), what in zip([(920, 360), (0, 0), (460, 0)], [kind, *others]):
            canvas[y : y + 360, x : x + 360] = cv2.resize(render_fixture_image(what, rng, 40), (360, 360))
        scenes.append((cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), kind))
    return scenes


def _classified_scenes(bundle, url, frames, **settings):
    """A daemon on the stream until `frames` results: (its results by frame, a headless Chromium screenshot of /)."""
    from edgecls.runtime.daemon.config import SourceConfig
    from tests.browser import chromium, screenshot
    from tests.daemon_helpers import ListSink

    sink = ListSink()
    daemon = Daemon(
        bundle,
        [url],
        port=0,
        sinks=[sink],
        drift=False,
        source_options={"every_frame": True},  # no frame dropped: frame i is scene i % count
        source_settings=(SourceConfig(url, name="yard", **settings),),
    ).start()
    try:
        wait_for(lambda: len(sink.results) >= frames, 60, f"{frames} classified frames")
        with tempfile.TemporaryDirectory() as tmp, chromium(width=1000, height=700) as browser:
            browser.get(daemon.url + "/")
            time.sleep(1.0)  # a few frames of the stream drawn
            shot = cv2.imread(str(screenshot(browser, Path(tmp) / "preview.png")))
            img = browser.find_element("css selector", "img").rect
    finally:
        daemon.stop()
    return {r["frame"]: r for r in sink.results[:frames]}, shot, img


def _magenta_on_box(shot, img, box) -> float:
    """The share of points along `box` (frame pixels) where the screenshot shows the preview's magenta."""
    scale = img["width"] / 1280
    x, y, w, h = (v * scale for v in box)
    points = [(x + w * t, y + d) for t in np.linspace(0.1, 0.9, 20) for d in (0, h)]
    points += [(x + d, y + h * t) for t in np.linspace(0.1, 0.9, 20) for d in (0, w)]
    hits = 0
    for px, py in points:
        cx, cy = round(img["x"] + px), round(img["y"] + py)
        patch = shot[max(0, cy - 3) : cy + 4, max(0, cx - 3) : cx + 4].astype(int)
        b, g, r = patch[..., 0], patch[..., 1], patch[..., 2]
        hits += bool(((r > 200) & (b > 200) & (g < 60)).any())  # the pink of some backgrounds: g > 60
    return hits / len(points)


def test_a_roi_on_the_corner_of_a_720p_stream_classifies_as_the_cropped_images_and_the_preview_boxes_it(
    tiny_bundle, tmp_path
):
    from edgecls.runtime.classifier import Classifier

    scenes = _corner_scenes()
    camera = _SceneServer([jpeg for jpeg, _ in scenes]).start()
    try:
        boxed, boxed_shot, img = _classified_scenes(tiny_bundle, camera.url, 24, roi=CORNER)
        whole, whole_shot, _ = _classified_scenes(tiny_bundle, camera.url, 24)
    finally:
        camera.kill()
    classifier, (x, y, w, h) = Classifier(tiny_bundle), CORNER
    cropped = [
        classifier.classify(cv2.imdecode(np.frombuffer(j, np.uint8), 1)[y : y + h, x : x + w], "bgr").label
        for j, _ in scenes
    ]
    truth = [kind for _, kind in scenes]
    n = len(scenes)
    accuracy = {
        "cropped images": sum(c == t for c, t in zip(cropped, truth)) / n,
        "roi": sum(r["top1"] == truth[i % n] for i, r in boxed.items()) / len(boxed),
        "whole frame": sum(r["top1"] == truth[i % n] for i, r in whole.items()) / len(whole),
    }
    print("top-1 on the corner:", accuracy)
    assert all(r["top1"] == cropped[i % n] for i, r in boxed.items())  # the ROI is exactly the cropped image
    assert all(r["view"] == {"roi": list(CORNER), "rotate": 0, "flip": "none"} for r in boxed.values())
    assert accuracy["roi"] == accuracy["cropped images"] >= 0.75
    assert accuracy["whole frame"] <= accuracy["roi"] - 0.25
    cv2.imwrite(str(tmp_path / "preview-roi.png"), boxed_shot)
    on_box = {"roi": _magenta_on_box(boxed_shot, img, CORNER), "none": _magenta_on_box(whole_shot, img, CORNER)}
    print("magenta along the ROI's edges in the screenshot:", on_box)
    assert on_box["roi"] >= 0.9 and on_box["none"] <= 0.1, tmp_path / "preview-roi.png"


def test_the_roi_is_boxed_on_the_whole_frame_at_the_preview_s_scale():
    """A 64x48 frame is shown 5x enlarged; the ROI (8, 4, 40, 30) is then the box (40, 20)-(239, 169), drawn inside."""
    from edgecls.runtime.daemon.preview import ROI, annotate

    frame = np.full((48, 64, 3), 90, np.uint8)
    result = {"top1": "circle", "score": 0.9, "view": {"roi": [8, 4, 40, 30], "rotate": 90, "flip": "none"}}
    shown = annotate(frame, result, 5.0)
    ys, xs = np.nonzero(np.all(shown == ROI, axis=2))
    assert shown.shape == (240, 320, 3)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (40, 20, 239, 169)
    assert not np.all(annotate(frame, {"top1": "circle", "score": 0.9}, 5.0) == ROI, axis=2).any()
