// softmax_rows_f32: the reference twin against a double-precision softmax, and every path against it — row lengths
// around the 16-float vector (tails), the 6625-way CTC softmax of PaddleOCR's recognizer, spreads of logits from
// tiny to 200 (terms underflowing to 0), and rows with -inf, +inf and NaN entries.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernel_test_util.h"
#include "perch/kernels/softmax_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

std::vector<double> exact_softmax(const float* x, int64_t len) {
  double m = -INFINITY;
  for (int64_t j = 0; j < len; ++j) m = std::max(m, static_cast<double>(x[j]));
  std::vector<double> e(static_cast<size_t>(len));
  double s = 0;
  for (int64_t j = 0; j < len; ++j) s += (e[static_cast<size_t>(j)] = std::exp(static_cast<double>(x[j]) - m));
  for (auto& v : e) v /= s;
  return e;
}

TEST(SoftmaxF32, EveryPathMatchesDoublePrecision) {
  Rng rng(6625);
  int rows_checked = 0;
  for (int64_t len : {1, 2, 15, 16, 17, 31, 33, 100, 6625}) {
    for (float spread : {0.01f, 3.0f, 30.0f, 200.0f}) {
      const int64_t rows = len > 1000 ? 3 : 5;
      const auto x = rng.vec(static_cast<size_t>(rows * len), -spread, spread);
      std::vector<float> ref(x.size());
      softmax_rows_f32_reference(x.data(), rows, len, ref.data());
      for (const auto& ps : test::path_sets()) {
        SCOPED_TRACE(ps.name);
        test::PathGuard guard(ps.paths);
        std::vector<float> y(x.size() + 1, 7.0f);  // one guard element past the end
        softmax_rows_f32(x.data(), rows, len, y.data());
        ASSERT_EQ(y.back(), 7.0f) << "wrote past the output";
        for (int64_t r = 0; r < rows; ++r) {
          const float* xr = x.data() + r * len;
          const auto want = exact_softmax(xr, len);
          float m = -INFINITY;
          for (int64_t j = 0; j < len; ++j) m = std::max(m, xr[j]);
          double sum = 0;
          for (int64_t j = 0; j < len; ++j) {
            const size_t i = static_cast<size_t>(r * len + j);
            // A few ulp of the value (exp, the sum, the scaling); x - m rounded to float, which moves exp by up to
            // |x - m| 2^-24 relative (in every float softmax); and the float underflow range.
            const double w = want[static_cast<size_t>(j)], d = std::fabs(static_cast<double>(xr[j]) - m);
            ASSERT_NEAR(y[i], w, (6e-7 + d * 0x1p-24) * w + 1e-37)
                << "len " << len << " spread " << spread << " row " << r << " j " << j;
            if (ps.paths == static_cast<uint32_t>(Path::kReference)) ASSERT_EQ(y[i], ref[i]);
            sum += y[i];
          }
          EXPECT_NEAR(sum, 1.0, 1e-5);
          ++rows_checked;
        }
      }
    }
  }
  EXPECT_GT(rows_checked, 100);
}

TEST(SoftmaxF32, InfinitiesAndNaN) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  for (const auto& ps : test::path_sets()) {
    SCOPED_TRACE(ps.name);
    test::PathGuard guard(ps.paths);
    std::vector<float> x(40, 0.5f), y(40);
    x[3] = -inf;  // exp(-inf) = 0, the rest share the mass
    softmax_rows_f32(x.data(), 1, 40, y.data());
    EXPECT_EQ(y[3], 0.0f);
    EXPECT_NEAR(y[0], 1.0 / 39, 1e-7);
    x[3] = nan;  // NaN anywhere: the whole row
    softmax_rows_f32(x.data(), 1, 40, y.data());
    for (float v : y) EXPECT_TRUE(std::isnan(v));
    x.assign(40, -inf);  // -inf - -inf: NaN, as the definition gives
    softmax_rows_f32(x.data(), 1, 40, y.data());
    for (float v : y) EXPECT_TRUE(std::isnan(v));
    x.assign(40, 1.0f);
    x[17] = inf;
    softmax_rows_f32(x.data(), 1, 40, y.data());
    for (float v : y) EXPECT_TRUE(std::isnan(v));
  }
}

}  // namespace
}  // namespace perch::kernels
