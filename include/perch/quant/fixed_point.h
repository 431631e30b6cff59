// perch/quant/fixed_point.h — integer requantization: multiplying an int32 accumulator by a real
// multiplier M > 0 using only integer arithmetic (gemmlowp / TFLite reference semantics, derived in
// docs/QUANTIZATION.md).
//
// Representation (the only one in perch):  M = multiplier * 2^(shift - 31),  multiplier in [2^30, 2^31).
// `shift` > 0 means a left shift, `shift` < 0 a right shift. M == 0 is {0, 0}.
//
// multiply_by_quantized_multiplier(x, m) =
//     rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x * 2^max(shift,0), multiplier),
//                            max(-shift, 0))
// i.e. two roundings (the TFLite reference's "double rounding"): the result is within 1 of the exactly
// rounded x * M, and equal to the two-step exact reference the tests compute in 128-bit arithmetic.
// If x * 2^shift does not fit int32 (only possible for M >= 1), it saturates before the multiplication.
#pragma once

#include <cassert>
#include <cstdint>
#include <limits>

namespace perch::quant {

struct FixedPointMultiplier {
  int32_t multiplier = 0;  // [2^30, 2^31), or 0 for M == 0
  int32_t shift = 0;       // > 0: left shift
};

// real = q * 2^e with q in [0.5, 1); multiplier = round_half_away(q * 2^31), shift = e; a multiplier
// that rounds up to 2^31 becomes 2^30 with shift e + 1. real == 0, and real < 2^-32 (shift < -31,
// where |x * M| < 0.5 for every int32 x so the exact result is 0 anyway), give {0, 0}. Throws for
// negative, NaN or infinite `real`. Large reals are represented as they are (shift may exceed 31).
FixedPointMultiplier quantize_multiplier(double real);
// The real value a multiplier represents (for tests and messages).
double multiplier_to_double(FixedPointMultiplier m);

// round(a * b / 2^31), to nearest, ties toward +infinity (gemmlowp's SaturatingRoundingDoublingHighMul).
// The only overflow, a == b == INT32_MIN (exact result 2^31), saturates to INT32_MAX.
inline int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == std::numeric_limits<int32_t>::min() && b == a) return std::numeric_limits<int32_t>::max();
  const int64_t ab = int64_t{a} * int64_t{b};
  // floor((ab + 2^30) / 2^31): arithmetic shift of int64 is floor division (C++20 defines it).
  return static_cast<int32_t>((ab + (int64_t{1} << 30)) >> 31);
}

// round(x / 2^exponent), ties away from zero. exponent in [0, 31].
inline int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  assert(exponent >= 0 && exponent <= 31);
  const int64_t mask = (int64_t{1} << exponent) - 1;
  const int64_t remainder = int64_t{x} & mask;          // x - floor(x / 2^e) * 2^e, in [0, 2^e)
  const int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);  // > half rounds up; == half only for x >= 0
  return static_cast<int32_t>((int64_t{x} >> exponent) + (remainder > threshold ? 1 : 0));
}

inline int32_t multiply_by_quantized_multiplier(int32_t x, FixedPointMultiplier m) {
  const int left = m.shift > 0 ? m.shift : 0;
  const int right = m.shift > 0 ? 0 : -m.shift;
  int64_t shifted = int64_t{x} * (int64_t{1} << (left < 32 ? left : 32));
  if (shifted > std::numeric_limits<int32_t>::max()) shifted = std::numeric_limits<int32_t>::max();
  if (shifted < std::numeric_limits<int32_t>::min()) shifted = std::numeric_limits<int32_t>::min();
  const int32_t high = saturating_rounding_doubling_high_mul(static_cast<int32_t>(shifted), m.multiplier);
  if (right <= 31) return rounding_divide_by_pot(high, right);
  // |high| <= 2^31, so dividing by 2^32 or more rounds to 0 — except -2^31 / 2^32 = -0.5 -> -1.
  return (right == 32 && high == std::numeric_limits<int32_t>::min()) ? -1 : 0;
}

}  // namespace perch::quant
