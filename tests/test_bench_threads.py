"""benchmarks/threads.py: a cell that fails is left out with a plain line, and every other cell is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_bench import _broken_openvino


def test_a_failing_cell_is_left_out_in_a_plain_line_and_the_others_are_written(tiny_bundle, tmp_path):
    """OpenVINO installed but not importable: its cells fail (a plain line naming the row and why, not a Python
    list), the ONNX Runtime cells are still measured and written to OUT.txt and OUT.json, and the exit is 1."""
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgecls[openvino]'")
    out = tmp_path / "threads"
    args = ["--artifacts", "onnx-int8", "--threads", "1", "--load", "0", "--cores", "1", "--rounds", "2", "--runs", "5"]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "threads.py"), str(tiny_bundle), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_broken_openvino(tmp_path),
    )
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    errors = [line for line in done.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "onnx-int8 openvino threads=1: openvino could not load onnx-int8" in errors[0]
    assert "['" not in done.stdout + done.stderr
    cells = json.loads((out.parent / "threads.json").read_text())["cells"]
    measured = {c["row"]: c for c in cells if "p50_ms" in c}
    assert sorted(measured) == ["onnx-int8 onnxruntime spin=0", "onnx-int8 onnxruntime spin=1"]
    assert all(len(c["round_p50s_ms"]) == 2 for c in measured.values())
    assert [c["row"] for c in cells if c.get("failed")] == ["onnx-int8 openvino"]
    assert "failed: 1 cores, load 0: onnx-int8 openvino threads=1" in (out.parent / "threads.txt").read_text()
