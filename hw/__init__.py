"""Gateware of the accelerator, in Amaranth HDL."""
