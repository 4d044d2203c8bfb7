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


def _run_probe(tmp_path, *plugins) -> subprocess.CompletedProcess:
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "test_probe.py").write_text(_PROBE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not this checkout's addopts
    env = {**os.environ, "PROBE_LOG": str(tmp_path / "built.log"), "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    extra = [arg for plugin in plugins for arg in ("-p", plugin)]
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", *extra, "-p", "no:cacheprovider", "-n", "3"]
        + ["--dist", "loadgroup", "-v", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


_LOSES_THE_GROUPS = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:  # what pytest 9.2 does to pytest-xdist 3.8's renaming: it has no effect
        item._nodeid = item._nodeid.split("@")[0]
"""


def test_a_worker_whose_groups_did_not_take_stops_the_run_instead_of_splitting_them(tmp_path):
    (tmp_path / "loses_groups.py").write_text(_LOSES_THE_GROUPS)
    done = _run_probe(tmp_path, "loses_groups")
    assert done.returncode != 0 and " PASSED" not in done.stdout, done.stdout[-3000:]
    assert not (tmp_path / "built.log").exists()  # no test ran


def test_ungrouped_names_only_grouped_tests_xdist_did_not_rename():
    from types import SimpleNamespace

    from tests.parallel import ungrouped

    def item(nodeid, grouped):
        return SimpleNamespace(nodeid=nodeid, get_closest_marker=lambda name: grouped and name == "xdist_group")

    items = [item("a.py::t@a.py", True), item("a.py::u", True), item("b.py::v", False)]
    assert ungrouped(items) == ["a.py::u"]


def test_a_module_with_a_costly_module_fixture_runs_on_one_worker_and_builds_it_once(tmp_path):
    """The whole suite depends on it (the README's workspace, the rollout fleet): run with this checkout's conftest
    hooks on 3 workers, a module-scoped fixture is built once, and the ungrouped tests are spread over workers."""
    log = tmp_path / "built.log"
    done = _run_probe(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert log.read_text().count("built") == 1, log.read_text()
    assert "test_shares_the_module_fixture[0]@test_probe.py" in done.stdout
    workers = {line.split()[0] for line in done.stdout.splitlines() if "PASSED" in line and "test_alone" in line}
    assert len(workers) >= 2, done.stdout[-3000:]


def _run_with_this_checkouts_options(tmp_path, source: str) -> subprocess.CompletedProcess:
    """A probe module run on 2 workers with pyproject.toml's pytest options (addopts, timeout) and conftest's hooks."""
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "test_probe.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path)]
        + ["-p", "tests.conftest", "-p", "no:cacheprovider", "-n", "2", "-v", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


_SIGNALS_ITSELF = """
import os, signal, time

def test_first():
    time.sleep(0.5)

def test_signals_its_own_worker():
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(5)

def test_after_it():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)

def test_last():
    pass
"""


def test_a_stray_sighup_or_sigterm_fails_the_test_it_reached_and_the_worker_goes_on(tmp_path):
    """Unhandled, SIGHUP or SIGTERM ends a pytest-xdist worker with no word of why (CI lost a worker that way, then
    hung): conftest catches both in every test, which fails naming the signal; the workers run the rest."""
    done = _run_with_this_checkouts_options(tmp_path, _SIGNALS_ITSELF)
    out = done.stdout
    assert done.returncode == 1 and "crashed" not in out, out[-3000:]
    assert "SIGHUP reached the pytest process" in out and "SIGTERM reached the pytest process" in out, out[-3000:]
    assert "2 failed, 2 passed" in out, out[-3000:]


_DIES = """
import os, signal, time

def test_dies():
    os.kill(os.getpid(), signal.SIGKILL)

def test_slow_neighbour():
    time.sleep(2)
"""


def test_a_worker_that_dies_ends_the_run_naming_its_test_instead_of_starting_a_replacement(tmp_path):
    """--max-worker-restart=0: in CI a replacement for a dead worker ran nothing and the run waited for it until
    CI's limit killed it, with no summary. Now the run ends, and the summary names the test that was running."""
    done = _run_with_this_checkouts_options(tmp_path, _DIES)
    out = done.stdout
    assert done.returncode != 0 and "worker restarting disabled" in out, out[-3000:]
    assert "short test summary" in out and "test_dies" in out.split("short test summary")[-1], out[-3000:]
    assert "[gw2]" not in out  # no replacement worker was started (the path of the outer run may hold "gw2")


_HANGS = """
import time
import pytest

@pytest.mark.timeout(3)
def test_hangs():
    time.sleep(120)

def test_quick():
    pass
"""


def test_a_hung_test_fails_at_its_timeout_with_its_traceback_and_the_run_goes_on(tmp_path):
    done = _run_with_this_checkouts_options(tmp_path, _HANGS)
    out = done.stdout
    assert done.returncode == 1 and "1 failed, 1 passed" in out, out[-3000:]
    assert "Timeout (>3.0s)" in out, out[-3000:]
    assert "time.sleep(120)" in out  # where it hung


def test_the_long_units_get_the_long_timeout_and_the_rest_the_ini_one():
    """pyproject's `timeout` for every test; the README's and the emulated Pi's units, whose rootfs build and flash
    may take hours on a fresh machine, their own longer one."""
    from tests.parallel import LONG_UNIT_TIMEOUT_S, assign_groups

    class Item:
        def __init__(self, fspath):
            self.fspath, self.stash, self.marks, self.nodeid = fspath, {}, [], fspath + "::t"
            self.function, self._fixtureinfo = None, None

        def get_closest_marker(self, name):
            return next((m for m in self.marks if m.name == name), None)

        def add_marker(self, mark):
            self.marks.append(mark.mark if hasattr(mark, "mark") else mark)

    readme, plain = Item("tests/test_readme.py"), Item("tests/test_other.py")
    assign_groups([readme, plain])
    assert readme.get_closest_marker("timeout").args == (LONG_UNIT_TIMEOUT_S,)
    assert plain.get_closest_marker("timeout") is None  # pyproject's ini value applies
    assert LONG_UNIT_TIMEOUT_S >= (45 + 60 + 30) * 60  # rootfs build, flash --setup, bench: their own limits
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["timeout"] == 1800 and ini["timeout_method"] == "signal" and "--max-worker-restart=0" in ini["addopts"]
