// runtime::Executor's contract outside the ONNX node tests: unsupported ops are all named at construction,
// bad inputs are named with what was expected, node errors name the node, and the observer / extra-output
// hooks the quantizer's calibration relies on see every value.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "perch/runtime/executor.h"

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

}  // namespace
}  // namespace perch::runtime
