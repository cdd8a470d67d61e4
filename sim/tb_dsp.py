"""cocotb testbench for :class:`cnnacc.hw.dsp.DualMul8`, and :func:`run_rtl` that runs it.

Inputs: ``a0``, ``b0``, ``a1``, ``b1`` (one int8 operand each per cycle) and ``ce`` (the clock enable per
cycle). Outputs: ``p0``, ``p1``, the products read each cycle after its clock edge, as int16.
"""

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from ..hw.dsp import DualMul8
from .runner import run_cocotb, testbench_inputs, testbench_outputs
from .vendor_models import vendor_models

__all__ = ["run_rtl"]


def run_rtl(target, a0, b0, a1, b1, ce, *, sim=None):
    """Drive the operands and enables cycle by cycle; returns ``(p0, p1)`` as seen after each edge."""
    sources = vendor_models(target)
    run = run_cocotb(DualMul8(target), toplevel="dual_mul8", test_module="cnnacc.sim.tb_dsp", sim=sim,
                     sources=sources, inputs=dict(a0=a0, b0=b0, a1=a1, b1=b1, ce=ce))
    return np.asarray(run.outputs["p0"], np.int64), np.asarray(run.outputs["p1"], np.int64)


@cocotb.test()
async def dual_products(dut):
    args = testbench_inputs()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    ports = [dut.a0, dut.b0, dut.a1, dut.b1]
    columns = [args[name] for name in ("a0", "b0", "a1", "b1")]
    p0, p1 = [], []
    for i in range(len(args["ce"])):
        for port, column in zip(ports, columns):
            port.value = int(column[i]) & 0xFF
        dut.ce.value = int(args["ce"][i])
        await RisingEdge(dut.clk)
        await ReadOnly()
        p0.append(dut.p0.value.to_signed())
        p1.append(dut.p1.value.to_signed())
        await FallingEdge(dut.clk)
    testbench_outputs(p0=np.array(p0, np.int64), p1=np.array(p1, np.int64))
