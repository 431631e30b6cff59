// maxpool2d_f32 / avgpool2d_f32 against double loops written here: output sizes (floor and ceil_mode, with
// the "last window starts inside the input or the left padding" rule), asymmetric pads, dilations,
// count_include_pad. Max is exact; the average accumulates in double and rounds once (kernel_test_util.h).
// Max-pool backward has an AVX-512 twin for 2x2 stride-2 windows: checked on every path.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "kernel_test_util.h"
#include "perch/kernels/pool_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

std::string describe(const Pool2dShape& s) {
  std::ostringstream os;
  os << "N" << s.batch << " C" << s.channels << " " << s.in_h << "x" << s.in_w << " k" << s.kernel_h << "x" << s.kernel_w
     << " stride " << s.stride_h << "," << s.stride_w << " pads t" << s.pad_top << " l" << s.pad_left << " b" << s.pad_bottom
     << " r" << s.pad_right << " dil " << s.dil_h << "," << s.dil_w << (s.ceil_mode ? " ceil" : " floor")
     << (s.count_include_pad ? " include_pad" : "");
  return os.str();
}

// ONNX/PyTorch: floor or ceil of (in + pads - dil*(k-1) - 1)/stride, + 1; with ceil_mode a last window that
// would start at or beyond in + pad_begin (entirely in the end padding) is dropped.
int64_t pooled_extent(int64_t in, int64_t k, int64_t stride, int64_t pa, int64_t pb, int64_t dil, bool ceil_mode) {
  const double span = static_cast<double>(in + pa + pb - dil * (k - 1) - 1) / static_cast<double>(stride);
  int64_t out = static_cast<int64_t>(ceil_mode ? std::ceil(span) : std::floor(span)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pa) --out;
  return out;
}

struct PoolExact {
  std::vector<double> max, avg, abs_mean;
  std::vector<int64_t> taps;  // taps summed (inside the input)
  std::vector<int64_t> first_max_h, first_max_w;  // where the first maximum (window order) is; -1 if none
  bool every_window_sees_input = true;
};

PoolExact exact_pool(const Pool2dShape& s, const std::vector<float>& x) {
  const int64_t OH = pooled_extent(s.in_h, s.kernel_h, s.stride_h, s.pad_top, s.pad_bottom, s.dil_h, s.ceil_mode);
  const int64_t OW = pooled_extent(s.in_w, s.kernel_w, s.stride_w, s.pad_left, s.pad_right, s.dil_w, s.ceil_mode);
  PoolExact e;
  for (int64_t nc = 0; nc < s.batch * s.channels; ++nc)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        double mx = -INFINITY, sum = 0, abs_sum = 0;
        int64_t inside = 0, in_padded_extent = 0, at_h = -1, at_w = -1;
        for (int64_t kh = 0; kh < s.kernel_h; ++kh)
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h, iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
            if (ih >= -s.pad_top && ih < s.in_h + s.pad_bottom && iw >= -s.pad_left && iw < s.in_w + s.pad_right)
              ++in_padded_extent;
            if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
            const double v = x[static_cast<size_t>((nc * s.in_h + ih) * s.in_w + iw)];
            if (at_h < 0 || v > mx) at_h = ih, at_w = iw;
            mx = std::max(mx, v);
            sum += v;
            abs_sum += std::fabs(v);
            ++inside;
          }
        if (inside == 0) e.every_window_sees_input = false;
        const int64_t div = s.count_include_pad ? in_padded_extent : inside;
        e.max.push_back(mx);
        e.avg.push_back(div ? sum / static_cast<double>(div) : 0.0);
        e.abs_mean.push_back(div ? abs_sum / static_cast<double>(div) : 0.0);
        e.taps.push_back(inside);
        e.first_max_h.push_back(at_h);
        e.first_max_w.push_back(at_w);
      }
  return e;
}

void check_pool(const Pool2dShape& s, uint64_t seed) {
  SCOPED_TRACE(describe(s));
  ASSERT_EQ(s.out_h(), pooled_extent(s.in_h, s.kernel_h, s.stride_h, s.pad_top, s.pad_bottom, s.dil_h, s.ceil_mode));
  ASSERT_EQ(s.out_w(), pooled_extent(s.in_w, s.kernel_w, s.stride_w, s.pad_left, s.pad_right, s.dil_w, s.ceil_mode));
  Rng rng(seed);
  const auto x = rng.vec(static_cast<size_t>(s.batch * s.channels * s.in_h * s.in_w), -4.0f, 4.0f);
  const PoolExact e = exact_pool(s, x);
  const size_t ny = e.max.size();
  std::vector<float> ymax(ny, std::numeric_limits<float>::quiet_NaN()), yavg = ymax;
  maxpool2d_f32(s, x.data(), ymax.data());
  avgpool2d_f32(s, x.data(), yavg.data());
  for (size_t i = 0; i < ny; ++i) {
    ASSERT_EQ(ymax[i], static_cast<float>(e.max[i])) << "max at " << i;
    ASSERT_LE(std::fabs(yavg[i] - e.avg[i]), test::double_acc_bound(e.avg[i], e.abs_mean[i], e.taps[i] + 1))
        << "avg at " << i << ": " << yavg[i] << " vs " << e.avg[i];
  }
  // The N-d kernels on the same 2-D shape, with MaxPool's Indices in both storage orders.
  PoolNdShape nd;
  nd.batch = s.batch, nd.channels = s.channels, nd.in = {s.in_h, s.in_w}, nd.kernel = {s.kernel_h, s.kernel_w};
  nd.strides = {s.stride_h, s.stride_w}, nd.dilations = {s.dil_h, s.dil_w};
  nd.pads_begin = {s.pad_top, s.pad_left}, nd.pads_end = {s.pad_bottom, s.pad_right};
  nd.ceil_mode = s.ceil_mode, nd.count_include_pad = s.count_include_pad;
  ASSERT_EQ(nd.out(), (std::vector<int64_t>{s.out_h(), s.out_w()}));
  std::vector<float> nmax(ny, std::numeric_limits<float>::quiet_NaN()), navg = nmax;
  std::vector<int64_t> rows(ny, -2), cols(ny, -2);
  maxpool_nd_f32(nd, x.data(), nmax.data(), rows.data(), false);
  maxpool_nd_f32(nd, x.data(), nmax.data(), cols.data(), true);
  avgpool_nd_f32(nd, x.data(), navg.data());
  const int64_t plane_out = s.out_h() * s.out_w(), plane_in = s.in_h * s.in_w;
  for (size_t i = 0; i < ny; ++i) {
    ASSERT_EQ(nmax[i], static_cast<float>(e.max[i])) << "N-d max at " << i;
    ASSERT_LE(std::fabs(navg[i] - e.avg[i]), test::double_acc_bound(e.avg[i], e.abs_mean[i], e.taps[i] + 1))
        << "N-d avg at " << i;
    const int64_t base = static_cast<int64_t>(i) / plane_out * plane_in, h = e.first_max_h[i], w = e.first_max_w[i];
    ASSERT_EQ(rows[i], h < 0 ? -1 : base + h * s.in_w + w) << "row-major index at " << i;
    ASSERT_EQ(cols[i], h < 0 ? -1 : base + h + w * s.in_h) << "column-major index at " << i;
  }
}

Pool2dShape pool(int64_t h, int64_t w, int64_t k, int64_t stride) {
  Pool2dShape s;
  s.batch = 1, s.channels = 2, s.in_h = h, s.in_w = w, s.kernel_h = s.kernel_w = k, s.stride_h = s.stride_w = stride;
  return s;
}

TEST(PoolF32, OutputExtentsKnownValues) {
  // Hand-computed: 5 wide, k2 s2: floor 2, ceil 3 (last window [4,5) starts inside the input).
  EXPECT_EQ(pooled_extent(5, 2, 2, 0, 0, 1, false), 2);
  EXPECT_EQ(pooled_extent(5, 2, 2, 0, 0, 1, true), 3);
  // 32 wide, k3 s2 pad 1/1 (ResNet stem): span 31 -> floor 16, ceil 17 (last window starts at 32 < 33).
  EXPECT_EQ(pooled_extent(32, 3, 2, 1, 1, 1, false), 16);
  EXPECT_EQ(pooled_extent(32, 3, 2, 1, 1, 1, true), 17);
  EXPECT_EQ(pool(32, 32, 3, 2).out_h(), 15);
  // ceil would start a window at 6 = in + pad_begin (all end padding): dropped, 3 not 4.
  EXPECT_EQ(pooled_extent(6, 2, 2, 0, 1, 1, true), 3);
  EXPECT_EQ(pool(5, 5, 2, 2).out_h(), 2);
}

TEST(PoolF32, CeilModeAndCountIncludePad) {
  for (bool ceil_mode : {false, true})
    for (bool include : {false, true}) {
      Pool2dShape s = pool(5, 6, 3, 2);
      s.pad_top = 1, s.pad_left = 2, s.pad_bottom = 0, s.pad_right = 1;
      s.ceil_mode = ceil_mode, s.count_include_pad = include;
      check_pool(s, 1);
      Pool2dShape t = pool(7, 7, 2, 3);  // ceil adds a partial window that overhangs the input
      t.ceil_mode = ceil_mode, t.count_include_pad = include;
      check_pool(t, 2);
    }
}

TEST(PoolF32, AverageDivisorKnownValues) {
  // 2x2 input [1 2; 3 4], 2x2 window, stride 1, pad 1 on every side: the corner window sees only x[0,0].
  Pool2dShape s = pool(2, 2, 2, 1);
  s.channels = 1;
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
  const std::vector<float> x = {1, 2, 3, 4};
  std::vector<float> y(9);
  avgpool2d_f32(s, x.data(), y.data());
  EXPECT_EQ(y[0], 1.0f);          // excluded padding: 1 / 1
  EXPECT_EQ(y[4], 2.5f);          // centre: (1+2+3+4) / 4
  s.count_include_pad = true;
  avgpool2d_f32(s, x.data(), y.data());
  EXPECT_EQ(y[0], 0.25f);         // 1 / 4
  EXPECT_EQ(y[1], 0.75f);         // (1+2) / 4
  maxpool2d_f32(s, x.data(), y.data());
  EXPECT_EQ(y, (std::vector<float>{1, 2, 2, 3, 4, 4, 3, 4, 4}));
}

TEST(PoolF32, RandomizedShapes) {
  Rng rng(777);
  int ran = 0;
  for (int iter = 0; ran < 300; ++iter) {
    ASSERT_LT(iter, 20000);
    Pool2dShape s;
    s.batch = rng.range(1, 2), s.channels = rng.range(1, 3);
    s.in_h = rng.range(1, 10), s.in_w = rng.range(1, 10);
    s.kernel_h = rng.range(1, 4), s.kernel_w = rng.range(1, 4);
    s.stride_h = rng.range(1, 3), s.stride_w = rng.range(1, 3);
    s.dil_h = rng.range(1, 2), s.dil_w = rng.range(1, 2);
    // Pads smaller than the dilated kernel, as ONNX requires.
    const int64_t eh = s.dil_h * (s.kernel_h - 1) + 1, ew = s.dil_w * (s.kernel_w - 1) + 1;
    s.pad_top = rng.range(0, eh - 1), s.pad_bottom = rng.range(0, eh - 1);
    s.pad_left = rng.range(0, ew - 1), s.pad_right = rng.range(0, ew - 1);
    s.ceil_mode = rng.range(0, 1) == 1, s.count_include_pad = rng.range(0, 1) == 1;
    // Precondition of the kernels (the executor checks it): the dilated window fits in the padded input.
    // Outside it Pool2dShape::out_h() divides a negative span with truncation and reports 1, not 0.
    if (s.in_h + s.pad_top + s.pad_bottom < eh || s.in_w + s.pad_left + s.pad_right < ew) continue;
    std::vector<float> probe(static_cast<size_t>(s.batch * s.channels * s.in_h * s.in_w));
    if (!exact_pool(s, probe).every_window_sees_input) continue;  // all-padding windows: no defined value
    check_pool(s, rng.next());
    if (HasFatalFailure()) return;
    ++ran;
  }
}

// maxpool2d_backward_f32 (2x2 stride-2 fast path and the general loop) against a scatter written here: each
// window's gradient goes to its first maximum in row-major order (strictly greater replaces), added to 0.0f.
// Values come from a 5-value set so ties are frequent; odd extents leave unused rows/columns (must be 0).
TEST(PoolF32, MaxPoolBackwardRoutesToTheFirstMaximum) {
  Rng rng(4242);
  for (int iter = 0; iter < 200; ++iter) {
    Pool2dShape s;
    s.batch = rng.range(1, 2), s.channels = rng.range(1, 3);
    s.in_h = rng.range(2, 9), s.in_w = rng.range(2, 35);
    const bool two_by_two = iter % 2 == 0;
    s.kernel_h = two_by_two ? 2 : rng.range(1, 3), s.kernel_w = two_by_two ? 2 : rng.range(1, 3);
    s.stride_h = two_by_two ? 2 : rng.range(1, 2), s.stride_w = two_by_two ? 2 : rng.range(1, 2);
    if (!two_by_two) s.pad_top = rng.range(0, s.kernel_h - 1), s.pad_left = rng.range(0, s.kernel_w - 1);
    if (s.in_h + s.pad_top < s.kernel_h || s.in_w + s.pad_left < s.kernel_w) continue;
    SCOPED_TRACE(describe(s));
    const int64_t oh_n = s.out_h(), ow_n = s.out_w(), in_hw = s.in_h * s.in_w;
    std::vector<float> x(static_cast<size_t>(s.batch * s.channels * in_hw));
    for (float& v : x) v = static_cast<float>(rng.range(-2, 2));
    auto g = rng.vec(static_cast<size_t>(s.batch * s.channels * oh_n * ow_n), -1.0f, 1.0f);
    if (!g.empty()) g[0] = -0.0f;
    std::vector<float> want(x.size(), 0.0f), got(x.size(), std::numeric_limits<float>::quiet_NaN());
    for (int64_t nc = 0; nc < s.batch * s.channels; ++nc)
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          int64_t best = -1;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh)
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t ih = oh * s.stride_h - s.pad_top + kh, iw = ow * s.stride_w - s.pad_left + kw;
              if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
              const int64_t at = nc * in_hw + ih * s.in_w + iw;
              if (best < 0 || x[static_cast<size_t>(at)] > x[static_cast<size_t>(best)]) best = at;
            }
          if (best >= 0) want[static_cast<size_t>(best)] += g[static_cast<size_t>((nc * oh_n + oh) * ow_n + ow)];
        }
    for (const auto& ps : test::path_sets()) {
      test::PathGuard guard(ps.paths);
      std::fill(got.begin(), got.end(), std::numeric_limits<float>::quiet_NaN());
      maxpool2d_backward_f32(s, x.data(), g.data(), got.data());
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i])) << ps.name << ": dx at " << i;
    }
  }
}

// 3-D windows (the executor's MaxPool3d / AvgPool3d) against loops over (d, h, w) written here: max and its first
// index in both storage orders (half the shapes with tied values) exactly, the average within the double-accumulation bound.
TEST(PoolF32, RandomizedThreeDimensionalShapes) {
  Rng rng(3003);
  int ran = 0;
  for (int iter = 0; ran < 150; ++iter) {
    ASSERT_LT(iter, 20000);
    PoolNdShape s;
    s.batch = rng.range(1, 2), s.channels = rng.range(1, 3);
    for (int j = 0; j < 3; ++j) {
      s.in.push_back(rng.range(1, 7)), s.kernel.push_back(rng.range(1, 3)), s.strides.push_back(rng.range(1, 3));
      s.dilations.push_back(rng.range(1, 2)), s.pads_begin.push_back(rng.range(0, 1)), s.pads_end.push_back(rng.range(0, 1));
    }
    s.ceil_mode = rng.range(0, 1) == 1, s.count_include_pad = rng.range(0, 1) == 1;
    const int64_t D = s.in[0], H = s.in[1], W = s.in[2];
    std::vector<int64_t> out(3);
    bool ok = true;
    for (size_t j = 0; j < 3; ++j) {
      out[j] = pooled_extent(s.in[j], s.kernel[j], s.strides[j], s.pads_begin[j], s.pads_end[j], s.dilations[j], s.ceil_mode);
      ok = ok && out[j] > 0 && s.pads_begin[j] < s.kernel[j] && s.pads_end[j] < s.kernel[j];
    }
    if (!ok) continue;
    ASSERT_EQ(s.out(), out);
    auto x = rng.vec(static_cast<size_t>(s.batch * s.channels * D * H * W), -4.0f, 4.0f);
    if (ran % 2)  // ties: the first maximum in window order is the one indexed
      for (float& v : x) v = std::round(v / 2);
    const size_t ny = static_cast<size_t>(s.batch * s.channels * out[0] * out[1] * out[2]);
    std::vector<float> ymax(ny), yavg(ny);
    std::vector<int64_t> rows(ny), cols(ny);
    maxpool_nd_f32(s, x.data(), ymax.data(), rows.data(), false);
    maxpool_nd_f32(s, x.data(), ymax.data(), cols.data(), true);
    avgpool_nd_f32(s, x.data(), yavg.data());
    size_t i = 0;
    for (int64_t nc = 0; nc < s.batch * s.channels; ++nc)
      for (int64_t od = 0; od < out[0]; ++od)
        for (int64_t oh = 0; oh < out[1]; ++oh)
          for (int64_t ow = 0; ow < out[2]; ++ow, ++i) {
            double mx = -INFINITY, sum = 0, abs_sum = 0;
            int64_t inside = 0, padded = 0, at_d = -1, at_h = -1, at_w = -1;
            for (int64_t kd = 0; kd < s.kernel[0]; ++kd)
              for (int64_t kh = 0; kh < s.kernel[1]; ++kh)
                for (int64_t kw = 0; kw < s.kernel[2]; ++kw) {
                  const int64_t id = od * s.strides[0] - s.pads_begin[0] + kd * s.dilations[0];
                  const int64_t ih = oh * s.strides[1] - s.pads_begin[1] + kh * s.dilations[1];
                  const int64_t iw = ow * s.strides[2] - s.pads_begin[2] + kw * s.dilations[2];
                  if (id >= -s.pads_begin[0] && id < D + s.pads_end[0] && ih >= -s.pads_begin[1] && ih < H + s.pads_end[1] &&
                      iw >= -s.pads_begin[2] && iw < W + s.pads_end[2])
                    ++padded;
                  if (id < 0 || id >= D || ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                  const double v = x[static_cast<size_t>(((nc * D + id) * H + ih) * W + iw)];
                  if (at_d < 0 || v > mx) at_d = id, at_h = ih, at_w = iw;
                  mx = std::max(mx, v), sum += v, abs_sum += std::fabs(v), ++inside;
                }
            if (inside == 0) continue;  // all-padding window: no defined value
            const int64_t div = s.count_include_pad ? padded : inside;
            const double avg = sum / static_cast<double>(div);
            ASSERT_EQ(ymax[i], static_cast<float>(mx)) << "max at " << i;
            ASSERT_LE(std::fabs(yavg[i] - avg), test::double_acc_bound(avg, abs_sum / static_cast<double>(div), inside + 1))
                << "avg at " << i;
            ASSERT_EQ(rows[i], nc * D * H * W + (at_d * H + at_h) * W + at_w) << "row-major index at " << i;
            ASSERT_EQ(cols[i], nc * D * H * W + at_d + at_h * D + at_w * D * H) << "column-major index at " << i;
          }
    ++ran;
  }
}

}  // namespace
}  // namespace perch::kernels
