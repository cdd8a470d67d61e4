"""The golden model equals TFLite-Micro's reference kernels, element for element, and .tflite files round-trip.

Every case builds a quantized graph from a fixed seed, exports it with :func:`export_tflite`, runs it in
TFLite-Micro (``pip install tflite-micro``) on random int8 inputs and compares all output elements with
:func:`cnnacc.host.golden.run_graph`. Output scales are derived from the float range of each layer's result so
that outputs use the int8 range (and sometimes saturate) instead of collapsing to a constant.
"""

import numpy as np
import pytest

from cnnacc.host import golden
from cnnacc.host import graph as g
from cnnacc.host import tflite_io
from cnnacc.host.quant import quantize_multiplier
from cnnacc.host.tflite_io import export_tflite, import_tflite

# TFLite-Micro is a pinned test dependency (installed by `make test`): its absence is a failure, not a skip.
from tflite_micro.python.tflite_micro import runtime  # noqa: E402
from tflite.BuiltinOperator import BuiltinOperator  # noqa: E402
from tflite.TensorType import TensorType  # noqa: E402

BATCH = 3


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def tflm_run(model_bytes, x, activation_bytes):
    """Run a .tflite model in TFLite-Micro on the batch ``x`` (the model's batch size)."""
    arena = 2 * len(model_bytes) + 2 * activation_bytes + (1 << 20)
    itp = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena)
    itp.set_input(x, 0)
    itp.invoke()
    return itp.get_output(0)


def check_against_tflm(graph, seed, batch=BATCH, x=None):
    """Golden == TFLM on every output element, and golden == golden(import(export)).

    Returns the model bytes and TFLM's output."""
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.integers(-128, 128, (batch,) + graph.input.shape).astype(np.int8)
    model = export_tflite(graph, batch=x.shape[0])
    ref = golden.run_graph(graph, x)
    activation_bytes = x.shape[0] * sum(int(np.prod(spec.shape)) for spec in graph.tensors.values())
    got = tflm_run(model, x, activation_bytes).reshape(ref.shape)
    mismatch = np.flatnonzero(got != ref)
    assert mismatch.size == 0, (f"seed {seed}: {mismatch.size}/{ref.size} elements differ from TFLite-Micro, "
                                f"first at {mismatch[0]}: golden {ref.flat[mismatch[0]]}, TFLM {got.flat[mismatch[0]]}")
    back = import_tflite(model)
    assert_same_graph(graph, back)
    np.testing.assert_array_equal(golden.run_graph(back, x), ref)
    return model, got


def assert_same_graph(a, b):
    """Structural identity: specs, node kinds, names, parameters and the derived requantization."""
    assert a.input == b.input
    assert a.output == b.output
    assert len(a.nodes) == len(b.nodes)
    for na, nb in zip(a.nodes, b.nodes):
        assert (na.kind, na.name, na.inputs, na.output) == (nb.kind, nb.name, nb.inputs, nb.output), na.name
        for attr in ("stride", "padding", "kernel", "activation", "rounding", "per_tensor"):
            assert getattr(na, attr, None) == getattr(nb, attr, None), (na.name, attr)
        if hasattr(na, "weights"):
            np.testing.assert_array_equal(na.weights, nb.weights)
            np.testing.assert_array_equal(na.bias, nb.bias)
            np.testing.assert_array_equal(na.weight_scales, nb.weight_scales)
            assert na.input_spec == nb.input_spec
            for attr in ("multiplier", "shift"):
                np.testing.assert_array_equal(getattr(na.requant, attr), getattr(nb.requant, attr))
            assert (na.requant.qmin, na.requant.qmax, na.requant.zero_point) == \
                   (nb.requant.qmin, nb.requant.qmax, nb.requant.zero_point)


def rand_spec(rng, name, shape, zp=None, scale=None):
    scale = float(10 ** rng.uniform(-2.5, -0.5)) if scale is None else scale
    zp = int(rng.integers(-128, 128)) if zp is None else zp
    return g.TensorSpec(name, shape, scale, zp)


def weights(rng, shape):
    """Symmetric int8 weights with a few exact extremes (+-127) to exercise the widest products."""
    w = rng.integers(-127, 128, shape).astype(np.int8)
    w.flat[rng.integers(0, w.size, max(1, w.size // 20))] = rng.choice([-127, 127])
    return w


def fit_output(rng, real, name, shape, activation="none", zp=None):
    """An output spec that uses the int8 range: the 99th percentile of |real| lands near the limit (x0.8..1.25).
    ReLU-family outputs get a zero point in the lower part of the range, since they start at 0."""
    real = np.asarray(real, np.float64)
    if activation in ("relu", "relu6"):
        zp = int(rng.integers(-128, -60)) if zp is None else zp
        positive = real[real > 0]
        top = 6.0 if activation == "relu6" else (float(np.quantile(positive, 0.99)) if positive.size else 1.0)
        scale = top / max(127 - zp, 1)
    else:
        zp = int(rng.integers(-40, 41)) if zp is None else zp
        scale = (float(np.quantile(np.abs(real), 0.99)) or 1.0) / 127.5
    return rand_spec(rng, name, shape, zp=zp, scale=scale * float(rng.uniform(0.8, 1.25)))


def conv_out_hw(h, w, k, stride, padding):
    return ((h + padding[0] + padding[1] - k[0]) // stride[0] + 1,
            (w + padding[2] + padding[3] - k[1]) // stride[1] + 1)


def resolve_padding(mode, h, w, k, stride):
    if mode == "valid":
        return (0, 0, 0, 0)
    if mode == "same":
        return g.same_padding(h, k[0], stride[0]) + g.same_padding(w, k[1], stride[1])
    return mode     # explicit (top, bottom, left, right)


def make_weighted(rng, kind, x_spec, cout=None, k=(3, 3), stride=(1, 1), padding="same", activation="none",
                  zp_out=None, name="y", per_tensor=False, scale_decades=2.0, probe=None):
    """One conv / depthwise / FC node with random weights and per-channel scales spanning ``scale_decades``.

    ``probe`` (int8 inputs, default random) gives the real output range the output scale is fitted to; for
    RELU6 the weight scales are first scaled so that about a tenth of the outputs exceed 6."""
    h = w = cin = None
    if kind != "fully_connected":
        h, w, cin = x_spec.shape
    if kind == "conv2d":
        wt = weights(rng, (cout, k[0], k[1], cin))
        channels = cout
    elif kind == "depthwise_conv2d":
        wt = weights(rng, (1, k[0], k[1], cin))
        channels = cin
    else:
        wt = weights(rng, (cout, int(np.prod(x_spec.shape))))
        channels = cout
    if per_tensor:
        scales = np.full(channels, 10 ** rng.uniform(-3, -1))
    else:
        scales = 10 ** rng.uniform(-1 - scale_decades, -1, channels)
    bias = rng.integers(-3000, 3001, channels)
    if probe is None:
        probe = rng.integers(-128, 128, (4,) + x_spec.shape).astype(np.int8)
    pad = None
    if kind == "fully_connected":
        acc = golden.fully_connected_acc(probe, wt, bias, x_spec.zero_point)
        out_shape = (cout,)
    else:
        pad = resolve_padding(padding, h, w, k, stride)
        fn = golden.conv2d_acc if kind == "conv2d" else golden.depthwise_conv2d_acc
        acc = fn(probe, wt, bias, x_spec.zero_point, stride, pad)
        out_shape = acc.shape[1:]
    real = acc * (x_spec.scale * scales)
    if activation == "relu6":
        magnitude = float(np.quantile(np.abs(real), 0.9)) or 1.0
        scales = scales * (6.0 / magnitude)
        real = real * (6.0 / magnitude)
    scales = scales.astype(np.float32)
    out = fit_output(rng, real, name, out_shape, activation, zp=zp_out)
    common = dict(name=name, inputs=(x_spec.name,), output=out, weights=wt, bias=bias, weight_scales=scales,
                  input_spec=x_spec, activation=activation)
    if kind == "conv2d":
        return g.Conv2D(stride=stride, padding=pad, **common)
    if kind == "depthwise_conv2d":
        return g.DepthwiseConv2D(stride=stride, padding=pad, **common)
    return g.FullyConnected(per_tensor=per_tensor, **common)


class Net:
    """Builds a graph layer by layer, running a sample batch through it so that each layer's output scale is
    fitted to the data it will really see (random scales would leave deep layers saturated or constant)."""

    def __init__(self, rng, x_spec, batch=8):
        self.rng, self.input, self.nodes = rng, x_spec, []
        self.values = {x_spec.name: rng.integers(-128, 128, (batch,) + x_spec.shape).astype(np.int8)}

    def add(self, node):
        self.nodes.append(node)
        graph = g.Graph(input=self.input, nodes=self.nodes, output=node.output.name)
        self.values[node.output.name] = golden.run_node(node, graph, self.values)
        return node.output

    def weighted(self, kind, src, *args, **kwargs):
        return self.add(make_weighted(self.rng, kind, src, *args, probe=self.values[src.name], **kwargs))

    def pool(self, cls, src, name, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0)):
        out = g.TensorSpec(name, conv_out_hw(*src.shape[:2], kernel, stride, padding) + src.shape[2:],
                           src.scale, src.zero_point)
        return self.add(cls(name=name, inputs=(src.name,), output=out, kernel=kernel, stride=stride,
                            padding=padding))

    def residual(self, a, b, name, activation="none"):
        real = ((self.values[a.name] - a.zero_point) * a.scale + (self.values[b.name] - b.zero_point) * b.scale)
        out = fit_output(self.rng, real, name, a.shape, activation)
        return self.add(g.Add(name=name, inputs=(a.name, b.name), output=out, activation=activation))

    def graph(self, name):
        return g.Graph(input=self.input, nodes=self.nodes, output=self.nodes[-1].output.name, name=name)


def single(node, x_spec):
    return g.Graph(input=x_spec, nodes=[node], output=node.output.name, name=node.kind)


# ----------------------------------------------------------------------------------------------------------
# one operator at a time
# ----------------------------------------------------------------------------------------------------------

# (seed, H, W, Cin, Cout, kernel, stride, padding, activation, zp_in)
CONV_CASES = [
    (1, 8, 8, 3, 4, (3, 3), (1, 1), "same", "none", None),
    (2, 9, 7, 5, 6, (3, 3), (2, 2), "same", "relu", None),
    (3, 10, 10, 4, 8, (5, 5), (1, 1), "valid", "relu6", -128),
    (4, 7, 9, 2, 3, (3, 2), (2, 1), "valid", "none", 127),
    (5, 8, 8, 6, 5, (3, 3), (1, 1), (0, 2, 1, 0), "relu", -128),     # asymmetric: PAD + CONV_2D
    (6, 6, 6, 3, 4, (1, 1), (1, 1), "same", "relu6", 127),
    (7, 11, 11, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), "none", None),   # TF's SAME would pad (0, 1)
    (8, 5, 5, 16, 7, (5, 5), (1, 1), (2, 2, 2, 2), "relu", 0),
]


@pytest.mark.parametrize("seed,h,w,cin,cout,k,stride,padding,act,zp", CONV_CASES)
def test_conv2d_matches_tflm(seed, h, w, cin, cout, k, stride, padding, act, zp):
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", (h, w, cin), zp=zp)
    check_against_tflm(single(make_weighted(rng, "conv2d", x, cout, k, stride, padding, act), x), seed)


DW_CASES = [
    (11, 8, 8, 4, (3, 3), (1, 1), "same", "relu6", None),
    (12, 9, 9, 6, (3, 3), (2, 2), "same", "relu", -128),
    (13, 7, 10, 3, (5, 3), (1, 2), "valid", "none", 127),
    (14, 8, 8, 5, (3, 3), (2, 2), (1, 0, 0, 1), "relu6", None),        # asymmetric: PAD + DEPTHWISE
    (15, 6, 6, 8, (3, 3), (1, 1), (2, 2, 2, 2), "none", -128),
]


@pytest.mark.parametrize("seed,h,w,c,k,stride,padding,act,zp", DW_CASES)
def test_depthwise_matches_tflm(seed, h, w, c, k, stride, padding, act, zp):
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", (h, w, c), zp=zp)
    check_against_tflm(single(make_weighted(rng, "depthwise_conv2d", x, k=k, stride=stride, padding=padding,
                                            activation=act), x), seed)


FC_CASES = [
    (21, (16,), 10, "none", False, None),
    (22, (4, 4, 3), 7, "relu", False, -128),     # flattens an NHWC map
    (23, (32,), 12, "relu6", True, 127),         # per-tensor weights: TFLite's float32-product multiplier
    (24, (2, 3, 5), 4, "none", True, None),
    (25, (120,), 84, "relu", False, None),
]


@pytest.mark.parametrize("seed,in_shape,cout,act,per_tensor,zp", FC_CASES)
def test_fully_connected_matches_tflm(seed, in_shape, cout, act, per_tensor, zp):
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", in_shape, zp=zp)
    node = make_weighted(rng, "fully_connected", x, cout, activation=act, per_tensor=per_tensor)
    check_against_tflm(single(node, x), seed)


def test_per_tensor_fc_multiplier_is_tflites_float32_product():
    """Scales where rounding s_in * s_w to float32 first changes the multiplier: golden must follow TFLM."""
    rng = np.random.default_rng(31)
    found = 0
    while found < 3:
        s_in, s_w, s_out = (np.float32(10 ** rng.uniform(-3, -1)) for _ in range(3))
        double = quantize_multiplier(float(s_in) * float(s_w) / float(s_out))
        single_product = quantize_multiplier(float(s_in * s_w) / float(s_out))
        if double == single_product:
            continue
        found += 1
        x = g.TensorSpec("x", (24,), float(s_in), int(rng.integers(-128, 128)))
        wt = weights(rng, (6, 24))
        node = g.FullyConnected(name="y", inputs=("x",), output=g.TensorSpec("y", (6,), float(s_out), 3),
                                weights=wt, bias=rng.integers(-100, 100, 6), weight_scales=np.float32([s_w]),
                                input_spec=x, per_tensor=True)
        assert (int(node.requant.multiplier[0]), int(node.requant.shift[0])) == single_product
        # Inputs large enough that one unit of the multiplier's last bit can show in the output.
        check_against_tflm(single(node, x), 31 + found, batch=16)


# (seed, H, W, C, kernel, stride, padding, activation)
POOL_CASES = [
    (41, 8, 8, 3, (2, 2), (2, 2), "valid", "none"),
    (42, 9, 9, 4, (3, 3), (2, 2), "same", "relu"),
    (43, 7, 7, 2, (3, 3), (1, 1), "same", "relu6"),
    (44, 6, 10, 5, (2, 3), (2, 3), "valid", "none"),
    (45, 5, 5, 3, (3, 3), (2, 2), "same", "none"),
]


@pytest.mark.parametrize("kind", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("seed,h,w,c,k,stride,padding,act", POOL_CASES)
def test_pooling_matches_tflm(kind, seed, h, w, c, k, stride, padding, act):
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", (h, w, c))
    pad = resolve_padding(padding, h, w, k, stride)
    out = g.TensorSpec("y", conv_out_hw(h, w, k, stride, pad) + (c,), x.scale, x.zero_point)
    cls = g.MaxPool2D if kind == "max_pool2d" else g.AvgPool2D
    node = cls(name="y", inputs=("x",), output=out, kernel=k, stride=stride, padding=pad, activation=act)
    check_against_tflm(single(node, x), seed)


@pytest.mark.parametrize("seed,padding", [(51, (1, 0, 0, 1)), (52, (0, 2, 2, 1))])
def test_max_pool_explicit_padding_matches_tflm(seed, padding):
    """Padding that is neither SAME nor VALID exports as PADV2(-128) + MAX_POOL_2D: -128 never wins."""
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", (7, 6, 3))
    out = g.TensorSpec("y", conv_out_hw(7, 6, (3, 3), (2, 2), padding) + (3,), x.scale, x.zero_point)
    node = g.MaxPool2D(name="y", inputs=("x",), output=out, kernel=(3, 3), stride=(2, 2), padding=padding)
    model, _ = check_against_tflm(single(node, x), seed)
    assert b"y/padded" in model


@pytest.mark.parametrize("seed,h,w,c", [(61, 7, 7, 8), (62, 4, 5, 3), (63, 1, 1, 6)])
def test_global_average_pool_matches_tflm(seed, h, w, c):
    rng = np.random.default_rng(seed)
    x = rand_spec(rng, "x", (h, w, c))
    out = g.TensorSpec("y", (1, 1, c), x.scale, x.zero_point)
    node = g.AvgPool2D(name="y", inputs=("x",), output=out, kernel=(h, w), stride=(h, w))
    check_against_tflm(single(node, x), seed)


# Scales 6 / (n + 0.5) in float32 put q(6) on a tie in float32 but just below it in double; 12.0 is an exact
# tie that round-half-even would send down. Each of these fails if the bound is computed in double or with
# Python's round().
RELU6_SCALES = [(float(np.float32(6 / (n + 0.5))), zp) for n, zp in
                [(2, 1), (7, 0), (13, -3), (28, 5), (30, -20), (31, -100)]] + [(12.0, 0), (12.0, -5), (0.48, 0)]


@pytest.mark.parametrize("scale,zp", RELU6_SCALES)
def test_relu6_bounds_round_like_tflite(scale, zp):
    """RELU6's upper bound q(6) rounds in float32, half away from zero. A max pool passes every input value
    through, so its output reveals TFLM's clamp bounds exactly."""
    x = g.TensorSpec("x", (16, 16, 1), scale, zp)
    node = g.MaxPool2D(name="y", inputs=("x",), output=g.TensorSpec("y", (16, 16, 1), scale, zp), kernel=(1, 1),
                       stride=(1, 1), activation="relu6")
    every_value = np.arange(-128, 128, dtype=np.int16).astype(np.int8).reshape(1, 16, 16, 1)
    check_against_tflm(single(node, x), 0, x=every_value)


# (seed, shape, activation, scale ratio of the second input)
ADD_CASES = [
    (71, (6, 6, 4), "none", 1.0),
    (72, (5, 7, 3), "relu", 3.7),
    (73, (4, 4, 8), "relu6", 0.02),
    (74, (10,), "none", 250.0),
]


@pytest.mark.parametrize("seed,shape,act,ratio", ADD_CASES)
def test_add_matches_tflm(seed, shape, act, ratio):
    rng = np.random.default_rng(seed)
    net = Net(rng, rand_spec(rng, "x", shape))
    x = net.input
    # The second operand is a 1x1 convolution of the first, so the graph has one input and ADD two. Its weight
    # and output scales are then multiplied by one factor, which keeps its integers and sets the scale ratio.
    kind = "conv2d" if len(shape) == 3 else "fully_connected"
    conv = make_weighted(rng, kind, x, shape[-1], k=(1, 1), name="b", probe=net.values["x"])
    factor = x.scale * ratio / conv.output.scale
    fields = {f: getattr(conv, f) for f in ("name", "inputs", "weights", "bias", "input_spec", "activation")}
    fields.update(output=g.TensorSpec("b", conv.output.shape, x.scale * ratio, conv.output.zero_point),
                  weight_scales=(conv.weight_scales * factor).astype(np.float32))
    if kind == "conv2d":
        fields.update(stride=conv.stride, padding=conv.padding)
    b = net.add(type(conv)(**fields))
    net.residual(x, b, "y", activation=act)
    check_against_tflm(net.graph("add"), seed)


# ----------------------------------------------------------------------------------------------------------
# whole networks
# ----------------------------------------------------------------------------------------------------------

def lenet_like(seed):
    rng = np.random.default_rng(seed)
    net = Net(rng, rand_spec(rng, "input", (32, 32, 1), zp=-128, scale=1 / 255))
    c1 = net.weighted("conv2d", net.input, 6, (5, 5), padding="valid", activation="relu", name="c1")
    p1 = net.pool(g.MaxPool2D, c1, "p1")
    c2 = net.weighted("conv2d", p1, 16, (5, 5), padding="valid", activation="relu", name="c2")
    p2 = net.pool(g.AvgPool2D, c2, "p2")
    f1 = net.weighted("fully_connected", p2, 120, activation="relu", name="f1")
    f2 = net.weighted("fully_connected", f1, 84, activation="relu6", name="f2", per_tensor=True)
    net.weighted("fully_connected", f2, 10, name="logits")
    return net.graph("lenet_like")


def mobilenet_block_like(seed):
    rng = np.random.default_rng(seed)
    net = Net(rng, rand_spec(rng, "input", (16, 16, 3)))
    stem = net.weighted("conv2d", net.input, 8, (3, 3), (2, 2), "same", "relu6", name="stem")
    dw = net.weighted("depthwise_conv2d", stem, k=(3, 3), padding="same", activation="relu6", name="dw")
    pw = net.weighted("conv2d", dw, 8, (1, 1), padding="valid", name="pw")
    res = net.residual(stem, pw, "res", activation="relu6")
    dw2 = net.weighted("depthwise_conv2d", res, k=(3, 3), stride=(2, 2), padding=(0, 1, 0, 1), activation="relu",
                       name="dw2")
    gap = net.pool(g.AvgPool2D, dw2, "gap", kernel=(4, 4), stride=(4, 4))
    net.weighted("fully_connected", gap, 5, name="logits")
    return net.graph("mobilenet_like")


@pytest.mark.parametrize("seed", [81, 82])
def test_lenet_like_graph_matches_tflm(seed):
    check_against_tflm(lenet_like(seed), seed, batch=8)


@pytest.mark.parametrize("seed", [91, 92])
def test_mobilenet_block_graph_matches_tflm(seed):
    check_against_tflm(mobilenet_block_like(seed), seed, batch=4)


def test_reexport_is_byte_identical(tmp_path):
    graph = mobilenet_block_like(93)
    model = export_tflite(graph)
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    back = import_tflite(path)
    assert_same_graph(graph, back)
    assert back.name == graph.name
    assert export_tflite(back) == model


# ----------------------------------------------------------------------------------------------------------
# hand-built files: folding, unsupported operators, malformed data
# ----------------------------------------------------------------------------------------------------------

def build_model(ops, tensors, inputs, outputs):
    """A .tflite file from ``tensors`` (kwargs of _Writer.tensor) and ``ops`` ((code, ins, outs[, opts_type,
    opts])), through the exporter's own writer."""
    w = tflite_io._Writer(1)
    for t in tensors:
        w.tensor(**t)
    for op in ops:
        w.op(*op)
    return w.finish(inputs, outputs, "hand-built")


def act(name, shape, scale=0.1, zp=0, ttype=TensorType.INT8):
    return dict(name=name, shape=shape, ttype=ttype, scales=[scale], zero_points=[zp])


def test_quantize_dequantize_wrappers_and_reshape_are_folded():
    """A float32 model input quantized to int8, RESHAPE -> FULLY_CONNECTED, DEQUANTIZE of the output."""
    rng = np.random.default_rng(101)
    wt = weights(rng, (5, 12))
    tensors = [
        dict(name="f_in", shape=(1, 2, 2, 3), ttype=TensorType.FLOAT32),
        act("q_in", (1, 2, 2, 3), 0.05, 4),
        act("flat", (1, 12), 0.05, 4),
        dict(name="w", shape=(5, 12), ttype=TensorType.INT8, scales=[0.01], zero_points=[0], data=wt),
        act("y", (1, 5), 0.2, -7),
        dict(name="f_out", shape=(1, 5), ttype=TensorType.FLOAT32),
    ]
    ops = [(BuiltinOperator.QUANTIZE, [0], [1]), (BuiltinOperator.RESHAPE, [1], [2]),
           (BuiltinOperator.FULLY_CONNECTED, [2, 3, -1], [4]), (BuiltinOperator.DEQUANTIZE, [4], [5])]
    graph = import_tflite(build_model(ops, tensors, [0], [5]))
    assert graph.input.name == "q_in" and graph.input.shape == (2, 2, 3)
    assert [n.kind for n in graph.nodes] == ["fully_connected"] and graph.output == "y"
    node = graph.nodes[0]
    assert node.per_tensor and node.inputs == ("q_in",)
    np.testing.assert_array_equal(node.weights, wt)
    np.testing.assert_array_equal(node.bias, np.zeros(5))


def unsupported_cases():
    rng = np.random.default_rng(111)
    wt = weights(rng, (2, 3, 3, 2))
    conv_w = dict(name="w", shape=(2, 3, 3, 2), ttype=TensorType.INT8, scales=[0.01], zero_points=[0], data=wt)
    x, y = act("x", (1, 5, 5, 2)), act("y", (1, 5, 5, 2))
    conv = fb_conv_options(dilation=1)
    paddings = dict(name="pads", shape=(4, 2), ttype=TensorType.INT32,
                    data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))
    return {
        "softmax": ([(BuiltinOperator.SOFTMAX, [0], [1])], [x, y], "operator #0 (SOFTMAX)"),
        "float conv": ([(BuiltinOperator.CONV_2D, [0, 2, -1], [1], *conv)],
                       [dict(name="x", shape=(1, 5, 5, 2), ttype=TensorType.FLOAT32), y, conv_w],
                       "operator #0 (CONV_2D): tensor 'x' is FLOAT32"),
        "dilation": ([(BuiltinOperator.CONV_2D, [0, 2, -1], [1], *fb_conv_options(dilation=2))],
                     [x, act("y", (1, 1, 1, 2)), conv_w], "dilation 2x2"),
        "int16": ([(BuiltinOperator.MAX_POOL_2D, [0], [1], *fb_pool_options())],
                  [act("x", (1, 4, 4, 2), ttype=TensorType.INT16), act("y", (1, 2, 2, 2), ttype=TensorType.INT16)],
                  "is INT16"),
        "broadcast add": ([(BuiltinOperator.MAX_POOL_2D, [0], [1], *fb_pool_options(5)),
                           (BuiltinOperator.ADD, [0, 1], [2])],
                          [x, act("b", (1, 1, 1, 2)), act("z", (1, 5, 5, 2))], "operator #1 (ADD): inputs of shapes"),
        "constant operand": ([(BuiltinOperator.ADD, [0, 1], [2])],
                             [x, dict(act("b", (1, 5, 5, 2)), data=np.ones((1, 5, 5, 2), np.int8)),
                              act("z", (1, 5, 5, 2))], "input 'b' is a constant"),
        "requantize": ([(BuiltinOperator.QUANTIZE, [0], [1])], [x, act("y", (1, 5, 5, 2), 0.3, 1)],
                       "operator #0 (QUANTIZE)"),
        "weights -128": ([(BuiltinOperator.CONV_2D, [0, 2, -1], [1], *conv)],
                         [x, y, dict(conv_w, data=np.full((2, 3, 3, 2), -128, np.int8))],
                         "operator #0 (CONV_2D): node 'y': weight -128"),
        "wrong output shape": ([(BuiltinOperator.CONV_2D, [0, 2, -1], [1], *conv)],
                               [x, act("y", (1, 4, 4, 2)), conv_w], "computes [5, 5, 2]"),
        "pad value not neutral": ([(BuiltinOperator.PAD, [0, 2], [1]),
                                   (BuiltinOperator.MAX_POOL_2D, [1], [3], *fb_pool_options(2))],
                                  [x, act("p", (1, 7, 7, 2)), paddings, act("y", (1, 3, 3, 2))],
                                  "operator #1 (MAX_POOL_2D): its input is padded with 0"),
        "reshape into conv": ([(BuiltinOperator.RESHAPE, [0], [1]), (BuiltinOperator.CONV_2D, [1, 2, -1], [3], *conv)],
                              [x, act("r", (1, 50)), conv_w, y], "comes from a RESHAPE"),
        "dangling pad": ([(BuiltinOperator.PAD, [0, 2], [1])],
                         [x, act("y", (1, 7, 7, 2)),
                          dict(name="p", shape=(4, 2), ttype=TensorType.INT32,
                               data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))],
                         "comes from a PAD"),
    }


def output_name(case):
    return "z" if case in ("broadcast add", "constant operand") else "y"


def fb_conv_options(dilation):
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.Padding import Padding

    def build(b):
        m = tflite_io.fb.Conv2DOptions
        m.Start(b)
        m.AddPadding(b, Padding.SAME)
        m.AddStrideW(b, 1)
        m.AddStrideH(b, 1)
        m.AddDilationWFactor(b, dilation)
        m.AddDilationHFactor(b, dilation)
        return m.End(b)
    return BuiltinOptions.Conv2DOptions, build


def fb_pool_options(k=2):
    from tflite.BuiltinOptions import BuiltinOptions
    from tflite.Padding import Padding
    return BuiltinOptions.Pool2DOptions, tflite_io._pool_options(Padding.VALID, (k, k), (k, k), 0)


@pytest.mark.parametrize("case", list(unsupported_cases()))
def test_unsupported_models_name_the_operator_and_reason(case):
    ops, tensors, message = unsupported_cases()[case]
    model = build_model(ops, tensors, [0], [[t["name"] for t in tensors].index(output_name(case))])
    with pytest.raises(g.GraphError) as info:
        import_tflite(model)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_export_refuses_what_tflite_cannot_express():
    rng = np.random.default_rng(121)
    x = rand_spec(rng, "x", (6, 6, 2))
    node = make_weighted(rng, "conv2d", x, 3)
    node.rounding = "single"
    with pytest.raises(g.GraphError, match="node 'y': rounding mode 'single'"):
        export_tflite(single(node, x))
    avg = g.AvgPool2D(name="y", inputs=("x",), output=g.TensorSpec("y", (3, 3, 2), x.scale, x.zero_point),
                      kernel=(2, 2), stride=(2, 2), padding=(0, 0, 1, 1))
    with pytest.raises(g.GraphError, match="node 'y': average pooling with padding"):
        export_tflite(single(avg, x))


def test_malformed_files_give_one_clear_error(tmp_path):
    model = export_tflite(mobilenet_block_like(131))
    with pytest.raises(g.GraphError, match="not a TFLite flatbuffer"):
        import_tflite(b"")
    with pytest.raises(g.GraphError, match="not a TFLite flatbuffer"):
        import_tflite(b"\x00" * 64)
    with pytest.raises(g.GraphError, match="cannot read"):
        import_tflite(tmp_path / "missing.tflite")
    rng = np.random.default_rng(131)
    outcomes = {"error": 0, "graph": 0}
    cuts = sorted(set(rng.integers(8, len(model), 40).tolist()) | {8, 16, len(model) // 2, len(model) - 1})
    corruptions = [model[:cut] for cut in cuts]
    for _ in range(60):
        damaged = bytearray(model)
        for pos in rng.integers(8, len(model), 4):
            damaged[pos] = int(rng.integers(0, 256))
        corruptions.append(bytes(damaged))
    for data in corruptions:
        try:
            graph = import_tflite(data)
        except g.GraphError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
        else:
            assert isinstance(graph, g.Graph)
            outcomes["graph"] += 1
    assert outcomes["error"] >= len(cuts)   # every truncation is caught


# ----------------------------------------------------------------------------------------------------------
# the project's networks
# ----------------------------------------------------------------------------------------------------------

def test_lenet5_tflite_export_runs_in_tflm_on_the_digits():
    """The quantized LeNet-5 exported to .tflite: TFLM, the golden model and the re-imported graph give the
    same int8 logits on all 1,000 bundled test digits."""
    from cnnacc.host import models
    from cnnacc.host.data import load_digits
    graph = models.lenet5()
    x, labels = load_digits("test", "int8")
    _, logits = check_against_tflm(graph, 0, x=x)
    # Not a tolerance: the trained network must still classify, or the export lost something silently.
    assert (logits.argmax(axis=1) == labels).mean() > 0.95


def test_mobilenet_v1_export_runs_in_tflm():
    """MobileNet v1 (width 0.25, 32x32 digits, seeded weights, calibrated on the bundled digits): TensorFlow's
    SAME padding of stride-2 layers (bottom/right only), 13 depthwise layers, global average pooling."""
    from cnnacc.host import models
    from cnnacc.host.data import load_digits
    graph = models.quantize_on_digits(models.mobilenet_v1(alpha=0.25, resolution=32, channels=1, classes=10,
                                                          seed=3))
    x, _ = load_digits("test", "int8")
    check_against_tflm(graph, 0, x=x[:32])


def test_a_converter_made_float_model_is_refused_clearly():
    """sine_float.tflite ships with tflite-micro, written by TensorFlow's converter: a float model."""
    from pathlib import Path
    path = Path(runtime.__file__).with_name("sine_float.tflite")
    with pytest.raises(g.GraphError, match=r"operator #0 \(FULLY_CONNECTED\): tensor '.*' is FLOAT32; only int8"):
        import_tflite(path)
