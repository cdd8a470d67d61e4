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
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer", "lane_params_layout", "requant_input_layout", "requant_output_layout",
           "REQUANT_LATENCY", "SHIFT_MIN", "SHIFT_MAX"]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
SHIFT_MIN, SHIFT_MAX = -31, 30
#: Register stages from an accepted input to the output register (cycles, without back-pressure).
REQUANT_LATENCY = 6


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


class Requantizer(wiring.Component):
    """TFLite integer requantization of ``lanes`` accumulators per cycle.

    Parameters
    ----------
    lanes : int
        Channels per beat (``config.lanes`` for the vector engines, ``config.rows`` behind the array).
    tag_width : int
        Width of an opaque tag carried from each input beat to its output beat (0 for none).
    split_product : bool
        Build the 32x32 multiply from LUTs in two halves (``config.target == "ecp5"``, whose multiplier blocks
        all go to the MAC array): stage 2 registers eight 32x4 partial products of the shifted value, stage 3
        adds them. Same numbers, same cycles; without it stage 3 is one ``*`` (a DSP block where there is one).

    Members
    -------
    i_acc : In(stream.Signature(requant_input_layout(lanes, tag_width)))
    o_data : Out(stream.Signature(requant_output_layout(lanes, tag_width)))
    single_rounding : In(1)
        0: TFLite's double rounding; 1: single rounding. Layer-constant: change only while the pipeline is empty.
    zero_point, qmin, qmax : In(signed(8))
        Output zero point and clamp bounds (ReLU/ReLU6 are clamp bounds). Layer-constant, as above.
    """

    def __init__(self, lanes, tag_width=0, *, split_product=False):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or not 1 <= lanes <= 64:
            raise ValueError(f"lanes must be an integer from 1 to 64, not {lanes!r}")
        if not isinstance(tag_width, int) or tag_width < 0:
            raise ValueError(f"tag_width must be a non-negative integer, not {tag_width!r}")
        self._lanes = lanes
        self._tag_width = tag_width
        self._split_product = bool(split_product)
        super().__init__({
            "i_acc": In(stream.Signature(requant_input_layout(lanes, tag_width))),
            "o_data": Out(stream.Signature(requant_output_layout(lanes, tag_width))),
            "single_rounding": In(1),
            "zero_point": In(signed(8)),
            "qmin": In(signed(8)),
            "qmax": In(signed(8)),
        })

    @property
    def lanes(self):
        return self._lanes

    def elaborate(self, platform):
        m = Module()

        # One enable for every stage: the pipeline moves whenever the output register is free or being taken.
        # This keeps one result per cycle and makes back-pressure a plain stall.
        en = Signal()
        m.d.comb += [en.eq(~self.o_data.valid | self.o_data.ready), self.i_acc.ready.eq(en)]

        stages = REQUANT_LATENCY
        valid = [Signal(name=f"valid_{i}") for i in range(stages - 1)]
        tags = [Signal(self._tag_width, name=f"tag_{i}") for i in range(stages - 1)]
        with m.If(en):
            m.d.sync += [valid[0].eq(self.i_acc.valid), self.o_data.valid.eq(valid[-1])]
            m.d.sync += [valid[i + 1].eq(valid[i]) for i in range(stages - 2)]
            if self._tag_width:
                m.d.sync += [tags[0].eq(self.i_acc.payload.tag), self.o_data.payload.tag.eq(tags[-1])]
                m.d.sync += [tags[i + 1].eq(tags[i]) for i in range(stages - 2)]

        for lane in range(self._lanes):
            self._lane(m, en, lane)
        return m

    def _lane(self, m, en, lane):
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
            if not self._split_product:
                m.d.sync += [a2.eq(shifted), m2.eq(m1)]
                m.d.sync += [ab3.eq(a2 * m2), sat3.eq((a2 == INT32_MIN) & (m2 == INT32_MIN) & ~single)]
            else:
                # m = sum(digit[i] * 16**i), digits 0..6 unsigned, digit 7 signed: each partial product is a
                # 32x4 multiply (a shallow adder tree), registered; stage 3 is one eight-term sum.
                sat2 = reg(1, "sat2")
                partial = []
                for i in range(8):
                    digit = m1[4 * i:4 * i + 4]
                    digit = digit.as_signed() if i == 7 else digit
                    pp = reg(signed(36), f"pp2_{i}")
                    m.d.sync += pp.eq(shifted * digit)
                    partial.append(pp)
                m.d.sync += sat2.eq((shifted == INT32_MIN) & (m1 == INT32_MIN) & ~single)
                m.d.sync += [ab3.eq(sum(pp << (4 * i) for i, pp in enumerate(partial))[:64].as_signed()),
                             sat3.eq(sat2)]

            # gemmlowp: nudge by +/- 2**30, then divide by 2**31 truncating toward zero.
            nudged = Signal(signed(65), name=f"l{lane}_nudged")
            m.d.comb += nudged.eq(ab3 + Mux(ab3 >= 0, 1 << 30, 1 - (1 << 30)))
            truncated = Signal(signed(65), name=f"l{lane}_truncated")
            if not self._split_product:
                m.d.comb += truncated.eq((nudged + Mux(nudged < 0, (1 << 31) - 1, 0)) >> 31)
            else:
                # The same number with one adder: the nudge and the truncation toward zero add 2**30 together
                # for either sign (ab >= 0: 2**30; ab < 0: 1 - 2**30, then 2**31 - 1).
                m.d.comb += truncated.eq((ab3 + (1 << 30)) >> 31)
            if not self._split_product:
                # Single rounding: add half of the divisor, arithmetic shift, saturate.
                rounded = Signal(signed(65), name=f"l{lane}_rounded")
                m.d.comb += rounded.eq((ab3 + (Const(1, 64) << (total3 - 1)[:6])) >> total3)
                saturated = Mux(rounded > INT32_MAX, INT32_MAX, Mux(rounded < INT32_MIN, INT32_MIN, rounded))
                m.d.sync += [
                    high4.eq(Mux(single, saturated, Mux(sat3, INT32_MAX, truncated))),
                    right4.eq(Mux(single, 0, right3)),
                ]

                mask = Signal(32, name=f"l{lane}_mask")
                m.d.comb += mask.eq((Const(1, 33) << right4) - 1)
                remainder = Signal(32, name=f"l{lane}_remainder")
                m.d.comb += remainder.eq(high4.as_unsigned() & mask)
                threshold = Signal(33, name=f"l{lane}_threshold")
                m.d.comb += threshold.eq((mask >> 1) + (high4 < 0))
                m.d.sync += scaled5.eq((high4 >> right4) + (remainder > threshold))
            else:
                self._split_tail(m, lane, reg, single, ab3, sat3, truncated, total2, total3, right3, high4, right4,
                                 scaled5)

            biased = Signal(signed(34), name=f"l{lane}_biased")
            m.d.comb += biased.eq(scaled5 + self.zero_point)
            clamped = Mux(biased < self.qmin, self.qmin, Mux(biased > self.qmax, self.qmax, biased))
            m.d.sync += self.o_data.payload.data[lane].eq(clamped[:8])

    def _split_tail(self, m, lane, reg, single, ab3, sat3, truncated, total2, total3, right3, high4, right4,
                    scaled5):
        """Stages 4 and 5 with every shift-only constant decoded a stage early, so that no stage holds more than
        one carry chain after a shifter (the LUT-built ECP5 pipeline). The same numbers as the plain stages:

        * single rounding: ``r = (ab + 2**(t-1)) >> t`` saturated to int32 (``t = 31 - shift``). Stage 3 decodes
          ``2**(t-1)`` and the saturation bounds (``r > INT32_MAX`` iff ``ab >= (2**32 - 1) * 2**(t-1)``,
          ``r < INT32_MIN`` iff ``ab < -(2**32 + 1) * 2**(t-1)``; neither is reachable for ``t > 32`` since
          ``|ab| <= 2**62``), stage 4 adds and compares side by side, stage 5 shifts and selects;
        * double rounding: stage 4 decodes the divide's mask and its two thresholds (``mask >> 1`` and that plus
          one, for negative values), stage 5 compares the remainder and shifts side by side, then adds.
        """
        en_ops = []
        round3 = reg(64, "round3")
        hi3, lo3, can3 = reg(signed(65), "hi3"), reg(signed(66), "lo3"), reg(1, "can_sat3")
        t1 = (total2 - 1)[:5]
        en_ops += [round3.eq(Const(1, 64) << (total2 - 1)[:6]),
                   hi3.eq(Const((1 << 32) - 1, 33) << t1),
                   lo3.eq(Const(-((1 << 32) + 1), signed(34)) << t1),
                   can3.eq(total2 <= 32)]
        sum4, total4 = reg(signed(65), "sum4"), reg(range(63), "total4")
        sat_hi4, sat_lo4 = reg(1, "sat_hi4"), reg(1, "sat_lo4")
        mask4, half4, halfp4 = reg(32, "mask4"), reg(32, "half4"), reg(33, "halfp4")
        en_ops += [sum4.eq(ab3 + round3), total4.eq(total3),
                   sat_hi4.eq(can3 & (ab3 >= hi3)), sat_lo4.eq(can3 & (ab3 < lo3)),
                   high4.eq(Mux(sat3, INT32_MAX, truncated)), right4.eq(right3)]
        # Thermometer codes and a one-hot: decoders, no adders.
        en_ops += [mask4[i].eq(right3 > i) for i in range(32)]
        en_ops += [half4[i].eq(right3 > i + 1) for i in range(32)]
        en_ops += [halfp4.eq(Mux(right3 == 0, 1, Const(1, 33) << (right3 - 1)[:5]))]

        remainder = Signal(32, name=f"l{lane}_remainder")
        m.d.comb += remainder.eq(high4.as_unsigned() & mask4)
        up = Mux(high4 < 0, remainder > halfp4, remainder > half4)
        double_result = (high4 >> right4) + up
        shifted = (sum4 >> total4)[:32].as_signed()
        single_result = Mux(sat_hi4, INT32_MAX, Mux(sat_lo4, INT32_MIN, shifted))
        en_ops += [scaled5.eq(Mux(single, single_result, double_result))]
        m.d.sync += en_ops
