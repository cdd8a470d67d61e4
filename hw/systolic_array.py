"""Output-stationary systolic array of int8 x int8 -> int32 processing elements.

Processing element ``(r, c)`` owns the accumulator of output channel ``r`` at output pixel ``c`` of a tile. A tile
is a run of beats, each carrying one weight per row (``wgt[r]``) and one activation per column (``act[c]``);
``first`` and ``last`` frame it. Weights enter at the left and move right one PE per cycle, activations enter at
the top and move down, so beat ``k`` meets PE ``(r, c)`` at cycle ``k + r + c``: the skew is applied inside the
block by delay lines, and the framing flags travel with the weights.

Each PE is pipelined: the product is registered, then added. On a tile's ``last`` beat the PE copies its
finished sum into a shadow register and the next tile's ``first`` beat restarts the accumulator in the same
cycle, so tiles follow each other with no bubble. The shadows of column ``c`` are complete one cycle after the
bottom PE of column ``c`` finishes; columns finish on consecutive cycles, and the output register takes one
column per cycle (de-skew by timing, not by extra delay lines).

Two consecutive ``last`` beats must be at least :func:`min_tile_beats` cycles apart so that a column is taken
before the next tile overwrites its shadows; the block enforces this itself by holding a too-early ``last`` beat
(``i_beats.ready`` low) and letting bubbles into the array meanwhile. Tiles at least that long (every tile of a
real convolution layer but the shallowest) run at one beat per cycle.

Back-pressure on ``o_columns`` stalls the whole array (one clock enable), which keeps every timing relation. On
target ``"ecp5"`` the array never stalls: the ``rows x cols`` PEs' registers and multiplier blocks of the ULX3S
(some 14,000 flip-flops) would otherwise all wait on ``o_columns.ready`` in the cycle it arrives. Its finished
columns go through the output register into a FIFO (:func:`column_fifo_depth`, :func:`column_fifo_latency`), and a
tile's ``last`` beat enters only once the FIFO has room reserved for the tile's columns
(:func:`~.streamer.credit_fifo`); the beats before it keep entering, so a long back-pressure holds the input at the
next ``last`` beat. Its flags have no reset: the flush that ends a run would reach them across the die (the routed
ULX3S's slowest net). After a reset the flags still in flight come out as before, and column ``c`` writes nothing
into the FIFO until its last such flag has passed (:func:`flush_drain_cycles`); a flag entering after the reset
reaches every column later than that.

Target ``"ice40"`` (``config.target``, at most a few rows and columns: 4x4 on the iCEBreaker) is a different
array with the same numbers, built for the iCE40UP5K's few logic cells:

* broadcast instead of systolic: beat ``k``'s weight ``wgt[r]`` goes to every PE of row ``r`` and its activation
  ``act[c]`` to every PE of column ``c`` in the same cycle, so there are no skew lines, no hop registers and one
  set of framing flags for the whole array. The products come from ``SB_MAC16`` blocks, two PEs per block
  (:class:`~.dsp.DualMac8`), whose own input and product registers are the two pipeline stages and whose own
  16-bit accumulators hold the low half of each sum: only the ``acc_width - 16`` high bits are fabric
  flip-flops, a counter that follows bit 15 of the low half (a product's carry or borrow out of it) one cycle
  after each accumulation;
* no shadows: a finished tile stays in the accumulators, which are the output buffer. ``o_columns`` always shows
  column 0; taking it shifts every column one place towards column 0 (the blocks' accumulator load, the high
  parts in fabric), column ``cols - 1`` loading zeros, so there is no column multiplexer and a drained tile
  leaves cleared accumulators behind: a tile's first beat adds to zero like any other and no PE needs a restart
  multiplexer. The next tile's ``first`` beat enters (``i_beats.ready`` low until then) the cycle after the
  last column is taken, so the array never stalls and its blocks run on every cycle. A tile therefore costs
  ``K`` beats plus its drain plus 3 cycles (:func:`ice40_tile_cycles`). The serial requantizer of that target
  reads one accumulator at a time: ``drain_acc`` shows row ``drain_row`` of the column ``o_columns`` shows, so
  the column is never copied.

With ``config.target == "ecp5"`` each product comes from a ``MULT18X18D`` (hw/dsp_ecp5.py) whose input
registers load the same operands as the PE's hop registers and whose output register is the product stage; the
product then crosses one more register in the fabric before the accumulator (the flags wait with it), because
the multiplier blocks sit in a few fixed rows of the die and the route from a block to its accumulator's carry
chain alone took 6.3 ns of the 8 (out of context, 105.6 MHz). Same numbers, one cycle more of
:func:`array_latency` (and one more for the output register in front of the FIFO).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .dsp import DualMac8
from .dsp_ecp5 import Mult18x18D
from .memory_map import COPY_ATTR
from .streamer import PIPELINED_FIFO_LATENCY, credit_fifo

__all__ = ["SystolicArray", "beat_layout", "column_layout", "min_tile_beats", "array_latency", "ice40_tile_cycles",
           "column_fifo_depth", "column_fifo_latency", "flush_drain_cycles"]


def beat_layout(config):
    """One input beat: ``act[cols]`` and ``wgt[rows]`` int8 operands, and the tile framing flags."""
    return data.StructLayout({
        "act":   data.ArrayLayout(signed(config.operand_width), config.cols),
        "wgt":   data.ArrayLayout(signed(config.operand_width), config.rows),
        "first": 1,
        "last":  1,
    })


def column_layout(config):
    """One output beat: the ``rows`` accumulators of column ``col`` of a finished tile."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(config.acc_width), config.rows),
        "col": range(config.cols),
    })


def min_tile_beats(config):
    """Fewest cycles between two ``last`` beats: the columns of a tile drain one per cycle (``cols``) and the top
    row's shadow must outlive the bottom row's finish by one cycle (``rows + 1``).

    Target ``"ice40"`` has no shadows and no spacing: its tiles cost :func:`ice40_tile_cycles` instead (1 here)."""
    if config.target == "ice40":
        return 1
    return max(config.cols, config.rows + 1)


def array_latency(config):
    """Cycles from a tile's ``last`` beat entering to its column 0 in the output register (no stalls)."""
    if config.target == "ice40":
        # product register (the operand registers in the SB_MAC16 are the input register), accumulate, the high
        # parts' count.
        return 3
    # input register, rows-1 skew + rows-1 hops down (act) / the weight skew and hops, product, accumulate,
    # output register; on the ECP5 the product also crosses a fabric register (see the module docstring), and
    # the column picked from the shadows is registered before the output FIFO's write.
    return config.rows + 3 + 2 * (config.target == "ecp5")


def flush_drain_cycles(config):
    """Target ``"ecp5"``: a flag in the input register as the (reset-less) array is reset reaches the bottom PE
    of column ``c`` ``rows + c + 2`` cycles later (``rows - 1`` of skew, ``c + 1`` hops, the block's and the
    product's flag registers). The drain counter starts at ``rows + cols + 2`` as the reset ends and steps down
    each cycle; column ``c`` writes from the cycle after it is at most ``cols + 1 - c``, which is the cycle after
    that flag's. A beat taken after the reset finishes column ``c`` at least a cycle later still."""
    return config.rows + config.cols + 2


def column_fifo_depth(config):
    """Target ``"ecp5"``: columns the output FIFO holds. A tile reserves its ``cols`` columns when its last beat
    enters and each take returns one; tiles at least :func:`min_tile_beats` apart keep at most
    ``ceil((array_latency + column_fifo_latency + cols) / min_tile_beats)`` tiles reserved while a consumer that
    takes one column a cycle drains them, and one more is entering. To the next power of two."""
    if config.target != "ecp5":
        return 0
    gap = min_tile_beats(config)
    tiles = -(-(array_latency(config) + column_fifo_latency(config) + config.cols) // gap) + 1
    return 1 << (config.cols * tiles - 1).bit_length()


def column_fifo_latency(config):
    """Target ``"ecp5"``: cycles from a column's write into the output FIFO to its ``o_columns.valid``
    (:data:`~.streamer.PIPELINED_FIFO_LATENCY`: the FIFO's block RAMs are read through two registers into a queue
    of registers, so that the consumer, across the die, starts at registers); 0 elsewhere (no FIFO)."""
    return PIPELINED_FIFO_LATENCY if config.target == "ecp5" else 0


def ice40_tile_cycles(depth, drain):
    """Target ``"ice40"``: cycles from one tile's ``last`` accumulate to the next one's, for a tile of ``depth``
    beats following a tile whose columns were taken ``drain`` cycles after the first one showed (``drain`` counts
    the cycle of the last take; ``cols`` with a consumer that takes one column per cycle), beats back to back.

    The tile shows its columns the cycle after its last accumulation (its high parts count it meanwhile); the
    next tile's ``first`` beat enters the cycle after the last take and accumulates two cycles later."""
    return depth + drain + 3


def _or_all(values):
    """The bitwise OR of ``values``, as a balanced tree."""
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i] for i in range(0, len(values), 2)]
    return values[0]


class SystolicArray(wiring.Component):
    """Output-stationary ``rows x cols`` systolic array with internal skew, de-skew and double-buffered drain.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``rows``, ``cols``, ``acc_width`` and ``target``.
    dsp_model : bool
        Build the target's multiplier blocks from their plain models (:class:`~.dsp.DualMac8` with target
        ``"generic"``, :class:`~.dsp_ecp5.Mult18x18D` without the primitive) while keeping the target's array:
        for the Amaranth simulator, which cannot run a vendor primitive. Default ``False``.

    Members
    -------
    i_beats : In(stream.Signature(beat_layout(config)))
        One beat per reduction step of a tile.
    o_columns : Out(stream.Signature(column_layout(config)))
        ``cols`` beats per tile, columns in order. Accumulators wrap modulo ``2**acc_width``.
    restart : In(1)
        Target ``"ice40"`` only: a new layer starts. Columns still pending (a layer's last columns past its
        pixels, which its consumer need not take) are dropped, so the next tile's ``first`` beat need not wait.
    drain_row : In(range(rows))
        Target ``"ice40"`` only: the row ``drain_acc`` shows.
    drain_acc : Out(signed(acc_width))
        Target ``"ice40"`` only: the accumulator of row ``drain_row`` of the column ``o_columns`` shows.
    col_next : Out(range(cols))
        Target ``"ice40"`` only: the column ``o_columns`` shows in the next cycle (``payload.col`` moves on with
        each take and back to 0 with ``restart``), for a consumer that registers its decisions a cycle ahead.
    room : Out(1)
        Target ``"ecp5"`` only: the output FIFO has room reserved for one more tile's columns (a register; it
        falls only with a ``last`` beat's entry). A producer whose beats reach ``i_beats`` a fixed number of
        cycles after it decides them, with no stall between, may hold a ``last`` beat at that decision instead:
        spaced by :func:`min_tile_beats` and with ``room`` then, it is taken on arrival, provided no other
        ``last`` beat arrives in between (hw/conv_engine.py does this).
    holding_next : Out(1)
        Target ``"ice40"`` only: whether a tile's ``first`` beat will be held in the next cycle (``i_beats.ready``
        is then ``~(first & holding_next)``), for a producer that registers its advance a cycle ahead.
    """

    def __init__(self, config, *, dsp_model=False):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self._config = config
        self._dsp_model = bool(dsp_model)
        members = {
            "i_beats":   In(stream.Signature(beat_layout(config))),
            "o_columns": Out(stream.Signature(column_layout(config))),
        }
        if config.target == "ecp5":
            members["room"] = Out(1)
        if config.target == "ice40":
            members.update({"restart": In(1), "drain_row": In(range(config.rows)),
                            "drain_acc": Out(signed(config.acc_width)), "col_next": Out(range(config.cols)),
                            "holding_next": Out(1)})
        super().__init__(members)

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        if self._config.target == "ice40":
            return self._elaborate_broadcast()
        m = Module()
        cfg = self._config
        rows, cols = cfg.rows, cfg.cols
        free = cfg.target == "ecp5"
        # Spacing of last beats (see min_tile_beats), counted in enabled cycles.
        gap = min_tile_beats(cfg)
        since_last = Signal(range(gap + 1), init=gap)
        # ``since_last >= gap - 1``, registered from the counter's next value: a LUT less before ``ready``, which
        # the producer's many enables wait on.
        spaced = Signal(init=1)
        beat = self.i_beats.payload
        if free:
            # No enable (see the module docstring): a tile's last beat enters only with room reserved for its
            # columns in the output FIFO, so nothing in the array ever waits on ``o_columns.ready``.
            en = Const(1)
            column = Signal(column_layout(cfg), name="column", reset_less=True)
            take = self.i_beats.valid & self.i_beats.ready
            # A tile's columns are reserved as its last beat enters (streamer.credit_fifo).
            fifo, room = credit_fifo(m, "out_fifo", self.o_columns, width=column.shape().size,
                                     depth=column_fifo_depth(cfg), reserve=take & beat.last, chunk=cols,
                                     pipelined=True)
            m.d.comb += [fifo.w_data.eq(column), self.i_beats.ready.eq(~beat.last | (spaced & room)),
                         self.room.eq(room)]
        else:
            en = Signal()
            m.d.comb += en.eq(~self.o_columns.valid | self.o_columns.ready)
            m.d.comb += self.i_beats.ready.eq(en & (~beat.last | spaced))
            take = self.i_beats.valid & self.i_beats.ready

        # Input register: a refused or missing beat enters as a bubble.
        in_valid, in_first, in_last = Signal(), Signal(), Signal()
        # Operands, products and sums are reset-less (here and below): they mean something only with the flags,
        # which have the reset, and a reset of their own would reach some 14,000 flip-flops on the ULX3S.
        in_act = Signal(beat_layout(cfg).members["act"], reset_less=True)
        in_wgt = Signal(beat_layout(cfg).members["wgt"], reset_less=True)
        with m.If(en):
            m.d.sync += [in_valid.eq(take), in_first.eq(beat.first), in_last.eq(beat.last),
                         in_act.eq(beat.act), in_wgt.eq(beat.wgt)]
            # The compare is made on the count, and the late ``take`` only picks it or the restart's constant.
            # ``counted >= gap - 1`` is ``since_last >= gap - 2`` (the count saturates at gap): a compare with a
            # constant, not behind the increment's carry chain.
            counted = Mux(since_last != gap, since_last + 1, since_last)
            m.d.sync += [since_last.eq(Mux(take & beat.last, 0, counted)),
                         spaced.eq(Mux(take & beat.last, gap <= 1, since_last >= gap - 2))]

        def delayed(value, cycles, name, reset_less=False):
            """``value`` delayed by ``cycles`` enabled cycles."""
            for i in range(cycles):
                reg = Signal.like(value, name=f"{name}_d{i}", reset_less=reset_less)
                with m.If(en):
                    m.d.sync += reg.eq(value)
                value = reg
            return value

        # Skew: row r's weight and flags, and column c's activation, wait r (c) cycles before the first PE.
        flags_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1})
        west = []
        for r in range(rows):
            flags = Signal(flags_layout, name=f"flags_in_{r}")
            m.d.comb += [flags.valid.eq(in_valid), flags.first.eq(in_first), flags.last.eq(in_last)]
            west.append((delayed(in_wgt[r], r, f"wgt_skew_{r}", True), delayed(flags, r, f"flags_skew_{r}", free)))
        north = [delayed(in_act[c], c, f"act_skew_{c}", True) for c in range(cols)]

        def pe_flags(name, **kwargs):
            """A PE's flag register: in the free-running (ECP5) array three reset-less flip-flops, each with its
            own name (see the module docstring and ``drain`` below)."""
            if not free:
                return Signal(flags_layout, name=name, **kwargs)
            return data.View(flags_layout, Cat(*(Signal(name=f"{name}_{n}", reset_less=True, **kwargs)
                                                 for n in ("valid", "first", "last"))))

        shadow = [[None] * cols for _ in range(rows)]
        column_done = [Signal(name=f"column_done_{c}", reset_less=free) for c in range(cols)]
        if free:
            # After a reset the flags in flight still finish their columns: column c writes once its last such
            # flag is out (flush_drain_cycles): the drain counter is compared in each column's ``finishing``.
            drain_cycles = flush_drain_cycles(cfg)
            drain = Signal(range(drain_cycles + 1), init=drain_cycles, name="drain")
            with m.If(drain != 0):
                m.d.sync += drain.eq(drain - 1)
        finishing = []      # column_done's next values
        for r in range(rows):
            wgt_in, flags_in = west[r]
            for c in range(cols):
                act_in = north[c]
                # Operand registers: the systolic hops (right for weights and flags, down for activations).
                act = Signal(signed(8), name=f"act_{r}_{c}", reset_less=True)
                wgt = Signal(signed(8), name=f"wgt_{r}_{c}", reset_less=True)
                flags = pe_flags(f"flags_{r}_{c}")
                # Product stage, then accumulate stage.
                product = Signal(signed(16), name=f"product_{r}_{c}", reset_less=True)
                # On the ECP5 each PE keeps its own (COPY_ATTR): every PE of an anti-diagonal has the same flags,
                # and yosys merged them into one register whose ``first``/``valid``/``last`` reached the
                # accumulators of up to eight PEs across the DSP rows (routed 5 to 10 ns, docs/decisions.md
                # session 17). Here the copy is one hop from the merged flags before it, and beside its PE.
                pflags = pe_flags(f"pflags_{r}_{c}", **({"attrs": {COPY_ATTR: 1}} if free else {}))
                acc = Signal(signed(cfg.acc_width), name=f"acc_{r}_{c}", reset_less=True)
                done = Signal(signed(cfg.acc_width), name=f"shadow_{r}_{c}", reset_less=True)
                total = Signal(signed(cfg.acc_width), name=f"sum_{r}_{c}")
                m.d.comb += total.eq(Mux(pflags.first, 0, acc) + product)
                flags_before_product = flags
                if cfg.target == "ecp5":
                    # The block's input registers mirror act/wgt (which still carry the operands on), its
                    # output register is the product register; a fabric register near the block follows it.
                    mult = m.submodules[f"mult_{r}_{c}"] = Mult18x18D(8, 8, primitive=not self._dsp_model)
                    m.d.comb += [mult.a.eq(act_in), mult.b.eq(wgt_in), mult.ce.eq(en)]
                    product_update = [product.eq(mult.p)]
                    block_flags = pe_flags(f"bflags_{r}_{c}")
                    with m.If(en):
                        m.d.sync += block_flags.eq(flags)
                    flags_before_product = block_flags
                else:
                    product_update = [product.eq(act * wgt)]
                with m.If(en):
                    m.d.sync += [act.eq(act_in), wgt.eq(wgt_in), flags.eq(flags_in), pflags.eq(flags_before_product)]
                    m.d.sync += product_update
                    with m.If(pflags.valid):
                        m.d.sync += acc.eq(total)
                        with m.If(pflags.last):
                            m.d.sync += done.eq(total)
                    if r == rows - 1 and free:
                        # Whether the column finishes now, a register set a cycle ahead from the block's flags
                        # (``pflags`` is ``block_flags`` a cycle on) and the drain count (``drain <= cols + 1 - c``
                        # a cycle on, as the column's own register had it): the AND of the flags and that
                        # register, routed to the rows' copies below, was a routed build's failing path.
                        done_now = Signal(name=f"finishing_{c}")
                        m.d.sync += done_now.eq(block_flags.valid & block_flags.last & (drain <= cols + 1 - c))
                        m.d.sync += column_done[c].eq(done_now)
                        finishing.append(done_now)
                    elif r == rows - 1:
                        done_now = pflags.valid & pflags.last
                        m.d.sync += column_done[c].eq(done_now)
                        finishing.append(done_now)
                shadow[r][c] = done
                act_in = act
                north[c] = act
                wgt_in, flags_in = wgt, flags

        # Output register: at most one column finishes per cycle (tiles are >= cols cycles apart), so the flags
        # are one-hot and each output bit is an OR of AND terms (a few LUT levels), not a chain of ``cols``
        # multiplexers. Nothing reads the payload while ``valid`` is low.
        any_done = Signal(name="any_done")
        if free:
            # A register of its own, set from the flags column_done is set from: the FIFO's write enable, and
            # through it the FIFO's level, then start at a flip-flop, not at an OR of flags across the array.
            m.d.sync += any_done.eq(Cat(*finishing).any())
        else:
            m.d.comb += any_done.eq(Cat(*column_done).any())
        col = _or_all([Mux(column_done[c], c, 0) for c in range(cols)])
        select = [column_done] * rows
        if free:
            # Each row's shadows are picked by a copy of the column flags of its own (COPY_ATTR): one flag
            # reached the multiplexers of every row's 32 bits (a routed build's slowest paths, 10 ns of routing
            # from the flag to the first LUT, docs/decisions.md session 18).
            select = [[Signal(name=f"column_done_{c}_row_{r}", reset_less=True, attrs={COPY_ATTR: 1})
                       for c in range(cols)] for r in range(rows)]
            m.d.sync += [select[r][c].eq(finishing[c]) for r in range(rows) for c in range(cols)]
        accs = [_or_all([Mux(select[r][c], shadow[r][c].as_unsigned(), 0) for c in range(cols)])
                for r in range(rows)]
        if free:
            # The output register, then the FIFO's write port: the multiplexers' three LUT levels and the route
            # to the FIFO's block RAMs in one cycle were a routed build's failing group (3.7 ns of one net).
            write = Signal(name="column_write")
            m.d.sync += [write.eq(any_done), column.col.eq(col)]
            m.d.sync += [column.acc[r].eq(acc) for r, acc in enumerate(accs)]
            m.d.comb += fifo.w_en.eq(write)
            return m
        with m.If(en):
            m.d.sync += self.o_columns.valid.eq(any_done)
            with m.If(any_done):
                m.d.sync += self.o_columns.payload.col.eq(col)
                m.d.sync += [self.o_columns.payload.acc[r].eq(acc) for r, acc in enumerate(accs)]
        return m

    def _elaborate_broadcast(self):
        """Target ``"ice40"``: broadcast operands, SB_MAC16 multiply-accumulates, the sums shifted out by column."""
        m = Module()
        cfg = self._config
        rows, cols = cfg.rows, cfg.cols
        o = self.o_columns
        beat = self.i_beats.payload

        # A tile's first beat enters only once the previous tile has left (``holding`` low): the array never
        # stalls, so the SB_MAC16 registers run on every cycle and their accumulators can shift while bubbles
        # pass. Not waiting on the last take itself keeps o_columns.ready off the path to i_beats.ready.
        holding = Signal()
        m.d.comb += self.i_beats.ready.eq(~(beat.first & holding))
        take = self.i_beats.valid & self.i_beats.ready

        # The operands are registered inside the SB_MAC16 blocks; only the framing flags follow in fabric, one
        # copy for the whole array, and the operands' signs (see the high parts below). A missing beat enters as
        # a bubble (valid low), its operands are don't-care.
        flags_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1})
        in_flags, pflags = Signal(flags_layout), Signal(flags_layout)
        signs_layout = data.StructLayout({"act": cols, "wgt": rows})
        # Data registers are reset-less (here and below): a restart clears what needs clearing itself, and a reset
        # of their own would put the reset and the flush into every one of their enables.
        in_signs, psigns, asigns = (Signal(signs_layout, reset_less=True), Signal(signs_layout, reset_less=True),
                                    Signal(signs_layout, reset_less=True))
        m.d.sync += [in_flags.valid.eq(take), in_flags.first.eq(beat.first), in_flags.last.eq(beat.last),
                     pflags.eq(in_flags), psigns.eq(in_signs)]
        m.d.sync += [in_signs.act[c].eq(beat.act[c][-1]) for c in range(cols)]
        m.d.sync += [in_signs.wgt[r].eq(beat.wgt[r][-1]) for r in range(rows)]

        full = Signal()
        next_col = Signal(range(cols))
        # ``taken`` and each high part's carry and borrow are kept wires: every high part's enable is then one LUT
        # after ``taken`` (the output handshake, late and routed to blocks at both edges of the die), where
        # yosys's ABC shared it through a LUT of its own first (nextpnr's critical path, 29.7 ns).
        taken = Signal(name="taken", attrs={"keep": 1})
        m.d.comb += [o.valid.eq(full), o.payload.col.eq(next_col), taken.eq(o.valid & o.ready)]
        # A restart drops the pending columns: the blocks' asynchronous output reset, from a flip-flop, clears
        # the accumulators in the cycle after it (long before a new layer's first beat reaches them).
        restarted = Signal()
        m.d.sync += restarted.eq(self.restart)

        # Each SB_MAC16 accumulates the low 16 bits of its two PEs (the block's own output registers). Taking a
        # column shifts every column one place towards column 0 through the blocks' accumulator load (column
        # ``cols - 1`` loads 0), so the output is always column 0: no column multiplexer, and a drained tile
        # leaves zeros behind for the next one.
        target = "generic" if self._dsp_model else cfg.target
        pes = [(r, c) for c in range(cols) for r in range(rows)]
        low, load_in = {}, {}
        for i in range(0, len(pes), 2):
            mac = m.submodules[f"mac_{i // 2}"] = DualMac8(target)
            m.d.comb += [mac.ce.eq(1), mac.hold.eq(~(pflags.valid | taken)), mac.load.eq(taken),
                         mac.clear.eq(restarted)]
            for (r, c), (a, b, s, ld) in zip(pes[i:i + 2], [(mac.a0, mac.b0, mac.s0, mac.c0),
                                                             (mac.a1, mac.b1, mac.s1, mac.c1)]):
                m.d.comb += [a.eq(beat.act[c]), b.eq(beat.wgt[r])]
                low[r, c], load_in[r, c] = s, ld
        for (r, c), ld in load_in.items():
            m.d.comb += ld.eq(low[r, c + 1] if c + 1 < cols else 0)

        # The high ``acc_width - 16`` bits of each accumulator are a fabric counter: a product (|p| <= 2**14)
        # carries out of the low half exactly when it is not negative and bit 15 falls from 1 to 0, and borrows
        # exactly when it is negative and bit 15 rises from 0 to 1. Bit 15 after the addition shows a cycle
        # later, so the count follows one cycle after each accumulation (``counted``), from bit 15 before it
        # and the product's sign (the operands' signs: a zero product never moves bit 15). The high parts shift
        # with their columns.
        counted = Signal()
        m.d.sync += counted.eq(pflags.valid)
        with m.If(pflags.valid):
            m.d.sync += asigns.eq(psigns)
        upper = {pe: Signal(cfg.acc_width - 16, name=f"high_{pe[0]}_{pe[1]}", reset_less=True) for pe in pes}
        for (r, c), s in low.items():
            before = Signal(name=f"msb_{r}_{c}", reset_less=True)
            with m.If(pflags.valid):
                m.d.sync += before.eq(s[15])
            negative = asigns.act[c] ^ asigns.wgt[r]
            up = Signal(name=f"carry_{r}_{c}", attrs={"keep": 1})
            down = Signal(name=f"borrow_{r}_{c}", attrs={"keep": 1})
            m.d.comb += [up.eq(counted & ~negative & before & ~s[15]), down.eq(counted & negative & ~before & s[15])]
            # Cleared a cycle after a restart, as the blocks' low halves are, from the local flip-flop: nothing
            # moves them in that cycle (``full`` falls with the restart), and the restart, a few LUTs deep in the
            # conv engine, stays off their enables (nextpnr's critical path at 38.2 MHz).
            with m.If(restarted):
                m.d.sync += upper[r, c].eq(0)
            with m.Elif(taken):
                m.d.sync += upper[r, c].eq(upper[r, c + 1] if c + 1 < cols else 0)
            with m.Elif(up | down):
                m.d.sync += upper[r, c].eq(upper[r, c] + Mux(down, -1, 1))

        heads = [Signal(signed(cfg.acc_width), name=f"head_{r}") for r in range(rows)]
        m.d.comb += [head.eq(Cat(low[r, 0], upper[r, 0])) for r, head in enumerate(heads)]
        m.d.comb += [o.payload.acc[r].eq(head) for r, head in enumerate(heads)]
        m.d.comb += self.drain_acc.eq(Array(heads)[self.drain_row])

        # A tile is full the cycle after its last accumulation, when its high parts have counted it.
        finished = Signal()
        m.d.sync += finished.eq(pflags.valid & pflags.last)
        emptied = Signal()
        m.d.comb += emptied.eq(taken & (next_col == cols - 1))
        with m.If(self.restart):
            m.d.comb += self.col_next.eq(0)
        with m.Elif(taken):
            m.d.comb += self.col_next.eq(Mux(next_col == cols - 1, 0, next_col + 1))
        with m.Else():
            m.d.comb += self.col_next.eq(next_col)
        m.d.sync += next_col.eq(self.col_next)
        m.d.comb += self.holding_next.eq(holding)
        with m.If(take & beat.first):
            m.d.comb += self.holding_next.eq(1)
        with m.If(emptied):
            m.d.sync += full.eq(0)
            m.d.comb += self.holding_next.eq(0)
        with m.If(finished):
            m.d.sync += full.eq(1)
        with m.If(self.restart):
            m.d.sync += full.eq(0)
            m.d.comb += self.holding_next.eq(0)
        m.d.sync += holding.eq(self.holding_next)
        return m
