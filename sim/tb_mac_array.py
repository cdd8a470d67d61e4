"""cocotb testbench for :class:`cnnacc.hw.mac_array.MacArray`.

Inputs (from :func:`cnnacc.sim.runner.run_cocotb`): ``n`` products of depths ``depths[i]``, given as their
int8 operands concatenated along the reduction axis, ``a`` (rows, sum(depths)) and ``b`` (sum(depths), cols);
``rows``, ``cols``, ``acc_width``, ``seed`` and the ``bubble``/``stall`` probabilities. Outputs: ``c`` (n, rows,
cols) as computed by the RTL and ``cycles``, from the first beat offered to the last result taken.
"""

import itertools
import random

import numpy as np

import cocotb

from ..config import AcceleratorConfig
from ..hw.mac_array import operand_layout, result_layout
from .cocotb_streams import stream_through
from .runner import testbench_inputs, testbench_outputs


@cocotb.test()
async def mac_array_products(dut):
    args = testbench_inputs()
    depths = [int(d) for d in args["depths"]]
    split = list(itertools.accumulate(depths))[:-1]
    a, b = np.split(args["a"], split, axis=1), np.split(args["b"], split, axis=0)
    config = AcceleratorConfig(rows=int(args["rows"]), cols=int(args["cols"]), acc_width=int(args["acc_width"]))
    rng = random.Random(int(args["seed"]))
    in_layout, out_layout = operand_layout(config), result_layout(config)

    beats = []
    for a_i, b_i in zip(a, b):
        depth = a_i.shape[1]
        for k in range(depth):
            beats.append(in_layout.const({
                "act": a_i[:, k].tolist(), "wgt": b_i[k, :].tolist(),
                "first": k == 0, "last": k == depth - 1,
            }).as_bits())

    raw, cycles = await stream_through(dut, "i_operands", "o_result", beats, len(a), rng, float(args["bubble"]),
                                       float(args["stall"]))

    c = [[list(row) for row in out_layout.from_bits(bits)] for bits in raw]
    testbench_outputs(c=c, cycles=cycles)
