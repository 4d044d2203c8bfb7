"""The terminal table of a bench document: one row per artifact and thread count."""

from __future__ import annotations

P99_MIN_RUNS = 100  # below this many samples a p99 is about the slowest run: tables mark it


def few_runs(record: dict) -> bool:
    """Whether the record's p99 stands on fewer than P99_MIN_RUNS samples (then it is about the maximum)."""
    runs = record.get("p99_runs", record.get("runs"))
    return runs is not None and runs < P99_MIN_RUNS


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0f}%"


COLUMNS = (
    ("artifact", lambda r: r["artifact"]),
    ("thr", lambda r: str(r["threads"] or "def")),
    ("p50", lambda r: _ms(r.get("p50_ms"))),
    ("p90", lambda r: _ms(r.get("p90_ms"))),
    ("p99", lambda r: _ms(r.get("p99_ms")) + ("*" if few_runs(r) else "")),
    ("std", lambda r: _ms(r.get("std_ms"))),
    ("spread", lambda r: _pct(r.get("round_spread_pct", r.get("p50_spread_pct")))),
    ("frame p50", lambda r: _ms(r.get("frame_p50_ms"))),
    ("overhead", lambda r: _pct(r.get("overhead_pct_of_invoke"))),
    ("load", lambda r: _ms(r.get("load_ms"))),
    ("1st", lambda r: _ms(r.get("first_inference_ms"))),
    ("RSS MB", lambda r: "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"),
    ("MB", lambda r: f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") else "-"),
    ("GMAC/s", lambda r: "-" if r.get("gmacs_per_s") is None else f"{r['gmacs_per_s']:.1f}"),
    ("acc", lambda r: "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"),
)


def rows(doc: dict) -> list:
    return [[cell(r) for _, cell in COLUMNS] for r in doc["records"]]


def latency_note(s: dict) -> str:
    """How the p50 and its spread were obtained, from a bench document's settings (the table's and Markdown's)."""
    rounds = (s.get("latency") or {}).get("rounds")
    if not rounds:
        return (
            f"p50/p90/p99 pooled over {s.get('repeats')} repeat(s) of up to {s.get('runs')} runs; "
            f"spread = (max-min)/median of the per-repeat p50s"
        )
    how = (
        f"p50 = median of {rounds} round medians of an interleaved pass (every row in one process, rounds "
        f"A,B,C,A,B,C... of up to {s['latency'].get('runs_per_round')} runs), p90/p99 of as many samples "
        f"from each round; "
        f"spread = (max-min)/median of the round medians; load, 1st, RSS, frame and acc from "
        f"{s.get('repeats')} fresh process(es) per row"
    )
    failed = s["latency"].get("interleaved_failed_threads")
    if failed:
        shown = ",".join(str(t) if t else "default" for t in failed)
        how += f" (the pass failed at threads={shown}: there every figure is the fresh processes')"
    return how


def format_table(doc: dict) -> str:
    """Latencies in ms (invoke unless 'frame'); spread: of the per-repeat p50s; overhead: preprocess + top-k
    vs invoke."""
    header = [name for name, _ in COLUMNS]
    body = rows(doc)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    m = doc.get("machine", {})
    lines.append(
        f"machine: {m.get('hostname')}: {m.get('cpu')}, {m.get('cores')} cores ({m.get('cores_usable')} usable), "
        f"{m.get('arch')}, {m.get('os')}, {m.get('python')}, load {m.get('load_average')}"
    )
    if m.get("emulated"):
        lines.append(f"EMULATED ({m['emulated']}): these timings are not those of a real {m.get('arch')} device")
    how = latency_note(doc.get("settings", {}))
    lines.append(
        f"ms per call; {how}; frame = decode+preprocess+invoke+top-k; "
        f"overhead = preprocess+top-k (decode excluded) vs invoke"
    )
    if any(few_runs(r) for r in doc["records"]):
        lines.append(f"* p99 from fewer than {P99_MIN_RUNS} runs: it is the slowest run or close to it")
    return "\n".join(lines)
