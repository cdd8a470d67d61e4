"""``cnnacc compile``, ``run`` and ``report``: what they print and write, and their one-line errors."""

import json
import time

import numpy as np
import pytest

from cnnacc.cli import main
from cnnacc.config import DEFAULT_CONFIG
from cnnacc.hw.commands import config_id


def _error(capsys, argv, *needles):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnacc: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_compile_then_run_program(tmp_path, capsys):
    path = tmp_path / "lenet5.json"
    assert main(["compile", "lenet5", "-o", str(path), "--conv-act-depth", "256", "--conv-weight-depth", "512",
                 "--conv-param-depth", "2", "--vector-depth", "128"]) == 0
    out = capsys.readouterr().out
    assert "c1+s2" in out and "total:" in out and f"program written to {path}" in out
    doc = json.loads(path.read_text())
    assert doc["source"] == "lenet5" and doc["config"]["conv_param_depth"] == 2
    # The program runs only on the configuration it was compiled for.
    _error(capsys, ["run", str(path), "--count", "2"], "compiled for configuration", "conv_act_depth 256 vs 4096")
    assert main(["run", str(path), "--count", "300", "--conv-act-depth", "256", "--conv-weight-depth", "512",
                 "--conv-param-depth", "2", "--vector-depth", "128"]) == 0
    out = capsys.readouterr().out
    assert "300 images" in out and "predictions: 0 0 0" in out
    accuracy = float(out.split("accuracy: ")[1].split("= ")[1].split("%")[0])
    assert accuracy > 90.0
    assert "cycles:" in out and "PE utilization" in out


def test_run_default_is_lenet5_on_digits(capsys):
    assert main(["run", "--count", "50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lenet5 on golden: 50 images")
    assert "accuracy: " in out and "cycle model" in out


def test_run_own_images(tmp_path, capsys):
    images = np.random.default_rng(7).integers(-128, 128, size=(3, 32, 32, 1), dtype=np.int8)
    np.save(tmp_path / "x.npy", images)
    assert main(["run", "lenet5", "--images", str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "accuracy" not in out
    np.save(tmp_path / "bad.npy", images[:, :28, :28])
    _error(capsys, ["run", "lenet5", "--images", str(tmp_path / "bad.npy")], "[N, 32, 32, 1]", "[3, 28, 28, 1]")
    np.save(tmp_path / "float.npy", images.astype(np.float32))
    _error(capsys, ["run", "lenet5", "--images", str(tmp_path / "float.npy")], "int8", "float32")


def test_errors(capsys, tmp_path):
    _error(capsys, ["compile", "lenet5", "--max-kernel", "3", "-o", str(tmp_path / "p.json")], "'c1'", "kernel 5x5")
    _error(capsys, ["compile", "lenet5", "--max-width", "16", "-o", str(tmp_path / "p.json")], "'c1'", "max_width")
    _error(capsys, ["run", "mobilenet_v1_digits", "--conv-act-depth", "64", "--conv-param-depth", "2"],
           "one output row", "conv_act_depth")
    _error(capsys, ["run", "--backend", "board"], "needs the board's serial port", "--port")
    _error(capsys, ["run", "--backend", "board", "--board", "icebreaker", "--port", str(tmp_path / "ttyUSB9")],
           f"serial port {tmp_path / 'ttyUSB9'} does not exist", "plugged in")
    _error(capsys, ["run", "--port", "/dev/ttyUSB1"], "--port and --baud are for --backend board")
    _error(capsys, ["run", str(tmp_path / "missing.json")], "does not exist")
    _error(capsys, ["compile", str(tmp_path / "missing.tflite")], "does not exist")
    _error(capsys, ["run", "--rows", "0"], "rows must be an integer")
    (tmp_path / "junk.json").write_text("[1, 2]")
    _error(capsys, ["run", str(tmp_path / "junk.json")], "not a cnnacc program")


def test_report_table_and_plot(tmp_path, capsys):
    png = tmp_path / "report.png"
    assert main(["report", "mobilenet_v1_digits", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "pw13+pool" in out and "| depthwise | 13 |" in out and f"plot written to {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_bundled_digits_need_a_digit_model():
    from types import SimpleNamespace

    import pytest

    from cnnacc.cli import CliError, _images
    program = SimpleNamespace(graph=SimpleNamespace(name="mobilenet_v1_1_224",
                                                    input=SimpleNamespace(shape=(224, 224, 3))))
    with pytest.raises(CliError, match=r"takes images of shape \[224, 224, 3\].*give --images"):
        _images(SimpleNamespace(images=None, labels=None, count=None), program)


class SilentPort:
    """A serial port with nothing on the other end."""
    def __init__(self):
        self.written = 0

    def write(self, data):
        self.written += len(data)
        return len(data)

    def read(self, n):
        time.sleep(0.002)
        return b""


def test_board_backend_errors():
    from cnnacc.host.board_backend import BoardError
    from cnnacc.host.compiler import compile_graph
    from cnnacc.host.runtime import Runtime
    from cnnacc.host import models
    from cnnacc.sim.serial_port import SimulatedSerialPort
    from test_serial_bridge import LinkedAccelerator

    program = compile_graph(models.lenet5(), DEFAULT_CONFIG, "lenet5")
    # No answer: every attempt times out, and the error names the port; bounded by retries x timeout.
    silent = SilentPort()
    started = time.monotonic()
    with pytest.raises(BoardError, match="board on serial port did not answer after 5 attempts .last: no answer "
                                         "within 0.05 s"):
        Runtime(program, "board", port=silent, timeout=0.05)
    assert time.monotonic() - started < 5 and silent.written == 5 * 11     # five STATUS frames of 11 bytes
    # A board that answers but runs another configuration's bitstream (config id 0x1234abcd).
    dut = LinkedAccelerator()
    port = SimulatedSerialPort(dut, dut.i_rx, dut.o_tx)
    with pytest.raises(BoardError) as info:
        Runtime(program, "board", port=port, timeout=5.0)
    message = str(info.value)
    assert "runs a bitstream for configuration 0x1234abcd" in message
    assert f"the program is compiled for {config_id(DEFAULT_CONFIG):#010x}" in message and "\n" not in message
