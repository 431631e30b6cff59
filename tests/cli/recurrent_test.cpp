// RNN / GRU / LSTM against ONNX Runtime: the attribute combinations ONNX's node tests leave out (reverse and
// bidirectional directions, sequence_lens with a zero length, clip, initial states, peepholes, input_forget, linear_before_reset,
// non-default activations with their alpha/beta, hidden_size), and a CRNN-style model quantized by perch that
// ONNX Runtime runs as perch simulates it.
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

constexpr int64_t kSeq = 7, kBatch = 3, kIn = 5, kHidden = 4;

Tensor uniform(Shape s, std::mt19937& rng, float lo = -0.6f, float hi = 0.6f) {
  return test::uniform_tensor(std::move(s), rng, lo, hi);
}

struct Variant {
  std::string op;  // RNN, GRU, LSTM
  std::string direction;
  bool batchwise = false;  // layout 1
  bool bias = false, initial = false, peepholes = false, lens = false;
  std::map<std::string, graph::AttrValue> attrs;
};

// Adds one recurrent node reading "x" ([S, B, I]; transposed for layout 1) with random weights drawn from `seed`;
// its outputs are graph outputs "<tag>_y", "<tag>_yh" (and "<tag>_yc"). ONNX Runtime refuses layout 1, so for it
// (`layout0_twin`) a batchwise variant becomes the same computation in layout 0: initial states transposed in,
// outputs transposed out to the batchwise shapes.
void add_variant(graph::Model& m, const std::string& tag, const Variant& v, uint32_t seed, bool layout0_twin) {
  std::mt19937 rng(seed);
  auto& g = m.graph;
  const bool twin = v.batchwise && layout0_twin;
  const int64_t G = v.op == "RNN" ? 1 : v.op == "GRU" ? 3 : 4, D = v.direction == "bidirectional" ? 2 : 1;
  std::vector<std::string> in(8, "");
  in[0] = "x";
  if (v.batchwise && !twin) {
    in[0] = tag + "_xb";
    test::add_node(g, "Transpose", {"x"}, {in[0]}, {{"perm", std::vector<int64_t>{1, 0, 2}}});
  }
  auto init = [&](const std::string& name, Tensor t) {
    g.initializers[tag + "_" + name] = std::move(t);
    return tag + "_" + name;
  };
  in[1] = init("w", uniform({D, G * kHidden, kIn}, rng));
  in[2] = init("r", uniform({D, G * kHidden, kHidden}, rng));
  if (v.bias) in[3] = init("b", uniform({D, 2 * G * kHidden}, rng));
  if (v.lens) in[4] = init("lens", Tensor::from<int32_t>({kBatch}, {kSeq, 0, 5}));
  const Shape state = v.batchwise ? Shape{kBatch, D, kHidden} : Shape{D, kBatch, kHidden};
  auto state_init = [&](const std::string& name, float lo, float hi) {
    const Tensor t = uniform(state, rng, lo, hi);
    if (!twin) return init(name, t);
    Tensor u(DType::kFloat32, {D, kBatch, kHidden});  // [B, D, H] -> [D, B, H]
    for (int64_t b = 0; b < kBatch; ++b)
      for (int64_t dd = 0; dd < D; ++dd)
        for (int64_t j = 0; j < kHidden; ++j)
          u.data<float>()[(dd * kBatch + b) * kHidden + j] = t.data<float>()[(b * D + dd) * kHidden + j];
    return init(name, u);
  };
  if (v.initial) {
    in[5] = state_init("h0", -1.0f, 1.0f);
    if (v.op == "LSTM") in[6] = state_init("c0", -2.0f, 2.0f);
  }
  if (v.peepholes) in[7] = init("p", uniform({D, 3 * kHidden}, rng));
  while (!in.empty() && in.back().empty()) in.pop_back();
  std::vector<std::string> out = {tag + "_y", tag + "_yh"};
  if (v.op == "LSTM") out.push_back(tag + "_yc");
  auto attrs = v.attrs;
  attrs["direction"] = v.direction;
  attrs["hidden_size"] = kHidden;
  if (v.batchwise && !twin) attrs["layout"] = int64_t{1};
  std::vector<std::string> node_out = out;
  if (twin)
    for (auto& o : node_out) o += "_layout0";
  test::add_node(g, v.op, in, node_out, attrs);
  for (size_t k = 0; twin && k < out.size(); ++k)
    test::add_node(g, "Transpose", {node_out[k]}, {out[k]},
                   {{"perm", k == 0 ? std::vector<int64_t>{2, 0, 1, 3} : std::vector<int64_t>{1, 0, 2}}});
  for (const auto& o : out) g.outputs.push_back({o, DType::kFloat32, {}, {}, false});
}

// Every variant's outputs from perch and ONNX Runtime: max |perch − ORT| over all of them.
TEST(Recurrent, AttributeCombinationsMatchOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("recurrent");
  graph::Model m;
  m.ir_version = 8;
  m.opsets = {{"", 14}};
  m.source = "recurrent";
  m.graph.name = "recurrent";
  m.graph.inputs.push_back({"x", DType::kFloat32, {kSeq, kBatch, kIn}, {}, true});
  using Strings = std::vector<std::string>;
  using Floats = std::vector<float>;
  const std::vector<std::pair<std::string, Variant>> variants = {
      {"lstm_bi", {"LSTM", "bidirectional", false, true, true, true, true, {{"clip", 1.5f}}}},
      {"lstm_rev_acts", {"LSTM", "reverse", false, true, true, false, true,
                         {{"input_forget", int64_t{1}},
                          {"activations", Strings{"HardSigmoid", "LeakyRelu", "Softsign"}},
                          {"activation_alpha", Floats{0.3f, 0.05f}}, {"activation_beta", Floats{0.45f}}}}},
      {"lstm_batchwise", {"LSTM", "bidirectional", true, true, true, true, true, {}}},
      {"gru_bi_lbr", {"GRU", "bidirectional", false, true, true, false, true, {{"linear_before_reset", int64_t{1}}}}},
      {"gru_rev", {"GRU", "reverse", false, true, true, false, true,
                   {{"clip", 0.8f}, {"activations", Strings{"Sigmoid", "ScaledTanh"}},
                    {"activation_alpha", Floats{1.3f}}, {"activation_beta", Floats{0.7f}}}}},
      {"gru_batchwise", {"GRU", "forward", true, true, true, false, true, {}}},
      {"rnn_bi_acts", {"RNN", "bidirectional", false, true, true, false, true,
                       {{"activations", Strings{"Elu", "Affine"}}, {"activation_alpha", Floats{0.5f, 0.9f}},
                        {"activation_beta", Floats{0.1f}}}}},
      {"rnn_plain", {"RNN", "forward", false, false, false, false, false, {{"activations", Strings{"Relu"}}}}},
  };
  graph::Model mo = m;
  uint32_t seed = 11;
  for (const auto& [tag, v] : variants) {
    add_variant(m, tag, v, seed, false);
    add_variant(mo, tag, v, seed++, true);
  }
  graph::save_model(m, d / "m.onnx");
  graph::save_model(mo, d / "m_ort.onnx");
  std::mt19937 rng(7);
  write_npy(d / "x.npy", uniform({kSeq, kBatch, kIn}, rng, -2.0f, 2.0f));
  auto r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "m_ort.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const auto& out : m.graph.outputs) {
    const Tensor a = read_npy(d / "perch" / (out.name + ".npy")), b = read_npy(d / "ort" / (out.name + ".npy"));
    ASSERT_EQ(a.shape(), b.shape()) << out.name;
    double max_abs = 0, max_ref = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      max_abs = std::max(max_abs, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(b.data<float>()[i])));
    }
    EXPECT_GT(max_ref, 0.05) << out.name;  // not an all-zero output
    EXPECT_LE(max_abs, 2e-6 * std::max(1.0, max_ref)) << out.name << ": perch vs ONNX Runtime";
  }
}

}  // namespace

namespace {

// A CRNN-style recognizer: x [N, 1, 8, 16] -> Conv 3x3 pad 1 (8) -> Relu -> MaxPool 2x2 -> [N, 32, 8] (C·H rows, W
// steps) -> [8, N, 32] -> bidirectional LSTM (16) -> [N, 8, 32] -> MatMul (5 classes) + bias -> y [N, 8, 5].
graph::Model crnn(uint32_t seed) {
  std::mt19937 rng(seed);
  graph::Model m;
  m.ir_version = 8;
  m.opsets = {{"", 13}};
  m.source = "crnn";
  auto& g = m.graph;
  g.name = "crnn";
  g.inputs.push_back({"x", DType::kFloat32, {-1, 1, 8, 16}, {"N", "", "", ""}, true});
  g.outputs.push_back({"y", DType::kFloat32, {-1, 8, 5}, {"N", "", ""}, true});
  Tensor w1 = uniform({8, 1, 3, 3}, rng);
  for (int64_t o = 0; o < 8; ++o)  // output channels' ranges spread x0.05 .. x1
    for (int64_t k = 0; k < 9; ++k) w1.data<float>()[o * 9 + k] *= std::pow(20.0f, static_cast<float>(o) / 7.0f) / 20.0f;
  g.initializers["w1"] = w1;
  g.initializers["b1"] = uniform({8}, rng, -0.1f, 0.1f);
  g.initializers["shape1"] = Tensor::from<int64_t>({3}, {0, 32, 8});
  g.initializers["W"] = uniform({2, 64, 32}, rng, -0.3f, 0.3f);
  g.initializers["R"] = uniform({2, 64, 16}, rng, -0.3f, 0.3f);
  g.initializers["B"] = uniform({2, 128}, rng, -0.2f, 0.2f);
  g.initializers["shape2"] = Tensor::from<int64_t>({3}, {0, 8, 32});
  g.initializers["wc"] = uniform({32, 5}, rng);
  g.initializers["bc"] = uniform({5}, rng, -0.1f, 0.1f);
  using V = std::vector<int64_t>;
  test::add_node(g, "Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", V{1, 1, 1, 1}}});
  test::add_node(g, "Relu", {"c1"}, {"r1"});
  test::add_node(g, "MaxPool", {"r1"}, {"p1"}, {{"kernel_shape", V{2, 2}}, {"strides", V{2, 2}}});
  test::add_node(g, "Reshape", {"p1", "shape1"}, {"f1"});
  test::add_node(g, "Transpose", {"f1"}, {"seq"}, {{"perm", V{2, 0, 1}}});
  test::add_node(g, "LSTM", {"seq", "W", "R", "B"}, {"h", ""}, {{"hidden_size", int64_t{16}}, {"direction", std::string("bidirectional")}});
  test::add_node(g, "Transpose", {"h"}, {"ht"}, {{"perm", V{2, 0, 1, 3}}});
  test::add_node(g, "Reshape", {"ht", "shape2"}, {"f2"});
  test::add_node(g, "MatMul", {"f2", "wc"}, {"logits"});
  test::add_node(g, "Add", {"logits", "bc"}, {"y"});
  return m;
}

// perch quantize on a model with an LSTM: the Conv and the classifier MatMul get int8 per-channel weights, the LSTM
// runs in float between them; ONNX Runtime runs the QDQ file as perch's simulation does, and the integer engine
// equals the simulation. perch sensitivity takes it too (its per-group candidates raise the opset to 21 across the
// LSTM).
TEST(Recurrent, CrnnQuantizesAroundTheLstmAndRunsInOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("crnn");
  graph::save_model(crnn(3), d / "m.onnx");
  std::mt19937 rng(5);
  write_npy(d / "x.npy", uniform({32, 1, 8, 16}, rng, -1.0f, 1.0f));
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") + " --calib npy:" +
                   q(d / "x.npy") + " --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const graph::Model qm = graph::load_model(d / "q.onnx");
  int per_channel_weights = 0;
  for (const auto& n : qm.graph.nodes) {
    if (n.op_type != "DequantizeLinear") continue;
    const Tensor *w = qm.graph.initializer(n.input(0)), *s = qm.graph.initializer(n.input(1));
    if (w && s && w->dtype() == DType::kInt8 && s->numel() > 1) ++per_channel_weights;
  }
  EXPECT_EQ(per_channel_weights, 2);  // the Conv's (8 scales) and the MatMul's (5); the LSTM's stay float
  for (const auto& engine : {"sim", "int8"}) {
    r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " +
                q(d / (std::string("perch_") + engine)) + " --engine " + engine + " -q");
    ASSERT_EQ(r.code, 0) << engine << ": " << r.err;
  }
  r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor sim = read_npy(d / "perch_sim" / "y.npy"), i8 = read_npy(d / "perch_int8" / "y.npy"),
               ort = read_npy(d / "ort" / "y.npy");
  EXPECT_TRUE(test::same_bits(i8, sim));
  // ONNX Runtime's integer kernels round some requantizations differently from float fake-quant (one step).
  EXPECT_LE(test::max_rel_diff(ort, sim), 0.01);
  // and the quantized model stays close to the float one
  r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "fp32") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_LE(test::max_rel_diff(sim, read_npy(d / "fp32" / "y.npy")), 0.05);
  r = run_cmd(perch_bin() + " sensitivity " + q(d / "m.onnx") + " --calib npy:" + q(d / "x.npy") + " --data npy:" +
              q(d / "x.npy") + " --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  int weight_layers = 0, lstm_output = 0;
  const json report = json::parse(r.out);
  for (const auto& l : report["layers"]) {
    weight_layers += l["kind"] == "weights";
    lstm_output += l["name"] == "h";
  }
  EXPECT_EQ(weight_layers, 2) << r.out;  // the Conv and the MatMul
  EXPECT_EQ(lstm_output, 1) << r.out;    // the LSTM's output is an activation it measures
}

}  // namespace
