// Data of several input shapes (SPEC+SPEC: Dataset::groups) on models with dynamic height and width, as detectors
// and text recognizers are calibrated: every PTQ step runs each shape group in batches of its own. The references
// are direct runs of the float executor on each group's images.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "perch/ptq/adaround.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/quantize.h"
#include "perch/ptq/sensitivity.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;

namespace {

// tiny_cnn (its GlobalAveragePool makes it size-agnostic) with the input's height and width dynamic.
graph::Model dynamic_cnn() {
  graph::Model m = test::tiny_cnn(3);
  m.graph.inputs[0].shape = {-1, 1, -1, -1};
  m.graph.inputs[0].dim_names = {"N", "", "H", "W"};
  return m;
}

// A fully convolutional net: x [N,1,H,W] -> Conv 3x3 pad 1 (4) -> Relu -> Conv 1x1 (3) -> y [N,3,H,W].
graph::Model dense_net() {
  graph::Model m = dynamic_cnn();
  graph::Graph& g = m.graph;
  g.nodes.clear();
  g.initializers.clear();
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  for (const auto& [name, shape] : {std::pair<std::string, Shape>{"w1", {4, 1, 3, 3}}, {"b1", {4}}, {"w2", {3, 4, 1, 1}}, {"b2", {3}}}) {
    Tensor t(DType::kFloat32, shape);
    for (auto& v : t.span<float>()) v = nd(rng);
    g.initializers[name] = t;
  }
  test::add_node(g, "Conv", {"x", "w1", "b1"}, {"c"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}});
  test::add_node(g, "Relu", {"c"}, {"r"});
  test::add_node(g, "Conv", {"r", "w2", "b2"}, {"y"});
  g.outputs[0].shape = {-1, 3, -1, -1};
  g.outputs[0].dim_names = {"N", "", "H", "W"};
  return m;
}

Tensor uniform(const Shape& s, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor t(DType::kFloat32, s);
  for (auto& v : t.span<float>()) v = u(rng);
  return t;
}

// Two shape groups: 20 images 8x8 in [-1, 2), 13 images 12x10 in [-3, 1) (the second widens every range);
// `labelled`: the float model's own argmax per image (a [N, classes] output).
Dataset two_shapes(const graph::Model& m, bool labelled) {
  Dataset d;
  d.name = "two shapes";
  d.images = uniform({20, 1, 8, 8}, -1.0f, 2.0f, 1);
  Dataset second;
  second.images = uniform({13, 1, 12, 10}, -3.0f, 1.0f, 2);
  if (labelled) {
    const runtime::Executor e(m);
    for (const Tensor* x : {&d.images, &second.images}) {
      const Tensor y = e.run1(*x);
      for (int64_t i = 0; i < y.dim(0); ++i) {
        const float* r = y.data<float>() + i * y.dim(1);
        d.labels.push_back(std::max_element(r, r + y.dim(1)) - r);
      }
    }
  }
  d.groups.push_back(std::move(second));
  return d;
}

}  // namespace

// Calibration (min/max) observes both groups: each activation's extremes are those of direct float runs on the
// two groups together.
TEST(ShapeGroups, CalibrationObservesEveryGroup) {
  const graph::Model m = dynamic_cnn();
  const Dataset data = two_shapes(m, false);
  ptq::PtqOptions o;
  o.batch = 8;  // partial batches in both groups
  const ptq::Calibration cal = ptq::calibrate(m, data, o);
  std::map<std::string, std::pair<float, float>> ref;
  auto observe = [&](const std::string& v, const Tensor& t) {
    if (t.dtype() != DType::kFloat32) return;
    auto [it, fresh] = ref.try_emplace(v, INFINITY, -INFINITY);
    for (float f : t.span<float>()) it->second.first = std::min(it->second.first, f), it->second.second = std::max(it->second.second, f);
  };
  for (const Tensor* x : {&data.images, &data.groups[0].images}) {
    observe("x", *x);
    runtime::Executor(cal.model).run({{"x", *x}}, observe);
  }
  ASSERT_TRUE(cal.activation_extremes.count("x"));
  EXPECT_EQ(cal.activation_extremes.at("x").first, ref.at("x").first);  // -3 side: the second group's
  for (const auto& [v, lohi] : cal.activation_extremes) {
    ASSERT_TRUE(ref.count(v)) << v;
    EXPECT_EQ(lohi, ref.at(v)) << v;
  }
}

// Evaluation, the whole pipeline (equalization, calibration, empirical correction, AdaRound, range search) and
// sensitivity run on both groups; the empirical correction, whose simulated pass is one batch, takes the larger.
TEST(ShapeGroups, PipelineEvaluationAndSensitivityRunEveryGroup) {
  const graph::Model m = dynamic_cnn();
  const Dataset data = two_shapes(m, true);
  EXPECT_EQ(ptq::evaluate(runtime::Executor(m), data, 7).correct, 33);  // every row with its own label
  ptq::PtqOptions o;
  o.batch = 8;
  o.search_ranges = true;
  o.adaround = true;
  o.adaround_options.iterations = 100;
  o.adaround_options.quantized_inputs = true;
  ptq::Calibration cal = ptq::calibrate(m, data, o);
  const ptq::EmpiricalBiasReport er = ptq::correct_biases_empirically(cal, data, o);
  EXPECT_EQ(er.images, 20);
  o.empirical_bias_correction = true;
  const ptq::PtqResult r = ptq::quantize_model(m, data, o);
  EXPECT_EQ(r.calibration_images, 33);
  EXPECT_GE(ptq::evaluate(runtime::Executor(r.model), data, 16).accuracy(), 0.9);
  const ptq::SensitivityReport rep = ptq::sensitivity(cal, data, o, {ptq::WeightChoice::parse("int8 per-channel")});
  EXPECT_EQ(rep.eval_images, 33);
  EXPECT_EQ(rep.fp32_accuracy, 1.0);
  EXPECT_FALSE(rep.layers.empty());
}

// Unlabelled data on a dense output (agreement with the float model per position): the positions of both groups
// are scored, each against its own float reference.
TEST(ShapeGroups, AgreementScoresEveryPositionOfEveryGroup) {
  const graph::Model m = dense_net();
  const Dataset data = two_shapes(m, false);
  ptq::PtqOptions o;
  o.batch = 8;
  const ptq::Calibration cal = ptq::calibrate(m, data, o);
  const ptq::SensitivityReport rep = ptq::sensitivity(cal, data, o, {ptq::WeightChoice::parse("int8 per-channel")});
  EXPECT_EQ(rep.metric, "agreement");
  EXPECT_EQ(rep.eval_images, 33);
  EXPECT_EQ(rep.positions, 20 * 8 * 8 + 13 * 12 * 10);
  EXPECT_EQ(rep.fp32_accuracy, 1.0);
  ASSERT_FALSE(rep.layers.empty());
  for (const auto& l : rep.layers) EXPECT_LT(l.alone.at(0).accuracy_drop, 0.5) << l.name;
}
