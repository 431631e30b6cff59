//   error(model) = mean over the positions of the first graph output of KL(p_float || p_model) along the class
//                  axis (a softmax// perch/ptq/range_search.h — activation ranges chosen by the model's output error.
//
// A range estimator (min/max, percentile, MSE, entropy) chooses an activation's grid from that activation's own
// values, one activation at a time. What the user keeps is the model's output, and the best grid for it is not
// the one that serves each activation best locally: a percentile that suits one activation clips another's rare
// but decisive values, and a grid whose points the data sits between (pixels normalized as (p - 127.5) / 127.5
// fall half-way between the points of any 8-bit grid with an integer zero point) costs a full half step on every
// value. LAPQ (Nahshan et al. 2019, "Loss Aware Post-training Quantization") therefore sets the step sizes by the
// network's loss, jointly, with Powell's method. perch refines the calibrated grids by coordinate descent on the
// output error against the float model:
//
//   error(model) = mean over the positions of the first graph output of KL(p_float || p_model) along the class
//                  axis (a softmax is applied first unless the float output is already a distribution along it;
//                  KL in nats, double precision, log p_model floored at 1e-30), or, when the class axis has a
//                  single entry (a score map), sum (y_model - y_float)^2 / sum y_float^2;
//   for each sweep, for each quantized activation grid in graph order (a sharing group once; 16-bit and float
//   activations are left alone), with its grid spanning [lo, hi] = [s (qmin - zp), s (qmax - zp)]:
//     candidates: [lo, f hi] for each f in options.factors, and [f lo, hi] when lo < 0,
//                 each made a grid by quant::choose_params (the calibration's spec: 0 stays exact);
//     each candidate model is built as build_quantized() builds it (biases re-scaled to s_in s_w, the empirical
//     correction's shifts kept) and run on the images;
//     among the candidates whose error is below (1 - min_gain) x the current one on each half of the images (the
//     first half of the batches and the rest; batches of at most options.batch images, at least two), the one with
//     the lowest error on all of them replaces the grid — a move that helps some images at the others' expense is
//     noise the next images would not share.
//
// Only what a grid change touches runs for a candidate: the values where the changed part of the model begins
// are computed once per grid from the current model (runtime::Executor::run_for, continuing from the previous
// grid's), and each candidate runs from them (Executor::run_cached). A candidate's error is therefore exactly
// that of running the candidate model whole (tests/ptq/range_search_test.cpp checks it). Memory: the float
// model's outputs on the images, and those starting values.
//
// The error is measured on the first `images` images of the data; the grids chosen are then fixed like any
// calibrated range (the calibration's `activation_params`), so a held-out evaluation is the honest measure of
// the gain (docs/QUANTIZATION.md has the measurements).
#pragma once

#include <string>
#include <vector>

#include "perch/ptq/quantize.h"

namespace perch::ptq {

struct RangeMove {
  std::string activation;     // the sharing group's root
  float lo_before = 0, hi_before = 0, lo = 0, hi = 0;
  double error = 0;           // the model's error after the move
};

struct RangeSearchReport {
  std::string objective;      // "kl" or "relative-mse"
  int64_t images = 0;
  int64_t grids = 0;          // grids searched (per sweep)
  int64_t candidates = 0;     // candidate models evaluated
  double error_before = 0, error_after = 0;
  std::vector<RangeMove> moves;
  double seconds = 0;
};

// Refines cal.activation_params (every member of a sharing group alike). `data`: the calibration images (labels
// unused). Uses options.range_search and what build_quantized() uses.
RangeSearchReport search_activation_ranges(Calibration& cal, const Dataset& data, const PtqOptions& options);

}  // namespace perch::ptq
