"""A quick ESTIMATE of a design's placed timing, read from yosys's netlist (no place and route).

``python -m cnnacc.boards.timing BOARD PART [--top N] [--period NS] [--path PATTERN]`` synthesizes one part
of the board's accelerator as ``python -m cnnacc.boards.parts`` does (boards/parts.py: same yosys flow, same
``INIT_SCRIPT``) and lists its slowest register-to-register paths, grouped by source and endpoint register:

    arrival  source -> endpoint.port  (xCOUNT)

followed by the number of endpoints whose data arrives after the clock period. A placed iCEBreaker build takes
about ten minutes and nextpnr reports only its single worst path; this takes the time of a yosys run and lists
every path over the period, so that they can be worked on together between builds.

The delays (the constants below) are a rough reading of nextpnr's iCE40 UltraPlus timing model: every net is
charged the same routing delay, whatever its fan-out and wherever the placer puts its ends. On the iCEBreaker
design at 97% of the logic cells the estimate came within about 1 ns of nextpnr's worst routed path. It is an
estimate for finding paths, not a sign-off: nextpnr's report (``cnnacc build``) is the only Fmax to quote.

The ECP5 (the ULX3S) has a model of its own, :data:`ECP5` (:class:`DelayModel`), read from the routed paths of
nextpnr-ecp5's speed grade 6 on the ULX3S build: there placement, not logic, decides most paths (a routed net
took 0.8 to 1.6 ns, and the routed critical paths were mostly routing: 12.8 of 16.3 ns), so it ranks paths
by their logic and says little of the Fmax. Its cells: ``TRELLIS_FF``, ``LUT4``, ``PFUMX`` and ``L6MUX21`` (a
slice's wide-LUT multiplexers: their ``ALUT``/``BLUT``/``D0``/``D1`` inputs come from the same slice, unrouted),
``CCU2C`` (carry chains), ``TRELLIS_DPR16X4`` (distributed RAM: written as a register, read through ``RAD``
combinationally), ``DP16KD`` and ``MULT18X18D``.

The model, per net of yosys's JSON netlist after ``synth_ice40``:

- a flip-flop (``SB_DFF*``) output arrives :data:`CLOCK_TO_OUT` after the clock, a block RAM, DSP or SPRAM
  output :data:`BLOCK_CLOCK_TO_OUT` later still (every such block is taken for registered at both sides: the
  SB_MAC16's multiplier in front of its product registers is not modelled);
- a LUT (``SB_LUT4``, and any cell type the model does not know) adds :data:`LUT` plus :data:`ROUTE` for the
  net into it, except on ``I3`` fed straight by a carry's ``CO``, which the logic cell wires internally;
- a carry (``SB_CARRY``) adds :data:`CARRY` from ``CI`` when fed by the chain (another carry's ``CO``), and
  :data:`CARRY_IN` plus :data:`ROUTE` from a routed ``I0``/``I1`` (or a ``CI`` from outside the chain);
- a top-level input of the part, or an undriven net, arrives at 0 ns: a part's inputs come from registers of
  the rest of the design, so a path through them is charged from there on only;
- an endpoint is every data input of a flip-flop, block RAM, DSP or SPRAM (every input but the clock); its
  arrival is the net's plus :data:`ROUTE` to the pin plus :data:`SETUP`.
"""

import argparse
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .build import BOARDS, BuildError
from .parts import PARTS, synth_part

__all__ = ["CLOCK_TO_OUT", "BLOCK_CLOCK_TO_OUT", "LUT", "ROUTE", "CARRY", "CARRY_IN", "SETUP", "DelayModel",
           "ICE40", "ECP5", "MODELS", "Hop", "Endpoint", "Group", "estimate", "group_endpoints", "register_name",
           "estimate_part", "main"]


# Delays in ns: a rough reading of nextpnr's iCE40 UltraPlus (UP5K) timing model, checked against nextpnr's
# routed worst path on the iCEBreaker build (within about 1 ns). An ESTIMATE, not sign-off.
CLOCK_TO_OUT = 1.4          #: flip-flop clock to Q
BLOCK_CLOCK_TO_OUT = 1.1    #: added to CLOCK_TO_OUT for a block RAM, DSP or SPRAM output
LUT = 1.0                   #: LUT4 input to output
ROUTE = 1.9                 #: one routed net, any fan-out
CARRY = 0.3                 #: CI to CO, a bit of a carry chain
CARRY_IN = 0.7              #: a routed I0/I1 into a carry, to its CO (the net itself costs ROUTE)
SETUP = 0.5                 #: setup at a flip-flop or block input


@dataclass(frozen=True)
class DelayModel:
    """One family's delays (ns) and sequential cells, for :func:`estimate`.

    ``clocks`` maps each kind of sequential cell (a cell type prefix) to its clock inputs, every other input of
    which is an endpoint; ``flip_flop`` is the kind whose output arrives ``clock_to_out`` after the clock, every
    other kind's ``block_clock_to_out`` later still. ``async_read`` maps a sequential kind whose output also
    follows some inputs combinationally (distributed RAM) to those inputs' port prefix and their delay."""
    family: str
    clock_to_out: float
    block_clock_to_out: float
    lut: float
    route: float
    carry: float
    carry_in: float
    setup: float
    flip_flop: str
    clocks: dict
    mux: float = 0.0
    async_read: dict = field(default_factory=dict)

    def kind(self, cell_type):
        """The :attr:`clocks` key of a sequential cell type (``SB_DFFESR`` -> ``SB_DFF``), else ``None``."""
        for kind in self.clocks:
            if cell_type.startswith(kind):
                return kind
        return None


#: The iCE40 UltraPlus: the module's constants above.
ICE40 = DelayModel(family="ice40", clock_to_out=CLOCK_TO_OUT, block_clock_to_out=BLOCK_CLOCK_TO_OUT, lut=LUT,
                   route=ROUTE, carry=CARRY, carry_in=CARRY_IN, setup=SETUP, flip_flop="SB_DFF",
                   clocks={"SB_DFF": ("C",), "SB_RAM40_4K": ("RCLK", "RCLKN", "WCLK", "WCLKN"), "SB_MAC16": ("CLK",),
                           "SB_SPRAM256KA": ("CLOCK",)})

#: The ECP5 at speed grade 6, from nextpnr-ecp5's routed paths on the ULX3S (clock to Q 0.52 ns, a LUT 0.24, a
#: carry 0.07 a cell (a sum about 0.4) and 0.45 from a routed input, routed nets 0.8 to 1.6 ns; a DP16KD's
#: output about 4 ns after its clock, the conv engine's measurement). An ESTIMATE that ranks paths (see the
#: module's docstring).
ECP5 = DelayModel(family="ecp5", clock_to_out=0.52, block_clock_to_out=3.5, lut=0.25, route=1.2, carry=0.07,
                  carry_in=0.45, setup=0.2, flip_flop="TRELLIS_FF", mux=0.15,
                  clocks={"TRELLIS_FF": ("CLK",), "DP16KD": ("CLKA", "CLKB"),
                          "MULT18X18D": ("CLK0", "CLK1", "CLK2", "CLK3"), "TRELLIS_DPR16X4": ("WCK",)},
                  async_read={"TRELLIS_DPR16X4": ("RAD", 0.6)})


@dataclass(frozen=True)
class Hop:
    """One net along a path: when it settles, its name, and the cell driving it.

    ``cell_type`` is ``"input"`` (and ``cell`` empty) for a top-level input or undriven net."""
    arrival: float
    net: str
    cell: str
    cell_type: str


@dataclass(frozen=True)
class Endpoint:
    """One bit of a sequential cell's data input, with the latest arrival of its data (setup included).

    ``source`` is the cell that launches the latest path into it (``source_type`` its type), or the top-level
    input it starts from (``source_type`` ``"input"``); ``None`` (``"constant"``) for a net fed by constants
    only. :meth:`path` gives that path net by net."""
    arrival: float
    cell: str
    cell_type: str
    port: str
    bit: int
    source: str | None
    source_type: str
    _timing: "_Timing" = field(repr=False, compare=False)

    def path(self):
        """The latest path into this endpoint, a list of :class:`Hop` from the source's net to the endpoint's."""
        netlist_bit = self._timing.cells[self.cell]["connections"][self.port][self.bit]
        return self._timing.path(netlist_bit)


@dataclass(frozen=True)
class Group:
    """The endpoints between one source register and one endpoint register (:func:`register_name`): ``worst``
    is the latest of them, ``count`` how many there are (one per bit and input port)."""
    source: str
    endpoint: str
    worst: Endpoint
    count: int


def _net_names(module):
    """``{net bit: name}``, ``name[index]`` for a bit of a vector: a port's name if the bit is one, else the
    shortest of its names, those yosys does not mark hidden first."""
    ports = set(module.get("ports", {}))
    best = {}
    for name, net in module.get("netnames", {}).items():
        rank = (name not in ports, bool(net.get("hide_name")), len(name))
        bits = net["bits"]
        for index, bit in enumerate(bits):
            if isinstance(bit, int) and (bit not in best or rank < best[bit][0]):
                best[bit] = (rank, name if len(bits) == 1 else f"{name}[{index}]")
    return {bit: name for bit, (_, name) in best.items()}


class _Timing:
    """Arrival times of the nets of one module, computed on demand and kept in :attr:`arrivals`."""

    def __init__(self, module, model=ICE40):
        self.model = model
        self.cells = module.get("cells", {})
        self.drivers = {}           # net bit -> (cell name, output port)
        self.names = _net_names(module)
        for name, cell in self.cells.items():
            directions = cell.get("port_directions")
            if directions is None:
                raise ValueError(f"cell {name!r} ({cell['type']}) has no port directions: not a yosys netlist of "
                                 f"mapped {model.family} cells")
            for port, bits in cell["connections"].items():
                if directions.get(port) == "output":
                    for bit in bits:
                        if isinstance(bit, int):
                            self.drivers[bit] = (name, port)
        # net bit -> (arrival, source, source type, the input bit of its driver that the arrival came through)
        self.arrivals = {}

    def _inputs(self, cell):
        """``(port, bit)`` for each non-constant input bit of ``cell`` that its outputs follow combinationally."""
        directions = cell["port_directions"]
        read = self.model.async_read.get(self.model.kind(cell["type"]) or "")
        return [(port, bit) for port, bits in cell["connections"].items() if directions.get(port) == "input"
                and (read is None or port.startswith(read[0])) for bit in bits if isinstance(bit, int)]

    def _edge(self, cell_type, port, bit, out):
        """The delay from input ``bit`` on ``port`` of a combinational cell to its output ``out``."""
        model = self.model
        from_port = self.drivers.get(bit, ("", ""))[1]
        if cell_type == "SB_CARRY":
            return model.carry if port == "CI" and from_port == "CO" else model.carry_in + model.route
        if cell_type == "CCU2C":
            # Along the chain (COUT into CIN) a cell's carry, or its sum (a LUT's delay more); from a routed
            # input, into the chain.
            along = model.carry + (model.lut if out != "COUT" else 0.0)
            return along if port == "CIN" and from_port == "COUT" else model.carry_in + model.route
        if cell_type in ("PFUMX", "L6MUX21"):
            # A slice's multiplexers: their data inputs come from the slice's own LUTs (or the PFUMX beside).
            return model.mux + (0.0 if port in ("ALUT", "BLUT", "D0", "D1") else model.route)
        read = model.async_read.get(model.kind(cell_type) or "")
        if read is not None:
            return read[1] + model.route
        return model.lut + (0.0 if port == "I3" and from_port == "CO" else model.route)

    def _start(self, bit):
        """The arrival of ``bit`` if a path starts there, else ``None`` (it is a combinational cell's output, or
        a distributed RAM's, which :meth:`arrival` takes from its read address as well)."""
        if bit not in self.drivers:
            return (0.0, self.names.get(bit, str(bit)), "input", None)
        name, _ = self.drivers[bit]
        cell_type = self.cells[name]["type"]
        kind = self.model.kind(cell_type)
        if kind is None or kind in self.model.async_read:
            return None
        return self._launch(name, cell_type, kind)

    def _launch(self, name, cell_type, kind):
        """A path's start at sequential cell ``name`` (a distributed RAM's: its stored word, read)."""
        model = self.model
        if kind in model.async_read:
            later = model.async_read[kind][1]
        else:
            later = model.block_clock_to_out if kind != model.flip_flop else 0.0
        return (model.clock_to_out + later, name, cell_type, None)

    def arrival(self, bit):
        """``(arrival, source, source type, input bit)`` of net ``bit``; depth-first without recursion (carry
        chains and long LUT paths are thousands of nets deep), raising :class:`ValueError` on a combinational
        loop."""
        stack, open_bits = [bit], set()
        while stack:
            top = stack[-1]
            if top in self.arrivals:
                stack.pop()
                continue
            start = self._start(top)
            if start is not None:
                self.arrivals[top] = start
                stack.pop()
                continue
            name, _ = self.drivers[top]
            cell = self.cells[name]
            inputs = self._inputs(cell)
            pending = [b for _, b in inputs if b not in self.arrivals]
            if pending:
                if top in open_bits:
                    raise ValueError(f"combinational loop through cell {name!r}")
                open_bits.add(top)
                stack.extend(pending)
                continue
            kind = self.model.kind(cell["type"])
            # A distributed RAM's stored word is there from its write clock on; a cell fed by constants only
            # settles at once (and any input of another cell replaces that).
            stored = kind is not None
            best = self._launch(name, cell["type"], kind) if stored else (0.0, None, "constant", None)
            for port, b in inputs:
                time = self.arrivals[b][0] + self._edge(cell["type"], port, b, self.drivers[top][1])
                if (best[3] is None and not stored) or time > best[0]:
                    best = (time, self.arrivals[b][1], self.arrivals[b][2], b)
            self.arrivals[top] = best
            open_bits.discard(top)
            stack.pop()
        return self.arrivals[bit]

    def path(self, bit):
        hops = []
        while True:
            time, _, _, through = self.arrival(bit)
            cell, _ = self.drivers.get(bit, ("", ""))
            cell_type = self.cells[cell]["type"] if cell else "input"
            hops.append(Hop(round(time, 6), self.names.get(bit, str(bit)), cell, cell_type))
            if through is None:
                return hops[::-1]
            bit = through

    def endpoints(self):
        found = []
        model = self.model
        for name, cell in self.cells.items():
            kind = model.kind(cell["type"])
            if kind is None:
                continue
            directions = cell["port_directions"]
            read = model.async_read.get(kind)
            for port, bits in cell["connections"].items():
                if (directions.get(port) != "input" or port in model.clocks[kind]
                        or (read is not None and port.startswith(read[0]))):
                    continue
                for index, bit in enumerate(bits):
                    if not isinstance(bit, int):
                        continue
                    time, source, source_type, _ = self.arrival(bit)
                    found.append(Endpoint(round(time + model.route + model.setup, 6), name, cell["type"], port, index,
                                          source, source_type, self))
        return found


def _top_module(netlist):
    """The netlist's top module: the one yosys marks ``top``, else the one with the most cells."""
    modules = netlist.get("modules", {})
    if not modules:
        raise ValueError("the netlist has no modules")
    marked = [m for m in modules.values() if int(str(m.get("attributes", {}).get("top", "0")), 2)]
    return marked[0] if marked else max(modules.values(), key=lambda m: len(m.get("cells", {})))


def estimate(netlist, *, module=None, model=ICE40):
    """Endpoints of a yosys JSON netlist (a ``dict``, after ``synth_ice40`` or ``synth_ecp5``), latest first.

    Parameters
    ----------
    netlist : dict
        yosys's ``write_json`` output.
    module : str, optional
        The module to time; by default the top module.
    model : DelayModel
        :data:`ICE40` (the default) or :data:`ECP5`.

    Returns
    -------
    list of Endpoint
        Sorted by arrival, latest first (then by cell, port and bit).
    """
    chosen = netlist["modules"][module] if module is not None else _top_module(netlist)
    endpoints = _Timing(chosen, model).endpoints()
    endpoints.sort(key=lambda e: (-e.arrival, e.cell, e.port, e.bit))
    return endpoints


# yosys's own names for cells and nets it made up: ``$abc$123$auto$...``, ``$auto$ff.cc:266:slice$45``.
_YOSYS_NAME = re.compile(r"\$(?:abc|auto|techmap|flatten)\$\S*|\$\w+\$[\w.]+:\S*")


_AUTONAME = re.compile(r"_SB_|_TRELLIS_")


def register_name(name):
    """The register (or block) a yosys cell name belongs to: the name without the leading ``\\`` of an escaped
    identifier, without the ``_SB_...`` or ``_TRELLIS_...`` that ``autoname`` appends to name a cell after the
    net it drives or reads (``crc_SB_DFFESR_Q_7`` -> ``crc``), and without yosys's made-up ``$...`` names."""
    if name is None:
        return "(constant)"
    short = _YOSYS_NAME.sub("", _AUTONAME.split(name.lstrip("\\"), 1)[0]).rstrip(".")
    return short or name


def group_endpoints(endpoints):
    """Endpoints grouped by ``(source, endpoint)`` register name, in order of their latest endpoint: a bus of 32
    flip-flops fed from one register is one :class:`Group` of count 32."""
    groups = {}
    for endpoint in endpoints:
        source = register_name(endpoint.source)
        if endpoint.source_type == "input":
            source = f"input {source}"
        key = (source, register_name(endpoint.cell))
        worst, count = groups.get(key, (endpoint, 0))
        groups[key] = (worst if worst.arrival >= endpoint.arrival else endpoint, count + 1)
    found = [Group(source, target, worst, count) for (source, target), (worst, count) in groups.items()]
    found.sort(key=lambda g: (-g.worst.arrival, g.source, g.endpoint))
    return found


#: The delay model of each board family.
MODELS = {"ice40": ICE40, "ecp5": ECP5}


def estimate_part(board, part, *, config=None):
    """Synthesize ``part`` of ``board``'s accelerator as boards/parts.py does and :func:`estimate` its netlist
    with the board family's :class:`DelayModel`.

    Raises :class:`~cnnacc.boards.build.BuildError` for an unknown board or part, or a failing yosys."""
    model = MODELS[BOARDS[board].family] if board in BOARDS else ICE40
    with tempfile.TemporaryDirectory(prefix="cnnacc-timing-") as tmp:
        path = Path(tmp, "netlist.json")
        synth_part(board, part, config=config, write_json=path)
        return estimate(json.loads(path.read_text()), model=model)


def _print_path(endpoint):
    print(f"\npath to {endpoint.cell}.{endpoint.port}[{endpoint.bit}] ({endpoint.cell_type}), "
          f"{endpoint.arrival:.1f} ns:")
    for hop in endpoint.path():
        print(f"  {hop.arrival:6.1f}  {hop.cell_type:<13} {hop.net}")
    print(f"  {endpoint.arrival:6.1f}  {'(setup)':<13} {endpoint.cell}.{endpoint.port}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnnacc.boards.timing",
                                     description="Estimated placed timing of one part (not sign-off).")
    parser.add_argument("board", help=", ".join(BOARDS))
    parser.add_argument("part", help=", ".join(PARTS))
    parser.add_argument("--top", type=int, default=20, metavar="N", help="groups to list (default 20)")
    parser.add_argument("--period", type=float, metavar="NS", help="clock period (default: the board's clock)")
    parser.add_argument("--path", metavar="PATTERN", help="print the path to the latest endpoint whose cell "
                                                          "name contains PATTERN")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top < 1:
        parser.error(f"--top must be a positive integer, not {args.top}")
    if args.board not in BOARDS:
        print(f"unknown board {args.board!r}: choose one of {', '.join(BOARDS)}", file=sys.stderr)
        return 2
    if args.part not in PARTS:
        print(f"unknown part {args.part!r}: choose one of {', '.join(PARTS)}", file=sys.stderr)
        return 2
    period = args.period if args.period is not None else 1e9 / BOARDS[args.board].f_sys
    try:
        endpoints = estimate_part(args.board, args.part)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    groups = group_endpoints(endpoints)
    width = max((len(g.source) for g in groups[:args.top]), default=0)
    for g in groups[:args.top]:
        print(f"{g.worst.arrival:6.1f} ns  {g.source:<{width}} -> {g.endpoint}.{g.worst.port}  (x{g.count})")
    late = sum(e.arrival > period for e in endpoints)
    print(f"{late} of {len(endpoints)} endpoints over {period:.1f} ns (estimate, not sign-off)")
    if args.path is not None:
        match = next((e for e in endpoints if args.path in e.cell), None)
        if match is None:
            print(f"no endpoint cell name contains {args.path!r}", file=sys.stderr)
            return 1
        _print_path(match)
    return 0


if __name__ == "__main__":
    sys.exit(main())
