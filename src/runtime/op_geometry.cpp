// Conv / pooling geometry from ONNX attributes (perch/runtime/op_geometry.h).
#include "perch/runtime/op_geometry.h"

#include <algorithm>

#include "ops_typed.h"

namespace perch::runtime {

using graph::Node;

namespace {

// Views a rank-3 (1-D spatial) or rank-4 tensor as NCHW.
void spatial_dims(const Shape& xs, const Node& n, int64_t& h, int64_t& w) {
  PERCH_CHECK(xs.size() == 3 || xs.size() == 4, n.describe(), ": only 1-D and 2-D spatial inputs are supported, got shape ",
              shape_str(xs));
  h = xs.size() == 4 ? xs[2] : 1;
  w = xs.back();
}

// The dilated kernel must fit in the padded input. Checked here, not via out_h() > 0: the kernels' extent
// formulas divide a negative span with C++ truncation and would report 1 output for a kernel that does not fit.
bool kernel_fits(int64_t in, int64_t pa, int64_t pb, int64_t k, int64_t dil) { return in + pa + pb >= dil * (k - 1) + 1; }

}  // namespace

kernels::Conv2dShape conv2d_shape(const Node& n, const Shape& xs, const Shape& ws) {
  PERCH_CHECK(static_cast<int64_t>(ws.size()) == static_cast<int64_t>(xs.size()), n.describe(), ": weight rank ", static_cast<int64_t>(ws.size()), " != input rank ", static_cast<int64_t>(xs.size()));
  PERCH_CHECK(xs.size() >= 3, n.describe(), ": input must have rank 3 or 4, got ", shape_str(xs));
  kernels::Conv2dShape s;
  s.batch = xs[0];
  s.in_channels = xs[1];
  spatial_dims(xs, n, s.in_h, s.in_w);
  s.out_channels = ws[0];
  s.group = n.attr_int("group", 1);
  PERCH_CHECK(s.group > 0 && s.in_channels % s.group == 0 && s.out_channels % s.group == 0, n.describe(), ": group ",
              s.group, " does not divide channels ", s.in_channels, " -> ", s.out_channels);
  PERCH_CHECK(ws[1] * s.group == s.in_channels, n.describe(), ": weight ", shape_str(ws), " with group ",
              s.group, " does not match ", s.in_channels, " input channels");
  s.kernel_h = static_cast<int64_t>(ws.size()) == 4 ? ws[2] : 1;
  s.kernel_w = ws.back();
  std::vector<int64_t> in_sp, k_sp;
  if (static_cast<int64_t>(xs.size()) == 4) in_sp = {s.in_h, s.in_w}, k_sp = {s.kernel_h, s.kernel_w};
  else in_sp = {s.in_w}, k_sp = {s.kernel_w};
  auto ks = n.attr_ints("kernel_shape", k_sp);
  PERCH_CHECK(ks == k_sp, n.describe(), ": kernel_shape attribute disagrees with the weight shape");
  auto g = detail::geometry(n, in_sp, k_sp, false);
  if (static_cast<int64_t>(xs.size()) == 4) {
    s.stride_h = g.strides[0], s.stride_w = g.strides[1], s.dil_h = g.dilations[0], s.dil_w = g.dilations[1];
    s.pad_top = g.pads_begin[0], s.pad_left = g.pads_begin[1], s.pad_bottom = g.pads_end[0], s.pad_right = g.pads_end[1];
  } else {
    s.stride_w = g.strides[0], s.dil_w = g.dilations[0], s.pad_left = g.pads_begin[0], s.pad_right = g.pads_end[0];
  }
  PERCH_CHECK(kernel_fits(s.in_h, s.pad_top, s.pad_bottom, s.kernel_h, s.dil_h) &&
                  kernel_fits(s.in_w, s.pad_left, s.pad_right, s.kernel_w, s.dil_w) && s.out_h() > 0 && s.out_w() > 0,
              n.describe(), ": input ", shape_str(xs), " is too small for the kernel");
  return s;
}

kernels::Pool2dShape pool2d_shape(const Node& n, const Shape& xs) {
  PERCH_CHECK(xs.size() >= 3, n.describe(), ": input must have rank 3 or 4, got ", shape_str(xs));
  kernels::Pool2dShape s;
  s.batch = xs[0];
  s.channels = xs[1];
  spatial_dims(xs, n, s.in_h, s.in_w);
  auto ks = n.attr_ints("kernel_shape");
  PERCH_CHECK(static_cast<int64_t>(ks.size()) == static_cast<int64_t>(xs.size()) - 2, n.describe(), ": kernel_shape must have ", static_cast<int64_t>(xs.size()) - 2, " values");
  s.ceil_mode = n.attr_int("ceil_mode", 0) != 0;
  s.count_include_pad = n.attr_int("count_include_pad", 0) != 0;
  std::vector<int64_t> in_sp = static_cast<int64_t>(xs.size()) == 4 ? std::vector<int64_t>{s.in_h, s.in_w} : std::vector<int64_t>{s.in_w};
  auto g = detail::geometry(n, in_sp, ks, s.ceil_mode);
  if (static_cast<int64_t>(xs.size()) == 4) {
    s.kernel_h = ks[0], s.kernel_w = ks[1];
    s.stride_h = g.strides[0], s.stride_w = g.strides[1], s.dil_h = g.dilations[0], s.dil_w = g.dilations[1];
    s.pad_top = g.pads_begin[0], s.pad_left = g.pads_begin[1], s.pad_bottom = g.pads_end[0], s.pad_right = g.pads_end[1];
  } else {
    s.kernel_w = ks[0], s.stride_w = g.strides[0], s.dil_w = g.dilations[0], s.pad_left = g.pads_begin[0], s.pad_right = g.pads_end[0];
  }
  PERCH_CHECK(kernel_fits(s.in_h, s.pad_top, s.pad_bottom, s.kernel_h, s.dil_h) &&
                  kernel_fits(s.in_w, s.pad_left, s.pad_right, s.kernel_w, s.dil_w) && s.out_h() > 0 && s.out_w() > 0,
              n.describe(), ": input ", shape_str(xs), " is too small for the window");
  return s;
}

SliceView slice_view(const Node& n, const std::vector<const Tensor*>& a, int64_t opset, const Shape& xs) {
  const auto r = static_cast<int64_t>(xs.size());
  std::vector<int64_t> starts, ends, axes, steps;
  if (opset < 10) {
    starts = n.attr_ints("starts");
    ends = n.attr_ints("ends");
    axes = n.attr_ints("axes");
  } else {
    starts = detail::in(n, a, 1).to_i64_vector();
    ends = detail::in(n, a, 2).to_i64_vector();
    if (detail::has(a, 3)) axes = a[3]->to_i64_vector();
    if (detail::has(a, 4)) steps = a[4]->to_i64_vector();
  }
  PERCH_CHECK(starts.size() == ends.size(), "starts has ", starts.size(), " values, ends ", ends.size());
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  PERCH_CHECK(axes.size() == starts.size() && steps.size() == starts.size(), "starts, ends, axes and steps differ in length (",
              starts.size(), ", ", ends.size(), ", ", axes.size(), ", ", steps.size(), ")");
  axes = detail::normalize_axes(axes, r);
  const auto in_strides = detail::strides_of(xs);
  SliceView v{xs, 0, in_strides};
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t ax = axes[i], d = xs[static_cast<size_t>(ax)], step = steps[i];
    PERCH_CHECK(step != 0, "step of axis ", ax, " is 0");
    int64_t s = starts[i], e = ends[i];
    if (s < 0) s += d;
    if (e < 0) e += d;
    int64_t len;
    if (step > 0) {
      s = std::clamp<int64_t>(s, 0, d);
      e = std::clamp<int64_t>(e, 0, d);
      len = e > s ? (e - s + step - 1) / step : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, d - 1);
      e = std::clamp<int64_t>(e, -1, d - 1);
      len = s > e ? (s - e + (-step) - 1) / (-step) : 0;
    }
    v.shape[static_cast<size_t>(ax)] = len;
    v.strides[static_cast<size_t>(ax)] = in_strides[static_cast<size_t>(ax)] * step;
    if (len > 0) v.base += s * in_strides[static_cast<size_t>(ax)];
  }
  return v;
}

}  // namespace perch::runtime
