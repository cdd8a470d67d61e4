"""Command encodings of the host bus, defined once for the gateware and the host.

The host talks to the accelerator in 32-bit words on two streams, each command framed by ``last`` on its final
word. Every command is answered, starting with a :class:`Response` word:

===========  ==========================================  ============================================
opcode       words after the header                      response
===========  ==========================================  ============================================
``NOP``      none                                        ``Response``
``WRITE``    :class:`Address`, then ``count`` data words ``Response``
``READ``     :class:`Address`                            ``Response``, then ``count`` data words (if OK)
``RUN``      ``count`` descriptor words                  ``Response``, then the run's cycle count
``STATUS``   none                                        ``Response``, cycle counter (lo, hi), config id
``START``    ``count`` descriptor words                  ``Response`` at once (the run goes on)
``WAIT``     none                                        ``Response`` when the run ends, then its cycles
===========  ==========================================  ============================================

``RUN`` is ``START`` and ``WAIT`` in one command: it answers when the run ends. After ``START`` the processor
keeps serving ``NOP``, ``STATUS``, ``WRITE`` and ``READ`` while the engine runs, which is what lets the host load
the next tile and read the previous one meanwhile. While a run is in flight, ``START``/``RUN`` and any transfer
that would touch a row the running engine reads or writes (or any ``WRITE`` into a memory engines write) are
refused with ``BUSY`` and change nothing. ``WAIT`` with no run started since the last ``WAIT`` answers ``IDLE``
at once. ``STATUS``'s Response carries the run state in ``detail`` (:class:`RunState`).

A command the accelerator does not know, or one that is too short, too long, or out of range, is consumed up to
its ``last`` word and answered with an error :class:`Status`; the accelerator never hangs on bad input.

The host uses the same classes: ``Header.const({...}).as_bits()`` to encode, and
``data.Layout.cast(Response).from_bits(word)`` to decode.
"""

import zlib

from amaranth.lib import data, enum

__all__ = ["Opcode", "Status", "RunState", "MemoryId", "EngineId", "Header", "Address", "Response", "config_id",
           "MAX_COUNT"]

MAX_COUNT = (1 << 24) - 1


class Opcode(enum.Enum, shape=8):
    NOP = 0x00
    WRITE = 0x01
    READ = 0x02
    RUN = 0x03
    STATUS = 0x04
    START = 0x05
    WAIT = 0x06


class Status(enum.Enum, shape=8):
    OK = 0x00
    UNKNOWN_OPCODE = 0x01
    BAD_LENGTH = 0x02       # the command ended early, or went on past its length
    BAD_ADDRESS = 0x03      # unknown memory, or a transfer past its end
    BAD_DESCRIPTOR = 0x04   # RUN with a descriptor an engine rejects
    ENGINE_ERROR = 0x05
    BUSY = 0x06             # refused because a run is in flight and the command would disturb it
    IDLE = 0x07             # WAIT with no run to wait for


class RunState(enum.Enum, shape=2):
    """``detail`` of a ``STATUS`` answer: is a run in flight, or finished with its result not yet collected."""
    IDLE = 0
    RUNNING = 1
    FINISHED = 2


class MemoryId(enum.Enum, shape=8):
    """On-chip memories (see hw/accelerator.py for what each holds and its row layout)."""
    ACT_A = 0x00        # vector engines' first input map (channel-group planes)
    ACT_B = 0x01        # the add engine's second input map
    WEIGHTS = 0x02      # convolution weights (write only)
    PARAMS = 0x03       # convolution requantization parameters (write only)
    CONV_ACT = 0x04     # convolution input map, banked (write only)
    DW_WEIGHTS = 0x05   # depthwise weights and parameters, one row per channel group
    OUTPUT = 0x06       # every engine's output map (channel-group planes)


class EngineId(enum.Enum, shape=8):
    """Word 0 of a ``RUN`` descriptor: which engine runs (the rest is that engine's descriptor struct)."""
    CONV = 0x01         # conv / pointwise / fully connected, optionally fused with a pool
    DEPTHWISE = 0x02
    POOL = 0x03
    ADD = 0x04


class Header(data.Struct):
    count: 24
    opcode: Opcode


class Address(data.Struct):
    word: 24
    memory: MemoryId


class Response(data.Struct):
    status: Status
    opcode: Opcode
    detail: 16


def config_id(config):
    """32-bit fingerprint of an accelerator configuration, reported by ``STATUS``.

    A program compiled for one configuration checks it before running on another. A field added to the
    configuration after its first release (:data:`_LATER_FIELDS`) counts only when it differs from its default,
    so a configuration that does not use it keeps its fingerprint: programs saved for it still run, and its
    bitstream stays the same.
    """
    text = repr(config)
    for name, default in _LATER_FIELDS.items():
        if getattr(config, name) == default:
            text = text.replace(f", {name}={default!r}", "", 1)
    return zlib.crc32(text.encode())


#: Fields :func:`config_id` leaves out at their default (added to AcceleratorConfig after its first release).
_LATER_FIELDS = {"pool_kernel": 0}
