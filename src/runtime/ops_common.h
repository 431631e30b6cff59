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
// Opset < 7 binary ops (Add, Sub, Mul, Div, Pow; And/Or/Xor and comparisons too): `broadcast` 0 needs equal
// shapes; `broadcast` 1 aligns B's dims with A's starting at `axis` (default: B's dims are A's last ones). Returns
// B reshaped so that NumPy broadcasting computes exactly that (trailing 1s appended); throws naming the node.
Tensor legacy_broadcast_operand(const graph::Node& n, const Tensor& a, const Tensor& b);
// PRelu before 7: a rank-1 slope of X.dim(1) > 1 values is one slope per channel (axis 1), as the Caffe2-era
// definition and PyTorch's opset-6 exports mean it; returned reshaped to [C, 1, ..., 1]; otherwise as it is.
Tensor legacy_prelu_slope(const Tensor& x, const Tensor& slope);
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
