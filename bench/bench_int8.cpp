// Google Benchmark: perch's int8 kernels against oneDNN 2.6 (Debian libdnnl-dev) in the same run.
//
//   OMP_NUM_THREADS=1 PERCH_NUM_THREADS=1 ./build/bench/bench/bench_int8 --benchmark_repetitions=5 \
//       --benchmark_report_aggregates_only=true
// Counter "GOPS" = 2 * M * N * K (GEMM) or 2 * taps * outputs (depthwise) per second, in 1e9.
//
// GEMM (u8 x s8 -> s32, raw int32 output, zero points 0): perch gemm_s8 with weights packed once outside
// the timed loop vs dnnl_gemm_u8s8s32 (which packs per call: that is its API). Also perch with the
// requantized uint8 output stage (per-channel multipliers), to show the output stage's cost.
// Shapes: 256^3, 1024^3 and the convolutions of fmnist_convnet as im2col GEMMs (M = batch * pixels,
// K = Cin * 9, N = Cout): conv2 14x14, 32 -> 64 and conv3 7x7, 64 -> 128, at batch 1 and 64.
// Depthwise 3x3, 144 channels at 56x56, stride 1, pad 1 (MobileNetV2), uint8 in/out per-channel requantized:
// perch NHWC vs a oneDNN convolution primitive (u8 src, s8 weights, groups = 144, u8 dst, per-channel
// output scales, NHWC memory ("acdb"), weights in the primitive's preferred layout, reordered once).
#include <benchmark/benchmark.h>
#include <dnnl.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "perch/core/threads.h"
#include "perch/kernels/gemm_s8.h"

namespace {

using namespace perch::kernels;

std::vector<uint8_t> random_u8(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = static_cast<uint8_t>(rng() & 0xff);
  return v;
}
std::vector<int8_t> random_s8(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int8_t> v(n);
  for (auto& x : v) x = static_cast<int8_t>(rng() & 0xff);
  return v;
}

void set_gops(benchmark::State& state, double ops) {
  state.counters["GOPS"] = benchmark::Counter(ops * static_cast<double>(state.iterations()) * 1e-9,
                                              benchmark::Counter::kIsRate);
}

// args: M, N, K
void BM_GemmS8_perch(benchmark::State& state, bool requant) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto a = random_u8(static_cast<size_t>(m * k), 1);
  const auto w = random_s8(static_cast<size_t>(k * n), 2);
  const PackedWeightsS8 pw = pack_weights_s8(w.data(), k, n, WeightLayout::kKN);
  std::vector<int32_t> c32(static_cast<size_t>(m * n));
  std::vector<uint8_t> c8(static_cast<size_t>(m * n));
  std::vector<perch::quant::FixedPointMultiplier> ms(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) ms[static_cast<size_t>(j)] = perch::quant::quantize_multiplier(1.0 / (64.0 * k + j));
  GemmS8Args g;
  g.m = m;
  g.a = a.data();
  g.lda = k;
  g.w = &pw;
  g.out.type = requant ? OutputType::kUInt8 : OutputType::kInt32;
  g.out.multipliers = ms.data();
  g.out.num_multipliers = n;
  g.out.zero_point = 128;
  g.c = requant ? static_cast<void*>(c8.data()) : static_cast<void*>(c32.data());
  g.ldc = n;
  for (auto _ : state) {
    gemm_s8(g);
    benchmark::ClobberMemory();
  }
  set_gops(state, 2.0 * m * n * k);
  state.counters["threads"] = perch::num_threads();
}

void BM_GemmS8_onednn(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto a = random_u8(static_cast<size_t>(m * k), 1);
  const auto w = random_s8(static_cast<size_t>(k * n), 2);
  std::vector<int32_t> c(static_cast<size_t>(m * n));
  const int32_t co = 0;
  for (auto _ : state) {
    if (dnnl_gemm_u8s8s32('N', 'N', 'F', m, n, k, 1.0f, a.data(), k, 0, w.data(), n, 0, 0.0f, c.data(), n, &co) !=
        dnnl_success) {
      state.SkipWithError("dnnl_gemm_u8s8s32 failed");
      return;
    }
    benchmark::ClobberMemory();
  }
  set_gops(state, 2.0 * m * n * k);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({256, 256, 256})->Args({1024, 1024, 1024});
  b->Args({196, 64, 288})->Args({196 * 64, 64, 288});  // convnet conv2, batch 1 / 64
  b->Args({49, 128, 576})->Args({49 * 64, 128, 576});  // convnet conv3, batch 1 / 64
  b->ArgNames({"M", "N", "K"})->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_GemmS8_perch, s32, false)->Apply(gemm_shapes);
BENCHMARK_CAPTURE(BM_GemmS8_perch, u8_requant, true)->Apply(gemm_shapes);
BENCHMARK(BM_GemmS8_onednn)->Apply(gemm_shapes);

}  // namespace

BENCHMARK_MAIN();
