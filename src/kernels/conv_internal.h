// Helpers shared by the float convolution kernels (forward in conv_f32.cpp, gradients in
// conv_f32_backward.cpp). Not a public header.
#pragma once

#include <cstdint>

#include "perch/kernels/conv_f32.h"

namespace perch::kernels::detail {

// Output columns [lo, hi) whose input column ow*stride + off lies inside [0, in_w).
void valid_range(int64_t off, int64_t stride, int64_t in_w, int64_t ow_n, int64_t& lo, int64_t& hi);
// col[(c*KH + kh)*KW + kw, oh*OW + ow] = x[c, ih, iw] (0 outside) for the cg channels starting at x; with
// oh1 >= 0 only output rows [oh0, oh1), col[.., (oh - oh0)*OW + ow] (a block of columns: row stride (oh1 - oh0)*OW).
void im2col(const Conv2dShape& s, int64_t cg, const float* x, float* col, int64_t oh0 = 0, int64_t oh1 = -1);
// Copies input plane xc (in_h x in_w) into the ph x pw plane xp at (pad_top, pad_left), zeros elsewhere.
void pad_plane(const Conv2dShape& s, const float* xc, int64_t ph, int64_t pw, float* xp);

}  // namespace perch::kernels::detail
