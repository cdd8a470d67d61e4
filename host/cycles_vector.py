"""Cycle model of the vector engines: pooling (:class:`cnnacc.hw.pool_engine.PoolEngine`) and depthwise
convolution (:class:`cnnacc.hw.depthwise.DepthwiseEngine`).

Each function returns the clock cycles one layer takes on an engine that is idle when the layer starts, when
the input stream never bubbles and the output stream never stalls: from the cycle the descriptor is offered to
the cycle the last output beat is taken, both included. That is what the RTL tests and ``hw/bench_vector.py``
measure, and the tests hold the model to the RTL's count exactly.

Where the cycles go:

* the window generator scans the padded map, one padded pixel per cycle, ``groups`` planes back to back;
* the engines then add a fixed pipeline latency once per layer (not per plane: planes follow each other
  without a gap);
* global average pooling takes one cycle per input pixel, but a plane's last pixel has to wait for the
  divider to be done with the previous plane (``nbits + 2`` cycles per plane);
* depthwise loads one weight beat per plane and runs the requantizer's pipeline behind the MACs.
"""

from ..config import AcceleratorConfig

__all__ = ["window_scan_cycles", "window_cycles", "pool_cycles", "pool_latency", "depthwise_cycles",
           "global_divider_bits", "WINDOW_LATENCY", "POOL_LATENCY"]

#: Cycles from the scanner reaching a window's last tap to the window being taken: the window generator's two
#: register stages and the cycle the consumer takes it.
WINDOW_LATENCY = 3
#: The pooling engine's tap reduction and output register, after the window generator (generic target).
POOL_LATENCY = WINDOW_LATENCY + 2


def pool_latency(config):
    """:data:`POOL_LATENCY` of the pool engine built for ``config``: its target may add pipeline stages to the
    windowed modes (:func:`cnnacc.hw.pool_engine.pool_extra_stages`), standalone and fused behind a conv alike."""
    from ..hw.pool_engine import pool_extra_stages
    return POOL_LATENCY + pool_extra_stages(config)


def window_scan_cycles(window):
    """Padded pixels the window generator scans for a window descriptor (dict), over all planes."""
    return window["groups"] * ((window["height"] + window["pad_top"] + window["pad_bottom"])
                               * (window["width"] + window["pad_left"] + window["pad_right"]))


def window_cycles(window, latency=WINDOW_LATENCY, per_plane=0, start=2):
    """Cycles until a windowed layer has both taken its last pixel and delivered its last output.

    The scanner visits padded position ``i`` (counted over all planes) at cycle ``start + i`` (by default 2:
    cycle 1 takes the descriptor) plus ``per_plane`` cycles for each plane started. The last window of the layer
    ends at the position of its bottom-right tap and leaves ``latency`` cycles later; the last input pixel may
    come later still, when rows or columns at the end are reached by no window (stride 2 on even sizes).
    """
    k, s, groups = window["kernel"], window["stride"], window["groups"]
    padded_h = window["height"] + window["pad_top"] + window["pad_bottom"]
    padded_w = window["width"] + window["pad_left"] + window["pad_right"]
    out_h, out_w = (padded_h - k) // s + 1, (padded_w - k) // s + 1
    plane = (groups - 1) * padded_h * padded_w
    last_window = plane + ((out_h - 1) * s + k - 1) * padded_w + (out_w - 1) * s + k - 1
    last_pixel = plane + (window["pad_top"] + window["height"] - 1) * padded_w + window["pad_left"] + window["width"] - 1
    return max(last_window + 1 + latency, last_pixel + 2) + per_plane * groups + start - 2


def global_divider_bits(config):
    """Cycles the global-average divider built for ``config`` spends on a plane: its quotient bits, and on the
    ECP5 three more (:func:`cnnacc.hw.pool_engine.global_divider_steps`)."""
    from ..hw.pool_engine import global_divider_steps
    return global_divider_steps(config)


def pool_cycles(config, layer):
    """Cycles of one pooling layer (a :func:`cnnacc.hw.pool_engine.pool_layer` descriptor)."""
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    from ..hw.pool_engine import PoolMode, pool_scan_start
    window = layer["window"]
    if PoolMode(layer["mode"]) != PoolMode.GLOBAL_AVG:
        return window_cycles(window, pool_latency(config), start=pool_scan_start(config))
    pixels = window["height"] * window["width"]
    nbits = global_divider_bits(config)
    # last_pixel: the cycle a plane's last pixel is taken; the divider frees nbits + 1 cycles after that.
    last_pixel = 1 + pixels
    for _ in range(window["groups"] - 1):
        last_pixel = max(last_pixel + pixels, last_pixel + nbits + 2)
    return last_pixel + nbits + 2


def depthwise_cycles(config, layer):
    """Cycles of one depthwise layer (a :func:`cnnacc.hw.depthwise.depthwise_layer` descriptor)."""
    from ..hw.depthwise import DEPTHWISE_LATENCY, WEIGHT_LOAD_CYCLES, depthwise_extra_stages
    from ..hw.window_generator import window_scan_start
    from ..hw.requantizer import requant_extra_stages
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
    window = layer["window"]
    # The target may deepen the MACs and the requantizer (ecp5); the depthwise engine's requantizer is always the
    # pipelined one, never the serial ice40 datapath.
    latency = DEPTHWISE_LATENCY + depthwise_extra_stages(config) + requant_extra_stages(config.target)
    return window_cycles(window, latency, WEIGHT_LOAD_CYCLES, start=window_scan_start(config))
