// If, Loop and Scan against ONNX Runtime, and a model with control flow through perch quantize: subgraphs read values
// of the enclosing graph (captured), the quantizer renames those it quantizes, and the QDQ file still runs in ONNX
// Runtime as perch simulates it.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <random>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/executor.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace perch;
using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;
using test::run_cmd;

namespace {

graph::ValueInfo value(const std::string& name, DType t = DType::kFloat32) {
  graph::ValueInfo v;
  v.name = name;
  v.dtype = t;
  return v;
}

// ONNX Runtime wants the Loop body's scalar inputs and the Scan body's outputs shaped.
graph::ValueInfo shaped(const std::string& name, Shape s, DType t = DType::kFloat32) {
  graph::ValueInfo v = value(name, t);
  v.shape = std::move(s);
  v.has_shape = true;
  return v;
}

// x [N, 2, 6, 6] -> Conv 3x3 pad 1 (4 channels; output channels' ranges spread) = c ->
//   If (mean(c) > 0.1): then Relu(c) * 2, else Sigmoid(c) - 0.5            = b     (reads c from outside)
//   Loop 3 times: v <- Tanh(v * 0.9 + b)  (v starts at b; scan output: each v's channel means) = l, means
//   Scan over l's rows (axis 2) in reverse, a running sum state, per-row outputs stacked on axis 1 in reverse
//                                                                                               = s_final, rows
//   -> Conv 1x1 (3 channels) of l -> y;  means and rows are outputs too, and y2 = Conv 1x1 (2 channels) of c.
graph::Model control_net(uint32_t seed) {
  graph::Model m;
  m.ir_version = 8;
  m.opsets = {{"", 13}};
  m.source = "control_net";
  auto& g = m.graph;
  g.name = "control_net";
  g.inputs.push_back({"x", DType::kFloat32, {-1, 2, 6, 6}, {"N", "", "", ""}, true});
  Tensor w1 = test::uniform_tensor({4, 2, 3, 3}, seed, -0.6f, 0.6f);
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t k = 0; k < 18; ++k) w1.data<float>()[o * 18 + k] *= std::pow(10.0f, static_cast<float>(o) / 3.0f) / 10.0f;
  g.initializers["w1"] = w1;
  g.initializers["b1"] = test::uniform_tensor({4}, seed + 1, -0.1f, 0.1f);
  g.initializers["w2"] = test::uniform_tensor({3, 4, 1, 1}, seed + 2, -0.8f, 0.8f);
  g.initializers["w3"] = test::uniform_tensor({2, 4, 1, 1}, seed + 3, -0.8f, 0.8f);
  g.initializers["threshold"] = Tensor::from<float>({}, {0.1f});
  g.initializers["trips"] = Tensor::from<int64_t>({}, {3});
  g.initializers["state0"] = Tensor::from<float>({1, 4, 1}, {0, 0, 0, 0});
  using V = std::vector<int64_t>;
  test::add_node(g, "Conv", {"x", "w1", "b1"}, {"c"}, {{"pads", V{1, 1, 1, 1}}});
  test::add_node(g, "ReduceMean", {"c"}, {"mc"}, {{"keepdims", int64_t{0}}});
  test::add_node(g, "Greater", {"mc", "threshold"}, {"cond"});

  auto then_g = std::make_shared<graph::Graph>();
  then_g->name = "then";
  then_g->initializers["two"] = Tensor::from<float>({}, {2.0f});
  test::add_node(*then_g, "Relu", {"c"}, {"rc"});
  test::add_node(*then_g, "Mul", {"rc", "two"}, {"then_out"});
  then_g->outputs = {value("then_out")};
  auto else_g = std::make_shared<graph::Graph>();
  else_g->name = "else";
  else_g->initializers["half"] = Tensor::from<float>({}, {0.5f});
  test::add_node(*else_g, "Sigmoid", {"c"}, {"sc"});
  test::add_node(*else_g, "Sub", {"sc", "half"}, {"else_out"});
  else_g->outputs = {value("else_out")};
  test::add_node(g, "If", {"cond"}, {"b"}, {{"then_branch", graph::GraphRef(then_g)}, {"else_branch", graph::GraphRef(else_g)}});

  auto body = std::make_shared<graph::Graph>();
  body->name = "body";
  body->inputs = {shaped("i", {}, DType::kInt64), shaped("cin", {}, DType::kBool), value("v")};
  body->initializers["decay"] = Tensor::from<float>({}, {0.9f});
  test::add_node(*body, "Mul", {"v", "decay"}, {"vd"});
  test::add_node(*body, "Add", {"vd", "b"}, {"vb"});
  test::add_node(*body, "Tanh", {"vb"}, {"v_next"});
  test::add_node(*body, "ReduceMean", {"v_next"}, {"mean_out"}, {{"axes", V{2, 3}}, {"keepdims", int64_t{0}}});
  test::add_node(*body, "Identity", {"cin"}, {"cout"});
  body->outputs = {value("cout", DType::kBool), value("v_next"), value("mean_out")};
  test::add_node(g, "Loop", {"trips", "", "b"}, {"l", "means"}, {{"body", graph::GraphRef(body)}});

  auto scan_body = std::make_shared<graph::Graph>();
  scan_body->name = "scan_body";
  scan_body->inputs = {shaped("acc", {1, 4, 1}), shaped("row", {1, 4, 6})};
  scan_body->initializers["rowaxes"] = Tensor::from<int64_t>({1}, {2});
  test::add_node(*scan_body, "ReduceSum", {"row", "rowaxes"}, {"rowsum"}, {{"keepdims", int64_t{1}}});
  test::add_node(*scan_body, "Add", {"acc", "rowsum"}, {"acc_next"});
  test::add_node(*scan_body, "Identity", {"acc_next"}, {"row_out"});
  scan_body->outputs = {shaped("acc_next", {1, 4, 1}), shaped("row_out", {1, 4, 1})};
  test::add_node(g, "Scan", {"state0", "l"}, {"s_final", "rows"},
                 {{"body", graph::GraphRef(scan_body)}, {"num_scan_inputs", int64_t{1}}, {"scan_input_axes", V{2}},
                  {"scan_input_directions", V{1}}, {"scan_output_axes", V{1}}, {"scan_output_directions", V{1}}});
  test::add_node(g, "Conv", {"l", "w2"}, {"y"});
  test::add_node(g, "Conv", {"c", "w3"}, {"y2"});
  g.outputs = {value("y"), value("means"), value("rows"), value("y2")};
  return m;
}

// One batch image per If branch (the batch's mean decides): perch and ONNX Runtime agree on every output.
TEST(ControlFlow, IfLoopAndScanMatchOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("control_flow");
  graph::save_model(control_net(3), d / "m.onnx");
  for (float shift : {1.0f, -1.0f}) {
    SCOPED_TRACE(shift);
    const std::string tag = shift > 0 ? "then" : "else";
    write_npy(d / (tag + ".npy"), test::uniform_tensor({1, 2, 6, 6}, 7, shift - 0.5f, shift + 0.5f));
    auto r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + " --input x=" + q(d / (tag + ".npy")) + " -o " +
                     q(d / ("perch_" + tag)) + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "m.onnx") + " --input x=" + q(d / (tag + ".npy")) +
                " -o " + q(d / ("ort_" + tag)));
    ASSERT_EQ(r.code, 0) << r.err;
    for (const char* out : {"y", "means", "rows", "y2"}) {
      const Tensor a = read_npy(d / ("perch_" + tag) / (std::string(out) + ".npy")),
                   b = read_npy(d / ("ort_" + tag) / (std::string(out) + ".npy"));
      ASSERT_EQ(a.shape(), b.shape()) << out;
      EXPECT_LE(test::max_rel_diff(a, b), 1e-5) << out;
    }
  }
}


// perch quantize: the Conv output c, read by a Conv (so quantized) and by both If branches, becomes c_dequantized
// everywhere — inside the saved branches too —; ONNX Runtime runs the QDQ file as perch simulates it, on both branches;
// the integer engine runs it.
TEST(ControlFlow, QuantizedModelWithSubgraphsRunsInOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("control_flow_quantized");
  graph::save_model(control_net(3), d / "m.onnx");
  write_npy(d / "calib.npy", test::uniform_tensor({8, 2, 6, 6}, 9, -1.0f, 2.0f));
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") + " --calib npy:" +
                   q(d / "calib.npy") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const graph::Model qm = graph::load_model(d / "q.onnx");
  const graph::Node* iff = nullptr;
  for (const auto& n : qm.graph.nodes)
    if (n.op_type == "If") iff = &n;
  ASSERT_TRUE(iff);
  EXPECT_EQ(iff->captured, (std::vector<std::string>{"c_dequantized"}));
  for (float shift : {1.0f, -1.0f}) {
    SCOPED_TRACE(shift);
    const std::string tag = shift > 0 ? "then" : "else";
    write_npy(d / (tag + ".npy"), test::uniform_tensor({1, 2, 6, 6}, 7, shift - 0.5f, shift + 0.5f));
    for (const char* engine : {"sim", "int8"}) {
      r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + " --input x=" + q(d / (tag + ".npy")) + " -o " +
                  q(d / (std::string(engine) + "_" + tag)) + " --engine " + engine + " -q");
      ASSERT_EQ(r.code, 0) << engine << ": " << r.err;
    }
    r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + " --input x=" + q(d / (tag + ".npy")) +
                " -o " + q(d / ("ort_" + tag)));
    ASSERT_EQ(r.code, 0) << r.err;
    for (const char* out : {"y", "means", "rows", "y2"}) {
      const std::string f = std::string(out) + ".npy";
      const Tensor sim = read_npy(d / ("sim_" + tag) / f);
      // ONNX Runtime's integer kernels may round a requantization one step apart from float fake-quant
      EXPECT_LE(test::max_rel_diff(read_npy(d / ("ort_" + tag) / f), sim), 0.01) << out;
      // the integer engine computes the unquantized outputs from exact integer sums: float rounding apart
      EXPECT_LE(test::max_rel_diff(read_npy(d / ("int8_" + tag) / f), sim), 1e-4) << out;
    }
  }
}

}  // namespace
