"""One ECP5 ``MULT18X18D`` with its input and output registers: a signed multiply with two cycles of latency.

On the ECP5 the multiply itself is fast; what limits the clock is the routing into the block and out of it
(../shared/TOOLCHAIN.md: a 16x8 array with the product registered in fabric stopped at 108 MHz). With
``REG_INPUTA``/``REG_INPUTB`` and ``REG_OUTPUT`` both ends are registered inside the block, so a fabric path only
ever goes register -> DSP register or DSP register -> fabric register.

Timing relation (both with the primitive and with the model)::

    p(t + 2) = a(t) * b(t)      counting only cycles with ``ce`` high

The registers have no reset (``RST0`` is tied low, ``GSR`` disabled): a user must not read ``p`` before two
enabled cycles have passed, which the systolic array guarantees with its valid flags. The plain model (``*`` and
two registers without reset) has exactly that behaviour, so it can stand in for the primitive in the Amaranth
simulator; ``sim/models/MULT18X18D.v`` is a behavioural Verilog model of the primitive itself for Verilator.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Mult18x18D", "MULT_LATENCY", "booth_digits", "booth_digit_count", "lut_product", "lut_product_stages",
           "delay_line", "dsp_product", "DSP_PRODUCT_STAGES", "DSP_PRODUCT_SPLIT"]

#: Cycles (with ``ce`` high) from the operands to their product.
MULT_LATENCY = 2


class Mult18x18D(wiring.Component):
    """Registered signed multiplier: ``MULT18X18D`` (``primitive=True``) or its behavioural twin.

    Parameters
    ----------
    a_width, b_width : int
        Operand widths, 2 to 18 bits (signed).
    primitive : bool
        Instantiate the ECP5 primitive (for a build, or Verilator with the model) instead of ``*``.

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    ce : In(1)
        Clock enable of both register stages.
    p : Out(signed(a_width + b_width))
        The product of the operands two enabled cycles earlier.
    """

    def __init__(self, a_width, b_width, *, primitive):
        for name, width in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(width, int) or isinstance(width, bool) or not 2 <= width <= 18:
                raise ValueError(f"{name} must be an integer from 2 to 18, not {width!r}")
        self._primitive = bool(primitive)
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "ce": In(1),
            "p": Out(signed(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        if not self._primitive:
            # The same two stages, without reset like the primitive's registers.
            a_reg = Signal.like(self.a, reset_less=True)
            b_reg = Signal.like(self.b, reset_less=True)
            p_reg = Signal.like(self.p, reset_less=True)
            with m.If(self.ce):
                m.d.sync += [a_reg.eq(self.a), b_reg.eq(self.b), p_reg.eq(a_reg * b_reg)]
            m.d.comb += self.p.eq(p_reg)
            return m

        # Operands sign-extended to the block's 18 bits, product taken from its 36.
        a18, b18, p36 = Signal(signed(18)), Signal(signed(18)), Signal(36)
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36[:len(self.p)])]
        ports = {}
        for i in range(18):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = Const(0)
        for i in range(36):
            ports[f"o_P{i}"] = p36[i]
        for i in range(1, 4):
            ports[f"i_CLK{i}"] = Const(0)
            ports[f"i_CE{i}"] = Const(0)
            ports[f"i_RST{i}"] = Const(0)
        registered = {}
        for reg in ("INPUTA", "INPUTB", "OUTPUT"):
            registered[f"p_REG_{reg}_CLK"] = "CLK0"
            registered[f"p_REG_{reg}_CE"] = "CE0"
            registered[f"p_REG_{reg}_RST"] = "RST0"
        m.submodules.mult = Instance(
            "MULT18X18D",
            p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
            p_CLK0_DIV="ENABLED", p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
            i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
            i_CLK0=ClockSignal("sync"), i_CE0=self.ce, i_RST0=Const(0),
            **registered, **ports)
        return m


# --- LUT multipliers for the ECP5 (every MULT18X18D belongs to the MAC array) ----------------------------------

def delay_line(m, en, value, stages, name, reset_less=False):
    """``value`` through ``stages`` registers that move when ``en`` is high (a side signal kept in step with a
    pipelined product); returns the last register. ``reset_less`` for data that means something only beside a
    flag delayed with it."""
    regs = [Signal.like(value, name=f"{name}_{d}", reset_less=reset_less) for d in range(stages)]
    with m.If(en):
        m.d.sync += regs[0].eq(value)
        m.d.sync += [regs[d + 1].eq(regs[d]) for d in range(stages - 1)]
    return regs[-1]


def booth_digit_count(width):
    """Radix-4 Booth digits of a signed ``width``-bit operand."""
    return (width + 1) // 2


def booth_digits(value):
    """Radix-4 Booth recoding of the signed ``value``: ``(neg, one, two)``, each a Value of one bit per digit.

    Digit ``i`` is ``-2 * b[2i+1] + b[2i] + b[2i-1]`` (``b[-1] = 0``, ``b`` sign-extended to an even width), in
    {-2, -1, 0, 1, 2}; it is ``-two * 2 - one`` when ``neg``, else ``two * 2 + one``. The sum of ``digit[i] * 4**i``
    is ``value``. Register the three for :func:`lut_product` (they are a few LUTs deep)."""
    width = len(value)
    n = booth_digit_count(width)
    bits = Cat(Const(0, 1), value, value[-1].replicate(2 * n - width))
    neg, one, two = [], [], []
    for i in range(n):
        b0, b1, b2 = bits[2 * i], bits[2 * i + 1], bits[2 * i + 2]
        neg.append(b2 & ~(b1 & b0))
        one.append(b1 ^ b0)
        two.append((b2 & ~b1 & ~b0) | (~b2 & b1 & b0))
    return Cat(*neg), Cat(*one), Cat(*two)


def lut_product_stages(digits):
    """Register stages :func:`lut_product` takes for a multiplier of ``digits`` Booth digits (the partial
    products and the first additions share the first stage, then one stage per level of the adder tree)."""
    stages, terms = 1, (digits + 1) // 2
    while terms > 1:
        stages, terms = stages + 1, (terms + 1) // 2
    return stages


def lut_product(m, en, a, neg, one, two, *, width, name):
    """``a * b`` in LUTs and carry chains, pipelined, from ``a`` and the Booth digits of ``b``
    (:func:`booth_digits`), all registered by the caller in the same stage. Returns the product (the low ``width``
    bits, signed: give ``len(a) + len(b)`` for the exact product), valid :func:`lut_product_stages` enabled cycles
    after its operands.

    Why this shape: yosys maps a ``*`` or a many-operand sum without DSPs into rows of LUT full adders (about 5,300
    LUT4 for one 32x32 product here, and the deepest path of the requantizer); a Booth digit selects ``0``, ``a``
    or ``2a`` and inverts it in one LUT level, and every register stage after it is one two-operand addition, which
    maps onto a CCU2C carry chain (2 bits per cell, 0.07 ns a cell). A negative digit adds ``~x`` and owes a 1 at
    its weight: those bits ride in the free low bits of the shifted operand of an addition at that weight (a
    pairing of terms ``d`` digits apart leaves ``2d`` zero bits there), and the few left at the root join the last
    addition. Every term is cut to the bits below ``width``: the arithmetic is modulo ``2**width`` throughout.
    """
    n = len(neg)
    terms = []
    for i in range(n):
        sel = Mux(two[i], a.as_signed() << 1, Mux(one[i], a.as_signed(), 0))
        terms.append((Mux(neg[i], ~sel, sel), 2 * i))
    owed = {2 * i: neg[i] for i in range(n)}          # weight -> bit still to add
    level = 0
    while len(terms) > 1 or owed:
        nxt = []
        last = len(terms) <= 2
        for k in range(0, len(terms), 2):
            lo_value, lo_base = terms[k]
            reg = Signal(signed(width - lo_base), name=f"{name}_t{level}_{k // 2}", reset_less=True)
            if k + 1 < len(terms):
                hi_value, hi_base = terms[k + 1]
                gap = hi_base - lo_base
                free = [owed.pop(w) if w in owed else Const(0, 1) for w in range(lo_base, lo_base + gap)]
                total = lo_value + Cat(*free, hi_value).as_signed()
                if last and owed:
                    # What no free bit could carry (the top digit's): a third operand of the root addition.
                    total = total + Cat(*[owed.pop(w) if w in owed else Const(0, 1)
                                          for w in range(lo_base, width)])
            else:
                total = lo_value
                if last and owed:
                    total = total + Cat(*[owed.pop(w) if w in owed else Const(0, 1) for w in range(lo_base, width)])
            with m.If(en):
                # A narrower sum is sign-extended; a wider one is cut (modulo 2**width).
                m.d.sync += reg.eq(total if len(total) <= len(reg) else total[:len(reg)])
            nxt.append((reg, lo_base))
        # The bits still owed travel with their terms.
        for w, bit in list(owed.items()):
            owed[w] = Signal(name=f"{name}_owed{level}_{w}", reset_less=True)
            with m.If(en):
                m.d.sync += owed[w].eq(bit)
        terms = nxt
        level += 1
    assert level == lut_product_stages(n), (level, n)
    return terms[0][0]


# --- a 32x32 product from three MULT18X18D and a small LUT multiplier ---------------------------------------------

#: Where :func:`dsp_product` cuts each operand: low parts of 17 bits (unsigned), high parts of 15 (signed).
DSP_PRODUCT_SPLIT = 17
#: Register stages from :func:`dsp_product`'s operands to its product.
DSP_PRODUCT_STAGES = 5


def dsp_product(m, en, a, b, b_high_digits, *, primitive, name):
    """The exact signed product of two int32 values, ``a * b`` (64 bits), pipelined: valid
    :data:`DSP_PRODUCT_STAGES` enabled cycles after its operands, which the caller registers in one stage, with
    ``b_high_digits``, the :func:`booth_digits` of ``b[17:32]``.

    With ``a = ah * 2**17 + al`` and ``b = bh * 2**17 + bl`` (``al``, ``bl`` unsigned 17 bits; ``ah``, ``bh``
    signed 15)::

        a * b = al * bl + (al * bh + ah * bl) * 2**17 + ah * bh * 2**34

    The three products with a low part take a MULT18X18D each (input and output registers in the block: stages
    1 and 2), whose outputs cross a fabric register (stage 3: the route out of a block takes most of an 8 ns
    cycle); ``ah * bh``, 15x15 bits, is a :func:`lut_product` of three stages. ``al * bl`` is below ``2**34`` and
    ``ah * bh * 2**34`` has no bits there, so the two only need placing side by side: stage 4 adds the two middle
    products, stage 5 adds that sum to the pair. Two carry chains where a 32x32 LUT multiplier has four levels of
    them, and 2,000-odd fewer LUTs per product (docs/decisions.md, session 10).

    ``primitive`` instantiates the blocks (a build, or Verilator with sim/models/MULT18X18D.v); without it they
    are :class:`Mult18x18D`'s model, for the Amaranth simulator.
    """
    k = DSP_PRODUCT_SPLIT
    assert len(a) == len(b) == 32, (len(a), len(b))
    al, ah = Cat(a[:k], Const(0, 1)).as_signed(), a[k:].as_signed()
    bl, bh = Cat(b[:k], Const(0, 1)).as_signed(), b[k:].as_signed()

    def block(x, y, tag):
        mult = m.submodules[f"{name}_{tag}"] = Mult18x18D(len(x), len(y), primitive=primitive)
        m.d.comb += [mult.a.eq(x), mult.b.eq(y), mult.ce.eq(en)]
        copy = Signal.like(mult.p, name=f"{name}_{tag}_q", reset_less=True)
        with m.If(en):
            m.d.sync += copy.eq(mult.p)
        return copy

    low, mid_a, mid_b = block(al, bl, "ll"), block(al, bh, "lh"), block(ah, bl, "hl")
    # ``a``'s high part is the caller's register, like the digits: the LUT product's three stages end beside the
    # blocks' fabric copies.
    neg, one, two = b_high_digits
    assert lut_product_stages(len(neg)) == 3, len(neg)
    high = lut_product(m, en, ah, neg, one, two, width=2 * (32 - k), name=f"{name}_hh")
    # Stage 4: the middle sum (34 bits), and the outer products side by side; stage 5: the product.
    mid = Signal(signed(len(mid_a) + 1), name=f"{name}_mid", reset_less=True)
    outer = Signal(signed(64), name=f"{name}_outer", reset_less=True)
    product = Signal(signed(64), name=f"{name}_p", reset_less=True)
    with m.If(en):
        m.d.sync += [mid.eq(mid_a + mid_b), outer.eq(Cat(low[:2 * k], high).as_signed())]
        m.d.sync += product.eq((outer + (mid << k))[:64].as_signed())
    return product
