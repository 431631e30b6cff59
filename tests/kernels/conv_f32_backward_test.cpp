// Convolution gradients (conv2d_backward_data / _weight and their reference twins) against exact
// double-precision sums written here from the formulas in conv_f32.h, over randomized shapes that cover
// grouped, depthwise (multiplier 1 and 2), 1x1 direct, strided, dilated and padded convolutions, and
// batches around the weight gradient's chunk count (4). Tolerance: kernel_test_util.h's policy.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "kernel_test_util.h"
#include "perch/kernels/conv_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

struct Sums {
  std::vector<double> v, S;  // exact value and sum of |terms|
  std::vector<int64_t> terms;
};

// Visits every (n, m, c, oh, ow, ih, iw, kh, kw) tap of the convolution.
template <typename F>
void taps(const Conv2dShape& s, F&& f) {
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t m = 0; m < s.out_channels; ++m)
      for (int64_t c = 0; c < cg; ++c)
        for (int64_t oh = 0; oh < s.out_h(); ++oh)
          for (int64_t ow = 0; ow < s.out_w(); ++ow)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh)
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
                const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
                if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
                f(n, m, (m / mg) * cg + c, c, oh, ow, ih, iw, kh, kw);
              }
}

void check(const std::vector<float>& got, const Sums& e, const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = test::gamma_n(std::max<int64_t>(e.terms[i], 1) + 1) * e.S[i] + 1e-30;
    ASSERT_LE(std::fabs(got[i] - e.v[i]), bound) << what << " at " << i << ": got " << got[i] << ", exact " << e.v[i];
  }
}

TEST(ConvBackward, RandomShapesEveryPath) {
  Rng rng(2024);
  for (int iter = 0; iter < 60; ++iter) {
    Conv2dShape s;
    s.batch = rng.range(1, 9);
    const int kind = iter % 4;  // 0 dense, 1 grouped, 2 depthwise, 3 depthwise x2
    const int64_t groups = kind == 0 ? 1 : kind == 1 ? rng.range(2, 3) : rng.range(2, 6);
    s.group = groups;
    s.in_channels = kind >= 2 ? groups : groups * rng.range(1, 3);
    s.out_channels = kind == 3 ? 2 * groups : kind == 2 ? groups : groups * rng.range(1, 3);
    s.kernel_h = rng.range(1, 4), s.kernel_w = rng.range(1, 4);
    s.stride_h = rng.range(1, 3), s.stride_w = rng.range(1, 3);
    s.dil_h = rng.range(1, 2), s.dil_w = rng.range(1, 2);
    s.pad_top = rng.range(0, 2), s.pad_bottom = rng.range(0, 2), s.pad_left = rng.range(0, 2), s.pad_right = rng.range(0, 2);
    // Wider dense layers: the weight-gradient GEMM's N is the output channel count, so these cross the AVX-512
    // tiles' 32-column width (and its 8-row height through K = C*KH*KW).
    if (kind == 0 && iter % 8 == 4) s.in_channels = rng.range(5, 12), s.out_channels = rng.range(30, 70);
    if (iter % 10 == 0) s.kernel_h = s.kernel_w = 1, s.stride_h = s.stride_w = 1, s.pad_top = s.pad_bottom = s.pad_left = s.pad_right = 0;
    s.in_h = rng.range(s.dil_h * (s.kernel_h - 1) + 1, 11), s.in_w = rng.range(s.dil_w * (s.kernel_w - 1) + 1, 11);
    const int64_t cg = s.in_channels / s.group;
    const auto x = rng.vec(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w));
    const auto w = rng.vec(static_cast<size_t>(s.out_channels * cg * s.kernel_h * s.kernel_w));
    const auto dy = rng.vec(static_cast<size_t>(s.batch * s.out_channels * s.out_h() * s.out_w()));
    Sums ex{std::vector<double>(x.size()), std::vector<double>(x.size()), std::vector<int64_t>(x.size())};
    Sums ew{std::vector<double>(w.size()), std::vector<double>(w.size()), std::vector<int64_t>(w.size())};
    Sums eb{std::vector<double>(static_cast<size_t>(s.out_channels)), std::vector<double>(static_cast<size_t>(s.out_channels)),
            std::vector<int64_t>(static_cast<size_t>(s.out_channels))};
    const int64_t oh_n = s.out_h(), ow_n = s.out_w();
    taps(s, [&](int64_t n, int64_t m, int64_t ci, int64_t c, int64_t oh, int64_t ow, int64_t ih, int64_t iw, int64_t kh, int64_t kw) {
      const size_t xi = static_cast<size_t>(((n * s.in_channels + ci) * s.in_h + ih) * s.in_w + iw);
      const size_t wi = static_cast<size_t>(((m * cg + c) * s.kernel_h + kh) * s.kernel_w + kw);
      const size_t yi = static_cast<size_t>(((n * s.out_channels + m) * oh_n + oh) * ow_n + ow);
      const double tx = static_cast<double>(dy[yi]) * w[wi], tw = static_cast<double>(dy[yi]) * x[xi];
      ex.v[xi] += tx, ex.S[xi] += std::fabs(tx), ++ex.terms[xi];
      ew.v[wi] += tw, ew.S[wi] += std::fabs(tw), ++ew.terms[wi];
    });
    for (int64_t n = 0; n < s.batch; ++n)
      for (int64_t m = 0; m < s.out_channels; ++m)
        for (int64_t i = 0; i < oh_n * ow_n; ++i) {
          const double v = dy[static_cast<size_t>((n * s.out_channels + m) * oh_n * ow_n + i)];
          eb.v[static_cast<size_t>(m)] += v, eb.S[static_cast<size_t>(m)] += std::fabs(v), ++eb.terms[static_cast<size_t>(m)];
        }
    std::ostringstream name;
    name << "N" << s.batch << " C" << s.in_channels << " " << s.in_h << "x" << s.in_w << " M" << s.out_channels << " G"
         << s.group << " k" << s.kernel_h << "x" << s.kernel_w << " s" << s.stride_h << "," << s.stride_w << " d"
         << s.dil_h << "," << s.dil_w << " p" << s.pad_top << s.pad_left << s.pad_bottom << s.pad_right;
    for (const auto& ps : test::path_sets()) {
      test::PathGuard guard(ps.paths);
      std::vector<float> dx(x.size(), 99.0f), dw(w.size(), 99.0f), db(static_cast<size_t>(s.out_channels), 99.0f);
      conv2d_backward_data(s, dy.data(), w.data(), dx.data());
      conv2d_backward_weight(s, x.data(), dy.data(), dw.data(), db.data());
      check(dx, ex, name.str() + " dx on " + ps.name);
      check(dw, ew, name.str() + " dw on " + ps.name);
      check(db, eb, name.str() + " db on " + ps.name);
      // The reference twins directly, too.
      conv2d_backward_data_reference(s, dy.data(), w.data(), dx.data());
      conv2d_backward_weight_reference(s, x.data(), dy.data(), dw.data(), nullptr);
      check(dx, ex, name.str() + " reference dx");
      check(dw, ew, name.str() + " reference dw");
    }
  }
}

}  // namespace
}  // namespace perch::kernels
