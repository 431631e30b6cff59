// perch/ptq/adaround.h — adaptive rounding of weights (AdaRound).
//
// Rounding each weight to its nearest grid point minimises the weight error, not the layer's output error.
// AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"; AIMET's
// implementation) chooses, per weight, floor or ceil of w / s so that the layer's output moves least on real
// inputs. For a layer y = W x (Conv: x an im2col patch of its group, Gemm/MatMul: an input row), output
// channel r, weights w_r (K values), scales s_r (per element: any granularity), the rounded weights
//   w~_r = s_r * clamp(floor(w_r / s_r) + h(V_r), qmin, qmax)
// and the objective, summed over the rows of one group g,
//   L(V) = sum_r E[(w~_r . x - w_r . x)^2] + lambda * sum_{r,k} (1 - |2 h(V_rk) - 1|^beta)
//        = sum_r (w~_r - w_r)^T H_g (w~_r - w_r) + lambda * ...,      H_g = E[x x^T] over the group's patches
// with h the rectified sigmoid clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1.
// The first term is AIMET's reconstruction loss (squared error summed over channels, averaged over images
// and positions) written through the input's second moments: perch accumulates H_g once over the calibration
// images (in double) and every Adam step is then a (rows x K) * (K x K) product, independent of the number
// of images — full-batch, deterministic. V starts where h(V) equals the fractional part of w / s (the soft
// weight is the float weight), runs `warm_start` of the steps on the reconstruction alone, then beta falls
// linearly from beta_start to beta_end, pushing h to 0 or 1. The result is floor(w / s) + [V >= 0], clamped;
// if its objective (reconstruction term, in double) is not below nearest rounding's, nearest rounding is kept.
//
// Inputs x are the float model's by default (the AdaRound paper's basic form). With
// AdaRoundOptions::quantized_inputs the layer is fitted as AIMET does: its input x~ is taken from the simulated
// quantized model, the target stays the float layer on the float input, so the objective becomes
//   sum_r E[(w~_r . x~ - w_r . x)^2] = sum_r d_r^T A d_r + 2 d_r^T (A w_r - C w_r) + const_r,   d_r = w~_r - w_r,
// A = E[x~ x~^T], C = E[x~ x^T] (const_r: the error of the input's quantization at float weights), and the layers
// are fitted one at a time in graph order, each on a simulated model whose earlier layers already hold their
// adaptive integers (a float and a simulated pass per layer). Fitted all at once on the nearest-rounded model
// instead, each layer compensates errors the layers before it no longer make: on Fashion-MNIST W4A8 that lost
// 5-30 points of top-1 (measured, docs/QUANTIZATION.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "perch/data/dataset.h"
#include "perch/ptq/quantize.h"

namespace perch::ptq {

// One layer's rounding problem, rows = output channels (row-major, K values each).
struct AdaRoundProblem {
  const float* w = nullptr;      // rows x k float weights
  const float* scale = nullptr;  // rows x k element scales (> 0)
  int64_t rows = 0, k = 0;
  int64_t rows_per_group = 0;    // consecutive rows sharing one second-moment matrix (0: all rows)
  const double* gram = nullptr;  // (rows / rows_per_group) matrices of k x k, E[x x^T], symmetric
  // Quantized inputs (AdaRoundOptions::quantized_inputs): `gram` is then E[x~ x~^T] of the quantized model's input
  // x~, and the target the float layer on the float input x: cross = E[x~ x^T], target_gram = E[x x^T] (same
  // layout). Both null: x~ = x.
  const double* cross = nullptr;
  const double* target_gram = nullptr;
  int32_t qmin = -127, qmax = 127;
};

struct AdaRoundLayerStats {
  double loss_nearest = 0;  // reconstruction term of nearest rounding
  double loss = 0;          // of the integers returned
  int64_t changed = 0;      // integers that differ from nearest rounding
  bool kept_nearest = false;
};

// Writes rows x k integers to q. Deterministic; the groups run on perch's thread pool.
AdaRoundLayerStats adaround_rows(const AdaRoundProblem& p, const AdaRoundOptions& options, int32_t* q);

struct AdaRoundLayer {
  std::string node, weight;
  int64_t elements = 0;
  AdaRoundLayerStats stats;
};
struct AdaRoundReport {
  std::vector<AdaRoundLayer> layers;
  int64_t images = 0;
  double seconds = 0;
};

// For every Conv (1-D/2-D), Gemm (transA 0) and MatMul with a 2-D float weight initializer that `options`
// quantizes: the parameters build_quantized() will give it (layer_weight_params), the second moments of its
// input over options.adaround_options.samples images of `data` (float model), and adaround_rows(); stores the
// integers in cal.rounded_weights. Second moments are gathered for as many layers at once as fit in 512 MiB
// (one float pass per such chunk).
AdaRoundReport round_weights_adaptively(Calibration& cal, const Dataset& data, const PtqOptions& options);

}  // namespace perch::ptq
