"""Run :class:`cnnacc.hw.conv_engine.ConvEngine` on one layer, in either simulator.

:func:`run_amaranth` and :func:`run_rtl` take the descriptor fields and memory images of
:func:`cnnacc.hw.conv_engine.node_job` (or :func:`~cnnacc.hw.conv_engine.conv_layer` and
:func:`~cnnacc.hw.conv_engine.memory_images`), fill the memories through the write ports, start the layer and
collect the output stream (with random back-pressure if ``stall``). They return ``(out, cycles)``: the
``[OH, OW, Cout]`` result and the cycles from ``start`` to ``busy`` falling. The cocotb test in this module is
the RTL side of :func:`run_rtl`; it keeps Python out of the loop while the layer runs when ``stall`` is 0.
"""

import random

import numpy as np
from amaranth.sim import Simulator

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from ..config import AcceleratorConfig
from ..hw.conv_engine import ConvEngine, ConvLayer, output_layout, scatter_outputs
from ..hw.requantizer import lane_params_layout
from .amaranth_streams import stream_get
from .runner import run_cocotb, testbench_inputs, testbench_outputs

__all__ = ["run_amaranth", "run_rtl", "output_beats"]


def output_beats(config, fields):
    """Number of output beats of a layer: one per output pixel and block of ``rows`` channels."""
    return fields["out_h"] * fields["out_w"] * -(-fields["out_c"] // config.rows)


def _param_words(params):
    return [[{"bias": int(b), "multiplier": int(mu), "shift": int(s)} for b, mu, s in block] for block in params]


def run_amaranth(config, fields, images, *, seed=0, stall=0.0, engine_args=None):
    dut = ConvEngine(config, **(engine_args or {}))
    act, wgt, params = images
    rng = random.Random(seed)
    beats, cycles = [], None
    count = output_beats(config, fields)

    async def driver(ctx):
        nonlocal cycles
        for port, words in ((dut.act_write, [w.tolist() for w in act]), (dut.weight_write, [w.tolist() for w in wgt]),
                            (dut.param_write, _param_words(params))):
            ctx.set(port.valid, 1)
            for addr, word in enumerate(words):
                ctx.set(port.payload, {"addr": addr, "data": word})
                await ctx.tick()
            ctx.set(port.valid, 0)
        ctx.set(dut.layer, fields)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = 1
        while ctx.get(dut.busy):
            await ctx.tick()
            n += 1
        cycles = n

    async def consumer(ctx):
        for _ in range(count):
            beat = await stream_get(ctx, dut.o_data, rng=rng, stall_prob=stall)
            beats.append((int(beat.pixel), int(beat.channel), [int(v) for v in beat.data]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(consumer)
    fill = len(act) + len(wgt) + len(params)
    sim.run_until(1e-8 * (200 + fill + 40 * (count + len(wgt) * 8) * (1 + 10 * stall)))
    if cycles is None or len(beats) != count:
        raise AssertionError(f"ConvEngine gave {len(beats)} of {count} output beats (seed {seed})")
    return scatter_outputs(config, fields, beats), cycles


def run_rtl(config, fields, images, *, seed=0, stall=0.0, engine_args=None, sim=None):
    act, wgt, params = images
    dut = ConvEngine(config, **(engine_args or {}))
    run = run_cocotb(dut, toplevel="conv_engine", test_module="cnnacc.sim.tb_conv_engine", sim=sim,
                     inputs=dict(act=act, wgt=wgt, params=params, fields=np.array(list(fields.values()), np.int64),
                                 field_names=np.array(list(fields.keys())), rows=config.rows, cols=config.cols,
                                 count=output_beats(config, fields), seed=seed, stall=stall))
    beats = [(int(p), int(c), d) for p, c, d in zip(run.outputs["pixel"], run.outputs["channel"], run.outputs["data"])]
    return scatter_outputs(config, fields, beats), int(run.outputs["cycles"])


@cocotb.test()
async def conv_engine_layer(dut):
    args = testbench_inputs()
    config = AcceleratorConfig(rows=int(args["rows"]), cols=int(args["cols"]))
    fields = {str(k): int(v) for k, v in zip(args["field_names"], args["fields"])}
    stall = float(args["stall"])
    rng = random.Random(int(args["seed"]))
    count = int(args["count"])
    rows = config.rows
    params_layout = lane_params_layout()

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.o_data__ready.value = 0
    for port in ("act_write", "weight_write", "param_write"):
        getattr(dut, f"{port}__valid").value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await FallingEdge(dut.clk)

    def word(values, width):
        return sum((int(v) & ((1 << width) - 1)) << (width * i) for i, v in enumerate(values))

    addr_bits = {}
    for port, words in (("act_write", [word(w, 8) for w in args["act"]]),
                        ("weight_write", [word(w, 8) for w in args["wgt"]]),
                        ("param_write", [sum(int(params_layout.const({"bias": int(b), "multiplier": int(mu),
                                                                        "shift": int(s)}).as_bits())
                                             << (70 * i) for i, (b, mu, s) in enumerate(block))
                                         for block in args["params"]])):
        valid = getattr(dut, f"{port}__valid")
        payload = getattr(dut, f"{port}__payload")
        addr_bits[port] = len(payload) - {"act_write": 8 * len(args["act"][0]), "weight_write": 8 * rows,
                                          "param_write": 70 * rows}[port]
        valid.value = 1
        for addr, value in enumerate(words):
            payload.value = addr | (value << addr_bits[port])
            await FallingEdge(dut.clk)
        valid.value = 0

    dut.layer.value = ConvLayer.const(fields).as_value().value
    dut.start.value = 1
    await FallingEdge(dut.clk)
    dut.start.value = 0
    start = cocotb.utils.get_sim_time(unit="ns")

    out_layout = output_layout(config)
    raw = []
    if stall == 0.0:
        # Always ready; the results are gathered by a monitor only on the cycles they are valid.
        dut.o_data__ready.value = 1

        async def monitor():
            while True:
                await RisingEdge(dut.o_data__valid)
                while True:
                    await ReadOnly()
                    if not dut.o_data__valid.value:
                        break
                    raw.append(int(dut.o_data__payload.value))
                    await RisingEdge(dut.clk)

        cocotb.start_soon(monitor())
        await FallingEdge(dut.busy)
    else:
        while len(raw) < count:
            stalled = rng.random() < stall
            dut.o_data__ready.value = 0 if stalled else 1
            await ReadOnly()
            if not stalled and dut.o_data__valid.value:
                raw.append(int(dut.o_data__payload.value))
            await RisingEdge(dut.clk)
        dut.o_data__ready.value = 0
        while dut.busy.value:
            await RisingEdge(dut.clk)
    cycles = (cocotb.utils.get_sim_time(unit="ns") - start) // 10
    views = [out_layout.from_bits(bits) for bits in raw]
    testbench_outputs(pixel=np.array([int(v.pixel) for v in views], np.int64),
                      channel=np.array([int(v.channel) for v in views], np.int64),
                      data=np.array([[int(x) for x in v.data] for v in views], np.int64).reshape(len(views), rows),
                      cycles=cycles)
