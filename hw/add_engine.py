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
from .window_generator import pixel_layout

__all__ = ["AddEngine", "add_layer_layout", "add_layer", "ADD_LATENCY", "LEFT_SHIFT"]

LEFT_SHIFT = 20
ADD_LATENCY = 7


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


def _high_mul_split(m, en, a, b, name, *, a_zero_bits=0):
    """:func:`_high_mul` for LUT multipliers (``target == "ecp5"``), the same two stages and numbers.

    Stage 1 registers eight 4-bit-digit partial products of ``a * b`` (each a shallow adder tree; ``a``'s
    ``a_zero_bits`` low bits, known to be zero, are left out of them), stage 2 adds them with the nudge in one
    sum. The nudge and the truncation toward zero of SRDHM together are ``floor((ab + 2**30) / 2**31)`` for either
    sign of ``ab``: ``ab >= 0`` adds ``2**30``; ``ab < 0`` adds ``1 - 2**30`` and, to truncate toward zero,
    ``2**31 - 1``, which is ``2**30`` again."""
    narrow = a[a_zero_bits:].as_signed() if a_zero_bits else a
    partial = []
    with m.If(en):
        for i in range(8):
            digit = b[4 * i:4 * i + 4]
            digit = digit.as_signed() if i == 7 else digit
            pp = Signal(signed(len(narrow) + 4), name=f"{name}_pp{i}")
            m.d.sync += pp.eq(narrow * digit)
            partial.append(pp)
    high = Signal(signed(32), name=f"{name}_high")
    total = sum(pp << (4 * i + a_zero_bits) for i, pp in enumerate(partial)) + (1 << 30)
    with m.If(en):
        m.d.sync += high.eq(total[31:64])
    return high


def _rounding_divide(m, x, right, name):
    """RoundingDivideByPOT, combinational: ``x / 2**right`` rounded to nearest, ties away from zero."""
    mask = Signal(32, name=f"{name}_mask")
    m.d.comb += mask.eq((Const(1, 33) << right) - 1)
    remainder = Signal(32, name=f"{name}_rem")
    m.d.comb += remainder.eq(x.as_unsigned() & mask)
    threshold = Signal(33, name=f"{name}_thr")
    m.d.comb += threshold.eq((mask >> 1) + (x < 0))
    return (x >> right) + (remainder > threshold)


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

        valid = [Signal(name=f"valid_{i}") for i in range(ADD_LATENCY - 1)]
        with m.If(en):
            m.d.sync += [valid[0].eq(take), self.o_pixels.valid.eq(valid[-1])]
            m.d.sync += [valid[i + 1].eq(valid[i]) for i in range(ADD_LATENCY - 2)]

        # Target "ecp5": the MAC array takes the multiplier blocks, these products are LUTs (see _high_mul_split).
        split = self._config.target == "ecp5"
        for lane in range(self._config.lanes):
            name = f"l{lane}"
            a1, b1 = Signal(signed(32), name=f"{name}_a1"), Signal(signed(32), name=f"{name}_b1")
            with m.If(en):
                m.d.sync += [a1.eq((self.i_a.payload[lane] - layer.zp1) << LEFT_SHIFT),
                             b1.eq((self.i_b.payload[lane] - layer.zp2) << LEFT_SHIFT)]
            if split:                                                  # stages 2, 3
                ha = _high_mul_split(m, en, a1, layer.m1, f"{name}_a", a_zero_bits=LEFT_SHIFT)
                hb = _high_mul_split(m, en, b1, layer.m2, f"{name}_b", a_zero_bits=LEFT_SHIFT)
            else:
                ha = _high_mul(m, en, a1, layer.m1, f"{name}_a")
                hb = _high_mul(m, en, b1, layer.m2, f"{name}_b")
            total = Signal(signed(32), name=f"{name}_sum")            # stage 4
            with m.If(en):
                m.d.sync += total.eq(_rounding_divide(m, ha, layer.s1, f"{name}_da")
                                     + _rounding_divide(m, hb, layer.s2, f"{name}_db"))
            ho = (_high_mul_split if split else _high_mul)(m, en, total, layer.mo, f"{name}_o")   # stages 5, 6
            out = Signal(signed(34), name=f"{name}_out")
            m.d.comb += out.eq(_rounding_divide(m, ho, layer.so, f"{name}_do") + layer.zp_out)
            clamped = Mux(out < layer.qmin, layer.qmin, Mux(out > layer.qmax, layer.qmax, out))
            with m.If(en):                                             # stage 7
                m.d.sync += self.o_pixels.payload[lane].eq(clamped[:8])
        return m
