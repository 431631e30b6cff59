#include "perch/core/tensor.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace perch {
namespace {

constexpr int64_t kBigFloats = int64_t{40} << 18;  // 40 MiB of float32: above the 32 MiB large-block bound

bool cache_on() { return tensor_cache_stats().limit_bytes > 0; }

// float16 conversions (ONNX FLOAT16): values worked out by hand from IEEE 754 binary16 — the largest finite, the
// overflow threshold, subnormals, ties to even at both ends of the grid, signed zero, NaN.
TEST(Half, KnownValues) {
  struct Case {
    double x;
    uint16_t bits;
  };
  for (const Case& c : {Case{0.0, 0x0000}, Case{-0.0, 0x8000}, Case{1.0, 0x3c00}, Case{-2.0, 0xc000}, Case{0.5, 0x3800},
                        Case{65504.0, 0x7bff}, Case{65519.99, 0x7bff}, Case{65520.0, 0x7c00}, Case{1e9, 0x7c00},
                        Case{-1e9, 0xfc00}, Case{std::ldexp(1.0, -14), 0x0400}, Case{std::ldexp(1.0, -24), 0x0001},
                        Case{std::ldexp(1.0, -25), 0x0000},              // half of the smallest subnormal: tie to 0
                        Case{std::ldexp(3.0, -26), 0x0001},              // 0.75 of it: up
                        Case{std::ldexp(3.0, -25), 0x0002},              // 1.5 subnormal steps: tie to even 2
                        Case{1.0 + std::ldexp(1.0, -11), 0x3c00},        // tie between 1 and 1 + 2^-10: even (1)
                        Case{1.0 + std::ldexp(3.0, -11), 0x3c02},        // tie between 1 + 2^-10 and 1 + 2^-9: even
                        Case{std::ldexp(4095.0, -26), 0x0400},  // 1023.75 subnormal steps: rounds up to the smallest normal
                        Case{std::ldexp(2047.0, -24), 0x07ff},  // the largest value of 2^-14's binade
                        Case{0.1, 0x2e66}, Case{3.14159265358979, 0x4248}}) {
    EXPECT_EQ(half_from_double(c.x), c.bits) << c.x;
    if ((c.bits & 0x7c00) != 0x7c00 && std::fabs(c.x) < 65504.0 && c.x == std::nearbyint(c.x)) {
      EXPECT_EQ(half_to_float(c.bits), static_cast<float>(c.x)) << c.x;
    }
  }
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_EQ(half_from_double(std::numeric_limits<double>::quiet_NaN()), 0x7e00);
  EXPECT_EQ(half_from_double(-std::numeric_limits<double>::quiet_NaN()), 0xfe00);
  // A payload keeps its top bits; a signalling NaN comes out quiet.
  EXPECT_EQ(half_from_double(std::bit_cast<double>(0x7ff0040000000001ull)), 0x7e01);
}

// Every one of the 65536 bit patterns converts to float and back to itself (NaNs to a NaN).
TEST(Half, EveryValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    const uint16_t back = half_from_double(f);
    if (((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff)) EXPECT_TRUE(std::isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff)) << h;
    else ASSERT_EQ(back, h) << "bits " << h << " -> " << f;
  }
}

#if defined(__FLT16_MAX__)
// Against the compiler's own _Float16 conversions (correctly rounded, from float and from double directly), on random
// bit patterns that cover every exponent and on the midpoints between neighbouring halves.
TEST(Half, MatchesTheCompilersFloat16) {
  std::mt19937_64 rng(16);
  for (int i = 0; i < 1000000; ++i) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    // sign and mantissa random, exponent 2^-31 .. 2^32 (subnormal halves to overflow)
    const double d = std::bit_cast<double>((rng() & 0x800fffffffffffffull) | (static_cast<uint64_t>(0x3e0 + rng() % 0x40) << 52));
    if (std::isnan(f)) continue;
    ASSERT_EQ(half_from_double(f), std::bit_cast<uint16_t>(static_cast<_Float16>(f))) << f;
    ASSERT_EQ(half_from_double(d), std::bit_cast<uint16_t>(static_cast<_Float16>(d))) << d;
  }
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // midpoints (exact in double) between h and h + 1
    const double mid = (static_cast<double>(half_to_float(static_cast<uint16_t>(h))) +
                        static_cast<double>(half_to_float(static_cast<uint16_t>(h + 1)))) / 2;
    ASSERT_EQ(half_from_double(mid), std::bit_cast<uint16_t>(static_cast<_Float16>(mid))) << mid;
  }
}
#endif

// bfloat16 (ONNX BFLOAT16): values worked out by hand — ties to even, the overflow threshold (2 − 2^-8)·2^127,
// subnormals (grid 2^-133), signed zero, NaN.
TEST(BFloat16, KnownValues) {
  struct Case {
    double x;
    uint16_t bits;
  };
  const double top = std::ldexp(2.0 - std::ldexp(1.0, -7), 127), over = std::ldexp(2.0 - std::ldexp(1.0, -8), 127);
  for (const Case& c : {Case{0.0, 0x0000}, Case{-0.0, 0x8000}, Case{1.0, 0x3f80}, Case{-2.0, 0xc000},
                        Case{1.0 + std::ldexp(1.0, -8), 0x3f80},        // tie between 1 and 1 + 2^-7: even (1)
                        Case{1.0 + std::ldexp(3.0, -8), 0x3f82},        // tie between 1 + 2^-7 and 1 + 2^-6: even
                        Case{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40), 0x3f81},  // just above the tie
                        Case{top, 0x7f7f}, Case{std::nextafter(over, 0.0), 0x7f7f}, Case{over, 0x7f80}, Case{1e300, 0x7f80},
                        Case{-1e300, 0xff80}, Case{std::ldexp(1.0, -126), 0x0080}, Case{std::ldexp(1.0, -133), 0x0001},
                        Case{std::ldexp(1.0, -134), 0x0000},  // half the smallest subnormal: tie to 0
                        Case{std::ldexp(3.0, -134), 0x0002},  // 1.5 subnormal steps: tie to even 2
                        Case{3.14159265358979, 0x4049}, Case{0.1, 0x3dcd}}) {
    EXPECT_EQ(bfloat16_from_double(c.x), c.bits) << c.x;
  }
  EXPECT_EQ(bfloat16_to_float(0x7f80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bfloat16_to_float(0x0001), std::ldexp(1.0f, -133));
  EXPECT_EQ(bfloat16_to_float(0x4049), 3.140625f);
  EXPECT_EQ(bfloat16_from_double(std::numeric_limits<double>::quiet_NaN()), 0x7fc0);
  EXPECT_EQ(bfloat16_from_double(-std::numeric_limits<double>::quiet_NaN()), 0xffc0);
  EXPECT_EQ(bfloat16_from_double(std::bit_cast<double>(0x7ff0200000000001ull)), 0x7fc1);  // payload top bits, quiet
}

// Against the integer formula for rounding float32 bits to their top half (round to nearest even), on random float32
// bit patterns of every exponent; every bfloat16 converts to float and back to itself; midpoints between neighbours
// (exact in double) go to the even one.
TEST(BFloat16, MatchesFloat32BitRoundingAndRoundTrips) {
  std::mt19937 rng(17);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng());
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    const auto want = static_cast<uint16_t>((static_cast<uint64_t>(bits) + 0x7fff + ((bits >> 16) & 1)) >> 16);
    ASSERT_EQ(bfloat16_from_double(f), want) << f;
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bfloat16_to_float(static_cast<uint16_t>(b));
    const uint16_t back = bfloat16_from_double(f);
    if (std::isnan(f)) {
      EXPECT_TRUE((back & 0x7f80) == 0x7f80 && (back & 0x7f)) << b;
    } else {
      ASSERT_EQ(back, b) << "bits " << b << " -> " << f;
    }
    if ((b & 0x7fff) < 0x7f7f) {  // finite, and so is b + 1
      const double mid = (static_cast<double>(f) + static_cast<double>(bfloat16_to_float(static_cast<uint16_t>(b + 1)))) / 2;
      ASSERT_EQ(bfloat16_from_double(mid), (b & 1) ? b + 1 : b) << mid;
    }
  }
}

TEST(TensorCache, FreedLargeBlockIsReused) {
  if (!cache_on()) GTEST_SKIP() << "tensor cache off (AddressSanitizer build or PERCH_TENSOR_CACHE_MB=0)";
  release_tensor_cache();
  const TensorCacheStats before = tensor_cache_stats();
  const void* first = nullptr;
  {
    Tensor a = Tensor::uninitialized(DType::kFloat32, {kBigFloats});
    first = a.raw();
  }
  EXPECT_GE(tensor_cache_stats().cached_bytes, static_cast<size_t>(kBigFloats) * 4);
  Tensor b = Tensor::uninitialized(DType::kFloat32, {kBigFloats - 1000});  // a little smaller: same block
  const TensorCacheStats after = tensor_cache_stats();
  EXPECT_EQ(b.raw(), first);
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(after.misses, before.misses + 1);
  EXPECT_EQ(after.cached_bytes, 0u);
  // Large blocks keep the 64-byte alignment every kernel relies on (they are in fact 2 MiB aligned).
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 64, 0u);
}

TEST(TensorCache, ReusedBlockIsZeroedForZeroInitializedTensors) {
  release_tensor_cache();
  {
    Tensor dirty = Tensor::uninitialized(DType::kUInt8, {kBigFloats * 4});
    std::memset(dirty.raw(), 0xAB, dirty.nbytes());
  }
  Tensor clean(DType::kInt32, {kBigFloats});
  const int32_t* p = clean.data<int32_t>();
  int64_t nonzero = 0;
  for (int64_t i = 0; i < clean.numel(); ++i) nonzero += p[i] != 0;
  EXPECT_EQ(nonzero, 0);
}

TEST(TensorCache, MuchLargerBlockIsNotHandedToASmallRequest) {
  if (!cache_on()) GTEST_SKIP() << "tensor cache off (AddressSanitizer build or PERCH_TENSOR_CACHE_MB=0)";
  release_tensor_cache();
  { Tensor big = Tensor::uninitialized(DType::kFloat32, {kBigFloats * 2}); }  // 80 MiB cached
  const TensorCacheStats before = tensor_cache_stats();
  Tensor small = Tensor::uninitialized(DType::kFloat32, {kBigFloats});  // 40 MiB: 80 is more than 1.5x
  EXPECT_EQ(tensor_cache_stats().hits, before.hits);
  EXPECT_EQ(tensor_cache_stats().cached_bytes, before.cached_bytes);
  release_tensor_cache();
  EXPECT_EQ(tensor_cache_stats().cached_bytes, 0u);
}

TEST(TensorCache, SmallTensorsDoNotUseIt) {
  release_tensor_cache();
  const TensorCacheStats before = tensor_cache_stats();
  { Tensor t = Tensor::uninitialized(DType::kFloat32, {int64_t{1} << 20}); }  // 4 MiB: glibc's heap reuses it
  EXPECT_EQ(tensor_cache_stats().misses, before.misses);
  EXPECT_EQ(tensor_cache_stats().cached_bytes, 0u);
}

}  // namespace
}  // namespace perch
