"""edgecls.runtime.classifier with LiteRT: one Classifier shared by two threads gives the single-threaded scores."""

import threading

import numpy as np
import pytest

from edgecls.runtime.classifier import Classifier

THREADS, CALLS = 2, 1200


def _images():
    """Shapes and noise of a few sizes: distinct scores, so a swapped result is visible."""
    from edgecls.core.datasets.shapes import render_shape

    rng = np.random.default_rng(0)
    shapes = [render_shape(kind, rng, 40) for kind in ("circle", "square", "triangle")]
    noise = [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(5)]
    return shapes + noise


@pytest.mark.parametrize("artifact", ["tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8"])
def test_one_classifier_from_two_threads_matches_single_threaded(tiny_bundle, artifact):
    classifier = Classifier(tiny_bundle, artifact=artifact)
    k = len(classifier.labels)
    images = _images()
    expected = [classifier.classify(im, order="bgr", top_k=k).topk for im in images]
    assert len({tuple(t) for t in expected}) == len(images)  # else a mix-up could go unseen

    errors, wrong, done = [], [], [0] * THREADS
    start = threading.Barrier(THREADS)

    def work(t):
        start.wait()
        for i in range(CALLS):
            j = (i * (t + 1) + t) % len(images)  # the threads ask for different images at the same time
            try:
                if classifier.classify(images[j], order="bgr", top_k=k).topk != expected[j]:
                    wrong.append((t, i))
            except Exception as exc:  # counted, not raised: the thread must go on to 1,200 calls
                errors.append(repr(exc))
            done[t] += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert done == [CALLS] * THREADS
    assert (len(errors), len(wrong)) == (0, 0), (errors[:3], wrong[:3])
