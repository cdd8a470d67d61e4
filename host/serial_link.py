"""Host side of the serial link: frames (hw/serial_bridge.py) over any byte port, with retries and timeouts.

:class:`SerialLink` is a transport for :mod:`cnnacc.host.protocol`: ``transact(words)`` sends one command and
returns the answer words. It needs a *port* with pyserial's two calls, ``write(bytes)`` and ``read(n)`` (which
returns fewer bytes when its timeout passes), so it runs the same over a real serial port and over a simulated
board. A damaged answer, a ``NAK`` or silence makes it send the command again, as a ``RETRY`` frame with the same
``seq``: the bridge then resends the answer of a command it already executed instead of executing it twice, so
``START`` and ``WAIT`` survive a lost answer. After ``retries`` attempts it raises :class:`LinkError`.
"""

import binascii
import struct
import time

from ..hw.serial_bridge import SYNC, FrameType

__all__ = ["LinkError", "crc16", "encode_frame", "FrameReader", "SerialLink"]


class LinkError(RuntimeError):
    """The board did not answer correctly after every retry."""


def crc16(data):
    """CRC-16/CCITT-FALSE, as the bridge computes it."""
    return binascii.crc_hqx(bytes(data), 0xFFFF)


def encode_frame(frame_type, seq, words):
    body = struct.pack("<BBH", int(FrameType(frame_type).value), seq & 0xFF, len(words))
    body += b"".join(struct.pack("<I", w & 0xFFFFFFFF) for w in words)
    return bytes([SYNC]) + body + struct.pack("<H", crc16(body))


class FrameReader:
    """Reassembles frames from bytes. ``feed(data)`` returns a list of complete frames, each
    ``(type, seq, words)``, or ``("damaged", None, None)`` for one whose CRC failed."""

    def __init__(self, max_words=1 << 16):
        self._buffer = bytearray()
        self._max_words = max_words

    def pending(self):
        """True while part of a frame has arrived and the rest has not."""
        return bool(self._buffer)

    def feed(self, data):
        self._buffer += data
        frames = []
        while True:
            start = self._buffer.find(SYNC)
            if start < 0:
                self._buffer.clear()
                return frames
            del self._buffer[:start]
            if len(self._buffer) < 5:
                return frames
            frame_type, seq, length = struct.unpack_from("<BBH", self._buffer, 1)
            if length > self._max_words:
                del self._buffer[:1]          # not a real frame start: look for the next SYNC
                continue
            total = 5 + 4 * length + 2
            if len(self._buffer) < total:
                return frames
            frame = bytes(self._buffer[:total])
            if crc16(frame[1:-2]) != struct.unpack_from("<H", frame, total - 2)[0]:
                frames.append(("damaged", None, None))
                del self._buffer[:1]
                continue
            del self._buffer[:total]
            words = list(struct.unpack_from(f"<{length}I", frame, 5))
            try:
                frame_type = FrameType(frame_type)
            except ValueError:
                frames.append(("damaged", None, None))
                continue
            frames.append((frame_type, seq, words))


class SerialLink:
    """A host-bus transport over a byte port (pyserial ``Serial`` or a simulated one).

    Parameters
    ----------
    port : object with ``write(bytes)`` and ``read(n) -> bytes``
    timeout : float
        Seconds to wait for an answer before sending again (``clock`` decides what a second is).
    retries : int
        Attempts per command before :class:`LinkError`.
    gap : float
        Seconds of silence in the middle of an answer after which it counts as damaged (a dropped byte leaves
        the reader waiting for one that never comes): the command is sent again without waiting for
        ``timeout``. The board sends an answer's bytes back to back, so this can be a few byte times.
    clock : callable
        Returns the current time in seconds; the simulated board passes simulated time.
    name : str
        What the errors call the port (e.g. ``/dev/ttyUSB1``).
    """

    def __init__(self, port, *, timeout=1.0, retries=5, max_words=256, gap=0.05, clock=time.monotonic,
                 name="serial port"):
        self._port = port
        self._timeout = timeout
        self._gap = gap
        self._retries = retries
        self._max_words = max_words
        self._clock = clock
        self._name = name
        self._seq = 0
        self.stats = {"frames": 0, "retries": 0, "naks": 0, "damaged": 0, "timeouts": 0}

    @property
    def max_words(self):
        return self._max_words

    def transact(self, words):
        if not 1 <= len(words) <= self._max_words:
            raise ValueError(f"a command frame carries 1 to {self._max_words} words, not {len(words)}")
        self._seq = (self._seq + 1) & 0xFF
        reader = FrameReader(self._max_words)
        last_problem = "no answer"
        for attempt in range(self._retries):
            if attempt:
                self.stats["retries"] += 1
            self._port.write(encode_frame(FrameType.RETRY if attempt else FrameType.COMMAND, self._seq, words))
            self.stats["frames"] += 1
            deadline = self._clock() + self._timeout
            last_byte = self._clock()
            while self._clock() < deadline:
                data = self._port.read(64)
                if not data:
                    if reader.pending() and self._clock() - last_byte > self._gap:
                        self.stats["damaged"] += 1
                        last_problem = "an answer cut short"
                        break
                    continue
                last_byte = self._clock()
                answer = None
                for frame_type, seq, payload in reader.feed(data):
                    if frame_type == "damaged":
                        self.stats["damaged"] += 1
                        last_problem = "a damaged answer"
                        answer = "retry"
                    elif seq != self._seq:
                        continue                      # a late answer to an earlier attempt
                    elif frame_type is FrameType.NAK:
                        self.stats["naks"] += 1
                        last_problem = "NAK (the board received a damaged frame)"
                        answer = "retry"
                    elif frame_type is FrameType.ANSWER:
                        return payload
                if answer == "retry":
                    break
            else:
                self.stats["timeouts"] += 1
                last_problem = f"no answer within {self._timeout:g} s"
            reader = FrameReader(self._max_words)
        raise LinkError(f"board on {self._name} did not answer after {self._retries} attempts "
                        f"(last: {last_problem}); check the cable, the port and the baud rate")
