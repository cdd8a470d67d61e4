"""Run :class:`cnnacc.hw.conv_engine.ConvEngine` on one layer, in either simulator.

:func:`run_amaranth` and :func:`run_rtl` take the descriptor fields and memory images of
:func:`cnnacc.hw.conv_engine.node_job` (or :func:`~cnnacc.hw.conv_engine.conv_layer` and
:func:`~cnnacc.hw.conv_engine.memory_images`), fill the memories through the write ports, start the layer and
collect the output stream (with random bubbles on the writes if ``bubble`` and random back-pressure on the
output if ``stall``). They return ``(out, cycles)``: the
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
from .vendor_models import vendor_models
from .amaranth_streams import stream_get
from .runner import run_cocotb, testbench_inputs, testbench_outputs

__all__ = ["run_amaranth", "run_rtl", "run_rtl_layers", "output_beats"]


def output_beats(config, fields):
    """Number of output beats of a layer: one per output pixel and block of ``rows`` channels."""
    return fields["out_h"] * fields["out_w"] * -(-fields["out_c"] // config.rows)


def _param_words(params):
    return [[{"bias": int(b), "multiplier": int(mu), "shift": int(s)} for b, mu, s in block] for block in params]


def run_amaranth(config, fields, images, *, seed=0, bubble=0.0, stall=0.0, engine_args=None):
    dut = ConvEngine(config, **(engine_args or {}))
    act, wgt, params = images
    rng = random.Random(seed)
    beats, cycles = [], None
    count = output_beats(config, fields)

    async def driver(ctx):
        nonlocal cycles
        # Each image goes to its base (``*_base`` of the layer); the words below a base get garbage, so an engine
        # that ignored the base would compute with it.
        for port, words, base in ((dut.act_write, [w.tolist() for w in act], fields.get("act_base", 0)),
                                  (dut.weight_write, [w.tolist() for w in wgt], fields.get("weight_base", 0)),
                                  (dut.param_write, _param_words(params), fields.get("param_base", 0))):
            words = words[:1] * base + words if base else words
            if base:
                garbage = [[(v + 1) % 100 if not isinstance(v, dict) else {**v, "bias": v["bias"] + 1}
                            for v in words[0]]] * base
                words = garbage + words[base:]
            for addr, word in enumerate(words):
                while rng.random() < bubble:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                ctx.set(port.valid, 1)
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
    fill = len(act) + len(wgt) + len(params) + sum(fields.get(k, 0) for k in ("act_base", "weight_base",
                                                                                  "param_base"))
    sim.run_until(1e-8 * (200 + fill * (1 + 10 * bubble) + 40 * (count + len(wgt) * 8) * (1 + 10 * stall)))
    if cycles is None or len(beats) != count:
        raise AssertionError(f"ConvEngine gave {len(beats)} of {count} output beats (seed {seed})")
    return scatter_outputs(config, fields, beats), cycles


def run_rtl(config, fields, images, *, seed=0, bubble=0.0, stall=0.0, engine_args=None, sim=None):
    """One layer on the RTL; see :func:`run_rtl_layers`."""
    return run_rtl_layers(config, [(fields, images)], seed=seed, bubble=bubble, stall=[stall],
                          engine_args=engine_args, sim=sim)[0]


def run_rtl_layers(config, jobs, *, seed=0, bubble=0.0, stall=None, engine_args=None, sim=None):
    """Several layers, one after the other on one engine in one simulation (the simulator starts once).

    ``jobs`` is a list of ``(fields, images)``; ``stall`` a list with the back-pressure probability of each.
    Returns a list of ``(out, cycles)``.
    """
    stall = [0.0] * len(jobs) if stall is None else list(stall)
    inputs = dict(rows=config.rows, cols=config.cols, seed=seed, bubble=bubble, jobs=len(jobs))
    for i, (fields, (act, wgt, params)) in enumerate(jobs):
        inputs.update({f"act{i}": act, f"wgt{i}": wgt, f"params{i}": params, f"stall{i}": stall[i],
                       f"fields{i}": np.array(list(fields.values()), np.int64),
                       f"count{i}": output_beats(config, fields)})
    inputs["field_names"] = np.array(list(jobs[0][0].keys()))
    dut = ConvEngine(config, **(engine_args or {}))
    run = run_cocotb(dut, toplevel="conv_engine", test_module="cnnacc.sim.tb_conv_engine", sim=sim, inputs=inputs,
                     sources=vendor_models(config))
    results = []
    for i, (fields, _) in enumerate(jobs):
        out = run.outputs
        beats = [(int(p), int(c), d) for p, c, d in zip(out[f"pixel{i}"], out[f"channel{i}"], out[f"data{i}"])]
        results.append((scatter_outputs(config, fields, beats), int(out[f"cycles{i}"])))
    return results


#: Cycles without a result (or, after the last one, without ``busy`` falling) after which a layer fails.
_IDLE_LIMIT = 20_000


@cocotb.test()
async def conv_engine_layers(dut):
    args = testbench_inputs()
    config = AcceleratorConfig(rows=int(args["rows"]), cols=int(args["cols"]))
    rng = random.Random(int(args["seed"]))
    bubble = float(args["bubble"])
    rows = config.rows
    params_layout = lane_params_layout()
    out_layout = output_layout(config)

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

    outputs = {}
    for job in range(int(args["jobs"])):
        fields = {str(k): int(v) for k, v in zip(args["field_names"], args[f"fields{job}"])}
        stall = float(args[f"stall{job}"])
        count = int(args[f"count{job}"])
        params = args[f"params{job}"]
        param_words = [sum(int(params_layout.const({"bias": int(b), "multiplier": int(mu), "shift": int(s)}).as_bits())
                           << (70 * i) for i, (b, mu, s) in enumerate(block)) for block in params]
        for port, words, width, base in (
                ("act_write", [word(w, 8) for w in args[f"act{job}"]], 8 * len(args[f"act{job}"][0]),
                 fields.get("act_base", 0)),
                ("weight_write", [word(w, 8) for w in args[f"wgt{job}"]], 8 * rows, fields.get("weight_base", 0)),
                ("param_write", param_words, 70 * rows, fields.get("param_base", 0))):
            valid = getattr(dut, f"{port}__valid")
            payload = getattr(dut, f"{port}__payload")
            addr_bits = len(payload) - width
            for addr, value in enumerate(words):
                while rng.random() < bubble:
                    valid.value = 0
                    await FallingEdge(dut.clk)
                valid.value = 1
                payload.value = (base + addr) | (value << addr_bits)
                await FallingEdge(dut.clk)
            valid.value = 0

        dut.layer.value = ConvLayer.const(fields).as_value().value
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        # The rising edge that sampled start counts as the first cycle.
        start_edge = cocotb.utils.get_sim_time(unit="ns") - 5

        raw = []
        if stall == 0.0:
            # Always ready; a monitor wakes only while results are valid, so Python stays out of most cycles.
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

            watcher = cocotb.start_soon(monitor())
            await FallingEdge(dut.busy)
            end = cocotb.utils.get_sim_time(unit="ns")
            await FallingEdge(dut.clk)
            watcher.cancel()
        else:
            # A layer whose results stop coming (a wrong count, a lost tile) fails here instead of hanging: no
            # tile of these tests takes _IDLE_LIMIT cycles between two results.
            idle = 0
            while len(raw) < count and idle < _IDLE_LIMIT:
                stalled = rng.random() < stall
                dut.o_data__ready.value = 0 if stalled else 1
                await ReadOnly()
                idle += 1
                if not stalled and dut.o_data__valid.value:
                    raw.append(int(dut.o_data__payload.value))
                    idle = 0
                await RisingEdge(dut.clk)
            dut.o_data__ready.value = 0
            for _ in range(_IDLE_LIMIT):
                await ReadOnly()
                if not dut.busy.value:
                    break
                await RisingEdge(dut.clk)
            assert not dut.busy.value, f"layer {job}: still busy {_IDLE_LIMIT} cycles after its last result"
            end = cocotb.utils.get_sim_time(unit="ns")
            await FallingEdge(dut.clk)
        dut.o_data__ready.value = 0
        assert len(raw) == count, f"layer {job}: {len(raw)} output beats, expected {count}"
        views = [out_layout.from_bits(bits) for bits in raw]
        outputs.update({
            f"pixel{job}": np.array([int(v.pixel) for v in views], np.int64),
            f"channel{job}": np.array([int(v.channel) for v in views], np.int64),
            f"data{job}": np.array([[int(x) for x in v.data] for v in views], np.int64).reshape(len(views), rows),
            f"cycles{job}": (end - start_edge) // 10 + 1,
        })
    testbench_outputs(**outputs)
