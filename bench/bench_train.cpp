// Google Benchmark: one 128-image training step (forward, backward, AdamW update) of perch's training
// engine on the shared Fashion-MNIST models, fp32 and with QAT fake-quant nodes (W8A8 per-channel), and on
// perch's built-in architectures. PyTorch 1.13's figures for the shared models (../shared/ANCHORS.md,
// 2 threads, batch 128): 0.81 s per step for the MobileNetV2-style net, 0.07 s for the convnet.
//
//   ./build/bench/bench/bench_train --benchmark_min_time=5
// The shared models come with BN already folded; they train as they are (the step PyTorch timed trains the
// same layers). Threads: PERCH_NUM_THREADS (default: all cores).
#include <benchmark/benchmark.h>

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "perch/core/progress.h"
#include "perch/core/threads.h"
#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/train/arch.h"
#include "perch/train/autograd.h"
#include "perch/train/optim.h"
#include "perch/train/qat.h"

namespace {

std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("PERCH_SHARED_DIR"); e && *e) return e;
  return PERCH_DEFAULT_SHARED_DIR;
}

const perch::Dataset& data() {
  static const perch::Dataset d = perch::sample(perch::load_dataset("fashion-mnist:train"), 1024, 1);
  return d;
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Times steps of `tape` on batches of 128 images.
void run_steps(benchmark::State& state, perch::train::Tape& tape) {
  perch::train::Optimizer opt({});
  const auto& g = tape.model().graph;
  const std::string in = g.inputs.at(0).name, out = g.outputs.at(0).name;
  int64_t b0 = 0;
  auto step = [&] {
    const perch::Tensor x = data().batch(b0, 128);
    std::vector<int64_t> labels(data().labels.begin() + b0, data().labels.begin() + b0 + 128);
    b0 = (b0 + 128) % 1024;
    auto y = tape.forward({{in, x}}, true);
    perch::Tensor dl;
    perch::train::softmax_cross_entropy(y.at(out), labels, &dl);
    tape.backward({{out, dl}});
    opt.step(tape, 1e-4f);
  };
  for (int i = 0; i < 2; ++i) step();  // warm the allocator and the thread pool
  const long faults0 = minor_faults();
  for (auto _ : state) step();
  state.SetItemsProcessed(state.iterations() * 128);
  // Page faults per step: fresh memory touched in the steady state (each costs ~1 us on this VM).
  state.counters["faults/step"] =
      static_cast<double>(minor_faults() - faults0) / static_cast<double>(std::max<int64_t>(1, state.iterations()));
  state.counters["threads"] = static_cast<double>(perch::num_threads());
}

void BM_SharedStep(benchmark::State& state, const char* file, bool qat) {
  perch::set_quiet(true);
  const std::filesystem::path path = shared_dir() / "models" / file;
  if (!std::filesystem::exists(path)) {
    state.SkipWithError((path.string() + " not present").c_str());
    return;
  }
  perch::graph::Model m = perch::graph::load_model(path);
  if (qat) {
    perch::train::QatOptions o;
    o.calib_images = 256;
    auto q = perch::train::prepare_qat(m, perch::take(data(), 0, 256), o);
    perch::train::Tape tape(q.model, q.params);
    run_steps(state, tape);
  } else {
    perch::train::Tape tape(m, perch::train::default_parameters(m));
    run_steps(state, tape);
  }
}

void BM_BuiltinStep(benchmark::State& state, const char* arch) {
  perch::set_quiet(true);
  perch::graph::Model m = perch::train::build_arch(arch);
  perch::train::Tape tape(m, perch::train::default_parameters(m));
  run_steps(state, tape);
}

}  // namespace

BENCHMARK_CAPTURE(BM_SharedStep, convnet_fp32, "fmnist_convnet.onnx", false)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_SharedStep, convnet_qat, "fmnist_convnet.onnx", true)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_SharedStep, mbv2_fp32, "fmnist_mbv2.onnx", false)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_SharedStep, mbv2_qat, "fmnist_mbv2.onnx", true)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_BuiltinStep, builtin_convnet_bn, "convnet")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_BuiltinStep, builtin_mbv2_bn, "mbv2")->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
