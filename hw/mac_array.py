"""Outer-product int8 MAC array: the first compute block of the accelerator.

Every cycle the array takes one column of activations ``act[rows]`` and one row of weights ``wgt[cols]`` and
adds their outer product into ``rows x cols`` int32 accumulators. Over ``K`` beats it computes the matrix
product ``C = A @ B`` of an ``rows x K`` and a ``K x cols`` int8 matrix. ``first`` clears the accumulators
before the beat's product is added; ``last`` hands the finished sums to the output stream while the next
product already starts accumulating, so back-to-back products lose no cycle.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig

__all__ = ["MacArray", "operand_layout", "result_layout"]


def operand_layout(config):
    """Layout of one input beat: an activation column, a weight row, and the framing flags."""
    return data.StructLayout({
        "act":   data.ArrayLayout(signed(config.operand_width), config.rows),
        "wgt":   data.ArrayLayout(signed(config.operand_width), config.cols),
        "first": 1,
        "last":  1,
    })


def result_layout(config):
    """Layout of one output beat: the whole ``rows x cols`` block of accumulators, row-major."""
    return data.ArrayLayout(data.ArrayLayout(signed(config.acc_width), config.cols), config.rows)


class MacArray(wiring.Component):
    """Outer-product array of int8 x int8 -> int32 multiply-accumulate cells.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``rows``, ``cols`` and ``acc_width``.

    Members
    -------
    i_operands : In(stream.Signature(operand_layout(config)))
        One beat per reduction step.
    o_result : Out(stream.Signature(result_layout(config)))
        One beat per ``last`` input beat. Accumulators wrap modulo ``2**acc_width``, as int32 arithmetic does.
    """

    def __init__(self, config):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i_operands": In(stream.Signature(operand_layout(config))),
            "o_result":   Out(stream.Signature(result_layout(config))),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config

        acc = [[Signal(signed(cfg.acc_width), name=f"acc_{r}_{c}") for c in range(cfg.cols)]
               for r in range(cfg.rows)]

        # A last beat overwrites the output register, so it may only enter once that is free (or being taken
        # this very cycle); other beats only touch the accumulators and may always enter.
        beat = self.i_operands.payload
        out_free = ~self.o_result.valid | self.o_result.ready
        m.d.comb += self.i_operands.ready.eq(out_free | ~beat.last)

        with m.If(self.o_result.valid & self.o_result.ready):
            m.d.sync += self.o_result.valid.eq(0)

        with m.If(self.i_operands.valid & self.i_operands.ready):
            for r in range(cfg.rows):
                for c in range(cfg.cols):
                    product = beat.act[r] * beat.wgt[c]
                    total = Signal(signed(cfg.acc_width), name=f"sum_{r}_{c}")
                    m.d.comb += total.eq(product + Mux(beat.first, 0, acc[r][c]))
                    m.d.sync += acc[r][c].eq(total)
                    with m.If(beat.last):
                        m.d.sync += self.o_result.payload[r][c].eq(total)
            with m.If(beat.last):
                m.d.sync += self.o_result.valid.eq(1)

        return m
