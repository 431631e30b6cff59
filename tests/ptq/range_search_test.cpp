// Activation ranges refined by the output error (ptq::search_activation_ranges). The error the search reports is
// recomputed here independently — whole models run by the float executor, KL of softmaxes in double — so the
// partial runs the search uses (values cached where a candidate's changed part begins) are checked against full
// runs, move by move.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "perch/ptq/range_search.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;

namespace {

// Mean over images of KL(softmax(y_float) || softmax(y_q)) of tiny_cnn's logits [N, 3], in double.
double kl_error(const graph::Model& fp32, const graph::Model& q, const Tensor& x) {
  const Tensor yf = runtime::Executor(fp32).run1(x), yq = runtime::Executor(q).run1(x);
  const int64_t n = yf.dim(0), k = yf.dim(1);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto log_softmax = [&](const Tensor& y) {
      std::vector<double> l(static_cast<size_t>(k));
      double mx = -1e300, s = 0;
      for (int64_t c = 0; c < k; ++c) mx = std::max<double>(mx, y.data<float>()[i * k + c]);
      for (int64_t c = 0; c < k; ++c) s += std::exp(y.data<float>()[i * k + c] - mx);
      for (int64_t c = 0; c < k; ++c) l[c] = y.data<float>()[i * k + c] - mx - std::log(s);
      return l;
    };
    const auto lf = log_softmax(yf), lq = log_softmax(yq);
    for (int64_t c = 0; c < k; ++c) total += std::exp(lf[c]) * (lf[c] - lq[c]);
  }
  return total / static_cast<double>(n);
}

// Calibration images with one outlier image (x 40): min/max ranges far wider than the other images need.
Dataset outlier_images(int64_t n, uint32_t seed) {
  Dataset d = test::tiny_cnn_inputs(n, seed);
  for (int64_t i = 0; i < 64; ++i) d.images.data<float>()[i] *= 40.0f;
  return d;
}

ptq::PtqOptions six_bit_options() {
  ptq::PtqOptions o;
  o.activations.bits = 6;  // coarse enough that the range matters
  o.range_search.images = 1000;
  o.batch = 16;  // several batches: the cached starting values are kept per batch
  return o;
}

// Calibrates `m` on `calib` with six_bit_options(), builds the model before the search, then searches.
struct Searched {
  ptq::Calibration cal;
  graph::Model before;
  ptq::RangeSearchReport rep;
};
Searched calibrate_and_search(const graph::Model& m, const Dataset& calib) {
  const ptq::PtqOptions o = six_bit_options();
  Searched s;
  s.cal = ptq::calibrate(m, calib, o);
  s.before = ptq::build_quantized(s.cal, o).model;
  s.rep = ptq::search_activation_ranges(s.cal, calib, o);
  return s;
}

std::pair<float, float> span_of(const quant::QuantParams& p) {
  return {p.scale[0] * static_cast<float>(p.spec.qmin() - p.zero_point[0]),
          p.scale[0] * static_cast<float>(p.spec.qmax() - p.zero_point[0])};
}

}  // namespace

TEST(RangeSearch, EveryMoveLowersTheErrorOfTheWholeModelAsReported) {
  const graph::Model m = test::tiny_cnn(11);
  const Dataset calib = outlier_images(40, 5);
  ptq::PtqOptions o = six_bit_options();
  ptq::Calibration cal = ptq::calibrate(m, calib, o);
  const ptq::Calibration before = cal;
  const double e0 = kl_error(cal.model, ptq::build_quantized(cal, o).model, calib.images);
  const ptq::RangeSearchReport rep = ptq::search_activation_ranges(cal, calib, o);
  EXPECT_EQ(rep.objective, "kl");
  EXPECT_EQ(rep.images, 40);
  EXPECT_NEAR(rep.error_before, e0, 1e-6 * e0);
  ASSERT_FALSE(rep.moves.empty());
  // Replay the moves one by one on the calibration before the search: each reported error is the error of that
  // whole model, and each is lower than the one before.
  ptq::Calibration replay = before;
  double last = e0;
  const Dataset first = take(calib, 0, 32), second = take(calib, 32, 8);
  const graph::Model q0 = ptq::build_quantized(before, o).model;
  double last_a = kl_error(before.model, q0, first.images), last_b = kl_error(before.model, q0, second.images);
  for (const auto& mv : rep.moves) {
    const std::string root = replay.share_root(mv.activation);
    EXPECT_EQ(root, mv.activation);
    const auto [lo0, hi0] = span_of(replay.activation_params.at(root));
    EXPECT_EQ(lo0, mv.lo_before) << mv.activation;
    EXPECT_EQ(hi0, mv.hi_before) << mv.activation;
    for (const auto& v : replay.targets)
      if (replay.share_root(v) == root) replay.activation_params[v] = cal.activation_params.at(v);
    // A grid may move in two sweeps; with one sweep each move is final.
    const auto [lo, hi] = span_of(replay.activation_params.at(root));
    EXPECT_EQ(lo, mv.lo);
    EXPECT_EQ(hi, mv.hi);
    const graph::Model q = ptq::build_quantized(replay, o).model;
    const double e = kl_error(replay.model, q, calib.images);
    EXPECT_NEAR(mv.error, e, 1e-6 * e) << mv.activation;
    EXPECT_LT(e, last * (1 - o.range_search.min_gain)) << mv.activation;
    last = e;
    // Both halves improved: batches of 16 images (o.batch), so [0, 32) and [32, 40).
    const double ea = kl_error(replay.model, q, first.images), eb = kl_error(replay.model, q, second.images);
    EXPECT_LT(ea, last_a * (1 - o.range_search.min_gain)) << mv.activation;
    EXPECT_LT(eb, last_b * (1 - o.range_search.min_gain)) << mv.activation;
    last_a = ea;
    last_b = eb;
  }
  EXPECT_NEAR(rep.error_after, last, 1e-6 * last);
  // The outlier made min/max ranges ~40x too wide: the search narrows them, and the error falls a lot — also on
  // images the search did not see.
  EXPECT_LT(rep.error_after, 0.5 * rep.error_before);
  const Dataset held_out = test::tiny_cnn_inputs(200, 99);
  const double h0 = kl_error(before.model, ptq::build_quantized(before, o).model, held_out.images);
  const double h1 = kl_error(cal.model, ptq::build_quantized(cal, o).model, held_out.images);
  EXPECT_LT(h1, 0.5 * h0);
}

TEST(RangeSearch, SharingGroupsMoveTogetherAndWiderOrFloatGridsStay) {
  const graph::Model m = test::tiny_cnn(11);
  const Dataset calib = outlier_images(40, 5);
  ptq::PtqOptions o = six_bit_options();
  ptq::Calibration cal = ptq::calibrate(m, calib, o);
  // tiny_cnn's activations: x, r1 (p1, after the MaxPool, shares its grid), r2, a, gp (f, after the Flatten,
  // shares it). r2 at 16 bits and f float (so its group stays as calibrated); the rest are searched.
  ASSERT_EQ(cal.share_root("p1"), "r1");
  ASSERT_EQ(cal.share_root("f"), "gp");
  const std::string wide = "r2", gone = "f";
  o.activation_bits[wide] = 16;
  o.float_activations.insert(gone);
  const ptq::Calibration before = cal;
  const ptq::RangeSearchReport rep = ptq::search_activation_ranges(cal, calib, o);
  ASSERT_FALSE(rep.moves.empty());
  for (const auto& mv : rep.moves) {
    EXPECT_NE(mv.activation, wide);
    EXPECT_NE(cal.share_root(gone), mv.activation);
  }
  for (const auto& v : cal.targets) {
    EXPECT_TRUE(ptq::same_params(cal.activation_params.at(v), cal.activation_params.at(cal.share_root(v)))) << v;
    if (cal.share_root(v) == wide || cal.share_root(v) == cal.share_root(gone)) {
      EXPECT_TRUE(ptq::same_params(cal.activation_params.at(v), before.activation_params.at(v))) << v;
    }
  }
  // r1 moves, and p1 with it.
  bool r1_moved = false;
  for (const auto& mv : rep.moves) r1_moved |= mv.activation == "r1";
  EXPECT_TRUE(r1_moved);
  EXPECT_FALSE(ptq::same_params(cal.activation_params.at("p1"), before.activation_params.at("p1")));
}

TEST(RangeSearch, ScoreMapsUseTheRelativeSquaredError) {
  // A model whose output has a single class entry ([N, 1]): no distribution to compare, the relative squared error.
  graph::Model m = test::tiny_cnn(3);
  Tensor& w3 = m.graph.initializers["w3"];
  Tensor w1(DType::kFloat32, {1, 8});
  for (int64_t i = 0; i < 8; ++i) w1.data<float>()[i] = w3.data<float>()[i];
  w3 = w1;
  m.graph.initializers["b3"] = Tensor::from<float>({1}, {0.1f});
  m.graph.outputs[0].shape = {-1, 1};
  const Dataset calib = outlier_images(24, 6);
  const ptq::PtqOptions o = six_bit_options();
  const auto [cal, q0, rep] = calibrate_and_search(m, calib);
  EXPECT_EQ(rep.objective, "relative-mse");
  auto rel = [&](const graph::Model& q) {
    const Tensor yf = runtime::Executor(cal.model).run1(calib.images), yq = runtime::Executor(q).run1(calib.images);
    double num = 0, den = 0;
    for (int64_t i = 0; i < yf.numel(); ++i) {
      const double e = static_cast<double>(yq.data<float>()[i]) - yf.data<float>()[i];
      num += e * e;
      den += static_cast<double>(yf.data<float>()[i]) * yf.data<float>()[i];
    }
    return num / den;
  };
  const double r0 = rel(q0), r1 = rel(ptq::build_quantized(cal, o).model);
  EXPECT_NEAR(rep.error_before, r0, 1e-6 * r0);
  EXPECT_NEAR(rep.error_after, r1, 1e-6 * r1);
  EXPECT_LT(r1, r0);
}

TEST(RangeSearch, DistributionOutputsAreComparedAsTheyAre) {
  // tiny_cnn with a Softmax after its Gemm: the output already is a distribution, so the KL is taken on it directly
  // (a second softmax would flatten both distributions and shrink the error).
  graph::Model m = test::tiny_cnn(11);
  m.graph.nodes.back().outputs[0] = "logits";
  graph::Node sm;
  sm.op_type = "Softmax";
  sm.name = "Softmax_y";
  sm.inputs = {"logits"};
  sm.outputs = {"y"};
  m.graph.nodes.push_back(sm);
  const Dataset calib = outlier_images(40, 5);
  const auto [cal, q0, rep] = calibrate_and_search(m, calib);
  EXPECT_EQ(rep.objective, "kl");
  const Tensor pf = runtime::Executor(cal.model).run1(calib.images), pq = runtime::Executor(q0).run1(calib.images);
  double kl = 0;
  for (int64_t i = 0; i < pf.numel(); ++i) {
    const double p = pf.data<float>()[i], q = pq.data<float>()[i];
    if (p > 0) kl += p * (std::log(p) - std::log(std::max(q, 1e-30)));
  }
  kl /= static_cast<double>(pf.dim(0));
  EXPECT_NEAR(rep.error_before, kl, 1e-5 * kl);
}

TEST(RangeSearch, BadOptionsAreNamed) {
  const graph::Model m = test::tiny_cnn(11);
  const Dataset calib = test::tiny_cnn_inputs(8, 5);
  ptq::PtqOptions o = six_bit_options();
  ptq::Calibration cal = ptq::calibrate(m, calib, o);
  o.range_search.factors = {0.5, 1.0};
  test::expect_contains(test::perch_error([&] { ptq::search_activation_ranges(cal, calib, o); }), {"factor 1"});
  o.range_search.factors = {0.5};
  o.range_search.sweeps = 0;
  test::expect_contains(test::perch_error([&] { ptq::search_activation_ranges(cal, calib, o); }), {"sweeps"});
}
