"""edgecls.runtime.preprocess fast path: uint8 resize and one quantization table give the float path bit for bit."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgecls.runtime.backends.base import TensorSpec
from edgecls.runtime.classifier import Classifier
from edgecls.runtime.preprocess import PreprocessSpec, preprocess, resize
from edgecls.runtime.session import input_table, quantize

SPECS = [
    PreprocessSpec.scaled(24, 24, 1 / 127.5, -1.0, resize="center-crop"),
    PreprocessSpec.scaled(20, 28, 1 / 255, 0.0, resize="letterbox", pad_value=9),
    PreprocessSpec(16, 16, color="bgr", mean=(103.9, 116.8, 123.7), std=(57.4, 57.1, 58.4), interpolation="auto"),
    PreprocessSpec.scaled(18, 18, 1 / 255, 0.0, color="gray", resize="stretch", interpolation="linear"),
]
TENSORS = [
    TensorSpec("x", (1,), "int8", 0.0078125, 0, "litert"),
    TensorSpec("x", (1,), "int8", 0.0123, -7, "onnx"),  # an odd zero point: ties move if rounding is done late
    TensorSpec("x", (1,), "uint8", 0.0041, 131, "litert"),
    TensorSpec("x", (1,), "float32"),
    TensorSpec("x", (1,), "float16"),
]


def _frame(h=67, w=91, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _apply(image, spec, tensor, order):
    """What Classifier.prepare runs when the model's input is not raw uint8 pixels."""
    from edgecls.runtime.preprocess import pixels
    from edgecls.runtime.session import apply_table

    return apply_table(pixels(image, spec, order), input_table(spec, tensor))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.color}-{s.resize}-{s.interpolation}")
@pytest.mark.parametrize("tensor", TENSORS, ids=lambda t: f"{t.dtype}-{t.quantize_like}-{t.zero_point}")
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_table_path_equals_preprocess_then_quantize_bit_for_bit(spec, tensor, order):
    for seed in range(3):
        image = _frame(seed=seed)
        expected = quantize(preprocess(image, spec, order=order)[None], tensor)[0]
        got = _apply(image, spec, tensor, order)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_every_pixel_value_maps_like_the_float_path():
    """All 256 values in every channel, not only those a random image happens to hit."""
    spec = PreprocessSpec(16, 48, mean=(10.0, 128.0, 250.0), std=(3.0, 64.0, 0.5), interpolation="nearest")
    ramp = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2)
    image = np.concatenate([ramp, ramp[::-1], ramp[:, ::-1]], axis=1)  # 16 x 48, no resize
    tensor = TensorSpec("x", (1,), "int8", 0.37, 3, "onnx")
    table = input_table(spec, tensor)
    assert table.shape == (1, 256, 3)  # channels differ, so one table each
    np.testing.assert_array_equal(
        _apply(image, spec, tensor, "rgb"), quantize(preprocess(image, spec)[None], tensor)[0]
    )


def test_shared_table_when_channels_agree_and_none_for_raw_pixels():
    spec = PreprocessSpec.scaled(8, 8, 1 / 127.5, -1.0)
    assert input_table(spec, TENSORS[0]).shape == (256,)
    assert input_table(PreprocessSpec(8, 8, dtype="uint8"), TENSORS[0]) is None


def test_classifier_uses_the_fast_path_with_the_same_scores(tiny_bundle):
    """Every artifact of a real bundle: classify (table path) == the float API on preprocessed input."""
    image = _frame(120, 160, seed=4)
    bundle_names = [a.name for a in Classifier(tiny_bundle).bundle.manifest.artifacts]
    for name in bundle_names:
        clf = Classifier(tiny_bundle, artifact=name)
        fast = clf.infer(clf.prepare(image, "bgr")[None])[0]
        slow = clf.probabilities(preprocess(image, clf.spec, order="bgr")[None])[0]
        np.testing.assert_array_equal(fast, slow, err_msg=name)
        assert clf.classify(image, "bgr").score == pytest.approx(float(slow.max()), abs=1e-6)


def test_swapping_channels_after_resizing_is_exact():
    """The colour swap moved after the resize: every interpolation treats channels alone."""
    image = _frame(101, 77, seed=7)
    for mode in ("box-linear", "auto", "area", "linear", "cubic", "nearest"):
        for how in ("stretch", "center-crop", "letterbox"):
            spec = PreprocessSpec(30, 40, resize=how, interpolation=mode, dtype="uint8", pad_value=5)
            swapped_first = resize(np.ascontiguousarray(image[..., ::-1]), spec)
            np.testing.assert_array_equal(preprocess(image, spec, order="bgr"), swapped_first, err_msg=f"{mode} {how}")


@pytest.mark.parametrize(
    "src, dst",
    [
        ((480, 640), (224, 224)),
        ((481, 643), (224, 224)),
        ((1080, 1920), (96, 128)),
        ((30, 1000), (24, 24)),
        ((1, 500), (8, 8)),
        ((200, 100), (224, 224)),
    ],
)
def test_box_linear_averages_whole_boxes_then_resizes_linearly(src, dst):
    image = _frame(*src, seed=1)
    got = preprocess(image, PreprocessSpec(*dst, dtype="uint8"))  # box-linear is the default
    h, w = src
    kh, kw = max(1, h // dst[0]), max(1, w // dst[1])
    h2, w2 = h - h % kh, w - w % kw
    top, left = (h - h2) // 2, (w - w2) // 2
    boxes = image[top : top + h2, left : left + w2].reshape(h2 // kh, kh, w2 // kw, kw, 3).mean(axis=(1, 3))
    expected = cv2.resize(np.round(boxes).astype(np.uint8), dst[::-1], interpolation=cv2.INTER_LINEAR)
    assert got.shape == (*dst, 3)
    # OpenCV rounds the box mean and the linear step in fixed point: within a step or two of numpy's
    # float mean, and almost always equal (a generic INTER_AREA or a plain linear resize is far off).
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.2


def test_box_linear_is_much_faster_than_generic_area_on_a_vga_frame():
    """Not a timed target: a guard that the fast path is really taken (the generic path is ~7x slower)."""
    image = _frame(480, 640, seed=2)
    specs = {
        m: PreprocessSpec(224, 224, resize="center-crop", interpolation=m, dtype="uint8")
        for m in ("box-linear", "auto")
    }

    def cpu(spec):
        times = []
        for _ in range(15):
            t = time.thread_time()
            preprocess(image, spec, order="bgr")
            times.append(time.thread_time() - t)
        return sorted(times)[len(times) // 2]

    cpu(specs["auto"]), cpu(specs["box-linear"])  # warm up
    assert cpu(specs["box-linear"]) * 2 < cpu(specs["auto"])


def test_old_manifests_without_interpolation_keep_their_meaning():
    legacy = PreprocessSpec.from_dict({"height": 8, "width": 8})
    assert legacy.interpolation == "auto"
    assert PreprocessSpec(8, 8).interpolation == "box-linear"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.color}-{s.resize}-{s.interpolation}")
@pytest.mark.parametrize("tensor", TENSORS, ids=lambda t: f"{t.dtype}-{t.quantize_like}-{t.zero_point}")
def test_nchw_planes_through_the_table_equal_the_transposed_float_path_bit_for_bit(spec, tensor):
    """uint8 HWC -> planes -> one table per plane == quantize(transpose(normalize(pixels))), gray (one plane) too."""
    from dataclasses import replace

    from edgecls.runtime.preprocess import pixels
    from edgecls.runtime.session import apply_table

    spec = replace(spec, layout="NCHW")
    for seed in range(3):
        image = _frame(seed=seed)
        expected = quantize(preprocess(image, spec, order="bgr").transpose(2, 0, 1)[None], tensor)[0]
        got = apply_table(pixels(image, spec, "bgr"), input_table(spec, tensor), "NCHW")
        assert got.shape == spec.tensor_shape and got.dtype == expected.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
