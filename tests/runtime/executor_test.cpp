// runtime::Executor's contract outside the ONNX node tests: unsupported ops are all named at construction,
// bad inputs are named with what was expected, node errors name the node, and the observer / extra-output
// hooks the quantizer's calibration relies on see every value.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "perch/core/cpu.h"
#include "perch/core/threads.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

namespace perch::runtime {
namespace {

using graph::Model;
using graph::Node;
using graph::ValueInfo;

Node node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out, const std::string& name = "",
          const std::string& domain = "") {
  Node n;
  n.op_type = op;
  n.name = name;
  n.domain = domain;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

ValueInfo value(const std::string& name, Shape shape, DType dt = DType::kFloat32) {
  ValueInfo v;
  v.name = name;
  v.dtype = dt;
  v.shape = std::move(shape);
  v.has_shape = true;
  return v;
}

Model model_of(std::vector<Node> nodes, std::vector<ValueInfo> inputs, std::vector<ValueInfo> outputs, int64_t opset = 13) {
  Model m;
  m.source = "unit_test_model.onnx";
  m.graph.name = "g";
  m.graph.nodes = std::move(nodes);
  m.graph.inputs = std::move(inputs);
  m.graph.outputs = std::move(outputs);
  m.set_opset(opset);
  return m;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Executor, UnsupportedOpsAreAllNamedWithCounts) {
  Model m = model_of({node("Foo", {"x"}, {"a"}), node("Relu", {"a"}, {"b"}), node("Bar", {"b"}, {"c"}),
                      node("Foo", {"c"}, {"d"}), node("Gelu", {"d"}, {"y"}, "", "com.microsoft")},
                     {value("x", {-1, 3})}, {value("y", {-1, 3})});
  EXPECT_EQ(unsupported_ops(m), (std::vector<std::string>{"Bar (x1)", "Foo (x2)", "com.microsoft::Gelu (x1)"}));
  const std::string e = error_of([&] { Executor ex(m); });
  ASSERT_NE(e, "") << "construction must refuse unsupported ops";
  for (const char* want : {"unit_test_model.onnx", "Foo (x2)", "Bar (x1)", "com.microsoft::Gelu (x1)", "opset 13"})
    EXPECT_NE(e.find(want), std::string::npos) << "missing '" << want << "' in: " << e;
  EXPECT_EQ(e.find("Relu"), std::string::npos) << "a supported op is listed: " << e;
}

TEST(Executor, OpsAreGatedByOpset) {
  // HardSwish exists from opset 14; at 13 the same model must be refused, naming it.
  auto make = [](int64_t opset) {
    return model_of({node("HardSwish", {"x"}, {"y"})}, {value("x", {2})}, {value("y", {2})}, opset);
  };
  EXPECT_EQ(unsupported_ops(make(13)), std::vector<std::string>{"HardSwish (x1)"});
  EXPECT_TRUE(unsupported_ops(make(14)).empty());
  Executor ex(make(14));
  const Tensor y = ex.run1(Tensor::from<float>({2}, {-3.0f, 1.0f}));
  EXPECT_EQ(y.data<float>()[0], 0.0f);                 // x <= -3 -> 0
  EXPECT_FLOAT_EQ(y.data<float>()[1], 1.0f * (1.0f / 6.0f + 0.5f));  // x * (x/6 + 1/2)
}

class ExecutorInputs : public testing::Test {
 protected:
  Executor ex{model_of({node("Relu", {"pixels"}, {"y"}, "relu1")}, {value("pixels", {-1, 3})}, {value("y", {-1, 3})})};
};

TEST_F(ExecutorInputs, AnyBatchSizeRuns) {
  for (int64_t n : {1, 5}) {
    std::vector<float> v(static_cast<size_t>(3 * n));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) - 4.0f;
    const Tensor y = ex.run1(Tensor::from<float>({n, 3}, v));
    ASSERT_EQ(y.shape(), (Shape{n, 3}));
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(y.data<float>()[i], std::max(v[i], 0.0f));
  }
}

TEST_F(ExecutorInputs, WrongShapeNamesTheInputAndBothShapes) {
  const std::string e = error_of([&] { ex.run1(Tensor(DType::kFloat32, {2, 4})); });
  for (const char* want : {"unit_test_model.onnx", "'pixels'", "[2,4]", "[-1,3]"})
    EXPECT_NE(e.find(want), std::string::npos) << "missing '" << want << "' in: " << e;
  const std::string r = error_of([&] { ex.run1(Tensor(DType::kFloat32, {2, 3, 1})); });
  EXPECT_NE(r.find("'pixels'"), std::string::npos) << r;
  EXPECT_NE(r.find("[2,3,1]"), std::string::npos) << r;
}

TEST_F(ExecutorInputs, WrongDtypeNamesTheInputAndBothTypes) {
  const std::string e = error_of([&] { ex.run1(Tensor(DType::kInt64, {2, 3})); });
  for (const char* want : {"'pixels'", "float32", "int64"})
    EXPECT_NE(e.find(want), std::string::npos) << "missing '" << want << "' in: " << e;
}

TEST_F(ExecutorInputs, MissingInputIsNamed) {
  const std::string e = error_of([&] { ex.run({{"pixel", Tensor(DType::kFloat32, {1, 3})}}); });
  EXPECT_NE(e.find("'pixels'"), std::string::npos) << e;
}

TEST(Executor, NodeErrorsNameTheNode) {
  Model m = model_of({node("Gemm", {"a", "b"}, {"y"}, "fc_mismatch")}, {value("a", {2, 3}), value("b", {4, 5})},
                     {value("y", {2, 5})});
  Executor ex(m);
  const std::string e =
      error_of([&] { ex.run({{"a", Tensor(DType::kFloat32, {2, 3})}, {"b", Tensor(DType::kFloat32, {4, 5})}}); });
  EXPECT_NE(e.find("Gemm node 'fc_mismatch'"), std::string::npos) << e;
  EXPECT_NE(e.find("inner dimensions"), std::string::npos) << e;
}

TEST(Executor, KernelLargerThanPaddedInputIsRefused) {
  // Width 2, kernel 3, stride 2: (2 - 3) / 2 truncates to 0, which would make one output; ONNX says none.
  Model conv = model_of({node("Conv", {"x", "w"}, {"y"}, "too_wide")}, {value("x", {1, 1, 2, 2}), value("w", {1, 1, 3, 3})},
                        {value("y", {1, 1, -1, -1})});
  graph::Node& c = conv.graph.nodes[0];
  c.attrs["strides"] = std::vector<int64_t>{2, 2};
  const std::string e = error_of([&] {
    Executor(conv).run({{"x", Tensor(DType::kFloat32, {1, 1, 2, 2})}, {"w", Tensor(DType::kFloat32, {1, 1, 3, 3})}});
  });
  EXPECT_NE(e.find("Conv node 'too_wide'"), std::string::npos) << e;
  EXPECT_NE(e.find("too small"), std::string::npos) << e;
  Model pool = model_of({node("MaxPool", {"x"}, {"y"}, "dilated")}, {value("x", {1, 1, 1, 4})}, {value("y", {1, 1, -1, -1})});
  pool.graph.nodes[0].attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  pool.graph.nodes[0].attrs["dilations"] = std::vector<int64_t>{2, 1};
  pool.graph.nodes[0].attrs["strides"] = std::vector<int64_t>{2, 1};
  const std::string p = error_of([&] { Executor(pool).run1(Tensor(DType::kFloat32, {1, 1, 1, 4})); });
  EXPECT_NE(p.find("MaxPool node 'dilated'"), std::string::npos) << p;
  EXPECT_NE(p.find("too small"), std::string::npos) << p;
}

TEST(Executor, ObserverAndExtraOutputsSeeIntermediates) {
  // x -> Neg -> a -> Relu -> b -> Add(b, x) -> y: 'a' and 'b' are freed after their last reader unless asked for.
  Model m = model_of({node("Neg", {"x"}, {"a"}), node("Relu", {"a"}, {"b"}), node("Add", {"b", "x"}, {"y"})},
                     {value("x", {4})}, {value("y", {4})});
  Executor ex(m);
  const Tensor x = Tensor::from<float>({4}, {-2.0f, -0.5f, 0.0f, 3.0f});
  std::vector<std::string> seen;
  auto out = ex.run({{"x", x}}, [&](const std::string& v, const Tensor&) { seen.push_back(v); }, {"a", "b"});
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "y"}));
  ASSERT_EQ(out.count("a"), 1u);
  ASSERT_EQ(out.count("b"), 1u);
  for (int i = 0; i < 4; ++i) {
    const float xv = x.data<float>()[i];
    EXPECT_EQ(out.at("a").data<float>()[i], -xv);
    EXPECT_EQ(out.at("b").data<float>()[i], std::max(-xv, 0.0f));
    EXPECT_EQ(out.at("y").data<float>()[i], std::max(-xv, 0.0f) + xv);
  }
  const std::string e = error_of([&] { ex.run({{"x", x}}, nullptr, {"nope"}); });
  EXPECT_NE(e.find("'nope'"), std::string::npos) << e;
}

TEST(Executor, CachedRunsComputeOnlyWhatTheOutputsStillNeed) {
  // x -> Neg -> a -> Relu -> b -> Add(b, x) -> y, and a dead branch x -> Abs -> d.
  Model m = model_of({node("Neg", {"x"}, {"a"}), node("Abs", {"x"}, {"d"}), node("Relu", {"a"}, {"b"}),
                      node("Add", {"b", "x"}, {"y"})},
                     {value("x", {4})}, {value("y", {4})});
  Executor ex(m);
  const Tensor x = Tensor::from<float>({4}, {-2.0f, -0.5f, 0.0f, 3.0f});
  const Tensor b_given = Tensor::from<float>({4}, {10.0f, 20.0f, 30.0f, 40.0f});  // not what Relu would give
  std::vector<std::string> ran;
  auto seen = [&](const std::string& v, const Tensor&) { ran.push_back(v); };
  // With b known, neither Neg nor Relu is needed (nor the dead Abs): only the Add runs, on the given b.
  auto out = ex.run_cached({{"x", x}}, {{"b", b_given}}, seen);
  EXPECT_EQ(ran, (std::vector<std::string>{"y"}));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out.at("y").data<float>()[i], b_given.data<float>()[i] + x.data<float>()[i]);
  // Without known values every node the output depends on runs, the dead branch still does not.
  ran.clear();
  out = ex.run_cached({{"x", x}}, {}, seen);
  EXPECT_EQ(ran, (std::vector<std::string>{"a", "b", "y"}));
  EXPECT_EQ(out.at("y").data<float>()[0], 2.0f - 2.0f);
  // run_for: only the requested values, from what is known; the graph output is not computed.
  auto part = ex.run_for({{"x", x}}, {}, {"a"});
  ASSERT_EQ(part.size(), 1u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(part.at("a").data<float>()[i], -x.data<float>()[i]);
  part = ex.run_for({{"x", x}}, {{"a", b_given}}, {"b", "d"});
  ASSERT_EQ(part.size(), 2u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(part.at("b").data<float>()[i], b_given.data<float>()[i]);  // Relu of the given a
    EXPECT_EQ(part.at("d").data<float>()[i], std::fabs(x.data<float>()[i]));
  }
  const std::string e = error_of([&] { ex.run_for({{"x", x}}, {}, {"nope"}); });
  EXPECT_NE(e.find("'nope'"), std::string::npos) << e;
}

TEST(Executor, GraphWithoutInputsRunsButRun1Refuses) {
  Node c = node("Constant", {}, {"y"});
  c.attrs["value"] = Tensor::from<float>({2}, {1.5f, -2.0f});
  Executor ex(model_of({c}, {}, {value("y", {2})}));
  const auto out = ex.run({});
  ASSERT_EQ(out.at("y").shape(), Shape{2});
  EXPECT_EQ(out.at("y").data<float>()[1], -2.0f);
  const std::string e = error_of([&] { ex.run1(Tensor(DType::kFloat32, {2})); });
  EXPECT_NE(e.find("unit_test_model.onnx"), std::string::npos) << e;
}

// ConvTranspose, float32 1-D/2-D: the optimized path (kernels::conv2d_backward_data: GEMM + col2im) against the
// same node on float64 data (the reference loop, accumulating in double) over random geometry — groups (1, 2,
// one channel per group), strides, dilations, pads, output_padding, output_shape (also past the full size:
// the loop's fallback) and auto_pad — within the float accumulation bound terms * 2^-22 * sum |x w| per output;
// PERCH_PATHS=reference gives the loop on float32 too (compared the same way).
TEST(Executor, ConvTransposeOptimizedMatchesDoubleReference) {
  std::mt19937 rng(41);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int cases = 0;
  for (int it = 0; it < 60; ++it) {
    const int r = it % 3 == 0 ? 1 : 2;
    int64_t group = it % 4 == 1 ? 2 : 1, mg = pick(1, 3);
    int64_t cg = it % 5 == 2 ? 1 : pick(1, 4);
    int64_t C = cg * group, M = mg * group;
    if (it % 7 == 3) C = M = group = pick(2, 5), mg = cg = 1;  // one channel per group (depthwise-like)
    Node n = node("ConvTranspose", {"x", "w", "b"}, {"y"}, "ct");
    std::vector<int64_t> k(r), s(r), d(r), op(r), pads(2 * r), in(r);
    for (int i = 0; i < r; ++i) {
      k[i] = pick(1, 4), s[i] = pick(1, 3), d[i] = pick(1, 2), in[i] = pick(1, 7);
      op[i] = pick(0, std::max<int64_t>(s[i], d[i]) - 1);
      pads[i] = pick(0, 2), pads[i + r] = pick(0, 2);
    }
    n.attrs["kernel_shape"] = k, n.attrs["strides"] = s, n.attrs["dilations"] = d, n.attrs["group"] = group;
    const int form = pick(0, 3);  // 0, 1: pads + output_padding; 2: output_shape; 3: auto_pad SAME_UPPER
    if (form <= 1) {
      n.attrs["pads"] = pads, n.attrs["output_padding"] = op;
    } else if (form == 2) {
      std::vector<int64_t> os(r);
      for (int i = 0; i < r; ++i) os[i] = s[i] * (in[i] - 1) + (k[i] - 1) * d[i] + 1 + pick(-2, 2);
      bool ok = true;
      for (auto v : os) ok = ok && v > 0;
      if (!ok) continue;
      n.attrs["output_shape"] = os;
    } else {
      n.attrs["auto_pad"] = std::string("SAME_UPPER");
    }
    Shape xs{2, C}, ws{C, mg};
    for (int i = 0; i < r; ++i) xs.push_back(in[i]), ws.push_back(k[i]);
    Tensor x(DType::kFloat32, xs), w(DType::kFloat32, ws), b(DType::kFloat32, {M});
    for (auto& v : x.span<float>()) v = nd(rng);
    for (auto& v : w.span<float>()) v = nd(rng);
    for (auto& v : b.span<float>()) v = nd(rng);
    auto as = [](const Tensor& t, DType dt, bool absolute) {
      Tensor o(dt, t.shape());
      for (int64_t i = 0; i < t.numel(); ++i) {
        const double v = absolute ? std::fabs(t.data<float>()[i]) : t.data<float>()[i];
        if (dt == DType::kFloat64) o.data<double>()[i] = v;
        else o.data<float>()[i] = static_cast<float>(v);
      }
      return o;
    };
    auto run = [&](DType dt, bool absolute) {
      Model m = model_of({n}, {value("x", xs, dt)}, {value("y", {}, dt)});
      m.graph.initializers["w"] = as(w, dt, absolute), m.graph.initializers["b"] = as(b, dt, absolute);
      return Executor(m).run({{"x", as(x, dt, absolute)}}).at("y");
    };
    Tensor fast, loop32;
    try {
      fast = run(DType::kFloat32, false);
    } catch (const Error&) {
      continue;  // a random geometry ONNX does not allow (no output left by the pads)
    }
    const Tensor want = run(DType::kFloat64, false), mag = run(DType::kFloat64, true);
    set_paths_for_testing(static_cast<uint32_t>(Path::kReference));
    loop32 = run(DType::kFloat32, false);
    set_paths_for_testing(0);
    ASSERT_EQ(fast.shape(), want.shape());
    ASSERT_EQ(loop32.shape(), want.shape());
    const double terms = static_cast<double>(cg * (r == 2 ? k[0] * k[1] : k[0]) + 1);
    for (int64_t i = 0; i < want.numel(); ++i) {
      const double tol = terms * std::ldexp(1.0, -22) * mag.data<double>()[i] + 1e-30;
      ASSERT_NEAR(fast.data<float>()[i], want.data<double>()[i], tol) << "case " << it << " element " << i;
      ASSERT_NEAR(loop32.data<float>()[i], want.data<double>()[i], tol) << "case " << it << " (loop) element " << i;
    }
    ++cases;
  }
  EXPECT_GE(cases, 40);
}

// Resize in nearest mode is a gather of input elements in the input's own type: int64 values beyond 2^53 and uint8
// come out exact (2x upsampling, asymmetric / floor: y[n, c, i, j] = x[n, c, i / 2, j / 2]; and 3x along W only).
TEST(Executor, ResizeNearestIsAnExactGatherForEveryType) {
  for (DType dt : {DType::kInt64, DType::kUInt8, DType::kFloat32}) {
    for (int variant = 0; variant < 2; ++variant) {
      const std::vector<float> sc = variant == 0 ? std::vector<float>{1, 1, 2, 2} : std::vector<float>{1, 1, 1, 3};
      Node n = node("Resize", {"x", "", "scales"}, {"y"}, "rs");
      n.attrs["mode"] = std::string("nearest");
      n.attrs["coordinate_transformation_mode"] = std::string("asymmetric");
      n.attrs["nearest_mode"] = std::string("floor");
      Model m = model_of({n}, {value("x", {2, 3, 4, 5}, dt)}, {value("y", {}, dt)});
      m.graph.initializers["scales"] = Tensor::from<float>({4}, sc);
      Tensor x(dt, {2, 3, 4, 5});
      for (int64_t i = 0; i < x.numel(); ++i) {
        if (dt == DType::kInt64) x.data<int64_t>()[i] = (int64_t{1} << 60) + 2 * i + 1;  // not representable in double
        else if (dt == DType::kUInt8) x.data<uint8_t>()[i] = static_cast<uint8_t>(i * 37);
        else x.data<float>()[i] = 0.1f * static_cast<float>(i) - 3.0f;
      }
      const Tensor y = Executor(m).run({{"x", x}}).at("y");
      const int64_t oh = 4 * static_cast<int64_t>(sc[2]), ow = 5 * static_cast<int64_t>(sc[3]);
      ASSERT_EQ(y.shape(), (Shape{2, 3, oh, ow}));
      for (int64_t p = 0; p < 6; ++p)
        for (int64_t i = 0; i < oh; ++i)
          for (int64_t j = 0; j < ow; ++j) {
            const int64_t src = p * 20 + (i / static_cast<int64_t>(sc[2])) * 5 + j / static_cast<int64_t>(sc[3]);
            const int64_t dst = (p * oh + i) * ow + j;
            if (dt == DType::kInt64) ASSERT_EQ(y.data<int64_t>()[dst], x.data<int64_t>()[src]);
            else if (dt == DType::kUInt8) ASSERT_EQ(y.data<uint8_t>()[dst], x.data<uint8_t>()[src]);
            else ASSERT_EQ(y.data<float>()[dst], x.data<float>()[src]);
          }
    }
  }
}

// Broadcasting binary ops against the NumPy rule written out here, over shapes whose dims the kernel merges (both
// inputs contiguous, or broadcast, across neighbours) or cannot merge, unit dims anywhere, scalars on either side.
TEST(Executor, BroadcastingMatchesTheNumpyRule) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 4, 5}, {2, 3, 1, 1}}, {{2, 3, 4, 5}, {1, 3, 1, 5}}, {{2, 3, 4, 5}, {2, 1, 4, 1}}, {{2, 3, 4, 5}, {5}},
      {{2, 3, 4, 5}, {4, 1}},       {{1, 3, 1, 5}, {2, 1, 4, 1}}, {{2, 1, 1, 5}, {1, 3, 4, 1}}, {{3, 1}, {1, 4}},
      {{2, 3, 4, 5}, {1}},          {{1}, {2, 3, 4, 5}},          {{1, 1, 4, 5}, {2, 3, 1, 1}}, {{6, 1, 7}, {6, 5, 7}}};
  for (const auto& [as, bs] : cases) {
    Node n = node("Sub", {"a", "b"}, {"y"}, "sub");  // not commutative: operand order is checked too
    Model m = model_of({n}, {value("a", as), value("b", bs)}, {value("y", {})});
    Tensor a(DType::kFloat32, as), b(DType::kFloat32, bs);
    for (int64_t i = 0; i < a.numel(); ++i) a.data<float>()[i] = static_cast<float>(i) * 0.5f;
    for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = static_cast<float>(i * i % 97);
    const Tensor y = Executor(m).run({{"a", a}, {"b", b}}).at("y");
    const size_t r = std::max(as.size(), bs.size());
    Shape ys(r);
    auto dim = [&](const Shape& s, size_t d) { return d + s.size() < r ? int64_t{1} : s[d + s.size() - r]; };
    for (size_t d = 0; d < r; ++d) ys[d] = std::max(dim(as, d), dim(bs, d));
    ASSERT_EQ(y.shape(), ys);
    std::vector<int64_t> idx(r, 0);
    for (int64_t i = 0; i < y.numel(); ++i) {
      int64_t rem = i;
      for (size_t d = r; d-- > 0;) idx[d] = rem % ys[d], rem /= ys[d];
      auto flat = [&](const Shape& s) {
        int64_t off = 0;
        for (size_t d = 0; d < r; ++d) off = off * dim(s, d) + (dim(s, d) == 1 ? 0 : idx[d]);
        return off;
      };
      ASSERT_EQ(y.data<float>()[i], a.data<float>()[flat(as)] - b.data<float>()[flat(bs)])
          << shape_str(as) << " - " << shape_str(bs) << " at " << i;
    }
  }
}

// --- Fused element-wise chains (runtime/elementwise_chain.h) ---------------------------------------------------

Tensor scalar_tensor(float v, Shape shape) {
  Tensor t(DType::kFloat32, std::move(shape));
  t.data<float>()[0] = v;
  return t;
}

Node constant_node(const std::string& out, const graph::AttrValue& v, const std::string& key) {
  Node n = node("Constant", {}, {out});
  n.attrs[key] = v;
  return n;
}

// Inputs with every special value the steps can meet: NaN, ±inf, -0, denormals, values on Clip's bounds.
Tensor chain_input(Shape shape, uint32_t seed) {
  Tensor x(DType::kFloat32, std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 4.0f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = d(rng);
  const float specials[] = {std::nanf(""), INFINITY, -INFINITY, -0.0f, 0.0f, 1e-40f, -1e-40f, -3.0f, 3.0f, 6.0f};
  for (size_t k = 0; k < std::size(specials) && static_cast<int64_t>(k * 97) < x.numel(); ++k) p[k * 97] = specials[k];
  return x;
}

using perch::test::same_bits;

// The profile entry of `node_name`'s step (what the executor reports it ran).
StepTime step_of(const Executor& ex, const std::string& node_name) {
  for (const StepTime& s : ex.profile())
    if (s.node.find("'" + node_name + "'") != std::string::npos) return s;
  return {};
}

TEST(Executor, ElementwiseChainIsBitIdenticalToTheNodes) {
  // HardSwish as PaddlePaddle writes it, after a scalar affine, then Sub/Div with the constant first and a Relu;
  // Constant nodes between the steps, constants of shape [], [1] and [1,1,1,1]. 2442 elements: not a multiple
  // of the 256-element block.
  Model m = model_of(
      {node("Mul", {"w", "x"}, {"a"}, "mul_w"), node("Add", {"a", "b1"}, {"b"}, "add_b"),
       constant_node("three", scalar_tensor(3.0f, {}), "value"), constant_node("six", 6.0f, "value_float"),
       node("Add", {"b", "three"}, {"c"}, "add3"), node("Clip", {"c", "zero", "six"}, {"d"}, "clip"),
       node("Mul", {"b", "d"}, {"e"}, "mul"), node("Div", {"e", "six"}, {"f"}, "div6"),
       node("Sub", {"one", "f"}, {"g"}, "one_minus"), node("Div", {"two", "g"}, {"h"}, "two_over"),
       node("Relu", {"h"}, {"y"}, "relu")},
      {value("x", {-1, 3, 37, 11})}, {value("y", {-1, 3, 37, 11})});
  m.graph.initializers["w"] = scalar_tensor(0.7f, {1});
  m.graph.initializers["b1"] = scalar_tensor(0.3f, {1, 1, 1, 1});
  m.graph.initializers["zero"] = scalar_tensor(0.0f, {});
  m.graph.initializers["one"] = scalar_tensor(1.0f, {1});
  m.graph.initializers["two"] = scalar_tensor(2.0f, {});
  Executor ex(m);
  const Tensor x = chain_input({2, 3, 37, 11}, 5);
  ex.enable_profiling();
  const Tensor fused = ex.run({{"x", x}}).at("y");
  const StepTime last = step_of(ex, "relu");
  EXPECT_NE(last.what.find("fused element-wise chain Mul+Add+Add+Clip+Mul+Div+Sub+Div+Relu"), std::string::npos)
      << last.what;
  EXPECT_EQ(last.calls, 1);
  EXPECT_EQ(step_of(ex, "add3").calls, 0) << "a step of a fused chain ran by itself";
  // With an observer every value must exist, so the nodes run one by one.
  int observed = 0;
  const Tensor unfused = ex.run({{"x", x}}, [&](const std::string&, const Tensor&) { ++observed; }).at("y");
  EXPECT_EQ(observed, 11);
  EXPECT_TRUE(same_bits(fused, unfused));
  // And both are the float expressions written out, one rounding per step.
  const float* px = x.data<float>();
  const float* py = fused.data<float>();
  int64_t differ = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float a = 0.7f * px[i], b = a + 0.3f, c = b + 3.0f, d = std::min(std::max(c, 0.0f), 6.0f), e = b * d;
    const float f = e / 6.0f, g = 1.0f - f, h = 2.0f / g, y = h > 0.0f ? h : 0.0f;
    differ += std::memcmp(&y, &py[i], 4) != 0;
  }
  EXPECT_EQ(differ, 0);
}

TEST(Executor, ElementwiseChainStopsWhereAValueEscapes) {
  // 'a' is a graph output and 'c' is read by the Tanh outside: the only chain is Mul -> Add (X = a).
  Model m = model_of({node("Add", {"x", "k1"}, {"a"}, "add1"), node("Mul", {"a", "k2"}, {"b"}, "mul2"),
                      node("Add", {"b", "k3"}, {"c"}, "add3"), node("Div", {"c", "k2"}, {"d"}, "div"),
                      node("Tanh", {"c"}, {"s"}, "tanh"), node("Add", {"d", "s"}, {"y"}, "sum")},
                     {value("x", {-1, 300})}, {value("y", {-1, 300}), value("a", {-1, 300})}, 9);
  m.graph.initializers["k1"] = scalar_tensor(1.5f, {});
  m.graph.initializers["k2"] = scalar_tensor(-2.0f, {1});
  m.graph.initializers["k3"] = scalar_tensor(0.25f, {});
  Executor ex(m);
  ex.enable_profiling();
  const Tensor x = chain_input({3, 300}, 6);
  const TensorMap fused = ex.run({{"x", x}});
  EXPECT_EQ(step_of(ex, "add3").what.find("fused element-wise chain Mul+Add ("), 0u) << step_of(ex, "add3").what;
  EXPECT_EQ(step_of(ex, "add1").calls, 1);
  EXPECT_EQ(step_of(ex, "div").calls, 1);
  const TensorMap unfused = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {});
  EXPECT_TRUE(same_bits(fused.at("y"), unfused.at("y")));
  EXPECT_TRUE(same_bits(fused.at("a"), unfused.at("a")));
  // Asking for an intermediate value also runs the nodes one by one.
  const TensorMap with_b = ex.run({{"x", x}}, nullptr, {"b"});
  EXPECT_TRUE(same_bits(with_b.at("y"), unfused.at("y")));
  ASSERT_TRUE(with_b.count("b"));
  EXPECT_EQ(with_b.at("b").shape(), x.shape());
  EXPECT_EQ(with_b.at("b").data<float>()[7], (x.data<float>()[7] + 1.5f) * -2.0f);
}

TEST(Executor, ElementwiseChainKeepsBroadcastShapesAndOtherTypes) {
  // A rank-1 X with a [1,1,1] constant: ONNX broadcasting gives [1,1,5], fused or not.
  Model m = model_of({node("Mul", {"x", "k"}, {"a"}), node("Add", {"a", "k"}, {"y"})}, {value("x", {5})},
                     {value("y", {1, 1, 5})});
  m.graph.initializers["k"] = scalar_tensor(3.0f, {1, 1, 1});
  Executor ex(m);
  const Tensor x = Tensor::from<float>({5}, {1, 2, 3, 4, 5});
  const Tensor y = ex.run1(x);
  EXPECT_EQ(y.shape(), (Shape{1, 1, 5}));
  EXPECT_TRUE(same_bits(y, ex.run({{"x", x}}, [](const std::string&, const Tensor&) {}).at("y")));
  EXPECT_EQ(y.data<float>()[4], 18.0f);
  // A step left out of the chain (its input 'b' is read outside) does not lend the chain its [1,1,1] constant.
  Model mt = model_of({node("Mul", {"x", "s"}, {"a"}), node("Add", {"a", "s"}, {"b"}), node("Mul", {"b", "k"}, {"c"}),
                       node("Tanh", {"b"}, {"t"}), node("Add", {"c", "t"}, {"y"})},
                      {value("x", {5})}, {value("y", {1, 1, 5}), value("t", {5})});
  mt.graph.initializers["s"] = scalar_tensor(0.5f, {});
  mt.graph.initializers["k"] = scalar_tensor(3.0f, {1, 1, 1});
  Executor ext(mt);
  const TensorMap fused_t = ext.run({{"x", x}});
  const TensorMap unfused_t = ext.run({{"x", x}}, [](const std::string&, const Tensor&) {});
  EXPECT_TRUE(same_bits(fused_t.at("y"), unfused_t.at("y")));
  EXPECT_EQ(fused_t.at("y").shape(), (Shape{1, 1, 5}));
  EXPECT_EQ(fused_t.at("t").shape(), (Shape{5}));
  // An initializer that is also a graph input is a default the caller may replace: not a chain constant.
  Model mk = model_of({node("Mul", {"x", "k"}, {"a"}), node("Add", {"a", "k"}, {"y"})}, {value("x", {5}), value("k", {})},
                      {value("y", {5})});
  mk.graph.initializers["k"] = scalar_tensor(3.0f, {});
  Executor exk(mk);
  EXPECT_EQ(exk.run({{"x", x}, {"k", scalar_tensor(-1.0f, {})}}).at("y").data<float>()[4], -6.0f);
  EXPECT_EQ(exk.run({{"x", x}, {"k", scalar_tensor(3.0f, {})}}).at("y").data<float>()[4], 18.0f);
  // A float64 X is not fused (the chain is float32): the nodes give what they always gave.
  Model m64 = model_of({node("Mul", {"x", "k"}, {"a"}), node("Add", {"a", "k"}, {"y"})},
                       {value("x", {2}, DType::kFloat64)}, {value("y", {1, 1, 2})});
  m64.graph.initializers["k"] = scalar_tensor(3.0f, {1, 1, 1});
  Executor ex64(m64);
  Tensor x64(DType::kFloat64, {2});
  x64.data<double>()[0] = 0.1, x64.data<double>()[1] = -2.0;
  const Tensor y64 = ex64.run1(x64);
  EXPECT_TRUE(same_bits(y64, ex64.run({{"x", x64}}, [](const std::string&, const Tensor&) {}).at("y")));
}

TEST(Executor, GlobalAveragePoolSumsEachPlaneInOrder) {
  // Planes are summed eight at a time; each plane's sum must still be the in-order double sum (bit for bit).
  // 8 * 2 + 3 planes: both the grouped loop and the remainder.
  Model m = model_of({node("GlobalAveragePool", {"x"}, {"y"})}, {value("x", {-1, 19, 5, 7})}, {value("y", {-1, 19, 1, 1})});
  Executor ex(m);
  Tensor x(DType::kFloat32, {1, 19, 5, 7});
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mant(-1.0f, 1.0f);
  std::uniform_int_distribution<int> ex2(-20, 0);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = std::ldexp(mant(rng), ex2(rng));
  // And in every plane a value that only the in-order sum absorbs: (c + 1) + 2^60 - 2^60 is 0 in that order.
  for (int64_t c = 0; c < 19; ++c) {
    p[c * 35 + 3 + c % 5] = static_cast<float>(c + 1);
    p[c * 35 + 9 + c % 5] = 0x1p60f;
    p[c * 35 + 20 + c % 7] = -0x1p60f;
  }
  const Tensor y = ex.run1(x);
  ASSERT_EQ(y.shape(), (Shape{1, 19, 1, 1}));
  for (int64_t c = 0; c < 19; ++c) {
    double s = 0;
    for (int64_t j = 0; j < 35; ++j) s += p[c * 35 + j];
    const float want = static_cast<float>(s / 35.0);
    EXPECT_EQ(std::memcmp(&want, y.data<float>() + c, 4), 0) << "plane " << c;
  }
}

// Runs `m` (input x, output y, one chain ending at node `last`) on every compiled path, over lengths around the
// vector widths and the 256-element block, against the nodes run one by one.
void expect_chain_on_every_path(const Model& m, const std::string& last, const std::string& ops) {
  Executor ex(m);
  ex.enable_profiling();
  const uint32_t supported = supported_paths();
  int paths_run = 0;
  for (Path p : {Path::kReference, Path::kAvx2, Path::kAvx512Vnni}) {
    if (!has_path(supported, p)) continue;
    ++paths_run;
    for (int64_t len : {1, 7, 15, 16, 17, 255, 256, 257, 4097, 70001}) {
      // A new input per path and length: a stale block of an earlier run must not hold the right answer.
      const Tensor x = chain_input({len}, static_cast<uint32_t>(len * 4 + paths_run));
      set_paths_for_testing(static_cast<uint32_t>(p) | static_cast<uint32_t>(Path::kReference));
      const Tensor fused = ex.run1(x);
      set_paths_for_testing(0);
      const Tensor unfused = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {}).at("y");
      EXPECT_TRUE(same_bits(fused, unfused)) << paths_string(static_cast<uint32_t>(p)) << ", length " << len;
    }
  }
  EXPECT_GE(paths_run, 1);
  EXPECT_NE(step_of(ex, last).what.find("fused element-wise chain " + ops + " ("), std::string::npos)
      << step_of(ex, last).what;
}

TEST(Executor, ElementwiseChainEveryPathGivesTheSameBits) {
  // The chain kernel is compiled for baseline x86-64 (the reference twin), AVX2 and AVX-512.
  Model m = model_of({node("Add", {"x", "three"}, {"c"}), node("Clip", {"c", "zero", "six"}, {"d"}),
                      node("Mul", {"x", "d"}, {"e"}), node("Div", {"e", "six"}, {"f"}), node("Sub", {"f", "x"}, {"g"}),
                      node("Relu", {"g"}, {"y"}, "last")},
                     {value("x", {-1})}, {value("y", {-1})});
  m.graph.initializers["three"] = scalar_tensor(3.0f, {});
  m.graph.initializers["zero"] = scalar_tensor(0.0f, {});
  m.graph.initializers["six"] = scalar_tensor(6.0f, {});
  expect_chain_on_every_path(m, "last", "Add+Clip+Mul+Div+Sub+Relu");
}

TEST(Executor, ElementwiseChainActivationsGiveTheSameBits) {
  // SiLU (x * Sigmoid(x)), HardSwish as PyTorch exports it before opset 14 (x * HardSigmoid(x), alpha 1/6), LeakyRelu.
  Node hs = node("HardSigmoid", {"m"}, {"h"});
  hs.attrs["alpha"] = 1.0f / 6.0f;
  Node lr = node("LeakyRelu", {"q"}, {"y"}, "last");
  lr.attrs["alpha"] = 0.1f;
  Model m = model_of({node("Sigmoid", {"x"}, {"s"}), node("Mul", {"x", "s"}, {"m"}), hs, node("Mul", {"m", "h"}, {"q"}), lr},
                     {value("x", {-1})}, {value("y", {-1})});
  expect_chain_on_every_path(m, "last", "Sigmoid+Mul+HardSigmoid+Mul+LeakyRelu");
  // And the written-out float expressions (HardSigmoid's beta at its default 0.5).
  Executor ex(m);
  const Tensor x = chain_input({999}, 3);
  const Tensor y = ex.run1(x);
  int64_t differ = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float v = x.data<float>()[i], sm = v * (1.0f / (1.0f + std::exp(-v)));
    const float q = sm * std::clamp(1.0f / 6.0f * sm + 0.5f, 0.0f, 1.0f), want = q >= 0.0f ? q : q * 0.1f;
    differ += std::memcmp(&want, y.data<float>() + i, 4) != 0 && !(std::isnan(want) && std::isnan(y.data<float>()[i]));
  }
  EXPECT_EQ(differ, 0);
}

// A chain whose X is a Conv's output read by nothing else runs inside the Conv, on each finished output block, in
// place (kernels::conv2d_f32's epilogue). Dense 3x3, depthwise, 1x1 and 1-D convs, batches of 3, on every path and
// on 1 and 2 threads: the same bits as the nodes run one by one, and the profile says where the chain ran.
Model conv_chain_model(Shape xs, Shape ws, int64_t group, const std::string& extra_reader = "") {
  Node conv = node("Conv", {"x", "w", "b"}, {"c"}, "conv");
  conv.attrs["group"] = group;
  const bool one_d = xs.size() == 3;
  if (ws.back() == 3) conv.attrs["pads"] = one_d ? std::vector<int64_t>{1, 1} : std::vector<int64_t>{1, 1, 1, 1};
  std::vector<Node> nodes = {conv,
                             node("Mul", {"c", "k1"}, {"a"}, "mul_w"),
                             node("Add", {"a", "k2"}, {"bb"}, "add_b"),
                             node("Add", {"bb", "three"}, {"p"}, "add3"),
                             node("Clip", {"p", "zero", "six"}, {"q"}, "clip"),
                             node("Mul", {"bb", "q"}, {"r"}, "mul"),
                             node("Div", {"r", "six"}, {"y"}, "div6")};
  std::vector<ValueInfo> outs = {value("y", {})};
  if (extra_reader == "tanh") {  // the Conv's output has a second reader
    nodes.push_back(node("Tanh", {"c"}, {"t"}, "tanh"));
    outs.push_back(value("t", {}));
  } else if (extra_reader == "output") {  // the Conv's output is a graph output
    outs.push_back(value("c", {}));
  }
  Model m = model_of(nodes, {value("x", Shape(xs.size(), -1))}, outs);
  std::mt19937 rng(static_cast<uint32_t>(ws[0] * 31 + xs.back()));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Tensor w(DType::kFloat32, ws), b(DType::kFloat32, {ws[0]});
  for (float& v : w.span<float>()) v = u(rng);
  for (float& v : b.span<float>()) v = u(rng);
  m.graph.initializers["w"] = w;
  m.graph.initializers["b"] = b;
  m.graph.initializers["k1"] = scalar_tensor(0.7f, {1});
  m.graph.initializers["k2"] = scalar_tensor(-0.2f, {});
  m.graph.initializers["three"] = scalar_tensor(3.0f, {});
  m.graph.initializers["zero"] = scalar_tensor(0.0f, {});
  m.graph.initializers["six"] = scalar_tensor(6.0f, {});
  return m;
}

TEST(Executor, ChainAfterConvRunsInsideTheConv) {
  struct Case {
    Shape xs, ws;
    int64_t group;
  };
  const std::vector<Case> cases = {{{3, 5, 9, 11}, {7, 5, 3, 3}, 1},     // im2col + GEMM
                                   {{3, 6, 10, 9}, {6, 1, 3, 3}, 6},     // depthwise
                                   {{3, 16, 6, 7}, {24, 16, 1, 1}, 1},   // 1x1, no im2col
                                   {{3, 4, 33}, {8, 2, 3}, 2}};          // 1-D, grouped
  const int saved = num_threads();
  for (const Case& k : cases) {
    SCOPED_TRACE(shape_str(k.xs) + " * " + shape_str(k.ws));
    Executor ex(conv_chain_model(k.xs, k.ws, k.group));
    const Tensor x = chain_input(k.xs, static_cast<uint32_t>(k.xs[1]));
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (Path p : {Path::kReference, Path::kAvx2, Path::kAvx512Vnni}) {
        if (!has_path(supported_paths(), p)) continue;
        set_paths_for_testing(static_cast<uint32_t>(p) | static_cast<uint32_t>(Path::kReference) |
                              (p == Path::kReference ? 0u : static_cast<uint32_t>(Path::kOptimized)));
        ex.enable_profiling();
        const Tensor fused = ex.run1(x);
        const StepTime c = step_of(ex, "conv");
        const StepTime div = step_of(ex, "div6");
        // The nodes one by one on the same path (the convolution's float sums differ between paths).
        const Tensor unfused = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {}).at("y");
        set_paths_for_testing(0);
        EXPECT_TRUE(same_bits(fused, unfused)) << paths_string(static_cast<uint32_t>(p)) << ", threads " << threads;
        EXPECT_NE(c.what.find("+ fused element-wise chain Mul+Add+Add+Clip+Mul+Div on its output blocks"),
                  std::string::npos) << c.what;
        EXPECT_EQ(c.calls, 1);
        EXPECT_EQ(div.calls, 0) << "the chain also ran by itself";
      }
    }
  }
  set_num_threads(saved);
}

TEST(Executor, ChainAfterConvStaysOutsideWhenTheConvOutputIsNeeded) {
  const Tensor x = chain_input({2, 5, 9, 11}, 9);
  for (const std::string reader : {"tanh", "output"}) {
    SCOPED_TRACE(reader);
    Executor ex(conv_chain_model({2, 5, 9, 11}, {7, 5, 3, 3}, 1, reader));
    ex.enable_profiling();
    const TensorMap fused = ex.run({{"x", x}});
    const TensorMap unfused = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {});
    for (const auto& [name, v] : unfused) EXPECT_TRUE(same_bits(fused.at(name), v)) << name;
    EXPECT_EQ(step_of(ex, "conv").what, "Conv") << "the chain ran inside a Conv whose output another node reads";
  }
  // Asking for the Conv's output (or a value inside the chain) as an extra output runs the nodes one by one.
  Executor ex(conv_chain_model({2, 5, 9, 11}, {7, 5, 3, 3}, 1));
  const TensorMap unfused = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {});
  for (const std::string extra : {"c", "q"}) {
    const TensorMap with = ex.run({{"x", x}}, nullptr, {extra});
    EXPECT_TRUE(same_bits(with.at("y"), unfused.at("y"))) << extra;
    const TensorMap all = ex.run({{"x", x}}, [](const std::string&, const Tensor&) {}, {extra});
    EXPECT_TRUE(same_bits(with.at(extra), all.at(extra))) << extra;
  }
  // A [1,1,1,1] constant makes a 1-D conv's rank-3 output rank 4: not in the Conv, the nodes' shape.
  Model m = conv_chain_model({2, 4, 33}, {8, 2, 3}, 2);
  m.graph.initializers["k2"] = scalar_tensor(-0.2f, {1, 1, 1, 1});
  Executor ex4(m);
  const Tensor x3 = chain_input({2, 4, 33}, 4);
  const Tensor y4 = ex4.run1(x3);
  EXPECT_EQ(y4.shape(), (Shape{1, 2, 8, 33}));
  EXPECT_TRUE(same_bits(y4, ex4.run({{"x", x3}}, [](const std::string&, const Tensor&) {}).at("y")));
}

TEST(Executor, GeluBothForms) {
  // ONNX Gelu (opset 20) has no backend node test in the ONNX test data perch runs: x * Phi(x) checked against
  // tabulated standard normal CDF values, and the tanh form against its definition.
  auto gelu = [](const std::string& approximate) {
    Node n = node("Gelu", {"x"}, {"y"});
    if (!approximate.empty()) n.attrs["approximate"] = approximate;
    return Executor(model_of({n}, {value("x", {4})}, {value("y", {4})}, 20));
  };
  const Tensor x = Tensor::from<float>({4}, {-1.0f, 0.0f, 1.0f, 2.0f});
  const Tensor exact = gelu("").run1(x);
  const double phi[] = {0.158655253931457, 0.5, 0.841344746068543, 0.977249868051821};  // Phi(-1), Phi(0), Phi(1), Phi(2)
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(exact.data<float>()[i], x.data<float>()[i] * phi[i], 1e-7) << i;
  EXPECT_TRUE(same_bits(gelu("none").run1(x), exact));
  const Tensor approx = gelu("tanh").run1(x);
  for (int i = 0; i < 4; ++i) {
    const double v = x.data<float>()[i];
    const double want = 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    EXPECT_NEAR(approx.data<float>()[i], want, 1e-7) << i;
  }
  EXPECT_GT(std::fabs(approx.data<float>()[3] - exact.data<float>()[3]), 5e-5) << "the two forms differ by 9.8e-5 at 2";
}

}  // namespace
// A float16 model (every initializer, the input and the output float16): each op computes in float32 on its float16
// inputs and rounds its result to float16, so the model's output is float16 and close to the float32 model's (a few
// float16 roundings per layer: within 1 % of the output range here), and one Add is exactly the float32 sum rounded.
TEST(Executor, Float16ModelsComputeInFloat32PerOp) {
  const graph::Model m32 = test::tiny_cnn(3);
  graph::Model m16 = m32;
  const auto to_half = [](const Tensor& t) { return t.to(DType::kFloat16); };
  for (auto& [name, t] : m16.graph.initializers)
    if (t.dtype() == DType::kFloat32) t = to_half(t);
  m16.graph.inputs[0].dtype = m16.graph.outputs[0].dtype = DType::kFloat16;
  const Tensor x = test::tiny_cnn_inputs(4, 5).images;
  const Tensor x16 = to_half(x);
  const Tensor y16 = runtime::Executor(m16).run1(x16);
  ASSERT_EQ(y16.dtype(), DType::kFloat16);
  // The float32 model on the same (float16-rounded) input and weights: the float16 model only adds roundings.
  graph::Model m32r = m32;
  for (auto& [name, t] : m32r.graph.initializers)
    if (t.dtype() == DType::kFloat32) t = to_half(t).to_f32();
  const Tensor y32 = runtime::Executor(m32r).run1(x16.to_f32());
  EXPECT_LE(test::max_rel_diff(y16.to_f32(), y32), 0.01);
  EXPECT_GT(test::max_rel_diff(y16.to_f32(), y32), 0.0);  // it did round
  graph::Model add;
  add.set_opset(13);
  add.graph.inputs.push_back({"a", DType::kFloat16, {3}, {""}, true});
  add.graph.inputs.push_back({"b", DType::kFloat16, {3}, {""}, true});
  add.graph.outputs.push_back({"c", DType::kFloat16, {3}, {""}, true});
  test::add_node(add.graph, "Add", {"a", "b"}, {"c"});
  const Tensor a = Tensor::from<Half>({3}, {Half{0x3c00}, Half{0x7bff}, Half{0x0001}});  // 1, 65504, 2^-24
  const Tensor b = Tensor::from<Half>({3}, {Half{0x1000}, Half{0x5000}, Half{0x0001}});  // 2^-11, 32, 2^-24
  const Tensor c = runtime::Executor(add).run({{"a", a}, {"b", b}}).at("c");
  ASSERT_EQ(c.dtype(), DType::kFloat16);
  EXPECT_EQ(c.data<Half>()[0].bits, 0x3c00);  // 1 + 2^-11: a tie, to even (1)
  EXPECT_EQ(c.data<Half>()[1].bits, 0x7c00);  // 65536, past the overflow threshold 65520: inf
  EXPECT_EQ(c.data<Half>()[2].bits, 0x0002);  // 2^-23
}

// bfloat16 likewise: each op in float32, its output rounded to bfloat16 once.
TEST(Executor, BFloat16ModelsComputeInFloat32PerOp) {
  graph::Model add;
  add.set_opset(13);
  add.graph.inputs.push_back({"a", DType::kBFloat16, {3}, {""}, true});
  add.graph.inputs.push_back({"b", DType::kBFloat16, {3}, {""}, true});
  add.graph.outputs.push_back({"d", DType::kBFloat16, {3}, {""}, true});
  test::add_node(add.graph, "Add", {"a", "b"}, {"c"});
  test::add_node(add.graph, "Mul", {"c", "b"}, {"d"});
  // 1, 2^127·(2 − 2^-7), 2^-133 plus 2^-8, 2^127, 2^-133
  const Tensor a = Tensor::from<BFloat16>({3}, {BFloat16{0x3f80}, BFloat16{0x7f7f}, BFloat16{0x0001}});
  const Tensor b = Tensor::from<BFloat16>({3}, {BFloat16{0x3b80}, BFloat16{0x7f00}, BFloat16{0x0001}});
  const Tensor d = runtime::Executor(add).run({{"a", a}, {"b", b}}).at("d");
  ASSERT_EQ(d.dtype(), DType::kBFloat16);
  // c = 1 + 2^-8: a tie, to even (1), then × 2^-8 = 2^-8 (0x3b80); not 2^-8 + 2^-16 as without the rounding of c
  EXPECT_EQ(d.data<BFloat16>()[0].bits, 0x3b80);
  EXPECT_EQ(d.data<BFloat16>()[1].bits, 0x7f80);  // past the largest finite: inf, and inf × 2^127 stays inf
  EXPECT_EQ(d.data<BFloat16>()[2].bits, 0x0000);  // 2^-132 × 2^-133 underflows to 0
}

}  // namespace perch::runtime
