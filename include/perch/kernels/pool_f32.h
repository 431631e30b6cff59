// perch/kernels/pool_f32.h — 2-D max / average pooling over NCHW float tensors.
//   y[n,c,oh,ow] = max (or mean) of x[n,c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] over the window.
// Average: the divisor counts padded cells when count_include_pad, else only cells inside the input.
// Output size uses floor, or ceil when ceil_mode (a window must start inside input or left padding).
#pragma once

#include <cstdint>

namespace perch::kernels {

struct Pool2dShape {
  int64_t batch = 1, channels = 0, in_h = 0, in_w = 0;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t dil_h = 1, dil_w = 1;
  bool ceil_mode = false, count_include_pad = false;
  int64_t out_h() const;
  int64_t out_w() const;
};

void maxpool2d_f32(const Pool2dShape& s, const float* x, float* y);
void avgpool2d_f32(const Pool2dShape& s, const float* x, float* y);

// Gradients (training). dx is overwritten.
//   max: dy[n,c,oh,ow] goes to the first cell (row-major window order) holding the window's maximum;
//   average: dy / divisor goes to every cell of the window inside the input (divisor as in the forward).
void maxpool2d_backward_f32(const Pool2dShape& s, const float* x, const float* dy, float* dx);
void avgpool2d_backward_f32(const Pool2dShape& s, const float* dy, float* dx);

}  // namespace perch::kernels
