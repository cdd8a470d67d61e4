"""cocotb testbench for :class:`cnnacc.hw.window_generator.WindowGenerator`, and the stream plumbing that the
pooling and depthwise testbenches share.

The testbench is generic over streams: :func:`run_streams` hands it, for every input stream ``NAME`` of the
top level, the beats to send as little-endian payload bytes (``src_NAME``, uint8 ``[beats, bytes]``), and for
every output stream the number of beats to collect (``sink_NAME``). It drives them all at once with random
bubbles and back-pressure (``bubble``, ``stall``, ``seed``) and returns the collected payloads as bytes
(``got_NAME``) and ``cycles``, from the first beat offered until the last beat taken.
"""

import random

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, SimTimeoutError, with_timeout

from .cocotb_streams import StreamSink, StreamSource
from .runner import run_cocotb, testbench_inputs, testbench_outputs

__all__ = ["run_streams", "pack_payloads", "run_rtl"]


def pack_payloads(layout, values):
    """Payload bytes (uint8 ``[n, bytes]``) of ``values`` (dicts or lists) under an Amaranth ``layout``."""
    nbytes = (layout.size + 7) // 8
    out = np.zeros((len(values), nbytes), np.uint8)
    for n, value in enumerate(values):
        out[n] = np.frombuffer(layout.const(value).as_bits().to_bytes(nbytes, "little"), np.uint8)
    return out


def run_streams(design, toplevel, sources, sinks, *, seed=0, bubble=0.0, stall=0.0, sim=None, extra=None):
    """Run ``design`` under this testbench; ``sources`` maps stream names to payload bytes, ``sinks`` to
    beat counts. Returns ``(dict name -> uint8 [count, bytes], cycles)``."""
    inputs = {f"src_{name}": np.asarray(beats, np.uint8) for name, beats in sources.items()}
    inputs.update({f"sink_{name}": np.int64(count) for name, count in sinks.items()})
    # Generous: every beat in and out, each delayed by bubbles and stalls, plus pipeline and divider latency.
    beats = sum(len(b) for b in sources.values()) + sum(sinks.values())
    max_cycles = int((1000 + 40 * beats) * (1 + 10 * max(bubble, stall)))
    inputs.update(seed=seed, bubble=bubble, stall=stall, max_cycles=max_cycles, **(extra or {}))
    run = run_cocotb(design, toplevel=toplevel, test_module="cnnacc.sim.tb_window_generator", inputs=inputs,
                     sim=sim)
    got = {name: run.outputs[f"got_{name}"] for name in sinks}
    return got, int(run.outputs["cycles"])


def run_rtl(config, jobs, *, seed=0, bubble=0.0, stall=0.0, max_kernel=None, sim=None):
    """Run WindowGenerator on ``jobs`` (``(layer dict, planes [G, H, W, lanes])``); returns beats as tuples
    ``(taps [kmax, kmax, lanes], row_valid, col_valid, last_in_group, last)`` and the cycle count."""
    from ..hw.window_generator import WindowGenerator, window_layer_layout, window_output_shape
    dut = WindowGenerator(config, max_kernel=max_kernel)
    kmax = dut.max_kernel
    pixels = np.concatenate([p.reshape(-1, config.lanes) for _, p in jobs]).astype(np.int8).view(np.uint8)
    count = 0
    for layer, planes in jobs:
        oh, ow = window_output_shape(layer["height"], layer["width"], layer["kernel"], layer["stride"],
                                     (layer["pad_top"], layer["pad_bottom"], layer["pad_left"], layer["pad_right"]))
        count += layer["groups"] * oh * ow
    got, cycles = run_streams(
        dut, "window_generator",
        {"i_layer": pack_payloads(window_layer_layout(config, kmax), [layer for layer, _ in jobs]),
         "i_pixels": pixels},
        {"o_windows": count}, seed=seed, bubble=bubble, stall=stall, sim=sim)
    raw = got["o_windows"]
    ntaps = kmax * kmax * config.lanes
    taps = raw[:, :ntaps].view(np.int8).astype(np.int64).reshape(-1, kmax, kmax, config.lanes)
    flags = [int.from_bytes(row[ntaps:].tobytes(), "little") for row in raw]
    mask = (1 << kmax) - 1
    beats = [(taps[n], f & mask, (f >> kmax) & mask, (f >> 2 * kmax) & 1, (f >> (2 * kmax + 1)) & 1)
             for n, f in enumerate(flags)]
    return beats, cycles


@cocotb.test()
async def streams(dut):
    args = testbench_inputs()
    rng = random.Random(int(args["seed"]))
    bubble, stall = float(args["bubble"]), float(args["stall"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    sources = {}
    for key in args:
        if key.startswith("src_"):
            name = key[4:]
            payloads = [int.from_bytes(row.tobytes(), "little") for row in args[key]]
            sources[name] = (StreamSource(dut, name, dut.clk, rng, bubble), payloads)
    sinks = {key[5:]: (StreamSink(dut, key[5:], dut.clk, rng, stall), int(args[key]))
             for key in args if key.startswith("sink_")}

    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    start = cocotb.utils.get_sim_time(unit="ns")
    for source, payloads in sources.values():
        cocotb.start_soon(source.send(payloads))
    tasks = {name: cocotb.start_soon(sink.receive(count)) for name, (sink, count) in sinks.items()}
    results = {}
    # A design that deadlocks fails after max_cycles instead of hanging the test run.
    limit = int(args["max_cycles"]) * 10
    for name, task in tasks.items():
        try:
            results[name] = await with_timeout(task, max(1, limit - (cocotb.utils.get_sim_time(unit="ns") - start)),
                                               "ns")
        except SimTimeoutError:
            raise AssertionError(f"{name}: fewer than {sinks[name][1]} beats came out in {limit // 10} cycles") from None
    cycles = (cocotb.utils.get_sim_time(unit="ns") - start) // 10

    outputs = {"cycles": cycles}
    for name, values in results.items():
        nbytes = (len(getattr(dut, f"{name}__payload")) + 7) // 8
        outputs[f"got_{name}"] = np.array([np.frombuffer(v.to_bytes(nbytes, "little"), np.uint8) for v in values],
                                          np.uint8).reshape(len(values), nbytes)
    testbench_outputs(**outputs)
