"""Benchmark of the compute core: conv layers on the systolic array and the requantizer's throughput, measured
in RTL simulation (cocotb + Verilator), checked bit for bit against the golden model, and recorded in the
``compute`` section of ``docs/benchmarks.md``.

Run: ``python -m cnnacc.hw.bench_compute`` (or through ``cnnacc.bench`` once registered there).
"""

import platform
import time

import numpy as np

from ..config import DEFAULT_CONFIG
from ..host import golden
from ..host import graph as g
from ..host.cycles_conv import conv_cycles, useful_macs, weight_stationary_cycles
from .conv_engine import node_job

__all__ = ["bench", "benchmark_layers"]


def _conv(name, seed, h, w, cin, cout, k, padding):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    weights = rng.integers(-127, 128, size=(cout, k, k, cin), dtype=np.int8)
    oh, ow = h + padding[0] + padding[1] - k + 1, w + padding[2] + padding[3] - k + 1
    node = g.Conv2D(name, ["x"], g.TensorSpec("y", (oh, ow, cout), 2.0, -3), weights=weights,
                    bias=rng.integers(-30000, 30000, size=cout), weight_scales=rng.uniform(0.002, 0.01, cout),
                    input_spec=g.TensorSpec("x", (h, w, cin), 0.05, 5), activation="relu", padding=padding)
    return node, x


def benchmark_layers():
    """The three layers of the issue: (label, node, input)."""
    return [
        ("3x3 conv 64->64, 28x28, stride 1, SAME", *_conv("conv3x3", 1, 28, 28, 64, 64, 3, (1, 1, 1, 1))),
        ("1x1 conv 128->128, 14x14", *_conv("conv1x1", 2, 14, 14, 128, 128, 1, (0, 0, 0, 0))),
        ("LeNet-5 C1: 32x32x1, 5x5, 6 out, VALID", *_conv("lenet_c1", 3, 32, 32, 1, 6, 5, (0, 0, 0, 0))),
    ]


def bench(out=print):
    """Measure, print and record the ``compute`` section."""
    from ..bench import write_section
    from ..sim import tb_conv_engine, tb_requantizer

    cfg = DEFAULT_CONFIG
    layers = benchmark_layers()
    jobs = [node_job(cfg, node, x[0]) for _, node, x in layers]
    began = time.monotonic()
    results = tb_conv_engine.run_rtl_layers(cfg, jobs)
    conv_seconds = time.monotonic() - began
    rows = []
    for (label, node, x), (fields, _), (got, cycles) in zip(layers, jobs, results):
        if not np.array_equal(got, golden.conv2d(x, node)[0]):
            raise SystemExit(f"bench: conv engine result differs from the golden model on {label}")
        model = conv_cycles(cfg, fields)
        macs = useful_macs(fields)
        ws = weight_stationary_cycles(cfg, fields)
        line = (f"| {label} | {macs:,} | {cycles:,} | {100 * macs / (cfg.pes * cycles):.2f}% | {model:,} "
                f"({model - cycles:+d}) | {100 * macs / (cfg.pes * ws):.1f}% |")
        out(line)
        rows.append(line)

    lanes = cfg.lanes
    beats = 4000
    rng = np.random.default_rng(4)
    vectors = {
        "acc": rng.integers(-(1 << 31), 1 << 31, size=(beats, lanes)),
        "bias": rng.integers(-(1 << 20), 1 << 20, size=(beats, lanes)),
        "multiplier": rng.integers(1 << 30, 1 << 31, size=(beats, lanes)),
        "shift": rng.integers(-31, 31, size=(beats, lanes)),
    }
    _, rq_cycles = tb_requantizer.run_rtl(lanes, vectors, 0, -128, 127, 0)
    rq_line = (f"Requantizer ({lanes} lanes, double rounding): {beats} beats of {lanes} accumulators offered "
               f"back to back, last result taken after {rq_cycles} cycles: "
               f"{beats * lanes / rq_cycles:.2f} results per cycle = {beats / rq_cycles:.3f} per cycle per lane "
               f"(the difference is the {rq_cycles - beats}-cycle pipeline fill).")
    out(rq_line)

    body = "\n".join([
        f"## Compute core ({cfg.rows}x{cfg.cols} output-stationary systolic array, RTL on Verilator)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}, by "
        "`python -m cnnacc.hw.bench_compute`. Cycles from the layer's `start` to `busy` falling, output always "
        f"ready; every result checked bit for bit against the golden model. Utilization = useful MACs / "
        f"({cfg.pes} PEs x cycles). Model: `cnnacc.host.cycles_conv.conv_cycles` (error vs RTL in brackets). "
        "WS: the weight-stationary alternative's utilization from its cycle model (not built), for the "
        f"dataflow decision. Simulation of the three layers: {conv_seconds:.0f} s wall (including any "
        "Verilator build).",
        "",
        "| layer | useful MACs | RTL cycles | PE utilization | model cycles | WS model |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        rq_line,
    ])
    write_section("compute", body)


if __name__ == "__main__":
    bench()
