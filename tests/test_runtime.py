"""The runtime: compiled programs run tile by tile in the golden backend give exactly what golden.run_graph gives,
on LeNet-5, the digits MobileNet, MobileNet v1 224 and a small MobileNet v2, with the standard memories and with
memories small enough to split rows and channels; bad input and a configuration mismatch are one-line errors."""

from dataclasses import replace

import numpy as np
import pytest

from cnnacc.config import DEFAULT_CONFIG
from cnnacc.host import golden, models
from cnnacc.host.compiler import compile_graph
from cnnacc.host.data import load_digits
from cnnacc.host.model_file import load_graph
from cnnacc.host.program import ProgramError
from cnnacc.host.quantizer import quantize
from cnnacc.host.runtime import Runtime

SEED = 2026
TINY = replace(DEFAULT_CONFIG, conv_act_depth=256, conv_weight_depth=512, conv_param_depth=2, vector_depth=128)
#: MobileNet v2's widest 1x1 layers (Cin 336 at alpha 0.35) and its classifier need more than TINY.
SMALL = replace(TINY, conv_act_depth=2048, conv_weight_depth=2048)


def _images(graph, n, seed=SEED):
    print(f"random images: seed {seed}")
    return np.random.default_rng(seed).integers(-128, 128, size=(n,) + graph.input.shape, dtype=np.int8)


def _check_exact(graph, config, x):
    program = compile_graph(graph, config)
    result = Runtime(program).run(x)
    expected = golden.run_graph(graph, x)
    assert result.outputs.dtype == np.int8
    np.testing.assert_array_equal(result.outputs, expected)
    return program, result


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, TINY], ids=["default", "tiny"])
def test_lenet5_exact(config):
    graph = models.lenet5()
    digits, _ = load_digits("test", dtype="int8")
    x = np.concatenate([digits[::100], _images(graph, 6)])
    program, result = _check_exact(graph, config, x)
    if config is TINY:
        assert sum(len(s.tiles) for s in program.steps) > len(program.steps)
    assert result.cycles == {s.name: s.cycles for s in program.steps}
    assert result.total_cycles == program.report["total_cycles"]
    assert all(0 < u <= 1 for u in result.utilization.values())


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, TINY], ids=["default", "tiny"])
def test_mobilenet_digits_exact(config):
    graph = models.mobilenet_v1_digits()
    _check_exact(graph, config, _images(graph, 4))


def test_mobilenet_v1_224_exact():
    graph = load_graph("mobilenet_v1")
    program, result = _check_exact(graph, DEFAULT_CONFIG, _images(graph, 1))
    # The standard memories cannot hold 112x112x64 maps: the big layers run in row bands.
    assert len(program.step("pw1").tiles) > 1 and len(program.step("conv1").tiles) > 1
    assert result.total_cycles > program.report["total_macs"] / DEFAULT_CONFIG.pes


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, SMALL], ids=["default", "small"])
def test_mobilenet_v2_small_exact(config):
    model = models.mobilenet_v2(alpha=0.35, resolution=48, classes=10, seed=3)
    calibration = np.random.default_rng(SEED).uniform(-1, 1, size=(2,) + model.input_shape).astype(np.float32)
    graph = quantize(model, calibration)
    program, _ = _check_exact(graph, config, _images(graph, 2))
    assert any(s.kind == "add" for s in program.steps)


def _one_line(info, *needles):
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_wrong_image_shape_and_dtype():
    graph = models.lenet5()
    runtime = Runtime(compile_graph(graph, DEFAULT_CONFIG))
    with pytest.raises(ProgramError) as info:
        runtime.run(np.zeros((2, 28, 28, 1), np.int8))
    _one_line(info, "'lenet5'", "[N, 32, 32, 1]", "[2, 28, 28, 1]")
    with pytest.raises(ProgramError) as info:
        runtime.run(np.zeros((2, 32, 32, 1), np.float32))
    _one_line(info, "int8", "float32")
    # One image without the batch axis is accepted.
    assert runtime.run(np.zeros((32, 32, 1), np.int8)).outputs.shape == (1, 10)


def test_program_for_another_configuration():
    program = compile_graph(models.lenet5(), DEFAULT_CONFIG)
    with pytest.raises(ProgramError) as info:
        Runtime(program, config=replace(DEFAULT_CONFIG, rows=16))
    _one_line(info, "compiled for configuration", "rows 8 vs 16")


def test_backends():
    program = compile_graph(models.lenet5(), DEFAULT_CONFIG)
    with pytest.raises(ProgramError) as info:
        Runtime(program, "board")
    _one_line(info, "backend 'board' needs the board's serial port", "--port")
    with pytest.raises(ProgramError) as info:
        Runtime(program, "fpga")
    _one_line(info, "unknown backend 'fpga'")


def _vector_probe(seed=5):
    """Every vector-engine case the RUN overhead depends on: depthwise with and without top-left padding,
    stride 1 and 2, add, max, windowed average and global average pooling."""
    from cnnacc.host import graph as g
    rng = np.random.default_rng(seed)
    c = 16

    def spec(name, shape, scale, zp):
        return g.TensorSpec(name, shape, scale, zp)

    def dw(name, inp, out, stride, pad):
        return g.DepthwiseConv2D(name, (inp.name,), out, weights=rng.integers(-127, 128, (1, 3, 3, c), dtype=np.int8),
                                 bias=rng.integers(-500, 500, c), weight_scales=0.01, input_spec=inp,
                                 stride=(stride, stride), padding=pad)
    x = spec("x", (12, 12, c), 0.05, 0)
    t1, t2 = spec("t1", (12, 12, c), 0.08, 3), spec("t2", (12, 12, c), 0.1, -2)
    t3, t4 = spec("t3", (6, 6, c), 0.1, -2), spec("t4", (6, 6, c), 0.1, -2)
    t5, t6 = spec("t5", (3, 3, c), 0.07, 1), spec("t6", (4, 4, c), 0.07, 1)
    t7, t8 = spec("t7", (1, 1, c), 0.1, -2), spec("t8", (10, 10, c), 0.07, 1)
    nodes = [dw("dwA", x, t1, 1, (1, 1, 1, 1)), g.Add("add", ("x", "t1"), t2),
             g.MaxPool2D("mp", ("t2",), t3, kernel=(2, 2), stride=(2, 2)),
             g.AvgPool2D("ap", ("t3",), t4, kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1)),
             dw("dwB", t4, t5, 2, (1, 1, 1, 1)), dw("dwC", t4, t6, 1, (0, 0, 0, 0)),
             g.AvgPool2D("gap", ("t2",), t7, kernel=(12, 12), stride=(1, 1)), dw("dwD", t2, t8, 1, (0, 0, 0, 0))]
    return g.Graph(x, nodes, "t5", name="vector_probe")


# The standard configuration only: every other one is a new Verilator build of the accelerator (minutes).
@pytest.mark.parametrize("case", ["lenet5", "vector_probe"])
def test_rtl_backend_exact_outputs_and_cycles(case):
    """The rtl backend (cocotb + Verilator) gives the golden outputs, and the cycle model predicts every step's
    measured cycles exactly (fused conv + pool, fully connected, every vector engine, with and without padding)."""
    if case == "lenet5":
        graph, config = models.lenet5(), DEFAULT_CONFIG
        x = load_digits("test", dtype="int8")[0][::500]
    else:
        graph, config = _vector_probe(), DEFAULT_CONFIG
        x = _images(graph, 1)
    program = compile_graph(graph, config)
    result = Runtime(program, "rtl").run(x)
    np.testing.assert_array_equal(result.outputs, golden.run_graph(graph, x))
    for cycles in result.per_image:
        assert cycles == result.model_cycles, case
    assert result.model_error() == {name: 0.0 for name in result.cycles}
