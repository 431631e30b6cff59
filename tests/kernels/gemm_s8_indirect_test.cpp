// gemm_s8_indirect (the convolution GEMM reading A through a table of row pointers, no im2col): on random NHWC
// convolutions, against
//   - an independent int64 convolution (raw int32 output, exact),
//   - gemm_s8_indirect_reference (the twin) and gemm_s8 / gemm_s8_reference on the im2col matrix built here by
//     plain loops (every output type),
// on every path (PERCH_PATHS sets), bit for bit: integer results have no rounding freedom.
#include "perch/kernels/gemm_s8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernel_test_util.h"
#include "perch/core/cpu.h"
#include "perch/core/error.h"

namespace perch::kernels {
namespace {

using test::PathGuard;
using test::Rng;

struct PathCase {
  const char* name;
  uint32_t paths;
  Path needs;
};
// The reference alone, each SIMD path alone (with the reference it falls back to).
std::vector<PathCase> path_cases() {
  return {{"reference", static_cast<uint32_t>(Path::kReference), Path::kReference},
          {"avx2", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx2), Path::kAvx2},
          {"avx512vnni", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx512Vnni),
           Path::kAvx512Vnni},
          // int8 activations (gathered rows) on the AMX tiles; uint8 ones keep the VNNI indirect kernel
          {"amx", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx512Vnni) | static_cast<uint32_t>(Path::kAmx),
           Path::kAmx}};
}

struct Conv {
  int64_t batch, in_h, in_w, c, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, n;
  int64_t oh() const { return (in_h + pt + pb - dh * (kh - 1) - 1) / sh + 1; }
  int64_t ow() const { return (in_w + pl + pr - dw * (kw - 1) - 1) / sw + 1; }
  int64_t m() const { return batch * oh() * ow(); }
  int64_t k() const { return kh * kw * c; }
  Act8 a_type = Act8::kUInt8;
  int32_t za = 0;
  std::vector<uint8_t> x;       // NHWC raw bytes
  std::vector<int8_t> w;        // [n][kh][kw][c] (kNK with k = (i * kw + j) * c + ci)
  bool u8_weights = false;      // then w holds the uint8 bytes
  std::vector<int32_t> zw;      // empty, 1 or n (in the weights' type range)
  std::vector<int32_t> bias;    // empty or n
};

std::string describe(const Conv& v) {
  return "b=" + std::to_string(v.batch) + " in=" + std::to_string(v.in_h) + "x" + std::to_string(v.in_w) +
         " C=" + std::to_string(v.c) + " k=" + std::to_string(v.kh) + "x" + std::to_string(v.kw) + " s=" +
         std::to_string(v.sh) + "," + std::to_string(v.sw) + " d=" + std::to_string(v.dh) + "," + std::to_string(v.dw) +
         " pads=" + std::to_string(v.pt) + "," + std::to_string(v.pl) + "," + std::to_string(v.pb) + "," +
         std::to_string(v.pr) + " N=" + std::to_string(v.n) + " M=" + std::to_string(v.m()) +
         (v.a_type == Act8::kUInt8 ? " u8" : " s8") + " za=" + std::to_string(v.za) +
         (v.u8_weights ? " u8w" : " s8w") + " zw=" + std::to_string(v.zw.size()) + " bias=" + std::to_string(!v.bias.empty());
}

int32_t act(const Conv& v, uint8_t b) { return v.a_type == Act8::kUInt8 ? int32_t{b} : int32_t{static_cast<int8_t>(b)}; }
int32_t wval(const Conv& v, size_t idx) {
  return v.u8_weights ? int32_t{static_cast<uint8_t>(v.w[idx])} : int32_t{v.w[idx]};
}

// The input byte under tap (i, j) of output pixel r, or nullptr in the padding.
const uint8_t* tap_ptr(const Conv& v, int64_t r, int64_t i, int64_t j) {
  const int64_t b = r / (v.oh() * v.ow()), oy = (r / v.ow()) % v.oh(), ox = r % v.ow();
  const int64_t y = oy * v.sh - v.pt + i * v.dh, x = ox * v.sw - v.pl + j * v.dw;
  if (y < 0 || y >= v.in_h || x < 0 || x >= v.in_w) return nullptr;
  return v.x.data() + ((b * v.in_h + y) * v.in_w + x) * v.c;
}

// Exact convolution in int64, from the definition (padding contributes (za - za) * w = 0).
std::vector<int64_t> exact(const Conv& v) {
  std::vector<int64_t> r(static_cast<size_t>(v.m() * v.n));
  for (int64_t p = 0; p < v.m(); ++p)
    for (int64_t o = 0; o < v.n; ++o) {
      const int64_t zw = v.zw.empty() ? 0 : v.zw[v.zw.size() == 1 ? 0 : static_cast<size_t>(o)];
      int64_t s = v.bias.empty() ? 0 : v.bias[static_cast<size_t>(o)];
      for (int64_t i = 0; i < v.kh; ++i)
        for (int64_t j = 0; j < v.kw; ++j) {
          const uint8_t* src = tap_ptr(v, p, i, j);
          if (!src) continue;
          for (int64_t ci = 0; ci < v.c; ++ci)
            s += int64_t{act(v, src[ci]) - v.za} * (wval(v, static_cast<size_t>(((o * v.kh + i) * v.kw + j) * v.c + ci)) - zw);
        }
      r[static_cast<size_t>(p * v.n + o)] = s;
    }
  return r;
}

Conv make_conv(Rng& rng) {
  Conv v{};
  static const int64_t cs[] = {4, 8, 32, 36, 64};
  static const int64_t ns[] = {1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64};
  v.c = cs[rng.range(0, 4)];
  v.n = ns[rng.range(0, 10)];
  switch (rng.range(0, 3)) {
    case 0: v.kh = v.kw = 1; break;
    case 1: v.kh = 5, v.kw = 5; break;
    case 2: v.kh = 1, v.kw = 3; break;
    default: v.kh = v.kw = 3; break;
  }
  v.sh = rng.range(1, 2), v.sw = rng.range(1, 2);
  v.dh = rng.range(0, 3) == 0 ? 2 : 1, v.dw = rng.range(0, 3) == 0 ? 2 : 1;
  const int64_t pmax = v.kh == 1 ? 1 : 2;
  v.pt = rng.range(0, pmax), v.pl = rng.range(0, pmax), v.pb = rng.range(0, pmax), v.pr = rng.range(0, pmax);
  if (v.kh == 1 && v.kw == 1 && v.sh == 1 && v.sw == 1 && v.pt + v.pl + v.pb + v.pr == 0) v.sh = 2, v.pt = 1;  // strided/padded 1x1
  v.batch = rng.range(1, 2);
  // Sizes so the output pixel count M straddles the 12-row tiles (a few to ~60 rows).
  do {
    v.in_h = rng.range(std::max<int64_t>(1, v.dh * (v.kh - 1) + 1 - v.pt - v.pb), 9);
    v.in_w = rng.range(std::max<int64_t>(1, v.dw * (v.kw - 1) + 1 - v.pl - v.pr), 9);
  } while (v.oh() < 1 || v.ow() < 1);
  v.a_type = rng.range(0, 3) == 0 ? Act8::kInt8 : Act8::kUInt8;
  static const int32_t zu[] = {0, 255, 128, 3}, zs[] = {-128, 127, 0, -5};
  v.za = v.a_type == Act8::kUInt8 ? zu[rng.range(0, 3)] : zs[rng.range(0, 3)];
  v.x.resize(static_cast<size_t>(v.batch * v.in_h * v.in_w * v.c));
  for (auto& b : v.x) {
    const int64_t r = rng.range(0, 9);
    b = static_cast<uint8_t>(r == 0 ? 0 : (r == 1 ? 255 : rng.range(0, 255)));
  }
  v.u8_weights = rng.range(0, 4) == 0;
  v.w.resize(static_cast<size_t>(v.n * v.k()));
  for (auto& x : v.w) x = static_cast<int8_t>(rng.range(0, 6) == 0 ? (rng.range(0, 1) ? 127 : -128) : rng.range(-128, 127));
  const int32_t zlo = v.u8_weights ? 0 : -128, zhi = zlo + 255;
  switch (rng.range(0, 3)) {
    case 0: v.zw = {static_cast<int32_t>(rng.range(zlo, zhi))}; break;
    case 1:
      v.zw.resize(static_cast<size_t>(v.n));
      for (auto& z : v.zw) z = static_cast<int32_t>(rng.range(zlo, zhi));
      break;
    default:
      if (v.u8_weights) v.zw = {128};  // symmetric after the shift
      break;
  }
  if (rng.range(0, 2)) {
    v.bias.resize(static_cast<size_t>(v.n));
    for (auto& b : v.bias) b = static_cast<int32_t>(rng.range(-100000, 100000));
  }
  return v;
}

PackedWeightsS8 pack(const Conv& v) {
  if (v.u8_weights)
    return pack_weights_u8(reinterpret_cast<const uint8_t*>(v.w.data()), v.k(), v.n, WeightLayout::kNK, v.zw);
  return pack_weights_s8(v.w.data(), v.k(), v.n, WeightLayout::kNK, v.zw);
}

// The table (plain loops): row r, tap t = i * kw + j -> input bytes or the zero-point row.
std::vector<const uint8_t*> table(const Conv& v, const std::vector<uint8_t>& zrow) {
  std::vector<const uint8_t*> t;
  for (int64_t r = 0; r < v.m(); ++r)
    for (int64_t i = 0; i < v.kh; ++i)
      for (int64_t j = 0; j < v.kw; ++j) {
        const uint8_t* p = tap_ptr(v, r, i, j);
        t.push_back(p ? p : zrow.data());
      }
  return t;
}

// The im2col matrix (plain loops), M x lda, padding taps and bytes [K, lda) hold the zero point's byte.
std::vector<uint8_t> im2col(const Conv& v, int64_t lda) {
  std::vector<uint8_t> a(static_cast<size_t>(v.m() * lda), static_cast<uint8_t>(v.za));
  for (int64_t r = 0; r < v.m(); ++r)
    for (int64_t i = 0; i < v.kh; ++i)
      for (int64_t j = 0; j < v.kw; ++j)
        if (const uint8_t* p = tap_ptr(v, r, i, j))
          std::copy(p, p + v.c, a.begin() + r * lda + (i * v.kw + j) * v.c);
  return a;
}

std::vector<quant::FixedPointMultiplier> multipliers(Rng& rng, const Conv& v, const std::vector<int64_t>& acc,
                                                     int32_t qmin, int32_t qmax) {
  std::vector<quant::FixedPointMultiplier> ms;
  for (int64_t o = 0; o < v.n; ++o) {
    int64_t hi = 1;
    for (int64_t p = 0; p < v.m(); ++p) hi = std::max<int64_t>(hi, std::llabs(acc[static_cast<size_t>(p * v.n + o)]));
    ms.push_back(quant::quantize_multiplier((qmax - qmin) / (2.0 * static_cast<double>(hi)) * (0.6 + 0.8 * rng.uniform(0, 1))));
  }
  return ms;
}

TEST(GemmS8Indirect, MatchesConvolutionAndIm2colGemmOnEveryPath) {
  Rng rng(20261127);
  int inside = 0, total8 = 0;
  for (int it = 0; it < 70; ++it) {
    Conv v = make_conv(rng);
    if (it == 0) v.za = 0, v.a_type = Act8::kUInt8;     // both uint8 extremes appear for sure
    if (it == 1) v.za = 255, v.a_type = Act8::kUInt8;
    SCOPED_TRACE(describe(v));
    const PackedWeightsS8 pw = pack(v);
    const std::vector<int64_t> ex = exact(v);
    const std::vector<uint8_t> zrow(static_cast<size_t>(v.c), static_cast<uint8_t>(v.za));
    const std::vector<const uint8_t*> tab = table(v, zrow);
    const IndirectRowsS8 ind{tab.data(), v.kh * v.kw, v.c};
    const int64_t lda = v.k() + (rng.range(0, 1) ? 4 : 0);
    const std::vector<uint8_t> a = im2col(v, lda);
    const int64_t ldc = v.n + (rng.range(0, 2) == 0 ? 3 : 0);
    const int otype = static_cast<int>(rng.range(0, 2));  // int32, uint8, int8
    OutputStageS8 st;
    std::vector<quant::FixedPointMultiplier> ms;
    if (otype == 0) {
      st.type = OutputType::kInt32;
    } else {
      st.type = otype == 1 ? OutputType::kUInt8 : OutputType::kInt8;
      st.qmin = otype == 1 ? 0 : -128, st.qmax = st.qmin + 255;
      st.zero_point = otype == 1 ? 128 : 0;
      if (rng.range(0, 3) == 0) st.qmin = st.zero_point;  // fused ReLU
      ms = multipliers(rng, v, ex, st.qmin, st.qmax);
      st.multipliers = ms.data();
      st.num_multipliers = v.n;
    }
    const size_t esz = otype == 0 ? 4 : 1;
    GemmS8Args g;
    g.m = v.m();
    g.a = a.data();
    g.lda = lda;
    g.a_type = v.a_type;
    g.a_zero_point = v.za;
    g.w = &pw;
    g.bias = v.bias.empty() ? nullptr : v.bias.data();
    g.out = st;
    g.ldc = ldc;
    auto out = [&] { return std::vector<uint8_t>(static_cast<size_t>(v.m() * ldc) * esz, 0xCD); };
    // The im2col + GEMM reference result.
    std::vector<uint8_t> want = out();
    g.c = want.data();
    gemm_s8_reference(g);
    if (otype == 0) {
      for (int64_t p = 0; p < v.m(); ++p)
        for (int64_t o = 0; o < v.n; ++o) {
          int32_t got;
          std::memcpy(&got, want.data() + (p * ldc + o) * 4, 4);
          ASSERT_EQ(got, ex[static_cast<size_t>(p * v.n + o)]) << "pixel " << p << " channel " << o;
        }
    } else {
      for (int64_t p = 0; p < v.m(); ++p)
        for (int64_t o = 0; o < v.n; ++o) {
          const uint8_t b = want[static_cast<size_t>(p * ldc + o)];
          const int32_t q = otype == 1 ? int32_t{b} : int32_t{static_cast<int8_t>(b)};
          inside += q > st.qmin && q < st.qmax;
          ++total8;
        }
    }
    for (const PathCase& pc : path_cases()) {
      if (!has_path(supported_paths(), pc.needs)) continue;
      SCOPED_TRACE(pc.name);
      PathGuard guard(pc.paths);
      std::vector<uint8_t> got = out();
      GemmS8Args gi = g;
      gi.a = nullptr;  // not read
      gi.c = got.data();
      if (std::string(pc.name) == "reference")
        gemm_s8_indirect_reference(gi, ind);
      else
        gemm_s8_indirect(gi, ind);
      ASSERT_EQ(got, want);
      // The same path's im2col GEMM (what the executor ran before).
      std::vector<uint8_t> gem = out();
      GemmS8Args gg = g;
      gg.c = gem.data();
      gemm_s8(gg);
      ASSERT_EQ(gem, want);
      // Prepared constants, a row range (not tile aligned) x a panel-aligned column range: only that part written.
      const auto prep = prepare_gemm_s8(gi);
      std::vector<uint8_t> part = out();
      gi.c = part.data();
      const int64_t m0 = rng.range(0, v.m() - 1), m1 = rng.range(m0 + 1, v.m());
      const int64_t n0 = 16 * rng.range(0, (v.n - 1) / 16), n1 = rng.range(n0 + 1, v.n);
      gemm_s8_indirect_block(gi, ind, *prep, m0, m1, n0, n1);
      for (int64_t p = 0; p < v.m(); ++p)
        for (int64_t o = 0; o < v.n; ++o) {
          const bool in = p >= m0 && p < m1 && o >= n0 && o < n1;
          for (size_t b = 0; b < esz; ++b) {
            const size_t at = static_cast<size_t>(p * ldc + o) * esz + b;
            ASSERT_EQ(part[at], in ? want[at] : 0xCD) << "pixel " << p << " channel " << o << " rows [" << m0 << ", "
                                                      << m1 << ") cols [" << n0 << ", " << n1 << ")";
          }
        }
    }
  }
  // The multipliers keep most 8-bit outputs off the clamp bounds (otherwise the comparison says little).
  ASSERT_GT(total8, 0);
  EXPECT_GT(inside, total8 / 2) << inside << " of " << total8;
}

TEST(GemmS8Indirect, ValidateRejectsBadTables) {
  std::vector<int8_t> w(36 * 16, 1);
  const auto pw = pack_weights_s8(w.data(), 36, 16, WeightLayout::kKN);
  std::vector<uint8_t> x(12), c(16);
  const uint8_t* rows[9] = {x.data(), x.data(), x.data(), x.data(), x.data(), x.data(), x.data(), x.data(), x.data()};
  GemmS8Args g;
  g.m = 1;
  g.w = &pw;
  g.c = c.data();
  g.ldc = 16;
  g.out.type = OutputType::kInt32;
  EXPECT_NO_THROW(validate_indirect(g, IndirectRowsS8{rows, 9, 4}));
  EXPECT_NO_THROW(validate_indirect(g, IndirectRowsS8{rows, 3, 12}));
  EXPECT_THROW(validate_indirect(g, IndirectRowsS8{rows, 6, 6}), Error);   // C not a multiple of 4
  EXPECT_THROW(validate_indirect(g, IndirectRowsS8{rows, 8, 4}), Error);   // 8 x 4 != K
  EXPECT_THROW(validate_indirect(g, IndirectRowsS8{nullptr, 9, 4}), Error);
  EXPECT_THROW(gemm_s8_indirect_reference(g, IndirectRowsS8{rows, 8, 4}), Error);
}

}  // namespace
}  // namespace perch::kernels
