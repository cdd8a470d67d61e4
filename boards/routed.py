"""Every failing path of a routed board build, from the SDF that nextpnr writes beside it.

``python -m cnnacc.boards.routed BUILD_DIR [--period NS] [--top N] [--paths N]``

nextpnr prints one critical path per clock, so each routed build shows a single failing path, however many
there are. ``cnnacc build`` therefore has nextpnr write the routed design's delays as an SDF file
(``<name>.sdf`` in the build directory): the delay of every cell arc (``IOPATH``), the routed delay of every net to
each of its sinks (``INTERCONNECT``) and every setup check (``SETUP``/``SETUPHOLD``), as nextpnr's own timing
analysis uses them. This module redoes that analysis over every endpoint:

- a path starts at a clocked output (an arc from a clock pin: a flip-flop's ``Q``, a block RAM's or
  multiplier's registered output) at that arc's delay. Paths from input pins and constants (nextpnr's
  ``$PACKER_GND``, routed to unused block inputs) are not timed against the clock, as in nextpnr;
- a clock pin is one a setup check is timed against, or one named like a clock (``CLK...``); a net into it
  is the clock tree, not data, and is left out (nextpnr's ECP5 model gives it no delay);
- an endpoint is every pin with a setup check; its arrival is the latest path into it plus its setup time.

Its output lists the endpoints over the clock period grouped by source and endpoint register (the names
:func:`~cnnacc.boards.timing.register_name` gives), the nets with the longest routes on those paths, and the
path to the latest endpoint of the first groups, hop by hop with net names from the yosys netlist nextpnr
placed (``<name>.json``). Only nextpnr's own report is the Fmax to quote; this reproduces its critical path
(tests/test_routed.py checks that on a small design) and lists the rest.
"""

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .timing import _top_module, register_name

__all__ = ["TimingGraph", "Endpoint", "load_sdf", "parse_sdf", "analyse", "group_failing", "long_nets",
           "net_names", "main"]


@dataclass(frozen=True)
class Endpoint:
    """A pin with a setup check: its latest data ``arrival`` (ns, setup included) from a clocked output, and the
    clock pin that path starts at."""
    pin: tuple          # (cell, port)
    arrival: float
    source: tuple       # (cell, clock port)


class TimingGraph:
    """The routed design as pins ``(cell, port)`` and the arcs between them, each with its delay in ns."""

    def __init__(self):
        self.arcs = defaultdict(list)   # sink pin -> [(source pin, delay, kind)]; kind "net", "cell" or "clock"
        self.setup = {}                 # endpoint pin -> setup time
        self._arrival = {}
        self._via = {}
        self._source = {}               # pin -> the clock pin its latest path starts at

    def arrival(self, pin):
        """Latest arrival (ns) of data from a clocked output at ``pin`` and the arc it came through; ``None`` and
        ``None`` if no such path reaches ``pin``."""
        if pin not in self._arrival:
            self._settle(pin)
        return self._arrival[pin], self._via[pin]

    def _settle(self, pin):
        # Depth first without recursion: paths through carry chains are thousands of pins long.
        stack = [(pin, False)]
        while stack:
            here, ready = stack.pop()
            if here in self._arrival:
                continue
            arcs = self.arcs.get(here, ())
            if not ready:
                stack.append((here, True))
                stack.extend((src, False) for src, _, kind in arcs
                             if kind != "clock" and src not in self._arrival)
                continue
            best, via, source = None, None, None
            for arc in arcs:
                src, delay, kind = arc
                if kind == "clock":
                    time = delay
                elif self._arrival[src] is None:
                    continue
                else:
                    time = self._arrival[src] + delay
                if best is None or time > best:
                    best, via, source = time, arc, src if kind == "clock" else self._source[src]
            self._arrival[here], self._via[here], self._source[here] = best, via, source

    def path(self, pin):
        """The pins of the latest timed path into ``pin``, from the clocked output it starts at, each with its
        arrival and the arc it came through."""
        hops = []
        while True:
            time, via = self.arrival(pin)
            if time is None:
                raise ValueError(f"no path from a clocked output reaches {pin[0]}.{pin[1]}")
            hops.append((pin, time, via))
            if via[2] == "clock":
                break
            pin = via[0]
        hops.reverse()
        return hops

    def endpoints(self):
        """Every endpoint that a clocked output reaches, latest first."""
        found = []
        for pin, setup in self.setup.items():
            time, _ = self.arrival(pin)
            if time is not None:
                found.append(Endpoint(pin, round(time + setup, 6), self._source[pin]))
        found.sort(key=lambda e: (-e.arrival, e.pin))
        return found


def _unescape(name):
    return re.sub(r"\\(.)", r"\1", name)


def _pin(token):
    """``cell/port`` of an SDF pin, split at its last unescaped ``/`` (the hierarchy divider)."""
    for i in range(len(token) - 1, 0, -1):
        if token[i] == "/" and token[i - 1] != "\\":
            return _unescape(token[:i]), token[i + 1:]
    raise ValueError(f"SDF pin {token!r} has no cell/port divider")


def _delay(triple):
    """The maximum of an SDF ``(min:typ:max)`` value, in ns (nextpnr writes picoseconds)."""
    values = [float(v) for v in triple.strip("()").split(":") if v]
    return max(values) / 1000.0 if values else 0.0


_PIN = r"(?:\((?:posedge|negedge)\s+(\S+?)\)|(\S+))"
_ARC = re.compile(r"\((INTERCONNECT|IOPATH)\s+" + _PIN + r"\s+" + _PIN + r"\s+(\([^)]*\))\s*(\([^)]*\))?")
_CHECK = re.compile(r"\((SETUPHOLD|SETUP)\s+" + _PIN + r"\s+" + _PIN + r"\s+(\([^)]*\))")
#: Port names taken for clocks even without a timing check naming them (iCE40 block RAMs: RCLK, WCLK).
_CLOCK_PORT = re.compile(r"^(CLK|CLOCK|WCK|RCLK|WCLK)")


def parse_sdf(lines):
    """A :class:`TimingGraph` from the lines of an SDF file as nextpnr writes it (``TIMESCALE 1ps``).

    A clock pin is one that a setup check is timed against, or one named like a clock (``CLK...``); an
    ``IOPATH`` from it starts a path, and a net into it is left out."""
    cell = None
    nets, paths, checks = [], [], []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line.startswith("(TIMESCALE") and line.replace(" ", "") != "(TIMESCALE1ps)":
            raise ValueError(f"SDF line {number}: {line}, where nextpnr writes (TIMESCALE 1ps)")
        if line.startswith("(INSTANCE"):
            cell = _unescape(line[len("(INSTANCE"):].rstrip(")").strip())
            continue
        match = _ARC.match(line)
        if match:
            kind, a1, a2, b1, b2, rise, fall = match.groups()
            delay = max(_delay(rise), _delay(fall) if fall else 0.0)
            if kind == "INTERCONNECT":
                nets.append((_pin(a1 or a2), _pin(b1 or b2), delay))
            elif cell is None:
                raise ValueError(f"SDF line {number}: IOPATH outside a cell")
            else:
                paths.append(((cell, a1 or a2), (cell, b1 or b2), delay))
            continue
        match = _CHECK.match(line)
        if match:
            if cell is None:
                raise ValueError(f"SDF line {number}: timing check outside a cell")
            _, d1, d2, c1, c2, limit = match.groups()
            checks.append(((cell, d1 or d2), (cell, c1 or c2), _delay(limit)))
    clocks = {clock for _, clock, _ in checks}

    def is_clock(pin):
        return pin in clocks or _CLOCK_PORT.match(pin[1]) is not None

    graph = TimingGraph()
    for source, sink, delay in nets:
        if not is_clock(sink):
            graph.arcs[sink].append((source, delay, "net"))
    for source, sink, delay in paths:
        graph.arcs[sink].append((source, delay, "clock" if is_clock(source) else "cell"))
    for pin, _, setup in checks:
        graph.setup[pin] = max(graph.setup.get(pin, 0.0), setup)
    return graph


def load_sdf(path):
    with open(path) as f:
        return parse_sdf(f)


def analyse(graph, period):
    """The endpoints of ``graph`` whose data arrives after ``period`` ns, latest first."""
    return [e for e in graph.endpoints() if e.arrival > period]


def group_failing(failing):
    """``[(source, endpoint, port, latest Endpoint, count)]`` by source and endpoint register, latest first."""
    groups = {}
    for e in failing:
        key = (register_name(e.source[0]), register_name(e.pin[0]), e.pin[1])
        worst, count = groups.get(key, (e, 0))
        groups[key] = (worst, count + 1)
    found = [(s, t, p, worst, count) for (s, t, p), (worst, count) in groups.items()]
    found.sort(key=lambda g: (-g[3].arrival, g[0], g[1], g[2]))
    return found


def long_nets(graph, failing, threshold):
    """``{driver pin: (paths, longest delay)}``: the routed nets of ``threshold`` ns or more on the latest paths
    into the ``failing`` endpoints, and on how many of those paths each is."""
    counts, longest = Counter(), {}
    for e in failing:
        for _, _, via in graph.path(e.pin):
            if via[2] == "net" and via[1] >= threshold:
                counts[via[0]] += 1
                longest[via[0]] = max(longest.get(via[0], 0.0), via[1])
    return {pin: (n, longest[pin]) for pin, n in counts.most_common()}


def net_names(netlist):
    """``{(cell, port): net name}`` for the output pins of a yosys JSON netlist's top module, under the names
    nextpnr-ecp5 gives them after packing (a ``LUT4``'s ``Z`` is its ``F``, a ``CCU2C``'s sums are the ``F`` of
    its two halves)."""
    top = _top_module(netlist)
    names, chosen = {}, {}
    for name, info in top.get("netnames", {}).items():
        bits = info["bits"]
        for index, bit in enumerate(bits):
            if not isinstance(bit, int):
                continue
            # Prefer a name the design gave over one yosys made up, then the shorter.
            rank = (name.startswith("$"), len(name))
            if bit not in chosen or chosen[bit] > rank:
                chosen[bit] = rank
                names[bit] = name if len(bits) == 1 else f"{name}[{index}]"
    found = {}
    for cell_name, cell in top.get("cells", {}).items():
        directions = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            if directions.get(port) != "output":
                continue
            for index, bit in enumerate(bits):
                if not isinstance(bit, int) or bit not in names:
                    continue
                net = names[bit]
                found[(cell_name, port if len(bits) == 1 else f"{port}{index}")] = net
                if cell["type"] == "LUT4" and port == "Z":
                    found[(cell_name, "F")] = net
                elif cell["type"] == "CCU2C" and port in ("S0", "S1"):
                    found[(f"{cell_name}$CCU2_COMB{port[1]}", "F")] = net
    return found


def _report(graph, period, top, paths, threshold, names, out):
    endpoints = graph.endpoints()
    failing = [e for e in endpoints if e.arrival > period]
    worst = endpoints[0].arrival if endpoints else 0.0
    print(f"{len(failing)} of {len(endpoints)} endpoints over {period:.2f} ns; latest {worst:.2f} ns "
          f"({len(graph.setup) - len(endpoints)} more with no path from a register: input pins, constants)", file=out)
    groups = group_failing(failing)
    width = max((len(g[0]) for g in groups[:top]), default=0)
    for source, target, port, latest, count in groups[:top]:
        print(f"{latest.arrival:7.2f} ns  {source:<{width}} -> {target}.{port}  (x{count})", file=out)
    nets = long_nets(graph, failing, threshold)
    if nets:
        print(f"\nnets routed {threshold:.1f} ns or more on those paths (paths, longest):", file=out)
        for pin, (count, longest) in list(nets.items())[:top]:
            print(f"{count:6d} {longest:6.2f} ns  {names.get(pin, register_name(pin[0]))}  ({pin[0]}.{pin[1]})",
                  file=out)
    for source, target, port, latest, _ in groups[:paths]:
        print(f"\n{latest.arrival:.2f} ns: {source} -> {target}.{port}", file=out)
        for pin, time, via in graph.path(latest.pin):
            kind, delay = via[2], via[1]
            net = f"  (net {names[via[0]]})" if kind == "net" and via[0] in names else ""
            print(f"  {kind:<6} {delay:5.2f} {time:7.2f}  {pin[0]}.{pin[1]}{net}", file=out)
        print(f"  setup  {graph.setup[latest.pin]:5.2f} {latest.arrival:7.2f}", file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnnacc.boards.routed",
                                     description="Every endpoint over the clock period in a routed build's SDF.")
    parser.add_argument("build_dir", type=Path, help="a board's build directory (cnnacc build --out-dir DIR: "
                                                     "DIR/BOARD), or an SDF file")
    parser.add_argument("--period", type=float, metavar="NS", help="clock period (default: the board's clock)")
    parser.add_argument("--top", type=int, default=20, metavar="N", help="groups and nets to list (default 20)")
    parser.add_argument("--paths", type=int, default=3, metavar="N", help="paths to print (default 3)")
    parser.add_argument("--long-net", type=float, default=2.0, metavar="NS",
                        help="list nets routed at least this long (default 2.0)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.top < 1 or args.paths < 0:
        parser.error("--top must be positive and --paths not negative")
    path = args.build_dir
    sdf = path if path.is_file() else next(iter(sorted(path.glob("*.sdf"))), None)
    if sdf is None:
        print(f"{path}: no SDF file here (cnnacc build writes <name>.sdf beside the bitstream)", file=sys.stderr)
        return 1
    period = args.period
    if period is None:
        from .build import BOARDS
        board = next((b for b in BOARDS if b in sdf.stem), None)
        if board is None:
            print(f"{sdf}: say the clock period (--period NS): the file name names no board", file=sys.stderr)
            return 2
        period = 1e9 / BOARDS[board].f_sys
    try:
        graph = load_sdf(sdf)
    except (OSError, ValueError) as exc:
        print(f"{sdf}: {exc}", file=sys.stderr)
        return 1
    names = {}
    netlist = sdf.with_suffix(".json")
    if netlist.is_file():
        with open(netlist) as f:
            names = net_names(json.load(f))
    _report(graph, period, args.top, args.paths, args.long_net, names, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
