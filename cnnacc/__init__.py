"""cnnacc: an int8 CNN inference accelerator for FPGAs, with its host compiler and runtime.

Subpackages
-----------
cnnacc.hw      Amaranth gateware.
cnnacc.sim     Simulation runners (Amaranth simulator, cocotb on Verilator or Icarus).
cnnacc.host    Host software: numerics, compiler, runtime.
cnnacc.boards  Board top levels and bitstream builds.
"""

from .config import AcceleratorConfig, DEFAULT_CONFIG

__all__ = ["AcceleratorConfig", "DEFAULT_CONFIG"]
__version__ = "0.1.0"
