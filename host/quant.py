"""TFLite's integer requantization arithmetic, vectorized in NumPy.

These functions are the executable specification of the hardware requantizer. Each mirrors the function of the
same name in TFLite (``tensorflow/lite/kernels/internal/common.h``, ``quantization_util.cc``) and gemmlowp
(``fixedpoint.h``) on int32 values held in int64 arrays, including the C++ corner cases: truncating division,
the one saturating case of the doubling high multiply, and int32 wrap-around of ``x << left_shift``.

Rounding modes of :func:`requantize`:

``"double"``
    TFLite's default: saturating rounding doubling high multiply, then rounding divide by a power of two.
``"single"``
    TFLite built with ``TFLITE_SINGLE_ROUNDING``: one 64-bit multiply, one rounding shift.
``"float32"``
    onnxruntime's QLinearConv/QGemm: ``rint(float32(acc) * float32(scale))`` (round half to even).
    A golden-model mode only: it exists to reproduce onnxruntime bit for bit, not for the hardware.
"""

import math

import numpy as np

__all__ = [
    "INT32_MIN", "INT32_MAX", "ROUNDING_MODES",
    "quantize_multiplier", "quantize_multiplier_smaller_than_one_exp", "quantize_multipliers",
    "wrap_int32", "saturating_rounding_doubling_high_mul", "rounding_divide_by_pot",
    "multiply_by_quantized_multiplier", "multiply_by_quantized_multiplier_single_rounding", "requantize",
]

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
ROUNDING_MODES = ("double", "single", "float32")


def _round_half_away(x):
    """C's ``std::round`` (TfLiteRound) on a double."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def quantize_multiplier(real_multiplier):
    """TFLite ``QuantizeMultiplier``: ``real ~= M * 2**(shift - 31)`` with ``M`` in [2**30, 2**31).

    Returns ``(M, shift)`` as Python ints; ``(0, 0)`` for zero and for values too small to represent.
    """
    real_multiplier = float(real_multiplier)
    if real_multiplier == 0.0:
        return 0, 0
    if not math.isfinite(real_multiplier) or real_multiplier < 0:
        raise ValueError(f"requantization multiplier must be finite and non-negative, not {real_multiplier!r}")
    fraction, shift = math.frexp(real_multiplier)
    q = _round_half_away(fraction * (1 << 31))
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        raise ValueError(f"requantization multiplier {real_multiplier!r} is too large (shift {shift} > 30)")
    return int(q), int(shift)


def quantize_multiplier_smaller_than_one_exp(real_multiplier):
    """TFLite ``QuantizeMultiplierSmallerThanOneExp``: as :func:`quantize_multiplier`, for ``0 < real < 1``."""
    if not 0.0 < float(real_multiplier) < 1.0:
        raise ValueError(f"multiplier must be in (0, 1), not {real_multiplier!r}")
    q, shift = quantize_multiplier(real_multiplier)
    return q, shift


def quantize_multipliers(input_scale, weight_scales, output_scale):
    """Per-channel ``(M[c], shift[c])`` for ``s_in * s_w[c] / s_out``, computed as TFLite does.

    Scales are float32 in a model file; TFLite widens each to double before multiplying and dividing
    (``PopulateConvolutionQuantizationParams``), and so do we.
    """
    s_in = float(np.float32(input_scale))
    s_out = float(np.float32(output_scale))
    pairs = [quantize_multiplier(s_in * float(np.float32(s_w)) / s_out)
             for s_w in np.atleast_1d(weight_scales)]
    return (np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.int64))


def wrap_int32(x):
    """Two's-complement wrap of integers to int32, as C++ int32 arithmetic does in practice."""
    x = np.asarray(x, dtype=np.int64)
    # Accumulators almost always fit: two reductions are cheaper than three full-size temporaries.
    if x.size == 0 or (x.min() >= INT32_MIN and x.max() <= INT32_MAX):
        return x
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values.

    gemmlowp adds a nudge of ``2**30`` (``1 - 2**30`` for a negative product) and divides by ``2**31``
    truncating toward zero. For a negative numerator truncation is ``floor((n + 2**31 - 1) / 2**31)``, so both
    branches equal ``floor((a*b + 2**30) / 2**31)``: one add and one arithmetic shift, ties toward +infinity.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    high = a * b
    high += 1 << 30
    high >>= 31
    if np.any(b == INT32_MIN) and np.any(a == INT32_MIN):
        # The one product that does not fit: INT32_MIN * INT32_MIN saturates.
        high = np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, high)
    return high


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded to nearest, ties away from zero."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    if np.any((exponent < 0) | (exponent > 31)):
        raise ValueError("rounding_divide_by_pot needs an exponent from 0 to 31")
    # gemmlowp's (x >> e) + ((x & mask) > (mask >> 1) + (x < 0)) is round-half-away-from-zero of x / 2**e,
    # which is floor((x + 2**(e-1) - (x < 0)) / 2**e) for e >= 1 (and x itself for e = 0).
    half = (np.int64(1) << exponent) >> 1
    result = x + half
    if np.all(exponent > 0):
        result -= x < 0
    elif np.any(exponent > 0):
        result -= (x < 0) & (exponent > 0)
    result >>= exponent
    return result


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite ``MultiplyByQuantizedMultiplier`` (double rounding)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left_shift = np.maximum(shift, 0)
    right_shift = np.maximum(-shift, 0)
    shifted = wrap_int32(x << left_shift) if np.any(left_shift) else x
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right_shift)


def multiply_by_quantized_multiplier_single_rounding(x, multiplier, shift):
    """TFLite ``MultiplyByQuantizedMultiplier`` as built with ``TFLITE_SINGLE_ROUNDING``.

    The 64-bit result is saturated to int32 (TFLite only asserts that it fits).
    """
    x = np.asarray(x, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    total_shift = 31 - np.asarray(shift, dtype=np.int64)
    if np.any((total_shift < 1) | (total_shift > 62)):
        raise ValueError("single rounding needs a shift from -31 to 30")
    # x * M can reach 2**62; adding the rounding term stays inside int64.
    result = (x * multiplier + (np.int64(1) << (total_shift - 1))) >> total_shift
    return np.clip(result, INT32_MIN, INT32_MAX)


def requantize(acc, multiplier, shift, output_zero_point, qmin=-128, qmax=127, *, mode="double",
               float_scale=None, channel_axis=-1):
    """int32 accumulators -> int8 outputs: scale, add the output zero point, clamp to ``[qmin, qmax]``.

    ``multiplier``/``shift`` (and ``float_scale`` for ``mode="float32"``) are per channel along
    ``channel_axis`` of ``acc``, or scalars. ReLU and ReLU6 are expressed as ``qmin``/``qmax``.
    """
    acc = np.asarray(acc, dtype=np.int64)

    def per_channel(v, dtype):
        v = np.asarray(v, dtype=dtype)
        if v.ndim == 0:
            return v
        shape = [1] * acc.ndim
        shape[channel_axis] = v.shape[0]
        return v.reshape(shape)

    if mode == "double":
        scaled = multiply_by_quantized_multiplier(acc, per_channel(multiplier, np.int64), per_channel(shift, np.int64))
    elif mode == "single":
        scaled = multiply_by_quantized_multiplier_single_rounding(
            acc, per_channel(multiplier, np.int64), per_channel(shift, np.int64))
    elif mode == "float32":
        if float_scale is None:
            raise ValueError("mode 'float32' needs float_scale")
        product = acc.astype(np.float32) * per_channel(float_scale, np.float32)
        scaled = np.rint(product).astype(np.int64)
    else:
        raise ValueError(f"rounding mode must be one of {', '.join(ROUNDING_MODES)}, not {mode!r}")
    return np.clip(scaled + int(output_zero_point), qmin, qmax).astype(np.int8)
