// perch/ptq/dynamic.h — dynamic quantization: weights quantized once, activations when the model runs.
//
// What ONNX Runtime's quantize_dynamic and PyTorch's quantize_dynamic offer, per-channel first, for models whose
// activation ranges calibration data cannot pin down (a sequence model's, a transformer's) or when no data is at
// hand. No calibration: each quantized layer's input is quantized at run time, per tensor, by ONNX's
// DynamicQuantizeLinear:
//   lo = min(min x, 0), hi = max(max x, 0), s_x = (hi - lo) / 255,
//   z_x = saturate_u8(round_half_even(-lo / s_x)),  x_q = saturate_u8(round_half_even(x / s_x) + z_x)
// (float32 arithmetic; quant/params.h's choose_params computes the same bit for bit).
//
// One layer y = x . W (+ b) becomes
//   (x_q, s_x, z_x) = DynamicQuantizeLinear(x)                       once per distinct input value
//   acc = MatMulInteger(x_q, W_q, z_x, z_w)     (ConvInteger for Conv, with the Conv's attributes)
//       = sum_k (x_q[k] - z_x) (W_q[k, n] - z_w[n])                   int32, exact (bound below)
//   y   = Cast<float>(acc) * Mul(s_x, s_w) (+ b)
// W_q: int8, symmetric narrow range [-(2^(b-1) - 1), 2^(b-1) - 1] (b = 2..8 bits), z_w = 0, per channel along the
// output axis — MatMul: the columns of B [K, N]; Gemm: those of B, or of B^T stored as [K, N] (transB), alpha folded
// into s_w, beta C added after; Conv: axis 0 — or per tensor. This is the layout ONNX Runtime's own dynamic quantizer
// writes for MatMul (its optimizer fuses it into DynamicQuantizeMatMul). z_w is written as one scalar 0 even for
// per-channel weights — the channels differ only in s_w, applied after the integer product — since ONNX Runtime's
// ConvInteger refuses a per-channel weight zero point.
//
// Overflow: |x_q - z_x| <= 255 and |W_q| <= 2^(b-1) - 1, so |acc| <= K * 255 * (2^(b-1) - 1) with K the reduction
// length (MatMul/Gemm: K; Conv: C_in / group * prod(kernel)). A layer with K * 255 * (2^(b-1) - 1) >= 2^31 (K > 66 311
// at 8 bits) is kept float and named. Cast<float>(acc) is exact below 2^24 and rounds to nearest even above, as in
// ONNX Runtime. On CPUs without AVX-512 VNNI / AVX-VNNI, ONNX Runtime's u8 x s8 kernels add product pairs in int16 with
// saturation (VPMADDUBSW): 255 * 127 * 2 > 32 767, so 8-bit weights may saturate there; 7-bit weights (b = 7,
// ONNX Runtime's reduce_range) keep every pair sum below 2^15 (255 * 63 * 2 = 32 130).
//
// Kept float, named with the reason (DynamicResult::kept_float): ConvTranspose (ONNX has no integer form), weights that
// are not float32 initializers, MatMul weights of rank > 2, Gemm with transA or a bias that is not an initializer,
// layers past the overflow bound, and the nodes the caller names. Per-group weights are refused (MatMulInteger and
// ConvInteger have no blocked layout).
#pragma once

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "perch/graph/ir.h"
#include "perch/ptq/equalize.h"
#include "perch/ptq/quantize.h"

namespace perch::ptq {

struct DynamicOptions {
  WeightOptions weights;                                        // per-channel 8-bit by default
  std::set<std::string> op_types = {"Conv", "Gemm", "MatMul"};  // which layers to quantize
  std::set<std::string> float_nodes;                            // node names kept float
  bool equalize = true;      // cross-layer equalization first (data-free; ptq/equalize.h)
  bool fold_affine = true;   // Conv -> Mul/Add by per-channel constants folded into the conv first
};

struct DynamicResult {
  graph::Model model;
  std::vector<LayerReport> layers;                          // the quantized layers
  std::vector<std::pair<std::string, std::string>> kept_float;  // node (as Node::describe()), reason
  int64_t dynamic_inputs = 0;  // DynamicQuantizeLinear nodes written (one per distinct layer input)
  std::string canonicalize_summary;
  EqualizeReport equalization;
  double seconds = 0;
};

// Quantizes `model` (not modified) as above. The result's opset is at least 11 (DynamicQuantizeLinear).
DynamicResult quantize_dynamic(const graph::Model& model, const DynamicOptions& options);

}  // namespace perch::ptq
