// Helpers for the typed (dtype-dispatching) op kernels of the float executor: tensor, reduce, math,
// resize and normalization ops (not a public header). The executor wraps every kernel error with the
// node's description, so kernels throw perch::Error with the reason only.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops_common.h"
#include "perch/core/tensor.h"
#include "perch/graph/ir.h"

namespace perch::runtime::detail {

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the C++ type of `t`.
template <typename F>
decltype(auto) visit_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32: return f(Tag<float>{});
    case DType::kFloat64: return f(Tag<double>{});
    case DType::kInt8: return f(Tag<int8_t>{});
    case DType::kUInt8: return f(Tag<uint8_t>{});
    case DType::kInt16: return f(Tag<int16_t>{});
    case DType::kUInt16: return f(Tag<uint16_t>{});
    case DType::kInt32: return f(Tag<int32_t>{});
    case DType::kInt64: return f(Tag<int64_t>{});
    case DType::kBool: return f(Tag<bool>{});
    case DType::kFloat16:  // computed in float32 by the executor (Executor::run), never by a typed kernel
    case DType::kBFloat16:
      PERCH_FAIL("float16 reached a typed kernel (the executor computes float16 ops in float32)");
  }
  PERCH_FAIL("unknown dtype");
}

// Row-major element strides of `shape`.
inline std::vector<int64_t> strides_of(const Shape& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) s[d] = s[d + 1] * shape[d + 1];
  return s;
}

// Walks every index of `shape` in row-major order, keeping one offset per stride set up to date:
// offsets()[k] = sum_d index[d] * strides[k][d]. Usage: for (Walker w(shape, {s0, s1}); w.valid(); w.next()) ...
class Walker {
 public:
  Walker(const Shape& shape, std::vector<std::vector<int64_t>> strides)
      : shape_(shape), strides_(std::move(strides)), idx_(shape.size(), 0), off_(strides_.size(), 0) {
    valid_ = true;
    for (int64_t d : shape_) valid_ = valid_ && d > 0;
  }
  bool valid() const { return valid_; }
  const std::vector<int64_t>& index() const { return idx_; }
  int64_t offset(size_t k) const { return off_[k]; }
  void next() {
    for (int64_t d = static_cast<int64_t>(shape_.size()) - 1; d >= 0; --d) {
      if (++idx_[d] < shape_[d]) {
        for (size_t k = 0; k < off_.size(); ++k) off_[k] += strides_[k][d];
        return;
      }
      for (size_t k = 0; k < off_.size(); ++k) off_[k] -= (shape_[d] - 1) * strides_[k][d];
      idx_[d] = 0;
    }
    valid_ = false;
  }

 private:
  Shape shape_;
  std::vector<std::vector<int64_t>> strides_;
  std::vector<int64_t> idx_, off_;
  bool valid_ = false;
};

// Axes in [-r, r) normalized to [0, r); refuses duplicates.
inline std::vector<int64_t> normalize_axes(const std::vector<int64_t>& axes, int64_t r) {
  std::vector<int64_t> out;
  for (int64_t a : axes) {
    PERCH_CHECK(a >= -r && a < r, "axis ", a, " out of range for rank ", r);
    const int64_t v = a < 0 ? a + r : a;
    for (int64_t o : out) PERCH_CHECK(o != v, "axis ", a, " is repeated");
    out.push_back(v);
  }
  return out;
}

// Refuses a tensor that is not float32 or float64, naming it (`what`).
inline void check_float(const Tensor& t, const char* what) {
  PERCH_CHECK(t.dtype() == DType::kFloat32 || t.dtype() == DType::kFloat64, what, " must be float32 or float64, got ",
              dtype_name(t.dtype()));
}

// ONNX TensorProto.DataType code -> perch DType (Cast's `to`, the signal ops' output_datatype); names the
// unsupported ones.
DType onnx_elem_type(int64_t code);

// The single value of a scalar (or 1-element) tensor as double.
inline double scalar_value(const Tensor& t, const char* what) {
  PERCH_CHECK(t.numel() == 1, what, " must have one element, got shape ", shape_str(t.shape()));
  return visit_dtype(t.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return static_cast<double>(t.data<T>()[0]);
  });
}

}  // namespace perch::runtime::detail
