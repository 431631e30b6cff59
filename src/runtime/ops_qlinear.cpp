// ONNX's integer operators for the float executor (and so for the int8 executor's fallback): ConvInteger,
// MatMulInteger (int32 results), QLinearConv, QLinearMatMul (8-bit results).
//
// Accumulation is exact: sum of (x - x_zp) * (w - w_zp), checked to fit int32 as the ONNX output type requires.
// Where the reduction length K is at most kernels::kMaxGemmS8K (65025 K < 2^31, so no sum can overflow) and the
// zero points allow it (one for the data; the weights' per tensor or per output channel), ConvInteger and
// MatMulInteger run on the packed int8 GEMM (kernels/gemm_s8.h, int32 output: exact, bit-identical to the loops;
// ConvInteger through an im2col whose padding holds the data zero point, so padded taps add (x_zp - x_zp) w = 0;
// depthwise and other groups of fewer than 8 output channels directly, in int32, tap by tap). Weights are packed per
// call (O(K N), beside the O(M K N) product; a batched B one matrix at a time) — what a dynamically quantized model
// (ptq/dynamic.h) runs. Past that bound, or for per-row zero points of A, plain int64 loops.
//
// QLinear* requantization follows the ONNX reference implementation exactly:
//   M = float32(float32(a_scale * b_scale) / y_scale)   (float32 arithmetic, per output channel if per-axis)
//   y = saturate(round_half_to_even(double(acc) * double(M) + y_zp))
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

#include "ops_common.h"
#include "perch/kernels/gemm_s8.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

bool is_8bit(DType t) { return t == DType::kUInt8 || t == DType::kInt8; }

// Integer values of an 8-bit tensor.
std::vector<int32_t> ints(const Tensor& t, const Node& n, const char* what) {
  PERCH_CHECK(is_8bit(t.dtype()), n.describe(), ": ", what, " must be uint8 or int8, got ", dtype_name(t.dtype()));
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::kUInt8) {
    const uint8_t* d = t.data<uint8_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = d[i];
  } else {
    const int8_t* d = t.data<int8_t>();
    for (size_t i = 0; i < v.size(); ++i) v[i] = d[i];
  }
  return v;
}

// Zero point input i: absent -> {0}; else its values (1, or `per` for per-axis), type must match `data`.
std::vector<int32_t> zero_points(const Node& n, const Args& a, size_t i, const Tensor& data, int64_t per, const char* what) {
  if (!has(a, i)) return {0};
  const Tensor& z = *a[i];
  PERCH_CHECK(z.dtype() == data.dtype(), n.describe(), ": ", what, " zero point is ", dtype_name(z.dtype()),
              ", the data is ", dtype_name(data.dtype()));
  PERCH_CHECK(z.numel() == 1 || z.numel() == per, n.describe(), ": ", what, " zero point has ", z.numel(),
              " values (expected 1 or ", per, ")");
  return ints(z, n, what);
}

std::vector<float> scales(const Node& n, const Args& a, size_t i, int64_t per, const char* what) {
  const Tensor s = in(n, a, i).to_f32();
  PERCH_CHECK(s.numel() == 1 || s.numel() == per, n.describe(), ": ", what, " scale has ", s.numel(),
              " values (expected 1 or ", per, ")");
  std::vector<float> v(s.data<float>(), s.data<float>() + s.numel());
  for (float f : v) PERCH_CHECK(std::isfinite(f) && f > 0, n.describe(), ": ", what, " scale ", f, " is not positive and finite");
  return v;
}

int32_t to_int32(int64_t v, const Node& n) {
  PERCH_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), n.describe(),
              ": accumulator ", v, " overflows int32");
  return static_cast<int32_t>(v);
}

// Weights [rows, cols] of an 8-bit tensor starting at element `offset`, packed for gemm_s8 in `layout`, with
// zero points `zp` (1 or one per output column; all zero -> symmetric).
kernels::PackedWeightsS8 pack_8bit(const Tensor& w, int64_t offset, int64_t k, int64_t n, kernels::WeightLayout layout,
                                   const std::vector<int32_t>& zp) {
  const bool any = std::any_of(zp.begin(), zp.end(), [](int32_t z) { return z != 0; });
  if (w.dtype() == DType::kUInt8) return kernels::pack_weights_u8(w.data<uint8_t>() + offset, k, n, layout, zp);
  return kernels::pack_weights_s8(w.data<int8_t>() + offset, k, n, layout,
                                  any ? std::span<const int32_t>(zp) : std::span<const int32_t>());
}

// C[m, n] (int32, row stride ldc) = sum_k (a[m, k] - za) (W[k, n] - zw[n]) on the packed GEMM.
void gemm_int32(const void* a, DType a_type, int64_t m, int64_t lda, int32_t za, const kernels::PackedWeightsS8& w,
                int32_t* c, int64_t ldc) {
  kernels::GemmS8Args g;
  g.m = m;
  g.a = a;
  g.lda = lda;
  g.a_type = a_type == DType::kUInt8 ? kernels::Act8::kUInt8 : kernels::Act8::kInt8;
  g.a_zero_point = za;
  g.w = &w;
  g.out.type = kernels::OutputType::kInt32;
  g.c = c;
  g.ldc = ldc;
  kernels::gemm_s8(g);
}

// Direct convolution of narrow groups (depthwise: one input and one output channel per group), int32 accumulation —
// exact while K = CG * KH * KW <= kMaxGemmS8K (each term is at most 255 * 255 in magnitude). Tap by tap over whole
// output rows: for tap (c, i, j) the output columns whose input column lies inside the row are one range, so the
// inner loop has no bounds test (and is contiguous at stride 1).
template <typename X, typename Wt>
void conv_direct(const X* xd, const Wt* wd, int32_t x_zp, const std::vector<int32_t>& w_zp, int32_t* yd, int64_t N,
                 int64_t C, int64_t H, int64_t W, int64_t M, int64_t G, int64_t KH, int64_t KW, int64_t OH, int64_t OW,
                 int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl) {
  const int64_t CG = C / G, MG = M / G;
  for (int64_t b = 0; b < N; ++b)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t grp = m / MG;
      const int32_t zw = w_zp[w_zp.size() == 1 ? 0 : static_cast<size_t>(m)];
      int32_t* out = yd + (b * M + m) * OH * OW;
      std::fill(out, out + OH * OW, 0);
      for (int64_t c = 0; c < CG; ++c) {
        const X* plane = xd + (b * C + grp * CG + c) * H * W;
        for (int64_t i = 0; i < KH; ++i)
          for (int64_t j = 0; j < KW; ++j) {
            const int32_t wv = static_cast<int32_t>(wd[((m * CG + c) * KH + i) * KW + j]) - zw;
            // ow with 0 <= ow * sw - pl + j * dw < W
            const int64_t off = j * dw - pl;
            const int64_t ow_lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
            const int64_t ow_hi = W - 1 - off < 0 ? -1 : std::min(OW - 1, (W - 1 - off) / sw);
            for (int64_t oh = 0; oh < OH; ++oh) {
              const int64_t ih = oh * sh - pt + i * dh;
              if (ih < 0 || ih >= H) continue;
              const X* row = plane + ih * W;
              int32_t* o = out + oh * OW;
              for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) o[ow] += (static_cast<int32_t>(row[ow * sw + off]) - x_zp) * wv;
            }
          }
      }
    }
}

// Exact integer convolution, NCHW (rank 3 runs as H = 1), any group. Returns int32 [N, M, OH, OW].
Tensor conv_integer(const Node& n, const Tensor& x, int32_t x_zp, const Tensor& w, const std::vector<int32_t>& w_zp) {
  PERCH_CHECK(x.rank() == 4 || x.rank() == 3, n.describe(), ": input must be 3-D or 4-D, got ", shape_str(x.shape()));
  PERCH_CHECK(w.rank() == x.rank(), n.describe(), ": weight rank ", w.rank(), " != input rank ", x.rank());
  const bool two_d = x.rank() == 4;
  const int64_t N = x.dim(0), C = x.dim(1), H = two_d ? x.dim(2) : 1, W = x.dim(-1);
  const int64_t M = w.dim(0), KH = two_d ? w.dim(2) : 1, KW = w.dim(-1);
  const int64_t G = n.attr_int("group", 1);
  PERCH_CHECK(G > 0 && C % G == 0 && M % G == 0 && w.dim(1) * G == C, n.describe(), ": weight ", shape_str(w.shape()),
              " with group ", G, " does not match ", C, " input channels");
  PERCH_CHECK(w_zp.size() == 1 || static_cast<int64_t>(w_zp.size()) == M, n.describe(), ": weight zero point count");
  const std::vector<int64_t> in_sp = two_d ? std::vector<int64_t>{H, W} : std::vector<int64_t>{W};
  const std::vector<int64_t> k_sp = two_d ? std::vector<int64_t>{KH, KW} : std::vector<int64_t>{KW};
  const auto g = detail::geometry(n, in_sp, k_sp, false);
  const int64_t sh = two_d ? g.strides[0] : 1, sw = g.strides.back(), dh = two_d ? g.dilations[0] : 1, dw = g.dilations.back();
  const int64_t pt = two_d ? g.pads_begin[0] : 0, pl = g.pads_begin.back();
  const int64_t pb = two_d ? g.pads_end[0] : 0, pr = g.pads_end.back();
  const int64_t OH = (H + pt + pb - dh * (KH - 1) - 1) / sh + 1, OW = (W + pl + pr - dw * (KW - 1) - 1) / sw + 1;
  PERCH_CHECK(OH > 0 && OW > 0, n.describe(), ": input ", shape_str(x.shape()), " is too small for the kernel");
  const int64_t CG = C / G, MG = M / G;
  Tensor y(DType::kInt32, two_d ? Shape{N, M, OH, OW} : Shape{N, M, OW});
  int32_t* yd = y.data<int32_t>();
  PERCH_CHECK(is_8bit(x.dtype()) && is_8bit(w.dtype()), n.describe(), ": input and weight must be uint8 or int8");
  const int64_t K = CG * KH * KW, P = OH * OW;
  // Depthwise and other narrow groups (fewer than 8 output channels each) run faster direct (conv_direct) than as one
  // narrow GEMM per group.
  if (K <= kernels::kMaxGemmS8K && MG >= 8) {
    // im2col per image and group: row p = output pixel, k = (c * KH + i) * KW + j (the weight's own order, so the
    // weights pack from [M, CG, KH, KW] as kNK); taps in the padding hold x_zp.
    std::vector<uint8_t> col(static_cast<size_t>(P * K));
    std::vector<int32_t> out(static_cast<size_t>(P * MG));
    const uint8_t* xb = static_cast<const uint8_t*>(x.raw());  // int8 data as its bytes
    const uint8_t pad = static_cast<uint8_t>(x_zp);
    for (int64_t grp = 0; grp < G; ++grp) {
      std::vector<int32_t> zg(w_zp.size() == 1 ? w_zp : std::vector<int32_t>(w_zp.begin() + grp * MG, w_zp.begin() + (grp + 1) * MG));
      const kernels::PackedWeightsS8 pw = pack_8bit(w, grp * MG * K, K, MG, kernels::WeightLayout::kNK, zg);
      for (int64_t b = 0; b < N; ++b) {
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            uint8_t* row = col.data() + (oh * OW + ow) * K;
            for (int64_t c = 0; c < CG; ++c)
              for (int64_t i = 0; i < KH; ++i) {
                const int64_t ih = oh * sh - pt + i * dh;
                for (int64_t j = 0; j < KW; ++j) {
                  const int64_t iw = ow * sw - pl + j * dw;
                  *row++ = ih < 0 || ih >= H || iw < 0 || iw >= W ? pad : xb[((b * C + grp * CG + c) * H + ih) * W + iw];
                }
              }
          }
        gemm_int32(col.data(), x.dtype(), P, K, x_zp, pw, out.data(), MG);
        for (int64_t p = 0; p < P; ++p)
          for (int64_t m = 0; m < MG; ++m) yd[(b * M + grp * MG + m) * P + p] = out[static_cast<size_t>(p * MG + m)];
      }
    }
    return y;
  }
  if (K <= kernels::kMaxGemmS8K) {
    auto direct = [&](const auto* xd, const auto* wd) {
      conv_direct(xd, wd, x_zp, w_zp, yd, N, C, H, W, M, G, KH, KW, OH, OW, sh, sw, dh, dw, pt, pl);
    };
    const bool xu = x.dtype() == DType::kUInt8, wu = w.dtype() == DType::kUInt8;
    if (xu && wu) direct(x.data<uint8_t>(), w.data<uint8_t>());
    else if (xu) direct(x.data<uint8_t>(), w.data<int8_t>());
    else if (wu) direct(x.data<int8_t>(), w.data<uint8_t>());
    else direct(x.data<int8_t>(), w.data<int8_t>());
    return y;
  }
  const auto xv = ints(x, n, "input");
  const auto wv = ints(w, n, "weight");
  for (int64_t b = 0; b < N; ++b)
    for (int64_t m = 0; m < M; ++m) {
      const int64_t grp = m / MG;
      const int32_t zw = w_zp[w_zp.size() == 1 ? 0 : static_cast<size_t>(m)];
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          int64_t acc = 0;
          for (int64_t c = 0; c < CG; ++c)
            for (int64_t i = 0; i < KH; ++i) {
              const int64_t ih = oh * sh - pt + i * dh;
              if (ih < 0 || ih >= H) continue;  // padding is the zero point: (x_zp - x_zp) * w = 0
              for (int64_t j = 0; j < KW; ++j) {
                const int64_t iw = ow * sw - pl + j * dw;
                if (iw < 0 || iw >= W) continue;
                const int64_t xv_ = xv[static_cast<size_t>(((b * C + grp * CG + c) * H + ih) * W + iw)] - x_zp;
                const int64_t wv_ = wv[static_cast<size_t>(((m * CG + c) * KH + i) * KW + j)] - zw;
                acc += xv_ * wv_;
              }
            }
          yd[((b * M + m) * OH + oh) * OW + ow] = to_int32(acc, n);
        }
    }
  return y;
}

// Exact integer matmul with numpy broadcasting over leading dims; a_zp per tensor or per row of A (M values),
// b_zp per tensor or per column of B (N values). Returns int32.
Tensor matmul_integer(const Node& n, const Tensor& a, const std::vector<int32_t>& a_zp, const Tensor& b,
                      const std::vector<int32_t>& b_zp) {
  PERCH_CHECK(a.rank() >= 1 && b.rank() >= 1, n.describe(), ": inputs must have rank >= 1");
  Shape as = a.shape(), bs = b.shape();
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t M = as[as.size() - 2], K = as.back(), N = bs.back();
  PERCH_CHECK(bs[bs.size() - 2] == K, n.describe(), ": inner dims differ: ", shape_str(a.shape()), " x ", shape_str(b.shape()));
  const Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  const Shape batch = detail::broadcast_shape(ab, bb, n);
  const auto sa = detail::broadcast_strides(ab, batch), sb = detail::broadcast_strides(bb, batch);
  int64_t nb = 1;
  for (int64_t d : batch) nb *= d;
  Shape ys = batch;
  if (!a_vec) ys.push_back(M);
  if (!b_vec) ys.push_back(N);
  Tensor y(DType::kInt32, ys);
  int32_t* yd = y.data<int32_t>();
  PERCH_CHECK(is_8bit(a.dtype()) && is_8bit(b.dtype()), n.describe(), ": A and B must be uint8 or int8");
  if (bb.empty() && a_zp.size() == 1 && K <= kernels::kMaxGemmS8K) {
    // B one matrix: every row of every batch of A against it, as one GEMM of nb * M rows (A and Y are contiguous).
    const kernels::PackedWeightsS8 pw = pack_8bit(b, 0, K, N, kernels::WeightLayout::kKN, b_zp);
    gemm_int32(a.raw(), a.dtype(), nb * M, K, a_zp[0], pw, yd, N);
    return y;
  }
  auto offsets = [&](int64_t t, int64_t& oa, int64_t& ob) {  // matrix indices of batch t in A and B (broadcast)
    oa = ob = 0;
    for (int64_t d = static_cast<int64_t>(batch.size()) - 1, rem = t; d >= 0; --d) {
      const int64_t idx = rem % batch[static_cast<size_t>(d)];
      rem /= batch[static_cast<size_t>(d)];
      oa += idx * sa[static_cast<size_t>(d)];
      ob += idx * sb[static_cast<size_t>(d)];
    }
  };
  if (a_zp.size() == 1 && K <= kernels::kMaxGemmS8K) {
    // Batched B (attention's activation x activation products in a dynamically quantized transformer): one packed
    // GEMM per batch matrix.
    kernels::PackedWeightsS8 pw;
    int64_t packed = -1;  // B's matrix in pw (a broadcast B is packed once)
    for (int64_t t = 0; t < nb; ++t) {
      int64_t oa = 0, ob = 0;
      offsets(t, oa, ob);
      if (ob != packed) pw = pack_8bit(b, ob * K * N, K, N, kernels::WeightLayout::kKN, b_zp), packed = ob;
      gemm_int32(static_cast<const uint8_t*>(a.raw()) + oa * M * K, a.dtype(), M, K, a_zp[0], pw, yd + t * M * N, N);
    }
    return y;
  }
  const auto av = ints(a, n, "A"), bv = ints(b, n, "B");
  for (int64_t t = 0; t < nb; ++t) {
    int64_t oa = 0, ob = 0;
    offsets(t, oa, ob);
    for (int64_t i = 0; i < M; ++i) {
      const int32_t za = a_zp[a_zp.size() == 1 ? 0 : static_cast<size_t>(i)];
      for (int64_t j = 0; j < N; ++j) {
        const int32_t zb = b_zp[b_zp.size() == 1 ? 0 : static_cast<size_t>(j)];
        int64_t acc = 0;
        for (int64_t k = 0; k < K; ++k)
          acc += int64_t{av[static_cast<size_t>(oa * M * K + i * K + k)] - za} *
                 int64_t{bv[static_cast<size_t>(ob * K * N + k * N + j)] - zb};
        yd[(t * M + i) * N + j] = to_int32(acc, n);
      }
    }
  }
  return y;
}

// acc (int32) -> 8-bit of y_zp's type; channel(i) picks the per-channel multiplier.
template <typename ChannelOf>
Tensor requantize(const Node& n, const Tensor& acc, const std::vector<float>& in_scale, const std::vector<float>& w_scale,
                  float y_scale, int32_t y_zp, DType y_type, ChannelOf channel) {
  const size_t per = std::max(in_scale.size(), w_scale.size());
  std::vector<double> m(per);
  for (size_t c = 0; c < per; ++c) {
    const float prod = in_scale[in_scale.size() == 1 ? 0 : c] * w_scale[w_scale.size() == 1 ? 0 : c];  // float32
    m[c] = static_cast<double>(prod / y_scale);                                                        // float32
  }
  const int32_t lo = y_type == DType::kUInt8 ? 0 : -128, hi = y_type == DType::kUInt8 ? 255 : 127;
  Tensor y(y_type, acc.shape());
  const int32_t* a = acc.data<int32_t>();
  for (int64_t i = 0; i < acc.numel(); ++i) {
    double v = static_cast<double>(a[i]) * m[per == 1 ? 0 : channel(i)] + y_zp;
    v = std::nearbyint(std::clamp(v, static_cast<double>(lo), static_cast<double>(hi)));  // ties to even
    if (y_type == DType::kUInt8) y.data<uint8_t>()[i] = static_cast<uint8_t>(v);
    else y.data<int8_t>()[i] = static_cast<int8_t>(v);
  }
  (void)n;
  return y;
}

std::vector<Tensor> conv_integer_op(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const Tensor& w = in(n, a, 1);
  const auto xz = zero_points(n, a, 2, x, 1, "input");
  const auto wz = zero_points(n, a, 3, w, w.rank() >= 1 ? w.dim(0) : 1, "weight");
  return {conv_integer(n, x, xz[0], w, wz)};
}

std::vector<Tensor> matmul_integer_op(const Node& n, const Args& a, int64_t) {
  const Tensor& A = in(n, a, 0);
  const Tensor& B = in(n, a, 1);
  const auto az = zero_points(n, a, 2, A, A.rank() >= 2 ? A.dim(-2) : 1, "A");
  const auto bz = zero_points(n, a, 3, B, B.dim(-1), "B");
  return {matmul_integer(n, A, az, B, bz)};
}

// QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B)
std::vector<Tensor> qlinear_conv(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const Tensor& w = in(n, a, 3);
  const int64_t M = w.rank() >= 1 ? w.dim(0) : 1;
  const auto xs = scales(n, a, 1, 1, "x");
  const auto xz = zero_points(n, a, 2, x, 1, "x");
  const auto ws = scales(n, a, 4, M, "w");
  const auto wz = zero_points(n, a, 5, w, M, "w");
  const auto ys = scales(n, a, 6, 1, "y");
  const Tensor& yz_t = in(n, a, 7);
  PERCH_CHECK(is_8bit(yz_t.dtype()) && yz_t.numel() == 1, n.describe(), ": y zero point must be one uint8/int8 value");
  const int32_t yz = ints(yz_t, n, "y zero point")[0];
  Tensor acc = conv_integer(n, x, xz[0], w, wz);
  const int64_t inner = acc.numel() / (acc.dim(0) * M);
  if (has(a, 8)) {
    const Tensor& b = *a[8];
    PERCH_CHECK(b.dtype() == DType::kInt32 && b.numel() == M, n.describe(), ": bias must be int32 with ", M, " values");
    int32_t* d = acc.data<int32_t>();
    for (int64_t i = 0; i < acc.numel(); ++i)
      d[i] = to_int32(int64_t{d[i]} + b.data<int32_t>()[(i / inner) % M], n);
  }
  return {requantize(n, acc, xs, ws, ys[0], yz, yz_t.dtype(), [&](int64_t i) { return static_cast<size_t>((i / inner) % M); })};
}

// QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)
std::vector<Tensor> qlinear_matmul(const Node& n, const Args& a, int64_t) {
  const Tensor& A = in(n, a, 0);
  const Tensor& B = in(n, a, 3);
  const int64_t N = B.dim(-1);
  const auto as = scales(n, a, 1, 1, "a");
  const auto az = zero_points(n, a, 2, A, 1, "a");
  const auto bs = scales(n, a, 4, N, "b");
  const auto bz = zero_points(n, a, 5, B, N, "b");
  const auto ys = scales(n, a, 6, 1, "y");
  const Tensor& yz_t = in(n, a, 7);
  PERCH_CHECK(is_8bit(yz_t.dtype()) && yz_t.numel() == 1, n.describe(), ": y zero point must be one uint8/int8 value");
  const int32_t yz = ints(yz_t, n, "y zero point")[0];
  const Tensor acc = matmul_integer(n, A, az, B, bz);
  return {requantize(n, acc, as, bs, ys[0], yz, yz_t.dtype(), [&](int64_t i) { return static_cast<size_t>(i % N); })};
}

}  // namespace

void register_qlinear_ops(OpRegistry& r) {
  r.add("ConvInteger", 10, conv_integer_op);
  r.add("MatMulInteger", 10, matmul_integer_op);
  r.add("QLinearConv", 10, qlinear_conv);
  r.add("QLinearMatMul", 10, qlinear_matmul);
}

}  // namespace perch::runtime
