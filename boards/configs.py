"""The accelerator configuration each board's bitstream is built with (read by boards/build.py).

``ICEBREAKER_CONFIG`` sizes the accelerator for the iCE40UP5K (5,280 LCs, 8 SB_MAC16, 30 EBRs of 4 Kbit) and
for LeNet-5, the network the board runs: a 4x4 array (16 int8 MACs per cycle, two per SB_MAC16), the conv and
pool engines only (conv, conv -> max-pool fusion, fully connected), 5x5 kernels, 32-pixel rows, and memories
just deep enough for LeNet-5's tiles in one EBR column each:

* ``conv_act_depth`` 512: the fully connected F5 reads its 400 inputs as 400 channels of a 1x1 map, one word
  each; 32x32 C1 needs 128, 14x14x6 C3 150.
* ``conv_weight_depth`` 512: one block of 4 output channels of F5 is 400 words (C3: 150).
* ``conv_param_depth`` 32: F5's 120 channels are 30 blocks of 4.
* ``vector_depth`` 256: two EBRs per vector memory (ACT_A, OUTPUT); C1's pooled 14x14x6 map (392 rows of 4
  channels) is written in row bands that fit half of it (double buffering).
* ``acc_width`` 24: LeNet-5 needs 23 bits (c5's 400 terms); the compiler refuses a layer that could wrap.

The iCE40 engines are the lean ones of target ``"ice40"``: one serial requantizer lane per column, parameters
stored a lane a row (5 EBRs), max pooling only (windows up to 2x2), widths from the instance's limits.

Status: see the README's Boards section and docs/decisions.md for what this instance measures today.
"""

from ..config import AcceleratorConfig

__all__ = ["ICEBREAKER_CONFIG"]

ICEBREAKER_CONFIG = AcceleratorConfig(
    rows=4, cols=4, lanes=4, max_kernel=5, max_width=32,
    conv_act_depth=512, conv_weight_depth=512, conv_param_depth=32, vector_depth=256,
    engines=("conv", "pool"), target="ice40",
    acc_width=24,       # LeNet-5 needs 23 bits (c5: 400 terms); the compiler refuses a layer that could wrap
)
