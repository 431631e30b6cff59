// `perch quantize --auto`, `--config`, `perch sensitivity` and the HTML report, end to end.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

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

struct AutoCase {
  const char* model;
  const char* prefer;
  double max_drop_pt;
};
void PrintTo(const AutoCase& c, std::ostream* os) { *os << c.model << " --prefer " << c.prefer; }

class AutoOnSharedModels : public ::testing::TestWithParam<AutoCase> {};

// The issue's targets: convnet_hard --prefer per-tensor --max-drop 0.3 keeps <= 0.3 pt on the disjoint
// verification half with at least half the weight layers per-tensor; mbv2 --prefer small --max-drop 0.5
// keeps <= 0.5 pt with at least 40 % of the weight bytes in int4.
TEST_P(AutoOnSharedModels, MeetsTheBudgetOnTheVerificationSplit) {
  const AutoCase c = GetParam();
  PERCH_REQUIRE_SHARED_MODEL(model, c.model);
  const fs::path d = scratch(std::string("auto_") + c.prefer);
  auto r = test::run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(d / "q.onnx") + " --auto --prefer " + c.prefer +
                         " --max-drop " + std::to_string(c.max_drop_pt) + " --data fashion-mnist:test --save-config " +
                         q(d / "chosen.json") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  const json& s = j["auto"]["selection"];
  const double verify_drop = 100 * (s["fp32_verify"].get<double>() - s["quant_verify"].get<double>());
  const double select_drop = 100 * (s["fp32_select"].get<double>() - s["quant_select"].get<double>());
  EXPECT_LE(select_drop, c.max_drop_pt + 1e-9);
  EXPECT_LE(verify_drop, c.max_drop_pt) << "selection split drop " << select_drop;
  if (std::string(c.prefer) == "per-tensor") {
    EXPECT_GE(s["per_tensor_layer_fraction"].get<double>(), 0.5);
  } else {
    EXPECT_GE(s["int4_byte_fraction"].get<double>(), 0.4);
  }
  // Re-applying the saved configuration reproduces the same model, byte for byte.
  r = test::run_cmd(perch_bin() + " -q quantize " + q(model) + " -o " + q(d / "again.onnx") + " --config " + q(d / "chosen.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream a(d / "q.onnx", std::ios::binary), b(d / "again.onnx", std::ios::binary);
  const std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
}

INSTANTIATE_TEST_SUITE_P(Targets, AutoOnSharedModels,
                         ::testing::Values(AutoCase{"fmnist_convnet_hard.onnx", "per-tensor", 0.3},
                                           AutoCase{"fmnist_mbv2.onnx", "small", 0.5}),
                         [](const auto& info) { return std::string(info.param.prefer) == "small" ? "mbv2_small" : "hard_per_tensor"; });

TEST(Config, RejectsForeignSchemaAndUnknownLayers) {
  const fs::path d = scratch("config_errors");
  graph::save_model(test::tiny_cnn(1), d / "tiny.onnx");
  {
    std::ofstream(d / "bad.json") << R"({"schema": "something-else", "version": 1})";
    std::ofstream(d / "v9.json") << R"({"schema": "perch.quantization-config", "version": 9, "layers": []})";
    std::ofstream(d / "layer.json")
        << R"({"schema": "perch.quantization-config", "version": 1, "layers": [{"node": "nope", "weights": "fp32"}]})";
  }
  const std::string base = perch_bin() + " quantize " + q(d / "tiny.onnx") + " --calib-count 8 --config ";
  auto r = test::run_cmd(base + q(d / "bad.json"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("schema"), std::string::npos) << r.err;
  r = test::run_cmd(base + q(d / "v9.json"));
  EXPECT_NE(r.err.find("version 9"), std::string::npos) << r.err;
  r = test::run_cmd(base + q(d / "layer.json"));
  EXPECT_NE(r.err.find("'nope'"), std::string::npos) << r.err;
  {
    std::ofstream(d / "bits_type.json")
        << R"({"schema": "perch.quantization-config", "version": 1, "layers": [], "activation_bits": {"x": "sixteen"}})";
    std::ofstream(d / "bits_name.json")
        << R"({"schema": "perch.quantization-config", "version": 1, "layers": [], "activation_bits": {"nosuch": 16}})";
  }
  r = test::run_cmd(base + q(d / "bits_type.json"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("activation_bits: 'x'"), std::string::npos) << r.err;
  // Names are checked when the model is built, after calibration: these need data the tiny model takes.
  write_npy(d / "x.npy", test::tiny_cnn_inputs(8, 5).images);
  const std::string calib = " --calib " + q("npy:" + (d / "x.npy").string());
  r = test::run_cmd(base + q(d / "bits_name.json") + calib);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'nosuch' is not a quantizable activation"), std::string::npos) << r.err;
  // The same request from the command line, and its syntax errors.
  const std::string flags = perch_bin() + " quantize " + q(d / "tiny.onnx") + " --calib-count 8" + calib + " --activation-bits ";
  r = test::run_cmd(flags + "x:16");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'x:16' is not NAME=BITS"), std::string::npos) << r.err;
  r = test::run_cmd(flags + "x=12");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'x' is given 12 bits"), std::string::npos) << r.err;
  r = test::run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " --calib-count 8 --act-fallback-bits 16");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--act-fallback-bits needs --auto"), std::string::npos) << r.err;
}

// Without labels, `perch sensitivity` scores agreement with the float model; on a classifier that equals
// top-1 against labels made of the float model's own predictions. The calibration flags are quantize's.
TEST(SensitivityCli, WithoutLabelsScoresAgreementAndTakesQuantizeCalibrationFlags) {
  const fs::path d = scratch("sens_unlabelled");
  const graph::Model m = test::tiny_cnn(3);
  graph::save_model(m, d / "tiny.onnx");
  const Dataset x = test::tiny_cnn_inputs(48, 5);
  write_npy(d / "x.npy", x.images);
  const Tensor y = runtime::Executor(m).run1(x.images);
  Tensor labels(DType::kInt64, {48});
  for (int64_t i = 0; i < 48; ++i)
    labels.data<int64_t>()[i] = std::max_element(y.data<float>() + i * 3, y.data<float>() + i * 3 + 3) - (y.data<float>() + i * 3);
  write_npy(d / "labels.npy", labels);
  const std::string base = perch_bin() + " sensitivity " + q(d / "tiny.onnx") + " --calib " + q("npy:" + (d / "x.npy").string()) +
                           " --calib-count 48 --candidates 'int8 per-tensor,int4 per-channel' --group-size 4"
                           " --act-estimator percentile --percentile 99 --json --data ";
  auto without = test::run_cmd(base + q("npy:" + (d / "x.npy").string()));
  auto with = test::run_cmd(base + q("npy:" + (d / "x.npy").string() + "," + (d / "labels.npy").string()));
  ASSERT_EQ(without.code, 0) << without.err;
  ASSERT_EQ(with.code, 0) << with.err;
  const json a = json::parse(without.out), b = json::parse(with.out);
  EXPECT_EQ(a.at("metric"), "agreement");
  EXPECT_EQ(a.at("class_axis"), 1);
  EXPECT_EQ(a.at("positions"), 48);
  EXPECT_EQ(b.at("metric"), "top-1");
  EXPECT_EQ(a.at("candidates"), json::array({"int8 per-tensor", "int4 per-channel"}));
  ASSERT_EQ(a.at("layers").size(), b.at("layers").size());
  ASSERT_GT(a.at("layers").size(), 3u) << "weights and activations";
  for (size_t i = 0; i < a.at("layers").size(); ++i) EXPECT_EQ(a.at("layers")[i].at("configs"), b.at("layers")[i].at("configs"));
  // The activation estimator reaches the calibration: min/max gives other activation ranges, so other numbers.
  auto minmax = test::run_cmd(perch_bin() + " sensitivity " + q(d / "tiny.onnx") + " --calib " + q("npy:" + (d / "x.npy").string()) +
                              " --calib-count 48 --candidates 'int8 per-tensor,int4 per-channel' --group-size 4 --json --data " +
                              q("npy:" + (d / "x.npy").string()));
  ASSERT_EQ(minmax.code, 0) << minmax.err;
  EXPECT_NE(json::parse(minmax.out).at("all_quantized"), a.at("all_quantized"));
  // Refusals name what is wrong.
  auto r = test::run_cmd(perch_bin() + " sensitivity " + q(d / "tiny.onnx") + " --calib " + q("npy:" + (d / "x.npy").string()) +
                         " --data " + q("npy:" + (d / "x.npy").string()) + " --act-estimator nope");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("nope"), std::string::npos) << r.err;
  r = test::run_cmd(perch_bin() + " sensitivity " + q(d / "tiny.onnx") + " --calib " + q("npy:" + (d / "x.npy").string()) +
                    " --data " + q("npy:" + (d / "x.npy").string()) + " --candidates fp32");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--candidates"), std::string::npos) << r.err;
  r = test::run_cmd(perch_bin() + " sensitivity " + q(d / "tiny.onnx") + " --calib " + q("npy:" + (d / "x.npy").string()) +
                    " --data " + q("npy:" + (d / "x.npy").string()) + " --class-axis 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("class axis 2"), std::string::npos) << r.err;
}

// The HTML report renders in headless Chromium: a non-blank page with every section.
TEST(Report, RendersInHeadlessChromium) {
  PERCH_REQUIRE_SHARED_MODEL(model, "fmnist_convnet_hard.onnx");
  ASSERT_TRUE(fs::exists("/usr/bin/chromium")) << "chromium missing: run scripts/setup.sh";
  const fs::path d = scratch("report");
  auto r = test::run_cmd(perch_bin() + " -q sensitivity " + q(model) + " --eval-count 300 --calib-count 256 --report " +
                         q(d / "report.html"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string chrome = "/usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-background-networking "
                             "--disable-component-update --disable-sync --no-first-run --user-data-dir=" +
                             q(d / "profile") + " ";
  r = test::run_cmd(chrome + "--dump-dom " + q("file://" + (d / "report.html").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* id : {"id=\"summary\"", "id=\"ranges\"", "id=\"sensitivity\"", "<svg"})
    EXPECT_NE(r.out.find(id), std::string::npos) << id << " missing from the rendered DOM";
  r = test::run_cmd(chrome + "--window-size=1200,1600 --screenshot=" + q(d / "report.png") + " " +
                    q("file://" + (d / "report.html").string()));
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(fs::exists(d / "report.png"));
  // Non-blank: the pixel standard deviation of a white page is 0.
  r = test::run_cmd("/usr/bin/convert " + q(d / "report.png") + " -colorspace Gray -format '%[fx:standard_deviation]' info:");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_GT(std::stod(r.out), 0.05) << "the screenshot is (nearly) blank";
}

}  // namespace
