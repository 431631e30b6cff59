#include "perch/quant/fake_quant.h"

#include "perch/core/threads.h"
#include "fake_quant_runs.h"

#include <algorithm>
#include <cmath>

namespace perch::quant {

namespace {

void check_same(const Tensor& dy, const Tensor& x, const char* what) {
  PERCH_CHECK(x.dtype() == DType::kFloat32 && dy.dtype() == DType::kFloat32, what, ": expects float32 dy and x, got ",
              dtype_name(dy.dtype()), " and ", dtype_name(x.dtype()));
  PERCH_CHECK(dy.shape() == x.shape(), what, ": dy shape ", shape_str(dy.shape()), " differs from x shape ",
              shape_str(x.shape()));
}

// Per-channel layout for the TF-style ops: axis -1 = per-tensor.
SlotLayout minmax_layout(const Shape& shape, size_t nmins, size_t nmaxs, int bits, int64_t axis, const char* what) {
  PERCH_CHECK(bits >= 2 && bits <= 16, what, ": bits must be in [2, 16], got ", bits);
  QuantSpec spec;
  spec.bits = 8;  // only the layout is used
  if (axis == -1) {
    spec.granularity = Granularity::kPerTensor;
  } else {
    PERCH_CHECK(axis >= 0 && axis < static_cast<int64_t>(shape.size()), what, ": axis ", axis,
                " must be -1 (per-tensor) or in [0, ", shape.size(), ") for shape ", shape_str(shape));
    spec.granularity = Granularity::kPerChannel;
    spec.axis = axis;
  }
  SlotLayout l = SlotLayout::make(spec, shape);
  PERCH_CHECK(static_cast<int64_t>(nmins) == l.slots && static_cast<int64_t>(nmaxs) == l.slots, what, ": ",
              l.slots, " slot(s) for shape ", shape_str(shape), " axis ", axis, " but ", nmins, " mins and ", nmaxs,
              " maxs");
  return l;
}

std::vector<NudgedRange> nudge_all(std::span<const float> mins, std::span<const float> maxs, int bits, bool narrow) {
  const int32_t qmin = narrow ? 1 : 0, qmax = (int32_t{1} << bits) - 1;
  std::vector<NudgedRange> r(mins.size());
  for (size_t k = 0; k < mins.size(); ++k) r[k] = nudge_minmax(mins[k], maxs[k], qmin, qmax);
  return r;
}

}  // namespace

NudgedRange nudge_minmax(float min, float max, int32_t qmin, int32_t qmax) {
  PERCH_CHECK(std::isfinite(min) && std::isfinite(max) && min < max, "fake_quant_minmax: need finite min < max, got [",
              min, ", ", max, "]");
  const float fqmin = static_cast<float>(qmin), fqmax = static_cast<float>(qmax);
  const float s = (max - min) / (fqmax - fqmin);
  const float z0 = fqmin - min / s;
  float zp;
  if (z0 < fqmin) zp = fqmin;
  else if (z0 > fqmax) zp = fqmax;
  else zp = std::round(z0);  // ties away from zero, as TF
  return {(fqmin - zp) * s, (fqmax - zp) * s, s};
}

Tensor fake_quant_minmax(const Tensor& x, std::span<const float> mins, std::span<const float> maxs, int bits,
                         bool narrow_range, int64_t axis) {
  PERCH_CHECK(x.dtype() == DType::kFloat32, "fake_quant_minmax: expects float32, got ", dtype_name(x.dtype()));
  const SlotLayout l = minmax_layout(x.shape(), mins.size(), maxs.size(), bits, axis, "fake_quant_minmax");
  const std::vector<NudgedRange> nr = nudge_all(mins, maxs, bits, narrow_range);
  Tensor y(DType::kFloat32, x.shape());
  const float* xs = x.data<float>();
  float* ys = y.data<float>();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t) {
    const NudgedRange& r = nr[static_cast<size_t>(s0)];
    const float inv = 1.0f / r.scale;
    for (int64_t k = 0; k < n; ++k) {
      const float c = std::fmin(std::fmax(xs[b + k], r.min), r.max);
      ys[b + k] = std::floor((c - r.min) * inv + 0.5f) * r.scale + r.min;
    }
  });
  return y;
}

MinMaxGrad fake_quant_minmax_backward(const Tensor& dy, const Tensor& x, std::span<const float> mins,
                                      std::span<const float> maxs, int bits, bool narrow_range, int64_t axis) {
  check_same(dy, x, "fake_quant_minmax_backward");
  const SlotLayout l = minmax_layout(x.shape(), mins.size(), maxs.size(), bits, axis, "fake_quant_minmax_backward");
  const std::vector<NudgedRange> nr = nudge_all(mins, maxs, bits, narrow_range);
  MinMaxGrad g{Tensor(DType::kFloat32, x.shape()), {}, {}};
  std::vector<double> dmin(nr.size(), 0.0), dmax(nr.size(), 0.0);
  const float* xs = x.data<float>();
  const float* dys = dy.data<float>();
  float* dx = g.dx.data<float>();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t) {
    const auto s = static_cast<size_t>(s0);
    for (int64_t k = 0; k < n; ++k) {
      const float v = xs[b + k];
      if (v < nr[s].min) dmin[s] += dys[b + k];
      else if (v > nr[s].max) dmax[s] += dys[b + k];
      else dx[b + k] = dys[b + k];
    }
  });
  g.dmin.assign(dmin.begin(), dmin.end());
  g.dmax.assign(dmax.begin(), dmax.end());
  return g;
}

Tensor fake_quant_ste_backward(const Tensor& dy, const Tensor& x, const QuantParams& p) {
  check_same(dy, x, "fake_quant_ste_backward");
  check_params(p, x.shape());
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());  // every element is written by the walk
  detail::ste_walk(SlotLayout::make(p.spec, x.shape()), p, dy.data<float>(), x.data<float>(), dx.data<float>(),
                   detail::ste_run(), detail::ste_run_reference);
  return dx;
}

// The Relu-fused pair (fake_quant_runs.h): the same layout walks as fake_quant / fake_quant_ste_backward,
// with the Relu-fused run kernels.
Tensor fake_quant_relu(const Tensor& x, const QuantParams& p) {
  PERCH_CHECK(x.dtype() == DType::kFloat32, "fake_quant_relu: expected a float32 tensor, got ", dtype_name(x.dtype()));
  check_params(p, x.shape());
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());  // every element is written by the walk
  detail::fake_quant_walk(SlotLayout::make(p.spec, x.shape()), p, x.data<float>(), y.data<float>(),
                          detail::relu_fake_quant_run(), detail::relu_fake_quant_run_reference);
  return y;
}

Tensor fake_quant_relu_ste_backward(const Tensor& dy, const Tensor& x, const QuantParams& p) {
  check_same(dy, x, "fake_quant_relu_ste_backward");
  check_params(p, x.shape());
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());  // every element is written by the walk
  detail::ste_walk(SlotLayout::make(p.spec, x.shape()), p, dy.data<float>(), x.data<float>(), dx.data<float>(),
                   detail::relu_ste_run(), detail::relu_ste_run_reference);
  return dx;
}

void fake_quant_relu_run(const float* x, float* y, int64_t n, float scale, int32_t zero_point, const QuantSpec& spec) {
  detail::relu_fake_quant_run()(x, y, n, scale, zero_point, spec.qmin(), spec.qmax());
}

void fake_quant_relu_ste_run(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                             const QuantSpec& spec) {
  detail::relu_ste_run()(dy, x, dx, n, scale, zero_point, spec.qmin(), spec.qmax());
}

LsqGrad lsq_backward(const Tensor& dy, const Tensor& x, const QuantParams& p, double grad_scale) {
  check_same(dy, x, "lsq_backward");
  check_params(p, x.shape());
  const SlotLayout l = SlotLayout::make(p.spec, x.shape());
  LsqGrad g{Tensor(DType::kFloat32, x.shape()), {}};
  std::vector<double> ds(static_cast<size_t>(l.slots), 0.0);
  std::vector<int64_t> per_slot(static_cast<size_t>(l.slots), 0);
  const float* xs = x.data<float>();
  const float* dys = dy.data<float>();
  float* dx = g.dx.data<float>();
  const int32_t qmin = p.spec.qmin(), qmax = p.spec.qmax();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      const float u = xs[b + k] / p.scale[s];
      const double lo = qmin - p.zero_point[s], hi = qmax - p.zero_point[s];
      const double d = dys[b + k];
      ++per_slot[s];
      if (u < lo) {
        ds[s] += d * lo;
      } else if (u > hi) {
        ds[s] += d * hi;
      } else {
        ds[s] += d * (static_cast<double>(std::nearbyint(u)) - static_cast<double>(u));
        dx[b + k] = dys[b + k];
      }
    }
  });
  g.dscale.resize(ds.size());
  for (size_t s = 0; s < ds.size(); ++s) {
    const double gs = grad_scale > 0 ? grad_scale
                                     : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(per_slot[s], 1)) * qmax);
    g.dscale[s] = static_cast<float>(ds[s] * gs);
  }
  return g;
}


namespace detail {

void fake_quant_walk(const SlotLayout& l, const QuantParams& p, const float* x, float* y, FakeQuantRunFn run,
                     FakeQuantRunFn ref) {
  const int32_t qmin = p.spec.qmin(), qmax = p.spec.qmax();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    if (step == 0) {
      const auto s = static_cast<size_t>(s0);
      auto body = [&](int64_t lo, int64_t hi) { run(x + b + lo, y + b + lo, hi - lo, p.scale[s], p.zero_point[s], qmin, qmax); };
      if (n < 65536) body(0, n);
      else parallel_for(0, n, body, 32768);
      return;
    }
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      ref(x + b + k, y + b + k, 1, p.scale[s], p.zero_point[s], qmin, qmax);
    }
  });
}

void ste_walk(const SlotLayout& l, const QuantParams& p, const float* dy, const float* x, float* dx, SteRunFn run,
              SteRunFn ref) {
  const int32_t qmin = p.spec.qmin(), qmax = p.spec.qmax();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    if (step == 0) {
      const auto s = static_cast<size_t>(s0);
      auto body = [&](int64_t lo, int64_t hi) {
        run(dy + b + lo, x + b + lo, dx + b + lo, hi - lo, p.scale[s], p.zero_point[s], qmin, qmax);
      };
      if (n < 65536) body(0, n);
      else parallel_for(0, n, body, 32768);
      return;
    }
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      ref(dy + b + k, x + b + k, dx + b + k, 1, p.scale[s], p.zero_point[s], qmin, qmax);
    }
  });
}

}  // namespace detail

}  // namespace perch::quant
