"""The main job (`make demo`): LeNet-5 on real bundled digits through the RTL simulation, checked bit for bit.

It compiles the bundled int8 LeNet-5 for the standard accelerator, runs ``count`` held-out digits through the
cocotb + Verilator simulation of the whole accelerator (host bus, command processor, engines), and prints the
predictions, the accuracy on the images run, cycles and PE utilization per layer (measured, beside the cycle
model), and whether every int8 logit equals the golden model's. Nothing it prints is assumed: every number comes
from this run.
"""

import time

import numpy as np

__all__ = ["lenet5_demo"]


def lenet5_demo(count=10, out=print):
    from ..config import DEFAULT_CONFIG
    from . import golden, models
    from .compiler import compile_graph
    from .data import load_digits
    from .report import format_table, step_rows
    from .runtime import Runtime

    if not 1 <= count <= 1000:
        raise ValueError(f"count must be from 1 to 1000 bundled digits, not {count}")
    graph = models.lenet5()
    program = compile_graph(graph, DEFAULT_CONFIG, source="lenet5")
    images, labels = load_digits("test", "int8")
    # The test digits are stored class by class: take them evenly spaced, so every class shows up.
    picked = np.arange(count) * (len(images) // count)
    images, labels = images[picked], labels[picked]
    out(f"cnnacc demo: LeNet-5 (int8) on {count} bundled MNIST test digits, RTL simulation "
        f"(cocotb + Verilator) of the {DEFAULT_CONFIG.rows}x{DEFAULT_CONFIG.cols} accelerator")
    start = time.perf_counter()
    result = Runtime(program, "rtl", progress=True).run(images)
    seconds = time.perf_counter() - start
    logits = result.outputs.reshape(count, -1)
    expected = golden.run_graph(graph, images).reshape(count, -1)
    predictions = logits.argmax(axis=1)
    out(f"labels:      {' '.join(map(str, labels[:30]))}{' ...' if count > 30 else ''}")
    out(f"predictions: {' '.join(map(str, predictions[:30]))}{' ...' if count > 30 else ''}")
    correct = int((predictions == labels).sum())
    out(f"accuracy on these {count} digits: {correct}/{count} = {100 * correct / count:.1f}%")
    out(format_table(step_rows(program, result), measured=True))
    total = result.total_cycles
    macs = program.report["total_macs"]
    out(f"per image: {total:,} cycles, PE utilization {100 * macs / (DEFAULT_CONFIG.pes * total):.1f}% "
        f"({macs:,} MACs on {DEFAULT_CONFIG.pes} PEs); {seconds:.1f} s wall for {count} images "
        f"including simulator start-up and any Verilator build")
    mismatches = int(np.count_nonzero(logits != expected))
    if mismatches:
        out(f"FAIL: {mismatches} of {logits.size} int8 logits differ from the golden model")
        return 1
    out(f"PASS: all {logits.size} int8 logits equal the golden model's")
    return 0
