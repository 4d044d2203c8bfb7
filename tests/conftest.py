import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, image_bgr: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, image_bgr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): the whole suite gets tests/parallel.py's worker count. A run that names its
    tests (`pytest tests/test_x.py`), or only collects, stays in this one process: one file does not start N
    TensorFlows. An explicit `-n N` or PYTEST_XDIST_AUTO_NUM_WORKERS wins."""
    from tests.parallel import workers

    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # pytest-xdist's own hook reads it
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.collectonly
    return workers() if whole_suite else 0


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Group what cannot be split over pytest-xdist workers, longest unit first (tests/parallel.py), before
    pytest-xdist reads the xdist_group marks; then, in a worker, check that the groups took (xdist renamed each
    grouped test `nodeid@group`). With pytest 9.2 and pytest-xdist 3.8 they silently did not: every test became a
    unit of its own, module fixtures were rebuilt on each worker, the README's sections rerun on three, and tests
    that build on earlier ones saw a fresh fleet."""
    from tests.parallel import assign_groups, ungrouped

    assign_groups(items)
    result = yield
    if os.environ.get("PYTEST_XDIST_WORKER") and config.getoption("loadgroup", False):
        lost = ungrouped(items)
        if lost:
            raise pytest.UsageError(
                f"pytest-xdist's loadgroup ignored the xdist_group marks (e.g. {lost[0]}): this pytest "
                f"{pytest.__version__} and pytest-xdist do not work together; install the dev extra's versions"
            )
    return result


@pytest.fixture(autouse=True)
def pi_rootfs_turn(request):
    """A test that reads the emulated Pi's rootfs from outside test_arm64_pi.py (tests/parallel.py finds them)
    waits until no other test has it started (tests/emulated_pi.py)."""
    from tests.parallel import READS_PI_ROOTFS

    if not request.node.stash.get(READS_PI_ROOTFS, False):
        yield
        return
    from tests.emulated_pi import in_use

    with in_use():
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_cache(tmp_path_factory):
    """Built-in datasets and unpacked .tar bundles go under temp folders, not the user's cache."""
    os.environ["EDGECLS_DATA"] = str(tmp_path_factory.mktemp("edgecls-data"))
    os.environ["EDGECLS_BUNDLE_CACHE"] = str(tmp_path_factory.mktemp("bundle-cache"))  # unpacked .tar bundles


# Each fixture class has its own pure colour (BGR) as well as its shape, so a tiny model learns it in seconds
# and a swapped channel order (red <-> blue) changes its answers: tests can see a wrong tensor.
FIXTURE_COLOURS = {"circle": (0, 0, 255), "square": (0, 200, 0), "triangle": (255, 0, 0)}


def render_fixture_image(kind: str, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A BGR image: textured background with one shape of `kind` in its class colour."""
    import cv2

    from edgecls.core.datasets.shapes import _background, _polygon

    image = _background(rng, size)
    r = rng.uniform(0.3, 0.42) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = FIXTURE_COLOURS[kind]
    if kind == "circle":
        cv2.circle(image, (int(cx), int(cy)), int(r), colour, -1, cv2.LINE_AA)
    else:
        pts = np.round(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * np.pi))).astype(np.int32)
        cv2.fillPoly(image, [pts], colour, cv2.LINE_AA)
    return image


def _fixture_cache(tmp_path_factory) -> Path | None:
    """Where session fixtures are built once: EDGECLS_TEST_FIXTURE_CACHE, else (under pytest-xdist) a folder that
    every worker of this run shares, beside the workers' own base temps; None: build per session."""
    cache = os.environ.get("EDGECLS_TEST_FIXTURE_CACHE")
    if cache:
        return Path(cache)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.getbasetemp().parent / "fixture-cache"
    return None


@contextlib.contextmanager
def _exclusive(lock: Path):
    """Hold an exclusive flock on `lock` (made if missing): other processes of this run wait their turn."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def _session_folder(tmp_path_factory, name: str, build, copy: bool = True) -> Path:
    """A folder that build(folder) fills, once per session; with a fixture cache (_fixture_cache), once per cache.

    Mutation testing (benchmarks/mutation.py) runs one short pytest session per mutant and builds its
    EDGECLS_TEST_FIXTURE_CACHE from unmutated code first; pytest-xdist workers share one cache per run, the
    first to arrive building while the others wait on its lock. Each session gets its own copy, so a test (or a
    mutant) writing into it cannot spoil the next; the dataset is not copied, since the trained run records its
    path.
    """
    cache = _fixture_cache(tmp_path_factory)
    if cache is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    cached, done = cache / name, cache / f"{name}.complete"
    with _exclusive(cache / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            build(cached)
            done.touch()
    if not copy:
        return cached
    out = tmp_path_factory.mktemp(name)
    shutil.copytree(cached, out, dirs_exist_ok=True, symlinks=True)
    return out


def _write_shapes(root: Path) -> None:
    rng = np.random.default_rng(0)
    suffixes = [".png", ".jpg", ".bmp", ".webp"]
    for kind in FIXTURE_COLOURS:
        for i in range(24):
            write_image(root / kind / f"{i:03d}{suffixes[i % 4]}", render_fixture_image(kind, rng, 40))


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """A small class-per-folder dataset of generated shapes (3 classes x 24 images, mixed formats)."""
    return _session_folder(tmp_path_factory, "shapes-small", _write_shapes, copy=False)


def require_tool(*names: str, package: str) -> str:
    """The path of the first of `names` on PATH. Missing: skip here, but fail under CI (CI=true), which installs it."""
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        why = f"{names[0]} is not installed (Debian package `{package}`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


def can_unshare(*flags: str) -> bool:
    """Whether this process may make the namespaces `flags` name (`unshare --mount`, ...): root with unshare."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes (None for folders): equal snapshots mean nothing was lost."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def make_home_like(home: Path) -> Path:
    """A folder that is not ours and must never be replaced: Documents/ and a dotfile."""
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.txt").write_text("years of work")
    (home / ".bashrc").write_text("export PATH=$HOME/bin:$PATH\n")
    return home


def train_on_private_copy(shapes_folder: Path, folder: Path) -> tuple:
    """A 16 px, one-epoch run on a copy of the shapes folder that the test may change; returns (run, data)."""
    from edgecls.train import TrainConfig, train

    data = folder / "data"
    shutil.copytree(shapes_folder, data)
    out = folder / "run"
    train(
        TrainConfig(
            data=str(data), out=str(out), image_size=16, epochs=1, seed=0, model_options={"widths": (8,)}, verbose=0
        )
    )
    return out, data


def cli_error(result, single: bool = True) -> str:
    """The CLI's last `error:` line, after checking it failed cleanly: exit 1, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert lines and (len(lines) == 1 or not single), result.stderr[-2000:]
    return lines[-1]


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real `edgecls` entry point in a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgecls.cli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory, shapes_folder) -> Path:
    """A real (tiny) trained run: 3 shape classes at 32x32, trained well above chance (about 0.9 test accuracy)."""
    from edgecls.train import TrainConfig, train

    def build(folder: Path) -> None:
        train(
            TrainConfig(
                data=str(shapes_folder),
                out=str(folder / "tiny"),
                image_size=32,
                epochs=8,
                batch_size=8,
                seed=0,
                model_options={"widths": (8, 16)},
                verbose=0,
            )
        )

    return _session_folder(tmp_path_factory, "run", build) / "tiny"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_run_dir) -> Path:
    """The tiny run converted to every format (real TF conversions, verified in LiteRT and ONNX Runtime)."""
    from edgecls.converters.pipeline import ConvertOptions, convert

    def build(folder: Path) -> None:
        convert(tiny_run_dir, folder / "tiny-bundle", ConvertOptions(calibration_size=32, max_drop=100.0, tar=True))

    return _session_folder(tmp_path_factory, "bundle", build) / "tiny-bundle"


class StraySignal(BaseException):
    """SIGTERM or SIGHUP reached the pytest process itself while no code under test had a handler for it.
    A BaseException: code under test that catches Exception (a smoke test, a reload) must not swallow it."""


def _stray_signal(signum, frame):
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process as before (`timeout`, `kill`, CI's cancel)
    raise StraySignal(
        f"{signal.Signals(signum).name} reached the pytest process {os.getpid()} itself while the test had no "
        "handler for it: a test or the code under test signalled the wrong process (it would have ended this worker)"
    )


@pytest.fixture(autouse=True)
def _default_signal_dispositions():
    """Every test starts with SIGINT as a fresh Python has it, SIGTERM and SIGHUP caught: a disposition left
    ignored by an earlier test in the same worker is inherited by every process a later test starts, which then
    never stops on the signal it is sent (four interrupt tests timed out that way in one whole-suite run). A
    handler is not inherited across exec (children get the default), and a stray SIGTERM or SIGHUP fails the test
    that was running, with its traceback, instead of killing the worker silently (one did in CI, which then hung)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for number in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, _stray_signal)
    yield
