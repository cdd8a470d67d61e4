"""Requantizer against cnnacc.host.quant.requantize, bit for bit: Amaranth simulator and cocotb + Verilator."""

import gc
import random
import warnings

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator

from cnnacc.host.quant import INT32_MAX, INT32_MIN, requantize, wrap_int32
from cnnacc.hw.requantizer import REQUANT_LATENCY, Requantizer, check_shifts, requant_interval, requant_latency
from cnnacc.sim import tb_requantizer
from cnnacc.sim.amaranth_streams import stream_get, stream_put

MODES = {"double": 0, "single": 1}


def golden(vectors, zp, qmin, qmax, mode):
    """The bias add wraps like int32 arithmetic; the rest is requantize with per-element parameters."""
    x = wrap_int32(vectors["acc"].astype(np.int64) + vectors["bias"])
    out = requantize(x.ravel(), vectors["multiplier"].ravel(), vectors["shift"].ravel(), zp, qmin, qmax, mode=mode)
    return out.reshape(x.shape).astype(np.int64)


def run_amaranth(lanes, vectors, zp, qmin, qmax, mode, *, seed, bubble=0.3, stall=0.3, target="generic"):
    dut = Requantizer(lanes, tag_width=8, target=target)
    rng = random.Random(seed)
    beats = vectors["acc"].shape[0]

    async def producer(ctx):
        ctx.set(dut.single_rounding, MODES[mode])
        ctx.set(dut.zero_point, zp)
        ctx.set(dut.qmin, qmin)
        ctx.set(dut.qmax, qmax)
        for i in range(beats):
            await stream_put(ctx, dut.i_acc, {
                "acc": vectors["acc"][i].tolist(),
                "params": [{"bias": int(vectors["bias"][i, j]), "multiplier": int(vectors["multiplier"][i, j]),
                            "shift": int(vectors["shift"][i, j])} for j in range(lanes)],
                "tag": i % 256,
            }, rng=rng, bubble_prob=bubble)

    got, tags = simulate(dut, producer, beats, rng=rng, stall=stall,
                         cycles=50 + (10 + requant_interval(target, lanes)) * beats)
    assert len(got) == beats, f"seed {seed}: {len(got)} of {beats} results came out"
    return np.array(got, np.int64), np.array(tags)


def simulate(dut, producer, beats, *, rng, stall, cycles):
    """Run ``producer`` against ``dut`` for ``cycles`` with a consumer that stalls with probability ``stall``;
    the results and tags that came out."""
    got, tags = [], []

    async def consumer(ctx):
        for _ in range(beats):
            beat = await stream_get(ctx, dut.o_data, rng=rng, stall_prob=stall)
            got.append([int(v) for v in beat.data])
            tags.append(int(beat.tag))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run_until(1e-8 * cycles)
    return got, tags


def edge_vectors(lanes):
    """Every shift from -31 to 30 against the extreme accumulators, biases and multipliers."""
    accs = [INT32_MIN, INT32_MAX, 0, -1, 1, INT32_MIN + 1, (1 << 30), -(1 << 30) - 1]
    mults = [INT32_MIN, INT32_MAX, 0, 1 << 30, (1 << 31) - 2, -(1 << 30), 1, 1518500250]
    biases = [0, INT32_MAX, INT32_MIN, -1]
    rows = []
    for shift in range(-31, 31):
        for i, a in enumerate(accs):
            rows.append((a, biases[(i + shift) % 4] if i % 2 else 0, mults[(i + shift) % len(mults)], shift))
    pad = (-len(rows)) % lanes
    rows += rows[:pad]
    arr = np.array(rows, np.int64).reshape(-1, lanes, 4)
    return {"acc": arr[..., 0], "bias": arr[..., 1], "multiplier": arr[..., 2], "shift": arr[..., 3]}


def random_vectors(rng, beats, lanes):
    def int32(size):
        return rng.integers(INT32_MIN, INT32_MAX, size=size, endpoint=True)
    small = rng.integers(-(1 << 20), 1 << 20, size=(beats, lanes))
    return {
        "acc": np.where(rng.random((beats, lanes)) < 0.5, small, int32((beats, lanes))),
        "bias": np.where(rng.random((beats, lanes)) < 0.5, small // 4, int32((beats, lanes))),
        # Real multipliers are in [2**30, 2**31); the arithmetic must hold for any int32.
        "multiplier": np.where(rng.random((beats, lanes)) < 0.6,
                               rng.integers(1 << 30, 1 << 31, size=(beats, lanes)), int32((beats, lanes))),
        "shift": rng.integers(-31, 30, size=(beats, lanes), endpoint=True),
    }


@pytest.mark.parametrize("target", ["generic", "ecp5"])
@pytest.mark.parametrize("mode", ["double", "single"])
def test_every_shift_at_the_extremes(mode, target):
    """Target "ecp5" saturates from compares of the product's 16-bit pieces: the extremes reach every one."""
    vectors = edge_vectors(4)
    got, tags = run_amaranth(4, vectors, -128, -128, 127, mode, seed=1, bubble=0.2, stall=0.4, target=target)
    np.testing.assert_array_equal(got, golden(vectors, -128, -128, 127, mode), err_msg=f"mode {mode}")
    np.testing.assert_array_equal(tags, np.arange(len(tags)) % 256)


@pytest.mark.parametrize("mode,seed,zp,qmin,qmax", [("double", 2, 127, -128, 127), ("single", 3, -5, -5, 90),
                                                    ("double", 4, 3, 3, 57)])
def test_random_values_with_clamps(mode, seed, zp, qmin, qmax):
    rng = np.random.default_rng(seed)
    vectors = random_vectors(rng, 60, 3)
    got, _ = run_amaranth(3, vectors, zp, qmin, qmax, mode, seed=seed)
    np.testing.assert_array_equal(got, golden(vectors, zp, qmin, qmax, mode), err_msg=f"seed {seed}")


@pytest.mark.parametrize("stall", [0.3, 0.8])
def test_ecp5_free_running_under_backpressure(stall):
    """Target "ecp5" runs its stages on every cycle into an output FIFO and holds the input while the FIFO could
    overflow: under light and heavy back-pressure (the FIFO fills and drains many times) every result comes out
    once, in order, bit-exact."""
    from cnnacc.hw.requantizer import requant_fifo_depth
    assert requant_fifo_depth("ecp5") > requant_latency("ecp5") and requant_fifo_depth("generic") == 0
    rng = np.random.default_rng(12)
    vectors = random_vectors(rng, 80, 2)
    got, tags = run_amaranth(2, vectors, 5, -100, 120, "double", seed=12, bubble=0.1, stall=stall, target="ecp5")
    np.testing.assert_array_equal(got, golden(vectors, 5, -100, 120, "double"), err_msg=f"stall {stall}")
    np.testing.assert_array_equal(tags, np.arange(len(tags)) % 256)


@pytest.mark.parametrize("lead", [1, 2])
@pytest.mark.parametrize("stall", [0.3, 0.8, 0.95])
def test_ecp5_admit_ahead_takes_what_was_announced(stall, lead):
    """With ``admit_ahead`` (the conv engine's use) the producer decides on ``ready`` ``lead`` cycles before its
    beat comes and then offers it whatever ``ready`` is: under back-pressure the FIFO fills and drains many times,
    and every result still comes out once, in order, bit-exact (reserving room for one beat fewer, ``admit_ahead``
    ``lead - 1``, loses a beat at the longest stalls: checked by hand for lead 2)."""
    lanes, beats, zp, qmin, qmax = 2, 120, -3, -128, 90
    vectors = random_vectors(np.random.default_rng(31), beats, lanes)
    dut = Requantizer(lanes, tag_width=8, target="ecp5", admit_ahead=lead)
    rng = random.Random(31 + lead)

    async def producer(ctx):
        ctx.set(dut.single_rounding, MODES["double"])
        ctx.set(dut.zero_point, zp)
        ctx.set(dut.qmin, qmin)
        ctx.set(dut.qmax, qmax)
        sent, decided = 0, [None] * lead
        while sent < beats or any(d is not None for d in decided):
            # Cycle t: offer the beat decided in cycle t - lead, and decide on this cycle's ``ready``.
            pending = decided.pop(0)
            ctx.set(dut.i_acc.valid, pending is not None)
            if pending is not None:
                ctx.set(dut.i_acc.payload, {
                    "acc": vectors["acc"][pending].tolist(),
                    "params": [{"bias": int(vectors["bias"][pending, j]),
                                "multiplier": int(vectors["multiplier"][pending, j]),
                                "shift": int(vectors["shift"][pending, j])} for j in range(lanes)],
                    "tag": pending % 256})
            ready = ctx.get(dut.i_acc.ready)
            assert ctx.get(dut.ready_copy) == ready, "ready_copy differs from i_acc.ready"
            decide = sent < beats and ready and rng.random() > 0.1
            await ctx.tick()
            decided.append(sent if decide else None)
            sent += bool(decide)
        ctx.set(dut.i_acc.valid, 0)

    got, tags = simulate(dut, producer, beats, rng=rng, stall=stall, cycles=100 + int(3 * beats / (1 - stall)))
    assert len(got) == beats, f"stall {stall}: {len(got)} of {beats} results came out"
    np.testing.assert_array_equal(np.array(got, np.int64), golden(vectors, zp, qmin, qmax, "double"))
    np.testing.assert_array_equal(tags, np.arange(beats) % 256)


def test_bad_lanes_named():
    # The refused object was never meant to be elaborated: collect it here, with Amaranth's warning silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="lanes must be an integer from 1 to 64, not 0"):
            Requantizer(0)
        with pytest.raises(ValueError, match="admit_ahead must be a number of cycles from 0 to 2, not 3"):
            Requantizer(2, target="ecp5", admit_ahead=3)
        with pytest.raises(ValueError, match="admit_ahead is a mode of the ecp5 requantizer, not of target 'generic'"):
            Requantizer(2, admit_ahead=1)
        gc.collect()


def test_verilator_double_with_bubbles_and_backpressure():
    seed = 40
    rng = np.random.default_rng(seed)
    vectors = random_vectors(rng, 400, 8)
    edges = edge_vectors(8)
    vectors = {k: np.concatenate([edges[k], vectors[k]]) for k in vectors}
    zp, qmin, qmax = -20, -128, 100
    got, _ = tb_requantizer.run_rtl(8, vectors, zp, qmin, qmax, MODES["double"], seed=seed, bubble=0.2, stall=0.2)
    np.testing.assert_array_equal(got, golden(vectors, zp, qmin, qmax, "double"), err_msg=f"seed {seed}")


def test_verilator_single_one_beat_per_cycle():
    seed = 41
    rng = np.random.default_rng(seed)
    vectors = random_vectors(rng, 400, 8)
    edges = edge_vectors(8)
    vectors = {k: np.concatenate([edges[k], vectors[k]]) for k in vectors}
    got, cycles = tb_requantizer.run_rtl(8, vectors, 0, -128, 127, MODES["single"], seed=seed)
    np.testing.assert_array_equal(got, golden(vectors, 0, -128, 127, "single"), err_msg=f"seed {seed}")
    # Without bubbles or back-pressure: the beats plus the pipeline latency, nothing more.
    assert cycles == len(vectors["acc"]) + REQUANT_LATENCY


# --- target "ice40": the serial datapath, same numbers -----------------------------------------------------------

def without_positive_single_shifts(vectors):
    """The ice40 requantizer has no single rounding with a left shift (check_shifts refuses it): clip to 0."""
    return dict(vectors, shift=np.minimum(vectors["shift"], 0))


@pytest.mark.parametrize("mode", ["double", "single"])
def test_ice40_every_shift_at_the_extremes(mode):
    vectors = edge_vectors(4)
    if mode == "single":
        vectors = without_positive_single_shifts(vectors)
    got, tags = run_amaranth(4, vectors, -128, -128, 127, mode, seed=5, bubble=0.2, stall=0.4, target="ice40")
    np.testing.assert_array_equal(got, golden(vectors, -128, -128, 127, mode), err_msg=f"mode {mode}, seed 5")
    np.testing.assert_array_equal(tags, np.arange(len(tags)) % 256)


@pytest.mark.parametrize("mode,seed,zp,qmin,qmax", [("double", 6, 127, -128, 127), ("single", 7, -5, -5, 90)])
def test_ice40_random_values_with_clamps(mode, seed, zp, qmin, qmax):
    rng = np.random.default_rng(seed)
    vectors = random_vectors(rng, 40, 4)
    if mode == "single":
        vectors = without_positive_single_shifts(vectors)
    got, _ = run_amaranth(4, vectors, zp, qmin, qmax, mode, seed=seed, target="ice40")
    np.testing.assert_array_equal(got, golden(vectors, zp, qmin, qmax, mode), err_msg=f"seed {seed}")


def test_ice40_refuses_single_rounding_with_a_left_shift():
    check_shifts("ice40", "double", [3, -4])
    check_shifts("generic", "single", [3, -4])
    check_shifts("ice40", "single", [0, -4])
    with pytest.raises(ValueError, match="layer 'c1': single rounding with a positive shift \\(channel 1\\)"):
        check_shifts("ice40", "single", [0, 2], name="c1")


def test_ice40_verilator_double_and_single():
    seed = 42
    rng = np.random.default_rng(seed)
    vectors = random_vectors(rng, 150, 4)
    edges = edge_vectors(4)
    vectors = {k: np.concatenate([edges[k], vectors[k]]) for k in vectors}
    got, _ = tb_requantizer.run_rtl(4, vectors, -20, -128, 100, MODES["double"], seed=seed, bubble=0.2, stall=0.2,
                                    target="ice40")
    np.testing.assert_array_equal(got, golden(vectors, -20, -128, 100, "double"), err_msg=f"seed {seed}")
    single = without_positive_single_shifts(vectors)
    got, cycles = tb_requantizer.run_rtl(4, single, 0, -128, 127, MODES["single"], seed=seed, target="ice40")
    np.testing.assert_array_equal(got, golden(single, 0, -128, 127, "single"), err_msg=f"seed {seed}")
    # One beat every requant_interval cycles; as for the pipelined version, the count ends with the last
    # result's handshake (generic: beats + REQUANT_LATENCY).
    assert cycles == (len(single["acc"]) - 1) * requant_interval("ice40", 4) + requant_latency("ice40", 4) + 1
