// AVX-512 float kernels (see f32_avx512.h). Built with its own ISA flags (CMakeLists.txt); compiles to
// stubs when the compiler lacks AVX-512 so the library still links.
#include "f32_avx512.h"

#if defined(__AVX512F__)
#include <immintrin.h>

namespace perch::kernels::avx512 {

bool compiled() { return true; }

namespace {

// Local helpers instead of std::min/max: inline functions from shared headers compiled here would carry
// AVX-512 code and the linker could pick this copy for the rest of the library (ODR merge).
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// C[0:MR, 0:nc] (nc <= 32) = alpha * A[0:MR, :] B[:, 0:nc] + beta * C. Accumulates over k in order.
template <int MR>
void tile(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t k, int64_t nc,
          float alpha, float beta) {
  const __mmask16 m0 = tail_mask(nc), m1 = tail_mask(nc > 16 ? nc - 16 : 0);
  // Every loop over r is unrolled so the accumulators live in registers (GCC spills the arrays otherwise).
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc0[r] = _mm512_setzero_ps(), acc1[r] = _mm512_setzero_ps();
  if (m1) {
    for (int64_t p = 0; p < k; ++p) {
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + p * ldb), b1 = _mm512_maskz_loadu_ps(m1, b + p * ldb + 16);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r * lda + p]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
    }
  } else {
    for (int64_t p = 0; p < k; ++p) {
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + p * ldb);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + p]), b0, acc0[r]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
    __m512 r0 = alpha == 1.0f ? acc0[r] : _mm512_mul_ps(va, acc0[r]);
    __m512 r1 = alpha == 1.0f ? acc1[r] : _mm512_mul_ps(va, acc1[r]);
    if (beta == 1.0f) {
      r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, cr));
      r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, cr + 16));
    } else if (beta != 0.0f) {
      r0 = _mm512_add_ps(r0, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, cr)));
      r1 = _mm512_add_ps(r1, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, cr + 16)));
    }
    _mm512_mask_storeu_ps(cr, m0, r0);
    if (m1) _mm512_mask_storeu_ps(cr + 16, m1, r1);
  }
}

using TileFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int64_t, float, float);
constexpr int kMr = 8, kNr = 32;
constexpr TileFn kTiles[kMr + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>, tile<7>, tile<8>};

}  // namespace

void gemm_nn(const GemmF32Args& g) {
  for (int64_t j = 0; j < g.n; j += kNr) {
    const int64_t nc = min64(kNr, g.n - j);
    for (int64_t i = 0; i < g.m; i += kMr) {
      const int64_t mr = min64(kMr, g.m - i);
      kTiles[mr](g.a + i * g.lda, g.lda, g.b + j, g.ldb, g.c + i * g.ldc + j, g.ldc, g.k, nc, g.alpha, g.beta);
    }
  }
}

void depthwise_plane(const float* xp, int64_t pw, int64_t oh_n, int64_t ow_n, int64_t kh_n, int64_t kw_n, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, const float* w, float bias, float* y) {
  const __m512 vbias = _mm512_set1_ps(bias);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(sw)));
  for (int64_t oh = 0; oh < oh_n; ++oh) {
    float* yr = y + oh * ow_n;
    for (int64_t ow = 0; ow < ow_n; ow += 16) {
      const __mmask16 m = tail_mask(ow_n - ow);
      __m512 acc = vbias;
      for (int64_t kh = 0; kh < kh_n; ++kh) {
        const float* xr = xp + (oh * sh + kh * dh) * pw + ow * sw;
        for (int64_t kw = 0; kw < kw_n; ++kw) {
          const float* p = xr + kw * dw;
          __m512 v;
          if (sw == 1) v = _mm512_maskz_loadu_ps(m, p);
          else if (sw == 2) v = _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16));
          else v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, lanes, p, 4);
          acc = _mm512_fmadd_ps(_mm512_set1_ps(w[kh * kw_n + kw]), v, acc);
        }
      }
      _mm512_mask_storeu_ps(yr + ow, m, acc);
    }
  }
}

}  // namespace perch::kernels::avx512

#else  // no AVX-512 in this compiler: stubs, never dispatched to (compiled() is false)

namespace perch::kernels::avx512 {
bool compiled() { return false; }
void gemm_nn(const GemmF32Args&) {}
void depthwise_plane(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                     const float*, float, float*) {}
}  // namespace perch::kernels::avx512

#endif
