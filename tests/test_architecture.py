"""The layers hold (import-linter's contracts in pyproject.toml, mapped in docs/architecture.md).

Each contract is also shown to fail: a copy of the package's .py files (links resolved) with one import added
that breaks it, linted with the copy first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = "runtime imports nothing above it, never TensorFlow or Keras"
CONVERTERS = "converters never import training or app modules"
DEVICES = "devices never import training, app modules or converters"
VERSION = "devices take edgecls's version from package metadata"
ONE_NAMESPACE = "edgecls imports runtime, converters and devices by their edgecls names only"
CYCLES = "no import cycles inside edgecls"
LAYERS = "layers of edgecls, every top-level module placed"
CONTRACTS = (RUNTIME, CONVERTERS, DEVICES, VERSION, ONE_NAMESPACE, CYCLES, LAYERS)


def lint_imports(cwd: Path, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "300"}  # one line per contract
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)  # before the editable install's finder
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def verdicts(done: subprocess.CompletedProcess) -> dict:
    """contract name -> "KEPT" or "BROKEN", from lint-imports' summary."""
    found = {}
    for line in done.stdout.splitlines():
        for name in CONTRACTS:
            if line.startswith(name + " ") and line.split()[-1] in ("KEPT", "BROKEN"):
                found[name] = line.split()[-1]
    return found


def test_lint_imports_keeps_every_contract_on_the_tree():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert verdicts(done) == dict.fromkeys(CONTRACTS, "KEPT"), done.stdout[-4000:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The package's .py files, with edgecls/runtime, converters and devices copied through their links."""
    tree = tmp_path_factory.mktemp("pristine")
    shutil.copytree(
        ROOT / "edgecls",
        tree / "src" / "edgecls",
        symlinks=False,
        ignore=lambda folder, names: [
            n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir() or n == "__pycache__"
        ],
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.fixture
def tree(pristine, tmp_path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(pristine, copy)
    return copy


def inject(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / "edgecls" / module
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_copy_keeps_every_contract_before_an_import_is_added(tree):
    done = lint_imports(tree, tree / "src")
    assert done.returncode == 0 and verdicts(done) == dict.fromkeys(CONTRACTS, "KEPT"), done.stdout[-4000:]


BROKEN_IMPORTS = [
    # (file, the line added, the contract it breaks, what lint-imports reports)
    ("runtime/bundle.py", "import tensorflow", RUNTIME, "edgecls.runtime.bundle -> tensorflow"),
    ("runtime/daemon/sinks.py", "import keras", RUNTIME, "edgecls.runtime.daemon.sinks -> keras"),
    (
        "runtime/install/service.py",
        "from edgecls.devices import profiles",
        RUNTIME,
        "edgecls.runtime.install.service -> edgecls.devices",
    ),
    ("runtime/preprocess.py", "import edgecls.core.rundir", RUNTIME, "edgecls.runtime.preprocess -> edgecls.core"),
    (
        "converters/verify.py",
        "from edgecls.train import TrainConfig",
        CONVERTERS,
        "edgecls.converters.verify -> edgecls.train",
    ),
    ("converters/output.py", "import edgecls.evaluate", CONVERTERS, "edgecls.converters.output -> edgecls.evaluate"),
    ("devices/flash.py", "import edgecls.models", DEVICES, "edgecls.devices.flash -> edgecls.models"),
    (
        "devices/targets.py",
        "import edgecls.converters.formats",
        DEVICES,
        "edgecls.devices.targets -> edgecls.converters",
    ),
    ("devices/wheels.py", "from edgecls import __version__", VERSION, "edgecls.devices.wheels -> edgecls (l."),
    ("runtime/errors.py", "import edgecls.runtime.bundle", CYCLES, "No cycles are allowed in edgecls.runtime"),
    ("core/progress.py", "import edgecls.core.splits", CYCLES, "No cycles are allowed in edgecls.core"),
    ("core/metrics.py", "import edgecls.devices.sign", LAYERS, "edgecls.core.metrics -> edgecls.devices.sign"),
    ("converters/output.py", "import edgecls.devices.sign", LAYERS, "edgecls.converters.output -> edgecls.devices"),
    ("commands/__init__.py", "import edgecls.cli", LAYERS, "edgecls.commands -> edgecls.cli"),
    ("core/metrics.py", "import runtime.errors", ONE_NAMESPACE, "edgecls.core.metrics -> runtime (l."),
    ("commands/convert.py", "from converters import formats", ONE_NAMESPACE, "edgecls.commands.convert -> converters"),
    ("runtime/bundle.py", "import devices.profiles", ONE_NAMESPACE, "edgecls.runtime.bundle -> devices (l."),
]


@pytest.mark.parametrize("module, line, contract, reported", BROKEN_IMPORTS, ids=[b[0] for b in BROKEN_IMPORTS])
def test_an_import_across_a_layer_breaks_its_contract(tree, module, line, contract, reported):
    inject(tree, module, line)
    done = lint_imports(tree, tree / "src")
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert verdicts(done)[contract] == "BROKEN", done.stdout[-4000:]
    assert reported in done.stdout.split("Broken contracts", 1)[1], done.stdout[-4000:]


def test_a_new_top_level_module_must_be_placed_in_a_layer(tree):
    (tree / "src" / "edgecls" / "newcomer.py").write_text('"""Not yet in the layers contract."""\n')
    done = lint_imports(tree, tree / "src")
    assert done.returncode == 1 and verdicts(done)[LAYERS] == "BROKEN", done.stdout[-4000:]
    assert "edgecls.newcomer" in done.stdout, done.stdout[-4000:]


def broken_section(done: subprocess.CompletedProcess, contract: str) -> str:
    """What lint-imports reports under `contract` in its broken contracts ("" when it is kept)."""
    lines = done.stdout.split("Broken contracts", 1)[-1].splitlines()
    starts = [i for i, line in enumerate(lines[:-1]) if line in CONTRACTS and set(lines[i + 1]) == {"-"}]
    for i, start in enumerate(starts):
        if lines[start] == contract:
            return "\n".join(lines[start : starts[i + 1] if i + 1 < len(starts) else len(lines)])
    return ""


# What each forbidden contract must forbid, held here rather than read from pyproject.toml: a list cut there fails
# the test below. The training and app modules (above converters and devices), and what only the train and convert
# extras install (a device has none of it).
TRAINING = (
    *("train", "tune", "distill", "models", "distributed", "callbacks", "quickstart", "explain", "evaluate"),
    *("plots", "bench_keras", "bench_remote", "bench_report", "commands", "cli"),
)
THIRD_PARTY_TRAINING = ("tensorflow", "keras", "tf_keras", "keras_tuner", "tf2onnx", "onnx", "sklearn", "matplotlib")
FORBIDDEN = {
    # contract: (the module that imports them all, what it may not import)
    RUNTIME: (
        "runtime/bundle.py",
        tuple(f"edgecls.{m}" for m in ("core", "converters", "devices", *TRAINING)) + THIRD_PARTY_TRAINING,
    ),
    CONVERTERS: ("converters/output.py", tuple(f"edgecls.{m}" for m in TRAINING)),
    DEVICES: ("devices/flash.py", tuple(f"edgecls.{m}" for m in ("converters", *TRAINING))),
}


@pytest.mark.parametrize("contract", list(FORBIDDEN), ids=["runtime", "converters", "devices"])
def test_every_module_a_layer_may_not_import_breaks_its_contract(tree, contract):
    module, forbidden = FORBIDDEN[contract]
    for name in forbidden:
        inject(tree, module, f"import {name}")
    done = lint_imports(tree, tree / "src")
    section = broken_section(done, contract)
    importer = "edgecls." + module.removesuffix(".py").replace("/", ".")
    layer = importer.rsplit(".", 1)[0]
    # each forbidden module has its own heading (a chain through another one may name it too)
    missed = [
        name
        for name in forbidden
        if f"{layer} is not allowed to import {name}:" not in section or f"{importer} -> {name} (l." not in section
    ]
    assert done.returncode == 1 and not missed, f"imported without breaking {contract!r}: {missed}\n{section}"


def test_an_indirect_import_of_training_code_breaks_the_converters_and_devices_contracts(tree):
    """converters and devices may import the core; a core module importing training code takes them above it."""
    inject(tree, "core/metrics.py", "import edgecls.train")
    inject(tree, "devices/flash.py", "import edgecls.core.metrics")  # converters/verify.py imports it already
    assert "edgecls.core.metrics" in (tree / "src" / "edgecls" / "converters" / "verify.py").read_text()
    done = lint_imports(tree, tree / "src")
    for contract, source in ((CONVERTERS, "edgecls.converters"), (DEVICES, "edgecls.devices")):
        section = broken_section(done, contract)
        assert verdicts(done)[contract] == "BROKEN", done.stdout[-4000:]
        assert f"{source} is not allowed to import edgecls.train" in section, section
        assert "edgecls.core.metrics -> edgecls.train (l." in section, section
