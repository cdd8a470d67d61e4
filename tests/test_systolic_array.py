"""SystolicArray against NumPy: random tiles (deep, shallow, single-beat), extremes, back-pressure and bubbles,
in the Amaranth simulator and through cocotb on Verilator; back-to-back tiles leave no bubble."""

import numpy as np
import pytest

from cnnacc.config import AcceleratorConfig
from cnnacc.hw.systolic_array import array_latency, column_fifo_latency, ice40_tile_cycles, min_tile_beats
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


@pytest.mark.parametrize("stall,stall_cycles", [(0.3, None), (0.5, 3), (0.0, 40)])
def test_ecp5_free_running_array_under_backpressure(stall, stall_cycles):
    """Target "ecp5" never stalls its PEs: columns go into a FIFO and a tile's last beat waits for room for its
    columns. Random, light and very slow consumers (one column every 40 cycles: the FIFO fills and the input
    holds for hundreds of cycles) lose no column and reorder none."""
    from cnnacc.hw.systolic_array import column_fifo_depth
    config = AcceleratorConfig(rows=3, cols=4, target="ecp5")
    assert column_fifo_depth(config) >= 2 * config.cols and column_fifo_depth(AcceleratorConfig()) == 0
    tiles = random_tiles(config, 9, count=14, depths=[1, 2, 5, 12])
    got, _ = tb.run_amaranth(config, tiles, seed=9, bubble=0.2, stall=stall, stall_cycles=stall_cycles)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"stall {stall} every {stall_cycles}")


def test_ecp5_back_to_back_tiles_leave_no_bubble():
    """The FIFO is deep enough that tiles min_tile_beats long enter back to back with a consumer that takes a
    column a cycle: the same cycles as the stalling array, plus the ECP5's product register and its FIFO's
    pipelined read (column_fifo_latency, where the stalling array's output register is one cycle)."""
    config = AcceleratorConfig(rows=3, cols=4, target="ecp5")
    depth = min_tile_beats(config)
    tiles = random_tiles(config, 6, count=8, depths=[depth])
    got, cycles = tb.run_amaranth(config, tiles)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles))
    assert cycles == 8 * depth + array_latency(config) + config.cols + column_fifo_latency(config) - 1


def test_verilator_8x8_random_tiles():
    seed = 11
    config = AcceleratorConfig(rows=8, cols=8)
    tiles = random_tiles(config, seed, count=12, depths=[1, 4, 9, 40])
    got, _ = tb.run_rtl(config, tiles, seed=seed, bubble=0.25, stall=0.25)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")


# --- target "ice40": broadcast operands, SB_MAC16 products, the accumulators drained in place --------------------

ICE40 = AcceleratorConfig(rows=4, cols=4, target="ice40")


@pytest.mark.parametrize("seed,rows,cols", [(31, 4, 4), (32, 3, 3)])
def test_ice40_amaranth_random_tiles_with_backpressure(seed, rows, cols):
    # The Amaranth simulator runs the SB_MAC16 pairs as their plain models (dsp_model); 3x3 leaves one half unused.
    config = AcceleratorConfig(rows=rows, cols=cols, target="ice40")
    tiles = random_tiles(config, seed, count=6, depths=[1, 2, 9, 40])
    got, _ = tb.run_amaranth(config, tiles, seed=seed, bubble=0.3, stall=0.3)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")


def test_ice40_slow_consumer_never_loses_a_column():
    # A consumer much slower than the tiles: the array must hold the next tile rather than overwrite a column.
    seed = 33
    tiles = random_tiles(ICE40, seed, count=5, depths=[1, 5, 40])
    got, _ = tb.run_amaranth(ICE40, tiles, seed=seed, stall_cycles=50)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")


@pytest.mark.parametrize("depth", [1, 7, 40])
def test_ice40_tiles_cost_their_beats_plus_their_drain(depth):
    # Beats back to back and a consumer taking a column a cycle: each tile after the first costs its beats and its
    # drain (ice40_tile_cycles), then the pipeline and the last drain.
    count = 3
    tiles = random_tiles(ICE40, 36, count=count, depths=[depth])
    got, cycles = tb.run_amaranth(ICE40, tiles)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles))
    assert cycles == (depth + (count - 1) * ice40_tile_cycles(depth, ICE40.cols)
                      + array_latency(ICE40) + ICE40.cols)


def test_ice40_consumer_at_the_requantizer_pace_is_the_only_bottleneck():
    # A consumer taking one column per requantizer interval (one serial lane for the column's rows channels): a
    # tile shallower than that interval less the high parts' count and the pipeline fill (3 cycles) is
    # computed while its predecessor's last column is requantized, so the run takes exactly the consumer's time.
    from cnnacc.hw.requantizer import requant_interval
    interval = requant_interval("ice40", ICE40.rows)
    tiles = random_tiles(ICE40, 34, count=3, depths=[1, 30, interval - 4])
    got, cycles = tb.run_amaranth(ICE40, tiles, stall_cycles=interval)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles))
    assert cycles == len(tiles) * ICE40.cols * interval


def test_ice40_verilator_sb_mac16_equals_model():
    # SB_MAC16 on yosys's cells_sim.v (operand and product registers inside the block): the same accumulators as
    # golden, the int8 extremes included, and the same cycles as the Amaranth model of the same array.
    seed = 35
    tiles = random_tiles(ICE40, seed, count=4, depths=[1, 3, 20, 90])
    extremes = [(np.full((90, 4), -128, np.int8), np.full((90, 4), -128, np.int8)),
                (np.full((140, 4), 127, np.int8), np.full((140, 4), -128, np.int8))]
    tiles = extremes + tiles
    got, cycles = tb.run_rtl(ICE40, tiles, seed=seed)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}")
    depths = [w.shape[0] for w, _ in tiles]
    assert cycles == (depths[0] + sum(ice40_tile_cycles(d, ICE40.cols) for d in depths[1:])
                      + array_latency(ICE40) + ICE40.cols)
    got, _ = tb.run_rtl(ICE40, tiles, seed=seed, bubble=0.25, stall=0.25)
    np.testing.assert_array_equal(got, tb.golden_tiles(tiles), err_msg=f"seed {seed}, bubbles and stalls")


@pytest.mark.parametrize("rows,cols", [(3, 4), (2, 6)])
def test_ecp5_reset_drops_the_columns_in_flight(rows, cols):
    """The ECP5 array's flags have no reset: after a reset (the flush that ends a run) the flags in flight still
    reach the bottom row, and the array must write none of their columns into its (reset) FIFO, while a tile
    offered from the very next cycle comes out whole. A reset at every cycle of a tile's life, from its first beat
    to its last column; the old tile is offered through the reset cycle too. A drain one cycle shorter
    (flush_drain_cycles) fails this."""
    from amaranth.hdl import ResetInserter, Signal
    from amaranth.sim import Simulator
    from cnnacc.hw.systolic_array import SystolicArray, flush_drain_cycles

    config = AcceleratorConfig(rows=rows, cols=cols, target="ecp5")
    old, new = random_tiles(config, 11, count=2, depths=[7])
    expected = tb.golden_tiles([new])[0]
    life = 7 + flush_drain_cycles(config) + cols + 4
    for flush_at in range(life):
        flush = Signal()
        array = SystolicArray(config, dsp_model=True)
        dut = ResetInserter(flush)(array)
        taken = []

        async def bench(ctx):
            ctx.set(array.o_columns.ready, 1)
            pending = list(tb._beats([old]))
            for cycle in range(flush_at + 3 * life):
                ctx.set(flush, cycle == flush_at)
                if cycle == flush_at + 1:
                    pending = list(tb._beats([new]))
                ctx.set(array.i_beats.valid, bool(pending))
                if pending:
                    ctx.set(array.i_beats.payload, pending[0])
                _, _, ready, valid, column = await ctx.tick().sample(
                    array.i_beats.ready, array.o_columns.valid, array.o_columns.payload)
                if pending and ready:
                    pending.pop(0)
                if valid and cycle > flush_at:
                    taken.append((int(column.col), [int(v) for v in column.acc]))
            assert not pending

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        sim.run()
        assert [col for col, _ in taken] == list(range(cols)), f"reset at cycle {flush_at}: columns {taken}"
        got = np.array([acc for _, acc in taken]).T
        np.testing.assert_array_equal(got, expected, err_msg=f"reset at cycle {flush_at}")
