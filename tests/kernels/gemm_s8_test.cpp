// gemm_s8: packing, the reference twin against an independent int64 formula, and every compiled SIMD path
// against the reference — bit-exact (tolerance 0 everywhere: integer results have no rounding freedom; the
// requantization is the one of perch/quant/fixed_point.h on every path).
#include "perch/kernels/gemm_s8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/kernel_test_util.h"
#include "perch/core/cpu.h"
#include "perch/core/error.h"
#include "perch/core/threads.h"

namespace perch::kernels {
namespace {

using test::PathGuard;
using test::Rng;

struct IsaPath {
  const char* name;
  uint32_t paths;  // what set_paths_for_testing gets
  Path needs;
};
// Each optimized path alone (plus the reference it falls back to). The avx2 entry excludes AVX-512.
std::vector<IsaPath> isa_paths() {
  return {{"avx2", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx2), Path::kAvx2},
          {"avx512vnni", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx512Vnni),
           Path::kAvx512Vnni},
          // AMX tiles for K >= 61 (16 rows x 64 k-bytes; the K sizes below straddle 64 and 128), VNNI below.
          {"amx", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx512Vnni) | static_cast<uint32_t>(Path::kAmx),
           Path::kAmx}};
}

struct Case {
  int64_t m, n, k;
  int64_t lda, ldc;
  Act8 a_type = Act8::kUInt8;
  int32_t za = 0;
  std::vector<uint8_t> a_bytes;  // M x lda, raw bytes of the activations
  std::vector<int8_t> w;         // K x N (kKN)
  std::vector<int32_t> zw;       // empty, 1 or N
  std::vector<int32_t> bias;     // empty or N
};

int32_t act_value(const Case& c, int64_t i, int64_t kk) {
  const uint8_t b = c.a_bytes[static_cast<size_t>(i * c.lda + kk)];
  return c.a_type == Act8::kUInt8 ? int32_t{b} : int32_t{static_cast<int8_t>(b)};
}

// Independent of the library: int64 sum of (a - za)(w - zw) from the unpacked weights, plus bias.
std::vector<int64_t> exact_acc(const Case& c) {
  std::vector<int64_t> r(static_cast<size_t>(c.m * c.n));
  for (int64_t i = 0; i < c.m; ++i)
    for (int64_t j = 0; j < c.n; ++j) {
      const int64_t zw = c.zw.empty() ? 0 : c.zw[c.zw.size() == 1 ? 0 : static_cast<size_t>(j)];
      int64_t s = c.bias.empty() ? 0 : c.bias[static_cast<size_t>(j)];
      for (int64_t kk = 0; kk < c.k; ++kk) s += (act_value(c, i, kk) - c.za) * (c.w[static_cast<size_t>(kk * c.n + j)] - zw);
      r[static_cast<size_t>(i * c.n + j)] = s;
    }
  return r;
}

// Weight values: mostly uniform, with the extremes -128, -127 and 127 forced in often.
int8_t draw_weight(Rng& rng) {
  switch (rng.range(0, 9)) {
    case 0: return -128;
    case 1: return -127;
    case 2: return 127;
    default: return static_cast<int8_t>(rng.range(-128, 127));
  }
}

Case make_case(Rng& rng, int64_t m, int64_t n, int64_t k) {
  Case c;
  c.m = m;
  c.n = n;
  c.k = k;
  c.lda = k + (rng.range(0, 3) == 0 ? rng.range(1, 9) : 0);
  c.ldc = n + (rng.range(0, 3) == 0 ? rng.range(1, 9) : 0);
  c.a_type = rng.range(0, 1) ? Act8::kUInt8 : Act8::kInt8;
  static const int32_t zu[] = {0, 255, 128, 3, 77}, zs[] = {-128, 127, 0, -5, 60};
  c.za = c.a_type == Act8::kUInt8 ? zu[rng.range(0, 4)] : zs[rng.range(0, 4)];
  c.a_bytes.resize(static_cast<size_t>(m * c.lda));
  for (auto& b : c.a_bytes) {
    const int64_t r = rng.range(0, 9);
    b = static_cast<uint8_t>(r == 0 ? 0 : (r == 1 ? 255 : (r == 2 ? 128 : rng.range(0, 255))));
  }
  c.w.resize(static_cast<size_t>(k * n));
  for (auto& v : c.w) v = draw_weight(rng);
  switch (rng.range(0, 3)) {
    case 0: c.zw = {static_cast<int32_t>(rng.range(-128, 127))}; break;
    case 1:
      c.zw.resize(static_cast<size_t>(n));
      for (auto& z : c.zw) z = static_cast<int32_t>(rng.range(0, 2) == 0 ? (rng.range(0, 1) ? -128 : 127) : rng.range(-128, 127));
      break;
    default: break;  // symmetric, the common case
  }
  if (rng.range(0, 2)) {
    c.bias.resize(static_cast<size_t>(n));
    for (auto& b : c.bias) b = static_cast<int32_t>(rng.range(-100000, 100000));
  }
  return c;
}

GemmS8Args args_for(const Case& c, const PackedWeightsS8& pw, void* out, OutputStageS8 stage) {
  GemmS8Args g;
  g.m = c.m;
  g.a = c.a_bytes.data();
  g.lda = c.lda;
  g.a_type = c.a_type;
  g.a_zero_point = c.za;
  g.w = &pw;
  g.bias = c.bias.empty() ? nullptr : c.bias.data();
  g.out = stage;
  g.c = out;
  g.ldc = c.ldc;
  return g;
}

// Per-channel multipliers that map each column's accumulator spread onto ~1.3x the output range, with the
// zero point mid-range: most outputs land strictly inside (qmin, qmax), some clamp.
std::vector<quant::FixedPointMultiplier> pick_multipliers(Rng& rng, const Case& c, const std::vector<int64_t>& acc,
                                                          int32_t qmin, int32_t qmax, bool per_channel) {
  std::vector<quant::FixedPointMultiplier> ms;
  double global = 1.0;
  for (int64_t j = 0; j < c.n; ++j) {
    int64_t lo = acc[static_cast<size_t>(j)], hi = lo;
    for (int64_t i = 0; i < c.m; ++i) {
      lo = std::min(lo, acc[static_cast<size_t>(i * c.n + j)]);
      hi = std::max(hi, acc[static_cast<size_t>(i * c.n + j)]);
    }
    const double spread = std::max<double>(1.0, static_cast<double>(std::max(std::llabs(lo), std::llabs(hi))));
    const double real = (qmax - qmin) / (2.0 * spread) * (0.6 + 0.8 * rng.uniform(0, 1));
    if (j == 0) global = real;
    if (per_channel || j == 0) ms.push_back(quant::quantize_multiplier(per_channel ? real : global));
  }
  return ms;
}

// Runs the case on one path set; returns the output bytes (or int32 as bytes).
std::vector<uint8_t> run(const Case& c, const PackedWeightsS8& pw, OutputStageS8 stage, bool reference_twin) {
  const size_t elem = stage.type == OutputType::kInt32 ? 4 : 1;
  std::vector<uint8_t> out(static_cast<size_t>(c.m * c.ldc) * elem, 0xCD);
  const GemmS8Args g = args_for(c, pw, out.data(), stage);
  if (reference_twin)
    gemm_s8_reference(g);
  else
    gemm_s8(g);
  return out;
}

std::string describe(const Case& c) {
  return "M=" + std::to_string(c.m) + " N=" + std::to_string(c.n) + " K=" + std::to_string(c.k) +
         " lda=" + std::to_string(c.lda) + " ldc=" + std::to_string(c.ldc) +
         (c.a_type == Act8::kUInt8 ? " u8" : " s8") + " za=" + std::to_string(c.za) +
         " zw=" + std::to_string(c.zw.size()) + " bias=" + std::to_string(!c.bias.empty());
}

TEST(PackWeightsS8, RoundTripAndColumnSums) {
  Rng rng(1);
  for (int64_t k : {1, 3, 4, 5, 31}) {
    for (int64_t n : {1, 15, 16, 17, 40}) {
      std::vector<int8_t> kn(static_cast<size_t>(k * n)), nk(kn.size());
      for (auto& v : kn) v = draw_weight(rng);
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t j = 0; j < n; ++j) nk[static_cast<size_t>(j * k + kk)] = kn[static_cast<size_t>(kk * n + j)];
      const auto a = pack_weights_s8(kn.data(), k, n, WeightLayout::kKN);
      const auto b = pack_weights_s8(nk.data(), k, n, WeightLayout::kNK);
      ASSERT_EQ(a.k_groups, (k + 3) / 4);
      ASSERT_EQ(a.panels, (n + 15) / 16);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(a.data.get()) % 64, 0u);
      for (int64_t j = 0; j < n; ++j) {
        int32_t s = 0;
        for (int64_t kk = 0; kk < k; ++kk) {
          ASSERT_EQ(a.at(kk, j), kn[static_cast<size_t>(kk * n + j)]);
          ASSERT_EQ(b.at(kk, j), kn[static_cast<size_t>(kk * n + j)]);
          s += kn[static_cast<size_t>(kk * n + j)];
        }
        ASSERT_EQ(a.col_sums[static_cast<size_t>(j)], s);
      }
      // Padding is zero (the kernels rely on it).
      for (int64_t kk = k; kk < a.k_groups * 4; ++kk)
        for (int64_t j = 0; j < a.panels * 16; ++j) ASSERT_EQ(a.at(kk, j), 0);
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t j = n; j < a.panels * 16; ++j) ASSERT_EQ(a.at(kk, j), 0);
      EXPECT_TRUE(a.zero_points.empty());
    }
  }
}

TEST(PackWeightsS8, Uint8WeightsShiftBy128) {
  const std::vector<uint8_t> w = {0, 255, 128, 7, 200, 1};
  const std::vector<int32_t> zp = {128};
  const auto p = pack_weights_u8(w.data(), 2, 3, WeightLayout::kKN, zp);
  EXPECT_EQ(p.at(0, 0), -128);
  EXPECT_EQ(p.at(0, 1), 127);
  EXPECT_EQ(p.at(1, 1), 72);
  EXPECT_TRUE(p.zero_points.empty());  // 128 - 128 = 0: symmetric after the shift
  const std::vector<int32_t> zp2 = {0};
  const auto q = pack_weights_u8(w.data(), 2, 3, WeightLayout::kKN, zp2);
  ASSERT_EQ(q.zero_points.size(), 3u);
  EXPECT_EQ(q.zero_points[2], -128);
}

TEST(PackWeightsS8, RejectsBadArguments) {
  std::vector<int8_t> w(static_cast<size_t>(kMaxGemmS8K + 1), 1);
  EXPECT_THROW(pack_weights_s8(w.data(), kMaxGemmS8K + 1, 1, WeightLayout::kKN), Error);
  EXPECT_NO_THROW(pack_weights_s8(w.data(), kMaxGemmS8K, 1, WeightLayout::kKN));
  EXPECT_THROW(pack_weights_s8(w.data(), 0, 1, WeightLayout::kKN), Error);
  const std::vector<int32_t> bad = {128}, two = {0, 0};
  EXPECT_THROW(pack_weights_s8(w.data(), 2, 3, WeightLayout::kKN, bad), Error);
  EXPECT_THROW(pack_weights_s8(w.data(), 2, 3, WeightLayout::kKN, two), Error);
}

TEST(GemmS8, ValidateRejectsBadArguments) {
  const std::vector<int8_t> w(12, 1);
  const auto pw = pack_weights_s8(w.data(), 4, 3, WeightLayout::kKN);
  std::vector<uint8_t> a(8), c(6);
  const quant::FixedPointMultiplier m{1 << 30, -3};
  GemmS8Args g;
  g.m = 2;
  g.a = a.data();
  g.lda = 4;
  g.w = &pw;
  g.c = c.data();
  g.ldc = 3;
  g.out.multipliers = &m;
  g.out.num_multipliers = 1;
  EXPECT_NO_THROW(validate(g));
  auto bad = g;
  bad.lda = 3;
  EXPECT_THROW(validate(bad), Error);
  bad = g;
  bad.a_zero_point = 256;
  EXPECT_THROW(validate(bad), Error);
  bad = g;
  bad.a_type = Act8::kInt8;
  bad.a_zero_point = 128;
  EXPECT_THROW(validate(bad), Error);
  bad = g;
  bad.out.num_multipliers = 2;
  EXPECT_THROW(validate(bad), Error);
  bad = g;
  bad.out.qmin = 10;
  bad.out.qmax = 9;
  EXPECT_THROW(validate(bad), Error);
  bad = g;
  bad.out.type = OutputType::kInt8;  // qmax 255 outside int8
  EXPECT_THROW(validate(bad), Error);
  const quant::FixedPointMultiplier small{5, 0};
  bad = g;
  bad.out.multipliers = &small;
  EXPECT_THROW(validate(bad), Error);
}

// The reference twin against the independent int64 formula: raw int32 exactly, requantized through
// multiply_round_once.
TEST(GemmS8, ReferenceMatchesInt64Formula) {
  Rng rng(2);
  for (int it = 0; it < 60; ++it) {
    const Case c = make_case(rng, rng.range(1, 9), rng.range(1, 20), rng.range(1, 40));
    const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
    const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
    const auto exact = exact_acc(c);
    OutputStageS8 raw;
    raw.type = OutputType::kInt32;
    const auto r32 = run(c, pw, raw, true);
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        int32_t v;
        std::memcpy(&v, r32.data() + (i * c.ldc + j) * 4, 4);
        ASSERT_EQ(v, exact[static_cast<size_t>(i * c.n + j)]) << describe(c) << " at " << i << "," << j;
      }
    OutputStageS8 st;
    st.type = OutputType::kInt8;
    st.qmin = -128;
    st.qmax = 127;
    st.zero_point = static_cast<int32_t>(rng.range(-20, 20));
    const auto ms = pick_multipliers(rng, c, exact, st.qmin, st.qmax, true);
    st.multipliers = ms.data();
    st.num_multipliers = static_cast<int64_t>(ms.size());
    const auto r8 = run(c, pw, st, true);
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        const int64_t q = int64_t{quant::multiply_round_once(
                              static_cast<int32_t>(exact[static_cast<size_t>(i * c.n + j)]), ms[static_cast<size_t>(j)])} +
                          st.zero_point;
        ASSERT_EQ(static_cast<int8_t>(r8[static_cast<size_t>(i * c.ldc + j)]), std::clamp<int64_t>(q, -128, 127))
            << describe(c);
      }
  }
}

// Shapes around the tiles: VNNI 12 x 32 (panels of 16, k groups of 4), AVX2 4 x 8.
const int64_t kMs[] = {1, 2, 3, 4, 5, 7, 11, 12, 13, 16, 23, 24, 25, 32, 37};
const int64_t kNs[] = {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 65};
const int64_t kKs[] = {1, 2, 3, 4, 5, 8, 9, 63, 64, 65, 127, 128, 129, 288};

struct Stats {
  int64_t outputs = 0, inside = 0, cases = 0;
};

// One case on one path: int32 against the int64 formula (and nothing written past N), then uint8 and int8
// outputs, per channel and per tensor, sometimes with a ReLU-like clamp, against the reference path.
void check_case(const IsaPath& isa, Rng& rng, const Case& c, Stats& stats) {
  const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
  const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
  const auto exact = exact_acc(c);
  // Raw int32 against the int64 formula.
  {
    OutputStageS8 raw;
    raw.type = OutputType::kInt32;
    PathGuard guard(isa.paths);
    const auto got = run(c, pw, raw, false);
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.ldc; ++j) {
        int32_t v;
        std::memcpy(&v, got.data() + (i * c.ldc + j) * 4, 4);
        if (j < c.n)
          ASSERT_EQ(v, exact[static_cast<size_t>(i * c.n + j)]) << isa.name << " " << describe(c) << " at " << i << "," << j;
        else
          ASSERT_EQ(static_cast<uint32_t>(v), 0xCDCDCDCDu) << "wrote past N: " << describe(c);
      }
  }
  // Requantized, uint8 and int8, per channel and per tensor, sometimes with a ReLU-like clamp.
  for (OutputType type : {OutputType::kUInt8, OutputType::kInt8}) {
    OutputStageS8 st;
    st.type = type;
    const int32_t lo = type == OutputType::kUInt8 ? 0 : -128;
    st.zero_point = lo + static_cast<int32_t>(rng.range(100, 155));
    st.qmin = rng.range(0, 3) == 0 ? st.zero_point : lo;  // fused ReLU
    st.qmax = rng.range(0, 3) == 0 ? std::min(lo + 255, st.zero_point + 90) : lo + 255;  // ReLU6-like cap
    const bool per_channel = rng.range(0, 3) != 0;
    const auto ms = pick_multipliers(rng, c, exact, lo, lo + 255, per_channel);
    st.multipliers = ms.data();
    st.num_multipliers = static_cast<int64_t>(ms.size());
    const auto want = run(c, pw, st, true);
    std::vector<uint8_t> got;
    {
      PathGuard guard(isa.paths);
      got = run(c, pw, st, false);
    }
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.ldc; ++j) {
        const size_t at = static_cast<size_t>(i * c.ldc + j);
        ASSERT_EQ(int{got[at]}, int{want[at]}) << isa.name << " " << describe(c) << " at " << i << "," << j
                                              << (per_channel ? " per-channel" : " per-tensor");
        if (j < c.n) {
          const int v = type == OutputType::kUInt8 ? int{got[at]} : int{static_cast<int8_t>(got[at])};
          ++stats.outputs;
          stats.inside += (v > st.qmin && v < st.qmax) ? 1 : 0;
        }
      }
  }
  ++stats.cases;
}

void check_paths_against_reference(const IsaPath& isa, uint64_t seed, Stats& stats) {
  Rng rng(seed);
  for (int64_t m : kMs)
    for (int64_t n : kNs) {
      const int64_t k = kKs[rng.range(0, std::size(kKs) - 1)];
      check_case(isa, rng, make_case(rng, m, n, k), stats);
      if (::testing::Test::HasFatalFailure()) return;
    }
}

TEST(GemmS8, EveryPathMatchesReferenceAroundTiles) {
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) {
      std::cout << "[   NOTE   ] path " << isa.name << " not run: this CPU lacks it (the other paths ran)\n";
      continue;
    }
    for (uint64_t seed : {11, 12, 13}) {
      Stats st;
      check_paths_against_reference(isa, seed, st);
      // The multipliers were chosen from the accumulators: a test where everything clamps tests nothing.
      // Some cases fuse a ReLU (about half their outputs clamp at qmin); 30 % overall is far from "all clamp".
      EXPECT_GT(st.inside * 10, st.outputs * 3) << isa.name << ": only " << st.inside << " of " << st.outputs
                                           << " outputs strictly inside (qmin, qmax)";
    }
  }
}

TEST(GemmS8, Avx512VnniPathAvailableOrSkipped) {
  if (!has_path(supported_paths(), Path::kAvx512Vnni)) GTEST_SKIP() << "CPU lacks AVX-512 VNNI";
  SUCCEED();
}
TEST(GemmS8, AmxPathAvailableOrSkipped) {
  if (!has_path(supported_paths(), Path::kAmx)) GTEST_SKIP() << "CPU (or OS) lacks AMX-INT8";
  SUCCEED();
}
TEST(GemmS8, Avx2PathAvailableOrSkipped) {
  if (!has_path(supported_paths(), Path::kAvx2)) GTEST_SKIP() << "CPU lacks AVX2";
  SUCCEED();
}

// Multipliers >= 1 (left shifts, 64-bit formula, saturation) and a shift the SIMD paths do not take (31: the
// call runs on the reference twin). Accumulators are large so the left shifts saturate sometimes.
TEST(GemmS8, LeftShiftMultipliersAndReferenceFallback) {
  Rng rng(5);
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    for (int it = 0; it < 20; ++it) {
      const Case c = make_case(rng, rng.range(1, 30), rng.range(1, 40), rng.range(1, 70));
      const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
      const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
      std::vector<quant::FixedPointMultiplier> ms(static_cast<size_t>(c.n));
      for (auto& m : ms) {
        m.multiplier = static_cast<int32_t>(rng.range(int64_t{1} << 30, (int64_t{1} << 31) - 1));
        m.shift = static_cast<int32_t>(rng.range(-31, 30));
      }
      if (it % 5 == 4) ms[0].shift = 31;
      OutputStageS8 st;
      st.type = OutputType::kUInt8;
      st.zero_point = 128;
      st.qmin = 0;
      st.qmax = 255;
      st.multipliers = ms.data();
      st.num_multipliers = c.n;
      const auto want = run(c, pw, st, true);
      PathGuard guard(isa.paths);
      ASSERT_EQ(run(c, pw, st, false), want) << isa.name << " " << describe(c);
    }
  }
}

// The AVX-512 VNNI path reads A in place for uint8 activations with K a multiple of 4 (else packs it per tile),
// and picks its output stage by the multipliers: all below 1/2 (the 32-bit final shift), or any other (the 64-bit
// form with a clamp). Every row count of a tile, column counts around the 16/32-column tiles, both activation types,
// K in and out of the in-place case, each multiplier regime; against the reference twin, byte for byte (ldc padding
// included: nothing may be written past N).
TEST(GemmS8, InPlaceAndPackedAOutputStageModesAroundTiles) {
  Rng rng(21);
  const std::pair<int64_t, int64_t> regimes[] = {{-20, -2}, {-1, 0}, {-20, 2}};  // shift ranges: hi32, R = 0, mixed
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    for (int64_t m : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 24, 27})
      for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 50})
        for (int64_t k : {4, 16, 24, 9}) {
          Case c = make_case(rng, m, n, k);
          c.zw.clear();  // the common symmetric case; zero points are covered above
          if (rng.range(0, 2) == 0 && c.a_type == Act8::kInt8) {  // mostly uint8: the in-place case
            c.a_type = Act8::kUInt8;
            c.za = 128;
          }
          const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN);
          const int64_t regime = rng.range(0, 3);
          const auto [slo, shi] = regimes[std::min<int64_t>(regime, 2)];
          std::vector<quant::FixedPointMultiplier> ms(static_cast<size_t>(c.n));
          for (auto& mm : ms) {
            mm.multiplier = static_cast<int32_t>(rng.range(int64_t{1} << 30, (int64_t{1} << 31) - 1));
            mm.shift = static_cast<int32_t>(rng.range(slo, shi));
          }
          if (regime == 3) ms = pick_multipliers(rng, c, exact_acc(c), 0, 255, true);  // outputs mostly inside
          for (OutputType type : {OutputType::kUInt8, OutputType::kInt8}) {
            OutputStageS8 st;
            st.type = type;
            const int32_t lo = type == OutputType::kUInt8 ? 0 : -128;
            st.zero_point = lo + static_cast<int32_t>(rng.range(60, 195));
            st.qmin = rng.range(0, 2) == 0 ? st.zero_point : lo;
            st.qmax = lo + 255;
            st.multipliers = ms.data();
            st.num_multipliers = c.n;
            const auto want = run(c, pw, st, true);
            PathGuard guard(isa.paths);
            ASSERT_EQ(run(c, pw, st, false), want) << isa.name << " " << describe(c) << " regime " << regime;
          }
        }
  }
}

// The AVX-512 VNNI block loop runs row tile -> panel pair when the panels of B fit in 16 KiB (small K x N: the
// 1x1 convolutions of small nets) and panel pair -> row tile otherwise; the int32 store is plain for whole panels and
// masked for a partial one. Rows around the 6 / 12-row tiles, columns around 16 / 32 / 48 / 64 / 96, K from 4 to 200
// (non-multiples of 4 included; K = 200 with N >= 64 takes the other loop order), all three output types, zero
// points and int8 activations as make_case draws them; int32 against the int64 formula, 8-bit against the reference.
TEST(GemmS8, WideNSmallKBothLoopOrders) {
  Rng rng(31);
  Stats stats;
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    for (int64_t m : {6, 12, 13, 25})
      for (int64_t n : {16, 33, 48, 64, 95, 96})
        for (int64_t k : {4, 7, 24, 64, 128, 200}) {
          check_case(isa, rng, make_case(rng, m, n, k), stats);
          if (HasFatalFailure()) return;
        }
  }
  // As in EveryPathMatchesReferenceAroundTiles: a test where everything clamps tests nothing.
  EXPECT_GT(stats.inside * 10, stats.outputs * 3) << "only " << stats.inside << " of " << stats.outputs
                                                  << " outputs strictly inside (qmin, qmax)";
}

// The AMX path's own structure (gemm_s8_avx512vnni.cpp, "AMX"): K in whole 64-byte chunks plus a tail chunk of
// K_groups % 16 groups (K = 61 ... 288 around 64 and 128), A in place or packed (uint8 / int8, lda > K, a last tile of
// fewer rows; rows around 16 / 32 / 48), int32 stored straight into C for whole 16-row blocks without weight zero
// points, else through the output stage. int32 against the int64 formula (nothing written past N), 8-bit outputs
// against the reference.
TEST(GemmS8, AmxChunksTailsAndDirectStores) {
  if (!has_path(supported_paths(), Path::kAmx)) GTEST_SKIP() << "CPU (or OS) lacks AMX-INT8";
  const IsaPath amx = isa_paths().back();
  Rng rng(41);
  Stats stats;
  for (int64_t m : {15, 16, 17, 31, 32, 33, 48, 50})
    for (int64_t n : {16, 17, 32, 48, 49})
      for (int64_t k : {61, 64, 65, 100, 128, 129, 192, 255, 288}) {
        Case c = make_case(rng, m, n, k);
        if (rng.range(0, 1)) c.zw.clear();  // symmetric weights more often: the direct int32 store
        check_case(amx, rng, c, stats);
        if (HasFatalFailure()) return;
      }
  EXPECT_GT(stats.inside * 10, stats.outputs * 3) << "only " << stats.inside << " of " << stats.outputs
                                                  << " outputs strictly inside (qmin, qmax)";
}

// No path may saturate an intermediate (gemm_s8.h: exact int32). The classic trap is VPMADDUBSW, whose int16 sum of
// two u8 x s8 products saturates unless max(w0,0) + max(w1,0) <= 128 and min(w0,0) + min(w1,0) >= -128 for a in
// [0, 255]. Weight pairs at both sides of that edge, and the worst ones, against activations at 255 (the sums'
// extremes), 0 / 255 alternating, and random; uint8 and int8 activations (int8 -128 is 0 after the flip, 127 is 255).
// int32 against the int64 formula, 8-bit outputs against the reference. Every path.
TEST(GemmS8, PairSumsAtTheSaturationEdge) {
  const int8_t pairs[][2] = {{64, 64},   {65, 64},   {64, 65},   {127, 127}, {127, 1},    {1, 127},  {127, 2},
                             {-64, -64}, {-65, -64}, {-64, -65}, {-128, -128}, {-128, -1}, {-1, -128}, {-128, 0},
                             {127, -128}, {100, 28}, {100, 29},  {-100, -28}, {-100, -29}, {0, 0},    {-127, -127}};
  const int npairs = static_cast<int>(std::size(pairs));
  Rng rng(51);
  Stats stats;
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    for (int64_t k : {8, 64, 66, 130})
      for (int64_t n : {16, 21, 33})
        for (int fill = 0; fill < 3; ++fill) {
          Case c = make_case(rng, 9, n, k);
          c.zw.clear();
          c.za = c.a_type == Act8::kUInt8 ? 0 : -128;
          // Column j, pair q (k = 2q, 2q + 1): edge pair (j + q) mod npairs — every pair meets every column offset.
          for (int64_t j = 0; j < n; ++j)
            for (int64_t kk = 0; kk < k; ++kk)
              c.w[static_cast<size_t>(kk * n + j)] = pairs[(j + kk / 2 + fill) % npairs][kk % 2];
          const uint8_t hi = c.a_type == Act8::kUInt8 ? 255 : 127, lo = c.a_type == Act8::kUInt8 ? 0 : 0x80;
          for (int64_t i = 0; i < c.m; ++i)
            for (int64_t kk = 0; kk < c.lda; ++kk) {
              uint8_t& b = c.a_bytes[static_cast<size_t>(i * c.lda + kk)];
              if (i < 4) b = hi;                            // every sum at its extreme
              else if (i < 7) b = ((kk + i) % 2) ? hi : lo;  // one side of each pair
            }
          check_case(isa, rng, c, stats);
          if (HasFatalFailure()) return;
        }
  }
}

// prepare_gemm_s8: the constants built once give the same bytes as the per-call ones, on every path, for
// changing M / A / C (the executor's use), and a mismatched call is refused.
TEST(GemmS8, PreparedConstantsGiveTheSameResults) {
  Rng rng(22);
  for (int it = 0; it < 30; ++it) {
    const Case c = make_case(rng, rng.range(1, 40), rng.range(1, 70), rng.range(1, 100));
    const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
    const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
    OutputStageS8 st;
    st.type = it % 3 == 0 ? OutputType::kInt32 : (it % 3 == 1 ? OutputType::kUInt8 : OutputType::kInt8);
    const int32_t lo = st.type == OutputType::kInt8 ? -128 : 0;
    st.zero_point = lo + 128;
    st.qmin = lo;
    st.qmax = lo + 255;
    const auto ms = pick_multipliers(rng, c, exact_acc(c), lo, lo + 255, true);
    st.multipliers = ms.data();
    st.num_multipliers = c.n;
    const size_t elem = st.type == OutputType::kInt32 ? 4 : 1;
    const GemmS8Args proto = args_for(c, pw, nullptr, st);
    const auto prep = prepare_gemm_s8(proto);
    const auto want = run(c, pw, st, true);
    for (const auto& ps : test::path_sets()) {
      PathGuard guard(ps.paths);
      std::vector<uint8_t> got(want.size(), 0xCD);
      gemm_s8(args_for(c, pw, got.data(), st), *prep);
      ASSERT_EQ(got, want) << ps.name << " " << describe(c);
      // Rows in two blocks through gemm_s8_block (the executor's im2col blocks).
      std::vector<uint8_t> got2(want.size(), 0xCD);
      const int64_t split = c.m / 2;
      for (auto [m0, m1] : {std::pair<int64_t, int64_t>{0, split}, {split, c.m}}) {
        GemmS8Args gb = args_for(c, pw, nullptr, st);
        gb.m = m1 - m0;
        gb.a = c.a_bytes.data() + m0 * c.lda;
        gb.c = got2.data() + static_cast<size_t>(m0 * c.ldc) * elem;
        if (gb.m > 0) gemm_s8_block(gb, *prep, 0, gb.m, 0, c.n);
      }
      ASSERT_EQ(got2, want) << ps.name << " blocks " << describe(c);
    }
    std::vector<uint8_t> buf(want.size());
    GemmS8Args other = args_for(c, pw, buf.data(), st);
    other.a_zero_point = c.za == 0 ? 1 : 0;  // valid for both types, but not what was prepared
    EXPECT_THROW(gemm_s8(other, *prep), Error);
  }
}

// Large enough to be split over the thread pool (row blocks and column chunks); the blocks must tile C exactly.
TEST(GemmS8, ThreadedSplitMatchesReference) {
  Rng rng(7);
  const int saved = num_threads();
  set_num_threads(2);
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{200, 100, 300}, {7, 300, 200}, {97, 33, 129}}) {
    const Case c = make_case(rng, m, n, k);
    const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
    const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
    OutputStageS8 raw;
    raw.type = OutputType::kInt32;
    const auto want = run(c, pw, raw, true);
    for (const auto& ps : test::path_sets()) {
      PathGuard guard(ps.paths);
      ASSERT_EQ(run(c, pw, raw, false), want) << ps.name << " " << describe(c);
    }
  }
  set_num_threads(saved);
}

// gemm_s8_block: the hook a caller's own threading uses; blocks on panel boundaries reassemble the whole.
TEST(GemmS8, BlocksReassembleTheProduct) {
  Rng rng(8);
  const Case c = make_case(rng, 29, 50, 37);
  const std::vector<int32_t> zps(c.zw.begin(), c.zw.end());
  const auto pw = pack_weights_s8(c.w.data(), c.k, c.n, WeightLayout::kKN, zps);
  OutputStageS8 raw;
  raw.type = OutputType::kInt32;
  const auto want = run(c, pw, raw, true);
  std::vector<uint8_t> got(want.size(), 0xCD);
  const GemmS8Args g = args_for(c, pw, got.data(), raw);
  for (int64_t m0 : {0, 13})
    for (int64_t n0 : {0, 16, 48}) {
      const int64_t m1 = m0 == 0 ? 13 : c.m, n1 = n0 == 0 ? 16 : (n0 == 16 ? 48 : c.n);
      gemm_s8_block(g, m0, m1, n0, n1);
    }
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace perch::kernels
