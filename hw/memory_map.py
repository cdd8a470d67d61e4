"""The on-chip memories, seen by the host as 32-bit words and by the engines as full-width rows.

Each memory is ``width`` bits wide (a multiple of 32: an activation memory row holds one pixel of ``lanes``
int8 channels) and ``depth`` rows deep. The host's word ``a`` is the 32-bit part ``a % (width // 32)`` of row
``a // (width // 32)``, little-endian, so a row's bytes are channel 0, 1, 2, ... in order.

Engines get one full-width read port per memory, and a write port into each memory listed as engine-written.
That write port is shared with the host: while ``engine_active`` is high the engines own it (the command
processor refuses host writes into such a memory while a run is in flight). The host owns the write port of
every other memory at all times, so it can load one half of a memory while an engine reads the other; reads
have their own ports.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .command_processor import MemoryBusSignature
from .commands import MemoryId

__all__ = ["MemorySpec", "MemoryMap", "ReadPortSignature", "WritePortSignature", "BRAM_OUTPUT_ATTR",
           "COPY_ATTR", "registered_read", "engine_read_latency"]


#: Wire attribute on the register that follows a block RAM's asynchronous read port (:func:`registered_read`).
#: Board builds drop the initial value of such wires before synthesis (boards/build.py ``INIT_SCRIPT``).
BRAM_OUTPUT_ATTR = "cnnacc_bram_q"

#: Wire attribute on a register that is a deliberate copy of another (the same input, the same enable): the ECP5
#: board build keeps each such flip-flop (boards/build.py ``ECP5_KEEP_COPIES``), where yosys would merge the
#: copies into one register again, whose one output then crosses the die to every load of every copy.
COPY_ATTR = "cnnacc_copy"


def registered_read(m, port, en, name):
    """The data of asynchronous read port ``port`` registered while ``en`` is high: a synchronous read (data the
    cycle after ``en``, held while it is low) that yosys folds into the block RAM's own output register.

    The register is reset-less and marked with :data:`BRAM_OUTPUT_ATTR`, so a board build can drop its initial
    value too: neither the iCE40's nor the ECP5's block RAM output has one, and yosys would otherwise emulate
    the reset and the initial value with LUTs (168 LUT4 of the iCEBreaker's accelerator and bridge). Nothing
    may use the register before its first read; the simulators start it at 0.
    """
    data = Signal(port.data.shape(), name=name, reset_less=True, attrs={BRAM_OUTPUT_ATTR: 1})
    with m.If(en):
        m.d.sync += data.eq(port.data)
    return data


def engine_read_latency(config):
    """Cycles from an engine's read request to its data in the accelerator built for ``config`` (an
    :class:`~cnnacc.config.AcceleratorConfig`): 2 on the ECP5, whose memory map registers the engines' read data
    a second time (:class:`MemoryMap`'s ``engine_register``), 1 elsewhere."""
    return 2 if config.target == "ecp5" else 1


class MemorySpec:
    """``width`` bits per row (a multiple of 32), ``depth`` rows."""

    def __init__(self, width, depth):
        if width % 32 or width <= 0:
            raise ValueError(f"memory width must be a positive multiple of 32 bits, not {width}")
        if depth <= 0:
            raise ValueError(f"memory depth must be positive, not {depth}")
        self.width, self.depth = int(width), int(depth)

    @property
    def words(self):
        """Size in host (32-bit) words."""
        return self.depth * self.width // 32

    def __repr__(self):
        return f"MemorySpec(width={self.width}, depth={self.depth})"


class ReadPortSignature(wiring.Signature):
    """Synchronous read: ``data`` is valid the cycle after ``en``, and holds while ``en`` is low.

    With a memory map's ``engine_register`` the engines' ports are a two-stage pipeline that moves on ``en``:
    ``data`` is the row whose address was presented at the last but one cycle with ``en`` high."""

    def __init__(self, spec):
        super().__init__({"addr": Out(range(spec.depth)), "en": Out(1), "data": In(spec.width)})


class WritePortSignature(wiring.Signature):
    def __init__(self, spec):
        super().__init__({"addr": Out(range(spec.depth)), "en": Out(1), "data": Out(spec.width)})


class MemoryMap(wiring.Component):
    """Parameters
    ----------
    specs : dict of MemoryId -> MemorySpec
    engine_written : iterable of MemoryId, optional
        Memories the engines write (every memory by default).
    host_register : bool, optional
        The host's read data is registered once more beside each block RAM, before the part and memory
        multiplexers: it comes two cycles after the request instead of one (the ECP5, where a block RAM's
        clock-to-output is most of a 125 MHz cycle; the command processor's ``read_latency``).
    engine_register : bool, optional
        The engines' read data is registered a second time too, on the port's ``en`` as the first register: the
        read port is a two-stage pipeline (:class:`ReadPortSignature`, :attr:`engine_read_latency`). On the ECP5
        both second registers become the block RAM's own output register (boards/outreg.py), whose data comes
        0.96 ns after the clock instead of 5.8 ns.

    Members
    -------
    bus : In(MemoryBusSignature())
        The command processor's port.
    <name>_read : In(ReadPortSignature)
        The engines' read port of memory ``<name>`` (``act_a``, ``output``, ...).
    <name>_write : In(WritePortSignature)
        The engines' write port, for the engine-written memories only.
    engine_active : In(1)
        Gives the shared write ports to the engines.
    """

    def __init__(self, specs, engine_written=None, host_register=False, engine_register=False):
        self._specs = {MemoryId(k): v for k, v in specs.items()}
        self._host_register = bool(host_register)
        self._engine_register = bool(engine_register)
        self._engine_written = frozenset(self._specs if engine_written is None else map(MemoryId, engine_written))
        members = {"bus": In(MemoryBusSignature()), "engine_active": In(1)}
        for memory, spec in self._specs.items():
            members[f"{memory.name.lower()}_read"] = In(ReadPortSignature(spec))
            if memory in self._engine_written:
                members[f"{memory.name.lower()}_write"] = In(WritePortSignature(spec))
        super().__init__(members)

    @property
    def specs(self):
        return dict(self._specs)

    @property
    def read_latency(self):
        """Cycles from a host read request to its data: the command processor's ``read_latency`` to match."""
        return 2 if self._host_register else 1

    @property
    def engine_read_latency(self):
        """Cycles from an engine's read request (``en``) to its data: 2 with ``engine_register``, else 1."""
        return 2 if self._engine_register else 1

    def word_depths(self):
        """Host-visible size of each memory in 32-bit words (for the command processor's range checks)."""
        return {memory: spec.words for memory, spec in self._specs.items()}

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        # The host's read data comes a cycle after the request: remember which memory and which part.
        selected = Signal(MemoryId)
        part = Signal(8)
        for memory, spec in self._specs.items():
            name = memory.name.lower()
            parts = spec.width // 32
            # A read and a write of one row in one cycle never happen: the host may not touch what a run owns,
            # and the bus does one thing a cycle. So the memory says it has no read/write collisions, and its
            # synchronous reads are asynchronous ports with a register that yosys folds into the block RAM
            # (a synchronous port would be given read-first emulation: a register and a compare per port).
            m.submodules[name] = mem = Memory(shape=spec.width, depth=spec.depth, init=[],
                                              attrs={"no_rw_check": 1})
            wp = mem.write_port(granularity=32)
            host_rp = mem.read_port(domain="comb")
            engine_rp = mem.read_port(domain="comb")
            engine_read = getattr(self, f"{name}_read")
            here = bus.select[memory.value]
            row = bus.addr // parts if parts > 1 else bus.addr
            m.d.comb += [engine_rp.addr.eq(engine_read.addr), host_rp.addr.eq(row)]
            engine_data = registered_read(m, engine_rp, engine_read.en, f"{name}_engine_data")
            if self._engine_register:
                engine_q = Signal.like(engine_data, name=f"{name}_engine_q", attrs={})
                with m.If(engine_read.en):
                    m.d.sync += engine_q.eq(engine_data)
                engine_data = engine_q
            m.d.comb += engine_read.data.eq(engine_data)
            host_data = registered_read(m, host_rp, bus.r_en & here, f"{name}_host_data")
            if self._host_register:
                # On every cycle: the block RAM's output holds still after its read, and ``selected`` and ``part``
                # until the next request, which comes after the command processor has taken this word.
                host_q = Signal.like(host_data, name=f"{name}_host_q", attrs={})
                m.d.sync += host_q.eq(host_data)
                host_data = host_q
            host_owns = ~self.engine_active
            if memory in self._engine_written:
                engine_write = getattr(self, f"{name}_write")
                with m.If(self.engine_active):
                    m.d.comb += [wp.addr.eq(engine_write.addr), wp.data.eq(engine_write.data),
                                 wp.en.eq(Mux(engine_write.en, (1 << parts) - 1, 0))]
            else:
                host_owns = 1
            with m.If(host_owns):
                m.d.comb += [wp.addr.eq(row), wp.data.eq(bus.w_data.replicate(parts))]
                with m.If(bus.w_en & here):
                    m.d.comb += wp.en.eq(1 << (bus.addr % parts) if parts > 1 else 1)
            with m.If(bus.r_en & here):
                m.d.sync += [selected.eq(memory), part.eq(bus.addr % parts if parts > 1 else 0)]
            with m.If(selected == memory):
                m.d.comb += bus.r_data.eq(host_data.word_select(part, 32) if parts > 1 else host_data)
        return m
