// perch/kernels/gemm_f32.h — float GEMM, row-major: C = alpha * op(A) * op(B) + beta * C.
//   op(A) is M x K (A is K x M when trans_a), op(B) is K x N (B is N x K when trans_b).
#pragma once

#include <cstdint>

namespace perch::kernels {

struct GemmF32Args {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* a = nullptr;
  int64_t lda = 0;
  const float* b = nullptr;
  int64_t ldb = 0;
  float* c = nullptr;
  int64_t ldc = 0;
};

void gemm_f32_reference(const GemmF32Args& g);
void gemm_f32(const GemmF32Args& g);  // BLAS sgemm (OpenBLAS); reference when PERCH_PATHS=reference

}  // namespace perch::kernels
