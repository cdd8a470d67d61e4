"""Block RAM output registers on the ECP5: a pass over yosys's JSON netlist, between synthesis and nextpnr.

An ECP5 ``DP16KD`` read port gives its data 5.8 ns after the clock at speed grade 6 (``REGMODE NOREG``, how
yosys maps every memory): most of a 125 MHz cycle before a single net. Each port also has an output register
of its own (``REGMODE OUTREG``, enabled by ``OCE``), whose data comes 0.96 ns after the clock, but yosys's
memory mapping (brams_16kd.txt) cannot use it. Where the gateware registers a block RAM's read data once more
(hw/memory_map.py ``host_register`` and ``engine_register``, the serial bridge's ``registered_reads``), that
second register is a ``TRELLIS_FF`` per bit right after the ``DP16KD``. :func:`absorb_output_registers` moves
it into the block RAM: the port's ``REGMODE`` becomes ``OUTREG``, its ``OCE`` takes the flip-flops' enable, its
outputs drive the flip-flops' output nets, and the flip-flops go. The design's behaviour does not change.

A port is rewritten only when every output bit that has a load has exactly one: the data input of a
``TRELLIS_FF`` on the port's own clock (not inverted), with no set or reset (``LSR`` tied low, ``GSR``
disabled, powering up at 0 as the output register does), all with the same enable (inverted or not: the output
register's ``OCE<side>MUX`` can invert it too); the port's own ``RST`` is
tied low; and neither port of the block is 36 bits wide (that mode reads through both sides' pins). Any other
port is left as it is.

``python -m cnnacc.boards.outreg NETLIST.json`` rewrites a netlist in place and prints how many ports it
changed (the ULX3S build runs it between yosys and nextpnr: boards/build.py).
"""

import json
import sys
from collections import defaultdict

from .build import _param_value

__all__ = ["absorb_output_registers", "main"]

_SIDES = ("A", "B")
_FF_PARAMS = {"CLKMUX": "CLK", "GSR": "DISABLED", "REGSET": "RESET"}


def _top(netlist):
    modules = netlist.get("modules", {})
    tops = [m for m in modules.values() if int(str(m.get("attributes", {}).get("top", "0")), 2)]
    if len(tops) != 1:
        raise ValueError(f"the netlist has {len(tops)} top modules, not one")
    return tops[0]


def _param(cell, name, default=""):
    return str(cell.get("parameters", {}).get(name, default)).strip()


def _width(cell, side):
    return int(_param_value(str(cell.get("parameters", {}).get(f"DATA_WIDTH_{side}", 18))))


def _absorbable(cells, loads, cell, side):
    """The flip-flops and enable that port ``side`` of DP16KD ``cell`` can take in: ``(ffs, enable)``, where
    ``ffs`` maps each output port name to its flip-flop's name; ``None`` if the port does not qualify."""
    conns = cell["connections"]
    if _param(cell, f"REGMODE_{side}", "NOREG") != "NOREG":
        return None
    # A port 36 bits wide (the pseudo dual-port mode yosys gives a wide memory) reads through the pins of both
    # sides, so a side's output pins are not its own: such a block is left alone.
    if any(_width(cell, s) > 18 for s in _SIDES):
        return None
    if _param(cell, f"CLK{side}MUX", f"CLK{side}") != f"CLK{side}" or conns.get(f"RST{side}", ["0"]) != ["0"]:
        return None
    clock = conns.get(f"CLK{side}")
    ffs, enable = {}, None
    for port, bits in conns.items():
        if not (port.startswith(f"DO{side}") and port[3:].isdigit()) or not isinstance(bits[0], int):
            continue
        sinks = loads.get(bits[0], [])
        if not sinks:
            continue
        if len(sinks) != 1:
            return None
        name, pin = sinks[0]
        ff = cells.get(name)              # None: a module output
        if ff is None or ff["type"] != "TRELLIS_FF" or pin != "DI":
            return None
        if any(_param(ff, k, v) != v for k, v in _FF_PARAMS.items()):
            return None
        ff_conns = ff["connections"]
        if ff_conns.get("CLK") != clock or ff_conns.get("LSR", ["0"]) != ["0"]:
            return None
        # The enable as (inverted?, net): a flip-flop may take its enable inverted (CEMUX INV), and so may the
        # output register (OCE<side>MUX INV).
        cemux = _param(ff, "CEMUX", "CE")
        if cemux == "1":
            ce = (False, ["1"])
        elif cemux in ("CE", "INV"):
            ce = (cemux == "INV", ff_conns.get("CE", ["1"]))
        else:
            return None
        if enable is not None and ce != enable:
            return None
        enable = ce
        ffs[port] = name
    return (ffs, enable) if ffs else None


def absorb_output_registers(netlist):
    """Rewrite ``netlist`` (yosys's JSON, as loaded) in place; returns the ports changed, as a list of
    ``(DP16KD cell name, side, flip-flops taken in)``."""
    top = _top(netlist)
    cells = top["cells"]
    loads = defaultdict(list)
    for name, cell in cells.items():
        directions = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if directions.get(port) != "output":
                for bit in bits:
                    if isinstance(bit, int):
                        loads[bit].append((name, port))
    for port in top.get("ports", {}).values():
        if port.get("direction") != "input":
            for bit in port["bits"]:
                if isinstance(bit, int):
                    loads[bit].append(("", "module output"))
    changed = []
    for name in sorted(cells):
        cell = cells.get(name)            # None: a flip-flop taken in already
        if cell is None or cell["type"] != "DP16KD":
            continue
        for side in _SIDES:
            found = _absorbable(cells, loads, cell, side)
            if found is None:
                continue
            ffs, (inverted, enable) = found
            cell["parameters"][f"REGMODE_{side}"] = "OUTREG"
            cell["parameters"][f"OCE{side}MUX"] = "INV" if inverted else f"OCE{side}"
            cell["connections"][f"OCE{side}"] = list(enable)
            for port, ff_name in ffs.items():
                cell["connections"][port] = list(cells[ff_name]["connections"]["Q"])
                del cells[ff_name]
            changed.append((name, side, len(ffs)))
    return changed


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m cnnacc.boards.outreg NETLIST.json", file=sys.stderr)
        return 2
    path = argv[0]
    try:
        with open(path) as f:
            netlist = json.load(f)
        changed = absorb_output_registers(netlist)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{path}: cannot rewrite the block RAM output registers: {exc}", file=sys.stderr)
        return 1
    with open(path, "w") as f:
        json.dump(netlist, f)
    print(f"{path}: {len(changed)} DP16KD read ports take in their output register "
          f"({sum(n for *_, n in changed)} flip-flops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
