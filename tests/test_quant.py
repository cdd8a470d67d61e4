"""host/quant.py against a from-scratch transcription of TFLite's C++ integer arithmetic.

The reference functions below are written with Python integers, line by line after TFLite
(``quantization_util.cc``, ``common.h``) and gemmlowp (``fixedpoint.h``), without NumPy and without sharing code
with the module under test. C++ behaviour is modelled explicitly: int64 products, division truncating toward zero,
``static_cast<int32_t>`` wrapping, and ``x * (1 << left_shift)`` wrapping as two's-complement hardware does.
Edge grids are exhaustive (every shift from -31 to 30, the extreme multipliers, INT32_MIN/INT32_MAX); hypothesis
adds random cases with a fixed (derandomized) seed, so a failure reproduces and prints its example.
"""

import math
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnacc.host import quant

INT32_MIN = -(2 ** 31)
INT32_MAX = 2 ** 31 - 1

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------------------------------------
# reference: C++ semantics in plain Python integers
# ----------------------------------------------------------------------------------------------------------

def to_int32(v):
    """static_cast<int32_t> of an int64: keep the low 32 bits, two's complement."""
    v &= 0xFFFFFFFF
    return v - 2 ** 32 if v >= 2 ** 31 else v


def c_div(a, b):
    """C++ integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def ref_srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul(int32 a, int32 b)."""
    overflow = a == b and a == INT32_MIN
    ab_64 = a * b
    nudge = (1 << 30) if ab_64 >= 0 else (1 - (1 << 30))
    ab_x2_high32 = to_int32(c_div(ab_64 + nudge, 1 << 31))
    return INT32_MAX if overflow else ab_x2_high32


def ref_rdbpot(x, exponent):
    """gemmlowp RoundingDivideByPOT(int32 x, int exponent) with BitAnd/ShiftRight on int32."""
    assert 0 <= exponent <= 31
    mask = to_int32((1 << exponent) - 1)
    remainder = to_int32(x & mask)
    threshold = (mask >> 1) + ((-1 if x < 0 else 0) & 1)
    return (x >> exponent) + ((-1 if remainder > threshold else 0) & 1)


def ref_mbqm(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier(int32 x, int32 m, int shift), double rounding."""
    left_shift = shift if shift > 0 else 0
    right_shift = 0 if shift > 0 else -shift
    return ref_rdbpot(ref_srdhm(to_int32(x * (1 << left_shift)), multiplier), right_shift)


def ref_mbqm_single(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING. TFLite only DCHECKs that the result fits
    in int32; the project's definition saturates, so the reference does too."""
    assert -31 <= shift <= 30
    total_shift = 31 - shift
    round_ = 1 << (total_shift - 1)
    result = (x * multiplier + round_) >> total_shift     # int64 arithmetic shift == floor division
    return max(INT32_MIN, min(INT32_MAX, result))


def tflite_round(v):
    """std::round on a double: half away from zero, computed exactly with fractions."""
    f = Fraction(v)
    return int(math.floor(f + Fraction(1, 2))) if f >= 0 else -int(math.floor(-f + Fraction(1, 2)))


def ref_quantize_multiplier(d):
    """TFLite QuantizeMultiplier(double) without TFLITE_SINGLE_ROUNDING; None where TFLite would CHECK-fail
    later (shift > 30 cannot be used by MultiplyByQuantizedMultiplier)."""
    if d == 0.0:
        return 0, 0
    q, shift = math.frexp(d)
    q_fixed = tflite_round(q * (1 << 31))
    assert q_fixed <= 1 << 31
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    assert q_fixed <= INT32_MAX
    if shift < -31:
        shift, q_fixed = 0, 0
    if shift > 30:
        return None
    return q_fixed, shift


def scalar(fn, *args):
    return int(np.asarray(fn(*args)).item())


# ----------------------------------------------------------------------------------------------------------
# edge grids
# ----------------------------------------------------------------------------------------------------------

EDGE_X = sorted({INT32_MIN, INT32_MIN + 1, INT32_MIN + 2, -(2 ** 30) - 1, -(2 ** 30), -(2 ** 30) + 1, -65536,
                 -32769, -255, -128, -3, -2, -1, 0, 1, 2, 3, 127, 255, 32768, 65535, 2 ** 30 - 1, 2 ** 30,
                 2 ** 30 + 1, INT32_MAX - 1, INT32_MAX})
EDGE_M = [0, 1, 2, 2 ** 29, 2 ** 30 - 1, 2 ** 30, 2 ** 30 + 1, 1518500250, 2 ** 31 - 2, 2 ** 31 - 1]
ALL_SHIFTS = list(range(-31, 31))


def test_srdhm_edge_grid():
    values = EDGE_X + [INT32_MIN]
    a, b = (np.array(v, np.int64) for v in zip(*product(values, values)))
    got = quant.saturating_rounding_doubling_high_mul(a, b)
    want = [ref_srdhm(int(p), int(q)) for p, q in zip(a, b)]
    np.testing.assert_array_equal(got, want)


def test_srdhm_saturates_only_at_int32_min_squared():
    assert scalar(quant.saturating_rounding_doubling_high_mul, INT32_MIN, INT32_MIN) == INT32_MAX
    assert scalar(quant.saturating_rounding_doubling_high_mul, INT32_MIN, INT32_MAX) == -INT32_MAX
    assert scalar(quant.saturating_rounding_doubling_high_mul, INT32_MAX, INT32_MAX) == INT32_MAX - 1


def test_srdhm_rounding_ties():
    """A doubled product of exactly half an LSB: positive ties round up, negative ties toward zero (the nudge
    is 1 - 2**30 for negative products)."""
    assert scalar(quant.saturating_rounding_doubling_high_mul, 2 ** 30, 1) == 1
    assert scalar(quant.saturating_rounding_doubling_high_mul, -(2 ** 30), 1) == 0
    assert scalar(quant.saturating_rounding_doubling_high_mul, 3 * 2 ** 29, 1) == 1
    assert scalar(quant.saturating_rounding_doubling_high_mul, -3 * 2 ** 29, 1) == -1
    assert scalar(quant.saturating_rounding_doubling_high_mul, -(2 ** 30) - 1, 1) == -1
    for a in (2 ** 30, -(2 ** 30), 3 * 2 ** 29, -3 * 2 ** 29, -(2 ** 30) - 1):
        assert scalar(quant.saturating_rounding_doubling_high_mul, a, 1) == ref_srdhm(a, 1)


@pytest.mark.parametrize("exponent", range(32))
def test_rounding_divide_by_pot_every_exponent(exponent):
    xs = np.array(EDGE_X + [(1 << exponent) // 2 * s + d for s in (1, -1, 3, -3) for d in (-1, 0, 1)
                            if INT32_MIN <= (1 << exponent) // 2 * s + d <= INT32_MAX], np.int64)
    got = quant.rounding_divide_by_pot(xs, exponent)
    np.testing.assert_array_equal(got, [ref_rdbpot(int(x), exponent) for x in xs])


def test_rounding_divide_by_pot_ties_go_away_from_zero():
    assert [scalar(quant.rounding_divide_by_pot, x, 1) for x in (-3, -1, 1, 3)] == [-2, -1, 1, 2]
    assert [scalar(quant.rounding_divide_by_pot, x, 2) for x in (-6, -2, 2, 6)] == [-2, -1, 1, 2]
    assert scalar(quant.rounding_divide_by_pot, INT32_MIN, 31) == -1
    assert scalar(quant.rounding_divide_by_pot, INT32_MAX, 31) == 1


def test_rounding_divide_by_pot_rejects_bad_exponents():
    for e in (-1, 32):
        with pytest.raises(ValueError, match="exponent"):
            quant.rounding_divide_by_pot(5, e)


@pytest.mark.parametrize("shift", ALL_SHIFTS)
def test_multiply_by_quantized_multiplier_every_shift(shift):
    """Every shift with the extreme multipliers and inputs, including the int32 wrap of x << left_shift."""
    pairs = list(product(EDGE_X, EDGE_M))
    x = np.array([p[0] for p in pairs], np.int64)
    m = np.array([p[1] for p in pairs], np.int64)
    got = quant.multiply_by_quantized_multiplier(x, m, shift)
    np.testing.assert_array_equal(got, [ref_mbqm(int(a), int(b), shift) for a, b in pairs])
    # The per-element (per-channel) form must agree with the scalar-shift form.
    np.testing.assert_array_equal(quant.multiply_by_quantized_multiplier(x, m, np.full(x.shape, shift)), got)


@pytest.mark.parametrize("shift", ALL_SHIFTS)
def test_single_rounding_every_shift(shift):
    pairs = list(product(EDGE_X, EDGE_M))
    x = np.array([p[0] for p in pairs], np.int64)
    m = np.array([p[1] for p in pairs], np.int64)
    got = quant.multiply_by_quantized_multiplier_single_rounding(x, m, shift)
    np.testing.assert_array_equal(got, [ref_mbqm_single(int(a), int(b), shift) for a, b in pairs])


def test_single_rounding_saturates_and_rejects_bad_shifts():
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, INT32_MAX, INT32_MAX, 30) == INT32_MAX
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, INT32_MIN, INT32_MAX, 30) == INT32_MIN
    # Ties: 1.5 rounds up and so does -1.5 (floor(x + 0.5)).
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, 3, 2 ** 30, 0) == 2
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, -3, 2 ** 30, 0) == -1
    # 1 * 0.75 / 2 = 0.375: one rounding gives 0, double rounding (0.75 -> 1, then 0.5 -> 1) gives 1.
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, 1, 3 * 2 ** 29, -1) == 0
    assert scalar(quant.multiply_by_quantized_multiplier, 1, 3 * 2 ** 29, -1) == 1
    for bad in (-32, 31):
        with pytest.raises(ValueError, match="shift"):
            quant.multiply_by_quantized_multiplier_single_rounding(1, 2 ** 30, bad)


# ----------------------------------------------------------------------------------------------------------
# QuantizeMultiplier
# ----------------------------------------------------------------------------------------------------------

QM_EDGES = [
    0.0, 5e-324, 1e-300, 2.0 ** -40, 2.0 ** -33, 2.0 ** -32 * (1 - 2 ** -53), 2.0 ** -32, 2.0 ** -31,
    2.0 ** -31 * 1.5, 1e-9, 0.0001, 0.25, 0.5, 0.5 * (1 - 2 ** -53), 1 - 2 ** -53, 1 - 2 ** -33,
    1 - 2 ** -32, 1 - 2 ** -31, 1.0, 1.5, 2.0 ** 29, 2.0 ** 30 * (1 - 2 ** -33),
    # multipliers of 2**30 and up need a left shift of 31, which MultiplyByQuantizedMultiplier cannot do.
    2.0 ** 30 * (1 - 2 ** -40), 2.0 ** 30, 2.0 ** 31,
    # q * 2**31 exactly on a tie (x.5): std::round goes away from zero.
    (2 ** 30 + 0.5) / 2 ** 31, (2 ** 31 - 0.5) / 2 ** 31, (2 ** 31 - 0.5) / 2 ** 40,
    # just below 1.0 * 2**k: rounds up to 2**31, which halves and bumps the shift.
    (2 ** 31 - 0.25) / 2 ** 31, (2 ** 31 - 0.25) / 2 ** 50,
]


@pytest.mark.parametrize("d", QM_EDGES)
def test_quantize_multiplier_edges(d):
    want = ref_quantize_multiplier(d)
    if want is None:
        with pytest.raises(ValueError, match="too large"):
            quant.quantize_multiplier(d)
        return
    got = quant.quantize_multiplier(d)
    assert got == want, (d, got, want)
    m, shift = got
    assert m == 0 or 2 ** 30 <= m <= INT32_MAX
    assert -31 <= shift <= 30


def test_quantize_multiplier_round_up_to_two_pow_31_and_flush_to_zero():
    assert quant.quantize_multiplier((2 ** 31 - 0.25) / 2 ** 31) == (2 ** 30, 1)
    assert quant.quantize_multiplier((2 ** 30 + 0.5) / 2 ** 31) == (2 ** 30 + 1, 0)
    assert quant.quantize_multiplier(2.0 ** -32) == (2 ** 30, -31)
    assert quant.quantize_multiplier(2.0 ** -33) == (0, 0)
    assert quant.quantize_multiplier(5e-324) == (0, 0)


def test_quantize_multiplier_rejects_unusable_values():
    for bad in (-1e-3, float("nan"), float("inf"), 2.0 ** 31, 2.0 ** 30):
        with pytest.raises(ValueError):
            quant.quantize_multiplier(bad)
    with pytest.raises(ValueError):
        quant.quantize_multiplier_smaller_than_one_exp(1.0)
    assert quant.quantize_multiplier_smaller_than_one_exp(0.5) == (2 ** 30, 0)


def test_quantize_multipliers_widen_float32_scales_to_double():
    s_in, s_out = np.float32(0.0173), np.float32(0.0911)
    s_w = np.float32([1e-4, 3.3e-3, 0.02, 0.7])
    m, s = quant.quantize_multipliers(s_in, s_w, s_out)
    for c in range(4):
        assert (m[c], s[c]) == ref_quantize_multiplier(float(s_in) * float(s_w[c]) / float(s_out))


@SETTINGS
@given(st.floats(min_value=0.0, max_value=2.0 ** 31, allow_nan=False, allow_infinity=False, allow_subnormal=True))
def test_quantize_multiplier_random(d):
    want = ref_quantize_multiplier(d)
    if want is None:
        with pytest.raises(ValueError, match="too large"):
            quant.quantize_multiplier(d)
    else:
        assert quant.quantize_multiplier(d) == want


@SETTINGS
@given(st.integers(-60, 0).flatmap(lambda e: st.floats(2.0 ** (e - 1), 2.0 ** e, exclude_max=True)))
def test_quantize_multiplier_random_per_binade(d):
    """Uniform over binades, so tiny multipliers (down to 2**-61) get as many cases as large ones."""
    assert quant.quantize_multiplier(d) == ref_quantize_multiplier(d)


# ----------------------------------------------------------------------------------------------------------
# random arithmetic and the full requantize
# ----------------------------------------------------------------------------------------------------------

int32s = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(EDGE_X))
multipliers = st.one_of(st.integers(0, INT32_MAX), st.integers(2 ** 30, INT32_MAX), st.sampled_from(EDGE_M))


@SETTINGS
@given(int32s, multipliers, st.integers(-31, 30))
def test_multiply_by_quantized_multiplier_random(x, m, shift):
    assert scalar(quant.multiply_by_quantized_multiplier, x, m, shift) == ref_mbqm(x, m, shift)
    assert scalar(quant.multiply_by_quantized_multiplier_single_rounding, x, m, shift) == ref_mbqm_single(x, m, shift)


@SETTINGS
@given(int32s, int32s)
def test_srdhm_random(a, b):
    assert scalar(quant.saturating_rounding_doubling_high_mul, a, b) == ref_srdhm(a, b)


@SETTINGS
@given(int32s, st.integers(0, 31))
def test_rounding_divide_by_pot_random(x, e):
    assert scalar(quant.rounding_divide_by_pot, x, e) == ref_rdbpot(x, e)


@pytest.mark.parametrize("mode", ["double", "single"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantize_per_channel_against_reference(mode, seed):
    """Per-channel requantize on an NHWC block: scale, add zero point, clamp, in both integer modes."""
    rng = np.random.default_rng(seed)
    channels = 7
    acc = rng.integers(INT32_MIN, INT32_MAX, (2, 3, 4, channels), endpoint=True)
    acc.flat[:len(EDGE_X)] = EDGE_X
    m = rng.integers(2 ** 30, 2 ** 31, channels)
    m[0], m[1] = 0, INT32_MAX
    shift = rng.integers(-31, 1, channels)
    shift[2], shift[3] = -31, 30
    zp = int(rng.integers(-128, 128))
    qmin, qmax = sorted(int(v) for v in rng.integers(-128, 128, 2))
    got = quant.requantize(acc, m, shift, zp, qmin, qmax, mode=mode)
    assert got.dtype == np.int8
    ref_fn = ref_mbqm if mode == "double" else ref_mbqm_single
    flat_acc = acc.reshape(-1, channels)
    want = [[max(qmin, min(qmax, ref_fn(int(a), int(m[c]), int(shift[c])) + zp)) for c, a in enumerate(row)]
            for row in flat_acc]
    np.testing.assert_array_equal(got.reshape(-1, channels), want)


def test_requantize_channel_axis_and_mode_errors():
    acc = np.arange(-6, 6).reshape(3, 4) * 1000
    m = np.array([2 ** 30, 2 ** 31 - 1, 1518500250])
    s = np.array([-3, -5, -1])
    got = quant.requantize(acc, m, s, -2, channel_axis=0)
    want = [[max(-128, min(127, ref_mbqm(int(a), int(m[r]), int(s[r])) - 2)) for a in row]
            for r, row in enumerate(acc)]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="rounding mode"):
        quant.requantize(acc, m, s, 0, channel_axis=0, mode="nearest")
    with pytest.raises(ValueError, match="float_scale"):
        quant.requantize(acc, m, s, 0, channel_axis=0, mode="float32")


def test_wrap_int32_matches_static_cast():
    values = [2 ** 31, 2 ** 32 - 1, -(2 ** 31) - 1, 3 * 2 ** 31 + 5, -(2 ** 40) + 7] + EDGE_X
    np.testing.assert_array_equal(quant.wrap_int32(np.array(values, np.int64)), [to_int32(v) for v in values])
