"""A compiled program: what the compiler produces and every backend runs.

A :class:`Program` is a graph cut into :class:`Step` s, each one run of one engine over one fused group of graph
nodes, itself cut into :class:`Tile` s that fit the engine's memories. The same program, run on the same int8
inputs, gives identical outputs on every backend (golden, rtl, board); the backends differ only in how a tile
is executed.

Step kinds and their nodes:

``"conv"``
    ``(Conv2D,)``, ``(FullyConnected,)``, or ``(Conv2D, MaxPool2D | AvgPool2D)`` fused (conv -> requant ->
    activation -> pool without a round trip through memory). Runs on the convolution engine.
``"depthwise"``
    ``(DepthwiseConv2D,)`` on the depthwise engine.
``"pool"``
    ``(MaxPool2D | AvgPool2D,)`` on the pooling engine (global average is an AvgPool2D over the whole map).
``"add"``
    ``(Add,)`` on the add engine.

A tile covers output rows ``[y0, y1)`` and output channels ``[c0, c1)`` of the step's *final* output (for a
fused conv + pool, of the pool's output). :func:`input_rows` gives the input rows a tile needs (the halo of
the kernel included, clipped to the map; padding is the engine's business).
"""

from dataclasses import dataclass, field

__all__ = ["STEP_KINDS", "Tile", "Step", "Program", "ProgramError", "input_rows"]

STEP_KINDS = ("conv", "depthwise", "pool", "add")


class ProgramError(ValueError):
    """A program that cannot run: wrong configuration, wrong input, a step that does not fit."""


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    c0: int
    c1: int


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    nodes: tuple
    inputs: tuple        # tensor names read
    output: str          # tensor name written
    tiles: tuple         # of Tile

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ProgramError(f"step {self.name!r}: unknown kind {self.kind!r}")


def _rows_of(node, y0, y1, in_h):
    """Input rows ``[a, b)`` one node needs for its output rows ``[y0, y1)``."""
    kind = node.kind
    if kind in ("fully_connected", "add"):
        return (0, in_h) if kind == "fully_connected" else (y0, y1)
    if kind in ("conv2d", "depthwise_conv2d"):
        kh, stride, top = node.weights.shape[1], node.stride[0], node.padding[0]
    else:
        kh, stride, top = node.kernel[0], node.stride[0], node.padding[0]
    a = y0 * stride - top
    b = (y1 - 1) * stride - top + kh
    return max(a, 0), min(b, in_h)


def input_rows(step, tile, graph):
    """Rows ``[a, b)`` of the step's first input that ``tile`` needs."""
    y0, y1 = tile.y0, tile.y1
    for node in reversed(step.nodes):
        in_h = graph.spec(node.inputs[0]).shape[0] if len(graph.spec(node.inputs[0]).shape) == 3 else 1
        y0, y1 = _rows_of(node, y0, y1, in_h)
    return y0, y1


@dataclass
class Program:
    """``graph`` compiled for ``config``; ``config_id`` is checked against the accelerator before a run."""
    graph: object
    config: object
    steps: list
    config_id: int
    report: dict = field(default_factory=dict)
