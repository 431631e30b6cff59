// AVX-512 float kernels behind gemm_f32 and conv2d_f32 (internal header; compiled in f32_avx512.cpp with
// -mavx512f -mavx512bw -mavx512vl -mfma). Callers dispatch on Path::kAvx512Vnni; when the compiler
// cannot build the file, compiled() is false and the functions must not be called.
#pragma once

#include <cstdint>

#include "perch/kernels/gemm_f32.h"

namespace perch::kernels::avx512 {

bool compiled();

// gemm_f32 for trans_a == trans_b == false: tiles of 8 rows x 32 columns, B read in place (no packing),
// masked column tails. Same contract as gemm_f32.
void gemm_nn(const GemmF32Args& g);

// One output plane of a depthwise conv from a zero-padded input plane:
//   y[oh*ow_n + ow] = bias + sum_{kh,kw} w[kh*kw_n + kw] * xp[(oh*sh + kh*dh)*pw + ow*sw + kw*dw]
// (terms added in kh, kw order). xp must stay readable 32 floats past the last element the formula
// touches (stride-2 rows are read as pairs of vectors).
void depthwise_plane(const float* xp, int64_t pw, int64_t oh_n, int64_t ow_n, int64_t kh_n, int64_t kw_n, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, const float* w, float bias, float* y);

}  // namespace perch::kernels::avx512
