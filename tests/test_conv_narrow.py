"""The conv engine computes with the widths its configuration bounds (hw/conv_engine.py ``conv_limits``).

Layers at those limits (a map as tall as the banks hold, as many input channels as the memories hold, padding
that makes flat indices negative, bases at the top of the memories) against the golden model and the cycle
model in the Amaranth simulator, on a tiny instance whose addresses wrap after a few bits; and the dispatcher of
a tiny accelerator (Amaranth simulator) refusing every descriptor past the limits with BAD_DESCRIPTOR while
running the ones at them.
"""

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from cnnacc.boards.configs import ICEBREAKER_CONFIG
from cnnacc.config import DEFAULT_CONFIG, AcceleratorConfig
from cnnacc.host import golden, models, protocol
from cnnacc.host.compiler import compile_graph, tile_descriptors
from cnnacc.host.program import ProgramError
from cnnacc.host import graph as g
from cnnacc.host.cycles_conv import conv_cycles
from cnnacc.hw.accelerator import Accelerator, descriptor_words
from cnnacc.hw.commands import EngineId, Opcode, Response, Status
from cnnacc.hw.conv_engine import (ConvLayer, act_banks, check_conv_limits, conv_layer, conv_limits,
                                   engine_layer_layout, node_job)
from cnnacc.sim import tb_conv_engine as tb

#: 2 columns (4 banks) of 16 words: 64 flat pixels, so flat indices and bank addresses wrap after 6 and 4 bits.
TINY = AcceleratorConfig(rows=2, cols=2, lanes=4, max_kernel=5, max_width=16, conv_act_depth=16,
                         conv_weight_depth=32, conv_param_depth=4, vector_depth=16, engines=("conv",))


def conv_node(seed, h, w, cin, cout, k, stride=1, padding=(0, 0, 0, 0)):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    weights = rng.integers(-127, 128, size=(cout, k, k, cin), dtype=np.int8)
    oh = (h + padding[0] + padding[1] - k) // stride + 1
    ow = (w + padding[2] + padding[3] - k) // stride + 1
    node = g.Conv2D("conv", ["x"], g.TensorSpec("y", (oh, ow, cout), 0.3, -5), weights=weights,
                    bias=rng.integers(-20000, 20000, size=cout), weight_scales=rng.uniform(0.001, 0.01, cout),
                    input_spec=g.TensorSpec("x", (h, w, cin), 0.05, int(rng.integers(-128, 128))),
                    stride=(stride, stride), padding=padding)
    return node, x


def test_limits_follow_the_memories():
    ice = conv_limits(ICEBREAKER_CONFIG)
    # 8 banks x 512 words: 4,096 pixels, so the height keeps its 12 bits; 512 words bound Cin; 32 parameter
    # words of 4 channels bound Cout; 5x5 kernels widen the output by 4 at most.
    assert (ice.in_h, ice.in_w, ice.in_c, ice.out_h, ice.out_w, ice.out_c) == (4095, 32, 512, 4095, 36, 128)
    std = conv_limits(DEFAULT_CONFIG)
    assert (std.in_h, std.in_w, std.in_c, std.out_h, std.out_w, std.out_c) == (4095, 224, 4095, 4095, 230, 2048)
    tiny = conv_limits(TINY)
    assert (tiny.in_h, tiny.in_w, tiny.in_c, tiny.out_h, tiny.out_w, tiny.out_c) == (64, 16, 16, 68, 20, 8)
    full = data.Layout.cast(ConvLayer).size
    narrow = data.Layout.cast(engine_layer_layout(ICEBREAKER_CONFIG)).size
    assert narrow < full * 2 // 3, (narrow, full)
    assert Shape.cast(engine_layer_layout(TINY)["origin"].shape).width == 2 + 4       # log2(banks) + address bits


@pytest.mark.parametrize("case", [
    # A map as tall as the banks hold (64 x 1 pixels), SAME 3x3: tiles span rows, every row check at an edge.
    dict(seed=1, h=64, w=1, cin=1, cout=3, k=3, padding=(1, 1, 1, 1)),
    # 5x5 with padding 2: the first taps' flat indices are negative, modulo 64 they wrap to the top.
    dict(seed=2, h=8, w=8, cin=1, cout=2, k=5, padding=(2, 2, 2, 2)),
    # Stride 2 on the widest map with padding kernel - 1: outputs whose windows hold one input pixel or none.
    dict(seed=3, h=3, w=16, cin=1, cout=2, k=5, stride=2, padding=(4, 4, 4, 4)),
    # As many input channels as the input map and weight memories hold (16 words each), every channel block.
    dict(seed=4, h=2, w=2, cin=16, cout=4, k=1),
    # Output taller than the input (padding kernel - 1 above and below): out_h = 8 + 4; as wide as it (span).
    dict(seed=5, h=8, w=2, cin=1, cout=2, k=5, padding=(4, 4, 2, 2)),
], ids=["tall", "negative_origin", "stride2_wide", "deep", "taller_output"])
def test_layers_at_the_limits_bit_exact_and_cycle_exact(case):
    node, x = conv_node(case["seed"], case["h"], case["w"], case["cin"], case["cout"], case["k"],
                        case.get("stride", 1), case.get("padding", (0, 0, 0, 0)))
    fields, images = node_job(TINY, node, x[0])
    check_conv_limits(TINY, fields)
    act, wgt, params = images
    # Every image at the top of its memory, so that addresses run up to the last word.
    fields = dict(fields, act_base=TINY.conv_act_depth - len(act), weight_base=TINY.conv_weight_depth - len(wgt),
                  param_base=TINY.conv_param_depth - len(params))
    print(f"case {case}: bases {fields['act_base']}, {fields['weight_base']}, {fields['param_base']}")
    got, cycles = tb.run_amaranth(TINY, fields, images, seed=case["seed"])
    np.testing.assert_array_equal(got, golden.conv2d(x, node)[0], err_msg=str(case))
    assert cycles == conv_cycles(TINY, fields), (cycles, conv_cycles(TINY, fields))


def test_host_checks_name_the_layer():
    fields = conv_layer(TINY, (8, 8, 1), (2, 3, 3, 1), name="c1")
    check_conv_limits(TINY, fields, name="c1")
    for field, value, reason in (("in_h", 65, "exceeds 64"), ("in_c", 17, "exceeds 16"), ("out_c", 9, "exceeds 8"),
                                 ("act_base", 16, "outside the memory"), ("param_base", 4, "outside the memory"),
                                 ("act_channel_stride", 17, "outside the memory")):
        with pytest.raises(ValueError, match=f"layer 'c1': {field} = {value} .*{reason}"):
            check_conv_limits(TINY, dict(fields, **{field: value}), name="c1")
    with pytest.raises(ValueError, match="layer 'big': the output 4097x1"):
        conv_layer(DEFAULT_CONFIG, (4095, 1, 1), (1, 3, 3, 1), padding=(2, 2, 1, 1), name="big")


# --- the dispatcher ---------------------------------------------------------------------------------------------

#: A tiny accelerator: conv only, memories of a few rows (rows == lanes == 4: 8 banks of 16 words, 128 pixels).
ACC = AcceleratorConfig(rows=4, cols=4, lanes=4, max_kernel=3, max_width=8, conv_act_depth=16,
                        conv_weight_depth=16, conv_param_depth=2, vector_depth=256, engines=("conv",))


def _run_descriptor(layer):
    blocks = -(-layer["out_c"] // ACC.rows)
    return descriptor_words(ACC, EngineId.CONV, {
        "layer": layer, "fuse": 0, "out_base": 0, "out_count": min(layer["out_h"] * layer["out_w"] * blocks, 256),
        "act_count": 1, "weight_count": 1, "param_count": 1})


def test_dispatcher_refuses_what_the_engine_cannot_compute():
    lim = conv_limits(ACC)
    assert (lim.in_h, lim.in_w, lim.in_c, lim.out_h, lim.out_w, lim.out_c) == (128, 8, 16, 130, 10, 8)
    base = conv_layer(ACC, (2, 2, 1), (4, 1, 1, 1))
    # At the limits: started, and the run ends (on whatever the memories hold).
    accepted = [base, dict(base, in_h=128, in_w=1, out_h=128, out_w=1, act_channel_stride=16), dict(base, in_c=16),
                dict(base, out_c=8), dict(base, act_base=15, weight_base=15, param_base=1),
                dict(base, in_h=3, out_h=5, kernel_h=3, kernel_w=3, pad_top=2, pad_left=2, in_w=8, out_w=10)]
    # One field past them each: refused at once, nothing runs.
    refused = [dict(base, in_h=129), dict(base, in_w=9), dict(base, in_c=17), dict(base, out_h=131),
               dict(base, out_w=11), dict(base, out_c=9), dict(base, act_base=16), dict(base, weight_base=16),
               dict(base, param_base=2), dict(base, act_channel_stride=17), dict(base, kernel_h=4)]
    commands = [(protocol.encode_start(_run_descriptor(layer)), layer, True) for layer in accepted]
    commands += [(protocol.encode_start(_run_descriptor(layer)), layer, False) for layer in refused]
    dut = Accelerator(ACC)
    answers = []

    async def host(ctx):
        async def transact(words):
            for i, word in enumerate(words):
                ctx.set(dut.i_host.valid, 1)
                ctx.set(dut.i_host.payload, {"data": word, "last": i == len(words) - 1})
                await ctx.tick().until(dut.i_host.ready)
            ctx.set(dut.i_host.valid, 0)
            ctx.set(dut.o_host.ready, 1)
            answer = []
            while True:
                payload, = await ctx.tick().sample(dut.o_host.payload).until(dut.o_host.valid)
                answer.append(int(payload.data))
                if payload.last:
                    break
            ctx.set(dut.o_host.ready, 0)
            return answer
        for words, layer, ok in commands:
            started = await transact(words)
            waited = await transact(protocol.encode_wait()) if ok else None
            answers.append((layer, ok, started, waited))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.run_until(5e-3)
    assert len(answers) == len(commands), f"only {len(answers)} of {len(commands)} commands answered"
    for layer, ok, started, waited in answers:
        if ok:
            assert protocol.decode_response(started, Opcode.START) == [], layer
            assert protocol.decode_response(waited, Opcode.WAIT, 1)[0] > 0, layer
        else:
            status = Status(data.Layout.cast(Response).from_bits(started[0]).status)
            assert status is Status.BAD_DESCRIPTOR, (layer, status)


# --- the compiler -----------------------------------------------------------------------------------------------

def test_compiled_tiles_stay_within_the_limits():
    # A map taller than the engine's height limit (64 rows on TINY) is cut into row bands that are not: the limits
    # bound tiles, never whole layers.
    node, x = conv_node(6, 200, 1, 1, 2, 3, padding=(1, 1, 1, 1))
    graph = g.Graph(node.input_spec, [node], "y")
    program = compile_graph(graph, TINY)
    (step,) = program.steps
    assert len(step.tiles) > 1
    for tile in step.tiles:
        (fields,) = tile_descriptors(TINY, graph, step, tile)
        check_conv_limits(TINY, fields, name=node.name)
        assert fields["in_h"] <= conv_limits(TINY).in_h
    # LeNet-5 on the iCEBreaker instance: every tile within its limits (compile_graph checks each one).
    program = compile_graph(models.lenet5(), ICEBREAKER_CONFIG)
    assert sum(len(step.tiles) for step in program.steps) >= len(program.steps)


def test_compiler_names_the_layer_the_memories_cannot_hold():
    # 17 input channels need 17 words per bank; TINY's banks have 16: refused in one line naming the node.
    node, x = conv_node(7, 2, 2, 17, 2, 1)
    with pytest.raises(ProgramError) as info:
        compile_graph(g.Graph(node.input_spec, [node], "y"), TINY)
    message = str(info.value)
    assert "\n" not in message and "'conv'" in message and "conv_act_depth" in message, message
