"""docs/img/fleet-dashboard.png: the Grafana dashboard's panels drawn with matplotlib from a real Prometheus.

    nice -n 10 python -m benchmarks.fleet_dashboard [--bundle DIR] [--seconds 120] [--out docs/img/fleet-dashboard.png]

Grafana cannot run here (no package of it in the registries this project uses), so this is a rendering of the
panels' data, not a Grafana screenshot. It starts the test fleet of tests/prometheus_server.py (three real
`edgecls run` daemons with their own sources, artifacts and paces, and a real Prometheus that finds them through
`edgecls fleet prometheus-targets`), lets Prometheus scrape them for --seconds, then evaluates every query of
devices/grafana/edgecls.json over that window through Prometheus's HTTP API (query_range, the variables filled as
Grafana fills them with every device selected) and lays the panels out on the dashboard's own 24-column grid,
the row repeated per device. Without --bundle it trains and converts the tests' tiny shapes model first.

Each camera plays a clip of the shapes images the model was trained on (each in its own shuffled order), so the
drift scores stay low: a dashboard of a healthy fleet. (The tests' circle and ramp clips look nothing like the
training images: their drift panels sit past the degraded line, as they should.)
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DASHBOARD = ROOT / "devices" / "grafana" / "edgecls.json"
# unit -> (axis label, factor): Grafana's units as a reader of a static picture needs them spelled
UNITS = {
    "s": ("milliseconds", 1000.0),
    "percentunit": ("percent", 100.0),
    "short": ("count", 1.0),
    "none": ("1 = up, 0 = down", 1.0),
}
SUFFIXES = {"fps": "frames/s", "σ": "standard deviations (σ)"}


def build_bundle(work: Path) -> Path:
    """The tests' tiny bundle: the shapes set, a small CNN trained 8 epochs at 32 px, converted to every format."""
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.train import TrainConfig, train
    from tests.conftest import _write_shapes

    _write_shapes(work / "shapes")
    config = TrainConfig(
        data=str(work / "shapes"),
        out=str(work / "run"),
        image_size=32,
        epochs=8,
        batch_size=8,
        seed=0,
        model_options={"widths": (8, 16)},
        verbose=0,
    )
    train(config)
    convert(work / "run", work / "bundle", ConvertOptions(calibration_size=32, max_drop=100.0))
    return work / "bundle"


def shapes_clips(shapes: Path, folder: Path, fleet) -> tuple:
    """`fleet` with every source playing a clip of the shapes images (each its own shuffled order, 20 fps)."""
    import cv2
    import numpy as np

    images = sorted(p for p in shapes.rglob("*") if p.suffix in (".png", ".jpg", ".bmp", ".webp"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed, (name, sources, artifact, fps) in enumerate(fleet):
        played = []
        for k, source in enumerate(sources):
            label = source.split("=")[0]
            order = np.random.default_rng(10 * seed + k).permutation(len(images))
            clip = folder / f"{name}-{label}.avi"
            writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (40, 40))
            for i in order:
                writer.write(cv2.resize(cv2.imread(str(images[i])), (40, 40)))
            writer.release()
            played.append(f"{label}={clip}")
        out.append((name, tuple(played), artifact, fps))
    return tuple(out)


def _axis(panel) -> tuple:
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    if unit.startswith("suffix:"):
        suffix = unit.split(":", 1)[1].strip()
        return SUFFIXES.get(suffix, suffix), 1.0
    return UNITS[unit]


def _legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def _fill(expr: str, device: str, rate: str) -> str:
    return expr.replace("$__rate_interval", rate).replace("${datasource}", "").replace("$device", device)


def _table(ax, panel, prometheus, device_regex, at):
    """The versions table: one row per device, the columns the panel's organize transformation keeps."""
    (target,) = panel["targets"]
    rows = sorted(
        (r["metric"] for r in prometheus.query(_fill(target["expr"], device_regex, "1m"), at=at)),
        key=lambda m: m.get("device", ""),
    )
    columns = ["device", "version", "artifact", "backend"]
    ax.axis("off")
    table = ax.table(
        cellText=[[m.get(c, "") for c in columns] for m in rows], colLabels=columns, loc="upper center", cellLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    table.auto_set_column_width(list(range(len(columns))))
    table.scale(1, 1.4)


def _timeseries(ax, panel, prometheus, device, window, rate):
    import matplotlib.dates as mdates

    label, factor = _axis(panel)
    start, end, step = window
    for target in panel["targets"]:
        for series in prometheus.query_range(_fill(target["expr"], device, rate), start, end, step):
            times = [datetime.datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
            values = [float(v) * factor for _, v in series["values"]]
            ax.plot(times, values, linewidth=1.2, label=_legend(target.get("legendFormat", ""), series["metric"]))
    defaults = panel["fieldConfig"]["defaults"]
    steps = (defaults.get("thresholds") or {}).get("steps", [])
    for step_ in steps:
        if step_.get("value") is not None:
            ax.axhline(step_["value"] * factor, color="red", linestyle="--", linewidth=1, label="degraded past this")
    low, high = ax.get_ylim()
    if defaults.get("min") is not None:
        low = defaults["min"] * factor
    if defaults.get("max") is not None:
        high = defaults["max"] * factor * 1.05  # a line at the maximum stays visible
    ax.set_ylim(low, max(high, low + 1e-9))
    ax.set_ylabel(label, fontsize=11)
    ax.set_xlabel("time of day", fontsize=10)
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(labelsize=10)
    ax.grid(alpha=0.3)
    if ax.lines:  # one column in a third of the width: two of long names ran past the panel's edge
        columns = 1 if panel["gridPos"]["w"] <= 8 else 1 + len(ax.lines) // 4
        ax.legend(fontsize=11, loc="upper left", ncol=columns, framealpha=0.8)


def render(prometheus, names: list, window: tuple, rate: str, out: Path) -> None:
    """Every panel of the dashboard on its gridPos; the repeated row once per device in `names`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    dashboard = json.loads(DASHBOARD.read_text())
    everyone = "(" + "|".join(names) + ")"
    placed, y_shift, repeated = [], 0, []
    for panel in dashboard["panels"]:
        if panel["type"] == "row" and panel.get("repeat"):
            repeated = [panel]
        elif repeated:
            repeated.append(panel)
        else:
            placed.append((panel, everyone, panel["gridPos"]["y"]))
    block = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in repeated) - repeated[0]["gridPos"]["y"]
    for name in names:
        for panel in repeated:
            placed.append((panel, name, panel["gridPos"]["y"] + y_shift))
        y_shift += block
    # two empty grid units above each row's title, so the time axis of the panels above does not run into it
    starts = sorted({y for p, _, y in placed if p["type"] == "row"})
    placed = [(p, d, y + 2 * sum(1 for s in starts if s <= y)) for p, d, y in placed]
    rows = max(y + p["gridPos"]["h"] for p, _, y in placed)
    figure = plt.figure(figsize=(18, rows * 0.5))
    grid = figure.add_gridspec(rows, 24, hspace=1.2, wspace=2.4, top=1 - 0.6 / rows, bottom=0.02, left=0.04, right=0.99)
    for panel, device, y in placed:
        g = panel["gridPos"]
        if panel["type"] == "row":
            ax = figure.add_subplot(grid[y : y + 1, :])
            ax.axis("off")
            title = panel["title"].replace("$device", device)
            ax.text(0, 0.5, title, fontsize=18, fontweight="bold", va="center", transform=ax.transAxes)
            continue
        ax = figure.add_subplot(grid[y + 1 : y + g["h"], g["x"] : g["x"] + g["w"]])
        if g["x"] > 0:  # room for the y axis's label and ticks beside the panel on the left
            box = ax.get_position()
            ax.set_position([box.x0 + 0.025, box.y0, box.width - 0.025, box.height])
        ax.set_title(panel["title"], fontsize=13, loc="left")
        if panel["type"] == "table":
            _table(ax, panel, prometheus, everyone, window[1])
        else:
            _timeseries(ax, panel, prometheus, device, window, rate)
    figure.suptitle(
        "edgecls fleet dashboard (devices/grafana/edgecls.json): its panels' queries drawn with matplotlib from a\n"
        "real Prometheus scraping three real daemons; a rendering of the panels' data, not a Grafana screenshot",
        fontsize=15,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    plt.close(figure)
    # lines on white take few colours: a 128-colour palette is a third of the size and looks the same
    image = Image.open(buffer).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)


def main(argv=None) -> None:
    from tests.prometheus_server import FLEET, ScrapedFleet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="a bundle to run on every device (default: the tests' tiny one)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long Prometheus scrapes before drawing")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "fleet-dashboard.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        bundle = args.bundle
        if bundle is None:
            print("training and converting the tiny shapes model", flush=True)
            bundle = build_bundle(work)
        else:
            from tests.conftest import _write_shapes

            _write_shapes(work / "shapes")  # the generator and seed of the images the tests' tiny model learnt
        clips = shapes_clips(work / "shapes", work / "clips", FLEET)
        fleet = ScrapedFleet(work / "fleet", bundle, scrape_s=1.0, fleet=clips).start()
        try:
            print(f"fleet up: {', '.join(fleet.names)}; Prometheus at {fleet.prometheus.url}", flush=True)
            start = time.time()
            while time.time() - start < args.seconds:
                time.sleep(10)
                print(f"scraping: {time.time() - start:.0f}/{args.seconds:.0f} s", flush=True)
            end = time.time()
            render(fleet.prometheus, fleet.names, (start, end, 2.0), "4s", args.out)
        finally:
            fleet.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
