"""A real mosquitto broker on 127.0.0.1 and a real paho-mqtt subscriber, for the MQTT sink's tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

from tests.conftest import require_tool
from tests.daemon_helpers import wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real mosquitto on 127.0.0.1; `extra` adds config lines (e.g. `allow_anonymous false`)."""

    def __init__(self, tmp_path, extra: str = "allow_anonymous true\n"):
        self.binary = require_tool("mosquitto", package="mosquitto")
        self.port = _free_port()
        self.config = tmp_path / f"mosquitto-{self.port}.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n{extra}")
        self.process = None

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._listening, 10, "mosquitto listening")
        return self

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)


class Subscriber:
    """A real paho client recording (topic, payload, retained) of everything on `pattern`."""

    def __init__(self, port: int, pattern: str = "#"):
        self.messages = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"review-sub-{os.getpid()}-{port}")

        def on_connect(client, *_):
            client.subscribe(pattern, qos=1)
            self.connected.set()

        self.client.on_connect = on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)  # back soon after a test restarts the broker
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10)
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, client, userdata, message):
        with self._lock:
            self.messages.append((message.topic, message.payload.decode(errors="replace"), bool(message.retain)))

    def on(self, topic):
        with self._lock:
            return [m for m in self.messages if m[0] == topic]

    def topics(self):
        with self._lock:
            return {m[0] for m in self.messages}

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()
