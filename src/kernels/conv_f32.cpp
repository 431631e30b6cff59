#include "perch/kernels/conv_f32.h"

#include <algorithm>
#include <vector>

#include "conv_internal.h"
#include "f32_avx512.h"
#include "perch/core/cpu.h"
#include "perch/core/threads.h"
#include "perch/kernels/gemm_f32.h"

namespace perch::kernels {

void conv2d_f32_reference(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t m = 0; m < s.out_channels; ++m) {
      const int64_t c0 = (m / mg) * cg;
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          double acc = bias ? bias[m] : 0.0;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
              const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
              if (ih < 0 || ih >= s.in_h) continue;
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
                if (iw < 0 || iw >= s.in_w) continue;
                acc += static_cast<double>(x[((n * s.in_channels + c0 + c) * s.in_h + ih) * s.in_w + iw]) *
                       w[((m * cg + c) * s.kernel_h + kh) * s.kernel_w + kw];
              }
            }
          y[((n * s.out_channels + m) * oh_n + oh) * ow_n + ow] = static_cast<float>(acc);
        }
    }
}

namespace detail {

// Output columns [lo, hi) whose input column ow*stride + off lies inside [0, in_w).
void valid_range(int64_t off, int64_t stride, int64_t in_w, int64_t ow_n, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = in_w - 1 - off < 0 ? 0 : (in_w - 1 - off) / stride + 1;
  hi = std::min(hi, ow_n);
  lo = std::min(lo, hi);
}

// col[(c*KH + kh)*KW + kw, oh*OW + ow] = x[c, ih, iw] (0 outside) for the cg channels starting at x (output rows
// [oh0, oh1), conv_internal.h). The valid column range of each (kh, kw) is computed once; stride-1 rows are copies.
void im2col(const Conv2dShape& s, int64_t cg, const float* x, float* col, int64_t oh0, int64_t oh1) {
  if (oh1 < 0) oh1 = s.out_h();
  if (s.stride_w == 1 && has_path(active_paths(), Path::kAvx512Vnni) && avx512::compiled())
    return avx512::im2col_stride1(s, cg, x, col, oh0, oh1);
  const int64_t ow_n = s.out_w(), rows = oh1 - oh0;
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * rows * ow_n;
        const float* xc = x + c * s.in_h * s.in_w;
        const int64_t off = kw * s.dil_w - s.pad_left;
        int64_t lo, hi;
        valid_range(off, s.stride_w, s.in_w, ow_n, lo, hi);
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          float* r = row + (oh - oh0) * ow_n;
          if (ih < 0 || ih >= s.in_h) {
            std::fill(r, r + ow_n, 0.0f);
            continue;
          }
          const float* xr = xc + ih * s.in_w + off;
          std::fill(r, r + lo, 0.0f);
          if (s.stride_w == 1) std::copy(xr + lo, xr + hi, r + lo);
          else
            for (int64_t ow = lo; ow < hi; ++ow) r[ow] = xr[ow * s.stride_w];
          std::fill(r + hi, r + ow_n, 0.0f);
        }
      }
}

// Copies input plane xc (in_h x in_w) into the ph x pw plane xp at (pad_top, pad_left), zeros elsewhere.
void pad_plane(const Conv2dShape& s, const float* xc, int64_t ph, int64_t pw, float* xp) {
  float* row = xp;
  for (int64_t r = 0; r < s.pad_top; ++r, row += pw) std::fill(row, row + pw, 0.0f);
  for (int64_t ih = 0; ih < s.in_h; ++ih, row += pw) {
    std::fill(row, row + s.pad_left, 0.0f);
    std::copy(xc + ih * s.in_w, xc + (ih + 1) * s.in_w, row + s.pad_left);
    std::fill(row + s.pad_left + s.in_w, row + pw, 0.0f);
  }
  for (int64_t r = s.pad_top + s.in_h; r < ph; ++r, row += pw) std::fill(row, row + pw, 0.0f);
}

}  // namespace detail

void im2col_f32(const Conv2dShape& s, const float* x, float* col) { detail::im2col(s, s.in_channels / s.group, x, col); }

namespace {

using detail::im2col;
using detail::pad_plane;

// Portable twin of avx512::depthwise_plane (same formula and summation order; the compiler vectorizes the
// stride-1 rows).
void depthwise_plane(const float* xp, int64_t pw, int64_t oh_n, int64_t ow_n, int64_t kh_n, int64_t kw_n, int64_t sh,
                     int64_t sw, int64_t dh, int64_t dw, const float* w, float bias, float* y) {
  for (int64_t oh = 0; oh < oh_n; ++oh) {
    float* yr = y + oh * ow_n;
    std::fill(yr, yr + ow_n, bias);
    for (int64_t kh = 0; kh < kh_n; ++kh) {
      const float* xr = xp + (oh * sh + kh * dh) * pw;
      for (int64_t kw = 0; kw < kw_n; ++kw) {
        const float wv = w[kh * kw_n + kw];
        const float* p = xr + kw * dw;
        if (sw == 1)
          for (int64_t ow = 0; ow < ow_n; ++ow) yr[ow] += wv * p[ow];
        else
          for (int64_t ow = 0; ow < ow_n; ++ow) yr[ow] += wv * p[ow * sw];
      }
    }
  }
}

// Depthwise (group == C): output channel m reads input channel m / (M/C). Each input plane is copied
// once into a zero-padded scratch plane (so the inner loops have no bounds checks), then every output
// channel it feeds is computed from it. Planes are spread over the thread pool.
void depthwise(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
               const ConvEpilogue& post) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const int64_t mult = s.out_channels / s.in_channels;
  // The padded extent, grown to every row/column the windows touch: Conv2dShape::out_h() rounds a
  // negative span toward zero, so a window may reach past the padding (those taps read zeros).
  const int64_t ph = std::max(s.in_h + s.pad_top + s.pad_bottom, (oh_n - 1) * s.stride_h + (s.kernel_h - 1) * s.dil_h + 1);
  const int64_t pw = std::max(s.in_w + s.pad_left + s.pad_right, (ow_n - 1) * s.stride_w + (s.kernel_w - 1) * s.dil_w + 1);
  const bool avx512 = has_path(active_paths(), Path::kAvx512Vnni) && avx512::compiled();
  auto plane_fn = avx512 ? avx512::depthwise_plane : depthwise_plane;
  const int64_t planes = s.batch * s.in_channels;
  const int64_t work = std::max<int64_t>(1, mult * oh_n * ow_n * s.kernel_h * s.kernel_w);
  parallel_for(0, planes, [&](int64_t lo, int64_t hi) {
    thread_local std::vector<float> xp;
    const size_t need = static_cast<size_t>(ph * pw + 32);  // +32: vector reads past the last row
    if (xp.size() < need) xp.assign(need, 0.0f);
    for (int64_t nc = lo; nc < hi; ++nc) {
      const int64_t n = nc / s.in_channels, c = nc % s.in_channels;
      pad_plane(s, x + nc * s.in_h * s.in_w, ph, pw, xp.data());
      for (int64_t j = 0; j < mult; ++j) {
        const int64_t m = c * mult + j;
        plane_fn(xp.data(), pw, oh_n, ow_n, s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.dil_h, s.dil_w,
                 w + m * s.kernel_h * s.kernel_w, bias ? bias[m] : 0.0f, y + (n * s.out_channels + m) * oh_n * ow_n);
      }
      if (post) post(y + (n * s.out_channels + c * mult) * oh_n * ow_n, mult * oh_n * ow_n);  // this plane's outputs
    }
  }, std::max<int64_t>(1, 32768 / work));
}

}  // namespace

void conv2d_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y,
                const ConvEpilogue& post) {
  if (!has_path(active_paths(), Path::kOptimized)) {
    conv2d_f32_reference(s, x, w, bias, y);
    if (post) post(y, s.batch * s.out_channels * s.out_h() * s.out_w());
    return;
  }
  if (s.is_depthwise()) return depthwise(s, x, w, bias, y, post);
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), hw = oh_n * ow_n;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  const int64_t kdim = cg * s.kernel_h * s.kernel_w;
  const bool direct = s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
                      s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0;
  // Units of work: (image, group, block of output channels). Output channels are split only when there
  // are fewer (image, group) pairs than threads (small batches), in blocks of 8 (the GEMM tile height).
  const int64_t pairs = s.batch * s.group;
  const int64_t threads = num_threads();
  int64_t mblocks = pairs >= threads ? 1 : std::min((threads + pairs - 1) / pairs, (mg + 7) / 8);
  // Splitting tiny convs costs more than it saves.
  if (mg * kdim * hw < 200000) mblocks = 1;
  const int64_t mb = ((mg + mblocks - 1) / mblocks + 7) / 8 * 8;
  mblocks = (mg + mb - 1) / mb;
  const int64_t flops = std::max<int64_t>(1, mb * kdim * hw);
  // A large im2col (more than kColFloats floats: det's 96-channel 3x3 convs at 80x80 would need 22 MB) is built and
  // multiplied in blocks of output rows, so the column buffer stays in the L2 cache between im2col and the GEMM.
  // Each output element's dot product is the same sum either way (the GEMM splits columns, not K).
  constexpr int64_t kColFloats = int64_t{1} << 17;  // 512 KB
  const int64_t row_block = direct || kdim * hw <= kColFloats ? oh_n : std::max<int64_t>(1, kColFloats / (kdim * ow_n));
  parallel_for(0, pairs * mblocks, [&](int64_t lo, int64_t hi) {
    // im2col scratch, reused across calls on this thread (no allocation/page faults per image).
    thread_local std::vector<float> col;
    const size_t col_n = static_cast<size_t>(kdim * std::min(row_block, oh_n) * ow_n);
    if (!direct && col.size() < col_n) col.resize(col_n);
    int64_t last_pair = -1;
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t pair = u / mblocks, m0 = (u % mblocks) * mb, m1 = std::min(mg, m0 + mb);
      const int64_t n = pair / s.group, g = pair % s.group;
      const float* xg = x + (n * s.in_channels + g * cg) * s.in_h * s.in_w;
      float* yg = y + (n * s.out_channels + g * mg) * hw;
      for (int64_t m = m0; m < m1; ++m) std::fill(yg + m * hw, yg + (m + 1) * hw, bias ? bias[g * mg + m] : 0.0f);
      for (int64_t oh0 = 0; oh0 < oh_n; oh0 += row_block) {
        const int64_t oh1 = std::min(oh_n, oh0 + row_block), cols = (oh1 - oh0) * ow_n;
        // The whole im2col (one block) is kept for the next output-channel block of the same image and group.
        if (!direct && (row_block < oh_n || pair != last_pair)) im2col(s, cg, xg, col.data(), oh0, oh1);
        GemmF32Args a;
        a.m = m1 - m0, a.n = cols, a.k = kdim, a.alpha = 1.0f, a.beta = 1.0f;
        a.a = w + (g * mg + m0) * kdim, a.lda = kdim;
        a.b = direct ? xg + oh0 * ow_n : col.data(), a.ldb = direct ? hw : cols;
        a.c = yg + m0 * hw + oh0 * ow_n, a.ldc = hw;
        gemm_f32(a);
      }
      if (post) post(yg + m0 * hw, (m1 - m0) * hw);  // output channels [m0, m1) of this image and group, finished
      last_pair = pair;
    }
  }, std::max<int64_t>(1, 65536 / flops));
}

}  // namespace perch::kernels
