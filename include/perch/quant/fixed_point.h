// perch/quant/fixed_point.h — integer requantization: multiplying an int32 accumulator by a real
// multiplier M > 0 using only integer arithmetic (gemmlowp / TFLite reference semantics, derived in
// docs/QUANTIZATION.md).
//
// Representation (the only one in perch):  M = multiplier * 2^(shift - 31),  multiplier in [2^30, 2^31).
// `shift` > 0 means a left shift, `shift` < 0 a right shift. M == 0 is {0, 0}.
//
// multiply_by_quantized_multiplier(x, m):
//   shift <= 0 (M < 1):  rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), -shift)
//                        two roundings, as the TFLite reference does ("double rounding"): within 1 of
//                        the exactly rounded x * M.
//   shift > 0  (M >= 1): saturating_rounding_doubling_high_mul(x * 2^shift, multiplier), computed in 64
//                        bits so x * 2^shift never overflows: one rounding (ties toward +inf) of the exact
//                        x * M, saturated to int32.
// multiply_round_once(x, m) — what perch's integer runtime requantizes with (docs/INTEGER.md):
//   round(x * M) with ONE rounding, to nearest, ties toward +inf, saturated to int32:
//   floor((x * multiplier + 2^(S - 1)) / 2^S),  S = 31 - shift,  in 64 bits (|x * multiplier| < 2^62).
//   For shift > 0 this is multiply_by_quantized_multiplier; for shift <= 0 it skips the TFLite double rounding
//   (which moves a value whose exact fraction lies within 2^(shift - 1) below one half up by a step).
// All three are compared bit for bit with exact references in tests/quant/fixed_point_test.cpp.
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
  if (m.shift <= 0) {
    const int32_t high = saturating_rounding_doubling_high_mul(x, m.multiplier);
    // multiplier < 2^31 makes |high| < 2^31, so dividing by 2^32 or more rounds to 0.
    return -m.shift <= 31 ? rounding_divide_by_pot(high, -m.shift) : 0;
  }
  // Left shift: round(x * multiplier * 2^(shift - 31)), ties toward +inf, in 64 bits. This is
  // floor((x * 2^shift * multiplier + 2^30) / 2^31) = SRDHM(x * 2^shift, multiplier) written without
  // forming x * 2^shift, so it equals the 32-bit formula whenever x * 2^shift fits int32 and saturates
  // correctly when the *result* does not fit.
  const int64_t prod = int64_t{x} * m.multiplier;  // |prod| < 2^62
  int64_t r;
  if (m.shift < 31) {
    r = (prod + (int64_t{1} << (30 - m.shift))) >> (31 - m.shift);
  } else if (m.shift == 31 || prod == 0) {
    r = prod;
  } else {  // |prod| >= 2^30 and shift >= 32: |result| >= 2^31
    r = prod > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }
  if (r > std::numeric_limits<int32_t>::max()) return std::numeric_limits<int32_t>::max();
  if (r < std::numeric_limits<int32_t>::min()) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(r);
}

inline int32_t multiply_round_once(int32_t x, FixedPointMultiplier m) {
  if (m.shift > 0) return multiply_by_quantized_multiplier(x, m);
  const int s = 31 - m.shift;  // >= 31
  // |x * multiplier| < 2^62 <= 2^(s - 1) for s >= 63: x * M lies strictly inside (-1/2, 1/2), the result is 0.
  if (s >= 63) return 0;
  const int64_t prod = int64_t{x} * m.multiplier;
  // |result| <= |x| (M < 1): fits int32.
  return static_cast<int32_t>((prod + (int64_t{1} << (s - 1))) >> s);
}

}  // namespace perch::quant
