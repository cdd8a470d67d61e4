"""Reusable cocotb drivers for Amaranth ``lib.stream`` ports (``<name>__valid/ready/payload``).

Both take a ``random.Random`` and a probability: the driver inserts bubbles (valid low) and the receiver applies
back-pressure (ready low) at random, so every testbench exercises the stream handshake, not just the happy path.
"""

from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamSource", "StreamSink"]


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
