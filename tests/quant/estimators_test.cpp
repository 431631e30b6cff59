// Range estimators: definitions checked on hand-made data, merge semantics (exact for minmax and the
// histogram kinds, 1e-9 relative for EMA), non-finite handling, and the clipping estimators doing what
// they are for (clip outliers, keep 0 as the lower end for ReLU outputs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "perch/quant/estimators.h"

namespace perch::quant {
namespace {

Tensor randn(Shape shape, std::mt19937_64& rng, float sd = 1.0f, float mean = 0.0f) {
  Tensor t(DType::kFloat32, std::move(shape));
  std::normal_distribution<float> nd(mean, sd);
  for (float& v : t.span<float>()) v = nd(rng);
  return t;
}

QuantSpec per_channel(int64_t axis, bool symmetric = true, bool is_signed = true) {
  QuantSpec s;
  s.granularity = Granularity::kPerChannel;
  s.axis = axis;
  s.symmetric = symmetric;
  s.is_signed = is_signed;
  return s;
}

const EstimatorKind kAll[] = {EstimatorKind::kMinMax,     EstimatorKind::kLastValue, EstimatorKind::kMovingAverage,
                              EstimatorKind::kPercentile, EstimatorKind::kMse,       EstimatorKind::kEntropy};

TEST(Estimators, Names) {
  EXPECT_EQ(parse_estimator("minmax"), EstimatorKind::kMinMax);
  EXPECT_EQ(parse_estimator("all-values"), EstimatorKind::kMinMax);
  EXPECT_EQ(parse_estimator("last"), EstimatorKind::kLastValue);
  EXPECT_EQ(parse_estimator("ema"), EstimatorKind::kMovingAverage);
  EXPECT_EQ(parse_estimator("moving-average"), EstimatorKind::kMovingAverage);
  EXPECT_EQ(parse_estimator("percentile"), EstimatorKind::kPercentile);
  EXPECT_EQ(parse_estimator("mse"), EstimatorKind::kMse);
  EXPECT_EQ(parse_estimator("entropy"), EstimatorKind::kEntropy);
  for (EstimatorKind k : kAll) EXPECT_EQ(parse_estimator(estimator_name(k)), k);
  try {
    parse_estimator("kl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("percentile"), std::string::npos);
  }
  EXPECT_THROW(RangeEstimator(QuantSpec{}, {.kind = EstimatorKind::kMovingAverage, .ema_decay = 1.0}), Error);
  EXPECT_THROW(RangeEstimator(QuantSpec{}, {.kind = EstimatorKind::kPercentile, .percentile = 0.0}), Error);
  EXPECT_THROW(RangeEstimator(QuantSpec{}, {.kind = EstimatorKind::kPercentile, .bins = 4}), Error);
}

TEST(Estimators, MinMaxPerChannelNeverShrinks) {
  RangeEstimator est(per_channel(-1, false));
  EXPECT_TRUE(est.empty());
  EXPECT_THROW(est.range(), Error);
  est.observe(Tensor::from<float>({2, 3}, {1, -2, 0, 3, 4, 0}));
  est.observe(Tensor::from<float>({1, 3}, {0, 0, 0}));  // batch dim may vary for per-channel
  est.observe(Tensor::from<float>({1, 3}, {-5, 1, 0}));
  auto [lo, hi] = est.range();
  EXPECT_EQ(lo, (std::vector<float>{-5, -2, 0}));
  EXPECT_EQ(hi, (std::vector<float>{3, 4, 0}));
  EXPECT_EQ(est.observed_count(), 12);
  const QuantParams p = est.params();
  EXPECT_EQ(p.param_shape, (Shape{3}));
  EXPECT_EQ(p.scale[2], kDegenerateScale);  // all-zero channel
  EXPECT_THROW(est.observe(Tensor::from<float>({4}, {0, 0, 0, 0})), Error);  // rank / channel mismatch
  EXPECT_THROW(est.observe(Tensor::from<float>({1, 4}, {0, 0, 0, 0})), Error);
}

TEST(Estimators, LastAndEma) {
  QuantSpec s;
  s.symmetric = false;
  RangeEstimator last(s, {.kind = EstimatorKind::kLastValue});
  RangeEstimator ema(s, {.kind = EstimatorKind::kMovingAverage, .ema_decay = 0.5});
  const std::vector<std::pair<float, float>> batches{{-1, 1}, {-3, 5}, {0, 2}};
  for (auto [a, b] : batches) {
    last.observe(Tensor::from<float>({2}, {a, b}));
    ema.observe(Tensor::from<float>({2}, {b, a}));
  }
  EXPECT_EQ(last.range().first[0], 0.0f);
  EXPECT_EQ(last.range().second[0], 2.0f);
  // EMA: -1 -> 0.5*-1 + 0.5*-3 = -2 -> 0.5*-2 + 0.5*0 = -1 ; 1 -> 3 -> 2.5
  EXPECT_EQ(ema.range().first[0], -1.0f);
  EXPECT_EQ(ema.range().second[0], 2.5f);
}

// Feeds `batches` split at `cut` into two estimators, merges, and compares with one fed everything.
void check_merge(const QuantSpec& spec, const EstimatorOptions& opts, const std::vector<Tensor>& batches, size_t cut) {
  RangeEstimator all(spec, opts), a(spec, opts), b(spec, opts);
  for (size_t i = 0; i < batches.size(); ++i) {
    all.observe(batches[i]);
    (i < cut ? a : b).observe(batches[i]);
  }
  a.merge(b);
  EXPECT_EQ(a.observed_count(), all.observed_count());
  const auto [l1, h1] = a.range();
  const auto [l2, h2] = all.range();
  ASSERT_EQ(l1.size(), l2.size());
  for (size_t s = 0; s < l1.size(); ++s) {
    if (opts.kind == EstimatorKind::kMovingAverage) {
      EXPECT_NEAR(l1[s], l2[s], 1e-9 * std::fabs(l2[s]) + 1e-30) << s;
      EXPECT_NEAR(h1[s], h2[s], 1e-9 * std::fabs(h2[s]) + 1e-30) << s;
    } else {
      EXPECT_EQ(l1[s], l2[s]) << estimator_name(opts.kind) << " slot " << s;
      EXPECT_EQ(h1[s], h2[s]) << estimator_name(opts.kind) << " slot " << s;
    }
  }
  if (opts.kind == EstimatorKind::kPercentile || opts.kind == EstimatorKind::kMse ||
      opts.kind == EstimatorKind::kEntropy) {
    for (int64_t s = 0; s < static_cast<int64_t>(l1.size()); ++s) {
      const auto x = a.histogram(s), y = all.histogram(s);
      EXPECT_EQ(x.exponent, y.exponent);
      EXPECT_EQ(x.first, y.first);
      EXPECT_EQ(x.counts, y.counts);
    }
  }
}

TEST(Estimators, MergeEqualsFeedingEverything) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<Tensor> batches;
    // Ranges that grow and shrink between batches force histogram re-binning in both halves.
    for (int i = 0; i < 6; ++i) {
      const float sd = std::ldexp(1.0f, static_cast<int>(rng() % 12) - 6);
      batches.push_back(randn({3, 4, 5}, rng, sd, trial % 2 ? sd : 0.0f));
    }
    for (EstimatorKind k : kAll) {
      for (int g = 0; g < 3; ++g) {
        QuantSpec spec;
        spec.symmetric = trial % 3 != 0;
        spec.is_signed = trial % 2 == 0;
        spec.granularity = static_cast<Granularity>(g);
        spec.axis = trial % 2 ? 1 : -1;
        spec.group_size = 2;
        SCOPED_TRACE(std::string(estimator_name(k)) + " " + spec.to_string());
        check_merge(spec, {.kind = k, .ema_decay = 0.7, .percentile = 99.0, .bins = 256}, batches,
                    1 + static_cast<size_t>(trial) % 5);
      }
    }
  }
}

TEST(Estimators, MergeWithEmptyAndMismatched) {
  QuantSpec s;
  RangeEstimator a(s), b(s);
  b.observe(Tensor::from<float>({2}, {-1, 2}));
  a.merge(b);
  EXPECT_EQ(a.range().second[0], 2.0f);
  RangeEstimator c(s, {.kind = EstimatorKind::kMse});
  EXPECT_THROW(a.merge(c), Error);
  QuantSpec u = s;
  u.bits = 4;
  EXPECT_THROW(a.merge(RangeEstimator(u)), Error);
}

TEST(Estimators, NonFinite) {
  Tensor x = Tensor::from<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  x.span<float>()[4] = std::numeric_limits<float>::infinity();
  x.span<float>()[5] = std::nanf("");
  for (EstimatorKind k : kAll) {
    RangeEstimator e(per_channel(1), {.kind = k});
    try {
      e.observe(x);
      FAIL() << "expected an error";
    } catch (const Error& err) {
      const std::string m = err.what();
      EXPECT_NE(m.find("2 non-finite"), std::string::npos) << m;
      EXPECT_NE(m.find("flat index 4"), std::string::npos) << m;
      EXPECT_NE(m.find("[1,1]"), std::string::npos) << m;
    }
    RangeEstimator ok(per_channel(1), {.kind = k, .ignore_nonfinite = true});
    ok.observe(x);
    EXPECT_EQ(ok.nonfinite_count(), 2);
    EXPECT_EQ(ok.observed_count(), 4);
    const auto [lo, hi] = ok.range();
    EXPECT_LE(hi[1], 2.0f + 1e-6f) << estimator_name(k);  // channel 1 saw only the finite value 2
    EXPECT_GE(hi[1], 0.0f);
  }
}

TEST(Estimators, PercentileMatchesSortedData) {
  std::mt19937_64 rng(9);
  const int64_t n = 200000;
  Tensor x(DType::kFloat32, {n});
  std::uniform_real_distribution<float> ud(-1.0f, 3.0f);
  for (float& v : x.span<float>()) v = ud(rng);
  std::vector<float> sorted(x.span<float>().begin(), x.span<float>().end());
  std::sort(sorted.begin(), sorted.end());
  QuantSpec asym;
  asym.symmetric = false;
  for (double p : {90.0, 99.0, 99.9, 100.0}) {
    RangeEstimator e(asym, {.kind = EstimatorKind::kPercentile, .percentile = p});
    e.observe(x);
    const auto [lo, hi] = e.range();
    const float want_hi = sorted[static_cast<size_t>(std::min<double>(n - 1, p / 100.0 * n))];
    const float want_lo = sorted[static_cast<size_t>((1.0 - p / 100.0) * n)];
    const float bin = 4.0f / 2048 * 2;  // histogram resolution (bins of 2^e >= range/bins)
    EXPECT_NEAR(hi[0], want_hi, bin) << p;
    EXPECT_NEAR(lo[0], want_lo, bin) << p;
    if (p == 100.0) {
      EXPECT_EQ(hi[0], sorted.back());
      EXPECT_EQ(lo[0], sorted.front());
    }
  }
  // Symmetric: percentile of |x|.
  RangeEstimator s(QuantSpec{}, {.kind = EstimatorKind::kPercentile, .percentile = 99.0});
  s.observe(x);
  std::vector<float> mags;
  for (float v : sorted) mags.push_back(std::fabs(v));
  std::sort(mags.begin(), mags.end());
  EXPECT_NEAR(s.range().second[0], mags[static_cast<size_t>(0.99 * n)], 4.0f / 2048 * 2);
  EXPECT_EQ(s.range().first[0], -s.range().second[0]);
}

// Mean squared fake-quantization error of x with params p.
double fq_mse(const Tensor& x, const QuantParams& p) {
  const Tensor y = fake_quant(x, p);
  double e = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double d = static_cast<double>(x.span<float>()[static_cast<size_t>(i)]) - y.span<float>()[static_cast<size_t>(i)];
    e += d * d;
  }
  return e / static_cast<double>(x.numel());
}

TEST(Estimators, MseAndEntropyClipOutliers) {
  std::mt19937_64 rng(21);
  Tensor x = randn({100000}, rng);
  x.span<float>()[17] = 40.0f;  // outliers far beyond the Gaussian bulk
  x.span<float>()[18] = -35.0f;
  for (bool sym : {true, false}) {
    QuantSpec spec;
    spec.bits = 4;
    spec.symmetric = sym;
    RangeEstimator mm(spec), mse(spec, {.kind = EstimatorKind::kMse}), ent(spec, {.kind = EstimatorKind::kEntropy});
    for (RangeEstimator* e : {&mm, &mse, &ent}) e->observe(x);
    const float mse_hi = mse.range().second[0], ent_hi = ent.range().second[0];
    EXPECT_LT(mse_hi, 10.0f) << sym;
    EXPECT_GT(mse_hi, 1.0f) << sym;
    EXPECT_LT(ent_hi, 20.0f) << sym;
    EXPECT_GT(ent_hi, 1.0f) << sym;
    EXPECT_LT(fq_mse(x, mse.params()), 0.5 * fq_mse(x, mm.params())) << sym;
    EXPECT_LT(fq_mse(x, ent.params()), fq_mse(x, mm.params())) << sym;
  }
  // 16 bits: rounding noise is negligible, so MSE keeps (nearly) the whole range.
  QuantSpec s16;
  s16.bits = 16;
  RangeEstimator mse16(s16, {.kind = EstimatorKind::kMse});
  mse16.observe(x);
  EXPECT_GT(mse16.range().second[0], 30.0f);
}

TEST(Estimators, ReluOutputsKeepZeroAsLowerEnd) {
  std::mt19937_64 rng(4);
  Tensor x = randn({50000}, rng);
  for (float& v : x.span<float>()) v = std::max(v, 0.0f);
  x.span<float>()[3] = 25.0f;
  QuantSpec u;
  u.is_signed = false;
  u.symmetric = false;
  for (EstimatorKind k : {EstimatorKind::kPercentile, EstimatorKind::kMse, EstimatorKind::kEntropy}) {
    RangeEstimator e(u, {.kind = k, .percentile = 99.9});
    e.observe(x);
    const auto [lo, hi] = e.range();
    // Percentile interpolates inside the first bin (half the data is exactly 0), so its lower end is
    // within one bin of 0; choose_params then widens it to 0.
    EXPECT_NEAR(lo[0], 0.0f, 25.0f / 2048 * 2) << estimator_name(k);
    EXPECT_GE(lo[0], 0.0f) << estimator_name(k);
    EXPECT_GT(hi[0], 2.0f) << estimator_name(k);
    EXPECT_LT(hi[0], 25.0f) << estimator_name(k);
    const QuantParams p = e.params();
    EXPECT_EQ(p.zero_point[0], 0) << estimator_name(k);
  }
}

// A ReLU-like output that is mostly exact zeros, the rest spread wide (exponential, scale 5): the zeros'
// spike in bin 0 must not decide the threshold. With them in P, every range wider than one bin per level
// averaged the spike away in Q, and the narrowest candidate (256 bins, about 8 here) won, clipping a fifth
// of the nonzero values (fmnist_mbv2 W8A8 with entropy calibration: 0.468 top-1, 0.872 without the zeros).
TEST(Estimators, EntropyIgnoresExactZeros) {
  std::mt19937_64 rng(9);
  std::exponential_distribution<float> ex(0.2f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Tensor x(DType::kFloat32, {100000});
  for (float& v : x.span<float>()) v = u(rng) < 0.8f ? 0.0f : std::min(ex(rng), 40.0f);
  x.span<float>()[0] = 40.0f;
  QuantSpec spec;
  spec.is_signed = false;
  spec.symmetric = false;
  RangeEstimator mm(spec), ent(spec, {.kind = EstimatorKind::kEntropy});
  mm.observe(x);
  ent.observe(x);
  const float hi = ent.range().second[0];
  EXPECT_GT(hi, 12.0f);
  EXPECT_LE(hi, 40.0f);
  EXPECT_EQ(ent.params().zero_point[0], 0);
  EXPECT_LE(fq_mse(x, ent.params()), fq_mse(x, mm.params()));  // here the whole range is (nearly) best
  // The MSE search scores the same data by its error model: exact zeros have no rounding error.
  RangeEstimator mse(spec, {.kind = EstimatorKind::kMse});
  mse.observe(x);
  // Here the whole range is (nearly) the best, so its true error must come within 1 % of min/max's
  // (with the zeros as noise the search chose 39.09 and 5.7 % more error).
  EXPECT_LE(fq_mse(x, mse.params()), 1.01 * fq_mse(x, mm.params()));
  // Symmetric (|x| histogram) too.
  QuantSpec sym;
  RangeEstimator ent_sym(sym, {.kind = EstimatorKind::kEntropy});
  ent_sym.observe(x);
  EXPECT_GT(ent_sym.range().second[0], 12.0f);
}

TEST(Estimators, HistogramGrowsExactly) {
  RangeEstimator e(QuantSpec{}, {.kind = EstimatorKind::kPercentile, .bins = 64});
  e.observe(Tensor::from<float>({3}, {0.0f, 1e-3f, 2e-3f}));
  const auto h0 = e.histogram(0);
  e.observe(Tensor::from<float>({2}, {-100.0f, 1000.0f}));
  const auto h1 = e.histogram(0);
  EXPECT_GT(h1.exponent, h0.exponent);
  int64_t total = 0;
  for (int64_t c : h1.counts) total += c;
  EXPECT_EQ(total, 5);
  // All-zero data: finite range, degenerate scale.
  RangeEstimator z(QuantSpec{}, {.kind = EstimatorKind::kEntropy});
  z.observe(Tensor(DType::kFloat32, {10}));
  EXPECT_EQ(z.range().second[0], 0.0f);
  EXPECT_EQ(z.params().scale[0], kDegenerateScale);
  // Data far from zero with a tiny spread does not blow up the bin indices.
  RangeEstimator far(QuantSpec{}, {.kind = EstimatorKind::kMse});
  far.observe(Tensor::from<float>({3}, {1e30f, 1e30f, 1.0000001e30f}));
  EXPECT_GT(far.range().second[0], 0.0f);
}

}  // namespace
}  // namespace perch::quant
