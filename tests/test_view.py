"""runtime/view.py: a source's view of its frames (crop, rotate, flip) on real uint8 frames."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edgecls.runtime.view import FLIPS, ROTATIONS, SourceView, ViewError


def _frame(width: int = 64, height: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _turned(image: np.ndarray, rotate: int, flip: str) -> np.ndarray:
    """What the settings mean, spelled with numpy: clockwise rotation, then a mirror left-right or top-bottom."""
    out = np.rot90(image, k=-(rotate // 90))
    return out[:, ::-1] if flip == "horizontal" else out[::-1] if flip == "vertical" else out


@pytest.mark.parametrize("flip", FLIPS)
@pytest.mark.parametrize("rotate", ROTATIONS)
def test_every_rotation_and_flip_turns_the_crop_as_numpy_says(rotate, flip):
    frame = _frame()
    view = SourceView("cam", (8, 4, 40, 30), rotate, flip)
    got = view.apply(frame)
    assert np.array_equal(got, _turned(frame[4:34, 8:48], rotate, flip))
    assert got.dtype == np.uint8


def test_a_crop_alone_is_a_slice_of_the_frame_not_a_copy():
    frame = _frame()
    got = SourceView("cam", (8, 4, 40, 30)).apply(frame)
    assert np.shares_memory(got, frame) and got.shape == (30, 40, 3)


def test_the_whole_upright_frame_is_handed_on_as_it_is_and_records_nothing():
    frame = _frame()
    view = SourceView("cam")
    assert view.apply(frame) is frame and view.record() == {}


def test_a_fractional_roi_is_resolved_in_pixels_of_the_frame_and_recorded_so():
    view = SourceView("door", (0.5, 0.25, 0.5, 0.5), 180)
    got = view.apply(_frame(640, 480))
    assert got.shape == (240, 320, 3)
    assert view.record() == {"roi": [320, 120, 320, 240], "rotate": 180, "flip": "none"}


def test_a_fractional_roi_a_hair_from_the_edge_keeps_one_pixel_inside_the_frame():
    """x 0.999 of 64 px rounds to 64, the edge itself: the view keeps the last column, not an error."""
    got = SourceView("door", (0.999, 0.0, 0.001, 1.0)).apply(_frame(64, 48))
    assert got.shape == (48, 1, 3)
    assert np.array_equal(got, _frame(64, 48)[:, 63:64])


def test_a_pixel_roi_outside_the_first_frame_is_refused_naming_the_source_and_roi():
    view = SourceView("door", (600, 0, 100, 100))
    with pytest.raises(ViewError) as refused:
        view.apply(_frame(640, 480))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("source door: roi [600, 0, 100, 100] lies outside its 640x480")


def test_a_roi_that_leaves_the_frame_after_a_size_change_is_clipped_and_logged_once(caplog):
    view = SourceView("door", (40, 20, 20, 20))
    big, small = _frame(64, 48), _frame(50, 30)
    view.apply(big)
    with caplog.at_level(logging.WARNING, logger="edgecls.daemon"):
        crops = [view.apply(small) for _ in range(5)]
    assert all(c.shape == (10, 10, 3) for c in crops) and np.array_equal(crops[0], small[20:30, 40:50])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["door: the frame is now 50x30; roi [40, 20, 20, 20] clipped to [40, 20, 10, 10]"]
    assert view.record()["roi"] == [40, 20, 10, 10]
    assert view.apply(big).shape == (20, 20, 3) and view.record()["roi"] == [40, 20, 20, 20]  # back: whole again


def test_a_roi_wholly_outside_a_resized_frame_gives_no_view_and_says_so_once(caplog):
    view = SourceView("door", (40, 20, 20, 20))
    view.apply(_frame(64, 48))
    with caplog.at_level(logging.WARNING, logger="edgecls.daemon"):
        assert [view.apply(_frame(32, 16)) for _ in range(3)] == [None] * 3
    assert len(caplog.records) == 1 and "lies outside it" in caplog.records[0].getMessage()


def test_a_rotation_the_view_does_not_know_is_refused_naming_the_source():
    with pytest.raises(ViewError, match="source cam: rotate 45 is not one of 0, 90, 180, 270"):
        SourceView("cam", rotate=45)


def test_a_turned_view_stays_intact_while_the_next_frame_is_turned_and_a_view_kept_longer_is_copied():
    """The preparing thread turns frame n + 1 while the loop still holds frame n's view: two buffers in turn."""
    first, second = _frame(), _frame()[::-1].copy()
    view = SourceView("cam", (8, 4, 40, 30), 270, "horizontal")
    held = view.apply(first)
    view.apply(second)
    assert np.array_equal(held, _turned(first[4:34, 8:48], 270, "horizontal"))
    assert view.reuses and not SourceView("cam", (8, 4, 40, 30)).reuses


def test_a_turned_view_keeps_one_buffer_per_turn_however_many_frame_sizes_it_sees():
    """400 frame sizes under a rotation: the buffers of each turn are replaced when the size changes, not kept beside
    the old ones (each size kept its own, 668 MiB for 400 720p-ish sizes)."""
    import tracemalloc

    view = SourceView("cam", rotate=90, flip="horizontal")  # a transpose: one op, one buffer a turn
    view.apply(_frame(64, 48))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(400):
            frame = np.zeros((100, 100 + i, 3), np.uint8)  # 30-42 KB each
            view.apply(frame)
        del frame
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 3 * 100 * 500 * 3, kept  # two buffers of the newest sizes and change; 400 sizes kept were 14 MB
    assert np.array_equal(view.apply(_frame(64, 48)), _turned(_frame(64, 48), 90, "horizontal"))


def test_frames_alternating_between_two_sizes_say_the_clipped_roi_once(caplog):
    """A pixel ROI clipped on every other frame (64x48, 50x30, 64x48, ...): one warning, not one per change."""
    view = SourceView("door", (40, 20, 20, 20))
    big, small = _frame(64, 48), _frame(50, 30)
    with caplog.at_level(logging.WARNING, logger="edgecls.daemon"):
        shapes = [view.apply(big if i % 2 == 0 else small).shape for i in range(100)]
    assert shapes == [(20, 20, 3), (10, 10, 3)] * 50
    assert [r.getMessage() for r in caplog.records] == [
        "door: the frame is now 50x30; roi [40, 20, 20, 20] clipped to [40, 20, 10, 10]"
    ]


def test_frames_alternating_with_a_size_the_roi_misses_say_so_once(caplog):
    view = SourceView("door", (40, 20, 20, 20))
    big, tiny = _frame(64, 48), _frame(32, 16)
    with caplog.at_level(logging.WARNING, logger="edgecls.daemon"):
        views = [view.apply(big if i % 2 == 0 else tiny) for i in range(20)]
    assert [v is None for v in views] == [False, True] * 10
    assert len(caplog.records) == 1 and "lies outside it" in caplog.records[0].getMessage()
