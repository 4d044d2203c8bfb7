"""`edgecls status --targets FLEET`: every device in one table, from its own `status` and its daemon's /metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from edgecls.devices import flash as flashing
from edgecls.devices.fleet import fleet_with_profile, read_fleet
from edgecls.devices.rollout.journal import last_steps
from edgecls.devices.rollout.watch import scrape
from edgecls.runtime.errors import EdgeclsError

COLUMNS = ("NAME", "VERSION", "HEALTH", "FPS", "DRIFT", "LAST ROLLOUT STEP")


def _row(device, options, steps: dict, token: str | None = None) -> dict:
    row = {"name": device.name, "target": device.target, "version": None, "health": "not watched"}
    row.update(fps={}, drift=None, last_step=" ".join(steps.get(device.name, ())) or None, error=None)
    try:
        row["version"] = flashing.status(device.target, replace(options, profile=device.profile))["current"]
    except (EdgeclsError, OSError) as exc:
        row["error"] = str(exc)
    if device.metrics_url:
        sample = scrape(device.metrics_url, token)
        row["health"] = "ok" if sample.healthy else f"unhealthy ({sample.error or '/healthz not 200'})"
        row["fps"] = {source: round(value, 2) for source, value in sample.fps_by_source.items()}
        row["drift"] = sample.drift if sample.frames is not None else None
        row["serving"] = sample.version or None
    return row


def fleet_status(fleet_path, options, token: str | None = None) -> list:
    """One dict per device of the fleet file, in its order (asked in parallel); `token`: the daemons' bearer token."""
    devices = fleet_with_profile(read_fleet(fleet_path), options.profile)
    steps = last_steps(fleet_path)
    with ThreadPoolExecutor(max_workers=max(1, min(options.jobs, len(devices)))) as pool:
        return list(pool.map(lambda d: _row(d, options, steps, token), devices))


def format_fleet(rows: list) -> str:
    """The table: fps per source as source=N, drift yes/no/-, the newest journal step naming the device."""
    p = flashing.printable
    table = [COLUMNS]
    for r in rows:
        fps = " ".join(f"{p(s)}={v:g}" for s, v in sorted(r["fps"].items())) or "-"
        drift = "-" if r["drift"] is None else "yes" if r["drift"] else "no"
        version = p(r["version"] or (f"? ({r['error']})" if r["error"] else "none"))
        table.append((p(r["name"]), version, p(r["health"]), fps, drift, p(r["last_step"] or "-")))
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in table)
