"""AddEngine against golden.add (TFLite integer ADD), bit for bit, with random stalls on every stream."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnacc.config import AcceleratorConfig
from cnnacc.host import golden
from cnnacc.host.graph import TensorSpec
from cnnacc.hw.add_engine import AddEngine, add_layer
from cnnacc.sim.amaranth_streams import stream_get, stream_put

CONFIG = AcceleratorConfig(rows=2, cols=2, lanes=4)


def run_add(layers, seed):
    """``layers``: list of (x1, x2, descriptor) with x1/x2 int8 [beats, lanes]; returns the outputs."""
    dut = AddEngine(CONFIG)
    rng = random.Random(seed)
    outputs = []

    def feeder(stream, key):
        async def feed(ctx):
            for layer in layers:
                for row in layer[key]:
                    await stream_put(ctx, stream, row.tolist(), rng=rng, bubble_prob=0.3)
        return feed

    async def control(ctx):
        for x1, _, desc in layers:
            await stream_put(ctx, dut.i_layer, desc)
            out = []
            for _ in range(len(x1)):
                out.append([int(v) for v in await stream_get(ctx, dut.o_pixels, rng=rng, stall_prob=0.3)])
            outputs.append(np.array(out, np.int8))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(feeder(dut.i_a, 0), background=True)
    sim.add_testbench(feeder(dut.i_b, 1), background=True)
    sim.run()
    return outputs


def random_case(rng, beats):
    s1, s2 = (float(np.float32(10 ** rng.uniform(-3, 0))) for _ in range(2))
    so = float(np.float32(max(s1, s2) * rng.uniform(0.6, 3.0)))
    zps = [int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128))])) for _ in range(3)]
    spec1, spec2, out = TensorSpec("a", (1,), s1, zps[0]), TensorSpec("b", (1,), s2, zps[1]), TensorSpec("y", (1,), so, zps[2])
    qmin, qmax = [(-128, 127), (zps[2], 127), (max(-128, zps[2] - 10), min(127, zps[2] + 40))][int(rng.integers(3))]
    qmin, qmax = min(qmin, qmax), max(qmin, qmax)
    x1 = rng.integers(-128, 128, size=(beats, CONFIG.lanes), dtype=np.int8)
    x2 = rng.integers(-128, 128, size=(beats, CONFIG.lanes), dtype=np.int8)
    x1[0], x2[0] = -128, 127                        # the extremes, every case
    expected = golden.add(x1, x2, spec1, spec2, out, qmin, qmax)
    return x1, x2, add_layer(spec1, spec2, out, count=beats, qmin=qmin, qmax=qmax), expected


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_add_matches_golden(seed):
    rng = np.random.default_rng(seed)
    cases = [random_case(rng, int(rng.integers(1, 24))) for _ in range(3)]
    got = run_add([c[:3] for c in cases], seed)
    for i, (case, out) in enumerate(zip(cases, got)):
        np.testing.assert_array_equal(out, case[3], err_msg=f"seed {seed}, layer {i}")


def test_equal_scales_and_saturation():
    spec = TensorSpec("a", (1,), 0.5, -128)
    out = TensorSpec("y", (1,), 0.25, 127)
    x = np.array([[127] * 4, [-128] * 4, [0, 1, 2, 3]], np.int8)
    desc = add_layer(spec, spec, out, count=3)
    got, = run_add([(x, x, desc)], 0)
    np.testing.assert_array_equal(got, golden.add(x, x, spec, spec, out))


def test_bad_scales_are_named():
    a = TensorSpec("a", (1,), 1.0, 0)
    tiny_out = TensorSpec("y", (1,), 1e-9, 0)
    with pytest.raises(ValueError, match="res_add: these scales need an ADD multiplier outside"):
        add_layer(a, a, tiny_out, count=4, name="res_add")


def test_fixed_point_helpers_match_quant():
    """The rounding divide and high multiply inside the engine, on ties, signs and extremes: ADD's outputs
    hide an LSB error of its intermediate stages, so the stages are checked on their own."""
    from amaranth.hdl import Module, Signal, signed
    from cnnacc.host import quant
    from cnnacc.hw.add_engine import _high_mul
    from cnnacc.hw.requantizer import rounding_divide

    m = Module()
    x, right, a, b = Signal(signed(32)), Signal(range(32)), Signal(signed(32)), Signal(signed(32))
    div = Signal(signed(33))
    m.d.comb += div.eq(rounding_divide(m, x, right, "t"))
    high = _high_mul(m, 1, a, b, "t")
    rng = np.random.default_rng(5)
    xs = [0, 1, -1, 2, -2, 3, -3, 5, -5, 6, -6, (1 << 31) - 1, -(1 << 31), 1 << 20, -(1 << 20)]
    xs += rng.integers(-(1 << 31), 1 << 31, size=40).tolist()
    pairs = [(v, s) for v in xs for s in (0, 1, 2, 3, 17, 30, 31)]
    products = [(v, mm) for v in xs for mm in (1 << 30, (1 << 31) - 1, 1, 1359862339)]
    bad = []

    async def bench(ctx):
        for v, s in pairs:
            ctx.set(x, v)
            ctx.set(right, s)
            if ctx.get(div) != int(quant.rounding_divide_by_pot(v, s)):
                bad.append(("divide", v, s))
        for v, mm in products:
            ctx.set(a, v)
            ctx.set(b, mm)
            await ctx.tick().repeat(2)
            if ctx.get(high) != int(quant.saturating_rounding_doubling_high_mul(v, mm)):
                bad.append(("high", v, mm))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]
