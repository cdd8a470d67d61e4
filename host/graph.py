"""The quantized graph: the form every importer produces and the golden model, compiler and exporters read.

Activations are int8 NHWC tensors with one scale and zero point each (:class:`TensorSpec`). Operations are the
ones the hardware performs, with TFLite's integer semantics; each carries everything it needs to run (weights,
int32 bias, per-channel requantization parameters), computed once when the node is made.

Weight layouts follow TFLite, so import and export are copies: convolution ``[Cout, KH, KW, Cin]``, depthwise
``[1, KH, KW, C]``, fully connected ``[Cout, Cin]``.
"""

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .quant import ROUNDING_MODES, quantize_multiplier, quantize_multipliers

__all__ = [
    "GraphError", "TensorSpec", "Requant", "Conv2D", "DepthwiseConv2D", "FullyConnected", "MaxPool2D",
    "AvgPool2D", "Add", "Graph", "activation_range", "same_padding",
]


class GraphError(ValueError):
    """A graph that cannot be built or run; the message names the node and the reason."""


@dataclass(frozen=True)
class TensorSpec:
    """An int8 activation tensor: NHWC ``shape`` without the batch axis, ``scale`` and ``zero_point``."""
    name: str
    shape: tuple
    scale: float
    zero_point: int

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "scale", float(np.float32(self.scale)))
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise GraphError(f"tensor {self.name!r}: scale must be positive and finite, not {self.scale!r}")
        if not -128 <= int(self.zero_point) <= 127:
            raise GraphError(f"tensor {self.name!r}: int8 zero point {self.zero_point} is outside [-128, 127]")
        object.__setattr__(self, "zero_point", int(self.zero_point))


def activation_range(activation, scale, zero_point):
    """The clamp ``(qmin, qmax)`` that implements ``activation`` ("none", "relu", "relu6") on an int8 output."""
    def q(real):
        # TFLite's Quantize(): the division is float32 and TfLiteRound rounds half away from zero.
        with np.errstate(over="ignore"):
            quotient = float(np.float32(real) / np.float32(scale))
        if not abs(quotient) < 2.0 ** 31:
            raise GraphError(f"activation {activation!r}: {real} / scale {scale!r} overflows int32")
        return int(zero_point) + int(math.copysign(math.floor(abs(quotient) + 0.5), quotient))
    if activation in (None, "none"):
        return -128, 127
    if activation == "relu":
        return max(-128, q(0.0)), 127
    if activation == "relu6":
        return max(-128, q(0.0)), min(127, q(6.0))
    raise GraphError(f"unknown activation {activation!r}: use none, relu or relu6")


def same_padding(in_size, kernel, stride):
    """TensorFlow's SAME padding ``(before, after)`` for one spatial axis."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Requant:
    """Per-output-channel requantization: ``clamp(scale(acc) + zero_point, qmin, qmax)``."""
    multiplier: np.ndarray      # int32 per channel
    shift: np.ndarray           # per channel, TFLite convention (positive = left)
    zero_point: int
    qmin: int
    qmax: int
    mode: str = "double"
    float_scale: np.ndarray = None   # float32 per channel, for mode "float32"

    @classmethod
    def from_scales(cls, input_scale, weight_scales, output, qmin, qmax, mode="double"):
        if mode not in ROUNDING_MODES:
            raise GraphError(f"rounding mode must be one of {', '.join(ROUNDING_MODES)}, not {mode!r}")
        m, s = quantize_multipliers(input_scale, weight_scales, output.scale)
        f32 = (np.float32(input_scale) * np.atleast_1d(np.asarray(weight_scales, np.float32))
               / np.float32(output.scale)).astype(np.float32)
        return cls(m, s, output.zero_point, qmin, qmax, mode, f32)


@dataclass(eq=False)
class _Node:
    name: str
    inputs: tuple
    output: TensorSpec

    kind = None

    def __post_init__(self):
        self.inputs = tuple(self.inputs)


def _check_weights(node, weights, ndim, what):
    if not isinstance(weights, np.ndarray) or weights.dtype != np.int8 or weights.ndim != ndim:
        raise GraphError(f"node {node.name!r}: {what} must be an int8 array of {ndim} dimensions")
    if weights.size and weights.min() < -127:
        raise GraphError(f"node {node.name!r}: weight -128 is not allowed (symmetric int8 weights are in [-127, 127])")


@dataclass(eq=False)
class _WeightedNode(_Node):
    weights: np.ndarray = None
    bias: np.ndarray = None            # int32 [Cout]
    weight_scales: np.ndarray = None   # float32 [Cout]
    input_spec: TensorSpec = None
    activation: str = "none"
    rounding: str = "double"
    requant: Requant = field(init=False, default=None)

    def _finish(self, cout):
        self.weight_scales = np.atleast_1d(np.asarray(self.weight_scales, dtype=np.float32))
        if self.weight_scales.shape[0] == 1 and cout > 1:
            self.weight_scales = np.repeat(self.weight_scales, cout)
        if self.weight_scales.shape != (cout,):
            raise GraphError(f"node {self.name!r}: {self.weight_scales.shape[0]} weight scales for {cout} channels")
        self.bias = (np.zeros(cout, np.int32) if self.bias is None
                     else np.asarray(self.bias).astype(np.int64))
        if self.bias.shape != (cout,) or self.bias.min(initial=0) < -(1 << 31) or self.bias.max(initial=0) >= 1 << 31:
            raise GraphError(f"node {self.name!r}: bias must be {cout} int32 values")
        self.bias = self.bias.astype(np.int32)
        qmin, qmax = activation_range(self.activation, self.output.scale, self.output.zero_point)
        self.requant = Requant.from_scales(self.input_spec.scale, self.weight_scales, self.output,
                                           qmin, qmax, self.rounding)


@dataclass(eq=False)
class Conv2D(_WeightedNode):
    """Convolution. ``weights`` [Cout, KH, KW, Cin]; ``padding`` (top, bottom, left, right) with the input zero
    point; ``stride`` (sy, sx)."""
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    kind = "conv2d"

    def __post_init__(self):
        super().__post_init__()
        _check_weights(self, self.weights, 4, "conv weights [Cout, KH, KW, Cin]")
        self.stride, self.padding = tuple(self.stride), tuple(self.padding)
        self._finish(self.weights.shape[0])


@dataclass(eq=False)
class DepthwiseConv2D(_WeightedNode):
    """Depthwise convolution, channel multiplier 1. ``weights`` [1, KH, KW, C]."""
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    kind = "depthwise_conv2d"

    def __post_init__(self):
        super().__post_init__()
        _check_weights(self, self.weights, 4, "depthwise weights [1, KH, KW, C]")
        if self.weights.shape[0] != 1:
            raise GraphError(f"node {self.name!r}: depthwise weights must have shape [1, KH, KW, C]")
        self.stride, self.padding = tuple(self.stride), tuple(self.padding)
        self._finish(self.weights.shape[3])


@dataclass(eq=False)
class FullyConnected(_WeightedNode):
    """Fully connected: the input is flattened in NHWC order. ``weights`` [Cout, Cin].

    ``per_tensor`` marks weights quantized with one scale. TFLite computes that layer's multiplier differently
    from a per-channel one (``GetQuantizedConvolutionMultipler``: the product ``s_in * s_w`` is rounded to
    float32 before the division in double), which moves the multiplier's last bit for some scales.
    """
    per_tensor: bool = False
    kind = "fully_connected"

    def __post_init__(self):
        super().__post_init__()
        _check_weights(self, self.weights, 2, "fully connected weights [Cout, Cin]")
        self._finish(self.weights.shape[0])
        if self.per_tensor:
            if np.unique(self.weight_scales).size != 1:
                raise GraphError(f"node {self.name!r}: per_tensor weights need a single weight scale")
            product = float(np.float32(self.input_spec.scale) * self.weight_scales[0])
            m, s = quantize_multiplier(product / self.output.scale)
            cout = self.weights.shape[0]
            self.requant = replace(self.requant, multiplier=np.full(cout, m, np.int64),
                                   shift=np.full(cout, s, np.int64))


@dataclass(eq=False)
class MaxPool2D(_Node):
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0, 0, 0)
    activation: str = "none"
    kind = "max_pool2d"


@dataclass(eq=False)
class AvgPool2D(_Node):
    """Average pooling with TFLite's integer rule: input and output share scale and zero point, the average
    counts only in-bounds taps and rounds half away from zero. Global average pooling is the whole-map kernel."""
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: tuple = (0, 0, 0, 0)
    activation: str = "none"
    kind = "avg_pool2d"


@dataclass(eq=False)
class Add(_Node):
    """Elementwise add of two int8 tensors with TFLite's integer ADD (``left_shift`` 20)."""
    activation: str = "none"
    kind = "add"


@dataclass(eq=False)
class Graph:
    """A quantized network: one input tensor, nodes in execution order, one output tensor."""
    input: TensorSpec
    nodes: list
    output: str
    name: str = "graph"

    def __post_init__(self):
        self.nodes = list(self.nodes)
        known = {self.input.name: self.input}
        for node in self.nodes:
            for name in node.inputs:
                if name not in known:
                    raise GraphError(f"node {node.name!r}: input tensor {name!r} is not produced before it")
            if node.output.name in known:
                raise GraphError(f"node {node.name!r}: tensor {node.output.name!r} is produced twice")
            known[node.output.name] = node.output
        if self.output not in known:
            raise GraphError(f"graph output {self.output!r} is not produced by any node")
        self.tensors = known

    def spec(self, name):
        return self.tensors[name]
