// The integer executor against perch's simulation (the float executor on the same QDQ model) on the shared
// models quantized W8A8 per-channel, as `perch quantize` does by default: every 8-bit activation compared
// value by value, the logits, top-1 agreement and accuracy on the full Fashion-MNIST test set.
// The contract measured here is documented in docs/INTEGER.md. Skips visibly without ../shared or the data.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>

#include "perch/core/progress.h"
#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/graph/passes.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "test_util.h"

namespace perch::ptq {
namespace {

using runtime::TensorMap;

bool have_fashion_mnist() {
  return std::filesystem::exists(std::filesystem::path(fashion_mnist_dir()) / "t10k-images-idx3-ubyte.gz");
}

// `perch quantize MODEL` with its defaults: W8A8 per-channel, 1024 seeded calibration images, CLE + BC.
graph::Model quantize_default(const std::filesystem::path& path) {
  set_quiet(true);
  graph::Model m = graph::load_model(path);
  const Dataset train = load_dataset("fashion-mnist:train");
  const Dataset calib = sample(train, 1024, 0);
  PtqOptions opt;
  return quantize_model(m, calib, opt).model;
}

struct Compare {
  int64_t images = 0, top1_agree = 0;
  double max_logit_diff = 0, max_logit = 0;
  // per QuantizeLinear output: values compared, values differing, largest |difference| in quantization steps
  struct Layer {
    std::string value;
    int64_t count = 0, differ = 0;
    int max_steps = 0;
  };
  std::vector<Layer> layers;
};

// a: the reference engine's values (every QuantizeLinear output and the graph output), b: the int8 engine's.
Compare compare_values(const graph::Model& qdq, const TensorMap& a, const TensorMap& b) {
  std::vector<std::string> qs;
  for (const auto& n : qdq.graph.nodes)
    if (n.op_type == "QuantizeLinear") qs.push_back(n.outputs[0]);
  const std::string out = qdq.graph.outputs[0].name;
  Compare c;
  for (const auto& q : qs) {
    const Tensor& ta = a.at(q);
    const Tensor& tb = b.at(q);
    EXPECT_EQ(ta.dtype(), tb.dtype()) << q;
    EXPECT_EQ(ta.shape(), tb.shape()) << q;
    if (ta.shape() != tb.shape() || ta.dtype() != tb.dtype()) continue;
    const auto va = ta.to_i64_vector(), vb = tb.to_i64_vector();
    Compare::Layer l{q, static_cast<int64_t>(va.size()), 0, 0};
    for (size_t i = 0; i < va.size(); ++i) {
      const int d = static_cast<int>(std::llabs(va[i] - vb[i]));
      l.differ += d != 0;
      l.max_steps = std::max(l.max_steps, d);
    }
    c.layers.push_back(l);
  }
  const Tensor la = a.at(out).to_f32(), lb = b.at(out).to_f32();
  EXPECT_EQ(la.shape(), lb.shape());
  c.images = la.dim(0);
  const int64_t classes = la.numel() / c.images;
  for (int64_t i = 0; i < c.images; ++i) {
    const float* pa = la.data<float>() + i * classes;
    const float* pb = lb.data<float>() + i * classes;
    c.top1_agree += std::max_element(pa, pa + classes) - pa == std::max_element(pb, pb + classes) - pb;
    for (int64_t k = 0; k < classes; ++k) {
      c.max_logit_diff = std::max(c.max_logit_diff, static_cast<double>(std::fabs(pa[k] - pb[k])));
      c.max_logit = std::max(c.max_logit, static_cast<double>(std::fabs(pa[k])));
    }
  }
  return c;
}

std::vector<std::string> q_outputs(const graph::Model& m) {
  std::vector<std::string> qs;
  for (const auto& n : m.graph.nodes)
    if (n.op_type == "QuantizeLinear") qs.push_back(n.outputs[0]);
  return qs;
}

void print(const char* what, const Compare& c) {
  std::printf("  %s:\n", what);
  for (const auto& l : c.layers)
    std::printf("    %-40s %9lld values, %8lld differ (%.4f%%), max %d step(s)\n", l.value.c_str(),
                static_cast<long long>(l.count), static_cast<long long>(l.differ),
                100.0 * static_cast<double>(l.differ) / static_cast<double>(l.count), l.max_steps);
  std::printf("    logits: max |difference| %.6g (max |logit| %.3g), top-1 agreement %lld / %lld\n", c.max_logit_diff,
              c.max_logit, static_cast<long long>(c.top1_agree), static_cast<long long>(c.images));
}

std::filesystem::path ort_dir() { return test::source_dir() / "tools" / "ort"; }

Tensor random_input(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 2.0f);
  Tensor x(DType::kFloat32, {n, 1, 8, 8});
  for (auto& v : x.span<float>()) v = u(rng);
  return x;
}

struct TinyCase {
  const char* name;
  bool act_signed;
  quant::Granularity weights;
};

class Int8Tiny : public testing::TestWithParam<TinyCase> {};

// test::tiny_cnn has every lowered pattern (Conv+Relu, MaxPool, depthwise Conv+Clip, residual Add, GAP,
// Flatten, Gemm to a float output). Quantized with uint8 or int8 activations, per-channel or per-tensor
// weights: everything lowers; int8 == exact simulation bit for bit; the fake-quant simulation agrees up to
// rounding (first layer within one step, logits within a few output steps).
TEST_P(Int8Tiny, LowersEverythingAndMatchesSimulation) {
  const TinyCase tc = GetParam();
  set_quiet(true);
  const graph::Model m = test::tiny_cnn(7);
  Dataset calib;
  calib.images = random_input(256, 1);
  calib.name = "random";
  PtqOptions opt;
  opt.activations.is_signed = tc.act_signed;
  opt.weights.granularity = tc.weights;
  const graph::Model qdq = quantize_model(m, calib, opt).model;
  const runtime::Int8Executor i8(qdq);
  const runtime::Int8Executor sim(qdq, runtime::Int8Mode::kSimulate);
  const runtime::Executor fq(qdq);
  EXPECT_EQ(i8.report().float_nodes(), 0) << i8.report().summary();
  const Tensor x = random_input(64, 2);
  const auto qs = q_outputs(qdq);
  ASSERT_GE(qs.size(), 4u);
  const TensorMap r = i8.run({{"x", x}}, qs);
  // The 8-bit activations have the type asked for.
  EXPECT_EQ(r.at(qs[1]).dtype(), tc.act_signed ? DType::kInt8 : DType::kUInt8);
  const Compare exact = compare_values(qdq, sim.run({{"x", x}}, qs), r);
  for (const auto& l : exact.layers) EXPECT_EQ(l.differ, 0) << l.value;
  EXPECT_EQ(exact.max_logit_diff, 0.0);
  const Compare classic = compare_values(qdq, fq.run({{"x", x}}, nullptr, qs), r);
  print("int8 vs fake-quant float simulation", classic);
  EXPECT_EQ(classic.layers[0].differ, 0) << "the input's QuantizeLinear must be the simulation's exactly";
  EXPECT_LE(classic.layers[1].max_steps, 1) << classic.layers[1].value;
  EXPECT_GE(static_cast<double>(classic.top1_agree), 0.95 * static_cast<double>(classic.images));
  EXPECT_LE(classic.max_logit_diff, 0.05 * classic.max_logit);
  // A batch larger than the executor's sub-batch runs in slices (tiny_cnn is per-sample): every 8-bit activation
  // and logit equals the runs of each image alone (batch 1, one slice), byte for byte — 19 images: two full
  // slices of 8 and a partial one.
  EXPECT_EQ(i8.report().sub_batch, 8) << "tiny_cnn is per-sample: run() should split large batches";
  const Tensor x19 = random_input(19, 3);
  const TensorMap whole = i8.run({{"x", x19}}, qs);
  for (int64_t i = 0; i < 19; ++i) {
    Tensor xi(DType::kFloat32, {1, 1, 8, 8});
    std::memcpy(xi.raw(), x19.data<float>() + i * 64, 64 * sizeof(float));
    const TensorMap one = i8.run({{"x", xi}}, qs);
    for (const auto& [name, t] : one) {
      const Tensor& w = whole.at(name);
      ASSERT_EQ(w.dim(0), 19) << name;
      const size_t bytes = t.nbytes();
      ASSERT_EQ(std::memcmp(static_cast<const char*>(w.raw()) + static_cast<size_t>(i) * bytes, t.raw(), bytes), 0)
          << name << " image " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, Int8Tiny,
                         testing::Values(TinyCase{"u8_per_channel", false, quant::Granularity::kPerChannel},
                                         TinyCase{"s8_per_channel", true, quant::Granularity::kPerChannel},
                                         TinyCase{"u8_per_tensor", false, quant::Granularity::kPerTensor}),
                         [](const testing::TestParamInfo<TinyCase>& i) { return std::string(i.param.name); });

// A model that fixes its batch in the input shape (here 20, more than the executor's sub-batch of 8) runs whole:
// splitting it into sub-batches made its own input check refuse the slices.
TEST(Int8Executor, StaticBatchLargerThanTheSubBatchRuns) {
  set_quiet(true);
  graph::Model m = test::tiny_cnn(7);
  m.graph.inputs[0].shape = {20, 1, 8, 8};
  Dataset calib;
  calib.images = random_input(20, 4);
  calib.name = "random";
  const graph::Model q = quantize_model(m, calib, PtqOptions{}).model;
  const TensorMap in{{"x", random_input(20, 5)}};
  const Tensor yi = runtime::Int8Executor(q).run(in).at("y");
  const Tensor ys = runtime::Int8Executor(q, runtime::Int8Mode::kSimulate).run(in).at("y");
  ASSERT_EQ(yi.shape(), (Shape{20, 3}));
  EXPECT_EQ(std::memcmp(yi.raw(), ys.raw(), yi.nbytes()), 0);
  set_quiet(false);
}

class Int8Shared : public testing::TestWithParam<const char*> {};

// int8 vs the exact simulation: every 8-bit activation and every logit identical (the contract).
// int8 vs the classic fake-quant simulation (float executor): rounding differences, bounded loosely.
// Accuracy on the 10 000 test images: int8 == exact sim, |int8 - ONNX Runtime| <= 0.001 on the same file.
TEST_P(Int8Shared, MatchesSimulationAndOnnxRuntime) {
  PERCH_REQUIRE_SHARED_MODEL(path, GetParam());
  if (!have_fashion_mnist()) GTEST_SKIP() << "Fashion-MNIST not found in " << fashion_mnist_dir();
  const graph::Model qdq = quantize_default(path);
  const runtime::Int8Executor i8(qdq);
  const runtime::Int8Executor sim(qdq, runtime::Int8Mode::kSimulate);
  const runtime::Executor fq(qdq);
  std::printf("%s: %s\n", GetParam(), i8.report().summary().c_str());
  EXPECT_EQ(i8.report().float_nodes(), 0) << i8.report().summary();

  const Dataset test = load_dataset("fashion-mnist:test");
  const Tensor x = test.batch(0, 200);  // every activation of 3 engines is kept: memory-bound count
  const auto qs = q_outputs(qdq);
  const TensorMap r_i8 = i8.run({{i8.input_name(), x}}, qs);
  const Compare exact = compare_values(qdq, sim.run({{sim.input_name(), x}}, qs), r_i8);
  print("int8 vs exact simulation", exact);
  for (const auto& l : exact.layers) EXPECT_EQ(l.differ, 0) << l.value;
  EXPECT_EQ(exact.max_logit_diff, 0.0);
  EXPECT_EQ(exact.top1_agree, exact.images);

  const Compare classic = compare_values(qdq, fq.run({{fq.input_name(), x}}, nullptr, qs), r_i8);
  print("int8 vs fake-quant float simulation", classic);
  // The first quantized layer sees identical inputs: float rounding of the simulation moves a value by at
  // most one step. Later layers inherit and amplify such differences (docs/INTEGER.md).
  ASSERT_GE(classic.layers.size(), 2u);
  EXPECT_EQ(classic.layers[0].differ, 0) << "the input's QuantizeLinear must be the simulation's exactly";
  EXPECT_LE(classic.layers[1].max_steps, 1) << classic.layers[1].value;
  EXPECT_LE(static_cast<double>(classic.layers[1].differ), 0.002 * static_cast<double>(classic.layers[1].count));
  EXPECT_GE(static_cast<double>(classic.top1_agree), 0.99 * static_cast<double>(classic.images));

  // Accuracy, full test set.
  const auto acc_i8 = evaluate([&](const runtime::TensorMap& in) { return i8.run(in).at(i8.output_name()); }, i8.model(), test, 250, "int8");
  const auto acc_sim = evaluate([&](const runtime::TensorMap& in) { return sim.run(in).at(sim.output_name()); }, sim.model(), test, 250, "sim");
  std::printf("  accuracy: int8 %.4f, exact sim %.4f\n", acc_i8.accuracy(), acc_sim.accuracy());
  EXPECT_EQ(acc_i8.correct, acc_sim.correct);
  if (!std::filesystem::exists(ort_dir() / "node_modules" / "onnxruntime-node")) {
    GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh): ORT comparison skipped";
  }
  const std::filesystem::path dir = test::binary_dir() / "test_scratch" / (std::string("int8_") + GetParam());
  std::filesystem::create_directories(dir);
  graph::save_model(qdq, dir / "q.onnx");
  const std::string mnist = fashion_mnist_dir() + "/";
  const auto r = test::run_cmd("node " + test::shell_quote(ort_dir() / "eval.js") + " " + test::shell_quote(dir / "q.onnx") +
                               " --images " + mnist + "t10k-images-idx3-ubyte.gz --labels " + mnist +
                               "t10k-labels-idx1-ubyte.gz --json --level exact");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto pos = r.out.find("\"accuracy\":");
  ASSERT_NE(pos, std::string::npos) << r.out;
  const double ort = std::stod(r.out.substr(pos + 11));
  // --level exact: graph optimizations off where ONNX Runtime's u8 x s8 kernels saturate (test::ort_u8s8_exact).
  std::printf("  accuracy: ONNX Runtime %.4f (%s)\n", ort,
              r.out.find("\"level\":\"disabled\"") != std::string::npos
                  ? "graph optimizations off: this CPU's ONNX Runtime saturates u8 x s8 products"
                  : "graph optimizations on, integer kernels");
  EXPECT_NEAR(acc_i8.accuracy(), ort, 0.001) << "int8 engine vs ONNX Runtime on the same QDQ file";
}

INSTANTIATE_TEST_SUITE_P(Models, Int8Shared,
                         testing::Values("fmnist_convnet.onnx", "fmnist_convnet_hard.onnx", "fmnist_mbv2.onnx"),
                         [](const testing::TestParamInfo<const char*>& i) {
                           std::string s = i.param;
                           s = s.substr(0, s.find('.'));
                           return s;
                         });

}  // namespace
}  // namespace perch::ptq
