// perch/kernels/dwconv_s8.h — 8-bit depthwise convolution (group == channels, one filter per channel), NHWC.
//
//   y[n, oh, ow, c] = output_stage(bias[c] + sum_{kh, kw} (x[n, ih, iw, c] - zx) * w[c, kh, kw])
//   ih = oh * stride_h - pad_top + kh * dilation_h,  iw = ow * stride_w - pad_left + kw * dilation_w
// Taps outside the input are the zero point (they add exactly 0: ONNX QLinearConv / ConvInteger padding).
// Weights are int8, symmetric (no weight zero point). Output stage: perch/kernels/output_stage_s8.h.
//
// Why NHWC: a depthwise conv has no reduction over channels, so the vector dimension is the channel; NHWC
// makes the C channels of a pixel contiguous, so each tap is one (masked) load of 64 channels and nothing has
// to be transposed or gathered.
// On AVX-512 VNNI with VBMI, 3x3 kernels with stride_w 1 or 2 and dilation_w 1 (MobileNet's) and an 8-bit output run
// on the column-quad kernel: each kernel column's 3 taps of a channel side by side in 4 bytes, built in registers from
// the three input rows an output row reads and slid along the row, one VPDPBUSD per column per 16 channels.
// Otherwise, kernels of width kw <= 4 (every 3x3; on AVX-512 VNNI kw <= 8, e.g. the 5x5 of MobileNetV3 and
// PP-LCNet, as two groups of 4 taps per kernel row) run row-cached: each input row is transformed once per channel block
// into a row of tap groups — for each output column, the kw horizontal taps of each channel side by side
// (4 bytes per channel for VPDPBUSD on AVX-512 VNNI, int16 pairs for VPMADDWD on AVX2; exact, never
// VPMADDUBSW) — and reused by the kh output rows that read it; an output pixel is then kh VPDPBUSD per 16
// channels (AVX2: kh * ceil(kw / 2) VPMADDWD per 8), with the zero point folded into the accumulators'
// start value, and the output stage in 64-bit lanes (s8_internal.h, DwConst::rqf) that equals
// quant::multiply_round_once bit for bit. Layouts, formulas and bounds: dwconv_s8_avx512vnni.cpp,
// dwconv_s8_avx2.cpp. Wider kernels use the per-pixel kernels: per output pixel the VNNI path interleaves the
// bytes of 4 taps with VPUNPCK{L,H}{BW,WD} and does one VPDPBUSD per 16 channels per 4 taps; the AVX2 path
// widens to int16 and uses VPMADDWD on tap pairs. The packs that turn int32 back to bytes undo the unpacks'
// lane interleaving, so the permutation costs nothing at the store.
//
// Overflow bound: |x - zx| <= 255, |w| <= 128: |sum| <= 32640 * KH * KW < 2^31 for KH * KW <= 65793 (checked).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "perch/kernels/output_stage_s8.h"

namespace perch::kernels {

struct PackedDepthwiseS8 {
  int64_t channels = 0, kh = 0, kw = 0;
  std::vector<int8_t> plain;   // [C][KH*KW], as given (the reference reads this)
  std::vector<int32_t> w_sum;  // [C]: sum over taps
  // AVX-512 VNNI layout: per block of 64 channels, per group of 4 taps, 4 vectors of 64 bytes; vector j, byte
  // 16 l + 4 i + t holds w[64 b + 16 l + 4 j + i][4 g + t] (the order VPUNPCK leaves the input in).
  std::vector<int8_t> vnni;
  // AVX2 layout: per block of 16 channels, per pair of taps, 2 vectors of 16 int16; vector h, element
  // 8 l + 2 i + t holds w[16 b + 8 l + 4 h + i][2 p + t].
  std::vector<int16_t> avx2;
  // Row layouts of the row-cached kernels (VNNI kw <= 8, AVX2 kw <= 4; dwconv_s8_avx512vnni.cpp /
  // dwconv_s8_avx2.cpp): the taps of one kernel row side by side, padded with zero weights to 4 (VNNI) or to pairs
  // (AVX2). VNNI splits a row of kw > 4 taps into qn = ceil(kw / 4) groups of 4: "virtual row" v = r * qn + q holds
  // taps 4 q .. 4 q + 3 of kernel row r (vr = kh * qn virtual rows; qn = 1 and v = r for kw <= 4).
  // vnni_rows: per block b of 64 channels (at byte 256 b * vr), per virtual row v, g_b = min(4, ceil((C - 64 b) / 16))
  //   vectors of 64 bytes; vector j of row v, byte 4 i + t holds w[64 b + ch][r][4 q + t] (4 q + t < kw and channel
  //   < C, else 0), ch = 16 (i / 4) + 4 j + i % 4 in a full block (the VPUNPCK order), ch = 16 j + i in a partial one.
  std::vector<int8_t> vnni_rows;
  // avx2_rows: per block b of 16 channels, per kernel row r, per tap pair q < (kw + 1) / 2, 2 vectors of 16 int16;
  //   vector h, element 8 l + 2 i + t holds w[16 b + 8 l + 4 h + i][r][2 q + t] (2 q + t < kw, else 0).
  std::vector<int16_t> avx2_rows;
  // Column layout of the VNNI column-quad kernel (3x3 only; dwconv_s8_avx512vnni.cpp): the taps of one kernel
  // *column* side by side. Per vector J = 4 b + j of 16 channels, per kernel column k < 3, 64 bytes; byte 4 i + r holds
  // w[ch][r][k] (r < 3 and ch < C, else 0), ch = 64 b + 16 (i / 4) + 4 j + i % 4 in a full block of 64 channels (the
  // VPUNPCK order, as vnni_rows), ch = 16 J + i in a partial one.
  std::vector<int8_t> vnni_cols;
};

// w: [C][KH][KW] (ONNX weight [C, 1, KH, KW]).
PackedDepthwiseS8 pack_depthwise_s8(const int8_t* w, int64_t channels, int64_t kh, int64_t kw);

struct DepthwiseS8Args {
  int64_t batch = 0, in_h = 0, in_w = 0, channels = 0;  // x: [batch, in_h, in_w, channels]
  const void* x = nullptr;
  Act8 x_type = Act8::kUInt8;
  int32_t x_zero_point = 0;
  const PackedDepthwiseS8* w = nullptr;
  int64_t stride_h = 1, stride_w = 1, dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  const int32_t* bias = nullptr;  // [C] or null
  OutputStageS8 out;
  void* y = nullptr;  // [batch, out_h, out_w, channels] of out.type

  int64_t out_h() const { return (in_h + pad_top + pad_bottom - dilation_h * (w->kh - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (in_w + pad_left + pad_right - dilation_w * (w->kw - 1) - 1) / stride_w + 1; }
};

void validate(const DepthwiseS8Args& d);
void depthwise_s8_reference(const DepthwiseS8Args& d);
// Best active path, output rows split over the thread pool.
void depthwise_s8(const DepthwiseS8Args& d);
// Testing: whether the VNNI path may run 3x3 convolutions on the column-quad kernel (default true); false sends
// them to the row-cached kernel, so tests cover both on one machine. Not thread-safe against running convolutions.
void set_depthwise_s8_column_kernel(bool enabled);

// The per-call constants of depthwise_s8 (zero-point offsets, output-stage tables in each path's channel order)
// built once, as prepare_gemm_s8 (gemm_s8.h): pass them with args that agree in w, bias (contents), x_type,
// x_zero_point and out (contents); the geometry and the tensors may change. w, x_type, x_zero_point and out.type
// are checked. Same results as depthwise_s8(d) on every path.
struct DepthwiseS8Prepared;
std::shared_ptr<const DepthwiseS8Prepared> prepare_depthwise_s8(const DepthwiseS8Args& d);
void depthwise_s8(const DepthwiseS8Args& d, const DepthwiseS8Prepared& prep);

}  // namespace perch::kernels
