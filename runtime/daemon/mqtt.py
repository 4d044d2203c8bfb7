"""`--mqtt mqtt://[user:pass@]host[:port]/prefix`: results as MQTT events, with paho-mqtt.

Topics (PREFIX from the URL, default `edgecls`; SOURCE is the source's name made topic-safe):
- `PREFIX/availability`: `online` (retained) once connected, `offline` (retained) on a clean stop, and
  the same `offline` as the broker's last will when the daemon dies without saying goodbye;
- `PREFIX/SOURCE/state`: the result JSON when the source's label changes (and every `every` frames);
- with `discovery`, Home Assistant's MQTT discovery: a retained
  `homeassistant/sensor/PREFIX_SOURCE/label/config` per source, so a sensor showing the label (with the
  score and top-k as attributes) appears without configuration.

paho runs its own network thread (`loop_start`) that reconnects with capped backoff; `write` only
queues (bounded: past `MAX_QUEUED` messages waiting for the broker, new ones are dropped and counted),
so a slow or absent broker never blocks classification. `queued` counts the results handed to paho,
`published` those the broker acknowledged (QoS 1/2) or that were sent (QoS 0). A broker that cannot be reached is
logged when it first fails, then at most once a minute.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edgecls.runtime.errors import EdgeclsError, MissingDependencyError

log = logging.getLogger("edgecls.daemon")

MAX_QUEUED = 1000


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        try:
            parts = urlsplit(url)
            parts.hostname, parts.username, parts.password  # noqa: B018  (each may raise ValueError)
        except ValueError as exc:  # "Invalid IPv6 URL": a '[' or ']' in the password, say
            raise EdgeclsError(
                f"--mqtt {redact(url)}: cannot read it as a URL ({exc}): percent-encode the user name's and password's "
                "special characters ([ as %5B, ] as %5D, / as %2F, @ as %40, : as %3A)"
            ) from None
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise EdgeclsError(
                f"--mqtt {redact(url)}: give mqtt://[user:pass@]host[:port]/topic-prefix (mqtts:// for TLS)"
            )
        tail = url[len(parts.scheme) + 3 + len(parts.netloc) :]  # urlsplit would read '#' and '?' as URL parts
        prefix = tail.strip("/") or default_prefix()
        if any(c in prefix for c in "#+?") or "//" in prefix or prefix.startswith("$"):
            raise EdgeclsError(
                f"--mqtt topic prefix {prefix!r}: no wildcards (# +), '?', empty levels or a "
                "leading '$' (brokers reserve $SYS)"
            )
        try:
            port = parts.port if parts.port is not None else (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            port = -1
        if not 0 < port < 65536:
            raise EdgeclsError(f"--mqtt {redact(url)}: the port must be a number between 1 and 65535")
        return cls(
            parts.hostname,
            port,
            prefix,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
            parts.scheme == "mqtts",
        )


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs (the sources' masking: up to the last '@')."""
    from edgecls.runtime.sources import redact_uri

    return redact_uri(url)


def default_prefix() -> str:
    """`edgecls/HOSTNAME`: two devices on one broker must not share topics (nor one's `offline`)."""
    import socket

    return f"edgecls/{re.sub(r'[^A-Za-z0-9_-]+', '_', socket.gethostname()).strip('_') or 'device'}"


def topic_name(source: str) -> str:
    """A source name as one topic level: MQTT wildcards, separators and spaces become '_'; when that changed the
    name, a short hash of the original keeps two sources (`cam/1`, `cam_1`, non-Latin names) apart, stably."""
    import hashlib

    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")
    if clean == source and clean:
        return clean
    return f"{clean[:80] or 'source'}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def _id(text: str) -> str:
    """Home Assistant's discovery ids and topic levels take [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "edgecls"


def _node(prefix: str, source: str) -> str:
    """A source's Home Assistant node id. Where the id had to change a topic level that carries no hash yet
    (`clip.avi` -> `clip_avi`), a short hash of the source keeps it apart from a source named `clip_avi`: one
    retained discovery config would overwrite the other. Ids of names without such characters stay as they were."""
    import hashlib

    level = topic_name(source)
    part = _id(level)
    if part != level and level == source:
        part = f"{part}_{hashlib.sha1(source.encode()).hexdigest()[:8]}"
    return f"{_id(prefix)}_{part}"


class MqttSink:
    """A daemon sink (write/close) publishing label changes and availability to an MQTT broker."""

    close_takes_timeout = True

    def __init__(
        self,
        url: str,
        *,
        qos: int = 1,
        every: int | None = None,
        client_id: str | None = None,
        discovery: bool = False,
        discovery_prefix: str = "homeassistant",
    ):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise MissingDependencyError("paho-mqtt", "runtime", "needed for --mqtt") from exc
        if qos not in (0, 1, 2):
            raise EdgeclsError(f"--mqtt-qos {qos}: MQTT knows QoS 0, 1 and 2")
        if every is not None and every < 1:
            raise EdgeclsError(f"--mqtt-every {every}: give a number of frames, at least 1")
        self._mqtt = mqtt
        self.target = MqttTarget.parse(url)
        self.url = redact(url)
        self.qos, self.every = qos, every
        self.availability = f"{self.target.prefix}/availability"
        self.queued = 0
        self.dropped = 0
        self.published = 0  # acknowledged by the broker (QoS 1/2) or sent (QoS 0): see _on_publish
        self._waiting: set = set()  # message ids of results not yet acknowledged (bounded by paho's queue)
        self._early: dict = {}  # ids acknowledged before publish() returned (or not results): matched after it
        self._connect_failures = 0
        self._warned_at = None
        self._last = {}  # source -> (label, frames since the last publish)
        self.discovery, self.discovery_prefix = discovery, discovery_prefix
        self._announced = set()  # sources whose discovery config went out since the last connect
        self._lock = threading.Lock()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"edgecls-{uuid.uuid4().hex[:12]}"
        )
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        if self.target.tls:
            client.tls_set()
        client.will_set(self.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(MAX_QUEUED)
        client.connect_timeout = 1.0  # a host that drops SYNs must not hold paho's thread (and our stop) for 5 s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(self.target.host, self.target.port, keepalive=15)
        client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if getattr(reason_code, "is_failure", False):
            log.warning("mqtt %s refused the connection: %s", self.url, reason_code)
            return
        log.info("mqtt connected to %s:%d", self.target.host, self.target.port)
        self._connect_failures, self._warned_at = 0, None
        client.publish(self.availability, "online", qos=1, retain=True)
        with self._lock:  # after a reconnect, the next result of every source is published again
            self._last.clear()
            self._announced.clear()

    def _on_connect_fail(self, client, userdata):
        import time

        self._connect_failures += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "mqtt: cannot connect to %s:%d (%d tries so far); results wait in a queue of %d (QoS %d) and it keeps "
                "retrying: check --mqtt's host and port and that the broker runs",
                self.target.host,
                self.target.port,
                self._connect_failures,
                MAX_QUEUED,
                self.qos,
            )

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None):
        with self._lock:
            if mid in self._waiting:
                self._waiting.discard(mid)
                self.published += 1
            else:  # from inside publish() (QoS 0), or availability/discovery: kept a while, bounded
                self._early[mid] = True
                while len(self._early) > 2 * MAX_QUEUED:
                    self._early.pop(next(iter(self._early)))

    def _sent(self, mid: int) -> None:
        with self._lock:
            if self._early.pop(mid, None):
                self.published += 1
            else:
                self._waiting.add(mid)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code != 0:
            log.warning("mqtt connection to %s lost (%s); reconnecting", self.url, reason_code)

    def write(self, result: dict) -> None:
        source = result.get("source", "")
        with self._lock:
            label, count = self._last.get(source, (None, 0))
            count += 1
            due = result.get("top1") != label or (self.every is not None and count >= self.every)
            self._last[source] = (result.get("top1"), 0 if due else count)
        if not due:
            return
        if self.discovery and source not in self._announced:
            self._announce(source)
        info = self._client.publish(
            f"{self.target.prefix}/{topic_name(source)}/state", json.dumps(result), qos=self.qos
        )
        if info.rc == self._mqtt.MQTT_ERR_SUCCESS or (info.rc == self._mqtt.MQTT_ERR_NO_CONN and self.qos > 0):
            self.queued += 1  # sent, or queued by paho until the broker is back (QoS 1/2): `published` once acked
            self._sent(info.mid)
        else:  # the queue is full, or QoS 0 without a connection: drop, never wait
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("mqtt: %d result(s) dropped (broker unreachable or queue full)", self.dropped)

    def _announce(self, source: str) -> None:
        """Home Assistant MQTT discovery for one source: a sensor whose state is the label."""
        node = _node(self.target.prefix, source)
        config = {
            "name": f"edgecls {source}",
            "unique_id": f"edgecls_{node}",
            "object_id": f"edgecls_{node}",
            "state_topic": f"{self.target.prefix}/{topic_name(source)}/state",
            "value_template": "{{ value_json.top1 }}",
            "json_attributes_topic": f"{self.target.prefix}/{topic_name(source)}/state",
            "json_attributes_template": (
                "{{ {'score': value_json.score, 'topk': value_json.topk, 'frame': value_json.frame} | tojson }}"
            ),
            "availability_topic": self.availability,
            "icon": "mdi:cctv",
            "device": {
                "identifiers": [f"edgecls_{_id(self.target.prefix)}"],
                "name": f"edgecls {self.target.prefix}",
                "manufacturer": "edgecls",
            },
        }
        self._client.publish(
            f"{self.discovery_prefix}/sensor/{node}/label/config", json.dumps(config), qos=1, retain=True
        )
        self._announced.add(source)

    def close(self, timeout: float = 0.5) -> None:
        """Say `offline` and disconnect within `timeout` s: the daemon's whole stop has a 2 s budget.

        A broker that does not answer (or a connect that hangs) is left to paho's daemon thread; the last
        will then tells the broker's subscribers once the connection drops.
        """
        import time

        deadline = time.monotonic() + timeout

        def goodbye():
            try:
                if self._client.is_connected():
                    self._client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(
                        max(0.05, min(0.3, deadline - time.monotonic()))
                    )
            except (RuntimeError, ValueError):
                pass
            self._client.disconnect()
            self._client.loop_stop()

        worker = threading.Thread(target=goodbye, name="mqtt-close", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
