// depthwise_s8 on AVX2 (compiled with -mavx2 -mfma; CMakeLists.txt). Exact, without VPMADDUBSW: per block
// of 16 channels and each pair of taps, the two 16-byte inputs are widened to int16 (VPMOVZXBW), interleaved
// (VPUNPCK{L,H}WD: [x_t0, x_t1] per channel) and multiplied with VPMADDWD against weights packed in that
// order — two int16 products summed into int32. Tap pointers per output pixel as in the VNNI file; channel
// tails (C % 16) are copied through a 16-byte buffer.
#include "s8_internal.h"

#if defined(__AVX2__)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "s8_simd.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // see gemm_s8_avx2.cpp

namespace perch::kernels::s8 {

void dw_rows_avx2(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, taps = w.kh * w.kw, pairs = (taps + 1) / 2, tp = pairs * 2;
  const int64_t blocks = (c_n + 15) / 16;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m128i flip = _mm_set1_epi8(p.flip ? static_cast<char>(0x80) : 0);
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
      const int64_t c0 = b * 16, valid = std::min<int64_t>(16, c_n - c0);
      const int16_t* wb = w.avx2.data() + b * pairs * 32;
      const __m256i off_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.off.data() + c0));
      const __m256i off_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.off.data() + c0 + 8));
      auto load16 = [&](const uint8_t* src) {
        __m128i v;
        if (valid == 16) {
          v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        } else {
          alignas(16) uint8_t buf[16] = {};
          std::memcpy(buf, src, static_cast<size_t>(valid));
          v = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
        }
        return _mm256_cvtepu8_epi16(_mm_xor_si128(v, flip));
      };
      const RequantTables* rqt = is32 ? nullptr : &p.rq;
      for (int64_t ow = 0; ow < p.ow; ++ow) {
        const uint8_t* const* pp = ptrs.data() + ow * tp;
        __m256i lo = off_lo, hi = off_hi;
        for (int64_t q = 0; q < pairs; ++q) {
          const __m256i x0 = load16(pp[2 * q] + c0), x1 = load16(pp[2 * q + 1] + c0);
          const int16_t* wq = wb + q * 32;
          lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1),
                                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq))));
          hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1),
                                                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + 16))));
        }
        // lo lane l: channels 8 l + 0..3; hi lane l: channels 8 l + 4..7.
        const int64_t at = out_row + ow * c_n + c0;
        if (is32) {
          alignas(32) int32_t buf[16];
          _mm256_store_si256(reinterpret_cast<__m256i*>(buf), _mm256_permute2x128_si256(lo, hi, 0x20));
          _mm256_store_si256(reinterpret_cast<__m256i*>(buf + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
          std::memcpy(static_cast<int32_t*>(d.y) + at, buf, static_cast<size_t>(valid) * 4);
        } else {
          const __m256i s16 = _mm256_packs_epi32(Rq8(*rqt, c0).apply(lo), Rq8(*rqt, c0 + 8).apply(hi));
          const __m256i s8 = is_u8 ? _mm256_packus_epi16(s16, s16) : _mm256_packs_epi16(s16, s16);
          // lane l, bytes 0-7: channels 8 l .. 8 l + 7.
          const __m128i o = _mm256_castsi256_si128(_mm256_permute4x64_epi64(s8, 0x08));
          uint8_t* y = static_cast<uint8_t*>(d.y) + at;
          if (valid == 16) {
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y), o);
          } else {
            alignas(16) uint8_t buf[16];
            _mm_store_si128(reinterpret_cast<__m128i*>(buf), o);
            std::memcpy(y, buf, static_cast<size_t>(valid));
          }
        }
      }
    }
  }
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX2: a stub, never called (avx2_compiled() is false)

namespace perch::kernels::s8 {
void dw_rows_avx2(const DwPlan&, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
