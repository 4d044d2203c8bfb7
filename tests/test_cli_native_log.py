"""Every command, not only the daemon: what C code writes to fd 2 (LiteRT's XNNPACK line, TensorFlow's C++ logs)
becomes debug log lines, shown with --debug and never raw on stderr."""

from __future__ import annotations

import subprocess
import sys


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "edgecls.cli", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_i7_p3_predict_prints_no_native_chatter_unless_debug(tiny_bundle, shapes_folder):
    image = next(p for p in sorted((shapes_folder / "circle").iterdir()) if p.suffix == ".png")
    quiet = _cli("predict", tiny_bundle, image, "--artifact", "tflite-int8")
    assert quiet.returncode == 0, quiet.stderr
    assert "XNNPACK" not in quiet.stderr and quiet.stdout.strip()
    loud = _cli("--debug", "predict", tiny_bundle, image, "--artifact", "tflite-int8")
    assert loud.returncode == 0, loud.stderr
    assert any(line.startswith("DEBUG: native: ") and "XNNPACK" in line for line in loud.stderr.splitlines()), (
        loud.stderr
    )
    # errors still reach the real stderr, as one line
    bad = _cli("predict", tiny_bundle / "missing", image)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr
