"""cocotb testbench of the whole accelerator (hw/accelerator.py): runs a compiled program on the host bus.

The RTL backend (host/rtl_backend.py) hands over a pickled :class:`~cnnacc.host.program.Program`, the images,
and a ``mode``. The testbench runs the ordinary :class:`~cnnacc.host.driver.AcceleratorDriver` (the same one
the board uses) in a :func:`cocotb.bridge` thread; its transport turns each ``transact`` into words on
``i_host`` and collects the answer from ``o_host``, sleeping on ``o_host`` valid while an engine runs, so
Python stays out of the simulation's per-cycle loop.

Modes: ``"program"`` (run it, pipelined unless ``overlap`` is 0; outputs ``outputs``, the per-step stats and
each step's bus-inclusive cycles), ``"bad_engine"`` (a RUN with an unknown engine id, a RUN of the conv engine
with an all-zero layer, a NOP, then a pool run starved of input that the watchdog must abort, the same run with
its input, and a READ of its output: outputs every answer), ``"in_flight"`` (the commands of
:func:`in_flight_commands` around a starved run that only the watchdog ends: outputs every answer).
"""

import pickle
import time

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from ..host import protocol
from ..config import AcceleratorConfig
from ..hw.accelerator import DW_KERNEL, descriptor_words
from ..hw.depthwise import depthwise_layer
from ..hw.commands import EngineId, MemoryId
from ..hw.pool_engine import PoolMode, pool_layer
from ..host.driver import AcceleratorDriver, run_program
from ..host.program import ProgramError
from .cocotb_streams import StreamSource
from .runner import testbench_inputs, testbench_outputs

try:
    from cocotb import bridge, resume
except ImportError:     # cocotb 2.1 exports them lazily
    from cocotb._bridge import bridge, resume

__all__ = ["CocotbTransport", "in_flight_commands"]


class CocotbTransport:
    """``transact(words)`` on the DUT's host-bus streams, from a :func:`cocotb.bridge` thread."""

    def __init__(self, dut):
        self._dut = dut
        self._source = StreamSource(dut, "i_host", dut.clk)
        self.seconds = {}     # wall time per opcode, for the log
        dut.o_host__ready.value = 0

    async def _transact(self, words):
        dut = self._dut
        await self._source.send([(w & 0xFFFFFFFF) | ((i == len(words) - 1) << 32) for i, w in enumerate(words)])
        answer = []
        dut.o_host__ready.value = 1
        while True:
            await ReadOnly()
            if dut.o_host__valid.value:
                payload = int(dut.o_host__payload.value)
                answer.append(payload & 0xFFFFFFFF)
                await RisingEdge(dut.clk)
                if payload >> 32:
                    break
            else:
                # An engine is running: sleep until the answer starts.
                await RisingEdge(dut.o_host__valid)
        dut.o_host__ready.value = 0
        return answer

    def transact(self, words):
        started = time.monotonic()
        answer = resume(self._transact)(words)
        opcode = (words[0] >> 24) & 0xFF
        self.seconds[opcode] = self.seconds.get(opcode, 0.0) + time.monotonic() - started
        return answer


def in_flight_commands(config):
    """Commands (a list of ``(name, words)``) that probe the accelerator while a run is in flight: a max pool
    copy (1x1 kernel) of 16 pixels from ACT_A rows 0..15 to OUTPUT rows 0..15, started with only 8 input rows so
    that it starves until the watchdog aborts it; meanwhile transfers inside and outside what it owns, and
    another START. Then the same run with all its input, and the memories read back."""
    lanes = config.lanes
    words_per_row = lanes // 4
    x = np.arange(16 * lanes, dtype=np.int64).reshape(16, lanes) % 256 - 128
    pixels = protocol.pack_int8(x)
    far = config.vector_depth // 2          # a row of the other half

    def pool(in_count):
        layer = pool_layer(config, PoolMode.MAX, height=4, width=4, kernel=1, stride=1)
        return descriptor_words(config, EngineId.POOL, {"layer": {**layer, "mode": PoolMode.MAX}, "in_base": 0,
                                                        "in_count": in_count, "out_base": 0, "out_count": 16})
    other = list(range(1, words_per_row + 1))
    dw_layer = depthwise_layer(config, height=1, width=1, channels=lanes, padding=(1, 1, 1, 1), max_kernel=DW_KERNEL)
    depthwise = descriptor_words(config, EngineId.DEPTHWISE, {"layer": dw_layer, "in_base": 0, "in_count": 1,
                                                              "w_base": 0, "w_count": 1, "out_base": 0,
                                                              "out_count": 1})
    return [
        ("write_input", protocol.encode_write(MemoryId.ACT_A, 0, pixels)),
        ("start_starved", protocol.encode_start(pool(8))),
        ("status_running", protocol.encode_status()),
        ("write_owned", protocol.encode_write(MemoryId.ACT_A, 2 * words_per_row, [0] * words_per_row)),
        ("read_owned", protocol.encode_read(MemoryId.ACT_A, 7 * words_per_row + words_per_row - 1, 1)),
        ("write_far", protocol.encode_write(MemoryId.ACT_A, far * words_per_row, other)),
        ("read_far", protocol.encode_read(MemoryId.ACT_A, far * words_per_row, words_per_row)),
        ("read_unowned_row", protocol.encode_read(MemoryId.ACT_A, 8 * words_per_row, words_per_row)),
        ("write_output", protocol.encode_write(MemoryId.OUTPUT, far * words_per_row, other)),
        ("read_output_owned", protocol.encode_read(MemoryId.OUTPUT, 15 * words_per_row, 1)),
        ("read_output_far", protocol.encode_read(MemoryId.OUTPUT, far * words_per_row, 1)),
        ("write_conv_act", protocol.encode_write(MemoryId.CONV_ACT, 0, [5])),
        ("start_busy", protocol.encode_start(pool(16))),
        ("run_busy", protocol.encode_run(pool(16))),
        ("wait_starved", protocol.encode_wait()),
        ("wait_idle", protocol.encode_wait()),
        ("read_input", protocol.encode_read(MemoryId.ACT_A, 0, len(pixels))),
        ("start_good", protocol.encode_start(pool(16))),
        ("wait_good", protocol.encode_wait()),
        ("read_output", protocol.encode_read(MemoryId.OUTPUT, 0, len(pixels))),
        ("start_unknown", protocol.encode_start([0x7F, 0, 0])),
        ("wait_after_reject", protocol.encode_wait()),
        # Engines and memories that only some configurations have: a valid one-pixel depthwise run, a write
        # into the depthwise weights and into the add engine's second map.
        ("start_depthwise", protocol.encode_start(depthwise)),
        ("wait_depthwise", protocol.encode_wait()),
        ("write_dw_weights", protocol.encode_write(MemoryId.DW_WEIGHTS, 0, [1])),
        ("write_act_b", protocol.encode_write(MemoryId.ACT_B, 0, [1])),
        ("pixels", pixels),
    ]


@cocotb.test()
async def accelerator_program(dut):
    args = testbench_inputs()
    mode = str(args["mode"])
    # The clock runs in the simulator (GPI), not in Python: Python then wakes only on the triggers it awaits.
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns", impl="gpi").start())
    dut.rst.value = 1
    dut.i_host__valid.value = 0
    dut.o_host__ready.value = 0
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    transport = CocotbTransport(dut)

    if mode == "in_flight":
        def field(name, value):
            if name == "engines":
                return tuple(str(e) for e in value)
            return str(value) if name == "target" else int(value)
        config = AcceleratorConfig(**{k[7:]: field(k[7:], v) for k, v in args.items() if k.startswith("config_")})
        commands = in_flight_commands(config)

        def probe():
            return [transport.transact(words) for _, words in commands[:-1]]
        answers = await bridge(probe)()
        testbench_outputs(**{f"answer{i}": np.array(a, np.int64) for i, a in enumerate(answers)})
        return

    if mode == "bad_engine":
        words = int(args["conv_words"])

        config = AcceleratorConfig()
        x = np.arange(16 * config.lanes, dtype=np.int64).reshape(16, config.lanes) % 256 - 128
        pixels = protocol.pack_int8(x)

        def pool_run(in_count):
            # Max pool with a 1x1 kernel (a copy) over a 4x4 map: 16 input rows.
            layer = pool_layer(config, PoolMode.MAX, height=4, width=4, kernel=1, stride=1)
            return protocol.encode_run(descriptor_words(config, EngineId.POOL, {
                "layer": {**layer, "mode": PoolMode.MAX}, "in_base": 0, "in_count": in_count, "out_base": 0,
                "out_count": 16}))

        def probe():
            answers = [transport.transact(protocol.encode_run([0x7F, 0, 0])),
                       transport.transact(protocol.encode_run([int(EngineId.CONV.value)] + [0] * words)),
                       transport.transact(protocol.encode_nop()),
                       transport.transact(protocol.encode_write(MemoryId.ACT_A, 0, pixels)),
                       # Half the pixels the layer needs: the engine starves until the watchdog aborts it.
                       transport.transact(pool_run(8)),
                       # The same layer with all its pixels must then run normally.
                       transport.transact(pool_run(16)),
                       transport.transact(protocol.encode_read(MemoryId.OUTPUT, 0, len(pixels)))]
            return answers
        answers = await bridge(probe)()
        answers.append(pixels)
        testbench_outputs(**{f"answer{i}": np.array(a, np.int64) for i, a in enumerate(answers)})
        return

    with open(str(args["program"]), "rb") as f:
        program = pickle.load(f)
    images = args["images"]
    config = program.config
    started = time.monotonic()

    driver = AcceleratorDriver(transport, config, overlap=bool(int(args["overlap"])))

    def work():
        try:
            return run_program(driver, program, images, log=dut._log.info)
        except ProgramError as exc:
            return str(exc)

    result = await bridge(work)()
    if isinstance(result, str):
        testbench_outputs(error=np.array(result))
        return
    outputs, stats = result
    dut._log.info("wall seconds per opcode: %s", transport.seconds)
    names = [step.name for step in program.steps]
    table = np.array([[[s[n]["cycles"], s[n]["words_in"], s[n]["words_out"]] for n in names] for s in stats],
                     np.int64)
    bus = np.array([driver.bus_cycles[n] for n in names], np.int64)
    testbench_outputs(outputs=outputs, stats=table, bus=bus, wall=np.array(time.monotonic() - started))
