"""tests/parallel.py and conftest's hooks: what shares a pytest-xdist worker really does, with the pytest and
pytest-xdist installed here."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

_PROBE = """
import os
import pytest

@pytest.fixture(scope="module")
def built():
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(f"built {os.environ.get('PYTEST_XDIST_WORKER')}\\n")

@pytest.mark.parametrize("n", range(6))
def test_shares_the_module_fixture(built, n):
    pass

@pytest.mark.parametrize("n", range(6))
def test_alone(n):
    pass
"""


def test_a_module_with_a_costly_module_fixture_runs_on_one_worker_and_builds_it_once(tmp_path):
    """The whole suite depends on it (the README's workspace, the rollout fleet): run with this checkout's conftest
    hooks on 3 workers, a module-scoped fixture is built once, and the ungrouped tests are spread over workers."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "test_probe.py").write_text(_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this checkout's addopts
    log = tmp_path / "built.log"
    env = {**os.environ, "PROBE_LOG": str(log), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-n", "3"]
        + ["--dist", "loadgroup", "-v", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert log.read_text().count("built") == 1, log.read_text()
    assert "test_shares_the_module_fixture[0]@test_probe.py" in done.stdout
    workers = {line.split()[0] for line in done.stdout.splitlines() if "PASSED" in line and "test_alone" in line}
    assert len(workers) >= 2, done.stdout[-3000:]
