"""Live numbers of a device's daemon: its /metrics (read with prometheus_client's parser) and /healthz, or the
same series from a Prometheus server's HTTP API (`--prometheus URL`), sampled over a window.

A window's frames/s is the growth of edgecls_frames_processed over it (every source together), its confidence
the growth of edgecls_top1_score's sum over its count (a daemon without that histogram: the mean of /latest's
top-1 scores at each sample), drift whether any source was degraded at any sample, a refused reload whether
edgecls_model_reload_failing was 1 or the failed reloads grew, healthy whether every /healthz answered 200.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field

from edgecls.runtime.errors import EdgeclsError

TIMEOUT_S = 5.0


@dataclass
class Sample:
    at: float
    frames: float | None = None  # edgecls_frames_processed, every source; None: /metrics did not answer
    score_sum: float | None = None
    score_count: float | None = None
    drift: bool = False
    reload_failing: bool = False
    reloads_failed: float = 0.0
    healthy: bool = False
    version: str = ""
    bundle: str = ""  # edgecls_bundle_info{bundle}: the release folder (slot) the daemon serves
    latest_scores: list = field(default_factory=list)
    fps_by_source: dict = field(default_factory=dict)
    error: str = ""


@dataclass
class Window:
    """What a device showed over one window (None: not measured)."""

    seconds: float = 0.0
    fps: float | None = None
    confidence: float | None = None
    drift: bool = False
    reload_failed: bool = False
    healthy: bool = True
    samples: int = 0
    error: str = ""
    serving: str = ""  # the slot its daemon served at the last answered sample ("": it did not say)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Window:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _get(url: str, timeout: float = TIMEOUT_S, headers: dict | None = None) -> tuple:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read(4 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4 << 20)


def parse_metrics(text: str) -> dict:
    """The numbers a rollout reads from one /metrics exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"frames": 0.0, "score_sum": None, "score_count": None, "drift": False, "reload_failing": False}
    out.update(reloads_failed=0.0, version="", bundle="", fps_by_source={})
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edgecls_frames_processed_total":
                out["frames"] += s.value
            elif s.name in ("edgecls_top1_score_sum", "edgecls_top1_score_count"):
                key = "score_sum" if s.name.endswith("_sum") else "score_count"
                out[key] = (out[key] or 0.0) + s.value
            elif s.name == "edgecls_drift_degraded" and s.value >= 1:
                out["drift"] = True
            elif s.name == "edgecls_model_reload_failing":
                out["reload_failing"] = s.value >= 1
            elif s.name == "edgecls_model_reloads_total" and s.labels.get("result") == "failed":
                out["reloads_failed"] = s.value
            elif s.name == "edgecls_bundle_info":
                out["version"] = s.labels.get("version", "")
                out["bundle"] = s.labels.get("bundle", "")
            elif s.name == "edgecls_fps":
                out["fps_by_source"][s.labels.get("source", "")] = s.value
    return out


def scrape(metrics_url: str, token: str | None = None) -> Sample:
    """One sample of the daemon at `metrics_url` (http://HOST:PORT), straight from the device; `token`: the
    bearer token its daemon's --token-file holds."""
    sample = Sample(at=time.monotonic())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        status, body = _get(f"{metrics_url}/metrics", headers=headers)
        if status == 401:
            raise OSError(
                "/metrics answered 401: "
                + (
                    "the --token-file token is not its daemon's"
                    if token
                    else "its daemon wants a token: give --token-file FILE"
                )
            )
        if status != 200:
            raise OSError(f"/metrics answered {status}")
        for key, value in parse_metrics(body.decode("utf-8", "replace")).items():
            setattr(sample, key, value)
        status, _ = _get(f"{metrics_url}/healthz", headers=headers)
        sample.healthy = status == 200
        status, body = _get(f"{metrics_url}/latest", headers=headers)
        if status == 200:
            latest = json.loads(body)
            sample.latest_scores = [r["score"] for r in latest.values() if isinstance(r, dict) and "score" in r]
    except (OSError, ValueError) as exc:
        sample.error = str(getattr(exc, "reason", None) or exc)
        sample.healthy = False
    return sample


class PrometheusReader:
    """The same samples from a Prometheus server's HTTP API; a device is its `instance` label (HOST:PORT)."""

    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise EdgeclsError(
                "--prometheus takes http(s)://[USER:PASSWORD@]HOST:PORT[/PATH], without a query: "
                "write e.g. --prometheus http://prometheus:9090"
            )
        self.headers = {}
        if parts.username is not None:  # sent as a header; never printed or journaled
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        netloc = parts.netloc.rsplit("@", 1)[-1]
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    def _query(self, expr: str) -> list:
        status, body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", headers=self.headers)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise OSError(f"Prometheus {self.url} answered {status}: {reply.get('error', '')}")
        return reply["data"]["result"]

    def _value(self, expr: str) -> float | None:
        result = self._query(expr)
        return float(result[0]["value"][1]) if result else None

    def scrape_interval(self, addresses: list) -> float | None:
        """The longest scrape interval (seconds) of the active targets naming `addresses`; None: none found."""
        status, body = _get(f"{self.url}/api/v1/targets?state=active", headers=self.headers)
        if status != 200:
            return None
        intervals = [
            _seconds(t.get("scrapeInterval", ""))
            for t in json.loads(body).get("data", {}).get("activeTargets", [])
            if t.get("labels", {}).get("instance") in addresses
        ]
        return max((i for i in intervals if i), default=None)

    def sample(self, address: str) -> Sample:
        """The device's series as Prometheus last scraped them; `at` is that scrape's time (not this host's
        clock: a counter's growth over host time mixes scrape intervals into frames/s)."""
        sample = Sample(at=time.monotonic())
        on = f'instance="{address}"'
        try:
            scraped = self._value(f"max(timestamp(edgecls_frames_processed_total{{{on}}}))")
            sample.at = scraped if scraped is not None else sample.at
            sample.frames = self._value(f"sum(edgecls_frames_processed_total{{{on}}})")
            sample.score_sum = self._value(f"sum(edgecls_top1_score_sum{{{on}}})")
            sample.score_count = self._value(f"sum(edgecls_top1_score_count{{{on}}})")
            sample.drift = (self._value(f"max(edgecls_drift_degraded{{{on}}})") or 0) >= 1
            sample.reload_failing = (self._value(f"max(edgecls_model_reload_failing{{{on}}})") or 0) >= 1
            sample.reloads_failed = self._value(f'sum(edgecls_model_reloads_total{{{on},result="failed"}})') or 0.0
            sources_up = self._value(f"min(edgecls_source_up{{{on}}})")  # /healthz's 503: a camera down
            sample.healthy = (self._value(f"max(up{{{on}}})") or 0) >= 1 and (sources_up is None or sources_up >= 1)
            info = self._query(f"edgecls_bundle_info{{{on}}}")
            sample.bundle = info[0]["metric"].get("bundle", "") if info else ""
            for row in self._query(f"edgecls_fps{{{on}}}"):
                sample.fps_by_source[row["metric"].get("source", "")] = float(row["value"][1])
        except (OSError, ValueError, KeyError) as exc:
            sample.error = str(getattr(exc, "reason", None) or exc)
            sample.healthy = False
        return sample


def _seconds(text: str) -> float | None:
    """A Prometheus duration (15s, 1m30s, 500ms) in seconds, or None."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * units[u] for n, u in parts) if parts else None


def window(samples: list) -> Window:
    """A Window from the samples of one device, oldest first."""
    counted = [s for s in samples if s.frames is not None]
    out = Window(samples=len(samples), healthy=bool(samples) and all(s.healthy for s in samples))
    out.error = next((s.error for s in reversed(samples) if s.error), "")
    if len(counted) >= 2 and counted[-1].at > counted[0].at:
        first, last = counted[0], counted[-1]
        out.seconds = last.at - first.at
        out.fps = max(0.0, last.frames - first.frames) / out.seconds
        if first.score_count is not None and last.score_count is not None and last.score_count > first.score_count:
            out.confidence = (last.score_sum - first.score_sum) / (last.score_count - first.score_count)
        out.reload_failed = last.reloads_failed > first.reloads_failed
    scores = [x for s in samples for x in s.latest_scores]
    if out.confidence is None and scores:
        out.confidence = sum(scores) / len(scores)
    out.drift = any(s.drift for s in samples)
    out.serving = counted[-1].bundle if counted else ""
    out.reload_failed = out.reload_failed or any(s.reload_failing for s in samples)
    return out


def watch(devices: list, seconds: float, *, reader=None, every_s: float = 2.0, say=lambda m: None, token=None):
    """name -> Window of each device (name -> metrics_url or Prometheus address) over `seconds`."""
    take = (lambda url: reader.sample(urllib.parse.urlsplit(url).netloc)) if reader else lambda u: scrape(u, token)
    samples: dict = {name: [] for name in devices}
    end = time.monotonic() + seconds
    said = time.monotonic()
    while True:
        for name, url in devices.items():
            samples[name].append(take(url))
        now = time.monotonic()
        if now >= end:
            break
        if now - said >= 30:
            say(f"watching: {end - now:.0f} s left")
            said = now
        time.sleep(max(0.0, min(every_s, end - time.monotonic())))
    return {name: window(s) for name, s in samples.items()}
