"""Hostile-but-valid inputs found by a review of the issue 15 runtime fixes (points 1, 2)."""

import struct
import time
import zlib

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError, ImageDecodeError
from edgecls.runtime.preprocess import decode_image, load_image

cv2 = pytest.importorskip("cv2")
MAX_PIXELS_ENV = "EDGECLS_MAX_IMAGE_PIXELS"


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg(h=48, w=64, **params) -> bytes:
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    return cv2.imencode(".jpg", _noise(h, w), flags)[1].tobytes()


# -- point 2: the JPEG structure walker ---------------------------------------------------------------


def test_i15_p2_fill_bytes_in_scan_data_are_walked_in_linear_time():
    """libjpeg reads FF FF ... FF 00 as one stuffed byte; the walker took 6 s for 20 KB of them (quadratic)."""
    data = _jpeg()
    stuffed = data.index(b"\xff\x00", data.index(b"\xff\xda"))
    padded = data[:stuffed] + b"\xff" * 20_000 + data[stuffed:]
    expected = cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR)
    assert expected is not None  # OpenCV decodes it: a valid input, not a corrupt one
    start = time.perf_counter()
    got = decode_image(padded)
    assert time.perf_counter() - start < 0.5
    np.testing.assert_array_equal(got, expected[..., ::-1])


@pytest.mark.parametrize("progressive", [False, True])
def test_i15_p2_a_cut_jpeg_followed_by_another_image_is_truncated(tmp_path, progressive):
    """The second image's EOI is not the first one's: libjpeg decodes on and returns garbage."""
    data = _jpeg(progressive=progressive)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + data)
    if not progressive:
        assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # OpenCV alone would accept it
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    # a whole image followed by another (or by fill bytes and markers) is fine
    (tmp_path / "two.jpg").write_bytes(data + data)
    np.testing.assert_array_equal(load_image(tmp_path / "two.jpg"), decode_image(data))


def test_i15_p2_restart_markers_and_fill_bytes_before_markers_decode():
    rst = cv2.imencode(".jpg", _noise(48, 64), [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()
    assert b"\xff\xd0" in rst[rst.index(b"\xff\xda") :]
    decode_image(rst)
    dqt = rst.index(b"\xff\xdb")
    np.testing.assert_array_equal(decode_image(rst[:dqt] + b"\xff\xff\xff" + rst[dqt:]), decode_image(rst))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(rst[: rst.rindex(b"\xff\xd3") + 2])  # cut right after a restart marker


# -- point 1 (memory): images that declare too many pixels are refused before decoding -----------------


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * w + 1))) + chunk(b"IEND", b"")


def test_i15_p1_a_decompression_bomb_is_refused_by_its_header():
    """A 1 MB PNG of 20000x20000 took 2.3 GB of RSS and 21 s; the header alone now refuses it."""
    with pytest.raises(ImageDecodeError, match=r"declares 20000x20000 pixels.*EDGECLS_MAX_IMAGE_PIXELS"):
        decode_image(_png_header_only(20000, 20000), "bomb.png")


FORMATS = {
    "png": (".png", []),
    "jpeg": (".jpg", []),
    "progressive-jpeg": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "bmp": (".bmp", []),
    "webp-lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp-lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("h, w", [(1, 1), (1, 333), (37, 3), (61, 250)])
def test_i15_p1_the_pixel_limit_reads_each_formats_true_size(monkeypatch, fmt, h, w):
    suffix, params = FORMATS[fmt]
    data = cv2.imencode(suffix, _noise(h, w), params)[1].tobytes()
    monkeypatch.setenv(MAX_PIXELS_ENV, str(h * w))
    assert decode_image(data).shape == (h, w, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(h * w - 1))
    with pytest.raises(ImageDecodeError, match=f"declares {w}x{h} pixels"):
        decode_image(data, f"x{suffix}")


def test_i15_p1_a_bad_pixel_limit_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(EdgeclsError, match="EDGECLS_MAX_IMAGE_PIXELS='lots' is not a whole number"):
        decode_image(cv2.imencode(".png", _noise(4, 4))[1].tobytes())


# -- point 1: the center-crop window is rounded to the nearest pixel, not floored -------------------------


@pytest.mark.parametrize(
    "src, dst, cols, rows",
    [
        ((7, 100), (16, 20), (45, 54), (0, 7)),  # window width 20 * 7 / 16 = 8.75 -> 9 columns
        ((100, 7), (20, 16), (0, 7), (45, 54)),  # the same, transposed
        ((9, 9), (4, 6), (0, 9), (1, 7)),  # height 4 * 9 / 6 = 6
    ],
)
def test_i15_p1_center_crop_window_is_rounded_to_the_nearest_pixel(src, dst, cols, rows):
    from edgecls.runtime.preprocess import PreprocessSpec, resize

    image = _noise(*src)
    window = image[rows[0] : rows[1], cols[0] : cols[1]]
    expected = cv2.resize(window, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    got = resize(image, PreprocessSpec(dst[0], dst[1], resize="center-crop", interpolation="linear"))
    np.testing.assert_array_equal(got, expected)


def test_the_temp_dir_cache_fallback_refuses_a_folder_others_can_write(tmp_path):
    """Without a home directory the cache lives in the shared temp dir: a planted folder must not be trusted."""
    import os

    from edgecls.runtime.bundle import BundleError, _private_temp_dir

    mine = _private_temp_dir(tmp_path / "edgecls-mine")
    assert mine.is_dir() and (mine.stat().st_mode & 0o777) == 0o700
    planted = tmp_path / "edgecls-planted"
    planted.mkdir()
    os.chmod(planted, 0o777)
    with pytest.raises(BundleError, match="not a private folder"):
        _private_temp_dir(planted)
    (tmp_path / "edgecls-link").symlink_to(mine)
    with pytest.raises(BundleError, match="not a private folder"):
        _private_temp_dir(tmp_path / "edgecls-link")
