"""Preprocessing behaviours that mutants survived in benchmarks/mutation.py (issue 15 point 14).

Each test pins one behaviour with hand-computed expectations: the smallest valid size, no -0.0 in
specs, the manifest form of a spec, error messages that name the image, odd channel layouts, the
stretch and center-crop geometry at their edges, and truncation inside a segment after the scan.
"""

import json
import math
import sys

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError, ImageDecodeError, MissingDependencyError
from edgecls.runtime.preprocess import PreprocessSpec, decode_image, preprocess, to_rgb8

cv2 = pytest.importorskip("cv2")


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
