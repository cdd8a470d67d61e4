"""Everything on a board but its clocking and I/O buffers: UART, serial bridge, accelerator core, status LEDs.

:class:`BoardCore` has plain pins (``rx``, ``tx``, ``leds``) in the ``sync`` domain. The board top
(boards/top.py) wraps it with the PLL, the reset synchroniser and the pad buffers; the board simulation
(sim/tb_board.py) drives and samples the same pins from cocotb, so the design the host talks to in simulation is
the one that goes into the bitstream.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.serial_bridge import SerialBridge
from ..hw.uart import UartRx, UartTx

__all__ = ["BoardCore", "LED_MEANINGS"]

#: What each status LED shows, in order (a board with fewer LEDs shows the first ones).
LED_MEANINGS = (
    "heartbeat: blinks once a second while the clock runs and the PLL is locked",
    "link error: lit once the board has received a frame with a bad CRC (the host retried it)",
    "busy: lit while a command is being executed (a long RUN keeps it on)",
)


class BoardCore(wiring.Component):
    """UART + serial bridge + ``core`` + status LEDs, on pins.

    Parameters
    ----------
    core : wiring.Component
        Has host-bus word streams ``i_host``/``o_host`` (the accelerator, hw/accelerator.py).
    divisor : int
        Clock cycles per UART bit (``f_sys / baud``).
    frame_words : int
        Longest frame payload, in 32-bit words, both ways.
    leds : int
        Number of status LEDs, at most ``len(LED_MEANINGS)``.
    heartbeat_cycles : int
        Clock cycles per half period of the heartbeat LED (``f_sys / 2`` blinks once a second).
    registered_reads : bool
        Passed to the :class:`~cnnacc.hw.serial_bridge.SerialBridge` (the ECP5 boards set it).
    slices : int
        Register slices each way between the bridge and the core (1 by default; the ECP5 boards use 2, so that
        one can sit by each end when the placer puts the UART and the command processor far apart).

    Members
    -------
    rx : In(1)
        The UART line from the host (idle high).
    tx : Out(1)
        The UART line to the host.
    leds : Out(leds)
        Status, see :data:`LED_MEANINGS`.
    """

    def __init__(self, core, divisor, *, frame_words=256, leds=3, heartbeat_cycles=1 << 20,
                 registered_reads=False, slices=1):
        if not isinstance(leds, int) or not 0 <= leds <= len(LED_MEANINGS):
            raise ValueError(f"leds must be an integer from 0 to {len(LED_MEANINGS)}, not {leds!r}")
        if not isinstance(heartbeat_cycles, int) or heartbeat_cycles < 1:
            raise ValueError(f"heartbeat_cycles must be a positive integer, not {heartbeat_cycles!r}")
        if not isinstance(slices, int) or isinstance(slices, bool) or slices < 1:
            raise ValueError(f"slices must be a positive integer, not {slices!r}")
        self._slices = slices
        self._core = core
        self._divisor = divisor
        self._frame_words = frame_words
        self._heartbeat_cycles = heartbeat_cycles
        self._registered_reads = registered_reads
        # Checked here (not at elaboration) so a bad divisor fails where the board is described.
        self._uart_rx = UartRx(divisor)
        self._uart_tx = UartTx(divisor)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "leds": Out(max(leds, 1))})
        self._leds = leds

    @property
    def divisor(self):
        return self._divisor

    @staticmethod
    def _slice(m, source, sink, name, stages=1):
        """``stages`` register slices in a row from stream ``source`` to stream ``sink``: each holds a word,
        takes one when empty and gives it on ``ready``, so its valid and ready are flip-flops."""
        for stage in range(stages):
            # Names as with one stage (``{name}_full``); more stages count on (``{name}1_full``, ...).
            label = name if stage == 0 else f"{name}{stage}"
            full = Signal(name=f"{label}_full")
            held = Signal.like(source.payload, name=f"{label}_held")
            if stage == stages - 1:
                out = sink
            else:
                out = stream.Signature(source.payload.shape()).create(path=(f"{label}_out",))
            m.d.comb += [source.ready.eq(~full), out.valid.eq(full), out.payload.eq(held)]
            with m.If(source.valid & ~full):
                m.d.sync += [full.eq(1), held.eq(source.payload)]
            with m.Elif(out.ready):
                m.d.sync += full.eq(0)
            source = out

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = uart_rx = self._uart_rx
        m.submodules.uart_tx = uart_tx = self._uart_tx
        # Four byte times of silence end a frame cut short: long enough that a host writing a frame in one
        # call never trips it, short enough that a NAK comes back well within the host's timeout.
        m.submodules.bridge = bridge = SerialBridge(max_words=self._frame_words,
                                                    idle_timeout=self._divisor * 10 * 4,
                                                    registered_reads=self._registered_reads)
        m.submodules.core = core = self._core
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        wiring.connect(m, uart_rx.o_data, bridge.i_rx)
        wiring.connect(m, bridge.o_tx, uart_tx.i_data)
        # Register slices each way between the bridge and the core (one, or ``slices``): each side's valid and
        # ready then start at a flip-flop, so neither state machine's decode runs through the other's in one
        # cycle. A word takes two cycles through a slice, as fast as the bridge feeds and drains words anyway.
        self._slice(m, bridge.o_cmd, core.i_host, "cmd", self._slices)
        self._slice(m, core.o_host, bridge.i_answer, "answer", self._slices)

        heartbeat = Signal(range(self._heartbeat_cycles))
        beat = Signal()
        with m.If(heartbeat == self._heartbeat_cycles - 1):
            m.d.sync += [heartbeat.eq(0), beat.eq(~beat)]
        with m.Else():
            m.d.sync += heartbeat.eq(heartbeat + 1)

        # Busy from the command's last word into the core until the answer's last word out of it: a run that
        # takes seconds on a big layer keeps the LED on, where the raw stream valids would only flicker.
        busy = Signal()
        with m.If(core.i_host.valid & core.i_host.ready & core.i_host.payload.last):
            m.d.sync += busy.eq(1)
        with m.Elif(core.o_host.valid & core.o_host.ready & core.o_host.payload.last):
            m.d.sync += busy.eq(0)

        status = [beat, bridge.crc_error, busy]
        m.d.comb += [self.leds[i].eq(status[i]) for i in range(self._leds)]
        return m
