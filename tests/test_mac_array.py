"""MacArray against NumPy: in the Amaranth simulator and through cocotb on Verilator."""

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnacc.config import DEFAULT_CONFIG, AcceleratorConfig
from cnnacc.hw.mac_array import MacArray
from cnnacc.sim.amaranth_streams import stream_get, stream_put
from cnnacc.sim.runner import run_cocotb


def random_products(config, seed, count, depths):
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(count):
        k = int(rng.choice(depths))
        a.append(rng.integers(-128, 128, size=(config.rows, k), dtype=np.int8))
        b.append(rng.integers(-128, 128, size=(k, config.cols), dtype=np.int8))
    return a, b


def golden_products(a, b, acc_width=32):
    """NumPy reference: int8 GEMM accumulated in ``acc_width``-bit two's complement."""
    out = []
    for a_i, b_i in zip(a, b):
        exact = a_i.astype(np.int64) @ b_i.astype(np.int64)
        wrapped = (exact + (1 << (acc_width - 1))) % (1 << acc_width) - (1 << (acc_width - 1))
        out.append(wrapped)
    return np.array(out)


def simulate_amaranth(config, a, b, seed, bubble=0.3, stall=0.3):
    dut = MacArray(config)
    rng = random.Random(seed)
    results = []

    async def producer(ctx):
        for a_i, b_i in zip(a, b):
            for k in range(a_i.shape[1]):
                await stream_put(ctx, dut.i_operands, {
                    "act": a_i[:, k].tolist(), "wgt": b_i[k, :].tolist(),
                    "first": k == 0, "last": k == a_i.shape[1] - 1,
                }, rng=rng, bubble_prob=bubble)

    async def consumer(ctx):
        for _ in range(len(a)):
            block = await stream_get(ctx, dut.o_result, rng=rng, stall_prob=stall)
            results.append([[int(v) for v in row] for row in block])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return np.array(results)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_amaranth_sim_matches_numpy(seed):
    config = AcceleratorConfig(rows=3, cols=4)
    a, b = random_products(config, seed, count=4, depths=[1, 2, 5])
    got = simulate_amaranth(config, a, b, seed)
    np.testing.assert_array_equal(got, golden_products(a, b), err_msg=f"seed {seed}")


def test_amaranth_sim_extremes():
    # -128 * -128 summed many times is the largest magnitude an int8 product sum can reach.
    config = AcceleratorConfig(rows=2, cols=2)
    a = [np.full((2, 40), -128, np.int8), np.array([[-128, 127], [127, -128]], np.int8)]
    b = [np.full((40, 2), -128, np.int8), np.array([[127, -128], [-128, 127]], np.int8)]
    got = simulate_amaranth(config, a, b, seed=0, bubble=0.0, stall=0.0)
    np.testing.assert_array_equal(got, golden_products(a, b))


def test_accumulator_wraps_like_narrow_twos_complement():
    config = AcceleratorConfig(rows=1, cols=1, acc_width=17)
    a = [np.full((1, 5), -128, np.int8)]
    b = [np.full((5, 1), -128, np.int8)]
    got = simulate_amaranth(config, a, b, seed=0, bubble=0.0, stall=0.0)
    assert got[0, 0, 0] == golden_products(a, b, acc_width=17)[0, 0, 0] != 5 * 16384


@pytest.mark.parametrize("seed", [11, 12])
def test_cocotb_verilator_matches_numpy(seed):
    config = replace(DEFAULT_CONFIG, rows=4, cols=8)
    a, b = random_products(config, seed, count=6, depths=[1, 3, 16])
    run = run_cocotb(
        MacArray(config), toplevel="mac_array", test_module="cnnacc.sim.tb_mac_array", sim="verilator",
        inputs=dict(a=np.concatenate(a, axis=1), b=np.concatenate(b, axis=0),
                    depths=[x.shape[1] for x in a], rows=config.rows, cols=config.cols, acc_width=config.acc_width,
                    seed=seed, bubble=0.3, stall=0.3))
    np.testing.assert_array_equal(run.outputs["c"], golden_products(a, b), err_msg=f"seed {seed}")
