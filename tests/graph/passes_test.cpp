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
  EXPECT_EQ(s, "folded 1 BatchNormalization, 1 Constant; removed 1 Identity");
  ASSERT_EQ(m.graph.nodes.size(), 1u);
  EXPECT_EQ(m.graph.nodes[0].op_type, "Conv");
  EXPECT_EQ(m.graph.nodes[0].inputs[0], "x");
}

}  // namespace
}  // namespace perch::graph
