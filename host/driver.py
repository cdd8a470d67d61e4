"""The accelerator's host driver: runs program steps tile by tile over the host bus (hw/commands.py).

One driver serves every transport (the cocotb one in RTL simulation, the serial link on the board): it only
calls ``transport.transact(words) -> answer words`` (host/protocol.py). For each tile it writes the tile's input
map and the layer's weights, RUNs one engine, and reads the tile's output back; what lives in which memory is
described in hw/accelerator.py. Layout conversions (NHWC <-> channel-group planes, the conv engine's banks) are
done here in NumPy.
"""

import numpy as np
from amaranth.lib import data

from ..hw import accelerator as acc
from ..hw.commands import EngineId, MemoryId, Opcode, config_id
from ..hw.conv_engine import conv_layer, memory_images
from ..hw.depthwise import depthwise_layer, depthwise_weight_beats, depthwise_weights_layout
from ..hw.add_engine import add_layer
from ..hw.pool_engine import PoolMode, pool_layer
from ..hw.requantizer import lane_params_layout
from . import graph as g
from . import protocol
from .program import ProgramError

__all__ = ["AcceleratorDriver", "run_program", "sub_padding", "to_planes", "from_planes"]


def sub_padding(y0, y1, kernel, stride, top, in_h):
    """Input rows ``[a, b)`` and the ``(top, bottom)`` padding of the sub-layer computing output rows
    ``[y0, y1)`` of a windowed layer (kernel side, stride, top padding) over ``in_h`` input rows."""
    start = y0 * stride - top
    end = (y1 - 1) * stride - top + kernel
    return max(start, 0), min(end, in_h), max(-start, 0), max(end - in_h, 0)


def _rows_to_words(rows_u8, words_per_row):
    """``[n, bytes]`` uint8 rows -> host words, each row zero-padded to ``words_per_row`` words."""
    rows_u8 = np.asarray(rows_u8, np.uint8)
    out = np.zeros((rows_u8.shape[0], 4 * words_per_row), np.uint8)
    out[:, :rows_u8.shape[1]] = rows_u8
    return out.view("<u4").reshape(-1)


def _ints_to_words(values, words_per_row):
    """Python ints (row bit patterns) -> host words, ``words_per_row`` each."""
    out = np.zeros((len(values), words_per_row), np.uint32)
    for i, v in enumerate(values):
        for j in range(words_per_row):
            out[i, j] = (v >> (32 * j)) & 0xFFFFFFFF
    return out.reshape(-1)


def to_planes(x, lanes):
    """``[H, W, C]`` int8 -> ``[groups * H * W, lanes]`` int8 rows in channel-group plane order."""
    h, w, c = x.shape
    groups = -(-c // lanes)
    padded = np.zeros((h, w, groups * lanes), np.int8)
    padded[..., :c] = x
    return padded.reshape(h * w, groups, lanes).transpose(1, 0, 2).reshape(groups * h * w, lanes)


def from_planes(rows, h, w, c, lanes):
    groups = -(-c // lanes)
    return rows.reshape(groups, h * w, lanes).transpose(1, 0, 2).reshape(h, w, groups * lanes)[..., :c].reshape(
        h, w, c)


def _channels(value, n):
    return np.broadcast_to(np.asarray(value, np.int64), (n,))


class AcceleratorDriver:
    """Runs :class:`~cnnacc.host.program.Step` s on an accelerator through ``transport``.

    Parameters
    ----------
    transport : object
        Has ``transact(words) -> answer words``; ``max_words`` (optional) caps one command's length.
    config : AcceleratorConfig
        The configuration the program was built for.
    """

    def __init__(self, transport, config):
        self.transport = transport
        self.config = config
        self.specs = acc.memory_specs(config)
        self.row_words = acc.conv_row_words(config)
        self.max_words = getattr(transport, "max_words", None)
        self._stats = None
        # What the write-only weight memories hold (the engines never change them), so that a step run on many
        # images in a row loads its weights once.
        self._resident = {}

    # --- bus ---------------------------------------------------------------------------------------------------
    def _transact(self, words, opcode, expected=0):
        answer = self.transport.transact(list(words))
        if self._stats is not None:
            self._stats["words_in"] += len(words)
            self._stats["words_out"] += len(answer)
        return protocol.decode_response(answer, opcode, expected)

    def check(self):
        """STATUS: the accelerator must be built for this configuration."""
        words = self._transact(protocol.encode_status(), Opcode.STATUS, 3)
        want = config_id(self.config)
        if words[2] != want:
            raise ProgramError(f"program built for a different configuration: the accelerator reports config id "
                               f"{words[2]:#010x}, the program needs {want:#010x}")
        return words

    def write_resident(self, memory, key, make_words):
        """Write ``make_words()`` into ``memory`` unless it already holds what ``key`` names."""
        if self._resident.get(MemoryId(memory)) != key:
            self._resident.pop(MemoryId(memory), None)
            self.write(memory, make_words())
            self._resident[MemoryId(memory)] = key

    def write(self, memory, words, base=0):
        words = np.asarray(words, np.uint32).reshape(-1)
        if base + len(words) > self.specs[MemoryId(memory)].words:
            raise ProgramError(f"{MemoryId(memory).name}: {base + len(words)} words do not fit its "
                               f"{self.specs[MemoryId(memory)].words}")
        chunk = len(words) if not self.max_words else max(1, self.max_words - 2)
        for start in range(0, len(words), max(chunk, 1)):
            part = words[start:start + chunk].tolist()
            self._transact(protocol.encode_write(memory, base + start, part), Opcode.WRITE)

    def read(self, memory, count, base=0):
        chunk = count if not self.max_words else max(1, self.max_words - 1)
        out = []
        for start in range(0, count, max(chunk, 1)):
            n = min(chunk, count - start)
            out += self._transact(protocol.encode_read(memory, base + start, n), Opcode.READ, n)
        return np.asarray(out, np.uint32)

    def run(self, engine, fields):
        """RUN one engine; returns its cycle count."""
        words = acc.descriptor_words(self.config, engine, fields)
        answer = self._transact(protocol.encode_run(words), Opcode.RUN, 1)
        self._stats["cycles"] += answer[0]
        return answer[0]

    def _write_planes(self, memory, x):
        rows = to_planes(x, self.config.lanes)
        if rows.shape[0] > self.config.vector_depth:
            raise ProgramError(f"a {x.shape} map needs {rows.shape[0]} rows of {MemoryId(memory).name}, which has "
                               f"{self.config.vector_depth}")
        self.write(memory, rows.view(np.uint8).reshape(-1).view("<u4"))
        return rows.shape[0]

    def _read_planes(self, count, h, w, c):
        words = self.read(MemoryId.OUTPUT, count * self.config.lanes // 4)
        rows = words.astype("<u4").view(np.int8).reshape(count, self.config.lanes)
        return from_planes(rows, h, w, c, self.config.lanes)

    # --- steps -------------------------------------------------------------------------------------------------
    def run_step(self, step, tensors, graph):
        """Run every tile of ``step`` on the tensors (a dict name -> ``[H, W, C]`` or ``[C]`` int8 array, one
        image); returns ``(output, stats)`` with stats ``{"cycles", "words_in", "words_out"}``."""
        self._stats = {"cycles": 0, "words_in": 0, "words_out": 0}
        last = step.nodes[-1]
        shape = last.output.shape
        out = np.zeros(shape if len(shape) == 3 else (1, 1, shape[0]), np.int8)
        runner = {"conv": self._conv_tile, "depthwise": self._depthwise_tile, "pool": self._pool_tile,
                  "add": self._add_tile}[step.kind]
        for tile in step.tiles:
            try:
                out[tile.y0:tile.y1, :, tile.c0:tile.c1] = runner(step, tile, tensors, graph)
            except ValueError as exc:
                if isinstance(exc, ProgramError):
                    raise
                raise ProgramError(f"step {step.name!r}, tile {tile}: {exc}") from None
        stats, self._stats = self._stats, None
        return out.reshape(shape), stats

    def _input(self, tensors, name):
        x = np.asarray(tensors[name])
        return x.reshape(1, 1, -1) if x.ndim == 1 else x

    def _pool_fields(self, node, y0, y1, in_h, in_w, groups):
        kh, kw = node.kernel
        if kh != kw or node.stride[0] != node.stride[1]:
            raise ProgramError(f"node {node.name!r}: only square pooling windows and strides run on the engine")
        top, _, left, right = node.padding
        a, b, pt, pb = sub_padding(y0, y1, kh, node.stride[0], top, in_h)
        qmin, qmax = g.activation_range(node.activation, node.output.scale, node.output.zero_point)
        mode = PoolMode.MAX if node.kind == "max_pool2d" else PoolMode.AVG
        # A whole-map average runs in the engine's global mode (any size), as the compiler plans it.
        if mode == PoolMode.AVG and (kh, kw) == (in_h, in_w) and not any(node.padding):
            fields = pool_layer(self.config, PoolMode.GLOBAL_AVG, height=b - a, width=in_w, groups=groups,
                                qmin=qmin, qmax=qmax, name=node.name)
        else:
            fields = pool_layer(self.config, mode, height=b - a, width=in_w, groups=groups, kernel=kh,
                                stride=node.stride[0], padding=(pt, pb, left, right), qmin=qmin, qmax=qmax,
                                name=node.name)
        return a, b, fields

    def _conv_tile(self, step, tile, tensors, graph):
        cfg = self.config
        node = step.nodes[0]
        pool = step.nodes[1] if len(step.nodes) > 1 else None
        x = self._input(tensors, node.inputs[0])
        c0, c1 = tile.c0, tile.c1
        cout = c1 - c0
        if node.kind == "fully_connected":
            x = x.reshape(1, 1, -1)
            weights = node.weights.reshape(node.weights.shape[0], 1, 1, -1)
            stride, padding = 1, (0, 0, 0, 0)
        else:
            weights = node.weights
            stride, padding = node.stride[0], node.padding
        conv_h = node.output.shape[0] if len(node.output.shape) == 3 else 1
        # Conv output rows this tile needs (all of the pool's input rows when fused).
        if pool is not None:
            pa, pb_, _, _ = sub_padding(tile.y0, tile.y1, pool.kernel[0], pool.stride[0], pool.padding[0], conv_h)
        else:
            pa, pb_ = tile.y0, tile.y1
        kh = weights.shape[1]
        a, b, pt, pbot = sub_padding(pa, pb_, kh, stride, padding[0], x.shape[0])
        rq = node.requant
        fields = conv_layer(cfg, (b - a,) + x.shape[1:], (cout,) + weights.shape[1:], stride=stride,
                            padding=(pt, pbot, padding[2], padding[3]), in_zp=node.input_spec.zero_point,
                            out_zp=rq.zero_point, qmin=rq.qmin, qmax=rq.qmax, rounding=rq.mode, name=node.name)
        assert fields["out_h"] == pb_ - pa, (fields["out_h"], pa, pb_)
        act, wgt, params = memory_images(cfg, fields, x[a:b], weights[c0:c1], np.asarray(node.bias)[c0:c1],
                                         _channels(rq.multiplier, weights.shape[0])[c0:c1],
                                         _channels(rq.shift, weights.shape[0])[c0:c1],
                                         act_depth=cfg.conv_act_depth, weight_depth=cfg.conv_weight_depth,
                                         param_depth=cfg.conv_param_depth, name=node.name)
        self.write(MemoryId.CONV_ACT, _rows_to_words(act, self.row_words[MemoryId.CONV_ACT]))
        key = (id(node), node.name, c0, c1)
        self.write_resident(MemoryId.WEIGHTS, key,
                            lambda: _rows_to_words(wgt.view(np.uint8), self.row_words[MemoryId.WEIGHTS]))
        self.write_resident(MemoryId.PARAMS, key, lambda: _ints_to_words(_param_rows(params),
                                                                          self.row_words[MemoryId.PARAMS]))
        groups = -(-cout // cfg.lanes)
        oh, ow = fields["out_h"], fields["out_w"]
        if pool is None:
            count = groups * oh * ow
            run = {"layer": fields, "pool": _zero_pool(cfg), "fuse": 0, "out_base": 0, "out_count": count}
            self._check_rows(node, count)
            self.run(EngineId.CONV, run)
            return self._read_planes(count, oh, ow, cout)
        # Fused: the pool sees exactly this conv sub-map (rows pa..pb_ of the conv output).
        _, _, pfields = self._pool_fields(pool, tile.y0, tile.y1, conv_h, ow, groups)
        ph, pw = tile.y1 - tile.y0, pool.output.shape[1]
        count = groups * (1 if pfields["mode"] == PoolMode.GLOBAL_AVG else ph * pw)
        self._check_rows(pool, count)
        self.run(EngineId.CONV, {"layer": fields, "pool": _pool_desc(pfields), "fuse": 1, "out_base": 0,
                                 "out_count": count})
        return self._read_planes(count, ph, pw, cout)

    def _check_rows(self, node, count):
        if count > self.config.vector_depth:
            raise ProgramError(f"node {node.name!r}: a tile's output needs {count} rows, OUTPUT has "
                               f"{self.config.vector_depth}")

    def _depthwise_tile(self, step, tile, tensors, graph):
        cfg = self.config
        node = step.nodes[0]
        x = self._input(tensors, node.inputs[0])
        c0, c1 = tile.c0, tile.c1
        k = node.weights.shape[1]
        if node.stride[0] != node.stride[1]:
            raise ProgramError(f"node {node.name!r}: stride {node.stride} must be equal in both axes")
        a, b, pt, pb = sub_padding(tile.y0, tile.y1, k, node.stride[0], node.padding[0], x.shape[0])
        rq = node.requant
        cout = node.weights.shape[3]
        fields = depthwise_layer(cfg, height=b - a, width=x.shape[1], channels=c1 - c0, kernel=k,
                                 stride=node.stride[0], padding=(pt, pb, node.padding[2], node.padding[3]),
                                 zero_point_in=node.input_spec.zero_point, zero_point_out=rq.zero_point,
                                 qmin=rq.qmin, qmax=rq.qmax, mode=rq.mode, max_kernel=acc.DW_KERNEL, name=node.name)
        beats = depthwise_weight_beats(cfg, node.weights[..., c0:c1], np.asarray(node.bias)[c0:c1],
                                       _channels(rq.multiplier, cout)[c0:c1], _channels(rq.shift, cout)[c0:c1],
                                       max_kernel=acc.DW_KERNEL, name=node.name)
        layout = data.Layout.cast(depthwise_weights_layout(cfg, acc.DW_KERNEL))
        wwords = self.specs[MemoryId.DW_WEIGHTS].width // 32
        self.write_resident(MemoryId.DW_WEIGHTS, (id(node), node.name, c0, c1), lambda: _ints_to_words(
            [layout.const(beat).as_bits() for beat in beats], wwords))
        in_count = self._write_planes(MemoryId.ACT_A, x[a:b, :, c0:c1])
        oh, ow = tile.y1 - tile.y0, node.output.shape[1]
        count = len(beats) * oh * ow
        self._check_rows(node, count)
        self.run(EngineId.DEPTHWISE, {"layer": fields, "in_base": 0, "in_count": in_count, "w_count": len(beats),
                                      "out_base": 0, "out_count": count})
        return self._read_planes(count, oh, ow, c1 - c0)

    def _pool_tile(self, step, tile, tensors, graph):
        cfg = self.config
        node = step.nodes[0]
        x = self._input(tensors, node.inputs[0])
        c0, c1 = tile.c0, tile.c1
        groups = -(-(c1 - c0) // cfg.lanes)
        a, b, fields = self._pool_fields(node, tile.y0, tile.y1, x.shape[0], x.shape[1], groups)
        in_count = self._write_planes(MemoryId.ACT_A, x[a:b, :, c0:c1])
        oh, ow = tile.y1 - tile.y0, node.output.shape[1]
        count = groups * oh * ow
        self._check_rows(node, count)
        self.run(EngineId.POOL, {"layer": _pool_desc(fields), "in_base": 0, "in_count": in_count, "out_base": 0,
                                 "out_count": count})
        return self._read_planes(count, oh, ow, c1 - c0)

    def _add_tile(self, step, tile, tensors, graph):
        node = step.nodes[0]
        x1 = self._input(tensors, node.inputs[0])[tile.y0:tile.y1, :, tile.c0:tile.c1]
        x2 = self._input(tensors, node.inputs[1])[tile.y0:tile.y1, :, tile.c0:tile.c1]
        in_count = self._write_planes(MemoryId.ACT_A, x1)
        self._write_planes(MemoryId.ACT_B, x2)
        qmin, qmax = g.activation_range(node.activation, node.output.scale, node.output.zero_point)
        fields = add_layer(graph.spec(node.inputs[0]), graph.spec(node.inputs[1]), node.output, count=in_count,
                           qmin=qmin, qmax=qmax, name=node.name)
        self._check_rows(node, in_count)
        self.run(EngineId.ADD, {"layer": fields, "in_base": 0, "in_count": in_count, "out_base": 0,
                                "out_count": in_count})
        return self._read_planes(in_count, x1.shape[0], x1.shape[1], x1.shape[2])


def _param_rows(params):
    """``[blocks, rows, 3]`` (folded bias, multiplier, shift) -> one int per block, lane ``r`` at bit ``70 r``."""
    lp = lane_params_layout()
    rows = []
    for block in params:
        value = 0
        for lane, (bias, mult, shift) in enumerate(block):
            value |= lp.const({"bias": int(bias), "multiplier": int(mult), "shift": int(shift)}).as_bits() << (
                lp.size * lane)
        rows.append(value)
    return rows


def _pool_desc(fields):
    return {**fields, "mode": PoolMode(fields["mode"])}


def _zero_pool(config):
    window = {"height": 0, "width": 0, "kernel": 0, "stride": 0, "pad_top": 0, "pad_bottom": 0, "pad_left": 0,
              "pad_right": 0, "zero_point": 0, "groups": 0}
    return {"window": window, "mode": PoolMode.MAX, "qmin": 0, "qmax": 0}


def run_program(driver, program, images, log=None):
    """Run ``program`` on a batch of images (``[N, ...]`` int8) through ``driver``, step by step over the whole
    batch (so a step's weights are loaded once for all images).

    Returns ``(outputs, stats)``: the graph outputs ``[N, ...]`` int8, and per image a dict
    ``{step name: {"cycles", "words_in", "words_out"}}`` (weights count against the first image that loads
    them).
    """
    graph = program.graph
    driver.check()
    images = np.asarray(images)
    tensors = [{graph.input.name: image} for image in images]
    stats = [{} for _ in images]
    for step in program.steps:
        for values, per_step in zip(tensors, stats):
            values[step.output], per_step[step.name] = driver.run_step(step, values, graph)
        if log is not None:
            log(f"step {step.name} done on {len(images)} images")
    outputs = np.stack([values[graph.output] for values in tensors]).astype(np.int8)
    return outputs, stats
