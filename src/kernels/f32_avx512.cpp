// AVX-512 float kernels (see f32_avx512.h). Built with its own ISA flags (CMakeLists.txt); compiles to
// stubs when the compiler lacks AVX-512 so the library still links.
#include "f32_avx512.h"
#include "conv_internal.h"

#include <algorithm>

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

// K is summed in blocks of kKc: each tile call accumulates kKc products in registers and adds that partial
// sum to C (the first block with the caller's beta, the others with beta = 1). The rounding error of a
// float32 sum of K products grows with the length of the running sum; in blocks it grows with
// kKc + K / kKc instead of K (MLAS, ONNX Runtime's GEMM, sums K in blocks of 128 for the same reason).
// The extra cost is one load/add/store of the C tile per block.
constexpr int64_t kKc = 128;

void gemm_nn(const GemmF32Args& g) {
  for (int64_t j = 0; j < g.n; j += kNr) {
    const int64_t nc = min64(kNr, g.n - j);
    for (int64_t i = 0; i < g.m; i += kMr) {
      const int64_t mr = min64(kMr, g.m - i);
      for (int64_t p = 0; p < g.k || p == 0; p += kKc)
        kTiles[mr](g.a + i * g.lda + p, g.lda, g.b + p * g.ldb + j, g.ldb, g.c + i * g.ldc + j, g.ldc,
                   min64(kKc, g.k - p), nc, g.alpha, p == 0 ? g.beta : 1.0f);
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

namespace {
// Lanes [lo - base, hi - base) of a 16-lane block starting at column `base`, clipped to [0, 16).
inline __mmask16 range_mask(int64_t base, int64_t lo, int64_t hi) {
  const int64_t a = std::max<int64_t>(lo - base, 0), b = std::min<int64_t>(hi - base, 16);
  return b <= a ? __mmask16(0) : static_cast<__mmask16>(tail_mask(b) & ~tail_mask(a));
}
}  // namespace

void im2col_stride1(const Conv2dShape& s, int64_t cg, const float* x, float* col, int64_t oh0, int64_t oh1) {
  const int64_t ow_n = s.out_w(), rows = oh1 - oh0;
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * rows * ow_n;
        const float* xc = x + c * s.in_h * s.in_w;
        const int64_t off = kw * s.dil_w - s.pad_left;
        int64_t lo, hi;
        detail::valid_range(off, 1, s.in_w, ow_n, lo, hi);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          float* r = row + (oh - oh0) * ow_n;
          const bool inside = ih >= 0 && ih < s.in_h;
          const float* xr = xc + ih * s.in_w + off;  // only dereferenced through the valid lanes
          for (int64_t ow = 0; ow < ow_n; ow += 16) {
            const __mmask16 store = tail_mask(ow_n - ow);
            const __mmask16 load = inside ? range_mask(ow, lo, hi) : __mmask16(0);
            _mm512_mask_storeu_ps(r + ow, store, load ? _mm512_maskz_loadu_ps(load, xr + ow) : zero);
          }
        }
      }
}

void col2im_add_stride1(const Conv2dShape& s, int64_t cg, const float* col, float* dx) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * oh_n * ow_n;
        float* dc = dx + c * s.in_h * s.in_w;
        const int64_t off = kw * s.dil_w - s.pad_left;
        int64_t lo, hi;
        detail::valid_range(off, 1, s.in_w, ow_n, lo, hi);
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          float* dr = dc + ih * s.in_w + off;
          const float* r = row + oh * ow_n;
          for (int64_t ow = lo; ow < hi; ow += 16) {
            const __mmask16 m = tail_mask(hi - ow);
            _mm512_mask_storeu_ps(dr + ow, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dr + ow), _mm512_maskz_loadu_ps(m, r + ow)));
          }
        }
      }
}

void maxpool2x2_backward_plane(const float* x, const float* g, float* dx, int64_t in_w, int64_t oh_n, int64_t ow_n) {
  // 16 windows per step: even/odd columns of each row de-interleaved, four masked gradients, re-interleaved.
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t oh = 0; oh < oh_n; ++oh) {
    const float* r0 = x + 2 * oh * in_w;
    const float* r1 = r0 + in_w;
    float* d0 = dx + 2 * oh * in_w;
    float* d1 = d0 + in_w;
    const float* gr = g + oh * ow_n;
    for (int64_t ow = 0; ow < ow_n; ow += 16) {
      const int64_t n = std::min<int64_t>(16, ow_n - ow);
      const __mmask16 m = tail_mask(n);
      // Row pairs as two masked 16-float loads (2n floats: the window columns only).
      const __mmask16 ma = tail_mask(std::min<int64_t>(16, 2 * n)), mb = tail_mask(std::max<int64_t>(0, 2 * n - 16));
      const int64_t c = 2 * ow;
      const __m512 x0a = _mm512_maskz_loadu_ps(ma, r0 + c), x0b = _mm512_maskz_loadu_ps(mb, r0 + c + 16);
      const __m512 x1a = _mm512_maskz_loadu_ps(ma, r1 + c), x1b = _mm512_maskz_loadu_ps(mb, r1 + c + 16);
      const __m512 a = _mm512_permutex2var_ps(x0a, even, x0b), b = _mm512_permutex2var_ps(x0a, odd, x0b);
      const __m512 e = _mm512_permutex2var_ps(x1a, even, x1b), f = _mm512_permutex2var_ps(x1a, odd, x1b);
      const __mmask16 right0 = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ), right1 = _mm512_cmp_ps_mask(f, e, _CMP_GT_OQ);
      const __m512 m0 = _mm512_mask_blend_ps(right0, a, b), m1 = _mm512_mask_blend_ps(right1, e, f);
      const __mmask16 row1 = _mm512_cmp_ps_mask(m1, m0, _CMP_GT_OQ);
      const __m512 gv = _mm512_add_ps(_mm512_maskz_loadu_ps(m, gr + ow), zero);  // -0 -> +0, as g + 0.0f
      const __m512 da = _mm512_maskz_mov_ps(static_cast<__mmask16>(~row1 & ~right0), gv);
      const __m512 db = _mm512_maskz_mov_ps(static_cast<__mmask16>(~row1 & right0), gv);
      const __m512 de = _mm512_maskz_mov_ps(static_cast<__mmask16>(row1 & ~right1), gv);
      const __m512 df = _mm512_maskz_mov_ps(static_cast<__mmask16>(row1 & right1), gv);
      _mm512_mask_storeu_ps(d0 + c, ma, _mm512_permutex2var_ps(da, lo, db));
      _mm512_mask_storeu_ps(d0 + c + 16, mb, _mm512_permutex2var_ps(da, hi, db));
      _mm512_mask_storeu_ps(d1 + c, ma, _mm512_permutex2var_ps(de, lo, df));
      _mm512_mask_storeu_ps(d1 + c + 16, mb, _mm512_permutex2var_ps(de, hi, df));
    }
  }
}


// exp(x) for 16 floats, Cephes' expf scheme: n = round(x log2(e)), r = x - n ln2 (ln2 in two parts, so r is
// exact to float precision), exp(r) = 1 + r + r^2 P(r) with P of degree 5 on |r| <= ln2 / 2, then times 2^n by
// VSCALEFPS (correct down through the denormals to 0). Max error about 2 ulp. x is clamped below at -104 (where
// exp underflows to 0) by max(lo, x), which keeps a NaN x (VMAXPS returns its second operand on NaN); the caller
// passes x <= 0 (softmax), so no overflow.
namespace {
__m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, n);
}
}  // namespace

void softmax_rows(const float* x, int64_t rows, int64_t len, float* y) {
  for (int64_t row = 0; row < rows; ++row) {
    const float* xp = x + row * len;
    float* yp = y + row * len;
    // Pass 1: the maximum. (A NaN in the row makes its exp, hence the sum and every y, NaN, as in the reference,
    // whatever the maximum.)
    const __m512 neg_inf = _mm512_set1_ps(-__builtin_inff());  // no <cmath> here (see the helpers above)
    __m512 mv = neg_inf;
    for (int64_t j = 0; j < len; j += 16) mv = _mm512_max_ps(mv, _mm512_mask_loadu_ps(neg_inf, tail_mask(len - j), xp + j));
    const float m = _mm512_reduce_max_ps(mv);
    // Pass 2: e = exp(x - m) into y, summed in double.
    const __m512 mb = _mm512_set1_ps(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 k = tail_mask(len - j);
      const __m512 e = _mm512_maskz_mov_ps(k, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xp + j), mb)));
      _mm512_mask_storeu_ps(yp + j, k, e);
      s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
      s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    const double s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    // Pass 3: y = e * (1 / s).
    const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / s));
    for (int64_t j = 0; j < len; j += 16) {
      const __mmask16 k = tail_mask(len - j);
      _mm512_mask_storeu_ps(yp + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, yp + j), inv));
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
void maxpool2x2_backward_plane(const float*, const float*, float*, int64_t, int64_t, int64_t) {}
void im2col_stride1(const Conv2dShape&, int64_t, const float*, float*, int64_t, int64_t) {}
void softmax_rows(const float*, int64_t, int64_t, float*) {}
void col2im_add_stride1(const Conv2dShape&, int64_t, const float*, float*) {}
}  // namespace perch::kernels::avx512

#endif
