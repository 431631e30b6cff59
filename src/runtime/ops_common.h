// Helpers shared by the op kernels of the float executor (not a public header).
#pragma once

#include <vector>

#include "perch/core/tensor.h"
#include "perch/graph/ir.h"
#include "perch/kernels/conv_f32.h"

namespace perch::runtime::detail {

// Input i, which must be present.
const Tensor& in(const graph::Node& n, const std::vector<const Tensor*>& args, size_t i);
// Input i as float32 (converted from other numeric types).
inline bool has(const std::vector<const Tensor*>& args, size_t i) { return i < args.size() && args[i]; }

// NumPy broadcast shape of a and b; throws naming the node if incompatible.
Shape broadcast_shape(const Shape& a, const Shape& b, const graph::Node& n);
// Strides (in elements) for reading `shape` broadcast to `out` (0 on broadcast dims).
std::vector<int64_t> broadcast_strides(const Shape& shape, const Shape& out);

// Spatial conv/pool geometry from ONNX attributes for input spatial dims `in` and kernel dims `k`.
struct Geometry {
  std::vector<int64_t> strides, dilations, pads_begin, pads_end;
};
Geometry geometry(const graph::Node& n, const std::vector<int64_t>& in, const std::vector<int64_t>& k, bool ceil_mode);

// The float Conv op (ops_nn.cpp) with an epilogue run on each finished block of its output (kernels::conv2d_f32's
// `post`); the executor passes a fused element-wise chain there. Empty `post`: the registered Conv kernel.
Tensor conv_float(const graph::Node& n, const std::vector<const Tensor*>& args, const kernels::ConvEpilogue& post);

}  // namespace perch::runtime::detail
