// Small integer kernels of the int8 executor (not a public header): layout changes, NHWC pooling, im2col,
// table lookups. All on 8-bit activations; formulas and rounding beside each (docs/INTEGER.md).
#pragma once

#include <cstdint>

#include "perch/core/tensor.h"
#include "perch/kernels/pool_f32.h"
#include "perch/quant/fixed_point.h"

namespace perch::runtime::int8 {

// [N, C, H, W] <-> [N, H, W, C] for 1-byte elements (the dtype is kept). Shapes are given in the ONNX (NCHW)
// order; the NHWC tensor is stored with shape [N, H, W, C].
Tensor nchw_to_nhwc(const Tensor& x);
Tensor nhwc_to_nchw(const Tensor& x);

// Max pooling on NHWC 8-bit data: the max of stored values (exact, zero point irrelevant). Padded cells are
// skipped (ONNX: padding never wins a max). y: [N, out_h, out_w, C] of the same dtype.
void maxpool_nhwc(const kernels::Pool2dShape& s, const Tensor& x, Tensor& y);

// Average pooling on NHWC 8-bit data, requantized from (s_x, zp_x) to (s_y, zp_y):
//   sum   = sum over the window's counted cells of (q_x - zp_x)                   (int32: |sum| <= 255 * cells)
//   q_y   = clamp(zp_y + multiply_round_once(sum, M_d), qmin, qmax),  M_d = s_x / (s_y * d)
// d = the divisor (window size, or the cells inside the input when !count_include_pad); multipliers[d] holds
// M_d for every d in [1, kernel_h * kernel_w]. Padded cells are never summed: with count_include_pad they
// count in d as zeros (the ONNX meaning: zero-padding of the real input, i.e. q = zp_x).
void avgpool_nhwc(const kernels::Pool2dShape& s, const Tensor& x, int32_t zp_x, const quant::FixedPointMultiplier* multipliers,
                  int32_t zp_y, int32_t qmin, int32_t qmax, Tensor& y);

// im2col for a 2-D convolution on NHWC 8-bit data: rows [row_begin, row_end) of the [N*OH*OW, KH*KW*C]
// patch matrix, row stride ldo >= K (bytes [K, ldo) of a row are set to pad_value too: the GEMM's padded last
// k-group reads them against zero weights, gemm_s8.h); out-of-input taps are filled with `pad_value` (the zero
// point: (pad - zp) * w = 0).
struct Im2Col {
  int64_t batch, in_h, in_w, channels, kh, kw;
  int64_t stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
  int64_t out_h, out_w;
};
void im2col_nhwc(const Im2Col& g, const uint8_t* x, uint8_t pad_value, int64_t row_begin, int64_t row_end, uint8_t* out,
                 int64_t ldo);

// Patch rows in kernel-row groups, for convolutions whose kernel row is narrow (kw * C < 16 bytes and not a multiple
// of 4: first layers on 1 or 3 channels). With unit horizontal dilation, kernel row i of a patch is kw * C contiguous
// bytes of one image row; padded to a group of R = 4 ceil(kw C / 4) bytes, a patch row is kh groups:
//   k = i * R + j * C + c   (j < kw, c < C),   K' = kh * R   (vs K = kh kw C of im2col_nhwc)
// The bytes at j * C + c >= kw * C of a group are free: the executor packs the weight zero point (0 for symmetric
// weights) against them, so they add (a - za)(zw - zw) = 0 whatever they hold. A kernel row wholly inside the image
// is therefore one R-byte copy (reading up to R - kw C bytes past it, inside the tensor: checked); a row touching the
// padding is built tap by tap, with `pad_value` (the activation zero point) for the padding and the free bytes.
int64_t group_bytes(const Im2Col& g);  // R
// Rows [row_begin, row_end) of the grouped patch matrix (row stride ldo = kh * R); x holds g.batch NHWC images.
void im2col_groups(const Im2Col& g, const uint8_t* x, uint8_t pad_value, int64_t row_begin, int64_t row_end,
                   uint8_t* out, int64_t ldo);
// The same rows from a padded copy of the images (pad_value on every side, rows long enough for the last group's
// R bytes), where every kernel row is one R-byte copy without a check: faster when the copy is small (the executor
// uses it when the padded images are at most a few times the input; hostile pads/strides take the checked path).
struct PaddedImages {
  int64_t rows = 0, row_bytes = 0;  // per image: rows x row_bytes bytes, input pixel (ih, iw) at
                                    // (ih + pad_top) * row_bytes + (iw + pad_left) * C
  int64_t bytes_per_image() const { return rows * row_bytes; }
};
PaddedImages padded_geometry(const Im2Col& g);
// Images [0, g.batch) of x into out (g.batch * bytes_per_image() bytes).
void pad_images_nhwc(const Im2Col& g, const PaddedImages& p, const uint8_t* x, uint8_t pad_value, uint8_t* out);
void im2col_groups_padded(const Im2Col& g, const PaddedImages& p, const uint8_t* padded, int64_t row_begin,
                          int64_t row_end, uint8_t* out, int64_t ldo);

// The indirection table of the same patch matrix (kernels::IndirectRowsS8): for rows [row_begin, row_end) and
// taps t = i * kw + j, out[(r - row_begin) * kh * kw + t] = the C input bytes under tap (i, j) of output pixel r,
// or pad_row (C bytes of the zero point) when the tap falls in the padding. Nothing is copied.
void conv_indirection_nhwc(const Im2Col& g, const uint8_t* x, const uint8_t* pad_row, int64_t row_begin,
                           int64_t row_end, const uint8_t** out);

// QuantizeLinear per tensor, exactly quant::quantize_value (q = clamp(round_half_even(x / s) + zp)), written
// so the compiler vectorizes it; y holds the raw bytes (int8 as two's complement).
void quantize_f32(const float* x, int64_t n, float scale, int32_t zero_point, int32_t qmin, int32_t qmax, uint8_t* y);

// y[i] = table[x[i]] (256 entries) and y[i] = table[a[i] * 256 + b[i]] (65536 entries), on raw bytes.
// lut1: with AVX-512 VBMI (and the AVX-512 VNNI path active) the table sits in four registers and 64 bytes are
// looked up per step (two VPERMI2B, one per 128-entry half, blended on the index's top bit); lut1_reference is
// the scalar twin.
void lut1(const uint8_t* x, int64_t n, const uint8_t* table, uint8_t* y);
void lut1_reference(const uint8_t* x, int64_t n, const uint8_t* table, uint8_t* y);
void lut2(const uint8_t* a, const uint8_t* b, int64_t n, const uint8_t* table, uint8_t* y);

// Add / Sub / Mul of two 8-bit tensors (per-tensor parameters) into an 8-bit output, by a float formula written to
// be the simulation's own (DequantizeLinear, the op, QuantizeLinear; a fused Relu/Clip is the clamp [qmin, qmax]):
//   fa = float(qa - za) * sa,  fb = float(qb - zb) * sb,  f = fa (+|-|*) fb            (each one float rounding)
//   q  = clamp(round_half_even(f / sy) + zy, qmin, qmax)                              (float division, as Q)
// No contraction into FMA (each product is rounded before the add). The executor uses it only after checking it
// against the 65 536-entry table of the simulation's result for every code pair, on both paths (binary8_matches):
// a mismatch (another kernel's rounding, a different formula) keeps the table.
struct Binary8 {
  enum class Op : uint8_t { kAdd, kSub, kMul };
  Op op = Op::kAdd;
  bool a_signed = false, b_signed = false;  // int8 codes (raw bytes read as two's complement)
  int32_t za = 0, zb = 0, zy = 0, qmin = 0, qmax = 255;
  float sa = 1.0f, sb = 1.0f, sy = 1.0f;
  // f * inv_sy (inv_sy = float(1 / sy)) in place of f / sy: one VMULPS instead of a VDIVPS (several times its
  // throughput cost). Not the same rounding in general — used only when it, too, reproduces the table for every
  // code pair (the executor tries it first, then the division, then keeps the lookup).
  bool reciprocal = false;
  float inv_sy = 1.0f;
};
// The scalar twin, and the best active path (AVX-512 when Path::kAvx512Vnni is active: it implies F/BW/VL).
void binary8_reference(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y);
void binary8(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y);
// True when the scalar twin and the AVX-512 path (when the CPU has it) both give table[qa * 256 + qb] (raw bytes)
// for all 65 536 code pairs.
bool binary8_matches(const Binary8& f, const uint8_t* table);

}  // namespace perch::runtime::int8
