"""Post-training quantization: a float network (host/float_model.py) -> an int8 graph (host/graph.py).

The scheme is TFLite's int8 scheme:

* batch norm is folded into the preceding layer's float weights and bias first
  (:meth:`FloatModel.fold_batch_norm`);
* weights are symmetric int8 in [-127, 127] with one scale per output channel (per channel for depthwise too):
  ``s_w[c] = max|w[c]| / 127``;
* activations are int8 with one scale and zero point per tensor, from the min/max seen over the calibration
  images. The range is widened to include 0 so that real zero (the padding value, the ReLU floor) is an exact
  integer, the zero point; it is then nudged as TFLite does: ``scale = (max - min) / 255`` and
  ``zero_point = round(-128 - min / scale)``;
* bias is int32 with scale ``s_in * s_w[c]`` and no zero point: ``round(b[c] / (s_in * s_w[c]))``;
* ReLU and ReLU6 become the output clamp (host/graph.py ``activation_range``);
* max and average pooling give their output the input's scale and zero point, because TFLite's integer pooling
  kernels have no rescale (they require equal input and output quantization);
* a residual ADD gets its own output scale from calibration, and TFLite's integer ADD rescales both inputs.

Rounding of real values to integers (weights, bias, activations) is half away from zero, as TFLite's converter
(``std::round``) does. Scales are float32, as a ``.tflite`` file stores them, and every derived integer is
computed from the float32 values so the graph is the same whether built here or read back from a file.
"""

import numpy as np

from . import graph as g
from .float_model import FloatModel
from .quant import ROUNDING_MODES

__all__ = ["quantize", "quantize_input", "tensor_spec", "range_to_scale_zero_point", "round_half_away"]

_CALIBRATION_BATCH = 64


def round_half_away(x):
    """Round to nearest, ties away from zero (C's ``std::round``), elementwise, as float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def range_to_scale_zero_point(lo, hi, where="tensor"):
    """int8 ``(scale, zero_point)`` for the real range ``[lo, hi]`` widened to include 0.

    A range of (almost) zero width, a tensor that was always zero on the calibration set, gets the range
    [0, 1]: any scale represents zero exactly, and a moderate one keeps the requantization multipliers of the
    layers around it in range.
    """
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise g.GraphError(f"{where}: calibration range [{lo}, {hi}] is not a finite interval")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-12:
        lo, hi = 0.0, 1.0
    scale = float(np.float32((hi - lo) / 255.0))
    zero_point = int(np.clip(round_half_away(-128.0 - lo / scale), -128, 127))
    return scale, zero_point


def tensor_spec(name, shape, lo, hi):
    """A :class:`graph.TensorSpec` for a tensor whose real values span ``[lo, hi]``."""
    scale, zero_point = range_to_scale_zero_point(lo, hi, f"tensor {name!r}")
    return g.TensorSpec(name, shape, scale, zero_point)


def quantize_input(float_images, spec):
    """Real input values -> int8 with the input tensor's quantization: ``clamp(round(x / s) + zp)``.

    For the bundled digits (host/data.py) the input spec is scale 1/255, zero point -128, so this is exactly
    ``pixel - 128`` for a uint8 pixel (``x = pixel / 255``).
    """
    x = np.asarray(float_images, dtype=np.float64)
    if tuple(x.shape[1:]) != spec.shape:
        raise g.GraphError(f"input {spec.name!r}: expected images of shape [N, {', '.join(map(str, spec.shape))}], "
                           f"not {list(x.shape)}")
    q = round_half_away(x / float(np.float32(spec.scale))) + spec.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def _calibrate(model, images):
    """Per-tensor (min, max) of the float model's tensors over ``images``, in batches."""
    lo, hi = {}, {}
    for start in range(0, images.shape[0], _CALIBRATION_BATCH):
        values = model.forward(images[start:start + _CALIBRATION_BATCH], keep=True)
        for name, value in values.items():
            lo[name] = min(lo.get(name, np.inf), float(value.min()))
            hi[name] = max(hi.get(name, -np.inf), float(value.max()))
    return lo, hi


def _weight_scales(layer):
    """Per-output-channel symmetric scales (float32) and the int8 weights they give."""
    w = layer.weights.astype(np.float64)
    axis = 3 if layer.kind == "depthwise_conv2d" else 0
    other = tuple(a for a in range(w.ndim) if a != axis)
    max_abs = np.abs(w).max(axis=other)
    # An all-zero channel has no natural scale; 1.0 keeps its bias representable and its weights exactly 0.
    scales = np.where(max_abs > 0, max_abs / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(round_half_away(w / scales.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return scales, q


def _bias(layer, input_scale, weight_scales):
    bias_scale = float(np.float32(input_scale)) * weight_scales.astype(np.float64)
    q = round_half_away(layer.bias.astype(np.float64) / bias_scale)
    if np.any(np.abs(q) > np.iinfo(np.int32).max):
        worst = int(np.argmax(np.abs(q)))
        raise g.GraphError(f"layer {layer.name!r}: bias of channel {worst} ({layer.bias[worst]!r}) does not fit "
                           f"int32 at scale {bias_scale[worst]:.3g}")
    return q.astype(np.int32)


def quantize(float_model, calibration_images, *, rounding="double", input_range=None, name=None):
    """Quantize ``float_model`` to an int8 :class:`graph.Graph`, calibrated on ``calibration_images``.

    Parameters
    ----------
    float_model : FloatModel
        The float network; batch norms are folded here (the model itself is not changed).
    calibration_images : array [N, H, W, C]
        Real-valued input images; the activation ranges are their min/max over these.
    rounding : str
        Requantization rounding of every weighted layer: "double" (TFLite's default), "single" or "float32".
    input_range : (lo, hi), optional
        Fix the input's real range instead of calibrating it, e.g. ``(0.0, 1.0)`` for images, so that the
        input quantization is a documented rule rather than a property of the calibration set.
    name : str, optional
        Graph name; the float model's by default.
    """
    if not isinstance(float_model, FloatModel):
        raise g.GraphError(f"quantize needs a FloatModel, not {type(float_model).__name__}")
    if rounding not in ROUNDING_MODES:
        raise g.GraphError(f"rounding mode must be one of {', '.join(ROUNDING_MODES)}, not {rounding!r}")
    images = np.asarray(calibration_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] == 0 or tuple(images.shape[1:]) != float_model.input_shape:
        raise g.GraphError(f"model {float_model.name!r}: calibration images must be a non-empty batch "
                           f"[N, {', '.join(map(str, float_model.input_shape))}], not {list(images.shape)}")
    if not np.all(np.isfinite(images)):
        raise g.GraphError(f"model {float_model.name!r}: calibration images contain NaN or infinity")
    model = float_model.fold_batch_norm()
    lo, hi = _calibrate(model, images)
    if input_range is not None:
        lo[model.input_name], hi[model.input_name] = (float(v) for v in input_range)

    specs = {model.input_name: tensor_spec(model.input_name, model.input_shape, lo[model.input_name],
                                           hi[model.input_name])}
    nodes = []
    for layer in model.layers:
        shape = model.shapes[layer.output]
        in_spec = specs[layer.inputs[0]]
        kind = layer.kind
        if kind in ("max_pool2d", "avg_pool2d"):
            # TFLite's integer pooling does not rescale: the output shares the input's quantization.
            out = g.TensorSpec(layer.output, shape, in_spec.scale, in_spec.zero_point)
            cls = g.MaxPool2D if kind == "max_pool2d" else g.AvgPool2D
            node = cls(layer.name, layer.inputs, out, kernel=layer.kernel, stride=layer.stride,
                       padding=layer.padding)
        elif kind == "add":
            out = tensor_spec(layer.output, shape, lo[layer.output], hi[layer.output])
            node = g.Add(layer.name, layer.inputs, out, activation=layer.activation)
        elif kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            if kind == "fully_connected":
                shape = (shape[-1],)   # the golden model's fully connected output is [N, Cout]
            out = tensor_spec(layer.output, shape, lo[layer.output], hi[layer.output])
            scales, weights = _weight_scales(layer)
            common = dict(weights=weights, bias=_bias(layer, in_spec.scale, scales), weight_scales=scales,
                          input_spec=in_spec, activation=layer.activation, rounding=rounding)
            if kind == "fully_connected":
                node = g.FullyConnected(layer.name, layer.inputs, out, **common)
            else:
                cls = g.Conv2D if kind == "conv2d" else g.DepthwiseConv2D
                node = cls(layer.name, layer.inputs, out, stride=layer.stride, padding=layer.padding, **common)
        else:
            raise g.GraphError(f"layer {layer.name!r}: the quantizer has no rule for {kind!r}")
        specs[layer.output] = out
        nodes.append(node)
    return g.Graph(specs[model.input_name], nodes, model.output, name or model.name)
