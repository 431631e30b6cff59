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

template <typename F>
OpKernel unary(F f) {
  return [f](const Node& n, const Args& a, int64_t) -> std::vector<Tensor> {
    const Tensor x = in(n, a, 0).to_f32();
    Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
    const float* xd = x.data<float>();
    float* yd = y.data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) yd[i] = f(n, xd[i]);
    return {y};
  };
}

std::vector<Tensor> clip(const Node& n, const Args& a, int64_t opset) {
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (opset < 11) {
    lo = n.attr_float("min", lo);
    hi = n.attr_float("max", hi);
  } else {
    if (has(a, 1)) lo = a[1]->to_f32().data<float>()[0];
    if (has(a, 2)) hi = a[2]->to_f32().data<float>()[0];
  }
  const Tensor x = in(n, a, 0).to_f32();
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y.data<float>()[i] = std::min(std::max(x.data<float>()[i], lo), hi);
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
  // Iterate with the last dim as the inner loop.
  const size_t r = ys.size();
  if (r == 0) {
    yd[0] = f(ad[0], bd[0]);
    return;
  }
  const int64_t inner = ys[r - 1], ia = sa[r - 1], ib = sb[r - 1];
  std::vector<int64_t> idx(r, 0);
  for (int64_t base = 0; base < total; base += inner) {
    int64_t oa = 0, ob = 0;
    for (size_t d = 0; d + 1 < r; ++d) oa += idx[d] * sa[d], ob += idx[d] * sb[d];
    for (int64_t j = 0; j < inner; ++j) yd[base + j] = f(ad[oa + j * ia], bd[ob + j * ib]);
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) {
      if (++idx[d] < ys[d]) break;
      idx[d] = 0;
    }
  }
}

template <typename Op>
std::vector<Tensor> binary(const Node& n, const Args& a, int64_t) {
  const Tensor& A0 = in(n, a, 0);
  const Tensor& B0 = in(n, a, 1);
  Shape ys = detail::broadcast_shape(A0.shape(), B0.shape(), n);
  if (A0.dtype() == DType::kInt64 && B0.dtype() == DType::kInt64) {
    Tensor y(DType::kInt64, ys);
    broadcast_apply<int64_t>(A0, B0, y, [](int64_t x, int64_t z) { return Op::template apply<int64_t>(x, z); });
    return {y};
  }
  if (A0.dtype() == DType::kInt32 && B0.dtype() == DType::kInt32) {
    Tensor y(DType::kInt32, ys);
    broadcast_apply<int32_t>(A0, B0, y, [](int32_t x, int32_t z) { return Op::template apply<int32_t>(x, z); });
    return {y};
  }
  const Tensor A = A0.to_f32(), B = B0.to_f32();
  Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
  broadcast_apply<float>(A, B, y, [](float x, float z) { return Op::template apply<float>(x, z); });
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
  r.add("Relu", 1, unary([](const Node&, float x) { return x > 0.0f ? x : 0.0f; }));
  r.add("LeakyRelu", 1, unary([](const Node& n, float x) { return x >= 0.0f ? x : x * n.attr_float("alpha", 0.01f); }));
  r.add("Sigmoid", 1, unary([](const Node&, float x) { return sigmoid(x); }));
  r.add("HardSigmoid", 1, unary([](const Node& n, float x) {
          return std::clamp(n.attr_float("alpha", 0.2f) * x + n.attr_float("beta", 0.5f), 0.0f, 1.0f);
        }));
  // HardSwish(x) = x * max(0, min(1, x/6 + 1/2))   (ONNX: alpha = 1/6, beta = 0.5)
  r.add("HardSwish", 14, unary([](const Node&, float x) { return x * std::clamp(x / 6.0f + 0.5f, 0.0f, 1.0f); }));
  r.add("Tanh", 1, unary([](const Node&, float x) { return std::tanh(x); }));
  r.add("Exp", 1, unary([](const Node&, float x) { return std::exp(x); }));
  r.add("Sqrt", 1, unary([](const Node&, float x) { return std::sqrt(x); }));
  r.add("Abs", 1, unary([](const Node&, float x) { return std::fabs(x); }));
  r.add("Neg", 1, unary([](const Node&, float x) { return -x; }));
  r.add("Reciprocal", 1, unary([](const Node&, float x) { return 1.0f / x; }));
  r.add("Clip", 1, clip);
  r.add("Add", 7, binary<AddOp>);
  r.add("Sub", 7, binary<SubOp>);
  r.add("Mul", 7, binary<MulOp>);
  r.add("Div", 7, binary<DivOp>);
  r.add("Max", 8, binary<MaxOp>);
  r.add("Min", 8, binary<MinOp>);
}

}  // namespace perch::runtime
