"""devices/prometheus alert rules: `promtool check rules` and their unit tests pass; only exported metrics named."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import REPO, require_tool

RULES = REPO / "devices" / "prometheus" / "edgecls-rules.yml"
RULE_TESTS = RULES.with_name("edgecls-rules.test.yml")


def promtool(*args) -> str:
    done = subprocess.run(
        [require_tool("promtool", package="prometheus"), *map(str, args)],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_check_rules_passes_on_the_shipped_rules():
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", RULES.name)


def test_the_rules_fire_when_they_should_under_promtool_test_rules():
    assert "SUCCESS" in promtool("test", "rules", RULE_TESTS.name)


def test_the_rules_use_only_metrics_the_daemon_exports(tiny_bundle, tmp_path):
    pytest.importorskip("cv2")
    from prometheus_client.parser import text_string_to_metric_families

    from edgecls.runtime.daemon import Daemon
    from tests.daemon_helpers import ListSink, http_get, wait_for, write_test_video

    video = str(write_test_video(tmp_path / "clip.avi", frames=20))
    sink = ListSink()
    daemon = Daemon(tiny_bundle, [video], port=0, sinks=[sink], drift_window=20, source_options={"loop": True})
    exported = set()

    def scenario(d):
        wait_for(lambda: len(sink.results) > 40, 30, "a full drift window")
        body = http_get(d.url + "/metrics")[1].decode()
        exported.update(s.name for f in text_string_to_metric_families(body) for s in f.samples)
        d.request_stop()

    daemon.run(on_start=scenario)
    yaml = pytest.importorskip("yaml")
    exprs = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bedgecls_[a-z_]+\b", expr)}
    assert used and used <= exported, used - exported
    assert {"edgecls_drift_score", "edgecls_drift_degraded", "edgecls_drift_window_frames"} <= exported


def test_the_moderate_drift_alert_does_not_fire_while_the_source_is_degraded(tmp_path):
    """EdgeclsDriftModerate (max score > 0.1 for 6h, 'not yet degraded') also fires during a major drift (> 0.25),
    beside EdgeclsDrift, with a description that contradicts it. It needs `unless on(...) edgecls_drift_degraded == 1`
    (or an upper bound)."""
    promtool = require_tool("promtool", package="prometheus")
    rules = REPO / "devices" / "prometheus" / "edgecls-rules.yml"
    labels = 'job="edgecls", instance="pi:8080", source="door"'
    (tmp_path / "t.yml").write_text(f"""rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'edgecls_drift_degraded{{{labels}}}'
        values: '1x500'
      - series: 'edgecls_drift_score{{{labels}, statistic="brightness"}}'
        values: '2x500'
    alert_rule_test:
      - eval_time: 420m
        alertname: EdgeclsDriftModerate
        exp_alerts: []
""")
    done = subprocess.run(
        [promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _rule(alert: str) -> dict:
    yaml = pytest.importorskip("yaml")
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    return next(rule for rule in rules if rule["alert"] == alert)


# Each alert, the series that make it fire on a fleet target (labelled device= by prometheus-targets), when, and
# its summary: the device named (not its address), the source where the alert is about one.
FLEET_CASES = [
    ("EdgeclsDaemonDown", [("up", "", "1 0x5")], "4m", False, "edgecls daemon door does not answer /metrics"),
    ("EdgeclsSourceDown", [("edgecls_source_up", "S", "0x5")], "4m", True, "camera gate on door delivers no frames"),
    (
        "EdgeclsNoFrames",
        [("edgecls_source_up", "S", "1x15"), ("edgecls_frames_processed_total", "S", "100 200 300 400x12")],
        "14m",
        True,
        "gate on door is up but nothing is classified",
    ),
    (
        "EdgeclsFpsDropped",
        [("edgecls_fps", "S", "20x120 5x30")],
        "140m",
        True,
        "gate on door classifies at 5.0 fps, under half of the hour before",
    ),
    (
        "EdgeclsDrift",
        [("edgecls_drift_degraded", "S", "1x20")],
        "17m",
        True,
        "gate on door no longer looks like the training data",
    ),
    (
        "EdgeclsDriftModerate",
        [
            ("edgecls_drift_score", 'S, statistic="brightness", against="baseline"', "2.4x400"),
            ("edgecls_drift_score", 'S, statistic="confidence", against="reference"', "0.3x400"),
            ("edgecls_drift_degraded", "S", "0x400"),
        ],
        "380m",
        True,
        "gate on door has drifted moderately (2.4 standard deviations) for 6 hours",
    ),
    (
        "EdgeclsModelReloadRefused",
        [("edgecls_model_reload_failing", "", "0 1x5")],
        "4m",
        False,
        "door refused a new bundle and still serves the old model",
    ),
    (
        "EdgeclsNoDriftReference",
        [("edgecls_drift_reference", "S", "0x70")],
        "65m",
        True,
        "door serves a bundle without reference statistics: drift is not monitored",
    ),
]


@pytest.mark.parametrize("alert, series, at, per_source, summary", FLEET_CASES, ids=[c[0] for c in FLEET_CASES])
def test_every_alert_keeps_the_device_label_and_names_the_device_in_its_summary(
    tmp_path, alert, series, at, per_source, summary
):
    """Targets from the fleet file carry device=NAME: an alert that dropped it (max by (instance, job, source))
    or named only the address (10.0.0.5:8080) left the on-call person to look up which camera box it is."""
    promtool = require_tool("promtool", package="prometheus")
    target = 'job="edgecls", instance="10.0.0.5:8080", device="door"'
    lines = []
    for name, extra, values in series:
        labels = target + (', source="gate"' + extra[1:] if extra.startswith("S") else "")
        lines.append(f"      - series: {json.dumps(f'{name}{{{labels}}}')}\n        values: '{values}'")
    rule = _rule(alert)
    expected = {"severity": rule["labels"]["severity"], "job": "edgecls", "instance": "10.0.0.5:8080", "device": "door"}
    if per_source:
        expected["source"] = "gate"
    description = rule["annotations"]["description"].replace("{{ $labels.instance }}", "10.0.0.5:8080")
    (tmp_path / "t.yml").write_text(f"""rule_files: [{RULES}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
{chr(10).join(lines)}
    alert_rule_test:
      - eval_time: {at}
        alertname: {alert}
        exp_alerts:
          - exp_labels: {json.dumps(expected)}
            exp_annotations: {json.dumps({"summary": summary, "description": description})}
""")
    done = subprocess.run(
        [promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
