// Models with several inputs: the calibration data carries one batch per input (Dataset::inputs, npy:NAME=FILE,...)
// and every PTQ step feeds all of them, rows together. The references are direct runs of the float executor with
// both inputs given by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "perch/ptq/evaluate.h"
#include "perch/ptq/quantize.h"
#include "perch/ptq/sensitivity.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "perch/train/qat.h"
#include "data/data_test_util.h"
#include "test_util.h"

using namespace perch;

namespace {

// x as tiny_cnn_inputs, s of the same rows uniform in [-3, 3]; labels: the float model's own argmax.
Dataset two_input_data(const graph::Model& m, int64_t n, uint32_t seed) {
  Dataset d = test::tiny_cnn_inputs(n, seed);
  Tensor s(DType::kFloat32, {n, 8, 1, 1});
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  for (auto& v : s.span<float>()) v = u(rng);
  d.inputs.emplace_back("s", s);
  d.name = "two inputs";
  const Tensor y = runtime::Executor(m).run({{"x", d.images}, {"s", s}}).at("y");
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;
    for (int64_t c = 1; c < 3; ++c)
      if (y.data<float>()[i * 3 + c] > y.data<float>()[i * 3 + best]) best = c;
    d.labels.push_back(best);
  }
  return d;
}

}  // namespace

// Calibration sees the second input and what it changes: each activation's observed extremes are those of a
// direct float run with both inputs.
TEST(MultiInput, CalibrationObservesEveryInputRowByRow) {
  const graph::Model m = test::two_input_cnn();
  const Dataset data = two_input_data(m, 37, 3);  // 37: batches of 16 leave a partial one
  ptq::PtqOptions o;
  o.batch = 16;
  const ptq::Calibration cal = ptq::calibrate(m, data, o);
  std::map<std::string, std::pair<float, float>> ref;
  runtime::Executor(cal.model).run({{"x", data.images}, {"s", data.inputs[0].second}},
                                   [&](const std::string& v, const Tensor& t) {
                                     if (t.dtype() != DType::kFloat32) return;
                                     float lo = INFINITY, hi = -INFINITY;
                                     for (float f : t.span<float>()) lo = std::min(lo, f), hi = std::max(hi, f);
                                     ref[v] = {lo, hi};
                                   });
  for (const auto& [v, t] : {std::pair<std::string, const Tensor*>{"x", &data.images}, {"s", &data.inputs[0].second}}) {
    float lo = INFINITY, hi = -INFINITY;  // the graph inputs themselves
    for (float f : t->span<float>()) lo = std::min(lo, f), hi = std::max(hi, f);
    ref[v] = {lo, hi};
  }
  ASSERT_TRUE(cal.activation_extremes.count("s"));
  ASSERT_TRUE(cal.activation_extremes.count("r1"));  // relu(conv(x) + s): Add -> Relu quantized after the Relu
  for (const auto& [v, lohi] : cal.activation_extremes) {
    ASSERT_TRUE(ref.count(v)) << v;
    EXPECT_EQ(lohi, ref.at(v)) << v;
  }
}

// Top-1 with a batch that does not divide the set: the labels are the float model's own argmax, so any row of s
// fed beside the wrong x shows.
TEST(MultiInput, EvaluationFeedsEveryInputWithItsRow) {
  const graph::Model m = test::two_input_cnn();
  const Dataset data = two_input_data(m, 53, 4);
  const runtime::Executor e(m);
  EXPECT_EQ(ptq::evaluate(e, data, 7).correct, 53);
  Dataset shifted = data;  // s of the next row: a misaligned feed scores lower
  Tensor& s = shifted.inputs[0].second;
  Tensor rolled = s.clone();
  for (int64_t i = 0; i < 53; ++i)
    for (int64_t c = 0; c < 8; ++c) rolled.data<float>()[i * 8 + c] = s.data<float>()[((i + 1) % 53) * 8 + c];
  s = rolled;
  EXPECT_LT(ptq::evaluate(e, shifted, 7).correct, 53);
}

// The whole pipeline on a two-input model: equalization, calibration, empirical correction, range search, build,
// and sensitivity — the result runs with both inputs and keeps the float model's decisions.
TEST(MultiInput, QuantizeAndSensitivityRunOnEveryInput) {
  const graph::Model m = test::two_input_cnn();
  const Dataset calib = two_input_data(m, 64, 5), test_set = two_input_data(m, 200, 6);
  ptq::PtqOptions o;
  o.batch = 16;
  o.empirical_bias_correction = true;
  o.search_ranges = true;
  o.adaround = true;
  o.adaround_options.iterations = 200;
  o.adaround_options.quantized_inputs = true;  // AdaRound runs the float and the simulated model on both inputs
  const ptq::PtqResult r = ptq::quantize_model(m, calib, o);
  ASSERT_EQ(r.model.graph.inputs.size(), 2u);
  EXPECT_EQ(r.calibration_images, 64);
  const double acc = ptq::evaluate(runtime::Executor(r.model), test_set, 32).accuracy();
  EXPECT_GE(acc, 0.95);
  const ptq::Calibration cal = ptq::calibrate(m, calib, o);
  const ptq::SensitivityReport rep = ptq::sensitivity(cal, test_set, o, {ptq::WeightChoice::parse("int8 per-channel")});
  EXPECT_EQ(rep.fp32_accuracy, 1.0);
  EXPECT_FALSE(rep.layers.empty());
}

// An integer input (a per-sample count, as detectors take image sizes) is passed through, never quantized: the
// quantized model runs on both engines with it, and the integer engine equals its simulation.
TEST(MultiInput, IntegerInputsPassThrough) {
  graph::Model m = test::two_input_cnn();
  auto& g = m.graph;
  g.inputs.push_back({"k", DType::kInt64, {-1, 1}, {"N", ""}, true});
  g.outputs[0].name = "y_scaled";
  graph::Node cast, mul;
  cast.op_type = "Cast", cast.name = "Cast_k", cast.inputs = {"k"}, cast.outputs = {"kf"};
  cast.attrs["to"] = int64_t{1};  // float
  mul.op_type = "Mul", mul.name = "Mul_k", mul.inputs = {"y", "kf"}, mul.outputs = {"y_scaled"};
  g.nodes.push_back(cast);
  g.nodes.push_back(mul);
  Dataset data = test::tiny_cnn_inputs(48, 8);
  Tensor s(DType::kFloat32, {48, 8, 1, 1}), k(DType::kInt64, {48, 1});
  std::mt19937 rng(9);
  for (auto& v : s.span<float>()) v = std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng);
  for (int64_t i = 0; i < 48; ++i) k.data<int64_t>()[i] = 1 + i % 5;  // positive: the argmax is y's
  data.inputs = {{"s", s}, {"k", k}};
  ptq::PtqOptions o;
  o.batch = 16;
  const ptq::PtqResult r = ptq::quantize_model(m, data, o);
  for (const auto& n : r.model.graph.nodes) {
    if (n.op_type == "QuantizeLinear") {
      EXPECT_NE(n.input(0), "k");
    }
  }
  const auto feeds = data.feeds("x", 0, 48);
  const Tensor yf = runtime::Executor(m).run(feeds).at("y_scaled");
  const Tensor yi = runtime::Int8Executor(r.model).run(feeds).at("y_scaled");
  const Tensor ys = runtime::Int8Executor(r.model, runtime::Int8Mode::kSimulate).run(feeds).at("y_scaled");
  ASSERT_EQ(yi.shape(), yf.shape());
  int agree = 0;
  for (int64_t i = 0; i < 48; ++i) {
    auto am = [&](const Tensor& y) { const float* p = y.data<float>() + 3 * i; return std::max_element(p, p + 3) - p; };
    agree += am(yi) == am(yf);
    for (int c = 0; c < 3; ++c) EXPECT_EQ(yi.data<float>()[3 * i + c], ys.data<float>()[3 * i + c]) << i;
  }
  EXPECT_GE(agree, 44);
}

// Data that does not feed the model's inputs exactly is refused, naming both.
TEST(MultiInput, MissingOrUnknownInputsAreNamed) {
  const graph::Model m = test::two_input_cnn();
  const Dataset one = test::tiny_cnn_inputs(8, 1);
  EXPECT_ERROR_HAS(ptq::calibrate(m, one, {}), "two_input_cnn", "'x', 's'", "does not feed 's'", "npy:x=FILE,s=FILE2");
  Dataset wrong = two_input_data(m, 8, 1);
  wrong.inputs[0].first = "shift";
  EXPECT_ERROR_HAS(ptq::calibrate(m, wrong, {}), "feeds input 'shift'", "two_input_cnn does not have");
  EXPECT_ERROR_HAS(ptq::evaluate(runtime::Executor(m), wrong), "feeds input 'shift'");
  // Training takes one input per sample: QAT refuses a two-input model by name.
  train::QatOptions qo;
  qo.train.epochs = 1;
  EXPECT_ERROR_HAS(train::quantization_aware_training(m, two_input_data(m, 8, 1), qo), "two_input_cnn",
                   "one input", "the model has 2 inputs, the data 2");
  // One-input models keep working with the images fed to whatever their input is called.
  const graph::Model single = test::tiny_cnn(11);
  EXPECT_NO_THROW(ptq::calibrate(single, one, {}));
}
