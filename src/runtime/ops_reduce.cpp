// Reductions for the float executor: ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp,
// ArgMax/ArgMin, TopK, CumSum.
//
// Reduce* take `axes` as an attribute until the opset that moved it to an optional input (13 for
// ReduceSum, 18 for the others); from then on `noop_with_empty_axes` = 1 with no axes reduces nothing
// (each output element is the reduction of the single input element, e.g. ReduceSumSquare squares).
// Floating inputs accumulate in double, integer inputs in int64; the output keeps the input's type.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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

enum class Red { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kSumSquare, kLogSum, kLogSumExp };

struct ReducePlan {
  Shape out_shape;                  // with keepdims applied
  std::vector<int64_t> out_strides;  // per input dim: stride into the output, 0 on reduced dims
  int64_t count = 1;                 // input elements per output element
};

ReducePlan plan_reduce(const Shape& xs, std::vector<int64_t> axes, bool reduce_all, bool keepdims) {
  const int64_t r = static_cast<int64_t>(xs.size());
  std::vector<bool> reduced(r, reduce_all);
  for (int64_t ax : detail::normalize_axes(axes, r)) reduced[ax] = true;
  ReducePlan p;
  Shape kept(r);
  for (int64_t d = 0; d < r; ++d) {
    kept[d] = reduced[d] ? 1 : xs[d];
    if (reduced[d]) p.count *= xs[d];
    if (!reduced[d] || keepdims) p.out_shape.push_back(kept[d]);
  }
  const auto ks = strides_of(kept);
  p.out_strides.resize(r);
  for (int64_t d = 0; d < r; ++d) p.out_strides[d] = reduced[d] ? 0 : ks[d];
  return p;
}

template <typename T>
Tensor reduce_typed(Red kind, const Tensor& x, const ReducePlan& p) {
  using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
  const int64_t m = checked_numel(p.out_shape);
  Acc init = 0;
  if (kind == Red::kProd) init = 1;
  if constexpr (std::is_floating_point_v<T>) {
    if (kind == Red::kMax) init = -std::numeric_limits<double>::infinity();
    if (kind == Red::kMin) init = std::numeric_limits<double>::infinity();
  } else {
    if (kind == Red::kMax) init = static_cast<Acc>(std::numeric_limits<T>::lowest());
    if (kind == Red::kMin) init = static_cast<Acc>(std::numeric_limits<T>::max());
  }
  std::vector<Acc> acc(static_cast<size_t>(m), init);
  std::vector<double> shift;  // LogSumExp: per-output max, subtracted before exp
  const T* xd = x.data<T>();
  int64_t i = 0;
  if (kind == Red::kLogSumExp) {
    shift.assign(static_cast<size_t>(m), -std::numeric_limits<double>::infinity());
    for (Walker w(x.shape(), {p.out_strides}); w.valid(); w.next(), ++i)
      shift[w.offset(0)] = std::max(shift[w.offset(0)], static_cast<double>(xd[i]));
    for (double& s : shift)
      if (!std::isfinite(s)) s = 0;  // all -inf (or empty): log(sum(exp)) = -inf; +inf/NaN propagate unshifted
    i = 0;
  }
  for (Walker w(x.shape(), {p.out_strides}); w.valid(); w.next(), ++i) {
    const Acc v = static_cast<Acc>(xd[i]);
    Acc& s = acc[w.offset(0)];
    switch (kind) {
      case Red::kSum:
      case Red::kMean:
      case Red::kLogSum: s += v; break;
      case Red::kMax: s = (v > s || v != v) ? v : s; break;  // NaN propagates
      case Red::kMin: s = (v < s || v != v) ? v : s; break;
      case Red::kProd: s *= v; break;
      case Red::kL1: s += v < 0 ? -v : v; break;
      case Red::kL2:
      case Red::kSumSquare: s += v * v; break;
      case Red::kLogSumExp:
        if constexpr (std::is_floating_point_v<Acc>) s += std::exp(v - shift[w.offset(0)]);
        else s += static_cast<Acc>(std::exp(static_cast<double>(v) - shift[w.offset(0)]));
        break;
    }
  }
  Tensor y = Tensor::uninitialized(x.dtype(), p.out_shape);
  T* yd = y.data<T>();
  for (int64_t j = 0; j < m; ++j) {
    const Acc s = acc[j];
    double v;
    switch (kind) {
      case Red::kMean:
        if constexpr (std::is_floating_point_v<Acc>) v = s / static_cast<double>(p.count);
        else v = p.count ? static_cast<double>(s / p.count) : std::nan("");
        break;
      case Red::kL2: v = std::sqrt(static_cast<double>(s)); break;
      case Red::kLogSum: v = std::log(static_cast<double>(s)); break;
      case Red::kLogSumExp: v = shift[j] + std::log(static_cast<double>(s)); break;
      default:
        if constexpr (!std::is_floating_point_v<T>) {
          yd[j] = static_cast<T>(s);  // integer sums wrap like numpy's
          continue;
        }
        v = static_cast<double>(s);
    }
    if constexpr (std::is_floating_point_v<T>) yd[j] = static_cast<T>(v);
    else yd[j] = static_cast<T>(std::trunc(v));
  }
  return y;
}

OpKernel reducer(Red kind, int64_t axes_input_opset) {
  return [kind, axes_input_opset](const Node& n, const Args& a, int64_t opset) -> std::vector<Tensor> {
    const Tensor& x = in(n, a, 0);
    std::vector<int64_t> axes;
    bool reduce_all = true;
    if (opset >= axes_input_opset) {
      if (has(a, 1)) axes = a[1]->to_i64_vector();
      if (axes.empty() && n.attr_int("noop_with_empty_axes", 0) != 0) reduce_all = false;
    } else {
      axes = n.attr_ints("axes");
    }
    if (!axes.empty()) reduce_all = false;
    const ReducePlan p = plan_reduce(x.shape(), axes, reduce_all, n.attr_int("keepdims", 1) != 0);
    return {detail::visit_dtype(x.dtype(), [&](auto tag) -> Tensor {
      using T = typename decltype(tag)::type;
      if constexpr (std::is_same_v<T, bool>) PERCH_FAIL("bool input is not supported");
      else return reduce_typed<T>(kind, x, p);
    })};
  };
}

// ---- ArgMax / ArgMin ---------------------------------------------------------------------------------

OpKernel arg_reducer(bool is_max) {
  return [is_max](const Node& n, const Args& a, int64_t opset) -> std::vector<Tensor> {
    const Tensor& x = in(n, a, 0);
    const int64_t axis = normalize_axis(n.attr_int("axis", 0), x.rank(), "axis");
    const bool keepdims = n.attr_int("keepdims", 1) != 0;
    const bool last = opset >= 12 && n.attr_int("select_last_index", 0) != 0;
    const int64_t len = x.dim(axis);
    PERCH_CHECK(len > 0, "axis ", axis, " is empty");
    int64_t outer = 1, inner = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
    for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
    Shape ys;
    for (int64_t d = 0; d < x.rank(); ++d)
      if (d != axis) ys.push_back(x.dim(d));
      else if (keepdims) ys.push_back(1);
    Tensor y = Tensor::uninitialized(DType::kInt64, ys);
    int64_t* yd = y.data<int64_t>();
    detail::visit_dtype(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* xd = x.data<T>();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          const T* p = xd + o * len * inner + i;
          int64_t best = 0;
          for (int64_t j = 1; j < len; ++j) {
            const T v = p[j * inner], b = p[best * inner];
            const bool better = is_max ? (v > b) : (v < b);
            if (better || (last && v == b)) best = j;
          }
          yd[o * inner + i] = best;
        }
    });
    return {y};
  };
}

// ---- TopK --------------------------------------------------------------------------------------------

std::vector<Tensor> topk(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const int64_t axis = normalize_axis(n.attr_int("axis", -1), x.rank(), "axis");
  int64_t k;
  if (opset < 10) {
    k = n.attr_int("k", -1);
  } else {
    const Tensor& kt = in(n, a, 1);
    PERCH_CHECK(kt.numel() == 1, "K must have one element, got shape ", shape_str(kt.shape()));
    k = kt.to_i64_vector()[0];
  }
  const bool largest = opset < 11 || n.attr_int("largest", 1) != 0;
  const int64_t len = x.dim(axis);
  PERCH_CHECK(k >= 0 && k <= len, "k = ", k, " is outside [0, ", len, "] for axis ", axis);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  Shape ys = x.shape();
  ys[axis] = k;
  Tensor vals = Tensor::uninitialized(x.dtype(), ys), idxs = Tensor::uninitialized(DType::kInt64, ys);
  int64_t* id = idxs.data<int64_t>();
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* xd = x.data<T>();
    T* vd = vals.data<T>();
    std::vector<int64_t> order(static_cast<size_t>(len));
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        const T* p = xd + o * len * inner + i;
        std::iota(order.begin(), order.end(), 0);
        // Ties keep the lower index first (ONNX); the result is always sorted.
        std::stable_sort(order.begin(), order.end(), [&](int64_t l, int64_t r) {
          return largest ? p[l * inner] > p[r * inner] : p[l * inner] < p[r * inner];
        });
        for (int64_t j = 0; j < k; ++j) {
          const int64_t at = o * k * inner + j * inner + i;
          vd[at] = p[order[j] * inner];
          id[at] = order[j];
        }
      }
  });
  return {vals, idxs};
}

// ---- CumSum ------------------------------------------------------------------------------------------

std::vector<Tensor> cumsum(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  const int64_t axis = normalize_axis(static_cast<int64_t>(detail::scalar_value(in(n, a, 1), "axis")), x.rank(), "axis");
  const bool exclusive = n.attr_int("exclusive", 0) != 0, reverse = n.attr_int("reverse", 0) != 0;
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.dim(d);
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.dim(d);
  const int64_t len = x.dim(axis);
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      PERCH_FAIL("bool input is not supported");
    } else {
      using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
      const T* xd = x.data<T>();
      T* yd = y.data<T>();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          Acc s = 0;
          for (int64_t jj = 0; jj < len; ++jj) {
            const int64_t j = reverse ? len - 1 - jj : jj;
            const int64_t at = (o * len + j) * inner + i;
            if (exclusive) {
              yd[at] = static_cast<T>(s);
              s += xd[at];
            } else {
              s += xd[at];
              yd[at] = static_cast<T>(s);
            }
          }
        }
    }
  });
  return {y};
}

}  // namespace

void register_reduce_ops(OpRegistry& r) {
  r.add("ReduceSum", 1, reducer(Red::kSum, 13));
  r.add("ReduceMean", 1, reducer(Red::kMean, 18));
  r.add("ReduceMax", 1, reducer(Red::kMax, 18));
  r.add("ReduceMin", 1, reducer(Red::kMin, 18));
  r.add("ReduceProd", 1, reducer(Red::kProd, 18));
  r.add("ReduceL1", 1, reducer(Red::kL1, 18));
  r.add("ReduceL2", 1, reducer(Red::kL2, 18));
  r.add("ReduceSumSquare", 1, reducer(Red::kSumSquare, 18));
  r.add("ReduceLogSum", 1, reducer(Red::kLogSum, 18));
  r.add("ReduceLogSumExp", 1, reducer(Red::kLogSumExp, 18));
  r.add("ArgMax", 1, arg_reducer(true));
  r.add("ArgMin", 1, arg_reducer(false));
  r.add("TopK", 1, topk);
  r.add("CumSum", 11, cumsum);
}

}  // namespace perch::runtime
