// The AVX-512 float kernels (src/kernels/f32_avx512.cpp) against their reference twins, on shapes that
// straddle their tiles: GEMM 8 rows x 32 columns (two 16-lane vectors, masked tails), depthwise 16
// output columns per vector with stride 1 (masked loads), 2 (pairs of vectors) and 3 (gathers).
// Skipped when the CPU or the compiler lacks AVX-512. Tolerance policy: kernel_test_util.h.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "kernel_test_util.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

bool avx512_available() { return has_path(supported_paths(), Path::kAvx512Vnni); }

TEST(F32Avx512, GemmTileEdges) {
  if (!avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  test::PathGuard guard(supported_paths());
  Rng rng(7);
  for (int64_t m : {1, 7, 8, 9, 16, 17})
    for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 49, 64, 65})
      for (int64_t k : {1, 3, 16, 37}) {
        SCOPED_TRACE(::testing::Message() << "m" << m << " n" << n << " k" << k);
        const int64_t lda = k + 3, ldb = n + 5, ldc = n + 2;
        const auto A = rng.vec(static_cast<size_t>(m * lda)), B = rng.vec(static_cast<size_t>(k * ldb));
        const auto C0 = rng.vec(static_cast<size_t>(m * ldc));
        for (float beta : {0.0f, 1.0f, 0.5f}) {
          GemmF32Args g;
          g.m = m, g.n = n, g.k = k, g.alpha = beta == 0.5f ? -2.0f : 1.0f, g.beta = beta;
          g.a = A.data(), g.lda = lda, g.b = B.data(), g.ldb = ldb, g.ldc = ldc;
          std::vector<float> ref = C0, got = C0;
          g.c = ref.data();
          gemm_f32_reference(g);
          g.c = got.data();
          gemm_f32(g);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double S = std::fabs(beta * C0[i * ldc + j]);
              for (int64_t q = 0; q < k; ++q) S += std::fabs(g.alpha * A[i * lda + q] * B[q * ldb + j]);
              ASSERT_NEAR(got[i * ldc + j], ref[i * ldc + j], 2 * test::gamma_n(k + 2) * S + 1e-30)
                  << "(" << i << "," << j << ") beta " << beta;
            }
            for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(got[i * ldc + j], C0[i * ldc + j]) << "wrote C padding";
          }
        }
      }
}

// Depthwise through conv2d_f32 on the AVX-512 path, compared with conv2d_f32_reference and with the
// portable optimized path (same summation order, so only FMA rounding differs).
TEST(F32Avx512, DepthwiseRandomShapes) {
  if (!avx512_available()) GTEST_SKIP() << "no AVX-512 on this CPU";
  Rng rng(11);
  for (int trial = 0; trial < 150; ++trial) {
    Conv2dShape s;
    s.batch = rng.range(1, 3);
    s.in_channels = s.group = rng.range(2, 6);
    s.out_channels = s.in_channels * rng.range(1, 2);
    s.kernel_h = rng.range(1, 4), s.kernel_w = rng.range(1, 4);
    s.stride_h = rng.range(1, 3), s.stride_w = rng.range(1, 3);
    s.dil_h = rng.range(1, 2), s.dil_w = rng.range(1, 2);
    s.pad_top = rng.range(0, 2), s.pad_bottom = rng.range(0, 2), s.pad_left = rng.range(0, 3), s.pad_right = rng.range(0, 3);
    s.in_h = rng.range(1, 12), s.in_w = rng.range(1, 70);  // widths straddle 16, 32, 48, 64 outputs
    if (s.out_h() <= 0 || s.out_w() <= 0) continue;
    std::ostringstream os;
    os << "n" << s.batch << " c" << s.in_channels << " m" << s.out_channels << " " << s.in_h << "x" << s.in_w << " k"
       << s.kernel_h << "x" << s.kernel_w << " s" << s.stride_h << "," << s.stride_w << " d" << s.dil_h << "," << s.dil_w
       << " p" << s.pad_top << "," << s.pad_left << "," << s.pad_bottom << "," << s.pad_right;
    SCOPED_TRACE(os.str());
    const auto x = rng.vec(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w));
    const auto w = rng.vec(static_cast<size_t>(s.out_channels * s.kernel_h * s.kernel_w));
    const auto b = rng.vec(static_cast<size_t>(s.out_channels));
    const size_t ny = static_cast<size_t>(s.batch * s.out_channels * s.out_h() * s.out_w());
    std::vector<float> ref(ny), portable(ny), fast(ny, -1.0f);
    conv2d_f32_reference(s, x.data(), w.data(), b.data(), ref.data());
    {
      test::PathGuard g(Path::kReference | Path::kOptimized);
      conv2d_f32(s, x.data(), w.data(), b.data(), portable.data());
    }
    {
      test::PathGuard g(supported_paths());
      conv2d_f32(s, x.data(), w.data(), b.data(), fast.data());
    }
    // Each output sums at most kh*kw products plus the bias; inputs and weights are in [-1, 1].
    const double bound = 2 * test::gamma_n(s.kernel_h * s.kernel_w + 1) * (s.kernel_h * s.kernel_w + 1);
    for (size_t i = 0; i < ny; ++i) {
      ASSERT_NEAR(fast[i], ref[i], bound) << "avx512 at " << i;
      ASSERT_NEAR(portable[i], ref[i], bound) << "portable at " << i;
    }
  }
}

// Regular (im2col + GEMM) convs with the output-channel split used at small batches: every thread count.
TEST(F32Avx512, ConvSplitAcrossThreads) {
  Rng rng(5);
  Conv2dShape s;
  s.batch = 1, s.in_channels = 24, s.out_channels = 44, s.in_h = 29, s.in_w = 31, s.kernel_h = s.kernel_w = 3;
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
  const auto x = rng.vec(static_cast<size_t>(s.in_channels * s.in_h * s.in_w));
  const auto w = rng.vec(static_cast<size_t>(s.out_channels * s.in_channels * 9));
  const size_t ny = static_cast<size_t>(s.out_channels * s.out_h() * s.out_w());
  std::vector<float> ref(ny);
  conv2d_f32_reference(s, x.data(), w.data(), nullptr, ref.data());
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    std::vector<float> got(ny);
    conv2d_f32(s, x.data(), w.data(), nullptr, got.data());
    for (size_t i = 0; i < ny; ++i) ASSERT_NEAR(got[i], ref[i], 2 * test::gamma_n(s.in_channels * 9) * s.in_channels * 9) << i;
  }
  set_num_threads(0);
}

}  // namespace
}  // namespace perch::kernels
