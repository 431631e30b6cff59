// Graph passes, checked by running the model before and after through runtime::Executor.
//
// fold_batchnorm tolerance. Let S = |b| + sum_i |w_i x_i| over a conv output's K = C/G*KH*KW terms,
// k = gamma / sqrt(var + eps), u = 2^-24, and T = |k| (S + |mean|) + |beta| (bounds every intermediate of both
// computations). Unfused: the conv's float sum is within gamma_{K+1} S of exact (any summation order), and
// BN's float k, offset, product and sum add a handful of roundings, each <= u * T. Fused: each folded weight
// and the folded bias are rounded once (<= u |k| S + u T in total), then the same K+1-term float sum. Both are
// therefore within B = (K + 8) u T of the double-precision value, and within 2B of each other. A wrong fold
// (missed eps, wrong channel, mean applied twice) is off by O(T), far above B for K < 10^4.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "graph_test_util.h"
#include "perch/graph/passes.h"
#include "perch/runtime/executor.h"

namespace perch::graph {
namespace {

using test::make_node;
using test::make_value;

std::vector<float> random_vec(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct ConvBnCase {
  const char* name;
  int64_t n, c, h, w, m, k, group, stride, pad;
  bool bias;
};

class FoldBatchNorm : public testing::TestWithParam<ConvBnCase> {};

TEST_P(FoldBatchNorm, SameOutputsWithinBoundAndBnRemoved) {
  const ConvBnCase p = GetParam();
  std::mt19937 rng(1234);
  const int64_t cg = p.c / p.group, mg = p.m / p.group, K = cg * p.k * p.k;
  const auto x = random_vec(rng, static_cast<size_t>(p.n * p.c * p.h * p.w), -2.0f, 2.0f);
  const auto W = random_vec(rng, static_cast<size_t>(p.m * K), -1.0f, 1.0f);
  const auto b = random_vec(rng, static_cast<size_t>(p.m), -0.5f, 0.5f);
  auto gamma = random_vec(rng, static_cast<size_t>(p.m), 0.2f, 3.0f);
  gamma[0] = -gamma[0];  // negative scales fold too
  const auto beta = random_vec(rng, static_cast<size_t>(p.m), -1.0f, 1.0f);
  const auto mean = random_vec(rng, static_cast<size_t>(p.m), -1.0f, 1.0f);
  auto var = random_vec(rng, static_cast<size_t>(p.m), 0.01f, 4.0f);
  var[p.m - 1] = 0.0f;  // epsilon alone keeps sqrt finite
  const float eps = 1e-3f;

  Model m;
  m.source = p.name;
  m.set_opset(13);
  Graph& g = m.graph;
  g.inputs = {make_value("x", {-1, p.c, p.h, p.w})};
  g.initializers["W"] = Tensor::from<float>({p.m, cg, p.k, p.k}, W);
  if (p.bias) g.initializers["B"] = Tensor::from<float>({p.m}, b);
  g.initializers["gamma"] = Tensor::from<float>({p.m}, gamma);
  g.initializers["beta"] = Tensor::from<float>({p.m}, beta);
  g.initializers["mean"] = Tensor::from<float>({p.m}, mean);
  g.initializers["var"] = Tensor::from<float>({p.m}, var);
  Node conv = make_node("Conv", p.bias ? std::vector<std::string>{"x", "W", "B"} : std::vector<std::string>{"x", "W"},
                        {"conv_out"}, "conv");
  conv.attrs["group"] = p.group;
  conv.attrs["strides"] = std::vector<int64_t>{p.stride, p.stride};
  conv.attrs["pads"] = std::vector<int64_t>{p.pad, p.pad, p.pad, p.pad};
  Node bn = make_node("BatchNormalization", {"conv_out", "gamma", "beta", "mean", "var"}, {"y"}, "bn");
  bn.attrs["epsilon"] = eps;
  g.nodes = {conv, bn};
  g.outputs = {make_value("y", {-1, p.m, -1, -1})};

  Model fused = m;
  ASSERT_EQ(fold_batchnorm(fused), 1);
  ASSERT_EQ(fused.graph.nodes.size(), 1u);
  const Node& fc = fused.graph.nodes[0];
  EXPECT_EQ(fc.op_type, "Conv");
  EXPECT_EQ(fc.outputs, std::vector<std::string>{"y"}) << "the conv must take over the BN's output name";
  ASSERT_EQ(fc.inputs.size(), 3u) << "a folded conv always has a bias";
  for (const char* gone : {"gamma", "beta", "mean", "var", "W"})
    EXPECT_FALSE(fused.graph.is_initializer(gone)) << gone << " should have been pruned";
  EXPECT_EQ(fused.graph.initializer(fc.inputs[1])->shape(), (Shape{p.m, cg, p.k, p.k}));

  const Tensor in = Tensor::from<float>({p.n, p.c, p.h, p.w}, x);
  const Tensor y0 = runtime::Executor(m).run1(in), y1 = runtime::Executor(fused).run1(in);
  const int64_t oh = (p.h + 2 * p.pad - p.k) / p.stride + 1, ow = (p.w + 2 * p.pad - p.k) / p.stride + 1;
  ASSERT_EQ(y0.shape(), (Shape{p.n, p.m, oh, ow}));
  ASSERT_EQ(y1.shape(), y0.shape());

  const double u = std::ldexp(1.0, -24);
  double worst_ratio = 0;  // largest |error| / bound seen, reported for calibration
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t o = 0; o < p.m; ++o) {
      const int64_t c0 = (o / mg) * cg;
      const double k = gamma[o] / std::sqrt(static_cast<double>(var[o]) + static_cast<double>(eps));
      for (int64_t i = 0; i < oh; ++i)
        for (int64_t j = 0; j < ow; ++j) {
          double acc = p.bias ? b[o] : 0.0, S = std::fabs(acc);
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < p.k; ++kh)
              for (int64_t kw = 0; kw < p.k; ++kw) {
                const int64_t ih = i * p.stride - p.pad + kh, iw = j * p.stride - p.pad + kw;
                if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
                const double t = static_cast<double>(x[((n * p.c + c0 + c) * p.h + ih) * p.w + iw]) *
                                 W[((o * cg + c) * p.k + kh) * p.k + kw];
                acc += t;
                S += std::fabs(t);
              }
          const double want = (acc - mean[o]) * k + beta[o];
          const double T = std::fabs(k) * (S + std::fabs(mean[o])) + std::fabs(beta[o]);
          const double B = static_cast<double>(K + 8) * u * T;
          const int64_t idx = ((n * p.m + o) * oh + i) * ow + j;
          const double a = y0.data<float>()[idx], f = y1.data<float>()[idx];
          ASSERT_LE(std::fabs(a - want), B) << "unfused at " << idx;
          ASSERT_LE(std::fabs(f - want), B) << "fused at " << idx;
          ASSERT_LE(std::fabs(f - a), 2 * B) << "fused vs unfused at " << idx;
          worst_ratio = std::max(worst_ratio, std::fabs(f - want) / B);
        }
    }
  RecordProperty("worst_error_over_bound", std::to_string(worst_ratio));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FoldBatchNorm,
    testing::Values(ConvBnCase{"dense_bias", 2, 3, 7, 6, 4, 3, 1, 1, 1, true},
                    ConvBnCase{"dense_nobias_stride2", 1, 8, 9, 9, 5, 3, 1, 2, 0, false},
                    ConvBnCase{"depthwise_x2_nobias", 2, 3, 6, 5, 6, 3, 3, 1, 1, false},
                    ConvBnCase{"grouped_1x1", 1, 4, 5, 5, 6, 1, 2, 1, 0, true}),
    [](const testing::TestParamInfo<ConvBnCase>& info) { return std::string(info.param.name); });

// Conv -> BN pairs that must NOT be folded: the model is left exactly as it was.
TEST(FoldBatchNorm, LeavesUnfoldableBnAlone) {
  auto base = [] {
    Model m;
    m.set_opset(13);
    Graph& g = m.graph;
    g.inputs = {make_value("x", {1, 2, 4, 4})};
    g.initializers["W"] = Tensor::from<float>({2, 2, 1, 1}, {1, 2, 3, 4});
    for (const char* p : {"gamma", "beta", "mean", "var"}) g.initializers[p] = Tensor::from<float>({2}, {1.0f, 0.5f});
    g.nodes = {make_node("Conv", {"x", "W"}, {"c"}, "conv"),
               make_node("BatchNormalization", {"c", "gamma", "beta", "mean", "var"}, {"y"}, "bn")};
    g.outputs = {make_value("y", {1, 2, 4, 4})};
    return m;
  };
  {  // the conv output is read by another node too
    Model m = base();
    m.graph.nodes.push_back(make_node("Relu", {"c"}, {"r"}, "relu"));
    m.graph.outputs.push_back(make_value("r", {1, 2, 4, 4}));
    EXPECT_EQ(fold_batchnorm(m), 0);
    EXPECT_EQ(m.graph.nodes.size(), 3u);
  }
  {  // the conv output is a graph output
    Model m = base();
    m.graph.outputs.push_back(make_value("c", {1, 2, 4, 4}));
    EXPECT_EQ(fold_batchnorm(m), 0);
  }
  {  // BN statistics computed at run time (not initializers)
    Model m = base();
    m.graph.initializers.erase("mean");
    m.graph.inputs.push_back(make_value("mean", {2}));
    EXPECT_EQ(fold_batchnorm(m), 0);
  }
  {  // the weight feeds a second conv: rescaling it would change that conv
    Model m = base();
    m.graph.nodes.push_back(make_node("Conv", {"x", "W"}, {"c2"}, "conv2"));
    m.graph.outputs.push_back(make_value("c2", {1, 2, 4, 4}));
    EXPECT_EQ(fold_batchnorm(m), 0);
    EXPECT_TRUE(m.graph.is_initializer("W"));
  }
  {  // BN after something that is not a Conv
    Model m = base();
    m.graph.nodes[0] = make_node("Relu", {"x"}, {"c"}, "relu");
    EXPECT_EQ(fold_batchnorm(m), 0);
  }
}

// fold_conv_affine: y = (conv(x, W) + b) * a + d with a, d per output channel (or scalars), against the same
// expression in double. Tolerance as fold_batchnorm's: with S = |b| + sum_i |w_i x_i| and T = |a| S + |d|
// (bounds every intermediate of both computations), the unfused float result has the conv's K+1-term sum
// (<= gamma_{K+1} S) and two roundings (<= 2 u T); the fused one rounds each a*W and a*b + d once (<= 2 u T in
// total) before the same sum. Both are within B = (K + 8) u T of exact. A wrong fold (scale on the wrong
// channel, shift scaled, bias dropped) is off by O(T).
struct ConvAffineCase {
  const char* name;
  int64_t n, c, h, w, m, k, group;
  bool bias;
  bool scale;
  Shape scale_shape;  // of the Mul's constant ({} = scalar)
  bool shift;
  Shape shift_shape;  // of the Add's constant
  bool scale_first;   // Mul(a, conv) instead of Mul(conv, a)
};

class FoldConvAffine : public testing::TestWithParam<ConvAffineCase> {};

TEST_P(FoldConvAffine, SameOutputsWithinBoundAndNodesRemoved) {
  const ConvAffineCase p = GetParam();
  std::mt19937 rng(99);
  const int64_t cg = p.c / p.group, mg = p.m / p.group, K = cg * p.k * p.k;
  const auto x = random_vec(rng, static_cast<size_t>(p.n * p.c * p.h * p.w), -2.0f, 2.0f);
  const auto W = random_vec(rng, static_cast<size_t>(p.m * K), -1.0f, 1.0f);
  const auto b = random_vec(rng, static_cast<size_t>(p.m), -0.5f, 0.5f);
  const bool has_scale = p.scale, has_shift = p.shift;
  auto numel = [](const Shape& s) { int64_t k = 1; for (auto d : s) k *= d; return k; };
  auto a = random_vec(rng, static_cast<size_t>(numel(p.scale_shape)), 0.3f, 3.0f);
  a[0] = -a[0];
  const auto d = random_vec(rng, static_cast<size_t>(numel(p.shift_shape)), -2.0f, 2.0f);
  auto at = [](const std::vector<float>& v, int64_t c) { return static_cast<double>(v.size() == 1 ? v[0] : v[c]); };

  Model m;
  m.source = p.name;
  m.set_opset(13);
  Graph& g = m.graph;
  g.inputs = {make_value("x", {-1, p.c, p.h, p.w})};
  g.initializers["W"] = Tensor::from<float>({p.m, cg, p.k, p.k}, W);
  if (p.bias) g.initializers["B"] = Tensor::from<float>({p.m}, b);
  Node conv = make_node("Conv", p.bias ? std::vector<std::string>{"x", "W", "B"} : std::vector<std::string>{"x", "W"},
                        {"conv_out"}, "conv");
  conv.attrs["group"] = p.group;
  const int64_t pad = p.k / 2;  // odd k: "same" output size
  conv.attrs["pads"] = std::vector<int64_t>{pad, pad, pad, pad};
  g.nodes = {conv};
  std::string cur = "conv_out";
  if (has_scale) {
    g.initializers["a"] = Tensor::from<float>(p.scale_shape, a);
    g.nodes.push_back(make_node("Mul", p.scale_first ? std::vector<std::string>{"a", cur} : std::vector<std::string>{cur, "a"},
                                {"scaled"}, "mul"));
    cur = "scaled";
  }
  if (has_shift) {
    g.initializers["d"] = Tensor::from<float>(p.shift_shape, d);
    g.nodes.push_back(make_node("Add", {cur, "d"}, {"shifted"}, "add"));
    cur = "shifted";
  }
  g.outputs = {make_value(cur, {-1, p.m, -1, -1})};

  Model fused = m;
  ASSERT_EQ(fold_conv_affine(fused), static_cast<int>(has_scale) + static_cast<int>(has_shift));
  ASSERT_EQ(fused.graph.nodes.size(), 1u);
  EXPECT_EQ(fused.graph.nodes[0].op_type, "Conv");
  EXPECT_EQ(fused.graph.nodes[0].outputs[0], cur) << "the conv takes over the last folded node's output name";
  for (const char* gone : {"a", "d"}) EXPECT_FALSE(fused.graph.is_initializer(gone));

  const Tensor in = Tensor::from<float>({p.n, p.c, p.h, p.w}, x);
  const Tensor y0 = runtime::Executor(m).run1(in), y1 = runtime::Executor(fused).run1(in);
  ASSERT_EQ(y0.shape(), (Shape{p.n, p.m, p.h, p.w}));
  ASSERT_EQ(y1.shape(), y0.shape());
  const double u = std::ldexp(1.0, -24);
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t o = 0; o < p.m; ++o) {
      const int64_t c0 = (o / mg) * cg;
      const double ao = has_scale ? at(a, o) : 1.0, dd = has_shift ? at(d, o) : 0.0;
      for (int64_t i = 0; i < p.h; ++i)
        for (int64_t j = 0; j < p.w; ++j) {
          double acc = p.bias ? b[o] : 0.0, S = std::fabs(acc);
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < p.k; ++kh)
              for (int64_t kw = 0; kw < p.k; ++kw) {
                const int64_t ih = i - pad + kh, iw = j - pad + kw;
                if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
                const double t = static_cast<double>(x[((n * p.c + c0 + c) * p.h + ih) * p.w + iw]) *
                                 W[((o * cg + c) * p.k + kh) * p.k + kw];
                acc += t;
                S += std::fabs(t);
              }
          const double want = acc * ao + dd;
          const double B = static_cast<double>(K + 8) * u * (std::fabs(ao) * S + std::fabs(dd));
          const int64_t idx = ((n * p.m + o) * p.h + i) * p.w + j;
          ASSERT_LE(std::fabs(y0.data<float>()[idx] - want), B) << "unfused at " << idx;
          ASSERT_LE(std::fabs(y1.data<float>()[idx] - want), B) << "fused at " << idx;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FoldConvAffine,
    testing::Values(ConvAffineCase{"scalar_scale_and_shift", 2, 3, 5, 4, 4, 3, 1, true, true, {}, true, {}, false},
                    ConvAffineCase{"channel_scale_first", 1, 4, 4, 4, 6, 3, 2, true, true, {1, 6, 1, 1}, true, {6, 1, 1}, true},
                    ConvAffineCase{"depthwise_scale_nobias", 1, 5, 4, 3, 5, 3, 5, false, true, {5, 1, 1}, false, {}, false},
                    ConvAffineCase{"shift_only_nobias", 2, 2, 3, 3, 3, 1, 1, false, false, {}, true, {1, 3, 1, 1}, false},
                    ConvAffineCase{"size1_constants", 1, 3, 4, 4, 2, 3, 1, true, true, {1}, true, {1, 1, 1, 1}, false}),
    [](const testing::TestParamInfo<ConvAffineCase>& info) { return std::string(info.param.name); });

// Mul/Add that must not be folded: the model is left exactly as it was.
TEST(FoldConvAffine, LeavesUnfoldableAlone) {
  auto base = [](const std::string& op, Shape cshape) {
    Model m;
    m.set_opset(13);
    Graph& g = m.graph;
    g.inputs = {make_value("x", {1, 2, 4, 4})};
    g.initializers["W"] = Tensor::from<float>({2, 2, 1, 1}, {1, 2, 3, 4});
    int64_t k = 1;
    for (auto d : cshape) k *= d;
    std::vector<float> v(static_cast<size_t>(k));
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f + static_cast<float>(i);
    g.initializers["k"] = Tensor::from<float>(cshape, v);
    g.nodes = {make_node("Conv", {"x", "W"}, {"c"}, "conv"), make_node(op, {"c", "k"}, {"y"}, "op")};
    g.outputs = {make_value("y", {1, 2, 4, 4})};
    return m;
  };
  auto unchanged = [](Model m, const char* what) {
    const Model before = m;
    EXPECT_EQ(fold_conv_affine(m), 0) << what;
    test::expect_same_model(m, before, what);
  };
  unchanged(base("Mul", {1, 1, 1, 4}), "varies along the width");
  unchanged(base("Add", {2, 1, 1, 1}), "varies along the batch axis");
  unchanged(base("Mul", {1, 1, 2, 1, 1}), "rank above the output's: would broadcast it");
  unchanged(base("Add", {3, 1, 1}), "channel count differs");
  unchanged(base("Div", {}), "Div is not folded");
  unchanged(base("Sub", {}), "Sub is not folded");
  {
    Model m = base("Mul", {});
    m.graph.nodes.push_back(make_node("Relu", {"c"}, {"r"}, "relu"));
    m.graph.outputs.push_back(make_value("r", {1, 2, 4, 4}));
    unchanged(m, "the conv output has another reader");
  }
  {
    Model m = base("Add", {});
    m.graph.outputs.push_back(make_value("c", {1, 2, 4, 4}));
    unchanged(m, "the conv output is a graph output");
  }
  {
    Model m = base("Mul", {});
    m.graph.nodes.push_back(make_node("Conv", {"x", "W"}, {"c2"}, "conv2"));
    m.graph.outputs.push_back(make_value("c2", {1, 2, 4, 4}));
    unchanged(m, "the weight feeds a second conv");
  }
  {
    Model m = base("Mul", {});
    m.graph.initializers.erase("k");
    m.graph.inputs.push_back(make_value("k", {}));
    unchanged(m, "the other operand is computed at run time");
  }
}

TEST(FoldConstantNodes, TensorConstantsBecomeInitializersOutputsUnchanged) {
  Model m;
  m.set_opset(13);
  Graph& g = m.graph;
  g.inputs = {make_value("x", {2, 3})};
  const Tensor cval = Tensor::from<float>({3}, {0.25f, -1.0f, 3.0f});
  Node c = make_node("Constant", {}, {"c"}, "const_c");
  c.attrs["value"] = cval;
  Node s = make_node("Constant", {}, {"s"}, "const_scalar");
  s.attrs["value_float"] = 2.0f;  // not a tensor attribute: stays a node (the executor evaluates it)
  Node k = make_node("Constant", {}, {"k"}, "const_out");
  k.attrs["value"] = Tensor::from<float>({1}, {7.0f});  // a graph output: stays a node
  g.nodes = {c, s, make_node("Add", {"x", "c"}, {"a"}, "add"), make_node("Mul", {"a", "s"}, {"y"}, "mul"), k};
  g.outputs = {make_value("y", {2, 3}), make_value("k", {1})};
  const Tensor in = Tensor::from<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  const auto before = runtime::Executor(m).run({{"x", in}});

  Model f = m;
  EXPECT_EQ(fold_constant_nodes(f), 1);
  ASSERT_TRUE(f.graph.is_initializer("c"));
  EXPECT_TRUE(test::same_tensor(*f.graph.initializer("c"), cval));
  std::vector<std::string> names;
  for (const auto& n : f.graph.nodes) names.push_back(n.name);
  EXPECT_EQ(names, (std::vector<std::string>{"const_scalar", "add", "mul", "const_out"}));
  const auto after = runtime::Executor(f).run({{"x", in}});
  EXPECT_TRUE(test::same_tensor(after.at("y"), before.at("y")));
  EXPECT_TRUE(test::same_tensor(after.at("k"), before.at("k")));
  for (int i = 0; i < 6; ++i)
    EXPECT_EQ(after.at("y").data<float>()[i], (in.data<float>()[i] + cval.data<float>()[i % 3]) * 2.0f);
}

TEST(RemoveIdentities, ChainsRewiredGraphOutputKept) {
  Model m;
  m.set_opset(13);
  Graph& g = m.graph;
  g.inputs = {make_value("x", {4})};
  g.initializers["w"] = Tensor::from<float>({4}, {1, -1, 2, -2});
  g.nodes = {make_node("Identity", {"x"}, {"a"}, "id1"), make_node("Identity", {"a"}, {"b"}, "id2"),
             make_node("Identity", {"w"}, {"wi"}, "id_w"), make_node("Mul", {"b", "wi"}, {"c"}, "mul"),
             make_node("Add", {"c", "a"}, {"d"}, "add"), make_node("Identity", {"d"}, {"y"}, "id_out")};
  g.outputs = {make_value("y", {4})};
  const Tensor in = Tensor::from<float>({4}, {0.5f, 1.5f, -2.0f, 3.0f});
  const Tensor before = runtime::Executor(m).run1(in);

  Model r = m;
  EXPECT_EQ(remove_identities(r), 3);
  ASSERT_EQ(r.graph.nodes.size(), 3u);
  EXPECT_EQ(r.graph.nodes[0].name, "mul");
  EXPECT_EQ(r.graph.nodes[0].inputs, (std::vector<std::string>{"x", "w"}));
  EXPECT_EQ(r.graph.nodes[1].inputs, (std::vector<std::string>{"c", "x"}));
  EXPECT_EQ(r.graph.nodes[2].name, "id_out") << "the Identity producing a graph output stays";
  const Tensor after = runtime::Executor(r).run1(in);
  EXPECT_TRUE(test::same_tensor(after, before));
  for (int i = 0; i < 4; ++i) {
    const float xv = in.data<float>()[i];
    EXPECT_EQ(after.data<float>()[i], xv * g.initializers.at("w").data<float>()[i] + xv);
  }
}

// Inference Dropout is an identity and goes like one; Dropout that may compute something (training mode, opset-6
// default is_test 0, a read mask) stays.
TEST(RemoveIdentities, InferenceDropoutGoesTrainingOrMaskedStays) {
  auto model = [](int64_t opset, std::vector<std::string> in, std::vector<std::string> out, bool mask_read) {
    Model m;
    m.set_opset(opset);
    Graph& g = m.graph;
    g.inputs = {make_value("x", {4})};
    g.initializers["w"] = Tensor::from<float>({4}, {1, -1, 2, -2});
    Tensor off(DType::kBool, {}), on(DType::kBool, {});
    off.data<bool>()[0] = false;
    on.data<bool>()[0] = true;
    g.initializers["off"] = off;
    g.initializers["on"] = on;
    g.nodes = {make_node("Dropout", std::move(in), std::move(out), "drop"), make_node("Mul", {"d", "w"}, {"y"}, "mul")};
    g.outputs = {make_value("y", {4})};
    if (mask_read) {
      g.nodes.push_back(make_node("Identity", {"mask"}, {"m"}, "mask_id"));
      g.outputs.push_back(make_value("m", {4}));
    }
    return m;
  };
  struct Case {
    Model m;
    int removed;
  };
  std::vector<Case> cases;
  cases.push_back({model(10, {"x"}, {"d"}, false), 1});
  cases.push_back({model(13, {"x", "", "off"}, {"d"}, false), 1});
  cases.push_back({model(13, {"x"}, {"d", "mask"}, false), 1});  // a mask nobody reads
  cases.push_back({model(13, {"x", "", "on"}, {"d"}, false), 0});
  cases.push_back({model(10, {"x"}, {"d", "mask"}, true), 0});
  Model old = model(6, {"x"}, {"d"}, false);
  cases.push_back({old, 0});  // Dropout-6 defaults to is_test 0
  old.graph.nodes[0].attrs["is_test"] = int64_t{1};
  cases.push_back({old, 1});
  for (auto& c : cases) {
    EXPECT_EQ(remove_identities(c.m), c.removed) << c.m.opset();
    if (c.removed) {
      EXPECT_EQ(c.m.graph.nodes[0].op_type, "Mul");
      EXPECT_EQ(c.m.graph.nodes[0].inputs[0], "x");
    }
  }
}

// A float16 model widened to float32: initializers (exactly), tensor attributes, declared types and the casts to
// float16 (Cast's code 10, Cast-1's "FLOAT16"); the widened model computes the float16 model's function without its
// roundings: its output is the float32 sum of the widened values, which the float16 model then rounds.
TEST(UpcastFloat16, WidensValuesTypesAndCasts) {
  Model m;
  m.set_opset(13);
  m.graph.inputs.push_back({"x", DType::kFloat16, {2}, {""}, true});
  m.graph.outputs.push_back({"y", DType::kFloat16, {2}, {""}, true});
  m.graph.initializers["k"] = Tensor::from<Half>({2}, {Half{0x3c01}, Half{0x7bff}});  // 1 + 2^-10, 65504
  Node c = make_node("Constant", {}, {"c"});
  c.attrs["value"] = Tensor::from<Half>({2}, {Half{0x3800}, Half{0x3800}});  // 0.5
  Node add1 = make_node("Add", {"x", "k"}, {"s"});
  Node add2 = make_node("Add", {"s", "c"}, {"t"});
  Node cast = make_node("Cast", {"t"}, {"y"});
  cast.attrs["to"] = int64_t{10};
  m.graph.nodes = {c, add1, add2, cast};
  const Tensor x = Tensor::from<Half>({2}, {Half{0x3c00}, Half{0x3c00}});  // 1
  const Tensor y16 = runtime::Executor(m).run({{"x", x}}).at("y");
  Model w = m;
  EXPECT_EQ(upcast_float16(w), 5);  // k, the Constant's value, x, y, and the Cast
  EXPECT_EQ(upcast_float16(w), 0);
  EXPECT_EQ(w.graph.initializers.at("k").dtype(), DType::kFloat32);
  EXPECT_EQ(w.graph.initializers.at("k").data<float>()[0], 1.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(std::get<int64_t>(w.graph.nodes[3].attrs.at("to")), 1);
  const Tensor y32 = runtime::Executor(w).run({{"x", x.to_f32()}}).at("y");
  ASSERT_EQ(y32.dtype(), DType::kFloat32);
  EXPECT_EQ(y32.data<float>()[0], 2.5f + std::ldexp(1.0f, -10));  // float16 rounds it to 2.5 (a tie, to even)
  EXPECT_EQ(y16.to_f32().data<float>()[0], 2.5f);
  EXPECT_EQ(y32.data<float>()[1], 65505.5f);
  EXPECT_EQ(y16.to_f32().data<float>()[1], 65504.0f);  // float16: 65505 -> 65504, then 65504.5 -> 65504
  Model legacy = m;
  legacy.set_opset(5);
  legacy.graph.nodes[3].attrs["to"] = std::string("FLOAT16");
  EXPECT_EQ(upcast_float16(legacy), 5);
  EXPECT_EQ(std::get<std::string>(legacy.graph.nodes[3].attrs.at("to")), "FLOAT");
}

// Subgraphs widen too — as copies: a model sharing the subgraph (a copy made before) keeps its float16 one.
TEST(UpcastFloat16, WidensInsideSubgraphs) {
  auto then_g = std::make_shared<Graph>();
  then_g->name = "then";
  then_g->initializers["k"] = Tensor::from<Half>({2}, {Half{0x3c01}, Half{0x3800}});  // 1 + 2^-10, 0.5
  then_g->nodes = {make_node("Add", {"x", "k"}, {"t"})};
  then_g->outputs = {{"t", DType::kFloat16, {}, {}, false}};
  auto else_g = std::make_shared<Graph>();
  else_g->name = "else";
  else_g->nodes = {make_node("Neg", {"x"}, {"e"})};
  else_g->outputs = {{"e", DType::kFloat16, {}, {}, false}};
  Model m;
  m.set_opset(13);
  m.graph.inputs.push_back({"x", DType::kFloat16, {2}, {""}, true});
  m.graph.inputs.push_back({"cond", DType::kBool, {}, {}, true});
  m.graph.outputs.push_back({"y", DType::kFloat16, {2}, {""}, true});
  Node iff = make_node("If", {"cond", "x"}, {"y"});
  iff.captured = {"x"};
  iff.attrs["then_branch"] = GraphRef(then_g);
  iff.attrs["else_branch"] = GraphRef(else_g);
  m.graph.nodes = {iff};
  Model w = m;
  EXPECT_EQ(upcast_float16(w), 5);  // x, y; then's k and t; else's e
  EXPECT_EQ(w.graph.nodes[0].attr_graph("then_branch")->initializers.at("k").dtype(), DType::kFloat32);
  EXPECT_EQ(m.graph.nodes[0].attr_graph("then_branch")->initializers.at("k").dtype(), DType::kFloat16);
  Tensor cond(DType::kBool, {});
  cond.data<bool>()[0] = true;
  const Tensor y = runtime::Executor(w).run({{"x", Tensor::from<float>({2}, {1.0f, 2.0f})}, {"cond", cond}}).at("y");
  ASSERT_EQ(y.dtype(), DType::kFloat32);
  EXPECT_EQ(y.data<float>()[0], 2.0f + std::ldexp(1.0f, -10));
  EXPECT_EQ(y.data<float>()[1], 2.5f);
}

TEST(Canonicalize, RunsAllPassesAndSummarizes) {
  Model m;
  m.set_opset(13);
  Graph& g = m.graph;
  g.inputs = {make_value("x", {1, 1, 3, 3})};
  Node w = make_node("Constant", {}, {"W"}, "wconst");
  w.attrs["value"] = Tensor::from<float>({1, 1, 1, 1}, {2.0f});
  for (const char* p : {"gamma", "beta", "mean", "var"}) g.initializers[p] = Tensor::from<float>({1}, {1.0f});
  g.nodes = {w, make_node("Identity", {"x"}, {"xi"}, "id"), make_node("Conv", {"xi", "W"}, {"c"}, "conv"),
             make_node("BatchNormalization", {"c", "gamma", "beta", "mean", "var"}, {"y"}, "bn")};
  g.outputs = {make_value("y", {1, 1, 3, 3})};
  const std::string s = canonicalize(m);
  EXPECT_EQ(s, "folded 1 BatchNormalization, 1 Constant; removed 1 Identity/Dropout");
  ASSERT_EQ(m.graph.nodes.size(), 1u);
  EXPECT_EQ(m.graph.nodes[0].op_type, "Conv");
  EXPECT_EQ(m.graph.nodes[0].inputs[0], "x");
}

}  // namespace
}  // namespace perch::graph
