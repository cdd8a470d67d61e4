"""PoolEngine against golden.max_pool2d / avg_pool2d, in the Amaranth simulator and on Verilator."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from cnnacc.config import AcceleratorConfig
from cnnacc.host import golden
from cnnacc.host import graph as g
from cnnacc.hw.conv_engine import ConvEngine, ConvLayer, node_job
from cnnacc.host.cycles_vector import pool_cycles
from cnnacc.hw.pool_engine import PoolEngine, PoolMode, avg_reciprocals, pool_layer, pool_layer_layout
from cnnacc.hw.window_generator import pixel_layout
from cnnacc.hw.window_generator import window_output_shape
from cnnacc.sim import tb_pool_engine
from cnnacc.sim.amaranth_streams import stream_get, stream_put


def to_nhwc(planes):
    """``[G, H, W, lanes]`` channel-group planes -> ``[1, H, W, G * lanes]``."""
    g, h, w, lanes = planes.shape
    return planes.transpose(1, 2, 0, 3).reshape(1, h, w, g * lanes)


def from_nhwc(x, lanes):
    _, h, w, c = x.shape
    return x.reshape(h, w, c // lanes, lanes).transpose(2, 0, 1, 3)


def golden_pool(planes, layer):
    win = layer["window"]
    x = to_nhwc(planes.astype(np.int8))
    qmin, qmax = layer["qmin"], layer["qmax"]
    if layer["mode"] == PoolMode.GLOBAL_AVG:
        out = golden.avg_pool2d(x, (win["height"], win["width"]), (1, 1), qmin=qmin, qmax=qmax)
    else:
        k, s = win["kernel"], win["stride"]
        pad = (win["pad_top"], win["pad_bottom"], win["pad_left"], win["pad_right"])
        op = golden.max_pool2d if layer["mode"] == PoolMode.MAX else golden.avg_pool2d
        out = op(x, (k, k), (s, s), pad, qmin, qmax)
    return from_nhwc(out, planes.shape[-1]).astype(np.int64)


def output_beats(layer):
    win = layer["window"]
    if layer["mode"] == PoolMode.GLOBAL_AVG:
        return win["groups"]
    oh, ow = window_output_shape(win["height"], win["width"], win["kernel"], win["stride"],
                                 (win["pad_top"], win["pad_bottom"], win["pad_left"], win["pad_right"]))
    return win["groups"] * oh * ow


def run_amaranth(config, jobs, *, seed=0, bubble=0.0, stall=0.0):
    dut = PoolEngine(config)
    rng = random.Random(seed)
    expected = sum(output_beats(layer) for layer, _ in jobs)
    got, cycles = [], 0

    # Descriptors are offered as early as the engine takes them, concurrently with the pixels.
    async def layers(ctx):
        for layer, _ in jobs:
            await stream_put(ctx, dut.i_layer, layer)

    async def producer(ctx):
        for layer, planes in jobs:
            for pixel in planes.reshape(-1, planes.shape[-1]):
                await stream_put(ctx, dut.i_pixels, pixel.tolist(), rng=rng, bubble_prob=bubble)

    async def consumer(ctx):
        for _ in range(expected):
            beat = await stream_get(ctx, dut.o_pixels, rng=rng, stall_prob=stall)
            got.append([int(v) for v in beat])

    async def clock_counter(ctx):
        nonlocal cycles
        async for _ in ctx.tick():
            cycles += 1

    limit = (100 + 3 * sum(pool_cycles(config, layer) for layer, _ in jobs)) * (1 + 10 * max(bubble, stall))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in (layers, producer, consumer):
        sim.add_testbench(bench)
    sim.add_testbench(clock_counter, background=True)
    while sim.advance():
        if cycles > limit:
            raise AssertionError(f"PoolEngine produced {len(got)} of {expected} beats in {limit} cycles")
    return np.array(got, np.int64).reshape(-1, config.lanes), cycles


def check(got, jobs, what):
    want = np.concatenate([golden_pool(planes, layer).reshape(-1, planes.shape[-1]) for layer, planes in jobs])
    assert got.shape == want.shape, f"{what}: {got.shape[0]} beats, expected {want.shape[0]}"
    bad = np.argwhere(got != want)
    assert bad.size == 0, f"{what}: {len(bad)} wrong values, first at beat {bad[0][0]}: {got[bad[0][0]]} != {want[bad[0][0]]}"


def random_job(config, rng):
    mode = PoolMode(int(rng.integers(0, 3)))
    k = int(rng.choice([2, 3]))
    s = int(rng.integers(1, 3))
    pads = tuple(int(v) for v in rng.integers(0, k, size=4))
    h = int(rng.integers(max(1, k - pads[0] - pads[1]), 6))
    w = int(rng.integers(max(1, k - pads[2] - pads[3]), config.max_width + 1))
    qmin = int(rng.choice([-128, int(rng.integers(-128, 0))]))
    qmax = int(rng.choice([127, int(rng.integers(0, 128))]))
    g = int(rng.integers(1, 3))
    layer = pool_layer(config, mode, height=h, width=w, groups=g, kernel=k, stride=s, padding=pads, qmin=qmin,
                       qmax=qmax)
    return layer, rng.integers(-128, 128, size=(g, h, w, config.lanes), dtype=np.int64)


def test_reciprocal_division_is_exact_for_every_window_sum_and_count():
    # Every numerator |sum| + count // 2 a 7x7 (or 11x11) window can produce, over every count of in-bounds taps.
    for kmax in (7, 11):
        max_numer = kmax * kmax * 128 + (kmax * kmax) // 2
        shift, table = avg_reciprocals(kmax * kmax, max_numer)
        n = np.arange(max_numer + 1, dtype=np.int64)
        for c in range(1, kmax * kmax + 1):
            np.testing.assert_array_equal((n * table[c]) >> shift, n // c, err_msg=f"kmax {kmax}, count {c}")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_layers_with_backpressure(seed):
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=7)
    rng = np.random.default_rng(seed)
    jobs = [random_job(config, rng) for _ in range(4)]
    got, _ = run_amaranth(config, jobs, seed=seed, bubble=0.3, stall=0.3)
    check(got, jobs, f"seed {seed}")


@pytest.mark.parametrize("stall", [0.3, 0.8])
def test_ecp5_random_layers_with_backpressure(stall):
    """The ECP5 engine's input slice and skid (pool_input_stages) under bubbles and a held output."""
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=7, target="ecp5")
    rng = np.random.default_rng(11)
    jobs = [random_job(config, rng) for _ in range(4)]
    got, _ = run_amaranth(config, jobs, seed=11, bubble=0.3, stall=stall)
    check(got, jobs, f"ecp5, stall {stall}")


def test_edge_cases_and_rounding():
    config = AcceleratorConfig(lanes=3, max_kernel=3, max_width=5)
    rng = np.random.default_rng(5)
    jobs = []
    # Sums that land exactly on .5 (round away from zero, both signs), and the extremes.
    ties = np.array([[[[1, -1, -128], [2, -2, -128]], [[0, 0, -128], [0, 0, -128]]]], np.int64)  # 1x2x2x3
    jobs.append((pool_layer(config, PoolMode.AVG, height=2, width=2, kernel=2, stride=1), ties))
    jobs.append((pool_layer(config, PoolMode.GLOBAL_AVG, height=2, width=2), ties))
    jobs.append((pool_layer(config, PoolMode.MAX, height=1, width=5, kernel=3, stride=2, padding=(1, 1, 1, 1),
                            qmin=-20, qmax=20), rng.integers(-128, 128, size=(1, 1, 5, 3))))
    jobs.append((pool_layer(config, PoolMode.AVG, height=1, width=1, kernel=3, stride=1, padding=(1, 1, 1, 1), groups=2),
                 np.full((2, 1, 1, 3), -128)))
    jobs.append((pool_layer(config, PoolMode.MAX, height=5, width=5, kernel=3, stride=2, groups=2),
                 np.full((2, 5, 5, 3), -128)))
    jobs.append((pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=1, groups=3),
                 rng.integers(-128, 128, size=(3, 1, 1, 3))))
    got, _ = run_amaranth(config, jobs, seed=5, bubble=0.2, stall=0.2)
    check(got, jobs, "edge cases")


def test_cycle_model_matches_rtl():
    config = AcceleratorConfig(lanes=1, max_kernel=3, max_width=8)
    rng = np.random.default_rng(6)
    for layer in [pool_layer(config, PoolMode.MAX, height=6, width=8, kernel=3, stride=1, padding=(1, 1, 1, 1), groups=2),
                  pool_layer(config, PoolMode.AVG, height=7, width=7, kernel=2, stride=2),
                  pool_layer(config, PoolMode.GLOBAL_AVG, height=3, width=8, groups=3),
                  pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=2, groups=4)]:
        shape = (layer["window"]["groups"], layer["window"]["height"], layer["window"]["width"], 1)
        job = (layer, rng.integers(-128, 128, size=shape))
        got, cycles = run_amaranth(config, [job])
        check(got, [job], "cycle model")
        assert cycles == pool_cycles(config, layer), f"{layer}: RTL {cycles} cycles, model {pool_cycles(config, layer)}"


def test_ecp5_global_average_matches_golden_and_cycle_model():
    # The ECP5's staged divider (its phases as flags, its plane ends from registered layer constants): planes of
    # one pixel (each waiting for the divider), one row, one column, and the rounding ties, against the golden
    # model with back-pressure and the cycle model without.
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=8, target="ecp5")
    rng = np.random.default_rng(7)
    layers = [pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=1, groups=3, qmin=-50, qmax=60),
              pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=8, groups=2),
              pool_layer(config, PoolMode.GLOBAL_AVG, height=8, width=1, groups=2),
              pool_layer(config, PoolMode.GLOBAL_AVG, height=3, width=5, groups=4, qmin=-3, qmax=3)]
    jobs = []
    for layer in layers:
        window = layer["window"]
        jobs.append((layer, rng.integers(-128, 128, size=(window["groups"], window["height"], window["width"], 2))))
    ties = np.array([[[[1, -1], [2, -2]], [[0, 0], [0, 0]]]], np.int64)       # sums 3 and -3 over 4: +-0.75
    jobs.append((pool_layer(config, PoolMode.GLOBAL_AVG, height=2, width=2), ties))
    halves = np.array([[[[1, -1], [0, 0]]], [[[127, -128], [-128, 127]]]], np.int64)   # +-0.5 (away from 0)
    jobs.append((pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=2, groups=2), halves))
    # A windowed layer between global ones: the generator's ready is the output's enable alone on the ECP5.
    jobs.insert(2, (pool_layer(config, PoolMode.MAX, height=4, width=5, kernel=2, stride=2, groups=2),
                    rng.integers(-128, 128, size=(2, 4, 5, 2))))
    got, _ = run_amaranth(config, jobs, seed=7, bubble=0.3, stall=0.3)
    check(got, jobs, "ecp5 global average")
    for job in jobs:
        got, cycles = run_amaranth(config, [job])
        check(got, [job], "ecp5 global average cycle model")
        model = pool_cycles(config, job[0])
        assert cycles == model, f"{job[0]}: RTL {cycles} cycles, model {model}"


def test_ecp5_global_sums_start_from_zero_after_a_run_cut_short():
    """The sums are data without a reset (ECP5): a run flushed in the middle of a plane (the accelerator resets
    its engines at every run's end, and its watchdog aborts a stalled run) leaves them partial, and the next
    global layer must start from zero all the same."""
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=8, target="ecp5")
    flush = Signal()
    dut = PoolEngine(config)
    top = Module()
    top.submodules.pool = ResetInserter(flush)(dut)
    layer = pool_layer(config, PoolMode.GLOBAL_AVG, height=2, width=2)
    planes = np.array([[[[1, -2], [3, -4]], [[5, -6], [7, -8]]]], np.int64)
    got = []

    async def bench(ctx):
        await stream_put(ctx, dut.i_layer, layer)
        for _ in range(3):      # three of the plane's four pixels
            await stream_put(ctx, dut.i_pixels, [120, -120])
        await ctx.tick().repeat(8)
        ctx.set(flush, 1)
        await ctx.tick()
        ctx.set(flush, 0)
        await stream_put(ctx, dut.i_layer, layer)
        for pixel in planes.reshape(-1, 2):
            await stream_put(ctx, dut.i_pixels, pixel.tolist())
        got.append([int(v) for v in await stream_get(ctx, dut.o_pixels)])

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(1e-8 * 500)
    assert len(got) == 1, "no result in 500 cycles"
    check(np.array(got, np.int64), [(layer, planes)], "global average after a flushed run")


def test_ecp5_clamp_at_every_value():
    # The ECP5 engine decides the clamp on the magnitude before its negation (and on the window's maximum): a
    # 1x1 window and 1x1 global planes pass every int8 value through, against clamps at the ends and in between.
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=16, target="ecp5")
    values = np.arange(-128, 128).reshape(1, 16, 16, 1)
    planes = np.concatenate([values, values[:, ::-1, ::-1]], axis=-1)
    jobs = []
    for qmin, qmax in [(-128, 127), (-1, 0), (-128, -128), (127, 127), (-100, 5), (0, 0)]:
        for mode in (PoolMode.AVG, PoolMode.MAX):
            jobs.append((pool_layer(config, mode, height=16, width=16, qmin=qmin, qmax=qmax), planes))
    for qmin, qmax in [(-128, 127), (-3, 9)]:
        jobs.append((pool_layer(config, PoolMode.GLOBAL_AVG, height=1, width=1, groups=256, qmin=qmin, qmax=qmax),
                     planes.reshape(256, 1, 1, 2)))
    got, _ = run_amaranth(config, jobs, seed=13, bubble=0.1, stall=0.2)
    check(got, jobs, "ecp5 clamp")


def test_bad_layer_names_it():
    config = AcceleratorConfig(max_width=16)
    with pytest.raises(ValueError, match=r"^pool5: global average over 17x16 pixels exceeds the 256 the divider"):
        pool_layer(config, PoolMode.GLOBAL_AVG, height=17, width=16, name="pool5")
    with pytest.raises(ValueError, match=r"^pool2: pad_left must be an integer from 0 to 1, not 2$"):
        pool_layer(config, PoolMode.MAX, height=4, width=4, kernel=2, padding=(0, 0, 2, 0), name="pool2")


def test_verilator_mobilenet_shapes():
    # MobileNet's 7x7 global average at full width, a 3x3/2 max pool, and a 224x224 global average
    # (count 50176, the largest the divider is built for).
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=224)
    rng = np.random.default_rng(41)
    print("seed 41")
    jobs = []
    for layer in [pool_layer(config, PoolMode.GLOBAL_AVG, height=7, width=7, groups=4),
                  pool_layer(config, PoolMode.MAX, height=15, width=15, kernel=3, stride=2, groups=2,
                             padding=(0, 1, 0, 1), qmin=0),
                  pool_layer(config, PoolMode.AVG, height=9, width=30, kernel=3, stride=1, padding=(1, 1, 1, 1), groups=2),
                  pool_layer(config, PoolMode.GLOBAL_AVG, height=224, width=224, groups=1)]:
        shape = (layer["window"]["groups"], layer["window"]["height"], layer["window"]["width"], config.lanes)
        jobs.append((layer, rng.integers(-128, 128, size=shape)))
    # Push the big plane's average to the rounding edge.
    big = jobs[-1][1]
    big[0, :, :, :2] = 0
    big[0, 0, :196, 0] = -128          # sum -25088 = -count/2: rounds to -1
    big[0, 0, :195, 1] = -128          # sum -25087: rounds to 0
    big[0, 0, 195, 1] = -127
    got, cycles = tb_pool_engine.run_rtl(config, jobs, seed=41, bubble=0.1, stall=0.1)
    check(got, jobs, "verilator seed 41")


class _ConvThenPool(wiring.Component):
    """The convolution engine's int8 output wired straight into the pooling engine (``rows == lanes``)."""

    def __init__(self, config):
        self._config = config
        conv = ConvEngine(config)
        self.conv = conv
        super().__init__({
            "act_write": In(conv.act_write.signature.flip()), "weight_write": In(conv.weight_write.signature.flip()),
            "param_write": In(conv.param_write.signature.flip()), "layer": In(ConvLayer), "start": In(1),
            "pool_layer": In(stream.Signature(pool_layer_layout(config))),
            "o_pixels": Out(stream.Signature(pixel_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.conv = conv = self.conv
        m.submodules.pool = pool = PoolEngine(self._config)
        for name in ("act_write", "weight_write", "param_write"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(conv, name))
        wiring.connect(m, wiring.flipped(self.pool_layer), pool.i_layer)
        wiring.connect(m, pool.o_pixels, wiring.flipped(self.o_pixels))
        m.d.comb += [conv.layer.eq(self.layer), conv.start.eq(self.start),
                     pool.i_pixels.payload.eq(conv.o_data.payload.data), pool.i_pixels.valid.eq(conv.o_data.valid),
                     conv.o_data.ready.eq(pool.i_pixels.ready)]
        return m


def test_conv_relu_pool_fused_without_memory():
    # Conv (3x3, SAME, ReLU) -> 3x3/2 average pool, the conv output streamed straight in, with back-pressure.
    config = AcceleratorConfig(rows=2, cols=2, lanes=2, max_kernel=3, max_width=8)
    rng = np.random.default_rng(61)
    h, w, cin, cout = 4, 5, 2, 4
    x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    node = g.Conv2D("conv", ["x"], g.TensorSpec("y", (h, w, cout), 0.3, -7),
                    weights=rng.integers(-127, 128, size=(cout, 3, 3, cin), dtype=np.int8),
                    bias=rng.integers(-20000, 20000, size=cout), weight_scales=rng.uniform(0.001, 0.01, cout),
                    input_spec=g.TensorSpec("x", (h, w, cin), 0.05, 3), activation="relu", stride=(1, 1),
                    padding=(1, 1, 1, 1))
    conv_out = golden.conv2d(x, node)
    fields, (act, wgt, params) = node_job(config, node, x[0])
    # (One pooling layer: the convolution is slow in the Amaranth simulator; the others are covered above.)
    for layer in [pool_layer(config, PoolMode.AVG, height=h, width=w, groups=2, kernel=3, stride=2,
                             padding=(1, 1, 1, 1), qmin=-7)]:
        want = golden_pool(from_nhwc(conv_out, 2), layer).reshape(-1, 2)
        dut = _ConvThenPool(config)
        got = []
        rng_bp = random.Random(61)

        async def driver(ctx):
            words = [(dut.act_write, [a.tolist() for a in act]), (dut.weight_write, [v.tolist() for v in wgt]),
                     (dut.param_write, [[{"bias": int(b), "multiplier": int(mu), "shift": int(s)} for b, mu, s in blk]
                                        for blk in params])]
            for port, data in words:
                for addr, word in enumerate(data):
                    ctx.set(port.valid, 1)
                    ctx.set(port.payload, {"addr": addr, "data": word})
                    await ctx.tick()
                ctx.set(port.valid, 0)
            await stream_put(ctx, dut.pool_layer, layer)
            ctx.set(dut.layer, fields)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)

        async def consumer(ctx):
            for _ in range(len(want)):
                beat = await stream_get(ctx, dut.o_pixels, rng=rng_bp, stall_prob=0.3)
                got.append([int(v) for v in beat])

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(driver)
        sim.add_testbench(consumer)
        sim.run_until(1e-8 * 20000)
        assert len(got) == len(want), f"{layer['mode']}: {len(got)} of {len(want)} pooled beats"
        np.testing.assert_array_equal(np.array(got), want, err_msg=f"fused conv -> pool mode {layer['mode']}")


# --- target "ice40": max pooling, 2x2 windows at most (tests/test_ice40_pool.py has the rest) --------------------

def test_ice40_pool_kernel_and_modes():
    from cnnacc.hw.pool_engine import ICE40_POOL_KERNEL, pool_max_kernel, pool_modes
    config = AcceleratorConfig(rows=4, cols=4, lanes=4, max_kernel=5, max_width=8, target="ice40")
    assert pool_max_kernel(config) == ICE40_POOL_KERNEL == 2
    assert pool_max_kernel(AcceleratorConfig(max_kernel=5)) == 5
    assert pool_modes(config) == (PoolMode.MAX,) and PoolMode.GLOBAL_AVG in pool_modes(AcceleratorConfig())
    with pytest.raises(ValueError, match=r"^pool3: kernel must be an integer from 1 to 2, not 3$"):
        pool_layer(config, PoolMode.MAX, height=4, width=4, kernel=3, name="pool3")
    with pytest.raises(ValueError, match=r"^gap: global average pooling is not built on the ice40 pool engine "
                                         r"\(it computes max\)$"):
        pool_layer(config, PoolMode.GLOBAL_AVG, height=3, width=3, name="gap")
