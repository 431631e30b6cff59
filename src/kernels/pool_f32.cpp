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

std::vector<int64_t> PoolNdShape::out() const {
  std::vector<int64_t> o(in.size());
  for (size_t j = 0; j < in.size(); ++j)
    o[j] = pooled(in[j], kernel[j], strides[j], pads_begin[j], pads_end[j], dilations[j], ceil_mode);
  return o;
}

namespace {

// The windows of an N-d pooling: for output multi-index o and kernel multi-index k (last dim fastest), the input
// index along dim j is o_j*stride_j - pad_begin_j + k_j*dil_j.
class Windows {
 public:
  explicit Windows(const PoolNdShape& s) : s_(s), r_(s.in.size()), out_(s.out()), in_stride_(r_, 1) {
    for (size_t j = r_ - 1; j-- > 0;) in_stride_[j] = in_stride_[j + 1] * s.in[j + 1];
    for (size_t j = 0; j < r_; ++j) in_plane_ *= s.in[j], out_plane_ *= out_[j];
  }
  int64_t in_plane() const { return in_plane_; }
  int64_t out_plane() const { return out_plane_; }
  const std::vector<int64_t>& in_stride() const { return in_stride_; }
  // The average's divisor for output `oi`: its cells inside the padded extent (count_include_pad) or inside the input.
  int64_t divisor(int64_t oi) const {
    int64_t inside = 0, padded = 0;
    visit(oi, [&](int64_t off, bool in_padded_extent) {
      inside += off >= 0 ? 1 : 0;
      padded += in_padded_extent ? 1 : 0;
    });
    return s_.count_include_pad ? padded : inside;
  }
  // Calls cell(offset in the plane, or -1 outside the input; inside the padded extent) for every cell of the window
  // of output `oi` (row-major flat index over out()), in window order.
  template <typename Cell>
  void visit(int64_t oi, Cell&& cell) const {
    std::vector<int64_t> o(r_), k(r_, 0);
    for (size_t j = r_; j-- > 0;) o[j] = oi % out_[j], oi /= out_[j];
    for (;;) {
      int64_t off = 0;
      bool inside = true, padded = true;
      for (size_t j = 0; j < r_; ++j) {
        const int64_t i = o[j] * s_.strides[j] - s_.pads_begin[j] + k[j] * s_.dilations[j];
        inside = inside && i >= 0 && i < s_.in[j];
        padded = padded && i >= -s_.pads_begin[j] && i < s_.in[j] + s_.pads_end[j];
        off += i * in_stride_[j];
      }
      cell(inside ? off : -1, padded);
      size_t j = r_;
      while (j-- > 0 && ++k[j] == s_.kernel[j]) k[j] = 0;
      if (j == static_cast<size_t>(-1)) return;
    }
  }

 private:
  const PoolNdShape& s_;
  size_t r_;
  std::vector<int64_t> out_, in_stride_;
  int64_t in_plane_ = 1, out_plane_ = 1;
};

}  // namespace

void maxpool_nd_f32(const PoolNdShape& s, const float* x, float* y, int64_t* indices, bool column_major) {
  const Windows win(s);
  const size_t r = s.in.size();
  // A row-major plane offset written column major (the dims reversed), for storage_order 1.
  const std::vector<int64_t>& row_stride = win.in_stride();
  std::vector<int64_t> col_stride(r, 1);
  for (size_t j = 1; j < r; ++j) col_stride[j] = col_stride[j - 1] * s.in[j - 1];
  const auto as_stored = [&](int64_t off) {
    if (!column_major) return off;
    int64_t c = 0;
    for (size_t j = 0; j < r; ++j) c += off / row_stride[j] % s.in[j] * col_stride[j];
    return c;
  };
  const int64_t in_plane = win.in_plane(), out_plane = win.out_plane();
  parallel_for(0, s.batch * s.channels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xp = x + p * in_plane;
      for (int64_t oi = 0; oi < out_plane; ++oi) {
        float best = -std::numeric_limits<float>::infinity();
        int64_t at = -1;
        // The first maximum in window order (a later equal value or a NaN does not replace it: std::max's rule,
        // as in the 2-D kernels); the first cell inside the input is taken whatever its value.
        win.visit(oi, [&](int64_t off, bool) {
          if (off < 0) return;
          if (at < 0 || best < xp[off]) at = off;
          best = std::max(best, xp[off]);
        });
        y[p * out_plane + oi] = best;
        if (indices) indices[p * out_plane + oi] = at < 0 ? -1 : p * in_plane + as_stored(at);
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, out_plane)));
}

void avgpool_nd_f32(const PoolNdShape& s, const float* x, float* y) {
  const Windows win(s);
  const int64_t in_plane = win.in_plane(), out_plane = win.out_plane();
  parallel_for(0, s.batch * s.channels, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float* xp = x + p * in_plane;
      for (int64_t oi = 0; oi < out_plane; ++oi) {
        double sum = 0.0;
        win.visit(oi, [&](int64_t off, bool) {
          if (off >= 0) sum += xp[off];
        });
        const int64_t div = win.divisor(oi);
        y[p * out_plane + oi] = div > 0 ? static_cast<float>(sum / static_cast<double>(div)) : 0.0f;
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, out_plane)));
}

void maxpool_nd_backward_f32(const PoolNdShape& s, const float* x, const float* dy, float* dx) {
  const Windows win(s);
  const int64_t in_plane = win.in_plane(), out_plane = win.out_plane(), planes = s.batch * s.channels;
  std::vector<float> y(static_cast<size_t>(planes * out_plane));
  std::vector<int64_t> at(y.size());
  maxpool_nd_f32(s, x, y.data(), at.data());
  std::fill(dx, dx + planes * in_plane, 0.0f);
  // Indices are flat over x; each plane's gradients are summed in output order (windows may overlap).
  parallel_for(0, planes, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t oi = 0; oi < out_plane; ++oi) {
        const int64_t i = at[static_cast<size_t>(p * out_plane + oi)];
        if (i >= 0) dx[i] += dy[p * out_plane + oi];
      }
  });
}

void avgpool_nd_backward_f32(const PoolNdShape& s, const float* dy, float* dx) {
  const Windows win(s);
  const int64_t in_plane = win.in_plane(), out_plane = win.out_plane();
  parallel_for(0, s.batch * s.channels, [&](int64_t p0, int64_t p1) {
    std::vector<double> acc(static_cast<size_t>(in_plane));
    for (int64_t p = p0; p < p1; ++p) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t oi = 0; oi < out_plane; ++oi) {
        const int64_t div = win.divisor(oi);
        if (div == 0) continue;
        const double g = static_cast<double>(dy[p * out_plane + oi]) / static_cast<double>(div);
        win.visit(oi, [&](int64_t off, bool) {
          if (off >= 0) acc[static_cast<size_t>(off)] += g;
        });
      }
      for (int64_t i = 0; i < in_plane; ++i) dx[p * in_plane + i] = static_cast<float>(acc[static_cast<size_t>(i)]);
    }
  });
}

}  // namespace perch::kernels
