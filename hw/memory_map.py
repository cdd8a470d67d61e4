"""The on-chip memories as the host sees them: one 32-bit word port, decoded by :class:`MemoryId`."""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from .command_processor import MemoryBusSignature
from .commands import MemoryId

__all__ = ["MemoryMap"]


class MemoryMap(wiring.Component):
    """Memories of ``depths`` words each, behind the command processor's memory bus.

    Parameters
    ----------
    depths : dict of MemoryId -> int
    """

    def __init__(self, depths):
        self._depths = {MemoryId(k): int(v) for k, v in depths.items()}
        super().__init__({"bus": In(MemoryBusSignature())})

    @property
    def depths(self):
        return dict(self._depths)

    def elaborate(self, platform):
        m = Module()
        # The read data comes a cycle after the request: select it with the memory id of that request.
        selected = Signal(MemoryId)
        with m.If(self.bus.r_en):
            m.d.sync += selected.eq(self.bus.memory)
        for memory, depth in self._depths.items():
            m.submodules[memory.name.lower()] = mem = Memory(shape=32, depth=depth, init=[])
            wp, rp = mem.write_port(), mem.read_port()
            here = self.bus.memory == memory
            m.d.comb += [
                wp.addr.eq(self.bus.addr), wp.data.eq(self.bus.w_data), wp.en.eq(self.bus.w_en & here),
                rp.addr.eq(self.bus.addr), rp.en.eq(self.bus.r_en & here),
            ]
            with m.If(selected == memory):
                m.d.comb += self.bus.r_data.eq(rp.data)
        return m
