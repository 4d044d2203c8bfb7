"""runtime/daemon/window.py (`edgecls run --show`): a GUI OpenCV drawing into a real X server (Xvfb)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, require_tool, run_cli
from tests.daemon_helpers import write_test_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def gui_python(tmp_path_factory) -> str:
    """A venv that sees this environment's packages, plus opencv-python (with Qt) shadowing the headless cv2."""
    cache = os.environ.get("EDGECLS_TEST_FIXTURE_CACHE")
    venv = Path(cache) / "gui-venv" if cache else tmp_path_factory.mktemp("gui") / "venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # This interpreter's packages (edgecls's dependencies, wherever they were installed: a venv or the
        # system), after the venv's own, so the venv's opencv-python shadows the headless cv2.
        import site

        own = subprocess.run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        parents = [p for p in site.getsitepackages() + [site.getusersitepackages()] if Path(p).is_dir()]
        Path(own, "_edgecls_parent.pth").write_text("\n".join(parents) + "\n")
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "opencv-python"], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"pip install opencv-python failed: {done.stderr[-1000:]}")
    return str(python)


def read_xwd(data: bytes) -> np.ndarray:
    """A 24/32-bit ZPixmap xwd dump -> BGR image."""
    header = struct.unpack(">25I", data[:100])
    size, width, height, byte_order, bits, per_line, colours = (
        header[0],
        header[4],
        header[5],
        header[7],
        header[11],
        header[12],
        header[19],
    )
    assert bits == 32 or header[3] == 24, header
    start = size + colours * 12
    pixels = np.frombuffer(data[start : start + per_line * height], np.uint8).reshape(height, per_line)
    pixels = pixels[:, : width * 4].reshape(height, width, 4)
    return np.ascontiguousarray(pixels[..., :3] if byte_order == 0 else pixels[..., 1:][..., ::-1])


def test_show_draws_annotated_frames_in_a_window_and_stops_cleanly(tiny_bundle, tmp_path, gui_python):
    xvfb = require_tool("Xvfb", package="xvfb")
    xwd = require_tool("xwd", package="x11-apps")
    video = write_test_video(tmp_path / "clip.avi")
    display = f":{90 + os.getpid() % 100}"
    server = subprocess.Popen(
        [xvfb, display, "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        results = tmp_path / "results.jsonl"
        daemon = subprocess.Popen(
            [
                gui_python,
                "-m",
                "edgecls.cli",
                "run",
                str(tiny_bundle),
                "--source",
                str(video),
                "--loop",
                "--show",
                "--duration",
                "12",
                "--results",
                str(results),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 60
        shot = None
        while time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(1.0)
            if results.exists() and results.stat().st_size > 0:
                # The window may be mapped after the first result on a busy machine: look again for a few seconds.
                for _ in range(8):
                    time.sleep(1.5)
                    shot = read_xwd(
                        subprocess.run(
                            [xwd, "-root", "-display", display, "-silent"], capture_output=True, check=True, timeout=30
                        ).stdout
                    )
                    if ((shot[..., 1] > 150) & (shot[..., 0] < 100) & (shot[..., 2] < 100)).sum() > 50:
                        break
                break
        daemon.send_signal(subprocess.signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(10)
    assert daemon.returncode == 0, err[-2000:]
    assert shot is not None, f"no frame classified: {err[-2000:]}"
    green = (shot[..., 1] > 150) & (shot[..., 0] < 100) & (shot[..., 2] < 100)
    white = shot.min(axis=2) > 200
    assert green.sum() > 50, "no annotation text in the window"
    assert white.sum() > 2000, "no frame content (the white shape) in the window"
    assert json.loads(results.read_text().splitlines()[0])["source"] == str(video)


@pytest.mark.slow
def test_show_with_an_unreachable_display_is_a_one_line_error_not_an_abort(tiny_bundle, tmp_path, gui_python):  # noqa: F811
    """window.py says both a headless OpenCV and an unreachable display are "checked up front"; only the DISPLAY
    variable is. A DISPLAY nobody serves (an ended `ssh -X`, a stale session) makes Qt abort the process at the
    first imshow: exit 134, and its reason swallowed by the native-log pipe."""
    video = write_test_video(tmp_path / "clip.avi")
    number = next(n for n in range(400, 500) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    env = {**os.environ, "DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    done = subprocess.run(
        [
            gui_python,
            "-m",
            "edgecls.cli",
            "run",
            str(tiny_bundle),
            "--source",
            str(video),
            "--show",
            "--max-frames",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 1, f"exit {done.returncode}: {done.stderr[-1500:]}"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --show") and "display" in last.lower(), done.stderr[-1500:]


def test_show_refuses_with_one_line_when_opencv_has_no_gui(tiny_bundle, tmp_path):
    from edgecls.runtime.daemon.window import gui_backend

    if gui_backend() is not None:
        pytest.skip("this OpenCV has a GUI; the refusal is for headless builds")
    video = write_test_video(tmp_path / "clip.avi")
    done = run_cli("run", str(tiny_bundle), "--source", str(video), "--show", "--max-frames", "2", timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --show needs OpenCV with GUI support") and "opencv-python" in lines[-1]
    assert "Traceback" not in done.stderr
