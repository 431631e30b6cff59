#include "ops_common.h"

namespace perch::runtime::detail {

const Tensor& in(const graph::Node& n, const std::vector<const Tensor*>& args, size_t i) {
  PERCH_CHECK(i < args.size() && args[i], "input ", i, " of ", n.describe(), " is required but missing");
  return *args[i];
}

Shape broadcast_shape(const Shape& a, const Shape& b, const graph::Node& n) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    PERCH_CHECK(da == db || da == 1 || db == 1, n.describe(), ": shapes ", shape_str(a), " and ", shape_str(b),
                " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor legacy_broadcast_operand(const graph::Node& n, const Tensor& a, const Tensor& b) {
  if (n.attr_int("broadcast", 0) == 0) {
    PERCH_CHECK(a.shape() == b.shape(), n.describe(), ": shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
                " differ and broadcast is 0 (opset ", "< 7: equal shapes)");
    return b;
  }
  const int64_t ra = a.rank(), rb = b.rank();
  const int64_t axis = n.has_attr("axis") ? n.attr_int("axis", 0) : ra - rb;
  PERCH_CHECK(axis >= 0 && axis + rb <= ra, n.describe(), ": B ", shape_str(b.shape()), " does not fit A ",
              shape_str(a.shape()), " at axis ", axis);
  for (int64_t i = 0; i < rb; ++i)
    PERCH_CHECK(b.dim(i) == a.dim(axis + i) || b.dim(i) == 1, n.describe(), ": B ", shape_str(b.shape()),
                " does not match A ", shape_str(a.shape()), " at axis ", axis);
  Shape s = b.shape();
  s.resize(static_cast<size_t>(ra - axis), 1);  // trailing 1s: NumPy then aligns B at `axis`
  return b.reshaped(s);
}

Tensor legacy_prelu_slope(const Tensor& x, const Tensor& slope) {
  if (slope.rank() != 1 || slope.numel() <= 1 || x.rank() < 2 || slope.numel() != x.dim(1)) return slope;
  Shape s(static_cast<size_t>(x.rank() - 1), 1);
  s[0] = slope.numel();
  return slope.reshaped(s);
}

std::vector<int64_t> broadcast_strides(const Shape& shape, const Shape& out) {
  std::vector<int64_t> strides(out.size(), 0);
  int64_t s = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    const size_t oi = out.size() - 1 - i, si = shape.size() - 1 - i;
    strides[oi] = shape[si] == 1 ? 0 : s;
    s *= shape[si];
  }
  return strides;
}

Geometry geometry(const graph::Node& n, const std::vector<int64_t>& in, const std::vector<int64_t>& k, bool ceil_mode) {
  const size_t r = in.size();
  Geometry g;
  g.strides = n.attr_ints("strides", std::vector<int64_t>(r, 1));
  g.dilations = n.attr_ints("dilations", std::vector<int64_t>(r, 1));
  PERCH_CHECK(g.strides.size() == r && g.dilations.size() == r, n.describe(), ": strides/dilations must have ", r, " values");
  for (size_t i = 0; i < r; ++i)
    PERCH_CHECK(g.strides[i] > 0 && g.dilations[i] > 0, n.describe(), ": strides and dilations must be positive");
  const std::string auto_pad = n.attr_string("auto_pad", "NOTSET");
  g.pads_begin.assign(r, 0);
  g.pads_end.assign(r, 0);
  if (auto_pad == "NOTSET") {
    auto pads = n.attr_ints("pads", std::vector<int64_t>(2 * r, 0));
    PERCH_CHECK(pads.size() == 2 * r, n.describe(), ": pads must have ", 2 * r, " values");
    for (size_t i = 0; i < r; ++i) {
      g.pads_begin[i] = pads[i];
      g.pads_end[i] = pads[i + r];
      PERCH_CHECK(pads[i] >= 0 && pads[i + r] >= 0, n.describe(), ": negative pads are not supported");
    }
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (size_t i = 0; i < r; ++i) {
      const int64_t out = (in[i] + g.strides[i] - 1) / g.strides[i];
      const int64_t need = (out - 1) * g.strides[i] + (k[i] - 1) * g.dilations[i] + 1 - in[i];
      const int64_t total = std::max<int64_t>(0, need);
      const int64_t small = total / 2, big = total - small;
      g.pads_begin[i] = auto_pad == "SAME_UPPER" ? small : big;
      g.pads_end[i] = auto_pad == "SAME_UPPER" ? big : small;
    }
  } else if (auto_pad != "VALID") {
    PERCH_FAIL(n.describe(), ": unknown auto_pad '", auto_pad, "'");
  }
  (void)ceil_mode;
  return g;
}

}  // namespace perch::runtime::detail
