"""`Daemon`: several sources, one shared model, sinks, metrics and an optional HTTP server, wired together.

    daemon = Daemon("bundle/", ["0", "rtsp://cam/stream"], port=8080)
    daemon.run()   # until SIGTERM/SIGINT, --duration, --max-frames, or every source ended

Each source gets a supervisor (capture, watchdog, reopen) and a loop thread (classify, publish);
nothing is queued between them, so memory is bounded and a dead source never blocks another.
SIGHUP, or a bundle symlink that moves, reloads the model without stopping (runtime/daemon/reload.py); the
simple mode (`simple`: one source, `edgecls run`'s own lines) never reloads, and a SIGHUP ends it.
Each source's recent frames are compared with the served artifact's reference statistics and with the
source's own first window (runtime/monitor/drift.py): /healthz and /metrics say when a source drifted,
and which statistic moved against what.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

from edgecls.runtime.daemon.config import DaemonConfig, megabytes
from edgecls.runtime.daemon.loop import SourceLoop, UnviewableCollector
from edgecls.runtime.daemon.metrics import Metrics
from edgecls.runtime.daemon.pace import SkippedCollector
from edgecls.runtime.daemon.reload import Reloader
from edgecls.runtime.daemon.supervisor import Supervisor
from edgecls.runtime.monitor.drift import NO_REFERENCE, DriftMonitor
from edgecls.runtime.sources import SOURCE_TIMEOUT_S

log = logging.getLogger("edgecls.daemon")

STOP_BUDGET_S = 2.0  # SIGTERM to exit, everything included
CAPTURE_DRAIN_S = 30.0  # every source ended: how long the frames still queued for --capture may take


class Daemon:
    """Classify several sources with one model; `run()` blocks, `stop()` (or SIGTERM/SIGINT) ends it.

    config: a `DaemonConfig` (runtime/daemon/config.py), or the bundle followed by the sources and the
    configuration's fields as keywords (`DaemonConfig.of`). classifier: an already loaded Classifier
    (otherwise one is loaded from the bundle). sinks: objects with write(dict) and close() (default: what the
    configuration names: JSON lines on stdout or in --results, MQTT). capture: a `Capture` (default: the
    configuration's --capture, if any). backoff: the supervisors' delays between reopen attempts.

    /healthz: 503 when a source delivers no frames ("status": "unhealthy"); a source in drift alone
    keeps 200 with "status": "degraded" and "degraded": "drift" on that source, since the model
    still answers; so does a source whose ROI lies outside its frames ("degraded": "unviewable", with the
    reason). "model": "bundle" is the path of the bundle serving, "refused" the last one a reload refused
    ({"bundle", "error", "at"}, None once one loads); "capture" has --capture's counts and last write error.
    A live source whose first open fails ends the run unless `wait_for_sources` (see `failures()`).
    """

    def __init__(
        self,
        config=None,
        sources=None,
        *,
        bundle=None,
        classifier=None,
        sinks=None,
        capture=None,
        backoff=None,
        **settings,
    ):
        if bundle is not None:  # the keyword form may name the bundle: Daemon(bundle=..., sources=[...])
            if config is not None:
                raise TypeError("give the bundle once: first, or as bundle=")
            config = bundle
        if not isinstance(config, DaemonConfig):
            config = DaemonConfig.of(config, () if sources is None else sources, **settings)
        elif sources is not None or settings:
            raise TypeError("give a DaemonConfig, or the bundle, sources and settings, not both")
        self.config = config
        self.capture = capture if capture is not None else _capture(config.capture)
        self.sinks = list(sinks) if sinks is not None else _sinks(config, lambda: self.supervisors[0].dropped_now())
        options = {"profile": config.profile, **config.source_options}
        self.supervisors = [
            Supervisor(
                uri,
                name=name,
                stall_timeout=config.stall_timeout,
                backoff=backoff,
                wait_for_source=config.wait_for_sources,
                simple=config.simple,
                **options,
            )
            for uri, name in zip(config.sources, config.names())
        ]
        self._model_options = {
            "artifact": config.artifact,
            "profile": config.profile,
            "threads": config.threads,
            "top_k": config.top_k,
        }
        self.allowed_signers = config.allowed_signers  # when set, only bundles signed by these keys are loaded
        # `current` is resolved once and loaded from there: a switch during start is then a move the reloader
        # sees (it starts from this target), never a model that differs from the one /healthz names.
        serving = None if config.bundle is None else os.path.realpath(config.bundle)
        self.classifier = classifier if classifier is not None else self._load_classifier(serving)
        self.duration = config.duration
        self.drift = DriftMonitor(config.drift_window, config.drift_threshold)
        self.metrics = Metrics()
        self.metrics.track_drift(self.drift)
        if self.capture is not None:  # each sidecar names the model of its result (loop.py), reloads included
            self.metrics.track_capture(self.capture)
        self._describe_model()
        self.loops = [self._loop(i, supervisor) for i, supervisor in enumerate(self.supervisors)]
        self.metrics.registry.register(SkippedCollector(self.loops))
        self.metrics.registry.register(UnviewableCollector(self.loops))
        self.window = None
        if config.show:
            from edgecls.runtime.daemon.window import Window

            self.window = Window(_Preview(self.loops))
        self.server = None if config.http is None else self._server(config.http)
        self.reloader = (  # the simple mode never switches models: one results file, one model, as it always did
            None
            if config.bundle is None or config.simple
            else Reloader(
                config.bundle,
                load=self._load_classifier,
                swap=self.swap_classifier,
                metrics=self.metrics,
                serving=serving,
            )
        )
        self.notifier = None  # a SystemdNotifier when started under systemd (Type=notify)
        self._stop = threading.Event()
        self._stopped = False
        self._sink_errors = 0
        self.sink_error: OSError | None = None  # the simple mode's first failed write: run() ends and raises it
        self.ended_by: str | None = None  # "stop" (signal, stop(), window), "duration", or "sources" (all done)

    def _loop(self, index: int, supervisor) -> SourceLoop:
        """Source `index`'s loop, with its own settings where it has them and the daemon's otherwise."""
        config, own = self.config, self.config.settings_for(index)
        own = dataclasses.replace(
            own,
            smooth=config.smooth if own.smooth is None else own.smooth,
            threshold=config.threshold if own.threshold is None else own.threshold,
        )
        loop = SourceLoop(
            supervisor,
            self.classifier,
            self._publish,
            metrics=self.metrics,
            top_k=config.top_k,
            max_frames=config.max_frames,
            capture=self.capture,
            drift=self.drift.source(supervisor.name) if config.drift else None,
            own=own,
        )
        self.metrics.track(supervisor.name, supervisor, loop.stats)
        return loop

    def _server(self, http):
        from edgecls.runtime.daemon.http import StatusServer

        server = StatusServer(
            http, health=self.health, latest=self.latest, metrics=self.metrics.exposition, preview=_Preview(self.loops)
        )
        self.metrics.track_http(server)
        return server

    def _load_classifier(self, bundle):
        from edgecls.runtime.bundle import load_bundle
        from edgecls.runtime.classifier import Classifier

        if self.allowed_signers:  # an unsigned or untrusted bundle is refused: at start, and on every reload
            from edgecls.runtime.install.signature import verify_bundle

            bundle = load_bundle(bundle)
            signer = verify_bundle(bundle.root, self.allowed_signers)
            log.info("bundle %s signed by %s", bundle.root.name, signer)
        return Classifier(bundle, **self._model_options)

    def _describe_model(self) -> None:
        clf, art = self.classifier, self.classifier.artifact
        self.metrics.set_bundle(
            version=clf.bundle.manifest.created or "unknown",
            artifact=art.name,
            sha256=art.sha256,
            backend=clf.backend_name,
            bundle=clf.bundle.root.name,
        )

    def swap_classifier(self, classifier) -> None:
        """Serve `classifier` from now on: every loop adopts it before its next frame (hot reload)."""
        self.classifier = classifier
        self._describe_model()
        for loop in self.loops:
            loop.use(classifier)

    @property
    def url(self) -> str | None:
        return self.server.url if self.server else None

    # ------------------------------------------------------------------ state, read by HTTP and the CLI

    def health(self) -> tuple[bool, dict]:
        """Healthy when every source delivers frames; the detail names each source's state and why."""
        now = time.monotonic()
        detail = {}
        for supervisor, loop in zip(self.supervisors, self.loops):
            s = supervisor.stats
            classified = loop.stats.processed  # first: a frame is counted captured before it can be classified
            detail[supervisor.name] = {
                "state": s.state,
                "reason": s.reason,
                "frames": supervisor.frames_now(),
                "classified": classified,
                "dropped": supervisor.dropped_now(),
                "outages": s.outages,
                "reconnects": s.reconnects,
                "fps": round(loop.stats.fps, 2),
                "last_frame_age_s": None if s.last_frame_at is None else round(now - s.last_frame_at, 3),
                "drift": loop.drift.status() if loop.drift is not None else {"state": "off"},
            }
            if loop.pace.period is not None:  # max_fps: frames left unclassified on purpose, not drops
                detail[supervisor.name]["skipped"] = loop.pace.skipped
            detail[supervisor.name].update(_unclassified(loop.stats))
            if detail[supervisor.name]["drift"]["state"] == "drift":  # unviewable first: it is why drift stopped
                detail[supervisor.name].setdefault("degraded", "drift")
        unhealthy = [name for name, d in detail.items() if d["state"] != "running"]
        degraded = [name for name, d in detail.items() if "degraded" in d]
        # A refused reload leaves the old model serving: worth showing, not a reason for 503. Drift neither.
        reference, why_not = self.drift.describe(self.classifier)
        model = {
            "labels": len(self.classifier.labels),
            "artifact": self.classifier.artifact.name,
            "drift_reference": "yes" if reference is not None else f"{NO_REFERENCE}: {why_not}",
            **(self.reloader.status() if self.reloader else {}),
        }
        status = "unhealthy" if unhealthy else "degraded" if degraded else "ok"
        return not unhealthy, {
            "status": status,
            "unhealthy": unhealthy,
            "degraded": degraded,
            "sources": detail,
            "model": model,
            **({"capture": self.capture.status()} if self.capture is not None else {}),
        }

    def latest(self) -> dict:
        return {loop.supervisor.name: loop.stats.latest for loop in self.loops}

    def summary(self) -> dict:
        return {
            s.name: {
                "classified": l.stats.processed,
                "captured": s.frames_now(),  # read after the loop's count, as in health()
                "dropped": s.dropped_now(),
                "outages": s.stats.outages,
                "reconnects": s.stats.reconnects,
                "state": s.stats.state,
            }
            for s, l in zip(self.supervisors, self.loops)
        }

    # ------------------------------------------------------------------ lifecycle

    def _publish(self, result: dict) -> None:
        for sink in self.sinks:
            try:
                sink.write(result)
            except OSError as exc:
                if not self.config.simple:
                    self._sink_failed(sink, exc)
                elif self.sink_error is None:  # `| head`, a full disk: the simple mode ends with that error
                    self.sink_error = exc
                    self.request_stop()
            except Exception as exc:
                self._sink_failed(sink, exc)

    def _sink_failed(self, sink, exc: Exception) -> None:
        """Daemon mode: a full disk must not stop classification or the other sinks; logged, counted."""
        self._sink_errors += 1
        if self._sink_errors == 1 or self._sink_errors % 1000 == 0:
            log.error(
                "sink %s failed (%d times): %s: %s",
                type(sink).__name__,
                self._sink_errors,
                type(exc).__name__,
                exc,
            )

    def _stalled(self, event: dict) -> None:
        """The simple mode's stall lines: no frame for --timeout seconds, said by the sinks that say it."""
        for sink in self.sinks:
            if hasattr(sink, "stall"):
                sink.stall(event)

    def start(self) -> Daemon:
        for supervisor in self.supervisors:
            supervisor.start()
        for loop in self.loops:
            loop.start()
        if self.server:
            self.server.start()
            log.info("serving the preview, /healthz, /metrics and /latest on %s", self.server.url)
        if self.reloader:
            self.reloader.start()
        from edgecls.runtime.daemon.notify import SystemdNotifier

        self.notifier = SystemdNotifier.from_env(progress=self._classified, status=self._status_line)
        if self.notifier is not None:
            self.notifier.start()
        return self

    def _classified(self) -> int:
        return sum(loop.stats.processed for loop in self.loops)

    def _status_line(self) -> str:
        running = sum(s.state == "running" for s in self.supervisors)
        return f"{running}/{len(self.supervisors)} sources running, {self._classified()} frames classified"

    def wait(self) -> None:
        """Until stop() or a signal, `duration` has passed, or every loop has finished."""
        deadline = None if self.duration is None else time.monotonic() + self.duration
        tick = 0.05 if self.window is None else 1 / 30  # a window is redrawn from this thread (HighGUI's rule)
        self.ended_by = "stop"
        timeout = self.config.source_options.get("timeout_s", SOURCE_TIMEOUT_S)
        stalls = _StallLines(self.loops, timeout, self._stalled) if self.config.simple else None
        while not self._stop.wait(tick):
            if stalls is not None:
                stalls.check()
            if deadline is not None and time.monotonic() >= deadline:
                self.ended_by = "duration"
                break
            if any(s.unopened for s in self.supervisors) or any(loop.fatal for loop in self.loops):
                self.ended_by = "sources"  # a source that was never there, a ROI outside its frame: setup mistakes
                break
            if all(loop.done for loop in self.loops):
                self.ended_by = "sources"
                if self.capture is not None:  # offline input ended: finish its captures (a signal still stops)
                    self.capture.drain(CAPTURE_DRAIN_S, stop=self._stop)
                break
            if self.window is not None and not self.window.update():
                break  # q or Esc in the window

    def failures(self) -> list:
        """Why each failed source failed (not those that ended), as lines; [] when none failed.

        After `run()` ended by itself (`ended_by == "sources"`) a non-empty list is a failed run: the CLI
        exits non-zero so systemd's Restart=on-failure restarts it.
        """
        lines = [loop.fatal for loop in self.loops if loop.fatal]
        for supervisor in self.supervisors:
            s = supervisor.stats
            if s.state == "failed":
                reason = s.reason or "failed"
                lines.append(reason if supervisor.name in reason else f"{supervisor.name}: {reason}")
        return lines

    def run(self, on_start=None) -> dict:
        """start, wait, stop; SIGTERM/SIGINT stop it cleanly (SIGHUP reloads; the simple mode leaves it alone, so a
        closed terminal ends it). Returns `summary()`; raises the simple mode's failed write (`sink_error`)."""
        from edgecls.runtime.daemon.signals import SignalWatcher

        # The handlers set flags only; a thread acts on them (a handler taking a lock deadlocks on a signal burst).
        signals = SignalWatcher(self.request_stop, self.reloader.request if self.reloader else None)
        signals.install()
        try:
            self.start()
            if on_start is not None:
                on_start(self)
            self.wait()
        finally:
            self.stop()
            signals.uninstall()
        if self.sink_error is not None:  # the simple mode could not write its lines: its one error, as before
            raise self.sink_error
        return self.summary()

    def request_stop(self) -> None:
        """From any thread (not a signal handler: run()'s go through runtime/daemon/signals.py); run() then stops."""
        self._stop.set()

    def stop(self) -> None:
        """Stop loops, sources and the server and flush sinks, within STOP_BUDGET_S in all."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + STOP_BUDGET_S - 0.3  # leave time for the interpreter to exit
        self._stop.set()
        if self.notifier is not None:
            self.notifier.stop()  # STOPPING=1 first: systemd stops expecting watchdog pings
        if self.reloader:
            self.reloader.stop()
        for loop in self.loops:
            loop.stop()
        share = max(0.1, (deadline - time.monotonic()) * 0.6 / len(self.supervisors))
        for supervisor in self.supervisors:  # closing a source wakes its loop at once
            supervisor.stop(timeout=min(1.0, share))
        for loop in self.loops:
            loop.join(max(0.0, deadline - time.monotonic()))
        if self.server:
            self.server.stop()
        if self.window is not None:
            self.window.close()
        if self.capture is not None:
            self.capture.close(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
        for sink in self.sinks:
            try:
                if getattr(sink, "close_takes_timeout", False):  # a network sink: bounded by what is left
                    sink.close(timeout=max(0.1, deadline - time.monotonic()))
                else:
                    sink.close()
            except Exception as exc:
                log.error("closing sink %s failed: %s: %s", type(sink).__name__, type(exc).__name__, exc)
        stuck = [loop.supervisor.name for loop in self.loops if not loop.done]
        if stuck:
            log.warning("stopped without waiting for %s (a frame still being classified)", ", ".join(stuck))


def _unclassified(stats) -> dict:
    """/healthz's counts of frames a source's loop did not classify, when any, and while its ROI lies outside its
    frames (their size changed) "degraded": "unviewable" and why: the daemon answers, this source classifies nothing."""
    out = {k: getattr(stats, k) for k in ("errors", "unviewable") if getattr(stats, k)}
    reason = stats.unviewable_reason
    if reason:
        out.update(degraded="unviewable", unviewable_reason=reason)
    return out


class _StallLines:
    """The simple mode's stall lines, as it always printed them: `{"event": "stall", "detail", "state"}` each
    `after` seconds (--timeout) in which a source's loop classified no frame and its source delivered none (frames
    max_fps leaves unclassified, or a folder waiting for its turn, are not a stall)."""

    def __init__(self, loops, after: float, say):
        self._loops, self._after, self._say = loops, after, say
        now = time.monotonic()
        self._since = [now] * len(loops)  # the newest frame or stall line, per loop

    def check(self) -> None:
        now = time.monotonic()
        for i, loop in enumerate(self._loops):
            self._since[i] = max(self._since[i], loop.stats.last_at or 0.0, loop.supervisor.alive_at or 0.0)
            if loop.done or now - self._since[i] < self._after:
                continue
            self._since[i] = now
            s = loop.supervisor.stats
            why = f", {s.reason}" if s.reason else ""
            detail = f"{loop.supervisor.name}: no frame for {self._after:.1f}s (state {s.state}{why})"
            self._say({"event": "stall", "detail": detail, "state": s.state})


class _Preview:
    """What the preview page reads: source names, and each loop's newest classified frame with its fps."""

    def __init__(self, loops):
        self._loops = loops

    def names(self) -> list:
        return [loop.supervisor.name for loop in self._loops]

    def frame(self, index: int):
        loop = self._loops[index]
        shown = loop.shown
        return None if shown is None else (shown[0], shown[1], loop.stats.fps)


def _sinks(config: DaemonConfig, dropped) -> list:
    """Where results go: the simple mode's lines (`dropped`: its source's count), or JSON lines on stdout or in
    --results; MQTT besides."""
    from edgecls.runtime.daemon.sinks import JsonlFileSink, SimpleLines, StdoutSink

    if config.simple:
        return [SimpleLines(dropped)]
    sinks = [JsonlFileSink(config.results, max_bytes=megabytes(config.results_max_mb))] if config.results else []
    sinks = sinks or [StdoutSink()]
    if config.mqtt is not None:
        from edgecls.runtime.daemon.mqtt import MqttSink

        m = config.mqtt
        sinks.append(MqttSink(m.url, qos=m.qos, every=m.every, discovery=m.discovery))
    return sinks


def _capture(capture):
    """--capture's `Capture`, or None."""
    if capture is None:
        return None
    from edgecls.runtime.daemon.capture import Capture

    return Capture(capture.folder, below=capture.below, sample=capture.every, max_bytes=megabytes(capture.max_mb))
