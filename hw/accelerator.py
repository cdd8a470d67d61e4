"""The accelerator top: command processor, on-chip memories and the engines behind one host bus.

Which engines are built is ``config.engines`` (the conv engine always; depthwise, pool, add as listed): a missing
engine and the memories only it uses are not built (``ACT_B`` only with add, ``DW_WEIGHTS`` only with depthwise,
``ACT_A`` with any vector engine), a run for it is answered ``BAD_DESCRIPTOR`` and a transfer into its memory
``BAD_ADDRESS``.

What moves where (host-orchestrated, tile by tile, double-buffered)
-------------------------------------------------------------------
The host (host/driver.py) runs a program tile by tile. For each tile it WRITEs the tile's input map and the
layer's weights into the memories below, STARTs one engine with a descriptor, and READs the tile's output back;
layout conversions (NHWC <-> channel-group planes, the conv engine's bank layout) are done in NumPy on the host.
Every descriptor carries the base row of each memory region it reads and writes, so the host keeps two tiles in
each memory: while tile n runs from one half it writes tile n+1 into the other and reads tile n-1's output
(``START`` answers at once, ``WAIT`` collects the run's status and cycles; hw/commands.py). At the start of a run
the dispatcher registers the host-word range of every memory the run owns and hands it to the command processor,
which refuses with ``BUSY`` any transfer into it (and any host WRITE into ``OUTPUT``, which the engines write)
until the run ends. The price of host orchestration is bus traffic, reported per step by the driver
(``words_in`` / ``words_out``); double buffering hides the part of it that fits under the runs.

Memories (:class:`~cnnacc.hw.commands.MemoryId`), as the host sees them (32-bit words, little-endian):

``CONV_ACT``, ``WEIGHTS``, ``PARAMS`` (write only)
    The convolution engine's own memories (see hw/conv_engine.py :func:`memory_images`). A memory row is
    ``2**k`` host words (the row's bits zero-padded to a power-of-two number of words); the row is written into
    the engine when the word holding its last bit arrives (on ice40 each lane of a PARAMS row when the word
    holding its last bit arrives), so the host writes whole rows in order.
``ACT_A``, ``ACT_B``
    Input maps of the vector engines, one row per pixel of ``lanes`` int8 channels (``lanes / 4`` words), in
    channel-group plane order (hw/window_generator.py). ``ACT_B`` is the add engine's second input.
``DW_WEIGHTS``
    One row per channel group: the depthwise engine's weight beat
    (:func:`~cnnacc.hw.depthwise.depthwise_weights_layout`), zero-padded to a power-of-two number of words.
``OUTPUT``
    Every engine writes its result here, one row per pixel of ``lanes`` channels, in channel-group plane
    order, from row ``out_base``.

Runs
----
A ``RUN``/``START`` descriptor is word 0 = :class:`~cnnacc.hw.commands.EngineId`, then the engine's run struct
(:func:`run_layouts`), packed little-endian from bit 0 of word 1. The convolution run can fuse a pooling layer
(``fuse = 1``): the conv engine's output beats go straight into the pooling engine, which needs
``config.rows == config.lanes`` (a conv output beat is then one plane pixel); so does writing conv results as
plane rows, and this version requires it. A descriptor with an unknown engine, a zero count or size, a kernel or
padding the engine cannot take, a conv layer past what the conv engine's memories can hold
(:func:`~cnnacc.hw.conv_engine.conv_limits`: the engine computes with just those bits) or a base outside its
memory is answered ``BAD_DESCRIPTOR`` at once. A run that makes no progress (no memory
row read or written) for :data:`WATCHDOG_CYCLES` cycles is aborted (also ``BAD_DESCRIPTOR``), so a descriptor
whose counts disagree with its layer cannot hang the accelerator. After every run, good or aborted, the engines
and streamers are reset (their memories keep their contents), so nothing of one run leaks into the next.
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Shape, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .add_engine import AddEngine, add_layer_layout
from .command_processor import WORD_LAYOUT, CommandProcessor, or_all
from .commands import EngineId, MemoryId, config_id
from .conv_engine import ConvEngine, ConvLayer, act_banks, conv_limits, engine_layer_layout
from .depthwise import DepthwiseEngine, depthwise_layer_layout, depthwise_weights_layout
from .memory_map import COPY_ATTR, MemoryMap, MemorySpec, engine_read_latency
from .pool_engine import (PoolEngine, ice40_pool_limits, pool_has_clamp, pool_layer_layout, pool_max_kernel,
                          pool_modes)
from .requantizer import lane_params_layout
from .streamer import MemoryReader, MemoryWriter

__all__ = ["Accelerator", "memory_specs", "conv_row_words", "run_layouts", "descriptor_words",
           "max_descriptor_words", "conv_layer_bits", "descriptor_bits", "DW_GROUPS", "DW_KERNEL", "WATCHDOG_CYCLES",
           "SETTLE", "ENGINE_MEMORIES", "ENGINE_IDS", "conv_output_stages"]

#: Channel groups the depthwise weight memory holds (2048 channels at 8 lanes).
DW_GROUPS = 256
#: Kernel side the depthwise engine is built for (MobileNet's 3x3).
DW_KERNEL = 3
#: Cycles without a memory row read or written (or a conv result) after which a run is aborted: longer than any
#: conv tile's reduction (Cin x KH x KW beats): every 3x3 and 5x5 conv, 7x7 up to Cin = 2674.
WATCHDOG_CYCLES = 1 << 17
#: Cycles the command processor waits between a descriptor's last word and the start of its run: the last word
#: reaches its register in the first, the dispatcher registers its checks of the descriptor (each engine's, then
#: the verdict) in the other two. The ECP5 takes one more: its dispatcher registers every check's terms first.
SETTLE = 3


def _pow2_words(bits):
    words = 1
    while words * 32 < bits:
        words *= 2
    return words


def conv_row_words(config):
    """Host words per row of ``CONV_ACT``, ``WEIGHTS`` and ``PARAMS``."""
    return {
        MemoryId.CONV_ACT: _pow2_words(8 * act_banks(config)),
        MemoryId.WEIGHTS: _pow2_words(8 * config.rows),
        MemoryId.PARAMS: _pow2_words(lane_params_layout().size * config.rows),
    }


#: The memories each engine reads or writes besides OUTPUT (which every engine writes) and the conv engine's own.
ENGINE_MEMORIES = {"depthwise": (MemoryId.ACT_A, MemoryId.DW_WEIGHTS), "pool": (MemoryId.ACT_A,),
                   "add": (MemoryId.ACT_A, MemoryId.ACT_B), "conv": ()}
#: The engine id of each engine name of :data:`cnnacc.config.ENGINES`.
ENGINE_IDS = {"conv": EngineId.CONV, "depthwise": EngineId.DEPTHWISE, "pool": EngineId.POOL, "add": EngineId.ADD}


def memory_specs(config):
    """:class:`MemorySpec` of each host-visible memory (for the conv memories: the host's view). A memory no
    engine of ``config.engines`` uses is not built (ACT_B only with add, DW_WEIGHTS only with depthwise, ACT_A with
    any vector engine)."""
    lanes_bits = 8 * config.lanes
    rows = conv_row_words(config)
    dw_bits = 32 * _pow2_words(data.Layout.cast(depthwise_weights_layout(config, DW_KERNEL)).size)
    specs = {
        MemoryId.ACT_A: MemorySpec(lanes_bits, config.vector_depth),
        MemoryId.ACT_B: MemorySpec(lanes_bits, config.vector_depth),
        MemoryId.DW_WEIGHTS: MemorySpec(dw_bits, DW_GROUPS),
        MemoryId.OUTPUT: MemorySpec(lanes_bits, config.vector_depth),
        MemoryId.CONV_ACT: MemorySpec(32 * rows[MemoryId.CONV_ACT], config.conv_act_depth),
        MemoryId.WEIGHTS: MemorySpec(32 * rows[MemoryId.WEIGHTS], config.conv_weight_depth),
        MemoryId.PARAMS: MemorySpec(32 * rows[MemoryId.PARAMS], config.conv_param_depth),
    }
    used = {memory for engine in config.engines for memory in ENGINE_MEMORIES[engine]}
    return {k: v for k, v in specs.items() if k in used or k not in (MemoryId.ACT_A, MemoryId.ACT_B,
                                                                       MemoryId.DW_WEIGHTS)}


def run_layouts(config):
    """The run struct of each engine (descriptor words 1...)."""
    depth = config.vector_depth
    rows = range(depth)
    count = range(depth + 1)
    return {
        # The conv engine's counts are the rows of its memories the layer reads (from the layer's bases): the
        # engine derives its addresses from the layer, the counts only say what the host must leave alone while
        # it runs (deriving them in gateware would take a multiplier for one compare per run).
        EngineId.CONV: data.StructLayout({
            "layer": ConvLayer, "pool": pool_layer_layout(config), "fuse": 1, "out_base": rows, "out_count": count,
            "act_count": range(config.conv_act_depth + 1), "weight_count": range(config.conv_weight_depth + 1),
            "param_count": range(config.conv_param_depth + 1),
        }),
        EngineId.DEPTHWISE: data.StructLayout({
            "layer": depthwise_layer_layout(config, DW_KERNEL), "in_base": rows, "in_count": count,
            "w_base": range(DW_GROUPS), "w_count": range(DW_GROUPS + 1), "out_base": rows, "out_count": count,
        }),
        EngineId.POOL: data.StructLayout({
            "layer": pool_layer_layout(config), "in_base": rows, "in_count": count, "out_base": rows,
            "out_count": count,
        }),
        EngineId.ADD: data.StructLayout({
            "layer": add_layer_layout(config), "in_base": rows, "in_count": count, "out_base": rows,
            "out_count": count,
        }),
    }


def conv_output_stages(config):
    """Register stages between the conv engine's output and its consumers (the pool engine, the writer): 1 on
    the iCE40 and the ECP5 (see the accelerator), else 0. Each adds one cycle to a conv run."""
    return 1 if config.target in ("ice40", "ecp5") else 0


def max_descriptor_words(config):
    """Longest ``RUN`` descriptor (words, engine id included)."""
    return 1 + max(-(-data.Layout.cast(layout).size // 32) for layout in run_layouts(config).values())


#: The conv layer's fields the dispatcher checks against the conv engine's limits (conv_limits).
_CONV_CHECKED = ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "kernel_h", "kernel_w", "pad_top", "pad_left",
                 "act_channel_stride", "act_base", "weight_base", "param_base")


def conv_layer_bits(config):
    """Bits of each :class:`ConvLayer` field the accelerator keeps: the conv engine's (:func:`engine_layer_layout`),
    and for ``act_channel_stride``, which may equal the memory's depth, one more. Of a checked field
    (``_CONV_CHECKED``) the bits above are only checked for zero, which a value within its limit has; of ``origin``
    they are not used (the engine computes modulo its memories' size)."""
    engine = data.Layout.cast(engine_layer_layout(config, act_depth=config.conv_act_depth,
                                                  weight_depth=config.conv_weight_depth,
                                                  param_depth=config.conv_param_depth))
    lim = conv_limits(config)
    bits = {}
    for name, field in data.Layout.cast(ConvLayer):
        kept = Shape.cast(engine[name].shape).width
        if name == "act_channel_stride":
            kept = max(kept, Shape.cast(range(lim.act_depth + 1)).width)
        if name not in _CONV_CHECKED and name != "origin":
            kept = Shape.cast(field.shape).width
        bits[name] = min(kept, Shape.cast(field.shape).width)
    return bits


def descriptor_bits(config):
    """``(keep, conv_high)``: the descriptor bits some engine of ``config`` reads (word 0's engine id, every
    field of the engines built, of the conv layer :func:`conv_layer_bits`), and the conv layer's bits above
    those of its checked fields (as :class:`~cnnacc.hw.command_processor.CommandProcessor` masks)."""
    layouts = run_layouts(config)
    keep = 0xFF | ((1 << data.Layout.cast(layouts[EngineId.CONV]).size) - 1) << 32
    high = 0
    conv_layer = data.Layout.cast(layouts[EngineId.CONV])["layer"]
    assert conv_layer.offset == 0
    for (name, field), kept in zip(data.Layout.cast(ConvLayer), conv_layer_bits(config).values()):
        above = ((1 << Shape.cast(field.shape).width) - 1) & ~((1 << kept) - 1)
        keep &= ~(above << (32 + field.offset))
        if name in _CONV_CHECKED:
            high |= above << (32 + field.offset)
    # A bit another engine reads stays (the conv flag still covers it).
    for engine in set(config.engines) - {"conv"}:
        size = data.Layout.cast(layouts[ENGINE_IDS[engine]]).size
        keep |= ((1 << size) - 1) << 32
    return keep, high


def descriptor_words(config, engine, fields):
    """The ``RUN`` descriptor (a list of 32-bit ints) of ``engine`` with run struct ``fields`` (a dict)."""
    engine = EngineId(engine)
    layout = data.Layout.cast(run_layouts(config)[engine])
    bits = layout.const(fields).as_bits()
    return [int(engine.value)] + [(bits >> (32 * i)) & 0xFFFFFFFF for i in range(-(-layout.size // 32))]


class Accelerator(wiring.Component):
    """Command processor + memories + the conv engine and the vector engines ``config.engines`` lists.

    Parameters
    ----------
    config : AcceleratorConfig
        ``rows`` must equal ``lanes`` (see the module docstring).

    Members
    -------
    i_host : In(stream.Signature(WORD_LAYOUT))
    o_host : Out(stream.Signature(WORD_LAYOUT))
    """

    def __init__(self, config):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        if config.rows != config.lanes:
            raise ValueError(f"the accelerator needs rows == lanes (conv output beats are plane pixels), "
                             f"not rows={config.rows} lanes={config.lanes}")
        if config.lanes % 4:
            raise ValueError(f"lanes must be a multiple of 4 (a pixel row is whole host words), not {config.lanes}")
        self._config = config
        super().__init__({
            "i_host": In(stream.Signature(WORD_LAYOUT)),
            "o_host": Out(stream.Signature(WORD_LAYOUT)),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        specs = memory_specs(cfg)
        layouts = run_layouts(cfg)
        has = set(cfg.engines)
        vector_ids = [k for k in (MemoryId.ACT_A, MemoryId.ACT_B, MemoryId.DW_WEIGHTS, MemoryId.OUTPUT) if k in specs]
        conv_ids = (MemoryId.CONV_ACT, MemoryId.WEIGHTS, MemoryId.PARAMS)

        keep, conv_high = descriptor_bits(cfg)
        # A pool run's layer is also written where a conv run's fused pool layer is (both are word-aligned): the
        # pool engine and its checks then read one place. (A POOL descriptor cut short before its layer's last
        # word leaves the rest of that layer stale from an earlier descriptor, as before, but from other words.)
        conv_pool = data.Layout.cast(layouts[EngineId.CONV])["pool"].offset + 32
        pool_layer = data.Layout.cast(layouts[EngineId.POOL])["layer"].offset + 32
        pool_bits = data.Layout.cast(pool_layer_layout(cfg)).size
        mirror_pool = "pool" in has and conv_pool % 32 == 0 and pool_layer % 32 == 0
        mirror = []
        if mirror_pool:
            mirror = [(EngineId.POOL.value, (pool_layer + 32 * j) // 32, (conv_pool + 32 * j) // 32,
                       ((1 << pool_bits) - 1) >> (32 * j) & 0xFFFFFFFF) for j in range(-(-pool_bits // 32))]
        # On the ECP5 the host's read data is registered beside each block RAM (MemoryMap's host_register): from
        # the block RAM's output across the die into the command processor's multiplexers was nextpnr's critical
        # path (docs/decisions.md, session 15). The command processor waits as long as the memory map says.
        # The engines' read data likewise (engine_register): from the block RAM into the engines' input
        # multiplexers was most of the routed build's slowest paths (docs/decisions.md, session 19). Both second
        # registers become the block RAMs' own output registers (boards/outreg.py).
        mems = MemoryMap({k: specs[k] for k in vector_ids}, engine_written=[MemoryId.OUTPUT],
                         host_register=cfg.target == "ecp5", engine_register=engine_read_latency(cfg) == 2)
        m.submodules.cp = cp = CommandProcessor({k: v.words for k, v in specs.items()}, config_id(cfg),
                                                max_descriptor=max_descriptor_words(cfg),
                                                settle=SETTLE + (cfg.target == "ecp5"),
                                                done_delay=1,
                                                engine_written=[MemoryId.OUTPUT], keep=keep, flags=[conv_high],
                                                mirror=mirror, registered_read=cfg.target == "ecp5",
                                                read_latency=mems.read_latency, select_only=cfg.target == "ecp5")
        wiring.connect(m, wiring.flipped(self.i_host), cp.i_host)
        wiring.connect(m, cp.o_host, wiring.flipped(self.o_host))

        m.submodules.memories = mems
        wiring.connect(m, cp.mem, mems.bus)

        # Every run ends with a reset of the engines and streamers (not of their memories).
        flush = Signal()
        # On the ECP5 each engine takes the flush from a register of its own (COPY_ATTR), set as ``ended`` is:
        # the one net reached the resets of some 1,200 flip-flops across the die (crossed by some 670 failing
        # paths of a routed build, docs/decisions.md session 17); each copy is placed by its own engine.
        flush_copies = []
        def engine(name, component):
            control = flush
            if cfg.target == "ecp5":
                control = Signal(name=f"{name}_flush", attrs={COPY_ATTR: 1})
                flush_copies.append(control)
            m.submodules[name] = ResetInserter(control)(component)
            return component

        def reader(memory):
            if memory not in specs:
                return None
            port = engine(f"reader_{memory.name.lower()}",
                          MemoryReader(specs[memory], latency=mems.engine_read_latency))
            wiring.connect(m, port.port, getattr(mems, f"{memory.name.lower()}_read"))
            return port

        # The descriptor registers hold still while a run is in flight (the command processor refuses a START
        # then), so the conv engine reads its layer from them instead of keeping a copy. On the ECP5 it keeps one
        # all the same: the descriptor registers sit with the command processor, and their fields reached the
        # conv engine's columns across the die (nextpnr's critical path, docs/decisions.md session 14).
        conv = engine("conv", ConvEngine(cfg, act_depth=cfg.conv_act_depth, weight_depth=cfg.conv_weight_depth,
                                         param_depth=cfg.conv_param_depth, hold_layer=cfg.target != "ecp5"))
        dw = engine("depthwise", DepthwiseEngine(cfg, kernel=DW_KERNEL)) if "depthwise" in has else None
        pool = engine("pool", PoolEngine(cfg)) if "pool" in has else None
        add = engine("add", AddEngine(cfg)) if "add" in has else None
        reader_a, reader_b, reader_w = (reader(k) for k in (MemoryId.ACT_A, MemoryId.ACT_B, MemoryId.DW_WEIGHTS))
        # No run has an empty output (the dispatcher refuses out_count 0): the writer's done comes from its rows.
        # Its transfer is offered as the run starts, and a run ends (every engine reset) the cycle after its
        # last row: the writer is always ready, and no handshake reaches back from it into the engines.
        writer = engine("writer", MemoryWriter(specs[MemoryId.OUTPUT], empty=False, always_ready=True))
        wiring.connect(m, writer.port, mems.output_write)
        m.d.comb += mems.output_read.en.eq(0)

        # --- host writes into the conv engine's memories: assemble a row, write it on its last word ---------
        # Only the bits still needed are held: a row is written when the word holding its last bit arrives (the
        # padding words after it change nothing), so a register keeps the words before that one only.
        row_words = conv_row_words(cfg)
        targets = {MemoryId.CONV_ACT: conv.act_write, MemoryId.WEIGHTS: conv.weight_write,
                   MemoryId.PARAMS: conv.param_write}
        staged = cfg.target == "ecp5"
        if staged:
            # On the ECP5 a host write reaches these memories two cycles late, through two register stages: the
            # bus as it comes (the command processor's registers sit with it, across the die from the conv
            # engine), then each memory's word decoded one-hot beside the memory, so a held word's enable is a
            # flip-flop. nextpnr's critical path ran from the bus address through the decode's compare to the
            # enable of params_held (docs/decisions.md, session 17). Nothing waits on a write: nothing reads
            # these memories but the conv engine, whose run starts at least a command word, a descriptor word
            # and SETTLE cycles after the last write.
            bus_en = {memory: Signal(name=f"{memory.name.lower()}_host_w_en") for memory in conv_ids}
            bus_addr = Signal.like(cp.mem.addr, name="conv_host_w_addr", reset_less=True)
            bus_data = Signal.like(cp.mem.w_data, name="conv_host_w_data", reset_less=True)
            w_data = Signal.like(cp.mem.w_data, name="conv_host_w_data_b", reset_less=True)
            m.d.sync += [bus_addr.eq(cp.mem.addr), bus_data.eq(cp.mem.w_data), w_data.eq(bus_data)]
            m.d.sync += [bus_en[memory].eq(cp.mem.w_en & cp.mem.select[memory.value]) for memory in conv_ids]
        for memory in conv_ids:
            parts = row_words[memory]
            lg = parts.bit_length() - 1
            port = targets[memory]
            here = cp.mem.w_en & cp.mem.select[memory.value]
            part = cp.mem.addr[:lg] if lg else Const(0, 1)
            host_row = cp.mem.addr >> lg
            if memory == MemoryId.PARAMS and cfg.target == "ice40":
                # The engine's memory holds one lane a row (hw/conv_engine.py): lane r of a host row is written
                # when the word holding its last bit arrives (a lane is wider than a word, so one lane a word at
                # most), from a shift register of the few words a lane spans.
                bits = lane_params_layout().size
                ends = [(bits * r + bits - 1) // 32 for r in range(cfg.rows)]
                assert len(set(ends)) == cfg.rows, "a word would complete two lanes"
                span = max(end - bits * r // 32 + 1 for r, end in enumerate(ends))
                held = Signal(32 * (span - 1), name="params_held")
                words = Cat(held, cp.mem.w_data)
                if span > 1:
                    with m.If(here):
                        m.d.sync += held.eq(words[32:])
                with m.Switch(part):
                    for r, end in enumerate(ends):
                        offset = bits * r - 32 * (end - span + 1)
                        with m.Case(end):
                            m.d.comb += [port.valid.eq(here), port.payload.addr.eq(host_row * cfg.rows + r),
                                         port.payload.data.eq(words[offset:offset + bits])]
                continue
            width = len(port.payload.data.as_value())
            last = (width - 1) // 32
            if staged:
                # Word k of a row is in flip-flop k of ``word`` (the last one writes the row).
                word = Signal(last + 1, name=f"{memory.name.lower()}_host_word")
                w_row = Signal.like(host_row, name=f"{memory.name.lower()}_host_row", reset_less=True)
                m.d.sync += [word.eq(Cat(bus_en[memory] & ((bus_addr[:lg] if lg else 0) == k)
                                         for k in range(last + 1))),
                             w_row.eq(bus_addr >> lg)]
                row = w_data
                if last:
                    # Reset-less (some 800 flip-flops off the board reset's net): a row's last word writes the row
                    # with what its earlier words left here, which a reset never cleared between runs either (the
                    # host writes whole rows); the initial value is the same.
                    held = Signal(32 * last, name=f"{memory.name.lower()}_held", reset_less=True)
                    for k in range(last):
                        with m.If(word[k]):
                            m.d.sync += held.word_select(k, 32).eq(w_data)
                    row = Cat(held, w_data)
                m.d.comb += [port.valid.eq(word[last]), port.payload.addr.eq(w_row),
                             port.payload.data.eq(row[:width])]
                continue
            row = cp.mem.w_data
            if last:
                held = Signal(32 * last, name=f"{memory.name.lower()}_held")
                with m.If(here & (part < last)):
                    m.d.sync += held.word_select(part, 32).eq(cp.mem.w_data)
                row = Cat(held, cp.mem.w_data)
            m.d.comb += [port.valid.eq(here & (part == last)), port.payload.addr.eq(host_row),
                         port.payload.data.eq(row[:width])]

        # --- the dispatcher ------------------------------------------------------------------------------------
        desc = cp.run.descriptor
        engine_id = desc[0][:8]
        body = Signal(32 * (len(desc.as_value()) // 32 - 1))
        m.d.comb += body.eq(desc.as_value()[32:])
        runs = {eid: data.Layout.cast(layout)(body[:data.Layout.cast(layout).size]) for eid, layout in layouts.items()}

        active = Signal()
        current = Signal(range(max(e.value for e in EngineId) + 1), init=EngineId.CONV.value)   # accepted ids only
        m.d.comb += mems.engine_active.eq(active)
        # One flag per layer port (the pool's, the depthwise engine's, the add engine's), offered as it is: each
        # port's valid is a flip-flop (the pool's starts the enables of all its counters).
        pend_pool, pend_dw, pend_add, pend_read, pend_read_b, pend_read_w, pend_write, pend_start = (
            Signal(name=n) for n in ("pend_layer_pool", "pend_layer_dw", "pend_layer_add", "pend_read",
                                     "pend_read_b", "pend_read_w", "pend_write", "pend_start"))

        # Each check is a list of terms, all of which must hold (see `checked` below).
        def window_ok(w, kmax):
            return [(w.kernel != 0), (w.kernel <= kmax), (w.height != 0), (w.width != 0), (w.width <= cfg.max_width),
                    (w.stride != 0), (w.groups != 0), (w.pad_top < w.kernel), (w.pad_bottom < w.kernel),
                    (w.pad_left < w.kernel), (w.pad_right < w.kernel)]

        def pool_ok(p):
            # Only what this target's pool engine computes (the iCE40's: max over windows up to 2x2, no clamp).
            clamp_ok = (p.qmin <= p.qmax) if pool_has_clamp(cfg) else ((p.qmin == -128) & (p.qmax == 127))
            ok = ([p.mode.as_value() <= max(mode.value for mode in pool_modes(cfg))]
                  + window_ok(p.window, pool_max_kernel(cfg)) + [clamp_ok])
            if cfg.target == "ice40":
                # Its counters are as wide as these limits (a layer past them cannot fit the output memory).
                height, groups = ice40_pool_limits(cfg)
                ok += [p.window.height <= height, p.window.groups <= groups]
            return ok

        c = runs[EngineId.CONV]
        L = c.layer
        # The layer of a pool run, fused or not (mirrored to c.pool, see above).
        pool_in = c.pool if mirror_pool else Mux(current == EngineId.CONV, c.pool, runs[EngineId.POOL].layer)
        # Fusing a pool needs the pool engine.
        pool_good = pool_ok(c.pool) if pool is not None else None
        fuse_ok = [~c.fuse | term for term in pool_good] if pool is not None else [~c.fuse]
        # The engine computes with the bits its memories can use (conv_limits): a layer past them, or a base
        # outside its memory, would not run as described, so it is refused (check_conv_limits on the host).
        # A value within a limit has no bit set above conv_layer_bits: the command processor keeps those bits as
        # one flag (cp.run.flags[0]), and the checks compare the bits below.
        lim = conv_limits(cfg)
        kept = conv_layer_bits(cfg)
        T = {name: Value.cast(L[name])[:kept[name]] for name in _CONV_CHECKED}
        conv_ok = [~cp.run.flags[0],
                   (T["in_h"] != 0), (T["in_w"] != 0), (T["in_c"] != 0), (T["out_h"] != 0), (T["out_w"] != 0),
                   (T["out_c"] != 0), (T["in_h"] <= lim.in_h), (T["in_w"] <= lim.in_w), (T["in_c"] <= lim.in_c),
                   (T["out_h"] <= lim.out_h), (T["out_w"] <= lim.out_w), (T["out_c"] <= lim.out_c),
                   (T["kernel_h"] != 0), (T["kernel_h"] <= lim.kernel),
                   (T["kernel_w"] != 0), (T["kernel_w"] <= lim.kernel), (T["pad_top"] < T["kernel_h"]),
                   (T["pad_left"] < T["kernel_w"]), (T["act_channel_stride"] != 0),
                   (T["act_channel_stride"] <= lim.act_depth), (T["act_base"] < lim.act_depth),
                   (T["weight_base"] < lim.weight_depth), (T["param_base"] < lim.param_depth), (L.qmin <= L.qmax),
                   (c.out_count != 0)] + fuse_ok
        d = runs[EngineId.DEPTHWISE]
        dw_ok = window_ok(d.layer.window, DW_KERNEL) + [(d.in_count != 0), (d.out_count != 0), (d.w_count != 0),
                                                        (d.layer.qmin <= d.layer.qmax)]
        p = runs[EngineId.POOL]
        p_ok = (pool_good if mirror_pool else pool_ok(p.layer)) + [(p.in_count != 0), (p.out_count != 0)]
        a = runs[EngineId.ADD]
        add_ok = [(a.in_count != 0), (a.out_count != 0), (a.layer.count != 0), (a.layer.qmin <= a.layer.qmax)]

        # An engine this instance was built without is an unknown engine: BAD_DESCRIPTOR. The checks are
        # registered twice (each engine's, then the verdict for the engine named): the command processor holds
        # the complete descriptor still for SETTLE cycles before it starts the run, and the check cones are too
        # deep to sit between the descriptor registers and the command processor's state in one cycle.
        accept = Signal()
        verdict = Signal()
        with m.Switch(engine_id):
            for eid, ok, there in ((EngineId.CONV, conv_ok, True), (EngineId.DEPTHWISE, dw_ok, dw is not None),
                                   (EngineId.POOL, p_ok, pool is not None), (EngineId.ADD, add_ok, add is not None)):
                if there:
                    # Stage 1: the terms in groups of four, each group's AND registered; stage 2: the verdict.
                    # On the ECP5 every term is registered first, a stage (and a SETTLE cycle) more: a term's
                    # compare chains, its group's AND and the route to the group's register across the die were
                    # nextpnr's critical path (docs/decisions.md, session 15).
                    if cfg.target == "ecp5":
                        held = [Signal(name=f"{eid.name.lower()}_term_{k}") for k in range(len(ok))]
                        m.d.sync += [h.eq(term) for h, term in zip(held, ok)]
                        ok = held
                    groups = []
                    for i in range(0, len(ok), 4):
                        group = Signal(name=f"{eid.name.lower()}_ok_{i // 4}")
                        m.d.sync += group.eq(Cat(*ok[i:i + 4]).all())
                        groups.append(group)
                    with m.Case(eid):
                        m.d.comb += verdict.eq(Cat(*groups).all())
        m.d.sync += accept.eq(verdict)

        # Watchdog: cycles since the last memory row moved.
        idle = Signal(range(WATCHDOG_CYCLES + 1))
        progress = writer.port.en | conv.o_data.valid | pend_start
        for r in (reader_a, reader_b, reader_w):
            if r is not None:
                progress = progress | r.port.en
        abort = Signal()
        # WATCHDOG_CYCLES is a power of two and `idle` is cleared when the run ends (abort ends it), so its top bit
        # alone says idle == WATCHDOG_CYCLES.
        assert WATCHDOG_CYCLES & (WATCHDOG_CYCLES - 1) == 0
        m.d.comb += abort.eq(active & idle[-1])
        with m.If(~active | progress):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(idle + 1)

        # What the run owns (host words of each memory); the command processor refuses host transfers into it
        # while the run is in flight. The end of each range is registered at the start (it takes an adder); its
        # start is the base, a field of the descriptor, which holds still during the run, selected by the engine
        # running. A memory the run does not own has an empty range (end 0).
        lock = cp.run.lock
        lock_hi = {memory: Signal(len(lock[memory.value].hi), name=f"lock_hi_{memory.name.lower()}")
                   for memory in specs}
        for memory in specs:
            m.d.comb += lock[memory.value].hi.eq(lock_hi[memory])

        def row_bits(memory, base):
            # Only the bits of a row address: the checks refuse a base past its memory.
            return base[:Shape.cast(range(specs[memory].depth)).width]

        def own(memory, base, count):
            if memory not in specs:
                return []
            per_row = specs[memory].width // 32
            # The end fits the command processor's lock bounds (up to twice the largest memory).
            assert (specs[memory].depth - 1 + (1 << len(count)) - 1) * per_row < 1 << len(lock_hi[memory]), memory
            return [lock_hi[memory].eq((row_bits(memory, base) + count) * per_row)]

        # The base of each memory by the engines that own it: with one engine, a plain wire; else selected by
        # the engine running. While no engine owns a memory its end is 0, so its start does not matter.
        vector_runs = [(eid, r) for eid, r, there in ((EngineId.DEPTHWISE, d, dw), (EngineId.POOL, p, pool),
                                                       (EngineId.ADD, a, add)) if there is not None]
        owners = {MemoryId.CONV_ACT: [(EngineId.CONV, L.act_base)], MemoryId.WEIGHTS: [(EngineId.CONV, L.weight_base)],
                  MemoryId.PARAMS: [(EngineId.CONV, L.param_base)], MemoryId.OUTPUT: [(EngineId.CONV, c.out_base)],
                  MemoryId.ACT_A: [], MemoryId.ACT_B: [], MemoryId.DW_WEIGHTS: []}
        for eid, r in vector_runs:
            owners[MemoryId.ACT_A].append((eid, r.in_base))
            owners[MemoryId.OUTPUT].append((eid, r.out_base))
            if eid == EngineId.DEPTHWISE:
                owners[MemoryId.DW_WEIGHTS].append((eid, d.w_base))
            if eid == EngineId.ADD:
                owners[MemoryId.ACT_B].append((eid, a.in_base))
        # The start is registered too, every cycle (a cycle behind ``current``): the command processor compares
        # it with a transfer's range in SELECT, several cycles after the START that sets ``current`` (the answer,
        # then a header, DECODE and ADDRESS come first).
        for memory, bases in owners.items():
            if memory not in specs or not bases:
                continue
            lo = Signal.like(lock[memory.value].lo, name=f"lock_lo_{memory.name.lower()}")
            m.d.comb += lock[memory.value].lo.eq(lo)
            per_row = specs[memory].width // 32
            m.d.sync += lo.eq(row_bits(memory, bases[0][1]) * per_row)
            if len(bases) > 1:
                with m.Switch(current):
                    for eid, base in bases[1:]:
                        with m.Case(eid):
                            m.d.sync += lo.eq(row_bits(memory, base) * per_row)

        with m.If(cp.run.start):
            with m.If(accept):
                m.d.sync += [active.eq(1), current.eq(engine_id), pend_write.eq(1)]
                m.d.sync += [lock_hi[memory].eq(0) for memory in specs]
                with m.Switch(engine_id):
                    with m.Case(EngineId.CONV):
                        m.d.sync += [pend_start.eq(1), pend_pool.eq(c.fuse)]
                        m.d.sync += (own(MemoryId.CONV_ACT, L.act_base, c.act_count)
                                     + own(MemoryId.WEIGHTS, L.weight_base, c.weight_count)
                                     + own(MemoryId.PARAMS, L.param_base, c.param_count)
                                     + own(MemoryId.OUTPUT, c.out_base, c.out_count))
                    with m.Case(EngineId.DEPTHWISE):
                        m.d.sync += [pend_dw.eq(1), pend_read.eq(1), pend_read_w.eq(1)]
                        m.d.sync += (own(MemoryId.ACT_A, d.in_base, d.in_count)
                                     + own(MemoryId.DW_WEIGHTS, d.w_base, d.w_count)
                                     + own(MemoryId.OUTPUT, d.out_base, d.out_count))
                    with m.Case(EngineId.POOL):
                        m.d.sync += [pend_pool.eq(1), pend_read.eq(1)]
                        m.d.sync += own(MemoryId.ACT_A, p.in_base, p.in_count) + own(MemoryId.OUTPUT, p.out_base,
                                                                                      p.out_count)
                    with m.Case(EngineId.ADD):
                        m.d.sync += [pend_add.eq(1), pend_read.eq(1), pend_read_b.eq(1)]
                        m.d.sync += (own(MemoryId.ACT_A, a.in_base, a.in_count)
                                     + own(MemoryId.ACT_B, a.in_base, a.in_count)
                                     + own(MemoryId.OUTPUT, a.out_base, a.out_count))
            with m.Else():
                m.d.comb += [cp.run.done.eq(1), cp.run.error.eq(1)]

        finished = active & writer.done
        # The end of a run is registered (DONE_DELAY): the writer's last row comes at the end of every engine's
        # output path, and what it ends (the command processor's answer, the flush that reaches every register of
        # every engine, the dispatcher's flags) is too much for the rest of that cycle. The run's cycles are
        # counted to its last row all the same; nothing can start in the extra cycle, a START takes a command.
        ended, ended_error = Signal(), Signal()
        m.d.sync += [ended.eq(finished | abort), ended_error.eq(abort & ~finished)]
        m.d.sync += [copy.eq(finished | abort) for copy in flush_copies]
        m.d.comb += flush.eq(ended)
        with m.If(ended):
            m.d.comb += [cp.run.done.eq(1), cp.run.error.eq(ended_error)]
            m.d.sync += [active.eq(0), pend_pool.eq(0), pend_dw.eq(0), pend_add.eq(0), pend_read.eq(0),
                         pend_read_b.eq(0), pend_read_w.eq(0), pend_write.eq(0), pend_start.eq(0)]

        # Conv start: one pulse; the layer is sampled with it.
        m.d.comb += conv.layer.eq(c.layer)
        with m.If(active & pend_start):
            m.d.comb += conv.start.eq(1)
            m.d.sync += pend_start.eq(0)

        # Descriptors and transfers: each offered once per run until taken. A pending flag is set only as a run
        # is accepted and cleared when it ends, so it implies ``active``: the port's valid is the flag itself.
        def offer(pending, port, payload_stmts):
            m.d.comb += payload_stmts
            m.d.comb += port.valid.eq(pending)
            with m.If(pending & port.ready):
                m.d.sync += pending.eq(0)

        if dw is not None:
            m.d.comb += dw.i_layer.payload.eq(d.layer)
        if add is not None:
            m.d.comb += add.i_layer.payload.eq(a.layer)
        if pool is not None:
            m.d.comb += pool.i_layer.payload.eq(pool_in)
        if pool is not None:
            offer(pend_pool, pool.i_layer, [])
        if dw is not None:
            offer(pend_dw, dw.i_layer, [])
        if add is not None:
            offer(pend_add, add.i_layer, [])

        in_base, in_count, out_base, out_count = (Signal(range(cfg.vector_depth + 1), name=n)
                                                  for n in ("in_base", "in_count", "out_base", "out_count"))
        # Each transfer is offered only for the engines it serves: the first such engine's fields are the
        # default (no gating), the others' selected by the engine running.
        m.d.comb += [out_base.eq(c.out_base), out_count.eq(c.out_count)]
        if vector_runs:
            m.d.comb += [in_base.eq(vector_runs[0][1].in_base), in_count.eq(vector_runs[0][1].in_count)]
        with m.Switch(current):
            for eid, r in vector_runs:
                with m.Case(eid):
                    m.d.comb += [in_base.eq(r.in_base), in_count.eq(r.in_count), out_base.eq(r.out_base),
                                 out_count.eq(r.out_count)]
        if reader_a is not None:
            offer(pend_read, reader_a.i_transfer,
                  [reader_a.i_transfer.payload.base.eq(in_base), reader_a.i_transfer.payload.count.eq(in_count)])
        if reader_b is not None:
            offer(pend_read_b, reader_b.i_transfer,
                  [reader_b.i_transfer.payload.base.eq(in_base), reader_b.i_transfer.payload.count.eq(in_count)])
        if reader_w is not None:
            offer(pend_read_w, reader_w.i_transfer,
                  [reader_w.i_transfer.payload.base.eq(d.w_base), reader_w.i_transfer.payload.count.eq(d.w_count)])
        offer(pend_write, writer.i_transfer,
              [writer.i_transfer.payload.base.eq(out_base), writer.i_transfer.payload.count.eq(out_count)])

        # The conv engine's output, through a register slice on the iCE40 and the ECP5 (conv_output_stages): its
        # ready reaches back through the requantizer into the array's enables, too far to also come through the
        # pool engine or the writer in the same cycle. On the iCE40 a beat takes two cycles through it; its serial
        # requantizer gives one every requant_interval cycles at most, so only the last beat's cycle is added.
        # (Its data reset-less on the ECP5, as the engines' data registers are: it means something only with the
        # valid flags.)
        conv_data, conv_valid, conv_ready = (Signal.like(conv.o_data.payload.data, reset_less=cfg.target == "ecp5"),
                                             Signal(), Signal())
        if conv_output_stages(cfg) and cfg.target == "ecp5":
            # On the ECP5 a full-rate slice with a second register (a skid): the engine's ready is that
            # register's emptiness, so the pool engine's ready (its global average's plane end, its window
            # generator's) reaches only the slice, not the requantizer's FIFO and the engine's counters behind it.
            skid_data, skid_valid = Signal.like(conv_data, name="conv_skid_data"), Signal(name="conv_skid_valid")
            m.d.comb += conv.o_data.ready.eq(~skid_valid)
            with m.If(~conv_valid | conv_ready):
                m.d.sync += [conv_valid.eq(skid_valid | conv.o_data.valid),
                             conv_data.eq(Mux(skid_valid, skid_data, conv.o_data.payload.data)), skid_valid.eq(0)]
            with m.Elif(conv.o_data.valid & ~skid_valid):
                m.d.sync += [skid_valid.eq(1), skid_data.eq(conv.o_data.payload.data)]
        elif conv_output_stages(cfg):
            m.d.comb += conv.o_data.ready.eq(~conv_valid)
            with m.If(conv.o_data.valid & ~conv_valid):
                m.d.sync += [conv_valid.eq(1), conv_data.eq(conv.o_data.payload.data)]
            with m.Elif(conv_ready):
                m.d.sync += conv_valid.eq(0)
        else:
            m.d.comb += [conv_data.eq(conv.o_data.payload.data), conv_valid.eq(conv.o_data.valid),
                         conv.o_data.ready.eq(conv_ready)]

        # --- stream routing --------------------------------------------------------------------------------------
        def route(source, sink):
            """``source`` stream into ``sink`` stream (payload, valid, ready)."""
            m.d.comb += [sink.payload.eq(source.payload), sink.valid.eq(source.valid), source.ready.eq(sink.ready)]

        if dw is not None:
            dw_bits = data.Layout.cast(depthwise_weights_layout(cfg, DW_KERNEL)).size
            m.d.comb += [dw.i_weights.payload.eq(reader_w.o_rows.payload[:dw_bits]),
                         dw.i_weights.valid.eq(reader_w.o_rows.valid), reader_w.o_rows.ready.eq(dw.i_weights.ready)]
        if add is not None:
            route(reader_b.o_rows, add.i_b)
        # Who feeds whom, as one registered flag per route, set when the run starts: every valid, ready and
        # payload below is then one AND-OR after its source (the engines' handshakes are on the critical path).
        routes = {name: Signal(name=f"route_{name}") for name in ("conv_writer", "conv_pool", "pool_writer",
                                                                  "dw", "pool", "add")}
        route_of = {"conv_writer": (engine_id == EngineId.CONV) & ~c.fuse,
                    "conv_pool": (engine_id == EngineId.CONV) & c.fuse,
                    "pool_writer": ((engine_id == EngineId.CONV) & c.fuse) | (engine_id == EngineId.POOL),
                    "dw": engine_id == EngineId.DEPTHWISE, "pool": engine_id == EngineId.POOL,
                    "add": engine_id == EngineId.ADD}
        if cfg.target == "ecp5":
            # Decoded from the descriptor on every cycle (it holds still for SETTLE cycles before the start), so
            # that the start loads registers: the decode sat between the descriptor and the route flags.
            decoded = {name: Signal(name=f"route_next_{name}") for name in routes}
            m.d.sync += [decoded[name].eq(value) for name, value in route_of.items()]
            route_of = decoded
        with m.If(cp.run.start & accept):
            m.d.sync += [routes[name].eq(route_of[name]) for name in routes]
        with m.Elif(ended):
            m.d.sync += [route.eq(0) for route in routes.values()]

        def join(sink_payload, sink_valid, sources):
            """``sources``: (route flag, payload, valid), at most one flag set: the sink gets that source."""
            m.d.comb += [sink_valid.eq(or_all(flag & valid for flag, _, valid in sources)),
                         sink_payload.eq(or_all(Mux(flag, payload, 0) for flag, payload, _ in sources))]

        to_writer = [(routes["conv_writer"], conv_data, conv_valid)]
        ready_of_conv = [routes["conv_writer"]]              # the writer is always ready
        ready_of_reader = []
        if pool is not None:
            to_writer.append((routes["pool_writer"], pool.o_pixels.payload, pool.o_pixels.valid))
            # The writer is always ready, and the pool has a layer only in a run that routes its output to the
            # writer: its output is always taken, and its stall logic folds away.
            m.d.comb += pool.o_pixels.ready.eq(1)
            sources = [(routes["conv_pool"], conv_data, conv_valid)]
            ready_of_conv.append(routes["conv_pool"] & pool.i_pixels.ready)
            if reader_a is not None:
                sources.append((routes["pool"], reader_a.o_rows.payload, reader_a.o_rows.valid))
                ready_of_reader.append(routes["pool"] & pool.i_pixels.ready)
            join(pool.i_pixels.payload, pool.i_pixels.valid, sources)
        for key, eng, inp in (("dw", dw, "i_pixels"), ("add", add, "i_a")):
            if eng is not None:
                port = getattr(eng, inp)
                m.d.comb += [port.payload.eq(reader_a.o_rows.payload), port.valid.eq(routes[key] & reader_a.o_rows.valid)]
                ready_of_reader.append(routes[key] & port.ready)
                to_writer.append((routes[key], eng.o_pixels.payload, eng.o_pixels.valid))
                m.d.comb += eng.o_pixels.ready.eq(1)          # as the pool's
        join(writer.i_rows.payload, writer.i_rows.valid, to_writer)
        m.d.comb += conv_ready.eq(or_all(ready_of_conv))
        if reader_a is not None:
            m.d.comb += reader_a.o_rows.ready.eq(or_all(ready_of_reader))
        return m
