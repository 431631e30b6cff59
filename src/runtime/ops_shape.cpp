// Shape-manipulating and data-movement ops for the float executor (dtype-preserving where ONNX says so).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops_common.h"
#include "perch/kernels/softmax_f32.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

std::vector<Tensor> identity(const Node& n, const Args& a, int64_t) { return {in(n, a, 0)}; }

std::vector<Tensor> constant(const Node& n, const Args&, int64_t) {
  if (const Tensor* t = n.attr_tensor("value")) return {*t};
  if (n.has_attr("value_float")) return {Tensor::scalar_f32(n.attr_float("value_float", 0))};
  if (n.has_attr("value_floats")) {
    auto v = n.attr_floats("value_floats");
    return {Tensor::from<float>({static_cast<int64_t>(v.size())}, v)};
  }
  if (n.has_attr("value_int")) {
    std::vector<int64_t> v{n.attr_int("value_int", 0)};
    return {Tensor::from<int64_t>({}, v)};
  }
  if (n.has_attr("value_ints")) {
    auto v = n.attr_ints("value_ints");
    return {Tensor::from<int64_t>({static_cast<int64_t>(v.size())}, v)};
  }
  PERCH_FAIL(n.describe(), ": Constant without a supported value attribute (sparse_value/strings are not supported)");
}

std::vector<Tensor> flatten(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  int64_t axis = n.attr_int("axis", 1);
  if (axis < 0) axis += x.rank();
  PERCH_CHECK(axis >= 0 && axis <= x.rank(), n.describe(), ": axis out of range for rank ", x.rank());
  int64_t outer = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.dim(i);
  return {x.reshaped({outer, outer ? x.numel() / outer : 0})};
}

std::vector<Tensor> reshape(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  std::vector<int64_t> shape = opset < 5 ? n.attr_ints("shape") : in(n, a, 1).to_i64_vector();
  const bool allowzero = n.attr_int("allowzero", 0) != 0;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0 && !allowzero) {
      PERCH_CHECK(static_cast<int64_t>(i) < x.rank(), n.describe(), ": 0 in shape at position ", i, " beyond input rank");
      shape[i] = x.dim(static_cast<int64_t>(i));
    }
    if (shape[i] == -1) {
      PERCH_CHECK(infer < 0, n.describe(), ": more than one -1 in target shape");
      infer = static_cast<int64_t>(i);
    } else {
      PERCH_CHECK(shape[i] >= 0, n.describe(), ": invalid target dim ", shape[i]);
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    PERCH_CHECK(known > 0 && x.numel() % known == 0, n.describe(), ": cannot infer -1 reshaping ", shape_str(x.shape()),
                " to ", shape_str(shape));
    shape[infer] = x.numel() / known;
  }
  PERCH_CHECK(checked_numel(shape) == x.numel(), n.describe(), ": cannot reshape ", shape_str(x.shape()), " to ",
              shape_str(shape));
  return {x.reshaped(shape)};
}

std::vector<Tensor> concat(const Node& n, const Args& a, int64_t opset) {
  const Tensor& first = in(n, a, 0);
  // Concat-1 defaults `axis` to 1; from 4 on it is required.
  PERCH_CHECK(opset < 4 || n.has_attr("axis"), n.describe(), ": Concat needs an axis attribute from opset 4 on");
  const int64_t axis = normalize_axis(n.attr_int("axis", 1), first.rank(), n.describe());
  Shape ys = first.shape();
  ys[axis] = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const Tensor& t = in(n, a, i);
    PERCH_CHECK(t.dtype() == first.dtype() && t.rank() == first.rank(), n.describe(), ": input ", i, " type/rank differs");
    for (int64_t d = 0; d < t.rank(); ++d)
      PERCH_CHECK(d == axis || t.dim(d) == first.dim(d), n.describe(), ": input ", i, " shape ", shape_str(t.shape()),
                  " differs from ", shape_str(first.shape()), " off the concat axis");
    ys[axis] += t.dim(axis);
  }
  Tensor y(first.dtype(), ys);
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= ys[d];
  const size_t es = dtype_size(first.dtype());
  const int64_t inner_y = y.numel() / std::max<int64_t>(outer, 1);
  int64_t offset = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const Tensor& t = *a[i];
    const int64_t chunk = t.numel() / std::max<int64_t>(outer, 1);
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(static_cast<char*>(y.raw()) + (o * inner_y + offset) * es,
                  static_cast<const char*>(t.raw()) + o * chunk * es, chunk * es);
    offset += chunk;
  }
  return {y};
}

std::vector<Tensor> softmax(const Node& n, const Args& a, int64_t opset) {
  const Tensor x = in(n, a, 0).to_f32();
  Tensor y = Tensor::uninitialized(DType::kFloat32, x.shape());
  const int64_t axis = normalize_axis(n.attr_int("axis", opset < 13 ? 1 : -1), x.rank(), n.describe());
  // Before opset 13 the input is coerced to 2-D [prod(dims < axis), prod(dims >= axis)] and softmax runs
  // over the whole second dim; from 13 on it runs along `axis` alone.
  int64_t outer = 1, len = 1, inner = 1;
  for (int64_t d = 0; d < x.rank(); ++d) {
    if (d < axis) outer *= x.dim(d);
    else if (d == axis || opset < 13) len *= x.dim(d);
    else inner *= x.dim(d);
  }
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  if (inner == 1) {  // rows along the last axis (every pre-13 Softmax, and axis = -1): the kernel
    kernels::softmax_rows_f32(xd, outer, len, yd);
    return {y};
  }
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const float* xp = xd + o * len * inner + i;
      float* yp = yd + o * len * inner + i;
      float m = -INFINITY;
      for (int64_t j = 0; j < len; ++j) m = std::max(m, xp[j * inner]);
      double s = 0;
      for (int64_t j = 0; j < len; ++j) s += (yp[j * inner] = std::exp(xp[j * inner] - m));
      for (int64_t j = 0; j < len; ++j) yp[j * inner] = static_cast<float>(yp[j * inner] / s);
    }
  return {y};
}

std::vector<Tensor> transpose(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const int64_t r = x.rank();
  std::vector<int64_t> perm(r);
  for (int64_t i = 0; i < r; ++i) perm[i] = r - 1 - i;
  perm = n.attr_ints("perm", perm);
  PERCH_CHECK(static_cast<int64_t>(perm.size()) == r, n.describe(), ": perm has ", perm.size(), " entries for rank ", r);
  Shape ys(r);
  std::vector<int64_t> in_strides(r, 1);
  for (int64_t d = r - 2; d >= 0; --d) in_strides[d] = in_strides[d + 1] * x.dim(d + 1);
  std::vector<int64_t> st(r);
  for (int64_t i = 0; i < r; ++i) {
    PERCH_CHECK(perm[i] >= 0 && perm[i] < r, n.describe(), ": bad perm entry ", perm[i]);
    ys[i] = x.dim(perm[i]);
    st[i] = in_strides[perm[i]];
  }
  Tensor y(x.dtype(), ys);
  const size_t es = dtype_size(x.dtype());
  const char* xd = static_cast<const char*>(x.raw());
  char* yd = static_cast<char*>(y.raw());
  std::vector<int64_t> idx(r, 0);
  for (int64_t i = 0; i < y.numel(); ++i) {
    int64_t off = 0;
    for (int64_t d = 0; d < r; ++d) off += idx[d] * st[d];
    std::memcpy(yd + i * es, xd + off * es, es);
    for (int64_t d = r - 1; d >= 0; --d) {
      if (++idx[d] < ys[d]) break;
      idx[d] = 0;
    }
  }
  return {y};
}

std::vector<int64_t> axes_of(const Node& n, const Args& a, int64_t opset) {
  if (opset < 13) return n.attr_ints("axes");
  return has(a, 1) ? a[1]->to_i64_vector() : std::vector<int64_t>{};
}

std::vector<Tensor> squeeze(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  auto axes = axes_of(n, a, opset);
  for (auto& ax : axes) ax = normalize_axis(ax, x.rank(), n.describe());
  Shape ys;
  for (int64_t d = 0; d < x.rank(); ++d) {
    const bool listed = std::find(axes.begin(), axes.end(), d) != axes.end();
    if (listed) PERCH_CHECK(x.dim(d) == 1, n.describe(), ": cannot squeeze dim ", d, " of size ", x.dim(d));
    if (listed || (axes.empty() && x.dim(d) == 1)) continue;
    ys.push_back(x.dim(d));
  }
  return {x.reshaped(ys)};
}

std::vector<Tensor> unsqueeze(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  auto axes = axes_of(n, a, opset);
  const int64_t r = x.rank() + static_cast<int64_t>(axes.size());
  for (auto& ax : axes) ax = normalize_axis(ax, r, n.describe());
  Shape ys;
  int64_t k = 0;
  for (int64_t d = 0; d < r; ++d)
    ys.push_back(std::find(axes.begin(), axes.end(), d) != axes.end() ? 1 : x.dim(k++));
  return {x.reshaped(ys)};
}

std::vector<Tensor> shape_op(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const int64_t r = x.rank();
  int64_t start = n.attr_int("start", 0), end = n.attr_int("end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, start, r);
  std::vector<int64_t> v(x.shape().begin() + start, x.shape().begin() + end);
  return {Tensor::from<int64_t>({static_cast<int64_t>(v.size())}, v)};
}

std::vector<Tensor> gather(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const auto idx = in(n, a, 1).to_i64_vector();
  const Shape is = in(n, a, 1).shape();
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), x.rank(), n.describe());
  Shape ys(x.shape().begin(), x.shape().begin() + axis);
  ys.insert(ys.end(), is.begin(), is.end());
  ys.insert(ys.end(), x.shape().begin() + axis + 1, x.shape().end());
  Tensor y(x.dtype(), ys);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const int64_t dim = x.dim(axis);
  const size_t es = dtype_size(x.dtype());
  for (int64_t o = 0; o < outer; ++o)
    for (size_t k = 0; k < idx.size(); ++k) {
      int64_t j = idx[k] < 0 ? idx[k] + dim : idx[k];
      PERCH_CHECK(j >= 0 && j < dim, n.describe(), ": index ", idx[k], " out of range [", -dim, ", ", dim, ")");
      std::memcpy(static_cast<char*>(y.raw()) + ((o * idx.size() + k) * inner) * es,
                  static_cast<const char*>(x.raw()) + ((o * dim + j) * inner) * es, inner * es);
    }
  return {y};
}

}  // namespace

void register_shape_ops(OpRegistry& r) {
  r.add("Identity", 1, identity);
  r.add("Constant", 1, constant);
  r.add("Flatten", 1, flatten);
  r.add("Reshape", 1, reshape);
  r.add("Concat", 1, concat);
  r.add("Softmax", 1, softmax);
  r.add("Transpose", 1, transpose);
  r.add("Squeeze", 1, squeeze);
  r.add("Unsqueeze", 1, unsqueeze);
  r.add("Shape", 1, shape_op);
  r.add("Gather", 1, gather);
}

}  // namespace perch::runtime
