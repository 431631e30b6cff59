// AVX-512 twins of fake_quant_runs.h (compiled with -mavx512f; see the math there). 16 floats per step,
// masked tail; the same division, rounding and clamps as the reference, so results are bit-identical.
#include "fake_quant_runs.h"

#if defined(__AVX512F__)
#include <immintrin.h>

// GCC 12 warns inside its own _mm512_max_ps/_mm512_min_ps (an undefined pass-through operand).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace perch::quant::detail {

bool avx512_runs_compiled() { return true; }

namespace {

// The shared bodies; kRelu puts the runtime's Relu in front (see fake_quant_runs.h).
template <bool kRelu>
inline void fake_quant_body(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                            int32_t qmax) {
  const __m512 s = _mm512_set1_ps(scale), zp = _mm512_set1_ps(static_cast<float>(zero_point));
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    // Relu: VMAXPS returns its second operand (+0) when the first is NaN or when both are zeros, so NaN,
    // -0 and everything <= 0 become +0, as x > 0 ? x : 0.0f does.
    if constexpr (kRelu) v = _mm512_max_ps(v, zero);
    const __m512 u = _mm512_div_ps(v, s);
    const __m512 r = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // max/min return their second operand when the first is NaN: NaN lanes become lo, then are reset.
    __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, zp), lo), hi);
    q = _mm512_mask_mov_ps(q, _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q), zp);
    _mm512_mask_storeu_ps(y + k, m, _mm512_mul_ps(_mm512_sub_ps(q, zp), s));
  }
}

template <bool kRelu>
inline void ste_body(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                     int32_t qmin, int32_t qmax) {
  const __m512 zero = _mm512_setzero_ps();
  float t_lo = 0, t_hi = 0;
  // Short runs (one channel of a depthwise weight: 9 values) divide: the threshold search costs more.
  if (n >= 64 && ste_thresholds(scale, zero_point, qmin, qmax, &t_lo, &t_hi)) {
    // qmin - zp <= x / s <= qmax - zp  <=>  t_lo <= x <= t_hi (fake_quant_runs.h); ordered: NaN is outside.
    const __m512 lo = _mm512_set1_ps(t_lo), hi = _mm512_set1_ps(t_hi);
    for (int64_t k = 0; k < n; k += 16) {
      const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
      __mmask16 in = _mm512_cmp_ps_mask(v, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, hi, _CMP_LE_OQ) & m;
      if constexpr (kRelu) in &= _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
      _mm512_mask_storeu_ps(dx + k, m, _mm512_maskz_loadu_ps(in, dy + k));
    }
    return;
  }
  const __m512 s = _mm512_set1_ps(scale);
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin - zero_point));
  const __m512 hi = _mm512_set1_ps(static_cast<float>(qmax - zero_point));
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    const __m512 u = _mm512_div_ps(v, s);
    // Ordered compares: NaN is outside.
    __mmask16 in = _mm512_cmp_ps_mask(u, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(u, hi, _CMP_LE_OQ) & m;
    if constexpr (kRelu) in &= _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ);
    _mm512_mask_storeu_ps(dx + k, m, _mm512_maskz_loadu_ps(in, dy + k));
  }
}

}  // namespace

void fake_quant_run_avx512(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                           int32_t qmax) {
  fake_quant_body<false>(x, y, n, scale, zero_point, qmin, qmax);
}

void relu_fake_quant_run_avx512(const float* x, float* y, int64_t n, float scale, int32_t zero_point, int32_t qmin,
                                int32_t qmax) {
  fake_quant_body<true>(x, y, n, scale, zero_point, qmin, qmax);
}

void ste_run_avx512(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                    int32_t qmin, int32_t qmax) {
  ste_body<false>(dy, x, dx, n, scale, zero_point, qmin, qmax);
}

void relu_ste_run_avx512(const float* dy, const float* x, float* dx, int64_t n, float scale, int32_t zero_point,
                         int32_t qmin, int32_t qmax) {
  ste_body<true>(dy, x, dx, n, scale, zero_point, qmin, qmax);
}

RunRange range_run_avx512(const float* x, int64_t n) {
  const __m512 big = _mm512_set1_ps(3.40282347e38f);
  const __m512i abs_bits = _mm512_set1_epi32(0x7FFFFFFF);
  __m512 mn = _mm512_set1_ps(__builtin_inff()), mx = _mm512_set1_ps(-__builtin_inff());
  RunRange r{0, 0, 0, -1};
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = n - k >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - k)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    const __m512 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_bits));
    const __mmask16 finite = _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ) & m;  // NaN compares false
    const __mmask16 bad = static_cast<__mmask16>(~finite & m);
    if (bad) {
      if (r.nonfinite == 0) r.first_nonfinite = k + __builtin_ctz(bad);
      r.nonfinite += __builtin_popcount(bad);
    }
    mn = _mm512_mask_min_ps(mn, finite, mn, v);
    mx = _mm512_mask_max_ps(mx, finite, mx, v);
  }
  r.min = _mm512_reduce_min_ps(mn) + 0.0f;  // min/max are exact in any order up to the sign of zero
  r.max = _mm512_reduce_max_ps(mx) + 0.0f;
  return r;
}

}  // namespace perch::quant::detail

#else

namespace perch::quant::detail {
bool avx512_runs_compiled() { return false; }
void fake_quant_run_avx512(const float*, float*, int64_t, float, int32_t, int32_t, int32_t) {}
void ste_run_avx512(const float*, const float*, float*, int64_t, float, int32_t, int32_t, int32_t) {}
void relu_fake_quant_run_avx512(const float*, float*, int64_t, float, int32_t, int32_t, int32_t) {}
void relu_ste_run_avx512(const float*, const float*, float*, int64_t, float, int32_t, int32_t, int32_t) {}
RunRange range_run_avx512(const float*, int64_t) { return {}; }
}  // namespace perch::quant::detail

#endif
