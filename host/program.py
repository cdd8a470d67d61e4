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
the kernel included, clipped to the map; padding is the engine's business). :func:`tile_bands` gives, for every
node of the step, the rows of its input the tile reads and the padding rows the engine adds above and below
them: a band in the middle of a map has no padding, a band at an edge has the layer's own. Each node then runs
exactly as the whole layer would, on a shorter map, so any backend can execute a tile as an ordinary layer.

A program is saved as JSON (:meth:`Program.save`): the model it came from, the configuration, the steps and the
tiles. Loading it reads the model again and checks that the nodes still match.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["STEP_KINDS", "Tile", "Step", "Program", "ProgramError", "input_rows", "tile_bands", "PROGRAM_FORMAT"]

STEP_KINDS = ("conv", "depthwise", "pool", "add")
LOOP_ORDERS = ("channels_outer", "rows_outer")
#: Version of the saved program format.
PROGRAM_FORMAT = 1


class ProgramError(ValueError):
    """A program that cannot run: wrong configuration, wrong input, a step that does not fit."""


@dataclass(frozen=True)
class Tile:
    """Output rows ``[y0, y1)`` and channels ``[c0, c1)`` of a step; ``cycles`` is the cycle model's prediction
    for this tile on its engine (filled by the compiler)."""
    y0: int
    y1: int
    c0: int
    c1: int
    cycles: int = 0


@dataclass(frozen=True)
class Step:
    """One engine run. ``loop_order`` says how the tiles are ordered (``channels_outer``: every row band of one
    channel block, then the next block; ``rows_outer``: every channel block of one row band, then the next
    band); ``traffic`` holds the bytes the step moves (``bytes_in``, ``bytes_out``) and the minimum
    (``min_in``, ``min_out``: every tensor and weight moved once)."""
    name: str
    kind: str
    nodes: tuple
    inputs: tuple        # tensor names read
    output: str          # tensor name written
    tiles: tuple         # of Tile
    loop_order: str = "channels_outer"
    traffic: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.kind not in STEP_KINDS:
            raise ProgramError(f"step {self.name!r}: unknown kind {self.kind!r}")
        if self.loop_order not in LOOP_ORDERS:
            raise ProgramError(f"step {self.name!r}: unknown loop order {self.loop_order!r}")

    @property
    def cycles(self):
        """Predicted cycles of the whole step (sum over its tiles)."""
        return sum(t.cycles for t in self.tiles)


def _window(node):
    """``(kernel_h, stride_h, pad_top, pad_bottom)`` of a windowed node along the rows."""
    if node.kind in ("conv2d", "depthwise_conv2d"):
        kh = node.weights.shape[1]
    else:
        kh = node.kernel[0]
    return kh, node.stride[0], node.padding[0], node.padding[1]


def _in_h(graph, node):
    shape = graph.spec(node.inputs[0]).shape
    return shape[0] if len(shape) == 3 else 1


def _band(node, y0, y1, in_h):
    """``(a, b, pad_top, pad_bottom)``: input rows ``[a, b)`` of ``node`` for its output rows ``[y0, y1)``, and
    the padding rows the engine adds around them."""
    if node.kind == "fully_connected":
        return 0, in_h, 0, 0
    if node.kind == "add":
        return y0, y1, 0, 0
    kh, stride, top, _ = _window(node)
    a = y0 * stride - top
    b = (y1 - 1) * stride - top + kh
    return max(a, 0), min(b, in_h), max(-a, 0), max(b - in_h, 0)


def tile_bands(step, tile, graph):
    """Per node of ``step`` (in order): ``(a, b, pad_top, pad_bottom)`` of the rows its input band covers."""
    bands = []
    y0, y1 = tile.y0, tile.y1
    for node in reversed(step.nodes):
        band = _band(node, y0, y1, _in_h(graph, node))
        bands.append(band)
        y0, y1 = band[0], band[1]
    return tuple(reversed(bands))


def input_rows(step, tile, graph):
    """Rows ``[a, b)`` of the step's first input that ``tile`` needs."""
    a, b, _, _ = tile_bands(step, tile, graph)[0]
    return a, b


@dataclass
class Program:
    """``graph`` compiled for ``config``; ``config_id`` is checked against the accelerator before a run.
    ``source`` names the model the graph was loaded from (a file or a bundled name) and ``calibration`` the
    calibration images of a float ONNX model, so that :meth:`load` can load the graph again."""
    graph: object
    config: object
    steps: list
    config_id: int
    report: dict = field(default_factory=dict)
    source: str = ""
    calibration: str = ""

    def step(self, name):
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self):
        return {
            "format": PROGRAM_FORMAT,
            "source": self.source,
            "calibration": self.calibration,
            "graph": self.graph.name,
            "config": asdict(self.config),
            "config_id": self.config_id,
            "steps": [{"name": s.name, "kind": s.kind, "nodes": [n.name for n in s.nodes], "inputs": list(s.inputs),
                       "output": s.output,
                       "shape": list(self.graph.spec(s.output).shape), "loop_order": s.loop_order, "traffic": s.traffic,
                       "tiles": [[t.y0, t.y1, t.c0, t.c1, t.cycles] for t in s.tiles]} for s in self.steps],
            "report": self.report,
        }

    def save(self, path):
        """Write the program as JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path, graph=None):
        """Read a program written by :meth:`save`; the graph is loaded again from its ``source`` unless given.
        Every failure is a :class:`ProgramError` naming the file and the reason."""
        from ..config import AcceleratorConfig
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProgramError(f"{path}: not a cnnacc program ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != PROGRAM_FORMAT:
            raise ProgramError(f"{path}: not a cnnacc program of format {PROGRAM_FORMAT}")
        try:
            config = AcceleratorConfig(**doc["config"])
            if graph is None:
                from .model_file import load_graph
                graph = load_graph(doc["source"], calibration=doc.get("calibration") or None)
            nodes = {n.name: n for n in graph.nodes}
            steps = []
            for s in doc["steps"]:
                missing = [n for n in s["nodes"] if n not in nodes]
                if missing:
                    raise ProgramError(f"{path}: step {s['name']!r} runs node {missing[0]!r}, which model "
                                       f"{doc['source']!r} does not have")
                shape = list(graph.spec(s["output"]).shape) if s["output"] in graph.tensors else None
                if shape != s["shape"]:
                    raise ProgramError(f"{path}: step {s['name']!r} writes {s['output']!r} of shape {s['shape']}, "
                                       f"model {doc['source']!r} makes it {shape}: compile the model again")
                steps.append(Step(s["name"], s["kind"], tuple(nodes[n] for n in s["nodes"]), tuple(s["inputs"]),
                                  s["output"], tuple(Tile(*t) for t in s["tiles"]), s["loop_order"], s["traffic"]))
        except FileNotFoundError as exc:
            raise ProgramError(f"{path}: {exc}") from None
        except (KeyError, TypeError) as exc:
            raise ProgramError(f"{path}: malformed program (missing or wrong field {exc})") from None
        except ValueError as exc:
            if isinstance(exc, ProgramError):
                raise
            raise ProgramError(f"{path}: {str(exc).splitlines()[0]}") from None
        return cls(graph, config, steps, doc["config_id"], doc.get("report", {}), doc["source"],
                   doc.get("calibration", ""))
