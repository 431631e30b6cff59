// perch/kernels/conv_f32.h — float 2-D convolution (NCHW), reference and optimized twins.
//
// y[n, m, oh, ow] = bias[m] + sum_{c in group(m), kh, kw} x[n, c, ih, iw] * w[m, c - c0(m), kh, kw]
//   ih = oh*stride_h - pad_top + kh*dil_h,  iw = ow*stride_w - pad_left + kw*dil_w  (out-of-range = 0)
//   group(m) = input channels [g*C/G, (g+1)*C/G) with g = m / (M/G).
// Weight layout [M, C/G, KH, KW] (ONNX). 1-D convs are run as H = 1.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace perch::kernels {

struct Conv2dShape {
  int64_t batch = 1, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 1, kernel_w = 1;
  int64_t group = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t dil_h = 1, dil_w = 1;
  int64_t out_h() const { return (in_h + pad_top + pad_bottom - dil_h * (kernel_h - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (in_w + pad_left + pad_right - dil_w * (kernel_w - 1) - 1) / stride_w + 1; }
  bool is_depthwise() const { return group == in_channels && group > 1 && out_channels % group == 0; }
};

// Plain loops, double accumulation order as written; the twin every optimized path is tested against.
void conv2d_f32_reference(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y);
// im2col + GEMM per (image, group) (1x1 stride-1 convs skip im2col); the GEMM is AVX-512 tiles when
// that path is active, else BLAS sgemm. Depthwise convs run per zero-padded input plane (AVX-512 or
// portable loops). Work is spread over perch's thread pool (perch/core/threads.h) by image, group and,
// for small batches, blocks of output channels. Picks the reference twin when PERCH_PATHS=reference.
//
// `post`, when given, is an epilogue: it is called on every finished block of y — whole output planes of one image,
// contiguous — on the thread that computed the block, right after it did (while the block is still in its cache),
// and may rewrite the block in place; every element of y is passed exactly once, the blocks in no fixed order. The
// float executor applies a fused element-wise chain (HardSwish, an affine) to a Conv's output this way.
using ConvEpilogue = std::function<void(float* block, int64_t count)>;
void conv2d_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
                const ConvEpilogue& post = {});
// The patch matrix the GEMM path multiplies: col[(c*KH + kh)*KW + kw, oh*OW + ow] = x[c, ih, iw] (0 in the
// padding), for the C/G channels of one group of one image starting at x (ih, iw as above).
void im2col_f32(const Conv2dShape& s, const float* x, float* col);

// N-d convolution over [N, C, D1, ..., Dk] with weights [M, C/G, K1, ..., Kk] (k >= 1 spatial dims): the formula
// above with one index per spatial dim, i_j = o_j*strides[j] - pads_begin[j] + k_j*dilations[j] (out-of-range = 0).
// out() is the per-dim output size floor((in + pads_begin + pads_end - dil*(K - 1) - 1) / stride) + 1.
struct ConvNdShape {
  int64_t batch = 1, in_channels = 0, out_channels = 0, group = 1;
  std::vector<int64_t> in, kernel, strides, dilations, pads_begin, pads_end;
  std::vector<int64_t> out() const;
};
// Plain loops over every output and window cell, accumulating in double: the twin of conv_nd_f32.
void conv_nd_f32_reference(const ConvNdShape& s, const float* x, const float* w, const float* bias, float* y);
// 3 spatial dims (rank-5 tensors, the executor's Conv3d): y[:, :, od] = sum over kd of the 2-D convolution (conv2d_f32,
// its optimized paths) of input depth slice id = od*stride_d - pad_d + kd*dil_d with the weights' kd slice, skipping
// slices in the padding. The depth-major copies this needs ([D, N, C, H, W] in, [OD, N, M, OH, OW] out, KD weight
// slices) make each slice pair one batched conv2d call; float accumulation in kd order, bias added last. `post` is
// called once on the whole of y. Other spatial ranks, and PERCH_PATHS=reference, run the reference twin.
void conv_nd_f32(const ConvNdShape& s, const float* x, const float* w, const float* bias, float* y,
                 const ConvEpilogue& post = {});
// The N-d patch matrix: col[c*K1*...*Kk + (k1*K2 + k2)*... + kk, flat output position] = x[c, i1, ..., ik] (0 in the
// padding), for the C/G channels of one group of one image starting at x (i_j as above); plain loops.
void im2col_nd_f32(const ConvNdShape& s, const float* x, float* col);
// Gradients of the N-d convolution (training of 3-D models), the 2-D formulas below with one index per spatial dim:
// dx[n, c, i] = sum of dy[n, m, o] * w[m, c - c0(m), k] over i = o*stride - pad_begin + k*dil; dw[m, c, k] = sum over
// (n, o) of dy[n, m, o] * x[n, c0(m) + c, i]; dbias[m] = sum of dy[n, m, o]. Plain loops accumulating in double;
// every output overwritten, dbias may be null.
void conv_nd_backward_data_f32(const ConvNdShape& s, const float* dy, const float* w, float* dx);
void conv_nd_backward_weight_f32(const ConvNdShape& s, const float* x, const float* dy, float* dw, float* dbias);

// Gradients (training, perch/train). With y = conv(x, w) + bias as above and dy = dL/dy:
//   dx[n, c, ih, iw] = sum over (m in the group of c, kh, kw, oh, ow) with ih = oh*sh - pt + kh*dh and
//                      iw = ow*sw - pl + kw*dw of dy[n, m, oh, ow] * w[m, c - c0(m), kh, kw]
//   dw[m, c, kh, kw] = sum over (n, oh, ow) of dy[n, m, oh, ow] * x[n, c0(m) + c, ih, iw]   (0 outside)
//   dbias[m]         = sum over (n, oh, ow) of dy[n, m, oh, ow]
// Every output is overwritten (not accumulated); dbias may be null. The reference twins loop in double.
// Optimized: per (image, group) GEMMs against im2col / col2im (BLAS sgemm), 1x1 stride-1 convs without
// im2col, and depthwise convs as direct loops on zero-padded planes; images (dw: per-thread partial sums,
// added in a fixed order so results do not depend on the thread count) and planes over the thread pool.
void conv2d_backward_data_reference(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx);
void conv2d_backward_weight_reference(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);
void conv2d_backward_weight(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias);

}  // namespace perch::kernels
