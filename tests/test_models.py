"""The bundled networks (host/models.py), the bundled digits (host/data.py) and their accuracy."""

import numpy as np
import pytest

from cnnacc.host import golden, models
from cnnacc.host.accuracy import evaluate
from cnnacc.host.data import load_digits
from cnnacc.host.graph import GraphError
from cnnacc.host.quantizer import quantize, quantize_input


def weight_count(model):
    """Convolution/FC weights plus the classifier's bias: the published count less batch norm."""
    return sum(l.weights.size for l in model.layers if getattr(l, "weights", None) is not None) + \
        model.layers[-1].bias.size


def dequantize(q, spec):
    return (q.astype(np.float64) - spec.zero_point) * spec.scale


# --- the digits ----------------------------------------------------------------------------------------------

def test_digits_splits_and_input_rule():
    x, y = load_digits("test")
    assert x.shape == (1000, 32, 32, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 100))
    u8, _ = load_digits("test", dtype="uint8")
    i8, _ = load_digits("test", dtype="int8")
    np.testing.assert_array_equal(i8.astype(np.int16), u8.astype(np.int16) - 128)
    np.testing.assert_array_equal(x, u8.astype(np.float32) / np.float32(255))
    assert not u8[:, :2].any() and not u8[:, -2:].any()                    # the 2-pixel zero border
    cal, cal_y = load_digits("calibration", dtype="uint8")
    assert cal.shape == (256, 32, 32, 1) and set(cal_y) == set(range(10))
    # Calibration digits come from the training split: none is one of the test digits.
    test_set = {img.tobytes() for img in u8}
    assert not any(img.tobytes() in test_set for img in cal)
    with pytest.raises(ValueError, match="digits split must be one of test, calibration, not 'train'"):
        load_digits("train")
    with pytest.raises(ValueError, match="digits dtype must be"):
        load_digits("test", dtype="float64")


# --- LeNet-5 -------------------------------------------------------------------------------------------------

def test_lenet5_architecture():
    model = models.lenet5_float()
    shapes = [model.shapes[l.output] for l in model.layers]
    assert shapes == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (1, 1, 120), (1, 1, 84), (1, 1, 10)]
    assert model.parameter_count() == 61_706
    graph = models.lenet5()
    assert [n.kind for n in graph.nodes] == ["conv2d", "max_pool2d", "conv2d", "max_pool2d", "conv2d",
                                             "fully_connected", "fully_connected"]
    assert (graph.input.scale, graph.input.zero_point) == (np.float32(1 / 255), -128)


@pytest.mark.parametrize("make_float, make_graph, float_floor", [
    (models.lenet5_float, models.lenet5, 0.97),
    (models.mobilenet_v1_digits_float, models.mobilenet_v1_digits, 0.96),
], ids=["lenet5", "mobilenet_v1_digits"])
def test_accuracy_on_held_out_digits(make_float, make_graph, float_floor):
    """Deterministic given the shipped weights and digits: float above the floor, int8 within 1 point."""
    float_acc, int8_acc, count = evaluate(make_float(), make_graph())
    assert count == 1000
    assert float_acc >= float_floor, f"float accuracy {float_acc:.3f}"
    assert abs(int8_acc - float_acc) <= 0.01, f"float {float_acc:.3f}, int8 {int8_acc:.3f}"


def test_lenet5_int8_agrees_with_float_per_digit():
    model, graph = models.lenet5_float(), models.lenet5()
    x, _ = load_digits("test")
    x = x[:200]
    expected = model.forward(x).reshape(len(x), -1)
    q = golden.run_graph(graph, quantize_input(x, graph.input))
    got = dequantize(q, graph.spec("output"))
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.99
    assert np.abs(got - expected).mean() < 2 * graph.spec("output").scale


# --- MobileNet v1 ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mobilenet_224():
    model = models.mobilenet_v1()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    return model, x, quantize(model, x, input_range=(-1.0, 1.0))


def test_mobilenet_v1_full_size_architecture(mobilenet_224):
    model, _, _ = mobilenet_224
    kinds = [l.kind for l in model.layers]
    assert len(model.layers) == 29
    assert kinds.count("conv2d") == 14 and kinds.count("depthwise_conv2d") == 13
    assert kinds[-2:] == ["avg_pool2d", "fully_connected"]
    s = model.shapes
    assert (s["conv1"], s["dw1"], s["pw1"], s["dw2"], s["pw13"], s["pool"], s["fc"]) == (
        (112, 112, 32), (112, 112, 32), (112, 112, 64), (56, 56, 64), (7, 7, 1024), (1, 1, 1024), (1, 1, 1000))
    # Keras' MobileNet(alpha=1.0) has 4,253,864 parameters, of which 4 * 10,944 are batch norm.
    assert weight_count(model) == 4_253_864 - 4 * 10_944
    assert sum(l.bn.gamma.size for l in model.layers if getattr(l, "bn", None) is not None) == 10_944
    assert model.layers[0].padding == (0, 1, 0, 1)                   # TensorFlow "same" at stride 2


def test_mobilenet_v1_full_size_quantizes_and_runs(mobilenet_224):
    model, x, graph = mobilenet_224
    assert len(graph.nodes) == 29
    assert all(np.abs(n.weights.astype(np.int16)).max() <= 127 for n in graph.nodes if hasattr(n, "weights"))
    q = golden.run_graph(graph, quantize_input(x, graph.input))
    assert q.shape == (1, 1000)
    got, expected = dequantize(q, graph.spec("fc"))[0], model.forward(x).ravel()
    assert np.corrcoef(got, expected)[0, 1] > 0.99


def test_mobilenet_v1_seeded_and_parametrized():
    a, b = models.mobilenet_v1(0.25, 64, 1, 10, seed=3), models.mobilenet_v1(0.25, 64, 1, 10, seed=3)
    np.testing.assert_array_equal(a.layers[5].weights, b.layers[5].weights)
    assert not np.array_equal(a.layers[5].weights, models.mobilenet_v1(0.25, 64, 1, 10, seed=4).layers[5].weights)
    assert a.input_shape == (64, 64, 1) and a.shapes["pw13"] == (2, 2, 256) and a.shapes["fc"] == (1, 1, 10)
    x = np.random.default_rng(1).uniform(0, 1, (4, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(a.fold_batch_norm().forward(x), a.forward(x), rtol=1e-3, atol=1e-4)


def test_mobilenet_v1_digits_matches_its_recipe():
    model = models.mobilenet_v1_digits_float()
    assert model.input_shape == (32, 32, 1) and model.shapes["conv1"] == (16, 16, 8)
    assert model.shapes["pw13"] == (1, 1, 256) and model.shapes["fc"] == (1, 1, 10)


# --- MobileNet v2 ----------------------------------------------------------------------------------------------

def test_mobilenet_v2_full_size_architecture():
    model = models.mobilenet_v2()
    kinds = [l.kind for l in model.layers]
    assert kinds.count("depthwise_conv2d") == 17 and kinds.count("add") == 10
    assert model.shapes["conv_last"] == (7, 7, 1280) and model.shapes["fc"] == (1, 1, 1000)
    # Keras' MobileNetV2(alpha=1.0) has 3,538,984 parameters, of which 4 * 17,056 are batch norm.
    assert weight_count(model) == 3_538_984 - 4 * 17_056
    block = {l.name: l for l in model.layers}
    assert block["b2_project"].activation == "none" and block["b3_add"].inputs == ("b2_project", "b3_project")
    assert "b2_add" not in block                                  # stride 2: no residual


def test_mobilenet_v2_small_quantizes_and_runs_in_golden():
    model = models.mobilenet_v2(alpha=0.35, resolution=32, channels=1, classes=10, seed=5)
    rng = np.random.default_rng(6)
    calibration = rng.uniform(0, 1, (16, 32, 32, 1)).astype(np.float32)
    graph = quantize(model, calibration, input_range=(0.0, 1.0))
    adds = [n for n in graph.nodes if n.kind == "add"]
    assert len(adds) == 10 and all(a.output.scale != graph.spec(a.inputs[0]).scale for a in adds)
    x = rng.uniform(0, 1, (8, 32, 32, 1)).astype(np.float32)
    got = dequantize(golden.run_graph(graph, quantize_input(x, graph.input)), graph.spec("fc"))
    expected = model.forward(x).reshape(8, -1)
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


# --- weight files and arguments ------------------------------------------------------------------------------

def test_weights_round_trip_and_mismatch(tmp_path):
    model = models.mobilenet_v1(0.25, 32, 1, 10, seed=7)
    path = tmp_path / "w.npz"
    models.save_weights(model, path)
    loaded = models.load_weights(models.mobilenet_v1_architecture(0.25, 32, 1, 10, seed=None), path)
    x = np.random.default_rng(8).uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    with pytest.raises(GraphError, match=r"'conv1.weights' has shape \[8, 3, 3, 1\], model .* expects \[16, 3, 3, 1\]"):
        models.load_weights(models.mobilenet_v1_architecture(0.5, 32, 1, 10, seed=None), path)
    with pytest.raises(GraphError, match="no array 'c1.weights'"):
        models.load_weights(models.lenet5_architecture(), path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=0), r"alpha \(width multiplier\) must be a number in \(0, 4\], not 0"),
    (dict(alpha="1"), "alpha"),
    (dict(resolution=16), "resolution must be at least 32"),
    (dict(resolution=224.0), "resolution must be a positive integer, not 224.0"),
    (dict(channels=0), "channels must be a positive integer, not 0"),
    (dict(classes=True), "classes must be a positive integer, not True"),
    (dict(seed=-1), "seed must be a non-negative integer or None, not -1"),
])
@pytest.mark.parametrize("builder", [models.mobilenet_v1, models.mobilenet_v2], ids=["v1", "v2"])
def test_bad_arguments(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)
