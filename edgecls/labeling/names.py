"""Class names a person types become folder names under CAPTURES: refuse what is not one plain folder name."""

from __future__ import annotations

import unicodedata

from edgecls.runtime.errors import EdgeclsError

MAX_NAME = 100
MAX_NAME_BYTES = 255  # what a folder name may hold on ext4, xfs, btrfs


def check_label(name) -> str:
    """`name` if it can be a class folder of CAPTURES; otherwise one line saying what is wrong and what to type."""
    if not isinstance(name, str) or not name.strip():
        raise EdgeclsError("a class name is needed: type one, such as `cat`")
    if name != name.strip():
        raise EdgeclsError(f"class name {name!r} starts or ends with a space: type it without")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise EdgeclsError(f"class name {name!r} holds a control character: type letters, digits, '-' or '_'")
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name:
        raise EdgeclsError(f"class name {name!r} is not one folder name (no '/', '\\' or '..'): type a plain name")
    if name.startswith("."):
        raise EdgeclsError(f"class name {name!r} starts with '.', which training ignores: type a name without it")
    if len(name) > MAX_NAME:
        raise EdgeclsError(f"class name is {len(name)} characters long: keep it under {MAX_NAME}")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise EdgeclsError(
            f"class name is {len(name.encode('utf-8'))} bytes long in UTF-8 (a folder name holds {MAX_NAME_BYTES}): "
            "type a shorter one"
        )
    return name


def same_class(name: str, existing) -> str:
    """The folder `name` labels into: an existing class it equals once both are NFC-normalized (a keyboard may type
    `café` decomposed), else `name` NFC-normalized; refused when it differs from an existing class only by case
    (`Circle` beside `circle` would split one class in two, and merge again on a case-insensitive disk)."""
    name = unicodedata.normalize("NFC", name)
    for other in existing:
        if unicodedata.normalize("NFC", other) == name:
            return other
    for other in existing:
        if unicodedata.normalize("NFC", other).casefold() == name.casefold():
            raise EdgeclsError(f"class name {name!r} differs from the class {other!r} only by case: type {other!r}")
    return name
