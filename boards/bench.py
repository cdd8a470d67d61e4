"""Board build figures for docs/benchmarks.md: both bitstreams built, resources and Fmax recorded.

``bench_boards()`` builds the iCEBreaker and the ULX3S bitstreams (boards/build.py) and returns a markdown
section: LUTs, FFs, DSPs, block RAM, Fmax against the board clock, MACs per cycle, the build time and the commit
built. A board that fails to build gets a row saying why (and the log), so every board built has a row.

The ULX3S's place-and-route takes far longer than the iCEBreaker's, so one board can be rebuilt alone
(``python -m cnnacc.bench boards:ulx3s``): the other board's row and note are then carried over from the section
as it stands (``previous``), with the commit they were measured on.
"""

import subprocess
import time
from pathlib import Path

from .build import BOARDS, BuildError, board_config, build

__all__ = ["bench_boards"]

#: The issue's targets: MACs per cycle and Fmax (MHz) each board should reach.
TARGETS = {"icebreaker": (16, 40.0), "ulx3s": (128, 125.0)}


def source_commit():
    """The commit the working tree is at (short hash), with ``+changes`` if tracked files differ from it; ``?``
    outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty else "")


def bench_boards(boards=("icebreaker", "ulx3s"), out_dir="build", seed=None, previous=""):
    """Build ``boards`` and return the markdown section (a title, a table, how to reproduce). The row and note
    of a board not in ``boards`` are kept from ``previous`` (the section's text as it stands, or a function
    returning it, called once the builds are done: a build takes long, and another run may have written its
    board's row meanwhile), if it has them."""
    for board in boards:
        if board not in BOARDS:
            raise BuildError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    rows, notes = {}, {}
    commit = source_commit()
    started = time.perf_counter()
    for board in boards:
        rows[board], notes[board] = [], []
        config = board_config(board)
        macs, fmax_target = TARGETS[board]
        try:
            report = build(board, out_dir=out_dir, seed=seed)
        except BuildError as exc:
            tried = BOARDS[board].seed if seed is None else seed
            rows[board].append(f"| {board} | {config.rows}x{config.cols} = {config.pes} | - | - | - | - | - | "
                               f"{BOARDS[board].f_sys / 1e6:.1f} | failed | {tried} | - | {commit} |")
            notes[board].append(f"- {board}: {str(exc).splitlines()[0]}")
            continue
        usage = report.usage()
        cells = [f"{usage[label][0]:,} / {usage[label][1]:,}" for label in list(usage)[:4]]
        verdict = "met" if report.timing_met else "**missed**"
        rows[board].append(f"| {board} | {config.rows}x{config.cols} = {config.pes} | " + " | ".join(cells) +
                           f" | {report.fmax_mhz:.1f} | {report.target_mhz:.1f} | {verdict} | {report.seed} | "
                           f"{report.seconds:.0f} s | {commit} |")
        spram = (f"SPRAM {usage['SPRAM (256 Kbit)'][0]} / {usage['SPRAM (256 Kbit)'][1]}; "
                 if "SPRAM (256 Kbit)" in usage else "")
        notes[board].append(f"- {board}: {spram}{config.pes} MACs/cycle against the target of {macs} at >= "
                            f"{fmax_target:.0f} MHz ({time.strftime('%Y-%m-%d')})")
    for line in (previous() if callable(previous) else previous).splitlines():
        for board in BOARDS:
            if board not in boards and line.startswith((f"| {board} |", f"- {board}:")):
                (rows if line.startswith("|") else notes).setdefault(board, []).append(line)
    order = [board for board in BOARDS if board in rows]
    lines = [
        "## Boards",
        "",
        "Bitstreams built with the YoWASP yosys/nextpnr (`cnnacc build --board NAME`, with the nextpnr seed "
        "the table gives); LUTs and FFs used / available, DSPs (iCE40 SB_MAC16, ECP5 18x18 multipliers), block RAM; "
        "Fmax is nextpnr's for the system clock the PLL makes.",
        "",
        "| board | MAC array | LUTs | FFs | DSPs | BRAM | Fmax (MHz) | clock (MHz) | timing | seed | build | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[line for board in order for line in rows[board]],
        "",
        *[line for board in order for line in notes.get(board, [])],
        "",
        f"Produced by `python -m cnnacc.bench boards` (both boards; `boards:icebreaker` or `boards:ulx3s` rebuilds "
        f"one and keeps the other's row); this run built {', '.join(boards)} in "
        f"{time.perf_counter() - started:.0f} s.",
    ]
    return "\n".join(lines) + "\n"
