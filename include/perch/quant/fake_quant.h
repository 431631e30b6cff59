// perch/quant/fake_quant.h — fake quantization for quantization-aware training, and its gradients.
//
// Three families, each a forward and a backward:
//
// 1. perch's own convention (params.h: q = clamp(round_half_even(x/s) + zp, qmin, qmax), y = (q - zp) * s)
//    with the straight-through estimator (STE): round() is treated as the identity, so
//      dx = dy  where  qmin - zp <= x / s <= qmax - zp   (x inside the clip range [(qmin-zp)s, (qmax-zp)s])
//      dx = 0   elsewhere.
//
// 2. TensorFlow's fake_quant_with_min_max_vars(_per_channel): integer range [narrow ? 1 : 0, 2^bits - 1];
//    (min, max) are first *nudged* so that 0.0 is exactly representable:
//      s = (max - min) / (qmax - qmin);  z0 = qmin - min / s
//      zp = qmin if z0 < qmin, qmax if z0 > qmax, else round_half_away(z0)
//      nudged_min = (qmin - zp) * s;  nudged_max = (qmax - zp) * s
//    forward:  y = floor((clamp(x, nudged_min, nudged_max) - nudged_min) * (1/s) + 0.5) * s + nudged_min
//    (float32 arithmetic, multiplication by the reciprocal and round-half-up, as TF computes it — this is
//    deliberately NOT perch's ONNX convention). Gradient, as TF defines it:
//      dx = dy where nudged_min <= x <= nudged_max, else 0
//      dmin[c] = sum of dy over x < nudged_min,  dmax[c] = sum of dy over x > nudged_max
//    This is the exact gradient of clamp(x, min, max) (the STE view), not of the nudged forward: the
//    nudged ends move with min/max by factors (zp - qmin)/(qmax - qmin) that TF ignores.
//    `axis` = -1 means per-tensor (mins/maxs of size 1); otherwise the channel axis in [0, rank)
//    (TF's per-channel op is axis = rank - 1). Requires min < max per slot and bits in [2, 16].
//
// 3. LSQ (Esser et al. 2020, "Learned Step Size Quantization"): forward is fake_quant(x, p) (family 1)
//    with the step size s = p.scale[slot] as the learned parameter. With u = x / s:
//      dscale[slot] = g * sum dy * { round(u) - u        if qmin - zp <= u <= qmax - zp
//                                  { qmin - zp           if u < qmin - zp
//                                  { qmax - zp           if u > qmax - zp
//      dx = STE mask of family 1.
//    g = grad_scale if > 0, else 1 / sqrt(N * qmax) with N the number of elements of the slot (the
//    paper's default). With zp = 0 this is the paper's -Qn / Qp form.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "perch/core/tensor.h"
#include "perch/quant/params.h"

namespace perch::quant {

Tensor fake_quant_ste_backward(const Tensor& dy, const Tensor& x, const QuantParams& p);

// Relu fused in front of family 1, in one pass each (the training tape's Relu -> FakeQuantAct node):
//   fake_quant_relu(x, p)                    == fake_quant(Relu(x), p)                       bit for bit
//   fake_quant_relu_ste_backward(dy, x, p)   == Relu's backward (x > 0 ? d : +0) of
//                                               d = fake_quant_ste_backward(dy, Relu(x), p)   bit for bit
// with Relu(x) = x > 0 ? x : +0 (the runtime's; NaN -> +0): dx = dy where x > 0 and qmin - zp <= x / s <=
// qmax - zp, else +0.
Tensor fake_quant_relu(const Tensor& x, const QuantParams& p);
Tensor fake_quant_relu_ste_backward(const Tensor& dy, const Tensor& x, const QuantParams& p);
// The same two over one run of n values sharing (scale, zero_point) of `spec`, on the calling thread (the
// dispatched kernels: AVX-512 or the reference, see core/cpu.h). dx may be dy (in place).
void fake_quant_relu_run(const float* x, float* y, int64_t n, float scale, int32_t zero_point, const QuantSpec& spec);
void fake_quant_relu_ste_run(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                             const QuantSpec& spec);

Tensor fake_quant_minmax(const Tensor& x, std::span<const float> mins, std::span<const float> maxs, int bits,
                         bool narrow_range, int64_t axis);

struct MinMaxGrad {
  Tensor dx;
  std::vector<float> dmin, dmax;
};
MinMaxGrad fake_quant_minmax_backward(const Tensor& dy, const Tensor& x, std::span<const float> mins,
                                      std::span<const float> maxs, int bits, bool narrow_range, int64_t axis);

// TF's nudging for one slot (exposed for tests and for exporters writing TF-style graphs).
struct NudgedRange {
  float min = 0, max = 0, scale = 1;
};
NudgedRange nudge_minmax(float min, float max, int32_t qmin, int32_t qmax);

struct LsqGrad {
  Tensor dx;
  std::vector<float> dscale;
};
LsqGrad lsq_backward(const Tensor& dy, const Tensor& x, const QuantParams& p, double grad_scale);

}  // namespace perch::quant
