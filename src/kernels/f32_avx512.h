// AVX-512 float kernels behind gemm_f32 and conv2d_f32 (internal header; compiled in f32_avx512.cpp with
// -mavx512f -mavx512bw -mavx512vl -mfma). Callers dispatch on Path::kAvx512Vnni; when the compiler
// cannot build the file, compiled() is false and the functions must not be called.
#pragma once

#include <cstdint>

#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"

namespace perch::kernels::avx512 {

bool compiled();

// gemm_f32 for trans_a == trans_b == false: tiles of 8 rows x 32 columns, B read in place (no packing),
// masked column tails, K summed in blocks of 128 (each block's partial sum added to C). Same contract as
// gemm_f32.
void gemm_nn(const GemmF32Args& g);

// One output plane of a depthwise conv from a zero-padded input plane:
//   y[oh*ow_n + ow] = bias + sum_{kh,kw} w[kh*kw_n + kw] * xp[(oh*sh + kh*dh)*pw + ow*sw + kw*dw]
// (terms added in kh, kw order). xp must stay readable 32 floats past the last element the formula
// touches (stride-2 rows are read as pairs of vectors).
void depthwise_plane(const float* xp, int64_t pw, int64_t oh_n, int64_t ow_n, int64_t kh_n, int64_t kw_n, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, const float* w, float bias, float* y);

// detail::im2col (conv_internal.h) for stride_w == 1, same result: each output row is one or two masked
// loads and stores (lanes outside the valid column range [lo, hi) are zero and never read).
void im2col_stride1(const Conv2dShape& s, int64_t cg, const float* x, float* col, int64_t oh0, int64_t oh1);
// softmax_rows_f32 (perch/kernels/softmax_f32.h) on `rows` rows of `len` floats.
void softmax_rows(const float* x, int64_t rows, int64_t len, float* y);
// The adjoint, dx[c, ih, iw] += col[(c*KH + kh)*KW + kw, oh*OW + ow] for stride_w == 1 (conv_f32_backward.cpp's
// col2im_add is the twin; the same additions in the same order, so the same result).
void col2im_add_stride1(const Conv2dShape& s, int64_t cg, const float* col, float* dx);

// Max-pool backward for one plane, 2x2 windows, stride 2, no padding (pool_f32.cpp's maxpool2x2_backward_plane
// is the portable twin, same contract): every input element of rows [0, 2*oh_n) and columns [0, 2*ow_n) gets
// its window's gradient if it is the window's first maximum (row-major; row 1 only if strictly greater),
// else +0; gradients are written as g + 0.0f. Other rows/columns of the plane are left to the caller.
void maxpool2x2_backward_plane(const float* x, const float* g, float* dx, int64_t in_w, int64_t oh_n, int64_t ow_n);

}  // namespace perch::kernels::avx512
