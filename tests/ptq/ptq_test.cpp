// PTQ: the QDQ model perch writes — axes, integer ranges, bias scales, opsets — checked on small
// hand-built models against independent double-precision computations.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "perch/graph/passes.h"
#include "perch/ptq/equalize.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;
using graph::Model;
using graph::Node;

namespace {

Dataset random_data(const Shape& shape, uint32_t seed, float lo = -1.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  Dataset d;
  d.images = Tensor(DType::kFloat32, shape);
  for (auto& v : d.images.span<float>()) v = u(rng);
  d.name = "random";
  return d;
}

Tensor random_tensor(const Shape& s, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  Tensor t(DType::kFloat32, s);
  for (auto& v : t.span<float>()) v = nd(rng);
  return t;
}

// x [N,K] -> op -> y, one weight layer.
Model single_layer(const std::string& op, const Shape& w_shape, std::map<std::string, graph::AttrValue> attrs,
                   const Shape& x_shape, bool bias) {
  Model m;
  m.opsets = {{"", 13}};
  m.graph.inputs.push_back({"x", DType::kFloat32, x_shape, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  m.graph.initializers["w"] = random_tensor(w_shape, 1);
  Node n;
  n.op_type = op;
  n.name = "layer";
  n.inputs = {"x", "w"};
  if (bias) {
    const int64_t channels = op == "Conv" ? w_shape[0] : (std::get<int64_t>(attrs.count("transB") ? attrs["transB"] : graph::AttrValue(int64_t{0})) ? w_shape[0] : w_shape[1]);
    m.graph.initializers["b"] = random_tensor({channels}, 2, 0.5f);
    n.inputs.push_back("b");
  }
  n.outputs = {"y"};
  n.attrs = std::move(attrs);
  m.graph.nodes.push_back(n);
  return m;
}

const Node* find_dq_reading(const Model& m, const std::string& prefix) {
  for (const auto& n : m.graph.nodes)
    if (n.op_type == "DequantizeLinear" && n.inputs[0].rfind(prefix, 0) == 0) return &n;
  return nullptr;
}

ptq::PtqOptions plain_options() {
  ptq::PtqOptions o;
  o.equalize = false;
  o.bias_correction = false;
  return o;
}

struct AxisCase {
  std::string op;
  Shape w_shape;
  std::map<std::string, graph::AttrValue> attrs;
  Shape x_shape;
  int64_t axis, channels;
};

class WeightAxis : public ::testing::TestWithParam<int> {};

TEST(PtqWeights, PerChannelAxisIsTheOutputChannelOfEachOp) {
  const std::vector<AxisCase> cases = {
      {"Conv", {6, 3, 3, 3}, {}, {2, 3, 5, 5}, 0, 6},
      {"Conv", {6, 1, 3, 3}, {{"group", int64_t{6}}}, {2, 6, 5, 5}, 0, 6},   // depthwise
      {"Conv", {12, 1, 3, 3}, {{"group", int64_t{6}}}, {2, 6, 5, 5}, 0, 12}, // depthwise, multiplier 2
      {"Conv", {6, 2, 1, 1}, {{"group", int64_t{3}}}, {2, 6, 5, 5}, 0, 6},   // grouped
      {"Gemm", {4, 7}, {{"transB", int64_t{0}}}, {2, 4}, 1, 7},
      {"Gemm", {7, 4}, {{"transB", int64_t{1}}}, {2, 4}, 0, 7},
      {"MatMul", {4, 7}, {}, {2, 4}, 1, 7},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.op + " " + shape_str(c.w_shape));
    const Model m = single_layer(c.op, c.w_shape, c.attrs, c.x_shape, c.op != "MatMul");
    const auto res = ptq::quantize_model(m, random_data(c.x_shape, 3), plain_options());
    const Node* dq = find_dq_reading(res.model, "w");
    ASSERT_NE(dq, nullptr);
    EXPECT_EQ(dq->attr_int("axis", -99), c.axis);
    const Tensor& scale = *res.model.graph.initializer(dq->inputs[1]);
    EXPECT_EQ(scale.numel(), c.channels);
    const Tensor& q = *res.model.graph.initializer(dq->inputs[0]);
    ASSERT_EQ(q.dtype(), DType::kInt8);
    // Narrow range, and every channel reaches +-127 at its max |w| (symmetric min/max weights).
    const Tensor& w = *m.graph.initializer("w");
    std::vector<int> reach(static_cast<size_t>(c.channels), 0);
    std::vector<double> wmax(static_cast<size_t>(c.channels), 0.0);
    const int64_t inner = c.axis == 0 ? q.numel() / c.channels : 1;
    for (int64_t i = 0; i < q.numel(); ++i) {
      const int64_t ch = c.axis == 0 ? i / inner : i % c.channels;
      const int v = q.data<int8_t>()[i];
      EXPECT_GE(v, -127);
      reach[ch] = std::max(reach[ch], std::abs(v));
      wmax[ch] = std::max(wmax[ch], static_cast<double>(std::fabs(w.data<float>()[i])));
    }
    for (int64_t ch = 0; ch < c.channels; ++ch) {
      EXPECT_EQ(reach[ch], 127) << "channel " << ch;
      EXPECT_NEAR(scale.data<float>()[ch], wmax[ch] / 127.0, 1e-7 * wmax[ch]);
    }
    EXPECT_GE(res.model.opset(), 13);
  }
}

TEST(PtqWeights, FourBitWeightsStayInMinus7To7) {
  const Model m = single_layer("Conv", {8, 4, 3, 3}, {}, {2, 4, 6, 6}, true);
  auto o = plain_options();
  o.weights.bits = 4;
  const auto res = ptq::quantize_model(m, random_data({2, 4, 6, 6}, 4), o);
  const Node* dq = find_dq_reading(res.model, "w");
  ASSERT_NE(dq, nullptr);
  const Tensor& q = *res.model.graph.initializer(dq->inputs[0]);
  int lo = 0, hi = 0;
  for (auto v : q.span<int8_t>()) lo = std::min<int>(lo, v), hi = std::max<int>(hi, v);
  EXPECT_EQ(lo, -7);
  EXPECT_EQ(hi, 7);
}

TEST(PtqWeights, PerGroupWritesBlockedDequantizeAtOpset21) {
  const Model m = single_layer("Gemm", {6, 16}, {{"transB", int64_t{1}}}, {3, 16}, true);
  auto o = plain_options();
  o.weights.granularity = quant::Granularity::kPerGroup;
  o.weights.group_size = 4;
  const auto res = ptq::quantize_model(m, random_data({3, 16}, 5), o);
  const Node* dq = find_dq_reading(res.model, "w");
  ASSERT_NE(dq, nullptr);
  EXPECT_EQ(dq->attr_int("block_size", 0), 4);
  EXPECT_EQ(dq->attr_int("axis", -1), 1);  // groups run along K (input features)
  EXPECT_EQ(res.model.graph.initializer(dq->inputs[1])->shape(), (Shape{6, 4}));
  EXPECT_EQ(res.model.opset(), 21);
  EXPECT_GE(res.model.ir_version, 10);
}

// QuantizeLinear / DequantizeLinear accept 16-bit integers from opset 21 on (ONNX Runtime refuses a uint16 zero
// point in an opset-13 model): 16-bit activations raise the opset to 21; 8-bit ones leave a per-tensor opset-10 model
// at 10.
TEST(PtqActivations, SixteenBitActivationsNeedOpset21) {
  Model m = single_layer("Conv", {4, 2, 3, 3}, {}, {2, 2, 6, 6}, true);
  m.set_opset(10);
  const Dataset data = random_data({2, 2, 6, 6}, 9);
  auto o = plain_options();
  o.weights.granularity = quant::Granularity::kPerTensor;
  EXPECT_EQ(ptq::quantize_model(m, data, o).model.opset(), 10);
  o.activations.bits = 16;
  const auto res = ptq::quantize_model(m, data, o);
  EXPECT_EQ(res.model.opset(), 21);
  EXPECT_GE(res.model.ir_version, 10);
  bool uint16_zero_point = false;
  for (const auto& n : res.model.graph.nodes)
    if (n.op_type == "QuantizeLinear") uint16_zero_point |= res.model.graph.initializer(n.input(2))->dtype() == DType::kUInt16;
  EXPECT_TRUE(uint16_zero_point);
}

// Mixed precision (PtqOptions::activation_bits): named activations at 16 bits, the others at 8. A 16-bit grid spans
// the values calibration saw (min and max of the float run, with 0), a narrower one the 8-bit grid's float range
// [s (qmin - zp), s (qmax - zp)]; a pass-through op's output and input keep one grid (MaxPool: p shares h's), and
// bad requests are refused by name.
TEST(PtqActivations, PerActivationBitsKeepTheRangeAndTheSharingGroup) {
  Model m;
  m.opsets = {{"", 13}};
  m.graph.inputs.push_back({"x", DType::kFloat32, {4, 2, 8, 8}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  m.graph.initializers["w1"] = random_tensor({4, 2, 3, 3}, 51);
  m.graph.initializers["w2"] = random_tensor({3, 4, 3, 3}, 52);
  auto conv = [](const std::string& name, const std::string& in, const std::string& w, const std::string& out) {
    Node n;
    n.op_type = "Conv", n.name = name, n.inputs = {in, w}, n.outputs = {out};
    n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
    return n;
  };
  m.graph.nodes.push_back(conv("c1", "x", "w1", "h"));
  Node pool;
  pool.op_type = "MaxPool", pool.name = "pool", pool.inputs = {"h"}, pool.outputs = {"p"};
  pool.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  pool.attrs["strides"] = std::vector<int64_t>{2, 2};
  m.graph.nodes.push_back(pool);
  m.graph.nodes.push_back(conv("c2", "p", "w2", "y"));
  const Dataset data = random_data({4, 2, 8, 8}, 53);
  auto o = plain_options();
  const ptq::Calibration cal = ptq::calibrate(m, data, o);
  ASSERT_EQ(cal.shares.count("p"), 1u);

  o.activation_bits = {{"p", 16}, {"x", 4}};
  const auto res = ptq::build_quantized(cal, o);
  double h_min = 0, h_max = 0;  // the float run's extremes of h, with 0 (an independent pass over the data)
  (void)runtime::Executor(m).run({{"x", data.images}}, [&](const std::string& v, const Tensor& t) {
    if (v != "h") return;
    for (const float x : t.span<float>()) h_min = std::min<double>(h_min, x), h_max = std::max<double>(h_max, x);
  });
  ASSERT_LT(h_min, 0);
  ASSERT_GT(h_max, 0);
  EXPECT_EQ(res.model.opset(), 21);
  const auto& g = res.model.graph;
  auto q_of = [&](const std::string& v) -> const Node* {
    for (const auto& n : g.nodes)
      if (n.op_type == "QuantizeLinear" && n.inputs[0] == v) return &n;
    return nullptr;
  };
  for (const char* v : {"x", "h", "p"}) ASSERT_NE(q_of(v), nullptr) << v;
  for (const char* v : {"h", "p"}) {  // p asked for 16 bits; h shares its grid
    const Tensor& z = *g.initializer(q_of(v)->input(2));
    ASSERT_EQ(z.dtype(), DType::kUInt16) << v;
    const double s16 = g.initializer(q_of(v)->input(1))->data<float>()[0];
    const double zp16 = z.data<uint16_t>()[0];
    EXPECT_NEAR(s16, (h_max - h_min) / 65535, 1e-6 * s16) << v;
    EXPECT_NEAR(s16 * (0 - zp16), h_min, s16) << v;  // the zero point is rounded: within one 16-bit step
    EXPECT_NEAR(s16 * (65535 - zp16), h_max, s16) << v;
    EXPECT_LT(s16, cal.activation_params.at(v).scale[0] / 200) << v;
  }
  {  // x at 4 bits: the 8-bit grid's span on 16 levels (stored as uint8)
    const Tensor& z = *g.initializer(q_of("x")->input(2));
    ASSERT_EQ(z.dtype(), DType::kUInt8);
    const double s4 = g.initializer(q_of("x")->input(1))->data<float>()[0], zp4 = z.data<uint8_t>()[0];
    const quant::QuantParams& p8 = cal.activation_params.at("x");
    const double lo = p8.scale[0] * (0 - p8.zero_point[0]), hi = p8.scale[0] * (255 - p8.zero_point[0]);
    EXPECT_NEAR(s4, (hi - lo) / 15, 1e-6 * s4);
    EXPECT_NEAR(s4 * (0 - zp4), lo, s4);
    EXPECT_NEAR(s4 * (15 - zp4), hi, s4);
  }
  EXPECT_EQ(g.initializer(q_of("h")->input(1))->data<float>()[0], g.initializer(q_of("p")->input(1))->data<float>()[0]);

  auto fails_naming = [&](ptq::PtqOptions bad, const std::string& what) {
    try {
      (void)ptq::build_quantized(cal, bad);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto bad = plain_options();
  bad.activation_bits = {{"nope", 16}};
  fails_naming(bad, "'nope'");
  bad.activation_bits = {{"h", 12}};
  fails_naming(bad, "12 bits");
  auto float_h = plain_options();  // float_activations take precedence; p stays quantized on h's 16-bit grid
  float_h.activation_bits = {{"h", 16}};
  float_h.float_activations = {"h"};
  const auto fres = ptq::build_quantized(cal, float_h);
  bool h_quantized = false, p_16 = false;
  for (const auto& n : fres.model.graph.nodes)
    if (n.op_type == "QuantizeLinear") {
      h_quantized |= n.inputs[0] == "h";
      p_16 |= n.inputs[0] == "p" && fres.model.graph.initializer(n.input(2))->dtype() == DType::kUInt16;
    }
  EXPECT_FALSE(h_quantized);
  EXPECT_TRUE(p_16);
  bad.activation_bits = {{"h", 16}, {"p", 8}};
  fails_naming(bad, "share one grid");
}

// Bias: int32, scale = s_in * s_w[c] (the float product), value = round_half_even(b / scale).
TEST(PtqBias, Int32WithInputTimesWeightScale) {
  const Model m = single_layer("Conv", {5, 2, 3, 3}, {}, {4, 2, 6, 6}, true);
  const auto res = ptq::quantize_model(m, random_data({4, 2, 6, 6}, 6), plain_options());
  const auto& g = res.model.graph;
  const Node* wdq = find_dq_reading(res.model, "w");
  const Node* bdq = find_dq_reading(res.model, "b");
  const Node* xdq = find_dq_reading(res.model, "x");
  ASSERT_TRUE(wdq && bdq && xdq);
  const float s_in = g.initializer(xdq->inputs[1])->data<float>()[0];
  const Tensor& sw = *g.initializer(wdq->inputs[1]);
  const Tensor& sb = *g.initializer(bdq->inputs[1]);
  const Tensor& qb = *g.initializer(bdq->inputs[0]);
  const Tensor& b = *m.graph.initializer("b");
  ASSERT_EQ(qb.dtype(), DType::kInt32);
  EXPECT_EQ(bdq->attr_int("axis", -1), 0);
  for (int64_t c = 0; c < 5; ++c) {
    EXPECT_EQ(sb.data<float>()[c], s_in * sw.data<float>()[c]);
    EXPECT_EQ(qb.data<int32_t>()[c], static_cast<int32_t>(std::nearbyint(static_cast<double>(b.data<float>()[c]) / sb.data<float>()[c])));
  }
}

// The QDQ model executed by perch equals an independent double-precision simulation of the same
// quantized layer: fake-quant input, fake-quant weights, int32 bias, conv, in double.
TEST(PtqSimulation, SingleConvMatchesDoublePrecisionSimulation) {
  const Shape xs{3, 2, 7, 7};
  Model m = single_layer("Conv", {4, 2, 3, 3}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}, xs, true);
  const Dataset data = random_data(xs, 7);
  const auto res = ptq::quantize_model(m, data, plain_options());
  const auto& g = res.model.graph;
  const Node* xdq = find_dq_reading(res.model, "x");
  const Node* wdq = find_dq_reading(res.model, "w");
  const Node* bdq = find_dq_reading(res.model, "b");
  const double s_x = g.initializer(xdq->inputs[1])->data<float>()[0];
  const int zx = g.initializer(xdq->inputs[2])->data<uint8_t>()[0];
  const Tensor& wq = *g.initializer(wdq->inputs[0]);
  const Tensor& sw = *g.initializer(wdq->inputs[1]);
  const Tensor& bq = *g.initializer(bdq->inputs[0]);
  const Tensor& sb = *g.initializer(bdq->inputs[1]);
  // Calibrated range must be the data's min/max widened to include 0.
  float lo = 0, hi = 0;
  for (float v : data.images.span<float>()) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_NEAR(s_x, (static_cast<double>(hi) - lo) / 255.0, 1e-6 * s_x * 255);

  const Tensor y = runtime::Executor(res.model).run1(data.images);
  const Tensor& x = data.images;
  double max_err = 0, max_y = 0;
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t o = 0; o < 4; ++o)
      for (int64_t i = 0; i < 7; ++i)
        for (int64_t j = 0; j < 7; ++j) {
          double acc = static_cast<double>(bq.data<int32_t>()[o]) * sb.data<float>()[o];
          for (int64_t c = 0; c < 2; ++c)
            for (int64_t ki = 0; ki < 3; ++ki)
              for (int64_t kj = 0; kj < 3; ++kj) {
                const int64_t ii = i + ki - 1, jj = j + kj - 1;
                if (ii < 0 || ii >= 7 || jj < 0 || jj >= 7) continue;
                const float xv = x.data<float>()[((n * 2 + c) * 7 + ii) * 7 + jj];
                const double q = std::clamp(static_cast<double>(std::nearbyint(xv / static_cast<float>(s_x))) + zx, 0.0, 255.0);
                const double xf = (q - zx) * s_x;
                const double wf = wq.data<int8_t>()[((o * 2 + c) * 3 + ki) * 3 + kj] * static_cast<double>(sw.data<float>()[o]);
                acc += xf * wf;
              }
          const double got = y.data<float>()[((n * 4 + o) * 7 + i) * 7 + j];
          max_err = std::max(max_err, std::fabs(got - acc));
          max_y = std::max(max_y, std::fabs(acc));
        }
  // The executor rounds each dequantized value and accumulates in float: error << one output LSB.
  EXPECT_LE(max_err, 1e-5 * max_y);
}

// Which activations get Q/DQ: fused Conv->Relu quantizes only the Relu output; MaxPool reuses its
// input's parameters; the graph output stays float.
TEST(PtqActivations, FusionSharingAndFloatOutput) {
  const Model m = test::tiny_cnn(3);
  const auto res = ptq::quantize_model(m, random_data({16, 1, 8, 8}, 8), plain_options());
  const auto& g = res.model.graph;
  std::map<std::string, const Node*> q_of;  // quantized value -> QuantizeLinear
  for (const auto& n : g.nodes)
    if (n.op_type == "QuantizeLinear") q_of[n.inputs[0]] = &n;
  EXPECT_FALSE(q_of.count("c1")) << "Conv output feeding only a Relu must be fused, not quantized";
  EXPECT_FALSE(q_of.count("c2")) << "Conv output feeding only a Clip must be fused";
  EXPECT_TRUE(q_of.count("x"));
  EXPECT_TRUE(q_of.count("r1"));
  EXPECT_TRUE(q_of.count("p1"));
  EXPECT_TRUE(q_of.count("a"));
  EXPECT_FALSE(q_of.count("y")) << "graph outputs stay float by default";
  ASSERT_TRUE(q_of.count("r1") && q_of.count("p1"));
  EXPECT_EQ(g.initializer(q_of["r1"]->inputs[1])->data<float>()[0], g.initializer(q_of["p1"]->inputs[1])->data<float>()[0]);
  EXPECT_EQ(g.initializer(q_of["r1"]->inputs[2])->data<uint8_t>()[0], g.initializer(q_of["p1"]->inputs[2])->data<uint8_t>()[0]);
  EXPECT_EQ(res.activations_quantized, static_cast<int64_t>(q_of.size()));
}

// An opset-10 model (Clip with min/max attributes) is raised to 13 for per-channel axes, and computes
// the same function.
TEST(PtqOpset, RaisesOpset10ModelWithClipAttributes) {
  Model m = single_layer("Conv", {4, 1, 3, 3}, {}, {2, 1, 6, 6}, true);
  m.set_opset(10);
  m.graph.nodes[0].outputs = {"c"};
  Node clip;
  clip.op_type = "Clip";
  clip.name = "clip";
  clip.inputs = {"c"};
  clip.outputs = {"y"};
  clip.attrs["min"] = 0.0f;
  clip.attrs["max"] = 0.5f;
  m.graph.nodes.push_back(clip);
  const Dataset data = random_data({2, 1, 6, 6}, 9);
  const auto res = ptq::quantize_model(m, data, plain_options());
  EXPECT_EQ(res.model.opset(), 13);
  const Tensor y = runtime::Executor(res.model).run1(data.images);
  float mx = 0;
  for (float v : y.span<float>()) mx = std::max(mx, v);
  EXPECT_LE(mx, 0.5f) << "Clip's max survived the conversion";
  EXPECT_GT(mx, 0.4f);
}

TEST(PtqOpset, RefusesWhatItCannotConvertNamingTheOp) {
  Model m = single_layer("Conv", {4, 1, 3, 3}, {}, {2, 1, 6, 6}, true);
  m.set_opset(9);
  m.graph.nodes[0].outputs = {"c"};
  Node up;
  up.op_type = "Upsample";
  up.name = "up";
  up.inputs = {"c"};
  up.outputs = {"y"};
  m.graph.nodes.push_back(up);
  try {
    ptq::quantize_model(m, random_data({2, 1, 6, 6}, 1), plain_options());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Upsample"), std::string::npos) << e.what();
  }
}

// Cross-layer equalization preserves the function and pulls channel ranges together.
TEST(PtqEqualize, PreservesOutputsAndReducesSpread) {
  Model m = test::tiny_cnn(5);
  // Give tiny_cnn a second dense pair to equalize: conv1 -> relu -> maxpool feeds conv2 (depthwise,
  // blocked) and Add; so build a plain chain instead.
  Model chain;
  chain.opsets = {{"", 13}};
  chain.graph.inputs.push_back({"x", DType::kFloat32, {-1, 2, 6, 6}, {}, true});
  chain.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  Tensor w1 = random_tensor({6, 2, 3, 3}, 11);
  for (int64_t i = 0; i < w1.numel(); ++i) w1.data<float>()[i] *= std::pow(10.0f, static_cast<float>(i / 18) - 3.0f);
  chain.graph.initializers["w1"] = w1;
  chain.graph.initializers["b1"] = random_tensor({6}, 12, 0.1f);
  chain.graph.initializers["w2"] = random_tensor({4, 6, 3, 3}, 13);
  chain.graph.initializers["w3"] = random_tensor({3, 4 * 2 * 2}, 14);
  auto add = [&](std::string op, std::vector<std::string> in, std::string out, std::map<std::string, graph::AttrValue> a = {}) {
    Node n;
    n.op_type = op, n.name = out, n.inputs = std::move(in), n.outputs = {out}, n.attrs = std::move(a);
    chain.graph.nodes.push_back(n);
  };
  add("Conv", {"x", "w1", "b1"}, "c1");
  add("Relu", {"c1"}, "r1");
  add("Conv", {"r1", "w2"}, "c2");
  add("Relu", {"c2"}, "r2");
  add("Flatten", {"r2"}, "f");
  add("Gemm", {"f", "w3"}, "y", {{"transB", int64_t{1}}});
  const Dataset data = random_data({4, 2, 6, 6}, 15);
  const Tensor before = runtime::Executor(chain).run1(data.images);
  Model eq = chain;
  const auto rep = ptq::equalize(eq);
  EXPECT_EQ(rep.pairs, 2);
  EXPECT_GT(rep.max_spread_before, 100.0);
  EXPECT_LT(rep.max_spread_after, rep.max_spread_before / 10);
  const Tensor after = runtime::Executor(eq).run1(data.images);
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < before.numel(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(before.data<float>()[i] - after.data<float>()[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(before.data<float>()[i])));
  }
  EXPECT_LE(max_diff, 1e-5 * max_ref);
  // The caller's model is untouched (weights were copied before rescaling).
  EXPECT_EQ(chain.graph.initializer("w1")->data<float>()[0], w1.data<float>()[0]);
  (void)m;
}

// x [N,3,8,8] -> Conv A (3 -> C, 3x3, pad 1, bias; output channel c scaled by gains[c]) -> [between] -> depthwise
// Conv B (C groups, `mult` outputs per group, 3x3, pad 1) -> y. `between`: "" (A feeds B), "Relu" or "Clip".
Model conv_then_depthwise(const std::vector<float>& gains, const std::string& between, int64_t mult = 1) {
  const int64_t c = static_cast<int64_t>(gains.size());
  Model m;
  m.opsets = {{"", 13}};
  m.graph.inputs.push_back({"x", DType::kFloat32, {-1, 3, 8, 8}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  Tensor wa = random_tensor({c, 3, 3, 3}, 31), ba = random_tensor({c}, 32, 0.2f);
  for (int64_t i = 0; i < wa.numel(); ++i) wa.data<float>()[i] *= gains[static_cast<size_t>(i / 27)];
  for (int64_t i = 0; i < c; ++i) ba.data<float>()[i] *= gains[static_cast<size_t>(i)];
  m.graph.initializers["wa"] = wa;
  m.graph.initializers["ba"] = ba;
  m.graph.initializers["wb"] = random_tensor({c * mult, 1, 3, 3}, 33);
  m.graph.initializers["bb"] = random_tensor({c * mult}, 34, 0.1f);
  const std::map<std::string, graph::AttrValue> pads = {{"pads", std::vector<int64_t>{1, 1, 1, 1}}};
  auto add = [&](std::string op, std::vector<std::string> in, std::string out, std::map<std::string, graph::AttrValue> a) {
    Node n;
    n.op_type = std::move(op), n.name = out, n.inputs = std::move(in), n.outputs = {out}, n.attrs = std::move(a);
    m.graph.nodes.push_back(n);
  };
  add("Conv", {"x", "wa", "ba"}, "a", pads);
  std::string v = "a";
  if (between == "Relu") add("Relu", {"a"}, v = "r", {});
  if (between == "Clip") {
    m.graph.initializers["lo"] = Tensor::from<float>({}, {0.0f});
    m.graph.initializers["hi"] = Tensor::from<float>({}, {6.0f});
    add("Clip", {"a", "lo", "hi"}, v = "r", {});
  }
  auto pb = pads;
  pb["group"] = c;
  add("Conv", {v, "wb", "bb"}, "y", pb);
  return m;
}

// Per-channel [min, max] of `value` over `data`, with zero included (as the activation ranges).
std::vector<std::pair<float, float>> channel_ranges(const Model& m, const Dataset& data, const std::string& value) {
  std::vector<std::pair<float, float>> r;
  runtime::Executor(m).run({{"x", data.images}}, [&](const std::string& name, const Tensor& t) {
    if (name != value) return;
    const int64_t ch = t.dim(1), inner = t.numel() / (t.dim(0) * ch);
    r.assign(static_cast<size_t>(ch), {0.0f, 0.0f});
    for (int64_t n = 0; n < t.dim(0); ++n)
      for (int64_t c = 0; c < ch; ++c)
        for (int64_t k = 0; k < inner; ++k) {
          const float x = t.data<float>()[(n * ch + c) * inner + k];
          r[static_cast<size_t>(c)].first = std::min(r[static_cast<size_t>(c)].first, x);
          r[static_cast<size_t>(c)].second = std::max(r[static_cast<size_t>(c)].second, x);
        }
  });
  return r;
}

// Conv -> depthwise Conv with channel ranges 100x apart: each channel of the depthwise input is stretched over the
// range the input already spans, the function is unchanged, and the per-channel W8A8 model's output error falls.
TEST(PtqEqualize, DepthwiseInputsStretchedOverTheirRange) {
  const std::vector<float> gains = {1.0f, 0.02f, 0.1f, 3.0f, 0.05f};  // 150x apart: below kMaxDepthwiseGain
  const Dataset data = random_data({16, 3, 8, 8}, 35);
  for (const std::string between : {"", "Relu"})
    for (int64_t mult : {1, 2}) {
      SCOPED_TRACE("between '" + between + "', channel multiplier " + std::to_string(mult));
      const Model m = conv_then_depthwise(gains, between, mult);
      const std::string v = between.empty() ? "a" : "r";
      Model eq = m;
      ptq::EqualizeReport rep;
      ASSERT_EQ(ptq::equalize_depthwise_inputs(eq, data, 5, false, {}, rep), 1);
      EXPECT_EQ(rep.depthwise_pairs, 1);
      const Tensor before = runtime::Executor(m).run1(data.images), after = runtime::Executor(eq).run1(data.images);
      EXPECT_LE(test::max_rel_diff(after, before), 1e-5);
      const auto r0 = channel_ranges(m, data, v), r1 = channel_ranges(eq, data, v);
      float lo = 0, hi = 0;
      for (const auto& [l, h] : r0) lo = std::min(lo, l), hi = std::max(hi, h);
      double gain_max = 1;
      for (size_t c = 0; c < r1.size(); ++c) {
        // Reaches an end of [lo, hi] (float rounding aside) and stays inside it.
        const bool at_end = r1[c].second >= hi * (1 - 1e-5f) || r1[c].first <= lo * (1 - 1e-5f);
        EXPECT_TRUE(at_end) << "channel " << c << ": [" << r1[c].first << ", " << r1[c].second << "] in [" << lo << ", " << hi << "]";
        EXPECT_LE(r1[c].second, hi * (1 + 1e-5f));
        EXPECT_GE(r1[c].first, lo * (1 + 1e-5f));
        gain_max = std::max(gain_max, static_cast<double>(r1[c].second - r1[c].first) / (r0[c].second - r0[c].first));
      }
      EXPECT_NEAR(rep.max_depthwise_gain, gain_max, 1e-3 * gain_max);
      EXPECT_GT(rep.max_depthwise_gain, 20.0);
      // The caller's weights are untouched.
      EXPECT_EQ(m.graph.initializer("wa")->data<float>()[0], conv_then_depthwise(gains, between, mult).graph.initializer("wa")->data<float>()[0]);

      // Per-channel W8A8 through quantize_model, with and without the pass: the worst output channel's SQNR against
      // the float model (each output channel reads one input channel; the small ones had few of its levels).
      auto worst_sqnr_db = [&](bool on) {
        ptq::PtqOptions o = plain_options();
        o.equalize = true;  // no cross-layer pair here (B has groups): only the depthwise pass differs
        o.equalize_depthwise = on;
        const auto res = ptq::quantize_model(m, data, o);
        EXPECT_EQ(res.equalization.depthwise_pairs, on ? 1 : 0);
        const Tensor q = runtime::Executor(res.model).run1(data.images);
        const int64_t ch = q.dim(1), inner = q.numel() / (q.dim(0) * ch);
        std::vector<double> sig(static_cast<size_t>(ch)), err(static_cast<size_t>(ch));
        for (int64_t i = 0; i < q.numel(); ++i) {
          const size_t c = static_cast<size_t>((i / inner) % ch);
          sig[c] += std::pow(before.data<float>()[i], 2.0);
          err[c] += std::pow(q.data<float>()[i] - before.data<float>()[i], 2.0);
        }
        double worst = 1e9;
        for (size_t c = 0; c < sig.size(); ++c) worst = std::min(worst, 10 * std::log10(sig[c] / err[c]));
        return worst;
      };
      const double off_db = worst_sqnr_db(false), on_db = worst_sqnr_db(true);
      EXPECT_GT(on_db, off_db + 20.0) << "without " << off_db << " dB, with " << on_db << " dB";
    }
}

// calibrate() rescales by the global weight granularity only: a per-layer override (what --auto chooses after
// calibrating and --config gives before it) must not change the calibrated model, or a saved configuration would not
// rebuild the model --auto wrote.
TEST(PtqEqualize, DepthwiseInputsIndependentOfPerLayerChoices) {
  const Model m = conv_then_depthwise({1.0f, 0.02f, 0.1f}, "");
  const Dataset data = random_data({8, 3, 8, 8}, 39);
  ptq::PtqOptions o = plain_options();
  o.equalize = true;
  const ptq::Calibration base = ptq::calibrate(m, data, o);
  EXPECT_EQ(base.equalization.depthwise_pairs, 1);
  ptq::WeightOptions pt;
  pt.granularity = quant::Granularity::kPerTensor;
  o.layer_weights["a"] = pt;
  const ptq::Calibration with = ptq::calibrate(m, data, o);
  EXPECT_EQ(with.equalization.depthwise_pairs, 1);
  for (const char* w : {"wa", "ba", "wb"})
    for (int64_t i = 0; i < base.model.graph.initializer(w)->numel(); ++i)
      ASSERT_EQ(base.model.graph.initializer(w)->data<float>()[i], with.model.graph.initializer(w)->data<float>()[i]) << w << " " << i;
  o.layer_weights.clear();
  o.weights.granularity = quant::Granularity::kPerTensor;  // per-tensor everywhere: nothing is rescaled
  EXPECT_EQ(ptq::calibrate(m, data, o).equalization.depthwise_pairs, 0);
}

// Where the scaling would not be exact, or would change the weights' quantization, nothing is rescaled.
TEST(PtqEqualize, DepthwiseInputsLeftAloneWhereScalingIsNotFree) {
  const std::vector<float> gains = {1.0f, 0.01f, 0.1f};
  const Dataset data = random_data({4, 3, 8, 8}, 36);
  auto pairs = [&](Model m, bool per_tensor, std::set<std::string> pt_nodes = {}) {
    ptq::EqualizeReport rep;
    const Model before = m;
    const int n = ptq::equalize_depthwise_inputs(m, data, 4, per_tensor, pt_nodes, rep);
    EXPECT_EQ(rep.depthwise_pairs, n);
    if (n == 0) {
      for (const auto& [name, t] : before.graph.initializers)
        EXPECT_EQ(t.data<float>()[0], m.graph.initializer(name)->data<float>()[0]) << name;
    }
    return n;
  };
  EXPECT_EQ(pairs(conv_then_depthwise(gains, ""), false), 1);
  EXPECT_EQ(pairs(conv_then_depthwise(gains, "Clip"), false), 0);  // Clip(0, 6): its threshold does not scale
  EXPECT_EQ(pairs(conv_then_depthwise(gains, ""), true), 0);       // per-tensor weights
  EXPECT_EQ(pairs(conv_then_depthwise(gains, ""), false, {"y"}), 0);  // B per-tensor (a selective configuration)
  EXPECT_EQ(pairs(conv_then_depthwise(gains, ""), false, {"a"}), 0);  // A per-tensor
  {
    Model m = conv_then_depthwise(gains, "");  // A's output read twice
    m.graph.outputs.push_back({"a", DType::kFloat32, {}, {}, false});
    EXPECT_EQ(pairs(m, false), 0);
  }
  {
    Model m = conv_then_depthwise(gains, "");  // B dense: its input channels share each output channel's scale
    m.graph.initializers["wb"] = random_tensor({3, 3, 3, 3}, 37);
    m.graph.initializers["bb"] = random_tensor({3}, 38);
    m.graph.nodes[1].attrs.erase("group");
    EXPECT_EQ(pairs(m, false), 0);
  }
}

// Bias correction removes the mean output shift caused by weight rounding (measured with 16-bit
// activations so that weight rounding dominates).
TEST(PtqBias, CorrectionReducesMeanOutputShift) {
  const Shape xs{64, 4, 6, 6};
  const Model m = single_layer("Conv", {8, 4, 3, 3}, {}, xs, true);
  const Dataset data = random_data(xs, 21, 0.0f, 1.0f);  // positive inputs: rounding errors do not average out
  auto o = plain_options();
  o.weights.bits = 4;
  o.activations.bits = 16;
  const Tensor ref = runtime::Executor(m).run1(data.images);
  auto mean_shift = [&](bool correct) {
    o.bias_correction = correct;
    const Tensor y = runtime::Executor(ptq::quantize_model(m, data, o).model).run1(data.images);
    EXPECT_EQ(y.shape(), (Shape{64, 8, 4, 4}));
    const int64_t per = 4 * 4;  // 3x3 valid conv of 6x6
    double worst = 0;
    for (int64_t c = 0; c < 8; ++c) {
      double s = 0;
      for (int64_t n = 0; n < 64; ++n)
        for (int64_t k = 0; k < per; ++k) {
          const int64_t i = (n * 8 + c) * per + k;
          s += y.data<float>()[i] - ref.data<float>()[i];
        }
      worst = std::max(worst, std::fabs(s / (64.0 * per)));
    }
    return worst;
  };
  const double without = mean_shift(false), with = mean_shift(true);
  EXPECT_LT(with, without / 5) << "without " << without << ", with " << with;
}

// A weight layer left float (--float-nodes) between a per-tensor DequantizeLinear and a QuantizeLinear is
// rewritten by ONNX Runtime (WeightBiasQuantization, graph optimization level basic and up) to symmetric
// per-tensor int8 weights: measured on PaddleOCR rec (docs/ACCURACY.md, "float layers in ONNX Runtime").
// perch reports such layers. The conditions, on hand-built graphs: DQ -> Conv -> [Relu|Clip]* -> Q only.
TEST(PtqFloatLayers, OrtRequantizationPatternOnHandBuiltGraphs) {
  auto build = [](const std::vector<std::string>& after_conv, bool branch, bool per_channel_input) {
    graph::Graph g;
    g.initializers["s"] = per_channel_input ? random_tensor({2}, 3) : Tensor::scalar_f32(0.1f);
    g.initializers["w"] = random_tensor({2, 2, 1, 1}, 4);
    g.initializers["b"] = random_tensor({2}, 5);
    g.initializers["k"] = Tensor::scalar_f32(2.0f);
    auto add = [&](std::string op, std::vector<std::string> in, std::string out) {
      Node n;
      n.op_type = std::move(op);
      n.name = out + "_node";
      n.inputs = std::move(in);
      n.outputs = {std::move(out)};
      g.nodes.push_back(n);
    };
    add("DequantizeLinear", {"xq", "s"}, "x");
    add("Conv", {"x", "w", "b"}, "c");
    std::string v = "c";
    for (const auto& op : after_conv) {
      add(op, op == "Mul" ? std::vector<std::string>{v, "k"} : std::vector<std::string>{v}, v + "_" + op);
      v += "_" + op;
    }
    add("QuantizeLinear", {v, "k"}, "yq");
    if (branch) add("Relu", {"c"}, "other");
    return g;
  };
  EXPECT_TRUE(ptq::ort_requantizes_float_weight(build({}, false, false), 1));
  EXPECT_TRUE(ptq::ort_requantizes_float_weight(build({"Relu", "Clip"}, false, false), 1));
  EXPECT_FALSE(ptq::ort_requantizes_float_weight(build({"Mul"}, false, false), 1)) << "Mul ends the path";
  EXPECT_FALSE(ptq::ort_requantizes_float_weight(build({}, true, false), 1)) << "a branching output";
  EXPECT_FALSE(ptq::ort_requantizes_float_weight(build({}, false, true), 1)) << "per-channel input scale";
  graph::Graph quantized_weight = build({}, false, false);
  quantized_weight.initializers["w"] = Tensor(DType::kInt8, {2, 2, 1, 1});
  EXPECT_FALSE(ptq::ort_requantizes_float_weight(quantized_weight, 1)) << "not a float weight";
  EXPECT_FALSE(ptq::ort_requantizes_float_weight(build({}, false, false), 0)) << "not a weight layer";
}

// quantize_model marks exactly those float layers: in tiny_cnn the first Conv reads the quantized input
// and feeds the quantized Relu output (marked); the Gemm writes the float graph output (not marked); and
// quantized layers are never marked.
TEST(PtqFloatLayers, ReportMarksFloatLayersOrtWouldQuantize) {
  const Model m = test::tiny_cnn(3);
  ptq::PtqOptions o = plain_options();
  o.float_nodes = {"Conv_c1", "Gemm_y"};
  const auto res = ptq::quantize_model(m, random_data({16, 1, 8, 8}, 8), o);
  std::map<std::string, const ptq::LayerReport*> rep;
  for (const auto& l : res.layers) rep[l.node] = &l;
  ASSERT_TRUE(rep.count("Conv_c1") && rep.count("Conv_c2") && rep.count("Gemm_y"));
  EXPECT_EQ(rep["Conv_c1"]->granularity, "float");
  EXPECT_TRUE(rep["Conv_c1"]->ort_requantized);
  EXPECT_EQ(rep["Gemm_y"]->granularity, "float");
  EXPECT_FALSE(rep["Gemm_y"]->ort_requantized);
  EXPECT_FALSE(rep["Conv_c2"]->ort_requantized);
}

}  // namespace
