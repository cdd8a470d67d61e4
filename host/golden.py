"""The golden model: NumPy implementations of every operation the accelerator performs, and a graph interpreter.

This is the executable specification of the hardware. Every function works on a batch (NHWC, int8) at once and
is bit-exact with TFLite-Micro's reference kernels (tests/test_golden_tflm.py shows it).

Convolutions accumulate ``sum(w * (x - zp_in)) + bias`` exactly with BLAS: in float32 when every partial sum
stays within 2**24 (|x - zp| <= 255, |w| <= 127, so a reduction depth of up to 518 terms, which covers LeNet-5
and most layers), else in float64 (exact below 2**53, a depth of up to 2**53 / 32385). Integers are exact in
either format whatever order BLAS adds them in. The sums are then wrapped to int32 as the hardware's
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
_MAX_FLOAT32_DEPTH = (1 << 24) // (255 * 127)


def _exact_float(depth):
    """The narrowest float type in which a reduction of ``depth`` int8 products is exact."""
    if depth > _MAX_EXACT_DEPTH:
        raise ValueError(f"reduction depth {depth} is too deep for exact floating-point accumulation")
    return np.float32 if depth <= _MAX_FLOAT32_DEPTH else np.float64


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
    """Exact integer product of small-integer float matrices (see :func:`_exact_float`), returned as int64."""
    if a.shape[-1] > _MAX_EXACT_DEPTH:
        raise ValueError(f"reduction depth {a.shape[-1]} is too deep for exact floating-point accumulation")
    if b.shape[1] < 12:
        # OpenBLAS is about twice as fast on a tall-skinny product with a handful of output channels (LeNet's
        # first layer) when it is posed transposed; the cast makes the result C-contiguous again.
        return (b.T @ a.T).T.astype(np.int64, order="C")
    return (a @ b).astype(np.int64)


def conv2d_acc(x, weights, bias, zp_in, stride=(1, 1), padding=(0, 0, 0, 0)):
    """int32 accumulators of a convolution: ``x`` [N, H, W, Cin] int8, ``weights`` [Cout, KH, KW, Cin]."""
    cout, kh, kw, cin = weights.shape
    if x.shape[-1] != cin:
        raise ValueError(f"input has {x.shape[-1]} channels, weights expect {cin}")
    dtype = _exact_float(kh * kw * cin)
    xs = _pad(x.astype(dtype) - dtype(zp_in), padding, 0.0)
    # Windows in the view's own [C, KH, KW] order gather faster than transposed ones; the weights follow.
    win = np.lib.stride_tricks.sliding_window_view(xs, (kh, kw), axis=(1, 2))[:, ::stride[0], ::stride[1]]
    n, oh, ow = win.shape[:3]
    if oh <= 0 or ow <= 0:
        raise ValueError("the kernel does not fit the padded input")
    cols = win.reshape(n * oh * ow, kh * kw * cin)
    acc = _exact_matmul(cols, weights.transpose(0, 3, 1, 2).reshape(cout, -1).astype(dtype).T)
    return wrap_int32(acc.reshape(n, oh, ow, cout) + bias.astype(np.int64))


def depthwise_conv2d_acc(x, weights, bias, zp_in, stride=(1, 1), padding=(0, 0, 0, 0)):
    """int32 accumulators of a depthwise convolution: ``weights`` [1, KH, KW, C]."""
    _, kh, kw, c = weights.shape
    if x.shape[-1] != c:
        raise ValueError(f"input has {x.shape[-1]} channels, depthwise weights expect {c}")
    dtype = _exact_float(kh * kw)
    xs = _pad(x.astype(dtype) - dtype(zp_in), padding, 0.0)
    win = _windows(xs, kh, kw, stride)                   # N, OH, OW, KH, KW, C
    acc = np.einsum("nyxijc,ijc->nyxc", win, weights[0].astype(dtype)).astype(np.int64)
    return wrap_int32(acc + bias.astype(np.int64))


def fully_connected_acc(x, weights, bias, zp_in):
    """int32 accumulators of a fully connected layer on ``x`` flattened to [N, Cin] (NHWC order)."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != weights.shape[1]:
        raise ValueError(f"input has {flat.shape[1]} features, weights expect {weights.shape[1]}")
    dtype = _exact_float(flat.shape[1])
    acc = _exact_matmul(flat.astype(dtype) - dtype(zp_in), weights.astype(dtype).T)
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


def _taps(xs, kernel, stride):
    """The KH*KW strided slices of a padded NHWC array, one per kernel tap, each [N, OH, OW, C].

    Reducing tap by tap touches each output KH*KW times in contiguous runs, much faster than a reduction
    over the last axes of a window view."""
    (kh, kw), (sy, sx) = kernel, stride
    oh = (xs.shape[1] - kh) // sy + 1
    ow = (xs.shape[2] - kw) // sx + 1
    if oh <= 0 or ow <= 0:
        raise ValueError("the kernel does not fit the padded input")
    for i in range(kh):
        for j in range(kw):
            yield xs[:, i:i + sy * (oh - 1) + 1:sy, j:j + sx * (ow - 1) + 1:sx]


def max_pool2d(x, kernel, stride, padding=(0, 0, 0, 0), qmin=-128, qmax=127):
    """Max over in-bounds taps (padding never wins), then the activation clamp."""
    xs = _pad(x.astype(np.int16), padding, -32768)
    taps = _taps(xs, kernel, stride)
    out = next(taps).copy()
    for tap in taps:
        np.maximum(out, tap, out=out)
    return np.clip(out, qmin, qmax).astype(np.int8)


def _tap_sum(xs, kernel, stride):
    taps = _taps(xs, kernel, stride)
    total = next(taps).copy()
    for tap in taps:
        total += tap
    return total


def avg_pool2d(x, kernel, stride, padding=(0, 0, 0, 0), qmin=-128, qmax=127):
    """TFLite's integer average: sum of in-bounds taps over their count, rounded half away from zero."""
    sums = _tap_sum(_pad(x.astype(np.int64), padding, 0), kernel, stride)
    ones = np.ones((1,) + x.shape[1:3] + (1,), np.int64)
    counts = _tap_sum(_pad(ones, padding, 0), kernel, stride)
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
