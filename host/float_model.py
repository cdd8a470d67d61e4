"""Float networks: the form models are defined, trained and calibrated in, before quantization.

A :class:`FloatModel` is a list of layers over named NHWC tensors, with a NumPy float32 forward pass. Layers
mirror the quantized graph's operations (host/graph.py), plus an optional batch norm on convolutions that
:meth:`FloatModel.fold_batch_norm` folds into the weights and bias (inference form ``y = p*x + q`` per channel).
Padding is TensorFlow's: ``"same"`` puts the odd extra row/column at the bottom/right, as TFLite does; explicit
``(top, bottom, left, right)`` tuples are accepted too. Weight layouts are TFLite's: convolution
``[Cout, KH, KW, Cin]``, depthwise ``[1, KH, KW, C]``, fully connected ``[Cout, Cin]``.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from .graph import GraphError, same_padding

__all__ = [
    "BatchNorm", "FConv2D", "FDepthwiseConv2D", "FFullyConnected", "FMaxPool2D", "FAvgPool2D", "FAdd",
    "FloatModel", "ACTIVATIONS",
]

ACTIVATIONS = ("none", "relu", "relu6")


@dataclass
class BatchNorm:
    """Inference batch norm: ``gamma * (x - mean) / sqrt(var + eps) + beta`` per channel."""
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float = 1e-5

    def scale_shift(self):
        """``(p, q)`` with ``bn(x) = p * x + q``, computed in float64."""
        p = np.asarray(self.gamma, np.float64) / np.sqrt(np.asarray(self.var, np.float64) + self.eps)
        q = np.asarray(self.beta, np.float64) - p * np.asarray(self.mean, np.float64)
        return p, q


@dataclass
class _Layer:
    name: str
    inputs: tuple
    output: str

    def __post_init__(self):
        self.inputs = (self.inputs,) if isinstance(self.inputs, str) else tuple(self.inputs)


@dataclass
class _Weighted(_Layer):
    weights: np.ndarray = None
    bias: np.ndarray = None
    activation: str = "none"
    bn: BatchNorm = None


@dataclass
class FConv2D(_Weighted):
    stride: tuple = (1, 1)
    padding: object = "valid"
    kind = "conv2d"


@dataclass
class FDepthwiseConv2D(_Weighted):
    stride: tuple = (1, 1)
    padding: object = "valid"
    kind = "depthwise_conv2d"


@dataclass
class FFullyConnected(_Weighted):
    kind = "fully_connected"


@dataclass
class FMaxPool2D(_Layer):
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: object = "valid"
    kind = "max_pool2d"


@dataclass
class FAvgPool2D(_Layer):
    """Average pooling over in-bounds taps; ``kernel=None`` is global average pooling."""
    kernel: tuple = (2, 2)
    stride: tuple = (2, 2)
    padding: object = "valid"
    kind = "avg_pool2d"


@dataclass
class FAdd(_Layer):
    activation: str = "none"
    kind = "add"


def _activate(x, activation):
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "relu6":
        return np.clip(x, 0, 6)
    return x


def _explicit_padding(layer, padding, in_hw, kernel, stride):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            return same_padding(in_hw[0], kernel[0], stride[0]) + same_padding(in_hw[1], kernel[1], stride[1])
        raise GraphError(f"layer {layer.name!r}: padding must be 'same', 'valid' or a 4-tuple, not {padding!r}")
    padding = tuple(int(p) for p in padding)
    if len(padding) != 4 or min(padding) < 0:
        raise GraphError(f"layer {layer.name!r}: explicit padding must be (top, bottom, left, right) >= 0")
    return padding


def _out_size(size, kernel, stride, before, after):
    return (size + before + after - kernel) // stride + 1


def _windows(x, kh, kw, stride):
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride[0], ::stride[1]]
    return view.transpose(0, 1, 2, 4, 5, 3)   # N, OH, OW, KH, KW, C


@dataclass
class FloatModel:
    """A float network over NHWC tensors. ``input_shape`` is ``(H, W, C)`` without the batch axis."""
    input_name: str
    input_shape: tuple
    layers: list
    output: str
    name: str = "model"
    shapes: dict = field(init=False, default=None)

    def __post_init__(self):
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.layers = list(self.layers)
        self._infer()

    def _infer(self):
        """Check the wiring, resolve padding to explicit tuples and compute every tensor's shape."""
        shapes = {self.input_name: self.input_shape}
        for layer in self.layers:
            for name in layer.inputs:
                if name not in shapes:
                    raise GraphError(f"layer {layer.name!r}: input {name!r} is not produced before it")
            if layer.output in shapes:
                raise GraphError(f"layer {layer.name!r}: tensor {layer.output!r} is produced twice")
            if getattr(layer, "activation", "none") not in ACTIVATIONS:
                raise GraphError(f"layer {layer.name!r}: unknown activation {layer.activation!r}")
            shapes[layer.output] = self._layer_shape(layer, shapes[layer.inputs[0]], shapes)
        if self.output not in shapes:
            raise GraphError(f"model output {self.output!r} is not produced by any layer")
        self.shapes = shapes

    def _layer_shape(self, layer, shape, shapes):
        h, w, c = shape if len(shape) == 3 else (1, 1, int(np.prod(shape)))
        kind = layer.kind
        if kind in ("conv2d", "depthwise_conv2d"):
            layer.weights = np.asarray(layer.weights, np.float32)
            cout, kh, kw, cin = layer.weights.shape
            if kind == "depthwise_conv2d":
                if cout != 1:
                    raise GraphError(f"layer {layer.name!r}: depthwise weights must be [1, KH, KW, C]")
                cin = cout = layer.weights.shape[3]
            if cin != c:
                raise GraphError(f"layer {layer.name!r}: input has {c} channels, weights expect {cin}")
            layer.stride = tuple(layer.stride)
            layer.padding = _explicit_padding(layer, layer.padding, (h, w), (kh, kw), layer.stride)
            self._check_bias_bn(layer, cout)
            t, b, l, r = layer.padding
            oh, ow = _out_size(h, kh, layer.stride[0], t, b), _out_size(w, kw, layer.stride[1], l, r)
            if oh <= 0 or ow <= 0:
                raise GraphError(f"layer {layer.name!r}: a {kh}x{kw} kernel does not fit a {h}x{w} input")
            return (oh, ow, cout)
        if kind == "fully_connected":
            layer.weights = np.asarray(layer.weights, np.float32)
            if layer.weights.ndim != 2 or layer.weights.shape[1] != h * w * c:
                raise GraphError(f"layer {layer.name!r}: weights must be [Cout, {h * w * c}], "
                                 f"not {list(layer.weights.shape)}")
            self._check_bias_bn(layer, layer.weights.shape[0])
            return (1, 1, layer.weights.shape[0])
        if kind in ("max_pool2d", "avg_pool2d"):
            if kind == "avg_pool2d" and layer.kernel is None:
                layer.kernel, layer.stride, layer.padding = (h, w), (h, w), (0, 0, 0, 0)
            layer.kernel, layer.stride = tuple(layer.kernel), tuple(layer.stride)
            layer.padding = _explicit_padding(layer, layer.padding, (h, w), layer.kernel, layer.stride)
            t, b, l, r = layer.padding
            oh = _out_size(h, layer.kernel[0], layer.stride[0], t, b)
            ow = _out_size(w, layer.kernel[1], layer.stride[1], l, r)
            if oh <= 0 or ow <= 0:
                raise GraphError(f"layer {layer.name!r}: a {layer.kernel} pool does not fit a {h}x{w} input")
            return (oh, ow, c)
        if kind == "add":
            if len(layer.inputs) != 2 or shapes[layer.inputs[1]] != shape:
                raise GraphError(f"layer {layer.name!r}: add needs two inputs of the same shape")
            return shape
        raise GraphError(f"layer {layer.name!r}: unsupported layer kind {kind!r}")

    @staticmethod
    def _check_bias_bn(layer, cout):
        layer.bias = (np.zeros(cout, np.float32) if layer.bias is None else np.asarray(layer.bias, np.float32))
        if layer.bias.shape != (cout,):
            raise GraphError(f"layer {layer.name!r}: bias must have {cout} values, not {layer.bias.shape}")
        if layer.bn is not None and np.asarray(layer.bn.gamma).shape != (cout,):
            raise GraphError(f"layer {layer.name!r}: batch norm must have {cout} channels")

    # --- running ---------------------------------------------------------------------------------------------

    def forward(self, x, keep=False):
        """Float32 forward pass on ``x`` [N, H, W, C]; all tensors if ``keep``."""
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            raise GraphError(f"model {self.name!r} takes input [N, {', '.join(map(str, self.input_shape))}], "
                             f"not {list(x.shape)}")
        values = {self.input_name: x}
        for layer in self.layers:
            values[layer.output] = self.run_layer(layer, values)
        return values if keep else values[self.output]

    @staticmethod
    def run_layer(layer, values):
        x = values[layer.inputs[0]]
        kind = layer.kind
        if kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            weights, bias = layer.weights, layer.bias
            if kind == "fully_connected":
                y = x.reshape(x.shape[0], -1) @ weights.T
                y = y.reshape(x.shape[0], 1, 1, -1)
            else:
                t, b, l, r = layer.padding
                xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
                _, kh, kw, _ = weights.shape
                win = _windows(xp, kh, kw, layer.stride)
                if kind == "conv2d":
                    n, oh, ow = win.shape[:3]
                    y = (win.reshape(n * oh * ow, -1) @ weights.reshape(weights.shape[0], -1).T)
                    y = y.reshape(n, oh, ow, -1)
                else:
                    y = np.einsum("nyxijc,ijc->nyxc", win, weights[0], optimize=True)
            y = y + bias
            if layer.bn is not None:
                p, q = layer.bn.scale_shift()
                y = y * p.astype(np.float32) + q.astype(np.float32)
            return _activate(y.astype(np.float32), layer.activation)
        if kind == "max_pool2d":
            t, b, l, r = layer.padding
            xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
            return _windows(xp, *layer.kernel, layer.stride).max(axis=(3, 4))
        if kind == "avg_pool2d":
            t, b, l, r = layer.padding
            pad = ((0, 0), (t, b), (l, r), (0, 0))
            sums = _windows(np.pad(x, pad), *layer.kernel, layer.stride).sum(axis=(3, 4))
            ones = np.pad(np.ones((1,) + x.shape[1:3] + (1,), np.float32), pad)
            return (sums / _windows(ones, *layer.kernel, layer.stride).sum(axis=(3, 4))).astype(np.float32)
        if kind == "add":
            return _activate(x + values[layer.inputs[1]], layer.activation)
        raise GraphError(f"layer {layer.name!r}: unsupported layer kind {kind!r}")

    # --- transforms -------------------------------------------------------------------------------------------

    def fold_batch_norm(self):
        """A copy with every batch norm folded into its layer's weights and bias."""
        layers = []
        for layer in self.layers:
            if getattr(layer, "bn", None) is None:
                layers.append(replace(layer))
                continue
            p, q = layer.bn.scale_shift()
            w = layer.weights.astype(np.float64)
            if layer.kind == "depthwise_conv2d":
                w = w * p                                   # [1, KH, KW, C]: channel is the last axis
            else:
                w = w * p.reshape((-1,) + (1,) * (w.ndim - 1))
            bias = layer.bias.astype(np.float64) * p + q
            layers.append(replace(layer, weights=w.astype(np.float32), bias=bias.astype(np.float32), bn=None))
        return FloatModel(self.input_name, self.input_shape, layers, self.output, self.name)

    def parameter_count(self):
        return int(sum(l.weights.size + l.bias.size for l in self.layers if getattr(l, "weights", None) is not None))
