"""Residual add engine: TFLite's integer ADD of two int8 pixel streams, ``lanes`` channels per cycle.

Per lane, bit for bit as :func:`cnnacc.host.golden.add` (TFLite ``reference_integer_ops::Add``, left shift 20)::

    a      = (x1 - zp1) << 20                    b = (x2 - zp2) << 20
    sa     = RoundingDivideByPOT(SRDHM(a, m1), -s1)
    sb     = RoundingDivideByPOT(SRDHM(b, m2), -s2)
    out    = clamp(RoundingDivideByPOT(SRDHM(sa + sb, mo), -so) + zp_out, qmin, qmax)

All three multipliers are "smaller than one" (shifts from -31 to 0), as TFLite requires of ADD. The saturating
case of SRDHM cannot occur: its inputs are never INT32_MIN here (|a|, |b| <= 255 << 20, and |sa + sb| < 2**31).

The two inputs arrive in the same order (the channel-group plane order of the window generator), one pixel of
each per beat. Pipeline: offset and shift | two products | two high parts | two divides and the sum | output
product | high part | divide, zero point, clamp: seven stages, one result per cycle per lane, stalled as a whole
by back-pressure.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from ..host.quant import quantize_multiplier_smaller_than_one_exp
from .dsp_ecp5 import booth_digit_count, booth_digits, lut_product
from .requantizer import rounding_divide
from .window_generator import pixel_layout

__all__ = ["AddEngine", "add_layer_layout", "add_layer", "add_latency", "ADD_LATENCY", "LEFT_SHIFT"]

LEFT_SHIFT = 20
#: Pipeline stages of the generic engine; see :func:`add_latency` for a target's.
ADD_LATENCY = 7
#: Stages of the ECP5 engine (see :meth:`AddEngine._ecp5_lane`).
_ECP5_ADD_LATENCY = 16


def add_latency(config):
    """Pipeline stages (cycles from a beat taken to its result in the output register) of the add engine built
    for ``config``: :data:`ADD_LATENCY`, or 16 on the ECP5, whose LUT products take one adder level a stage."""
    return _ECP5_ADD_LATENCY if config.target == "ecp5" else ADD_LATENCY


def add_layer_layout(config):
    """Runtime parameters of one add layer; ``count`` is the number of pixel beats (pixels x channel groups)."""
    return data.StructLayout({
        "count": 32,
        "zp1": signed(8), "zp2": signed(8), "zp_out": signed(8),
        "m1": signed(32), "m2": signed(32), "mo": signed(32),
        "s1": range(32), "s2": range(32), "so": range(32),     # right shifts: -shift
        "qmin": signed(8), "qmax": signed(8),
    })


def add_layer(spec1, spec2, out_spec, *, count, qmin=-128, qmax=127, name="add"):
    """The descriptor (a dict) of an add layer from the three tensors' scales and zero points, computed as
    TFLite does (and as :func:`cnnacc.host.golden.add`)."""
    if count < 1 or count >= 1 << 32:
        raise ValueError(f"{name}: pixel count must be from 1 to 2**32 - 1, not {count}")
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"{name}: activation range must satisfy -128 <= qmin <= qmax <= 127")
    twice_max = 2 * max(float(spec1.scale), float(spec2.scale))
    try:
        m1, s1 = quantize_multiplier_smaller_than_one_exp(float(spec1.scale) / twice_max)
        m2, s2 = quantize_multiplier_smaller_than_one_exp(float(spec2.scale) / twice_max)
        mo, so = quantize_multiplier_smaller_than_one_exp(twice_max / ((1 << LEFT_SHIFT) * float(out_spec.scale)))
    except ValueError as exc:
        raise ValueError(f"{name}: these scales need an ADD multiplier outside (0, 1): {exc}") from None
    for s in (s1, s2, so):
        if not -31 <= s <= 0:
            raise ValueError(f"{name}: ADD shift {s} is outside [-31, 0]")
    return {"count": count, "zp1": spec1.zero_point, "zp2": spec2.zero_point, "zp_out": out_spec.zero_point,
            "m1": m1, "m2": m2, "mo": mo, "s1": -s1, "s2": -s2, "so": -so, "qmin": qmin, "qmax": qmax}


def _high_mul(m, en, a, b, name):
    """Two stages of SaturatingRoundingDoublingHighMul (no saturating case): the product, then
    ``(ab + nudge) / 2**31`` truncated toward zero. Returns the registered result."""
    ab = Signal(signed(64), name=f"{name}_ab")
    high = Signal(signed(32), name=f"{name}_high")
    nudged = Signal(signed(65), name=f"{name}_nudged")
    m.d.comb += nudged.eq(ab + Mux(ab >= 0, 1 << 30, 1 - (1 << 30)))
    with m.If(en):
        m.d.sync += [ab.eq(a * b), high.eq((nudged + Mux(nudged < 0, (1 << 31) - 1, 0)) >> 31)]
    return high


class AddEngine(wiring.Component):
    """Elementwise integer ADD.

    Members
    -------
    i_layer : In(stream.Signature(add_layer_layout(config)))
        Accepted when the engine is idle; then exactly ``count`` beats are taken from each input.
    i_a, i_b : In(stream.Signature(pixel_layout(config)))
    o_pixels : Out(stream.Signature(pixel_layout(config)))
    """

    def __init__(self, config):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i_layer": In(stream.Signature(add_layer_layout(config))),
            "i_a": In(stream.Signature(pixel_layout(config))),
            "i_b": In(stream.Signature(pixel_layout(config))),
            "o_pixels": Out(stream.Signature(pixel_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        layer = Signal(add_layer_layout(self._config))
        remaining = Signal(33)
        m.d.comb += self.i_layer.ready.eq(remaining == 0)
        with m.If(self.i_layer.valid & self.i_layer.ready):
            m.d.sync += [layer.eq(self.i_layer.payload), remaining.eq(self.i_layer.payload.count)]

        en = Signal()
        take = Signal()
        m.d.comb += [
            en.eq(~self.o_pixels.valid | self.o_pixels.ready),
            take.eq(en & (remaining != 0) & self.i_a.valid & self.i_b.valid),
            self.i_a.ready.eq(take), self.i_b.ready.eq(take),
        ]
        with m.If(take):
            m.d.sync += remaining.eq(remaining - 1)

        latency = add_latency(self._config)
        valid = [Signal(name=f"valid_{i}") for i in range(latency - 1)]
        with m.If(en):
            m.d.sync += [valid[0].eq(take), self.o_pixels.valid.eq(valid[-1])]
            m.d.sync += [valid[i + 1].eq(valid[i]) for i in range(latency - 2)]

        if self._config.target == "ecp5":
            self._ecp5_lanes(m, en, layer)
            return m
        for lane in range(self._config.lanes):
            name = f"l{lane}"
            a1, b1 = Signal(signed(32), name=f"{name}_a1"), Signal(signed(32), name=f"{name}_b1")
            with m.If(en):
                m.d.sync += [a1.eq((self.i_a.payload[lane] - layer.zp1) << LEFT_SHIFT),
                             b1.eq((self.i_b.payload[lane] - layer.zp2) << LEFT_SHIFT)]
            ha = _high_mul(m, en, a1, layer.m1, f"{name}_a")              # stages 2, 3
            hb = _high_mul(m, en, b1, layer.m2, f"{name}_b")
            total = Signal(signed(32), name=f"{name}_sum")            # stage 4
            with m.If(en):
                m.d.sync += total.eq(rounding_divide(m, ha, layer.s1, f"{name}_da")
                                     + rounding_divide(m, hb, layer.s2, f"{name}_db"))
            ho = _high_mul(m, en, total, layer.mo, f"{name}_o")                 # stages 5, 6
            out = Signal(signed(34), name=f"{name}_out")
            m.d.comb += out.eq(rounding_divide(m, ho, layer.so, f"{name}_do") + layer.zp_out)
            clamped = Mux(out < layer.qmin, layer.qmin, Mux(out > layer.qmax, layer.qmax, out))
            with m.If(en):                                             # stage 7
                m.d.sync += self.o_pixels.payload[lane].eq(clamped[:8])
        return m

    def _ecp5_lanes(self, m, en, layer):
        """Target "ecp5": the same numbers in 16 stages, every product a LUT Booth multiply
        (:func:`~.dsp_ecp5.lut_product`, one adder level a stage) and every rounding divide split in two:

        1. ``d = x - zp`` for both inputs, with its Booth digits (5: ``d`` is 9 bits);
        2-4. ``d * m`` (42 bits); since ``(x - zp) << 20`` has 20 zero bits, SRDHM of it is
           ``floor((d * m + 2**10) / 2**11)`` (the nudge and the truncation toward zero are ``+ 2**30`` for either
           sign, then divide by ``2**20`` exactly);
        5. that high part; 6. the divide's shift and its rounding bit; 7. their sum; 8. ``sa + sb``;
        9-12. ``total * mo`` (``mo``'s Booth digits are a layer constant); 13. its high part;
        14. shift and rounding bit; 15. plus the output zero point; 16. clamp.

        The divides' masks and thresholds are decoded from the layer's shifts, which stay put while a layer runs.
        """
        digits = booth_digit_count(32)
        mo_neg, mo_one, mo_two = (Signal(digits, name=f"mo_{n}") for n in ("neg", "one", "two"))
        m.d.sync += [r.eq(v) for r, v in zip((mo_neg, mo_one, mo_two), booth_digits(layer.mo))]

        def divide_constants(right, name):
            mask, half, halfp = Signal(32, name=f"{name}_mask"), Signal(32, name=f"{name}_half"), \
                Signal(33, name=f"{name}_halfp")
            m.d.sync += [mask[i].eq(right > i) for i in range(32)]
            m.d.sync += [half[i].eq(right > i + 1) for i in range(32)]
            m.d.sync += halfp.eq(Mux(right == 0, 1, Const(1, 33) << (right - 1)[:5]))
            return mask, half, halfp

        constants = {k: divide_constants(getattr(layer, k), k) for k in ("s1", "s2", "so")}

        def reg(shape, name, value):
            r = Signal(shape, name=name)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        def divide(x, key, name):
            """Stages: shift and rounding bit, then their sum (RoundingDivideByPOT, ties away from zero)."""
            mask, half, halfp = constants[key]
            right = getattr(layer, key)
            remainder = x.as_unsigned() & mask
            up = reg(1, f"{name}_up", Mux(x < 0, remainder > halfp, remainder > half))
            shifted = reg(signed(32), f"{name}_shifted", x >> right)
            return shifted, up

        for lane in range(self._config.lanes):
            name = f"l{lane}"
            highs = []
            for side, pixel, zp, mult, key in (("a", self.i_a, layer.zp1, layer.m1, "s1"),
                                               ("b", self.i_b, layer.zp2, layer.m2, "s2")):
                n = f"{name}_{side}"
                centred = Signal(signed(9), name=f"{n}_d")
                neg, one, two = (Signal(booth_digit_count(9), name=f"{n}_{k}") for k in ("neg", "one", "two"))
                with m.If(en):
                    m.d.sync += centred.eq(pixel.payload[lane] - zp)                       # stage 1
                    m.d.sync += [r.eq(v) for r, v in zip((neg, one, two), booth_digits(pixel.payload[lane] - zp))]
                product = lut_product(m, en, mult, neg, one, two, width=42, name=f"{n}_p")   # stages 2-4
                high = reg(signed(32), f"{n}_high", ((product + (1 << 10)) >> 11)[:32])       # stage 5
                shifted, up = divide(high, key, n)                                             # stage 6
                highs.append(reg(signed(32), f"{n}_r", shifted + up))                          # stage 7
            total = reg(signed(32), f"{name}_sum", (highs[0] + highs[1])[:32])                 # stage 8
            product = lut_product(m, en, total, mo_neg, mo_one, mo_two, width=64, name=f"{name}_o_p")  # 9-12
            high = reg(signed(32), f"{name}_o_high", ((product + (1 << 30)) >> 31)[:32])      # stage 13
            shifted, up = divide(high, "so", f"{name}_o")                                      # stage 14
            out = reg(signed(34), f"{name}_out", shifted + up + layer.zp_out)                  # stage 15
            clamped = Mux(out < layer.qmin, layer.qmin, Mux(out > layer.qmax, layer.qmax, out))
            with m.If(en):                                                                     # stage 16
                m.d.sync += self.o_pixels.payload[lane].eq(clamped[:8])
