"""The compiler: fusion, tiles that cover every output once and fit every memory, loop order, traffic, memory
plan, saved programs, and one-line errors naming the node and the limit."""

from dataclasses import replace

import numpy as np
import pytest

from cnnacc.config import DEFAULT_CONFIG
from cnnacc.host import graph as g
from cnnacc.host.compiler import compile_graph, tile_descriptors
from cnnacc.host.cycles_conv import conv_cycles
from cnnacc.hw.conv_engine import conv_layer
from cnnacc.host.models import lenet5, mobilenet_v1_digits
from cnnacc.host.program import Program, ProgramError, Tile, tile_bands

#: Memories small enough that LeNet-5 and the digits MobileNet need row bands and channel blocks.
TINY = replace(DEFAULT_CONFIG, conv_act_depth=256, conv_weight_depth=512, conv_param_depth=2, vector_depth=128)


@pytest.fixture(scope="module")
def graphs():
    return {"lenet5": lenet5(), "mobilenet_v1_digits": mobilenet_v1_digits()}


def _shape3(shape):
    return tuple(shape) if len(shape) == 3 else (1, 1, int(np.prod(shape)))


def _check_cover(program):
    """Each output element of each step is written by exactly one tile, and every tile fits its memories."""
    from cnnacc.host.compiler import _StepPlan
    for step in program.steps:
        h, _, c = _shape3(program.graph.spec(step.output).shape)
        seen = np.zeros((h, c), np.int64)
        plan = _StepPlan(program.config, program.graph, step.nodes)
        for tile in step.tiles:
            seen[tile.y0:tile.y1, tile.c0:tile.c1] += 1
            assert plan.overflow(tile) is None, (step.name, tile, plan.overflow(tile))
            assert tile.cycles > 0
        assert (seen == 1).all(), step.name


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("name", ["lenet5", "mobilenet_v1_digits"])
def test_tiles_cover_outputs_and_fit(graphs, name, config):
    program = compile_graph(graphs[name], config)
    _check_cover(program)
    for step in program.steps:
        assert step.traffic["bytes_in"] >= step.traffic["min_in"] > 0
        assert step.traffic["bytes_out"] == step.traffic["min_out"]


def test_tiny_memories_split_rows_and_channels(graphs):
    program = compile_graph(graphs["mobilenet_v1_digits"], TINY)
    bands = {s.name: len({(t.y0, t.y1) for t in s.tiles}) for s in program.steps}
    blocks = {s.name: len({(t.c0, t.c1) for t in s.tiles}) for s in program.steps}
    assert bands["conv1"] > 1 and bands["dw1"] > 1 and bands["pw1"] > 1
    assert blocks["pw6"] > 1 and blocks["dw2"] > 1
    # A band in the middle of a map carries the halo and no padding; the first keeps the layer's own padding.
    dw1 = program.step("dw1")
    first, middle = dw1.tiles[0], dw1.tiles[1]
    assert tile_bands(dw1, first, program.graph)[0] == (0, first.y1 + 1, 1, 0)
    assert tile_bands(dw1, middle, program.graph)[0] == (middle.y0 - 1, middle.y1 + 1, 0, 0)
    # Halo rows are read twice: more bytes than the minimum.
    assert dw1.traffic["bytes_in"] > dw1.traffic["min_in"]


def test_fusion_conv_pool(graphs):
    program = compile_graph(graphs["lenet5"], DEFAULT_CONFIG)
    assert [s.name for s in program.steps] == ["c1+s2", "c3+s4", "c5", "f6", "output"]
    assert [len(s.nodes) for s in program.steps] == [2, 2, 1, 1, 1]
    # The unpooled map never reaches memory.
    tensors = program.report["memory"]["tensors"]
    assert graphs["lenet5"].nodes[0].output.name not in tensors
    # Not fused when the engines move different channel counts per beat.
    unfused = compile_graph(graphs["lenet5"], replace(DEFAULT_CONFIG, lanes=16))
    assert [s.name for s in unfused.steps][:2] == ["c1", "s2"]


def test_single_tile_cycles_are_the_engine_model_plus_the_run(graphs):
    graph = graphs["lenet5"]
    program = compile_graph(graph, DEFAULT_CONFIG)
    node = graph.nodes[4]                              # c5: 5x5x16 -> 120, one tile
    step = program.step("c5")
    fields = conv_layer(DEFAULT_CONFIG, (5, 5, 16), node.weights.shape, in_zp=node.input_spec.zero_point,
                        out_zp=node.requant.zero_point, qmin=node.requant.qmin, qmax=node.requant.qmax)
    assert len(step.tiles) == 1 and step.cycles == conv_cycles(DEFAULT_CONFIG, fields) + 1   # + the RUN's writer
    assert tile_descriptors(DEFAULT_CONFIG, graph, step, step.tiles[0])[0] == fields


def test_loop_order_is_the_cheaper(graphs):
    """With several bands and blocks, the order chosen moves fewer bytes than the other one would."""
    from cnnacc.host.compiler import _StepPlan, _tiles
    program = compile_graph(graphs["mobilenet_v1_digits"], replace(TINY, conv_param_depth=1))
    checked = 0
    for step in program.steps:
        if step.kind != "conv":
            continue
        bands = len({(t.y0, t.y1) for t in step.tiles})
        blocks = sorted({(t.c0, t.c1) for t in step.tiles})
        if bands == 1 or len(blocks) == 1:
            continue
        plan = _StepPlan(program.config, program.graph, step.nodes)
        rows = step.tiles[0].y1 - step.tiles[0].y0
        other = "rows_outer" if step.loop_order == "channels_outer" else "channels_outer"
        alt = plan.traffic(_tiles(plan.out_h, plan.channels, rows, blocks[0][1] - blocks[0][0], other), other)
        assert step.traffic["bytes_in"] <= alt["bytes_in"]
        first = step.tiles[0], step.tiles[1]
        if step.loop_order == "channels_outer":
            assert (first[0].c0, first[1].c0) == (0, 0)
        else:
            assert (first[0].y0, first[1].y0) == (0, 0)
        checked += 1
    assert checked >= 1


def test_memory_plan_never_overlaps_live_tensors(graphs):
    program = compile_graph(graphs["mobilenet_v1_digits"], DEFAULT_CONFIG)
    tensors = program.report["memory"]["tensors"]
    graph = program.graph
    born = {graph.input.name: -1} | {s.output: i for i, s in enumerate(program.steps)}
    last = {graph.output: len(program.steps)}
    for i, step in enumerate(program.steps):
        for name in step.inputs:
            last[name] = max(last.get(name, -1), i)
    assert set(tensors) == set(born)
    for i in range(len(program.steps)):
        live = [n for n in born if born[n] <= i <= last.get(n, born[n]) or born[n] == i]
        spans = sorted((tensors[n][0], tensors[n][0] + tensors[n][1]) for n in live)
        for (_, a1), (b0, _) in zip(spans, spans[1:]):
            assert a1 <= b0, (program.steps[i].name, spans)
    assert program.report["memory"]["arena_bytes"] < sum(size for _, size in tensors.values())


def test_save_and_load(tmp_path, graphs):
    program = compile_graph(graphs["lenet5"], TINY, "lenet5")
    path = tmp_path / "p.json"
    program.save(path)
    loaded = Program.load(path)
    assert loaded.config == TINY and loaded.config_id == program.config_id
    assert [(s.name, s.tiles, s.loop_order) for s in loaded.steps] == \
           [(s.name, s.tiles, s.loop_order) for s in program.steps]
    with pytest.raises(ProgramError, match="runs node 'c1', which model") as info:
        Program.load(path, graph=graphs["mobilenet_v1_digits"])
    assert "\n" not in str(info.value)
    path.write_text("{not json")
    with pytest.raises(ProgramError, match="not a cnnacc program"):
        Program.load(path)


def _one_line(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_error_width(graphs):
    with pytest.raises(ProgramError) as info:
        compile_graph(graphs["lenet5"], replace(DEFAULT_CONFIG, max_width=16))
    _one_line(info, "'c1'", "max_width 16")


def test_error_kernel(graphs):
    with pytest.raises(ProgramError) as info:
        compile_graph(graphs["lenet5"], replace(DEFAULT_CONFIG, max_kernel=3))
    _one_line(info, "'c1'", "kernel 5x5", "1..3")


def test_error_depthwise_kernel():
    spec = g.TensorSpec("x", (8, 8, 8), 0.05, 0)
    out = g.TensorSpec("y", (8, 8, 8), 0.05, 0)
    node = g.DepthwiseConv2D("dw5x5", ("x",), out, weights=np.ones((1, 5, 5, 8), np.int8), weight_scales=0.01,
                             input_spec=spec, padding=(2, 2, 2, 2))
    with pytest.raises(ProgramError) as info:
        compile_graph(g.Graph(spec, [node], "y"), DEFAULT_CONFIG)
    _one_line(info, "'dw5x5'", "5x5", "3x3")


def test_error_no_row_fits(graphs):
    with pytest.raises(ProgramError) as info:
        compile_graph(graphs["mobilenet_v1_digits"], replace(TINY, conv_act_depth=64))
    _one_line(info, "'pw7'", "one output row", "conv_act_depth", "64")
    with pytest.raises(ProgramError) as info:
        compile_graph(graphs["mobilenet_v1_digits"], replace(TINY, vector_depth=16))
    _one_line(info, "vector_depth", "16")


def test_error_weights_do_not_fit(graphs):
    with pytest.raises(ProgramError) as info:
        compile_graph(graphs["lenet5"], replace(DEFAULT_CONFIG, conv_weight_depth=256))
    _one_line(info, "'c5'", "400 weight words", "conv_weight_depth is 256")


def test_error_unsupported_layer(graphs):
    graph = graphs["lenet5"]

    class Softmax(g._Node):
        kind = "softmax"

    odd = g.Graph(graph.input, graph.nodes + [Softmax("prob", (graph.output,), g.TensorSpec("p", (10,), 1 / 256,
                                                                                            -128))], "p")
    with pytest.raises(ProgramError) as info:
        compile_graph(odd, DEFAULT_CONFIG)
    _one_line(info, "'prob'", "no engine runs 'softmax'")


def test_error_float_rounding_is_not_hardware():
    graph = lenet5(rounding="float32")
    with pytest.raises(ProgramError) as info:
        compile_graph(graph, DEFAULT_CONFIG)
    _one_line(info, "'c1'", "rounding")


def test_tile_type_is_plain():
    assert Tile(0, 1, 0, 8) == Tile(0, 1, 0, 8, 0)


def test_maps_fit_half_their_memories_when_they_can(graphs):
    # Double buffering: every tile's input and output map fits half of its memory (so the driver can load the
    # next tile into the other half), on the standard configuration.
    from cnnacc.host.compiler import _StepPlan
    for graph in graphs.values():
        program = compile_graph(graph, DEFAULT_CONFIG)
        for step in program.steps:
            plan = _StepPlan(DEFAULT_CONFIG, program.graph, step.nodes)
            plan.share = 2
            assert all(plan.overflow(t) is None for t in step.tiles), step.name


def test_half_memories_fall_back_to_whole_ones(graphs):
    # One output row of c1+s2 (a 14-pixel pooled row from 32x32 input rows) needs more than half of a 16-row
    # output map but fits the whole: the compiler takes the whole memory rather than refusing.
    config = replace(DEFAULT_CONFIG, vector_depth=16)
    program = compile_graph(graphs["lenet5"], config)
    _check_cover(program)
    assert all(t.y1 - t.y0 == 1 for t in program.steps[0].tiles)


@pytest.mark.parametrize("engines, node, engine", [
    (("conv", "pool"), "dw1", "depthwise"),
    (("conv",), "s2", "pool"),
])
def test_error_missing_engine(graphs, engines, node, engine):
    config = replace(DEFAULT_CONFIG, engines=engines)
    name = "mobilenet_v1_digits" if engine == "depthwise" else "lenet5"
    graph = graphs[name]
    kinds = {"depthwise": "depthwise", "pool": "(max|average) pooling"}[engine]
    with pytest.raises(ProgramError, match=rf"^node '{node}': {kinds} layers need the '{engine}' engine, which this "
                                           rf"configuration \(engines={','.join(engines)}\) does not have$"):
        compile_graph(graph, config)


def test_standalone_pool_refused_without_the_pool_engine(graphs):
    # The digits MobileNet ends with a global average pool that no conv feeds alone: a pool step of its own.
    config = replace(DEFAULT_CONFIG, engines=("conv", "depthwise"))
    graph = graphs["mobilenet_v1_digits"]
    pool = next(n for n in graph.nodes if n.kind == "avg_pool2d")
    with pytest.raises(ProgramError, match=rf"^node '{pool.name}': average pooling layers need the 'pool' engine"):
        compile_graph(graph, config)


def test_ice40_refuses_single_rounding_with_a_left_shift(graphs):
    """The iCE40's serial requantizer has no single rounding with a left shift: the compiler refuses such a layer
    for that target (naming node and channel) instead of letting the board compute other numbers."""
    import copy
    graph = copy.deepcopy(graphs["lenet5"])
    node = next(n for n in graph.nodes if n.kind == "conv2d")
    shift = np.array(np.broadcast_to(node.requant.shift, (node.weights.shape[0],)), np.int64)
    shift[2] = 1
    node.requant = replace(node.requant, mode="single", shift=shift)
    compile_graph(graph, DEFAULT_CONFIG)                      # the generic requantizer takes it
    with pytest.raises(ProgramError, match=rf"^layer '{node.name}': single rounding with a positive shift "
                                           rf"\(channel 2\) is not supported by the ice40 requantizer"):
        compile_graph(graph, replace(DEFAULT_CONFIG, target="ice40"))
    node.requant = replace(node.requant, mode="double")
    compile_graph(graph, replace(DEFAULT_CONFIG, target="ice40"))


def test_narrow_accumulators_refuse_a_layer_that_could_wrap(graphs):
    """With accumulators narrower than int32 a layer runs only if no input can take a sum past them: LeNet-5's
    c5 (400 terms) fits 24 bits, not 22; the refusal names the node, the channel and the width it needs."""
    import copy
    graph = graphs["lenet5"]
    c5 = next(n for n in graph.nodes if n.name == "c5")
    sums = np.abs(c5.weights.reshape(c5.weights.shape[0], -1).astype(np.int64)).sum(axis=1)
    need = (128 * int(sums.max())).bit_length() + 1
    assert need <= 24
    compile_graph(graph, replace(DEFAULT_CONFIG, acc_width=24))
    with pytest.raises(ProgramError, match=rf"^node 'c5': output channel {int(sums.argmax())} can accumulate up to "
                                           rf"[\d,]+ \(128 x sum \|w\|\), beyond the {need - 1}-bit accumulators "
                                           rf"of this configuration; it needs acc_width >= {need}$"):
        compile_graph(graph, replace(DEFAULT_CONFIG, acc_width=need - 1))
    # A single weight pushed up in one channel of an earlier layer is caught there.
    graph = copy.deepcopy(graph)
    c1 = next(n for n in graph.nodes if n.name == "c1")
    c1.weights[3] = 127
    with pytest.raises(ProgramError, match=r"^node 'c1': output channel 3 can accumulate up to 406,400 "):
        compile_graph(graph, replace(DEFAULT_CONFIG, acc_width=19))


def test_pool_kernel_limits_windows_and_whole_map_averages_go_global():
    """``pool_kernel`` (the ULX3S builds its pool engine for 3x3 windows): a larger window is refused in one line
    naming the layer, and a whole-map average larger than the windows runs on the global divider."""
    from cnnacc.hw.pool_engine import PoolMode, pool_max_kernel
    config = replace(DEFAULT_CONFIG, max_kernel=5, pool_kernel=3)
    assert pool_max_kernel(config) == 3 and pool_max_kernel(replace(config, pool_kernel=0)) == 5
    x = g.TensorSpec("x", (8, 8, 8), 0.05, 0)

    def graph(node):
        return g.Graph(x, [node], node.output.name)

    big = g.MaxPool2D(name="p4", inputs=("x",), output=g.TensorSpec("y", (2, 2, 8), 0.05, 0), kernel=(4, 4),
                      stride=(4, 4))
    with pytest.raises(ProgramError) as info:
        compile_graph(graph(big), config)
    _one_line(info, "p4:", "4x4", "3x3", "pool_kernel=3")
    compile_graph(graph(big), replace(config, pool_kernel=0))        # the same layer fits 5x5 windows
    for side, mode in ((5, PoolMode.GLOBAL_AVG), (3, PoolMode.AVG)):
        x5 = g.TensorSpec("x", (side, side, 8), 0.05, 0)
        avg = g.AvgPool2D(name="gap", inputs=("x",), output=g.TensorSpec("y", (1, 1, 8), 0.05, 0),
                          kernel=(side, side), stride=(side, side))
        program = compile_graph(g.Graph(x5, [avg], "y"), config)
        step = program.steps[0]
        assert tile_descriptors(config, program.graph, step, step.tiles[0])[0]["mode"] == mode, side


@pytest.mark.parametrize("value", [-1, 6, True])
def test_pool_kernel_is_checked(value):
    with pytest.raises(ValueError, match=r"^pool_kernel must be an integer from 0 to max_kernel \(5\)"):
        replace(DEFAULT_CONFIG, max_kernel=5, pool_kernel=value)


def test_config_id_ignores_later_fields_at_their_default():
    """A field added to AcceleratorConfig later (pool_kernel) leaves the fingerprint of a configuration that does
    not set it as it was (the iCEBreaker's since session 9: its bitstream and saved programs stay valid), and
    changes it when set."""
    from cnnacc.boards.configs import ICEBREAKER_CONFIG
    from cnnacc.hw.commands import config_id
    assert config_id(ICEBREAKER_CONFIG) == 0x12D8AB14
    assert config_id(replace(ICEBREAKER_CONFIG, pool_kernel=2)) != config_id(ICEBREAKER_CONFIG)
