// perch/runtime/op_geometry.h — the kernel geometry of a Conv / pooling node, and the view a Slice node
// takes, from its ONNX attributes and inputs.
//
// One parser for the executor's forward kernels and the training engine's gradients (perch/train), so
// both read strides, dilations, pads, auto_pad, group and ceil_mode the same way. Rank-3 inputs (1-D
// spatial) are viewed as H = 1. Throws naming the node when the attributes and shapes disagree or the
// (dilated) kernel does not fit the padded input.
#pragma once

#include "perch/graph/ir.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/pool_f32.h"

namespace perch::runtime {

kernels::Conv2dShape conv2d_shape(const graph::Node& n, const Shape& x, const Shape& w);
kernels::Pool2dShape pool2d_shape(const graph::Node& n, const Shape& x);

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

}  // namespace perch::runtime
