"""A real Prometheus server (Debian's `prometheus`) on 127.0.0.1 for tests: its own config, storage and free port.

`PrometheusServer(folder, config_text).start()` writes `folder/prometheus.yml` (relative paths in it are read
from `folder`), starts the server with a temporary TSDB in `folder/data` and waits until it is ready; `.query`,
`.query_range`, `.label_values` and `.targets` call its HTTP API (/api/v1/...); `.stop()` ends it. Missing
prometheus skips here and fails under CI (conftest's `require_tool`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import require_tool
from tests.daemon_helpers import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusServer:
    """A prometheus process on 127.0.0.1:`port` whose files all live in `folder`."""

    def __init__(self, folder, config_text: str):
        self.binary = require_tool("prometheus", package="prometheus")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "prometheus.yml"
        self.config.write_text(config_text)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.log = self.folder / "prometheus.log"

    def start(self) -> PrometheusServer:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                ],
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(self._ready, 60, f"prometheus ready on {self.url}")
        except AssertionError:
            self.stop()
            raise AssertionError("prometheus did not start: " + self.log.read_text()[-2000:]) from None
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("prometheus exited: " + self.log.read_text()[-2000:])
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict:
        """The `data` of a GET /api/v1/PATH?params; a failed query raises with Prometheus's error text."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list:
        """The instant vector (or scalar) `expr` evaluates to now (or at `at`)."""
        return self.api("query", query=expr, **({"time": at} if at is not None else {}))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def label_values(self, label: str, match: str) -> list:
        return self.api(f"label/{label}/values", **{"match[]": match})

    def targets(self) -> list:
        """The active scrape targets, each with its labels, health and last error."""
        return self.api("targets", state="active")["activeTargets"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# The fleet the dashboard tests and benchmarks/fleet_dashboard.py scrape: each device its own `edgecls run`
# daemon with its own camera stand-ins (video files played as live cameras), artifact and pace, so the panels
# differ per device. (name, sources as NAME=PATTERN of write_test_video or NAME=PATH of a clip, artifact, fps)
FLEET = (
    ("door", ("door=circle",), "tflite-int8", 10),
    ("yard", ("yard=circle", "gate=ramp"), "onnx-int8", 6),
    ("shed", ("shed=ramp",), "tflite-fp32", 8),
)


class ScrapedFleet:
    """Real `edgecls run` daemons (FLEET) and a real Prometheus that finds them through the service-discovery
    file `edgecls fleet prometheus-targets` writes from a fleet file, with devices/prometheus/prometheus.yml's
    job and rules (scraped every `scrape_s` instead of 15 s)."""

    def __init__(self, folder, bundle, scrape_s: float = 1.0, fleet=FLEET):
        self.folder, self.bundle, self.scrape_s, self.fleet = Path(folder), bundle, scrape_s, fleet
        self.daemons: list = []
        self.urls: dict = {}  # device name -> its daemon's http://HOST:PORT (/latest, /metrics)
        self.prometheus = None
        self.names = [name for name, *_ in fleet]

    def start(self) -> ScrapedFleet:
        from tests.conftest import REPO, run_cli
        from tests.daemon_helpers import start_cli_daemon, write_test_video

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            lines = []
            for name, sources, artifact, fps in self.fleet:
                clips = []
                for source in sources:
                    label, pattern = source.split("=", 1)
                    clip = Path(pattern)  # a clip of the caller's, or a pattern of write_test_video
                    if not clip.is_file():
                        clip = write_test_video(self.folder / f"{name}-{label}.avi", frames=25, pattern=pattern)
                    clips.append(f"{label}={clip}")
                more = [w for clip in clips[1:] for w in ("--source", clip)]
                options = ("--artifact", artifact, "--fps", fps, "--drift-window", 20, *more)
                process, url, _ = start_cli_daemon(self.bundle, clips[0], *options)
                self.daemons.append(process)
                self.urls[name] = url
                lines.append(f"{self.folder / 'devices' / name} name={name} metrics={url}")
            fleet_file = self.folder / "fleet.txt"
            fleet_file.write_text("# the test fleet: one daemon per device\n" + "\n".join(lines) + "\n")
            example = (REPO / "devices" / "prometheus" / "prometheus.yml").read_text()
            config = example.replace("interval: 15s", f"interval: {self.scrape_s:g}s")
            assert config.count(f"interval: {self.scrape_s:g}s") == 2, "the example's intervals moved"
            self.prometheus = PrometheusServer(self.folder / "prometheus", config)
            targets = self.prometheus.folder / "edgecls-targets.json"  # where the example's file_sd job looks
            done = run_cli("fleet", "prometheus-targets", fleet_file, "--out", targets)
            assert done.returncode == 0, done.stderr
            rules = REPO / "devices" / "prometheus" / "edgecls-rules.yml"
            (self.prometheus.folder / rules.name).write_text(rules.read_text())
            self.prometheus.start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_samples(self, seconds: float, timeout: float = 120) -> None:
        """Until Prometheus holds `seconds` worth of scrapes of every device (and every daemon is still up)."""
        need = int(seconds / self.scrape_s)
        expr = f"min by (device) (count_over_time(edgecls_fps[{int(seconds) + 10}s]))"

        def enough():
            for process in self.daemons:
                assert process.poll() is None, "a daemon of the fleet exited"
            counts = {r["metric"]["device"]: float(r["value"][1]) for r in self.prometheus.query(expr)}
            return set(counts) == set(self.names) and min(counts.values()) >= need

        wait_for(enough, timeout, f"{seconds}s of scrapes of {', '.join(self.names)}")

    def poll_results(self, seconds: float) -> dict:
        """{device: {source: {ts: score}}}: every result each daemon's /latest showed, polled for `seconds` (far
        faster than the fleet's paces, so each published result is seen)."""
        import time

        seen: dict = {name: {} for name in self.names}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, url in self.urls.items():
                with urllib.request.urlopen(url + "/latest", timeout=5) as response:
                    latest = json.load(response)
                for source, result in latest.items():
                    if result:
                        seen[name].setdefault(source, {})[result["ts"]] = result["score"]
            time.sleep(0.02)
        return seen

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for process in self.daemons:
            process.terminate()
        for process in self.daemons:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
