// perch/quant/params.h — affine quantization parameters: what they mean, how they are chosen, and the
// three float<->integer maps (quantize, dequantize, fake_quant).
//
// The one convention used everywhere in perch (docs/QUANTIZATION.md derives it):
//
//   quantize:    q = clamp(round_half_to_even(x / scale) + zero_point, qmin, qmax)
//   dequantize:  x = (q - zero_point) * scale
//
// exactly as ONNX QuantizeLinear / DequantizeLinear specify: `x / scale` is a float32 division (not a
// multiplication by 1/scale), rounding is std::nearbyint under the default FE_TONEAREST mode (ties to
// even), and the zero point is *added* after rounding. Non-finite inputs: +inf -> qmax, -inf -> qmin,
// NaN -> zero_point (so NaN dequantizes to 0.0).
//
// Axis convention: `axis` names the dimension the parameters vary along (ONNX's `axis` attribute);
// negative values count from the end and are normalized against the rank of the tensor the parameters
// are made for. Per-channel: one (scale, zero_point) per index along `axis`. Per-group (ONNX opset-21
// blocked quantization): groups of `group_size` consecutive indices along `axis`, separately for every
// position of the other dimensions; the parameter tensor has the data's shape with dim[axis] replaced by
// ceil(dim[axis] / group_size).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "perch/core/tensor.h"

namespace perch::quant {

enum class Granularity { kPerTensor, kPerChannel, kPerGroup };
const char* granularity_name(Granularity g);

// How a tensor is to be quantized. Integer ranges (b = bits):
//   signed:                 [-2^(b-1), 2^(b-1)-1]      narrow_range: [-(2^(b-1)-1), 2^(b-1)-1]
//   unsigned:               [0, 2^b-1]                 narrow_range: [1, 2^b-1]   (as TF/ONNX do)
// Storage: int8/uint8 for b <= 8, int16/uint16 for b == 16.
struct QuantSpec {
  int bits = 8;  // 2..8, or 16
  bool is_signed = true;
  bool symmetric = true;
  bool narrow_range = false;
  Granularity granularity = Granularity::kPerTensor;
  int64_t axis = 0;        // channel / group axis; negative counts from the end
  int64_t group_size = 0;  // per-group only: G consecutive values along `axis` share parameters

  int32_t qmin() const;
  int32_t qmax() const;
  DType storage_type() const;
  void validate() const;  // throws perch::Error naming the bad field
  std::string to_string() const;
};

struct QuantParams {
  QuantSpec spec;
  int64_t axis = 0;   // spec.axis normalized for the shape these parameters were made for (0 per-tensor)
  Shape param_shape;  // {} per-tensor, {C} per-channel, data shape with dim[axis] -> ceil(dim/G) per-group
  std::vector<float> scale;         // row-major over param_shape
  std::vector<int32_t> zero_point;  // row-major over param_shape
  int64_t count() const;            // number of (scale, zero_point) slots
};

// Scale given to a slot whose range is exactly zero (all values 0, or nothing observed): 1.0. Any scale
// represents 0.0 exactly, and 1.0 keeps downstream multipliers (s_in * s_w / s_out) ordinary.
inline constexpr float kDegenerateScale = 1.0f;
// Smallest scale perch ever produces: the smallest normal float, 2^-126. A tiny but nonzero range whose
// scale would be denormal (or 0) gets this scale instead, so 1/scale is finite and no denormals reach
// the kernels.
float min_scale();

// Maps flat element indices of a tensor of shape `x_shape` to parameter slots. Computed once; loops walk
// `runs`: contiguous stretches of `inner` elements whose slots are either all the same (per-tensor and
// per-channel, slot_step 0) or consecutive (per-group, slot_step 1).
//   flat index i = (o * dim + d) * inner + r        (o < outer, d < dim, r < inner)
//   per-tensor:  slot 0
//   per-channel: slot d
//   per-group:   slot (o * ngroups + d / group) * inner + r
struct SlotLayout {
  Granularity granularity = Granularity::kPerTensor;
  int64_t outer = 1, dim = 1, inner = 1, group = 1;
  int64_t ngroups = 1;  // ceil(dim / group) for per-group, dim for per-channel, 1 per-tensor
  int64_t numel = 0;
  int64_t slots = 1;
  int64_t axis = 0;
  Shape param_shape;

  static SlotLayout make(const QuantSpec& spec, const Shape& x_shape);
  int64_t slot(int64_t i) const;

  // Calls fn(begin, length, first_slot, slot_step) over all elements in order; slot of element
  // begin + k is first_slot + k * slot_step.
  template <typename Fn>
  void for_each_run(Fn&& fn) const {
    if (numel == 0) return;
    if (granularity == Granularity::kPerTensor) {
      fn(int64_t{0}, numel, int64_t{0}, int64_t{0});
      return;
    }
    int64_t begin = 0;
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t d = 0; d < dim; ++d, begin += inner) {
        if (granularity == Granularity::kPerChannel) {
          fn(begin, inner, d, int64_t{0});
        } else {
          fn(begin, inner, (o * ngroups + d / group) * inner, int64_t{1});
        }
      }
    }
  }
};

// Per-slot [min, max] of the finite values of a float tensor laid out by `l` (+inf / -inf for a slot
// with no finite value), with the count and first flat index of non-finite values. The one loop behind
// params_from_tensor, the estimators and the per-channel range statistics.
struct SlotRanges {
  std::vector<float> min, max;
  int64_t nonfinite = 0, first_nonfinite = -1;
};
SlotRanges slot_ranges(const SlotLayout& l, const float* x);

// Chooses (scale, zero_point) per slot from observed ranges [mins[k], maxs[k]] (k over slots of
// SlotLayout::make(spec, x_shape)). All arithmetic is float32, as ONNX DynamicQuantizeLinear's reference
// does it, so perch reproduces it bit for bit:
//   asymmetric: lo = min(min, 0), hi = max(max, 0)         (0.0 is always representable)
//               scale = (hi - lo) / (qmax - qmin)
//               zero_point = clamp(round_half_to_even(qmin - lo / scale), qmin, qmax)
//   symmetric:  a = max(|min|, |max|), scale = a / M
//               signed:   zero_point = 0,         M = qmax
//               unsigned: zero_point = 2^(b-1),   M = qmax - 2^(b-1)   (midpoint: 128 for uint8, and
//                         M = 127, i.e. signed-symmetric shifted by 2^(b-1); narrow 1..255 is then
//                         exactly symmetric around 128)
// Degenerate ranges: hi == lo (or a == 0) -> kDegenerateScale; 0 < scale < min_scale() -> min_scale();
// hi - lo overflowing float (e.g. [-FLT_MAX, FLT_MAX]) is computed as hi/(qmax-qmin) - lo/(qmax-qmin).
// Non-finite or inverted (min > max) ranges are errors.
QuantParams choose_params(const QuantSpec& spec, const Shape& x_shape, std::span<const float> mins,
                          std::span<const float> maxs);
// Per-slot min/max of x (float32, all finite) then choose_params.
QuantParams params_from_tensor(const QuantSpec& spec, const Tensor& x);
// Parameters given explicitly (e.g. read from a model). Checks sizes, finite positive scales and zero
// points inside [qmin, qmax].
QuantParams make_params(const QuantSpec& spec, const Shape& x_shape, std::vector<float> scale,
                        std::vector<int32_t> zero_point);
// Throws unless `p` fits a tensor of shape `x_shape` (slot count, axis, param_shape).
void check_params(const QuantParams& p, const Shape& x_shape);

// float32 -> spec.storage_type(), formula above.
Tensor quantize(const Tensor& x, const QuantParams& p);
// Any integer dtype (int8/uint8/int16/uint16/int32) -> float32: (q - zero_point) * scale. The product is
// exact in double and rounded once to float for 8- and 16-bit storage ((q - zp) has at most 17 bits).
Tensor dequantize(const Tensor& q, const QuantParams& p);
// dequantize(quantize(x)) computed in float without the integer tensor.
Tensor fake_quant(const Tensor& x, const QuantParams& p);

// Scalar forms of the maps above (the loops use them; tests and other layers may too).
inline int32_t quantize_value(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  const float r = std::nearbyint(x / scale);  // float division, ties to even
  if (std::isnan(r)) return zero_point;
  // Exact whenever the result is not clamped (|r| < 2^24 there); huge |r| only has to clamp correctly.
  const double v = static_cast<double>(r) + zero_point;
  if (v <= qmin) return qmin;
  if (v >= qmax) return qmax;
  return static_cast<int32_t>(v);
}
inline float dequantize_value(int32_t q, float scale, int32_t zero_point) {
  return static_cast<float>(static_cast<double>(int64_t{q} - zero_point) * static_cast<double>(scale));
}

}  // namespace perch::quant
