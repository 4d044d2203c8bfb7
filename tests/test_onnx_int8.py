"""edgecls.converters.onnx: int8 artifacts that ONNX Runtime's CPU provider runs fully in integer.

The model is a two-block MobileNetV2 in miniature (ReLU6, depthwise conv, residual Adds), the
structure whose int8 graph used to keep float Conv/Add and layout Transposes. The properties are
structural, not timings: benchmarks/onnx_int8.py measures the speed they buy.
"""

from collections import Counter

import numpy as np
import pytest

from edgecls.converters import onnx as onnx_export


def _mini_mobilenet_v2():
    keras = pytest.importorskip("keras")
    layers = keras.layers
    keras.utils.set_random_seed(0)

    def conv_bn_relu6(x, filters, kernel=1, strides=1, depthwise=False):
        conv = (
            layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False)
            if depthwise
            else layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)
        )
        return layers.ReLU(6.0)(layers.BatchNormalization()(conv(x)))

    def inverted_residual(x, channels):
        y = conv_bn_relu6(x, channels * 4)
        y = conv_bn_relu6(y, None, kernel=3, depthwise=True)
        y = layers.BatchNormalization()(layers.Conv2D(channels, 1, use_bias=False)(y))
        return layers.Add()([x, y])

    inputs = keras.Input((16, 16, 3))
    x = conv_bn_relu6(inputs, 16, kernel=3, strides=2)
    x = inverted_residual(inverted_residual(x, 16), 16)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def mini_int8(tmp_path_factory):
    """(fp32 path, int8 path built with the converter's default options, sample images)."""
    folder = tmp_path_factory.mktemp("onnx-int8")
    x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    onnx_export.export_onnx(_mini_mobilenet_v2(), fp32, x)
    onnx_export.quantize_int8(fp32, int8, x, onnx_export.OnnxQuantOptions())
    return fp32, int8, x


def _optimized_ops(path, tmp_path) -> Counter:
    """Op types of the graph ONNX Runtime's CPU provider really runs (all optimisations, as the backend loads it)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_onnxruntime_runs_every_conv_and_residual_add_of_the_int8_model_in_integer(mini_int8, tmp_path):
    import onnx

    fp32, int8, _ = mini_int8
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32)).graph.node)
    ops = _optimized_ops(int8, tmp_path)
    # before: int8 activations, rewritten to uint8 only partly at load, left Convs and Adds in float
    # between DequantizeLinear/QuantizeLinear, with NHWC<->NCHW Transposes around each of them
    assert ops["QLinearConv"] == convs == 7, ops  # stem + 2 x (expand, depthwise, project)
    assert ops["QLinearAdd"] == 2, ops
    assert not {"Conv", "FusedConv", "Add"} & set(ops), ops
    assert ops["Transpose"] <= 1, ops  # at most the one at the input, which Keras' NHWC export brings
    assert ops["QuantizeLinear"] == 1, ops  # float in once; everything after stays integer


def test_int8_model_has_uint8_activations_and_7_bit_symmetric_weights(mini_int8):
    import onnx
    from onnx import numpy_helper

    _, int8, _ = mini_int8
    graph = onnx.load(str(int8)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and {inits[n.input[2]].dtype for n in quantize} == {np.dtype(np.uint8)}
    weights = [
        inits[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim >= 2
    ]
    assert len(weights) == 8 and {w.dtype for w in weights} == {np.dtype(np.int8)}
    # 7-bit weights: a pair of u8 x s8 products fits int16, so AVX2's VPMADDUBSW cannot saturate
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_fused_int8_model_still_computes_what_fp32_does(mini_int8):
    from edgecls.runtime.session import ModelSession

    fp32, int8, x = mini_int8
    ref = ModelSession(fp32, "onnx").predict(x)  # an untrained model: probabilities near 1/3, so no argmax check
    assert np.abs(ModelSession(int8, "onnx").predict(x) - ref).max() < 0.02
