"""The bundled networks: LeNet-5 and MobileNet v1 trained on the bundled digits, MobileNet v1/v2 at full size.

Every network is a :class:`FloatModel` built by an architecture function from a parameter source: seeded random
values (He-normal weights, random batch-norm statistics) for the full-size MobileNets used in scale and
performance work, or the trained values stored in ``host/data/*.npz`` (written by host/training.py). The
quantized forms are :func:`quantizer.quantize` of these, calibrated on the bundled calibration digits with the
input range fixed to [0, 1] (the rule of host/data.py: int8 input = pixel - 128).

Weight files hold one array per parameter, keyed ``<layer>.weights``, ``<layer>.bias`` and
``<layer>.bn.<gamma|beta|mean|var>``, in TFLite layouts (convolution [Cout, KH, KW, Cin], depthwise
[1, KH, KW, C], fully connected [Cout, Cin] over the NHWC-flattened input).

Padding is TensorFlow's "same" wherever the papers pad, so stride-2 layers on even sizes pad only at the
bottom/right, as TFLite does.
"""

import numpy as np

from .data import DATA_DIR, INPUT_RANGE, load_digits
from .float_model import (BatchNorm, FAdd, FAvgPool2D, FConv2D, FDepthwiseConv2D, FFullyConnected, FloatModel,
                          FMaxPool2D)
from .graph import GraphError
from .quantizer import quantize

__all__ = [
    "LENET5_FILE", "MOBILENET_V1_DIGITS_FILE", "MOBILENET_V1_DIGITS", "BN_EPS",
    "lenet5_architecture", "mobilenet_v1_architecture", "mobilenet_v2_architecture",
    "lenet5_float", "lenet5", "mobilenet_v1_digits_float", "mobilenet_v1_digits",
    "mobilenet_v1", "mobilenet_v2", "save_weights", "load_weights", "quantize_on_digits",
]

LENET5_FILE = DATA_DIR / "lenet5.npz"
MOBILENET_V1_DIGITS_FILE = DATA_DIR / "mobilenet_v1_digits.npz"
# The trained small MobileNet v1: width multiplier 0.25 on the 32x32 padded digits, one input channel.
MOBILENET_V1_DIGITS = dict(alpha=0.25, resolution=32, channels=1, classes=10)
# PyTorch's BatchNorm2d default, which the bundled networks were trained with.
BN_EPS = 1e-5

# MobileNet v1 (Howard et al. 2017, table 1): (pointwise output channels, depthwise stride) of the 13 blocks.
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
# MobileNet v2 (Sandler et al. 2018, table 2): expansion t, output channels c, repeats n, first stride s.
_V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)]


# --- parameter sources ---------------------------------------------------------------------------------------

class _RandomParams:
    """Seeded random parameters: He-normal weights, small random biases and batch-norm statistics."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def weights(self, name, shape, fan_in):
        return self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)

    def bias(self, name, n):
        return self.rng.normal(0.0, 0.01, size=n).astype(np.float32)

    def bn(self, name, n):
        r = self.rng
        return BatchNorm(gamma=r.uniform(0.8, 1.2, n).astype(np.float32), beta=r.normal(0, 0.1, n).astype(np.float32),
                         mean=r.normal(0, 0.1, n).astype(np.float32), var=r.uniform(0.8, 1.2, n).astype(np.float32),
                         eps=BN_EPS)


class _ZeroParams:
    """Zero weights and identity batch norms: the architecture alone, to be filled by :func:`load_weights`."""

    def weights(self, name, shape, fan_in):
        return np.zeros(shape, np.float32)

    def bias(self, name, n):
        return np.zeros(n, np.float32)

    def bn(self, name, n):
        return BatchNorm(np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32),
                         np.ones(n, np.float32), BN_EPS)


def _source(seed):
    if seed is None:
        return _ZeroParams()
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, not {seed!r}")
    return _RandomParams(int(seed))


def _positive_int(what, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")
    return int(value)


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 4:
        raise ValueError(f"alpha (width multiplier) must be a number in (0, 4], not {alpha!r}")
    return float(alpha)


# --- architectures -------------------------------------------------------------------------------------------

class _Builder:
    """Appends layers, tracking the current tensor and its channel count."""

    def __init__(self, params, channels):
        self.params, self.layers, self.tensor, self.channels = params, [], "input", channels

    def conv(self, name, cout, kernel, stride=1, padding="same", activation="relu", bn=True):
        p, cin = self.params, self.channels
        shape = (cout, kernel, kernel, cin)
        self.layers.append(FConv2D(name, self.tensor, name, weights=p.weights(name, shape, kernel * kernel * cin),
                                   bias=None if bn else p.bias(name, cout), activation=activation,
                                   bn=p.bn(name, cout) if bn else None, stride=(stride, stride), padding=padding))
        self.tensor, self.channels = name, cout

    def depthwise(self, name, kernel=3, stride=1, activation="relu"):
        p, c = self.params, self.channels
        self.layers.append(FDepthwiseConv2D(name, self.tensor, name,
                                            weights=p.weights(name, (1, kernel, kernel, c), kernel * kernel),
                                            activation=activation, bn=p.bn(name, c), stride=(stride, stride),
                                            padding="same"))
        self.tensor = name

    def fc(self, name, cout, fan_in, activation="none"):
        p = self.params
        self.layers.append(FFullyConnected(name, self.tensor, name, weights=p.weights(name, (cout, fan_in), fan_in),
                                           bias=p.bias(name, cout), activation=activation))
        self.tensor, self.channels = name, cout

    def pool(self, name, kind="max", kernel=2):
        if kind == "max":
            self.layers.append(FMaxPool2D(name, self.tensor, name, kernel=(kernel, kernel), stride=(kernel, kernel)))
        else:
            self.layers.append(FAvgPool2D(name, self.tensor, name, kernel=None))
        self.tensor = name

    def add(self, name, other):
        self.layers.append(FAdd(name, (other, self.tensor), name))
        self.tensor = name


def lenet5_architecture(seed=None):
    """LeNet-5 (LeCun et al. 1998) on 32x32x1: C1 6@5x5, S2, C3 16@5x5, S4, C5 120@5x5, F6 84, output 10.

    As trained here: ReLU activations and 2x2 max pooling in place of the paper's scaled tanh and trainable
    subsampling, full C1-C3 connectivity and a plain linear output layer. ``seed=None`` gives zero weights.
    """
    b = _Builder(_source(seed), 1)
    b.conv("c1", 6, 5, padding="valid", bn=False)
    b.pool("s2")
    b.conv("c3", 16, 5, padding="valid", bn=False)
    b.pool("s4")
    b.conv("c5", 120, 5, padding="valid", bn=False)
    b.fc("f6", 84, 120, activation="relu")
    b.fc("output", 10, 84)
    return FloatModel("input", (32, 32, 1), b.layers, "output", name="lenet5")


def mobilenet_v1_architecture(alpha=1.0, resolution=224, channels=3, classes=1000, seed=0):
    """MobileNet v1 (Howard et al. 2017): 3x3 stride-2 stem, 13 depthwise-separable blocks, global average
    pooling, fully connected classifier. Every convolution has batch norm and ReLU6, as in the reference
    implementation. Channel counts are ``int(c * alpha)``; ``resolution`` is the square input size."""
    alpha = _check_alpha(alpha)
    resolution, channels, classes = (_positive_int(w, v) for w, v in
                                     (("resolution", resolution), ("channels", channels), ("classes", classes)))
    if resolution < 32:
        raise ValueError(f"resolution must be at least 32 (five stride-2 stages), not {resolution}")
    b = _Builder(_source(seed), channels)
    b.conv("conv1", max(1, int(32 * alpha)), 3, stride=2, activation="relu6")
    for i, (cout, stride) in enumerate(_V1_BLOCKS, start=1):
        b.depthwise(f"dw{i}", stride=stride, activation="relu6")
        b.conv(f"pw{i}", max(1, int(cout * alpha)), 1, activation="relu6")
    b.pool("pool", kind="avg")
    b.fc("fc", classes, b.channels)
    return FloatModel("input", (resolution, resolution, channels), b.layers, "fc",
                      name=f"mobilenet_v1_{alpha:g}_{resolution}")


def _make_divisible(value, divisor=8):
    """Round channels to a multiple of 8 (never below 90% of ``value``), as the MobileNet v2 reference does."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def mobilenet_v2_architecture(alpha=1.0, resolution=224, channels=3, classes=1000, seed=0):
    """MobileNet v2 (Sandler et al. 2018): 3x3 stride-2 stem, 17 inverted-residual blocks (1x1 expansion with
    ReLU6, 3x3 depthwise with ReLU6, linear 1x1 projection, residual ADD when the stride is 1 and the channel
    count is unchanged), a 1x1 convolution to 1280 channels, global average pooling, fully connected."""
    alpha = _check_alpha(alpha)
    resolution, channels, classes = (_positive_int(w, v) for w, v in
                                     (("resolution", resolution), ("channels", channels), ("classes", classes)))
    if resolution < 32:
        raise ValueError(f"resolution must be at least 32 (five stride-2 stages), not {resolution}")
    b = _Builder(_source(seed), channels)
    b.conv("conv1", _make_divisible(32 * alpha), 3, stride=2, activation="relu6")
    index = 0
    for t, c, n, s in _V2_BLOCKS:
        cout = _make_divisible(c * alpha)
        for repeat in range(n):
            index += 1
            stride, block_input, cin = (s if repeat == 0 else 1), b.tensor, b.channels
            if t != 1:
                b.conv(f"b{index}_expand", cin * t, 1, activation="relu6")
            b.depthwise(f"b{index}_dw", stride=stride, activation="relu6")
            b.conv(f"b{index}_project", cout, 1, activation="none")
            if stride == 1 and cin == cout:
                b.add(f"b{index}_add", block_input)
    b.conv("conv_last", _make_divisible(1280 * alpha) if alpha > 1.0 else 1280, 1, activation="relu6")
    b.pool("pool", kind="avg")
    b.fc("fc", classes, b.channels)
    return FloatModel("input", (resolution, resolution, channels), b.layers, "fc",
                      name=f"mobilenet_v2_{alpha:g}_{resolution}")


# --- weight files --------------------------------------------------------------------------------------------

def save_weights(model, path):
    """Write every parameter of ``model`` to a compressed ``.npz`` (keys as in the module docstring)."""
    arrays = {}
    for layer in model.layers:
        if getattr(layer, "weights", None) is None:
            continue
        arrays[f"{layer.name}.weights"] = np.asarray(layer.weights, np.float32)
        arrays[f"{layer.name}.bias"] = np.asarray(layer.bias, np.float32)
        if layer.bn is not None:
            for field in ("gamma", "beta", "mean", "var"):
                arrays[f"{layer.name}.bn.{field}"] = np.asarray(getattr(layer.bn, field), np.float32)
            arrays[f"{layer.name}.bn.eps"] = np.float32(layer.bn.eps)
    np.savez_compressed(path, **arrays)


def load_weights(model, path):
    """Fill ``model``'s parameters from a file written by :func:`save_weights`; every array must be there, with
    the architecture's shape, and the file must hold nothing else."""
    with np.load(path) as data:
        stored = {key: data[key] for key in data.files}
    used = set()

    def take(key, shape):
        if key not in stored:
            raise GraphError(f"{path}: no array {key!r} for model {model.name!r}")
        value = stored[key]
        if value.shape != tuple(shape):
            raise GraphError(f"{path}: {key!r} has shape {list(value.shape)}, model {model.name!r} "
                             f"expects {list(shape)}")
        used.add(key)
        return value.astype(np.float32)

    for layer in model.layers:
        if getattr(layer, "weights", None) is None:
            continue
        layer.weights = take(f"{layer.name}.weights", layer.weights.shape)
        layer.bias = take(f"{layer.name}.bias", layer.bias.shape)
        if layer.bn is not None:
            n = layer.bias.shape
            layer.bn = BatchNorm(*(take(f"{layer.name}.bn.{f}", n) for f in ("gamma", "beta", "mean", "var")),
                                 eps=float(take(f"{layer.name}.bn.eps", ())))
    extra = sorted(set(stored) - used)
    if extra:
        raise GraphError(f"{path}: arrays {extra[:3]} belong to no layer of model {model.name!r}")
    return model


# --- the bundled networks ------------------------------------------------------------------------------------

def quantize_on_digits(float_model, rounding="double"):
    """Quantize a digits network: calibrated on the bundled calibration digits, input range fixed to [0, 1]."""
    images, _ = load_digits("calibration")
    return quantize(float_model, images, rounding=rounding, input_range=INPUT_RANGE)


def lenet5_float():
    """LeNet-5 with the trained weights of ``host/data/lenet5.npz``."""
    return load_weights(lenet5_architecture(), LENET5_FILE)


def lenet5(rounding="double"):
    """The int8 LeNet-5 graph (see :func:`quantize_on_digits`)."""
    return quantize_on_digits(lenet5_float(), rounding)


def mobilenet_v1_digits_float():
    """The small MobileNet v1 (:data:`MOBILENET_V1_DIGITS`) with the trained weights of
    ``host/data/mobilenet_v1_digits.npz``."""
    return load_weights(mobilenet_v1_architecture(**MOBILENET_V1_DIGITS, seed=None), MOBILENET_V1_DIGITS_FILE)


def mobilenet_v1_digits(rounding="double"):
    """The int8 small MobileNet v1 graph (see :func:`quantize_on_digits`)."""
    return quantize_on_digits(mobilenet_v1_digits_float(), rounding)


def mobilenet_v1(alpha=1.0, resolution=224, channels=3, classes=1000, seed=0):
    """MobileNet v1 float model with seeded random weights and batch-norm statistics."""
    return mobilenet_v1_architecture(alpha, resolution, channels, classes, seed)


def mobilenet_v2(alpha=1.0, resolution=224, channels=3, classes=1000, seed=0):
    """MobileNet v2 float model with seeded random weights and batch-norm statistics."""
    return mobilenet_v2_architecture(alpha, resolution, channels, classes, seed)
