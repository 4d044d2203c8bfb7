"""edgecls.runtime.session: ModelSession.predict batching and empty input, through a real ONNX Runtime model.

Written for mutants that survived benchmarks/mutation.py (issue 15 point 14): the other session
tests never pass an empty batch or more rows than one batch holds.
"""

import numpy as np
import pytest

from edgecls.runtime.session import ModelSession


@pytest.fixture(scope="module")
def softmax_model(tmp_path_factory):
    """(N, 3) floats -> Softmax over the last axis: a real model whose outputs are checkable by hand."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"], axis=-1)],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("session") / "softmax.onnx"
    onnx.save(model, path)
    return path


def test_predict_of_an_empty_batch_is_an_empty_float32_array(softmax_model):
    out = ModelSession(softmax_model, "onnx").predict(np.zeros((0, 3), np.float32))
    assert out.dtype == np.float32 and out.shape[0] == 0 and out.size == 0


def test_predict_in_small_batches_equals_one_batch_and_keeps_row_order(softmax_model):
    session = ModelSession(softmax_model, "onnx")
    logits = np.log(np.array([[1, 1, 2], [1, 3, 4], [2, 1, 1], [5, 2, 1], [1, 6, 1]], np.float32))
    expected = np.array([[1, 1, 2], [1, 3, 4], [2, 1, 1], [5, 2, 1], [1, 6, 1]], np.float32)
    expected /= expected.sum(axis=1, keepdims=True)  # softmax of log(v) is v / sum(v)
    whole = session.predict(logits)
    np.testing.assert_allclose(whole, expected, rtol=0, atol=1e-6)
    for batch_size in (1, 2, 4, 5, 64):
        np.testing.assert_array_equal(session.predict(logits, batch_size=batch_size), whole)


@pytest.mark.parametrize("threads, intra_op", [(None, 0), (1, 1), (2, 2)])
def test_threads_reach_the_onnxruntime_session(softmax_model, threads, intra_op):
    session = ModelSession(softmax_model, "onnx", threads=threads)
    assert session.backend._session.get_session_options().intra_op_num_threads == intra_op  # 0: ORT's default
