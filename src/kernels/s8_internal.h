// Internal to the int8 kernels (gemm_s8*.cpp, dwconv_s8*.cpp): per-call constants resolved once at the
// front, and the entry points of the ISA-specific files. Each ISA file is compiled with its own flags
// (top-level CMakeLists.txt) and compiles to stubs that report compiled() == false when the compiler cannot
// target its instruction set; callers check the active path and compiled() before calling.
#pragma once

#include <cstdint>
#include <vector>

#include "perch/kernels/dwconv_s8.h"
#include "perch/kernels/gemm_s8.h"

namespace perch::kernels::s8 {

// The output stage per channel, in the form the SIMD code consumes. For channel j with FixedPointMultiplier
// {mult, shift} and S = 31 - shift:
//   out = clamp((acc * mult + 2^(S - 1)) >> S, lo, hi) + zp      (64-bit product, arithmetic shift = floor)
// which is quant::multiply_round_once (one rounding of acc * M, ties toward +inf) for shift in [-31, 30], i.e.
// S in [1, 62]: |acc * mult| < 2^62 and 2^(S - 1) <= 2^61 keep the sum inside int64. With S < 31 (M >= 1) the
// shifted value can exceed int32: the SIMD code clamps it to int32 first (the scalar code saturates), the same
// result after the clamp to [lo, hi].
struct RequantTables {
  bool simd_ok = true;          // every shift in [-31, 30]
  std::vector<int32_t> mult;    // [padded channels]
  std::vector<int32_t> sh64;    // S = 31 - shift, in [1, 62] (62 where simd_ok is false: not read)
  int32_t lo = 0, hi = 0, zp = 0;  // lo = qmin - zp, hi = qmax - zp
  // [qmin, qmax] is the output type's whole range. The AVX-512 8-bit stores then clamp by saturation alone (on the
  // AVX2 paths the saving measured nothing, 2026-12-08, so they keep the min/max): with r the
  // stage's value saturated to int16 (VPACKSSDW), the saturating int16 add r + zp (|zp| <= 255) followed by the
  // saturating pack to 8 bits (VPACKUSWB / VPACKSSWB) gives clamp(r + zp, qmin, qmax) = clamp(r, lo, hi) + zp, as
  // int16 saturation only moves values that are outside [qmin, qmax] either way.
  bool type_range = false;
};
RequantTables make_requant_tables(const OutputStageS8& out, int64_t channels, int64_t padded);

// Scalar output stage, the definition (used by the reference twins and the scalar tails).
inline int32_t requantize_one(int32_t acc, quant::FixedPointMultiplier m, const OutputStageS8& o) {
  const int64_t v = int64_t{quant::multiply_round_once(acc, m)} + o.zero_point;
  return static_cast<int32_t>(v < o.qmin ? o.qmin : (v > o.qmax ? o.qmax : v));
}

// The AVX2 GEMM's accumulator order within 8 columns: lane l holds column kAvx2HaddOrder[l] (gemm_s8_avx2.cpp).
inline constexpr int kAvx2HaddOrder[8] = {0, 1, 4, 5, 2, 3, 6, 7};

// The constants of a gemm_s8 call that depend only on the weights, bias, activation type / zero point and output
// stage: built per call by gemm_s8(g), or once by prepare_gemm_s8 (GemmS8Prepared holds one).
struct GemmConst {
  bool flip = false;             // int8 activations: the kernels read a ^ 0x80
  std::vector<int32_t> col_off;  // [panels * 16]: bias - za_u * colsum (wrapping), 0 in the padding
  std::vector<int32_t> zw;       // [panels * 16] weight zero points, or empty
  RequantTables rq;              // empty for kInt32
  // The one-rounding output stage (DwConst::rqf's formula and layout, groups of 16 columns in natural order), for
  // the AVX-512 VNNI path; bit-identical to rq. Empty when that path cannot run.
  std::vector<int64_t> rqf;
  bool rqf_clamp64 = false, rqf_hi32 = false;
  // The same for the AVX2 path, groups of 8 columns (RqF8), each group's columns in kAvx2HaddOrder (the order the
  // AVX2 kernel's VPHADDD leaves them in). Empty when that path cannot run.
  std::vector<int64_t> rqf8;
  bool rqf8_clamp64 = false, rqf8_hi32 = false;
};
GemmConst make_gemm_const(const GemmS8Args& g);

struct GemmPlan {
  const GemmS8Args* g = nullptr;
  const PackedWeightsS8* w = nullptr;
  const GemmConst* k = nullptr;
  std::vector<int32_t> row_term; // [m]: rowsum_u(a) - K * za_u, only when k->zw is not empty
  const IndirectRowsS8* ind = nullptr;  // indirect GEMM: A's rows through this table (g->a unused)
};
// The per-call plan over constants k (which must outlive it).
GemmPlan make_gemm_plan(const GemmS8Args& g, const GemmConst& k);
// The same for an indirect GEMM: row_term sums each row's bytes through the table.
GemmPlan make_indirect_plan(const GemmS8Args& g, const IndirectRowsS8& ind, const GemmConst& k);

// Per-call state of a depthwise_s8 call. Channel tables are in the order the chosen path's accumulators hold
// channels (see dwconv_s8.h's weight layouts): VNNI index 64 b + 16 j + 4 l + i is channel 64 b + 16 l + 4 j + i;
// AVX2 index 16 b + 8 h + 4 l + i is channel 16 b + 8 l + 4 h + i.
// The part that depends only on the weights, bias, input type / zero point, output stage and the path (DwConst),
// built per call by depthwise_s8(d) or once by prepare_depthwise_s8; DwPlan adds the call's geometry.
struct DwConst {
  bool flip = false;
  std::vector<uint8_t> zrow;     // one pixel of zero points (raw bytes), read for taps outside the input
  std::vector<int32_t> off;      // bias - za_u * w_sum, permuted
  RequantTables rq;              // permuted; empty for kInt32
  // The output stage (RequantTables' formula) laid out for the row-cached kernels, 64-bit lanes:
  //   out = clamp((p + rnd) >> sh, lo, hi),  p = acc * mult (exact, 64-bit),  rnd = 2^(sh - 1),  sh = S in [1, 62].
  // Layout: per group of G channels (G = 16 for AVX-512, 8 for AVX2; accumulator order), 8 arrays of G / 2 int64
  // for the even and odd channels of the group: mult_e, mult_o, rnd_e, rnd_o, adj_e, adj_o, sh_e, sh_o (adj is
  // 0: the slot of the former double-rounding correction, kept so the group stride stays 8 arrays).
  std::vector<int64_t> rqf;
  bool rqf_clamp64 = false;      // some channel has S < 31 (M >= 1): clamp in 64 bits before narrowing
  // Every channel has S >= 33 (M < 1/4; M == 0 counts as S = 33): with t = sh - 32 >= 1,
  //   floor((p + 2^(sh - 1)) / 2^sh) = (hi32(p) + 2^(t - 1)) >> t,   hi32(p) = floor(p / 2^32)
  // (2^(sh - 1) / 2^32 = 2^(t - 1) is an integer, and a floor of a floor is the floor of the quotient), so the
  // rounding is one 32-bit add after the high halves are taken, and even and odd halves share one 32-bit shift.
  // No overflow: |p| < 2^62, so |hi32(p)| <= 2^30, and 2^(t - 1) <= 2^29. rqf's rnd_e array then holds the G
  // int32 constants 2^(t - 1) and its sh_e array the G int32 counts t, in accumulator order.
  bool rqf_hi32 = false;
  // Row-cached kernel (kw <= 4, on VNNI kw <= 8, and its row cache within 8 MB) rather than the per-pixel one. The VNNI row-cached
  // kernel orders channels differently (dwconv_s8_avx512vnni.cpp): full 64-channel blocks in the unpack order
  // above, the last partial block in natural order.
  bool cached = false;
  // VNNI column-quad kernel (3x3, dwconv_s8_avx512vnni.cpp): the row-cached kernel's channel order and rqf.
  bool cols = false;
};
struct DwPlan {
  const DepthwiseS8Args* d = nullptr;
  int64_t oh = 0, ow = 0;
  const DwConst* k = nullptr;
};
// The one-rounding output stage tables (layout and formula: DwConst::rqf) for groups of g channels of `rq` (in the
// order rq holds them), with the clamp64 / hi32 flags.
void make_fast_requant(const RequantTables& rq, int g, std::vector<int64_t>& rqf, bool& clamp64, bool& hi32);
// Fills p.rqf / p.rqf_clamp64 / p.rqf_hi32 from the (permuted) p.rq for groups of g channels.
void make_dw_fast_requant(DwConst& p, int g);

bool avx512vnni_compiled();
bool avx2_compiled();
void gemm_block_avx512vnni(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
// The AMX variant of the VNNI kernel (Path::kAmx; same constants, same output stage, same bytes).
bool amx_compiled();
void gemm_block_amx(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void gemm_block_avx2(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
// Indirect GEMM (p.ind set, uint8 activations: p.k->flip false, channels % 4 == 0).
void gemm_indirect_block_avx512vnni(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
// Output rows [r0, r1) of the flattened (batch, out_h) index.
void dw_rows_avx512vnni(const DwPlan& p, int64_t r0, int64_t r1);
void dw_rows_avx2(const DwPlan& p, int64_t r0, int64_t r1);

}  // namespace perch::kernels::s8
