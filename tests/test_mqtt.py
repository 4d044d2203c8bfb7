"""The MQTT sink (runtime/daemon/mqtt.py) against a real mosquitto: odd passwords, an absent broker, what counts as
published."""

from __future__ import annotations

import logging

import pytest

from edgecls.runtime.daemon.mqtt import MqttSink, MqttTarget
from edgecls.runtime.errors import EdgeclsError
from tests.conftest import cli_error, run_cli
from tests.daemon_helpers import wait_for
from tests.mqtt_helpers import Broker, _free_port  # noqa: E402


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
