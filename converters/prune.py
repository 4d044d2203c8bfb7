"""Pruning written for Keras 3 (TF-MOT only works with legacy tf-keras).

- structured=R: remove a fraction R of the filters of every prunable Conv2D, ranked by importance
  (BatchNorm scale when a BN follows, else the filter's L1 norm), and rebuild a physically smaller
  model. A conv is prunable when its channels flow only through channel-wise layers (BN,
  activations, pooling, depthwise convs) into convs or Dense layers, so residual Add and Concatenate
  shapes are never touched (in MobileNetV2 that prunes the expansion convs).
- sparsity=S: magnitude pruning of Conv/Dense kernels to sparsity S with a polynomial schedule
  during fine-tuning; the masks are applied to the weights, so no wrapper survives in the model.

Both fine-tune on the run's training data afterwards.
"""

from __future__ import annotations

import numpy as np

from converters.macs import count_macs
from edgecls.progress import progress
from runtime.errors import EdgeclsError


def parse_prune(spec: str) -> tuple:
    kind, _, value = spec.partition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if kind not in ("structured", "sparsity") or not 0 < ratio < 1:
        raise EdgeclsError(f"cannot read --prune {spec!r}: use structured=RATIO or sparsity=RATIO with 0 < RATIO < 1")
    return kind, ratio


# ---------------------------------------------------------------- graph helpers

def _layers():
    from keras import layers

    passthrough = (layers.BatchNormalization, layers.ReLU, layers.Activation, layers.Dropout, layers.MaxPooling2D,
                   layers.AveragePooling2D, layers.ZeroPadding2D, layers.GlobalAveragePooling2D,
                   layers.GlobalMaxPooling2D, layers.SpatialDropout2D, layers.LeakyReLU)
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
            if isinstance(nxt, layers.Dense) or (isinstance(nxt, layers.Conv2D) and not isinstance(nxt, layers.DepthwiseConv2D) and nxt.groups == 1):
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

def structured_prune(model, ratio: float):
    """Return a new, smaller model with `ratio` of each prunable conv's filters removed."""
    import keras

    layers, _ = _layers()
    consumers = _consumers(model)
    outputs = {_producer(t).name for t in (model.outputs)}
    keep: dict = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise EdgeclsError("structured pruning needs a flat model (no nested sub-models); use --prune sparsity=… instead")
        if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.DepthwiseConv2D) and layer.groups == 1:
            if _is_prunable(layer, consumers, outputs):
                n_keep = max(1, int(round(layer.filters * (1 - ratio))))
                keep[layer.name] = np.sort(np.argsort(_importance(layer, consumers))[::-1][:n_keep])
    if not keep:
        raise EdgeclsError("no prunable convolution found (every conv feeds an Add/Concatenate/Flatten or the output)")

    def clone(layer):
        config = layer.get_config()
        if layer.name in keep:
            config["filters"] = int(len(keep[layer.name]))
        return layer.__class__.from_config(config)

    smaller = keras.models.clone_model(model, clone_function=clone)
    out_keep: dict = {}
    for old in model.layers:
        new = smaller.get_layer(old.name)
        ins = [out_keep.get(_producer(t).name) for t in _inputs(old)] if not isinstance(old, layers.InputLayer) else [None]
        in_keep = ins[0]
        weights = old.get_weights()
        if isinstance(old, layers.DepthwiseConv2D):
            if in_keep is not None:
                weights = [weights[0][:, :, in_keep, :]] + [w[in_keep] for w in weights[1:]]
            out_keep[old.name] = in_keep
        elif isinstance(old, layers.Conv2D):
            if in_keep is not None:
                weights[0] = weights[0][:, :, in_keep, :]
            if old.name in keep:
                k = keep[old.name]
                weights = [weights[0][..., k]] + [w[k] for w in weights[1:]]
            out_keep[old.name] = keep.get(old.name)
        elif isinstance(old, layers.Dense):
            if in_keep is not None:
                weights[0] = weights[0][in_keep, :]
            out_keep[old.name] = None
        elif isinstance(old, layers.BatchNormalization):
            if in_keep is not None:
                weights = [w[in_keep] for w in weights]
            out_keep[old.name] = in_keep
        else:
            out_keep[old.name] = in_keep if len(ins) == 1 else None
        new.set_weights(weights)
    return smaller, {name: int(len(k)) for name, k in keep.items()}


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

def _fine_tune(model, splits, run, epochs: int, seed: int, callbacks=()):
    import keras

    from edgecls.augment import AugmentSpec, build_augmenter
    from edgecls.data import make_tf_dataset

    head = run.metadata.get("head", "softmax")
    as_targets = (lambda y: y.astype(np.float32)[:, None]) if head == "sigmoid" else None
    augment = AugmentSpec(**run.metadata.get("augment", {}))
    train_cfg = run.metadata.get("train", {})
    batch = int(train_cfg.get("batch_size", 32))
    lr = float(train_cfg.get("learning_rate", 1e-3)) / 2
    loss = "binary_crossentropy" if head == "sigmoid" else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    train_ds = make_tf_dataset(splits["train"], batch, True, seed, build_augmenter(augment, run.preprocess, seed), as_targets)
    val_ds = make_tf_dataset(splits["val"], batch, False, seed, None, as_targets) if "val" in splits else None
    cbs = list(callbacks) + [keras.callbacks.ReduceLROnPlateau(monitor="val_loss" if val_ds else "loss", factor=0.5, patience=2)]
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=cbs, verbose=2, shuffle=False)
    return model


def prune_model(model, spec: str, splits: dict, run, epochs: int = 8, seed: int = 0):
    """Prune and fine-tune; return (model, report with params and MACs before and after)."""
    import keras

    kind, ratio = parse_prune(spec)
    keras.utils.set_random_seed(seed)
    report = {"method": kind, "ratio": ratio, "params_before": int(model.count_params()), "macs_before": count_macs(model),
              "fine_tune_epochs": epochs}
    progress(f"pruning: {kind}={ratio}, then fine-tuning for {epochs} epochs")
    if kind == "structured":
        model, kept = structured_prune(model, ratio)
        report["filters_kept"] = kept
        _fine_tune(model, splits, run, epochs, seed)
    else:
        steps_per_epoch = int(np.ceil(len(splits["train"].y) / int(run.metadata.get("train", {}).get("batch_size", 32))))
        end_step = max(1, int(0.7 * epochs * steps_per_epoch))
        original, model = model, keras.models.clone_model(model)  # keep the caller's model untouched
        model.set_weights(original.get_weights())
        _fine_tune(model, splits, run, epochs, seed, callbacks=[sparsity_callback(model, ratio, end_step)])
        report["sparsity"] = round(sparsity_of(model), 4)
    report["params_after"] = int(model.count_params())
    report["nonzero_params_after"] = nonzero_params(model)
    report["macs_after"] = count_macs(model)
    return model, report
