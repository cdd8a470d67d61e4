"""ECP5 target: the MULT18X18D wrapper's model against ``*`` (Amaranth simulator), the LUT Booth multiplier, and
the systolic array built from MULT18X18D instances (with sim/models/MULT18X18D.v on Verilator) against the generic
array: same results, one cycle more of latency, under the same bubbles and back-pressure."""

import gc
import random
import warnings
from dataclasses import replace

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from cnnacc.config import AcceleratorConfig
from cnnacc.hw.dsp_ecp5 import MULT_LATENCY, Mult18x18D
from cnnacc.hw.systolic_array import SystolicArray, array_latency, column_fifo_latency
from cnnacc.sim import tb_systolic_array as tb


def test_model_latency_and_clock_enable():
    seed = 3
    rng = random.Random(seed)
    dut = Mult18x18D(9, 8, primitive=False)
    history = []      # operands of every enabled cycle
    seen = []

    async def bench(ctx):
        for _ in range(300):
            a, b, ce = rng.randint(-256, 255), rng.randint(-128, 127), rng.random() < 0.7
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            ctx.set(dut.ce, ce)
            await ctx.tick()
            if ce:
                history.append(a * b)
                if len(history) >= MULT_LATENCY:
                    seen.append((ctx.get(dut.p), history[-MULT_LATENCY]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # After the n-th enabled edge, p holds the product of the operands of enabled edge n - MULT_LATENCY + 1.
    assert len(seen) > 150
    assert all(got == want for got, want in seen), f"seed {seed}"


@pytest.mark.parametrize("width", [1, 19, True])
def test_widths_are_checked(width):
    # The refused object was never meant to be elaborated: collect it here, with Amaranth's warning silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="a_width must be an integer from 2 to 18"):
            Mult18x18D(width, 8, primitive=False)
        gc.collect()


def test_ecp5_array_instantiates_one_block_per_pe():
    config = AcceleratorConfig(rows=2, cols=3, target="ecp5")
    text = verilog.convert(SystolicArray(config), name="systolic_array")
    assert text.count("MULT18X18D #(") == 6
    assert "REG_OUTPUT_CLK(\"CLK0\")" in text and "REG_INPUTA_CLK(\"CLK0\")" in text
    # The generic target stays free of vendor primitives.
    assert "MULT18X18D" not in verilog.convert(SystolicArray(replace(config, target="generic")),
                                               name="systolic_array")


def test_verilator_ecp5_array_matches_generic():
    seed = 21
    # A small array keeps the two Verilator builds short; every PE is the same code at any size.
    generic = AcceleratorConfig(rows=3, cols=5)
    rng = np.random.default_rng(seed)
    tiles = [(rng.integers(-127, 128, size=(k, 3), dtype=np.int8), rng.integers(-128, 128, size=(k, 5), dtype=np.int8))
             for k in rng.choice([1, 5, 16, 33], size=10)]
    # Extremes in the last tile: the widest products and their signs.
    tiles.append((np.full((20, 3), -127, np.int8), np.full((20, 5), -128, np.int8)))
    ecp5 = replace(generic, target="ecp5")
    want, _ = tb.run_rtl(generic, tiles, seed=seed, bubble=0.25, stall=0.25)
    got, _ = tb.run_rtl(ecp5, tiles, seed=seed, bubble=0.25, stall=0.25)
    np.testing.assert_array_equal(want, tb.golden_tiles(tiles), err_msg=f"seed {seed}")
    np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")
    # The ECP5 product crosses one more register, and its output FIFO's read takes column_fifo_latency where the
    # generic array's output register takes one cycle: with free-flowing streams the run takes exactly those
    # differences longer (under random stalls the shifted outputs meet another stall pattern).
    _, want_cycles = tb.run_rtl(generic, tiles, seed=seed, bubble=0, stall=0)
    _, cycles = tb.run_rtl(ecp5, tiles, seed=seed, bubble=0, stall=0)
    assert cycles == (want_cycles + array_latency(ecp5) - array_latency(generic)
                      + column_fifo_latency(ecp5) - 1)


@pytest.mark.parametrize("dsp_blocks", [False, True], ids=["lut", "dsp"])
@pytest.mark.parametrize("mode", ["double", "single"])
def test_split_product_requantizer_matches_golden(mode, dsp_blocks):
    """The ecp5 requantizer, its product from LUTs alone (a Booth multiplier, an adder tree of one level per
    stage) or from three MULT18X18D (their model) and a 15x15 LUT product: every shift at the extremes, products
    whose parts sit at the blocks' 17-bit split, and random values, bit for bit, with the latency
    :func:`requant_latency` gives that target."""
    from test_requantizer import edge_vectors, golden, random_vectors
    from cnnacc.hw.requantizer import Requantizer, requant_latency

    lanes, seed = 4, 7
    edge = edge_vectors(lanes)
    rand = random_vectors(np.random.default_rng(seed), 120, lanes)
    # Products exactly at and beside the single-rounding saturation bounds (2**32 - 1) * 2**(t-1) and
    # -(2**32 + 1) * 2**(t-1), t = 31 - shift: factored into int32 x int32.
    bounds = np.array([(983055, 4369, 30), (2, 2147483647, 30), (65536, 65536, 30), (-641, 6700417, 30),
                       (-6, 715827883, 30), (-65536, 65537, 30), (-65537, 65535, 30), (1966110, 4369, 29),
                       (983055, 4369, 29), (-1282, 6700417, 29), (-1281, 6700417, 29), (-1283, 6700417, 29)],
                      np.int64).reshape(-1, lanes, 3)
    edge = {k: np.concatenate([edge[k], v]) for k, v in
            (("acc", bounds[..., 0]), ("bias", 0 * bounds[..., 0]), ("multiplier", bounds[..., 1]),
             ("shift", bounds[..., 2]))}
    # Operands at the blocks' split (bit 17) and at the int32 bounds, every pairing, unshifted.
    split = np.array([-(1 << 31), (1 << 31) - 1, (1 << 17) - 1, 1 << 17, -(1 << 17), (1 << 17) + 1, -1, 1 << 16],
                     np.int64)
    a, b = (x.reshape(-1, lanes) for x in np.meshgrid(split, split))
    edge = {k: np.concatenate([edge[k], v]) for k, v in
            (("acc", a), ("bias", 0 * a), ("multiplier", b), ("shift", 0 * a))}
    vectors = {k: np.concatenate([edge[k], rand[k]]) for k in edge}
    zp, qmin, qmax = 3, -120, 127
    want = golden(vectors, zp, qmin, qmax, mode)
    dut = Requantizer(lanes, tag_width=10, target="ecp5", dsp_blocks=dsp_blocks, dsp_model=True)
    latency = requant_latency("ecp5")
    beats = len(want)
    got = {}

    async def bench(ctx):
        ctx.set(dut.single_rounding, mode == "single")
        ctx.set(dut.zero_point, zp)
        ctx.set(dut.qmin, qmin)
        ctx.set(dut.qmax, qmax)
        ctx.set(dut.o_data.ready, 1)
        for cycle in range(beats + latency + 1):
            if cycle < beats:
                ctx.set(dut.i_acc.valid, 1)
                ctx.set(dut.i_acc.payload, {
                    "acc": vectors["acc"][cycle].tolist(), "tag": cycle,
                    "params": [{"bias": int(vectors["bias"][cycle, j]),
                                "multiplier": int(vectors["multiplier"][cycle, j]),
                                "shift": int(vectors["shift"][cycle, j])} for j in range(lanes)]})
            else:
                ctx.set(dut.i_acc.valid, 0)
            await ctx.tick()
            if ctx.get(dut.o_data.valid):
                beat = ctx.get(dut.o_data.payload)
                # A beat offered at cycle t leaves the output register after `latency` edges.
                assert int(beat.tag) == cycle - latency + 1
                got[int(beat.tag)] = [int(v) for v in beat.data]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert sorted(got) == list(range(beats))
    np.testing.assert_array_equal(np.array([got[i] for i in range(beats)]), want, err_msg=f"mode {mode} seed {seed}")


def test_ecp5_add_engine_matches_golden(monkeypatch):
    """The add engine with LUT Booth products and split divides (target "ecp5", 16 stages): random layers,
    extremes included."""
    import test_add_engine as t
    monkeypatch.setattr(t, "CONFIG", replace(t.CONFIG, target="ecp5"))
    seed = 12
    rng = np.random.default_rng(seed)
    cases = [t.random_case(rng, int(rng.integers(4, 30))) for _ in range(4)]
    got = t.run_add([c[:3] for c in cases], seed)
    for i, (case, out) in enumerate(zip(cases, got)):
        np.testing.assert_array_equal(out, case[3], err_msg=f"seed {seed} layer {i}")


@pytest.mark.parametrize("wa, wb", [(32, 32), (9, 32), (32, 9), (12, 7), (8, 2)])
def test_lut_product_matches_multiplication(wa, wb):
    """lut_product (Booth digits of b, one adder level a stage) against Python's product: the extremes (the top
    digit negative, whose owed bit joins the root addition) and random operands, a new pair every cycle."""
    from amaranth.hdl import Module, Signal, signed
    from cnnacc.hw.dsp_ecp5 import booth_digit_count, booth_digits, lut_product, lut_product_stages

    seed = 5
    rng = random.Random(seed)
    m = Module()
    a, b, a_reg = Signal(signed(wa)), Signal(signed(wb)), Signal(signed(wa))
    digits = booth_digit_count(wb)
    neg, one, two = Signal(digits), Signal(digits), Signal(digits)
    m.d.sync += [a_reg.eq(a)] + [r.eq(v) for r, v in zip((neg, one, two), booth_digits(b))]
    product = lut_product(m, Signal(init=1), a_reg, neg, one, two, width=wa + wb, name="p")
    latency = 1 + lut_product_stages(digits)
    lo_a, hi_a, lo_b, hi_b = -(1 << wa - 1), (1 << wa - 1) - 1, -(1 << wb - 1), (1 << wb - 1) - 1
    pairs = [(x, y) for x in (lo_a, hi_a, -1, 0, 1) for y in (lo_b, hi_b, -1, 0, 1)]
    pairs += [(rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)) for _ in range(300)]
    seen = []

    async def bench(ctx):
        for i, (x, y) in enumerate(pairs + [(0, 0)] * latency):
            ctx.set(a, x)
            ctx.set(b, y)
            await ctx.tick()
            if i >= latency - 1:
                seen.append(ctx.get(product))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want = [x * y for x, y in pairs]
    assert seen[:len(want)] == want, f"seed {seed}"


def test_ecp5_pool_engine_matches_golden_and_cycle_model():
    """The pooling engine's deeper ecp5 pipeline: random layers and the rounding ties against the golden model
    (with bubbles and back-pressure), and the cycle model with its extra stages."""
    import test_pool_engine as t
    from cnnacc.host.cycles_vector import pool_cycles
    from cnnacc.hw.pool_engine import PoolMode, pool_extra_stages, pool_layer

    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=7, target="ecp5")
    assert pool_extra_stages(config) == 11 and pool_extra_stages(replace(config, target="generic")) == 0
    seed = 8
    rng = np.random.default_rng(seed)
    jobs = [t.random_job(config, rng) for _ in range(5)]
    ties = np.array([[[[1, -128], [2, -2]], [[0, 127], [0, -128]]]], np.int64)
    jobs.append((pool_layer(config, PoolMode.AVG, height=2, width=2, kernel=2, stride=1), ties))
    got, _ = t.run_amaranth(config, jobs, seed=seed, bubble=0.3, stall=0.3)
    t.check(got, jobs, f"ecp5 seed {seed}")
    for layer in [pool_layer(config, PoolMode.MAX, height=5, width=7, kernel=3, stride=1, padding=(1, 1, 1, 1)),
                  pool_layer(config, PoolMode.AVG, height=6, width=6, kernel=2, stride=2, groups=2)]:
        window = layer["window"]
        job = (layer, rng.integers(-128, 128, size=(window["groups"], window["height"], window["width"], 2)))
        got, cycles = t.run_amaranth(config, [job])
        t.check(got, [job], "ecp5 cycle model")
        assert cycles == pool_cycles(config, layer)
        # Eleven stages more, and the cycle the window generator's tap bounds take to load.
        assert cycles == pool_cycles(replace(config, target="generic"), layer) + 11 + 1


def test_ecp5_depthwise_engine_matches_golden_and_cycle_model():
    """The depthwise engine's ecp5 MACs (LUT Booth products, a two-level tap sum) and its deeper requantizer:
    random layers with bubbles and back-pressure, extreme zero points and data, and the cycle model."""
    import test_depthwise as t
    from cnnacc.host.cycles_vector import depthwise_cycles
    from cnnacc.hw.depthwise import depthwise_extra_stages
    from cnnacc.hw.requantizer import requant_extra_stages

    config = AcceleratorConfig(lanes=2, max_width=8, target="ecp5")
    generic = replace(config, target="generic")
    extra = depthwise_extra_stages(config) + requant_extra_stages("ecp5")
    assert extra == 12 and depthwise_extra_stages(generic) == 0
    seed = 9
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    specs = [dict(height=4, width=5, channels=3, zp_in=-128, zp_out=127, extreme=True),
             dict(height=3, width=4, channels=2, zp_in=127, zp_out=-128, extreme=True, mode="single"),
             dict(height=5, width=6, channels=4, stride=2, padding=(0, 1, 0, 1), qmin=0, qmax=6)]
    jobs, wants = zip(*[t.make_job(config, rng, **spec) for spec in specs])
    got, _ = t.run_amaranth(config, list(jobs), seed=seed, bubble=0.3, stall=0.3)
    t.check(got, jobs, wants, config.lanes, f"ecp5 seed {seed}")
    job, want = t.make_job(config, rng, height=5, width=7, channels=3, padding=(1, 1, 1, 1))
    got, cycles = t.run_amaranth(config, [job])
    t.check(got, [job], [want], config.lanes, "ecp5 cycle model")
    # The extra stages, and the cycle the window generator's tap bounds take to load.
    assert cycles == depthwise_cycles(config, job[0]) == depthwise_cycles(generic, job[0]) + extra + 1
