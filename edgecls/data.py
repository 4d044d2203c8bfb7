"""The training input pipeline: files -> runtime.preprocess -> arrays -> tf.data.

Every image goes through `runtime.preprocess.preprocess_file`, the function the device runs,
so training and serving see identical tensors for the same file.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import DataError, ImageDecodeError
from runtime.preprocess import PreprocessSpec, decode_image, preprocess


@dataclass
class LoadedSplit:
    x: np.ndarray
    y: np.ndarray
    paths: list
    skipped: list = field(default_factory=list)  # (path, reason)
    digests: list = field(default_factory=list)  # sha256 per loaded file, in order


def _load_one(path, spec: PreprocessSpec):
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, None, f"unreadable ({exc.strerror or exc})"
    digest = hashlib.sha256(data.tobytes()).hexdigest()
    try:
        tensor = preprocess(decode_image(data, name=str(path)), spec, order="rgb")
    except ImageDecodeError as exc:
        return None, digest, str(exc).split(": ", 1)[-1]
    return tensor, digest, None


def load_split(samples: list, spec: PreprocessSpec, workers: int = 4, name: str = "") -> LoadedSplit:
    """Decode and preprocess every sample (in threads: OpenCV releases the GIL); skip bad files."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda s: _load_one(s.path, spec), samples))
    xs, ys, paths, digests, skipped = [], [], [], [], []
    for sample, (tensor, digest, problem) in zip(samples, results):
        if problem:
            skipped.append((str(sample.path), problem))
            continue
        xs.append(tensor)
        ys.append(sample.label)
        paths.append(str(sample.path))
        digests.append(digest)
    if skipped:
        first = f"{skipped[0][0]}: {skipped[0][1]}"
        print(f"warning: skipped {len(skipped)} unreadable image(s) in {name or 'data'} (first: {first})", file=sys.stderr)
    if not xs:
        raise DataError(f"no readable images in the {name or 'data'} split: every file failed to decode ({skipped[0][1] if skipped else 'no files'})")
    return LoadedSplit(np.stack(xs), np.asarray(ys, dtype=np.int64), paths, skipped, digests)


def fingerprint(labels: list, splits: dict) -> str:
    """sha256 over labels and (split, label, file content hash), independent of absolute paths."""
    h = hashlib.sha256()
    h.update("\n".join(labels).encode())
    for name in sorted(splits):
        for digest, label in sorted(zip(splits[name].digests, splits[name].y.tolist())):
            h.update(f"{name}:{label}:{digest}\n".encode())
    return h.hexdigest()


def make_tf_dataset(split: LoadedSplit, batch_size: int, shuffle: bool, seed: int, augment=None, labels_for=None):
    """A tf.data pipeline over preloaded tensors; augmentation (if any) runs here, not in the model."""
    import tensorflow as tf

    y = labels_for(split.y) if labels_for else split.y
    ds = tf.data.Dataset.from_tensor_slices((split.x, y))
    if shuffle:
        ds = ds.shuffle(len(split.x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, t: (augment(x, training=True), t), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
