// N-d float convolution (perch/kernels/conv_f32.h): the plain reference loop and the 3-D path through the 2-D kernels.
#include <algorithm>
#include <vector>

#include "perch/core/cpu.h"
#include "perch/core/error.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"

namespace perch::kernels {

std::vector<int64_t> ConvNdShape::out() const {
  std::vector<int64_t> o(in.size());
  for (size_t j = 0; j < in.size(); ++j)
    o[j] = (in[j] + pads_begin[j] + pads_end[j] - dilations[j] * (kernel[j] - 1) - 1) / strides[j] + 1;
  return o;
}

namespace {

// Index arithmetic of the N-d loops: flat output / kernel positions to multi-indices, and the input cell one kernel
// cell of one output reads: i_j = o_j*stride_j - pad_begin_j + k_j*dil_j, an offset in a channel plane (-1 in the
// padding).
struct NdGeometry {
  std::vector<int64_t> out, in_stride;
  int64_t in_plane = 1, out_plane = 1, k_cells = 1;
  explicit NdGeometry(const ConvNdShape& s) : out(s.out()), in_stride(s.in.size(), 1) {
    for (size_t j = s.in.size() - 1; j-- > 0;) in_stride[j] = in_stride[j + 1] * s.in[j + 1];
    for (size_t j = 0; j < s.in.size(); ++j) in_plane *= s.in[j], out_plane *= out[j], k_cells *= s.kernel[j];
  }
  // Row-major multi-index of flat `i` over `dims`.
  static void unflatten(int64_t i, const std::vector<int64_t>& dims, std::vector<int64_t>& idx) {
    for (size_t j = dims.size(); j-- > 0;) idx[j] = i % dims[j], i /= dims[j];
  }
  int64_t offset(const ConvNdShape& s, const std::vector<int64_t>& o, const std::vector<int64_t>& k) const {
    int64_t off = 0;
    for (size_t j = 0; j < s.in.size(); ++j) {
      const int64_t i = o[j] * s.strides[j] - s.pads_begin[j] + k[j] * s.dilations[j];
      if (i < 0 || i >= s.in[j]) return -1;
      off += i * in_stride[j];
    }
    return off;
  }
};

// Calls f(c, output flat index, input offset in the channel plane, kernel flat index) for every product term of one
// output plane of the N-d convolution (c counted within the output channel's group); window cells in the padding
// are skipped.
template <typename F>
void for_each_term(const ConvNdShape& s, const NdGeometry& geo, F&& f) {
  std::vector<int64_t> o(s.in.size()), k(s.in.size());
  const int64_t cg = s.in_channels / s.group;
  for (int64_t oi = 0; oi < geo.out_plane; ++oi) {
    NdGeometry::unflatten(oi, geo.out, o);
    for (int64_t ki = 0; ki < geo.k_cells; ++ki) {
      NdGeometry::unflatten(ki, s.kernel, k);
      const int64_t off = geo.offset(s, o, k);
      if (off < 0) continue;
      for (int64_t c = 0; c < cg; ++c) f(c, oi, off, ki);
    }
  }
}

}  // namespace

void conv_nd_f32_reference(const ConvNdShape& s, const float* x, const float* w, const float* bias, float* y) {
  const NdGeometry geo(s);
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  // Per (image, output channel): every output's terms summed in double (kernel cell, then channel order).
  parallel_for(0, s.batch * s.out_channels, [&](int64_t p0, int64_t p1) {
    std::vector<double> acc(static_cast<size_t>(geo.out_plane));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / s.out_channels, m = p % s.out_channels, c0 = (m / mg) * cg;
      std::fill(acc.begin(), acc.end(), bias ? static_cast<double>(bias[m]) : 0.0);
      for_each_term(s, geo, [&](int64_t c, int64_t oi, int64_t off, int64_t ki) {
        acc[static_cast<size_t>(oi)] += static_cast<double>(x[(n * s.in_channels + c0 + c) * geo.in_plane + off]) *
                                         w[(m * cg + c) * geo.k_cells + ki];
      });
      for (int64_t oi = 0; oi < geo.out_plane; ++oi) y[p * geo.out_plane + oi] = static_cast<float>(acc[static_cast<size_t>(oi)]);
    }
  });
}

void conv_nd_f32(const ConvNdShape& s, const float* x, const float* w, const float* bias, float* y,
                 const ConvEpilogue& post) {
  const std::vector<int64_t> out = s.out();
  int64_t total = s.batch * s.out_channels;
  for (int64_t o : out) total *= o;
  if (s.in.size() != 3 || !has_path(active_paths(), Path::kOptimized)) {
    conv_nd_f32_reference(s, x, w, bias, y);
    if (post && total > 0) post(y, total);
    return;
  }
  const int64_t N = s.batch, C = s.in_channels, M = s.out_channels, D = s.in[0], H = s.in[1], W = s.in[2];
  const int64_t OD = out[0], OH = out[1], OW = out[2], KD = s.kernel[0], KH = s.kernel[1], KW = s.kernel[2];
  const int64_t cg = C / s.group, hw = H * W, ohw = OH * OW, k2 = KH * KW;
  Conv2dShape s2;
  s2.batch = N, s2.in_channels = C, s2.in_h = H, s2.in_w = W, s2.out_channels = M, s2.group = s.group;
  s2.kernel_h = KH, s2.kernel_w = KW, s2.stride_h = s.strides[1], s2.stride_w = s.strides[2];
  s2.dil_h = s.dilations[1], s2.dil_w = s.dilations[2];
  s2.pad_top = s.pads_begin[1], s2.pad_left = s.pads_begin[2], s2.pad_bottom = s.pads_end[1], s2.pad_right = s.pads_end[2];
  PERCH_CHECK(s2.out_h() == OH && s2.out_w() == OW, "conv_nd_f32: inconsistent 2-D slice geometry");
  // Depth-major copies: xt[d] = x[:, :, d] as one [N, C, H, W] batch; wt[kd] = w[:, :, kd] as [M, C/G, KH, KW].
  std::vector<float> xt(static_cast<size_t>(D * N * C * hw)), wt(static_cast<size_t>(KD * M * cg * k2));
  for (int64_t d = 0; d < D; ++d)
    for (int64_t nc = 0; nc < N * C; ++nc)
      std::copy_n(x + (nc * D + d) * hw, hw, xt.data() + (d * N * C + nc) * hw);
  for (int64_t kd = 0; kd < KD; ++kd)
    for (int64_t mc = 0; mc < M * cg; ++mc)
      std::copy_n(w + (mc * KD + kd) * k2, k2, wt.data() + (kd * M * cg + mc) * k2);
  const int64_t slice = N * M * ohw;
  std::vector<float> yt(static_cast<size_t>(OD * slice), 0.0f), part(static_cast<size_t>(slice));
  for (int64_t od = 0; od < OD; ++od) {
    float* yd = yt.data() + od * slice;
    for (int64_t kd = 0; kd < KD; ++kd) {
      const int64_t id = od * s.strides[0] - s.pads_begin[0] + kd * s.dilations[0];
      if (id < 0 || id >= D) continue;  // this kernel slice reads the depth padding: adds 0
      conv2d_f32(s2, xt.data() + id * N * C * hw, wt.data() + kd * M * cg * k2, nullptr, part.data());
      for (int64_t i = 0; i < slice; ++i) yd[i] += part[i];
    }
  }
  // y[n, m, od] = yt[od, n, m] + bias[m].
  for (int64_t od = 0; od < OD; ++od)
    for (int64_t nm = 0; nm < N * M; ++nm) {
      const float b = bias ? bias[nm % M] : 0.0f;
      const float* src = yt.data() + (od * N * M + nm) * ohw;
      float* dst = y + (nm * OD + od) * ohw;
      for (int64_t i = 0; i < ohw; ++i) dst[i] = src[i] + b;
    }
  if (post && total > 0) post(y, total);
}

void im2col_nd_f32(const ConvNdShape& s, const float* x, float* col) {
  const NdGeometry geo(s);
  const int64_t cg = s.in_channels / s.group;
  std::fill(col, col + cg * geo.k_cells * geo.out_plane, 0.0f);  // the padding's cells stay 0
  for_each_term(s, geo, [&](int64_t c, int64_t oi, int64_t off, int64_t ki) {
    col[(c * geo.k_cells + ki) * geo.out_plane + oi] = x[c * geo.in_plane + off];
  });
}

void conv_nd_backward_data_f32(const ConvNdShape& s, const float* dy, const float* w, float* dx) {
  const NdGeometry geo(s);
  const int64_t in_plane = geo.in_plane, out_plane = geo.out_plane, k_cells = geo.k_cells;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  // Per image (threads own images): dx of its channels accumulated in double over the output channels in order.
  parallel_for(0, s.batch, [&](int64_t n0, int64_t n1) {
    std::vector<double> acc(static_cast<size_t>(s.in_channels * in_plane));
    for (int64_t n = n0; n < n1; ++n) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t m = 0; m < s.out_channels; ++m) {
        const int64_t c0 = (m / mg) * cg;
        const float* g = dy + (n * s.out_channels + m) * out_plane;
        for_each_term(s, geo, [&](int64_t c, int64_t oi, int64_t off, int64_t ki) {
          acc[static_cast<size_t>((c0 + c) * in_plane + off)] +=
              static_cast<double>(g[oi]) * w[(m * cg + c) * k_cells + ki];
        });
      }
      for (int64_t i = 0; i < s.in_channels * in_plane; ++i)
        dx[n * s.in_channels * in_plane + i] = static_cast<float>(acc[static_cast<size_t>(i)]);
    }
  });
}

void conv_nd_backward_weight_f32(const ConvNdShape& s, const float* x, const float* dy, float* dw, float* dbias) {
  const NdGeometry geo(s);
  const int64_t in_plane = geo.in_plane, out_plane = geo.out_plane, k_cells = geo.k_cells;
  const int64_t cg = s.in_channels / s.group, mg = s.out_channels / s.group;
  // Per output channel (threads own channels): its weights summed in double over the images in order.
  parallel_for(0, s.out_channels, [&](int64_t m0, int64_t m1) {
    std::vector<double> acc(static_cast<size_t>(cg * k_cells));
    for (int64_t m = m0; m < m1; ++m) {
      std::fill(acc.begin(), acc.end(), 0.0);
      double bsum = 0.0;
      const int64_t c0 = (m / mg) * cg;
      for (int64_t n = 0; n < s.batch; ++n) {
        const float* g = dy + (n * s.out_channels + m) * out_plane;
        for (int64_t oi = 0; oi < out_plane; ++oi) bsum += g[oi];
        for_each_term(s, geo, [&](int64_t c, int64_t oi, int64_t off, int64_t ki) {
          acc[static_cast<size_t>(c * k_cells + ki)] +=
              static_cast<double>(g[oi]) * x[(n * s.in_channels + c0 + c) * in_plane + off];
        });
      }
      for (int64_t i = 0; i < cg * k_cells; ++i) dw[m * cg * k_cells + i] = static_cast<float>(acc[static_cast<size_t>(i)]);
      if (dbias) dbias[m] = static_cast<float>(bsum);
    }
  });
}

}  // namespace perch::kernels
