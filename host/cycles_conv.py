"""Cycle model of the convolution engine (:class:`cnnacc.hw.conv_engine.ConvEngine`).

A function of the layer shape and the configuration that predicts the RTL cycle count of one layer, from the
cycle ``start`` is sampled to the cycle ``busy`` falls, with the output stream always ready. It is exact (the
tests compare it with the RTL on every layer they run) because the engine's schedule is static:

* tiles are ``rows`` output channels x ``cols`` output pixels; ``ceil(Cout / rows)`` channel blocks, each over
  ``ceil(OH * OW / cols)`` pixel tiles when the tile may span output rows (stride 1 and ``OW == W``), else
  ``OH * ceil(OW / cols)`` tiles within rows;
* a tile is ``K = KH * KW * Cin`` beats, one per cycle, but two tiles end at least
  :func:`~cnnacc.hw.systolic_array.min_tile_beats` cycles apart (the array's drain), and on target ``"ecp5"``
  at least :func:`~cnnacc.hw.conv_engine.walker_tile_beats` (the tile cursors' walkers), which the first tile's
  last beat also waits for from the start of the run;
* a fixed pipeline: start and setup (2), memory read (:func:`~cnnacc.hw.conv_engine.conv_read_stages`: 1,
  5 on the ECP5), the array
  (:func:`~cnnacc.hw.systolic_array.array_latency`), the drain of the columns up to the last one that holds a
  valid pixel, the parameter fetch (:func:`~cnnacc.hw.conv_engine.conv_param_stages`: 1, 2 on the
  ECP5), the requantizer (:data:`~cnnacc.hw.requantizer.REQUANT_LATENCY`, plus
  :func:`~cnnacc.hw.requantizer.requant_extra_stages` for the target) and the output handshake.

Target ``"ice40"`` has one serial requantizer lane for the whole column (hw/requantizer.py) and an array that
holds a finished tile in its accumulators (hw/systolic_array.py): the lane reads the column in place and takes
it when its last result is written, a column past the layer's pixels is taken at once, and the next tile's
first beat waits for the last column to go. A tile whose ``v`` columns hold pixels drains in
``v * requant_interval + cols - v`` cycles, and the next tile follows after
:func:`~cnnacc.hw.systolic_array.ice40_tile_cycles` of its depth and that drain. The last tile's columns up to
``last_column`` then follow each other at :func:`~cnnacc.hw.requantizer.requant_interval` cycles, then the
output handshake (the columns past the layer's last pixel are left to the array, which drops them when the
next layer starts). The first tile's last beat also waits until the input cursor has walked the second tile's
columns, ``cols + 3`` cycles after the run starts: a layer of fewer beats a tile pays the difference, once.
"""

from dataclasses import dataclass

from ..hw.requantizer import REQUANT_LATENCY, requant_extra_stages, requant_interval
from ..hw.conv_engine import conv_param_stages, conv_read_stages, walker_tile_beats
from ..hw.systolic_array import array_latency, column_fifo_latency, ice40_tile_cycles, min_tile_beats

__all__ = ["ConvSchedule", "conv_schedule", "conv_cycles", "useful_macs", "utilization",
           "weight_stationary_cycles"]


@dataclass(frozen=True)
class ConvSchedule:
    """How the engine tiles one layer."""
    span: bool            # pixel tiles run across output rows
    pixel_tiles: int      # per channel block
    channel_blocks: int
    depth: int            # K, beats per tile
    last_column: int      # column of the last valid pixel in the last tile

    @property
    def tiles(self):
        return self.pixel_tiles * self.channel_blocks


def conv_schedule(config, fields):
    """The tiling of a layer given its :func:`cnnacc.hw.conv_engine.conv_layer` fields."""
    oh, ow, cout = fields["out_h"], fields["out_w"], fields["out_c"]
    span = not fields["stride2"] and ow == fields["in_w"]
    if span:
        pixel_tiles = -(-(oh * ow) // config.cols)
        last_column = (oh * ow - 1) % config.cols
    else:
        pixel_tiles = oh * -(-ow // config.cols)
        last_column = (ow - 1) % config.cols
    return ConvSchedule(span=span, pixel_tiles=pixel_tiles, channel_blocks=-(-cout // config.rows),
                        depth=fields["kernel_h"] * fields["kernel_w"] * fields["in_c"], last_column=last_column)


def conv_cycles(config, fields):
    """Predicted RTL cycles of one layer (see the module docstring)."""
    s = conv_schedule(config, fields)
    if config.target == "ice40":
        interval = requant_interval(config.target, config.rows)
        full = config.cols * interval
        valid = s.last_column + 1
        partial = valid * interval + config.cols - valid
        # One partial tile ends each channel block's pixels (span) or each output row (within rows); the layer's
        # last tile is one of them and is not followed by another tile.
        partials = s.channel_blocks * (1 if s.span else fields["out_h"])
        beats = s.depth + (s.tiles - partials) * ice40_tile_cycles(s.depth, full) \
            + (partials - 1) * ice40_tile_cycles(s.depth, partial)
        drain = valid * interval + 1
        # The first tile's last beat waits for the input cursor's walker (hw/conv_engine.py), ready cols + 3
        # cycles after the run starts; later tiles are further apart than that.
        beats += max(0, walker_tile_beats(config) - s.depth)
    else:
        # The tile cursors' walkers (ecp5): a tile's last beat waits until the walker the previous one started
        # is ready, and the first tile's until the one the run started is (both walker_tile_beats after).
        walker = walker_tile_beats(config)
        beats = s.depth + (s.tiles - 1) * max(s.depth, min_tile_beats(config), walker) + max(0, walker - s.depth)
        # A column is taken a cycle after it is finished, and on the ECP5 column_fifo_latency after: its output
        # FIFO's pipelined read.
        drain = s.last_column + max(1, column_fifo_latency(config)) + conv_param_stages(config) \
            + REQUANT_LATENCY + requant_extra_stages(config.target)
    return beats + 2 + conv_read_stages(config) + array_latency(config) + drain


def useful_macs(fields):
    """Multiply-accumulates the layer needs: ``OH * OW * Cout * KH * KW * Cin``."""
    return (fields["out_h"] * fields["out_w"] * fields["out_c"]
            * fields["kernel_h"] * fields["kernel_w"] * fields["in_c"])


def utilization(config, fields, cycles):
    """PE utilization: useful MACs / (PEs x cycles)."""
    return useful_macs(fields) / (config.pes * cycles)


def weight_stationary_cycles(config, fields):
    """Cycles of the weight-stationary alternative, for the dataflow comparison (a model, not built).

    Rows hold ``rows`` reduction steps, columns ``cols`` output channels; each pass streams every output pixel
    (one per cycle) through one block of weights, with the next block preloaded behind it (free) and partial
    sums accumulated outside the array. Pipeline fill of ``rows + cols`` is paid once.
    """
    passes = -(-fields["kernel_h"] * fields["kernel_w"] * fields["in_c"] // config.rows) \
        * -(-fields["out_c"] // config.cols)
    return passes * fields["out_h"] * fields["out_w"] + config.rows + config.cols
