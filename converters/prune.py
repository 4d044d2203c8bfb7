"""Pruning written for Keras 3 (TF-MOT only works with legacy tf-keras).

- structured=R: remove a fraction R of the filters of every prunable Conv2D, ranked by importance
  (BatchNorm scale when a BN follows, else the filter's L1 norm), and rebuild a physically smaller
  model. A conv is prunable when its channels flow only through channel-wise layers (BN,
  activations, pooling, depthwise convs) into convs or Dense layers, so residual Add and Concatenate
  shapes are never touched (in MobileNetV2 that prunes the expansion convs). Every layer that lost
  input channels is then refitted on training images to give its original output (its bias takes
  the removed channels' mean contribution), and every BatchNorm's statistics are recomputed on the
  same images, so fine-tuning starts near the original model instead of far from it.
- sparsity=S: magnitude pruning of Conv/Dense kernels to sparsity S with a polynomial schedule
  during fine-tuning; the masks are applied to the weights, so no wrapper survives in the model.

Both fine-tune on the run's training data afterwards.
"""

from __future__ import annotations

import numpy as np

from edgecls.converters.calibration import representative_set
from edgecls.converters.macs import count_macs
from edgecls.core.progress import progress
from edgecls.runtime.errors import EdgeclsError


def parse_prune(spec: str) -> tuple:
    kind, _, value = spec.partition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if kind not in ("structured", "sparsity") or not 0 < ratio < 1:
        raise EdgeclsError(f"cannot read --prune {spec!r}: use structured=RATIO or sparsity=RATIO with 0 < RATIO < 1")
    return kind, ratio


STATS_PIXELS = 2**23  # input pixels for the refit and the BN statistics: 512 small images, ~170 at 224x224

# ---------------------------------------------------------------- graph helpers


def _layers():
    from keras import layers

    passthrough = (
        layers.BatchNormalization,
        layers.ReLU,
        layers.Activation,
        layers.Dropout,
        layers.MaxPooling2D,
        layers.AveragePooling2D,
        layers.ZeroPadding2D,
        layers.GlobalAveragePooling2D,
        layers.GlobalMaxPooling2D,
        layers.SpatialDropout2D,
        layers.LeakyReLU,
    )
    return layers, passthrough


def _inputs(layer) -> list:
    t = layer.input
    return t if isinstance(t, (list, tuple)) else [t]


def _producer(tensor):
    return tensor._keras_history.operation


def _consumers(model) -> dict:
    out = {}
    for layer in model.layers:
        for t in _inputs(layer):
            out.setdefault(_producer(t).name, []).append(layer)
    return out


def _is_channelwise(layer) -> bool:
    layers, passthrough = _layers()
    if isinstance(layer, layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    return isinstance(layer, passthrough) and len(_inputs(layer)) == 1


def _is_prunable(conv, consumers: dict, outputs: set) -> bool:
    layers, _ = _layers()
    stack, seen = [conv], set()
    while stack:
        layer = stack.pop()
        if layer.name in outputs:
            return False
        for nxt in consumers.get(layer.name, []):
            if nxt.name in seen:
                continue
            seen.add(nxt.name)
            if isinstance(nxt, layers.Dense) or (
                isinstance(nxt, layers.Conv2D) and not isinstance(nxt, layers.DepthwiseConv2D) and nxt.groups == 1
            ):
                continue  # consumes channels: its input side gets sliced
            if _is_channelwise(nxt):
                stack.append(nxt)
                continue
            return False  # Add, Concatenate, Flatten, Reshape, ...: shapes must not change
    return bool(consumers.get(conv.name))


def _importance(conv, consumers: dict) -> np.ndarray:
    layers, _ = _layers()
    nxt = consumers.get(conv.name, [])
    if len(nxt) == 1 and isinstance(nxt[0], layers.BatchNormalization) and nxt[0].scale:
        return np.abs(nxt[0].gamma.numpy())
    kernel = conv.kernel.numpy()
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


# ---------------------------------------------------------------- structured


def structured_prune(model, ratio: float, sample: np.ndarray | None = None, batch_size: int = 32):
    """Return a new, smaller model with `ratio` of each prunable conv's filters removed.

    With `sample` (training inputs), every layer that lost input channels is refitted to give the
    original model's output from what it still receives (`_refit`): its bias takes the removed
    channels' mean contribution (the fold) and its kernel what the kept channels can explain.
    Without `sample` the remaining weights are only sliced.
    """
    import keras

    layers, _ = _layers()
    consumers = _consumers(model)
    outputs = {_producer(t).name for t in (model.outputs)}
    keep: dict = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise EdgeclsError(
                "structured pruning needs a flat model (no nested sub-models); use --prune sparsity=… instead"
            )
        if _is_dense_conv(layer) and _is_prunable(layer, consumers, outputs):
            n_keep = max(1, int(round(layer.filters * (1 - ratio))))
            keep[layer.name] = np.sort(np.argsort(_importance(layer, consumers))[::-1][:n_keep])
    if not keep:
        raise EdgeclsError("no prunable convolution found (every conv feeds an Add/Concatenate/Flatten or the output)")
    in_keep = _kept_inputs(model, keep)
    refit = [
        l for l in model.layers if in_keep[l.name] is not None and (isinstance(l, layers.Dense) or _is_dense_conv(l))
    ]
    # the fold needs somewhere to go: the layer's bias, else the BatchNorm right after it, else a new bias
    into_bn = {l.name: consumers[l.name][0].name for l in refit if not l.use_bias and _sole_batchnorm(l, consumers)}
    needs_bias = {l.name for l in refit if not l.use_bias and l.name not in into_bn} if sample is not None else set()

    def clone(layer):
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = int(len(keep[layer.name]))
        if layer.name in needs_bias:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    smaller = keras.models.clone_model(model, clone_function=clone)
    for old in model.layers:
        if isinstance(old, layers.InputLayer):
            continue  # no weights, and clone_model may rename it
        new, k_in, weights = smaller.get_layer(old.name), in_keep[old.name], old.get_weights()
        if isinstance(old, (layers.DepthwiseConv2D, layers.BatchNormalization)):
            if k_in is not None:
                weights = [w[:, :, k_in, :] if w.ndim == 4 else w[k_in] for w in weights]
        elif isinstance(old, (layers.Conv2D, layers.Dense)):
            if old.name in needs_bias:
                weights.append(np.zeros(weights[0].shape[-1], weights[0].dtype))
            if k_in is not None:
                weights[0] = weights[0][..., k_in, :]
            if old.name in keep:
                k = keep[old.name]
                weights = [weights[0][..., k]] + [w[k] for w in weights[1:]]
        new.set_weights(weights)
    if sample is not None:
        for layer in refit:
            bn = smaller.get_layer(into_bn[layer.name]) if layer.name in into_bn else None
            _refit(model, smaller, layer.name, keep.get(layer.name), sample, batch_size, bn)
    return smaller, {name: int(len(k)) for name, k in keep.items()}


def _is_dense_conv(layer) -> bool:
    layers, _ = _layers()
    return isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.DepthwiseConv2D) and layer.groups == 1


def _sole_batchnorm(layer, consumers: dict) -> bool:
    layers, _ = _layers()
    nxt = consumers.get(layer.name, [])
    return len(nxt) == 1 and isinstance(nxt[0], layers.BatchNormalization)


def _kept_inputs(model, keep: dict) -> dict:
    """Layer name -> the original input channels it still receives after pruning (None: all)."""
    layers, _ = _layers()
    out_keep, in_keep = {}, {}
    for layer in model.layers:
        ins = [] if isinstance(layer, layers.InputLayer) else [out_keep.get(_producer(t).name) for t in _inputs(layer)]
        in_keep[layer.name] = ins[0] if len(ins) == 1 else None
        if isinstance(layer, layers.Dense) or (
            isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.DepthwiseConv2D)
        ):
            out_keep[layer.name] = keep.get(layer.name)
        else:  # channel-wise layers (BN, activations, pooling, depthwise) pass the selection on
            out_keep[layer.name] = in_keep[layer.name]
    return in_keep


def _refit(
    original,
    smaller,
    name: str,
    out_keep,
    sample: np.ndarray,
    batch_size: int,
    bn=None,
    ridge: float = 1e-3,
    rows_per_batch: int = 8192,
) -> None:
    """Least-squares refit of one layer that lost input channels, with an intercept (the fold).

    Target: the original layer's output without bias, from all its original inputs; features: what
    the smaller model now feeds it (layers are refitted in graph order, so upstream changes are
    seen). The intercept is the removed channels' mean contribution: for a removed channel that is
    constant (BN scale 0: act(beta) everywhere) it is exactly that constant times the kernel summed
    over its taps for a Dense or 'valid' conv. Under 'same' padding the border positions saw fewer
    taps of it; one bias per channel cannot follow that, so it takes the least-squares compromise
    (a little low inside, high at the borders). The ridge term pulls the kernel towards the sliced
    original, which keeps the fit sane when features outnumber the sample (a Dense after pooling).
    The intercept goes into the layer's bias, or is subtracted from the moving mean of `bn`.
    """
    import keras

    layers, _ = _layers()
    old, new = original.get_layer(name), smaller.get_layer(name)
    probe_old, probe_new = keras.Model(original.inputs, old.input), keras.Model(smaller.inputs, new.input)
    kernel = old.kernel.numpy()
    if out_keep is not None:
        kernel = kernel[..., out_keep]
    rng = np.random.default_rng(0)
    n_features = int(np.prod(new.kernel.shape[:-1])) + 1
    gram, cross = np.zeros((n_features, n_features)), np.zeros((n_features, kernel.shape[-1]))
    for start in range(0, len(sample), batch_size):
        batch = sample[start : start + batch_size]
        target = _linear(old, probe_old([batch], training=False), kernel)
        features = _patches(new, probe_new([batch], training=False))
        rows = rng.permutation(len(target))[:rows_per_batch]
        a = np.hstack([features[rows], np.ones((len(rows), 1))])
        gram += a.T @ a
        cross += a.T @ target[rows]
    prior = np.vstack([new.kernel.numpy().reshape(n_features - 1, -1), np.zeros((1, kernel.shape[-1]))])
    penalty = np.full(n_features, ridge * np.trace(gram) / n_features)
    penalty[-1] = 0.0  # the intercept (the fold) is left free, as ridge regression does
    solution = np.linalg.solve(gram + np.diag(penalty), cross + penalty[:, None] * prior)
    new.kernel.assign(solution[:-1].reshape(new.kernel.shape).astype(np.float32))
    intercept = solution[-1].astype(np.float32)
    if new.use_bias:
        new.bias.assign(new.bias.numpy() + intercept)
    elif bn is not None:
        bn.moving_mean.assign(bn.moving_mean.numpy() - intercept)  # BN(z + b) with mean m == BN(z) with mean m - b


def _patches(layer, x) -> np.ndarray:
    """One row per output position: the inputs its kernel sees (im2col), in the kernel's order."""
    import keras

    layers, _ = _layers()
    if isinstance(layer, layers.Conv2D):
        x = keras.ops.image.extract_patches(
            x,
            tuple(layer.kernel_size),
            strides=tuple(layer.strides),
            dilation_rate=tuple(layer.dilation_rate),
            padding=layer.padding,
        )
    x = keras.ops.convert_to_numpy(x).astype(np.float64)
    return x.reshape(-1, x.shape[-1])


def _linear(layer, x, kernel: np.ndarray) -> np.ndarray:
    """The layer's own op (conv with its strides/padding/dilation, or matmul) with `kernel`, no bias."""
    import keras

    layers, _ = _layers()
    kernel = keras.ops.cast(kernel, keras.ops.convert_to_tensor(x).dtype)  # mixed precision: float16 inputs
    y = layer.convolution_op(x, kernel) if isinstance(layer, layers.Conv2D) else keras.ops.matmul(x, kernel)
    y = keras.ops.convert_to_numpy(y).astype(np.float64)
    return y.reshape(-1, y.shape[-1])


def _channel_moments(model, tensor, x: np.ndarray, batch_size: int) -> tuple:
    """Per-channel (mean, biased variance) of `tensor` (channels last) over `x`, in batches."""
    import keras

    probe = keras.Model(model.inputs, tensor)
    count, total, squares = 0, 0.0, 0.0
    for start in range(0, len(x), batch_size):
        a = keras.ops.convert_to_numpy(probe([x[start : start + batch_size]], training=False)).astype(np.float64)
        a = a.reshape(-1, a.shape[-1])
        count, total, squares = count + len(a), total + a.sum(axis=0), squares + (a * a).sum(axis=0)
    mean = total / count
    return mean, np.maximum(squares / count - mean**2, 0.0)


def recalibrate_batchnorm(model, x: np.ndarray, batch_size: int = 64) -> int:
    """Set every BatchNorm's moving mean/variance to the statistics of what reaches it now; return how many.

    After pruning, the stored statistics describe inputs that no longer exist. BNs are done in graph
    order, so each one is measured on inputs already normalized with the new statistics upstream:
    the result is the batch statistics of `x` taken as one batch (what training mode would use).
    """
    layers, _ = _layers()
    norms = [l for l in model.layers if isinstance(l, layers.BatchNormalization)]
    for bn in norms:
        if bn.axis not in (-1, len(bn.input.shape) - 1):
            raise EdgeclsError(f"cannot recalibrate {bn.name}: only channels-last BatchNormalization is supported")
        mean, var = _channel_moments(model, bn.input, x, batch_size)
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(var.astype(np.float32))
    return len(norms)


# ---------------------------------------------------------------- unstructured


def _prunable_kernels(model) -> list:
    layers, _ = _layers()
    return [l for l in _all_layers(model) if isinstance(l, (layers.Conv2D, layers.Dense))]


def _all_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _polynomial(step: int, end_step: int, target: float, power: int = 3) -> float:
    fraction = min(1.0, step / max(1, end_step))
    return target * (1 - (1 - fraction) ** power)


def _magnitude_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    k = int(round(sparsity * kernel.size))
    if k <= 0:
        return np.ones_like(kernel, dtype=bool)
    threshold = np.partition(np.abs(kernel).ravel(), k - 1)[k - 1]
    return np.abs(kernel) > threshold


def sparsity_callback(model, target: float, end_step: int, frequency: int = 10):
    """Keras callback: raise sparsity on the polynomial schedule and keep pruned weights at zero."""
    import keras

    kernels = _prunable_kernels(model)

    class MagnitudePruning(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step, self.masks = 0, {}

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % frequency == 0 or self.step >= end_step or not self.masks:
                s = _polynomial(self.step, end_step, target)
                self.masks = {l.name: _magnitude_mask(l.kernel.numpy(), s) for l in kernels}
            for layer in kernels:
                layer.kernel.assign(layer.kernel.numpy() * self.masks[layer.name])

    return MagnitudePruning()


def sparsity_of(model) -> float:
    kernels = [l.kernel.numpy() for l in _prunable_kernels(model)]
    total = sum(k.size for k in kernels)
    return float(sum((k == 0).sum() for k in kernels) / max(1, total))


def nonzero_params(model) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


# ---------------------------------------------------------------- fine-tuning


def _fine_tune(model, splits, run, epochs: int, seed: int, callbacks=(), lr_factor: float = 0.5):
    import keras

    from edgecls.core.augment import AugmentSpec, build_augmenter
    from edgecls.core.data import make_tf_dataset

    head = run.metadata.get("head", "softmax")
    as_targets = (lambda y: y.astype(np.float32)[:, None]) if head == "sigmoid" else None
    augment = AugmentSpec(**run.metadata.get("augment", {}))
    train_cfg = run.metadata.get("train", {})
    batch = int(train_cfg.get("batch_size", 32))
    lr = float(train_cfg.get("learning_rate", 1e-3)) * lr_factor
    loss = "binary_crossentropy" if head == "sigmoid" else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    train_ds = make_tf_dataset(
        splits["train"], batch, True, seed, build_augmenter(augment, run.preprocess, seed), as_targets
    )
    val_ds = make_tf_dataset(splits["val"], batch, False, seed, None, as_targets) if "val" in splits else None
    cbs = list(callbacks) + [
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss" if val_ds else "loss", factor=0.5, patience=2)
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=2, shuffle=False)
    return model


def _stats_size(model) -> int:
    """Images for the refit and BN statistics: many rows per channel, without hours on big inputs."""
    height, width = model.input_shape[1:3]
    return int(np.clip(STATS_PIXELS // (height * width), 64, 512))


def prune_model(model, spec: str, splits: dict, run, epochs: int = 8, seed: int = 0):
    """Prune and fine-tune; return (model, report with params and MACs before and after)."""
    import keras

    kind, ratio = parse_prune(spec)
    keras.utils.set_random_seed(seed)
    report = {
        "method": kind,
        "ratio": ratio,
        "params_before": int(model.count_params()),
        "macs_before": count_macs(model),
        "fine_tune_epochs": epochs,
    }
    progress(f"pruning: {kind}={ratio}, then fine-tuning for {epochs} epochs")
    if kind == "structured":
        stats = representative_set(splits["train"].x, _stats_size(model), seed)
        progress(f"refitting the layers that lost inputs and the BatchNorm statistics on {len(stats)} training images")
        model, kept = structured_prune(model, ratio, stats)
        report["filters_kept"] = kept
        report["batchnorm_recalibrated"] = recalibrate_batchnorm(model, stats)
        report["refit_images"] = int(len(stats))
        # the refit starts near the original: fine-tuning polishes, and at half the training rate it
        # undid part of the refit on digits (2 epochs: 0.983-0.994 at 1/2, 0.986-0.992 at 1/10)
        _fine_tune(model, splits, run, epochs, seed, lr_factor=0.1)
    else:
        steps_per_epoch = int(
            np.ceil(len(splits["train"].y) / int(run.metadata.get("train", {}).get("batch_size", 32)))
        )
        end_step = max(1, int(0.7 * epochs * steps_per_epoch))
        original, model = model, keras.models.clone_model(model)  # keep the caller's model untouched
        model.set_weights(original.get_weights())
        _fine_tune(model, splits, run, epochs, seed, callbacks=[sparsity_callback(model, ratio, end_step)])
        report["sparsity"] = round(sparsity_of(model), 4)
    report["params_after"] = int(model.count_params())
    report["nonzero_params_after"] = nonzero_params(model)
    report["macs_after"] = count_macs(model)
    return model, report
