"""``make bench``: measure, print, and record in ``docs/benchmarks.md``.

Each benchmark owns one section of ``docs/benchmarks.md`` between ``<!-- bench:NAME -->`` markers and rewrites
only that section, so benchmarks added later leave each other's figures alone. Run: ``python -m cnnacc.bench``
(all) or ``python -m cnnacc.bench NAME``.
"""

import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from .config import DEFAULT_CONFIG

__all__ = ["BENCHMARKS", "write_section", "main"]

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name, body, doc=DOC):
    """Replace (or append) section ``name`` of ``doc`` with ``body``."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nWritten by `make bench` (`python -m cnnacc.bench`).\n"
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def bench_mac_array(out=print):
    """Cycles and PE utilization of the MAC array on GEMMs, from RTL simulation (cocotb + Verilator)."""
    from .host.gemm import run_gemm
    cfg = DEFAULT_CONFIG
    rows = []
    for m, k, n in [(8, 64, 8), (16, 64, 16), (32, 256, 32), (12, 27, 20)]:
        rng = np.random.default_rng(m * k * n)
        a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
        b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
        result = run_gemm(a, b, backend="verilator", config=cfg)
        if not result.matches_golden:
            raise SystemExit(f"bench: MAC array result differs from NumPy on {m}x{k}x{n}")
        line = (f"| {m}x{k} @ {k}x{n} | {result.useful_macs} | {result.cycles} | "
                f"{100 * result.utilization:.1f}% | {result.seconds:.2f} s |")
        out(line)
        rows.append(line)
    body = "\n".join([
        f"## MAC array GEMM ({cfg.rows}x{cfg.cols} outer-product array, RTL on Verilator)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}. "
        "Cycles from the first operand offered to the last result taken; utilization = useful MACs / "
        f"({cfg.pes} PEs x cycles). Ragged shapes are zero-padded to whole tiles, which costs utilization. "
        "Wall: time of the call, including a Verilator build when the build cache is cold.",
        "",
        "| GEMM | useful MACs | cycles | PE utilization | wall |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section("mac_array", body)


def bench_boards(out=print, boards=None):
    """Both boards' bitstreams built (minutes each; the ULX3S much longer), or the ones named: section ``boards``,
    keeping the row of a board not rebuilt."""
    from .boards.bench import bench_boards as build
    def previous():
        text = DOC.read_text() if DOC.exists() else ""
        match = re.search(r"<!-- bench:boards -->(.*?)<!-- /bench:boards -->", text, re.S)
        return match.group(1) if match else ""
    body = build(**({"boards": boards} if boards else {}), previous=previous)
    out(body)
    write_section("boards", body)


def _lazy(module, function="bench"):
    """A benchmark living in another module, imported only when it runs."""
    def run(out=print):
        import importlib
        return getattr(importlib.import_module(module), function)(out)
    return run


BENCHMARKS = {
    "mac_array": bench_mac_array,
    "accuracy": _lazy("cnnacc.host.accuracy"),
    "compute": _lazy("cnnacc.hw.bench_compute"),
    "vector": _lazy("cnnacc.hw.bench_vector"),
    "network": _lazy("cnnacc.host.bench_network"),
    "overlap": _lazy("cnnacc.host.bench_network", "bench_overlap"),
    "boards": bench_boards,
    # Last, as the longest: the full MobileNet 224 in RTL takes hours (see its section).
    "mobilenet_rtl": _lazy("cnnacc.host.bench_network", "bench_mobilenet_rtl"),
}
#: Benchmarks a plain ``python -m cnnacc.bench`` leaves out; ``make bench`` names every benchmark.
ON_REQUEST = ("mobilenet_rtl",)


def main(argv=None):
    names = (sys.argv[1:] if argv is None else argv) or [n for n in BENCHMARKS if n not in ON_REQUEST]
    from .boards.build import BOARDS
    for name in names:
        # ``boards:NAME`` builds one board.
        name, _, board = name.partition(":")
        if name not in BENCHMARKS or (board and (name != "boards" or board not in BOARDS)):
            print(f"cnnacc.bench: error: unknown benchmark {name + (':' + board if board else '')!r}; choose from "
                  f"{', '.join(BENCHMARKS)} (or boards:{'/'.join(BOARDS)})", file=sys.stderr)
            return 2
        print(f"== {name}")
        BENCHMARKS[name](**({"boards": (board,)} if board else {}))
    print(f"written to {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
