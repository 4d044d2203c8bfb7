"""Labels files as people have them: one label a line, or `INDEX LABEL` lines (Teachable Machine's labels.txt)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from edgecls.runtime.errors import EdgeclsError

_INDEXED = re.compile(r"^(\d+)\s+(\S.*)$")
MAX_LABEL = 200  # characters: a label names a class (and a folder of --data, a file of a work run)


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
    return check_labels(lines, where)


def check_labels(labels: list, where: str = "labels") -> list:
    """`labels` as they are, refused when one could not name a class folder or file safely: a path separator,
    a control character (a line break inside a label included), '.' or '..', over MAX_LABEL characters, or a
    label named twice. The model's own label lists are checked as they are, never joined and parsed again."""
    for label in labels:
        why = _unsafe(str(label))
        if why:
            raise EdgeclsError(
                f"{where} has the label {str(label)[:40]!r} that {why}: each label must be a name of at most "
                f"{MAX_LABEL} characters, without / \\ or control characters"
            )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise EdgeclsError(f"{where} names {duplicates[0]!r} twice: each class needs its own label")
    return list(labels)


def _unsafe(label: str) -> str:
    """Why `label` cannot name a class folder or file ("" when it can)."""
    if len(label) > MAX_LABEL:
        return f"is over {MAX_LABEL} characters long"
    bad = next((c for c in label if c in "/\\" or unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        return f"holds {bad!r}"
    return "is not a name" if label.strip() in ("", ".", "..") else ""


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
