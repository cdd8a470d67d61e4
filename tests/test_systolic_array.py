"""SystolicArray against NumPy: random tiles (deep, shallow, single-beat), extremes, back-pressure and bubbles,
in the Amaranth simulator and through cocotb on Verilator; back-to-back tiles leave no bubble."""

import numpy as np
import pytest

from cnnacc.config import AcceleratorConfig
from cnnacc.hw.systolic_array import array_latency, min_tile_beats
from cnnacc.sim import tb_systolic_array as tb


def random_tiles(config, seed, count, depths):
    rng = np.random.default_rng(seed)
    tiles = []
    for _ in range(count):
        k = int(rng.choice(depths))
        # Weights are symmetric int8 ([-127, 127]); activations use the whole range.
        tiles.append((rng.integers(-127, 128, size=(k, config.rows), dtype=np.int8),
                      rng.integers(-128, 128, size=(k, config.cols), dtype=np.int8)))
    return tiles


@pytest.mark.parametrize("seed,rows,cols", [(1, 3, 4), (2, 4, 2), (3, 1, 5), (4, 2, 1)])
def test_amaranth_random_tiles_with_backpressure(seed, rows, cols):
    config = AcceleratorConfig(rows=rows, cols=cols)
    tiles = random_tiles(config, seed, count=6, depths=[1, 2, 3, 9])
    got, _ = tb.run_amaranth(config, tiles, seed=seed, bubble=0.3, stall=0.3)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")


def test_amaranth_extremes_and_wrap():
    config = AcceleratorConfig(rows=2, cols=3)
    tiles = [(np.full((70, 2), -127, np.int8), np.full((70, 3), -128, np.int8)),
             (np.full((5, 2), 127, np.int8), np.full((5, 3), -128, np.int8))]
    got, _ = tb.run_amaranth(config, tiles, seed=5)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles))
    narrow = AcceleratorConfig(rows=2, cols=3, acc_width=17)
    got, _ = tb.run_amaranth(narrow, tiles, seed=5)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles, acc_width=17))


def test_back_to_back_tiles_leave_no_bubble():
    config = AcceleratorConfig(rows=3, cols=4)
    depth = min_tile_beats(config)
    tiles = random_tiles(config, 6, count=5, depths=[depth])
    got, cycles = tb.run_amaranth(config, tiles)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles))
    # Every beat enters on its own cycle; after the last one only the pipeline and the drain of one tile remain.
    assert cycles == 5 * depth + array_latency(config) + config.cols


def test_verilator_8x8_random_tiles():
    seed = 11
    config = AcceleratorConfig(rows=8, cols=8)
    tiles = random_tiles(config, seed, count=12, depths=[1, 4, 9, 40])
    got, _ = tb.run_rtl(config, tiles, seed=seed, bubble=0.25, stall=0.25)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")
