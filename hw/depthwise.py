"""Depthwise convolution engine: MobileNet's 3x3 depthwise layers, every multiplier busy every cycle.

A systolic array spends most of its PEs idle on depthwise layers (one input channel feeds one output channel,
so there is no reduction across channels to spread over a row). This engine instead gives each of ``lanes``
channels its own ``kernel x kernel`` multipliers and feeds them a whole window per cycle from a
:class:`~cnnacc.hw.window_generator.WindowGenerator`: with stride 1, ``kernel**2 x lanes`` useful MACs per cycle
apart from the padding ring and the warm-up rows, measured by ``hw/bench_vector.py``.

Per lane and window::

    acc = sum over taps of (x - zp_in) * w       # padded taps carry zp_in, so they add exactly 0
    out = Requantizer(acc, bias, multiplier, shift, zp_out, qmin, qmax)

which is :func:`cnnacc.host.golden.depthwise_conv2d` bit for bit (int32 wrap included: the requantizer adds the
bias modulo 2**32).

Streams: the pixel stream is the window generator's (channel-group planes, raster order, ``lanes`` channels a
beat); before each plane, one ``i_weights`` beat with that group's ``kernel x kernel x lanes`` weights and its
per-channel requantization parameters. The weights are double-buffered, so the next plane's beat loads while the
current plane runs. Output: int8 pixels in the same order.

Pipeline: window generator (2 stages) | ``x - zp`` times ``w`` (products registered) | sum (accumulator
registered) | requantizer (6 stages). Back-pressure on the output stalls everything at once.
"""

import numpy as np
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .dsp_ecp5 import booth_digit_count, booth_digits, delay_line, lut_product, lut_product_stages
from .requantizer import REQUANT_LATENCY, Requantizer, SHIFT_MAX, SHIFT_MIN, lane_params_layout
from .window_generator import WindowGenerator, pixel_layout, window_extra_stages, window_layer, window_layer_layout

__all__ = ["DepthwiseEngine", "depthwise_layer_layout", "depthwise_weights_layout", "depthwise_layer",
           "depthwise_weight_beats", "depthwise_extra_stages", "DEPTHWISE_LATENCY", "WEIGHT_LOAD_CYCLES"]

#: Cycles from the scanner reaching a window's last tap to its result being taken: window generator (2),
#: products (1), sum (1), requantizer, and the cycle the consumer takes it.
DEPTHWISE_LATENCY = 2 + 2 + REQUANT_LATENCY + 1
#: Cycles a plane loses to loading its weights when the weight stream keeps up (they are double-buffered).
WEIGHT_LOAD_CYCLES = 0


def depthwise_extra_stages(config):
    """Stages the window and MAC part has for ``config.target`` beyond the generic ones (4 on the ECP5: the
    window generator's read register (:func:`~.window_generator.window_extra_stages`), the centring subtraction,
    a second stage of the LUT product and a first level of the tap sum), besides the requantizer's own
    (:func:`~.requantizer.requant_extra_stages`)."""
    return 3 + window_extra_stages(config) if config.target == "ecp5" else 0


def depthwise_layer_layout(config, kernel=3):
    """Runtime parameters of one depthwise layer."""
    return data.StructLayout({
        "window":          window_layer_layout(config, kernel),
        "single_rounding": 1,
        "zero_point":      signed(8),      # of the output
        "qmin":            signed(8),
        "qmax":            signed(8),
    })


def depthwise_weights_layout(config, kernel=3):
    """One weight beat: a channel group's taps ``weights[i][j][lane]`` and requantization parameters."""
    return data.StructLayout({
        "weights": data.ArrayLayout(data.ArrayLayout(pixel_layout(config), kernel), kernel),
        "params":  data.ArrayLayout(lane_params_layout(), config.lanes),
    })


def depthwise_layer(config, *, height, width, channels, kernel=3, stride=1, padding=(0, 0, 0, 0), zero_point_in=0,
                    zero_point_out=0, qmin=-128, qmax=127, mode="double", max_kernel=3, name="depthwise"):
    """Check a depthwise layer against ``config`` and return its descriptor as a dict (``ValueError`` naming
    ``name`` and the reason otherwise)."""
    if mode not in ("double", "single"):
        raise ValueError(f"{name}: rounding mode must be 'double' or 'single', not {mode!r}")
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"{name}: activation range must satisfy -128 <= qmin <= qmax <= 127, not {qmin}..{qmax}")
    if not -128 <= zero_point_out <= 127:
        raise ValueError(f"{name}: output zero point must be from -128 to 127, not {zero_point_out!r}")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"{name}: channels must be a positive integer, not {channels!r}")
    groups = -(-channels // config.lanes)
    window = window_layer(config, height=height, width=width, kernel=kernel, stride=stride, padding=padding,
                          zero_point=zero_point_in, groups=groups, max_kernel=max_kernel, name=name)
    return {"window": window, "single_rounding": int(mode == "single"), "zero_point": zero_point_out,
            "qmin": qmin, "qmax": qmax}


def depthwise_weight_beats(config, weights, bias, multiplier, shift, max_kernel=3, name="depthwise"):
    """The ``i_weights`` beats (dicts, one per channel group) of a layer with TFLite depthwise ``weights``
    [1, KH, KW, C], int32 ``bias`` [C] and per-channel ``multiplier``/``shift`` [C]. Channels past ``C`` in the
    last group get zero weights and parameters."""
    weights = np.asarray(weights)
    if weights.ndim != 4 or weights.shape[0] != 1 or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"{name}: depthwise weights must have shape [1, K, K, C], not {list(weights.shape)}")
    _, k, _, c = weights.shape
    if k > max_kernel:
        raise ValueError(f"{name}: a {k}x{k} kernel exceeds the engine's {max_kernel}x{max_kernel}")
    shift = np.broadcast_to(np.asarray(shift, np.int64), (c,))
    if np.any((shift < SHIFT_MIN) | (shift > SHIFT_MAX)):
        raise ValueError(f"{name}: shifts must be from {SHIFT_MIN} to {SHIFT_MAX}")
    lanes = config.lanes
    groups = -(-c // lanes)
    w = np.zeros((max_kernel, max_kernel, groups * lanes), np.int64)
    w[:k, :k, :c] = weights[0]
    params = np.zeros((3, groups * lanes), np.int64)
    params[0, :c] = np.broadcast_to(np.asarray(bias, np.int64), (c,))
    params[1, :c] = np.broadcast_to(np.asarray(multiplier, np.int64), (c,))
    params[2, :c] = shift
    beats = []
    for g in range(groups):
        sl = slice(g * lanes, (g + 1) * lanes)
        beats.append({
            "weights": w[:, :, sl].tolist(),
            "params": [{"bias": int(b), "multiplier": int(m), "shift": int(s)} for b, m, s in params[:, sl].T],
        })
    return beats


class DepthwiseEngine(wiring.Component):
    """Depthwise ``kernel x kernel`` convolution with requantization, ``lanes`` channels and one window a cycle.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``lanes`` and ``max_width``.
    kernel : int
        Largest kernel side, built in (3 for MobileNet); smaller layer kernels run on the same multipliers.

    Members
    -------
    i_layer : In(stream.Signature(depthwise_layer_layout(config, kernel)))
        One descriptor per layer (see :func:`depthwise_layer`); taken once the previous layer has fully left.
    i_weights : In(stream.Signature(depthwise_weights_layout(config, kernel)))
        One beat per channel group, in group order (see :func:`depthwise_weight_beats`).
    i_pixels : In(stream.Signature(pixel_layout(config)))
        Channel-group planes in raster order.
    o_pixels : Out(stream.Signature(pixel_layout(config)))
        Requantized int8 outputs, channel-group planes in raster order.
    """

    def __init__(self, config, kernel=3):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        if not isinstance(kernel, int) or isinstance(kernel, bool) or not 1 <= kernel <= config.max_kernel:
            raise ValueError(f"kernel must be an integer from 1 to {config.max_kernel}, not {kernel!r}")
        self._config = config
        self._kernel = kernel
        super().__init__({
            "i_layer":   In(stream.Signature(depthwise_layer_layout(config, kernel))),
            "i_weights": In(stream.Signature(depthwise_weights_layout(config, kernel))),
            "i_pixels":  In(stream.Signature(pixel_layout(config))),
            "o_pixels":  Out(stream.Signature(pixel_layout(config))),
        })

    @property
    def config(self):
        return self._config

    @property
    def kernel(self):
        return self._kernel

    @property
    def multipliers(self):
        """Multipliers the engine is built with."""
        return self._kernel * self._kernel * self._config.lanes

    def elaborate(self, platform):
        m = Module()
        cfg, k, lanes = self._config, self._kernel, self._config.lanes
        m.submodules.windows = wg = WindowGenerator(cfg, max_kernel=k)
        m.submodules.requantizer = rq = Requantizer(lanes, tag_width=1,
                                                       target="ecp5" if cfg.target == "ecp5" else "generic")
        params_layout = data.ArrayLayout(lane_params_layout(), lanes)
        weights_layout = depthwise_weights_layout(cfg, k)

        busy = Signal()
        zp_in = Signal(signed(8))
        m.d.comb += wg.i_layer.payload.eq(self.i_layer.payload.window)
        m.d.comb += [wg.i_layer.valid.eq(self.i_layer.valid & ~busy),
                     self.i_layer.ready.eq(~busy & wg.i_layer.ready)]
        with m.If(self.i_layer.valid & self.i_layer.ready):
            desc = self.i_layer.payload
            # The requantizer's settings are layer constants; it is empty whenever a layer is accepted.
            m.d.sync += [busy.eq(1), zp_in.eq(desc.window.zero_point), rq.single_rounding.eq(desc.single_rounding),
                         rq.zero_point.eq(desc.zero_point), rq.qmin.eq(desc.qmin), rq.qmax.eq(desc.qmax)]
        m.d.comb += [wg.i_pixels.payload.eq(self.i_pixels.payload), wg.i_pixels.valid.eq(self.i_pixels.valid),
                     self.i_pixels.ready.eq(wg.i_pixels.ready)]

        # Weights: the current group's set, and the next one loading behind it.
        cur, nxt = Signal(weights_layout), Signal(weights_layout)
        have_cur, have_nxt = Signal(), Signal()
        m.d.comb += self.i_weights.ready.eq(~have_nxt)

        # Stage P: products; stage S: the sum, which is the requantizer's input register.
        advance = ~rq.i_acc.valid | rq.i_acc.ready
        win = wg.o_windows.payload
        take = Signal()
        m.d.comb += [wg.o_windows.ready.eq(advance & have_cur), take.eq(wg.o_windows.valid & wg.o_windows.ready)]

        p_valid, p_last = Signal(), Signal()
        p_params = Signal(params_layout)
        if cfg.target == "ecp5":
            p_valid, p_last, p_params, sums = self._ecp5_products(m, advance, take, win, cur, zp_in, params_layout)
        else:
            products = [[[Signal(signed(17), name=f"p_{i}_{j}_{l}") for l in range(lanes)] for j in range(k)]
                        for i in range(k)]
            with m.If(advance):
                m.d.sync += [p_valid.eq(take), p_last.eq(win.last), p_params.eq(cur.params)]
                for i in range(k):
                    for j in range(k):
                        for lane in range(lanes):
                            centred = win.taps[i][j][lane] - zp_in          # 9 bits: -255 .. 255
                            m.d.sync += products[i][j][lane].eq(centred * cur.weights[i][j][lane])
            sums = [[products[i][j][lane] for i in range(k) for j in range(k)] for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += rq.i_acc.valid.eq(p_valid)
            m.d.sync += [rq.i_acc.payload.tag.eq(p_last), rq.i_acc.payload.params.eq(p_params)]
            for lane in range(lanes):
                m.d.sync += rq.i_acc.payload.acc[lane].eq(sum(sums[lane]))

        # Weight double buffer: a plane's last window retires the current set.
        load = self.i_weights.valid & self.i_weights.ready
        retire = take & win.last_in_group
        with m.If(retire | ~have_cur):
            with m.If(have_nxt):
                m.d.sync += [cur.eq(nxt), have_cur.eq(1), have_nxt.eq(load)]
                with m.If(load):
                    m.d.sync += nxt.eq(self.i_weights.payload)
            with m.Else():
                m.d.sync += [cur.eq(self.i_weights.payload), have_cur.eq(load)]
        with m.Elif(load):
            m.d.sync += [nxt.eq(self.i_weights.payload), have_nxt.eq(1)]

        m.d.comb += [self.o_pixels.payload.eq(rq.o_data.payload.data), self.o_pixels.valid.eq(rq.o_data.valid),
                     rq.o_data.ready.eq(self.o_pixels.ready)]
        with m.If(rq.o_data.valid & rq.o_data.ready & rq.o_data.payload.tag):
            m.d.sync += busy.eq(0)
        return m

    def _ecp5_products(self, m, advance, take, win, cur, zp_in, params_layout):
        """The MACs for target "ecp5" (:func:`depthwise_extra_stages` more stages, same numbers): the centred taps
        and the weights' Booth digits registered (stage C), each product a LUT Booth multiply
        (:func:`~.dsp_ecp5.lut_product`, two stages: a 9x8 product through yosys's LUT full adders and the 9-way
        sum behind it were far too deep for 125 MHz), then three sums of three taps per lane (stage S); the
        requantizer's input register adds those three. Returns the stage-S flags, parameters and, per lane, the
        three sums."""
        cfg, k, lanes = self._config, self._kernel, self._config.lanes
        digits = booth_digit_count(8)
        depth = 1 + lut_product_stages(digits) + 1          # C, the product, S

        def delayed(value, name):
            return delay_line(m, advance, value, depth, name)

        valid, last = delayed(take, "mac_valid"), delayed(win.last, "mac_last")
        params = delayed(cur.params, "mac_params")
        products = [[] for _ in range(lanes)]
        for i in range(k):
            for j in range(k):
                for lane in range(lanes):
                    name = f"dw_{i}_{j}_{lane}"
                    centred = Signal(signed(9), name=f"{name}_centred")       # -255 .. 255
                    neg, one, two = (Signal(digits, name=f"{name}_{n}") for n in ("neg", "one", "two"))
                    with m.If(advance):
                        m.d.sync += centred.eq(win.taps[i][j][lane] - zp_in)
                        m.d.sync += [r.eq(v) for r, v in zip((neg, one, two), booth_digits(cur.weights[i][j][lane]))]
                    products[lane].append(lut_product(m, advance, centred, neg, one, two, width=17, name=name))
        sums = []
        for lane in range(lanes):
            taps = products[lane]
            partial = []
            for g in range(0, len(taps), 3):
                part = Signal(signed(19), name=f"dw_sum_{lane}_{g // 3}")
                with m.If(advance):
                    m.d.sync += part.eq(sum(taps[g:g + 3]))
                partial.append(part)
            sums.append(partial)
        return valid, last, params, sums

