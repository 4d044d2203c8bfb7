"""edgecls.quickstart bench step (`_bench`): each artifact's figures are its own worker's."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from edgecls.quickstart import PLANS, _bench


def test_quickstart_bench_reports_each_artifacts_own_peak_rss_not_the_quickstarts(tiny_bundle, tmp_path):
    """The quickstart process holds TensorFlow and a dataset (~1 GB, here 1.5 GB of touched pages); each artifact
    is timed in a worker process of its own, so bench.json and bench.md must show that worker's peak RSS (a tiny
    model: well under 500 MB), not the parent's, which Linux's ru_maxrss carries across vfork + exec."""
    ballast = np.ones(1536 * 2**20 // 8)  # touched, so resident
    plan = dataclasses.replace(PLANS[("shapes", True)], keras_baseline=False, bench_runs=10, bench_budget_s=0.2)
    doc = _bench(tiny_bundle, tmp_path / "bench", plan)
    assert ballast.sum() > 0
    rss = {r["artifact"]: r["peak_rss_mb"] for r in doc["records"]}
    assert len(rss) >= 2 and all(0 < mb < 500 for mb in rss.values()), rss
    written = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {r["artifact"]: r["peak_rss_mb"] for r in written["records"]} == rss
    table = (tmp_path / "bench" / "bench.md").read_text()
    header = next(line for line in table.splitlines() if "peak RSS MB" in line)
    column = [c.strip() for c in header.split("|")].index("peak RSS MB")
    shown = [
        float([c.strip() for c in line.split("|")][column])
        for line in table.splitlines()
        if line.startswith("|") and re.search(r"\| *\d", line) and "peak RSS" not in line
    ]
    assert shown and all(mb < 500 for mb in shown), table
