"""boards/timing.py: the placed-timing estimate, on hand-written netlists whose arrivals follow from the delay
constants (the iCE40's and the ECP5's), and on real syntheses (the serial bridge, one yosys run a family)."""

import pytest

from cnnacc.boards import timing
from cnnacc.boards.timing import (BLOCK_CLOCK_TO_OUT, CARRY, CARRY_IN, CLOCK_TO_OUT, ECP5, LUT, ROUTE, SETUP,
                                  estimate, group_endpoints, register_name)

_OUTPUTS = ("Q", "O", "CO", "RDATA", "Z", "S0", "S1", "COUT", "DO")


def _cell(cell_type, **connections):
    """A cell as yosys's ``write_json`` gives it; a connection is a net number, a list of them, or "0"/"1"."""
    connections = {port: bits if isinstance(bits, list) else [bits] for port, bits in connections.items()}
    return {"type": cell_type, "connections": connections,
            "port_directions": {port: "output" if port in _OUTPUTS else "input" for port in connections}}


def _netlist(cells, ports=(), nets=None):
    """A one-module netlist; ``ports`` are top-level input names (net numbers from 100), ``nets`` more names."""
    netnames = {name: {"hide_name": 0, "bits": [100 + i]} for i, name in enumerate(ports)}
    netnames.update({name: {"hide_name": 0, "bits": bits} for name, bits in (nets or {}).items()})
    return {"modules": {
        "SB_LUT4": {"attributes": {"blackbox": "1"}, "ports": {}, "cells": {}, "netnames": {}},
        "top": {"attributes": {"top": "00000000000000000000000000000001"},
                "ports": {name: {"direction": "input", "bits": [100 + i]} for i, name in enumerate(ports)},
                "cells": cells, "netnames": netnames},
    }}


def _by_cell(endpoints):
    return {(e.cell, e.port, e.bit): e for e in endpoints}


def test_two_luts_between_flip_flops():
    """DFF -> LUT -> LUT -> DFF, with a shorter second path into the last LUT: the latest path wins."""
    netlist = _netlist({
        "a_SB_DFF_Q": _cell("SB_DFF", C=1, D=5, Q=2),
        "lut1": _cell("SB_LUT4", I0=2, I1="0", I2="0", I3="0", O=3),
        "lut2": _cell("SB_LUT4", I0=2, I1=3, I2="1", I3="0", O=4),
        "b_SB_DFFE_Q": _cell("SB_DFFE", C=1, E="1", D=4, Q=5),
    }, nets={"a": [2], "a_then_lut1": [3], "b_next": [4], "b": [5]})
    endpoints = estimate(netlist)
    assert [(e.cell, e.port) for e in endpoints] == [("b_SB_DFFE_Q", "D"), ("a_SB_DFF_Q", "D")]
    worst, back = endpoints
    assert worst.arrival == pytest.approx(CLOCK_TO_OUT + 2 * (LUT + ROUTE) + ROUTE + SETUP)
    assert (worst.source, worst.source_type, worst.cell_type) == ("a_SB_DFF_Q", "SB_DFF", "SB_DFFE")
    assert back.arrival == pytest.approx(CLOCK_TO_OUT + ROUTE + SETUP)
    assert back.source == "b_SB_DFFE_Q"
    path = worst.path()
    assert [(h.net, h.cell, h.cell_type) for h in path] == [
        ("a", "a_SB_DFF_Q", "SB_DFF"), ("a_then_lut1", "lut1", "SB_LUT4"), ("b_next", "lut2", "SB_LUT4")]
    assert [h.arrival for h in path] == pytest.approx(
        [CLOCK_TO_OUT, CLOCK_TO_OUT + LUT + ROUTE, CLOCK_TO_OUT + 2 * (LUT + ROUTE)])


def test_carry_chain():
    """Three carries from three registers: the first pays a routed I0/I1, the chain 0.3 ns a bit; the sum LUT
    takes the last CO on I3 without routing. A carry's I0 routed later than its CI is the one that counts."""
    netlist = _netlist({
        "a0": _cell("SB_DFF", C=1, D=2, Q=10),
        "a1": _cell("SB_DFF", C=1, D=2, Q=11),
        "a2": _cell("SB_DFF", C=1, D=2, Q=12),
        "c0": _cell("SB_CARRY", CI="0", I0=10, I1=11, CO=20),
        "c1": _cell("SB_CARRY", CI=20, I0=12, I1="0", CO=21),
        "c2": _cell("SB_CARRY", CI=21, I0="0", I1="1", CO=22),
        "sum": _cell("SB_LUT4", I0=12, I1="0", I2="0", I3=22, O=23),
        "b": _cell("SB_DFF", C=1, D=23, Q=2),
        "late": _cell("SB_LUT4", I0=23, I1="0", I2="0", I3="0", O=24),
        "c3": _cell("SB_CARRY", CI=22, I0=24, I1="0", CO=25),
        "d": _cell("SB_DFF", C=1, D=25, Q=3),
    })
    endpoints = _by_cell(estimate(netlist))
    chain = CLOCK_TO_OUT + CARRY_IN + ROUTE + 2 * CARRY
    assert endpoints["b", "D", 0].arrival == pytest.approx(chain + LUT + ROUTE + SETUP)
    # c3's CI (from c2) is early; its I0 comes through the sum LUT and one more LUT, both routed.
    assert endpoints["d", "D", 0].arrival == pytest.approx(
        chain + LUT + (LUT + ROUTE) + (CARRY_IN + ROUTE) + ROUTE + SETUP)
    # c0's I0 and I1 arrive together: the first input is named.
    assert [h.cell for h in endpoints["d", "D", 0].path()] == ["a0", "c0", "c1", "c2", "sum", "late", "c3"]
    assert endpoints["d", "D", 0].source == "a0"


def test_lut_fed_by_carry_on_i3_pays_no_routing():
    """A CO on a LUT's I3 is wired inside the logic cell; the same CO on I2 is a routed net."""
    netlist = _netlist({
        "a": _cell("SB_DFF", C=1, D="0", Q=10),
        "c": _cell("SB_CARRY", CI="0", I0=10, I1="0", CO=20),
        "on_i3": _cell("SB_LUT4", I0="0", I1="0", I2="0", I3=20, O=21),
        "on_i2": _cell("SB_LUT4", I0="0", I1="0", I2=20, I3="0", O=22),
        "b3": _cell("SB_DFF", C=1, D=21, Q=30),
        "b2": _cell("SB_DFF", C=1, D=22, Q=31),
        # A carry whose CI comes from a LUT, not from a chain, pays for the routed net.
        "c_from_lut": _cell("SB_CARRY", CI=21, I0="0", I1="0", CO=23),
        "after": _cell("SB_LUT4", I0="0", I1="0", I2="0", I3=23, O=24),
        "b4": _cell("SB_DFF", C=1, D=24, Q=32),
    })
    endpoints = _by_cell(estimate(netlist))
    carry_out = CLOCK_TO_OUT + CARRY_IN + ROUTE
    assert endpoints["b3", "D", 0].arrival == pytest.approx(carry_out + LUT + ROUTE + SETUP)
    assert endpoints["b2", "D", 0].arrival == pytest.approx(carry_out + LUT + ROUTE + ROUTE + SETUP)
    assert endpoints["b4", "D", 0].arrival == pytest.approx(
        carry_out + LUT + CARRY_IN + ROUTE + LUT + ROUTE + SETUP)


def test_block_ram_and_dsp_sources_and_endpoints():
    """A block RAM's or DSP's output is BLOCK_CLOCK_TO_OUT later than a flip-flop's; their data inputs are
    endpoints, their clocks are not (the DSP's ``C`` is an operand, its clock is ``CLK``)."""
    netlist = _netlist({
        "ram": _cell("SB_RAM40_4K", RCLK=1, WCLK=1, RADDR=[40, 41], WDATA=[42], RDATA=[10, 11]),
        "lut": _cell("SB_LUT4", I0=10, I1=11, I2="0", I3="0", O=12),
        "r": _cell("SB_DFFSR", C=1, R="0", D=12, Q=40),
        "mac": _cell("SB_MAC16", CLK=1, A=[40], C=[41], O=[13]),
        "m": _cell("SB_DFF", C=1, D=13, Q=41),
        "w": _cell("SB_DFF", C=1, D=41, Q=42),
    })
    endpoints = estimate(netlist)
    found = _by_cell(endpoints)
    block = CLOCK_TO_OUT + BLOCK_CLOCK_TO_OUT
    assert found["r", "D", 0].arrival == pytest.approx(block + LUT + ROUTE + ROUTE + SETUP)
    assert (found["r", "D", 0].source, found["r", "D", 0].source_type) == ("ram", "SB_RAM40_4K")
    assert found["m", "D", 0].arrival == pytest.approx(block + ROUTE + SETUP)
    assert found["m", "D", 0].source_type == "SB_MAC16"
    for into_block in (("ram", "RADDR", 0), ("ram", "RADDR", 1), ("ram", "WDATA", 0), ("mac", "A", 0),
                       ("mac", "C", 0)):
        assert found[into_block].arrival == pytest.approx(CLOCK_TO_OUT + ROUTE + SETUP)
    assert {(e.cell, e.port) for e in endpoints}.isdisjoint({("ram", "RCLK"), ("ram", "WCLK"), ("mac", "CLK")})
    assert len(endpoints) == 8


def test_top_level_input_starts_at_zero():
    netlist = _netlist({
        "lut": _cell("SB_LUT4", I0=100, I1="0", I2="0", I3="0", O=10),
        "q": _cell("SB_DFF", C=1, D=10, Q=11),
    }, ports=["i_valid"], nets={"v": [100]})
    (endpoint,) = estimate(netlist)
    assert endpoint.arrival == pytest.approx(LUT + ROUTE + ROUTE + SETUP)
    assert (endpoint.source, endpoint.source_type) == ("i_valid", "input")
    assert endpoint.path()[0] == timing.Hop(0.0, "i_valid", "", "input")


def test_combinational_loop_is_an_error():
    netlist = _netlist({
        "l1": _cell("SB_LUT4", I0=11, I1="0", I2="0", I3="0", O=10),
        "l2": _cell("SB_LUT4", I0=10, I1="0", I2="0", I3="0", O=11),
        "q": _cell("SB_DFF", C=1, D=10, Q=12),
    })
    with pytest.raises(ValueError, match="combinational loop through cell 'l[12]'"):
        estimate(netlist)


def test_bus_bits_group_into_one_line():
    """32 bits of ``count`` each through a LUT into ``total``, and one slower path: two groups, latest first."""
    cells = {}
    for i in range(32):
        cells[f"count_SB_DFFESR_Q_{i}"] = _cell("SB_DFFESR", C=1, E="1", R="0", D=200 + i, Q=10 + i)
        cells[f"total_SB_DFFESR_Q_{i}_D_SB_LUT4_O"] = _cell("SB_LUT4", I0=10 + i, I1="0", I2="0", I3="0",
                                                            O=50 + i)
        cells[f"total_SB_DFFESR_Q_{i}"] = _cell("SB_DFFESR", C=1, E="1", R="0", D=50 + i, Q=200 + i)
    cells["\\$signal$7_SB_DFF_Q"] = _cell("SB_DFF", C=1, D=91, Q=90)
    cells["slow1"] = _cell("SB_LUT4", I0=90, I1="0", I2="0", I3="0", O=92)
    cells["slow2"] = _cell("SB_LUT4", I0=92, I1="0", I2="0", I3="0", O=93)
    cells["done_SB_DFF_Q"] = _cell("SB_DFF", C=1, D=93, Q=91)
    groups = group_endpoints(estimate(_netlist(cells)))
    assert [(g.source, g.endpoint, g.count) for g in groups] == [
        ("$signal$7", "done", 1), ("count", "total", 32), ("done", "$signal$7", 1), ("total", "count", 32)]
    assert groups[1].worst.arrival == pytest.approx(CLOCK_TO_OUT + LUT + ROUTE + ROUTE + SETUP)
    assert groups[1].worst.port == "D"


def test_register_names():
    assert register_name("crc_SB_DFFESR_Q_7") == "crc"
    assert register_name("conv.requant.two_SB_DFFSR_Q") == "conv.requant.two"
    assert register_name("\\$like_SB_DFFESR_Q_12") == "$like"
    assert register_name("conv.act_bank_0.0.0") == "conv.act_bank_0.0.0"
    assert register_name("cp.$auto$ff.cc:266:slice$45_SB_DFF_Q") == "cp"
    assert register_name(None) == "(constant)"


@pytest.fixture(scope="module")
def bridge_endpoints():
    """The iCEBreaker's serial bridge through yosys (about 10 s): the only synthesis in this file."""
    return timing.estimate_part("icebreaker", "bridge")


def test_bridge_synthesis(bridge_endpoints):
    """Every path of the real netlist starts and ends at a register (or a port of the part), the list is
    latest first, and the worst path's hops add up to its endpoint's arrival."""
    assert len(bridge_endpoints) > 100
    arrivals = [e.arrival for e in bridge_endpoints]
    assert arrivals == sorted(arrivals, reverse=True)
    worst = bridge_endpoints[0]
    assert worst.cell_type.startswith(("SB_DFF", "SB_RAM40_4K"))
    assert worst.source_type.startswith(("SB_DFF", "SB_RAM40_4K"))
    path = worst.path()
    assert path[0].cell == worst.source and len(path) >= 2
    assert all(h.cell_type in ("SB_LUT4", "SB_CARRY") for h in path[1:])
    assert [h.arrival for h in path] == sorted(h.arrival for h in path)
    assert path[-1].arrival + ROUTE + SETUP == pytest.approx(worst.arrival)
    assert sum(e.source_type == "input" for e in bridge_endpoints) > 0


def test_cli_report(bridge_endpoints, monkeypatch, capsys):
    """The report's lines for the bridge (its synthesis reused): groups, the count over the period, a path."""
    monkeypatch.setattr(timing, "estimate_part", lambda board, part: bridge_endpoints)
    assert timing.main(["icebreaker", "bridge", "--top", "3", "--period", "10", "--path", "crc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(" ns  " in line and " -> " in line and line.endswith(")") for line in lines[:3])
    late = sum(e.arrival > 10 for e in bridge_endpoints)
    assert lines[3] == f"{late} of {len(bridge_endpoints)} endpoints over 10.0 ns (estimate, not sign-off)"
    crc = next(e for e in bridge_endpoints if "crc" in e.cell)
    assert lines[5].startswith(f"path to {crc.cell}.{crc.port}[{crc.bit}]")
    assert len(lines) == 6 + len(crc.path()) + 1
    assert timing.main(["icebreaker", "bridge", "--path", "no_such_register"]) == 1
    assert "no endpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["icebreaker", "cpu"], "unknown part 'cpu': choose one of accelerator, conv"),
    (["nosuchboard", "bridge"], "unknown board 'nosuchboard'"),
])
def test_cli_errors(argv, message, capsys):
    assert timing.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_ecp5_lut_carry_and_slice_multiplexers():
    """ECP5 cells: a routed input into a CCU2C pays carry_in and a net, the chain a carry a cell (and a sum a
    LUT's delay more); a PFUMX and an L6MUX21 take their data from their slice unrouted, their select through a
    net."""
    m = ECP5
    netlist = _netlist({
        "a_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=20, Q=2),
        "c0": _cell("CCU2C", A0=2, B0="0", A1="0", B1="0", CIN="0", S0=3, S1=4, COUT=5),
        "c1": _cell("CCU2C", A0="0", B0="0", A1="0", B1="0", CIN=5, S0=6, S1=7, COUT=8),
        "l0": _cell("LUT4", A=8, B="0", C="0", D="0", Z=9),
        "l1": _cell("LUT4", A=2, B="0", C="0", D="0", Z=10),
        "mux": _cell("PFUMX", ALUT=9, BLUT=10, C0=2, Z=11),
        "wide": _cell("L6MUX21", D0=11, D1=9, SD=2, Z=12),
        "b_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=12, Q=20),
        "s_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=7, Q=21),
    })
    found = _by_cell(estimate(netlist, model=m))
    # A sum out of the chain (CIN -> S1) takes a LUT's delay more than the carry.
    assert found["s_TRELLIS_FF_Q", "DI", 0].arrival == pytest.approx(
        m.clock_to_out + m.carry_in + m.route + m.carry + m.lut + m.route + m.setup)
    carry_out = m.clock_to_out + m.carry_in + m.route + m.carry
    lut = carry_out + m.lut + m.route
    want = lut + 2 * m.mux
    assert found["b_TRELLIS_FF_Q", "DI", 0].arrival == pytest.approx(want + m.route + m.setup)
    path = found["b_TRELLIS_FF_Q", "DI", 0].path()
    assert [h.cell_type for h in path] == ["TRELLIS_FF", "CCU2C", "CCU2C", "LUT4", "PFUMX", "L6MUX21"]
    assert found["a_TRELLIS_FF_Q", "DI", 0].arrival == pytest.approx(m.clock_to_out + m.route + m.setup)
    assert register_name("board_core.core.conv.inside_7_TRELLIS_FF_Q_3") == "board_core.core.conv.inside_7"


def test_ecp5_distributed_ram_reads_through_its_address():
    """A TRELLIS_DPR16X4 is written as a register (DI, WAD, WRE are endpoints, WCK is its clock) and read
    combinationally: its DO follows RAD, or its stored word from the write clock on, whichever is later; RAD is
    no endpoint."""
    m = ECP5
    netlist = _netlist({
        "addr_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=30, Q=2),
        "slow": _cell("LUT4", A=2, B="0", C="0", D="0", Z=3),
        "ram": _cell("TRELLIS_DPR16X4", WCK=1, DI=[2], WAD=[2], WRE=2, RAD=[3], DO=[4]),
        "lonely": _cell("TRELLIS_DPR16X4", WCK=1, DI=[2], WAD=[2], WRE=2, RAD=["0"], DO=[5]),
        "q_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=4, Q=30),
        "r_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=5, Q=31),
    })
    endpoints = estimate(netlist, model=m)
    found = _by_cell(endpoints)
    read = m.clock_to_out + m.lut + m.route + m.async_read["TRELLIS_DPR16X4"][1] + m.route
    assert found["q_TRELLIS_FF_Q", "DI", 0].arrival == pytest.approx(read + m.route + m.setup)
    assert found["q_TRELLIS_FF_Q", "DI", 0].source == "addr_TRELLIS_FF_Q"
    stored = m.clock_to_out + m.async_read["TRELLIS_DPR16X4"][1]
    assert found["r_TRELLIS_FF_Q", "DI", 0].arrival == pytest.approx(stored + m.route + m.setup)
    assert found["r_TRELLIS_FF_Q", "DI", 0].source == "lonely"
    ports = {(e.cell, e.port) for e in endpoints if e.cell == "ram"}
    assert ports == {("ram", "DI"), ("ram", "WAD"), ("ram", "WRE")}


@pytest.fixture(scope="module")
def ecp5_bridge_endpoints():
    """The ULX3S's serial bridge through yosys's ECP5 flow."""
    return timing.estimate_part("ulx3s", "bridge")


def test_ecp5_bridge_synthesis(ecp5_bridge_endpoints):
    """The ECP5 model on a real netlist: paths from ECP5 registers and block RAMs through ECP5 logic cells,
    each adding up to its endpoint's arrival with the ECP5's delays."""
    endpoints = ecp5_bridge_endpoints
    assert len(endpoints) > 100
    assert {e.cell_type for e in endpoints} <= {"TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4", "MULT18X18D"}
    worst = endpoints[0]
    assert worst.source_type in ("TRELLIS_FF", "DP16KD", "TRELLIS_DPR16X4")
    path = worst.path()
    assert all(h.cell_type in ("LUT4", "CCU2C", "PFUMX", "L6MUX21", "TRELLIS_DPR16X4") for h in path[1:])
    assert path[-1].arrival + ECP5.route + ECP5.setup == pytest.approx(worst.arrival)
    assert worst.arrival < 3 * 8.0
