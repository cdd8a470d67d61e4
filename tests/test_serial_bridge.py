"""The serial link end to end in simulation: host SerialLink -> frames -> SerialBridge -> command processor ->
memories and back, on a clean line and on one that flips and drops bytes."""

import binascii

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from cnnacc.host import protocol
from cnnacc.host.serial_link import FrameReader, LinkError, SerialLink, crc16, encode_frame
from cnnacc.hw.command_processor import CommandProcessor
from cnnacc.hw.commands import MemoryId, Opcode
from cnnacc.hw.memory_map import MemoryMap, MemorySpec
from cnnacc.hw.serial_bridge import FrameType, SerialBridge, crc16_update
from cnnacc.sim.serial_port import SimulatedSerialPort

SPECS = {MemoryId.ACT_A: MemorySpec(64, 32), MemoryId.WEIGHTS: MemorySpec(32, 64)}
DEPTHS = {memory: spec.words for memory, spec in SPECS.items()}
MAX_WORDS = 32


class LinkedAccelerator(wiring.Component):
    """Bridge + command processor + memories: the host-facing half of an accelerator."""
    i_rx: In(stream.Signature(8))
    o_tx: Out(stream.Signature(8))

    def __init__(self, registered_reads=False):
        self._registered_reads = registered_reads
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = SerialBridge(max_words=MAX_WORDS, idle_timeout=48,
                                                    registered_reads=self._registered_reads)
        m.submodules.cp = cp = CommandProcessor(DEPTHS, 0x1234ABCD)
        m.submodules.memories = memories = MemoryMap(SPECS)
        wiring.connect(m, wiring.flipped(self.i_rx), bridge.i_rx)
        wiring.connect(m, bridge.o_tx, wiring.flipped(self.o_tx))
        wiring.connect(m, bridge.o_cmd, cp.i_host)
        wiring.connect(m, cp.o_host, bridge.i_answer)
        wiring.connect(m, cp.mem, memories.bus)
        m.d.comb += [cp.run.done.eq(cp.run.start), cp.run.error.eq(1)]   # no engines in this test
        return m


def make_link(registered_reads=False, **faults):
    dut = LinkedAccelerator(registered_reads)
    port = SimulatedSerialPort(dut, dut.i_rx, dut.o_tx, **faults)
    link = SerialLink(port, timeout=40e-6, retries=8, max_words=MAX_WORDS, clock=port.clock, name="simulated UART")
    return link, port


def transact(link, words, opcode, expected=0):
    return protocol.decode_response(link.transact(words), opcode, expected)


def test_crc_gateware_equals_host():
    values = list(range(256)) + [0xA5, 0x00, 0xFF]
    sig_crc, sig_byte, sig_out = Signal(16), Signal(8), Signal(16)
    m = Module()
    m.d.comb += sig_out.eq(crc16_update(sig_crc, sig_byte))
    sim = Simulator(m)
    mismatches = []

    async def bench(ctx):
        crc = 0xFFFF
        for v in values:
            ctx.set(sig_crc, crc)
            ctx.set(sig_byte, v)
            expected = crc16_update(crc, v)
            if ctx.get(sig_out) != expected:
                mismatches.append(v)
            crc = expected
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches
    assert crc16(b"123456789") == binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1


def test_frame_reader_resynchronises():
    good = encode_frame(FrameType.ANSWER, 7, [1, 2, 3])
    damaged = bytearray(good)
    damaged[6] ^= 0x10
    # A stray SYNC whose "length" is impossible is skipped; the damaged frame is reported; the partial one waits.
    reader = FrameReader(max_words=32)
    assert reader.feed(b"\x00\xa5" + bytes(damaged) + good[:4]) == [("damaged", None, None)]
    assert reader.feed(good[4:]) == [(FrameType.ANSWER, 7, [1, 2, 3])]


# registered_reads: the ECP5 boards' bridge, which registers the answer memory's byte before sending it.
@pytest.mark.parametrize("registered_reads", [False, True])
def test_clean_line_round_trip(registered_reads):
    link, port = make_link(registered_reads)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1 << 32, size=30).tolist()
    transact(link, protocol.encode_write(MemoryId.ACT_A, 3, data), Opcode.WRITE)
    assert transact(link, protocol.encode_read(MemoryId.ACT_A, 3, 30), Opcode.READ, 30) == data
    status = transact(link, protocol.encode_status(), Opcode.STATUS, 3)
    assert status[2] == 0x1234ABCD
    assert link.stats["retries"] == 0


@pytest.mark.parametrize("seed, registered_reads", [(1, False), (2, False), (3, False), (4, True)])
def test_noisy_line_still_exact(seed, registered_reads):
    link, port = make_link(registered_reads, seed=seed, flip=0.003, drop=0.002)
    rng = np.random.default_rng(seed)
    for i in range(6):
        data = rng.integers(0, 1 << 32, size=24).tolist()
        transact(link, protocol.encode_write(MemoryId.WEIGHTS, i, data), Opcode.WRITE)
        assert transact(link, protocol.encode_read(MemoryId.WEIGHTS, i, 24), Opcode.READ, 24) == data, seed
    assert port.faults > 0 and link.stats["retries"] > 0, "the line should have needed retries"


def test_damaged_frame_writes_nothing():
    link, port = make_link()
    transact(link, protocol.encode_write(MemoryId.ACT_A, 0, [5, 6, 7]), Opcode.WRITE)
    frame = bytearray(encode_frame(FrameType.COMMAND, 99, protocol.encode_write(MemoryId.ACT_A, 0, [9, 9, 9])))
    frame[-5] ^= 0x01                                   # corrupt a data byte; the CRC no longer matches
    port.write(bytes(frame))
    reader, frames = FrameReader(), []
    for _ in range(40):
        frames += reader.feed(port.read(64))
    assert [(f[0], f[1]) for f in frames] == [(FrameType.NAK, 99)]
    assert transact(link, protocol.encode_read(MemoryId.ACT_A, 0, 3), Opcode.READ, 3) == [5, 6, 7]


def test_truncated_and_oversized_frames_are_refused():
    link, port = make_link()
    reader = FrameReader()
    frame = encode_frame(FrameType.COMMAND, 5, protocol.encode_write(MemoryId.ACT_A, 0, [1, 2, 3]))
    port.write(frame[:9])                                # cut short: the bridge times out and NAKs
    frames = []
    for _ in range(20):
        frames += reader.feed(port.read(64))
    port.write(encode_frame(FrameType.COMMAND, 6, [0] * (MAX_WORDS + 1)))
    for _ in range(40):
        frames += reader.feed(port.read(64))
    assert [(f[0], f[1]) for f in frames] == [(FrameType.NAK, 5), (FrameType.NAK, 6)]
    assert transact(link, protocol.encode_status(), Opcode.STATUS, 3)[2] == 0x1234ABCD


def test_hopeless_line_fails_clearly():
    link, port = make_link(seed=4, drop=0.5)
    with pytest.raises(LinkError, match="board on simulated UART did not answer after 8 attempts"):
        link.transact(protocol.encode_status())


def test_retry_of_an_executed_command_resends_its_answer():
    """A RETRY whose seq is the last executed command is answered from the stored answer, not executed again;
    a RETRY of a command that never arrived whole is executed."""
    link, port = make_link()
    transact(link, protocol.encode_write(MemoryId.ACT_A, 0, [1, 2, 3]), Opcode.WRITE)

    def exchange(frame_type, seq, words):
        port.write(encode_frame(frame_type, seq, words))
        reader, frames = FrameReader(), []
        for _ in range(40):
            frames += reader.feed(port.read(64))
        assert len(frames) == 1 and frames[0][:2] == (FrameType.ANSWER, seq), frames
        return frames[0][2]

    first = exchange(FrameType.COMMAND, 50, protocol.encode_write(MemoryId.ACT_A, 0, [4, 5, 6]))
    # Same seq, other contents: the bridge must not execute it (a WRITE of 9s), only resend the answer.
    again = exchange(FrameType.RETRY, 50, protocol.encode_write(MemoryId.ACT_A, 0, [9, 9, 9]))
    assert again == first
    assert exchange(FrameType.COMMAND, 51, protocol.encode_read(MemoryId.ACT_A, 0, 3))[1:] == [4, 5, 6]
    # A RETRY with a seq the bridge has not executed is executed.
    exchange(FrameType.RETRY, 52, protocol.encode_write(MemoryId.ACT_A, 0, [7, 8, 9]))
    assert exchange(FrameType.RETRY, 53, protocol.encode_read(MemoryId.ACT_A, 0, 3))[1:] == [7, 8, 9]
    # ... and the stored answer is the latest one: the RETRY of 53 is the READ's answer again.
    assert exchange(FrameType.RETRY, 53, protocol.encode_write(MemoryId.ACT_A, 0, [0, 0, 0]))[1:] == [7, 8, 9]


@pytest.mark.parametrize("registered_reads", [False, True])
def test_frames_of_exactly_max_words_both_ways(registered_reads):
    """The longest command (max_words words) is executed, the longest answer sent whole, and replayed whole."""
    link, port = make_link(registered_reads)
    rng = np.random.default_rng(7)
    data = rng.integers(0, 1 << 32, size=MAX_WORDS - 1).tolist()
    write = protocol.encode_write(MemoryId.ACT_A, 1, data[:MAX_WORDS - 2])
    assert len(write) == MAX_WORDS
    transact(link, write, Opcode.WRITE)
    transact(link, protocol.encode_write(MemoryId.ACT_A, MAX_WORDS - 1, data[MAX_WORDS - 2:]), Opcode.WRITE)
    read = protocol.encode_read(MemoryId.ACT_A, 1, MAX_WORDS - 1)
    assert transact(link, read, Opcode.READ, MAX_WORDS - 1) == data

    def answer(frame_type, seq):
        port.write(encode_frame(frame_type, seq, read))
        reader, frames = FrameReader(), []
        for _ in range(60):
            frames += reader.feed(port.read(64))
        assert len(frames) == 1 and frames[0][:2] == (FrameType.ANSWER, seq), frames
        return frames[0][2]

    first = answer(FrameType.COMMAND, 200)
    assert len(first) == MAX_WORDS and first[1:] == data
    assert answer(FrameType.RETRY, 200) == first
