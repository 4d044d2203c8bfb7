"""edgecls.search.device: DeviceLab measures a bundle's artifact here (a profile) or over a real SSH server, one
measurement at a time per device."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgecls.runtime.bench.machine import cpu_model
from edgecls.runtime.errors import EdgeclsError
from edgecls.search import device as device_module
from edgecls.search.device import MB, DeviceLab, MeasureSettings
from tests.conftest import REPO
from tests.sshd import sshd  # noqa: F401  (the fixture)

QUICK = MeasureSettings(runs=30, frame_runs=3, rounds=4, round_runs=10, time_budget_s=1.0, max_warmup_s=1.0)
# Bounded by its time budget, not its runs: a tiny model's 1,000 invokes took under a second on an idle Zen 4.
LONG = MeasureSettings(runs=10**7, frame_runs=3, rounds=20, round_runs=10**6, time_budget_s=6.0)


@pytest.fixture(autouse=True)
def _own_state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the local device's lock file goes there


@pytest.fixture
def own_measure_lock(tmp_path, monkeypatch):
    """This test's own machine-wide measurement lock: the real one is shared with every pytest worker's searches,
    so "nobody holds it afterwards" could only be asserted of a path no other test measures under."""
    path = str(tmp_path / "edgecls-measure.lock")
    monkeypatch.setattr(device_module, "REMOTE_LOCK", path)
    return path


def test_a_profile_is_measured_here_on_the_artifact_it_prefers(tiny_bundle):
    lines = []
    lab = DeviceLab("desktop-cpu", settings=QUICK, progress=lines.append)
    assert lab.artifact_for(tiny_bundle) == "tflite-int8"  # desktop-cpu: int8 LiteRT first
    m = lab.measure(tiny_bundle)
    assert (m.artifact, m.engine) == ("tflite-int8", "litert")
    assert 0 < m.latency_ms <= m.latency_p90_ms < 1000
    assert 20 < m.peak_rss_mb < 4000  # a fresh worker: python, numpy, OpenCV, LiteRT, not this test's TensorFlow
    assert m.size_mb == (Path(tiny_bundle) / "model_int8.tflite").stat().st_size / MB
    assert m.device.startswith("desktop-cpu on this machine (") and cpu_model() in m.device
    assert m.emulated is None  # x86 on x86
    assert m.started < m.ended <= time.time() and m.seconds == pytest.approx(m.ended - m.started)
    assert any("measuring tflite-int8" in line for line in lines)
    described = lab.describe()
    assert described["kind"] == "local" and described["profile"] == "desktop-cpu"
    assert described["machine"]["via_ssh"] is False


def test_a_profile_file_that_prefers_onnx_is_measured_on_onnx(tiny_bundle, tmp_path):
    profile = tmp_path / "onnx-box.json"
    profile.write_text(json.dumps({"name": "onnx-box", "artifacts": ["onnx-int8", "tflite-int8"], "threads": 1}))
    lab = DeviceLab(str(profile), settings=QUICK)
    m = lab.measure(tiny_bundle)
    assert (m.artifact, m.engine) == ("onnx-int8", "onnxruntime") and m.threads == 1
    assert m.size_mb == (Path(tiny_bundle) / "model_int8.onnx").stat().st_size / MB
    assert lab.describe()["threads"] == 1


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed here")
def test_an_openvino_profile_is_measured_in_openvino(tiny_bundle):
    m = DeviceLab("intel-cpu", settings=QUICK).measure(tiny_bundle)
    assert (m.artifact, m.engine) == ("onnx-int8", "openvino")


_MEASURE_AFTER_GO = """
import json, sys, time
from pathlib import Path
from edgecls.search.device import DeviceLab, MeasureSettings
lab = DeviceLab("desktop-cpu", settings=MeasureSettings(**json.loads(sys.argv[3])))
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
print(json.dumps(lab.measure(sys.argv[1]).to_dict()))
"""


def test_two_processes_measuring_one_device_take_turns(tiny_bundle, tmp_path):
    """Both start measuring at the same moment; the lock makes one wait until the other let the device go."""
    from dataclasses import asdict

    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MEASURE_AFTER_GO, str(tiny_bundle), str(go), json.dumps(asdict(QUICK))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    time.sleep(4)  # both imported edgecls and wait for the file
    released = time.time()
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = sorted(results, key=lambda m: m["started"])
    assert released <= first["started"] < first["ended"] <= second["started"] < second["ended"]
    # both asked at `released` (within a poll); the first held the device long enough that a second without the
    # lock would have started inside its measurement
    assert first["ended"] - released > 0.3


def test_a_device_over_ssh_is_measured_there_and_named(sshd, tiny_bundle):  # noqa: F811
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    lab = DeviceLab(device, profile="desktop-cpu", ssh_config=sshd.ssh_config, settings=QUICK)
    asked = lab.describe()  # before any measurement: asked of the device's own python
    assert asked["machine"]["via_ssh"] is True and asked["label"].startswith(f"{device} (")
    m = lab.measure(tiny_bundle)
    assert (m.artifact, m.engine) == ("tflite-int8", "litert")
    assert m.device.startswith(f"{device} (") and cpu_model() in m.device
    assert 0 < m.latency_ms <= m.latency_p90_ms and m.peak_rss_mb > 20
    assert m.started < m.ended and m.seconds == pytest.approx(m.ended - m.started)
    described = lab.describe()
    assert described["kind"] == "ssh" and described["machine"]["via_ssh"] is True  # read on the device's side


def test_an_ssh_measurement_waits_for_the_lock_held_on_the_device(sshd, tiny_bundle, own_measure_lock):  # noqa: F811
    """The loopback device shares this file system: holding its lock file here is holding the device."""
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    lines = []
    lab = DeviceLab(device, ssh_config=sshd.ssh_config, settings=QUICK, progress=lines.append)
    fd = os.open(own_measure_lock, os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = []

    def release_later():
        time.sleep(3)
        released.append(time.time())
        os.close(fd)

    holder = threading.Thread(target=release_later)
    holder.start()
    try:
        m = lab.measure(tiny_bundle)
    finally:
        holder.join()
    assert m.started >= released[0]
    assert any("waiting for the device" in line for line in lines)
    # and the device's lock is free again afterwards: nothing of ours keeps it
    fd = os.open(own_measure_lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_an_unreachable_ssh_device_is_one_line_naming_the_cause(tiny_bundle, sshd):  # noqa: F811
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = DeviceLab(f"{sshd.user}@127.0.0.1:{port}", ssh_config=sshd.ssh_config, settings=QUICK)
    with pytest.raises(EdgeclsError) as err:
        lab.measure(tiny_bundle)
    assert "cannot reach" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("device", "profile", "says"),
    [
        ("no-such-board", None, "unknown device profile 'no-such-board'"),
        ("pi@kitchen:/opt/edgecls", None, "is not user@host or user@host:PORT"),
        ("   ", None, "--device is empty"),
        ("desktop-cpu", "raspberry-pi-4", "leave out --profile raspberry-pi-4"),
        ("pi@kitchen", "no-such-board", "unknown device profile 'no-such-board'"),
    ],
)
def test_a_bad_device_or_profile_is_one_line_naming_the_fix(device, profile, says):
    with pytest.raises(EdgeclsError) as err:
        DeviceLab(device, profile=profile)
    message = str(err.value)
    assert says in message and "\n" not in message
    if "unknown device profile" in message:
        assert "desktop-cpu" in message and "user@host" in message  # the profiles there are, and the SSH form


def test_a_folder_that_is_not_a_bundle_is_refused_before_the_device_is_taken(tmp_path):
    with pytest.raises(EdgeclsError, match="is not a bundle"):
        DeviceLab("desktop-cpu").measure(tmp_path)
    assert not (tmp_path / "state" / "edgecls" / "devices").exists()


def test_a_device_python_that_prints_before_the_lock_is_measured(sshd, tiny_bundle, tmp_path):  # noqa: F811
    """A wrapper (conda, a login banner) printing a line before python starts: the lock handshake skips it."""
    chatty = tmp_path / "chatty-python"
    chatty.write_text(f'#!/bin/sh\necho "conda: environment base activated"\nexec {sys.executable} "$@"\n')
    chatty.chmod(0o755)
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    lab = DeviceLab(device, ssh_config=sshd.ssh_config, settings=QUICK, python=str(chatty))
    started = time.time()
    m = lab.measure(tiny_bundle)
    assert m.latency_ms > 0 and time.time() - started < 50


def test_an_ssh_device_runs_the_bench_with_the_python_of_its_own_install_root(sshd, tiny_bundle, tmp_path):  # noqa: F811
    """A profile's install_root decides the device's python for the lock, the description and the bench alike."""
    root = tmp_path / "device-root"
    (root / "venv" / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    venv_python = root / "venv" / "bin" / "python"
    venv_python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {sys.executable} "$@"\n')
    venv_python.chmod(0o755)
    profile = tmp_path / "rooted.json"
    profile.write_text(json.dumps({"name": "rooted", "artifacts": ["tflite-int8"], "install_root": str(root)}))
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    DeviceLab(device, profile=str(profile), ssh_config=sshd.ssh_config, settings=QUICK).measure(tiny_bundle)
    assert "edgecls.runtime.bench" in calls.read_text()


@pytest.mark.parametrize(
    ("profile", "says"),
    [
        ("desktop-gpu", "TensorrtExecutionProvider"),
        ("jetson-orin-nano", "CUDAExecutionProvider"),
        ("intel-igpu", "openvino_device GPU,CPU"),
    ],
)
def test_a_profile_the_bench_cannot_run_as_the_device_does_is_refused(profile, says):
    """The bench's worker runs ONNX Runtime on its CPU provider and OpenVINO on the CPU: a GPU profile would be
    timed on the CPU while `edgecls run` uses the GPU."""
    with pytest.raises(EdgeclsError) as err:
        DeviceLab(profile)
    assert says in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EdgeclsError, match=says):
        DeviceLab("pi@kitchen", profile=profile)


_MEASURE = """
import json, sys
from edgecls.search import device
from edgecls.search.device import DeviceLab, MeasureSettings
device.REMOTE_LOCK = sys.argv[3]  # the test's own lock file (own_measure_lock), not every worker's
DeviceLab("desktop-cpu", settings=MeasureSettings(**json.loads(sys.argv[2]))).measure(sys.argv[1])
"""


def _children(pid: int) -> list:
    """The processes whose parent is `pid` (here: the bench's process a measurement starts once it holds the lock)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_measurement_killed_with_9_keeps_the_device_until_its_bench_is_done(tiny_bundle, own_measure_lock):
    """The bench's workers outlive a killed search: the lock stays held until they are done, not freed at once."""
    from dataclasses import asdict

    from edgecls.runtime.lockfile import holder

    settings = LONG  # the bench must still run when the search is killed, however fast this machine is
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = [sys.executable, "-c", _MEASURE, str(tiny_bundle), json.dumps(asdict(settings)), own_measure_lock]
    proc = subprocess.Popen(job, env=env)
    lock = own_measure_lock
    deadline = time.time() + 120
    while not ("desktop-cpu" in (holder(lock) or "") and _children(proc.pid)) and time.time() < deadline:
        time.sleep(0.05)
    assert _children(proc.pid), "the measurement never started its bench's process"
    time.sleep(1.0)  # into the bench
    proc.kill()
    proc.wait()
    fd = os.open(lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the orphaned bench still holds the device
        fcntl.flock(fd, fcntl.LOCK_EX)  # and lets it go once done
    finally:
        os.close(fd)


def test_a_local_profile_refuses_a_search_recorded_on_another_machine():
    """A local profile measures the machine the worker runs on: a join or resume from another host would mix two
    machines' figures in one latency model and front."""
    lab = DeviceLab("desktop-cpu", settings=QUICK)
    recorded = lab.describe()
    assert recorded["machine"]["hostname"] and recorded["machine"]["cpu"]
    assert lab.same_machine(recorded) is None
    moved = {**recorded, "machine": {**recorded["machine"], "hostname": "elsewhere"}}
    refusal = DeviceLab("desktop-cpu", settings=QUICK).same_machine(json.loads(json.dumps(moved)))
    assert "elsewhere" in refusal and recorded["machine"]["hostname"] in refusal and "\n" not in refusal
    assert DeviceLab("pi@kitchen").same_machine(moved) is None  # an SSH device is the same from any host


def test_a_local_measurement_waits_for_the_machine_wide_lock_whoever_holds_it(tiny_bundle, own_measure_lock):
    """Not a per-user file: another user, sudo, or an SSH measurement of this machine holds the same lock."""
    fd = os.open(own_measure_lock, os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = []

    def release_later():
        time.sleep(3)
        released.append(time.time())
        os.close(fd)

    holder = threading.Thread(target=release_later)
    holder.start()
    try:
        m = DeviceLab("desktop-cpu", settings=QUICK).measure(tiny_bundle)
    finally:
        holder.join()
    assert m.started >= released[0]


_MEASURE_SSH = """
import json, sys
from edgecls.search import device
from edgecls.search.device import DeviceLab, MeasureSettings
device.REMOTE_LOCK = sys.argv[5]  # the test's own lock file (own_measure_lock), not every worker's
lab = DeviceLab(sys.argv[3], ssh_config=sys.argv[4], settings=MeasureSettings(**json.loads(sys.argv[2])))
lab.measure(sys.argv[1])
"""


def _bench_folders() -> set:
    """The temp folders of `edgecls bench` processes running on this machine (the loopback device)."""
    import re

    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "edgecls.runtime.bench" in args:
            found.update(re.findall(r"/[\w./-]*?edgecls-bench\.\w+", args))
    return found


def test_an_ssh_measurement_killed_with_9_keeps_the_device_until_its_bench_is_done(
    sshd,  # noqa: F811
    tiny_bundle,
    own_measure_lock,
):
    """The device's bench runs on in its own session: the lock stays held until it ends, then its temp folder goes."""
    from dataclasses import asdict

    settings = LONG  # the bench must still run when the search is killed, however fast this machine is
    device = f"{sshd.user}@{sshd.host}:{sshd.port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", _MEASURE_SSH, str(tiny_bundle), json.dumps(asdict(settings)), device]
    before = _bench_folders()  # another bench on this machine is not ours
    proc = subprocess.Popen([*argv, str(sshd.ssh_config), own_measure_lock], env=env)
    deadline = time.time() + 120
    while not _bench_folders() - before and time.time() < deadline:
        time.sleep(0.05)
    folders = _bench_folders() - before
    assert folders
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    fd = os.open(own_measure_lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the orphaned bench still holds the device
        fcntl.flock(fd, fcntl.LOCK_EX)  # and lets it go once done
    finally:
        os.close(fd)
    assert not any(Path(f).exists() for f in folders)
