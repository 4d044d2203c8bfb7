"""edgecls.runtime.redact: secrets in source strings are never shown, by the function or by a running daemon.

Each form carries its own secret, so a leak names the form. The daemon test runs the forms as real
sources (an MJPEG server for the URL forms, GStreamer pipelines and a refused RTSP camera for the
others) and reads /healthz, /metrics, /latest, the preview page, the log, the process's stderr (FFmpeg
and OpenCV write there), the results file and the MQTT messages of a real broker.
"""

from __future__ import annotations

import html
import json
import logging

import pytest

from edgecls.runtime.sources import redact_uri as redact  # what every surface shows a source through

# Keys whose values are secrets, as seen in camera URLs, signed links and GStreamer properties.
SECRET_KEYS = [
    "password",
    "passwd",
    "pwd",
    "psw",
    "pass",
    "passphrase",
    "secret",
    "client_secret",
    "token",
    "auth",
    "auth_token",
    "access_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "ApiKey",
    "x-api-key",
    "key",
    "signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "sig",
    "credential",
    "session",
    "sessionid",
    "user-pw",
    "user-id",
    "authorization",
]
# Keys that name settings, not secrets: they stay readable.
PLAIN_KEYS = ["ch", "channel", "subtype", "stream", "width", "format", "location", "latency", "user", "fps"]


def forms(port: int = 9) -> dict:
    """name -> (source, its secrets); `port` is where an MJPEG server answers for the URL forms."""
    live = f"127.0.0.1:{port}/stream.mjpg"
    query = "&".join(f"{k}=q{i}-{k}-SECRET" for i, k in enumerate(SECRET_KEYS))
    return {
        "userinfo": (f"http://admin:userinfo-SECRET@{live}", ["userinfo-SECRET"]),
        "leading space": (f"  http://admin:leading-SECRET@{live}", ["leading-SECRET"]),
        "password with @ / :": (f"http://admin:p@ss/w:odd-SECRET@{live}", ["p@ss/w:odd-SECRET"]),
        "bare token": (f"http://baretoken-SECRET@{live}", ["baretoken-SECRET"]),
        "query keys": (f"http://{live}?ch=1&{query}", [f"q{i}-{k}-SECRET" for i, k in enumerate(SECRET_KEYS)]),
        "fragment": (f"http://{live}#access_token=frag-SECRET&token_type=bearer", ["frag-SECRET"]),
        "path parameter": (f"http://{live};password=pathparam-SECRET", ["pathparam-SECRET"]),
        "camera CGI login": (f"http://{live}?loginuse=admin&loginpas=cgi-SECRET", ["cgi-SECRET"]),
        "u and p": (f"http://{live}?u=admin&p=up-SECRET", ["up-SECRET"]),
        "percent-encoded key": (f"http://{live}?pass%77ord=encodedkey-SECRET&ch=1", ["encodedkey-SECRET"]),
        "encoded inner URL": (
            f"http://{live}?next=http%3A%2F%2Fcam%3Fuser%3Dadmin%26password%3Dinner-SECRET%26ch%3D1",
            ["inner-SECRET"],
        ),
        "rtspsrc location": (
            "rtspsrc location=rtsp://admin:rtspsrc-SECRET@127.0.0.1:9/live latency=0 ! decodebin ! videoconvert"
            " ! appsink",
            ["rtspsrc-SECRET"],
        ),
        "quoted location": (
            'rtspsrc location="rtsp://admin:quoted with spaces-SECRET@127.0.0.1:9/live" ! decodebin ! appsink',
            ["quoted with spaces-SECRET"],
        ),
        "user-id user-pw": (
            "rtspsrc location=rtsp://127.0.0.1:9/live user-id=propuser-SECRET user-pw=proppw-SECRET ! decodebin"
            " ! appsink",
            ["propuser-SECRET", "proppw-SECRET"],
        ),
        "typed property": (
            "souphttpsrc location=http://127.0.0.1:9/x.mjpg?api_key=souphttp-SECRET user-pw=(string)typed-SECRET"
            " ! jpegdec ! appsink",
            ["souphttp-SECRET", "typed-SECRET"],
        ),
        "gst:// pipeline": (
            "gst://rtspsrc location=rtsp://admin:gstscheme-SECRET@127.0.0.1:9/live ! decodebin ! appsink",
            ["gstscheme-SECRET"],
        ),
        "extra-headers": (
            'souphttpsrc location=http://127.0.0.1:9/x.mjpg extra-headers="Authorization: Basic aGVhZGVy-SECRET"'
            " ! jpegdec ! appsink",
            ["aGVhZGVy-SECRET"],
        ),
        "typed extra-headers": (
            'souphttpsrc location=http://127.0.0.1:9/x.mjpg extra-headers="h, Authorization=(string)\\"Basic'
            ' dHlwZWQ-SECRET\\"" ! jpegdec ! appsink',
            ["dHlwZWQ-SECRET"],
        ),
        "no scheme": ("rtspsrc location=admin:noscheme-SECRET@127.0.0.1 ! decodebin ! appsink", ["noscheme-SECRET"]),
        "refused rtsp signed": (
            "rtsp://admin:rtsp-SECRET@127.0.0.1:9/live?X-Amz-Credential=amzcred-SECRET&X-Amz-Signature=amzsig-SECRET",
            ["rtsp-SECRET", "amzcred-SECRET", "amzsig-SECRET"],
        ),
    }


LIVE_FORMS = [
    "userinfo",
    "leading space",
    "bare token",
    "query keys",
    "fragment",
    "path parameter",
    "camera CGI login",
    "u and p",
    "percent-encoded key",
    "encoded inner URL",
]  # served by the MJPEG server


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_keys_that_name_secrets_are_recognised(key):
    assert redact(f"http://cam/x?ch=1&{key}=v-SECRET") == f"http://cam/x?ch=1&{key}=***"


@pytest.mark.parametrize("key", PLAIN_KEYS + ["passthrough", "key-int-max"])
def test_keys_that_name_settings_are_not_masked(key):
    assert redact(f"http://cam/x?{key}=42") == f"http://cam/x?{key}=42"


@pytest.mark.parametrize("form", sorted(forms()))
def test_every_secret_form_is_masked_and_the_rest_stays_readable(form):
    source, secrets = forms()[form]
    shown = redact(source)
    assert [s for s in secrets if s in shown] == [], shown
    assert "***" in shown
    assert "127.0.0.1" in shown  # the camera is still named
    assert redact(shown) == shown  # masking twice changes nothing


def test_sources_with_nothing_secret_are_shown_as_given():
    for plain in (
        "0",
        "/dev/video0",
        "csi://0",
        "http://127.0.0.1:8080/stream.mjpg?ch=1&subtype=0",
        "videotestsrc ! video/x-raw,format=BGR,width=64 ! x264enc key-int-max=30 ! appsink",
        "clips/cat@2x.mp4",
    ):
        assert redact(plain) == plain


def test_the_user_name_stays_and_only_the_password_goes():
    assert redact("rtsp://admin:pw@cam/live") == "rtsp://admin:***@cam/live"
    assert redact("rtsp://admin:p@ss/w:rd@cam/live") == "rtsp://admin:***@cam/live"
    assert redact('x location="rtsp://admin:a b@cam/" ! appsink') == 'x location="rtsp://admin:***@cam/" ! appsink'
    assert (
        redact("rtspsrc location=rtsp://cam/ user-pw=a\\ b ! appsink")
        == "rtspsrc location=rtsp://cam/ user-pw=*** ! appsink"
    )


# ---------------------------------------------------------------- every surface of a real daemon


def test_no_secret_form_reaches_any_surface_of_a_running_daemon(tiny_bundle, tmp_path, caplog, capfd):
    pytest.importorskip("cv2")
    from edgecls.runtime.daemon import Daemon
    from edgecls.runtime.daemon.mqtt import MqttSink
    from edgecls.runtime.daemon.sinks import JsonlFileSink
    from edgecls.runtime.daemon.supervisor import Backoff
    from tests.daemon_helpers import http_get, wait_for
    from tests.mjpeg_server import MjpegServer
    from tests.mqtt_helpers import Broker, Subscriber

    camera = MjpegServer(fps=8).start()
    port = int(camera.url.split(":")[2].split("/")[0])
    table = forms(port)
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "lab/#")
    results = tmp_path / "results.jsonl"
    caplog.set_level(logging.DEBUG)
    sinks = [JsonlFileSink(results), MqttSink(f"mqtt://127.0.0.1:{broker.port}/lab", discovery=True)]
    daemon = Daemon(
        tiny_bundle,
        [source for source, _ in table.values()],
        port=0,
        sinks=sinks,
        stall_timeout=2.0,
        backoff=Backoff(0.2, 1.0),
        source_options={"timeout_s": 2.0},
    ).start()
    names = dict(zip(table, (s.name for s in daemon.supervisors)))
    try:
        live = [names[f] for f in LIVE_FORMS]
        wait_for(lambda: all(daemon.latest().get(n) for n in live), 40, "a result from every live form")
        states = lambda: [m[1] for m in subscriber.messages if m[0].endswith("/state")]  # noqa: E731
        wait_for(
            lambda: {json.loads(m).get("source") for m in states()} >= set(live), 20, "MQTT results of every live form"
        )
        dead = [names[f] for f in table if f not in LIVE_FORMS and f != "password with @ / :"]
        wait_for(
            lambda: all(daemon.health()[1]["sources"][n]["reason"] for n in dead), 30, "why each dead source is down"
        )
        surfaces = {path: http_get(daemon.url + path)[1].decode() for path in ("/healthz", "/metrics", "/latest", "/")}
    finally:
        daemon.stop()
        camera.kill()
        subscriber.stop()
        broker.stop()
    surfaces["log"] = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    captured = capfd.readouterr()
    surfaces["stdout+stderr"] = captured.out + captured.err
    surfaces["results file"] = results.read_text()
    surfaces["MQTT"] = "\n".join(f"{topic} {payload}" for topic, payload, _ in subscriber.messages)

    health = json.loads(surfaces["/healthz"])["sources"]
    shown_on = {  # each source must be named where it belongs, or "no secret" would hold vacuously
        "/healthz": lambda n: n in health,
        "/metrics": lambda n: 'source="' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' in surfaces["/metrics"],
        "/": lambda n: html.escape(n) in surfaces["/"],
        "log": lambda n: n in surfaces["log"],
    }
    for surface, named in shown_on.items():
        assert [f for f in table if not named(names[f])] == [], f"sources not named on {surface}"
    for surface in ("/latest", "results file", "MQTT"):
        assert [f for f in LIVE_FORMS if names[f] not in surfaces[surface]] == [], surface

    leaks = [
        (form, surface)
        for form, (_, secrets) in table.items()
        for surface, text in surfaces.items()
        if any(secret in text for secret in secrets)
    ]
    assert leaks == []
    print(f"{len(table)} secret forms ({sum(len(s) for _, s in table.values())} secrets) x {len(surfaces)} surfaces")
