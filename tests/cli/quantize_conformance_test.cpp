// perch quantize on the models PyTorch's exporter wrote for ONNX's own backend tests (Debian libonnx-testdata:
// pytorch-converted/, pytorch-operator/ — opset 6, Conv 1-D/2-D, depthwise, grouped, dilated, ConvTranspose, Gemm):
// every one with a weight initializer and float inputs is quantized (per channel, per tensor, int4 per channel), calibrated on its own test input,
// and the written QDQ model must load and run in ONNX Runtime with the same outputs as perch's simulation, and
// perch's integer engine must equal its exact simulation. Models perch refuses must be refused by name (an op or
// a shape it does not support), never crash or write a model ONNX Runtime rejects.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <algorithm>

#include "cli_test_util.h"
#include "perch/core/progress.h"
#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "test_util.h"

using namespace perch;
namespace fs = std::filesystem;
using perch::test::cli::ort_dir;
using perch::test::cli::ort_installed;
using perch::test::cli::q;
using perch::test::cli::scratch;

namespace {

bool has_weight_layer(const graph::Model& m) {
  for (const auto& n : m.graph.nodes)
    if ((n.op_type == "Conv" || n.op_type == "ConvTranspose" || n.op_type == "Gemm" || n.op_type == "MatMul") &&
        m.graph.initializer(n.input(1)))
      return true;
  return false;
}

}  // namespace

// Weight schemes: per-channel int8 (raises the opset to 13), per-tensor int8 (stays at 10), per-channel int4.
class QuantizeConformance : public testing::TestWithParam<const char*> {};

TEST_P(QuantizeConformance, PytorchExportedModelsQuantizeAndRunInOnnxRuntime) {
  const std::string scheme = GetParam();
  const fs::path root = test::onnx_node_test_dir().parent_path();
  if (!fs::exists(root / "pytorch-converted")) GTEST_SKIP() << root << " is not installed (Debian libonnx-testdata)";
  if (!ort_installed()) GTEST_SKIP() << "onnxruntime-node is not installed in tools/ort (scripts/setup.sh)";
  set_quiet(true);
  const fs::path work = scratch("quantize_conformance_" + scheme);
  int quantized = 0, refused = 0;
  std::set<std::string> refusals;
  for (const char* suite : {"pytorch-converted", "pytorch-operator"}) {
    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(root / suite)) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
    for (const fs::path& dir : dirs) {
      const std::string name = dir.filename().string();
      if (!fs::exists(dir / "model.onnx")) continue;
      const graph::Model m = graph::load_model(dir / "model.onnx");
      if (!has_weight_layer(m)) continue;
      // The test's own input as calibration data: one tensor per graph input, a batch each.
      Dataset data;
      data.name = name;
      bool usable = true;
      for (size_t i = 0; i < m.graph.inputs.size() && usable; ++i) {
        const Tensor t = graph::read_tensor_pb(dir / "test_data_set_0" / ("input_" + std::to_string(i) + ".pb"));
        usable = t.dtype() == DType::kFloat32 && t.rank() >= 1 && (i == 0 || t.dim(0) == data.images.dim(0));
        if (i == 0) data.images = t, data.images_input = m.graph.inputs[0].name;
        else data.inputs.emplace_back(m.graph.inputs[i].name, t);
      }
      if (!usable) continue;
      SCOPED_TRACE(name);
      ptq::PtqOptions o;
      o.batch = data.size();
      if (scheme == "per_tensor") o.weights.granularity = quant::Granularity::kPerTensor;
      if (scheme == "int4_per_channel") o.weights.bits = 4;
      graph::Model qm;
      try {
        qm = ptq::quantize_model(m, data, o).model;
      } catch (const Error& e) {
        // Only what perch says it does not support: 3-D convolutions / pools, ops it cannot convert by name.
        const std::string msg = e.what();
        EXPECT_TRUE(msg.find("only 1-D and 2-D spatial inputs") != std::string::npos ||
                    msg.find("does not know how to convert") != std::string::npos ||
                    msg.find("unsupported ops") != std::string::npos)
            << msg;
        EXPECT_NE(msg.find(name), std::string::npos) << "the error does not name the model: " << msg;
        ++refused;
        refusals.insert(name);
        continue;
      }
      ++quantized;
      const fs::path d = work / name;
      fs::create_directories(d);
      graph::save_model(qm, d / "q.onnx");
      const auto feeds = data.feeds(m.graph.inputs[0].name, 0, data.size());
      std::string args;
      for (const auto& [in, t] : feeds) {
        write_npy(d / (in + ".npy"), t);
        args += " --input " + q(in + "=" + (d / (in + ".npy")).string());
      }
      const auto sim = runtime::Executor(qm).run(feeds);
      const auto i8 = runtime::Int8Executor(qm).run(feeds);
      const auto exact = runtime::Int8Executor(qm, runtime::Int8Mode::kSimulate).run(feeds);
      const test::CmdResult r = test::run_cmd("node " + q(ort_dir() / "run.js") + " --level exact " + q(d / "q.onnx") + args + " -o " + q(d / "ort"));
      ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run the quantized " << name << ": " << r.err;
      for (const auto& out : qm.graph.outputs) {
        const Tensor a = sim.at(out.name), b = read_npy(d / "ort" / (out.name + ".npy"));
        ASSERT_EQ(a.shape(), b.shape()) << out.name;
        double diff = 0, ref = 0;
        for (int64_t k = 0; k < a.numel(); ++k) {
          diff = std::max(diff, std::fabs(static_cast<double>(a.data<float>()[k]) - b.data<float>()[k]));
          ref = std::max(ref, std::fabs(static_cast<double>(b.data<float>()[k])));
        }
        // As TinyInterop (cli_test.cpp): ONNX Runtime may fuse DQ -> op -> Q into integer kernels that round a
        // value one step apart; within 1 % of the output's range.
        EXPECT_LE(diff, 0.01 * ref) << out.name;
        const Tensor& x = i8.at(out.name);
        const Tensor& y = exact.at(out.name);
        ASSERT_EQ(x.shape(), y.shape());
        EXPECT_EQ(std::memcmp(x.raw(), y.raw(), x.nbytes()), 0) << out.name << ": int8 engine != its simulation";
      }
    }
  }
  set_quiet(false);
  std::printf("  %d models quantized and run in ONNX Runtime, %d refused by name:", quantized, refused);
  for (const auto& n : refusals) std::printf(" %s", n.c_str());
  std::printf("\n");
  EXPECT_GE(quantized, 24);  // every 1-D/2-D conv, depthwise, grouped, transposed and Gemm export
}

INSTANTIATE_TEST_SUITE_P(Schemes, QuantizeConformance, testing::Values("per_channel", "per_tensor", "int4_per_channel"));
