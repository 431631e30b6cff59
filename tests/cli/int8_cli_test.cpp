// perch eval --engine int8|sim|fp32 and perch bench, end to end through the binary, on tiny_cnn quantized by
// perch quantize (the shared models are in tests/ptq/int8_test.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <random>
#include <vector>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/executor.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace perch;

namespace {

using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;

struct Scratch {
  fs::path dir;
  std::string data;  // npy:X,LABELS spec
};

// tiny_cnn, 256 random inputs labelled by the float model, quantized W8A8 per-channel.
const Scratch& tiny() {
  static const Scratch s = [] {
    Scratch r;
    // One folder per process: CTest runs these tests as concurrent processes, each building the fixture.
    r.dir = test::binary_dir() / "test_scratch" / ("int8_cli_" + std::to_string(::getpid()));
    fs::remove_all(r.dir);
    fs::create_directories(r.dir);
    const graph::Model m = test::tiny_cnn(7);
    graph::save_model(m, r.dir / "tiny.onnx");
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(-1.0f, 2.0f);
    Tensor x(DType::kFloat32, {256, 1, 8, 8});
    for (auto& v : x.span<float>()) v = u(rng);
    const Tensor y = runtime::Executor(m).run1(x);
    Tensor labels(DType::kInt64, {256});
    for (int64_t i = 0; i < 256; ++i) {
      const float* p = y.data<float>() + i * 3;
      labels.data<int64_t>()[i] = std::max_element(p, p + 3) - p;
    }
    write_npy(r.dir / "x.npy", x);
    write_npy(r.dir / "labels.npy", labels);
    r.data = "npy:" + (r.dir / "x.npy").string() + "," + (r.dir / "labels.npy").string();
    const auto c = test::run_cmd(perch_bin() + " quantize " + q(r.dir / "tiny.onnx") + " -o " + q(r.dir / "q.onnx") +
                                 " --calib " + q(r.data) + " --calib-count 128 -q");
    EXPECT_EQ(c.code, 0) << c.err;
    return r;
  }();
  return s;
}

json eval(const std::string& model, const std::string& engine) {
  const auto r = test::run_cmd(perch_bin() + " eval " + q(tiny().dir / model) + " --engine " + engine + " --data " +
                               q(tiny().data) + " --json");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << "--json must keep stderr quiet: " << r.err;
  return json::parse(r.out);
}

TEST(CliInt8, EvalEnginesAgree) {
  const json i8 = eval("q.onnx", "int8"), sim = eval("q.onnx", "sim"), fq = eval("q.onnx", "fp32");
  EXPECT_EQ(i8["engine"], "int8");
  EXPECT_EQ(i8["count"], 256);
  EXPECT_EQ(i8["float_nodes"], 0);
  // The exact simulation is bit-identical; the fake-quant float simulation agrees up to rounding.
  EXPECT_EQ(i8["correct"], sim["correct"]);
  EXPECT_NEAR(i8["accuracy"].get<double>(), fq["accuracy"].get<double>(), 0.02);
  // Without --engine, eval is the float executor as before.
  const auto r = test::run_cmd(perch_bin() + " eval " + q(tiny().dir / "q.onnx") + " --data " + q(tiny().data) + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["correct"], fq["correct"]);
}

TEST(CliInt8, EngineErrorsAreClear) {
  auto r = test::run_cmd(perch_bin() + " eval " + q(tiny().dir / "q.onnx") + " --engine int4 --data " + q(tiny().data));
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--engine", "int4", "int8, sim or fp32"});
  // A float model has nothing to run in integers: say so instead of silently running float.
  r = test::run_cmd(perch_bin() + " eval " + q(tiny().dir / "tiny.onnx") + " --engine int8 --data " + q(tiny().data));
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"tiny.onnx", "QDQ", "perch quantize"});
}

TEST(CliInt8, BenchPrintsLatencyAndThroughput) {
  auto r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") +
                         " --engine int8 --batch 4 --threads 1 --iters 5 --warmup 1 --warmup-ms 150 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  // Warm-up lasts until both the count and the time are reached (a run of this model takes microseconds, so the
  // 150 ms give many runs); the timed runs are listed, and the median is theirs.
  EXPECT_GT(j["warmup_runs"].get<int64_t>(), 10) << r.out;
  std::vector<double> times = j["times_ms"].get<std::vector<double>>();
  ASSERT_EQ(times.size(), 5u) << r.out;
  std::sort(times.begin(), times.end());
  EXPECT_EQ(j["median_ms"].get<double>(), times[2]);
  EXPECT_EQ(j["batch"], 4);
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["engine"], "int8");
  const double med = j["median_ms"], ips = j["images_per_second"];
  EXPECT_GT(med, 0.0);
  EXPECT_NEAR(ips, 4 * 1000.0 / med, 1e-6 * ips);
  EXPECT_LE(j["p10_ms"].get<double>(), med);
  EXPECT_GE(j["p90_ms"].get<double>(), med);
  r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") + " --iters 3 --warmup 2 --warmup-ms 0 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["warmup_runs"], 2) << r.out;
  r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") + " --warmup-ms -1");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--warmup-ms", "-1"});
  r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "tiny.onnx") + " --engine fp32 --batch 2 --iters 2 --warmup-ms 0");
  ASSERT_EQ(r.code, 0) << r.err;
  test::expect_contains(r.out, {"median", "images/s", "batch 2"});
  r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") + " --batch 0");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--batch", "0"});
}

// tools/ort/bench.js, the ONNX Runtime side of the comparisons in docs/BENCHMARKS.md, warms up the same way: until both
// --warmup runs and --warmup-ms have passed.
TEST(CliInt8, OrtBenchWarmsUpLikePerchBench) {
  PERCH_REQUIRE_ORT();
  const std::string js = "node " + q(ort_dir() / "bench.js") + " " + q(tiny().dir / "q.onnx");
  auto r = test::run_cmd(js + " --batch 2 --iters 4 --warmup 1 --warmup-ms 150 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_GT(j["warmup_runs"].get<int64_t>(), 10) << r.out;
  EXPECT_EQ(j["batch"], 2);
  r = test::run_cmd(js + " --iters 2 --warmup 3 --warmup-ms 0 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["warmup_runs"], 3) << r.out;
}

// Models with dynamic dims after the batch (PaddleOCR's [N,3,H,W]) are benched at the shape --shape gives; without
// it the error names the dynamic dim and the option, and a --shape that contradicts the model is refused.
TEST(CliInt8, BenchShapeForDynamicInputs) {
  graph::Model m = graph::load_model(tiny().dir / "q.onnx");
  m.graph.inputs.at(0).shape = {-1, 1, -1, -1};
  const fs::path dyn = tiny().dir / "q_dynamic.onnx";
  graph::save_model(m, dyn);
  auto r = test::run_cmd(perch_bin() + " bench " + q(dyn) + " --engine int8 --iters 2 --warmup 0 --warmup-ms 0 --shape 3,1,8,8 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["batch"], 3);
  EXPECT_EQ(j["shape"], json::array({3, 1, 8, 8}));
  r = test::run_cmd(perch_bin() + " bench " + q(dyn) + " --iters 2");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"q_dynamic.onnx", "dynamic dim 2", "--shape"});
  r = test::run_cmd(perch_bin() + " bench " + q(dyn) + " --iters 2 --shape 3,2,8,8");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--shape", "dim 1", "fixes it to 1"});
  r = test::run_cmd(perch_bin() + " bench " + q(dyn) + " --iters 2 --shape 3,1,8");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--shape", "3 dims", "has 4"});
  r = test::run_cmd(perch_bin() + " bench " + q(dyn) + " --iters 2 --batch 2 --shape 3,1,8,8");
  EXPECT_EQ(r.code, 1);
  test::expect_contains(r.err, {"--batch 2", "disagree"});
}

// --profile: where the time goes, per step; the shares sum to 1 and every step ran once per timed run.
TEST(CliInt8, BenchProfileListsEveryStep) {
  for (const char* engine : {"int8", "fp32"}) {
    auto r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") + " --engine " + engine +
                           " --batch 3 --threads 1 --iters 4 --warmup 1 --warmup-ms 0 --profile --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const json j = json::parse(r.out);
    ASSERT_TRUE(j.contains("profile")) << r.out;
    ASSERT_GT(j["profile"].size(), 1u) << r.out;
    double share = 0.0;
    bool conv = false;
    for (const auto& s : j["profile"]) {
      EXPECT_EQ(s["calls_per_run"].get<double>(), 1.0) << s.dump();
      EXPECT_GE(s["ms_per_run"].get<double>(), 0.0);
      share += s["share"].get<double>();
      conv |= s["node"].get<std::string>().rfind("Conv ", 0) == 0;
    }
    EXPECT_NEAR(share, 1.0, 1e-9) << engine;
    EXPECT_TRUE(conv) << engine << ": the Conv has a step";
  }
  auto r = test::run_cmd(perch_bin() + " bench " + q(tiny().dir / "q.onnx") + " --iters 2 --warmup 0 --warmup-ms 0 --profile");
  ASSERT_EQ(r.code, 0) << r.err;
  test::expect_contains(r.out, {"ms/run", "share", "Conv ", "all steps"});
}

}  // namespace
