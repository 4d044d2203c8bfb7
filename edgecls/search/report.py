"""What people look at after `edgecls search`: the Pareto front, the chosen trial, the trials table, the plot.

Only measured trials (status meets-budget or over-budget, with a measurement and a validation accuracy) can be on
the front or chosen: a pruned candidate was never trained, a failed or gate-failed one has no artifact that could
ship. Whether a trial meets the budget is decided here again from its measurement, so the same trials can be
judged against another budget (`choose(trials, Budget(...))`) without measuring anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

from edgecls.runtime.atomic import write_bytes, write_text
from edgecls.runtime.errors import EdgeclsError
from edgecls.search.space import describe
from edgecls.search.types import FAILED, GATE_FAILED, MEETS, OVER_BUDGET, PRUNED, Budget, Trial

TRIALS_CSV, TRIALS_JSON, FRONT_PNG = "trials.csv", "trials.json", "front.png"
FORMAT = "edgecls-search-trials/1"
MEASURED = (MEETS, OVER_BUDGET)
COLUMNS = (
    "number", "model", "options", "size", "resize", "macs", "params", "status", "predicted_ms", "p50_ms", "p90_ms",
    "peak_rss_mb", "size_mb", "val_accuracy", "int8_test_accuracy", "artifact", "reason", "device", "emulated",
    "train_s", "convert_s", "measure_s",
)  # fmt: skip
BUDGET_COLOUR, MEETS_COLOUR, MISSES_COLOUR, CHOSEN_COLOUR = "#d62728", "#1f77b4", "#9a9a9a", "#ffbf00"
PRUNED_COLOUR = "#e377c2"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def latency(trial: Trial) -> float | None:
    """The measured p50 in ms, or None."""
    m = trial.measurement
    return m.latency_ms if m is not None and _finite(m.latency_ms) else None


def is_measured(trial: Trial) -> bool:
    """Trained, converted and measured on the device: a point of the front."""
    return trial.status in MEASURED and latency(trial) is not None and _finite(trial.val_accuracy)


def misses(trial: Trial, budget: Budget) -> list:
    """Why a measured trial misses `budget` (empty: it meets it). A limit whose figure was not measured is missed:
    nothing unverified is chosen."""
    m = trial.measurement
    reasons = []
    if latency(trial) is None or latency(trial) > budget.latency_ms:
        reasons.append(f"latency {_ms(latency(trial))} > {budget.latency_ms:g} ms")
    limits = ((budget.ram_mb, m and m.peak_rss_mb, "peak RAM"), (budget.size_mb, m and m.size_mb, "size"))
    for limit, value, what in limits:
        if limit is None:
            continue
        if not _finite(value):
            reasons.append(f"{what} not measured (budget {limit:g} MB)")
        elif value > limit:
            reasons.append(f"{what} {value:.1f} MB > {limit:g} MB")
    return reasons


def meets(trial: Trial, budget: Budget) -> bool:
    return is_measured(trial) and not misses(trial, budget)


def pareto_front(trials) -> list:
    """The measured trials no other measured trial beats in both validation accuracy (higher) and measured latency
    (lower), fastest first. Two trials with the same accuracy and latency are both on it."""
    front, best, last = [], -math.inf, None
    for trial in sorted(filter(is_measured, trials), key=lambda t: (latency(t), -t.val_accuracy, t.number)):
        point = (latency(trial), trial.val_accuracy)
        if trial.val_accuracy > best or point == last:
            front.append(trial)
            best, last = trial.val_accuracy, point
    return front


def choose(trials, budget: Budget) -> Trial | None:
    """The most accurate (validation) measured trial that meets every limit of `budget`; on a tie the faster, then
    the earlier. None when no measured trial meets it."""
    eligible = [t for t in trials if meets(t, budget)]
    return min(eligible, key=lambda t: (-t.val_accuracy, latency(t), t.number), default=None)


def _ms(value) -> str:
    """3 significant figures, as the progress lines (0.0365 ms, not 0.04 ms; 1234 ms, not 1.23e+03 ms)."""
    if not _finite(value):
        return "unmeasured"
    return f"{value:.3g} ms" if abs(value) < 1000 else f"{value:.0f} ms"


def _round(value, digits: int):
    return round(value, digits) if _finite(value) else ""


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    """A text cell a spreadsheet would run as a formula (it starts with = + - @, a tab or a CR: a gate's error
    message, a user's --device) gets a leading ' so it shows as text; its line breaks become spaces (one line per
    row). Numbers are written as they are: a negative number stays a number."""
    if not isinstance(value, str):
        return value
    text = "'" + value if value.startswith(FORMULA_STARTS) else value
    return text.replace("\r", " ").replace("\n", " ")


def _row(trial: Trial) -> dict:
    """One row of trials.csv; text cells through `_cell` (no spreadsheet formula, one line)."""
    c, m = trial.candidate, trial.measurement
    row = {
        "number": trial.number,
        "model": c.model,
        "options": json.dumps(c.model_options, sort_keys=True, separators=(",", ":")),
        "size": c.image_size,
        "resize": c.resize,
        "macs": c.macs,
        "params": c.params,
        "status": trial.status or "running",
        "predicted_ms": _round(trial.predicted_ms, 3),
        "p50_ms": _round(m and m.latency_ms, 3),
        "p90_ms": _round(m and m.latency_p90_ms, 3),
        "peak_rss_mb": _round(m and m.peak_rss_mb, 1),
        "size_mb": _round(m and m.size_mb, 3),
        "val_accuracy": _round(trial.val_accuracy, 4),
        "int8_test_accuracy": _round(trial.test_accuracy, 4),
        "artifact": m.artifact if m else "",
        "reason": " ".join(trial.reason.split()),
        "device": m.device if m else "",
        "emulated": (m.emulated or "") if m else "",
        "train_s": _round(trial.train_seconds, 1),
        "convert_s": _round(trial.convert_seconds, 1),
        "measure_s": _round(m and m.seconds, 1),
    }
    return {name: _cell(value) for name, value in row.items()}


def _plain(obj):
    """JSON-safe: NaN and infinities (a diverged trial) become null rather than invalid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def write_table(trials, folder, *, budget: Budget | None = None, device=None) -> tuple:
    """FOLDER/trials.csv (one row per trial, by number) and FOLDER/trials.json (every Trial.to_dict, with the budget,
    the device, the front and the chosen trial's number). A CSV text cell that a spreadsheet would run as a formula
    (starting with = + - @, a tab or a CR) is written with a leading ' (numbers as they are). Both are serialised
    before either is written, and each is written atomically: a failure leaves the previous files as they were.
    Returns their paths."""
    trials = sorted(trials, key=lambda t: t.number)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_row(t) for t in trials)
    chosen = choose(trials, budget) if budget else None
    document = {
        "format": FORMAT,
        "device": device,
        "budget": budget.to_dict() if budget else None,
        "chosen": chosen.number if chosen else None,
        "front": [t.number for t in pareto_front(trials)],
        "trials": [t.to_dict() for t in trials],
    }
    text = json.dumps(_plain(document), indent=2, allow_nan=False) + "\n"
    folder = Path(folder)
    write_text(folder / TRIALS_JSON, text)
    write_text(folder / TRIALS_CSV, out.getvalue())
    return folder / TRIALS_CSV, folder / TRIALS_JSON


def read_table(folder) -> dict:
    """FOLDER/trials.json back: {"trials": [Trial], "budget": Budget | None, "device", "chosen", "front"}."""
    path = Path(folder) / TRIALS_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not str(document.get("format", "")).startswith("edgecls-search-trials/"):
            raise ValueError("not a trials table")
        trials = [Trial.from_dict(t) for t in document["trials"]]
        budget = _budget(document["budget"]) if document.get("budget") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EdgeclsError(
            f"cannot read {path} ({type(exc).__name__}: {exc}): give the OUT folder of an `edgecls search`"
        ) from None
    return {**document, "trials": trials, "budget": budget}


def _budget(data) -> Budget:
    """The table's budget, its limits numbers (None: not limited), else ValueError naming the field."""
    try:
        budget = Budget.from_dict(data)
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"budget {data!r} is not a budget: {exc}") from None
    for name in ("latency_ms", "ram_mb", "size_mb"):
        value = getattr(budget, name)
        if not (_finite(value) or (value is None and name != "latency_ms")):
            raise ValueError(f"budget {name} {value!r} is not a number")
    return budget


def counts(trials) -> str:
    """`12 trials: 5 meets-budget, 2 over-budget, 4 pruned, 1 failed`."""
    seen = Counter(t.status or "running" for t in trials)
    order = (MEETS, OVER_BUDGET, PRUNED, GATE_FAILED, FAILED, "running")
    parts = [f"{seen[s]} {s}" for s in order if seen[s]]
    return f"{len(trials)} trial{'s' * (len(trials) != 1)}" + (": " + ", ".join(parts) if parts else "")


def _device(trials) -> tuple:
    """The device most measurements name, and the emulation line when any ran emulated."""
    measured = [t.measurement for t in trials if t.measurement is not None]
    device = Counter(m.device for m in measured if m.device).most_common(1)
    emulated = next((m.emulated for m in measured if m.emulated), None)
    return (device[0][0] if device else "the device"), emulated


def figure_title(trials, given: str | None = None) -> str:
    """`given` (else "Accuracy vs latency on DEVICE"), with the emulation said when the measurements ran emulated."""
    device, emulated = _device(trials)
    text = given or f"Accuracy vs latency on {device}"
    if emulated and "emulated" not in text.lower():
        text += f" (emulated: {emulated}; not the device's speed)"
    return text


def _budget_text(budget: Budget) -> str:
    parts = [f"{budget.latency_ms:g} ms"]
    parts += [
        f"{v:g} MB {what}" for v, what in ((budget.ram_mb, "peak RAM"), (budget.size_mb, "file")) if v is not None
    ]
    return "budget: " + ", ".join(parts)


def plot_front(trials, budget: Budget, path, title: str | None = None) -> None:
    """PNG: validation accuracy against measured latency for every measured trial (those missing the budget greyed),
    the Pareto front as a step line, the latency budget as a vertical line with its value, the chosen trial starred
    and named, and below, apart, the pruned candidates at their predicted latency (hollow: never trained). The
    title names the device and says "emulated" when the measurements ran under emulation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = list(trials)
    fig, (ax, strip) = plt.subplots(
        2, 1, sharex=True, figsize=(8.5, 6), gridspec_kw={"height_ratios": [4, 1], "hspace": 0.08}
    )
    _draw_measured(ax, trials, budget)
    _draw_pruned(strip, trials)
    xs = [latency(t) for t in trials if is_measured(t)]
    xs += [t.predicted_ms for t in trials if t.status == PRUNED and _finite(t.predicted_ms) and t.predicted_ms > 0]
    _scale(strip, [*xs, budget.latency_ms])
    for axis in (ax, strip):
        axis.axvline(budget.latency_ms, color=BUDGET_COLOUR, linestyle="--", linewidth=1.6, zorder=1)
        axis.grid(alpha=0.3)
    ax.text(
        budget.latency_ms, 1.0, f" {_budget_text(budget)}", transform=ax.get_xaxis_transform(),
        color=BUDGET_COLOUR, va="bottom", ha="center", fontsize=9,
    )  # fmt: skip
    ax.set_title(figure_title(trials, title), pad=18, fontsize=11)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    fig.text(0.01, -0.01, counts(trials) + "; #N: OUT/trials/NNNN, a row of trials.csv", fontsize=8, color="#444444")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _draw_measured(ax, trials, budget: Budget) -> None:
    measured = [t for t in trials if is_measured(t)]
    chosen = choose(trials, budget)
    for ok, colour, name in ((True, MEETS_COLOUR, "meets the budget"), (False, MISSES_COLOUR, "misses the budget")):
        group = [t for t in measured if meets(t, budget) == ok]
        if group:
            ax.plot(
                [latency(t) for t in group], [100 * t.val_accuracy for t in group], "o",
                color=colour, markersize=7, label=f"{name} (measured)", zorder=3,
            )  # fmt: skip
    names: dict = {}  # trials at the same point share one label: "#0,6"
    for t in measured:
        names.setdefault((latency(t), 100 * t.val_accuracy), []).append(str(t.number))
    for point, numbers in names.items():
        ax.annotate("#" + ",".join(numbers), point, xytext=(4, 4), textcoords="offset points", fontsize=7,
                    color="#555555")  # fmt: skip
    front = pareto_front(trials)
    if front:
        # Drawn on to the slowest measured trial: nothing slower is more accurate than the front's last point.
        xs = [latency(t) for t in front] + [max(latency(t) for t in measured)]
        ys = [100 * t.val_accuracy for t in front] + [100 * front[-1].val_accuracy]
        ax.step(xs, ys, where="post", color=MEETS_COLOUR, alpha=0.6, linewidth=1.5, label="Pareto front", zorder=2)
    if chosen:
        point = (latency(chosen), 100 * chosen.val_accuracy)
        name = (
            f"chosen #{chosen.number}: {describe(chosen.candidate)}\n"
            f"{point[1]:.1f} % val accuracy, {_ms(point[0])} ({chosen.measurement.artifact})"
        )
        ax.plot(*point, "*", color=CHOSEN_COLOUR, markeredgecolor="black", markersize=18, label=name, zorder=4)
    elif measured:
        ax.text(0.02, 0.04, "no measured trial meets the budget", transform=ax.transAxes, fontsize=9, color="black")
    if not measured:
        ax.text(0.5, 0.5, "no trial measured on the device yet", transform=ax.transAxes, ha="center", fontsize=10)
    ax.set_ylabel("validation accuracy (%)")


def _draw_pruned(strip, trials) -> None:
    pruned = [t for t in trials if t.status == PRUNED and _finite(t.predicted_ms) and t.predicted_ms > 0]
    if pruned:
        strip.plot(
            [t.predicted_ms for t in pruned], [0.0] * len(pruned), "o", markerfacecolor="none",
            markeredgecolor=PRUNED_COLOUR, markersize=8, markeredgewidth=1.5, linestyle="none",
            label=f"pruned (predicted): {len(pruned)} never trained",
        )  # fmt: skip
        strip.legend(loc="upper left", fontsize=8, framealpha=0.9)
    else:
        strip.text(0.5, 0.5, "no candidate pruned", transform=strip.transAxes, ha="center", va="center", fontsize=8)
    strip.set_ylim(-1, 1)
    strip.set_yticks([])
    strip.set_ylabel("pruned", fontsize=8)


def _scale(ax, xs) -> None:
    """Log latency when the points span more than 30x, with room around them; the label says which."""
    xs = [x for x in xs if _finite(x) and x > 0]
    lo, hi = min(xs), max(xs)
    log = hi / lo > 30
    if log:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.set_xlim(lo / 1.4, hi * 1.4)
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        pad = (hi - lo) * 0.08 or hi * 0.1
        ax.set_xlim(max(lo - pad, 0), hi + pad)
    ax.set_xlabel(f"measured latency, p50 of invoke (ms{', log scale' if log else ''}); pruned: predicted")
