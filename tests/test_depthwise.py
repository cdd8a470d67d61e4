"""DepthwiseEngine (window generator + MACs + requantizer) against golden.depthwise_conv2d, bit for bit."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnacc.config import AcceleratorConfig
from cnnacc.host import golden
from cnnacc.host.cycles_vector import depthwise_cycles
from cnnacc.host.graph import Requant
from cnnacc.host.quant import quantize_multiplier
from cnnacc.hw.depthwise import DepthwiseEngine, depthwise_layer, depthwise_weight_beats
from cnnacc.hw.window_generator import window_output_shape
from cnnacc.sim import tb_depthwise
from cnnacc.sim.amaranth_streams import stream_get, stream_put


def make_job(config, rng, *, height, width, channels, kernel=3, stride=1, padding=(1, 1, 1, 1), zp_in=None,
             zp_out=None, qmin=-128, qmax=127, mode="double", extreme=False):
    """A random depthwise layer: descriptor, weight beats, input planes, and the golden NHWC int8 output."""
    zp_in = int(rng.integers(-128, 128)) if zp_in is None else zp_in
    zp_out = int(rng.integers(-128, 128)) if zp_out is None else zp_out
    if extreme:
        x = rng.choice([-128, 127], size=(1, height, width, channels)).astype(np.int8)
        w = rng.choice([-127, 127], size=(1, kernel, kernel, channels)).astype(np.int8)
        bias = rng.choice([-(1 << 31), (1 << 31) - 1], size=channels).astype(np.int64)
    else:
        x = rng.integers(-128, 128, size=(1, height, width, channels), dtype=np.int8)
        w = rng.integers(-127, 128, size=(1, kernel, kernel, channels), dtype=np.int8)
        bias = rng.integers(-(1 << 20), 1 << 20, size=channels, dtype=np.int64)
    pairs = [quantize_multiplier(s) for s in rng.uniform(1e-4, 3e-2, size=channels)]
    mult = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    node = SimpleNamespace(weights=w, bias=bias, input_spec=SimpleNamespace(zero_point=zp_in), stride=(stride, stride),
                           padding=padding, requant=Requant(mult, shift, zp_out, qmin, qmax, mode))
    want = golden.depthwise_conv2d(x, node)
    layer = depthwise_layer(config, height=height, width=width, channels=channels, kernel=kernel, stride=stride,
                            padding=padding, zero_point_in=zp_in, zero_point_out=zp_out, qmin=qmin, qmax=qmax,
                            mode=mode)
    beats = depthwise_weight_beats(config, w, bias, mult, shift)
    groups = layer["window"]["groups"]
    xp = np.zeros((1, height, width, groups * config.lanes), np.int64)
    xp[..., :channels] = x
    planes = xp[0].reshape(height, width, groups, config.lanes).transpose(2, 0, 1, 3)
    return (layer, beats, planes), want


def to_planes(want, lanes):
    """Golden NHWC output -> ``[beats, lanes]`` in channel-group plane order (padding lanes dropped later)."""
    _, h, w, c = want.shape
    groups = -(-c // lanes)
    out = np.zeros((h, w, groups * lanes), np.int64)
    out[..., :c] = want[0]
    return out.reshape(h, w, groups, lanes).transpose(2, 0, 1, 3).reshape(-1, lanes)


def check(got, jobs, wants, lanes, what):
    start = 0
    for n, ((layer, _, _), want) in enumerate(zip(jobs, wants)):
        expect = to_planes(want, lanes)
        c = want.shape[-1]
        part = got[start:start + len(expect)]
        assert len(part) == len(expect), f"{what}: layer {n}: {len(part)} beats, expected {len(expect)}"
        # Lanes past the layer's channels in the last group are don't-care.
        mask = to_planes(np.ones_like(want), lanes).astype(bool) if c % lanes else np.ones_like(expect, bool)
        bad = np.argwhere((part != expect) & mask)
        assert bad.size == 0, (f"{what}: layer {n}: {len(bad)} wrong outputs, first at beat {bad[0][0]} lane "
                               f"{bad[0][1]}: {part[tuple(bad[0])]} != {expect[tuple(bad[0])]}")
        start += len(expect)


def run_amaranth(config, jobs, *, seed=0, bubble=0.0, stall=0.0):
    dut = DepthwiseEngine(config)
    rng = random.Random(seed)
    expected = 0
    for layer, _, _ in jobs:
        win = layer["window"]
        oh, ow = window_output_shape(win["height"], win["width"], win["kernel"], win["stride"],
                                     (win["pad_top"], win["pad_bottom"], win["pad_left"], win["pad_right"]))
        expected += win["groups"] * oh * ow
    got, cycles = [], 0

    async def layers(ctx):
        for layer, _, _ in jobs:
            await stream_put(ctx, dut.i_layer, layer)

    async def weights(ctx):
        for _, beats, _ in jobs:
            for beat in beats:
                await stream_put(ctx, dut.i_weights, beat, rng=rng, bubble_prob=bubble)

    async def pixels(ctx):
        for _, _, planes in jobs:
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

    limit = (100 + 3 * sum(depthwise_cycles(config, job[0]) for job in jobs)) * (1 + 10 * max(bubble, stall))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in (layers, weights, pixels, consumer):
        sim.add_testbench(bench)
    sim.add_testbench(clock_counter, background=True)
    while sim.advance():
        if cycles > limit:
            raise AssertionError(f"DepthwiseEngine produced {len(got)} of {expected} beats in {limit} cycles")
    return np.array(got, np.int64).reshape(-1, config.lanes), cycles


@pytest.mark.parametrize("seed", [1, 2])
def test_random_layers_with_backpressure(seed):
    config = AcceleratorConfig(lanes=2, max_width=8)
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    jobs, wants = [], []
    for _ in range(3):
        stride = int(rng.integers(1, 3))
        k = int(rng.choice([1, 2, 3]))
        pads = tuple(int(v) for v in rng.integers(0, k, size=4))
        job, want = make_job(config, rng, height=int(rng.integers(3, 6)), width=int(rng.integers(3, 9)),
                             channels=int(rng.integers(1, 6)), kernel=k, stride=stride, padding=pads,
                             mode=str(rng.choice(["double", "single"])), qmin=int(rng.choice([-128, -10])))
        jobs.append(job)
        wants.append(want)
    got, _ = run_amaranth(config, jobs, seed=seed, bubble=0.3, stall=0.3)
    check(got, jobs, wants, config.lanes, f"seed {seed}")


def test_edge_cases():
    # Zero points at both ends with extreme data (the int32 bias wraps), a single-row map, stride 2 on odd sizes,
    # a map narrower than the padding.
    config = AcceleratorConfig(lanes=2, max_width=8)
    rng = np.random.default_rng(7)
    specs = [dict(height=3, width=4, channels=2, zp_in=-128, zp_out=127, extreme=True),
             dict(height=3, width=4, channels=2, zp_in=127, zp_out=-128, extreme=True, mode="single"),
             dict(height=1, width=8, channels=3, zp_in=5),
             dict(height=7, width=7, channels=2, stride=2, padding=(0, 1, 0, 1)),
             dict(height=2, width=1, channels=2, padding=(1, 1, 1, 1), qmin=0, qmax=6)]
    jobs, wants = zip(*[make_job(config, rng, **spec) for spec in specs])
    got, _ = run_amaranth(config, list(jobs), seed=7, bubble=0.2, stall=0.2)
    check(got, jobs, wants, config.lanes, "edge cases")


def test_cycle_model_matches_rtl():
    config = AcceleratorConfig(lanes=1, max_width=8)
    rng = np.random.default_rng(8)
    for spec in [dict(height=6, width=8, channels=3), dict(height=7, width=6, channels=2, stride=2, padding=(0, 1, 0, 1)),
                 dict(height=4, width=4, channels=3, kernel=1, padding=(0, 0, 0, 0))]:
        job, want = make_job(config, rng, **spec)
        got, cycles = run_amaranth(config, [job])
        check(got, [job], [want], 1, "cycle model")
        assert cycles == depthwise_cycles(config, job[0]), f"{spec}: RTL {cycles}, model {depthwise_cycles(config, job[0])}"


def test_bad_weights_name_the_layer():
    config = AcceleratorConfig()
    with pytest.raises(ValueError, match=r"^dw3: a 5x5 kernel exceeds the engine's 3x3$"):
        depthwise_weight_beats(config, np.zeros((1, 5, 5, 8)), np.zeros(8), np.zeros(8), np.zeros(8), name="dw3")
    with pytest.raises(ValueError, match=r"^dw1: stride must be an integer from 1 to 7, not 0$"):
        depthwise_layer(config, height=4, width=4, channels=8, stride=0, name="dw1")


def test_verilator_mobilenet_layer():
    # A MobileNet-shaped slice: 3x3 SAME stride 1 and stride 2, 20 channels (a partial last group).
    config = AcceleratorConfig(lanes=4, max_width=32)
    rng = np.random.default_rng(51)
    print("seed 51")
    jobs, wants = zip(*[make_job(config, rng, height=10, width=32, channels=10),
                        make_job(config, rng, height=11, width=13, channels=16, stride=2, padding=(0, 1, 0, 1),
                                 qmin=-128, qmax=-20)])
    got, _ = tb_depthwise.run_rtl(config, list(jobs), seed=51, bubble=0.2, stall=0.2)
    check(got, jobs, wants, config.lanes, "verilator seed 51")
