"""The ice40 conv engine (SB_MAC16 array on yosys's cells_sim.v, one serial requantizer lane, one parameter lane
a memory row) under cocotb + Verilator: bit for bit against the golden model and cycle for cycle against the
cycle model (host/cycles_conv.py).

The ice40 engine's ``param_write`` port takes one lane a write (:func:`cnnacc.hw.conv_engine.param_write_signature`),
which sim/tb_conv_engine.py does not drive yet, so this module carries its own cocotb testbench
(:func:`ice40_conv_layers`), run with this directory on ``PYTHONPATH``.
"""

import os
import random
from dataclasses import replace
from pathlib import Path

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from cnnacc.boards.configs import ICEBREAKER_CONFIG
from cnnacc.hw.conv_engine import ConvEngine, ConvLayer, output_layout, scatter_outputs
from cnnacc.hw.requantizer import lane_params_layout
from cnnacc.sim import runner
from cnnacc.sim.vendor_models import vendor_models

#: The iCEBreaker's engine with memories just big enough for these layers (a faster Verilator build).
ICE40 = replace(ICEBREAKER_CONFIG, conv_act_depth=64, conv_weight_depth=256, conv_param_depth=8)


def run_ice40_layers(config, jobs, *, seed=0, stall=None):
    """``jobs``: ``(fields, images)`` of :func:`~cnnacc.hw.conv_engine.node_job`, run one after the other on one
    engine; ``stall``: per job, the probability of back-pressure on ``o_data``. Returns ``[(out, cycles)]``."""
    stall = [0.0] * len(jobs) if stall is None else list(stall)
    inputs = dict(rows=config.rows, cols=config.cols, seed=seed, jobs=len(jobs),
                  field_names=np.array(list(jobs[0][0].keys())))
    for i, (fields, (act, wgt, params)) in enumerate(jobs):
        inputs.update({f"act{i}": act, f"wgt{i}": wgt, f"params{i}": params, f"stall{i}": stall[i],
                       f"fields{i}": np.array(list(fields.values()), np.int64),
                       f"count{i}": fields["out_h"] * fields["out_w"] * -(-fields["out_c"] // config.rows)})
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    run = runner.run_cocotb(ConvEngine(config), toplevel="conv_engine_ice40", test_module=Path(__file__).stem,
                     inputs=inputs, sources=vendor_models(config), extra_env={"PYTHONPATH": path})
    results = []
    for i, (fields, _) in enumerate(jobs):
        out = run.outputs
        beats = [(int(p), int(c), d) for p, c, d in zip(out[f"pixel{i}"], out[f"channel{i}"], out[f"data{i}"])]
        results.append((scatter_outputs(config, fields, beats), int(out[f"cycles{i}"])))
    return results


@cocotb.test()
async def ice40_conv_layers(dut):
    """Fill the memories of each job (parameters one lane a write), start, collect, count cycles from the edge
    that samples ``start`` to ``busy`` falling."""
    args = runner.testbench_inputs()
    rows, cols = int(args["rows"]), int(args["cols"])
    rng = random.Random(int(args["seed"]))
    params_layout = lane_params_layout()
    out_layout = output_layout(replace(ICE40, rows=rows, cols=cols))

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

    async def write(port, words, data_width):
        valid, payload = getattr(dut, f"{port}__valid"), getattr(dut, f"{port}__payload")
        addr_bits = len(payload) - data_width
        for addr, value in words:
            valid.value = 1
            payload.value = addr | (value << addr_bits)
            await FallingEdge(dut.clk)
        valid.value = 0

    outputs = {}
    for job in range(int(args["jobs"])):
        fields = {str(k): int(v) for k, v in zip(args["field_names"], args[f"fields{job}"])}
        stall, count = float(args[f"stall{job}"]), int(args[f"count{job}"])
        act, wgt = args[f"act{job}"], args[f"wgt{job}"]
        await write("act_write", [(fields["act_base"] + a, word(w, 8)) for a, w in enumerate(act)], 8 * len(act[0]))
        await write("weight_write", [(fields["weight_base"] + a, word(w, 8)) for a, w in enumerate(wgt)], 8 * rows)
        lanes = [((fields["param_base"] + t) * rows + r,
                  int(params_layout.const({"bias": int(b), "multiplier": int(mu), "shift": int(s)}).as_bits()))
                 for t, block in enumerate(args[f"params{job}"]) for r, (b, mu, s) in enumerate(block)]
        rng.shuffle(lanes)          # one lane a write, in any order
        await write("param_write", lanes, params_layout.size)

        dut.layer.value = ConvLayer.const(fields).as_value().value
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        start_edge = cocotb.utils.get_sim_time(unit="ns") - 5
        raw = []
        while len(raw) < count:
            stalled = rng.random() < stall
            dut.o_data__ready.value = 0 if stalled else 1
            await ReadOnly()
            if not stalled and dut.o_data__valid.value:
                raw.append(int(dut.o_data__payload.value))
            await RisingEdge(dut.clk)
        dut.o_data__ready.value = 0
        while True:
            await ReadOnly()
            if not dut.busy.value:
                break
            await RisingEdge(dut.clk)
        end = cocotb.utils.get_sim_time(unit="ns")
        await FallingEdge(dut.clk)
        views = [out_layout.from_bits(bits) for bits in raw]
        outputs.update({
            f"pixel{job}": np.array([int(v.pixel) for v in views], np.int64),
            f"channel{job}": np.array([int(v.channel) for v in views], np.int64),
            f"data{job}": np.array([[int(x) for x in v.data] for v in views], np.int64).reshape(len(views), rows),
            f"cycles{job}": (end - start_edge) // 10 + 1,
        })
    runner.testbench_outputs(**outputs)


# --- pytest side --------------------------------------------------------------------------------------------------

def _layers():
    """Layers that cover the ice40 output path: every column of the last tile (both ends of the drain formula),
    tiles shallower than a column's drain, partial tiles inside a layer, a partial channel block, stride 2, VALID,
    single rounding, fully connected, the int8 extremes into both clamps, and a job placed past the start of every
    memory."""
    from test_conv_engine import conv_node, fc_node, random_layer
    return [
        (random_layer(2), 0.3),
        (random_layer(4), 0.3),
        (conv_node(10, 4, 5, 3, 4, 3, 1, (1, 1, 1, 1), zp_in=-128, extreme=True, out_scale=0.05), 0.0),
        (conv_node(12, 1, 2, 2, 3, 5, 1, (2, 2, 2, 2), activation="relu6", zp_out=-128), 0.0),
        (conv_node(13, 7, 9, 2, 6, 3, 2, (1, 1, 1, 1)), 0.0),                # stride 2, SAME; 5 of 8 channels
        (conv_node(14, 3, 5, 1, 5, 1), 0.0),                                  # Cin = 1: 1-beat tiles
        (conv_node(15, 6, 6, 3, 5, 5, 1, (0, 0, 0, 0), rounding="single"), 0.0),   # VALID, 2x2 out
        (conv_node(19, 3, 3, 2, 4, 1), 0.0),                                  # 9 pixels: last column 0
        (conv_node(20, 2, 3, 2, 4, 1, activation="relu"), 0.0),              # 6 pixels: last column 1
        (conv_node(21, 4, 4, 2, 4, 1), 0.0),                                  # 16 pixels: last column 3
        (conv_node(22, 3, 3, 2, 9, 1), 0.0),                  # 9 pixels, 3 channel blocks: partial tiles mid-layer
        (fc_node(16), 0.0),
    ]


def test_ice40_engine_bit_exact_and_cycle_exact():
    from test_conv_engine import golden_out
    from cnnacc.host.cycles_conv import conv_cycles, conv_schedule
    from cnnacc.hw.conv_engine import node_job
    from cnnacc.hw.requantizer import check_shifts

    cases = _layers()
    jobs = []
    for (node, x), _ in cases:
        check_shifts("ice40", node.requant.mode, node.requant.shift, node.name)
        jobs.append(node_job(ICE40, node, x[0]))
    jobs[5] = (dict(jobs[5][0], act_base=7, weight_base=9, param_base=3), jobs[5][1])
    # The drain formula's two branches: every last column of a tile occurs.
    assert {conv_schedule(ICE40, f).last_column for f, _ in jobs} == set(range(ICE40.cols))
    results = run_ice40_layers(ICE40, jobs, seed=7, stall=[stall for _, stall in cases])
    for i, (((node, x), stall), (fields, _), (got, cycles)) in enumerate(zip(cases, jobs, results)):
        np.testing.assert_array_equal(got, golden_out(node, x).reshape(got.shape), err_msg=f"layer {i}, seed 7")
        if stall == 0.0:
            assert cycles == conv_cycles(ICE40, fields), f"layer {i}: RTL {cycles}, model {conv_cycles(ICE40, fields)}"
