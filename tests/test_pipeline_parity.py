"""Same file in, same tensor out: the training pipeline and the runtime agree bit for bit."""

import numpy as np
import pytest

from edgecls.core.data import load_split, make_tf_dataset
from edgecls.core.datasets import scan_folder
from edgecls.runtime.preprocess import PreprocessSpec, preprocess_file


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec.scaled(24, 24, 1 / 255, 0.0),
        PreprocessSpec.scaled(20, 28, 1 / 127.5, -1.0, color="bgr", resize="letterbox"),
        PreprocessSpec(16, 16, color="gray", resize="center-crop", mean=(120,), std=(60,)),
    ],
)
def test_training_pipeline_and_runtime_give_identical_arrays(shapes_folder, spec):
    ds = scan_folder(shapes_folder, 0.0, 0.0)
    split = load_split(ds.splits["train"], spec)
    assert len(split.paths) == 72  # png, jpg, bmp and webp all decoded
    expected = np.stack([preprocess_file(p, spec) for p in split.paths])
    assert split.x.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(split.x, expected)

    # and what tf.data hands to model.fit (no shuffling, no augmentation) is the same again
    batches = [x.numpy() for x, _ in make_tf_dataset(split, 16, shuffle=False, seed=0)]
    np.testing.assert_array_equal(np.concatenate(batches), expected)
