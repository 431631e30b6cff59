// gemm_s8: packing, validation, the reference twin, the per-call plan and the dispatch (header: gemm_s8.h).
#include "perch/kernels/gemm_s8.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "perch/core/cpu.h"
#include "perch/core/error.h"
#include "perch/core/threads.h"
#include "s8_internal.h"

namespace perch::kernels {

void PackedWeightsS8::Free::operator()(int8_t* p) const { std::free(p); }

namespace {

template <typename T>
PackedWeightsS8 pack_impl(const T* w, int64_t k, int64_t n, WeightLayout layout, std::span<const int32_t> zps,
                          int32_t shift, int32_t zp_lo, int32_t zp_hi) {
  PERCH_CHECK(k >= 1 && n >= 1, "pack_weights: K and N must be >= 1, got K=", k, " N=", n);
  PERCH_CHECK(k <= kMaxGemmS8K, "pack_weights: K=", k, " exceeds ", kMaxGemmS8K,
              " (the int32 accumulator bound 65025 * K < 2^31)");
  PERCH_CHECK(w != nullptr, "pack_weights: null weights");
  PERCH_CHECK(zps.empty() || zps.size() == 1 || static_cast<int64_t>(zps.size()) == n, "pack_weights: ",
              zps.size(), " zero points for N=", n, " (need 0, 1 or N)");
  for (int32_t z : zps)
    PERCH_CHECK(z >= zp_lo && z <= zp_hi, "pack_weights: weight zero point ", z, " outside [", zp_lo, ", ", zp_hi, "]");
  PackedWeightsS8 p;
  p.k = k;
  p.n = n;
  p.k_groups = (k + 3) / 4;
  p.panels = (n + PackedWeightsS8::kPanel - 1) / PackedWeightsS8::kPanel;
  p.panel_stride = p.k_groups * 64;
  const size_t bytes = static_cast<size_t>(p.panels * p.panel_stride);
  p.data.reset(static_cast<int8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  if (!p.data) throw std::bad_alloc();
  std::memset(p.data.get(), 0, bytes);
  p.col_sums.assign(static_cast<size_t>(n), 0);
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t j = 0; j < n; ++j) {
      const int32_t v = static_cast<int32_t>(layout == WeightLayout::kKN ? w[kk * n + j] : w[j * k + kk]) + shift;
      p.data[(j / 16) * p.panel_stride + (kk / 4) * 64 + (j % 16) * 4 + kk % 4] = static_cast<int8_t>(v);
      p.col_sums[static_cast<size_t>(j)] += v;
    }
  bool any = false;
  for (int32_t z : zps) any = any || (z + shift) != 0;
  if (any) {
    p.zero_points.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) p.zero_points[static_cast<size_t>(j)] = zps[zps.size() == 1 ? 0 : j] + shift;
  }
  return p;
}

// The activation and its zero point as the unsigned kernels see them (int8 shifted by +128).
inline int32_t act_u(const GemmS8Args& g, int64_t i, int64_t kk) {
  return g.a_type == Act8::kUInt8 ? int32_t{static_cast<const uint8_t*>(g.a)[i * g.lda + kk]}
                                  : int32_t{static_cast<const int8_t*>(g.a)[i * g.lda + kk]} + 128;
}
inline int32_t za_u(const GemmS8Args& g) { return g.a_zero_point + (g.a_type == Act8::kInt8 ? 128 : 0); }

void store_one(const GemmS8Args& g, int64_t i, int64_t j, int32_t acc) {
  const OutputStageS8& o = g.out;
  if (o.type == OutputType::kInt32) {
    static_cast<int32_t*>(g.c)[i * g.ldc + j] = acc;
    return;
  }
  const auto m = o.multipliers[o.num_multipliers == 1 ? 0 : j];
  const int32_t v = s8::requantize_one(acc, m, o);
  if (o.type == OutputType::kUInt8)
    static_cast<uint8_t*>(g.c)[i * g.ldc + j] = static_cast<uint8_t>(v);
  else
    static_cast<int8_t*>(g.c)[i * g.ldc + j] = static_cast<int8_t>(v);
}

// The reference twin's loops on output rows [m0, m1) x columns [n0, n1).
void reference_block(const GemmS8Args& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const PackedWeightsS8& w = *g.w;
  const int64_t za = za_u(g);
  for (int64_t i = m0; i < m1; ++i)
    for (int64_t j = n0; j < n1; ++j) {
      const int64_t zw = w.zero_points.empty() ? 0 : w.zero_points[static_cast<size_t>(j)];
      // |a - za| <= 255, |w - zw| <= 255, K <= kMaxGemmS8K: the sum fits int32 (and trivially int64).
      int64_t acc = 0;
      for (int64_t kk = 0; kk < w.k; ++kk) acc += (act_u(g, i, kk) - za) * (w.at(kk, j) - zw);
      const uint32_t b = g.bias ? static_cast<uint32_t>(g.bias[j]) : 0u;
      store_one(g, i, j, static_cast<int32_t>(b + static_cast<uint32_t>(acc)));  // bias wraps, as documented
    }
}

// The indirect twin: A[i][kk] = rows[i * taps + kk / C][kk % C] (gemm_s8.h), same loops otherwise.
void reference_indirect_block(const GemmS8Args& g, const IndirectRowsS8& ind, int64_t m0, int64_t m1, int64_t n0,
                              int64_t n1) {
  const PackedWeightsS8& w = *g.w;
  const int64_t za = za_u(g), C = ind.channels;
  const bool s = g.a_type == Act8::kInt8;
  for (int64_t i = m0; i < m1; ++i)
    for (int64_t j = n0; j < n1; ++j) {
      const int64_t zw = w.zero_points.empty() ? 0 : w.zero_points[static_cast<size_t>(j)];
      int64_t acc = 0;
      for (int64_t kk = 0; kk < w.k; ++kk) {
        const uint8_t b = ind.rows[i * ind.taps + kk / C][kk % C];
        const int64_t a = s ? int64_t{static_cast<int8_t>(b)} + 128 : int64_t{b};
        acc += (a - za) * (w.at(kk, j) - zw);
      }
      const uint32_t b = g.bias ? static_cast<uint32_t>(g.bias[j]) : 0u;
      store_one(g, i, j, static_cast<int32_t>(b + static_cast<uint32_t>(acc)));
    }
}

}  // namespace

PackedWeightsS8 pack_weights_s8(const int8_t* w, int64_t k, int64_t n, WeightLayout layout,
                                std::span<const int32_t> zero_points) {
  return pack_impl(w, k, n, layout, zero_points, 0, -128, 127);
}

PackedWeightsS8 pack_weights_u8(const uint8_t* w, int64_t k, int64_t n, WeightLayout layout,
                                std::span<const int32_t> zero_points) {
  return pack_impl(w, k, n, layout, zero_points, -128, 0, 255);
}

namespace s8 {

RequantTables make_requant_tables(const OutputStageS8& out, int64_t channels, int64_t padded) {
  RequantTables t;
  t.mult.assign(static_cast<size_t>(padded), 0);
  t.sh64.assign(static_cast<size_t>(padded), 32);  // padding channels: mult 0, any S gives 0
  for (int64_t j = 0; j < channels; ++j) {
    const auto m = out.multipliers[out.num_multipliers == 1 ? 0 : j];
    if (m.shift < -31 || m.shift > 30) t.simd_ok = false;
    t.mult[static_cast<size_t>(j)] = m.multiplier;
    t.sh64[static_cast<size_t>(j)] = std::clamp(31 - m.shift, 1, 62);
  }
  t.zp = out.zero_point;
  t.lo = out.qmin - out.zero_point;
  t.hi = out.qmax - out.zero_point;
  t.type_range = out.type == OutputType::kUInt8 ? out.qmin == 0 && out.qmax == 255
                 : out.type == OutputType::kInt8 ? out.qmin == -128 && out.qmax == 127
                                                 : false;
  return t;
}

GemmConst make_gemm_const(const GemmS8Args& g) {
  GemmConst p;
  p.flip = g.a_type == Act8::kInt8;
  const PackedWeightsS8& w = *g.w;
  const int64_t np = w.panels * PackedWeightsS8::kPanel;
  const uint32_t za = static_cast<uint32_t>(za_u(g));
  p.col_off.assign(static_cast<size_t>(np), 0);
  for (int64_t j = 0; j < w.n; ++j) {
    const uint32_t b = g.bias ? static_cast<uint32_t>(g.bias[j]) : 0u;
    p.col_off[static_cast<size_t>(j)] = static_cast<int32_t>(b - za * static_cast<uint32_t>(w.col_sums[j]));
  }
  if (!w.zero_points.empty()) {
    p.zw.assign(static_cast<size_t>(np), 0);
    std::copy(w.zero_points.begin(), w.zero_points.end(), p.zw.begin());
  }
  if (g.out.type != OutputType::kInt32) {
    p.rq = make_requant_tables(g.out, w.n, np);
    if (p.rq.simd_ok && has_path(supported_paths(), Path::kAvx512Vnni) && avx512vnni_compiled())
      make_fast_requant(p.rq, 16, p.rqf, p.rqf_clamp64, p.rqf_hi32);
    if (p.rq.simd_ok && has_path(supported_paths(), Path::kAvx2) && avx2_compiled()) {
      // The AVX2 kernel's accumulators hold each group of 8 columns in VPHADDD's order (s8_internal.h).
      RequantTables h = p.rq;
      for (int64_t j = 0; j < np; ++j) {
        const int64_t src = j / 8 * 8 + kAvx2HaddOrder[j % 8];
        h.mult[static_cast<size_t>(j)] = p.rq.mult[static_cast<size_t>(src)];
        h.sh64[static_cast<size_t>(j)] = p.rq.sh64[static_cast<size_t>(src)];
      }
      make_fast_requant(h, 8, p.rqf8, p.rqf8_clamp64, p.rqf8_hi32);
    }
  }
  return p;
}

GemmPlan make_gemm_plan(const GemmS8Args& g, const GemmConst& k) {
  GemmPlan p;
  p.g = &g;
  p.w = g.w;
  p.k = &k;
  const PackedWeightsS8& w = *g.w;
  if (!k.zw.empty()) {
    const uint32_t za = static_cast<uint32_t>(za_u(g));
    p.row_term.resize(static_cast<size_t>(g.m));
    for (int64_t i = 0; i < g.m; ++i) {
      int32_t s = 0;
      if (g.a_type == Act8::kUInt8) {
        const uint8_t* r = static_cast<const uint8_t*>(g.a) + i * g.lda;
        for (int64_t kk = 0; kk < w.k; ++kk) s += r[kk];
      } else {
        const int8_t* r = static_cast<const int8_t*>(g.a) + i * g.lda;
        for (int64_t kk = 0; kk < w.k; ++kk) s += r[kk];
        s += 128 * static_cast<int32_t>(w.k);
      }
      p.row_term[static_cast<size_t>(i)] = s - static_cast<int32_t>(w.k) * static_cast<int32_t>(za);
    }
  }
  return p;
}

GemmPlan make_indirect_plan(const GemmS8Args& g, const IndirectRowsS8& ind, const GemmConst& k) {
  GemmPlan p;
  p.g = &g;
  p.w = g.w;
  p.k = &k;
  p.ind = &ind;
  if (!k.zw.empty()) {
    // row_term[i] = sum_k a_u[i][k] - K za_u (wrapping int32, as make_gemm_plan; |sum| <= 255 K fits anyway).
    const uint32_t za = static_cast<uint32_t>(za_u(g));
    const int64_t K = g.w->k;
    p.row_term.resize(static_cast<size_t>(g.m));
    for (int64_t i = 0; i < g.m; ++i) {
      int32_t s = 0;
      for (int64_t t = 0; t < ind.taps; ++t) {
        const uint8_t* r = ind.rows[i * ind.taps + t];
        if (g.a_type == Act8::kUInt8)
          for (int64_t c = 0; c < ind.channels; ++c) s += r[c];
        else
          for (int64_t c = 0; c < ind.channels; ++c) s += static_cast<int8_t>(r[c]);
      }
      if (g.a_type == Act8::kInt8) s += 128 * static_cast<int32_t>(K);
      p.row_term[static_cast<size_t>(i)] = s - static_cast<int32_t>(K) * static_cast<int32_t>(za);
    }
  }
  return p;
}

}  // namespace s8

void validate(const GemmS8Args& g) {
  PERCH_CHECK(g.w != nullptr && g.w->data, "gemm_s8: no packed weights");
  const int64_t k = g.w->k, n = g.w->n;
  PERCH_CHECK(g.m >= 0, "gemm_s8: M=", g.m, " < 0");
  PERCH_CHECK(g.m == 0 || (g.a != nullptr && g.c != nullptr), "gemm_s8: null A or C");
  PERCH_CHECK(g.lda >= k, "gemm_s8: lda=", g.lda, " < K=", k);
  PERCH_CHECK(g.ldc >= n, "gemm_s8: ldc=", g.ldc, " < N=", n);
  const int32_t alo = g.a_type == Act8::kUInt8 ? 0 : -128, ahi = alo + 255;
  PERCH_CHECK(g.a_zero_point >= alo && g.a_zero_point <= ahi, "gemm_s8: activation zero point ", g.a_zero_point,
              " outside [", alo, ", ", ahi, "]");
  const OutputStageS8& o = g.out;
  if (o.type == OutputType::kInt32) return;
  PERCH_CHECK(o.multipliers != nullptr && (o.num_multipliers == 1 || o.num_multipliers == n), "gemm_s8: ",
              o.num_multipliers, " multipliers for N=", n, " (need 1 or N)");
  for (int64_t j = 0; j < o.num_multipliers; ++j) {
    const auto m = o.multipliers[j];
    PERCH_CHECK((m.multiplier == 0 && m.shift == 0) || (m.multiplier >= (1 << 30)),
                "gemm_s8: multiplier ", j, " = ", m.multiplier, " is not in [2^30, 2^31) (nor {0, 0})");
  }
  const int32_t lo = o.type == OutputType::kUInt8 ? 0 : -128, hi = lo + 255;
  PERCH_CHECK(o.qmin >= lo && o.qmin <= o.qmax && o.qmax <= hi, "gemm_s8: clamp [", o.qmin, ", ", o.qmax,
              "] is empty or outside [", lo, ", ", hi, "]");
  PERCH_CHECK(o.zero_point >= lo && o.zero_point <= hi, "gemm_s8: output zero point ", o.zero_point, " outside [",
              lo, ", ", hi, "]");
}

void gemm_s8_reference(const GemmS8Args& g) {
  validate(g);
  reference_block(g, 0, g.m, 0, g.w->n);
}

void validate_indirect(const GemmS8Args& g, const IndirectRowsS8& ind) {
  PERCH_CHECK(g.w != nullptr && g.w->data, "gemm_s8_indirect: no packed weights");
  PERCH_CHECK(ind.channels >= 4 && ind.channels % 4 == 0, "gemm_s8_indirect: channels=", ind.channels,
              " is not a positive multiple of 4");
  PERCH_CHECK(ind.taps >= 1 && ind.taps * ind.channels == g.w->k, "gemm_s8_indirect: taps=", ind.taps,
              " x channels=", ind.channels, " != K=", g.w->k);
  PERCH_CHECK(g.m == 0 || ind.rows != nullptr, "gemm_s8_indirect: null indirection table");
  // The rest is gemm_s8's check with A replaced by the table (a and lda are not read).
  GemmS8Args v = g;
  v.a = ind.rows;
  v.lda = g.w->k;
  validate(v);
}

void gemm_s8_indirect_reference(const GemmS8Args& g, const IndirectRowsS8& ind) {
  validate_indirect(g, ind);
  reference_indirect_block(g, ind, 0, g.m, 0, g.w->n);
}

namespace {

enum class Kernel { kReference, kAvx2, kAvx512Vnni, kAmx };

Kernel pick(const s8::GemmPlan& p) {
  const uint32_t paths = active_paths();
  const bool rq_ok = p.g->out.type == OutputType::kInt32 || p.k->rq.simd_ok;
  const bool vnni_rq = p.g->out.type == OutputType::kInt32 || !p.k->rqf.empty();
  const bool avx2_rq = p.g->out.type == OutputType::kInt32 || !p.k->rqf8.empty();
  // AMX from K = 61 on (16 k-groups: one whole B tile); shorter K stays on VPDPBUSD (AMX with only a tail chunk was
  // up to 46 % slower on mbv2's K = 16-32 shapes, docs/BENCHMARKS.md).
  if (rq_ok && vnni_rq && has_path(paths, Path::kAmx) && s8::amx_compiled() && p.w->k_groups >= 16) return Kernel::kAmx;
  if (rq_ok && vnni_rq && has_path(paths, Path::kAvx512Vnni) && s8::avx512vnni_compiled()) return Kernel::kAvx512Vnni;
  if (rq_ok && avx2_rq && has_path(paths, Path::kAvx2) && s8::avx2_compiled()) return Kernel::kAvx2;
  return Kernel::kReference;
}

void run_block(Kernel kern, const s8::GemmPlan& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  switch (kern) {
    case Kernel::kAmx: return s8::gemm_block_amx(p, m0, m1, n0, n1);
    case Kernel::kAvx512Vnni: return s8::gemm_block_avx512vnni(p, m0, m1, n0, n1);
    case Kernel::kAvx2: return s8::gemm_block_avx2(p, m0, m1, n0, n1);
    case Kernel::kReference: break;
  }
  reference_block(*p.g, m0, m1, n0, n1);
}

}  // namespace

struct GemmS8Prepared {
  s8::GemmConst k;
  const PackedWeightsS8* w = nullptr;
  Act8 a_type = Act8::kUInt8;
  int32_t a_zero_point = 0;
  OutputType out_type = OutputType::kUInt8;
};

std::shared_ptr<const GemmS8Prepared> prepare_gemm_s8(const GemmS8Args& g) {
  auto p = std::make_shared<GemmS8Prepared>();
  p->k = s8::make_gemm_const(g);
  p->w = g.w, p->a_type = g.a_type, p->a_zero_point = g.a_zero_point, p->out_type = g.out.type;
  return p;
}

namespace {
void check_prepared(const GemmS8Args& g, const GemmS8Prepared& prep) {
  PERCH_CHECK(prep.w == g.w && prep.a_type == g.a_type && prep.a_zero_point == g.a_zero_point &&
                  prep.out_type == g.out.type,
              "gemm_s8: the prepared constants were made for other weights, activation type/zero point or output type");
}
}  // namespace

void gemm_s8_block(const GemmS8Args& g, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  const s8::GemmConst k = s8::make_gemm_const(g);
  const s8::GemmPlan p = s8::make_gemm_plan(g, k);
  run_block(pick(p), p, m_begin, m_end, n_begin, n_end);
}

void gemm_s8_block(const GemmS8Args& g, const GemmS8Prepared& prep, int64_t m_begin, int64_t m_end, int64_t n_begin,
                   int64_t n_end) {
  check_prepared(g, prep);
  const s8::GemmPlan p = s8::make_gemm_plan(g, prep.k);
  run_block(pick(p), p, m_begin, m_end, n_begin, n_end);
}

namespace {
// The indirect GEMM on the chosen path. AVX-512 VNNI with uint8 activations reads through the table; AVX2 (and
// int8 activations, which the in-place reads would have to flip) gather the rows of each block of 48 into a
// buffer of K bytes per row — the im2col of that block, from the table — and run the plain GEMM path on it.
void indirect_run(const GemmS8Args& g, const IndirectRowsS8& ind, const s8::GemmConst& k, int64_t m0, int64_t m1,
                  int64_t n0, int64_t n1) {
  const s8::GemmPlan p = s8::make_indirect_plan(g, ind, k);
  const Kernel kern = pick(p);
  if (kern == Kernel::kReference) return reference_indirect_block(g, ind, m0, m1, n0, n1);
  if ((kern == Kernel::kAvx512Vnni || kern == Kernel::kAmx) && !k.flip)  // the indirect form has no AMX variant
    return s8::gemm_indirect_block_avx512vnni(p, m0, m1, n0, n1);
  const int64_t K = g.w->k, C = ind.channels, rb = 48;
  const size_t esz = g.out.type == OutputType::kInt32 ? 4 : 1;
  thread_local std::vector<uint8_t> buf;
  buf.resize(static_cast<size_t>(rb * K));
  for (int64_t r0 = m0; r0 < m1; r0 += rb) {
    const int64_t r1 = std::min(m1, r0 + rb);
    for (int64_t i = r0; i < r1; ++i)
      for (int64_t t = 0; t < ind.taps; ++t)
        std::memcpy(buf.data() + (i - r0) * K + t * C, ind.rows[i * ind.taps + t], static_cast<size_t>(C));
    GemmS8Args gb = g;
    gb.m = r1 - r0;
    gb.a = buf.data();
    gb.lda = K;
    gb.c = static_cast<char*>(g.c) + static_cast<size_t>(r0 * g.ldc) * esz;
    const s8::GemmPlan pb = s8::make_gemm_plan(gb, k);
    run_block(kern, pb, 0, gb.m, n0, n1);
  }
}
}  // namespace

void gemm_s8_indirect(const GemmS8Args& g, const IndirectRowsS8& ind) {
  validate_indirect(g, ind);
  if (g.m == 0) return;
  const s8::GemmConst k = s8::make_gemm_const(g);
  indirect_run(g, ind, k, 0, g.m, 0, g.w->n);
}

void gemm_s8_indirect_block(const GemmS8Args& g, const IndirectRowsS8& ind, const GemmS8Prepared& prep,
                            int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  check_prepared(g, prep);
  indirect_run(g, ind, prep.k, m_begin, m_end, n_begin, n_end);
}

namespace {
void gemm_run(const GemmS8Args& g, const s8::GemmConst& k) {
  const s8::GemmPlan p = s8::make_gemm_plan(g, k);
  const Kernel kern = pick(p);
  const int64_t n = g.w->n, m = g.m;
  // Work items: blocks of 48 rows x 64 columns at most, split so every thread gets some. Row blocks first
  // (each item re-packs only its own rows of A), column blocks when M alone cannot feed the pool.
  const int64_t ops = m * n * g.w->k;
  const int threads = ops < (int64_t{1} << 18) ? 1 : num_threads();
  if (threads <= 1) return run_block(kern, p, 0, m, 0, n);
  const int64_t rb = 48;
  const int64_t row_blocks = (m + rb - 1) / rb;
  const int64_t panels = g.w->panels;
  int64_t col_chunks = 1;
  while (row_blocks * col_chunks < 2 * threads && col_chunks * 2 <= panels) col_chunks *= 2;
  const int64_t panels_per_chunk = (panels + col_chunks - 1) / col_chunks;
  parallel_for(0, row_blocks * col_chunks, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t r = t / col_chunks, c = t % col_chunks;
      const int64_t n0 = c * panels_per_chunk * 16, n1 = std::min(n, (c + 1) * panels_per_chunk * 16);
      if (n0 < n1) run_block(kern, p, r * rb, std::min(m, (r + 1) * rb), n0, n1);
    }
  });
}
}  // namespace

void gemm_s8(const GemmS8Args& g) {
  validate(g);
  if (g.m == 0) return;
  gemm_run(g, s8::make_gemm_const(g));
}

void gemm_s8(const GemmS8Args& g, const GemmS8Prepared& prep) {
  validate(g);
  check_prepared(g, prep);
  if (g.m == 0) return;
  gemm_run(g, prep.k);
}

}  // namespace perch::kernels
