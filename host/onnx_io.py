"""ONNX import into the quantized graph (host/graph.py), and float export for checking graph semantics.

:func:`import_onnx` reads three forms of model:

QOperator (int8)
    ``QuantizeLinear`` at the input, ``QLinearConv`` (depthwise when ``group`` equals the channel count),
    ``QGemm``/``QLinearMatMul`` for fully connected layers, ``QLinearAdd``, ``MaxPool`` on int8,
    ``QLinearAveragePool``/``QLinearGlobalAveragePool`` where input and output share one quantization (TFLite's
    integer average), ``QLinearGlobalAveragePool`` with its own output quantization (a depthwise convolution
    with weights 1, exact against onnxruntime), ``Flatten``/``Reshape`` before a fully connected layer,
    ``DequantizeLinear`` at the output.
QDQ (int8)
    ``DequantizeLinear -> Conv/Gemm/MatMul/Add/pool [-> Relu/Clip] -> QuantizeLinear`` chains, each fused into one
    graph node, exactly as onnxruntime fuses them before running.
float
    ``Conv``/``BatchNormalization``/``Relu``/``Clip``/``MaxPool``/``AveragePool``/``GlobalAveragePool``/``Gemm``/
    ``MatMul``/``Add``/``Flatten``/``Reshape`` in NCHW, converted to a :class:`FloatModel` (NHWC, TFLite weight
    layouts) and quantized by :func:`cnnacc.host.quantizer.quantize` on calibration images.

Layouts: ONNX is NCHW, the graph is NHWC, so the graph input has shape ``(H, W, C)``; convolution weights are
transposed to ``[Cout, KH, KW, Cin]`` (depthwise ``[1, KH, KW, C]``), and a fully connected layer after a flatten
gets its weight columns permuted from NCHW flatten order to NHWC flatten order. ONNX ``pads``
``[top, left, bottom, right]`` become the graph's ``(top, bottom, left, right)``; ``auto_pad`` SAME_UPPER equals
TensorFlow's SAME, SAME_LOWER puts the odd extra row/column first.

Rounding: int8 models (QOperator, QDQ) are imported with requantization rounding ``"float32"``, the arithmetic
onnxruntime's ``QLinearConv``/``QGemm``/``QLinearMatMul`` use (``rint(float32(acc) * float32(s_x * s_w / s_y))``,
the scale formed in float32 in that order), so the golden model reproduces onnxruntime's int8 outputs bit for
bit. The hardware rounds with TFLite's integer rules ("double"/"single"); pass ``rounding=`` to import with those.
``QLinearAdd`` and average pooling are computed in float by onnxruntime; the graph keeps TFLite's integer rules
for them, so models using them can differ from onnxruntime by one step on a few elements (average pooling: where
the mean is an exact .5 tie). A QDQ model is exact where onnxruntime fuses each ``DequantizeLinear -> op ->
QuantizeLinear`` group into its int8 kernels; groups it leaves in float (a quantized tensor with two consumers,
some depthwise convolutions, adds) can differ by a step, because the import always fuses.

Every rejection is one :class:`OnnxImportError` line naming the node (name and op type) and the reason.
"""

import os
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import float_model as fm
from . import graph as g

__all__ = ["OnnxImportError", "import_onnx", "onnx_to_float_model", "export_onnx_float", "load_onnx"]

_MS = "com.microsoft"
_ACT_DTYPES = {np.dtype(np.int8)}


class OnnxImportError(g.GraphError):
    """An ONNX model the importer cannot represent; the message names the node and the reason."""


# --- loading -------------------------------------------------------------------------------------------------

def load_onnx(model):
    """A checked :class:`onnx.ModelProto` from a path, the bytes of a file, or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(model), "ONNX bytes")
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise OnnxImportError(f"cannot read ONNX file {os.fspath(model)!r}: {exc.strerror}") from None
        proto = _parse(data, f"ONNX file {os.fspath(model)!r}")
    else:
        raise OnnxImportError(f"import_onnx needs a path, bytes or onnx.ModelProto, not {type(model).__name__}")
    if not proto.graph.node:
        raise OnnxImportError("malformed ONNX model: the graph has no nodes")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise OnnxImportError(f"malformed ONNX model: {first}") from None
    return proto


def _parse(data, what):
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:   # protobuf raises its own DecodeError, not a subclass of anything useful
        raise OnnxImportError(f"malformed {what}: not an ONNX protobuf ({type(exc).__name__}: {exc})") from None
    if not proto.HasField("graph"):
        raise OnnxImportError(f"malformed {what}: no graph in it")
    return proto


def _node_label(node):
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _graph_input(proto):
    """The single float input: its name and static ``(C, H, W)``."""
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxImportError(f"the model must have exactly one input, not {len(inputs)}")
    vi = inputs[0]
    ttype = vi.type.tensor_type
    if ttype.elem_type != TensorProto.FLOAT:
        raise OnnxImportError(f"input {vi.name!r}: dtype {TensorProto.DataType.Name(ttype.elem_type)} is not "
                              f"supported (the model input must be float32)")
    dims = ttype.shape.dim
    if len(dims) != 4:
        raise OnnxImportError(f"input {vi.name!r}: must be a 4-D NCHW image batch, not {len(dims)}-D")
    chw = []
    for axis, d in zip("CHW", dims[1:]):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise OnnxImportError(f"input {vi.name!r}: dynamic shape on axis {axis} "
                                  f"({d.dim_param or '?'}); only the batch axis may be dynamic")
        chw.append(int(d.dim_value))
    return vi.name, tuple(chw)


def _initializers(proto):
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return consts


def _consumers(proto):
    count = {}
    for node in proto.graph.node:
        for name in node.input:
            if name:
                count[name] = count.get(name, 0) + 1
    for out in proto.graph.output:
        count[out.name] = count.get(out.name, 0) + 1
    return count


def _form(proto):
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearGlobalAveragePool",
              "QLinearAveragePool"}:
        return "qoperator"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    return "float"


# --- geometry shared by all forms ----------------------------------------------------------------------------

def _spatial(node, attrs, in_hw, kernel, what):
    """``(stride, padding)`` in the graph's convention from ONNX conv/pool attributes."""
    label = _node_label(node)
    if any(int(d) != 1 for d in attrs.get("dilations", [1, 1])):
        raise OnnxImportError(f"{label}: dilations {list(attrs['dilations'])} are not supported")
    stride = tuple(int(s) for s in attrs.get("strides", [1, 1]))
    if len(stride) != 2 or min(stride) < 1:
        raise OnnxImportError(f"{label}: strides must be two positive integers, not {list(stride)}")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad == "NOTSET":
        pads = [int(p) for p in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or min(pads) < 0:
            raise OnnxImportError(f"{label}: pads must be 4 non-negative integers, not {pads}")
        top, left, bottom, right = pads
        padding = (top, bottom, left, right)
    elif auto_pad == "VALID":
        padding = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        ph = g.same_padding(in_hw[0], kernel[0], stride[0])
        pw = g.same_padding(in_hw[1], kernel[1], stride[1])
        if auto_pad == "SAME_LOWER":   # the odd extra row/column goes before, not after
            ph, pw = ph[::-1], pw[::-1]
        padding = ph + pw
    else:
        raise OnnxImportError(f"{label}: auto_pad {auto_pad!r} is not supported")
    if what == "pool":
        if int(attrs.get("ceil_mode", 0)) != 0:
            raise OnnxImportError(f"{label}: ceil_mode=1 is not supported")
        if int(attrs.get("storage_order", 0)) != 0:
            raise OnnxImportError(f"{label}: storage_order=1 is not supported")
    out = [(in_hw[i] + padding[2 * i] + padding[2 * i + 1] - kernel[i]) // stride[i] + 1 for i in range(2)]
    if min(out) <= 0:
        raise OnnxImportError(f"{label}: a {kernel[0]}x{kernel[1]} window does not fit a {in_hw[0]}x{in_hw[1]} input")
    return stride, padding, tuple(out)


def _pool_kernel(node, attrs):
    kernel = tuple(int(k) for k in attrs.get("kernel_shape", []))
    if len(kernel) != 2:
        raise OnnxImportError(f"{_node_label(node)}: kernel_shape must have 2 dimensions")
    return kernel


def _nchw_columns_to_nhwc(weights, chw):
    """FC weight ``[Cout, C*H*W]`` whose columns follow NCHW flatten order -> NHWC flatten order."""
    c, h, w = chw
    return weights.reshape(weights.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(weights.shape[0], -1)


def _flat_size(layout):
    return int(np.prod(layout[1])) if layout[0] == "chw" else layout[1]


def _flatten_layout(node, attrs, layout, consts):
    """Layout after Flatten/Reshape of a tensor: ``("flat", F, chw_or_None)``; reject anything but a flatten."""
    label = _node_label(node)
    size = _flat_size(layout)
    if node.op_type == "Flatten":
        if int(attrs.get("axis", 1)) != 1:
            raise OnnxImportError(f"{label}: only axis=1 (keep the batch axis) is supported")
    else:
        if len(node.input) < 2 or node.input[1] not in consts:
            raise OnnxImportError(f"{label}: the target shape must be a constant")
        target = [int(d) for d in consts[node.input[1]].reshape(-1)]
        if len(target) == 4 and layout[0] == "chw" and target[1:] == list(layout[1]):
            return layout
        if len(target) != 2 or target[1] not in (-1, size) or target[0] not in (-1, 0, 1):
            raise OnnxImportError(f"{label}: only a flatten to [N, {size}] is supported, not {target}")
    if layout[0] == "flat":
        return layout
    return ("flat", size, layout[1])


def _activation_of(node, consts, attrs):
    """"relu" or "relu6" for a Relu or Clip node, else an error."""
    if node.op_type == "Relu":
        return "relu"
    lo, hi = attrs.get("min"), attrs.get("max")
    if len(node.input) > 1 and node.input[1]:
        lo = _scalar(node, consts, node.input[1], "min")
    if len(node.input) > 2 and node.input[2]:
        hi = _scalar(node, consts, node.input[2], "max")
    if lo == 0.0 and (hi is None or np.isinf(hi)):
        return "relu"
    if lo == 0.0 and hi == 6.0:
        return "relu6"
    raise OnnxImportError(f"{_node_label(node)}: only Clip(0, 6) and Clip(0, inf) are supported, "
                          f"not Clip({lo}, {hi})")


def _scalar(node, consts, name, what):
    if name not in consts:
        raise OnnxImportError(f"{_node_label(node)}: {what} must be a constant")
    v = consts[name]
    if v.size != 1:
        raise OnnxImportError(f"{_node_label(node)}: {what} must be a scalar, not shape {list(v.shape)}")
    return float(v.reshape(-1)[0])


# --- int8 models (QOperator and QDQ) --------------------------------------------------------------------------

class _QTensor:
    """An int8 activation: the graph tensor it is, its TensorSpec, and its ONNX layout."""

    def __init__(self, name, spec, layout):
        self.name, self.spec, self.layout = name, spec, layout


class _DQConst:
    """A dequantized constant (QDQ weights or bias)."""

    def __init__(self, values, scale, zero_point, axis):
        self.values, self.scale, self.zero_point, self.axis = values, scale, zero_point, axis


class _Pending:
    """A float result in a QDQ model, waiting for the QuantizeLinear that makes it an int8 node."""

    def __init__(self, node, kind, build, layout):
        self.node, self.kind, self.build, self.layout = node, kind, build, layout
        self.activation = "none"


class _QuantImporter:
    def __init__(self, proto, rounding):
        self.proto = proto
        self.rounding = rounding
        self.consts = _initializers(proto)
        self.input_name, self.input_chw = _graph_input(proto)
        self.consumers = _consumers(proto)
        self.q = {}          # ONNX name -> _QTensor (int8 activations)
        self.dq = {}         # ONNX name -> _QTensor or _DQConst (QDQ dequantized values)
        self.pending = {}    # ONNX name -> _Pending
        self.nodes = []
        self.graph_input = None

    # helpers
    def qparams(self, node, scale_name, zp_name, what, per_channel=False):
        label = _node_label(node)
        if scale_name not in self.consts:
            raise OnnxImportError(f"{label}: {what} scale {scale_name!r} must be a constant")
        scale = np.asarray(self.consts[scale_name])
        if scale.dtype != np.float32:
            raise OnnxImportError(f"{label}: {what} scale must be float32, not {scale.dtype}")
        if zp_name and zp_name not in self.consts:
            raise OnnxImportError(f"{label}: {what} zero point {zp_name!r} must be a constant")
        zp = np.asarray(self.consts[zp_name]) if zp_name else np.zeros(scale.shape, np.uint8)
        if not per_channel and (scale.size != 1 or zp.size != 1):
            raise OnnxImportError(f"{label}: {what} must be quantized per tensor, not per channel")
        return scale.reshape(-1), zp

    def act_spec(self, node, name, scale, zp, shape, what):
        label = _node_label(node)
        if zp.dtype not in _ACT_DTYPES:
            raise OnnxImportError(f"{label}: {what} has dtype {zp.dtype}; only int8 activations (QInt8) are "
                                  f"supported")
        try:
            return g.TensorSpec(name, shape, float(scale[0]), int(zp.reshape(-1)[0]))
        except g.GraphError as exc:
            raise OnnxImportError(f"{label}: {exc}") from None

    def activation(self, node, name):
        if name in self.q:
            return self.q[name]
        if name == self.input_name:
            raise OnnxImportError(f"{_node_label(node)}: reads the float input directly; quantize it first")
        if name in self.consts:
            raise OnnxImportError(f"{_node_label(node)}: constant operand {name!r} is not supported here "
                                  f"(only activations)")
        raise OnnxImportError(f"{_node_label(node)}: input {name!r} is not an int8 activation the importer "
                              f"knows (produced by an unsupported pattern)")

    def check_input(self, node, x, scale, zp):
        """A node's stated input quantization must equal the producer's."""
        if float(np.float32(scale[0])) != x.spec.scale or int(zp.reshape(-1)[0]) != x.spec.zero_point:
            raise OnnxImportError(f"{_node_label(node)}: input quantization ({float(scale[0])}, "
                                  f"{int(zp.reshape(-1)[0])}) differs from its producer's ({x.spec.scale}, "
                                  f"{x.spec.zero_point})")

    def add_node(self, node, graph_node, layout):
        self.nodes.append(graph_node)
        self.q[graph_node.output.name] = _QTensor(graph_node.output.name, graph_node.output, layout)

    # weighted layers: one emitter for both forms
    def emit_conv(self, node, out_name, x, w, w_scale, w_zp, bias, y_scale, y_zp, activation="none"):
        label = _node_label(node)
        attrs = _attrs(node)
        if x.layout[0] != "chw":
            raise OnnxImportError(f"{label}: convolution of a flattened tensor")
        if w.dtype != np.int8 or w.ndim != 4:
            raise OnnxImportError(f"{label}: weights must be a 4-D int8 constant, not {w.dtype} {w.ndim}-D")
        self.check_weight_zp(node, w_zp)
        c, h, wd = x.layout[1]
        group = int(attrs.get("group", 1))
        cout, cin_g, kh, kw = w.shape
        if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != (kh, kw):
            raise OnnxImportError(f"{label}: kernel_shape {list(attrs['kernel_shape'])} does not match the "
                                  f"weights {list(w.shape)}")
        stride, padding, (oh, ow) = _spatial(node, attrs, (h, wd), (kh, kw), "conv")
        out = self.act_spec(node, out_name, y_scale, y_zp, (oh, ow, cout), "output")
        common = dict(bias=self.bias(node, bias, cout), weight_scales=self.weight_scales(node, w_scale, cout),
                      input_spec=x.spec, activation=activation, rounding=self.rounding, stride=stride,
                      padding=padding)
        name = node.name or out_name
        try:
            if group == 1:
                if cin_g != c:
                    raise OnnxImportError(f"{label}: weights expect {cin_g} input channels, the input has {c}")
                gnode = g.Conv2D(name, (x.name,), out, weights=np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
                                 **common)
            elif group == c and cout == c and cin_g == 1:
                gnode = g.DepthwiseConv2D(name, (x.name,), out,
                                          weights=np.ascontiguousarray(w.transpose(1, 2, 3, 0)), **common)
            else:
                raise OnnxImportError(f"{label}: group={group} with {c} input and {cout} output channels is not "
                                      f"supported (only 1, or depthwise with channel multiplier 1)")
        except OnnxImportError:
            raise
        except g.GraphError as exc:
            raise OnnxImportError(f"{label}: {exc}") from None
        self.add_node(node, gnode, ("chw", (cout, oh, ow)))

    def emit_fc(self, node, out_name, x, w, w_scale, w_zp, bias, y_scale, y_zp, activation="none"):
        """``w`` is ``[Cout, Cin]`` with columns in the ONNX (NCHW flatten) order of ``x``."""
        label = _node_label(node)
        if w.dtype != np.int8 or w.ndim != 2:
            raise OnnxImportError(f"{label}: weights must be a 2-D int8 constant, not {w.dtype} {w.ndim}-D")
        self.check_weight_zp(node, w_zp)
        if x.layout[0] == "chw" and x.layout[1][1:] != (1, 1):
            raise OnnxImportError(f"{label}: a fully connected layer needs a flattened input (Flatten/Reshape)")
        size = _flat_size(x.layout)
        if w.shape[1] != size:
            raise OnnxImportError(f"{label}: weights expect {w.shape[1]} inputs, the input has {size}")
        chw = x.layout[2] if x.layout[0] == "flat" else x.layout[1]
        if chw is not None:
            w = _nchw_columns_to_nhwc(w, chw)
        cout = w.shape[0]
        # The golden model's fully connected output is [N, Cout], as the quantizer declares it.
        out = self.act_spec(node, out_name, y_scale, y_zp, (cout,), "output")
        try:
            gnode = g.FullyConnected(node.name or out_name, (x.name,), out, weights=np.ascontiguousarray(w),
                                     bias=self.bias(node, bias, cout),
                                     weight_scales=self.weight_scales(node, w_scale, cout), input_spec=x.spec,
                                     activation=activation, rounding=self.rounding)
        except g.GraphError as exc:
            raise OnnxImportError(f"{label}: {exc}") from None
        self.add_node(node, gnode, ("flat", cout, None))

    def emit_pool(self, node, out_name, x, kind, y_scale=None, y_zp=None, global_pool=False):
        label = _node_label(node)
        attrs = _attrs(node)
        if x.layout[0] != "chw":
            raise OnnxImportError(f"{label}: pooling of a flattened tensor")
        c, h, w = x.layout[1]
        if global_pool:
            kernel, stride, padding, (oh, ow) = (h, w), (h, w), (0, 0, 0, 0), (1, 1)
        else:
            kernel = _pool_kernel(node, attrs)
            stride, padding, (oh, ow) = _spatial(node, attrs, (h, w), kernel, "pool")
        if kind == "avg" and any(padding) and int(attrs.get("count_include_pad", 0)) != 0:
            raise OnnxImportError(f"{label}: count_include_pad=1 with padding is not supported (the average "
                                  f"counts in-bounds taps only)")
        if y_scale is not None:
            if float(np.float32(y_scale[0])) != x.spec.scale or int(y_zp.reshape(-1)[0]) != x.spec.zero_point:
                if global_pool and kind == "avg":
                    self.emit_rescaled_global_average(node, out_name, x, y_scale, y_zp)
                    return
                raise OnnxImportError(f"{label}: output quantization ({float(y_scale[0])}, "
                                      f"{int(y_zp.reshape(-1)[0])}) differs from the input's ({x.spec.scale}, "
                                      f"{x.spec.zero_point}); integer pooling has no rescale")
        out = g.TensorSpec(out_name, (oh, ow, c), x.spec.scale, x.spec.zero_point)
        cls = g.MaxPool2D if kind == "max" else g.AvgPool2D
        gnode = cls(node.name or out_name, (x.name,), out, kernel=kernel, stride=stride, padding=padding)
        self.add_node(node, gnode, ("chw", (c, oh, ow)))

    def emit_rescaled_global_average(self, node, out_name, x, y_scale, y_zp):
        """Global average pooling whose output has its own quantization, as a depthwise convolution.

        The kernel covers the map with weights 1 and weight scale ``1/N`` (N = H*W taps): the accumulator is
        ``sum(x - zp_x)``, as in onnxruntime's QLinearGlobalAveragePool, which requantizes it with the float32
        scale ``s_x / (s_y * N)``; that scale replaces the generic ``s_x * s_w / s_y`` so that rounding "float32"
        reproduces onnxruntime exactly.
        """
        c, h, w = x.layout[1]
        taps = h * w
        out = self.act_spec(node, out_name, y_scale, y_zp, (1, 1, c), "output")
        try:
            gnode = g.DepthwiseConv2D(node.name or out_name, (x.name,), out, weights=np.ones((1, h, w, c), np.int8),
                                      bias=np.zeros(c, np.int32),
                                      weight_scales=np.full(c, np.float32(1.0) / np.float32(taps), np.float32),
                                      input_spec=x.spec, rounding=self.rounding)
        except g.GraphError as exc:
            raise OnnxImportError(f"{_node_label(node)}: {exc}") from None
        scale = np.float32(x.spec.scale) / (np.float32(out.scale) * np.float32(taps))
        gnode.requant = replace(gnode.requant, float_scale=np.full(c, scale, np.float32))
        self.add_node(node, gnode, ("chw", (c, 1, 1)))

    def emit_add(self, node, out_name, a, b, y_scale, y_zp, activation="none"):
        label = _node_label(node)
        if a.layout != b.layout:
            raise OnnxImportError(f"{label}: the two inputs have different shapes {a.layout[1]} and {b.layout[1]}")
        if a.layout[0] != "chw":
            raise OnnxImportError(f"{label}: add of flattened tensors is not supported")
        c, h, w = a.layout[1]
        out = self.act_spec(node, out_name, y_scale, y_zp, (h, w, c), "output")
        gnode = g.Add(node.name or out_name, (a.name, b.name), out, activation=activation)
        self.add_node(node, gnode, a.layout)

    def check_weight_zp(self, node, w_zp):
        if np.any(np.asarray(w_zp) != 0):
            raise OnnxImportError(f"{_node_label(node)}: weight zero points must be 0 (symmetric weights)")
        if np.asarray(w_zp).dtype != np.int8:
            raise OnnxImportError(f"{_node_label(node)}: weights must be int8 (QInt8), not "
                                  f"{np.asarray(w_zp).dtype}")

    def weight_scales(self, node, w_scale, cout):
        w_scale = np.asarray(w_scale, np.float32).reshape(-1)
        if w_scale.size not in (1, cout):
            raise OnnxImportError(f"{_node_label(node)}: {w_scale.size} weight scales for {cout} channels")
        return np.broadcast_to(w_scale, (cout,)).copy()

    def bias(self, node, bias, cout):
        if bias is None:
            return np.zeros(cout, np.int32)
        bias = np.asarray(bias)
        if bias.dtype != np.int32 or bias.shape != (cout,):
            raise OnnxImportError(f"{_node_label(node)}: bias must be {cout} int32 values, not {bias.dtype} "
                                  f"{list(bias.shape)}")
        return bias

    def const(self, node, name, what):
        if name not in self.consts:
            raise OnnxImportError(f"{_node_label(node)}: {what} {name!r} must be a constant initializer")
        return self.consts[name]

    # --- running -------------------------------------------------------------------------------------------
    def run(self):
        for node in self.proto.graph.node:
            if node.domain not in ("", "ai.onnx", _MS):
                raise OnnxImportError(f"{_node_label(node)}: operator domain {node.domain!r} is not supported")
            handler = getattr(self, "op_" + node.op_type, None)
            if handler is None:
                raise OnnxImportError(f"{_node_label(node)}: operator {node.op_type} is not supported")
            handler(node)
        if self.graph_input is None:
            raise OnnxImportError(f"input {self.input_name!r}: no QuantizeLinear makes it int8")
        for pending in self.pending.values():
            raise OnnxImportError(f"{_node_label(pending.node)}: its float result is never quantized "
                                  f"(no QuantizeLinear follows it)")
        if len(self.proto.graph.output) != 1:
            raise OnnxImportError(f"the model must have exactly one output, not {len(self.proto.graph.output)}")
        out = self.proto.graph.output[0].name
        target = self.q.get(out) or (self.dq.get(out) if isinstance(self.dq.get(out), _QTensor) else None)
        if target is None:
            raise OnnxImportError(f"output {out!r}: is not an int8 activation or its DequantizeLinear")
        if not self.nodes:
            raise OnnxImportError("the model has no operation the graph can run")
        try:
            return g.Graph(self.graph_input, self.nodes, target.name, self.proto.graph.name or "onnx")
        except g.GraphError as exc:
            raise OnnxImportError(f"graph: {exc}") from None

    def op_Constant(self, node):
        self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])

    def op_QuantizeLinear(self, node):
        label = _node_label(node)
        x, out = node.input[0], node.output[0]
        scale, zp = self.qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "", "output")
        if x == self.input_name:
            if self.graph_input is not None:
                raise OnnxImportError(f"{label}: the input is quantized twice")
            c, h, w = self.input_chw
            self.graph_input = self.act_spec(node, out, scale, zp, (h, w, c), "the input")
            self.q[out] = _QTensor(out, self.graph_input, ("chw", self.input_chw))
        elif x in self.pending:
            p = self.pending.pop(x)
            p.build(out, scale, zp, p.activation)
        elif isinstance(self.dq.get(x), _QTensor):
            src = self.dq[x]       # Q(DQ(q)) with the same parameters is the same tensor
            self.check_input(node, src, scale, zp)
            self.q[out] = src
        else:
            raise OnnxImportError(f"{label}: quantizes {x!r}, which is not the input or the result of a "
                                  f"supported operation")

    def op_DequantizeLinear(self, node):
        x, out = node.input[0], node.output[0]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if x in self.consts:
            values = self.consts[x]
            scale, zp = self.qparams(node, node.input[1], zp_name, "constant", per_channel=True)
            self.dq[out] = _DQConst(values, scale, zp, int(_attrs(node).get("axis", 1)))
            return
        src = self.activation(node, x)
        scale, zp = self.qparams(node, node.input[1], zp_name, "input")
        self.check_input(node, src, scale, zp)
        self.dq[out] = src

    # QOperator
    def op_QLinearConv(self, node):
        i = list(node.input) + [""] * (9 - len(node.input))
        x = self.activation(node, i[0])
        self.check_input(node, x, *self.qparams(node, i[1], i[2], "input"))
        w = self.const(node, i[3], "weight")
        w_scale, w_zp = self.qparams(node, i[4], i[5], "weight", per_channel=True)
        y_scale, y_zp = self.qparams(node, i[6], i[7], "output")
        bias = self.const(node, i[8], "bias") if i[8] else None
        self.emit_conv(node, node.output[0], x, w, w_scale, w_zp, bias, y_scale, y_zp)

    def op_QGemm(self, node):
        label = _node_label(node)
        attrs = _attrs(node)
        i = list(node.input) + [""] * (9 - len(node.input))
        if int(attrs.get("transA", 0)) != 0 or float(attrs.get("alpha", 1.0)) != 1.0:
            raise OnnxImportError(f"{label}: only transA=0 and alpha=1 are supported")
        if not i[7]:
            raise OnnxImportError(f"{label}: a float output (no y_scale) is not supported")
        x = self.activation(node, i[0])
        self.check_input(node, x, *self.qparams(node, i[1], i[2], "input"))
        w = self.const(node, i[3], "weight")
        if int(attrs.get("transB", 0)) == 0:
            w = w.T
        w_scale, w_zp = self.qparams(node, i[4], i[5], "weight", per_channel=True)
        bias = self.const(node, i[6], "bias") if i[6] else None
        y_scale, y_zp = self.qparams(node, i[7], i[8], "output")
        self.emit_fc(node, node.output[0], x, w, w_scale, w_zp, bias, y_scale, y_zp)

    def op_QLinearMatMul(self, node):
        i = list(node.input)
        x = self.activation(node, i[0])
        self.check_input(node, x, *self.qparams(node, i[1], i[2], "input"))
        w = self.const(node, i[3], "weight")
        if w.ndim != 2:
            raise OnnxImportError(f"{_node_label(node)}: weights must be 2-D, not {w.ndim}-D")
        w_scale, w_zp = self.qparams(node, i[4], i[5], "weight", per_channel=True)
        y_scale, y_zp = self.qparams(node, i[6], i[7], "output")
        self.emit_fc(node, node.output[0], x, w.T, w_scale, w_zp, None, y_scale, y_zp)

    def op_QLinearAdd(self, node):
        i = list(node.input)
        a, b = self.activation(node, i[0]), self.activation(node, i[3])
        self.check_input(node, a, *self.qparams(node, i[1], i[2], "input A"))
        self.check_input(node, b, *self.qparams(node, i[4], i[5], "input B"))
        y_scale, y_zp = self.qparams(node, i[6], i[7], "output")
        self.emit_add(node, node.output[0], a, b, y_scale, y_zp)

    def _qlinear_pool(self, node, kind, global_pool):
        attrs = _attrs(node)
        if int(attrs.get("channels_last", 0)) != 0:
            raise OnnxImportError(f"{_node_label(node)}: channels_last=1 is not supported")
        i = list(node.input)
        x = self.activation(node, i[0])
        self.check_input(node, x, *self.qparams(node, i[1], i[2], "input"))
        y_scale, y_zp = self.qparams(node, i[3], i[4], "output")
        self.emit_pool(node, node.output[0], x, kind, y_scale, y_zp, global_pool)

    def op_QLinearGlobalAveragePool(self, node):
        self._qlinear_pool(node, "avg", True)

    def op_QLinearAveragePool(self, node):
        self._qlinear_pool(node, "avg", False)

    def op_MaxPool(self, node):
        if len(node.output) > 1 and node.output[1]:
            raise OnnxImportError(f"{_node_label(node)}: the Indices output is not supported")
        self._pool_or_pending(node, "max", False)

    def op_AveragePool(self, node):
        self._pool_or_pending(node, "avg", False)

    def op_GlobalAveragePool(self, node):
        self._pool_or_pending(node, "avg", True)

    def _pool_or_pending(self, node, kind, global_pool):
        x_name = node.input[0]
        if x_name in self.q:       # int8 MaxPool (QOperator, or QDQ with the Q/DQ pair dropped)
            if kind != "max":
                raise OnnxImportError(f"{_node_label(node)}: average pooling on int8 needs QLinearAveragePool")
            self.emit_pool(node, node.output[0], self.q[x_name], kind)
            return
        x = self.dq_activation(node, x_name)

        def build(out, y_scale, y_zp, activation):
            if activation != "none":
                raise OnnxImportError(f"{_node_label(node)}: an activation after pooling is not supported")
            self.emit_pool(node, out, x, kind, y_scale, y_zp, global_pool)
        self.pend(node, "pool", build, x.layout)

    def dq_activation(self, node, name):
        v = self.dq.get(name)
        if isinstance(v, _QTensor):
            return v
        raise OnnxImportError(f"{_node_label(node)}: input {name!r} is not a dequantized int8 activation")

    def dq_const(self, node, name, what):
        v = self.dq.get(name)
        if isinstance(v, _DQConst):
            return v
        raise OnnxImportError(f"{_node_label(node)}: {what} {name!r} is not a dequantized int8/int32 constant")

    def pend(self, node, kind, build, layout):
        out = node.output[0]
        self.pending[out] = _Pending(node, kind, build, layout)

    def qdq_bias(self, node, name, x, w):
        if not name:
            return None
        b = self.dq_const(node, name, "bias")
        if b.values.dtype != np.int32 or np.any(np.asarray(b.zero_point) != 0):
            raise OnnxImportError(f"{_node_label(node)}: bias must be int32 with zero point 0")
        expected = np.float32(x.spec.scale) * np.asarray(w.scale, np.float32)
        if not np.allclose(np.broadcast_to(b.scale, expected.shape), expected, rtol=1e-6, atol=0):
            raise OnnxImportError(f"{_node_label(node)}: bias scale is not input scale * weight scale")
        return b.values

    # QDQ
    def op_Conv(self, node):
        i = list(node.input) + [""] * (3 - len(node.input))
        x = self.dq_activation(node, i[0])
        w = self.dq_const(node, i[1], "weight")
        if w.values.ndim != 4 or (w.scale.size > 1 and w.axis != 0):
            raise OnnxImportError(f"{_node_label(node)}: weights must be 4-D, quantized per output channel "
                                  f"(axis 0)")
        bias = self.qdq_bias(node, i[2], x, w)

        def build(out, y_scale, y_zp, activation):
            self.emit_conv(node, out, x, w.values, w.scale, w.zero_point, bias, y_scale, y_zp, activation)
        self.pend(node, "conv", build, None)

    def op_Gemm(self, node):
        label = _node_label(node)
        attrs = _attrs(node)
        if int(attrs.get("transA", 0)) != 0 or float(attrs.get("alpha", 1.0)) != 1.0 \
                or float(attrs.get("beta", 1.0)) != 1.0:
            raise OnnxImportError(f"{label}: only transA=0, alpha=1 and beta=1 are supported")
        i = list(node.input) + [""] * (3 - len(node.input))
        x = self.dq_activation(node, i[0])
        w = self.dq_const(node, i[1], "weight")
        trans_b = int(attrs.get("transB", 0))
        if w.scale.size > 1 and w.axis != (0 if trans_b else 1):
            raise OnnxImportError(f"{label}: weights must be quantized per output column")
        values = w.values if trans_b else w.values.T
        bias = self.qdq_bias(node, i[2], x, w)

        def build(out, y_scale, y_zp, activation):
            self.emit_fc(node, out, x, values, w.scale, w.zero_point, bias, y_scale, y_zp, activation)
        self.pend(node, "fc", build, None)

    def op_MatMul(self, node):
        x = self.dq_activation(node, node.input[0])
        w = self.dq_const(node, node.input[1], "weight")
        if w.values.ndim != 2 or (w.scale.size > 1 and w.axis != 1):
            raise OnnxImportError(f"{_node_label(node)}: weights must be 2-D, quantized per output column")

        def build(out, y_scale, y_zp, activation):
            self.emit_fc(node, out, x, w.values.T, w.scale, w.zero_point, None, y_scale, y_zp, activation)
        self.pend(node, "fc", build, None)

    def op_Add(self, node):
        a = self.dq_activation(node, node.input[0])
        b = self.dq_activation(node, node.input[1])

        def build(out, y_scale, y_zp, activation):
            self.emit_add(node, out, a, b, y_scale, y_zp, activation)
        self.pend(node, "add", build, None)

    def _activation_node(self, node):
        label = _node_label(node)
        x = node.input[0]
        p = self.pending.get(x)
        if p is None or p.kind == "pool" or p.activation != "none" or self.consumers.get(x, 0) != 1:
            raise OnnxImportError(f"{label}: an activation is supported only right after a Conv, Gemm, MatMul "
                                  f"or Add that has no other consumer")
        p.activation = _activation_of(node, self.consts, _attrs(node))
        self.pending[node.output[0]] = self.pending.pop(x)

    def op_Relu(self, node):
        self._activation_node(node)

    def op_Clip(self, node):
        self._activation_node(node)

    def _reshape(self, node):
        attrs = _attrs(node)
        x = node.input[0]
        if x in self.q:
            src = self.q[x]
            self.q[node.output[0]] = _QTensor(src.name, src.spec, _flatten_layout(node, attrs, src.layout,
                                                                                  self.consts))
        elif isinstance(self.dq.get(x), _QTensor):
            src = self.dq[x]
            self.dq[node.output[0]] = _QTensor(src.name, src.spec, _flatten_layout(node, attrs, src.layout,
                                                                                   self.consts))
        else:
            raise OnnxImportError(f"{_node_label(node)}: reshapes {x!r}, which is not an int8 activation")

    def op_Flatten(self, node):
        self._reshape(node)

    def op_Reshape(self, node):
        self._reshape(node)


# --- float models --------------------------------------------------------------------------------------------

class _FloatImporter:
    def __init__(self, proto):
        self.proto = proto
        self.consts = _initializers(proto)
        self.input_name, self.input_chw = _graph_input(proto)
        self.consumers = _consumers(proto)
        self.layers = []
        self.tensors = {self.input_name: (self.input_name, ("chw", self.input_chw))}   # ONNX -> (fm name, layout)
        self.producer = {}   # fm tensor name -> layer
        self.pool_inputs = {}   # max pool layer name -> the ONNX tensor it reads

    def run(self):
        for node in self.proto.graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise OnnxImportError(f"{_node_label(node)}: operator domain {node.domain!r} is not supported")
            handler = getattr(self, "op_" + node.op_type, None)
            if handler is None:
                raise OnnxImportError(f"{_node_label(node)}: operator {node.op_type} is not supported")
            handler(node)
        if len(self.proto.graph.output) != 1:
            raise OnnxImportError(f"the model must have exactly one output, not {len(self.proto.graph.output)}")
        out = self.proto.graph.output[0].name
        if out not in self.tensors:
            raise OnnxImportError(f"output {out!r} is not produced by a supported operation")
        c, h, w = self.input_chw
        try:
            return fm.FloatModel(self.input_name, (h, w, c), self.layers, self.tensors[out][0],
                                 self.proto.graph.name or "onnx")
        except g.GraphError as exc:
            raise OnnxImportError(f"model: {exc}") from None

    def act(self, node, name):
        if name not in self.tensors:
            raise OnnxImportError(f"{_node_label(node)}: input {name!r} is not produced by a supported operation")
        return self.tensors[name]

    def const(self, node, name, what):
        if name not in self.consts:
            raise OnnxImportError(f"{_node_label(node)}: {what} {name!r} must be a constant initializer")
        v = np.asarray(self.consts[name])
        if v.dtype != np.float32:
            raise OnnxImportError(f"{_node_label(node)}: {what} must be float32, not {v.dtype}")
        return v

    def add_layer(self, node, layer, layout):
        self.layers.append(layer)
        self.producer[layer.output] = layer
        self.tensors[node.output[0]] = (layer.output, layout)

    def fusable(self, node, kinds, source=None):
        """The layer producing ``source`` (the node's first input by default), if the node can fold into it."""
        source = source or node.input[0]
        name, layout = self.act(node, source)
        layer = self.producer.get(name)
        if layer is None or layer.kind not in kinds or self.consumers.get(source, 0) != 1:
            return None, layout
        return layer, layout

    def op_Constant(self, node):
        self.consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])

    def op_Identity(self, node):
        self.tensors[node.output[0]] = self.act(node, node.input[0])

    def op_Dropout(self, node):
        self.op_Identity(node)

    def op_Conv(self, node):
        label = _node_label(node)
        attrs = _attrs(node)
        name, layout = self.act(node, node.input[0])
        if layout[0] != "chw":
            raise OnnxImportError(f"{label}: convolution of a flattened tensor")
        c, h, wd = layout[1]
        w = self.const(node, node.input[1], "weight")
        if w.ndim != 4:
            raise OnnxImportError(f"{label}: only 2-D convolutions are supported")
        cout, cin_g, kh, kw = w.shape
        bias = self.const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
        stride, padding, (oh, ow) = _spatial(node, attrs, (h, wd), (kh, kw), "conv")
        group = int(attrs.get("group", 1))
        lname = node.name or node.output[0]
        if group == 1 and cin_g == c:
            layer = fm.FConv2D(lname, name, node.output[0], weights=w.transpose(0, 2, 3, 1), bias=bias,
                               stride=stride, padding=padding)
        elif group == c and cout == c and cin_g == 1:
            layer = fm.FDepthwiseConv2D(lname, name, node.output[0], weights=w.transpose(1, 2, 3, 0), bias=bias,
                                        stride=stride, padding=padding)
        else:
            raise OnnxImportError(f"{label}: group={group} with {c} input and {cout} output channels is not "
                                  f"supported (only 1, or depthwise with channel multiplier 1)")
        self.add_layer(node, layer, ("chw", (cout, oh, ow)))

    def op_BatchNormalization(self, node):
        label = _node_label(node)
        if len(node.output) > 1 and any(node.output[1:]):
            raise OnnxImportError(f"{label}: training-mode outputs are not supported")
        layer, layout = self.fusable(node, ("conv2d", "depthwise_conv2d", "fully_connected"))
        if layer is None or layer.bn is not None or layer.activation != "none":
            raise OnnxImportError(f"{label}: batch norm is supported only right after a Conv or Gemm with no "
                                  f"other consumer and no activation")
        gamma, beta, mean, var = (self.const(node, n, w) for n, w in zip(node.input[1:5],
                                                                          ("scale", "B", "mean", "var")))
        layer.bn = fm.BatchNorm(gamma, beta, mean, var, float(_attrs(node).get("epsilon", 1e-5)))
        self.rename(node, layer, layout)

    def rename(self, node, layer, layout):
        del self.producer[layer.output]
        layer.output = node.output[0]
        self.producer[layer.output] = layer
        self.tensors[node.output[0]] = (layer.output, layout)

    def _activation(self, node):
        layer, layout = self.fusable(node, ("conv2d", "depthwise_conv2d", "fully_connected", "add"))
        if layer is None and self.fold_through_max_pool(node):
            return
        if layer is None or layer.activation != "none":
            raise OnnxImportError(f"{_node_label(node)}: an activation is supported only right after a Conv, "
                                  f"Gemm, MatMul, BatchNormalization or Add with no other consumer")
        layer.activation = _activation_of(node, self.consts, _attrs(node))
        self.rename(node, layer, layout)

    def fold_through_max_pool(self, node):
        """``act(max_pool(y)) == max_pool(act(y))`` for the monotone ReLU/ReLU6, so an activation after a max pool
        (PyTorch's ``relu(max_pool2d(conv(x)))``) folds into the layer before the pool when nothing else reads
        the tensors in between."""
        pool, _ = self.fusable(node, ("max_pool2d",))
        if pool is None:
            return False
        source = self.pool_inputs[pool.name]
        layer, _ = self.fusable(node, ("conv2d", "depthwise_conv2d", "fully_connected", "add"), source)
        if layer is None or layer.activation != "none":
            return False
        layer.activation = _activation_of(node, self.consts, _attrs(node))
        self.tensors[node.output[0]] = self.tensors[node.input[0]]
        return True

    def op_Relu(self, node):
        self._activation(node)

    def op_Clip(self, node):
        self._activation(node)

    def _flatten(self, node):
        name, layout = self.act(node, node.input[0])
        self.tensors[node.output[0]] = (name, _flatten_layout(node, _attrs(node), layout, self.consts))

    def op_Flatten(self, node):
        self._flatten(node)

    def op_Reshape(self, node):
        self._flatten(node)

    def _fc(self, node, w, bias):
        """``w`` is ``[Cout, Cin]`` in ONNX column order."""
        label = _node_label(node)
        name, layout = self.act(node, node.input[0])
        if layout[0] == "chw" and layout[1][1:] != (1, 1):
            raise OnnxImportError(f"{label}: a fully connected layer needs a flattened input (Flatten/Reshape)")
        size = _flat_size(layout)
        if w.shape[1] != size:
            raise OnnxImportError(f"{label}: weights expect {w.shape[1]} inputs, the input has {size}")
        chw = layout[2] if layout[0] == "flat" else layout[1]
        if chw is not None:
            w = _nchw_columns_to_nhwc(w, chw)
        layer = fm.FFullyConnected(node.name or node.output[0], name, node.output[0], weights=w, bias=bias)
        self.add_layer(node, layer, ("flat", w.shape[0], None))

    def op_Gemm(self, node):
        attrs = _attrs(node)
        if int(attrs.get("transA", 0)) != 0 or float(attrs.get("alpha", 1.0)) != 1.0 \
                or float(attrs.get("beta", 1.0)) != 1.0:
            raise OnnxImportError(f"{_node_label(node)}: only transA=0, alpha=1 and beta=1 are supported")
        w = self.const(node, node.input[1], "weight")
        w = w if int(attrs.get("transB", 0)) else w.T
        bias = self.const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias.size == 1 and w.shape[0] > 1:
            bias = np.full(w.shape[0], bias.reshape(-1)[0], np.float32)
        self._fc(node, w, None if bias is None else bias.reshape(-1))

    def op_MatMul(self, node):
        w = self.const(node, node.input[1], "weight")
        if w.ndim != 2:
            raise OnnxImportError(f"{_node_label(node)}: weights must be 2-D, not {w.ndim}-D")
        self._fc(node, w.T, None)

    def op_Add(self, node):
        label = _node_label(node)
        a, b = node.input[0], node.input[1]
        if b in self.consts or a in self.consts:   # MatMul + Add(constant) is a fully connected bias
            act, const = (a, b) if b in self.consts else (b, a)
            layer, layout = self.fusable(node, ("fully_connected",), act)
            bias = self.const(node, const, "bias").reshape(-1)
            if layer is None or layer.bn is not None or layer.activation != "none" or np.any(layer.bias) \
                    or bias.size != layer.weights.shape[0]:
                raise OnnxImportError(f"{label}: adding a constant is supported only as the bias of a MatMul")
            layer.bias = bias
            self.rename(node, layer, layout)
            return
        (na, la), (nb, lb) = self.act(node, a), self.act(node, b)
        if la != lb or la[0] != "chw":
            raise OnnxImportError(f"{label}: add needs two NCHW inputs of the same shape")
        self.add_layer(node, fm.FAdd(node.name or node.output[0], (na, nb), node.output[0]), la)

    def _pool(self, node, kind, global_pool):
        label = _node_label(node)
        if len(node.output) > 1 and node.output[1]:
            raise OnnxImportError(f"{label}: the Indices output is not supported")
        attrs = _attrs(node)
        name, layout = self.act(node, node.input[0])
        if layout[0] != "chw":
            raise OnnxImportError(f"{label}: pooling of a flattened tensor")
        c, h, w = layout[1]
        lname = node.name or node.output[0]
        if global_pool:
            layer = fm.FAvgPool2D(lname, name, node.output[0], kernel=None)
            self.add_layer(node, layer, ("chw", (c, 1, 1)))
            return
        kernel = _pool_kernel(node, attrs)
        stride, padding, (oh, ow) = _spatial(node, attrs, (h, w), kernel, "pool")
        if kind == "avg":
            if any(padding) and int(attrs.get("count_include_pad", 0)) != 0:
                raise OnnxImportError(f"{label}: count_include_pad=1 with padding is not supported (the average "
                                      f"counts in-bounds taps only)")
            layer = fm.FAvgPool2D(lname, name, node.output[0], kernel=kernel, stride=stride, padding=padding)
        else:
            layer = fm.FMaxPool2D(lname, name, node.output[0], kernel=kernel, stride=stride, padding=padding)
            self.pool_inputs[lname] = node.input[0]
        self.add_layer(node, layer, ("chw", (c, oh, ow)))

    def op_MaxPool(self, node):
        self._pool(node, "max", False)

    def op_AveragePool(self, node):
        self._pool(node, "avg", False)

    def op_GlobalAveragePool(self, node):
        self._pool(node, "avg", True)


# --- public API ----------------------------------------------------------------------------------------------

def onnx_to_float_model(model):
    """A float ONNX model (NCHW) -> :class:`FloatModel` (NHWC, TFLite weight layouts), batch norms kept."""
    proto = load_onnx(model)
    if _form(proto) != "float":
        raise OnnxImportError("the model is quantized; use import_onnx")
    return _FloatImporter(proto).run()


def import_onnx(model, *, calibration=None, rounding=None):
    """Import an ONNX model as an int8 :class:`graph.Graph` with an NHWC input.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
    calibration : array [N, C, H, W], optional
        Real-valued calibration images in the model's own (NCHW) layout; required for a float model, which is
        quantized by :func:`cnnacc.host.quantizer.quantize`, and not accepted for an int8 model.
    rounding : str, optional
        Requantization rounding of the weighted layers; ``"float32"`` (onnxruntime's) for int8 models and the
        quantizer's default for float models unless given.
    """
    proto = load_onnx(model)
    form = _form(proto)
    if form == "float":
        float_model = _FloatImporter(proto).run()
        if calibration is None:
            raise OnnxImportError("a float model needs calibration images (calibration=[N, C, H, W])")
        images = np.asarray(calibration, np.float32)
        c, h, w = float_model.input_shape[2], *float_model.input_shape[:2]
        if images.ndim != 4 or images.shape[1:] != (c, h, w):
            raise OnnxImportError(f"calibration images must be [N, {c}, {h}, {w}] (NCHW), not "
                                  f"{list(images.shape)}")
        from .quantizer import quantize    # imported here: the quantizer is needed only for float models
        kwargs = {} if rounding is None else {"rounding": rounding}
        return quantize(float_model, images.transpose(0, 2, 3, 1), **kwargs)
    if calibration is not None:
        raise OnnxImportError("the model is already quantized; calibration images are not used")
    return _QuantImporter(proto, rounding or "float32").run()


# --- float export --------------------------------------------------------------------------------------------

def export_onnx_float(float_model, *, opset=13):
    """A :class:`FloatModel` as a float ONNX model in NCHW, batch axis ``"N"``.

    Batch norms become ``BatchNormalization`` nodes (not folded), so a run in onnxruntime checks the folding;
    activations are ``Relu``/``Clip``, padding is explicit ``pads``, a fully connected layer after a 4-D tensor
    is ``Flatten`` + ``Gemm`` with its columns permuted to NCHW flatten order, global average pooling (a kernel
    covering the whole map) is ``GlobalAveragePool``. The output is NCHW, or ``[N, F]`` after a fully connected
    layer.
    """
    if not isinstance(float_model, fm.FloatModel):
        raise g.GraphError(f"export_onnx_float needs a FloatModel, not {type(float_model).__name__}")
    nodes, inits = [], []
    rank = {float_model.input_name: 4}     # rank of each ONNX tensor: 4 (NCHW) or 2 ([N, F])

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def activation(layer, x):
        if layer.activation == "none":
            return x
        out = f"{layer.name}/{layer.activation}"
        if layer.activation == "relu":
            nodes.append(helper.make_node("Relu", [x], [out], name=out))
        else:
            nodes.append(helper.make_node("Clip", [x, init(out + "/min", np.float32(0)),
                                                  init(out + "/max", np.float32(6))], [out], name=out))
        return out

    def batch_norm(layer, x):
        if layer.bn is None:
            return x
        out, bn = f"{layer.name}/bn", layer.bn
        nodes.append(helper.make_node(
            "BatchNormalization", [x] + [init(f"{out}/{k}", getattr(bn, k)) for k in ("gamma", "beta", "mean", "var")],
            [out], name=out, epsilon=float(bn.eps)))
        return out

    onnx_name = {float_model.input_name: float_model.input_name}
    for layer in float_model.layers:
        x = onnx_name[layer.inputs[0]]
        in_shape = float_model.shapes[layer.inputs[0]]
        kind = layer.kind
        if kind in ("conv2d", "depthwise_conv2d"):
            if rank[x] != 4:
                raise g.GraphError(f"layer {layer.name!r}: convolution after a fully connected layer cannot be "
                                   f"exported")
            t, b, l, r = layer.padding
            if kind == "conv2d":
                w, group = layer.weights.transpose(0, 3, 1, 2), 1
            else:
                w, group = layer.weights.transpose(3, 0, 1, 2), layer.weights.shape[3]
            y = layer.name
            nodes.append(helper.make_node("Conv", [x, init(y + "/W", w), init(y + "/B", layer.bias)], [y], name=y,
                                          kernel_shape=list(w.shape[2:]), strides=list(layer.stride),
                                          pads=[t, l, b, r], group=group))
            y = activation(layer, batch_norm(layer, y))
            rank[y] = 4
        elif kind == "fully_connected":
            w = layer.weights
            if rank[x] == 4:
                h, wd, c = in_shape
                w = w.reshape(w.shape[0], h, wd, c).transpose(0, 3, 1, 2).reshape(w.shape[0], -1)
                flat = layer.name + "/flatten"
                nodes.append(helper.make_node("Flatten", [x], [flat], name=flat, axis=1))
                x = flat
            y = layer.name
            nodes.append(helper.make_node("Gemm", [x, init(y + "/W", w), init(y + "/B", layer.bias)], [y], name=y,
                                          transB=1))
            y = activation(layer, batch_norm(layer, y))
            rank[y] = 2
        elif kind in ("max_pool2d", "avg_pool2d"):
            if rank[x] != 4:
                raise g.GraphError(f"layer {layer.name!r}: pooling after a fully connected layer cannot be exported")
            y = layer.name
            t, b, l, r = layer.padding
            if kind == "avg_pool2d" and tuple(layer.kernel) == tuple(in_shape[:2]) and not any(layer.padding):
                nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=y))
            else:
                extra = {"count_include_pad": 0} if kind == "avg_pool2d" else {}
                nodes.append(helper.make_node("MaxPool" if kind == "max_pool2d" else "AveragePool", [x], [y], name=y,
                                              kernel_shape=list(layer.kernel), strides=list(layer.stride),
                                              pads=[t, l, b, r], **extra))
            rank[y] = 4
        elif kind == "add":
            other = onnx_name[layer.inputs[1]]
            y = layer.name
            nodes.append(helper.make_node("Add", [x, other], [y], name=y))
            y = activation(layer, y)
            rank[y] = rank[x]
        else:
            raise g.GraphError(f"layer {layer.name!r}: cannot export layer kind {kind!r}")
        onnx_name[layer.output] = y

    h, w, c = float_model.input_shape
    out = onnx_name[float_model.output]
    out_shape = float_model.shapes[float_model.output]
    if rank[out] == 4:
        dims = ["N", out_shape[2], out_shape[0], out_shape[1]]
    else:
        dims = ["N", int(np.prod(out_shape))]
    graph = helper.make_graph(
        nodes, float_model.name,
        [helper.make_tensor_value_info(float_model.input_name, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnnacc")
    model.ir_version = min(model.ir_version, 8)   # readable by older runtimes too; opset 13 needs IR >= 7
    onnx.checker.check_model(model)
    return model
