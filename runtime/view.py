"""The view of a frame a source's settings ask for: crop `roi`, rotate clockwise, flip, on uint8 pixels.

    view = SourceView("door", roi=(0.5, 0.0, 0.5, 0.5), rotate=180)
    image = view.apply(frame)   # the pixels `Classifier.prepare` gets; view.record() goes into each result

The crop is a numpy slice (no copy). Rotation and flip together are one of the eight symmetries of a
rectangle, done by at most two OpenCV calls on the crop into buffers the view keeps (two, used in turn: a new
2.7 MB array per 720p frame cost 2.6 ms in page faults, the rotation itself 0.2 ms); OpenCV writes a contiguous
array, which the preprocessing's resize would otherwise have copied the crop into anyway. Rotating after the
resize instead is not exact (benchmarks/per_camera.py measures both, and the view's cost per frame).
A turned view is valid until the view is applied twice more: copy one kept longer (`reuses`).

A pixel ROI is checked against the first frame (outside it: `ViewError`, one line naming the source and `roi`);
when the frame size changes later, the ROI is resolved again, clipped to the new frame and logged once per size.
"""

from __future__ import annotations

import logging

import numpy as np

from edgecls.runtime.errors import EdgeclsError

log = logging.getLogger("edgecls.daemon")

ROTATIONS = (0, 90, 180, 270)
FLIPS = ("none", "horizontal", "vertical")
MAX_SIZES = 64  # frame sizes whose resolved ROI a view remembers


class ViewError(EdgeclsError):
    """A source's view cannot be made from its frames (a pixel ROI outside the first frame)."""


def _transpose(image, dst):
    import cv2

    return cv2.transpose(image, dst=dst)


def _ops(rotate: int, flip: str) -> tuple:
    """The OpenCV calls that rotate clockwise by `rotate` and then flip, (call, argument, swaps width and height)
    each: at most two, on the crop only.

    Flipping horizontally after rotating by r is transposing (r = 90), a vertical flip (180), ...; flipping
    vertically is the horizontal flip after rotating by r + 180."""
    import cv2

    if flip == "vertical":
        rotate, flip = (rotate + 180) % 360, "horizontal"
    if flip == "none":
        code = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}.get(rotate)
        return () if code is None else ((cv2.rotate, code, rotate != 180),)
    return {
        0: ((cv2.flip, 1, False),),
        90: ((_transpose, None, True),),
        180: ((cv2.flip, 0, False),),
        270: ((_transpose, None, True), (cv2.flip, -1, False)),
    }[rotate]


def _in_pixels(roi) -> bool:
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in roi)


def _pixel_box(roi, width: int, height: int) -> tuple:
    """(x, y, w, h) in pixels: all ints are pixels already, otherwise fractions of the frame's width/height."""
    if _in_pixels(roi):
        return tuple(int(v) for v in roi)
    fx, fy, fw, fh = (float(v) for v in roi)
    # A fraction a hair from the right or bottom edge (x 0.999 of 64 px) rounds to the edge: keep one pixel inside.
    x0, y0 = min(round(fx * width), width - 1), min(round(fy * height), height - 1)
    x1, y1 = round((fx + fw) * width), round((fy + fh) * height)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def _clip(box: tuple, width: int, height: int) -> tuple | None:
    """The part of `box` inside a width x height frame, None when nothing is."""
    x, y, w, h = box
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1 - x0, y1 - y0)


class SourceView:
    """One source's view, resolved against the size of its frames (again whenever that changes).

    roi: (x, y, w, h), all ints = pixels, otherwise fractions in 0..1; None = the whole frame.
    rotate: clockwise degrees (0/90/180/270); flip: none/horizontal/vertical, applied after the rotation."""

    def __init__(self, source: str, roi=None, rotate: int = 0, flip: str = "none"):
        if rotate not in ROTATIONS:
            raise ViewError(f"source {source}: rotate {rotate!r} is not one of {', '.join(map(str, ROTATIONS))}")
        if flip not in FLIPS:
            raise ViewError(f"source {source}: flip {flip!r} is not one of {', '.join(FLIPS)}")
        self.source, self.roi, self.rotate, self.flip = source, None if roi is None else tuple(roi), rotate, flip
        self._ops = _ops(rotate, flip)
        self._buffers = [{}, {}]  # in turn per frame: op step -> its output array, replaced when the size changes
        self._turn = 0
        self._size = None  # (width, height) the box was resolved for
        self._resolved = {}  # (width, height) -> (box, why none), each size worked out and said once
        self.box: tuple | None = None  # the ROI in pixels of the current frame size, as applied
        self.outside = ""  # why no view can be made of frames of the current size ("" while one can)
        self.changes = 0  # times the frame size changed after the first frame (each re-resolves the ROI)

    @classmethod
    def of(cls, settings, name: str) -> SourceView:
        """The view a `edgecls.runtime.daemon.config.SourceConfig` asks for, for the source called `name`."""
        return cls(name, settings.roi, settings.rotate, settings.flip)

    @property
    def reuses(self) -> bool:
        """Whether `apply` writes into buffers it reuses (a rotation or flip): copy a view kept past the next frame."""
        return bool(self._ops)

    @property
    def whole(self) -> bool:
        """The whole, upright frame: nothing to do, nothing recorded."""
        return self.roi is None and not self._ops

    def record(self) -> dict:
        """What a result, capture sidecar and drift window record; {} for the whole, upright frame (roi None: the
        ROI lies outside the current frame, see `outside`)."""
        if self.whole:
            return {}
        return {"roi": None if self.box is None else list(self.box), "rotate": self.rotate, "flip": self.flip}

    def scene(self, record: dict) -> dict:
        """What a drift window compares (runtime/monitor/drift.py): the part of the scene this view shows, given the
        frame's `record`. A fractional ROI shows the same part at any frame size: the view as configured; a pixel
        ROI another part once its box is resolved anew (clipped, or outside): the record."""
        if self.roi is not None and _in_pixels(self.roi):
            return record
        if self.whole:
            return {}
        return {"roi": None if self.roi is None else list(self.roi), "rotate": self.rotate, "flip": self.flip}

    def apply(self, image: np.ndarray) -> np.ndarray | None:
        """The view of one frame: crop (a slice), then rotation and flip (one new array the size of the crop).

        None while a frame size change has left the ROI wholly outside the frame (said once, when it changed)."""
        if self.roi is not None:
            size = (image.shape[1], image.shape[0])
            if size != self._size:
                self._resolve(*size)
            if self.box is None:
                return None
            x, y, w, h = self.box
            image = image[y : y + h, x : x + w]
        if not self._ops:
            return image
        buffers, self._turn = self._buffers[self._turn], 1 - self._turn
        for step, (op, arg, swaps) in enumerate(self._ops):
            h, w = image.shape[:2]
            shape = ((w, h) if swaps else (h, w)) + image.shape[2:]
            out = buffers.get(step)
            if out is None or out.shape != shape:
                out = buffers[step] = np.empty(shape, np.uint8)
            image = op(image, dst=out) if arg is None else op(image, arg, dst=out)
        return image

    def _resolve(self, width: int, height: int) -> None:
        """The box (and why none) for frames of this size: worked out and said once per size, then remembered, so
        frames alternating between sizes are not re-clipped and re-logged every time."""
        first, size = self._size is None, (width, height)
        self._size = size
        if not first:
            self.changes += 1
        known = self._resolved.get(size)
        if known is None:
            if len(self._resolved) >= MAX_SIZES:  # a folder of ever new sizes: forget them, say them again
                self._resolved.clear()
            known = self._resolved[size] = self._work_out(width, height, first)
        self.box, self.outside = known

    def _work_out(self, width: int, height: int, first: bool) -> tuple:
        """(box clipped to the frame or None, why None); a pixel ROI outside the first frame is a ViewError."""
        box = _pixel_box(self.roi, width, height)
        clipped = _clip(box, width, height)
        if first:
            if clipped != box:
                raise ViewError(
                    f"source {self.source}: roi {list(self.roi)} lies outside its {width}x{height} frame: give "
                    f"x, y, w, h inside it in pixels, or as fractions of the frame (0.5 = half)"
                )
        elif clipped is None:
            outside = f"the frame is now {width}x{height} and roi {list(self.roi)} lies outside it"
            log.error(
                "%s: %s: no frame is classified until the size changes back or roi is fixed", self.source, outside
            )
            return None, outside
        elif clipped != box:
            log.warning(
                "%s: the frame is now %dx%d; roi %s clipped to %s", self.source, width, height, list(box), list(clipped)
            )
        return clipped, ""
