"""Format, precision and model names are spelled in their tables only: `edgecls.runtime.formats` and the
model registry (`edgecls.models`). A module that writes one by hand (in a help text, a branch, a record)
drifts when the table changes; these modules build theirs from the table's entries instead."""

import ast
import re
from pathlib import Path

import pytest

from edgecls.models import list_models
from edgecls.runtime.formats import ARTIFACT_FORMATS, FP16, FP32, INT8

ROOT = Path(__file__).resolve().parents[1]


def _spelled_by_hand(text: str) -> list:
    """The table names in one string literal: an artifact format's, a precision (the whole string), a model's."""
    return (
        [name for name in ARTIFACT_FORMATS if name in text]
        + [precision for precision in (FP32, FP16, INT8) if text == precision]
        + [model for model in list_models() if re.search(rf"\b{re.escape(model)}\b", text)]
    )


@pytest.mark.parametrize(
    "module",
    ["edgecls/commands/convert.py", "edgecls/commands/tune.py", "edgecls/bench_report.py", "edgecls/bench_keras.py"],
)
def test_format_precision_and_model_names_come_from_their_tables(module):
    found = [
        f"{module}:{node.lineno} {names}"
        for node in ast.walk(ast.parse((ROOT / module).read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        for names in [_spelled_by_hand(node.value)]
        if names
    ]
    assert found == []
