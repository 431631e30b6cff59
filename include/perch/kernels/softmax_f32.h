// perch/kernels/softmax_f32.h — softmax over contiguous rows (the last axis), reference and optimized twins.
//
//   y[r, j] = e[r, j] / s_r,   e[r, j] = exp(x[r, j] - m_r),   m_r = max_j x[r, j],   s_r = sum_j e[r, j]
//
// Subtracting the row maximum keeps every exponent <= 0 (no overflow; the largest term is 1). A row holding NaN
// gives NaN; a row of -inf gives NaN (-inf - -inf), as the definition does.
#pragma once

#include <cstdint>

namespace perch::kernels {

// Plain loops: std::exp in float, s_r summed in double, each y = float(e / s_r) in double. The twin the optimized
// path is tested against.
void softmax_rows_f32_reference(const float* x, int64_t rows, int64_t len, float* y);
// AVX-512 when that path is active (exp by a degree-6 polynomial on the reduced argument and VSCALEFPS, max error
// a few ulp; s_r summed in double; y = e * float(1 / s_r)), else the reference. Rows over perch's thread pool.
// PERCH_PATHS=reference picks the reference twin.
void softmax_rows_f32(const float* x, int64_t rows, int64_t len, float* y);

}  // namespace perch::kernels
