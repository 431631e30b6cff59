// Google Benchmark: perch's float executor on the shared Fashion-MNIST models at batch 1 and 64, and the
// depthwise 3x3 convolution alone (the kernel MobileNetV2-style nets spend their time in).
//
//   ./build/bench/bench/bench_fp32 --benchmark_min_time=2
// Models come from $PERCH_SHARED_DIR/models (default ../shared/models next to the source tree); their
// benchmarks report an error (skip) when the file is absent. Threads: PERCH_NUM_THREADS (default: all cores).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <vector>

#include "perch/core/threads.h"
#include "perch/graph/onnx_io.h"
#include "perch/kernels/conv_f32.h"
#include "perch/runtime/executor.h"

namespace {

std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("PERCH_SHARED_DIR"); e && *e) return e;
  return PERCH_DEFAULT_SHARED_DIR;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void BM_Model(benchmark::State& state, const char* file) {
  const std::filesystem::path path = shared_dir() / "models" / file;
  if (!std::filesystem::exists(path)) {
    state.SkipWithError((path.string() + " not present").c_str());
    return;
  }
  const perch::runtime::Executor exec(perch::graph::load_model(path));
  const int64_t batch = state.range(0);
  const auto v = random_floats(static_cast<size_t>(batch * 28 * 28), 1);
  const perch::Tensor x = perch::Tensor::from<float>({batch, 1, 28, 28}, v);
  for (int i = 0; i < 3; ++i) exec.run1(x);  // warm the allocator and the thread pool
  for (auto _ : state) {
    perch::Tensor y = exec.run1(x);
    benchmark::DoNotOptimize(y.raw());
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["threads"] = static_cast<double>(perch::num_threads());
}

// Depthwise 3x3, stride 1 or 2, pad 1: args (batch, channels, size, stride).
void BM_Depthwise3x3(benchmark::State& state) {
  perch::kernels::Conv2dShape s;
  s.batch = state.range(0);
  s.in_channels = s.out_channels = s.group = state.range(1);
  s.in_h = s.in_w = state.range(2);
  s.stride_h = s.stride_w = state.range(3);
  s.kernel_h = s.kernel_w = 3;
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
  const auto x = random_floats(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w), 1);
  const auto w = random_floats(static_cast<size_t>(s.out_channels * 9), 2);
  const auto b = random_floats(static_cast<size_t>(s.out_channels), 3);
  std::vector<float> y(static_cast<size_t>(s.batch * s.out_channels * s.out_h() * s.out_w()));
  for (auto _ : state) {
    perch::kernels::conv2d_f32(s, x.data(), w.data(), b.data(), y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double flops = 2.0 * 9 * static_cast<double>(y.size());
  state.counters["GFLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

}  // namespace

BENCHMARK_CAPTURE(BM_Model, convnet, "fmnist_convnet.onnx")->Arg(1)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_Model, mbv2, "fmnist_mbv2.onnx")->Arg(1)->Arg(64)->Unit(benchmark::kMillisecond)->UseRealTime();
// MobileNetV2-like layers: 144 ch at 56x56 (the anchor's oneDNN shape), and mbv2's own 64-128 ch layers.
BENCHMARK(BM_Depthwise3x3)
    ->Args({1, 144, 56, 1})
    ->Args({64, 64, 28, 1})
    ->Args({64, 96, 14, 2})
    ->Args({64, 128, 7, 1})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

BENCHMARK_MAIN();
