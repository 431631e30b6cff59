// gemm_s8 on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; see CMakeLists.txt).
//
// Tile: up to 12 rows x 32 columns (two 16-column weight panels), 24 zmm accumulators. Per group of 4 k:
// two 64-byte panel loads, then per row one 4-byte broadcast of A and two VPDPBUSD (u8 x s8, four products
// summed into each int32 lane — exact: no intermediate narrower than int32). A is first packed per block of
// rows into [k_group][12 rows][4 bytes] (int8 activations flipped to uint8 there, K padded with zeros), so the
// inner loop reads A from one pointer at constant offsets. Loop order: row block (A block fits L2) ->
// panel pair (B pair stays in L1 across the row tiles) -> row tile of 12.
#include "s8_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "s8_simd.h"

// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized (a known
// false positive of avx512fintrin.h); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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

template <int MR, int NP>
__attribute__((always_inline)) inline void tile(const uint8_t* ap, const int8_t* bp, int64_t pstride, int64_t kg,
                                                const TileOut& t) {
  // Every loop over r and q is unrolled (MR, NP are constants): indexing acc with a run-time value would
  // keep the accumulators in memory.
  __m512i acc[MR][NP];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_setzero_si512();
  for (int64_t g = 0; g < kg; ++g) {
    __m512i b[NP];
#pragma GCC unroll 2
    for (int q = 0; q < NP; ++q) b[q] = _mm512_load_si512(bp + q * pstride + g * 64);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      int32_t v;
      std::memcpy(&v, ap + g * kMR * 4 + r * 4, 4);
      const __m512i av = _mm512_set1_epi32(v);
#pragma GCC unroll 2
      for (int q = 0; q < NP; ++q) acc[r][q] = _mm512_dpbusd_epi32(acc[r][q], av, b[q]);
    }
  }
  // Output stage.
  const GemmPlan& p = *t.p;
  const GemmS8Args& g = *p.g;
  const bool has_zw = !p.zw.empty();
#pragma GCC unroll 2
  for (int q = 0; q < NP; ++q) {
    const int64_t j = t.j0 + 16 * q;
    const int64_t valid = std::min<int64_t>(16, t.cols - 16 * q);
    if (valid <= 0) continue;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
    const __m512i off = _mm512_loadu_si512(p.col_off.data() + j);
    const __m512i zw = has_zw ? _mm512_loadu_si512(p.zw.data() + j) : _mm512_setzero_si512();
    if (g.out.type == OutputType::kInt32) {
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) {
        __m512i v = _mm512_add_epi32(acc[r][q], off);
        if (has_zw)
          v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zw, _mm512_set1_epi32(p.row_term[t.m0 + r])));
        _mm512_mask_storeu_epi32(static_cast<int32_t*>(g.c) + (t.m0 + r) * g.ldc + j, mask, v);
      }
    } else {
      const Rq16 rq(p.rq, j);
#pragma GCC unroll 12
      for (int r = 0; r < MR; ++r) {
        __m512i v = _mm512_add_epi32(acc[r][q], off);
        if (has_zw)
          v = _mm512_sub_epi32(v, _mm512_mullo_epi32(zw, _mm512_set1_epi32(p.row_term[t.m0 + r])));
        v = rq.apply(v);
        // Values are in [qmin, qmax], inside the 8-bit range: truncation to bytes is exact for both types.
        _mm512_mask_cvtepi32_storeu_epi8(static_cast<uint8_t*>(g.c) + (t.m0 + r) * g.ldc + j, mask, v);
      }
    }
  }
}

template <int NP>
void tile_rows(int rows, const uint8_t* ap, const int8_t* bp, int64_t pstride, int64_t kg, const TileOut& t) {
  switch (rows) {
    case 1: return tile<1, NP>(ap, bp, pstride, kg, t);
    case 2: return tile<2, NP>(ap, bp, pstride, kg, t);
    case 3: return tile<3, NP>(ap, bp, pstride, kg, t);
    case 4: return tile<4, NP>(ap, bp, pstride, kg, t);
    case 5: return tile<5, NP>(ap, bp, pstride, kg, t);
    case 6: return tile<6, NP>(ap, bp, pstride, kg, t);
    case 7: return tile<7, NP>(ap, bp, pstride, kg, t);
    case 8: return tile<8, NP>(ap, bp, pstride, kg, t);
    case 9: return tile<9, NP>(ap, bp, pstride, kg, t);
    case 10: return tile<10, NP>(ap, bp, pstride, kg, t);
    case 11: return tile<11, NP>(ap, bp, pstride, kg, t);
    default: return tile<12, NP>(ap, bp, pstride, kg, t);
  }
}

}  // namespace

void gemm_block_avx512vnni(const GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const GemmS8Args& g = *p.g;
  const PackedWeightsS8& w = *p.w;
  const int64_t kg = w.k_groups;
  const uint8_t* a = static_cast<const uint8_t*>(g.a);
  // Row block: as many 12-row tiles as fit ~256 KiB of packed A (the B panel pair is reused across them).
  const int64_t tile_bytes = kg * kMR * 4;
  const int64_t tiles_per_block = std::max<int64_t>(1, (int64_t{256} << 10) / tile_bytes);
  thread_local std::vector<uint8_t> abuf;
  for (int64_t mb = m0; mb < m1; mb += tiles_per_block * kMR) {
    const int64_t me = std::min(m1, mb + tiles_per_block * kMR);
    const int64_t ntiles = (me - mb + kMR - 1) / kMR;
    abuf.resize(static_cast<size_t>(ntiles * tile_bytes));
    for (int64_t t = 0; t < ntiles; ++t) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
      pack_a_tile(a + (mb + t * kMR) * g.lda, g.lda, rows, w.k, kg, p.flip, abuf.data() + t * tile_bytes);
    }
    for (int64_t j = n0; j < n1; j += 32) {
      const int64_t cols = std::min<int64_t>(32, n1 - j);
      const int8_t* bp = w.data.get() + (j / 16) * w.panel_stride;
      for (int64_t t = 0; t < ntiles; ++t) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, me - mb - t * kMR));
        const TileOut to{&p, mb + t * kMR, j, rows, cols};
        if (cols > 16)
          tile_rows<2>(rows, abuf.data() + t * tile_bytes, bp, w.panel_stride, kg, to);
        else
          tile_rows<1>(rows, abuf.data() + t * tile_bytes, bp, w.panel_stride, kg, to);
      }
    }
  }
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX-512 VNNI: stubs, never called (compiled() is false)

namespace perch::kernels::s8 {
bool avx512vnni_compiled() { return false; }
void gemm_block_avx512vnni(const GemmPlan&, int64_t, int64_t, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
