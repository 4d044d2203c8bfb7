"""Labels files as people have them: one label a line, or `INDEX LABEL` lines (Teachable Machine's labels.txt)."""

from __future__ import annotations

import re
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

_INDEXED = re.compile(r"^(\d+)\s+(\S.*)$")


def parse_labels(text: str, where: str = "labels") -> list:
    """The labels in `text`, in class-index order.

    Blank lines are skipped. When every line is `INDEX LABEL` and the indices are 0..N-1 (in any order),
    the indices give the order and are dropped; a label that is itself a number stays as it is.
    """
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise EdgeclsError(f"{where} holds no labels: write one label a line, in the model's class order")
    matches = [_INDEXED.match(line) for line in lines]
    if all(matches):
        indices = [int(m.group(1)) for m in matches]
        if sorted(indices) == list(range(len(lines))):
            by_index = dict(zip(indices, (m.group(2).strip() for m in matches)))
            lines = [by_index[i] for i in range(len(lines))]
    duplicates = sorted({label for label in lines if lines.count(label) > 1})
    if duplicates:
        raise EdgeclsError(f"{where} names {duplicates[0]!r} twice: each class needs its own label")
    return lines


def read_labels(path, count: int | None = None) -> list:
    """`parse_labels` of a file; `count`, when known, is the model's number of outputs and must match."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise EdgeclsError(f"labels file {path} does not exist: pass the model's labels with --labels FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgeclsError(f"cannot read labels file {path}: {exc} (it must be UTF-8 text, one label a line)") from None
    labels = parse_labels(text, f"labels file {path}")
    check_count(labels, count, str(path))
    return labels


def check_count(labels: list, count: int | None, where: str) -> None:
    if count is not None and len(labels) != count:
        raise EdgeclsError(
            f"{where} has {len(labels)} labels but the model has {count} outputs: "
            f"give one label per output, in the model's class order"
        )
