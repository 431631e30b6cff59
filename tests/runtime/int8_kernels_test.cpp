// Small kernels of the int8 executor (src/runtime/int8_kernels.h).
// im2col_nhwc (the patch builder) against a direct formula, over random geometries: every channel count of the narrow-row path (kw * C <= 4 or 9) and wider ones (the generic
// path), strides, dilations, asymmetric padding, padded row strides (the bytes past K must be the pad value), and
// row ranges that start and end inside output rows and images.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../src/runtime/int8_kernels.h"
#include "kernels/kernel_test_util.h"
#include "perch/core/cpu.h"
#include "perch/quant/params.h"

namespace perch::runtime::int8 {
namespace {

TEST(Int8Im2Col, MatchesDirectFormulaOverRandomGeometries) {
  kernels::test::Rng rng(31);
  for (int it = 0; it < 400; ++it) {
    Im2Col g{};
    g.batch = rng.range(1, 3);
    g.channels = rng.range(0, 2) == 0 ? rng.range(1, 4) : (rng.range(0, 1) ? 3 : rng.range(5, 20));
    g.kh = rng.range(1, 4);
    g.kw = rng.range(0, 3) == 0 ? rng.range(1, 5) : 3;
    g.stride_h = rng.range(1, 2), g.stride_w = rng.range(1, 3);
    g.dil_h = rng.range(0, 4) == 0 ? 2 : 1, g.dil_w = rng.range(0, 4) == 0 ? 2 : 1;
    g.pad_top = rng.range(0, 2), g.pad_left = rng.range(0, 2);
    const int64_t pad_bottom = rng.range(0, 2), pad_right = rng.range(0, 2);
    g.in_h = rng.range(g.dil_h * (g.kh - 1) + 1, 12);
    g.in_w = rng.range(std::max<int64_t>(1, g.dil_w * (g.kw - 1) + 1 - g.pad_left - pad_right), 13);
    g.out_h = (g.in_h + g.pad_top + pad_bottom - g.dil_h * (g.kh - 1) - 1) / g.stride_h + 1;
    g.out_w = (g.in_w + g.pad_left + pad_right - g.dil_w * (g.kw - 1) - 1) / g.stride_w + 1;
    if (g.out_h <= 0 || g.out_w <= 0) continue;
    const int64_t K = g.kh * g.kw * g.channels, ldo = K + (rng.range(0, 1) ? (4 - K % 4) % 4 : rng.range(0, 5));
    std::vector<uint8_t> x(static_cast<size_t>(g.batch * g.in_h * g.in_w * g.channels));
    for (auto& v : x) v = static_cast<uint8_t>(rng.range(0, 255));
    const uint8_t pad = static_cast<uint8_t>(rng.range(0, 255));
    const int64_t rows = g.batch * g.out_h * g.out_w;
    const int64_t r0 = rng.range(0, rows - 1), r1 = rng.range(r0 + 1, rows);
    std::vector<uint8_t> got(static_cast<size_t>((r1 - r0) * ldo), 0xEE);
    im2col_nhwc(g, x.data(), pad, r0, r1, got.data(), ldo);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (g.out_h * g.out_w), oh = (r / g.out_w) % g.out_h, ow = r % g.out_w;
      for (int64_t col = 0; col < ldo; ++col) {
        uint8_t want = pad;
        if (col < K) {
          const int64_t i = col / (g.kw * g.channels), j = (col / g.channels) % g.kw, c = col % g.channels;
          const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h, iw = ow * g.stride_w - g.pad_left + j * g.dil_w;
          if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
            want = x[static_cast<size_t>(((n * g.in_h + ih) * g.in_w + iw) * g.channels + c)];
        }
        ASSERT_EQ(int{got[static_cast<size_t>((r - r0) * ldo + col)]}, int{want})
            << "it " << it << " C=" << g.channels << " k=" << g.kh << "x" << g.kw << " s=" << g.stride_h << "," << g.stride_w
            << " d=" << g.dil_h << "," << g.dil_w << " row " << r << " col " << col;
      }
    }
  }
}

// im2col_groups (kernel-row groups, for kw * C < 16 not a multiple of 4) against the same direct formula: byte
// j * C + c < kw * C of group i is the input tap or the pad value; the other bytes of a group are free (zero weights
// face them), but reading them must stay inside the input (x is sized exactly, so ASan would report a read past it).
TEST(Int8Im2Col, KernelRowGroupsMatchDirectFormulaOverRandomGeometries) {
  kernels::test::Rng rng(33);
  int checked = 0;
  for (int it = 0; it < 400; ++it) {
    Im2Col g{};
    g.batch = rng.range(1, 3);
    g.channels = rng.range(0, 1) ? rng.range(1, 3) : rng.range(5, 7);
    g.kw = rng.range(1, 5);
    if ((g.kw * g.channels) % 4 == 0 || g.kw * g.channels >= 16) continue;
    g.kh = rng.range(1, 5);
    g.stride_h = rng.range(1, 3), g.stride_w = rng.range(1, 3);
    g.dil_h = rng.range(0, 3) == 0 ? 2 : 1, g.dil_w = 1;
    g.pad_top = rng.range(0, 2), g.pad_left = rng.range(0, 2);
    const int64_t pad_bottom = rng.range(0, 2), pad_right = rng.range(0, 2);
    g.in_h = rng.range(std::max<int64_t>(1, g.dil_h * (g.kh - 1) + 1 - g.pad_top - pad_bottom), 12);
    g.in_w = rng.range(std::max<int64_t>(1, g.kw - g.pad_left - pad_right), 13);
    g.out_h = (g.in_h + g.pad_top + pad_bottom - g.dil_h * (g.kh - 1) - 1) / g.stride_h + 1;
    g.out_w = (g.in_w + g.pad_left + pad_right - (g.kw - 1) - 1) / g.stride_w + 1;
    if (g.out_h <= 0 || g.out_w <= 0) continue;
    const int64_t R = group_bytes(g), ldo = g.kh * R;
    ASSERT_EQ(R % 4, 0);
    ASSERT_GE(R, g.kw * g.channels);
    std::vector<uint8_t> x(static_cast<size_t>(g.batch * g.in_h * g.in_w * g.channels));
    for (auto& v : x) v = static_cast<uint8_t>(rng.range(0, 255));
    const uint8_t pad = static_cast<uint8_t>(rng.range(0, 255));
    const int64_t rows = g.batch * g.out_h * g.out_w;
    const int64_t r0 = rng.range(0, rows - 1), r1 = rng.range(r0 + 1, rows);
    std::vector<uint8_t> got(static_cast<size_t>((r1 - r0) * ldo), 0xEE);
    im2col_groups(g, x.data(), pad, r0, r1, got.data(), ldo);
    // The padded-copy builder must give the same bytes at every checked position.
    const PaddedImages p = padded_geometry(g);
    std::vector<uint8_t> padded(static_cast<size_t>(g.batch * p.bytes_per_image()));
    pad_images_nhwc(g, p, x.data(), pad, padded.data());
    std::vector<uint8_t> got_p(got.size(), 0xEE);
    im2col_groups_padded(g, p, padded.data(), r0, r1, got_p.data(), ldo);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (g.out_h * g.out_w), oh = (r / g.out_w) % g.out_h, ow = r % g.out_w;
      for (int64_t i = 0; i < g.kh; ++i)
        for (int64_t b = 0; b < g.kw * g.channels; ++b) {
          const int64_t j = b / g.channels, c = b % g.channels;
          const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h, iw = ow * g.stride_w - g.pad_left + j;
          const uint8_t want = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w
                                   ? x[static_cast<size_t>(((n * g.in_h + ih) * g.in_w + iw) * g.channels + c)]
                                   : pad;
          ASSERT_EQ(int{got_p[static_cast<size_t>((r - r0) * ldo + i * R + b)]}, int{want}) << "padded, it " << it;
          ASSERT_EQ(int{got[static_cast<size_t>((r - r0) * ldo + i * R + b)]}, int{want})
              << "it " << it << " C=" << g.channels << " k=" << g.kh << "x" << g.kw << " s=" << g.stride_h << ","
              << g.stride_w << " d=" << g.dil_h << " row " << r << " group " << i << " byte " << b;
        }
    }
    ++checked;
  }
  EXPECT_GT(checked, 150);
}

// conv_indirection_nhwc (the indirect GEMM's table): every entry against the direct formula — the address of the C
// input bytes under the tap, or the zero-point row for taps in the padding — over random geometries and row ranges.
TEST(Int8ConvIndirection, MatchesDirectFormulaOverRandomGeometries) {
  kernels::test::Rng rng(37);
  for (int it = 0; it < 300; ++it) {
    Im2Col g{};
    g.batch = rng.range(1, 3);
    g.channels = 4 * rng.range(1, 9);
    g.kh = rng.range(1, 5);
    g.kw = rng.range(0, 3) == 0 ? rng.range(1, 5) : 3;
    g.stride_h = rng.range(1, 2), g.stride_w = rng.range(1, 3);
    g.dil_h = rng.range(0, 4) == 0 ? 2 : 1, g.dil_w = rng.range(0, 4) == 0 ? 2 : 1;
    g.pad_top = rng.range(0, 2), g.pad_left = rng.range(0, 2);
    const int64_t pad_bottom = rng.range(0, 2), pad_right = rng.range(0, 2);
    g.in_h = rng.range(std::max<int64_t>(1, g.dil_h * (g.kh - 1) + 1 - g.pad_top - pad_bottom), 12);
    g.in_w = rng.range(std::max<int64_t>(1, g.dil_w * (g.kw - 1) + 1 - g.pad_left - pad_right), 13);
    g.out_h = (g.in_h + g.pad_top + pad_bottom - g.dil_h * (g.kh - 1) - 1) / g.stride_h + 1;
    g.out_w = (g.in_w + g.pad_left + pad_right - g.dil_w * (g.kw - 1) - 1) / g.stride_w + 1;
    if (g.out_h <= 0 || g.out_w <= 0) continue;
    const std::vector<uint8_t> x(static_cast<size_t>(g.batch * g.in_h * g.in_w * g.channels));
    const std::vector<uint8_t> pad_row(static_cast<size_t>(g.channels));
    const int64_t rows = g.batch * g.out_h * g.out_w, taps = g.kh * g.kw;
    const int64_t r0 = rng.range(0, rows - 1), r1 = rng.range(r0 + 1, rows);
    std::vector<const uint8_t*> got(static_cast<size_t>((r1 - r0) * taps), nullptr);
    conv_indirection_nhwc(g, x.data(), pad_row.data(), r0, r1, got.data());
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / (g.out_h * g.out_w), oh = (r / g.out_w) % g.out_h, ow = r % g.out_w;
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t i = t / g.kw, j = t % g.kw;
        const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h, iw = ow * g.stride_w - g.pad_left + j * g.dil_w;
        const uint8_t* want = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w
                                  ? x.data() + ((n * g.in_h + ih) * g.in_w + iw) * g.channels
                                  : pad_row.data();
        ASSERT_EQ(got[static_cast<size_t>((r - r0) * taps + t)], want)
            << "it " << it << " C=" << g.channels << " k=" << g.kh << "x" << g.kw << " s=" << g.stride_h << ","
            << g.stride_w << " d=" << g.dil_h << "," << g.dil_w << " row " << r << " tap " << t;
      }
    }
  }
}

// lut1 (256-entry table): every path (VBMI register tables when the CPU has them) against the scalar twin, on lengths
// around the 64-byte step, random tables and inputs covering all 256 indices, with a guard byte past the end.
TEST(Int8Lut1, EveryPathMatchesTheScalarTwin) {
  kernels::test::Rng rng(256);
  for (int64_t n : {0, 1, 63, 64, 65, 127, 256, 1000, 4099}) {
    std::vector<uint8_t> table(256), x(static_cast<size_t>(n));
    for (auto& v : table) v = static_cast<uint8_t>(rng.range(0, 255));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<uint8_t>(i < 256 ? i : rng.range(0, 255));
    std::vector<uint8_t> want(static_cast<size_t>(n) + 1, 0xAB);
    lut1_reference(x.data(), n, table.data(), want.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(want[static_cast<size_t>(i)], table[x[static_cast<size_t>(i)]]);
    for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), supported_paths()}) {
      set_paths_for_testing(paths);
      std::vector<uint8_t> got(static_cast<size_t>(n) + 1, 0xAB);  // one guard byte past n
      lut1(x.data(), n, table.data(), got.data());
      set_paths_for_testing(0);
      ASSERT_EQ(got, want) << "n " << n << " paths " << paths_string(paths);
    }
  }
}

// Binary8 (Add/Sub/Mul by the float formula): against a table built independently from quant::dequantize_value /
// quantize_value (the simulation's scalar maps) for random parameters, both activation types, clamps; the check
// must accept those tables and reject a table with one entry changed; every path (AVX2 alone as well) must equal
// the scalar twin on lengths around the 8- and 16-element vectors (tails). The same for the reciprocal form
// (f * (1 / s_y)), which must equal the table wherever the check accepts it.
TEST(Int8Binary8, FormulaMatchesIndependentTableOnEveryPath) {
  kernels::test::Rng rng(32);
  int accepted = 0, reciprocal_accepted = 0;
  for (int it = 0; it < 24; ++it) {
    Binary8 f;
    f.op = static_cast<Binary8::Op>(it % 3);
    const bool sgn = rng.range(0, 1) == 1;
    f.a_signed = f.b_signed = sgn;
    const int32_t lo = sgn ? -128 : 0;
    f.za = lo + static_cast<int32_t>(rng.range(0, 255));
    f.zb = lo + static_cast<int32_t>(rng.range(0, 255));
    f.zy = lo + static_cast<int32_t>(rng.range(0, 255));
    f.qmin = rng.range(0, 2) == 0 ? f.zy : lo;  // a fused Relu clamps at the zero point
    f.qmax = lo + 255;
    f.sa = static_cast<float>(0.001 + 0.1 * static_cast<double>(rng.range(1, 1000)) / 1000.0);
    f.sb = static_cast<float>(0.001 + 0.1 * static_cast<double>(rng.range(1, 1000)) / 1000.0);
    f.sy = static_cast<float>(0.002 + 0.2 * static_cast<double>(rng.range(1, 1000)) / 1000.0);
    std::vector<uint8_t> table(65536);
    for (int i = 0; i < 65536; ++i) {
      const int32_t qa = sgn ? static_cast<int8_t>(i >> 8) : (i >> 8), qb = sgn ? static_cast<int8_t>(i & 255) : (i & 255);
      const float fa = quant::dequantize_value(qa, f.sa, f.za), fb = quant::dequantize_value(qb, f.sb, f.zb);
      const float x = f.op == Binary8::Op::kAdd ? fa + fb : f.op == Binary8::Op::kSub ? fa - fb : fa * fb;
      table[static_cast<size_t>(i)] = static_cast<uint8_t>(quant::quantize_value(x, f.sy, f.zy, f.qmin, f.qmax));
    }
    ASSERT_TRUE(binary8_matches(f, table.data())) << "it " << it;
    ++accepted;
    // The reciprocal form (f * (1 / s_y)): accepted only where it, too, gives the table everywhere; then equal to it.
    Binary8 fr = f;
    fr.reciprocal = true, fr.inv_sy = static_cast<float>(1.0 / static_cast<double>(f.sy));
    if (binary8_matches(fr, table.data())) {
      ++reciprocal_accepted;
      std::vector<uint8_t> a(65536), b(65536), y(65536);
      for (int i = 0; i < 65536; ++i) a[static_cast<size_t>(i)] = static_cast<uint8_t>(i >> 8), b[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
      binary8(fr, a.data(), b.data(), 65536, y.data());
      ASSERT_EQ(y, table) << "it " << it;
    }
    const size_t flip = static_cast<size_t>(rng.range(0, 65535));
    table[flip] ^= 1;
    EXPECT_FALSE(binary8_matches(f, table.data())) << "it " << it;
    EXPECT_FALSE(binary8_matches(fr, table.data())) << "it " << it;
    table[flip] ^= 1;
    for (const Binary8& g : {f, fr})
      for (int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 100}) {
        std::vector<uint8_t> a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), want(static_cast<size_t>(n) + 1, 0xAB);
        for (auto& v : a) v = static_cast<uint8_t>(rng.range(0, 255));
        for (auto& v : b) v = static_cast<uint8_t>(rng.range(0, 255));
        binary8_reference(g, a.data(), b.data(), n, want.data());
        const uint32_t avx2_only = supported_paths() & static_cast<uint32_t>(Path::kAvx2);
        for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), avx2_only, supported_paths()}) {
          if (paths == 0) continue;  // no AVX2 on this CPU
          set_paths_for_testing(paths);
          std::vector<uint8_t> got(static_cast<size_t>(n) + 1, 0xAB);  // one guard byte past n
          binary8(g, a.data(), b.data(), n, got.data());
          set_paths_for_testing(0);
          ASSERT_EQ(got, want) << "it " << it << " n " << n << " paths " << paths_string(paths)
                               << (g.reciprocal ? " (reciprocal)" : "");
        }
      }
  }
  EXPECT_EQ(accepted, 24);
  std::printf("reciprocal form exact on %d of 24 random parameter sets\n", reciprocal_accepted);
}

}  // namespace
}  // namespace perch::runtime::int8
