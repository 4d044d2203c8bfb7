"""The contact sheet of the images where A and B disagree: each with the truth and both labels."""

from __future__ import annotations

import io
import math
from pathlib import Path

from edgecls.compare.stats import Comparison
from edgecls.runtime.atomic import write_bytes
from edgecls.runtime.errors import EdgeclsError

SHEET_MARK = "edgecls compare"  # in the PNG's Software chunk: a sheet of ours may be replaced, nothing else
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHEET_MAX = 60  # tiles on the sheet; the JSON lists every disagreement


def check_sheet_path(path) -> Path:
    """The contact sheet may replace only an earlier sheet of ours, never someone's file."""
    path = Path(path)
    if path.is_dir():
        raise EdgeclsError(f"--sheet {path} is a folder: give a file name, e.g. {path / 'disagreements.png'}")
    if path.exists():
        try:
            with path.open("rb") as f:
                head = f.read(65536)
        except OSError as exc:
            raise EdgeclsError(f"--sheet {path}: cannot read it ({exc.strerror}): choose another path") from None
        if not _is_our_sheet(head):
            raise EdgeclsError(f"--sheet {path} exists and is not a sheet edgecls compare wrote: choose another path")
    if not path.absolute().parent.is_dir():
        raise EdgeclsError(f"--sheet {path}: folder {path.absolute().parent} does not exist: create it first")
    return path


def _is_our_sheet(head: bytes) -> bool:
    """A PNG (its signature first) with a tEXt chunk Software = SHEET_MARK before its image data."""
    if not head.startswith(PNG_SIGNATURE):
        return False
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = int.from_bytes(head[at : at + 4], "big"), head[at + 4 : at + 8]
        if kind == b"tEXt" and head[at + 8 : at + 8 + length] == b"Software\0" + SHEET_MARK.encode():
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        at += 12 + length  # length, type, data, CRC
    return False


def write_sheet(result: Comparison, path) -> int:
    """The disagreements as a contact sheet PNG: each image with the truth and A's and B's label. Returns tiles."""
    from edgecls.plots import _pyplot
    from edgecls.runtime.preprocess import load_image

    plt = _pyplot()
    shown = result.disagreements[:SHEET_MAX]
    cols = max(1, min(6, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.6 * rows + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, shown):
        ax.imshow(load_image(item["path"]), cmap="gray", interpolation="nearest")
        ax.set_title(
            f"truth {item['truth']}\nA {item['a']} · B {item['b']}",
            fontsize=9,
            color="green" if item["b"] == item["truth"] else ("red" if item["a"] == item["truth"] else "black"),
        )
    if not shown:
        axes[0, 0].text(0.5, 0.5, "A and B agree on every image", ha="center", va="center", fontsize=11)
    more = f" (first {len(shown)} of {len(result.disagreements)})" if len(result.disagreements) > len(shown) else ""
    fig.suptitle(
        f"Where A and B disagree{more}: A = {Path(result.a).name}, B = {Path(result.b).name}\n"
        "green: B right, red: A right, black: both wrong",
        fontsize=10,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": SHEET_MARK})
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return len(shown)
