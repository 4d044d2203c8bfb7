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


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_reach_the_onnxruntime_session(softmax_model, threads):
    session = ModelSession(softmax_model, "onnx", threads=threads)
    assert session.backend._session.get_session_options().intra_op_num_threads == threads


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 1), (4, 3)])
def test_without_threads_an_inference_gets_every_usable_core_but_one(
    softmax_model, tiny_bundle, monkeypatch, fmt, cpus, expected
):
    """Not the engine's own default (ONNX Runtime: a spinning thread per core), which took 1.7x longer beside one
    busy process on 2 cores (runtime/backends/threads.py)."""
    import os

    from edgecls.runtime.backends import threads

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    path = softmax_model if fmt == "onnx" else tiny_bundle / "model_int8.tflite"
    before = os_threads()
    backend = ModelSession(path, fmt).backend
    assert backend.threads == expected
    if fmt == "onnx":
        assert backend._session.get_session_options().intra_op_num_threads == expected
    else:  # what the interpreter really got: XNNPACK starts threads - 1 pool threads when it loads
        assert os_threads() - before == expected - 1
    assert ModelSession(path, fmt, threads=2).backend.threads == 2  # a caller's or profile's number wins


def test_usable_cpus_are_this_process_affinity(monkeypatch):
    """A container's or taskset's limit, not the machine's CPU count."""
    import os

    from edgecls.runtime.backends.threads import default_threads, usable_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert usable_cpus() == 3 and default_threads() == 2


@pytest.mark.parametrize("allow_spinning, entry", [(True, "1"), (False, "0")])
def test_spinning_reaches_the_onnxruntime_session(softmax_model, allow_spinning, entry):
    from edgecls.runtime.backends.onnxrt import SPINNING

    session = ModelSession(softmax_model, "onnx", threads=2, allow_spinning=allow_spinning)
    assert session.backend._session.get_session_options().get_session_config_entry(SPINNING) == entry


def test_without_a_spinning_setting_onnxruntime_keeps_its_own_default(softmax_model):
    from edgecls.runtime.backends.onnxrt import SPINNING

    options = ModelSession(softmax_model, "onnx", threads=2).backend._session.get_session_options()
    with pytest.raises(
        RuntimeError, match="does not have configuration"
    ):  # no entry at all: ONNX Runtime's default (spin) applies
        options.get_session_config_entry(SPINNING)


def test_a_profile_turning_spinning_off_reaches_the_classifiers_session(tiny_bundle, tmp_path):
    import json

    from edgecls.devices.profiles import load_profile
    from edgecls.runtime.backends.onnxrt import SPINNING
    from edgecls.runtime.classifier import Classifier

    path = tmp_path / "busy.json"
    path.write_text(json.dumps({"name": "busy", "artifacts": ["onnx-int8"], "threads": 2, "ort_allow_spinning": False}))
    classifier = Classifier(tiny_bundle, profile=load_profile(str(path)))
    options = classifier.session.backend._session.get_session_options()
    assert options.get_session_config_entry(SPINNING) == "0" and options.intra_op_num_threads == 2


def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_logits_become_a_softmax_even_in_the_thousands_and_probabilities_pass_unchanged():
    from edgecls.runtime.session import to_probabilities

    logits = np.array([[2.0, -1.0, 0.5], [1000.0, 998.0, -1000.0], [-3000.0, -3001.0, -2999.5]], np.float32)
    probs = to_probabilities(logits, "softmax", "logits")
    assert probs.dtype == np.float32 and np.isfinite(probs).all()  # exp(1000) would overflow without the max
    np.testing.assert_allclose(probs, _softmax64(logits), rtol=0, atol=1e-7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    already = np.array([[0.2, 0.3, 0.5]], np.float32)
    np.testing.assert_array_equal(to_probabilities(already, "softmax"), already)  # "probs", the default


def test_a_one_unit_sigmoid_head_with_logits_becomes_one_minus_s_and_s():
    from edgecls.runtime.session import to_probabilities

    z = np.array([[0.0], [2.0], [-40.0], [40.0]], np.float32)
    s = 1 / (1 + np.exp(-z.astype(np.float64)))
    probs = to_probabilities(z, "sigmoid", "logits")
    np.testing.assert_allclose(probs, np.concatenate([1 - s, s], axis=1), rtol=1e-6, atol=1e-12)
    assert probs[2, 1] > 0 and probs[3, 0] > 0  # no underflow to 0 on either side: 1 - s is computed as s(-z)
    # already a probability: [1 - p, p] as before
    np.testing.assert_allclose(to_probabilities(np.float32([[0.25]]), "sigmoid"), [[0.75, 0.25]])


def test_int8_logits_are_dequantized_before_the_softmax():
    """An int8 output (LiteRT scale and zero point): dequantize(q) then softmax, never softmax of the integers."""
    from edgecls.runtime.backends.base import TensorSpec
    from edgecls.runtime.session import dequantize, to_probabilities

    q = np.array([[100, 20, -128]], np.int8)
    spec = TensorSpec("logits", (1, 3), "int8", 0.05, -28)
    probs = to_probabilities(dequantize(q, spec), "softmax", "logits")
    np.testing.assert_allclose(probs, _softmax64((q.astype(np.float64) + 28) * 0.05), atol=1e-7)


def test_an_nchw_session_transposes_predicts_float_input(tmp_path):
    """predict takes (N, H, W, C) as preprocess gives it; an NCHW model gets (N, C, H, W), height and width kept."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # y = the input flattened: any transpose shows as a permutation of the output
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 24])],
    )
    path = tmp_path / "flat.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.arange(2 * 2 * 4 * 3, dtype=np.float32).reshape(2, 2, 4, 3)
    out = ModelSession(path, "onnx", layout="NCHW").predict(x)
    np.testing.assert_array_equal(out, x.transpose(0, 3, 1, 2).reshape(2, 24))


def test_a_session_takes_the_layout_in_either_case_and_refuses_unknown_layouts_or_outputs(softmax_model):
    from edgecls.runtime.errors import EdgeclsError

    assert ModelSession(softmax_model, "onnx", layout="nchw").layout == "NCHW"
    for bad in ({"layout": "CHW"}, {"output": "softmax"}):
        with pytest.raises(EdgeclsError, match="use one of NHWC, NCHW and one of probs, logits"):
            ModelSession(softmax_model, "onnx", **bad)


def test_a_session_has_ten_parameters_at_most_and_still_passes_every_backend_option_by_keyword(softmax_model):
    """prefer, providers and the engines' own settings travel as keywords to the backend (the house's limit is ten
    parameters: prefer, threads and providers stood beside **engine_options as eleven)."""
    import inspect

    params = [p for p in inspect.signature(ModelSession.__init__).parameters if p != "self"]
    assert len(params) <= 10, params
    session = ModelSession(
        softmax_model,
        "onnx",
        threads=1,
        prefer=("onnxruntime",),
        providers=("CPUExecutionProvider",),
        allow_spinning=False,
    )
    assert session.backend.name == "onnxruntime" and session.backend.providers == ["CPUExecutionProvider"]
    assert session.backend.allow_spinning is False
    assert session.backend._session.get_session_options().intra_op_num_threads == 1
