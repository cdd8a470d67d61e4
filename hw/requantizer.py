"""Requantizer: int32 accumulators -> int8 outputs, ``lanes`` channels per cycle, fully pipelined.

Per lane it computes, bit for bit as :func:`cnnacc.host.quant.requantize` (modes ``"double"`` and
``"single"``)::

    x      = wrap32(acc + bias)
    scaled = MultiplyByQuantizedMultiplier(x, multiplier, shift)      # double or single rounding
    out    = clamp(scaled + zero_point, qmin, qmax)

Double rounding is TFLite's default: ``x << max(shift, 0)`` wrapped to int32, the saturating rounding doubling
high multiply (the one saturating case, ``INT32_MIN * INT32_MIN``, gives ``INT32_MAX``), then a rounding divide
by ``2**max(-shift, 0)`` (ties away from zero). Single rounding (``TFLITE_SINGLE_ROUNDING``) is one 64-bit
product, one rounding shift by ``31 - shift`` and a saturation to int32.

Pipeline: bias add | left shift | 32x32 multiply | high part (or single-rounding shift) | rounding divide |
zero point and clamp. Six register stages, one result per cycle per lane; the whole pipeline stalls only while
the output is held by back-pressure.

Target ``"ecp5"`` (fourteen stages, see :func:`requant_extra_stages`) does not stall: its stages run on every cycle
and the last one writes a small FIFO in place of the output register (:func:`requant_fifo_depth`, same latency;
:func:`~.streamer.credit_fifo`). The input is taken only while the FIFO has room for every beat in the pipeline,
so back-pressure holds the input, not the lanes: on the ULX3S the output's ``ready`` would otherwise reach every
one of their registers and multiplier blocks in one cycle.

Target ``"ice40"``: one serial lane for all the lanes
-----------------------------------------------------
On the iCE40UP5K every DSP block computes MACs and a parallel 32x32 multiplier with 64-bit barrel shifters
costs several thousand LUTs per lane, so ``target="ice40"`` builds one serial lane that computes the same
numbers with one adder, channel after channel of the beat. Per channel it runs two passes of a radix-4 Booth
multiplier (16 cycles each):

1. ``p = wrap32(x << left) * multiplier`` (single rounding: ``x * multiplier``). The product's low bits leave
   the accumulator two per cycle; only bit 31, bit 30 and "bits 29..0 are zero" are kept. gemmlowp's nudge
   followed by truncation toward zero equals rounding half up, so the saturating rounding doubling high
   multiply is ``(p >> 31) + p[30]`` (only ``INT32_MIN * INT32_MIN`` reaches ``2**31``, which the serial lane
   keeps instead of saturating it to ``INT32_MAX``: both give the same int8 result after either pass).
2. the right shift by ``right = max(-shift, 0)`` as a multiplication by ``2**(31 - right)``: the product's part
   above bit 31 is ``value >> right``, bit 30 is the half bit and bits 29..0 the sticky bits, which give TFLite's
   rounding divide (half away from zero) or single rounding's half up. A zero shift multiplies by ``2**31``,
   which gives the value itself (no half bit, no sticky bits).

Then zero point and clamp, as in the parallel version; the int8 result shifts into the output register, which
becomes valid with the beat's last channel. Beats come :func:`requant_interval` cycles apart (the input is
acknowledged when its last result enters the output register) and nothing overlaps.

With ``lane_fetch=True`` (what the conv engine builds) the block reads one channel at a time: it shows the
channel it needs on ``lane``, takes that channel's accumulator on ``acc`` and its parameters on ``params`` (a
synchronous memory read addressed by ``lane``: a cycle later), so neither a beat of ``lanes`` accumulators nor
``lanes`` parameter sets are ever held. Both must show from the cycle that sees the beat (``lane`` is then the
beat's first channel, shown since the last beat's last load) and stay until the channel is loaded: the block
registers ``acc + bias`` and the shift's left part a cycle ahead of the load, for timing on the iCE40. Without
it the block has the beat interface of the other targets and picks the lane's accumulator and parameters from
the beat.

Single rounding with a positive shift (an effective scale above 1) needs a left shift the serial path does not
have; :func:`check_shifts` refuses it for that target and the compiler must call it.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp_ecp5 import (DSP_PRODUCT_SPLIT, DSP_PRODUCT_STAGES, booth_digit_count, booth_digits, dsp_product,
                       lut_product, lut_product_stages)
from .memory_map import COPY_ATTR
from .streamer import credit_fifo

__all__ = ["Requantizer", "lane_params_layout", "lane_fetch_input_layout", "requant_input_layout",
           "requant_output_layout", "requant_interval", "requant_latency", "requant_extra_stages", "requant_fifo_depth",
           "check_shifts", "rounding_divide", "REQUANT_LATENCY", "SHIFT_MIN", "SHIFT_MAX"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
SHIFT_MIN, SHIFT_MAX = -31, 30
#: Register stages from an accepted input to the output register (cycles, without back-pressure), targets
#: "generic"; "ecp5" adds :func:`requant_extra_stages`.
REQUANT_LATENCY = 6
#: Booth radix-4 digits of a 32-bit operand: cycles of one pass of the serial (ice40) multiplier.
_PASS_CYCLES = 16
#: Phases of the serial lane: waiting for a beat (its first parameters are being read), selecting its first
#: channel's accumulator, loading a channel, the two passes and the cycle between them, rounding, writing the
#: result (which also loads the next channel).
_IDLE, _SELECT, _LOAD, _PASS1, _BETWEEN, _PASS2, _ROUND, _WRITE = range(8)
_TARGETS = ("generic", "ice40", "ecp5")
#: The ECP5 multiply takes :data:`~.dsp_ecp5.DSP_PRODUCT_STAGES` (5) register stages against one for the generic
#: ``*`` (the LUT-only version, four adder-tree levels, has a fifth register to keep the same timing), the input
#: register and the left shift before it one more each (see :meth:`Requantizer._lane_ecp5`), and the tail after
#: it two more (see :meth:`Requantizer._split_tail`).
_ECP5_EXTRA_STAGES = 1 + 1 + (DSP_PRODUCT_STAGES - 1) + 2
#: The most cycles ahead a producer may decide (``admit_ahead``); the output FIFO is deep enough for it.
_MAX_ADMIT_AHEAD = 2


def _check_lanes(lanes):
    if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= 64:
        raise ValueError(f"lanes must be an integer from 1 to 64, not {lanes!r}")


def requant_interval(target="generic", lanes=1):
    """Cycles between two beats of ``lanes`` channels the requantizer of ``target`` can accept back to back (1
    when pipelined).

    The serial ice40 lane spends one cycle seeing the beat (its first parameters are read meanwhile), one
    registering its first channel's accumulator, one loading that channel, and per channel two passes of
    :data:`_PASS_CYCLES`, one cycle between them, one rounding and one writing the result (which loads the next
    channel, or acknowledges the beat)."""
    _check_lanes(lanes)
    return 1 if target != "ice40" else 3 + lanes * (2 * _PASS_CYCLES + 3)


def requant_extra_stages(target="generic"):
    """Register stages the pipelined requantizer of ``target`` has beyond :data:`REQUANT_LATENCY`: 8 on the ECP5,
    whose input has a register of its own, its left shift two stages, its product five and the shifts and
    rounding after it four (see :class:`Requantizer`), 0 elsewhere. The serial ice40 datapath is not a pipeline:
    see :func:`requant_interval`."""
    return _ECP5_EXTRA_STAGES if target == "ecp5" else 0


def requant_fifo_depth(target="generic"):
    """Beats the output FIFO of a free-running (``"ecp5"``) requantizer holds: its pipeline's beats, the one the
    registered ``room`` admits before it sees the FIFO fill, one more a cycle for a producer that decides up to
    two cycles ahead (``admit_ahead``), and more to the next power of two (the FIFO is distributed RAM, 16 words
    a block). Enough that beats never wait while the output is taken at once."""
    if target != "ecp5":
        return 0
    return 1 << (requant_latency(target) + 2 + _MAX_ADMIT_AHEAD).bit_length()


def requant_latency(target="generic", lanes=1):
    """Cycles from a beat becoming valid at the input (the requantizer idle) to its result being valid."""
    if target == "ice40":
        return requant_interval(target, lanes)
    return REQUANT_LATENCY + requant_extra_stages(target)


def check_shifts(target, rounding, shifts, name="layer"):
    """Raise ``ValueError`` naming ``name`` if the requantizer of ``target`` cannot apply ``shifts`` with
    ``rounding`` ("double" or "single"); the serial ice40 version has no single rounding with a left shift."""
    if target == "ice40" and rounding == "single":
        import numpy as np
        bad = np.flatnonzero(np.asarray(shifts).ravel() > 0)
        if bad.size:
            raise ValueError(f"layer {name!r}: single rounding with a positive shift (channel {int(bad[0])}) is "
                             f"not supported by the ice40 requantizer; use double rounding")


def lane_fetch_input_layout(tag_width=0):
    """One input beat of the lane-fetch (ice40) requantizer: only its ``tag``; accumulators and parameters are
    read a lane at a time."""
    return data.StructLayout({"tag": tag_width} if tag_width else {})


def lane_params_layout():
    """Per-channel parameters: int32 ``bias``, int32 ``multiplier``, ``shift`` in [-31, 30] (positive = left)."""
    return data.StructLayout({"bias": signed(32), "multiplier": signed(32), "shift": signed(6)})


def requant_input_layout(lanes, tag_width=0):
    """One input beat: per lane an int32 ``acc`` and its :func:`lane_params_layout`, and an opaque ``tag``."""
    fields = {
        "acc": data.ArrayLayout(signed(32), lanes),
        "params": data.ArrayLayout(lane_params_layout(), lanes),
    }
    if tag_width:
        fields["tag"] = tag_width
    return data.StructLayout(fields)


def requant_output_layout(lanes, tag_width=0):
    """One output beat: ``lanes`` int8 results and the ``tag`` of the input beat they came from."""
    fields = {"data": data.ArrayLayout(signed(8), lanes)}
    if tag_width:
        fields["tag"] = tag_width
    return data.StructLayout(fields)


def rounding_divide(m, x, right, name):
    """RoundingDivideByPOT, combinational: ``x / 2**right`` rounded to nearest, ties away from zero."""
    mask = Signal(32, name=f"{name}_mask")
    m.d.comb += mask.eq((Const(1, 33) << right) - 1)
    remainder = Signal(32, name=f"{name}_rem")
    m.d.comb += remainder.eq(x.as_unsigned() & mask)
    threshold = Signal(33, name=f"{name}_thr")
    m.d.comb += threshold.eq((mask >> 1) + (x < 0))
    return (x >> right) + (remainder > threshold)


class Requantizer(wiring.Component):
    """TFLite integer requantization of ``lanes`` accumulators per cycle.

    Parameters
    ----------
    lanes : int
        Channels per beat (``config.lanes`` for the vector engines, ``config.rows`` behind the array).
    tag_width : int
        Width of an opaque tag carried from each input beat to its output beat (0 for none).
    target : str
        ``"ice40"`` builds one serial lane shared by the ``lanes`` channels (see the module docstring).
        ``"ecp5"`` builds the 32x32 multiply in five register stages, from LUTs (a Booth multiplier) or, with
        ``dsp_blocks``, mostly from MULT18X18D blocks, and splits the left shift before it and the stages after
        it (:meth:`_split_tail`) for a 125 MHz clock: :func:`requant_extra_stages` more cycles, the same numbers.
        ``"generic"`` makes stage 3 one ``*`` (a DSP block where there is one).
    lane_fetch : bool
        Target ``"ice40"`` only: read the accumulators and parameters one lane at a time (``lane``, ``acc``,
        ``params`` below) instead of from the beat.
    dsp_blocks : bool
        Target ``"ecp5"`` only: each lane's 32x32 product takes three MULT18X18D blocks and a 15x15 LUT product
        (:func:`~.dsp_ecp5.dsp_product`) instead of being built from LUTs alone. Same numbers, same cycles; about
        2,000 fewer LUTs a lane. The conv engine uses them (the array leaves 28 of the 85F's 156 blocks).
    dsp_model : bool
        With ``dsp_blocks``: the blocks' plain model instead of the primitive, for the Amaranth simulator.
    admit_ahead : int
        Target ``"ecp5"`` only, cycles (0, the default: off; ``True`` is 1): ``i_acc.ready`` is high only while
        the output FIFO has room for the beats offered in the next ``admit_ahead`` cycles as well, and every beat
        offered (``valid``) is taken, whatever ``ready`` is then. For a producer with no enable of its own, which
        decides to send a beat ``admit_ahead`` cycles before it reaches ``i_acc`` (the conv engine: it takes a
        column from the array on ``ready`` and offers it after its parameter read, conv_param_stages).
        The requantizer then has one more member:

        ready_copy : Out(1)
            ``i_acc.ready`` again, from a flip-flop of its own (COPY_ATTR), for producer logic placed apart.

    Members
    -------
    i_acc : In(stream.Signature(requant_input_layout(lanes, tag_width)))
    o_data : Out(stream.Signature(requant_output_layout(lanes, tag_width)))
    single_rounding : In(1)
        0: TFLite's double rounding; 1: single rounding. Layer-constant: change only while the pipeline is empty
        (on target ``"ecp5"`` at least a cycle before the next beat is offered: each lane registers a copy).
    zero_point, qmin, qmax : In(signed(8))
        Output zero point and clamp bounds (ReLU/ReLU6 are clamp bounds). Layer-constant, as above.

    With ``lane_fetch``, ``i_acc`` carries :func:`lane_fetch_input_layout` (the tag only) and three more members:

    lane : Out(range(lanes))
        The channel the block reads next.
    acc : In(signed(32))
        Accumulator of channel ``lane``, in the same cycle (a multiplexer over the held beat).
    params : In(lane_params_layout())
        Parameters of the channel ``lane`` showed in the previous cycle (a synchronous memory read); both from
        the cycle that sees the beat, see above.
    """

    def __init__(self, lanes, tag_width=0, *, target="generic", lane_fetch=False, dsp_blocks=False,
                 dsp_model=False, admit_ahead=False):
        _check_lanes(lanes)
        if not isinstance(tag_width, int) or tag_width < 0:
            raise ValueError(f"tag_width must be a non-negative integer, not {tag_width!r}")
        if target not in _TARGETS:
            raise ValueError(f"target must be one of {_TARGETS}, not {target!r}")
        if lane_fetch and target != "ice40":
            raise ValueError(f"lane_fetch is a mode of the ice40 requantizer, not of target {target!r}")
        if dsp_blocks and target != "ecp5":
            raise ValueError(f"dsp_blocks is a mode of the ecp5 requantizer, not of target {target!r}")
        if not isinstance(admit_ahead, int) or not 0 <= admit_ahead <= _MAX_ADMIT_AHEAD:
            raise ValueError(f"admit_ahead must be a number of cycles from 0 to {_MAX_ADMIT_AHEAD}, "
                             f"not {admit_ahead!r}")
        if admit_ahead and target != "ecp5":
            raise ValueError(f"admit_ahead is a mode of the ecp5 requantizer, not of target {target!r}")
        self._admit_ahead = int(admit_ahead)
        self._dsp_blocks = bool(dsp_blocks)
        self._dsp_model = bool(dsp_model)
        self._lanes = lanes
        self._tag_width = tag_width
        self._target = target
        self._split_product = target == "ecp5"
        self._free_running = target == "ecp5"
        self._lane_fetch = bool(lane_fetch)
        members = {
            "i_acc": In(stream.Signature(lane_fetch_input_layout(tag_width) if lane_fetch
                                         else requant_input_layout(lanes, tag_width))),
            "o_data": Out(stream.Signature(requant_output_layout(lanes, tag_width))),
            "single_rounding": In(1),
            "zero_point": In(signed(8)),
            "qmin": In(signed(8)),
            "qmax": In(signed(8)),
        }
        if lane_fetch:
            members.update({"lane": Out(range(lanes)), "acc": In(signed(32)), "params": In(lane_params_layout())})
        if admit_ahead:
            members["ready_copy"] = Out(1)
        super().__init__(members)

    @property
    def lanes(self):
        return self._lanes

    @property
    def target(self):
        return self._target

    def elaborate(self, platform):
        if self._target == "ice40":
            return self._elaborate_serial()
        m = Module()
        stages = requant_latency(self._target)
        valid = [Signal(name=f"valid_{i}") for i in range(stages - 1)]
        tags = [Signal(self._tag_width, name=f"tag_{i}", reset_less=self._free_running) for i in range(stages - 1)]
        if self._free_running:
            # No enable: every stage moves on every cycle, and the last one writes a FIFO that stands where the
            # output register was (readable the cycle after, as the register was). A beat is taken only while
            # the FIFO has room for it and every beat ahead of it (``room``, a register): back-pressure stops
            # the input, and the many registers of the lanes never wait on the output's ``ready``.
            en = Const(1)
            out = Signal(requant_output_layout(self._lanes, self._tag_width))
            # With ``admit_ahead`` the producer looked at ``room`` that many cycles before the beat came: room
            # for as many beats more is reserved (``lead``), and the beat is taken as it comes.
            taken = self.i_acc.valid if self._admit_ahead else self.i_acc.valid & self.i_acc.ready
            fifo, room, *copies = credit_fifo(m, "out_fifo", self.o_data, width=out.shape().size,
                                              depth=requant_fifo_depth(self._target), reserve=taken, chunk=1,
                                              lead=self._admit_ahead, room_copies=int(self._admit_ahead > 0))
            m.d.comb += [fifo.w_data.eq(out), fifo.w_en.eq(valid[-1]), self.i_acc.ready.eq(room)]
            if self._admit_ahead:
                m.d.comb += self.ready_copy.eq(copies[0][0])
            m.d.sync += valid[0].eq(taken)
            output = out
        else:
            # One enable for every stage: the pipeline moves whenever the output register is free or being
            # taken. This keeps one result per cycle and makes back-pressure a plain stall.
            en = Signal()
            m.d.comb += [en.eq(~self.o_data.valid | self.o_data.ready), self.i_acc.ready.eq(en)]
            with m.If(en):
                m.d.sync += [valid[0].eq(self.i_acc.valid), self.o_data.valid.eq(valid[-1])]
            output = self.o_data.payload
        with m.If(en):
            m.d.sync += [valid[i + 1].eq(valid[i]) for i in range(stages - 2)]
            if self._tag_width:
                m.d.sync += tags[0].eq(self.i_acc.payload.tag)
                m.d.sync += [tags[i + 1].eq(tags[i]) for i in range(stages - 2)]
        if self._tag_width:
            if self._free_running:
                m.d.comb += output.tag.eq(tags[-1])
            else:
                with m.If(en):
                    m.d.sync += output.tag.eq(tags[-1])

        bounds = None
        if self._free_running:
            # The clamp's bounds less the zero point (the lower one less one more: the largest value clamped to
            # qmin), registered once for the lanes (the layer's fields hold still for a run, whose first result
            # comes many cycles after them): each lane's compares then run beside its zero point's addition, not
            # after it (two 34-bit carry chains in a row before the FIFO were over 8 ns on the ULX3S).
            bounds = (Signal(signed(10), name="qmin_less_zp_1"), Signal(signed(10), name="qmax_less_zp"))
            m.d.sync += [bounds[0].eq(self.qmin - self.zero_point - 1), bounds[1].eq(self.qmax - self.zero_point)]
        for lane in range(self._lanes):
            if self._split_product:
                self._lane_ecp5(m, en, lane, output, bounds)
            else:
                self._lane(m, en, lane, output)
        return m

    def _lane(self, m, en, lane, output):
        acc = self.i_acc.payload.acc[lane]
        params = self.i_acc.payload.params[lane]
        single = self.single_rounding

        def reg(shape, name):
            return Signal(shape, name=f"l{lane}_{name}")

        # Stage 1: bias add (wraps like int32), split the shift into its left and right parts.
        x1, m1 = reg(signed(32), "x1"), reg(signed(32), "m1")
        left1, right1, total1 = reg(range(31), "left1"), reg(range(32), "right1"), reg(range(63), "total1")
        # Stage 2: the wrapped left shift (double) or x itself (single).
        a2, m2, right2, total2 = reg(signed(32), "a2"), reg(signed(32), "m2"), reg(range(32), "right2"), reg(range(63), "total2")
        # Stage 3: the 64-bit product; the saturating case is flagged beside it.
        ab3, sat3, right3, total3 = reg(signed(64), "ab3"), reg(1, "sat3"), reg(range(32), "right3"), reg(range(63), "total3")
        # Stage 4: the high half (double) or the single-rounded, saturated result (single).
        high4, right4 = reg(signed(32), "high4"), reg(range(32), "right4")
        # Stage 5: rounding divide by a power of two (double only).
        scaled5 = reg(signed(32), "scaled5")

        shift = params.shift
        with m.If(en):
            m.d.sync += [
                x1.eq((acc + params.bias)[:32].as_signed()),
                m1.eq(params.multiplier),
                left1.eq(Mux(shift > 0, shift, 0)),
                right1.eq(Mux(shift < 0, -shift, 0)),
                total1.eq(31 - shift),
            ]
            m.d.sync += [right2.eq(right1), total2.eq(total1), right3.eq(right2), total3.eq(total2)]
            shifted = Mux(single, x1, (x1 << left1)[:32].as_signed())
            m.d.sync += [a2.eq(shifted), m2.eq(m1)]
            m.d.sync += [ab3.eq(a2 * m2), sat3.eq((a2 == INT32_MIN) & (m2 == INT32_MIN) & ~single)]

            # gemmlowp: nudge by +/- 2**30, then divide by 2**31 truncating toward zero.
            nudged = Signal(signed(65), name=f"l{lane}_nudged")
            m.d.comb += nudged.eq(ab3 + Mux(ab3 >= 0, 1 << 30, 1 - (1 << 30)))
            truncated = Signal(signed(65), name=f"l{lane}_truncated")
            m.d.comb += truncated.eq((nudged + Mux(nudged < 0, (1 << 31) - 1, 0)) >> 31)
            # Single rounding: add half of the divisor, arithmetic shift, saturate.
            rounded = Signal(signed(65), name=f"l{lane}_rounded")
            m.d.comb += rounded.eq((ab3 + (Const(1, 64) << (total3 - 1)[:6])) >> total3)
            saturated = Mux(rounded > INT32_MAX, INT32_MAX, Mux(rounded < INT32_MIN, INT32_MIN, rounded))
            m.d.sync += [
                high4.eq(Mux(single, saturated, Mux(sat3, INT32_MAX, truncated))),
                right4.eq(Mux(single, 0, right3)),
            ]

            m.d.sync += scaled5.eq(rounding_divide(m, high4, right4, f"l{lane}"))
        self._clamp(m, en, lane, scaled5, output)

    def _clamp(self, m, en, lane, scaled, output):
        """The last stage: zero point and clamp into the output register."""
        biased = Signal(signed(34), name=f"l{lane}_biased")
        m.d.comb += biased.eq(scaled + self.zero_point)
        clamped = Mux(biased < self.qmin, self.qmin, Mux(biased > self.qmax, self.qmax, biased))
        with m.If(en):
            m.d.sync += output.data[lane].eq(clamped[:8])

    def _lane_ecp5(self, m, en, lane, output, bounds):
        """One lane for target "ecp5": the stages of :meth:`_lane` with the product built by
        :func:`~.dsp_ecp5.dsp_product` (``dsp_blocks``: the multiplier's high part's Booth digits decoded beside
        the left shift's second stage, three blocks and a LUT product, two additions) or
        :func:`~.dsp_ecp5.lut_product` (Booth digits of the whole multiplier, partial products and the first
        addition in stage 4, three more adder levels, then one more register), product in stage 8 either way,
        the stages after it by :meth:`_split_tail` and the clamp by :meth:`_clamp_ecp5`:
        :func:`requant_extra_stages` more than the generic lane."""
        acc = self.i_acc.payload.acc[lane]
        params = self.i_acc.payload.params[lane]

        def reg(shape, name):
            # Data only (the valid chain has the reset): a reset would reach thousands of flip-flops.
            return Signal(shape, name=f"l{lane}_{name}", reset_less=True)

        # The mode, registered by the lane: it picks the operand of every stage's multiplexers, and one flag
        # routed to all eight lanes' was the routed build's slowest path (5.1 ns of route). Kept apart from the
        # other lanes' copies (COPY_ATTR): yosys had merged them back into one.
        single = Signal(name=f"l{lane}_single", reset_less=True, attrs={COPY_ATTR: 1})
        m.d.sync += single.eq(self.single_rounding)

        # Stage 0 registers the beat as it is taken. The conv engine's accumulators and parameters come straight
        # from block RAM read ports (yosys folds the engine's own registers into them), whose data arrives about
        # 4 ns into the cycle: the bias's carry chain and the shift's decoders behind it were over 8 ns.
        acc0, params0 = reg(acc.shape(), "acc0"), reg(lane_params_layout(), "params0")
        m.d.sync += [acc0.eq(acc), params0.eq(params)]
        acc, params = acc0, params0

        # The multiplier's Booth digits: all of it for the LUT product, its part above the blocks' low 17 bits
        # for the DSP product.
        recoded = slice(DSP_PRODUCT_SPLIT, 32) if self._dsp_blocks else slice(0, 32)
        digits = booth_digit_count(recoded.stop - recoded.start)
        product_stage = 3 + DSP_PRODUCT_STAGES                  # the stage that registers the product
        x1, m1 = reg(signed(32), "x1"), reg(signed(32), "m1")
        left1 = reg(range(31), "left1")
        # The wrapped left shift in two stages, by its multiple of 8 then by the rest (none for single
        # rounding): the 32-bit shifter and the mode's multiplexer in one were over 8 ns on the ULX3S.
        coarse2, fine2, m2 = reg(signed(32), "coarse2"), reg(3, "fine2"), reg(signed(32), "m2")
        a3, mmin3 = reg(signed(32), "a3"), reg(1, "m_min3")
        neg3, one3, two3 = reg(digits, "neg3"), reg(digits, "one3"), reg(digits, "two3")
        # The saturating case (both operands INT32_MIN) tested a byte at a time, then combined: the 32-bit
        # test after the operand's register was over 8 ns there.
        amin4 = reg(4, "a_min4")
        # right and total (= 31 - shift) ride along to the product stage and the ones before it.
        right = [reg(range(32), f"right{i}") for i in range(1, product_stage + 1)]
        total = [reg(range(63), f"total{i}") for i in range(1, product_stage + 1)]
        sat = [reg(1, f"sat{i}") for i in range(5, product_stage + 1)]
        high = reg(signed(32), "high_t")

        shift = params.shift
        with m.If(en):
            m.d.sync += [
                x1.eq((acc + params.bias)[:32].as_signed()),
                m1.eq(params.multiplier),
                left1.eq(Mux(shift > 0, shift, 0)),
                right[0].eq(Mux(shift < 0, -shift, 0)),
                total[0].eq(31 - shift),
            ]
            m.d.sync += [right[i + 1].eq(right[i]) for i in range(product_stage - 1)]
            m.d.sync += [total[i + 1].eq(total[i]) for i in range(product_stage - 1)]
            m.d.sync += [coarse2.eq(Mux(single, x1, (x1 << Cat(Const(0, 3), left1[3:]))[:32].as_signed())),
                         fine2.eq(Mux(single, 0, left1[:3])), m2.eq(m1)]
            neg, one, two = booth_digits(m2[recoded].as_signed())
            m.d.sync += [a3.eq((coarse2 << fine2)[:32].as_signed()), mmin3.eq(m2 == INT32_MIN),
                         neg3.eq(neg), one3.eq(one), two3.eq(two)]
            m.d.sync += [amin4[i].eq(a3[8 * i:8 * i + 8] == 0) for i in range(3)]
            m.d.sync += amin4[3].eq((a3[24:] == 0x80) & mmin3)
            m.d.sync += sat[0].eq(amin4.all() & ~single)
            m.d.sync += [sat[i + 1].eq(sat[i]) for i in range(len(sat) - 1)]
        if self._dsp_blocks:
            m3 = reg(signed(32), "m3")
            with m.If(en):
                m.d.sync += m3.eq(m2)
            ab = dsp_product(m, en, a3, m3, (neg3, one3, two3), primitive=not self._dsp_model, name=f"l{lane}_ab")
        else:
            ab = lut_product(m, en, a3, neg3, one3, two3, width=64, name=f"l{lane}_ab")
            for extra in range(DSP_PRODUCT_STAGES - lut_product_stages(digits)):
                ab_q = reg(signed(64), f"ab_q{extra}")
                with m.If(en):
                    m.d.sync += ab_q.eq(ab)
                ab = ab_q
        truncated = Signal(signed(65), name=f"l{lane}_truncated")
        # The nudge and the truncation toward zero add 2**30 together for either sign (ab >= 0: 2**30; ab < 0:
        # 1 - 2**30, then 2**31 - 1).
        m.d.comb += truncated.eq((ab + (1 << 30)) >> 31)
        with m.If(en):
            quotient, up = self._split_tail(m, lane, reg, single, ab, sat[-1], truncated, total, right, high)
        self._clamp_ecp5(m, lane, reg, quotient, up, output, bounds)

    # --- serial datapath (target "ice40") -------------------------------------------------------------------------

    def _elaborate_beat_feed(self):
        """The beat interface around the lane-fetch core: the lane's accumulator and parameters are picked from
        the held beat (both then show from the cycle that sees the beat, as the core requires)."""
        m = Module()
        m.submodules.lane = core = Requantizer(self._lanes, self._tag_width, target="ice40", lane_fetch=True)
        m.d.comb += [core.single_rounding.eq(self.single_rounding), core.zero_point.eq(self.zero_point),
                     core.qmin.eq(self.qmin), core.qmax.eq(self.qmax),
                     core.i_acc.valid.eq(self.i_acc.valid), self.i_acc.ready.eq(core.i_acc.ready),
                     core.acc.eq(self.i_acc.payload.acc[core.lane])]
        if self._tag_width:
            m.d.comb += core.i_acc.payload.tag.eq(self.i_acc.payload.tag)
        m.d.comb += core.params.eq(self.i_acc.payload.params[core.lane])
        wiring.connect(m, core.o_data, wiring.flipped(self.o_data))
        return m

    def _elaborate_serial(self):
        if not self._lane_fetch:
            return self._elaborate_beat_feed()
        m = Module()
        o = self.o_data
        lanes = self._lanes
        phase = Signal(range(8))
        step = Signal(range(_PASS_CYCLES))
        last_step = step == _PASS_CYCLES - 1
        # ``last``: the channel being computed is the beat's last (set when it is loaded, as ``lane`` moves on).
        last = Signal()
        free = Signal()
        m.d.comb += free.eq(~o.valid | o.ready)
        # ``finish`` is the input's ready, a kept wire: the conv engine's array takes its column one LUT after it.
        write, load, finish = Signal(), Signal(), Signal(name="finish", attrs={"keep": 1})
        # A result goes into the output register only while it is free: the register shifts, one lane a write.
        # ``phase == _WRITE`` and ``phase == _LOAD`` as registers of their own: ``load`` enables most of the
        # datapath's registers, so it is kept two LUTs from the output handshake.
        at_write, at_load = Signal(), Signal()
        m.d.sync += at_load.eq(phase == _SELECT)
        with m.If(phase == _ROUND):
            m.d.sync += at_write.eq(1)
        with m.Elif(write):
            m.d.sync += at_write.eq(0)
        m.d.comb += [write.eq(at_write & free), finish.eq(write & last),
                     load.eq(at_load | (write & ~last))]
        # The beat stays on the input (stream rule) until its last result is written; only then is it taken.
        m.d.comb += self.i_acc.ready.eq(finish)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(finish):
            m.d.sync += o.valid.eq(1)
            if self._tag_width:
                m.d.sync += o.payload.tag.eq(self.i_acc.payload.tag)
        with m.If(load):
            m.d.sync += [last.eq(self.lane == lanes - 1), self.lane.eq(Mux(self.lane == lanes - 1, 0, self.lane + 1)),
                         phase.eq(_PASS1), step.eq(0)]
        with m.Switch(phase):
            with m.Case(_IDLE):
                with m.If(self.i_acc.valid):
                    m.d.sync += phase.eq(_SELECT)
            with m.Case(_SELECT):
                m.d.sync += phase.eq(_LOAD)
            with m.Case(_PASS1, _PASS2):
                m.d.sync += step.eq(step + 1)
                with m.If(last_step):
                    m.d.sync += phase.eq(phase + 1)
            with m.Case(_BETWEEN):
                m.d.sync += phase.eq(_PASS2)
            with m.Case(_ROUND):
                m.d.sync += phase.eq(_WRITE)
            with m.Case(_WRITE):
                with m.If(finish):
                    m.d.sync += phase.eq(_IDLE)

        params = self.params
        single = self.single_rounding
        # The accumulator, then ``acc + bias``, each registered every cycle: a channel is loaded at least two
        # cycles after its accumulator and parameters show (the cycle that sees the beat and the select cycle,
        # or the passes before a write loads the next lane), so the row multiplexer (after the SB_MAC16 outputs,
        # at the die's edges) and the 32-bit adder each get a cycle of their own instead of sharing one with
        # the operand's load (the multiplexer and the adder's carry chain were nextpnr's critical path).
        # The sum is registered in two halves (the low one with its carry out), and the carry enters the high
        # half on the way to the operand: no 32-bit carry chain before the operand's multiplexer.
        acc = Signal.like(self.acc, name="acc_q")
        m.d.sync += acc.eq(self.acc)
        x_low, x_high = Signal(17, name="x_low"), Signal(16, name="x_high")
        m.d.sync += [x_low.eq(acc[:16] + params.bias[:16]),
                     x_high.eq((acc.as_signed() >> 16) + (params.bias.as_signed() >> 16))]
        x = Signal(signed(32))
        m.d.comb += x.eq(Cat(x_low[:16], x_high + x_low[16]))
        shift = params.shift
        left = Signal(range(31))                  # double rounding only
        left_wait = Signal(range(16))             # left >> 1, the first pass's zero digits
        # Registered every cycle, as ``x`` above (the parameters show at least a cycle before the load).
        m.d.sync += left.eq(Mux(single | (shift <= 0), 0, shift))
        m.d.comb += left_wait.eq(left >> 1)
        right = Signal(range(32))                 # latched with the channel: it steers the second pass and the end
        right_nz = Signal()                       # right != 0, latched beside it: no 5-input compare in the rounding
        with m.If(load):
            m.d.sync += [right.eq(Mux(shift < 0, -shift, 0)), right_nz.eq(shift < 0)]
        # The second pass's first digit and counters, decoded with the load (right = 31 - e): no decode of
        # ``right`` in the cycle between the passes.
        second_go, second_wait_one = Signal(name="second_go"), Signal(name="second_wait_one")
        second_one, second_two = Signal(name="second_one"), Signal(name="second_two")
        with m.If(load):
            m.d.sync += [second_go.eq((shift == -31) | (shift == -30)),
                         second_wait_one.eq((shift == -29) | (shift == -28)),
                         second_one.eq(shift == -31), second_two.eq(shift == -30)]

        # Booth digit ``step`` reads a[2k+1], a[2k], a[2k-1] from the low bits of ``operand``, which shifts by two
        # per digit. A pass multiplies by ``a = v << e``: the first ``e // 2`` digits are zero (``wait`` counts
        # them down, ``go`` says they are over), then ``operand`` holds v (shifted by one more when e is odd,
        # a[-1] = 0 below). First pass: v = x, e = left. Second pass: v = 1, e = 31 - right (the complement of
        # right's five bits), so 2**(31 - right) costs no decoder. Everything the digit depends on is a
        # register, so the cycle is one digit decode, the addend select and the adder.
        operand = Signal(34)
        wait = Signal(range(16))
        go = Signal()
        load_first = Mux(left[0], Cat(Const(0, 2), x), Cat(Const(0, 1), x))
        exponent = Signal(5)
        m.d.comb += exponent.eq(~right[:5])
        # One digit, +1 (window 010) at e // 2 for an even e or +2 (window 011, not the 100 then 001 of 2**e's own
        # bits) for an odd one: 2**31 (no right shift) is exact within the 16 digits, so the second pass's result
        # is the value itself and the rounding needs no bypass.
        load_second = Mux(exponent[0], Const(0b011, 3), Const(0b010, 3))
        # The digit is decoded a cycle ahead, from the window the next step will see, and registered. The load's
        # window and the others' are decoded apart and chosen last: ``load`` waits on the output handshake, and
        # the choice is then one LUT after it.
        def booth(window):
            n0, n1, n2 = window[0], window[1], window[2]
            return Cat(n2 & ~(n1 & n0), n1 ^ n0, (n2 & ~n1 & ~n0) | (~n2 & n1 & n0))
        load_window, next_window = Signal(3), Signal(3, name="next_window")
        m.d.comb += load_window.eq(Mux(left_wait == 0, load_first[:3], 0))
        wait_one = Signal()                       # wait == 1, kept beside it
        with m.If(load):
            m.d.sync += [operand.eq(load_first), wait.eq(left_wait), go.eq(left_wait == 0),
                         wait_one.eq(left_wait == 1)]
        with m.Elif(phase == _BETWEEN):
            m.d.sync += [operand.eq(load_second), wait.eq(exponent >> 1), go.eq(second_go),
                         wait_one.eq(second_wait_one)]
        with m.Elif((phase == _PASS1) | (phase == _PASS2)):
            with m.If(go):
                m.d.sync += operand.eq(operand >> 2)
            with m.Else():
                m.d.sync += [wait.eq(wait - 1), go.eq(wait_one), wait_one.eq(wait == 2)]
        load_digit, next_digit = Signal(3), Signal(3)
        m.d.comb += load_digit.eq(booth(load_window))
        with m.If(phase == _BETWEEN):
            m.d.comb += next_digit.eq(Cat(0, second_one, second_two))     # booth(load_second) if e < 2
        with m.Elif((phase == _PASS1) | (phase == _PASS2)):
            m.d.comb += next_window.eq(Mux(go, operand[2:5], Mux(wait_one, operand[:3], 0)))
            m.d.comb += next_digit.eq(booth(next_window))
        negative, one, two = Signal(name="negative"), Signal(name="one"), Signal(name="two")
        m.d.sync += Cat(negative, one, two).eq(Mux(load, load_digit, next_digit))
        # The previous step's sign, beside it (the same as the digit's at the start of a pass: the load's, or 0
        # for the second pass, which has no negative digit).
        was_negative = Signal(name="was_negative")
        m.d.sync += was_negative.eq(Mux(load, load_digit[0], negative & ((phase == _PASS1) | (phase == _PASS2))))

        # The multiplicand register: the multiplier for the first pass, then the first pass's result (33 bits:
        # single rounding's p >> 31 reaches 2**31).
        held = Signal(signed(33), name="held")
        with m.If(load):
            m.d.sync += held.eq(params.multiplier)
        # Widths: digits are at most 2 and |held| <= 2**31, so the part above the shifted-out bits stays within
        # 2/3 |held| + 1 (32 bits) and a step's sum within 8/3 |held| + 1 (34 bits): no wider carry chain.
        # A negative digit subtracts as ``high - a = ~(~high + a)``, so the addend is one LUT of ``held`` and
        # the digit (no complement, no carry in after it), beside one LUT turning ``high`` over, both ahead of
        # the carry chain. The sum goes into ``high`` as it is, complemented after a negative digit; the next
        # step turns it over only if its own sign differs. A pass starts from ``high = -1``: 0 complemented for
        # a negative first digit, and 0 after the carry in ``start`` otherwise.
        addend = Signal(signed(34), name="addend")
        m.d.comb += addend.eq(Mux(one, held, Mux(two, held << 1, 0)))
        # The product above the bits already shifted out. Reset-less: a pass always starts it at -1 (a flip-flop
        # set, beside the enable), so its data input is the carry chain's sum LUT alone. With the run's reset too,
        # the -1 took each sum LUT's fourth input, and nextpnr splits a chain whose tile has more than 32 LUT and
        # control inputs (a split costs a fabric detour of about 3 ns).
        high = Signal(signed(32), name="high", reset_less=True)
        turned = Signal(signed(32), name="turned")
        m.d.comb += turned.eq(high ^ (negative ^ was_negative).replicate(32))
        start = Signal(name="start")
        total = Signal(signed(34), name="total")
        m.d.comb += total.eq(turned + addend + start)
        low = Signal(2, name="low")               # the sum's low bits, turned over where complemented
        m.d.comb += low.eq(total[:2] ^ negative.replicate(2))
        m.d.sync += start.eq(Mux(load, ~load_digit[0], phase == _BETWEEN))
        p31 = Signal(name="p31")                  # product bit 31 once a pass is done (complemented as high)
        zero = Signal(name="zero")                # product bits 29..0 are all zero
        # ``p31`` and ``high`` are left complemented if the pass's last digit was negative (``last_neg``; never
        # after the second pass, which has no negative digit). The rounding bit is registered beside them, split
        # by that sign: ``up_pos`` is added, ``up_neg`` subtracted from the complement, which then turns over
        # (``~(~q - 1) = q + 1``). The first pass rounds half up (not for single rounding with a shift, whose
        # second pass rounds p >> 31 itself), the second TFLite's rounding divide (half away from zero: the half
        # bit, and for a negative value a sticky bit too) or single rounding's half up.
        last_neg, up_pos, up_neg = Signal(name="last_neg"), Signal(name="up_pos"), Signal(name="up_neg")
        hi_neg = Signal(name="hi_neg")
        quotient = Signal(signed(33), name="quotient")   # p >> 31 of the pass just finished, maybe complemented
        m.d.comb += quotient.eq(Cat(p31, high).as_signed())
        # One adder rounds after both passes; its operands are registers, so nothing waits ahead of the chain.
        bumped, rounded = Signal(signed(33), name="bumped"), Signal(signed(33), name="rounded")
        m.d.comb += [bumped.eq(quotient + up_neg.replicate(33).as_signed() + up_pos),
                     rounded.eq(bumped ^ last_neg.replicate(33))]
        # After the first pass only INT32_MIN * INT32_MIN reaches 2**31, where TFLite saturates to INT32_MAX. Not
        # saturating changes no output: with no right shift both clamp to qmax, and with one (r >= 1) 2**31 and
        # 2**31 - 1 round to the same 2**(31 - r).

        with m.If((phase == _PASS1) | (phase == _PASS2)):
            m.d.sync += high.eq(total >> 2)
            with m.If(last_step):
                up = low[0] & Mux(phase == _PASS1, ~(single & right_nz), single | ~hi_neg | ~zero)
                m.d.sync += [p31.eq(total[1]), last_neg.eq(negative),
                             up_pos.eq(up & ~negative), up_neg.eq(up & negative)]
            with m.Else():
                m.d.sync += zero.eq(zero & (low == 0))
        with m.If(load):
            m.d.sync += [high.eq(-1), zero.eq(1)]
        with m.If(phase == _BETWEEN):
            # Double: the saturating rounding doubling high multiply. Single: p >> 31 itself, unless the shift
            # is 0 (then the half-up rounding just done is the result).
            m.d.sync += [held.eq(rounded), hi_neg.eq(rounded < 0), high.eq(-1), zero.eq(1)]

        # Zero point and clamp in 11 bits: a result outside [-256, 255] clamps whatever the int8 zero point, so
        # only its low 10 bits and those two flags are registered (rounding and clamping take a cycle each).
        # The flags of ``value = v0 + u`` (33 bits, as ``rounded``) without its 33-bit carry chain: ``u`` reaches
        # bits 8 and up only as the carry ``c`` out of the low byte, and the flags of ``h + c`` (h = v0's bits 8
        # and up, wrapping like the sum) follow from h's sign and a few all-ones/zero tests.
        v0 = quotient
        u = up_pos                                # the second pass leaves nothing complemented
        h = v0[8:]
        c = Signal()
        m.d.comb += c.eq(u & (v0[:8] == 0xFF))
        h_max = ~h[-1] & (h[:-1] == (1 << (len(h) - 1)) - 1)
        result, above, below = Signal(10, name="result"), Signal(name="above"), Signal(name="below")
        with m.If(phase == _ROUND):
            m.d.sync += [result.eq(rounded[:10]),
                         above.eq(~h[-1] & Mux(c, ~h_max, h != 0)),
                         below.eq(Mux(c, (h[-1] & (h[1:] != (1 << (len(h) - 1)) - 1)) | h_max,
                                      h[-1] & (h != (1 << len(h)) - 1)))]
        biased = Signal(signed(11))
        m.d.comb += biased.eq(result.as_signed() + self.zero_point)
        clamped = Mux(above, self.qmax, Mux(below, self.qmin,
                      Mux(biased < self.qmin, self.qmin, Mux(biased > self.qmax, self.qmax, biased))))
        out = o.payload.data.as_value()
        with m.If(write):
            # Lane 0 is written first and ends at the bottom after ``lanes`` writes.
            m.d.sync += out.eq(Cat(out[8:], clamped[:8]) if lanes > 1 else clamped[:8])
        return m

    def _split_tail(self, m, lane, reg, single, ab3, sat3, truncated, total, right, high4):
        """The ECP5 lane's stages after its product (the plain lane's stages 4 and 5, here three), returning
        stage 6's quotient and rounding increment, which :meth:`_clamp_ecp5` adds. Every shift-only constant is
        decoded ahead from the copies of the shift riding along with the product (``total`` and ``right``, one
        a stage), in steps of one LUT, so that no stage holds more than one carry chain after a shifter and no
        decoder is more than a LUT deep. The same numbers as the plain stages:

        * single rounding: ``r = (ab + 2**(t-1)) >> t`` saturated to int32 (``t = 31 - shift``). Stage 3 holds
          ``2**(t-1)`` and the saturation bounds (``r > INT32_MAX`` iff ``ab >= (2**32 - 1) * 2**(t-1)``,
          ``r < INT32_MIN`` iff ``ab < -(2**32 + 1) * 2**(t-1)``; neither is reachable for ``t > 32`` since
          ``|ab| <= 2**62``), stage 4 adds and compares side by side, stage 5 shifts and selects;
        * double rounding: the rounding divide of ``x`` by ``2**right`` (half away from zero) rounds up iff bit
          ``right - 1`` of ``x`` is set and, for a negative ``x``, a bit below it too: its remainder compared with
          half the divisor without the compare's 32-bit carry chain (that chain after the remainder's mask was
          over 8 ns there). Stage 4 holds that bit's one-hot and the mask of the bits below it, stage 5 ORs each
          with ``x`` a byte at a time, stage 6 combines the bytes and the sign.

        Both modes share one right shift (single: ``sum >> t``; double: ``high >> right``) in two stages, by the
        amount's multiple of 8 in stage 5 and by the rest in stage 6 (a 64-bit shifter in one stage, then a
        saturation and a mode multiplexer, was over 8 ns there).
        """
        en_ops = []

        def decode(value, name):
            """``(greater, equal)``: ``value > k`` and ``value == k`` for k in 0..31 (``value`` 5 bits), each
            one LUT of registers holding its fields' compares (3 bits and fewer: a LUT a bit)."""
            high, low = value[2:5], value[:2]
            gt_high, eq_high = reg(8, f"{name}_gt_high"), reg(8, f"{name}_eq_high")
            gt_low, eq_low = reg(4, f"{name}_gt_low"), reg(4, f"{name}_eq_low")
            en_ops.extend([gt_high[k].eq(high > k) for k in range(8)] + [eq_high[k].eq(high == k) for k in range(8)]
                          + [gt_low[k].eq(low > k) for k in range(4)] + [eq_low[k].eq(low == k) for k in range(4)])
            greater = [gt_high[k >> 2] | (eq_high[k >> 2] & gt_low[k & 3]) for k in range(32)]
            equal = [eq_high[k >> 2] & eq_low[k & 3] for k in range(32)]
            return greater, equal

        # Single rounding's constants, from ``s = (t - 1) mod 64``: registered two stages ahead of the product
        # (a 6-bit decrement), compared field by field in the next, each bit of the constants one LUT of those in
        # the product's stage. Tables of ``t`` there were five LUTs deep.
        t_less1 = reg(6, "t_less1")
        en_ops += [t_less1.eq(total[-4] - 1)]
        t_top = reg(1, "t_top2")                              # s >= 32
        en_ops += [t_top.eq(t_less1[5])]
        s_greater, equal = decode(t_less1[:5], "t2")                                    # s mod 32 > k, == k
        at_most = [~g for g in s_greater]                                               # s mod 32 <= k
        round3 = reg(64, "round3")
        hi3, lo3, can3 = reg(signed(65), "hi3"), reg(signed(66), "lo3"), reg(1, "can_sat3")
        # 2**s; (2**32 - 1) << (s mod 32): ones from bit s mod 32 for 32 bits; -(2**32 + 1) << (s mod 32): ones
        # from bit s mod 32 up but for bit 32 + s mod 32 (the shifters took the amounts modulo 64 and 32); t <= 32.
        en_ops += [round3.eq(Cat(*(equal[j % 32] & (t_top if j >= 32 else ~t_top) for j in range(64)))),
                   hi3.eq(Cat(*at_most, *(~a for a in at_most[:31]))),
                   lo3.eq(Cat(*at_most, *(~e for e in equal), Const(0b11, 2))),
                   can3.eq(~t_top | equal[31])]
        # The rounding divide's masks, from ``right`` a stage ahead of the product, compared field by field in
        # the product's stage as above.
        over, at = decode(right[-2][:5], "r3")                                         # right > k, == k
        # Bit ``right - 1`` (none for no shift) and the bits below it: a one-hot and a thermometer code.
        half4, below4 = reg(31, "half4"), reg(31, "below4")
        en_ops += [half4.eq(Cat(*at[1:])), below4.eq(Cat(*over[1:]))]

        sum4 = reg(signed(65), "sum4")
        # The saturation compares of the 64-bit product, 16 bits at a time (one 66-bit carry chain was about
        # 9 ns in nextpnr's estimate, and the routed build still failed on 33-bit chains of the 32-bit halves):
        # each piece's order and equality, registered, combine in the next stage, most significant piece first.
        def halves(value):
            return value.as_signed() >> 32, value[:32]

        def order(a, b, name):
            """``(greater, equal)`` of ``a`` and ``b`` (both signed, or both unsigned), each a few LUTs of the
            registered compares of their 16-bit pieces (the top piece as signed as they are)."""
            width = max(len(a), len(b))
            signed_ = a.shape().signed
            a = a.as_signed() if signed_ else a
            b = b.as_signed() if signed_ else b
            pieces = [(lo, min(lo + 16, width)) for lo in range(0, width, 16)]
            if pieces[-1][1] - pieces[-1][0] < 2 and len(pieces) > 1:      # no 1-bit top piece
                pieces[-2:] = [(pieces[-2][0], width)]
            greater, equal = Const(0), Const(1)
            for i, (lo, hi) in enumerate(pieces):
                top = hi == width
                pa = Cat(a, a[-1].replicate(width - len(a)))[lo:hi] if signed_ else Cat(a, Const(0, width))[lo:hi]
                pb = Cat(b, b[-1].replicate(width - len(b)))[lo:hi] if signed_ else Cat(b, Const(0, width))[lo:hi]
                if top and signed_:
                    pa, pb = pa.as_signed(), pb.as_signed()
                gt, eq = reg(1, f"{name}_gt{i}"), reg(1, f"{name}_eq{i}")
                en_ops.extend([gt.eq(pa > pb), eq.eq(pa == pb)])
                # Pieces from the least significant up: a higher piece decides unless it is equal.
                greater, equal = gt | (eq & greater), eq & equal
            return greater, equal

        ab_hi, ab_lo = halves(ab3)
        (hi_hi, hi_lo), (lo_hi, lo_lo) = halves(hi3), halves(lo3)
        can4 = reg(1, "can_sat4")
        en_ops += [can4.eq(can3)]
        hi_gt, hi_eq = order(ab_hi, hi_hi, "hi4")
        lo_gt, lo_eq = order(ab_hi, lo_hi, "lo4")
        hi_lo_gt, hi_lo_eq = order(ab_lo, hi_lo, "hi_lo4")
        lo_lo_gt, lo_lo_eq = order(ab_lo, lo_lo, "lo_lo4")
        sat_hi4 = can4 & (hi_gt | (hi_eq & (hi_lo_gt | hi_lo_eq)))                 # ab3 >= hi3
        sat_lo4 = can4 & (~(lo_gt | lo_eq) | (lo_eq & ~(lo_lo_gt | lo_lo_eq)))       # ab3 < lo3
        en_ops += [sum4.eq(ab3 + round3),
                   high4.eq(Mux(sat3, INT32_MAX, truncated))]
        amount4 = reg(range(63), "amount4")
        en_ops += [amount4.eq(Mux(single, total[-1], right[-1]))]

        # The shift's first half keeps the 39 bits the second (at most 7 more) takes its 32 from.
        operand = Mux(single, sum4, high4)
        coarse5, fine5 = reg(39, "coarse5"), reg(3, "fine5")
        sat_hi5, sat_lo5 = reg(1, "sat_hi5"), reg(1, "sat_lo5")
        en_ops += [coarse5.eq((operand >> Cat(Const(0, 3), amount4[3:]))[:39]), fine5.eq(amount4[:3]),
                   sat_hi5.eq(single & sat_hi4), sat_lo5.eq(single & sat_lo4)]
        # The rounding's bytes: the half bit's, the sticky bits', and the sign.
        x = high4.as_unsigned()
        half5, sticky5, neg5 = reg(4, "half5"), reg(4, "sticky5"), reg(1, "neg5")
        en_ops += [half5[g].eq((x[8 * g:8 * g + 8] & half4[8 * g:8 * g + 8]).any()) for g in range(4)]
        en_ops += [sticky5[g].eq((x[8 * g:8 * g + 8] & below4[8 * g:8 * g + 8]).any()) for g in range(4)]
        en_ops += [neg5.eq(x[31])]

        shifted = (coarse5 >> fine5)[:32].as_signed()
        quotient6, up6 = reg(signed(32), "quotient6"), reg(1, "up6")
        en_ops += [quotient6.eq(Mux(sat_hi5, INT32_MAX, Mux(sat_lo5, INT32_MIN, shifted))),
                   up6.eq(~single & half5.any() & (~neg5 | sticky5.any()))]
        m.d.sync += en_ops
        return quotient6, up6

    def _clamp_ecp5(self, m, lane, reg, quotient, up, output, bounds):
        """The ECP5 lane's last stage: ``value = quotient + up`` (stage 6's rounding increment), zero point and
        clamp, into the FIFO's write data (``output`` is combinational) with the registered ``bounds``, see
        :meth:`elaborate`. The stage registers the clamp's two decisions and the biased low byte, so that only a
        multiplexer stands before the FIFO (the add, compares and multiplexers in one stage were over 8 ns)."""
        below_max, high = bounds              # qmin - zero_point - 1, qmax - zero_point
        # A carry chain a flag, the increment in it: 2 * (bound - value) + 1 = (2 * bound + ~up) - (2 * quotient
        # + up), whose sign is that of bound - value.
        twice = Cat(up, quotient).as_signed()
        low_diff = Signal(signed(34), name=f"l{lane}_low_diff")
        high_diff = Signal(signed(34), name=f"l{lane}_high_diff")
        m.d.comb += [low_diff.eq(Cat(~up, below_max).as_signed() - twice),
                     high_diff.eq(Cat(~up, high).as_signed() - twice)]
        below, above, biased = reg(1, "below"), reg(1, "above"), reg(signed(8), "biased")
        # The low byte of value + zero_point: one 9-bit chain, the increment its carry in (up + up at bit 0).
        m.d.sync += [below.eq(~low_diff[-1]), above.eq(high_diff[-1]),
                     biased.eq((Cat(up, quotient[:8]) + Cat(up, self.zero_point))[1:9])]
        m.d.comb += output.data[lane].eq(Mux(below, self.qmin, Mux(above, self.qmax, biased)))
