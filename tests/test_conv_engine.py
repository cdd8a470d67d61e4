"""ConvEngine against the golden model (cnnacc.host.golden.conv2d / fully_connected), bit for bit, and the cycle
model (cnnacc.host.cycles_conv) against the RTL, exactly. Small layers in the Amaranth simulator, an 8x8
configuration under cocotb + Verilator."""

from dataclasses import replace

import numpy as np
import pytest

from cnnacc.config import AcceleratorConfig
from cnnacc.host import golden
from cnnacc.host import graph as g
from cnnacc.host.cycles_conv import conv_cycles
from cnnacc.hw.conv_engine import conv_layer, node_job
from cnnacc.sim import tb_conv_engine as tb


def conv_node(seed, h, w, cin, cout, k, stride=1, padding=(0, 0, 0, 0), *, zp_in=3, zp_out=-7, activation="none",
              rounding="double", extreme=False, out_scale=0.3):
    """A random Conv2D node and its input; ``extreme`` takes every value from the ends of the int8 range."""
    rng = np.random.default_rng(seed)
    if extreme:
        x = rng.choice(np.array([-128, 127], np.int8), size=(1, h, w, cin))
        weights = rng.choice(np.array([-127, 127], np.int8), size=(cout, k, k, cin))
    else:
        x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
        weights = rng.integers(-127, 128, size=(cout, k, k, cin), dtype=np.int8)
    bias = rng.integers(-20000, 20000, size=cout)
    oh = (h + padding[0] + padding[1] - k) // stride + 1
    ow = (w + padding[2] + padding[3] - k) // stride + 1
    node = g.Conv2D("conv", ["x"], g.TensorSpec("y", (oh, ow, cout), out_scale, zp_out), weights=weights,
                    bias=bias, weight_scales=rng.uniform(0.001, 0.01, cout),
                    input_spec=g.TensorSpec("x", (h, w, cin), 0.05, zp_in), activation=activation,
                    rounding=rounding, stride=(stride, stride), padding=padding)
    return node, x


def golden_out(node, x):
    out = golden.conv2d(x, node) if node.kind == "conv2d" else golden.fully_connected(x, node)
    return out[0]


SMALL = AcceleratorConfig(rows=3, cols=4)


def random_layer(seed):
    """A random small layer: kernel 1/2/3/5, stride 1/2, padding up to the kernel, any zero point, either
    rounding mode."""
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 2, 3, 5]))
    stride = int(rng.choice([1, 2]))
    h, w = int(rng.integers(1, 8)), int(rng.integers(1, 9))
    pads = tuple(int(rng.integers(0, k)) for _ in range(4))
    if (h + pads[0] + pads[1] < k) or (w + pads[2] + pads[3] < k):
        pads = (k - 1, k - 1, k - 1, k - 1)
    print(f"seed {seed}: {h}x{w} kernel {k} stride {stride} padding {pads}")
    return conv_node(seed, h, w, int(rng.integers(1, 5)), int(rng.integers(1, 8)), k, stride, pads,
                     zp_in=int(rng.integers(-128, 128)), rounding=str(rng.choice(["double", "single"])))


def fc_node(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(1, 2, 2, 5), dtype=np.int8)
    weights = rng.integers(-127, 128, size=(7, 20), dtype=np.int8)
    node = g.FullyConnected("fc", ["x"], g.TensorSpec("y", (7,), 0.2, 4), weights=weights,
                            bias=rng.integers(-1000, 1000, size=7), weight_scales=0.004,
                            input_spec=g.TensorSpec("x", (2, 2, 5), 0.05, -3), activation="relu")
    return node, x


def test_amaranth_small_layer_with_bubbles_and_backpressure():
    seed = 1
    node, x = random_layer(seed)
    fields, images = node_job(SMALL, node, x[0])
    got, _ = tb.run_amaranth(SMALL, fields, images, seed=seed, bubble=0.3, stall=0.3)
    np.testing.assert_array_equal(got, golden_out(node, x), err_msg=f"seed {seed}")


def test_amaranth_cycle_model_exact():
    node, x = conv_node(13, 3, 5, 1, 5, 1)     # Cin = 1: tiles shorter than the array's drain
    fields, images = node_job(SMALL, node, x[0])
    got, cycles = tb.run_amaranth(SMALL, fields, images)
    np.testing.assert_array_equal(got, golden_out(node, x))
    assert cycles == conv_cycles(SMALL, fields)


def test_amaranth_memory_bases_move_nothing_but_addresses():
    # The same layer with its input map, weights and parameters placed past garbage: same output, same cycles.
    node, x = conv_node(18, 4, 6, 3, 10, 3, 1, (1, 1, 1, 1))
    fields, images = node_job(SMALL, node, x[0])
    want, want_cycles = tb.run_amaranth(SMALL, fields, images)
    moved = dict(fields, act_base=5, weight_base=7, param_base=1)
    got, cycles = tb.run_amaranth(SMALL, moved, images)
    np.testing.assert_array_equal(got, golden_out(node, x))
    np.testing.assert_array_equal(want, got)
    assert cycles == want_cycles == conv_cycles(SMALL, fields)


def test_verilator_layers():
    """Many layers in one simulation: random shapes under back-pressure, then edge cases run without it, whose
    cycle counts must equal the model's."""
    cases = [(random_layer(seed), 0.3) for seed in (2, 3, 4, 5, 6)]
    edge = [
        # Every value at the ends of the int8 range, zero points at both ends; a small output scale drives the
        # results into both clamps.
        conv_node(10, 4, 5, 3, 4, 3, 1, (1, 1, 1, 1), zp_in=-128, extreme=True, out_scale=0.05),
        conv_node(11, 4, 5, 3, 4, 3, 1, (1, 1, 1, 1), zp_in=127, extreme=True, out_scale=0.05),
        # A map narrower than the padding, one row high; ReLU6.
        conv_node(12, 1, 2, 2, 3, 5, 1, (2, 2, 2, 2), activation="relu6", zp_out=-128),
        conv_node(13, 7, 9, 2, 4, 3, 2, (1, 1, 1, 1)),          # stride 2, SAME
        conv_node(14, 3, 5, 1, 5, 1),                            # shallow pointwise tiles
        conv_node(15, 6, 6, 3, 5, 5, 1, (0, 0, 0, 0), rounding="single"),   # VALID
        fc_node(16),
    ]
    for node, x in edge[:2]:
        out = golden_out(node, x)
        assert (out == -128).any() and (out == 127).any()
    cases += [(case, 0.0) for case in edge]
    jobs = [node_job(SMALL, node, x[0]) for (node, x), _ in cases]
    # Two layers placed past the start of every memory (over the earlier layers' data).
    for i in (3, 9):
        jobs[i] = (dict(jobs[i][0], act_base=3 + i, weight_base=11, param_base=2), jobs[i][1])
    results = tb.run_rtl_layers(SMALL, jobs, seed=7, bubble=0.2, stall=[stall for _, stall in cases])
    for i, (((node, x), stall), (fields, _), (got, cycles)) in enumerate(zip(cases, jobs, results)):
        np.testing.assert_array_equal(got, golden_out(node, x).reshape(got.shape), err_msg=f"layer {i}")
        if stall == 0.0:
            assert cycles == conv_cycles(SMALL, fields), f"layer {i}: RTL {cycles}, model {conv_cycles(SMALL, fields)}"


def test_bad_layer_named():
    with pytest.raises(ValueError, match="layer 'c1': stride 3 is not supported"):
        conv_layer(SMALL, (8, 8, 1), (4, 3, 3, 1), stride=3, name="c1")
    with pytest.raises(ValueError, match="layer 'c2': the 5x5 kernel does not fit"):
        conv_layer(SMALL, (2, 2, 1), (4, 5, 5, 1), name="c2")
    node, x = conv_node(17, 8, 8, 4, 4, 3)
    with pytest.raises(ValueError, match="layer 'conv': the weights need 72 words, the engine has 20"):
        node_job(SMALL, node, x[0], weight_depth=20)


def test_verilator_ecp5_walkers_and_cycle_model():
    """Target "ecp5" steps both tile cursors with walkers (one column a cycle): tiles of a few beats wait for them
    (walker_tile_beats), in span mode, within rows, stride 2 and across channel blocks; results bit-exact and
    cycles equal to the model's, beside deeper tiles that never wait; bit-exact again under back-pressure."""
    from cnnacc.hw.conv_engine import walker_tile_beats
    config = replace(SMALL, target="ecp5")
    assert walker_tile_beats(config) == config.cols + 4 and walker_tile_beats(SMALL) == 0
    cases = [conv_node(14, 3, 5, 1, 5, 1), conv_node(20, 5, 6, 2, 4, 1), conv_node(21, 4, 9, 3, 7, 1, 2),
             conv_node(22, 6, 7, 2, 3, 2), conv_node(13, 7, 9, 2, 4, 3, 2, (1, 1, 1, 1)),
             conv_node(15, 6, 6, 3, 5, 5, 1, (0, 0, 0, 0), rounding="single"), fc_node(16),
             conv_node(23, 9, 3, 1, 2, 1),
             # One-beat tiles: under back-pressure the array's output FIFO fills, and the engine must hold each
             # last beat at issue until the array has room (with the room check removed this layer loses beats
             # and never finishes).
             conv_node(24, 8, 8, 1, 1, 1)]
    jobs = [node_job(config, node, x[0]) for node, x in cases]
    depths = [f["kernel_h"] * f["kernel_w"] * f["in_c"] for f, _ in jobs]
    assert min(depths) < walker_tile_beats(config) < max(depths)
    results = tb.run_rtl_layers(config, jobs, seed=7)
    for i, ((node, x), (fields, _), (got, cycles)) in enumerate(zip(cases, jobs, results)):
        np.testing.assert_array_equal(got, golden_out(node, x).reshape(got.shape), err_msg=f"ecp5 layer {i}")
        want = conv_cycles(config, fields)
        assert cycles == want, f"ecp5 layer {i}: RTL {cycles}, model {want}"
    # Under back-pressure tiles of few beats reach the output closer together than the input side issued them;
    # the output cursor's walker holds the array until it is ready (it moved half-walked before, 2b6fc5f).
    results = tb.run_rtl_layers(config, jobs, seed=3, stall=[0.6] * len(jobs))
    for i, ((node, x), (got, _)) in enumerate(zip(cases, results)):
        np.testing.assert_array_equal(got, golden_out(node, x).reshape(got.shape), err_msg=f"ecp5 stalled {i}")


def test_verilator_ecp5_bound_copies():
    """With more columns than BOUND_GROUP the ECP5 engine's columns compare with copies of the tap bounds (a
    partial last group here): padded, strided and row-spanning layers stay bit-exact and cycle-exact."""
    from cnnacc.hw.conv_engine import BOUND_GROUP
    config = replace(SMALL, target="ecp5", cols=BOUND_GROUP + 2)
    cases = [conv_node(13, 7, 9, 2, 4, 3, 2, (1, 1, 1, 1)), conv_node(31, 9, 11, 3, 5, 3, 1, (1, 2, 2, 1)),
             conv_node(32, 10, 5, 2, 3, 5, 2, (2, 2, 2, 2)), conv_node(14, 3, 5, 1, 5, 1)]
    jobs = [node_job(config, node, x[0]) for node, x in cases]
    results = tb.run_rtl_layers(config, jobs, seed=9)
    for i, ((node, x), (fields, _), (got, cycles)) in enumerate(zip(cases, jobs, results)):
        np.testing.assert_array_equal(got, golden_out(node, x).reshape(got.shape), err_msg=f"layer {i}")
        assert cycles == conv_cycles(config, fields), f"layer {i}: RTL {cycles}, model {conv_cycles(config, fields)}"


@pytest.mark.parametrize("target", ["ice40", "ecp5"])
def test_walker_targets_need_three_columns(target):
    import gc
    import warnings
    from amaranth.hdl import UnusedElaboratable
    from cnnacc.hw.conv_engine import ConvEngine
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match=rf"^target '{target}' needs cols >= 3 \(the tile cursor's walker\), "
                                             r"not 2$"):
            ConvEngine(AcceleratorConfig(rows=2, cols=2, target=target))
        ConvEngine(AcceleratorConfig(rows=2, cols=2))       # the generic cursors have no walker
        gc.collect()
