// perch/quant/estimators.h — range estimators for calibration: feed float tensors, get a (min, max) per
// parameter slot (per-tensor, per-channel or per-group, from the spec), then QuantParams.
//
// Estimators (definitions in docs/QUANTIZATION.md):
//   minmax  ("minmax", "all-values")      running min / max of every value seen; never shrinks.
//   last    ("last")                      min / max of the most recent observe() call.
//   ema     ("ema", "moving-average")     per batch b: m = batch_min on the first batch, then
//                                         m = decay * m + (1 - decay) * batch_min (same for max).
//   percentile ("percentile")             asymmetric: [P_(100-p), P_p] of the values; symmetric: +-P_p of |x|.
//   mse     ("mse")                       clipping range minimizing the modelled quantization error
//                                         (rounding noise s^2/12 inside, squared distance outside).
//   entropy ("entropy")                   TensorRT-style: clipping range minimizing KL(P || Q) between the
//                                         clipped histogram and its quantized version.
//
// Histogram kinds keep, per slot, `bins` equal bins of width 2^e anchored at 0 (bin i covers
// [i*2^e, (i+1)*2^e)). e is the smallest integer >= -149 such that the slot's data [min, max] fits in
// `bins` bins and |x| < 2^(e+40); when data arrives outside, e grows and pairs of bins merge exactly.
// Because e and the counts depend only on the data (not on batch order), merge is EXACT for percentile,
// mse and entropy: two estimators fed two halves then merged hold bit-identical histograms — and give
// bit-identical ranges — to one estimator fed everything (merge tolerance 0).
//
// merge(other) means "other's observations came after mine":
//   minmax:     exact (min of mins, max of maxes); order-free.
//   last:       other's last range wins where other observed anything (per slot).
//   ema:        equals feeding other's batches after mine: m = m_other + decay^n_other * (m_mine - first_other),
//               up to double rounding (relative tolerance 1e-12, tested at 1e-9).
//
// Non-finite values: observe() throws (saying how many and where) unless ignore_nonfinite, in which
// case they are skipped and counted. A slot that never saw a finite value has range (0, 0).
// Shapes: per-tensor accepts any shape per call; per-channel needs the same rank and dim[axis] (other
// dims such as batch may vary); per-group needs the same shape every call.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "perch/core/tensor.h"
#include "perch/quant/params.h"

namespace perch::quant {

enum class EstimatorKind { kMinMax, kLastValue, kMovingAverage, kPercentile, kMse, kEntropy };

EstimatorKind parse_estimator(const std::string& name);
const char* estimator_name(EstimatorKind kind);

struct EstimatorOptions {
  EstimatorKind kind = EstimatorKind::kMinMax;
  double ema_decay = 0.9;     // in [0, 1)
  double percentile = 99.99;  // in (0, 100]
  int bins = 2048;            // histogram bins per slot, >= 16
  bool ignore_nonfinite = false;
};

class RangeEstimator {
 public:
  explicit RangeEstimator(QuantSpec spec, EstimatorOptions opts = {});
  ~RangeEstimator();
  RangeEstimator(const RangeEstimator&);
  RangeEstimator& operator=(const RangeEstimator&);
  RangeEstimator(RangeEstimator&&) noexcept;
  RangeEstimator& operator=(RangeEstimator&&) noexcept;

  void observe(const Tensor& x);
  void merge(const RangeEstimator& other);
  // Chosen (min, max) per slot. Throws if nothing was observed.
  std::pair<std::vector<float>, std::vector<float>> range() const;
  QuantParams params() const;

  int64_t nonfinite_count() const;  // values skipped because they were NaN/Inf
  int64_t observed_count() const;   // finite values used
  bool empty() const;               // no observe() call yet
  const QuantSpec& spec() const { return spec_; }
  const EstimatorOptions& options() const { return opts_; }
  const Shape& shape() const { return shape_; }  // shape of the first observed tensor

  // Exact histogram state of one slot (histogram kinds only), for tests and diagnostics: bin i of
  // `counts` covers [(first + i) * 2^exponent, (first + i + 1) * 2^exponent).
  struct HistogramView {
    int exponent = 0;
    int64_t first = 0;
    std::vector<int64_t> counts;
  };
  HistogramView histogram(int64_t slot) const;

 private:
  struct State;
  QuantSpec spec_;
  EstimatorOptions opts_;
  Shape shape_;
  std::unique_ptr<State> st_;
};

}  // namespace perch::quant
