"""`edgecls bench --device user@host:port` (issue 8 point 4) against a real OpenSSH server on 127.0.0.1."""

import json
import shutil
import socket
from pathlib import Path

from edgecls.runtime.bench.machine import cpu_model
from tests.conftest import cli_error, run_cli
from tests.sshd import sshd  # noqa: F401  (the fixture)


def test_i8_p4_remote_bench_runs_on_the_device_and_names_it(sshd, tiny_bundle, shapes_folder, tmp_path):  # noqa: F811
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
    assert [r["artifact"] for r in doc["records"]] == ["tflite-int8", "onnx-fp32"]
    for r in doc["records"]:
        assert r["machine"]["via_ssh"] is True and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    # the device-side temp folder (bundle, synthetic frame, pid file) is gone afterwards; the loopback device
    # shares this file system, so its path can be checked here
    workdir = doc["remote"]["workdir"]
    assert workdir.startswith("/") and "edgecls-bench." in workdir and not Path(workdir).exists()
    assert "p99" in result.stdout  # the table comes from the returned JSON, printed here


def test_i8_p4_a_failing_remote_bench_says_why_once(sshd, tiny_bundle):  # noqa: F811
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


def test_i8_p4_unreachable_device_is_one_line(tiny_bundle, sshd):  # noqa: F811
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
