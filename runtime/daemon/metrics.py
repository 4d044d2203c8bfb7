"""Every Prometheus metric of the daemon, declared in one class over its own CollectorRegistry.

Its own registry (not the global one) lets tests run several daemons in one process. The loop
only calls `observe_frame`; what the supervisors own (state, drops, reconnects) and the loop's
fps are read from them when Prometheus scrapes, so nothing is computed twice or goes stale.
"""

from __future__ import annotations

import math

from edgecls.runtime.errors import MissingDependencyError

# Edge models run in about 0.1 ms (tiny int8) to a few seconds (large fp32 on a Pi Zero).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A top-1 probability is in (0, 1]; tenths are fine enough to see confidence collapse, and few enough series.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _prometheus():
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise MissingDependencyError("prometheus_client", "runtime", "the daemon serves /metrics with it") from exc
    return prometheus_client


class _SourceCollector:
    """Reads each tracked source's supervisor and loop at scrape time."""

    def __init__(self, sources: dict):
        self._sources = sources  # name -> (supervisor, loop stats)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from edgecls.runtime.daemon.supervisor import STATES

        dropped = CounterMetricFamily(
            "edgecls_frames_dropped",
            "Frames captured but replaced by a newer one before they were classified.",
            labels=["source"],
        )
        captured = CounterMetricFamily("edgecls_frames_captured", "Frames delivered by the capture.", labels=["source"])
        reconnects = CounterMetricFamily(
            "edgecls_source_reconnects", "Times frames flowed again after an outage.", labels=["source"]
        )
        outages = CounterMetricFamily(
            "edgecls_source_outages", "Times a source stopped delivering frames.", labels=["source"]
        )
        up = GaugeMetricFamily("edgecls_source_up", "1 while the source delivers frames, else 0.", labels=["source"])
        state = GaugeMetricFamily(
            "edgecls_source_state", "1 for the source's current state.", labels=["source", "state"]
        )
        fps = GaugeMetricFamily(
            "edgecls_fps", "Frames classified per second, over the last 30 frames.", labels=["source"]
        )
        for name, (supervisor, loop_stats) in list(self._sources.items()):
            s = supervisor.stats
            # Counted now, not from the watchdog's copy (up to 100 ms old): the registry reads
            # edgecls_frames_processed first, so captures read after it are never fewer.
            dropped.add_metric([name], supervisor.dropped_now())
            captured.add_metric([name], supervisor.frames_now())
            reconnects.add_metric([name], s.reconnects)
            outages.add_metric([name], s.outages)
            up.add_metric([name], 1.0 if s.state == "running" else 0.0)
            for each in STATES:
                state.add_metric([name, each], 1.0 if s.state == each else 0.0)
            fps.add_metric([name], loop_stats.fps if loop_stats is not None else 0.0)
        yield from (dropped, captured, reconnects, outages, up, state, fps)


class _DriftCollector:
    """Drift per source (runtime/monitor/drift.py), read at scrape time from one `status()` snapshot per source:
    a hot reload adopted by a loop thread meanwhile shows on the next scrape, never as half of each."""

    def __init__(self, monitor):
        self._monitor = monitor

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from edgecls.runtime.monitor.drift import NO_REFERENCE

        reference = GaugeMetricFamily(
            "edgecls_drift_reference",
            "1 when the served artifact has reference statistics to measure drift against, else 0.",
            labels=["source"],
        )
        score = GaugeMetricFamily(
            "edgecls_drift_score",
            "How far the mean of the source's window moved, in standard "
            "deviations of the reference's test images (brightness either way, confidence "
            "downward only), against the reference or the source's baseline (its first full "
            "window); past --drift-threshold (default 3) the source is degraded.",
            labels=["source", "statistic", "against"],
        )
        psi = GaugeMetricFamily(
            "edgecls_drift_psi",
            "Population stability index of the source's window against the "
            "reference per statistic: information (high for any camera that sees one scene), "
            "not what decides drift.",
            labels=["source", "statistic"],
        )
        frames = GaugeMetricFamily(
            "edgecls_drift_window_frames", "Frames in the source's drift window.", labels=["source"]
        )
        degraded = GaugeMetricFamily(
            "edgecls_drift_degraded",
            "1 while the source is in drift (a score past --drift-threshold), else 0.",
            labels=["source"],
        )
        for name, drift in list(self._monitor.sources.items()):
            status = drift.status()  # everything below from this one snapshot
            known = status["state"] != NO_REFERENCE
            reference.add_metric([name], 1.0 if known else 0.0)
            if not known:  # nothing to compare, so no drift series at all
                continue
            frames.add_metric([name], status["window_frames"])
            degraded.add_metric([name], 1.0 if status["state"] == "drift" else 0.0)
            for statistic, against in status["scores"].items():
                for what, value in against.items():
                    score.add_metric([name, statistic, what], value)
            for statistic, value in status.get("psi", {}).items():
                psi.add_metric([name, statistic], value)
        yield from (reference, score, psi, frames, degraded)


class _CaptureCollector:
    """--capture's counters, read from the Capture at scrape time."""

    def __init__(self, capture):
        self._capture = capture

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        c = self._capture
        yield CounterMetricFamily("edgecls_captures", "Frames saved by --capture.", value=c.captured)
        yield CounterMetricFamily(
            "edgecls_capture_errors",
            "Captures that could not be written (full or read-only disk); each frame dropped.",
            value=c.errors,
        )
        yield CounterMetricFamily(
            "edgecls_captures_dropped",
            "Frames --capture wanted but dropped (queue full or write error).",
            value=c.dropped,
        )


class _HttpCollector:
    """The HTTP server's wrong-token counts (runtime/daemon/http.py `_Guesses`), read at scrape time."""

    def __init__(self, guesses):
        self._guesses = guesses

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(
            "edgecls_http_wrong_tokens", "Requests with a wrong token or session cookie.", value=self._guesses.wrong
        )
        yield CounterMetricFamily(
            "edgecls_http_locked_out",
            "Requests answered 429 because their client sent too many wrong tokens (the right one included).",
            value=self._guesses.refused,
        )


class Metrics:
    """The daemon's metrics; `registry` is what /metrics exposes."""

    def __init__(self):
        prom = _prometheus()
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self._sources: dict = {}
        self.frames = prom.Counter(
            "edgecls_frames_processed", "Frames classified and published.", ["source"], registry=self.registry
        )
        self.inference = prom.Histogram(
            "edgecls_inference_seconds",
            "Model invocation time per frame.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frame_time = prom.Histogram(
            "edgecls_frame_processing_seconds",
            "Preprocessing, inference and post-processing time per frame.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.frame_age = prom.Gauge(
            "edgecls_frame_age_seconds",
            "Age of the newest classified frame when its result was published (capture to result).",
            ["source"],
            registry=self.registry,
        )
        self.top1 = prom.Histogram(
            "edgecls_top1_score",
            "Top-1 score of each classified frame (the result's score: its probability, after --smooth); "
            "mean confidence = rate(_sum) / rate(_count).",
            ["source"],
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.bundle = prom.Info("edgecls_bundle", "The loaded bundle and artifact.", registry=self.registry)
        self.reloads = prom.Counter(
            "edgecls_model_reloads",
            "Model reload attempts, by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self.reload_failing = prom.Gauge(
            "edgecls_model_reload_failing",
            "1 while the newest bundle was refused and an older model keeps serving.",
            registry=self.registry,
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result=result)
        self.registry.register(_SourceCollector(self._sources))  # after self.frames: it is scraped after it

    def set_bundle(self, *, version: str, artifact: str, sha256: str, backend: str, bundle: str) -> None:
        self.bundle.info(
            {"version": version, "artifact": artifact, "sha256": sha256, "backend": backend, "bundle": bundle}
        )

    def reload_done(self, *, ok: bool) -> None:
        self.reloads.labels(result="ok" if ok else "failed").inc()
        self.reload_failing.set(0 if ok else 1)

    def track(self, name: str, supervisor, loop_stats=None) -> None:
        """Expose a source's supervisor counters and loop fps; its frame series start at 0."""
        self._sources[name] = (supervisor, loop_stats)
        self.frames.labels(source=name)
        self.inference.labels(source=name)
        self.frame_time.labels(source=name)
        self.top1.labels(source=name)

    def track_drift(self, monitor) -> None:
        """Expose a `edgecls.runtime.monitor.drift.DriftMonitor`'s sources (read at scrape time)."""
        self.registry.register(_DriftCollector(monitor))

    def track_capture(self, capture) -> None:
        """Expose a `edgecls.runtime.daemon.capture.Capture`'s counts (read at scrape time)."""
        self.registry.register(_CaptureCollector(capture))

    def track_http(self, server) -> None:
        """Expose a `daemon.http.StatusServer`'s wrong-token counts (a scraper with an old token shows)."""
        self.registry.register(_HttpCollector(server.guesses))

    def observe_frame(
        self, source: str, *, infer_s: float, total_s: float, age_s: float, score: float | None = None
    ) -> None:
        """One classified frame; `score` is its result's top-1 score (None: a caller that does not know it).

        A score that is not finite (NaN from a logit of +inf) is left out: it lands in no bucket but would
        make the histogram's _sum NaN, and every mean confidence with it, until the daemon restarts.
        """
        self.frames.labels(source=source).inc()
        self.inference.labels(source=source).observe(infer_s)
        self.frame_time.labels(source=source).observe(total_s)
        self.frame_age.labels(source=source).set(age_s)
        if score is not None and math.isfinite(score):
            self.top1.labels(source=source).observe(score)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for /metrics."""
        prom = _prometheus()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
