"""The golden model: NumPy implementations of every operation the accelerator performs, and a graph interpreter.

This is the executable specification of the hardware. Every function works on a batch (NHWC, int8) at once and
is bit-exact with TFLite-Micro's reference kernels (tests/test_golden_tflm.py shows it).

Convolutions accumulate ``sum(w * (x - zp_in)) + bias`` exactly: the products are formed in float64, which is
exact here because every partial sum is below 2**53 (|x - zp| <= 255, |w| <= 127, and a reduction depth of up
to 2**30 / 32385 terms), and BLAS makes it fast. The sums are then wrapped to int32 as the hardware's
accumulators would.
"""

import numpy as np

from . import graph as g
from .quant import (multiply_by_quantized_multiplier, quantize_multiplier_smaller_than_one_exp, requantize,
                    wrap_int32)

__all__ = [
    "conv2d_acc", "conv2d", "depthwise_conv2d_acc", "depthwise_conv2d", "fully_connected_acc",
    "fully_connected", "max_pool2d", "avg_pool2d", "add", "run_graph", "run_node",
]

_MAX_EXACT_DEPTH = (1 << 53) // (255 * 127)


def _pad(x, padding, value):
    top, bottom, left, right = padding
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _windows(x, kh, kw, stride):
    """``[N, OH, OW, KH, KW, C]`` view of the KxK windows of an NHWC array."""
    sy, sx = stride
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, OH', OW', C, KH, KW
    view = view[:, ::sy, ::sx]
    return view.transpose(0, 1, 2, 4, 5, 3)


def _exact_matmul(a, b):
    """Exact integer product of small-integer float64 matrices, returned as int64."""
    if a.shape[-1] > _MAX_EXACT_DEPTH:
        raise ValueError(f"reduction depth {a.shape[-1]} is too deep for exact float64 accumulation")
    return np.rint(a @ b).astype(np.int64)


def conv2d_acc(x, weights, bias, zp_in, stride=(1, 1), padding=(0, 0, 0, 0)):
    """int32 accumulators of a convolution: ``x`` [N, H, W, Cin] int8, ``weights`` [Cout, KH, KW, Cin]."""
    cout, kh, kw, cin = weights.shape
    if x.shape[-1] != cin:
        raise ValueError(f"input has {x.shape[-1]} channels, weights expect {cin}")
    xs = _pad(x.astype(np.float64) - zp_in, padding, 0.0)
    win = _windows(xs, kh, kw, stride)
    n, oh, ow = win.shape[:3]
    if oh <= 0 or ow <= 0:
        raise ValueError("the kernel does not fit the padded input")
    cols = win.reshape(n * oh * ow, kh * kw * cin)
    acc = _exact_matmul(cols, weights.reshape(cout, -1).astype(np.float64).T)
    return wrap_int32(acc.reshape(n, oh, ow, cout) + bias.astype(np.int64))


def depthwise_conv2d_acc(x, weights, bias, zp_in, stride=(1, 1), padding=(0, 0, 0, 0)):
    """int32 accumulators of a depthwise convolution: ``weights`` [1, KH, KW, C]."""
    _, kh, kw, c = weights.shape
    if x.shape[-1] != c:
        raise ValueError(f"input has {x.shape[-1]} channels, depthwise weights expect {c}")
    xs = _pad(x.astype(np.float64) - zp_in, padding, 0.0)
    win = _windows(xs, kh, kw, stride)                   # N, OH, OW, KH, KW, C
    acc = np.rint(np.einsum("nyxijc,ijc->nyxc", win, weights[0].astype(np.float64))).astype(np.int64)
    return wrap_int32(acc + bias.astype(np.int64))


def fully_connected_acc(x, weights, bias, zp_in):
    """int32 accumulators of a fully connected layer on ``x`` flattened to [N, Cin] (NHWC order)."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != weights.shape[1]:
        raise ValueError(f"input has {flat.shape[1]} features, weights expect {weights.shape[1]}")
    acc = _exact_matmul(flat.astype(np.float64) - zp_in, weights.astype(np.float64).T)
    return wrap_int32(acc + bias.astype(np.int64))


def _apply(acc, rq):
    return requantize(acc, rq.multiplier, rq.shift, rq.zero_point, rq.qmin, rq.qmax, mode=rq.mode,
                      float_scale=rq.float_scale)


def conv2d(x, node):
    return _apply(conv2d_acc(x, node.weights, node.bias, node.input_spec.zero_point, node.stride, node.padding),
                  node.requant)


def depthwise_conv2d(x, node):
    return _apply(depthwise_conv2d_acc(x, node.weights, node.bias, node.input_spec.zero_point, node.stride,
                                       node.padding), node.requant)


def fully_connected(x, node):
    return _apply(fully_connected_acc(x, node.weights, node.bias, node.input_spec.zero_point), node.requant)


def max_pool2d(x, kernel, stride, padding=(0, 0, 0, 0), qmin=-128, qmax=127):
    """Max over in-bounds taps (padding never wins), then the activation clamp."""
    xs = _pad(x.astype(np.int16), padding, -32768)
    win = _windows(xs, kernel[0], kernel[1], stride)
    return np.clip(win.max(axis=(3, 4)), qmin, qmax).astype(np.int8)


def avg_pool2d(x, kernel, stride, padding=(0, 0, 0, 0), qmin=-128, qmax=127):
    """TFLite's integer average: sum of in-bounds taps over their count, rounded half away from zero."""
    sums = _windows(_pad(x.astype(np.int64), padding, 0), kernel[0], kernel[1], stride).sum(axis=(3, 4))
    ones = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    counts = _windows(_pad(ones, padding, 0), kernel[0], kernel[1], stride).sum(axis=(3, 4))
    half = counts // 2
    # C++ division truncates toward zero; with the +/- half this is rounding half away from zero.
    numer = np.where(sums > 0, sums + half, sums - half)
    avg = np.sign(numer) * (np.abs(numer) // counts)
    return np.clip(avg, qmin, qmax).astype(np.int8)


def add(x1, x2, spec1, spec2, out_spec, qmin=-128, qmax=127):
    """TFLite's integer ADD of two int8 tensors of the same shape."""
    left_shift = 20
    twice_max = 2 * max(float(spec1.scale), float(spec2.scale))
    m1, s1 = quantize_multiplier_smaller_than_one_exp(float(spec1.scale) / twice_max)
    m2, s2 = quantize_multiplier_smaller_than_one_exp(float(spec2.scale) / twice_max)
    mo, so = quantize_multiplier_smaller_than_one_exp(twice_max / ((1 << left_shift) * float(out_spec.scale)))
    a = (x1.astype(np.int64) - spec1.zero_point) << left_shift
    b = (x2.astype(np.int64) - spec2.zero_point) << left_shift
    total = multiply_by_quantized_multiplier(a, m1, s1) + multiply_by_quantized_multiplier(b, m2, s2)
    out = multiply_by_quantized_multiplier(total, mo, so) + out_spec.zero_point
    return np.clip(out, qmin, qmax).astype(np.int8)


def run_node(node, graph, values):
    """Run one node on the tensors in ``values`` (a dict name -> int8 array) and return its output."""
    x = values[node.inputs[0]]
    kind = node.kind
    if kind == "conv2d":
        return conv2d(x, node)
    if kind == "depthwise_conv2d":
        return depthwise_conv2d(x, node)
    if kind == "fully_connected":
        return fully_connected(x, node)
    qmin, qmax = g.activation_range(node.activation, node.output.scale, node.output.zero_point)
    if kind == "max_pool2d":
        return max_pool2d(x, node.kernel, node.stride, node.padding, qmin, qmax)
    if kind == "avg_pool2d":
        return avg_pool2d(x, node.kernel, node.stride, node.padding, qmin, qmax)
    if kind == "add":
        spec = graph.spec
        return add(x, values[node.inputs[1]], spec(node.inputs[0]), spec(node.inputs[1]), node.output, qmin, qmax)
    raise g.GraphError(f"node {node.name!r}: the golden model has no operation {kind!r}")


def run_graph(graph, x, keep=False):
    """Run ``graph`` on a batch ``x`` [N, H, W, C] int8; returns the output, or all tensors if ``keep``."""
    x = np.asarray(x)
    if x.dtype != np.int8 or x.shape[1:] != graph.input.shape:
        raise g.GraphError(f"graph {graph.name!r} takes int8 input of shape [N, {', '.join(map(str, graph.input.shape))}], "
                           f"not {x.dtype} {list(x.shape)}")
    values = {graph.input.name: x}
    for node in graph.nodes:
        try:
            out = run_node(node, graph, values)
        except ValueError as exc:
            if isinstance(exc, g.GraphError):
                raise
            raise g.GraphError(f"node {node.name!r}: {exc}") from None
        if out.shape[1:] != node.output.shape:
            raise g.GraphError(f"node {node.name!r}: computed shape {list(out.shape[1:])}, "
                               f"declared {list(node.output.shape)}")
        values[node.output.name] = out
    return values if keep else values[graph.output]
