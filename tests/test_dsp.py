"""DualMul8: the SB_MAC16 build (on yosys's cells_sim.v under Verilator) against its plain model and NumPy,
every int8 x int8 pair, with the clock enable toggling."""

import gc
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable

from cnnacc.hw.dsp import DualMul8
from cnnacc.sim import tb_dsp


def expected(a0, b0, a1, b1, ce):
    """Products as registered on the last enabled edge (the registers start at 0 in both models)."""
    p0, p1 = np.zeros(len(ce), np.int64), np.zeros(len(ce), np.int64)
    held0 = held1 = 0
    for i, enabled in enumerate(ce):
        if enabled:
            held0, held1 = int(a0[i]) * int(b0[i]), int(a1[i]) * int(b1[i])
        p0[i], p1[i] = held0, held1
    return p0, p1


@pytest.mark.parametrize("target", ["ice40", "generic"])
def test_every_int8_pair_with_enable(target):
    seed = 21
    rng = np.random.default_rng(seed)
    grid = np.arange(-128, 128)
    a, b = np.repeat(grid, 256), np.tile(grid, 256)          # all 65,536 pairs, -128 x -128 included
    half = len(a) // 2
    a0, b0, a1, b1 = a[:half], b[:half], a[half:][::-1], b[half:]
    ce = np.ones(half, np.int64)
    ce[0] = 1                                                 # the first edge is enabled: no reset state seen
    # Second, shorter stretch: random operands with the enable low a third of the time.
    n = 3000
    r = [rng.integers(-128, 128, n) for _ in range(4)]
    ce_r = (rng.random(n) > 1 / 3).astype(np.int64)
    ce_r[0] = 1
    a0, b0, a1, b1 = (np.concatenate([x, y]) for x, y in zip((a0, b0, a1, b1), r))
    ce = np.concatenate([ce, ce_r])
    p0, p1 = tb_dsp.run_rtl(target, a0, b0, a1, b1, ce)
    e0, e1 = expected(a0, b0, a1, b1, ce)
    np.testing.assert_array_equal(p0, e0, err_msg=f"{target} top/bottom product 0, seed {seed}")
    np.testing.assert_array_equal(p1, e1, err_msg=f"{target} product 1, seed {seed}")


def test_bad_target_named():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="target must be one of .*, not 'xilinx'"):
            DualMul8("xilinx")
        gc.collect()
