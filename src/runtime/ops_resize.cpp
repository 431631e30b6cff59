// Resize (opset 10, 11, 13, 18) and Upsample (7, 9) for the float executor.
//
// The interpolation follows ONNX's reference (onnx/reference/ops/op_resize.py): separable 1-D passes from
// the innermost dim outwards, computed in double. For output index x along a dim of input length L and
// scale s (= output size / L when sizes are given), the source coordinate is
//   half_pixel          (x + 0.5) / s - 0.5
//   pytorch_half_pixel  as half_pixel, but -0.5 when s * L == 1
//   align_corners       x * (L - 1) / (s * L - 1)    (0 when s * L == 1)
//   asymmetric          x / s
//   tf_half_pixel_for_nn (x + 0.5) / s
//   tf_crop_and_resize  roi_start * (L - 1) + x * (roi_end - roi_start) * (L - 1) / (s * L - 1), and the
//                       extrapolation_value outside [0, L - 1]
//   half_pixel_symmetric (opset 19) half_pixel shifted so the output stays centred on the input.
// Note the reference's `s * L` (not the rounded output size) in align_corners/tf_crop_and_resize.
// Neighbours outside the input repeat the edge element, unless exclude_outside drops them (weights
// renormalized). nearest picks floor(x) or floor(x) + 1 per nearest_mode (an integral x is itself).
//
// Opset 10 (and Upsample) has no coordinate or nearest mode attributes: it maps coordinates asymmetrically
// and, as ONNX Runtime does for these opsets, picks the nearest pixel by truncation when upsampling and by
// ceil when downsampling.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ops_typed.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/op_geometry.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

struct ResizeAttrs {
  std::string mode = "nearest";  // nearest | linear | cubic
  std::string coord = "half_pixel";
  std::string nearest_mode = "round_prefer_floor";
  double cubic_a = -0.75;
  bool exclude_outside = false;
  double extrapolation = 0.0;
  bool legacy = false;  // opset <= 10 Resize and Upsample
};

// Taps (input index, weight) for output index x along one dim; empty = extrapolation_value.
std::vector<ResizeTap> taps_for(const ResizeAttrs& at, int64_t x, int64_t len, double scale, int64_t out_len, double roi_s,
                                double roi_e) {
  const double xf = static_cast<double>(x), L = static_cast<double>(len), out_f = scale * L;
  double xo;
  const std::string& c = at.coord;
  if (c == "half_pixel") {
    xo = (xf + 0.5) / scale - 0.5;
  } else if (c == "pytorch_half_pixel") {
    xo = out_f == 1.0 ? -0.5 : (xf + 0.5) / scale - 0.5;
  } else if (c == "align_corners") {
    xo = out_f == 1.0 ? 0.0 : xf * (L - 1) / (out_f - 1);
  } else if (c == "asymmetric") {
    xo = xf / scale;
  } else if (c == "tf_half_pixel_for_nn") {
    xo = (xf + 0.5) / scale;
  } else if (c == "half_pixel_symmetric") {
    const double adj = static_cast<double>(out_len) / out_f, center = L / 2;
    xo = center * (1 - adj) + (xf + 0.5) / scale - 0.5;
  } else if (c == "tf_crop_and_resize") {
    xo = out_f == 1.0 ? (roi_e - roi_s) * (L - 1) / 2 : xf * (roi_e - roi_s) * (L - 1) / (out_f - 1);
    xo += roi_s * (L - 1);
    if (xo < 0 || xo > L - 1) return {};
  } else {
    PERCH_FAIL("unknown coordinate_transformation_mode '", c, "'");
  }
  const auto clampi = [len](int64_t i) { return std::clamp<int64_t>(i, 0, len - 1); };
  const double fl = std::floor(xo);
  const int64_t i0 = static_cast<int64_t>(fl);
  const double t = xo - fl;  // in [0, 1)
  if (at.mode == "nearest") {
    int64_t i;
    if (at.legacy) {
      i = scale < 1.0 ? static_cast<int64_t>(std::ceil(xo)) : static_cast<int64_t>(xo);
    } else if (t == 0.0) {
      i = i0;
    } else if (at.nearest_mode == "round_prefer_floor") {
      i = t <= 0.5 ? i0 : i0 + 1;
    } else if (at.nearest_mode == "round_prefer_ceil") {
      i = t < 0.5 ? i0 : i0 + 1;
    } else if (at.nearest_mode == "floor") {
      i = i0;
    } else if (at.nearest_mode == "ceil") {
      i = i0 + 1;
    } else {
      PERCH_FAIL("unknown nearest_mode '", at.nearest_mode, "'");
    }
    return {{clampi(i), 1.0}};
  }
  std::vector<ResizeTap> taps;
  if (at.mode == "linear") {
    taps = {{i0, 1.0 - t}, {i0 + 1, t}};
  } else if (at.mode == "cubic") {
    const double A = at.cubic_a;
    const auto far = [A](double d) { return ((A * d - 5 * A) * d + 8 * A) * d - 4 * A; };  // 1 <= d < 2
    const auto near = [A](double d) { return ((A + 2) * d - (A + 3)) * d * d + 1; };      // 0 <= d < 1
    taps = {{i0 - 1, far(t + 1)}, {i0, near(t)}, {i0 + 1, near(1 - t)}, {i0 + 2, far(2 - t)}};
  } else {
    PERCH_FAIL("unknown mode '", at.mode, "'");
  }
  if (at.exclude_outside) {
    double sum = 0;
    for (auto& tp : taps) {
      if (tp.index < 0 || tp.index >= len) tp.weight = 0;
      sum += tp.weight;
    }
    for (auto& tp : taps) tp.weight /= sum;
  }
  for (auto& tp : taps) tp.index = clampi(tp.index);
  return taps;
}

// The map for output shape `out`, per-dim `scales` and `roi` (2 * rank values, starts then ends, or empty).
ResizeMap make_map(const Shape& xs, const Shape& out, const std::vector<double>& scales, const std::vector<double>& roi,
                   const ResizeAttrs& at) {
  const auto r = static_cast<int64_t>(xs.size());
  ResizeMap m;
  m.out = out;
  m.extrapolation = at.extrapolation;
  const bool crop = at.coord == "tf_crop_and_resize";
  m.nearest = at.mode == "nearest" && !crop;
  m.taps.resize(static_cast<size_t>(r));
  m.identity.assign(static_cast<size_t>(r), false);
  for (int64_t d = 0; d < r; ++d) {
    PERCH_CHECK(scales[d] > 0, "scale of dim ", d, " must be positive, got ", scales[d]);
    if (!crop && out[d] == xs[d] && scales[d] == 1.0) {  // every mode but the crop maps x -> x exactly
      m.identity[d] = true;
      continue;
    }
    PERCH_CHECK(xs[d] > 0 || out[d] == 0, "cannot resize an empty dim ", d, " to ", out[d]);
    const double rs = roi.empty() ? 0.0 : roi[d], re = roi.empty() ? 1.0 : roi[d + r];
    auto& td = m.taps[static_cast<size_t>(d)];
    for (int64_t j = 0; j < out[d]; ++j) td.push_back(taps_for(at, j, xs[d], scales[d], out[d], rs, re));
  }
  return m;
}

// x (row-major, shape `shape`) resized along `dim` by the taps of that dim.
std::vector<double> resize_dim(const std::vector<double>& x, Shape& shape, int64_t dim,
                               const std::vector<std::vector<ResizeTap>>& taps, double extrapolation) {
  const int64_t len = shape[dim], out_len = static_cast<int64_t>(taps.size());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[d];
  for (size_t d = static_cast<size_t>(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  std::vector<double> y(static_cast<size_t>(outer * out_len * inner));
  for (int64_t j = 0; j < out_len && !y.empty(); ++j) {
    const auto& tj = taps[static_cast<size_t>(j)];
    for (int64_t o = 0; o < outer; ++o) {
      double* yp = y.data() + (o * out_len + j) * inner;
      if (tj.empty()) {
        std::fill_n(yp, inner, extrapolation);
        continue;
      }
      std::fill_n(yp, inner, 0.0);
      for (const ResizeTap& tp : tj) {
        if (tp.weight == 0.0) continue;
        const double* xp = x.data() + (o * len + tp.index) * inner;
        for (int64_t i = 0; i < inner; ++i) yp[i] += tp.weight * xp[i];
      }
    }
  }
  shape[dim] = out_len;
  return y;
}

// Nearest mode outside tf_crop_and_resize: every output element is one input element (a single tap of weight
// 1 per dim), so y is a gather of x's elements by per-dim index maps — no arithmetic, any dtype, in x's own type
// (the separable double path below gives the same values for every type but int64 beyond 2^53). Rows of the
// last dim whose outer indices map to the source row of the previous output row are copies of it.
Tensor nearest_gather(const Tensor& x, const ResizeMap& map) {
  const int64_t r = x.rank();
  const Shape& out = map.out;
  std::vector<std::vector<int64_t>> idx(static_cast<size_t>(r));
  for (int64_t d = 0; d < r; ++d) {
    auto& m = idx[static_cast<size_t>(d)];
    m.resize(static_cast<size_t>(out[d]));
    for (int64_t j = 0; j < out[d]; ++j)
      m[static_cast<size_t>(j)] = map.identity[d] ? j : map.taps[d][j].at(0).index;
  }
  Tensor y = Tensor::uninitialized(x.dtype(), out);
  if (y.numel() == 0) return y;
  const size_t es = x.nbytes() / static_cast<size_t>(std::max<int64_t>(x.numel(), 1));
  std::vector<int64_t> xstr(static_cast<size_t>(r), 1);
  for (int64_t d = r - 2; d >= 0; --d) xstr[static_cast<size_t>(d)] = xstr[static_cast<size_t>(d) + 1] * x.dim(d + 1);
  const int64_t row_len = out[r - 1], rows = y.numel() / row_len;
  const auto& last = idx[static_cast<size_t>(r - 1)];
  const auto* xb = static_cast<const uint8_t*>(x.raw());
  auto* yb = static_cast<uint8_t*>(y.raw());
  std::vector<int64_t> pos(static_cast<size_t>(r), 0);
  int64_t prev_src = -1;
  for (int64_t row = 0; row < rows; ++row) {
    int64_t src = 0;
    for (int64_t d = 0; d + 1 < r; ++d) src += idx[static_cast<size_t>(d)][static_cast<size_t>(pos[static_cast<size_t>(d)])] * xstr[static_cast<size_t>(d)];
    uint8_t* yr = yb + static_cast<size_t>(row * row_len) * es;
    if (src == prev_src) {
      std::memcpy(yr, yr - static_cast<size_t>(row_len) * es, static_cast<size_t>(row_len) * es);
    } else if (es == 4) {
      const auto* s4 = reinterpret_cast<const uint32_t*>(xb) + src;
      auto* y4 = reinterpret_cast<uint32_t*>(yr);
      for (int64_t j = 0; j < row_len; ++j) y4[j] = s4[last[static_cast<size_t>(j)]];
    } else {
      for (int64_t j = 0; j < row_len; ++j)
        std::memcpy(yr + static_cast<size_t>(j) * es, xb + static_cast<size_t>(src + last[static_cast<size_t>(j)]) * es, es);
    }
    prev_src = src;
    for (int64_t d = r - 2; d >= 0; --d) {  // next row: odometer over the outer output dims
      if (++pos[static_cast<size_t>(d)] < out[d]) break;
      pos[static_cast<size_t>(d)] = 0;
    }
  }
  return y;
}

// x resized by `map`: innermost dim first, in double.
Tensor resize_tensor(const Tensor& x, const ResizeMap& map) {
  const int64_t r = x.rank();
  if (map.nearest && r >= 1 && x.dtype() != DType::kBool) return nearest_gather(x, map);
  std::vector<double> buf(static_cast<size_t>(x.numel()));
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) PERCH_FAIL("bool input is not supported");
    else
      for (int64_t i = 0; i < x.numel(); ++i) buf[i] = static_cast<double>(x.data<T>()[i]);
  });
  Shape cur = x.shape();
  for (int64_t d = r - 1; d >= 0; --d)
    if (!map.identity[d]) buf = resize_dim(buf, cur, d, map.taps[d], map.extrapolation);
  Tensor y = Tensor::uninitialized(x.dtype(), map.out);
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T>) {
      for (int64_t i = 0; i < y.numel(); ++i) y.data<T>()[i] = static_cast<T>(buf[i]);
    } else if constexpr (!std::is_same_v<T, bool>) {
      constexpr double lo = static_cast<double>(std::numeric_limits<T>::lowest());
      constexpr double hi = static_cast<double>(std::numeric_limits<T>::max());
      for (int64_t i = 0; i < y.numel(); ++i) y.data<T>()[i] = static_cast<T>(std::clamp(std::nearbyint(buf[i]), lo, hi));
    }
  });
  return y;
}

std::vector<double> float_values(const Tensor& t) {
  const Tensor f = t.dtype() == DType::kFloat64 ? t : t.to_f32();
  std::vector<double> v;
  for (int64_t i = 0; i < f.numel(); ++i)
    v.push_back(f.dtype() == DType::kFloat64 ? f.data<double>()[i] : static_cast<double>(f.data<float>()[i]));
  return v;
}

// Output size from scales: floor(L * s), as the reference and ONNX Runtime compute it.
Shape sizes_from_scales(const Shape& xs, const std::vector<double>& scales) {
  Shape out(xs.size());
  for (size_t d = 0; d < xs.size(); ++d) {
    PERCH_CHECK(scales[d] > 0, "scale of dim ", d, " must be positive, got ", scales[d]);
    out[d] = static_cast<int64_t>(std::floor(static_cast<double>(xs[d]) * scales[d]));
  }
  return out;
}

ResizeMap resize_node_map(const Node& n, const Args& a, int64_t opset, const Shape& xs) {
  const auto r = static_cast<int64_t>(xs.size());
  ResizeAttrs at;
  at.mode = n.attr_string("mode", "nearest");
  if (opset < 11) {
    at.legacy = true;
    at.coord = "asymmetric";
    PERCH_CHECK(at.mode == "nearest" || at.mode == "linear", "mode '", at.mode, "' is not defined before opset 11");
    const auto scales = float_values(in(n, a, 1));
    PERCH_CHECK(static_cast<int64_t>(scales.size()) == r, "scales has ", scales.size(), " values for rank ", r);
    return make_map(xs, sizes_from_scales(xs, scales), scales, {}, at);
  }
  at.coord = n.attr_string("coordinate_transformation_mode", "half_pixel");
  at.nearest_mode = n.attr_string("nearest_mode", "round_prefer_floor");
  at.cubic_a = n.attr_float("cubic_coeff_a", -0.75f);
  at.exclude_outside = n.attr_int("exclude_outside", 0) != 0;
  at.extrapolation = n.attr_float("extrapolation_value", 0.0f);
  PERCH_CHECK(n.attr_int("antialias", 0) == 0, "antialias = 1 is not supported");
  PERCH_CHECK(n.attr_string("keep_aspect_ratio_policy", "stretch") == "stretch", "keep_aspect_ratio_policy '",
              n.attr_string("keep_aspect_ratio_policy", ""), "' is not supported (only stretch)");
  std::vector<int64_t> axes;
  if (opset >= 18 && n.has_attr("axes")) axes = detail::normalize_axes(n.attr_ints("axes"), r);
  else
    for (int64_t d = 0; d < r; ++d) axes.push_back(d);
  const size_t k = axes.size();
  std::vector<double> roi;
  if (has(a, 1) && a[1]->numel() > 0 && at.coord == "tf_crop_and_resize") {
    const auto v = float_values(*a[1]);
    PERCH_CHECK(v.size() == 2 * k, "roi has ", v.size(), " values, expected ", 2 * k);
    roi.assign(2 * r, 0.0);
    for (int64_t d = 0; d < r; ++d) roi[d + r] = 1.0;
    for (size_t i = 0; i < k; ++i) roi[axes[i]] = v[i], roi[axes[i] + r] = v[i + k];
  }
  std::vector<double> scales(r, 1.0);
  Shape out = xs;
  const bool have_scales = has(a, 2) && a[2]->numel() > 0, have_sizes = has(a, 3) && a[3]->numel() > 0;
  PERCH_CHECK(have_scales != have_sizes, "exactly one of scales and sizes must be given (non-empty)");
  if (have_scales) {
    const auto s = float_values(*a[2]);
    PERCH_CHECK(s.size() == k, "scales has ", s.size(), " values, expected ", k);
    for (size_t i = 0; i < k; ++i) scales[axes[i]] = s[i];
    out = sizes_from_scales(xs, scales);
  } else {
    const auto s = a[3]->to_i64_vector();
    PERCH_CHECK(s.size() == k, "sizes has ", s.size(), " values, expected ", k);
    for (size_t i = 0; i < k; ++i) {
      const int64_t d = axes[i];
      PERCH_CHECK(s[i] >= 0, "negative output size ", s[i]);
      PERCH_CHECK(xs[d] > 0 || s[i] == 0, "cannot resize empty dim ", d, " to ", s[i]);
      out[d] = s[i];
      scales[d] = xs[d] > 0 ? static_cast<double>(s[i]) / static_cast<double>(xs[d]) : 1.0;
    }
  }
  return make_map(xs, out, scales, roi, at);
}

ResizeMap upsample_node_map(const Node& n, const Args& a, int64_t opset, const Shape& xs) {
  ResizeAttrs at;
  at.legacy = true;
  at.coord = "asymmetric";
  at.mode = n.attr_string("mode", "nearest");
  if (at.mode == "bilinear") at.mode = "linear";
  PERCH_CHECK(at.mode == "nearest" || at.mode == "linear", "unknown mode '", at.mode, "'");
  std::vector<double> scales;
  if (opset < 9) {
    for (float s : n.attr_floats("scales")) scales.push_back(s);
  } else {
    scales = float_values(in(n, a, 1));
  }
  PERCH_CHECK(scales.size() == xs.size(), "scales has ", scales.size(), " values for rank ", xs.size());
  for (double s : scales) PERCH_CHECK(s >= 1.0, "Upsample scales must be >= 1, got ", s);
  return make_map(xs, sizes_from_scales(xs, scales), scales, {}, at);
}

std::vector<Tensor> resize(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  return {resize_tensor(x, resize_node_map(n, a, opset, x.shape()))};
}

std::vector<Tensor> upsample(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  return {resize_tensor(x, upsample_node_map(n, a, opset, x.shape()))};
}

}  // namespace

ResizeMap resize_map(const Node& n, const Args& a, int64_t opset, const Shape& x) {
  return n.op_type == "Upsample" ? upsample_node_map(n, a, opset, x) : resize_node_map(n, a, opset, x);
}

void register_resize_ops(OpRegistry& r) {
  r.add("Resize", 10, resize);
  r.add("Upsample", 7, upsample);
}

}  // namespace perch::runtime
