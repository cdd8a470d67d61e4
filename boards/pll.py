"""PLL parameter search for the iCE40 (SB_PLL40) and ECP5 (EHXPLLL), from the parts' documented ranges.

Each function returns the parameters and the frequency actually reached (a PLL rarely hits the request exactly;
the board build reports and constrains the reached one).
"""

from dataclasses import dataclass

__all__ = ["Ice40Pll", "Ecp5Pll", "ice40_pll", "ecp5_pll", "family_pll"]


@dataclass(frozen=True)
class Ice40Pll:
    divr: int
    divf: int
    divq: int
    filter_range: int
    f_out: float


@dataclass(frozen=True)
class Ecp5Pll:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int
    f_out: float


def ice40_pll(f_in, f_out):
    """SB_PLL40 in SIMPLE feedback mode: ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2**DIVQ)``, with the phase
    detector at 10-133 MHz and the VCO at 533-1066 MHz (iCE40 sysCLOCK PLL design guide)."""
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = f_vco / (1 << divq)
                if best is None or abs(f - f_out) < abs(best.f_out - f_out):
                    filter_range = next(i for i, top in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 133e6), 1)
                                        if f_pfd < top)
                    best = Ice40Pll(divr, divf, divq, filter_range, f)
    if best is None:
        raise ValueError(f"no iCE40 PLL setting reaches {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    return best


def ecp5_pll(f_in, f_out):
    """EHXPLLL with CLKOP as feedback: ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` with the VCO
    (``f_out * CLKOP_DIV``) at 400-800 MHz and the phase detector at 10-400 MHz (ECP5 sysCLOCK guide)."""
    best = None
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 10e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            f = f_pfd * clkfb_div
            for clkop_div in range(1, 129):
                if not 400e6 <= f * clkop_div <= 800e6:
                    continue
                if best is None or abs(f - f_out) < abs(best.f_out - f_out):
                    best = Ecp5Pll(clki_div, clkfb_div, clkop_div, clkop_div - 1, f)
                break
    if best is None:
        raise ValueError(f"no ECP5 PLL setting reaches {f_out / 1e6:g} MHz from {f_in / 1e6:g} MHz")
    return best


def family_pll(family, f_in, f_out):
    """The PLL setting a board of ``family`` ("ice40" or "ecp5") uses: :func:`ice40_pll` or :func:`ecp5_pll`."""
    return (ice40_pll if family == "ice40" else ecp5_pll)(f_in, f_out)
