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
#include <string>
#include <vector>

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
};

// Equalizes in place; the model must be canonical (BatchNormalization folded, no Identity).
EqualizeReport equalize(graph::Model& model, int max_sweeps = 20);

}  // namespace perch::ptq
