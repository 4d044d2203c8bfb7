"""devices/grafana: the fleet dashboard type-checks against Grafana's own schema for the version it declares, its
provisioning resolves, and every panel's PromQL returns data for every device from a real Prometheus that scrapes
real `edgecls run` daemons found through `edgecls fleet prometheus-targets`."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time

import pytest

from tests.conftest import REPO, require_tool

GRAFANA = REPO / "devices" / "grafana"
DASHBOARD = GRAFANA / "edgecls.json"
SCHEMA = REPO / "tests" / "grafana_schema"  # package.json: @grafana/schema and typescript, `npm ci` there
# What Grafana itself defines in a query; the test substitutes them as Grafana would for a 1 s scrape interval.
BUILTINS = {"__rate_interval", "__interval", "__range"}


def load(path=DASHBOARD) -> dict:
    return json.loads(path.read_text())


def targets(dashboard: dict):
    """(panel, target, repeated) for every query of every panel; `repeated`: under a row repeated per device."""
    repeated = False
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            repeated = bool(panel.get("repeat"))
            continue
        for target in panel.get("targets", []):
            yield panel, target, repeated


def substitute(text: str, values: dict) -> str:
    """`text` with $name and ${name} replaced from `values`; fails on a variable it does not know."""

    def one(match):
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {text!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def _schema_tools():
    node = require_tool("node", package="nodejs")
    tsc = SCHEMA / "node_modules" / ".bin" / "tsc"
    if not (SCHEMA / "node_modules" / "@grafana" / "schema").is_dir() or not tsc.exists():
        why = f"Grafana's schema is not installed: npm ci --prefix {SCHEMA.relative_to(REPO)}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return node, tsc


# Grafana's types name enums (GraphDrawStyle, VariableHide...); JSON holds their values. Plain<T> is T with every
# enum replaced by the union of its values, so the JSON literal is checked field by field, excess fields included.
_PLAIN = (
    "type Plain<T> = T extends string ? `${T}` : T extends number ? "
    "(`${T}` extends `${infer N extends number}` ? N : never) : T extends boolean ? boolean : "
    "T extends (infer U)[] ? Plain<U>[] : T extends object ? { [K in keyof T]: Plain<T[K]> } : T;"
)
_PANELCFG = "@grafana/schema/dist/esm/raw/composable/{0}/panelcfg/x/{1}PanelCfg_types.gen"
_PANEL_TYPES = {"timeseries": "TimeSeries", "table": "Table"}


def type_check(dashboard: dict, folder) -> subprocess.CompletedProcess:
    """tsc on a TypeScript file that assigns the dashboard to Grafana's `Dashboard` type and each panel's options
    and field config to its panel plugin's `Options` and `FieldConfig` (@grafana/schema)."""
    _, tsc = _schema_tools()
    lines = ["import type { Dashboard } from '@grafana/schema';", _PLAIN]
    for kind, name in _PANEL_TYPES.items():
        lines.append(f"import type * as {kind} from '{_PANELCFG.format(kind, name)}';")
    lines.append(f"export const dashboard: Plain<Dashboard> = {json.dumps(dashboard, indent=1)};")
    for panel in dashboard["panels"]:
        kind = panel["type"]
        if kind == "row":
            continue
        assert kind in _PANEL_TYPES, f"panel {panel['id']}: no schema check for a {kind} panel"
        custom = panel["fieldConfig"]["defaults"]["custom"]
        lines.append(f"export const options{panel['id']}: Plain<{kind}.Options> = {json.dumps(panel['options'])};")
        lines.append(f"export const custom{panel['id']}: Plain<{kind}.FieldConfig> = {json.dumps(custom)};")
    (folder / "node_modules").symlink_to(SCHEMA / "node_modules")
    (folder / "dashboard.ts").write_text("\n".join(lines) + "\n")
    options = ["--noEmit", "--strict", "--target", "es2022", "--module", "esnext", "--moduleResolution", "bundler"]
    return subprocess.run(
        [str(tsc), *options, "--skipLibCheck", "dashboard.ts"], cwd=folder, capture_output=True, text=True, timeout=300
    )


def test_the_dashboard_declares_the_schema_version_of_the_grafana_schema_it_is_checked_against():
    node, _ = _schema_tools()
    script = "import { defaultDashboard } from '@grafana/schema'; console.log(defaultDashboard.schemaVersion);"
    done = subprocess.run(
        [node, "--input-type=module", "-e", script], cwd=SCHEMA, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert load()["schemaVersion"] == int(done.stdout)


def test_the_dashboard_type_checks_against_grafanas_own_schema(tmp_path):
    done = type_check(load(), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "spoil, complaint",
    [
        (lambda d: d["panels"][1].update(gridPoss=d["panels"][1].pop("gridPos")), "'\"gridPoss\"' does not exist"),
        (lambda d: d["panels"][-1]["fieldConfig"]["defaults"]["custom"].update(drawStyle="lines"), '"lines"'),
        (lambda d: d["templating"]["list"][1].update(refresh=7), "Type '7' is not assignable"),
        (lambda d: d.update(schemaVersion="42"), "not assignable to type 'number'"),
    ],
    ids=["a misspelled field", "a value the field does not take", "an enum number out of range", "a string version"],
)
def test_the_schema_check_refuses_a_spoiled_dashboard(tmp_path, spoil, complaint):
    dashboard = load()
    spoil(dashboard)
    done = type_check(dashboard, tmp_path)
    assert done.returncode != 0 and complaint in done.stdout, done.stdout + done.stderr


# What a Prometheus panel target may hold (@grafana/schema types a target as Record<string, unknown>, so tsc
# cannot catch `exprr` or `refId: 5`): each key with the check of its value.
TARGET_KEYS = {
    "datasource": lambda v: isinstance(v, dict),
    "expr": lambda v: isinstance(v, str) and v.strip() != "",
    "refId": lambda v: isinstance(v, str) and v != "",
    "legendFormat": lambda v: isinstance(v, str),
    "range": lambda v: isinstance(v, bool),
    "instant": lambda v: isinstance(v, bool),
    "format": lambda v: v in ("time_series", "table"),
    "interval": lambda v: isinstance(v, str),
    "editorMode": lambda v: v in ("code", "builder"),
    "exemplar": lambda v: isinstance(v, bool),
    "hide": lambda v: isinstance(v, bool),
}


def target_problems(dashboard: dict) -> list:
    """What is wrong with the dashboard's panel targets: unknown keys, missing refId or expr, values of the wrong
    type (the schema check leaves targets unchecked)."""
    problems = []
    for panel, target, _ in targets(dashboard):
        where = f"panel {panel['id']} ({panel['title']}) target {target.get('refId')!r}"
        for key in ("refId", "expr"):
            if key not in target:
                problems.append(f"{where}: no {key}")
        for key, value in target.items():
            if key not in TARGET_KEYS:
                problems.append(f"{where}: unknown key {key!r} (known: {', '.join(TARGET_KEYS)})")
            elif not TARGET_KEYS[key](value):
                problems.append(f"{where}: {key}={value!r} is not what Grafana takes")
    return problems


def test_every_panel_target_holds_only_known_keys_with_values_grafana_takes():
    assert target_problems(load()) == []


@pytest.mark.parametrize(
    "spoil, complaint",
    [
        (lambda t: t.update(refId=5), "refId=5"),
        (lambda t: t.update(exprr=t.pop("expr")), "unknown key 'exprr'"),
        (lambda t: t.update(instant="true"), "instant='true'"),
        (lambda t: t.update(range=1), "range=1"),
        (lambda t: t.update(format="timeseries"), "format='timeseries'"),
        (lambda t: t.pop("refId"), "no refId"),
        (lambda t: t.update(expr=""), "expr=''"),
    ],
    ids=[
        "a number refId",
        "a misspelled key",
        "a string boolean",
        "a number boolean",
        "an unknown format",
        "no refId",
        "an empty expr",
    ],
)
def test_the_target_check_refuses_a_spoiled_target(spoil, complaint):
    dashboard = load()
    spoil(next(t for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]))
    problems = target_problems(dashboard)
    assert len(problems) >= 1 and any(complaint in p for p in problems), problems


def _cells(panel) -> set:
    g = panel["gridPos"]
    return {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}


def test_panel_ids_are_unique_and_panels_fit_the_grid_without_overlapping():
    panels = load()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict = {}
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for cell in _cells(panel):
            assert cell not in taken, f"{panel['title']!r} overlaps {taken[cell]!r} at {cell}"
            taken[cell] = panel["title"]
    rows = [p for p in panels if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Fleet", "Device $device"] and rows[1]["repeat"] == "device"


def test_every_data_source_and_variable_the_panels_use_is_defined():
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    device = variables["device"]
    assert device["multi"] and device["includeAll"]  # a repeated row needs several values
    assert device["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    known = {name: "x" for name in [*variables, *BUILTINS]}
    for panel in dashboard["panels"]:
        substitute(panel["title"], known)
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            substitute(target["expr"], known)
            substitute(target.get("legendFormat", ""), known)  # {{label}}, not variables


def test_every_panel_expression_parses_as_promql_under_promtool(tmp_path):
    promtool = require_tool("promtool", package="prometheus")
    values = {"device": "door", "datasource": "x", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
    rules = [
        {"record": f"edgecls_dashboard:panel{p['id']}_{t['refId']}", "expr": substitute(t["expr"], values)}
        for p, t, _ in targets(load())
    ]
    (tmp_path / "exprs.yml").write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", "exprs.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout + done.stderr


def test_the_provisioning_files_give_grafana_the_dashboards_data_source_and_folder():
    yaml = pytest.importorskip("yaml")
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "edgecls.yml").read_text())
    (source,) = sources["datasources"]
    current = next(v for v in load()["templating"]["list"] if v["name"] == "datasource")["current"]
    assert sources["apiVersion"] == 1 and source["type"] == "prometheus"
    assert (source["uid"], source["name"]) == (current["value"], current["text"])  # the variable's default is it
    prometheus = yaml.safe_load((REPO / "devices" / "prometheus" / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == prometheus["global"]["scrape_interval"]  # $__rate_interval from it
    boards = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgecls.yml").read_text())
    (provider,) = boards["providers"]
    assert boards["apiVersion"] == 1 and provider["type"] == "file" and provider["options"]["path"].startswith("/")


@pytest.fixture(scope="module")
def scraped_fleet(tiny_bundle, tmp_path_factory):
    from tests.prometheus_server import ScrapedFleet

    fleet = ScrapedFleet(tmp_path_factory.mktemp("fleet"), tiny_bundle, scrape_s=1.0).start()
    try:
        fleet.wait_for_samples(15)
        yield fleet
    finally:
        fleet.stop()


def _finite(result: list) -> list:
    return [r for r in result if math.isfinite(float(r["value"][1]))]


def _regex(names) -> str:
    """The $device value Grafana fills in for these devices selected."""
    return "(" + "|".join(map(re.escape, names)) + ")"


def _sources(scraped_fleet) -> dict:
    return {name: {s.split("=")[0] for s in sources} for name, sources, _a, _p in scraped_fleet.fleet}


def test_every_panel_query_returns_data_for_every_device_from_a_real_prometheus(scraped_fleet):
    prometheus, names = scraped_fleet.prometheus, scraped_fleet.names
    dashboard = load()
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "device")
    metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"]).groups()
    assert sorted(prometheus.label_values(label, metric)) == sorted(names)  # the variable's values: the fleet
    # as Grafana fills them with every device selected: a regex of all in the fleet row, one each in a repeated row
    base = {"datasource": "edgecls-prometheus", "__rate_interval": f"{4 * scraped_fleet.scrape_s:g}s"}
    sources = _sources(scraped_fleet)
    wrong = []
    for panel, target, repeated in targets(dashboard):
        where = f"{panel['title']} {target['refId']}"
        if repeated:  # the row of one device shows that device's sources, each of them, and no other's
            for name in names:
                expr = substitute(target["expr"], {**base, "device": re.escape(name)})
                have = {r["metric"].get("source") for r in _finite(prometheus.query(expr))}
                if have != sources[name]:
                    wrong.append(f"{where} for {name}: sources {sorted(map(str, have))}: {expr}")
            continue
        # the fleet row: one series or row per selected device, every selected device, no other
        for chosen in (names, names[:1], names[1:]):
            expr = substitute(target["expr"], {**base, "device": _regex(chosen)})
            have = {r["metric"].get("device") for r in _finite(prometheus.query(expr))}
            if have != set(chosen):
                wrong.append(f"{where} with {chosen} selected: data for {sorted(map(str, have))}: {expr}")
    assert not wrong, "\n".join(wrong)


def _expr(dashboard: dict, title: str, ref: str = "A") -> str:
    return next(t["expr"] for p, t, _ in targets(dashboard) if p["title"] == title and t["refId"] == ref)


def _by(result: list, label: str) -> dict:
    return {r["metric"][label]: float(r["value"][1]) for r in result}


def test_the_frames_and_confidence_panels_show_what_the_daemons_say(scraped_fleet):
    """The dashboard's own expressions, fleet row and device row: frames/s is each daemon's pace (summed over a
    device's sources), confidence the mean top-1 score of the results its daemon published in the window."""
    prometheus, names, window = scraped_fleet.prometheus, scraped_fleet.names, 10
    results = scraped_fleet.poll_results(window + 2)
    at = time.time()
    dashboard = load()
    fill = {"datasource": "edgecls-prometheus", "__rate_interval": f"{window}s"}

    def shown(title, device):
        return prometheus.query(substitute(_expr(dashboard, title), {**fill, "device": device}), at=at)

    def mean(scores: dict) -> float:
        recent = [score for ts, score in scores.items() if at - window <= ts <= at]
        assert len(recent) >= 10, scores
        return sum(recent) / len(recent)

    fleet_fps = _by(shown("Frames/s per device", _regex(names)), "device")
    fleet_confidence = _by(shown("Mean top-1 confidence per device", _regex(names)), "device")
    for name, sources, _artifact, pace in scraped_fleet.fleet:
        assert fleet_fps[name] == pytest.approx(pace * len(sources), rel=0.35), (name, fleet_fps)
        everything = {ts: s for by_source in results[name].values() for ts, s in by_source.items()}
        assert fleet_confidence[name] == pytest.approx(mean(everything), abs=0.03), (name, fleet_confidence)
        row_fps = _by(shown("Frames/s by source", re.escape(name)), "source")
        row_confidence = _by(shown("Mean top-1 confidence by source", re.escape(name)), "source")
        assert set(row_fps) == set(row_confidence) == set(results[name]), (name, row_fps, results[name].keys())
        for source, scores in results[name].items():
            assert row_fps[source] == pytest.approx(pace, rel=0.35), (name, source, row_fps)
            assert row_confidence[source] == pytest.approx(mean(scores), abs=0.03), (name, source, row_confidence)
    versions = prometheus.query("count by (version) (edgecls_bundle_info)")
    assert len(versions) == 1 and int(versions[0]["value"][1]) == len(names)  # one bundle everywhere
    table = prometheus.query(substitute(_expr(dashboard, "Bundle each device serves"), {**fill, "device": ".*"}))
    assert {r["metric"]["device"]: r["metric"]["artifact"] for r in table} == {
        name: artifact for name, _s, artifact, _p in scraped_fleet.fleet
    }


def histogram_quantile(q: float, buckets: dict) -> float:
    """Prometheus's histogram_quantile over {le: count} by hand (promql/quantile.go bucketQuantile)."""
    bounds = sorted(buckets, key=float)
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # as Prometheus: counts made monotonic
        counts[i] = max(counts[i], counts[i - 1])
    rank = q * counts[-1]
    b = next(i for i, c in enumerate(counts[:-1] + [math.inf]) if c >= rank)
    if b == len(bounds) - 1:
        return float(bounds[-2])
    start = 0.0 if b == 0 else float(bounds[b - 1])
    below = 0.0 if b == 0 else counts[b - 1]
    return start + (float(bounds[b]) - start) * (rank - below) / (counts[b] - below)


# Each latency query of the dashboard: the quantile its title or legend names, and the label it is split by.
QUANTILES = {
    ("Inference latency p99 per device", "A"): (0.99, "device"),
    ("Inference latency p50 and p99", "A"): (0.5, "source"),
    ("Inference latency p50 and p99", "B"): (0.99, "source"),
}


def test_the_latency_panels_show_the_quantile_they_name_as_computed_from_the_buckets(scraped_fleet):
    prometheus, names = scraped_fleet.prometheus, scraped_fleet.names
    dashboard = load()
    latency = {(p["title"], t["refId"]) for p, t, _ in targets(dashboard) if "histogram_quantile" in t["expr"]}
    assert latency == set(QUANTILES)
    at, window = time.time(), "10s"
    fill = {"datasource": "edgecls-prometheus", "__rate_interval": window}
    shown = {}
    for (title, ref), (q, by) in QUANTILES.items():
        for device in [_regex(names)] if by == "device" else map(re.escape, names):
            expr = substitute(_expr(dashboard, title, ref), {**fill, "device": device})
            got = _by(prometheus.query(expr, at=at), by)
            rates = f'sum by ({by}, le) (rate(edgecls_inference_seconds_bucket{{device=~"{device}"}}[{window}]))'
            buckets: dict = {}
            for r in prometheus.query(rates, at=at):
                buckets.setdefault(r["metric"][by], {})[r["metric"]["le"]] = float(r["value"][1])
            expected = {key: histogram_quantile(q, counts) for key, counts in buckets.items()}
            assert got == pytest.approx(expected, rel=1e-9), (title, ref, device)
            shown.update({(title, ref, key): value for key, value in got.items()})
    for (title, ref, source), p50 in shown.items():
        if ref == "A" and title == "Inference latency p50 and p99":
            assert p50 < shown[(title, "B", source)], source  # two quantiles, told apart


def test_the_frames_per_second_panels_never_read_zero_for_a_slowly_paced_source(tiny_bundle, tmp_path):
    """A camera classified every 4 s: the edgecls_fps gauge is 0 once its newest frame is 2 s old (half of the
    scrapes), so panels built on it showed a working camera as stopped; the counter's rate does not."""
    from tests.prometheus_server import ScrapedFleet

    slow = (("slow", ("slow=circle",), "tflite-int8", 0.25),)
    fleet = ScrapedFleet(tmp_path / "fleet", tiny_bundle, scrape_s=1.0, fleet=slow).start()
    try:
        fleet.wait_for_samples(36)
        dashboard = load()
        # as Grafana fills $__rate_interval for a 5 s scrape interval (4 x 5 s)
        fill = {"datasource": "edgecls-prometheus", "__rate_interval": "20s", "device": "slow"}
        end = time.time()
        for title in ("Frames/s per device", "Frames/s by source"):
            (series,) = fleet.prometheus.query_range(substitute(_expr(dashboard, title), fill), end - 15, end, 1)
            values = [float(v) for _, v in series["values"]]
            assert len(values) >= 14 and min(values) > 0, (title, values)
            assert sorted(values)[len(values) // 2] == pytest.approx(0.25, rel=0.4), (title, values)
    finally:
        fleet.stop()
