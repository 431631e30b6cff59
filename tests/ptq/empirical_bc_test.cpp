// Empirical bias correction (ptq::correct_biases_empirically): after it, every corrected layer of the written
// QDQ model has, per output channel, the float model's mean output on the correction images. Checked by
// running both models independently of the correction code (the float executor on the canonical model, the
// simulation of the written model) and summing every layer's outputs in double.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>

#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;

namespace {

Dataset images(int64_t n, uint32_t seed) { return test::tiny_cnn_inputs(n, seed); }

// Per-channel means (axis 1) of the given values of `model` run on `x`, in double.
std::map<std::string, std::vector<double>> channel_means(const graph::Model& model, const Tensor& x,
                                                         const std::vector<std::string>& values) {
  std::map<std::string, std::vector<double>> out;
  runtime::Executor(model).run({{"x", x}}, [&](const std::string& v, const Tensor& t) {
    if (std::find(values.begin(), values.end(), v) == values.end()) return;
    const int64_t n = t.dim(0), c = t.dim(1), inner = t.numel() / (n * c);
    std::vector<double> m(static_cast<size_t>(c), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t k = 0; k < inner; ++k) m[ch] += t.data<float>()[(i * c + ch) * inner + k];
    for (double& v2 : m) v2 /= static_cast<double>(n * inner);
    out[v] = m;
  });
  return out;
}

// The bias step s_in * s_w[c] of the node writing `value` in a QDQ model (its int32 bias's DequantizeLinear);
// empty for a float bias.
std::vector<double> bias_steps(const graph::Model& m, const std::string& value) {
  const graph::Graph& g = m.graph;
  for (const auto& n : g.nodes)
    if (!n.outputs.empty() && n.outputs[0] == value) {
      const int64_t p = g.producer(n.input(2));
      if (p < 0) {  // a float bias (the layer's input is not quantized)
        EXPECT_NE(g.initializer(n.input(2)), nullptr) << value;
        return {};
      }
      const Tensor* s = g.initializer(g.nodes[p].input(1));
      std::vector<double> out;
      for (int64_t i = 0; i < s->numel(); ++i) out.push_back(s->data<float>()[i]);
      return out;
    }
  ADD_FAILURE() << "no node writes " << value;
  return {};
}

ptq::PtqOptions coarse_options() {
  // 4-bit per-tensor weights and percentile-clipped activations: large, biased errors to correct.
  ptq::PtqOptions o;
  o.weights.granularity = quant::Granularity::kPerTensor;
  o.weights.bits = 4;
  o.activations.bits = 8;
  o.activations.estimator.kind = quant::EstimatorKind::kPercentile;
  o.activations.estimator.percentile = 99.0;
  return o;
}

// Returns how many of the layers kept a float bias. Default: tiny_cnn's Conv c1, depthwise Conv c2 and Gemm y.
// `far_before`: the largest mean difference before the correction must exceed it (in bias steps, or 1e-5 for a
// float bias) — the data makes a correction necessary.
int expect_float_means(const graph::Model& m, const ptq::PtqOptions& o, const Dataset& calib = images(96, 11),
                       const std::vector<std::string>& layers = {"c1", "c2", "y"}, double far_before = 20.0) {
  ptq::Calibration cal = ptq::calibrate(m, calib, o);
  const graph::Model before = ptq::build_quantized(cal, o).model;
  const ptq::EmpiricalBiasReport rep = ptq::correct_biases_empirically(cal, calib, o);
  const ptq::PtqResult after = ptq::build_quantized(cal, o);
  EXPECT_EQ(rep.layers, static_cast<int64_t>(layers.size()));
  EXPECT_EQ(rep.images, calib.size());
  const auto ref = channel_means(cal.model, calib.images, layers);
  const auto mb = channel_means(before, calib.images, layers);
  const auto ma = channel_means(after.model, calib.images, layers);
  double worst_before = 0, worst_after_in_steps = 0;
  int float_biases = 0;
  for (const auto& v : layers) {
    const std::vector<double> step = bias_steps(after.model, v);
    if (step.empty()) {  // float bias: the correction is stored as it is (float32 rounding of b + delta)
      ++float_biases;
      for (size_t c = 0; c < ref.at(v).size(); ++c) {
        EXPECT_NEAR(ma.at(v)[c], ref.at(v)[c], 1e-5) << v << " channel " << c;
        worst_before = std::max(worst_before, std::fabs(mb.at(v)[c] - ref.at(v)[c]) / 1e-5);
      }
      continue;
    }
    EXPECT_EQ(step.size() == 1 ? ref.at(v).size() : step.size(), ref.at(v).size()) << v;
    if ((step.size() == 1 ? ref.at(v).size() : step.size()) != ref.at(v).size()) return -1;
    for (size_t c = 0; c < ref.at(v).size(); ++c) {
      const double s = step.size() == 1 ? step[0] : step[c];
      worst_before = std::max(worst_before, std::fabs(mb.at(v)[c] - ref.at(v)[c]) / s);
      worst_after_in_steps = std::max(worst_after_in_steps, std::fabs(ma.at(v)[c] - ref.at(v)[c]) / s);
    }
  }
  // The stored correction is rounded to whole int32 bias steps (|error| <= 1/2 step), and it was measured with
  // the earlier layers' rounded corrections applied: 1/2 step, plus float32 summation noise (1e-2 of a step).
  // Before, the means were far off.
  EXPECT_LE(worst_after_in_steps, 0.51);
  EXPECT_GT(worst_before, far_before);
  std::printf("largest |mean difference| in bias steps: before %.2f, after %.3f\n", worst_before, worst_after_in_steps);
  for (const auto& l : after.layers) EXPECT_GT(l.empirical_correction_max, 0.0) << l.node;
  return float_biases;
}

TEST(PtqEmpiricalBias, EveryCorrectedLayerHasTheFloatMeanPerChannel) {
  EXPECT_EQ(expect_float_means(test::tiny_cnn(5), coarse_options()), 0);
}

// ConvTranspose layers are corrected like Convs (a per-output-channel mean): group 1 and depthwise with an int32
// bias, another grouping with its float bias.
TEST(PtqEmpiricalBias, ConvTransposeOutputsGetTheFloatMeanPerChannel) {
  Dataset calib;
  calib.name = "random";
  calib.images = Tensor(DType::kFloat32, {64, 4, 5, 5});
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto& v : calib.images.span<float>()) v = u(rng);
  for (const int64_t group : {int64_t{1}, int64_t{8}, int64_t{2}}) {
    SCOPED_TRACE("group " + std::to_string(group));
    ptq::PtqOptions o = coarse_options();
    o.weights.granularity = quant::Granularity::kPerChannel;
    EXPECT_EQ(expect_float_means(test::deconv_net(group, 9), o, calib, {"c", "u", "y"}, 10.0), group == 2 ? 1 : 0);
  }
}

TEST(PtqEmpiricalBias, ALayerWithoutBiasGetsOneWithoutAnalyticCorrection) {
  graph::Model m = test::tiny_cnn(7);
  for (auto& n : m.graph.nodes)
    if (n.name == "Conv_c2") n.inputs.resize(2);  // the depthwise conv has no bias
  m.graph.initializers.erase("b2");
  ptq::PtqOptions o = coarse_options();
  o.bias_correction = false;
  EXPECT_EQ(expect_float_means(m, o), 0);
}

TEST(PtqEmpiricalBias, AFloatBiasIsCorrectedAsItIs) {
  ptq::PtqOptions o = coarse_options();
  o.float_activations = {"x"};  // Conv_c1 reads the float image: its bias stays float
  EXPECT_EQ(expect_float_means(test::tiny_cnn(8), o), 1);
}

TEST(PtqEmpiricalBias, UsesAtMostTheConfiguredImagesAndLeavesFloatLayersAlone) {
  const graph::Model m = test::tiny_cnn(6);
  const Dataset calib = images(40, 12);
  ptq::PtqOptions o = coarse_options();
  o.empirical_bias_samples = 16;
  o.float_nodes = {"Conv_c2"};
  ptq::Calibration cal = ptq::calibrate(m, calib, o);
  const ptq::EmpiricalBiasReport rep = ptq::correct_biases_empirically(cal, calib, o);
  EXPECT_EQ(rep.images, 16);
  EXPECT_EQ(rep.layers, 2);
  EXPECT_EQ(cal.output_shift.count("Conv_c2"), 0u);
  EXPECT_EQ(cal.output_shift.at("Conv_c1").size(), 8u);
  EXPECT_EQ(cal.output_shift.at("Gemm_y").size(), 3u);
  // Only the first 16 images count: the same correction as from those 16 alone.
  ptq::Calibration cal16 = ptq::calibrate(m, calib, o);
  (void)ptq::correct_biases_empirically(cal16, take(calib, 0, 16), o);
  EXPECT_EQ(cal16.output_shift, cal.output_shift);
}

TEST(PtqEmpiricalBias, AutomaticImageCountKeepsTheBatchSmall) {
  EXPECT_EQ(ptq::empirical_bias_images(1000, 28 * 28 * 4, 0), 256);  // Fashion-MNIST: the 256 cap
  EXPECT_EQ(ptq::empirical_bias_images(160, 3 * 48 * 320 * 4, 0), 160);  // OCR crops: all of them
  EXPECT_EQ(ptq::empirical_bias_images(500, 3 * 1024 * 1024 * 4, 0), 5);  // 12 MiB images: 64 MiB of input
  EXPECT_EQ(ptq::empirical_bias_images(10, int64_t{1} << 30, 0), 1);     // at least one image
  EXPECT_EQ(ptq::empirical_bias_images(40, 1 << 20, 16), 16);             // explicit counts win
  EXPECT_EQ(ptq::empirical_bias_images(40, 1 << 20, 100), 40);
}

}  // namespace
