"""Run :class:`cnnacc.hw.systolic_array.SystolicArray` on a list of tiles, in either simulator.

A tile is ``(wgt, act)``: ``wgt`` a ``K x rows`` and ``act`` a ``K x cols`` int8 matrix; its result is
``wgt.T @ act`` (``rows x cols``). :func:`run_amaranth` and :func:`run_rtl` return ``(results, cycles)``:
the ``n x rows x cols`` accumulators the RTL produced and the cycles from the first beat offered to the last
column taken. The cocotb test in this module is the RTL side of :func:`run_rtl`.
"""

import itertools
import random

import numpy as np
from amaranth.sim import Simulator

import cocotb

from ..config import AcceleratorConfig
from ..hw.systolic_array import SystolicArray, beat_layout, column_layout, min_tile_beats
from .amaranth_streams import stream_get, stream_put
from .cocotb_streams import stream_through
from .vendor_models import vendor_models
from .runner import run_cocotb, testbench_inputs, testbench_outputs

__all__ = ["run_amaranth", "run_rtl", "golden_tiles"]


def golden_tiles(tiles, acc_width=32):
    """``wgt.T @ act`` of every tile, wrapped to ``acc_width`` bits."""
    out = np.array([w.astype(np.int64).T @ a.astype(np.int64) for w, a in tiles])
    half = 1 << (acc_width - 1)
    return ((out + half) % (1 << acc_width)) - half


def _beats(tiles):
    for w, a in tiles:
        depth = w.shape[0]
        for k in range(depth):
            yield {"act": a[k].tolist(), "wgt": w[k].tolist(), "first": k == 0, "last": k == depth - 1}


def _assemble(config, columns, count):
    """Columns arrive in order, ``cols`` per tile; check that order and rebuild the tiles."""
    results = np.zeros((count, config.rows, config.cols), np.int64)
    for i, (col, acc) in enumerate(columns):
        if col != i % config.cols:
            raise AssertionError(f"output beat {i} is column {col}, expected {i % config.cols}")
        results[i // config.cols, :, col] = acc
    return results


def run_amaranth(config, tiles, *, seed=0, bubble=0.0, stall=0.0, stall_cycles=None):
    """``stall_cycles``: if given, the consumer takes a column only every that many cycles (a slow requantizer);
    the random ``stall`` then applies on top. Vendor primitives are built from their plain models here."""
    dut = SystolicArray(config, dsp_model=True)
    rng = random.Random(seed)
    columns = []
    cycles = 0

    async def producer(ctx):
        for beat in _beats(tiles):
            await stream_put(ctx, dut.i_beats, beat, rng=rng, bubble_prob=bubble)

    async def consumer(ctx):
        for _ in range(len(tiles) * config.cols):
            if stall_cycles and stall_cycles > 1:
                await ctx.tick().repeat(stall_cycles - 1)
            beat = await stream_get(ctx, dut.o_columns, rng=rng, stall_prob=stall)
            columns.append((int(beat.col), [int(v) for v in beat.acc]))

    async def clock_counter(ctx):
        nonlocal cycles
        async for _ in ctx.tick():
            cycles += 1

    beats = sum(max(w.shape[0], min_tile_beats(config)) + config.cols for w, _ in tiles) * (stall_cycles or 1)
    limit = (40 + 2 * beats + config.rows + config.cols) * (1 + 20 * max(bubble, stall))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(clock_counter, background=True)
    while sim.advance():
        if cycles > limit:
            raise RuntimeError(f"SystolicArray produced {len(columns)} of {len(tiles) * config.cols} columns "
                               f"in {limit} cycles (seed {seed})")
    return _assemble(config, columns, len(tiles)), cycles


def run_rtl(config, tiles, *, seed=0, bubble=0.0, stall=0.0, sim=None):
    """Under cocotb; an ice40 array runs its ``SB_MAC16`` instances on yosys's models."""
    run = run_cocotb(
        SystolicArray(config), toplevel="systolic_array", test_module="cnnacc.sim.tb_systolic_array", sim=sim,
        sources=vendor_models(config),
        inputs=dict(wgt=np.concatenate([w for w, _ in tiles]), act=np.concatenate([a for _, a in tiles]),
                    depths=[w.shape[0] for w, _ in tiles], rows=config.rows, cols=config.cols,
                    acc_width=config.acc_width, seed=seed, bubble=bubble, stall=stall))
    columns = [(int(c), acc) for c, acc in zip(run.outputs["col"], run.outputs["acc"])]
    return _assemble(config, columns, len(tiles)), int(run.outputs["cycles"])


@cocotb.test()
async def systolic_array_tiles(dut):
    args = testbench_inputs()
    config = AcceleratorConfig(rows=int(args["rows"]), cols=int(args["cols"]), acc_width=int(args["acc_width"]))
    split = list(itertools.accumulate(int(d) for d in args["depths"]))[:-1]
    tiles = list(zip(np.split(args["wgt"], split), np.split(args["act"], split)))
    rng = random.Random(int(args["seed"]))
    in_layout, out_layout = beat_layout(config), column_layout(config)
    beats = [in_layout.const(beat).as_bits() for beat in _beats(tiles)]

    raw, cycles = await stream_through(dut, "i_beats", "o_columns", beats, len(tiles) * config.cols, rng,
                                       float(args["bubble"]), float(args["stall"]))
    views = [out_layout.from_bits(bits) for bits in raw]
    testbench_outputs(col=np.array([int(v.col) for v in views]),
                      acc=np.array([[int(x) for x in v.acc] for v in views], np.int64), cycles=cycles)
