// depthwise_s8 on AVX2 (compiled with -mavx2 -mfma; CMakeLists.txt). kw <= 4: the row-cached kernel at the end
// of this file. Otherwise, the per-pixel kernel, exact, without VPMADDUBSW: per block
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

namespace {

void dw_rows_generic(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, taps = w.kh * w.kw, pairs = (taps + 1) / 2, tp = pairs * 2;
  const int64_t blocks = (c_n + 15) / 16;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m128i flip = _mm_set1_epi8(p.k->flip ? static_cast<char>(0x80) : 0);
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
        pp[t] = inside ? x + ((n * d.in_h + ih) * d.in_w + iw) * c_n : p.k->zrow.data();
      }
    }
    const int64_t out_row = (n * p.oh + oh) * p.ow * c_n;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * 16, valid = std::min<int64_t>(16, c_n - c0);
      const int16_t* wb = w.avx2.data() + b * pairs * 32;
      const __m256i off_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0));
      const __m256i off_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0 + 8));
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
      const RequantTables* rqt = is32 ? nullptr : &p.k->rq;
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


// ---- Row-cached kernel, kw <= 4 (every 3x3 depthwise conv); the scheme of dwconv_s8_avx512vnni.cpp ----
//
// Pair rows. For input row ih, block c0 of 16 channels, output column ow and tap pair q < rp = (kw + 1) / 2:
//   P[ow][q] = 2 vectors of 16 int16; vector h, element 8 l + 2 i + t = x_u[ih][ow * sw - pl + (2 q + t) * dw][c0 + 8 l + 4 h + i]
// (VPMOVZXBW of the tap loads, then VPUNPCK{L,H}WD of taps 2q and 2q+1; a tap 2q + 1 = kw is 0 and meets a zero
// weight), the order of PackedDepthwiseS8::avx2_rows. One output pixel is, per kernel row r and pair q,
//   acc_h += VPMADDWD(P_{ih(r)}[ow][q].h, avx2_rows[b][r][q][h])   (two u8 x s8 products in int32: exact)
// from acc = bias - za_u * sum(w). Row cache, padding rows and borders as in the VNNI file. Overflow: as there.
template <int KW>
void build_pairs(const DepthwiseS8Args& d, const uint8_t* row, const uint8_t* zrow, int64_t ow_n, int64_t c0,
                 int64_t valid, __m128i flip, int16_t* q) {
  constexpr int RP = (KW + 1) / 2;
  const int64_t c_n = d.channels, sw = d.stride_w, dw = d.dilation_w, pl = d.pad_left;
  const int64_t e = d.in_w - 1 - (KW - 1) * dw + pl;
  int64_t lo = (pl + sw - 1) / sw, hi = e >= 0 ? e / sw + 1 : 0;
  lo = std::min(lo, ow_n);
  hi = std::clamp(hi, lo, ow_n);
  auto one = [&](int64_t ow, bool border) {
    const int64_t iw0 = ow * sw - pl;
    __m256i x[2 * RP];
    for (int t = 0; t < 2 * RP; ++t) {
      if (t >= KW) {
        x[t] = _mm256_setzero_si256();
        continue;
      }
      const int64_t iw = iw0 + t * dw;
      const uint8_t* src = (!border || (iw >= 0 && iw < d.in_w)) ? row + iw * c_n + c0 : zrow;
      __m128i v;
      if (valid == 16) {
        v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      } else {
        alignas(16) uint8_t b[16] = {};
        std::memcpy(b, src, static_cast<size_t>(valid));
        v = _mm_load_si128(reinterpret_cast<const __m128i*>(b));
      }
      x[t] = _mm256_cvtepu8_epi16(_mm_xor_si128(v, flip));
    }
    int16_t* o = q + ow * RP * 32;
    for (int pq = 0; pq < RP; ++pq) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + pq * 32), _mm256_unpacklo_epi16(x[2 * pq], x[2 * pq + 1]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + pq * 32 + 16), _mm256_unpackhi_epi16(x[2 * pq], x[2 * pq + 1]));
    }
  };
  for (int64_t ow = 0; ow < lo; ++ow) one(ow, true);
  for (int64_t ow = lo; ow < hi; ++ow) one(ow, false);
  for (int64_t ow = hi; ow < ow_n; ++ow) one(ow, true);
}

inline __m256i ld256(const void* p) { return _mm256_load_si256(static_cast<const __m256i*>(p)); }

// Accumulates one output pixel: RP pairs per kernel row (RP > 0 fixed at compile time, else rp), KH rows (same).
template <int KH, int RP>
inline void accumulate(int64_t kh_n, int64_t rp_n, const int16_t* const* qb, const int64_t* qs, const int16_t* wb,
                       int64_t ow, __m256i& lo, __m256i& hi) {
  const int64_t kn = KH > 0 ? KH : kh_n, rp = RP > 0 ? RP : rp_n;
  for (int64_t r = 0; r < kn; ++r) {
    const int16_t* q = qb[r] + ow * qs[r];
    const int16_t* wr = wb + r * rp * 32;
    for (int64_t pq = 0; pq < rp; ++pq) {
      lo = _mm256_add_epi32(lo, _mm256_madd_epi16(ld256(q + pq * 32), ld256(wr + pq * 32)));
      hi = _mm256_add_epi32(hi, _mm256_madd_epi16(ld256(q + pq * 32 + 16), ld256(wr + pq * 32 + 16)));
    }
  }
}

template <int KH, int RP, int kMode>
void row_u8(const DwPlan& p, int64_t kh_n, int64_t rp_n, const int16_t* const* qb, const int64_t* qs,
            const int16_t* wb, int64_t c0, int64_t valid, bool is_u8, uint8_t* y) {
  const int64_t c_n = p.d->channels;
  const __m256i off_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0));
  const __m256i off_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0 + 8));
  const int64_t* t = p.k->rqf.data() + (c0 / 8) * 32;
  const RqF8 rq_lo(t), rq_hi(t + 32);
  const __m256i lo64 = _mm256_set1_epi64x(p.k->rq.lo), hi64 = _mm256_set1_epi64x(p.k->rq.hi);
  const __m256i lo16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.lo));
  const __m256i hi16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.hi));
  const __m256i zp16 = _mm256_set1_epi16(static_cast<int16_t>(p.k->rq.zp));
  for (int64_t ow = 0; ow < p.ow; ++ow) {
    __m256i lo = off_lo, hi = off_hi;
    accumulate<KH, RP>(kh_n, rp_n, qb, qs, wb, ow, lo, hi);
    // lo lane l: channels 8 l + 0..3; hi lane l: 8 l + 4..7. VPACKSSDW puts lane l in channel order 8 l + 0..7;
    // int16 saturation then [lo, hi] is the clamp to [lo, hi]; + zp lands in [qmin, qmax].
    __m256i s16 = _mm256_packs_epi32(rq_lo.apply<kMode>(lo, lo64, hi64), rq_hi.apply<kMode>(hi, lo64, hi64));
    s16 = _mm256_add_epi16(_mm256_min_epi16(_mm256_max_epi16(s16, lo16), hi16), zp16);
    const __m256i s8 = is_u8 ? _mm256_packus_epi16(s16, s16) : _mm256_packs_epi16(s16, s16);
    const __m128i o = _mm256_castsi256_si128(_mm256_permute4x64_epi64(s8, 0x08));
    uint8_t* yo = y + ow * c_n + c0;
    if (valid == 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(yo), o);
    } else {
      alignas(16) uint8_t b[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(b), o);
      std::memcpy(yo, b, static_cast<size_t>(valid));
    }
  }
}

void dw_rows_cached(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, kh_n = w.kh, rp = (w.kw + 1) / 2, blocks = (c_n + 15) / 16;
  const int64_t slots = kh_n * d.dilation_h, row_elems = p.ow * rp * 32;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m128i flip = _mm_set1_epi8(p.k->flip ? static_cast<char>(0x80) : 0);
  const bool is32 = d.out.type == OutputType::kInt32, is_u8 = d.out.type == OutputType::kUInt8;
  // Thread-local: [slots pair rows][one pixel's pairs of zero points (rp * 32 int16)]; tags[slot] = n * in_h + ih.
  thread_local std::vector<int16_t> buf;
  thread_local std::vector<int64_t> tags;
  const size_t need = static_cast<size_t>(slots * row_elems + rp * 32 + 16);
  if (buf.size() < need) buf.resize(need);
  int16_t* qbuf = reinterpret_cast<int16_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 31) & ~uintptr_t{31});
  int16_t* zpair = qbuf + slots * row_elems;
  const int16_t za = static_cast<int16_t>(static_cast<uint8_t>(p.k->zrow[0] ^ (p.k->flip ? 0x80 : 0)));
  for (int64_t i = 0; i < rp * 32; ++i) zpair[i] = za;
  tags.assign(static_cast<size_t>(slots), -1);
  std::vector<const int16_t*> qb(static_cast<size_t>(kh_n));
  std::vector<int64_t> qs(static_cast<size_t>(kh_n));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * 16, valid = std::min<int64_t>(16, c_n - c0);
    const int16_t* wb = w.avx2_rows.data() + b * kh_n * rp * 32;
    std::fill(tags.begin(), tags.end(), -1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.oh, oh = r % p.oh;
      for (int64_t k = 0; k < kh_n; ++k) {
        const int64_t ih = oh * d.stride_h - d.pad_top + k * d.dilation_h;
        if (ih < 0 || ih >= d.in_h) {
          qb[static_cast<size_t>(k)] = zpair;
          qs[static_cast<size_t>(k)] = 0;
          continue;
        }
        const int64_t slot = ih % slots, tag = n * d.in_h + ih;
        int16_t* q = qbuf + slot * row_elems;
        if (tags[static_cast<size_t>(slot)] != tag) {
          const uint8_t* row = x + (n * d.in_h + ih) * d.in_w * c_n;
          switch (w.kw) {
            case 1: build_pairs<1>(d, row, p.k->zrow.data(), p.ow, c0, valid, flip, q); break;
            case 2: build_pairs<2>(d, row, p.k->zrow.data(), p.ow, c0, valid, flip, q); break;
            case 3: build_pairs<3>(d, row, p.k->zrow.data(), p.ow, c0, valid, flip, q); break;
            default: build_pairs<4>(d, row, p.k->zrow.data(), p.ow, c0, valid, flip, q); break;
          }
          tags[static_cast<size_t>(slot)] = tag;
        }
        qb[static_cast<size_t>(k)] = q;
        qs[static_cast<size_t>(k)] = rp * 32;
      }
      const int64_t out_row = (n * p.oh + oh) * p.ow * c_n;
      if (is32) {
        const __m256i off_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0));
        const __m256i off_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.k->off.data() + c0 + 8));
        for (int64_t ow = 0; ow < p.ow; ++ow) {
          __m256i lo = off_lo, hi = off_hi;
          accumulate<0, 0>(kh_n, rp, qb.data(), qs.data(), wb, ow, lo, hi);
          alignas(32) int32_t o[16];
          _mm256_store_si256(reinterpret_cast<__m256i*>(o), _mm256_permute2x128_si256(lo, hi, 0x20));
          _mm256_store_si256(reinterpret_cast<__m256i*>(o + 8), _mm256_permute2x128_si256(lo, hi, 0x31));
          std::memcpy(static_cast<int32_t*>(d.y) + out_row + ow * c_n + c0, o, static_cast<size_t>(valid) * 4);
        }
        continue;
      }
      uint8_t* y = static_cast<uint8_t*>(d.y) + out_row;
      const bool k33 = kh_n == 3 && rp == 2;
      const int mode = p.k->rqf_hi32 ? 2 : p.k->rqf_clamp64 ? 1 : 0;
      if (k33 && mode == 2)
        row_u8<3, 2, 2>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
      else if (k33 && mode == 1)
        row_u8<3, 2, 1>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
      else if (k33)
        row_u8<3, 2, 0>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
      else if (mode == 2)
        row_u8<0, 0, 2>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
      else if (mode == 1)
        row_u8<0, 0, 1>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
      else
        row_u8<0, 0, 0>(p, kh_n, rp, qb.data(), qs.data(), wb, c0, valid, is_u8, y);
    }
  }
}

}  // namespace

void dw_rows_avx2(const DwPlan& p, int64_t r0, int64_t r1) {
  if (p.k->cached)  // chosen by depthwise_s8 (dwconv_s8.cpp)
    dw_rows_cached(p, r0, r1);
  else
    dw_rows_generic(p, r0, r1);
}

}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX2: a stub, never called (avx2_compiled() is false)

namespace perch::kernels::s8 {
void dw_rows_avx2(const DwPlan&, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
