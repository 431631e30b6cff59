// Dynamic quantization (ptq/dynamic.h): the rewritten model computes what dynamic quantization means — checked
// against the definition evaluated here in double precision (DynamicQuantizeLinear's parameters, symmetric int8
// weights per column, the exact integer product, the scales and the bias) — and keeps, names and refuses what it
// should.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "perch/ptq/dynamic.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;
using graph::Model;
using graph::Node;

namespace {

Tensor normal_tensor(const Shape& s, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  Tensor t(DType::kFloat32, s);
  for (auto& v : t.span<float>()) v = nd(rng);
  return t;
}

Model base_model(const std::string& name, Shape x, Shape y) {
  Model m;
  m.ir_version = 8;
  m.opsets = {{"", 13}};
  m.source = name;
  m.graph.name = name;
  m.graph.inputs.push_back({"x", DType::kFloat32, std::move(x), {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, std::move(y), {}, true});
  return m;
}

// x [4, 12] -> Gemm(W1 [20, 12] transB, C1 [20], alpha 0.5, beta 2) -> Relu -> MatMul(W2 [20, 5]) -> y [4, 5].
// W1's output channels span ranges x0.01 .. x1 (one per-tensor scale would flatten the small ones).
Model mlp() {
  Model m = base_model("dynamic_mlp", {4, 12}, {4, 5});
  Tensor w1 = normal_tensor({20, 12}, 1, 1.0f);
  for (int64_t r = 0; r < 20; ++r)
    for (int64_t k = 0; k < 12; ++k) w1.data<float>()[r * 12 + k] *= std::pow(100.0f, r / 19.0f) / 100.0f;
  m.graph.initializers["w1"] = w1;
  m.graph.initializers["c1"] = normal_tensor({20}, 2, 0.1f);
  m.graph.initializers["w2"] = normal_tensor({20, 5}, 3, 1.0f);
  test::add_node(m.graph, "Gemm", {"x", "w1", "c1"}, {"h"},
                 {{"transB", int64_t{1}}, {"alpha", 0.5f}, {"beta", 2.0f}});
  test::add_node(m.graph, "Relu", {"h"}, {"r"});
  test::add_node(m.graph, "MatMul", {"r", "w2"}, {"y"});
  return m;
}

// DynamicQuantizeLinear as ONNX defines it (float32 arithmetic), returned dequantized: s (q - z).
std::vector<double> dynamic_fake_quant(const std::vector<float>& x, double* scale) {
  float lo = 0, hi = 0;
  for (float v : x) lo = std::min(lo, v), hi = std::max(hi, v);
  const float s = (hi - lo) / 255.0f;
  const float z = std::clamp(std::nearbyint(-lo / s), 0.0f, 255.0f);
  std::vector<double> out;
  for (float v : x) out.push_back(double{s} * (std::clamp(std::nearbyint(v / s) + z, 0.0f, 255.0f) - z));
  *scale = s;
  return out;
}

// Symmetric narrow-range int8 per output column of w (`cols` columns, element (k, j) at w[k * ks + j * js]),
// dequantized in place.
void fake_quant_columns(std::vector<double>& wd, const float* w, int64_t rows, int64_t cols, int64_t ks, int64_t js) {
  for (int64_t j = 0; j < cols; ++j) {
    float a = 0;
    for (int64_t k = 0; k < rows; ++k) a = std::max(a, std::fabs(w[k * ks + j * js]));
    const float s = a / 127.0f;
    for (int64_t k = 0; k < rows; ++k)
      wd[k * ks + j * js] = double{s} * std::clamp(std::nearbyint(w[k * ks + j * js] / s), -127.0f, 127.0f);
  }
}

TEST(DynamicQuant, MlpComputesDynamicQuantizationAsDefined) {
  const Model m = mlp();
  ptq::DynamicOptions opt;
  opt.equalize = false;  // the reference below quantizes the weights as given
  const ptq::DynamicResult r = ptq::quantize_dynamic(m, opt);
  ASSERT_EQ(r.layers.size(), 2u);
  EXPECT_EQ(r.dynamic_inputs, 2);
  const Tensor x = normal_tensor({4, 12}, 9, 1.0f);
  const Tensor y = runtime::Executor(r.model).run({{"x", x}}).at("y");

  // The definition, in double: h = 0.5 fq(x) fq(W1)^T + 2 C1, r = relu(h), y = fq(r) fq(W2).
  const float* w1 = m.graph.initializer("w1")->data<float>();
  const float* c1 = m.graph.initializer("c1")->data<float>();
  const float* w2 = m.graph.initializer("w2")->data<float>();
  std::vector<double> w1q(240), w2q(100);
  fake_quant_columns(w1q, w1, 12, 20, 1, 12);  // W1 [20, 12] holds column j of W1^T in row j
  fake_quant_columns(w2q, w2, 20, 5, 5, 1);
  double sx = 0, sr = 0;
  const std::vector<double> xq = dynamic_fake_quant(std::vector<float>(x.data<float>(), x.data<float>() + 48), &sx);
  std::vector<float> rel(80);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 20; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < 12; ++k) acc += xq[i * 12 + k] * w1q[j * 12 + k];
      rel[i * 20 + j] = static_cast<float>(std::max(0.0, 0.5 * acc + 2.0 * c1[j]));
    }
  const std::vector<double> rq = dynamic_fake_quant(rel, &sr);
  double top = 0, worst = 0;
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 5; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < 20; ++k) acc += rq[i * 20 + k] * w2q[k * 5 + j];
      top = std::max(top, std::fabs(acc));
      worst = std::max(worst, std::fabs(acc - y.data<float>()[i * 5 + j]));
    }
  // float32 evaluation order (the integer sum is exact; float(acc) * (s_x s_w) and the bias add round): a few ulps.
  EXPECT_LE(worst, 1e-5 * top) << "largest |y| " << top;
}

TEST(DynamicQuant, PerChannelBeatsPerTensorOnSpreadChannels) {
  const Model m = mlp();
  const Tensor x = normal_tensor({4, 12}, 10, 1.0f);
  const Tensor ref = runtime::Executor(m).run({{"x", x}}).at("y");
  ptq::DynamicOptions pc, pt;
  pc.equalize = pt.equalize = false;  // equalization would even the channels out first
  pt.weights.granularity = quant::Granularity::kPerTensor;
  const ptq::DynamicResult a = ptq::quantize_dynamic(m, pc), b = ptq::quantize_dynamic(m, pt);
  EXPECT_EQ(a.layers[0].granularity, "per-channel");
  EXPECT_EQ(b.layers[0].granularity, "per-tensor");
  EXPECT_GT(a.layers[0].weight_sqnr_db, b.layers[0].weight_sqnr_db + 5);  // 47.4 vs 38.5 dB
  const double ea = test::max_rel_diff(runtime::Executor(a.model).run({{"x", x}}).at("y"), ref);
  const double eb = test::max_rel_diff(runtime::Executor(b.model).run({{"x", x}}).at("y"), ref);
  EXPECT_LT(ea, 0.02);
  EXPECT_LT(ea, eb);
}

TEST(DynamicQuant, CnnBecomesIntegerOpsWithOneDynamicQuantizePerInput) {
  const Model m = test::tiny_cnn(4);
  const ptq::DynamicResult r = ptq::quantize_dynamic(m, {});
  std::map<std::string, int> ops;
  for (const auto& n : r.model.graph.nodes) ++ops[n.op_type];
  EXPECT_EQ(ops["ConvInteger"], 2);
  EXPECT_EQ(ops["MatMulInteger"], 1);  // the Gemm
  EXPECT_EQ(ops["Conv"] + ops["Gemm"], 0);
  EXPECT_EQ(ops["DynamicQuantizeLinear"], 3);  // x, the pooled map, the flattened features
  EXPECT_EQ(r.dynamic_inputs, 3);
  EXPECT_GE(r.model.opset(), 11);
  for (const auto& n : r.model.graph.nodes)
    if (n.op_type == "ConvInteger" || n.op_type == "MatMulInteger") {
      const Tensor* w = r.model.graph.initializer(n.input(1));
      ASSERT_TRUE(w);
      EXPECT_EQ(w->dtype(), DType::kInt8);
    }
  EXPECT_FALSE(r.model.graph.is_initializer("w1"));  // the float weights are gone
  const Dataset d = test::tiny_cnn_inputs(8, 5);
  const Tensor ref = runtime::Executor(m).run({{"x", d.images}}).at("y");
  EXPECT_LT(test::max_rel_diff(runtime::Executor(r.model).run({{"x", d.images}}).at("y"), ref), 0.05);
}

TEST(DynamicQuant, TwoLayersReadingOneValueShareItsQuantization) {
  Model m = base_model("shared_input", {3, 8}, {3, 4});
  m.graph.initializers["a"] = normal_tensor({8, 4}, 1, 1.0f);
  m.graph.initializers["b"] = normal_tensor({8, 4}, 2, 1.0f);
  test::add_node(m.graph, "MatMul", {"x", "a"}, {"p"});
  test::add_node(m.graph, "MatMul", {"x", "b"}, {"q"});
  test::add_node(m.graph, "Add", {"p", "q"}, {"y"});
  const ptq::DynamicResult r = ptq::quantize_dynamic(m, {});
  EXPECT_EQ(r.layers.size(), 2u);
  EXPECT_EQ(r.dynamic_inputs, 1);
}

TEST(DynamicQuant, KeepsFloatAndSaysWhy) {
  {
    const ptq::DynamicResult r = ptq::quantize_dynamic(test::deconv_net(1, 3), {});
    ASSERT_EQ(r.kept_float.size(), 1u);
    EXPECT_NE(r.kept_float[0].second.find("ConvTranspose"), std::string::npos);
    EXPECT_EQ(r.layers.size(), 2u);
  }
  {
    ptq::DynamicOptions o;
    o.float_nodes = {"Gemm_h"};
    const ptq::DynamicResult r = ptq::quantize_dynamic(mlp(), o);
    ASSERT_EQ(r.kept_float.size(), 1u);
    EXPECT_NE(r.kept_float[0].first.find("Gemm_h"), std::string::npos);
    EXPECT_EQ(r.layers.size(), 1u);
  }
  {
    // K = 66 312: 66 312 x 255 x 127 >= 2^31 at 8 bits; at 7 bits (x 63) it fits.
    const int64_t k = 66312;
    Model m = base_model("long_reduction", {1, k}, {1, 2});
    m.graph.initializers["w"] = normal_tensor({k, 2}, 4, 1.0f);
    test::add_node(m.graph, "MatMul", {"x", "w"}, {"y"});
    const ptq::DynamicResult r8 = ptq::quantize_dynamic(m, {});
    ASSERT_EQ(r8.kept_float.size(), 1u);
    EXPECT_NE(r8.kept_float[0].second.find("overflow"), std::string::npos);
    ptq::DynamicOptions o7;
    o7.weights.bits = 7;
    EXPECT_EQ(ptq::quantize_dynamic(m, o7).layers.size(), 1u);
  }
}

TEST(DynamicQuant, RefusesWhatItCannotWrite) {
  ptq::DynamicOptions grouped;
  grouped.weights.granularity = quant::Granularity::kPerGroup;
  grouped.weights.group_size = 4;
  test::expect_contains(test::perch_error([&] { ptq::quantize_dynamic(mlp(), grouped); }), {"per-group"});
  ptq::DynamicOptions unknown;
  unknown.float_nodes = {"no_such_node"};
  test::expect_contains(test::perch_error([&] { ptq::quantize_dynamic(mlp(), unknown); }), {"no_such_node"});
  ptq::DynamicOptions op;
  op.op_types = {"LSTM"};
  test::expect_contains(test::perch_error([&] { ptq::quantize_dynamic(mlp(), op); }), {"LSTM"});
  const Model once = ptq::quantize_dynamic(mlp(), {}).model;
  test::expect_contains(test::perch_error([&] { ptq::quantize_dynamic(once, {}); }),
                        {"already quantized", "DynamicQuantizeLinear", "MatMulInteger"});
}

}  // namespace
