// gemm_s8 on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; see CMakeLists.txt).
//
// Tile: up to 12 rows x 32 columns (two 16-column weight panels), 24 zmm accumulators. Per group of 4 k:
// two 64-byte panel loads, then per row one 4-byte broadcast of A and two VPDPBUSD (u8 x s8, four products
// summed into each int32 lane — exact: no intermediate narrower than int32). A is first packed per block of
// rows into [k_group][12 rows][4 bytes] (int8 activations flipped to uint8 there, K padded with zeros), so the
// inner loop reads A from one pointer at constant offsets; uint8 activations with K a multiple of 4 (every 1x1
// convolution of a usual net) or rows padded to one (lda >= 4 ceil(K / 4): the int8 executor's im2col) are read in
// place instead. The indirect GEMM (gemm_s8.h, IndirectRowsS8) uses the same tile with A read through a table of
// row pointers: per kernel tap, the 12 rows' pointers, then C / 4 groups of 4 bytes from each (no copy). Loop order: row block (A block fits L2) ->
// panel pair (B pair stays in L1 across the row tiles) -> row tile of 12; when all panels of the call fit 16 KiB
// (small K x N: the 1x1 convolutions of small nets) row tile -> panel pair instead, so each A tile is read once and C
// is written row by row. The 12 x 32 tile is kept for small K (a 6 x 64 one, not tried, would save A broadcasts —
// load-port work, which the profiles did not show as the limit — for more B loads); at small K the per-tile
// epilogue is what costs (perf annotate: up to 40 % of the samples in the int32 stores), so it is kept lean: the weight
// zero-point term is applied to the accumulators once, every pointer the stores need is read into a local first
// (intrinsic stores may alias anything: fields read after one were reloaded per row), int32 stores are plain for
// whole panels, and the 8-bit stage is instantiated per (uint8 / int8, whole / partial tile). 8-bit outputs use the
// one-rounding output stage (s8_internal.h, DwConst::rqf; bit-identical to quant::multiply_round_once) and
// are packed to bytes two rows at a time.
#include "s8_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)

// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized (a known false
// positive of avx512fintrin.h; -Wuninitialized too, inside the output stage's template lambda, hence before the
// header); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "s8_simd.h"

namespace perch::kernels::s8 {

bool avx512vnni_compiled() { return true; }

namespace {

constexpr int kMR = 12;

// Rows [0, rows) of `a` (rows <= kMR) into out[g * kMR * 4 + r * 4 + t] = a[r][4g + t] (^0x80 when flip),
// zero for k >= K and for rows >= `rows`.
void pack_a_tile(const uint8_t* a, int64_t lda, int rows, int64_t k, int64_t kg, bool flip, uint8_t* out) {
  const uint32_t x = flip ? 0x80808080u : 0u;
  const int64_t full = k / 4;
  for (int r = 0; r < kMR; ++r) {
    uint8_t* o = out + r * 4;
    if (r >= rows) {
      for (int64_t g = 0; g < kg; ++g) std::memset(o + g * kMR * 4, 0, 4);
      continue;
    }
    const uint8_t* src = a + r * lda;
    for (int64_t g = 0; g < full; ++g) {
      uint32_t v;
      std::memcpy(&v, src + 4 * g, 4);
      v ^= x;
      std::memcpy(o + g * kMR * 4, &v, 4);
    }
    if (full < kg) {
      uint8_t t[4] = {0, 0, 0, 0};
      for (int64_t kk = 4 * full; kk < k; ++kk) t[kk - 4 * full] = static_cast<uint8_t>(src[kk] ^ (x & 0xff));
      std::memcpy(o + full * kMR * 4, t, 4);
    }
  }
}

struct TileOut {
  const GemmPlan* p;
  int64_t m0;  // first output row of the tile
  int64_t j0;  // first output column (panel aligned)
  int rows;
  int64_t cols;  // valid columns from j0 (<= 16 * NP)
};

// Where a tile reads A: kPacked (ap = tile buffer, [k_group][kMR rows][4 bytes]), kInPlace (ap = first row of the
// tile, row stride lda, K a multiple of 4, uint8 activations) or kIndirect (ind = the table entries of the tile's
// first row, [row][tap]; each tap's `cgroups` k-groups are 4-byte steps from its pointer, uint8 activations).
// kSums (ap unused): the tile's accumulators are already summed from col_off on (the AMX path), sums[r * 32 + c] for
// its rows and up to 32 columns; only the output stage runs.
enum ASrcKind { kPacked, kInPlace, kIndirect, kSums };
struct ASrc {
  const uint8_t* ap = nullptr;
  int64_t lda = 0;
  const int32_t* sums = nullptr;
  const uint8_t* const* ind = nullptr;
  int64_t taps = 0, cgroups = 0;
};

// kMode: the output stage of RqF16 (s8_simd.h; 1 = 64-bit with clamp, 2 = hi32), for 8-bit outputs.
template <int MR, int NP, int kMode, int kA>
__attribute__((always_inline)) inline void tile(const ASrc& a, const int8_t* bp, int64_t pstride, int64_t kg,
                                                const TileOut& t) {
  // Every loop over r and q is unrolled (MR, NP are constants): indexing acc with a run-time value would
  // keep the accumulators in memory.
  // The accumulators start at col_off (bias - za colsum), so the output stage does not add it.
  const GemmPlan& p = *t.p;
  __m512i start[NP];
#pragma GCC unroll 2
  for (int q = 0; q < NP; ++q) start[q] = _mm512_loadu_si512(p.k->col_off.data() + t.j0 + 16 * q);
  __m512i acc[MR][NP];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) acc[r][q] = start[q];
  // One k-group: 4 bytes of each row at arow[r] + off against the group of weights at bg (one per panel).
  auto group = [&](const uint8_t* const* arow, int64_t off, const int8_t* bg) __attribute__((always_inline)) {
    __m512i b[NP];
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) b[q] = _mm512_load_si512(bg + q * pstride);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      int32_t v;
      std::memcpy(&v, arow[r] + off, 4);
      const __m512i av = _mm512_set1_epi32(v);
#pragma GCC unroll 2
      for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], av, b[q]);
    }
  };
  if constexpr (kA == kSums) {  // the sums started at col_off
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_loadu_si512(a.sums + r * 32 + 16 * q);
  } else if constexpr (kA == kIndirect) {
    // k = tap * C + c: tap by tap, the tap's C / 4 groups read from the rows' pointers for that tap; the packed
    // weights' groups run on consecutively (kg = taps * cgroups).
    const int8_t* bt = bp;
    for (int64_t tap = 0; tap < a.taps; ++tap) {
      const uint8_t* arow[MR];
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) arow[r] = a.ind[r * a.taps + tap];
      for (int64_t c = 0; c < a.cgroups; ++c, bt += 64) group(arow, 4 * c, bt);
    }
  } else {
    const uint8_t* arow[MR];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) arow[r] = kA == kInPlace ? a.ap + r * a.lda : a.ap + r * 4;
    const int64_t gstep = kA == kInPlace ? 4 : kMR * 4;
    for (int64_t g = 0; g < kg; ++g) group(arow, g * gstep, bp + g * 64);
  }
  // Output stage.
  // Everything the stores need is read into locals first: the intrinsic stores may alias anything, so a field
  // read after one (g.c, g.ldc, t.m0, the row terms) would be reloaded from memory for every row.
  const GemmS8Args& g = *p.g;
  // acc (from col_off = bias - za colsum) - zw * row_term: the exact int32 accumulator (gemm_s8.h), applied to the
  // accumulators once here so the stores below carry no zero-point test (zw is padded to whole panels).
  if (!p.k->zw.empty()) {
    const int32_t* const row_term = p.row_term.data() + t.m0;
    const int32_t* const zwp = p.k->zw.data() + t.j0;
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) {
      const __m512i zw = _mm512_loadu_si512(zwp + 16 * q);
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) acc[r][q] = _mm512_sub_epi32(acc[r][q], _mm512_mullo_epi32(zw, _mm512_set1_epi32(row_term[r])));
    }
  }
  if (g.out.type == OutputType::kInt32) {
    int32_t* const c32 = static_cast<int32_t*>(g.c) + t.m0 * g.ldc + t.j0;
    const int64_t ldc = g.ldc;
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) {
      const int64_t valid = std::min<int64_t>(16, t.cols - 16 * q);
      if (valid <= 0) continue;
      if (valid == 16) {  // plain stores for whole panels (masked stores cost more on Zen 4)
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) _mm512_storeu_si512(c32 + r * ldc + 16 * q, acc[r][q]);
      } else {
        const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) _mm512_mask_storeu_epi32(c32 + r * ldc + 16 * q, mask, acc[r][q]);
      }
    }
    return;
  }
  // 8-bit output: the one-rounding output stage (RqF16) per 16 columns, then VPACKSSDW of two vectors, the clamp to
  // [lo, hi] and + zp on int16 (exact: [lo, hi] lies inside int16, and VPACKSSDW's saturation only moves values
  // already outside it; where [qmin, qmax] is the type's range, a saturating + zp: clamp_add_zp16), VPACKUSWB /
  // VPACKSSWB (exact: the values are in the output type), and one VPERMD to undo the packs' per-lane interleave. NP == 2: one row's two vectors per VPACKSSDW, two rows per VPACKUSWB; NP == 1:
  // two rows' vectors per VPACKSSDW. The stage is instantiated per (uint8 / int8 output, all columns / a partial
  // tile): no per-row tests of either in the unrolled code.
  const __m512i lo64 = _mm512_set1_epi64(p.k->rq.lo), hi64 = _mm512_set1_epi64(p.k->rq.hi);
  const __m512i lo16 = _mm512_set1_epi16(static_cast<int16_t>(p.k->rq.lo));
  const __m512i hi16 = _mm512_set1_epi16(static_cast<int16_t>(p.k->rq.hi));
  const __m512i zp16 = _mm512_set1_epi16(static_cast<int16_t>(p.k->rq.zp));
  // After VPACKSSDW(x, y) and VPACKUSWB(s, s'), lane l holds dwords [x 4l.., y 4l.., x' 4l.., y' 4l..] (4 bytes
  // each): gather dword 4l + d of every lane l for d = 0, 1, 2, 3.
  const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const bool type_range = p.k->rq.type_range;
  auto clamp16 = [&](__m512i s) __attribute__((always_inline)) {
    return clamp_add_zp16(s, lo16, hi16, zp16, type_range);
  };
  const int64_t j = t.j0;
  uint8_t* const c0 = static_cast<uint8_t*>(g.c) + t.m0 * g.ldc + j;
  const int64_t ldc = g.ldc;
  const int64_t cols = t.cols;
  const int64_t* const rqf = p.k->rqf.data() + (j / 16) * 64;
  auto stage = [&]<bool kU8, bool kFull>() __attribute__((always_inline)) {
    auto bytes = [&](__m512i s0, __m512i s1) __attribute__((always_inline)) {
      return _mm512_permutexvar_epi32(perm, kU8 ? _mm512_packus_epi16(s0, s1) : _mm512_packs_epi16(s0, s1));
    };
    if constexpr (NP == 2) {
      const RqF16 rq0(rqf), rq1(rqf + 64);
      const __mmask32 mask = kFull ? ~__mmask32{0} : static_cast<__mmask32>((1u << cols) - 1);
      // Plain stores when all 32 columns are written (masked byte stores are several times slower on Zen 4/5).
      auto store32 = [&](uint8_t* dst, __m256i v) __attribute__((always_inline)) {
        if constexpr (kFull)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), v);
        else
          _mm256_mask_storeu_epi8(dst, mask, v);
      };
      auto row16 = [&](int r) __attribute__((always_inline)) {
        const __m512i v0 = rq0.apply<kMode>(acc[r][0], lo64, hi64);
        const __m512i v1 = rq1.apply<kMode>(acc[r][1], lo64, hi64);
        return clamp16(_mm512_packs_epi32(v0, v1));
      };
#pragma GCC unroll 6
      for (int r = 0; r + 1 < MR; r += 2) {
        const __m512i o = bytes(row16(r), row16(r + 1));  // row r in the low 256 bits, row r + 1 in the high
        store32(c0 + r * ldc, _mm512_castsi512_si256(o));
        store32(c0 + (r + 1) * ldc, _mm512_extracti64x4_epi64(o, 1));
      }
      if constexpr (MR % 2 == 1) {
        const __m512i o = bytes(row16(MR - 1), row16(MR - 1));
        store32(c0 + (MR - 1) * ldc, _mm512_castsi512_si256(o));
      }
    } else {
      const RqF16 rq(rqf);
      const __mmask16 mask = kFull ? __mmask16(0xffff) : static_cast<__mmask16>((1u << cols) - 1);
      auto store16 = [&](uint8_t* dst, __m128i v) __attribute__((always_inline)) {
        if constexpr (kFull)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), v);
        else
          _mm_mask_storeu_epi8(dst, mask, v);
      };
      auto one = [&](int r) __attribute__((always_inline)) { return rq.apply<kMode>(acc[r][0], lo64, hi64); };
      // VPACKSSDW(row r, row r + 1), two such per VPACKUSWB: 4 rows, 16 bytes each, in dword order 4 rows x 4 lanes.
#pragma GCC unroll 3
      for (int r = 0; r + 3 < MR; r += 4) {
        const __m512i o = bytes(clamp16(_mm512_packs_epi32(one(r), one(r + 1))), clamp16(_mm512_packs_epi32(one(r + 2), one(r + 3))));
        store16(c0 + r * ldc, _mm512_castsi512_si128(o));
        store16(c0 + (r + 1) * ldc, _mm512_extracti32x4_epi32(o, 1));
        store16(c0 + (r + 2) * ldc, _mm512_extracti32x4_epi32(o, 2));
        store16(c0 + (r + 3) * ldc, _mm512_extracti32x4_epi32(o, 3));
      }
      constexpr int kDone = MR / 4 * 4;
      if constexpr (MR - kDone > 0) {
        const __m512i a0 = one(kDone);
        const __m512i a1 = MR - kDone > 1 ? one(kDone + (MR - kDone > 1 ? 1 : 0)) : a0;
        const __m512i a2 = MR - kDone > 2 ? one(kDone + (MR - kDone > 2 ? 2 : 0)) : a0;
        const __m512i o = bytes(clamp16(_mm512_packs_epi32(a0, a1)), clamp16(_mm512_packs_epi32(a2, a2)));
        store16(c0 + kDone * ldc, _mm512_castsi512_si128(o));
        if (MR - kDone > 1) store16(c0 + (kDone + 1) * ldc, _mm512_extracti32x4_epi32(o, 1));
        if (MR - kDone > 2) store16(c0 + (kDone + 2) * ldc, _mm512_extracti32x4_epi32(o, 2));
      }
    }
  };
  const bool full = cols >= 16 * NP;
  if (g.out.type == OutputType::kUInt8) {
    if (full)
      stage.template operator()<true, true>();
    else
      stage.template operator()<true, false>();
  } else {
    if (full)
      stage.template operator()<false, true>();
    else
      stage.template operator()<false, false>();
  }
}

template <int NP, int kMode, int kA>
void tile_rows(int rows, const ASrc& ap, const int8_t* bp, int64_t pstride, int64_t kg, const TileOut& t) {
  switch (rows) {
    case 1: return tile<1, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 2: return tile<2, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 3: return tile<3, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 4: return tile<4, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 5: return tile<5, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 6: return tile<6, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 7: return tile<7, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 8: return tile<8, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 9: return tile<9, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 10: return tile<10, NP, kMode, kA>(ap, bp, pstride, kg, t);
    case 11: return tile<11, NP, kMode, kA>(ap, bp, pstride, kg, t);
    default: return tile<12, NP, kMode, kA>(ap, bp, pstride, kg, t);
  }
}

// Whether A can be read where it lies: uint8 activations whose rows hold every k-group a tile reads (K a multiple of
// 4, or lda >= 4 kg: the bytes past K meet zero weights, so their values do not matter). Otherwise A is packed per
// tile (flipping int8 to uint8, zero-padding K). The VNNI and AMX kernels share it.
bool a_in_place(const GemmPlan& p) {
  return !p.k->flip && (p.w->k % 4 == 0 || p.g->lda >= p.w->k_groups * 4);
}

// in_place: a_in_place(p); else every tile packed.
template <int kMode>
void block(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1, bool in_place) {
  const GemmS8Args& g = *p.g;
  const PackedWeightsS8& w = *p.w;
  const int64_t kg = w.k_groups;
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  // Row block: as many 12-row tiles as fit ~256 KiB of A (the B panel pair is reused across them).
  const int64_t tile_bytes = kg * kMR * 4;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / tile_bytes);
  // K not a multiple of 4: the last k-group reads up to 3 bytes past K, inside the row while lda >= 4 kg, but past
  // the end of A on its last row: the tile holding row M - 1 is packed.
  const bool tail_packed = w.k % 4 != 0;
  // The panels [n0, n1) of B fit in half of L1 (16 KiB of 32 on Zen 4): loop over row tiles outside (see below).
  const bool b_in_l1 = (n1 - n0 + 15) / 16 * w.panel_stride <= (int64_t{16} << 10);
  thread_local std::vector<uint8_t> abuf;
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * kMR) {
    const int64_t me = std::min(m1, mb + tiles_per_block * kMR);
    const int64_t ntiles = (me - mb + kMR - 1) / kMR;
    auto packed_tile = [&](int64_t t) { return !in_place || (tail_packed && mb + t * kMR + kMR >= g.m); };
    abuf.resize(static_cast<size_t>(ntiles * tile_bytes));
    for (int64_t t = 0; t < ntiles; ++t) {
      if (!packed_tile(t)) continue;
      const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
      pack_a_tile(a + (mb + t * kMR) * g.lda, g.lda, rows, w.k, kg, p.k->flip, abuf.data() + t * tile_bytes);
    }
    auto run = [&](int64_t t, int64_t j) {
      const int64_t cols = std::min<int64_t>(32, n1 - j);
      const int8_t* bp = w.data.get() + (j / 16) * w.panel_stride;
      const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
      const TileOut to{&p, mb + t * kMR, j, rows, cols};
      ASrc src;
      if (packed_tile(t)) {
        src.ap = abuf.data() + t * tile_bytes;
        if (cols > 16)
          tile_rows<2, kMode, kPacked>(rows, src, bp, w.panel_stride, kg, to);
        else
          tile_rows<1, kMode, kPacked>(rows, src, bp, w.panel_stride, kg, to);
      } else {
        src.ap = a + (mb + t * kMR) * g.lda;
        src.lda = g.lda;
        if (cols > 16)
          tile_rows<2, kMode, kInPlace>(rows, src, bp, w.panel_stride, kg, to);
        else
          tile_rows<1, kMode, kInPlace>(rows, src, bp, w.panel_stride, kg, to);
      }
    };
    if (b_in_l1) {
      // Small K x N (every 1x1 convolution of a small net): row tile -> panel pair. The whole B stays in L1 anyway;
      // this order reads each A tile once and writes C row by row (whole rows, not 32-column stripes of every row).
      for (int64_t t = 0; t < ntiles; ++t)
        for (int64_t j = n0; j < n1; j += 32) run(t, j);
    } else {
      for (int64_t j = n0; j < n1; j += 32)
        for (int64_t t = 0; t < ntiles; ++t) run(t, j);
    }
  }
}

// Indirect GEMM: rows [m0, m1) in blocks of tiles (the panel pair stays in L1 across a block's tiles, as in block),
// A read through the table; nothing is packed or copied.
template <int kMode>
void indirect_block(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const PackedWeightsS8& w = *p.w;
  const IndirectRowsS8& ind = *p.ind;
  const int64_t kg = w.k_groups;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / (kg * kMR * 4));
  ASrc src;
  src.taps = ind.taps;
  src.cgroups = ind.channels / 4;
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * kMR) {
    const int64_t me = std::min(m1, mb + tiles_per_block * kMR);
    for (int64_t j = n0; j < n1; j += 32) {
      const int64_t cols = std::min<int64_t>(32, n1 - j);
      const int8_t* bp = w.data.get() + (j / 16) * w.panel_stride;
      for (int64_t r0 = mb; r0 < me; r0 += kMR) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, me - r0));
        const TileOut to{&p, r0, j, rows, cols};
        src.ind = ind.rows + r0 * ind.taps;
        if (cols > 16)
          tile_rows<2, kMode, kIndirect>(rows, src, bp, w.panel_stride, kg, to);
        else
          tile_rows<1, kMode, kIndirect>(rows, src, bp, w.panel_stride, kg, to);
      }
    }
  }
}

// ---- AMX (Path::kAmx) ------------------------------------------------------------------------------------------
// The packed weights are AMX's B layout already: a tile row is one k-group of a panel (16 columns x 4 k-bytes = 64
// bytes), so 16 consecutive k-groups of a panel form one B tile (row stride 64). K runs in whole 64-byte chunks (A
// tile 16 rows x 64 bytes against B tiles of 16 k-groups) and, when K_groups % 16 = t > 0, one tail chunk on tiles
// configured for it (A 16 rows x 4t bytes, B t k-groups): nothing past the panel's k-groups is read and no work is
// spent on padding. A is read in place (row stride lda) when a_in_place allows, by whole 16-row tiles; otherwise
// (int8 activations, read as a ^ 0x80 as the VNNI kernel does; a last tile of fewer rows) packed per 16-row tile into
// [row][Kp] bytes (Kp = K rounded up to 64, zeros past K and past the tile's rows). TDPBUSD adds each row's u8 x s8 products of every 4-byte
// group into int32 — exact, as VPDPBUSD. The accumulator tiles start at col_off (= bias - za colsum; a row-stride-0
// tile load repeats it in every row), so they end as the exact int32 accumulator of gemm_s8.h minus the weight zero
// point term. int32 output with symmetric weights and a whole 16 x 16|32 block: the tiles are stored straight into C.
// Otherwise the 16 x 32 sums go to a buffer and the VNNI tile's output stage (kSums) finishes them as it does its own
// accumulators, so both paths give the same bytes. (Two row tiles per step against the two panels — four accumulator
// tiles, as oneDNN's brgemm blocks — took 0.94-1.09x this one's time across the shapes on a Xeon with AMX, and was left out.)
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0, 1: sums (16 x 16 int32); 2: A (16 rows x 64 bytes); 3, 4: B of the two panels (16 k-groups x 64 bytes);
// 5, 6, 7: the tail chunk's A (16 rows x 4 tail bytes) and B tiles (tail k-groups x 64 bytes), when tail > 0.
__attribute__((target("amx-tile,amx-int8"))) void amx_configure(int tail) {
  AmxConfig c;
  for (int t = 0; t < 5; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  if (tail > 0) {
    c.colsb[5] = static_cast<uint16_t>(4 * tail);
    c.rows[5] = 16;
    for (int t = 6; t < 8; ++t) {
      c.colsb[t] = 64;
      c.rows[t] = static_cast<uint8_t>(tail);
    }
  }
  // GCC's _tile_loadconfig names only the first 8 bytes of the 64 as its memory operand: without this barrier the
  // stores to the rest may be dropped as dead, and the tiles stay unconfigured (TILEZERO then faults).
  __asm__ volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

__attribute__((target("amx-tile"))) void amx_release() { _tile_release(); }

// out[r * ldo + c] = off[c] + the dot products of row r of a16 (row stride lda) with column c of panel b0 (c < 16)
// and, when b1 is set, of b1 (c - 16), for the 16 rows: `chunks` whole 64-byte chunks, then the tail chunk when the
// configuration has one.
__attribute__((target("amx-tile,amx-int8"))) void amx_dot(const uint8_t* a16, int64_t lda, int64_t chunks, bool tail,
                                                          const int8_t* b0, const int8_t* b1, const int32_t* off,
                                                          int32_t* out, int64_t ldo) {
  const int64_t ob = ldo * 4;
  _tile_loadd(0, off, 0);
  if (b1) {
    _tile_loadd(1, off + 16, 0);
    for (int64_t c = 0; c < chunks; ++c) {
      _tile_loadd(2, a16 + c * 64, lda);
      _tile_loadd(3, b0 + c * 1024, 64);
      _tile_loadd(4, b1 + c * 1024, 64);
      _tile_dpbusd(0, 2, 3);
      _tile_dpbusd(1, 2, 4);
    }
    if (tail) {
      _tile_loadd(5, a16 + chunks * 64, lda);
      _tile_loadd(6, b0 + chunks * 1024, 64);
      _tile_loadd(7, b1 + chunks * 1024, 64);
      _tile_dpbusd(0, 5, 6);
      _tile_dpbusd(1, 5, 7);
    }
    _tile_stored(1, out + 16, ob);
  } else {
    for (int64_t c = 0; c < chunks; ++c) {
      _tile_loadd(2, a16 + c * 64, lda);
      _tile_loadd(3, b0 + c * 1024, 64);
      _tile_dpbusd(0, 2, 3);
    }
    if (tail) {
      _tile_loadd(5, a16 + chunks * 64, lda);
      _tile_loadd(6, b0 + chunks * 1024, 64);
      _tile_dpbusd(0, 5, 6);
    }
  }
  _tile_stored(0, out, ob);
}

template <int kMode>
void amx_block(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const GemmS8Args& g = *p.g;
  const PackedWeightsS8& w = *p.w;
  const int64_t chunks = w.k_groups / 16;
  const int tail = static_cast<int>(w.k_groups % 16);
  const int64_t kp = (w.k + 63) / 64 * 64;
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  const uint8_t x = p.k->flip ? 0x80 : 0;  // int8 activations are read as a ^ 0x80 (col_off accounts for it)
  const int64_t tile_bytes = 16 * kp;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / tile_bytes);
  thread_local std::vector<uint8_t> abuf;
  alignas(64) int32_t sums[16 * 32];
  const bool in_place = a_in_place(p);
  // Straight into C: int32 output and no weight zero point (whose term the output stage subtracts).
  const bool direct = g.out.type == OutputType::kInt32 && p.k->zw.empty();
  int32_t* const c32 = static_cast<int32_t*>(g.c);
  const __m512i xv = _mm512_set1_epi8(static_cast<char>(x));
  amx_configure(tail);
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * 16) {
    const int64_t me = std::min(m1, mb + tiles_per_block * 16);
    const int64_t ntiles = (me - mb + 15) / 16;
    auto packed_tile = [&](int64_t t) { return !in_place || me - mb - t * 16 < 16; };
    abuf.resize(static_cast<size_t>(ntiles * tile_bytes));
    for (int64_t t = 0; t < ntiles; ++t) {
      if (!packed_tile(t)) continue;
      uint8_t* tb = abuf.data() + t * tile_bytes;
      const int64_t rows = std::min<int64_t>(16, me - mb - t * 16);
      for (int64_t r = 0; r < 16; ++r) {
        uint8_t* dst = tb + r * kp;
        if (r >= rows) {
          std::memset(dst, 0, static_cast<size_t>(kp));
          continue;
        }
        const uint8_t* src = a + (mb + t * 16 + r) * g.lda;
        for (int64_t k = 0; k < kp; k += 64) {  // 64 bytes at a time, zeros past K (not ^0x80)
          const int64_t nb = std::min<int64_t>(64, w.k - k);  // k < K: kp is K rounded up to 64
          const __mmask64 mask = nb == 64 ? ~__mmask64{0} : (__mmask64{1} << nb) - 1;
          const __m512i v = _mm512_maskz_loadu_epi8(mask, src + k);
          _mm512_storeu_si512(dst + k, _mm512_maskz_mov_epi8(mask, _mm512_xor_si512(v, xv)));
        }
      }
    }
    for (int64_t j = n0; j < n1; j += 32) {
      const int64_t cols = std::min<int64_t>(32, n1 - j);
      const int8_t* b0 = w.data.get() + (j / 16) * w.panel_stride;
      const int8_t* b1 = cols > 16 ? b0 + w.panel_stride : nullptr;
      const int32_t* off = p.k->col_off.data() + j;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int64_t m = mb + t * 16;
        const bool packed = packed_tile(t);
        const uint8_t* a16 = packed ? abuf.data() + t * tile_bytes : a + m * g.lda;
        const int64_t lda = packed ? kp : g.lda;
        const int rows = static_cast<int>(std::min<int64_t>(16, me - m));
        if (direct && rows == 16 && (cols == 32 || cols == 16)) {
          amx_dot(a16, lda, chunks, tail > 0, b0, b1, off, c32 + m * g.ldc + j, g.ldc);
          continue;
        }
        amx_dot(a16, lda, chunks, tail > 0, b0, b1, off, sums, 32);
        // The output stage in the VNNI tile's row blocks (at most kMR rows each).
        for (int r0 = 0; r0 < rows; r0 += kMR) {
          const int rr = std::min(kMR, rows - r0);
          ASrc src;
          src.sums = sums + r0 * 32;
          const TileOut to{&p, m + r0, j, rr, cols};
          if (cols > 16)
            tile_rows<2, kMode, kSums>(rr, src, b0, w.panel_stride, 0, to);
          else
            tile_rows<1, kMode, kSums>(rr, src, b0, w.panel_stride, 0, to);
        }
      }
    }
  }
  amx_release();
}

}  // namespace

void gemm_indirect_block_avx512vnni(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.g->out.type != OutputType::kInt32 && p.k->rqf_hi32) return indirect_block<2>(p, m0, m1, n0, n1);
  return indirect_block<1>(p, m0, m1, n0, n1);
}

bool amx_compiled() { return true; }

void gemm_block_amx(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (p.g->out.type != OutputType::kInt32 && p.k->rqf_hi32) return amx_block<2>(p, m0, m1, n0, n1);
  return amx_block<1>(p, m0, m1, n0, n1);
}

void gemm_block_avx512vnni(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const bool in_place = a_in_place(p);
  // Mode 2 (hi32) when every column allows it, else the 64-bit form with the clamp (exact for every shift the
  // SIMD paths take); int32 output ignores the mode.
  if (p.g->out.type != OutputType::kInt32 && p.k->rqf_hi32) return block<2>(p, m0, m1, n0, n1, in_place);
  return block<1>(p, m0, m1, n0, n1, in_place);
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX-512 VNNI: stubs, never called (compiled() is false)

namespace perch::kernels::s8 {
bool avx512vnni_compiled() { return false; }
bool amx_compiled() { return false; }
void gemm_block_amx(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
void gemm_block_avx512vnni(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
void gemm_indirect_block_avx512vnni(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
