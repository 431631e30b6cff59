// Hostile graphs at run time: unsupported ops, inconsistent shapes, and shape-computing ops asked for
// absurd sizes must end in a perch::Error naming the model and the node — before anything is allocated.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <string>

#include "test_util.h"
#include "perch/core/error.h"
#include "perch/runtime/executor.h"

using namespace perch;
using namespace perch::graph;

namespace {

using perch::test::expect_contains;
using perch::test::perch_error;

Node node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out, const std::string& name,
          std::map<std::string, AttrValue> attrs = {}) {
  Node n;
  n.op_type = op;
  n.name = name;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  n.attrs = std::move(attrs);
  return n;
}

// A model "m.onnx" at opset 17 with a float input x of `shape` and output y.
Model model_with(std::vector<Node> nodes, Shape x_shape = {-1}) {
  Model m;
  m.source = "m.onnx";
  m.opsets = {{"", 17}};
  m.graph.inputs.push_back({"x", DType::kFloat32, x_shape, std::vector<std::string>(x_shape.size()), true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  m.graph.nodes = std::move(nodes);
  return m;
}

Tensor i64(std::vector<int64_t> v) { return Tensor::from<int64_t>({static_cast<int64_t>(v.size())}, v); }

TEST(RuntimeRobustness, AllUnsupportedOpsAreNamedAtOnce) {
  Model m = model_with({node("FancyOp", {"x"}, {"a"}, "f1"), node("Relu", {"a"}, {"b"}, "r"),
                        node("FancyOp", {"b"}, {"c"}, "f2"), node("OtherOp", {"c"}, {"d"}, "o"),
                        node("Gelu", {"d"}, {"y"}, "custom_gelu")});
  m.graph.nodes.back().domain = "com.example";
  const std::string e = perch_error([&] { runtime::Executor exec(m); });
  expect_contains(e, {"m.onnx: ", "FancyOp (x2)", "OtherOp (x1)", "com.example::Gelu (x1)"});
  EXPECT_EQ(e.find("Relu"), std::string::npos) << e;
}

TEST(RuntimeRobustness, ShapeMismatchNamesTheNode) {
  Model m = model_with({node("Add", {"x", "k"}, {"y"}, "bad_add")}, {2, 3});
  m.graph.initializers["k"] = Tensor(DType::kFloat32, {4, 5});
  runtime::Executor exec(m);
  std::string e = perch_error([&] { (void)exec.run1(Tensor(DType::kFloat32, {2, 3})); });
  expect_contains(e, {"m.onnx: ", "Add node 'bad_add'"});

  Model mm = model_with({node("MatMul", {"x", "k"}, {"y"}, "bad_matmul")}, {2, 3});
  mm.graph.initializers["k"] = Tensor(DType::kFloat32, {4, 5});
  runtime::Executor exec2(mm);
  e = perch_error([&] { (void)exec2.run1(Tensor(DType::kFloat32, {2, 3})); });
  expect_contains(e, {"m.onnx: ", "MatMul node 'bad_matmul'"});

  // A kernel whose message names its node already: the node is named once.
  Model mp = model_with({node("MaxPool", {"x"}, {"y"}, "pool3d")}, {1, 1, 2, 2, 2});
  mp.graph.nodes[0].attrs["kernel_shape"] = std::vector<int64_t>{3, 3, 3};
  e = perch_error([&] { (void)runtime::Executor(mp).run1(Tensor(DType::kFloat32, {1, 1, 2, 2, 2})); });
  expect_contains(e, {"m.onnx: MaxPool node 'pool3d': input [1,1,2,2,2] is too small for the window"});
  EXPECT_EQ(e.find("pool3d"), e.rfind("pool3d")) << e;
  // A window of 2^60 cells (kernel and pads from the file) is refused, never looped over.
  mp.graph.nodes[0].attrs["kernel_shape"] = std::vector<int64_t>{1 << 20, 1 << 20, 1 << 20};
  mp.graph.nodes[0].attrs["pads"] = std::vector<int64_t>(6, 1 << 20);
  e = perch_error([&] { (void)runtime::Executor(mp).run1(Tensor(DType::kFloat32, {1, 1, 2, 2, 2})); });
  expect_contains(e, {"MaxPool node 'pool3d': kernel_shape", "more than 2^34 elements"});
}

// Sizes computed at run time from tensors (not from the file): ConstantOfShape, Expand, Reshape, Tile,
// Range asked for 2^40 elements are refused by the size check, never handed to the allocator.
TEST(RuntimeRobustness, RunTimeShapesOf2To40ElementsAreRefused) {
  const int64_t big = int64_t{1} << 20;  // [2^20, 2^20] = 2^40
  struct Case {
    std::string name;
    Model m;
  };
  std::vector<Case> cases;
  {
    Model m = model_with({node("ConstantOfShape", {"s"}, {"c"}, "cos"), node("Add", {"c", "x"}, {"y"}, "add")});
    m.graph.initializers["s"] = i64({big, big});
    cases.push_back({"ConstantOfShape node 'cos'", m});
  }
  {
    Model m = model_with({node("Expand", {"x", "s"}, {"y"}, "exp")});
    m.graph.initializers["s"] = i64({big, big});
    cases.push_back({"Expand node 'exp'", m});
  }
  {
    Model m = model_with({node("Reshape", {"x", "s"}, {"y"}, "resh")});
    m.graph.initializers["s"] = i64({big, big});
    cases.push_back({"Reshape node 'resh'", m});
  }
  {
    Model m = model_with({node("Tile", {"x", "s"}, {"y"}, "tile")});
    m.graph.initializers["s"] = i64({int64_t{1} << 40});
    cases.push_back({"Tile node 'tile'", m});
  }
  {
    Model m = model_with({node("Range", {"a", "b", "d"}, {"r"}, "range"), node("Add", {"r", "x"}, {"y"}, "add")});
    m.graph.initializers["a"] = Tensor::scalar_f32(0.0f);
    m.graph.initializers["b"] = Tensor::scalar_f32(1.0e12f);
    m.graph.initializers["d"] = Tensor::scalar_f32(0.5f);
    cases.push_back({"Range node 'range'", m});
  }
  {
    // Shape computed from the input itself: Concat of the input's shape with a huge constant.
    Model m = model_with({node("Shape", {"x"}, {"sx"}, "shape"), node("Concat", {"sx", "s"}, {"full"}, "cat", {{"axis", int64_t{0}}}),
                          node("ConstantOfShape", {"full"}, {"y"}, "cos2")});
    m.graph.initializers["s"] = i64({big, big});
    cases.push_back({"ConstantOfShape node 'cos2'", m});
  }
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    runtime::Executor exec(c.m);
    const std::string e = perch_error([&] { (void)exec.run1(Tensor(DType::kFloat32, {1})); });
    expect_contains(e, {"m.onnx: ", c.name});
  }
}

TEST(RuntimeRobustness, NegativeAndOverflowingShapeTensorsAreRefused) {
  Model m = model_with({node("ConstantOfShape", {"s"}, {"c"}, "cos"), node("Add", {"c", "x"}, {"y"}, "add")});
  const int64_t h = int64_t{1} << 32;
  for (const auto& s : {std::vector<int64_t>{h, h, h}, std::vector<int64_t>{4, -3}, std::vector<int64_t>{INT64_MAX, 2}}) {
    m.graph.initializers["s"] = i64(s);
    runtime::Executor exec(m);
    const std::string e = perch_error([&] { (void)exec.run1(Tensor(DType::kFloat32, {1})); });
    expect_contains(e, {"m.onnx: ", "ConstantOfShape node 'cos'"});
  }
}

TEST(RuntimeRobustness, WrongInputShapeAndDtypeNameTheInput) {
  Model m = model_with({node("Relu", {"x"}, {"y"}, "r")}, {-1, 3});
  runtime::Executor exec(m);
  std::string e = perch_error([&] { (void)exec.run1(Tensor(DType::kFloat32, {2, 4})); });
  expect_contains(e, {"m.onnx: ", "'x'", "[2,4]"});
  e = perch_error([&] { (void)exec.run1(Tensor(DType::kInt32, {2, 3})); });
  expect_contains(e, {"m.onnx: ", "'x'", "int32"});
  e = perch_error([&] { (void)exec.run1(Tensor(DType::kFloat32, {2, 3, 1})); });
  expect_contains(e, {"m.onnx: ", "'x'"});
}

// ---- fuzzing regressions (fuzz/fuzz_qdq) ---------------------------------------------------------------

// A float32 zero point of 7.5e36 made qdq_params convert it to int64: undefined behaviour (UBSan
// float-cast-overflow in Tensor::to_i64_vector). Zero points must be integers: refused, naming the node.
TEST(RuntimeRobustness, FloatZeroPointIsRefusedNamingTheNode) {
  Model m = model_with({node("DequantizeLinear", {"x", "s", "z"}, {"y"}, "dql")}, {4});
  m.graph.inputs[0].dtype = DType::kInt8;
  m.graph.initializers["s"] = Tensor::scalar_f32(0.5f);
  m.graph.initializers["z"] = Tensor::scalar_f32(7.5e36f);
  runtime::Executor exec(m);
  std::string e = perch_error([&] { (void)exec.run1(Tensor(DType::kInt8, {4})); });
  expect_contains(e, {"m.onnx: ", "DequantizeLinear node 'dql'", "zero point", "float32"});
  // QuantizeLinear takes its output type from the zero point: a float one is an unsupported type.
  Model q = model_with({node("QuantizeLinear", {"x", "s", "z"}, {"y"}, "ql")}, {4});
  q.graph.initializers = m.graph.initializers;
  runtime::Executor exec_q(q);
  e = perch_error([&] { (void)exec_q.run1(Tensor(DType::kFloat32, {4})); });
  expect_contains(e, {"m.onnx: ", "QuantizeLinear node 'ql'", "float32"});
}

// Float -> integer tensor conversions saturate (NaN -> 0) instead of being undefined.
TEST(RuntimeRobustness, FloatToIntegerConversionsSaturate) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Tensor f = Tensor::from<float>({6}, std::vector<float>{7.5e36f, -7.5e36f, nan, inf, -inf, -3.75f});
  EXPECT_EQ(f.to_i64_vector(), (std::vector<int64_t>{INT64_MAX, INT64_MIN, 0, INT64_MAX, INT64_MIN, -3}));
  const Tensor d = Tensor::from<double>({3}, std::vector<double>{9.3e18, -9.3e18, 2.5});
  EXPECT_EQ(d.to_i64_vector(), (std::vector<int64_t>{INT64_MAX, INT64_MIN, 2}));
}

}  // namespace
