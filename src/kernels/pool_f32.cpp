#include "perch/kernels/pool_f32.h"

#include <algorithm>
#include <limits>

#include "f32_avx512.h"
#include "perch/core/cpu.h"
#include "perch/core/threads.h"

namespace perch::kernels {

namespace {
int64_t pooled(int64_t in, int64_t k, int64_t stride, int64_t pad_a, int64_t pad_b, int64_t dil, bool ceil_mode) {
  const int64_t span = in + pad_a + pad_b - dil * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  // With ceil_mode the last window must start inside the input or the left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad_a) --out;
  return out;
}
}  // namespace

int64_t Pool2dShape::out_h() const { return pooled(in_h, kernel_h, stride_h, pad_top, pad_bottom, dil_h, ceil_mode); }
int64_t Pool2dShape::out_w() const { return pooled(in_w, kernel_w, stride_w, pad_left, pad_right, dil_w, ceil_mode); }

void maxpool2d_f32(const Pool2dShape& s, const float* x, float* y) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  // Output columns [lo, hi) whose whole window lies inside the input columns: no bounds checks there.
  int64_t lo = 0;
  while (lo < ow_n && lo * s.stride_w - s.pad_left < 0) ++lo;
  int64_t hi = ow_n;
  while (hi > lo && (hi - 1) * s.stride_w - s.pad_left + (s.kernel_w - 1) * s.dil_w >= s.in_w) --hi;
  const bool fast = s.kernel_h == 2 && s.kernel_w == 2 && s.stride_h == 2 && s.stride_w == 2 && s.dil_h == 1 &&
                    s.dil_w == 1 && s.pad_top == 0 && s.pad_left == 0 && 2 * oh_n <= s.in_h && 2 * ow_n <= s.in_w;
  parallel_for(0, s.batch * s.channels, [&](int64_t nc0, int64_t nc1) {
    for (int64_t nc = nc0; nc < nc1; ++nc) {
      const float* xc = x + nc * s.in_h * s.in_w;
      float* yc = y + nc * oh_n * ow_n;
      if (fast) {
        // 2x2 stride 2 inside the input: the generic loop's comparisons in its order, max(max(max(max(-inf,
        // a), b), e), f) with std::max's rule (keep the left operand unless it is less), unrolled.
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const float* r0 = xc + 2 * oh * s.in_w;
          const float* r1 = r0 + s.in_w;
          float* yr = yc + oh * ow_n;
          for (int64_t ow = 0; ow < ow_n; ++ow) {
            float m = -std::numeric_limits<float>::infinity();
            m = std::max(m, r0[2 * ow]);
            m = std::max(m, r0[2 * ow + 1]);
            m = std::max(m, r1[2 * ow]);
            yr[ow] = std::max(m, r1[2 * ow + 1]);
          }
        }
        continue;
      }
      for (int64_t oh = 0; oh < oh_n; ++oh) {
        float* yr = yc + oh * ow_n;
        auto edge = [&](int64_t ow) {
          float best = -std::numeric_limits<float>::infinity();
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
              if (iw < 0 || iw >= s.in_w) continue;
              best = std::max(best, xc[ih * s.in_w + iw]);
            }
          }
          yr[ow] = best;
        };
        for (int64_t ow = 0; ow < lo; ++ow) edge(ow);
        for (int64_t ow = hi; ow < ow_n; ++ow) edge(ow);
        if (lo >= hi) continue;
        // Interior: same comparisons in the same order as edge(), rows outside the input skipped.
        std::fill(yr + lo, yr + hi, -std::numeric_limits<float>::infinity());
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          const float* xr = xc + ih * s.in_w - s.pad_left;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const float* p = xr + kw * s.dil_w;
            for (int64_t ow = lo; ow < hi; ++ow) yr[ow] = std::max(yr[ow], p[ow * s.stride_w]);
          }
        }
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, oh_n * ow_n * s.kernel_h * s.kernel_w)));
}

void avgpool2d_f32(const Pool2dShape& s, const float* x, float* y) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  for (int64_t nc = 0; nc < s.batch * s.channels; ++nc) {
    const float* xc = x + nc * s.in_h * s.in_w;
    float* yc = y + nc * oh_n * ow_n;
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow) {
        double sum = 0.0;
        int64_t inside = 0, padded = 0;
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
            const bool in_h = ih >= 0 && ih < s.in_h, in_w = iw >= 0 && iw < s.in_w;
            if (in_h && in_w) {
              sum += xc[ih * s.in_w + iw];
              ++inside;
            }
            // padded cells: inside the padded extent but outside the input
            if (ih >= -s.pad_top && ih < s.in_h + s.pad_bottom && iw >= -s.pad_left && iw < s.in_w + s.pad_right) ++padded;
          }
        }
        const int64_t div = s.count_include_pad ? padded : inside;
        yc[oh * ow_n + ow] = div > 0 ? static_cast<float>(sum / static_cast<double>(div)) : 0.0f;
      }
  }
}

// Portable twin of avx512::maxpool2x2_backward_plane (f32_avx512.h has the contract). Windows do not
// overlap, so each input element gets either its window's gradient or 0: all four are written directly
// (no zero fill, no scatter). The window's first maximum in row-major order: the larger of each row (the
// left one on ties or NaN), then row 1 only if strictly greater. "+ 0.0f" keeps the general path's
// 0.0f + g (a -0 gradient becomes +0).
namespace {
void maxpool2x2_backward_plane(const float* x, const float* g, float* dx, int64_t in_w, int64_t oh_n, int64_t ow_n) {
  for (int64_t oh = 0; oh < oh_n; ++oh) {
    const float* r0 = x + 2 * oh * in_w;
    const float* r1 = r0 + in_w;
    float* d0 = dx + 2 * oh * in_w;
    float* d1 = d0 + in_w;
    const float* gr = g + oh * ow_n;
    for (int64_t ow = 0; ow < ow_n; ++ow) {
      const int64_t c = 2 * ow;
      const float a = r0[c], b = r0[c + 1], e = r1[c], f = r1[c + 1], gv = gr[ow];
      const bool right0 = b > a, right1 = f > e;
      const bool row1 = (right1 ? f : e) > (right0 ? b : a);
      d0[c] = (!row1 && !right0 ? gv : 0.0f) + 0.0f;
      d0[c + 1] = (!row1 && right0 ? gv : 0.0f) + 0.0f;
      d1[c] = (row1 && !right1 ? gv : 0.0f) + 0.0f;
      d1[c + 1] = (row1 && right1 ? gv : 0.0f) + 0.0f;
    }
  }
}

}  // namespace

void maxpool2d_backward_f32(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), in_hw = s.in_h * s.in_w;
  // 2x2 windows, stride 2, no padding or dilation (every window inside the input): the same rule (first
  // maximum in row-major window order) without bounds checks.
  const bool fast = s.kernel_h == 2 && s.kernel_w == 2 && s.stride_h == 2 && s.stride_w == 2 && s.dil_h == 1 &&
                    s.dil_w == 1 && s.pad_top == 0 && s.pad_left == 0 && 2 * oh_n <= s.in_h && 2 * ow_n <= s.in_w;
  const bool avx512 = has_path(active_paths(), Path::kAvx512Vnni) && avx512::compiled();
  auto plane = avx512 ? avx512::maxpool2x2_backward_plane : maxpool2x2_backward_plane;
  parallel_for(0, s.batch * s.channels, [&](int64_t lo, int64_t hi) {
    for (int64_t nc = lo; nc < hi; ++nc) {
      const float* xc = x + nc * in_hw;
      const float* g = dy + nc * oh_n * ow_n;
      float* d = dx + nc * in_hw;
      if (fast) {
        plane(xc, g, d, s.in_w, oh_n, ow_n);
        if (2 * ow_n < s.in_w)  // odd width: the last column belongs to no window
          for (int64_t r = 0; r < 2 * oh_n; ++r) d[r * s.in_w + s.in_w - 1] = 0.0f;
        std::fill(d + 2 * oh_n * s.in_w, d + in_hw, 0.0f);  // odd height: the last row neither
        continue;
      }
      std::fill(d, d + in_hw, 0.0f);
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          int64_t best = -1;
          float bv = 0.0f;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
              if (iw < 0 || iw >= s.in_w) continue;
              const float v = xc[ih * s.in_w + iw];
              if (best < 0 || v > bv) best = ih * s.in_w + iw, bv = v;
            }
          }
          if (best >= 0) d[best] += g[oh * ow_n + ow];
        }
    }
  });
}

void avgpool2d_backward_f32(const Pool2dShape& s, const float* dy, float* dx) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), in_hw = s.in_h * s.in_w;
  parallel_for(0, s.batch * s.channels, [&](int64_t lo, int64_t hi) {
    for (int64_t nc = lo; nc < hi; ++nc) {
      const float* g = dy + nc * oh_n * ow_n;
      float* d = dx + nc * in_hw;
      std::fill(d, d + in_hw, 0.0f);
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          int64_t inside = 0, padded = 0;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
              if (ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w) ++inside;
              if (ih >= -s.pad_top && ih < s.in_h + s.pad_bottom && iw >= -s.pad_left && iw < s.in_w + s.pad_right) ++padded;
            }
          }
          const int64_t div = s.count_include_pad ? padded : inside;
          if (div == 0) continue;
          const float v = g[oh * ow_n + ow] / static_cast<float>(div);
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
              if (iw >= 0 && iw < s.in_w) d[ih * s.in_w + iw] += v;
            }
          }
        }
    }
  });
}

}  // namespace perch::kernels
