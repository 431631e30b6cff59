// depthwise_s8: packing, validation, the reference twin, the per-call plan and the dispatch (dwconv_s8.h).
#include <algorithm>
#include <atomic>
#include <cstring>

#include "perch/core/cpu.h"
#include "perch/core/error.h"
#include "perch/core/threads.h"
#include "perch/kernels/dwconv_s8.h"
#include "s8_internal.h"

namespace perch::kernels {

PackedDepthwiseS8 pack_depthwise_s8(const int8_t* w, int64_t channels, int64_t kh, int64_t kw) {
  PERCH_CHECK(channels >= 1 && kh >= 1 && kw >= 1, "pack_depthwise_s8: channels=", channels, " kernel ", kh, "x", kw);
  PERCH_CHECK(kh * kw <= 65793, "pack_depthwise_s8: ", kh, "x", kw, " taps exceed the int32 bound (32640 * taps < 2^31)");
  PERCH_CHECK(w != nullptr, "pack_depthwise_s8: null weights");
  PackedDepthwiseS8 p;
  p.channels = channels;
  p.kh = kh;
  p.kw = kw;
  const int64_t taps = kh * kw;
  p.plain.assign(w, w + channels * taps);
  p.w_sum.assign(static_cast<size_t>(channels), 0);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t t = 0; t < taps; ++t) p.w_sum[static_cast<size_t>(c)] += w[c * taps + t];
  auto wt = [&](int64_t c, int64_t t) -> int8_t { return (c < channels && t < taps) ? w[c * taps + t] : 0; };
  // VNNI: 64-channel blocks, 4-tap groups, 4 vectors; byte 16 l + 4 i + t of vector j = w[64 b + 16 l + 4 j + i][4 g + t].
  const int64_t blocks64 = (channels + 63) / 64, groups = (taps + 3) / 4;
  p.vnni.assign(static_cast<size_t>(blocks64 * groups * 4 * 64), 0);
  for (int64_t b = 0; b < blocks64; ++b)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t j = 0; j < 4; ++j)
        for (int64_t l = 0; l < 4; ++l)
          for (int64_t i = 0; i < 4; ++i)
            for (int64_t t = 0; t < 4; ++t)
              p.vnni[static_cast<size_t>(((b * groups + g) * 4 + j) * 64 + 16 * l + 4 * i + t)] =
                  wt(64 * b + 16 * l + 4 * j + i, 4 * g + t);
  // AVX2: 16-channel blocks, tap pairs, 2 vectors; element 8 l + 2 i + t of vector h = w[16 b + 8 l + 4 h + i][2 p + t].
  const int64_t blocks16 = (channels + 15) / 16, pairs = (taps + 1) / 2;
  p.avx2.assign(static_cast<size_t>(blocks16 * pairs * 2 * 16), 0);
  for (int64_t b = 0; b < blocks16; ++b)
    for (int64_t q = 0; q < pairs; ++q)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t l = 0; l < 2; ++l)
          for (int64_t i = 0; i < 4; ++i)
            for (int64_t t = 0; t < 2; ++t)
              p.avx2[static_cast<size_t>(((b * pairs + q) * 2 + h) * 16 + 8 * l + 2 * i + t)] =
                  wt(16 * b + 8 * l + 4 * h + i, 2 * q + t);
  auto wr = [&](int64_t c, int64_t r, int64_t t) -> int8_t { return (c < channels && t < kw) ? w[(c * kh + r) * kw + t] : 0; };
  if (kw <= 8) {
    const int64_t qn = (kw + 3) / 4, vr = kh * qn;  // virtual row r * qn + q: taps 4 q .. 4 q + 3 of row r
    p.vnni_rows.assign(static_cast<size_t>((channels + 15) / 16 * vr * 64), 0);
    for (int64_t b = 0; b < blocks64; ++b) {
      const int64_t g = std::min<int64_t>(4, (channels - 64 * b + 15) / 16);  // vectors in this block
      const bool full = 64 * b + 64 <= channels;
      for (int64_t v = 0; v < vr; ++v)
        for (int64_t j = 0; j < g; ++j)
          for (int64_t i = 0; i < 16; ++i)  // byte 4 i + t of vector j
            for (int64_t t = 0; t < 4; ++t)
              p.vnni_rows[static_cast<size_t>(256 * b * vr + (v * g + j) * 64 + 4 * i + t)] =
                  wr(full ? 64 * b + 16 * (i / 4) + 4 * j + i % 4 : 64 * b + 16 * j + i, v / qn, 4 * (v % qn) + t);
    }
  }
  if (kh == 3 && kw == 3) {
    p.vnni_cols.assign(static_cast<size_t>(blocks16 * 3 * 64), 0);
    for (int64_t v = 0; v < blocks16; ++v) {
      const int64_t b = v / 4, j = v % 4;
      const bool full = 64 * b + 64 <= channels;
      for (int64_t k = 0; k < 3; ++k)
        for (int64_t i = 0; i < 16; ++i)
          for (int64_t r = 0; r < 3; ++r)
            p.vnni_cols[static_cast<size_t>((v * 3 + k) * 64 + 4 * i + r)] =
                wr(full ? 64 * b + 16 * (i / 4) + 4 * j + i % 4 : 16 * v + i, r, k);
    }
  }
  if (kw <= 4) {
    const int64_t rp = (kw + 1) / 2;
    p.avx2_rows.assign(static_cast<size_t>(blocks16 * kh * rp * 32), 0);
    for (int64_t b = 0; b < blocks16; ++b)
      for (int64_t r = 0; r < kh; ++r)
        for (int64_t q = 0; q < rp; ++q)
          for (int64_t h = 0; h < 2; ++h)
            for (int64_t l = 0; l < 2; ++l)
              for (int64_t i = 0; i < 4; ++i)
                for (int64_t t = 0; t < 2; ++t)
                  p.avx2_rows[static_cast<size_t>((((b * kh + r) * rp + q) * 2 + h) * 16 + 8 * l + 2 * i + t)] =
                      wr(16 * b + 8 * l + 4 * h + i, r, 2 * q + t);
  }
  return p;
}

void validate(const DepthwiseS8Args& d) {
  PERCH_CHECK(d.w != nullptr && !d.w->plain.empty(), "depthwise_s8: no packed weights");
  PERCH_CHECK(d.channels == d.w->channels, "depthwise_s8: input has ", d.channels, " channels, weights ", d.w->channels);
  PERCH_CHECK(d.batch >= 0 && d.in_h >= 1 && d.in_w >= 1, "depthwise_s8: bad input shape ", d.batch, "x", d.in_h, "x",
              d.in_w);
  PERCH_CHECK(d.stride_h >= 1 && d.stride_w >= 1 && d.dilation_h >= 1 && d.dilation_w >= 1,
              "depthwise_s8: strides and dilations must be >= 1");
  PERCH_CHECK(d.pad_top >= 0 && d.pad_left >= 0 && d.pad_bottom >= 0 && d.pad_right >= 0,
              "depthwise_s8: negative padding");
  PERCH_CHECK(d.out_h() >= 1 && d.out_w() >= 1, "depthwise_s8: the dilated ", d.w->kh, "x", d.w->kw,
              " kernel does not fit the padded ", d.in_h, "x", d.in_w, " input");
  PERCH_CHECK(d.batch == 0 || (d.x != nullptr && d.y != nullptr), "depthwise_s8: null input or output");
  const int32_t alo = d.x_type == Act8::kUInt8 ? 0 : -128;
  PERCH_CHECK(d.x_zero_point >= alo && d.x_zero_point <= alo + 255, "depthwise_s8: input zero point ",
              d.x_zero_point, " outside the input type's range");
  const OutputStageS8& o = d.out;
  if (o.type == OutputType::kInt32) return;
  PERCH_CHECK(o.multipliers != nullptr && (o.num_multipliers == 1 || o.num_multipliers == d.channels),
              "depthwise_s8: ", o.num_multipliers, " multipliers for ", d.channels, " channels (need 1 or C)");
  for (int64_t j = 0; j < o.num_multipliers; ++j) {
    const auto m = o.multipliers[j];
    PERCH_CHECK((m.multiplier == 0 && m.shift == 0) || m.multiplier >= (1 << 30), "depthwise_s8: multiplier ", j,
                " = ", m.multiplier, " is not in [2^30, 2^31) (nor {0, 0})");
  }
  const int32_t lo = o.type == OutputType::kUInt8 ? 0 : -128, hi = lo + 255;
  PERCH_CHECK(o.qmin >= lo && o.qmin <= o.qmax && o.qmax <= hi, "depthwise_s8: clamp [", o.qmin, ", ", o.qmax,
              "] is empty or outside the output type's range");
  PERCH_CHECK(o.zero_point >= lo && o.zero_point <= hi, "depthwise_s8: output zero point ", o.zero_point,
              " outside the output type's range");
}

namespace {

void reference_rows(const DepthwiseS8Args& d, int64_t r0, int64_t r1) {
  const PackedDepthwiseS8& w = *d.w;
  const int64_t oh_n = d.out_h(), ow_n = d.out_w(), c_n = d.channels, taps = w.kh * w.kw;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / oh_n, oh = r % oh_n;
    for (int64_t ow = 0; ow < ow_n; ++ow)
      for (int64_t c = 0; c < c_n; ++c) {
        // |x - zx| <= 255, |w| <= 128, taps <= 65793: the sum fits int32.
        int64_t acc = 0;
        for (int64_t kh = 0; kh < w.kh; ++kh)
          for (int64_t kw = 0; kw < w.kw; ++kw) {
            const int64_t ih = oh * d.stride_h - d.pad_top + kh * d.dilation_h;
            const int64_t iw = ow * d.stride_w - d.pad_left + kw * d.dilation_w;
            if (ih < 0 || ih >= d.in_h || iw < 0 || iw >= d.in_w) continue;  // padding: x == zx adds 0
            const int64_t at = ((n * d.in_h + ih) * d.in_w + iw) * c_n + c;
            const int64_t x = d.x_type == Act8::kUInt8 ? int64_t{static_cast<const uint8_t*>(d.x)[at]}
                                                       : int64_t{static_cast<const int8_t*>(d.x)[at]};
            acc += (x - d.x_zero_point) * w.plain[static_cast<size_t>(c * taps + kh * w.kw + kw)];
          }
        const uint32_t b = d.bias ? static_cast<uint32_t>(d.bias[c]) : 0u;
        const int32_t v = static_cast<int32_t>(b + static_cast<uint32_t>(acc));
        const int64_t out = ((n * oh_n + oh) * ow_n + ow) * c_n + c;
        const OutputStageS8& o = d.out;
        if (o.type == OutputType::kInt32) {
          static_cast<int32_t*>(d.y)[out] = v;
        } else {
          const int32_t q = s8::requantize_one(v, o.multipliers[o.num_multipliers == 1 ? 0 : c], o);
          if (o.type == OutputType::kUInt8)
            static_cast<uint8_t*>(d.y)[out] = static_cast<uint8_t>(q);
          else
            static_cast<int8_t*>(d.y)[out] = static_cast<int8_t>(q);
        }
      }
  }
}

}  // namespace

namespace s8 {
void make_fast_requant(const RequantTables& rq, int g, std::vector<int64_t>& rqf, bool& clamp64, bool& hi32) {
  const size_t n = rq.mult.size(), half = static_cast<size_t>(g / 2), gs = static_cast<size_t>(g);
  rqf.assign(n / gs * 8 * half, 0);
  clamp64 = false;
  hi32 = true;
  for (size_t c = 0; c < n; ++c) {
    // mult == 0 (M == 0, and the padding channels) gives 0 with any shift: take S = 33, which keeps hi32.
    const int64_t sh = rq.mult[c] == 0 ? 33 : rq.sh64[c];
    if (sh < 33) hi32 = false;
    if (sh < 31) clamp64 = true;
    const int64_t rnd = int64_t{1} << (sh - 1), adj = 0;
    const size_t k = (c % gs) / 2, odd = c % 2;
    int64_t* t = rqf.data() + c / gs * 8 * half;
    t[(0 + odd) * half + k] = rq.mult[c];
    t[(2 + odd) * half + k] = rnd;
    t[(4 + odd) * half + k] = adj;
    t[(6 + odd) * half + k] = sh;
  }
  // hi32 layout (DwConst::rqf_hi32): the rnd_e and sh_e arrays (g / 2 int64 slots each) hold instead g int32
  // constants 2^(sh - 33) and g int32 shift counts sh - 32, one per channel of the group in accumulator order.
  if (hi32)
    for (size_t grp = 0; grp < n / gs; ++grp) {
      int64_t* t = rqf.data() + grp * 8 * half;
      int32_t s32[16], r32[16];
      for (size_t k = 0; k < gs; ++k) {
        s32[k] = static_cast<int32_t>(t[(6 + k % 2) * half + k / 2] - 32);
        r32[k] = int32_t{1} << (s32[k] - 1);
      }
      std::memcpy(t + 2 * half, r32, gs * 4);  // g int32 = the half int64 of rnd_e
      std::memset(t + 3 * half, 0, half * 8);  // rnd_o is not read
      std::memcpy(t + 6 * half, s32, gs * 4);  // g int32 = the half int64 of sh_e
      std::memset(t + 7 * half, 0, half * 8);  // sh_o is not read
    }
}
void make_dw_fast_requant(DwConst& p, int g) { make_fast_requant(p.rq, g, p.rqf, p.rqf_clamp64, p.rqf_hi32); }
}  // namespace s8

namespace {

enum class DwKernel { kReference, kAvx2, kAvx512Vnni, kAvx512VnniRows, kAvx512VnniCols };

// Index map into the accumulator order of `k`: position p holds channel order[p] (see s8_internal.h, DwPlan).
std::vector<int32_t> channel_order(size_t padded, DwKernel k, int64_t channels) {
  std::vector<int32_t> out(padded);
  for (size_t p = 0; p < padded; ++p) {
    size_t c;
    // Rows / Cols: full 64-channel blocks as kAvx512Vnni, the last partial one natural.
    if (k == DwKernel::kAvx512VnniRows || k == DwKernel::kAvx512VnniCols) {
      const size_t b = p / 64, pp = p % 64, j = pp / 16, l = (pp % 16) / 4, i = pp % 4;
      c = static_cast<int64_t>(64 * b + 64) <= channels ? 64 * b + 16 * l + 4 * j + i : p;
    } else if (k == DwKernel::kAvx512Vnni) {
      const size_t b = p / 64, pp = p % 64, j = pp / 16, l = (pp % 16) / 4, i = pp % 4;
      c = 64 * b + 16 * l + 4 * j + i;
    } else {
      const size_t b = p / 16, pp = p % 16, h = pp / 8, l = (pp % 8) / 4, i = pp % 4;
      c = 16 * b + 8 * l + 4 * h + i;
    }
    out[p] = static_cast<int32_t>(c);
  }
  return out;
}

template <typename T>
void permute(std::vector<T>& v, const std::vector<int32_t>& order) {
  std::vector<T> out(v.size());
  for (size_t p = 0; p < v.size(); ++p) out[p] = v[static_cast<size_t>(order[p])];
  v.swap(out);
}

}  // namespace

void depthwise_s8_reference(const DepthwiseS8Args& d) {
  validate(d);
  reference_rows(d, 0, d.batch * d.out_h());
}

namespace {

// The path for d under the active path set (kReference, kAvx2 or kAvx512Vnni), given whether the output stage
// fits the SIMD paths.
DwKernel pick_dw(const DepthwiseS8Args& d, bool rq_ok) {
  const uint32_t paths = active_paths();
  if (rq_ok && has_path(paths, Path::kAvx512Vnni) && s8::avx512vnni_compiled() && !d.w->vnni.empty())
    return DwKernel::kAvx512Vnni;
  if (rq_ok && has_path(paths, Path::kAvx2) && s8::avx2_compiled() && !d.w->avx2.empty()) return DwKernel::kAvx2;
  return DwKernel::kReference;
}

// Row-cached kernels for kw <= 8 (VNNI) / kw <= 4 (AVX2) while their row cache (kh * dilation_h input rows, each
// transformed into ceil(kw / 4) quad rows on VNNI) stays within 8 MB (s8_internal.h,
// DwConst::cached).
bool use_cached(const DepthwiseS8Args& d, DwKernel k) {
  const int64_t ow = d.out_w();
  const bool vnni = k == DwKernel::kAvx512Vnni;
  const int64_t row_bytes = vnni ? ow * 256 * ((d.w->kw + 3) / 4) : ow * ((d.w->kw + 1) / 2) * 64;
  return d.w->kw <= (vnni ? 8 : 4) && d.w->kh * d.dilation_h * row_bytes <= (int64_t{8} << 20) &&
         !(vnni ? d.w->vnni_rows.empty() : d.w->avx2_rows.empty());
}

std::atomic<bool> g_cols_enabled{true};

// The VNNI column-quad kernel (dwconv_s8_avx512vnni.cpp): 3x3, stride_w 1 or 2, dilation_w 1, 8-bit output, on a CPU
// with AVX-512 VBMI (its byte permutes).
// The parts that do not depend on the call's geometry: 8-bit output, 3x3 weights (vnni_cols is packed only for those).
bool cols_weights(const DepthwiseS8Args& d) { return d.out.type != OutputType::kInt32 && !d.w->vnni_cols.empty(); }
bool use_cols(const DepthwiseS8Args& d, DwKernel k) {
  static const bool vbmi = cpu_features().avx512vbmi;
  return k == DwKernel::kAvx512Vnni && vbmi && g_cols_enabled.load(std::memory_order_relaxed) && cols_weights(d) &&
         d.dilation_w == 1 && (d.stride_w == 1 || d.stride_w == 2);
}

// The constants of kernel k (kAvx2, kAvx512Vnni or kAvx512VnniCols), row-cached or not; the VNNI row-cached kernel
// and the column-quad one keep the last partial 64-channel block in natural order.
s8::DwConst make_dw_const(const DepthwiseS8Args& d, DwKernel k, bool cached) {
  s8::DwConst p;
  const int64_t padded = (d.channels + 63) / 64 * 64;
  if (d.out.type != OutputType::kInt32) p.rq = s8::make_requant_tables(d.out, d.channels, padded);
  p.flip = d.x_type == Act8::kInt8;
  p.zrow.assign(static_cast<size_t>(padded + 64), static_cast<uint8_t>(d.x_zero_point));
  const uint32_t za = static_cast<uint32_t>(d.x_zero_point + (p.flip ? 128 : 0));
  std::vector<int32_t> off(static_cast<size_t>(padded), 0);
  for (int64_t c = 0; c < d.channels; ++c)
    off[static_cast<size_t>(c)] = static_cast<int32_t>((d.bias ? static_cast<uint32_t>(d.bias[c]) : 0u) -
                                                       za * static_cast<uint32_t>(d.w->w_sum[static_cast<size_t>(c)]));
  p.cached = cached;
  p.cols = k == DwKernel::kAvx512VnniCols;
  const DwKernel order = k == DwKernel::kAvx512Vnni && cached ? DwKernel::kAvx512VnniRows : k;
  const std::vector<int32_t> ord = channel_order(static_cast<size_t>(padded), order, d.channels);
  permute(off, ord);
  p.off = std::move(off);
  if (d.out.type != OutputType::kInt32) {
    permute(p.rq.mult, ord);
    permute(p.rq.sh64, ord);
    if (cached || p.cols) s8::make_dw_fast_requant(p, k == DwKernel::kAvx2 ? 8 : 16);
  }
  return p;
}

void dw_run(const DepthwiseS8Args& d, DwKernel k, const s8::DwConst* kc) {
  const int64_t rows = d.batch * d.out_h();
  const int64_t ops = rows * d.out_w() * d.channels * d.w->kh * d.w->kw;
  const int threads = ops < (int64_t{1} << 16) ? 1 : num_threads();
  if (k == DwKernel::kReference) {
    if (threads <= 1) return reference_rows(d, 0, rows);
    return parallel_for(0, rows, [&](int64_t lo, int64_t hi) { reference_rows(d, lo, hi); });
  }
  s8::DwPlan p;
  p.d = &d;
  p.oh = d.out_h();
  p.ow = d.out_w();
  p.k = kc;
  auto body = [&](int64_t lo, int64_t hi) {
    if (k == DwKernel::kAvx512Vnni || k == DwKernel::kAvx512VnniCols)
      s8::dw_rows_avx512vnni(p, lo, hi);
    else
      s8::dw_rows_avx2(p, lo, hi);
  };
  if (threads <= 1) return body(0, rows);
  parallel_for(0, rows, body);
}

bool rq_simd_ok(const DepthwiseS8Args& d) {
  if (d.out.type == OutputType::kInt32) return true;
  for (int64_t j = 0; j < d.out.num_multipliers; ++j)
    if (d.out.multipliers[j].shift < -31 || d.out.multipliers[j].shift > 30) return false;
  return true;
}

}  // namespace

void depthwise_s8(const DepthwiseS8Args& d) {
  validate(d);
  if (d.batch * d.out_h() == 0) return;
  const DwKernel k = pick_dw(d, rq_simd_ok(d));
  if (k == DwKernel::kReference) return dw_run(d, k, nullptr);
  if (use_cols(d, k)) {
    const s8::DwConst kc = make_dw_const(d, DwKernel::kAvx512VnniCols, false);
    return dw_run(d, DwKernel::kAvx512VnniCols, &kc);
  }
  const s8::DwConst kc = make_dw_const(d, k, use_cached(d, k));
  dw_run(d, k, &kc);
}

void set_depthwise_s8_column_kernel(bool enabled) { g_cols_enabled.store(enabled, std::memory_order_relaxed); }

// Variants by (kernel, cached): [0] VNNI cached, [1] VNNI per-pixel, [2] AVX2 cached, [3] AVX2 per-pixel, [4] VNNI
// column-quad; built for every path the CPU supports, so a later change of the active paths (PERCH_PATHS in tests)
// still finds its own.
struct DepthwiseS8Prepared {
  s8::DwConst v[5];
  bool have[5] = {false, false, false, false, false};
  bool rq_ok = true;
  const PackedDepthwiseS8* w = nullptr;
  Act8 x_type = Act8::kUInt8;
  int32_t x_zero_point = 0;
  OutputType out_type = OutputType::kUInt8;
};

std::shared_ptr<const DepthwiseS8Prepared> prepare_depthwise_s8(const DepthwiseS8Args& d) {
  auto p = std::make_shared<DepthwiseS8Prepared>();
  p->w = d.w, p->x_type = d.x_type, p->x_zero_point = d.x_zero_point, p->out_type = d.out.type;
  p->rq_ok = rq_simd_ok(d);
  const uint32_t sup = supported_paths();
  for (int i = 0; i < 4; ++i) {
    const DwKernel k = i < 2 ? DwKernel::kAvx512Vnni : DwKernel::kAvx2;
    const bool ok = k == DwKernel::kAvx512Vnni
                        ? has_path(sup, Path::kAvx512Vnni) && s8::avx512vnni_compiled() && !d.w->vnni.empty()
                        : has_path(sup, Path::kAvx2) && s8::avx2_compiled() && !d.w->avx2.empty();
    const bool cached = i % 2 == 0;
    if (!ok || !p->rq_ok) continue;
    if (cached && (d.w->kw > (k == DwKernel::kAvx512Vnni ? 8 : 4) ||
                   (k == DwKernel::kAvx512Vnni ? d.w->vnni_rows.empty() : d.w->avx2_rows.empty())))
      continue;
    p->v[i] = make_dw_const(d, k, cached);
    p->have[i] = true;
  }
  // The column-quad variant where it can run (the stride is the call's; stride_w 1 and 2 share the constants).
  if (p->have[1] && cols_weights(d)) {
    p->v[4] = make_dw_const(d, DwKernel::kAvx512VnniCols, false);
    p->have[4] = true;
  }
  return p;
}

void depthwise_s8(const DepthwiseS8Args& d, const DepthwiseS8Prepared& prep) {
  validate(d);
  PERCH_CHECK(prep.w == d.w && prep.x_type == d.x_type && prep.x_zero_point == d.x_zero_point &&
                  prep.out_type == d.out.type,
              "depthwise_s8: the prepared constants were made for other weights, input type/zero point or output type");
  if (d.batch * d.out_h() == 0) return;
  const DwKernel k = pick_dw(d, prep.rq_ok);
  if (k == DwKernel::kReference) return dw_run(d, k, nullptr);
  if (use_cols(d, k)) {
    if (!prep.have[4]) return depthwise_s8(d);
    return dw_run(d, DwKernel::kAvx512VnniCols, &prep.v[4]);
  }
  const int i = (k == DwKernel::kAvx512Vnni ? 0 : 2) + (use_cached(d, k) ? 0 : 1);
  if (!prep.have[i]) return depthwise_s8(d);  // not prepared for this path (cannot happen for supported paths)
  dw_run(d, k, &prep.v[i]);
}

}  // namespace perch::kernels
