"""benchmarks/*.py as scripts: they run for minutes, so a name defined below `if __name__ == "__main__":` fails only
at the end, after every timing was taken and before anything was written (daemon_throughput.py and onnx_int8.py
both lost a run to `NameError: cpu_name`)."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def test_every_benchmark_script_runs_main_only_after_everything_it_defines():
    late = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        body = ast.parse(path.read_text()).body
        guards = [i for i, node in enumerate(body) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        if guards and guards[-1] != len(body) - 1:
            late.append(f"{path.name}: {ast.unparse(body[guards[-1] + 1])[:60]!r} comes after the __main__ guard")
    assert not late, late
