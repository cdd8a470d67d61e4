"""The accelerator's host driver: runs program steps tile by tile over the host bus (hw/commands.py).

One driver serves every transport (the cocotb one in RTL simulation, the serial link on the board): it only
calls ``transport.transact(words) -> answer words`` (host/protocol.py). What lives in which memory is described
in hw/accelerator.py; layout conversions (NHWC <-> channel-group planes, the conv engine's banks) are done here
in NumPy. Every tile runs with the engine descriptors the compiler made for it
(:func:`cnnacc.host.compiler.tile_descriptors`), so the program's cycle model and the hardware see the same
layers.

Pipelining
----------
A step runs as a list of *jobs*, one per tile and image (tiles outer, images inner, so a channel block's weights
are loaded once for the whole batch). Job ``j`` puts its input map in half ``j % 2`` of each activation memory
and its result in half ``j % 2`` of ``OUTPUT``; weights alternate halves whenever the weights change. The driver
then loads job ``j + 1`` while job ``j`` runs (``START``), waits for ``j`` (``WAIT``), starts ``j + 1`` and reads
``j``'s output while ``j + 1`` runs. A tile too large for half a memory goes to its start; the driver keeps
track of the rows the run in flight owns (as the accelerator does, hw/command_processor.py) and waits for the
run before touching them, so the order of operations never depends on the sizes. ``overlap=False`` runs each
job with a blocking ``RUN`` instead (write, run, read), the driver's behaviour before double buffering.
"""

from dataclasses import dataclass, field

import numpy as np
from amaranth.lib import data

from ..hw import accelerator as acc
from ..hw.commands import EngineId, MemoryId, Opcode, RunState, config_id
from ..hw.conv_engine import memory_images
from ..hw.depthwise import depthwise_weight_beats, depthwise_weights_layout
from ..hw.pool_engine import PoolMode
from ..hw.requantizer import lane_params_layout
from . import protocol
from .compiler import tile_descriptors
from .program import ProgramError, tile_bands

__all__ = ["AcceleratorDriver", "run_program", "to_planes", "from_planes"]


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


def _overlap(a, b):
    return a[0] < b[1] and b[0] < a[1]


@dataclass
class _Write:
    memory: MemoryId
    base: int              # host word
    words: object          # np.uint32 array, or a callable making it (weights: only built when not resident)
    size: int              # words
    key: object = None     # names constant contents (weights), None for an input map


@dataclass
class _Job:
    """One tile of one step on one image: what to write, the run, and where its result lands."""
    image: int
    tile: object
    engine: EngineId
    run: dict
    writes: list
    out_base: int          # OUTPUT rows
    out_count: int
    out_shape: tuple       # (h, w, c) of the tile's output
    owns: dict = field(default_factory=dict)     # memory -> (lo, hi) host words the run owns


class AcceleratorDriver:
    """Runs :class:`~cnnacc.host.program.Step` s on an accelerator through ``transport``.

    Parameters
    ----------
    transport : object
        Has ``transact(words) -> answer words``; ``max_words`` (optional) caps one command's length.
    config : AcceleratorConfig
        The configuration the program was built for.
    overlap : bool, optional
        Load the next tile and read the previous one while a tile runs (``START``/``WAIT``, the default), or run
        every tile with a blocking ``RUN``.
    """

    def __init__(self, transport, config, overlap=True):
        self.transport = transport
        self.config = config
        self.overlap = bool(overlap)
        self.specs = acc.memory_specs(config)
        self.row_words = acc.conv_row_words(config)
        self.max_words = getattr(transport, "max_words", None)
        #: Bus-inclusive cycles of each step over its whole batch (from STATUS's cycle counter), by step name.
        self.bus_cycles = {}
        self._stats = None
        self._image = 0
        self._in_flight = False     # a START not yet waited for
        # What the write-only memories hold: memory -> list of (lo, hi, key) regions of constant contents
        # (weights), so that a step run on many images loads its weights once.
        self._contents = {}

    # --- bus ---------------------------------------------------------------------------------------------------
    def _transact(self, words, opcode, expected=0):
        answer = self.transport.transact(list(words))
        if self._stats is not None:
            stats = self._stats[self._image]
            stats["words_in"] += len(words)
            stats["words_out"] += len(answer)
        return protocol.decode_response(answer, opcode, expected)

    def status(self):
        """STATUS: ``(cycle counter, config id)``."""
        cycles, got, _ = self._status()
        return cycles, got

    def _status(self):
        answer = self.transport.transact(list(protocol.encode_status()))
        words = protocol.decode_response(answer, Opcode.STATUS, 3)
        if self._stats is not None:
            stats = self._stats[self._image]
            stats["words_in"] += 1
            stats["words_out"] += len(answer)
        return words[0] | (words[1] << 32), words[2], protocol.run_state(answer)

    def check(self):
        """STATUS: the accelerator must be built for this configuration. A run left in flight (or finished and
        not collected) by an earlier host that stopped half-way is waited for, so it cannot make this one BUSY."""
        cycles, got, state = self._status()
        want = config_id(self.config)
        if got != want:
            raise ProgramError(f"program built for a different configuration: the accelerator reports config id "
                               f"{got:#010x}, the program needs {want:#010x}")
        if state is not RunState.IDLE:
            try:
                self.wait()
            except protocol.AcceleratorError:
                pass        # that run's own failure (e.g. aborted by the watchdog) is not this program's
        return cycles

    def write(self, memory, words, base=0):
        words = np.asarray(words, np.uint32).reshape(-1)
        memory = MemoryId(memory)
        if memory not in self.specs:
            raise ProgramError(f"{memory.name}: this accelerator (engines={','.join(self.config.engines)}) has no "
                               f"such memory")
        if base + len(words) > self.specs[memory].words:
            raise ProgramError(f"{memory.name}: {base + len(words)} words do not fit its {self.specs[memory].words}")
        chunk = len(words) if not self.max_words else max(1, self.max_words - 2)
        for start in range(0, len(words), max(chunk, 1)):
            part = words[start:start + chunk].tolist()
            self._transact(protocol.encode_write(memory, base + start, part), Opcode.WRITE)
        self._forget(memory, (base, base + len(words)))

    def read(self, memory, count, base=0):
        chunk = count if not self.max_words else max(1, self.max_words - 1)
        out = []
        for start in range(0, count, max(chunk, 1)):
            n = min(chunk, count - start)
            out += self._transact(protocol.encode_read(memory, base + start, n), Opcode.READ, n)
        return np.asarray(out, np.uint32)

    def run(self, engine, fields):
        """RUN one engine (blocking); returns its cycle count."""
        words = acc.descriptor_words(self.config, engine, fields)
        cycles, = self._transact(protocol.encode_run(words), Opcode.RUN, 1)
        return cycles

    def start(self, engine, fields):
        """START one engine; returns at once."""
        self._transact(protocol.encode_start(acc.descriptor_words(self.config, engine, fields)), Opcode.START)
        self._in_flight = True

    def wait(self):
        """WAIT for the run in flight; returns its cycle count."""
        self._in_flight = False         # answered or not, WAIT is not sent twice for one run
        cycles, = self._transact(protocol.encode_wait(), Opcode.WAIT, 1)
        return cycles

    def _forget(self, memory, span):
        self._contents[memory] = [r for r in self._contents.get(memory, []) if not _overlap(r, span)]

    def _resident_base(self, memory, key, size):
        for lo, hi, k in self._contents.get(memory, []):
            if k == key and hi - lo == size:
                return lo
        return None

    # --- placement ---------------------------------------------------------------------------------------------
    def _half_base(self, memory, rows, slot):
        """First row of half ``slot`` of ``memory`` for ``rows`` rows, or 0 when they do not fit half of it."""
        depth = self.specs[memory].depth
        return slot * (depth // 2) if rows <= depth // 2 else 0

    def _words_per_row(self, memory):
        return self.specs[memory].width // 32

    def _owned(self, engine, run):
        """The host words the accelerator locks for this run (hw/accelerator.py), per memory."""
        def span(memory, base, count):
            w = self._words_per_row(memory)
            return memory, (base * w, (base + count) * w)
        layer = run["layer"]
        if engine == EngineId.CONV:
            spans = [span(MemoryId.CONV_ACT, layer["act_base"], run["act_count"]),
                     span(MemoryId.WEIGHTS, layer["weight_base"], run["weight_count"]),
                     span(MemoryId.PARAMS, layer["param_base"], run["param_count"])]
        else:
            spans = [span(MemoryId.ACT_A, run["in_base"], run["in_count"])]
            if engine == EngineId.DEPTHWISE:
                spans.append(span(MemoryId.DW_WEIGHTS, run["w_base"], run["w_count"]))
            if engine == EngineId.ADD:
                spans.append(span(MemoryId.ACT_B, run["in_base"], run["in_count"]))
        spans.append(span(MemoryId.OUTPUT, run["out_base"], run["out_count"]))
        return dict(spans)

    # --- steps -------------------------------------------------------------------------------------------------
    def run_step(self, step, tensors, graph):
        """Run every tile of ``step`` on one image's tensors (a dict name -> ``[H, W, C]`` or ``[C]`` int8 array);
        returns ``(output, stats)`` with stats ``{"cycles", "words_in", "words_out"}``."""
        outputs, stats = self.run_step_batch(step, [tensors], graph)
        return outputs[0], stats[0]

    def run_step_batch(self, step, batch, graph):
        """Run every tile of ``step`` on every image of ``batch`` (a list of tensor dicts), pipelined; returns
        ``(outputs, stats)``, one of each per image. The step's bus-inclusive cycles over the whole batch go to
        :attr:`bus_cycles`."""
        last = step.nodes[-1]
        shape = last.output.shape
        outs = [np.zeros(shape if len(shape) == 3 else (1, 1, shape[0]), np.int8) for _ in batch]
        self._stats = [{"cycles": 0, "words_in": 0, "words_out": 0} for _ in batch]
        try:
            self._image = 0
            began, _ = self.status()
            jobs = self._jobs(step, batch, graph)
            self._execute(jobs, outs)
            self._image = len(batch) - 1
            ended, _ = self.status()
            self.bus_cycles[step.name] = ended - began
            stats = self._stats
        finally:
            self._stats = None
        return [out.reshape(shape) for out in outs], stats

    def _jobs(self, step, batch, graph):
        """The step's jobs, tiles outer and images inner, lazily (a job's data is made just before it loads)."""
        builder = {"conv": self._conv_job, "depthwise": self._depthwise_job, "pool": self._pool_job,
                   "add": self._add_job}[step.kind]
        slot, wslot, wkey = 0, 1, None
        for tile in step.tiles:
            try:
                descriptors = tile_descriptors(self.config, graph, step, tile)
            except ValueError as exc:
                raise ProgramError(f"step {step.name!r}, tile {tile}: {str(exc).splitlines()[0]}") from None
            bands = tile_bands(step, tile, graph)
            key = (step.name, id(step.nodes[0]), tile.c0, tile.c1)
            if key != wkey:
                wkey, wslot = key, 1 - wslot
            for image, tensors in enumerate(batch):
                yield builder(step, tile, descriptors, bands, tensors, image, slot, wslot, key)
                slot = 1 - slot

    def _execute(self, jobs, outs):
        if not self.overlap:
            for job in jobs:
                self._image = job.image
                self._load(job, None)
                self._stats[job.image]["cycles"] += self.run(job.engine, job.run)
                self._collect(job, outs)
            return
        try:
            self._pipeline(jobs, outs)
        except BaseException:
            # Whatever failed (a tile that does not fit, the link, a refused command), leave no run in flight:
            # the next START would be answered BUSY.
            if self._in_flight:
                try:
                    self.wait()
                except Exception:
                    pass
            raise

    def _pipeline(self, jobs, outs):
        done = None         # the job started before this one: in flight until waited for, then to be read
        running = False
        for job in jobs:
            self._image = job.image
            running = self._load(job, done if running else None) and running
            if running:
                self._finish(done)
                running = False
            if done is not None and _overlap(done.owns[MemoryId.OUTPUT], job.owns[MemoryId.OUTPUT]):
                self._collect(done, outs)       # its result would be overwritten by this run
                done = None
            self._image = job.image
            self.start(job.engine, job.run)
            if done is not None:
                self._image = done.image
                self._collect(done, outs)
            done, running = job, True
        if done is not None:
            self._image = done.image
            if running:
                self._finish(done)
            self._collect(done, outs)

    def _finish(self, job):
        self._image = job.image
        self._stats[job.image]["cycles"] += self.wait()

    def _load(self, job, inflight):
        """Write ``job``'s data; waits first for ``inflight`` (the run in flight) when a write would touch what it
        owns. Returns False if it had to wait (nothing is in flight any more)."""
        for w in job.writes:
            if w.key is not None and self._resident_base(w.memory, w.key, w.size) == w.base:
                continue
            span = (w.base, w.base + w.size)
            if inflight is not None and w.memory in inflight.owns and _overlap(inflight.owns[w.memory], span):
                self._finish(inflight)
                inflight = None
                self._image = job.image
            self.write(w.memory, w.words() if callable(w.words) else w.words, w.base)
            if w.key is not None:
                self._contents.setdefault(w.memory, []).append((w.base, w.base + w.size, w.key))
        return inflight is not None

    def _collect(self, job, outs):
        """READ ``job``'s output and put it into its image's output."""
        lanes = self.config.lanes
        words = self.read(MemoryId.OUTPUT, job.out_count * lanes // 4, job.out_base * lanes // 4)
        rows = words.astype("<u4").view(np.int8).reshape(job.out_count, lanes)
        h, w, c = job.out_shape
        t = job.tile
        outs[job.image][t.y0:t.y1, :, t.c0:t.c1] = from_planes(rows, h, w, c, lanes)

    def _job(self, image, tile, engine, run, writes, out_shape, out_count):
        if out_count > self.config.vector_depth:
            raise ProgramError(f"tile {tile}: its output needs {out_count} rows, OUTPUT has "
                               f"{self.config.vector_depth}")
        job = _Job(image, tile, engine, run, writes, run["out_base"], out_count, out_shape)
        job.owns = self._owned(engine, run)
        return job

    def _plane_write(self, memory, x, slot, name):
        rows = to_planes(x, self.config.lanes)
        if rows.shape[0] > self.config.vector_depth:
            raise ProgramError(f"node {name!r}: a {x.shape} map needs {rows.shape[0]} rows of {memory.name}, which "
                               f"has {self.config.vector_depth}")
        base = self._half_base(memory, rows.shape[0], slot)
        words = rows.view(np.uint8).reshape(-1).view("<u4")
        per_row = self._words_per_row(memory)
        return _Write(memory, base * per_row, words, len(words)), base, rows.shape[0]

    def _weights_write(self, memory, rows, make_words, slot, key):
        """Constant contents (weights): where they already are, else in half ``slot`` (if they fit half)."""
        per_row = self._words_per_row(memory)
        size = rows * per_row
        at = self._resident_base(memory, key, size)
        base = at // per_row if at is not None else self._half_base(memory, rows, slot)
        return _Write(memory, base * per_row, make_words, size, key), base

    @staticmethod
    def _input(tensors, name):
        x = np.asarray(tensors[name])
        return x.reshape(1, 1, -1) if x.ndim == 1 else x

    def _conv_job(self, step, tile, descriptors, bands, tensors, image, slot, wslot, key):
        cfg = self.config
        node = step.nodes[0]
        layer = descriptors[0]
        x = self._input(tensors, node.inputs[0])
        weights = node.weights
        if node.kind == "fully_connected":
            x = x.reshape(1, 1, -1)
            weights = weights.reshape(weights.shape[0], 1, 1, -1)
        else:
            x = x[bands[0][0]:bands[0][1]]
        c0, c1 = tile.c0, tile.c1
        rq = node.requant
        cout = weights.shape[0]
        act, wgt, params = memory_images(cfg, layer, x, weights[c0:c1], np.asarray(node.bias)[c0:c1],
                                         _channels(rq.multiplier, cout)[c0:c1], _channels(rq.shift, cout)[c0:c1],
                                         act_depth=cfg.conv_act_depth, weight_depth=cfg.conv_weight_depth,
                                         param_depth=cfg.conv_param_depth, name=node.name)
        act_rw = self.row_words[MemoryId.CONV_ACT]
        act_base = self._half_base(MemoryId.CONV_ACT, act.shape[0], slot)
        writes = [_Write(MemoryId.CONV_ACT, act_base * act_rw, _rows_to_words(act, act_rw), act.shape[0] * act_rw)]
        w_write, weight_base = self._weights_write(
            MemoryId.WEIGHTS, wgt.shape[0],
            lambda: _rows_to_words(wgt.view(np.uint8), self.row_words[MemoryId.WEIGHTS]), wslot, key)
        p_write, param_base = self._weights_write(
            MemoryId.PARAMS, params.shape[0],
            lambda: _ints_to_words(_param_rows(params), self.row_words[MemoryId.PARAMS]), wslot, key)
        writes += [w_write, p_write]
        layer = dict(layer, act_base=act_base, weight_base=weight_base, param_base=param_base)
        groups = -(-(c1 - c0) // cfg.lanes)
        if len(step.nodes) == 1:
            out_shape = (layer["out_h"], layer["out_w"], c1 - c0)
            pool, fuse = _zero_pool(), 0
        else:
            pool, fuse = _pool_desc(descriptors[1]), 1
            out_shape = (tile.y1 - tile.y0, step.nodes[1].output.shape[1], c1 - c0)
        count = groups * out_shape[0] * out_shape[1]
        if fuse and pool["mode"] == PoolMode.GLOBAL_AVG:
            count = groups
        run = {"layer": layer, "pool": pool, "fuse": fuse, "out_base": self._half_base(MemoryId.OUTPUT, count, slot),
               "out_count": count, "act_count": act.shape[0], "weight_count": wgt.shape[0],
               "param_count": params.shape[0]}
        return self._job(image, tile, EngineId.CONV, run, writes, out_shape, count)

    def _depthwise_job(self, step, tile, descriptors, bands, tensors, image, slot, wslot, key):
        cfg = self.config
        node = step.nodes[0]
        x = self._input(tensors, node.inputs[0])
        a, b = bands[0][:2]
        c0, c1 = tile.c0, tile.c1
        rq = node.requant
        cout = node.weights.shape[3]
        beats = depthwise_weight_beats(cfg, node.weights[..., c0:c1], np.asarray(node.bias)[c0:c1],
                                       _channels(rq.multiplier, cout)[c0:c1], _channels(rq.shift, cout)[c0:c1],
                                       max_kernel=acc.DW_KERNEL, name=node.name)
        layout = data.Layout.cast(depthwise_weights_layout(cfg, acc.DW_KERNEL))
        per_row = self._words_per_row(MemoryId.DW_WEIGHTS)
        w_write, w_base = self._weights_write(
            MemoryId.DW_WEIGHTS, len(beats),
            lambda: _ints_to_words([layout.const(beat).as_bits() for beat in beats], per_row), wslot, key)
        in_write, in_base, in_count = self._plane_write(MemoryId.ACT_A, x[a:b, :, c0:c1], slot, node.name)
        out_shape = (tile.y1 - tile.y0, node.output.shape[1], c1 - c0)
        count = len(beats) * out_shape[0] * out_shape[1]
        run = {"layer": descriptors[0], "in_base": in_base, "in_count": in_count, "w_base": w_base,
               "w_count": len(beats), "out_base": self._half_base(MemoryId.OUTPUT, count, slot), "out_count": count}
        return self._job(image, tile, EngineId.DEPTHWISE, run, [w_write, in_write], out_shape, count)

    def _pool_job(self, step, tile, descriptors, bands, tensors, image, slot, wslot, key):
        node = step.nodes[0]
        x = self._input(tensors, node.inputs[0])
        a, b = bands[0][:2]
        c0, c1 = tile.c0, tile.c1
        in_write, in_base, in_count = self._plane_write(MemoryId.ACT_A, x[a:b, :, c0:c1], slot, node.name)
        fields = _pool_desc(descriptors[0])
        out_shape = (tile.y1 - tile.y0, node.output.shape[1] if len(node.output.shape) == 3 else 1, c1 - c0)
        count = -(-(c1 - c0) // self.config.lanes) * out_shape[0] * out_shape[1]
        run = {"layer": fields, "in_base": in_base, "in_count": in_count,
               "out_base": self._half_base(MemoryId.OUTPUT, count, slot), "out_count": count}
        return self._job(image, tile, EngineId.POOL, run, [in_write], out_shape, count)

    def _add_job(self, step, tile, descriptors, bands, tensors, image, slot, wslot, key):
        node = step.nodes[0]
        t = tile
        x1 = self._input(tensors, node.inputs[0])[t.y0:t.y1, :, t.c0:t.c1]
        x2 = self._input(tensors, node.inputs[1])[t.y0:t.y1, :, t.c0:t.c1]
        # The add engine reads both maps from the same base.
        write_a, in_base, in_count = self._plane_write(MemoryId.ACT_A, x1, slot, node.name)
        write_b, _, _ = self._plane_write(MemoryId.ACT_B, x2, slot, node.name)
        run = {"layer": descriptors[0], "in_base": in_base, "in_count": in_count,
               "out_base": self._half_base(MemoryId.OUTPUT, in_count, slot), "out_count": in_count}
        return self._job(image, tile, EngineId.ADD, run, [write_a, write_b], x1.shape, in_count)


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


def _zero_pool():
    window = {"height": 0, "width": 0, "kernel": 0, "stride": 0, "pad_top": 0, "pad_bottom": 0, "pad_left": 0,
              "pad_right": 0, "zero_point": 0, "groups": 0}
    return {"window": window, "mode": PoolMode.MAX, "qmin": 0, "qmax": 0}


def run_program(driver, program, images, log=None):
    """Run ``program`` on a batch of images (``[N, ...]`` int8) through ``driver``, step by step over the whole
    batch (so a step's weights are loaded once for all images, and one image's tile loads while another's runs).

    Returns ``(outputs, stats)``: the graph outputs ``[N, ...]`` int8, and per image a dict
    ``{step name: {"cycles", "words_in", "words_out"}}`` (weights count against the first image that loads
    them). ``driver.bus_cycles`` then holds each step's bus-inclusive cycles over the batch.
    """
    graph = program.graph
    driver.check()
    images = np.asarray(images)
    tensors = [{graph.input.name: image} for image in images]
    stats = [{} for _ in images]
    for step in program.steps:
        outputs, per_image = driver.run_step_batch(step, tensors, graph)
        for values, per_step, out, st in zip(tensors, stats, outputs, per_image):
            values[step.output] = out
            per_step[step.name] = st
        if log is not None:
            log(f"step {step.name} done on {len(images)} images")
    outputs = np.stack([values[graph.output] for values in tensors]).astype(np.int8)
    return outputs, stats
