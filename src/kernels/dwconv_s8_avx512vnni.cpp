// depthwise_s8 on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; CMakeLists.txt).
//
// NHWC, per output row: the tap pointers of every output pixel are built once (a pointer into the input, or
// to a pixel of zero points for taps in the padding), then for each block of 64 channels and each pixel:
// for each group of 4 taps, 4 masked 64-byte loads, VPUNPCK{L,H}BW + VPUNPCK{L,H}WD interleave them into
// [x_t0, x_t1, x_t2, x_t3] per channel (4 vectors of 16 channels), and 4 VPDPBUSD with the weights packed in
// that same order. The accumulators start at bias - za * sum(w) (so the zero point costs nothing). The output
// stage requantizes the 4 vectors and VPACKSSDW + VPACKUSWB/VPACKSSWB restore the channel order.
#include "s8_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "s8_simd.h"

// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized (a known
// false positive of avx512fintrin.h); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace perch::kernels::s8 {

void dw_rows_avx512vnni(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, taps = w.kh * w.kw, groups = (taps + 3) / 4, tp = groups * 4;
  const int64_t blocks = (c_n + 63) / 64;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m512i flip = _mm512_set1_epi8(p.flip ? static_cast<char>(0x80) : 0);
  const bool is32 = d.out.type == OutputType::kInt32, is_u8 = d.out.type == OutputType::kUInt8;
  thread_local std::vector<const uint8_t*> ptrs;
  ptrs.resize(static_cast<size_t>(p.ow * tp));
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / p.oh, oh = r % p.oh;
    for (int64_t ow = 0; ow < p.ow; ++ow) {
      const uint8_t** pp = ptrs.data() + ow * tp;
      for (int64_t t = 0; t < tp; ++t) {
        const int64_t kh = t / w.kw, kw = t % w.kw;
        const int64_t ih = oh * d.stride_h - d.pad_top + kh * d.dilation_h;
        const int64_t iw = ow * d.stride_w - d.pad_left + kw * d.dilation_w;
        const bool inside = t < taps && ih >= 0 && ih < d.in_h && iw >= 0 && iw < d.in_w;
        pp[t] = inside ? x + ((n * d.in_h + ih) * d.in_w + iw) * c_n : p.zrow.data();
      }
    }
    const int64_t out_row = (n * p.oh + oh) * p.ow * c_n;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * 64, valid = std::min<int64_t>(64, c_n - c0);
      const __mmask64 mask = valid == 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
      const int8_t* wb = w.vnni.data() + b * groups * 256;
      const __m512i off0 = _mm512_loadu_si512(p.off.data() + c0), off1 = _mm512_loadu_si512(p.off.data() + c0 + 16);
      const __m512i off2 = _mm512_loadu_si512(p.off.data() + c0 + 32), off3 = _mm512_loadu_si512(p.off.data() + c0 + 48);
      auto accumulate = [&](int64_t ow, __m512i& a0, __m512i& a1, __m512i& a2, __m512i& a3) {
        const uint8_t* const* pp = ptrs.data() + ow * tp;
        a0 = off0, a1 = off1, a2 = off2, a3 = off3;
        for (int64_t g = 0; g < groups; ++g) {
          const __m512i x0 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, pp[4 * g] + c0), flip);
          const __m512i x1 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, pp[4 * g + 1] + c0), flip);
          const __m512i x2 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, pp[4 * g + 2] + c0), flip);
          const __m512i x3 = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, pp[4 * g + 3] + c0), flip);
          const __m512i t01l = _mm512_unpacklo_epi8(x0, x1), t01h = _mm512_unpackhi_epi8(x0, x1);
          const __m512i t23l = _mm512_unpacklo_epi8(x2, x3), t23h = _mm512_unpackhi_epi8(x2, x3);
          const int8_t* wg = wb + g * 256;
          a0 = _mm512_dpbusd_epi32(a0, _mm512_unpacklo_epi16(t01l, t23l), _mm512_loadu_si512(wg));
          a1 = _mm512_dpbusd_epi32(a1, _mm512_unpackhi_epi16(t01l, t23l), _mm512_loadu_si512(wg + 64));
          a2 = _mm512_dpbusd_epi32(a2, _mm512_unpacklo_epi16(t01h, t23h), _mm512_loadu_si512(wg + 128));
          a3 = _mm512_dpbusd_epi32(a3, _mm512_unpackhi_epi16(t01h, t23h), _mm512_loadu_si512(wg + 192));
        }
      };
      if (is32) {
        for (int64_t ow = 0; ow < p.ow; ++ow) {
          __m512i acc[4];
          accumulate(ow, acc[0], acc[1], acc[2], acc[3]);
          // acc[j], 128-bit lane l holds channels 16 l + 4 j .. + 3.
          int32_t* y = static_cast<int32_t*>(d.y) + out_row + ow * c_n + c0;
          for (int l = 0; l < 4; ++l)
            for (int j = 0; j < 4; ++j) {
              const int64_t first = 16 * l + 4 * j;
              if (first >= valid) continue;
              const __mmask8 m4 = static_cast<__mmask8>(valid - first >= 4 ? 0xf : (1u << (valid - first)) - 1);
              const __m128i v = l == 0   ? _mm512_castsi512_si128(acc[j])
                                : l == 1 ? _mm512_extracti32x4_epi32(acc[j], 1)
                                : l == 2 ? _mm512_extracti32x4_epi32(acc[j], 2)
                                         : _mm512_extracti32x4_epi32(acc[j], 3);
              _mm_mask_storeu_epi32(y + first, m4, v);
            }
        }
      } else {
        const Rq16 rq0(p.rq, c0), rq1(p.rq, c0 + 16), rq2(p.rq, c0 + 32), rq3(p.rq, c0 + 48);
        for (int64_t ow = 0; ow < p.ow; ++ow) {
          __m512i a0, a1, a2, a3;
          accumulate(ow, a0, a1, a2, a3);
          const __m512i s01 = _mm512_packs_epi32(rq0.apply(a0), rq1.apply(a1));
          const __m512i s23 = _mm512_packs_epi32(rq2.apply(a2), rq3.apply(a3));
          // Values are within [qmin, qmax] already: the saturating packs are exact and undo the unpacks' order.
          const __m512i o = is_u8 ? _mm512_packus_epi16(s01, s23) : _mm512_packs_epi16(s01, s23);
          _mm512_mask_storeu_epi8(static_cast<uint8_t*>(d.y) + out_row + ow * c_n + c0, mask, o);
        }
      }
    }
  }
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX-512 VNNI: a stub, never called (avx512vnni_compiled() is false)

namespace perch::kernels::s8 {
void dw_rows_avx512vnni(const DwPlan&, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
