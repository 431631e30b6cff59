// Small integer kernels of the int8 executor (header: int8_kernels.h).
#include "int8_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "perch/core/cpu.h"
#include "perch/core/threads.h"

namespace perch::runtime::int8 {

namespace {

void check_byte(const Tensor& x, const char* what) {
  PERCH_CHECK(x.dtype() == DType::kUInt8 || x.dtype() == DType::kInt8, what, ": expected an 8-bit tensor, got ",
              dtype_name(x.dtype()));
  PERCH_CHECK(x.rank() == 4, what, ": expected a rank-4 tensor, got ", shape_str(x.shape()));
}

const uint8_t* bytes(const Tensor& t) { return static_cast<const uint8_t*>(t.raw()); }
uint8_t* bytes(Tensor& t) { return static_cast<uint8_t*>(t.raw()); }

}  // namespace

namespace {

// d[n][c][r] = s[n][r][c] for n < images: each image's rows x cols byte matrix transposed.
void transpose_images(const uint8_t* s, uint8_t* d, int64_t images, int64_t rows, int64_t cols) {
  for (int64_t n = 0; n < images; ++n)
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* sp = s + (n * rows + r) * cols;
      uint8_t* dp = d + n * rows * cols + r;
      for (int64_t c = 0; c < cols; ++c) dp[c * rows] = sp[c];
    }
}

// Layout change that is a per-image transpose; a plain copy when either side is 1.
Tensor relayout(const Tensor& x, Shape out, int64_t rows, int64_t cols) {
  Tensor y = Tensor::uninitialized(x.dtype(), std::move(out));
  if (rows == 1 || cols == 1) std::memcpy(bytes(y), bytes(x), x.nbytes());
  else transpose_images(bytes(x), bytes(y), x.dim(0), rows, cols);
  return y;
}

}  // namespace

Tensor nchw_to_nhwc(const Tensor& x) {
  check_byte(x, "nchw_to_nhwc");
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  return relayout(x, {N, H, W, C}, C, H * W);
}

Tensor nhwc_to_nchw(const Tensor& x) {
  check_byte(x, "nhwc_to_nchw");
  const int64_t N = x.dim(0), H = x.dim(1), W = x.dim(2), C = x.dim(3);
  return relayout(x, {N, C, H, W}, H * W, C);
}

namespace {

// y = max(y, x) over n bytes; unsigned, or signed via the order-preserving flip x ^ 0x80 done by the caller's
// type (the loop is written for T so the compiler emits PMAXUB / PMAXSB).
template <typename T>
inline void max_into(T* __restrict y, const T* __restrict x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] = std::max(y[c], x[c]);
}

template <typename T>
inline void max4(const T* __restrict a, const T* __restrict b, const T* __restrict c, const T* __restrict d,
                 T* __restrict y, int64_t n) {
  for (int64_t k = 0; k < n; ++k) y[k] = std::max(std::max(a[k], b[k]), std::max(c[k], d[k]));
}

template <typename T>
void maxpool_impl(const kernels::Pool2dShape& s, const T* x, T* y) {
  const int64_t OH = s.out_h(), OW = s.out_w(), C = s.channels;
  // 2x2 stride 2 windows that never touch padding (the CNN case): four rows of C bytes per output pixel.
  const bool k2s2 = s.kernel_h == 2 && s.kernel_w == 2 && s.stride_h == 2 && s.stride_w == 2 && s.dil_h == 1 &&
                    s.dil_w == 1 && s.pad_top == 0 && s.pad_left == 0 && 2 * OH <= s.in_h && 2 * OW <= s.in_w;
  parallel_for(0, s.batch * OH, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi && k2s2; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      const int64_t in_w = s.in_w, in_h = s.in_h;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const T* a = x + ((n * in_h + 2 * oh) * in_w + 2 * ow) * C;
        max4(a, a + C, a + in_w * C, a + in_w * C + C, y + ((n * OH + oh) * OW + ow) * C, C);
      }
    }
    for (int64_t r = lo; r < hi && !k2s2; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        T* yp = y + ((n * OH + oh) * OW + ow) * C;
        bool first = true;
        for (int64_t i = 0; i < s.kernel_h; ++i) {
          const int64_t ih = oh * s.stride_h - s.pad_top + i * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          for (int64_t j = 0; j < s.kernel_w; ++j) {
            const int64_t iw = ow * s.stride_w - s.pad_left + j * s.dil_w;
            if (iw < 0 || iw >= s.in_w) continue;
            const T* xp = x + ((n * s.in_h + ih) * s.in_w + iw) * C;
            if (first) {
              for (int64_t c = 0; c < C; ++c) yp[c] = xp[c];
              first = false;
            } else {
              max_into(yp, xp, C);
            }
          }
        }
        PERCH_CHECK(!first, "maxpool: an output window lies entirely in the padding");
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, OW * C)));
}

// The pools requantize like every integer op: quant::multiply_round_once, one rounding of x * M (ties toward
// +inf). Pool multipliers s_x / (s_y d) are near 1, where the TFLite double rounding would move every value
// whose fraction lies within 2^(shift - 1) below one half — 12 % of them at shift = -2.

template <typename T>
void avgpool_impl(const kernels::Pool2dShape& s, const T* x, int32_t zp_x, const quant::FixedPointMultiplier* mult,
                  int32_t zp_y, int32_t qmin, int32_t qmax, T* y) {
  const int64_t OH = s.out_h(), OW = s.out_w(), C = s.channels;
  parallel_for(0, s.batch * OH, [&](int64_t lo, int64_t hi) {
    std::vector<int32_t> acc(static_cast<size_t>(C));
    for (int64_t r = lo; r < hi; ++r) {
      const int64_t n = r / OH, oh = r % OH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        std::fill(acc.begin(), acc.end(), 0);
        int64_t inside = 0, window = 0;
        for (int64_t i = 0; i < s.kernel_h; ++i) {
          const int64_t ih = oh * s.stride_h - s.pad_top + i * s.dil_h;
          for (int64_t j = 0; j < s.kernel_w; ++j) {
            const int64_t iw = ow * s.stride_w - s.pad_left + j * s.dil_w;
            // ceil_mode windows may overhang the padded input: those cells never count (as ONNX Runtime).
            const bool in_padded = ih >= -s.pad_top && ih < s.in_h + s.pad_bottom && iw >= -s.pad_left &&
                                   iw < s.in_w + s.pad_right;
            window += in_padded;
            if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
            ++inside;
            const T* xp = x + ((n * s.in_h + ih) * s.in_w + iw) * C;
            for (int64_t c = 0; c < C; ++c) acc[static_cast<size_t>(c)] += xp[c];
          }
        }
        const int64_t d = s.count_include_pad ? window : inside;
        PERCH_CHECK(inside > 0 && d > 0, "avgpool: an output window lies entirely in the padding");
        // sum (q - zp) = sum q - inside * zp: padded cells are zeros of the real input (q = zp), adding 0.
        const int32_t off = static_cast<int32_t>(inside) * zp_x;
        T* yp = y + ((n * OH + oh) * OW + ow) * C;
        for (int64_t c = 0; c < C; ++c) {
          // |v| <= 255 for sane scales (s_x / (s_y d) near 1), but a hostile file's scales can make M large and v
          // saturate at the int32 limits (fuzz_int8_lower, docs/RELIABILITY.md): add zp_y in 64 bits.
          const int64_t v = quant::multiply_round_once(acc[static_cast<size_t>(c)] - off, mult[d]);
          yp[c] = static_cast<T>(std::clamp<int64_t>(v + zp_y, qmin, qmax));
        }
      }
    }
  });
}

}  // namespace

void maxpool_nhwc(const kernels::Pool2dShape& s, const Tensor& x, Tensor& y) {
  if (x.dtype() == DType::kUInt8) maxpool_impl(s, x.data<uint8_t>(), y.data<uint8_t>());
  else maxpool_impl(s, x.data<int8_t>(), y.data<int8_t>());
}

void avgpool_nhwc(const kernels::Pool2dShape& s, const Tensor& x, int32_t zp_x, const quant::FixedPointMultiplier* multipliers,
                  int32_t zp_y, int32_t qmin, int32_t qmax, Tensor& y) {
  if (x.dtype() == DType::kUInt8)
    avgpool_impl(s, x.data<uint8_t>(), zp_x, multipliers, zp_y, qmin, qmax, y.data<uint8_t>());
  else
    avgpool_impl(s, x.data<int8_t>(), zp_x, multipliers, zp_y, qmin, qmax, y.data<int8_t>());
}

namespace {
// n bytes from src to dst; short runs (the first layer's C = 1, 3) without a library call (im2col_nhwc is compiled
// without GCC's loop-to-memcpy/memset rewrite, which would call the library for the 3 bytes it moves).
inline void copy_bytes(uint8_t* __restrict dst, const uint8_t* __restrict src, int64_t n) {
  if (n >= 32) {
    std::memcpy(dst, src, static_cast<size_t>(n));
    return;
  }
  for (int64_t b = 0; b < n; ++b) dst[b] = src[b];
}
inline void fill_bytes(uint8_t* dst, uint8_t v, int64_t n) {
  if (n >= 32) {
    std::memset(dst, v, static_cast<size_t>(n));
    return;
  }
  for (int64_t b = 0; b < n; ++b) dst[b] = v;
}
}  // namespace

namespace {
// im2col for kernel rows of kw * C = KWC bytes, KWC <= 4 or 9 (first layers: 3x3 on C = 1, or C = 3): one
// output-image row (n, oh) at a time, kernel row by kernel row, so the per-patch-row work is one KWC-byte copy of
// constant size (a few moves, no library call) while the taps are inside; output columns [ow0, ow1).
template <int KWC>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) void im2col_narrow_row(const Im2Col& g, const uint8_t* img, int64_t oh, int64_t ow0, int64_t ow1, uint8_t pad_value,
                       uint8_t* out, int64_t ldo) {
  const int64_t C = g.channels, K = g.kh * KWC;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h;
    uint8_t* o = out + i * KWC;
    if (ih < 0 || ih >= g.in_h) {
      for (int64_t ow = ow0; ow < ow1; ++ow, o += ldo)
        for (int t = 0; t < KWC; ++t) o[t] = pad_value;
      continue;
    }
    const uint8_t* src = img + ih * g.in_w * C;
    for (int64_t ow = ow0; ow < ow1; ++ow, o += ldo) {
      const int64_t iw0 = ow * g.stride_w - g.pad_left;
      if (g.dil_w == 1 && iw0 >= 0 && iw0 + g.kw <= g.in_w) {
        std::memcpy(o, src + iw0 * C, KWC);  // constant size: a few moves
        continue;
      }
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t iw = iw0 + j * g.dil_w;
        for (int64_t c = 0; c < C; ++c) o[j * C + c] = iw < 0 || iw >= g.in_w ? pad_value : src[iw * C + c];
      }
    }
  }
  if (ldo > K) {
    uint8_t* o = out + K;
    for (int64_t ow = ow0; ow < ow1; ++ow, o += ldo)
      for (int64_t t = 0; t < ldo - K; ++t) o[t] = pad_value;
  }
}
}  // namespace

__attribute__((optimize("no-tree-loop-distribute-patterns"))) void im2col_nhwc(const Im2Col& g, const uint8_t* x,
                                                                               uint8_t pad_value, int64_t row_begin,
                                                                               int64_t row_end, uint8_t* out, int64_t ldo) {
  const int64_t C = g.channels, K = g.kh * g.kw * C, kwc = g.kw * C;
  if (kwc <= 4 || kwc == 9) {
    for (int64_t r = row_begin; r < row_end;) {
      const int64_t n = r / (g.out_h * g.out_w), oh = (r / g.out_w) % g.out_h, ow0 = r % g.out_w;
      const int64_t ow1 = std::min(g.out_w, ow0 + (row_end - r));
      const uint8_t* img = x + n * g.in_h * g.in_w * C;
      uint8_t* o = out + (r - row_begin) * ldo;
      switch (kwc) {
        case 1: im2col_narrow_row<1>(g, img, oh, ow0, ow1, pad_value, o, ldo); break;
        case 2: im2col_narrow_row<2>(g, img, oh, ow0, ow1, pad_value, o, ldo); break;
        case 3: im2col_narrow_row<3>(g, img, oh, ow0, ow1, pad_value, o, ldo); break;
        case 4: im2col_narrow_row<4>(g, img, oh, ow0, ow1, pad_value, o, ldo); break;
        default: im2col_narrow_row<9>(g, img, oh, ow0, ow1, pad_value, o, ldo); break;
      }
      r += ow1 - ow0;
    }
    return;
  }
  // Row r = output pixel (n, oh, ow); walked incrementally (no division per row).
  int64_t n = row_begin / (g.out_h * g.out_w), oh = (row_begin / g.out_w) % g.out_h, ow = row_begin % g.out_w;
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint8_t* o = out + (r - row_begin) * ldo;
    const uint8_t* img = x + n * g.in_h * g.in_w * C;
    const int64_t iw0 = ow * g.stride_w - g.pad_left;
    const bool cols_in = g.dil_w == 1 && iw0 >= 0 && iw0 + g.kw <= g.in_w;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h;
      const bool row_in = ih >= 0 && ih < g.in_h;
      if (row_in && cols_in) {
        // The kw taps of this kernel row are kw * C contiguous input bytes (NHWC, unit dilation).
        copy_bytes(o, img + (ih * g.in_w + iw0) * C, kwc);
        o += kwc;
        continue;
      }
      for (int64_t j = 0; j < g.kw; ++j, o += C) {
        const int64_t iw = iw0 + j * g.dil_w;
        if (!row_in || iw < 0 || iw >= g.in_w) fill_bytes(o, pad_value, C);
        else copy_bytes(o, img + (ih * g.in_w + iw) * C, C);
      }
    }
    fill_bytes(o, pad_value, ldo - K);
    if (++ow == g.out_w) {
      ow = 0;
      if (++oh == g.out_h) oh = 0, ++n;
    }
  }
}

int64_t group_bytes(const Im2Col& g) { return (g.kw * g.channels + 3) / 4 * 4; }

namespace {
template <int R>
void groups_rows(const Im2Col& g, const uint8_t* x, uint8_t pad_value, int64_t row_begin, int64_t row_end,
                 uint8_t* out, int64_t ldo) {
  const int64_t C = g.channels, kwc = g.kw * C, total = g.batch * g.in_h * g.in_w * C;
  int64_t n = row_begin / (g.out_h * g.out_w), oh = (row_begin / g.out_w) % g.out_h, ow = row_begin % g.out_w;
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint8_t* o = out + (r - row_begin) * ldo;
    const int64_t iw0 = ow * g.stride_w - g.pad_left;
    const bool cols_in = iw0 >= 0 && iw0 + g.kw <= g.in_w;
    for (int64_t i = 0; i < g.kh; ++i, o += R) {
      const int64_t ih = oh * g.stride_h - g.pad_top + i * g.dil_h;
      if (ih < 0 || ih >= g.in_h) {
        std::memset(o, pad_value, R);  // constant size
        continue;
      }
      const int64_t at = ((n * g.in_h + ih) * g.in_w + iw0) * C;
      if (cols_in && at + R <= total) {
        std::memcpy(o, x + at, R);  // constant size: R / 4 moves
        continue;
      }
      for (int64_t b = 0; b < R; ++b) {
        const int64_t iw = iw0 + b / C;
        o[b] = b < kwc && iw >= 0 && iw < g.in_w ? x[at + b] : pad_value;
      }
    }
    if (++ow == g.out_w) {
      ow = 0;
      if (++oh == g.out_h) oh = 0, ++n;
    }
  }
}
}  // namespace

namespace {
// The table rows [row_begin, row_end); kTaps = taps when known at compile time (3x3: the loops over taps unroll and
// the offsets stay in registers), 0 for any count. ti / tj / off: per tap t = (i, j), its input row and column
// offsets (i dil_h, j dil_w) and its byte offset from the pixel under tap (0, 0), (i dil_h in_w + j dil_w) C.
template <int kTaps>
void indirection_rows(const Im2Col& g, const uint8_t* x, const uint8_t* pad_row, int64_t row_begin, int64_t row_end,
                      const int64_t* ti, const int64_t* tj, const int64_t* off, const uint8_t** out) {
  const int64_t C = g.channels, taps = kTaps > 0 ? kTaps : g.kh * g.kw;
  const int64_t ih_span = (g.kh - 1) * g.dil_h, iw_span = (g.kw - 1) * g.dil_w;
  // Output columns whose taps all lie inside the input columns: pad_left <= ow sw <= in_w - 1 - iw_span + pad_left.
  const int64_t ow_lo = (g.pad_left + g.stride_w - 1) / g.stride_w;
  const int64_t ow_hi = g.in_w - 1 - iw_span + g.pad_left < 0 ? 0 : (g.in_w - 1 - iw_span + g.pad_left) / g.stride_w + 1;
  // One output-image row (n, oh) at a time: columns [ow0, ow1) of it are rows [r, r + ow1 - ow0) of the table.
  for (int64_t r = row_begin; r < row_end;) {
    const int64_t n = r / (g.out_h * g.out_w), oh = (r / g.out_w) % g.out_h, ow0 = r % g.out_w;
    const int64_t ow1 = std::min(g.out_w, ow0 + (row_end - r));
    const uint8_t* img = x + n * g.in_h * g.in_w * C;
    const int64_t ih0 = oh * g.stride_h - g.pad_top;
    const bool rows_in = ih0 >= 0 && ih0 + ih_span < g.in_h;
    const int64_t a = rows_in ? std::clamp(ow_lo, ow0, ow1) : ow1, b = rows_in ? std::clamp(ow_hi, a, ow1) : ow1;
    // Border pixels: per tap, inside the input (unsigned compares) or the zero-point row; branch-free. The address
    // is formed in integers so no out-of-range pointer is ever computed.
    auto border = [&](int64_t ow) {
      const int64_t iw0 = ow * g.stride_w - g.pad_left;
      const uintptr_t base = reinterpret_cast<uintptr_t>(img) + static_cast<uintptr_t>((ih0 * g.in_w + iw0) * C);
      const uintptr_t pad = reinterpret_cast<uintptr_t>(pad_row);
      const uint8_t** o = out + (ow - ow0) * taps;
      for (int64_t t = 0; t < taps; ++t) {
        const bool in = static_cast<uint64_t>(ih0 + ti[t]) < static_cast<uint64_t>(g.in_h) &&
                        static_cast<uint64_t>(iw0 + tj[t]) < static_cast<uint64_t>(g.in_w);
        o[t] = reinterpret_cast<const uint8_t*>(in ? base + static_cast<uintptr_t>(off[t]) : pad);
      }
    };
    for (int64_t ow = ow0; ow < a; ++ow) border(ow);
    // Interior pixels (the common case): the pixel's base, stepping by stride_w pixels, plus the constant offsets.
    if (a < b) {
      const uint8_t* base = img + (ih0 * g.in_w + a * g.stride_w - g.pad_left) * C;
      const int64_t step = g.stride_w * C;
      const uint8_t** o = out + (a - ow0) * taps;
      for (int64_t ow = a; ow < b; ++ow, base += step, o += taps)
        for (int64_t t = 0; t < taps; ++t) o[t] = base + off[t];
    }
    for (int64_t ow = b; ow < ow1; ++ow) border(ow);
    out += (ow1 - ow0) * taps;
    r += ow1 - ow0;
  }
}
}  // namespace

namespace {
// Checks the kernel-row-group geometry and calls f(std::integral_constant<int, R>) for R = group_bytes(g).
template <typename F>
void with_group_bytes(const Im2Col& g, int64_t ldo, const char* who, F&& f) {
  const int64_t R = group_bytes(g);
  PERCH_CHECK(g.dil_w == 1 && R <= 16 && ldo == g.kh * R, who, ": needs unit width dilation, R = ", R,
              " <= 16 and ldo = kh * R, got dil_w ", g.dil_w, ", ldo ", ldo);
  switch (R) {
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    case 12: return f(std::integral_constant<int, 12>{});
    default: return f(std::integral_constant<int, 16>{});
  }
}
}  // namespace

void im2col_groups(const Im2Col& g, const uint8_t* x, uint8_t pad_value, int64_t row_begin, int64_t row_end,
                   uint8_t* out, int64_t ldo) {
  with_group_bytes(g, ldo, "im2col_groups", [&](auto r) {
    groups_rows<decltype(r)::value>(g, x, pad_value, row_begin, row_end, out, ldo);
  });
}

PaddedImages padded_geometry(const Im2Col& g) {
  // Rows: every input row after the top padding, and the last patch's last kernel row. Row bytes: every input
  // pixel after the left padding, and the last patch's R-byte group (its first tap at padded column ow * sw).
  PaddedImages p;
  p.rows = std::max(g.pad_top + g.in_h, (g.out_h - 1) * g.stride_h + (g.kh - 1) * g.dil_h + 1);
  p.row_bytes = std::max((g.pad_left + g.in_w) * g.channels, (g.out_w - 1) * g.stride_w * g.channels + group_bytes(g));
  return p;
}

void pad_images_nhwc(const Im2Col& g, const PaddedImages& p, const uint8_t* x, uint8_t pad_value, uint8_t* out) {
  std::memset(out, pad_value, static_cast<size_t>(g.batch * p.bytes_per_image()));
  const int64_t row = g.in_w * g.channels;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t ih = 0; ih < g.in_h; ++ih)
      std::memcpy(out + n * p.bytes_per_image() + (ih + g.pad_top) * p.row_bytes + g.pad_left * g.channels,
                  x + (n * g.in_h + ih) * row, static_cast<size_t>(row));
}

namespace {
template <int R>
void padded_groups_rows(const Im2Col& g, const PaddedImages& p, const uint8_t* padded, int64_t row_begin,
                        int64_t row_end, uint8_t* out, int64_t ldo) {
  const int64_t step_w = g.stride_w * g.channels, step_i = g.dil_h * p.row_bytes;
  int64_t n = row_begin / (g.out_h * g.out_w), oh = (row_begin / g.out_w) % g.out_h, ow = row_begin % g.out_w;
  const uint8_t* line = padded + n * p.bytes_per_image() + oh * g.stride_h * p.row_bytes;
  for (int64_t r = row_begin; r < row_end; ++r) {
    uint8_t* o = out + (r - row_begin) * ldo;
    const uint8_t* src = line + ow * step_w;
    for (int64_t i = 0; i < g.kh; ++i) std::memcpy(o + i * R, src + i * step_i, R);  // constant size: R / 4 moves
    if (++ow == g.out_w) {
      ow = 0;
      if (++oh == g.out_h) oh = 0, ++n;
      line = padded + n * p.bytes_per_image() + oh * g.stride_h * p.row_bytes;
    }
  }
}
}  // namespace

void im2col_groups_padded(const Im2Col& g, const PaddedImages& p, const uint8_t* padded, int64_t row_begin,
                          int64_t row_end, uint8_t* out, int64_t ldo) {
  with_group_bytes(g, ldo, "im2col_groups_padded", [&](auto r) {
    padded_groups_rows<decltype(r)::value>(g, p, padded, row_begin, row_end, out, ldo);
  });
}

void conv_indirection_nhwc(const Im2Col& g, const uint8_t* x, const uint8_t* pad_row, int64_t row_begin,
                           int64_t row_end, const uint8_t** out) {
  const int64_t taps = g.kh * g.kw;
  std::vector<int64_t> off(static_cast<size_t>(taps)), ti(off.size()), tj(off.size());
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const size_t t = static_cast<size_t>(i * g.kw + j);
      ti[t] = i * g.dil_h, tj[t] = j * g.dil_w;
      off[t] = (ti[t] * g.in_w + tj[t]) * g.channels;
    }
  if (taps == 9) {
    int64_t a[9], b[9], o[9];  // local copies: the compiler keeps them in registers / folds them
    std::copy(ti.begin(), ti.end(), a), std::copy(tj.begin(), tj.end(), b), std::copy(off.begin(), off.end(), o);
    return indirection_rows<9>(g, x, pad_row, row_begin, row_end, a, b, o, out);
  }
  indirection_rows<0>(g, x, pad_row, row_begin, row_end, ti.data(), tj.data(), off.data(), out);
}

void quantize_f32(const float* x, int64_t n, float scale, int32_t zero_point, int32_t qmin, int32_t qmax, uint8_t* y) {
  const float lo = static_cast<float>(qmin - zero_point), hi = static_cast<float>(qmax - zero_point);
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] / scale;   // float division, as QuantizeLinear
    v = v == v ? v : 0.0f;    // NaN -> zero point
    v = v < lo ? lo : v;      // clamping before rounding to the integer bounds [lo, hi] commutes with
    v = v > hi ? hi : v;      // rounding (and sends +-inf to qmax / qmin)
    // Round half to even: |v| <= 510 < 2^22, so adding 1.5 * 2^23 leaves no fraction bits and the float
    // addition rounds to nearest, ties to even; subtracting it back is exact.
    const float r = (v + 12582912.0f) - 12582912.0f;
    y[i] = static_cast<uint8_t>(static_cast<int32_t>(r) + zero_point);
  }
}

void lut1_reference(const uint8_t* x, int64_t n, const uint8_t* table, uint8_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = table[x[i]];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PERCH_LUT1_VBMI 1
namespace {
// 64 lookups per step: VPERMI2B picks, for each index byte, entry (idx & 127) of the 128-byte table half formed by
// two registers; the index's bit 7 (VPMOVB2M) selects which half's result to keep.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void lut1_vbmi(const uint8_t* x, int64_t n,
                                                                       const uint8_t* table, uint8_t* y) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  for (int64_t i = 0; i < n; i += 64) {
    const __mmask64 m = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
    const __m512i idx = _mm512_maskz_loadu_epi8(m, x + i);
    const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1), hi = _mm512_permutex2var_epi8(t2, idx, t3);
    const __m512i v = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
    if (n - i >= 64) _mm512_storeu_si512(y + i, v);  // plain stores but for the tail (masked stores cost more)
    else _mm512_mask_storeu_epi8(y + i, m, v);
  }
}
}  // namespace
#endif

void lut1(const uint8_t* x, int64_t n, const uint8_t* table, uint8_t* y) {
#ifdef PERCH_LUT1_VBMI
  static const bool vbmi = cpu_features().avx512vbmi;
  if (vbmi && has_path(active_paths(), Path::kAvx512Vnni)) return lut1_vbmi(x, n, table, y);
#endif
  lut1_reference(x, n, table, y);
}

void lut2(const uint8_t* a, const uint8_t* b, int64_t n, const uint8_t* table, uint8_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = table[(size_t{a[i]} << 8) | b[i]];
}

// ---- Binary8 ----

namespace {
// One element of the Binary8 formula (scalar; the definition both paths follow).
__attribute__((optimize("fp-contract=off"))) inline uint8_t binary8_one(const Binary8& f, uint8_t ra, uint8_t rb) {
  const int32_t qa = f.a_signed ? int32_t{static_cast<int8_t>(ra)} : int32_t{ra};
  const int32_t qb = f.b_signed ? int32_t{static_cast<int8_t>(rb)} : int32_t{rb};
  const float fa = static_cast<float>(qa - f.za) * f.sa;
  const float fb = static_cast<float>(qb - f.zb) * f.sb;
  const float x = f.op == Binary8::Op::kAdd ? fa + fb : (f.op == Binary8::Op::kSub ? fa - fb : fa * fb);
  // QuantizeLinear as quantize_f32 (exactly quant::quantize_value): divide, NaN -> zero point, clamp to the
  // integer bounds (commutes with rounding), round half to even with the 1.5 * 2^23 addition.
  float v = f.reciprocal ? x * f.inv_sy : x / f.sy;
  const float lo = static_cast<float>(f.qmin - f.zy), hi = static_cast<float>(f.qmax - f.zy);
  v = v == v ? v : 0.0f;
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  const float r = (v + 12582912.0f) - 12582912.0f;
  return static_cast<uint8_t>(static_cast<int32_t>(r) + f.zy);
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PERCH_BINARY8_SIMD 1  // binary8_avx512 and binary8_avx2 exist
// 16 elements per step, the same operations in the same order as binary8_one (no FMA: separate VMULPS / VADDPS).
// The operation, the division or reciprocal and the input signedness are template arguments and every constant a
// local: a byte store to y may alias `f`, so reading f's fields in the loop would reload them every step.
// GCC 12 reports the intrinsics' internal _mm512_undefined_* temporaries as maybe-uninitialized once these are
// inlined through templates (a known false positive of avx512fintrin.h).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct Binary8Consts {
  __m512i za, zb, zy;
  __m512 sa, sb, sy, inv, lo, hi, magic;
};

template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline __m128i binary8_step(const Binary8Consts& c,
                                                                                               __m128i ra, __m128i rb) {
  const __m512i qa = kAs ? _mm512_cvtepi8_epi32(ra) : _mm512_cvtepu8_epi32(ra);
  const __m512i qb = kBs ? _mm512_cvtepi8_epi32(rb) : _mm512_cvtepu8_epi32(rb);
  const __m512 fa = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qa, c.za)), c.sa);
  const __m512 fb = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qb, c.zb)), c.sb);
  const __m512 x = kOp == Binary8::Op::kAdd   ? _mm512_add_ps(fa, fb)
                   : kOp == Binary8::Op::kSub ? _mm512_sub_ps(fa, fb)
                                              : _mm512_mul_ps(fa, fb);
  __m512 v = kRecip ? _mm512_mul_ps(x, c.inv) : _mm512_div_ps(x, c.sy);
  v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN -> 0
  v = _mm512_min_ps(_mm512_max_ps(v, c.lo), c.hi);
  const __m512 r = _mm512_sub_ps(_mm512_add_ps(v, c.magic), c.magic);
  return _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvttps_epi32(r), c.zy));  // r is an integer: exact; q's low byte
}

template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void binary8_avx512_t(const Binary8& f, const uint8_t* a,
                                                                          const uint8_t* b, int64_t n, uint8_t* y) {
  Binary8Consts c;
  c.za = _mm512_set1_epi32(f.za), c.zb = _mm512_set1_epi32(f.zb), c.zy = _mm512_set1_epi32(f.zy);
  c.sa = _mm512_set1_ps(f.sa), c.sb = _mm512_set1_ps(f.sb), c.sy = _mm512_set1_ps(f.sy);
  c.inv = _mm512_set1_ps(f.inv_sy);
  c.lo = _mm512_set1_ps(static_cast<float>(f.qmin - f.zy)), c.hi = _mm512_set1_ps(static_cast<float>(f.qmax - f.zy));
  c.magic = _mm512_set1_ps(12582912.0f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i ra = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i));
    const __m128i rb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), binary8_step<kOp, kRecip, kAs, kBs>(c, ra, rb));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m128i ra = _mm_maskz_loadu_epi8(m, a + i), rb = _mm_maskz_loadu_epi8(m, b + i);
    _mm_mask_storeu_epi8(y + i, m, binary8_step<kOp, kRecip, kAs, kBs>(c, ra, rb));
  }
}

// AVX2 (8 elements per step): the same operations in the same order.
struct Binary8Consts8 {
  __m256i za, zb, zy, lowbyte;
  __m256 sa, sb, sy, inv, lo, hi, magic;
};

template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
__attribute__((target("avx2"), always_inline)) inline uint64_t binary8_step8(const Binary8Consts8& c, __m128i ra,
                                                                            __m128i rb) {
  const __m256i qa = kAs ? _mm256_cvtepi8_epi32(ra) : _mm256_cvtepu8_epi32(ra);
  const __m256i qb = kBs ? _mm256_cvtepi8_epi32(rb) : _mm256_cvtepu8_epi32(rb);
  const __m256 fa = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(qa, c.za)), c.sa);
  const __m256 fb = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(qb, c.zb)), c.sb);
  const __m256 x = kOp == Binary8::Op::kAdd   ? _mm256_add_ps(fa, fb)
                   : kOp == Binary8::Op::kSub ? _mm256_sub_ps(fa, fb)
                                              : _mm256_mul_ps(fa, fb);
  __m256 v = kRecip ? _mm256_mul_ps(x, c.inv) : _mm256_div_ps(x, c.sy);
  v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> 0
  v = _mm256_min_ps(_mm256_max_ps(v, c.lo), c.hi);
  const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, c.magic), c.magic);
  // q in [qmin, qmax]; its low byte is the code: mask to 0..255, then two unsigned packs are exact. After them,
  // bytes 0-3 of each 128-bit lane hold that lane's four codes.
  const __m256i q = _mm256_and_si256(_mm256_add_epi32(_mm256_cvttps_epi32(r), c.zy), c.lowbyte);
  const __m256i p16 = _mm256_packus_epi32(q, q);
  const __m256i p8 = _mm256_packus_epi16(p16, p16);
  return static_cast<uint32_t>(_mm256_extract_epi32(p8, 0)) |
         (uint64_t{static_cast<uint32_t>(_mm256_extract_epi32(p8, 4))} << 32);
}

template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
__attribute__((target("avx2"))) void binary8_avx2_t(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n,
                                                    uint8_t* y) {
  Binary8Consts8 c;
  c.za = _mm256_set1_epi32(f.za), c.zb = _mm256_set1_epi32(f.zb), c.zy = _mm256_set1_epi32(f.zy);
  c.lowbyte = _mm256_set1_epi32(0xff);
  c.sa = _mm256_set1_ps(f.sa), c.sb = _mm256_set1_ps(f.sb), c.sy = _mm256_set1_ps(f.sy);
  c.inv = _mm256_set1_ps(f.inv_sy);
  c.lo = _mm256_set1_ps(static_cast<float>(f.qmin - f.zy)), c.hi = _mm256_set1_ps(static_cast<float>(f.qmax - f.zy));
  c.magic = _mm256_set1_ps(12582912.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i ra = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + i));
    const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + i));
    const uint64_t out = binary8_step8<kOp, kRecip, kAs, kBs>(c, ra, rb);
    std::memcpy(y + i, &out, 8);
  }
  if (i < n) {
    uint8_t ta[8] = {}, tb[8] = {};
    std::memcpy(ta, a + i, static_cast<size_t>(n - i));
    std::memcpy(tb, b + i, static_cast<size_t>(n - i));
    const __m128i ra = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(ta));
    const __m128i rb = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tb));
    const uint64_t out = binary8_step8<kOp, kRecip, kAs, kBs>(c, ra, rb);
    std::memcpy(y + i, &out, static_cast<size_t>(n - i));
  }
}
#pragma GCC diagnostic pop

// Dispatch over (op, reciprocal, signedness) to Impl<kOp, kRecip, kAs, kBs>::run.
template <template <Binary8::Op, bool, bool, bool> class Impl, Binary8::Op kOp, bool kRecip>
void binary8_signs(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  if (f.a_signed)
    return f.b_signed ? Impl<kOp, kRecip, true, true>::run(f, a, b, n, y)
                      : Impl<kOp, kRecip, true, false>::run(f, a, b, n, y);
  return f.b_signed ? Impl<kOp, kRecip, false, true>::run(f, a, b, n, y)
                    : Impl<kOp, kRecip, false, false>::run(f, a, b, n, y);
}
template <template <Binary8::Op, bool, bool, bool> class Impl, Binary8::Op kOp>
void binary8_recip(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  return f.reciprocal ? binary8_signs<Impl, kOp, true>(f, a, b, n, y) : binary8_signs<Impl, kOp, false>(f, a, b, n, y);
}
template <template <Binary8::Op, bool, bool, bool> class Impl>
void binary8_dispatch(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  using Op = Binary8::Op;
  if (f.op == Op::kAdd) return binary8_recip<Impl, Op::kAdd>(f, a, b, n, y);
  if (f.op == Op::kSub) return binary8_recip<Impl, Op::kSub>(f, a, b, n, y);
  return binary8_recip<Impl, Op::kMul>(f, a, b, n, y);
}
template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
struct Avx512Impl {
  static void run(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
    binary8_avx512_t<kOp, kRecip, kAs, kBs>(f, a, b, n, y);
  }
};
template <Binary8::Op kOp, bool kRecip, bool kAs, bool kBs>
struct Avx2Impl {
  static void run(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
    binary8_avx2_t<kOp, kRecip, kAs, kBs>(f, a, b, n, y);
  }
};

void binary8_avx2(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  binary8_dispatch<Avx2Impl>(f, a, b, n, y);
}

void binary8_avx512(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  binary8_dispatch<Avx512Impl>(f, a, b, n, y);
}
#endif
}  // namespace

void binary8_reference(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = binary8_one(f, a[i], b[i]);
}

void binary8(const Binary8& f, const uint8_t* a, const uint8_t* b, int64_t n, uint8_t* y) {
#ifdef PERCH_BINARY8_SIMD
  const uint32_t paths = active_paths();  // kAvx512Vnni implies AVX-512 F/BW/VL
  if (has_path(paths, Path::kAvx512Vnni)) return binary8_avx512(f, a, b, n, y);
  if (has_path(paths, Path::kAvx2)) return binary8_avx2(f, a, b, n, y);
#endif
  binary8_reference(f, a, b, n, y);
}

bool binary8_matches(const Binary8& f, const uint8_t* table) {
  std::vector<uint8_t> a(65536), b(65536), y(65536);
  for (size_t i = 0; i < 65536; ++i) a[i] = static_cast<uint8_t>(i >> 8), b[i] = static_cast<uint8_t>(i & 255);
  binary8_reference(f, a.data(), b.data(), 65536, y.data());
  if (std::memcmp(y.data(), table, 65536) != 0) return false;
#ifdef PERCH_BINARY8_SIMD
  if (has_path(supported_paths(), Path::kAvx512Vnni)) {
    binary8_avx512(f, a.data(), b.data(), 65536, y.data());
    if (std::memcmp(y.data(), table, 65536) != 0) return false;
  }
  if (has_path(supported_paths(), Path::kAvx2)) {
    binary8_avx2(f, a.data(), b.data(), 65536, y.data());
    if (std::memcmp(y.data(), table, 65536) != 0) return false;
  }
#endif
  return true;
}

}  // namespace perch::runtime::int8
