// conv_nd_f32 (3-D: a sum of conv2d_f32 calls over the kernel's depth) and conv_nd_f32_reference against a
// double-precision 3-D loop written here from the formula in conv_f32.h, over randomized shapes (groups, depthwise,
// strides, dilations, asymmetric pads, kernels deeper than the input's padding), on every path set; the reference at
// 1-D and 2-D against the same loop with unit dims. Tolerances: kernel_test_util.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "kernel_test_util.h"
#include "perch/kernels/conv_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

std::string describe(const ConvNdShape& s) {
  std::ostringstream os;
  os << "N" << s.batch << " C" << s.in_channels << " -> M" << s.out_channels << " G" << s.group;
  for (size_t j = 0; j < s.in.size(); ++j)
    os << " | in " << s.in[j] << " k" << s.kernel[j] << " s" << s.strides[j] << " d" << s.dilations[j] << " p"
       << s.pads_begin[j] << "/" << s.pads_end[j];
  return os.str();
}

int64_t extent(const ConvNdShape& s, size_t j) {
  const int64_t span = s.in[j] + s.pads_begin[j] + s.pads_end[j] - (s.dilations[j] * (s.kernel[j] - 1) + 1);
  return span < 0 ? 0 : span / s.strides[j] + 1;
}

// Exact 3-D convolution (spatial dims D, H, W; shorter shapes padded with leading unit dims by the caller).
void exact_conv3d(const ConvNdShape& s, const std::vector<float>& x, const std::vector<float>& w, const float* bias,
                  std::vector<double>& y, std::vector<double>& S) {
  const int64_t D = s.in[0], H = s.in[1], W = s.in[2], KD = s.kernel[0], KH = s.kernel[1], KW = s.kernel[2];
  const int64_t OD = extent(s, 0), OH = extent(s, 1), OW = extent(s, 2);
  const int64_t Cg = s.in_channels / s.group, Mg = s.out_channels / s.group;
  y.assign(static_cast<size_t>(s.batch * s.out_channels * OD * OH * OW), 0.0);
  S = y;
  size_t i = 0;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t m = 0; m < s.out_channels; ++m)
      for (int64_t od = 0; od < OD; ++od)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow, ++i) {
            double acc = bias ? bias[m] : 0.0, sum_abs = std::fabs(acc);
            for (int64_t c = 0; c < Cg; ++c)
              for (int64_t kd = 0; kd < KD; ++kd)
                for (int64_t kh = 0; kh < KH; ++kh)
                  for (int64_t kw = 0; kw < KW; ++kw) {
                    const int64_t id = od * s.strides[0] - s.pads_begin[0] + kd * s.dilations[0];
                    const int64_t ih = oh * s.strides[1] - s.pads_begin[1] + kh * s.dilations[1];
                    const int64_t iw = ow * s.strides[2] - s.pads_begin[2] + kw * s.dilations[2];
                    if (id < 0 || id >= D || ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                    const double t =
                        static_cast<double>(x[static_cast<size_t>((((n * s.in_channels + (m / Mg) * Cg + c) * D + id) * H + ih) * W + iw)]) *
                        w[static_cast<size_t>((((m * Cg + c) * KD + kd) * KH + kh) * KW + kw)];
                    acc += t;
                    sum_abs += std::fabs(t);
                  }
            y[i] = acc;
            S[i] = sum_abs;
          }
}

// Leading unit dims so a 1-D or 2-D shape reads as 3-D (same element order).
ConvNdShape as_3d(ConvNdShape s) {
  while (s.in.size() < 3) {
    s.in.insert(s.in.begin(), 1), s.kernel.insert(s.kernel.begin(), 1), s.strides.insert(s.strides.begin(), 1);
    s.dilations.insert(s.dilations.begin(), 1), s.pads_begin.insert(s.pads_begin.begin(), 0);
    s.pads_end.insert(s.pads_end.begin(), 0);
  }
  return s;
}

void check_conv_nd(const ConvNdShape& s, uint64_t seed) {
  SCOPED_TRACE(describe(s));
  const std::vector<int64_t> out = s.out();
  int64_t in_n = 1, k_n = 1, out_n = 1;
  for (size_t j = 0; j < s.in.size(); ++j) {
    ASSERT_EQ(out[j], extent(s, j));
    in_n *= s.in[j], k_n *= s.kernel[j], out_n *= out[j];
  }
  Rng rng(seed);
  const auto x = rng.vec(static_cast<size_t>(s.batch * s.in_channels * in_n));
  const auto w = rng.vec(static_cast<size_t>(s.out_channels * (s.in_channels / s.group) * k_n));
  const auto b = rng.vec(static_cast<size_t>(s.out_channels), -2.0f, 2.0f);
  const int64_t K = (s.in_channels / s.group) * k_n + 1;
  const size_t ny = static_cast<size_t>(s.batch * s.out_channels * out_n);
  for (const float* bias : {b.data(), static_cast<const float*>(nullptr)}) {
    SCOPED_TRACE(bias ? "with bias" : "no bias");
    std::vector<double> e, S;
    exact_conv3d(as_3d(s), x, w, bias, e, S);
    ASSERT_EQ(e.size(), ny);
    std::vector<float> ref(ny, std::numeric_limits<float>::quiet_NaN());
    conv_nd_f32_reference(s, x.data(), w.data(), bias, ref.data());
    for (size_t i = 0; i < ny; ++i)
      ASSERT_LE(std::fabs(ref[i] - e[i]), test::double_acc_bound(e[i], S[i], K)) << "reference at " << i;
    for (const auto& ps : test::path_sets()) {
      SCOPED_TRACE(ps.name);
      test::PathGuard guard(ps.paths);
      std::vector<float> y(ny, std::numeric_limits<float>::quiet_NaN());
      int64_t seen = 0;
      conv_nd_f32(s, x.data(), w.data(), bias, y.data(), [&](float*, int64_t count) { seen += count; });
      EXPECT_EQ(seen, static_cast<int64_t>(ny)) << "the epilogue sees every output once";
      for (size_t i = 0; i < ny; ++i)
        ASSERT_LE(std::fabs(y[i] - e[i]), test::gamma_n(K) * S[i]) << "conv_nd_f32 at " << i << ": " << y[i] << " vs " << e[i];
      if (ps.paths == static_cast<uint32_t>(Path::kReference)) {
        ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), ny * sizeof(float))) << "reference-only dispatch must be the twin";
      }
    }
  }
}

TEST(ConvNdF32, RandomizedThreeDimensionalShapes) {
  Rng rng(20261207);
  int ran = 0;
  for (int iter = 0; ran < 120; ++iter) {
    ASSERT_LT(iter, 10000);
    ConvNdShape s;
    const int kind = static_cast<int>(rng.range(0, 3));  // dense, grouped, depthwise, 1x1x1
    s.batch = rng.range(1, 3);
    s.group = kind == 0 || kind == 3 ? 1 : rng.range(2, 3);
    const int64_t cg = kind == 2 ? 1 : rng.range(1, 4), mg = kind == 2 ? rng.range(1, 2) : rng.range(1, 5);
    s.in_channels = s.group * cg, s.out_channels = s.group * mg;
    for (int j = 0; j < 3; ++j) {
      s.in.push_back(rng.range(1, 7));
      const bool unit = kind == 3;
      s.kernel.push_back(unit ? 1 : rng.range(1, 4));
      s.strides.push_back(unit ? 1 : rng.range(1, 3));
      s.dilations.push_back(unit ? 1 : rng.range(1, 2));
      s.pads_begin.push_back(unit ? 0 : rng.range(0, 3));
      s.pads_end.push_back(unit ? 0 : rng.range(0, 3));
    }
    bool empty = false;
    for (size_t j = 0; j < 3; ++j) empty = empty || extent(s, j) <= 0;
    if (empty) continue;
    check_conv_nd(s, rng.next());
    if (HasFatalFailure()) return;
    ++ran;
  }
}

TEST(ConvNdF32, OneAndTwoDimensionalShapesRunTheReference) {
  Rng rng(7);
  for (size_t r : {1u, 2u}) {
    ConvNdShape s;
    s.batch = 2, s.in_channels = 4, s.out_channels = 6, s.group = 2;
    for (size_t j = 0; j < r; ++j) {
      s.in.push_back(9), s.kernel.push_back(3), s.strides.push_back(2), s.dilations.push_back(1);
      s.pads_begin.push_back(1), s.pads_end.push_back(2);
    }
    check_conv_nd(s, rng.next());
  }
}

// The N-d patch matrix (AdaRound's second moments of 3-D convs): per group, W_g times the patches of that group's
// channels is the convolution (exact loop above); at 2-D it is the 2-D im2col's matrix, bit for bit.
TEST(ConvNdF32, PatchMatrixTimesWeightsIsTheConvolution) {
  Rng rng(99);
  for (int iter = 0; iter < 40; ++iter) {
    ConvNdShape s;
    s.batch = 1, s.group = rng.range(1, 2), s.in_channels = s.group * rng.range(1, 3), s.out_channels = s.group * rng.range(1, 3);
    for (int j = 0; j < 3; ++j) {
      s.in.push_back(rng.range(2, 6)), s.kernel.push_back(rng.range(1, 3)), s.strides.push_back(rng.range(1, 2));
      s.dilations.push_back(rng.range(1, 2)), s.pads_begin.push_back(rng.range(0, 2)), s.pads_end.push_back(rng.range(0, 2));
    }
    bool empty = false;
    for (size_t j = 0; j < 3; ++j) empty = empty || extent(s, j) <= 0;
    if (empty) continue;
    SCOPED_TRACE(describe(s));
    const std::vector<int64_t> out = s.out();
    const int64_t in_n = s.in[0] * s.in[1] * s.in[2], pos = out[0] * out[1] * out[2];
    const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group, k = cg * s.kernel[0] * s.kernel[1] * s.kernel[2];
    const auto x = rng.vec(static_cast<size_t>(s.in_channels * in_n));
    const auto w = rng.vec(static_cast<size_t>(s.out_channels * k));
    std::vector<double> e, S;
    exact_conv3d(s, x, w, nullptr, e, S);
    std::vector<float> col(static_cast<size_t>(k * pos));
    for (int64_t g = 0; g < s.group; ++g) {
      im2col_nd_f32(s, x.data() + g * cg * in_n, col.data());
      for (int64_t m = g * mg; m < (g + 1) * mg; ++m)
        for (int64_t p = 0; p < pos; ++p) {
          double acc = 0;
          for (int64_t i = 0; i < k; ++i) acc += static_cast<double>(w[static_cast<size_t>(m * k + i)]) * col[static_cast<size_t>(i * pos + p)];
          const size_t at = static_cast<size_t>(m * pos + p);
          ASSERT_LE(std::fabs(acc - e[at]), 4.0 * static_cast<double>(k) * std::ldexp(1.0, -53) * S[at]) << "m " << m << " position " << p;
        }
    }
  }
  Conv2dShape s2;
  s2.in_channels = 3, s2.in_h = 6, s2.in_w = 7, s2.out_channels = 2, s2.kernel_h = 3, s2.kernel_w = 2;
  s2.stride_h = 2, s2.dil_w = 2, s2.pad_top = 1, s2.pad_right = 2;
  ConvNdShape nd;
  nd.in_channels = 3, nd.out_channels = 2, nd.in = {6, 7}, nd.kernel = {3, 2}, nd.strides = {2, 1}, nd.dilations = {1, 2};
  nd.pads_begin = {1, 0}, nd.pads_end = {0, 2};
  const auto x = rng.vec(3 * 6 * 7);
  std::vector<float> a(static_cast<size_t>(3 * 6 * s2.out_h() * s2.out_w()), 1.0f), b(a.size(), 2.0f);
  im2col_f32(s2, x.data(), a.data());
  im2col_nd_f32(nd, x.data(), b.data());
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace perch::kernels
