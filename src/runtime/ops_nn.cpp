// Conv, Gemm, MatMul, BatchNormalization and pooling for the float executor.
#include <cmath>

#include "ops_common.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/kernels/pool_f32.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/op_geometry.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

Tensor detail::conv_float(const Node& n, const Args& a, const kernels::ConvEpilogue& post) {
  const Tensor x = in(n, a, 0).to_f32();
  const Tensor w = in(n, a, 1).to_f32();
  const Tensor bias = has(a, 2) ? a[2]->to_f32() : Tensor();
  const auto checked_bias = [&](int64_t out_channels) -> const float* {
    if (bias.empty()) return nullptr;
    PERCH_CHECK(bias.numel() == out_channels, n.describe(), ": bias has ", bias.numel(), " values for ", out_channels,
                " output channels");
    return bias.data<float>();
  };
  if (x.rank() >= 5) {
    // 3-D (and higher) convolutions: the N-d kernels (3-D through the 2-D ones, kernels/conv_f32.h).
    const kernels::ConvNdShape s = conv_nd_shape(n, x.shape(), w.shape());
    const float* b = checked_bias(s.out_channels);
    Shape ys{s.batch, s.out_channels};
    for (int64_t o : s.out()) ys.push_back(o);
    Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
    kernels::conv_nd_f32(s, x.data<float>(), w.data<float>(), b, y.data<float>(), post);
    return y;
  }
  const kernels::Conv2dShape s = conv2d_shape(n, x.shape(), w.shape());
  const float* b = checked_bias(s.out_channels);
  Shape ys = x.rank() == 4 ? Shape{s.batch, s.out_channels, s.out_h(), s.out_w()} : Shape{s.batch, s.out_channels, s.out_w()};
  Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
  kernels::conv2d_f32(s, x.data<float>(), w.data<float>(), b, y.data<float>(), post);
  return y;
}

namespace {

std::vector<Tensor> conv(const Node& n, const Args& a, int64_t) { return {detail::conv_float(n, a, {})}; }

std::vector<Tensor> gemm(const Node& n, const Args& a, int64_t) {
  const Tensor A = in(n, a, 0).to_f32(), B = in(n, a, 1).to_f32();
  PERCH_CHECK(A.rank() == 2 && B.rank() == 2, n.describe(), ": Gemm needs 2-D inputs, got ", shape_str(A.shape()), " and ",
              shape_str(B.shape()));
  kernels::GemmF32Args g;
  g.trans_a = n.attr_int("transA", 0) != 0;
  g.trans_b = n.attr_int("transB", 0) != 0;
  g.m = g.trans_a ? A.dim(1) : A.dim(0);
  g.k = g.trans_a ? A.dim(0) : A.dim(1);
  const int64_t kb = g.trans_b ? B.dim(1) : B.dim(0);
  g.n = g.trans_b ? B.dim(0) : B.dim(1);
  PERCH_CHECK(kb == g.k, n.describe(), ": inner dimensions differ: A ", shape_str(A.shape()), ", B ", shape_str(B.shape()));
  g.alpha = n.attr_float("alpha", 1.0f);
  const float beta = n.attr_float("beta", 1.0f);
  Tensor y = Tensor::uninitialized(DType::kFloat32, {g.m, g.n});
  if (has(a, 2) && beta != 0.0f) {
    const Tensor C = a[2]->to_f32();
    Shape out{g.m, g.n};
    PERCH_CHECK(detail::broadcast_shape(C.shape(), out, n) == out, n.describe(), ": C ", shape_str(C.shape()),
                " does not broadcast to ", shape_str(out));
    auto st = detail::broadcast_strides(C.shape(), out);
    float* yd = y.data<float>();
    const float* cd = C.data<float>();
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) yd[i * g.n + j] = cd[i * st[0] + j * st[1]];
    g.beta = beta;
  }
  g.a = A.data<float>(), g.lda = A.dim(1), g.b = B.data<float>(), g.ldb = B.dim(1), g.c = y.data<float>(), g.ldc = g.n;
  kernels::gemm_f32(g);
  return {y};
}

std::vector<Tensor> matmul(const Node& n, const Args& a, int64_t) {
  Tensor A = in(n, a, 0).to_f32(), B = in(n, a, 1).to_f32();
  PERCH_CHECK(A.rank() >= 1 && B.rank() >= 1, n.describe(), ": MatMul inputs must have rank >= 1");
  const bool a1 = A.rank() == 1, b1 = B.rank() == 1;
  if (a1) A = A.reshaped({1, A.dim(0)});
  if (b1) B = B.reshaped({B.dim(0), 1});
  const int64_t M = A.dim(-2), K = A.dim(-1), N = B.dim(-1);
  PERCH_CHECK(B.dim(-2) == K, n.describe(), ": inner dimensions differ: ", shape_str(A.shape()), " x ", shape_str(B.shape()));
  Shape ab(A.shape().begin(), A.shape().end() - 2), bb(B.shape().begin(), B.shape().end() - 2);
  Shape batch = detail::broadcast_shape(ab, bb, n);
  auto sa = detail::broadcast_strides(ab, batch), sb = detail::broadcast_strides(bb, batch);
  Shape ys = batch;
  if (!a1) ys.push_back(M);
  if (!b1) ys.push_back(N);
  Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
  const int64_t nb = checked_numel(batch);
  std::vector<int64_t> idx(batch.size(), 0);
  for (int64_t b = 0; b < nb; ++b) {
    int64_t oa = 0, ob = 0;
    for (size_t d = 0; d < batch.size(); ++d) oa += idx[d] * sa[d], ob += idx[d] * sb[d];
    kernels::GemmF32Args g;
    g.m = M, g.n = N, g.k = K;
    g.a = A.data<float>() + oa * M * K, g.lda = K;
    g.b = B.data<float>() + ob * K * N, g.ldb = N;
    g.c = y.data<float>() + b * M * N, g.ldc = N;
    kernels::gemm_f32(g);
    for (int64_t d = static_cast<int64_t>(batch.size()) - 1; d >= 0; --d) {
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
  return {y};
}

// Inference: y = (x - mean) / sqrt(var + eps) * scale + B with the running statistics (inputs 3, 4).
// training_mode 1 (opset 14+): the batch's statistics instead — per channel over every other axis, the population
// variance, in double — and the optional outputs running_mean = mean * momentum + batch_mean * (1 - momentum),
// running_var likewise (ONNX's definition; the variance biased, as its reference implementation computes it).
std::vector<Tensor> batchnorm(const Node& n, const Args& a, int64_t opset) {
  const bool training = n.attr_int("training_mode", 0) != 0;
  size_t extra = 0;
  for (size_t i = 1; i < n.outputs.size(); ++i) extra += n.outputs[i].empty() ? 0 : 1;
  PERCH_CHECK(extra == 0 || (training && opset >= 14 && n.outputs.size() <= 3), n.describe(),
              ": the statistics outputs of BatchNormalization are supported only with training_mode 1 (opset 14+)");
  const Tensor x = in(n, a, 0).to_f32();
  const Tensor sc = in(n, a, 1).to_f32(), b = in(n, a, 2).to_f32(), mean = in(n, a, 3).to_f32(), var = in(n, a, 4).to_f32();
  const float eps = n.attr_float("epsilon", 1e-5f);
  PERCH_CHECK(x.rank() >= 2, n.describe(), ": input must have rank >= 2");
  const int64_t N = x.dim(0), C = x.dim(1), inner = x.numel() / std::max<int64_t>(1, N * C);
  for (const Tensor* t : {&sc, &b, &mean, &var})
    PERCH_CHECK(t->numel() == C, n.describe(), ": parameter has ", t->numel(), " values for ", C, " channels");
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  Tensor run_mean, run_var;
  if (training) run_mean = Tensor::uninitialized(DType::kFloat32, {C}), run_var = Tensor::uninitialized(DType::kFloat32, {C});
  const float momentum = n.attr_float("momentum", 0.9f);
  for (int64_t c = 0; c < C; ++c) {
    float mu = mean.data<float>()[c], sigma2 = var.data<float>()[c];
    if (training) {
      double s = 0, ss = 0;
      const double count = static_cast<double>(std::max<int64_t>(1, N * inner));
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) s += xd[(i * C + c) * inner + j];
      const double m = s / count;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          const double d = xd[(i * C + c) * inner + j] - m;
          ss += d * d;
        }
      run_mean.data<float>()[c] = static_cast<float>(mu * static_cast<double>(momentum) + m * (1.0 - momentum));
      run_var.data<float>()[c] = static_cast<float>(sigma2 * static_cast<double>(momentum) + ss / count * (1.0 - momentum));
      mu = static_cast<float>(m), sigma2 = static_cast<float>(ss / count);
    }
    // computed as x * k + (B - mean * k), k = scale / sqrt(var + eps)
    const float k = sc.data<float>()[c] / std::sqrt(sigma2 + eps);
    const float off = b.data<float>()[c] - mu * k;
    for (int64_t i = 0; i < N; ++i) {
      const float* xp = xd + (i * C + c) * inner;
      float* yp = yd + (i * C + c) * inner;
      for (int64_t j = 0; j < inner; ++j) yp[j] = xp[j] * k + off;
    }
  }
  if (!training) return {y};
  return {y, run_mean, run_var};
}

std::vector<Tensor> pool(const Node& n, const Args& a, bool is_max) {
  const bool want_indices = n.outputs.size() > 1 && !n.outputs[1].empty();
  const Tensor x = in(n, a, 0).to_f32();
  Tensor y, indices;
  if (x.rank() >= 5 || want_indices) {
    // 3-D pooling and MaxPool's Indices: the N-d loops (kernels/pool_f32.h).
    const kernels::PoolNdShape s = pool_nd_shape(n, x.shape());
    Shape ys{s.batch, s.channels};
    for (int64_t o : s.out()) ys.push_back(o);
    y = Tensor::uninitialized(DType::kFloat32, ys);
    if (is_max) {
      const int64_t order = n.attr_int("storage_order", 0);
      PERCH_CHECK(order == 0 || order == 1, n.describe(), ": storage_order must be 0 or 1, got ", order);
      if (want_indices) indices = Tensor::uninitialized(DType::kInt64, ys);
      kernels::maxpool_nd_f32(s, x.data<float>(), y.data<float>(), want_indices ? indices.data<int64_t>() : nullptr,
                              order == 1);
    } else {
      kernels::avgpool_nd_f32(s, x.data<float>(), y.data<float>());
    }
  } else {
    const kernels::Pool2dShape s = pool2d_shape(n, x.shape());
    Shape ys = x.rank() == 4 ? Shape{s.batch, s.channels, s.out_h(), s.out_w()} : Shape{s.batch, s.channels, s.out_w()};
    y = Tensor::uninitialized(DType::kFloat32, ys);
    (is_max ? kernels::maxpool2d_f32 : kernels::avgpool2d_f32)(s, x.data<float>(), y.data<float>());
  }
  // MaxPool keeps int8/uint8 inputs' type (opset 12); the maxima are input values, exact in float.
  const DType xt = in(n, a, 0).dtype();
  if (is_max && (xt == DType::kInt8 || xt == DType::kUInt8)) {
    Tensor yq(xt, y.shape());
    const float* yd = y.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      if (xt == DType::kInt8) yq.data<int8_t>()[i] = static_cast<int8_t>(yd[i]);
      else yq.data<uint8_t>()[i] = static_cast<uint8_t>(yd[i]);
    }
    if (want_indices) return {yq, indices};
    return {yq};
  }
  if (want_indices) return {y, indices};
  return {y};
}

std::vector<Tensor> global_pool(const Node& n, const Args& a, bool is_max) {
  const Tensor x = in(n, a, 0).to_f32();
  PERCH_CHECK(x.rank() >= 3, n.describe(), ": input must have rank >= 3");
  const int64_t nc = x.dim(0) * x.dim(1), inner = x.numel() / std::max<int64_t>(nc, 1);
  Shape ys(x.rank(), 1);
  ys[0] = x.dim(0), ys[1] = x.dim(1);
  Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  // Average: each plane summed in double, in order (j = 0, 1, ...). kLanes planes advance together so the
  // additions of different planes overlap (one running sum is bound by the add latency); every plane's own
  // order, hence its result, is that of the plain loop.
  constexpr int64_t kLanes = 8;
  int64_t i = 0;
  if (!is_max)
    for (; i + kLanes <= nc; i += kLanes) {
      double s[kLanes] = {};
      const float* p = xd + i * inner;
      for (int64_t j = 0; j < inner; ++j)
        for (int64_t l = 0; l < kLanes; ++l) s[l] += p[l * inner + j];
      for (int64_t l = 0; l < kLanes; ++l) yd[i + l] = static_cast<float>(s[l] / static_cast<double>(inner));
    }
  for (; i < nc; ++i) {
    const float* p = xd + i * inner;
    if (is_max) {
      float m = p[0];
      for (int64_t j = 1; j < inner; ++j) m = std::max(m, p[j]);
      yd[i] = m;
    } else {
      double s = 0;
      for (int64_t j = 0; j < inner; ++j) s += p[j];
      yd[i] = static_cast<float>(s / static_cast<double>(inner));
    }
  }
  return {y};
}

}  // namespace

void register_nn_ops(OpRegistry& r) {
  r.add("Conv", 1, conv);
  r.add("Gemm", 1, gemm);
  r.add("MatMul", 1, matmul);
  r.add("BatchNormalization", 1, batchnorm);
  r.add("MaxPool", 1, [](const Node& n, const Args& a, int64_t) { return pool(n, a, true); });
  r.add("AveragePool", 1, [](const Node& n, const Args& a, int64_t) { return pool(n, a, false); });
  r.add("GlobalAveragePool", 1, [](const Node& n, const Args& a, int64_t) { return global_pool(n, a, false); });
  r.add("GlobalMaxPool", 1, [](const Node& n, const Args& a, int64_t) { return global_pool(n, a, true); });
}

}  // namespace perch::runtime
