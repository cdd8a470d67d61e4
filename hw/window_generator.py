"""Window generator: line buffers that turn a raster pixel stream into KxK windows, one window per cycle.

Stream order
------------
The input is an int8 feature map, ``lanes`` channels per beat. A layer with ``C`` channels is sent as
``groups = ceil(C / lanes)`` *channel-group planes*, one after the other: all ``H x W`` pixels of channels
``0 .. lanes-1`` in raster order, then all pixels of the next ``lanes`` channels, and so on (unused lanes of the
last group carry anything). Planes keep the line buffers at ``max_kernel x max_width`` pixels whatever ``C`` is,
instead of ``max_kernel x max_width x C``, and every engine then sees one plane at a time.

Windows
-------
For each plane the generator emits, in raster order of the output, one beat per output pixel holding the
``max_kernel x max_width`` window ``taps[i][j][lane]``, top-left aligned (``i, j < kernel`` are the layer's taps).
A tap that falls in the padding, or outside the ``kernel x kernel`` window, carries the input zero point (so a
convolution over it adds exactly nothing), and ``row_valid[i] & col_valid[j]`` says whether tap ``(i, j)`` is an
in-bounds input pixel (pooling needs that: padding never wins a max and is not counted by an average).

How it works: a scanner walks the *padded* map, one padded pixel per cycle; an in-bounds position takes one input
beat, a padding position takes none. Each input row is written into one of ``max_kernel`` row memories (one
write and one read port each, so they map to block RAM); for every padded pixel the ``kernel - 1`` rows above it
are read back and, with the pixel itself, shifted as a new column into a ``max_kernel x max_kernel`` register
window. Nothing is materialized beyond the rows the kernel needs (no im2col). Out-of-bounds taps are replaced by
the zero point as their column enters the window (a tap row's flag is the same for every column of a window, a
column's is its own), so pad positions never need writing and the taps leave straight from the registers.

Throughput: one padded pixel per cycle, so a plane takes ``(H + pad_top + pad_bottom) x (W + pad_left +
pad_right)`` cycles when neither stream stalls; with stride 1 that is one window per cycle apart from the
``kernel - 1`` warm-up rows and columns.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import AcceleratorConfig
from .memory_map import COPY_ATTR, registered_read

__all__ = ["WindowGenerator", "window_layer_layout", "pixel_layout", "window_layout", "window_layer",
           "window_output_shape", "window_extra_stages", "window_scan_start"]

#: Widest ``height`` and ``groups`` a descriptor can carry.
MAX_HEIGHT = (1 << 16) - 1
MAX_GROUPS = (1 << 16) - 1
MAX_STRIDE = 7


def window_layer_layout(config, max_kernel=None):
    """Runtime parameters of one layer, latched when the descriptor is accepted."""
    kmax = config.max_kernel if max_kernel is None else max_kernel
    return data.StructLayout({
        "height":      unsigned(16),
        "width":       range(config.max_width + 1),
        "kernel":      range(kmax + 1),
        "stride":      range(MAX_STRIDE + 1),
        "pad_top":     range(kmax),
        "pad_bottom":  range(kmax),
        "pad_left":    range(kmax),
        "pad_right":   range(kmax),
        "zero_point":  signed(8),
        "groups":      unsigned(16),
    })


def pixel_layout(config):
    """One input beat: ``lanes`` int8 channels of one pixel."""
    return data.ArrayLayout(signed(8), config.lanes)


def window_layout(config, max_kernel=None):
    """One output beat: a window ``taps[i][j][lane]``, its in-bounds flags, and framing."""
    kmax = config.max_kernel if max_kernel is None else max_kernel
    return data.StructLayout({
        "taps":          data.ArrayLayout(data.ArrayLayout(pixel_layout(config), kmax), kmax),
        "row_valid":     kmax,
        "col_valid":     kmax,
        "last_in_group": 1,
        "last":          1,
    })


def window_extra_stages(config):
    """Register stages the window generator has for ``config.target`` beyond its two: 1 on the ECP5, where the
    row memories' read data is registered before the column multiplexers (a DP16KD's clock-to-output takes
    about half of a 125 MHz cycle), 0 elsewhere."""
    return 1 if config.target == "ecp5" else 0


def window_scan_start(config):
    """The cycle at which the window generator built for ``config`` visits its first position, counting the cycle
    that takes the descriptor as 1: 2, and 3 on the ECP5, whose tap bounds take a cycle to load."""
    return 3 if config.target == "ecp5" else 2


def window_output_shape(height, width, kernel, stride, padding):
    """Output ``(OH, OW)`` of a window layer; ``padding`` is ``(top, bottom, left, right)``."""
    top, bottom, left, right = padding
    return ((height + top + bottom - kernel) // stride + 1, (width + left + right - kernel) // stride + 1)


def window_layer(config, *, height, width, kernel, stride, padding=(0, 0, 0, 0), zero_point=0, groups=1,
                 max_kernel=None, name="layer"):
    """Check a layer's window parameters against ``config`` and return them as a descriptor dict.

    Raises ``ValueError`` naming ``name`` and the offending parameter.
    """
    kmax = config.max_kernel if max_kernel is None else max_kernel
    top, bottom, left, right = padding

    def check(what, value, low, high):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"{name}: {what} must be an integer from {low} to {high}, not {value!r}")

    check("kernel", kernel, 1, kmax)
    check("height", height, 1, MAX_HEIGHT)
    check("width", width, 1, config.max_width)
    check("stride", stride, 1, MAX_STRIDE)
    for what, pad in zip(("pad_top", "pad_bottom", "pad_left", "pad_right"), padding):
        check(what, pad, 0, kernel - 1)
    check("zero_point", zero_point, -128, 127)
    check("groups", groups, 1, MAX_GROUPS)
    if height + top + bottom < kernel or width + left + right < kernel:
        raise ValueError(f"{name}: the {kernel}x{kernel} kernel does not fit the padded "
                         f"{height + top + bottom}x{width + left + right} input")
    return {"height": height, "width": width, "kernel": kernel, "stride": stride, "pad_top": top,
            "pad_bottom": bottom, "pad_left": left, "pad_right": right, "zero_point": zero_point,
            "groups": groups}


class WindowGenerator(wiring.Component):
    """Line buffers and a register window: raster pixels in, one KxK window per cycle out.

    Parameters
    ----------
    config : AcceleratorConfig
        Supplies ``lanes``, ``max_kernel`` and ``max_width``.
    max_kernel : int, optional
        Build for a smaller largest kernel than ``config.max_kernel`` (the depthwise engine builds a 3x3 one).

    Members
    -------
    i_layer : In(stream.Signature(window_layer_layout(config)))
        A layer descriptor (see :func:`window_layer`); taken when the previous layer has fully left.
    i_pixels : In(stream.Signature(pixel_layout(config)))
        ``groups x height x width`` beats (channel-group planes in raster order).
    o_windows : Out(stream.Signature(window_layout(config)))
        ``groups x OH x OW`` windows; ``last_in_group`` marks each plane's final window, ``last`` the layer's.
    """

    def __init__(self, config, *, max_kernel=None):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, not {config!r}")
        kmax = config.max_kernel if max_kernel is None else max_kernel
        if not isinstance(kmax, int) or isinstance(kmax, bool) or not 1 <= kmax <= config.max_kernel:
            raise ValueError(f"max_kernel must be an integer from 1 to {config.max_kernel}, not {max_kernel!r}")
        self._config = config
        self._kmax = kmax
        super().__init__({
            "i_layer":   In(stream.Signature(window_layer_layout(config, kmax))),
            "i_pixels":  In(stream.Signature(pixel_layout(config))),
            "o_windows": Out(stream.Signature(window_layout(config, kmax))),
        })

    @property
    def config(self):
        return self._config

    @property
    def max_kernel(self):
        return self._kmax

    def elaborate(self, platform):
        m = Module()
        cfg, kmax = self._config, self._kmax
        pix = pixel_layout(cfg)

        layer = Signal(window_layer_layout(cfg, kmax))
        span_w = cfg.max_width + 2 * (kmax - 1)
        # The last padded row and column (the padded map's height and width less one, registered so that the
        # scanner's wrap compares take no adder).
        py_max = Signal(range(MAX_HEIGHT + 2 * kmax), name="py_max")
        px_max = Signal(range(span_w + 1), name="px_max")

        # Stage 0: the scanner's position in the padded map.
        active = Signal()
        py = Signal.like(py_max, name="py")
        px = Signal.like(px_max, name="px")
        group = Signal(16)
        # group == groups - 1 and group == groups - 2, stepped with group: the first at its steps (from the second),
        # the second on every cycle (group moves at most once a plane), so the scanner's enables meet no compare.
        last_group, second_last = Signal(name="last_group"), Signal(name="second_last_group")
        buffered = window_extra_stages(cfg) == 1
        if buffered:
            # On the ECP5 against ``groups - 2``, a register loaded with the descriptor: the adder in front of
            # the compare made it one of the pool's slowest paths (group -> second_last_group).
            groups_less_2 = Signal(signed(len(layer.groups) + 1), init=-2, name="groups_less_2")
            m.d.sync += second_last.eq(group == groups_less_2)
        else:
            m.d.sync += second_last.eq(group + 2 == layer.groups)
        write_row = Signal(range(kmax))              # row memory receiving padded row py (py mod kmax)
        row_wait = Signal(range(MAX_STRIDE + kmax))  # rows until the next row that ends a window
        col_wait = Signal(range(MAX_STRIDE + kmax))

        # Stage 1: the column read for the previous scanned position.
        s1_valid = Signal()
        s1_pixel = Signal(pix, reset_less=True)          # data, meaningful with s1_valid (here and below)
        s1_row_sel = [Signal(range(kmax), name=f"s1_row_sel_{i}") for i in range(kmax)]
        s1_emit = Signal()
        s1_row_valid = Signal(kmax)
        s1_col_valid = Signal(kmax)
        s1_col_in = Signal()                             # the column entering the window is inside the map
        s1_last_in_group = Signal()
        s1_last = Signal()
        if buffered:
            # The parts of the flags above, registered apart on the ECP5 (see stage 2).
            s1_row_end, s1_col_end, s1_group_end = (Signal(name=f"s1_{n}_end") for n in ("row", "col", "group"))
            s1_row_lo, s1_row_hi, s1_col_lo, s1_col_hi = (Signal(kmax, name=f"s1_{n}") for n in (
                "row_lo", "row_hi", "col_lo", "col_hi"))

        # Output stage: the window registers themselves (the payload is read straight from them).
        window = [[Signal(pix, name=f"window_{i}_{j}", reset_less=True) for j in range(kmax)] for i in range(kmax)]
        row_valid = Signal(kmax)
        col_valid = Signal(kmax)
        o = self.o_windows
        stall = o.valid & ~o.ready

        # Accept a new layer only once the previous one has left every stage, so that the latched descriptor
        # is never changed under a window still in flight.
        if buffered:
            # Marked as its lanes' copies are (stage 2, below): unmarked, yosys merged it into one of them, and
            # that lane's window enables then also drove the layer handshake's (a routed failing group).
            s2_valid = Signal(name="s2_valid", attrs={COPY_ATTR: 1})
            # ``loading``: the cycle after a descriptor is taken, in which the tap bounds are summed from
            # registers (see below); the scanner starts the cycle after it.
            loading = Signal(name="loading")
            m.d.comb += self.i_layer.ready.eq(~active & ~loading & ~s1_valid & ~s2_valid & ~o.valid)
        else:
            m.d.comb += self.i_layer.ready.eq(~active & ~s1_valid & ~o.valid)
        # Bounds the scanner's position is compared with, as registers computed with the descriptor: every
        # compare below is then one carry chain from registers, not an adder and a compare (on the ECP5 the tap
        # flags' adders, compares and the scanner's enable were 14 ns of a cycle). Tap row i (of the window whose
        # bottom-right tap is at py) is inside when row_lo[i] <= py < row_hi[i], likewise columns; a window's
        # last row and column are those from last_py and last_px on.
        bound = signed(py_max.shape().width + 2)
        row_lo = [Signal(bound, name=f"row_lo_{i}") for i in range(kmax)]
        row_hi = [Signal(bound, name=f"row_hi_{i}") for i in range(kmax)]
        col_lo = [Signal(bound, name=f"col_lo_{i}") for i in range(kmax)]
        col_hi = [Signal(bound, name=f"col_hi_{i}") for i in range(kmax)]
        tap_used = Signal(kmax, name="tap_used")
        last_py, last_px = Signal(bound, name="last_py"), Signal(bound, name="last_px")
        # Whether the scanner's row and column are inside the map, as flags stepped with it: they gate the input's
        # ``ready``, which the producer's output FIFO and counters wait on (compares there were the start of a
        # path through the conv engine's output side). The flag turns on after position ``*_enter`` and off
        # after ``*_leave``.
        in_row, in_col = Signal(name="in_row"), Signal(name="in_col")
        row_enter, row_leave = Signal(bound, name="row_enter"), Signal(bound, name="row_leave")
        col_enter, col_leave = Signal(bound, name="col_enter"), Signal(bound, name="col_leave")
        if buffered:
            # The partial sums the ECP5's bounds are loaded from: ``kernel - 1 - i`` (tap i's reach back from the
            # window's bottom-right tap) and the padded positions just past the map.
            reach = [Signal(signed(len(layer.kernel) + 1 + (kmax - 1).bit_length()), name=f"reach_{i}")
                     for i in range(kmax)]
            rows_end, cols_end = Signal(bound, name="rows_end"), Signal(bound, name="cols_end")
        with m.If(self.i_layer.valid & self.i_layer.ready):
            desc = self.i_layer.payload
            m.d.sync += [
                layer.eq(desc),
                py_max.eq(desc.height + desc.pad_top + desc.pad_bottom - 1),
                px_max.eq(desc.width + desc.pad_left + desc.pad_right - 1),
                active.eq(not buffered), py.eq(0), px.eq(0), group.eq(0), write_row.eq(0),
                last_group.eq(desc.groups == 1),
                second_last.eq(desc.groups == 2),
                row_wait.eq(desc.kernel - 1), col_wait.eq(desc.kernel - 1),
                last_py.eq(desc.height + desc.pad_top + desc.pad_bottom - desc.stride),
                last_px.eq(desc.width + desc.pad_left + desc.pad_right - desc.stride),
                in_row.eq(desc.pad_top == 0), in_col.eq(desc.pad_left == 0),
                row_enter.eq(desc.pad_top - 1), row_leave.eq(desc.pad_top + desc.height - 1),
                col_enter.eq(desc.pad_left - 1), col_leave.eq(desc.pad_left + desc.width - 1),
            ]
            m.d.sync += [tap_used[i].eq(desc.kernel > i) for i in range(kmax)]
            if buffered:
                # On the ECP5 the tap bounds are summed in two steps, each one carry chain: partial sums from the
                # descriptor here, the bounds from those registers while ``loading`` (one cycle a layer). Summed
                # at once from the descriptor, three chained adders from the command processor's descriptor
                # register were the accelerator's slowest estimated paths (to row_hi and col_hi).
                m.d.sync += [groups_less_2.eq(desc.groups - 2), loading.eq(1),
                             rows_end.eq(desc.pad_top + desc.height), cols_end.eq(desc.pad_left + desc.width)]
                m.d.sync += [reach[i].eq(desc.kernel - 1 - i) for i in range(kmax)]
            else:
                for i in range(kmax):
                    m.d.sync += [row_lo[i].eq(desc.pad_top + desc.kernel - 1 - i),
                                 row_hi[i].eq(desc.pad_top + desc.height + desc.kernel - 1 - i),
                                 col_lo[i].eq(desc.pad_left + desc.kernel - 1 - i),
                                 col_hi[i].eq(desc.pad_left + desc.width + desc.kernel - 1 - i)]
        if buffered:
            with m.If(loading):
                m.d.sync += [loading.eq(0), active.eq(1)]
                for i in range(kmax):
                    m.d.sync += [row_lo[i].eq(layer.pad_top + reach[i]), row_hi[i].eq(rows_end + reach[i]),
                                 col_lo[i].eq(layer.pad_left + reach[i]), col_hi[i].eq(cols_end + reach[i])]

        kernel = layer.kernel
        in_bounds = in_row & in_col
        x = Signal(range(cfg.max_width))
        if buffered:
            # On the ECP5 the input column is a register stepped with ``px`` (from ``-pad_left``, modulo its
            # width as the difference is): ``px - pad_left`` was a carry chain in front of the row memories'
            # write and read addresses, nextpnr's routed path px -> row_*.ADA (9.15 ns).
            x_first = Signal.like(x, name="x_first")
            with m.If(self.i_layer.valid & self.i_layer.ready):
                m.d.sync += [x.eq(-self.i_layer.payload.pad_left), x_first.eq(-self.i_layer.payload.pad_left)]
        else:
            m.d.comb += x.eq(px - layer.pad_left)

        fire = Signal()
        m.d.comb += [
            self.i_pixels.ready.eq(active & ~stall & in_bounds),
            fire.eq(active & ~stall & (~in_bounds | self.i_pixels.valid)),
        ]

        last_col = px == px_max
        last_row = py == py_max
        with m.If(fire):
            with m.If(last_col):
                m.d.sync += in_col.eq(layer.pad_left == 0)
                with m.If(last_row):
                    m.d.sync += in_row.eq(layer.pad_top == 0)
                with m.Elif(py == row_enter):
                    m.d.sync += in_row.eq(1)
                with m.Elif(py == row_leave):
                    m.d.sync += in_row.eq(0)
            with m.Elif(px == col_enter):
                m.d.sync += in_col.eq(1)
            with m.Elif(px == col_leave):
                m.d.sync += in_col.eq(0)
            if buffered:
                m.d.sync += x.eq(Mux(last_col, x_first, x + 1))
            with m.If(last_col):
                m.d.sync += [px.eq(0), col_wait.eq(kernel - 1)]
                m.d.sync += row_wait.eq(Mux(row_wait == 0, layer.stride - 1, row_wait - 1))
                m.d.sync += write_row.eq(Mux(write_row == kmax - 1, 0, write_row + 1))
                with m.If(last_row):
                    m.d.sync += [py.eq(0), write_row.eq(0), row_wait.eq(kernel - 1), group.eq(group + 1),
                                 last_group.eq(second_last)]
                    with m.If(last_group):
                        m.d.sync += active.eq(0)
                with m.Else():
                    m.d.sync += py.eq(py + 1)
            with m.Else():
                m.d.sync += px.eq(px + 1)
                m.d.sync += col_wait.eq(Mux(col_wait == 0, layer.stride - 1, col_wait - 1))

        # Row memories: padded row r lives in memory r mod kmax, at its input column.
        rows = []
        for r in range(kmax):
            if buffered:
                # On the ECP5 each row memory is pieces 16 bits wide (two lanes): a block RAM then reads it in its
                # 18-bit mode, whose output pins are its read port's own, and stage 2's register of the rows read
                # becomes the blocks' output register (boards/outreg.py): the data leaves a block 0.96 ns after
                # the clock instead of 5.83. The read is an asynchronous port and a register that yosys folds into
                # the block RAM (as the memory map's), and the memories say they have no read/write collisions:
                # a row memory is read and written at one address in one cycle only while it takes the scanned
                # row, and that read's data is never used (the taps above the scanned row are in the other
                # memories; its own tap is the pixel coming in). Otherwise yosys puts a collision bypass (a
                # register and a multiplexer a bit) behind the block.
                pieces, bits = [], data.Layout.cast(pix).size
                for k, lo in enumerate(range(0, bits, 16)):
                    hi = min(lo + 16, bits)
                    mem = Memory(shape=hi - lo, depth=cfg.max_width, init=[], attrs={"no_rw_check": 1})
                    m.submodules[f"row_{r}_{k}"] = mem
                    wr = mem.write_port()
                    rd = mem.read_port(domain="comb")
                    m.d.comb += [wr.addr.eq(x), wr.data.eq(self.i_pixels.payload.as_value()[lo:hi]),
                                 wr.en.eq(fire & in_bounds & (write_row == r)), rd.addr.eq(x)]
                    pieces.append(registered_read(m, rd, ~stall, f"row_{r}_read_{k}"))
                rows.append(Cat(*pieces))
                continue
            mem = Memory(shape=pix, depth=cfg.max_width, init=[])
            m.submodules[f"row_{r}"] = mem
            wr = mem.write_port()
            rd = mem.read_port()
            m.d.comb += [
                wr.addr.eq(x), wr.data.eq(self.i_pixels.payload),
                wr.en.eq(fire & in_bounds & (write_row == r)),
                rd.addr.eq(x), rd.en.eq(~stall),
            ]
            rows.append(rd.data)

        # Memory holding tap row i: (py - kernel + 1 + i) mod kmax, from write_row = py mod kmax (outside the
        # scanner's enable: assigned under it, it would bring the enable in front of the subtraction).
        row_sel = [Signal(signed(write_row.shape().width + 5), name=f"row_sel_{i}") for i in range(kmax)]
        m.d.comb += [row_sel[i].eq(write_row - kernel + 1 + i) for i in range(kmax)]
        # Flags for the window whose bottom-right tap is (py, px); registered into stage 1.
        with m.If(~stall):
            m.d.sync += s1_valid.eq(fire)
        with m.If(fire):
            m.d.sync += [
                s1_pixel.eq(self.i_pixels.payload),
                s1_emit.eq((row_wait == 0) & (col_wait == 0)),
                s1_col_in.eq(in_col),
            ]
            # No further window in this plane once the next eligible row/column would leave it.
            if buffered:
                # On the ECP5 the two compares and the last-plane flag are registered apart and combined as stage
                # 2 copies them: the AND behind the compares' carry chains made py -> s1_last the generator's
                # slowest estimated path (and py -> s1_row_valid, below, the next).
                m.d.sync += [s1_row_end.eq(py >= last_py), s1_col_end.eq(px >= last_px),
                             s1_group_end.eq(last_group)]
            else:
                m.d.sync += [
                    s1_last_in_group.eq((py >= last_py) & (px >= last_px)),
                    s1_last.eq((py >= last_py) & (px >= last_px) & last_group),
                ]
            for i in range(kmax):
                if buffered:
                    # Likewise the tap flags' compares (``tap_used`` holds still through a layer).
                    m.d.sync += [s1_row_lo[i].eq(py >= row_lo[i]), s1_row_hi[i].eq(py < row_hi[i]),
                                 s1_col_lo[i].eq(px >= col_lo[i]), s1_col_hi[i].eq(px < col_hi[i])]
                else:
                    m.d.sync += [
                        s1_row_valid[i].eq(tap_used[i] & (py >= row_lo[i]) & (py < row_hi[i])),
                        s1_col_valid[i].eq(tap_used[i] & (px >= col_lo[i]) & (px < col_hi[i])),
                    ]
                m.d.sync += s1_row_sel[i].eq(Mux(row_sel[i] < 0, row_sel[i] + kmax, row_sel[i]))

        if buffered:
            m.d.comb += [s1_last_in_group.eq(s1_row_end & s1_col_end),
                         s1_last.eq(s1_row_end & s1_col_end & s1_group_end),
                         s1_row_valid.eq(tap_used & s1_row_lo & s1_row_hi),
                         s1_col_valid.eq(tap_used & s1_col_lo & s1_col_hi)]
            # Stage 2 (ECP5): stage 1 and the rows it read, registered (one enable with the other stages).
            rows_read = [Signal(pix, name=f"row_data_{r}", reset_less=True) for r in range(kmax)]
            names = ["pixel", "emit", "row_valid", "col_valid", "col_in", "last_in_group", "last"] + [
                f"row_sel_{i}" for i in range(kmax)]
            stage1 = [s1_pixel, s1_emit, s1_row_valid, s1_col_valid, s1_col_in, s1_last_in_group, s1_last] + s1_row_sel
            stage2 = [Signal.like(v, name=f"s2_{name}", reset_less=True) for v, name in zip(stage1, names)]
            # The window registers' enable, one copy a lane (COPY_ATTR): the one ``s2_valid`` reached all
            # 72 x lanes window flip-flops across the pool (crossed by some 600 failing paths of a routed
            # build, docs/decisions.md session 17).
            lane_valid = [Signal(name=f"s2_valid_{lane}", attrs={COPY_ATTR: 1}) for lane in range(cfg.lanes)]
            with m.If(~stall):
                m.d.sync += s2_valid.eq(s1_valid)
                m.d.sync += [v.eq(s1_valid) for v in lane_valid]
                m.d.sync += [q.eq(d) for q, d in zip(rows_read, rows)]
                with m.If(s1_valid):
                    m.d.sync += [q.eq(d) for q, d in zip(stage2, stage1)]
            rows = rows_read
            s1_valid = s2_valid
            s1_pixel, s1_emit, s1_row_valid, s1_col_valid, s1_col_in, s1_last_in_group, s1_last = stage2[:7]
            s1_row_sel = stage2[7:]

        # Stage 1 (2 on the ECP5) -> window: shift every row left by one column and insert the new column at
        # kernel - 1, the zero point where it is outside the map; columns from kernel on hold the zero point.
        outside = Signal(pix, name="outside")
        m.d.comb += [outside[lane].eq(layer.zero_point) for lane in range(cfg.lanes)]
        # The entering column, computed outside the stage's enable (assigned under it, it would be 0 while the
        # output stalls, putting the handshake in front of the column's multiplexers).
        entering = []
        for i in range(kmax):
            column_tap = Signal(pix, name=f"column_tap_{i}")
            with m.Switch(s1_row_sel[i]):
                for r in range(kmax):
                    with m.Case(r):
                        m.d.comb += column_tap.eq(rows[r])
            with m.If(kernel == i + 1):
                m.d.comb += column_tap.eq(s1_pixel)
            entering.append(Signal(pix, name=f"entering_{i}"))
            m.d.comb += entering[i].eq(Mux(s1_row_valid[i] & s1_col_in, column_tap, outside))
        with m.If(~stall):
            m.d.sync += o.valid.eq(s1_valid & s1_emit)
            with m.If(s1_valid):
                m.d.sync += [
                    row_valid.eq(s1_row_valid), col_valid.eq(s1_col_valid),
                    o.payload.last_in_group.eq(s1_last_in_group), o.payload.last.eq(s1_last),
                ]
            def shift(lane_en, tap):
                with m.If(lane_en):
                    for i in range(kmax):
                        for j in range(kmax):
                            shifted = tap(window[i][j + 1]) if j + 1 < kmax else tap(outside)
                            m.d.sync += tap(window[i][j]).eq(Mux(kernel == j + 1, tap(entering[i]),
                                                                 Mux(tap_used[j], shifted, tap(outside))))
            if buffered:
                for lane in range(cfg.lanes):
                    shift(lane_valid[lane], lambda pixel: pixel[lane])
            else:
                shift(s1_valid, lambda pixel: pixel)

        m.d.comb += [o.payload.row_valid.eq(row_valid), o.payload.col_valid.eq(col_valid)]
        m.d.comb += [o.payload.taps[i][j].eq(window[i][j]) for i in range(kmax) for j in range(kmax)]
        return m
