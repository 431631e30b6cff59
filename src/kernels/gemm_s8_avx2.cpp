// gemm_s8 on AVX2 (compiled with -mavx2 -mfma; see CMakeLists.txt). Exact without VPMADDUBSW: its u8 x s8
// pair sums saturate in int16 (255 * 127 * 2 > 32767), so both operands are widened to int16 and multiplied
// with VPMADDWD (two int16 products summed into int32 — exact).
//
// Tile: up to 4 rows x 8 columns (half of a 16-column weight panel, same packed layout as the VNNI path).
// Per group of 4 k, the 32 weight bytes of 8 columns are sign-extended into two ymm of int16 (columns 0-3
// and 4-7, 4 k each); A is packed per tile as int16 [k_group][4 rows][4], one 8-byte broadcast per row.
// VPMADDWD then leaves two partial sums per column (k pairs 0-1 and 2-3) that are added once, at the end
// (VPHADDD + a lane permute). 8 accumulators + 2 weight registers + broadcasts.
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

constexpr int kMR = 4;  // 6 rows (12 accumulators) made GCC spill: 15 of 16 ymm leave it no room

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

struct TileOut {
  const GemmPlan* p;
  int64_t m0, j0;
  int rows;
  int64_t cols;  // valid columns from j0, <= 8
};

// kMode: RqF8's output stage (s8_simd.h; 0 plain, 1 64-bit clamp, 2 hi32), for 8-bit outputs.
template <int MR, int kMode>
void tile(const int16_t* ap, const int8_t* bp, int64_t kg, const TileOut& t) {
  // Loops over r are unrolled (MR is a constant): a run-time index would keep acc in memory.
  __m256i acc[MR][2];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t g = 0; g < kg; ++g) {
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(bp + g * 64)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(bp + g * 64 + 16)));
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      int64_t v;
      std::memcpy(&v, ap + (g * kMR + r) * 4, 8);
      const __m256i av = _mm256_set1_epi64x(v);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(av, b0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(av, b1));
    }
  }
  const GemmPlan& p = *t.p;
  const GemmS8Args& g = *p.g;
  const bool has_zw = !p.k->zw.empty();
  const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->col_off.data() + t.j0));
  const __m256i zw =
      has_zw ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->zw.data() + t.j0)) : _mm256_setzero_si256();
  const bool is32 = g.out.type == OutputType::kInt32;
  alignas(32) int32_t buf[8];
  // The output stage's constants, loaded once per tile (not per row: the byte stores below may alias the tables,
  // so the compiler would reload them). Unused for int32 output.
  std::optional<RqF8> rq;
  if (!is32) rq.emplace(p.k->rqf8.data() + (t.j0 / 8) * 32);
  const __m256i lo64 = _mm256_set1_epi64x(p.k->rq.lo), hi64 = _mm256_set1_epi64x(p.k->rq.hi);
  const __m256i lo16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.lo));
  const __m256i hi16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.hi));
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.zp));
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) {
    // acc[r][0] = [c0 k01, c0 k23, c1.., c1.. | c2.., c2.., c3.., c3..]; hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7].
    __m256i v = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    v = _mm256_add_epi32(v, off);
    if (has_zw) v = _mm256_sub_epi32(v, _mm256_mullo_epi32(zw, _mm256_set1_epi32(p.row_term[t.m0 + r])));
    const int64_t row = t.m0 + r;
    if (is32) {
      int32_t* c = static_cast<int32_t*>(g.c) + row * g.ldc + t.j0;
      if (t.cols == 8) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), v);
      } else {
        _mm256_store_si256(reinterpret_cast<__m256i*>(buf), v);
        std::memcpy(c, buf, static_cast<size_t>(t.cols) * 4);
      }
    } else {
      v = rq->template apply<kMode>(v, lo64, hi64);
      // packs_epi32 -> 16 x int16 (lanes interleave [v0-3, v0-3 | v4-7, v4-7]); int16 saturation then [lo, hi]
      // (inside int16) is the clamp to [lo, hi], + zp lands in [qmin, qmax], so the 8-bit pack is exact and keeps
      // the order within each 128-bit lane.
      __m256i s16 = _mm256_packs_epi32(v, v);
      s16 = _mm256_add_epi16(_mm256_min_epi16(_mm256_max_epi16(s16, lo16), hi16), zp16);
      const __m256i s8 = g.out.type == OutputType::kUInt8 ? _mm256_packus_epi16(s16, s16) : _mm256_packs_epi16(s16, s16);
      // bytes 0-3 of lane 0 are v0-3, bytes 0-3 of lane 1 are v4-7.
      const uint32_t lo4 = static_cast<uint32_t>(_mm256_extract_epi32(s8, 0));
      const uint32_t hi4 = static_cast<uint32_t>(_mm256_extract_epi32(s8, 4));
      const uint64_t bytes = uint64_t{lo4} | (uint64_t{hi4} << 32);
      uint8_t* c = static_cast<uint8_t*>(g.c) + row * g.ldc + t.j0;
      std::memcpy(c, &bytes, static_cast<size_t>(t.cols));
    }
  }
}

template <int kMode>
void tile_rows_mode(int rows, const int16_t* ap, const int8_t* bp, int64_t kg, const TileOut& t) {
  switch (rows) {
    case 1: return tile<1, kMode>(ap, bp, kg, t);
    case 2: return tile<2, kMode>(ap, bp, kg, t);
    case 3: return tile<3, kMode>(ap, bp, kg, t);
    default: return tile<4, kMode>(ap, bp, kg, t);
  }
}

void tile_rows(int rows, const int16_t* ap, const int8_t* bp, int64_t kg, const TileOut& t) {
  const s8::GemmConst& k = *t.p->k;
  if (t.p->g->out.type == OutputType::kInt32 || k.rqf8_hi32) return tile_rows_mode<2>(rows, ap, bp, kg, t);
  if (k.rqf8_clamp64) return tile_rows_mode<1>(rows, ap, bp, kg, t);
  return tile_rows_mode<0>(rows, ap, bp, kg, t);
}

}  // namespace

void gemm_block_avx2(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const GemmS8Args& g = *p.g;
  const PackedWeightsS8& w = *p.w;
  const int64_t kg = w.k_groups;
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  const int64_t tile_elems = kg * kMR * 4;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / (tile_elems * 2));
  thread_local std::vector<int16_t> abuf;
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * kMR) {
    const int64_t me = std::min(m1, mb + tiles_per_block * kMR);
    const int64_t ntiles = (me - mb + kMR - 1) / kMR;
    abuf.resize(static_cast<size_t>(ntiles * tile_elems));
    for (int64_t t = 0; t < ntiles; ++t) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
      pack_a_tile16(a + (mb + t * kMR) * g.lda, g.lda, rows, w.k, kg, p.k->flip, abuf.data() + t * tile_elems);
    }
    for (int64_t j = n0; j < n1; j += 8) {
      const int64_t cols = std::min<int64_t>(8, n1 - j);
      const int8_t* bp = w.data.get() + (j / 16) * w.panel_stride + (j % 16) * 4;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
        tile_rows(rows, abuf.data() + t * tile_elems, bp, kg, TileOut{&p, mb + t * kMR, j, rows, cols});
      }
    }
  }
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX2: stubs, never called (compiled() is false)

namespace perch::kernels::s8 {
bool avx2_compiled() { return false; }
void gemm_block_avx2(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
