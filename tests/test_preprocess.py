"""edgecls.runtime.preprocess: decoding, resizing and normalising images and frames, hostile-but-valid ones too."""

import json
import math
import struct
import sys
import time
import zlib

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError, ImageDecodeError, MissingDependencyError
from edgecls.runtime.preprocess import (
    PreprocessSpec,
    decode_image,
    load_image,
    preprocess,
    preprocess_file,
    to_rgb8,
)
from tests.conftest import write_image

cv2 = pytest.importorskip("cv2")
MAX_PIXELS_ENV = "EDGECLS_MAX_IMAGE_PIXELS"


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_decode_returns_rgb_from_bgr_file(tmp_path):
    bgr = _noise(10, 12)
    rgb = load_image(write_image(tmp_path / "a.png", bgr))
    assert rgb.dtype == np.uint8 and rgb.shape == (10, 12, 3)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


def test_gray_rgba_and_16bit_pngs_become_rgb8(tmp_path):
    gray = _noise(9, 9, 1)[..., 0]
    out = load_image(write_image(tmp_path / "g.png", gray))
    assert out.shape == (9, 9, 3) and (out[..., 0] == gray).all()

    bgra = np.dstack([_noise(9, 9), np.full((9, 9), 17, np.uint8)])
    out = load_image(write_image(tmp_path / "rgba.png", bgra))
    np.testing.assert_array_equal(out, bgra[..., 2::-1])  # alpha dropped, RGB kept

    deep = np.arange(81, dtype=np.uint16).reshape(9, 9) * 800
    out = load_image(write_image(tmp_path / "d16.png", deep))
    np.testing.assert_array_equal(out[..., 0], np.round(deep / 257).astype(np.uint8))


def test_corrupt_truncated_and_non_image_files_raise_clear_errors(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="corrupt, truncated or not an image"):
        load_image(tmp_path / "notes.png")
    good = write_image(tmp_path / "x.jpg", _noise(64, 64))
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageDecodeError, match="cannot read"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("mode", ["stretch", "center-crop", "letterbox"])
@pytest.mark.parametrize("size", [(16, 16), (20, 30), (31, 7)])
def test_resize_modes_give_the_spec_shape(mode, size):
    spec = PreprocessSpec(size[0], size[1], resize=mode)
    for h, w in ((40, 80), (80, 40), (5, 5)):
        assert preprocess(_noise(h, w), spec).shape == (size[0], size[1], 3)


def test_letterbox_pads_and_center_crop_keeps_the_middle():
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 10:30] = 255  # a white middle half
    box = preprocess(image, PreprocessSpec(40, 40, resize="letterbox", dtype="uint8", pad_value=7))
    assert (box[:10] == 7).all() and (box[30:] == 7).all()  # bars above and below
    crop = preprocess(image, PreprocessSpec(20, 20, resize="center-crop", dtype="uint8"))
    assert (crop == 255).all()


def test_normalization_scale_and_mean_std():
    image = np.full((4, 4, 3), 255, np.uint8)
    image[0, 0] = 0
    x = preprocess(image, PreprocessSpec.scaled(4, 4, 1 / 127.5, -1.0))
    assert x.dtype == np.float32 and x.max() == pytest.approx(1.0) and x.min() == pytest.approx(-1.0)
    spec = PreprocessSpec(4, 4, mean=(255, 0, 255), std=(1, 255, 1))
    x = preprocess(image, spec)
    np.testing.assert_allclose(x[1, 1], [0.0, 1.0, 0.0])


def test_bgr_frames_and_rgb_files_give_the_same_tensor():
    rgb = _noise(30, 50)
    for color in ("rgb", "bgr", "gray"):
        spec = PreprocessSpec(16, 16, color=color)
        np.testing.assert_array_equal(
            preprocess(rgb, spec, order="rgb"), preprocess(rgb[..., ::-1].copy(), spec, order="bgr")
        )
    assert preprocess(rgb, PreprocessSpec(16, 16, color="gray")).shape == (16, 16, 1)


def test_spec_round_trips_and_rejects_bad_values():
    spec = PreprocessSpec.scaled(24, 32, 1 / 255, 0.0, color="gray", resize="letterbox")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(EdgeclsError, match="unknown preprocessing resize"):
        PreprocessSpec(8, 8, resize="squash")
    with pytest.raises(EdgeclsError, match="std must not be 0"):
        PreprocessSpec(8, 8, std=(0,))
    with pytest.raises(EdgeclsError, match="needs 1 or 3 values"):
        PreprocessSpec(8, 8, mean=(1, 2))


def test_preprocess_file_equals_decode_then_preprocess(tmp_path):
    path = write_image(tmp_path / "p.jpg", _noise(33, 21))
    spec = PreprocessSpec(12, 12)
    np.testing.assert_array_equal(preprocess_file(path, spec), preprocess(decode_image(path.read_bytes()), spec))


# -- issue 15 point 1: center-crop crops in source pixels, then resizes once ------------------------

_EXTREME_SHAPES_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
import cv2, numpy as np
from edgecls.runtime.preprocess import PreprocessSpec, preprocess, preprocess_file

folder = Path(sys.argv[1])
images = {"1x65000": (1, 65000), "65000x1": (65000, 1), "1x1": (1, 1)}
for name, (h, w) in images.items():
    bgr = np.empty((h, w, 3), np.uint8)
    bgr[...] = (30, 20, 10)
    bgr[(h - 1) // 2, (w - 1) // 2] = (50, 100, 200)  # the middle pixel: what a 1-pixel center crop keeps
    cv2.imwrite(str(folder / f"{name}.png"), bgr)
preprocess(np.zeros((8, 8, 3), np.uint8), PreprocessSpec(4, 4))  # warm up OpenCV's buffers and threads

# the old code needed ~10 GB here: fail fast rather than take the machine's memory
vm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, ((vm_kb << 10) + (2 << 30), resource.RLIM_INFINITY))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name in images:
    for mode in ("center-crop", "letterbox", "stretch"):
        x = preprocess_file(folder / f"{name}.png", PreprocessSpec(224, 224, resize=mode, dtype="uint8"))
        out[f"{name} {mode}"] = {
            "shape": list(x.shape),
            "colors": sorted({tuple(map(int, c)) for c in x.reshape(-1, 3)}),
        }
out["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
out["png_bytes"] = (folder / "1x65000.png").stat().st_size
print(json.dumps(out))
"""


def test_thin_wide_and_one_pixel_images_preprocess_in_every_mode_without_blowing_up(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [sys.executable, "-c", _EXTREME_SHAPES_SCRIPT, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["png_bytes"] < 1000  # a tiny file, as anyone could send
    assert out["growth_mb"] < 50, out["growth_mb"]
    middle, rest = (200, 100, 50), (10, 20, 30)  # RGB
    for name in ("1x65000", "65000x1", "1x1"):
        for mode in ("center-crop", "letterbox", "stretch"):
            assert out[f"{name} {mode}"]["shape"] == [224, 224, 3]
        assert out[f"{name} center-crop"]["colors"] == [list(middle)]  # only the middle pixel survives
    assert out["1x1 stretch"]["colors"] == out["1x1 letterbox"]["colors"] == [list(middle)]
    assert [0, 0, 0] in out["1x65000 letterbox"]["colors"]  # padded above and below
    assert list(rest) in out["1x65000 stretch"]["colors"]


@pytest.mark.parametrize(
    "src, dst, window",
    [
        ((40, 63), (20, 20), (slice(0, 40), slice(11, 51))),  # wide, shrinking: area
        ((63, 40), (20, 20), (slice(11, 51), slice(0, 40))),  # tall
        ((40, 63), (10, 30), (slice(9, 30), slice(0, 63))),  # wider target: 63 * 10 / 30 = 21 rows from row 9
        ((5, 9), (20, 20), (slice(0, 5), slice(2, 7))),  # enlarging: linear
    ],
)
def test_center_crop_takes_the_middle_in_source_pixels_then_resizes_once(src, dst, window):
    image = _noise(*src)
    got = preprocess(image, PreprocessSpec(*dst, resize="center-crop", dtype="uint8", interpolation="auto"))
    crop = image[window]
    shrinking = dst[0] * dst[1] < crop.shape[0] * crop.shape[1]
    expected = cv2.resize(crop, dst[::-1], interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    np.testing.assert_array_equal(got, expected)


# -- issue 15 point 2: truncation is judged by the JPEG's structure, not by the file's tail ------------


def _jpeg(progressive: bool, seed: int = 0) -> bytes:
    image = cv2.GaussianBlur(_noise(120, 160, seed=seed), (0, 0), 2)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    data = buf.tobytes()
    scans = data.count(b"\xff\xda")
    assert data.endswith(b"\xff\xd9") and (scans > 1 if progressive else scans == 1)  # cv2 wrote what we asked
    return data


def _trailer(size: int) -> bytes:
    """Motion-photo-like data after the image: an MP4 box header, then bytes with no 0xD9 in them."""
    body = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    body[body == 0xD9] = 0
    return (b"\x00\x00\x00\x18ftypmp42" + body.tobytes())[:size]


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("trailing", [5_000, 1_000_000])
def test_jpegs_with_data_after_the_image_decode(tmp_path, progressive, trailing):
    data = _jpeg(progressive)
    plain = decode_image(data)
    path = tmp_path / "motion.jpg"
    path.write_bytes(data + _trailer(trailing))
    np.testing.assert_array_equal(load_image(path), plain)


def _with_thumbnail(data: bytes, thumbnail: bytes) -> bytes:
    """An APP1 segment holding a whole small JPEG (its own EOI included), right after SOI."""
    payload = b"Exif\x00\x00" + thumbnail
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpegs_are_still_refused(tmp_path, progressive):
    data = _jpeg(progressive)
    first_scan = data.index(b"\xff\xda") + 20
    thumbnail = cv2.imencode(".jpg", _noise(8, 8))[1].tobytes()
    cases = {
        "half": data[: len(data) // 2],
        "no-eoi": data[:-2],
        "in-first-scan": data[:first_scan],
        "cut-thumbnail-photo": _with_thumbnail(data, thumbnail)[: len(data) // 2],
    }
    for name, cut in cases.items():
        (tmp_path / f"{name}.jpg").write_bytes(cut)
        with pytest.raises(ImageDecodeError, match="truncated"):
            load_image(tmp_path / f"{name}.jpg")
    # the thumbnail's EOI is skipped with its segment; a whole photo around it still decodes
    whole = _with_thumbnail(data, thumbnail) + _trailer(5_000)
    np.testing.assert_array_equal(decode_image(whole), decode_image(data))


# -- issue 15 point 14: hand-computed values, channel order, interpolation ---------------------------


def test_a_small_image_gives_hand_computed_values():
    r = np.array([[0, 4, 100, 100], [8, 12, 100, 104], [255, 255, 1, 2], [255, 255, 3, 6]], np.uint8)
    g = np.full((4, 4), 128, np.uint8)
    b = np.zeros((4, 4), np.uint8)
    b[:2, :2] = 40
    image = np.dstack([r, g, b])  # RGB; 2x2 blocks average to R 6, 101, 255, 3; G 128; B 40, 0, 0, 0
    u8 = preprocess(image, PreprocessSpec(2, 2, dtype="uint8"))
    assert u8.tolist() == [[[6, 128, 40], [101, 128, 0]], [[255, 128, 0], [3, 128, 0]]]
    x = preprocess(image, PreprocessSpec(2, 2, mean=(6, 128, 40), std=(2, 64, 0.5)))
    # (R - 6) / 2, (G - 128) / 64, (B - 40) / 0.5
    assert x.dtype == np.float32
    assert x.tolist() == [[[0.0, 0.0, 0.0], [47.5, 0.0, -80.0]], [[124.5, 0.0, -80.0], [-1.5, 0.0, -80.0]]]
    x = preprocess(image, PreprocessSpec.scaled(2, 2, 1 / 127.5, -1.0))  # MobileNet's [-1, 1]
    np.testing.assert_allclose(x[0, 0], [-121.5 / 127.5, 0.5 / 127.5, -87.5 / 127.5], rtol=1e-6)
    np.testing.assert_allclose(x[1, 0], [1.0, 0.5 / 127.5, -1.0], rtol=1e-6)


def test_channel_order_of_a_pure_red_image(tmp_path):
    red_bgr = np.zeros((6, 6, 3), np.uint8)
    red_bgr[..., 2] = 255  # OpenCV's red
    red_rgb = np.ascontiguousarray(red_bgr[..., ::-1])
    for image, order in ((red_bgr, "bgr"), (red_rgb, "rgb")):
        assert preprocess(image, PreprocessSpec(3, 3), order=order)[1, 1].tolist() == [1.0, 0.0, 0.0]
        assert preprocess(image, PreprocessSpec(3, 3, color="bgr"), order=order)[1, 1].tolist() == [0.0, 0.0, 1.0]
        gray = preprocess(image, PreprocessSpec(3, 3, color="gray", dtype="uint8"), order=order)
        assert gray.shape == (3, 3, 1) and (gray == 76).all()  # 0.299 * 255, OpenCV's fixed-point luma
    path = write_image(tmp_path / "red.png", red_bgr)
    assert preprocess_file(path, PreprocessSpec(3, 3))[0, 0].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "mode, src, dst, expected",
    [
        ("auto", (48, 64), (12, 16), "area"),  # shrinking
        ("auto", (8, 8), (20, 20), "linear"),  # enlarging
        ("area", (8, 8), (20, 20), "area"),
        ("linear", (48, 64), (12, 16), "linear"),
        ("cubic", (8, 8), (20, 20), "cubic"),
        ("nearest", (48, 64), (12, 16), "nearest"),
    ],
)
def test_interpolation_is_the_documented_one(mode, src, dst, expected):
    flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
    image = _noise(*src, seed=3)
    got = preprocess(image, PreprocessSpec(*dst, interpolation=mode, dtype="uint8"))
    results = {name: cv2.resize(image, dst[::-1], interpolation=flag) for name, flag in flags.items()}
    np.testing.assert_array_equal(got, results[expected])
    assert all((got != other).any() for name, other in results.items() if name != expected)  # the choice is visible


def _noise_jpeg(h=48, w=64, **params) -> bytes:
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params.get("progressive") else []
    return cv2.imencode(".jpg", _noise(h, w), flags)[1].tobytes()


def test_fill_bytes_in_scan_data_are_walked_in_linear_time():
    """libjpeg reads FF FF ... FF 00 as one stuffed byte; the walker took 6 s for 20 KB of them (quadratic)."""
    data = _noise_jpeg()
    stuffed = data.index(b"\xff\x00", data.index(b"\xff\xda"))
    padded = data[:stuffed] + b"\xff" * 20_000 + data[stuffed:]
    expected = cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR)
    assert expected is not None  # OpenCV decodes it: a valid input, not a corrupt one
    start = time.perf_counter()
    got = decode_image(padded)
    assert time.perf_counter() - start < 0.5
    np.testing.assert_array_equal(got, expected[..., ::-1])


@pytest.mark.parametrize("progressive", [False, True])
def test_a_cut_jpeg_followed_by_another_image_is_truncated(tmp_path, progressive):
    """The second image's EOI is not the first one's: libjpeg decodes on and returns garbage."""
    data = _noise_jpeg(progressive=progressive)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + data)
    if not progressive:
        assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # OpenCV alone would accept it
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(tmp_path / "cut.jpg")
    # a whole image followed by another (or by fill bytes and markers) is fine
    (tmp_path / "two.jpg").write_bytes(data + data)
    np.testing.assert_array_equal(load_image(tmp_path / "two.jpg"), decode_image(data))


def test_restart_markers_and_fill_bytes_before_markers_decode():
    rst = cv2.imencode(".jpg", _noise(48, 64), [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()
    assert b"\xff\xd0" in rst[rst.index(b"\xff\xda") :]
    decode_image(rst)
    dqt = rst.index(b"\xff\xdb")
    np.testing.assert_array_equal(decode_image(rst[:dqt] + b"\xff\xff\xff" + rst[dqt:]), decode_image(rst))
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(rst[: rst.rindex(b"\xff\xd3") + 2])  # cut right after a restart marker


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * w + 1))) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_refused_by_its_header():
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
def test_the_pixel_limit_reads_each_formats_true_size(monkeypatch, fmt, h, w):
    suffix, params = FORMATS[fmt]
    data = cv2.imencode(suffix, _noise(h, w), params)[1].tobytes()
    monkeypatch.setenv(MAX_PIXELS_ENV, str(h * w))
    assert decode_image(data).shape == (h, w, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(h * w - 1))
    with pytest.raises(ImageDecodeError, match=f"declares {w}x{h} pixels"):
        decode_image(data, f"x{suffix}")


def test_a_bad_pixel_limit_setting_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(EdgeclsError, match="EDGECLS_MAX_IMAGE_PIXELS='lots' is not a whole number"):
        decode_image(cv2.imencode(".png", _noise(4, 4))[1].tobytes())


@pytest.mark.parametrize(
    "src, dst, cols, rows",
    [
        ((7, 100), (16, 20), (45, 54), (0, 7)),  # window width 20 * 7 / 16 = 8.75 -> 9 columns
        ((100, 7), (20, 16), (0, 7), (45, 54)),  # the same, transposed
        ((9, 9), (4, 6), (0, 9), (1, 7)),  # height 4 * 9 / 6 = 6
    ],
)
def test_center_crop_window_is_rounded_to_the_nearest_pixel(src, dst, cols, rows):
    from edgecls.runtime.preprocess import PreprocessSpec, resize

    image = _noise(*src)
    window = image[rows[0] : rows[1], cols[0] : cols[1]]
    expected = cv2.resize(window, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    got = resize(image, PreprocessSpec(dst[0], dst[1], resize="center-crop", interpolation="linear"))
    np.testing.assert_array_equal(got, expected)


def test_a_one_by_one_spec_is_valid_and_zero_is_refused():
    spec = PreprocessSpec(1, 1, dtype="uint8")
    assert preprocess(np.full((3, 5, 3), 9, np.uint8), spec).tolist() == [[[9, 9, 9]]]
    for h, w in ((0, 1), (1, 0), (-1, 4)):
        with pytest.raises(EdgeclsError, match="image size must be positive"):
            PreprocessSpec(h, w)


def test_scaled_spec_stores_plus_zero_mean_never_minus_zero():
    spec = PreprocessSpec.scaled(8, 8)  # offset 0: -0.0 / scale would be -0.0
    assert spec.mean == (0.0,) and math.copysign(1.0, spec.mean[0]) == 1.0
    assert '"mean": [0.0]' in json.dumps(spec.to_dict())


def test_spec_to_dict_is_the_plain_manifest_form():
    spec = PreprocessSpec(24, 32, color="bgr", resize="letterbox", mean=(1, 2, 3), std=(4, 5, 6), pad_value=7)
    assert spec.to_dict() == {
        "height": 24,
        "width": 32,
        "color": "bgr",
        "resize": "letterbox",
        "interpolation": "box-linear",
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
        "dtype": "float32",
        "pad_value": 7,
        "layout": "NHWC",
    }


def test_decode_errors_name_the_image_or_say_bytes():
    with pytest.raises(ImageDecodeError, match="cannot decode image <bytes>: "):
        decode_image(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="cannot decode image cam0.jpg: "):
        decode_image(b"not an image at all", name="cam0.jpg")
    ok, buf = cv2.imencode(".tiff", np.zeros((4, 5, 3), np.float32))  # OpenCV decodes it as float32
    assert ok
    with pytest.raises(ImageDecodeError, match=r"unsupported pixel type float32 in scan\.tiff: use 8- or 16-bit"):
        decode_image(buf.tobytes(), name="scan.tiff")


def _jpeg_with_comment_after_the_scan() -> tuple:
    image = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 2)
    plain = cv2.imencode(".jpg", image)[1].tobytes()
    comment = b"written by a camera " * 6
    # a COM segment between the scan and the end-of-image marker, as some cameras write metadata
    return plain, plain[:-2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + b"\xff\xd9"


def test_a_jpeg_cut_inside_a_segment_after_the_scan_is_truncated():
    plain, with_comment = _jpeg_with_comment_after_the_scan()
    np.testing.assert_array_equal(decode_image(with_comment), decode_image(plain))
    for cut in (len(plain), len(plain) + 2, len(plain) + 40):  # no length, length but short segment
        data = with_comment[:cut]
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None  # libjpeg still decodes
        with pytest.raises(ImageDecodeError, match=r"cannot decode image cut\.jpg: the JPEG is truncated"):
            decode_image(data, name="cut.jpg")


def test_missing_opencv_names_the_runtime_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # what `import cv2` meets when the package is absent
    with pytest.raises(MissingDependencyError, match=r"opencv-python-headless is not installed .*edgecls\[runtime\]"):
        decode_image(b"\xff\xd8")


def test_one_channel_images_become_gray_rgb_and_two_channels_are_refused():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    out = to_rgb8(gray)
    assert out.shape == (3, 4, 3) and (out == gray).all()
    with pytest.raises(ImageDecodeError, match=r"unsupported image layout \(3, 4, 2\) in two\.png"):
        to_rgb8(np.zeros((3, 4, 2), np.uint8), name="two.png")


def test_four_channel_frames_drop_alpha_in_either_channel_order():
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[...] = (10, 20, 30, 99)  # B, G, R, alpha
    assert to_rgb8(bgra, order="bgr")[0, 0].tolist() == [30, 20, 10]
    assert to_rgb8(bgra, order="rgb")[0, 0].tolist() == [10, 20, 30]
    # preprocess converts such a frame to RGB first, then applies the spec's channel order once
    spec = PreprocessSpec(2, 2, dtype="uint8")
    assert preprocess(bgra, spec, order="bgr")[0, 0].tolist() == [30, 20, 10]
    assert preprocess(bgra, spec, order="rgb")[0, 0].tolist() == [10, 20, 30]
    assert preprocess(bgra, PreprocessSpec(2, 2, color="bgr", dtype="uint8"), order="rgb")[0, 0].tolist() == [
        30,
        20,
        10,
    ]
    gray = preprocess(bgra, PreprocessSpec(2, 2, color="gray", dtype="uint8"), order="rgb")
    assert gray[0, 0].tolist() == [round(0.299 * 10 + 0.587 * 20 + 0.114 * 30)]  # RGB luma weights, not BGR's


def test_stretch_fills_the_whole_target_without_padding():
    image = np.full((2, 8, 3), 200, np.uint8)  # 1:4, the target is square: letterbox would pad
    out = preprocess(image, PreprocessSpec(4, 4, resize="stretch", dtype="uint8"))
    assert (out == 200).all()


@pytest.mark.parametrize("tall", [True, False])
def test_center_crop_of_a_one_pixel_strip_keeps_exactly_the_middle_line(tall):
    # 100 lines valued 0, 2, 4, ...: any blend of two lines would give an odd value
    line = (np.arange(100, dtype=np.uint8) * 2).reshape(100, 1)
    image = np.repeat(line if tall else line.T, 3).reshape((100, 1, 3) if tall else (1, 100, 3))
    spec = (
        PreprocessSpec(1, 4, resize="center-crop", dtype="uint8")
        if tall
        else PreprocessSpec(4, 1, resize="center-crop", dtype="uint8")
    )
    out = preprocess(image, spec)
    assert (out == 98).all()  # line 49 = (100 - 1) // 2


def test_bad_spec_values_are_named_in_the_error():
    with pytest.raises(
        EdgeclsError, match="unknown preprocessing interpolation 'bogus': use one of box-linear, auto, area"
    ):
        PreprocessSpec(8, 8, interpolation="bogus")
    with pytest.raises(EdgeclsError, match="preprocessing std needs 1 or 3 values, got 2"):
        PreprocessSpec(8, 8, std=(1, 2))


@pytest.mark.parametrize("field, value", [("mean", float("nan")), ("std", float("inf")), ("mean", float("-inf"))])
def test_a_non_finite_mean_or_std_is_refused_naming_the_field(field, value):
    """A NaN mean once made a bundle whose manifest held bare NaN (not JSON) and predicted `circle nan`."""
    with pytest.raises(EdgeclsError, match=f"preprocessing {field} must be finite numbers, got {value}"):
        PreprocessSpec(8, 8, **{field: (1.0, value, 2.0)})
    with pytest.raises(EdgeclsError, match=f"preprocessing {field} must be finite"):
        PreprocessSpec.from_dict({"height": 8, "width": 8, field: [value]})


def test_sixteen_bit_pixels_round_to_the_nearest_eight_bit_value():
    deep = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.floor(deep.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)  # v * 255 / 65535, rounded
    np.testing.assert_array_equal(to_rgb8(deep)[..., 0], expected)


def test_an_unreadable_path_is_one_clear_error():
    from edgecls.runtime.preprocess import load_image

    with pytest.raises(ImageDecodeError, match="cannot read image .*embedded null byte"):
        load_image("bad\0name.png")  # numpy raises ValueError, which has no strerror


def test_letterbox_of_a_tall_image_pads_left_and_right_and_shrinks_with_area():
    image = np.random.default_rng(5).integers(0, 256, (60, 27, 3), dtype=np.uint8)  # 60x27 -> 40x18 inside 40x40
    out = preprocess(
        image, PreprocessSpec(40, 40, resize="letterbox", dtype="uint8", pad_value=3, interpolation="auto")
    )
    assert (out[:, :11] == 3).all() and (out[:, 29:] == 3).all()  # (40 - 18) // 2 = 11 columns each side
    np.testing.assert_array_equal(out[:, 11:29], cv2.resize(image, (18, 40), interpolation=cv2.INTER_AREA))
    assert (out[:, 11:29] != cv2.resize(image, (18, 40), interpolation=cv2.INTER_LINEAR)).any()  # the choice shows


def _jpeg_bytes(progressive: bool = False) -> bytes:
    image = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 2)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])[1].tobytes()


@pytest.mark.parametrize("progressive", [False, True])
def test_the_truncation_walker_judges_cut_jpegs_itself(progressive):
    """The walker itself: this OpenCV refuses cut JPEGs before it runs, builds whose libjpeg decodes them grey do
    not."""
    from edgecls.runtime.preprocess import _is_truncated_jpeg

    data = _jpeg_bytes(progressive)
    judged = {
        name: _is_truncated_jpeg(np.frombuffer(buf, np.uint8))
        for name, buf in {
            "whole": data,
            "with trailing data": data + b"\x00" * 100,
            "no end-of-image marker": data[:-2],
            "half": data[: len(data) // 2],
        }.items()
    }
    assert judged == {"whole": False, "with trailing data": False, "no end-of-image marker": True, "half": True}


def test_an_empty_comment_segment_is_legal():
    data = _jpeg_bytes()
    with_empty_comment = data[:2] + b"\xff\xfe\x00\x02" + data[2:]  # COM whose length counts only itself
    np.testing.assert_array_equal(decode_image(with_empty_comment), decode_image(data))


def test_only_files_that_start_like_a_jpeg_are_walked():
    from edgecls.runtime.preprocess import _is_truncated_jpeg

    jpeg2000 = b"\xff\x4f\xff\x51\x00\x29" + bytes(60)  # a JPEG 2000 codestream also starts with 0xFF
    assert not _is_truncated_jpeg(np.frombuffer(jpeg2000, np.uint8))
    assert not _is_truncated_jpeg(np.frombuffer(b"\x00\xd8" + bytes(60), np.uint8))
