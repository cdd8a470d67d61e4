"""8N1 UART transmitter and receiver with byte streams.

``divisor`` is clock cycles per bit (``clk_freq // baud``). The receiver synchronises the line with two flops,
finds the start bit's middle, samples each bit in its middle, and drops a byte whose stop bit is low (a framing
error: the serial bridge above it then sees a missing byte, which its CRC and timeout catch).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UartTx", "UartRx"]


def _check_divisor(divisor):
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"divisor must be an integer of at least 4 clock cycles per bit, not {divisor!r}")


class UartTx(wiring.Component):
    """Sends each byte of ``i_data`` on ``tx``: a start bit, 8 data bits LSB first, a stop bit."""

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({"i_data": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self._divisor))
        bits = Signal(10)
        count = Signal(range(11))
        m.d.comb += self.i_data.ready.eq(count == 0)
        with m.If(self.i_data.valid & self.i_data.ready):
            m.d.sync += [bits.eq(Cat(0, self.i_data.payload, 1)), count.eq(10), timer.eq(self._divisor - 1),
                         self.tx.eq(0)]
        with m.Elif(count != 0):
            with m.If(timer == 0):
                m.d.sync += [timer.eq(self._divisor - 1), count.eq(count - 1), bits.eq(bits >> 1)]
                # The bit after the current one goes out; after the stop bit the line idles high.
                m.d.sync += self.tx.eq(((bits >> 1)[0]) | (count == 1))
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UartRx(wiring.Component):
    """Receives bytes from ``rx`` into ``o_data``. ``o_data`` has no back-pressure on the line: a byte not
    taken before the next one completes is overwritten, and ``overrun`` pulses."""

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1), "o_data": Out(stream.Signature(8)), "overrun": Out(1),
                          "framing_error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        line = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self._divisor + self._divisor // 2))
        shift = Signal(8)
        count = Signal(range(10))

        with m.If(self.o_data.valid & self.o_data.ready):
            m.d.sync += self.o_data.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # Wait one and a half bits: to the middle of data bit 0.
                    m.d.sync += [timer.eq(self._divisor + self._divisor // 2 - 1), count.eq(0)]
                    m.next = "START"
            with m.State("START"):
                # Confirm the start bit at its middle, so a glitch does not start a byte.
                with m.If(timer == self._divisor - 1):
                    with m.If(line):
                        m.next = "IDLE"
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), count.eq(1), timer.eq(self._divisor - 1)]
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += timer.eq(self._divisor - 1)
                    with m.If(count == 8):
                        m.next = "STOP"
                    with m.Else():
                        m.d.sync += [shift.eq(Cat(shift[1:], line)), count.eq(count + 1)]
            with m.State("STOP"):
                with m.If(line):
                    m.d.sync += [self.o_data.payload.eq(shift), self.o_data.valid.eq(1)]
                    with m.If(self.o_data.valid & ~self.o_data.ready):
                        m.d.comb += self.overrun.eq(1)
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                m.next = "IDLE"
        return m
