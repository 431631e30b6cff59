// depthwise_s8 on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni; CMakeLists.txt).
// kw <= 8: the row-cached kernel further down (layout, formula, bounds there). Otherwise, the per-pixel kernel:
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
#include <cstring>
#include <vector>

#include "s8_simd.h"

// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized (a known
// false positive of avx512fintrin.h); nothing in this file reads uninitialized data.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same, for _mm512_shuffle_i64x2

namespace perch::kernels::s8 {

namespace {

// Any kernel width: per output pixel, the taps in groups of 4 interleaved from 4 loads (the header comment).
void dw_rows_generic(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, taps = w.kh * w.kw, groups = (taps + 3) / 4, tp = groups * 4;
  const int64_t blocks = (c_n + 63) / 64;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m512i flip = _mm512_set1_epi8(p.k->flip ? static_cast<char>(0x80) : 0);
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
      const int64_t c0 = b * 64, valid = std::min<int64_t>(64, c_n - c0);
      const __mmask64 mask = valid == 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
      const int8_t* wb = w.vnni.data() + b * groups * 256;
      const __m512i off0 = _mm512_loadu_si512(p.k->off.data() + c0), off1 = _mm512_loadu_si512(p.k->off.data() + c0 + 16);
      const __m512i off2 = _mm512_loadu_si512(p.k->off.data() + c0 + 32), off3 = _mm512_loadu_si512(p.k->off.data() + c0 + 48);
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
        const Rq16 rq0(p.k->rq, c0), rq1(p.k->rq, c0 + 16), rq2(p.k->rq, c0 + 32), rq3(p.k->rq, c0 + 48);
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


// ---- Row-cached kernel, kw <= 8 (every 3x3 and 5x5 depthwise conv; kw > 4 as two quads per kernel row) ----
//
// 16 channels per vector, each channel's 4 taps in its 4 bytes (the VPDPBUSD group). Channel order inside a
// block of 64: a full block keeps the order VPUNPCK{L,H}BW + VPUNPCK{L,H}WD leave (vector j, 128-bit lane l,
// dword i = channel 16 l + 4 j + i), which the output packs undo for free; the last block, if partial (valid < 64
// channels, g = ceil(valid / 16) vectors), is transposed back to natural order (vector J, dword i = channel
// 16 J + i) by a 4x4 transpose of 128-bit lanes (VSHUFI64X2), so it costs g vectors, not 4, per pixel. Write
// ch(J, i) for the channel in vector J, dword i. The per-channel tables (p.k->off, p.k->rqf) are in the same order
// (dwconv_s8.cpp, channel_order), and so is PackedDepthwiseS8::vnni_rows.
// Quad rows. For input row ih, channel block c0 and output column ow, the quad row holds
//   Q[ow] = g vectors of 64 bytes; vector J, byte 4 i + t = x_u[ih][ow * sw - pl + t * dw][c0 + ch(J, i)]
// (t < kw; x_u = x ^ 0x80 for int8 inputs; the zero point for columns in the padding; slot t >= kw is 0 and meets
// a zero weight). One output pixel is, per kernel row r and vector J, one VPDPBUSD:
//   acc_J += Q_{ih(r)}[ow].J  .  vnni_rows[b][r][J]        (u8 x s8, 4 products summed, exact in int32)
// with acc_J starting at bias - za_u * sum(w) (p.k->off), so the zero point costs nothing per pixel; rows in the
// padding read one quad of zero points with column step 0. A quad row is built once per (block, input row) and
// reused by every output row that reads it (3 at stride 1): a direct-mapped cache of kh * dilation_h slots
// indexed by ih mod (kh * dilation_h), which never evicts a row the current output row needs (its input rows are
// kh multiples of dilation_h apart). One slot is ow_n * g * 64 bytes: 14 KB at 56 columns, so the 3 rows of a
// 3x3 conv stay in L1. Borders: only the columns whose taps leave the input take the per-tap branch; the
// interior build loop (a sliding window at stride 1: one load per column) and the compute loop have none.
// Two output pixels per step share every weight and output-stage constant.
// Output: the one-rounding output stage (RqF16; formula in s8_internal.h, DwConst::rqf), VPACKSSDW, the clamp to
// [lo, hi] and + zp on int16, VPACKUSWB / VPACKSSWB (exact: values already in the output type), and for a
// partial block one VPERMD to undo the packs' lane interleave.
// Overflow: |acc - bias| <= 255 * 128 * taps < 2^31 (the PackedDepthwiseS8 check); bias wraps as in the reference.
// pl: the quad's left padding — d.pad_left for taps 0..3, d.pad_left - 4 q dw for the taps 4 q.. of a wider kernel
// (negative when those taps start right of the output column).
template <int KW, bool kFlip>
void build_quads(const DepthwiseS8Args& d, int64_t pl, const uint8_t* row, const uint8_t* zrow, int64_t ow_n, int64_t c0,
                 __mmask64 mask, int g, __m512i flip, uint8_t* q) {
  const int64_t c_n = d.channels, sw = d.stride_w, dw = d.dilation_w;
  // Interior columns: ow * sw - pl >= 0 and ow * sw - pl + (KW - 1) * dw <= in_w - 1.
  const int64_t e = d.in_w - 1 - (KW - 1) * dw + pl;
  int64_t lo = pl <= 0 ? 0 : (pl + sw - 1) / sw, hi = e >= 0 ? e / sw + 1 : 0;
  lo = std::min(lo, ow_n);
  hi = std::clamp(hi, lo, ow_n);
  const int64_t step = g * 64;
  const bool full = mask == ~__mmask64{0};
  auto load = [&](const uint8_t* src) __attribute__((always_inline)) {
    const __m512i v = _mm512_maskz_loadu_epi8(mask, src);
    return kFlip ? _mm512_xor_si512(v, flip) : v;
  };
  auto emit = [&](int64_t ow, const __m512i* x) __attribute__((always_inline)) {
    const __m512i x3 = KW > 3 ? x[KW > 3 ? 3 : 0] : _mm512_setzero_si512();
    const __m512i x2 = KW > 2 ? x[KW > 2 ? 2 : 0] : _mm512_setzero_si512();
    const __m512i x1 = KW > 1 ? x[KW > 1 ? 1 : 0] : _mm512_setzero_si512();
    const __m512i t01l = _mm512_unpacklo_epi8(x[0], x1), t01h = _mm512_unpackhi_epi8(x[0], x1);
    const __m512i t23l = _mm512_unpacklo_epi8(x2, x3), t23h = _mm512_unpackhi_epi8(x2, x3);
    // u_j, lane l: channels 16 l + 4 j + 0..3, 4 taps each.
    const __m512i u0 = _mm512_unpacklo_epi16(t01l, t23l), u1 = _mm512_unpackhi_epi16(t01l, t23l);
    const __m512i u2 = _mm512_unpacklo_epi16(t01h, t23h), u3 = _mm512_unpackhi_epi16(t01h, t23h);
    uint8_t* o = q + ow * step;
    if (full) {  // full block: keep the unpacks' order (the output packs undo it)
      _mm512_store_si512(o, u0);
      _mm512_store_si512(o + 64, u1);
      _mm512_store_si512(o + 128, u2);
      _mm512_store_si512(o + 192, u3);
      return;
    }
    const __m512i v0 = _mm512_shuffle_i64x2(u0, u1, 0x44), v1 = _mm512_shuffle_i64x2(u0, u1, 0xEE);
    const __m512i v2 = _mm512_shuffle_i64x2(u2, u3, 0x44), v3 = _mm512_shuffle_i64x2(u2, u3, 0xEE);
    _mm512_store_si512(o, _mm512_shuffle_i64x2(v0, v2, 0x88));  // lane J of u_0..u_3: channels 16 J + 0..15
    if (g > 1) _mm512_store_si512(o + 64, _mm512_shuffle_i64x2(v0, v2, 0xDD));
    if (g > 2) _mm512_store_si512(o + 128, _mm512_shuffle_i64x2(v1, v3, 0x88));
    if (g > 3) _mm512_store_si512(o + 192, _mm512_shuffle_i64x2(v1, v3, 0xDD));
  };
  auto border = [&](int64_t ow) __attribute__((always_inline)) {
    __m512i x[KW];
    for (int t = 0; t < KW; ++t) {
      const int64_t iw = ow * sw - pl + t * dw;
      x[t] = load(iw >= 0 && iw < d.in_w ? row + iw * c_n + c0 : zrow);
    }
    emit(ow, x);
  };
  for (int64_t ow = 0; ow < lo; ++ow) border(ow);
  if (sw == 1 && dw == 1) {  // sliding window: one load per column
    __m512i x[KW];
    for (int t = 0; t + 1 < KW && lo < hi; ++t) x[t] = load(row + (lo - pl + t) * c_n + c0);
    for (int64_t ow = lo; ow < hi; ++ow) {
      x[KW - 1] = load(row + (ow - pl + KW - 1) * c_n + c0);
      emit(ow, x);
      for (int t = 0; t + 1 < KW; ++t) x[t] = x[t + 1];
    }
  } else {
    for (int64_t ow = lo; ow < hi; ++ow) {
      __m512i x[KW];
      for (int t = 0; t < KW; ++t) x[t] = load(row + (ow * sw - pl + t * dw) * c_n + c0);
      emit(ow, x);
    }
  }
  for (int64_t ow = hi; ow < ow_n; ++ow) border(ow);
}

// The store of the 8-bit kernels: G requantized int32 vectors (RqF16, before the clamp) of one output pixel packed
// to bytes. `full`: a 64-channel block in the VPUNPCK order, which the packs undo; otherwise the channels are in
// natural order (vector j = channels 16 j + 0..15) and one VPERMD undoes the packs' lane interleave.
struct DwStore {
  __m512i lo16, hi16, zp16, perm;
  __mmask64 mask;
  bool full, whole16, is_u8, type_range;
  DwStore(const RequantTables& rq, __mmask64 m, int g, bool u8) {
    lo16 = _mm512_set1_epi16(static_cast<int16_t>(rq.lo));
    hi16 = _mm512_set1_epi16(static_cast<int16_t>(rq.hi));
    zp16 = _mm512_set1_epi16(static_cast<int16_t>(rq.zp));
    // After VPACKSSDW (0,1), (2,3) and VPACKUSWB, lane l dword k holds channels 16 k + 4 l + 0..3.
    perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    mask = m;
    full = m == ~__mmask64{0};  // 64 channels: unpack order, which the packs undo (natural-order callers: identity)
    whole16 = m == (g == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * g)) - 1);  // 16 g channels
    is_u8 = u8;
    type_range = rq.type_range;
  }
  // The same constants for a whole 64-byte natural-order store (4 vectors of 16 channels).
  DwStore widened() const {
    DwStore w = *this;
    w.mask = ~__mmask64{0};
    w.full = w.whole16 = true;
    return w;
  }
  template <int G>
  void store(const __m512i* r, uint8_t* yo, bool unpack_order) const {
    const __m512i zero = _mm512_setzero_si512();
    // int16 saturation then [lo, hi] (inside int16) is the clamp to [lo, hi]; + zp lands in [qmin, qmax].
    auto clamp = [&](__m512i s) __attribute__((always_inline)) {
      return clamp_add_zp16(s, lo16, hi16, zp16, type_range);
    };
    const __m512i s01 = clamp(_mm512_packs_epi32(r[0], G > 1 ? r[G > 1 ? 1 : 0] : zero));
    const __m512i s23 = G > 2 ? clamp(_mm512_packs_epi32(r[G > 2 ? 2 : 0], G > 3 ? r[G > 3 ? 3 : 0] : zero)) : zero;
    const __m512i o = is_u8 ? _mm512_packus_epi16(s01, s23) : _mm512_packs_epi16(s01, s23);
    // Plain stores when the block's channels fill whole 16-byte pieces (masked byte stores are several times
    // slower on Zen 4/5); the byte mask otherwise.
    if (full && unpack_order) return _mm512_storeu_si512(yo, o);
    const __m512i op = _mm512_permutexvar_epi32(perm, o);
    if (full) return _mm512_storeu_si512(yo, op);
    if (!whole16) return _mm512_mask_storeu_epi8(yo, mask, op);
    if constexpr (G == 1) _mm_storeu_si128(reinterpret_cast<__m128i*>(yo), _mm512_castsi512_si128(op));
    if constexpr (G >= 2) _mm256_storeu_si256(reinterpret_cast<__m256i*>(yo), _mm512_castsi512_si256(op));
    if constexpr (G == 3) _mm_storeu_si128(reinterpret_cast<__m128i*>(yo + 32), _mm512_extracti32x4_epi32(op, 2));
  }
};

// Compute loop for one output row and one channel block of G vectors; KH > 0 fixes the kernel height.
template <int G, int KH, int kMode>
void row_u8(const DwPlan& p, int64_t kh_n, const uint8_t* const* qb, const int64_t* qs, const int8_t* wb,
            int64_t c0, __mmask64 mask, bool is_u8, uint8_t* y) {
  const int64_t c_n = p.d->channels, kn = KH > 0 ? KH : kh_n;
  __m512i off[G];
  for (int j = 0; j < G; ++j) off[j] = _mm512_loadu_si512(p.k->off.data() + c0 + 16 * j);
  const int64_t* t = p.k->rqf.data() + (c0 / 16) * 64;
  const RqF16 rq0(t), rq1(G > 1 ? t + 64 : t), rq2(G > 2 ? t + 128 : t), rq3(G > 3 ? t + 192 : t);
  const __m512i lo64 = _mm512_set1_epi64(p.k->rq.lo), hi64 = _mm512_set1_epi64(p.k->rq.hi);
  const RqF16* rq[4] = {&rq0, &rq1, &rq2, &rq3};
  const DwStore st(p.k->rq, mask, G, is_u8);
  auto store = [&](const __m512i* r, uint8_t* yo) { st.store<G>(r, yo, true); };
  // Two output pixels per step: every weight and output-stage constant loaded once serves both (the output
  // stage runs per channel vector j over both pixels, so its 8 constants stay in registers).
  int64_t ow = 0;
  for (; ow + 2 <= p.ow; ow += 2) {
    __m512i a[G], b[G];
    for (int j = 0; j < G; ++j) a[j] = b[j] = off[j];
    for (int64_t r = 0; r < kn; ++r) {
      const uint8_t* q = qb[r] + ow * qs[r];
      const int64_t s = qs[r];
      const int8_t* wr = wb + r * G * 64;
      for (int j = 0; j < G; ++j) {
        const __m512i wv = _mm512_loadu_si512(wr + 64 * j);
        a[j] = _mm512_dpbusd_epi32(a[j], _mm512_load_si512(q + 64 * j), wv);
        b[j] = _mm512_dpbusd_epi32(b[j], _mm512_load_si512(q + s + 64 * j), wv);
      }
    }
    for (int j = 0; j < G; ++j) {
      a[j] = rq[j]->apply<kMode>(a[j], lo64, hi64);
      b[j] = rq[j]->apply<kMode>(b[j], lo64, hi64);
    }
    store(a, y + ow * c_n + c0);
    store(b, y + (ow + 1) * c_n + c0);
  }
  if (ow < p.ow) {
    __m512i a[G];
    for (int j = 0; j < G; ++j) a[j] = off[j];
    for (int64_t r = 0; r < kn; ++r) {
      const uint8_t* q = qb[r] + ow * qs[r];
      const int8_t* wr = wb + r * G * 64;
      for (int j = 0; j < G; ++j)
        a[j] = _mm512_dpbusd_epi32(a[j], _mm512_load_si512(q + 64 * j), _mm512_loadu_si512(wr + 64 * j));
    }
    for (int j = 0; j < G; ++j) a[j] = rq[j]->apply<kMode>(a[j], lo64, hi64);
    store(a, y + ow * c_n + c0);
  }
}

void row_i32(const DwPlan& p, int64_t kn, int g, const uint8_t* const* qb, const int64_t* qs, const int8_t* wb,
             int64_t c0, int64_t valid, int32_t* y) {
  const int64_t c_n = p.d->channels;
  for (int64_t ow = 0; ow < p.ow; ++ow) {
    for (int j = 0; j < g; ++j) {
      __m512i acc = _mm512_loadu_si512(p.k->off.data() + c0 + 16 * j);
      for (int64_t r = 0; r < kn; ++r)
        acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(qb[r] + ow * qs[r] + 64 * j),
                                  _mm512_loadu_si512(wb + r * g * 64 + 64 * j));
      if (valid == 64) {  // full block, unpack order: lane l of vector j holds channels 16 l + 4 j + 0..3
        alignas(64) int32_t v[16];
        _mm512_store_si512(v, acc);
        for (int l = 0; l < 4; ++l) std::memcpy(y + ow * c_n + c0 + 16 * l + 4 * j, v + 4 * l, 16);
        continue;
      }
      const int64_t left = valid - 16 * j;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_epi32(y + ow * c_n + c0 + 16 * j, m, acc);
    }
  }
}

template <int G>
void row_u8_any(const DwPlan& p, int64_t kh_n, const uint8_t* const* qb, const int64_t* qs, const int8_t* wb,
                int64_t c0, __mmask64 mask, bool is_u8, uint8_t* y) {
  const int mode = p.k->rqf_hi32 ? 2 : p.k->rqf_clamp64 ? 1 : 0;
  if (kh_n == 3 && mode == 2)
    row_u8<G, 3, 2>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
  else if (kh_n == 3 && mode == 1)
    row_u8<G, 3, 1>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
  else if (kh_n == 3)
    row_u8<G, 3, 0>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
  else if (mode == 2)
    row_u8<G, 0, 2>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
  else if (mode == 1)
    row_u8<G, 0, 1>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
  else
    row_u8<G, 0, 0>(p, kh_n, qb, qs, wb, c0, mask, is_u8, y);
}

// ---- Column-quad kernel: 3x3, dilation_w 1, stride_w 1 or 2, 8-bit output (MobileNet's depthwise convs) ----
//
// The row-cached kernel above groups the taps of a kernel *row* and so stores its quad rows to memory and reloads
// them for each output row; this kernel groups the taps of a kernel *column* and keeps them in registers. Channels
// come in groups of G <= 4 vectors of 16 — the 64-channel blocks, the last one taking what is left (its last vector
// may be partial), so 16, 24 or 96 channels cost 1, 2 or 6 vectors per pixel — in the row-cached kernel's order
// (full blocks in the VPUNPCK order, the last partial block natural: channel_order in dwconv_s8.cpp), so the two
// kernels share their constants. For output row (n, oh) the kernel rows read input rows
// ih_r = oh * sh - pt + r * dh (r < 3; a row of zero points, column step 0, when ih_r is outside the input). The
// column quad of input column iw is
//   V[iw].j, byte 4 i + r = x_u[ih_r][iw][c0 + ch(j, i)]   (r < 3; byte 3 is 0;  x_u = x ^ 0x80 for int8 inputs)
// with ch(j, i) = 16 (i / 4) + 4 j + i % 4 in a full block, built from the three rows' 64-byte loads by VPUNPCK{L,H}BW
// and VPUNPCK{L,H}WD (8 for the 4 vectors), and ch(j, i) = 16 j + i in a partial one, built by one VPERMT2B (rows 0
// and 1) and one merge-masked VPERMB (row 2) per vector (byte index tables: `ColIdx`); for iw in the padding, V is
// the zero point in every byte (byte 3 meets a zero weight). Output pixel ow is, per vector j,
//   acc_j = off_j + sum_{k<3} V[ow * sw - pl + k].j . vnni_cols[c0 / 16 + j][k]   (u8 x s8 VPDPBUSD, exact in int32)
// with off = bias - za_u * sum(w) as in the other kernels. The three columns slide in registers (stride 1: one
// new column per output pixel; stride 2: two), so nothing goes through memory between the loads of x and
// VPDPBUSD. Output: RqF16 (the one-rounding stage, s8_internal.h), then DwStore (packs, clamp on int16, + zp; the
// packs undo the VPUNPCK order, one VPERMD the natural order's lane interleave). Overflow: |acc - bias| <=
// 255 * 128 * 9 < 2^31. VPERMB / VPERMT2B are AVX-512 VBMI: dwconv_s8.cpp runs this kernel only where the CPU has
// it (Ice Lake, Zen 4 and later).
// At stride 1 in both directions, output rows oh and oh + 1 are computed together: byte 3 of the quad then holds
// input row ih_3 (one more VPUNPCK source, or one more merge-masked VPERMB), row oh takes the weights above and row
// oh + 1 the same dwords shifted left by 8 bits, [0, w0, w1, w2] (cols_row, kPair). With 16 channels in all the
// outputs of consecutive pixels are adjacent, and four pixels are narrowed and stored together.
struct ColIdx {
  __m512i v[4];  // vector j, byte 4 i + t: source byte of tap row t for channel 16 j + i (t = 1, 3: second table)
  ColIdx() {
    alignas(64) uint8_t b[64];
    for (int j = 0; j < 4; ++j) {
      for (int i = 0; i < 16; ++i) {
        b[4 * i] = static_cast<uint8_t>(16 * j + i);
        b[4 * i + 1] = static_cast<uint8_t>(64 + 16 * j + i);
        b[4 * i + 2] = static_cast<uint8_t>(16 * j + i);
        b[4 * i + 3] = static_cast<uint8_t>(64 + 16 * j + i);  // VPERMB reads the low 6 bits: 16 j + i of row 3
      }
      v[j] = _mm512_load_si512(b);
    }
  }
};

struct ColRows {
  const uint8_t* row[4];  // input row ih_r at channel c0, or the zero-point pixel (row 3: output-row pairs only)
  int64_t step[4];        // bytes per input column: C, or 0 for the zero-point pixel
};

// The G vectors of column quad iw (see above) from the rows r0..r2 (column steps s0..s2), and with kR = 4 (an
// output-row pair, below) byte 3 from row r3; kFlip: int8 input; kUnpack (G = 4, all 64 channels valid): built by
// 8 VPUNPCKs in their channel order instead of byte permutes.
template <int G, bool kFlip, bool kUnpack, int kR>
__attribute__((target("avx512f,avx512bw,avx512vbmi"), always_inline)) inline void col_quad(
    const uint8_t* const* r, const int64_t* s, int64_t iw, int64_t in_w, __mmask64 mask, __m512i zq,
    const __m512i* ix, __m512i* v) {
  if (iw < 0 || iw >= in_w) {
    for (int j = 0; j < G; ++j) v[j] = zq;
    return;
  }
  __m512i x0 = _mm512_maskz_loadu_epi8(mask, r[0] + iw * s[0]);
  __m512i x1 = _mm512_maskz_loadu_epi8(mask, r[1] + iw * s[1]);
  __m512i x2 = _mm512_maskz_loadu_epi8(mask, r[2] + iw * s[2]);
  __m512i x3 = _mm512_setzero_si512();  // byte 3: zero (its weight is 0) unless the quad serves an output-row pair
  if constexpr (kR == 4) x3 = _mm512_maskz_loadu_epi8(mask, r[3] + iw * s[3]);
  if constexpr (kFlip) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    x0 = _mm512_xor_si512(x0, flip), x1 = _mm512_xor_si512(x1, flip), x2 = _mm512_xor_si512(x2, flip);
    if constexpr (kR == 4) x3 = _mm512_xor_si512(x3, flip);
  }
  if constexpr (kUnpack) {  // a full 64-channel block: the VPUNPCK order (lane l of v[j]: channels 16 l + 4 j + 0..3)
    const __m512i t01l = _mm512_unpacklo_epi8(x0, x1), t01h = _mm512_unpackhi_epi8(x0, x1);
    const __m512i t23l = _mm512_unpacklo_epi8(x2, x3), t23h = _mm512_unpackhi_epi8(x2, x3);
    v[0] = _mm512_unpacklo_epi16(t01l, t23l), v[G > 1 ? 1 : 0] = _mm512_unpackhi_epi16(t01l, t23l);
    v[G > 2 ? 2 : 0] = _mm512_unpacklo_epi16(t01h, t23h), v[G > 3 ? 3 : 0] = _mm512_unpackhi_epi16(t01h, t23h);
    return;
  }
  constexpr __mmask64 k01 = 0x3333333333333333ull, k2 = 0x4444444444444444ull, k3 = 0x8888888888888888ull;
  for (int j = 0; j < G; ++j) {
    v[j] = _mm512_mask_permutexvar_epi8(_mm512_maskz_permutex2var_epi8(k01, x0, ix[j], x1), k2, ix[j], x2);
    if constexpr (kR == 4) v[j] = _mm512_mask_permutexvar_epi8(v[j], k3, ix[j], x3);
  }
}

// One output row of one channel group, or with kPair two (rows oh and oh + 1 at stride_h 1, dilation_h 1: their
// kernel rows read input rows ih_0 .. ih_0 + 3, so one 4-row column quad [x(ih_0), .., x(ih_0 + 3)] serves both —
// row oh with the weights [w0, w1, w2, 0] of vnni_cols, row oh + 1 with [0, w0, w1, w2], the same dword shifted left
// by 8 bits — and each input column is loaded and interleaved once per pair instead of once per row).
// kMode: RqF16's (0 is run as 1: the 64-bit clamp is exact for every shift).
template <int G, int SW, int kMode, bool kFlip, bool kUnpack, bool kPair>
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void cols_row(const DwPlan& p, const ColRows& cr,
                                                                      const int8_t* wg, int64_t c0, __mmask64 mask,
                                                                      const DwStore& st_in, const ColIdx& ix_in,
                                                                      uint8_t* y, uint8_t* y2) {
  constexpr int kR = kPair ? 4 : 3;
  // Locals, not references: the byte stores to y could alias anything reached through a pointer, so the compiler
  // would reload those every pixel.
  const DepthwiseS8Args& d = *p.d;
  const int64_t c_n = d.channels, in_w = d.in_w, pl = d.pad_left, ow_n = p.ow;
  const uint8_t* rows[4] = {cr.row[0], cr.row[1], cr.row[2], cr.row[kR - 1]};
  const int64_t steps[4] = {cr.step[0], cr.step[1], cr.step[2], cr.step[kR - 1]};
  const DwStore st = st_in;
  __m512i ix[G];
  for (int j = 0; j < G; ++j) ix[j] = ix_in.v[j];
  __m512i off[G], w[3][G], w2[3][G];
  for (int j = 0; j < G; ++j) {
    off[j] = _mm512_loadu_si512(p.k->off.data() + c0 + 16 * j);
    for (int k = 0; k < 3; ++k) {
      w[k][j] = _mm512_loadu_si512(wg + (3 * j + k) * 64);
      if constexpr (kPair) w2[k][j] = _mm512_slli_epi32(w[k][j], 8);  // byte 3 of vnni_cols is 0: [0, w0, w1, w2]
    }
  }
  const int64_t* t = p.k->rqf.data() + (c0 / 16) * 64;
  const RqF16 rq0(t), rq1(G > 1 ? t + 64 : t), rq2(G > 2 ? t + 128 : t), rq3(G > 3 ? t + 192 : t);
  const RqF16* rq[4] = {&rq0, &rq1, &rq2, &rq3};
  const __m512i lo64 = _mm512_set1_epi64(p.k->rq.lo), hi64 = _mm512_set1_epi64(p.k->rq.hi);
  const __m512i zq = _mm512_set1_epi8(static_cast<char>(p.k->zrow[0] ^ (kFlip ? 0x80 : 0)));
  __m512i v0[G], v1[G], v2[G];
#define PERCH_COL(iw, v) col_quad<G, kFlip, kUnpack, kR>(rows, steps, iw, in_w, mask, zq, ix, v)
  PERCH_COL(-pl, v0);
  PERCH_COL(1 - pl, v1);
  // Output pixel ow of both rows (a: row oh, b: row oh + 1 with kPair), then the columns slide to pixel ow + 1.
  auto pixel = [&](int64_t ow, __m512i* a, __m512i* b)
                   __attribute__((target("avx512f,avx512bw,avx512vbmi"), always_inline)) {
    const int64_t base = ow * SW - pl;  // the leftmost column of this output pixel
    PERCH_COL(base + 2, v2);
    for (int j = 0; j < G; ++j) {
      a[j] = _mm512_dpbusd_epi32(off[j], v0[j], w[0][j]);
      a[j] = _mm512_dpbusd_epi32(a[j], v1[j], w[1][j]);
      a[j] = _mm512_dpbusd_epi32(a[j], v2[j], w[2][j]);
      a[j] = rq[j]->apply<kMode>(a[j], lo64, hi64);
      if constexpr (kPair) {
        b[j] = _mm512_dpbusd_epi32(off[j], v0[j], w2[0][j]);
        b[j] = _mm512_dpbusd_epi32(b[j], v1[j], w2[1][j]);
        b[j] = _mm512_dpbusd_epi32(b[j], v2[j], w2[2][j]);
        b[j] = rq[j]->apply<kMode>(b[j], lo64, hi64);
      }
    }
    if constexpr (SW == 1) {
      for (int j = 0; j < G; ++j) v0[j] = v1[j], v1[j] = v2[j];
    } else {
      for (int j = 0; j < G; ++j) v0[j] = v2[j];
      if (ow + 1 < ow_n) PERCH_COL(base + 3, v1);
    }
  };
  int64_t ow = 0;
  if constexpr (G == 1) {
    // 16 channels in all (c_n == 16): the outputs of consecutive pixels are adjacent, so four pixels' results are
    // narrowed and stored together as one 64-channel natural-order store (DwStore::store<4>).
    if (c_n == 16) {
      const DwStore st4 = st.widened();
      for (; ow + 4 <= ow_n; ow += 4) {
        __m512i a[4], b[4];
        for (int q = 0; q < 4; ++q) pixel(ow + q, a + q, b + q);
        st4.store<4>(a, y + ow * 16, false);
        if constexpr (kPair) st4.store<4>(b, y2 + ow * 16, false);
      }
    }
  }
  for (; ow < ow_n; ++ow) {
    __m512i a[G], b[G];
    pixel(ow, a, b);
    st.store<G>(a, y + ow * c_n + c0, kUnpack);
    if constexpr (kPair) st.store<G>(b, y2 + ow * c_n + c0, kUnpack);
  }
#undef PERCH_COL
}

using ColsRowFn = void (*)(const DwPlan&, const ColRows&, const int8_t*, int64_t, __mmask64, const DwStore&,
                           const ColIdx&, uint8_t*, uint8_t*);

template <int G, int SW, bool kUnpack, bool kPair>
ColsRowFn pick_cols_mode(int mode, bool flip) {
  if (mode == 2)
    return flip ? cols_row<G, SW, 2, true, kUnpack, kPair> : cols_row<G, SW, 2, false, kUnpack, kPair>;
  return flip ? cols_row<G, SW, 1, true, kUnpack, kPair> : cols_row<G, SW, 1, false, kUnpack, kPair>;
}
// Output-row pairs only at stride 1 in both directions (MobileNet's stride-2 convs are 2 x 2).
template <int G, bool kUnpack = false>
ColsRowFn pick_cols(int sw, int mode, bool flip, bool pair) {
  if (pair) return pick_cols_mode<G, 1, kUnpack, true>(mode, flip);
  return sw == 1 ? pick_cols_mode<G, 1, kUnpack, false>(mode, flip) : pick_cols_mode<G, 2, kUnpack, false>(mode, flip);
}

void dw_rows_cols(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const int64_t c_n = d.channels, vecs = (c_n + 15) / 16;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const bool is_u8 = d.out.type == OutputType::kUInt8;
  const int mode = p.k->rqf_hi32 ? 2 : p.k->rqf_clamp64 ? 1 : 0;
  const int sw = static_cast<int>(d.stride_w);
  const bool flip = p.k->flip;
  static const ColIdx ix;
  const bool pairs = sw == 1 && d.stride_h == 1 && d.dilation_h == 1;
  struct Group {
    int64_t c0;
    __mmask64 mask;
    ColsRowFn fn, fn2;  // one output row; two (pairs only)
    DwStore st;
  };
  thread_local std::vector<Group> groups;
  groups.clear();
  for (int64_t j0 = 0; j0 < vecs; j0 += 4) {
    const int g = static_cast<int>(std::min<int64_t>(4, vecs - j0));
    const int64_t c0 = 16 * j0, valid = std::min<int64_t>(16 * g, c_n - c0);
    const __mmask64 mask = valid == 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
    ColsRowFn fn[2];
    for (int k = 0; k < 2; ++k)
      fn[k] = g == 1        ? pick_cols<1>(sw, mode, flip, k == 1)
              : g == 2      ? pick_cols<2>(sw, mode, flip, k == 1)
              : g == 3      ? pick_cols<3>(sw, mode, flip, k == 1)
              : valid == 64 ? pick_cols<4, true>(sw, mode, flip, k == 1)
                            : pick_cols<4>(sw, mode, flip, k == 1);
    groups.push_back(Group{c0, mask, fn[0], fn[1], DwStore(p.k->rq, mask, g, is_u8)});
  }
  // Output rows (or row pairs) outermost: the input rows they read stay in L1 across the channel groups.
  for (int64_t r = r0; r < r1;) {
    const int64_t n = r / p.oh, oh = r % p.oh;
    const bool pair = pairs && r + 1 < r1 && oh + 1 < p.oh;
    const uint8_t* rows[4];  // row 3 is read only by a pair
    bool inside[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t ih = oh * d.stride_h - d.pad_top + k * d.dilation_h;
      inside[k] = ih >= 0 && ih < d.in_h;
      rows[k] = inside[k] ? x + (n * d.in_h + ih) * d.in_w * c_n : p.k->zrow.data();
    }
    uint8_t* y = static_cast<uint8_t*>(d.y) + (n * p.oh + oh) * p.ow * c_n;
    for (const Group& gr : groups) {
      ColRows cr;
      for (int k = 0; k < 4; ++k) {
        cr.row[k] = rows[k] + gr.c0;
        cr.step[k] = inside[k] ? c_n : 0;
      }
      (pair ? gr.fn2 : gr.fn)(p, cr, d.w->vnni_cols.data() + gr.c0 * 3 * 4, gr.c0, gr.mask, gr.st, ix, y,
                              y + p.ow * c_n);
    }
    r += pair ? 2 : 1;
  }
}

void dw_rows_cached(const DwPlan& p, int64_t r0, int64_t r1) {
  const DepthwiseS8Args& d = *p.d;
  const PackedDepthwiseS8& w = *d.w;
  const int64_t c_n = d.channels, kh_n = w.kh, blocks = (c_n + 63) / 64;
  // kw > 4: qn quads per input row (taps 4 q .. 4 q + 3), each its own cache slot and its own virtual kernel row
  // v = r * qn + q of the weights (PackedDepthwiseS8::vnni_rows): the compute loop sees vr = kh * qn rows.
  const int64_t qn = (w.kw + 3) / 4, vr = kh_n * qn, span = kh_n * d.dilation_h;
  const int64_t slots = span * qn, row_bytes = p.ow * 256;
  const uint8_t* x = static_cast<const uint8_t*>(d.x);
  const __m512i flip = _mm512_set1_epi8(p.k->flip ? static_cast<char>(0x80) : 0);
  const bool is32 = d.out.type == OutputType::kInt32, is_u8 = d.out.type == OutputType::kUInt8;
  // Thread-local: [slots quad rows][one quad of zero points (256 bytes)]; tags[slot] = n * in_h + ih.
  thread_local std::vector<uint8_t> buf;
  thread_local std::vector<int64_t> tags;
  const size_t need = static_cast<size_t>(slots * row_bytes + 256 + 64);
  if (buf.size() < need) buf.resize(need);
  uint8_t* qbuf = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  uint8_t* zquad = qbuf + slots * row_bytes;
  const __m512i zq = _mm512_xor_si512(_mm512_set1_epi8(static_cast<char>(p.k->zrow[0])), flip);
  for (int j = 0; j < 4; ++j) _mm512_store_si512(zquad + 64 * j, zq);
  tags.assign(static_cast<size_t>(slots), -1);
  std::vector<const uint8_t*> qb(static_cast<size_t>(vr));
  std::vector<int64_t> qs(static_cast<size_t>(vr));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * 64, valid = std::min<int64_t>(64, c_n - c0);
    const int g = static_cast<int>((valid + 15) / 16);
    const __mmask64 mask = valid == 64 ? ~__mmask64{0} : (__mmask64{1} << valid) - 1;
    const int8_t* wb = w.vnni_rows.data() + c0 * vr * 4;  // block b: vr virtual rows of g vectors
    std::fill(tags.begin(), tags.end(), -1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / p.oh, oh = r % p.oh;
      for (int64_t k = 0; k < kh_n; ++k) {
        const int64_t ih = oh * d.stride_h - d.pad_top + k * d.dilation_h;
        for (int64_t qd = 0; qd < qn; ++qd) {
          const size_t v = static_cast<size_t>(k * qn + qd);
          if (ih < 0 || ih >= d.in_h) {
            qb[v] = zquad;
            qs[v] = 0;
            continue;
          }
          const int64_t slot = (ih % span) * qn + qd, tag = n * d.in_h + ih;
          uint8_t* q = qbuf + slot * row_bytes;
          if (tags[static_cast<size_t>(slot)] != tag) {
            const uint8_t* row = x + (n * d.in_h + ih) * d.in_w * c_n;
            const uint8_t* z = p.k->zrow.data();
            const int64_t pl = d.pad_left - 4 * qd * d.dilation_w;
            const int64_t kwq = std::min<int64_t>(4, w.kw - 4 * qd);  // taps in this quad
            switch (kwq * 2 + (p.k->flip ? 1 : 0)) {
              case 2: build_quads<1, false>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 3: build_quads<1, true>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 4: build_quads<2, false>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 5: build_quads<2, true>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 6: build_quads<3, false>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 7: build_quads<3, true>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              case 8: build_quads<4, false>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
              default: build_quads<4, true>(d, pl, row, z, p.ow, c0, mask, g, flip, q); break;
            }
            tags[static_cast<size_t>(slot)] = tag;
          }
          qb[v] = q;
          qs[v] = g * 64;
        }
      }
      const int64_t out_row = (n * p.oh + oh) * p.ow * c_n;
      if (is32) {
        row_i32(p, vr, g, qb.data(), qs.data(), wb, c0, valid, static_cast<int32_t*>(d.y) + out_row);
        continue;
      }
      uint8_t* y = static_cast<uint8_t*>(d.y) + out_row;
      switch (g) {
        case 1: row_u8_any<1>(p, vr, qb.data(), qs.data(), wb, c0, mask, is_u8, y); break;
        case 2: row_u8_any<2>(p, vr, qb.data(), qs.data(), wb, c0, mask, is_u8, y); break;
        case 3: row_u8_any<3>(p, vr, qb.data(), qs.data(), wb, c0, mask, is_u8, y); break;
        default: row_u8_any<4>(p, vr, qb.data(), qs.data(), wb, c0, mask, is_u8, y); break;
      }
    }
  }
}

}  // namespace

void dw_rows_avx512vnni(const DwPlan& p, int64_t r0, int64_t r1) {
  if (p.k->cols)  // chosen by depthwise_s8 where the CPU has AVX-512 VBMI; channel tables in natural order
    dw_rows_cols(p, r0, r1);
  else if (p.k->cached)  // chosen by depthwise_s8 (dwconv_s8.cpp), which orders the channel tables to match
    dw_rows_cached(p, r0, r1);
  else
    dw_rows_generic(p, r0, r1);
}
}  // namespace perch::kernels::s8

#else  // the compiler cannot target AVX-512 VNNI: a stub, never called (avx512vnni_compiled() is false)

namespace perch::kernels::s8 {
void dw_rows_avx512vnni(const DwPlan&, int64_t, int64_t) {}
}  // namespace perch::kernels::s8

#endif
