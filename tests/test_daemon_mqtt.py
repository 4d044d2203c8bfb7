"""runtime/daemon/mqtt.py in a real `edgecls run`, against a real mosquitto broker and a paho subscriber."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tests.conftest import run_cli
from tests.daemon_helpers import wait_for, write_test_video
from tests.mqtt_helpers import Broker, Subscriber  # noqa: E402


def test_mqtt_availability_label_changes_broker_restart_and_last_will(tiny_bundle, tmp_path):
    broker = Broker(tmp_path).start()
    port = broker.port
    subscriber = Subscriber(port, "lab/#")
    video = write_test_video(tmp_path / "clip.avi", frames=40)
    results = tmp_path / "results.jsonl"
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls.cli",
            "run",
            str(tiny_bundle),
            "--source",
            str(video),
            "--loop",
            "--mqtt",
            f"mqtt://127.0.0.1:{port}/lab",
            "--mqtt-every",
            "10",
            "--results",
            str(results),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: (
                ("lab/availability", "online", False) in subscriber.messages
                or ("lab/availability", "online", True) in subscriber.messages
            ),
            30,
            "availability online",
        )
        wait_for(lambda: any(t.endswith("/state") for t, _, _ in subscriber.messages), 30, "a state message")
        topic = next(t for t, _, _ in subscriber.messages if t.endswith("/state"))
        assert topic.startswith("lab/") and "/" not in topic[len("lab/") : -len("/state")], topic  # one topic level
        first = [json.loads(p) for t, p, _ in subscriber.messages if t == topic]
        assert {"source", "frame", "top1", "score", "topk"} <= set(first[0])
        assert first[0]["source"] == str(video)

        # The broker goes away for 3 s: classification goes on, then the daemon reconnects and publishes again.
        broker.stop()
        lines_before = results.read_text().count("\n")
        time.sleep(3)
        assert results.read_text().count("\n") > lines_before + 10, "classification stalled without the broker"
        assert daemon.poll() is None
        count_before = len(subscriber.on(topic))
        broker.start()
        wait_for(lambda: len(subscriber.on(topic)) > count_before, 40, "state messages after the broker restart")
        wait_for(lambda: subscriber.on("lab/availability")[-1][1] == "online", 10, "online again after reconnect")

        # SIGKILL: no goodbye, so the broker publishes the last will.
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        wait_for(lambda: subscriber.on("lab/availability")[-1][1] == "offline", 30, "the last will (offline)")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        subscriber.stop()
        broker.stop()


def test_clean_stop_says_offline_and_a_bad_url_is_one_line(tiny_bundle, tmp_path):
    broker = Broker(tmp_path).start()
    port = broker.port
    subscriber = Subscriber(port, "#")
    try:
        time.sleep(0.5)
        video = write_test_video(tmp_path / "clip.avi", frames=20)
        done = run_cli(
            "--debug",
            "run",
            str(tiny_bundle),
            "--source",
            str(video),
            "--mqtt",
            f"mqtt://user:s3cret-pw@127.0.0.1:{port}",
            "--mqtt-discovery",
            "--results",
            str(tmp_path / "r.jsonl"),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "s3cret-pw" not in done.stderr  # not even in debug logs
        # Home Assistant discovery: one retained sensor config per source, pointing at its state topic.
        configs = [(t, json.loads(p)) for t, p, _ in subscriber.messages if t.startswith("homeassistant/sensor/")]
        assert len(configs) == 1 and configs[0][0].endswith("/label/config")
        config = configs[0][1]
        from edgecls.runtime.daemon.mqtt import default_prefix

        prefix = default_prefix()  # edgecls/HOSTNAME when the URL names none
        assert (
            config["state_topic"].startswith(prefix + "/") and config["availability_topic"] == f"{prefix}/availability"
        )
        assert config["value_template"] == "{{ value_json.top1 }}"
        assert any(t == config["state_topic"] for t, _, _ in subscriber.messages)
        wait_for(
            lambda: (
                subscriber.on(f"{prefix}/availability") and subscriber.on(f"{prefix}/availability")[-1][1] == "offline"
            ),
            10,
            "offline on a clean stop",
        )
        assert any(p == "online" for _, p, _ in subscriber.on(f"{prefix}/availability"))
    finally:
        subscriber.stop()
        broker.stop()
    bad = run_cli("run", str(tiny_bundle), "--source", str(video), "--mqtt", "http://user:s3cret-pw@host/x", timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: --mqtt")
    assert "s3cret-pw" not in bad.stderr and "Traceback" not in bad.stderr
