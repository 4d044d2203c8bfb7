"""benchmarks/bench_reference.py --report-only: RESULTS.md from the committed results, hand-written sections kept."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

RESULTS = REPO / "benchmarks" / "results"


@pytest.mark.parametrize("openvino_rows", [True, False])
def test_report_only_keeps_the_sections_it_does_not_write_and_claims_only_the_rows_there(tmp_path, openvino_rows):
    """The committed results (with OpenVINO rows), and the same without them: no row is claimed that the JSON lacks."""
    for name in ("digits", "mobilenetv2-224"):
        for run in (1, 2):
            doc = json.loads((RESULTS / f"bench_{name}_run{run}.json").read_text())
            if not openvino_rows:
                doc["records"] = [r for r in doc["records"] if r.get("engine") != "openvino"]
            assert any(r.get("engine") == "openvino" for r in doc["records"]) is openvino_rows
            (tmp_path / f"bench_{name}_run{run}.json").write_text(json.dumps(doc))
    hand = "## Backbones\n\nWritten by hand: four backbones side by side.\n"
    (tmp_path / "RESULTS.md").write_text("# edgecls bench: reference results\n\n## Results\n\nold numbers\n\n" + hand)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_reference", "--report-only", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.endswith("\n" + hand) and text.count("## Backbones") == 1
    assert "old numbers" not in text and text.count("## Results") == 1  # its own sections are rewritten
    assert ("@openvino" in text) is openvino_rows
