// End-to-end tests of the perch command line, and interop with ONNX Runtime (npm onnxruntime-node,
// installed by scripts/setup.sh into tools/ort): perch's QDQ outputs must load and run there, and agree
// with perch's own simulation.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace perch;

namespace {

using perch::test::cli::ort_installed;
using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;

using test::CmdResult;
using test::run_cmd;

// Labels [n] of logits y [n, classes]: each row's argmax.
Tensor argmax_labels(const Tensor& y) {
  const int64_t n = y.dim(0), k = y.dim(1);
  Tensor labels(DType::kInt64, {n});
  for (int64_t i = 0; i < n; ++i) {
    const float* r = y.data<float>() + i * k;
    labels.data<int64_t>()[i] = std::max_element(r, r + k) - r;
  }
  return labels;
}

// Writes inputs x.npy ([n,1,8,8] float) and labels.npy (the fp32 model's own argmax) into `dir`.
void write_tiny_data(const graph::Model& m, const fs::path& dir, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 2.0f);
  Tensor x(DType::kFloat32, {n, 1, 8, 8});
  for (auto& v : x.span<float>()) v = u(rng);
  write_npy(dir / "x.npy", x);
  write_npy(dir / "labels.npy", argmax_labels(runtime::Executor(m).run1(x)));
}

struct Compare {
  double max_abs = 0, max_ref = 0;
  int64_t argmax_agree = 0, rows = 0;
};

Compare compare_logits(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  Compare c;
  const int64_t rows = a.dim(0), cols = a.numel() / rows;
  c.rows = rows;
  for (int64_t i = 0; i < rows; ++i) {
    const float* ra = a.data<float>() + i * cols;
    const float* rb = b.data<float>() + i * cols;
    c.argmax_agree += (std::max_element(ra, ra + cols) - ra) == (std::max_element(rb, rb + cols) - rb);
    for (int64_t j = 0; j < cols; ++j) {
      c.max_abs = std::max(c.max_abs, static_cast<double>(std::fabs(ra[j] - rb[j])));
      c.max_ref = std::max(c.max_ref, static_cast<double>(std::fabs(rb[j])));
    }
  }
  return c;
}

// A batch of `shape` uniform in [lo, hi) written to `file`; returned.
Tensor write_uniform(const fs::path& file, const Shape& shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor x(DType::kFloat32, shape);
  for (auto& v : x.span<float>()) v = u(rng);
  write_npy(file, x);
  return x;
}

// perch quantize `model` -o `out` --calib npy:`calib` `extra` -q
CmdResult quantize_with(const fs::path& model, const fs::path& out, const fs::path& calib, const std::string& extra = "") {
  return run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(out) + " --calib " + q("npy:" + calib.string()) +
                 extra + " -q");
}

class TinyInterop : public ::testing::TestWithParam<std::string> {};

// perch quantize -> QDQ model; ONNX Runtime and perch's simulation run it on the same inputs.
TEST_P(TinyInterop, OrtRunsPerchQdqAndAgrees) {
  PERCH_REQUIRE_ORT();
  const std::string weights = GetParam();
  std::string tag = weights;
  for (char& c : tag)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  const fs::path d = scratch("tiny_" + tag);
  const graph::Model m = test::tiny_cnn(7);
  graph::save_model(m, d / "tiny.onnx");
  write_tiny_data(m, d, 256, 11);
  const std::string data = "npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string();

  auto r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " -o " + q(d / "q.onnx") + " --calib " + q(data) +
                   " --calib-count 128 --weights " + weights + " --eval " + q(data) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["eval"]["count"], 256);
  if (weights.find("--empirical-bias-correction") != std::string::npos) {
    EXPECT_EQ(j["empirical_bias_correction"]["layers"], 3);
    EXPECT_EQ(j["empirical_bias_correction"]["images"], 128);
    for (const auto& l : j["layers"]) EXPECT_GT(l["empirical_correction_max"].get<double>(), 0.0) << l["node"];
  } else {
    EXPECT_FALSE(j.contains("empirical_bias_correction"));
    for (const auto& l : j["layers"]) EXPECT_EQ(l["empirical_correction_max"].get<double>(), 0.0) << l["node"];
  }
  const bool adaround = weights.find("--adaround") != std::string::npos;
  EXPECT_EQ(j.contains("adaround"), adaround);
  if (adaround) {
    EXPECT_EQ(j["adaround"]["layers"].size(), 3u);
    EXPECT_EQ(j["adaround"]["images"], 128);
    EXPECT_GT(j["adaround"]["changed"].get<int64_t>(), 0);
    for (const auto& l : j["adaround"]["layers"]) EXPECT_LT(l["loss"].get<double>(), l["loss_nearest"].get<double>()) << l["node"];
  }
  for (const auto& l : j["layers"]) EXPECT_EQ(l["adaptive_rounding"].get<bool>(), adaround) << l["node"];

  r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " +
              q(d / "ort"));
  ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run perch's " << weights << " QDQ model: " << r.err;
  if (weights.find("--act-bits 16") != std::string::npos || weights.find("=16") != std::string::npos) {
    EXPECT_GE(graph::load_model((d / "q.onnx").string()).opset(), 21);
  }
  if (weights.find("--activation-bits") != std::string::npos) {  // mixed: x at 16 bits, the rest at 8
    const graph::Model qm = graph::load_model((d / "q.onnx").string());
    int u16 = 0, u8 = 0;
    for (const auto& n : qm.graph.nodes) {
      if (n.op_type != "QuantizeLinear" || qm.graph.initializer(n.input(0))) continue;
      const DType zt = qm.graph.initializer(n.input(2))->dtype();
      EXPECT_EQ(zt == DType::kUInt16, n.input(0) == "x") << n.input(0);
      (zt == DType::kUInt16 ? u16 : u8) += 1;
    }
    EXPECT_EQ(u16, 1);
    EXPECT_GT(u8, 0);
  }
  const Tensor yp = read_npy(d / "perch" / "y.npy"), yo = read_npy(d / "ort" / "y.npy");
  const Compare c = compare_logits(yp, yo);
  // ONNX Runtime fuses DQ->Conv->Q into integer kernels whose requantization rounds differently from
  // float fake-quant; a few elements may land one step away. Allow 1 % of the output range per element
  // and require the predicted class to agree on at least 97 % of the rows.
  EXPECT_LE(c.max_abs, 0.01 * c.max_ref) << weights;
  EXPECT_GE(c.argmax_agree, c.rows * 97 / 100) << weights;

  // And the float model itself: perch and ONNX Runtime agree to float rounding.
  r = run_cmd(perch_bin() + " run " + q(d / "tiny.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch32") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "tiny.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort32"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Compare c32 = compare_logits(read_npy(d / "perch32" / "y.npy"), read_npy(d / "ort32" / "y.npy"));
  EXPECT_LE(c32.max_abs, 1e-5 * std::max(1.0, c32.max_ref));
  EXPECT_EQ(c32.argmax_agree, c32.rows);
}

INSTANTIATE_TEST_SUITE_P(Weights, TinyInterop, ::testing::Values("per-channel", "per-tensor", "per-group:4",
                                                          "per-tensor --empirical-bias-correction",
                                                          "per-channel --weight-bits 4 --adaround --empirical-bias-correction",
                                                          // uint16 Q/DQ: opset 21 (13 allows only 8-bit integers)
                                                          "per-channel --act-bits 16",
                                                          // mixed precision: the input uint16, the others uint8
                                                          "per-channel --activation-bits x=16"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

// The reference models: perch's simulated W8A8 per-channel accuracy equals ONNX Runtime's on the same
// QDQ file within 0.001, beats PyTorch's per-channel PTQ (../shared/ANCHORS.md) and stays within 0.2 pt
// of fp32 (the "hard" model is held to PyTorch's number only).
struct SharedCase {
  const char* model;
  double fp32, pytorch_per_channel;
  bool hard;
};

// Readable test names in CTest (instead of the parameter's bytes).
void PrintTo(const SharedCase& c, std::ostream* os) { *os << c.model; }

class SharedModelPtq : public ::testing::TestWithParam<SharedCase> {};

TEST_P(SharedModelPtq, PerChannelW8A8BeatsPyTorchAndMatchesOrt) {
  const SharedCase sc = GetParam();
  PERCH_REQUIRE_SHARED_MODEL(model, sc.model);
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch(std::string("shared_") + sc.model);
  const std::string compare = sc.hard ? " --compare" : "";
  auto r = run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(d / "q.onnx") +
                   " --calib fashion-mnist:train --eval fashion-mnist:test --json" + compare);
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  const double fp32 = j["accuracy"]["fp32"], pc = j["quantized_accuracy"];
  EXPECT_EQ(j["quantized_label"], "W8A8 per-channel +CLE +BC");
  EXPECT_NEAR(fp32, sc.fp32, 5e-5);
  // The anchor is checked on the model as deployed: the integer engine (bit-exact with perch's exact simulation,
  // the same on every CPU). `quantize --eval` reports the float fake-quant simulation, whose float rounding moves a
  // value across a quantization boundary now and then, differently on AVX2 and AVX-512 (mbv2: 0.8882 on an AVX2-only
  // CPU where the written file gives 0.8883 on the int8 engine and in ONNX Runtime; docs/INTEGER.md).
  r = run_cmd(perch_bin() + " eval " + q(d / "q.onnx") + " --engine int8 --data fashion-mnist:test --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const double deployed = json::parse(r.out)["accuracy"];
  std::printf("  %s W8A8 per-channel: quantize --eval (float simulation) %.4f, int8 engine %.4f, PyTorch %.4f\n",
              sc.model, pc, deployed, sc.pytorch_per_channel);
  EXPECT_GE(deployed, sc.pytorch_per_channel) << "perch per-channel W8A8 below PyTorch FX PTQ";
  // Within 0.2 pt of fp32 — on the hard model too, thanks to cross-layer equalization.
  EXPECT_GE(deployed, fp32 - 0.002) << "more than 0.2 pt below fp32";
  EXPECT_GE(pc, fp32 - 0.002) << "the float simulation more than 0.2 pt below fp32";
  if (sc.hard) {
    // Plain min/max PTQ (no equalization, no bias correction) shows the textbook picture: per-tensor weights lose visibly, per-channel recovers.
    const double pt = j["accuracy"]["W8A8 per-tensor"], pc_plain = j["accuracy"]["W8A8 per-channel"];
    EXPECT_GE(pc_plain - pt, 0.05) << "per-tensor should be visibly worse on the hard model";
    EXPECT_GE(pc_plain, sc.pytorch_per_channel);
  }
  const std::string mnist = "/usr/share/datasets/fashion-mnist/";
  r = run_cmd("node " + q(ort_dir() / "eval.js") + " --level exact " + q(d / "q.onnx") + " --images " + mnist +
              "t10k-images-idx3-ubyte.gz --labels " + mnist + "t10k-labels-idx1-ubyte.gz --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const double ort = json::parse(r.out)["accuracy"];
  EXPECT_NEAR(ort, deployed, 0.001) << "ONNX Runtime disagrees with perch's int8 engine on the same QDQ model";
}

// ANCHORS.md's 4-bit goal: W4A8 within 1 pt of fp32 (PyTorch's per-channel PTQ: convnet_hard 0.4234, mbv2 0.8755),
// per-channel and per-tensor, with adaptive rounding and the empirical bias correction.
TEST_P(SharedModelPtq, W4A8WithAdaRoundWithinOnePointOfFp32) {
  const SharedCase sc = GetParam();
  PERCH_REQUIRE_SHARED_MODEL(model, sc.model);
  const fs::path d = scratch(std::string("shared_w4_") + sc.model);
  for (const std::string weights : {"per-channel", "per-tensor"}) {
    auto r = run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(d / ("q_" + weights + ".onnx")) +
                     " --calib fashion-mnist:train --eval fashion-mnist:test --json --weight-bits 4 --weights " + weights +
                     " --adaround --empirical-bias-correction");
    ASSERT_EQ(r.code, 0) << r.err;
    const json j = json::parse(r.out);
    EXPECT_EQ(j["quantized_label"], "W4A8 " + weights + " +CLE +AdaRound +BC +EBC");
    const double fp32 = j["accuracy"]["fp32"], acc = j["quantized_accuracy"];
    EXPECT_NEAR(fp32, sc.fp32, 5e-5);
    EXPECT_GE(acc, fp32 - 0.01) << weights << ": W4A8 more than 1 pt below fp32";
  }
}

INSTANTIATE_TEST_SUITE_P(Anchors, SharedModelPtq,
                         ::testing::Values(SharedCase{"fmnist_convnet.onnx", 0.9181, 0.9177, false},
                                           SharedCase{"fmnist_convnet_hard.onnx", 0.9181, 0.9066, true},
                                           SharedCase{"fmnist_mbv2.onnx", 0.8878, 0.8883, false}),
                         [](const auto& info) {
                           std::string s = info.param.model;
                           return s.substr(0, s.find('.'));
                         });

TEST(Cli, EvalJsonHasAccuracyAndCount) {
  const fs::path d = scratch("eval_json");
  const graph::Model m = test::tiny_cnn(3);
  graph::save_model(m, d / "tiny.onnx");
  write_tiny_data(m, d, 64, 5);
  auto r = run_cmd(perch_bin() + " eval " + q(d / "tiny.onnx") + " --data " +
                   q("npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string()) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["count"], 64);
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 1.0);  // labels are the model's own predictions
  EXPECT_TRUE(r.err.empty()) << "--json must keep stderr quiet: " << r.err;
}

TEST(Cli, ErrorsNameWhatIsWrong) {
  const fs::path d = scratch("errors");
  auto r = run_cmd(perch_bin() + " eval " + q(d / "missing.onnx"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.onnx"), std::string::npos) << r.err;

  {
    std::ofstream(d / "garbage.onnx") << "this is not a protobuf";
  }
  r = run_cmd(perch_bin() + " inspect " + q(d / "garbage.onnx"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("garbage.onnx"), std::string::npos) << r.err;

  graph::save_model(test::tiny_cnn(1), d / "tiny.onnx");
  r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " --weights per-row");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("per-row"), std::string::npos) << r.err;

  r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " --calib nosuch:thing");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("nosuch"), std::string::npos) << r.err;

  r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " --adaround-quantized-inputs");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("needs --adaround"), std::string::npos) << r.err;

  r = run_cmd(perch_bin() + " --quiet quantise " + q(d / "tiny.onnx"));  // a misspelt command is named, with the list
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown command 'quantise'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("quantize, sensitivity, eval"), std::string::npos) << r.err;
  r = run_cmd(perch_bin() + " --quiet");  // no command at all
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("a command is required (commands: quantize"), std::string::npos) << r.err;
  r = run_cmd(perch_bin() + " --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("quantize"), std::string::npos) << r.out;
}

TEST(Cli, InspectReportsChannelSpread) {
  const fs::path d = scratch("inspect");
  graph::save_model(test::tiny_cnn(1), d / "tiny.onnx");
  auto r = run_cmd(perch_bin() + " inspect " + q(d / "tiny.onnx") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_EQ(j["layers"].size(), 3u);
  // w1's channels were scaled x0.01 .. x1: the spread of per-channel ranges is about 100.
  const double spread = j["layers"][0]["spread"];
  EXPECT_GT(spread, 30.0);
  EXPECT_LT(spread, 300.0);
  EXPECT_EQ(j["layers"][2]["axis"], 0);  // Gemm with transB=1: output channels are rows of B
}

// --search-ranges: the report names every moved grid and the output error before and after; the written model is
// the searched one (a different file from the plain run); bad values are refused by name.
TEST(Cli, QuantizeSearchRangesReportsItsMoves) {
  const fs::path d = scratch("search_ranges");
  const graph::Model m = test::tiny_cnn(11);
  graph::save_model(m, d / "tiny.onnx");
  write_tiny_data(m, d, 48, 5);
  const std::string base = perch_bin() + " quantize " + q(d / "tiny.onnx") + " --calib " +
                           q("npy:" + (d / "x.npy").string()) + " --act-bits 4 --json";
  auto r = run_cmd(base + " -o " + q(d / "plain.onnx"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(json::parse(r.out).contains("range_search"));
  r = run_cmd(base + " -o " + q(d / "searched.onnx") + " --search-ranges --search-ranges-images 32");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_TRUE(j.contains("range_search")) << r.out;
  const json& rs = j["range_search"];
  EXPECT_EQ(rs["objective"], "kl");
  EXPECT_EQ(rs["images"], 32);
  EXPECT_GT(rs["grids"].get<int>(), 0);
  const double before = rs["error_before"], after = rs["error_after"];
  ASSERT_FALSE(rs["moves"].empty());
  EXPECT_LT(after, before);
  EXPECT_DOUBLE_EQ(rs["moves"].back()["error"].get<double>(), after);
  for (const auto& mv : rs["moves"]) {
    EXPECT_EQ(mv["before"].size(), 2u);
    EXPECT_NE(mv["before"], mv["after"]) << mv.dump();
  }
  std::ifstream a(d / "plain.onnx", std::ios::binary), b(d / "searched.onnx", std::ios::binary);
  EXPECT_NE(std::string((std::istreambuf_iterator<char>(a)), {}), std::string((std::istreambuf_iterator<char>(b)), {}));
  r = run_cmd(base + " -o " + q(d / "bad.onnx") + " --search-ranges --search-ranges-images 0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--search-ranges-images"), std::string::npos) << r.err;
}

// A model with two inputs: every command that reads data takes npy:NAME=FILE,... (one batch per input); the written
// QDQ model runs in ONNX Runtime with both inputs, and perch's engines agree with it.
TEST(Cli, TwoInputModelQuantizesEvaluatesAndRunsInOnnxRuntime) {
  const fs::path d = scratch("two_inputs");
  const graph::Model m = test::two_input_cnn();
  graph::save_model(m, d / "m.onnx");
  const int64_t n = 96;
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> ux(-1.0f, 2.0f), us(-3.0f, 3.0f);
  Tensor x(DType::kFloat32, {n, 1, 8, 8}), s(DType::kFloat32, {n, 8, 1, 1});
  for (auto& v : x.span<float>()) v = ux(rng);
  for (auto& v : s.span<float>()) v = us(rng);
  write_npy(d / "x.npy", x);
  write_npy(d / "s.npy", s);
  write_npy(d / "labels.npy", argmax_labels(runtime::Executor(m).run({{"x", x}, {"s", s}}).at("y")));
  const std::string inputs = "npy:x=" + (d / "x.npy").string() + ",s=" + (d / "s.npy").string();
  const std::string data = inputs + "," + (d / "labels.npy").string();

  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") + " --calib " + q(inputs) +
                   " --calib-count 64 --empirical-bias-correction --eval " + q(data) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["eval"]["count"], n);
  EXPECT_EQ(j["accuracy"]["fp32"].get<double>(), 1.0);  // the labels are the float model's own decisions
  EXPECT_GE(j["quantized_accuracy"].get<double>(), 0.9);
  EXPECT_EQ(j["empirical_bias_correction"]["images"], 64);

  // The integer engine and its simulation on both inputs: the same decisions, bit for bit.
  double acc[2];
  for (int e = 0; e < 2; ++e) {
    r = run_cmd(perch_bin() + " eval " + q(d / "q.onnx") + " --engine " + (e ? "sim" : "int8") + " --data " + q(data) + " --json");
    ASSERT_EQ(r.code, 0) << r.err;
    acc[e] = json::parse(r.out)["accuracy"].get<double>();
  }
  EXPECT_EQ(acc[0], acc[1]);
  EXPECT_EQ(acc[0], j["quantized_accuracy"].get<double>());

  // Data for one input only: refused, naming the missing input.
  r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "bad.onnx") + " --calib " +
              q("npy:" + (d / "x.npy").string()));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("does not feed 's'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "bad.onnx"));

  // bench: the second input random (float, static after the batch) or given; a wrong name is refused.
  for (const std::string& extra : std::vector<std::string>{"", " --input s=" + q(d / "s.npy")}) {
    r = run_cmd(perch_bin() + " bench " + q(d / "q.onnx") + " --batch 96 --iters 2 --warmup 1 --warmup-ms 0 --json" + extra);
    ASSERT_EQ(r.code, 0) << extra << r.err;
    EXPECT_EQ(json::parse(r.out)["batch"], 96);
  }
  r = run_cmd(perch_bin() + " bench " + q(d / "q.onnx") + " --iters 1 --input shift=" + q(d / "s.npy"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("has no input named 'shift'"), std::string::npos) << r.err;

  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  const std::string feeds = " --input x=" + q(d / "x.npy") + " --input s=" + q(d / "s.npy");
  r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + feeds + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + feeds + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run the two-input QDQ model: " << r.err;
  const Compare c = compare_logits(read_npy(d / "perch" / "y.npy"), read_npy(d / "ort" / "y.npy"));
  EXPECT_LE(c.max_abs, 0.01 * c.max_ref);  // as TinyInterop: a step of ONNX Runtime's integer requantization
  EXPECT_GE(c.argmax_agree, c.rows * 97 / 100);
}

// Opset-6 exports (Gemm with `broadcast`, BatchNormalization with `is_test`/`spatial`; Pad and Split with attributes,
// Sum) quantized per channel go to opset 13: ONNX Runtime loads the result (it rejects the dropped attributes and
// the attribute forms) and agrees with perch.
class Opset6 : public testing::TestWithParam<const char*> {};

TEST_P(Opset6, QuantizedPerChannelRunsInOnnxRuntime) {
  const bool conv = std::string(GetParam()) == "convnet";
  const fs::path d = scratch(std::string("opset6_") + GetParam());
  graph::save_model(conv ? test::opset6_convnet(5) : test::opset6_mlp(3), d / "m.onnx");
  write_uniform(d / "x.npy", conv ? Shape{64, 3, 8, 8} : Shape{64, 10}, 4);
  auto r = quantize_with(d / "m.onnx", d / "q.onnx", d / "x.npy");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(graph::load_model((d / "q.onnx").string()).opset(), 13);
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run the raised opset-6 model: " << r.err;
  const Compare c = compare_logits(read_npy(d / "perch" / "y.npy"), read_npy(d / "ort" / "y.npy"));
  EXPECT_LE(c.max_abs, 0.01 * c.max_ref);  // as TinyInterop
  EXPECT_GE(c.argmax_agree, c.rows * 97 / 100);
}

INSTANTIATE_TEST_SUITE_P(Models, Opset6, testing::Values("mlp", "convnet"));

// Calibration data at two input sizes (`npy:A+npy:B`) for a model with dynamic height and width: quantize and
// eval read both (eval counts every row, labelled by the float model), and ONNX Runtime runs the QDQ model at both
// sizes as perch does.
TEST(Cli, TwoShapeDataCalibratesAndEvaluates) {
  const fs::path d = scratch("two_shapes");
  graph::Model m = test::tiny_cnn(3);
  m.graph.inputs[0].shape = {-1, 1, -1, -1};
  graph::save_model(m, d / "m.onnx");
  uint32_t seed = 6;
  for (const auto& [name, shape] : {std::pair<std::string, Shape>{"a", {40, 1, 8, 8}}, {"b", {24, 1, 12, 10}}}) {
    const Tensor x = write_uniform(d / (name + ".npy"), shape, seed++, -1.0f, 2.0f);
    write_npy(d / (name + "_labels.npy"), argmax_labels(runtime::Executor(m).run1(x)));
  }
  const std::string data = "npy:" + (d / "a.npy").string() + "," + (d / "a_labels.npy").string() + "+npy:" +
                           (d / "b.npy").string() + "," + (d / "b_labels.npy").string();
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") + " --calib " + q(data) +
                   " --empirical-bias-correction --eval " + q(data) + " --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["eval"]["count"], 64);
  r = run_cmd(perch_bin() + " eval " + q(d / "m.onnx") + " --data " + q(data) + " --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["accuracy"], 1.0);
  EXPECT_EQ(json::parse(r.out)["count"], 64);
  // The integer engine takes both sizes too, and equals its simulation on them.
  std::string acc[2];
  for (int e = 0; e < 2; ++e) {
    r = run_cmd(perch_bin() + " eval " + q(d / "q.onnx") + " --engine " + (e ? "sim" : "int8") + " --data " + q(data) + " --json -q");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["count"], 64);
    acc[e] = json::parse(r.out)["accuracy"].dump();
  }
  EXPECT_EQ(acc[0], acc[1]);
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  for (const char* x : {"a", "b"}) {
    const std::string in = " --input x=" + q(d / (std::string(x) + ".npy"));
    r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + in + " -o " + q(d / (std::string("perch_") + x)) + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + in + " -o " + q(d / (std::string("ort_") + x)));
    ASSERT_EQ(r.code, 0) << r.err;
    const Compare c = compare_logits(read_npy(d / (std::string("perch_") + x) / "y.npy"),
                                     read_npy(d / (std::string("ort_") + x) / "y.npy"));
    EXPECT_LE(c.max_abs, 0.01 * c.max_ref) << x;  // as TinyInterop
    EXPECT_GE(c.argmax_agree, c.rows * 97 / 100) << x;
  }
}

// ConvTranspose with int8 weights (per output channel: axis 1 for group 1, axis 0 depthwise; per input channel for
// another grouping) and an int32 bias: ONNX Runtime loads and runs the QDQ model as perch does, per channel and per
// tensor.
class DeconvInterop : public testing::TestWithParam<int64_t> {};

TEST_P(DeconvInterop, QuantizedConvTransposeRunsInOnnxRuntime) {
  const int64_t group = GetParam();
  const fs::path d = scratch("deconv_" + std::to_string(group));
  graph::save_model(test::deconv_net(group, 4), d / "m.onnx");
  write_uniform(d / "x.npy", {32, 4, 5, 5}, 8);
  for (const char* w : {"per-channel", "per-tensor"}) {
    SCOPED_TRACE(w);
    const fs::path qm = d / (std::string(w) + ".onnx");
    auto r = quantize_with(d / "m.onnx", qm, d / "x.npy", std::string(" --weights ") + w);
    ASSERT_EQ(r.code, 0) << r.err;
    if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
    r = run_cmd(perch_bin() + " run " + q(qm) + " --input x=" + q(d / "x.npy") + " -o " + q(d / (std::string("perch_") + w)) + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(qm) + " --input x=" + q(d / "x.npy") + " -o " +
                q(d / (std::string("ort_") + w)));
    ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run the quantized ConvTranspose: " << r.err;
    const Compare c = compare_logits(read_npy(d / (std::string("perch_") + w) / "y.npy"),
                                     read_npy(d / (std::string("ort_") + w) / "y.npy"));
    EXPECT_LE(c.max_abs, 0.01 * c.max_ref);  // as TinyInterop: a step of ONNX Runtime's integer requantization
  }
}

INSTANTIATE_TEST_SUITE_P(Groups, DeconvInterop, testing::Values(int64_t{1}, int64_t{8}, int64_t{2}));

// `perch run` and ONNX Runtime on `model` with input x = the .npy `x` (outputs under `out`_perch, `out`_ort): their
// outputs y compared. Fails the test (and returns an empty comparison) when either cannot run it.
Compare perch_vs_ort(const fs::path& model, const fs::path& x, const fs::path& out) {
  const fs::path pd = out.string() + "_perch", od = out.string() + "_ort";
  auto r = run_cmd(perch_bin() + " run " + q(model) + " --input x=" + q(x) + " -o " + q(pd) + " -q");
  EXPECT_EQ(r.code, 0) << r.err;
  auto o = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(model) + " --input x=" + q(x) + " -o " + q(od));
  EXPECT_EQ(o.code, 0) << o.err;
  if (r.code != 0 || o.code != 0) return {};
  return compare_logits(read_npy(pd / "y.npy"), read_npy(od / "y.npy"));
}

// A float16 model (initializers, input and output float16): `perch eval` reads float32 data rounded to float16 and
// scores it as the float32 model does; `perch run` takes and writes float16 .npy, within float16 rounding of ONNX
// Runtime; `perch inspect` lists its weights; `perch quantize` quantizes the float32 model it widens to, saying so,
// and ONNX Runtime runs the result.
TEST(Cli, Float16ModelRunsEvaluatesAndQuantizesAsFloat32) {
  const fs::path d = scratch("float16");
  const graph::Model m = test::tiny_cnn(4);
  graph::Model h = m;
  for (auto& [name, t] : h.graph.initializers)
    if (t.dtype() == DType::kFloat32) t = t.to(DType::kFloat16);
  h.graph.inputs[0].dtype = h.graph.outputs[0].dtype = DType::kFloat16;
  graph::save_model(h, d / "h.onnx");
  const Tensor x = write_uniform(d / "x.npy", {64, 1, 8, 8}, 3, -1.0f, 2.0f);
  write_npy(d / "labels.npy", argmax_labels(runtime::Executor(m).run1(x)));
  write_npy(d / "x16.npy", x.to(DType::kFloat16));
  auto r = run_cmd(perch_bin() + " eval " + q(d / "h.onnx") + " --data " +
                   q("npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string()) + " --json -q");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_GE(json::parse(r.out)["accuracy"].get<double>(), 0.95);  // float16 roundings flip few of 64 argmaxes
  r = run_cmd(perch_bin() + " run " + q(d / "h.onnx") + " --input x=" + q(d / "x16.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor y = read_npy(d / "perch" / "y.npy");
  ASSERT_EQ(y.dtype(), DType::kFloat16);
  r = run_cmd(perch_bin() + " inspect " + q(d / "h.onnx") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json layers = json::parse(r.out)["layers"];
  ASSERT_EQ(layers.size(), 3u);  // its float16 weights listed, marked
  for (const auto& l : layers) EXPECT_NE(l["note"].get<std::string>().find("float16"), std::string::npos) << l;
  r = run_cmd(perch_bin() + " quantize " + q(d / "h.onnx") + " -o " + q(d / "q.onnx") + " --calib " +
              q("npy:" + (d / "x.npy").string()) + " --eval " +
              q("npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string()) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["float16_values_widened"], 10);  // 8 initializers, the input and the output
  EXPECT_GE(json::parse(r.out)["quantized_accuracy"].get<double>(), 0.95);
  r = quantize_with(d / "h.onnx", d / "q_notes.onnx", d / "x.npy", " --calib-count 16");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;  // -q: no note
  r = run_cmd(perch_bin() + " quantize " + q(d / "h.onnx") + " -o " + q(d / "q_notes.onnx") + " --calib " +
              q("npy:" + (d / "x.npy").string()) + " --calib-count 16");
  ASSERT_EQ(r.code, 0) << r.err;
  test::expect_contains(r.err, {"note: ", "h.onnx is a float16 model: quantized as the float32 model it widens to"});
  const graph::Model qm = graph::load_model(d / "q.onnx");
  EXPECT_EQ(qm.graph.inputs[0].dtype, DType::kFloat32);
  for (const auto& [name, t] : qm.graph.initializers) EXPECT_NE(t.dtype(), DType::kFloat16) << name;
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "h.onnx") + " --input x=" + q(d / "x16.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor yo = read_npy(d / "ort" / "y.npy");
  ASSERT_EQ(yo.dtype(), DType::kFloat16);
  EXPECT_LE(test::max_rel_diff(y.to_f32(), yo.to_f32()), 1e-2);  // float16 roundings per op, in either order
  const Compare c = perch_vs_ort(d / "q.onnx", d / "x.npy", d / "q");
  EXPECT_LE(c.max_abs, 0.01 * c.max_ref);  // as TinyInterop
}

// A 3-D (volumetric) model through the whole pipeline: per-channel weights on the 5-D Conv weights (one scale per
// output channel), AdaRound, the empirical correction and the range search run on 3-D convolutions; the integer
// engine (3-D layers in float between their Q/DQ) equals its simulation; ONNX Runtime runs the QDQ model as perch does.
TEST(Cli, VolumetricModelQuantizesPerChannelAndRunsInOnnxRuntime) {
  const fs::path d = scratch("conv3d");
  const graph::Model m = test::conv3d_net(5);
  graph::save_model(m, d / "m.onnx");
  const Tensor x = write_uniform(d / "x.npy", {48, 2, 6, 8, 8}, 9);
  write_npy(d / "labels.npy", argmax_labels(runtime::Executor(m).run1(x)));
  const std::string data = "npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string();
  auto r = quantize_with(d / "m.onnx", d / "q.onnx", d / "x.npy",
                         " --adaround --adaround-iters 100 --empirical-bias-correction --search-ranges --eval " + q(data) +
                             " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["accuracy"]["fp32"], 1.0);  // the labels are the float model's own
  EXPECT_GE(j["quantized_accuracy"].get<double>(), 0.9) << j["accuracy"];
  EXPECT_EQ(j["empirical_bias_correction"]["layers"], 4);
  EXPECT_EQ(j["adaround"]["layers"].size(), 4u);  // the three 3-D convs and the Gemm
  const graph::Model qm = graph::load_model(d / "q.onnx");
  int per_channel = 0;
  for (const auto& n : qm.graph.nodes) {
    if (n.op_type != "DequantizeLinear") continue;
    const Tensor* s = qm.graph.initializer(n.input(1));
    const Tensor* w = qm.graph.initializer(n.input(0));
    if (s && w && w->rank() == 5) {
      EXPECT_EQ(s->numel(), w->dim(0)) << n.describe();
      EXPECT_EQ(n.attr_int("axis", 1), 0) << n.describe();
      ++per_channel;
    }
  }
  EXPECT_EQ(per_channel, 3);
  std::string acc[2];
  for (int e = 0; e < 2; ++e) {
    r = run_cmd(perch_bin() + " eval " + q(d / "q.onnx") + " --engine " + (e ? "sim" : "int8") + " --data " + q(data) + " --json -q");
    ASSERT_EQ(r.code, 0) << r.err;
    acc[e] = json::parse(r.out)["accuracy"].dump();
  }
  EXPECT_EQ(acc[0], acc[1]);
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  const Compare c = perch_vs_ort(d / "q.onnx", d / "x.npy", d / "q");
  EXPECT_LE(c.max_abs, 0.01 * c.max_ref);  // as TinyInterop
  EXPECT_GE(c.argmax_agree, c.rows * 97 / 100);
}

// Upsample (7, 9) and Resize-10, raised for per-channel QDQ to Resize's opset-13 form (asymmetric coordinates,
// nearest_mode floor / ceil): ONNX Runtime gives the same outputs for the raised float model as for the original —
// its own reading of the old versions is the reference — and runs the quantized model as perch does.
struct LegacyResizeCase {
  const char* name;
  int64_t opset;
  const char* op;
  const char* mode;
  std::vector<float> scales;
};
void PrintTo(const LegacyResizeCase& c, std::ostream* os) { *os << c.name; }
class LegacyResize : public testing::TestWithParam<LegacyResizeCase> {};

TEST_P(LegacyResize, RaisedModelMatchesOnnxRuntimeOnTheOriginal) {
  const LegacyResizeCase& c = GetParam();
  const fs::path d = scratch(std::string("legacy_resize_") + c.name);
  const graph::Model m = test::legacy_resize_net(c.opset, c.op, c.mode, c.scales, 7);
  graph::Model raised = m;
  ptq::raise_opset(raised, 13);
  graph::save_model(m, d / "m.onnx");
  graph::save_model(raised, d / "r.onnx");
  const Tensor x = write_uniform(d / "x.npy", {16, 3, 6, 6}, 5);
  auto r = quantize_with(d / "m.onnx", d / "q.onnx", d / "x.npy");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(graph::load_model((d / "q.onnx").string()).opset(), 13);
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  for (const char* model : {"m", "r", "q"}) {
    r = run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / (std::string(model) + ".onnx")) + " --input x=" +
                q(d / "x.npy") + " -o " + q(d / (std::string("ort_") + model)));
    ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run " << model << ".onnx: " << r.err;
  }
  const Tensor orig = read_npy(d / "ort_m" / "y.npy"), rais = read_npy(d / "ort_r" / "y.npy");
  ASSERT_EQ(orig.shape(), rais.shape());
  const Compare f = compare_logits(rais, orig);
  EXPECT_LE(f.max_abs, 1e-6 * f.max_ref) << "ONNX Runtime: the raised model differs from the original";
  // perch's float executor on the original agrees with ONNX Runtime's reading of it.
  const Compare p = compare_logits(runtime::Executor(m).run1(x), orig);
  EXPECT_LE(p.max_abs, 1e-6 * p.max_ref) << "perch's executor differs from ONNX Runtime on the original";
  r = run_cmd(perch_bin() + " run " + q(d / "q.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  const Compare qc = compare_logits(read_npy(d / "perch" / "y.npy"), read_npy(d / "ort_q" / "y.npy"));
  EXPECT_LE(qc.max_abs, 0.01 * qc.max_ref);  // as TinyInterop: a step of ONNX Runtime's integer requantization
}

INSTANTIATE_TEST_SUITE_P(
    Models, LegacyResize,
    testing::Values(LegacyResizeCase{"upsample7_nearest", 7, "Upsample", "nearest", {1, 1, 2, 3}},
                    LegacyResizeCase{"upsample9_nearest_fractional", 9, "Upsample", "nearest", {1, 1, 1.5f, 2.5f}},
                    LegacyResizeCase{"upsample9_linear", 9, "Upsample", "linear", {1, 1, 2, 1.75f}},
                    LegacyResizeCase{"resize10_nearest_down", 10, "Resize", "nearest", {1, 1, 0.5f, 0.75f}},
                    LegacyResizeCase{"resize10_nearest_up", 10, "Resize", "nearest", {1, 1, 1.5f, 2}},
                    LegacyResizeCase{"resize10_linear", 10, "Resize", "linear", {1, 1, 0.75f, 1.5f}}),
    [](const testing::TestParamInfo<LegacyResizeCase>& i) { return std::string(i.param.name); });

TEST(Cli, QuantizeNeverLeavesAHalfWrittenOutput) {
  const fs::path d = scratch("atomic");
  graph::save_model(test::tiny_cnn(2), d / "tiny.onnx");
  write_tiny_data(test::tiny_cnn(2), d, 32, 1);
  {
    std::ofstream(d / "out.onnx") << "previous";
  }
  // Fails during calibration (bad data spec after the model loads): the old output must survive intact.
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " -o " + q(d / "out.onnx") + " --calib npy:" +
                   q(d / "nonexistent.npy"));
  EXPECT_EQ(r.code, 1);
  std::ifstream f(d / "out.onnx");
  std::string s((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(s, "previous");
  int files = 0;
  for (const auto& e : fs::directory_iterator(d)) files += e.path().filename().string().find("out.onnx") != std::string::npos;
  EXPECT_EQ(files, 1) << "a temporary file was left behind";
}

}  // namespace
