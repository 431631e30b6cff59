// Gradients of the ops a CNN classifier is made of (conventions in perch/train/autograd.h).
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "perch/core/error.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/kernels/pool_f32.h"
#include "perch/runtime/op_geometry.h"
#include "perch/train/autograd.h"

namespace perch::train {

using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

const Tensor& dy(const GradArgs& a, size_t i = 0) {
  PERCH_CHECK(i < a.grad_outputs.size() && a.grad_outputs[i], a.node.describe(), ": no gradient for output ", i);
  return *a.grad_outputs[i];
}

const Tensor& input(const GradArgs& a, size_t i) {
  PERCH_CHECK(i < a.inputs.size() && a.inputs[i], a.node.describe(), ": input ", i, " is missing");
  PERCH_CHECK(a.inputs[i]->dtype() == DType::kFloat32, a.node.describe(), ": gradients need float32 input ", i,
              ", got ", dtype_name(a.inputs[i]->dtype()));
  return *a.inputs[i];
}

const Tensor& output(const GradArgs& a, size_t i = 0) {
  PERCH_CHECK(i < a.outputs.size() && a.outputs[i], a.node.describe(), ": output ", i, " was not kept");
  return *a.outputs[i];
}

bool wants(const GradArgs& a, size_t i) { return i < a.needs.size() && a.needs[i]; }

// Sums with 8 independent lanes (the compiler vectorizes them; a single float accumulator it may not
// reorder). Lanes are added in a fixed order, so results do not depend on threads.
float lane_sum(const float* p, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += p[i + k];
  float s = 0.0f;
  for (; i < n; ++i) s += p[i];
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// sum (p[i] - m)^2
float lane_sqdev(const float* p, int64_t n, float m) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += (p[i + k] - m) * (p[i + k] - m);
  float s = 0.0f;
  for (; i < n; ++i) s += (p[i] - m) * (p[i] - m);
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// sum q[i] * (p[i] - m)
float lane_dot_dev(const float* q, const float* p, int64_t n, float m) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += q[i + k] * (p[i + k] - m);
  float s = 0.0f;
  for (; i < n; ++i) s += q[i] * (p[i] - m);
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// Strides for reading `shape` (right-aligned) as `out`: 0 on broadcast dimensions.
std::vector<int64_t> bcast_strides(const Shape& shape, const Shape& out) {
  std::vector<int64_t> st(out.size(), 0);
  int64_t stride = 1;
  for (int64_t i = static_cast<int64_t>(shape.size()) - 1, j = static_cast<int64_t>(out.size()) - 1; i >= 0; --i, --j) {
    st[static_cast<size_t>(j)] = shape[static_cast<size_t>(i)] == 1 ? 0 : stride;
    stride *= shape[static_cast<size_t>(i)];
  }
  return st;
}

// Calls fn(i, k) for every flat index i of `out` with k = sum_d idx[d] * st[d] (idx: i's multi-index).
template <typename F>
void for_each_strided(const Shape& out, const std::vector<int64_t>& st, F&& fn) {
  const int64_t total = checked_numel(out);
  if (total == 0) return;
  const size_t r = out.size();
  if (r == 0) return fn(0, 0);
  // Innermost dimension as a tight loop.
  const int64_t inner = out[r - 1], ist = st[r - 1];
  std::vector<int64_t> idx(r, 0);
  int64_t base = 0;
  for (int64_t i = 0; i < total; i += inner) {
    for (int64_t j = 0; j < inner; ++j) fn(i + j, base + j * ist);
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) {
      const auto du = static_cast<size_t>(d);
      base += st[du];
      if (++idx[du] < out[du]) break;
      base -= st[du] * out[du];
      idx[du] = 0;
    }
  }
}

// Calls fn(i, k) for every flat index i of `out` with k the flat index of the broadcast source of `shape`.
template <typename F>
void for_each_bcast(const Shape& shape, const Shape& out, F&& fn) {
  for_each_strided(out, bcast_strides(shape, out), fn);
}

// Sums g (shape `out`) over the dimensions where `shape` was broadcast: the gradient of a broadcast read.
Tensor reduce_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  Tensor r(DType::kFloat32, shape);
  float* rd = r.data<float>();
  const float* gd = g.data<float>();
  for_each_bcast(shape, g.shape(), [&](int64_t i, int64_t k) { rd[k] += gd[i]; });
  return r;
}

// t broadcast to `out` (materialized).
Tensor expand_to(const Tensor& t, const Shape& out) {
  if (t.shape() == out) return t;
  Tensor r = Tensor::uninitialized(DType::kFloat32, out);
  float* rd = r.data<float>();
  const float* td = t.data<float>();
  for_each_bcast(t.shape(), out, [&](int64_t i, int64_t k) { rd[i] = td[k]; });
  return r;
}

// out[i] = f(x[i], y[i], g[i]) for an elementwise op with input x, output y and output gradient g.
template <typename F>
std::vector<Tensor> unary(const GradArgs& a, F&& f) {
  const Tensor& x = input(a, 0);
  const Tensor& y = output(a);
  const Tensor& g = dy(a);
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());
  const float *xd = x.data<float>(), *yd = y.data<float>(), *gd = g.data<float>();
  float* d = dx.data<float>();
  // Elementwise, so splitting long tensors over the thread pool gives the same result.
  auto body = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) d[i] = f(xd[i], yd[i], gd[i]);
  };
  if (x.numel() < 65536) body(0, x.numel());
  else parallel_for(0, x.numel(), body, 32768);
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dx;
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor r = Tensor::uninitialized(DType::kFloat32, a.shape());
  const float *ad = a.data<float>(), *bd = b.data<float>();
  float* rd = r.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) rd[i] = ad[i] * bd[i];
  return r;
}

Tensor scaled(const Tensor& a, float s) {
  Tensor r = Tensor::uninitialized(DType::kFloat32, a.shape());
  const float* ad = a.data<float>();
  float* rd = r.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i) rd[i] = ad[i] * s;
  return r;
}

// ---- elementwise binary (NumPy broadcasting) ----

std::vector<Tensor> add_sub(const GradArgs& a, float sign_b) {
  const Tensor& g = dy(a);
  std::vector<Tensor> out(2);
  if (wants(a, 0)) out[0] = reduce_to(g, input(a, 0).shape());
  if (wants(a, 1)) {
    Tensor r = reduce_to(g, input(a, 1).shape());
    out[1] = sign_b == 1.0f ? r : scaled(r, sign_b);
  }
  return out;
}

std::vector<Tensor> mul_grad(const GradArgs& a) {
  const Tensor& g = dy(a);
  std::vector<Tensor> out(2);
  if (wants(a, 0)) out[0] = reduce_to(mul(g, expand_to(input(a, 1), g.shape())), input(a, 0).shape());
  if (wants(a, 1)) out[1] = reduce_to(mul(g, expand_to(input(a, 0), g.shape())), input(a, 1).shape());
  return out;
}

// y = a / b: da = g / b, db = -g * y / b.
std::vector<Tensor> div_grad(const GradArgs& a) {
  const Tensor& g = dy(a);
  const Tensor b = expand_to(input(a, 1), g.shape());
  const float *gd = g.data<float>(), *bd = b.data<float>(), *yd = output(a).data<float>();
  std::vector<Tensor> out(2);
  if (wants(a, 0)) {
    Tensor t = Tensor::uninitialized(DType::kFloat32, g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) t.data<float>()[i] = gd[i] / bd[i];
    out[0] = reduce_to(t, input(a, 0).shape());
  }
  if (wants(a, 1)) {
    Tensor t = Tensor::uninitialized(DType::kFloat32, g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) t.data<float>()[i] = -gd[i] * yd[i] / bd[i];
    out[1] = reduce_to(t, input(a, 1).shape());
  }
  return out;
}

// ---- Conv, Gemm, MatMul ----

std::vector<Tensor> conv_grad(const GradArgs& a) {
  const Tensor& x = input(a, 0);
  const Tensor& w = input(a, 1);
  const Tensor& g = dy(a);
  // 1-D/2-D: the 2-D kernels; 3-D: the N-d gradient loops.
  std::function<void(float*)> data_grad;
  std::function<void(float*, float*)> weight_grad;
  int64_t out_channels = w.dim(0);
  if (x.rank() >= 5) {
    const kernels::ConvNdShape s = runtime::conv_nd_shape(a.node, x.shape(), w.shape());
    data_grad = [&, s](float* dx) { kernels::conv_nd_backward_data_f32(s, g.data<float>(), w.data<float>(), dx); };
    weight_grad = [&, s](float* dw, float* db) { kernels::conv_nd_backward_weight_f32(s, x.data<float>(), g.data<float>(), dw, db); };
  } else {
    const kernels::Conv2dShape s = runtime::conv2d_shape(a.node, x.shape(), w.shape());
    out_channels = s.out_channels;
    data_grad = [&, s](float* dx) { kernels::conv2d_backward_data(s, g.data<float>(), w.data<float>(), dx); };
    weight_grad = [&, s](float* dw, float* db) { kernels::conv2d_backward_weight(s, x.data<float>(), g.data<float>(), dw, db); };
  }
  std::vector<Tensor> out(a.inputs.size());
  if (wants(a, 0)) {
    out[0] = Tensor::uninitialized(DType::kFloat32, x.shape());
    data_grad(out[0].data<float>());
  }
  if (wants(a, 1) || wants(a, 2)) {
    Tensor dw = Tensor::uninitialized(DType::kFloat32, w.shape());
    Tensor db = Tensor::uninitialized(DType::kFloat32, {out_channels});
    weight_grad(dw.data<float>(), db.data<float>());
    if (wants(a, 1)) out[1] = dw;
    if (wants(a, 2)) out[2] = db.reshaped(input(a, 2).shape());
  }
  return out;
}

// C (m x n) = alpha * op(A) * op(B) (+ beta * C).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C) {
  kernels::GemmF32Args g;
  g.trans_a = ta, g.trans_b = tb, g.m = m, g.n = n, g.k = k, g.alpha = alpha, g.beta = beta;
  g.a = A, g.lda = lda, g.b = B, g.ldb = ldb, g.c = C, g.ldc = n;
  kernels::gemm_f32(g);
}

// Y = alpha op(A) op(B) + beta C with op(A) M x K, op(B) K x N:
//   d op(A) = alpha dY op(B)^T,  d op(B) = alpha op(A)^T dY,  dC = beta * (dY summed to C's shape).
std::vector<Tensor> gemm_grad(const GradArgs& a) {
  const Tensor &A = input(a, 0), &B = input(a, 1), &g = dy(a);
  const bool ta = a.node.attr_int("transA", 0) != 0, tb = a.node.attr_int("transB", 0) != 0;
  const float alpha = a.node.attr_float("alpha", 1.0f), beta = a.node.attr_float("beta", 1.0f);
  const int64_t M = g.dim(0), N = g.dim(1), K = ta ? A.dim(0) : A.dim(1);
  std::vector<Tensor> out(a.inputs.size());
  const float *Ad = A.data<float>(), *Bd = B.data<float>(), *gd = g.data<float>();
  if (wants(a, 0)) {
    out[0] = Tensor::uninitialized(DType::kFloat32, A.shape());
    if (!ta)  // dA (M x K) = alpha dY op(B)^T
      gemm(false, !tb, M, K, N, alpha, gd, N, Bd, B.dim(1), 0.0f, out[0].data<float>());
    else  // dA (K x M) = alpha op(B) dY^T
      gemm(tb, true, K, M, N, alpha, Bd, B.dim(1), gd, N, 0.0f, out[0].data<float>());
  }
  if (wants(a, 1)) {
    out[1] = Tensor::uninitialized(DType::kFloat32, B.shape());
    if (!tb)  // dB (K x N) = alpha op(A)^T dY
      gemm(!ta, false, K, N, M, alpha, Ad, A.dim(1), gd, N, 0.0f, out[1].data<float>());
    else  // dB (N x K) = alpha dY^T op(A)
      gemm(true, ta, N, K, M, alpha, gd, N, Ad, A.dim(1), 0.0f, out[1].data<float>());
  }
  if (wants(a, 2) && a.inputs[2]) {
    Tensor r = reduce_to(g, a.inputs[2]->shape());
    out[2] = beta == 1.0f ? r : scaled(r, beta);
  }
  return out;
}

// MatMul with A [..., M, K] and B [K, N] or B [..., K, N] with the same leading dimensions.
std::vector<Tensor> matmul_grad(const GradArgs& a) {
  const Tensor &A = input(a, 0), &B = input(a, 1), &g = dy(a);
  PERCH_CHECK(A.rank() >= 2 && B.rank() >= 2, a.node.describe(), ": MatMul gradients need inputs of rank >= 2");
  const int64_t M = A.dim(-2), K = A.dim(-1), N = B.dim(-1);
  const int64_t batch = A.numel() / std::max<int64_t>(1, M * K);
  const bool shared_b = B.rank() == 2;
  PERCH_CHECK(shared_b || (B.rank() == A.rank() && B.numel() / std::max<int64_t>(1, K * N) == batch),
              a.node.describe(), ": MatMul gradients support a 2-D B or equal batch dimensions, got ",
              shape_str(A.shape()), " x ", shape_str(B.shape()));
  std::vector<Tensor> out(2);
  if (wants(a, 0)) out[0] = Tensor::uninitialized(DType::kFloat32, A.shape());
  if (wants(a, 1)) out[1] = Tensor(DType::kFloat32, B.shape());
  if (shared_b && wants(a, 1))  // dB = A^T dY over all rows of all batches at once
    gemm(true, false, K, N, batch * M, 1.0f, A.data<float>(), K, g.data<float>(), N, 0.0f, out[1].data<float>());
  for (int64_t b = 0; b < batch; ++b) {
    const float* Bb = B.data<float>() + (shared_b ? 0 : b * K * N);
    const float* gb = g.data<float>() + b * M * N;
    if (wants(a, 0)) gemm(false, true, M, K, N, 1.0f, gb, N, Bb, N, 0.0f, out[0].data<float>() + b * M * K);
    if (!shared_b && wants(a, 1))
      gemm(true, false, K, N, M, 1.0f, A.data<float>() + b * M * K, K, gb, N, 0.0f, out[1].data<float>() + b * K * N);
  }
  return out;
}

// ---- BatchNormalization ----

struct BnView {
  int64_t n, c, inner;
};

BnView bn_view(const Node& node, const Tensor& x) {
  PERCH_CHECK(x.rank() >= 2, node.describe(), ": input must have rank >= 2");
  return {x.dim(0), x.dim(1), x.numel() / std::max<int64_t>(1, x.dim(0) * x.dim(1))};
}

// Whether a BatchNormalization forward in this mode normalizes with the batch's statistics (kFrozenStatistics).
bool batch_statistics(const Node& n, bool training) { return training && n.attr_int(kFrozenStatistics, 0) == 0; }

// Training: batch mean and population variance per channel (double sums). saved = {mean, invstd}.
std::vector<Tensor> bn_forward(const Node& node, const Args& args, int64_t, ForwardContext& ctx) {
  for (size_t i = 0; i < 5; ++i)
    PERCH_CHECK(i < args.size() && args[i] && args[i]->dtype() == DType::kFloat32, node.describe(),
                ": training needs float32 inputs X, scale, B, mean, var");
  const Tensor &x = *args[0], &sc = *args[1], &b = *args[2], &rm = *args[3], &rv = *args[4];
  const BnView v = bn_view(node, x);
  for (const Tensor* t : {&sc, &b, &rm, &rv})
    PERCH_CHECK(t->numel() == v.c, node.describe(), ": parameter has ", t->numel(), " values for ", v.c, " channels");
  const float eps = node.attr_float("epsilon", 1e-5f), momentum = node.attr_float("momentum", 0.9f);
  Tensor mean(DType::kFloat32, {v.c}), invstd(DType::kFloat32, {v.c});
  const float* xd = x.data<float>();
  const int64_t cnt = v.n * v.inner;
  if (batch_statistics(node, ctx.training)) {
    PERCH_CHECK(cnt > 1, node.describe(), ": batch statistics need more than one value per channel");
    Tensor nrm(DType::kFloat32, {v.c}), nrv(DType::kFloat32, {v.c});
    parallel_for(0, v.c, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double s = 0.0, s2 = 0.0;
        for (int64_t i = 0; i < v.n; ++i) s += lane_sum(xd + (i * v.c + c) * v.inner, v.inner);
        const double mu = s / static_cast<double>(cnt);
        for (int64_t i = 0; i < v.n; ++i) s2 += lane_sqdev(xd + (i * v.c + c) * v.inner, v.inner, static_cast<float>(mu));
        const double var = s2 / static_cast<double>(cnt);
        mean.data<float>()[c] = static_cast<float>(mu);
        invstd.data<float>()[c] = static_cast<float>(1.0 / std::sqrt(var + eps));
        nrm.data<float>()[c] = momentum * rm.data<float>()[c] + (1.0f - momentum) * static_cast<float>(mu);
        nrv.data<float>()[c] = momentum * rv.data<float>()[c] +
                               (1.0f - momentum) * static_cast<float>(var * static_cast<double>(cnt) / static_cast<double>(cnt - 1));
      }
    });
    PERCH_CHECK(!node.input(3).empty() && !node.input(4).empty(), node.describe(), ": running statistics missing");
    ctx.updates.emplace_back(node.input(3), nrm);
    ctx.updates.emplace_back(node.input(4), nrv);
  } else {
    for (int64_t c = 0; c < v.c; ++c) {
      mean.data<float>()[c] = rm.data<float>()[c];
      invstd.data<float>()[c] = 1.0f / std::sqrt(rv.data<float>()[c] + eps);
    }
  }
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
  float* yd = y.data<float>();
  parallel_for(0, v.n * v.c, [&](int64_t lo, int64_t hi) {
    for (int64_t ic = lo; ic < hi; ++ic) {
      const int64_t c = ic % v.c;
      const float k = sc.data<float>()[c] * invstd.data<float>()[c];
      const float off = b.data<float>()[c] - mean.data<float>()[c] * k;
      const float* p = xd + ic * v.inner;
      float* q = yd + ic * v.inner;
      for (int64_t j = 0; j < v.inner; ++j) q[j] = p[j] * k + off;
    }
  });
  ctx.saved = {mean, invstd};
  return {y};
}

// x^ = (x - mean) invstd, y = scale x^ + B:
//   dB = sum dy, dscale = sum dy x^,
//   batch statistics:  dx = scale invstd / cnt * (cnt dy - dB - x^ dscale)
//   running (frozen):  dx = scale invstd dy
std::vector<Tensor> bn_grad(const GradArgs& a) {
  const Tensor &x = input(a, 0), &sc = input(a, 1), &g = dy(a);
  PERCH_CHECK(a.saved.size() == 2, a.node.describe(), ": BatchNormalization backward without its forward state");
  const BnView v = bn_view(a.node, x);
  const float *xd = x.data<float>(), *gd = g.data<float>();
  const float *mean = a.saved[0].data<float>(), *invstd = a.saved[1].data<float>();
  const bool batch = batch_statistics(a.node, a.training);
  const double cnt = static_cast<double>(v.n * v.inner);
  std::vector<Tensor> out(a.inputs.size());
  Tensor dsc(DType::kFloat32, {v.c}), db(DType::kFloat32, {v.c});
  Tensor dx;
  if (wants(a, 0)) dx = Tensor::uninitialized(DType::kFloat32, x.shape());
  parallel_for(0, v.c, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double sb = 0.0, ss = 0.0;
      const float mu = mean[c], is = invstd[c];
      for (int64_t i = 0; i < v.n; ++i) {
        const float* p = xd + (i * v.c + c) * v.inner;
        const float* q = gd + (i * v.c + c) * v.inner;
        sb += lane_sum(q, v.inner);
        ss += lane_dot_dev(q, p, v.inner, mu);
      }
      ss *= is;
      db.data<float>()[c] = static_cast<float>(sb);
      dsc.data<float>()[c] = static_cast<float>(ss);
      if (dx.empty()) continue;
      const float k = sc.data<float>()[c] * is;
      const float mb = static_cast<float>(sb / cnt), ms = static_cast<float>(ss / cnt) * is;
      for (int64_t i = 0; i < v.n; ++i) {
        const float* p = xd + (i * v.c + c) * v.inner;
        const float* q = gd + (i * v.c + c) * v.inner;
        float* d = dx.data<float>() + (i * v.c + c) * v.inner;
        if (batch)
          for (int64_t j = 0; j < v.inner; ++j) d[j] = k * (q[j] - mb - (p[j] - mu) * ms);
        else
          for (int64_t j = 0; j < v.inner; ++j) d[j] = k * q[j];
      }
    }
  });
  out[0] = dx;
  if (wants(a, 1)) out[1] = dsc.reshaped(a.inputs[1]->shape());
  if (wants(a, 2)) out[2] = db.reshaped(a.inputs[2]->shape());
  return out;
}

// ---- pooling ----

std::vector<Tensor> pool_grad(const GradArgs& a, bool is_max) {
  const Tensor &x = input(a, 0), &g = dy(a);
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());
  if (x.rank() >= 5) {  // 3-D: the N-d loops
    const kernels::PoolNdShape s = runtime::pool_nd_shape(a.node, x.shape());
    if (is_max) kernels::maxpool_nd_backward_f32(s, x.data<float>(), g.data<float>(), dx.data<float>());
    else kernels::avgpool_nd_backward_f32(s, g.data<float>(), dx.data<float>());
    return {dx};
  }
  const kernels::Pool2dShape s = runtime::pool2d_shape(a.node, x.shape());
  if (is_max) kernels::maxpool2d_backward_f32(s, x.data<float>(), g.data<float>(), dx.data<float>());
  else kernels::avgpool2d_backward_f32(s, g.data<float>(), dx.data<float>());
  return {dx};
}

std::vector<Tensor> global_avg_grad(const GradArgs& a) {
  const Tensor &x = input(a, 0), &g = dy(a);
  const int64_t nc = x.dim(0) * x.dim(1), inner = x.numel() / std::max<int64_t>(1, nc);
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < nc; ++i) {
    const float v = g.data<float>()[i] / static_cast<float>(inner);
    std::fill(dx.data<float>() + i * inner, dx.data<float>() + (i + 1) * inner, v);
  }
  return {dx};
}

// ---- shape ops ----

std::vector<Tensor> reshape_grad(const GradArgs& a) {
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dy(a).reshaped(input(a, 0).shape());
  return out;
}

std::vector<Tensor> transpose_grad(const GradArgs& a) {
  const Tensor& g = dy(a);
  std::vector<int64_t> perm = a.node.attr_ints("perm");
  if (perm.empty())
    for (int64_t i = g.rank() - 1; i >= 0; --i) perm.push_back(i);
  std::vector<int64_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[static_cast<size_t>(perm[i])] = static_cast<int64_t>(i);
  Node t;
  t.op_type = "Transpose";
  t.name = a.node.name + "/grad";
  t.attrs["perm"] = inv;
  const runtime::OpKernel* k = runtime::builtin_registry().find("Transpose", "", a.opset);
  PERCH_CHECK(k, "Transpose kernel missing");
  return {(*k)(t, {&g}, a.opset).at(0)};
}

std::vector<Tensor> concat_grad(const GradArgs& a) {
  const Tensor& g = dy(a);
  const int64_t axis = normalize_axis(a.node.attr_int("axis", 0), g.rank(), a.node.describe());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= g.dim(d);
  for (int64_t d = axis + 1; d < g.rank(); ++d) inner *= g.dim(d);
  std::vector<Tensor> out(a.inputs.size());
  int64_t offset = 0;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const int64_t len = a.inputs[i]->dim(axis);
    if (wants(a, i)) {
      out[i] = Tensor::uninitialized(DType::kFloat32, a.inputs[i]->shape());
      for (int64_t o = 0; o < outer; ++o)
        std::copy(g.data<float>() + (o * g.dim(axis) + offset) * inner,
                  g.data<float>() + (o * g.dim(axis) + offset + len) * inner, out[i].data<float>() + o * len * inner);
    }
    offset += len;
  }
  return out;
}

// Slice: each element of x is read at most once, so dx is g at the elements read and 0 elsewhere.
std::vector<Tensor> slice_grad(const GradArgs& a) {
  const Tensor& x = input(a, 0);
  const Tensor& g = dy(a);
  const runtime::SliceView v = runtime::slice_view(a.node, a.inputs, a.opset, x.shape());
  Tensor dx(DType::kFloat32, x.shape());
  float* d = dx.data<float>() + v.base;
  const float* gd = g.data<float>();
  for_each_strided(v.shape, v.strides, [&](int64_t i, int64_t k) { d[k] = gd[i]; });
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dx;
  return out;
}

// ConvTranspose is the data gradient of a convolution (runtime::conv_transpose_geometry's `as_conv`: input in y's
// space, output in x's, weights w as they are): y = conv^T(x) + b. So dx = conv(dy), dw = that convolution's weight
// gradient for input dy and output gradient x, and db[m] = sum of dy[., m, ...] over images and positions.
std::vector<Tensor> conv_transpose_grad(const GradArgs& a) {
  const Tensor& x = input(a, 0);
  const Tensor& w = input(a, 1);
  const Tensor& g = dy(a);
  const runtime::ConvTransposeGeometry geo = runtime::conv_transpose_geometry(a.node, x.shape(), w.shape());
  PERCH_CHECK(geo.as_conv, a.node.describe(), ": no gradient for a ConvTranspose with ", x.rank() - 2,
              " spatial dims and output ", shape_str(geo.out), " (1-D/2-D, at most the full output size)");
  const kernels::Conv2dShape& cs = *geo.as_conv;
  std::vector<Tensor> out(a.inputs.size());
  if (wants(a, 0)) {
    out[0] = Tensor::uninitialized(DType::kFloat32, x.shape());
    kernels::conv2d_f32(cs, g.data<float>(), w.data<float>(), nullptr, out[0].data<float>());
  }
  if (wants(a, 1)) {
    out[1] = Tensor::uninitialized(DType::kFloat32, w.shape());
    kernels::conv2d_backward_weight(cs, g.data<float>(), x.data<float>(), out[1].data<float>(), nullptr);
  }
  if (wants(a, 2)) {
    const int64_t N = g.dim(0), M = g.dim(1), plane = g.numel() / std::max<int64_t>(N * M, 1);
    Tensor db(DType::kFloat32, {M});
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) db.data<float>()[m] += lane_sum(g.data<float>() + (n * M + m) * plane, plane);
    out[2] = db.reshaped(input(a, 2).shape());
  }
  return out;
}

// Resize / Upsample are linear in x (runtime::resize_map): y = P_0 ... P_{r-1} x, one pass per resized dim, so
// dx = P_{r-1}^T ... P_0^T dy — each transposed pass scatters an output index's gradient to its taps
// (dx[.., tap.index, ..] += tap.weight * dy[.., j, ..]); extrapolated outputs (tf_crop_and_resize outside the crop)
// send nothing back. The passes act on different dims, so their order does not matter. In double, like the forward.
std::vector<Tensor> resize_grad(const GradArgs& a) {
  const Tensor& x = input(a, 0);
  const Tensor& g = dy(a);
  const runtime::ResizeMap m = runtime::resize_map(a.node, a.inputs, a.opset, x.shape());
  PERCH_CHECK(g.shape() == m.out, a.node.describe(), ": output gradient ", shape_str(g.shape()), ", expected ",
              shape_str(m.out));
  std::vector<double> buf(g.data<float>(), g.data<float>() + g.numel());
  Shape cur = m.out;
  for (int64_t d = 0; d < x.rank(); ++d) {
    if (m.identity[d]) continue;
    const int64_t len = x.dim(d), out_len = cur[d];
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < d; ++k) outer *= cur[k];
    for (int64_t k = d + 1; k < x.rank(); ++k) inner *= cur[k];
    std::vector<double> back(static_cast<size_t>(outer * len * inner), 0.0);
    for (int64_t j = 0; j < out_len; ++j)
      for (const runtime::ResizeTap& tp : m.taps[d][j])
        for (int64_t o = 0; o < outer; ++o) {
          const double* gp = buf.data() + (o * out_len + j) * inner;
          double* bp = back.data() + (o * len + tp.index) * inner;
          for (int64_t i = 0; i < inner; ++i) bp[i] += tp.weight * gp[i];
        }
    buf.swap(back);
    cur[d] = len;
  }
  std::vector<Tensor> out(a.inputs.size());
  out[0] = Tensor::uninitialized(DType::kFloat32, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) out[0].data<float>()[i] = static_cast<float>(buf[static_cast<size_t>(i)]);
  return out;
}

// Cast between float32 values is the identity; a cast to or from another type has no gradient (refused:
// the Tape only asks when a parameter reaches it).
std::vector<Tensor> cast_grad(const GradArgs& a) {
  PERCH_CHECK(output(a).dtype() == DType::kFloat32, a.node.describe(), ": a cast to ", dtype_name(output(a).dtype()),
              " is not differentiable");
  return reshape_grad(a);
}

// ---- reductions ----

// ReduceMean / ReduceSum: dx[i] = g[the output element x[i] is reduced into] (/ count for the mean). Axes:
// attribute before opset 18 (ReduceSum: 13), input 1 after; none = every axis, or none at all when
// noop_with_empty_axes = 1 (then y = x).
std::vector<Tensor> reduce_linear_grad(const GradArgs& a, bool mean, int64_t axes_input_opset) {
  const Tensor& x = input(a, 0);
  const Tensor& g = dy(a);
  std::vector<int64_t> axes;
  const bool from_input = a.opset >= axes_input_opset;
  if (!from_input) axes = a.node.attr_ints("axes");
  else if (a.inputs.size() > 1 && a.inputs[1]) axes = a.inputs[1]->to_i64_vector();
  const int64_t r = x.rank();
  std::vector<bool> reduced(static_cast<size_t>(r), axes.empty());
  if (axes.empty() && from_input && a.node.attr_int("noop_with_empty_axes", 0) != 0) reduced.assign(reduced.size(), false);
  for (int64_t ax : axes) {
    PERCH_CHECK(ax >= -r && ax < r, a.node.describe(), ": axis ", ax, " is out of range for rank ", r);
    reduced[static_cast<size_t>(ax < 0 ? ax + r : ax)] = true;
  }
  Shape kept = x.shape();
  int64_t count = 1;
  for (int64_t d = 0; d < r; ++d)
    if (reduced[static_cast<size_t>(d)]) count *= kept[static_cast<size_t>(d)], kept[static_cast<size_t>(d)] = 1;
  const float scale = mean ? 1.0f / static_cast<float>(std::max<int64_t>(1, count)) : 1.0f;
  Tensor dx = expand_to(g.reshaped(kept), x.shape());
  if (scale != 1.0f) dx = scaled(dx, scale);
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dx;
  return out;
}

// y = x^b (NumPy broadcasting): dx = g b x^(b - 1); db = g y ln x where x > 0 (0 elsewhere: a negative base
// has a real power only for integer b, where the exponent is not differentiable).
std::vector<Tensor> pow_grad(const GradArgs& a) {
  const Tensor& g = dy(a);
  const Tensor x = expand_to(input(a, 0), g.shape()), b = expand_to(input(a, 1), g.shape());
  const float *gd = g.data<float>(), *xd = x.data<float>(), *bd = b.data<float>(), *yd = output(a).data<float>();
  std::vector<Tensor> out(2);
  if (wants(a, 0)) {
    Tensor t = Tensor::uninitialized(DType::kFloat32, g.shape());
    for (int64_t i = 0; i < g.numel(); ++i)
      t.data<float>()[i] = bd[i] == 0.0f ? 0.0f : gd[i] * bd[i] * std::pow(xd[i], bd[i] - 1.0f);
    out[0] = reduce_to(t, input(a, 0).shape());
  }
  if (wants(a, 1)) {
    Tensor t = Tensor::uninitialized(DType::kFloat32, g.shape());
    for (int64_t i = 0; i < g.numel(); ++i) t.data<float>()[i] = xd[i] > 0.0f ? gd[i] * yd[i] * std::log(xd[i]) : 0.0f;
    out[1] = reduce_to(t, input(a, 1).shape());
  }
  return out;
}

// ---- softmax ----

// Softmax groups: opset >= 13 normalizes along one axis (default -1); before 13 the input is viewed as
// 2-D [prod(dims[:axis]), prod(dims[axis:])] (default axis 1).
void softmax_layout(const GradArgs& a, const Tensor& y, int64_t& outer, int64_t& len, int64_t& inner) {
  const bool v13 = a.opset >= 13;
  const int64_t axis = normalize_axis(a.node.attr_int("axis", v13 ? -1 : 1), y.rank(), a.node.describe());
  outer = 1, len = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= y.dim(d);
  if (v13) {
    len = y.dim(axis);
    for (int64_t d = axis + 1; d < y.rank(); ++d) inner *= y.dim(d);
  } else {
    for (int64_t d = axis; d < y.rank(); ++d) len *= y.dim(d);
  }
}

// Softmax: dx = y (g - sum(g y));  LogSoftmax: dx = g - exp(y) sum(g).
std::vector<Tensor> softmax_grad(const GradArgs& a, bool log) {
  const Tensor &y = output(a), &g = dy(a);
  int64_t outer, len, inner;
  softmax_layout(a, y, outer, len, inner);
  Tensor dx = Tensor::uninitialized(DType::kFloat32, y.shape());
  const float *yd = y.data<float>(), *gd = g.data<float>();
  float* d = dx.data<float>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t base = o * len * inner + i;
      double s = 0.0;
      for (int64_t k = 0; k < len; ++k) s += log ? gd[base + k * inner] : gd[base + k * inner] * yd[base + k * inner];
      for (int64_t k = 0; k < len; ++k) {
        const int64_t p = base + k * inner;
        d[p] = log ? gd[p] - std::exp(yd[p]) * static_cast<float>(s) : yd[p] * (gd[p] - static_cast<float>(s));
      }
    }
  return {dx};
}

// Clip's bounds: attributes before opset 11, optional inputs 1 and 2 after.
void clip_bounds(const GradArgs& a, float& lo, float& hi) {
  lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
  if (a.opset < 11) {
    lo = a.node.attr_float("min", lo), hi = a.node.attr_float("max", hi);
    return;
  }
  if (a.inputs.size() > 1 && a.inputs[1]) lo = a.inputs[1]->to_f32().data<float>()[0];
  if (a.inputs.size() > 2 && a.inputs[2]) hi = a.inputs[2]->to_f32().data<float>()[0];
}

GradOp op(GradFn f, std::vector<size_t> nondiff = {}) { return GradOp{std::move(f), nullptr, std::move(nondiff)}; }

}  // namespace

void register_grad_ops(GradRegistry& r) {
  r.add("Conv", "", op(conv_grad));
  r.add("Gemm", "", op(gemm_grad));
  r.add("MatMul", "", op(matmul_grad));
  r.add("BatchNormalization", "", GradOp{bn_grad, bn_forward, {3, 4}});
  r.add("Add", "", op([](const GradArgs& a) { return add_sub(a, 1.0f); }));
  r.add("Sub", "", op([](const GradArgs& a) { return add_sub(a, -1.0f); }));
  r.add("Mul", "", op(mul_grad));
  r.add("Div", "", op(div_grad));
  r.add("Relu", "", op([](const GradArgs& a) { return unary(a, [](float x, float, float g) { return x > 0.0f ? g : 0.0f; }); }));
  r.add("LeakyRelu", "", op([](const GradArgs& a) {
          const float alpha = a.node.attr_float("alpha", 0.01f);
          return unary(a, [alpha](float x, float, float g) { return x > 0.0f ? g : alpha * g; });
        }));
  r.add("Clip", "", op([](const GradArgs& a) {
          float lo, hi;
          clip_bounds(a, lo, hi);
          return unary(a, [lo, hi](float x, float, float g) { return x > lo && x < hi ? g : 0.0f; });
        }, {1, 2}));
  r.add("Sigmoid", "", op([](const GradArgs& a) { return unary(a, [](float, float y, float g) { return g * y * (1.0f - y); }); }));
  r.add("Tanh", "", op([](const GradArgs& a) { return unary(a, [](float, float y, float g) { return g * (1.0f - y * y); }); }));
  r.add("HardSigmoid", "", op([](const GradArgs& a) {
          const float alpha = a.node.attr_float("alpha", 0.2f), beta = a.node.attr_float("beta", 0.5f);
          return unary(a, [alpha, beta](float x, float, float g) {
            const float t = alpha * x + beta;
            return t > 0.0f && t < 1.0f ? alpha * g : 0.0f;
          });
        }));
  // HardSwish: y = x * clip(x + 3, 0, 6) / 6, dy/dx = 0 (x < -3), (2x + 3) / 6 (-3 <= x <= 3), 1 (x > 3).
  r.add("HardSwish", "", op([](const GradArgs& a) {
          return unary(a, [](float x, float, float g) { return x < -3.0f ? 0.0f : x > 3.0f ? g : g * (2.0f * x + 3.0f) / 6.0f; });
        }));
  r.add("MaxPool", "", op([](const GradArgs& a) { return pool_grad(a, true); }));
  r.add("AveragePool", "", op([](const GradArgs& a) { return pool_grad(a, false); }));
  r.add("GlobalAveragePool", "", op(global_avg_grad));
  for (const char* t : {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
    r.add(t, "", op(reshape_grad, {1, 2}));
  r.add("Transpose", "", op(transpose_grad));
  r.add("Concat", "", op(concat_grad));
  r.add("Slice", "", op(slice_grad, {1, 2, 3, 4}));
  r.add("Cast", "", op(cast_grad));
  r.add("ConvTranspose", "", op(conv_transpose_grad));
  r.add("Resize", "", op(resize_grad, {1, 2, 3}));
  r.add("Upsample", "", op(resize_grad, {1}));
  // Shape (and Size) read only the input's dimensions: nothing flows back.
  for (const char* t : {"Shape", "Size"}) r.add(t, "", op([](const GradArgs& a) { return std::vector<Tensor>(a.inputs.size()); }, {0}));
  r.add("ReduceMean", "", op([](const GradArgs& a) { return reduce_linear_grad(a, true, 18); }, {1}));
  r.add("ReduceSum", "", op([](const GradArgs& a) { return reduce_linear_grad(a, false, 13); }, {1}));
  r.add("Pow", "", op(pow_grad));
  r.add("Sqrt", "", op([](const GradArgs& a) { return unary(a, [](float, float y, float g) { return 0.5f * g / y; }); }));
  r.add("Softmax", "", op([](const GradArgs& a) { return softmax_grad(a, false); }));
  r.add("LogSoftmax", "", op([](const GradArgs& a) { return softmax_grad(a, true); }));
}

}  // namespace perch::train
