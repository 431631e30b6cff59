// `perch train` and `perch qat` end to end: the written models run in ONNX Runtime with perch's accuracy.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "cli_test_util.h"
#include "perch/data/dataset.h"
#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;

using perch::test::run_cmd;

// A half-width convnet after 40 steps (seconds): a float model for the qat tests.
bool train_small_convnet(const fs::path& out) {
  const auto r = run_cmd(perch_bin() + " --quiet train --arch convnet --width 0.5 --max-steps 40 --batch 64 --eval '' -o " + q(out));
  EXPECT_EQ(r.code, 0) << r.err;
  return r.code == 0;
}

double ort_accuracy(const fs::path& model) {
  const std::string mnist = "/usr/share/datasets/fashion-mnist/";
  auto r = run_cmd("node " + q(ort_dir() / "eval.js") + " --level exact " + q(model) + " --images " + mnist +
                   "t10k-images-idx3-ubyte.gz --labels " + mnist + "t10k-labels-idx1-ubyte.gz --json");
  EXPECT_EQ(r.code, 0) << r.err;
  return r.code == 0 ? json::parse(r.out)["accuracy"].get<double>() : -1.0;
}

TEST(TrainCli, TrainThenQatBothRunInOnnxRuntimeWithPerchsAccuracy) {
  ASSERT_TRUE(fs::exists(ort_dir() / "node_modules" / "onnxruntime-node"))
      << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh";
  const fs::path d = scratch("train_cli");
  auto r = run_cmd(perch_bin() + " train --arch convnet --width 0.5 --max-steps 60 --batch 64 -o " + q(d / "m.onnx") +
                   " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out);
  const double perch_fp32 = j["exported_accuracy"];
  const double tape_fp32 = j["epochs"][0]["eval_accuracy"];
  EXPECT_EQ(perch_fp32, tape_fp32) << "BN folding changed the predictions";
  EXPECT_GT(perch_fp32, 0.6);  // 60 steps (measured 0.7+); chance is 0.1
  EXPECT_NEAR(ort_accuracy(d / "m.onnx"), perch_fp32, 0.001) << "ONNX Runtime disagrees on the trained model";

  r = run_cmd(perch_bin() + " qat " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") +
              " --weight-bits 4 --max-steps 20 --batch 64 --calib-count 256 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  j = json::parse(r.out);
  const double fq = j["fake_quant_accuracy"], qdq = j["qdq_accuracy"];
  EXPECT_EQ(fq, qdq) << "the exported QDQ model must compute what the fake-quant model computed";
  EXPECT_NEAR(ort_accuracy(d / "q.onnx"), qdq, 0.001) << "ONNX Runtime disagrees with perch on the QAT export";
}

// BN kept (`train --keep-bn`): the written model runs in ONNX Runtime, and QAT's batch-statistics phase
// (`qat --freeze-bn`) still exports a QDQ model equal to its fake-quant model, which ORT agrees with.
TEST(TrainCli, KeptBatchNormTrainsWithBatchStatisticsInQat) {
  ASSERT_TRUE(fs::exists(ort_dir() / "node_modules" / "onnxruntime-node"))
      << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh";
  const fs::path d = scratch("train_cli_bn");
  auto r = run_cmd(perch_bin() + " train --arch convnet --width 0.5 --max-steps 40 --batch 64 --keep-bn -o " +
                   q(d / "m.onnx") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  json j = json::parse(r.out);
  const double perch_fp32 = j["exported_accuracy"];
  EXPECT_EQ(perch_fp32, j["epochs"][0]["eval_accuracy"].get<double>());
  EXPECT_NEAR(ort_accuracy(d / "m.onnx"), perch_fp32, 0.001) << "ONNX Runtime disagrees on the BN-kept model";
  r = run_cmd(perch_bin() + " qat " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") +
              " --weight-bits 4 --freeze-bn 0.5 --max-steps 12 --batch 64 --calib-count 256 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  j = json::parse(r.out);
  const double fq = j["fake_quant_accuracy"], qdq = j["qdq_accuracy"];
  EXPECT_EQ(fq, qdq) << "the exported QDQ model must compute what the fake-quant model computed";
  EXPECT_NEAR(ort_accuracy(d / "q.onnx"), qdq, 0.001) << "ONNX Runtime disagrees with perch on the QAT export";
}

std::string file_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Determinism (issue 7): training and QAT give the same bytes with 1 or 2 worker threads.
// The weight-gradient sums use fixed chunks and the per-channel loops do not depend on the split, so the
// thread count must not reach the result; a reduction split by thread count would fail here.
TEST(TrainCli, TrainAndQatAreBitIdenticalAcrossThreadCounts) {
  const fs::path d = scratch("train_cli_threads");
  std::string first_train, first_qat;
  int run = 0;
  for (const char* threads : {"1", "2"}) {
    const std::string tag = std::to_string(run++);
    const fs::path m = d / ("m" + tag + ".onnx"), qm = d / ("q" + tag + ".onnx");
    auto r = run_cmd(perch_bin() + " --quiet train --arch convnet --width 0.5 --max-steps 8 --batch 64 --eval '' --threads " +
                     threads + " -o " + q(m));
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_cmd(perch_bin() + " --quiet qat " + q(d / "m0.onnx") + " -o " + q(qm) + " --weight-bits 4 --max-steps 6 --batch 64" +
                " --calib-count 128 --eval '' --threads " + threads);
    ASSERT_EQ(r.code, 0) << r.err;
    if (first_train.empty()) {
      first_train = file_bytes(m), first_qat = file_bytes(qm);
      ASSERT_FALSE(first_train.empty());
      ASSERT_FALSE(first_qat.empty());
      continue;
    }
    EXPECT_TRUE(file_bytes(m) == first_train) << "perch train with " << threads << " thread(s) wrote different bytes";
    EXPECT_TRUE(file_bytes(qm) == first_qat) << "perch qat with " << threads << " thread(s) wrote different bytes";
  }
}

// `qat --distill` trains on unlabelled images (an .npy) and reports the fidelity to the float model on
// unlabelled evaluation images; the export runs in ONNX Runtime. convnet's output is its logits (no
// Softmax), so this is the MSE objective; the KL one is covered in tests/train/distill_test.cpp.
TEST(TrainCli, QatDistillsWithoutLabels) {
  ASSERT_TRUE(perch::test::cli::ort_installed()) << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh";
  const fs::path d = scratch("train_cli_distill");
  ASSERT_TRUE(train_small_convnet(d / "m.onnx"));
  perch::test::CmdResult r;
  const perch::Dataset train = perch::sample(perch::load_dataset("fashion-mnist:train"), 1024, 11);
  const perch::Dataset test = perch::sample(perch::load_dataset("fashion-mnist:test"), 256, 12);
  perch::write_npy(d / "train.npy", train.images);
  perch::write_npy(d / "test.npy", test.images);
  const std::string base = perch_bin() + " --quiet qat " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") +
                           " --weight-bits 4 --batch 64 --epochs 2 --calib-count 256 --data npy:" + q(d / "train.npy");
  r = run_cmd(base + " --eval ''");
  EXPECT_EQ(r.code, 1);
  perch::test::expect_contains(r.err, {"train.npy", "labelled", "--distill"});
  EXPECT_FALSE(fs::exists(d / "q.onnx"));
  r = run_cmd(base + " --distill --freeze-bn 0 --eval npy:" + q(d / "test.npy") + " --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  const json& f = j["fidelity"];
  EXPECT_EQ(f["qat"]["rows"].get<int64_t>(), 256 * 10);  // MSE: logits compared element by element
  EXPECT_EQ(f["qat"]["agreement"].get<double>(), -1.0);
  EXPECT_LT(f["qat"]["loss"].get<double>(), 0.7 * f["ptq"]["loss"].get<double>()) << r.out;
  EXPECT_EQ(j["qdq_accuracy"].get<double>(), -1.0);  // unlabelled: no top-1
  EXPECT_GT(ort_accuracy(d / "q.onnx"), 0.5);  // the export runs in ONNX Runtime (and still classifies)
  // Without --eval, --distill evaluates nothing (the Fashion-MNIST default would not fit most such models).
  r = run_cmd(base + " --distill --freeze-bn 0 --max-steps 2 --json");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(json::parse(r.out).contains("fidelity")) << r.out;
}

// perch qat takes perch quantize's calibration-scheme flags (shared parsing): signed activations reach the
// export, and a bad estimator is named.
TEST(TrainCli, QatTakesQuantizesSchemeFlags) {
  ASSERT_TRUE(perch::test::cli::ort_installed()) << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh";
  const fs::path d = scratch("train_cli_scheme");
  ASSERT_TRUE(train_small_convnet(d / "m.onnx"));
  perch::test::CmdResult r;
  perch::write_npy(d / "train.npy", perch::sample(perch::load_dataset("fashion-mnist:train"), 256, 13).images);
  const std::string base = perch_bin() + " --quiet qat " + q(d / "m.onnx") + " -o " + q(d / "q.onnx") +
                           " --distill --freeze-bn 0 --max-steps 2 --batch 64 --calib-count 128 --data npy:" +
                           q(d / "train.npy");
  r = run_cmd(base + " --act-signed --weight-estimator percentile --act-estimator percentile --percentile 99.9"
                     " --no-fuse-chains --no-equalize-depthwise --no-fold-affine --ignore-nonfinite");
  ASSERT_EQ(r.code, 0) << r.err;
  const perch::graph::Model m = perch::graph::load_model((d / "q.onnx").string());
  int64_t quantizers = 0;
  for (const auto& n : m.graph.nodes) {
    if (n.op_type != "QuantizeLinear") continue;
    ++quantizers;
    const perch::Tensor* zp = m.graph.initializer(n.input(2));
    ASSERT_TRUE(zp) << n.describe();
    EXPECT_EQ(zp->dtype(), perch::DType::kInt8) << n.describe();
  }
  EXPECT_GT(quantizers, 3);
  EXPECT_GT(ort_accuracy(d / "q.onnx"), 0.5);
  r = run_cmd(base + " --weight-estimator bogus");
  EXPECT_EQ(r.code, 1);
  perch::test::expect_contains(r.err, {"bogus"});
}

TEST(TrainCli, BadArgumentsAreNamed) {
  const fs::path d = scratch("train_cli_bad");
  auto r = run_cmd(perch_bin() + " train --arch resnet --max-steps 1 -o " + q(d / "m.onnx"));
  EXPECT_EQ(r.code, 1);
  perch::test::expect_contains(r.err, {"resnet", "convnet", "mbv2"});
  r = run_cmd(perch_bin() + " train --arch convnet --optimizer lamb --max-steps 1 --eval '' -o " + q(d / "m.onnx"));
  EXPECT_EQ(r.code, 1);
  perch::test::expect_contains(r.err, {"lamb", "sgd", "adamw"});
  EXPECT_FALSE(fs::exists(d / "m.onnx"));
  r = run_cmd(perch_bin() + " qat " + q(d / "missing.onnx") + " -o " + q(d / "q.onnx") + " --max-steps 1");
  EXPECT_EQ(r.code, 1);
  perch::test::expect_contains(r.err, {"missing.onnx"});
}

}  // namespace
