// perch/ptq/equalize.h — cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").
//
// For two weight layers A -> [Relu] -> [MaxPool] -> [Flatten] -> B, positive per-channel scaling
// commutes with everything between them (ReLU(x/s) = ReLU(x)/s and max-pooling likewise for s > 0), so
//   W_A[i, :] /= s_i,  b_A[i] /= s_i,  W_B[:, i] *= s_i
// leaves the model's function unchanged. Choosing s_i = sqrt(r_A,i / r_B,i), with r_A,i = max|W_A[i, :]|
// (output channel i of A) and r_B,i = max|W_B[:, i]| (input channel i of B, all its Flatten features),
// gives both ranges sqrt(r_A,i * r_B,i): channels that BN folding (or a deliberate rescale) spread apart
// come back together, which is what per-tensor weights and per-tensor activations need.
// ReLU6/Clip(0, 6) between the layers blocks the pair (its threshold does not scale); so do a Conv B with
// groups, shared weights and values read by more than one node.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "perch/data/dataset.h"
#include "perch/graph/ir.h"

namespace perch::ptq {

struct EqualizeReport {
  int pairs = 0;          // layer pairs equalized
  int sweeps = 0;         // passes over all pairs until the scales converged
  double max_spread_before = 0, max_spread_after = 0;  // largest per-channel weight range spread
  // The accumulated scales s_i (product over the sweeps) by the equalized layer's output value: output
  // channels of A (W_A[i, :] was divided by s_i) and, for a Conv B, its input channels (W_B[:, i] multiplied).
  // QAT with BN kept (train/qat.h) re-applies them to the weights it folds.
  std::map<std::string, std::vector<double>> out_scales, in_scales;
  // equalize_depthwise_inputs(): pairs rescaled, and the largest channel gain t_c it applied.
  int depthwise_pairs = 0;
  double max_depthwise_gain = 1;
};

// Equalizes in place; the model must be canonical (BatchNormalization folded, no Identity).
EqualizeReport equalize(graph::Model& model, int max_sweeps = 20);

// Activation equalization in front of depthwise convolutions, for per-channel (or per-group) weights.
//
// For a Conv A whose output reaches a depthwise Conv B (weight [C*m, 1, kh, kw], group = C) directly or through a
// Relu, and nothing else reads it, positive per-channel scaling of the value v that B reads is exact:
//   W_A[c, :] *= t_c,  b_A[c] *= t_c,  W_B[o] /= t_{o / m}     (Relu(t x) = t Relu(x), t > 0)
// With per-channel weights neither layer's quantization changes (each of their output channels keeps its own
// scale, which moves with t_c: the rounded integers are the same), but v is quantized with *one* scale for all
// its channels. Channels whose range is small beside the widest one's get few of its levels — a per-tensor
// activation that per-channel parameters would fix, and that ONNX Runtime's QLinearConv does not accept per
// channel. Choosing t_c as large as fits v's observed range,
//   lo_c = min(0, min x_c), hi_c = max(0, max x_c), L = min_c lo_c, H = max_c hi_c,
//   t_c = min(H / hi_c [hi_c > 0], L / lo_c [lo_c < 0], kMaxDepthwiseGain)  (>= 1; 1 for a channel always 0),
// stretches every channel over the range v already spans, so each gets up to all of the per-tensor levels
// and the range itself does not grow. Ranges come from running the (float, canonical) model on `data` in
// batches of `batch`. Nothing is rescaled with `per_tensor_weights`, nor a pair whose A or B is named in
// `per_tensor_nodes`: there the scaling would change the weights' quantization (calibrate() passes no names, so
// that its model does not depend on per-layer choices). Returns the pairs rescaled; fills
// report.depthwise_pairs / max_depthwise_gain.
constexpr double kMaxDepthwiseGain = 256.0;
int equalize_depthwise_inputs(graph::Model& model, const Dataset& data, int64_t batch, bool per_tensor_weights,
                              const std::set<std::string>& per_tensor_nodes, EqualizeReport& report);

}  // namespace perch::ptq
