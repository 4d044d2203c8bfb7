"""Helpers the daemon and source tests share: a generated test video, polling with a deadline, a plain HTTP GET."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import numpy as np


def write_test_video(path, frames=20, fps=20.0, size=(64, 48), pattern="circle"):
    """Write an MJPG AVI and return `path`. Frame i is a white circle of radius 6 + i % 12 on black ("circle", so the
    model sees shapes) or a flat grey of brightness 10*i ("ramp", so a test can tell frames apart by brightness)."""
    import cv2  # callers skip on a missing OpenCV before they get here

    if pattern not in ("circle", "ramp"):
        raise ValueError(f"pattern must be 'circle' or 'ramp', not {pattern!r}")
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for i in range(frames):
        if pattern == "ramp":
            image = np.full((height, width, 3), 10 * i, np.uint8)
        else:
            image = np.zeros((height, width, 3), np.uint8)
            cv2.circle(image, (width // 2, height // 2), 6 + i % 12, (255, 255, 255), -1)
        writer.write(image)
    writer.release()
    return path


def wait_for(predicate, timeout, what):
    """The first truthy value of `predicate()` within `timeout` seconds; fails the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url, token=None, timeout=10):
    """(status, body) of a real HTTP GET, with a bearer token if given; error statuses are answers too."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ListSink:
    """Keeps every published result, as a real sink would write them."""

    def __init__(self):
        self.results, self.closed = [], False

    def write(self, result):
        self.results.append(result)

    def close(self):
        self.closed = True

    def of(self, source):
        return [r for r in list(self.results) if r["source"] == source]


def start_cli_daemon(bundle, clip, *options):
    """A real `edgecls run BUNDLE --source CLIP --loop --port 0 OPTIONS…`: (process, url, stderr lines) once it
    serves (its "started" event names the URL); stderr keeps being collected into the list."""
    import json
    import subprocess
    import sys
    import threading

    from tests.conftest import REPO

    command = [sys.executable, "-m", "edgecls.cli", "run", str(bundle), "--source", str(clip), "--loop", "--port", "0"]
    process = subprocess.Popen(
        [*command, *map(str, options)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        started = next((json.loads(line) for line in list(lines) if line.startswith('{"event": "started"')), None)
        if started:
            return process, started["url"], lines
        time.sleep(0.05)
    process.kill()
    raise AssertionError("the daemon did not start: " + "".join(lines)[-2000:])
