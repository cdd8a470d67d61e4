"""MacArray against NumPy: in the Amaranth simulator and through cocotb on Verilator (and Icarus if present)."""

import os
import shutil

import numpy as np
import pytest

from cnnacc.config import AcceleratorConfig
from cnnacc.host.gemm import golden_gemm, run_gemm
from cnnacc.sim import mac_array


def random_products(config, seed, count, depths):
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(count):
        k = int(rng.choice(depths))
        a.append(rng.integers(-128, 128, size=(config.rows, k), dtype=np.int8))
        b.append(rng.integers(-128, 128, size=(k, config.cols), dtype=np.int8))
    return a, b


def golden_products(a, b, acc_width=32):
    return np.array([golden_gemm(a_i, b_i, acc_width) for a_i, b_i in zip(a, b)])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_amaranth_sim_matches_numpy(seed):
    config = AcceleratorConfig(rows=3, cols=4)
    a, b = random_products(config, seed, count=4, depths=[1, 2, 5])
    got, _ = mac_array.run_amaranth(config, a, b, seed=seed, bubble=0.3, stall=0.3)
    np.testing.assert_array_equal(got, golden_products(a, b), err_msg=f"seed {seed}")


def test_amaranth_sim_extremes():
    # -128 * -128 summed many times is the largest magnitude an int8 product sum can reach.
    config = AcceleratorConfig(rows=2, cols=2)
    a = [np.full((2, 40), -128, np.int8), np.array([[-128, 127], [127, -128]], np.int8)]
    b = [np.full((40, 2), -128, np.int8), np.array([[127, -128], [-128, 127]], np.int8)]
    got, _ = mac_array.run_amaranth(config, a, b)
    np.testing.assert_array_equal(got, golden_products(a, b))


def test_accumulator_wraps_like_narrow_twos_complement():
    config = AcceleratorConfig(rows=1, cols=1, acc_width=17)
    a = [np.full((1, 5), -128, np.int8)]
    b = [np.full((5, 1), -128, np.int8)]
    got, _ = mac_array.run_amaranth(config, a, b)
    assert got[0, 0, 0] == golden_products(a, b, acc_width=17)[0, 0, 0] == 5 * 16384 - (1 << 17)


def test_back_to_back_products_lose_no_cycle():
    config = AcceleratorConfig(rows=2, cols=2)
    a, b = random_products(config, 5, count=3, depths=[4])
    _, cycles = mac_array.run_amaranth(config, a, b)
    # 12 beats in, one cycle until the last result is registered, one to take it.
    assert cycles <= 12 + 2


@pytest.mark.parametrize("seed", [11, 12])
def test_cocotb_verilator_matches_numpy(seed):
    config = AcceleratorConfig(rows=4, cols=8)
    a, b = random_products(config, seed, count=6, depths=[1, 3, 16])
    got, _ = mac_array.run_rtl(config, a, b, seed=seed, bubble=0.3, stall=0.3, sim="verilator")
    np.testing.assert_array_equal(got, golden_products(a, b), err_msg=f"seed {seed}")


@pytest.mark.skipif(shutil.which("iverilog") is None and not os.environ.get("CNNACC_REQUIRE_ICARUS"),
                    reason="Icarus is an optional extra (apt-get install iverilog); CI installs and requires it")
def test_cocotb_icarus_matches_numpy():
    config = AcceleratorConfig(rows=2, cols=3)
    a, b = random_products(config, 21, count=3, depths=[2, 7])
    got, _ = mac_array.run_rtl(config, a, b, seed=21, bubble=0.2, stall=0.2, sim="icarus")
    np.testing.assert_array_equal(got, golden_products(a, b))


@pytest.mark.parametrize("backend", ["amaranth", "verilator"])
def test_tiled_gemm_with_ragged_edges(backend):
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, size=(5, 9), dtype=np.int8)
    b = rng.integers(-128, 128, size=(9, 7), dtype=np.int8)
    result = run_gemm(a, b, backend=backend, config=AcceleratorConfig(rows=2, cols=4), seed=7, bubble=0.2)
    np.testing.assert_array_equal(result.c, a.astype(np.int64) @ b.astype(np.int64))
    assert result.matches_golden and result.cycles >= 3 * 2 * 9
