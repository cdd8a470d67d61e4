"""cocotb testbench of the whole board (boards/core.py: UART pins, serial bridge, accelerator, LEDs).

The host side is the real one: :class:`~cnnacc.host.board_backend.BoardBackend` (SerialLink + the
AcceleratorDriver) runs in a :func:`cocotb.bridge` thread against :class:`PinPort`, a pyserial-like byte port
whose ``write`` drives the ``rx`` pin bit by bit and whose ``read`` returns the bytes a sampler decoded from the
``tx`` pin. Python wakes once per run of equal bits on ``rx`` and once per bit on ``tx`` (Timers), never per
clock. :class:`LineFaults` flips bits and drops bytes on either direction of the line.

Inputs (from :class:`cnnacc.host.board_backend.SimulatedBoard`): ``program`` (a pickled Program), ``images``,
``divisor``, ``frame_words``, ``timeout`` and ``gap`` (seconds of simulated time), ``retries``, and ``phases``: one row
``(flip, drop towards the board, flip, drop from the board, seed)`` per pass of the program over the images, each
with a fresh driver (so weights are sent again) and its own faults. Outputs per phase ``i``: ``outputs{i}`` or ``error{i}``, ``link{i}`` (frames,
retries, NAKs, damaged answers, timeouts), ``faults{i}`` (to the board, from the board), ``sim_ns{i}``,
``wall{i}``, ``stats{i}`` (cycles per step and image), and ``leds`` sampled at the end.
"""

import pickle
import random
import time

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, Timer
from cocotb.utils import get_sim_time

from ..host.board_backend import BoardBackend, BoardError
from .runner import testbench_inputs, testbench_outputs

try:
    from cocotb import bridge, resume
except ImportError:     # cocotb 2.1 exports them lazily
    from cocotb._bridge import bridge, resume

__all__ = ["LineFaults", "PinPort", "PERIOD_NS"]

#: Simulated clock period.
PERIOD_NS = 10


class LineFaults:
    """Per byte on one direction of the line: with probability ``drop`` the byte is lost, else with probability
    ``flip`` one of its data bits is inverted."""

    def __init__(self, flip=0.0, drop=0.0, seed=0):
        self.flip, self.drop = flip, drop
        self._rng = random.Random(seed)
        self.count = 0

    def __call__(self, byte):
        """The byte as it arrives, or None if it is lost."""
        if self._rng.random() < self.drop:
            self.count += 1
            return None
        if self._rng.random() < self.flip:
            self.count += 1
            return byte ^ (1 << self._rng.randrange(8))
        return byte


class PinPort:
    """pyserial's ``write``/``read`` on the DUT's ``rx``/``tx`` pins, called from a :func:`cocotb.bridge` thread.

    Parameters
    ----------
    dut : cocotb handle
        Has ``clk``, ``rx`` (driven here) and ``tx`` (sampled here).
    divisor : int
        Clock cycles per UART bit, as the design was built with.
    """

    def __init__(self, dut, divisor):
        self._dut = dut
        self._bit_ns = divisor * PERIOD_NS
        self._received = bytearray()
        self._arrived = Event()
        self._now = 0.0
        self.to_board = LineFaults()
        self.from_board = LineFaults()
        self.framing_errors = 0
        dut.rx.value = 1

    def set_faults(self, to_board, from_board, seed):
        """``to_board``/``from_board``: ``(flip, drop)`` probabilities per byte on each direction."""
        self.to_board = LineFaults(*to_board, seed=seed)
        self.from_board = LineFaults(*from_board, seed=seed + 1)
        self.framing_errors = 0

    async def sample(self):
        """Decode bytes from ``tx`` forever: find the start bit's falling edge, sample each bit in its middle."""
        tx = self._dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(self._bit_ns * 3 // 2, "ns")
            byte = 0
            for i in range(8):
                byte |= int(tx.value) << i
                await Timer(self._bit_ns, "ns")
            if not int(tx.value):
                self.framing_errors += 1
                continue
            byte = self.from_board(byte)
            if byte is not None:
                self._received.append(byte)
                self._arrived.set()

    async def _write(self, data):
        rx = self._dut.rx
        await FallingEdge(self._dut.clk)     # change the pin away from the clock edge the design samples on
        for byte in data:
            byte = self.to_board(byte)
            if byte is None:
                continue
            bits = [0] + [(byte >> i) & 1 for i in range(8)] + [1]
            i = 0
            while i < 10:
                j = i
                while j < 10 and bits[j] == bits[i]:
                    j += 1
                rx.value = bits[i]
                await Timer(self._bit_ns * (j - i), "ns")
                i = j
        self._now = get_sim_time("ns") * 1e-9

    async def _read(self, n):
        if not self._received:
            # Nothing yet (an engine may be running): sleep until a byte arrives, at most 256 byte times.
            self._arrived.clear()
            await First(self._arrived.wait(), Timer(self._bit_ns * 10 * 256, "ns"))
        # Let the rest of a frame stream in rather than handing it over a byte at a time.
        while self._received and len(self._received) < n:
            before = len(self._received)
            self._arrived.clear()
            await First(self._arrived.wait(), Timer(self._bit_ns * 10 * 2, "ns"))
            if len(self._received) == before:
                break
        out = bytes(self._received[:n])
        del self._received[:n]
        self._now = get_sim_time("ns") * 1e-9
        return out

    def write(self, data):
        resume(self._write)(bytes(data))
        return len(data)

    def read(self, n):
        return resume(self._read)(n)

    def clock(self):
        """Simulated seconds (what the link's timeouts count in)."""
        return self._now


@cocotb.test()
async def board_program(dut):
    args = testbench_inputs()
    divisor = int(args["divisor"])
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns", impl="gpi").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    port = PinPort(dut, divisor)
    cocotb.start_soon(port.sample())

    with open(str(args["program"]), "rb") as f:
        program = pickle.load(f)
    images = args["images"]
    results = {}
    for i, (flip_to, drop_to, flip_from, drop_from, seed) in enumerate(args["phases"].tolist()):
        port.set_faults((flip_to, drop_to), (flip_from, drop_from), int(seed))
        started_ns, started = get_sim_time("ns"), time.monotonic()

        def work():
            backend = BoardBackend(port, max_words=int(args["frame_words"]), timeout=float(args["timeout"]),
                                   retries=int(args["retries"]), gap=float(args["gap"]), clock=port.clock,
                                   name="simulated UART")
            try:
                outputs, stats = backend.run(program, images, log=dut._log.info)
            except BoardError as exc:
                return str(exc), None, backend.link.stats
            return outputs, stats, backend.link.stats

        outputs, stats, link = await bridge(work)()
        if isinstance(outputs, str):
            results[f"error{i}"] = np.array(outputs)
        else:
            names = [step.name for step in program.steps]
            results[f"outputs{i}"] = outputs
            results[f"stats{i}"] = np.array([[s[n]["cycles"] for n in names] for s in stats], np.int64)
        results[f"link{i}"] = np.array([link[k] for k in ("frames", "retries", "naks", "damaged", "timeouts")])
        results[f"faults{i}"] = np.array([port.to_board.count, port.from_board.count, port.framing_errors])
        results[f"sim_ns{i}"] = np.array(get_sim_time("ns") - started_ns)
        results[f"wall{i}"] = np.array(time.monotonic() - started)
        dut._log.info("phase %d: link %s, faults %s, %.1f s", i, link, results[f"faults{i}"], results[f"wall{i}"])
    results["leds"] = np.array(int(dut.leds.value))
    testbench_outputs(**results)
