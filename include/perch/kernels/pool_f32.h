// perch/kernels/pool_f32.h — 2-D max / average pooling over NCHW float tensors.
//   y[n,c,oh,ow] = max (or mean) of x[n,c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] over the window.
// Average: the divisor counts padded cells when count_include_pad, else only cells inside the input.
// Output size uses floor, or ceil when ceil_mode (a window must start inside input or left padding).
#pragma once

#include <cstdint>
#include <vector>

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

// N-d pooling over [N, C, D1, ..., Dk] (any k >= 1), the rules above with one index per spatial dim, as plain
// loops: the executor runs rank-5 inputs (3-D pooling) and MaxPool's optional Indices output here.
struct PoolNdShape {
  int64_t batch = 1, channels = 0;
  std::vector<int64_t> in, kernel, strides, dilations, pads_begin, pads_end;
  bool ceil_mode = false, count_include_pad = false;
  std::vector<int64_t> out() const;
};
// `indices` (may be null): for each output, the flat index in x of the first cell (window order, row major) holding
// the window's maximum, as ONNX's MaxPool Indices output defines it: (n*C + c)*D1*...*Dk plus the spatial offset,
// row major (d1*D2*...*Dk + ... + dk) or, with `column_major` (storage_order 1), the dims reversed
// (d1 + d2*D1 + ... + dk*D1*...*D(k-1)). A window with no cell inside the input (pads as large as the kernel) gives
// -inf, as the 2-D kernels do, and index -1.
void maxpool_nd_f32(const PoolNdShape& s, const float* x, float* y, int64_t* indices = nullptr, bool column_major = false);
void avgpool_nd_f32(const PoolNdShape& s, const float* x, float* y);
// Their gradients (dx overwritten): max routes dy to the cell maxpool_nd_f32 indexes (the first maximum), average
// spreads dy / divisor over the window's cells inside the input.
void maxpool_nd_backward_f32(const PoolNdShape& s, const float* x, const float* dy, float* dx);
void avgpool_nd_backward_f32(const PoolNdShape& s, const float* dy, float* dx);
// Gradients (training). dx is overwritten.
//   max: dy[n,c,oh,ow] goes to the first cell (row-major window order) holding the window's maximum;
//   average: dy / divisor goes to every cell of the window inside the input (divisor as in the forward).
void maxpool2d_backward_f32(const Pool2dShape& s, const float* x, const float* dy, float* dx);
void avgpool2d_backward_f32(const Pool2dShape& s, const float* dy, float* dx);

}  // namespace perch::kernels
