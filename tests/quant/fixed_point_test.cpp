// Fixed-point requantization against exact references. long double has a 64-bit significand, so every
// int32 * int32 product and its power-of-two scalings are exact in it: the references round an exact
// rational value once, with the documented tie rule. Tolerance: 0 everywhere, except the documented
// "within 1 of the single-rounded x * M" bound of the two-step multiply.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "perch/quant/fixed_point.h"
#include "perch/core/error.h"

namespace perch::quant {
namespace {

constexpr int32_t kMin = std::numeric_limits<int32_t>::min();
constexpr int32_t kMax = std::numeric_limits<int32_t>::max();

static_assert(std::numeric_limits<long double>::digits >= 64, "tests need an exact 64-bit significand");

int32_t ref_srdhm(int32_t a, int32_t b) {
  const long double v = static_cast<long double>(a) * b / 2147483648.0L;  // exact
  const long double r = std::floor(v + 0.5L);                              // ties toward +inf
  if (r > kMax) return kMax;
  return static_cast<int32_t>(r);
}

int32_t ref_rdbpot(int32_t x, int e) {
  const long double v = std::ldexp(static_cast<long double>(x), -e);  // exact
  return static_cast<int32_t>(std::round(v));                         // ties away from zero
}

int32_t ref_multiply(int32_t x, FixedPointMultiplier m) {
  if (m.shift > 0) {  // one rounding of the exact product, ties toward +inf, saturated
    const long double v = std::ldexp(static_cast<long double>(x) * m.multiplier, m.shift - 31);
    const long double r = std::floor(v + 0.5L);
    return static_cast<int32_t>(std::min<long double>(std::max<long double>(r, kMin), kMax));
  }
  const int32_t high = ref_srdhm(x, m.multiplier);
  return static_cast<int32_t>(std::round(std::ldexp(static_cast<long double>(high), m.shift)));
}

std::vector<int32_t> edge_values() {
  std::vector<int32_t> v{0, 1, -1, 2, -2, 3, -3, kMin, kMin + 1, kMax, kMax - 1};
  for (int k = 1; k < 31; ++k) {
    const int32_t p = int32_t{1} << k;
    for (int32_t d : {-1, 0, 1}) {
      v.push_back(p + d);
      v.push_back(-p + d);
    }
  }
  return v;
}

TEST(FixedPoint, SrdhmEdgesAndTies) {
  EXPECT_EQ(saturating_rounding_doubling_high_mul(kMin, kMin), kMax);
  EXPECT_EQ(saturating_rounding_doubling_high_mul(1, 1 << 30), 1);    // +0.5 -> 1
  EXPECT_EQ(saturating_rounding_doubling_high_mul(-1, 1 << 30), 0);   // -0.5 -> 0 (ties toward +inf)
  EXPECT_EQ(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);    // 1.5 -> 2
  EXPECT_EQ(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);  // -1.5 -> -1
  EXPECT_EQ(saturating_rounding_doubling_high_mul(kMin, kMax), -kMax);
  const auto ev = edge_values();
  for (int32_t a : ev)
    for (int32_t b : ev) ASSERT_EQ(saturating_rounding_doubling_high_mul(a, b), ref_srdhm(a, b)) << a << " " << b;
}

TEST(FixedPoint, RdbpotEdgesAndTies) {
  EXPECT_EQ(rounding_divide_by_pot(5, 1), 3);    // 2.5 -> 3
  EXPECT_EQ(rounding_divide_by_pot(-5, 1), -3);  // -2.5 -> -3
  EXPECT_EQ(rounding_divide_by_pot(kMin, 31), -1);
  EXPECT_EQ(rounding_divide_by_pot(kMax, 31), 1);
  EXPECT_EQ(rounding_divide_by_pot(kMin, 0), kMin);
  for (int32_t x : edge_values())
    for (int e = 0; e <= 31; ++e) ASSERT_EQ(rounding_divide_by_pot(x, e), ref_rdbpot(x, e)) << x << " " << e;
  // Every tie (2k+1) * 2^(e-1) for small k, both signs.
  for (int e = 1; e <= 31; ++e)
    for (int64_t k = 0; k < 64; ++k) {
      const int64_t t = (2 * k + 1) * (int64_t{1} << (e - 1));
      if (t > kMax) break;
      ASSERT_EQ(rounding_divide_by_pot(static_cast<int32_t>(t), e), k + 1);
      ASSERT_EQ(rounding_divide_by_pot(static_cast<int32_t>(-t), e), -(k + 1));
    }
}

TEST(FixedPoint, RandomSweeps) {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> any(kMin, kMax);
  for (int i = 0; i < 3'000'000; ++i) {
    const int32_t a = any(rng), b = any(rng);
    ASSERT_EQ(saturating_rounding_doubling_high_mul(a, b), ref_srdhm(a, b)) << a << " " << b;
    const int e = static_cast<int>(rng() % 32);
    ASSERT_EQ(rounding_divide_by_pot(a, e), ref_rdbpot(a, e)) << a << " " << e;
  }
}

TEST(FixedPoint, QuantizeMultiplier) {
  auto check = [](double real, int32_t m, int32_t s) {
    const FixedPointMultiplier q = quantize_multiplier(real);
    EXPECT_EQ(q.multiplier, m) << real;
    EXPECT_EQ(q.shift, s) << real;
  };
  check(0.0, 0, 0);
  check(1.0, 1 << 30, 1);
  check(0.5, 1 << 30, 0);
  check(0.75, 3 << 29, 0);
  check(1.0 - std::ldexp(1.0, -40), 1 << 30, 1);  // rounds up to 2^31: renormalized
  check(std::ldexp(1.0, -32), 1 << 30, -31);      // smallest representable power
  check(std::ldexp(1.0, -33), 0, 0);              // underflow
  check(1e-300, 0, 0);
  check(std::ldexp(1.0, 40), 1 << 30, 41);
  EXPECT_THROW(quantize_multiplier(-1.0), Error);
  EXPECT_THROW(quantize_multiplier(std::nan("")), Error);
  EXPECT_THROW(quantize_multiplier(INFINITY), Error);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const double real = std::ldexp(std::uniform_real_distribution<double>(0.5, 1.0)(rng),
                                   static_cast<int>(rng() % 70) - 31);
    const FixedPointMultiplier q = quantize_multiplier(real);
    ASSERT_GE(q.multiplier, 1 << 30);
    ASSERT_LE(q.multiplier, kMax);
    ASSERT_LE(std::fabs(multiplier_to_double(q) - real), real * std::ldexp(1.0, -31)) << real;
  }
}

TEST(FixedPoint, MultiplyByQuantizedMultiplier) {
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int32_t> any(kMin, kMax);
  int64_t off_by_one = 0, n = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    // Multipliers as requantization produces them: mostly < 1, some up to 2^8.
    const double real = std::ldexp(std::uniform_real_distribution<double>(0.5, 1.0)(rng),
                                   static_cast<int>(rng() % 48) - 39);
    const FixedPointMultiplier m = quantize_multiplier(real);
    int32_t x = any(rng);
    if (m.shift > 0 && (i & 1)) x >>= m.shift;  // half of them in the non-saturating domain
    const int32_t got = multiply_by_quantized_multiplier(x, m);
    ASSERT_EQ(got, ref_multiply(x, m)) << x << " * " << real;
    // Against the exactly rounded x * M (M the represented multiplier): within 1.
    const long double exact = std::ldexp(static_cast<long double>(x) * m.multiplier, m.shift - 31);
    const auto single = static_cast<int64_t>(std::min<long double>(std::max<long double>(std::round(exact), kMin), kMax));
    ASSERT_LE(std::llabs(got - single), 1) << x << " * " << real;
    off_by_one += got != single;
    ++n;
  }
  EXPECT_LT(off_by_one, n / 20);  // double rounding (M < 1) differs from single rounding on near-ties
  // Edges: every exponent, extreme x, saturating left shifts.
  for (int32_t x : edge_values())
    for (int shift = -40; shift <= 40; ++shift) {
      const FixedPointMultiplier m{(1 << 30) + 12345, shift};
      ASSERT_EQ(multiply_by_quantized_multiplier(x, m), ref_multiply(x, m)) << x << " shift " << shift;
    }
  EXPECT_EQ(multiply_by_quantized_multiplier(kMax, quantize_multiplier(1.0)), kMax);
  EXPECT_EQ(multiply_by_quantized_multiplier(kMin, quantize_multiplier(1.0)), kMin);
  EXPECT_EQ(multiply_by_quantized_multiplier(kMax, quantize_multiplier(1.5)), kMax);
  EXPECT_EQ(multiply_by_quantized_multiplier(kMin / 2, quantize_multiplier(1.5)), int64_t{kMin} / 2 * 3 / 2);
  EXPECT_EQ(multiply_by_quantized_multiplier(1 << 20, quantize_multiplier(4096.0)), kMax);  // saturates
  EXPECT_EQ(multiply_by_quantized_multiplier(-(1 << 20), quantize_multiplier(4096.0)), kMin);
  EXPECT_EQ(multiply_by_quantized_multiplier(12345, {}), 0);
  EXPECT_EQ(multiply_by_quantized_multiplier(kMin, {1 << 30, -32}), 0);  // -2^31 * 2^-33 = -0.25
  EXPECT_EQ(multiply_by_quantized_multiplier(kMax, {kMax, -40}), 0);
}

// The runtime's output stage: exactly round(x * M) (ties toward +inf), saturated, against 128-bit integer
// arithmetic — floor((2 x multiplier + 2^S) / 2^(S + 1)) for S = 31 - shift, or x multiplier 2^(shift - 31) rounded
// the same way for left shifts.
int64_t ref_round_once(int32_t x, FixedPointMultiplier m) {
  const __int128 p = static_cast<__int128>(x) * m.multiplier;
  __int128 r;
  const int s = 31 - m.shift;
  if (s >= 1) {
    if (s >= 120) return 0;
    const __int128 num = 2 * p + (static_cast<__int128>(1) << s), den = static_cast<__int128>(1) << (s + 1);
    r = num >= 0 ? num / den : -((-num + den - 1) / den);  // floor
  } else {
    r = -s >= 60 ? (p > 0 ? kMax + int64_t{1} : p < 0 ? kMin - int64_t{1} : 0) : p * (static_cast<__int128>(1) << -s);
  }
  if (r > kMax) return kMax;
  if (r < kMin) return kMin;
  return static_cast<int64_t>(r);
}

TEST(FixedPoint, MultiplyRoundOnceIsTheExactlyRoundedProduct) {
  std::mt19937_64 rng(12);
  std::uniform_int_distribution<int32_t> any(kMin, kMax);
  int64_t differs_from_double_rounding = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    const double real = std::ldexp(std::uniform_real_distribution<double>(0.5, 1.0)(rng),
                                   static_cast<int>(rng() % 48) - 39);
    const FixedPointMultiplier m = quantize_multiplier(real);
    int32_t x = any(rng);
    if (i & 1) x >>= 12;  // accumulator-sized values too
    const int32_t got = multiply_round_once(x, m);
    ASSERT_EQ(got, ref_round_once(x, m)) << x << " * " << real;
    differs_from_double_rounding += got != multiply_by_quantized_multiplier(x, m);
  }
  // The double rounding of multiply_by_quantized_multiplier is a real difference, not a no-op.
  EXPECT_GT(differs_from_double_rounding, 0);
  // Exact ties go up (toward +inf) for both signs: 3 * 0.5 = 1.5 -> 2, -3 * 0.5 = -1.5 -> -1.
  EXPECT_EQ(multiply_round_once(3, quantize_multiplier(0.5)), 2);
  EXPECT_EQ(multiply_round_once(-3, quantize_multiplier(0.5)), -1);
  EXPECT_EQ(multiply_round_once(-5, quantize_multiplier(0.25)), -1);  // -1.25
  for (int32_t x : edge_values())
    for (int shift = -40; shift <= 40; ++shift) {
      const FixedPointMultiplier m{(1 << 30) + 12345, shift};
      ASSERT_EQ(multiply_round_once(x, m), ref_round_once(x, m)) << x << " shift " << shift;
    }
  EXPECT_EQ(multiply_round_once(12345, {}), 0);
  EXPECT_EQ(multiply_round_once(kMin, {1 << 30, -32}), 0);   // -0.25
  EXPECT_EQ(multiply_round_once(kMin, {1 << 30, -31}), 0);   // -0.5: the tie goes up, to 0
  EXPECT_EQ(multiply_round_once(kMin, {1 << 30, -30}), -1);  // exactly -1
}

}  // namespace
}  // namespace perch::quant
