"""Feature maps between memory and engines: :class:`MemoryReader` streams rows out of a memory,
:class:`MemoryWriter` stores a stream of rows into one. Both run at one row per cycle without stalls.

:func:`credit_fifo` is the output FIFO of a pipeline that never waits on its consumer (the ECP5 array and
requantizer): it admits work only against room reserved for its results."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .memory_map import COPY_ATTR, ReadPortSignature, WritePortSignature, registered_read

__all__ = ["transfer_layout", "MemoryReader", "MemoryWriter", "credit_fifo", "PipelinedFIFO",
           "PIPELINED_FIFO_LATENCY"]


#: Cycles from a word's write into a :class:`PipelinedFIFO` to its ``r_rdy`` (1 for Amaranth's ``SyncFIFO``
#: behind :func:`credit_fifo`'s registered ``valid``).
PIPELINED_FIFO_LATENCY = 4


class PipelinedFIFO(wiring.Component):
    """A FIFO of ``depth`` words of ``width`` bits whose storage is read through two registers into a queue of four
    registered words, whose head is the read data: ``r_rdy`` is a register and ``r_data`` a multiplexer of
    registers. Nothing between the write side and the reader's ``r_en`` is combinational, so the storage may sit
    far from its reader. The storage is block RAM (``ram_style``: yosys put the array's 64 words in distributed
    RAM, whose write enable and data reached some 280 cells), split into memories at most 18 bits wide: in an
    ECP5 block RAM at that width the two registers are the block's synchronous read and its output register
    (boards/outreg.py).

    Interface as ``SyncFIFO``'s (``w_data``, ``w_en``, ``w_rdy``, ``r_data``, ``r_en``, ``r_rdy``), but a word is
    readable :data:`PIPELINED_FIFO_LATENCY` cycles after its write, and ``w_rdy`` (high while the storage has
    room) does not gate the write: ``w_en`` must be low while ``w_rdy`` is. Its user, :func:`credit_fifo`, never
    writes without room reserved, and its write enable, a register, then reaches the block RAMs with no compare
    in front (``stored != depth`` there, and its route to every block, was a routed build's failing path).
    """

    _QUEUE = 4

    def __init__(self, *, width, depth):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth!r}")
        self.width, self.depth = width, depth
        super().__init__({"w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
                          "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        depth, queue = self.depth, self._QUEUE
        w_ptr, r_ptr = Signal(range(depth), name="w_ptr"), Signal(range(depth), name="r_ptr")
        stored = Signal(range(depth + 1), name="stored")        # written, not yet read out of the storage
        avail = Signal(name="avail")                            # stored != 0, from the count's next value
        wrote = self.w_en
        # A read is issued while the queue has room for it and the two reads in flight, counted without this
        # cycle's take (then every word of the queue, in flight or held, has a slot of its own): ``space``, a
        # register set from the counts' next values, so that ``issue`` is an AND of two flip-flops.
        q_count = Signal(range(queue + 1), name="q_count")
        flight = [Signal(name=f"flight_{i}") for i in range(2)]
        issue = Signal(name="issue")
        space = Signal(name="space", init=1)
        m.d.comb += [issue.eq(avail & space), self.w_rdy.eq(stored != depth)]
        m.d.sync += [stored.eq(stored + wrote - issue),
                     avail.eq(Mux(issue, stored > 1, stored != 0) | wrote),
                     flight[0].eq(issue), flight[1].eq(flight[0])]
        with m.If(wrote):
            m.d.sync += w_ptr.eq(Mux(w_ptr == depth - 1, 0, w_ptr + 1))
        with m.If(issue):
            m.d.sync += r_ptr.eq(Mux(r_ptr == depth - 1, 0, r_ptr + 1))
        # The storage, 18 bits a memory. The read address is r_ptr itself; a word is read at the earliest the
        # cycle after its write, so no read collides with a write (no_rw_check: no bypass logic).
        pieces = []
        for k, lo in enumerate(range(0, self.width, 18)):
            hi = min(lo + 18, self.width)
            mem = m.submodules[f"storage_{k}"] = Memory(shape=hi - lo, depth=depth, init=[],
                                                        attrs={"no_rw_check": 1, "ram_style": "block"})
            wp = mem.write_port()
            m.d.comb += [wp.addr.eq(w_ptr), wp.data.eq(self.w_data[lo:hi]), wp.en.eq(wrote)]
            rp = mem.read_port(domain="comb")
            m.d.comb += rp.addr.eq(r_ptr)
            first = registered_read(m, rp, issue, f"read_{k}")
            second = Signal(hi - lo, name=f"read2_{k}", reset_less=True)
            m.d.sync += second.eq(first)
            pieces.append(second)
        arriving = Cat(*pieces)
        # The queue: words written at ``tail``, read at ``head``.
        words = Array(Signal(self.width, name=f"queue_{i}", reset_less=True) for i in range(queue))
        head, tail = Signal(range(queue), name="head"), Signal(range(queue), name="tail")
        # ``r_rdy`` twice, both copies marked (COPY_ATTR: a copy without the mark is merged into the marked one,
        # as afd0900's build did): one for the reader, across the die, one for the queue's own logic.
        r_rdy_out = Signal(name="r_rdy_out", attrs={COPY_ATTR: 1})
        r_rdy_here = Signal(name="r_rdy_here", attrs={COPY_ATTR: 1})
        m.d.comb += self.r_rdy.eq(r_rdy_out)
        take = r_rdy_here & self.r_en
        with m.If(flight[1]):
            m.d.sync += [words[tail].eq(arriving), tail.eq(tail + 1)]
        with m.If(take):
            m.d.sync += head.eq(head + 1)
        q_next = Signal(range(queue + 1), name="q_next")
        m.d.comb += q_next.eq(q_count + flight[1] - take)
        r_rdy_next = flight[1] | (q_count > 1) | ((q_count == 1) & ~take)
        m.d.sync += [q_count.eq(q_next), space.eq(q_next + issue + flight[0] < queue),
                     r_rdy_out.eq(r_rdy_next), r_rdy_here.eq(r_rdy_next)]
        m.d.comb += self.r_data.eq(words[head])
        return m


def credit_fifo(m, name, output, *, width, depth, reserve, chunk, lead=0, pipelined=False, room_copies=0):
    """A FIFO of ``depth`` words of ``width`` bits in front of the stream ``output``, for a pipeline with no
    enable: the pipeline reserves room for ``chunk`` results (``reserve`` high) in the cycle it takes the work that
    makes them, and takes work only while ``room`` (returned with the FIFO, whose ``w_data`` and ``w_en`` the
    caller drives) is high. The words reserved and not yet read are counted in a register, and ``room`` is a
    register that sees the reads a cycle late (it is then a little cautious): the consumer's ``ready`` only picks
    the count's step, it is not in front of a compare and the pipeline's input. Both of the next ``room``'s
    values are compared from registers, so ``reserve`` (a late signal, the pipeline's handshake) only picks one.

    With ``lead`` (cycles, 0 by default), ``room`` is high only while there is room for ``lead`` more chunks
    besides: a producer may then decide on ``room`` ``lead`` cycles before its work arrives and reserve it.

    With ``pipelined``, the FIFO is a :class:`PipelinedFIFO` (its words readable
    :data:`PIPELINED_FIFO_LATENCY` cycles after their write, not 1).

    With ``room_copies`` (a count, 0 by default) ``room`` is that many flip-flops more, all marked COPY_ATTR, and
    returned third, as a list: for consumers placed apart."""
    if pipelined:
        m.submodules[name] = fifo = PipelinedFIFO(width=width, depth=depth)
        m.d.comb += [output.valid.eq(fifo.r_rdy), output.payload.eq(fifo.r_data), fifo.r_en.eq(output.ready)]
    else:
        m.submodules[name] = fifo = SyncFIFO(width=width, depth=depth)
        # ``output.valid`` is a register that follows ``level != 0`` (the FIFO's own ``r_rdy``, a compare of its
        # level), set from the level's next value: the consumer's enables then start at a flip-flop.
        nonempty = Signal(name=f"{name}_nonempty")
        wrote, took = fifo.w_en & fifo.w_rdy, nonempty & output.ready
        m.d.sync += nonempty.eq(wrote | (fifo.level > 1) | ((fifo.level == 1) & ~took))
        m.d.comb += [output.valid.eq(nonempty), output.payload.eq(fifo.r_data), fifo.r_en.eq(output.ready)]
    # ``used`` (reservations less reads) is a register of its own, stepped by one adder whose operand the two
    # handshakes pick: a difference of two counters was a subtraction before the compares (a carry chain more
    # between registers and ``room``, the estimate's slowest path after session 16).
    used = Signal(range(depth + 1), name=f"{name}_used")
    marked = {"attrs": {COPY_ATTR: 1}} if room_copies else {}
    rooms = [Signal(init=1, name=f"{name}_room", **marked)] + [
        Signal(init=1, name=f"{name}_room_{i}", **marked) for i in range(1, room_copies + 1)]
    room_next = Mux(reserve, used <= depth - (2 + lead) * chunk, used <= depth - (1 + lead) * chunk)
    m.d.sync += [room.eq(room_next) for room in rooms]
    read = output.valid & output.ready
    step = Mux(reserve, Mux(read, chunk - 1, chunk), Mux(read, -1, 0))
    m.d.sync += used.eq(used + step)
    return (fifo, rooms[0], rooms[1:]) if room_copies else (fifo, rooms[0])


def transfer_layout(spec):
    """A transfer: ``count`` rows from row ``base``."""
    return data.StructLayout({"base": range(spec.depth), "count": range(spec.depth + 1)})


class MemoryReader(wiring.Component):
    """Streams rows ``base .. base + count - 1`` of a memory through a read port, in order.

    Parameters
    ----------
    spec : MemorySpec
    latency : int, optional
        The read port's latency (:class:`~cnnacc.hw.memory_map.ReadPortSignature`): 1 (by default), or 2 for a
        port that is a two-stage pipeline moving on ``en`` (a memory map's ``engine_register``). With 2 the first
        row comes a cycle later; after it, one row per cycle as with 1.

    Members
    -------
    i_transfer : In(stream.Signature(transfer_layout(spec)))
    o_rows : Out(stream.Signature(spec.width))
    port : Out(ReadPortSignature(spec))
    busy : Out(1)
    """

    def __init__(self, spec, *, latency=1):
        if latency not in (1, 2):
            raise ValueError(f"read latency must be 1 or 2 cycles, not {latency!r}")
        self._spec = spec
        self._latency = latency
        super().__init__({
            "i_transfer": In(stream.Signature(transfer_layout(spec))),
            "o_rows": Out(stream.Signature(spec.width)),
            "port": Out(ReadPortSignature(spec)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        addr = Signal(range(self._spec.depth + 1))
        remaining = Signal(range(self._spec.depth + 1))
        if self._latency == 2:
            return self._elaborate_pipelined(m, addr, remaining)
        m.d.comb += [self.i_transfer.ready.eq((remaining == 0) & ~self.o_rows.valid),
                     self.busy.eq((remaining != 0) | self.o_rows.valid)]
        with m.If(self.i_transfer.valid & self.i_transfer.ready):
            m.d.sync += [addr.eq(self.i_transfer.payload.base), remaining.eq(self.i_transfer.payload.count)]

        # The read port holds its data while not enabled, so its output is the stream's payload: a new row is
        # read only when the one on offer is being taken (or none is on offer).
        fetch = Signal()
        m.d.comb += [
            fetch.eq((remaining != 0) & (~self.o_rows.valid | self.o_rows.ready)),
            self.port.addr.eq(addr), self.port.en.eq(fetch),
            self.o_rows.payload.eq(self.port.data),
        ]
        with m.If(fetch):
            m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1), self.o_rows.valid.eq(1)]
        with m.Elif(self.o_rows.ready):
            m.d.sync += self.o_rows.valid.eq(0)
        return m

    def _elaborate_pipelined(self, m, addr, remaining):
        # The port's two stages and ``fetched`` (a row in the first stage) and ``o_rows.valid`` (one in the
        # second) all move together, whenever the row on offer is taken or none is on offer: while it waits, the
        # block RAM's stages hold. A stage may hold a bubble; it costs nothing once rows flow. The port is enabled
        # only while a row is to be read or is in the first stage: ``en`` means a row moved (the accelerator's
        # watchdog counts on it), and an idle reader leaves the block RAM alone.
        #
        # ``remaining != 0`` and ``remaining == 1`` are registers (``pending``, ``one_left``), set from the count's
        # next value: the compare of the count sat in front of ``en``, which enables the output registers of
        # every block RAM of the memory (the routed build's slowest path at one seed ran from ``remaining``
        # into them).
        fetched = Signal()
        advance = Signal()
        pending, one_left = Signal(name="pending"), Signal(name="one_left")
        m.d.comb += [
            advance.eq(~self.o_rows.valid | self.o_rows.ready),
            self.i_transfer.ready.eq(~pending & ~fetched & ~self.o_rows.valid),
            self.busy.eq(pending | fetched | self.o_rows.valid),
            self.port.addr.eq(addr), self.port.en.eq(advance & (pending | fetched)),
            self.o_rows.payload.eq(self.port.data),
        ]
        with m.If(self.i_transfer.valid & self.i_transfer.ready):
            count = self.i_transfer.payload.count
            m.d.sync += [addr.eq(self.i_transfer.payload.base), remaining.eq(count),
                         pending.eq(count != 0), one_left.eq(count == 1)]
        with m.If(advance):
            m.d.sync += [fetched.eq(pending), self.o_rows.valid.eq(fetched)]
            with m.If(pending):
                m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1), pending.eq(~one_left),
                             one_left.eq(remaining == 2)]
        return m


class MemoryWriter(wiring.Component):
    """Stores ``count`` rows from ``i_rows`` at ``base, base + 1, ...``; ``done`` pulses after the last one.

    Parameters
    ----------
    spec : MemorySpec
    empty : bool, optional
        Whether a transfer may have a count of 0 (``done`` then pulses as it is taken). ``True`` by default;
        with ``False`` the user never offers one (the accelerator's dispatcher refuses such runs), and ``done``
        comes from the rows alone: no compare of the offered count reaches it.
    always_ready : bool, optional
        ``i_rows.ready`` is always high, and a row offered while no transfer is loaded is dropped. ``False`` by
        default. For a user that offers each transfer before its first row can come and sends no row past the
        count: the accelerator, whose engines cannot produce a row within two cycles of a run's start (when
        the transfer is offered) and are reset the cycle after ``done``. No handshake then runs from the writer
        back into the engines' pipelines.

    Members
    -------
    i_transfer : In(stream.Signature(transfer_layout(spec)))
    i_rows : In(stream.Signature(spec.width))
    port : Out(WritePortSignature(spec))
    done : Out(1)
    """

    def __init__(self, spec, *, empty=True, always_ready=False):
        self._spec = spec
        self._empty = bool(empty)
        self._always_ready = bool(always_ready)
        super().__init__({
            "i_transfer": In(stream.Signature(transfer_layout(spec))),
            "i_rows": In(stream.Signature(spec.width)),
            "port": Out(WritePortSignature(spec)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        addr = Signal(range(self._spec.depth + 1))
        remaining = Signal(range(self._spec.depth + 1))
        # ``remaining != 0`` and ``remaining == 1`` kept as registers: ``ready`` goes back up the whole engine
        # pipeline and ``done`` into the command processor, so neither may start with a counter compare.
        loaded, one_left = Signal(), Signal()
        m.d.comb += [
            self.i_transfer.ready.eq(~loaded),
            self.i_rows.ready.eq(1 if self._always_ready else loaded),
            self.port.addr.eq(addr), self.port.data.eq(self.i_rows.payload),
            self.port.en.eq(self.i_rows.valid & loaded),
        ]
        with m.If(self.i_transfer.valid & self.i_transfer.ready):
            count = self.i_transfer.payload.count
            m.d.sync += [addr.eq(self.i_transfer.payload.base), remaining.eq(count),
                         loaded.eq(count != 0 if self._empty else 1), one_left.eq(count == 1)]
            if self._empty:
                with m.If(count == 0):
                    m.d.comb += self.done.eq(1)
        with m.If(self.port.en):
            m.d.sync += [addr.eq(addr + 1), remaining.eq(remaining - 1), one_left.eq(remaining == 2)]
            with m.If(one_left):
                m.d.sync += loaded.eq(0)
                m.d.comb += self.done.eq(1)
        return m
