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

kernels::ConvNdShape conv_nd_shape(const Node& n, const Shape& xs, const Shape& ws) {
  PERCH_CHECK(xs.size() >= 3 && ws.size() == xs.size(), n.describe(), ": input ", shape_str(xs), " and weight ",
              shape_str(ws), " must be [N, C, spatial...] and [M, C/group, kernel...] of the same rank");
  kernels::ConvNdShape s;
  s.batch = xs[0], s.in_channels = xs[1], s.out_channels = ws[0];
  s.group = n.attr_int("group", 1);
  PERCH_CHECK(s.group > 0 && s.in_channels % s.group == 0 && s.out_channels % s.group == 0 &&
                  ws[1] * s.group == s.in_channels,
              n.describe(), ": weight ", shape_str(ws), " with group ", s.group, " does not match ", s.in_channels,
              " input channels");
  s.in.assign(xs.begin() + 2, xs.end());
  s.kernel.assign(ws.begin() + 2, ws.end());
  PERCH_CHECK(n.attr_ints("kernel_shape", s.kernel) == s.kernel, n.describe(),
              ": kernel_shape attribute disagrees with the weight shape ", shape_str(ws));
  auto g = detail::geometry(n, s.in, s.kernel, false);
  s.strides = g.strides, s.dilations = g.dilations, s.pads_begin = g.pads_begin, s.pads_end = g.pads_end;
  for (size_t j = 0; j < s.in.size(); ++j)
    PERCH_CHECK(s.kernel[j] > 0 && kernel_fits(s.in[j], s.pads_begin[j], s.pads_end[j], s.kernel[j], s.dilations[j]),
                n.describe(), ": input ", shape_str(xs), " is too small for the kernel ", shape_str(ws));
  return s;
}

kernels::PoolNdShape pool_nd_shape(const Node& n, const Shape& xs) {
  PERCH_CHECK(xs.size() >= 3, n.describe(), ": input must be [N, C, spatial...], got ", shape_str(xs));
  kernels::PoolNdShape s;
  s.batch = xs[0], s.channels = xs[1];
  s.in.assign(xs.begin() + 2, xs.end());
  s.kernel = n.attr_ints("kernel_shape");
  PERCH_CHECK(s.kernel.size() == s.in.size(), n.describe(), ": kernel_shape must have ", s.in.size(), " values");
  (void)checked_numel(s.kernel, n.describe() + ": kernel_shape");  // the cells of one window: no overflow, <= 2^34
  s.ceil_mode = n.attr_int("ceil_mode", 0) != 0;
  s.count_include_pad = n.attr_int("count_include_pad", 0) != 0;
  auto g = detail::geometry(n, s.in, s.kernel, s.ceil_mode);
  s.strides = g.strides, s.dilations = g.dilations, s.pads_begin = g.pads_begin, s.pads_end = g.pads_end;
  const auto out = s.out();
  for (size_t j = 0; j < s.in.size(); ++j)
    PERCH_CHECK(s.kernel[j] > 0 && kernel_fits(s.in[j], s.pads_begin[j], s.pads_end[j], s.kernel[j], s.dilations[j]) &&
                    out[j] > 0,
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

ConvTransposeGeometry conv_transpose_geometry(const Node& n, const Shape& xs, const Shape& ws) {
  const auto r = static_cast<int64_t>(xs.size()) - 2;
  PERCH_CHECK(r >= 1, "input must be [N, C, spatial...], got ", shape_str(xs));
  PERCH_CHECK(static_cast<int64_t>(ws.size()) == r + 2, "weight rank ", static_cast<int64_t>(ws.size()),
              " does not match input rank ", static_cast<int64_t>(xs.size()));
  ConvTransposeGeometry g;
  const int64_t N = xs[0], C = xs[1];
  g.group = n.attr_int("group", 1);
  PERCH_CHECK(g.group > 0 && C % g.group == 0, "group ", g.group, " does not divide the ", C, " input channels");
  PERCH_CHECK(ws[0] == C, "weight has ", ws[0], " input channels, input has ", C);
  const int64_t M = ws[1] * g.group;
  const Shape in_sp(xs.begin() + 2, xs.end());
  g.kernel.assign(ws.begin() + 2, ws.end());
  const auto ks_attr = n.attr_ints("kernel_shape", g.kernel);
  PERCH_CHECK(ks_attr == g.kernel, "kernel_shape ", shape_str(ks_attr), " differs from the weight's ", shape_str(g.kernel));
  g.strides = n.attr_ints("strides", std::vector<int64_t>(r, 1));
  g.dilations = n.attr_ints("dilations", std::vector<int64_t>(r, 1));
  const auto out_pad = n.attr_ints("output_padding", std::vector<int64_t>(r, 0));
  PERCH_CHECK(static_cast<int64_t>(g.strides.size()) == r && static_cast<int64_t>(g.dilations.size()) == r &&
                  static_cast<int64_t>(out_pad.size()) == r,
              "strides/dilations/output_padding must have ", r, " values");
  for (int64_t i = 0; i < r; ++i)
    PERCH_CHECK(g.strides[i] > 0 && g.dilations[i] > 0 && out_pad[i] >= 0,
                "strides and dilations must be positive, output_padding >= 0");
  g.pads_begin.assign(r, 0);
  g.pads_end.assign(r, 0);
  auto &pb = g.pads_begin, &pe = g.pads_end;
  Shape out_sp(r);
  const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
  auto output_shape = n.attr_ints("output_shape");
  if (static_cast<int64_t>(output_shape.size()) == r + 2) output_shape.erase(output_shape.begin(), output_shape.begin() + 2);
  const auto full = [&](int64_t i) {
    return g.strides[i] * (in_sp[i] - 1) + out_pad[i] + (g.kernel[i] - 1) * g.dilations[i] + 1;
  };
  if (!output_shape.empty() || auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    if (!output_shape.empty())
      PERCH_CHECK(static_cast<int64_t>(output_shape.size()) == r, "output_shape has ", output_shape.size(), " values for ", r,
                  " spatial dims");
    for (int64_t i = 0; i < r; ++i) {
      out_sp[i] = output_shape.empty() ? in_sp[i] * g.strides[i] : output_shape[i];
      PERCH_CHECK(out_sp[i] > 0, "output_shape must be positive, got ", shape_str(output_shape));
      const int64_t total = full(i) - out_sp[i];
      // An output_shape beyond the full size acts as extra output_padding: the tail only gets the bias.
      if (total < 0) pb[i] = 0, pe[i] = total;
      else if (auto_pad == "SAME_UPPER") pb[i] = total / 2, pe[i] = total - total / 2;
      else pb[i] = total - total / 2, pe[i] = total / 2;
    }
  } else {
    PERCH_CHECK(auto_pad == "NOTSET" || auto_pad == "VALID", "unknown auto_pad '", auto_pad, "'");
    if (auto_pad == "NOTSET") {
      const auto pads = n.attr_ints("pads", std::vector<int64_t>(2 * r, 0));
      PERCH_CHECK(static_cast<int64_t>(pads.size()) == 2 * r, "pads must have ", 2 * r, " values");
      for (int64_t i = 0; i < r; ++i) pb[i] = pads[i], pe[i] = pads[i + r];
    }
    for (int64_t i = 0; i < r; ++i) {
      out_sp[i] = full(i) - pb[i] - pe[i];
      PERCH_CHECK(out_sp[i] > 0, "pads leave no output along spatial dim ", i);
    }
  }
  g.out = {N, M};
  g.out.insert(g.out.end(), out_sp.begin(), out_sp.end());
  if (r <= 2) {
    const auto at = [&](const auto& v, int64_t fill) { return r == 2 ? static_cast<int64_t>(v[0]) : fill; };
    kernels::Conv2dShape cs;
    cs.batch = N, cs.in_channels = M, cs.out_channels = C, cs.group = g.group;
    cs.in_h = at(out_sp, 1), cs.in_w = out_sp[r - 1];
    cs.kernel_h = at(g.kernel, 1), cs.kernel_w = g.kernel[r - 1];
    cs.stride_h = at(g.strides, 1), cs.stride_w = g.strides[r - 1];
    cs.dil_h = at(g.dilations, 1), cs.dil_w = g.dilations[r - 1];
    cs.pad_top = at(pb, 0), cs.pad_left = pb[r - 1];
    cs.pad_bottom = r == 2 ? std::max<int64_t>(0, pe[0] - out_pad[0]) : 0;
    cs.pad_right = std::max<int64_t>(0, pe[r - 1] - out_pad[r - 1]);
    if (cs.out_h() == at(in_sp, 1) && cs.out_w() == in_sp[r - 1]) g.as_conv = cs;
  }
  return g;
}

}  // namespace perch::runtime
