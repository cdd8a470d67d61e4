"""Per-step report of a compiled program or a run: a text table and a PNG plot of cycles and utilization.

The table lists, for every step, its engine, tiles, loop order, cycles, utilization of its engine and the bytes
it moves beside the minimum; :func:`kind_summary` adds them up by kind of layer. The plot (matplotlib, imported
only when a plot is asked for) draws cycles per step as bars and utilization as a line on a second axis.
"""

__all__ = ["step_rows", "format_table", "kind_summary", "format_kinds", "plot"]

#: Kind of layer a step counts under in the summary, by its first node.
_LAYER_KIND = {"conv2d": "conv", "fully_connected": "fully connected", "depthwise_conv2d": "depthwise",
               "max_pool2d": "pool", "avg_pool2d": "pool", "add": "add"}


def _layer_kind(step):
    node = step.nodes[0]
    if node.kind == "conv2d":
        kh, kw = node.weights.shape[1:3]
        kind = "pointwise" if (kh, kw) == (1, 1) else "conv"
        return kind + " + pool" if len(step.nodes) > 1 else kind
    return _LAYER_KIND[node.kind]


def step_rows(program, result=None):
    """One dict per step: name, layer kind, tiles, loop order, cycles, model cycles, utilization, traffic.

    With a :class:`~cnnacc.host.runtime.RunResult`, cycles and utilization are the run's; else the compiler's
    predictions."""
    from .compiler import step_utilization
    from .model_file import node_macs
    rows = []
    for step in program.steps:
        cycles = result.cycles[step.name] if result is not None else step.cycles
        util = (result.utilization[step.name] if result is not None
                else step_utilization(program.config, program.graph, step, cycles))
        rows.append({"step": step.name, "kind": _layer_kind(step), "tiles": len(step.tiles),
                     "loop_order": step.loop_order, "cycles": cycles, "model_cycles": step.cycles,
                     "macs": sum(node_macs(n, program.graph) for n in step.nodes), "utilization": util,
                     **step.traffic})
    return rows


def format_table(rows, measured=False):
    """The rows as an aligned text table (with the model's cycles and error beside measured ones)."""
    header = ["step", "kind", "tiles", "order", "cycles"]
    if measured:
        header += ["model", "error"]
    header += ["util", "bytes in", "min in", "bytes out"]
    table = [header]
    for r in rows:
        line = [r["step"], r["kind"], str(r["tiles"]), r["loop_order"].split("_")[0], f"{r['cycles']:,}"]
        if measured:
            error = (r["model_cycles"] - r["cycles"]) / r["cycles"] if r["cycles"] else 0.0
            line += [f"{r['model_cycles']:,}", f"{100 * error:+.2f}%"]
        line += [f"{100 * r['utilization']:.1f}%", f"{r['bytes_in']:,}", f"{r['min_in']:,}", f"{r['bytes_out']:,}"]
        table.append(line)
    total_cycles = sum(r["cycles"] for r in rows)
    total = ["total", "", str(sum(r["tiles"] for r in rows)), "", f"{total_cycles:,}"]
    if measured:
        model = sum(r["model_cycles"] for r in rows)
        total += [f"{model:,}", f"{100 * (model - total_cycles) / total_cycles:+.2f}%" if total_cycles else ""]
    total += ["", f"{sum(r['bytes_in'] for r in rows):,}", f"{sum(r['min_in'] for r in rows):,}",
              f"{sum(r['bytes_out'] for r in rows):,}"]
    table.append(total)
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    text = []
    for row in table:
        text.append("  ".join(v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(text)


def kind_summary(rows):
    """Steps, cycles, MACs and bytes added up by kind of layer."""
    kinds = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"steps": 0, "cycles": 0, "macs": 0, "bytes_in": 0, "min_in": 0})
        k["steps"] += 1
        k["cycles"] += r["cycles"]
        k["macs"] += r["macs"]
        k["bytes_in"] += r["bytes_in"]
        k["min_in"] += r["min_in"]
    return kinds


def format_kinds(rows, config):
    """Markdown summary by kind: steps, cycles and share of the total, MACs, utilization of the engine that
    runs the kind (``rows x cols`` PEs for conv, pointwise and fully connected; ``3 x 3 x lanes`` multipliers
    for depthwise; none for pool and add), bytes read over the minimum."""
    from .compiler import DEPTHWISE_KERNEL
    kinds = kind_summary(rows)
    total = sum(k["cycles"] for k in kinds.values()) or 1
    lines = ["| kind | steps | cycles | share | MACs | engine utilization | bytes in / min |", "|---|---|---|---|---|---|---|"]
    for name, k in kinds.items():
        if name == "depthwise":
            capacity = DEPTHWISE_KERNEL ** 2 * config.lanes
        elif name in ("pool", "add"):
            capacity = None
        else:
            capacity = config.pes
        util = f"{100 * k['macs'] / (capacity * k['cycles']):.1f}%" if capacity and k["cycles"] else "-"
        ratio = f"{k['bytes_in'] / k['min_in']:.3f}" if k["min_in"] else "-"
        lines.append(f"| {name} | {k['steps']} | {k['cycles']:,} | {100 * k['cycles'] / total:.1f}% | "
                     f"{k['macs']:,} | {util} | {ratio} |")
    return "\n".join(lines)


def plot(rows, path, title="cycles and utilization per step"):
    """Write a PNG: cycles per step (bars, log scale) and utilization (line, right axis)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("the report plot needs matplotlib: pip install matplotlib") from None
    names = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(rows) + 2), 4.5))
    positions = range(len(rows))
    ax.bar(positions, [r["cycles"] for r in rows], color="tab:blue", label="cycles")
    ax.set_yscale("log")
    ax.set_ylabel("cycles (log)")
    ax.set_xticks(list(positions), names, rotation=90, fontsize=7)
    twin = ax.twinx()
    twin.plot(list(positions), [100 * r["utilization"] for r in rows], color="tab:red", marker="o", markersize=3,
              label="utilization")
    twin.set_ylim(0, 105)
    twin.set_ylabel("engine utilization (%)")
    ax.set_title(title, pad=22)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    # Above the axes, so it hides no bar.
    ax.legend(handles, ["cycles", "utilization"], loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2,
              frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
