"""The one description of an accelerator instance.

Gateware, compiler, golden model, cycle model and board builds all read an :class:`AcceleratorConfig`.
Make variants with :func:`dataclasses.replace`, e.g. ``replace(DEFAULT_CONFIG, rows=16)``.
"""

from dataclasses import dataclass

__all__ = ["AcceleratorConfig", "DEFAULT_CONFIG", "ENGINES", "TARGETS"]

#: Every engine an accelerator can be built with (see hw/accelerator.py).
ENGINES = ("conv", "depthwise", "pool", "add")
#: What the multipliers can be built from (see ``AcceleratorConfig.target``).
TARGETS = ("generic", "ice40", "ecp5")


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
    lanes : int
        Channels processed in parallel by the vector engines (requantizer, pooling, depthwise, window
        generator).
    max_kernel : int
        Largest convolution/pooling kernel side the window generator supports.
    pool_kernel : int
        Largest pooling window side, when the pool engine is built for less than ``max_kernel`` (0: as
        ``max_kernel``). Its window registers and tap trees grow with the square of this side; the compiler
        refuses a larger window and runs a whole-map average on the global divider.
    max_width : int
        Widest feature map row (pixels) the line buffers hold.
    conv_act_depth, conv_weight_depth, conv_param_depth : int
        Words in the convolution engine's input map banks, weight memory (``rows`` int8 a word) and
        requantization parameter memory (``rows`` channels a word); see hw/conv_engine.py.
    vector_depth : int
        Rows (one pixel of ``lanes`` channels each) of each feature map memory of the vector engines
        (depthwise, pooling, add) and of the output memory.
    engines : tuple of str
        Engines the accelerator is built with, from :data:`ENGINES`; ``"conv"`` is always there. A small part
        (the iCE40UP5K) leaves out the ones its networks do not need, and the compiler refuses a layer whose
        engine is missing.
    target : str
        What the multipliers are built from, one of :data:`TARGETS`: ``"generic"`` (plain ``*``, for simulation
        and any FPGA), ``"ice40"`` (``SB_MAC16`` blocks, two 8x8 products each) or ``"ecp5"`` (``MULT18X18D``
        with their input and output registers). Every target computes the same numbers.
    """
    rows: int = 8
    cols: int = 8
    acc_width: int = 32
    lanes: int = 8
    max_kernel: int = 7
    max_width: int = 224
    pool_kernel: int = 0
    conv_act_depth: int = 4096
    conv_weight_depth: int = 8192
    conv_param_depth: int = 256
    vector_depth: int = 8192
    engines: tuple = ("conv", "depthwise", "pool", "add")
    target: str = "generic"

    #: Operand width. The integer scheme is int8 x int8; this is not a knob.
    operand_width = 8

    def __post_init__(self):
        for name, low, high in (("rows", 1, 64), ("cols", 1, 64), ("lanes", 1, 64), ("max_kernel", 1, 11),
                                ("max_width", 1, 4096), ("conv_act_depth", 16, 1 << 20),
                                ("conv_weight_depth", 16, 1 << 20), ("conv_param_depth", 1, 1 << 16),
                                ("vector_depth", 16, 1 << 20)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")
        if not isinstance(self.pool_kernel, int) or isinstance(self.pool_kernel, bool) \
                or not 0 <= self.pool_kernel <= self.max_kernel:
            raise ValueError(f"pool_kernel must be an integer from 0 to max_kernel ({self.max_kernel}), "
                             f"not {self.pool_kernel!r}")
        if not isinstance(self.acc_width, int) or not 17 <= self.acc_width <= 48:
            raise ValueError(f"acc_width must be an integer from 17 to 48, not {self.acc_width!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {self.target!r}")
        if isinstance(self.engines, list):          # as read back from a program's JSON
            object.__setattr__(self, "engines", tuple(self.engines))
        if (not isinstance(self.engines, tuple) or "conv" not in self.engines
                or any(e not in ENGINES for e in self.engines) or len(set(self.engines)) != len(self.engines)):
            raise ValueError(f"engines must be a tuple of distinct names from {ENGINES} that includes 'conv', "
                             f"not {self.engines!r}")

    @property
    def pes(self):
        """Number of processing elements (multipliers) in the MAC array."""
        return self.rows * self.cols


DEFAULT_CONFIG = AcceleratorConfig()
