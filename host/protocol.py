"""Host side of the host bus: command words out, answers back, in the encodings of hw/commands.py.

A *transport* moves words: ``transact(words) -> answer words``, where ``words`` is one command as a list of
32-bit ints (the transport marks the last one) and the answer is the list the accelerator sent, up to its
``last`` word. The RTL simulation, the simulated board and the real board each provide one; everything here is
written against that one method, as Glasgow's host code is against its abstract interface.
"""

from amaranth.lib import data

from ..hw.commands import MAX_COUNT, Address, Header, MemoryId, Opcode, Response, RunState, Status

__all__ = ["AcceleratorError", "encode_nop", "encode_write", "encode_read", "encode_run", "encode_start",
           "encode_wait", "encode_status", "decode_response", "run_state", "pack_int8", "unpack_int8"]

_RESPONSE = data.Layout.cast(Response)


class AcceleratorError(RuntimeError):
    """The accelerator answered a command with an error status, or with an answer that makes no sense."""


def _header(opcode, count):
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"count {count} does not fit the 24-bit header field")
    return Header.const({"opcode": opcode, "count": count}).as_bits()


def _address(memory, word):
    if not 0 <= word < 1 << 24:
        raise ValueError(f"word address {word} does not fit the 24-bit address field")
    return Address.const({"memory": MemoryId(memory), "word": word}).as_bits()


def encode_nop():
    return [_header(Opcode.NOP, 0)]


def encode_write(memory, word, values):
    values = [int(v) & 0xFFFFFFFF for v in values]
    return [_header(Opcode.WRITE, len(values)), _address(memory, word), *values]


def encode_read(memory, word, count):
    return [_header(Opcode.READ, count), _address(memory, word)]


def encode_run(descriptor):
    descriptor = [int(v) & 0xFFFFFFFF for v in descriptor]
    return [_header(Opcode.RUN, len(descriptor)), *descriptor]


def encode_start(descriptor):
    descriptor = [int(v) & 0xFFFFFFFF for v in descriptor]
    return [_header(Opcode.START, len(descriptor)), *descriptor]


def encode_wait():
    return [_header(Opcode.WAIT, 0)]


def encode_status():
    return [_header(Opcode.STATUS, 0)]


def decode_response(answer, opcode, expected_words=0):
    """Check an answer and return the words after its Response word.

    Raises :class:`AcceleratorError` naming the command and the status if the accelerator refused it.
    """
    opcode = Opcode(opcode)
    if not answer:
        raise AcceleratorError(f"{opcode.name}: the accelerator sent no answer")
    try:
        response = _RESPONSE.from_bits(answer[0])
        status, echoed = Status(response.status), Opcode(response.opcode)
    except ValueError:
        raise AcceleratorError(f"{opcode.name}: malformed answer word {answer[0]:#010x}") from None
    if status is not Status.OK:
        raise AcceleratorError(f"{opcode.name} refused by the accelerator: {status.name}")
    if echoed is not opcode:
        raise AcceleratorError(f"{opcode.name}: the answer belongs to {echoed.name}")
    if len(answer) - 1 != expected_words:
        raise AcceleratorError(f"{opcode.name}: expected {expected_words} answer words, got {len(answer) - 1}")
    return list(answer[1:])


def run_state(answer):
    """The :class:`~cnnacc.hw.commands.RunState` a ``STATUS`` answer reports."""
    return RunState(_RESPONSE.from_bits(answer[0]).detail & 0x3)


def pack_int8(values):
    """int8 values -> 32-bit words, four per word, little-endian, zero-padded."""
    import numpy as np
    raw = np.asarray(values, dtype=np.int8).reshape(-1).view(np.uint8)
    raw = np.concatenate([raw, np.zeros(-len(raw) % 4, np.uint8)])
    return raw.view("<u4").astype(np.int64).tolist()


def unpack_int8(words, count):
    import numpy as np
    return np.asarray(words, dtype="<u4").view(np.int8)[:count].copy()
