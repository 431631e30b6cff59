// QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear for the float executor: a QDQ model run
// here is perch's simulation of the quantized model. The arithmetic is perch::quant's (one formula for
// the whole project): q = clamp(round_half_to_even(x / s) + zp), x = (q - zp) * s.
#include <algorithm>
#include <cmath>

#include "ops_common.h"
#include "perch/quant/params.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

// Builds QuantParams for data of shape `x_shape` from a Q/DQ node's scale and zero-point inputs.
// Granularity follows ONNX: scalar/1-element scale = per-tensor; 1-D scale with `axis` = per-axis;
// scale of the data's rank with `block_size` (opset 21) = blocked (perch's per-group).
quant::QuantParams qdq_params(const Node& n, const Args& a, const Shape& x_shape, DType qtype) {
  const Tensor scale = in(n, a, 1).to_f32();
  quant::QuantSpec spec;
  switch (qtype) {
    case DType::kInt8: spec.bits = 8, spec.is_signed = true; break;
    case DType::kUInt8: spec.bits = 8, spec.is_signed = false; break;
    case DType::kInt16: spec.bits = 16, spec.is_signed = true; break;
    case DType::kUInt16: spec.bits = 16, spec.is_signed = false; break;
    // int32 (biases): zero point must be 0 in practice; the 16-bit spec only provides the slot layout
    // and zero-point range check, dequantize itself handles int32 data.
    case DType::kInt32: spec.bits = 16, spec.is_signed = true; break;
    default: PERCH_FAIL(n.describe(), ": quantized type ", dtype_name(qtype), " is not supported");
  }
  spec.symmetric = false;
  const int64_t block = n.attr_int("block_size", 0);
  if (block > 0) {
    spec.granularity = quant::Granularity::kPerGroup;
    spec.group_size = block;
    spec.axis = n.attr_int("axis", 1);
  } else if (scale.numel() != 1) {  // a 1-element scale is per-tensor whatever its rank
    PERCH_CHECK(scale.rank() == 1, n.describe(), ": per-axis scale must be 1-D, got ", shape_str(scale.shape()));
    spec.granularity = quant::Granularity::kPerChannel;
    spec.axis = n.attr_int("axis", 1);
  }
  std::vector<int32_t> zp(static_cast<size_t>(scale.numel()), 0);
  if (has(a, 2)) {
    const Tensor& z = *a[2];
    PERCH_CHECK(z.dtype() != DType::kFloat32 && z.dtype() != DType::kFloat64 && z.dtype() != DType::kBool, n.describe(),
                ": zero point must be an integer tensor, got ", dtype_name(z.dtype()));
    PERCH_CHECK(z.numel() == scale.numel(), n.describe(), ": zero point has ", z.numel(), " values, scale has ", scale.numel());
    auto v = z.to_i64_vector();
    std::copy(v.begin(), v.end(), zp.begin());
  }
  auto sc = scale.span<float>();
  try {
    return quant::make_params(spec, x_shape, std::vector<float>(sc.begin(), sc.end()), std::move(zp));
  } catch (const Error& e) {
    PERCH_FAIL(n.prefixed(e.what()));
  }
}

std::vector<Tensor> quantize_linear(const Node& n, const Args& a, int64_t) {
  const Tensor x = in(n, a, 0).to_f32();
  DType qtype = DType::kUInt8;  // ONNX default when no zero point is given
  if (has(a, 2)) qtype = a[2]->dtype();
  if (n.has_attr("output_dtype") && n.attr_int("output_dtype", 0) != 0) {
    const int64_t od = n.attr_int("output_dtype", 0);
    qtype = od == 3 ? DType::kInt8 : od == 2 ? DType::kUInt8 : od == 5 ? DType::kInt16 : od == 4 ? DType::kUInt16 : DType::kFloat32;
  }
  PERCH_CHECK(n.attr_int("saturate", 1) == 1, n.describe(), ": saturate=0 applies to float8 only");
  return {quant::quantize(x, qdq_params(n, a, x.shape(), qtype))};
}

std::vector<Tensor> dequantize_linear(const Node& n, const Args& a, int64_t) {
  const Tensor& q = in(n, a, 0);
  if (q.dtype() == DType::kInt32 && has(a, 2))
    PERCH_CHECK(a[2]->dtype() == DType::kInt32, n.describe(), ": zero point type must match int32 data");
  return {quant::dequantize(q, qdq_params(n, a, q.shape(), q.dtype()))};
}

// DynamicQuantizeLinear (opset 11): uint8, range widened to include 0, scale = (max - min) / 255,
// zero point = saturate(round(0 - min / scale)). perch's asymmetric choose_params is exactly this.
std::vector<Tensor> dynamic_quantize_linear(const Node& n, const Args& a, int64_t) {
  const Tensor x = in(n, a, 0).to_f32();
  quant::QuantSpec spec;
  spec.bits = 8, spec.is_signed = false, spec.symmetric = false;
  const auto p = quant::params_from_tensor(spec, x);
  Tensor s = Tensor::scalar_f32(p.scale[0]);
  Tensor zp(DType::kUInt8, {});
  zp.data<uint8_t>()[0] = static_cast<uint8_t>(p.zero_point[0]);
  return {quant::quantize(x, p), s, zp};
}

}  // namespace

void register_quant_ops(OpRegistry& r) {
  r.add("QuantizeLinear", 10, quantize_linear);
  r.add("DequantizeLinear", 10, dequantize_linear);
  r.add("DynamicQuantizeLinear", 11, dynamic_quantize_linear);
}

void register_nn_ops(OpRegistry& r);
void register_elementwise_ops(OpRegistry& r);
void register_shape_ops(OpRegistry& r);
void register_coverage_ops(OpRegistry& r);  // ops_tensor.cpp
void register_qlinear_ops(OpRegistry& r);   // ops_qlinear.cpp

void register_builtin_ops(OpRegistry& r) {
  register_nn_ops(r);
  register_elementwise_ops(r);
  register_shape_ops(r);
  register_quant_ops(r);
  register_coverage_ops(r);
  register_qlinear_ops(r);
}

}  // namespace perch::runtime
