// Internal: the elementwise loops behind quant::fake_quant and quant::fake_quant_ste_backward for a run of
// elements that share one (scale, zero_point) — a per-tensor activation, or one output channel of
// per-channel weights on axis 0. A reference twin and an AVX-512 twin with the same signature; the
// dispatching entry points pick the AVX-512 one when Path::kAvx512Vnni is active (core/cpu.h, PERCH_PATHS).
//
// Math (identical, bit for bit, on every path; ONNX QuantizeLinear/DequantizeLinear):
//   u = x / s                      float32 division (not x * (1/s): that differs in the last bit)
//   r = round_half_even(u)         NaN stays NaN
//   q = clamp(r + zp, qmin, qmax)  NaN -> zp. In float: r + zp is exact for |r| < 2^24 - 2^16; beyond it
//                                  the clamp's outcome cannot change (|zp| <= 2^16, qmax - qmin < 2^16)
//   y = (q - zp) * s               float32 product: |q - zp| < 2^17 has 17 significant bits, so the product
//                                  has at most 41 and one rounding to float equals the double product
//                                  rounded to float (quant::dequantize_value).
// STE mask: dx = dy where qmin - zp <= u <= qmax - zp (float compares of the same u), else 0; NaN -> 0.
//
// Relu fused in front (the training tape runs Relu -> FakeQuantAct as one node, train/autograd.cpp):
//   relu_fake_quant_run:  y = fake_quant(r) with r = (x > 0 ? x : +0), exactly the runtime Relu's output
//                         (NaN, -inf, -0 and negatives all give +0), so y equals the unfused pair bit for bit.
//   relu_ste_run:         dx = dy where x > 0 and qmin - zp <= x / s <= qmax - zp, else +0: the STE mask of
//                         r composed with Relu's backward (dx = x > 0 ? d : 0). For x > 0, r = x, so u = x / s
//                         is the same float division; for x <= 0 (or NaN) Relu's backward gives +0 whatever the
//                         STE did. Same bits as the two passes, in one read of dy and x.
#pragma once

#include <cstdint>

#include "perch/quant/params.h"

namespace perch::quant::detail {

using FakeQuantRunFn = void (*)(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                                int32_t qmax);
using SteRunFn = void (*)(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                          int32_t qmin, int32_t qmax);

void fake_quant_run_reference(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                              int32_t qmax);
void ste_run_reference(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                       int32_t qmin, int32_t qmax);
void relu_fake_quant_run_reference(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                                   int32_t qmax);
void relu_ste_run_reference(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                            int32_t qmin, int32_t qmax);

// False when the compiler could not build the AVX-512 file; then the twins below must not be called.
bool avx512_runs_compiled();
void fake_quant_run_avx512(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                           int32_t qmax);
void ste_run_avx512(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                    int32_t qmin, int32_t qmax);
void relu_fake_quant_run_avx512(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                                int32_t qmax);
void relu_ste_run_avx512(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                         int32_t qmin, int32_t qmax);

// Range of a run for quant::slot_ranges: min/max over the finite values (left as +inf / -inf when there is
// none; a result of -0 is returned as +0 so the sign of zero cannot depend on the order of comparisons),
// the number of non-finite values and the offset of the first one (-1 if none).
struct RunRange {
  float min, max;
  int64_t nonfinite, first_nonfinite;
};
using RangeRunFn = RunRange (*)(const float* x, int64_t n);
RunRange range_run_reference(const float* x, int64_t n);
RunRange range_run_avx512(const float* x, int64_t n);

// The STE mask without the division: fl(x / s) is non-decreasing in x for s > 0 (division by a positive
// constant and round-to-nearest are both monotone), so  fl(x / s) >= qmin - zp  <=>  x >= t_lo  and
// fl(x / s) <= qmax - zp  <=>  x <= t_hi  with t_lo the smallest float meeting the first and t_hi the largest
// meeting the second (NaN fails both forms). Found by stepping ulps from (qmin - zp) * s, (qmax - zp) * s,
// checking each candidate with the division itself. False if not found within 64 steps (then the caller
// divides). The AVX-512 STE twins use it on runs of 64 values or more; the reference twins divide, and the
// tests compare them.
bool ste_thresholds(float scale, int32_t zero_point, int32_t qmin, int32_t qmax, float* t_lo, float* t_hi);

// The layout walks shared by fake_quant / fake_quant_relu and the two STE backwards (one per kind of run
// function): runs sharing one (scale, zero point) go through `run`, split over the thread pool when long
// (elementwise, so the split cannot change the result); strided runs (per-channel on an inner axis) call
// `ref` one element at a time.
void fake_quant_walk(const SlotLayout& l, const QuantParams& p, const float* x, float* y, FakeQuantRunFn run,
                     FakeQuantRunFn ref);
void ste_walk(const SlotLayout& l, const QuantParams& p, const float* dy, const float* x, float* dx, SteRunFn run,
              SteRunFn ref);

// The best twin for the active paths (decided per call from active_paths(), which is detected once).
FakeQuantRunFn fake_quant_run();
SteRunFn ste_run();
FakeQuantRunFn relu_fake_quant_run();
SteRunFn relu_ste_run();
RangeRunFn range_run();

}  // namespace perch::quant::detail
