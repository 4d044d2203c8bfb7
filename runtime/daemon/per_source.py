"""Per-source settings from `edgecls run`'s three layers -> one SourceConfig per source, in order.

    [sources.door]                     # --config FILE: a table per source, its key the source's name
    uri = "rtsp://cam/door"
    rotate = 180
    --source door=rtsp://cam/door      # the command line (or EDGECLS_RUN_SOURCE): NAME=URI names a source
    --set door.rotate=180              # one setting of one source; KEY=VALUE alone: of every source

A --source list (command line, variable, or `source = [...]` in the file) replaces the file's tables as the list
of sources to run, as --source always replaced the file's list; a NAME=URI whose NAME has a table keeps the
table's settings. Key by key the command line wins: the table, then `--set KEY=VALUE`, then `--set NAME.KEY=VALUE`.
Here the text is parsed and each value typed; SourceConfig checks the values themselves.
"""

from __future__ import annotations

import difflib
import logging
import os
import re

from edgecls.runtime.daemon.source_config import SOURCE_NAME, SourceConfig
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.redact import redact

log = logging.getLogger("edgecls.daemon")

# key (as in the TOML table and after NAME. in --set) -> SourceConfig field
FIELDS = {
    "uri": "uri",
    "roi": "roi",
    "rotate": "rotate",
    "flip": "flip",
    "max_fps": "max_fps",
    "threshold": "threshold",
    "smooth": "smooth",
    "capture.below": "capture_below",
    "capture.every": "capture_every",
}
TEXT = ("uri", "flip")
KEY_HEADS = {key.split(".")[0] for key in FIELDS}  # a source may not be named as a key: `--set capture.below=`
SET_HELP = "write NAME.KEY=VALUE (door.rotate=180), or KEY=VALUE for every source"
_INT = re.compile(r"[+-]?\d+")


def split_source(text: str) -> tuple:
    """`--source` text -> (name or None, uri). NAME=URI when the text before the first `=` is a name (a letter, then
    letters, digits, _ or -: no `:`, `/` or `.`) and the whole text is no existing file or folder; so
    `rtsp://h/s?token=x` stays a URI, and so does a file named `file=a.mp4` (or write it `./file=a.mp4`)."""
    name, sep, uri = str(text).partition("=")
    if not sep or not SOURCE_NAME.fullmatch(name) or os.path.exists(text):
        return None, str(text)
    if not uri.strip():
        raise EdgeclsError(f"--source {text}: give the source after the name: NAME=URI (door=rtsp://cam/door)")
    return name, uri


def parse_set(text: str) -> tuple:
    """`--set` text -> (name or None, key, value text). What comes before the first `.` is a key (rotate=180,
    capture.below=0.6: every source) or else a source's name (door.rotate=180). Errors show NAME.KEY only: the
    value may be a URI holding a password."""
    left, sep, value = str(text).partition("=")
    left = left.strip()
    shown = f"--set {shown_text(redact(left))}"
    if not sep or not left:
        raise EdgeclsError(f"{shown}: {SET_HELP}")
    if left.split(".", 1)[0].replace("-", "_") in KEY_HEADS:
        name, key = None, left
    else:
        name, _, key = left.partition(".")
        if not key:
            raise EdgeclsError(f"{shown}: unknown key{_nearest(left)}; {SET_HELP}")  # shown: no password
    key = key.replace("-", "_")
    if key not in FIELDS:
        raise EdgeclsError(f"{shown}: unknown key {shown_text(key)}{_nearest(key)}")
    if key == "uri":
        raise EdgeclsError(f"{shown}: a source's URI is given with --source NAME=URI")
    return name, key, value.strip()


def shown_text(text: str) -> str:
    """A name or key as an error line shows it: quoted when it holds a line break or another control character,
    so a name from a file cannot add a line (`error: ...`) of its own."""
    return text if text.isprintable() else repr(text)


def table_values(name: str, table) -> dict:
    """One `[sources.NAME]` table (or `NAME = "URI"`) -> {key: value}, `capture = {below = ...}` flattened."""
    if not SOURCE_NAME.fullmatch(str(name)):
        raise EdgeclsError(
            f"[sources.{shown_text(str(name))}]: a source name is up to 64 letters, digits, _ and -, starting with a "
            "letter (door, cam-2)"
        )
    if isinstance(table, str):
        return {"uri": table}
    if not isinstance(table, dict):
        raise EdgeclsError(f"[sources.{name}]: give a table of settings, or the source's URI as a string")
    values = {}
    for key, value in table.items():
        key = key.replace("-", "_")
        if key == "capture" and isinstance(value, dict):
            values.update({f"capture.{k.replace('-', '_')}": v for k, v in value.items()})
        else:
            values[key] = value
    unknown = [key for key in values if key not in FIELDS]
    if unknown:
        raise EdgeclsError(f"source {name}: unknown key {shown_text(unknown[0])}{_nearest(unknown[0])}")
    return values


def resolve(sources, sets, tables, camera) -> tuple:
    """The three layers -> one SourceConfig per source, in the order given (the file's order for its tables).
    sources: `--source` texts; sets: `--set` texts; tables: the file's `[sources.NAME]` tables by name; camera: the
    device profile's camera, the one source when nothing names any."""
    tables = {name: table_values(name, table) for name, table in (tables or {}).items()}
    if sources:
        entries = [split_source(text) for text in sources]
        chosen = [(name, {**(tables.get(name, {}) if name else {}), "uri": uri}) for name, uri in entries]
        left = [name for name in tables if name not in {name for name, _ in entries}]
        if left:  # as --source always replaced the file's list; said, since a misspelt NAME would be silent
            log.warning(
                "--source replaces the --config file's sources: %s not run%s",
                ", ".join(left),
                _hint(entries, tables, left),
            )
    elif tables:
        chosen = list(tables.items())
    else:
        chosen = [(None, {"uri": camera})]
    names = [name for name, _ in chosen if name is not None]
    for name in names:
        if name.replace("-", "_") in KEY_HEADS:
            raise EdgeclsError(f"source name {name} is also a setting's key (--set {name}=...): choose another name")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise EdgeclsError(f"source name {twice[0]} is given twice: name each source once")
    every, scoped = _sets(sets, names)
    return tuple(_source(name, {**values, **every, **scoped.get(name, {})}) for name, values in chosen)


def _hint(entries, tables, left) -> str:
    """For each --source NAME=URI without a table whose NAME is close to a table left out: the name it may mean."""
    hints = []
    for name, _ in entries:
        match = difflib.get_close_matches(name, left, 1) if name and name not in tables else []
        if match:
            hints.append(f"; --source {name}=... has no [sources.{name}] table: did you mean {match[0]}?")
    return "".join(hints)


def _sets(sets, names) -> tuple:
    """`--set` texts -> ({key: value} for every source, {name: {key: value}}); a key set twice is refused."""
    every, scoped = {}, {}
    for text in sets or ():
        name, key, value = parse_set(text)
        shown = f"--set {shown_text(key if name is None else f'{name}.{key}')}"
        if name is not None and name not in names:
            known = f" (named sources: {', '.join(names)})" if names else " (no source is named: --source NAME=URI)"
            hint = difflib.get_close_matches(name, names, 1)
            raise EdgeclsError(
                f"{shown}: no source is named {shown_text(name)}{known}"
                + (f"; did you mean {hint[0]}?" if hint else "")
            )
        target = every if name is None else scoped.setdefault(name, {})
        if key in target:
            raise EdgeclsError(f"{shown} is given twice: keep one")
        target[key] = value
    return every, scoped


def layered_sets(*layers) -> list:
    """`--set` lists of the layers, lowest first (the --config file's `set`, EDGECLS_RUN_SET, the command line) ->
    one list in which a later layer's NAME.KEY (or KEY) replaces an earlier one's, key by key."""
    merged = {}
    for layer in layers:
        if isinstance(layer, str):  # set = "door.rotate=180" in the file: one setting
            layer = [layer]
        given = {}
        for text in layer or ():
            name, key, _ = parse_set(text)
            if (name, key) in given:
                shown = key if name is None else f"{name}.{key}"
                raise EdgeclsError(f"--set {shown_text(shown)} is given twice: keep one")
            given[(name, key)] = text
        for name_key, text in given.items():
            merged.pop(name_key, None)
            merged[name_key] = text
    return list(merged.values())


def _source(name, values: dict) -> SourceConfig:
    """SourceConfig(**typed values); a table without a uri, or a value of the wrong kind, in one line."""
    if "uri" not in values:
        raise EdgeclsError(f'source {name}: no uri: add uri = "rtsp://..." to [sources.{name}], or --source {name}=URI')
    uri = values["uri"]
    if isinstance(uri, int) and not isinstance(uri, bool):  # uri = 0: camera 0, as `source = [0]` reads it
        uri = str(uri)
    if not isinstance(uri, str):
        raise EdgeclsError(f"source {name}: uri {uri!r}: give the camera, stream, file or folder as a string")
    where = f"source {name or SourceConfig(uri).label}"
    typed = {FIELDS[key]: _typed(where, key, value) for key, value in {**values, "uri": uri}.items()}
    return SourceConfig(name=name, **typed)


def _typed(where: str, key: str, value):
    """A value from the command line (text) or the TOML file -> the type SourceConfig checks."""
    if key == "roi":
        return _roi(where, value)
    if key in TEXT:
        return value
    if isinstance(value, str):
        try:
            return int(value) if _INT.fullmatch(value.strip()) else float(value)  # "0" shown back as 0
        except ValueError:
            raise EdgeclsError(f"{where}: {key} {value!r} is not a number") from None
    return value  # a TOML number (or something else, refused by SourceConfig naming it)


def _roi(where: str, value):
    """`x,y,w,h` text ("0.5,0,0.5,0.5"; "0,0,64,48" = pixels) or a TOML array -> a tuple of numbers."""
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    parts = [part.strip() for part in value.strip().strip("[]()").split(",")]
    try:
        return tuple(int(part) if _INT.fullmatch(part) else float(part) for part in parts)
    except ValueError:
        raise EdgeclsError(
            f"{where}: roi {value!r}: give 4 numbers x,y,w,h (0.5,0,0.5,0.5: fractions; 640,0,640,360: pixels)"
        ) from None


def _nearest(key: str) -> str:
    hint = difflib.get_close_matches(key, list(FIELDS), 1, 0.5)
    return f" (did you mean {hint[0]}?)" if hint else f"; known keys: {', '.join(FIELDS)}"
