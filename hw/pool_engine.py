"""Pooling engine: max, average and global average pooling of int8 pixel streams, TFLite's integer rounding.

It takes the same stream the window generator takes (channel-group planes of int8 pixels in raster order,
``lanes`` channels per beat) and returns pooled pixels in the same form, so it can sit straight behind the
convolution path (conv -> ReLU -> pool with no round trip through memory) or behind another pool.

Windowed modes (any kernel up to :func:`pool_max_kernel`, any stride, any padding) go through a
:class:`~cnnacc.hw.window_generator.WindowGenerator`, one window per cycle:

* max: the largest in-bounds tap (padding never wins), then the activation clamp;
* average: the sum of the in-bounds taps over their count, rounded half away from zero, as TFLite's
  ``AveragePool`` does; the division is a multiplication by a per-count reciprocal, which
  :func:`avg_reciprocals` chooses wide enough to be exact for every sum and count a window can produce (the
  tests check every pair).

Global average sums each plane in ``lanes`` accumulators and divides with a restoring divider (one quotient bit
per cycle, exact for any count up to ``max_width ** 2``). The divider works on one plane while the next plane
is being summed, so it only costs time when planes have fewer pixels than the quotient has bits.

Pipeline of the windowed modes: window generator (two stages) | tap reduction (max, sum, count) | divide and
clamp (output register). Back-pressure on the output stalls every stage at once.

On the iCE40UP5K (``config.target == "ice40"``, see :class:`_Ice40Pool`) the engine is a separate, lean design:
max pooling only (:func:`pool_modes`), over windows of at most :data:`ICE40_POOL_KERNEL` x
:data:`ICE40_POOL_KERNEL` (:func:`pool_max_kernel`), any stride, padding up to ``kernel - 1``, no activation clamp
(:func:`pool_has_clamp`), one pipeline stage fewer; the dispatcher and the compiler refuse the rest.
Target ``"ecp5"`` adds stages (the window generator's read register, per-row reduction, reciprocal lookup, a
three-level LUT Booth product, the quotient, the result before its clamp, and more) for its 125 MHz clock:
:func:`pool_extra_stages`.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .dsp_ecp5 import booth_digit_count, booth_digits, delay_line, lut_product, lut_product_stages
from .window_generator import (MAX_HEIGHT, MAX_STRIDE, WindowGenerator, pixel_layout, window_extra_stages,
                               window_layer, window_layer_layout, window_scan_start)

__all__ = ["PoolEngine", "PoolMode", "pool_layer_layout", "pool_layer", "avg_reciprocals", "global_max_count",
           "pool_max_kernel", "pool_modes", "pool_has_clamp", "check_pool_support", "ICE40_POOL_KERNEL",
           "ice40_pool_limits", "pool_extra_stages", "pool_scan_start", "global_divider_steps",
           "pool_input_stages"]

#: Largest pooling window on target "ice40" (see :class:`_Ice40Pool`).
ICE40_POOL_KERNEL = 2

# Row phases of the iCE40 engine's scanner (see :class:`_Ice40Pool`).
_BODY, _TOP, _AFTER_TOP, _BOTTOM = 0b00, 0b01, 0b10, 0b11


def pool_max_kernel(config):
    """Largest pooling window side the pool engine of ``config`` is built for: ``config.pool_kernel`` when it
    is set, else ``max_kernel``, and at most :data:`ICE40_POOL_KERNEL` on the iCE40."""
    kernel = config.pool_kernel or config.max_kernel
    if config.target == "ice40":
        return min(kernel, ICE40_POOL_KERNEL)
    return kernel


def pool_modes(config):
    """The :class:`PoolMode` values the pool engine of ``config`` computes (only max on the iCE40)."""
    if config.target == "ice40":
        return (PoolMode.MAX,)
    return tuple(PoolMode)


def pool_has_clamp(config):
    """Whether the pool engine of ``config`` applies an activation clamp (not on the iCE40: ``qmin``/``qmax``
    must then be -128/127)."""
    return config.target != "ice40"


def check_pool_support(config, mode, kernel=1, name="pool", qmin=-128, qmax=127):
    """Raise ``ValueError`` naming ``name`` if the pool engine of ``config`` is not built for ``mode``, for a
    ``kernel`` x ``kernel`` window (``kernel`` is ignored for global average) or for the activation clamp
    ``qmin..qmax``."""
    mode = PoolMode(mode)
    words = {PoolMode.MAX: "max", PoolMode.AVG: "average", PoolMode.GLOBAL_AVG: "global average"}
    if mode not in pool_modes(config):
        raise ValueError(f"{name}: {words[mode]} pooling is not built on the {config.target} pool engine "
                         f"(it computes {', '.join(words[m] for m in pool_modes(config))})")
    kmax = pool_max_kernel(config)
    if mode != PoolMode.GLOBAL_AVG and kernel > kmax:
        why = f" (pool_kernel={config.pool_kernel})" if kmax == config.pool_kernel else ""
        raise ValueError(f"{name}: a {kernel}x{kernel} pooling window exceeds the {kmax}x{kmax} the "
                         f"{config.target} pool engine is built for{why}")
    if not pool_has_clamp(config) and (qmin, qmax) != (-128, 127):
        raise ValueError(f"{name}: the {config.target} pool engine has no activation clamp (range {qmin}..{qmax}; "
                         f"it needs -128..127)")


def ice40_pool_limits(config):
    """``(height, groups)``: the tallest plane and the most planes a layer of the iCE40 pool engine of ``config``
    may have; its counters are just wide enough for these.

    A run writes at most ``config.vector_depth`` output beats, and every plane gives at least one row of windows
    (``OH`` of them), so ``groups <= vector_depth`` and ``OH <= vector_depth``; windows step down by ``stride <=
    MAX_STRIDE`` rows, so the padded height is at most ``MAX_STRIDE * vector_depth + kernel - 1``. A layer past
    these cannot have its output in the memory, so refusing it takes nothing away.
    """
    depth = config.vector_depth
    return MAX_STRIDE * depth + pool_max_kernel(config) - 1, depth


def pool_extra_stages(config):
    """Pipeline stages the windowed modes have for ``config.target`` beyond the generic ones (11 on the ECP5:
    the window generator's read register (:func:`~.window_generator.window_extra_stages`), the per-row
    reduction, one more each for the row's and the window's compares before their picks, the rows' results
    registered again before the window's compares, the reciprocal and the numerator's Booth digits, three adder
    levels of the product, the quotient and the result before its clamp; one fewer on the iCE40)."""
    return {"ecp5": 10 + window_extra_stages(config), "ice40": -1}.get(config.target, 0)


def pool_input_stages(config):
    """Register stages in front of the pool engine of ``config`` on its input (1 on the ECP5: a full-rate slice,
    so a pixel from a source that was waiting for the engine reaches it a cycle later; 0 elsewhere). A source
    ahead of the engine loses nothing to it: the slice holds two pixels."""
    return 1 if config.target == "ecp5" else 0


def global_divider_steps(config):
    """Cycles the global-average divider spends on a plane: one a quotient bit, and on the ECP5 three more: the
    plane's last pixel entering the sum (its pixels are registered first), its sum turned into the numerator,
    and last the quotient of a negative sum negated."""
    return _quotient_bits(config) + 3 * (config.target == "ecp5")


def _quotient_bits(config):
    """Bits of the global-average divider's numerator (a plane's largest sum of magnitudes, plus half the count)
    and so of its quotient: one divider step each."""
    max_count = global_max_count(config)
    return (max_count * 128 + max_count // 2).bit_length()


def pool_scan_start(config):
    """The cycle of a run at which the windowed modes' scanner visits its first position: the window generator's
    (:func:`~.window_generator.window_scan_start`: 2, as cycle 1 takes the descriptor, or 3 on the ECP5), and 3
    on the iCE40, whose engine registers the offer of a layer before it starts one."""
    return 3 if config.target == "ice40" else window_scan_start(config)


class PoolMode(enum.Enum, shape=2):
    """What a pooling layer computes; the same values drive the gateware and the host."""
    MAX = 0
    AVG = 1
    GLOBAL_AVG = 2


def pool_layer_layout(config):
    """Runtime parameters of one pooling layer (``window`` is the window generator's descriptor)."""
    return data.StructLayout({
        "window": window_layer_layout(config, pool_max_kernel(config)),
        "mode":   PoolMode,
        "qmin":   signed(8),
        "qmax":   signed(8),
    })


def global_max_count(config):
    """Most pixels one global-average plane may have."""
    return config.max_width * config.max_width


def pool_layer(config, mode, *, height, width, groups=1, kernel=1, stride=1, padding=(0, 0, 0, 0), qmin=-128,
               qmax=127, name="pool"):
    """Check a pooling layer against ``config`` and return its descriptor as a dict (``ValueError`` naming
    ``name`` and the reason otherwise). Global average ignores ``kernel``, ``stride`` and ``padding``."""
    mode = PoolMode(mode)
    if mode not in pool_modes(config) or not pool_has_clamp(config):
        check_pool_support(config, mode, name=name, qmin=qmin, qmax=qmax)
    if not -128 <= qmin <= qmax <= 127:
        raise ValueError(f"{name}: activation range must satisfy -128 <= qmin <= qmax <= 127, not {qmin}..{qmax}")
    if mode == PoolMode.GLOBAL_AVG:
        if not isinstance(width, int) or not 1 <= width <= config.max_width:
            raise ValueError(f"{name}: width must be an integer from 1 to {config.max_width}, not {width!r}")
        if not isinstance(height, int) or height < 1 or height * width > global_max_count(config):
            raise ValueError(f"{name}: global average over {height}x{width} pixels exceeds the "
                             f"{global_max_count(config)} the divider is built for")
        window = window_layer(config, height=height, width=width, kernel=1, stride=1, groups=groups,
                              max_kernel=pool_max_kernel(config), name=name)
    else:
        window = window_layer(config, height=height, width=width, kernel=kernel, stride=stride, padding=padding,
                              groups=groups, max_kernel=pool_max_kernel(config), name=name)
    if config.target == "ice40":
        max_height, max_groups = ice40_pool_limits(config)
        if height > max_height or groups > max_groups:
            raise ValueError(f"{name}: {groups} planes of {height} rows exceed the {max_groups} planes of "
                             f"{max_height} rows the ice40 pool engine counts (its output must fit "
                             f"vector_depth {config.vector_depth})")
    return {"window": window, "mode": mode, "qmin": qmin, "qmax": qmax}


def avg_reciprocals(max_count, max_numerator):
    """``(shift, table)`` with ``(n * table[c]) >> shift == n // c`` for all ``0 <= n <= max_numerator`` and
    ``1 <= c <= max_count`` (``table[0]`` is unused).

    With ``table[c] = ceil(2**shift / c)`` the error of ``n * table[c] / 2**shift`` over ``n / c`` is below
    ``n / 2**shift``; a shift with ``2**shift > max_numerator * max_count`` keeps that under ``1 / c``, the
    smallest gap between ``n / c`` and the next integer, so the floor is exact.
    """
    shift = (max_numerator * max_count).bit_length()
    return shift, [0] + [-(-(1 << shift) // c) for c in range(1, max_count + 1)]


class _Beat:
    """A stream's payload, valid and ready as plain signals (the pool engine's input slice on the ECP5)."""
    def __init__(self, payload, valid, ready):
        self.payload, self.valid, self.ready = payload, valid, ready


def _clamp(value, qmin, qmax):
    return Mux(value < qmin, qmin, Mux(value > qmax, qmax, value))


def _clamp_bounds(qmin, qmax):
    """The magnitude bounds :func:`_clamp_flags` compares with, for the activation range ``qmin..qmax``:
    ``-q < qmin`` when ``q >= 1 - qmin``, ``q < qmin`` when not ``q >= qmin``, ``-q > qmax`` when not
    ``q >= -qmax``, and ``q > qmax`` when ``q >= qmax + 1``. A negative bound is raised to 0: ``q >= 0`` holds
    for every magnitude, as ``q >= b`` did. So all four are unsigned, and each compare is a carry chain with no
    sign correction after it."""
    return [Mux(b < 0, 0, b) for b in (1 - qmin, qmin, -qmax, qmax + 1)]


def _biased(value):
    """An int8 ``value`` as an unsigned byte in the same order (its sign bit flipped): an unsigned compare of two
    is the signed compare of the values, and is the carry out of one carry chain (a signed compare took the
    chain's top bits through two more LUTs)."""
    return value.as_unsigned() ^ 0x80


def _clamp_flags(magnitude, neg, bounds):
    """``(below, above)``: whether the value ``-magnitude`` (``neg``) or ``magnitude`` is below ``qmin`` and
    above ``qmax``, decided on the magnitude before its negation (target "ecp5"), with ``bounds`` from
    :func:`_clamp_bounds` registered with the layer."""
    low_if_neg, low_if_pos, high_if_neg, high_if_pos = bounds

    def at_least(bound):
        # The bounds are a few bits wide and the magnitude is not: a compare of its low bits (a short carry
        # chain) beside an OR of its high ones, not a chain the magnitude's width long.
        if len(magnitude) <= len(bound):
            return magnitude >= bound
        return magnitude[len(bound):].any() | (magnitude[:len(bound)] >= bound)
    return (Mux(neg, at_least(low_if_neg), ~at_least(low_if_pos)),
            Mux(neg, ~at_least(high_if_neg), at_least(high_if_pos)))


class PoolEngine(wiring.Component):
    """Max, average and global-average pooling of int8 pixel streams.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``lanes``, ``max_kernel`` and ``max_width``.

    Members
    -------
    i_layer : In(stream.Signature(pool_layer_layout(config)))
        One descriptor per layer (see :func:`pool_layer`); a layer starts once the previous layer's output has
        left. The generic engines take it then; the iCE40 engine reads it where it is offered and takes it with
        the layer's last scanned position (see :class:`_Ice40Pool`).
    i_pixels : In(stream.Signature(pixel_layout(config)))
        ``groups x height x width`` beats: channel-group planes in raster order.
    o_pixels : Out(stream.Signature(pixel_layout(config)))
        ``groups x OH x OW`` pooled beats in the same order (``groups`` beats for global average).
    """

    def __init__(self, config):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i_layer":  In(stream.Signature(pool_layer_layout(config))),
            "i_pixels": In(stream.Signature(pixel_layout(config))),
            "o_pixels": Out(stream.Signature(pixel_layout(config))),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        if cfg.target == "ice40":
            m.submodules.ice40 = ice40 = _Ice40Pool(cfg)
            wiring.connect(m, wiring.flipped(self.i_layer), ice40.i_layer)
            wiring.connect(m, wiring.flipped(self.i_pixels), ice40.i_pixels)
            wiring.connect(m, ice40.o_pixels, wiring.flipped(self.o_pixels))
            return m
        kmax, lanes = pool_max_kernel(cfg), cfg.lanes
        m.submodules.windows = wg = WindowGenerator(cfg, max_kernel=kmax)

        busy = Signal()
        mode = Signal(PoolMode)
        qmin, qmax = Signal(signed(8)), Signal(signed(8))
        layer_w = Signal(window_layer_layout(cfg, kmax))
        o = self.o_pixels
        stall = o.valid & ~o.ready
        o_free = ~stall

        # --- layer descriptor: windowed layers hand their window part to the generator at the same time.
        desc = self.i_layer.payload
        is_global = desc.mode == PoolMode.GLOBAL_AVG
        # Target "ecp5" (125 MHz) takes more stages for the same numbers: the taps are reduced per window row first
        # (stage R), and the division is split into the reciprocal lookup (B1) and the product (B2). Its window
        # generator also fills the taps outside the map with what they count as (-128 for a maximum, 0 for a
        # sum) in place of the layer's zero point, which pooling never uses: no mask in front of the reductions.
        deep = cfg.target == "ecp5"
        m.d.comb += [
            wg.i_layer.payload.eq(desc.window),
            wg.i_layer.valid.eq(self.i_layer.valid & ~busy & ~is_global),
            # Even a global layer waits for the generator to be idle: a windowed layer's output can be complete
            # while the generator still swallows input rows and columns no window reaches.
            self.i_layer.ready.eq(~busy & wg.i_layer.ready),
        ]
        global_start = Signal()
        # Whether the layer is a global average, a flag latched with the mode: the window generator's ``ready``
        # (and through it every enable of its scanner) then starts at a flip-flop, not at a compare of the mode.
        global_mode = Signal(name="global_mode")
        with m.If(self.i_layer.valid & self.i_layer.ready):
            m.d.sync += [busy.eq(1), mode.eq(desc.mode), qmin.eq(desc.qmin), qmax.eq(desc.qmax),
                         layer_w.eq(desc.window), global_mode.eq(is_global)]
            m.d.comb += global_start.eq(is_global)
        if deep:
            # For the clamp's decisions (see _clamp_flags): the magnitude bounds, and whether the layer is a
            # maximum, registered with the layer.
            clamp_bounds = [Signal(8, name=f"clamp_bound_{n}") for n in ("low_neg", "low_pos", "high_neg", "high_pos")]
            max_mode = Signal(name="max_mode")
            with m.If(self.i_layer.valid & self.i_layer.ready):
                m.d.sync += [r.eq(b) for r, b in zip(clamp_bounds, _clamp_bounds(desc.qmin, desc.qmax))]
                m.d.sync += max_mode.eq(desc.mode == PoolMode.MAX)
        global_ready = Signal()
        # ``pixels``: the input as both paths see it.
        if deep:
            # On the ECP5 the input passes a full-rate register slice with a second register (a skid,
            # :func:`pool_input_stages`) first. The input's valid is the accelerator's route AND-OR (conv output
            # or memory reader), and behind it the scanner's enable (``fire``) reached the generator's counters
            # and flags and the row memories' write enable and address, and the global path's pixel counters:
            # nextpnr's routed paths from the route flags and the reader's valid (8.2-8.95 ns). Behind the slice
            # they start at its flip-flops, and the input's ready is the skid's emptiness, a flip-flop. The slice
            # sits in front of both paths, so pixels a layer's path has not taken stay in order for the next.
            pixels = _Beat(Signal(pixel_layout(cfg), name="in_data", reset_less=True), Signal(name="in_valid"),
                           Signal(name="in_ready"))
            skid_data = Signal.like(self.i_pixels.payload, name="in_skid_data", reset_less=True)
            skid_valid = Signal(name="in_skid_valid")
            m.d.comb += self.i_pixels.ready.eq(~skid_valid)
            # The skid's data is taken whenever it is empty (it is read only with ``skid_valid``): its enable is
            # then a flip-flop. Taken only when the slice was held, the generator's ready (the scanner's flags
            # and the window's stall) reached all its enables through two LUTs, a routed failing group.
            with m.If(~skid_valid):
                m.d.sync += skid_data.eq(self.i_pixels.payload)
            with m.If(~pixels.valid | pixels.ready):
                m.d.sync += [pixels.valid.eq(skid_valid | self.i_pixels.valid),
                             pixels.payload.eq(Mux(skid_valid, skid_data, self.i_pixels.payload)),
                             skid_valid.eq(0)]
            with m.Elif(self.i_pixels.valid):
                m.d.sync += skid_valid.eq(1)
            # The generator sees the slice's valid as it is: in a global layer it has no layer (it was idle
            # when the global layer started), and an idle generator takes nothing whatever the valid
            # (``~global_mode`` there reached every enable of its scanner).
            m.d.comb += [
                wg.i_pixels.payload.eq(pixels.payload),
                wg.i_pixels.valid.eq(pixels.valid),
                pixels.ready.eq(Mux(global_mode, global_ready, wg.i_pixels.ready)),
            ]
        else:
            pixels = self.i_pixels
            m.d.comb += [
                wg.i_pixels.payload.eq(self.i_pixels.payload),
                wg.i_pixels.valid.eq(self.i_pixels.valid & ~global_mode),
                self.i_pixels.ready.eq(Mux(global_mode, global_ready, wg.i_pixels.ready)),
            ]

        # --- windowed modes: reduce the taps (stage A), then divide and clamp into the output register.
        win = wg.o_windows.payload
        if deep:
            # The output's enable alone on the ECP5: the generator offers windows only while a windowed layer is
            # busy (it takes the layer as ``busy`` rises, and the layer's last window has left it before ``busy``
            # falls; a global layer starts only once it is idle), so the ready differs only where nothing is
            # offered. ``busy & ~global_mode`` here reached every enable of the generator's scanner.
            m.d.comb += wg.o_windows.ready.eq(o_free)
        else:
            m.d.comb += wg.o_windows.ready.eq(o_free & busy & ~global_mode)
        max_sum = kmax * kmax * 128
        # Data registers here and below are reset-less: they mean something only beside the valid flags and
        # phases, which keep the reset, or are cleared where a layer or plane starts. The run's flush (see the
        # accelerator) reached some 4,200 of the pool's flip-flops on the ULX3S, across the die.
        a_valid, a_last = Signal(), Signal()
        a_max = [Signal(signed(8), name=f"a_max_{l}", reset_less=True) for l in range(lanes)]
        a_sum = [Signal(signed(max_sum.bit_length() + 1), name=f"a_sum_{l}", reset_less=True) for l in range(lanes)]
        a_count = Signal(range(kmax * kmax + 1))

        rows_in = Signal(range(kmax + 1))
        cols_in = Signal(range(kmax + 1))
        m.d.comb += [rows_in.eq(sum(win.row_valid[i] for i in range(kmax))),
                     cols_in.eq(sum(win.col_valid[j] for j in range(kmax)))]

        def max_tree(values):
            """A balanced tree of maxima (padded taps enter as -128, which never beats an in-bounds tap)."""
            level = list(values)
            while len(level) > 1:
                nxt = []
                for a, b in zip(level[::2], level[1::2]):
                    s = Signal(signed(8))
                    m.d.comb += s.eq(Mux(a > b, a, b))
                    nxt.append(s)
                level = nxt + ([level[-1]] if len(level) % 2 else [])
            return level[0]

        def split_max(values, name):
            """The largest of ``values`` (8-bit, signed) in two stages (target "ecp5"): the values and every
            pair's compare registered, then the first of the largest picked by an AND-OR multiplexer of those
            registers. Returns the pick, for the caller to register; the first stage's registers are updated
            here, under the caller's enable."""
            values = list(values)
            held = [Signal(signed(8), name=f"{name}_v{i}", reset_less=True) for i in range(len(values))]
            ge = {(i, j): Signal(name=f"{name}_ge_{i}_{j}", reset_less=True)
                  for i in range(len(values)) for j in range(i + 1, len(values))}
            m.d.sync += [h.eq(v) for h, v in zip(held, values)]
            # Signed compares as unsigned ones (_biased).
            biased = [_biased(v) for v in values]
            m.d.sync += [flag.eq(biased[i] >= biased[j]) for (i, j), flag in ge.items()]
            picked = 0
            for i, v in enumerate(held):
                wins = Cat(*(~ge[j, i] for j in range(i)), *(ge[i, j] for j in range(i + 1, len(held))))
                picked = picked | Mux(wins.all(), v, 0).as_unsigned()
            return picked.as_signed()

        def split_sum(values, name):
            """The sum of ``values`` in two stages: the pairs' sums registered (the first adder level), then
            the rest. Returns the second stage's sum, for the caller to register."""
            values = list(values)
            width = max(len(v) for v in values) + 1
            firsts = [Signal(signed(width), name=f"{name}_s{k}", reset_less=True)
                      for k in range((len(values) + 1) // 2)]
            m.d.sync += [f.eq(sum(values[2 * k:2 * k + 2])) for k, f in enumerate(firsts)]
            return sum(firsts)

        if deep:
            m.d.comb += wg.i_layer.payload.zero_point.eq(Mux(desc.mode == PoolMode.MAX, -128, 0))
        with m.If(o_free):
            if not deep:
                m.d.sync += a_valid.eq(wg.o_windows.valid & wg.o_windows.ready)
                m.d.sync += [a_last.eq(win.last), a_count.eq(rows_in * cols_in)]
                for lane in range(lanes):
                    taps = [(win.row_valid[i] & win.col_valid[j], win.taps[i][j][lane])
                            for i in range(kmax) for j in range(kmax)]
                    m.d.sync += a_max[lane].eq(max_tree(Mux(ok, v, -128) for ok, v in taps))
                    m.d.sync += a_sum[lane].eq(sum(Mux(ok, v, 0) for ok, v in taps))
            else:
                # Five stages: a row's compares (and the first adder level of its sum), the row's maximum (and
                # sum), the rows' results again, then the same over the rows: a compare's carry chain and the pick
                # behind it in one cycle were the pool's longest paths (and a row's two adders in a row).
                r_valid, r_last = Signal(), Signal()
                r_rows, r_cols = Signal.like(rows_in), Signal.like(cols_in)
                r2_valid, r2_last, r2_count = Signal(), Signal(), Signal.like(a_count)
                r3_valid, r3_last, r3_count = Signal(), Signal(), Signal.like(a_count)
                q_valid, q_last, q_count = Signal(), Signal(), Signal.like(a_count)
                m.d.sync += [r_valid.eq(wg.o_windows.valid & wg.o_windows.ready), r_last.eq(win.last),
                             r_rows.eq(rows_in), r_cols.eq(cols_in)]
                m.d.sync += [r2_valid.eq(r_valid), r2_last.eq(r_last), r2_count.eq(r_rows * r_cols)]
                m.d.sync += [r3_valid.eq(r2_valid), r3_last.eq(r2_last), r3_count.eq(r2_count)]
                m.d.sync += [q_valid.eq(r3_valid), q_last.eq(r3_last), q_count.eq(r3_count)]
                m.d.sync += [a_valid.eq(q_valid), a_last.eq(q_last), a_count.eq(q_count)]
                for lane in range(lanes):
                    r_max = [Signal(signed(8), name=f"r_max_{lane}_{i}", reset_less=True) for i in range(kmax)]
                    r_sum = [Signal(signed((kmax * 128).bit_length() + 1), name=f"r_sum_{lane}_{i}", reset_less=True)
                             for i in range(kmax)]
                    for i in range(kmax):
                        row = [win.taps[i][j][lane] for j in range(kmax)]      # outside: -128 or 0, see above
                        pick = split_max(row, f"r_{lane}_{i}")
                        m.d.sync += [r_max[i].eq(pick), r_sum[i].eq(split_sum(row, f"r_{lane}_{i}"))]
                    # The rows' results registered once more, beside the window's compares: from the rows'
                    # picks (by the window registers) to those compares was a routed net of up to 3.4 ns in
                    # front of a carry chain and two LUTs.
                    r3_max = [Signal.like(v, name=f"r3_max_{lane}_{i}", reset_less=True) for i, v in enumerate(r_max)]
                    r3_sum = [Signal.like(v, name=f"r3_sum_{lane}_{i}", reset_less=True) for i, v in enumerate(r_sum)]
                    m.d.sync += [q.eq(d) for q, d in zip(r3_max + r3_sum, r_max + r_sum)]
                    pick = split_max(r3_max, f"a_{lane}")
                    m.d.sync += [a_max[lane].eq(pick), a_sum[lane].eq(split_sum(r3_sum, f"a_{lane}"))]

        max_numer = max_sum + (kmax * kmax) // 2
        shift, table = avg_reciprocals(kmax * kmax, max_numer)
        recip = Signal(range(table[1] + 1))
        with m.Switch(a_count):
            for c in range(1, kmax * kmax + 1):
                with m.Case(c):
                    m.d.comb += recip.eq(table[c])
        window_result = []
        out_valid, out_last = a_valid, a_last
        numer_width = len(Signal(range(max_numer + 1))) + 1          # signed, for its Booth digits
        # B1, the product's stages, and C (the quotient, registered before its negation and the clamp: three
        # carry chains behind the product's last adder were 12 ns).
        divide_stages = 1 + lut_product_stages(booth_digit_count(numer_width)) + 1

        def delayed(value, name, extra=0, reset_less=True):
            """``value`` through the divide's stages (B1, the product's and C) and ``extra`` more, under the
            output's enable (data reset-less; the flags keep the reset)."""
            return delay_line(m, o_free, value, divide_stages + extra, f"{name}_b", reset_less=reset_less)

        if deep:
            b1_recip = Signal.like(recip, reset_less=True)
            with m.If(o_free):
                m.d.sync += b1_recip.eq(recip)
            # D: the result before the clamp.
            out_valid, out_last = delayed(a_valid, "div_valid", 1, False), delayed(a_last, "div_last", 1, False)
        for lane in range(lanes):
            magnitude = Signal(range(max_numer + 1), name=f"numer_{lane}")
            if deep:
                # |sum| + count // 2 as one adder or subtractor a sign (the negation and the addition after it
                # were two carry chains in front of the numerator's Booth digits).
                half = a_count >> 1
                m.d.comb += magnitude.eq(Mux(a_sum[lane] < 0, half - a_sum[lane], a_sum[lane] + half))
            else:
                m.d.comb += magnitude.eq(Mux(a_sum[lane] < 0, -a_sum[lane], a_sum[lane]) + (a_count >> 1))
            quotient = Signal(range(max_numer + 1), name=f"quotient_{lane}", reset_less=True)
            neg, window_max = a_sum[lane] < 0, a_max[lane]
            if not deep:
                m.d.comb += quotient.eq((magnitude * recip) >> shift)
            else:
                # B1 registers the numerator's Booth digits and the reciprocal; the product is a LUT Booth
                # multiply, one adder level per stage (a 13x18 ``*`` in LUT full adders is too deep for 125 MHz).
                digits = booth_digit_count(numer_width)
                b1_neg, b1_one, b1_two = (Signal(digits, name=f"b1_{n}_{lane}", reset_less=True)
                                          for n in ("neg", "one", "two"))
                with m.If(o_free):
                    m.d.sync += [r.eq(v) for r, v in zip((b1_neg, b1_one, b1_two),
                                                         booth_digits(Cat(magnitude, Const(0, 1)).as_signed()))]
                recip_signed = Cat(b1_recip, Const(0, 1)).as_signed()
                product = lut_product(m, o_free, recip_signed, b1_neg, b1_one, b1_two,
                                      width=len(recip_signed) + numer_width, name=f"div_{lane}")
                with m.If(o_free):
                    m.d.sync += quotient.eq(product.as_unsigned() >> shift)
                # The maximum's clamp decisions are made in the divide's first stage, on a copy of the maximum
                # registered there, and travel with it (the layer's bounds hold still while it is busy): made
                # on ``a_max`` itself they were behind a routed net of up to 3 ns.
                max_first = Signal.like(window_max, name=f"div_max_first_{lane}", reset_less=True)
                with m.If(o_free):
                    m.d.sync += max_first.eq(window_max)
                # (Signed compares as unsigned ones of the sign-flipped values, as in split_max.)
                max_clamp = delay_line(m, o_free, Cat(_biased(max_first) < _biased(qmin),
                                                      _biased(max_first) > _biased(qmax)), divide_stages - 1,
                                       f"div_max_clamp_{lane}_b", reset_less=True)
                neg, window_max = delayed(neg, f"div_neg_{lane}"), delayed(window_max, f"div_max_{lane}")
            avg = Signal(signed(quotient.shape().width + 1), name=f"avg_{lane}")
            m.d.comb += avg.eq(Mux(neg, -quotient, quotient))
            value = Mux(mode == PoolMode.MAX, window_max, avg)
            if deep:
                # D also registers the clamp's decisions, made on the quotient before its negation and on the
                # window's maximum (the compares of the result behind D were the pool's slowest paths): the
                # output register's input is then multiplexers only.
                unclamped = Signal.like(avg, name=f"unclamped_{lane}", reset_less=True)
                below = Signal(name=f"clamp_below_{lane}", reset_less=True)
                above = Signal(name=f"clamp_above_{lane}", reset_less=True)
                avg_below, avg_above = _clamp_flags(quotient, neg, clamp_bounds)
                with m.If(o_free):
                    m.d.sync += [unclamped.eq(value),
                                 below.eq(Mux(max_mode, max_clamp[0], avg_below)),
                                 above.eq(Mux(max_mode, max_clamp[1], avg_above))]
                window_result.append(Mux(below, qmin, Mux(above, qmax, unclamped)))
            else:
                window_result.append(_clamp(value, qmin, qmax))

        # --- global average: per-plane sums, then a restoring divider per lane.
        max_count = global_max_count(cfg)
        nbits = _quotient_bits(cfg)
        g_x = Signal(range(cfg.max_width))
        g_y = Signal(16)
        g_count = Signal(range(max_count + 1))
        g_group = Signal(16)
        g_sum = [Signal(signed((max_count * 128).bit_length() + 1), name=f"g_sum_{l}", reset_less=True)
                 for l in range(lanes)]
        div_busy = Signal()                          # dividing, or holding a quotient for the output
        # On the ECP5 (``staged``, global_divider_steps) the divider takes three more steps: the pixels are
        # registered before they are summed, so the plane's last one enters the sum a step later (the block RAM,
        # the source multiplexer and the sum's carry chain were 10.8 ns in one cycle); a step turns the plane's
        # sum into the numerator (its sign off, half the count on: two carry chains after the sum's own were
        # 16 ns); the last negates the quotient of a negative sum, before the clamp (a negation and the clamp's
        # compares behind the quotient register were 10.6 ns).
        steps = global_divider_steps(cfg)
        staged = steps > nbits
        div_step = Signal(range(steps + 1))
        d_signed = ([Signal(signed(nbits + 1), name=f"d_signed_{l}", reset_less=True) for l in range(lanes)]
                    if staged else None)
        d_total = [Signal.like(g_sum[l], name=f"d_total_{l}") for l in range(lanes)] if staged else None
        div_last = Signal()
        divisor = Signal(range(max_count + 1))
        d_numer = [Signal(nbits, name=f"d_numer_{l}", reset_less=True) for l in range(lanes)]
        d_rem = [Signal(range(2 * max_count + 1), name=f"d_rem_{l}", reset_less=True) for l in range(lanes)]
        d_quot = [Signal(nbits, name=f"d_quot_{l}", reset_less=True) for l in range(lanes)]
        d_neg = [Signal(name=f"d_neg_{l}", reset_less=True) for l in range(lanes)]
        if staged:
            # The divider's phases as one-hot flags, set a cycle ahead, in place of compares of ``div_step``
            # (its decodes were in front of every enable of the remainders and quotients): the plane's last pixel
            # entering the sum, the numerator, the quotient bits, the negation, and the result held for the
            # output. ``div_step`` counts only the quotient bits, and ``div_final`` is "this is the last".
            div_summing, div_numer, div_dividing, div_negating, div_done, div_final = (
                Signal(name=f"div_{n}") for n in ("summing", "numer", "dividing", "negating", "done", "final"))

        g_feeding = Signal()                         # the layer still has pixels to come
        # Whether g_x (g_y) is the plane's last column (row), as flags stepped with them: the end of a plane
        # gates the input's ``ready``, and compares there started a path through the conv engine's output side.
        g_x_last, g_y_last = Signal(name="g_x_last"), Signal(name="g_y_last")
        with m.If(global_start):
            m.d.sync += [g_x.eq(0), g_y.eq(0), g_count.eq(0), g_group.eq(0), g_feeding.eq(1),
                         g_x_last.eq(desc.window.width == 1), g_y_last.eq(desc.window.height == 1)]
            if not staged:
                m.d.sync += [s.eq(0) for s in g_sum]
        if staged:
            # The sums are cleared a cycle after the start, from a flip-flop: ``global_start`` is the layer's
            # handshake, and it reached the reset of every sum bit (the routed analysis of session 17). The first
            # pixel is summed two cycles after the start at the earliest (``g_feeding``, then ``g_pixel_valid``).
            g_clear = Signal(name="g_clear")
            m.d.sync += g_clear.eq(global_start)
            with m.If(g_clear):
                m.d.sync += [s.eq(0) for s in g_sum]
        if staged:
            # On the ECP5 the counters are compared with layer constants registered at the start (the width and
            # height less 2, whether they are 1), not with sums of the descriptor's fields: an adder in front of
            # each compare made g_x -> g_x_last, g_y -> g_y_last and layer_w.groups -> g_feeding some of the
            # pool's slowest paths. ``g_last_group`` (g_group == groups - 1) is stepped at each plane's end from
            # ``g_second_last`` (g_group == groups - 2), which is compared on every cycle: planes end at least
            # the divider's steps apart, so it has caught up with g_group by the next one.
            g_w_less_2 = Signal(signed(len(layer_w.width) + 1), name="g_w_less_2")
            g_h_less_2 = Signal(signed(len(layer_w.height) + 1), name="g_h_less_2")
            g_groups_less_2 = Signal(signed(len(layer_w.groups) + 1), init=-2, name="g_groups_less_2")
            g_w_is_1, g_h_is_1 = Signal(name="g_w_is_1"), Signal(name="g_h_is_1")
            g_last_group, g_second_last = Signal(name="g_last_group"), Signal(name="g_second_last")
            m.d.sync += g_second_last.eq(g_group == g_groups_less_2)
            with m.If(global_start):
                w = desc.window
                m.d.sync += [g_w_less_2.eq(w.width - 2), g_h_less_2.eq(w.height - 2),
                             g_groups_less_2.eq(w.groups - 2), g_w_is_1.eq(w.width == 1),
                             g_h_is_1.eq(w.height == 1), g_last_group.eq(w.groups == 1),
                             g_second_last.eq(w.groups == 2)]
            width_is_1, height_is_1 = g_w_is_1, g_h_is_1
            x_next_last, y_next_last = g_x == g_w_less_2, g_y == g_h_less_2
            last_group = g_last_group
        else:
            width_is_1, height_is_1 = layer_w.width == 1, layer_w.height == 1
            x_next_last, y_next_last = g_x + 2 == layer_w.width, g_y + 2 == layer_w.height
            last_group = g_group == layer_w.groups - 1

        end_of_plane = g_x_last & g_y_last
        # A plane's last pixel hands the sums to the divider, so it waits until the divider is free.
        # The next layer's pixels may already be waiting: take none once the last plane is in.
        m.d.comb += global_ready.eq(g_feeding & (~end_of_plane | ~div_busy))
        pixel_in = Signal()
        if staged:
            # The same as below with the input's ready spelled out: ``g_feeding`` is only set in a global layer,
            # so the multiplexer between the two paths' ready and ``global_mode`` drop out (they put two more
            # LUTs between g_x_last and every register the plane's end moves).
            m.d.comb += pixel_in.eq(pixels.valid & g_feeding & ~(end_of_plane & div_busy))
        else:
            m.d.comb += pixel_in.eq(self.i_pixels.valid & self.i_pixels.ready & global_mode)
        with m.If(pixel_in):
            with m.If(g_x_last):
                m.d.sync += [g_x.eq(0), g_y.eq(g_y + 1), g_x_last.eq(width_is_1),
                             g_y_last.eq(Mux(g_y_last, height_is_1, y_next_last))]
            with m.Else():
                m.d.sync += [g_x.eq(g_x + 1), g_x_last.eq(x_next_last)]
            m.d.sync += g_count.eq(g_count + 1)
            with m.If(end_of_plane):
                m.d.sync += [g_x.eq(0), g_y.eq(0), g_count.eq(0), g_group.eq(g_group + 1),
                             div_busy.eq(1), *([] if staged else [div_step.eq(steps)]), divisor.eq(g_count + 1),
                             div_last.eq(last_group)]
                if staged:
                    # ``div_step`` is loaded, and the remainder and quotient cleared, by the numerator's step
                    # instead (nothing reads them before it; the previous plane's result has left through
                    # ``d_signed``).
                    m.d.sync += [div_summing.eq(1), g_last_group.eq(g_second_last)]
                else:
                    m.d.sync += [d.eq(0) for d in d_rem + d_quot]
                with m.If(last_group):
                    m.d.sync += g_feeding.eq(0)
        if staged:
            g_pixel = Signal.like(pixels.payload, name="g_pixel", reset_less=True)
            g_pixel_valid, g_pixel_last = Signal(name="g_pixel_valid"), Signal(name="g_pixel_last")
            m.d.sync += g_pixel_valid.eq(pixel_in)
            with m.If(pixel_in):
                m.d.sync += [g_pixel.eq(pixels.payload), g_pixel_last.eq(end_of_plane)]
            summed, summand, plane_end = g_pixel_valid, g_pixel, g_pixel_last
        else:
            summed, summand, plane_end = pixel_in, self.i_pixels.payload, end_of_plane
        with m.If(summed):
            for lane in range(lanes):
                total = Signal.like(g_sum[lane], name=f"g_total_{lane}")
                m.d.comb += total.eq(g_sum[lane] + summand[lane])
                m.d.sync += g_sum[lane].eq(total)
                with m.If(plane_end):
                    m.d.sync += [g_sum[lane].eq(0), d_neg[lane].eq(total < 0)]
                    if staged:
                        m.d.sync += d_total[lane].eq(total)
                    else:
                        m.d.sync += d_numer[lane].eq(Mux(total < 0, -total, total) + ((g_count + 1) >> 1))

        dividing = Signal()
        if staged:
            m.d.comb += dividing.eq(div_dividing)
            with m.If(div_summing):
                # The plane's last pixel enters the sum (above).
                m.d.sync += [div_summing.eq(0), div_numer.eq(1)]
            # The clamp's decisions are made with the negation, on the quotient (see _clamp_flags): behind
            # ``d_signed`` its compares were the global path's slowest.
            d_below = [Signal(name=f"d_below_{lane}", reset_less=True) for lane in range(lanes)]
            d_above = [Signal(name=f"d_above_{lane}", reset_less=True) for lane in range(lanes)]
            with m.If(div_negating):
                m.d.sync += [div_negating.eq(0), div_done.eq(1)]
                for lane in range(lanes):
                    below, above = _clamp_flags(d_quot[lane], d_neg[lane], clamp_bounds)
                    m.d.sync += [d_signed[lane].eq(Mux(d_neg[lane], -d_quot[lane], d_quot[lane])),
                                 d_below[lane].eq(below), d_above[lane].eq(above)]
            half = divisor >> 1
            with m.If(div_numer):
                m.d.sync += [div_numer.eq(0), div_dividing.eq(1), div_step.eq(nbits), div_final.eq(nbits == 1)]
                m.d.sync += [d.eq(0) for d in d_rem + d_quot]
                m.d.sync += [d_numer[lane].eq(Mux(d_neg[lane], half - d_total[lane], d_total[lane] + half))
                             for lane in range(lanes)]
            with m.If(div_dividing):
                m.d.sync += div_final.eq(div_step == 2)
                with m.If(div_final):
                    m.d.sync += [div_dividing.eq(0), div_negating.eq(1)]
        else:
            m.d.comb += dividing.eq(div_busy & (div_step != 0))
        with m.If(dividing):
            m.d.sync += div_step.eq(div_step - 1)
            for lane in range(lanes):
                partial = Signal(range(2 * max_count + 1), name=f"d_partial_{lane}")
                m.d.comb += partial.eq((d_rem[lane] << 1) | d_numer[lane][-1])
                if staged:
                    # One carry chain for the compare and the difference: its sign is the quotient bit.
                    diff = Signal(signed(len(partial) + 1), name=f"d_diff_{lane}")
                    m.d.comb += diff.eq(partial - divisor)
                    fits = ~diff[-1]
                else:
                    fits = partial >= divisor
                m.d.sync += [
                    d_rem[lane].eq(Mux(fits, diff if staged else partial - divisor, partial)),
                    d_quot[lane].eq((d_quot[lane] << 1) | fits),
                    d_numer[lane].eq(d_numer[lane] << 1),
                ]

        global_result = []
        for lane in range(lanes):
            q = d_quot[lane]
            if staged:
                global_result.append(Mux(d_below[lane], qmin, Mux(d_above[lane], qmax, d_signed[lane])))
            else:
                global_result.append(_clamp(Mux(d_neg[lane], -q, q), qmin, qmax))

        # --- the output register, shared by both paths.
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(~global_mode):
            with m.If(o_free):
                m.d.sync += o.valid.eq(out_valid & busy)
                with m.If(out_valid):
                    m.d.sync += [o.payload[lane].eq(window_result[lane]) for lane in range(lanes)]
                    with m.If(out_last):
                        m.d.sync += busy.eq(0)
        with m.Else():
            with m.If((div_done if staged else div_busy & (div_step == 0)) & o_free):
                m.d.sync += [o.valid.eq(1), div_busy.eq(0)]
                if staged:
                    m.d.sync += div_done.eq(0)
                m.d.sync += [o.payload[lane].eq(global_result[lane]) for lane in range(lanes)]
                with m.If(div_last):
                    m.d.sync += busy.eq(0)

        return m


class _Ice40Pool(wiring.Component):
    """The pool engine of target "ice40": max pooling over windows of at most 2x2, reduced as the pixels stream
    past, with one line buffer (two block RAMs) and a small fraction of the generic engine's logic.

    What it computes, and why no more: LeNet-5, the network the iCEBreaker runs, max-pools 2x2 with stride 2
    behind C1 and C3, and the iCE40UP5K has room for little beyond its 16 MACs. So: max pooling, windows 1x1 and
    2x2, any stride, padding up to ``kernel - 1``, layers up to :func:`ice40_pool_limits`. Not built, each refused
    by the dispatcher (``BAD_DESCRIPTOR``) and by the compiler (naming the layer):

    * wider windows: a 2x2 window needs only the row above, so one line buffer;
    * average pooling: even the cheap form (counts 1, 2, 4: TFLite's rounding by an add and a shift, bit-exact;
      built and measured) cost 253 of 698 LUT4s, for no layer of LeNet-5;
    * global average: a restoring divider per lane, for no layer of LeNet-5 either;
    * the activation clamp (``qmin``/``qmax`` must be -128/127): two comparisons and two multiplexers a lane
      (about 110 LUT4s), for pools that carry no activation in the networks this part runs (the ReLU is the
      convolution's clamp, before the pool, and a maximum of clamped values is clamped).

    The descriptor is not copied: the engine reads the fields it needs where the source holds them (a stream's
    payload stays put until it is taken) and takes the descriptor with the layer's last scanned position; the
    next layer starts, as on the generic engine, once the last output has left. Only the row and plane counters
    are kept, as wide as :func:`ice40_pool_limits` needs.

    Datapath (``lanes`` channels in parallel, one padded position per cycle, as the window generator scans). The
    taps are compared in offset binary (``x + 128``), where 0 is below every tap, so a padding tap is simply 0:

    * S0, scan: the position's pixel (0 in the padding) is registered, written to the line buffer as it comes,
      and the pixel above it is read. The buffer holds two rows, alternating with the input rows, each at its
      input column, so the row read is never the row being written and the block RAM needs no
      read-during-write logic. A 1x1 window, a padding column and the input row under a top padding row read a
      never written row of -128s instead, so a padding position may write whatever the input holds (a left
      padding column where the first input column then writes, a right one past the row's end).
    * S1, vertical: the larger of the pixel and the one above it; the values of this column and of the previous
      one (0 for a 1x1 window) are kept.
    * S2, horizontal: the larger of the two column values, into the output register.

    Each comparison has one operand inverted where it is made for free (after the block RAM, where yosys puts a
    LUT per bit to model the read register's initial value, and in front of the previous column's register),
    so a bit's carry, multiplexer and register share one logic cell. The data registers have no reset (their
    valid bits do), so the flip-flops' own reset and set inputs supply the padding and the 1x1 window's empty
    column.

    Latency: four cycles from scan to output with the consumer's, one less than the generic engine
    (:func:`pool_extra_stages` is -1). Back-pressure on the output stalls every stage at once.
    """

    def __init__(self, config):
        self._config = config
        super().__init__({
            "i_layer":  In(stream.Signature(pool_layer_layout(config))),
            "i_pixels": In(stream.Signature(pixel_layout(config))),
            "o_pixels": Out(stream.Signature(pixel_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        kmax, lanes = pool_max_kernel(cfg), cfg.lanes
        max_height, max_groups = ice40_pool_limits(cfg)
        o = self.o_pixels
        stall = o.valid & ~o.ready

        # --- the layer, read where the source holds it (see the class docstring).
        w = self.i_layer.payload.window
        wide = w.kernel[1] if kmax == 2 else Const(0)     # a 2x2 window (the kernel is 1 or 2)
        # One-bit padding flags (the fields have no bits at all on an instance built for 1x1 windows only, and
        # the complement of a zero-bit value is no bits, not 1).
        pad_top, pad_bottom, pad_left, pad_right = (w[f].bool() for f in ("pad_top", "pad_bottom", "pad_left",
                                                                            "pad_right"))
        ybits = Shape.cast(range(max_height + 1)).width
        gbits = Shape.cast(range(max_groups + 1)).width

        # --- S0: the scanner. Padding is at most one row or column on each side (kernel <= 2), so rows are
        # counted as input rows plus a row phase, and the tests for "in bounds" are a few equalities: no padded
        # height to add up, no wide comparison.
        px = Signal(range(cfg.max_width + 1))
        rows_left = Signal(ybits)                         # input rows of this plane from this one on
        groups_left = Signal(gbits)                       # planes of the layer from this one on
        # Registered flags for what the counters would otherwise be compared for on every position: set one
        # cycle early from the counter's next value, so the scan's end conditions (which reach the enables of
        # every counter and, through ``i_layer.ready``, the accelerator) start at flip-flops, not carry chains.
        started = Signal()                                # scanning a layer (groups_left != 0)
        last_plane = Signal()                             # groups_left == 1
        last_body_row = Signal()                          # rows_left == 1
        at_last = Signal()                                # px + 1 == width
        # Row phase: phase[0] is set on the padding rows (TOP, BOTTOM), phase[1] on the rows whose row above is
        # not an input row of this plane to read (AFTER_TOP, the first input row under a top padding row; BOTTOM,
        # where it does not matter).
        phase = Signal(2)
        top, after_top, bottom = phase == _TOP, phase == _AFTER_TOP, phase == _BOTTOM
        body = ~phase[0]
        row_wait = Signal(range(MAX_STRIDE))              # rows until the next row that ends a window
        col_wait = Signal(range(MAX_STRIDE))
        # The padding columns have flags, as the padding rows have a phase: "in bounds" is then a few flip-flops
        # (the input's ready and the line buffer's address come straight from them), and ``px`` counts input
        # columns, held on the left padding column (whose tap is never read) and one past the last on the right.
        left, right = Signal(), Signal()
        # started & body & ~left & ~right, kept as its own flip-flop: the input's ready is this and the stall
        # only (it reaches the producer's pipeline enables through the accelerator's routing).
        in_bounds = Signal()
        s1_valid, s2_valid = Signal(), Signal()           # S1: a position was scanned; S2: it ends a window

        # A layer starts once the previous one has left the pipeline, as the generic engine takes its next one.
        # ``armed`` is "a layer is offered and not yet started", registered here a cycle after the offer: the
        # offer's valid comes from the accelerator's dispatcher, placed elsewhere, and ``load`` steers every
        # counter (a route and two LUTs in front of it began nextpnr's critical path). It holds: the layer is
        # taken only once started, and nothing starts but a load.
        armed = Signal(name="armed")
        load = Signal(attrs={"keep": 1})
        m.d.sync += armed.eq(self.i_layer.valid & ~started & ~load)
        m.d.comb += load.eq(armed & ~s1_valid & ~s2_valid & ~o.valid)

        # The line buffer half of this row: consecutive input rows alternate, and so do the last input row and a
        # bottom padding row (``rows_left`` is 0 there). A top padding row shares the first input row's half: the
        # input row reads the never written rows instead, and overwrites it.
        bank = rows_left[0]
        to_bottom = body & last_body_row & pad_bottom
        last_row = bottom | (body & last_body_row & ~pad_bottom)
        px_next = Signal.like(px)
        m.d.comb += px_next.eq(px + 1)
        in_col = ~left & ~right
        last_body_col = in_col & at_last

        # The input's valid arrives late (through the accelerator's routing), and the enables of every counter
        # depend on it through ``fire``: kept wires (yosys's ABC maps each side separately) make it enter at the
        # last LUTs, where a unit-delay mapping would otherwise thread it through the flags' logic.
        keep = {"keep": 1}
        fire = Signal(attrs=keep)
        m.d.comb += [
            self.i_pixels.ready.eq(in_bounds & ~stall),
            fire.eq(started & ~stall & (~in_bounds | self.i_pixels.valid)),
        ]
        # ``end_col`` (the position ends its row: the right padding column, or the last input column without
        # one) is a flip-flop, moved with ``left``, ``right`` and ``at_last`` below: two LUTs fewer between them
        # and every counter's enable (nextpnr's critical path at 36.3 MHz).
        end_col = Signal(name="end_col")
        end_row = Signal(attrs=keep)
        row_end, plane_end = Signal(attrs=keep), Signal(attrs=keep)
        m.d.comb += [end_row.eq(last_row), row_end.eq(fire & end_col), plane_end.eq(row_end & end_row)]
        layer_end = plane_end & last_plane
        # Taken with the last position (from the flags, the stall and the input's valid: a few LUTs); taking it a
        # cycle later would lengthen a layer that ends on positions no window reaches by a cycle.
        m.d.comb += self.i_layer.ready.eq(layer_end)
        # Each counter is cleared (a free synchronous reset) or loaded, or stepped, under one enable. The row
        # and plane counters count down to 1: smaller, measured, than counting up to the descriptor's value.
        # Within a row's end, "the plane ends" is the early flag ``end_row``, not the late ``plane_end``.
        restart = load | end_row
        new_phase = Mux(restart, Mux(pad_top, _TOP, _BODY), Mux(top, _AFTER_TOP, Mux(to_bottom, _BOTTOM, _BODY)))
        # The layer goes on after a row's end unless the row ends its last plane.
        started_next = Mux(load, w.groups[:gbits] != 0, ~(last_row & last_plane))
        # ``at_next`` (px + 2 == width: the next input column is the last) is a flip-flop too, moved with ``px``
        # from ``width - 3``, registered (the layer's fields hold still from the load on, and the first step
        # comes a cycle after it): the flags above it are then a LUT or two from flip-flops.
        at_first = Signal(attrs=keep)
        at_next = Signal(name="at_next")
        width_less_3 = Signal(signed(len(w.width) + 1), name="width_less_3")
        m.d.sync += width_less_3.eq(w.width - 3)
        m.d.comb += at_first.eq(w.width == 1)
        # The column registers move on a load or a scanned position, and what they take does not depend on
        # ``fire``: within the enable, "the row ends" is ``end_col`` alone (a position fires or nothing moves).
        # ``fire`` (the input's late valid) then reaches their clock enables only, not their data: written as
        # ``If(load | row_end) / Elif(fire)``, yosys put ``fire & end_col`` into every data input too.
        with m.If(load | fire):
            with m.If(load | end_col):
                m.d.sync += [px.eq(0), at_last.eq(at_first), col_wait.eq(wide), left.eq(pad_left), right.eq(0),
                             in_bounds.eq(started_next & ~new_phase[0] & ~pad_left),
                             end_col.eq(~pad_left & at_first & ~pad_right), at_next.eq(w.width == 2)]
            with m.Else():
                m.d.sync += [col_wait.eq(Mux(col_wait == 0, w.stride - 1, col_wait - 1)), left.eq(0),
                             right.eq(last_body_col), in_bounds.eq(body & ~last_body_col)]
                # As ``right | (~left & ~right & at_last & ~pad_right)`` of the moved flags.
                last_next = Mux(left, at_last, at_next)
                m.d.sync += end_col.eq(last_body_col | (last_next & ~pad_right))
                with m.If(~left):
                    m.d.sync += [px.eq(px_next), at_last.eq(at_next), at_next.eq(px == width_less_3)]
        # A row's end moves the row counter unless it is a top padding row's (the bottom one restarts it): one
        # LUT after ``row_end`` (``restart | body``, spelled out, put three more on nextpnr's critical path).
        with m.If(load | (row_end & ~top)):
            with m.If(restart):
                m.d.sync += [rows_left.eq(w.height[:ybits]), last_body_row.eq(w.height[:ybits] == 1)]
            with m.Else():
                m.d.sync += [rows_left.eq(rows_left - 1), last_body_row.eq(rows_left == 2)]
        with m.If(load):
            m.d.sync += [groups_left.eq(w.groups[:gbits]), last_plane.eq(w.groups[:gbits] == 1),
                         started.eq(w.groups[:gbits] != 0)]
        with m.Elif(plane_end):
            m.d.sync += [groups_left.eq(groups_left - 1), last_plane.eq(groups_left == 2),
                         started.eq(~last_plane)]
        with m.If(load | row_end):
            m.d.sync += [
                phase.eq(new_phase),
                row_wait.eq(Mux(restart, wide, Mux(row_wait == 0, w.stride - 1, row_wait - 1))),
            ]

        # S0 -> S1: the pixel in offset binary, 0 in the padding. S1 keeps what it needs of the layer (the
        # descriptor may be gone after the last position). The data registers have no reset (their valid bits
        # do): the flip-flops' reset input serves the padding's 0 (and their set input the 1x1 window's "no
        # previous column") instead of a LUT per bit.
        s1_pixel = Signal(data.ArrayLayout(8, lanes), reset_less=True)
        s1_emit, s1_wide = Signal(), Signal()
        with m.If(~stall):
            m.d.sync += s1_valid.eq(fire)
        with m.If(fire):
            m.d.sync += [s1_emit.eq((row_wait == 0) & (col_wait == 0)), s1_wide.eq(wide)]
            m.d.sync += [s1_pixel[lane].eq(Mux(in_bounds, self.i_pixels.payload[lane].as_unsigned() ^ 0x80, 0))
                         for lane in range(lanes)]

        # The line buffer: a row at (0, bank, input column), written as the position is scanned, with the
        # pixel as it comes (a padding position writes whatever the input holds: such a tap is never read). Read
        # as an asynchronous port plus a register that yosys folds into the block RAM: the row read is never the
        # row written (no_rw_check), and the register is reset-less since the block RAM's has no reset. A 1x1
        # window, a padding column and the input row under a top padding row read the upper half instead, never
        # written and -128 in every lane.
        above_inv = [Const(0xFF, 8)] * lanes          # the pixel above, inverted offset binary (127 - x)
        if kmax == 2:
            col_bits = len(px)
            m.submodules.line = line = Memory(shape=8 * lanes, depth=4 << col_bits,
                                              init=[int("80" * lanes, 16)] * (4 << col_bits),
                                              attrs={"no_rw_check": 1})
            wr, rd = line.write_port(), line.read_port(domain="comb")
            above_row = Signal(8 * lanes, reset_less=True)
            real = wide & in_col & ~after_top
            m.d.comb += [
                wr.addr.eq(Cat(px[:col_bits], bank, 0)), wr.data.eq(self.i_pixels.payload), wr.en.eq(fire),
                rd.addr.eq(Cat(px[:col_bits], ~bank, ~real)),
            ]
            with m.If(fire):
                m.d.sync += above_row.eq(rd.data)
            # Yosys models the register's initial value with one LUT per bit after the block RAM; the inversion
            # that the comparison wants (see ``larger``) folds into it.
            above_inv = [above_row.word_select(lane, 8) ^ 0x7F for lane in range(lanes)]

        def larger(a, b_inv):
            """The larger of ``a`` and ``~b_inv``: with one operand inverted, the comparison's carry chain and the
            multiplexer share each bit's LUT inputs (and so its logic cell), and no bit needs an inverter."""
            b = Signal(8)
            m.d.comb += b.eq(~b_inv)
            return Mux((a + b_inv)[8], a, b)

        # S1 -> S2: the column values of this position and of the previous one, the latter inverted.
        col_now = [Signal(8, name=f"col_now_{l}", reset_less=True) for l in range(lanes)]
        col_prev_inv = [Signal(8, name=f"col_prev_inv_{l}", reset_less=True) for l in range(lanes)]
        with m.If(~stall):
            m.d.sync += s2_valid.eq(s1_valid & s1_emit)
            with m.If(s1_valid):
                for lane in range(lanes):
                    m.d.sync += [col_now[lane].eq(larger(s1_pixel[lane], above_inv[lane])),
                                 col_prev_inv[lane].eq(Mux(s1_wide, ~col_now[lane], 0xFF))]

        # S2 -> output.
        out = Signal(data.ArrayLayout(8, lanes), reset_less=True)
        m.d.comb += o.payload.eq(out)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(~stall):
            m.d.sync += o.valid.eq(s2_valid)
            with m.If(s2_valid):
                m.d.sync += [out[lane].eq(larger(col_now[lane], col_prev_inv[lane]) ^ 0x80) for lane in range(lanes)]
        return m
