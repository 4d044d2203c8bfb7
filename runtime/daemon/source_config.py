"""One source's own settings (SourceConfig) and their checks; `edgecls run`'s layers make them in per_source.py."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from edgecls.runtime.errors import EdgeclsError

ROTATIONS = (0, 90, 180, 270)  # clockwise degrees
FLIPS = ("none", "horizontal", "vertical")
SOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # `--source NAME=URI`, `[sources.NAME]`
MIN_FPS = 1 / 86400  # max_fps: one frame a day at the least (below, the wait overflows the clock's range)
MAX_SMOOTH = 10_000  # smooth: frames averaged at most (5.5 minutes at 30 fps; a huge one overflowed deque's maxlen)
ROI_HELP = "x, y, w, h: whole numbers are pixels of the frame, numbers with a decimal point fractions of it"


@dataclass(frozen=True)
class SourceConfig:
    """One source's own settings (`[sources.NAME]` in the TOML file, or scoped options on the command line).

    The view the model sees is made on the uint8 frame as the camera delivers it, in this order: crop `roi`,
    rotate `rotate` degrees clockwise, then `flip`. roi: (x, y, w, h), all ints = pixels of the delivered frame,
    otherwise fractions of its width/height in [0, 1]; None = the whole frame. max_fps: classify at most this often
    (None = as often as frames come). threshold, smooth, capture_below, capture_every: None = the daemon-wide
    setting. Every default keeps the behaviour of a daemon without per-source settings.

    Checked when made, each refusal one line naming the source and the key; a pixel roi is kept as 4 ints and a
    fractional one as 4 floats, so `isinstance(roi[0], int)` tells them apart. Whether a pixel roi fits the frame
    is known only once a frame came (the view checks it)."""

    uri: str
    name: str | None = None  # None: derived from the uri as before (passwords hidden)
    roi: tuple | None = None
    rotate: int = 0
    flip: str = "none"
    max_fps: float | None = None
    threshold: float | None = None
    smooth: int | None = None
    capture_below: float | None = None
    capture_every: int | None = None

    @property
    def transforms(self) -> bool:
        """Whether the view differs from the whole, upright frame."""
        return self.roi is not None or self.rotate != 0 or self.flip != "none"

    @property
    def label(self) -> str:
        """How errors name this source: its name, else its URI with passwords hidden."""
        if self.name is not None:
            return self.name
        from edgecls.runtime.sources import redact_uri

        return redact_uri(str(self.uri))

    def __post_init__(self):
        if not isinstance(self.uri, str) or not self.uri.strip():
            raise EdgeclsError(f"source {self.name or ''}: no uri: give the camera, stream, file or folder to read")
        if self.name is not None and not (isinstance(self.name, str) and SOURCE_NAME.fullmatch(self.name)):
            raise EdgeclsError(
                f"source name {self.name!r}: a name is up to 64 letters, digits, _ and -, starting with a letter "
                "(door, cam-2)"
            )
        where = f"source {self.label}"
        if not _number(self.rotate) or self.rotate not in ROTATIONS:
            raise EdgeclsError(f"{where}: rotate {self.rotate!r}: give 0, 90, 180 or 270 (degrees clockwise)")
        object.__setattr__(self, "rotate", int(self.rotate))
        if self.flip not in FLIPS:
            raise EdgeclsError(f"{where}: flip {self.flip!r}: give {', '.join(FLIPS[:-1])} or {FLIPS[-1]}")
        if self.max_fps is not None and not (_number(self.max_fps) and MIN_FPS <= self.max_fps < math.inf):
            raise EdgeclsError(
                f"{where}: max_fps {self.max_fps!r}: give a positive number of frames per second, at least "
                f"{MIN_FPS:.3g} (one a day; leave it out to classify as often as frames come)"
            )
        for key, field_name in (("threshold", "threshold"), ("capture.below", "capture_below")):
            value = getattr(self, field_name)
            if value is not None and not (_number(value) and 0.0 <= value <= 1.0):
                raise EdgeclsError(f"{where}: {key} {value!r}: a score threshold lies between 0 and 1")
            if value is not None:
                object.__setattr__(self, field_name, float(value))
        if self.max_fps is not None:
            object.__setattr__(self, "max_fps", float(self.max_fps))
        for key, field_name in (("smooth", "smooth"), ("capture.every", "capture_every")):
            value = getattr(self, field_name)
            if value is None:
                continue
            if not (_number(value) and math.isfinite(value) and value == int(value) and value >= 1):
                raise EdgeclsError(f"{where}: {key} {value!r}: give a whole number of frames, at least 1")
            if key == "smooth" and value > MAX_SMOOTH:
                raise EdgeclsError(f"{where}: smooth {value!r}: give a number of frames from 1 to {MAX_SMOOTH}")
            object.__setattr__(self, field_name, int(value))
        object.__setattr__(self, "roi", _checked_roi(where, self.roi))

    def daemon_only(self) -> list:
        """The keys set here that only the daemon has (the simple mode has no threshold, smoothing or capture)."""
        keys = ("threshold", "smooth", "capture.below", "capture.every")
        values = (self.threshold, self.smooth, self.capture_below, self.capture_every)
        return [key for key, value in zip(keys, values) if value is not None]


def _number(value) -> bool:
    """A real number (a bool is not one, though Python says it is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_roi(where: str, roi) -> tuple | None:
    """roi as 4 ints (pixels) or 4 floats (fractions), or one line saying what is wrong with it."""
    if roi is None:
        return None
    shown = list(roi) if isinstance(roi, (list, tuple)) else roi
    if not isinstance(roi, (list, tuple)) or len(roi) != 4 or not all(_number(v) and math.isfinite(v) for v in roi):
        raise EdgeclsError(f"{where}: roi {shown!r}: give 4 numbers {ROI_HELP}, such as [0.5, 0.0, 0.5, 0.5]")
    if all(isinstance(v, int) for v in roi):
        return _pixel_roi(where, tuple(int(v) for v in roi))
    x, y, w, h = (float(v) for v in roi)
    if not all(0.0 <= v <= 1.0 for v in (x, y, w, h)):
        raise EdgeclsError(
            f"{where}: roi {shown!r}: fractions of the frame lie between 0 and 1 (pixels are whole numbers "
            "without a decimal point, such as [640, 0, 640, 360])"
        )
    if w <= 0 or h <= 0:
        raise EdgeclsError(f"{where}: roi {shown!r}: its width and height (w, h) must be above 0")
    for total, edge, axis in ((x + w, "right", "x + w"), (y + h, "bottom", "y + h")):
        if total > 1.0 + 1e-9:
            raise EdgeclsError(
                f"{where}: roi {shown!r}: {axis} = {total:.10g} goes past the frame's {edge} edge "
                "(fractions: at most 1)"
            )
    return (x, y, w, h)


def _pixel_roi(where: str, roi: tuple) -> tuple:
    x, y, w, h = roi
    if x < 0 or y < 0:
        raise EdgeclsError(f"{where}: roi {list(roi)}: x and y count pixels from the top-left corner, from 0")
    if w <= 0 or h <= 0:
        raise EdgeclsError(f"{where}: roi {list(roi)}: its width and height (w, h) must be above 0")
    if w == 1 or h == 1:  # [0, 0, 1, 1] reads like the whole frame, yet whole numbers are pixels
        raise EdgeclsError(
            f"{where}: roi {list(roi)} is 1 pixel {'wide' if w == 1 else 'high'}: whole numbers are pixels; "
            f"write fractions of the frame with a decimal point ([{x}.0, {y}.0, {w}.0, {h}.0])"
            if max(roi) <= 1
            else f"{where}: roi {list(roi)} is 1 pixel {'wide' if w == 1 else 'high'}: give a region of 2 pixels "
            "or more"
        )
    return roi
