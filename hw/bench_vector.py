"""Benchmark of the vector engines: depthwise multiplier utilization, pooling and window-generator throughput.

Everything runs as RTL on Verilator (cocotb, no bubbles, no back-pressure) at the default configuration, every
result is checked against the golden model, and every cycle count is set beside
:mod:`cnnacc.host.cycles_vector`'s prediction. Run: ``python -c "from cnnacc.hw.bench_vector import bench;
bench()"`` (or through ``make bench`` once registered).
"""

import platform
import time

import numpy as np

__all__ = ["bench"]


def _same_padding(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def bench(out=print):
    from types import SimpleNamespace

    from ..bench import write_section
    from ..config import DEFAULT_CONFIG
    from ..host import golden
    from ..host.cycles_vector import depthwise_cycles, pool_cycles, window_cycles
    from ..host.graph import Requant
    from ..host.quant import quantize_multiplier
    from ..sim import tb_depthwise, tb_pool_engine, tb_window_generator
    from .depthwise import depthwise_layer, depthwise_weight_beats
    from .pool_engine import PoolMode, pool_layer
    from .window_generator import window_layer

    cfg = DEFAULT_CONFIG
    lanes = cfg.lanes
    rows = []

    def planes_of(x):
        _, h, w, c = x.shape
        groups = -(-c // lanes)
        xp = np.zeros((h, w, groups * lanes), np.int64)
        xp[..., :c] = x[0]
        return xp.reshape(h, w, groups, lanes).transpose(2, 0, 1, 3)

    def row(what, useful, cycles, model, extra):
        line = f"| {what} | {useful} | {cycles} | {model} | {extra} |"
        out(line)
        rows.append(line)

    # Depthwise 3x3, MobileNet shapes.
    multipliers = 3 * 3 * lanes                     # DepthwiseEngine(cfg).multipliers
    for h, c, stride in [(56, 64, 1), (56, 64, 2)]:
        rng = np.random.default_rng(h * c + stride)
        pt, pb = _same_padding(h, 3, stride)
        x = rng.integers(-128, 128, size=(1, h, h, c), dtype=np.int8)
        w = rng.integers(-127, 128, size=(1, 3, 3, c), dtype=np.int8)
        bias = rng.integers(-(1 << 16), 1 << 16, size=c, dtype=np.int64)
        pairs = [quantize_multiplier(s) for s in rng.uniform(1e-3, 1e-2, size=c)]
        mult, shift = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        zp_in, zp_out = -3, 7
        node = SimpleNamespace(weights=w, bias=bias, input_spec=SimpleNamespace(zero_point=zp_in),
                               stride=(stride, stride), padding=(pt, pb, pt, pb),
                               requant=Requant(mult, shift, zp_out, -128, 127, "double"))
        want = golden.depthwise_conv2d(x, node)
        layer = depthwise_layer(cfg, height=h, width=h, channels=c, stride=stride, padding=(pt, pb, pt, pb),
                                zero_point_in=zp_in, zero_point_out=zp_out)
        beats = depthwise_weight_beats(cfg, w, bias, mult, shift)
        start = time.perf_counter()
        got, cycles = tb_depthwise.run_rtl(cfg, [(layer, beats, planes_of(x))])
        wall = time.perf_counter() - start
        if not np.array_equal(got, planes_of(want).reshape(-1, lanes)):
            raise SystemExit(f"bench: depthwise {h}x{h}x{c}/{stride} differs from the golden model")
        macs = want.shape[1] * want.shape[2] * c * 9
        util = macs / (multipliers * cycles)
        row(f"depthwise 3x3/{stride} SAME, {h}x{h}x{c}", f"{macs} MACs", cycles,
            depthwise_cycles(cfg, layer), f"{100 * util:.1f}% of {multipliers} multipliers ({wall:.1f} s)")

    # Pooling: 3x3/1 max (one window per cycle per lane), 2x2/2 average, MobileNet's 7x7x1024 global average.
    for mode, h, c, k, s, pads in [(PoolMode.MAX, 56, 64, 3, 1, (1, 1, 1, 1)), (PoolMode.AVG, 56, 64, 2, 2, (0,) * 4),
                                   (PoolMode.GLOBAL_AVG, 7, 1024, 7, 1, (0,) * 4)]:
        rng = np.random.default_rng(h * c * k)
        x = rng.integers(-128, 128, size=(1, h, h, c), dtype=np.int8)
        layer = pool_layer(cfg, mode, height=h, width=h, groups=c // lanes, kernel=k, stride=s, padding=pads)
        if mode == PoolMode.MAX:
            want = golden.max_pool2d(x, (k, k), (s, s), pads)
        else:
            want = golden.avg_pool2d(x, (k, k), (s, s), pads)
        start = time.perf_counter()
        got, cycles = tb_pool_engine.run_rtl(cfg, [(layer, planes_of(x))])
        wall = time.perf_counter() - start
        if not np.array_equal(got, planes_of(want).reshape(-1, lanes)):
            raise SystemExit(f"bench: {mode.name} pool on {h}x{h}x{c} differs from the golden model")
        results = want.size // lanes
        name = {PoolMode.MAX: f"max pool {k}x{k}/{s}", PoolMode.AVG: f"avg pool {k}x{k}/{s}",
                PoolMode.GLOBAL_AVG: "global avg pool"}[mode]
        row(f"{name}, {h}x{h}x{c}", f"{results} results x {lanes} lanes", cycles, pool_cycles(cfg, layer),
            f"{results / cycles:.3f} results/cycle ({x.size // lanes / cycles:.3f} input beats/cycle, {wall:.1f} s)")

    # The window generator alone: 7x7/1 SAME windows on 56x56x8.
    rng = np.random.default_rng(7)
    window = window_layer(cfg, height=56, width=56, kernel=7, stride=1, padding=(3, 3, 3, 3), zero_point=-128)
    planes = rng.integers(-128, 128, size=(1, 56, 56, lanes))
    start = time.perf_counter()
    beats, cycles = tb_window_generator.run_rtl(cfg, [(window, planes)])
    wall = time.perf_counter() - start
    padded = np.pad(planes[0], ((3, 3), (3, 3), (0, 0)), constant_values=-128)
    for n in (0, len(beats) // 2, len(beats) - 1):
        oy, ox = divmod(n, 56)
        if not np.array_equal(beats[n][0], padded[oy:oy + 7, ox:ox + 7]):
            raise SystemExit(f"bench: window {n} differs from the padded input")
    row("window generator 7x7/1 SAME, 56x56x8", f"{len(beats)} windows x {lanes} lanes", cycles,
        window_cycles(window), f"{len(beats) / cycles:.3f} windows/cycle ({wall:.1f} s)")

    body = "\n".join([
        f"## Vector engines (lanes={lanes}, max_kernel={cfg.max_kernel}, max_width={cfg.max_width}; RTL on Verilator)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}. "
        "Cycles from the layer descriptor offered to the last output taken, no bubbles or back-pressure; every "
        "output checked against the golden model. Model: `cnnacc.host.cycles_vector`. Depthwise utilization = "
        "useful MACs / (multipliers x cycles); stride 2 is bound by the input (one pixel beat per cycle), so it "
        "keeps a quarter of the multipliers busy. Stride-1 layers get one window (one result per lane) per cycle "
        "while the scan is inside the map; the shortfall from 1.0 is the padding ring, which the generator scans "
        "at one padded pixel per cycle (58x58 = 3364 cycles per 56x56 plane with 3x3 SAME). Wall includes a "
        "Verilator build when the cache is cold.",
        "",
        "| layer | work | RTL cycles | model cycles | throughput |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section("vector", body)
