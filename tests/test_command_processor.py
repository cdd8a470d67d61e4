"""The command processor against the host protocol: data round trips, engine runs, and every malformed command
answered with the right error while the processor keeps working."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from cnnacc.host import protocol
from cnnacc.hw.command_processor import WORD_LAYOUT, CommandProcessor
from cnnacc.hw.commands import MemoryId, Opcode, RunState, Status
from cnnacc.hw.memory_map import MemoryMap, MemorySpec
from cnnacc.sim.amaranth_streams import stream_get, stream_put

SPECS = {MemoryId.ACT_A: MemorySpec(64, 16), MemoryId.WEIGHTS: MemorySpec(32, 8)}
DEPTHS = {memory: spec.words for memory, spec in SPECS.items()}
CONFIG_ID = 0xC0FFEE42


class Harness(wiring.Component):
    """Command processor + memory map + an engine that answers RUN after descriptor[1] cycles, and rejects a
    descriptor whose word 0 is not 0x5EED (a test double for the real engines). While it runs it owns words
    ``[descriptor[2], descriptor[3])`` of ACT_A, and it is said to write WEIGHTS."""
    i_host: In(stream.Signature(WORD_LAYOUT))
    o_host: Out(stream.Signature(WORD_LAYOUT))

    def __init__(self, registered_read=False, host_register=False, select_only=False):
        self._registered_read = registered_read
        self._host_register = host_register
        self._select_only = select_only
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.memories = memories = MemoryMap(SPECS, host_register=self._host_register)
        m.submodules.cp = cp = CommandProcessor(DEPTHS, CONFIG_ID, max_descriptor=4,
                                                engine_written=[MemoryId.WEIGHTS],
                                                registered_read=self._registered_read,
                                                read_latency=memories.read_latency, select_only=self._select_only)
        wiring.connect(m, wiring.flipped(self.i_host), cp.i_host)
        wiring.connect(m, cp.o_host, wiring.flipped(self.o_host))
        wiring.connect(m, cp.mem, memories.bus)
        countdown = Signal(32)
        busy = Signal()
        with m.If(cp.run.start):
            with m.If(cp.run.descriptor[0] != 0x5EED):
                m.d.comb += [cp.run.done.eq(1), cp.run.error.eq(1)]
            with m.Else():
                m.d.sync += [busy.eq(1), countdown.eq(cp.run.descriptor[1]),
                             cp.run.lock[MemoryId.ACT_A.value].lo.eq(cp.run.descriptor[2]),
                             cp.run.lock[MemoryId.ACT_A.value].hi.eq(cp.run.descriptor[3])]
        with m.If(busy):
            m.d.sync += countdown.eq(countdown - 1)
            with m.If(countdown == 0):
                m.d.sync += busy.eq(0)
                m.d.comb += cp.run.done.eq(1)
        return m


def simulate(commands, seed=0, bubble=0.3, stall=0.3, registered_read=False, host_register=False,
             select_only=False):
    """Send each command (a list of words, or (words, last_flags)) and collect each answer."""
    dut = Harness(registered_read, host_register, select_only)
    rng = random.Random(seed)
    answers = []

    async def host(ctx):
        for command in commands:
            words, lasts = command if isinstance(command, tuple) else (command, None)
            lasts = lasts or [i == len(words) - 1 for i in range(len(words))]
            for w, last in zip(words, lasts):
                await stream_put(ctx, dut.i_host, {"data": w, "last": last}, rng=rng, bubble_prob=bubble)
            answer = []
            while True:
                beat = await stream_get(ctx, dut.o_host, rng=rng, stall_prob=stall)
                answer.append(int(beat.data))
                if beat.last:
                    break
            answers.append(answer)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.run_until(1e-8 * 20000)
    assert len(answers) == len(commands), "the command processor stopped answering"
    return answers


# registered_read: the ECP5's command processor, which registers each word read before it answers with it;
# host_register: the ECP5's memory map, which registers the host's read data beside each block RAM.
@pytest.mark.parametrize("seed, registered_read, host_register", [(0, False, False), (1, False, False),
                                                                  (2, True, False), (3, True, True)])
def test_write_read_round_trip(seed, registered_read, host_register):
    rng = np.random.default_rng(seed)
    data_a = rng.integers(0, 1 << 32, size=20).tolist()
    data_w = rng.integers(0, 1 << 32, size=8).tolist()
    answers = simulate([
        protocol.encode_write(MemoryId.ACT_A, 5, data_a),
        protocol.encode_write(MemoryId.WEIGHTS, 0, data_w),
        protocol.encode_read(MemoryId.ACT_A, 5, 20),
        protocol.encode_read(MemoryId.WEIGHTS, 3, 5),
        protocol.encode_read(MemoryId.ACT_A, 0, 0),
    ], seed=seed, registered_read=registered_read, host_register=host_register)
    assert protocol.decode_response(answers[0], Opcode.WRITE) == []
    assert protocol.decode_response(answers[1], Opcode.WRITE) == []
    assert protocol.decode_response(answers[2], Opcode.READ, 20) == data_a
    assert protocol.decode_response(answers[3], Opcode.READ, 5) == data_w[3:]
    assert protocol.decode_response(answers[4], Opcode.READ, 0) == []


def test_status_reports_cycles_and_config_id():
    answers = simulate([protocol.encode_status(), protocol.encode_nop(), protocol.encode_status()])
    first = protocol.decode_response(answers[0], Opcode.STATUS, 3)
    second = protocol.decode_response(answers[2], Opcode.STATUS, 3)
    assert first[2] == second[2] == CONFIG_ID
    assert second[0] + (second[1] << 32) > first[0] + (first[1] << 32)
    assert protocol.decode_response(answers[1], Opcode.NOP) == []


# select_only: the ECP5's descriptor writes, enabled by the word's select without the state.
@pytest.mark.parametrize("select_only", [False, True])
def test_run_reports_engine_cycles_and_rejection(select_only):
    answers = simulate([protocol.encode_run([0x5EED, 37]), protocol.encode_run([0xBAD, 1]),
                        protocol.encode_run([0x5EED, 3])], select_only=select_only)
    cycles, = protocol.decode_response(answers[0], Opcode.RUN, 1)
    assert 37 <= cycles <= 40
    with pytest.raises(protocol.AcceleratorError, match="RUN refused by the accelerator: BAD_DESCRIPTOR"):
        protocol.decode_response(answers[1], Opcode.RUN, 1)
    assert protocol.decode_response(answers[2], Opcode.RUN, 1)[0] < 10


def status_of(answer):
    return Status(answer[0] & 0xFF)


@pytest.mark.parametrize("select_only", [False, True])
def test_bad_commands_are_answered_and_forgotten(select_only):
    good_write = protocol.encode_write(MemoryId.ACT_A, 0, [11, 22, 33])
    short_run = protocol.encode_run([0x5EED, 900, 0])
    answers = simulate([
        [0x7F000000, 1, 2, 3],                                   # unknown opcode with a payload
        [0x7E000000],                                            # unknown opcode, one word
        good_write[:-1],                                         # WRITE that ends early
        (good_write + [99], None),                               # WRITE that goes on too long
        protocol.encode_write(MemoryId.WEIGHTS, 6, [1, 2, 3]),   # past the end of a memory
        protocol.encode_read(MemoryId.ACT_A, 0, 1)[:1] + [0x07 << 24],  # unknown memory
        protocol.encode_read(MemoryId.ACT_A, 0, 1) + [0],        # READ with a stray word
        protocol.encode_run([1] * 5),                            # descriptor longer than the engine takes
        protocol.encode_run([]),                                 # empty descriptor
        protocol.encode_status() + [5],                          # STATUS with a stray word
        good_write,
        protocol.encode_read(MemoryId.ACT_A, 0, 3),
        (short_run[:-1], [False] * (len(short_run) - 2) + [True]),  # descriptor that ends a word early
        protocol.encode_run([0x5EED, 20]),
    ], select_only=select_only)
    expected = [Status.UNKNOWN_OPCODE, Status.UNKNOWN_OPCODE, Status.BAD_LENGTH, Status.BAD_LENGTH,
                Status.BAD_ADDRESS, Status.BAD_ADDRESS, Status.BAD_LENGTH, Status.BAD_LENGTH,
                Status.BAD_LENGTH, Status.BAD_LENGTH]
    assert [status_of(a) for a in answers[:10]] == expected
    assert all(len(a) == 1 for a in answers[:10])
    # After all that, the processor still answers correctly.
    assert protocol.decode_response(answers[11], Opcode.READ, 3) == [11, 22, 33]
    # A descriptor cut short is refused, and the next one is written whole (its word 1 is the run's length).
    assert status_of(answers[12]) == Status.BAD_LENGTH and len(answers[12]) == 1
    assert 20 <= protocol.decode_response(answers[13], Opcode.RUN, 1)[0] <= 23


def test_host_side_errors_are_one_line():
    with pytest.raises(protocol.AcceleratorError, match="sent no answer"):
        protocol.decode_response([], Opcode.READ)
    with pytest.raises(protocol.AcceleratorError, match="malformed answer word"):
        protocol.decode_response([0x000000FE], Opcode.READ)
    with pytest.raises(ValueError, match="24-bit"):
        protocol.encode_read(MemoryId.ACT_A, 1 << 24, 1)


def test_int8_packing_round_trip():
    values = np.arange(-128, 128, dtype=np.int8)[:-3]
    words = protocol.pack_int8(values)
    assert len(words) == 64 and words[0] == 0x83828180
    np.testing.assert_array_equal(protocol.unpack_int8(words, len(values)), values)


def test_start_wait_and_busy_while_a_run_is_in_flight():
    rng = np.random.default_rng(3)
    data_a = rng.integers(0, 1 << 32, size=16).tolist()
    answers = simulate([
        protocol.encode_write(MemoryId.ACT_A, 0, data_a),
        protocol.encode_start([0x5EED, 400, 4, 8]),              # owns ACT_A words 4..7 for ~400 cycles
        protocol.encode_status(),
        protocol.encode_write(MemoryId.ACT_A, 0, [1, 2, 3, 4]),  # words 0..3: beside the run, accepted
        protocol.encode_write(MemoryId.ACT_A, 6, [7, 7, 7]),     # words 6..8: overlaps, refused
        protocol.encode_read(MemoryId.ACT_A, 7, 1),              # inside: refused
        protocol.encode_read(MemoryId.ACT_A, 8, 2),              # just past it: served
        protocol.encode_write(MemoryId.WEIGHTS, 0, [5]),         # a memory engines write: refused
        protocol.encode_start([0x5EED, 3, 0, 0]),                # a second run: refused
        protocol.encode_run([0x5EED, 3, 0, 0]),
        protocol.encode_wait(),                                  # the first run's end
        protocol.encode_wait(),                                  # nothing left to wait for
        protocol.encode_status(),
        protocol.encode_read(MemoryId.ACT_A, 0, 16),
        protocol.encode_write(MemoryId.WEIGHTS, 0, [5]),         # free again
        protocol.encode_start([0xBAD, 3, 0, 0]),                 # rejected at once: nothing runs
        protocol.encode_wait(),
        protocol.encode_run([0x5EED, 20, 0, 16]),                # RUN = START + WAIT still
        protocol.encode_read(MemoryId.ACT_A, 0, 1),
    ], seed=3)
    assert protocol.decode_response(answers[0], Opcode.WRITE) == []
    assert protocol.decode_response(answers[1], Opcode.START) == []
    status = protocol.decode_response(answers[2], Opcode.STATUS, 3)
    assert protocol.run_state(answers[2]) is RunState.RUNNING and status[2] == CONFIG_ID
    assert protocol.decode_response(answers[3], Opcode.WRITE) == []
    for i in (4, 5, 7, 8, 9):
        assert status_of(answers[i]) is Status.BUSY and len(answers[i]) == 1, (i, answers[i])
    assert protocol.decode_response(answers[6], Opcode.READ, 2) == data_a[8:10]
    cycles, = protocol.decode_response(answers[10], Opcode.WAIT, 1)
    assert 400 <= cycles <= 403
    assert status_of(answers[11]) is Status.IDLE and len(answers[11]) == 1
    assert protocol.run_state(answers[12]) is RunState.IDLE
    # The refused write changed nothing; the accepted one landed.
    assert protocol.decode_response(answers[13], Opcode.READ, 16) == [1, 2, 3, 4] + data_a[4:]
    assert protocol.decode_response(answers[14], Opcode.WRITE) == []
    assert status_of(answers[15]) is Status.BAD_DESCRIPTOR and len(answers[15]) == 1
    assert status_of(answers[16]) is Status.IDLE
    assert 20 <= protocol.decode_response(answers[17], Opcode.RUN, 1)[0] <= 23
    # A RUN's lock ends with it: the whole of ACT_A is readable again.
    assert protocol.decode_response(answers[18], Opcode.READ, 1) == [1]


@pytest.mark.parametrize("select_only", [False, True])
def test_words_after_a_descriptor_do_not_reach_it(select_only):
    """A descriptor shorter than the longest leaves the words after it alone: the next command's words are not
    written into the descriptor's remaining words (here word 3, the engine's lock end)."""
    answers = simulate([
        protocol.encode_run([0x5EED, 5, 0]),                     # three words: word 3 stays 0
        protocol.encode_write(MemoryId.ACT_A, 0, [60]),
        protocol.encode_start([0x5EED, 400, 0]),                 # owns ACT_A words 0 .. word 3 (none)
        protocol.encode_write(MemoryId.ACT_A, 1, [1]),
        protocol.encode_wait(),
    ], select_only=select_only)
    assert protocol.decode_response(answers[3], Opcode.WRITE) == []


def test_finished_run_waits_for_its_wait():
    answers = simulate([protocol.encode_start([0x5EED, 10, 0, 0]), protocol.encode_nop(), protocol.encode_status(),
                        protocol.encode_wait()], seed=5)
    # Whatever the host's pace, the status says finished once the run has ended and WAIT still collects it.
    assert protocol.run_state(answers[2]) in (RunState.RUNNING, RunState.FINISHED)
    assert 10 <= protocol.decode_response(answers[3], Opcode.WAIT, 1)[0] <= 13


def test_range_check_sees_every_bit_of_address_and_count():
    """The processor keeps only the bits of its largest memory (ACT_A: 32 words) of an address and a count: a
    transfer whose count or word has a bit set above them, or whose low bits wrap, is still past the memory."""
    depth = DEPTHS[MemoryId.ACT_A]
    cases = [(0, depth, Status.OK), (depth - 1, 1, Status.OK), (depth, 0, Status.OK), (depth, 1, Status.BAD_ADDRESS),
             (0, (1 << 24) - 1, Status.BAD_ADDRESS), (0, depth + 64, Status.BAD_ADDRESS),
             (64, 1, Status.BAD_ADDRESS), ((1 << 24) - 1, 1, Status.BAD_ADDRESS), (1 << 23, 0, Status.BAD_ADDRESS),
             (63, 63, Status.BAD_ADDRESS), (1, (1 << 24) - 1, Status.BAD_ADDRESS)]
    answers = simulate([protocol.encode_read(MemoryId.ACT_A, word, count) for word, count, _ in cases]
                       + [protocol.encode_write(MemoryId.ACT_A, 64 + 2, [7, 8]),
                          ([protocol._header(Opcode.WRITE, (1 << 24) - 1), protocol._address(MemoryId.ACT_A, 0), 1, 2],
                           None)], seed=5)
    assert [status_of(a) for a in answers] == [status for _, _, status in cases] + [Status.BAD_ADDRESS] * 2
    assert [len(a) for a in answers[:len(cases)]] == [1 + count if status == Status.OK else 1
                                                      for _, count, status in cases]
