"""A byte port (pyserial's ``write``/``read``) onto a design simulated in the Amaranth simulator, with fault
injection on the line, so that :class:`cnnacc.host.serial_link.SerialLink` can be tested byte for byte.

``read`` advances simulated time by ``cycles_per_read`` cycles and returns what the design sent meanwhile;
``clock()`` returns simulated seconds, which is what the link's timeouts then count in.
"""

import random
from collections import deque

from amaranth.sim import Simulator

__all__ = ["SimulatedSerialPort"]


class SimulatedSerialPort:
    """Parameters
    ----------
    dut : Elaboratable
        The design; ``rx`` and ``tx`` are its byte streams towards and from the host.
    flip, drop : float
        Probabilities per byte, on each direction, of one flipped bit and of a lost byte.
    stop_faults_after : int or None
        Bytes after which the line becomes clean (so a test can check recovery).
    """

    def __init__(self, dut, rx, tx, *, seed=0, flip=0.0, drop=0.0, stop_faults_after=None,
                 cycles_per_read=64, period=1e-8):
        self._rng = random.Random(seed)
        self._flip, self._drop = flip, drop
        self._clean_after = stop_faults_after
        self._bytes_seen = 0
        self._to_dut = deque()
        self._from_dut = bytearray()
        self._period = period
        self._cycles_per_read = cycles_per_read
        self._now = 0.0
        self.faults = 0

        self.sim = Simulator(dut)
        self.sim.add_clock(period)

        async def feeder(ctx):
            while True:
                if not self._to_dut:
                    await ctx.tick()
                    continue
                ctx.set(rx.valid, 1)
                ctx.set(rx.payload, self._to_dut.popleft())
                await ctx.tick().until(rx.ready)
                ctx.set(rx.valid, 0)

        async def collector(ctx):
            ctx.set(tx.ready, 1)
            async for _, _, valid, payload in ctx.tick().sample(tx.valid, tx.payload):
                if valid:
                    byte = self._fault(payload)
                    if byte is not None:
                        self._from_dut.append(byte)

        self.sim.add_testbench(feeder, background=True)
        self.sim.add_testbench(collector, background=True)

    def _fault(self, byte):
        self._bytes_seen += 1
        if self._clean_after is not None and self._bytes_seen > self._clean_after:
            return byte
        if self._rng.random() < self._drop:
            self.faults += 1
            return None
        if self._rng.random() < self._flip:
            self.faults += 1
            return byte ^ (1 << self._rng.randrange(8))
        return byte

    def write(self, data):
        for byte in data:
            byte = self._fault(byte)
            if byte is not None:
                self._to_dut.append(byte)
        return len(data)

    def read(self, n):
        self._now += self._cycles_per_read * self._period
        self.sim.run_until(self._now)
        out = bytes(self._from_dut[:n])
        del self._from_dut[:n]
        return out

    def clock(self):
        return self._now
