"""edgecls.runtime.daemon.nativelog in every command: native stderr chatter becomes debug lines, never raw on stderr."""

from __future__ import annotations

from tests.conftest import run_cli


def test_predict_prints_no_native_chatter_unless_debug(tiny_bundle, shapes_folder):
    image = next(p for p in sorted((shapes_folder / "circle").iterdir()) if p.suffix == ".png")
    quiet = run_cli("predict", tiny_bundle, image, "--artifact", "tflite-int8", timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "XNNPACK" not in quiet.stderr and quiet.stdout.strip()
    loud = run_cli("--debug", "predict", tiny_bundle, image, "--artifact", "tflite-int8", timeout=120)
    assert loud.returncode == 0, loud.stderr
    assert any(line.startswith("DEBUG: native: ") and "XNNPACK" in line for line in loud.stderr.splitlines()), (
        loud.stderr
    )
    # errors still reach the real stderr, as one line
    bad = run_cli("predict", tiny_bundle / "missing", image, timeout=120)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr
