#include "perch/kernels/conv_f32.h"

#include <algorithm>
#include <vector>

#include "perch/core/cpu.h"
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

namespace {

// col[(c*KH + kh)*KW + kw, oh*OW + ow] = x[c, ih, iw] (0 outside) for the cg channels starting at x.
void im2col(const Conv2dShape& s, int64_t cg, const float* x, float* col) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * oh_n * ow_n;
        const float* xc = x + c * s.in_h * s.in_w;
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          float* r = row + oh * ow_n;
          if (ih < 0 || ih >= s.in_h) {
            std::fill(r, r + ow_n, 0.0f);
            continue;
          }
          const float* xr = xc + ih * s.in_w;
          for (int64_t ow = 0; ow < ow_n; ++ow) {
            const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
            r[ow] = (iw >= 0 && iw < s.in_w) ? xr[iw] : 0.0f;
          }
        }
      }
}

// Depthwise (group == C): each output channel m reads input channel m / (M/C). Direct loops with the
// interior (no bounds checks) separated from the border.
void depthwise(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const int64_t mult = s.out_channels / s.in_channels;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t m = 0; m < s.out_channels; ++m) {
      const float* xc = x + (n * s.in_channels + m / mult) * s.in_h * s.in_w;
      const float* wm = w + m * s.kernel_h * s.kernel_w;
      float* yc = y + (n * s.out_channels + m) * oh_n * ow_n;
      const float b = bias ? bias[m] : 0.0f;
      for (int64_t oh = 0; oh < oh_n; ++oh) {
        float* yr = yc + oh * ow_n;
        std::fill(yr, yr + ow_n, b);
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          const float* xr = xc + ih * s.in_w;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const float wv = wm[kh * s.kernel_w + kw];
            const int64_t off = kw * s.dil_w - s.pad_left;
            // ow range with 0 <= ow*stride + off < in_w
            int64_t lo = off >= 0 ? 0 : (-off + s.stride_w - 1) / s.stride_w;
            int64_t hi = (s.in_w - 1 - off) < 0 ? -1 : (s.in_w - 1 - off) / s.stride_w;
            hi = std::min(hi, ow_n - 1);
            if (s.stride_w == 1) {
              const float* xp = xr + off;
              for (int64_t ow = lo; ow <= hi; ++ow) yr[ow] += wv * xp[ow];
            } else {
              for (int64_t ow = lo; ow <= hi; ++ow) yr[ow] += wv * xr[ow * s.stride_w + off];
            }
          }
        }
      }
    }
}

}  // namespace

void conv2d_f32(const Conv2dShape& s, const float* x, const float* w, const float* bias, float* y) {
  if (!has_path(active_paths(), Path::kOptimized)) return conv2d_f32_reference(s, x, w, bias, y);
  if (s.is_depthwise()) return depthwise(s, x, w, bias, y);
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), hw = oh_n * ow_n;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  const int64_t kdim = cg * s.kernel_h * s.kernel_w;
  const bool direct = s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
                      s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0;
  // im2col scratch, reused across calls on this thread (no allocation/page faults per image).
  thread_local std::vector<float> col;
  if (!direct && col.size() < static_cast<size_t>(kdim * hw)) col.resize(static_cast<size_t>(kdim * hw));
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t g = 0; g < s.group; ++g) {
      const float* xg = x + (n * s.in_channels + g * cg) * s.in_h * s.in_w;
      float* yg = y + (n * s.out_channels + g * mg) * hw;
      const float* b_mat = xg;
      if (!direct) {
        im2col(s, cg, xg, col.data());
        b_mat = col.data();
      }
      for (int64_t m = 0; m < mg; ++m) std::fill(yg + m * hw, yg + (m + 1) * hw, bias ? bias[g * mg + m] : 0.0f);
      GemmF32Args a;
      a.m = mg, a.n = hw, a.k = kdim, a.alpha = 1.0f, a.beta = 1.0f;
      a.a = w + g * mg * kdim, a.lda = kdim, a.b = b_mat, a.ldb = hw, a.c = yg, a.ldc = hw;
      gemm_f32(a);
    }
}

}  // namespace perch::kernels
