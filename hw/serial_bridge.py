"""The serial bridge: frames on a byte stream (a UART) <-> commands and answers on the host bus.

Frame, both directions (all multi-byte fields little-endian)::

    0xA5 | type | seq | length (2) | payload: length 32-bit words | CRC-16 (2)

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial 0xFFFF) over ``type`` to the end of the payload.
The host sends ``COMMAND`` frames; the bridge answers every one, with ``ANSWER`` (the command processor's answer
words) or ``NAK`` (the frame arrived damaged: bad CRC, bad type, empty, too long, or cut short by a pause longer
than ``idle_timeout`` cycles). ``seq`` is echoed so the host can match answers to commands.

The host sends a command again as a ``RETRY`` frame with the same ``seq``. If that ``seq`` is the last command
the bridge executed, the bridge sends the stored answer again instead of executing the command twice (the answer,
not the command, was lost on the line); otherwise (the first attempt never arrived whole) it executes it. This
makes retries safe for commands that are not idempotent (``START`` of a run, ``WAIT`` for it). The answer is kept
in its own buffer, so receiving the retried frame does not overwrite it. A command runs only
after its whole frame has been received and checked, so a damaged frame never writes anything; after a damaged
frame the bridge waits for the line to go idle before it answers, so the rest of that frame is not mistaken for a
new one. The encodings are shared with the host through :class:`FrameType` and :data:`SYNC`.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .command_processor import WORD_LAYOUT

__all__ = ["SYNC", "FrameType", "crc16_update", "SerialBridge"]

SYNC = 0xA5


class FrameType(enum.Enum, shape=8):
    COMMAND = 0x01
    ANSWER = 0x02
    NAK = 0x03
    RETRY = 0x04        # a COMMAND sent again: answered from the stored answer if it was already executed


def crc16_update(crc, byte):
    """CRC-16/CCITT-FALSE of ``crc`` extended by ``byte``: works on Python ints and on Amaranth values alike."""
    if isinstance(crc, int) and isinstance(byte, int):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        return crc
    bits = [crc[i] for i in range(16)]
    for i in range(8):
        bits[8 + i] = bits[8 + i] ^ byte[i]
    for _ in range(8):
        top = bits[15]
        bits = [top] + bits[:15]      # shift left by one, the top bit comes around to bit 0 (x^0 term)
        bits[5] = bits[5] ^ top       # x^5 term
        bits[12] = bits[12] ^ top     # x^12 term
    return Cat(*bits)


class SerialBridge(wiring.Component):
    """Frames on ``i_rx``/``o_tx`` (byte streams) to words on ``o_cmd``/``i_answer`` (the command processor).

    Parameters
    ----------
    max_words : int
        Longest payload, in words, of a command frame and of an answer frame.
    idle_timeout : int
        Clock cycles of silence that end a frame cut short (choose a few byte times).
    """

    def __init__(self, max_words=256, idle_timeout=10_000):
        if not 2 <= max_words <= 65535:
            raise ValueError(f"max_words must be from 2 to 65535, not {max_words}")
        self._max_words = max_words
        self._idle_timeout = idle_timeout
        super().__init__({
            "i_rx":     In(stream.Signature(8)),
            "o_tx":     Out(stream.Signature(8)),
            "o_cmd":    Out(stream.Signature(WORD_LAYOUT)),
            "i_answer": In(stream.Signature(WORD_LAYOUT)),
            "crc_errors": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        max_words = self._max_words
        # The command being received, and the last answer (kept for a RETRY of its command).
        m.submodules.buffer = buffer = Memory(shape=32, depth=max_words, init=[])
        wp = buffer.write_port()
        rp = buffer.read_port()
        m.submodules.answers = answers = Memory(shape=32, depth=max_words, init=[])
        ans_wp = answers.write_port()
        ans_rp = answers.read_port()

        byte_in = self.i_rx.payload
        got = Signal()
        m.d.comb += got.eq(self.i_rx.valid & self.i_rx.ready)

        crc = Signal(16)
        frame_type = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        byte_index = Signal(range(max_words * 4 + 8))
        word = Signal(32)
        words = Signal(range(max_words + 1))   # words in the buffer (received, or answer collected)
        answer_words = Signal(range(max_words + 1))
        done_seq = Signal(8)                   # seq of the command whose answer is in ``answers``
        done_valid = Signal()
        replay = Signal()
        damaged = Signal()
        idle = Signal(range(self._idle_timeout + 1))

        # Silence counter: cleared by every received byte.
        with m.If(got):
            m.d.sync += idle.eq(0)
        with m.Elif(idle != self._idle_timeout):
            m.d.sync += idle.eq(idle + 1)
        timed_out = idle == self._idle_timeout

        # Answer frame transmission state.
        tx_type = Signal(8)
        tx_len = Signal(16)
        tx_pos = Signal(range(max_words * 4 + 8))
        tx_phase = Signal(3)
        feed_last = Signal()
        rx_left = Signal(range(max_words * 4 + 1))
        cmd_data = Signal(32)
        ans_valid = Signal()
        ans_data = Signal(32)
        ans_last = Signal()
        tx_left = Signal(range(max_words * 4 + 1))
        tx_crc = Signal(16)
        tx_byte = Signal(8)
        send_index = Signal(range(max_words + 1))

        m.d.comb += [wp.data.eq(word), rp.addr.eq(send_index)]
        # Registered a cycle before VERIFY needs it, off the byte path.
        m.d.sync += replay.eq((frame_type == FrameType.RETRY) & done_valid & (seq == done_seq))

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(got & (byte_in == SYNC)):
                    m.d.sync += [crc.eq(0xFFFF), byte_index.eq(0), damaged.eq(0)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_update(crc, byte_in)), byte_index.eq(byte_index + 1)]
                    with m.Switch(byte_index):
                        with m.Case(0):
                            m.d.sync += frame_type.eq(byte_in)
                        with m.Case(1):
                            m.d.sync += seq.eq(byte_in)
                        with m.Case(2):
                            m.d.sync += length[:8].eq(byte_in)
                        with m.Case(3):
                            m.d.sync += [length[8:].eq(byte_in), byte_index.eq(0)]
                            m.d.sync += rx_left.eq(Cat(length[:8], byte_in) * 4)
                            full_length = Cat(length[:8], byte_in)
                            with m.If((full_length == 0) | (full_length > max_words) |
                                      ((frame_type != FrameType.COMMAND) & (frame_type != FrameType.RETRY))):
                                m.next = "DROP"
                            with m.Else():
                                m.next = "PAYLOAD"
                with m.Elif(timed_out):
                    m.next = "NAK"

            with m.State("PAYLOAD"):
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += [crc.eq(crc16_update(crc, byte_in)), byte_index.eq(byte_index + 1)]
                    with m.Switch(byte_index[:2]):
                        for i in range(3):
                            with m.Case(i):
                                m.d.sync += word[8 * i:8 * i + 8].eq(byte_in)
                        with m.Case(3):
                            m.d.comb += [wp.en.eq(1), wp.addr.eq(byte_index[2:]),
                                         wp.data.eq(Cat(word[:24], byte_in))]
                    m.d.sync += rx_left.eq(rx_left - 1)
                    with m.If(rx_left == 1):    # a countdown: no adder and compare on the byte path
                        m.d.sync += byte_index.eq(0)
                        m.next = "CRC"
                with m.Elif(timed_out):
                    m.next = "NAK"

            with m.State("CRC"):
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(got):
                    m.d.sync += byte_index.eq(byte_index + 1)
                    with m.If(byte_index == 0):
                        m.d.sync += damaged.eq(byte_in != crc[:8])
                    with m.Else():
                        m.d.sync += damaged.eq(damaged | (byte_in != crc[8:]))
                        m.next = "VERIFY"
                with m.Elif(timed_out):
                    m.next = "NAK"

            # The verdict on the CRC a cycle after its last byte, from a register.
            with m.State("VERIFY"):
                with m.If(damaged):
                    m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
                    m.next = "NAK"
                with m.Elif(replay):
                    m.d.sync += [tx_type.eq(FrameType.ANSWER), words.eq(answer_words), tx_pos.eq(0),
                                 send_index.eq(0), tx_crc.eq(0xFFFF), tx_phase.eq(0)]
                    m.next = "SETUP"
                with m.Else():
                    # The stored answer is about to be overwritten by this command's.
                    m.d.sync += [send_index.eq(0), words.eq(length), done_valid.eq(0)]
                    m.next = "FETCH"

            with m.State("DROP"):
                # A frame we will not take: swallow the rest of it, then say so.
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(timed_out):
                    m.next = "NAK"

            # Feed the checked command to the processor from an output register (the buffer's read data would
            # otherwise run straight into the processor's decode): read, load, hand over; three cycles a word,
            # far faster than the UART brings words in.
            with m.State("FETCH"):
                m.d.comb += rp.en.eq(1)
                m.d.sync += feed_last.eq(send_index + 1 == words)
                m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [cmd_data.eq(rp.data), self.o_cmd.valid.eq(1)]
                m.next = "FEED"
            with m.State("FEED"):
                m.d.comb += [self.o_cmd.payload.data.eq(cmd_data), self.o_cmd.payload.last.eq(feed_last)]
                with m.If(self.o_cmd.ready):
                    m.d.sync += [send_index.eq(send_index + 1), self.o_cmd.valid.eq(0)]
                    with m.If(feed_last):
                        m.d.sync += words.eq(0)
                        m.next = "COLLECT"
                    with m.Else():
                        m.next = "FETCH"

            # Collect the answer into the buffer (the command has been consumed, so the buffer is free). Each
            # answer word is registered first, so the processor's output logic does not run into this block's.
            with m.State("COLLECT"):
                m.d.comb += self.i_answer.ready.eq(1)
                m.d.sync += [ans_valid.eq(self.i_answer.valid), ans_data.eq(self.i_answer.payload.data),
                             ans_last.eq(self.i_answer.payload.last)]
                m.d.comb += [ans_wp.addr.eq(words), ans_wp.data.eq(ans_data)]
                with m.If(ans_valid):
                    with m.If(words < max_words):
                        m.d.comb += ans_wp.en.eq(1)
                        m.d.sync += words.eq(words + 1)
                    with m.If(ans_last):
                        m.d.sync += [tx_type.eq(FrameType.ANSWER), tx_pos.eq(0), send_index.eq(0),
                                     tx_crc.eq(0xFFFF), tx_phase.eq(0), ans_valid.eq(0),
                                     answer_words.eq(Mux(words < max_words, words + 1, words)),
                                     done_seq.eq(seq), done_valid.eq(1)]
                        m.next = "SETUP"

            with m.State("SETUP"):
                m.d.sync += tx_left.eq(words * 4)
                m.next = "SEND"

            with m.State("NAK"):
                # Wait for the line to fall silent, so the tail of a damaged frame is not read as a new one.
                m.d.comb += self.i_rx.ready.eq(1)
                with m.If(timed_out):
                    m.d.sync += [tx_type.eq(FrameType.NAK), words.eq(0), tx_pos.eq(0), send_index.eq(0),
                                 tx_crc.eq(0xFFFF), tx_phase.eq(0), tx_left.eq(0)]
                    m.next = "SEND"

            # Send SYNC, type, seq, length (2), payload bytes, CRC (2). tx_pos counts bytes (it addresses the
            # payload); tx_phase and tx_left are registered so that no byte-position compare sits between the
            # UART and the CRC register.
            with m.State("SEND"):
                accepted = self.o_tx.valid & self.o_tx.ready
                # The read port answers a cycle late and holds its data while not enabled: when a byte is
                # taken, fetch the word of the byte after it.
                m.d.comb += [ans_rp.en.eq(accepted), ans_rp.addr.eq((tx_pos - 4)[2:])]
                with m.Switch(tx_phase):
                    with m.Case(0):
                        m.d.comb += tx_byte.eq(SYNC)
                    with m.Case(1):
                        m.d.comb += tx_byte.eq(tx_type)
                    with m.Case(2):
                        m.d.comb += tx_byte.eq(seq)
                    with m.Case(3):
                        m.d.comb += tx_byte.eq(words[:8])
                    with m.Case(4):
                        m.d.comb += tx_byte.eq(words[8:])
                    with m.Case(5):
                        with m.Switch((tx_pos + 3)[:2]):       # byte lane of payload byte tx_pos - 5
                            for i in range(4):
                                with m.Case(i):
                                    m.d.comb += tx_byte.eq(ans_rp.data[8 * i:8 * i + 8])
                    with m.Case(6):
                        m.d.comb += tx_byte.eq(tx_crc[:8])
                    with m.Default():
                        m.d.comb += tx_byte.eq(tx_crc[8:])
                m.d.comb += [self.o_tx.valid.eq(1), self.o_tx.payload.eq(tx_byte)]
                with m.If(accepted):
                    m.d.sync += tx_pos.eq(tx_pos + 1)
                    with m.If((tx_phase >= 1) & (tx_phase <= 5)):
                        m.d.sync += tx_crc.eq(crc16_update(tx_crc, tx_byte))
                    with m.Switch(tx_phase):
                        with m.Case(4):
                            m.d.sync += tx_phase.eq(Mux(tx_left == 0, 6, 5))
                        with m.Case(5):
                            m.d.sync += tx_left.eq(tx_left - 1)
                            with m.If(tx_left == 1):
                                m.d.sync += tx_phase.eq(6)
                        with m.Case(7):
                            m.next = "HUNT"
                        with m.Default():
                            m.d.sync += tx_phase.eq(tx_phase + 1)
        return m
