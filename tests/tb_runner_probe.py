"""A cocotb testbench used only by test_runner.py: echoes its inputs, or fails on request."""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from cnnacc.sim.runner import testbench_inputs, testbench_outputs


@cocotb.test()
async def echo_or_fail(dut):
    args = testbench_inputs()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await ClockCycles(dut.clk, 3)
    assert not int(args["fail"]), "failing on request"
    testbench_outputs(echo=args["values"] * 2)
