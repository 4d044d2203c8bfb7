"""What a device installs: `pip install .[runtime]` in a fresh virtual environment, no TensorFlow."""

import json
import os
import subprocess
import sys

import pytest

from tests.test_packaging import clean_copy


def _size_mib(path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total / 2**20  # MiB, as `du -m` counts


@pytest.mark.slow
def test_runtime_only_environment_classifies_images_without_tensorflow(tmp_path, tiny_bundle, shapes_folder):
    venv = tmp_path / "device-venv"
    # The device venv sees only what it installed: an inherited PYTHONPATH (a checkout) would hand it this
    # tree's edgecls and top-level folders instead.
    device_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=device_env)
    pip = venv / "bin" / "pip"
    source = clean_copy(tmp_path / "src")  # the tree as committed: no stale build/ folder goes into the wheel
    install = subprocess.run(
        [str(pip), "install", "--quiet", f"{source}[runtime]"],
        capture_output=True,
        text=True,
        timeout=1200,
        env=device_env,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    python = venv / "bin" / "python"

    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('keras'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=device_env,
    )
    assert probe.stdout.split() == ["None", "None"], probe.stdout + probe.stderr
    # One top-level package: the device's entry points are edgecls.runtime.*, and no `runtime` is installed.
    names = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('runtime'), u.find_spec('converters'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=device_env,
    )
    assert names.stdout.split() == ["None", "None"], names.stdout + names.stderr
    for entry in ("edgecls.runtime.install", "edgecls.runtime.bench"):
        helped = subprocess.run(
            [str(python), "-m", entry, "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            env=device_env,
        )
        assert helped.returncode == 0 and "usage" in helped.stdout.lower(), entry + helped.stderr[-2000:]

    out = subprocess.run(
        [str(venv / "bin" / "edgecls"), "predict", str(tiny_bundle), str(shapes_folder / "circle"), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=device_env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(l) for l in out.stdout.splitlines()]
    assert len(rows) == 24 and all(r["top1"] in ("circle", "square", "triangle") for r in rows)
    for artifact in ("onnx-int8", "tflite-fp32"):
        one = subprocess.run(
            [
                str(venv / "bin" / "edgecls"),
                "predict",
                str(tiny_bundle),
                str(shapes_folder / "square" / "000.png"),
                "--json",
                "--artifact",
                artifact,
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
            env=device_env,
        )
        assert one.returncode == 0, one.stderr[-2000:]

    size_mb = _size_mib(venv)
    print(f"runtime-only environment: {size_mb:.0f} MiB")
    # 384 MiB with opencv-python-headless 5.0; 407 MiB with 5.1 (its bundled libraries grew). TensorFlow alone
    # would add over 1 GiB: the budget is there to catch that, not a point release of a dependency.
    assert size_mb <= 450, f"the device environment grew to {size_mb:.0f} MiB"
