// gemm_f32 (BLAS) and gemm_f32_reference against a double loop: every transpose combination, odd sizes,
// leading dimensions larger than the rows (padding filled with NaN, so reading it poisons the result), C's
// padding left untouched, alpha/beta including beta = 0 over a NaN-filled C (BLAS: C is then not read).
// Tolerance policy: kernel_test_util.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <vector>

#include "kernel_test_util.h"
#include "perch/core/threads.h"
#include "perch/kernels/gemm_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kSentinel = -12345.0f;

struct Problem {
  bool ta, tb;
  int64_t m, n, k, pad_a, pad_b, pad_c;
  float alpha, beta;
};

std::string describe(const Problem& p) {
  std::ostringstream os;
  os << (p.ta ? "A^T " : "A ") << (p.tb ? "B^T " : "B ") << "m" << p.m << " n" << p.n << " k" << p.k << " pads " << p.pad_a
     << "," << p.pad_b << "," << p.pad_c << " alpha " << p.alpha << " beta " << p.beta;
  return os.str();
}

void check_gemm(const Problem& p, uint64_t seed) {
  SCOPED_TRACE(describe(p));
  Rng rng(seed);
  // Stored shapes: A is m x k (k x m when transposed), B is k x n (n x k when transposed); row-major with
  // leading dimension = stored columns + pad.
  const int64_t a_rows = p.ta ? p.k : p.m, a_cols = p.ta ? p.m : p.k;
  const int64_t b_rows = p.tb ? p.n : p.k, b_cols = p.tb ? p.k : p.n;
  const int64_t lda = a_cols + p.pad_a, ldb = b_cols + p.pad_b, ldc = p.n + p.pad_c;
  std::vector<float> A(static_cast<size_t>(std::max<int64_t>(1, a_rows * lda)), kNaN);
  std::vector<float> B(static_cast<size_t>(std::max<int64_t>(1, b_rows * ldb)), kNaN);
  for (int64_t r = 0; r < a_rows; ++r)
    for (int64_t c = 0; c < a_cols; ++c) A[static_cast<size_t>(r * lda + c)] = rng.uniform(-1, 1);
  for (int64_t r = 0; r < b_rows; ++r)
    for (int64_t c = 0; c < b_cols; ++c) B[static_cast<size_t>(r * ldb + c)] = rng.uniform(-1, 1);
  std::vector<float> C0(static_cast<size_t>(std::max<int64_t>(1, p.m * ldc)), kSentinel);
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) C0[static_cast<size_t>(i * ldc + j)] = p.beta == 0.0f ? kNaN : rng.uniform(-3, 3);

  auto a_at = [&](int64_t i, int64_t q) { return A[static_cast<size_t>(p.ta ? q * lda + i : i * lda + q)]; };
  auto b_at = [&](int64_t q, int64_t j) { return B[static_cast<size_t>(p.tb ? j * ldb + q : q * ldb + j)]; };
  std::vector<double> exact(static_cast<size_t>(p.m * p.n)), S(exact.size());
  for (int64_t i = 0; i < p.m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      double acc = 0, s = 0;
      for (int64_t q = 0; q < p.k; ++q) {
        const double t = static_cast<double>(a_at(i, q)) * b_at(q, j);
        acc += t;
        s += std::fabs(t);
      }
      const double c = p.beta == 0.0f ? 0.0 : static_cast<double>(p.beta) * C0[static_cast<size_t>(i * ldc + j)];
      exact[static_cast<size_t>(i * p.n + j)] = p.alpha * acc + c;
      S[static_cast<size_t>(i * p.n + j)] = std::fabs(p.alpha) * s + std::fabs(c);
    }

  auto run = [&](bool reference) {
    std::vector<float> C = C0;
    GemmF32Args g;
    g.trans_a = p.ta, g.trans_b = p.tb, g.m = p.m, g.n = p.n, g.k = p.k, g.alpha = p.alpha, g.beta = p.beta;
    g.a = A.data(), g.lda = lda, g.b = B.data(), g.ldb = ldb, g.c = C.data(), g.ldc = ldc;
    (reference ? gemm_f32_reference : gemm_f32)(g);
    return C;
  };
  auto verify = [&](const std::vector<float>& C, bool reference, const char* what) {
    for (int64_t i = 0; i < p.m; ++i) {
      for (int64_t j = 0; j < p.n; ++j) {
        const size_t e = static_cast<size_t>(i * p.n + j);
        const float got = C[static_cast<size_t>(i * ldc + j)];
        // k terms, the alpha scaling and the beta*C addition.
        const double bound = reference ? test::double_acc_bound(exact[e], S[e], p.k + 2) : test::gamma_n(p.k + 2) * S[e];
        ASSERT_LE(std::fabs(got - exact[e]), bound) << what << " at (" << i << "," << j << "): " << got << " vs " << exact[e];
      }
      for (int64_t j = p.n; j < ldc; ++j)
        ASSERT_EQ(C[static_cast<size_t>(i * ldc + j)], kSentinel) << what << " wrote into C's padding at row " << i;
    }
  };
  const std::vector<float> ref = run(true);
  verify(ref, true, "gemm_f32_reference");
  for (const auto& ps : test::path_sets()) {
    SCOPED_TRACE(ps.name);
    test::PathGuard guard(ps.paths);
    const std::vector<float> C = run(false);
    verify(C, false, "gemm_f32");
    if (ps.paths == static_cast<uint32_t>(Path::kReference)) {
      ASSERT_EQ(0, std::memcmp(C.data(), ref.data(), C.size() * sizeof(float))) << "reference-only dispatch must be the twin";
    }
  }
}

TEST(GemmF32, AllTransposesOddSizesPaddedLeadingDims) {
  const int64_t sizes[] = {1, 2, 3, 7, 16, 17, 33, 65};
  Rng pick(99);
  int cases = 0;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int r = 0; r < 24; ++r) {
        Problem p{ta, tb, sizes[pick.range(0, 7)], sizes[pick.range(0, 7)], sizes[pick.range(0, 7)],
                  pick.range(0, 2) * 3, pick.range(0, 2) * 2, pick.range(0, 1) * 5, 1.0f, 0.0f};
        const float alphas[] = {1.0f, -0.5f, 2.5f}, betas[] = {0.0f, 1.0f, 0.3f};
        p.alpha = alphas[pick.range(0, 2)], p.beta = betas[pick.range(0, 2)];
        check_gemm(p, pick.next());
        if (HasFatalFailure()) return;
        ++cases;
      }
  EXPECT_EQ(cases, 96);
}

TEST(GemmF32, LargeBlockedProblem) {
  check_gemm({false, true, 130, 97, 300, 1, 0, 3, 1.0f, 1.0f}, 7);
  check_gemm({true, false, 64, 256, 129, 0, 4, 0, -1.0f, 0.0f}, 8);
}

TEST(GemmF32, DegenerateSizes) {
  // k = 0: C = beta * C (alpha * empty sum).
  check_gemm({false, false, 3, 4, 0, 0, 0, 1, 1.0f, 0.5f}, 1);
  check_gemm({true, true, 2, 5, 0, 0, 0, 0, 2.0f, 0.0f}, 2);
  // m = 0 or n = 0: nothing is written (C's contents are all sentinel or padding).
  check_gemm({false, false, 0, 4, 3, 0, 0, 2, 1.0f, 1.0f}, 3);
  check_gemm({false, true, 3, 0, 3, 0, 0, 2, 1.0f, 1.0f}, 4);
}

// The number of threads of this process (Linux: one entry per thread in /proc/self/task).
int process_threads() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += e.is_directory() ? 1 : 0;
  return n;
}

// OpenBLAS's pthreads build starts worker threads when it loads, and they spin in sched_yield for a while —
// stealing the sibling hardware thread from whatever perch runs first. gemm_f32.cpp stops them at start-up;
// with perch's own pool shut down, this process then has one thread. (A BLAS without workers passes too.)
TEST(GemmF32, NoBlasWorkerThreadsAfterStartup) {
  if (!std::filesystem::exists("/proc/self/task")) GTEST_SKIP() << "no /proc/self/task on this system";
  set_num_threads(1);  // replaces perch's pool; a one-thread pool starts no workers
  std::vector<float> a(64 * 64, 1.0f), b(64 * 64, 2.0f), c(64 * 64, 0.0f);
  GemmF32Args g;
  g.m = g.n = g.k = 64;
  g.a = a.data(), g.b = b.data(), g.c = c.data();
  g.lda = g.ldb = g.ldc = 64;
  gemm_f32(g);  // BLAS in use, still single-threaded
  EXPECT_EQ(c[0], 128.0f);
  EXPECT_EQ(process_threads(), 1);
  set_num_threads(0);
}

}  // namespace
}  // namespace perch::kernels
