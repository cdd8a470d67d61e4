"""Behavioural Verilog models (sim/models/) of the vendor primitives the gateware instantiates for a target.

Yosys ships only blackboxes of some primitives (the ECP5 ``MULT18X18D`` among them), so the RTL simulations
of an ``"ecp5"``-target design compile the models here beside the design.
"""

from pathlib import Path

__all__ = ["MODELS_DIR", "vendor_models"]

MODELS_DIR = Path(__file__).parent / "models"


def vendor_models(config):
    """Verilog files a simulation of a design built for ``config.target`` needs (a list of paths)."""
    if config.target == "ecp5":
        return [MODELS_DIR / "MULT18X18D.v"]
    return []
