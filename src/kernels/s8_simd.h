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
  __m512i mult, sh_e, sh_o, rnd_e, rnd_o, rsh, rmask, rhalf, lo, hi, zp;
  Rq16(const RequantTables& t, int64_t j) {
    mult = _mm512_loadu_si512(t.mult.data() + j);
    const __m512i sh = _mm512_loadu_si512(t.sh64.data() + j);
    sh_e = _mm512_and_si512(sh, _mm512_set1_epi64(0xffffffff));
    sh_o = _mm512_srli_epi64(sh, 32);
    const __m512i one = _mm512_set1_epi64(1);
    rnd_e = _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_e, one));  // 2^(30 - L)
    rnd_o = _mm512_sllv_epi64(one, _mm512_sub_epi64(sh_o, one));
    rsh = _mm512_loadu_si512(t.rsh.data() + j);
    rmask = _mm512_loadu_si512(t.rmask.data() + j);
    rhalf = _mm512_srli_epi32(rmask, 1);
    lo = _mm512_set1_epi32(t.lo);
    hi = _mm512_set1_epi32(t.hi);
    zp = _mm512_set1_epi32(t.zp);
  }
  // Returns the requantized values (already clamped, zero point added) as int32.
  __m512i apply(__m512i acc) const {
    const __m512i i32min = _mm512_set1_epi64(INT32_MIN), i32max = _mm512_set1_epi64(INT32_MAX);
    __m512i pe = _mm512_mul_epi32(acc, mult);  // even lanes, exact 64-bit products
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(mult, 32));
    pe = _mm512_srav_epi64(_mm512_add_epi64(pe, rnd_e), sh_e);
    po = _mm512_srav_epi64(_mm512_add_epi64(po, rnd_o), sh_o);
    pe = _mm512_min_epi64(_mm512_max_epi64(pe, i32min), i32max);
    po = _mm512_min_epi64(_mm512_max_epi64(po, i32min), i32max);
    const __m512i r = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
    // rounding_divide_by_pot(r, R): floor(r / 2^R) + (remainder > half - (r < 0 ? 1 : 0) ... written as
    // remainder > (mask >> 1) + (r < 0)).
    const __m512i rem = _mm512_and_si512(r, rmask);
    const __m512i thr = _mm512_sub_epi32(rhalf, _mm512_srai_epi32(r, 31));
    __m512i q = _mm512_srav_epi32(r, rsh);
    
    q = _mm512_mask_sub_epi32(q, _mm512_cmpgt_epi32_mask(rem, thr), q, _mm512_set1_epi32(-1));
    q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
    return _mm512_add_epi32(q, zp);
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
  __m256i mult, sh_e, sh_o, rnd_e, rnd_o, rsh, rmask, rhalf, lo, hi, zp;
  Rq8(const RequantTables& t, int64_t j) {
    mult = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.mult.data() + j));
    const __m256i sh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.sh64.data() + j));
    sh_e = _mm256_and_si256(sh, _mm256_set1_epi64x(0xffffffff));
    sh_o = _mm256_srli_epi64(sh, 32);
    const __m256i one = _mm256_set1_epi64x(1);
    rnd_e = _mm256_sllv_epi64(one, _mm256_sub_epi64(sh_e, one));
    rnd_o = _mm256_sllv_epi64(one, _mm256_sub_epi64(sh_o, one));
    rsh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.rsh.data() + j));
    rmask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.rmask.data() + j));
    rhalf = _mm256_srli_epi32(rmask, 1);
    lo = _mm256_set1_epi32(t.lo);
    hi = _mm256_set1_epi32(t.hi);
    zp = _mm256_set1_epi32(t.zp);
  }
  __m256i apply(__m256i acc) const {
    __m256i pe = _mm256_mul_epi32(acc, mult);
    __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(acc, 32), _mm256_srli_epi64(mult, 32));
    pe = clamp_i32_epi64_avx2(srav_epi64_avx2(_mm256_add_epi64(pe, rnd_e), sh_e));
    po = clamp_i32_epi64_avx2(srav_epi64_avx2(_mm256_add_epi64(po, rnd_o), sh_o));
    const __m256i r = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    const __m256i rem = _mm256_and_si256(r, rmask);
    const __m256i thr = _mm256_sub_epi32(rhalf, _mm256_srai_epi32(r, 31));
    __m256i q = _mm256_srav_epi32(r, rsh);
    q = _mm256_sub_epi32(q, _mm256_cmpgt_epi32(rem, thr));  // true lanes are -1: adds 1
    q = _mm256_min_epi32(_mm256_max_epi32(q, lo), hi);
    return _mm256_add_epi32(q, zp);
  }
};
#endif

}  // namespace perch::kernels::s8
