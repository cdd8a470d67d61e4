"""Board top levels: clock (PLL), reset, UART, serial bridge, the accelerator core, status LEDs.

The core is any component with host-bus streams ``i_host``/``o_host`` (hw/command_processor.py's word
streams); :func:`cnnacc.boards.build.build` passes the accelerator for the board's configuration.
"""

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer

from ..hw.serial_bridge import SerialBridge
from ..hw.uart import UartRx, UartTx
from .pll import ecp5_pll, ice40_pll

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """Parameters
    ----------
    board : cnnacc.boards.build.BoardSpec
    core_factory : callable
        Returns the core (``i_host``/``o_host`` streams) to put on the board.
    """

    def __init__(self, board, core_factory):
        self._board = board
        self._core_factory = core_factory

    def elaborate(self, platform):
        m = Module()
        board = self._board
        m.domains.sync = ClockDomain("sync")
        locked = Signal()
        clk_sys = Signal()      # the PLL output, constrained, and the sync domain's clock
        m.d.comb += ClockSignal("sync").eq(clk_sys)
        clk_in = platform.request(platform.default_clk, dir="-")
        if board.family == "ice40":
            pll = ice40_pll(platform.default_clk_frequency, board.f_sys)
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=pll.divr, p_DIVF=pll.divf, p_DIVQ=pll.divq,
                p_FILTER_RANGE=pll.filter_range,
                i_PACKAGEPIN=clk_in.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=clk_sys, o_LOCK=locked)
        else:
            pll = ecp5_pll(platform.default_clk_frequency, board.f_sys)
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_in)
            m.submodules.pll = Instance(
                "EHXPLLL",
                p_CLKI_DIV=pll.clki_div, p_CLKFB_DIV=pll.clkfb_div, p_CLKOP_DIV=pll.clkop_div,
                p_CLKOP_CPHASE=pll.clkop_cphase, p_CLKOP_FPHASE=0, p_CLKOP_ENABLE="ENABLED",
                p_FEEDBK_PATH="CLKOP", p_OUTDIVIDER_MUXA="DIVA", p_PLLRST_ENA="DISABLED",
                p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
                i_CLKI=clk_buf.i, i_CLKFB=clk_sys, i_RST=Const(0), i_STDBY=Const(0),
                i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(0), i_PHASESTEP=Const(0),
                i_PHASELOADREG=Const(0), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0),
                o_CLKOP=clk_sys, o_LOCK=locked)
        platform.add_clock_constraint(clk_sys, pll.f_out)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        divisor = round(pll.f_out / board.baud)
        uart_pins = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart_pins.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart_pins.tx)
        m.submodules.uart_rx = uart_rx = UartRx(divisor)
        m.submodules.uart_tx = uart_tx = UartTx(divisor)
        m.d.comb += [uart_rx.rx.eq(rx_buf.i), tx_buf.o.eq(uart_tx.tx)]
        m.submodules.bridge = bridge = SerialBridge(max_words=board.frame_words,
                                                    idle_timeout=divisor * 10 * 4)
        m.submodules.core = core = self._core_factory()
        wiring.connect(m, uart_rx.o_data, bridge.i_rx)
        wiring.connect(m, bridge.o_tx, uart_tx.i_data)
        wiring.connect(m, bridge.o_cmd, core.i_host)
        wiring.connect(m, core.o_host, bridge.i_answer)

        # LEDs, as many as the board has of: a heartbeat (the clock runs), CRC errors seen, activity.
        heartbeat = Signal(range(int(pll.f_out) // 2 + 1))
        beat = Signal()
        with m.If(heartbeat == int(pll.f_out) // 2):
            m.d.sync += [heartbeat.eq(0), beat.eq(~beat)]
        with m.Else():
            m.d.sync += heartbeat.eq(heartbeat + 1)
        status = [beat, bridge.crc_errors != 0, core.i_host.valid | core.o_host.valid]
        for i, value in zip(range(board.leds), status):
            m.submodules[f"led_{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(value)
        return m
