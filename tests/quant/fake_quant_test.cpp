// QAT gradients. Finite differences run in double on a double reimplementation of each forward, at
// points kept away from rounding and clipping boundaries (where the forward is piecewise linear, so a
// central difference is exact up to rounding; tolerance 1e-6 relative).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#include "perch/core/cpu.h"
#include "perch/quant/fake_quant.h"
#include "perch/quant/params.h"

namespace perch::quant {
namespace {

TEST(SteBackward, MasksOutsideClipRange) {
  QuantSpec spec;  // int8: clip range [-128 s, 127 s]
  spec.is_signed = false;
  spec.symmetric = false;
  const QuantParams p = make_params(spec, {6}, {0.5f}, {10});  // range [(0-10)*0.5, (255-10)*0.5] = [-5, 122.5]
  const Tensor x = Tensor::from<float>({6}, {-5.0f, -5.1f, 0.0f, 122.5f, 122.6f, 60.3f});
  const Tensor dy = Tensor::from<float>({6}, {1, 2, 3, 4, 5, 6});
  const Tensor dx = fake_quant_ste_backward(dy, x, p);
  const std::vector<float> want{1, 0, 3, 4, 0, 6};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(dx.span<float>()[i], want[i]) << i;
  EXPECT_THROW(fake_quant_ste_backward(Tensor(DType::kFloat32, {5}), x, p), Error);
}

// fake_quant and the STE mask on every path (reference, AVX-512) against an independent formulation in
// double: u = float(x / s) (ONNX divides in float), q = clamp(nearbyint(u) + zp), y = float((q - zp) * s).
// Inputs straddle the 16-lane vectors (lengths 1..40 and a 70 001-element run split over threads), include
// exact ties (k + 0.5) * s, values just beside them, the clamp edges, +-0, +-Inf, NaN and 1e30.
TEST(FakeQuantPaths, EveryPathMatchesADoubleReference) {
  std::mt19937_64 rng(11);
  struct Case { bool is_signed, symmetric; int bits; Granularity g; Shape shape; };
  const std::vector<Case> cases = {
      {false, false, 8, Granularity::kPerTensor, {70001}},
      {true, true, 8, Granularity::kPerTensor, {3, 13}},
      {true, true, 4, Granularity::kPerChannel, {5, 17}},
      {false, false, 4, Granularity::kPerChannel, {7, 40}},
      {true, true, 2, Granularity::kPerChannel, {3, 1}},
      {false, false, 8, Granularity::kPerChannel, {2, 16}},
  };
  int checked = 0;
  for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), supported_paths()}) {
    set_paths_for_testing(paths);
    for (const Case& c : cases) {
      QuantSpec spec;
      spec.bits = c.bits;
      spec.is_signed = c.is_signed;
      spec.symmetric = c.symmetric;
      spec.granularity = c.g;
      const int64_t slots = c.g == Granularity::kPerTensor ? 1 : c.shape[0];
      std::uniform_real_distribution<float> sd(0.01f, 0.3f);
      std::vector<float> scale;
      std::vector<int32_t> zp;
      for (int64_t k = 0; k < slots; ++k) {
        scale.push_back(sd(rng));
        zp.push_back(c.symmetric ? 0 : spec.qmin() + static_cast<int32_t>(rng() % (spec.qmax() - spec.qmin() + 1)));
      }
      const QuantParams p = make_params(spec, c.shape, scale, zp);
      Tensor x(DType::kFloat32, c.shape);
      auto xs = x.span<float>();
      const int64_t inner = static_cast<int64_t>(xs.size()) / slots;
      const int32_t qmin = spec.qmin(), qmax = spec.qmax();
      for (size_t i = 0; i < xs.size(); ++i) {
        const size_t s = c.g == Granularity::kPerTensor ? 0 : i / static_cast<size_t>(inner);
        const float sc = scale[s];
        const int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(qmax - qmin + 8)) + qmin - 4 - zp[s];
        switch (rng() % 8) {
          case 0: xs[i] = (static_cast<float>(k) + 0.5f) * sc; break;                       // tie (or nearly)
          case 1: xs[i] = std::nextafter((static_cast<float>(k) + 0.5f) * sc, 1e9f); break;
          case 2: xs[i] = static_cast<float>(k) * sc; break;
          case 3: {
            const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f,
                                      static_cast<float>(qmax - zp[s]) * sc, static_cast<float>(qmin - zp[s]) * sc};
            xs[i] = specials[rng() % 9];
            break;
          }
          default: xs[i] = std::uniform_real_distribution<float>(-1.2f, 1.2f)(rng) * sc * (qmax - qmin);
        }
      }
      Tensor dy(DType::kFloat32, c.shape);
      for (float& v : dy.span<float>()) v = std::uniform_real_distribution<float>(-1, 1)(rng);
      const Tensor y = fake_quant(x, p);
      const Tensor dx = fake_quant_ste_backward(dy, x, p);
      for (size_t i = 0; i < xs.size(); ++i) {
        const size_t s = c.g == Granularity::kPerTensor ? 0 : i / static_cast<size_t>(inner);
        const float u = xs[i] / scale[s];
        double q = std::isnan(u) ? zp[s] : std::nearbyint(static_cast<double>(u)) + zp[s];
        q = std::min<double>(std::max<double>(q, qmin), qmax);
        const float want = static_cast<float>((q - zp[s]) * static_cast<double>(scale[s]));
        ASSERT_EQ(std::bit_cast<uint32_t>(y.span<float>()[i]), std::bit_cast<uint32_t>(want))
            << "paths " << paths_string(paths) << " shape " << shape_str(c.shape) << " i " << i << " x " << xs[i];
        const bool inside = u >= static_cast<float>(qmin - zp[s]) && u <= static_cast<float>(qmax - zp[s]);
        ASSERT_EQ(dx.span<float>()[i], inside ? dy.span<float>()[i] : 0.0f) << "STE, i " << i << " x " << xs[i];
        ++checked;
      }
    }
  }
  set_paths_for_testing(0);
  EXPECT_GT(checked, 140000);
}

// The Relu-fused pair (the training tape's ReluFakeQuantAct) against the two unfused ops on every path,
// bit for bit: fake_quant_relu(x) == fake_quant(Relu(x)) and fake_quant_relu_ste_backward(dy, x) == Relu's
// backward (x > 0 ? d : +0) of d = fake_quant_ste_backward(dy, Relu(x)), Relu(x) = x > 0 ? x : +0 computed
// here. Per-channel shapes [C, L] with random L in 1..40 drive the run kernels over lengths straddling the
// 16 lanes (each channel one run, masked tails); a 70 001-value per-tensor run is split over the threads.
// Inputs: ties (k + 0.5) s, grid points, the clip edges and their neighbours, +-0, negatives, +-Inf, NaN;
// dy includes -0 (a mask must pass it unchanged, not turn it into +0 or back).
TEST(FakeQuantPaths, ReluFusedMatchesReluThenFakeQuantOnEveryPath) {
  std::mt19937_64 rng(23);
  int checked = 0;
  for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), supported_paths()}) {
    set_paths_for_testing(paths);
    for (int trial = 0; trial < 24; ++trial) {
      QuantSpec spec;
      spec.bits = trial % 3 == 2 ? 4 : 8;
      spec.is_signed = trial % 4 == 3;
      spec.symmetric = spec.is_signed;
      const bool per_tensor = trial == 0;
      spec.granularity = per_tensor ? Granularity::kPerTensor : Granularity::kPerChannel;
      const Shape shape = per_tensor ? Shape{70001} : Shape{3, 1 + static_cast<int64_t>(rng() % 40)};
      const int64_t slots = per_tensor ? 1 : shape[0];
      std::vector<float> scale;
      std::vector<int32_t> zp;
      for (int64_t k = 0; k < slots; ++k) {
        scale.push_back(std::uniform_real_distribution<float>(0.01f, 0.3f)(rng));
        zp.push_back(spec.symmetric ? 0 : spec.qmin() + static_cast<int32_t>(rng() % (spec.qmax() - spec.qmin() + 1)));
      }
      const QuantParams p = make_params(spec, shape, scale, zp);
      Tensor x(DType::kFloat32, shape), dy(DType::kFloat32, shape);
      auto xs = x.span<float>();
      auto dys = dy.span<float>();
      const int64_t inner = static_cast<int64_t>(xs.size()) / slots;
      const int32_t qmin = spec.qmin(), qmax = spec.qmax();
      for (size_t i = 0; i < xs.size(); ++i) {
        const size_t s = per_tensor ? 0 : i / static_cast<size_t>(inner);
        const float sc = scale[s];
        const int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(qmax - qmin + 8)) + qmin - 4 - zp[s];
        const float edge_hi = static_cast<float>(qmax - zp[s]) * sc, edge_lo = static_cast<float>(qmin - zp[s]) * sc;
        switch (rng() % 8) {
          case 0: xs[i] = (static_cast<float>(k) + 0.5f) * sc; break;
          case 1: xs[i] = std::nextafter((static_cast<float>(k) + 0.5f) * sc, 1e9f); break;
          case 2: xs[i] = static_cast<float>(k) * sc; break;
          case 3: {
            const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e30f, -1e30f, edge_hi, edge_lo,
                                      std::nextafter(edge_hi, 1e9f), std::nextafter(edge_hi, -1e9f)};
            xs[i] = specials[rng() % 11];
            break;
          }
          default: xs[i] = std::uniform_real_distribution<float>(-1.2f, 1.2f)(rng) * sc * (qmax - qmin);
        }
        dys[i] = rng() % 16 == 0 ? -0.0f : std::uniform_real_distribution<float>(-1, 1)(rng);
      }
      Tensor r(DType::kFloat32, shape);
      for (size_t i = 0; i < xs.size(); ++i) r.span<float>()[i] = xs[i] > 0.0f ? xs[i] : 0.0f;
      const Tensor y_fused = fake_quant_relu(x, p), y_plain = fake_quant(r, p);
      const Tensor dx_fused = fake_quant_relu_ste_backward(dy, x, p), d_plain = fake_quant_ste_backward(dy, r, p);
      for (size_t i = 0; i < xs.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(y_fused.span<float>()[i]), std::bit_cast<uint32_t>(y_plain.span<float>()[i]))
            << "paths " << paths_string(paths) << " shape " << shape_str(shape) << " i " << i << " x " << xs[i];
        const float want = xs[i] > 0.0f ? d_plain.span<float>()[i] : 0.0f;
        ASSERT_EQ(std::bit_cast<uint32_t>(dx_fused.span<float>()[i]), std::bit_cast<uint32_t>(want))
            << "STE, paths " << paths_string(paths) << " shape " << shape_str(shape) << " i " << i << " x " << xs[i];
        ++checked;
      }
    }
  }
  set_paths_for_testing(0);
  EXPECT_GT(checked, 140000);
  EXPECT_THROW(fake_quant_relu_ste_backward(Tensor(DType::kFloat32, {5}), Tensor(DType::kFloat32, {6}),
                                            make_params(QuantSpec{}, {6}, {0.5f}, {0})),
               Error);
}

// The AVX-512 STE twins compare x against thresholds instead of dividing (fake_quant_runs.h:
// ste_thresholds). Probe exactly where that could go wrong: every float within 6 ulps of both clip edges
// (qmin - zp) s and (qmax - zp) s, for scales from 1e-20 to 3e38 (edges near overflow) and random ones,
// against the division form in plain C++, on every path, plain and Relu-fused (runs of 108 values: the
// thresholds are used from 64 on).
TEST(FakeQuantPaths, SteMaskAtTheClipEdgesMatchesTheDivision) {
  std::mt19937_64 rng(41);
  std::vector<float> scales = {1e-20f, 1e-7f, 0.0123f, 0.1f, 1.7f, 3.0f, 1e20f, 3e38f};
  for (int k = 0; k < 40; ++k) scales.push_back(std::uniform_real_distribution<float>(1e-4f, 10.0f)(rng));
  int checked = 0;
  for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), supported_paths()}) {
    set_paths_for_testing(paths);
    for (size_t si = 0; si < scales.size(); ++si) {
      QuantSpec spec;
      spec.bits = si % 3 == 1 ? 4 : 8;
      spec.is_signed = si % 2 == 1;
      spec.symmetric = spec.is_signed;
      const int32_t zp = spec.symmetric ? 0 : spec.qmin() + static_cast<int32_t>(rng() % (spec.qmax() - spec.qmin() + 1));
      const float sc = scales[si];
      std::vector<float> xs;
      for (int32_t e : {spec.qmin() - zp, spec.qmax() - zp}) {
        float c = static_cast<float>(e) * sc;
        for (int u = 0; u < 6; ++u) c = std::nextafter(c, -INFINITY);
        for (int u = 0; u < 13; ++u, c = std::nextafter(c, INFINITY)) xs.push_back(c);
      }
      xs.push_back(0.0f);
      // Four copies (108 values): the threshold form only runs on runs of >= 64 values.
      for (size_t k = 0, m = xs.size(); k < 3 * m; ++k) xs.push_back(xs[k]);
      const auto n = static_cast<int64_t>(xs.size());
      const QuantParams p = make_params(spec, {n}, {sc}, {zp});
      const Tensor x = Tensor::from<float>({n}, xs);
      Tensor dy(DType::kFloat32, {n});
      for (float& v : dy.span<float>()) v = std::uniform_real_distribution<float>(0.5f, 1.0f)(rng);
      const Tensor dx = fake_quant_ste_backward(dy, x, p), dxr = fake_quant_relu_ste_backward(dy, x, p);
      for (int64_t i = 0; i < n; ++i) {
        const float u = xs[static_cast<size_t>(i)] / sc;
        const bool inside = u >= static_cast<float>(spec.qmin() - zp) && u <= static_cast<float>(spec.qmax() - zp);
        const float want = inside ? dy.span<float>()[static_cast<size_t>(i)] : 0.0f;
        ASSERT_EQ(dx.span<float>()[static_cast<size_t>(i)], want)
            << paths_string(paths) << " scale " << sc << " zp " << zp << " x " << xs[static_cast<size_t>(i)];
        ASSERT_EQ(dxr.span<float>()[static_cast<size_t>(i)], xs[static_cast<size_t>(i)] > 0.0f ? want : 0.0f)
            << paths_string(paths) << " relu, scale " << sc << " x " << xs[static_cast<size_t>(i)];
        ++checked;
      }
    }
  }
  set_paths_for_testing(0);
  EXPECT_EQ(checked, 2 * 48 * 108);
}

// slot_ranges (the range observers' loop) on every path: per-tensor runs longer than one 65 536-value
// chunk, per-channel runs straddling 16 lanes, NaN/+-Inf at chosen places (counted, first index reported,
// never in min/max), all-non-finite slots (+inf / -inf), and zeros of both signs (reported as +0).
TEST(FakeQuantPaths, SlotRangesEveryPathMatchesAPlainScan) {
  std::mt19937_64 rng(5);
  for (uint32_t paths : {static_cast<uint32_t>(Path::kReference), supported_paths()}) {
    set_paths_for_testing(paths);
    for (const Shape& shape : {Shape{200003}, Shape{9, 17}, Shape{4, 1}, Shape{3, 33}, Shape{2, 70000}}) {
      QuantSpec spec;
      if (shape.size() > 1) spec.granularity = Granularity::kPerChannel;
      const SlotLayout l = SlotLayout::make(spec, shape);
      std::vector<float> x(static_cast<size_t>(l.numel));
      for (float& v : x) v = std::uniform_real_distribution<float>(-3, 3)(rng);
      for (int k = 0; k < 6; ++k) x[rng() % x.size()] = k % 2 ? -0.0f : 0.0f;
      const float bad[] = {NAN, INFINITY, -INFINITY};
      for (int k = 0; k < 5; ++k) x[rng() % x.size()] = bad[k % 3];
      if (shape[0] == 4) x[2] = NAN;  // a slot with nothing finite
      const SlotRanges r = slot_ranges(l, x.data());
      const int64_t inner = l.numel / l.slots;
      int64_t nonfinite = 0, first = -1;
      for (int64_t s = 0; s < l.slots; ++s) {
        double mn = INFINITY, mx = -INFINITY;
        for (int64_t i = s * inner; i < (s + 1) * inner; ++i) {
          const double v = x[static_cast<size_t>(i)];
          if (!std::isfinite(v)) continue;
          mn = std::min(mn, v), mx = std::max(mx, v);
        }
        ASSERT_EQ(std::bit_cast<uint32_t>(r.min[static_cast<size_t>(s)]), std::bit_cast<uint32_t>(static_cast<float>(mn) + 0.0f))
            << paths_string(paths) << " " << shape_str(shape) << " slot " << s;
        ASSERT_EQ(std::bit_cast<uint32_t>(r.max[static_cast<size_t>(s)]), std::bit_cast<uint32_t>(static_cast<float>(mx) + 0.0f))
            << paths_string(paths) << " " << shape_str(shape) << " slot " << s;
      }
      for (size_t i = 0; i < x.size(); ++i)
        if (!std::isfinite(x[i]) && nonfinite++ == 0) first = static_cast<int64_t>(i);
      EXPECT_EQ(r.nonfinite, nonfinite);
      EXPECT_EQ(r.first_nonfinite, first);
    }
  }
  set_paths_for_testing(0);
}

TEST(FakeQuantMinMax, NudgingAndGrid) {
  // min = -0.1, max = 1.0: zero point from min is 23.18 -> 23, so the range shifts slightly.
  const NudgedRange r = nudge_minmax(-0.1f, 1.0f, 0, 255);
  EXPECT_FLOAT_EQ(r.scale, 1.1f / 255.0f);
  EXPECT_FLOAT_EQ(r.min, -23.0f * r.scale);
  EXPECT_FLOAT_EQ(r.max, 232.0f * r.scale);
  // min > 0: zero point clamps to qmin, nudged min is exactly 0.
  EXPECT_EQ(nudge_minmax(0.5f, 2.0f, 0, 255).min, 0.0f);
  EXPECT_EQ(nudge_minmax(-2.0f, -0.5f, 1, 255).max, 0.0f);
  EXPECT_THROW(nudge_minmax(1.0f, 1.0f, 0, 255), Error);

  std::mt19937_64 rng(2);
  for (int bits : {2, 4, 8, 16}) {
    for (bool narrow : {false, true}) {
      Tensor x(DType::kFloat32, {3, 50});
      std::uniform_real_distribution<float> ud(-3.0f, 3.0f);
      for (float& v : x.span<float>()) v = ud(rng);
      x.span<float>()[0] = 0.0f;
      const std::vector<float> mins{-1.0f, 0.2f, -2.5f}, maxs{2.0f, 1.0f, -0.3f};
      const Tensor y = fake_quant_minmax(x, mins, maxs, bits, narrow, 0);
      EXPECT_EQ(y.span<float>()[0], 0.0f);  // 0 is exact after nudging
      const int32_t qmin = narrow ? 1 : 0, qmax = (1 << bits) - 1;
      for (int64_t c = 0; c < 3; ++c) {
        const NudgedRange nr = nudge_minmax(mins[c], maxs[c], qmin, qmax);
        for (int64_t i = 0; i < 50; ++i) {
          const float xv = x.span<float>()[c * 50 + i], yv = y.span<float>()[c * 50 + i];
          const double k = (static_cast<double>(yv) - nr.min) / nr.scale;
          // On the grid, up to float rounding of y (which matters at 16 bits, k up to 65535).
          const double tol = 1e-3 + (std::fabs(yv) + std::fabs(nr.min)) / nr.scale * std::ldexp(1.0, -22);
          EXPECT_NEAR(k, std::round(k), tol) << "output on the grid";
          EXPECT_GE(yv, nr.min - 1e-6f);
          EXPECT_LE(yv, nr.max + 1e-6f);
          const double c_x = std::min<double>(std::max<double>(xv, nr.min), nr.max);
          EXPECT_LE(std::fabs(yv - c_x), 0.5 * nr.scale * (1 + 1e-4)) << bits;
        }
      }
      // Per-tensor (axis -1) equals per-channel with equal ranges.
      const std::vector<float> m1{-1.0f}, M1{2.0f}, m3(3, -1.0f), M3(3, 2.0f);
      const Tensor a = fake_quant_minmax(x, m1, M1, bits, narrow, -1);
      const Tensor b = fake_quant_minmax(x, m3, M3, bits, narrow, 0);
      for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(a.span<float>()[i], b.span<float>()[i]);
    }
  }
  const std::vector<float> m1{-1.0f}, M1{2.0f};
  EXPECT_THROW(fake_quant_minmax(Tensor(DType::kFloat32, {2, 2}), m1, M1, 8, false, -2), Error);
  EXPECT_THROW(fake_quant_minmax(Tensor(DType::kFloat32, {2, 2}), m1, M1, 1, false, -1), Error);
  EXPECT_THROW(fake_quant_minmax(Tensor(DType::kFloat32, {2, 2}), m1, M1, 8, false, 1), Error);
}

// Clip surrogate h = sum dy * clamp(x, min_c, max_c), the function TF's gradient is the derivative of.
double clip_objective(const std::vector<double>& x, const std::vector<double>& dy, const std::vector<double>& mins,
                      const std::vector<double>& maxs, int64_t inner, int64_t C) {
  double h = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t c = static_cast<size_t>((static_cast<int64_t>(i) / inner) % C);
    h += dy[i] * std::min(std::max(x[i], mins[c]), maxs[c]);
  }
  return h;
}

TEST(FakeQuantMinMax, GradientMatchesFiniteDifferences) {
  std::mt19937_64 rng(8);
  const int64_t C = 4, inner = 30;
  const Shape shape{2, C, inner};
  const std::vector<float> mins{-1.0f, -0.5f, 0.0f, -3.0f}, maxs{1.0f, 2.0f, 0.7f, -1.0f};
  const int bits = 8;
  std::vector<NudgedRange> nr;
  for (int64_t c = 0; c < C; ++c) nr.push_back(nudge_minmax(mins[c], maxs[c], 0, 255));
  Tensor x(DType::kFloat32, shape), dy(DType::kFloat32, shape);
  std::uniform_real_distribution<float> ud(-4.0f, 3.0f), gd(-1.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const auto c = static_cast<size_t>((i / inner) % C);
    float v;
    do {  // away from both the nudged and the given ends
      v = ud(rng);
    } while (std::fabs(v - nr[c].min) < 0.02f || std::fabs(v - nr[c].max) < 0.02f ||
             std::fabs(v - mins[c]) < 0.02f || std::fabs(v - maxs[c]) < 0.02f ||
             ((v < mins[c]) != (v < nr[c].min)) || ((v > maxs[c]) != (v > nr[c].max)));
    x.span<float>()[static_cast<size_t>(i)] = v;
    dy.span<float>()[static_cast<size_t>(i)] = gd(rng);
  }
  const MinMaxGrad g = fake_quant_minmax_backward(dy, x, mins, maxs, bits, false, 1);
  std::vector<double> xd(x.span<float>().begin(), x.span<float>().end());
  std::vector<double> dyd(dy.span<float>().begin(), dy.span<float>().end());
  std::vector<double> mn(mins.begin(), mins.end()), mx(maxs.begin(), maxs.end());
  const double h = 1e-6;
  for (int64_t c = 0; c < C; ++c) {
    auto mp = mn, mm = mn;
    mp[c] += h, mm[c] -= h;
    const double dmin = (clip_objective(xd, dyd, mp, mx, inner, C) - clip_objective(xd, dyd, mm, mx, inner, C)) / (2 * h);
    auto Mp = mx, Mm = mx;
    Mp[c] += h, Mm[c] -= h;
    const double dmax = (clip_objective(xd, dyd, mn, Mp, inner, C) - clip_objective(xd, dyd, mn, Mm, inner, C)) / (2 * h);
    EXPECT_NEAR(g.dmin[c], dmin, 1e-6 * (1 + std::fabs(dmin))) << c;
    EXPECT_NEAR(g.dmax[c], dmax, 1e-6 * (1 + std::fabs(dmax))) << c;
  }
  for (int i = 0; i < 40; ++i) {  // dx on a sample of elements
    const auto k = static_cast<size_t>(rng() % static_cast<uint64_t>(x.numel()));
    auto xp = xd, xm = xd;
    xp[k] += h, xm[k] -= h;
    const double dx = (clip_objective(xp, dyd, mn, mx, inner, C) - clip_objective(xm, dyd, mn, mx, inner, C)) / (2 * h);
    EXPECT_NEAR(g.dx.span<float>()[k], dx, 1e-6 * (1 + std::fabs(dx))) << k;
  }
}

// Double forward of perch's fake quant for one slot.
double fq_double(double x, double s, int32_t zp, int32_t qmin, int32_t qmax) {
  double q = std::nearbyint(x / s) + zp;
  q = std::min<double>(std::max<double>(q, qmin), qmax);
  return (q - zp) * s;
}

TEST(Lsq, GradientMatchesFiniteDifferences) {
  std::mt19937_64 rng(13);
  for (bool sym : {true, false}) {
    QuantSpec spec;
    spec.bits = 4;
    spec.symmetric = sym;
    spec.is_signed = sym;
    spec.granularity = Granularity::kPerChannel;
    spec.axis = 0;
    const int64_t C = 3, n = 200;
    const std::vector<float> scales{0.1f, 0.25f, 0.05f};
    const std::vector<int32_t> zps = sym ? std::vector<int32_t>{0, 0, 0} : std::vector<int32_t>{3, 0, 9};
    const QuantParams p = make_params(spec, {C, n}, scales, zps);
    const int32_t qmin = spec.qmin(), qmax = spec.qmax();
    Tensor x(DType::kFloat32, {C, n}), dy(DType::kFloat32, {C, n});
    std::uniform_real_distribution<double> ud(-1.0, 1.0);
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < n; ++i) {
        double u;
        do {  // u = x / s away from .5 (rounding) and from the clip ends
          u = ud(rng) * 12.0;
        } while (std::fabs(u - std::floor(u) - 0.5) < 0.05 || std::fabs(u - (qmin - zps[c])) < 0.05 ||
                 std::fabs(u - (qmax - zps[c])) < 0.05);
        x.span<float>()[c * n + i] = static_cast<float>(u * scales[c]);
        dy.span<float>()[c * n + i] = static_cast<float>(ud(rng));
      }
    }
    const LsqGrad g = lsq_backward(dy, x, p, 1.0);
    const LsqGrad gd = lsq_backward(dy, x, p, 0.0);  // default scale
    for (int64_t c = 0; c < C; ++c) {
      const double s = scales[c];
      auto objective = [&](double sv) {
        double f = 0;
        for (int64_t i = 0; i < n; ++i) {
          f += dy.span<float>()[c * n + i] * fq_double(x.span<float>()[c * n + i], sv, zps[c], qmin, qmax);
        }
        return f;
      };
      const double h = 1e-7 * s;
      const double numeric = (objective(s + h) - objective(s - h)) / (2 * h);
      // The true derivative of round(x/s)*s inside the range is round(u); LSQ's STE adds -u there.
      double ste_term = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double u = static_cast<double>(x.span<float>()[c * n + i]) / s;
        if (u >= qmin - zps[c] && u <= qmax - zps[c]) ste_term -= dy.span<float>()[c * n + i] * u;
      }
      EXPECT_NEAR(g.dscale[c], numeric + ste_term, 1e-4 * (1 + std::fabs(numeric))) << c << " sym=" << sym;
      EXPECT_NEAR(gd.dscale[c], g.dscale[c] / std::sqrt(static_cast<double>(n) * qmax), 1e-6) << c;
      for (int64_t i = 0; i < n; ++i) {
        const double u = static_cast<double>(x.span<float>()[c * n + i]) / s;
        const bool inside = u >= qmin - zps[c] && u <= qmax - zps[c];
        ASSERT_EQ(g.dx.span<float>()[c * n + i], inside ? dy.span<float>()[c * n + i] : 0.0f);
      }
    }
  }
}

TEST(Lsq, PaperFormWithZeroPointZero) {
  QuantSpec spec;  // int8 symmetric: Qn = 128, Qp = 127
  const QuantParams p = make_params(spec, {3}, {1.0f}, {0});
  const Tensor x = Tensor::from<float>({3}, {2.3f, 200.0f, -300.0f});
  const Tensor dy = Tensor::from<float>({3}, {1.0f, 1.0f, 1.0f});
  const LsqGrad g = lsq_backward(dy, x, p, 1.0);
  EXPECT_NEAR(g.dscale[0], (2.0 - 2.3) + 127.0 - 128.0, 1e-6);
  EXPECT_EQ(g.dx.span<float>()[0], 1.0f);
  EXPECT_EQ(g.dx.span<float>()[1], 0.0f);
  EXPECT_EQ(g.dx.span<float>()[2], 0.0f);
}

}  // namespace
}  // namespace perch::quant
