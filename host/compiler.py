"""The compiler: an imported :class:`~cnnacc.host.graph.Graph` to a :class:`~cnnacc.host.program.Program`.

Four passes:

1. **Fusion.** A convolution whose only consumer is a max or average pool becomes one ``conv`` step: the
   convolution engine's requantized output (activation clamp included: ReLU is the requantizer's clamp) streams
   straight into the pooling engine, so the unpooled map never reaches memory. Both engines must move the same
   number of channels a beat (``rows == lanes``), else the pool stays a step of its own.
2. **Tiling.** Every step is cut into tiles of output rows x output channels that fit each memory of its engine
   (hw/conv_engine.py: input map ``conv_act_depth`` words of ``act_banks`` bytes, ``conv_weight_depth`` weight
   words, ``conv_param_depth`` parameter words; the vector engines and the output buffer: ``vector_depth`` pixels
   of ``lanes`` channels). Row bands carry the kernel's halo (:func:`~cnnacc.host.program.tile_bands`), channel
   tiles are whole blocks of ``rows`` (conv) or ``lanes`` (vector engines). Among the tile sizes that fit, the
   one that moves the fewest bytes wins. A tile's input and output maps are fitted into *half* of their memories
   when any tiling allows it, so that the driver can load the next tile into the other half while this one runs
   (host/driver.py); weights may use the whole memory (a block's weights serve every image of a batch).
3. **Loop order.** A convolution's row bands all need every input channel and its channel blocks all need the
   whole input: with several of each, either the input is read once per channel block (``channels_outer``) or
   the weights once per row band (``rows_outer``). The compiler counts both and keeps the cheaper; a single
   band (or a single block) stays resident, so its traffic is paid once.
4. **Memory plan.** Tensors that reach memory get offsets in one activation arena, reusing the space of tensors
   no later step reads (first fit, in step order); weights and parameters get their own region.

Every tile's engine descriptor is built with the engine's own checker (``conv_layer``, ``depthwise_layer``,
``pool_layer``, ``add_layer``), so a layer the hardware cannot run is refused here with the engine's reason,
and the cycle models (host/cycles_conv.py, host/cycles_vector.py) predict each tile's cycles from the same
descriptor the RTL receives.
"""

import math

from ..hw.accelerator import DW_GROUPS, DW_KERNEL, conv_output_stages
from ..hw.add_engine import add_latency, add_layer
from ..hw.commands import config_id
from ..hw.conv_engine import act_banks, check_conv_limits, conv_layer
from ..hw.depthwise import depthwise_layer
from ..hw.memory_map import engine_read_latency
from ..hw.pool_engine import PoolMode, check_pool_support, pool_extra_stages, pool_input_stages, pool_layer
from ..hw.requantizer import check_shifts
from ..hw.window_generator import window_scan_start
from .cycles_conv import conv_cycles
from .cycles_vector import depthwise_cycles, global_divider_bits, pool_cycles, pool_latency, window_cycles
from .graph import activation_range
from .model_file import node_macs
from .program import Program, ProgramError, Step, Tile, tile_bands

__all__ = ["compile_graph", "build_report", "node_descriptor", "tile_descriptors", "tile_cycles", "run_overhead", "step_utilization", "DEPTHWISE_KERNEL", "PARAM_BYTES"]

#: Kernel side the depthwise engine is built for (MobileNet's 3x3; hw/accelerator.py).
DEPTHWISE_KERNEL = DW_KERNEL
#: Bytes of requantization parameters per output channel in memory: folded bias (4), multiplier (4), shift (1).
PARAM_BYTES = 9
_POOLS = ("max_pool2d", "avg_pool2d")
_STEP_KIND = {"conv2d": "conv", "fully_connected": "conv", "depthwise_conv2d": "depthwise", "max_pool2d": "pool",
              "avg_pool2d": "pool", "add": "add"}
_KIND_WORDS = {"conv2d": "convolution", "fully_connected": "fully connected", "depthwise_conv2d": "depthwise",
               "max_pool2d": "max pooling", "avg_pool2d": "average pooling", "add": "add"}


def _cdiv(a, b):
    return -(-a // b)


def _fail(node, reason):
    raise ProgramError(f"node {node.name!r}: {reason}")


def _engine(node, check, *args, **kwargs):
    """Run an engine's descriptor checker; its ``ValueError`` becomes a one-line :class:`ProgramError`."""
    try:
        return check(*args, **kwargs)
    except ValueError as exc:
        message = str(exc).splitlines()[0]
        raise ProgramError(message if node.name in message else f"node {node.name!r}: {message}") from None


def _shape3(shape):
    """``(H, W, C)`` of an activation tensor; a flat vector is one pixel."""
    return tuple(shape) if len(shape) == 3 else (1, 1, int(math.prod(shape)))


def _is_global(config, node, in_shape):
    """An average over the whole map with a kernel wider than the pool engine's windows runs on the global
    divider; one that fits :func:`~cnnacc.hw.pool_engine.pool_max_kernel` runs as an ordinary window."""
    from ..hw.pool_engine import pool_max_kernel
    h, w, _ = in_shape
    return (node.kind == "avg_pool2d" and tuple(node.kernel) == (h, w) and not any(node.padding)
            and node.kernel[0] > pool_max_kernel(config))


def node_descriptor(config, graph, node, band, c0, c1):
    """The engine descriptor of ``node`` over the input band ``(a, b, pad_top, pad_bottom)`` and output
    channels ``[c0, c1)`` (a :func:`~cnnacc.hw.conv_engine.conv_layer` dict for conv and fully connected, else
    the vector engine's descriptor)."""
    a, b, pad_top, pad_bottom = band
    h, w, cin = _shape3(graph.spec(node.inputs[0]).shape)
    channels = c1 - c0
    kind = node.kind
    if kind in ("conv2d", "fully_connected", "depthwise_conv2d"):
        rq = node.requant
        common = dict(qmin=rq.qmin, qmax=rq.qmax)
    if kind == "conv2d":
        if node.stride[0] != node.stride[1]:
            _fail(node, f"stride {tuple(node.stride)} must be equal in both axes")
        padding = (pad_top, pad_bottom, node.padding[2], node.padding[3])
        return _engine(node, conv_layer, config, (b - a, w, cin), (channels,) + node.weights.shape[1:],
                       stride=node.stride[0], padding=padding, in_zp=node.input_spec.zero_point,
                       out_zp=rq.zero_point, rounding=rq.mode, name=node.name, **common)
    if kind == "fully_connected":
        depth = node.weights.shape[1]
        return _engine(node, conv_layer, config, (1, 1, depth), (channels, 1, 1, depth),
                       in_zp=node.input_spec.zero_point, out_zp=rq.zero_point, rounding=rq.mode, name=node.name,
                       **common)
    if kind == "depthwise_conv2d":
        _, kh, kw, _ = node.weights.shape
        if kh != kw or node.stride[0] != node.stride[1]:
            _fail(node, f"depthwise kernel {kh}x{kw} stride {tuple(node.stride)} must be square")
        if kh > DEPTHWISE_KERNEL:
            _fail(node, f"depthwise kernel {kh}x{kw} exceeds the depthwise engine's "
                        f"{DEPTHWISE_KERNEL}x{DEPTHWISE_KERNEL}")
        return _engine(node, depthwise_layer, config, height=b - a, width=w, channels=channels, kernel=kh,
                       stride=node.stride[0], padding=(pad_top, pad_bottom, node.padding[2], node.padding[3]),
                       zero_point_in=node.input_spec.zero_point, zero_point_out=rq.zero_point, mode=rq.mode,
                       max_kernel=DEPTHWISE_KERNEL, name=node.name, **common)
    qmin, qmax = activation_range(node.activation, node.output.scale, node.output.zero_point)
    groups = _cdiv(channels, config.lanes)
    if kind in _POOLS:
        if _is_global(config, node, (h, w, cin)):
            return _engine(node, pool_layer, config, PoolMode.GLOBAL_AVG, height=b - a, width=w, groups=groups,
                           qmin=qmin, qmax=qmax, name=node.name)
        kh, kw = node.kernel
        if kh != kw or node.stride[0] != node.stride[1]:
            _fail(node, f"pool kernel {kh}x{kw} stride {tuple(node.stride)} must be square")
        mode = PoolMode.MAX if kind == "max_pool2d" else PoolMode.AVG
        return _engine(node, pool_layer, config, mode, height=b - a, width=w, groups=groups, kernel=kh,
                       stride=node.stride[0], padding=(pad_top, pad_bottom, node.padding[2], node.padding[3]),
                       qmin=qmin, qmax=qmax, name=node.name)
    if kind == "add":
        spec1, spec2 = graph.spec(node.inputs[0]), graph.spec(node.inputs[1])
        if spec1.shape != spec2.shape:
            _fail(node, f"inputs of shapes {list(spec1.shape)} and {list(spec2.shape)} differ")
        return _engine(node, add_layer, spec1, spec2, node.output, count=(b - a) * w * groups, qmin=qmin,
                       qmax=qmax, name=node.name)
    _fail(node, f"no engine runs {kind!r} layers (supported: {', '.join(_STEP_KIND)})")


def tile_descriptors(config, graph, step, tile):
    """Engine descriptors of every node of ``step`` for ``tile`` (what a backend programs the engines with)."""
    bands = tile_bands(step, tile, graph)
    return [node_descriptor(config, graph, node, band, tile.c0, tile.c1) for node, band in zip(step.nodes, bands)]


def _pool_tail(config, layer):
    """Cycles a pool fused behind the conv engine adds after it has taken the conv's last pixel (the pool engine's
    latency for ``config``'s target included)."""
    window = dict(layer["window"], groups=1)
    # The pool's input slice on the ECP5 (pool_input_stages) hands it the conv's last pixel a cycle later.
    if layer["mode"] == PoolMode.GLOBAL_AVG:
        return global_divider_bits(config) + 2 + pool_input_stages(config)
    padded_w = window["width"] + window["pad_left"] + window["pad_right"]
    last_pixel = (window["pad_top"] + window["height"] - 1) * padded_w + window["pad_left"] + window["width"] - 1
    return window_cycles(window, pool_latency(config)) - (last_pixel + 2) + pool_input_stages(config)


def run_overhead(config, step_kind, descriptor):
    """Cycles a ``RUN`` of the accelerator (hw/accelerator.py) built for ``config`` takes beyond its engine's own
    model, measured on the RTL: the output writer stores the last result one cycle after the engine hands it
    over, and the memory reader that feeds a vector engine delivers its first pixel one cycle later than an ideal
    stream, which costs a cycle only when the engine needs an input pixel in that cycle: a global average pool
    always, and the window generator when its very first scan position is in the map (no top and no left
    padding) and it scans from cycle 2 (on the ECP5 it spends that cycle loading its tap bounds,
    :func:`~cnnacc.hw.window_generator.window_scan_start`). The conv engine reads its own memories.

    On the ECP5 the reader's rows come a cycle later still (:func:`~cnnacc.hw.memory_map.engine_read_latency`):
    the add engine's stream, a global average pool's, and a window generator's whose first in-map position is
    reached before that row (none of it padded, or one padded column at a scan from cycle 2).

    The pool engine's input slice on the ECP5 (:func:`~cnnacc.hw.pool_engine.pool_input_stages`) brings the rows
    to it a cycle later again."""
    late = engine_read_latency(config) - 1
    if step_kind == "conv":
        return 1
    if step_kind == "add":
        return 1 + late
    window = descriptor["window"]
    if step_kind == "pool":
        late += pool_input_stages(config)
        if PoolMode(descriptor["mode"]) == PoolMode.GLOBAL_AVG:
            return 2 + late
    # The first in-map scan position, and the cycle the reader's first row is there to meet it.
    first = window["pad_top"] * (window["width"] + window["pad_left"] + window["pad_right"]) + window["pad_left"]
    return 1 + max(0, 3 + late - window_scan_start(config) - first)


def tile_cycles(config, step, descriptors):
    """Predicted cycles of one tile's ``RUN`` from its descriptors: the engine's cycle model plus
    :func:`run_overhead`.

    Conv, depthwise and pool use the engines' exact models (host/cycles_conv.py, host/cycles_vector.py). A fused
    pool adds the pooling engine's tail after the conv's last output; the add engine is one beat per cycle
    behind its descriptor and its pipeline (:func:`~cnnacc.hw.add_engine.add_latency` stages).
    """
    first = descriptors[0]
    if step.kind == "conv":
        cycles = conv_cycles(config, first) + conv_output_stages(config)
        if len(descriptors) == 2:
            cycles += _pool_tail(config, descriptors[1])
    elif step.kind == "depthwise":
        cycles = depthwise_cycles(config, first)
    elif step.kind == "pool":
        cycles = pool_cycles(config, first)
    else:
        cycles = first["count"] + add_latency(config) + 2
    return cycles + run_overhead(config, step.kind, first)


def _check_engine(config, node):
    """A layer whose engine this configuration was built without is refused (a fused pool needs the pool engine
    too: it runs there). None is lowered onto another engine: an average pool as a convolution would round
    differently from TFLite's pooling, and a depthwise layer as a dense one would need Cin times its weights."""
    engine = _STEP_KIND[node.kind]
    if engine not in config.engines:
        _fail(node, f"{_KIND_WORDS[node.kind]} layers need the {engine!r} engine, which this configuration "
                    f"(engines={','.join(config.engines)}) does not have")
    # The requantizer of some targets (the iCE40's serial one) cannot apply every rounding: refuse, never
    # compute other numbers.
    rq = getattr(node, "requant", None)
    if engine == "conv" and rq is not None:
        _engine(node, check_shifts, config.target, rq.mode, rq.shift, node.name)


def _check_accumulator(config, node):
    """The array's accumulators are ``config.acc_width`` bits and wrap; TFLite accumulates in int32. A conv or
    fully connected layer runs only if no input can take its sum past the accumulator: every raw int8 product is
    at most ``128 * |w|``, so ``128 * sum(|w|)`` per output channel bounds the sum (the input zero point is
    folded into the int32 bias, which the requantizer adds). Refused otherwise, never wrapped silently."""
    if node.kind not in ("conv2d", "fully_connected") or config.acc_width >= 32:
        return
    import numpy as np
    weights = np.asarray(node.weights, np.int64)
    sums = np.abs(weights.reshape(weights.shape[0], -1)).sum(axis=1)
    bound = 128 * int(sums.max())
    if bound >= 1 << (config.acc_width - 1):
        channel = int(sums.argmax())
        _fail(node, f"output channel {channel} can accumulate up to {bound:,} (128 x sum |w|), beyond the "
                    f"{config.acc_width}-bit accumulators of this configuration; it needs acc_width >= "
                    f"{bound.bit_length() + 1}")


def _check_pool(config, graph, node):
    """A pooling layer the configuration's pool engine is not built for is refused naming it (the iCE40's computes
    max over windows up to 2x2, without an activation clamp; hw/pool_engine.py)."""
    if node.kind not in _POOLS:
        return
    h, w, c = _shape3(graph.spec(node.inputs[0]).shape)
    if _is_global(config, node, (h, w, c)):
        mode, kernel = PoolMode.GLOBAL_AVG, 1
    else:
        mode, kernel = (PoolMode.MAX if node.kind == "max_pool2d" else PoolMode.AVG), max(node.kernel)
    qmin, qmax = activation_range(node.activation, node.output.scale, node.output.zero_point)
    _engine(node, check_pool_support, config, mode, kernel, node.name, qmin, qmax)


def _fuse(graph, config):
    """Node groups, one per step (see the module docstring)."""
    uses = {}
    for node in graph.nodes:
        for name in node.inputs:
            uses[name] = uses.get(name, 0) + 1
    groups, i, nodes = [], 0, graph.nodes
    while i < len(nodes):
        node = nodes[i]
        if node.kind not in _STEP_KIND:
            _fail(node, f"no engine runs {node.kind!r} layers (supported: {', '.join(_STEP_KIND)})")
        _check_engine(config, node)
        _check_accumulator(config, node)
        _check_pool(config, graph, node)
        nxt = nodes[i + 1] if i + 1 < len(nodes) else None
        if (node.kind == "conv2d" and nxt is not None and nxt.kind in _POOLS and nxt.inputs[0] == node.output.name
                and uses[node.output.name] == 1 and node.output.name != graph.output
                and config.rows == config.lanes):
            _check_engine(config, nxt)
            _check_pool(config, graph, nxt)
            groups.append((node, nxt))
            i += 2
        else:
            groups.append((node,))
            i += 1
    return groups


def _tiles(out_h, channels, rows_per_band, channel_tile, order):
    bands = [(y, min(y + rows_per_band, out_h)) for y in range(0, out_h, rows_per_band)]
    blocks = [(c, min(c + channel_tile, channels)) for c in range(0, channels, channel_tile)]
    if order == "channels_outer":
        return [Tile(y0, y1, c0, c1) for c0, c1 in blocks for y0, y1 in bands]
    return [Tile(y0, y1, c0, c1) for y0, y1 in bands for c0, c1 in blocks]


class _StepPlan:
    """Sizes of one step's tensors and memories, and the checks and byte counts of a candidate tiling."""

    def __init__(self, config, graph, nodes):
        self.config, self.graph, self.nodes = config, graph, nodes
        #: Activation maps must fit ``1 / share`` of their memories (2: double-buffered, see the module docstring).
        self.share = 1
        self.first, self.last = nodes[0], nodes[-1]
        self.kind = _STEP_KIND[self.first.kind]
        self.in_shape = _shape3(graph.spec(self.first.inputs[0]).shape)
        self.out_shape = _shape3(self.last.output.shape)
        self.out_h, self.out_w, self.channels = self.out_shape
        self.fc = self.first.kind == "fully_connected"
        self.step = Step(self.first.name if len(nodes) == 1 else "+".join(n.name for n in nodes), self.kind,
                         tuple(nodes), tuple(self.first.inputs), self.last.output.name, ())
        if self.kind == "conv":
            w = self.first.weights
            self.depth = w.shape[1] if self.fc else w.shape[1] * w.shape[2] * w.shape[3]
            self.weight_bytes = w.size + w.shape[0] * PARAM_BYTES
        elif self.kind == "depthwise":
            self.weight_bytes = self.first.weights.size + self.first.weights.shape[3] * PARAM_BYTES
        else:
            self.weight_bytes = 0

    def overflow(self, tile):
        """``None`` if ``tile`` fits every memory of the engine, else ``(memory, words needed, words there)``."""
        cfg = self.config
        channels = tile.c1 - tile.c0
        a, b, _, _ = tile_bands(self.step, tile, self.graph)[0]
        h, w, cin = self.in_shape
        needs = []
        if self.kind == "conv":
            pixels = 1 if self.fc else (b - a) * w
            depth = self.first.weights.shape[1] if self.fc else cin
            needs += [("conv_act_depth (input map)", depth * _cdiv(pixels, act_banks(cfg)),
                       cfg.conv_act_depth // self.share),
                      ("conv_weight_depth (weights)", _cdiv(channels, cfg.rows) * self.depth,
                       cfg.conv_weight_depth),
                      ("conv_param_depth (requantization parameters)", _cdiv(channels, cfg.rows),
                       cfg.conv_param_depth)]
        else:
            needs.append(("vector_depth (input map)", (b - a) * w * _cdiv(channels, cfg.lanes),
                          cfg.vector_depth // self.share))
            if self.kind == "depthwise":
                needs.append(("the depthwise weight memory (channel groups)", _cdiv(channels, cfg.lanes),
                              DW_GROUPS))
        needs.append(("vector_depth (output map)", (tile.y1 - tile.y0) * self.out_w * _cdiv(channels, cfg.lanes),
                      cfg.vector_depth // self.share))
        for what, need, have in needs:
            if need > have:
                return what, need, have
        return None

    def rows_that_fit(self, channel_tile):
        """Most output rows per band that fit with ``channel_tile`` channels, 0 if not even one row does."""
        def fits(r):
            return all(self.overflow(t) is None for t in _tiles(self.out_h, channel_tile, r, channel_tile,
                                                                  "channels_outer"))
        if not fits(1):
            return 0
        low, high = 1, self.out_h
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if fits(mid) else (low, mid - 1)
        return low

    def traffic(self, tiles, order):
        """Bytes read and written by ``tiles`` in ``order``, and the minimum (see the module docstring)."""
        h, w, cin = self.in_shape
        in_once = h * w * cin * (2 if self.kind == "add" else 1)
        out_bytes = self.out_h * self.out_w * self.channels
        bands = {(t.y0, t.y1) for t in tiles}
        blocks = {(t.c0, t.c1) for t in tiles}
        band_bytes = 0
        for y0, y1 in bands:
            a, b, _, _ = tile_bands(self.step, Tile(y0, y1, 0, self.channels), self.graph)[0]
            band_bytes += (b - a) * w * cin * (2 if self.kind == "add" else 1)
        if self.kind == "conv":
            if order == "channels_outer":
                data = in_once if len(bands) == 1 else len(blocks) * band_bytes
                weights = self.weight_bytes
            else:
                data = band_bytes
                weights = self.weight_bytes if len(blocks) == 1 else len(bands) * self.weight_bytes
        else:
            # Channel tiles of a vector engine read disjoint input channels: only the halo is read twice.
            data, weights = band_bytes, self.weight_bytes
        return {"bytes_in": data + weights, "bytes_out": out_bytes, "min_in": in_once + self.weight_bytes,
                "min_out": out_bytes}


def _plan_step(config, graph, nodes):
    plan = _StepPlan(config, graph, nodes)
    # The engine's own limits first (kernel, width, stride, ...), on the whole layer, so they are reported as
    # such and not as a memory that is too small.
    whole = Tile(0, plan.out_h, 0, plan.channels)
    tile_descriptors(config, graph, plan.step, whole)
    unit = config.rows if plan.kind == "conv" else config.lanes
    cmax = plan.channels
    if plan.kind == "conv":
        blocks = min(config.conv_weight_depth // plan.depth, config.conv_param_depth)
        if blocks == 0:
            _fail(plan.first, f"one block of {config.rows} output channels needs {plan.depth} weight words, "
                              f"conv_weight_depth is {config.conv_weight_depth}")
        cmax = min(cmax, blocks * config.rows)
    units = _cdiv(plan.channels, unit)
    candidates = sorted({min(plan.channels, unit * _cdiv(units, k)) for k in range(1, units + 1)}, reverse=True)
    best = None
    # Maps in half their memories if any tiling allows it, else in the whole (then tiles cannot overlap).
    for share in (2, 1):
        plan.share = share
        for channel_tile in candidates:
            if channel_tile > cmax:
                continue
            rows = plan.rows_that_fit(channel_tile)
            if not rows:
                continue
            for order in ("channels_outer", "rows_outer"):
                tiles = _tiles(plan.out_h, plan.channels, rows, channel_tile, order)
                traffic = plan.traffic(tiles, order)
                key = (traffic["bytes_in"], len(tiles))
                if best is None or key < best[0]:
                    best = (key, tiles, order, traffic)
        if best is not None:
            break
    if best is None:
        smallest = Tile(0, 1, 0, min(unit, plan.channels))
        what, need, have = plan.overflow(smallest)
        _fail(plan.first, f"one output row of {smallest.c1} channels needs {need} words of {what}, "
                          f"the engine has {have}")
    _, tiles, order, traffic = best
    timed = []
    for tile in tiles:
        descriptors = tile_descriptors(config, graph, plan.step, tile)
        if plan.kind == "conv":
            # What the conv engine computes with is bounded by its memories (hw/conv_engine.py conv_limits); a
            # tile that fits them is within the limits, and this keeps it so if the two ever disagree.
            _engine(plan.first, check_conv_limits, config, descriptors[0], name=plan.first.name)
        cycles = tile_cycles(config, plan.step, descriptors)
        timed.append(Tile(tile.y0, tile.y1, tile.c0, tile.c1, cycles))
    s = plan.step
    return Step(s.name, s.kind, s.nodes, s.inputs, s.output, tuple(timed), order, traffic)


def _memory_plan(graph, steps):
    """First-fit offsets of the tensors that reach memory, freed after their last reader."""
    last_use = {graph.input.name: -1, graph.output: len(steps)}
    for i, step in enumerate(steps):
        for name in step.inputs:
            last_use[name] = max(last_use.get(name, -1), i)
    sizes = {graph.input.name: math.prod(graph.input.shape)}
    for step in steps:
        sizes[step.output] = math.prod(graph.spec(step.output).shape)
    live, offsets, arena = {}, {}, 0

    def place(name):
        nonlocal arena
        size, at = sizes[name], 0
        for start, end in sorted((offsets[n], offsets[n] + sizes[n]) for n in live):
            if at + size <= start:
                break
            at = max(at, end)
        offsets[name] = at
        live[name] = True
        arena = max(arena, at + size)

    place(graph.input.name)
    for i, step in enumerate(steps):
        place(step.output)
        for name in list(live):
            if last_use.get(name, -1) <= i and name != step.output:
                del live[name]
    return {"arena_bytes": arena, "tensors": {n: [offsets[n], sizes[n]] for n in offsets}}


def compile_graph(graph, config, source=""):
    """Compile ``graph`` for ``config`` into a :class:`~cnnacc.host.program.Program`.

    Raises :class:`~cnnacc.host.program.ProgramError`, one line naming the node and the limit, when a layer
    cannot run on the accelerator.
    """
    steps = [_plan_step(config, graph, nodes) for nodes in _fuse(graph, config)]
    program = Program(graph, config, steps, config_id(config), {}, str(source))
    program.report = build_report(program)
    return program


def build_report(program):
    """The compile report: one row per step and the totals."""
    config, graph = program.config, program.graph
    rows = []
    for step in program.steps:
        cycles = step.cycles
        macs = sum(node_macs(n, graph) for n in step.nodes)
        rows.append({"step": step.name, "kind": step.kind, "nodes": [n.name for n in step.nodes],
                     "engine_kind": step.nodes[0].kind, "tiles": len(step.tiles), "loop_order": step.loop_order,
                     "cycles": cycles, "macs": macs, "utilization": step_utilization(config, graph, step, cycles),
                     **step.traffic})
    total_cycles = sum(r["cycles"] for r in rows)
    total_macs = sum(r["macs"] for r in rows)
    weights = sum(n.weights.size + n.bias.size * 4 for n in graph.nodes if getattr(n, "weights", None) is not None)
    return {
        "graph": graph.name, "config": repr(config), "steps": rows, "total_cycles": total_cycles,
        "total_macs": total_macs, "pe_utilization": total_macs / (config.pes * total_cycles) if total_cycles else 0,
        "bytes_in": sum(r["bytes_in"] for r in rows), "bytes_out": sum(r["bytes_out"] for r in rows),
        "min_in": sum(r["min_in"] for r in rows), "min_out": sum(r["min_out"] for r in rows),
        "weight_bytes": weights, "memory": _memory_plan(graph, program.steps),
    }


def step_utilization(config, graph, step, cycles):
    """Utilization of the step's engine over ``cycles``: MACs over ``rows x cols`` PEs (conv) or
    ``3 x 3 x lanes`` multipliers (depthwise); input elements over ``lanes`` lanes (pool, add)."""
    if cycles <= 0:
        return 0.0
    node = step.nodes[0]
    if step.kind == "conv":
        return node_macs(node, graph) / (config.pes * cycles)
    if step.kind == "depthwise":
        return node_macs(node, graph) / (DEPTHWISE_KERNEL ** 2 * config.lanes * cycles)
    elements = sum(math.prod(graph.spec(name).shape) for name in step.inputs)
    return elements / (config.lanes * cycles)
