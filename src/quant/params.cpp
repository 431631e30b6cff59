#include "perch/quant/params.h"

#include "fake_quant_runs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "perch/core/threads.h"

namespace perch::quant {

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::kPerTensor: return "per-tensor";
    case Granularity::kPerChannel: return "per-channel";
    case Granularity::kPerGroup: return "per-group";
  }
  return "?";
}

float min_scale() { return std::numeric_limits<float>::min(); }

int32_t QuantSpec::qmin() const {
  if (is_signed) return -(int32_t{1} << (bits - 1)) + (narrow_range ? 1 : 0);
  return narrow_range ? 1 : 0;
}

int32_t QuantSpec::qmax() const {
  if (is_signed) return (int32_t{1} << (bits - 1)) - 1;
  return (int32_t{1} << bits) - 1;
}

DType QuantSpec::storage_type() const {
  if (bits <= 8) return is_signed ? DType::kInt8 : DType::kUInt8;
  return is_signed ? DType::kInt16 : DType::kUInt16;
}

void QuantSpec::validate() const {
  PERCH_CHECK((bits >= 2 && bits <= 8) || bits == 16, "QuantSpec: bits must be 2..8 or 16, got ", bits);
  PERCH_CHECK(group_size >= 0, "QuantSpec: negative group_size ", group_size);
  if (granularity == Granularity::kPerGroup) {
    PERCH_CHECK(group_size > 0, "QuantSpec: per-group granularity needs group_size > 0 (", to_string(), ")");
  }
}

std::string QuantSpec::to_string() const {
  std::ostringstream os;
  os << (is_signed ? "int" : "uint") << bits << (symmetric ? " symmetric" : " asymmetric")
     << (narrow_range ? " narrow" : "") << " " << granularity_name(granularity);
  if (granularity != Granularity::kPerTensor) os << " axis=" << axis;
  if (granularity == Granularity::kPerGroup) os << " group_size=" << group_size;
  os << " [" << qmin() << "," << qmax() << "]";
  return os.str();
}

int64_t QuantParams::count() const { return static_cast<int64_t>(scale.size()); }

SlotLayout SlotLayout::make(const QuantSpec& spec, const Shape& x_shape) {
  spec.validate();
  SlotLayout l;
  l.granularity = spec.granularity;
  l.numel = checked_numel(x_shape, "quantized tensor");
  if (spec.granularity == Granularity::kPerTensor) {
    l.outer = 1;
    l.dim = 1;
    l.inner = l.numel;
    l.slots = 1;
    return l;
  }
  const int64_t rank = static_cast<int64_t>(x_shape.size());
  PERCH_CHECK(rank > 0, "quantization: ", granularity_name(spec.granularity), " needs a tensor of rank >= 1, got a scalar (",
              spec.to_string(), ")");
  l.axis = normalize_axis(spec.axis, rank, "quantization axis");
  const auto ax = static_cast<size_t>(l.axis);
  l.dim = x_shape[ax];
  l.outer = 1;
  for (size_t i = 0; i < ax; ++i) l.outer *= x_shape[i];
  l.inner = 1;
  for (size_t i = ax + 1; i < x_shape.size(); ++i) l.inner *= x_shape[i];
  if (spec.granularity == Granularity::kPerChannel) {
    l.ngroups = l.dim;
    l.slots = l.dim;
    l.param_shape = {l.dim};
  } else {
    l.group = spec.group_size;
    l.ngroups = (l.dim + l.group - 1) / l.group;
    l.param_shape = x_shape;
    l.param_shape[ax] = l.ngroups;
    l.slots = l.outer * l.ngroups * l.inner;
  }
  return l;
}

int64_t SlotLayout::slot(int64_t i) const {
  switch (granularity) {
    case Granularity::kPerTensor: return 0;
    case Granularity::kPerChannel: return (i / inner) % dim;
    case Granularity::kPerGroup: {
      const int64_t r = i % inner;
      const int64_t od = i / inner;
      return ((od / dim) * ngroups + (od % dim) / group) * inner + r;
    }
  }
  return 0;
}

namespace {

// One slot's (scale, zero_point) from its range. See the header for the formulas; float32 throughout.
void choose_one(const QuantSpec& spec, float mn, float mx, float* scale, int32_t* zp) {
  const int32_t qmin = spec.qmin(), qmax = spec.qmax();
  if (spec.symmetric) {
    const float a = std::max(std::fabs(mn), std::fabs(mx));
    const int32_t mid = spec.is_signed ? 0 : (int32_t{1} << (spec.bits - 1));
    float s = a / static_cast<float>(qmax - mid);
    if (a == 0.0f) s = kDegenerateScale;
    else if (s < min_scale()) s = min_scale();
    *scale = s;
    *zp = mid;
    return;
  }
  const float lo = std::min(mn, 0.0f), hi = std::max(mx, 0.0f);
  const float levels = static_cast<float>(qmax - qmin);
  float s = (hi - lo) / levels;
  if (std::isinf(s)) s = static_cast<float>(static_cast<double>(hi) / levels - static_cast<double>(lo) / levels);
  if (hi == lo) s = kDegenerateScale;
  else if (s < min_scale()) s = min_scale();
  const float z = static_cast<float>(qmin) - lo / s;  // float, as ONNX's reference computes it
  const float zc = std::clamp(z, static_cast<float>(qmin), static_cast<float>(qmax));
  *scale = s;
  *zp = static_cast<int32_t>(std::nearbyint(zc));
}

}  // namespace

QuantParams choose_params(const QuantSpec& spec, const Shape& x_shape, std::span<const float> mins,
                          std::span<const float> maxs) {
  const SlotLayout l = SlotLayout::make(spec, x_shape);
  PERCH_CHECK(static_cast<int64_t>(mins.size()) == l.slots && static_cast<int64_t>(maxs.size()) == l.slots,
              "choose_params: ", spec.to_string(), " on shape ", shape_str(x_shape), " needs ", l.slots,
              " ranges, got ", mins.size(), " mins and ", maxs.size(), " maxs");
  QuantParams p;
  p.spec = spec;
  p.axis = l.axis;
  p.param_shape = l.param_shape;
  p.scale.resize(static_cast<size_t>(l.slots));
  p.zero_point.resize(static_cast<size_t>(l.slots));
  for (size_t k = 0; k < p.scale.size(); ++k) {
    PERCH_CHECK(std::isfinite(mins[k]) && std::isfinite(maxs[k]), "choose_params: slot ", k,
                " has a non-finite range [", mins[k], ", ", maxs[k], "]");
    PERCH_CHECK(mins[k] <= maxs[k], "choose_params: slot ", k, " has min ", mins[k], " > max ", maxs[k]);
    choose_one(spec, mins[k], maxs[k], &p.scale[k], &p.zero_point[k]);
  }
  return p;
}

SlotRanges slot_ranges(const SlotLayout& l, const float* xs) {
  SlotRanges r;
  r.min.assign(static_cast<size_t>(l.slots), std::numeric_limits<float>::infinity());
  r.max.assign(static_cast<size_t>(l.slots), -std::numeric_limits<float>::infinity());
  auto merge = [&](size_t s, const detail::RunRange& q, int64_t begin) {
    r.min[s] = std::min(r.min[s], q.min);
    r.max[s] = std::max(r.max[s], q.max);
    if (q.nonfinite > 0 && r.nonfinite == 0) r.first_nonfinite = begin + q.first_nonfinite;
    r.nonfinite += q.nonfinite;
  };
  const detail::RangeRunFn run = detail::range_run();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    if (step == 0) {
      // Long runs (per-tensor activations) in fixed chunks over the thread pool, merged in order: min/max
      // are exact in any order (zeros come back as +0), so the result does not depend on the threads.
      constexpr int64_t kChunk = 65536;
      const int64_t chunks = (n + kChunk - 1) / kChunk;
      if (chunks <= 1) {
        merge(static_cast<size_t>(s0), run(xs + b, n), b);
        return;
      }
      std::vector<detail::RunRange> part(static_cast<size_t>(chunks));
      parallel_for(0, chunks, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          part[static_cast<size_t>(c)] = run(xs + b + c * kChunk, std::min(kChunk, n - c * kChunk));
      }, 1);
      for (int64_t c = 0; c < chunks; ++c) merge(static_cast<size_t>(s0), part[static_cast<size_t>(c)], b + c * kChunk);
      return;
    }
    for (int64_t k = 0; k < n; ++k) {
      const float v = xs[b + k];
      if (!std::isfinite(v)) {
        if (r.nonfinite++ == 0) r.first_nonfinite = b + k;
        continue;
      }
      const auto s = static_cast<size_t>(s0 + k * step);
      r.min[s] = std::min(r.min[s], v);
      r.max[s] = std::max(r.max[s], v);
    }
  });
  for (size_t s = 0; s < r.min.size(); ++s) r.min[s] += 0.0f, r.max[s] += 0.0f;  // -0 -> +0 on every path
  return r;
}

QuantParams params_from_tensor(const QuantSpec& spec, const Tensor& x) {
  PERCH_CHECK(x.dtype() == DType::kFloat32, "params_from_tensor: expected float32, got ", dtype_name(x.dtype()));
  const SlotLayout l = SlotLayout::make(spec, x.shape());
  SlotRanges r = slot_ranges(l, x.data<float>());
  const int64_t bad = r.nonfinite, first_bad = r.first_nonfinite;
  std::vector<float>& mn = r.min;
  std::vector<float>& mx = r.max;
  PERCH_CHECK(bad == 0, "params_from_tensor: ", bad, " non-finite value(s) in tensor of shape ", shape_str(x.shape()),
              ", first at flat index ", first_bad);
  for (size_t s = 0; s < mn.size(); ++s) {
    if (mn[s] > mx[s]) mn[s] = mx[s] = 0.0f;  // empty slot (zero-size tensor)
  }
  return choose_params(spec, x.shape(), mn, mx);
}

void check_params(const QuantParams& p, const Shape& x_shape) {
  const SlotLayout l = SlotLayout::make(p.spec, x_shape);
  PERCH_CHECK(p.count() == l.slots && static_cast<int64_t>(p.zero_point.size()) == l.slots,
              "quantization parameters (", p.spec.to_string(), ") have ", p.scale.size(), " scales and ",
              p.zero_point.size(), " zero points; a tensor of shape ", shape_str(x_shape), " needs ", l.slots);
  PERCH_CHECK(p.axis == l.axis, "quantization parameters were made for axis ", p.axis, ", tensor of shape ",
              shape_str(x_shape), " gives axis ", l.axis);
  PERCH_CHECK(p.param_shape == l.param_shape, "quantization parameter shape ", shape_str(p.param_shape),
              " does not fit tensor of shape ", shape_str(x_shape), " (expected ", shape_str(l.param_shape), ")");
}

QuantParams make_params(const QuantSpec& spec, const Shape& x_shape, std::vector<float> scale,
                        std::vector<int32_t> zero_point) {
  const SlotLayout l = SlotLayout::make(spec, x_shape);
  QuantParams p;
  p.spec = spec;
  p.axis = l.axis;
  p.param_shape = l.param_shape;
  p.scale = std::move(scale);
  p.zero_point = std::move(zero_point);
  check_params(p, x_shape);
  for (size_t k = 0; k < p.scale.size(); ++k) {
    PERCH_CHECK(std::isfinite(p.scale[k]) && p.scale[k] > 0.0f, "make_params: scale[", k, "] = ", p.scale[k],
                " is not a finite positive number");
    PERCH_CHECK(p.zero_point[k] >= spec.qmin() && p.zero_point[k] <= spec.qmax(), "make_params: zero_point[", k,
                "] = ", p.zero_point[k], " outside [", spec.qmin(), ", ", spec.qmax(), "] of ", spec.to_string());
  }
  return p;
}

namespace {

template <typename Q>
void quantize_loop(const SlotLayout& l, const QuantParams& p, const float* x, Q* q) {
  const int32_t qmin = p.spec.qmin(), qmax = p.spec.qmax();
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    if (step == 0) {
      // One (scale, zero point) for the run (per-tensor data, a channel's run): quantize_value's result, written so the
      // compiler vectorizes it. r = x / s (float division); NaN -> 0 (the zero point); clamped to [qmin - zp, qmax - zp]
      // — integers, so clamping before rounding equals clamping after; then rounded to nearest even by adding and
      // subtracting 1.5 * 2^23, exact for |r| <= 2^22 (the clamp keeps |r| < 2^17).
      const float sc = p.scale[static_cast<size_t>(s0)];
      const int32_t zp = p.zero_point[static_cast<size_t>(s0)];
      const float lo = static_cast<float>(qmin - zp), hi = static_cast<float>(qmax - zp), magic = 12582912.0f;
      for (int64_t k = 0; k < n; ++k) {
        float r = x[b + k] / sc;
        r = r == r ? r : 0.0f;
        r = r < lo ? lo : r;
        r = r > hi ? hi : r;
        r = (r + magic) - magic;
        q[b + k] = static_cast<Q>(static_cast<int32_t>(r) + zp);
      }
      return;
    }
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      q[b + k] = static_cast<Q>(quantize_value(x[b + k], p.scale[s], p.zero_point[s], qmin, qmax));
    }
  });
}

template <typename Q>
void dequantize_loop(const SlotLayout& l, const QuantParams& p, const Q* q, float* x) {
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      x[b + k] = dequantize_value(static_cast<int32_t>(q[b + k]), p.scale[s], p.zero_point[s]);
    }
  });
}

}  // namespace

Tensor quantize(const Tensor& x, const QuantParams& p) {
  PERCH_CHECK(x.dtype() == DType::kFloat32, "quantize: expected a float32 tensor, got ", dtype_name(x.dtype()));
  check_params(p, x.shape());
  const SlotLayout l = SlotLayout::make(p.spec, x.shape());
  Tensor q(p.spec.storage_type(), x.shape());
  switch (q.dtype()) {
    case DType::kInt8: quantize_loop(l, p, x.data<float>(), q.data<int8_t>()); break;
    case DType::kUInt8: quantize_loop(l, p, x.data<float>(), q.data<uint8_t>()); break;
    case DType::kInt16: quantize_loop(l, p, x.data<float>(), q.data<int16_t>()); break;
    case DType::kUInt16: quantize_loop(l, p, x.data<float>(), q.data<uint16_t>()); break;
    default: PERCH_FAIL("quantize: unexpected storage type ", dtype_name(q.dtype()));
  }
  return q;
}

Tensor dequantize(const Tensor& q, const QuantParams& p) {
  check_params(p, q.shape());
  const SlotLayout l = SlotLayout::make(p.spec, q.shape());
  Tensor x(DType::kFloat32, q.shape());
  float* out = x.data<float>();
  switch (q.dtype()) {
    case DType::kInt8: dequantize_loop(l, p, q.data<int8_t>(), out); break;
    case DType::kUInt8: dequantize_loop(l, p, q.data<uint8_t>(), out); break;
    case DType::kInt16: dequantize_loop(l, p, q.data<int16_t>(), out); break;
    case DType::kUInt16: dequantize_loop(l, p, q.data<uint16_t>(), out); break;
    case DType::kInt32: dequantize_loop(l, p, q.data<int32_t>(), out); break;
    default: PERCH_FAIL("dequantize: expected an integer tensor (int8/uint8/int16/uint16/int32), got ", dtype_name(q.dtype()));
  }
  return x;
}

Tensor fake_quant(const Tensor& x, const QuantParams& p) {
  PERCH_CHECK(x.dtype() == DType::kFloat32, "fake_quant: expected a float32 tensor, got ", dtype_name(x.dtype()));
  check_params(p, x.shape());
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());  // every element is written by the walk
  // Elementwise: runs sharing one (scale, zero point) go through the dispatched run kernel
  // (fake_quant_runs.h); long runs (per-tensor activations) are split over the thread pool. Same result
  // on every path and thread count.
  detail::fake_quant_walk(SlotLayout::make(p.spec, x.shape()), p, x.data<float>(), y.data<float>(),
                          detail::fake_quant_run(), detail::fake_quant_run_reference);
  return y;
}

}  // namespace perch::quant
