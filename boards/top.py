"""Board top levels: clock (PLL), reset and pad buffers around :class:`~cnnacc.boards.core.BoardCore` (UART,
serial bridge, the accelerator core, status LEDs).

The core is any component with host-bus streams ``i_host``/``o_host`` (hw/command_processor.py's word
streams); :func:`cnnacc.boards.build.build` passes the accelerator for the board's configuration.
"""

from amaranth.hdl import ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import AsyncFFSynchronizer

from .core import BoardCore
from .pll import family_pll

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
        # The PLL output, constrained, and the sync domain's clock. Kept, so that the net keeps this name through
        # yosys and the constraint finds it (yosys named it after a submodule's port otherwise).
        clk_sys = Signal(attrs={"keep": 1})
        m.d.comb += ClockSignal("sync").eq(clk_sys)
        clk_in = platform.request(platform.default_clk, dir="-")
        pll = family_pll(board.family, platform.default_clk_frequency, board.f_sys)
        if board.family == "ice40":
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE", p_DIVR=pll.divr, p_DIVF=pll.divf, p_DIVQ=pll.divq,
                p_FILTER_RANGE=pll.filter_range,
                i_PACKAGEPIN=clk_in.io, i_RESETB=Const(1), i_BYPASS=Const(0),
                o_PLLOUTGLOBAL=clk_sys, o_LOCK=locked)
        else:
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
        # The domain's reset: raised at once while the PLL is not locked, lowered in step with the clock (the
        # synchroniser, placed by the PLL's LOCK pin), then through one more flip-flop that nextpnr places among
        # the thousands of enables and resets it reaches, not at the die's edge (a 6 ns route began the critical
        # path there).
        rst_sync = Signal(init=1)
        rst = Signal(init=1, reset_less=True, attrs={"keep": 1})
        m.submodules.reset_sync = AsyncFFSynchronizer(~locked, rst_sync, o_domain="sync")
        m.d.sync += rst.eq(rst_sync)
        if board.family == "ecp5":
            # On the ECP5 the reset reaches its loads (some 1,200 flip-flops' resets and the engines' flush
            # gates, across the die) on a global network, through a clock buffer as nextpnr would use for a clock
            # (it promotes clocks only). nextpnr gives the buffer and the global network no delay, so it does not
            # time this net; the reset is held for the cycles the PLL is unlocked, and as it falls nothing runs:
            # the design waits for the host's first frame.
            rst_global = Signal()
            m.submodules.rst_buf = Instance("DCCA", i_CLKI=rst, i_CE=Const(1), o_CLKO=rst_global)
            m.d.comb += ResetSignal("sync").eq(rst_global)
        else:
            m.d.comb += ResetSignal("sync").eq(rst)

        uart_pins = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart_pins.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart_pins.tx)
        m.submodules.board_core = board_core = BoardCore(
            self._core_factory(), board.uart_divisor(pll.f_out), frame_words=board.frame_words,
            leds=board.leds, heartbeat_cycles=int(pll.f_out) // 2, registered_reads=board.family == "ecp5",
            # Two slices each way on the ECP5: a routed build's critical path was the command slice's valid,
            # placed by the UART, 6.5 ns across the die into the command processor (docs/decisions.md, session 16).
            slices=2 if board.family == "ecp5" else 1)
        m.d.comb += [board_core.rx.eq(rx_buf.i), tx_buf.o.eq(board_core.tx)]
        for i in range(board.leds):
            m.submodules[f"led_{i}"] = led = io.Buffer("o", platform.request("led", i, dir="-"))
            m.d.comb += led.o.eq(board_core.leds[i])
        return m
