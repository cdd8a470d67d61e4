"""Reusable cocotb drivers for Amaranth ``lib.stream`` ports (``<name>__valid/ready/payload``).

Both take a ``random.Random`` and a probability: the driver inserts bubbles (valid low) and the receiver applies
back-pressure (ready low) at random, so every testbench exercises the stream handshake, not just the happy path.
"""

from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamSource", "StreamSink", "stream_through"]


class StreamSource:
    """Drives an input stream of the DUT with integer payloads."""

    def __init__(self, dut, name, clk, rng=None, bubble_prob=0.0):
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._clk = clk
        self._rng = rng
        self._bubble_prob = bubble_prob
        self._valid.value = 0

    async def send(self, payloads):
        """Send every payload in order; returns when the last one has been accepted."""
        for payload in payloads:
            while self._rng is not None and self._rng.random() < self._bubble_prob:
                self._valid.value = 0
                await RisingEdge(self._clk)
            self._valid.value = 1
            self._payload.value = payload
            while True:
                await ReadOnly()
                accepted = bool(self._ready.value)
                await RisingEdge(self._clk)
                if accepted:
                    break
        self._valid.value = 0


class StreamSink:
    """Receives from an output stream of the DUT, collecting integer payloads."""

    def __init__(self, dut, name, clk, rng=None, stall_prob=0.0):
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._clk = clk
        self._rng = rng
        self._stall_prob = stall_prob
        self._ready.value = 0

    async def receive(self, count):
        """Collect ``count`` payloads; returns them as a list of ints."""
        received = []
        while len(received) < count:
            stall = self._rng is not None and self._rng.random() < self._stall_prob
            self._ready.value = 0 if stall else 1
            await ReadOnly()
            if not stall and self._valid.value:
                received.append(int(self._payload.value))
            await RisingEdge(self._clk)
        self._ready.value = 0
        return received


async def stream_through(dut, in_name, out_name, beats, count, rng=None, bubble_prob=0.0, stall_prob=0.0,
                         period_ns=10):
    """Start a clock, reset the DUT, send ``beats`` into ``in_name`` and collect ``count`` payloads from
    ``out_name``; returns ``(payloads, cycles)``, the cycles counted from the first beat offered to the last
    payload taken."""
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles
    from cocotb.utils import get_sim_time
    import cocotb

    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    source = StreamSource(dut, in_name, dut.clk, rng, bubble_prob)
    sink = StreamSink(dut, out_name, dut.clk, rng, stall_prob)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    start = get_sim_time(unit="ns")
    cocotb.start_soon(source.send(beats))
    payloads = await sink.receive(count)
    return payloads, (get_sim_time(unit="ns") - start) // period_ns
