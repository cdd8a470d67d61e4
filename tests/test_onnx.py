"""ONNX import/export checked against onnxruntime.

* Float semantics: FloatModels (padding, strides, depthwise, batch norm, residual add, pools, non-square maps)
  exported with export_onnx_float run in onnxruntime and in FloatModel.forward; imported back, they run the same.
* int8: models quantized by onnxruntime's own quantizer (quantize_static after quant_pre_process, QInt8
  activations and per-channel QInt8 weights, QOperator and QDQ) import into graphs whose golden int8 outputs equal
  onnxruntime's on every element (LeNet-5 both forms; the MobileNet-like model as QOperator).
  onnxruntime's int8 kernels differ between CPUs (AVX-512 VNNI here); the expected values are computed on the
  machine that runs the test, so a CPU whose kernels differ would show up here as a mismatch.
* The float32 requantization: scale formed as onnxruntime forms it, ties rounded to even.
* Errors: one line naming the node and the reason.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from cnnacc.host import float_model as fm
from cnnacc.host.golden import conv2d_acc, depthwise_conv2d_acc, run_graph, run_node
from cnnacc.host.onnx_io import OnnxImportError, export_onnx_float, import_onnx, onnx_to_float_model

SEED = 20261122


def _session(proto, config=None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def _nhwc(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1)) if np.ndim(x) == 4 else np.asarray(x)


def _run_all(proto, x, config=None):
    """onnxruntime's value of every node output (and the input) for input ``x`` (NCHW)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    have = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = _session(proto, config)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {proto.graph.input[0].name: x})))


def _ort_quantize(float_proto, images_nchw, fmt, tmp_path, activation_type=QuantType.QInt8):
    """onnxruntime's own static quantization (after its pre-processing), per-channel int8 weights."""
    src, dst = tmp_path / f"float_{fmt.name}.onnx", tmp_path / f"int8_{fmt.name}.onnx"
    onnx.save(float_proto, tmp_path / "exported.onnx")
    # onnxruntime's recommended pre-processing: shape inference and graph optimization (batch norm folding).
    quant_pre_process(str(tmp_path / "exported.onnx"), str(src))
    name = float_proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: images_nchw[i:i + 16]} for i in range(0, len(images_nchw), 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=True,
                    activation_type=activation_type, weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def _compare_nodes(graph, ort_values):
    """Run every graph node on onnxruntime's own int8 inputs; mismatch count per node."""
    values = {k: _nhwc(v) for k, v in ort_values.items() if v.dtype == np.int8}
    report = {}
    for node in graph.nodes:
        expected = values[node.output.name]
        got = run_node(node, graph, values).reshape(expected.shape)
        diff = np.abs(got.astype(np.int16) - expected)
        report[node.name] = (node.kind, int(np.count_nonzero(diff)), int(diff.max()), expected.size)
    return report


# --- models ----------------------------------------------------------------------------------------------------

def _rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _bn(rng, n):
    return fm.BatchNorm(rng.uniform(0.5, 1.5, n).astype(np.float32), _rand(rng, n, scale=0.2),
                        _rand(rng, n, scale=0.2), rng.uniform(0.5, 1.5, n).astype(np.float32), 1e-3)


def semantics_model(seed=SEED):
    """Every layer kind and padding case, on a non-square 11x9x3 input."""
    rng = np.random.default_rng(seed)
    layers = [
        fm.FConv2D("stem", "image", "t1", weights=_rand(rng, 8, 3, 3, 3), bias=_rand(rng, 8), stride=(2, 1),
                   padding=(0, 1, 2, 1), bn=_bn(rng, 8), activation="relu"),
        fm.FDepthwiseConv2D("dw", "t1", "t2", weights=_rand(rng, 1, 3, 3, 8), bias=_rand(rng, 8), stride=(2, 2),
                            padding="same", bn=_bn(rng, 8), activation="relu6"),
        fm.FConv2D("pw", "t2", "t3", weights=_rand(rng, 8, 1, 1, 8), bias=_rand(rng, 8)),
        fm.FAdd("res", ("t2", "t3"), "t4", activation="relu"),
        fm.FMaxPool2D("maxp", "t4", "t5", kernel=(3, 2), stride=(1, 1), padding=(1, 1, 0, 1)),
        fm.FAvgPool2D("avgp", "t5", "t6", kernel=(2, 2), stride=(1, 2), padding=(0, 1, 1, 0)),
        fm.FConv2D("conv5", "t6", "t7", weights=_rand(rng, 6, 2, 2, 8), bias=_rand(rng, 6), padding="same"),
        fm.FFullyConnected("fc1", "t7", "t8", weights=_rand(rng, 7, 3 * 3 * 6), bias=_rand(rng, 7),
                           bn=_bn(rng, 7), activation="relu"),
        fm.FFullyConnected("fc2", "t8", "out", weights=_rand(rng, 5, 7), bias=_rand(rng, 5)),
    ]
    return fm.FloatModel("image", (11, 9, 3), layers, "out", "semantics")


def mobilenet_like(seed=SEED):
    """Stem, depthwise-separable block with a residual add, global average pooling, classifier."""
    rng = np.random.default_rng(seed)
    layers = [
        fm.FConv2D("stem", "image", "s", weights=_rand(rng, 8, 3, 3, 1), bias=_rand(rng, 8), stride=(2, 2),
                   padding="same", bn=_bn(rng, 8), activation="relu6"),
        fm.FDepthwiseConv2D("dw", "s", "d", weights=_rand(rng, 1, 3, 3, 8, scale=0.5), bias=_rand(rng, 8),
                            padding="same", bn=_bn(rng, 8), activation="relu6"),
        fm.FConv2D("pw", "d", "p", weights=_rand(rng, 8, 1, 1, 8), bias=_rand(rng, 8), bn=_bn(rng, 8)),
        fm.FAdd("res", ("s", "p"), "r"),
        fm.FDepthwiseConv2D("dw2", "r", "d2", weights=_rand(rng, 1, 3, 3, 8, scale=0.5), bias=_rand(rng, 8),
                            stride=(2, 2), padding="same", activation="relu"),
        fm.FConv2D("pw2", "d2", "p2", weights=_rand(rng, 12, 1, 1, 8), bias=_rand(rng, 12), activation="relu"),
        fm.FMaxPool2D("pool", "p2", "q", kernel=(2, 2), stride=(2, 2)),
        fm.FFullyConnected("fc", "q", "out", weights=_rand(rng, 10, 4 * 4 * 12), bias=_rand(rng, 10)),
    ]
    return fm.FloatModel("image", (32, 32, 1), layers, "out", "mobilenet_like")


@pytest.fixture(scope="module")
def digits():
    from cnnacc.host.data import load_digits
    calib, _ = load_digits("calibration")
    test, _ = load_digits("test")
    return _nchw(calib[:128]), _nchw(test[:200])


@pytest.fixture(scope="module")
def lenet():
    from cnnacc.host.models import lenet5_float
    return lenet5_float()


# --- float semantics -------------------------------------------------------------------------------------------

def test_float_export_matches_onnxruntime_and_imports_back():
    model = semantics_model()
    x = np.random.default_rng(SEED).standard_normal((4, 11, 9, 3)).astype(np.float32)
    expected = model.forward(x)
    proto = export_onnx_float(model)
    got = _session(proto).run(None, {"image": _nchw(x)})[0]
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got, expected.reshape(4, -1), rtol=1e-4, atol=1e-4)
    back = onnx_to_float_model(proto)
    assert back.input_shape == (11, 9, 3)
    assert [l.kind for l in back.layers] == [l.kind for l in model.layers]
    assert back.layers[0].bn is not None and back.layers[0].padding == (0, 1, 2, 1)
    np.testing.assert_allclose(back.forward(x).reshape(4, -1), expected.reshape(4, -1), rtol=1e-5, atol=1e-5)


def test_float_import_of_hand_written_onnx():
    """auto_pad SAME_UPPER/SAME_LOWER/VALID, Reshape, MatMul + Add bias, Clip, Relu after MaxPool,
    GlobalAveragePool."""
    rng = np.random.default_rng(SEED + 1)
    inits = {"w1": _rand(rng, 4, 2, 3, 3), "b1": _rand(rng, 4), "w2": _rand(rng, 4, 1, 2, 2),
             "w3": _rand(rng, 6, 4, 3, 3), "shape": np.array([-1, 6], np.int64),
             "m": _rand(rng, 6, 5), "mb": _rand(rng, 5), "lo": np.float32(0), "hi": np.float32(6)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="same_upper", auto_pad="SAME_UPPER",
                         strides=[2, 2]),
        helper.make_node("Clip", ["a", "lo", "hi"], ["a6"], name="clip"),
        helper.make_node("Conv", ["a6", "w2"], ["b"], name="same_lower_dw", auto_pad="SAME_LOWER", group=4),
        helper.make_node("MaxPool", ["b"], ["bp"], name="maxpool", kernel_shape=[2, 2]),
        helper.make_node("Relu", ["bp"], ["br"], name="relu_after_pool"),
        helper.make_node("Conv", ["br", "w3"], ["c"], name="valid", auto_pad="VALID"),
        helper.make_node("GlobalAveragePool", ["c"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "m"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "mb"], ["y"], name="fc_bias"),
    ]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        [None, 2, 8, 11])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    x = rng.standard_normal((3, 2, 8, 11)).astype(np.float32)
    expected = _session(proto).run(None, {"x": x})[0]
    model = onnx_to_float_model(proto)
    assert model.layers[0].padding == (0, 1, 1, 1)       # SAME_UPPER: odd extra at the bottom/right
    assert model.layers[1].padding == (1, 0, 1, 0)       # SAME_LOWER: odd extra at the top/left
    assert model.layers[1].kind == "depthwise_conv2d" and model.layers[0].activation == "relu6"
    assert model.layers[1].activation == "relu" and model.layers[2].kind == "max_pool2d"
    np.testing.assert_allclose(model.forward(_nhwc(x)).reshape(3, -1), expected, rtol=1e-5, atol=1e-5)


def test_float_model_import_quantizes_like_the_quantizer(lenet, digits):
    """A float ONNX model + calibration images -> the same graph the quantizer makes from the FloatModel."""
    from cnnacc.host.quantizer import quantize
    calib, test = digits
    graph = import_onnx(export_onnx_float(lenet), calibration=calib)
    direct = quantize(lenet, _nhwc(calib))
    assert graph.input.shape == (32, 32, 1)
    xq = np.clip(np.rint(_nhwc(test) / graph.input.scale) + graph.input.zero_point, -128, 127).astype(np.int8)
    np.testing.assert_array_equal(run_graph(graph, xq), run_graph(direct, xq))


# --- int8: onnxruntime's float32 requantization ----------------------------------------------------------------

def _qlinearconv_model(w, w_scale, x_scale, y_scale, bias, group=1, pads=(0, 0, 0, 0)):
    c = w.shape[1] * group
    inits = [numpy_helper.from_array(np.float32(x_scale), "xs"), numpy_helper.from_array(np.int8(3), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale.astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "wz"),
             numpy_helper.from_array(np.float32(y_scale), "ys"), numpy_helper.from_array(np.int8(-5), "yz"),
             numpy_helper.from_array(bias.astype(np.int32), "b"), numpy_helper.from_array(np.float32(x_scale), "xs2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], name="conv",
                              group=group, pads=list(pads), kernel_shape=list(w.shape[2:])),
             helper.make_node("DequantizeLinear", ["y", "ys", "yz"], ["out"], name="dequant")]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c, 9, 7])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * 4)], inits[:-1])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    return proto


@pytest.mark.parametrize("group", [1, 32])
def test_float32_requantization_reproduces_onnxruntime(group):
    """Random per-channel scales (order of the float32 scale product matters) and exact ties (half-even)."""
    rng = np.random.default_rng(SEED + group)
    cout = 32
    # Accumulators of a few thousand, scaled to tens: no saturation to hide a wrong rounding.
    wmax, tie = (10, 6) if group == 1 else (20, 4)
    w = rng.integers(-wmax, wmax + 1, (cout, 32 // group, 3, 3), dtype=np.int8)
    w_scale = rng.uniform(1e-3, 1e-2, cout).astype(np.float32)
    w_scale[:4] = 2.0 ** -np.arange(tie, tie + 4)   # with x_scale = y_scale: exact .5 ties on some outputs
    proto = _qlinearconv_model(w, w_scale, 0.05, 0.05, rng.integers(-300, 300, cout), group, (1, 0, 2, 1))
    x = rng.uniform(-6, 6, (6, 32, 9, 7)).astype(np.float32)
    values = _run_all(proto, x)
    graph = import_onnx(proto)
    assert graph.nodes[0].kind == ("conv2d" if group == 1 else "depthwise_conv2d")
    assert graph.nodes[0].requant.mode == "float32"
    got = run_graph(graph, _nhwc(values["xq"]))
    np.testing.assert_array_equal(got, _nhwc(values["y"]))
    # The test can tell the rounding apart: half away from zero differs on the exact ties.
    node = graph.nodes[0]
    acc_fn = conv2d_acc if group == 1 else depthwise_conv2d_acc
    acc = acc_fn(_nhwc(values["xq"]), node.weights, node.bias, node.input_spec.zero_point, node.stride, node.padding)
    product = acc.astype(np.float32) * node.requant.float_scale
    ties = np.abs(product - np.trunc(product)) == 0.5
    assert np.count_nonzero(ties) >= 10, np.count_nonzero(ties)
    away = np.clip(np.sign(product) * np.floor(np.abs(product) + 0.5) + node.requant.zero_point, -128, 127)
    assert np.any(away != _nhwc(values["y"]))


# --- int8: models quantized by onnxruntime ---------------------------------------------------------------------

def _check_nodes(graph, values):
    """Every node, run on onnxruntime's own int8 inputs, equals onnxruntime's int8 output (QOperator models).

    The one allowed difference: the graph's integer ADD against onnxruntime's float QLinearAdd may differ by
    1 LSB on at most 2% of elements (measured: none in 524,288 outputs of the MobileNet-like model).
    """
    ints = {k: _nhwc(v) for k, v in values.items() if v.dtype == np.int8}
    for node in graph.nodes:
        expected = ints[node.output.name]
        got = run_node(node, graph, ints).reshape(expected.shape)
        bad = np.count_nonzero(got != expected)
        where = f"{node.name} ({node.kind}): {bad} of {got.size} differ"
        if node.kind == "add":
            assert np.abs(got.astype(np.int16) - expected).max() <= 1 and bad <= got.size // 50, where
        else:
            assert bad == 0, where


def _end_to_end(proto, graph, x):
    """(golden, onnxruntime) int8 outputs of the unmodified model, which onnxruntime optimizes as it would in use.

    The input is quantized as its QuantizeLinear does (float32 division, half to even; checked against
    onnxruntime's own on the same images in _int8_input), and the int8 output is recovered exactly from the
    final DequantizeLinear's float output.
    """
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    name = proto.graph.input[0].name
    quant = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    xq = _int8_input(x, consts[quant.input[1]], consts[quant.input[2]])
    dequant = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    assert dequant.op_type == "DequantizeLinear"
    scale, zero_point = consts[dequant.input[1]], consts[dequant.input[2]]
    y = _session(proto).run(None, {name: x})[0]
    expected = np.rint(y / scale + zero_point)
    np.testing.assert_array_equal((expected - zero_point) * scale, y)      # the recovery is exact
    got = run_graph(graph, _nhwc(xq)).reshape(expected.shape)
    return got.astype(np.int64), expected.astype(np.int64), xq


def _int8_input(x, scale, zero_point):
    return np.clip(np.rint(x / scale) + zero_point, -128, 127).astype(np.int8)


def _lenet_int8(lenet, digits, fmt, tmp_path):
    calib, test = digits
    proto = _ort_quantize(export_onnx_float(lenet), calib, fmt, tmp_path)
    ops = {n.op_type for n in proto.graph.node}
    assert ("QLinearConv" in ops) == (fmt == QuantFormat.QOperator)
    graph = import_onnx(proto)
    assert [n.kind for n in graph.nodes] == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "conv2d",
                                             "fully_connected", "fully_connected"]
    got, expected, xq = _end_to_end(proto, graph, test)
    assert expected.shape == (200, 10)
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} outputs differ"
    return proto, graph, xq


def test_lenet5_quantized_by_onnxruntime_qoperator_is_bit_exact(lenet, digits, tmp_path):
    """The acceptance test: onnxruntime's QOperator LeNet-5, every int8 output identical, and every int8 element
    of every layer too (intermediate outputs exposed; QOperator kernels do not change when exposed)."""
    proto, graph, xq = _lenet_int8(lenet, digits, QuantFormat.QOperator, tmp_path)
    values = _run_all(proto, digits[1])
    np.testing.assert_array_equal(values[graph.input.name], xq)     # QuantizeLinear as _int8_input does it
    _check_nodes(graph, values)


def test_lenet5_quantized_by_onnxruntime_qdq_is_bit_exact(lenet, digits, tmp_path):
    """QDQ: onnxruntime fuses each DequantizeLinear -> op -> QuantizeLinear group into the int8 kernels, and the
    outputs are identical. Intermediate values are not compared: exposing a QuantizeLinear output as a graph
    output stops that fusion, and the exposed model runs its convolutions in float."""
    _lenet_int8(lenet, digits, QuantFormat.QDQ, tmp_path)


def test_lenet5_integer_rounding_within_one_lsb_of_onnxruntime(lenet, digits, tmp_path):
    """The hardware's TFLite rounding on the same graph: at most 1 LSB from onnxruntime, node by node."""
    calib, test = digits
    proto = _ort_quantize(export_onnx_float(lenet), calib, QuantFormat.QOperator, tmp_path)
    values = _run_all(proto, test)
    for rounding in ("double", "single"):
        report = _compare_nodes(import_onnx(proto, rounding=rounding), values)
        assert all(worst <= 1 for _, _, worst, _ in report.values()), report
        weighted = [r for r in report.values() if r[0] in ("conv2d", "fully_connected")]
        rate = sum(r[1] for r in weighted) / sum(r[3] for r in weighted)
        assert rate < 0.01, f"{rounding}: {rate:.2%} of weighted-layer outputs differ from onnxruntime"


def test_mobilenet_like_quantized_by_onnxruntime_qoperator(tmp_path):
    """Depthwise, residual add, batch norm (folded by onnxruntime's pre-processing), relu6: every node on
    onnxruntime's own int8 inputs (:func:`_check_nodes`) and the whole network."""
    rng = np.random.default_rng(SEED + 7)
    calib = rng.uniform(0, 1, (64, 1, 32, 32)).astype(np.float32)
    x = rng.uniform(0, 1, (32, 1, 32, 32)).astype(np.float32)
    proto = _ort_quantize(export_onnx_float(mobilenet_like()), calib, QuantFormat.QOperator, tmp_path)
    graph = import_onnx(proto)
    assert [n.kind for n in graph.nodes] == ["conv2d", "depthwise_conv2d", "conv2d", "add", "depthwise_conv2d",
                                             "conv2d", "max_pool2d", "fully_connected"]
    _check_nodes(graph, _run_all(proto, x))
    got, expected, _ = _end_to_end(proto, graph, x)
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} outputs differ"


def test_mobilenet_like_qdq_imports_and_stays_close(tmp_path):
    """QDQ form of the same model. onnxruntime does not fuse every group here: it leaves the stem (whose output
    has two consumers), the first depthwise convolution and the add as float Conv/Add between Dequantize and
    Quantize, while the import fuses all of them into integer nodes; so outputs may differ by a step on a few
    elements (measured: 2 of 10,000 outputs on 1,000 random images)."""
    rng = np.random.default_rng(SEED + 7)
    calib = rng.uniform(0, 1, (64, 1, 32, 32)).astype(np.float32)
    x = rng.uniform(0, 1, (200, 1, 32, 32)).astype(np.float32)
    proto = _ort_quantize(export_onnx_float(mobilenet_like()), calib, QuantFormat.QDQ, tmp_path)
    graph = import_onnx(proto)
    assert [n.kind for n in graph.nodes] == ["conv2d", "depthwise_conv2d", "conv2d", "add", "depthwise_conv2d",
                                             "conv2d", "max_pool2d", "fully_connected"]
    got, expected, _ = _end_to_end(proto, graph, x)
    assert np.count_nonzero(got != expected) <= expected.size // 100
    assert np.abs(got - expected).max() <= 2


# --- errors ----------------------------------------------------------------------------------------------------

def _error(model, match, **kwargs):
    with pytest.raises(OnnxImportError, match=match) as info:
        import_onnx(model, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unsupported_operator_names_the_node(lenet, digits):
    proto = export_onnx_float(lenet)
    out = proto.graph.output[0]
    proto.graph.node.append(helper.make_node("Softmax", [out.name], ["probs"], name="classifier_softmax"))
    out.name = "probs"
    _error(proto, r"node 'classifier_softmax' \(Softmax\): operator Softmax is not supported",
           calibration=digits[0][:4])


def test_uint8_activations_are_rejected(lenet, digits, tmp_path):
    proto = _ort_quantize(export_onnx_float(lenet), digits[0][:32], QuantFormat.QOperator, tmp_path,
                          activation_type=QuantType.QUInt8)
    _error(proto, r"node .*\(QuantizeLinear\): the input has dtype uint8; only int8 activations")


def test_wrong_input_dtype_and_dynamic_shape(lenet):
    proto = export_onnx_float(lenet)
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    _error(proto, r"input 'input': dtype DOUBLE is not supported")
    proto = export_onnx_float(lenet)
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    _error(proto, r"input 'input': dynamic shape on axis H \(height\)")


def test_malformed_files(tmp_path):
    _error(b"\x08\x07\x12\xff\xff not an onnx file", r"malformed ONNX bytes")
    _error(b"", r"malformed ONNX bytes")
    path = tmp_path / "broken.onnx"
    path.write_bytes(export_onnx_float(mobilenet_like()).SerializeToString()[:100])
    _error(path, r"malformed ONNX file")
    _error(tmp_path / "missing.onnx", r"cannot read ONNX file")


def test_unsupported_geometry_names_the_node():
    model = export_onnx_float(mobilenet_like())
    conv = next(n for n in model.graph.node if n.name == "pw2")
    conv.attribute.append(helper.make_attribute("dilations", [2, 2]))
    _error(model, r"node 'pw2' \(Conv\): dilations \[2, 2\] are not supported", calibration=np.zeros((1, 1, 32, 32)))
    model = export_onnx_float(mobilenet_like())
    pool = next(n for n in model.graph.node if n.name == "pool")
    pool.attribute.append(helper.make_attribute("ceil_mode", 1))
    _error(model, r"node 'pool' \(MaxPool\): ceil_mode=1 is not supported", calibration=np.zeros((1, 1, 32, 32)))


def test_float_model_needs_calibration(lenet):
    _error(export_onnx_float(lenet), r"a float model needs calibration images")
    _error(export_onnx_float(lenet), r"calibration images must be \[N, 1, 32, 32\]",
           calibration=np.zeros((2, 32, 32, 1)))


def test_float32_scale_is_formed_in_onnxruntimes_order():
    """onnxruntime forms ``float32(float32(s_x * s_w) / s_y)``; other float32 orders or a float64 product differ
    from it on some outputs, so the order in graph.Requant matters and is checked here."""
    rng = np.random.default_rng(5)
    cout = 256
    w = rng.integers(-10, 11, (cout, 32, 3, 3), dtype=np.int8)
    w_scale = rng.uniform(1e-3, 1e-2, cout).astype(np.float32)
    xs, ys = np.float32(0.0371), np.float32(0.0293)
    proto = _qlinearconv_model(w, w_scale, xs, ys, rng.integers(-300, 300, cout), 1, (1, 0, 2, 1))
    values = _run_all(proto, rng.uniform(-4, 4, (32, 32, 9, 7)).astype(np.float32))
    graph = import_onnx(proto)
    node = graph.nodes[0]
    expected = _nhwc(values["y"])
    np.testing.assert_array_equal(run_graph(graph, _nhwc(values["xq"])), expected)
    acc = conv2d_acc(_nhwc(values["xq"]), node.weights, node.bias, node.input_spec.zero_point, node.stride,
                     node.padding).astype(np.float32)
    others = {"s_x * (s_w / s_y)": xs * (w_scale / ys), "(s_x / s_y) * s_w": (xs / ys) * w_scale,
              "float64": (np.float64(xs) * w_scale / np.float64(ys)).astype(np.float32)}
    for what, scale in others.items():
        out = np.clip(np.rint(acc * scale.astype(np.float32)) + node.requant.zero_point, -128, 127)
        assert np.any(out != expected), f"{what} should differ from onnxruntime somewhere on this seed"


def _qoperator_gap_matmul_model(rng, c=16, hw=(6, 5), classes=7, gap_scale=0.05, gap_zp=-20):
    """Hand-written QOperator: QLinearConv, QLinearGlobalAveragePool (same quantization in and out), Flatten,
    QLinearMatMul (per-column weight scales)."""
    t = {"xs": np.float32(0.04), "xz": np.int8(-3), "w": rng.integers(-127, 128, (c, 3, 3, 3), dtype=np.int8),
         "ws": rng.uniform(2e-3, 6e-3, c).astype(np.float32), "wz": np.zeros(c, np.int8),
         "ys": np.float32(0.05), "yz": np.int8(-20), "b": rng.integers(-500, 500, c).astype(np.int32),
         "m": rng.integers(-127, 128, (c, classes), dtype=np.int8),
         "ms": rng.uniform(5e-3, 2e-2, classes).astype(np.float32),
         "mz": np.zeros(classes, np.int8), "os": np.float32(0.03), "oz": np.int8(4),
         "gs": np.float32(gap_scale), "gz": np.int8(gap_zp)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["conv"],
                              name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("QLinearGlobalAveragePool", ["conv", "ys", "yz", "gs", "gz"], ["gap"], name="gap",
                              domain="com.microsoft", channels_last=0),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
             helper.make_node("QLinearMatMul", ["flat", "gs", "gz", "m", "ms", "mz", "os", "oz"], ["logits"],
                              name="classifier"),
             helper.make_node("DequantizeLinear", ["logits", "os", "oz"], ["out"], name="dequant")]
    graph = helper.make_graph(nodes, "gap_matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, *hw])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, classes])],
                              [numpy_helper.from_array(v, k) for k, v in t.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    return proto


def test_qlinear_global_average_pool_and_matmul():
    """QLinearMatMul imports exactly. onnxruntime averages in float and rounds half to even; the graph's
    AvgPool2D is TFLite's integer average (ties away from zero): they may differ by 1 LSB where the mean of the
    30 taps is an exact tie, and nowhere else."""
    rng = np.random.default_rng(SEED + 3)
    proto = _qoperator_gap_matmul_model(rng)
    graph = import_onnx(proto)
    assert [n.kind for n in graph.nodes] == ["conv2d", "avg_pool2d", "fully_connected"]
    values = _run_all(proto, rng.uniform(-4, 4, (64, 3, 6, 5)).astype(np.float32))
    ints = {k: _nhwc(v) for k, v in values.items() if v.dtype == np.int8}
    gap, fc = graph.nodes[1], graph.nodes[2]
    pooled = run_node(gap, graph, ints).reshape(ints["gap"].shape)
    sums = ints["conv"].astype(np.int64).sum(axis=(1, 2)) - 30 * gap.output.zero_point
    ties = (np.abs(sums) % 30 == 15).reshape(pooled.shape)
    assert np.any(ties) and np.array_equal(pooled[~ties], ints["gap"][~ties])
    assert np.abs(pooled.astype(np.int16) - ints["gap"]).max() <= 1
    np.testing.assert_array_equal(run_node(fc, graph, ints), ints["logits"])


def test_qdq_result_never_quantized_names_the_node():
    t = {"s": np.float32(0.1), "z": np.int8(0), "w": np.ones((2, 1, 3, 3), np.int8), "ws": np.float32(0.01),
         "wz": np.int8(0)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dqw"),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="float_conv")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [numpy_helper.from_array(v, k) for k, v in t.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    _error(proto, r"node 'float_conv' \(Conv\): its float result is never quantized")


def test_unsupported_quantized_conv_names_the_node():
    rng = np.random.default_rng(SEED + 9)
    w = rng.integers(-127, 128, (32, 16, 3, 3), dtype=np.int8)
    proto = _qlinearconv_model(w, np.full(32, 0.01, np.float32), 0.05, 0.05, np.zeros(32), group=2)
    _error(proto, r"node 'conv' \(QLinearConv\): group=2 with 32 input and 32 output channels is not supported")
    w = rng.integers(-127, 128, (32, 32, 3, 3), dtype=np.int8)
    proto = _qlinearconv_model(w, np.full(32, 0.01, np.float32), 0.05, 0.05, np.zeros(32))
    for init in proto.graph.initializer:
        if init.name == "wz":
            init.CopyFrom(numpy_helper.from_array(np.ones(32, np.int8), "wz"))
    _error(proto, r"node 'conv' \(QLinearConv\): weight zero points must be 0")
    proto = _qlinearconv_model(w, np.full(32, 0.01, np.float32), 0.05, 0.05, np.zeros(32))
    for init in proto.graph.initializer:
        if init.name == "w":
            init.CopyFrom(numpy_helper.from_array(w.astype(np.uint8), "w"))
    _error(proto, r"node 'conv' \(QLinearConv\): weights must be a 4-D int8 constant, not uint8 4-D")


def test_qlinear_global_average_pool_with_its_own_quantization_is_exact():
    """onnxruntime's quantizer gives global average pooling its own output scale: imported as a depthwise
    convolution with weights 1 and onnxruntime's scale ``s_x / (s_y * N)``, it is exact."""
    rng = np.random.default_rng(SEED + 4)
    proto = _qoperator_gap_matmul_model(rng, gap_scale=0.0123, gap_zp=7)
    graph = import_onnx(proto)
    assert [n.kind for n in graph.nodes] == ["conv2d", "depthwise_conv2d", "fully_connected"]
    x = rng.uniform(-4, 4, (256, 3, 6, 5)).astype(np.float32)
    _check_nodes(graph, _run_all(proto, x))


@pytest.mark.parametrize("fmt", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qoperator", "qdq"])
def test_trained_mobilenet_v1_quantized_by_onnxruntime_is_bit_exact(digits, fmt, tmp_path):
    """The bundled trained MobileNet v1 (0.25, digits): batch norm, ReLU6, 13 depthwise-separable blocks, global
    average pooling (of a 1x1 map here), classifier; every int8 output identical to onnxruntime's, both forms."""
    from cnnacc.host.models import mobilenet_v1_digits_float
    calib, test = digits
    proto = _ort_quantize(export_onnx_float(mobilenet_v1_digits_float()), calib, fmt, tmp_path)
    graph = import_onnx(proto)
    kinds = [n.kind for n in graph.nodes]
    assert kinds.count("depthwise_conv2d") == 13 and kinds[-2:] == ["avg_pool2d", "fully_connected"]
    got, expected, _ = _end_to_end(proto, graph, test)
    assert np.array_equal(got, expected), f"{np.count_nonzero(got != expected)} of {got.size} outputs differ"
