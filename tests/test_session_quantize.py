"""Quantization of inputs, dequantization of outputs and the sigmoid head (runtime/session.py).

Checked against hand-computed values and against each runtime's own quantize op: a one-node
ONNX QuantizeLinear in ONNX Runtime and a TFLite QUANTIZE op in LiteRT.
"""

import numpy as np
import pytest

from edgecls.runtime.backends.base import TensorSpec
from edgecls.runtime.session import ModelSession, dequantize, quantize, to_probabilities

N = 1024  # values per runtime check
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")  # TF converter noise


def _values(scale: float, seed: int = 0) -> np.ndarray:
    """Ties of x/scale, their float neighbours, random values, out-of-range values, and the
    issue's case: every pixel of symmetric normalization, (p - 127.5) / 127.5."""
    rng = np.random.default_rng(seed)
    s = np.float32(scale)
    x = ((rng.integers(-140, 140, N).astype(np.float32) + np.float32(0.5)) * s).astype(np.float32)
    x[1::7] = np.nextafter(x[1::7], np.float32(np.inf))
    x[2::7] = np.nextafter(x[2::7], np.float32(-np.inf))
    x[3::7] = rng.uniform(-3, 3, len(x[3::7])).astype(np.float32)
    pixels = np.arange(256, dtype=np.float32)
    x[:256] = (pixels - np.float32(127.5)) * (np.float32(1.0) / np.float32(127.5))
    x[256:260] = [300 * scale, -300 * scale, 0.0, -0.0]
    return x


# -- against ONNX Runtime's QuantizeLinear ------------------------------------------------------


def _onnx_quantize_linear(scale: float, zero_point: int, dtype: str):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    elem = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}[dtype]
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["y"])],
        "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
        [helper.make_tensor_value_info("y", elem, [N])],
        initializer=[
            helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
            helper.make_tensor("zero_point", elem, [], [zero_point]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "dtype, scale, zero_point",
    [
        ("int8", 2 / 255, -1),  # symmetric normalization, [-1, 1] calibration: every pixel is a tie
        ("int8", 0.018658448, -14),
        ("uint8", 0.013607842, 27),
        ("uint8", 1 / 255, 0),
    ],
)
def test_quantize_matches_onnxruntime_quantizelinear(dtype, scale, zero_point):
    scale = float(np.float32(scale))  # what an ONNX float initializer holds
    x = _values(scale)
    expected = _onnx_quantize_linear(scale, zero_point, dtype)(x)
    got = quantize(x, TensorSpec("x", (N,), dtype, scale, zero_point, "onnx"))
    assert got.dtype == expected.dtype
    assert int((got != expected).sum()) == 0, np.flatnonzero(got != expected)[:10]


# -- against LiteRT's QUANTIZE op ------------------------------------------------------------------


def _tflite_quantize_model(path, lo: float, hi: float, input_type: str) -> None:
    """float (or int8) input [N] -> QUANTIZE -> concat -> int8 output, quantized for range [lo, hi]."""
    import tensorflow as tf

    inp = tf.keras.Input((N,))
    model = tf.keras.Model(inp, tf.keras.layers.Concatenate()([inp, inp]))  # concat: not folded away

    def calibration():
        for v in (lo, hi):
            yield [np.full((1, N), v, np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8 if input_type == "int8" else tf.float32
    converter.inference_output_type = tf.int8
    path.write_bytes(converter.convert())


RANGES = [(-1.0, 1.0), (0.0, 1.0), (-2.117904, 2.64), (-0.37, 3.1)]


@pytest.fixture(scope="module")
def tflite_models(tmp_path_factory):
    """{(lo, hi, input type): model path}, built once by the real TFLite converter."""
    folder = tmp_path_factory.mktemp("quantize-models")
    models = {}
    for lo, hi in RANGES:
        for input_type in ("float32", "int8"):
            models[lo, hi, input_type] = folder / f"q_{lo}_{hi}_{input_type}.tflite"
            _tflite_quantize_model(models[lo, hi, input_type], lo, hi, input_type)
    return models


@pytest.mark.parametrize("lo, hi", RANGES)
def test_quantize_matches_litert_quantize_op(tflite_models, lo, hi):
    from edgecls.runtime.backends.litert import LiteRTBackend

    backend = LiteRTBackend(tflite_models[lo, hi, "float32"])  # the interpreter the runtime uses
    spec = backend.output_spec  # the QUANTIZE op's output quantization, as the backend reports it
    assert backend.input_spec.dtype == "float32" and spec.dtype == "int8" and spec.quantize_like == "litert"
    x = _values(spec.scale, seed=1)
    expected = backend.run(x[None])[0, :N]  # concat of the quantized input with itself, no requantization
    got = quantize(x, spec)
    assert int((got != expected).sum()) == 0, np.flatnonzero(got != expected)[:10]


@pytest.mark.parametrize("lo, hi", RANGES)
def test_int8_litert_model_round_trips_through_the_session(tflite_models, lo, hi):
    """An int8-input model: the session quantizes, LiteRT copies, the session dequantizes."""
    session = ModelSession(tflite_models[lo, hi, "int8"], "tflite")
    spec = session.input_spec
    assert spec.dtype == "int8" and spec.scale > 0
    x = np.linspace(lo, hi, N, dtype=np.float32)[None]
    y = session.predict(x)
    assert y.shape == (1, 2 * N) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, :N], dequantize(quantize(x, spec), session.backend.output_spec))
    assert np.abs(y[:, :N] - x).max() <= spec.scale / 2 + 1e-6  # within half a step: no zero-point slip


# -- hand-computed ------------------------------------------------------------------------------


@pytest.mark.parametrize("like", ["onnx", "litert"])
def test_quantize_int8_by_hand(like):
    spec = TensorSpec("x", (7,), "int8", 0.5, 3, like)
    x = np.array([0.0, 0.25, 0.75, -0.25, 1.0, 100.0, -100.0], np.float32)
    # x / 0.5 = 0, 0.5, 1.5, -0.5, 2, 200, -200; ties to even: 0, 0, 2, 0, 2; + 3; clipped to [-128, 127]
    q = quantize(x, spec)
    assert q.dtype == np.int8
    assert q.tolist() == [3, 3, 5, 3, 5, 127, -128]


@pytest.mark.parametrize("like", ["onnx", "litert"])
def test_quantize_uint8_by_hand(like):
    spec = TensorSpec("x", (7,), "uint8", 0.25, 128, like)
    x = np.array([0.0, 0.125, -0.125, 0.375, 31.75, 40.0, -40.0], np.float32)
    # x / 0.25 = 0, 0.5, -0.5, 1.5, 127, 160, -160; ties to even: 0, 0, 0, 2; + 128; clipped to [0, 255]
    q = quantize(x, spec)
    assert q.dtype == np.uint8
    assert q.tolist() == [128, 128, 128, 130, 255, 255, 0]


def test_float_inputs_are_only_cast():
    x = np.array([0.1, -2.5], np.float64)
    out = quantize(x, TensorSpec("x", (2,), "float32"))
    assert out.dtype == np.float32 and out.tolist() == [np.float32(0.1), -2.5]


def test_dequantize_by_hand():
    int8 = dequantize(np.array([3, 5, -128, 127], np.int8), TensorSpec("y", (4,), "int8", 0.5, 3))
    assert int8.dtype == np.float32 and int8.tolist() == [0.0, 1.0, -65.5, 62.0]
    uint8 = dequantize(np.array([128, 0, 255], np.uint8), TensorSpec("y", (3,), "uint8", 0.25, 128))
    assert uint8.dtype == np.float32 and uint8.tolist() == [0.0, -32.0, 31.75]
    floats = dequantize(np.array([0.25, 2.0], np.float32), TensorSpec("y", (2,), "float32"))
    assert floats.tolist() == [0.25, 2.0]


def test_sigmoid_head_becomes_two_classes():
    probs = to_probabilities(np.array([[0.25], [0.9]], np.float32), "sigmoid")
    np.testing.assert_allclose(probs, [[0.75, 0.25], [0.1, 0.9]], rtol=0, atol=1e-7)
    # (N, 1, 1) outputs are flattened first; softmax heads and multi-unit outputs are left alone
    assert to_probabilities(np.array([[[0.2]]]), "sigmoid").tolist() == [[0.8, 0.2]]
    softmax = np.array([[0.1, 0.7, 0.2]])
    assert to_probabilities(softmax, "softmax").tolist() == softmax.tolist()
    assert to_probabilities(np.array([[0.3]]), "softmax").tolist() == [[0.3]]


def test_sigmoid_model_in_onnxruntime_gives_not_p_then_p(tmp_path):
    """A real one-node Sigmoid model through ModelSession with a sigmoid head."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["p"])],
        "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "sigmoid.onnx")
    session = ModelSession(tmp_path / "sigmoid.onnx", "onnx", head="sigmoid")
    probs = session.predict(np.array([[0.0], [np.log(3.0)]], np.float32))  # sigmoid: 0.5, 0.75
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]], rtol=0, atol=1e-6)


@pytest.mark.parametrize("like", ["onnx", "litert"])
def test_uint8_pixels_are_the_models_own_values_never_rescaled(like):
    """A spec with dtype uint8 gives pixels; a model that takes camera bytes (scale 2/255, zero point 128) gets them
    as they are, where quantizing them as real values would clip nearly all to 255."""
    pixels = np.array([0, 1, 127, 128, 200, 255], np.uint8)
    out = quantize(pixels, TensorSpec("x", (6,), "uint8", 2 / 255, 128, like))
    assert out.dtype == np.uint8 and out.tolist() == pixels.tolist()
