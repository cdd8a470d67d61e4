"""Run :class:`cnnacc.hw.depthwise.DepthwiseEngine` under cocotb (the shared stream testbench of
:mod:`cnnacc.sim.tb_window_generator`)."""

import numpy as np

from .tb_window_generator import pack_payloads, run_streams

__all__ = ["run_rtl"]


def run_rtl(config, jobs, *, kernel=3, seed=0, bubble=0.0, stall=0.0, sim=None):
    """Run ``jobs`` (``(depthwise_layer dict, weight beats, planes [G, H, W, lanes])``) back to back; returns
    the output beats (int64 ``[beats, lanes]``) and the cycle count."""
    from ..hw.depthwise import DepthwiseEngine, depthwise_layer_layout, depthwise_weights_layout
    from ..hw.window_generator import window_output_shape
    count = 0
    for layer, _, _ in jobs:
        win = layer["window"]
        oh, ow = window_output_shape(win["height"], win["width"], win["kernel"], win["stride"],
                                     (win["pad_top"], win["pad_bottom"], win["pad_left"], win["pad_right"]))
        count += win["groups"] * oh * ow
    pixels = np.concatenate([p.reshape(-1, config.lanes) for _, _, p in jobs]).astype(np.int8).view(np.uint8)
    got, cycles = run_streams(
        DepthwiseEngine(config, kernel), "depthwise",
        {"i_layer": pack_payloads(depthwise_layer_layout(config, kernel), [layer for layer, _, _ in jobs]),
         "i_weights": pack_payloads(depthwise_weights_layout(config, kernel), [b for _, beats, _ in jobs for b in beats]),
         "i_pixels": pixels},
        {"o_pixels": count}, seed=seed, bubble=bubble, stall=stall, sim=sim)
    return got["o_pixels"][:, :config.lanes].view(np.int8).astype(np.int64), cycles
