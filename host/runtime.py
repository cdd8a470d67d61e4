"""The runtime: one API to run a compiled :class:`~cnnacc.host.program.Program` on any backend.

``Runtime(program, backend="golden" | "rtl" | "board").run(images)`` returns a :class:`RunResult`: the int8
outputs, the cycles and utilization of every step, and the bytes every step moves. The same program and images
give the same outputs on every backend.

``golden``
    Executes the program tile by tile with the golden NumPy operations (host/golden.py): each tile runs its
    nodes on its own input band, with the padding rows the tile's band gets (:func:`~cnnacc.host.program.tile_bands`)
    and only its own output channels, exactly as the engine is told to. A tiling mistake (a missing halo row, a
    wrong padding at a band edge, a channel block off by one) changes the outputs here, not only in RTL. Cycles
    are the cycle models' predictions, stored per tile by the compiler.
``rtl``
    :class:`cnnacc.host.rtl_backend.RtlBackend`: the gateware in cocotb + Verilator; cycles are measured, and the
    cycle model's error is reported beside them.
``board``
    :class:`cnnacc.host.board_backend.BoardBackend`: an FPGA board on a serial port (pyserial), through the same
    driver; the board's configuration id is checked when the runtime is made. Cycles are the board's own counts.
"""

import sys
from dataclasses import dataclass, field

import numpy as np

from ..hw.commands import config_id
from . import golden
from .compiler import step_utilization
from .graph import GraphError, Requant
from .program import ProgramError, tile_bands
from .quant import requantize

__all__ = ["Runtime", "RunResult", "BACKENDS", "run_tile", "check_images"]

BACKENDS = ("golden", "rtl", "board")


@dataclass
class RunResult:
    """What a run returns.

    Attributes
    ----------
    outputs : np.ndarray
        int8 ``[N, ...]``, the graph's output for every image.
    cycles : dict
        step name -> cycles of that step for one image (the first image's, for a measuring backend).
    per_image : list of dict
        step name -> cycles, one dict per image.
    model_cycles : dict
        step name -> the cycle model's prediction (equal to ``cycles`` on the golden backend).
    utilization : dict
        step name -> utilization of the step's engine (see :func:`~cnnacc.host.compiler.step_utilization`).
    traffic : dict
        step name -> ``{"bytes_in", "bytes_out", "min_in", "min_out"}``.
    backend : str
    """
    outputs: np.ndarray
    cycles: dict
    per_image: list
    model_cycles: dict
    utilization: dict
    traffic: dict
    backend: str = "golden"
    words: list = field(default_factory=list)

    @property
    def total_cycles(self):
        return sum(self.cycles.values())

    def model_error(self):
        """step name -> (model - measured) / measured, per step; empty when nothing was measured."""
        return {name: (self.model_cycles[name] - c) / c for name, c in self.cycles.items() if c}


def check_images(program, images):
    """``images`` as an int8 ``[N, H, W, C]`` array of the program's input shape, or a one-line
    :class:`ProgramError`."""
    images = np.asarray(images)
    shape = tuple(program.graph.input.shape)
    want = f"int8 images of shape [N, {', '.join(map(str, shape))}]"
    if images.dtype != np.int8:
        raise ProgramError(f"program {program.graph.name!r} takes {want}, not {images.dtype}")
    if images.ndim == len(shape):
        images = images[None]
    if images.shape[1:] != shape or images.shape[0] < 1:
        raise ProgramError(f"program {program.graph.name!r} takes {want}, not {list(images.shape)}")
    return images


def _requant_slice(rq, c0, c1, channels):
    def cut(values):
        return None if values is None else np.broadcast_to(np.asarray(values), (channels,))[c0:c1]
    return Requant(cut(rq.multiplier), cut(rq.shift), rq.zero_point, rq.qmin, rq.qmax, rq.mode,
                   cut(rq.float_scale))


def _run_node(node, graph, x, band, c0, c1, values, y_range):
    """One node of a tile: ``x`` is its input band (channels already cut for the per-channel engines)."""
    _, _, pad_top, pad_bottom = band
    kind = node.kind
    if kind in ("conv2d", "fully_connected"):
        cout = node.weights.shape[0]
        rq = _requant_slice(node.requant, c0, c1, cout)
        zp = node.input_spec.zero_point
        if kind == "fully_connected":
            acc = golden.fully_connected_acc(x, node.weights[c0:c1], node.bias[c0:c1], zp)
        else:
            padding = (pad_top, pad_bottom, node.padding[2], node.padding[3])
            acc = golden.conv2d_acc(x, node.weights[c0:c1], node.bias[c0:c1], zp, node.stride, padding)
        return requantize(acc, rq.multiplier, rq.shift, rq.zero_point, rq.qmin, rq.qmax, mode=rq.mode,
                                 float_scale=rq.float_scale)
    if kind == "depthwise_conv2d":
        c = node.weights.shape[3]
        rq = _requant_slice(node.requant, c0, c1, c)
        padding = (pad_top, pad_bottom, node.padding[2], node.padding[3])
        acc = golden.depthwise_conv2d_acc(x, node.weights[..., c0:c1], node.bias[c0:c1],
                                          node.input_spec.zero_point, node.stride, padding)
        return requantize(acc, rq.multiplier, rq.shift, rq.zero_point, rq.qmin, rq.qmax, mode=rq.mode,
                                 float_scale=rq.float_scale)
    from .graph import activation_range
    qmin, qmax = activation_range(node.activation, node.output.scale, node.output.zero_point)
    if kind in ("max_pool2d", "avg_pool2d"):
        padding = (pad_top, pad_bottom, node.padding[2], node.padding[3])
        op = golden.max_pool2d if kind == "max_pool2d" else golden.avg_pool2d
        return op(x, node.kernel, node.stride, padding, qmin, qmax)
    if kind == "add":
        y0, y1 = y_range
        other = values[node.inputs[1]][:, y0:y1, :, c0:c1]
        return golden.add(x, other, graph.spec(node.inputs[0]), graph.spec(node.inputs[1]), node.output, qmin, qmax)
    raise ProgramError(f"node {node.name!r}: the golden backend has no operation {kind!r}")


def run_tile(program, step, tile, values):
    """Outputs of one tile (``[N, y1 - y0, OW, c1 - c0]``, or ``[N, c1 - c0]`` for a flat output) computed the
    way the engines compute it: from the tile's own input band, padding and channels only."""
    graph = program.graph
    bands = tile_bands(step, tile, graph)
    x = values[step.inputs[0]]
    first = step.nodes[0]
    if first.kind != "fully_connected":
        a, b, _, _ = bands[0]
        x = x[:, a:b]
        if first.kind != "conv2d":
            x = x[..., tile.c0:tile.c1]
    for node, band in zip(step.nodes, bands):
        # Absolute output channels of the tile: the conv engine cuts its weights with them, depthwise its
        # weights and parameters, add its second input; the input band was cut above for the vector engines.
        x = _run_node(node, graph, x, band, tile.c0, tile.c1, values, (band[0], band[1]))
    return x


class Runtime:
    """Run ``program`` on ``backend``.

    Parameters
    ----------
    program : Program
    backend : str
        ``"golden"``, ``"rtl"`` or ``"board"``.
    config : AcceleratorConfig, optional
        The accelerator the program is to run on; a program compiled for another configuration is refused.
        Defaults to the program's own.
    progress : bool
        Show a progress bar over the steps (golden) or images (rtl).
    port : str or object, optional
        ``board`` only: the board's serial port (``/dev/ttyUSB1``), or an open byte port.
    baud : int, optional
        ``board`` only: the baud rate of the bitstream (default: ``board``'s, else 1,000,000).
    board : str, optional
        ``board`` only: the board's name in :data:`cnnacc.boards.build.BOARDS` (its baud rate and frame size).
    timeout : float
        ``board`` only: seconds to wait for an answer before sending a command again.
    """

    def __init__(self, program, backend="golden", *, config=None, progress=False, port=None, baud=None,
                 board=None, timeout=2.0):
        if backend not in BACKENDS:
            raise ProgramError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
        target = program.config if config is None else config
        if program.config_id != config_id(target) or (config is not None and config != program.config):
            raise ProgramError(f"program {program.graph.name!r} was compiled for configuration "
                               f"{program.config_id:#010x}, the accelerator is {config_id(target):#010x} "
                               f"({_config_diff(program.config, target)}): compile it again for this one")
        self.program, self.backend, self.config, self.progress = program, backend, target, progress
        self._device = None
        if backend == "board":
            self._device = _open_board(target, port, baud, board, timeout)
        elif backend == "rtl":
            try:
                from .rtl_backend import RtlBackend
            except ImportError as exc:
                raise ProgramError(f"backend 'rtl' is not available: {exc}") from None
            self._device = RtlBackend(target)

    def model_cycles(self):
        return {s.name: s.cycles for s in self.program.steps}

    def close(self):
        """Release the backend's device (the board's serial port); the runtime cannot run afterwards."""
        close = getattr(self._device, "close", None)
        self._device = None
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, images):
        """Run ``images`` (int8 ``[N, H, W, C]``, or one ``[H, W, C]`` image) and return a :class:`RunResult`."""
        program = self.program
        images = check_images(program, images)
        model = self.model_cycles()
        words = []
        if self.backend == "golden":
            outputs = self._run_golden(images)
            per_image = [dict(model) for _ in range(len(images))]
        else:
            if self._device is None:
                raise ProgramError(f"this {self.backend} runtime is closed: make a new Runtime")
            outputs, measured = self._device.run(program, images)
            outputs = np.asarray(outputs)
            per_image = [{name: int(v["cycles"]) for name, v in m.items()} for m in measured]
            words = [{name: (v.get("words_in"), v.get("words_out")) for name, v in m.items()} for m in measured]
        cycles = per_image[0]
        utilization = {s.name: step_utilization(self.config, program.graph, s, cycles.get(s.name, 0))
                       for s in program.steps}
        traffic = {s.name: dict(s.traffic) for s in program.steps}
        return RunResult(outputs, cycles, per_image, model, utilization, traffic, self.backend, words)

    def _run_golden(self, images):
        program, graph = self.program, self.program.graph
        values = {graph.input.name: images}
        steps = program.steps
        if self.progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc=f"{graph.name} (golden)", unit="step", leave=False, file=sys.stderr)
        n = len(images)
        for step in steps:
            shape = graph.spec(step.output).shape
            out = np.empty((n,) + tuple(shape), np.int8)
            for tile in step.tiles:
                try:
                    result = run_tile(program, step, tile, values)
                except (ValueError, GraphError) as exc:
                    if isinstance(exc, ProgramError):
                        raise
                    raise ProgramError(f"step {step.name!r}: {str(exc).splitlines()[0]}") from None
                if len(shape) == 3:
                    out[:, tile.y0:tile.y1, :, tile.c0:tile.c1] = result
                else:
                    out[..., tile.c0:tile.c1] = result.reshape(n, -1)
            values[step.output] = out
        return values[graph.output]


def _open_board(config, port, baud, board, timeout):
    """A :class:`~cnnacc.host.board_backend.BoardBackend` on ``port`` whose bitstream is built for ``config``."""
    from .board_backend import BoardBackend
    if port is None:
        raise ProgramError("backend 'board' needs the board's serial port: pass --port (e.g. /dev/ttyUSB1)")
    frame_words = 256        # the shortest frame any board's bridge takes, when the board is not named
    if board is not None:
        from ..boards.build import BOARDS
        if board not in BOARDS:
            raise ProgramError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
        baud = baud or BOARDS[board].baud
        frame_words = BOARDS[board].frame_words
    backend = BoardBackend(port, baud=baud or 1_000_000, max_words=frame_words, timeout=timeout)
    try:
        backend.check(config)
    except ProgramError:
        backend.close()
        raise
    return backend


def _config_diff(a, b):
    from dataclasses import fields
    diffs = [f"{f.name} {getattr(a, f.name)} vs {getattr(b, f.name)}" for f in fields(a)
             if getattr(a, f.name) != getattr(b, f.name)]
    return ", ".join(diffs) if diffs else "same fields"
