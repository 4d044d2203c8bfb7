"""Quantization-aware training (QAT) on Keras 3 with TensorFlow's own fake-quantization ops.

TF-MOT's `quantize_model` needs legacy tf-keras (tensorflow/model-optimization#1119), so the trained
model is rebuilt here layer by layer with simulated int8 rounding where the TFLite int8 kernels round:

- a Conv2D/DepthwiseConv2D feeding one BatchNormalization gets the BN folded into its kernel and
  bias (BN statistics frozen, as QAT usually does); conv kernels are fake-quantized per output
  channel, symmetric in [-127, 127] (TFLite's int8 weight scheme), Dense kernels per tensor;
- activations are fake-quantized (8 bits, asymmetric) after each op whose output TFLite
  requantizes: the input, a conv or Dense with its fused ReLU/ReLU6, an Add, a Concatenate, an
  average pool, the logits. Their ranges start at the min/max of a calibration pass (what
  post-training quantization uses), then follow a moving average of each batch's min/max while
  fine-tuning, which stops rare outliers from setting the step size;
- max pooling, padding, dropout and reshapes keep their input's scale (no rounding in int8);
  softmax and sigmoid outputs get TFLite's fixed range (scale 1/256), so nothing follows them.

Anything else is refused in one line naming the layer and what it is, never rewritten approximately:
hard-swish and hard-sigmoid (MobileNetV3, whose hard-sigmoid is also keras.ops arithmetic outside any
layer), SiLU/swish and the squeeze-excitation Multiply (EfficientNet, MobileNetV3) round in TFLite's
int8 kernels where this rewrite has no fake-quantization, so fine-tuning would adapt to the wrong model.
A minimalistic MobileNetV3 (ReLU, no squeeze-excitation) is supported.

`tf.lite.TFLiteConverter` takes the FakeQuant ranges instead of calibrating: the result is a
full-int8 model (int8 input and output, as `edgecls.converters.tflite`'s int8 path) whose answers match the
fake-quantized Keras model's. Fine-tuning lets the weights adapt to the rounding, which is what
recovers the accuracy post-training quantization loses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgecls.core.progress import progress
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.formats import TFLITE_INT8

EMA_DECAY = 0.99  # of the activation ranges while fine-tuning: about 100 batches of memory
NUM_BITS = 8
INTEGER_TYPES = ("int8", "int32")  # int32: biases and constant operands (MEAN's axes)


@dataclass(frozen=True)
class QatOptions:
    epochs: int = 3
    lr_factor: float = 0.1  # of the run's learning rate: the model is trained already
    calibration_size: int = 200  # images for the starting ranges (as post-training quantization)
    batch_size: int | None = None  # None: the run's
    augment: bool = False  # the run's augmentation while fine-tuning (see `fine_tune`)
    seed: int = 0


@dataclass
class QatResult:
    tflite: bytes
    model: object  # the fake-quantized Keras model the flatbuffer was converted from
    notes: dict = field(default_factory=dict)  # for the manifest


_CLASSES: dict = {}


def _classes() -> dict:
    """The QAT layers, defined on first use so that importing this module does not import Keras."""
    if not _CLASSES:
        _CLASSES.update(FakeQuant=_fake_quant_class(), **_quantized_layer_classes())
    return _CLASSES


def _fake_quant_class():
    import keras
    import tensorflow as tf

    class FakeQuant(keras.layers.Layer):
        """Simulated int8 rounding of an activation over a calibrated, then moving-average, range.

        `observing` (set by `calibrate`, eager calls only) widens the range to every value seen
        and passes the float values through, as post-training calibration sees them. A
        `fixed_range` (the input's, known from the preprocessing) never moves.
        """

        def __init__(self, fixed_range=None, **kw):
            super().__init__(**kw)
            self.fixed_range = None if fixed_range is None else (float(fixed_range[0]), float(fixed_range[1]))
            self.observing = False

        def build(self, input_shape):
            low, high = self.fixed_range or (0.0, 0.0)  # the range always holds 0 (exact zero point)
            self.low = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(low), trainable=False, name="min"
            )
            self.high = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(high), trainable=False, name="max"
            )

        def call(self, x, training=False):
            if self.observing:
                if self.fixed_range is None:
                    self.low.assign(tf.minimum(self.low, tf.reduce_min(x)))
                    self.high.assign(tf.maximum(self.high, tf.reduce_max(x)))
                return x
            if training and self.fixed_range is None:
                low, high = tf.minimum(tf.reduce_min(x), 0.0), tf.maximum(tf.reduce_max(x), 0.0)
                self.low.assign(EMA_DECAY * self.low + (1 - EMA_DECAY) * low)
                self.high.assign(EMA_DECAY * self.high + (1 - EMA_DECAY) * high)
            return tf.quantization.fake_quant_with_min_max_vars(x, self.low, self.high, num_bits=NUM_BITS)

        def get_config(self):
            return {**super().get_config(), "fixed_range": self.fixed_range}

    return FakeQuant


def _quantize_kernel(kernel, per_channel: bool):
    """Symmetric int8 (narrow range: zero point 0) per last-axis channel, or one scale for all."""
    import tensorflow as tf

    axes = list(range(len(kernel.shape) - 1)) if per_channel else None
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-8))
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True
        )
    return tf.quantization.fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True)


def _quantized_layer_classes() -> dict:
    """Conv2D, DepthwiseConv2D and Dense with fake-quantized kernels (float while `observing`)."""
    import keras
    import tensorflow as tf

    class QuantConv2D(keras.layers.Conv2D):
        observing = False  # float weights while calibrating, like the float model PTQ calibrates

        def convolution_op(self, inputs, kernel):
            return super().convolution_op(
                inputs, kernel if self.observing else _quantize_kernel(kernel, per_channel=True)
            )

    class QuantDepthwiseConv2D(keras.layers.DepthwiseConv2D):
        observing = False

        def call(self, inputs):
            # TFLite's depthwise kernel is (1, h, w, in * multiplier): one scale per output channel.
            h, w, cin, mult = self.kernel.shape
            kernel = self.kernel
            if not self.observing:
                kernel = tf.reshape(_quantize_kernel(tf.reshape(kernel, (h, w, cin * mult)), True), (h, w, cin, mult))
            outputs = keras.ops.depthwise_conv(
                inputs,
                kernel,
                strides=self.strides,
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            return self.activation(outputs + self.bias)

    class QuantDense(keras.layers.Dense):
        observing = False

        def call(self, inputs, training=None):
            kernel = self.kernel if self.observing else _quantize_kernel(self.kernel, per_channel=False)
            return self.activation(keras.ops.matmul(inputs, kernel) + self.bias)

    return {"Conv2D": QuantConv2D, "DepthwiseConv2D": QuantDepthwiseConv2D, "Dense": QuantDense}


def input_range(spec) -> tuple:
    """(min, max) of what the preprocessing makes of pixels 0..255: an int8 input over it holds every
    8-bit value of a 0..1 input exactly."""
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    ends = np.concatenate([(0.0 - mean) / std, (255.0 - mean) / std])
    return float(ends.min()), float(ends.max())


def _inputs(layer) -> list:
    t = layer.input
    return list(t) if isinstance(t, (list, tuple)) else [t]


def _activation(layer) -> str | None:
    """relu, relu6, softmax, sigmoid or linear for an activation layer or a layer's activation; None otherwise."""
    import keras

    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            return None
        return "relu" if layer.max_value is None else ("relu6" if float(layer.max_value) == 6.0 else None)
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in ("relu", "relu6", "softmax", "sigmoid", "linear") else None


def _activation_name(layer) -> str:
    """What an unsupported activation is called, for the refusal: 'activation hard_silu (hard-swish)'."""
    import keras

    if isinstance(layer, keras.layers.ReLU):
        return "a leaky, thresholded or capped ReLU other than ReLU6"
    name = getattr(getattr(layer, "activation", None), "__name__", None) or "unknown"
    known = {"hard_silu": "hard-swish", "silu": "SiLU/swish", "hard_sigmoid": "hard-sigmoid", "gelu": "GELU"}
    return f"activation {name}" + (f" ({known[name]})" if name in known else "")


def _folded(conv, bn) -> tuple:
    """(kernel, bias) of `conv` then inference-mode `bn` as one conv: the same outputs."""
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    kernel, bias = _weights(conv)
    if type(conv).__name__ == "DepthwiseConv2D":  # (h, w, in, multiplier): output channel = in * multiplier
        kernel = (kernel.reshape(*kernel.shape[:2], -1) * scale).reshape(kernel.shape)
    else:
        kernel = kernel * scale
    return kernel.astype(np.float32), ((bias - bn.moving_mean.numpy()) * scale + beta).astype(np.float32)


def _weights(layer) -> tuple:
    kernel = layer.kernel.numpy()
    units = kernel.shape[2] * kernel.shape[3] if type(layer).__name__ == "DepthwiseConv2D" else kernel.shape[-1]
    return kernel, layer.bias.numpy() if layer.use_bias else np.zeros(units, np.float32)


class _Rewriter:
    """Builds the fake-quantized graph of a functional model, one original layer at a time."""

    def __init__(self, model, input_spec_range):
        import keras

        self.keras, self.model, self.classes = keras, model, _classes()
        self.mapped: dict = {}  # id(original KerasTensor) -> tensor of the new graph
        self.absorbed: set = set()  # BNs and ReLUs fused into the conv before them
        self.weights: list = []  # (new layer, weights) set once the new model is built
        self.consumers: dict = {}
        for op in model.operations:  # keras.ops calls too (MobileNetV3's hard-sigmoid): they consume tensors
            for t in _inputs(op) if not isinstance(op, keras.layers.InputLayer) else []:
                self.consumers.setdefault(id(t), []).append(op)
        self.inp = keras.Input(shape=model.inputs[0].shape[1:], name="image")
        self.mapped[id(model.inputs[0])] = self.fq(self.inp, "input", input_spec_range)

    def fq(self, x, name, fixed=None):
        return self.classes["FakeQuant"](fixed_range=fixed, name=f"fq_{name}")(x)

    def sole_consumer(self, layer):
        found = self.consumers.get(id(layer.output), [])
        return found[0] if len(found) == 1 else None

    def refuse(self, layer, why: str = ""):
        """One line: the layer, its type and why; the ways out. Never a model rounded where TFLite does not."""
        raise EdgeclsError(
            f"quantization-aware training does not support layer {layer.name} ({type(layer).__name__}"
            f"{', ' + why if why else ''}): it cannot make this model's {TFLITE_INT8.name} (convert --no-qat, or "
            f"leave {TFLITE_INT8.name} out with --formats)"
        )

    def weighted(self, layer, x):
        """Conv2D / DepthwiseConv2D / Dense with the BN and ReLU after it folded in, then its rounding."""
        layers = self.keras.layers
        activation, last = _activation(layer), layer
        if activation is None:
            self.refuse(layer, _activation_name(layer))
        kernel, bias = _weights(layer)
        nxt = self.sole_consumer(layer)
        if (
            activation == "linear"
            and isinstance(nxt, layers.BatchNormalization)
            and not isinstance(layer, layers.Dense)
        ):
            kernel, bias = _folded(layer, nxt)
            self.absorbed.add(nxt.name)
            last, nxt = nxt, self.sole_consumer(nxt)
        if (
            activation == "linear"
            and isinstance(nxt, (layers.ReLU, layers.Activation))
            and _activation(nxt) in ("relu", "relu6")
        ):
            activation = _activation(nxt)  # TFLite fuses it into the op: one rounding, after it
            self.absorbed.add(nxt.name)
            last = nxt
        head = activation in ("softmax", "sigmoid")
        config = {
            **layer.get_config(),
            "use_bias": True,
            "activation": "linear" if head else activation,
            "name": f"qat_{layer.name}",
        }
        for key in (
            "kernel_regularizer",
            "bias_regularizer",
            "activity_regularizer",
            "kernel_constraint",
            "bias_constraint",
        ):
            config.pop(key, None)  # they would pull on the folded weights, which are not the original's
        new = self.classes[type(layer).__name__].from_config(config)
        self.weights.append((new, [kernel, bias]))
        y = self.fq(new(x), f"{layer.name}_logits" if head else last.name)
        if head:
            y = layers.Activation(activation, name=f"{layer.name}_{activation}")(y)
        return last, y

    def other(self, layer, ins):
        layers = self.keras.layers
        clone = type(layer).from_config(layer.get_config())
        y = clone(ins if len(ins) > 1 else ins[0])
        if isinstance(layer, layers.BatchNormalization):  # one that follows no conv: kept, frozen
            clone.set_weights(layer.get_weights())
            clone.trainable = False
            return self.fq(y, layer.name)
        if layer.weights:
            self.refuse(layer)
        if isinstance(layer, (layers.ReLU, layers.Activation)):
            kind = _activation(layer)
            if kind is None:
                self.refuse(layer, _activation_name(layer))
            return y if kind in ("softmax", "sigmoid") else self.fq(y, layer.name)
        if isinstance(layer, (layers.Add, layers.Concatenate, layers.GlobalAveragePooling2D, layers.AveragePooling2D)):
            return self.fq(y, layer.name)
        if isinstance(layer, layers.Multiply):  # squeeze-excitation's gate: its sigmoid range is not modelled
            self.refuse(layer, "squeeze-excitation multiply")
        if isinstance(
            layer,
            (
                layers.MaxPooling2D,
                layers.GlobalMaxPooling2D,
                layers.ZeroPadding2D,
                layers.Dropout,
                layers.SpatialDropout2D,
                layers.Flatten,
                layers.Reshape,
            ),
        ):
            return y
        self.refuse(layer)

    def build(self):
        keras, layers = self.keras, self.keras.layers
        for layer in self.model.operations:
            if isinstance(layer, layers.InputLayer) or layer.name in self.absorbed:
                continue
            if not isinstance(layer, layers.Layer):
                self.refuse(layer, "a keras.ops operation outside a layer")
            if isinstance(layer, keras.Model):
                self.refuse(layer, "a nested model")
            if len(getattr(layer, "_inbound_nodes", [])) > 1:
                self.refuse(layer, "used more than once")
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                self.refuse(layer, "channels_first")
            ins = [self.mapped[id(t)] for t in _inputs(layer)]
            last, y = layer, None
            if type(layer) in (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense):
                if getattr(layer, "groups", 1) != 1:
                    self.refuse(layer, "grouped")
                last, y = self.weighted(layer, ins[0])
            else:
                y = self.other(layer, ins)
            self.mapped[id(last.output)] = y
        qat = keras.Model(self.inp, self.mapped[id(self.model.outputs[0])], name=f"{self.model.name}_qat")
        for new, weights in self.weights:
            new.set_weights(weights)
        return qat


def build_qat_model(model, input_spec_range: tuple | None = None):
    """A fake-quantized copy of a trained functional Keras model; the original is not changed.

    `input_spec_range`: (min, max) the preprocessing can produce (`input_range(spec)`), else the
    input's range is calibrated like any activation. Unsupported layers raise EdgeclsError.
    """
    import keras

    if isinstance(model, keras.Sequential) and getattr(model, "_functional", None) is not None:
        # Its own graph: a Sequential has no `operations`, and one read from a file has several nodes per layer.
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        model = clone._functional
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgeclsError("quantization-aware training needs a functional Keras model with one input and one output")
    return _Rewriter(model, input_spec_range).build()


def set_observing(qat_model, on: bool) -> None:
    """Switch every rounding off (on=True: the float model, with ranges recorded) or back on.

    Read at each eager call: a compiled predict or fit traced before keeps what it saw then.
    """
    for layer in qat_model.layers:
        if isinstance(layer, tuple(_classes().values())):
            layer.observing = on


def calibrate(qat_model, x: np.ndarray, batch_size: int = 64) -> None:
    """Set every activation range to the min/max over `x` of the float model (post-training style)."""
    set_observing(qat_model, True)
    try:
        for start in range(0, len(x), batch_size):
            qat_model(x[start : start + batch_size], training=False)  # eager: `observing` is read each call
    finally:
        set_observing(qat_model, False)


def fine_tune(qat_model, splits: dict, run, options: QatOptions) -> dict:
    """Train the fake-quantized model on the run's training split (its batch size, a tenth of its
    learning rate); the activation ranges follow their moving averages meanwhile.

    Without augmentation unless asked: a few epochs adapt trained weights to the rounding, and
    augmented batches made that noisier and recovered less (benchmarks/results/qat.txt).
    """
    import keras

    from edgecls.core.augment import AugmentSpec, build_augmenter
    from edgecls.core.data import make_tf_dataset

    head = run.metadata.get("head", "softmax")
    as_targets = (lambda y: y.astype(np.float32)[:, None]) if head == "sigmoid" else None
    train_cfg = run.metadata.get("train", {})
    batch = options.batch_size or int(train_cfg.get("batch_size", 32))
    lr = float(train_cfg.get("learning_rate", 1e-3)) * options.lr_factor
    augmenter = None
    if options.augment:
        augmenter = build_augmenter(AugmentSpec(**run.metadata.get("augment", {})), run.preprocess, options.seed)
    loss = "binary_crossentropy" if head == "sigmoid" else "sparse_categorical_crossentropy"
    qat_model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    train_ds = make_tf_dataset(splits["train"], batch, True, options.seed, augmenter, as_targets)
    history = qat_model.fit(train_ds, epochs=options.epochs, verbose=0, shuffle=False).history
    return {
        "epochs": options.epochs,
        "learning_rate": lr,
        "batch_size": batch,
        "augment": bool(augmenter),
        "final_loss": round(float(history["loss"][-1]), 6),
    }


def to_tflite_int8(qat_model) -> bytes:
    """The fake-quantized model as a full-int8 TFLite flatbuffer (int8 input and output).

    No representative set: the converter takes the FakeQuant ranges. (TFLITE_BUILTINS_INT8 alone
    makes the converter demand a representative set, so full-integer is checked on the result.)
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    data = converter.convert()
    floats = float_tensors(data)
    if floats:
        raise EdgeclsError(
            f"the TFLite converter left {len(floats)} float tensor(s) in the QAT model "
            f"(first: {floats[0]}): it is not full-int8, convert without --qat"
        )
    return data


def float_tensors(tflite: bytes) -> list:
    """Names of the tensors that are not int8 or int32 (a full-int8 model has none)."""
    from ai_edge_litert.interpreter import Interpreter  # the runtime's own reader (tf.lite's is deprecated)

    interpreter = Interpreter(model_content=tflite)
    return [d["name"] for d in interpreter.get_tensor_details() if np.dtype(d["dtype"]).name not in INTEGER_TYPES]


def quantization_aware_tflite(model, run, splits: dict, options: QatOptions | None = None) -> QatResult:
    """Fake-quantize `model` (a run's, or its pruned version), start its ranges on `calibration_size`
    training images, fine-tune, and convert to a full-int8 TFLite flatbuffer."""
    import keras

    from edgecls.converters.calibration import CalibrationSampler, fingerprint

    options = options or QatOptions()
    keras.utils.set_random_seed(options.seed)
    qat = build_qat_model(model, input_range(run.preprocess))
    calibration = CalibrationSampler(splits["train"], options.seed).draw(options.calibration_size)
    calibrate(qat, calibration)
    progress(
        f"quantization-aware training: {options.epochs} epochs on the training split, "
        f"ranges started on {len(calibration)} images"
    )
    notes = fine_tune(qat, splits, run, options)
    return QatResult(
        to_tflite_int8(qat),
        qat,
        {
            "qat": notes,
            "calibration_images": int(len(calibration)),
            "calibration_fingerprint": fingerprint(calibration),
        },
    )
