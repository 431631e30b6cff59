// perch/kernels/gemm_s8.h — 8-bit GEMM: C[M,N] = output_stage(bias + (A - za) * (W - zw)), int32 accumulation.
//
//   A: M x K row-major, uint8 or int8 (Act8), one zero point za (per tensor), given per call.
//   W: K x N int8, packed once (pack_weights_s8) — symmetric (zw = 0) or with a zero point per tensor or per
//      output column. uint8 weights (ONNX MatMulInteger/ConvInteger allow them) are packed as w - 128 with the
//      zero point shifted by -128 (pack_weights_u8): the products are unchanged.
//   Output stage: perch/kernels/output_stage_s8.h (raw int32, or requantized uint8/int8 with clamp).
//
// Zero-point terms, folded so the inner loop is a plain u8 x s8 dot product (exact, VPDPBUSD / VPMADDWD):
//   sum_k (a - za)(w - zw) = sum_k a w  -  za * colsum[n]  -  zw[n] * (rowsum[m] - K za)
// colsum[n] = sum_k w[k][n] is computed at pack time; rowsum is computed per call, and only when some zw != 0.
// All of it is wrapping int32 arithmetic, so the result is exact whenever the true value fits int32.
//
// Overflow bound (checked at the front): |a - za| <= 255 and |w - zw| <= 255 give |sum| <= 65025 K < 2^31 for
// K <= kMaxK = 33025. bias is added with int32 wrap-around (exact while bias + sum fits int32).
//
// Paths (perch/core/cpu.h): kReference (gemm_s8_reference, plain loops over the packed weights), kAvx2
// (VPMADDWD on sign-extended int16 pairs, 4 x 8 tiles), kAvx512Vnni (VPDPBUSD, 12 x 32 tiles). Results are
// identical bit for bit on every path. The AVX-512 VNNI path reads uint8 A in place when every 4-byte k-group
// of a row lies inside the row (K % 4 == 0, or lda >= 4 ceil(K / 4): the bytes past K meet zero weights and may
// hold anything; the tile holding the last row is then packed, so nothing past A is read), else packs A per tile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "perch/kernels/output_stage_s8.h"

namespace perch::kernels {

inline constexpr int64_t kMaxGemmS8K = 33025;  // 65025 * K < 2^31

// Source layout of the weights given to pack_weights_*: kKN = W[k * n_cols + j] (MatMul B),
// kNK = W[j * k_dim + k] (ONNX Conv weights [Cout, Cin*kh*kw], Gemm with transB).
enum class WeightLayout : uint8_t { kKN, kNK };

// Packed layout: panels of kPanel = 16 output columns; inside a panel, groups of 4 consecutive k; a group is
// 64 bytes: column c's 4 weights at bytes [4c, 4c + 4). K is padded with zeros to a multiple of 4, N to a
// multiple of 16. Byte (k, j) lives at data[(j / 16) * panel_stride + (k / 4) * 64 + (j % 16) * 4 + k % 4].
struct PackedWeightsS8 {
  static constexpr int64_t kPanel = 16;
  int64_t k = 0, n = 0;
  int64_t k_groups = 0;      // ceil(k / 4)
  int64_t panels = 0;        // ceil(n / 16)
  int64_t panel_stride = 0;  // bytes per panel: k_groups * 64
  struct Free {
    void operator()(int8_t* p) const;
  };
  std::unique_ptr<int8_t[], Free> data;  // 64-byte aligned, panels * panel_stride bytes
  std::vector<int32_t> col_sums;         // [n]: sum_k w[k][j] (of the stored int8 values)
  std::vector<int32_t> zero_points;      // [n] weight zero point per column, or empty when all are 0

  int8_t at(int64_t kk, int64_t j) const {
    return data[(j / kPanel) * panel_stride + (kk / 4) * 64 + (j % kPanel) * 4 + kk % 4];
  }
};

// w: K x N in `layout`. zero_points: empty (symmetric), 1 value (per tensor) or N values (per column), each in
// [-128, 127]. Throws on bad sizes or K > kMaxGemmS8K.
PackedWeightsS8 pack_weights_s8(const int8_t* w, int64_t k, int64_t n, WeightLayout layout,
                                std::span<const int32_t> zero_points = {});
// uint8 weights with zero points in [0, 255]; stored as w - 128 with zero points - 128.
PackedWeightsS8 pack_weights_u8(const uint8_t* w, int64_t k, int64_t n, WeightLayout layout,
                                std::span<const int32_t> zero_points);

struct GemmS8Args {
  int64_t m = 0;
  const void* a = nullptr;  // M x K, uint8_t or int8_t per a_type
  int64_t lda = 0;          // >= K
  Act8 a_type = Act8::kUInt8;
  int32_t a_zero_point = 0;  // in the range of a_type
  const PackedWeightsS8* w = nullptr;
  const int32_t* bias = nullptr;  // [N] or null
  OutputStageS8 out;
  void* c = nullptr;  // M x N of int32_t / uint8_t / int8_t per out.type
  int64_t ldc = 0;    // >= N, in elements
};

// Checks every argument (reasons in the messages); gemm_s8 and gemm_s8_reference call it.
void validate(const GemmS8Args& g);

// The reference twin: plain int64 loops reading the packed weights through PackedWeightsS8::at.
void gemm_s8_reference(const GemmS8Args& g);
// Best active path, split over the thread pool (perch/core/threads.h) by row blocks or column panels.
void gemm_s8(const GemmS8Args& g);
// The threading hook: output rows [m_begin, m_end) x columns [n_begin, n_end) only, on the calling thread,
// best active path. n_begin must be a multiple of 16 (a panel boundary). No validation (call validate once).
void gemm_s8_block(const GemmS8Args& g, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);

// The per-call constants of gemm_s8 (zero-point column terms bias - za * colsum, the output stage's tables) for
// fixed weights, bias, activation type / zero point and output stage, built once: a caller that runs the same
// layer many times (the int8 executor's steps) prepares them at load time and passes them with args that agree
// in those fields — w, bias (contents), a_type, a_zero_point, out (contents, multipliers included); m, a, lda, c,
// ldc may change. w, a_type, a_zero_point and out.type are checked; the rest is the caller's promise. Same
// results as the calls without it, on every path.
struct GemmS8Prepared;
std::shared_ptr<const GemmS8Prepared> prepare_gemm_s8(const GemmS8Args& g);
void gemm_s8(const GemmS8Args& g, const GemmS8Prepared& prep);
void gemm_s8_block(const GemmS8Args& g, const GemmS8Prepared& prep, int64_t m_begin, int64_t m_end, int64_t n_begin,
                   int64_t n_end);


// ---------------------------------------------------------------------------------------------------------
// Indirect GEMM (convolution without im2col). Row i of A is not stored: it is the concatenation, tap by tap,
// of `taps` runs of `channels` bytes, run t read from rows[i * taps + t]:
//   A[i][t * channels + c] = rows[i * taps + t][c],   K = taps * channels = w->k,  channels % 4 == 0.
// For a KxK NHWC convolution, row i is output pixel i, tap t = (kernel row, kernel column) = (t / kw, t % kw),
// and rows[i * taps + t] points at the C input bytes under that tap, or at C bytes holding the activation zero
// point for a tap in the padding ((za - za) * w = 0): K is the executor's k = (i * kw + j) * C + c, so the packed
// weights are the ones of the im2col GEMM. Everything else — zero-point terms (the row term of weight zero points
// sums the bytes through the table too), bias, output stage, the int32 bound — is gemm_s8's, and the results are
// bit-identical to gemm_s8 on the im2col matrix.
// Paths: kReference (gemm_s8_indirect_reference); kAvx512Vnni reads the runs in place, 4 bytes per k-group, the
// k-groups of one tap consecutive (uint8 activations; int8 ones are gathered, below); kAvx2 and int8 activations
// on AVX-512 gather the rows of each 48-row block into a buffer (an im2col from the table) and run the GEMM
// path on it.
struct IndirectRowsS8 {
  const uint8_t* const* rows = nullptr;  // [m * taps]; raw bytes (int8 activations as two's complement)
  int64_t taps = 0;
  int64_t channels = 0;  // multiple of 4
};

// g.a and g.lda are not used (g.a may be null). Checks g as validate() does plus the table's shape.
void validate_indirect(const GemmS8Args& g, const IndirectRowsS8& ind);
// The reference twin: plain int64 loops reading the table and the packed weights through PackedWeightsS8::at.
void gemm_s8_indirect_reference(const GemmS8Args& g, const IndirectRowsS8& ind);
// Best active path, on the calling thread (the executor splits the rows over threads and builds one table per
// block of rows).
void gemm_s8_indirect(const GemmS8Args& g, const IndirectRowsS8& ind);
// With constants from prepare_gemm_s8 (same promise as gemm_s8's), output rows [m_begin, m_end) x columns
// [n_begin, n_end) (n_begin a multiple of 16), no validation.
void gemm_s8_indirect_block(const GemmS8Args& g, const IndirectRowsS8& ind, const GemmS8Prepared& prep,
                            int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end);

}  // namespace perch::kernels
