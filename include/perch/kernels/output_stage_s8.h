// perch/kernels/output_stage_s8.h — the types the int8 kernels (gemm_s8.h, dwconv_s8.h) share: the element
// type of 8-bit activations and the output stage that turns int32 accumulators into 8-bit outputs.
//
// Output stage (one formula for every int8 kernel and every path, reference and SIMD alike):
//   acc   = bias[n] + sum_k (a - a_zero_point) * (w - w_zero_point[n])     (int32, see each kernel's bound)
//   kInt32:           out = acc
//   kUInt8 / kInt8:   out = clamp(multiply_round_once(acc, multiplier[n]) + zero_point, qmin, qmax)
// multiply_round_once is perch/quant/fixed_point.h's (one rounding of acc * M, ties toward +inf): the SIMD paths
// reproduce it bit for bit. The addition of zero_point is exact (done after clamping to [qmin - zp, qmax - zp],
// which gives the same value as clamping the exact sum). Fused ReLU / ReLU6 / Clip are the clamp: e.g. ReLU on
// uint8 with zero point z is qmin = z.
#pragma once

#include <cstdint>

#include "perch/quant/fixed_point.h"

namespace perch::kernels {

// 8-bit activations. Signed activations run on the unsigned kernels shifted by +128 (a ^ 0x80), with the
// zero point shifted the same way, so (a - a_zero_point) — and every result — is unchanged.
enum class Act8 : uint8_t { kUInt8, kInt8 };

enum class OutputType : uint8_t { kInt32, kUInt8, kInt8 };

struct OutputStageS8 {
  OutputType type = OutputType::kUInt8;
  // Per output channel (num_multipliers == channels) or per tensor (num_multipliers == 1). Ignored for kInt32.
  // The SIMD paths take shift in [-31, 30], i.e. every real multiplier in [2^-32, 2^30) (and 0); a call with
  // any other shift is legal and runs on the reference twin.
  const quant::FixedPointMultiplier* multipliers = nullptr;
  int64_t num_multipliers = 0;
  int32_t zero_point = 0;
  int32_t qmin = 0, qmax = 255;  // within the output type's range, qmin <= qmax
};

}  // namespace perch::kernels
