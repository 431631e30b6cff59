// Bad weights and bad calibration data: NaN/Inf weights are refused naming the tensor and index; NaN/Inf
// activations are an error naming the activation unless ignore_nonfinite (then counted); all-zero and
// constant weight channels get finite usable scales; int32 bias overflow is clamped and counted.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include "perch/core/error.h"
#include "perch/ptq/quantize.h"
#include "perch/ptq/validate.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;

namespace {

using perch::test::expect_contains;
using perch::test::perch_error;

Dataset calib_data(int64_t n, uint32_t seed) { return test::tiny_cnn_inputs(n, seed); }

graph::Model tiny(uint32_t seed) {
  graph::Model m = test::tiny_cnn(seed);
  m.source = "tiny.onnx";
  return m;
}

TEST(PtqRobustness, NonFiniteWeightsAreRefusedNamingTensorAndIndex) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  {
    graph::Model m = tiny(1);
    m.graph.initializers["w1"].data<float>()[2 * 9 + 4] = nan;  // w1[2, 0, 1, 1]
    const std::string e = perch_error([&] { ptq::check_finite_weights(m); });
    expect_contains(e, {"tiny.onnx: ", "Conv node 'Conv_c1'", "'w1'", "1 non-finite", "[2,0,1,1]", "flat 22"});
  }
  {
    graph::Model m = tiny(1);
    m.graph.initializers["b3"].data<float>()[1] = -inf;
    m.graph.initializers["b3"].data<float>()[2] = inf;
    const std::string e = perch_error([&] { ptq::check_finite_weights(m); });
    expect_contains(e, {"Gemm node 'Gemm_y'", "'b3'", "2 non-finite", "[1]"});
  }
  // Clean models pass; ±Inf in other initializers (Clip bounds, masks) is not a weight and is allowed.
  graph::Model m = tiny(1);
  EXPECT_NO_THROW(ptq::check_finite_weights(m));
  m.graph.initializers["hi"] = Tensor::scalar_f32(inf);
  EXPECT_NO_THROW(ptq::check_finite_weights(m));
}

// float16 models run in the executor but are not quantized: a float16 initializer, input or Cast to float16 is
// named, through quantize_model as well; a float32 model passes.
TEST(PtqRobustness, Float16ModelsAreRefusedNamingTheValue) {
  graph::Model m = tiny(1);
  EXPECT_NO_THROW(ptq::check_no_float16(m));
  m.graph.initializers["b1"] = m.graph.initializers["b1"].to(DType::kFloat16);
  expect_contains(perch_error([&] { ptq::check_no_float16(m); }), {"tiny.onnx: initializer 'b1' is float16", "convert the model to float32"});
  expect_contains(perch_error([&] { (void)ptq::quantize_model(m, calib_data(8, 1), {}); }), {"initializer 'b1' is float16"});
  graph::Model c = tiny(1);
  test::add_node(c.graph, "Cast", {"y"}, {"y16"}, {{"to", int64_t{10}}});
  expect_contains(perch_error([&] { ptq::check_no_float16(c); }), {"Cast node 'Cast_y16''s output is float16"});
  graph::Model i = tiny(1);
  i.graph.inputs[0].dtype = DType::kFloat16;
  expect_contains(perch_error([&] { ptq::check_no_float16(i); }), {"input 'x' is float16"});
}

TEST(PtqRobustness, NonFiniteWeightsNeverReachTheOutputSilently) {
  // Even without the up-front check, quantize_model must not write a model from NaN weights.
  graph::Model m = tiny(1);
  m.graph.initializers["w3"].data<float>()[5] = std::numeric_limits<float>::quiet_NaN();
  ptq::PtqOptions o;
  const std::string e = perch_error([&] { (void)ptq::quantize_model(m, calib_data(16, 3), o); });
  EXPECT_NE(e.find("non-finite"), std::string::npos) << e;
}

TEST(PtqRobustness, NonFiniteCalibrationDataNamesTheActivationUnlessIgnored) {
  const graph::Model m = tiny(2);
  Dataset d = calib_data(32, 4);
  d.images.data<float>()[3 * 64 + 10] = std::numeric_limits<float>::quiet_NaN();
  d.images.data<float>()[7 * 64 + 1] = std::numeric_limits<float>::infinity();
  ptq::PtqOptions o;
  o.equalize = false;
  const std::string e = perch_error([&] { (void)ptq::quantize_model(m, d, o); });
  expect_contains(e, {"tiny.onnx: ", "activation 'x'", "random", "non-finite"});

  o.activations.estimator.ignore_nonfinite = true;
  const ptq::PtqResult r = ptq::quantize_model(m, d, o);
  // The input itself holds 2; the NaN/Inf propagate into downstream activations too.
  EXPECT_GE(r.nonfinite_values, 2);
  runtime::Executor exec(r.model);
  const Tensor y = exec.run1(calib_data(4, 5).images);
  for (float v : y.span<float>()) EXPECT_TRUE(std::isfinite(v));
}

// Scales written into the model: every DequantizeLinear scale must be finite and > 0.
void expect_usable_scales(const graph::Model& m) {
  int dq = 0;
  for (const auto& n : m.graph.nodes) {
    if (n.op_type != "DequantizeLinear" && n.op_type != "QuantizeLinear") continue;
    ++dq;
    const Tensor* s = m.graph.initializer(n.input(1));
    ASSERT_NE(s, nullptr) << n.describe();
    for (float v : s->span<float>()) EXPECT_TRUE(std::isfinite(v) && v > 0.0f) << n.describe() << " scale " << v;
  }
  EXPECT_GT(dq, 0);
}

// Quantizing a quantized model would stack a second layer of Q/DQ on the first: refused, saying what it found.
TEST(PtqRobustness, AlreadyQuantizedModelIsRefused) {
  graph::Model q = ptq::quantize_model(tiny(3), calib_data(32, 6), ptq::PtqOptions{}).model;
  q.source = "q.onnx";
  const std::string e = perch_error([&] { (void)ptq::quantize_model(q, calib_data(16, 3), ptq::PtqOptions{}); });
  test::expect_contains(e, {"q.onnx", "already quantized", "QuantizeLinear", "DequantizeLinear", "--engine int8"});
}

TEST(PtqRobustness, AllZeroAndConstantWeightChannelsGetUsableScales) {
  for (bool per_tensor : {false, true}) {
    SCOPED_TRACE(per_tensor ? "per-tensor" : "per-channel");
    graph::Model m = tiny(3);
    float* w1 = m.graph.initializers["w1"].data<float>();
    for (int k = 0; k < 9; ++k) w1[0 * 9 + k] = 0.0f;   // channel 0 all zero
    for (int k = 0; k < 9; ++k) w1[1 * 9 + k] = 0.25f;  // channel 1 constant
    float* w3 = m.graph.initializers["w3"].data<float>();
    for (int k = 0; k < 8; ++k) w3[2 * 8 + k] = 0.0f;  // Gemm output row 2 all zero
    ptq::PtqOptions o;
    if (per_tensor) o.weights.granularity = quant::Granularity::kPerTensor;
    const ptq::PtqResult r = ptq::quantize_model(m, calib_data(64, 6), o);
    expect_usable_scales(r.model);
    runtime::Executor exec(r.model);
    const Tensor y = exec.run1(calib_data(8, 7).images);
    for (float v : y.span<float>()) EXPECT_TRUE(std::isfinite(v));
  }
  // A whole weight tensor of zeros (every channel empty).
  graph::Model m = tiny(3);
  for (auto& v : m.graph.initializers["w2"].span<float>()) v = 0.0f;
  const ptq::PtqResult r = ptq::quantize_model(m, calib_data(64, 6), ptq::PtqOptions{});
  expect_usable_scales(r.model);
}

// A channel with tiny weights beside a normal bias (a learnable affine scale near 0 folded into the conv, as in
// PaddleOCR's recognizer): its per-channel weight scale is raised so the bias fits int32 at s_in * s_w, instead of
// the bias being clamped to ~0. The quantized conv then outputs that bias for the channel, as the float one does.
TEST(PtqRobustness, TinyWeightChannelKeepsItsBias) {
  graph::Model m = tiny(4);
  float* w1 = m.graph.initializers["w1"].data<float>();
  for (int k = 0; k < 9; ++k) w1[2 * 9 + k] = 1.0e-37f * static_cast<float>(k - 4);  // channel 2: ~1e-37
  m.graph.initializers["b1"].data<float>()[2] = 0.7f;
  ptq::PtqOptions o;
  o.equalize = false;
  o.bias_correction = false;
  const ptq::PtqResult r = ptq::quantize_model(m, calib_data(64, 8), o);
  bool seen = false;
  for (const auto& l : r.layers)
    if (l.node == "Conv_c1") {
      seen = true;
      EXPECT_EQ(l.weight_scales_raised, 1);
      EXPECT_EQ(l.bias_clamped, 0);
    }
  EXPECT_TRUE(seen);
  const Tensor x = calib_data(4, 9).images;
  const Tensor c1 = runtime::Executor(r.model).run({{"x", x}}, nullptr, {"c1"}).at("c1");
  const int64_t plane = c1.dim(2) * c1.dim(3);
  for (int64_t n = 0; n < c1.dim(0); ++n)
    for (int64_t i = 0; i < plane; ++i) ASSERT_NEAR(c1.data<float>()[(n * 8 + 2) * plane + i], 0.7f, 1e-5f);
}

TEST(PtqRobustness, BiasBeyondInt32IsClampedAndCounted) {
  graph::Model m = tiny(4);
  m.graph.initializers["b1"].data<float>()[3] = 1.0e30f;
  m.graph.initializers["b1"].data<float>()[5] = -1.0e30f;
  ptq::PtqOptions o;
  o.equalize = false;
  o.bias_correction = false;
  const ptq::PtqResult r = ptq::quantize_model(m, calib_data(64, 8), o);
  int64_t clamped = 0;
  for (const auto& l : r.layers) {
    if (l.node == "Conv_c1") {
      EXPECT_EQ(l.bias_clamped, 2);
    }
    clamped += l.bias_clamped;
  }
  EXPECT_EQ(clamped, 2);
  // The int32 bias holds the extremes.
  bool saw_max = false, saw_min = false;
  for (const auto& [name, t] : r.model.graph.initializers)
    if (t.dtype() == DType::kInt32)
      for (int32_t v : t.span<int32_t>()) {
        saw_max |= v == std::numeric_limits<int32_t>::max();
        saw_min |= v == std::numeric_limits<int32_t>::min();
      }
  EXPECT_TRUE(saw_max && saw_min);
}

TEST(PtqRobustness, EmptyCalibrationSetIsNamed) {
  Dataset d = calib_data(1, 1);
  d.images = Tensor(DType::kFloat32, {0, 1, 8, 8});
  d.name = "empty.npy";
  const std::string e = perch_error([&] { (void)ptq::quantize_model(tiny(1), d, ptq::PtqOptions{}); });
  expect_contains(e, {"empty.npy", "empty"});
}

}  // namespace
