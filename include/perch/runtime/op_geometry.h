// perch/runtime/op_geometry.h — the kernel geometry of a Conv / pooling / ConvTranspose node, the view a Slice
// node takes and the linear map of a Resize node, from their ONNX attributes and inputs.
//
// One parser for the executor's forward kernels and the training engine's gradients (perch/train), so
// both read strides, dilations, pads, auto_pad, group and ceil_mode the same way. Rank-3 inputs (1-D
// spatial) are viewed as H = 1. Throws naming the node when the attributes and shapes disagree or the
// (dilated) kernel does not fit the padded input.
#pragma once

#include <optional>

#include "perch/graph/ir.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/pool_f32.h"

namespace perch::runtime {

kernels::Conv2dShape conv2d_shape(const graph::Node& n, const Shape& x, const Shape& w);
kernels::Pool2dShape pool2d_shape(const graph::Node& n, const Shape& x);
// The same for any spatial rank (x = [N, C, D1, ..., Dk], k >= 1), for the N-d kernels (3-D convs and pools,
// MaxPool's Indices output).
kernels::ConvNdShape conv_nd_shape(const graph::Node& n, const Shape& x, const Shape& w);
kernels::PoolNdShape pool_nd_shape(const graph::Node& n, const Shape& x);

// The elements Slice reads from x: output shape, flat offset of the first element, and per output dimension
// the flat stride in x (input stride times the step). starts/ends/axes come from attributes before opset 10,
// from inputs 1..4 after (`args` as the executor passes them; nullptr = omitted). Negative starts/ends count
// from the end; they are clamped to [0, d] (step > 0) or [-1, d - 1] (step < 0), as ONNX specifies.
struct SliceView {
  Shape shape;
  int64_t base = 0;
  std::vector<int64_t> strides;
};
SliceView slice_view(const graph::Node& n, const std::vector<const Tensor*>& args, int64_t opset, const Shape& x);

// ConvTranspose (any spatial rank): y[n, g*Mg + m, i*s - pad_begin + k*d] += x[n, g*Cg + c, i] * w[g*Cg + c, m, k]
// (+ bias[m]), w = [C, M/G, K...]. Output size per spatial dim: s*(in - 1) + output_padding + (K - 1)*d + 1 -
// pad_begin - pad_end, or `output_shape` with the total padding split as the ONNX spec says (SAME_UPPER puts the odd
// one at the end; an output_shape beyond the full size gives a negative pad_end: the tail gets only the bias).
// `as_conv`: for 1-D/2-D, the convolution (input = y's space, output = x's, weights w read as [C, M/G, K...]) whose
// data gradient the ConvTranspose is, when that convolution gives back x's size (its end padding is
// max(0, pad_end - output_padding)); unset otherwise (rank > 2, or output_shape past the full size). Then
//   y = conv.backward_data(x),  dL/dx = conv(dL/dy),  dL/dw = conv.backward_weight(input dL/dy, output grad x).
struct ConvTransposeGeometry {
  Shape out;  // [N, M, spatial...]
  std::vector<int64_t> strides, dilations, pads_begin, pads_end, kernel;
  int64_t group = 1;
  std::optional<kernels::Conv2dShape> as_conv;
};
ConvTransposeGeometry conv_transpose_geometry(const graph::Node& n, const Shape& x, const Shape& w);

// Resize (opset 10+) and Upsample (7, 9) on float data are linear and separable: per dimension of x, each output
// index reads a few input indices with weights (src/runtime/ops_resize.cpp has the coordinate and tap formulas).
// `taps[d][j]` lists them for output index j of dim d; an empty list is extrapolation_value (tf_crop_and_resize
// outside the crop). Dims the node maps onto themselves have `identity[d]` set and no taps. `args` as the executor
// passes them (roi, scales, sizes).
struct ResizeTap {
  int64_t index;
  double weight;
};
struct ResizeMap {
  Shape out;
  std::vector<std::vector<std::vector<ResizeTap>>> taps;
  std::vector<bool> identity;
  bool nearest = false;  // one tap of weight 1 per output index (not tf_crop_and_resize)
  double extrapolation = 0.0;
};
ResizeMap resize_map(const graph::Node& n, const std::vector<const Tensor*>& args, int64_t opset, const Shape& x);

}  // namespace perch::runtime
