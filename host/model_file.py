"""One way in for every model a user brings: a ``.tflite`` or ``.onnx`` file, or a bundled network by name.

:func:`load_graph` returns the int8 :class:`~cnnacc.host.graph.Graph`; every failure is a
:class:`~cnnacc.host.graph.GraphError` (or ``FileNotFoundError``) whose message names the file and the reason.
"""

from pathlib import Path

import numpy as np

from .graph import GraphError

__all__ = ["BUNDLED", "load_graph", "graph_summary", "node_macs"]

#: Bundled networks, by the name the command line takes.
BUNDLED = {
    "lenet5": "LeNet-5 trained on the bundled digits (int8)",
    "mobilenet_v1_digits": "MobileNet v1 alpha 0.25 at 32x32 trained on the bundled digits (int8)",
    "mobilenet_v1": "MobileNet v1 alpha 1.0 at 224x224, seeded random weights (int8, calibrated on noise)",
    "mobilenet_v2": "MobileNet v2 alpha 1.0 at 224x224, seeded random weights (int8, calibrated on noise)",
}


def _bundled(name):
    from . import models
    if name == "lenet5":
        return models.lenet5()
    if name == "mobilenet_v1_digits":
        return models.mobilenet_v1_digits()
    from .quantizer import quantize
    model = models.mobilenet_v1() if name == "mobilenet_v1" else models.mobilenet_v2()
    calibration = np.random.default_rng(0).uniform(-1, 1, size=(4,) + model.input_shape).astype(np.float32)
    return quantize(model, calibration)


def load_graph(source, *, calibration=None):
    """The int8 graph of ``source``: a bundled name (see :data:`BUNDLED`), a ``.tflite`` file, or an ``.onnx``
    file (a float ONNX model needs ``calibration``: a ``.npy`` file or array of NCHW float images)."""
    if str(source) in BUNDLED:
        return _bundled(str(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist "
                                f"(bundled models: {', '.join(BUNDLED)})")
    try:
        return _load_file(path, calibration)
    except GraphError as exc:
        message = str(exc)
        raise type(exc)(message if str(path) in message else f"{path}: {message}") from None


def _load_file(path, calibration):
    data = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".tflite" or (suffix != ".onnx" and data[4:8] == b"TFL3"):
        from .tflite_io import import_tflite
        if calibration is not None:
            raise GraphError(f"{path}: a .tflite model is already quantized; calibration images are not used")
        return _named(import_tflite(data), path)
    if suffix == ".onnx":
        from .onnx_io import import_onnx
        if isinstance(calibration, (str, Path)):
            calibration = _load_npy(calibration)
        return _named(import_onnx(data, calibration=calibration), path)
    raise GraphError(f"{path}: unknown model format (expected a .tflite or .onnx file)")


def _load_npy(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {str(path)!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise GraphError(f"{path}: not a .npy array of calibration images ({exc})") from None


def _named(graph, path):
    if graph.name in ("graph", "model", ""):
        graph.name = path.stem
    return graph


def node_macs(node, graph):
    """Multiply-accumulates of one node (0 for pooling and add)."""
    out = node.output.shape
    if node.kind == "conv2d":
        cout, kh, kw, cin = node.weights.shape
        return out[0] * out[1] * cout * kh * kw * cin
    if node.kind == "depthwise_conv2d":
        _, kh, kw, c = node.weights.shape
        return out[0] * out[1] * c * kh * kw
    if node.kind == "fully_connected":
        return int(np.prod(node.weights.shape))
    return 0


def graph_summary(graph):
    """Rows ``(name, kind, input shape, output shape, MACs, parameters)`` and the totals."""
    rows = []
    for node in graph.nodes:
        params = 0
        if getattr(node, "weights", None) is not None:
            params = node.weights.size + node.bias.size
        rows.append((node.name, node.kind, graph.spec(node.inputs[0]).shape, node.output.shape,
                     node_macs(node, graph), params))
    return rows
