"""An ``"ecp5"``-target accelerator in RTL (cocotb + Verilator, the ``MULT18X18D`` model of sim/models/) against
the golden model, bit for bit and cycle for cycle.

The ECP5 build differs from the generic one where the numbers are made and where the pipelines are deeper: array
products from ``MULT18X18D`` blocks, LUT-split requantizer products (conv and depthwise), LUT-split add products,
and a pool engine with :func:`~cnnacc.hw.pool_engine.pool_extra_stages` more stages. One small network touches
every one of them: conv with a fused max pool, depthwise, a pointwise conv, a residual add, a standalone windowed
average pool, global average pooling and a fully connected layer. Every step's measured cycles must equal the
compiler's model for that target (the fused pool's tail and the standalone pool included).
"""

import numpy as np

from cnnacc.config import AcceleratorConfig
from cnnacc.host import golden, quantizer
from cnnacc.host.compiler import compile_graph
from cnnacc.host.float_model import (FAdd, FAvgPool2D, FConv2D, FDepthwiseConv2D, FFullyConnected, FloatModel,
                                     FMaxPool2D)
from cnnacc.host.rtl_backend import RtlBackend
from test_accelerator import _depthwise_run_served, _in_flight

SEED = 6
#: Small enough for a short Verilator build, with every engine and so every ecp5-specific path (the ULX3S build
#: itself leaves the depthwise and add engines out for lack of LUTs: boards/configs.py).
ECP5_SMALL = AcceleratorConfig(rows=4, cols=4, lanes=4, max_kernel=3, max_width=16, conv_act_depth=256,
                               conv_weight_depth=512, conv_param_depth=32, vector_depth=512, target="ecp5")


def _network(rng):
    def w(*shape):
        return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), size=shape).astype(np.float32)

    def b(n):
        return rng.normal(0.0, 0.05, size=n).astype(np.float32)

    layers = [
        FConv2D("c1", "input", "c1", weights=w(8, 3, 3, 3), bias=b(8), activation="relu", padding="same"),
        FMaxPool2D("p1", "c1", "p1"),                                        # fused behind c1
        FDepthwiseConv2D("dw", "p1", "dw", weights=w(1, 3, 3, 8), bias=b(8), activation="relu6", padding="same"),
        FConv2D("pw", "dw", "pw", weights=w(8, 1, 1, 8), bias=b(8), padding="valid"),
        FAdd("add", ("p1", "pw"), "add"),
        FAvgPool2D("ap", "add", "ap", kernel=(2, 2), stride=(2, 2), padding="same"),   # standalone, windowed
        FAvgPool2D("gap", "ap", "gap", kernel=None),
        FFullyConnected("fc", "gap", "fc", weights=w(10, 8), bias=b(10)),
    ]
    return FloatModel("input", (10, 10, 3), layers, "fc", name="ecp5_small")


def test_ecp5_target_whole_accelerator_bit_and_cycle_exact():
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    model = _network(rng)
    calibration = rng.uniform(-1, 1, size=(8, 10, 10, 3)).astype(np.float32)
    graph = quantizer.quantize(model, calibration)
    program = compile_graph(graph, ECP5_SMALL)
    kinds = [step.kind for step in program.steps]
    assert kinds.count("pool") == 2 and {"conv", "depthwise", "add"} <= set(kinds), kinds
    assert len(program.steps[0].nodes) == 2, "c1 and p1 should run fused"
    images = rng.integers(-128, 128, size=(2, 10, 10, 3), dtype=np.int8)
    out, stats = RtlBackend().run(program, images)
    ref = golden.run_graph(graph, images)
    bad = np.argwhere(out != ref)
    assert bad.size == 0, f"{len(bad)} outputs differ from golden, first at {bad[0].tolist()} (seed {SEED})"
    for step in program.steps:
        measured = {s[step.name]["cycles"] for s in stats}
        assert measured == {step.cycles}, f"step {step.name}: RTL {measured} cycles, model {step.cycles}"


def test_ecp5_target_commands_while_a_run_is_in_flight():
    # The host side of the ECP5 build: reads through the memories' extra register (read_latency 2), BUSY for what a
    # run owns, the watchdog's abort, and a rejected descriptor through the dispatcher's extra check stage.
    answers, _ = _in_flight(ECP5_SMALL)
    _depthwise_run_served(answers)
