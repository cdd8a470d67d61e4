"""MemoryReader and MemoryWriter: every row once, in order, under random back-pressure and bubbles."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from cnnacc.hw.memory_map import MemorySpec
from cnnacc.hw.streamer import PIPELINED_FIFO_LATENCY, MemoryReader, MemoryWriter, PipelinedFIFO
from cnnacc.sim.amaranth_streams import stream_get, stream_put

SPEC = MemorySpec(64, 40)


def _source(m, reader, init, latency):
    """A memory holding ``init`` behind ``reader``'s port: a synchronous read, and with ``latency`` 2 a second
    register on the port's ``en`` (as MemoryMap's ``engine_register``)."""
    m.submodules.src = src = Memory(shape=64, depth=SPEC.depth, init=init)
    rp = src.read_port()
    m.d.comb += [rp.addr.eq(reader.port.addr), rp.en.eq(reader.port.en)]
    if latency == 1:
        m.d.comb += reader.port.data.eq(rp.data)
    else:
        q = Signal(64)
        with m.If(reader.port.en):
            m.d.sync += q.eq(rp.data)
        m.d.comb += reader.port.data.eq(q)


@pytest.mark.parametrize("latency", [1, 2])
@pytest.mark.parametrize("seed,empty", [(0, True), (1, True), (2, True), (3, False)])
def test_copy_through_reader_and_writer(seed, empty, latency):
    """``empty=False`` (the accelerator's writer, never offered a count of 0, always ready, its transfer offered
    before the rows) stores and ends the same. A reader of a two-stage port (``latency`` 2) gives the same rows
    under the same stalls."""
    rng = random.Random(seed)
    init = [rng.getrandbits(64) for _ in range(SPEC.depth)]
    m = Module()
    m.submodules.dst = dst = Memory(shape=64, depth=SPEC.depth, init=[])
    m.submodules.reader = reader = MemoryReader(SPEC, latency=latency)
    m.submodules.writer = writer = MemoryWriter(SPEC, empty=empty, always_ready=not empty)
    _source(m, reader, init, latency)
    wp = dst.write_port()
    check = dst.read_port(domain="comb")
    m.d.comb += [wp.addr.eq(writer.port.addr), wp.en.eq(writer.port.en), wp.data.eq(writer.port.data)]
    transfers = [(3, 10), (20, 1), (0, 0), (30, 10)] if empty else [(3, 10), (20, 1), (5, 2), (30, 10)]
    received = []
    written = []
    done_pulses = []

    async def control(ctx):
        for base, count in transfers:
            await stream_put(ctx, reader.i_transfer, {"base": base, "count": count})
            await stream_put(ctx, writer.i_transfer, {"base": base, "count": count})
            # Forward the rows with random stalls and bubbles, counting them.
            for _ in range(count):
                row = await stream_get(ctx, reader.o_rows, rng=rng, stall_prob=0.4)
                received.append(row)
                await stream_put(ctx, writer.i_rows, row, rng=rng, bubble_prob=0.4)
        await ctx.tick().repeat(2)
        for base, count in transfers:
            for i in range(count):
                ctx.set(check.addr, base + i)
                written.append(ctx.get(check.data))

    async def watch_done(ctx):
        async for _, _, done in ctx.tick().sample(writer.done):
            if done:
                done_pulses.append(1)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(watch_done, background=True)
    sim.run()
    expected = [init[b + i] for b, c in transfers for i in range(c)]
    assert received == expected
    assert written == expected
    assert len(done_pulses) == len(transfers)


@pytest.mark.parametrize("latency", [1, 2])
def test_reader_streams_one_row_per_cycle(latency):
    """Rows back to back after the first, which comes ``latency`` cycles after the transfer is taken."""
    m = Module()
    m.submodules.reader = reader = MemoryReader(SPEC, latency=latency)
    _source(m, reader, list(range(SPEC.depth)), latency)
    cycles = []

    async def bench(ctx):
        await stream_put(ctx, reader.i_transfer, {"base": 0, "count": 32})
        ctx.set(reader.o_rows.ready, 1)
        got = []
        n = 0
        while len(got) < 32:
            _, _, valid, payload = await ctx.tick().sample(reader.o_rows.valid, reader.o_rows.payload)
            n += 1
            if valid:
                got.append(payload)
        assert got == list(range(32))
        cycles.append(n)
        # Idle again, the reader leaves its port alone: ``en`` means a row moved (the accelerator's watchdog).
        for _ in range(4):
            _, _, en, valid = await ctx.tick().sample(reader.port.en, reader.o_rows.valid)
            assert not en and not valid

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert cycles == [32 + latency]


def test_reader_refuses_another_latency():
    import gc
    import warnings

    from amaranth.hdl import UnusedElaboratable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)     # the refused reader is never elaborated
        with pytest.raises(ValueError, match="read latency must be 1 or 2 cycles, not 3"):
            MemoryReader(SPEC, latency=3)
        gc.collect()


def test_always_ready_writer_drops_rows_outside_a_transfer():
    """With ``always_ready`` a row offered before the transfer (or after its last row) is taken and dropped; the
    transfer's rows land at its base and ``done`` pulses once."""
    m = Module()
    m.submodules.dst = dst = Memory(shape=64, depth=SPEC.depth, init=[7] * SPEC.depth)
    m.submodules.writer = writer = MemoryWriter(SPEC, empty=False, always_ready=True)
    wp, check = dst.write_port(), dst.read_port(domain="comb")
    m.d.comb += [wp.addr.eq(writer.port.addr), wp.en.eq(writer.port.en), wp.data.eq(writer.port.data)]
    dones = []

    async def bench(ctx):
        await stream_put(ctx, writer.i_rows, 111)             # no transfer yet: dropped
        await stream_put(ctx, writer.i_transfer, {"base": 5, "count": 2})
        for row in (222, 333, 444):                          # the third is past the count: dropped
            ctx.set(writer.i_rows.payload, row)
            ctx.set(writer.i_rows.valid, 1)
            _, _, done, ready = await ctx.tick().sample(writer.done, writer.i_rows.ready)
            assert ready
            dones.append(done)
        ctx.set(writer.i_rows.valid, 0)
        await ctx.tick()
        got = []
        for addr in range(SPEC.depth):
            ctx.set(check.addr, addr)
            got.append(ctx.get(check.data))
        assert got == [7] * 5 + [222, 333] + [7] * (SPEC.depth - 7)
        assert dones == [0, 1, 0]

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("depth,width,stall", [(8, 40, 0.0), (8, 40, 0.4), (5, 18, 0.3), (1, 7, 0.2)])
def test_pipelined_fifo_keeps_order_and_rate(depth, width, stall):
    """Every word once and in order, under a writer that writes whenever there is room (half the time) and a
    reader that stalls at random; with a reader that never stalls, a word a cycle, the first one
    PIPELINED_FIFO_LATENCY cycles after its write."""
    rng = random.Random(depth * 100 + width)
    words = [rng.getrandbits(width) for _ in range(60)]
    dut = PipelinedFIFO(width=width, depth=depth)
    written, got, first = [], [], []

    async def bench(ctx):
        cycle = 0
        busy_writer = stall == 0.0
        while len(got) < len(words):
            w = len(written) < len(words) and ctx.get(dut.w_rdy) and (busy_writer or rng.random() < 0.5)
            if w:
                ctx.set(dut.w_data, words[len(written)])
                written.append(cycle)
            ctx.set(dut.w_en, bool(w))
            ctx.set(dut.r_en, rng.random() >= stall)
            _, _, r_rdy, r_en, data = await ctx.tick().sample(dut.r_rdy, dut.r_en, dut.r_data)
            if r_rdy and r_en:
                got.append(data)
                first.append(cycle)
            cycle += 1
            assert cycle < 2000, "the FIFO stopped"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == words
    if stall == 0.0 and depth >= PIPELINED_FIFO_LATENCY:
        assert first[0] - written[0] == PIPELINED_FIFO_LATENCY
        assert first == list(range(first[0], first[0] + len(words)))


def test_pipelined_fifo_refuses_no_depth():
    import gc
    import warnings

    from amaranth.hdl import UnusedElaboratable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)     # the refused FIFO is never elaborated
        with pytest.raises(ValueError, match="depth must be at least 1, not 0"):
            PipelinedFIFO(width=8, depth=0)
        gc.collect()
