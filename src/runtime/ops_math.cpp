// Math ops for the float executor beyond the basic element-wise set (ops_elementwise.cpp): float unary
// functions and activations (float32 and float64, type-preserving), Pow, comparisons and logical ops
// (bool outputs), variadic Sum/Mean, PRelu, Mod, BitShift, Det, Sign, IsNaN/IsInf, LogSoftmax and Hardmax.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using detail::Walker;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

// ---- Unary float functions ---------------------------------------------------------------------------

// make(node) reads the node's attributes once and returns f(x) -> y, evaluated in double and stored in the input's
// type (float32 or float64).
template <typename Make>
OpKernel unary_float_attr(Make make) {
  return [make](const Node& n, const Args& a, int64_t) -> std::vector<Tensor> {
    const Tensor& x = in(n, a, 0);
    const auto f = make(n);
    Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
    if (x.dtype() == DType::kFloat32) {
      const float* xd = x.data<float>();
      float* yd = y.data<float>();
      for (int64_t i = 0; i < x.numel(); ++i) yd[i] = static_cast<float>(f(static_cast<double>(xd[i])));
    } else if (x.dtype() == DType::kFloat64) {
      const double* xd = x.data<double>();
      double* yd = y.data<double>();
      for (int64_t i = 0; i < x.numel(); ++i) yd[i] = f(xd[i]);
    } else {
      PERCH_FAIL("input must be float32 or float64, got ", dtype_name(x.dtype()));
    }
    return {y};
  };
}

// The same for functions without attributes: f(x) -> y.
template <typename F>
OpKernel unary_float(F f) {
  return unary_float_attr([f](const Node&) { return f; });
}

double attr_d(const Node& n, const char* key, float dflt) { return static_cast<double>(n.attr_float(key, dflt)); }

double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

// ---- Broadcasting binary map -------------------------------------------------------------------------

template <typename R, typename A, typename B, typename F>
Tensor broadcast_map(const Node& n, const Tensor& x, const Tensor& y, DType out_type, F f) {
  const Shape ys = detail::broadcast_shape(x.shape(), y.shape(), n);
  Tensor out = Tensor::uninitialized(out_type, ys);
  const A* xd = x.data<A>();
  const B* yd = y.data<B>();
  R* od = out.data<R>();
  int64_t i = 0;
  for (Walker w(ys, {detail::broadcast_strides(x.shape(), ys), detail::broadcast_strides(y.shape(), ys)}); w.valid();
       w.next(), ++i)
    od[i] = f(xd[w.offset(0)], yd[w.offset(1)]);
  return out;
}

// ---- Pow ---------------------------------------------------------------------------------------------

// Pow(X: T, Y: T1) -> T. Computed in double and converted back (integers truncate, as numpy's astype).
std::vector<Tensor> pow_op(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const Tensor y = opset < 7 ? detail::legacy_broadcast_operand(n, x, in(n, a, 1)) : in(n, a, 1);
  return {detail::visit_dtype(x.dtype(), [&](auto xt) -> Tensor {
    using T = typename decltype(xt)::type;
    return detail::visit_dtype(y.dtype(), [&](auto yt) -> Tensor {
      using U = typename decltype(yt)::type;
      if constexpr (std::is_same_v<T, bool> || std::is_same_v<U, bool>) {
        PERCH_FAIL("bool inputs are not supported");
      } else {
        return broadcast_map<T, T, U>(n, x, y, x.dtype(), [](T b, U e) {
          const double v = std::pow(static_cast<double>(b), static_cast<double>(e));
          if constexpr (std::is_floating_point_v<T>) return static_cast<T>(v);
          else return static_cast<T>(static_cast<int64_t>(v));
        });
      }
    });
  })};
}

// ---- Comparisons and logic ---------------------------------------------------------------------------

template <typename Cmp>
std::vector<Tensor> compare(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const Tensor y = opset < 7 ? detail::legacy_broadcast_operand(n, x, in(n, a, 1)) : in(n, a, 1);
  PERCH_CHECK(x.dtype() == y.dtype(), "inputs differ in type (", dtype_name(x.dtype()), ", ", dtype_name(y.dtype()), ")");
  return {detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    return broadcast_map<bool, T, T>(n, x, y, DType::kBool, [](T l, T r) { return Cmp{}(l, r); });
  })};
}

template <typename Op>
std::vector<Tensor> logical(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const Tensor y = opset < 7 ? detail::legacy_broadcast_operand(n, x, in(n, a, 1)) : in(n, a, 1);
  PERCH_CHECK(x.dtype() == DType::kBool && y.dtype() == DType::kBool, "inputs must be bool, got ", dtype_name(x.dtype()),
              " and ", dtype_name(y.dtype()));
  return {broadcast_map<bool, bool, bool>(n, x, y, DType::kBool, [](bool l, bool r) { return Op{}(l, r); })};
}

struct Xor {
  bool operator()(bool l, bool r) const { return l != r; }
};

std::vector<Tensor> not_op(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.dtype() == DType::kBool, "input must be bool, got ", dtype_name(x.dtype()));
  Tensor y = Tensor::uninitialized(DType::kBool, x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) y.data<bool>()[i] = !x.data<bool>()[i];
  return {y};
}

// ---- Sum / Mean / PRelu / Mod / Sign / IsNaN / IsInf -------------------------------------------------

// Sum and Mean of 1..N inputs broadcast together (accumulated in double, stored in the inputs' type).
OpKernel variadic_mean(bool mean) {
  return [mean](const Node& n, const Args& a, int64_t) -> std::vector<Tensor> {
    const Tensor& first = in(n, a, 0);
    Shape ys = first.shape();
    for (size_t i = 1; i < a.size(); ++i) {
      PERCH_CHECK(in(n, a, i).dtype() == first.dtype(), "input ", i, " has type ", dtype_name(a[i]->dtype()), ", input 0 ",
                  dtype_name(first.dtype()));
      ys = detail::broadcast_shape(ys, a[i]->shape(), n);
    }
    std::vector<double> acc(static_cast<size_t>(checked_numel(ys)), 0.0);
    const auto add = [&](auto tag, const Tensor& t) {
      using T = typename decltype(tag)::type;
      const T* d = t.data<T>();
      int64_t i = 0;
      for (Walker w(ys, {detail::broadcast_strides(t.shape(), ys)}); w.valid(); w.next(), ++i)
        acc[i] += static_cast<double>(d[w.offset(0)]);
    };
    Tensor y = Tensor::uninitialized(first.dtype(), ys);
    detail::visit_dtype(first.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_floating_point_v<T>) {
        PERCH_FAIL("input must be float32 or float64, got ", dtype_name(first.dtype()));
      } else {
        for (const Tensor* t : a) add(tag, *t);
        T* yd = y.data<T>();
        const double k = mean ? static_cast<double>(a.size()) : 1.0;
        for (size_t i = 0; i < acc.size(); ++i) yd[i] = static_cast<T>(acc[i] / k);
      }
    });
    return {y};
  };
}

std::vector<Tensor> prelu(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  const Tensor slope = opset < 7 ? detail::legacy_prelu_slope(x, in(n, a, 1)) : in(n, a, 1);
  PERCH_CHECK(x.dtype() == slope.dtype(), "slope has type ", dtype_name(slope.dtype()), ", X ", dtype_name(x.dtype()));
  const Shape ys = detail::broadcast_shape(x.shape(), slope.shape(), n);
  PERCH_CHECK(ys == x.shape(), "slope ", shape_str(slope.shape()), " does not broadcast to X ", shape_str(x.shape()));
  return {detail::visit_dtype(x.dtype(), [&](auto tag) -> Tensor {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) PERCH_FAIL("bool input is not supported");
    else return broadcast_map<T, T, T>(n, x, slope, x.dtype(), [](T v, T s) { return v < T(0) ? static_cast<T>(s * v) : v; });
  })};
}

// Mod: fmod = 0 is the integer modulus with the divisor's sign (Python's %); fmod = 1 is C's fmod / %
// (the dividend's sign). Floats require fmod = 1.
std::vector<Tensor> mod(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &y = in(n, a, 1);
  PERCH_CHECK(x.dtype() == y.dtype(), "inputs differ in type (", dtype_name(x.dtype()), ", ", dtype_name(y.dtype()), ")");
  const bool fmod = n.attr_int("fmod", 0) != 0;
  return {detail::visit_dtype(x.dtype(), [&](auto tag) -> Tensor {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      PERCH_FAIL("bool inputs are not supported");
    } else if constexpr (std::is_floating_point_v<T>) {
      PERCH_CHECK(fmod, "floating-point Mod requires fmod = 1");
      return broadcast_map<T, T, T>(n, x, y, x.dtype(), [](T l, T r) { return std::fmod(l, r); });
    } else {
      return broadcast_map<T, T, T>(n, x, y, x.dtype(), [fmod](T l, T r) {
        PERCH_CHECK(r != T(0), "integer modulus by zero");
        T m = static_cast<T>(l % r);
        if (!fmod && m != 0 && ((m < 0) != (r < 0))) m = static_cast<T>(m + r);
        return m;
      });
    }
  })};
}

// BitShift (unsigned integers): x << y or x >> y elementwise with broadcasting; a shift by the type's width or
// more gives 0 (as NumPy's shifts of the same unsigned type, and ONNX Runtime, do).
std::vector<Tensor> bit_shift(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &y = in(n, a, 1);
  PERCH_CHECK(x.dtype() == y.dtype(), "inputs differ in type (", dtype_name(x.dtype()), ", ", dtype_name(y.dtype()), ")");
  const std::string dir = n.attr_string("direction", "");
  PERCH_CHECK(dir == "LEFT" || dir == "RIGHT", "direction must be LEFT or RIGHT, got '", dir, "'");
  const bool left = dir == "LEFT";
  return {detail::visit_dtype(x.dtype(), [&](auto tag) -> Tensor {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_unsigned_v<T> && !std::is_same_v<T, bool>) {
      return broadcast_map<T, T, T>(n, x, y, x.dtype(), [left](T v, T s) {
        if (s >= sizeof(T) * 8) return T(0);
        return static_cast<T>(left ? v << s : v >> s);
      });
    } else {
      PERCH_FAIL("BitShift takes unsigned integers, got ", dtype_name(x.dtype()));
    }
  })};
}

// Det: determinant of the last two (square) dims, by LU decomposition with partial pivoting in double.
std::vector<Tensor> det(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  PERCH_CHECK(x.dtype() == DType::kFloat32 || x.dtype() == DType::kFloat64, "X must be float32 or float64, got ",
              dtype_name(x.dtype()));
  PERCH_CHECK(x.rank() >= 2 && x.dim(-1) == x.dim(-2), "X must be [..., M, M], got ", shape_str(x.shape()));
  const int64_t m = x.dim(-1), count = x.numel() / std::max<int64_t>(1, m * m);
  const Tensor xd = x.to(DType::kFloat64);
  std::vector<double> out(static_cast<size_t>(count));
  std::vector<double> lu(static_cast<size_t>(m * m));
  for (int64_t b = 0; b < count; ++b) {
    std::copy_n(xd.data<double>() + b * m * m, m * m, lu.begin());
    double d = 1;
    for (int64_t c = 0; c < m && d != 0; ++c) {
      int64_t p = c;
      for (int64_t r = c + 1; r < m; ++r)
        if (std::abs(lu[r * m + c]) > std::abs(lu[p * m + c])) p = r;
      if (lu[p * m + c] == 0) {
        d = 0;
        break;
      }
      if (p != c) {
        for (int64_t k = 0; k < m; ++k) std::swap(lu[p * m + k], lu[c * m + k]);
        d = -d;
      }
      d *= lu[c * m + c];
      for (int64_t r = c + 1; r < m; ++r) {
        const double f = lu[r * m + c] / lu[c * m + c];
        for (int64_t k = c; k < m; ++k) lu[r * m + k] -= f * lu[c * m + k];
      }
    }
    out[static_cast<size_t>(b)] = d;
  }
  Tensor y = Tensor::from<double>(Shape(x.shape().begin(), x.shape().end() - 2), out);
  return {x.dtype() == DType::kFloat64 ? y : y.to(x.dtype())};
}

std::vector<Tensor> sign(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
  detail::visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      PERCH_FAIL("bool input is not supported");
    } else {
      const T* xd = x.data<T>();
      T* yd = y.data<T>();
      for (int64_t i = 0; i < x.numel(); ++i) yd[i] = static_cast<T>((xd[i] > T(0)) - (xd[i] < T(0)));
    }
  });
  return {y};
}

template <typename Pred>
OpKernel float_predicate(Pred p) {
  return [p](const Node& n, const Args& a, int64_t) -> std::vector<Tensor> {
    const Tensor& x = in(n, a, 0);
    Tensor y = Tensor::uninitialized(DType::kBool, x.shape());
    detail::visit_dtype(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_floating_point_v<T>) {
        PERCH_FAIL("input must be float32 or float64, got ", dtype_name(x.dtype()));
      } else {
        for (int64_t i = 0; i < x.numel(); ++i) y.data<bool>()[i] = p(n, static_cast<double>(x.data<T>()[i]));
      }
    });
    return {y};
  };
}

// ---- LogSoftmax / Hardmax ----------------------------------------------------------------------------

// Same axis semantics as Softmax: before opset 13 the input is coerced to 2-D at `axis` and the op runs over
// the whole second dim; from 13 on it runs along `axis` alone.
template <typename F>
OpKernel along_axis(F f) {
  return [f](const Node& n, const Args& a, int64_t opset) -> std::vector<Tensor> {
    const Tensor& x = in(n, a, 0);
    const int64_t axis = normalize_axis(n.attr_int("axis", opset < 13 ? 1 : -1), x.rank(), "axis");
    int64_t outer = 1, len = 1, inner = 1;
    for (int64_t d = 0; d < x.rank(); ++d) {
      if (d < axis) outer *= x.dim(d);
      else if (d == axis || opset < 13) len *= x.dim(d);
      else inner *= x.dim(d);
    }
    Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
    detail::visit_dtype(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_floating_point_v<T>) {
        PERCH_FAIL("input must be float32 or float64, got ", dtype_name(x.dtype()));
      } else {
        std::vector<double> buf(static_cast<size_t>(len));
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t i = 0; i < inner; ++i) {
            const T* xp = x.data<T>() + o * len * inner + i;
            T* yp = y.data<T>() + o * len * inner + i;
            for (int64_t j = 0; j < len; ++j) buf[j] = static_cast<double>(xp[j * inner]);
            f(buf);
            for (int64_t j = 0; j < len; ++j) yp[j * inner] = static_cast<T>(buf[j]);
          }
      }
    });
    return {y};
  };
}

void log_softmax_1d(std::vector<double>& v) {
  if (v.empty()) return;
  const double m = *std::max_element(v.begin(), v.end());
  double s = 0;
  for (double x : v) s += std::exp(x - m);
  const double lse = m + std::log(s);
  for (double& x : v) x -= lse;
}

void hardmax_1d(std::vector<double>& v) {
  if (v.empty()) return;
  const size_t best = static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());  // first maximum
  for (size_t j = 0; j < v.size(); ++j) v[j] = j == best ? 1.0 : 0.0;
}

}  // namespace

void register_math_ops(OpRegistry& r) {
  r.add("Erf", 9, unary_float([](double x) { return std::erf(x); }));
  r.add("Log", 1, unary_float([](double x) { return std::log(x); }));
  r.add("Floor", 1, unary_float([](double x) { return std::floor(x); }));
  r.add("Ceil", 1, unary_float([](double x) { return std::ceil(x); }));
  // Round half to even (the default floating-point rounding mode).
  r.add("Round", 11, unary_float([](double x) { return std::nearbyint(x); }));
  r.add("Sin", 7, unary_float([](double x) { return std::sin(x); }));
  r.add("Cos", 7, unary_float([](double x) { return std::cos(x); }));
  r.add("Tan", 7, unary_float([](double x) { return std::tan(x); }));
  r.add("Asin", 7, unary_float([](double x) { return std::asin(x); }));
  r.add("Acos", 7, unary_float([](double x) { return std::acos(x); }));
  r.add("Atan", 7, unary_float([](double x) { return std::atan(x); }));
  r.add("Sinh", 9, unary_float([](double x) { return std::sinh(x); }));
  r.add("Cosh", 9, unary_float([](double x) { return std::cosh(x); }));
  r.add("Asinh", 9, unary_float([](double x) { return std::asinh(x); }));
  r.add("Acosh", 9, unary_float([](double x) { return std::acosh(x); }));
  r.add("Atanh", 9, unary_float([](double x) { return std::atanh(x); }));
  r.add("Softplus", 1, unary_float([](double x) { return softplus(x); }));
  r.add("Softsign", 1, unary_float([](double x) { return x / (1.0 + std::fabs(x)); }));
  r.add("Mish", 18, unary_float([](double x) { return x * std::tanh(softplus(x)); }));
  r.add("Elu", 1, unary_float_attr([](const Node& n) {
          const double alpha = attr_d(n, "alpha", 1.0f);
          return [alpha](double x) { return x >= 0 ? x : alpha * std::expm1(x); };
        }));
  r.add("Selu", 1, unary_float_attr([](const Node& n) {
          const double alpha = attr_d(n, "alpha", 1.67326319217681884765625f), gamma = attr_d(n, "gamma", 1.05070102214813232421875f);
          return [alpha, gamma](double x) { return x > 0 ? gamma * x : gamma * alpha * std::expm1(x); };
        }));
  r.add("Celu", 12, unary_float_attr([](const Node& n) {
          const double alpha = attr_d(n, "alpha", 1.0f);
          return [alpha](double x) { return std::max(0.0, x) + std::min(0.0, alpha * std::expm1(x / alpha)); };
        }));
  r.add("ThresholdedRelu", 10, unary_float_attr([](const Node& n) {
          const double alpha = attr_d(n, "alpha", 1.0f);
          return [alpha](double x) { return x > alpha ? x : 0.0; };
        }));
  r.add("Shrink", 9, unary_float_attr([](const Node& n) {
          const double lambd = attr_d(n, "lambd", 0.5f), bias = attr_d(n, "bias", 0.0f);
          return [lambd, bias](double x) { return x < -lambd ? x + bias : x > lambd ? x - bias : 0.0; };
        }));
  r.add("Gelu", 20, unary_float_attr([](const Node& n) {
          const bool tanh_form = n.attr_string("approximate", "none") == "tanh";
          return [tanh_form](double x) {
            if (tanh_form) return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
            return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
          };
        }));
  r.add("Pow", 1, pow_op);  // 1: broadcast / axis attributes (detail::legacy_broadcast_operand)
  // Versions 1 (Equal, Less, Greater, And, Or, Xor): the `broadcast` / `axis` attributes, as Add-1.
  r.add("Equal", 1, compare<std::equal_to<>>);
  r.add("Less", 1, compare<std::less<>>);
  r.add("Greater", 1, compare<std::greater<>>);
  r.add("LessOrEqual", 12, compare<std::less_equal<>>);
  r.add("GreaterOrEqual", 12, compare<std::greater_equal<>>);
  r.add("And", 1, logical<std::logical_and<>>);
  r.add("Or", 1, logical<std::logical_or<>>);
  r.add("Xor", 1, logical<Xor>);
  r.add("Not", 1, not_op);
  r.add("Sum", 6, variadic_mean(false));
  r.add("Mean", 6, variadic_mean(true));
  r.add("PRelu", 1, prelu);  // 1, 6: one slope per channel (detail::legacy_prelu_slope)
  r.add("Mod", 10, mod);
  r.add("BitShift", 11, bit_shift);
  r.add("Det", 11, det);
  r.add("Sign", 9, sign);
  r.add("IsNaN", 9, float_predicate([](const Node&, double x) { return std::isnan(x); }));
  r.add("IsInf", 10, float_predicate([](const Node& n, double x) {
          return std::isinf(x) && ((x > 0 && n.attr_int("detect_positive", 1) != 0) || (x < 0 && n.attr_int("detect_negative", 1) != 0));
        }));
  r.add("LogSoftmax", 1, along_axis(log_softmax_1d));
  r.add("Hardmax", 1, along_axis(hardmax_1d));
}

}  // namespace perch::runtime
