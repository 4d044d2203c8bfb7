"""runtime/daemon/notify.py and `edgecls service unit`: the unit, sd_notify on a real socket, --config."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edgecls.runtime.daemon import Daemon
from edgecls.runtime.daemon.notify import SystemdNotifier, notify, watchdog_interval
from edgecls.runtime.daemon.supervisor import Backoff
from tests.conftest import cli_error, require_tool, run_cli
from tests.daemon_helpers import wait_for, write_test_video
from tests.mjpeg_server import MjpegServer


class NotifySocket:
    """A real AF_UNIX datagram socket, as systemd binds it; records (time, fields) per datagram."""

    def __init__(self, abstract: bool = False):
        self._dir = tempfile.mkdtemp(prefix="ntf", dir="/tmp")  # AF_UNIX paths must stay under 108 bytes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"edgecls-test-{Path(self._dir).name}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = str(Path(self._dir) / "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.1)
        self.messages = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key):
        return [t for t, fields in list(self.messages) if fields.get(key) == "1"]

    def close(self):
        self._stop.set()
        self._thread.join(1)
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("daemon-systemd") / "clip.avi", pattern="ramp")


def test_generated_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_tool("systemd-analyze", package="systemd")
    executable = shutil.which("edgecls") or sys.executable
    done = run_cli("service", "unit", "--exec", executable, "--config", "/etc/edgecls/run.toml", "--watchdog-sec", "20")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "edgecls.service"
    unit.write_text(done.stdout)
    directives = [l for l in done.stdout.splitlines() if l and not l.startswith("#")]
    for wanted in (
        "Type=notify",
        "WatchdogSec=20",
        "Restart=on-failure",
        "DynamicUser=yes",
        "SupplementaryGroups=video",
        "DeviceAllow=char-video4linux rw",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/edgecls",
        f"ExecStart={executable} run --config /etc/edgecls/run.toml",
    ):
        assert wanted in directives, wanted
    assert [l for l in directives if l.startswith("ReadWritePaths=")] == ["ReadWritePaths=/var/lib/edgecls"]
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values: it only warns, so any line about our unit fails too.
    complaints = [l for l in (verify.stdout + verify.stderr).splitlines() if "edgecls.service" in l]
    assert verify.returncode == 0 and complaints == [], verify.stdout + verify.stderr


def test_the_unit_runs_the_edgecls_that_printed_it_not_the_one_on_path():
    """`.venv/bin/edgecls service unit` without the venv activated (or from a minimal PATH, as under sudo): ExecStart is
    that venv's edgecls, not whatever PATH finds (a pyenv shim) or /usr/local/bin/edgecls (absent)."""
    edgecls = Path(sys.executable).with_name("edgecls")
    assert edgecls.is_file(), f"the suite runs from an install with no {edgecls}"
    done = subprocess.run(
        [str(edgecls), "service", "unit", "--no-hint"],
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"ExecStart={edgecls} run --config /etc/edgecls/run.toml" in done.stdout.splitlines()


def test_an_edgecls_under_home_gets_a_warning_that_protecthome_hides_it():
    done = run_cli("service", "unit", "--no-hint", "--exec", "/home/pi/edgecls/.venv/bin/edgecls")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "ProtectHome" in warnings[0] and "--exec" in warnings[0], done.stderr
    assert "ExecStart=/home/pi/edgecls/.venv/bin/edgecls run" in done.stdout
    assert "WARNING" not in run_cli("service", "unit", "--no-hint", "--exec", "/opt/edgecls/bin/edgecls").stderr


def test_unit_refuses_root_and_relative_paths():
    assert "not root" in cli_error(run_cli("service", "unit", "--user", "root"))
    assert "absolute path" in cli_error(run_cli("service", "unit", "--config", "run.toml"))


def test_notify_reaches_an_abstract_socket_and_reads_the_watchdog_interval(monkeypatch):
    receiver = NotifySocket(abstract=True)
    try:
        assert notify("STATUS=hello", receiver.address)
        wait_for(lambda: receiver.messages, 2, "the datagram")
        assert receiver.messages[0][1] == {"STATUS": "hello"}
    finally:
        receiver.close()
    assert not notify("READY=1", "")  # outside systemd: nothing to do, no error
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}) is None  # meant for another process


def test_ready_then_watchdog_only_while_frames_flow(tiny_bundle, monkeypatch):
    receiver = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s while frames flow
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    server = MjpegServer(fps=25).start()
    port = int(server.url.split(":")[2].split("/")[0])
    daemon = Daemon(tiny_bundle, [server.url], stall_timeout=1.0, backoff=Backoff(0.2, 0.5), sinks=[])
    daemon.start()
    try:
        wait_for(lambda: receiver.times("READY"), 30, "READY=1")
        wait_for(lambda: len(receiver.times("WATCHDOG")) >= 3, 15, "watchdog pings while frames flow")
        assert len(receiver.times("READY")) == 1 and receiver.times("READY")[0] < receiver.times("WATCHDOG")[0]

        server.kill()  # the only source goes down: systemd must stop hearing from us
        wait_for(lambda: daemon.supervisors[0].state != "running", 15, "the source to go down")
        down = time.monotonic()
        time.sleep(3.0)
        # A ping may still be due (0.3 s interval, 0.2 s tick) for the last frames classified as the source went
        # down, later on a loaded machine; from then on 2 s of silence, where a daemon that kept pinging sends ~6.
        quiet_from = down + 1.0
        during = [t for t in receiver.times("WATCHDOG") if t > quiet_from]
        assert during == [], f"{len(during)} WATCHDOG=1 while the only source was down"

        server = MjpegServer(port=port, fps=25).start()
        back = time.monotonic()
        wait_for(lambda: [t for t in receiver.times("WATCHDOG") if t > back], 30, "pings once frames flow again")
    finally:
        daemon.stop()
        server.kill()
        time.sleep(0.2)
        receiver.close()
    assert receiver.times("STOPPING") and len(receiver.times("READY")) == 1
    assert "sources running" in receiver.messages[0][1]["STATUS"]


def test_options_come_from_a_toml_config_and_env_overrides_it(tiny_bundle, video, tmp_path):
    results = tmp_path / "results.jsonl"
    config = tmp_path / "run.toml"
    config.write_text(
        f'bundle = "{tiny_bundle}"\nsource = ["{video}"]\nevery-frame = true\nmax_frames = 4\n'
        f'results = "{results}"\nsmooth = 2\n'
    )
    done = run_cli("run", "--config", config, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(l)["frame"] for l in results.read_text().splitlines()] == [0, 1, 2, 3]

    results.unlink()
    done = run_cli("run", "--config", config, env={"EDGECLS_RUN_MAX_FRAMES": "2"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(results.read_text().splitlines()) == 2  # the environment beats the file...
    results.unlink()
    done = run_cli("run", "--config", config, "--max-frames", "1", env={"EDGECLS_RUN_MAX_FRAMES": "2"}, timeout=120)
    assert done.returncode == 0 and len(results.read_text().splitlines()) == 1  # ...and the command line both

    bad = tmp_path / "bad.toml"
    bad.write_text('bundle = "x"\nstall-timeot = 3\n')
    assert "unknown option(s) stall-timeot" in cli_error(run_cli("run", "--config", bad))
    assert "no bundle to run" in cli_error(run_cli("run", "--source", video))


def test_under_systemd_a_camera_not_there_yet_is_waited_for_and_the_unit_restarts_a_failed_daemon(
    tiny_bundle, tmp_path
):
    """As a Type=notify service (NOTIFY_SOCKET set) the daemon waits for a camera that is not there yet
    (--wait-for-sources is the service's default) instead of exiting; --no-wait-for-sources exits 1 naming the fix,
    and the unit restarts a daemon that exits non-zero."""
    missing = next(str(n) for n in range(64) if not Path(f"/dev/video{n}").exists())
    receiver = NotifySocket()
    try:
        env = {"NOTIFY_SOCKET": receiver.address}
        waited = run_cli("run", tiny_bundle, "--source", missing, "--port", "0", "--duration", "3", env=env, timeout=60)
        assert waited.returncode == 0 and "reconnecting" in waited.stderr, waited.stderr[-2000:]
        refused = run_cli("run", tiny_bundle, "--source", missing, "--port", "0", "--no-wait-for-sources", env=env)
        assert cli_error(refused).startswith(f"error: cannot open source {missing}: ")
    finally:
        receiver.close()
    assert "Restart=on-failure" in run_cli("service", "unit").stdout


def test_notifier_outside_systemd_stays_silent_even_if_the_socket_appears_later(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier(lambda: 0)
    assert notifier.socket_path == ""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)  # decided at construction: not ours to pick up now
        assert notifier.send("READY=1") is False
        with pytest.raises(BlockingIOError):
            listener.recv(64)
        assert SystemdNotifier(lambda: 0).send("READY=1") is True  # the same socket does work
        assert listener.recv(64) == b"READY=1"


def test_notifier_thread_never_keeps_the_process_alive():
    notifier = SystemdNotifier(lambda: 0, socket_path="")
    assert notifier._thread.daemon  # a daemon that forgets stop() must still exit


REPO = Path(__file__).resolve().parents[1]
# A link into our README as the code writes it: the project page or README.md, then #anchor.
README_LINK = re.compile(r"(?:github\.com/edgecls/edgecls/?|README\.md)#([\w-]+)")


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, every character but letters, digits, '_', '-' and spaces dropped,
    spaces made '-' (duplicates get -1, -2, …: see readme_anchors)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_anchors(text: str) -> set:
    """The anchors GitHub gives the README's headings (markdown-it finds them: a `#` line in a code block is none)."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").parse(text)
    seen, anchors = {}, set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open":
            words = "".join(t.content for t in inline.children if t.type in ("text", "code_inline"))
            slug = github_slug(words)
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_github_slug_follows_githubs_rules():
    assert github_slug("Running as a service") == "running-as-a-service"
    assert github_slug("As a daemon: several cameras, HTTP status, Prometheus") == (
        "as-a-daemon-several-cameras-http-status-prometheus"
    )
    assert github_slug("The full loop: watch drift → capture → label") == "the-full-loop-watch-drift--capture--label"
    assert readme_anchors("# A\n\n```\n# not a heading\n```\n\n## A\n\n### `edgecls run`\n") == {
        "a",
        "a-1",
        "edgecls-run",
    }


def test_every_readme_anchor_the_code_prints_is_a_readme_heading():
    anchors = readme_anchors((REPO / "README.md").read_text(encoding="utf-8"))
    printed = {}
    sources = [Path(d, f) for d, _, files in os.walk(REPO / "edgecls", followlinks=True) for f in files]
    for source in sorted(s for s in sources if s.suffix == ".py"):  # runtime/, devices/, converters/ are links
        for anchor in README_LINK.findall(source.read_text(encoding="utf-8")):
            printed.setdefault(anchor, source.relative_to(REPO))
    unit = run_cli("service", "unit", "--no-hint").stdout
    assert "Documentation=https://github.com/edgecls/edgecls#running-as-a-service" in unit
    assert "running-as-a-service" in printed  # the scan sees the unit's link (else it could find nothing)
    missing = {anchor: str(where) for anchor, where in printed.items() if anchor not in anchors}
    assert not missing, f"anchors the code prints with no README heading: {missing}"
