// ONNX's integer operators for the float executor (and so for the int8 executor's fallback): ConvInteger,
// MatMulInteger (int32 results), QLinearConv, QLinearMatMul (8-bit results).
//
// Accumulation is exact: sum of (x - x_zp) * (w - w_zp) in int64 (|term| <= 255^2), checked to fit int32 as
// the ONNX output type requires. These are plain loops — the node tests and foreign integer models are small;
// perch's own QDQ models are lowered to the packed int8 kernels by runtime/int8_executor.h instead.
//
// QLinear* requantization follows the ONNX reference implementation exactly:
//   M = float32(float32(a_scale * b_scale) / y_scale)   (float32 arithmetic, per output channel if per-axis)
//   y = saturate(round_half_to_even(double(acc) * double(M) + y_zp))
#include <cmath>
#include <limits>

#include "ops_common.h"
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
  const auto xv = ints(x, n, "input");
  const auto wv = ints(w, n, "weight");
  const int64_t CG = C / G, MG = M / G;
  Tensor y(DType::kInt32, two_d ? Shape{N, M, OH, OW} : Shape{N, M, OW});
  int32_t* yd = y.data<int32_t>();
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
  const auto av = ints(a, n, "A"), bv = ints(b, n, "B");
  Shape ys = batch;
  if (!a_vec) ys.push_back(M);
  if (!b_vec) ys.push_back(N);
  Tensor y(DType::kInt32, ys);
  int32_t* yd = y.data<int32_t>();
  for (int64_t t = 0; t < nb; ++t) {
    int64_t oa = 0, ob = 0, rem = t;
    for (int64_t d = static_cast<int64_t>(batch.size()) - 1; d >= 0; --d) {
      const int64_t idx = rem % batch[static_cast<size_t>(d)];
      rem /= batch[static_cast<size_t>(d)];
      oa += idx * sa[static_cast<size_t>(d)];
      ob += idx * sb[static_cast<size_t>(d)];
    }
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
