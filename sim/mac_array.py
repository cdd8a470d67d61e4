"""Run :class:`cnnacc.hw.mac_array.MacArray` on a list of matrix products, in either simulator.

Both functions take ``a`` (a list of ``rows x K_i`` int8 matrices) and ``b`` (``K_i x cols``), and return
``(c, cycles)``: the ``n x rows x cols`` results the RTL produced and the clock cycles from the first beat
offered to the last result taken. ``bubble`` and ``stall`` are the probabilities of random valid-low and
ready-low cycles on the two streams.
"""

import random

import numpy as np
from amaranth.sim import Simulator

from ..hw.mac_array import MacArray
from .amaranth_streams import stream_get, stream_put
from .runner import run_cocotb

__all__ = ["run_amaranth", "run_rtl"]


def run_amaranth(config, a, b, *, seed=0, bubble=0.0, stall=0.0):
    dut = MacArray(config)
    rng = random.Random(seed)
    results = []
    cycles = 0

    async def producer(ctx):
        for a_i, b_i in zip(a, b):
            depth = a_i.shape[1]
            for k in range(depth):
                await stream_put(ctx, dut.i_operands, {
                    "act": a_i[:, k].tolist(), "wgt": b_i[k, :].tolist(),
                    "first": k == 0, "last": k == depth - 1,
                }, rng=rng, bubble_prob=bubble)

    async def consumer(ctx):
        for _ in range(len(a)):
            block = await stream_get(ctx, dut.o_result, rng=rng, stall_prob=stall)
            results.append([[int(v) for v in row] for row in block])

    async def clock_counter(ctx):
        nonlocal cycles
        async for _ in ctx.tick():
            cycles += 1

    # A generous bound on the cycles a correct design needs, so that a broken one fails instead of hanging.
    limit = (20 + 2 * sum(x.shape[1] + 1 for x in a)) * (1 + 20 * max(bubble, stall))
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(clock_counter, background=True)
    while sim.advance():
        if cycles > limit:
            raise RuntimeError(f"MacArray produced {len(results)} of {len(a)} results in {limit} cycles")
    return np.array(results, dtype=np.int64), cycles


def run_rtl(config, a, b, *, seed=0, bubble=0.0, stall=0.0, sim=None):
    run = run_cocotb(
        MacArray(config), toplevel="mac_array", test_module="cnnacc.sim.tb_mac_array", sim=sim,
        inputs=dict(a=np.concatenate(a, axis=1), b=np.concatenate(b, axis=0), depths=[x.shape[1] for x in a],
                    rows=config.rows, cols=config.cols, acc_width=config.acc_width,
                    seed=seed, bubble=bubble, stall=stall))
    return np.asarray(run.outputs["c"], dtype=np.int64), int(run.outputs["cycles"])
