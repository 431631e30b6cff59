// Gradients of the float convolution (formulas in perch/kernels/conv_f32.h).
#include <algorithm>
#include <vector>

#include "conv_internal.h"
#include "f32_avx512.h"
#include "perch/core/cpu.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"

namespace perch::kernels {

namespace {

// Calls fn(n, oh, ow, ih, iw, kh, kw) for every in-range tap: the one loop nest both references share.
template <typename F>
void for_each_tap(const Conv2dShape& s, F&& fn) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  for (int64_t oh = 0; oh < oh_n; ++oh)
    for (int64_t ow = 0; ow < ow_n; ++ow)
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
        if (ih < 0 || ih >= s.in_h) continue;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
          if (iw < 0 || iw >= s.in_w) continue;
          fn(oh, ow, ih, iw, kh, kw);
        }
      }
}

// sum a[i] * b[i] with 8 independent lanes (vectorizable without reassociating a single accumulator),
// lanes added in a fixed order.
float dot_lanes(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// sum a[i] in the same 8-lane order as dot_lanes.
float sum_lanes(const float* a, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k];
  float s = 0.0f;
  for (; i < n; ++i) s += a[i];
  for (int k = 0; k < 8; ++k) s += acc[k];
  return s;
}

// t (cols x rows) = a^T for a (rows x cols), row-major; blocked so both sides stay in cache.
void transpose(const float* a, int64_t rows, int64_t cols, float* t) {
  constexpr int64_t B = 32;
  for (int64_t r0 = 0; r0 < rows; r0 += B)
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      const int64_t r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) t[c * rows + r] = a[r * cols + c];
    }
}

bool is_direct(const Conv2dShape& s) {
  return s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
         s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0;
}

// Padded plane extent (see depthwise() in conv_f32.cpp: grown to every row/column a window touches).
void padded_extent(const Conv2dShape& s, int64_t& ph, int64_t& pw) {
  ph = std::max(s.in_h + s.pad_top + s.pad_bottom, (s.out_h() - 1) * s.stride_h + (s.kernel_h - 1) * s.dil_h + 1);
  pw = std::max(s.in_w + s.pad_left + s.pad_right, (s.out_w() - 1) * s.stride_w + (s.kernel_w - 1) * s.dil_w + 1);
}

// dx[c, ih, iw] += col[(c*KH + kh)*KW + kw, oh*OW + ow]: the adjoint of im2col, for cg channels.
void col2im_add(const Conv2dShape& s, int64_t cg, const float* col, float* dx) {
  if (s.stride_w == 1 && has_path(active_paths(), Path::kAvx512Vnni) && avx512::compiled())
    return avx512::col2im_add_stride1(s, cg, col, dx);
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  for (int64_t c = 0; c < cg; ++c)
    for (int64_t kh = 0; kh < s.kernel_h; ++kh)
      for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
        const float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * oh_n * ow_n;
        float* dc = dx + c * s.in_h * s.in_w;
        const int64_t off = kw * s.dil_w - s.pad_left;
        int64_t lo, hi;
        detail::valid_range(off, s.stride_w, s.in_w, ow_n, lo, hi);
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          float* dr = dc + ih * s.in_w + off;
          const float* r = row + oh * ow_n;
          if (s.stride_w == 1)
            for (int64_t ow = lo; ow < hi; ++ow) dr[ow] += r[ow];
          else
            for (int64_t ow = lo; ow < hi; ++ow) dr[ow * s.stride_w] += r[ow];
        }
      }
}

// Depthwise data gradient: each input plane (n, c) gathers from its `mult` output planes into a zero-padded
// scratch plane (no bounds checks in the inner loops), which is then cropped into dx.
void depthwise_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), mult = s.out_channels / s.in_channels;
  int64_t ph, pw;
  padded_extent(s, ph, pw);
  const int64_t khw = s.kernel_h * s.kernel_w;
  parallel_for(0, s.batch * s.in_channels, [&](int64_t lo, int64_t hi) {
    std::vector<float> pad(static_cast<size_t>(ph * pw));
    for (int64_t nc = lo; nc < hi; ++nc) {
      const int64_t n = nc / s.in_channels, c = nc % s.in_channels;
      std::fill(pad.begin(), pad.end(), 0.0f);
      for (int64_t j = 0; j < mult; ++j) {
        const int64_t m = c * mult + j;
        const float* g = dy + (n * s.out_channels + m) * oh_n * ow_n;
        const float* wm = w + m * khw;
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const float* gr = g + oh * ow_n;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            float* pr = pad.data() + (oh * s.stride_h + kh * s.dil_h) * pw;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const float wv = wm[kh * s.kernel_w + kw];
              float* p = pr + kw * s.dil_w;
              if (s.stride_w == 1)
                for (int64_t ow = 0; ow < ow_n; ++ow) p[ow] += wv * gr[ow];
              else
                for (int64_t ow = 0; ow < ow_n; ++ow) p[ow * s.stride_w] += wv * gr[ow];
            }
          }
        }
      }
      float* d = dx + nc * s.in_h * s.in_w;
      for (int64_t ih = 0; ih < s.in_h; ++ih) {
        const float* pr = pad.data() + (ih + s.pad_top) * pw + s.pad_left;
        std::copy(pr, pr + s.in_w, d + ih * s.in_w);
      }
    }
  });
}

// Depthwise weight/bias gradient: parallel over input channels, so each output channel's sums are made by
// one thread in a fixed order (images, then rows); rows are dotted in float, rows summed in double.
void depthwise_backward_weight(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* db) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), mult = s.out_channels / s.in_channels;
  int64_t ph, pw;
  padded_extent(s, ph, pw);
  const int64_t khw = s.kernel_h * s.kernel_w;
  parallel_for(0, s.in_channels, [&](int64_t lo, int64_t hi) {
    std::vector<float> pad(static_cast<size_t>(ph * pw + 16));
    std::vector<double> acc(static_cast<size_t>(mult * khw)), bacc(static_cast<size_t>(mult));
    for (int64_t c = lo; c < hi; ++c) {
      std::fill(acc.begin(), acc.end(), 0.0);
      std::fill(bacc.begin(), bacc.end(), 0.0);
      for (int64_t n = 0; n < s.batch; ++n) {
        detail::pad_plane(s, x + (n * s.in_channels + c) * s.in_h * s.in_w, ph, pw, pad.data());
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t m = c * mult + j;
          const float* g = dy + (n * s.out_channels + m) * oh_n * ow_n;
          for (int64_t oh = 0; oh < oh_n; ++oh) {
            const float* gr = g + oh * ow_n;
            float bs = 0.0f;
            for (int64_t ow = 0; ow < ow_n; ++ow) bs += gr[ow];
            bacc[j] += bs;
            for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
              const float* pr = pad.data() + (oh * s.stride_h + kh * s.dil_h) * pw;
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const float* p = pr + kw * s.dil_w;
                float sum = 0.0f;
                if (s.stride_w == 1)
                  sum = dot_lanes(gr, p, ow_n);
                else
                  for (int64_t ow = 0; ow < ow_n; ++ow) sum += gr[ow] * p[ow * s.stride_w];
                acc[j * khw + kh * s.kernel_w + kw] += sum;
              }
            }
          }
        }
      }
      for (int64_t j = 0; j < mult; ++j) {
        const int64_t m = c * mult + j;
        for (int64_t k = 0; k < khw; ++k) dw[m * khw + k] = static_cast<float>(acc[j * khw + k]);
        if (db) db[m] = static_cast<float>(bacc[j]);
      }
    }
  });
}

}  // namespace

void conv2d_backward_data_reference(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  std::vector<double> acc(static_cast<size_t>(s.in_channels * s.in_h * s.in_w));
  for (int64_t n = 0; n < s.batch; ++n) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t m = 0; m < s.out_channels; ++m) {
      const int64_t c0 = (m / mg) * cg;
      for (int64_t c = 0; c < cg; ++c)
        for_each_tap(s, [&](int64_t oh, int64_t ow, int64_t ih, int64_t iw, int64_t kh, int64_t kw) {
          acc[((c0 + c) * s.in_h + ih) * s.in_w + iw] +=
              static_cast<double>(dy[((n * s.out_channels + m) * oh_n + oh) * ow_n + ow]) *
              w[((m * cg + c) * s.kernel_h + kh) * s.kernel_w + kw];
        });
    }
    float* d = dx + n * s.in_channels * s.in_h * s.in_w;
    for (size_t i = 0; i < acc.size(); ++i) d[i] = static_cast<float>(acc[i]);
  }
}

void conv2d_backward_weight_reference(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w();
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  const int64_t khw = s.kernel_h * s.kernel_w;
  for (int64_t m = 0; m < s.out_channels; ++m) {
    const int64_t c0 = (m / mg) * cg;
    std::vector<double> acc(static_cast<size_t>(cg * khw), 0.0);
    double bacc = 0.0;
    for (int64_t n = 0; n < s.batch; ++n) {
      const float* g = dy + (n * s.out_channels + m) * oh_n * ow_n;
      for (int64_t i = 0; i < oh_n * ow_n; ++i) bacc += g[i];
      for (int64_t c = 0; c < cg; ++c)
        for_each_tap(s, [&](int64_t oh, int64_t ow, int64_t ih, int64_t iw, int64_t kh, int64_t kw) {
          acc[c * khw + kh * s.kernel_w + kw] += static_cast<double>(g[oh * ow_n + ow]) *
                                                 x[((n * s.in_channels + c0 + c) * s.in_h + ih) * s.in_w + iw];
        });
    }
    for (int64_t k = 0; k < cg * khw; ++k) dw[m * cg * khw + k] = static_cast<float>(acc[k]);
    if (dbias) dbias[m] = static_cast<float>(bacc);
  }
}

void conv2d_backward_data(const Conv2dShape& s, const float* dy, const float* w, float* dx) {
  if (!has_path(active_paths(), Path::kOptimized)) return conv2d_backward_data_reference(s, dy, w, dx);
  if (s.is_depthwise()) return depthwise_backward_data(s, dy, w, dx);
  const int64_t hw = s.out_h() * s.out_w(), in_hw = s.in_h * s.in_w;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  const int64_t kdim = cg * s.kernel_h * s.kernel_w;
  const bool direct = is_direct(s);
  // W_g^T (K x Mg) per group, transposed once per call: the GEMMs below are then untransposed, which
  // perch's AVX-512 tiles take (BLAS otherwise).
  std::vector<float> wt(static_cast<size_t>(s.group * kdim * mg));
  for (int64_t g = 0; g < s.group; ++g) transpose(w + g * mg * kdim, mg, kdim, wt.data() + g * kdim * mg);
  parallel_for(0, s.batch * s.group, [&](int64_t lo, int64_t hi) {
    std::vector<float> col(direct ? 0 : static_cast<size_t>(kdim * hw));
    for (int64_t u = lo; u < hi; ++u) {
      const int64_t n = u / s.group, g = u % s.group;
      float* dxg = dx + (n * s.in_channels + g * cg) * in_hw;
      // col (K x P) = W_g^T (K x Mg) * dY_g (Mg x P)
      GemmF32Args a;
      a.m = kdim, a.n = hw, a.k = mg;
      a.a = wt.data() + g * kdim * mg, a.lda = mg;
      a.b = dy + (n * s.out_channels + g * mg) * hw, a.ldb = hw;
      a.c = direct ? dxg : col.data(), a.ldc = hw;
      gemm_f32(a);
      if (!direct) {
        std::fill(dxg, dxg + cg * in_hw, 0.0f);
        col2im_add(s, cg, col.data(), dxg);
      }
    }
  });
}

void conv2d_backward_weight(const Conv2dShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  if (!has_path(active_paths(), Path::kOptimized)) return conv2d_backward_weight_reference(s, x, dy, dw, dbias);
  if (s.is_depthwise()) return depthwise_backward_weight(s, x, dy, dw, dbias);
  const int64_t hw = s.out_h() * s.out_w(), in_hw = s.in_h * s.in_w;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  const int64_t kdim = cg * s.kernel_h * s.kernel_w;
  const int64_t wsize = s.out_channels * kdim;
  const bool direct = is_direct(s);
  if (s.batch == 0) {
    std::fill(dw, dw + wsize, 0.0f);
    if (dbias) std::fill(dbias, dbias + s.out_channels, 0.0f);
    return;
  }
  // The batch is cut into a fixed number of chunks (not one per thread): each chunk sums its images into
  // its own partial gradients, and the partials are added in chunk order, so the result is the same for any
  // thread count. Per image and group, whichever operand is smaller is transposed so that the GEMM is
  // untransposed (perch's AVX-512 tiles):
  //   K <= Mg:  dW_g   (Mg x K) += dY_g (Mg x P) * col^T (P x K)     (col^T materialized; e.g. a first layer)
  //   K >  Mg:  dW_g^T (K x Mg) += col  (K x P)  * dY_g^T (P x Mg)   (dY_g^T materialized; dW transposed back
  //                                                                  once at the end)
  // with K = cg*KH*KW, P = OH*OW. The bias partials are the dY rows, each summed in 8 float lanes, images
  // added in double.
  const bool transpose_dy = kdim > mg;
  const int64_t chunks = std::min<int64_t>(s.batch, 4);
  std::vector<float> partial(static_cast<size_t>(chunks * wsize));
  std::vector<double> bias_partial(dbias ? static_cast<size_t>(chunks * s.out_channels) : 0);
  parallel_for(0, chunks, [&](int64_t lo, int64_t hi) {
    std::vector<float> col(direct ? 0 : static_cast<size_t>(kdim * hw));
    std::vector<float> t(static_cast<size_t>(hw * (transpose_dy ? mg : kdim)));
    for (int64_t ch = lo; ch < hi; ++ch) {
      float* acc = partial.data() + ch * wsize;
      const int64_t n0 = s.batch * ch / chunks, n1 = s.batch * (ch + 1) / chunks;
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < s.group; ++g) {
          const float* xg = x + (n * s.in_channels + g * cg) * in_hw;
          const float* dyg = dy + (n * s.out_channels + g * mg) * hw;
          if (!direct) detail::im2col(s, cg, xg, col.data());
          const float* cg_mat = direct ? xg : col.data();
          GemmF32Args a;
          a.beta = n == n0 ? 0.0f : 1.0f;
          if (transpose_dy) {
            transpose(dyg, mg, hw, t.data());
            a.m = kdim, a.n = mg, a.k = hw;
            a.a = cg_mat, a.lda = hw;
            a.b = t.data(), a.ldb = mg;
            a.c = acc + g * kdim * mg, a.ldc = mg;
          } else {
            transpose(cg_mat, kdim, hw, t.data());
            a.m = mg, a.n = kdim, a.k = hw;
            a.a = dyg, a.lda = hw;
            a.b = t.data(), a.ldb = kdim;
            a.c = acc + g * mg * kdim, a.ldc = kdim;
          }
          gemm_f32(a);
          if (dbias)
            for (int64_t m = 0; m < mg; ++m) {
              bias_partial[static_cast<size_t>(ch * s.out_channels + g * mg + m)] += sum_lanes(dyg + m * hw, hw);
            }
        }
    }
  }, 1);
  // Sum the partials in chunk order (transposing K x Mg blocks back to Mg x K).
  for (int64_t g = 0; g < s.group; ++g)
    for (int64_t m = 0; m < mg; ++m)
      for (int64_t k = 0; k < kdim; ++k) {
        const int64_t i = g * kdim * mg + (transpose_dy ? k * mg + m : m * kdim + k);
        float v = partial[static_cast<size_t>(i)];
        for (int64_t ch = 1; ch < chunks; ++ch) v += partial[static_cast<size_t>(ch * wsize + i)];
        dw[(g * mg + m) * kdim + k] = v;
      }
  if (dbias)
    for (int64_t m = 0; m < s.out_channels; ++m) {
      double b = 0.0;
      for (int64_t ch = 0; ch < chunks; ++ch) b += bias_partial[static_cast<size_t>(ch * s.out_channels + m)];
      dbias[m] = static_cast<float>(b);
    }
}

}  // namespace perch::kernels
