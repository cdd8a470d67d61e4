"""The whole accelerator in RTL (cocotb + Verilator) against the golden model, bit for bit.

Every test here runs the Verilog of :class:`cnnacc.hw.accelerator.Accelerator` through the RTL backend (one
simulation per test, the build cached by the runner: the first build takes several minutes, later runs start at
once), with the pipelined driver (tile n+1 loads and tile n-1 is read while tile n runs). The MobileNet v1 224 layers run on a few of their tiles, chosen to cover the map's top and bottom
padding, middle channel blocks and the last, partial one: a whole 224 layer is hundreds of thousands of cycles
(tens of seconds each in Verilator), which is what ``make bench`` is for.
"""

import dataclasses

import numpy as np
import pytest
from amaranth.lib import data

from cnnacc.config import DEFAULT_CONFIG, AcceleratorConfig
from cnnacc.host import golden, models, protocol, quantizer
from cnnacc.host.compiler import compile_graph
from cnnacc.host.data import load_digits
from cnnacc.host.graph import Graph
from cnnacc.host.program import ProgramError, Tile
from cnnacc.host.rtl_backend import RtlBackend
from cnnacc.host.driver import from_planes, to_planes
from cnnacc.hw.accelerator import WATCHDOG_CYCLES, descriptor_words, max_descriptor_words, run_layouts
from cnnacc.hw.commands import Opcode, RunState, Status

SEED = 0
#: Close to the iCEBreaker instance: a 4x4 array with 24-bit accumulators, 4 lanes, only the conv and pool
#: engines, small memories (the activation memories hold two of LeNet-5's tiles; c5's and f6's weights take
#: several channel tiles).
SMALL = AcceleratorConfig(rows=4, cols=4, lanes=4, engines=("conv", "pool"), max_width=32, conv_act_depth=512,
                          conv_weight_depth=2048, conv_param_depth=64, vector_depth=1024, acc_width=24)


def _digits(n):
    x = load_digits("test", "int8")
    x = x[0] if isinstance(x, tuple) else x
    return np.asarray(x[:n])


def _check_lenet5(config, count):
    graph = models.lenet5()
    program = compile_graph(graph, config)
    images = _digits(count)
    backend = RtlBackend()
    out, stats = backend.run(program, images)
    ref = golden.run_graph(graph, images)
    assert out.dtype == np.int8 and out.shape == ref.shape
    bad = np.argwhere(out != ref)
    assert bad.size == 0, f"LeNet-5 differs from golden at (image, class) {bad[:5].tolist()}"
    # Cycles are the command processor's count of each run: the same for every image, and the model's exactly.
    assert len(stats) == count
    for step in program.steps:
        measured = {s[step.name]["cycles"] for s in stats}
        assert measured == {step.cycles}, (step.name, measured, step.cycles)
    # Transfers overlap runs: the bus-inclusive cycles of the batch are fewer than its runs and its words one
    # after the other.
    words = sum(s[n]["words_in"] + s[n]["words_out"] for s in stats for n in s)
    runs = count * sum(step.cycles for step in program.steps)
    bus = sum(backend.last_bus_cycles.values())
    assert runs < bus < runs + words, (runs, words, bus)
    return program


def test_lenet5_20_digits_bit_exact():
    _check_lenet5(DEFAULT_CONFIG, 20)


def test_lenet5_on_a_small_conv_and_pool_only_instance():
    program = _check_lenet5(SMALL, 4)
    assert max(len(step.tiles) for step in program.steps) > 1


def _in_flight(config):
    answers = RtlBackend().probe_in_flight(config)
    pixels = answers["pixels"]
    lanes = config.lanes

    def status(name):
        return Status(answers[name][0] & 0xFF)
    assert protocol.decode_response(answers["start_starved"], Opcode.START) == []
    assert protocol.run_state(answers["status_running"]) is RunState.RUNNING
    # Inside what the run owns (its input rows, its output rows; any write into OUTPUT): refused, one word.
    for name in ("write_owned", "read_owned", "write_output", "read_output_owned", "start_busy", "run_busy"):
        assert status(name) is Status.BUSY and len(answers[name]) == 1, (name, answers[name])
    # Beside it: served while the run goes on.
    assert protocol.decode_response(answers["write_far"], Opcode.WRITE) == []
    assert protocol.decode_response(answers["read_far"], Opcode.READ, lanes // 4) == list(range(1, lanes // 4 + 1))
    assert protocol.decode_response(answers["read_unowned_row"], Opcode.READ, lanes // 4) == pixels[
        8 * lanes // 4:9 * lanes // 4]
    assert protocol.decode_response(answers["read_output_far"], Opcode.READ, 1) is not None
    assert protocol.decode_response(answers["write_conv_act"], Opcode.WRITE) == []
    # The starved run ends by the watchdog, reported to WAIT; a second WAIT has nothing to wait for.
    assert status("wait_starved") is Status.BAD_DESCRIPTOR and answers["wait_starved"][1] >= WATCHDOG_CYCLES
    assert status("wait_idle") is Status.IDLE
    # The refused write changed nothing, and the same run with all its input copies it to OUTPUT.
    assert protocol.decode_response(answers["read_input"], Opcode.READ, len(pixels)) == pixels
    assert protocol.decode_response(answers["start_good"], Opcode.START) == []
    assert protocol.decode_response(answers["wait_good"], Opcode.WAIT, 1)[0] < 100
    assert protocol.decode_response(answers["read_output"], Opcode.READ, len(pixels)) == pixels
    assert status("start_unknown") is Status.BAD_DESCRIPTOR and status("wait_after_reject") is Status.IDLE
    return answers, status


def _depthwise_run_served(answers):
    # A configuration with the depthwise engine starts its run and reports it to WAIT.
    assert protocol.decode_response(answers["start_depthwise"], Opcode.START) == []
    assert protocol.decode_response(answers["wait_depthwise"], Opcode.WAIT, 1)[0] > 0


def test_commands_while_a_run_is_in_flight():
    answers, status = _in_flight(DEFAULT_CONFIG)
    _depthwise_run_served(answers)
    assert protocol.decode_response(answers["write_dw_weights"], Opcode.WRITE) == []
    assert protocol.decode_response(answers["write_act_b"], Opcode.WRITE) == []


def test_missing_engines_and_their_memories_are_not_there():
    answers, status = _in_flight(SMALL)
    assert status("start_depthwise") is Status.BAD_DESCRIPTOR and status("wait_depthwise") is Status.IDLE
    assert status("write_dw_weights") is Status.BAD_ADDRESS and status("write_act_b") is Status.BAD_ADDRESS


def test_lenet5_fused_conv_pool_in_row_bands_and_channel_tiles():
    # Hand-made tiles: the fused conv + pool steps cut in uneven row bands (each band's conv computes exactly the
    # rows its pool windows need) and channel tiles, with tiles in both loop orders.
    graph = models.lenet5()
    program = compile_graph(graph, DEFAULT_CONFIG)
    tiles = {"c1+s2": [(0, 5, 0, 6), (5, 14, 0, 6)],
             "c3+s4": [(0, 2, 0, 8), (0, 2, 8, 16), (2, 5, 8, 16), (2, 5, 0, 8)],
             "c5": [(0, 1, 0, 64), (0, 1, 64, 120)]}
    steps = [dataclasses.replace(step, tiles=tuple(Tile(*t) for t in tiles[step.name])) if step.name in tiles
             else step for step in program.steps]
    assert [s.kind for s in steps[:2]] == ["conv", "conv"] and len(steps[0].nodes) == 2
    program = dataclasses.replace(program, steps=steps)
    images = _digits(2)
    out, _ = RtlBackend().run(program, images)
    assert (out == golden.run_graph(graph, images)).all()


def test_mobilenet_v1_digits_whole_bit_exact():
    graph = models.mobilenet_v1_digits()
    program = compile_graph(graph, DEFAULT_CONFIG)
    images = _digits(2)
    out, _ = RtlBackend().run(program, images)
    ref = golden.run_graph(graph, images)
    assert (out == ref).all(), f"MobileNet v1 (digits) differs from golden on {int((out != ref).sum())} outputs"


@pytest.fixture(scope="module")
def mobilenet224():
    rng = np.random.default_rng(SEED)
    calibration = rng.uniform(-1, 1, size=(2, 224, 224, 3)).astype(np.float32)
    return quantizer.quantize(models.mobilenet_v1(), calibration), rng


# (node, tiles to run: None = every tile the compiler makes, else hand-picked (y0, y1, c0, c1))
LAYERS_224 = [
    ("conv1", [(100, 112, 24, 32)]),                      # 3x3 stride 2: a bottom band (its padding row)
    ("pw13", [(0, 7, 504, 512)]),                         # pointwise 1024 -> 1024, a middle block
    ("dw13", [(0, 7, 0, 64), (0, 7, 960, 1024)]),         # depthwise stride 1: first and last channels
    ("dw12", None),                                       # depthwise stride 2, whole (two channel tiles)
    ("pool", None),                                       # 7x7 global average, whole
    ("fc", [(0, 1, 0, 8), (0, 1, 992, 1000)]),           # fully connected: first and last channel block
]


@pytest.mark.parametrize("name, tiles", LAYERS_224, ids=[name for name, _ in LAYERS_224])
def test_mobilenet_v1_224_layer_bit_exact(mobilenet224, name, tiles):
    graph, rng = mobilenet224
    node = next(n for n in graph.nodes if n.name == name)
    single = Graph(input=graph.spec(node.inputs[0]), nodes=[node], output=node.output.name, name=name)
    program = compile_graph(single, DEFAULT_CONFIG)
    if tiles is not None:
        step = dataclasses.replace(program.steps[0], tiles=tuple(Tile(*t) for t in tiles))
        program = dataclasses.replace(program, steps=[step])
    x = rng.integers(-128, 128, size=(1,) + tuple(single.input.shape), dtype=np.int8)
    out, stats = RtlBackend().run(program, x)
    ref = golden.run_graph(single, x)
    out = out.reshape((1,) + tuple(np.atleast_1d(ref.shape[1:])) if ref.ndim == 2 else ref.shape)
    for tile in program.steps[0].tiles:
        if ref.ndim == 2:
            got, want = out[:, tile.c0:tile.c1], ref[:, tile.c0:tile.c1]
        else:
            got = out[:, tile.y0:tile.y1, :, tile.c0:tile.c1]
            want = ref[:, tile.y0:tile.y1, :, tile.c0:tile.c1]
        bad = np.argwhere(got != want)
        assert bad.size == 0, f"{name} tile {tile}: {len(bad)} outputs differ, first at {bad[0].tolist()}"
    assert stats[0][program.steps[0].name]["cycles"] > 0


def test_host_layouts_round_trip():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, size=(5, 7, 19), dtype=np.int8)
    rows = to_planes(x, DEFAULT_CONFIG.lanes)
    assert rows.shape == (3 * 5 * 7, DEFAULT_CONFIG.lanes)
    assert (rows[5 * 7 + 3, :] == x[0, 3, 8:16]).all()          # plane 1 (channels 8..15), pixel 3
    assert (from_planes(rows, 5, 7, 19, DEFAULT_CONFIG.lanes) == x).all()
    for engine, layout in run_layouts(DEFAULT_CONFIG).items():
        words = descriptor_words(DEFAULT_CONFIG, engine, {})
        assert words[0] == engine.value and len(words) <= max_descriptor_words(DEFAULT_CONFIG)


def test_program_for_another_config_is_refused():
    # The accelerator (DEFAULT_CONFIG) answers STATUS with its config id; the driver compares it with the
    # program's before sending anything else.
    graph = models.lenet5()
    program = compile_graph(graph, dataclasses.replace(DEFAULT_CONFIG, vector_depth=4096))
    with pytest.raises(ProgramError, match="program built for a different configuration"):
        RtlBackend(DEFAULT_CONFIG).run(program, _digits(1))


def test_bad_descriptors_answered_and_accelerator_keeps_working():
    answers = RtlBackend().probe_bad_engine(DEFAULT_CONFIG)
    unknown, zero_conv, nop, write, starved, good, read, pixels = answers
    for what, answer in (("unknown engine id", unknown), ("all-zero conv descriptor", zero_conv),
                         ("starved pool", starved)):
        with pytest.raises(protocol.AcceleratorError, match=Status.BAD_DESCRIPTOR.name):
            protocol.decode_response(answer, Opcode.RUN, 1)
    assert protocol.decode_response(nop, Opcode.NOP) == []
    assert protocol.decode_response(write, Opcode.WRITE) == []
    # The starved run was aborted by the watchdog, after that many cycles without a row moving.
    assert starved[1] >= WATCHDOG_CYCLES
    assert protocol.decode_response(good, Opcode.RUN, 1)[0] < 100
    assert protocol.decode_response(read, Opcode.READ, len(pixels)) == pixels


def test_conv_checks_see_the_bits_the_engine_does_not_keep():
    """The command processor keeps only conv_layer_bits of a conv layer's checked fields (the rest as one flag):
    a bit set anywhere above them is still refused, and values at the limits are still accepted. Amaranth
    simulator on a small conv + pool instance; RUN is refused at once, so no run has to finish."""
    from amaranth.sim import Simulator

    from cnnacc.hw.accelerator import Accelerator, conv_layer_bits
    from cnnacc.hw.commands import EngineId
    from cnnacc.hw.conv_engine import ConvLayer, conv_layer, conv_limits
    from cnnacc.hw.pool_engine import PoolMode, pool_layer
    from cnnacc.sim.amaranth_streams import stream_get, stream_put

    cfg = AcceleratorConfig(rows=4, cols=4, lanes=4, max_kernel=3, max_width=8, conv_act_depth=64,
                            conv_weight_depth=64, conv_param_depth=16, vector_depth=64, engines=("conv", "pool"))
    lim = conv_limits(cfg)
    layer = conv_layer(cfg, (4, 4, 4), (4, 3, 3, 4))
    widths = {name: field.shape.width for name, field in data.Layout.cast(ConvLayer)}
    kept = conv_layer_bits(cfg)

    def conv(**fields):
        return descriptor_words(cfg, EngineId.CONV, {"layer": {**layer, **fields}, "out_count": 1})

    refused = []
    for name in ("in_w", "in_c", "out_w", "out_c", "kernel_h", "kernel_w", "pad_top", "pad_left",
                 "act_channel_stride", "act_base", "weight_base", "param_base"):
        assert kept[name] < widths[name], name
        for bit in (kept[name], widths[name] - 1):
            refused.append((name, bit, conv(**{name: layer[name] | (1 << bit)})))
    good_pool = {**pool_layer(cfg, PoolMode.MAX, height=2, width=2, kernel=2, stride=2), "mode": PoolMode.MAX}
    refused.append(("pool kernel", 0, descriptor_words(cfg, EngineId.POOL, {
        "layer": {**good_pool, "window": {**good_pool["window"], "kernel": 0}}, "in_count": 4, "out_count": 1})))
    # Every limit at once, and a fused pool: accepted (the run then starts and is left running).
    edge = descriptor_words(cfg, EngineId.CONV, {"layer": {
        **layer, "in_w": lim.in_w, "in_c": lim.in_c, "out_w": lim.out_w, "out_c": lim.out_c, "kernel_h": lim.kernel,
        "kernel_w": lim.kernel, "pad_top": lim.kernel - 1, "pad_left": lim.kernel - 1,
        "act_channel_stride": lim.act_depth, "act_base": lim.act_depth - 1, "weight_base": lim.weight_depth - 1,
        "param_base": lim.param_depth - 1}, "pool": good_pool, "fuse": 1, "out_count": 1})
    commands = [protocol.encode_run(words) for _, _, words in refused]
    commands += [protocol.encode_start(edge), protocol.encode_status()]

    dut = Accelerator(cfg)
    answers = []

    async def host(ctx):
        for words in commands:
            for i, w in enumerate(words):
                await stream_put(ctx, dut.i_host, {"data": w, "last": i == len(words) - 1})
            answer = []
            while True:
                beat = await stream_get(ctx, dut.o_host)
                answer.append(int(beat.data))
                if beat.last:
                    break
            answers.append(answer)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(host)
    sim.run_until(1e-8 * 60 * len(commands))
    assert len(answers) == len(commands)
    for (name, bit, _), answer in zip(refused, answers):
        assert Status(answer[0] & 0xFF) == Status.BAD_DESCRIPTOR, f"{name} with bit {bit} set was not refused"
    assert protocol.decode_response(answers[-2], Opcode.START) == []
    assert (answers[-1][0] >> 16) == RunState.RUNNING.value
