"""WindowGenerator against NumPy windows, in the Amaranth simulator and on Verilator through cocotb."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnacc.config import AcceleratorConfig
from cnnacc.host.cycles_vector import window_cycles
from cnnacc.hw.window_generator import WindowGenerator, window_layer, window_output_shape
from cnnacc.sim.amaranth_streams import stream_get, stream_put
from cnnacc.sim import tb_window_generator


def golden_windows(planes, layer, kmax):
    """Expected beats ``(taps [kmax, kmax, lanes], row_valid, col_valid, last_in_group, last)`` in order."""
    k, s, zp = layer["kernel"], layer["stride"], layer["zero_point"]
    pad = (layer["pad_top"], layer["pad_bottom"], layer["pad_left"], layer["pad_right"])
    groups, h, w, lanes = planes.shape
    oh, ow = window_output_shape(h, w, k, s, pad)
    padded = np.pad(planes.astype(np.int64), ((0, 0), (pad[0], pad[1]), (pad[2], pad[3]), (0, 0)),
                    constant_values=zp)
    out = []
    for g in range(groups):
        for oy in range(oh):
            for ox in range(ow):
                taps = np.full((kmax, kmax, lanes), zp, np.int64)
                taps[:k, :k] = padded[g, oy * s:oy * s + k, ox * s:ox * s + k]
                rows = sum(1 << i for i in range(k) if pad[0] <= oy * s + i < pad[0] + h)
                cols = sum(1 << j for j in range(k) if pad[2] <= ox * s + j < pad[2] + w)
                end = oy == oh - 1 and ox == ow - 1
                out.append((taps, rows, cols, int(end), int(end and g == groups - 1)))
    return out


def run_amaranth(config, jobs, *, seed=0, bubble=0.0, stall=0.0, max_kernel=None):
    """Run ``jobs`` (a list of ``(layer dict, planes [G, H, W, lanes])``) back to back; return beats, cycles."""
    dut = WindowGenerator(config, max_kernel=max_kernel)
    kmax = dut.max_kernel
    rng = random.Random(seed)
    expected = sum(len(golden_windows(p, layer, kmax)) for layer, p in jobs)
    got = []
    cycles = 0

    # Descriptors are offered as early as the generator takes them, concurrently with the pixels.
    async def layers(ctx):
        for layer, _ in jobs:
            await stream_put(ctx, dut.i_layer, layer)

    async def producer(ctx):
        for layer, planes in jobs:
            for pixel in planes.reshape(-1, planes.shape[-1]):
                await stream_put(ctx, dut.i_pixels, pixel.tolist(), rng=rng, bubble_prob=bubble)

    async def consumer(ctx):
        for _ in range(expected):
            beat = await stream_get(ctx, dut.o_windows, rng=rng, stall_prob=stall)
            taps = np.array([[[int(v) for v in beat.taps[i][j]] for j in range(kmax)] for i in range(kmax)])
            got.append((taps, int(beat.row_valid), int(beat.col_valid), int(beat.last_in_group),
                        int(beat.last)))

    async def clock_counter(ctx):
        nonlocal cycles
        async for _ in ctx.tick():
            cycles += 1

    limit = (50 + 3 * sum(window_cycles(layer) for layer, _ in jobs)) * (1 + 10 * max(bubble, stall))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in (layers, producer, consumer):
        sim.add_testbench(bench)
    sim.add_testbench(clock_counter, background=True)
    while sim.advance():
        if cycles > limit:
            raise AssertionError(f"WindowGenerator produced {len(got)} of {expected} windows in {limit} cycles")
    return got, cycles


def check(got, jobs, kmax, what):
    want = [beat for layer, planes in jobs for beat in golden_windows(planes, layer, kmax)]
    assert len(got) == len(want), f"{what}: {len(got)} windows, expected {len(want)}"
    for n, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g[0], w[0], err_msg=f"{what}: taps of window {n}")
        assert g[1:] == w[1:], f"{what}: window {n} flags (row_valid, col_valid, last_in_group, last) {g[1:]} != {w[1:]}"


def random_job(config, rng, kmax):
    k = int(rng.integers(1, kmax + 1))
    s = int(rng.integers(1, 3))
    pads = [int(v) for v in rng.integers(0, k, size=4)]
    h = int(rng.integers(max(1, k - pads[0] - pads[1]), 7))
    w = int(rng.integers(max(1, k - pads[2] - pads[3]), config.max_width + 1))
    zp = int(rng.choice([-128, 127, int(rng.integers(-128, 128))]))
    g = int(rng.integers(1, 3))
    layer = window_layer(config, height=h, width=w, kernel=k, stride=s, padding=tuple(pads), zero_point=zp,
                         groups=g, max_kernel=kmax)
    planes = rng.integers(-128, 128, size=(g, h, w, config.lanes), dtype=np.int64)
    return layer, planes


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_layers_with_backpressure(seed):
    config = AcceleratorConfig(lanes=2, max_kernel=4, max_width=9)
    rng = np.random.default_rng(seed)
    jobs = [random_job(config, rng, 4) for _ in range(3)]
    got, _ = run_amaranth(config, jobs, seed=seed, bubble=0.3, stall=0.3)
    check(got, jobs, 4, f"seed {seed}")


def test_edge_cases():
    # K=7 on a map narrower than the padding, a single-row map, stride 2 on odd sizes, zero points at the ends.
    config = AcceleratorConfig(lanes=1, max_kernel=7, max_width=8)
    rng = np.random.default_rng(4)
    cases = [
        dict(height=3, width=2, kernel=7, stride=1, padding=(3, 3, 3, 3), zero_point=-128),
        dict(height=1, width=8, kernel=3, stride=1, padding=(1, 1, 1, 1), zero_point=127),
        dict(height=7, width=7, kernel=3, stride=2, padding=(0, 1, 1, 0), zero_point=5),
        dict(height=5, width=5, kernel=2, stride=2, padding=(0, 0, 0, 0), zero_point=-1, groups=2),
        dict(height=1, width=1, kernel=1, stride=1, padding=(0, 0, 0, 0), zero_point=0),
    ]
    jobs = []
    for case in cases:
        layer = window_layer(config, **case)
        shape = (layer["groups"], layer["height"], layer["width"], config.lanes)
        jobs.append((layer, rng.integers(-128, 128, size=shape, dtype=np.int64)))
    got, _ = run_amaranth(config, jobs, seed=4, bubble=0.2, stall=0.2)
    check(got, jobs, 7, "edge cases")


def test_one_window_per_cycle():
    config = AcceleratorConfig(lanes=1, max_kernel=3, max_width=8)
    layer = window_layer(config, height=8, width=8, kernel=3, stride=1, padding=(1, 1, 1, 1), zero_point=3)
    planes = np.arange(64).reshape(1, 8, 8, 1) - 32
    got, cycles = run_amaranth(config, [(layer, planes)])
    check(got, [(layer, planes)], 3, "full rate")
    # 100 padded positions, one per cycle, plus the descriptor beat and the two pipeline stages.
    assert cycles == window_cycles(layer) == 100 + 3


def test_ecp5_read_register_and_group_flags():
    # Target "ecp5": the row memories' read register (one stage more), the tap bounds loaded in a cycle of their
    # own (the scan starts a cycle later) and the last-plane flags stepped against a registered ``groups - 2``,
    # over layers of one to four planes back to back, with bubbles and back-pressure.
    from cnnacc.host.cycles_vector import WINDOW_LATENCY
    from cnnacc.hw.window_generator import window_extra_stages, window_scan_start
    config = AcceleratorConfig(lanes=2, max_kernel=3, max_width=6, target="ecp5")
    rng = np.random.default_rng(12)
    jobs = []
    for groups in (3, 1, 4, 2):
        layer, _ = random_job(config, rng, 3)
        layer["groups"] = groups
        jobs.append((layer, rng.integers(-128, 128, size=(groups, layer["height"], layer["width"], 2))))
    got, _ = run_amaranth(config, jobs, seed=12, bubble=0.3, stall=0.3)
    check(got, jobs, 3, "ecp5")
    for job in jobs:
        got, cycles = run_amaranth(config, [job])
        check(got, [job], 3, "ecp5 cycles")
        assert cycles == window_cycles(job[0], WINDOW_LATENCY + window_extra_stages(config),
                                       start=window_scan_start(config))


def test_bad_descriptor_names_the_layer():
    config = AcceleratorConfig(max_kernel=7, max_width=16)
    with pytest.raises(ValueError, match=r"^conv1: kernel must be an integer from 1 to 7, not 8$"):
        window_layer(config, height=4, width=4, kernel=8, stride=1, name="conv1")
    with pytest.raises(ValueError, match=r"^pool: width must be an integer from 1 to 16, not 17$"):
        window_layer(config, height=4, width=17, kernel=3, stride=1, name="pool")
    with pytest.raises(ValueError, match=r"^pool: the 3x3 kernel does not fit the padded 1x4 input$"):
        window_layer(config, height=1, width=4, kernel=3, stride=1, name="pool")


def test_verilator_larger_maps():
    config = AcceleratorConfig(lanes=2, max_kernel=7, max_width=32)
    rng = np.random.default_rng(31)
    print("seed 31")
    jobs = []
    for k, s, pads, h, w in [(3, 1, (1, 1, 1, 1), 12, 32), (7, 2, (3, 3, 3, 3), 9, 13), (2, 2, (0, 0, 0, 0), 7, 7)]:
        zp = int(rng.integers(-128, 128))
        layer = window_layer(config, height=h, width=w, kernel=k, stride=s, padding=pads, zero_point=zp, groups=2)
        jobs.append((layer, rng.integers(-128, 128, size=(2, h, w, config.lanes), dtype=np.int64)))
    got, _ = tb_window_generator.run_rtl(config, jobs, seed=31, bubble=0.3, stall=0.3)
    check(got, jobs, 7, "verilator seed 31")
