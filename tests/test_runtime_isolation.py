"""runtime/ (edgecls.runtime) is what a device installs: it must never import TensorFlow or Keras, nor edgecls's
higher layers (lint-imports checks the static imports, tests/test_architecture.py; this imports them for real)."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FORBIDDEN = ("tensorflow", "keras", "tf_keras")
ABOVE = ("edgecls.core", "edgecls.converters", "edgecls.devices", "edgecls.commands", "edgecls.cli", "edgecls.train")


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
            "import_module",
            "__import__",
        ):
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value


def test_no_module_under_runtime_names_tensorflow_or_keras():
    offenders = []
    for path in sorted((REPO / "runtime").rglob("*.py")):
        for module in _imported_modules(path):
            if module.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}: {module}")
    assert not offenders, offenders
    assert list((REPO / "runtime").rglob("*.py")), "runtime/ has no modules to check"


def test_every_runtime_module_imports_with_tensorflow_blocked():
    """Import all of edgecls.runtime in a fresh interpreter where importing TF or Keras raises; no module of a
    higher layer gets loaded on the way."""
    modules = sorted(
        "edgecls." + ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "runtime").rglob("*.py")
    )
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {FORBIDDEN!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
for m in {modules!r}:
    importlib.import_module(m)
assert not any(k.split('.')[0] in {FORBIDDEN!r} for k in sys.modules)
above = sorted(k for k in sys.modules if k.startswith({ABOVE!r}))
assert not above, above
assert 'runtime' not in sys.modules, 'imported as a top-level package'
print('ok', len({modules!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
