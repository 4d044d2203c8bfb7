"""edgecls.bench_remote: `edgecls bench --device user@host:port` against a real OpenSSH server on 127.0.0.1."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from edgecls.runtime.bench.machine import cpu_model
from tests.conftest import REPO, cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (the fixture)
from tests.test_bench import QUICK
from tests.test_flash_device import edgecls_0_2_0  # noqa: F401  (the fixture)


def test_remote_bench_runs_on_the_device_and_names_it(sshd, tiny_bundle, shapes_folder, tmp_path):  # noqa: F811
    out = tmp_path / "remote.json"
    data = tmp_path / "data"
    shutil.copytree(shapes_folder / "circle", data / "circle")
    shutil.copytree(shapes_folder / "square", data / "sqaure")  # not a class: said here, not in the device's stderr
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    result = run_cli(
        "bench",
        tiny_bundle,
        "--device",
        device,
        "--ssh-config",
        sshd.ssh_config,
        "--data",
        data,
        "--artifacts",
        "tflite-int8,onnx-fp32",
        "--repeats",
        "1",
        "--runs",
        "10",
        "--json",
        out,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sqaure" in result.stderr and "left out of the accuracy" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["records"][0]["skipped_folders"] == ["sqaure"] and doc["records"][0]["accuracy_images"] > 0
    assert doc["remote"]["device"] == device
    machine = doc["machine"]
    # Read on the far side of the SSH session: sshd set SSH_CONNECTION there, not in this test's process.
    assert machine["via_ssh"] is True
    assert machine["hostname"] == socket.gethostname() and machine["cpu"] == cpu_model()
    openvino = ["onnx-fp32@openvino"] if importlib.util.find_spec("openvino") else []  # an opt-in engine's row
    assert [r["artifact"] for r in doc["records"]] == ["tflite-int8", "onnx-fp32", *openvino]
    for r in doc["records"]:
        assert r["machine"]["via_ssh"] is True and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    # the device-side temp folder (bundle, synthetic frame, pid file) is gone afterwards; the loopback device
    # shares this file system, so its path can be checked here
    workdir = doc["remote"]["workdir"]
    assert workdir.startswith("/") and "edgecls-bench." in workdir and not Path(workdir).exists()
    assert "p99" in result.stdout  # the table comes from the returned JSON, printed here


def test_a_failing_remote_bench_says_why_once(sshd, tiny_bundle):  # noqa: F811
    """The device's own one-line error comes back once, named after the device, not wrapped in a second error:."""
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    error = cli_error(
        run_cli(
            "bench",
            tiny_bundle,
            "--device",
            device,
            "--ssh-config",
            sshd.ssh_config,
            "--frame",
            tiny_bundle / "manifest.json",
            "--repeats",
            "1",
            "--runs",
            "5",
            timeout=120,
        )
    )
    assert error.startswith(f"error: {device}: --frame: cannot decode") and error.count("error") == 1, error


def test_an_unreachable_device_is_one_error_line(tiny_bundle, sshd):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    error = cli_error(
        run_cli(
            "bench",
            tiny_bundle,
            "--device",
            f"{sshd.user}@127.0.0.1:{port}",
            "--ssh-config",
            sshd.ssh_config,
            "--runs",
            "5",
            timeout=120,
        )
    )
    assert "cannot reach" in error, error


def _descendants(pid: int) -> list:
    """Every process below `pid` (by /proc's parent links), with its command line."""
    children, cmdline = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append((child, cmdline.get(child, "")))
            todo.append(child)
    return out


def test_an_interrupted_remote_bench_stops_on_the_device(sshd, tiny_bundle):  # noqa: F811
    """Ctrl-C (or the 3600 s timeout) kills only the local ssh client: `python3 -m edgecls.runtime.bench` and its worker
    keep running on the device (no pty, so no SIGHUP), timing on a board the user believes idle and skewing the
    next bench there, while `rm -rf` pulls the bundle from under them."""
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls.cli",
            "bench",
            str(tiny_bundle),
            "--device",
            device,
            "--ssh-config",
            str(sshd.ssh_config),
            "--artifacts",
            "tflite-int8",
            "--repeats",
            "2",
            "--runs",
            "1000000",
            "--frame-runs",
            "1000000",
            "--time-budget",
            "20",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    left = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(
            "edgecls.runtime.bench.worker" in c for _, c in _descendants(sshd.process.pid)
        ):
            assert cli.poll() is None, cli.communicate()[1][-2000:]
            time.sleep(0.2)
        assert any("edgecls.runtime.bench.worker" in c for _, c in _descendants(sshd.process.pid)), "no worker started"
        cli.send_signal(signal.SIGINT)
        cli.communicate(timeout=60)
        time.sleep(3)
        left = [(p, c) for p, c in _descendants(sshd.process.pid) if "edgecls.runtime.bench" in c]
        assert not left, f"still running on the device after Ctrl-C: {left}"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        # The orphans this test caused, by id: SIGINT first so the device-side bench removes its own temp folder.
        for sig in (signal.SIGINT, signal.SIGKILL):
            for pid, _ in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if left and sig == signal.SIGINT:
                time.sleep(3)


def test_remote_json_survives_a_chatty_device_shell(sshd, tiny_bundle, tmp_path):  # noqa: F811
    """A device whose python3 (a pyenv/conda shim, a login banner from a shell rc file) prints one line on stdout
    before the bench: `json.loads` of the whole stdout fails and the error blames "the device's edgecls too old"."""
    shim = tmp_path / "python3-shim"
    shim.write_text(f"#!/bin/sh\necho 'pyenv: using 3.11'\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    result = run_cli(
        "bench",
        tiny_bundle,
        "--device",
        f"{sshd.user}@{sshd.host}:{sshd.port}",
        "--ssh-config",
        sshd.ssh_config,
        "--remote-python",
        shim,
        "--artifacts",
        "tflite-int8",
        *QUICK[:-2],
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tflite-int8" in result.stdout


def test_remote_bench_refuses_a_bundle_the_devices_older_edgecls_would_run_wrongly_and_runs_an_old_style_one(
    sshd,  # noqa: F811
    tiny_bundle,
    edgecls_0_2_0,  # noqa: F811
    tmp_path,
):
    """edgecls 0.2.0 ignores `requires`: it would time an NCHW logits model as if NHWC and rank its logits."""
    from tests.test_flash_device import nchw_logits_bundle

    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    common = ("--device", device, "--ssh-config", sshd.ssh_config, "--remote-python", edgecls_0_2_0, "--no-keras")
    nchw = nchw_logits_bundle(tmp_path / "nchw")
    error = cli_error(run_cli("bench", nchw, *common, *QUICK, timeout=240))
    assert "the device runs edgecls 0.2.0, which predates what this bundle needs (" in error, error
    assert "nchw-input" in error and "edgecls flash ... --setup" in error
    out = tmp_path / "old.json"
    done = run_cli("bench", tiny_bundle, *common, "--artifacts", "tflite-int8", *QUICK, "--json", out, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["artifact"] for r in json.loads(out.read_text())["records"]] == ["tflite-int8"]
