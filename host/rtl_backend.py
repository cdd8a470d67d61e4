"""The RTL backend: a program on the accelerator's Verilog (Amaranth -> Verilator, cocotb), cycle accurate.

All images and all steps run in one simulation (sim/tb_accelerator.py), through the same
:class:`~cnnacc.host.driver.AcceleratorDriver` the board uses. The Verilator build is cached by the runner
(keyed by the Verilog text); the Verilog itself is cached here by the configuration and the gateware sources,
because generating it takes longer than running a small network.
"""

import hashlib
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np

from ..hw.accelerator import Accelerator, descriptor_words
from ..hw.commands import EngineId
from ..sim.runner import cache_dir, run_cocotb, verilog_of
from ..sim.vendor_models import vendor_models
from .program import ProgramError

__all__ = ["RtlBackend", "accelerator_verilog"]

TOPLEVEL = "accelerator"


def _gateware_sources():
    """hw/accelerator.py and every cnnacc module it imports, directly or not (found by reading the imports)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    todo, seen = [root / "hw" / "accelerator.py"], set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                parts = (node.module or "").split(".") if node.module else []
                if base == root and (not parts or parts[0] not in ("hw", "host", "sim")):
                    base = root / "cnnacc"      # the package root's own modules (config.py, ...)
                target = base.joinpath(*parts)
                todo.append(target.with_suffix(".py"))
                todo.extend(target / f"{alias.name}.py" for alias in node.names)
    return sorted(seen)


def accelerator_verilog(config):
    """Verilog of :class:`Accelerator` for ``config``, cached by the config and the source of every module the
    accelerator is built from."""
    digest = hashlib.sha256(repr(config).encode())
    for path in _gateware_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    path = cache_dir() / f"verilog-{TOPLEVEL}-{digest.hexdigest()[:16]}.v"
    if not path.exists():
        text = verilog_of(Accelerator(config), TOPLEVEL)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path.read_text()


class RtlBackend:
    """``run(program, images) -> (outputs, stats)``.

    ``outputs`` is ``[N, ...]`` int8 (the graph output); ``stats`` a list (one per image) of dicts
    ``{step name: {"cycles", "words_in", "words_out"}}``; :attr:`last_wall` holds the seconds the simulation
    spent running the images (the build and the simulator start excluded), :attr:`last_bus_cycles` each step's
    bus-inclusive cycles over the whole batch (simulation clock cycles from its first command to its last
    answer: transfers and runs, with what overlaps counted once).

    Parameters
    ----------
    config : AcceleratorConfig, optional
        The accelerator to simulate; by default the program's own (pass another to see the configuration check
        refuse the program).
    sim : str, optional
        Simulator name for :func:`cnnacc.sim.runner.run_cocotb`.
    overlap : bool, optional
        Pipelined driver (the default) or one blocking RUN per tile (see host/driver.py).
    """

    def __init__(self, config=None, sim=None, overlap=True):
        self.config = config
        self.sim = sim
        self.overlap = bool(overlap)
        self.last_wall = None
        self.last_bus_cycles = None

    def run(self, program, images):
        images = np.asarray(images)
        if images.dtype != np.int8:
            raise ProgramError(f"the RTL backend takes int8 images, not {images.dtype}")
        config = self.config or program.config
        with tempfile.TemporaryDirectory(prefix="cnnacc-program-") as tmp:
            program_path = Path(tmp) / "program.pkl"
            with open(program_path, "wb") as f:
                pickle.dump(program, f)
            run = run_cocotb(accelerator_verilog(config), toplevel=TOPLEVEL, test_module="cnnacc.sim.tb_accelerator",
                             sources=vendor_models(config), sim=self.sim,
                             inputs={"mode": "program", "program": str(program_path),
                                     "images": images, "overlap": int(self.overlap)})
        out = run.outputs
        if "error" in out:
            raise ProgramError(str(out["error"]))
        self.last_wall = float(out["wall"])
        names = [step.name for step in program.steps]
        self.last_bus_cycles = dict(zip(names, map(int, out["bus"])))
        stats = [{name: dict(zip(("cycles", "words_in", "words_out"), map(int, row)))
                  for name, row in zip(names, image)} for image in out["stats"]]
        return out["outputs"], stats

    def probe_in_flight(self, config):
        """Commands sent while a run is in flight (see sim/tb_accelerator.py, mode ``in_flight``): returns a dict
        command name -> answer (a list of words), and ``"pixels"`` -> the words the run's input holds."""
        from ..sim.tb_accelerator import in_flight_commands
        fields = {f"config_{k}": (np.array(v) if k == "engines" else v) for k, v in vars(config).items()
                  if isinstance(v, (int, tuple, str)) and not isinstance(v, bool)}
        run = run_cocotb(accelerator_verilog(config), toplevel=TOPLEVEL, test_module="cnnacc.sim.tb_accelerator",
                         sources=vendor_models(config), sim=self.sim, inputs={"mode": "in_flight", **fields})
        names = [name for name, _ in in_flight_commands(config)]
        answers = {name: run.outputs[f"answer{i}"].tolist() for i, name in enumerate(names[:-1])}
        answers["pixels"] = in_flight_commands(config)[-1][1]
        return answers

    def probe_bad_engine(self, config):
        """Bad RUNs and recovery (see sim/tb_accelerator.py, mode ``bad_engine``): returns every answer (lists of
        words), then the words written as the pool's input."""
        words = len(descriptor_words(config, EngineId.CONV, {})) - 1
        run = run_cocotb(accelerator_verilog(config), toplevel=TOPLEVEL, test_module="cnnacc.sim.tb_accelerator",
                         sources=vendor_models(config), sim=self.sim, inputs={"mode": "bad_engine", "conv_words": words})
        return [run.outputs[f"answer{i}"].tolist() for i in range(len(run.outputs))]
