"""Import and export of int8 ``.tflite`` models, without TensorFlow.

The flatbuffer schema classes of the ``tflite`` package read and (through their builder functions and
``flatbuffers``) write the files. Both directions map TFLite operators one to one onto the nodes of
:mod:`cnnacc.host.graph`, whose semantics are TFLite's, so an exported model runs in TFLite-Micro with the
golden model's results bit for bit, and imports back as the same graph.

Export
    ``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``, ``MAX_POOL_2D``, ``AVERAGE_POOL_2D``, ``ADD``.
    Explicit padding becomes ``SAME`` or ``VALID`` when it equals one of them; otherwise a ``PAD`` (which pads
    with the zero point) goes before a convolution, and a ``PADV2`` with -128 (which never wins) before a max
    pool. Average pooling counts only in-bounds taps, which no pad operator can express, so it needs SAME or
    VALID. Global average pooling is an ``AVERAGE_POOL_2D`` over the whole map (not ``MEAN``, whose integer
    rounding differs). Weights are exported per channel, except a fully connected layer marked ``per_tensor``.
    Only TFLite's default rounding exists in a ``.tflite`` file, so nodes in another rounding mode are refused.
Import
    The operators above; ``PAD``/``PADV2`` folded into the convolution or max pool they feed when the pad value
    is neutral (the input zero point, or -128 for max); ``RESHAPE`` feeding a ``FULLY_CONNECTED`` (the layer
    flattens anyway); ``QUANTIZE`` from a float32 model input and ``DEQUANTIZE`` to a float32 model output,
    which only wrap the int8 graph; ``QUANTIZE`` int8 -> int8 with identical parameters. Anything else raises
    one :class:`~cnnacc.host.graph.GraphError` naming the operator (index and name) and the reason.
    Nodes are named after the tensor they produce.
"""

import importlib
import os
import struct
from types import SimpleNamespace

import flatbuffers
import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Padding import Padding
from tflite.TensorType import TensorType

from . import graph as g

# The package's __init__ star-imports every schema module, so ``tflite.Buffer`` is the class and the module's
# builder functions (Start, AddData, ...) are shadowed; take the modules themselves.
fb = SimpleNamespace(**{name: importlib.import_module(f"tflite.{name}") for name in (
    "Buffer", "Tensor", "QuantizationParameters", "Operator", "SubGraph", "OperatorCode", "Model", "Pool2DOptions",
    "Conv2DOptions", "DepthwiseConv2DOptions", "FullyConnectedOptions", "AddOptions", "PadOptions", "PadV2Options")})

__all__ = ["export_tflite", "import_tflite"]

_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
_ACTIVATIONS = {"none": ActivationFunctionType.NONE, "relu": ActivationFunctionType.RELU,
                "relu6": ActivationFunctionType.RELU6}
_ACTIVATION_NAMES = {v: k for k, v in _ACTIVATIONS.items()}
_TYPE_NAMES = {v: k for k, v in vars(TensorType).items() if not k.startswith("_")}
_NP_TYPES = {TensorType.INT8: np.int8, TensorType.INT32: np.int32, TensorType.INT64: np.int64,
             TensorType.FLOAT32: np.float32, TensorType.UINT8: np.uint8, TensorType.INT16: np.int16}


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------

class _Writer:
    """Collects tensors, buffers and operators, then serializes them into one flatbuffer."""

    def __init__(self, batch):
        self.batch = batch
        self.tensors = []       # dicts: name, shape, type, buffer, scales, zero_points, axis
        self.buffers = [b""]    # buffer 0 is the empty buffer every tensor without data points at
        self.opcodes = []
        self.operators = []     # (opcode index, inputs, outputs, options type, options builder)
        self.index = {}

    def tensor(self, name, shape, ttype, scales=None, zero_points=None, axis=0, data=None):
        buffer = 0
        if data is not None:
            buffer = len(self.buffers)
            self.buffers.append(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
        self.tensors.append(dict(name=name, shape=[int(d) for d in shape], type=ttype, buffer=buffer,
                                 scales=scales, zero_points=zero_points, axis=axis))
        return len(self.tensors) - 1

    def activation(self, spec):
        """The index of the tensor holding activation ``spec`` (created on first use)."""
        if spec.name not in self.index:
            self.index[spec.name] = self.tensor(spec.name, (self.batch,) + spec.shape, TensorType.INT8,
                                                [spec.scale], [spec.zero_point])
        return self.index[spec.name]

    def op(self, code, inputs, outputs, options_type=BuiltinOptions.NONE, options=None):
        if code not in self.opcodes:
            self.opcodes.append(code)
        self.operators.append((self.opcodes.index(code), list(inputs), list(outputs), options_type, options))

    def finish(self, inputs, outputs, description):
        b = flatbuffers.Builder(1024)

        def int_vector(start, values):
            start(b, len(values))
            for v in reversed(values):
                b.PrependInt32(v)
            return b.EndVector()

        buffer_offsets = []
        for data in self.buffers:
            if data:
                # 16-byte alignment lets kernels read int32 bias data in place.
                b.StartVector(1, len(data), 16)
                b.head -= len(data)
                b.Bytes[b.head:b.head + len(data)] = data
                vec = b.EndVector()
            fb.Buffer.Start(b)
            if data:
                fb.Buffer.AddData(b, vec)
            buffer_offsets.append(fb.Buffer.End(b))

        tensor_offsets = []
        for t in self.tensors:
            name = b.CreateString(t["name"])
            shape = int_vector(fb.Tensor.StartShapeVector, t["shape"])
            quant = None
            if t["scales"] is not None:
                fb.QuantizationParameters.StartScaleVector(b, len(t["scales"]))
                for s in reversed(t["scales"]):
                    b.PrependFloat32(float(s))
                scales = b.EndVector()
                fb.QuantizationParameters.StartZeroPointVector(b, len(t["zero_points"]))
                for z in reversed(t["zero_points"]):
                    b.PrependInt64(int(z))
                zps = b.EndVector()
                fb.QuantizationParameters.Start(b)
                fb.QuantizationParameters.AddScale(b, scales)
                fb.QuantizationParameters.AddZeroPoint(b, zps)
                fb.QuantizationParameters.AddQuantizedDimension(b, t["axis"])
                quant = fb.QuantizationParameters.End(b)
            fb.Tensor.Start(b)
            fb.Tensor.AddShape(b, shape)
            fb.Tensor.AddType(b, t["type"])
            fb.Tensor.AddBuffer(b, t["buffer"])
            fb.Tensor.AddName(b, name)
            if quant is not None:
                fb.Tensor.AddQuantization(b, quant)
            tensor_offsets.append(fb.Tensor.End(b))

        operator_offsets = []
        for opcode_index, ins, outs, options_type, options in self.operators:
            options_offset = options(b) if options is not None else None
            ins_vec = int_vector(fb.Operator.StartInputsVector, ins)
            outs_vec = int_vector(fb.Operator.StartOutputsVector, outs)
            fb.Operator.Start(b)
            fb.Operator.AddOpcodeIndex(b, opcode_index)
            fb.Operator.AddInputs(b, ins_vec)
            fb.Operator.AddOutputs(b, outs_vec)
            if options_offset is not None:
                fb.Operator.AddBuiltinOptionsType(b, options_type)
                fb.Operator.AddBuiltinOptions(b, options_offset)
            operator_offsets.append(fb.Operator.End(b))

        def table_vector(start, offsets):
            start(b, len(offsets))
            for o in reversed(offsets):
                b.PrependUOffsetTRelative(o)
            return b.EndVector()

        tensors_vec = table_vector(fb.SubGraph.StartTensorsVector, tensor_offsets)
        operators_vec = table_vector(fb.SubGraph.StartOperatorsVector, operator_offsets)
        inputs_vec = int_vector(fb.SubGraph.StartInputsVector, inputs)
        outputs_vec = int_vector(fb.SubGraph.StartOutputsVector, outputs)
        sg_name = b.CreateString("main")
        fb.SubGraph.Start(b)
        fb.SubGraph.AddTensors(b, tensors_vec)
        fb.SubGraph.AddInputs(b, inputs_vec)
        fb.SubGraph.AddOutputs(b, outputs_vec)
        fb.SubGraph.AddOperators(b, operators_vec)
        fb.SubGraph.AddName(b, sg_name)
        subgraph = fb.SubGraph.End(b)

        opcode_offsets = []
        for code in self.opcodes:
            fb.OperatorCode.Start(b)
            # Readers older than code 127 look only at the deprecated int8 field; newer ones take the max.
            fb.OperatorCode.AddDeprecatedBuiltinCode(b, min(code, BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES))
            fb.OperatorCode.AddBuiltinCode(b, code)
            fb.OperatorCode.AddVersion(b, 1)
            opcode_offsets.append(fb.OperatorCode.End(b))

        opcodes_vec = table_vector(fb.Model.StartOperatorCodesVector, opcode_offsets)
        subgraphs_vec = table_vector(fb.Model.StartSubgraphsVector, [subgraph])
        buffers_vec = table_vector(fb.Model.StartBuffersVector, buffer_offsets)
        desc = b.CreateString(description)
        fb.Model.Start(b)
        fb.Model.AddVersion(b, 3)
        fb.Model.AddOperatorCodes(b, opcodes_vec)
        fb.Model.AddSubgraphs(b, subgraphs_vec)
        fb.Model.AddDescription(b, desc)
        fb.Model.AddBuffers(b, buffers_vec)
        b.Finish(fb.Model.End(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _padding_kind(node, in_shape, kernel, stride):
    """``Padding.VALID``/``Padding.SAME`` if the node's explicit padding is one of them, else None."""
    top, bottom, left, right = node.padding
    if (top, bottom, left, right) == (0, 0, 0, 0):
        return Padding.VALID
    same = g.same_padding(in_shape[0], kernel[0], stride[0]) + g.same_padding(in_shape[1], kernel[1], stride[1])
    if tuple(node.padding) == same:
        return Padding.SAME
    return None


def _conv_options(module, padding, stride, activation, depthwise=False):
    def build(b):
        module.Start(b)
        module.AddPadding(b, padding)
        module.AddStrideW(b, int(stride[1]))
        module.AddStrideH(b, int(stride[0]))
        if depthwise:
            module.AddDepthMultiplier(b, 1)
        module.AddFusedActivationFunction(b, activation)
        module.AddDilationWFactor(b, 1)
        module.AddDilationHFactor(b, 1)
        return module.End(b)
    return build


def _pool_options(padding, kernel, stride, activation):
    def build(b):
        fb.Pool2DOptions.Start(b)
        fb.Pool2DOptions.AddPadding(b, padding)
        fb.Pool2DOptions.AddStrideW(b, int(stride[1]))
        fb.Pool2DOptions.AddStrideH(b, int(stride[0]))
        fb.Pool2DOptions.AddFilterWidth(b, int(kernel[1]))
        fb.Pool2DOptions.AddFilterHeight(b, int(kernel[0]))
        fb.Pool2DOptions.AddFusedActivationFunction(b, activation)
        return fb.Pool2DOptions.End(b)
    return build


def _activation_code(node):
    act = node.activation if node.activation is not None else "none"
    if act not in _ACTIVATIONS:
        raise g.GraphError(f"node {node.name!r}: activation {act!r} has no TFLite equivalent")
    return _ACTIVATIONS[act]


def _export_pad(w, node, spec, padding, value):
    """A PAD (value = zero point) or PADV2 (explicit value) producing the padded copy of ``spec``."""
    top, bottom, left, right = (int(p) for p in padding)
    if min(padding) < 0:
        raise g.GraphError(f"node {node.name!r}: negative padding {tuple(padding)}")
    h, wd, c = spec.shape
    padded = w.tensor(f"{node.name}/padded", (w.batch, h + top + bottom, wd + left + right, c), TensorType.INT8,
                      [spec.scale], [spec.zero_point])
    pads = w.tensor(f"{node.name}/paddings", (4, 2), TensorType.INT32,
                    data=np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
    if value == spec.zero_point:
        def opts(b):
            fb.PadOptions.Start(b)
            return fb.PadOptions.End(b)
        w.op(BuiltinOperator.PAD, [w.activation(spec), pads], [padded], BuiltinOptions.PadOptions, opts)
    else:
        const = w.tensor(f"{node.name}/pad_value", (), TensorType.INT8, [spec.scale], [spec.zero_point],
                         data=np.array(value, np.int8))

        def opts(b):
            fb.PadV2Options.Start(b)
            return fb.PadV2Options.End(b)
        w.op(BuiltinOperator.PADV2, [w.activation(spec), pads, const], [padded], BuiltinOptions.PadV2Options, opts)
    return padded


def _export_weighted(w, graph, node):
    spec_in = graph.spec(node.inputs[0])
    if node.rounding != "double":
        raise g.GraphError(f"node {node.name!r}: rounding mode {node.rounding!r} cannot be expressed in a .tflite "
                           f"file (TFLite rounds twice)")
    if spec_in.name != node.input_spec.name or spec_in.scale != node.input_spec.scale \
            or spec_in.zero_point != node.input_spec.zero_point:
        raise g.GraphError(f"node {node.name!r}: input_spec does not describe its input tensor {spec_in.name!r}")
    scales = [float(s) for s in node.weight_scales]
    kind = node.kind
    act = _activation_code(node)
    bias_scales = [float(np.float32(spec_in.scale) * np.float32(s)) for s in scales]
    if kind == "fully_connected" and node.per_tensor:
        scales, bias_scales = scales[:1], bias_scales[:1]
    axis = 3 if kind == "depthwise_conv2d" else 0
    weights = w.tensor(f"{node.name}/weights", node.weights.shape, TensorType.INT8, scales, [0] * len(scales),
                       axis=axis, data=node.weights)
    bias = w.tensor(f"{node.name}/bias", node.bias.shape, TensorType.INT32, bias_scales, [0] * len(bias_scales),
                    data=node.bias.astype(np.int32))
    out = w.activation(node.output)
    if kind == "fully_connected":
        def opts(b):
            fb.FullyConnectedOptions.Start(b)
            fb.FullyConnectedOptions.AddFusedActivationFunction(b, act)
            fb.FullyConnectedOptions.AddKeepNumDims(b, False)
            return fb.FullyConnectedOptions.End(b)
        w.op(BuiltinOperator.FULLY_CONNECTED, [w.activation(spec_in), weights, bias], [out],
             BuiltinOptions.FullyConnectedOptions, opts)
        return
    kernel = node.weights.shape[1:3]
    x = w.activation(spec_in)
    padding = _padding_kind(node, spec_in.shape, kernel, node.stride)
    if padding is None:
        x = _export_pad(w, node, spec_in, node.padding, spec_in.zero_point)
        padding = Padding.VALID
    if kind == "conv2d":
        w.op(BuiltinOperator.CONV_2D, [x, weights, bias], [out], BuiltinOptions.Conv2DOptions,
             _conv_options(fb.Conv2DOptions, padding, node.stride, act))
    else:
        w.op(BuiltinOperator.DEPTHWISE_CONV_2D, [x, weights, bias], [out], BuiltinOptions.DepthwiseConv2DOptions,
             _conv_options(fb.DepthwiseConv2DOptions, padding, node.stride, act, depthwise=True))


def _export_pool(w, graph, node):
    spec_in = graph.spec(node.inputs[0])
    act = _activation_code(node)
    x = w.activation(spec_in)
    padding = _padding_kind(node, spec_in.shape, node.kernel, node.stride)
    if padding is None:
        if node.kind == "avg_pool2d":
            raise g.GraphError(f"node {node.name!r}: average pooling with padding {tuple(node.padding)} is neither "
                               f"SAME nor VALID, and TFLite has no other way to exclude padded taps from the count")
        x = _export_pad(w, node, spec_in, node.padding, -128)
        padding = Padding.VALID
    code = BuiltinOperator.MAX_POOL_2D if node.kind == "max_pool2d" else BuiltinOperator.AVERAGE_POOL_2D
    w.op(code, [x], [w.activation(node.output)], BuiltinOptions.Pool2DOptions,
         _pool_options(padding, node.kernel, node.stride, act))


def _export_add(w, graph, node):
    a, c = (graph.spec(n) for n in node.inputs)
    if a.shape != c.shape:
        raise g.GraphError(f"node {node.name!r}: ADD of shapes {list(a.shape)} and {list(c.shape)} (no broadcast)")
    act = _activation_code(node)

    def opts(b):
        fb.AddOptions.Start(b)
        fb.AddOptions.AddFusedActivationFunction(b, act)
        return fb.AddOptions.End(b)
    w.op(BuiltinOperator.ADD, [w.activation(a), w.activation(c)], [w.activation(node.output)],
         BuiltinOptions.AddOptions, opts)


def export_tflite(graph, batch=1):
    """Serialize ``graph`` as an int8 ``.tflite`` model.

    Parameters
    ----------
    graph : Graph
    batch : int
        The batch dimension of the model's tensors (TFLite-Micro runs one fixed shape).

    Returns
    -------
    bytes
        The flatbuffer, file identifier ``TFL3``, schema version 3.

    Raises
    ------
    GraphError
        Naming the node, when a node cannot be expressed in TFLite (a rounding mode other than TFLite's,
        average pooling with padding that is neither SAME nor VALID, broadcasting ADD).
    """
    if not (isinstance(batch, int) and batch >= 1):
        raise g.GraphError(f"batch must be a positive integer, not {batch!r}")
    w = _Writer(batch)
    inputs = [w.activation(graph.input)]
    for node in graph.nodes:
        if node.kind in ("conv2d", "depthwise_conv2d", "fully_connected"):
            _export_weighted(w, graph, node)
        elif node.kind in ("max_pool2d", "avg_pool2d"):
            _export_pool(w, graph, node)
        elif node.kind == "add":
            _export_add(w, graph, node)
        else:
            raise g.GraphError(f"node {node.name!r}: operation {node.kind!r} has no TFLite export")
    outputs = [w.activation(graph.spec(graph.output))]
    return w.finish(inputs, outputs, f"cnnacc {graph.name}")


# ----------------------------------------------------------------------------------------------------------
# import
# ----------------------------------------------------------------------------------------------------------

class _Tensor:
    """What the importer needs of one tensor of the file, read eagerly so later errors are ours."""

    def __init__(self, model, t, index):
        self.index = index
        raw = t.Name()
        self.name = raw.decode("utf-8", "replace") if raw else f"tensor{index}"
        self.shape = tuple(int(d) for d in t.ShapeAsNumpy()) if not t.ShapeIsNone() else ()
        self.type = t.Type()
        self.buffer = t.Buffer()
        q = t.Quantization()
        self.scales = None
        self.zero_points = None
        self.axis = 0
        if q is not None and not q.ScaleIsNone() and q.ScaleLength() > 0:
            self.scales = np.array(q.ScaleAsNumpy(), np.float32)
            self.zero_points = (np.array(q.ZeroPointAsNumpy(), np.int64) if not q.ZeroPointIsNone()
                                else np.zeros(len(self.scales), np.int64))
            self.axis = q.QuantizedDimension()
        self.data = None
        if self.buffer:
            if self.buffer >= model.BuffersLength():
                raise ValueError(f"tensor {self.name!r} refers to buffer {self.buffer} of {model.BuffersLength()}")
            buf = model.Buffers(self.buffer)
            if buf.Offset() > 1:
                raise ValueError(f"tensor {self.name!r}: buffers stored outside the flatbuffer are not supported")
            if not buf.DataIsNone() and buf.DataLength() > 0:
                self.data = buf.DataAsNumpy().tobytes()

    def type_name(self):
        return _TYPE_NAMES.get(self.type, f"type {self.type}")

    def array(self, dtype):
        """The constant data as an array of ``dtype`` and this tensor's shape."""
        count = int(np.prod(self.shape)) if self.shape else 1
        size = np.dtype(dtype).itemsize * count
        if self.data is None or len(self.data) != size:
            got = 0 if self.data is None else len(self.data)
            raise g.GraphError(f"tensor {self.name!r}: {got} bytes of data for shape {list(self.shape)} "
                               f"of {np.dtype(dtype).name}")
        return np.frombuffer(self.data, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(self.shape)


class _Reader:
    """Walks the operators of the one subgraph and builds graph nodes."""

    def __init__(self, model):
        self.model = model
        if model.SubgraphsLength() != 1:
            raise g.GraphError(f"the model has {model.SubgraphsLength()} subgraphs; one is supported")
        sg = model.Subgraphs(0)
        self.sg = sg
        self.tensors = [_Tensor(model, sg.Tensors(i), i) for i in range(sg.TensorsLength())]
        names = [t.name for t in self.tensors]
        for t in self.tensors:
            if names.count(t.name) > 1:
                t.name = f"{t.name}#{t.index}"
        self.opcodes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            self.opcodes.append((code, oc.CustomCode()))
        self.specs = {}        # tensor index -> TensorSpec of an int8 activation in the graph
        self.pending = {}      # tensor index -> (kind, source index, payload) for PAD/RESHAPE to fold
        self.nodes = []
        self.input_index = None

    # -- helpers -------------------------------------------------------------------------------------------
    def where(self, i, name):
        return f"operator #{i} ({name})"

    def tensor(self, idx, where):
        if not 0 <= idx < len(self.tensors):
            raise g.GraphError(f"{where}: tensor index {idx} is out of range (0..{len(self.tensors) - 1})")
        return self.tensors[idx]

    def act_spec(self, t, where, shape=None):
        """A TensorSpec for int8 activation tensor ``t`` (batch axis dropped)."""
        if t.type != TensorType.INT8:
            raise g.GraphError(f"{where}: tensor {t.name!r} is {t.type_name()}; only int8 activations are supported")
        if t.scales is None or len(t.scales) != 1:
            raise g.GraphError(f"{where}: tensor {t.name!r} needs one (per-tensor) scale and zero point")
        if len(t.shape) < 2:
            raise g.GraphError(f"{where}: tensor {t.name!r} has shape {list(t.shape)}; a batch axis is expected")
        try:
            return g.TensorSpec(t.name, t.shape[1:] if shape is None else shape, float(t.scales[0]),
                                int(t.zero_points[0]))
        except g.GraphError as exc:
            raise g.GraphError(f"{where}: {exc}") from None

    def input_of(self, idx, where):
        """The TensorSpec behind activation input ``idx``, which earlier operators (or the model) produce."""
        if idx in self.pending:
            raise g.GraphError(f"{where}: its input {self.tensors[idx].name!r} comes from a "
                               f"{self.pending[idx][0]} that cannot be folded into this operator")
        if idx not in self.specs:
            t = self.tensor(idx, where)
            if t.type != TensorType.INT8:
                raise g.GraphError(f"{where}: tensor {t.name!r} is {t.type_name()}; only int8 activations are "
                                   f"supported")
            if t.data is not None:
                raise g.GraphError(f"{where}: input {t.name!r} is a constant; only activations are supported here")
            raise g.GraphError(f"{where}: input tensor {t.name!r} is not produced by an earlier operator")
        return self.specs[idx]

    def options(self, op, module, options_type, where):
        if op.BuiltinOptionsType() != options_type:
            if op.BuiltinOptionsType() == BuiltinOptions.NONE:
                return None
            raise g.GraphError(f"{where}: unexpected builtin options type {op.BuiltinOptionsType()}")
        table = op.BuiltinOptions()
        opts = getattr(getattr(fb, module), module)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def activation(self, code, where):
        if code not in _ACTIVATION_NAMES:
            raise g.GraphError(f"{where}: fused activation {code} is not supported (none, RELU, RELU6 are)")
        return _ACTIVATION_NAMES[code]

    def weight_scales(self, t, where, axis, channels):
        if t.type != TensorType.INT8:
            raise g.GraphError(f"{where}: weights {t.name!r} are {t.type_name()}; only int8 weights are supported")
        if t.scales is None:
            raise g.GraphError(f"{where}: weights {t.name!r} have no quantization parameters")
        if np.any(t.zero_points != 0):
            raise g.GraphError(f"{where}: weights {t.name!r} have a nonzero zero point (symmetric int8 expected)")
        if len(t.scales) > 1 and (t.axis != axis or len(t.scales) != channels):
            raise g.GraphError(f"{where}: weights {t.name!r} have {len(t.scales)} scales on axis {t.axis}; "
                               f"expected {channels} on axis {axis} or one")
        if t.data is None:
            raise g.GraphError(f"{where}: weights {t.name!r} are not constant")
        return t.scales

    def bias(self, op, where, channels):
        if op.InputsLength() < 3 or op.Inputs(2) < 0:
            return None
        t = self.tensor(op.Inputs(2), where)
        if t.type != TensorType.INT32:
            raise g.GraphError(f"{where}: bias {t.name!r} is {t.type_name()}; int32 is supported")
        if t.shape != (channels,):
            raise g.GraphError(f"{where}: bias {t.name!r} has shape {list(t.shape)}, expected [{channels}]")
        if t.data is None:
            raise g.GraphError(f"{where}: bias {t.name!r} is not constant")
        return t.array(np.int32)

    def explicit_padding(self, padding_code, in_hw, kernel, stride, where):
        if padding_code == Padding.VALID:
            return (0, 0, 0, 0)
        if padding_code == Padding.SAME:
            return g.same_padding(in_hw[0], kernel[0], stride[0]) + g.same_padding(in_hw[1], kernel[1], stride[1])
        raise g.GraphError(f"{where}: padding code {padding_code} is neither SAME nor VALID")

    def fold_pad(self, idx, neutral, where):
        """The source spec and extra padding when ``idx`` is a pending PAD whose value is ``neutral``."""
        if idx not in self.pending:
            return self.input_of(idx, where), (0, 0, 0, 0)
        kind, src, payload = self.pending[idx]
        if kind == "RESHAPE":
            self.input_of(idx, where)       # raises: a reshaped tensor only feeds FULLY_CONNECTED
        pads, value = payload
        spec = self.specs[src]
        if value != neutral(spec):
            raise g.GraphError(f"{where}: its input is padded with {value}, which is not neutral here "
                               f"(expected {neutral(spec)})")
        return spec, pads

    def check_shape(self, out, computed, where):
        if tuple(out.shape[1:]) != tuple(computed):
            raise g.GraphError(f"{where}: output {out.name!r} has shape {list(out.shape[1:])} per batch item, "
                               f"but the operator computes {list(computed)}")

    # -- operators -----------------------------------------------------------------------------------------
    def conv(self, i, op, name, depthwise):
        where = self.where(i, name)
        if op.InputsLength() < 2 or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 2 or 3 inputs and 1 output")
        module = "DepthwiseConv2DOptions" if depthwise else "Conv2DOptions"
        otype = BuiltinOptions.DepthwiseConv2DOptions if depthwise else BuiltinOptions.Conv2DOptions
        opts = self.options(op, module, otype, where)
        if opts is None:
            raise g.GraphError(f"{where}: options are missing")
        if opts.DilationHFactor() != 1 or opts.DilationWFactor() != 1:
            raise g.GraphError(f"{where}: dilation {opts.DilationHFactor()}x{opts.DilationWFactor()} "
                               f"is not supported")
        spec_in, pre = self.fold_pad(op.Inputs(0), lambda s: s.zero_point, where)
        wt = self.tensor(op.Inputs(1), where)
        if len(wt.shape) != 4:
            raise g.GraphError(f"{where}: weights {wt.name!r} have shape {list(wt.shape)}; 4 dimensions expected")
        if len(spec_in.shape) != 3:
            raise g.GraphError(f"{where}: input {spec_in.name!r} is not an NHWC map")
        if depthwise:
            if wt.shape[0] != 1 or wt.shape[3] != spec_in.shape[2] or opts.DepthMultiplier() not in (0, 1):
                raise g.GraphError(f"{where}: only channel multiplier 1 is supported (weights {list(wt.shape)}, "
                                   f"input channels {spec_in.shape[2]})")
            channels, axis = wt.shape[3], 3
        else:
            if wt.shape[3] != spec_in.shape[2]:
                raise g.GraphError(f"{where}: weights expect {wt.shape[3]} input channels, the input has "
                                   f"{spec_in.shape[2]} (grouped convolution is not supported)")
            channels, axis = wt.shape[0], 0
        scales = self.weight_scales(wt, where, axis, channels)
        stride = (opts.StrideH(), opts.StrideW())
        if min(stride) < 1:
            raise g.GraphError(f"{where}: stride {stride} is not positive")
        padded_hw = (spec_in.shape[0] + pre[0] + pre[1], spec_in.shape[1] + pre[2] + pre[3])
        own = self.explicit_padding(opts.Padding(), padded_hw, wt.shape[1:3], stride, where)
        padding = tuple(a + b for a, b in zip(pre, own))
        out_t = self.tensor(op.Outputs(0), where)
        kh, kw = wt.shape[1:3]
        oh = (spec_in.shape[0] + padding[0] + padding[1] - kh) // stride[0] + 1
        ow = (spec_in.shape[1] + padding[2] + padding[3] - kw) // stride[1] + 1
        self.check_shape(out_t, (oh, ow, channels), where)
        cls = g.DepthwiseConv2D if depthwise else g.Conv2D
        return cls(name=out_t.name, inputs=(spec_in.name,), output=self.act_spec(out_t, where),
                   weights=wt.array(np.int8), bias=self.bias(op, where, channels), weight_scales=scales,
                   input_spec=spec_in, activation=self.activation(opts.FusedActivationFunction(), where),
                   stride=stride, padding=padding)

    def fully_connected(self, i, op, name):
        where = self.where(i, name)
        if op.InputsLength() < 2 or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 2 or 3 inputs and 1 output")
        opts = self.options(op, "FullyConnectedOptions", BuiltinOptions.FullyConnectedOptions, where)
        act = "none"
        if opts is not None:
            if opts.WeightsFormat() != 0:
                raise g.GraphError(f"{where}: shuffled weights format {opts.WeightsFormat()} is not supported")
            act = self.activation(opts.FusedActivationFunction(), where)
        idx = op.Inputs(0)
        if idx in self.pending and self.pending[idx][0] == "RESHAPE":
            idx = self.pending[idx][1]
        spec_in = self.input_of(idx, where)
        wt = self.tensor(op.Inputs(1), where)
        if len(wt.shape) != 2:
            raise g.GraphError(f"{where}: weights {wt.name!r} have shape {list(wt.shape)}; [Cout, Cin] expected")
        cout, cin = wt.shape
        if int(np.prod(spec_in.shape)) != cin:
            raise g.GraphError(f"{where}: input {spec_in.name!r} has {int(np.prod(spec_in.shape))} features "
                               f"per batch item, the weights expect {cin}")
        scales = self.weight_scales(wt, where, 0, cout)
        out_t = self.tensor(op.Outputs(0), where)
        if int(np.prod(out_t.shape[1:])) != cout or (opts is not None and opts.KeepNumDims() and len(out_t.shape) > 2):
            raise g.GraphError(f"{where}: output {out_t.name!r} has shape {list(out_t.shape)}; [N, {cout}] expected")
        return g.FullyConnected(name=out_t.name, inputs=(spec_in.name,), output=self.act_spec(out_t, where, (cout,)),
                                weights=wt.array(np.int8), bias=self.bias(op, where, cout), weight_scales=scales,
                                input_spec=spec_in, activation=act, per_tensor=len(scales) == 1)

    def pool(self, i, op, name, cls):
        where = self.where(i, name)
        if op.InputsLength() != 1 or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 1 input and 1 output")
        opts = self.options(op, "Pool2DOptions", BuiltinOptions.Pool2DOptions, where)
        if opts is None:
            raise g.GraphError(f"{where}: options are missing")
        if cls is g.MaxPool2D:
            spec_in, pre = self.fold_pad(op.Inputs(0), lambda s: -128, where)
        else:
            spec_in, pre = self.input_of(op.Inputs(0), where), (0, 0, 0, 0)
        if len(spec_in.shape) != 3:
            raise g.GraphError(f"{where}: input {spec_in.name!r} is not an NHWC map")
        kernel = (opts.FilterHeight(), opts.FilterWidth())
        stride = (opts.StrideH(), opts.StrideW())
        if min(kernel) < 1 or min(stride) < 1:
            raise g.GraphError(f"{where}: filter {kernel} and stride {stride} must be positive")
        padded_hw = (spec_in.shape[0] + pre[0] + pre[1], spec_in.shape[1] + pre[2] + pre[3])
        own = self.explicit_padding(opts.Padding(), padded_hw, kernel, stride, where)
        padding = tuple(a + b for a, b in zip(pre, own))
        out_t = self.tensor(op.Outputs(0), where)
        oh = (spec_in.shape[0] + padding[0] + padding[1] - kernel[0]) // stride[0] + 1
        ow = (spec_in.shape[1] + padding[2] + padding[3] - kernel[1]) // stride[1] + 1
        self.check_shape(out_t, (oh, ow, spec_in.shape[2]), where)
        return cls(name=out_t.name, inputs=(spec_in.name,), output=self.act_spec(out_t, where), kernel=kernel,
                   stride=stride, padding=padding,
                   activation=self.activation(opts.FusedActivationFunction(), where))

    def add(self, i, op, name):
        where = self.where(i, name)
        if op.InputsLength() != 2 or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 2 inputs and 1 output")
        opts = self.options(op, "AddOptions", BuiltinOptions.AddOptions, where)
        act = self.activation(opts.FusedActivationFunction(), where) if opts is not None else "none"
        a, c = (self.input_of(op.Inputs(k), where) for k in range(2))
        if a.shape != c.shape:
            raise g.GraphError(f"{where}: inputs of shapes {list(a.shape)} and {list(c.shape)} need broadcasting, "
                               f"which is not supported")
        out_t = self.tensor(op.Outputs(0), where)
        self.check_shape(out_t, a.shape, where)
        return g.Add(name=out_t.name, inputs=(a.name, c.name), output=self.act_spec(out_t, where), activation=act)

    def pad(self, i, op, name):
        where = self.where(i, name)
        if op.InputsLength() not in (2, 3) or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 2 or 3 inputs and 1 output")
        src = op.Inputs(0)
        spec = self.input_of(src, where)
        pads_t = self.tensor(op.Inputs(1), where)
        if pads_t.type not in (TensorType.INT32, TensorType.INT64) or pads_t.data is None:
            raise g.GraphError(f"{where}: paddings must be a constant int32 tensor")
        pads = pads_t.array(_NP_TYPES[pads_t.type])
        if pads.shape != (len(spec.shape) + 1, 2) or len(spec.shape) != 3:
            raise g.GraphError(f"{where}: paddings of shape {list(pads.shape)} for input {list(spec.shape)}; "
                               f"only NHWC maps are supported")
        if np.any(pads[0] != 0) or np.any(pads[3] != 0) or np.any(pads < 0):
            raise g.GraphError(f"{where}: only non-negative padding of height and width is supported")
        out_t = self.tensor(op.Outputs(0), where)
        out_spec = self.act_spec(out_t, where)
        if out_spec.scale != spec.scale or out_spec.zero_point != spec.zero_point:
            raise g.GraphError(f"{where}: output quantization differs from the input's")
        value = out_spec.zero_point
        if op.InputsLength() == 3 and op.Inputs(2) >= 0:
            v = self.tensor(op.Inputs(2), where)
            if v.type != TensorType.INT8 or v.data is None or len(v.data) != 1:
                raise g.GraphError(f"{where}: the pad value must be one constant int8")
            value = int(np.frombuffer(v.data, np.int8)[0])
        self.pending[op.Outputs(0)] = (name, src, ((int(pads[1, 0]), int(pads[1, 1]),
                                                     int(pads[2, 0]), int(pads[2, 1])), value))

    def reshape(self, i, op, name):
        where = self.where(i, name)
        if op.OutputsLength() != 1 or op.InputsLength() < 1:
            raise g.GraphError(f"{where}: expected 1 output")
        src = op.Inputs(0)
        spec = self.input_of(src, where)
        out_t = self.tensor(op.Outputs(0), where)
        if len(out_t.shape) != 2 or out_t.shape[1] != int(np.prod(spec.shape)):
            raise g.GraphError(f"{where}: only a flatten to [N, {int(np.prod(spec.shape))}] is supported, "
                               f"not {list(out_t.shape)}")
        out_spec = self.act_spec(out_t, where)
        if out_spec.scale != spec.scale or out_spec.zero_point != spec.zero_point:
            raise g.GraphError(f"{where}: output quantization differs from the input's")
        self.pending[op.Outputs(0)] = ("RESHAPE", src, None)

    def quantize(self, i, op, name, graph_inputs):
        where = self.where(i, name)
        if op.InputsLength() != 1 or op.OutputsLength() != 1:
            raise g.GraphError(f"{where}: expected 1 input and 1 output")
        src = self.tensor(op.Inputs(0), where)
        out_t = self.tensor(op.Outputs(0), where)
        out_spec = self.act_spec(out_t, where)
        if src.type == TensorType.FLOAT32 and src.index in graph_inputs and self.input_index is None \
                and not self.nodes and not self.specs:
            # QUANTIZE of the float model input: the int8 graph starts at its output.
            self.input_index = out_t.index
            self.specs[out_t.index] = out_spec
            return
        if src.type == TensorType.INT8:
            spec = self.input_of(src.index, where)
            if spec.scale == out_spec.scale and spec.zero_point == out_spec.zero_point:
                self.specs[out_t.index] = spec       # an identity: alias the tensor
                return
        raise g.GraphError(f"{where}: only QUANTIZE of the float32 model input or an int8 identity QUANTIZE is "
                           f"supported (this one maps {src.type_name()} {src.name!r} to a new int8 scale)")

    def run(self):
        sg = self.sg
        graph_inputs = [sg.Inputs(k) for k in range(sg.InputsLength())]
        graph_outputs = [sg.Outputs(k) for k in range(sg.OutputsLength())]
        if len(graph_inputs) != 1 or len(graph_outputs) != 1:
            raise g.GraphError(f"the model has {len(graph_inputs)} inputs and {len(graph_outputs)} outputs; "
                               f"one of each is supported")
        for idx in graph_inputs + graph_outputs:
            self.tensor(idx, "subgraph")
        in_t = self.tensors[graph_inputs[0]]
        if in_t.type != TensorType.FLOAT32:
            self.input_index = in_t.index
            self.specs[in_t.index] = self.act_spec(in_t, "model input")
        output_index = graph_outputs[0]
        dequantized_output = False
        n_ops = sg.OperatorsLength()
        for i in range(n_ops):
            op = sg.Operators(i)
            if not 0 <= op.OpcodeIndex() < len(self.opcodes):
                raise g.GraphError(f"operator #{i}: opcode index {op.OpcodeIndex()} is out of range")
            code, custom = self.opcodes[op.OpcodeIndex()]
            name = _OP_NAMES.get(code, f"opcode {code}")
            if code == BuiltinOperator.CUSTOM:
                name = f"CUSTOM {custom.decode('utf-8', 'replace') if custom else '?'}"
            where = self.where(i, name)
            for k in range(op.OutputsLength()):
                if op.Outputs(k) in self.specs or op.Outputs(k) in self.pending:
                    raise g.GraphError(f"{where}: output tensor {self.tensor(op.Outputs(k), where).name!r} "
                                       f"is written twice")
            try:
                node = self.operator(i, op, code, name, output_index, n_ops, graph_inputs)
            except g.GraphError as exc:
                if str(exc).startswith("operator #"):
                    raise
                raise g.GraphError(f"{where}: {exc}") from None
            if node == "dequantized":
                output_index, dequantized_output = op.Inputs(0), True
            elif node is not None:
                self.nodes.append(node)
                self.specs[op.Outputs(0)] = node.output
        return self.finish(in_t, output_index, dequantized_output)

    def operator(self, i, op, code, name, output_index, n_ops, graph_inputs):
        """Build the node of operator ``i``; None for operators folded into later ones."""
        where = self.where(i, name)
        node = None
        if code == BuiltinOperator.CONV_2D:
            node = self.conv(i, op, name, depthwise=False)
        elif code == BuiltinOperator.DEPTHWISE_CONV_2D:
            node = self.conv(i, op, name, depthwise=True)
        elif code == BuiltinOperator.FULLY_CONNECTED:
            node = self.fully_connected(i, op, name)
        elif code == BuiltinOperator.MAX_POOL_2D:
            node = self.pool(i, op, name, g.MaxPool2D)
        elif code == BuiltinOperator.AVERAGE_POOL_2D:
            node = self.pool(i, op, name, g.AvgPool2D)
        elif code == BuiltinOperator.ADD:
            node = self.add(i, op, name)
        elif code in (BuiltinOperator.PAD, BuiltinOperator.PADV2):
            self.pad(i, op, name)
        elif code == BuiltinOperator.RESHAPE:
            self.reshape(i, op, name)
        elif code == BuiltinOperator.QUANTIZE:
            self.quantize(i, op, name, graph_inputs)
        elif code == BuiltinOperator.DEQUANTIZE:
            if op.InputsLength() != 1 or op.OutputsLength() != 1 or op.Outputs(0) != output_index \
                    or i != n_ops - 1:
                raise g.GraphError(f"{where}: only a DEQUANTIZE producing the model output, as the last "
                                   f"operator, is supported")
            self.input_of(op.Inputs(0), where)
            node = "dequantized"
        else:
            raise g.GraphError(f"{where}: operator {name} is not supported (supported: CONV_2D, "
                               f"DEPTHWISE_CONV_2D, FULLY_CONNECTED, MAX_POOL_2D, AVERAGE_POOL_2D, ADD, "
                               f"and PAD/PADV2, RESHAPE, QUANTIZE, DEQUANTIZE where they can be folded)")
        return node

    def finish(self, in_t, output_index, dequantized_output):
        if self.input_index is None:
            raise g.GraphError(f"model input {in_t.name!r} is {in_t.type_name()} and no QUANTIZE makes it int8")
        if output_index in self.pending:
            raise g.GraphError(f"model output {self.tensors[output_index].name!r} comes from a "
                               f"{self.pending[output_index][0]} that feeds no operator it can fold into")
        if output_index not in self.specs:
            t = self.tensors[output_index]
            raise g.GraphError(f"model output {t.name!r} ({t.type_name()}) is not produced by a supported "
                               f"int8 operator" + ("" if not dequantized_output else " before the DEQUANTIZE"))
        out_spec = self.specs[output_index]
        if not self.nodes:
            raise g.GraphError("the model has no operator the accelerator runs")
        return g.Graph(input=self.specs[self.input_index], nodes=self.nodes, output=out_spec.name,
                       name=self.description())

    def description(self):
        raw = self.model.Description()
        text = raw.decode("utf-8", "replace") if raw else ""
        return text[len("cnnacc "):] if text.startswith("cnnacc ") else (text or "tflite")


def import_tflite(path_or_bytes):
    """Read an int8 ``.tflite`` model into a :class:`~cnnacc.host.graph.Graph`.

    Parameters
    ----------
    path_or_bytes : str, os.PathLike, bytes or bytearray
        A file, or the flatbuffer itself.

    Returns
    -------
    Graph
        Nodes named after the tensors they produce; the input without its batch axis.

    Raises
    ------
    GraphError
        One line naming the operator (``operator #i (NAME)``) and the reason, for unsupported operators, types
        or shapes; naming the source, for unreadable, malformed or truncated files.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, source = bytes(path_or_bytes), "the .tflite data"
    else:
        source = os.fspath(path_or_bytes)
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise g.GraphError(f"cannot read {source}: {exc.strerror or exc}") from None
    if len(data) < 8 or not fb.Model.Model.ModelBufferHasIdentifier(data, 0):
        raise g.GraphError(f"{source} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = fb.Model.Model.GetRootAs(data, 0)
        reader = _Reader(model)
        return reader.run()
    except g.GraphError as exc:
        raise g.GraphError(f"{source}: {exc}") from None
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeError, AttributeError) as exc:
        raise g.GraphError(f"{source} is malformed or truncated ({type(exc).__name__}: {exc})") from None
