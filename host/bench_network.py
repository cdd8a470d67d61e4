"""Whole-network benchmark: LeNet-5 end to end and MobileNet v1 (alpha 1.0, 224x224) as compiled programs.

LeNet-5: cycles and utilization of every step from the cycle model (golden backend), and measured on the RTL
(cocotb + Verilator, one digit) with the model's error beside them. MobileNet v1 224: the compiled program run
once in the golden backend (outputs checked against golden.run_graph), its cycles per layer kind from the cycle
model, the engines' utilization, and the bytes moved against the minimum (every tensor and weight once).

Run: ``python -c "from cnnacc.host.bench_network import bench; bench()"`` (or ``make bench`` once registered).
"""

import platform
import time

import numpy as np

from ..config import DEFAULT_CONFIG
from . import golden
from .compiler import compile_graph
from .data import load_digits
from .model_file import load_graph
from .report import format_kinds, step_rows
from .runtime import Runtime

__all__ = ["bench"]


def _lenet(config, out):
    graph = load_graph("lenet5")
    program = compile_graph(graph, config, "lenet5")
    images, labels = load_digits("test", dtype="int8")
    x = images[:1]
    golden_result = Runtime(program).run(x)
    measured, wall, note = None, None, ""
    try:
        start = time.time()
        measured = Runtime(program, "rtl").run(x)
        wall = time.time() - start
        if not np.array_equal(measured.outputs, golden_result.outputs):
            raise SystemExit("bench: LeNet-5 RTL output differs from the golden backend")
    except Exception as exc:        # the benchmark still records the model when the RTL cannot run
        if isinstance(exc, SystemExit):
            raise
        note = f"RTL not measured: {str(exc).splitlines()[0]}"
    lines = ["| step | kind | tiles | model cycles | RTL cycles | model error | PE utilization (RTL) |",
             "|---|---|---|---|---|---|---|"]
    for row in step_rows(program, measured):
        rtl = f"{row['cycles']:,}" if measured else "-"
        error = f"{100 * (row['model_cycles'] - row['cycles']) / row['cycles']:+.2f}%" if measured else "-"
        line = (f"| {row['step']} | {row['kind']} | {row['tiles']} | {row['model_cycles']:,} | {rtl} | {error} | "
                f"{100 * row['utilization']:.1f}% |")
        out(line)
        lines.append(line)
    model_total = golden_result.total_cycles
    macs = program.report["total_macs"]
    if measured:
        total = measured.total_cycles
        lines.append(f"| total | | {sum(len(s.tiles) for s in program.steps)} | {model_total:,} | {total:,} | "
                     f"{100 * (model_total - total) / total:+.2f}% | {100 * macs / (config.pes * total):.1f}% |")
        summary = (f"End to end on the RTL: {total:,} cycles of engine runs for one digit ({macs:,} MACs), "
                   f"simulated in {wall:.1f} s (Verilator build cached); host-bus words per image: "
                   f"{sum(w[0] + w[1] for w in measured.words[0].values()):,}.")
    else:
        lines.append(f"| total | | | {model_total:,} | - | - | {100 * macs / (config.pes * model_total):.1f}% |")
        summary = note
    out(summary)
    return lines, summary


def _mobilenet(config, out):
    start = time.time()
    graph = load_graph("mobilenet_v1")
    program = compile_graph(graph, config, "mobilenet_v1")
    compile_wall = time.time() - start
    x = np.random.default_rng(0).integers(-128, 128, size=(1,) + graph.input.shape, dtype=np.int8)
    start = time.time()
    result = Runtime(program).run(x)
    run_wall = time.time() - start
    if not np.array_equal(result.outputs, golden.run_graph(graph, x)):
        raise SystemExit("bench: MobileNet v1 tiled golden run differs from golden.run_graph")
    report = program.report
    rows = step_rows(program, result)
    total = result.total_cycles
    traffic, minimum = report["bytes_in"] + report["bytes_out"], report["min_in"] + report["min_out"]
    summary = (f"MobileNet v1 1.0 224: {len(program.steps)} steps, {sum(len(s.tiles) for s in program.steps)} "
               f"tiles; {total:,} cycles per image (cycle model), {report['total_macs']:,} MACs, "
               f"MACs / ({config.pes} PEs x cycles) = {100 * report['total_macs'] / (config.pes * total):.1f}% over the "
               f"whole network (the depthwise MACs, run on their own engine, counted too); traffic {traffic:,} bytes vs minimum {minimum:,} ({traffic / minimum:.3f}x); "
               f"activation arena {report['memory']['arena_bytes']:,} bytes. Compile {compile_wall:.1f} s, "
               f"tiled golden run {run_wall:.1f} s.")
    out(summary)
    kinds = format_kinds(rows, config)
    out(kinds)
    return summary, kinds


def bench(out=print):
    """Print and record section ``network`` of docs/benchmarks.md."""
    from ..bench import write_section
    config = DEFAULT_CONFIG
    lenet_lines, lenet_summary = _lenet(config, out)
    mobilenet_summary, kinds = _mobilenet(config, out)
    body = "\n".join([
        "## Whole networks (compiled programs)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}, "
        f"{config.rows}x{config.cols} array, {config.lanes} lanes, standard memories. Cycles are engine run "
        "cycles (from a RUN command to its last result written), summed over a step's tiles; the host's memory "
        "transfers are not counted in them (they are the traffic). Utilization: useful MACs / (PEs x cycles) "
        "for conv, pointwise and fully connected steps; MACs / (3x3 x lanes multipliers x cycles) for "
        "depthwise; input elements / (lanes x cycles) for pool and add. The cycle model is "
        "host/cycles_conv.py and host/cycles_vector.py, per tile, as host/compiler.py stores it in the program.",
        "",
        "### LeNet-5, one digit",
        "",
        *lenet_lines,
        "",
        lenet_summary,
        "",
        "### MobileNet v1 (alpha 1.0, 224x224x3), one image, golden backend",
        "",
        mobilenet_summary,
        "",
        kinds,
    ])
    write_section("network", body)


if __name__ == "__main__":
    bench()
