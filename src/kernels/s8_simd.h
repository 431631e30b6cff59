// Internal: the int8 output stage in SIMD registers, bit-exact with s8::requantize_one (the formula is in
// s8_internal.h, RequantTables). Included only by the ISA files, whose compile flags define __AVX2__ /
// __AVX512F__; each version exists only when its instruction set is enabled.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "s8_internal.h"

namespace perch::kernels::s8 {

#if defined(__AVX512F__) && defined(__AVX512BW__)
// Per-channel constants for 16 consecutive channels, loaded once per tile.
struct Rq16 {
  __m512i mult, sh_e, sh_o, rnd_e, rnd_o, lo, hi, zp;
  Rq16(const RequantTables& t, int64_t j) {
    mult = _mm512_loadu_si512(t.mult.data() + j);
    const __m512i sh = _mm512_loadu_si512(t.sh64.data() + j);
    sh_e = _mm512_and_si512(sh, _mm512_set1_epi64(0xffffffff));
    sh_o = _mm512_srli_epi64(sh, 32);
    const __m512i one = _mm512_set1_epi64(1);
    rnd_e = _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_e, one));  // 2^(S - 1)
    rnd_o = _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_o, one));
    lo = _mm512_set1_epi32(t.lo);
    hi = _mm512_set1_epi32(t.hi);
    zp = _mm512_set1_epi32(t.zp);
  }
  // Returns the requantized values (already clamped, zero point added) as int32.
  __m512i apply(__m512i acc) const {
    const __m512i i32min = _mm512_set1_epi64(INT32_MIN), i32max = _mm512_set1_epi64(INT32_MAX);
    __m512i pe = _mm512_mul_epi32(acc, mult);  // even lanes, exact 64-bit products
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(mult, 32));
    pe = _mm512_srav_epi64(_mm512_add_epi64(pe, rnd_e), sh_e);  // floor((p + 2^(S - 1)) / 2^S)
    po = _mm512_srav_epi64(_mm512_add_epi64(po, rnd_o), sh_o);
    pe = _mm512_min_epi64(_mm512_max_epi64(pe, i32min), i32max);
    po = _mm512_min_epi64(_mm512_max_epi64(po, i32min), i32max);
    __m512i q = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    return _mm512_add_epi32(q, zp);
  }
};

// The 8-bit stores' clamp of VPACKSSDW's int16 values to [lo, hi] (inside int16, so exact), then + zp; with
// type_range ([qmin, qmax] the output type's range: RequantTables::type_range) a saturating + zp alone, the saturating
// pack to 8 bits that follows being that clamp.
inline __m512i clamp_add_zp16(__m512i s, __m512i lo16, __m512i hi16, __m512i zp16, bool type_range) {
  return type_range ? _mm512_adds_epi16(s, zp16)
                    : _mm512_add_epi16(_mm512_min_epi16(_mm512_max_epi16(s, lo16), hi16), zp16);
}

// DwConst::rqf for 16 channels (one accumulator vector): the one-rounding output stage (formula in s8_internal.h).
// Returns the int32 result before the clamp to [lo, hi] (applied later on int16, after VPACKSSDW, which is exact:
// [lo, hi] lies inside int16); with kClamp64 the 64-bit result is clamped to [lo, hi] first, as it may not fit.
struct RqF16 {
  __m512i me, mo, re, ro, se, so;
  explicit RqF16(const int64_t* t) {
    me = _mm512_loadu_si512(t), mo = _mm512_loadu_si512(t + 8);
    re = _mm512_loadu_si512(t + 16), ro = _mm512_loadu_si512(t + 24);
    se = _mm512_loadu_si512(t + 48), so = _mm512_loadu_si512(t + 56);  // t + 32..47: the zero adj slots
  }
  // kMode 0: plain; 1: clamp64 (some L > 0); 2: hi32 (DwConst::rqf_hi32; re holds 16 int32 constants 2^(sh - 33),
  // se 16 int32 counts sh - 32).
  template <int kMode>
  __m512i apply(__m512i acc, __m512i lo64, __m512i hi64) const {
    if constexpr (kMode == 2) {
      // even int32 lanes take pe's high halves, odd lanes keep po's: hi32(p); + 2^(t - 1), >> t (t = sh - 32).
      const __m512i pe = _mm512_mul_epi32(acc, me), po = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), mo);
      return _mm512_srav_epi32(_mm512_add_epi32(_mm512_mask_shuffle_epi32(po, 0x5555, pe, _MM_PERM_CDAB), re), se);
    }
    __m512i pe = _mm512_add_epi64(_mm512_mul_epi32(acc, me), re);
    __m512i po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(acc, 32), mo), ro);
    constexpr bool kClamp64 = kMode == 1;
    pe = _mm512_srav_epi64(pe, se);
    po = _mm512_srav_epi64(po, so);
    if constexpr (kClamp64) {
      pe = _mm512_min_epi64(_mm512_max_epi64(pe, lo64), hi64);
      po = _mm512_min_epi64(_mm512_max_epi64(po, lo64), hi64);
    }
    // odd int32 lanes take po's low halves
    return _mm512_mask_shuffle_epi32(pe, 0xAAAA, po, _MM_PERM_CDAB);
  }
};
#endif

#if defined(__AVX2__)
// 64-bit arithmetic right shift by per-lane counts (AVX2 has only the logical one): flip negative values,
// shift logically, flip back — floor division for both signs.
inline __m256i srav_epi64_avx2(__m256i x, __m256i s) {
  const __m256i sign = _mm256_cmpgt_epi64(_mm256_setzero_si256(), x);
  return _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(x, sign), s), sign);
}
inline __m256i clamp_i32_epi64_avx2(__m256i x) {
  const __m256i mn = _mm256_set1_epi64x(INT32_MIN), mx = _mm256_set1_epi64x(INT32_MAX);
  x = _mm256_blendv_epi8(x, mn, _mm256_cmpgt_epi64(mn, x));
  return _mm256_blendv_epi8(x, mx, _mm256_cmpgt_epi64(x, mx));
}

struct Rq8 {
  __m256i mult, sh_e, sh_o, rnd_e, rnd_o, lo, hi, zp;
  Rq8(const RequantTables& t, int64_t j) {
    mult = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.mult.data() + j));
    const __m256i sh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.sh64.data() + j));
    sh_e = _mm256_and_si256(sh, _mm256_set1_epi64x(0xffffffff));
    sh_o = _mm256_srli_epi64(sh, 32);
    const __m256i one = _mm256_set1_epi64x(1);
    rnd_e = _mm256_sllv_epi64(one, _mm256_sub_epi64(sh_e, one));
    rnd_o = _mm256_sllv_epi64(one, _mm256_sub_epi64(sh_o, one));
    lo = _mm256_set1_epi32(t.lo);
    hi = _mm256_set1_epi32(t.hi);
    zp = _mm256_set1_epi32(t.zp);
  }
  __m256i apply(__m256i acc) const {
    __m256i pe = _mm256_mul_epi32(acc, mult);
    __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(mult, 32));
    pe = clamp_i32_epi64_avx2(srav_epi64_avx2(_mm256_add_epi64(pe, rnd_e), sh_e));
    po = clamp_i32_epi64_avx2(srav_epi64_avx2(_mm256_add_epi64(po, rnd_o), sh_o));
    __m256i q = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
    return _mm256_add_epi32(q, zp);
  }
};

// DwConst::rqf for 8 channels (one accumulator vector), as RqF16 (formula in s8_internal.h).
struct RqF8 {
  __m256i me, mo, re, ro, se, so;
  explicit RqF8(const int64_t* t) {
    auto ld = [](const int64_t* q) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)); };
    me = ld(t), mo = ld(t + 4), re = ld(t + 8), ro = ld(t + 12), se = ld(t + 24), so = ld(t + 28);  // t + 16..23: adj (0)
  }
  // kMode as RqF16's (hi32: re holds 8 int32 constants 2^(sh - 33), se 8 int32 counts sh - 32).
  template <int kMode>
  __m256i apply(__m256i acc, __m256i lo64, __m256i hi64) const {
    if constexpr (kMode == 2) {  // even lanes: pe's high halves; odd lanes: po's (in place); + 2^(t - 1), >> t
      const __m256i pe = _mm256_mul_epi32(acc, me), po = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), mo);
      return _mm256_srav_epi32(_mm256_add_epi32(_mm256_blend_epi32(_mm256_shuffle_epi32(pe, 0xB1), po, 0xAA), re), se);
    }
    __m256i pe = _mm256_add_epi64(_mm256_mul_epi32(acc, me), re);
    __m256i po = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(acc, 32), mo), ro);
    constexpr bool kClamp64 = kMode == 1;
    pe = srav_epi64_avx2(pe, se);
    po = srav_epi64_avx2(po, so);
    if constexpr (kClamp64) {
      pe = _mm256_blendv_epi8(pe, lo64, _mm256_cmpgt_epi64(lo64, pe));
      pe = _mm256_blendv_epi8(pe, hi64, _mm256_cmpgt_epi64(pe, hi64));
      po = _mm256_blendv_epi8(po, lo64, _mm256_cmpgt_epi64(lo64, po));
      po = _mm256_blendv_epi8(po, hi64, _mm256_cmpgt_epi64(po, hi64));
    }
    return _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  }
};
#endif

}  // namespace perch::kernels::s8
