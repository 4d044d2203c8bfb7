import numpy as np
import pytest

from runtime.errors import EdgeclsError, ImageDecodeError
from runtime.preprocess import PreprocessSpec, decode_image, load_image, preprocess, preprocess_file
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

    deep = (np.arange(81, dtype=np.uint16).reshape(9, 9) * 800)
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
        np.testing.assert_array_equal(preprocess(rgb, spec, order="rgb"), preprocess(rgb[..., ::-1].copy(), spec, order="bgr"))
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
