"""runtime/daemon/metrics.py: what /metrics exports, read back with prometheus_client's own parser."""

from __future__ import annotations

import pytest


def _samples(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_each_frame_score_lands_in_the_top1_histogram_of_its_source(tmp_path):
    from edgecls.runtime.daemon.loop import LoopStats
    from edgecls.runtime.daemon.metrics import Metrics
    from edgecls.runtime.daemon.supervisor import Supervisor

    (tmp_path / "stills").mkdir()
    metrics = Metrics()
    for name in ("door", "yard"):
        metrics.track(name, Supervisor(str(tmp_path / "stills"), name=name), LoopStats())
    before = _samples(metrics.exposition()[0].decode())
    assert before[("edgecls_top1_score_count", (("source", "door"),))] == 0  # tracked: the series exists at 0
    for score in (0.95, 0.35, 0.72):
        metrics.observe_frame("door", infer_s=0.001, total_s=0.002, age_s=0.01, score=score)
    metrics.observe_frame("yard", infer_s=0.001, total_s=0.002, age_s=0.01)  # a caller without a score
    got = _samples(metrics.exposition()[0].decode())
    door = ("source", "door")
    assert got[("edgecls_top1_score_count", (door,))] == 3
    assert got[("edgecls_top1_score_sum", (door,))] == pytest.approx(0.95 + 0.35 + 0.72)
    assert got[("edgecls_top1_score_bucket", (("le", "0.4"), door))] == 1
    assert got[("edgecls_top1_score_bucket", (("le", "0.8"), door))] == 2
    assert got[("edgecls_top1_score_bucket", (("le", "1.0"), door))] == 3
    assert got[("edgecls_top1_score_count", (("source", "yard"),))] == 0
    assert got[("edgecls_frames_processed_total", (("source", "yard"),))] == 1


def test_a_real_daemon_serves_the_top1_score_of_every_result_it_published_on_metrics(tiny_bundle, tmp_path):
    pytest.importorskip("cv2")
    from edgecls.runtime.daemon import Daemon
    from tests.daemon_helpers import ListSink, http_get, wait_for, write_test_video

    video = str(write_test_video(tmp_path / "clip.avi", frames=20))
    sink = ListSink()
    daemon = Daemon(tiny_bundle, [video], port=0, sinks=[sink], source_options={"loop": True})
    scraped = {}

    def scenario(d):
        wait_for(lambda: len(sink.results) >= 30, 30, "30 results")
        before = len(sink.results)
        status, body = http_get(d.url + "/metrics")
        assert status == 200
        scraped.update(_samples(body.decode()))
        name = sink.results[0]["source"]
        count = int(scraped[("edgecls_top1_score_count", (("source", name),))])
        # a frame is counted just before it is published: at most one in flight past what the sink had then
        assert count, "no score observed: SourceLoop must call observe_frame(..., score=result's score)"
        assert before <= count <= len(sink.results) + 1
        wait_for(lambda: len(sink.results) >= count, 10, "the counted frames published")
        scraped["published"] = [r["score"] for r in sink.results[:count]]
        d.request_stop()

    daemon.run(on_start=scenario)
    name = sink.results[0]["source"]
    scores = scraped["published"]
    total = scraped[("edgecls_top1_score_sum", (("source", name),))]
    assert total == pytest.approx(sum(scores), abs=1e-5 * len(scores))  # results round scores to 6 places
    assert len({round(s, 3) for s in scores}) > 1  # real, varying scores, not one constant


def test_a_nan_score_is_left_out_so_the_mean_confidence_stays_readable(tmp_path):
    """A NaN top-1 score (a logit of +inf gives inf - inf) lands in no bucket but would make _sum NaN until
    a restart, blanking every confidence panel; only finite scores are recorded."""
    import math

    from edgecls.runtime.daemon.loop import LoopStats
    from edgecls.runtime.daemon.metrics import Metrics
    from edgecls.runtime.daemon.supervisor import Supervisor

    (tmp_path / "stills").mkdir()
    metrics = Metrics()
    metrics.track("door", Supervisor(str(tmp_path / "stills"), name="door"), LoopStats())
    for score in (math.nan, math.inf, -math.inf):
        metrics.observe_frame("door", infer_s=0.001, total_s=0.002, age_s=0.01, score=score)
    for _ in range(1000):
        metrics.observe_frame("door", infer_s=0.001, total_s=0.002, age_s=0.01, score=0.9)
    got = _samples(metrics.exposition()[0].decode())
    door = ("source", "door")
    assert got[("edgecls_top1_score_count", (door,))] == 1000
    assert got[("edgecls_top1_score_sum", (door,))] == pytest.approx(900.0)
    assert got[("edgecls_top1_score_bucket", (("le", "+Inf"), door))] == 1000
    assert got[("edgecls_frames_processed_total", (door,))] == 1003  # the frames still count
