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

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .command_processor import WORD_LAYOUT
from .memory_map import registered_read

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
        Longest payload, in words, of a command frame and of an answer frame (a longer answer is cut to it).
    idle_timeout : int
        Clock cycles of silence that end a frame cut short (choose a few byte times).
    registered_reads : bool
        Register the answer memory's byte in logic before the sent byte's multiplexer, and the command memory's
        word before ``o_cmd``, and wait a cycle more before each byte and each word (the ECP5 boards: the block
        RAM's clock-to-output and the multiplexer, or the route to the next register, were too much of a 125 MHz
        cycle; each second register becomes its block RAM's output register, boards/outreg.py).

    Members
    -------
    i_rx : In(stream.Signature(8))
        Bytes from the host.
    o_tx : Out(stream.Signature(8))
        Bytes to the host.
    o_cmd : Out(stream.Signature(WORD_LAYOUT))
        The words of each checked command, ``last`` on its final word.
    i_answer : In(stream.Signature(WORD_LAYOUT))
        The answer to each command, ``last`` on its final word.
    crc_error : Out(1)
        Set once a frame with a bad CRC has arrived (the link needed a retry); stays set.
    """

    def __init__(self, max_words=256, idle_timeout=10_000, *, registered_reads=False):
        if not isinstance(max_words, int) or not 2 <= max_words <= 65535:
            raise ValueError(f"max_words must be an integer from 2 to 65535, not {max_words!r}")
        if not isinstance(idle_timeout, int) or idle_timeout < 1:
            raise ValueError(f"idle_timeout must be a positive integer, not {idle_timeout!r}")
        self._max_words = max_words
        self._idle_timeout = idle_timeout
        self._registered_reads = bool(registered_reads)
        super().__init__({
            "i_rx":     In(stream.Signature(8)),
            "o_tx":     Out(stream.Signature(8)),
            "o_cmd":    Out(stream.Signature(WORD_LAYOUT)),
            "i_answer": In(stream.Signature(WORD_LAYOUT)),
            "crc_error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        max_words = self._max_words
        # The command being received, written a byte lane at a time (no word assembly register), and the last
        # answer, kept for a RETRY of its command. Separate memories, so neither write port needs a data mux.
        # Nothing reads a word in the cycle it is written (reads and writes are in different phases), so the
        # memories say they have no read/write collisions, and their synchronous reads are asynchronous ports
        # with a register that yosys folds into the block RAM (a synchronous port would be given read-first
        # emulation: a register and a compare per port).
        m.submodules.commands = commands = Memory(shape=32, depth=max_words, init=[], attrs={"no_rw_check": 1})
        cmd_wp = commands.write_port(granularity=8)
        cmd_rp = commands.read_port(domain="comb")
        # The answer is stored as bytes, written a word at a time through four byte ports that yosys merges into
        # one wide port: the block RAM's read port then gives the byte to send, and no byte mux is needed.
        # With ``registered_reads`` (the ECP5) the byte read is registered a second time, and the memory is two,
        # each half of the answer's words: yosys maps one answer memory onto two block RAMs and picks between
        # them behind their outputs, where the second register would come too late. A register right behind
        # each half becomes that block RAM's own output register (boards/outreg.py), and the pick follows it.
        halves = 2 if self._registered_reads else 1
        half_words = -(-max_words // halves)
        ans_wps, ans_rps = [], []
        for h in range(halves):
            m.submodules["answers" if halves == 1 else f"answers_{h}"] = answers = Memory(
                shape=8, depth=4 * half_words, init=[], attrs={"no_rw_check": 1})
            ans_wps.append([answers.write_port() for _ in range(4)])
            ans_rp = answers.read_port(domain="comb")
            ans_rps.append(ans_rp)
        cmd_load = Signal()
        cmd_word = registered_read(m, cmd_rp, cmd_load, "cmd_word")
        if self._registered_reads:
            # Registered again, on every cycle (see ``settled`` below): the command word left its block RAM 5.8 ns
            # after the clock, and the route to the core's register slice took most of the rest of the cycle.
            cmd_held = Signal.like(cmd_word, name="cmd_held", reset_less=True)
            m.d.sync += cmd_held.eq(cmd_word)
            cmd_word = cmd_held
        answer_bytes = [registered_read(m, rp, 1, "answer_byte" if halves == 1 else f"answer_byte_{h}")
                        for h, rp in enumerate(ans_rps)]
        answer_byte = answer_bytes[0]
        if self._registered_reads:
            held = [Signal(8, name=f"answer_held_{h}", reset_less=True) for h in range(halves)]
            m.d.sync += [h.eq(b) for h, b in zip(held, answer_bytes)]
            # Which half the byte on show comes from: the read address's half, as late as the byte.
            upper = [Signal(name=f"answer_upper_{i}") for i in range(2)]
            answer_byte = Mux(upper[1], held[1], held[0])

        # The received byte is registered here first, with its compare against SYNC: the state machine's
        # decisions on a byte then start at flip-flops beside it, not at the UART's shift register (placed by
        # the pin) through an 8-bit compare (nextpnr's critical path, 7 LUTs, at 37.8 MHz). A byte takes two
        # cycles through this register, far faster than a UART brings them.
        rx_valid, rx_ready, rx_sync = Signal(), Signal(), Signal()
        byte_in = Signal(8)
        m.d.comb += self.i_rx.ready.eq(~rx_valid)
        with m.If(self.i_rx.valid & ~rx_valid):
            m.d.sync += [rx_valid.eq(1), byte_in.eq(self.i_rx.payload), rx_sync.eq(self.i_rx.payload == SYNC)]
        with m.Elif(rx_ready):
            m.d.sync += rx_valid.eq(0)
        got = Signal()
        m.d.comb += got.eq(rx_valid & rx_ready)

        # The registers are written from a few strobes that the state machine raises, each register from one or
        # two sources: wide registers assigned in many states become chains of wide muxes.
        #
        # One word counter and one byte counter serve every phase: ``addr`` is the word being received, fed,
        # collected or sent (it addresses both memories, so no address muxes), ``lane`` the header byte, the
        # byte of the word, or the CRC byte.
        addr = Signal(range(max_words + 1))
        addr_clear, addr_step = Signal(), Signal()
        with m.If(addr_clear):
            m.d.sync += addr.eq(0)
        with m.Elif(addr_step):
            m.d.sync += addr.eq(addr + 1)
        lane = Signal(2)
        lane_clear, lane_step = Signal(), Signal()
        with m.If(lane_clear):
            m.d.sync += lane.eq(0)
        with m.Elif(lane_step):
            m.d.sync += lane.eq(lane + 1)

        # The command's length in words: its low byte whole while the high byte arrives, then checked, then (from
        # JUDGE on) less one: the address of the last word. Every phase ends when ``addr`` has stepped past its
        # last word. ``past_command`` (``addr == length`` in words) is a register, set as ``addr`` steps past the
        # last word's address: it drives the received byte's ready and ``o_cmd.last``, and as a compare it ran
        # through the UART's and the command processor's handshakes into this block's state machine; a compare
        # after the incrementer mapped to a chain of LUTs. It is cleared with ``addr``: a frame that gets to
        # PAYLOAD is not empty.
        length = Signal(max(8, len(addr)))
        answer_words = Signal(range(max_words + 1))     # the stored answer's
        answer_last = Signal(range(max_words))          # ... and the address of its last word
        past_command = Signal()
        past_answer = Signal()
        # ``past_answer`` (``addr == answer_words``) likewise, compared with the last word's address (kept as it
        # is written, so no adder: after the incrementer, the compare mapped to a chain of LUTs). An answer has at
        # least one word.
        with m.If(addr_clear):
            m.d.sync += [past_command.eq(0), past_answer.eq(0)]
        with m.Elif(addr_step):
            m.d.sync += [past_command.eq(addr == length), past_answer.eq(addr == answer_last)]

        # One CRC register: a frame is received and checked before the answer is sent, never both at once. Every
        # change to it is decided a cycle ahead, in flip-flops: a reset a cycle after a state asks for it
        # (``reset_crc``), a received byte a cycle after it was taken (``rx_stepped``; the byte register holds
        # it through that cycle, since a new byte enters only once it is empty), a sent byte in the cycle after it
        # left (``sent_byte``, stepped from the state flags). The register's enable is then a LUT or two of
        # flip-flops, not the end of the state machine's decisions (a 7-LUT cone, once nextpnr's critical path).
        # The delay is never seen: a received CRC is compared no sooner than two cycles after the payload's last
        # byte, and the first byte of an answer enters three cycles after its reset.
        crc = Signal(16)
        crc_init, rx_step, tx_step = Signal(), Signal(), Signal()
        reset_crc, rx_stepped = Signal(), Signal()
        sent_byte = Signal(8)
        m.d.sync += [reset_crc.eq(crc_init), rx_stepped.eq(rx_step)]
        with m.If(reset_crc):
            m.d.sync += crc.eq(0xFFFF)
        with m.Elif(rx_stepped | tx_step):
            m.d.sync += crc.eq(crc16_update(crc, Mux(tx_step, sent_byte, byte_in)))

        seq = Signal(8)
        retry = Signal()            # the frame in hand is a RETRY
        refused = Signal()          # its header is one we do not take (bad type, empty, too long)
        type_ok = Signal()          # ... or a COMMAND
        damaged = Signal()
        done_seq = Signal(8)        # seq of the command whose answer is stored
        done_valid = Signal()
        replay = Signal()
        # Registered a cycle before VERIFY needs it, off the byte path.
        m.d.sync += replay.eq(retry & done_valid & (seq == done_seq))

        # The frame being sent: SYNC, type, seq, length (2), payload, CRC (2), one ``phase`` each.
        nak = Signal()              # a NAK (else an ANSWER)
        phase = Signal(3)
        tx_byte = Signal(8)
        with m.Switch(phase):
            with m.Case(0):
                m.d.comb += tx_byte.eq(SYNC)
            with m.Case(1):
                m.d.comb += tx_byte.eq(Cat(nak, Const(FrameType.ANSWER.value >> 1, 7)))
            with m.Case(2):
                m.d.comb += tx_byte.eq(seq)
            with m.Case(3):
                m.d.comb += tx_byte.eq(Mux(nak, 0, answer_words[:8]))
            with m.Case(4):
                m.d.comb += tx_byte.eq(Mux(nak, 0, answer_words[8:]))
            with m.Case(5):
                m.d.comb += tx_byte.eq(answer_byte)
            with m.Case(6):
                m.d.comb += tx_byte.eq(crc[:8])
            with m.Case(7):
                m.d.comb += tx_byte.eq(crc[8:])
        m.d.comb += self.o_tx.payload.eq(tx_byte)

        # Set for the cycle after each word or byte handed on: the read ports then show the next word a cycle
        # after its address changed, before valid rises again.
        settle = Signal()
        m.d.sync += settle.eq(0)
        # With ``registered_reads`` a sent byte and a command word wait two cycles: the memory's read, then its
        # register.
        if self._registered_reads:
            settled = Signal()
            m.d.sync += settled.eq(settle)
            read_wait = settle | settled
        else:
            read_wait = settle
        answered = Signal()         # the answer's last word was collected last cycle

        # ``timed_out`` is ``idle == idle_timeout`` as a register (the compare of a wide counter fed every state's
        # exit): it is set as ``idle`` reaches the timeout and cleared with it.
        idle = Signal(range(self._idle_timeout + 1))
        timed_out = Signal()
        with m.If(got):
            m.d.sync += [idle.eq(0), timed_out.eq(0)]
        with m.Elif(~timed_out):
            m.d.sync += [idle.eq(idle + 1), timed_out.eq(idle == self._idle_timeout - 1)]

        m.d.comb += [
            cmd_wp.addr.eq(addr), cmd_wp.data.eq(byte_in.replicate(4)),
            cmd_rp.addr.eq(addr),
            self.o_cmd.payload.data.eq(cmd_word), self.o_cmd.payload.last.eq(past_command),
        ]
        if halves == 1:
            m.d.comb += ans_rp.addr.eq(Cat(lane, addr))
        else:
            m.d.sync += [upper[0].eq(addr >= half_words), upper[1].eq(upper[0])]
        store_answer = Signal()
        for h, (rp, wps) in enumerate(zip(ans_rps, ans_wps)):
            # Each half's own address and write enable (the whole memory's with one half).
            in_half, here = (addr, store_answer) if halves == 1 else (
                addr - h * half_words, store_answer & (addr >= half_words if h else addr < half_words))
            if halves > 1:
                m.d.comb += rp.addr.eq(Cat(lane, in_half))
            for i, port in enumerate(wps):
                m.d.comb += [port.addr.eq(Cat(Const(i, 2), in_half)), port.en.eq(here),
                             port.data.eq(self.i_answer.payload.data[8 * i:8 * i + 8])]

        def start_frame(is_nak):
            m.d.comb += [crc_init.eq(1), addr_clear.eq(1), lane_clear.eq(1)]
            m.d.sync += [nak.eq(is_nak), phase.eq(0)]

        # The state machine, one-hot: a state's flag is one register, so every decision that depends on the
        # state reads it straight (a binary state, which yosys does not re-encode because it has a reset value,
        # put a decoder and a wide enable in front of every transition).
        names = ("HUNT", "HEADER", "JUDGE", "PAYLOAD", "CRC", "VERIFY", "FEED", "COLLECT", "NAK", "SEND")
        state = {name: Signal(init=name == "HUNT", name=f"state_{name.lower()}") for name in names}

        def goto(current, following):
            m.d.sync += [state[current].eq(0), state[following].eq(1)]

        with m.If(state["HUNT"]):
            m.d.comb += rx_ready.eq(1)
            # A state that is always ready takes a byte on ``valid`` alone (not on ``got``, which goes through
            # the ready of every state).
            with m.If(rx_valid & rx_sync):
                m.d.comb += [crc_init.eq(1), lane_clear.eq(1)]
                m.d.sync += damaged.eq(0)
                goto("HUNT", "HEADER")

        with m.If(state["HEADER"]):
            m.d.comb += rx_ready.eq(1)
            with m.If(rx_valid):
                m.d.comb += [rx_step.eq(1), lane_step.eq(1)]
                with m.Switch(lane):
                    with m.Case(0):
                        m.d.sync += [retry.eq(byte_in == FrameType.RETRY),
                                     type_ok.eq((byte_in == FrameType.COMMAND) |
                                                (byte_in == FrameType.RETRY))]
                    with m.Case(1):
                        m.d.sync += seq.eq(byte_in)
                    with m.Case(2):
                        m.d.sync += length[:8].eq(byte_in)
                    with m.Case(3):
                        full_length = Cat(length[:8], byte_in)
                        m.d.sync += [length[8:].eq(byte_in),
                                     refused.eq((full_length == 0) | (full_length > max_words) | ~type_ok)]
                        m.d.comb += addr_clear.eq(1)
                        goto("HEADER", "JUDGE")
            with m.Elif(timed_out):
                goto("HEADER", "NAK")

        # The header's verdict a cycle after its last byte, from a register (no byte arrives that soon).
        with m.If(state["JUDGE"]):
            m.d.sync += length.eq(length - 1)
            with m.If(refused):
                goto("JUDGE", "NAK")      # a frame we will not take: swallow the rest, then say so
            with m.Else():
                goto("JUDGE", "PAYLOAD")

        with m.If(state["PAYLOAD"]):
            # A cycle with no byte taken after the last word, to see that it was the last.
            m.d.comb += rx_ready.eq(~past_command)
            with m.If(past_command):
                goto("PAYLOAD", "CRC")
            with m.Elif(rx_valid):     # ready: not past_command
                m.d.comb += [cmd_wp.en.eq(1 << lane), rx_step.eq(1), lane_step.eq(1), addr_step.eq(lane == 3)]
            with m.Elif(timed_out):
                goto("PAYLOAD", "NAK")

        with m.If(state["CRC"]):
            m.d.comb += rx_ready.eq(1)
            with m.If(rx_valid):
                m.d.comb += lane_step.eq(1)
                m.d.sync += damaged.eq(damaged | (byte_in != crc.word_select(lane[0], 8)))
                with m.If(lane[0]):
                    goto("CRC", "VERIFY")
            with m.Elif(timed_out):
                goto("CRC", "NAK")

        # The verdict on the CRC a cycle after its last byte, from a register.
        with m.If(state["VERIFY"]):
            with m.If(damaged):
                m.d.sync += self.crc_error.eq(1)
                goto("VERIFY", "NAK")
            with m.Elif(replay):
                start_frame(is_nak=0)
                goto("VERIFY", "SEND")
            with m.Else():
                # The stored answer is about to be overwritten by this command's.
                m.d.comb += addr_clear.eq(1)
                m.d.sync += [settle.eq(1), done_valid.eq(0)]
                goto("VERIFY", "FEED")

        # Hand the checked command to the processor from the buffer's output register, a word every two
        # cycles (far faster than the UART brings words in): in the cycle between two words the next one is
        # read and ``addr`` steps past it, so ``last`` is ``past_command``.
        with m.If(state["FEED"]):
            m.d.comb += [self.o_cmd.valid.eq(~read_wait), cmd_load.eq(settle), addr_step.eq(settle)]
            with m.If(self.o_cmd.valid & self.o_cmd.ready):
                m.d.sync += settle.eq(1)
                with m.If(past_command):
                    m.d.comb += addr_clear.eq(1)
                    goto("FEED", "COLLECT")

        # Collect the answer; words past max_words are dropped. The last word's flag is registered before
        # anything acts on it, so the processor's output logic does not run into this block's.
        with m.If(state["COLLECT"]):
            m.d.comb += self.i_answer.ready.eq(1)
            with m.If(self.i_answer.valid):
                with m.If(addr < max_words):
                    m.d.comb += [store_answer.eq(1), addr_step.eq(1)]
                    m.d.sync += answer_last.eq(addr)
                m.d.sync += answered.eq(self.i_answer.payload.last)
            with m.If(answered):
                start_frame(is_nak=0)
                m.d.sync += [answered.eq(0), answer_words.eq(addr), done_seq.eq(seq), done_valid.eq(1)]
                goto("COLLECT", "SEND")

        with m.If(state["NAK"]):
            # Wait for the line to fall silent, so the tail of a damaged frame is not read as a new one.
            m.d.comb += rx_ready.eq(1)
            with m.If(timed_out):
                start_frame(is_nak=1)
                goto("NAK", "SEND")

        with m.If(state["SEND"]):
            m.d.comb += self.o_tx.valid.eq(~read_wait)
            with m.If(settle):
                # The byte sent last cycle (type to payload: the phases now 2 to 6) enters the CRC; after the
                # last word of the payload, ``addr`` has stepped past the answer.
                m.d.comb += tx_step.eq((phase >= 2) & (phase <= 6))
                with m.If((phase == 5) & past_answer):
                    m.d.sync += phase.eq(6)
            with m.If(self.o_tx.valid & self.o_tx.ready):
                m.d.sync += [settle.eq(1), sent_byte.eq(tx_byte)]
                with m.Switch(phase):
                    with m.Case(4):
                        m.d.sync += phase.eq(Mux(nak, 6, 5))
                    with m.Case(5):
                        m.d.comb += [lane_step.eq(1), addr_step.eq(lane == 3)]
                    with m.Case(7):
                        goto("SEND", "HUNT")
                    with m.Default():
                        m.d.sync += phase.eq(phase + 1)
        return m
