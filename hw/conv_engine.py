"""Convolution engine: a whole conv layer from on-chip memories through the systolic array and the requantizer.

Standard KxK convolution, pointwise 1x1, and fully connected (1x1 on a 1x1 map) with a runtime layer shape
(:class:`ConvLayer`): H, W, Cin, Cout, KH, KW, stride 1 or 2, padding with the input zero point. Windows are
built on the fly from the input feature map; no im2col copy exists anywhere.

Dataflow (output stationary, see :mod:`.systolic_array`): a tile is ``rows`` output channels x ``cols`` output
pixels; its reduction runs over ``(ky, kx, ci)`` in TFLite's weight order, one beat per cycle. Tiles go output
channel block by output channel block (outer), pixel tile by pixel tile (inner). The ``cols`` pixels of a tile
are consecutive in raster order, spanning rows, when the layer has stride 1 and as many output columns as input
columns (then the input pixel of column ``c`` is ``f0 + c`` for every tap); otherwise they are consecutive
within one output row (input pixels ``f0 + c * stride``). Either way the ``cols`` input pixels of a beat lie in
``NB = 2 * cols`` (rounded up to a power of two) consecutive flat pixel indices, so a map stored in ``NB`` banks
by ``flat pixel mod NB`` serves every column in the same cycle with no conflict.

Zero points: the PEs multiply raw int8 activations (padding taps read the input zero point), and the input zero
point's contribution ``zp_in * sum(w)`` is folded into the bias by the host (:func:`fold_bias`); modulo 2**32
this equals TFLite's ``sum(w * (x - zp_in)) + bias`` exactly, and keeps the PEs int8 x int8.

Memories (filled through the ``*_write`` ports, see :func:`memory_images` for their layouts):

``act``
    ``NB`` banks of ``act_depth`` bytes. Bank ``j``, word ``act_base + ci * act_channel_stride + f // NB`` holds
    channel ``ci`` of flat input pixel ``f = iy * W + ix`` with ``f % NB == j``. One write fills one word of
    every bank.
``weights``
    ``weight_depth`` words of ``rows`` int8: word ``weight_base + t * KH*KW*Cin + k`` holds ``w[t * rows + r, k]``
    in lane ``r``.
``params``
    ``param_depth`` words of ``rows`` :func:`~.requantizer.lane_params_layout` (folded bias, multiplier, shift):
    word ``param_base + t`` holds output channels ``t * rows ... t * rows + rows - 1``. On target ``"ice40"`` the
    memory holds one lane a row (``param_depth * rows`` rows of 70 bits: 5 EBRs for LeNet-5's 120 channels
    instead of 18), lane ``r`` of word ``t`` at row ``t * rows + r``, because its one serial requantizer lane
    reads them one at a time; ``param_write`` then writes one lane (:func:`param_write_signature`).

The three bases let a host keep two layers (or two tiles) in each memory and load one while the engine runs the
other; they only move the walkers' start addresses, so the schedule and the cycle count do not depend on them.

Results leave on ``o_data``: one beat per valid output pixel and channel block, ``rows`` int8 lanes for channels
``channel ... channel + rows - 1`` of flat output pixel ``pixel`` (``oy * OW + ox``); lanes past Cout are
padding. Beats come channel block by channel block, pixels in raster order within a block.
"""

from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .command_processor import or_all
from .memory_map import COPY_ATTR, registered_read
from .requantizer import (REQUANT_LATENCY, Requantizer, lane_params_layout, requant_extra_stages,
                          requant_fifo_depth)
from .systolic_array import SystolicArray, min_tile_beats

__all__ = ["ConvLayer", "ConvEngine", "ConvLimits", "act_banks", "output_layout", "conv_limits", "walker_tile_beats",
           "engine_layer_layout", "conv_layer", "conv_read_stages", "conv_param_stages", "check_conv_limits",
           "fold_bias", "memory_images", "node_job", "scatter_outputs", "param_write_signature"]

DIM = 12          # bits of a layer dimension (H, W, Cin, Cout up to 4095)
PIXEL = 24        # bits of a flat pixel index
FLAT = 26         # signed bits of a flat input pixel index, padding offsets included
BASE = 20         # bits of a memory base address (depths go up to 2**20 words)
#: Memory attribute: a read and a write of one address in one cycle never happen (the engine reads only what
#: a run owns, and the host may not write it then), so synthesis need not emulate read-first behaviour.
NO_RW_CHECK = {"no_rw_check": 1}
#: Columns that share a copy of the tap bounds in the ECP5 engine's stage 1.
BOUND_GROUP = 4


class ConvLayer(data.Struct):
    """Layer descriptor of :class:`ConvEngine` (build its fields with :func:`conv_layer`).

    ``act_channel_stride`` is ``ceil(H * W / NB)``, the bank words per input channel; ``origin`` is
    ``-(pad_top * W + pad_left)``, the flat index of the top-left tap of the first window. Both are derived by
    the host so that the engine needs no multiplier.
    """
    in_h: unsigned(DIM)
    in_w: unsigned(DIM)
    in_c: unsigned(DIM)
    out_h: unsigned(DIM)
    out_w: unsigned(DIM)
    out_c: unsigned(DIM)
    kernel_h: unsigned(4)
    kernel_w: unsigned(4)
    stride2: unsigned(1)            # 0: stride 1, 1: stride 2
    pad_top: unsigned(4)
    pad_left: unsigned(4)
    in_zp: signed(8)
    out_zp: signed(8)
    qmin: signed(8)
    qmax: signed(8)
    single_rounding: unsigned(1)
    act_channel_stride: unsigned(16)
    origin: signed(FLAT)
    act_base: unsigned(BASE)        # first word of the input map in every bank
    weight_base: unsigned(BASE)     # first weight word
    param_base: unsigned(BASE)      # first parameter word


def act_banks(config):
    """Number of input feature map banks: ``2 * cols`` rounded up to a power of two (stride 2 spreads a tile's
    pixels over twice as many flat indices)."""
    banks = 1
    while banks < 2 * config.cols:
        banks *= 2
    return banks


@dataclass(frozen=True)
class ConvLimits:
    """The largest field values a :class:`ConvEngine` instance computes with (see :func:`conv_limits`)."""
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    kernel: int
    act_depth: int
    weight_depth: int
    param_depth: int


def conv_limits(config, *, act_depth=None, weight_depth=None, param_depth=None):
    """What an engine's memories can hold, field by field: the engine computes with just enough bits for these.

    A layer past them cannot have its data in the memories (its input map, weights or parameters would need
    more words than there are), so refusing it takes nothing away: ``H * W <= NB * act_depth`` bounds the
    height, ``Cin`` words per input channel and ``KH * KW * Cin`` weight words per block bound ``Cin``, one
    parameter word and at least one weight word per block of ``rows`` output channels bound ``Cout``; an output
    is at most ``kernel - 1`` wider or higher than its input. Depths default to the configuration's.
    """
    act_depth = config.conv_act_depth if act_depth is None else act_depth
    weight_depth = config.conv_weight_depth if weight_depth is None else weight_depth
    param_depth = config.conv_param_depth if param_depth is None else param_depth
    dim = (1 << DIM) - 1
    kernel = min(config.max_kernel, 15)
    pixels = act_banks(config) * act_depth
    in_h, in_w = min(dim, pixels), min(dim, config.max_width, pixels)
    return ConvLimits(in_h=in_h, in_w=in_w, in_c=min(dim, act_depth, weight_depth),
                      out_h=min(dim, in_h + kernel - 1), out_w=min(dim, in_w + kernel - 1),
                      out_c=min(dim, config.rows * min(param_depth, weight_depth)), kernel=kernel,
                      act_depth=act_depth, weight_depth=weight_depth, param_depth=param_depth)


def engine_layer_layout(config, *, act_depth=None, weight_depth=None, param_depth=None):
    """:class:`ConvLayer` as the engine keeps it: the same fields, each as wide as :func:`conv_limits` needs.

    Bases, ``act_channel_stride`` and ``origin`` keep the bits of the memory addresses (``origin`` the bits of
    a flat pixel index modulo the banks' size): the read ports see addresses modulo their range, so the rest
    never mattered.
    """
    lim = conv_limits(config, act_depth=act_depth, weight_depth=weight_depth, param_depth=param_depth)
    addr_bits = Shape.cast(range(lim.act_depth)).width
    lg_nb = act_banks(config).bit_length() - 1
    return data.StructLayout({
        "in_h": range(lim.in_h + 1), "in_w": range(lim.in_w + 1), "in_c": range(lim.in_c + 1),
        "out_h": range(lim.out_h + 1), "out_w": range(lim.out_w + 1), "out_c": range(lim.out_c + 1),
        "kernel_h": range(lim.kernel + 1), "kernel_w": range(lim.kernel + 1), "stride2": 1,
        "pad_top": range(lim.kernel), "pad_left": range(lim.kernel), "in_zp": signed(8), "out_zp": signed(8),
        "qmin": signed(8), "qmax": signed(8), "single_rounding": 1,
        "act_channel_stride": addr_bits, "origin": lg_nb + addr_bits, "act_base": addr_bits,
        "weight_base": range(lim.weight_depth), "param_base": range(lim.param_depth),
    })


def output_layout(config):
    """One output beat: ``rows`` int8 lanes, the flat output ``pixel`` and the first output ``channel``."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), config.rows),
        "pixel": PIXEL,
        "channel": DIM,
    })


def _write_signature(addr_depth, payload_shape):
    return stream.Signature(data.StructLayout({"addr": range(addr_depth), "data": payload_shape}))


def param_write_signature(config, param_depth=None):
    """The ``param_write`` port: a word of ``rows`` lane parameters at ``addr``; on target ``"ice40"`` one lane a
    write instead (lane ``r`` of word ``t`` at ``addr = t * rows + r``), the memory's own row."""
    param_depth = config.conv_param_depth if param_depth is None else param_depth
    if config.target == "ice40":
        return _write_signature(param_depth * config.rows, lane_params_layout())
    return _write_signature(param_depth, data.ArrayLayout(lane_params_layout(), config.rows))


def _registered_read(m, memory, addr, en, name):
    """A synchronous read of ``memory`` at ``addr`` (data the cycle after ``en``, held while ``en`` is low),
    written as an asynchronous port and a register (:func:`~.memory_map.registered_read`): yosys then merges the
    register into the block RAM's port and honours the memory's ``no_rw_check``, where a synchronous port would
    get read-first emulation (a register and a compare per port) that no run needs (see :data:`NO_RW_CHECK`)."""
    port = memory.read_port(domain="comb")
    m.d.comb += port.addr.eq(addr)
    return registered_read(m, port, en, name)


def _field_max(layer, name):
    """The largest value field ``name`` of the (narrowed) layer view can hold."""
    shape = layer.shape()[name].shape
    return shape.stop - 1 if isinstance(shape, range) else (1 << Shape.cast(shape).width) - 1


#: Targets whose tile cursors step with walkers (see _TileCursor).
_WALKER_TARGETS = ("ice40", "ecp5")


def conv_read_stages(config):
    """Register stages from a beat's issue to its operands at the array's input: the memories' read, and on the
    ECP5 four more: the banks' addresses registered before it (each bank's sum of the counters reaches one of
    32 block RAMs across the die), a register after it (the block RAMs' clock-to-output leaves too little of a
    125 MHz cycle for any logic; it becomes the blocks' own output register), a fabric copy of that (its bytes
    fan out to rotators across the die) and the first half of the rotator that hands the banks' bytes to the
    columns."""
    return 5 if config.target == "ecp5" else 1


def conv_param_stages(config):
    """Register stages from a column taken from the array to its beat at the requantizer's input: the
    parameters' read, and on the ECP5 a second register after it (the parameter block RAMs' clock-to-output
    leaves too little of a 125 MHz cycle for the route to the requantizer's lanes)."""
    return 2 if config.target == "ecp5" else 1


def walker_tile_beats(config):
    """Fewest cycles from one tile's last beat to the next one's that the tile cursors' walkers allow (and from
    the start of a run to its first tile's last beat): ``cols + 3`` on the ice40 (whose tiles are always further
    apart than that, its serial drain), ``cols + 4`` on the ecp5 (its walkers register the moved cursor's
    compares before they load), 0 on the generic target, whose cursors have no walker."""
    if config.target not in _WALKER_TARGETS:
        return 0
    return config.cols + (4 if config.target == "ecp5" else 3)


class _TileCursor:
    """Output coordinates of the ``cols`` pixels of the current tile, and how to step to the next tile.

    The input side (issuing beats) and the output side (naming results) each own one, stepped in the same
    order, so the results need no tag through the array (on target ``"ice40"`` only the input side has one and
    queues what the output side needs of each tile). Widths come from the (narrowed) ``layer`` fields.

    Column 0's output row is not kept: ``rows_left`` is ``OH`` minus it, and column ``c`` sits ``dy[c]`` rows
    below column 0 (0 within a row; up to ``c`` when tiles span rows) at column ``ox[c]``. Every per-column
    quantity is then a few bits wide, and the only full-height arithmetic is ``rows_left``, once per tile.

    The user drives ``restarting`` high in the cycles it applies :meth:`reset` (and low when it applies
    :meth:`advance`): the two share one chain of ``cols - 1`` column steps, seeded by the first tile's column 0
    or the next tile's.

    With ``walk`` (``"ice40"``: its 40.5 MHz allow about 7 LUT levels where the chain is 20; ``"ecp5"``: its 125
    MHz allow about one step) the chain is unrolled in time: after each move a walker steps one column a cycle
    into registers holding the next tile's columns, ready ``cols + 2`` cycles after the move (:attr:`ready`); the
    first tile's columns are a closed form of ``OW``, and ``last_tile``, ``rows_down`` and ``wrap_row`` are
    registered copies taken while the walker loads. The user must not advance before ``ready``; ``last_x`` is
    ``OW - 1`` (and ``span``), registered by the user (walk mode only). With ``wrap_register`` (the ECP5) the
    row wrap compares column 0's x with ``OW - cols``, a register, not ``x + cols`` with ``OW``; the moved
    cursor's compares are registered before the walker loads (one cycle more, see :func:`walker_tile_beats`);
    and the first tile comes from ``width_is`` (registered by the user: bit ``k`` is ``span & (OW == k)``, for
    ``k`` from 1 to ``cols - 1``), not from a chain of compares of ``OW``; and ``dys``/``oxs`` hold each column's
    ``dy << stride2`` and ``ox << stride2``, moved with ``dy`` and ``ox``.
    """

    def __init__(self, m, layer, span, cols, name, walk=False, last_x=None, wrap_register=False, width_is=None):
        width = len(layer.out_w)
        # On the ECP5 (``wrap_register``) the columns' coordinates, the walker's and the moved cursor's copies are
        # reset-less: the first tile's reset() loads every one of them before anything reads them, and the run's
        # flush reached about a thousand of these flip-flops across the die. (Elsewhere the netlist is kept.)
        rl = dict(reset_less=True) if wrap_register else {}
        # A column's x runs past the row end by at most cols - 1 (masked) when tiles stay within rows.
        self.ox = [Signal(range(_field_max(layer, "out_w") + cols), name=f"{name}_ox_{c}", **rl) for c in range(cols)]
        self.dy = [Const(0, 1)] + [Signal(range(c + 1), name=f"{name}_dy_{c}", **rl) for c in range(1, cols)]
        self.rows_left = Signal(len(layer.out_h), name=f"{name}_rows_left")
        pixel_bits = len(layer.out_h) + width
        self.pixel0 = Signal(pixel_bits, name=f"{name}_pixel0")
        self.row_pixel = Signal(pixel_bits, name=f"{name}_row_pixel")   # flat index of (column 0's row, 0)
        self._layer, self._cols, self._width_is = layer, cols, width_is
        self._shifted = wrap_register and walk
        if self._shifted:
            # ``dy << stride2`` and ``ox << stride2``, moved with dy and ox (see the walker's ``chain_s``).
            self.dys = [Const(0, 2)] + [Signal(range(2 * c + 1), name=f"{name}_dys_{c}", **rl) for c in range(1, cols)]
            self.oxs = [Signal(len(self.ox[0]) + 1, name=f"{name}_oxs_{c}", **rl) for c in range(cols)]

        def step(y, x):
            # Raster increment in span mode, along the row otherwise (columns past the row are masked).
            # Materialized as signals so that the chain of cols steps stays linear in size.
            wrap = span & ((x == last_x) if walk else (x + 1 == layer.out_w))
            ny, nx = Signal(range(cols + 1)), Signal(len(self.ox[0]))
            m.d.comb += [ny.eq(Mux(wrap, y + 1, y)), nx.eq(Mux(wrap, 0, x + 1))]
            return ny, nx

        # Rows column 0 moves down to the next tile, and the next tile's column 0 (its row is then row 0).
        if wrap_register:
            # The layer holds still from the setup cycle, and the first move comes many cycles later.
            # Each cursor's own (COPY_ATTR): the two are equal, and yosys had merged them.
            wrap_at = Signal(signed(max(len(layer.out_w), cols.bit_length()) + 1), name=f"{name}_wrap_at",
                             reset_less=True, attrs={COPY_ATTR: 1})
            m.d.sync += wrap_at.eq(layer.out_w - cols)
            wrap_row = self.ox[0] >= wrap_at
        else:
            wrap_row = self.ox[0] + cols >= layer.out_w
        after_last = step(self.dy[-1], self.ox[-1])
        self.rows_down = Signal(range(cols + 1), name=f"{name}_rows_down")
        first_x = Signal(len(self.ox[0]), name=f"{name}_next_ox")
        m.d.comb += [self.rows_down.eq(Mux(span, after_last[0], wrap_row)),
                     first_x.eq(Mux(span, after_last[1], Mux(wrap_row, 0, self.ox[0] + cols)))]
        self.wrap_row = Signal(name=f"{name}_wrap_row")
        m.d.comb += self.wrap_row.eq(~span & wrap_row)
        self.restarting = Signal(name=f"{name}_restarting")
        # Row offsets and moves are at most cols: one clamp of rows_left keeps every compare a few bits wide.
        def near(rows):
            return Mux(rows > cols, cols + 1, rows)
        rows_near = Signal(range(cols + 2), name=f"{name}_rows_near")
        self._near, self._rows_near = near, rows_near
        if not walk:
            m.d.comb += rows_near.eq(near(self.rows_left))
        self.last_tile = Signal(name=f"{name}_last_tile")
        self._walk, self._span = walk, span
        if not walk:
            seed_x = Signal(len(self.ox[0]), name=f"{name}_seed_x")
            m.d.comb += seed_x.eq(Mux(self.restarting, 0, first_x))
            self.chain = [(Const(0, 1), seed_x)]
            for _ in range(1, cols):
                self.chain.append(step(*self.chain[-1]))
            m.d.comb += self.last_tile.eq(self.rows_down >= rows_near)
        else:
            # The registered copies are taken in the cycle after a move (``moved``), from the moved cursor; the
            # next move comes at least cols + 2 cycles later (``ready``).
            rows_down_now, wrap_row_now = self.rows_down, self.wrap_row
            self.rows_down = Signal(range(cols + 1), name=f"{name}_rows_down_r")
            self.wrap_row = Signal(name=f"{name}_wrap_row_r")
            last_now = Signal(name=f"{name}_last_now")
            m.d.comb += last_now.eq(self.rows_down >= rows_near)
            self.moved = Signal(name=f"{name}_moved")
            m.d.sync += self.moved.eq(0)          # the user's reset() and advance() set it
            wy = Signal(range(cols + 1), name=f"{name}_walk_y", **rl)
            wx = Signal(len(self.ox[0]), name=f"{name}_walk_x", **rl)
            self.chain = [(Const(0, 1), Signal(len(self.ox[0]), name=f"{name}_next_ox_0", **rl))]
            self.chain += [(Signal(range(cols + 1), name=f"{name}_next_dy_{c}", **rl),
                            Signal(len(self.ox[0]), name=f"{name}_next_ox_{c}", **rl)) for c in range(1, cols)]
            if wrap_register:
                # The columns' taps are compared with ``dy << stride2`` and ``ox << stride2``: on the ECP5 the
                # cursor holds those too, walked beside the plain ones (``stride2`` then meets one register here,
                # not a shift and a compare in every column, across the die from the layer's register).
                self.chain_s = [(Const(0, 2), Signal(len(self.ox[0]) + 1, name=f"{name}_next_oxs_0", **rl))]
                self.chain_s += [(Signal(range(2 * cols + 1), name=f"{name}_next_dys_{c}", **rl),
                                  Signal(len(self.ox[0]) + 1, name=f"{name}_next_oxs_{c}", **rl))
                                 for c in range(1, cols)]
            count = Signal(range(cols + 1), name=f"{name}_walk_count")
            # ``ready`` is ``count == cols`` outside the cycle after a move, kept in a register (its compare fed
            # the enables of every input-side counter); the user's moves clear it (reset(), advance()).
            self.ready = Signal(name=f"{name}_ready")
            # rows_near is a register too, moved with rows_left: the next tile's value is computed while the
            # walker runs, from the registered rows_down (valid two cycles after a move, before ``ready``).
            # In two steps (a subtraction, then the clamp): the walker takes at least three more cycles.
            rows_next = Signal.like(self.rows_left, name=f"{name}_rows_left_next", **rl)
            near_next = Signal.like(rows_near, name=f"{name}_rows_near_next", **rl)
            m.d.sync += [rows_next.eq(self.rows_left - self.rows_down), near_next.eq(near(rows_next))]
            self._near_next = near_next
            # Two cycles to load the walker: the copies first, then the seed from them.
            moved2 = Signal(name=f"{name}_moved2")
            first_x_r = Signal(len(self.ox[0]), name=f"{name}_next_ox_r", **rl)
            m.d.sync += moved2.eq(self.moved)
            first_x_now = first_x
            copy, seed = self.moved, moved2
            if wrap_register:
                # On the ECP5 a cycle before them registers the moved cursor's compares (the last column's wrap,
                # the row wrap) and sums, on every cycle: the copies are then a multiplexer or two from
                # registers (the compare of the last column's x with OW - 1 and the multiplexers after it were
                # over 10 ns in nextpnr's estimate).
                # The last column's wrap is registered as two halves of the equality (their AND is taken where it
                # is used): the whole compare was four LUTs and two long routes into its register, a routed
                # failing path.
                end_wrap_lo = Signal(name=f"{name}_end_wrap_lo", reset_less=True)
                end_wrap_hi = Signal(name=f"{name}_end_wrap_hi", reset_less=True)
                end_wrap = end_wrap_lo & end_wrap_hi
                bits = max(len(self.ox[-1]), len(last_x))
                ox_end, x_last = Signal(bits, name=f"{name}_ox_end"), Signal(bits, name=f"{name}_x_last")
                m.d.comb += [ox_end.eq(self.ox[-1]), x_last.eq(last_x)]
                half = bits // 2
                end_y = Signal.like(self.dy[-1], name=f"{name}_end_y", **rl)
                end_x1 = Signal.like(first_x, name=f"{name}_end_x1", **rl)
                row_wraps = Signal(name=f"{name}_row_wraps", **rl)
                x_plus = Signal.like(first_x, name=f"{name}_x_plus", **rl)
                m.d.sync += [end_wrap_lo.eq(ox_end[:half] == x_last[:half]),
                             end_wrap_hi.eq(span & (ox_end[half:] == x_last[half:])), end_y.eq(self.dy[-1]),
                             end_x1.eq(self.ox[-1] + 1), row_wraps.eq(wrap_row), x_plus.eq(self.ox[0] + cols)]
                rows_down_now = Mux(span, Mux(end_wrap, end_y + 1, end_y), row_wraps)
                first_x_now = Mux(span, Mux(end_wrap, 0, end_x1), Mux(row_wraps, 0, x_plus))
                wrap_row_now = ~span & row_wraps
                moved3 = Signal(name=f"{name}_moved3")
                m.d.sync += moved3.eq(moved2)
                copy, seed = moved2, moved3
            loading = [(self.moved, [count.eq(0), self.ready.eq(0)])] if wrap_register else []
            loading += [(copy, [count.eq(0), first_x_r.eq(first_x_now), self.rows_down.eq(rows_down_now),
                                self.wrap_row.eq(wrap_row_now), self.ready.eq(0)]),
                        (seed, [wx.eq(Mux(last_now, 0, first_x_r)), wy.eq(0), self.last_tile.eq(last_now),
                                self.ready.eq(0)])]
            for i, (when, stmts) in enumerate(loading):
                with (m.Elif(when) if i else m.If(when)):
                    m.d.sync += stmts
            with m.Elif(count != cols):
                # Shift the walker in at the last column: after cols steps column c holds the walker's c-th.
                ny, nx = step(wy, wx)
                m.d.sync += [wy.eq(ny), wx.eq(nx), count.eq(count + 1), self.ready.eq(count == cols - 1)]
                chains = [(self.chain, wy, wx)]
                if wrap_register:
                    chains.append((self.chain_s, wy << layer.stride2, wx << layer.stride2))
                for chain, y_in, x_in in chains:
                    m.d.sync += [chain[-1][1].eq(x_in), chain[0][1].eq(chain[1][1] if cols > 1 else x_in)]
                    if cols > 1:
                        m.d.sync += chain[-1][0].eq(y_in)
                    for c in range(1, cols - 1):
                        m.d.sync += [chain[c][0].eq(chain[c + 1][0]), chain[c][1].eq(chain[c + 1][1])]
            with m.Else():
                m.d.sync += self.ready.eq(1)
            if wrap_register:
                # ``ready``'s next value unless the user moves the cursor in this cycle (its moves clear
                # ``ready``): the walker's branches above make it a function of ``count`` and the loading flags.
                self.ready_next = Signal(name=f"{name}_ready_next")
                m.d.comb += self.ready_next.eq(~Cat(when for when, _ in loading).any() & (count >= cols - 1))
        self.pixel_valid = [Signal(name=f"{name}_pixel_valid_{c}") for c in range(cols)]
        m.d.comb += [v.eq((dy < rows_near) & (x < layer.out_w))
                     for v, dy, x in zip(self.pixel_valid, self.dy, self.ox)]

    def _place(self, chain, shifted=None):
        stmts = []
        for c, (y, x) in enumerate(chain):
            if c:
                stmts.append(self.dy[c].eq(y))
            stmts.append(self.ox[c].eq(x))
        if self._shifted:
            if shifted is None:
                stride2 = self._layer.stride2
                shifted = [(y << stride2, x << stride2) for y, x in chain]
            for c, (y, x) in enumerate(shifted):
                if c:
                    stmts.append(self.dys[c].eq(y))
                stmts.append(self.oxs[c].eq(x))
        return stmts

    def _first_tile(self):
        # Column c of the first tile: (c // OW, c % OW) when tiles span rows and OW <= c, else (0, c).
        chain = []
        for c in range(self._cols):
            if self._width_is is not None:
                # At most one flag is set: an OR of the constants it selects, two LUT levels from registers.
                hits = [self._width_is[k] for k in range(1, c + 1)]
                y = or_all([Mux(hit, c // k, 0) for k, hit in enumerate(hits, 1)])
                x = or_all([Mux(hit, c % k, 0) for k, hit in enumerate(hits, 1)] + [Mux(Cat(*hits).any(), 0, c)])
                chain.append((y, x))
                continue
            y, x = Const(0, 1), Const(c, self.ox[0].shape())
            for k in range(1, c + 1):
                hit = self._span & (self._layer.out_w == k)
                y, x = Mux(hit, c // k, y), Mux(hit, c % k, x)
            chain.append((y, x))
        return chain

    def reset(self):
        """Statements (for an ``m.d.sync``) that move to the first tile."""
        stmts = [self.rows_left.eq(self._layer.out_h), self.pixel0.eq(0), self.row_pixel.eq(0)]
        if self._walk:
            return self._place(self._first_tile()) + stmts + [
                self.moved.eq(1), self.ready.eq(0), self._rows_near.eq(self._near(self._layer.out_h))]
        return self._place(self.chain) + stmts

    def advance(self):
        """Statements that move to the next tile."""
        next_row = self.row_pixel + self._layer.out_w
        walked = [self.moved.eq(1), self.ready.eq(0), self._rows_near.eq(self._near_next)] if self._walk else []
        return self._place(self.chain, getattr(self, "chain_s", None)) + walked + [
            self.rows_left.eq(self.rows_left - self.rows_down),
            self.pixel0.eq(Mux(self.wrap_row, next_row, self.pixel0 + self._cols)),
            self.row_pixel.eq(Mux(self.wrap_row, next_row, self.row_pixel))]


class ConvEngine(wiring.Component):
    """A conv layer on the systolic array: on-chip input map, weights and requantization parameters in, int8 out.

    Parameters
    ----------
    config : AcceleratorConfig
        ``rows`` output channels x ``cols`` output pixels per tile.
    act_depth : int, optional
        Words per input bank (the map holds ``act_banks(config) * act_depth`` bytes); ``config.conv_act_depth``
        by default.
    weight_depth : int, optional
        Weight words (``rows`` bytes each); ``config.conv_weight_depth`` by default.
    param_depth : int, optional
        Requantization parameter words (one per block of ``rows`` output channels); ``config.conv_param_depth``
        by default.
    hold_layer : bool, optional
        The source of ``layer`` holds it from ``start`` until the run ends (the accelerator's descriptor
        registers do), so the engine reads it in place instead of latching a copy. ``False`` by default.

    Members
    -------
    layer : In(ConvLayer)
        Sampled when ``start`` is high and the engine is idle (read throughout the run with ``hold_layer``).
        The engine computes with :func:`engine_layer_layout`'s bits: a layer past :func:`conv_limits` must not
        be started (the accelerator's dispatcher refuses it).
    start : In(1)
    busy : Out(1)
        High from the cycle after ``start`` until the last result has left ``o_data``.
    act_write, weight_write, param_write : In(stream.Signature(...))
        Memory write ports (``addr``, ``data``), always ready; write only while the engine is idle.
    o_data : Out(stream.Signature(output_layout(config)))
    """

    def __init__(self, config, *, act_depth=None, weight_depth=None, param_depth=None, hold_layer=False):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        act_depth = config.conv_act_depth if act_depth is None else act_depth
        weight_depth = config.conv_weight_depth if weight_depth is None else weight_depth
        param_depth = config.conv_param_depth if param_depth is None else param_depth
        for name, value in (("act_depth", act_depth), ("weight_depth", weight_depth), ("param_depth", param_depth)):
            if not isinstance(value, int) or not 1 <= value <= 1 << 20:
                raise ValueError(f"{name} must be an integer from 1 to {1 << 20}, not {value!r}")
        if config.target in _WALKER_TARGETS and config.cols < 3:
            raise ValueError(f"target {config.target!r} needs cols >= 3 (the tile cursor's walker), not {config.cols}")
        self._config = config
        self._hold_layer = bool(hold_layer)
        self.act_depth, self.weight_depth, self.param_depth = act_depth, weight_depth, param_depth
        self.banks = act_banks(config)
        super().__init__({
            "layer": In(ConvLayer),
            "start": In(1),
            "busy": Out(1),
            "act_write": In(_write_signature(act_depth, data.ArrayLayout(8, self.banks))),
            "weight_write": In(_write_signature(weight_depth, data.ArrayLayout(signed(8), config.rows))),
            "param_write": In(param_write_signature(config, param_depth)),
            "o_data": Out(stream.Signature(output_layout(config))),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        rows, cols, nb = cfg.rows, cfg.cols, self.banks
        lg_nb = nb.bit_length() - 1

        m.submodules.array = array = SystolicArray(cfg)

        # Writes always complete in their cycle.
        m.d.comb += [self.act_write.ready.eq(1), self.weight_write.ready.eq(1), self.param_write.ready.eq(1)]

        # --- memories -----------------------------------------------------------------------------------------
        act_mems = []
        for j in range(nb):
            mem = m.submodules[f"act_bank_{j}"] = Memory(shape=8, depth=self.act_depth, init=[], attrs=NO_RW_CHECK)
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(self.act_write.payload.addr), wp.data.eq(self.act_write.payload.data[j]),
                         wp.en.eq(self.act_write.valid)]
            act_mems.append(mem)
        m.submodules.weights = weights = Memory(shape=data.ArrayLayout(signed(8), rows), depth=self.weight_depth,
                                                init=[], attrs=NO_RW_CHECK)
        wp = weights.write_port()
        m.d.comb += [wp.addr.eq(self.weight_write.payload.addr), wp.data.eq(self.weight_write.payload.data),
                     wp.en.eq(self.weight_write.valid)]
        # On ice40 one lane a row (one serial requantizer lane reads them in turn): 70 bits fill 5 EBRs, where
        # rows of 4 lanes would take 18.
        serial = cfg.target == "ice40"
        param_layout = lane_params_layout() if serial else data.ArrayLayout(lane_params_layout(), rows)
        if cfg.target == "ecp5":
            # On the ECP5 the word is pieces at most 18 bits wide, each a block RAM in its 18-bit mode: the
            # register the requantizer's stage takes the parameters into (``q_params``) then becomes the blocks'
            # output registers (boards/outreg.py), and the data leaves a block 0.96 ns after the clock instead of
            # 5.83. One memory of the whole word was mapped 36 bits wide, a mode whose output pins are both
            # ports', which has no output register to take.
            word = Shape.cast(param_layout).width
            count = -(-word // 18)
            bounds = [word * k // count for k in range(count + 1)]
            param_pieces = []
            for k, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
                m.submodules[f"params_{k}"] = piece = Memory(shape=hi - lo, depth=self.param_depth, init=[],
                                                             attrs=NO_RW_CHECK)
                wp = piece.write_port()
                m.d.comb += [wp.addr.eq(self.param_write.payload.addr),
                             wp.data.eq(Value.cast(self.param_write.payload.data)[lo:hi]),
                             wp.en.eq(self.param_write.valid)]
                param_pieces.append(piece)

            def read_params(addr, en):
                param_data = Signal(param_layout, name="param_data")
                m.d.comb += param_data.eq(Cat(_registered_read(m, piece, addr, en, f"param_read_{k}")
                                              for k, piece in enumerate(param_pieces)))
                return param_data
        else:
            m.submodules.params = params = Memory(
                shape=param_layout, depth=self.param_depth * rows if serial else self.param_depth, init=[],
                attrs=NO_RW_CHECK)
            wp = params.write_port()
            m.d.comb += [wp.addr.eq(self.param_write.payload.addr), wp.data.eq(self.param_write.payload.data),
                         wp.en.eq(self.param_write.valid)]

            def read_params(addr, en):
                return _registered_read(m, params, addr, en, "param_read")

        # --- layer ------------------------------------------------------------------------------------------------
        # The engine keeps only the bits of each field its memories can use (conv_limits); the dispatcher refuses
        # a descriptor past those limits. Addresses and flat pixel indices are computed modulo the memories'
        # address ranges, which is all a read port sees, so they match the full-width arithmetic exactly.
        # (Reset-less on the ECP5, as its data registers are: it is sampled at every start before anything reads it.)
        layer = Signal(engine_layer_layout(cfg, act_depth=self.act_depth, weight_depth=self.weight_depth,
                                           param_depth=self.param_depth), reset_less=cfg.target == "ecp5")
        narrowed = [layer[name].eq(self.layer[name]) for name, _ in layer.shape()]
        # On the ECP5 the output cursor has its own copies of ``span`` and ``last_x`` (below): every copy is marked,
        # and reset-less (they load in every idle cycle, before any start).
        marked = {"attrs": {COPY_ATTR: 1}, "reset_less": True} if cfg.target == "ecp5" else {}
        span = Signal(**marked)
        setup, in_run, out_run = Signal(name="setup"), Signal(name="in_run"), Signal(name="out_run")
        s1_valid, p_valid = Signal(name="s1_valid"), Signal(name="p_valid")
        # On the ECP5 a second stage registers what the block RAMs read (their output takes about 4 ns of the
        # 8 before any logic), a third copies it in the fabric and a fourth rotates it part of the way to the
        # columns; the read's addresses are registered before it: conv_read_stages.
        buffered = cfg.target == "ecp5"
        s2_valid = Signal(name="s2_valid") if buffered else Const(0)
        s3_valid = Signal(name="s3_valid") if buffered else Const(0)
        # Beats in the requantizer: its pipeline, or on the ECP5 as many as its output FIFO holds.
        inflight = Signal(range(max(REQUANT_LATENCY + requant_extra_stages(cfg.target) + 3,
                                    requant_fifo_depth(cfg.target) + 1)))
        start = Signal()
        m.d.comb += start.eq(self.start & ~self.busy)
        # The descriptor is latched first (or, when its source holds it for the whole run, read in place); the
        # walkers start from it one cycle later. On the ECP5 the latch, and the registers taken from the
        # descriptor with it, load in every cycle the engine is idle, the start's included: their enable is then
        # the engine's own ``busy``, not the dispatcher's start (a route across the die into some 200 enables).
        latch = ~self.busy if buffered else start
        if self._hold_layer:
            m.d.comb += narrowed
        else:
            with m.If(latch):
                m.d.sync += narrowed
        with m.If(start):
            m.d.sync += setup.eq(1)
        last_x = Signal(len(layer.out_w), **marked)         # OW - 1, where the cursor's columns wrap
        # The tile cursors' walkers (see _TileCursor) on the FPGA targets: their chain of cols column steps is
        # far too deep for the clock (on the ULX3S, 15 steps of a compare and a multiplexer).
        walk = cfg.target in _WALKER_TARGETS
        if walk:
            # Registered from the descriptor as it is sampled: the cursor's per-column steps then start from
            # registers, not from a compare of two fields.
            def field(name):
                return self.layer[name][:len(layer[name])]
            span_now = ~field("stride2") & (field("out_w") == field("in_w"))
            with m.If(latch):
                m.d.sync += [span.eq(span_now), last_x.eq(field("out_w") - 1)]
        else:
            m.d.comb += [span.eq(~layer.stride2 & (layer.out_w == layer.in_w)), last_x.eq(layer.out_w - 1)]
        width_is = None
        if buffered:
            # The first tile's columns, from flags registered with the descriptor (see _TileCursor).
            width_is = Signal(cols, name="width_is")
            with m.If(latch):
                m.d.sync += [width_is[k].eq(~field("stride2") & (field("out_w") == field("in_w"))
                                            & (field("out_w") == k)) for k in range(1, cols)]
        with m.If(setup):
            m.d.sync += [setup.eq(0), in_run.eq(1), out_run.eq(1)]

        # --- input side: one beat per cycle ------------------------------------------------------------------
        cursor = _TileCursor(m, layer, span, cols, "in", walk=walk, last_x=last_x, wrap_register=buffered,
                             width_is=width_is)
        m.d.comb += cursor.restarting.eq(setup | cursor.last_tile)
        addr_bits = len(layer.act_base)
        flat_bits = lg_nb + addr_bits                      # flat input pixel indices, modulo the banks' size
        ci, kx, ky = (Signal(len(layer.in_c), name="ci"), Signal(len(layer.kernel_w), name="kx"),
                      Signal(len(layer.kernel_h), name="ky"))
        chan_offset = Signal(addr_bits)                    # act_base + ci * act_channel_stride
        tile_base, row_base = Signal(flat_bits), Signal(flat_bits)     # flat input index of column 0's top-left tap
        # The flat index of column 0's tap, ``tile_base + ky * W + kx``, and of its row's first tap,
        # ``tile_base + ky * W``, as registers moved with the counters (modulo the banks' size, as the rest): the
        # bank addresses are then one adder from registers, not three in a row (nextpnr's critical path ran
        # through ``tile_base + tap_offset``, ``chan_offset + f0`` and ``word0 + 1`` into the block RAMs).
        f0, f0_row = Signal(flat_bits, name="f0"), Signal(flat_bits, name="f0_row")
        w_addr, w_base = Signal(range(self.weight_depth)), Signal(range(self.weight_depth))
        out_block = Signal(range(self.param_depth + 1))    # output channel block being computed (input side)
        # Window rows against the map, per tile: column 0's top tap row is ``-above``, the map ends ``room`` rows
        # below it (both change only when the cursor moves).
        # Both only decrease and are only used clamped at 0, so they saturate there: ``above`` then fits the
        # padding's few bits and ``room`` needs no sign.
        above = Signal(len(layer.pad_top), name="above")
        room = Signal(range(_field_max(layer, "in_h") + _field_max(layer, "pad_top") + 1), name="room")
        # Stage 1 compares each column's tap row with ``room - above``, both clamped to the few rows a column can
        # reach (see there).
        reach = 2 * (cols - 1) + (1 << len(layer.kernel_h)) - 1          # largest dy * stride + ky

        def clamped(rows):
            """``rows`` (a ``room``), clamped to the rows a column can reach."""
            return Mux(rows > reach + 1, reach + 1, rows)

        def window_height(room, above):
            return clamped(room) - above

        def moved_down(rows, down, name=None):
            """``rows`` less the tap rows a tile moves down, saturating at 0 (for ``above`` and ``room``). With
            ``name``, the compare is a kept wire of that name (yosys's ABC otherwise stretched it into the
            register's reset)."""
            more = rows > down
            if name is not None:
                more = Signal(name=name, attrs={"keep": 1})
                m.d.comb += more.eq(rows > down)
            return Mux(more, rows - down, 0)
        # The rows from a block's first tile top to the map's end (``room`` at a block's start). Registered with the
        # descriptor on the ECP5: their sum, compare and clamp in front of row_hi's multiplexer (below) were the
        # engine's slowest estimated path (from the latched layer).
        if buffered:
            first_rows = Signal.like(room, name="first_rows")
            with m.If(latch):
                m.d.sync += first_rows.eq(field("in_h") + field("pad_top"))
        else:
            first_rows = layer.in_h + layer.pad_top
        if walk:
            # Stage 1 compares each column's ``dy * stride`` with two registers shared by the columns, moved with
            # ``ky`` and the tile: the tap row ``dy * stride + ky`` is inside when ``row_lo <= dy * stride <
            # row_hi``, with ``row_lo = above - ky`` and ``row_hi = min(room, reach + 1) - ky``. No adder then
            # sits in front of the compares (it was three carry chains in a row). Columns likewise, below.
            # The next tile's ``above`` and clamped ``room`` are computed while the cursor's walker runs, from its
            # registered ``rows_down`` (valid two cycles after a move, three on the ECP5), in four steps (``room``'s
            # wide compare with the rows moved is a register of its own): ready five (six) cycles after the cycle
            # of a move, the walker at the earliest ``cols + 3`` (``cols + 4``), so ``cols`` >= 3 on these
            # targets: the constructor checks it.
            # Reset-less on the ECP5, here and below where a register is loaded in every cycle or by setup before a
            # run reads it: the run's flush reaches every flip-flop with a reset (57 failing paths of one build).
            rl = dict(reset_less=True) if buffered else {}
            down = Signal(range(2 * cols + 1), name="rows_down_taps", **rl)
            m.d.sync += down.eq(cursor.rows_down << layer.stride2)
            above_next, room_next = Signal.like(above, name="above_next"), Signal.like(room, name="room_next")
            cap = Shape.cast(range(reach + 2)).width
            cap_next = Signal(cap, name="cap_next")
            room_more = Signal(name="room_more")
            m.d.sync += room_more.eq(room > down)
            m.d.sync += [above_next.eq(moved_down(above, down, "above_more")),
                         room_next.eq(Mux(room_more, room - down, 0)),
                         cap_next.eq(clamped(room_next))]
            row_lo = Signal(signed(max(len(above), len(layer.kernel_h)) + 1), name="row_lo", **rl)
            row_hi = Signal(signed(max(cap, len(layer.kernel_h)) + 1), name="row_hi", **rl)
            col_lo = Signal(signed(max(len(layer.pad_left), len(layer.kernel_w)) + 1), name="col_lo", **rl)
            col_hi = Signal(signed(max(len(layer.in_w) + 1, len(layer.kernel_w)) + 1), name="col_hi", **rl)
            first_row_hi = clamped(first_rows)
        else:
            height = Signal(signed(Shape.cast(range(reach + 2)).width + 1), name="height")
            m.d.comb += height.eq(window_height(room, above))
        # On the ECP5 the columns compare with copies of the four tap bounds, one for every BOUND_GROUP columns
        # (COPY_ATTR), each set as the bound is: one bound fed the compares of all the columns, spread over the die
        # with the array's, and its routes to them were a routed failing group (col_lo, col_hi -> inside).
        bound_copies = {}
        if walk and buffered:
            for bound in (row_lo, row_hi, col_lo, col_hi):
                bound_copies[bound.name] = [Signal.like(bound, name=f"{bound.name}_{g}", reset_less=True,
                                                        attrs={COPY_ATTR: 1}) for g in range(-(-cols // BOUND_GROUP))]

        def set_bound(bound, value):
            """Statements setting a tap bound (and its copies) to ``value``."""
            return [bound.eq(value)] + [copy.eq(value) for copy in bound_copies.get(bound.name, [])]

        def bound_of(bound, c):
            """The bound (its copy, on the ECP5) that column ``c`` compares with."""
            return bound_copies[bound.name][c // BOUND_GROUP] if bound.name in bound_copies else bound

        # The ECP5 engine registers them too (its routed critical path ran from ``ci`` through ``ci + 1 == in_c``
        # to the enables of the tile bases).
        registered_last = serial or buffered
        if registered_last:
            # Registered a beat ahead, from the counters' next values: the tile's last beat is then one LUT away
            # from the many enables it drives.
            last_ci, last_kx, last_ky = Signal(name="last_ci"), Signal(name="last_kx"), Signal(name="last_ky")
            # ``in_c - 2`` registered from the layer (it holds still from the cycle after ``start``, the setup
            # cycle, before any beat): ``last_ci``'s next value is then an equality, not an adder and a compare.
            in_c_less_2 = Signal(signed(len(layer.in_c) + 1), name="in_c_less_2")
            m.d.sync += in_c_less_2.eq(layer.in_c - 2)
            # Likewise the kernel's: ``last_kx``/``last_ky`` (and ``tile_last`` with them) from equalities, and
            # "one channel, one kernel column" as a flag (``tile_last`` at a row of taps' end needs both).
            kw_less_2 = Signal(signed(len(layer.kernel_w) + 1), name="kernel_w_less_2")
            kh_less_2 = Signal(signed(len(layer.kernel_h) + 1), name="kernel_h_less_2")
            one_ci, one_ci_kx = Signal(name="one_ci"), Signal(name="one_ci_kx")
            m.d.sync += [kw_less_2.eq(layer.kernel_w - 2), kh_less_2.eq(layer.kernel_h - 2),
                         one_ci.eq(layer.in_c == 1), one_ci_kx.eq((layer.in_c == 1) & (layer.kernel_w == 1))]
        else:
            last_ci = ci + 1 == layer.in_c
            last_kx = kx + 1 == layer.kernel_w
            last_ky = ky + 1 == layer.kernel_h
        # ``issue`` is a kept wire on the iCE40 (``adv`` a register, below): it is then one LUT, and every enable of
        # the input side one more (yosys's ABC, left to itself, shared them into seven levels). ``tile_last`` is a
        # register there, set with the three flags it is the AND of (from their next values): the flags sit by
        # their counters, and a LUT of them, placed far away, began nextpnr's critical path at 38.1 MHz.
        keep = {"keep": 1} if serial else {}
        tile_last = Signal(name="tile_last")
        if not registered_last:
            m.d.comb += tile_last.eq(last_ci & last_kx & last_ky)
        tile_first = Signal()          # the beat after a tile's last (or the run's first): no compare of 3 counters
        block_last = cursor.last_tile
        if buffered:
            # Registered on the ECP5 (a multiply, an adder and a compare of ``out_block`` ran into ``in_run``),
            # from a count of the channels left (``out_c`` less the blocks done) compared with a constant. The
            # count moves at a block's end, and the flag is read at the end of the next block's last tile, many
            # cycles on.
            channels_left = Signal(len(layer.out_c), name="channels_left")
            last_block = Signal(name="last_block")
            m.d.sync += last_block.eq(channels_left <= rows)
            all_last = block_last & last_block
        else:
            all_last = block_last & ((out_block + 1) * rows >= layer.out_c)

        s1_first, s1_last = Signal(name="s1_first"), Signal(name="s1_last")
        if buffered:
            # The ECP5 input side has no enable: its stages and the block RAM reads run on every cycle, and a
            # beat issued enters the array conv_read_stages cycles later, always taken. The array would hold a
            # tile's last beat until it is spaced from the last one (min_tile_beats) and its output FIFO has room
            # for the tile's columns; the engine holds it here instead, at issue. ``spaced_issued`` is the
            # array's own count run conv_read_stages cycles early (the beats between cannot stall);
            # ``array.room`` is a register that only rises until the next reservation, and none falls between a
            # last beat's issue and its entry (last beats are at least walker_tile_beats apart, no fewer than
            # conv_read_stages). The stall that reached the memories' and stages' enables (every stage register
            # and block RAM of the input side, across the die) is gone; ``issue`` is one LUT from registers.
            adv, issue = Const(1), Signal(name="issue")
            gap = min_tile_beats(cfg)
            since_issued = Signal(range(gap + 1), init=gap, name="since_issued")
            # The spacing count takes a kept copy of a tile's last issue: ``issue`` enables most of the input
            # side's registers, and on that net the count's own loop (spaced_issued -> issue -> since_issued)
            # was a routed failing path.
            issued_last = Signal(name="issued_last", attrs={"keep": 1})
            if walker_tile_beats(cfg) >= conv_read_stages(cfg) + 2:
                # "A last beat may issue": the AND of the cursor's ``ready``, the spacing and ``array.room`` a
                # cycle late, as one register by the issue logic, set from their next values (the cursor's unless
                # it moves: setup, or this cycle's last issue; the spacing's unless it restarts). ``issue`` is then
                # one LUT of three registers in front of the input side's enables; the AND of five ran through two
                # LUTs and a long route into ``issued_last``, nextpnr's failing enables.
                # The room is seen a cycle late (the array's register sits by its FIFO, across the die), and its
                # fall in time: a last beat reserves as it enters conv_read_stages cycles after its issue,
                # ``room`` falls the cycle after, ``may_last`` the next, and the next last beat is issued
                # walker_tile_beats >= conv_read_stages + 2 cycles after it. Its rise a cycle late only matters
                # while the FIFO is full (the output held).
                may_last = Signal(name="may_last")
                m.d.sync += may_last.eq(~setup & ~issued_last & cursor.ready_next & (since_issued >= gap - 2) &
                                        array.room)
            else:                                       # a single column: tiles may be closer
                spaced_issued = Signal(init=1, name="spaced_issued")
                m.d.sync += spaced_issued.eq(Mux(issued_last, gap <= 1, since_issued >= gap - 2))
                may_last = cursor.ready & spaced_issued & array.room
            m.d.comb += [issue.eq(in_run & (~tile_last | may_last)),
                         issued_last.eq(in_run & tile_last & may_last)]
            counted = Mux(since_issued != gap, since_issued + 1, since_issued)
            # The compare is made on the count, and ``issue`` (late: the array's room) only picks it or the
            # restart's constant. ``counted >= gap - 1`` is ``since_issued >= gap - 2`` (the count saturates at
            # gap): a compare with a constant, not behind the increment's carry chain.
            m.d.sync += since_issued.eq(Mux(issued_last, 0, counted))
        else:
            adv = Signal(name="adv", attrs=keep, init=1)
            if not serial:
                m.d.comb += adv.eq(~s1_valid | array.i_beats.ready)
            # A beat leaves the counters when stage 1 takes it; with the walker a tile's last beat (which moves
            # the cursor) also waits for it, which only a tile of very few beats ever notices (walker_tile_beats).
            issue = Signal(name="issue", attrs=keep)
            m.d.comb += issue.eq(in_run & adv & (cursor.ready | ~tile_last) if walk else in_run & adv)
        if serial:
            # ``adv`` is a register on the iCE40, set a cycle ahead from the next values of what it is a function
            # of: stage 1's flags and the array's ``holding``, which sits by the DSP blocks at the die's edges.
            # Its many enables then start at a flip-flop, not at a LUT a route across the die away from it
            # (nextpnr's critical path ran holding -> adv -> issue -> enables).
            m.d.sync += adv.eq(~Mux(adv, issue, s1_valid) | ~(Mux(adv, tile_first, s1_first) & array.holding_next))

        def restart_tile():
            firsts = [last_ci.eq(layer.in_c == 1), last_kx.eq(layer.kernel_w == 1), last_ky.eq(layer.kernel_h == 1),
                      tile_last.eq((layer.in_c == 1) & (layer.kernel_w == 1) & (layer.kernel_h == 1))
                      ] if registered_last else []
            firsts += restart_cols() if walk else []
            return [ci.eq(0), kx.eq(0), ky.eq(0), chan_offset.eq(layer.act_base),
                    tile_first.eq(1)] + firsts

        def restart_cols():
            return set_bound(col_lo, layer.pad_left) + set_bound(col_hi, layer.in_w + layer.pad_left)

        def restart_block():
            return cursor.reset() + [tile_base.eq(layer.origin), row_base.eq(layer.origin), f0.eq(layer.origin),
                                     f0_row.eq(layer.origin),
                                     above.eq(layer.pad_top),
                                     room.eq(first_rows)] + (
                                         set_bound(row_lo, layer.pad_top) + set_bound(row_hi, first_row_hi)
                                         if walk else [])

        if walk:
            # A row step and a tile step as registers, from the layer (which holds still from the setup cycle; the
            # first move comes many cycles later): no multiplexer in front of the base adders.
            rl = dict(reset_less=True) if buffered else {}
            step = Signal(flat_bits, name="row_step", **rl)
            tile_step = Signal(range(2 * cols + 1), name="tile_step", **rl)
            m.d.sync += [step.eq(Mux(layer.stride2, layer.in_w << 1, layer.in_w)),
                         tile_step.eq(Mux(layer.stride2, 2 * cols, cols))]
            # The next tile's base, registered every cycle: a move needs the cursor's walker ``ready``, which
            # comes more than two cycles after the move or restart before it, and tile_base, row_base and the
            # cursor's wrap_row change only then. The moves' multiplexer then takes a register, not three adders.
            base_next = Signal(flat_bits, name="tile_base_next")
            m.d.sync += base_next.eq(Mux(span, tile_base + cols,
                                         Mux(cursor.wrap_row, row_base + step, tile_base + tile_step)))
        else:
            step = Mux(layer.stride2, layer.in_w << 1, layer.in_w)
            tile_step = Mux(layer.stride2, 2 * cols, cols)

        with m.If(setup):
            m.d.sync += restart_tile() + restart_block() + [
                w_addr.eq(layer.weight_base), w_base.eq(layer.weight_base), out_block.eq(0)]
            if buffered:
                m.d.sync += channels_left.eq(layer.out_c)
        with m.Elif(issue):
            with m.If(~last_ci):
                m.d.sync += [ci.eq(ci + 1), chan_offset.eq(chan_offset + layer.act_channel_stride)]
                if registered_last:
                    m.d.sync += [last_ci.eq(ci == in_c_less_2),
                                 tile_last.eq((ci == in_c_less_2) & last_kx & last_ky)]
            with m.Else():
                m.d.sync += [ci.eq(0), chan_offset.eq(layer.act_base)]
                if registered_last:
                    m.d.sync += last_ci.eq(one_ci)
                with m.If(~last_kx):
                    m.d.sync += [kx.eq(kx + 1), f0.eq(f0 + 1)]
                    if walk:
                        # (In this order: the iCE40's netlist, and so its placement, stays as it was.)
                        m.d.sync += ([last_kx.eq(kx == kw_less_2)] if registered_last else []) + [
                            *set_bound(col_lo, col_lo - 1), *set_bound(col_hi, col_hi - 1)] + (
                            [tile_last.eq(one_ci & (kx == kw_less_2) & last_ky)] if registered_last else [])
                with m.Else():
                    m.d.sync += [kx.eq(0), ky.eq(Mux(last_ky, 0, ky + 1))]
                    with m.If(~last_ky):      # else the tile's last beat: f0 and f0_row follow tile_base below
                        m.d.sync += [f0.eq(f0_row + layer.in_w), f0_row.eq(f0_row + layer.in_w)]
                    if registered_last:
                        next_ky = Mux(last_ky, layer.kernel_h == 1, ky == kh_less_2)
                        m.d.sync += [last_kx.eq(layer.kernel_w == 1), last_ky.eq(next_ky),
                                     tile_last.eq(one_ci_kx & next_ky)]
                    if walk:
                        m.d.sync += restart_cols()
                        with m.If(~last_ky):
                            m.d.sync += set_bound(row_lo, row_lo - 1) + set_bound(row_hi, row_hi - 1)
            m.d.sync += [w_addr.eq(w_addr + 1), tile_first.eq(tile_last)]
            with m.If(tile_last):
                with m.If(block_last):
                    m.d.sync += restart_block() + [w_base.eq(w_addr + 1), out_block.eq(out_block + 1)]
                    if buffered:
                        m.d.sync += channels_left.eq(channels_left - rows)
                    with m.If(all_last):
                        m.d.sync += in_run.eq(0)
                with m.Else():
                    m.d.sync += cursor.advance() + [w_addr.eq(w_base)]
                    if walk:
                        m.d.sync += [above.eq(above_next), room.eq(room_next), *set_bound(row_lo, above_next),
                                     *set_bound(row_hi, cap_next)]
                    else:
                        down = cursor.rows_down << layer.stride2
                        m.d.sync += [above.eq(moved_down(above, down)), room.eq(moved_down(room, down))]
                    def next_tile(base):
                        return [tile_base.eq(base), f0.eq(base), f0_row.eq(base)]
                    if walk:
                        m.d.sync += next_tile(base_next)
                        with m.If(~span & cursor.wrap_row):
                            m.d.sync += row_base.eq(base_next)
                    else:
                        with m.If(span):
                            m.d.sync += next_tile(tile_base + cols)
                        with m.Elif(cursor.wrap_row):
                            m.d.sync += next_tile(row_base + step) + [row_base.eq(row_base + step)]
                        with m.Else():
                            m.d.sync += next_tile(tile_base + tile_step)

        # Bank addresses: bank j serves the first flat index >= f0 that is j modulo NB, which is in f0's bank row
        # when j >= f0 mod NB and in the next one otherwise: two shared adders for all the banks, side by side
        # (``word1`` is the same sum with a carry in, not ``word0 + 1`` after it).
        word0, word1 = Signal(addr_bits), Signal(addr_bits)
        m.d.comb += [word0.eq(chan_offset + f0[lg_nb:]),
                     word1.eq((Cat(Const(1, 1), chan_offset) + Cat(Const(1, 1), f0[lg_nb:]))[1:])]
        # On the ECP5 each bank's address is a register of its own (the placer puts it by its block RAM), and the
        # weights' a copy of ``w_addr``: the adders and the bank's pick ran into 32 block RAMs' address pins
        # across the die, the routed build's second most frequent failing path. The read is a cycle later, and
        # stage 1's flags follow it through ``*_d`` copies (below).
        def read_address(value, name):
            if not buffered:
                return value
            registered = Signal.like(value, name=name, reset_less=True)
            m.d.sync += registered.eq(value)
            return registered

        bank_reads = []
        for j, mem in enumerate(act_mems):
            addr = read_address(Mux(f0[:lg_nb] > j, word1, word0), f"act_addr_{j}")
            bank_reads.append(_registered_read(m, mem, addr, adv, f"act_read_{j}"))
        weight_read = _registered_read(m, weights, read_address(w_addr, "weight_addr"), adv, "weight_read")

        # Stage 1 (memory latency): which bank each column takes, and whether its tap is inside the map. A tap
        # row is inside when ``above <= dy * stride + ky < room``: both bounds are clamped once per tile to the
        # few values a column can reach, so the per-column compares are a few bits wide.
        # The generic engine counts the tap row from the first row inside, ``dy * stride + ky - above``: inside
        # when its sign is clear and it is below ``height`` (``room - above``), both shared by the columns. (The
        # ice40 and ecp5 engines compare ``dy * stride`` with row_lo/row_hi instead, see there; columns likewise.)
        if not walk:
            ky_rel = Signal(signed(len(ky) + 1))
            m.d.comb += ky_rel.eq(ky - above)
            # The tap's input column ``ox * stride + kx - pad_left``, from one shared ``kx - pad_left``: inside the
            # map when its sign is clear and it is below W, one compare a column.
            kx_rel = Signal(signed(len(layer.kernel_w) + 1))
            m.d.comb += kx_rel.eq(kx - layer.pad_left)
        # Which bank each column takes: bank ``(f0 + c * stride) mod NB``. The ECP5 engine keeps only the rotation
        # ``f0 mod NB``, shared by the columns (the banks are rotated by it, below); the other targets keep a select
        # for each column.
        if buffered:
            rotation = Signal(lg_nb, name="rotation", reset_less=True)
        else:
            select = [Signal(lg_nb, name=f"select_{c}") for c in range(cols)]
        # Reset-less: they mean something only with s1_valid, which has the reset. The ECP5 engine registers the
        # five terms of each (below) and ANDs them in stage 2: compares and their AND in one stage were 11 ns.
        inside = [Signal(5 if buffered else 1, name=f"inside_{c}", reset_less=True) for c in range(cols)]
        def inside_terms(c):
            """Column ``c``'s tap-inside flag (on the ECP5 its five terms), from the counters."""
            if walk and buffered:
                dys, oxs = cursor.dys[c], cursor.oxs[c]
            elif walk:
                dys = Signal(len(cursor.dy[c]) + 1, name=f"dys_{c}")
                oxs = Signal(len(cursor.ox[c]) + 1, name=f"oxs_{c}")
                m.d.comb += [dys.eq(cursor.dy[c] << layer.stride2), oxs.eq(cursor.ox[c] << layer.stride2)]
            if walk:
                # On the iCE40, kept wires: yosys's ABC otherwise fed the stage's enable (the terms are assigned
                # under it there, below) into the compare chains' inputs, a detour of three LUTs through the
                # array's handshake on nextpnr's critical path.
                terms = [Signal(name=f"inside_{c}_{t}", attrs={"keep": 1} if serial else {}) for t in range(5)]
                lo_y, hi_y, lo_x, hi_x = (bound_of(b, c) for b in (row_lo, row_hi, col_lo, col_hi))
                m.d.comb += [t.eq(v) for t, v in zip(terms, (cursor.pixel_valid[c], dys >= lo_y,
                                                              dys < hi_y, oxs >= lo_x, oxs < hi_x))]
                return Cat(terms) if buffered else Cat(terms).all()
            tap_y = Signal(signed(len(ky) + 3), name=f"tap_y_{c}")
            tap_x = Signal(signed(len(cursor.ox[c]) + 2), name=f"tap_x_{c}")
            m.d.comb += [tap_y.eq((cursor.dy[c] << layer.stride2) + ky_rel),
                         tap_x.eq((cursor.ox[c] << layer.stride2) + kx_rel)]
            return (cursor.pixel_valid[c] & ~tap_y[-1] & (tap_y < height) & ~tap_x[-1] & (tap_x < layer.in_w))

        # The terms are computed outside the stage's enable: assigned under it, they are 0 while ``adv`` is low,
        # which puts the array's handshake in front of every compare. The iCE40 keeps them under it: its
        # placement (41.5 MHz at seed 1) was found with them there, and moving them lost it (38.6 MHz).
        inside_next = None if serial else [inside_terms(c) for c in range(cols)]
        with m.If(adv):
            m.d.sync += [s1_valid.eq(issue), s1_first.eq(tile_first), s1_last.eq(tile_last)]
            if buffered:
                m.d.sync += rotation.eq(f0[:lg_nb])
            for c in range(cols):
                if not buffered:
                    m.d.sync += select[c].eq((f0 + (c << layer.stride2))[:lg_nb])
                m.d.sync += inside[c].eq(inside_terms(c) if serial else inside_next[c])
        if buffered:
            # Stage 1's flags and rotation a cycle on, beside the read of the registered addresses.
            s1d_valid = Signal(name="s1d_valid")
            s1d_first, s1d_last = Signal(name="s1d_first"), Signal(name="s1d_last")
            rotation_d = Signal(lg_nb, name="rotation_d", reset_less=True)
            inside_d = [Signal(5, name=f"inside_d_{c}", reset_less=True) for c in range(cols)]
            m.d.sync += [s1d_valid.eq(s1_valid), s1d_first.eq(s1_first), s1d_last.eq(s1_last),
                         rotation_d.eq(rotation)] + [q.eq(d) for q, d in zip(inside_d, inside)]
            # Stage 2: the memories' data, the rotation and flags, one stage on; stage 3 (after 2e, below): the
            # banks rotated by the rotation's low bits (a byte takes one of its next 2**lo neighbours). All run on
            # every cycle, as stage 1 (``adv`` is 1 here). The rest of the rotation, the stride's pick and the
            # padding are left to the array's input register. The rotator replaced a 32-to-1 multiplexer a
            # column: each bank byte now reaches a few neighbours, not 16 columns (that crossbar was
            # nextpnr-ecp5's worst congestion, docs/decisions.md sessions 11 and 12).
            lo = lg_nb - lg_nb // 2
            s2_first, s2_last = Signal(name="s2_first"), Signal(name="s2_last")
            s3_first, s3_last = Signal(name="s3_first"), Signal(name="s3_last")
            bank_data = [Signal(8, name=f"act_data_{j}", reset_less=True) for j in range(nb)]
            weight_data = Signal.like(weight_read, name="weight_data", reset_less=True)
            weight_data3 = Signal.like(weight_read, name="weight_data3", reset_less=True)
            rotation2 = Signal(lg_nb, name="rotation2", reset_less=True)
            rotation3 = Signal(lg_nb - lo, name="rotation3", reset_less=True)
            inside2 = [Signal(name=f"inside2_{c}", reset_less=True) for c in range(cols)]
            inside3 = [Signal(name=f"inside3_{c}", reset_less=True) for c in range(cols)]
            turned = [Signal(8, name=f"act_turned_{j}", reset_less=True) for j in range(nb)]
            # Stage 2e: a fabric copy of each bank's byte (stage 2's registers become the block RAMs' own output
            # registers, boards/outreg.py) and of everything beside it. The rotator's first half takes a byte
            # from 2**lo banks spread over the die: straight from the output registers it was the routed build's
            # largest group of failing paths; the copy, with one load, sits between a block and its rotators.
            s2e_valid = Signal(name="s2e_valid")
            s2e_first, s2e_last = Signal(name="s2e_first"), Signal(name="s2e_last")
            bank_near = [Signal(8, name=f"act_near_{j}", reset_less=True) for j in range(nb)]
            weight_data2e = Signal.like(weight_read, name="weight_data2e", reset_less=True)
            rotation2e = Signal(lg_nb, name="rotation2e", reset_less=True)
            inside2e = [Signal(name=f"inside2e_{c}", reset_less=True) for c in range(cols)]
            with m.If(adv):
                m.d.sync += [s2_valid.eq(s1d_valid), s2_first.eq(s1d_first), s2_last.eq(s1d_last),
                             weight_data.eq(weight_read), rotation2.eq(rotation_d)]
                m.d.sync += [q.eq(d) for q, d in zip(bank_data, bank_reads)]
                m.d.sync += [q.eq(d.all()) for q, d in zip(inside2, inside_d)]
                m.d.sync += [s2e_valid.eq(s2_valid), s2e_first.eq(s2_first), s2e_last.eq(s2_last),
                             weight_data2e.eq(weight_data), rotation2e.eq(rotation2)]
                m.d.sync += [q.eq(d) for q, d in zip(bank_near, bank_data)]
                m.d.sync += [q.eq(d) for q, d in zip(inside2e, inside2)]
                m.d.sync += [s3_valid.eq(s2e_valid), s3_first.eq(s2e_first), s3_last.eq(s2e_last),
                             weight_data3.eq(weight_data2e), rotation3.eq(rotation2e[lo:])]
                m.d.sync += [q.eq(d) for q, d in zip(inside3, inside2e)]
                for j in range(nb):
                    m.d.sync += turned[j].eq(Array(bank_near[(j + k) % nb] for k in range(1 << lo))[rotation2e[:lo]])
            # Byte k of the whole rotation is bank ``(f0 + k) mod NB``; column c takes byte ``c * stride``.
            steps = 1 << (lg_nb - lo)
            rotated = [Array(turned[(k + (t << lo)) % nb] for t in range(steps))[rotation3] for k in range(nb)]
            # The stride's pick and the padding's zero point from copies registered here, on every cycle (the
            # layer holds still from the setup cycle, many cycles before the first beat gets here): the layer's
            # own registers serve the whole engine.
            stride2_here = Signal(name="stride2_here", reset_less=True)
            in_zp_here = Signal(signed(8), name="in_zp_here", reset_less=True)
            m.d.sync += [stride2_here.eq(layer.stride2), in_zp_here.eq(layer.in_zp)]
            bank_of = [Mux(stride2_here, rotated[2 * c % nb], rotated[c]) for c in range(cols)]
            pad_value = in_zp_here
            weight_read, inside = weight_data3, inside3
            s_valid, s_first, s_last = s3_valid, s3_first, s3_last
        else:
            banks = Array(bank_reads)
            bank_of = [banks[select[c]] for c in range(cols)]
            pad_value = layer.in_zp
            s_valid, s_first, s_last = s1_valid, s1_first, s1_last
        m.d.comb += [array.i_beats.valid.eq(s_valid), array.i_beats.payload.first.eq(s_first),
                     array.i_beats.payload.last.eq(s_last), array.i_beats.payload.wgt.eq(weight_read)]
        for c in range(cols):
            m.d.comb += array.i_beats.payload.act[c].eq(Mux(inside[c], bank_of[c].as_signed(), pad_value))

        # --- output side: name each column, fetch its parameters, requantize ---------------------------------
        if buffered:
            # The output side's own copy of ``setup`` (COPY_ATTR; ``setup`` is ``start`` a cycle on, as this is):
            # ``setup`` restarts both sides, and its route to the output cursor's resets, across the die, was a
            # routed build's slowest path (9.0 ns).
            setup_o = Signal(name="setup_out", attrs={COPY_ATTR: 1})
            m.d.sync += setup_o.eq(start)
        else:
            setup_o = setup
        column = array.o_columns.payload
        taken = array.o_columns.valid & array.o_columns.ready
        if buffered:
            # The ECP5 engine counts the columns it takes (a tile's come in order, every one): the FIFO's data
            # then reaches no ready and no enable (its column number, compared, ran into the FIFO's level).
            column_no, column_last = Signal(range(cols), name="column_no"), Signal(name="column_last")
            with m.If(setup_o):
                m.d.sync += [column_no.eq(0), column_last.eq(cols == 1)]
            with m.Elif(taken):
                m.d.sync += [column_no.eq(Mux(column_last, 0, column_no + 1)),
                             column_last.eq(Mux(column_last, cols == 1, column_no == cols - 2))]
        else:
            column_no, column_last = column.col, column.col == cols - 1
        tile_done = taken & column_last
        out_block_o = Signal(range(self.param_depth))     # output channel block being drained
        # The tag names a result by its flat output pixel and channel block, just as wide as the layer needs.
        tag = Signal(data.StructLayout({"pixel": len(layer.out_h) + len(layer.out_w), "block": len(out_block_o)}))
        # On the ECP5 the requantizer's products take three MULT18X18D a lane (the array leaves 28 of the 85F's
        # 156); the vector engines' requantizers stay in LUTs.
        m.submodules.requant = requant = Requantizer(rows, tag_width=tag.shape().size, target=cfg.target,
                                                     lane_fetch=serial, dsp_blocks=cfg.target == "ecp5",
                                                     admit_ahead=conv_param_stages(cfg) if buffered else 0)
        m.d.comb += [requant.single_rounding.eq(layer.single_rounding), requant.zero_point.eq(layer.out_zp),
                     requant.qmin.eq(layer.qmin), requant.qmax.eq(layer.qmax)]
        if serial:
            # No second cursor: the input side queues what the drain needs of each tile it issues (its last valid
            # column, whether it ends its channel block and the layer), and the output pixel is a count of the
            # valid columns taken, restarted with each channel block: a tile's valid columns are a prefix, and the
            # first pixel of a row follows the last of the row above. A tile's entry waits from the issue of its
            # last beat until its last column is taken; between them lie at most the three pipeline registers
            # (stage 1, the array's operands and products, whose beats may each end a one-beat tile) and the tile
            # the array holds, so four entries never overflow.
            info = data.StructLayout({"last_col": range(cols), "block_last": 1, "all_last": 1})
            queue = [Signal(info, name=f"tile_info_{i}") for i in range(4)]
            wr, rd = Signal(2), Signal(2)
            last_col = Signal(range(cols))
            for c in range(1, cols):
                with m.If(cursor.pixel_valid[c]):
                    m.d.comb += last_col.eq(c)
            with m.If(~setup & issue & tile_last):
                m.d.sync += wr.eq(wr + 1)
                with m.Switch(wr):
                    for i, entry in enumerate(queue):
                        with m.Case(i):
                            m.d.sync += [entry.last_col.eq(last_col), entry.block_last.eq(block_last),
                                         entry.all_last.eq(all_last)]
            # The head entry, registered every cycle: its tile's columns show at least three cycles after its
            # entry is written (the array's pipeline) and after ``rd`` moves on (the next tile's accumulation), so
            # the copy is never stale when read, and ``keep`` is one LUT from a register, not a queue multiplexer.
            head = Signal(info, name="tile_head")
            m.d.sync += head.eq(Array(queue)[rd])
            out_pixel = Signal(len(tag.pixel))
            # The serial lane reads the column in place (the array holds it until it is taken) and its parameters
            # a lane at a time; a column past the layer's pixels is taken at once. No copy of the column, no
            # parameter beat.
            # ``keep`` (the column is a pixel's) and ``at_end`` (it is the tile's last) are registers that hold
            # ``column.col <= head.last_col`` and ``column.col == head.last_col``: each is computed a cycle early
            # from the column the array shows next (its ``col_next``) and the entry ``head`` copies next. The
            # array's ``taken``, which enables every high part of its accumulators, is then one LUT after
            # registers (nextpnr's critical path ran next_col -> keep -> taken through two LUTs of compare).
            keep, at_end = Signal(name="keep", init=1), Signal(name="at_end", init=1)
            head_next = Array(queue)[rd]
            m.d.sync += [keep.eq(array.col_next <= head_next.last_col),
                         at_end.eq(array.col_next == head_next.last_col)]
            with m.If(taken & keep):
                m.d.sync += out_pixel.eq(Mux(at_end & head.block_last, 0, out_pixel + 1))
            # The layer ends with its last pixel: the columns after it (the last tile's padding) stay in the
            # array, which drops them when the next layer starts, so the run ends as soon after its last result
            # on this target as on the others.
            with m.If(taken & at_end & head.all_last):
                m.d.sync += out_run.eq(0)
            param_row = Signal(range(self.param_depth * rows))     # (param_base + out_block_o) * rows
            with m.If(tile_done):
                m.d.sync += rd.eq(rd + 1)
                with m.If(head.block_last):
                    m.d.sync += [param_row.eq(param_row + rows), out_block_o.eq(out_block_o + 1)]
            with m.If(setup_o):
                m.d.sync += [wr.eq(0), rd.eq(0), out_pixel.eq(0), out_block_o.eq(0),
                             param_row.eq(layer.param_base * rows)]
            m.d.comb += [requant.i_acc.valid.eq(array.o_columns.valid & keep),
                         array.o_columns.ready.eq(~keep | requant.i_acc.ready),
                         array.drain_row.eq(requant.lane), requant.acc.eq(array.drain_acc),
                         array.restart.eq(setup_o)]
            param_data = read_params(param_row + requant.lane, Const(1))
            m.d.comb += requant.params.eq(param_data)
            m.d.comb += [tag.pixel.eq(out_pixel), tag.block.eq(out_block_o)]
            m.d.comb += requant.i_acc.payload.tag.eq(tag)
        else:
            span_o, last_x_o = span, last_x
            if buffered:
                # The output cursor's own copies: the walker's steps and the end wrap compared ``last_x`` from the
                # input cursor's side of the die (routes of 2.4 to 2.6 ns in front of their compares).
                span_o = Signal(name="span_out", **marked)
                last_x_o = Signal.like(last_x, name="last_x_out", **marked)
                with m.If(latch):
                    m.d.sync += [span_o.eq(span_now), last_x_o.eq(field("out_w") - 1)]
            out_cursor = _TileCursor(m, layer, span_o, cols, "out", walk=walk, last_x=last_x_o, wrap_register=buffered,
                                     width_is=width_is)
            if buffered and walk:
                # ``taken & column_last`` as one AND of four registers, kept from ABC (the column's valid, the
                # requantizer's room, ``column_last`` and the cursor's ``ready``, which ``o_columns.ready`` below
                # takes in for a tile's last column): ABC had shared it with ``taken``, and the routed build's
                # slowest path ran from ``column_last`` through four LUTs into the cursor's resets.
                # The requantizer's room comes from its copy for this AND (``ready_copy``): the one flip-flop sat
                # by the requantizer's FIFO, and its route to here began the routed build's paths into the cursor's
                # resets.
                tile_done = Signal(name="tile_done", attrs={"keep": 1})
                m.d.comb += tile_done.eq(array.o_columns.valid & requant.ready_copy & column_last & out_cursor.ready)
            if buffered:
                # Registered, as the input side's ``last_block``.
                out_channels_left = Signal(len(layer.out_c), name="out_channels_left")
                out_block_last = Signal(name="out_block_last")
                m.d.sync += out_block_last.eq(out_channels_left <= rows)
            else:
                out_block_last = (out_block_o + 1) * rows >= layer.out_c
            m.d.comb += out_cursor.restarting.eq(setup_o | out_cursor.last_tile)
            with m.If(tile_done):
                with m.If(out_cursor.last_tile):
                    m.d.sync += out_cursor.reset() + [out_block_o.eq(out_block_o + 1)]
                    if buffered:
                        m.d.sync += out_channels_left.eq(out_channels_left - rows)
                    with m.If(out_block_last):
                        m.d.sync += out_run.eq(0)
                with m.Else():
                    m.d.sync += out_cursor.advance()
            with m.If(setup_o):
                m.d.sync += out_cursor.reset() + [out_block_o.eq(0)]
                if buffered:
                    m.d.sync += out_channels_left.eq(layer.out_c)
            p_advance = Signal()
            p_keep = Signal()
            p_acc = Signal.like(column.acc)
            if buffered:
                # No enable on the ECP5 (as on the input side): the parameter read and the stage after it run
                # every cycle, and the requantizer takes every beat they offer (admit_ahead). A column is taken
                # only while the requantizer has room for it a cycle ahead, so ``taken`` is one LUT from
                # registers and reaches no wide enable (the array's FIFO, nextpnr's critical path, sat at the
                # die's other side from the parameter read it enabled).
                m.d.comb += p_advance.eq(1)
                may_take = requant.i_acc.ready
            else:
                m.d.comb += p_advance.eq(~p_valid | ~p_keep | requant.i_acc.ready)
                may_take = p_advance
            if walk:
                # A tile's last column moves the output cursor, whose walker must be ready: its tiles are
                # walker_tile_beats apart as the input side issued them, but back-pressure can close them up.
                m.d.comb += array.o_columns.ready.eq(may_take & (out_cursor.ready | ~column_last))
            else:
                m.d.comb += array.o_columns.ready.eq(may_take)
            param_addr = Signal(range(self.param_depth), name="param_addr")     # param_base + out_block_o
            # The address is a register on every target, moved with ``out_block_o``: on the ECP5 it was their sum,
            # whose carry chain (and the parameter blocks' spread) made ``out_block_o`` the routed build's most
            # frequent start of a failing path. Its enable is ``tile_done``, one kept LUT of registers there.
            param_data = read_params(param_addr, p_advance)
            if buffered:
                # Whether the column taken is a pixel's, without a compare in front of the column multiplexer:
                # the cursor moves only as a tile's last column is taken (or at setup), so the column after it
                # (column 0, from the cursor itself) is the only one taken while a registered copy of the
                # columns' flags is a cycle stale. Column 1 comes a cycle later at the earliest.
                valid_r = Signal(cols, name="out_pixel_valid_r")
                column_first = Signal(name="column_first", init=1)
                m.d.sync += valid_r.eq(Cat(*out_cursor.pixel_valid))
                with m.If(setup_o):
                    m.d.sync += column_first.eq(1)
                with m.Elif(taken):
                    m.d.sync += column_first.eq(column_last)
                keep = Mux(column_first, out_cursor.pixel_valid[0], valid_r.bit_select(column_no, 1))
            else:
                keep = Array(out_cursor.pixel_valid)[column_no]
            with m.If(p_advance):
                m.d.sync += [p_valid.eq(taken), p_keep.eq(keep),
                             p_acc.eq(column.acc), tag.pixel.eq(out_cursor.pixel0 + column_no),
                             tag.block.eq(out_block_o)]
            with m.If(setup_o):
                m.d.sync += param_addr.eq(layer.param_base)
            with m.Elif(tile_done & out_cursor.last_tile):
                m.d.sync += param_addr.eq(param_addr + 1)
            if buffered:
                # One more stage on the ECP5, the parameters' second register in the fabric (the parameter
                # memory is 36 bits a port, which boards/outreg.py leaves alone): straight from the block RAMs,
                # whose data comes 5.8 ns after the clock, to the requantizer's registers across the die was the
                # routed build's second largest group of failing paths. The beat waits beside it.
                q_valid = Signal(name="q_valid")
                q_acc = Signal.like(p_acc, name="q_acc", reset_less=True)
                q_tag = Signal.like(tag, name="q_tag", reset_less=True)
                q_params = Signal.like(param_data, name="q_params", reset_less=True)
                m.d.sync += [q_valid.eq(p_valid & p_keep), q_acc.eq(p_acc), q_tag.eq(tag), q_params.eq(param_data)]
                in_valid, in_acc, in_tag, in_params = q_valid, q_acc, q_tag, q_params
            else:
                in_valid, in_acc, in_tag, in_params = p_valid & p_keep, p_acc, tag, param_data
            # Lane by lane: accumulators narrower than int32 (acc_width) are sign-extended, not raw bits.
            m.d.comb += [requant.i_acc.payload.acc[r].eq(in_acc[r]) for r in range(rows)]
            m.d.comb += [requant.i_acc.valid.eq(in_valid),
                         requant.i_acc.payload.params.eq(in_params), requant.i_acc.payload.tag.eq(in_tag)]

        done_tag = data.View(tag.shape(), requant.o_data.payload.tag)
        m.d.comb += [self.o_data.valid.eq(requant.o_data.valid), requant.o_data.ready.eq(self.o_data.ready),
                     self.o_data.payload.data.eq(requant.o_data.payload.data),
                     self.o_data.payload.pixel.eq(done_tag.pixel),
                     self.o_data.payload.channel.eq(done_tag.block * rows)]
        if serial:
            # The serial lane holds at most the result in its output register: its last column is taken (out_run
            # falls) on the edge that makes that result valid.
            in_flight = requant.o_data.valid
        else:
            entered = requant.i_acc.valid & (1 if buffered else requant.i_acc.ready)
            left = self.o_data.valid & self.o_data.ready
            with m.If(entered & ~left):
                m.d.sync += inflight.eq(inflight + 1)
            with m.Elif(left & ~entered):
                m.d.sync += inflight.eq(inflight - 1)
            if buffered:
                # ``inflight != 0`` as a register, set from the count's next value.
                in_flight = Signal(name="in_flight")
                m.d.sync += in_flight.eq(Mux(entered & ~left, 1, Mux(left & ~entered, inflight != 1, inflight != 0)))
            else:
                in_flight = inflight != 0
        stages_valid = s1_valid | s1d_valid | s2_valid | s2e_valid | s3_valid if buffered else s1_valid
        out_stages_valid = p_valid | q_valid if buffered else p_valid
        if buffered:
            # ``busy`` is one LUT of three registers on the ECP5 (it gates the start into ``setup`` and enables
            # the latched descriptor's registers): the OR of the run's flags is taken a cycle late (``quiet``),
            # ``setup`` beside it covers the cycle after a start, and ``in_flight`` the end: the last beats
            # enter the requantizer (``q_valid``) with every other flag already low, and leave it cycles later,
            # so ``busy`` falls in the same cycle as the OR of them all would.
            quiet = Signal(init=1, name="quiet")
            m.d.sync += quiet.eq(~(setup | in_run | out_run | stages_valid | out_stages_valid))
            m.d.comb += self.busy.eq(setup | ~quiet | in_flight)
        else:
            m.d.comb += self.busy.eq(setup | in_run | out_run | stages_valid | out_stages_valid | in_flight)
        return m


# --- host side: descriptors and memory images -------------------------------------------------------------------

def conv_layer(config, in_shape, weight_shape, *, stride=1, padding=(0, 0, 0, 0), in_zp=0, out_zp=0,
               qmin=-128, qmax=127, rounding="double", act_base=0, weight_base=0, param_base=0, name="layer"):
    """Fields of a :class:`ConvLayer` (a dict for ``ConvLayer.const``) for one convolution.

    ``in_shape`` is ``(H, W, Cin)``, ``weight_shape`` ``(Cout, KH, KW, Cin)``, ``padding`` ``(top, bottom, left,
    right)``; the bases place the input map, weights and parameters in their memories (words). Raises
    ``ValueError`` naming ``name`` and the reason when the engine cannot run the layer.
    """
    h, w, cin = (int(v) for v in in_shape)
    cout, kh, kw, wcin = (int(v) for v in weight_shape)
    top, bottom, left, right = (int(v) for v in padding)
    stride = int(stride)

    def fail(reason):
        raise ValueError(f"layer {name!r}: {reason}")

    if wcin != cin:
        fail(f"weights expect {wcin} input channels, the input has {cin}")
    if stride not in (1, 2):
        fail(f"stride {stride} is not supported (1 or 2)")
    if not (1 <= kh <= min(config.max_kernel, 15) and 1 <= kw <= min(config.max_kernel, 15)):
        fail(f"kernel {kh}x{kw} is outside 1..{config.max_kernel}")
    if min(h, w, cin, cout) < 1 or max(h, w, cin, cout) >= 1 << DIM:
        fail(f"shape H={h} W={w} Cin={cin} Cout={cout} must have every dimension in 1..{(1 << DIM) - 1}")
    if not all(0 <= p <= 15 for p in padding) or top >= kh or bottom >= kh or left >= kw or right >= kw:
        fail(f"padding {tuple(padding)} must be smaller than the kernel {kh}x{kw}")
    if w > config.max_width:
        fail(f"input width {w} exceeds max_width {config.max_width}")
    out_h = (h + top + bottom - kh) // stride + 1
    out_w = (w + left + right - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        fail(f"the {kh}x{kw} kernel does not fit the padded {h}x{w} input")
    if max(out_h, out_w) >= 1 << DIM:
        fail(f"the output {out_h}x{out_w} must have every dimension in 1..{(1 << DIM) - 1}")
    if rounding not in ("double", "single"):
        fail(f"rounding {rounding!r} is not a hardware mode (double or single)")
    if not (-128 <= qmin <= qmax <= 127 and -128 <= in_zp <= 127 and -128 <= out_zp <= 127):
        fail(f"zero points and clamp bounds must be int8 with qmin <= qmax, not "
             f"in_zp={in_zp} out_zp={out_zp} qmin={qmin} qmax={qmax}")
    if not all(0 <= int(v) < 1 << BASE for v in (act_base, weight_base, param_base)):
        fail(f"memory bases {act_base}, {weight_base}, {param_base} must be below {1 << BASE}")
    banks = act_banks(config)
    return dict(act_base=int(act_base), weight_base=int(weight_base), param_base=int(param_base),
                in_h=h, in_w=w, in_c=cin, out_h=out_h, out_w=out_w, out_c=cout, kernel_h=kh, kernel_w=kw,
                stride2=int(stride == 2), pad_top=top, pad_left=left, in_zp=int(in_zp), out_zp=int(out_zp),
                qmin=int(qmin), qmax=int(qmax), single_rounding=int(rounding == "single"),
                act_channel_stride=-(-(h * w) // banks), origin=-(top * w + left))


def check_conv_limits(config, fields, *, name="layer", act_depth=None, weight_depth=None, param_depth=None):
    """Raise ``ValueError`` naming ``name`` if the :func:`conv_layer` fields are past :func:`conv_limits` or a base
    lies outside its memory (what the accelerator's dispatcher refuses with ``BAD_DESCRIPTOR``)."""
    lim = conv_limits(config, act_depth=act_depth, weight_depth=weight_depth, param_depth=param_depth)
    for field in ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c"):
        if fields[field] > getattr(lim, field):
            raise ValueError(f"layer {name!r}: {field} = {fields[field]} exceeds {getattr(lim, field)}, the most "
                             f"this engine's memories hold")
    for field, depth in (("act_base", lim.act_depth), ("weight_base", lim.weight_depth),
                         ("param_base", lim.param_depth), ("act_channel_stride", lim.act_depth + 1)):
        if not 0 <= fields.get(field, 0) < depth:
            raise ValueError(f"layer {name!r}: {field} = {fields[field]} is outside the memory ({depth} words)")


def fold_bias(weights, bias, in_zp):
    """``bias - in_zp * sum(w)`` per output channel, wrapped to int32: the PEs then multiply raw activations."""
    import numpy as np
    sums = weights.reshape(weights.shape[0], -1).astype(np.int64).sum(axis=1)
    folded = np.asarray(bias, np.int64) - int(in_zp) * sums
    return ((folded + (1 << 31)) % (1 << 32)) - (1 << 31)


def memory_images(config, fields, x, weights, bias, multiplier, shift, *, act_depth=None, weight_depth=None,
                  param_depth=None, name="layer"):
    """Contents of the three memories for one layer, as NumPy arrays.

    ``x`` is ``[H, W, Cin]`` int8, ``weights`` ``[Cout, KH, KW, Cin]``, ``bias`` int32 (not folded),
    ``multiplier``/``shift`` per output channel. Returns ``(act, wgt, params)``: ``act`` ``[words, NB]`` uint8,
    ``wgt`` ``[words, rows]`` int8, ``params`` ``[blocks, rows, 3]`` int64 (folded bias, multiplier, shift).
    Depths, when given, are checked (error naming ``name``).
    """
    import numpy as np
    banks, rows = act_banks(config), config.rows
    h, w, cin = fields["in_h"], fields["in_w"], fields["in_c"]
    cout = fields["out_c"]
    stride = fields["act_channel_stride"]
    flat = np.zeros((cin, stride * banks), np.uint8)
    flat[:, :h * w] = np.asarray(x, np.int8).reshape(h * w, cin).T.view(np.uint8)
    act = flat.reshape(cin * stride, banks)
    blocks = -(-cout // rows)
    kdepth = weights[0].size
    wpad = np.zeros((blocks * rows, kdepth), np.int8)
    wpad[:cout] = weights.reshape(cout, kdepth)
    wgt = wpad.reshape(blocks, rows, kdepth).transpose(0, 2, 1).reshape(blocks * kdepth, rows)
    params = np.zeros((blocks * rows, 3), np.int64)
    params[:cout, 0] = fold_bias(weights, bias, fields["in_zp"])
    params[:cout, 1] = np.broadcast_to(multiplier, (cout,))
    params[:cout, 2] = np.broadcast_to(shift, (cout,))
    for what, need, have in (("input map", act.shape[0], act_depth), ("weights", wgt.shape[0], weight_depth),
                             ("requantization parameters", blocks, param_depth)):
        if have is not None and need > have:
            raise ValueError(f"layer {name!r}: the {what} need {need} words, the engine has {have}")
    return act, wgt, params.reshape(blocks, rows, 3)


def node_job(config, node, x, *, act_depth=None, weight_depth=None, param_depth=None):
    """Descriptor fields and memory images for a graph node (``Conv2D`` or ``FullyConnected``) on one input
    ``x`` (``[H, W, C]`` int8); a fully connected layer runs as a 1x1 convolution on a 1x1 map. The depths are
    those of the :class:`ConvEngine` that will run it (the configuration's by default)."""
    act_depth = config.conv_act_depth if act_depth is None else act_depth
    weight_depth = config.conv_weight_depth if weight_depth is None else weight_depth
    param_depth = config.conv_param_depth if param_depth is None else param_depth
    import numpy as np
    kind = node.kind
    rq = node.requant
    if kind == "fully_connected":
        x = np.asarray(x).reshape(1, 1, -1)
        weights = node.weights.reshape(node.weights.shape[0], 1, 1, node.weights.shape[1])
        stride, padding = 1, (0, 0, 0, 0)
    elif kind == "conv2d":
        weights = node.weights
        if node.stride[0] != node.stride[1]:
            raise ValueError(f"layer {node.name!r}: stride {node.stride} must be equal in both axes")
        stride, padding = node.stride[0], node.padding
    else:
        raise ValueError(f"layer {node.name!r}: the conv engine runs conv2d and fully_connected, not {kind}")
    fields = conv_layer(config, x.shape, weights.shape, stride=stride, padding=padding,
                        in_zp=node.input_spec.zero_point, out_zp=rq.zero_point, qmin=rq.qmin, qmax=rq.qmax,
                        rounding=rq.mode, name=node.name)
    images = memory_images(config, fields, x, weights, node.bias, rq.multiplier, rq.shift, act_depth=act_depth,
                           weight_depth=weight_depth, param_depth=param_depth, name=node.name)
    check_conv_limits(config, fields, name=node.name, act_depth=act_depth, weight_depth=weight_depth,
                      param_depth=param_depth)
    return fields, images


def scatter_outputs(config, fields, beats):
    """Rebuild the ``[OH, OW, Cout]`` int8 output from ``(pixel, channel, data[rows])`` beats, checking that each
    output is written exactly once."""
    import numpy as np
    oh, ow, cout = fields["out_h"], fields["out_w"], fields["out_c"]
    out = np.zeros((oh * ow, cout), np.int64)
    seen = np.zeros((oh * ow, cout), np.int64)
    for pixel, channel, lanes in beats:
        if pixel >= oh * ow or channel >= cout:
            raise AssertionError(f"output beat for pixel {pixel}, channel {channel} is outside the layer")
        n = min(config.rows, cout - channel)
        out[pixel, channel:channel + n] = np.asarray(lanes)[:n]
        seen[pixel, channel:channel + n] += 1
    if not (seen == 1).all():
        bad = np.argwhere(seen != 1)[0]
        raise AssertionError(f"output pixel {bad[0]} channel {bad[1]} was written {seen[tuple(bad)]} times")
    return out.reshape(oh, ow, cout)
