"""The one description of an accelerator instance.

Gateware, compiler, golden model, cycle model and board builds all read an :class:`AcceleratorConfig`.
Make variants with :func:`dataclasses.replace`, e.g. ``replace(DEFAULT_CONFIG, rows=16)``.
"""

from dataclasses import dataclass

__all__ = ["AcceleratorConfig", "DEFAULT_CONFIG"]


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one accelerator instance.

    Parameters
    ----------
    rows : int
        Rows of the MAC array (output channels computed in parallel).
    cols : int
        Columns of the MAC array (output pixels computed in parallel).
    acc_width : int
        Width of the signed accumulators, in bits. TFLite's integer scheme needs 32.
    """
    rows: int = 8
    cols: int = 8
    acc_width: int = 32

    #: Operand width. The integer scheme is int8 x int8; this is not a knob.
    operand_width = 8

    def __post_init__(self):
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer from 1 to 64, not {value!r}")
        if not isinstance(self.acc_width, int) or not 17 <= self.acc_width <= 48:
            raise ValueError(f"acc_width must be an integer from 17 to 48, not {self.acc_width!r}")

    @property
    def pes(self):
        """Number of processing elements (multipliers) in the MAC array."""
        return self.rows * self.cols


DEFAULT_CONFIG = AcceleratorConfig()
