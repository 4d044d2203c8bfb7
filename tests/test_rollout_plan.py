"""edgecls.devices.rollout's plan, journal and judge: canaries, waves, criteria syntax, torn journal lines, verdicts."""

from __future__ import annotations

import json

import pytest

from edgecls.devices.fleet import FleetDevice
from edgecls.devices.rollout.journal import Journal
from edgecls.devices.rollout.judge import judge
from edgecls.devices.rollout.plan import (
    Criteria,
    choose_canaries,
    parse_criteria,
    parse_duration,
    parse_share,
    plan_waves,
)
from edgecls.devices.rollout.watch import Sample, Window, parse_metrics, window
from edgecls.runtime.errors import EdgeclsError


def _devices(n: int, canary=(), unwatched=()) -> list:
    return [
        FleetDevice(f"d{i}", f"./d{i}", None, None if i in unwatched else f"http://127.0.0.1:{9000 + i}", i in canary)
        for i in range(n)
    ]


def test_canaries_are_the_marked_devices_then_the_first_watched_ones_and_waves_cover_the_rest_once():
    devices = _devices(12, canary=(5,), unwatched=(0,))
    canaries = choose_canaries(devices, parse_share("10%", "--canary"))
    assert [d.name for d in canaries] == ["d5", "d1"]  # 10% of 12 -> 2; d0 cannot be watched, so not a canary
    waves = plan_waves(devices, canaries, "25%,100%")
    assert waves[0] == ["d5", "d1"] and [len(w) for w in waves[1:]] == [3, 7]
    assert sorted(n for w in waves for n in w) == sorted(d.name for d in devices)
    assert plan_waves(devices, canaries, "50%")[-1][-1] == "d11"  # a last share under 100%: the rest still go
    assert [d.name for d in choose_canaries(devices, parse_share("1", "--canary"))] == ["d5"]


def test_durations_shares_and_criteria_are_read_and_refused_in_one_line():
    assert parse_duration("15m", "--watch") == 900 and parse_duration("20s", "--watch") == 20
    assert parse_duration("90", "--watch") == 90
    c = parse_criteria("fps>=0.9,confidence>=-0.05,drift=off")
    assert (c.fps, c.others, c.confidence, c.drift, c.health) == (0.9, 0.8, -0.05, False, True)
    for bad, option in (("soon", "--watch"), ("0%", "--canary"), ("-1", "--canary")):
        with pytest.raises(EdgeclsError, match=option):
            (parse_duration if option == "--watch" else parse_share)(bad, option)
    for bad in ("fps>0.8", "speed>=2", "drift>=1", "fps>=fast", "health=maybe"):
        with pytest.raises(EdgeclsError, match="--promote-if"):
            parse_criteria(bad)


def test_a_journal_line_torn_by_a_kill_is_ignored_and_the_next_step_starts_on_its_own_line(tmp_path):
    journal = Journal(tmp_path / "j.jsonl")
    journal.append("planned", waves=[["a"]])
    with open(journal.path, "a") as out:
        out.write('{"step": "flash')  # kill -9 in the middle of a write
    assert [e["step"] for e in journal.events()] == ["planned"]
    journal.append("flashing", device="a")
    assert [e["step"] for e in journal.events()] == ["planned", "flashing"]
    lines = journal.path.read_text().splitlines()
    assert json.loads(lines[-1])["device"] == "a"
    journal.path.write_text(journal.path.read_text().replace('"planned"', "planned"))
    with pytest.raises(EdgeclsError, match="line 1 is not JSON"):
        journal.events()


def test_the_verdict_names_fps_against_its_own_before_and_the_others_and_a_confidence_drop():
    before = {"a": Window(fps=8.0, confidence=0.9), "b": Window(fps=8.0, confidence=0.9)}
    before.update({o: Window(fps=8.0) for o in ("o1", "o2", "o3")})
    after = {
        "a": Window(fps=3.9, confidence=0.88),
        "b": Window(fps=7.9, confidence=0.55),
        "o1": Window(fps=8.1),
        "o2": Window(fps=7.9),
        "o3": Window(fps=8.0),
    }
    verdict = judge(["a", "b"], before, after, ["o1", "o2", "o3"], Criteria())
    assert verdict["a"] == ["fps 8 -> 3.9 (0.49x its own, 0.49x the others')"]
    assert verdict["b"] == ["confidence 0.90 -> 0.55"]
    assert judge(["b"], before, after, [], parse_criteria("confidence>=-0.5"))["b"] == []
    unhealthy = {"a": Window(fps=8.0, confidence=0.9, healthy=False, drift=True, reload_failed=True)}
    assert len(judge(["a"], before, unhealthy, [], Criteria())["a"]) == 3


def test_a_window_counts_frames_per_second_and_the_top1_histogram_mean_from_real_exposition_text():
    text = (
        'edgecls_frames_processed_total{source="cam"} 100.0\n'
        'edgecls_top1_score_sum{source="cam"} 45.0\nedgecls_top1_score_count{source="cam"} 50.0\n'
        'edgecls_model_reloads_total{result="failed"} 0.0\nedgecls_model_reload_failing 0.0\n'
        'edgecls_bundle_info{version="v1"} 1.0\nedgecls_fps{source="cam"} 8.0\n'
    )
    first = Sample(at=0.0, healthy=True, **parse_metrics(text))
    later = parse_metrics(text.replace("100.0", "180.0").replace("45.0", "109.0").replace("50.0", "130.0"))
    w = window([first, Sample(at=10.0, healthy=True, **later)])
    assert (w.fps, w.confidence, w.healthy, w.drift) == (8.0, 0.8, True, False)
    assert first.version == "v1" and first.fps_by_source == {"cam": 8.0}


def test_a_canary_whose_daemon_serves_another_bundle_than_the_flashed_slot_fails():
    text = 'edgecls_frames_processed_total{source="cam"} %s\nedgecls_bundle_info{bundle="%s",version="v"} 1.0\n'
    samples = [Sample(at=t, healthy=True, **parse_metrics(text % (8 * t, "old-slot"))) for t in (0.0, 10.0)]
    after = {"a": window(samples)}
    before = {"a": Window(fps=8.0)}
    assert after["a"].serving == "old-slot"
    assert judge(["a"], before, after, [], Criteria(), slots={"a": "new-slot"})["a"] == [
        "its daemon serves old-slot, not the flashed new-slot"
    ]
    assert judge(["a"], before, after, [], Criteria(), slots={"a": "old-slot"})["a"] == []
    silent = {"a": window([Sample(at=t, healthy=True, frames=8 * t) for t in (0.0, 10.0)])}
    assert "does not say which bundle" in judge(["a"], before, silent, [], Criteria(), slots={"a": "new-slot"})["a"][0]


def test_a_canary_as_fast_as_before_fails_when_the_others_sped_up_far_more_over_the_same_watch():
    before = {n: Window(fps=8.0) for n in ("a", "o1", "o2", "o3")}
    after = {"a": Window(fps=8.0), "o1": Window(fps=20.0), "o2": Window(fps=20.0), "o3": Window(fps=20.0)}
    verdict = judge(["a"], before, after, ["o1", "o2", "o3"], Criteria())["a"]
    assert len(verdict) == 1 and verdict[0].startswith("fps 8 -> 8") and "0.40x the others'" in verdict[0], verdict
    assert judge(["a"], before, after, ["o1", "o2", "o3"], parse_criteria("others>=0.3"))["a"] == []


def test_drift_fails_a_device_only_where_there_was_none_before():
    before = {"calm": Window(fps=8.0), "drifting": Window(fps=8.0, drift=True)}
    after = {"calm": Window(fps=8.0, drift=True), "drifting": Window(fps=8.0, drift=True)}
    verdict = judge(["calm", "drifting"], before, after, [], Criteria())
    assert verdict == {"calm": ["drift (none before)"], "drifting": []}
    assert judge(["calm"], before, after, [], parse_criteria("drift=off"))["calm"] == []


def test_a_refused_reload_counts_when_the_failed_reloads_grew_though_the_failing_gauge_reads_0():
    text = 'edgecls_frames_processed_total{source="cam"} %s\nedgecls_model_reloads_total{result="failed"} %s\n'
    samples = [Sample(at=t, healthy=True, **parse_metrics(text % (8 * t, failed))) for t, failed in ((0, 0), (10, 1))]
    after = window(samples)
    assert after.reload_failed and not any(s.reload_failing for s in samples)
    assert judge(["a"], {"a": Window(fps=8.0)}, {"a": after}, [], Criteria())["a"] == [
        "the daemon refused the new bundle (reload failed)"
    ]
    steady = window([Sample(at=t, healthy=True, **parse_metrics(text % (8 * t, 3))) for t in (0, 10)])
    assert not steady.reload_failed  # failed reloads from before the window are not this bundle's


def test_a_confidence_or_criterion_that_is_not_a_number_never_passes_and_a_stopped_canary_fails():
    nan = float("nan")
    assert judge(["a"], {"a": Window(fps=8.0, confidence=0.9)}, {"a": Window(fps=8.0, confidence=nan)}, [], Criteria())[
        "a"
    ] == ["confidence 0.90 -> nan (not a number)"]
    for bad in ("fps>=nan", "others>=inf", "confidence>=nan", "fps>=-1"):
        with pytest.raises(EdgeclsError, match="--promote-if"):
            parse_criteria(bad)
    stopped = judge(["a"], {}, {"a": Window(fps=0.0)}, [], Criteria())["a"]
    assert stopped == ["no frames processed over the watch (0 fps)"]


def test_waves_whose_cumulative_shares_go_down_are_refused_in_one_line():
    devices = _devices(8)
    with pytest.raises(EdgeclsError, match="--waves '50%,25%'.*cumulative"):
        plan_waves(devices, devices[:1], "50%,25%")
    with pytest.raises(EdgeclsError, match="--waves '4,2'"):
        plan_waves(devices, devices[:1], "4,2")
    assert [len(w) for w in plan_waves(devices, devices[:1], "2,50%,100%")] == [1, 2, 2, 3]


def test_a_canary_with_a_slower_camera_than_the_others_passes_when_its_frames_per_second_hold():
    before = {"slowcam": Window(fps=4.0), **{f"o{i}": Window(fps=8.0) for i in range(3)}}
    after = {"slowcam": Window(fps=4.0), "o0": Window(fps=8.1), "o1": Window(fps=7.9), "o2": Window(fps=8.0)}
    assert judge(["slowcam"], before, after, ["o0", "o1", "o2"], Criteria())["slowcam"] == []
    halved = {**after, "slowcam": Window(fps=2.0)}
    assert judge(["slowcam"], before, halved, ["o0", "o1", "o2"], Criteria())["slowcam"] == [
        "fps 4 -> 2 (0.50x its own, 0.50x the others')"
    ]


def test_prometheus_credentials_travel_as_a_header_and_never_in_what_is_printed(tmp_path):
    import http.server
    import threading

    from edgecls.devices.rollout.watch import PrometheusReader

    seen: list = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"status": "error", "error": "unauthorized"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = PrometheusReader(f"http://ops:pa%40ss@127.0.0.1:{server.server_port}/prom/")
        sample = reader.sample("10.0.0.5:8080")
    finally:
        server.shutdown()
    assert seen[0][0].startswith("/prom/api/v1/query?") and seen[0][1] == "Basic b3BzOnBhQHNz"  # ops:pa@ss
    assert "401" in sample.error and "pa%40ss" not in sample.error and "ops" not in sample.error, sample.error
    with pytest.raises(EdgeclsError, match="without a query"):
        PrometheusReader("http://127.0.0.1:9090/?token=s3cret")
