"""Board groundwork (issue 6): PLL parameter search, nextpnr report parsing, and the iCEBreaker top elaborated
around the host-facing half of the accelerator (the whole accelerator does not fit the UP5K yet)."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cnnacc.boards.build import BOARDS, parse_nextpnr_log
from cnnacc.boards.pll import ecp5_pll, ice40_pll
from cnnacc.boards.top import BoardTop
from cnnacc.hw.command_processor import WORD_LAYOUT, CommandProcessor
from cnnacc.hw.commands import MemoryId
from cnnacc.hw.memory_map import MemoryMap, MemorySpec


@pytest.mark.parametrize("target", [24e6, 30e6, 42e6, 48e6, 60e6])
def test_ice40_pll_in_range_and_close(target):
    pll = ice40_pll(12e6, target)
    f_pfd = 12e6 / (pll.divr + 1)
    f_vco = f_pfd * (pll.divf + 1)
    assert 10e6 <= f_pfd <= 133e6 and 533e6 <= f_vco <= 1066e6
    assert pll.f_out == f_vco / 2 ** pll.divq
    assert abs(pll.f_out - target) <= 0.5e6


@pytest.mark.parametrize("target", [100e6, 125e6, 150e6])
def test_ecp5_pll_in_range_and_exact(target):
    pll = ecp5_pll(25e6, target)
    assert pll.f_out == pytest.approx(target)
    assert 400e6 <= pll.f_out * pll.clkop_div <= 800e6
    assert pll.clkop_cphase == pll.clkop_div - 1


def test_pll_impossible_target():
    with pytest.raises(ValueError, match="no iCE40 PLL setting"):
        ice40_pll(1e6, 48e6)


def test_parse_nextpnr_log():
    log = """Info: Device utilisation:
Info: \t         ICESTORM_LC:  1234/ 5280    23%
Info: \t        ICESTORM_RAM:    18/   30    60%
Info: \t         ICESTORM_DSP:     8/    8   100%
Info: Max frequency for clock 'clk': 36.31 MHz (FAIL at 42.00 MHz)
Info: Max frequency for clock 'clk': 44.02 MHz (PASS at 42.00 MHz)
"""
    resources, clocks = parse_nextpnr_log(log)
    assert resources == {"ICESTORM_LC": (1234, 5280), "ICESTORM_RAM": (18, 30), "ICESTORM_DSP": (8, 8)}
    assert clocks == [("clk", 44.02, 42.0)]


class HostShell(wiring.Component):
    """Command processor and memories: the host-facing half of the accelerator."""
    i_host: In(stream.Signature(WORD_LAYOUT))
    o_host: Out(stream.Signature(WORD_LAYOUT))

    def elaborate(self, platform):
        m = Module()
        m.submodules.memories = memories = MemoryMap({MemoryId.ACT_A: MemorySpec(32, 256)})
        m.submodules.cp = cp = CommandProcessor(memories.word_depths(), 0x1234)
        wiring.connect(m, wiring.flipped(self.i_host), cp.i_host)
        wiring.connect(m, cp.o_host, wiring.flipped(self.o_host))
        wiring.connect(m, cp.mem, memories.bus)
        m.d.comb += [cp.run.done.eq(cp.run.start), cp.run.error.eq(1)]
        return m


def test_icebreaker_top_elaborates_with_pll_and_uart():
    spec = BOARDS["icebreaker"]
    platform = spec.make_platform()
    plan = platform.prepare(BoardTop(spec, HostShell), name="top")
    files = plan.files
    rtlil = files["top.il"]
    rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
    assert "SB_PLL40_PAD" in rtlil
    pcf = files["top.pcf"]
    pcf = pcf.decode() if isinstance(pcf, bytes) else pcf
    assert "uart_0__rx" in pcf and "uart_0__tx" in pcf
