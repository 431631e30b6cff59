// Google Benchmark: perch's int8 kernels against oneDNN 2.6 (Debian libdnnl-dev) in the same run.
//
//   OMP_NUM_THREADS=1 PERCH_NUM_THREADS=1 ./build/bench/bench/bench_int8 --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true      (one command line)
// Counter "GOPS" = 2 * M * N * K (GEMM) or 2 * taps * outputs (depthwise) per second, in 1e9.
//
// GEMM (u8 x s8 -> s32, raw int32 output, zero points 0): perch gemm_s8 with weights packed once outside
// the timed loop vs dnnl_gemm_u8s8s32 (which packs per call: that is its API) and vs oneDNN's matmul primitive
// (weights reordered once, like perch's packing; on AMX CPUs it runs tile instructions). Also perch with the
// requantized uint8 output stage (per-channel multipliers), to show the output stage's cost.
// Shapes: 256^3, 1024^3 and the convolutions of fmnist_convnet as im2col GEMMs (M = batch * pixels,
// K = Cin * 9, N = Cout): conv2 14x14, 32 -> 64 and conv3 7x7, 64 -> 128, at batch 1 and 64.
// Depthwise 3x3, 144 channels at 56x56, stride 1 and 2, pad 1 (MobileNetV2; also its 96 ch 112^2 stride 2,
// 192 ch 28^2 and 384 ch 14^2 layers), uint8 in/out per-channel requantized:
// perch NHWC vs a oneDNN convolution primitive (u8 src, s8 weights, groups = 144, u8 dst, per-channel
// output scales, NHWC memory ("acdb"), weights in the primitive's preferred layout, reordered once).
// Conv 3x3 (convnet conv2 / conv3 on a slice of 8 images): the executor's im2col + GEMM vs its indirect GEMM.
#include <benchmark/benchmark.h>
#include <dlfcn.h>
#include <dnnl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "perch/core/threads.h"
#include "perch/kernels/dwconv_s8.h"
#include "perch/kernels/gemm_s8.h"
#include "../src/runtime/int8_kernels.h"

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

// oneDNN's thread count, reported as perch's benchmarks report theirs (Google Benchmark's CSV output also needs every
// run to carry the same counters): Debian's libdnnl runs on OpenMP, and libgomp is loaded with it.
void set_onednn_threads(benchmark::State& state) {
  using Fn = int (*)();
  static const auto max_threads = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
  state.counters["threads"] = max_threads ? max_threads() : 0;
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
  set_onednn_threads(state);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->Args({256, 256, 256})->Args({1024, 1024, 1024});
  b->Args({196, 64, 288})->Args({196 * 64, 64, 288});  // convnet conv2, batch 1 / 64
  b->Args({49, 128, 576})->Args({49 * 64, 128, 576});  // convnet conv3, batch 1 / 64
  // fmnist_mbv2's 1x1 convolutions (M x N x K) on the slice of 8 images the int8 executor runs at a time (small K:
  // the output stage dominates the requantized variant)
  b->Args({8 * 784, 16, 16})->Args({8 * 784, 64, 16})->Args({8 * 196, 24, 64})->Args({8 * 196, 96, 24});
  b->Args({8 * 196, 24, 96})->Args({8 * 49, 32, 96})->Args({8 * 49, 128, 32})->Args({8 * 49, 32, 128});
  b->Args({8 * 49, 64, 128})->Args({8 * 49, 128, 64});
  b->ArgNames({"M", "N", "K"})->Unit(benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_GemmS8_perch, s32, false)->Apply(gemm_shapes);
BENCHMARK_CAPTURE(BM_GemmS8_perch, u8_requant, true)->Apply(gemm_shapes);
BENCHMARK(BM_GemmS8_onednn)->Apply(gemm_shapes);

// Depthwise 3x3, pad 1, uint8 -> uint8 with per-channel requantization. args: channels, size, stride, batch,
// kernel (perch only: 0 = what depthwise_s8 picks, the column-quad kernel on VNNI + VBMI; 1 = the row-cached one;
// 2 = kernel 0 with its constants rebuilt on every call). Kernels 0 and 1 run as the int8 executor runs them, on
// constants prepared once (prepare_depthwise_s8, at model load), as oneDNN's primitive below is created once outside
// the timed loop; kernel 2 adds the per-call setup of the one-shot depthwise_s8(d) (zero-point offsets, the output
// stage's tables: a quarter of the time at 384 channels, 14x14).
void BM_Depthwise3x3_perch(benchmark::State& state) {
  const int64_t c = state.range(0), hw = state.range(1), stride = state.range(2), batch = state.range(3);
  perch::kernels::set_depthwise_s8_column_kernel(state.range(4) != 1);
  const auto x = random_u8(static_cast<size_t>(batch * hw * hw * c), 3);
  const auto w = random_s8(static_cast<size_t>(c * 9), 4);
  const PackedDepthwiseS8 pw = pack_depthwise_s8(w.data(), c, 3, 3);
  std::vector<int32_t> bias(static_cast<size_t>(c), 100);
  std::vector<perch::quant::FixedPointMultiplier> ms(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) ms[static_cast<size_t>(j)] = perch::quant::quantize_multiplier(1.0 / (2000.0 + j));
  DepthwiseS8Args d;
  d.batch = batch;
  d.in_h = d.in_w = hw;
  d.channels = c;
  d.x = x.data();
  d.x_zero_point = 128;
  d.w = &pw;
  d.stride_h = d.stride_w = stride;
  d.pad_top = d.pad_left = d.pad_bottom = d.pad_right = 1;
  d.bias = bias.data();
  d.out.type = OutputType::kUInt8;
  d.out.multipliers = ms.data();
  d.out.num_multipliers = c;
  d.out.zero_point = 128;
  std::vector<uint8_t> y(static_cast<size_t>(batch * d.out_h() * d.out_w() * c));
  d.y = y.data();
  const auto prep = perch::kernels::prepare_depthwise_s8(d);
  const bool per_call = state.range(4) == 2;
  for (auto _ : state) {
    if (per_call)
      depthwise_s8(d);
    else
      depthwise_s8(d, *prep);
    benchmark::ClobberMemory();
  }
  perch::kernels::set_depthwise_s8_column_kernel(true);
  set_gops(state, 2.0 * 9 * c * static_cast<double>(batch * d.out_h() * d.out_w()));
  state.counters["threads"] = perch::num_threads();
}

#define DNNL_OK(call)                                         \
  do {                                                        \
    if ((call) != dnnl_success) {                             \
      state.SkipWithError("oneDNN call failed: " #call);      \
      return;                                                 \
    }                                                         \
  } while (0)

// Weights given in `user_md` layout at `data`, reordered once into the primitive's preferred `want_md` (outside the
// timed loop, as perch packs its weights once): a new memory in *out, which the caller destroys.
dnnl_status_t reorder_weights(dnnl_engine_t engine, dnnl_stream_t stream, const dnnl_memory_desc_t* user_md, void* data,
                              const dnnl_memory_desc_t* want_md, dnnl_memory_t* out) {
  dnnl_memory_t user;
  dnnl_primitive_desc_t rpd;
  dnnl_primitive_t reorder;
  dnnl_status_t st = dnnl_memory_create(&user, user_md, engine, data);
  if (st == dnnl_success) st = dnnl_memory_create(out, want_md, engine, DNNL_MEMORY_ALLOCATE);
  if (st == dnnl_success) st = dnnl_reorder_primitive_desc_create(&rpd, user_md, engine, want_md, engine, nullptr);
  if (st == dnnl_success) st = dnnl_primitive_create(&reorder, rpd);
  if (st != dnnl_success) return st;
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, *out}};
  st = dnnl_primitive_execute(reorder, stream, 2, args);
  if (st == dnnl_success) st = dnnl_stream_wait(stream);
  dnnl_primitive_destroy(reorder);
  dnnl_primitive_desc_destroy(rpd);
  dnnl_memory_destroy(user);
  return st;
}

// oneDNN's int8 grouped convolution as a depthwise conv: NHWC u8 source, s8 weights reordered once into the
// primitive's preferred layout, s32 bias, u8 destination, per-channel output scales (its requantization).
// No source zero point (perch's cost does not depend on it; oneDNN's would only grow).
void BM_Depthwise3x3_onednn(benchmark::State& state) {
  const int64_t c = state.range(0), hw = state.range(1), stride = state.range(2), batch = state.range(3);
  const int64_t out = (hw + 2 - 3) / stride + 1;
  const auto x = random_u8(static_cast<size_t>(batch * hw * hw * c), 3);
  const auto w = random_s8(static_cast<size_t>(c * 9), 4);
  std::vector<int32_t> bias(static_cast<size_t>(c), 100);
  std::vector<uint8_t> y(static_cast<size_t>(batch * out * out * c));
  std::vector<float> scales(static_cast<size_t>(c));
  for (int64_t j = 0; j < c; ++j) scales[static_cast<size_t>(j)] = 1.0f / (2000.0f + j);
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  DNNL_OK(dnnl_engine_create(&engine, dnnl_cpu, 0));
  DNNL_OK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
  const dnnl_dims_t src_dims = {batch, c, hw, hw}, dst_dims = {batch, c, out, out}, wei_dims = {c, 1, 1, 3, 3},
                    bias_dims = {c}, strides = {stride, stride}, dil = {0, 0}, pad = {1, 1};
  dnnl_memory_desc_t src_md, dst_md, wei_any, wei_user, bias_md;
  DNNL_OK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_u8, dnnl_nhwc));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_u8, dnnl_nhwc));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&wei_any, 5, wei_dims, dnnl_s8, dnnl_format_tag_any));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&wei_user, 5, wei_dims, dnnl_s8, dnnl_goihw));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_s32, dnnl_a));
  dnnl_convolution_desc_t cd;
  DNNL_OK(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src_md,
                                                     &wei_any, &bias_md, &dst_md, strides, dil, pad, pad));
  dnnl_primitive_attr_t attr;
  DNNL_OK(dnnl_primitive_attr_create(&attr));
  DNNL_OK(dnnl_primitive_attr_set_output_scales(attr, c, 1 << 1, scales.data()));
  dnnl_primitive_desc_t pd;
  DNNL_OK(dnnl_primitive_desc_create(&pd, &cd, attr, engine, nullptr));
  const dnnl_memory_desc_t* wei_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  dnnl_memory_t src_m, dst_m, wei_m, bias_m;
  DNNL_OK(dnnl_memory_create(&src_m, &src_md, engine, const_cast<uint8_t*>(x.data())));
  DNNL_OK(dnnl_memory_create(&dst_m, &dst_md, engine, y.data()));
  DNNL_OK(reorder_weights(engine, stream, &wei_user, const_cast<int8_t*>(w.data()), wei_md, &wei_m));
  DNNL_OK(dnnl_memory_create(&bias_m, &bias_md, engine, bias.data()));
  dnnl_primitive_t conv;
  DNNL_OK(dnnl_primitive_create(&conv, pd));
  const char* impl = nullptr;
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  state.SetLabel(impl ? impl : "?");
  dnnl_exec_arg_t args[4] = {
      {DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_BIAS, bias_m}, {DNNL_ARG_DST, dst_m}};
  for (auto _ : state) {
    DNNL_OK(dnnl_primitive_execute(conv, stream, 4, args));
    DNNL_OK(dnnl_stream_wait(stream));
  }
  set_gops(state, 2.0 * 9 * c * static_cast<double>(batch * out * out));
  set_onednn_threads(state);
  dnnl_primitive_destroy(conv);
  dnnl_primitive_desc_destroy(pd);
  dnnl_primitive_attr_destroy(attr);
  for (dnnl_memory_t m : {src_m, dst_m, wei_m, bias_m}) dnnl_memory_destroy(m);
  dnnl_stream_destroy(stream);
  dnnl_engine_destroy(engine);
}

// oneDNN's matmul primitive, u8 x s8 -> s32: the weights reordered once into the primitive's preferred layout outside
// the timed loop (as perch packs them once), no zero points; the label names the implementation oneDNN chose (on CPUs
// with AMX, e.g. "brg:avx512_core_amx": tile instructions perch does not use).
void BM_GemmS8_onednn_matmul(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto a = random_u8(static_cast<size_t>(m * k), 1);
  const auto w = random_s8(static_cast<size_t>(k * n), 2);
  std::vector<int32_t> c(static_cast<size_t>(m * n));
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  DNNL_OK(dnnl_engine_create(&engine, dnnl_cpu, 0));
  DNNL_OK(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
  const dnnl_dims_t a_dims = {m, k}, w_dims = {k, n}, c_dims = {m, n};
  dnnl_memory_desc_t a_md, w_any, w_user, c_md;
  DNNL_OK(dnnl_memory_desc_init_by_tag(&a_md, 2, a_dims, dnnl_u8, dnnl_ab));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&w_any, 2, w_dims, dnnl_s8, dnnl_format_tag_any));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&w_user, 2, w_dims, dnnl_s8, dnnl_ab));
  DNNL_OK(dnnl_memory_desc_init_by_tag(&c_md, 2, c_dims, dnnl_s32, dnnl_ab));
  dnnl_matmul_desc_t md;
  DNNL_OK(dnnl_matmul_desc_init(&md, &a_md, &w_any, nullptr, &c_md));
  dnnl_primitive_desc_t pd;
  DNNL_OK(dnnl_primitive_desc_create(&pd, &md, nullptr, engine, nullptr));
  const dnnl_memory_desc_t* wei_md = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  dnnl_memory_t a_m, c_m, wei_m;
  DNNL_OK(dnnl_memory_create(&a_m, &a_md, engine, const_cast<uint8_t*>(a.data())));
  DNNL_OK(dnnl_memory_create(&c_m, &c_md, engine, c.data()));
  DNNL_OK(reorder_weights(engine, stream, &w_user, const_cast<int8_t*>(w.data()), wei_md, &wei_m));
  dnnl_primitive_t mm;
  DNNL_OK(dnnl_primitive_create(&mm, pd));
  const char* impl = nullptr;
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  state.SetLabel(impl ? impl : "?");
  dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, a_m}, {DNNL_ARG_WEIGHTS, wei_m}, {DNNL_ARG_DST, c_m}};
  for (auto _ : state) {
    DNNL_OK(dnnl_primitive_execute(mm, stream, 3, args));
    DNNL_OK(dnnl_stream_wait(stream));
  }
  set_gops(state, 2.0 * m * n * k);
  set_onednn_threads(state);
  dnnl_primitive_destroy(mm);
  dnnl_primitive_desc_destroy(pd);
  for (dnnl_memory_t x : {a_m, c_m, wei_m}) dnnl_memory_destroy(x);
  dnnl_stream_destroy(stream);
  dnnl_engine_destroy(engine);
}
BENCHMARK(BM_GemmS8_onednn_matmul)->Apply(gemm_shapes);

// ImageNet MobileNetV2 layers at batch 1, then the depthwise layers of ../shared/models/fmnist_mbv2.onnx on one
// slice of 8 images (the int8 executor's sub-batch).
void dw_shapes_with(benchmark::internal::Benchmark* b, int kernels) {
  const int64_t shapes[][4] = {{144, 56, 1, 1}, {144, 56, 2, 1}, {96, 112, 2, 1}, {192, 28, 1, 1}, {384, 14, 1, 1},
                               {16, 28, 1, 8},  {64, 28, 2, 8},  {96, 14, 1, 8},  {96, 14, 2, 8},  {128, 7, 1, 8}};
  for (const auto& s : shapes)
    for (int k = 0; k < kernels; ++k) b->Args({s[0], s[1], s[2], s[3], k});
  b->ArgNames({"C", "HW", "stride", "batch", "kernel"})->Unit(benchmark::kMicrosecond);
}
void dw_shapes_perch(benchmark::internal::Benchmark* b) { dw_shapes_with(b, 3); }
void dw_shapes_onednn(benchmark::internal::Benchmark* b) { dw_shapes_with(b, 1); }
BENCHMARK(BM_Depthwise3x3_perch)->Apply(dw_shapes_perch);
BENCHMARK(BM_Depthwise3x3_onednn)->Apply(dw_shapes_onednn);

// A 3x3 / pad 1 convolution of the int8 executor, uint8 -> uint8 requantized per channel, on one slice of 8 images
// (the executor's sub-batch), in its blocks of <= 256 output pixels on one thread: im2col + gemm_s8_block (variant
// 0, the route for C % 4 != 0) vs conv_indirection_nhwc + gemm_s8_indirect_block (variant 1), and the indirect
// kernel alone with the whole table built before the timed loop (variant 2: the table's share is 1 vs 2). args:
// image size, C_in, C_out, variant. GOPS counts the convolution's 2 * M * N * K either way.
void BM_Conv3x3_perch(benchmark::State& state) {
  namespace int8 = perch::runtime::int8;
  const int64_t hw = state.range(0), cin = state.range(1), cout = state.range(2), batch = 8;
  const int64_t variant = state.range(3);
  const int64_t K = 9 * cin, M = batch * hw * hw;
  const auto x = random_u8(static_cast<size_t>(batch * hw * hw * cin), 5);
  const auto w = random_s8(static_cast<size_t>(cout * K), 6);
  const PackedWeightsS8 pw = pack_weights_s8(w.data(), K, cout, WeightLayout::kNK);
  std::vector<perch::quant::FixedPointMultiplier> ms(static_cast<size_t>(cout));
  for (int64_t j = 0; j < cout; ++j) ms[static_cast<size_t>(j)] = perch::quant::quantize_multiplier(1.0 / (64.0 * K + j));
  const int32_t za = 3;
  GemmS8Args g;
  g.a = x.data();
  g.lda = (K + 3) / 4 * 4;
  g.a_zero_point = za;
  g.w = &pw;
  g.out.type = OutputType::kUInt8;
  g.out.multipliers = ms.data();
  g.out.num_multipliers = cout;
  g.out.zero_point = 128;
  g.ldc = cout;
  std::vector<uint8_t> y(static_cast<size_t>(M * cout));
  const auto prep = prepare_gemm_s8(g);
  const int8::Im2Col ic{batch, hw, hw, cin, 3, 3, 1, 1, 1, 1, 1, 1, hw, hw};
  const int64_t rows = std::max<int64_t>(16, std::min<int64_t>(256, (256 * 1024) / K));  // as the executor
  std::vector<uint8_t> buf(static_cast<size_t>(rows * g.lda));
  std::vector<const uint8_t*> table(static_cast<size_t>(rows * 9));
  const std::vector<uint8_t> pad_row(static_cast<size_t>(cin), static_cast<uint8_t>(za));
  std::vector<const uint8_t*> whole(static_cast<size_t>(M * 9));
  int8::conv_indirection_nhwc(ic, x.data(), pad_row.data(), 0, M, whole.data());
  for (auto _ : state) {
    for (int64_t r0 = 0; r0 < M; r0 += rows) {
      const int64_t r1 = std::min(M, r0 + rows);
      GemmS8Args gb = g;
      gb.m = r1 - r0;
      gb.c = y.data() + r0 * cout;
      if (variant == 1) {
        int8::conv_indirection_nhwc(ic, x.data(), pad_row.data(), r0, r1, table.data());
        gemm_s8_indirect_block(gb, IndirectRowsS8{table.data(), 9, cin}, *prep, 0, gb.m, 0, cout);
      } else if (variant == 2) {
        gemm_s8_indirect_block(gb, IndirectRowsS8{whole.data() + r0 * 9, 9, cin}, *prep, 0, gb.m, 0, cout);
      } else {
        int8::im2col_nhwc(ic, x.data(), static_cast<uint8_t>(za), r0, r1, buf.data(), g.lda);
        gb.a = buf.data();
        gemm_s8_block(gb, *prep, 0, gb.m, 0, cout);
      }
    }
    benchmark::ClobberMemory();
  }
  set_gops(state, 2.0 * M * cout * K);
}
BENCHMARK(BM_Conv3x3_perch)
    ->ArgNames({"HW", "Cin", "Cout", "variant"})
    ->Args({14, 32, 64, 0})->Args({14, 32, 64, 1})->Args({14, 32, 64, 2})  // convnet conv2
    ->Args({7, 64, 128, 0})->Args({7, 64, 128, 1})->Args({7, 64, 128, 2})  // convnet conv3
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
