// Element-wise ops (unary activations, broadcasting binary arithmetic) for the float executor.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops_common.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

// Float unary ops: make(n) reads the node's attributes once per call and returns the per-element function (a
// lookup per element cost more than the arithmetic).
template <typename Make>
OpKernel unary_attr(Make make) {
  return [make](const Node& n, const Args& a, int64_t) -> std::vector<Tensor> {
    const auto f = make(n);
    const Tensor x = in(n, a, 0).to_f32();
    Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
    const float* xd = x.data<float>();
    float* yd = y.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) yd[i] = f(xd[i]);
    return {y};
  };
}

// The same for ops without attributes: f(x) -> y.
template <typename F>
OpKernel unary(F f) {
  return unary_attr([f](const Node&) { return f; });
}

template <typename T>
Tensor clip_typed(const Tensor& x, const Tensor* lo_t, const Tensor* hi_t) {
  T lo = std::numeric_limits<T>::lowest(), hi = std::numeric_limits<T>::max();
  if constexpr (std::is_floating_point_v<T>) lo = -std::numeric_limits<T>::infinity(), hi = std::numeric_limits<T>::infinity();
  if (lo_t) lo = lo_t->data<T>()[0];
  if (hi_t) hi = hi_t->data<T>()[0];
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  const T* xd = x.data<T>();
  T* yd = y.data<T>();
  for (int64_t i = 0; i < x.numel(); ++i) yd[i] = std::min(std::max(xd[i], lo), hi);
  return y;
}

// Clip keeps its input's type (opset 12 added integer types); min/max default to the type's full range.
std::vector<Tensor> clip(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x0 = in(n, a, 0);
  if (opset >= 12 && x0.dtype() != DType::kFloat32) {
    const Tensor* lo = has(a, 1) ? a[1] : nullptr;
    const Tensor* hi = has(a, 2) ? a[2] : nullptr;
    for (const Tensor* t : {lo, hi})
      PERCH_CHECK(!t || (t->dtype() == x0.dtype() && t->numel() == 1), n.describe(), ": min/max must be ",
                  dtype_name(x0.dtype()), " scalars");
    switch (x0.dtype()) {
      case DType::kFloat64: return {clip_typed<double>(x0, lo, hi)};
      case DType::kInt8: return {clip_typed<int8_t>(x0, lo, hi)};
      case DType::kUInt8: return {clip_typed<uint8_t>(x0, lo, hi)};
      case DType::kInt16: return {clip_typed<int16_t>(x0, lo, hi)};
      case DType::kUInt16: return {clip_typed<uint16_t>(x0, lo, hi)};
      case DType::kInt32: return {clip_typed<int32_t>(x0, lo, hi)};
      case DType::kInt64: return {clip_typed<int64_t>(x0, lo, hi)};
      default: PERCH_FAIL(n.describe(), ": Clip does not support ", dtype_name(x0.dtype()));
    }
  }
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (opset < 11) {
    lo = n.attr_float("min", lo);
    hi = n.attr_float("max", hi);
  } else {
    if (has(a, 1)) lo = a[1]->to_f32().data<float>()[0];
    if (has(a, 2)) hi = a[2]->to_f32().data<float>()[0];
  }
  const Tensor x = x0.to_f32();
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
  const float* xd = x.data<float>();  // hoisted: data<T>() checks the dtype on every call
  float* yd = y.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) yd[i] = std::min(std::max(xd[i], lo), hi);
  return {y};
}

template <typename T, typename F>
void broadcast_apply(const Tensor& A, const Tensor& B, Tensor& Y, F f) {
  const Shape& ys = Y.shape();
  const auto sa = detail::broadcast_strides(A.shape(), ys), sb = detail::broadcast_strides(B.shape(), ys);
  const T* ad = A.data<T>();
  const T* bd = B.data<T>();
  T* yd = Y.data<T>();
  const int64_t total = Y.numel();
  if (total == 0) return;
  if (A.shape() == B.shape()) {
    for (int64_t i = 0; i < total; ++i) yd[i] = f(ad[i], bd[i]);
    return;
  }
  if (ys.empty()) {
    yd[0] = f(ad[0], bd[0]);
    return;
  }
  // Merge neighbouring output dims that both inputs step through alike (each input either contiguous across the
  // two or broadcast along both), so e.g. [N,C,H,W] * [N,C,1,1] runs rows of H*W, not of W, and an operand with
  // one element beside a full one is a single row.
  Shape ms{ys[0]};
  std::vector<int64_t> ma{sa[0]}, mb{sb[0]};
  for (size_t d = 1; d < ys.size(); ++d) {
    if (ys[d] == 1) continue;  // a unit dim moves nothing
    const bool a_ok = ma.back() == sa[d] * ys[d], b_ok = mb.back() == sb[d] * ys[d];
    if (ms.back() == 1 || (a_ok && b_ok)) {  // index i_outer * ys[d] + i_inner steps by the inner strides
      ma.back() = sa[d], mb.back() = sb[d];
      ms.back() *= ys[d];
    } else {
      ms.push_back(ys[d]), ma.push_back(sa[d]), mb.push_back(sb[d]);
    }
  }
  // Iterate with the last merged dim as the inner loop (its strides are 0 or 1: one loop per case, so each
  // vectorizes).
  const size_t r = ms.size();
  const int64_t inner = ms[r - 1], ia = ma[r - 1], ib = mb[r - 1];
  std::vector<int64_t> idx(r, 0);
  for (int64_t base = 0; base < total; base += inner) {
    int64_t oa = 0, ob = 0;
    for (size_t d = 0; d + 1 < r; ++d) oa += idx[d] * ma[d], ob += idx[d] * mb[d];
    const T* ap = ad + oa;
    const T* bp = bd + ob;
    T* yp = yd + base;
    if (ia == 1 && ib == 0) {
      const T b0 = *bp;
      for (int64_t j = 0; j < inner; ++j) yp[j] = f(ap[j], b0);
    } else if (ia == 0 && ib == 1) {
      const T a0 = *ap;
      for (int64_t j = 0; j < inner; ++j) yp[j] = f(a0, bp[j]);
    } else if (ia == 1 && ib == 1) {
      for (int64_t j = 0; j < inner; ++j) yp[j] = f(ap[j], bp[j]);
    } else {
      for (int64_t j = 0; j < inner; ++j) yp[j] = f(ap[j * ia], bp[j * ib]);
    }
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) {
      if (++idx[d] < ms[d]) break;
      idx[d] = 0;
    }
  }
}

template <typename Op, typename T>
Tensor binary_typed(const Tensor& A, const Tensor& B, const Shape& ys) {
  Tensor y = Tensor::uninitialized(dtype_of<T>(), ys);
  broadcast_apply<T>(A, B, y, [](T x, T z) { return Op::template apply<T>(x, z); });
  return y;
}

// Both inputs of one type: the output has that type (ONNX's T for Add/Sub/Mul/Div/Max/Min). Narrow
// integers wrap like numpy (the result of the promoted int arithmetic is converted back modulo 2^bits).
// Mixed types (not valid ONNX, but tolerated) are computed in float32.
template <typename Op>
Tensor binary_tensors(const Node& n, const Tensor& A0, const Tensor& B0) {
  Shape ys = detail::broadcast_shape(A0.shape(), B0.shape(), n);
  if (A0.dtype() == B0.dtype()) {
    switch (A0.dtype()) {
      case DType::kFloat32: return binary_typed<Op, float>(A0, B0, ys);
      case DType::kFloat64: return binary_typed<Op, double>(A0, B0, ys);
      case DType::kInt8: return binary_typed<Op, int8_t>(A0, B0, ys);
      case DType::kUInt8: return binary_typed<Op, uint8_t>(A0, B0, ys);
      case DType::kInt16: return binary_typed<Op, int16_t>(A0, B0, ys);
      case DType::kUInt16: return binary_typed<Op, uint16_t>(A0, B0, ys);
      case DType::kInt32: return binary_typed<Op, int32_t>(A0, B0, ys);
      case DType::kInt64: return binary_typed<Op, int64_t>(A0, B0, ys);
      case DType::kBool: PERCH_FAIL(n.describe(), ": bool inputs are not supported");
      case DType::kFloat16:
      case DType::kBFloat16: PERCH_FAIL(n.describe(), ": a 16-bit float reached a typed kernel (the executor computes it in float32)");
    }
  }
  return binary_typed<Op, float>(A0.to_f32(), B0.to_f32(), ys);
}

template <typename Op>
std::vector<Tensor> binary(const Node& n, const Args& a, int64_t opset) {
  const Tensor& A = in(n, a, 0);
  return {binary_tensors<Op>(n, A, opset < 7 ? detail::legacy_broadcast_operand(n, A, in(n, a, 1)) : in(n, a, 1))};
}

// Max/Min take 1..N inputs, broadcast together from opset 8 (before: equal shapes, a subset).
template <typename Op>
std::vector<Tensor> variadic(const Node& n, const Args& a, int64_t) {
  Tensor y = in(n, a, 0);
  if (a.size() == 1) return {y.clone()};
  for (size_t i = 1; i < a.size(); ++i) y = binary_tensors<Op>(n, y, in(n, a, i));
  return {y};
}

struct AddOp { template <typename T> static T apply(T a, T b) { return a + b; } };
struct SubOp { template <typename T> static T apply(T a, T b) { return a - b; } };
struct MulOp { template <typename T> static T apply(T a, T b) { return a * b; } };
struct DivOp {
  template <typename T> static T apply(T a, T b) {
    if constexpr (std::is_integral_v<T>) {
      PERCH_CHECK(b != 0, "integer division by zero");
    }
    return a / b;
  }
};
struct MaxOp { template <typename T> static T apply(T a, T b) { return std::max(a, b); } };
struct MinOp { template <typename T> static T apply(T a, T b) { return std::min(a, b); } };

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void register_elementwise_ops(OpRegistry& r) {
  r.add("Relu", 1, unary([](float x) { return x > 0.0f ? x : 0.0f; }));
  r.add("LeakyRelu", 1, unary_attr([](const Node& n) {
          const float alpha = n.attr_float("alpha", 0.01f);
          return [alpha](float x) { return x >= 0.0f ? x : x * alpha; };
        }));
  r.add("Sigmoid", 1, unary([](float x) { return sigmoid(x); }));
  r.add("HardSigmoid", 1, unary_attr([](const Node& n) {
          const float alpha = n.attr_float("alpha", 0.2f), beta = n.attr_float("beta", 0.5f);
          return [alpha, beta](float x) { return std::clamp(alpha * x + beta, 0.0f, 1.0f); };
        }));
  // HardSwish(x) = x * max(0, min(1, x/6 + 1/2))   (ONNX: alpha = 1/6, beta = 0.5)
  r.add("HardSwish", 14, unary([](float x) { return x * std::clamp(x / 6.0f + 0.5f, 0.0f, 1.0f); }));
  r.add("Tanh", 1, unary([](float x) { return std::tanh(x); }));
  r.add("Exp", 1, unary([](float x) { return std::exp(x); }));
  r.add("Sqrt", 1, unary([](float x) { return std::sqrt(x); }));
  r.add("Abs", 1, unary([](float x) { return std::fabs(x); }));
  r.add("Neg", 1, unary([](float x) { return -x; }));
  r.add("Reciprocal", 1, unary([](float x) { return 1.0f / x; }));
  r.add("Clip", 1, clip);
  // Versions 1 and 6: the `broadcast` / `axis` attributes (detail::legacy_broadcast_operand).
  r.add("Add", 1, binary<AddOp>);
  r.add("Sub", 1, binary<SubOp>);
  r.add("Mul", 1, binary<MulOp>);
  r.add("Div", 1, binary<DivOp>);
  r.add("Max", 1, variadic<MaxOp>);
  r.add("Min", 1, variadic<MinOp>);
}

}  // namespace perch::runtime
