"""The command processor: decodes host-bus commands (hw/commands.py), moves data in and out of the on-chip
memories, starts engines, and answers every command, bad ones included.

Host words arrive on ``i_host`` and answers leave on ``o_host``, both streams of ``{data: 32, last: 1}``;
``last`` marks the final word of a command and of an answer, which is what lets the processor recover from a
command of the wrong length: it consumes words up to ``last`` and answers with an error status.

Runs: ``START`` pulses ``run.start`` and answers at once; the run is then *in flight* until ``run.done``, and
its status and cycle count wait in registers until a ``WAIT`` collects them (``RUN`` is ``START`` + ``WAIT``).
While a run is in flight the processor goes on serving commands; the engine side says which host words it owns
(``run.lock``: per memory, a word range ``[lo, hi)`` the running engine reads or writes), and a transfer that
overlaps it, a ``WRITE`` into a memory the engines write (``engine_written``), or another ``START`` is refused
with ``BUSY``. The decision is taken from registers (address, end, lock) in the range-check cycle, so no new
logic sits between the host word and a memory enable.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .commands import Address, Header, MemoryId, Opcode, Response, RunState, Status

__all__ = ["WORD_LAYOUT", "lock_layout", "lock_bits", "MemoryBusSignature", "RunSignature", "CommandProcessor",
           "or_all"]

WORD_LAYOUT = data.StructLayout({"data": 32, "last": 1})


def lock_bits(depths):
    """Bits of a lock bound for memories of ``depths`` words (dict of MemoryId -> int): an end up to twice the
    largest depth fits (a run owns at most a memory's rows from a base inside it)."""
    return Shape.cast(range(max(depths.values(), default=1) + 1)).width + 1


def lock_layout(bits):
    """Host words ``[lo, hi)`` of one memory that a running engine owns (``lo == hi``: none), ``bits`` wide."""
    return data.StructLayout({"lo": bits, "hi": bits})

#: One lock per possible memory id (indexed by ``MemoryId`` value).
LOCKS = 1 << len(MemoryId)


class MemoryBusSignature(wiring.Signature):
    """A word port into the on-chip memories: write in one cycle, read data valid the cycle after ``r_en``.

    ``select`` is ``memory`` decoded, a bit per :class:`MemoryId` value (none for an unknown id), from flip-flops:
    a memory's write and read enables are then one AND of two bits, not an 8-bit compare behind the handshake."""

    def __init__(self):
        super().__init__({
            "memory": Out(MemoryId),
            "select": Out(max(known.value for known in MemoryId) + 1),
            "addr":   Out(24),
            "w_en":   Out(1),
            "w_data": Out(32),
            "r_en":   Out(1),
            "r_data": In(32),
        })


class RunSignature(wiring.Signature):
    """Starts an engine: ``start`` pulses with ``descriptor`` valid; the engine answers with ``done`` (and
    ``error`` in the same cycle if it rejected the descriptor or failed), in the start cycle if it rejects the
    descriptor. ``lock[memory]`` is the word range the running engine owns, valid while the run is in flight.
    ``flags[k]``: some bit of flag mask ``k`` is set in the descriptor words (see :class:`CommandProcessor`)."""

    def __init__(self, max_words, flags=0, lock_bits=25):
        super().__init__({
            "start":      Out(1),
            "descriptor": Out(data.ArrayLayout(32, max_words)),
            "length":     Out(range(max_words + 1)),
            "flags":      Out(flags),
            "done":       In(1),
            "error":      In(1),
            "lock":       In(data.ArrayLayout(lock_layout(lock_bits), LOCKS)),
        })


def _runs(mask):
    """``(lo, hi)`` of each run of set bits of ``mask``."""
    runs, bit = [], 0
    while mask >> bit:
        if (mask >> bit) & 1:
            end = bit
            while (mask >> end) & 1:
                end += 1
            runs.append((bit, end))
            bit = end
        else:
            bit += 1
    return runs


def or_all(values):
    """The bitwise OR of ``values`` (0 for none): with at most one of them nonzero, an AND-OR multiplexer."""
    out = Const(0, 1)
    for value in values:
        out = out | value
    return out


class CommandProcessor(wiring.Component):
    """Host-bus command processor.

    Parameters
    ----------
    depths : dict of MemoryId -> int
        Words in each memory the host may address; a memory not listed is unknown (``BAD_ADDRESS``).
    config_id : int
        32-bit fingerprint reported by ``STATUS`` (see :func:`cnnacc.hw.commands.config_id`).
    max_descriptor : int
        Longest ``RUN`` descriptor, in words.
    engine_written : iterable of MemoryId
        Memories the engines write: the host may not ``WRITE`` them while a run is in flight.
    keep : int, optional
        The descriptor bits (bit ``32 * i + b`` is bit ``b`` of word ``i``) some engine reads: only those are
        registered, the others read as 0 (every bit by default).
    flags : iterable of int, optional
        Masks of descriptor bits that engines only check for being all zero: ``run.flags[k]`` is set if a bit of
        mask ``k`` is set in the descriptor words, kept as one register per word and mask instead of the bits.
    mirror : iterable of (int, int, int, int), optional
        ``(word0, src, dst, mask)``: when descriptor word 0 is ``word0``, descriptor word ``src`` is also
        written into the ``mask`` bits of word ``dst``. Two engines that find one field at two places can then read
        it from one place (the dispatcher needs no multiplexer for it).
    settle : int, optional
        Cycles between the descriptor's last word and ``run.start``, at least 1 (the default): a word is written
        into the descriptor registers in the cycle it is taken, and the engine side may use these cycles to
        register its checks of the complete descriptor.
    done_delay : int, optional
        Cycles by which the engine side reports the end of an accepted run (``run.done``) after the run's last
        cycle (0 by default; a registered ``done`` is 1). The run's cycles are counted to its end, not to the
        report. A rejection is still answered in the start cycle.
    registered_read : bool, optional
        ``READ`` registers each word from the memories (a cycle more per word) before it goes out on ``o_host``
        (the ECP5: a block RAM's clock-to-output and the memories' and answer's multiplexers were too much of a
        125 MHz cycle).
    read_latency : int, optional
        Cycles from a memory read request (``mem.r_en``) to its data on ``mem.r_data``: 1 (the default), or 2 for
        a :class:`~cnnacc.hw.memory_map.MemoryMap` built with ``host_register``.
    select_only : bool, optional
        The descriptor registers' enables are the host's valid and the word's select alone, without the state
        (``False`` by default): the select is then cleared outside ``DESCRIPTOR``. For the ECP5, whose routed
        build failed on the state decode in front of the descriptor's enables, across the die.
    """

    def __init__(self, depths, config_id, max_descriptor=16, engine_written=(), keep=None, flags=(), mirror=(),
                 settle=1, done_delay=0, registered_read=False, read_latency=1, select_only=False):
        self._depths = {MemoryId(k): int(v) for k, v in depths.items()}
        for memory, depth in self._depths.items():
            if not 1 <= depth <= 1 << 24:
                raise ValueError(f"depth of {memory.name} must be from 1 to 2**24 words, not {depth}")
        self._config_id = int(config_id) & 0xFFFFFFFF
        self._max_descriptor = int(max_descriptor)
        if not isinstance(settle, int) or settle < 1:
            raise ValueError(f"settle must be a positive integer, not {settle!r}")
        self._settle = settle
        if done_delay not in (0, 1):
            raise ValueError(f"done_delay must be 0 or 1, not {done_delay!r}")
        self._done_delay = done_delay
        self._registered_read = bool(registered_read)
        if read_latency not in (1, 2):
            raise ValueError(f"read_latency must be 1 or 2, not {read_latency!r}")
        self._read_latency = read_latency
        self._select_only = bool(select_only)
        self._engine_written = frozenset(MemoryId(k) for k in engine_written)
        all_bits = (1 << (32 * self._max_descriptor)) - 1
        self._keep = all_bits if keep is None else int(keep) & all_bits
        self._flags = [int(mask) & all_bits for mask in flags]
        self._mirror = [(int(w0), int(src), int(dst), int(mask) & 0xFFFFFFFF) for w0, src, dst, mask in mirror]
        for _, src, dst, _ in self._mirror:
            if not 1 <= src < self._max_descriptor or not 1 <= dst < self._max_descriptor:
                raise ValueError(f"mirror words must be from 1 to {self._max_descriptor - 1}, not {src} and {dst}")
        super().__init__({
            "i_host": In(stream.Signature(WORD_LAYOUT)),
            "o_host": Out(stream.Signature(WORD_LAYOUT)),
            "mem":    Out(MemoryBusSignature()),
            "run":    Out(RunSignature(self._max_descriptor, len(self._flags), lock_bits(self._depths))),
        })

    def elaborate(self, platform):
        m = Module()

        word = self.i_host.payload
        # A host word is consumed this cycle. The states that take words are ready in every cycle, so in them
        # ``take`` is the host's valid alone: the state register then reaches its own next value without going
        # through ``ready`` (an OR of states that the synthesis cannot know is implied by each of them).
        take = self.i_host.valid

        # Widths from the instance: a transfer that passes the range check lies inside one memory, so addresses,
        # ends and the words still to move need only the bits of the largest depth (`bits`); the header's count
        # and the address's word keep just those bits plus a flag saying whether any bit above them is set (such a
        # transfer runs past every memory: BAD_ADDRESS, whatever its count up to 2**24-1).
        max_depth = max(self._depths.values(), default=1)
        bits = Shape.cast(range(max_depth + 1)).width
        opcode_reg = Signal(Opcode)
        count_lo = Signal(bits)     # the header's count, its low bits
        count_big = Signal()        # ... and whether it has any bit set above them
        count_zero = Signal()       # flags of the header's count, registered with it
        # The opcode decoded into flags as the header arrives, and what DECODE will do with it: DECODE and the
        # states after it then read single registered bits. Decoding the 8-bit opcode and the 24-bit count in
        # DECODE put 7 LUT levels between the header register and the status register (the iCE40's critical path:
        # 37.6 MHz of 42).
        op_read, op_write, op_run, op_status = Signal(), Signal(), Signal(), Signal()
        # RUN/START with a descriptor of a usable length: DESCRIPTOR, unless busy. Its two halves are registered
        # apart (each is a few LUTs after the host word; together with the sharing of the header's decode they
        # were seven).
        launch_ok = Signal()
        launch_q, count_fits = Signal(), Signal()
        m.d.comb += launch_ok.eq(launch_q & count_fits)
        decode_status = Signal(Status)   # DECODE's status for every other outcome
        to_wait, to_answer, to_address = Signal(), Signal(), Signal()   # DECODE's next state (else DISCARD)
        status = Signal(Status)
        # Data words still expected (WRITE), to send (READ) or descriptor words still to come: only read after the
        # range check (then it is at most a depth) or for a descriptor (at most max_descriptor).
        remaining = Signal(max(bits, Shape.cast(range(self._max_descriptor + 1)).width))
        # ``remaining == 1`` as a register, set with each new value of ``remaining``: the compare of its many bits
        # is then not in the status register's enable (which it put on nextpnr's critical path).
        remaining_one = Signal()
        memory = Signal(MemoryId)
        word_addr = Signal(bits)    # the next word of the transfer (in range: below the memory's depth)
        addr_big = Signal()         # the address's word has a bit set above `bits`: past every memory
        desc_index = Signal(range(self._max_descriptor + 1))
        word_flags = [[Signal(name=f"flag{k}_word{i}") for i in range(self._max_descriptor)]
                      for k in range(len(self._flags))]
        for k, mask in enumerate(self._flags):
            m.d.comb += self.run.flags[k].eq(Cat(word_flags[k][i] for i in range(self._max_descriptor)
                                                 if (mask >> (32 * i)) & 0xFFFFFFFF).any())
        # Free-running 64-bit cycle counter, as two 32-bit halves with a registered carry (a 64-bit carry chain
        # is too long for the iCE40 at speed). The high half lags by one cycle at a wrap of the low half.
        cycles = Signal(64)
        low_wraps = Signal()
        m.d.sync += [cycles[:32].eq(cycles[:32] + 1), low_wraps.eq(cycles[:32] == 0xFFFFFFFE),
                     cycles[32:].eq(cycles[32:] + low_wraps)]
        # The run in flight (or finished, its result not yet collected by WAIT).
        running = Signal()
        finished = Signal()
        run_cycles = Signal(32)
        run_status = Signal(Status)
        with m.If(running):
            m.d.sync += run_cycles.eq(run_cycles + 1)
            with m.If(self.run.done):
                m.d.sync += [running.eq(0), finished.eq(1),
                             run_status.eq(Mux(self.run.error, Status.BAD_DESCRIPTOR, Status.OK))]

        # The answer being sent. Its words are selected from their sources as they are sent (the sources hold
        # still during SEND: status, opcode and the run's cycles are only written outside it); what could change
        # meanwhile is snapshotted: the run state and the 64-bit cycle count (one snapshot for its two words).
        answer_len = Signal(range(5))
        answer_pos = Signal(range(5))
        answer_last = Signal()
        detail = Signal(RunState)
        snapshot = Signal(64)

        # The transfer's end, registered when the address arrives, so that the range check is one compare
        # against a constant (it is on the critical path of small FPGAs otherwise). `end` holds the sum of the
        # low bits; with `count_big` and `addr_big` clear it is the whole end.
        end = Signal(bits + 1)
        range_ok = Signal()
        in_range = Signal()         # range_ok, registered: the compare and the decisions on it take a cycle each
        lock_hit = Signal()         # the transfer would disturb the run in flight
        in_lock = Signal()          # lock_hit, registered
        # The lock of the memory addressed is selected first, then compared once (a compare per memory is
        # many more LUTs for a cone no shorter).
        lock = Signal(lock_layout(lock_bits(self._depths)))
        written = Signal()          # the memory addressed is engine-written
        # SELECT registers the end's compare with every memory's depth (in parallel) and the lock of the memory
        # addressed; RANGE then only selects.
        fits = {known: Signal(name=f"fits_{known.name.lower()}") for known in self._depths}
        # The memory addressed, decoded as the address arrives (one flag each, none for an unknown id): each
        # selection is then an AND-OR of registers.
        addressed = {known: Signal(name=f"addressed_{known.name.lower()}") for known in self._depths}
        fit_terms = [addressed[known] & fits[known] for known in self._depths]
        lock_terms = [Mux(addressed[known], self.run.lock[known.value].as_value(), 0) for known in self._depths]
        written_terms = [addressed[known] for known in self._depths if known in self._engine_written]
        m.d.comb += [range_ok.eq(~count_big & ~addr_big & or_all(fit_terms)), lock.eq(or_all(lock_terms)),
                     written.eq(or_all(written_terms))]
        # The lock's two compares are registered in SELECT, from the selection itself (one AND-OR): RANGE then
        # combines two flip-flops. (With the bounds registered first and compared in RANGE, the compare's carry
        # chain sat between two far-apart groups of registers: nextpnr's critical path, 25.8 ns.)
        lo_before_end, addr_before_hi = Signal(name="lock_lo_before_end"), Signal(name="addr_before_lock_hi")
        written_q = Signal()
        m.d.comb += lock_hit.eq(running & ((lo_before_end & addr_before_hi) | (written_q & op_write)))

        def respond(words, code=None):
            """Answer with ``words`` words (1, 2 or 4; see SEND for what each is), with status ``code`` (the
            ``status`` register as it is if None)."""
            m.d.sync += [
                answer_len.eq(words),
                answer_pos.eq(0),
                answer_last.eq(words == 1),
                detail.eq(RunState.IDLE),
            ]
            if code is not None:
                m.d.sync += status.eq(code)

        select_bits = [Const(0)] * len(self.mem.select)
        for known, flag in addressed.items():
            select_bits[known.value] = flag
        m.d.comb += [
            self.mem.memory.eq(memory),
            self.mem.select.eq(Cat(*select_bits)),
            self.mem.addr.eq(word_addr),
            self.mem.w_data.eq(word.data),
            self.run.length.eq(desc_index),
        ]

        # Which descriptor word comes next, one-hot (set in DECODE, shifted as words are taken): a word is written
        # into its registers in the cycle it is taken, under an enable of one LUT (the state, the host's valid and
        # this bit), with no index decode behind the handshake and no register holding the word a cycle first.
        desc_sel = Signal(self._max_descriptor)
        # Each mirror's condition (word 0 is ``word0``), registered as word 0 is taken: its source word comes later.
        keep0 = self._keep & 0xFFFFFFFF
        mirror_on = [Signal(name=f"mirror{j}_on") for j in range(len(self._mirror))]

        def write_descriptor_word():
            """In DESCRIPTOR, with a word taken: write it where ``desc_sel`` says (and where a mirror copies it)."""
            for i in range(self._max_descriptor):
                with m.If(desc_sel[i]):
                    # Only the kept bits are registered (a register loaded from the bus is a whole logic
                    # cell a bit); a flag per word stands for the bits that are only checked for zero.
                    keep = (self._keep >> (32 * i)) & 0xFFFFFFFF
                    for lo, hi in _runs(keep):
                        m.d.sync += self.run.descriptor[i][lo:hi].eq(word.data[lo:hi])
                    for k, mask in enumerate(self._flags):
                        part = (mask >> (32 * i)) & 0xFFFFFFFF
                        if part:
                            m.d.sync += word_flags[k][i].eq((word.data & part) != 0)
            with m.If(desc_sel[0]):
                m.d.sync += [on.eq((word.data & keep0) == w0) for on, (w0, _, _, _) in zip(mirror_on, self._mirror)]
            for on, (_, src, dst, mask) in zip(mirror_on, self._mirror):
                with m.If(desc_sel[src] & on):
                    for lo, hi in _runs(mask & (self._keep >> (32 * dst))):
                        m.d.sync += self.run.descriptor[dst][lo:hi].eq(word.data[lo:hi])

        # run.start from a register (high exactly in START): it fans out to much of the dispatcher.
        start_pulse = Signal()
        m.d.sync += start_pulse.eq(0)
        m.d.comb += self.run.start.eq(start_pulse)

        if self._select_only:
            # ``desc_sel`` is zero outside DESCRIPTOR, where every cycle with a valid word takes it.
            with m.If(take):
                write_descriptor_word()

        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += self.i_host.ready.eq(1)
                with m.If(take):
                    count = Header(word.data).count
                    opcode = Header(word.data).opcode
                    last = word.last
                    simple = (opcode == Opcode.NOP) | (opcode == Opcode.STATUS) | (opcode == Opcode.WAIT)
                    transfer = (opcode == Opcode.WRITE) | (opcode == Opcode.READ)
                    launch = (opcode == Opcode.RUN) | (opcode == Opcode.START)
                    m.d.sync += [
                        opcode_reg.eq(opcode), count_lo.eq(count[:bits]), count_big.eq(count[bits:] != 0),
                        count_zero.eq(count == 0), remaining.eq(count), desc_index.eq(0),
                        remaining_one.eq(count[:len(remaining)] == 1),
                        op_read.eq(opcode == Opcode.READ), op_write.eq(opcode == Opcode.WRITE),
                        op_run.eq(opcode == Opcode.RUN), op_status.eq(opcode == Opcode.STATUS),
                        launch_q.eq(launch & ~last), count_fits.eq((count != 0) & (count <= self._max_descriptor)),
                        # A command that ends at its header: a simple one is answered (WAIT waits first), any
                        # other is too short. A launch with a bad count and an unknown opcode are consumed up to
                        # their last word. A transfer goes on to its address.
                        decode_status.eq(Mux(simple & last, Status.OK,
                                             Mux(simple | transfer | launch, Status.BAD_LENGTH,
                                                 Status.UNKNOWN_OPCODE))),
                        to_wait.eq(last & (opcode == Opcode.WAIT)),
                        to_answer.eq(last & (opcode != Opcode.WAIT)),
                        to_address.eq(transfer & ~last),
                    ]
                    m.next = "DECODE"

            # Acting on the decoded flags a cycle after the header arrives keeps the stream handshake and the
            # opcode decode out of the status and state logic (together they missed timing on the iCE40).
            with m.State("DECODE"):
                if not self._select_only:
                    m.d.sync += desc_sel.eq(1)
                # Status is written whatever the outcome: a path that goes on (ADDRESS, DESCRIPTOR) sets it again
                # before it is answered.
                m.d.sync += status.eq(Mux(launch_ok & running, Status.BUSY, decode_status))
                with m.If(to_wait):
                    m.next = "WAIT_RUN"
                with m.Elif(to_answer):
                    m.next = "ANSWER_STATUS"
                with m.Elif(to_address):
                    m.next = "ADDRESS"
                with m.Elif(launch_ok & ~running):
                    m.next = "DESCRIPTOR"
                    if self._select_only:
                        m.d.sync += desc_sel.eq(1)
                with m.Else():
                    # Too long, unknown, or a launch while a run is in flight (the descriptor is not taken: the
                    # run in flight reads it).
                    m.next = "DISCARD"

            with m.State("ADDRESS"):
                m.d.comb += self.i_host.ready.eq(1)
                with m.If(take):
                    where = Address(word.data)
                    m.d.sync += [addressed[known].eq(where.memory == known) for known in self._depths]
                    m.d.sync += [memory.eq(where.memory), word_addr.eq(where.word[:bits]),
                                 addr_big.eq(where.word[bits:] != 0), end.eq(where.word[:bits] + count_lo)]
                    # READ and an empty WRITE end at the address; a WRITE with data must not.
                    ends_here = op_read | count_zero
                    with m.If(word.last != ends_here):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        with m.If(word.last):
                            m.next = "ANSWER_STATUS"
                        with m.Else():
                            m.next = "DISCARD"
                    with m.Else():
                        m.next = "SELECT"

            with m.State("SELECT"):
                m.d.sync += [lo_before_end.eq(lock.lo < end), addr_before_hi.eq(word_addr < lock.hi),
                             written_q.eq(written)]
                m.d.sync += [fits[known].eq(end <= depth) for known, depth in self._depths.items()]
                m.next = "RANGE"

            with m.State("RANGE"):
                m.d.sync += [in_range.eq(range_ok), in_lock.eq(lock_hit)]
                m.next = "CHECK"

            with m.State("CHECK"):
                with m.If(~in_range):
                    m.d.sync += status.eq(Status.BAD_ADDRESS)
                    with m.If(op_read | count_zero):
                        m.next = "ANSWER_STATUS"
                    with m.Else():
                        m.next = "DISCARD"
                with m.Elif(in_lock):
                    m.d.sync += status.eq(Status.BUSY)
                    with m.If(op_read | count_zero):
                        m.next = "ANSWER_STATUS"
                    with m.Else():
                        m.next = "DISCARD"
                with m.Elif(op_read):
                    m.d.sync += status.eq(Status.OK)
                    m.next = "READ_ANSWER"
                with m.Elif(count_zero):
                    m.d.sync += status.eq(Status.OK)
                    m.next = "ANSWER_STATUS"
                with m.Else():
                    m.next = "WRITE_DATA"

            with m.State("WRITE_DATA"):
                m.d.comb += self.i_host.ready.eq(1)
                with m.If(take):
                    m.d.comb += self.mem.w_en.eq(1)
                    m.d.sync += [word_addr.eq(word_addr + 1), remaining.eq(remaining - 1),
                                 remaining_one.eq(remaining == 2)]
                    with m.If(remaining_one):
                        m.d.sync += status.eq(Mux(word.last, Status.OK, Status.BAD_LENGTH))
                        with m.If(word.last):
                            m.next = "ANSWER_STATUS"
                        with m.Else():
                            m.next = "DISCARD"
                    with m.Elif(word.last):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        m.next = "ANSWER_STATUS"

            with m.State("DESCRIPTOR"):
                m.d.comb += self.i_host.ready.eq(1)
                with m.If(take):
                    if not self._select_only:
                        write_descriptor_word()
                    m.d.sync += [desc_index.eq(desc_index + 1), desc_sel.eq(desc_sel << 1),
                                 remaining.eq(remaining - 1), remaining_one.eq(remaining == 2)]
                    if self._select_only:
                        with m.If(remaining_one | word.last):
                            m.d.sync += desc_sel.eq(0)
                    with m.If(remaining_one):
                        with m.If(word.last):
                            m.next = "SETTLE_0"
                        with m.Else():
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                            m.next = "DISCARD"
                    with m.Elif(word.last):
                        m.d.sync += status.eq(Status.BAD_LENGTH)
                        m.next = "ANSWER_STATUS"

            # The descriptor is complete: the engine side registers its checks of it in these cycles.
            for i in range(self._settle):
                with m.State(f"SETTLE_{i}"):
                    m.next = f"SETTLE_{i + 1}" if i + 1 < self._settle else "START"
                    if i + 1 == self._settle:
                        m.d.sync += start_pulse.eq(1)

            with m.State("START"):
                # A new run drops the result of one that nobody waited for.
                m.d.sync += [run_cycles.eq(1), finished.eq(0)]
                with m.If(self.run.done):
                    # The engine rejected the descriptor at once: nothing runs.
                    # RUN's second word is the run's cycles: 1, set here.
                    with m.If(op_run):
                        respond(2, Status.BAD_DESCRIPTOR)
                    with m.Else():
                        respond(1, Status.BAD_DESCRIPTOR)
                    m.next = "SEND"
                with m.Else():
                    # Counted from 1 in this cycle, less the cycle the end takes to be reported.
                    m.d.sync += [running.eq(1), run_cycles.eq(1 - self._done_delay)]
                    with m.If(op_run):
                        m.next = "WAIT_RUN"
                    with m.Else():
                        respond(1, Status.OK)
                        m.next = "SEND"

            # RUN and WAIT: answer with the status and cycles of the run when it has ended.
            with m.State("WAIT_RUN"):
                with m.If(finished):
                    m.d.sync += finished.eq(0)
                    respond(2, run_status)
                    m.next = "SEND"
                with m.Elif(~running):
                    respond(1, Status.IDLE)
                    m.next = "SEND"

            with m.State("DISCARD"):
                m.d.comb += self.i_host.ready.eq(1)
                with m.If(take & word.last):
                    m.next = "ANSWER_STATUS"

            with m.State("ANSWER_STATUS"):
                with m.If(op_status & (status == Status.OK)):
                    respond(4)
                    m.d.sync += [
                        detail.eq(Mux(running, RunState.RUNNING, Mux(finished, RunState.FINISHED, RunState.IDLE))),
                        snapshot.eq(cycles),
                    ]
                with m.Else():
                    respond(1)
                m.next = "SEND"

            with m.State("SEND"):
                m.d.comb += [
                    self.o_host.valid.eq(1),
                    self.o_host.payload.last.eq(answer_last),
                ]
                # Word 0 the Response; then RUN/WAIT: the run's cycles; STATUS: the cycle count (lo, hi) and the
                # config id.
                with m.Switch(answer_pos):
                    with m.Case(0):
                        m.d.comb += self.o_host.payload.data.eq(Cat(status, opcode_reg, detail))
                    with m.Case(1):
                        m.d.comb += self.o_host.payload.data.eq(Mux(op_status, snapshot[:32], run_cycles))
                    with m.Case(2):
                        m.d.comb += self.o_host.payload.data.eq(snapshot[32:])
                    with m.Case(3):
                        m.d.comb += self.o_host.payload.data.eq(self._config_id)
                with m.If(self.o_host.ready):
                    m.d.sync += [answer_pos.eq(answer_pos + 1), answer_last.eq(answer_pos + 2 == answer_len)]
                    with m.If(answer_last):
                        m.next = "HEADER"

            # READ: the Response word, then the data, one memory read per word.
            with m.State("READ_ANSWER"):
                m.d.comb += [
                    self.o_host.valid.eq(1),
                    self.o_host.payload.last.eq(count_zero),
                    self.o_host.payload.data.eq(
                        Response.const({"status": Status.OK, "opcode": Opcode.READ}).as_bits()),
                ]
                with m.If(self.o_host.ready):
                    with m.If(count_zero):
                        m.next = "HEADER"
                    with m.Else():
                        m.next = "READ_FETCH"

            after_fetch = "READ_LATCH" if self._registered_read else "READ_WORD"
            with m.State("READ_FETCH"):
                m.d.comb += self.mem.r_en.eq(1)
                m.next = "READ_WAIT" if self._read_latency == 2 else after_fetch

            if self._read_latency == 2:
                with m.State("READ_WAIT"):
                    m.next = after_fetch

            if self._registered_read:
                read_word = Signal(32, name="read_word")
                with m.State("READ_LATCH"):
                    m.d.sync += read_word.eq(self.mem.r_data)
                    m.next = "READ_WORD"
            else:
                read_word = self.mem.r_data

            with m.State("READ_WORD"):
                # A synchronous read port holds its data while its enable is low (and the latched word is a
                # register), so the word stays valid for as long as the host is not ready.
                m.d.comb += [
                    self.o_host.valid.eq(1),
                    self.o_host.payload.data.eq(read_word),
                    self.o_host.payload.last.eq(remaining_one),
                ]
                with m.If(self.o_host.ready):
                    m.d.sync += [word_addr.eq(word_addr + 1), remaining.eq(remaining - 1),
                                 remaining_one.eq(remaining == 2)]
                    with m.If(remaining_one):
                        m.next = "HEADER"
                    with m.Else():
                        m.next = "READ_FETCH"

        return m
