"""Board build figures for docs/benchmarks.md: both bitstreams built, resources and Fmax recorded.

``bench_boards()`` builds the iCEBreaker and the ULX3S bitstreams (boards/build.py) and returns a markdown
section: LUTs, FFs, DSPs, block RAM, Fmax against the board clock, MACs per cycle and the build time. A board
that fails to build gets a row saying why (and the log), so the table always shows both.
"""

import time

from .build import BOARDS, BuildError, board_config, build

__all__ = ["bench_boards"]

#: The issue's targets: MACs per cycle and Fmax (MHz) each board should reach.
TARGETS = {"icebreaker": (16, 40.0), "ulx3s": (128, 125.0)}


def bench_boards(boards=("icebreaker", "ulx3s"), out_dir="build", seed=None):
    """Build ``boards`` and return the markdown section (a title, a table, how to reproduce)."""
    rows, notes = [], []
    started = time.perf_counter()
    for board in boards:
        config = board_config(board)
        macs, fmax_target = TARGETS[board]
        try:
            report = build(board, out_dir=out_dir, seed=seed)
        except BuildError as exc:
            tried = BOARDS[board].seed if seed is None else seed
            rows.append(f"| {board} | {config.rows}x{config.cols} = {config.pes} | - | - | - | - | - | "
                        f"{BOARDS[board].f_sys / 1e6:.1f} | failed | {tried} | - |")
            notes.append(f"- {board}: {str(exc).splitlines()[0]}")
            continue
        usage = report.usage()
        cells = [f"{usage[label][0]:,} / {usage[label][1]:,}" for label in list(usage)[:4]]
        verdict = "met" if report.timing_met else "**missed**"
        rows.append(f"| {board} | {config.rows}x{config.cols} = {config.pes} | " + " | ".join(cells) +
                    f" | {report.fmax_mhz:.1f} | {report.target_mhz:.1f} | {verdict} | {report.seed} | "
                    f"{report.seconds:.0f} s |")
        if "SPRAM (256 Kbit)" in usage:
            notes.append(f"- {board}: SPRAM {usage['SPRAM (256 Kbit)'][0]} / {usage['SPRAM (256 Kbit)'][1]}; "
                         f"{config.pes} MACs/cycle against the target of {macs} at >= {fmax_target:.0f} MHz")
        else:
            notes.append(f"- {board}: {config.pes} MACs/cycle against the target of {macs} at >= "
                         f"{fmax_target:.0f} MHz")
    lines = [
        "## Boards",
        "",
        "Bitstreams built with the YoWASP yosys/nextpnr (`cnnacc build --board NAME`, with the nextpnr seed "
        "the table gives); LUTs and FFs used / available, DSPs (iCE40 SB_MAC16, ECP5 18x18 multipliers), block RAM; "
        "Fmax is nextpnr's for the system clock the PLL makes.",
        "",
        "| board | MAC array | LUTs | FFs | DSPs | BRAM | Fmax (MHz) | clock (MHz) | timing | seed | build |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
        "",
        f"Produced by `python -m cnnacc.bench boards` ({time.perf_counter() - started:.0f} s).",
    ]
    return "\n".join(lines) + "\n"
