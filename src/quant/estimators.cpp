#include "perch/quant/estimators.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace perch::quant {

EstimatorKind parse_estimator(const std::string& name) {
  if (name == "minmax" || name == "all-values") return EstimatorKind::kMinMax;
  if (name == "last") return EstimatorKind::kLastValue;
  if (name == "ema" || name == "moving-average") return EstimatorKind::kMovingAverage;
  if (name == "percentile") return EstimatorKind::kPercentile;
  if (name == "mse") return EstimatorKind::kMse;
  if (name == "entropy") return EstimatorKind::kEntropy;
  PERCH_FAIL("unknown range estimator '", name,
             "' (expected minmax|all-values, last, ema|moving-average, percentile, mse, entropy)");
}

const char* estimator_name(EstimatorKind kind) {
  switch (kind) {
    case EstimatorKind::kMinMax: return "minmax";
    case EstimatorKind::kLastValue: return "last";
    case EstimatorKind::kMovingAverage: return "ema";
    case EstimatorKind::kPercentile: return "percentile";
    case EstimatorKind::kMse: return "mse";
    case EstimatorKind::kEntropy: return "entropy";
  }
  return "?";
}

namespace {

bool is_histogram_kind(EstimatorKind k) {
  return k == EstimatorKind::kPercentile || k == EstimatorKind::kMse || k == EstimatorKind::kEntropy;
}

constexpr int kMinExponent = -149;   // every float is a multiple of 2^-149
constexpr int kIndexBits = 40;       // |x| < 2^(e+40): bin indices stay far inside int64

int64_t bin_index(float v, int e) { return static_cast<int64_t>(std::floor(std::ldexp(static_cast<double>(v), -e))); }

// floor(i / 2^d) for d >= 0 (C++20 defines >> on negative values as floor division).
int64_t coarsen(int64_t i, int d) { return i >> std::min(d, 62); }

// Smallest e >= start such that [lo, hi] fits in `bins` bins of width 2^e and |x| < 2^(e+40). Both
// conditions only get easier as e grows, so the answer depends on the data alone, not on `start` as long
// as start is at most the answer — which is what makes histogram merging exact.
int required_exponent(int start, float lo, float hi, int bins) {
  int e = std::max(start, kMinExponent);
  const double amax = std::max(std::fabs(static_cast<double>(lo)), std::fabs(static_cast<double>(hi)));
  if (amax > 0) e = std::max(e, std::ilogb(amax) - kIndexBits);  // lower bound of the answer
  const double width = static_cast<double>(hi) - static_cast<double>(lo);
  if (width > 0) e = std::max(e, std::ilogb(width / bins) - 1);  // lower bound of the answer
  for (;; ++e) {
    if (amax >= std::ldexp(1.0, e + kIndexBits)) continue;
    if (bin_index(hi, e) - bin_index(lo, e) + 1 <= bins) return e;
  }
}

struct Histogram {
  bool any = false;
  float mn = 0, mx = 0;
  int e = kMinExponent;
  int64_t first = 0;
  std::vector<int64_t> counts;
  int64_t zeros = 0;  // values exactly ±0 (also counted in their bin, [0, 2^e))

  // Re-expresses the counts at exponent e2 >= e with window start bin_index(mn2, e2). Exact.
  void rebin(int e2, float mn2, int bins) {
    const int64_t first2 = bin_index(mn2, e2);
    std::vector<int64_t> c2(static_cast<size_t>(bins), 0);
    if (any) {
      const int d = e2 - e;
      for (size_t j = 0; j < counts.size(); ++j) {
        if (!counts[j]) continue;
        const int64_t k = coarsen(first + static_cast<int64_t>(j), d) - first2;
        c2[static_cast<size_t>(k)] += counts[j];
      }
    }
    counts = std::move(c2);
    e = e2;
    first = first2;
  }
  // Makes room for data in [lo, hi].
  void extend(float lo, float hi, int bins) {
    const float mn2 = any ? std::min(mn, lo) : lo, mx2 = any ? std::max(mx, hi) : hi;
    const int e2 = required_exponent(any ? e : kMinExponent, mn2, mx2, bins);
    if (!any || e2 != e || bin_index(mn2, e2) != first) rebin(e2, mn2, bins);
    mn = mn2;
    mx = mx2;
    any = true;
  }
  void add(float v) {
    ++counts[static_cast<size_t>(bin_index(v, e) - first)];
    zeros += v == 0.0f;
  }
};

// A histogram window in units of bins: bin j covers [first + j, first + j + 1) (times 2^e).
struct Bins {
  int64_t first = 0;
  std::vector<double> c;
  double total() const {
    double t = 0;
    for (double v : c) t += v;
    return t;
  }
};

Bins signed_bins(const Histogram& h) {
  Bins b;
  b.first = h.first;
  b.c.assign(h.counts.begin(), h.counts.end());
  return b;
}

// |x| histogram: bin i >= 0 stays i, bin i < 0 ([i, i+1)) becomes -i-1 ([-i-1, -i)). Exact because
// the bins are anchored at 0.
Bins abs_bins(const Histogram& h) {
  const int64_t n = static_cast<int64_t>(h.counts.size());
  int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = h.first + j;
    const int64_t a = i >= 0 ? i : -i - 1;
    lo = std::min(lo, a);
    hi = std::max(hi, a);
  }
  Bins b;
  b.first = lo;
  b.c.assign(static_cast<size_t>(hi - lo + 1), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = h.first + j;
    const int64_t a = i >= 0 ? i : -i - 1;
    b.c[static_cast<size_t>(a - lo)] += static_cast<double>(h.counts[static_cast<size_t>(j)]);
  }
  return b;
}

// Value (in bin units) below which a fraction q of the mass lies, linear within a bin.
double quantile(const Bins& b, double q) {
  const double total = b.total();
  const double target = q * total;
  double cum = 0;
  for (size_t j = 0; j < b.c.size(); ++j) {
    if (b.c[j] > 0 && cum + b.c[j] >= target) {
      const double frac = std::clamp((target - cum) / b.c[j], 0.0, 1.0);
      return static_cast<double>(b.first) + static_cast<double>(j) + frac;
    }
    cum += b.c[j];
  }
  return static_cast<double>(b.first) + static_cast<double>(b.c.size());
}

// Prefix sums over bins with u = j + 0.5 (local bin centre): P0 = sum c, P1 = sum c*u, P2 = sum c*u^2.
struct Prefix {
  std::vector<double> p0, p1, p2;
  explicit Prefix(const Bins& b) : p0(b.c.size() + 1, 0.0), p1(p0), p2(p0) {
    for (size_t j = 0; j < b.c.size(); ++j) {
      const double u = static_cast<double>(j) + 0.5;
      p0[j + 1] = p0[j] + b.c[j];
      p1[j + 1] = p1[j] + b.c[j] * u;
      p2[j + 1] = p2[j] + b.c[j] * u * u;
    }
  }
  // Modelled squared error (bin units) for keeping local [L, H] (0 <= L <= H <= n) with step s: bins
  // inside get rounding noise s^2/12, bins left of L / right of H their squared distance to the edge.
  double error(int64_t L, int64_t H, double s) const {
    const auto l = static_cast<size_t>(L), h = static_cast<size_t>(H), n = p0.size() - 1;
    const double dl = static_cast<double>(L), dh = static_cast<double>(H);
    const double left = dl * dl * p0[l] - 2 * dl * p1[l] + p2[l];
    const double right = (p2[n] - p2[h]) - 2 * dh * (p1[n] - p1[h]) + dh * dh * (p0[n] - p0[h]);
    return (p0[h] - p0[l]) * s * s / 12.0 + std::max(left, 0.0) + std::max(right, 0.0);
  }
};

std::vector<int64_t> grid(int64_t lo, int64_t hi, int64_t max_points) {
  std::vector<int64_t> g;
  if (hi < lo) return g;
  const int64_t n = hi - lo + 1;
  const int64_t stride = std::max<int64_t>(1, (n + max_points - 1) / max_points);
  for (int64_t v = lo; v <= hi; v += stride) g.push_back(v);
  if (g.back() != hi) g.push_back(hi);
  return g;
}

constexpr int64_t kMaxCandidates = 256;

// Exact zeros (ReLU's dead half, zero padding) are left out of the MSE and entropy searches: every
// candidate range contains 0 and represents it exactly (zero point), so they cost nothing under any
// choice. Counted in bin 0 they did: as rounding noise s²/12 each in the MSE model (pulling s down), and
// as a spike that Q's chunk averaging penalized in the KL — which pushed the threshold to the narrowest
// candidate (PaddleOCR's recognizer: ReLU outputs clipped to 2-3 dB SQNR).
Bins without_exact_zeros(Bins b, int64_t zeros) {
  const int64_t j = -b.first;  // bin [0, 2^e)
  if (zeros > 0 && j >= 0 && j < static_cast<int64_t>(b.c.size())) b.c[static_cast<size_t>(j)] -= static_cast<double>(zeros);
  return b;
}

// MSE search. Returns (lo, hi) in absolute bin units.
std::pair<double, double> mse_range(const Histogram& h, const QuantSpec& spec) {
  if (spec.symmetric) {
    const Bins b = without_exact_zeros(abs_bins(h), h.zeros);
    const Prefix pre(b);
    const int64_t n = static_cast<int64_t>(b.c.size());
    const double m = spec.qmax() - (spec.is_signed ? 0 : (int32_t{1} << (spec.bits - 1)));
    double best = std::numeric_limits<double>::infinity(), best_t = static_cast<double>(b.first + n);
    for (int64_t k : grid(b.first > 0 ? 0 : 1, n, kMaxCandidates)) {
      const double t = static_cast<double>(b.first + k);
      const double err = pre.error(0, k, t / m);
      if (err < best) best = err, best_t = t;
    }
    return {-best_t, best_t};
  }
  const Bins b = without_exact_zeros(signed_bins(h), h.zeros);
  const Prefix pre(b);
  const int64_t n = static_cast<int64_t>(b.c.size());
  const double levels = spec.qmax() - spec.qmin();
  // Candidate edges, always including 0 where the window crosses it: lo <= 0 <= hi.
  std::vector<int64_t> los, his;
  for (int64_t k : grid(0, n, kMaxCandidates)) {
    los.push_back(std::min<int64_t>(b.first + k, 0));
    his.push_back(std::max<int64_t>(b.first + k, 0));
  }
  double best = std::numeric_limits<double>::infinity();
  std::pair<double, double> best_r{std::min<double>(b.first, 0), std::max<double>(b.first + n, 0)};
  for (int64_t lo : los) {
    for (int64_t hi : his) {
      if (hi == lo) continue;
      const int64_t L = std::clamp<int64_t>(lo - b.first, 0, n), H = std::clamp<int64_t>(hi - b.first, 0, n);
      const double err = pre.error(L, H, static_cast<double>(hi - lo) / levels);
      if (err < best) best = err, best_r = {static_cast<double>(lo), static_cast<double>(hi)};
    }
  }
  return best_r;
}

// KL(P || Q) of keeping [lo, hi] (absolute bin units, lo < hi) with `levels` quantization levels.
// P: the bins whose centre lies in [lo, hi], with the mass outside added to the first / last of them.
// Q: the kept bins without the outliers, merged into `levels` equal chunks of [lo, hi] and spread back
// uniformly over each chunk's nonzero bins (TensorRT's construction). Q = 0 where P > 0 is smoothed to
// 1e-12 of the total, a finite but large penalty.
double kl_divergence(const Bins& b, double lo, double hi, int64_t levels, std::vector<double>& chunk_sum,
                     std::vector<double>& chunk_nnz) {
  const int64_t n = static_cast<int64_t>(b.c.size());
  std::fill(chunk_sum.begin(), chunk_sum.end(), 0.0);
  std::fill(chunk_nnz.begin(), chunk_nnz.end(), 0.0);
  int64_t jfirst = -1, jlast = -1;
  double below = 0, above = 0, total = 0;
  auto chunk_of = [&](int64_t j) {
    const double u = static_cast<double>(b.first + j) + 0.5;
    return std::clamp<int64_t>(static_cast<int64_t>((u - lo) / (hi - lo) * static_cast<double>(levels)), 0, levels - 1);
  };
  for (int64_t j = 0; j < n; ++j) {
    const double v = b.c[static_cast<size_t>(j)];
    const double u = static_cast<double>(b.first + j) + 0.5;
    total += v;
    if (u < lo) { below += v; continue; }
    if (u > hi) { above += v; continue; }
    if (jfirst < 0) jfirst = j;
    jlast = j;
    if (v > 0) {
      const auto c = static_cast<size_t>(chunk_of(j));
      chunk_sum[c] += v;
      chunk_nnz[c] += 1;
    }
  }
  if (jfirst < 0 || total <= 0) return std::numeric_limits<double>::infinity();
  const double eps = 1e-12;
  double kl = 0;
  for (int64_t j = jfirst; j <= jlast; ++j) {
    double p = b.c[static_cast<size_t>(j)];
    if (j == jfirst) p += below;
    if (j == jlast) p += above;
    if (p <= 0) continue;
    double q = 0;
    if (b.c[static_cast<size_t>(j)] > 0) {
      const auto c = static_cast<size_t>(chunk_of(j));
      q = chunk_sum[c] / chunk_nnz[c];
    }
    const double pn = p / total, qn = std::max(q / total, eps);
    kl += pn * std::log(pn / qn);
  }
  return kl;
}

std::pair<double, double> entropy_range(const Histogram& h, const QuantSpec& spec) {
  if (spec.symmetric) {
    const Bins b = without_exact_zeros(abs_bins(h), h.zeros);
    const int64_t n = static_cast<int64_t>(b.c.size());
    const int64_t levels = spec.qmax() - (spec.is_signed ? 0 : (int32_t{1} << (spec.bits - 1))) + 1;
    const double tmax = static_cast<double>(b.first + n);
    if (tmax <= static_cast<double>(levels)) return {-tmax, tmax};  // histogram coarser than the grid
    std::vector<double> cs(static_cast<size_t>(levels)), cn(cs);
    double best = std::numeric_limits<double>::infinity(), best_t = tmax;
    for (int64_t t : grid(std::max<int64_t>(levels, b.first + 1), b.first + n, kMaxCandidates)) {
      const double kl = kl_divergence(b, 0.0, static_cast<double>(t), levels, cs, cn);
      if (kl < best) best = kl, best_t = static_cast<double>(t);
    }
    return {-best_t, best_t};
  }
  const Bins b = without_exact_zeros(signed_bins(h), h.zeros);
  const int64_t n = static_cast<int64_t>(b.c.size());
  const int64_t levels = int64_t{spec.qmax()} - spec.qmin() + 1;
  const double lo0 = std::min<double>(static_cast<double>(b.first), 0.0);
  const double hi0 = std::max<double>(static_cast<double>(b.first + n), 0.0);
  if (hi0 - lo0 <= static_cast<double>(levels)) return {lo0, hi0};
  // The family [r*lo0, r*hi0], r in (levels/(hi0-lo0), 1]: both ends shrink in proportion; for data of one
  // sign (ReLU outputs) this is the usual 1-D threshold search with 0 kept as one end.
  std::vector<double> cs(static_cast<size_t>(levels)), cn(cs);
  const double rmin = static_cast<double>(levels) / (hi0 - lo0);
  double best = std::numeric_limits<double>::infinity(), best_r = 1.0;
  for (int64_t k = 0; k <= kMaxCandidates; ++k) {
    const double r = rmin + (1.0 - rmin) * static_cast<double>(k) / static_cast<double>(kMaxCandidates);
    const double kl = kl_divergence(b, r * lo0, r * hi0, levels, cs, cn);
    if (kl < best) best = kl, best_r = r;
  }
  return {best_r * lo0, best_r * hi0};
}

}  // namespace

struct RangeEstimator::State {
  SlotLayout layout;  // of the first observed shape
  int64_t slots = 0;
  int64_t observed = 0, nonfinite = 0;
  // minmax / last / ema (double so EMA merges are exact up to rounding)
  std::vector<double> mn, mx, first_mn, first_mx;
  std::vector<int64_t> batches;  // per slot: observe() calls that had finite data for it
  std::vector<Histogram> hist;
};

RangeEstimator::RangeEstimator(QuantSpec spec, EstimatorOptions opts) : spec_(spec), opts_(opts) {
  spec_.validate();
  PERCH_CHECK(opts_.ema_decay >= 0.0 && opts_.ema_decay < 1.0, "RangeEstimator: ema_decay must be in [0, 1), got ",
              opts_.ema_decay);
  PERCH_CHECK(opts_.percentile > 0.0 && opts_.percentile <= 100.0,
              "RangeEstimator: percentile must be in (0, 100], got ", opts_.percentile);
  PERCH_CHECK(opts_.bins >= 16 && opts_.bins <= (1 << 24), "RangeEstimator: bins must be in [16, 2^24], got ",
              opts_.bins);
}

RangeEstimator::~RangeEstimator() = default;
RangeEstimator::RangeEstimator(RangeEstimator&&) noexcept = default;
RangeEstimator& RangeEstimator::operator=(RangeEstimator&&) noexcept = default;
RangeEstimator::RangeEstimator(const RangeEstimator& o)
    : spec_(o.spec_), opts_(o.opts_), shape_(o.shape_), st_(o.st_ ? std::make_unique<State>(*o.st_) : nullptr) {}
RangeEstimator& RangeEstimator::operator=(const RangeEstimator& o) {
  if (this != &o) *this = RangeEstimator(o);
  return *this;
}

bool RangeEstimator::empty() const { return !st_; }
int64_t RangeEstimator::nonfinite_count() const { return st_ ? st_->nonfinite : 0; }
int64_t RangeEstimator::observed_count() const { return st_ ? st_->observed : 0; }

namespace {

std::string coords(const Shape& shape, int64_t flat) {
  Shape c(shape.size());
  for (size_t i = shape.size(); i-- > 0;) {
    c[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
  return shape_str(c);
}

}  // namespace

void RangeEstimator::observe(const Tensor& x) {
  const std::string who = std::string("RangeEstimator(") + estimator_name(opts_.kind) + ", " + spec_.to_string() + ")";
  PERCH_CHECK(x.dtype() == DType::kFloat32, who, ": observe() expects float32, got ", dtype_name(x.dtype()));
  const SlotLayout l = SlotLayout::make(spec_, x.shape());
  if (st_) {
    const SlotLayout& f = st_->layout;
    bool ok = l.slots == f.slots;
    if (spec_.granularity == Granularity::kPerChannel) ok = ok && x.rank() == static_cast<int64_t>(shape_.size());
    if (spec_.granularity == Granularity::kPerGroup) ok = ok && x.shape() == shape_;
    PERCH_CHECK(ok, who, ": observed shape ", shape_str(x.shape()), " does not match the first observed shape ",
                shape_str(shape_));
  }
  const float* xs = x.data<float>();
  // Pass 1: count non-finite values, per-slot batch min / max.
  SlotRanges batch = slot_ranges(l, xs);
  const int64_t bad = batch.nonfinite, first_bad = batch.first_nonfinite;
  std::vector<float>& bmn = batch.min;
  std::vector<float>& bmx = batch.max;
  if (bad && !opts_.ignore_nonfinite) {
    PERCH_FAIL(who, ": ", bad, " non-finite value(s) (NaN/Inf) of ", x.numel(), " in tensor of shape ",
               shape_str(x.shape()), ", first at flat index ", first_bad, " (coordinates ", coords(x.shape(), first_bad),
               "); set ignore_nonfinite to skip them");
  }
  if (!st_) {
    st_ = std::make_unique<State>();
    shape_ = x.shape();
    st_->layout = l;
    st_->slots = l.slots;
    const auto S = static_cast<size_t>(l.slots);
    st_->mn.assign(S, 0.0);
    st_->mx.assign(S, 0.0);
    st_->first_mn.assign(S, 0.0);
    st_->first_mx.assign(S, 0.0);
    st_->batches.assign(S, 0);
    if (is_histogram_kind(opts_.kind)) st_->hist.assign(S, Histogram{});
  }
  State& st = *st_;
  st.nonfinite += bad;
  st.observed += x.numel() - bad;
  const double d = opts_.ema_decay;
  for (size_t s = 0; s < bmn.size(); ++s) {
    if (bmn[s] > bmx[s]) continue;  // no finite data for this slot in this batch
    const double lo = bmn[s], hi = bmx[s];
    const bool first = st.batches[s] == 0;
    switch (opts_.kind) {
      case EstimatorKind::kMinMax:
      case EstimatorKind::kPercentile:
      case EstimatorKind::kMse:
      case EstimatorKind::kEntropy:
        st.mn[s] = first ? lo : std::min(st.mn[s], lo);
        st.mx[s] = first ? hi : std::max(st.mx[s], hi);
        break;
      case EstimatorKind::kLastValue:
        st.mn[s] = lo;
        st.mx[s] = hi;
        break;
      case EstimatorKind::kMovingAverage:
        st.mn[s] = first ? lo : d * st.mn[s] + (1 - d) * lo;
        st.mx[s] = first ? hi : d * st.mx[s] + (1 - d) * hi;
        break;
    }
    if (first) st.first_mn[s] = lo, st.first_mx[s] = hi;
    ++st.batches[s];
    if (is_histogram_kind(opts_.kind)) st.hist[s].extend(bmn[s], bmx[s], opts_.bins);
  }
  if (is_histogram_kind(opts_.kind)) {
    l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
      for (int64_t k = 0; k < n; ++k) {
        const float v = xs[b + k];
        if (std::isfinite(v)) st.hist[static_cast<size_t>(s0 + k * step)].add(v);
      }
    });
  }
}

void RangeEstimator::merge(const RangeEstimator& other) {
  const bool same_spec = spec_.bits == other.spec_.bits && spec_.is_signed == other.spec_.is_signed &&
                         spec_.symmetric == other.spec_.symmetric && spec_.narrow_range == other.spec_.narrow_range &&
                         spec_.granularity == other.spec_.granularity && spec_.axis == other.spec_.axis &&
                         spec_.group_size == other.spec_.group_size;
  const bool same_opts = opts_.kind == other.opts_.kind && opts_.ema_decay == other.opts_.ema_decay &&
                         opts_.percentile == other.opts_.percentile && opts_.bins == other.opts_.bins &&
                         opts_.ignore_nonfinite == other.opts_.ignore_nonfinite;
  PERCH_CHECK(same_spec && same_opts, "RangeEstimator::merge: estimators differ (", estimator_name(opts_.kind), " ",
              spec_.to_string(), " vs ", estimator_name(other.opts_.kind), " ", other.spec_.to_string(),
              "; options must match too)");
  if (!other.st_) return;
  if (!st_) {
    *this = other;
    return;
  }
  PERCH_CHECK(st_->slots == other.st_->slots && (spec_.granularity != Granularity::kPerGroup || shape_ == other.shape_),
              "RangeEstimator::merge: shapes ", shape_str(shape_), " and ", shape_str(other.shape_), " do not match");
  State& a = *st_;
  const State& b = *other.st_;
  a.observed += b.observed;
  a.nonfinite += b.nonfinite;
  for (size_t s = 0; s < a.mn.size(); ++s) {
    if (b.batches[s] == 0) continue;
    if (a.batches[s] == 0) {
      a.mn[s] = b.mn[s], a.mx[s] = b.mx[s];
      a.first_mn[s] = b.first_mn[s], a.first_mx[s] = b.first_mx[s];
      a.batches[s] = b.batches[s];
      if (!a.hist.empty()) a.hist[s] = b.hist[s];
      continue;
    }
    switch (opts_.kind) {
      case EstimatorKind::kLastValue:
        a.mn[s] = b.mn[s], a.mx[s] = b.mx[s];
        break;
      case EstimatorKind::kMovingAverage: {
        const double dn = std::pow(opts_.ema_decay, static_cast<double>(b.batches[s]));
        a.mn[s] = b.mn[s] + dn * (a.mn[s] - b.first_mn[s]);
        a.mx[s] = b.mx[s] + dn * (a.mx[s] - b.first_mx[s]);
        break;
      }
      default:
        a.mn[s] = std::min(a.mn[s], b.mn[s]);
        a.mx[s] = std::max(a.mx[s], b.mx[s]);
        break;
    }
    a.batches[s] += b.batches[s];
    if (!a.hist.empty()) {
      Histogram& ha = a.hist[s];
      Histogram hb = b.hist[s];
      const float mn = std::min(ha.mn, hb.mn), mx = std::max(ha.mx, hb.mx);
      const int e = required_exponent(std::max(ha.e, hb.e), mn, mx, opts_.bins);
      ha.rebin(e, mn, opts_.bins);
      hb.rebin(e, mn, opts_.bins);
      for (size_t j = 0; j < ha.counts.size(); ++j) ha.counts[j] += hb.counts[j];
      ha.zeros += hb.zeros;
      ha.mn = mn;
      ha.mx = mx;
    }
  }
}

std::pair<std::vector<float>, std::vector<float>> RangeEstimator::range() const {
  PERCH_CHECK(st_, "RangeEstimator(", estimator_name(opts_.kind), ", ", spec_.to_string(),
              "): range() before any observe()");
  const State& st = *st_;
  const auto S = static_cast<size_t>(st.slots);
  std::vector<float> lo(S, 0.0f), hi(S, 0.0f);
  for (size_t s = 0; s < S; ++s) {
    if (st.batches[s] == 0) continue;
    if (!is_histogram_kind(opts_.kind)) {
      lo[s] = static_cast<float>(st.mn[s]);
      hi[s] = static_cast<float>(st.mx[s]);
      continue;
    }
    const Histogram& h = st.hist[s];
    std::pair<double, double> r;  // bin units
    if (opts_.kind == EstimatorKind::kPercentile) {
      const double q = opts_.percentile / 100.0;
      if (spec_.symmetric) {
        const double a = quantile(abs_bins(h), q);
        r = {-a, a};
      } else {
        const Bins b = signed_bins(h);
        r = {quantile(b, 1.0 - q), quantile(b, q)};
      }
    } else if (opts_.kind == EstimatorKind::kMse) {
      r = mse_range(h, spec_);
    } else {
      r = entropy_range(h, spec_);
    }
    // Back to real units, never beyond the data actually seen.
    const double amax = std::max(std::fabs(static_cast<double>(h.mn)), std::fabs(static_cast<double>(h.mx)));
    double rl = std::ldexp(r.first, h.e), rh = std::ldexp(r.second, h.e);
    if (spec_.symmetric) {
      rl = std::max(rl, -amax);
      rh = std::min(rh, amax);
    } else {
      rl = std::clamp(rl, static_cast<double>(std::min(h.mn, 0.0f)), static_cast<double>(h.mx));
      rh = std::clamp(rh, static_cast<double>(h.mn), static_cast<double>(std::max(h.mx, 0.0f)));
      if (rh < rl) rh = rl;
    }
    lo[s] = static_cast<float>(rl);
    hi[s] = static_cast<float>(rh);
  }
  return {std::move(lo), std::move(hi)};
}

QuantParams RangeEstimator::params() const {
  const auto [lo, hi] = range();
  return choose_params(spec_, shape_, lo, hi);
}

RangeEstimator::HistogramView RangeEstimator::histogram(int64_t slot) const {
  PERCH_CHECK(st_ && is_histogram_kind(opts_.kind), "RangeEstimator::histogram: no histogram (kind ",
              estimator_name(opts_.kind), ", ", empty() ? "empty" : "observed", ")");
  PERCH_CHECK(slot >= 0 && slot < st_->slots, "RangeEstimator::histogram: slot ", slot, " out of range [0, ",
              st_->slots, ")");
  const Histogram& h = st_->hist[static_cast<size_t>(slot)];
  return {h.e, h.first, h.counts};
}

}  // namespace perch::quant
