"""The post-training quantizer (host/quantizer.py): TFLite's int8 scheme, rule by rule, on small seeded models."""

import numpy as np
import pytest

from cnnacc.host import golden
from cnnacc.host.float_model import (BatchNorm, FAdd, FAvgPool2D, FConv2D, FDepthwiseConv2D, FFullyConnected,
                                     FloatModel, FMaxPool2D)
from cnnacc.host.graph import GraphError
from cnnacc.host.quantizer import quantize, quantize_input, range_to_scale_zero_point, round_half_away

SEED = 1234


def _bn(rng, n):
    return BatchNorm(rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 2, n))


def small_model(seed=SEED):
    """Every layer kind: conv+BN+ReLU6, depthwise+BN+ReLU, max pool, conv (linear), residual add, avg pool, FC."""
    rng = np.random.default_rng(seed)
    layers = [
        FConv2D("conv", "input", "conv", weights=rng.normal(0, 0.4, (8, 3, 3, 3)), bias=rng.normal(0, 0.1, 8),
                bn=_bn(rng, 8), activation="relu6", stride=(2, 2), padding="same"),
        FDepthwiseConv2D("dw", "conv", "dw", weights=rng.normal(0, 0.5, (1, 3, 3, 8)), bn=_bn(rng, 8),
                         activation="relu", padding="same"),
        FMaxPool2D("maxpool", "dw", "maxpool"),
        FConv2D("project", "maxpool", "project", weights=rng.normal(0, 0.3, (8, 1, 1, 8)),
                bias=rng.normal(0, 0.1, 8)),
        FAdd("add", ("maxpool", "project"), "add", activation="relu"),
        FAvgPool2D("gap", "add", "gap", kernel=None),
        FFullyConnected("fc", "gap", "fc", weights=rng.normal(0, 0.3, (5, 8)), bias=rng.normal(0, 0.1, 5)),
    ]
    return FloatModel("input", (12, 12, 3), layers, "fc", name="small")


def images(n=32, seed=SEED):
    return np.random.default_rng(seed + 1).uniform(-1, 1, (n, 12, 12, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def quantized():
    model = small_model()
    return model, quantize(model, images())


def test_weights_are_symmetric_int8_per_channel(quantized):
    model, graph = quantized
    folded = {layer.name: layer for layer in model.fold_batch_norm().layers}
    for node in graph.nodes:
        if node.kind not in ("conv2d", "depthwise_conv2d", "fully_connected"):
            continue
        w = folded[node.name].weights.astype(np.float64)
        assert node.weights.dtype == np.int8 and node.weights.min() >= -127 and node.weights.max() <= 127
        axis = 3 if node.kind == "depthwise_conv2d" else 0
        other = tuple(a for a in range(w.ndim) if a != axis)
        np.testing.assert_array_equal(node.weight_scales, (np.abs(w).max(axis=other) / 127).astype(np.float32))
        # Every channel uses its full range: its largest weight is +-127.
        np.testing.assert_array_equal(np.abs(node.weights.astype(np.int16)).max(axis=other), 127)
        shape = [1] * w.ndim
        shape[axis] = -1
        dequant = node.weights * node.weight_scales.astype(np.float64).reshape(shape)
        assert np.all(np.abs(dequant - w) <= node.weight_scales.reshape(shape) / 2 * (1 + 1e-6))


def test_bias_is_int32_at_input_times_weight_scale(quantized):
    model, graph = quantized
    folded = {layer.name: layer for layer in model.fold_batch_norm().layers}
    for node in graph.nodes:
        if node.kind not in ("conv2d", "depthwise_conv2d", "fully_connected"):
            continue
        scale = np.float64(np.float32(node.input_spec.scale)) * node.weight_scales.astype(np.float64)
        expected = round_half_away(folded[node.name].bias.astype(np.float64) / scale)
        assert node.bias.dtype == np.int32
        np.testing.assert_array_equal(node.bias, expected)


def test_zero_is_exact_and_range_covers_calibration(quantized):
    model, graph = quantized
    values = model.fold_batch_norm().forward(images(), keep=True)
    for name, spec in graph.tensors.items():
        # Real 0 is the integer zero point exactly; the calibrated range fits in [-128, 127] up to nudging.
        lo, hi = min(values[name].min(), 0), max(values[name].max(), 0)
        assert (-128 - spec.zero_point) * spec.scale <= lo + spec.scale
        assert (127 - spec.zero_point) * spec.scale >= hi - spec.scale
    assert range_to_scale_zero_point(0.0, 6.0) == (np.float32(6 / 255), -128)
    assert range_to_scale_zero_point(-2.0, 0.0) == (np.float32(2 / 255), 127)
    assert range_to_scale_zero_point(1.0, 2.0)[1] == -128      # widened to [0, 2]
    assert range_to_scale_zero_point(0.0, 0.0) == (np.float32(1 / 255), -128)


def test_pooling_keeps_input_quantization_and_add_has_its_own(quantized):
    _, graph = quantized
    for node in graph.nodes:
        spec_in = graph.spec(node.inputs[0])
        if node.kind in ("max_pool2d", "avg_pool2d"):
            assert (node.output.scale, node.output.zero_point) == (spec_in.scale, spec_in.zero_point)
    add = next(n for n in graph.nodes if n.kind == "add")
    values = small_model().fold_batch_norm().forward(images(), keep=True)
    assert add.output.scale == np.float32(float(values["add"].max()) / 255)   # ReLU: range [0, max]


def test_activation_clamps(quantized):
    _, graph = quantized
    nodes = {n.name: n for n in graph.nodes}
    conv = nodes["conv"]                               # ReLU6, calibrated range [0, <= 6]
    assert conv.output.zero_point == -128 and conv.requant.qmin == -128
    assert conv.requant.qmax == min(127, -128 + int(round(6 / conv.output.scale)))
    dw = nodes["dw"]                                   # ReLU
    assert (dw.requant.qmin, dw.requant.qmax) == (dw.output.zero_point, 127)
    project = nodes["project"]                         # linear
    assert (project.requant.qmin, project.requant.qmax) == (-128, 127)
    # A saturated ReLU6 layer calibrates to exactly [0, 6]: its clamp is the whole int8 range.
    rng = np.random.default_rng(SEED)
    model = FloatModel("input", (4, 4, 1), [
        FConv2D("c", "input", "c", weights=np.full((2, 1, 1, 1), 10.0), activation="relu6"),
        FConv2D("d", "c", "d", weights=rng.normal(0, 1, (2, 1, 1, 2)))], "d")
    graph = quantize(model, np.full((1, 4, 4, 1), 1.0, np.float32), input_range=(-1.0, 1.0))
    c = graph.nodes[0]
    assert (c.output.scale, c.output.zero_point) == (np.float32(6 / 255), -128)
    assert c.requant.qmax == 127


def test_batch_norm_folding_matches_unfolded_model():
    model = small_model()
    x = images(8)
    assert any(layer.bn is not None for layer in model.layers)
    np.testing.assert_allclose(model.fold_batch_norm().forward(x), model.forward(x), rtol=1e-4, atol=1e-5)


def test_int8_tracks_float(quantized):
    model, graph = quantized
    x = images(64, seed=SEED + 7)
    expected = model.forward(x).reshape(64, -1)
    q = golden.run_graph(graph, quantize_input(x, graph.input))
    out = graph.spec("fc")
    got = (q.astype(np.float64) - out.zero_point) * out.scale
    err = np.abs(got - expected)
    # Input, weight and activation rounding add up over four layers; a few output steps at most, ~1 on average.
    assert err.max() < 10 * out.scale, f"max error {err.max()} vs output scale {out.scale}"
    assert err.mean() < 1.5 * out.scale, f"mean error {err.mean()} vs output scale {out.scale}"
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.99


def test_quantize_input_rule():
    graph = quantize(small_model(), images(4), input_range=(0.0, 1.0))
    assert (graph.input.scale, graph.input.zero_point) == (np.float32(1 / 255), -128)
    pixels = np.arange(256, dtype=np.uint8)
    x = np.resize(pixels.astype(np.float32) / np.float32(255), (1, 12, 12, 3))
    np.testing.assert_array_equal(quantize_input(x, graph.input),
                                  (np.resize(pixels, (1, 12, 12, 3)).astype(np.int16) - 128).astype(np.int8))
    assert quantize_input(np.full((1, 12, 12, 3), 9.0), graph.input).max() == 127   # saturates


def test_rounding_modes_reach_the_nodes():
    model = small_model()
    for mode in ("double", "single", "float32"):
        graph = quantize(model, images(4), rounding=mode)
        assert {n.requant.mode for n in graph.nodes if hasattr(n, "requant")} == {mode}


def test_bad_arguments_name_the_problem():
    model = small_model()
    with pytest.raises(GraphError, match="rounding mode must be one of"):
        quantize(model, images(2), rounding="nearest")
    with pytest.raises(GraphError, match=r"calibration images must be a non-empty batch \[N, 12, 12, 3\]"):
        quantize(model, np.zeros((2, 10, 10, 3)))
    with pytest.raises(GraphError, match="calibration images must be a non-empty batch"):
        quantize(model, np.zeros((0, 12, 12, 3)))
    with pytest.raises(GraphError, match="NaN or infinity"):
        quantize(model, np.full((1, 12, 12, 3), np.nan))
    with pytest.raises(GraphError, match="needs a FloatModel"):
        quantize("model.onnx", images(2))
    with pytest.raises(GraphError, match="not a finite interval"):
        quantize(model, images(2), input_range=(1.0, -1.0))
    with pytest.raises(GraphError, match=r"input 'input': expected images of shape \[N, 12, 12, 3\]"):
        quantize_input(np.zeros((1, 12, 12)), quantize(model, images(2)).input)
    huge = FloatModel("input", (2, 2, 1), [
        FConv2D("big_bias", "input", "y", weights=np.full((1, 1, 1, 1), 1e-6), bias=np.array([1e6]))], "y")
    with pytest.raises(GraphError, match="layer 'big_bias': bias of channel 0 .* does not fit int32"):
        quantize(huge, np.ones((1, 2, 2, 1), np.float32))
