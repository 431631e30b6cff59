// gemm_s8 on AVX2 (compiled with -mavx2 -mfma; see CMakeLists.txt). Exact without VPMADDUBSW: its u8 x s8
// pair sums saturate in int16 (255 * 127 * 2 > 32767), so both operands are widened to int16 and multiplied
// with VPMADDWD (two int16 products summed into int32 — exact).
//
// Tile: up to 4 rows x 8 columns (half of a 16-column weight panel, same packed layout as the VNNI path).
// Per 8-column block, its weights are sign-extended once into a buffer of int16 (per group of 4 k: columns 0-3
// and 4-7, 4 k each, one ymm each) that every row tile of the block reads; A is packed per tile as int16
// [k_group][4 rows][4], one 8-byte broadcast per row. VPMADDWD then leaves two partial sums per column (k pairs
// 0-1 and 2-3) that VPHADDD adds at the end, leaving the columns in kAvx2HaddOrder (0 1 4 5 | 2 3 6 7): the
// block's col_off and weight zero points are permuted to that order once, the requantization tables are built in
// it (GemmConst::rqf8), and the order is undone at the store (a lane permute per row for int32; for 8-bit outputs
// inside the four-row narrowing, see tile()). 8 accumulators, 2 weight registers, broadcasts.
//
// Measured (docs/BENCHMARKS.md, "On an AVX2-only CPU"): the previous form — weights widened in every row tile, the
// block's constants and the output stage set up per tile and narrowed row by row — took 1.00-1.08x this one's time
// at K >= 256 and 1.09-1.56x at K <= 128. VPMADDUBSW on weights split so that no pair can saturate was slower, and
// 6-row tiles took 0.99-1.23x the time of 4-row ones (same document).
#include "s8_internal.h"

#if defined(__AVX2__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "s8_simd.h"

// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized (a known
// false positive of avx512fintrin.h); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace perch::kernels::s8 {

bool avx2_compiled() { return true; }

namespace {

constexpr int kMR = 4;

// A tile as int16 [k_group][kMR rows][4]: 16 k values of a row per step are one load, VPMOVZXBW and four 8-byte
// stores (one per k-group); the last partial step, the zero padding past k and rows past `rows` as scalars.
void pack_a_tile16(const uint8_t* a, int64_t lda, int rows, int64_t k, int64_t kg, bool flip, int16_t* out) {
  const uint8_t x = flip ? 0x80 : 0;
  const __m128i xv = _mm_set1_epi8(static_cast<char>(x));
  for (int r = 0; r < kMR; ++r) {
    int16_t* o = out + r * 4;
    const uint8_t* src = a + r * lda;
    int64_t g = 0;
    if (r < rows)
      for (; 4 * g + 16 <= k; g += 4) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 4 * g));
        const __m256i w = _mm256_cvtepu8_epi16(_mm_xor_si128(raw, xv));
        const __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(o + (g + 0) * kMR * 4), lo);
        _mm_storeh_pd(reinterpret_cast<double*>(o + (g + 1) * kMR * 4), _mm_castsi128_pd(lo));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(o + (g + 2) * kMR * 4), hi);
        _mm_storeh_pd(reinterpret_cast<double*>(o + (g + 3) * kMR * 4), _mm_castsi128_pd(hi));
      }
    for (; g < kg; ++g)
      for (int t = 0; t < 4; ++t) {
        const int64_t kk = 4 * g + t;
        o[g * kMR * 4 + t] = (r < rows && kk < k) ? static_cast<int16_t>(static_cast<uint8_t>(src[kk] ^ x)) : 0;
      }
  }
}

// The constants of one 8-column block [j0, j0 + 8), loaded once for all the row tiles that use it: col_off and the
// weight zero points in the accumulators' order (kAvx2HaddOrder), the output stage (rqf8 is stored in that order).
struct BlockOut {
  const GemmPlan* p;
  int64_t j0, cols;  // first column; valid columns from j0 (<= 8)
  __m256i off, zw;
  bool has_zw;
  __m256i lo64, hi64, lo16, hi16, zp16;  // the output stage's clamp and zero point (8-bit outputs)
};

// One tile: rows [m0, m0 + MR) x the block's columns. acc[r][0] / [1] hold columns 0-3 / 4-7 as pairs (k 0-1, k 2-3).
// 8-bit output: the four rows are narrowed together — VPACKSSDW pairs rows (0, 1) and (2, 3) in int16, one clamp
// to [lo, hi] and + zp for both, VPACKUSWB / VPACKSSWB makes 32 bytes, holding per 128-bit lane the dwords
// [row 0, 1, 2, 3] of columns (0 1 4 5) | (2 3 6 7); VPERMD puts each row's two dwords together and VPSHUFB restores
// the column order inside each 8 bytes: one 8-byte store per row.
template <int MR, int kMode>
void tile(const int16_t* ap, const int16_t* bp, int64_t kg, int64_t m0, const BlockOut& bo, const RqF8* rq) {
  // Eight named accumulators (rows past MR stay zero and unused): with an array indexed in an unrolled loop GCC 12
  // kept one accumulator on the stack, a load and a store per k-group on the loop's critical path.
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  for (int64_t g = 0; g < kg; ++g) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(bp + g * 32));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(bp + g * 32 + 16));
    const int16_t* ag = ap + g * kMR * 4;
    auto row = [&](int r, __m256i& lo, __m256i& hi) {
      int64_t v;
      std::memcpy(&v, ag + r * 4, 8);
      const __m256i av = _mm256_set1_epi64x(v);
      lo = _mm256_add_epi32(lo, _mm256_madd_epi16(av, b0));
      hi = _mm256_add_epi32(hi, _mm256_madd_epi16(av, b1));
    };
    row(0, c00, c01);
    if constexpr (MR > 1) row(1, c10, c11);
    if constexpr (MR > 2) row(2, c20, c21);
    if constexpr (MR > 3) row(3, c30, c31);
  }
  const __m256i acc[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
  const GemmPlan& p = *bo.p;
  const GemmS8Args& g = *p.g;
  // acc[r][0] = [c0 k01, c0 k23, c1.., c1.. | c2.., c2.., c3.., c3..]; hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7].
  __m256i v[4];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    if (r >= MR) {
      v[r] = _mm256_setzero_si256();
      continue;
    }
    v[r] = _mm256_add_epi32(_mm256_hadd_epi32(acc[r][0], acc[r][1]), bo.off);
    if (bo.has_zw) v[r] = _mm256_sub_epi32(v[r], _mm256_mullo_epi32(bo.zw, _mm256_set1_epi32(p.row_term[m0 + r])));
  }
  if (g.out.type == OutputType::kInt32) {
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const __m256i nat = _mm256_permute4x64_epi64(v[r], 0xD8);
      int32_t* c = static_cast<int32_t*>(g.c) + (m0 + r) * g.ldc + bo.j0;
      if (bo.cols == 8) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), nat);
      } else {
        alignas(32) int32_t buf[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(buf), nat);
        std::memcpy(c, buf, static_cast<size_t>(bo.cols) * 4);
      }
    }
    return;
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) v[r] = rq->template apply<kMode>(v[r], bo.lo64, bo.hi64);
  // int16 saturation then [lo, hi] (inside int16) is the clamp to [lo, hi]; + zp lands in [qmin, qmax], so the
  // 8-bit pack is exact.
  auto clamp16 = [&](__m256i x) {
    return _mm256_add_epi16(_mm256_min_epi16(_mm256_max_epi16(x, bo.lo16), bo.hi16), bo.zp16);
  };
  const __m256i s01 = clamp16(_mm256_packs_epi32(v[0], v[1])), s23 = clamp16(_mm256_packs_epi32(v[2], v[3]));
  __m256i b = g.out.type == OutputType::kUInt8 ? _mm256_packus_epi16(s01, s23) : _mm256_packs_epi16(s01, s23);
  b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  b = _mm256_shuffle_epi8(b, _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,  //
                                              0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15));
  alignas(32) uint8_t rows[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(rows), b);
  uint8_t* c = static_cast<uint8_t*>(g.c) + m0 * g.ldc + bo.j0;
  if (bo.cols == 8) {
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) std::memcpy(c + r * g.ldc, rows + 8 * r, 8);
  } else {
    for (int r = 0; r < MR; ++r) std::memcpy(c + r * g.ldc, rows + 8 * r, static_cast<size_t>(bo.cols));
  }
}

template <int kMode>
void tile_rows(int rows, const int16_t* ap, const int16_t* bp, int64_t kg, int64_t m0, const BlockOut& bo,
               const RqF8* rq) {
  switch (rows) {
    case 1: return tile<1, kMode>(ap, bp, kg, m0, bo, rq);
    case 2: return tile<2, kMode>(ap, bp, kg, m0, bo, rq);
    case 3: return tile<3, kMode>(ap, bp, kg, m0, bo, rq);
    default: return tile<4, kMode>(ap, bp, kg, m0, bo, rq);
  }
}

template <int kMode>
void block(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const GemmS8Args& g = *p.g;
  const PackedWeightsS8& w = *p.w;
  const int64_t kg = w.k_groups;
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  const int64_t tile_elems = kg * kMR * 4;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / (tile_elems * 2));
  const __m256i hadd_order = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kAvx2HaddOrder));
  const bool is32 = g.out.type == OutputType::kInt32;
  thread_local std::vector<int16_t> abuf, bbuf_mem;
  // The int16 copy of one 8-column block of B, 32-byte aligned (the tile's aligned loads): kg * 32 int16.
  bbuf_mem.resize(static_cast<size_t>(kg * 32 + 16));
  int16_t* const bbuf = reinterpret_cast<int16_t*>((reinterpret_cast<uintptr_t>(bbuf_mem.data()) + 31) & ~uintptr_t{31});
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * kMR) {
    const int64_t me = std::min(m1, mb + tiles_per_block * kMR);
    const int64_t ntiles = (me - mb + kMR - 1) / kMR;
    abuf.resize(static_cast<size_t>(ntiles * tile_elems));
    for (int64_t t = 0; t < ntiles; ++t) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
      pack_a_tile16(a + (mb + t * kMR) * g.lda, g.lda, rows, w.k, kg, p.k->flip, abuf.data() + t * tile_elems);
    }
    for (int64_t j = n0; j < n1; j += 8) {
      BlockOut bo{&p, j, std::min<int64_t>(8, n1 - j), {}, {}, !p.k->zw.empty(), {}, {}, {}, {}, {}};
      bo.off = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->col_off.data() + j)),
                                           hadd_order);
      bo.zw = bo.has_zw ? _mm256_permutevar8x32_epi32(
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->zw.data() + j)), hadd_order)
                        : _mm256_setzero_si256();
      std::optional<RqF8> rq;
      if (!is32) {
        rq.emplace(p.k->rqf8.data() + (j / 8) * 32);
        const RequantTables& t = p.k->rq;
        bo.lo64 = _mm256_set1_epi64x(t.lo), bo.hi64 = _mm256_set1_epi64x(t.hi);
        bo.lo16 = _mm256_set1_epi16(static_cast<int16_t>(t.lo)), bo.hi16 = _mm256_set1_epi16(static_cast<int16_t>(t.hi));
        bo.zp16 = _mm256_set1_epi16(static_cast<int16_t>(t.zp));
      }
      // The block's 8 columns of B, sign-extended to int16 once for all the row tiles: per k-group, columns 0-3
      // then 4-7, 16 int16 each (column c's 4 k at [4c, 4c + 4)).
      const int8_t* bp = w.data.get() + (j / 16) * w.panel_stride + (j % 16) * 4;
      for (int64_t kk = 0; kk < kg; ++kk)
        for (int h = 0; h < 2; ++h)
          _mm256_store_si256(reinterpret_cast<__m256i*>(bbuf + kk * 32 + h * 16),
                             _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(bp + kk * 64 + h * 16))));
      for (int64_t t = 0; t < ntiles; ++t) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
        tile_rows<kMode>(rows, abuf.data() + t * tile_elems, bbuf, kg, mb + t * kMR, bo, rq ? &*rq : nullptr);
      }
    }
  }
}

}  // namespace

void gemm_block_avx2(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const s8::GemmConst& k = *p.k;
  if (p.g->out.type == OutputType::kInt32 || k.rqf8_hi32) return block<2>(p, m0, m1, n0, n1);
  if (k.rqf8_clamp64) return block<1>(p, m0, m1, n0, n1);
  return block<0>(p, m0, m1, n0, n1);
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX2: stubs, never called (compiled() is false)

namespace perch::kernels::s8 {
bool avx2_compiled() { return false; }
void gemm_block_avx2(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
