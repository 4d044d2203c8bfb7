"""The verdict on a watched wave: each device against its own window before and the devices not yet updated."""

from __future__ import annotations

import math
import statistics

from edgecls.devices.rollout.plan import Criteria
from edgecls.devices.rollout.watch import Window


def _n(x) -> str:
    return "-" if x is None else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


def judge_device(
    name: str, before: Window, after: Window, others: tuple, criteria: Criteria, slot: str | None = None
) -> list:
    """The reasons `name` fails (empty: it passes), each a short phrase; `slot`: the release it was flashed.

    `others`: (the median of the not-yet-updated devices' after/before fps ratios, the median of their fps after):
    a device is compared with how the others changed over the same watch (each camera has its own rate); only a
    device without its own before is compared with the others' fps itself."""
    why = []
    if after.fps is None:
        return [f"no frames counted ({after.error or 'its /metrics did not answer'})"]
    if not after.fps > 0:  # a stopped camera (or a hung model) passes no ratio where there is nothing to compare
        return [f"no frames processed over the watch ({_n(after.fps)} fps)"]
    if slot and after.serving != slot:  # its numbers are another model's (or another device's)
        said = (
            f"serves {after.serving}"
            if after.serving
            else "does not say which bundle it serves (no edgecls_bundle_info)"
        )
        why.append(f"its daemon {said}, not the flashed {slot}")
    others_ratio, others_fps = others
    own = after.fps / before.fps if before.fps else None
    if own is not None:
        rel = own / others_ratio if others_ratio else None
    else:
        rel = after.fps / others_fps if others_fps else None
    if (own is not None and own < criteria.fps) or (rel is not None and rel < criteria.others):
        ratios = ", ".join(f"{r:.2f}x {what}" for r, what in ((own, "its own"), (rel, "the others'")) if r is not None)
        why.append(f"fps {_n(before.fps)} -> {_n(after.fps)} ({ratios})")
    if after.confidence is not None and not math.isfinite(after.confidence):
        was = "-" if before.confidence is None else f"{before.confidence:.2f}"
        why.append(f"confidence {was} -> {after.confidence} (not a number)")
    elif before.confidence is not None and after.confidence is not None and math.isfinite(before.confidence):
        if after.confidence < before.confidence + criteria.confidence:
            why.append(f"confidence {before.confidence:.2f} -> {after.confidence:.2f}")
    if criteria.drift and after.drift and not before.drift:
        why.append("drift (none before)")
    if criteria.reloads and after.reload_failed:
        why.append("the daemon refused the new bundle (reload failed)")
    if criteria.health and not after.healthy:
        why.append(f"unhealthy ({after.error or '/healthz not 200'})")
    return why


def judge(wave: list, before: dict, after: dict, others: list, criteria: Criteria, slots: dict | None = None) -> dict:
    """name -> reasons for each watched device of `wave`; `others` names the not-yet-updated watched devices,
    `slots` the release each was flashed (its daemon must serve it)."""
    counted = [o for o in others if o in after and after[o].fps is not None]
    rates = [after[o].fps for o in counted]
    ratios = [after[o].fps / before[o].fps for o in counted if o in before and before[o].fps]
    medians = (statistics.median(ratios) if ratios else None, statistics.median(rates) if rates else None)
    return {
        name: judge_device(name, before.get(name) or Window(), after[name], medians, criteria, (slots or {}).get(name))
        for name in wave
        if name in after
    }


def describe(name: str, before: Window, after: Window) -> str:
    """The numbers of one passing device, for its line."""
    conf = f", confidence {_n(before.confidence)} -> {_n(after.confidence)}" if after.confidence is not None else ""
    alone = " (no frames counted before: judged against the others only)" if before.fps is None else ""
    return f"fps {_n(before.fps)} -> {_n(after.fps)}{conf}{alone}"
