import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError, ImageDecodeError
from edgecls.runtime.preprocess import PreprocessSpec, decode_image, load_image, preprocess, preprocess_file
from tests.conftest import write_image

cv2 = pytest.importorskip("cv2")


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


def test_i15_p1_thin_wide_and_one_pixel_images_preprocess_in_every_mode_without_blowing_up(tmp_path):
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
def test_i15_p1_center_crop_takes_the_middle_in_source_pixels_then_resizes_once(src, dst, window):
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
def test_i15_p2_jpegs_with_data_after_the_image_decode(tmp_path, progressive, trailing):
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
def test_i15_p2_truncated_jpegs_are_still_refused(tmp_path, progressive):
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


def test_i15_p14_a_small_image_gives_hand_computed_values():
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


def test_i15_p14_channel_order_of_a_pure_red_image(tmp_path):
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
def test_i15_p14_interpolation_is_the_documented_one(mode, src, dst, expected):
    flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}
    image = _noise(*src, seed=3)
    got = preprocess(image, PreprocessSpec(*dst, interpolation=mode, dtype="uint8"))
    results = {name: cv2.resize(image, dst[::-1], interpolation=flag) for name, flag in flags.items()}
    np.testing.assert_array_equal(got, results[expected])
    assert all((got != other).any() for name, other in results.items() if name != expected)  # the choice is visible
