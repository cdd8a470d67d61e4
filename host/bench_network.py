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
from .model_file import load_graph, node_macs
from .report import format_kinds, step_rows
from .runtime import Runtime

__all__ = ["bench", "bench_mobilenet_rtl", "bench_overlap"]


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


def _part(graph, step, index):
    """A graph of one step's nodes, its input being the step's input (golden: the same arithmetic)."""
    from .graph import Graph
    return Graph(input=graph.spec(step.inputs[0]), nodes=list(step.nodes), output=step.output,
                 name=f"{graph.name}-{index}")


def bench_mobilenet_rtl(out=print, budget=None):
    """MobileNet v1 1.0 224 on the RTL, step by step (one simulation per step, the next step fed with this one's
    RTL output), each step checked bit for bit against golden and its cycles against the model; records section
    ``mobilenet_rtl`` of docs/benchmarks.md. Stops after ``budget`` seconds of wall time and then reports the
    measured simulation rate and the expected duration of the whole network instead of its figures. The budget
    is ``$CNNACC_BENCH_BUDGET`` seconds if set (``make bench`` leaves it unset: the whole network, hours)."""
    import os
    if budget is None:
        budget = float(os.environ.get("CNNACC_BENCH_BUDGET", "inf"))
    from ..bench import write_section
    from .rtl_backend import RtlBackend
    from .compiler import step_utilization
    from .report import _layer_kind
    config = DEFAULT_CONFIG
    graph = load_graph("mobilenet_v1")
    program = compile_graph(graph, config, "mobilenet_v1")
    x = np.random.default_rng(0).integers(-128, 128, size=(1,) + graph.input.shape, dtype=np.int8)
    total_model = sum(s.cycles for s in program.steps)
    started = time.time()
    tensors = {graph.input.name: x}
    rows, simulated, sim_wall = [], 0, 0.0
    for index, step in enumerate(program.steps):
        part = _part(graph, step, index)
        sub = compile_graph(part, config)
        backend = RtlBackend()
        got, stats = backend.run(sub, tensors[step.inputs[0]])
        want = golden.run_graph(part, tensors[step.inputs[0]])
        if not np.array_equal(got.reshape(want.shape), want):
            raise SystemExit(f"bench: MobileNet v1 step {step.name} differs from golden on the RTL")
        tensors[step.output] = got.reshape(want.shape)
        cycles = sum(st["cycles"] for st in stats[0].values())
        model = sum(s.cycles for s in sub.steps)
        bus = sum(backend.last_bus_cycles.values())
        simulated += bus
        sim_wall += backend.last_wall
        rows.append({"step": step.name, "kind": _layer_kind(step), "cycles": cycles, "model_cycles": model,
                     "bus": bus, "macs": sum(node_macs(n, graph) for n in step.nodes),
                     "utilization": step_utilization(config, graph, step, cycles), "bytes_in": 0, "min_in": 0,
                     "tiles": len(sub.steps[0].tiles)})
        elapsed = time.time() - started
        rate = simulated / sim_wall if sim_wall else 0
        done_model = sum(r["model_cycles"] for r in rows)
        eta = elapsed / done_model * (total_model - done_model) if done_model else 0
        out(f"[{index + 1}/{len(program.steps)}] {step.name}: {cycles:,} cycles (model {model:,}), bus-inclusive "
            f"{bus:,}; {rate:,.0f} simulated cycles/s; {elapsed:.0f} s so far, ~{eta:.0f} s to go")
        if elapsed > budget and index + 1 < len(program.steps):
            break
    complete = len(rows) == len(program.steps)
    rate = simulated / sim_wall if sim_wall else 0
    expected = time.time() - started if complete else (
        (time.time() - started) / sum(r["model_cycles"] for r in rows) * total_model)
    lines = [f"## MobileNet v1 (alpha 1.0, 224x224x3) on the RTL",
             "",
             f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} by `python -m cnnacc.bench mobilenet_rtl`: "
             f"one seeded image, one Verilator simulation per step (fed with the previous step's RTL output), every "
             f"step bit-exact against golden. Simulation rate {rate:,.0f} bus-inclusive cycles per second of "
             f"simulation wall time."]
    if complete:
        total = sum(r["cycles"] for r in rows)
        err = sum(r["model_cycles"] for r in rows) - total
        lines += ["", f"Whole network: {total:,} engine cycles (model error {err:+,} cycles), "
                      f"{sum(r['bus'] for r in rows):,} bus-inclusive cycles, {time.time() - started:.0f} s of wall time.",
                  "", format_kinds(rows, config)]
    else:
        lines += ["", f"Not run to completion: {len(rows)} of {len(program.steps)} steps in {time.time() - started:.0f} s "
                      f"(budget {budget} s); at that pace the whole network ({total_model:,} model cycles) takes about "
                      f"{expected / 60:.0f} min. Steps run: model error "
                      f"{sum(r['model_cycles'] - r['cycles'] for r in rows):+,} cycles over "
                      f"{sum(r['cycles'] for r in rows):,}.", "", format_kinds(rows, config)]
    body = "\n".join(lines)
    out(body)
    write_section("mobilenet_rtl", body)
    return rows


def bench_overlap(out=print, lenet_images=10, mobilenet_images=2):
    """Bus-inclusive cycles with and without double buffering (``AcceleratorDriver(overlap=...)``), on the RTL:
    LeNet-5 and the digits MobileNet on bundled digits; records section ``overlap`` of docs/benchmarks.md."""
    from ..bench import write_section
    from .models import lenet5, mobilenet_v1_digits
    from .rtl_backend import RtlBackend
    config = DEFAULT_CONFIG
    images, _ = load_digits("test", dtype="int8")
    lines = ["| network | images | driver | engine cycles / image (model) | host words / image | "
             "bus-inclusive cycles / image |", "|---|---|---|---|---|---|"]
    for name, graph, count in (("LeNet-5", lenet5(), lenet_images),
                               ("MobileNet v1 digits", mobilenet_v1_digits(), mobilenet_images)):
        program = compile_graph(graph, config)
        x = images[:count]
        want = golden.run_graph(graph, x)
        for overlap in (False, True):
            backend = RtlBackend(overlap=overlap)
            got, stats = backend.run(program, x)
            if not np.array_equal(got, want):
                raise SystemExit(f"bench: {name} on the RTL differs from golden (overlap={overlap})")
            runs = sum(stats[0][s.name]["cycles"] for s in program.steps)
            model = sum(s.cycles for s in program.steps)
            words = sum(st[k]["words_in"] + st[k]["words_out"] for st in stats for k in st) / count
            bus = sum(backend.last_bus_cycles.values()) / count
            line = (f"| {name} | {count} | {'START/WAIT, overlapped' if overlap else 'RUN per tile'} | "
                    f"{runs:,} ({model:,}) | {words:,.0f} | {bus:,.0f} |")
            out(line)
            lines.append(line)
    body = "\n".join([
        "## Double buffering: bus-inclusive cycles",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python -m cnnacc.bench overlap` on the RTL ({config.rows}x"
        f"{config.cols}, standard memories). Bus-inclusive cycles: simulation clock cycles from a step's first "
        "command to its last answer (STATUS's cycle counter), summed over the steps and divided by the images; "
        "the simulated host bus moves one 32-bit word per cycle. `RUN per tile` writes a tile, runs it and reads it "
        "back in sequence; `START/WAIT` loads the next tile and reads the previous one while a tile runs. "
        "Outputs equal golden in both.",
        "",
        *lines,
    ])
    write_section("overlap", body)
