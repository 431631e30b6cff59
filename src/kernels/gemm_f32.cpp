#include "perch/kernels/gemm_f32.h"

#include <cblas.h>

#include "f32_avx512.h"
#include "perch/core/cpu.h"

// OpenBLAS's own threads spin in sched_yield and cost more than they give on the small matrices of
// perch's models; perch parallelizes above BLAS (perch/core/threads.h), so BLAS runs single-threaded.
// Setting one thread is not enough: the pthreads build starts its workers when the library loads (before any
// code of ours runs) and they spin in sched_yield for ~2^28 cycles before sleeping — the first 0.1-0.2 s of
// every perch process, on the hardware thread beside the one doing the work (`perf record` of a 0.7 s
// `perch bench` found 14 % of the process's samples in that spin). So the workers are stopped right away; with
// one thread OpenBLAS never hands work to them again.
// Weak: other BLAS implementations (and OpenBLAS's serial or OpenMP builds) do not have these functions.
extern "C" void openblas_set_num_threads(int) __attribute__((weak));
extern "C" int blas_thread_shutdown_(void) __attribute__((weak));

namespace perch::kernels {

namespace {
const bool g_blas_single_threaded = [] {
  if (openblas_set_num_threads) openblas_set_num_threads(1);
  if (openblas_set_num_threads && blas_thread_shutdown_) blas_thread_shutdown_();
  return true;
}();
}  // namespace

void gemm_f32_reference(const GemmF32Args& g) {
  for (int64_t i = 0; i < g.m; ++i)
    for (int64_t j = 0; j < g.n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < g.k; ++p) {
        const float a = g.trans_a ? g.a[p * g.lda + i] : g.a[i * g.lda + p];
        const float b = g.trans_b ? g.b[j * g.ldb + p] : g.b[p * g.ldb + j];
        acc += static_cast<double>(a) * b;
      }
      float& c = g.c[i * g.ldc + j];
      c = static_cast<float>(g.alpha * acc + (g.beta == 0.0f ? 0.0 : static_cast<double>(g.beta) * c));
    }
}

void gemm_f32(const GemmF32Args& g) {
  if (g.m == 0 || g.n == 0) return;
  const uint32_t paths = active_paths();
  if (!has_path(paths, Path::kOptimized)) return gemm_f32_reference(g);
  (void)g_blas_single_threaded;
  // Small-K, untransposed products (convolutions) go to the AVX-512 tiles: no packing, no call overhead.
  if (!g.trans_a && !g.trans_b && g.k <= 1024 && has_path(paths, Path::kAvx512Vnni) && avx512::compiled())
    return avx512::gemm_nn(g);
  cblas_sgemm(CblasRowMajor, g.trans_a ? CblasTrans : CblasNoTrans, g.trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(g.m), static_cast<int>(g.n), static_cast<int>(g.k), g.alpha, g.a,
              static_cast<int>(g.lda), g.b, static_cast<int>(g.ldb), g.beta, g.c, static_cast<int>(g.ldc));
}

}  // namespace perch::kernels
