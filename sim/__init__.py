"""Simulation: the shared cocotb runner and helpers for Amaranth-simulator testbenches."""

from .runner import SimulationError, run_cocotb, simulator_name

__all__ = ["SimulationError", "run_cocotb", "simulator_name"]
