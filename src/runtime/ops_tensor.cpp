// Data-movement and tensor-construction ops for the float executor: Cast, Slice, Pad, Expand, Tile, Split,
// ConstantOfShape, Range, Where, DepthToSpace/SpaceToDepth, Size, Dropout (inference). Every op keeps its
// input's element type (ONNX's T), copying elements byte-wise.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "ops_typed.h"
#include "perch/runtime/op_geometry.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using detail::strides_of;
using detail::Walker;
using graph::Node;
using Args = std::vector<const Tensor*>;
using detail::onnx_elem_type;

DType detail::onnx_elem_type(int64_t t) {
  switch (t) {
    case 1: return DType::kFloat32;
    case 2: return DType::kUInt8;
    case 3: return DType::kInt8;
    case 4: return DType::kUInt16;
    case 5: return DType::kInt16;
    case 6: return DType::kInt32;
    case 7: return DType::kInt64;
    case 9: return DType::kBool;
    case 11: return DType::kFloat64;
    case 8: PERCH_FAIL("cast to/from STRING is not supported");
    case 10: return DType::kFloat16;
    case 16: return DType::kBFloat16;
    case 12: PERCH_FAIL("UINT32 tensors are not supported");
    case 13: PERCH_FAIL("UINT64 tensors are not supported");
    default: PERCH_FAIL("element type ", t, " is not supported");
  }
}

namespace {

// ---- Cast --------------------------------------------------------------------------------------------


// Cast-1 names the target type as a string.
DType elem_type_from_name(const std::string& s) {
  static const std::pair<const char*, int64_t> names[] = {
      {"FLOAT", 1}, {"UINT8", 2}, {"INT8", 3}, {"UINT16", 4}, {"INT16", 5}, {"INT32", 6}, {"INT64", 7},
      {"STRING", 8}, {"BOOL", 9}, {"FLOAT16", 10}, {"DOUBLE", 11}, {"UINT32", 12}, {"UINT64", 13}};
  for (const auto& [name, v] : names)
    if (s == name) return onnx_elem_type(v);
  PERCH_FAIL("unknown element type name '", s, "'");
}

// One element: to bool = (v != 0); float to integer truncates toward zero (NaN -> 0), saturating at the
// int64 range and then wrapping to narrower types like numpy's astype does on x86; otherwise static_cast.
template <typename D, typename S>
D cast_value(S v) {
  if constexpr (std::is_same_v<D, bool>) {
    return v != S(0);
  } else if constexpr (std::is_integral_v<D> && std::is_floating_point_v<S>) {
    if (std::isnan(v)) return D(0);
    const double t = std::trunc(static_cast<double>(v));
    int64_t i;
    if (t >= 9.2233720368547758e18) i = std::numeric_limits<int64_t>::max();
    else if (t <= -9.2233720368547758e18) i = std::numeric_limits<int64_t>::min();
    else i = static_cast<int64_t>(t);
    return static_cast<D>(i);
  } else {
    return static_cast<D>(v);
  }
}

Tensor cast_tensor(const Tensor& x, DType to) {
  if (x.dtype() == to) return x;
  // float16 (a storage type, no typed kernels): from it through float32 (exact); to it from double, rounded once
  // to nearest even (every perch type converts to double exactly, but for int64 beyond 2^53, which is float16's inf).
  if (is_half_type(x.dtype())) return cast_tensor(x.to_f32(), to);
  if (is_half_type(to)) return x.to(to);
  Tensor y = Tensor::uninitialized(to, x.shape());
  detail::visit_dtype(x.dtype(), [&](auto st) {
    using S = typename decltype(st)::type;
    detail::visit_dtype(to, [&](auto dt) {
      using D = typename decltype(dt)::type;
      const S* xd = x.data<S>();
      D* yd = y.data<D>();
      for (int64_t i = 0; i < x.numel(); ++i) yd[i] = cast_value<D, S>(xd[i]);
    });
  });
  return y;
}

std::vector<Tensor> cast(const Node& n, const Args& a, int64_t opset) {
  PERCH_CHECK(n.has_attr("to"), "attribute 'to' is required");
  const DType to = opset < 6 ? elem_type_from_name(n.attr_string("to", "")) : onnx_elem_type(n.attr_int("to", 0));
  return {cast_tensor(in(n, a, 0), to)};
}

std::vector<Tensor> cast_like(const Node& n, const Args& a, int64_t) {
  return {cast_tensor(in(n, a, 0), in(n, a, 1).dtype())};
}

// ---- Slice -------------------------------------------------------------------------------------------

// Copies the elements of x at offsets base + sum_d idx[d] * strides[d] for idx over `out_shape`.
Tensor gather_strided(const Tensor& x, const Shape& out_shape, int64_t base, const std::vector<int64_t>& strides) {
  Tensor y = Tensor::uninitialized(x.dtype(), out_shape);
  const size_t es = dtype_size(x.dtype());
  const char* xd = static_cast<const char*>(x.raw());
  char* yd = static_cast<char*>(y.raw());
  int64_t i = 0;
  if (out_shape.empty()) {
    if (y.numel()) std::memcpy(yd, xd + base * es, es);
    return y;
  }
  for (Walker w(out_shape, {strides}); w.valid(); w.next(), ++i) std::memcpy(yd + i * es, xd + (base + w.offset(0)) * es, es);
  return y;
}

std::vector<Tensor> slice(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const SliceView v = slice_view(n, a, opset, x.shape());
  return {gather_strided(x, v.shape, v.base, v.strides)};
}

// ---- Pad ---------------------------------------------------------------------------------------------

template <typename T>
Tensor pad_typed(const Tensor& x, const std::vector<int64_t>& pb, const std::vector<int64_t>& pe, const std::string& mode,
                 double value) {
  const int64_t r = x.rank();
  Shape ys(r);
  for (int64_t d = 0; d < r; ++d) {
    ys[d] = x.dim(d) + pb[d] + pe[d];
    PERCH_CHECK(ys[d] >= 0, "pads make dim ", d, " negative (", x.dim(d), " + ", pb[d], " + ", pe[d], ")");
    if (mode != "constant" && ys[d] > 0)
      PERCH_CHECK(x.dim(d) > 0, mode, " padding of an empty dim ", d);
  }
  Tensor y = Tensor::uninitialized(x.dtype(), ys);
  const T cv = static_cast<T>(value);
  const auto xs = strides_of(x.shape());
  const T* xd = x.data<T>();
  T* yd = y.data<T>();
  int64_t i = 0;
  if (r == 0) {
    if (y.numel()) yd[0] = xd[0];
    return y;
  }
  for (Walker w(ys, {}); w.valid(); w.next(), ++i) {
    int64_t off = 0;
    bool outside = false;
    for (int64_t d = 0; d < r && !outside; ++d) {
      const int64_t n = x.dim(d);
      int64_t c = w.index()[d] - pb[d];
      if (c < 0 || c >= n) {
        if (mode == "constant") {
          outside = true;
        } else if (mode == "edge") {
          c = std::clamp<int64_t>(c, 0, n - 1);
        } else if (mode == "wrap") {
          c = ((c % n) + n) % n;
        } else {  // reflect (about the edge element, not repeating it), as often as needed
          if (n == 1) {
            c = 0;
          } else {
            const int64_t period = 2 * (n - 1);
            c = ((c % period) + period) % period;
            if (c >= n) c = period - c;
          }
        }
      }
      off += c * xs[d];
    }
    yd[i] = outside ? cv : xd[off];
  }
  return y;
}

std::vector<Tensor> pad(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const int64_t r = x.rank();
  const std::string mode = n.attr_string("mode", "constant");
  PERCH_CHECK(mode == "constant" || mode == "reflect" || mode == "edge" || (mode == "wrap" && opset >= 19),
              "unknown mode '", mode, "'");
  std::vector<int64_t> pads, axes;
  double value = 0;
  if (opset < 11) {
    pads = n.attr_ints(opset < 2 ? "paddings" : "pads");
    value = n.attr_float("value", 0.0f);
  } else {
    pads = in(n, a, 1).to_i64_vector();
    if (has(a, 2) && a[2]->numel() > 0) {
      PERCH_CHECK(a[2]->dtype() == x.dtype(), "constant_value must have the input's type ", dtype_name(x.dtype()));
      value = detail::scalar_value(*a[2], "constant_value");
    }
    if (opset >= 18 && has(a, 3)) axes = detail::normalize_axes(a[3]->to_i64_vector(), r);
  }
  if (axes.empty())
    for (int64_t d = 0; d < r; ++d) axes.push_back(d);
  const size_t k = axes.size();
  PERCH_CHECK(pads.size() == 2 * k, "pads has ", pads.size(), " values, expected ", 2 * k);
  std::vector<int64_t> pb(r, 0), pe(r, 0);
  for (size_t i = 0; i < k; ++i) pb[axes[i]] = pads[i], pe[axes[i]] = pads[i + k];
  return {detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return pad_typed<T>(x, pb, pe, mode, value);
  })};
}

// ---- Expand / Tile -----------------------------------------------------------------------------------

std::vector<Tensor> expand(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const Shape target = in(n, a, 1).to_i64_vector();
  const Shape ys = detail::broadcast_shape(x.shape(), target, n);
  return {gather_strided(x, ys, 0, detail::broadcast_strides(x.shape(), ys))};
}

std::vector<Tensor> tile(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const auto reps = in(n, a, 1).to_i64_vector();
  const int64_t r = x.rank();
  PERCH_CHECK(static_cast<int64_t>(reps.size()) == r, "repeats has ", reps.size(), " values for rank ", r);
  // The output, read row-major, is the walk over [rep0, d0, rep1, d1, ...] with strides [0, s0, 0, s1, ...].
  const auto xs = strides_of(x.shape());
  Shape walk, ys;
  std::vector<int64_t> st;
  for (int64_t d = 0; d < r; ++d) {
    PERCH_CHECK(reps[d] >= 0, "negative repeat ", reps[d], " for axis ", d);
    walk.push_back(reps[d]), st.push_back(0);
    walk.push_back(x.dim(d)), st.push_back(xs[d]);
    ys.push_back(reps[d] * x.dim(d));
  }
  return {gather_strided(x, walk, 0, st).reshaped(ys)};
}

// ---- Split -------------------------------------------------------------------------------------------

std::vector<Tensor> split(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const int64_t axis = normalize_axis(n.attr_int("axis", 0), x.rank(), "axis");
  const int64_t dim = x.dim(axis);
  const size_t outs = n.outputs.size();
  PERCH_CHECK(outs > 0, "no outputs");
  std::vector<int64_t> sizes;
  if (opset >= 13 || (opset < 2 && has(a, 1))) {
    if (has(a, 1)) sizes = a[1]->to_i64_vector();
  } else {
    sizes = n.attr_ints("split");
  }
  if (sizes.empty()) {
    if (opset >= 18 && n.has_attr("num_outputs")) {
      const int64_t k = n.attr_int("num_outputs", 0);
      PERCH_CHECK(k > 0 && static_cast<size_t>(k) == outs, "num_outputs ", k, " differs from the node's ", outs, " outputs");
      const int64_t chunk = (dim + k - 1) / k;
      for (int64_t i = 0; i < k; ++i) sizes.push_back(std::clamp<int64_t>(dim - i * chunk, 0, chunk));
    } else {
      PERCH_CHECK(dim % static_cast<int64_t>(outs) == 0, "axis ", axis, " of size ", dim, " does not split into ", outs,
                  " equal parts");
      sizes.assign(outs, dim / static_cast<int64_t>(outs));
    }
  }
  PERCH_CHECK(sizes.size() == outs, "split has ", sizes.size(), " sizes for ", outs, " outputs");
  int64_t total = 0;
  for (int64_t s : sizes) {
    PERCH_CHECK(s >= 0, "negative split size ", s);
    total += s;
  }
  PERCH_CHECK(total == dim, "split sizes sum to ", total, ", axis ", axis, " has ", dim);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const size_t es = dtype_size(x.dtype());
  std::vector<Tensor> out;
  int64_t begin = 0;
  for (int64_t s : sizes) {
    Shape ys = x.shape();
    ys[axis] = s;
    Tensor y = Tensor::uninitialized(x.dtype(), ys);
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(static_cast<char*>(y.raw()) + o * s * inner * es,
                  static_cast<const char*>(x.raw()) + (o * dim + begin) * inner * es, s * inner * es);
    begin += s;
    out.push_back(std::move(y));
  }
  return out;
}

// ---- ConstantOfShape / Range / Size ------------------------------------------------------------------

std::vector<Tensor> constant_of_shape(const Node& n, const Args& a, int64_t) {
  const Shape shape = in(n, a, 0).to_i64_vector();
  for (int64_t d : shape) PERCH_CHECK(d >= 0, "negative dim ", d, " in shape ", shape_str(shape));
  Tensor value = Tensor::scalar_f32(0.0f);
  if (const Tensor* v = n.attr_tensor("value")) {
    PERCH_CHECK(v->numel() == 1, "attribute 'value' must have one element, got shape ", shape_str(v->shape()));
    value = *v;
  }
  Tensor y = Tensor::uninitialized(value.dtype(), shape);
  const size_t es = dtype_size(value.dtype());
  for (int64_t i = 0; i < y.numel(); ++i) std::memcpy(static_cast<char*>(y.raw()) + i * es, value.raw(), es);
  return {y};
}

std::vector<Tensor> range(const Node& n, const Args& a, int64_t) {
  const Tensor &s = in(n, a, 0), &l = in(n, a, 1), &d = in(n, a, 2);
  PERCH_CHECK(s.dtype() == l.dtype() && s.dtype() == d.dtype(), "start, limit and delta must have one type");
  return {detail::visit_dtype(s.dtype(), [&](auto tag) -> Tensor {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      PERCH_FAIL("bool Range is not defined");
    } else {
      PERCH_CHECK(s.numel() == 1 && l.numel() == 1 && d.numel() == 1, "start, limit and delta must be scalars");
      const T start = s.data<T>()[0], limit = l.data<T>()[0], delta = d.data<T>()[0];
      PERCH_CHECK(delta != T(0), "delta is 0");
      const double count = std::ceil((static_cast<double>(limit) - static_cast<double>(start)) / static_cast<double>(delta));
      const int64_t num = std::max<int64_t>(0, static_cast<int64_t>(count));
      Tensor y = Tensor::uninitialized(s.dtype(), {num});
      T* yd = y.data<T>();
      for (int64_t i = 0; i < num; ++i) yd[i] = static_cast<T>(start + static_cast<T>(i) * delta);
      return y;
    }
  })};
}

std::vector<Tensor> size_op(const Node& n, const Args& a, int64_t) {
  return {Tensor::from<int64_t>({}, std::vector<int64_t>{in(n, a, 0).numel()})};
}

// Inference Dropout: identity, with an all-true mask when asked for. Training mode (random) is refused.
std::vector<Tensor> dropout(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  bool training = false;
  double ratio = n.attr_float("ratio", 0.5f);
  if (opset >= 12) {
    if (has(a, 1)) ratio = detail::scalar_value(*a[1], "ratio");
    if (has(a, 2)) training = detail::scalar_value(*a[2], "training_mode") != 0;
  } else if (opset < 7) {
    training = n.attr_int("is_test", 0) == 0;
  }
  PERCH_CHECK(!training || ratio == 0, "training-mode Dropout (random masks) is not supported by the inference executor");
  std::vector<Tensor> out{x};
  if (n.outputs.size() > 1) {
    Tensor mask(DType::kBool, x.shape());
    std::fill_n(mask.data<bool>(), mask.numel(), true);
    out.push_back(opset < 10 ? cast_tensor(mask, x.dtype()) : mask);
  }
  return out;
}

// ---- Where -------------------------------------------------------------------------------------------

std::vector<Tensor> where(const Node& n, const Args& a, int64_t) {
  const Tensor &c = in(n, a, 0), &x = in(n, a, 1), &y = in(n, a, 2);
  PERCH_CHECK(c.dtype() == DType::kBool, "condition must be bool, got ", dtype_name(c.dtype()));
  PERCH_CHECK(x.dtype() == y.dtype(), "X and Y differ in type (", dtype_name(x.dtype()), ", ", dtype_name(y.dtype()), ")");
  const Shape ys = detail::broadcast_shape(detail::broadcast_shape(c.shape(), x.shape(), n), y.shape(), n);
  Tensor out = Tensor::uninitialized(x.dtype(), ys);
  const size_t es = dtype_size(x.dtype());
  const bool* cd = c.data<bool>();
  const char* xd = static_cast<const char*>(x.raw());
  const char* yd = static_cast<const char*>(y.raw());
  char* od = static_cast<char*>(out.raw());
  if (ys.empty()) {
    std::memcpy(od, cd[0] ? xd : yd, es);
    return {out};
  }
  int64_t i = 0;
  for (Walker w(ys, {detail::broadcast_strides(c.shape(), ys), detail::broadcast_strides(x.shape(), ys),
                     detail::broadcast_strides(y.shape(), ys)});
       w.valid(); w.next(), ++i)
    std::memcpy(od + i * es, cd[w.offset(0)] ? xd + w.offset(1) * es : yd + w.offset(2) * es, es);
  return {out};
}

// ---- DepthToSpace / SpaceToDepth ---------------------------------------------------------------------

// x viewed as `view` (same element count), transposed by `perm`, made contiguous.
Tensor permuted(const Tensor& x, const Shape& view, const std::vector<int64_t>& perm) {
  const auto vs = strides_of(view);
  Shape ys;
  std::vector<int64_t> st;
  for (int64_t p : perm) ys.push_back(view[p]), st.push_back(vs[p]);
  return gather_strided(x, ys, 0, st);
}

std::vector<Tensor> depth_to_space(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.rank() == 4, "input must be 4-D [N, C, H, W], got ", shape_str(x.shape()));
  const int64_t b = n.attr_int("blocksize", 0);
  PERCH_CHECK(b > 0, "blocksize must be positive");
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  PERCH_CHECK(C % (b * b) == 0, "channels ", C, " are not divisible by blocksize^2 = ", b * b);
  const std::string mode = opset >= 11 ? n.attr_string("mode", "DCR") : "DCR";
  Tensor y;
  if (mode == "DCR") y = permuted(x, {N, b, b, C / (b * b), H, W}, {0, 3, 4, 1, 5, 2});
  else if (mode == "CRD") y = permuted(x, {N, C / (b * b), b, b, H, W}, {0, 1, 4, 2, 5, 3});
  else PERCH_FAIL("unknown mode '", mode, "'");
  return {y.reshaped({N, C / (b * b), H * b, W * b})};
}

std::vector<Tensor> space_to_depth(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.rank() == 4, "input must be 4-D [N, C, H, W], got ", shape_str(x.shape()));
  const int64_t b = n.attr_int("blocksize", 0);
  PERCH_CHECK(b > 0, "blocksize must be positive");
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  PERCH_CHECK(H % b == 0 && W % b == 0, "spatial dims ", H, "x", W, " are not divisible by blocksize ", b);
  Tensor y = permuted(x, {N, C, H / b, b, W / b, b}, {0, 3, 5, 1, 2, 4});
  return {y.reshaped({N, C * b * b, H / b, W / b})};
}

}  // namespace

void register_tensor_ops(OpRegistry& r) {
  r.add("Cast", 1, cast);
  r.add("CastLike", 15, cast_like);
  r.add("Slice", 1, slice);
  r.add("Pad", 1, pad);
  r.add("Expand", 8, expand);
  r.add("Tile", 6, tile);
  r.add("Split", 1, split);
  r.add("ConstantOfShape", 9, constant_of_shape);
  r.add("Range", 11, range);
  r.add("Size", 1, size_op);
  r.add("Dropout", 1, dropout);
  r.add("Where", 9, where);
  r.add("DepthToSpace", 1, depth_to_space);
  r.add("SpaceToDepth", 1, space_to_depth);
}

void register_reduce_ops(OpRegistry& r);
void register_math_ops(OpRegistry& r);
void register_resize_ops(OpRegistry& r);
void register_norm_ops(OpRegistry& r);
void register_index_ops(OpRegistry& r);
void register_rnn_ops(OpRegistry& r);
void register_einsum_ops(OpRegistry& r);
void register_sampling_ops(OpRegistry& r);
void register_signal_ops(OpRegistry& r);
void register_loss_ops(OpRegistry& r);
void register_control_ops(OpRegistry& r);

// Everything added for real-world model coverage (called from register_builtin_ops).
void register_coverage_ops(OpRegistry& r) {
  register_tensor_ops(r);
  register_reduce_ops(r);
  register_math_ops(r);
  register_resize_ops(r);
  register_norm_ops(r);
  register_index_ops(r);
  register_rnn_ops(r);
  register_einsum_ops(r);
  register_sampling_ops(r);
  register_signal_ops(r);
  register_loss_ops(r);
  register_control_ops(r);
}

}  // namespace perch::runtime
