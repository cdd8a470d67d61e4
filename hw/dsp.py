"""Multiplier primitives chosen by ``config.target``: a pair of registered signed 8x8 products.

:class:`DualMul8` is the unit the systolic array builds its processing elements from. Each cycle ``ce`` is high
it registers ``p0 = a0 * b0`` and ``p1 = a1 * b1`` (signed int8 operands, int16 products), so the products are
valid one cycle after their operands, exactly like the fabric register of a plain ``*``.

``target="ice40"`` builds it from one ``SB_MAC16`` in ``MODE_8x8``: the top multiplier takes ``A[15:8] x B[15:8]``
and the bottom one ``A[7:0] x B[7:0]``; with ``A_SIGNED``/``B_SIGNED`` both are signed, ``TOP/BOT_8x8_MULT_REG``
register the products inside the block and ``TOP/BOTOUTPUT_SELECT=2`` routes those registers straight to
``O[31:16]``/``O[15:0]``. The iCE40UP5K's 8 blocks therefore give 16 products per cycle. Every other target
(and the Amaranth simulator, which cannot run a vendor primitive) gets the plain ``*`` model of the same
latency; tests run the two against each other with yosys's ``cells_sim.v`` under Verilator.

With ``input_registers=True`` the operands are registered first (``A_REG``/``B_REG`` inside the ``SB_MAC16``,
under the same ``ce``), so the products are valid two enabled cycles after their operands: a register stage that
costs no fabric flip-flop.

:class:`DualMac8` keeps the two 16-bit accumulators of the same block too (``TOP/BOTOUTPUT_SELECT=1``, the adders
summing the product registers and the accumulators): the low 16 bits of two accumulators that would otherwise
take 32 fabric flip-flops and a 32-bit carry chain.

Unlike the fabric model, the ``SB_MAC16`` input and product registers are not reset by the ``sync`` reset (their reset
inputs are tied low); the model's registers are reset-less too, so the two agree from the first cycle on any
operands. Users must not rely on the products before the first enabled cycle.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import TARGETS

__all__ = ["DualMul8", "DualMac8", "sb_mac16_8x8"]


def sb_mac16_8x8(a_top, b_top, a_bot, b_bot, p_top, p_bot, ce, input_registers=False, accumulate=None):
    """An ``SB_MAC16`` instance computing two registered signed 8x8 products (see the module docstring); with
    ``accumulate=(hold, load, c_top, c_bot, clear)`` it outputs its two 16-bit accumulators instead, which add
    the products on every enabled cycle without ``hold``, load ``c_top``/``c_bot`` instead with ``load``, and
    read 0 while ``clear`` (the asynchronous ``ORSTTOP/BOT``) is high."""
    out = Signal(32)
    in_reg = Const(int(input_registers), 1)
    zero = (Const(0), Const(0), Const(0, 16), Const(0, 16), Const(0))
    hold, load, c_top, c_bot, clear = accumulate if accumulate is not None else zero
    # OUTPUT_SELECT 2: the product registers; 1: the accumulators, whose adders take the product register
    # (ADDSUB_LOWERINPUT 1) and the accumulator (UPPERINPUT 0) with no carry in (CARRYSELECT 0).
    select, lower = (Const(1, 2), Const(1, 2)) if accumulate is not None else (Const(2, 2), Const(0, 2))
    inst = Instance(
        "SB_MAC16",
        p_NEG_TRIGGER=Const(0, 1),
        p_C_REG=Const(0, 1), p_A_REG=in_reg, p_B_REG=in_reg, p_D_REG=Const(0, 1),
        p_TOP_8x8_MULT_REG=Const(1, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
        p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
        p_TOPOUTPUT_SELECT=select, p_TOPADDSUB_LOWERINPUT=lower,
        p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
        p_BOTOUTPUT_SELECT=select, p_BOTADDSUB_LOWERINPUT=lower,
        p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
        p_MODE_8x8=Const(1, 1), p_A_SIGNED=Const(1, 1), p_B_SIGNED=Const(1, 1),
        i_CLK=ClockSignal("sync"), i_CE=ce,
        i_A=Cat(a_bot, a_top), i_B=Cat(b_bot, b_top),
        i_C=c_top, i_D=c_bot,
        i_AHOLD=Const(0), i_BHOLD=Const(0), i_CHOLD=Const(0), i_DHOLD=Const(0),
        i_IRSTTOP=Const(0), i_IRSTBOT=Const(0), i_ORSTTOP=clear, i_ORSTBOT=clear,
        i_OLOADTOP=load, i_OLOADBOT=load, i_ADDSUBTOP=Const(0), i_ADDSUBBOT=Const(0),
        i_OHOLDTOP=hold, i_OHOLDBOT=hold, i_CI=Const(0), i_ACCUMCI=Const(0), i_SIGNEXTIN=Const(0),
        o_O=out)
    return inst, [p_top.eq(out[16:32].as_signed()), p_bot.eq(out[0:16].as_signed())]


class DualMul8(wiring.Component):
    """Two registered signed 8x8 multipliers sharing one clock enable.

    Parameters
    ----------
    target : str
        One of :data:`cnnacc.config.TARGETS`; ``"ice40"`` builds an ``SB_MAC16``, anything else a plain ``*``.
    input_registers : bool
        Register the operands before the multiply (one more cycle of latency). Default ``False``.

    Members
    -------
    a0, b0, a1, b1 : In(signed(8))
        Operands.
    ce : In(1)
        Clock enable of both product registers.
    p0, p1 : Out(signed(16))
        ``a0 * b0`` and ``a1 * b1`` of the operands as they were on the last enabled clock edge (the one before
        it with ``input_registers``).
    """

    def __init__(self, target="generic", *, input_registers=False):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        self._target = target
        self._input_registers = bool(input_registers)
        super().__init__({
            "a0": In(signed(8)), "b0": In(signed(8)), "a1": In(signed(8)), "b1": In(signed(8)),
            "ce": In(1),
            "p0": Out(signed(16)), "p1": Out(signed(16)),
        })

    @property
    def target(self):
        return self._target

    def elaborate(self, platform):
        m = Module()
        if self._target == "ice40":
            inst, connections = sb_mac16_8x8(self.a1, self.b1, self.a0, self.b0, self.p1, self.p0, self.ce,
                                             self._input_registers)
            m.submodules.mac16 = inst
            m.d.comb += connections
        else:
            # Reset-less like the SB_MAC16 product registers, so both versions behave alike after reset.
            operands = [self.a0, self.b0, self.a1, self.b1]
            if self._input_registers:
                registered = [Signal(signed(8), reset_less=True, name=f"{n}_reg") for n in ("a0", "b0", "a1", "b1")]
                with m.If(self.ce):
                    m.d.sync += [reg.eq(op) for reg, op in zip(registered, operands)]
                operands = registered
            a0, b0, a1, b1 = operands
            r0 = Signal(signed(16), reset_less=True)
            r1 = Signal(signed(16), reset_less=True)
            with m.If(self.ce):
                m.d.sync += [r0.eq(a0 * b0), r1.eq(a1 * b1)]
            m.d.comb += [self.p0.eq(r0), self.p1.eq(r1)]
        return m


class DualMac8(wiring.Component):
    """Two signed 8x8 multiply-accumulates with 16-bit accumulators (wrapping), on one ``SB_MAC16`` for target
    ``"ice40"``, on a plain ``*`` and adders otherwise.

    The operands are registered (``input_registers``), then the products; on every cycle ``ce`` is high and
    ``hold`` low, ``s0 += p0`` and ``s1 += p1`` (modulo ``2**16``), or, with ``load``, ``s0 = c0`` and
    ``s1 = c1`` (the block's accumulator load, which the array uses to shift its sums out). ``clear`` is the
    block's asynchronous output reset: the accumulators read 0 from the cycle it rises, and stay 0 on the clock
    edge that ends a cycle it is high. Drive it from a flip-flop (a glitch would clear them), and never with
    ``ce`` and ``hold`` low in the same cycle: an accumulation on the edge that ends a cleared cycle is lost.

    Parameters
    ----------
    target : str
        One of :data:`cnnacc.config.TARGETS`.

    Members
    -------
    a0, b0, a1, b1 : In(signed(8))
    ce, hold, load, clear : In(1)
    c0, c1 : In(16)
    s0, s1 : Out(16)
        The accumulators' bits.
    """

    def __init__(self, target="generic"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        self._target = target
        super().__init__({
            "a0": In(signed(8)), "b0": In(signed(8)), "a1": In(signed(8)), "b1": In(signed(8)),
            "ce": In(1), "hold": In(1), "load": In(1), "clear": In(1), "c0": In(16), "c1": In(16),
            "s0": Out(16), "s1": Out(16),
        })

    @property
    def target(self):
        return self._target

    def elaborate(self, platform):
        m = Module()
        if self._target == "ice40":
            top, bot = Signal(signed(16)), Signal(signed(16))
            inst, connections = sb_mac16_8x8(self.a1, self.b1, self.a0, self.b0, top, bot, self.ce, True,
                                             accumulate=(self.hold, self.load, self.c1, self.c0, self.clear))
            m.submodules.mac16 = inst
            m.d.comb += connections + [self.s1.eq(top), self.s0.eq(bot)]
            return m
        # The model: input and product registers as in DualMul8, the asynchronous clear as a register that is
        # reset on the edge and masked in the cycle.
        operands = [self.a0, self.b0, self.a1, self.b1]
        registered = [Signal(signed(8), reset_less=True, name=f"{n}_reg") for n in ("a0", "b0", "a1", "b1")]
        p0, p1 = Signal(signed(16), reset_less=True), Signal(signed(16), reset_less=True)
        q0, q1 = Signal(16), Signal(16)
        with m.If(self.ce):
            m.d.sync += [reg.eq(op) for reg, op in zip(registered, operands)]
            m.d.sync += [p0.eq(registered[0] * registered[1]), p1.eq(registered[2] * registered[3])]
        m.d.comb += [self.s0.eq(Mux(self.clear, 0, q0)), self.s1.eq(Mux(self.clear, 0, q1))]
        with m.If(self.clear):
            m.d.sync += [q0.eq(0), q1.eq(0)]
        with m.Elif(self.ce & ~self.hold):
            m.d.sync += [q0.eq(Mux(self.load, self.c0, q0 + p0)), q1.eq(Mux(self.load, self.c1, q1 + p1))]
        return m
