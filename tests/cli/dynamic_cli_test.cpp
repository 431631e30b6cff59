// `perch quantize --dynamic` (ptq/dynamic.h): ONNX Runtime runs what it writes and computes what perch's executors
// compute on it; calibration-side flags are refused by name; on the shared Fashion-MNIST models the accuracy is
// ONNX Runtime's (same batch: each batch shares one activation range) and close to fp32.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace perch;
using json = nlohmann::json;
using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;
using test::run_cmd;

namespace {

TEST(DynamicCli, OrtRunsTheModelAsPerchDoes) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("dynamic_tiny");
  graph::save_model(test::tiny_cnn(21), d / "m.onnx");
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "d.onnx") + " --dynamic --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["mode"], "dynamic");
  EXPECT_EQ(j["layers"].size(), 3u);
  EXPECT_EQ(j["dynamic_inputs"], 3);
  EXPECT_EQ(j["layers"][0]["granularity"], "per-channel");
  write_npy(d / "x.npy", test::tiny_cnn_inputs(16, 3).images);
  for (const std::string engine : {"fp32", "int8"}) {
    SCOPED_TRACE(engine);
    r = run_cmd(perch_bin() + " run " + q(d / "d.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / engine) +
                " --engine " + engine + " -q");
    ASSERT_EQ(r.code, 0) << r.err;
  }
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "d.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor ort = read_npy(d / "ort" / "y.npy"), fp = read_npy(d / "fp32" / "y.npy"), i8 = read_npy(d / "int8" / "y.npy");
  EXPECT_TRUE(test::same_bits(i8, fp)) << "the int8 engine runs the integer ops as the float executor does";
  // ONNX Runtime fuses DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(+ bias) into one op (float rounding of
  // scale and bias in another order): a few float32 ulps of the output's magnitude.
  EXPECT_LE(test::max_rel_diff(fp, ort), 1e-6);
}

TEST(DynamicCli, RefusesCalibrationFlagsByName) {
  const fs::path d = scratch("dynamic_flags");
  graph::save_model(test::tiny_cnn(22), d / "m.onnx");
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "d.onnx") +
                   " --dynamic --calib fashion-mnist:train --adaround");
  EXPECT_NE(r.code, 0);
  test::expect_contains(r.err, {"--dynamic", "--calib, --adaround", "do not apply"});
  EXPECT_FALSE(fs::exists(d / "d.onnx"));
  r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "d.onnx") + " --dynamic --weights per-group:4");
  EXPECT_NE(r.code, 0);
  test::expect_contains(r.err, {"per-group"});
  r = run_cmd(perch_bin() + " quantize " + q(d / "m.onnx") + " -o " + q(d / "d.onnx") + " --dynamic-ops MatMul");
  EXPECT_NE(r.code, 0);
  test::expect_contains(r.err, {"--dynamic-ops needs --dynamic"});
}

class SharedDynamic : public ::testing::TestWithParam<const char*> {};

TEST_P(SharedDynamic, AccuracyIsOrtsAndNearFp32) {
  PERCH_REQUIRE_SHARED_MODEL(model, GetParam());
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch(std::string("dynamic_") + GetParam());
  auto r = run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(d / "d.onnx") +
                   " --dynamic --eval fashion-mnist:test --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  const double fp32 = j["accuracy"]["fp32"], dyn = j["quantized_accuracy"];
  EXPECT_GE(dyn, fp32 - 0.003) << "dynamic W8A8 per-channel more than 0.3 pt below fp32";
  const std::string mnist = "/usr/share/datasets/fashion-mnist/";
  // perch evaluates in batches of 64; each batch shares its activation ranges, so ONNX Runtime gets the same batches.
  r = run_cmd("node " + q(ort_dir() / "eval.js") + " " + q(d / "d.onnx") + " --images " + mnist +
              "t10k-images-idx3-ubyte.gz --labels " + mnist + "t10k-labels-idx1-ubyte.gz --batch 64 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NEAR(json::parse(r.out)["accuracy"].get<double>(), dyn, 0.0005);
}

INSTANTIATE_TEST_SUITE_P(Models, SharedDynamic, ::testing::Values("fmnist_convnet.onnx", "fmnist_mbv2.onnx"),
                         [](const auto& info) {
                           std::string s = info.param;
                           return s.substr(0, s.find('.'));
                         });

}  // namespace
