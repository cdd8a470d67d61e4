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

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Mult18x18D", "MULT_LATENCY"]

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
