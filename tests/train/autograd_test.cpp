// Every op gradient against central finite differences of the forward pass.
//
// The loss is L = sum(out * R) for a fixed random R, so dL/dout = R. The forward runs in float32 (the
// executor's kernels); L is accumulated and the difference quotient (L(x+h) - L(x-h)) / 2h taken in
// double. Inputs of piecewise-linear ops are kept away from the break points by more than h, so the
// difference quotient sees one piece.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <random>

#include "perch/core/cpu.h"
#include "perch/quant/params.h"
#include "perch/train/autograd.h"
#include "test_util.h"

namespace perch::train {
namespace {

using graph::Model;
using graph::Node;

struct Case {
  Model model;
  TensorMap inputs;                 // graph inputs (gradients checked too)
  std::vector<std::string> params;  // initializers whose gradients are checked
  bool training = true;
};

Tensor random_tensor(Shape s, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(DType::kFloat32, std::move(s));
  std::uniform_real_distribution<float> u(lo, hi);
  for (auto& v : t.span<float>()) v = u(rng);
  return t;
}

// Moves values within `gap` of any break point to gap away from it.
void avoid(Tensor& t, std::vector<float> breaks, float gap) {
  for (auto& v : t.span<float>())
    for (float b : breaks)
      if (std::fabs(v - b) < gap) v = v < b ? b - gap : b + gap;
}

struct Builder {
  Model m;
  Case c;
  explicit Builder(int64_t opset = 13) { m.set_opset(opset); }
  std::string input(const std::string& name, Tensor t) {
    graph::ValueInfo vi;
    vi.name = name;
    vi.shape = t.shape();
    vi.has_shape = true;
    m.graph.inputs.push_back(vi);
    c.inputs[name] = t;
    return name;
  }
  std::string param(const std::string& name, Tensor t, bool trained = true) {
    m.graph.initializers[name] = t;
    if (trained) c.params.push_back(name);
    return name;
  }
  Node& node(const std::string& op, std::vector<std::string> ins) {
    Node n;
    n.name = op + std::to_string(m.graph.nodes.size());
    n.op_type = op;
    n.inputs = std::move(ins);
    n.outputs = {n.name + "_out"};
    m.graph.nodes.push_back(n);
    return m.graph.nodes.back();
  }
  Case finish() {
    graph::ValueInfo out;
    out.name = m.graph.nodes.back().outputs[0];
    m.graph.outputs.push_back(out);
    m.source = "gradcheck";
    c.model = m;
    return c;
  }
};

double loss_of(Tape& tape, const TensorMap& inputs, const Tensor& r, bool training) {
  TensorMap out = tape.forward(inputs, training);
  const Tensor& y = out.begin()->second;
  double l = 0.0;
  for (int64_t i = 0; i < y.numel(); ++i) l += static_cast<double>(y.data<float>()[i]) * r.data<float>()[i];
  return l;
}

// Checks every checked value's gradient at up to `max_points` positions.
void gradcheck(Case c, double h = 1e-2, double rtol = 2e-2, int max_points = 48) {
  std::mt19937 rng(7);
  Model& m = c.model;
  Tape tape(m, c.params);
  std::vector<std::string> inputs;
  for (const auto& [k, v] : c.inputs) inputs.push_back(k);
  tape.keep_gradients_of(inputs);
  TensorMap out = tape.forward(c.inputs, c.training);
  ASSERT_EQ(out.size(), 1u);
  const Tensor r = random_tensor(out.begin()->second.shape(), rng);
  tape.backward({{out.begin()->first, r}});
  // Analytic gradients, copied (the numeric passes below re-run forward/backward state).
  std::map<std::string, Tensor> analytic;
  for (const auto& p : c.params) analytic[p] = tape.grad(p).clone();
  for (const auto& k : inputs) analytic[k] = tape.grad(k).clone();
  // BN running statistics change in training forwards: restore them so every pass sees the same model.
  std::map<std::string, Tensor> snapshot;
  for (const auto& [k, v] : m.graph.initializers) snapshot[k] = v.clone();
  auto restore = [&](const std::string& except) {
    for (auto& [k, v] : m.graph.initializers)
      if (k != except && v.dtype() == DType::kFloat32)
        std::copy(snapshot[k].data<float>(), snapshot[k].data<float>() + v.numel(), v.data<float>());
  };
  for (const auto& [name, ga] : analytic) {
    Tensor* target = m.graph.initializers.count(name) ? &m.graph.initializers.at(name) : &c.inputs.at(name);
    const int64_t n = target->numel();
    double scale = 1e-3;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(static_cast<double>(ga.data<float>()[i])));
    const int64_t stride = std::max<int64_t>(1, n / max_points);
    for (int64_t i = 0; i < n; i += stride) {
      float* p = target->data<float>() + i;
      const float orig = *p;
      *p = orig + static_cast<float>(h);
      restore(name);
      const double lp = loss_of(tape, c.inputs, r, c.training);
      *p = orig - static_cast<float>(h);
      restore(name);
      const double lm = loss_of(tape, c.inputs, r, c.training);
      *p = orig;
      const double num = (lp - lm) / (2.0 * h);
      const double ana = ga.data<float>()[i];
      EXPECT_NEAR(ana, num, rtol * scale) << "d/d " << name << "[" << i << "] of " << m.graph.nodes.back().describe();
    }
  }
  restore("");
}

TEST(Gradients, ConvAllShapes) {
  std::mt19937 rng(1);
  struct Geo {
    int64_t n, c, h, w, m, k, stride, pad, group, dil;
  };
  for (const Geo& g : {Geo{2, 3, 7, 6, 4, 3, 1, 1, 1, 1}, Geo{2, 4, 8, 8, 6, 3, 2, 1, 2, 1}, Geo{2, 4, 7, 7, 4, 3, 1, 1, 4, 1},
                       Geo{2, 3, 9, 8, 6, 3, 2, 1, 3, 1}, Geo{1, 5, 6, 6, 7, 1, 1, 0, 1, 1}, Geo{2, 2, 9, 9, 3, 3, 1, 2, 1, 2},
                       Geo{3, 8, 5, 5, 8, 5, 1, 2, 8, 1}}) {
    Builder b;
    b.input("x", random_tensor({g.n, g.c, g.h, g.w}, rng));
    b.param("w", random_tensor({g.m, g.c / g.group, g.k, g.k}, rng));
    b.param("b", random_tensor({g.m}, rng));
    Node& n = b.node("Conv", {"x", "w", "b"});
    n.attrs["strides"] = std::vector<int64_t>{g.stride, g.stride};
    n.attrs["pads"] = std::vector<int64_t>{g.pad, g.pad, g.pad, g.pad};
    n.attrs["group"] = g.group;
    n.attrs["dilations"] = std::vector<int64_t>{g.dil, g.dil};
    SCOPED_TRACE("group " + std::to_string(g.group) + " k " + std::to_string(g.k));
    gradcheck(b.finish());
  }
}

TEST(Gradients, ConvReferencePath) {
  // The same check through the reference kernels (PERCH_PATHS=reference).
  set_paths_for_testing(static_cast<uint32_t>(Path::kReference));
  std::mt19937 rng(2);
  Builder b;
  b.input("x", random_tensor({2, 4, 6, 6}, rng));
  b.param("w", random_tensor({4, 1, 3, 3}, rng));
  Node& n = b.node("Conv", {"x", "w"});
  n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  n.attrs["group"] = int64_t{4};
  gradcheck(b.finish());
  set_paths_for_testing(0);
}

// 3-D convolutions (the N-d gradient loops): dense, strided and dilated with asymmetric pads, grouped, depthwise.
TEST(Gradients, Conv3d) {
  std::mt19937 rng(11);
  struct Geo {
    int64_t c, m, group, stride, dil;
    std::vector<int64_t> pads;
  };
  for (const Geo& g : {Geo{2, 3, 1, 1, 1, {1, 1, 1, 1, 1, 1}}, Geo{4, 4, 2, 2, 1, {0, 1, 2, 1, 0, 1}},
                       Geo{3, 3, 3, 1, 2, {2, 0, 1, 1, 2, 0}}}) {
    Builder b;
    b.input("x", random_tensor({2, g.c, 5, 6, 5}, rng));
    b.param("w", random_tensor({g.m, g.c / g.group, 3, 2, 3}, rng));
    b.param("b", random_tensor({g.m}, rng));
    Node& n = b.node("Conv", {"x", "w", "b"});
    n.attrs["strides"] = std::vector<int64_t>{g.stride, 1, g.stride};
    n.attrs["dilations"] = std::vector<int64_t>{g.dil, 1, 1};
    n.attrs["pads"] = g.pads;
    n.attrs["group"] = g.group;
    SCOPED_TRACE("group " + std::to_string(g.group) + " stride " + std::to_string(g.stride));
    gradcheck(b.finish());
  }
}

// 3-D max (distinct values more than 2h apart, so no window's maximum changes under the difference) and average
// pooling (with padding counted or not, ceil mode).
TEST(Gradients, Pool3d) {
  std::mt19937 rng(12);
  for (const char* op : {"MaxPool", "AveragePool"})
    for (int64_t include : {0, 1}) {
      Builder b;
      Tensor x(DType::kFloat32, {2, 2, 4, 5, 5});
      std::vector<float> v(static_cast<size_t>(x.numel()));
      for (size_t i = 0; i < v.size(); ++i) v[i] = 0.05f * static_cast<float>(i);
      std::shuffle(v.begin(), v.end(), rng);
      std::copy(v.begin(), v.end(), x.data<float>());
      b.input("x", x);
      Node& n = b.node(op, {"x"});
      n.attrs["kernel_shape"] = std::vector<int64_t>{2, 3, 2};
      n.attrs["strides"] = std::vector<int64_t>{2, 2, 1};
      n.attrs["pads"] = std::vector<int64_t>{0, 1, 1, 1, 1, 0};
      n.attrs["ceil_mode"] = include;
      if (std::string(op) == "AveragePool") n.attrs["count_include_pad"] = include;
      SCOPED_TRACE(std::string(op) + (include ? " include/ceil" : ""));
      gradcheck(b.finish(), 1e-2, 2e-2, 200);
    }
}

TEST(Gradients, GemmTransposesAlphaBeta) {
  std::mt19937 rng(3);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (bool c_row : {true, false}) {
        const int64_t M = 3, K = 5, N = 4;
        Builder b;
        b.input("a", random_tensor(ta ? Shape{K, M} : Shape{M, K}, rng));
        b.param("b", random_tensor(tb ? Shape{N, K} : Shape{K, N}, rng));
        b.param("c", random_tensor(c_row ? Shape{N} : Shape{M, N}, rng));
        Node& n = b.node("Gemm", {"a", "b", "c"});
        n.attrs["transA"] = int64_t{ta};
        n.attrs["transB"] = int64_t{tb};
        n.attrs["alpha"] = 0.7f;
        n.attrs["beta"] = 1.3f;
        SCOPED_TRACE("transA " + std::to_string(ta) + " transB " + std::to_string(tb));
        gradcheck(b.finish());
      }
}

TEST(Gradients, MatMulBatched) {
  std::mt19937 rng(4);
  for (bool batched_b : {false, true}) {
    Builder b;
    b.input("a", random_tensor({2, 3, 4}, rng));
    b.param("b", random_tensor(batched_b ? Shape{2, 4, 5} : Shape{4, 5}, rng));
    b.node("MatMul", {"a", "b"});
    gradcheck(b.finish());
  }
}

TEST(Gradients, BatchNormTrainingAndFrozen) {
  std::mt19937 rng(5);
  // (training, kFrozenStatistics): a frozen node in a training forward uses the running statistics, as in QAT.
  for (auto [training, frozen] : {std::pair{true, false}, std::pair{false, false}, std::pair{true, true}}) {
    Builder b;
    b.input("x", random_tensor({4, 3, 3, 2}, rng, -2.0f, 3.0f));
    b.param("scale", random_tensor({3}, rng, 0.5f, 1.5f));
    b.param("bias", random_tensor({3}, rng));
    b.param("mean", random_tensor({3}, rng), false);
    b.param("var", random_tensor({3}, rng, 0.5f, 2.0f), false);
    Node& bn = b.node("BatchNormalization", {"x", "scale", "bias", "mean", "var"});
    if (frozen) bn.attrs[kFrozenStatistics] = int64_t{1};
    Case c = b.finish();
    c.training = training;
    SCOPED_TRACE(training && !frozen ? "batch statistics" : frozen ? "frozen in training" : "running statistics");
    gradcheck(c, 1e-2, 3e-2);
  }
}

// QAT with BatchNormalization kept (perch/train/qat.h): the folded weight and bias from the unfolded
// parameters (w, gamma, beta; running statistics and equalization factors are state), the convolution, and
// the batch-statistics correction after it — batch phase and frozen phase (the correction is the identity).
// No fake quantization in between (its straight-through gradient is not a derivative).
TEST(Gradients, QatBatchNormComposition) {
  std::mt19937 rng(15);
  for (int frozen : {0, 1}) {
    Builder b;
    b.input("x", random_tensor({3, 3, 5, 5}, rng, -1.0f, 2.0f));
    b.param("w", random_tensor({4, 3, 3, 3}, rng, -0.5f, 0.5f));
    Tensor gamma = random_tensor({4}, rng, 0.5f, 1.5f);
    gamma.data<float>()[1] = -0.7f;
    b.param("gamma", gamma);
    b.param("beta", random_tensor({4}, rng));
    b.param("mean", random_tensor({4}, rng, -0.3f, 0.3f), false);
    b.param("var", random_tensor({4}, rng, 0.2f, 1.0f), false);
    b.param("eq", random_tensor({4}, rng, 0.5f, 2.0f), false);
    b.param("in_scale", random_tensor({3}, rng, 0.5f, 2.0f), false);
    // A large epsilon so that its terms (D^2 = var_B(u) + eps k^2) matter in the gradient.
    Node& fw = b.node("BnFoldWeight", {"w", "gamma", "var", "eq", "in_scale"});
    fw.domain = "perch";
    fw.attrs["epsilon"] = 0.3f;
    const std::string W = fw.outputs[0];
    Node& fb = b.node("BnFoldBias", {"gamma", "beta", "mean", "var", "eq"});
    fb.domain = "perch";
    fb.attrs["epsilon"] = 0.3f;
    const std::string B = fb.outputs[0];
    Node& conv = b.node("Conv", {"x", W, B});
    conv.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
    const std::string Y = conv.outputs[0];
    Node& corr = b.node("BnBatchCorrection", {Y, B, "gamma", "beta", "mean", "var", "eq"});
    corr.domain = "perch";
    corr.attrs["epsilon"] = 0.3f;
    corr.attrs["momentum"] = 0.9f;
    corr.attrs["frozen"] = int64_t{frozen};
    SCOPED_TRACE(frozen ? "frozen statistics" : "batch statistics");
    gradcheck(b.finish(), 1e-2, 2e-2);
  }
}

TEST(Gradients, BatchNormUpdatesRunningStatistics) {
  std::mt19937 rng(6);
  Builder b;
  Tensor x = random_tensor({8, 2, 3, 3}, rng, 0.0f, 4.0f);
  b.input("x", x);
  b.param("scale", Tensor::from<float>({2}, std::vector<float>{1, 1}));
  b.param("bias", Tensor::from<float>({2}, std::vector<float>{0, 0}));
  b.param("mean", Tensor::from<float>({2}, std::vector<float>{1, -1}), false);
  b.param("var", Tensor::from<float>({2}, std::vector<float>{2, 3}), false);
  b.node("BatchNormalization", {"x", "scale", "bias", "mean", "var"}).attrs["momentum"] = 0.75f;
  Case c = b.finish();
  Tape tape(c.model, c.params);
  tape.forward(c.inputs, true);
  for (int64_t ch = 0; ch < 2; ++ch) {
    double s = 0, s2 = 0;
    const int64_t cnt = 8 * 9;
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t j = 0; j < 9; ++j) s += x.data<float>()[(i * 2 + ch) * 9 + j];
    const double mu = s / cnt;
    for (int64_t i = 0; i < 8; ++i)
      for (int64_t j = 0; j < 9; ++j) s2 += std::pow(x.data<float>()[(i * 2 + ch) * 9 + j] - mu, 2);
    const double unbiased = s2 / (cnt - 1);
    EXPECT_NEAR(c.model.graph.initializers.at("mean").data<float>()[ch], 0.75 * (ch ? -1 : 1) + 0.25 * mu, 1e-5);
    EXPECT_NEAR(c.model.graph.initializers.at("var").data<float>()[ch], 0.75 * (ch ? 3 : 2) + 0.25 * unbiased, 1e-5);
  }
}

TEST(Gradients, Activations) {
  std::mt19937 rng(8);
  struct Act {
    std::string op;
    std::vector<float> breaks;
    int64_t opset;
  };
  for (const Act& a : {Act{"Relu", {0}, 13}, Act{"LeakyRelu", {0}, 13}, Act{"Sigmoid", {}, 13}, Act{"Tanh", {}, 13},
                       Act{"HardSigmoid", {-2.5f, 2.5f}, 13}, Act{"HardSwish", {-3, 3}, 14}, Act{"Clip", {-0.5f, 1.5f}, 13},
                       Act{"Clip", {0, 6}, 6}}) {
    Builder b(a.opset);
    Tensor x = random_tensor({2, 3, 4, 5}, rng, -5.0f, 7.0f);
    avoid(x, a.breaks, 0.05f);
    b.input("x", x);
    std::vector<std::string> ins{"x"};
    if (a.op == "Clip" && a.opset >= 11) {
      b.param("lo", Tensor::scalar_f32(-0.5f), false);
      b.param("hi", Tensor::scalar_f32(1.5f), false);
      ins = {"x", "lo", "hi"};
    }
    Node& n = b.node(a.op, ins);
    if (a.op == "Clip" && a.opset < 11) n.attrs["min"] = 0.0f, n.attrs["max"] = 6.0f;
    if (a.op == "LeakyRelu") n.attrs["alpha"] = 0.1f;
    SCOPED_TRACE(a.op + " opset " + std::to_string(a.opset));
    gradcheck(b.finish(), 1e-2);
  }
}

TEST(Gradients, BroadcastingArithmetic) {
  std::mt19937 rng(9);
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    for (const Shape& bs : {Shape{2, 3, 4}, Shape{1, 3, 1}, Shape{4}, Shape{3, 1}}) {
      Builder b;
      b.input("a", random_tensor({2, 3, 4}, rng));
      b.param("b", random_tensor(bs, rng, 0.5f, 2.0f));  // away from 0 for Div
      b.node(op, {"a", "b"});
      SCOPED_TRACE(std::string(op) + " with " + shape_str(bs));
      gradcheck(b.finish(), 1e-3);
    }
  }
}

TEST(Gradients, Pooling) {
  std::mt19937 rng(10);
  for (const char* op : {"MaxPool", "AveragePool"})
    for (int64_t cip = 0; cip < 2; ++cip) {
      Builder b;
      // Distinct values 0.05 apart: the maximum of a window is unique by more than 2h.
      Tensor x(DType::kFloat32, {2, 3, 7, 6});
      std::vector<float> vals(static_cast<size_t>(x.numel()));
      for (size_t i = 0; i < vals.size(); ++i) vals[i] = 0.05f * static_cast<float>(i) - 6.0f;
      std::shuffle(vals.begin(), vals.end(), rng);
      std::copy(vals.begin(), vals.end(), x.data<float>());
      b.input("x", x);
      Node& n = b.node(op, {"x"});
      n.attrs["kernel_shape"] = std::vector<int64_t>{3, 2};
      n.attrs["strides"] = std::vector<int64_t>{2, 2};
      n.attrs["pads"] = std::vector<int64_t>{1, 0, 1, 1};
      if (std::string(op) == "AveragePool") n.attrs["count_include_pad"] = cip;
      gradcheck(b.finish(), 1e-2);
    }
  // 2x2 stride 2 without padding (the common case, a separate loop in the kernel), odd and even extents.
  for (int64_t w : {6, 7}) {
    Builder b;
    Tensor x(DType::kFloat32, {2, 3, 5, w});
    std::vector<float> vals(static_cast<size_t>(x.numel()));
    for (size_t i = 0; i < vals.size(); ++i) vals[i] = 0.05f * static_cast<float>(i) - 4.0f;
    std::shuffle(vals.begin(), vals.end(), rng);
    std::copy(vals.begin(), vals.end(), x.data<float>());
    b.input("x", x);
    Node& n = b.node("MaxPool", {"x"});
    n.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
    n.attrs["strides"] = std::vector<int64_t>{2, 2};
    gradcheck(b.finish(), 1e-2);
  }
  Builder b;
  b.input("x", random_tensor({2, 3, 4, 5}, rng));
  b.node("GlobalAveragePool", {"x"});
  gradcheck(b.finish());
}

// The Tape runs Relu -> MaxPool as MaxPool -> Relu (autograd.cpp, execution_nodes). Outputs and
// gradients must equal the model's own order bit for bit — keeping the Relu's output (keep_gradients_of)
// disables the rewrite, which gives the reference — including windows whose maximum is <= 0, ties at 0,
// and padding; and the rewritten chain passes the finite-difference check.
TEST(Gradients, ReluMaxPoolRunsPooledFirstWithIdenticalResults) {
  std::mt19937 rng(21);
  for (int variant = 0; variant < 2; ++variant) {
    Builder b;
    Tensor x = random_tensor({2, 3, 7, 6}, rng);
    avoid(x, {0.0f}, 0.02f);
    if (variant == 1) std::fill(x.data<float>(), x.data<float>() + 20, 0.0f);  // ties at 0
    b.input("x", x);
    const std::string w = b.param("w", random_tensor({4, 3, 1, 1}, rng));
    Node& conv = b.node("Conv", {"x", w});
    const std::string c = conv.outputs[0];
    const std::string r = b.node("Relu", {c}).outputs[0];
    Node& pool = b.node("MaxPool", {r});
    pool.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
    pool.attrs["strides"] = std::vector<int64_t>{2, 2};
    if (variant == 1) pool.attrs["pads"] = std::vector<int64_t>{1, 1, 0, 0};
    Case cs = b.finish();
    if (variant == 0) gradcheck(cs, 1e-3);

    Model m1 = cs.model, m2 = cs.model;
    Tape swapped(m1, cs.params), plain(m2, cs.params);
    swapped.keep_gradients_of({"x"});
    plain.keep_gradients_of({"x", r});
    const TensorMap y1 = swapped.forward(cs.inputs, true), y2 = plain.forward(cs.inputs, true);
    const std::string out = y1.begin()->first;
    const Tensor g = random_tensor(y1.at(out).shape(), rng);
    swapped.backward({{out, g}});
    plain.backward({{out, g}});
    for (int64_t i = 0; i < y1.at(out).numel(); ++i)
      ASSERT_EQ(y1.at(out).data<float>()[i], y2.at(out).data<float>()[i]) << "output " << i;
    for (const std::string& v : {std::string("x"), std::string("w")})
      for (int64_t i = 0; i < swapped.grad(v).numel(); ++i)
        ASSERT_EQ(swapped.grad(v).data<float>()[i], plain.grad(v).data<float>()[i]) << "d/d" << v << "[" << i << "]";
  }
}

// Relu -> FakeQuantAct runs as one ReluFakeQuantAct node, and with the MaxPool after it as one
// ReluFakeQuantActMaxPool (autograd.cpp). Both against the unfused nodes (kept apart by keeping the
// intermediate values): outputs, the EMA range state written back to the model (scale, zero point, lo, hi)
// over two steps, and the gradients of x, the conv weight and (LSQ) the learned scale, all bit for bit.
// Pools: 2x2 stride 2 over odd sizes (the fast plane kernel, an unused last row/column) and 3x3 stride 2
// with padding (the generic loop). Inputs: ties (k + 0.5) s of the step's own scale, grid points, the clip edge and its neighbours, +-0,
// negatives, 2x2 pooling windows with equal values; a variant with +-Inf takes the unfused range path.
// Variants: EMA update with momentum 1 (the scale the forward uses is known, so the ties are real) and 0.5,
// +-Inf, frozen, learned scale, evaluation mode.
TEST(Gradients, ReluFakeQuantActFusedEqualsUnfused) {
  std::mt19937 rng(31);
  for (int variant = 0; variant < 6; ++variant) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    const bool learn = variant == 4, frozen = variant == 3, training = variant != 5;
    const float momentum = variant == 0 ? 1.0f : 0.5f;
    Builder b;
    const float s0 = 0.05f, zp0 = 10.0f;  // uint8: clip range [-0.5, 12.75]
    quant::QuantSpec spec;                // per-tensor asymmetric uint8, as the QAT activations
    const float lo0 = (0.0f - zp0) * s0, hi0 = (255.0f - zp0) * s0;
    // The parameters the first training forward uses with momentum 1 (lo, hi unchanged).
    const quant::QuantParams p1 = quant::choose_params(spec, {1}, {&lo0, 1}, {&hi0, 1});
    const float s = variant == 0 ? p1.scale[0] : s0;
    const int32_t zp = variant == 0 ? p1.zero_point[0] : 10;
    Tensor x(DType::kFloat32, {2, 3, 7, 9});
    auto xs = x.span<float>();
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t k = static_cast<int64_t>(rng() % 270) - 12 - zp;
      const float edge = static_cast<float>(255 - zp) * s;
      switch (rng() % 7) {
        case 0: xs[i] = (static_cast<float>(k) + 0.5f) * s; break;
        case 1: xs[i] = static_cast<float>(k) * s; break;
        case 2: {
          const float sp[] = {0.0f, -0.0f, edge, std::nextafter(edge, 1e9f), std::nextafter(edge, -1e9f), -3.0f, 20.0f};
          xs[i] = sp[rng() % 7];
          break;
        }
        case 3: xs[i] = i > 0 ? xs[i - 1] : 1.0f; break;  // ties inside pooling windows
        default: xs[i] = std::uniform_real_distribution<float>(-2.0f, 14.0f)(rng);
      }
    }
    if (variant == 2) xs[5] = INFINITY, xs[17] = -INFINITY;
    b.input("x", x);
    const std::string r = b.node("Relu", {"x"}).outputs[0];
    b.param("fq.scale", Tensor::from<float>({1}, std::vector<float>{s0}), learn);
    b.param("fq.zp", Tensor::from<float>({1}, std::vector<float>{zp0}), false);
    b.param("fq.lo", Tensor::from<float>({1}, std::vector<float>{lo0}), false);
    b.param("fq.hi", Tensor::from<float>({1}, std::vector<float>{hi0}), false);
    Node& fq = b.node("FakeQuantAct", {r, "fq.scale", "fq.zp", "fq.lo", "fq.hi"});
    fq.domain = "perch";
    fq.attrs["bits"] = int64_t{8};
    fq.attrs["signed"] = int64_t{0};
    fq.attrs["symmetric"] = int64_t{0};
    fq.attrs["narrow"] = int64_t{0};
    fq.attrs["granularity"] = std::string("per-tensor");
    fq.attrs["axis"] = int64_t{0};
    fq.attrs["group_size"] = int64_t{0};
    fq.attrs["momentum"] = momentum;
    fq.attrs["learn"] = int64_t{learn};
    fq.attrs["frozen"] = int64_t{frozen};
    const std::string q = fq.outputs[0];
    Node& pool = b.node("MaxPool", {q});
    pool.attrs["kernel_shape"] = std::vector<int64_t>{variant % 2 ? 3 : 2, variant % 2 ? 3 : 2};
    pool.attrs["strides"] = std::vector<int64_t>{2, 2};
    if (variant % 2) pool.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
    const std::string w = b.param("w", random_tensor({3, 3, 1, 1}, rng));
    b.node("Conv", {pool.outputs[0], w});
    Case cs = b.finish();
    cs.training = training;

    Model m0 = cs.model, m1 = cs.model, m2 = cs.model;
    for (Model* m : {&m0, &m1, &m2})  // own copies: the range state is updated in place
      for (auto& [name, t] : m->graph.initializers) t = t.clone();
    Tape both(m0, cs.params), fused(m1, cs.params), plain(m2, cs.params);
    both.keep_gradients_of({"x"});
    fused.keep_gradients_of({"x", q});  // the pool stays apart
    plain.keep_gradients_of({"x", r});
    auto count = [](const Tape& t, const char* op) {
      return std::count_if(t.executed_nodes().begin(), t.executed_nodes().end(),
                           [op](const Node& n) { return n.op_type == op; });
    };
    ASSERT_EQ(count(both, "ReluFakeQuantActMaxPool"), 1);
    ASSERT_EQ(count(fused, "ReluFakeQuantAct"), 1);
    ASSERT_EQ(count(fused, "ReluFakeQuantActMaxPool"), 0);
    ASSERT_EQ(count(plain, "ReluFakeQuantAct") + count(plain, "ReluFakeQuantActMaxPool"), 0);
    ASSERT_EQ(both.executed_nodes().size() + 2, plain.executed_nodes().size());
    auto same = [](const Tensor& a, const Tensor& c, const std::string& what) {
      ASSERT_EQ(a.numel(), c.numel()) << what;
      for (int64_t i = 0; i < a.numel(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(a.data<float>()[i]), std::bit_cast<uint32_t>(c.data<float>()[i]))
            << what << "[" << i << "]";
    };
    for (int step = 0; step < 2; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const TensorMap y2 = plain.forward(cs.inputs, training);
      const std::string out = y2.begin()->first;
      const Tensor g = random_tensor(y2.at(out).shape(), rng);
      plain.backward({{out, g}});
      for (Tape* t : {&both, &fused}) {
        SCOPED_TRACE(t == &both ? "relu+fake-quant+pool" : "relu+fake-quant");
        Model& m = t == &both ? m0 : m1;
        const TensorMap y1 = t->forward(cs.inputs, training);
        same(y1.at(out), y2.at(out), "output");
        for (const char* st : {"fq.scale", "fq.zp", "fq.lo", "fq.hi"})
          same(m.graph.initializers.at(st), m2.graph.initializers.at(st), st);
        t->backward({{out, g}});
        same(t->grad("x"), plain.grad("x"), "dx");
        for (const auto& p : cs.params) same(t->grad(p), plain.grad(p), "d" + p);
      }
    }
    // The range moved (the update path ran) where it should.
    const bool moved = m1.graph.initializers.at("fq.lo").data<float>()[0] != lo0 ||
                       m1.graph.initializers.at("fq.hi").data<float>()[0] != hi0;
    EXPECT_EQ(moved, training && !frozen && !learn && momentum < 1.0f);
  }
}

TEST(Gradients, ShapeOps) {
  std::mt19937 rng(11);
  {
    Builder b;
    b.input("x", random_tensor({2, 3, 4}, rng));
    b.node("Flatten", {"x"});
    gradcheck(b.finish());
  }
  {
    Builder b;
    b.input("x", random_tensor({2, 3, 4}, rng));
    b.param("shape", Tensor::from<int64_t>({2}, std::vector<int64_t>{4, 6}), false);
    b.node("Reshape", {"x", "shape"});
    gradcheck(b.finish());
  }
  {
    Builder b;
    b.input("x", random_tensor({2, 3, 4}, rng));
    b.node("Transpose", {"x"}).attrs["perm"] = std::vector<int64_t>{2, 0, 1};
    gradcheck(b.finish());
  }
  {
    Builder b;
    b.input("x", random_tensor({2, 3, 4}, rng));
    b.input("y", random_tensor({2, 2, 4}, rng));
    b.node("Concat", {"x", "y"}).attrs["axis"] = int64_t{1};
    gradcheck(b.finish());
  }
}

// The ops of exported layer norms and attention (ReduceMean/Pow/Sqrt, Slice, Cast) and a dynamic reshape
// whose target shape is computed from Shape (no gradient flows into shapes).
TEST(Gradients, SliceOverAttributesAndInputsWithSteps) {
  std::mt19937 rng(17);
  {
    Builder b(9);  // starts/ends/axes as attributes; end past the dim is clamped
    b.input("x", random_tensor({2, 5, 4}, rng));
    Node& n = b.node("Slice", {"x"});
    n.attrs["starts"] = std::vector<int64_t>{1, -3};
    n.attrs["ends"] = std::vector<int64_t>{100, -1};
    n.attrs["axes"] = std::vector<int64_t>{1, 2};
    gradcheck(b.finish(), 1e-2);
  }
  for (int64_t step : {2, -2}) {
    Builder b(13);
    b.input("x", random_tensor({3, 7}, rng));
    b.param("starts", Tensor::from<int64_t>({1}, std::vector<int64_t>{step > 0 ? 1 : 6}), false);
    b.param("ends", Tensor::from<int64_t>({1}, std::vector<int64_t>{step > 0 ? 7 : 0}), false);
    b.param("axes", Tensor::from<int64_t>({1}, std::vector<int64_t>{-1}), false);
    b.param("steps", Tensor::from<int64_t>({1}, std::vector<int64_t>{step}), false);
    b.node("Slice", {"x", "starts", "ends", "axes", "steps"});
    SCOPED_TRACE("step " + std::to_string(step));
    gradcheck(b.finish(), 1e-2);
  }
}

TEST(Gradients, LayerNormPiecesReduceMeanPowSqrt) {
  std::mt19937 rng(18);
  for (int64_t opset : {13, 18})
    for (int64_t keep : {0, 1}) {
      Builder b(opset);
      b.input("x", random_tensor({2, 3, 4}, rng));
      std::vector<std::string> ins{"x"};
      if (opset >= 18) ins.push_back(b.param("axes", Tensor::from<int64_t>({2}, std::vector<int64_t>{-1, 0}), false));
      Node& n = b.node("ReduceMean", ins);
      n.attrs["keepdims"] = keep;
      if (opset < 18) n.attrs["axes"] = std::vector<int64_t>{-1, 0};
      SCOPED_TRACE("ReduceMean opset " + std::to_string(opset) + " keepdims " + std::to_string(keep));
      gradcheck(b.finish(), 1e-2);
    }
  {
    Builder b(13);  // ReduceSum, every axis (no axes input)
    b.input("x", random_tensor({2, 3}, rng));
    b.node("ReduceSum", {"x"});
    gradcheck(b.finish(), 1e-2);
  }
  {
    Builder b(13);  // x^b with a broadcast exponent; both gradients (positive base for d/db)
    b.input("x", random_tensor({2, 3}, rng, 0.5f, 2.0f));
    b.param("e", random_tensor({3}, rng, 0.5f, 3.0f));
    b.node("Pow", {"x", "e"});
    gradcheck(b.finish(), 1e-3);
  }
  {
    Builder b(13);
    b.input("x", random_tensor({2, 3}, rng, 0.5f, 2.0f));
    b.node("Sqrt", {"x"});
    gradcheck(b.finish(), 1e-3);
  }
}

TEST(Gradients, ShapeComputedReshapeAndFloatCast) {
  std::mt19937 rng(19);
  Builder b(13);
  b.input("x", random_tensor({2, 3, 4}, rng));
  b.param("w", random_tensor({4, 4}, rng));
  b.node("MatMul", {"x", "w"});
  const std::string y = b.m.graph.nodes.back().outputs[0];
  b.node("Shape", {y});
  const std::string shape = b.m.graph.nodes.back().outputs[0];
  b.param("s0", Tensor::from<int64_t>({1}, std::vector<int64_t>{0}), false);
  b.param("s1", Tensor::from<int64_t>({1}, std::vector<int64_t>{1}), false);
  b.node("Slice", {shape, "s0", "s1"});  // [2]
  const std::string n0 = b.m.graph.nodes.back().outputs[0];
  b.param("minus1", Tensor::from<int64_t>({1}, std::vector<int64_t>{-1}), false);
  b.node("Concat", {n0, "minus1"}).attrs["axis"] = int64_t{0};
  const std::string target = b.m.graph.nodes.back().outputs[0];
  b.node("Cast", {y}).attrs["to"] = int64_t{1};  // float32 -> float32
  b.node("Reshape", {b.m.graph.nodes.back().outputs[0], target});
  gradcheck(b.finish(), 1e-3);
}

TEST(Gradients, ResizeAndUpsampleEveryModeAndForm) {
  std::mt19937 rng(21);
  const auto f32 = [](std::vector<float> v) { return Tensor::from<float>({static_cast<int64_t>(v.size())}, v); };
  struct R {
    const char* what;
    int64_t opset;
    Shape x;
    std::string mode, coord, nearest = "round_prefer_floor";
    std::vector<float> scales;  // or
    std::vector<int64_t> sizes;
    std::vector<float> roi;
    bool exclude_outside = false;
  };
  const std::vector<R> cases = {
      // DBNet's FPN (PP-OCRv4 det): 2x nearest, asymmetric floor, scales input.
      {"nearest asymmetric floor x2", 11, {2, 3, 3, 4}, "nearest", "asymmetric", "floor", {1, 1, 2, 2}, {}, {}},
      {"nearest half_pixel, sizes down and up", 13, {1, 2, 5, 4}, "nearest", "half_pixel", "round_prefer_ceil", {}, {1, 2, 3, 7}, {}},
      {"linear half_pixel, sizes", 13, {1, 2, 5, 4}, "linear", "half_pixel", "", {}, {1, 2, 3, 7}, {}},
      {"linear align_corners", 13, {2, 1, 3, 3}, "linear", "align_corners", "", {1, 1, 2.5f, 1.5f}, {}, {}},
      {"cubic pytorch_half_pixel exclude_outside", 13, {1, 2, 4, 4}, "cubic", "pytorch_half_pixel", "", {1, 1, 1.5f, 0.75f}, {}, {}, true},
      // Outputs outside the crop are extrapolation_value: no gradient flows from them.
      {"linear tf_crop_and_resize", 13, {1, 1, 4, 5}, "linear", "tf_crop_and_resize", "", {}, {1, 1, 5, 6},
       {0, 0, -0.2f, 0.1f, 1, 1, 0.9f, 1.3f}},
      {"opset 10 linear", 10, {1, 2, 3, 4}, "linear", "", "", {1, 1, 2, 1.5f}, {}, {}},
  };
  for (const R& rc : cases) {
    Builder b(rc.opset);
    b.input("x", random_tensor(rc.x, rng));
    std::vector<std::string> ins{"x"};
    if (rc.opset >= 11) ins.push_back(rc.roi.empty() ? std::string() : b.param("roi", f32(rc.roi), false));
    ins.push_back(rc.scales.empty() ? std::string() : b.param("scales", f32(rc.scales), false));
    if (!rc.sizes.empty())
      ins.push_back(b.param("sizes", Tensor::from<int64_t>({static_cast<int64_t>(rc.sizes.size())}, rc.sizes), false));
    Node& n = b.node("Resize", ins);
    n.attrs["mode"] = rc.mode;
    if (rc.opset >= 11) {
      n.attrs["coordinate_transformation_mode"] = rc.coord;
      if (!rc.nearest.empty()) n.attrs["nearest_mode"] = rc.nearest;
      n.attrs["extrapolation_value"] = 0.25f;
      if (rc.exclude_outside) n.attrs["exclude_outside"] = int64_t{1};
    }
    SCOPED_TRACE(rc.what);
    gradcheck(b.finish(), 1e-2, 2e-2, 1000);  // every element of x
  }
  for (int64_t opset : {7, 9}) {
    Builder b(opset);
    b.input("x", random_tensor({1, 2, 3, 2}, rng));
    std::vector<std::string> ins{"x"};
    if (opset >= 9) ins.push_back(b.param("scales", f32({1, 1, 2, 3}), false));
    Node& n = b.node("Upsample", ins);
    n.attrs["mode"] = std::string(opset == 7 ? "linear" : "nearest");
    if (opset < 9) n.attrs["scales"] = std::vector<float>{1, 1, 2, 3};
    SCOPED_TRACE("Upsample opset " + std::to_string(opset));
    gradcheck(b.finish(), 1e-2, 2e-2, 1000);
  }
}

TEST(Gradients, ConvTransposeStridesGroupsPadsAndOutputShape) {
  std::mt19937 rng(22);
  struct C {
    const char* what;
    Shape x, w;
    std::vector<int64_t> strides, pads, dilations, output_padding, output_shape;
    int64_t group = 1;
    std::string auto_pad = "NOTSET";
  };
  const std::vector<C> cases = {
      {"DBNet's head: 2x2 stride 2", {2, 4, 3, 3}, {4, 3, 2, 2}, {2, 2}, {}, {}, {}, {}},
      {"groups, pads, dilation, output_padding", {1, 4, 4, 3}, {4, 2, 3, 3}, {2, 1}, {1, 0, 0, 1}, {2, 1}, {1, 0}, {}, 2},
      {"1-D", {2, 3, 5}, {3, 2, 3}, {2}, {1, 0}, {}, {}, {}},
      {"output_shape, SAME_UPPER split", {1, 2, 3, 3}, {2, 3, 3, 3}, {2, 2}, {}, {}, {}, {6, 5}, 1, "SAME_UPPER"},
  };
  for (const C& cc : cases) {
    Builder b(11);
    b.input("x", random_tensor(cc.x, rng));
    b.param("w", random_tensor(cc.w, rng));
    b.param("b", random_tensor({cc.w[1] * cc.group}, rng));
    Node& n = b.node("ConvTranspose", {"x", "w", "b"});
    n.attrs["strides"] = cc.strides;
    if (!cc.pads.empty()) n.attrs["pads"] = cc.pads;
    if (!cc.dilations.empty()) n.attrs["dilations"] = cc.dilations;
    if (!cc.output_padding.empty()) n.attrs["output_padding"] = cc.output_padding;
    if (!cc.output_shape.empty()) n.attrs["output_shape"] = cc.output_shape;
    n.attrs["group"] = cc.group;
    n.attrs["auto_pad"] = cc.auto_pad;
    SCOPED_TRACE(cc.what);
    gradcheck(b.finish(), 1e-2, 2e-2, 1000);
  }
  // An output_shape past the full size has no convolution twin: refused, naming the node.
  Builder b(11);
  b.input("x", random_tensor({1, 1, 2, 2}, rng));
  b.param("w", random_tensor({1, 1, 2, 2}, rng));
  Node& n = b.node("ConvTranspose", {"x", "w"});
  n.attrs["strides"] = std::vector<int64_t>{2, 2};
  n.attrs["output_shape"] = std::vector<int64_t>{7, 7};
  Case c = b.finish();
  Tape tape(c.model, c.params);
  TensorMap out = tape.forward(c.inputs, true);
  EXPECT_EQ(out.begin()->second.shape(), (Shape{1, 1, 7, 7}));
  try {
    tape.backward({{out.begin()->first, random_tensor({1, 1, 7, 7}, rng)}});
    ADD_FAILURE() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ConvTranspose"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no gradient"), std::string::npos) << e.what();
  }
}

TEST(Gradients, SoftmaxAxisSemanticsBeforeAndAfter13) {
  std::mt19937 rng(12);
  for (int64_t opset : {11, 13})
    for (const char* op : {"Softmax", "LogSoftmax"}) {
      Builder b(opset);
      b.input("x", random_tensor({2, 3, 4}, rng, -2.0f, 2.0f));
      b.node(op, {"x"}).attrs["axis"] = int64_t{1};
      SCOPED_TRACE(std::string(op) + " opset " + std::to_string(opset));
      gradcheck(b.finish(), 1e-3);
    }
}

TEST(Gradients, SharedWeightAccumulates) {
  // y = (x W) W: both uses of W contribute.
  std::mt19937 rng(13);
  Builder b;
  b.input("x", random_tensor({3, 4}, rng));
  b.param("w", random_tensor({4, 4}, rng));
  b.node("MatMul", {"x", "w"});
  b.node("MatMul", {b.m.graph.nodes.back().outputs[0], "w"});
  gradcheck(b.finish(), 1e-3);
}

TEST(Gradients, SoftmaxCrossEntropyMatchesFiniteDifferences) {
  std::mt19937 rng(14);
  Tensor logits = random_tensor({5, 7}, rng, -3.0f, 3.0f);
  std::vector<int64_t> labels{0, 6, 3, 3, 1};
  for (float eps : {0.0f, 0.1f}) {
    Tensor d;
    softmax_cross_entropy(logits, labels, &d, eps);
    for (int64_t i = 0; i < logits.numel(); ++i) {
      Tensor p = logits.clone(), m = logits.clone();
      p.data<float>()[i] += 1e-2f;
      m.data<float>()[i] -= 1e-2f;
      const double num = (softmax_cross_entropy(p, labels, nullptr, eps) - softmax_cross_entropy(m, labels, nullptr, eps)) / 2e-2;
      EXPECT_NEAR(d.data<float>()[i], num, 1e-4);
    }
  }
  // The loss itself against a direct double-precision formula.
  double expect = 0;
  for (int64_t i = 0; i < 5; ++i) {
    double z = 0;
    for (int64_t j = 0; j < 7; ++j) z += std::exp(static_cast<double>(logits.data<float>()[i * 7 + j]));
    expect += std::log(z) - logits.data<float>()[i * 7 + labels[static_cast<size_t>(i)]];
  }
  EXPECT_NEAR(softmax_cross_entropy(logits, labels, nullptr), expect / 5, 1e-9);
}

TEST(Tape, RefusesNodesWithoutGradientNamingThem) {
  Builder b;
  std::mt19937 rng(15);
  b.input("x", random_tensor({2, 3}, rng));
  b.param("w", random_tensor({3, 3}, rng));
  b.node("MatMul", {"x", "w"});
  b.node("Floor", {b.m.graph.nodes.back().outputs[0]});
  Case c = b.finish();
  const std::string err = test::perch_error([&] { Tape t(c.model, c.params); });
  test::expect_contains(err, {"no gradient", "Floor"});
}

// Per-channel Add/Mul constants (a layer norm's gamma and beta) are parameters; scalar ones (epsilon,
// HardSwish's 3 written out) are structure and stay fixed.
TEST(Tape, DefaultParametersSkipScalarConstants) {
  std::mt19937 rng(20);
  Builder b;
  b.input("x", random_tensor({2, 3}, rng));
  b.param("w", random_tensor({3, 3}, rng));
  b.param("gamma", random_tensor({3}, rng));
  b.param("eps", Tensor::from<float>({1}, std::vector<float>{1e-5f}));
  b.param("three", Tensor::scalar_f32(3.0f));
  b.node("MatMul", {"x", "w"});
  b.node("Mul", {b.m.graph.nodes.back().outputs[0], "gamma"});
  b.node("Add", {"eps", b.m.graph.nodes.back().outputs[0]});
  b.node("Add", {b.m.graph.nodes.back().outputs[0], "three"});
  Case c = b.finish();
  EXPECT_EQ(default_parameters(c.model), std::vector<std::string>({"w", "gamma"}));
}

TEST(Tape, UnknownParameterIsNamed) {
  Builder b;
  std::mt19937 rng(16);
  b.input("x", random_tensor({2, 3}, rng));
  b.node("Relu", {"x"});
  Case c = b.finish();
  test::expect_contains(test::perch_error([&] { Tape t(c.model, {"nope"}); }), {"nope", "not an initializer"});
}

}  // namespace
}  // namespace perch::train
