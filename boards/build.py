"""``cnnacc build --board icebreaker|ulx3s``: bitstreams through the YoWASP yosys/nextpnr builds.

:func:`build` elaborates the board top (boards/top.py) around the accelerator for the board's configuration,
runs yosys, nextpnr and the bitstream packer from the virtual environment (no system install), and reads the
resource use and the achieved Fmax from nextpnr's log into a :class:`BuildReport`.
"""

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..tools import yowasp_env

__all__ = ["BoardSpec", "BOARDS", "BuildReport", "BuildError", "build", "parse_nextpnr_log"]


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
    config: object = None    # AcceleratorConfig; None: the core factory's default
    flash: str = ""

    def make_platform(self):
        module, cls = self.platform.split(":")
        import importlib
        return getattr(importlib.import_module(module), cls)()


BOARDS = {
    "icebreaker": BoardSpec("icebreaker", "ice40", "amaranth_boards.icebreaker:ICEBreakerPlatform",
                            f_sys=42e6, baud=1_000_000, leds=2, frame_words=256,
                            flash="iceprog {bitstream}   (or: openFPGALoader -b ice40_generic {bitstream})"),
    "ulx3s": BoardSpec("ulx3s", "ecp5", "amaranth_boards.ulx3s:ULX3S_85F_Platform",
                       f_sys=125e6, baud=3_000_000, leds=3, frame_words=1024,
                       flash="openFPGALoader -b ulx3s {bitstream}"),
}


@dataclass
class BuildReport:
    board: str
    bitstream: Path
    log: Path
    target_mhz: float
    fmax_mhz: float
    resources: dict = field(default_factory=dict)    # cell type -> (used, available)
    seconds: float = 0.0

    @property
    def timing_met(self):
        return self.fmax_mhz >= self.target_mhz

    def summary(self):
        lines = [f"{self.board}: {self.bitstream} ({self.seconds:.0f} s)"]
        for cell, (used, total) in sorted(self.resources.items()):
            lines.append(f"  {cell:<14} {used:>6} / {total:<6} ({100 * used / total:.0f}%)")
        verdict = "met" if self.timing_met else "MISSED"
        lines.append(f"  Fmax {self.fmax_mhz:.1f} MHz against {self.target_mhz:.1f} MHz: timing {verdict}")
        return "\n".join(lines)


_UTIL = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
_FMAX = re.compile(r"Info: Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text):
    """``(resources, [(clock, fmax, target)])`` from a nextpnr log; the last report of each kind wins."""
    resources = {}
    for cell, used, total in _UTIL.findall(text):
        resources[cell] = (int(used), int(total))
    clocks = {}
    for clock, fmax, _, target in _FMAX.findall(text):
        clocks[clock] = (float(fmax), float(target))
    return resources, [(clock, f, t) for clock, (f, t) in clocks.items()]


def build(board, *, out_dir="build", core_factory=None, name=None, seed=1):
    """Build ``board`` ("icebreaker" or "ulx3s"); returns a :class:`BuildReport`.

    Raises :class:`BuildError` if a tool fails (naming the log) or if nextpnr reports no clock.
    """
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    spec = BOARDS[board]
    from .top import BoardTop
    if core_factory is None:
        from ..hw.accelerator import Accelerator
        config = spec.config

        def core_factory():
            return Accelerator(config) if config is not None else Accelerator()
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
        overrides = {"nextpnr_opts": f"--seed {seed} --timing-allow-fail"}
        core = core_factory()
        if spec.family == "ice40":
            overrides["synth_opts"] = "-dsp"
        elif getattr(getattr(core, "config", None), "target", None) == "ecp5":
            # The MAC array instantiates its MULT18X18D blocks itself; every other product (depthwise taps,
            # requantizer multiplies) is left to LUTs, since inferred ones would overflow the 156 blocks.
            overrides["synth_opts"] = "-nodsp"
        platform.build(BoardTop(spec, lambda: core), name=name, build_dir=str(out_dir), do_program=False,
                       **overrides)
    except Exception as exc:
        log = out_dir / f"{name}.tim"
        raise BuildError(f"{board} build failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                         f"see {log if log.exists() else out_dir}") from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - start
    log = out_dir / f"{name}.tim"
    resources, clocks = parse_nextpnr_log(log.read_text(errors="replace"))
    sync = [c for c in clocks if "sync" in c[0] or "PLL" in c[0].upper() or "clk" in c[0].lower()]
    if not sync:
        raise BuildError(f"{board}: nextpnr reported no clock frequency; see {log}")
    clock, fmax, target = min(sync, key=lambda c: c[1] - c[2])
    bitstream = out_dir / f"{name}.{'bin' if spec.family == 'ice40' else 'bit'}"
    return BuildReport(board=board, bitstream=bitstream, log=log, target_mhz=target, fmax_mhz=fmax,
                       resources=resources, seconds=seconds)
