// perch/runtime/op_geometry.h — the kernel geometry of a Conv / pooling node, from its ONNX attributes.
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

}  // namespace perch::runtime
