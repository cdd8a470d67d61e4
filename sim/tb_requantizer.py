"""cocotb testbench for :class:`cnnacc.hw.requantizer.Requantizer`, and :func:`run_rtl` that runs it.

Inputs: ``acc``, ``bias``, ``multiplier``, ``shift`` (beats x lanes), ``zp``, ``qmin``, ``qmax``, ``single``,
``seed`` and the ``bubble``/``stall`` probabilities. Outputs: ``data`` (beats x lanes) and ``cycles``, from the
first beat offered to the last result taken.
"""

import random

import numpy as np

import cocotb

from ..hw.requantizer import Requantizer, requant_input_layout, requant_output_layout
from .cocotb_streams import stream_through
from .runner import run_cocotb, testbench_inputs, testbench_outputs

__all__ = ["run_rtl"]


def run_rtl(lanes, vectors, zp, qmin, qmax, single, *, seed=0, bubble=0.0, stall=0.0, sim=None, target="generic"):
    """Run the requantizer (of ``target``) on ``vectors`` (dict of beats x lanes arrays); returns
    ``(data, cycles)``."""
    run = run_cocotb(Requantizer(lanes, target=target), toplevel="requantizer", test_module="cnnacc.sim.tb_requantizer", sim=sim,
                     inputs=dict(vectors, lanes=lanes, zp=zp, qmin=qmin, qmax=qmax, single=single, seed=seed,
                                 bubble=bubble, stall=stall))
    return np.asarray(run.outputs["data"], np.int64), int(run.outputs["cycles"])


@cocotb.test()
async def requantizer_stream(dut):
    args = testbench_inputs()
    lanes = int(args["lanes"])
    rng = random.Random(int(args["seed"]))
    in_layout, out_layout = requant_input_layout(lanes), requant_output_layout(lanes)
    beats = [in_layout.const({
        "acc": [int(v) for v in args["acc"][i]],
        "params": [{"bias": int(args["bias"][i, j]), "multiplier": int(args["multiplier"][i, j]),
                    "shift": int(args["shift"][i, j])} for j in range(lanes)],
    }).as_bits() for i in range(args["acc"].shape[0])]

    dut.single_rounding.value = int(args["single"])
    dut.zero_point.value = int(args["zp"]) & 0xFF
    dut.qmin.value = int(args["qmin"]) & 0xFF
    dut.qmax.value = int(args["qmax"]) & 0xFF
    raw, cycles = await stream_through(dut, "i_acc", "o_data", beats, len(beats), rng, float(args["bubble"]),
                                       float(args["stall"]))
    data = [[int(v) for v in out_layout.from_bits(bits).data] for bits in raw]
    testbench_outputs(data=np.array(data, np.int64), cycles=cycles)
