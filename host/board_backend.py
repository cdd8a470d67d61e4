"""The board backend: a program on a real FPGA board (or the simulated one) over its UART.

:class:`BoardBackend` is :class:`~cnnacc.host.serial_link.SerialLink` (frames, CRC, retries, timeouts) under the
one :class:`~cnnacc.host.driver.AcceleratorDriver`; it opens a serial port by name with pyserial, or takes any
object with pyserial's ``write(bytes)``/``read(n)``: the cocotb testbench of the whole board (sim/tb_board.py)
passes a port that drives the simulated UART pins, so this class is tested byte for byte without a board.

Every failure is one :class:`BoardError` line naming the port: a port that does not exist or cannot be opened,
a board that does not answer, a bitstream built for another configuration, a command the accelerator refused.
"""

import os
import time

from ..hw.commands import Opcode, config_id
from . import protocol
from .driver import AcceleratorDriver, run_program
from .program import ProgramError
from .serial_link import LinkError, SerialLink

__all__ = ["BoardError", "BoardBackend", "open_serial", "SimulatedBoard", "simulated_board_verilog", "SIM_DIVISOR"]


class BoardError(ProgramError):
    """The board cannot run the program: the message says why, in one line, and names the port."""


def open_serial(path, baud):
    """pyserial ``Serial`` on ``path`` at ``baud``, 8N1, with a short read timeout (the link keeps its own)."""
    try:
        import serial
    except ImportError:
        raise BoardError("backend 'board' needs pyserial: .venv/bin/pip install pyserial") from None
    if not os.path.exists(path):
        raise BoardError(f"serial port {path} does not exist: is the board plugged in? (pass --port, e.g. "
                         f"/dev/ttyUSB1 for the iCEBreaker's second FTDI channel)")
    try:
        return serial.Serial(path, baudrate=baud, bytesize=8, parity="N", stopbits=1, timeout=0.02)
    except (serial.SerialException, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BoardError(f"cannot open serial port {path} at {baud} baud: {reason}") from None


class BoardBackend:
    """``run(program, images) -> (outputs, stats)`` on a board, like :class:`~cnnacc.host.rtl_backend.RtlBackend`.

    Parameters
    ----------
    port : str or object
        A serial device path (``/dev/ttyUSB1``), opened with pyserial, or an open byte port.
    baud : int
        Baud rate the bitstream was built for (only used when ``port`` is a path).
    max_words : int
        The bitstream's longest frame payload (``BoardSpec.frame_words``).
    timeout : float
        Seconds without an answer before a command is sent again; longer than the slowest RUN.
    retries : int
        Attempts per command before giving up.
    gap : float
        Seconds of silence that cut an answer short (see :class:`~cnnacc.host.serial_link.SerialLink`).
    clock : callable
        Current time in seconds (the simulated board passes simulated time).
    name : str, optional
        What errors call the port; by default its path.
    """

    def __init__(self, port, *, baud=1_000_000, max_words=256, timeout=2.0, retries=5, gap=0.05,
                 clock=time.monotonic, name=None):
        if isinstance(port, (str, os.PathLike)):
            name = name or str(port)
            port = open_serial(str(port), baud)
        self.name = name or "serial port"
        self.port = port
        self.link = SerialLink(port, timeout=timeout, retries=retries, max_words=max_words, gap=gap, clock=clock,
                               name=self.name)

    def status(self):
        """The board's STATUS answer words (after the response word); raises :class:`BoardError`."""
        try:
            return protocol.decode_response(self.link.transact(protocol.encode_status()), Opcode.STATUS, 3)
        except (LinkError, protocol.AcceleratorError) as exc:
            raise BoardError(str(exc).splitlines()[0]) from None

    def check(self, config):
        """The bitstream must be built for ``config``, or :class:`BoardError` says which it is built for."""
        have, want = self.status()[2], config_id(config)
        if have != want:
            raise BoardError(f"board on {self.name} runs a bitstream for configuration {have:#010x}, the program "
                             f"is compiled for {want:#010x}: flash the bitstream of this configuration (cnnacc "
                             f"build --board ...) or compile for the board's (cnnacc run --board ...)")

    def run(self, program, images, log=None):
        """Run ``program`` on int8 ``images`` ``[N, ...]``: ``(outputs, stats)`` as
        :func:`~cnnacc.host.driver.run_program` returns them (cycles measured by the board)."""
        self.check(program.config)
        driver = AcceleratorDriver(self.link, program.config)
        try:
            return run_program(driver, program, images, log=log)
        except LinkError as exc:
            raise BoardError(str(exc).splitlines()[0]) from None     # it names the port already
        except protocol.AcceleratorError as exc:
            raise BoardError(f"board on {self.name}: {str(exc).splitlines()[0]}") from None

    def close(self):
        close = getattr(self.port, "close", None)
        if close is not None:
            close()


#: Clock cycles per UART bit of the simulated board (the UART's minimum: the link then runs at a quarter of a
#: byte per ten cycles, and the simulation is dominated by the accelerator, not by the line).
SIM_DIVISOR = 4


def simulated_board_verilog(config, divisor=SIM_DIVISOR, frame_words=256):
    """Verilog of :class:`~cnnacc.boards.core.BoardCore` around the accelerator for ``config``, cached by its
    parameters and the source of every module it is built from."""
    import hashlib
    from pathlib import Path

    from ..boards.core import BoardCore
    from ..hw.accelerator import Accelerator
    from ..sim.runner import cache_dir, verilog_of
    from .rtl_backend import _gateware_sources

    root = Path(__file__).resolve().parent.parent
    sources = _gateware_sources() + [root / "boards" / "core.py", root / "hw" / "uart.py",
                                     root / "hw" / "serial_bridge.py"]
    digest = hashlib.sha256(repr((config, divisor, frame_words)).encode())
    for path in sources:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    path = cache_dir() / f"verilog-board-{digest.hexdigest()[:16]}.v"
    if not path.exists():
        core = BoardCore(Accelerator(config), divisor, frame_words=frame_words, leds=3, heartbeat_cycles=1000)
        text = verilog_of(core, "board")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path.read_text()


class SimulatedBoard:
    """The whole board (UART pins included) in cocotb + Verilator, driven by :class:`BoardBackend`.

    ``run(program, images, phases)`` runs the program over ``images`` once per phase of line faults, ``(flip,
    drop)`` probabilities per byte towards the board, the same from the board, and a seed (see sim/tb_board.py),
    in one simulation, and returns one dict per phase: ``outputs`` (int8) or
    ``error`` (the one-line message), ``link`` (the link's counters), ``faults`` (bytes damaged towards the
    board, from the board, framing errors), ``sim_seconds``, ``wall``, ``cycles`` (per image, per step).

    Parameters
    ----------
    divisor : int
        Clock cycles per UART bit.
    frame_words : int
        The bridge's longest frame payload.
    retries : int
        Attempts per command before the link gives up.
    timeout : float, optional
        Simulated seconds the link waits for an answer; by default :meth:`default_timeout`.
    """

    def __init__(self, divisor=SIM_DIVISOR, frame_words=256, retries=5, timeout=None, sim=None):
        self.divisor, self.frame_words, self.retries, self.sim = divisor, frame_words, retries, sim
        self.timeout = self.default_timeout() if timeout is None else timeout
        self.leds = None

    def _seconds(self, cycles):
        from ..sim.tb_board import PERIOD_NS
        return cycles * PERIOD_NS * 1e-9

    def default_timeout(self):
        """The accelerator's watchdog (a run that stalls is aborted after 2**17 idle cycles) plus a full frame
        each way, twice over: no answer can take longer."""
        frame_cycles = (self.frame_words * 4 + 7) * 10 * self.divisor
        return self._seconds(2 * ((1 << 17) + 2 * frame_cycles))

    def gap(self):
        """Silence that cuts an answer short: 64 byte times."""
        return self._seconds(64 * 10 * self.divisor)

    def run(self, program, images, phases=((0.0, 0.0, 0.0, 0.0, 0),)):
        import pickle
        import tempfile
        from pathlib import Path

        import numpy as np

        from ..sim.runner import run_cocotb
        from ..sim.vendor_models import vendor_models

        images = np.asarray(images)
        with tempfile.TemporaryDirectory(prefix="cnnacc-board-") as tmp:
            program_path = Path(tmp) / "program.pkl"
            with open(program_path, "wb") as f:
                pickle.dump(program, f)
            run = run_cocotb(simulated_board_verilog(program.config, self.divisor, self.frame_words),
                             toplevel="board", test_module="cnnacc.sim.tb_board", sim=self.sim,
                             sources=vendor_models(program.config),
                             inputs={"program": str(program_path), "images": images, "divisor": self.divisor,
                                     "frame_words": self.frame_words, "timeout": self.timeout, "gap": self.gap(),
                                     "retries": self.retries, "phases": np.asarray(phases, np.float64)})
        out = run.outputs
        self.leds = int(out["leds"])
        results = []
        for i in range(len(phases)):
            result = {"link": dict(zip(("frames", "retries", "naks", "damaged", "timeouts"),
                                       out[f"link{i}"].tolist())),
                      "faults": out[f"faults{i}"].tolist(), "sim_seconds": float(out[f"sim_ns{i}"]) * 1e-9,
                      "wall": float(out[f"wall{i}"])}
            if f"error{i}" in out:
                result["error"] = str(out[f"error{i}"])
            else:
                result["outputs"] = out[f"outputs{i}"]
                result["cycles"] = out[f"stats{i}"]
            results.append(result)
        return results
