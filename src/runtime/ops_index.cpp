// Index-driven ops for the float executor: GatherElements, ScatterElements, GatherND, ScatterND, Compress,
// NonZero, OneHot, Trilu, EyeLike, NonMaxSuppression, ReverseSequence, Unique, and Scatter (opsets 9-10). Data keeps its element type; indices may be negative (counted from the
// end) and out-of-range indices are errors.
#include <algorithm>
#include <array>
#include <cstring>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using detail::strides_of;
using detail::Walker;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

int64_t wrap_index(int64_t i, int64_t dim) {
  PERCH_CHECK(i >= -dim && i < dim, "index ", i, " out of range [", -dim, ", ", dim, ")");
  return i < 0 ? i + dim : i;
}

// Offsets into `data` of every element of `indices` (same rank): the index replaces the coordinate on `axis`.
std::vector<int64_t> element_offsets(const Tensor& data, const Tensor& indices, int64_t axis) {
  PERCH_CHECK(indices.rank() == data.rank(), "indices rank ", indices.rank(), " differs from data rank ", data.rank());
  for (int64_t d = 0; d < data.rank(); ++d)
    PERCH_CHECK(d == axis || indices.dim(d) <= data.dim(d), "indices shape ", shape_str(indices.shape()),
                " exceeds data shape ", shape_str(data.shape()), " off the axis");
  auto ds = strides_of(data.shape());
  const int64_t axis_stride = ds[axis];
  ds[axis] = 0;
  const auto idx = indices.to_i64_vector();
  std::vector<int64_t> off;
  off.reserve(idx.size());
  size_t i = 0;
  for (Walker w(indices.shape(), {ds}); w.valid(); w.next(), ++i)
    off.push_back(w.offset(0) + wrap_index(idx[i], data.dim(axis)) * axis_stride);
  return off;
}

std::vector<Tensor> gather_elements(const Node& n, const Args& a, int64_t) {
  const Tensor &data = in(n, a, 0), &indices = in(n, a, 1);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), data.rank(), "axis");
  const auto off = element_offsets(data, indices, axis);
  Tensor y = Tensor::uninitialized(data.dtype(), indices.shape());
  const size_t es = dtype_size(data.dtype());
  for (size_t i = 0; i < off.size(); ++i)
    std::memcpy(static_cast<char*>(y.raw()) + i * es, static_cast<const char*>(data.raw()) + off[i] * es, es);
  return {y};
}

// Applies updates to y at offsets with the `reduction` attribute (none, add, mul, max, min).
void scatter_apply(const Node& n, Tensor& y, const Tensor& updates, const std::vector<int64_t>& off, int64_t slice) {
  PERCH_CHECK(updates.dtype() == y.dtype(), "updates have type ", dtype_name(updates.dtype()), ", data ", dtype_name(y.dtype()));
  const std::string red = n.attr_string("reduction", "none");
  detail::visit_dtype(y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* yd = y.data<T>();
    const T* ud = updates.data<T>();
    for (size_t i = 0; i < off.size(); ++i)
      for (int64_t j = 0; j < slice; ++j) {
        T& t = yd[off[i] + j];
        const T u = ud[static_cast<int64_t>(i) * slice + j];
        if (red == "none") t = u;
        else if constexpr (std::is_same_v<T, bool>) PERCH_FAIL("reduction '", red, "' on bool data");
        else if (red == "add") t = static_cast<T>(t + u);
        else if (red == "mul") t = static_cast<T>(t * u);
        else if (red == "max") t = std::max(t, u);
        else if (red == "min") t = std::min(t, u);
        else PERCH_FAIL("unknown reduction '", red, "'");
      }
  });
}

std::vector<Tensor> scatter_elements(const Node& n, const Args& a, int64_t) {
  const Tensor &data = in(n, a, 0), &indices = in(n, a, 1), &updates = in(n, a, 2);
  PERCH_CHECK(updates.shape() == indices.shape(), "updates ", shape_str(updates.shape()), " and indices ",
              shape_str(indices.shape()), " differ in shape");
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), data.rank(), "axis");
  Tensor y = data.clone();
  scatter_apply(n, y, updates, element_offsets(data, indices, axis), 1);
  return {y};
}

// GatherND/ScatterND addressing: offsets (in elements of data) of the slices selected by `indices`
// [b..., q..., k] with `batch_dims` leading batch dims; `slice` = elements per selected slice.
std::vector<int64_t> nd_offsets(const Tensor& data, const Tensor& indices, int64_t batch_dims, int64_t& slice,
                                Shape& out_shape) {
  const int64_t r = data.rank(), q = indices.rank();
  PERCH_CHECK(q >= 1 && batch_dims >= 0 && batch_dims < std::min(r, q), "batch_dims ", batch_dims, " invalid for data rank ",
              r, " and indices rank ", q);
  const int64_t k = indices.dim(-1);
  PERCH_CHECK(k >= 1 && k <= r - batch_dims, "indices' last dim ", k, " exceeds data rank ", r, " - batch_dims ", batch_dims);
  for (int64_t d = 0; d < batch_dims; ++d)
    PERCH_CHECK(data.dim(d) == indices.dim(d), "batch dim ", d, " differs (", data.dim(d), " vs ", indices.dim(d), ")");
  const auto ds = strides_of(data.shape());
  slice = 1;
  for (int64_t d = batch_dims + k; d < r; ++d) slice *= data.dim(d);
  int64_t batch = 1;
  for (int64_t d = 0; d < batch_dims; ++d) batch *= data.dim(d);
  const int64_t batch_stride = batch_dims ? ds[batch_dims - 1] : 0;
  out_shape.assign(indices.shape().begin(), indices.shape().end() - 1);
  out_shape.insert(out_shape.end(), data.shape().begin() + batch_dims + k, data.shape().end());
  const auto idx = indices.to_i64_vector();
  const int64_t tuples = static_cast<int64_t>(idx.size()) / k, per_batch = tuples / std::max<int64_t>(batch, 1);
  std::vector<int64_t> off;
  for (int64_t t = 0; t < tuples; ++t) {
    int64_t o = (t / std::max<int64_t>(per_batch, 1)) * batch_stride;
    for (int64_t j = 0; j < k; ++j) o += wrap_index(idx[t * k + j], data.dim(batch_dims + j)) * ds[batch_dims + j];
    off.push_back(o);
  }
  return off;
}

std::vector<Tensor> gather_nd(const Node& n, const Args& a, int64_t opset) {
  const Tensor &data = in(n, a, 0), &indices = in(n, a, 1);
  int64_t slice;
  Shape ys;
  const auto off = nd_offsets(data, indices, opset >= 12 ? n.attr_int("batch_dims", 0) : 0, slice, ys);
  Tensor y = Tensor::uninitialized(data.dtype(), ys);
  const size_t es = dtype_size(data.dtype());
  for (size_t i = 0; i < off.size(); ++i)
    std::memcpy(static_cast<char*>(y.raw()) + i * slice * es, static_cast<const char*>(data.raw()) + off[i] * es, slice * es);
  return {y};
}

std::vector<Tensor> scatter_nd(const Node& n, const Args& a, int64_t) {
  const Tensor &data = in(n, a, 0), &indices = in(n, a, 1), &updates = in(n, a, 2);
  int64_t slice;
  Shape us;
  const auto off = nd_offsets(data, indices, 0, slice, us);
  PERCH_CHECK(updates.shape() == us, "updates have shape ", shape_str(updates.shape()), ", expected ", shape_str(us));
  Tensor y = data.clone();
  scatter_apply(n, y, updates, off, slice);
  return {y};
}

std::vector<Tensor> compress(const Node& n, const Args& a, int64_t) {
  const Tensor &x0 = in(n, a, 0), &cond = in(n, a, 1);
  PERCH_CHECK(cond.rank() == 1, "condition must be 1-D, got ", shape_str(cond.shape()));
  const auto c = cond.to_i64_vector();
  const bool flat = !n.has_attr("axis");
  const Tensor x = flat ? x0.reshaped({x0.numel()}) : x0;
  const int64_t axis = flat ? 0 : normalize_axis(n.attr_int("axis", 0), x.rank(), "axis");
  const int64_t dim = x.dim(axis);
  PERCH_CHECK(static_cast<int64_t>(c.size()) <= dim, "condition has ", c.size(), " values for an axis of ", dim);
  std::vector<int64_t> keep;
  for (size_t i = 0; i < c.size(); ++i)
    if (c[i]) keep.push_back(static_cast<int64_t>(i));
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  Shape ys = x.shape();
  ys[axis] = static_cast<int64_t>(keep.size());
  Tensor y = Tensor::uninitialized(x.dtype(), ys);
  const size_t es = dtype_size(x.dtype());
  for (int64_t o = 0; o < outer; ++o)
    for (size_t j = 0; j < keep.size(); ++j)
      std::memcpy(static_cast<char*>(y.raw()) + ((o * static_cast<int64_t>(keep.size()) + static_cast<int64_t>(j)) * inner) * es,
                  static_cast<const char*>(x.raw()) + ((o * dim + keep[j]) * inner) * es, inner * es);
  return {y};
}

std::vector<Tensor> nonzero(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const Tensor xb = x.rank() == 0 ? x.reshaped({1}) : x;
  std::vector<std::vector<int64_t>> hits;
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* d = xb.data<T>();
    int64_t i = 0;
    for (Walker w(xb.shape(), {}); w.valid(); w.next(), ++i)
      if (d[i] != T(0)) hits.push_back(w.index());
  });
  const int64_t r = x.rank(), m = static_cast<int64_t>(hits.size());
  Tensor y(DType::kInt64, {r, m});
  for (int64_t j = 0; j < m; ++j)
    for (int64_t d = 0; d < r; ++d) y.data<int64_t>()[d * m + j] = hits[j][d];
  return {y};
}

std::vector<Tensor> one_hot(const Node& n, const Args& a, int64_t) {
  const Tensor &indices = in(n, a, 0), &values = in(n, a, 2);
  const int64_t depth = static_cast<int64_t>(detail::scalar_value(in(n, a, 1), "depth"));
  PERCH_CHECK(depth > 0, "depth must be positive, got ", depth);
  PERCH_CHECK(values.numel() == 2, "values must hold [off_value, on_value], got shape ", shape_str(values.shape()));
  const int64_t r = indices.rank() + 1;
  const int64_t axis = normalize_axis(n.attr_int("axis", -1), r, "axis");
  Shape ys = indices.shape();
  ys.insert(ys.begin() + axis, depth);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= ys[d];
  for (int64_t d = axis + 1; d < r; ++d) inner *= ys[d];
  const auto idx = indices.to_i64_vector();
  Tensor y = Tensor::uninitialized(values.dtype(), ys);
  const size_t es = dtype_size(values.dtype());
  const char* off_v = static_cast<const char*>(values.raw());
  const char* on_v = off_v + es;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < depth; ++j)
      for (int64_t i = 0; i < inner; ++i) {
        int64_t v = idx[o * inner + i];
        if (v < 0) v += depth;  // out-of-range indices select nothing (all off_value)
        std::memcpy(static_cast<char*>(y.raw()) + ((o * depth + j) * inner + i) * es, v == j ? on_v : off_v, es);
      }
  return {y};
}

std::vector<Tensor> trilu(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.rank() >= 2, "input must have rank >= 2, got ", shape_str(x.shape()));
  const int64_t k = has(a, 1) ? static_cast<int64_t>(detail::scalar_value(*a[1], "k")) : 0;
  const bool upper = n.attr_int("upper", 1) != 0;
  const int64_t R = x.dim(-2), C = x.dim(-1), mats = x.numel() / std::max<int64_t>(1, R * C);
  Tensor y(x.dtype(), x.shape());  // zero-filled
  const size_t es = dtype_size(x.dtype());
  for (int64_t m = 0; m < mats; ++m)
    for (int64_t i = 0; i < R; ++i)
      for (int64_t j = 0; j < C; ++j)
        if (upper ? j - i >= k : j - i <= k) {
          const int64_t at = (m * R + i) * C + j;
          std::memcpy(static_cast<char*>(y.raw()) + at * es, static_cast<const char*>(x.raw()) + at * es, es);
        }
  return {y};
}

std::vector<Tensor> eye_like(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.rank() == 2, "input must be 2-D, got ", shape_str(x.shape()));
  DType dt = x.dtype();
  if (n.has_attr("dtype")) {
    switch (n.attr_int("dtype", 1)) {
      case 1: dt = DType::kFloat32; break;
      case 2: dt = DType::kUInt8; break;
      case 3: dt = DType::kInt8; break;
      case 4: dt = DType::kUInt16; break;
      case 5: dt = DType::kInt16; break;
      case 6: dt = DType::kInt32; break;
      case 7: dt = DType::kInt64; break;
      case 9: dt = DType::kBool; break;
      case 11: dt = DType::kFloat64; break;
      default: PERCH_FAIL("dtype ", n.attr_int("dtype", 1), " is not supported");
    }
  }
  const int64_t k = n.attr_int("k", 0);
  Tensor y(dt, x.shape());
  detail::visit_dtype(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (int64_t i = 0; i < x.dim(0); ++i)
      if (i + k >= 0 && i + k < x.dim(1)) y.data<T>()[i * x.dim(1) + i + k] = T(1);
  });
  return {y};
}

// ---- ReverseSequence / Unique -----------------------------------------------------------------------

// ReverseSequence: along time_axis (0 or 1), the first sequence_lens[b] steps of each batch entry b (along
// batch_axis, the other of 0 and 1) in reverse order; the steps after them as they are.
std::vector<Tensor> reverse_sequence(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &lens_t = in(n, a, 1);
  PERCH_CHECK(x.rank() >= 2, "input must have rank >= 2, got ", shape_str(x.shape()));
  const int64_t ta = n.attr_int("time_axis", 0), ba = n.attr_int("batch_axis", 1);
  PERCH_CHECK((ta == 0 && ba == 1) || (ta == 1 && ba == 0), "time_axis and batch_axis must be 0 and 1 in some order, got ",
              ta, " and ", ba);
  const int64_t T = x.dim(ta), B = x.dim(ba);
  const auto lens = lens_t.to_i64_vector();
  PERCH_CHECK(static_cast<int64_t>(lens.size()) == B, "sequence_lens has ", lens.size(), " values for batch ", B);
  for (int64_t l : lens) PERCH_CHECK(l >= 0 && l <= T, "sequence length ", l, " outside [0, ", T, "]");
  const auto st = strides_of(x.shape());
  const int64_t inner = st[1], esize = static_cast<int64_t>(dtype_size(x.dtype()));
  Tensor y = x.clone();
  const auto* src = static_cast<const std::byte*>(x.raw());
  auto* dst = static_cast<std::byte*>(y.raw());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < lens[b]; ++t) {
      const int64_t from = t, to = lens[b] - 1 - t;
      const int64_t so = ta == 0 ? (from * B + b) : (b * T + from), dof = ta == 0 ? (to * B + b) : (b * T + to);
      std::memcpy(dst + dof * inner * esize, src + so * inner * esize, static_cast<size_t>(inner * esize));
    }
  return {y};
}

// Unique: the distinct elements of X flattened (or, with `axis`, its distinct slices along axis), ascending
// (lexicographic for slices) when `sorted`, else in order of first occurrence; outputs Y, the index of each one's
// first occurrence, each element's (slice's) index into Y, and the counts (NumPy's np.unique).
std::vector<Tensor> unique(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const bool sorted = n.attr_int("sorted", 1) != 0;
  const bool has_axis = n.has_attr("axis");
  const int64_t axis = has_axis ? normalize_axis(n.attr_int("axis", 0), x.rank(), "axis") : 0;
  // Rows: slices along the axis (each flattened in C order with the axis removed), or single elements.
  const int64_t rows = has_axis ? x.dim(axis) : x.numel();
  const int64_t outer = has_axis ? checked_numel(Shape(x.shape().begin(), x.shape().begin() + axis)) : 1;
  const int64_t inner = has_axis ? checked_numel(Shape(x.shape().begin() + axis + 1, x.shape().end())) : 1;
  const int64_t width = outer * inner;
  return detail::visit_dtype(x.dtype(), [&](auto tag) -> std::vector<Tensor> {
    using T = typename decltype(tag)::type;
    const T* xd = x.data<T>();
    auto at = [&](int64_t r, int64_t k) { return has_axis ? xd[((k / inner) * rows + r) * inner + k % inner] : xd[r]; };
    auto less = [&](int64_t p, int64_t q) {
      for (int64_t k = 0; k < width; ++k)
        if (at(p, k) != at(q, k)) return at(p, k) < at(q, k);
      return false;
    };
    auto equal = [&](int64_t p, int64_t q) { return !less(p, q) && !less(q, p); };
    std::vector<int64_t> order(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) order[r] = r;
    std::stable_sort(order.begin(), order.end(), less);
    // groups of equal rows in sorted order; the first of each group (stable) is its first occurrence
    std::vector<int64_t> first, count, group_of(static_cast<size_t>(rows));
    for (size_t i = 0; i < order.size(); ++i) {
      if (i == 0 || !equal(order[i - 1], order[i])) first.push_back(order[i]), count.push_back(0);
      ++count.back();
      group_of[order[i]] = static_cast<int64_t>(first.size()) - 1;
    }
    std::vector<int64_t> rank(first.size());  // output position of each group
    std::vector<int64_t> by_output(first.size());
    for (size_t g = 0; g < first.size(); ++g) by_output[g] = static_cast<int64_t>(g);
    if (!sorted) std::sort(by_output.begin(), by_output.end(), [&](int64_t p, int64_t q) { return first[p] < first[q]; });
    for (size_t k = 0; k < by_output.size(); ++k) rank[by_output[k]] = static_cast<int64_t>(k);
    const int64_t u = static_cast<int64_t>(first.size());
    Shape ys = has_axis ? x.shape() : Shape{u};
    if (has_axis) ys[axis] = u;
    Tensor y = Tensor::uninitialized(x.dtype(), ys);
    T* yd = y.data<T>();
    std::vector<int64_t> indices(static_cast<size_t>(u)), counts(static_cast<size_t>(u)), inverse(static_cast<size_t>(rows));
    for (int64_t k = 0; k < u; ++k) {
      const int64_t g = by_output[k], r = first[g];
      indices[k] = r, counts[k] = count[g];
      for (int64_t e = 0; e < width; ++e) {
        if (has_axis) yd[((e / inner) * u + k) * inner + e % inner] = at(r, e);
        else yd[k] = at(r, 0);
      }
    }
    for (int64_t r = 0; r < rows; ++r) inverse[r] = rank[group_of[r]];
    return {y, Tensor::from<int64_t>({u}, indices), Tensor::from<int64_t>({rows}, inverse), Tensor::from<int64_t>({u}, counts)};
  });
}

// ---- NonMaxSuppression -------------------------------------------------------------------------------
// boxes [B, N, 4], scores [B, C, N]; optional scalars max_output_boxes_per_class (int64, default 0: none kept),
// iou_threshold (default 0), score_threshold (none when absent). Per batch and class: the boxes with score >
// score_threshold, by descending score (equal scores: lower box index first), each kept unless its IoU with a box
// already kept exceeds iou_threshold, at most max_output_boxes_per_class of them. Output selected_indices
// [K, 3] int64 rows (batch, class, box) in batch, class, selection order. center_point_box 0: [y1, x1, y2, x2]
// of any two opposite corners; 1: [x_center, y_center, width, height]. A box of zero area overlaps nothing.
std::vector<Tensor> non_max_suppression(const Node& n, const Args& a, int64_t) {
  const Tensor &boxes_t = in(n, a, 0), &scores_t = in(n, a, 1);
  PERCH_CHECK(boxes_t.rank() == 3 && boxes_t.dim(2) == 4, "boxes must be [batch, boxes, 4], got ", shape_str(boxes_t.shape()));
  PERCH_CHECK(scores_t.rank() == 3 && scores_t.dim(0) == boxes_t.dim(0) && scores_t.dim(2) == boxes_t.dim(1),
              "scores must be [", boxes_t.dim(0), ", classes, ", boxes_t.dim(1), "], got ", shape_str(scores_t.shape()));
  auto scalar = [&](size_t i, const char* what) -> const Tensor* {
    if (!has(a, i)) return nullptr;
    PERCH_CHECK(a[i]->numel() == 1, what, " must hold one value, got ", shape_str(a[i]->shape()));
    return a[i];
  };
  const Tensor* max_t = scalar(2, "max_output_boxes_per_class");
  const Tensor* iou_t = scalar(3, "iou_threshold");
  const Tensor* score_t = scalar(4, "score_threshold");
  const int64_t max_out = max_t ? max_t->to_i64_vector()[0] : 0;
  const float iou_thr = iou_t ? iou_t->to_f32().data<float>()[0] : 0.0f;
  const float score_thr = score_t ? score_t->to_f32().data<float>()[0] : 0.0f;
  PERCH_CHECK(iou_thr >= 0.0f && iou_thr <= 1.0f, "iou_threshold ", iou_thr, " is outside [0, 1]");
  const int64_t center = n.attr_int("center_point_box", 0);
  PERCH_CHECK(center == 0 || center == 1, "center_point_box must be 0 or 1, got ", center);
  const Tensor bf = boxes_t.to_f32(), sf = scores_t.to_f32();
  const int64_t B = boxes_t.dim(0), N = boxes_t.dim(1), C = scores_t.dim(1);
  // Every box as (x1, y1, x2, y2) with x1 <= x2, y1 <= y2.
  std::vector<std::array<float, 4>> corners(static_cast<size_t>(B * N));
  for (int64_t i = 0; i < B * N; ++i) {
    const float* b = bf.data<float>() + i * 4;
    if (center == 1) {
      corners[i] = {b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2};
    } else {
      corners[i] = {std::min(b[1], b[3]), std::min(b[0], b[2]), std::max(b[1], b[3]), std::max(b[0], b[2])};
    }
  }
  auto suppresses = [&](const std::array<float, 4>& p, const std::array<float, 4>& q) {
    const float iw = std::min(p[2], q[2]) - std::max(p[0], q[0]), ih = std::min(p[3], q[3]) - std::max(p[1], q[1]);
    if (iw <= 0 || ih <= 0) return false;
    // both boxes have positive width and height here (the corners are ordered), so the union is positive
    const float inter = iw * ih, ap = (p[2] - p[0]) * (p[3] - p[1]), aq = (q[2] - q[0]) * (q[3] - q[1]);
    return inter / (ap + aq - inter) > iou_thr;
  };
  std::vector<int64_t> rows;
  std::vector<int64_t> order;
  std::vector<int64_t> kept;
  for (int64_t b = 0; b < B && max_out > 0; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const float* sc = sf.data<float>() + (b * C + c) * N;
      order.clear();
      for (int64_t i = 0; i < N; ++i)
        if (!score_t || sc[i] > score_thr) order.push_back(i);
      std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) { return sc[i] > sc[j]; });
      kept.clear();
      for (int64_t i : order) {
        if (static_cast<int64_t>(kept.size()) >= max_out) break;
        bool keep = true;
        for (int64_t k : kept) keep = keep && !suppresses(corners[b * N + k], corners[b * N + i]);
        if (!keep) continue;
        kept.push_back(i);
        rows.insert(rows.end(), {b, c, i});
      }
    }
  return {Tensor::from<int64_t>({static_cast<int64_t>(rows.size() / 3), 3}, rows)};
}

}  // namespace

void register_index_ops(OpRegistry& r) {
  r.add("GatherElements", 11, gather_elements);
  r.add("ScatterElements", 11, scatter_elements);
  r.add("GatherND", 11, gather_nd);
  r.add("ScatterND", 11, scatter_nd);
  r.add("Compress", 9, compress);
  r.add("NonZero", 9, nonzero);
  r.add("OneHot", 9, one_hot);
  r.add("Trilu", 14, trilu);
  r.add("EyeLike", 9, eye_like);
  r.add("NonMaxSuppression", 10, non_max_suppression);
  r.add("ReverseSequence", 10, reverse_sequence);
  r.add("Unique", 11, unique);
  r.add("Scatter", 9, scatter_elements);  // deprecated at 11 for ScatterElements, which computes the same
}

}  // namespace perch::runtime
