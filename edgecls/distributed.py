"""Multi-worker training on TensorFlow's own engine: custom steps under MultiWorkerMirroredStrategy.

Keras 3's `model.fit` fails under MultiWorkerMirroredStrategy with two or more workers
(keras-team/keras#20585, "Attempt to convert a value (PerReplica...)"), so `--strategy multiworker`
trains the same Keras model, optimizer and callbacks from a loop of `strategy.run` steps.

Every worker holds the whole file list (and, for a small dataset, its tensors) and keeps its shard of
each identically shuffled epoch (auto-sharding off: the shard is explicit), so a streamed dataset
decodes only its own shard's files each epoch; the shard is padded with zero-weight copies of real images to
the same number of steps everywhere, because a collective op that one worker skips hangs the others
(black padding would skew BatchNorm's batch statistics in training mode). Losses and
accuracies are all-reduced and BatchNorm statistics averaged after every epoch, so every worker sees
the same numbers, takes the same early-stopping and learning-rate decisions and holds the same weights.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgecls.callbacks import epoch_lines
from edgecls.runtime.atomic import staged_dir
from edgecls.runtime.errors import EdgeclsError


def is_chief(strategy) -> bool:
    """Whether this process writes the run: the `chief` task if the cluster has one, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


@contextmanager
def output_dir(final, chief: bool, **staged):
    """The chief stages the real run; every other worker writes the same files to a temp folder it deletes.

    All workers run the same code to the end, so nothing a worker does after training can leave the
    others waiting in a collective op.
    """
    if chief:
        with staged_dir(final, **staged) as stage:
            yield stage
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgecls-worker-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_copy(model):
    """The trained weights in a model outside the strategy, for evaluation, saving and export."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _lost_peer_errors() -> tuple:
    """What a collective op raises when another worker died: its connection is refused within seconds."""
    import tensorflow as tf

    return (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )


def _elements(split) -> tuple:
    """(file indices, index -> (tensor, int32 label, 1 or 0 if unreadable)) for an in-memory or a streamed split.

    A streamed file that fails to decode mid-epoch keeps its place with weight 0 (a blank image):
    dropping it would leave its worker one step short, and the others waiting for it.
    """
    import tensorflow as tf

    from edgecls.core.data import StreamedSplit

    if isinstance(split, StreamedSplit):
        return split.readable(), split.tf_elements(split.labels.astype(np.int32))
    x, y = tf.constant(split.x), tf.constant(split.y.astype(np.int32))
    return np.arange(len(split.y), dtype=np.int64), lambda i: (tf.gather(x, i), tf.gather(y, i), tf.constant(1.0))


class MultiWorkerTrainer:
    """`fit` for a compiled Keras model under MultiWorkerMirroredStrategy, with Keras callbacks."""

    def __init__(
        self,
        strategy,
        model,
        activation: str,
        train,
        val=None,
        batch_size: int = 32,
        seed: int = 0,
        augmenter=None,
        class_weights: dict | None = None,
        verbose: bool = True,
    ):
        import tensorflow as tf

        self.strategy, self.model, self.verbose = strategy, model, verbose
        self.sigmoid = activation == "sigmoid"
        replicas = strategy.num_replicas_in_sync
        self.global_batch = math.ceil(batch_size / replicas) * replicas  # each replica takes an equal share
        self.steps: dict = {}
        self.train = self._distribute("train", train, True, seed, augmenter)
        self.val = self._distribute("val", val, False, seed, None) if val is not None else None
        table = None
        if class_weights:
            table = np.ones(max(class_weights) + 1, np.float32)
            for label, weight in class_weights.items():
                table[label] = weight
        self.class_table = None if table is None else tf.constant(table)

    def _distribute(self, name: str, split, shuffle: bool, seed: int, augmenter):
        import tensorflow as tf

        from edgecls.core.data import StreamedSplit

        indices, element = _elements(split)
        n = len(indices)

        def dataset_fn(ctx):
            workers, index = ctx.num_input_pipelines, ctx.input_pipeline_id
            per_replica = ctx.get_per_replica_batch_size(self.global_batch)
            per_step = per_replica * max(1, self.strategy.num_replicas_in_sync // workers)
            steps = max(1, math.ceil(math.ceil(n / workers) / per_step))
            self.steps[name] = steps
            mine = len(range(index, n, workers))
            ds = tf.data.Dataset.from_tensor_slices((indices, np.ones(n, np.float32)))
            if shuffle:  # the same seed on every worker: the shards of one epoch do not overlap
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
            ds = ds.shard(workers, index)
            pad = steps * per_step - mine
            if pad:  # real images (BatchNorm's batch statistics see them), weighted 0 in loss and metrics
                fill = indices[np.arange(pad) % n]
                ds = ds.concatenate(tf.data.Dataset.from_tensor_slices((fill, np.zeros(pad, np.float32))))

            def load(i, weight):
                x, y, readable = element(i)
                return x, y, weight * readable

            ds = ds.map(
                load,
                num_parallel_calls=split.workers if isinstance(split, StreamedSplit) else tf.data.AUTOTUNE,
                deterministic=True,
            )
            ds = ds.batch(per_replica)
            if augmenter is not None:
                ds = ds.map(lambda a, t, m: (augmenter(a, training=True), t, m), num_parallel_calls=tf.data.AUTOTUNE)
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            if isinstance(split, StreamedSplit):
                options.threading.private_threadpool_size = max(2, split.workers)  # see edgecls.core.data.own_threads
            return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _losses(self, y, probs):
        import keras
        import tensorflow as tf

        if self.sigmoid:
            return keras.losses.binary_crossentropy(tf.cast(y, tf.float32)[:, None], probs)
        return keras.losses.sparse_categorical_crossentropy(y, probs)

    def _correct(self, y, probs, mask):
        import tensorflow as tf

        predicted = (
            tf.cast(probs[:, 0] > 0.5, tf.int32) if self.sigmoid else tf.argmax(probs, axis=-1, output_type=tf.int32)
        )
        return tf.reduce_sum(tf.cast(tf.equal(predicted, y), tf.float32) * mask)

    def _regularization(self):
        import tensorflow as tf

        losses = self.model.losses
        return tf.nn.scale_regularization_loss(tf.add_n(losses)) if losses else tf.constant(0.0)

    def _train_epoch_fn(self, optimizer):
        import tensorflow as tf

        model, table = self.model, self.class_table
        variables = model.trainable_variables

        def step(x, y, mask):
            weight = mask if table is None else mask * tf.gather(table, y)
            count = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(mask))
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                weighted = self._losses(y, probs) * weight
                regularization = self._regularization()
                loss = tf.reduce_sum(weighted) / tf.maximum(count, 1.0) + regularization
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return tf.stack(
                [tf.reduce_sum(weighted), tf.reduce_sum(mask), self._correct(y, probs, mask), regularization]
            )

        return self._summed_over_epoch(step)

    def _summed_over_epoch(self, step):
        """A tf.function running `step` on every batch of an epoch, its four totals summed over replicas."""
        import tensorflow as tf

        strategy = self.strategy

        @tf.function
        def run_epoch(iterator):
            totals = tf.zeros(4)
            for batch in iterator:
                totals += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=batch), axis=None)
            return totals

        return run_epoch

    def _val_epoch_fn(self):
        import tensorflow as tf

        model = self.model

        def step(x, y, mask):
            probs = model(x, training=False)
            return tf.stack(
                [
                    tf.reduce_sum(self._losses(y, probs) * mask),
                    tf.reduce_sum(mask),
                    self._correct(y, probs, mask),
                    self._regularization(),
                ]
            )

        return self._summed_over_epoch(step)

    def _sync_fn(self):
        """Average BatchNorm moving statistics over replicas (each saw only its own shard)."""
        import keras
        import tensorflow as tf

        stats = [
            v
            for layer in self.model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        strategy = self.strategy

        @tf.function
        def sync():
            values = strategy.run(lambda: [tf.identity(v.value) for v in stats])
            for v, value in zip(stats, values):
                v.assign(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None))

        return sync if stats else (lambda: None)

    @staticmethod
    def _logs(totals, steps: int, prefix: str = "") -> dict:
        weighted, count, correct, regularization = (float(v) for v in totals)
        return {
            f"{prefix}loss": weighted / max(count, 1.0) + regularization / steps,
            f"{prefix}accuracy": correct / max(count, 1.0),
        }

    def fit(self, epochs: int, initial_epoch: int = 0, callbacks=()) -> dict:
        """Train epochs `initial_epoch` .. `epochs - 1` (numbered like `model.fit`); returns the history."""
        import keras

        lost_peer = _lost_peer_errors()
        model, optimizer = self.model, self.model.optimizer
        if not optimizer.built:
            with self.strategy.scope():  # slots are mirrored variables, created outside any replica
                optimizer.build(model.trainable_variables)
        train_epoch, sync = self._train_epoch_fn(optimizer), self._sync_fn()
        val_epoch = self._val_epoch_fn() if self.val is not None else None
        lines = [epoch_lines()] if self.verbose else []  # on stdout, as a single-process run prints them
        cbs = keras.callbacks.CallbackList([*callbacks, *lines], model=model, epochs=epochs)
        model.stop_training = False
        history: dict = {}
        cbs.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            try:
                logs = self._logs(train_epoch(iter(self.train)).numpy(), self.steps["train"])
                sync()
                if val_epoch is not None:
                    logs.update(self._logs(val_epoch(iter(self.val)).numpy(), self.steps["val"], "val_"))
            except lost_peer as exc:
                raise EdgeclsError(
                    f"multi-worker training lost another worker in epoch {epoch + 1} "
                    f"({type(exc).__name__}): every worker must run to the end; start them all again"
                ) from exc
            logs["learning_rate"] = float(
                np.asarray(optimizer.learning_rate)
            )  # the rate this epoch used, as fit logs it
            cbs.on_epoch_end(epoch, logs)
            for key, value in logs.items():
                history.setdefault(key, []).append(float(value))
            if model.stop_training:
                break
        cbs.on_train_end()
        return history
