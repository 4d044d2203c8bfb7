"""runtime/daemon/mqtt.py (the MQTT sink) against a real mosquitto: URLs, passwords, topics, a hung broker."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgecls.runtime.daemon.mqtt import MqttSink, MqttTarget
from edgecls.runtime.errors import EdgeclsError
from tests.conftest import cli_error, run_cli
from tests.daemon_helpers import wait_for, write_test_video
from tests.mqtt_helpers import Broker, Subscriber, _free_port  # noqa: E402


def test_a_password_with_a_bracket_is_one_line_naming_percent_encoding_and_the_encoded_form_works(tmp_path):
    with pytest.raises(EdgeclsError, match=r"percent-encode .*\[ as %5B") as err:
        MqttTarget.parse("mqtt://user:pa[ss-SECRET@127.0.0.1:18830/x")
    assert "ss-SECRET" not in str(err.value)
    assert MqttTarget.parse("mqtt://user:pa%5Bss@127.0.0.1:18830/x").password == "pa[ss"
    done = run_cli("run", tmp_path, "--source", tmp_path, "--mqtt", "mqtt://user:pa[ss-SECRET@127.0.0.1:18830/x")
    assert "%5B" in cli_error(done) and "ss-SECRET" not in done.stderr


def test_a_broker_unreachable_from_the_start_is_logged_once_naming_host_and_port(caplog):
    port = _free_port()  # nothing listens there
    caplog.set_level(logging.INFO, logger="edgecls.daemon")
    sink = MqttSink(f"mqtt://user:pw-SECRET@127.0.0.1:{port}/lab", qos=1)
    try:
        wait_for(lambda: any("cannot connect" in r.getMessage() for r in caplog.records), 10, "a warning")
    finally:
        sink.close()
    warnings = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert f"127.0.0.1:{port}" in warnings[0].getMessage()
    assert not [r for r in caplog.records if "pw-SECRET" in r.getMessage()]


def test_results_count_as_published_only_once_the_broker_acknowledged_them(tmp_path):
    broker = Broker(tmp_path)  # not started yet: QoS 1 results wait in paho's queue
    sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/lab", qos=1)
    try:
        for i in range(5):
            sink.write({"source": "cam", "top1": f"label-{i}", "score": 0.9})
        assert (sink.queued, sink.published) == (5, 0)
        broker.start()
        wait_for(lambda: sink.published == 5, 40, "the 5 results acknowledged once the broker is up")
    finally:
        sink.close()
        broker.stop()


# Home Assistant's discovery topic matcher (homeassistant/components/mqtt/discovery.py, TOPIC_MATCHER): a config
# published on any other topic is dropped ("Received message on illegal discovery topic"), so no sensor appears.
HA_TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)


def _result(source, label, frame=0):
    return {
        "source": source,
        "ts": time.time(),
        "frame": frame,
        "top1": label,
        "score": 0.9,
        "topk": [{"label": label, "score": 0.9}],
    }


def _online(sub, topic):
    return lambda: sub.on(topic) and sub.on(topic)[-1][1] == "online"


# ---------------------------------------------------------------- stop budget (SIGTERM must exit within 2 s)


def test_sigterm_within_2s_when_the_broker_stops_answering(tiny_bundle, tmp_path):
    """A broker that is connected but no longer answers (overloaded, SIGSTOPped, a half-open link): close() waits
    up to 2.0 s for the PUBACK of `offline` on top of everything the daemon already spent stopping, so SIGTERM takes
    more than the daemon's 2 s budget."""
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port, "lab/#")
    video = write_test_video(tmp_path / "clip.avi", frames=20)
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
            f"mqtt://127.0.0.1:{broker.port}/lab",
            "--results",
            str(tmp_path / "r.jsonl"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: any(t.endswith("/state") for t in sub.topics()), 60, "a state message")
        broker.process.send_signal(signal.SIGSTOP)  # connected, but nothing answers any more
        time.sleep(0.3)
        daemon.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = daemon.wait(15)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
        broker.stop()
        sub.stop()
    print(f"SIGTERM to exit with a silent broker: {took:.2f} s")
    assert code == 0 and took < 2.0, f"SIGTERM took {took:.2f} s (budget 2 s)"


def test_close_is_fast_while_the_tcp_connect_hangs(tmp_path):
    """Broker host that drops SYNs (firewalled, powered off on another subnet): paho's network thread sits in
    socket.create_connection (connect_timeout 5 s) and close() -> loop_stop() joins it without a timeout, so the
    daemon's stop hangs for up to 5 s. Simulated with a listening socket whose accept queue is full."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the accept queue is now full: further SYNs are dropped
    probe = socket.socket()
    probe.settimeout(0.5)
    with pytest.raises(OSError):
        probe.connect(("127.0.0.1", port))  # the precondition: a connect here hangs
    probe.close()
    try:
        sink = MqttSink(f"mqtt://127.0.0.1:{port}/lab", qos=1)
        time.sleep(0.5)  # the network thread is now inside connect()
        started = time.monotonic()
        for i in range(5):
            sink.write(_result("cam", f"l{i}"))
        assert time.monotonic() - started < 0.1, "write() blocked"
        started = time.monotonic()
        sink.close()
        took = time.monotonic() - started
    finally:
        filler.close()
        blackhole.close()
    assert took < 1.0, f"MqttSink.close() took {took:.2f} s with an unreachable broker (the daemon's budget is 2 s)"


# ---------------------------------------------------------------- the password never shows


def test_password_with_a_slash_is_not_in_the_error():
    """`redact` only masks a password free of '/' and '@'; urlsplit then fails on the port and the error message
    echoes the URL with the password in clear."""
    with pytest.raises(EdgeclsError) as err:
        MqttTarget.parse("mqtt://user:Sec/retPW@127.0.0.1/lab")
    assert "retPW" not in str(err.value) and "Sec/" not in str(err.value), str(err.value)


def test_password_with_an_at_sign_is_not_logged_when_refused(tmp_path, caplog):
    """Password 'pre@SECRETTAIL' (urlsplit takes the last '@' as the separator, so it is accepted): when the broker
    refuses the login, the warning logs `self.url`, whose regex stopped at the first '@' and left 'SECRETTAIL' in
    clear."""
    broker = Broker(tmp_path, "allow_anonymous false\n").start()  # no password file: every login is refused
    caplog.set_level(logging.DEBUG)
    try:
        sink = MqttSink(f"mqtt://user:pre@SECRETTAIL@127.0.0.1:{broker.port}/lab", qos=1)
        wait_for(lambda: any("refused" in r.getMessage() for r in caplog.records), 15, "the refusal logged")
        sink.close()
    finally:
        broker.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRETTAIL" not in text and "SECRETTAIL" not in sink.url, text


# ---------------------------------------------------------------- URL parsing


def test_port_zero_is_rejected_not_turned_into_1883():
    """`parts.port or 1883`: an explicit :0 (a typo, or a template left unfilled) silently becomes 1883."""
    with pytest.raises(EdgeclsError):
        MqttTarget.parse("mqtt://127.0.0.1:0/lab")


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1/lab/#", "mqtt://127.0.0.1/lab#x", "mqtt://127.0.0.1/lab?x"])
def test_wildcard_or_query_in_the_prefix_is_rejected(url):
    """urlsplit reads '#' as a fragment and '?' as a query, so `mqtt://host/lab/#` silently becomes prefix 'lab'
    and the "no wildcards" check on the prefix can never fire."""
    with pytest.raises(EdgeclsError):
        print(MqttTarget.parse(url))


# ---------------------------------------------------------------- topics and Home Assistant discovery


def test_distinct_sources_get_distinct_topics(tmp_path):
    """topic_name() maps different sources to one topic level (non-ASCII names all collapse, '/' and '_' merge):
    their state messages interleave on one topic and their discovery configs overwrite each other (one sensor)."""
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    pairs = [("/cams/кухня.mp4", "/cams/гараж.mp4"), ("cam/1", "cam_1")]
    try:
        sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/lab", qos=1, discovery=True)
        wait_for(_online(sub, "lab/availability"), 10, "online")
        sources = [s for pair in pairs for s in pair]
        for source in sources:
            sink.write(_result(source, "circle"))
        wait_for(
            lambda: sum(1 for t, p, _ in sub.messages if t.endswith("/state")) >= len(sources),
            10,
            "every state message",
        )
        sink.close()
    finally:
        sub.stop()
        broker.stop()
    by_topic = {}
    for topic, payload, _ in sub.messages:
        if topic.endswith("/state"):
            by_topic.setdefault(topic, set()).add(json.loads(payload)["source"])
    assert all(len(names) == 1 for names in by_topic.values()), by_topic
    configs = {t for t, _, _ in sub.messages if t.startswith("homeassistant/")}
    assert len(configs) == len(sources), configs


def test_discovery_topic_is_one_home_assistant_accepts(tmp_path):
    """The discovery node id keeps '.', which HA's TOPIC_MATCHER ([a-zA-Z0-9_-]) rejects: for a video file
    (clip.avi) or any IP camera (rtsp://192.168.1.20/...) the config is dropped and no sensor ever appears."""
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    sources = ["/videos/clip.avi", "rtsp://admin:***@192.168.1.20/live"]
    try:
        sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/lab", qos=1, discovery=True)
        wait_for(_online(sub, "lab/availability"), 10, "online")
        for source in sources:
            sink.write(_result(source, "circle"))
        wait_for(lambda: len([t for t in sub.topics() if t.startswith("homeassistant/")]) >= 2, 10, "2 configs")
        sink.close()
    finally:
        sub.stop()
        broker.stop()
    for topic in (t for t in sub.topics() if t.startswith("homeassistant/")):
        match = HA_TOPIC_MATCHER.fullmatch(topic[len("homeassistant/") :])
        assert match, f"Home Assistant ignores discovery topic {topic!r}"


def test_a_source_named_like_another_with_a_dot_gets_its_own_home_assistant_sensor(tmp_path):
    """`--source clip_avi=...` beside an unnamed `clip.avi`: Home Assistant ids take no '.', and mapping it to '_'
    gave both one node, so one retained discovery config overwrote the other. A plain name keeps its old id."""
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    sources = ["clip_avi", "clip.avi", "door"]
    try:
        sink = MqttSink(f"mqtt://127.0.0.1:{broker.port}/lab", qos=1, discovery=True)
        wait_for(_online(sub, "lab/availability"), 10, "online")
        for source in sources:
            sink.write(_result(source, "circle"))
        wait_for(lambda: len([t for t in sub.topics() if t.startswith("homeassistant/")]) >= 3, 10, "3 configs")
        sink.close()
    finally:
        sub.stop()
        broker.stop()
    configs = {json.loads(p)["name"]: t for t, p, _ in sub.messages if t.startswith("homeassistant/")}
    assert sorted(configs) == ["edgecls clip.avi", "edgecls clip_avi", "edgecls door"], configs
    assert len(set(configs.values())) == 3, configs
    assert configs["edgecls door"] == "homeassistant/sensor/lab_door/label/config"
    assert configs["edgecls clip_avi"] == "homeassistant/sensor/lab_clip_avi/label/config"
    assert all(HA_TOPIC_MATCHER.fullmatch(t[len("homeassistant/") :]) for t in configs.values()), configs


# ---------------------------------------------------------------- availability


def test_default_prefix_is_per_device():
    """Every daemon given `mqtt://broker` (no prefix) shares `edgecls/availability` and `edgecls/SOURCE/state`:
    two cameras both reading /dev/video0 publish on one topic, and the first daemon to stop marks the other (and all
    its Home Assistant sensors, which share that availability topic and the device id `edgecls_edgecls`) offline."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname())
    assert host in MqttTarget.parse("mqtt://127.0.0.1").prefix
