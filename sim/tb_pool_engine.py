"""Run :class:`cnnacc.hw.pool_engine.PoolEngine` under cocotb (the shared stream testbench of
:mod:`cnnacc.sim.tb_window_generator`)."""

import numpy as np

from .tb_window_generator import pack_payloads, run_streams

__all__ = ["run_rtl"]


def run_rtl(config, jobs, *, seed=0, bubble=0.0, stall=0.0, sim=None):
    """Run ``jobs`` (``(pool_layer dict, planes [G, H, W, lanes])``) back to back; returns the pooled beats
    (int64 ``[beats, lanes]``) and the cycle count."""
    from ..hw.pool_engine import PoolEngine, PoolMode, pool_layer_layout
    from ..hw.window_generator import window_output_shape
    count = 0
    for layer, _ in jobs:
        win = layer["window"]
        if layer["mode"] == PoolMode.GLOBAL_AVG:
            count += win["groups"]
        else:
            oh, ow = window_output_shape(win["height"], win["width"], win["kernel"], win["stride"],
                                         (win["pad_top"], win["pad_bottom"], win["pad_left"], win["pad_right"]))
            count += win["groups"] * oh * ow
    pixels = np.concatenate([p.reshape(-1, config.lanes) for _, p in jobs]).astype(np.int8).view(np.uint8)
    got, cycles = run_streams(
        PoolEngine(config), "pool_engine",
        {"i_layer": pack_payloads(pool_layer_layout(config), [layer for layer, _ in jobs]), "i_pixels": pixels},
        {"o_pixels": count}, seed=seed, bubble=bubble, stall=stall, sim=sim)
    return got["o_pixels"][:, :config.lanes].view(np.int8).astype(np.int64), cycles
