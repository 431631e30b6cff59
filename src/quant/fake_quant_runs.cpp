#include "fake_quant_runs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "perch/core/cpu.h"
#include "perch/quant/params.h"

namespace perch::quant::detail {

void fake_quant_run_reference(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                              int32_t qmax) {
  for (int64_t k = 0; k < n; ++k)
    y[k] = dequantize_value(quantize_value(x[k], scale, zero_point, qmin, qmax), scale, zero_point);
}

void ste_run_reference(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                       int32_t qmin, int32_t qmax) {
  const float lo = static_cast<float>(qmin - zero_point), hi = static_cast<float>(qmax - zero_point);
  for (int64_t k = 0; k < n; ++k) {
    const float u = x[k] / scale;
    dx[k] = (u >= lo && u <= hi) ? dy[k] : 0.0f;
  }
}

void relu_fake_quant_run_reference(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                                   int32_t qmax) {
  for (int64_t k = 0; k < n; ++k) {
    const float r = x[k] > 0.0f ? x[k] : 0.0f;  // the runtime's Relu
    y[k] = dequantize_value(quantize_value(r, scale, zero_point, qmin, qmax), scale, zero_point);
  }
}

void relu_ste_run_reference(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                            int32_t qmin, int32_t qmax) {
  const float lo = static_cast<float>(qmin - zero_point), hi = static_cast<float>(qmax - zero_point);
  for (int64_t k = 0; k < n; ++k) {
    const float u = x[k] / scale;
    dx[k] = (x[k] > 0.0f && u >= lo && u <= hi) ? dy[k] : 0.0f;
  }
}

bool ste_thresholds(float scale, int32_t zero_point, int32_t qmin, int32_t qmax, float* t_lo, float* t_hi) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (!(scale > 0.0f) || !std::isfinite(scale)) return false;
  const float lo = static_cast<float>(qmin - zero_point), hi = static_cast<float>(qmax - zero_point);
  // t_lo: ok(c) = c / s >= lo holds for +inf and not for -inf; find c with ok(c) and !ok(previous float).
  bool found = false;
  float c = lo * scale;
  for (int i = 0; i < 64 && !found && !std::isnan(c); ++i) {
    if (c / scale >= lo) {
      const float p = std::nextafter(c, -kInf);
      if (!(p / scale >= lo)) *t_lo = c, found = true;
      else c = p;
    } else {
      c = std::nextafter(c, kInf);
    }
  }
  if (!found) return false;
  // t_hi: ok(c) = c / s <= hi holds for -inf and not for +inf; find c with ok(c) and !ok(next float).
  found = false;
  c = hi * scale;
  for (int i = 0; i < 64 && !found && !std::isnan(c); ++i) {
    if (c / scale <= hi) {
      const float q = std::nextafter(c, kInf);
      if (!(q / scale <= hi)) *t_hi = c, found = true;
      else c = q;
    } else {
      c = std::nextafter(c, -kInf);
    }
  }
  return found;
}

RunRange range_run_reference(const float* x, int64_t n) {
  RunRange r{std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), 0, -1};
  for (int64_t k = 0; k < n; ++k) {
    const float v = x[k];
    if (!std::isfinite(v)) {
      if (r.nonfinite++ == 0) r.first_nonfinite = k;
      continue;
    }
    r.min = std::min(r.min, v);
    r.max = std::max(r.max, v);
  }
  r.min += 0.0f;  // -0 -> +0
  r.max += 0.0f;
  return r;
}

RangeRunFn range_run() {
  if (avx512_runs_compiled() && has_path(active_paths(), Path::kAvx512Vnni)) return range_run_avx512;
  return range_run_reference;
}

FakeQuantRunFn fake_quant_run() {
  if (avx512_runs_compiled() && has_path(active_paths(), Path::kAvx512Vnni)) return fake_quant_run_avx512;
  return fake_quant_run_reference;
}

SteRunFn ste_run() {
  if (avx512_runs_compiled() && has_path(active_paths(), Path::kAvx512Vnni)) return ste_run_avx512;
  return ste_run_reference;
}

FakeQuantRunFn relu_fake_quant_run() {
  if (avx512_runs_compiled() && has_path(active_paths(), Path::kAvx512Vnni)) return relu_fake_quant_run_avx512;
  return relu_fake_quant_run_reference;
}

SteRunFn relu_ste_run() {
  if (avx512_runs_compiled() && has_path(active_paths(), Path::kAvx512Vnni)) return relu_ste_run_avx512;
  return relu_ste_run_reference;
}

}  // namespace perch::quant::detail
