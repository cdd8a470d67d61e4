"""int8 matrix products on the MAC array: tiling and backends (``cnnacc gemm``).

A product ``C = A @ B`` of any size is cut into ``rows x cols`` output tiles (zero-padded at the edges), each
streamed through the array over the full reduction depth ``K``. The same tiles run on the NumPy golden model,
the Amaranth simulator, or cocotb on Verilator/Icarus, and every simulated result is compared with NumPy.
"""

import time
from dataclasses import dataclass

import numpy as np

from ..config import DEFAULT_CONFIG

__all__ = ["GemmResult", "golden_gemm", "tile_gemm", "run_gemm"]

BACKENDS = ("golden", "amaranth", "verilator", "icarus")


def golden_gemm(a, b, acc_width=32):
    """int8 x int8 matrix product accumulated in ``acc_width``-bit two's complement, as the array does."""
    exact = a.astype(np.int64) @ b.astype(np.int64)
    half = 1 << (acc_width - 1)
    return (exact + half) % (2 * half) - half


def tile_gemm(a, b, config):
    """Cut ``A @ B`` into array-sized tiles: returns ``(tiles_a, tiles_b, placement)``."""
    m, k = a.shape
    n = b.shape[1]
    tiles_a, tiles_b, placement = [], [], []
    for r0 in range(0, m, config.rows):
        for c0 in range(0, n, config.cols):
            ta = np.zeros((config.rows, k), np.int8)
            tb = np.zeros((k, config.cols), np.int8)
            ta[:min(config.rows, m - r0)] = a[r0:r0 + config.rows]
            tb[:, :min(config.cols, n - c0)] = b[:, c0:c0 + config.cols]
            tiles_a.append(ta)
            tiles_b.append(tb)
            placement.append((r0, c0))
    return tiles_a, tiles_b, placement


@dataclass(frozen=True)
class GemmResult:
    c: np.ndarray
    backend: str
    cycles: int | None
    useful_macs: int
    pes: int
    seconds: float
    matches_golden: bool
    mismatches: int

    @property
    def utilization(self):
        """Useful MACs / (PEs x cycles)."""
        return self.useful_macs / (self.pes * self.cycles) if self.cycles else None

    def summary(self):
        m, n = self.c.shape
        parts = [f"{self.backend}: C {m}x{n}"]
        if self.cycles is not None:
            parts.append(f"{self.cycles} cycles, PE utilization {100 * self.utilization:.1f}% "
                         f"({self.useful_macs} MACs on {self.pes} PEs)")
        parts.append(f"{self.seconds:.2f} s wall")
        if self.backend != "golden":
            parts.append("bit-exact vs NumPy" if self.matches_golden
                         else f"MISMATCH vs NumPy in {self.mismatches} of {self.c.size} elements")
        return ", ".join(parts)


def run_gemm(a, b, *, backend="verilator", config=DEFAULT_CONFIG, seed=0, bubble=0.0, stall=0.0):
    """Compute ``A @ B`` on ``backend`` and compare with :func:`golden_gemm`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or a.shape[1] == 0:
        raise ValueError(f"cannot multiply shapes {a.shape} and {b.shape}")
    expected = golden_gemm(a, b, config.acc_width)
    start = time.perf_counter()
    if backend == "golden":
        c, cycles = expected, None
    else:
        from ..sim import mac_array
        tiles_a, tiles_b, placement = tile_gemm(a, b, config)
        kwargs = dict(seed=seed, bubble=bubble, stall=stall)
        if backend == "amaranth":
            blocks, cycles = mac_array.run_amaranth(config, tiles_a, tiles_b, **kwargs)
        else:
            blocks, cycles = mac_array.run_rtl(config, tiles_a, tiles_b, sim=backend, **kwargs)
        padded = np.zeros((-(-a.shape[0] // config.rows) * config.rows,
                           -(-b.shape[1] // config.cols) * config.cols), np.int64)
        for block, (r0, c0) in zip(blocks, placement):
            padded[r0:r0 + config.rows, c0:c0 + config.cols] = block
        c = padded[:a.shape[0], :b.shape[1]]
    seconds = time.perf_counter() - start
    mismatches = int(np.count_nonzero(c != expected))
    return GemmResult(c=c, backend=backend, cycles=cycles, useful_macs=a.shape[0] * a.shape[1] * b.shape[1],
                      pes=config.pes, seconds=seconds, matches_golden=mismatches == 0, mismatches=mismatches)
