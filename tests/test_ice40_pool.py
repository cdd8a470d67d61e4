"""The iCE40 pool engine (target "ice40": max pooling over windows up to 2x2) against the golden model, bit for bit,
with the cycle model exact; and what it refuses."""

import dataclasses

import numpy as np
import pytest

from cnnacc.boards.configs import ICEBREAKER_CONFIG
from cnnacc.config import AcceleratorConfig
from cnnacc.host import graph as g
from cnnacc.host.compiler import compile_graph
from cnnacc.host.cycles_vector import pool_cycles
from cnnacc.host.program import ProgramError
from cnnacc.hw.pool_engine import PoolMode, check_pool_support, ice40_pool_limits, pool_layer
from cnnacc.sim import tb_pool_engine

from test_pool_engine import check, run_amaranth

#: Small enough for the Amaranth simulator; the iCEBreaker's lanes and kernel limit.
ICE40 = AcceleratorConfig(rows=4, cols=4, lanes=4, max_kernel=5, max_width=9, target="ice40")


def random_job(config, rng):
    k = int(rng.integers(1, 3))
    s = int(rng.integers(1, 4))
    pads = tuple(int(v) for v in rng.integers(0, k, size=4))
    h = int(rng.integers(max(1, k - pads[0] - pads[1]), 6))
    w = int(rng.integers(max(1, k - pads[2] - pads[3]), config.max_width + 1))
    groups = int(rng.integers(1, 3))
    layer = pool_layer(config, PoolMode.MAX, height=h, width=w, groups=groups, kernel=k, stride=s, padding=pads)
    return layer, rng.integers(-128, 128, size=(groups, h, w, config.lanes), dtype=np.int64)


@pytest.mark.parametrize("seed", [11, 12])
def test_random_layers_with_backpressure(seed):
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    jobs = [random_job(ICE40, rng) for _ in range(5)]
    got, _ = run_amaranth(ICE40, jobs, seed=seed, bubble=0.3, stall=0.3)
    check(got, jobs, f"ice40 seed {seed}")


def test_the_extremes_and_every_padded_corner():
    # -128 and 127 everywhere (-128 must still win over nothing: padding never enters a maximum), and windows
    # with 1, 2 and 4 in-bounds taps (corners, edges, inside of a padded 2x2 window).
    config = dataclasses.replace(ICE40, lanes=8, rows=8)
    rng = np.random.default_rng(13)
    jobs = []
    for rows in (np.full((2, 8), -128), np.full((2, 8), 127), np.array([[-128, 127] * 4, [127, -128] * 4]),
                 rng.integers(-128, 128, size=(2, 8))):
        planes = np.stack([rows[0], rows[1], rows[1], rows[0]]).reshape(1, 2, 2, 8)
        jobs.append((pool_layer(config, PoolMode.MAX, height=2, width=2, kernel=2, stride=1,
                                padding=(1, 1, 1, 1)), planes))
        jobs.append((pool_layer(config, PoolMode.MAX, height=2, width=2, kernel=1, stride=1), planes))
    got, _ = run_amaranth(config, jobs, seed=13, bubble=0.1, stall=0.1)
    check(got, jobs, "ice40 extremes, seed 13")


def test_cycle_model_matches_rtl():
    rng = np.random.default_rng(14)
    for layer in [pool_layer(ICE40, PoolMode.MAX, height=6, width=8, kernel=2, stride=2, groups=2),
                  pool_layer(ICE40, PoolMode.MAX, height=5, width=9, kernel=2, stride=1, padding=(1, 1, 1, 1)),
                  pool_layer(ICE40, PoolMode.MAX, height=5, width=7, kernel=2, stride=2, padding=(0, 1, 0, 1)),
                  pool_layer(ICE40, PoolMode.MAX, height=4, width=5, kernel=1, stride=3, groups=2)]:
        win = layer["window"]
        job = (layer, rng.integers(-128, 128, size=(win["groups"], win["height"], win["width"], ICE40.lanes)))
        got, cycles = run_amaranth(ICE40, [job])
        check(got, [job], "ice40 cycle model")
        assert cycles == pool_cycles(ICE40, layer), f"{layer}: RTL {cycles} cycles, model {pool_cycles(ICE40, layer)}"


def test_counters_at_the_limits_of_the_instance():
    # The row and plane counters are as wide as ice40_pool_limits: a layer exactly at both limits (the tallest
    # plane a stride-7 window can leave in the output memory, as many planes as it has rows) runs bit-exact,
    # with the cycle model exact.
    config = dataclasses.replace(ICE40, vector_depth=16)
    max_height, max_groups = ice40_pool_limits(config)
    assert (max_height, max_groups) == (7 * 16 + 1, 16)
    rng = np.random.default_rng(16)
    print("seed 16")
    layer = pool_layer(config, PoolMode.MAX, height=max_height, width=1, groups=max_groups, kernel=2, stride=7,
                       padding=(0, 0, 1, 0))
    job = (layer, rng.integers(-128, 128, size=(max_groups, max_height, 1, config.lanes)))
    got, cycles = run_amaranth(config, [job])
    check(got, [job], "ice40 at the counters' limits")
    assert cycles == pool_cycles(config, layer)
    with pytest.raises(ValueError, match=rf"^s6: 1 planes of {max_height + 1} rows exceed the 16 planes of "
                                         rf"{max_height} rows the ice40 pool engine counts"):
        pool_layer(config, PoolMode.MAX, height=max_height + 1, width=1, kernel=1, stride=7, name="s6")
    with pytest.raises(ValueError, match=r"^s7: 17 planes of 2 rows exceed"):
        pool_layer(config, PoolMode.MAX, height=2, width=2, groups=17, kernel=2, stride=2, name="s7")
    pool_layer(dataclasses.replace(config, target="generic"), PoolMode.MAX, height=2, width=2, groups=17, kernel=2,
               stride=2)


def test_an_instance_built_for_1x1_windows_only():
    # max_kernel 1: no line buffer at all; strides and back-to-back layers still exact.
    config = dataclasses.replace(ICE40, max_kernel=1)
    rng = np.random.default_rng(17)
    print("seed 17")
    jobs = []
    for s in (1, 2, 3):
        h, w, groups = int(rng.integers(1, 6)), int(rng.integers(1, config.max_width + 1)), int(rng.integers(1, 3))
        jobs.append((pool_layer(config, PoolMode.MAX, height=h, width=w, groups=groups, kernel=1, stride=s),
                     rng.integers(-128, 128, size=(groups, h, w, config.lanes))))
    got, _ = run_amaranth(config, jobs, seed=17, bubble=0.2, stall=0.2)
    check(got, jobs, "ice40 1x1 only, seed 17")


def test_refusals_name_the_layer():
    with pytest.raises(ValueError, match=r"^s9: a 3x3 pooling window exceeds the 2x2 the ice40 pool engine"):
        check_pool_support(ICEBREAKER_CONFIG, PoolMode.MAX, 3, name="s9")
    with pytest.raises(ValueError, match=r"^gap: global average pooling is not built on the ice40 pool engine"):
        check_pool_support(ICEBREAKER_CONFIG, PoolMode.GLOBAL_AVG, name="gap")
    with pytest.raises(ValueError, match=r"^s4: average pooling is not built on the ice40 pool engine \(it computes "
                                         r"max\)$"):
        pool_layer(ICEBREAKER_CONFIG, PoolMode.AVG, height=4, width=4, kernel=2, stride=2, name="s4")
    with pytest.raises(ValueError, match=r"^s2: the ice40 pool engine has no activation clamp \(range 0\.\.127; it "
                                         r"needs -128\.\.127\)$"):
        pool_layer(ICEBREAKER_CONFIG, PoolMode.MAX, height=4, width=4, kernel=2, stride=2, qmin=0, name="s2")
    for k in (1, 2):
        check_pool_support(ICEBREAKER_CONFIG, PoolMode.MAX, k)
    check_pool_support(dataclasses.replace(ICEBREAKER_CONFIG, target="generic"), PoolMode.GLOBAL_AVG)


def test_verilator_lenet5_pools_on_the_icebreaker_config():
    # LeNet-5's S2 (28x28x6 -> 14x14) and S4 (10x10x16 -> 5x5) at the iCEBreaker's 4 lanes, then a padded
    # stride-1 pool at the full 32-pixel width, with bubbles and back-pressure (cycle counts: the Amaranth tests).
    config = ICEBREAKER_CONFIG
    rng = np.random.default_rng(15)
    print("seed 15")
    jobs = []
    for layer in [pool_layer(config, PoolMode.MAX, height=28, width=28, kernel=2, stride=2, groups=2),
                  pool_layer(config, PoolMode.MAX, height=10, width=10, kernel=2, stride=2, groups=4),
                  pool_layer(config, PoolMode.MAX, height=3, width=32, kernel=2, stride=1, padding=(1, 1, 1, 1))]:
        win = layer["window"]
        jobs.append((layer, rng.integers(-128, 128, size=(win["groups"], win["height"], win["width"], config.lanes))))
    got, _ = tb_pool_engine.run_rtl(config, jobs, seed=15, bubble=0.2, stall=0.2)
    check(got, jobs, "ice40 verilator, seed 15")


def _pool_graph(kind, kernel, out_hw, activation="none"):
    x = g.TensorSpec("x", (6, 6, 4), 0.1, -3)
    y = dataclasses.replace(x, name="y", shape=(out_hw, out_hw, 4))
    node = kind(kind.kind, ("x",), y, kernel=(kernel, kernel), stride=(kernel, kernel), activation=activation)
    return g.Graph(x, [node], "y", name="pool_only")


@pytest.mark.parametrize("graph, message", [
    (_pool_graph(g.MaxPool2D, 3, 2), r"^max_pool2d: a 3x3 pooling window exceeds the 2x2 the ice40 pool engine is "
                                     r"built for$"),
    (_pool_graph(g.AvgPool2D, 6, 1), r"^avg_pool2d: global average pooling is not built on the ice40 pool engine "
                                     r"\(it computes max\)$"),
    (_pool_graph(g.AvgPool2D, 2, 3), r"^avg_pool2d: average pooling is not built on the ice40 pool engine \(it "
                                     r"computes max\)$"),
    (_pool_graph(g.MaxPool2D, 2, 3, "relu"), r"^max_pool2d: the ice40 pool engine has no activation clamp \(range "
                                             r"-3\.\.127; it needs -128\.\.127\)$"),
])
def test_compiler_refuses_what_the_ice40_pool_engine_lacks(graph, message):
    with pytest.raises(ProgramError, match=message):
        compile_graph(graph, ICEBREAKER_CONFIG)
    compile_graph(graph, dataclasses.replace(ICEBREAKER_CONFIG, target="generic"))
    compile_graph(_pool_graph(g.MaxPool2D, 2, 3), ICEBREAKER_CONFIG)
