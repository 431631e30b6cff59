// ConvTranspose (1-D/2-D/3-D reference loop), LayerNormalization, InstanceNormalization,
// MeanVarianceNormalization and LRN for the float executor (float32 and float64; statistics in double).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "ops_typed.h"
#include "perch/core/cpu.h"
#include "perch/kernels/conv_f32.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/op_geometry.h"

namespace perch::runtime {

using detail::has;
using detail::check_float;
using detail::in;
using detail::strides_of;
using detail::Walker;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

template <typename T>
Tensor from_double(DType dt, const Shape& s, const std::vector<double>& v) {
  Tensor y = Tensor::uninitialized(dt, s);
  T* d = y.data<T>();
  for (size_t i = 0; i < v.size(); ++i) d[i] = static_cast<T>(v[i]);
  return y;
}

// ---- ConvTranspose -----------------------------------------------------------------------------------

// The formula and output size: runtime::conv_transpose_geometry (perch/runtime/op_geometry.h).
template <typename T>
Tensor conv_transpose_typed(const Node& n, const Tensor& x, const Tensor& w, const Tensor* b) {
  const ConvTransposeGeometry geo = conv_transpose_geometry(n, x.shape(), w.shape());
  const int64_t r = x.rank() - 2, N = x.dim(0), C = x.dim(1), group = geo.group, Cg = C / group, Mg = w.dim(1),
                M = Mg * group;
  const Shape in_sp(x.shape().begin() + 2, x.shape().end()), out_sp(geo.out.begin() + 2, geo.out.end());
  const auto &k_sp = geo.kernel, &strides = geo.strides, &dil = geo.dilations, &pb = geo.pads_begin;
  if (b) PERCH_CHECK(b->numel() == M, "bias has ", b->numel(), " values for ", M, " output channels");
  const Shape& ys = geo.out;
  if constexpr (std::is_same_v<T, float>) {
    // 1-D/2-D float32 on the optimized paths: y is the input gradient of the convolution that maps y's space back
    // to x's (geo.as_conv) — so kernels::conv2d_backward_data computes it (per image and group a GEMM W_g^T X_g,
    // then col2im; float accumulation, tested against its double reference twin). When no such convolution gives
    // back x's size (an output_shape past the full size), the loop below runs. PERCH_PATHS=reference keeps the loop.
    if (geo.as_conv && has_path(active_paths(), Path::kOptimized)) {
      const kernels::Conv2dShape& cs = *geo.as_conv;
      Tensor y = Tensor::uninitialized(DType::kFloat32, ys);
      float* yd = y.data<float>();
      if (checked_numel(ys) > 0) kernels::conv2d_backward_data(cs, x.data<float>(), w.data<float>(), yd);
      if (b) {
        const Tensor bf = b->to_f32();
        const int64_t plane = cs.in_h * cs.in_w;
        for (int64_t i = 0; i < N * M; ++i) {
          const float bv = bf.data<float>()[i % M];
          for (int64_t j = 0; j < plane; ++j) yd[i * plane + j] += bv;
        }
      }
      return y;
    }
  }
  std::vector<double> acc(static_cast<size_t>(checked_numel(ys)), 0.0);
  const T* xd = x.data<T>();
  const T* wd = w.data<T>();
  const auto ostr = strides_of(out_sp);
  int64_t in_n = 1, out_n = 1, k_n = 1;
  for (int64_t i = 0; i < r; ++i) in_n *= in_sp[i], out_n *= out_sp[i], k_n *= k_sp[i];
  // Output offset of (input position i, kernel position k) per spatial dim; -1 when outside the output.
  std::vector<std::vector<int64_t>> pos(r);
  for (int64_t i = 0; i < r; ++i) {
    pos[i].resize(static_cast<size_t>(in_sp[i] * k_sp[i]));
    for (int64_t p = 0; p < in_sp[i]; ++p)
      for (int64_t k = 0; k < k_sp[i]; ++k) {
        const int64_t o = p * strides[i] - pb[i] + k * dil[i];
        pos[i][p * k_sp[i] + k] = (o >= 0 && o < out_sp[i]) ? o * ostr[i] : -1;
      }
  }
  std::vector<int64_t> ip(r), kp(r);
  for (int64_t nn = 0; nn < N; ++nn)
    for (int64_t g = 0; g < group; ++g)
      for (int64_t c = 0; c < Cg; ++c) {
        const T* xc = xd + (nn * C + g * Cg + c) * in_n;
        for (int64_t m = 0; m < Mg; ++m) {
          const T* wk = wd + ((g * Cg + c) * Mg + m) * k_n;
          double* yc = acc.data() + (nn * M + g * Mg + m) * out_n;
          for (int64_t kf = 0; kf < k_n; ++kf) {
            const double wv = static_cast<double>(wk[kf]);
            for (int64_t t = kf, i = r - 1; i >= 0; --i) kp[i] = t % k_sp[i], t /= k_sp[i];
            for (int64_t xf = 0; xf < in_n; ++xf) {
              int64_t off = 0;
              bool inside = true;
              for (int64_t t = xf, i = r - 1; i >= 0 && inside; --i) {
                const int64_t p = t % in_sp[i];
                t /= in_sp[i];
                const int64_t o = pos[i][p * k_sp[i] + kp[i]];
                inside = o >= 0;
                off += o;
              }
              if (inside) yc[off] += wv * static_cast<double>(xc[xf]);
            }
          }
        }
      }
  if (b) {
    const Tensor bf = *b;
    for (int64_t nn = 0; nn < N; ++nn)
      for (int64_t m = 0; m < M; ++m) {
        const double bv = detail::visit_dtype(bf.dtype(), [&](auto tag) {
          using B = typename decltype(tag)::type;
          return static_cast<double>(bf.data<B>()[m]);
        });
        for (int64_t i = 0; i < out_n; ++i) acc[(nn * M + m) * out_n + i] += bv;
      }
  }
  return from_double<T>(x.dtype(), ys, acc);
}

std::vector<Tensor> conv_transpose(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &w = in(n, a, 1);
  check_float(x, "X");
  PERCH_CHECK(w.dtype() == x.dtype(), "W has type ", dtype_name(w.dtype()), ", X ", dtype_name(x.dtype()));
  const Tensor* b = has(a, 2) ? a[2] : nullptr;
  if (x.dtype() == DType::kFloat64) return {conv_transpose_typed<double>(n, x, w, b)};
  return {conv_transpose_typed<float>(n, x, w, b)};
}

// ---- LayerNormalization ------------------------------------------------------------------------------

template <typename T>
std::vector<Tensor> layer_norm_typed(const Node& n, const Tensor& x, const Tensor& scale, const Tensor* bias) {
  const int64_t r = x.rank();
  const int64_t axis = normalize_axis(n.attr_int("axis", -1), r, "axis");
  const double eps = n.attr_float("epsilon", 1e-5f);
  int64_t outer = 1, len = 1;
  for (int64_t d = 0; d < r; ++d) (d < axis ? outer : len) *= x.dim(d);
  const auto check_bcast = [&](const Tensor& t, const char* what) {
    PERCH_CHECK(t.dtype() == x.dtype(), what, " has type ", dtype_name(t.dtype()), ", X ", dtype_name(x.dtype()));
    PERCH_CHECK(t.rank() <= r - axis, what, " ", shape_str(t.shape()), " has more dims than the normalized shape");
    for (int64_t i = 1; i <= t.rank(); ++i)
      PERCH_CHECK(t.dim(-i) == 1 || t.dim(-i) == x.dim(r - i), what, " ", shape_str(t.shape()),
                  " does not broadcast to the normalized shape of X ", shape_str(x.shape()));
  };
  check_bcast(scale, "Scale");
  if (bias) check_bcast(*bias, "B");
  // Scale/B offsets for each position of the normalized block (they broadcast to X's trailing dims).
  const Shape norm_shape(x.shape().begin() + axis, x.shape().end());
  std::vector<int64_t> s_off, b_off;
  for (Walker w(norm_shape, {detail::broadcast_strides(scale.shape(), norm_shape),
                             detail::broadcast_strides(bias ? bias->shape() : Shape{}, norm_shape)});
       w.valid(); w.next())
    s_off.push_back(w.offset(0)), b_off.push_back(w.offset(1));
  const T* xd = x.data<T>();
  const T* sd = scale.data<T>();
  const T* bd = bias ? bias->data<T>() : nullptr;
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  T* yd = y.data<T>();
  Shape stat_shape = x.shape();
  for (int64_t d = axis; d < r; ++d) stat_shape[d] = 1;
  const DType stash = n.attr_int("stash_type", 1) == 11 ? DType::kFloat64 : DType::kFloat32;
  Tensor mean_t = Tensor::uninitialized(stash, stat_shape), inv_t = Tensor::uninitialized(stash, stat_shape);
  for (int64_t o = 0; o < outer; ++o) {
    const T* xp = xd + o * len;
    double mean = 0, var = 0;
    for (int64_t j = 0; j < len; ++j) mean += static_cast<double>(xp[j]);
    mean /= static_cast<double>(len);
    for (int64_t j = 0; j < len; ++j) var += (xp[j] - mean) * (xp[j] - mean);
    var /= static_cast<double>(len);
    const double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t j = 0; j < len; ++j) {
      double v = (static_cast<double>(xp[j]) - mean) * inv * static_cast<double>(sd[s_off[j]]);
      if (bd) v += static_cast<double>(bd[b_off[j]]);
      yd[o * len + j] = static_cast<T>(v);
    }
    if (stash == DType::kFloat64) {
      mean_t.data<double>()[o] = mean, inv_t.data<double>()[o] = inv;
    } else {
      mean_t.data<float>()[o] = static_cast<float>(mean), inv_t.data<float>()[o] = static_cast<float>(inv);
    }
  }
  return {y, mean_t, inv_t};
}

std::vector<Tensor> layer_norm(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &scale = in(n, a, 1);
  check_float(x, "X");
  const Tensor* b = has(a, 2) ? a[2] : nullptr;
  if (x.dtype() == DType::kFloat64) return layer_norm_typed<double>(n, x, scale, b);
  return layer_norm_typed<float>(n, x, scale, b);
}

// ---- InstanceNormalization / MeanVarianceNormalization -----------------------------------------------

template <typename T>
Tensor instance_norm_typed(const Node& n, const Tensor& x, const Tensor& scale, const Tensor& bias) {
  PERCH_CHECK(x.rank() >= 3, "input must be [N, C, spatial...], got ", shape_str(x.shape()));
  const int64_t N = x.dim(0), C = x.dim(1), len = x.numel() / std::max<int64_t>(1, N * C);
  PERCH_CHECK(scale.numel() == C && bias.numel() == C, "scale and B must have ", C, " values, got ", scale.numel(), " and ",
              bias.numel());
  PERCH_CHECK(scale.dtype() == x.dtype() && bias.dtype() == x.dtype(), "scale and B must have X's type");
  const double eps = n.attr_float("epsilon", 1e-5f);
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const T* xp = x.data<T>() + nc * len;
    T* yp = y.data<T>() + nc * len;
    double mean = 0, var = 0;
    for (int64_t j = 0; j < len; ++j) mean += static_cast<double>(xp[j]);
    mean /= static_cast<double>(len);
    for (int64_t j = 0; j < len; ++j) var += (xp[j] - mean) * (xp[j] - mean);
    var /= static_cast<double>(len);
    const double k = static_cast<double>(scale.data<T>()[nc % C]) / std::sqrt(var + eps), b = bias.data<T>()[nc % C];
    for (int64_t j = 0; j < len; ++j) yp[j] = static_cast<T>((static_cast<double>(xp[j]) - mean) * k + b);
  }
  return y;
}

std::vector<Tensor> instance_norm(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_float(x, "input");
  if (x.dtype() == DType::kFloat64) return {instance_norm_typed<double>(n, x, in(n, a, 1), in(n, a, 2))};
  return {instance_norm_typed<float>(n, x, in(n, a, 1), in(n, a, 2))};
}

// (X - E[X]) / (sqrt(E[X^2] - E[X]^2) + 1e-9) over `axes` (default [0, 2, 3]), as ONNX's function body.
template <typename T>
Tensor mvn_typed(const Node& n, const Tensor& x) {
  const int64_t r = x.rank();
  const auto axes = detail::normalize_axes(n.attr_ints("axes", {0, 2, 3}), r);
  Shape kept = x.shape();
  for (int64_t ax : axes) kept[ax] = 1;
  const auto ks = strides_of(kept);
  std::vector<int64_t> st(r);
  for (int64_t d = 0; d < r; ++d) st[d] = kept[d] == x.dim(d) && std::find(axes.begin(), axes.end(), d) == axes.end() ? ks[d] : 0;
  const int64_t m = checked_numel(kept), count = x.numel() / std::max<int64_t>(1, m);
  std::vector<double> s1(static_cast<size_t>(m), 0.0), s2(static_cast<size_t>(m), 0.0);
  const T* xd = x.data<T>();
  int64_t i = 0;
  for (Walker w(x.shape(), {st}); w.valid(); w.next(), ++i) {
    const double v = static_cast<double>(xd[i]);
    s1[w.offset(0)] += v, s2[w.offset(0)] += v * v;
  }
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  T* yd = y.data<T>();
  i = 0;
  for (Walker w(x.shape(), {st}); w.valid(); w.next(), ++i) {
    const double mean = s1[w.offset(0)] / count, var = s2[w.offset(0)] / count - mean * mean;
    yd[i] = static_cast<T>((static_cast<double>(xd[i]) - mean) / (std::sqrt(std::max(var, 0.0)) + 1e-9));
  }
  return y;
}

std::vector<Tensor> mvn(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_float(x, "input");
  if (x.dtype() == DType::kFloat64) return {mvn_typed<double>(n, x)};
  return {mvn_typed<float>(n, x)};
}

// ---- LRN ---------------------------------------------------------------------------------------------
// Local response normalization across channels (AlexNet, GoogLeNet): for X [N, C, spatial...],
//   y[n, c, …] = x[n, c, …] / (bias + alpha / size · Σ_{c' ∈ [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉] ∩ [0, C)} x[n, c', …]²)^beta
// (the window clipped at the channel ends; alpha is divided by the full size, as ONNX defines it). Sums in double.
template <typename T>
Tensor lrn_typed(const Node& n, const Tensor& x) {
  PERCH_CHECK(x.rank() >= 3, "input must be [N, C, spatial...], got ", shape_str(x.shape()));
  const int64_t size = n.attr_int("size", 0);
  PERCH_CHECK(size > 0, "attribute size must be positive, got ", size);
  const double alpha = n.attr_float("alpha", 1e-4f), beta = n.attr_float("beta", 0.75f), bias = n.attr_float("bias", 1.0f);
  const int64_t N = x.dim(0), C = x.dim(1), len = x.numel() / std::max<int64_t>(1, N * C);
  const int64_t before = (size - 1) / 2, after = size - 1 - before;
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  const T* xd = x.data<T>();
  T* yd = y.data<T>();
  for (int64_t b = 0; b < N; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t lo = std::max<int64_t>(0, c - before), hi = std::min(C - 1, c + after);
      for (int64_t j = 0; j < len; ++j) {
        double sq = 0;
        for (int64_t k = lo; k <= hi; ++k) {
          const double v = static_cast<double>(xd[(b * C + k) * len + j]);
          sq += v * v;
        }
        const int64_t at = (b * C + c) * len + j;
        yd[at] = static_cast<T>(static_cast<double>(xd[at]) / std::pow(bias + alpha / static_cast<double>(size) * sq, beta));
      }
    }
  return y;
}

std::vector<Tensor> lrn(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_float(x, "X");
  if (x.dtype() == DType::kFloat64) return {lrn_typed<double>(n, x)};
  return {lrn_typed<float>(n, x)};
}

}  // namespace

void register_norm_ops(OpRegistry& r) {
  r.add("ConvTranspose", 1, conv_transpose);
  r.add("LayerNormalization", 17, layer_norm);
  r.add("InstanceNormalization", 1, instance_norm);
  r.add("MeanVarianceNormalization", 9, mvn);
  r.add("LRN", 1, lrn);
}

}  // namespace perch::runtime
