"""What `edgecls bench` writes: the table, JSON, CSV, Markdown, a PNG chart, and the comparison with a baseline.

Reads and writes the document `edgecls.runtime.bench.run_bench` returns (format edgecls-bench/1). matplotlib is
imported only for --plot, on the host.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from edgecls.runtime.atomic import write_bytes, write_text
from edgecls.runtime.bench.runner import FORMAT
from edgecls.runtime.bench.table import P99_MIN_RUNS, few_runs, format_table, latency_note
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import FP16, FP32, INT8

REQUIRED = ("file", "format", "precision", "threads", "p50_ms", "p90_ms", "p99_ms")
KERAS_BAR = "keras"  # the baseline record's format (edgecls.bench_keras): its own colour in the chart
BAR_COLOURS = {KERAS_BAR: "tab:gray", FP32: "tab:blue", FP16: "tab:orange", INT8: "tab:green"}  # legend order
OTHER_BAR = "other"  # a precision with no colour of its own (a newer edgecls's results, or edited by hand)
OTHER_COLOUR = "tab:brown"
OUT_FILES = {"json": "bench.json", "csv": "bench.csv", "markdown": "bench.md", "plot": "bench.png"}
CSV_FIELDS = (
    "artifact",
    "engine",
    "file",
    "format",
    "precision",
    "threads",
    "backend",
    "backend_version",
    "provider",
    "size_bytes",
    "macs",
    "runs",
    "repeats",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p99_runs",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "p50_spread_pct",
    "p50_method",
    "rounds",
    "round_spread_pct",
    "fresh_p50_ms",
    "throughput_ips",
    "gmacs_per_s",
    "frame_p50_ms",
    "frame_p90_ms",
    "frame_p99_ms",
    "decode_p50_ms",
    "preprocess_p50_ms",
    "frame_invoke_p50_ms",
    "postprocess_p50_ms",
    "overhead_ms",
    "overhead_pct_of_invoke",
    "frame_throughput_fps",
    "import_ms",
    "load_ms",
    "first_inference_ms",
    "warmup_runs",
    "settled",
    "peak_rss_mb",
    "accuracy",
    "accuracy_images",
    "hostname",
    "cpu",
    "cores",
    "arch",
    "os",
    "python",
)


class RegressionError(EdgeclsError):
    """A p50 got slower than --max-regression allows against the baseline."""


def parse_percent(value: str | float) -> float:
    """'10%' or '10' -> 10.0: always per cent ('0.1' is 0.1 %, not 10 %)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", str(value))
    if not m:
        raise EdgeclsError(f"--max-regression {value!r} is not a percentage: write e.g. 10%")
    return float(m.group(1))


def _check_can_make(path: Path, what: str, shown: Path) -> None:
    """The first existing folder above `path` is a folder we may write in, so the write after the timing succeeds."""
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EdgeclsError(f"{what} {shown}: {parent} is a file, not a folder: choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeclsError(f"{what} {shown}: cannot write in {parent} (permission denied): choose another path")


def check_file_output(path, what: str) -> Path:
    """An output file path we may write: not a folder, and its folder exists or can be made, checked before timing."""
    path = Path(path)
    if path.is_dir():
        raise EdgeclsError(
            f"{what} {path} is a folder: give a file name, e.g. {path / ('bench' + (path.suffix or '.json'))}"
        )
    _check_can_make(path, what, path)
    return path


def check_out_dir(path) -> Path:
    """--out: a folder that does not exist, is empty, or holds only an earlier bench's files."""
    from edgecls.runtime.atomic import _TEMP_FILE

    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise EdgeclsError(f"--out {path} exists and is not a folder: choose another --out")
    _check_can_make(path / OUT_FILES["json"], "--out", path)
    if path.is_dir() and any(path.iterdir()):
        names = {p.name for p in path.iterdir()}
        ours = False
        try:
            ours = json.loads((path / OUT_FILES["json"]).read_text()).get("format", "").startswith("edgecls-bench/")
        except (OSError, ValueError, AttributeError):
            pass
        ours_names = set(OUT_FILES.values())
        # write_bytes' temp file of one of ours, left by a kill, is ours too (as runtime.atomic.check_output has it)
        foreign = sorted(n for n in names - ours_names if not ((m := _TEMP_FILE.match(n)) and m["name"] in ours_names))
        if foreign or (not ours and names & ours_names):  # only temp files: nothing of value, as if empty
            shown = ", ".join(foreign[:3]) if foreign else "no bench.json of ours"
            raise EdgeclsError(
                f"--out {path} is a folder that edgecls bench did not write ({shown}): choose an empty or new folder"
            )
    return path


def check_outputs(json_path=None, csv_path=None, markdown_path=None, plot_path=None, out_dir=None) -> None:
    """Every output `write_outputs` will write, checked before minutes of timing (plotting included)."""
    for path, what in (
        (json_path, "--json"),
        (csv_path, "--csv"),
        (markdown_path, "--markdown"),
        (plot_path, "--plot"),
    ):
        if path:
            check_file_output(path, what)
    if out_dir:
        check_out_dir(out_dir)
    if plot_path:
        check_plotting()


def load_results(path, what: str = "baseline") -> dict:
    """A bench JSON document, checked enough that --compare cannot misread it."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeclsError(
            f"{what} {path} does not exist: write one with `edgecls bench BUNDLE --json {path}`"
        ) from None
    except IsADirectoryError:
        raise EdgeclsError(f"{what} {path} is a folder: give the JSON file written by `edgecls bench --json`") from None
    except (OSError, ValueError) as exc:
        raise EdgeclsError(
            f"{what} {path} is not valid JSON ({str(exc).splitlines()[0]}): write it again with --json"
        ) from None
    records = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(records, list) or not records or not str(doc.get("format", "")).startswith("edgecls-bench/"):
        raise EdgeclsError(
            f"{what} {path} is not an edgecls bench result (no format {FORMAT!r} and records): "
            f"write one with `edgecls bench BUNDLE --json`"
        )
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
        p50 = r.get("p50_ms") if isinstance(r, dict) else None
        if missing or isinstance(p50, bool) or not isinstance(p50, (int, float)) or not p50 > 0:
            raise EdgeclsError(
                f"{what} {path}: record {i + 1} lacks a usable {', '.join(missing) or 'p50_ms'}: "
                f"write it again with `edgecls bench --json`"
            )
    return doc


def _key(record: dict) -> tuple:
    return record.get("artifact") or f"{record['format']}-{record['precision']}", record.get("threads")


def _not_run_reason(name: str, threads, current: dict, record: dict | None = None) -> str | None:
    """Why a baseline `record` may be absent from `current` without a regression, or None (it should be there)."""
    settings = current.get("settings", {})
    run_threads = settings.get("threads") or sorted({r.get("threads") for r in current["records"]}, key=str)
    if threads not in run_threads:
        return (
            f"--threads {','.join(str(t) if t else 'default' for t in run_threads)} "
            f"did not include {threads or 'default'}"
        )
    artifact, _, engine = name.partition("@")  # `artifact@engine`: an opt-in engine's row
    if settings.get("artifacts") is not None and artifact not in settings["artifacts"]:
        return "not selected by --artifacts"
    if name == "keras":  # the baseline the bench adds when TensorFlow and the source model are here, not an artifact
        return "no Keras baseline in this run"
    engine = (record or {}).get("engine") or engine
    if engine:  # runs only where that engine is installed, and a failing one is left out with a note
        gone = [g for g in current.get("left_out") or [] if g.get("row") == name]
        if gone:
            return f"left out of this run: {gone[0].get('why')}"
        if settings.get("engines") is not None and engine not in settings["engines"]:
            return f"--engines did not include {engine}"
        return f"an opt-in engine's row: {engine} is not installed where this run ran"
    return None


def compare(current: dict, baseline: dict, max_regression_pct: float) -> tuple[list, list]:
    """(lines, regressions): the p50 change per artifact and thread count; slower beyond the limit regresses.

    A baseline record this run lacks regresses too (a conversion that failed, an artifact a bundle lost),
    unless the run did not ask for it (--artifacts, --threads, no Keras baseline): then it is only listed.
    """
    base = {_key(r): r for r in baseline["records"]}
    ran = {_key(r) for r in current["records"]}
    lines, regressions = [], []
    bm, cm = baseline.get("machine", {}), current.get("machine", {})
    if (bm.get("hostname"), bm.get("cpu")) != (cm.get("hostname"), cm.get("cpu")):
        lines.append(
            f"note: the baseline ran on {bm.get('hostname')} ({bm.get('cpu')}), this run on "
            f"{cm.get('hostname')} ({cm.get('cpu')})"
        )
    matched = 0
    for r in current["records"]:
        name, threads = _key(r)
        b = base.get((name, threads))
        if b is None:
            lines.append(f"{name} threads={threads}: not in the baseline")
            continue
        matched += 1
        change = 100.0 * (r["p50_ms"] / b["p50_ms"] - 1.0)
        verdict = "REGRESSION" if change > max_regression_pct else "ok"
        lines.append(
            f"{name} threads={threads}: p50 {b['p50_ms']:.3f} -> {r['p50_ms']:.3f} ms ({change:+.1f}%) {verdict}"
        )
        if verdict != "ok":
            regressions.append(f"{name} threads={threads} {change:+.1f}%")
    if not matched:
        raise EdgeclsError("the baseline has no artifact and thread count in common with this run: nothing to compare")
    skipped = []
    for name, threads in (k for k in base if k not in ran):
        why = _not_run_reason(name, threads, current, base[(name, threads)])
        if why:
            skipped.append(f"{name} threads={threads} ({why})")
        else:
            lines.append(f"{name} threads={threads}: in the baseline, missing from this run REGRESSION")
            regressions.append(f"{name} threads={threads} missing from this run")
    if skipped:
        lines.append(f"not compared, this run did not ask for them or could not run them: {'; '.join(skipped)}")
    return lines, regressions


def check_regressions(regressions: list, limit: float) -> None:
    if regressions:
        raise RegressionError(f"p50 regressed beyond {limit:g}%: {'; '.join(regressions)}")


def flat(record: dict) -> dict:
    frame = record.get("frame", {})
    row = {k: record.get(k) for k in CSV_FIELDS}
    for stage, column in (
        ("decode", "decode_p50_ms"),
        ("preprocess", "preprocess_p50_ms"),
        ("invoke", "frame_invoke_p50_ms"),
        ("postprocess", "postprocess_p50_ms"),
    ):
        row[column] = frame.get(stage, {}).get("p50_ms")
    for key in ("hostname", "cpu", "cores", "arch", "os", "python"):
        row[key] = record.get("machine", {}).get(key)
    return row


def to_csv(doc: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in doc["records"]:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in flat(r).items()})
    return out.getvalue()


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def to_markdown(doc: dict) -> str:
    m, s = doc.get("machine", {}), doc.get("settings", {})
    lines = [
        f"Machine: **{m.get('cpu')}**, {m.get('cores')} cores ({m.get('cores_usable')} usable), {m.get('arch')}, "
        f"{m.get('os')}, {m.get('python')}, {m.get('memory_mb')} MB RAM, "
        f"CPU flags {', '.join(m.get('cpu_flags') or []) or '–'}; "
        f"host `{m.get('hostname')}`, load average at the end {m.get('load_average')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()) + ".",
        *(
            [f"**EMULATED ({m['emulated']}): these timings are not those of a real {m.get('arch')} device.**"]
            if m.get("emulated")
            else []
        ),
        f"Settings: {s.get('repeats')} repeat(s) (a fresh process each) of up to {s.get('runs')} timed runs or "
        f"{s.get('time_budget_s')} s; whole frame from {s.get('frame')}. Latency: {latency_note(s)}.",
        "",
        "| artifact | threads | backend (provider) | MB | invoke p50 | p90 | p99 | mean ± std | p50 spread | frame p50 "
        "| decode | preprocess+quantize | top-k "
        "| overhead vs invoke | load ms | 1st ms | peak RSS MB | GMAC/s | accuracy |",
        "|" + "---|" * 19,
    ]
    for r in doc["records"]:
        f = r.get("frame", {})
        lines.append(
            f"| {r.get('artifact')} | {r.get('threads') or 'default'} | {r.get('backend')} ({r.get('provider')}) "
            f"| {_cell(r['size_bytes'] / 1e6 if r.get('size_bytes') else None)} | {_cell(r.get('p50_ms'))} "
            f"| {_cell(r.get('p90_ms'))} | {_cell(r.get('p99_ms'))}{'*' if few_runs(r) else ''} "
            f"| {_cell(r.get('mean_ms'))} ± {_cell(r.get('std_ms'))} "
            f"| {_cell(r.get('round_spread_pct', r.get('p50_spread_pct')), 1)} % | {_cell(r.get('frame_p50_ms'))} "
            f"| {_cell(f.get('decode', {}).get('p50_ms'))} | {_cell(f.get('preprocess', {}).get('p50_ms'))} "
            f"| {_cell(f.get('postprocess', {}).get('p50_ms'), 3)} | {_cell(r.get('overhead_pct_of_invoke'), 1)} % "
            f"| {_cell(r.get('load_ms'), 1)} | {_cell(r.get('first_inference_ms'), 1)} "
            f"| {_cell(r.get('peak_rss_mb'), 0)} "
            f"| {_cell(r.get('gmacs_per_s'), 1)} | {_cell(r.get('accuracy'), 4)} |"
        )
    lines += [
        "",
        "Latencies in ms. invoke: the engine alone on a preprocessed, quantized input. frame: the whole "
        "frame, decode → preprocess+quantize → invoke → top-k through `load_image` and `Classifier.classify`. "
        "p50 spread: (max − min) / median of the round medians where the p50 is the interleaved pass's, of the "
        "per-repeat p50s where it is the fresh processes' (each record's p50_method in the JSON). overhead: "
        "(preprocess+quantize + top-k) p50, decode excluded, as % of the invoke p50.",
    ]
    if any(few_runs(r) for r in doc["records"]):
        lines.append(f"\\* p99 from fewer than {P99_MIN_RUNS} runs: it is the slowest run or close to it.")
    return "\n".join(lines) + "\n"


def plotting_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def check_plotting() -> None:
    if not plotting_available():
        from edgecls.runtime.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "train", "--plot draws the chart on the host")


def _bar_kind(record: dict) -> str:
    """The legend entry of a record's bar: the Keras baseline, or the artifact's precision."""
    kind = KERAS_BAR if record.get("format") == KERAS_BAR else record.get("precision") or FP32
    return kind if kind in BAR_COLOURS else OTHER_BAR


def write_plot(doc: dict, path) -> None:
    """The latency chart (`latency_figure`) as a PNG at `path`, written atomically."""
    check_plotting()
    import matplotlib.pyplot as plt

    fig = latency_figure(doc)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def latency_figure(doc: dict):
    """p50 bars coloured by precision (a legend says which), p90 and p99 marks per artifact and thread count;
    accuracy beside it when measured. A matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    records = doc["records"]
    names = [f"{r.get('artifact')} ×{r.get('threads') or 'def'}" for r in records]
    ys = list(range(len(records)))
    with_accuracy = any(r.get("accuracy") is not None for r in records)
    fig, axes = plt.subplots(
        1,
        2 if with_accuracy else 1,
        figsize=(11 if with_accuracy else 8, 0.45 * len(records) + 1.6),
        squeeze=False,
        sharey=True,
        gridspec_kw={"width_ratios": [3, 1]} if with_accuracy else None,
    )
    ax = axes[0][0]
    kinds = [_bar_kind(r) for r in records]
    ax.barh(ys, [r["p50_ms"] for r in records], color=[BAR_COLOURS.get(k, OTHER_COLOUR) for k in kinds])
    ax.scatter([r["p90_ms"] for r in records], ys, marker="|", s=220, color="black", label="p90", zorder=3)
    ax.scatter([r["p99_ms"] for r in records], ys, marker="x", s=50, color="tab:red", label="p99", zorder=3)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    if max(r["p99_ms"] for r in records) > 20 * min(r["p50_ms"] for r in records):
        ax.set_xscale("log")  # a Keras baseline next to int8 would flatten every other bar
    ax.set_xlabel("invoke latency, ms (bar p50, | p90, x p99)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(  # what each bar colour means (those shown), then the marks
        handles=[
            Patch(color=colour, label=f"{k} p50")
            for k, colour in (*BAR_COLOURS.items(), (OTHER_BAR, OTHER_COLOUR))
            if k in kinds
        ]
        + ax.get_legend_handles_labels()[0],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        ncol=6,
        fontsize=8,
        frameon=False,
    )
    m = doc.get("machine", {})
    emulated = f" - EMULATED ({m['emulated']}), not real-device timings" if m.get("emulated") else ""
    fig.suptitle(f"{m.get('hostname')}: {m.get('cpu')} ({m.get('cores')} cores, {m.get('arch')}){emulated}", fontsize=9)
    if with_accuracy:
        acc = axes[0][1]
        bars = acc.barh(ys, [r.get("accuracy") or 0 for r in records], color="tab:purple")
        acc.bar_label(
            bars,
            labels=["–" if r.get("accuracy") is None else f"{r['accuracy']:.3f}" for r in records],
            label_type="center",
            color="white",
            fontsize=8,
        )
        acc.set_xlim(0, 1)
        acc.set_xlabel("accuracy (--data)")
        acc.grid(axis="x", alpha=0.3)
    return fig


def write_outputs(doc: dict, json_path=None, csv_path=None, markdown_path=None, plot_path=None, out_dir=None) -> list:
    """Write what was asked (each file atomically); returns the paths written."""
    if out_dir:
        out_dir = Path(out_dir)
        json_path = json_path or out_dir / OUT_FILES["json"]
        csv_path = csv_path or out_dir / OUT_FILES["csv"]
        markdown_path = markdown_path or out_dir / OUT_FILES["markdown"]
        plot_path = plot_path or (out_dir / OUT_FILES["plot"] if plotting_available() else None)
    written = []
    for path, write in (
        (json_path, lambda p: write_text(p, json.dumps(doc, indent=2) + "\n")),
        (csv_path, lambda p: write_text(p, to_csv(doc))),
        (markdown_path, lambda p: write_text(p, to_markdown(doc))),
        (plot_path, lambda p: write_plot(doc, p)),
    ):
        if path:
            write(Path(path))
            written.append(Path(path))
    return written


__all__ = [
    "format_table",
    "load_results",
    "compare",
    "check_regressions",
    "parse_percent",
    "write_outputs",
    "to_csv",
    "to_markdown",
    "write_plot",
    "check_out_dir",
    "check_file_output",
    "RegressionError",
]
