// PTQ on the patterns of PaddleOCR's exported models (opset 9/11): dynamic reshapes computed from Shape
// (int64 values through Slice/Cast/Concat), Slice with attributes, Softmax with pre-13 axis semantics,
// LayerNorm written as ReduceMean/Sub/Pow/Sqrt/Div around a MatMul with an initializer B, Resize-11, and
// a per-tensor model that stays below opset 11.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>

#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "test_util.h"

using namespace perch;
using graph::Model;
using graph::Node;

namespace {

Dataset uniform_data(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Dataset d;
  d.images = Tensor(DType::kFloat32, shape);
  for (auto& v : d.images.span<float>()) v = u(rng);
  d.name = "uniform";
  return d;
}

Tensor normal_tensor(const Shape& s, uint32_t seed, float scale = 0.5f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  Tensor t(DType::kFloat32, s);
  for (auto& v : t.span<float>()) v = nd(rng);
  return t;
}

Node make(const std::string& op, const std::string& name, std::vector<std::string> in, std::vector<std::string> out) {
  Node n;
  n.op_type = op;
  n.name = name;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

// x [N,3,4,4] -> Conv(4 out, 1x1) -> c; the model author appends the rest.
Model conv_model(int64_t opset) {
  Model m;
  m.opsets = {{"", opset}};
  m.graph.inputs.push_back({"x", DType::kFloat32, {-1, 3, 4, 4}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  m.graph.initializers["w"] = normal_tensor({4, 3, 1, 1}, 1);
  m.graph.initializers["b"] = normal_tensor({4}, 2, 0.1f);
  m.graph.nodes.push_back(make("Conv", "conv", {"x", "w", "b"}, {"c"}));
  return m;
}

ptq::PtqOptions plain() {
  ptq::PtqOptions o;
  o.equalize = false;
  o.bias_correction = false;
  return o;
}

int count_op(const Model& m, const std::string& op) {
  int c = 0;
  for (const auto& n : m.graph.nodes) c += n.op_type == op;
  return c;
}

}  // namespace

// Shape -> Slice(attrs, opset 9) -> Cast(int64) -> Concat -> Reshape: the int64 values are not quantized
// (calibration used to fail on them), the Slice is converted to its opset-10 input form, and the model
// computes the float function up to quantization error.
TEST(PtqOcrPatterns, DynamicReshapeFromShapeIsNotQuantized) {
  Model m = conv_model(9);
  Node slice = make("Slice", "slice", {"s"}, {"s2"});
  slice.attrs["starts"] = std::vector<int64_t>{0};
  slice.attrs["ends"] = std::vector<int64_t>{1};
  slice.attrs["axes"] = std::vector<int64_t>{0};
  Node cast = make("Cast", "cast", {"s2"}, {"s3"});
  cast.attrs["to"] = int64_t{7};
  m.graph.initializers["minus1"] = Tensor::from<int64_t>({1}, {-1});
  Node concat = make("Concat", "concat", {"s3", "minus1"}, {"shape"});
  concat.attrs["axis"] = int64_t{0};
  m.graph.nodes.push_back(make("Shape", "shape_of", {"c"}, {"s"}));
  m.graph.nodes.push_back(slice);
  m.graph.nodes.push_back(cast);
  m.graph.nodes.push_back(concat);
  m.graph.nodes.push_back(make("Reshape", "reshape", {"c", "shape"}, {"r"}));
  m.graph.nodes.push_back(make("Sigmoid", "sigmoid", {"r"}, {"y"}));
  const Dataset data = uniform_data({3, 3, 4, 4}, 3);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  for (const auto& n : res.model.graph.nodes) {
    if (n.op_type == "QuantizeLinear") {
      for (const char* v : {"s", "s2", "s3", "shape"}) EXPECT_NE(n.inputs[0], v) << "int64 value quantized";
    }
    if (n.op_type == "Slice") {
      EXPECT_FALSE(n.has_attr("starts"));
      EXPECT_EQ(n.inputs.size(), 4u);
    }
  }
  const Tensor got = runtime::Executor(res.model).run1(data.images);
  EXPECT_EQ(got.shape(), (Shape{3, 64}));
  EXPECT_LT(test::max_rel_diff(got, want), 0.05);
}

// Softmax before 13 coerces its input to 2-D at `axis`. Axis 1 of a 4-D input is a softmax over C*H*W:
// raising the opset must keep that (Flatten -> Softmax -> Reshape), not turn it into a channel softmax.
TEST(PtqOcrPatterns, PreOpset13SoftmaxKeepsItsCoercingSemantics) {
  Model m = conv_model(9);
  Node sm = make("Softmax", "softmax", {"c"}, {"y"});
  sm.attrs["axis"] = int64_t{1};
  m.graph.nodes.push_back(sm);
  const Dataset data = uniform_data({2, 3, 4, 4}, 4);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  EXPECT_EQ(count_op(res.model, "Flatten"), 1);
  const Tensor got = runtime::Executor(res.model).run1(data.images);
  ASSERT_EQ(got.shape(), (Shape{2, 4, 4, 4}));
  for (int64_t n = 0; n < 2; ++n) {
    double sum = 0;
    for (int64_t i = 0; i < 64; ++i) sum += got.data<float>()[n * 64 + i];
    EXPECT_NEAR(sum, 1.0, 1e-4) << "softmax over C*H*W of image " << n;
  }
  EXPECT_LT(test::max_rel_diff(got, want), 0.05);
}

// A softmax on the last axis (SVTR's attention: axis 3 of 4-D, declared here as -1) stays one Softmax.
TEST(PtqOcrPatterns, LastAxisSoftmaxStaysOneNode) {
  Model m = conv_model(9);
  Node sm = make("Softmax", "softmax", {"c"}, {"y"});
  sm.attrs["axis"] = int64_t{-1};
  m.graph.nodes.push_back(sm);
  const Dataset data = uniform_data({2, 3, 4, 4}, 5);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(count_op(res.model, "Flatten"), 0);
  EXPECT_EQ(count_op(res.model, "Softmax"), 1);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
}

// SVTR's layer norm: ReduceMean(axes attr) / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add, then a
// MatMul with an initializer B (per-channel along its last axis), at opset 9 raised to 13.
TEST(PtqOcrPatterns, LayerNormPiecesAndMatMulWithInitializerB) {
  Model m;
  m.opsets = {{"", 9}};
  m.graph.inputs.push_back({"x", DType::kFloat32, {-1, 5, 8}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  auto& init = m.graph.initializers;
  init["two"] = Tensor::scalar_f32(2.0f);
  init["eps"] = Tensor::scalar_f32(1e-5f);
  init["gamma"] = normal_tensor({8}, 6, 1.0f);
  init["beta"] = normal_tensor({8}, 7, 0.2f);
  init["B"] = normal_tensor({8, 6}, 8);
  init["bias"] = normal_tensor({6}, 9, 0.1f);
  Node mean = make("ReduceMean", "mean", {"x"}, {"mu"});
  mean.attrs["axes"] = std::vector<int64_t>{-1};
  Node var = make("ReduceMean", "var", {"sq"}, {"v"});
  var.attrs["axes"] = std::vector<int64_t>{-1};
  m.graph.nodes = {mean,
                   make("Sub", "sub", {"x", "mu"}, {"d"}),
                   make("Pow", "pow", {"d", "two"}, {"sq"}),
                   var,
                   make("Add", "add_eps", {"v", "eps"}, {"ve"}),
                   make("Sqrt", "sqrt", {"ve"}, {"sd"}),
                   make("Div", "div", {"d", "sd"}, {"n"}),
                   make("Mul", "scale", {"n", "gamma"}, {"ng"}),
                   make("Add", "shift", {"ng", "beta"}, {"ln"}),
                   make("MatMul", "fc", {"ln", "B"}, {"mm"}),
                   make("Add", "fc_bias", {"mm", "bias"}, {"y"})};
  const Dataset data = uniform_data({4, 5, 8}, 10);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  ASSERT_EQ(res.layers.size(), 1u);
  EXPECT_EQ(res.layers[0].granularity, "per-channel");
  EXPECT_EQ(res.layers[0].axis, 1);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
}

// DBNet's neck: Resize-11 (nearest, asymmetric, scales input) survives the raise to 13; the
// tf_half_pixel_for_nn mode, gone in 13, is refused by name.
TEST(PtqOcrPatterns, Resize11IsRaisedTfHalfPixelForNnRefused) {
  for (const std::string mode : {"asymmetric", "tf_half_pixel_for_nn"}) {
    Model m = conv_model(11);
    m.graph.initializers["roi"] = Tensor(DType::kFloat32, {0});
    m.graph.initializers["scales"] = Tensor::from<float>({4}, {1, 1, 2, 2});
    Node rs = make("Resize", "resize", {"c", "roi", "scales"}, {"y"});
    rs.attrs["mode"] = std::string("nearest");
    rs.attrs["coordinate_transformation_mode"] = mode;
    rs.attrs["nearest_mode"] = std::string("floor");
    m.graph.nodes.push_back(rs);
    const Dataset data = uniform_data({2, 3, 4, 4}, 11);
    if (mode == "asymmetric") {
      const Tensor want = runtime::Executor(m).run1(data.images);
      const auto res = ptq::quantize_model(m, data, plain());
      EXPECT_EQ(res.model.opset(), 13);
      EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
    } else {
      try {
        ptq::quantize_model(m, data, plain());
        FAIL() << "expected an error";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tf_half_pixel_for_nn"), std::string::npos) << e.what();
      }
    }
  }
}

// Per-tensor weights need no axis: an opset-9 model goes to 10 only, and its Clip keeps the attribute
// form of Clip-6 (ONNX Runtime rejects Clip-6 with min/max inputs).
TEST(PtqOcrPatterns, PerTensorStaysBelow11WithAttributeClip) {
  Model m = conv_model(9);
  Node clip = make("Clip", "clip", {"c"}, {"y"});
  clip.attrs["min"] = 0.0f;
  clip.attrs["max"] = 6.0f;
  m.graph.nodes.push_back(clip);
  auto opt = plain();
  opt.weights.granularity = quant::Granularity::kPerTensor;
  const auto res = ptq::quantize_model(m, uniform_data({2, 3, 4, 4}, 12), opt);
  EXPECT_EQ(res.model.opset(), 10);
  for (const auto& n : res.model.graph.nodes)
    if (n.op_type == "Clip") {
      EXPECT_EQ(n.inputs.size(), 1u);
      EXPECT_TRUE(n.has_attr("min"));
    }
}

// PP-LCNetV3's conv block: Conv -> Mul(scalar) -> Add(scalar) (PaddlePaddle's LearnableAffineBlock) ->
// hardswish written out -> Mul(scalar) -> Add(scalar) -> Conv. The first scale/shift folds into the conv
// (graph::fold_conv_affine); the hardswish and the scale/shift after it are one elementwise chain of the conv
// output, so only the chain's input (the conv output) and its end (the next conv's input) get Q/DQ. Each
// hardswish spelling is checked: x*Clip(x+3,0,6)/6, x*(Clip(x+3,0,6)*(1/6)), Clip(x+3,0,6)*x*(1/6), and
// x*HardSigmoid(x). The model computes the float function up to quantization error, and perch's integer
// executor runs it bit-identically to its exact simulation.
namespace {

Model lcnet_block(int variant) {
  Model m = conv_model(11);
  auto scalar = [&](const std::string& name, float v) { m.graph.initializers[name] = Tensor::from<float>({1}, {v}); };
  scalar("s1", 4.0f);  // conv outputs well below -3, where hardswish is 0
  scalar("t1", -0.2f), scalar("three", 3.0f), scalar("zero", 0.0f), scalar("six", 6.0f);
  scalar("sixth", 1.0f / 6.0f), scalar("s2", 0.8f), scalar("t2", 0.1f);
  auto& n = m.graph.nodes;
  n.push_back(make("Mul", "lab1_mul", {"c", "s1"}, {"a1"}));
  n.push_back(make("Add", "lab1_add", {"a1", "t1"}, {"hx"}));  // the hardswish input ("x" of the formula)
  if (variant == 3) {
    Node hs = make("HardSigmoid", "hsig", {"hx"}, {"g"});
    hs.attrs["alpha"] = 1.0f / 6.0f;
    hs.attrs["beta"] = 0.5f;
    n.push_back(hs);
    n.push_back(make("Mul", "hswish", {"hx", "g"}, {"h"}));
  } else {
    n.push_back(make("Add", "plus3", {"hx", "three"}, {"p"}));
    n.push_back(make("Clip", "relu6", {"p", "zero", "six"}, {"r6"}));
    if (variant == 0) {
      n.push_back(make("Mul", "xr6", {"hx", "r6"}, {"xr"}));
      n.push_back(make("Div", "div6", {"xr", "six"}, {"h"}));
    } else if (variant == 1) {
      n.push_back(make("Mul", "r6_sixth", {"r6", "sixth"}, {"gs"}));
      n.push_back(make("Mul", "hswish", {"hx", "gs"}, {"h"}));
    } else {
      n.push_back(make("Mul", "r6x", {"r6", "hx"}, {"xr"}));
      n.push_back(make("Mul", "sixth_mul", {"xr", "sixth"}, {"h"}));
    }
  }
  n.push_back(make("Mul", "lab2_mul", {"h", "s2"}, {"a2"}));
  n.push_back(make("Add", "lab2_add", {"a2", "t2"}, {"z"}));
  m.graph.initializers["w2"] = normal_tensor({2, 4, 1, 1}, 5);
  n.push_back(make("Conv", "conv2", {"z", "w2"}, {"y"}));
  return m;
}

}  // namespace

TEST(PtqOcrPatterns, HardswishChainQuantizedAtItsEndsOnly) {
  const Dataset data = uniform_data({8, 3, 4, 4}, 11);
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE("hardswish variant " + std::to_string(variant));
    const Model m = lcnet_block(variant);
    const Tensor want = runtime::Executor(m).run1(data.images);

    ptq::PtqOptions o = plain();
    const ptq::Calibration cal = ptq::calibrate(m, data, o);
    EXPECT_EQ(count_op(cal.model, "Conv"), 2);
    EXPECT_EQ(count_op(cal.model, "Mul") + count_op(cal.model, "Add") + count_op(cal.model, "Div"),
              variant == 3 ? 3 : 5) << "lab1_mul/lab1_add folded into the conv, the rest kept";
    // The graph input, the conv output (now named "hx": the conv took over lab1_add's output) and the chain's end.
    EXPECT_EQ(cal.targets, (std::vector<std::string>{"x", "hx", "z"}));
    // hardswish is 0 below -3: the conv output's grid starts there (calibration clamps what it observes), not
    // at the smallest value seen. lo = (qmin - zp) * scale, within one step of -3 (the zero point is rounded).
    const auto lo = [](const quant::QuantParams& q) { return -q.zero_point[0] * q.scale[0]; };
    const quant::QuantParams& hx = cal.activation_params.at("hx");
    EXPECT_NEAR(lo(hx), -3.0, hx.scale[0]);

    // Without the chain rule: every value read by an elementwise op, as before (Add+3 -> Clip stays fused), and
    // the conv output's grid spans all it saw.
    o.fuse_chains = false;
    const ptq::Calibration all = ptq::calibrate(m, data, o);
    EXPECT_EQ(all.targets.size(), variant == 3 ? 6u : 7u);
    EXPECT_LT(lo(all.activation_params.at("hx")), -4.0);
    o.fold_affine = false;  // and the conv output and lab1_mul's output too
    EXPECT_EQ(ptq::calibrate(m, data, o).targets.size(), variant == 3 ? 8u : 9u);

    const ptq::PtqResult res = ptq::build_quantized(cal, plain());
    EXPECT_EQ(count_op(res.model, "QuantizeLinear"), 3);
    const Tensor got = runtime::Executor(res.model).run1(data.images);
    EXPECT_LT(test::max_rel_diff(got, want), 0.05);
    // The integer executor runs the chain as one 256-entry table of the simulation's result: every node integer.
    const runtime::Int8Executor ex(res.model);
    EXPECT_EQ(ex.report().float_nodes(), 0) << ex.report().summary();
    const Tensor i8 = ex.run({{"x", data.images}}).at("y");
    const Tensor sim = runtime::Int8Executor(res.model, runtime::Int8Mode::kSimulate).run({{"x", data.images}}).at("y");
    ASSERT_EQ(i8.shape(), sim.shape());
    EXPECT_EQ(std::memcmp(i8.raw(), sim.raw(), i8.nbytes()), 0) << "int8 executor differs from its simulation";
  }
}

// A chain with a per-channel constant is no single function of its input: it ends there (Q/DQ as before).
TEST(PtqOcrPatterns, ChainEndsAtPerChannelConstant) {
  Model m = conv_model(13);
  m.graph.initializers["k"] = Tensor::from<float>({4, 1, 1}, {0.5f, 1.0f, 1.5f, 2.0f});
  m.graph.initializers["zero"] = Tensor::from<float>({}, {0.0f});
  m.graph.initializers["w2"] = normal_tensor({2, 4, 1, 1}, 6);
  m.graph.nodes.push_back(make("Relu", "relu", {"c"}, {"r"}));
  m.graph.nodes.push_back(make("Mul", "mul", {"r", "k"}, {"s"}));      // per-channel: a new root
  m.graph.nodes.push_back(make("Add", "add", {"s", "zero"}, {"t"}));   // scalar: chain of root s
  m.graph.nodes.push_back(make("Sigmoid", "sig", {"t"}, {"u"}));       // chain of root s
  m.graph.nodes.push_back(make("Conv", "conv2", {"u", "w2"}, {"y"}));
  const ptq::Calibration cal = ptq::calibrate(m, uniform_data({4, 3, 4, 4}, 2), plain());
  // c: fused into Relu (not a target); r read by the per-channel Mul; s the new root; t inside; u the end.
  EXPECT_EQ(cal.targets, (std::vector<std::string>{"x", "r", "s", "u"}));
}

namespace {

// x [N, 6, 16] -> layer norm over the last axis (variant 0: d^2 as Pow; 1: as Mul(d, d); 2: RMS norm, no mean;
// 3: no affine after it) -> "ln" -> MatMul with an initializer B -> "y".
Model norm_model(int variant) {
  Model m;
  m.opsets = {{"", 13}};
  m.graph.inputs.push_back({"x", DType::kFloat32, {-1, 6, 16}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  auto& init = m.graph.initializers;
  init["two"] = Tensor::scalar_f32(2.0f);
  init["eps"] = Tensor::scalar_f32(1e-6f);
  init["gamma"] = normal_tensor({16}, 16, 1.0f);
  init["beta"] = normal_tensor({16}, 17, 0.2f);
  init["B"] = normal_tensor({16, 8}, 18);
  auto reduce = [](const std::string& name, const std::string& in, const std::string& out) {
    Node n = make("ReduceMean", name, {in}, {out});
    n.attrs["axes"] = std::vector<int64_t>{-1};
    return n;
  };
  std::string d = "x";
  if (variant != 2) {
    m.graph.nodes.push_back(reduce("mean", "x", "mu"));
    m.graph.nodes.push_back(make("Sub", "sub", {"x", "mu"}, {"d"}));
    d = "d";
  }
  m.graph.nodes.push_back(variant == 1 ? make("Mul", "square", {d, d}, {"sq"}) : make("Pow", "square", {d, "two"}, {"sq"}));
  m.graph.nodes.push_back(reduce("var", "sq", "v"));
  m.graph.nodes.push_back(make("Add", "add_eps", {"v", "eps"}, {"ve"}));
  m.graph.nodes.push_back(make("Sqrt", "sqrt", {"ve"}, {"sd"}));
  m.graph.nodes.push_back(make("Div", "div", {d, "sd"}, {variant == 3 ? "ln" : "n"}));
  if (variant != 3) {
    m.graph.nodes.push_back(make("Mul", "scale", {"n", "gamma"}, {"ng"}));
    m.graph.nodes.push_back(make("Add", "shift", {"ng", "beta"}, {"ln"}));
  }
  m.graph.nodes.push_back(make("MatMul", "fc", {"ln", "B"}, {"y"}));
  return m;
}

// Rows of very different spread (as a recognizer's feature rows over text and over the blank padding): row r is
// mean_r + s_r * u, u uniform in [-1, 1], s_r from 0.3 to 4 (variances s^2 / 3 from 0.03 to 5.3), mean_r in
// [-0.5, 0.5].
Dataset spread_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Dataset d;
  d.images = Tensor(DType::kFloat32, {n, 6, 16});
  float* p = d.images.data<float>();
  for (int64_t r = 0; r < n * 6; ++r) {
    const float s = 0.3f * std::pow(13.0f, static_cast<float>(r % 6) / 5.0f), mean = 0.5f * u(rng);
    for (int64_t k = 0; k < 16; ++k) p[r * 16 + k] = mean + s * u(rng);
  }
  d.name = "spread rows";
  return d;
}

// The worst row's relative RMS error of `got` against `want` (rows of the last axis).
double worst_row_error(const Tensor& got, const Tensor& want) {
  const int64_t k = want.dim(want.rank() - 1), rows = want.numel() / k;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double e = 0, s = 0;
    for (int64_t j = 0; j < k; ++j) {
      const double w = want.data<float>()[r * k + j], g = got.data<float>()[r * k + j];
      e += (g - w) * (g - w);
      s += w * w;
    }
    worst = std::max(worst, std::sqrt(e / s));
  }
  return worst;
}


// Raising the opset keeps what RoiAlign-10 (no coordinate mode: output_half_pixel; 16's default is half_pixel) and
// GridSample-16 (bilinear/bicubic, renamed linear/cubic in 20) compute.
TEST(PtqOcrPatterns, RaisedRoiAlignAndGridSampleComputeTheSame) {
  for (const char* op : {"RoiAlign", "GridSample"}) {
    SCOPED_TRACE(op);
    const bool roi = std::string(op) == "RoiAlign";
    Model m;
    m.source = "raise_sampling";
    m.set_opset(roi ? 10 : 16);
    m.graph.inputs.push_back({"x", DType::kFloat32, {2, 3, 6, 7}, {}, true});
    m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
    Node n = make(op, "s", {"x"}, {"y"});
    if (roi) {
      m.graph.initializers["rois"] = Tensor::from<float>({2, 4}, {0.5f, 1, 5, 4.5f, 1, 0, 6, 5});
      m.graph.initializers["bi"] = Tensor::from<int64_t>({2}, {1, 0});
      n.inputs = {"x", "rois", "bi"};
      n.attrs["output_height"] = int64_t{2};
      n.attrs["output_width"] = int64_t{3};
    } else {
      m.graph.initializers["grid"] = normal_tensor({2, 3, 4, 2}, 5);
      n.inputs = {"x", "grid"};
      n.attrs["mode"] = std::string("bicubic");
    }
    m.graph.nodes.push_back(n);
    const Tensor x = uniform_data({2, 3, 6, 7}, 6).images;
    const Tensor want = runtime::Executor(m).run1(x);
    Model raised = m;
    ptq::raise_opset(raised, 21);
    EXPECT_TRUE(test::same_bits(runtime::Executor(raised).run1(x), want));
  }
}

// Scatter (replaced by ScatterElements at 11) and DFT (axis an attribute before 20, an input from 20) keep what they
// compute when the opset is raised.
TEST(PtqOcrPatterns, RaisedScatterAndDftComputeTheSame) {
  for (const char* op : {"Scatter", "DFT"}) {
    SCOPED_TRACE(op);
    const bool dft = std::string(op) == "DFT";
    Model m;
    m.source = "raise_scatter_dft";
    m.set_opset(dft ? 17 : 9);
    m.graph.inputs.push_back({"x", DType::kFloat32, {3, 5, 4, 1}, {}, true});
    m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
    Node n = make(op, "s", {"x"}, {"y"});
    if (dft) {
      n.attrs["axis"] = int64_t{1};  // opset 20's default would be −2
    } else {
      m.graph.initializers["idx"] = Tensor::from<int64_t>({1, 2, 1, 1}, {4, 1});
      m.graph.initializers["upd"] = Tensor::from<float>({1, 2, 1, 1}, {7.0f, -3.0f});
      n.inputs = {"x", "idx", "upd"};
      n.attrs["axis"] = int64_t{1};
    }
    m.graph.nodes.push_back(n);
    const Tensor x = uniform_data({3, 5, 4, 1}, 7).images;
    const Tensor want = runtime::Executor(m).run1(x);
    Model raised = m;
    ptq::raise_opset(raised, 21);
    EXPECT_EQ(raised.graph.nodes[0].op_type, dft ? "DFT" : "ScatterElements");
    EXPECT_TRUE(test::same_bits(runtime::Executor(raised).run1(x), want));
  }
}

// An If of an opset-11 model whose branch squeezes with the `axes` attribute: raised to 13, the branch's Squeeze
// takes axes as an input (the values the branch reads from outside stay bound), and the model computes the same.
TEST(PtqOcrPatterns, RaisingConvertsTheNodesOfSubgraphs) {
  Model m;
  m.source = "raise_if";
  m.set_opset(11);
  m.graph.inputs.push_back({"x", DType::kFloat32, {2, 1, 3}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  m.graph.initializers["zero"] = Tensor::from<float>({}, {0.0f});
  m.graph.nodes.push_back(make("ReduceSum", "sum", {"x"}, {"s"}));
  m.graph.nodes.back().attrs["keepdims"] = int64_t{0};
  m.graph.nodes.push_back(make("Greater", "gt", {"s", "zero"}, {"cond"}));
  auto branch = [](const std::string& op) {
    auto g = std::make_shared<graph::Graph>();
    g->name = op;
    Node sq = make("Squeeze", op + "_squeeze", {"x"}, {op + "_sq"});
    sq.attrs["axes"] = std::vector<int64_t>{1};
    g->nodes.push_back(sq);
    g->nodes.push_back(make(op, op + "_op", {op + "_sq"}, {op + "_out"}));
    g->outputs.push_back({op + "_out", DType::kFloat32, {}, {}, false});
    return g;
  };
  Node iff = make("If", "branch", {"cond", "x"}, {"y"});
  iff.captured = {"x"};
  iff.attrs["then_branch"] = graph::GraphRef(branch("Relu"));
  iff.attrs["else_branch"] = graph::GraphRef(branch("Neg"));
  m.graph.nodes.push_back(iff);
  Model raised = m;
  ptq::raise_opset(raised, 13);
  for (const char* key : {"then_branch", "else_branch"}) {
    const Node& sq = raised.graph.nodes.back().attr_graph(key)->nodes[0];
    EXPECT_FALSE(sq.has_attr("axes")) << key;
    EXPECT_EQ(sq.inputs.size(), 2u) << key;
  }
  EXPECT_EQ(m.graph.nodes.back().attr_graph("then_branch")->nodes[0].inputs.size(), 1u);  // the original is untouched
  for (float sign : {1.0f, -1.0f}) {
    const Tensor x = Tensor::from<float>({2, 1, 3}, {sign, 2 * sign, -0.5f, 3 * sign, 0.25f, sign});
    const Tensor want = runtime::Executor(m).run1(x);
    EXPECT_TRUE(test::same_bits(runtime::Executor(raised).run1(x), want));
  }
}

// A recurrent layer of an opset-6 export (LSTM/GRU/RNN with `output_sequence`, which opset 7 removed): per-channel
// QDQ raises the model to 13 without the attribute, and the layer computes the same.
TEST(PtqOcrPatterns, Opset6RecurrentLayersLoseOutputSequence) {
  for (const char* op : {"LSTM", "GRU", "RNN"}) {
    SCOPED_TRACE(op);
    const int64_t gates = std::string(op) == "LSTM" ? 4 : std::string(op) == "GRU" ? 3 : 1;
    Model m;
    m.source = "opset6_recurrent";
    m.set_opset(6);
    m.graph.inputs.push_back({"x", DType::kFloat32, {5, -1, 3}, {}, true});
    m.graph.outputs.push_back({"z", DType::kFloat32, {}, {}, false});
    m.graph.initializers["W"] = normal_tensor({1, gates * 4, 3}, 1);
    m.graph.initializers["R"] = normal_tensor({1, gates * 4, 4}, 2);
    m.graph.initializers["B2"] = normal_tensor({4, 2}, 3);
    Node rnn = make(op, "rec", {"x", "W", "R"}, {"y"});
    rnn.attrs["hidden_size"] = int64_t{4};
    rnn.attrs["output_sequence"] = int64_t{1};
    m.graph.nodes.push_back(rnn);
    m.graph.nodes.push_back(make("MatMul", "fc", {"y", "B2"}, {"z"}));
    const Dataset data = uniform_data({5, 6, 3}, 4);
    const Tensor want = runtime::Executor(m).run1(data.images);
    Model raised = m;
    ptq::raise_opset(raised, 13);
    EXPECT_FALSE(raised.graph.nodes[0].has_attr("output_sequence"));
    EXPECT_TRUE(test::same_bits(runtime::Executor(raised).run1(data.images), want));
    const auto res = ptq::quantize_model(m, data, plain());
    EXPECT_EQ(res.model.opset(), 13);
    EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
  }
}

}  // namespace

// A layer norm written out gets Q/DQ on its input and output only: its inner values (the row statistics, the
// centred and normalized rows) would each add a rounding, and the per-tensor grid of the variances gives a row of
// small spread a coarse variance, which scales the whole row. Reference: the float model, per row.
TEST(PtqOcrPatterns, LayerNormQuantizedAtItsEndsOnly) {
  const Dataset calib = spread_rows(16, 21), test = spread_rows(16, 22);
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    const Model m = norm_model(variant);
    const Tensor want = runtime::Executor(m).run1(test.images);
    ptq::PtqOptions o = plain();
    const ptq::Calibration cal = ptq::calibrate(m, calib, o);
    EXPECT_EQ(cal.targets, (std::vector<std::string>{"x", "ln"}));
    // Without the rule, every inner value read as data by an op perch quantizes gets Q/DQ, as before: the mean,
    // the centred rows, the variance, the deviation, the normalized and the scaled rows (rec: 6 per layer norm).
    o.fuse_chains = false;
    const ptq::Calibration all = ptq::calibrate(m, calib, o);
    const std::vector<std::string> every_target =
        variant == 2   ? std::vector<std::string>{"x", "v", "sd", "n", "ng", "ln"}
        : variant == 3 ? std::vector<std::string>{"x", "mu", "d", "v", "sd", "ln"}
                       : std::vector<std::string>{"x", "mu", "d", "v", "sd", "n", "ng", "ln"};
    EXPECT_EQ(all.targets, every_target);

    const ptq::PtqResult ends = ptq::build_quantized(cal, plain());
    const ptq::PtqResult every = ptq::build_quantized(all, plain());
    EXPECT_EQ(count_op(ends.model, "QuantizeLinear"), 2);
    const double e_ends = worst_row_error(runtime::Executor(ends.model).run1(test.images), want);
    const double e_every = worst_row_error(runtime::Executor(every.model).run1(test.images), want);
    // Measured: the worst row 4.5x (variants 0, 1), 5.5x (RMS) and 14x (no affine) better; what is left is mostly
    // the input's own 8-bit grid (0.035 wide) on the rows of least spread.
    EXPECT_LT(e_ends, 0.3 * e_every) << "ends only " << e_ends << ", every value " << e_every;
    // The integer executor runs the normalization in float between the two Q/DQ, as the simulation does.
    const Tensor i8 = runtime::Int8Executor(ends.model).run({{"x", test.images}}).at("y");
    const Tensor sim = runtime::Int8Executor(ends.model, runtime::Int8Mode::kSimulate).run({{"x", test.images}}).at("y");
    ASSERT_EQ(i8.shape(), sim.shape());
    EXPECT_EQ(std::memcmp(i8.raw(), sim.raw(), i8.nbytes()), 0) << "int8 executor differs from its simulation";
  }
}

// An inner value with a reader outside the normalization keeps its Q/DQ; the others still go.
TEST(PtqOcrPatterns, LayerNormInnerValueReadElsewhereKeepsItsQdq) {
  Model m = norm_model(0);
  m.graph.initializers["B2"] = normal_tensor({16, 8}, 19);
  m.graph.outputs.push_back({"z", DType::kFloat32, {}, {}, false});
  m.graph.nodes.push_back(make("MatMul", "fc2", {"d", "B2"}, {"z"}));  // the centred rows, read by another layer
  const ptq::Calibration cal = ptq::calibrate(m, spread_rows(8, 23), plain());
  EXPECT_EQ(cal.targets, (std::vector<std::string>{"x", "d", "ln"}));
}

// PyTorch's early exporters wrote opset 6: per-channel QDQ raises it to 13, dropping the attributes later versions
// removed where their meaning is the default (Gemm's broadcast, BatchNormalization's is_test and spatial) — ONNX
// Runtime refuses a model that keeps them — and refusing, by name, the settings no later version has.
TEST(PtqOcrPatterns, Opset6ExportIsRaisedWithoutItsDroppedAttributes) {
  const Model m = test::opset6_mlp(3);
  const Dataset data = uniform_data({32, 10}, 13);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  for (const auto& n : res.model.graph.nodes)
    for (const char* dropped : {"broadcast", "is_test", "spatial", "consumed_inputs"})
      EXPECT_FALSE(n.has_attr(dropped)) << n.describe() << " keeps " << dropped;
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
  for (const auto& [key, value, why] : {std::tuple{"is_test", int64_t{0}, "training mode"},
                                        std::tuple{"spatial", int64_t{0}, "spatial 0"}}) {
    Model bad = m;
    bad.graph.nodes[1].attrs[key] = value;
    try {
      ptq::quantize_model(bad, data, plain());
      FAIL() << "expected an error for " << key;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(why), std::string::npos) << msg;
      EXPECT_NE(msg.find("BatchNormalization"), std::string::npos) << msg;
    }
  }
}

// Pad and Split of the same era keep their attribute forms below 11 / 13: raised, they become inputs (with Pad's
// non-zero value), Sum broadcasts from 8 on (a superset), and the QDQ model computes the float function.
TEST(PtqOcrPatterns, Opset6PadAndSplitBecomeInputForms) {
  const Model m = test::opset6_convnet(5);
  const Dataset data = uniform_data({16, 3, 8, 8}, 14);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  const graph::Graph& g = res.model.graph;
  int pads = 0, splits = 0;
  for (const auto& n : g.nodes) {
    if (n.op_type == "Pad") {
      ++pads;
      EXPECT_FALSE(n.has_attr("pads") || n.has_attr("value"));
      ASSERT_EQ(n.inputs.size(), 3u);
      EXPECT_EQ(g.initializer(n.inputs[1])->to_i64_vector(), (std::vector<int64_t>{0, 0, 1, 1, 0, 0, 1, 1}));
      EXPECT_EQ(g.initializer(n.inputs[2])->data<float>()[0], 0.25f);
    }
    if (n.op_type == "Split") {
      ++splits;
      EXPECT_FALSE(n.has_attr("split"));
      ASSERT_EQ(n.inputs.size(), 2u);
      EXPECT_EQ(g.initializer(n.inputs[1])->to_i64_vector(), (std::vector<int64_t>{2, 2}));
    }
  }
  EXPECT_EQ(pads, 1);
  EXPECT_EQ(splits, 1);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
}

// An exporter's inference Dropout (opset 11, `ratio` attribute; Dropout-12 moved it to an input) is an identity:
// canonicalization removes it, so raising the opset for per-channel QDQ does not stop at it.
TEST(PtqOcrPatterns, InferenceDropoutDoesNotBlockTheOpsetRaise) {
  Model m = conv_model(11);
  Node drop = make("Dropout", "drop", {"c"}, {"d"});
  drop.attrs["ratio"] = 0.3f;
  m.graph.nodes.push_back(drop);
  m.graph.nodes.push_back(make("Relu", "relu", {"d"}, {"y"}));
  const Dataset data = uniform_data({8, 3, 4, 4}, 15);
  const Tensor want = runtime::Executor(m).run1(data.images);
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  EXPECT_EQ(count_op(res.model, "Dropout"), 0);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
}

// Reshape-1's `shape` attribute (before 5) and Concat-1 without `axis` (before 4, default 1) become their later
// forms when the opset is raised — and the float executor concatenates such a Concat along axis 1 (it used 0).
TEST(PtqOcrPatterns, Opset3ReshapeAndConcatGetTheirLaterForms) {
  Model m = conv_model(3);
  m.graph.nodes.push_back(make("Concat", "cat", {"c", "c"}, {"cc"}));  // [N,8,4,4]: axis 1 by Concat-1's default
  Node rs = make("Reshape", "flat", {"cc"}, {"y"});
  rs.attrs["shape"] = std::vector<int64_t>{0, -1};
  m.graph.nodes.push_back(rs);
  const Dataset data = uniform_data({8, 3, 4, 4}, 16);
  const Tensor want = runtime::Executor(m).run1(data.images);
  ASSERT_EQ(want.shape(), (Shape{8, 128}));
  const auto res = ptq::quantize_model(m, data, plain());
  EXPECT_EQ(res.model.opset(), 13);
  for (const auto& n : res.model.graph.nodes) {
    if (n.op_type == "Reshape") {
      EXPECT_FALSE(n.has_attr("shape"));
      ASSERT_EQ(n.inputs.size(), 2u);
      EXPECT_EQ(res.model.graph.initializer(n.inputs[1])->to_i64_vector(), (std::vector<int64_t>{0, -1}));
    }
    if (n.op_type == "Concat") {
      EXPECT_EQ(n.attr_int("axis", -99), 1);
    }
  }
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
}

using test::same_bits;

// Upsample (7: scales attribute, 9: input; gone from 10) and Resize-10 map coordinates asymmetrically and pick the
// nearest pixel by truncation when upsampling, by ceil when downsampling. Raised to 13 they become Resize with
// coordinate_transformation_mode asymmetric and nearest_mode floor / ceil, and compute bit for bit what they did
// (the float executor runs both forms through separate code: the legacy branch and the nearest modes); raised to 10
// (a per-tensor model) Upsample becomes Resize-10. A nearest Resize-10 that shrinks one axis and grows another has no
// later form: refused by name.
TEST(PtqOcrPatterns, UpsampleAndResize10RaiseExactly) {
  const Dataset data = uniform_data({2, 3, 6, 6}, 17);
  struct Case {
    int64_t opset;
    const char* op;
    const char* mode;
    std::vector<float> scales;
    const char* nearest_mode;  // expected at 13, "" for linear
  };
  const std::vector<Case> cases = {
      {7, "Upsample", "nearest", {1, 1, 2, 3}, "floor"},     {8, "Upsample", "linear", {1, 1, 2, 2}, ""},
      {9, "Upsample", "nearest", {1, 1, 1.5f, 2.5f}, "floor"}, {9, "Upsample", "bilinear", {1, 1, 1.75f, 2}, ""},
      {10, "Resize", "nearest", {1, 1, 0.5f, 0.75f}, "ceil"}, {10, "Resize", "nearest", {1, 1, 1.5f, 2}, "floor"},
      {10, "Resize", "linear", {1, 1, 0.75f, 1.5f}, ""}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.op) + "-" + std::to_string(c.opset) + " " + c.mode);
    const Model m = test::legacy_resize_net(c.opset, c.op, c.mode, c.scales, 3);
    const Tensor want = runtime::Executor(m).run1(data.images);
    for (int64_t target : {int64_t{10}, int64_t{13}, int64_t{21}}) {
      if (target <= c.opset) continue;
      Model r = m;
      ptq::raise_opset(r, target);
      EXPECT_EQ(r.opset(), target);
      ASSERT_EQ(count_op(r, "Upsample"), 0);
      const Node& n = r.graph.nodes[2];
      ASSERT_EQ(n.op_type, "Resize");
      if (target == 10) {
        EXPECT_EQ(n.inputs.size(), 2u);
      } else {
        ASSERT_EQ(n.inputs.size(), 3u);
        EXPECT_EQ(n.inputs[1], "");
        EXPECT_EQ(n.attr_string("coordinate_transformation_mode", ""), "asymmetric");
        EXPECT_EQ(n.attr_string("nearest_mode", ""), c.nearest_mode);
        EXPECT_EQ(n.attr_string("mode", ""), std::string(c.nearest_mode).empty() ? "linear" : "nearest");
      }
      const Tensor got = runtime::Executor(r).run1(data.images);
      EXPECT_TRUE(same_bits(got, want)) << "raised to " << target << ": max rel diff " << test::max_rel_diff(got, want);
    }
  }
  // Quantized per channel: the raise happens in the export, and the QDQ model computes the float function.
  const Model up = test::legacy_resize_net(9, "Upsample", "nearest", {1, 1, 2, 2}, 3);
  const auto res = ptq::quantize_model(up, uniform_data({8, 3, 6, 6}, 18), plain());
  EXPECT_EQ(res.model.opset(), 13);
  EXPECT_EQ(count_op(res.model, "Resize"), 1);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), runtime::Executor(up).run1(data.images)), 0.05);

  Model bad = test::legacy_resize_net(10, "Resize", "nearest", {1, 1, 0.5f, 2}, 3);
  try {
    ptq::raise_opset(bad, 13);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("shrinks one axis and grows another"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Resize node 'up'"), std::string::npos) << msg;
  }
  // Scales computed at run time: fine for Upsample (always >= 1), refused for a nearest Resize-10.
  for (const char* op : {"Upsample", "Resize"}) {
    Model dyn = test::legacy_resize_net(op == std::string("Upsample") ? 9 : 10, op, "nearest", {1, 1, 2, 2}, 3);
    dyn.graph.initializers["s0"] = dyn.graph.initializers.at("s");
    dyn.graph.initializers.erase("s");
    dyn.graph.nodes.insert(dyn.graph.nodes.begin() + 2, make("Identity", "copy", {"s0"}, {"s"}));
    const Tensor want = runtime::Executor(dyn).run1(data.images);
    if (op == std::string("Upsample")) {
      ptq::raise_opset(dyn, 13);
      EXPECT_TRUE(same_bits(runtime::Executor(dyn).run1(data.images), want));
    } else {
      EXPECT_THROW(ptq::raise_opset(dyn, 13), Error);
    }
  }
}

// TopK-1's `k` attribute becomes the input K (10) and Cast-1's type name its number (6): the same results.
TEST(PtqOcrPatterns, TopKAndCastOfOpset5RaiseExactly) {
  Model m = conv_model(5);
  m.graph.outputs.push_back({"z", DType::kFloat32, {}, {}, false});
  m.graph.nodes.push_back(make("Flatten", "flat", {"c"}, {"f"}));
  Node topk = make("TopK", "top", {"f"}, {"y", "i"});
  topk.attrs["k"] = int64_t{5};
  m.graph.nodes.push_back(topk);
  Node cast = make("Cast", "cast", {"i"}, {"z"});
  cast.attrs["to"] = std::string("FLOAT");
  m.graph.nodes.push_back(cast);
  const Dataset data = uniform_data({3, 3, 4, 4}, 19);
  const auto want = runtime::Executor(m).run({{"x", data.images}});
  ASSERT_EQ(want.at("y").shape(), (Shape{3, 5}));
  ASSERT_EQ(want.at("z").dtype(), DType::kFloat32);
  Model r = m;
  ptq::raise_opset(r, 13);
  const graph::Graph& g = r.graph;
  EXPECT_FALSE(g.nodes[2].has_attr("k"));
  ASSERT_EQ(g.nodes[2].inputs.size(), 2u);
  EXPECT_EQ(g.initializer(g.nodes[2].inputs[1])->to_i64_vector(), (std::vector<int64_t>{5}));
  EXPECT_EQ(g.nodes[3].attr_int("to", 0), 1);
  const auto got = runtime::Executor(r).run({{"x", data.images}});
  for (const char* out : {"y", "z"}) EXPECT_TRUE(same_bits(got.at(out), want.at(out))) << out;
  Model bad = m;
  bad.graph.nodes[3].attrs["to"] = std::string("STRING");
  try {
    ptq::raise_opset(bad, 13);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Cast node 'cast' casts to 'STRING'"), std::string::npos) << e.what();
  }
}

// ConvTranspose (DBNet's upsampling head) has its weight quantized like a Conv's: per output channel — axis 1 of
// W [C_in, C_out / group, k, k] for group 1, axis 0 for a depthwise one —, its bias int32 at s_in * s_w[c]; a grouped
// one that is not depthwise gets per-input-channel scales and a float bias. The integer engine (which runs the
// transposed conv in float between its Q/DQ) equals the simulation bit for bit, and per-channel beats per-tensor
// on the spread channels.
TEST(PtqOcrPatterns, ConvTransposeWeightsPerOutputChannel) {
  const Dataset data = uniform_data({16, 4, 5, 5}, 20);
  for (const int64_t group : {int64_t{1}, int64_t{8}, int64_t{2}}) {
    SCOPED_TRACE("group " + std::to_string(group));
    const Model m = test::deconv_net(group, 4);
    const Tensor want = runtime::Executor(m).run1(data.images);
    double err[2];
    for (int pc = 0; pc < 2; ++pc) {
      ptq::PtqOptions o = plain();
      if (!pc) o.weights.granularity = quant::Granularity::kPerTensor;
      const auto res = ptq::quantize_model(m, data, o);
      const graph::Graph& g = res.model.graph;
      const Node* up = nullptr;
      for (const auto& n : g.nodes)
        if (n.name == "up") up = &n;
      ASSERT_NE(up, nullptr);
      const int64_t wdq = g.producer(up->input(1)), bdq = g.producer(up->input(2));
      ASSERT_GE(wdq, 0);
      ASSERT_EQ(g.nodes[wdq].op_type, "DequantizeLinear");
      EXPECT_EQ(g.initializer(g.nodes[wdq].input(0))->dtype(), DType::kInt8);
      const Tensor* ws = g.initializer(g.nodes[wdq].input(1));
      const bool bias_int32 = group == 1 || group == 8 || !pc;
      if (pc) {
        EXPECT_EQ(g.nodes[wdq].attr_int("axis", -1), group == 1 ? 1 : 0);
        EXPECT_EQ(ws->numel(), 8);
      } else {
        EXPECT_EQ(ws->numel(), 1);
      }
      ASSERT_EQ(bdq >= 0 && g.nodes[bdq].op_type == "DequantizeLinear", bias_int32);
      if (bias_int32) {
        const Tensor* bs = g.initializer(g.nodes[bdq].input(1));
        const Tensor* as = g.initializer(g.nodes[g.producer(up->input(0))].input(1));  // the input's DQ scale
        for (int64_t c = 0; c < 8; ++c)
          EXPECT_EQ(bs->data<float>()[pc ? c : 0], as->data<float>()[0] * ws->data<float>()[pc ? c : 0]) << c;
      }
      const Tensor sim = runtime::Executor(res.model).run1(data.images);
      err[pc] = test::max_rel_diff(sim, want);
      const Tensor i8 = runtime::Int8Executor(res.model).run({{"x", data.images}}).at("y");
      const Tensor s8 = runtime::Int8Executor(res.model, runtime::Int8Mode::kSimulate).run({{"x", data.images}}).at("y");
      EXPECT_TRUE(same_bits(i8, s8)) << "int8 engine differs from its simulation";
    }
    EXPECT_LT(err[1], 0.05);
    if (group != 2) {
      EXPECT_LT(err[1], err[0]) << "per-channel " << err[1] << ", per-tensor " << err[0];
    }
  }
}

// Binary ops before 7 (`broadcast` 1 with an `axis`, or without; `broadcast` 0 with equal shapes) and PRelu-6's
// per-channel slope become their NumPy-broadcasting forms when raised (B and the slope get trailing 1s as new
// initializers): the same floats, bit for bit. An axis broadcast whose A rank the model does not declare is refused.
TEST(PtqOcrPatterns, Opset6BroadcastAndPReluRaiseExactly) {
  Model m = conv_model(6);  // x [N,3,4,4] -> conv -> c [N,4,4,4]
  m.graph.value_info.push_back({"c", DType::kFloat32, {-1, 4, 4, 4}, {"N", "", "", ""}, true});
  m.graph.initializers["bias_c"] = normal_tensor({4}, 21);   // per channel: axis 1
  m.graph.initializers["row"] = normal_tensor({4}, 22);      // per column: the suffix
  m.graph.initializers["slope"] = normal_tensor({4}, 23, 0.2f);
  m.graph.initializers["two"] = Tensor::from<float>({1}, {2.0f});
  Node add = make("Add", "add_c", {"c", "bias_c"}, {"a"});
  add.attrs["broadcast"] = int64_t{1};
  add.attrs["axis"] = int64_t{1};
  Node mul = make("Mul", "mul_row", {"a", "row"}, {"m"});
  mul.attrs["broadcast"] = int64_t{1};
  Node sq = make("Pow", "square", {"m", "two"}, {"p"});
  sq.attrs["broadcast"] = int64_t{1};
  Node sub = make("Sub", "sub_same", {"p", "m"}, {"d"});  // equal shapes, broadcast 0
  m.graph.value_info.push_back({"d", DType::kFloat32, {-1, 4, 4, 4}, {"N", "", "", ""}, true});
  Node pr = make("PRelu", "prelu", {"d", "slope"}, {"y"});
  for (Node* n : {&add, &mul, &sq, &sub, &pr}) m.graph.nodes.push_back(*n);
  const Dataset data = uniform_data({5, 3, 4, 4}, 24);
  const Tensor want = runtime::Executor(m).run1(data.images);
  // The legacy readings, against a direct computation for one element of each kind.
  Model r = m;
  ptq::raise_opset(r, 13);
  for (const auto& n : r.graph.nodes) EXPECT_FALSE(n.has_attr("broadcast") || n.has_attr("axis")) << n.describe();
  EXPECT_EQ(r.graph.initializer(r.graph.nodes[1].input(1))->shape(), (Shape{4, 1, 1}));  // Add's B at axis 1
  EXPECT_EQ(r.graph.initializer(r.graph.nodes[2].input(1))->shape(), (Shape{4}));        // Mul's: the suffix
  EXPECT_EQ(r.graph.initializer(r.graph.nodes[5].input(1))->shape(), (Shape{4, 1, 1}));  // PRelu's slope
  EXPECT_TRUE(same_bits(runtime::Executor(r).run1(data.images), want));
  // Per-tensor quantization raises to 10 (crossing 7 too) and stays close to the float function.
  ptq::PtqOptions pt = plain();
  pt.weights.granularity = quant::Granularity::kPerTensor;
  const auto res = ptq::quantize_model(m, data, pt);
  EXPECT_EQ(res.model.opset(), 10);
  EXPECT_LT(test::max_rel_diff(runtime::Executor(res.model).run1(data.images), want), 0.05);
  Model bad = m;
  bad.graph.value_info.clear();
  try {
    ptq::raise_opset(bad, 13);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Add node 'add_c'"), std::string::npos) << e.what();
  }
}
