// NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (opsets 12/13) for the float executor — the losses of
// training graphs exported with their model. Computed in double, stored in the input's type.
//
// NegativeLogLikelihoodLoss: input [N, C] or [N, C, d1, …], target [N] or [N, d1, …] (integers), optional weight [C]:
//   loss[n, d…] = −input[n, target[n, d…], d…] · w[target[n, d…]]   (w = 1 without weight),
//   0 where target equals ignore_index (which then has no weight). reduction "none" returns that tensor, "sum" its
//   sum, "mean" (the default) its sum over the sum of the weights of the targets not ignored (their count without
//   weight; 0 / 0 is NaN, as in the ONNX reference).
// SoftmaxCrossEntropyLoss: log_prob = log_softmax(scores, axis 1) (max-subtracted), the loss is the NLL of log_prob;
//   the optional second output is log_prob.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::check_float;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

// The NLL of `x` ([N, C, rest…] as double) — shapes checked against `target`.
Tensor nll(const Node& n, const std::vector<double>& x, const Shape& xs, const Tensor& target, const Tensor* weight,
           DType out_type) {
  PERCH_CHECK(xs.size() >= 2, "input must be [N, C, ...], got ", shape_str(xs));
  const int64_t N = xs[0], C = xs[1], rest = checked_numel(Shape(xs.begin() + 2, xs.end()));
  Shape ts = {N};
  ts.insert(ts.end(), xs.begin() + 2, xs.end());
  PERCH_CHECK(target.shape() == ts, "target must be ", shape_str(ts), ", got ", shape_str(target.shape()));
  std::vector<double> w;
  if (weight) {
    PERCH_CHECK(weight->numel() == C, "weight must have ", C, " values, got ", shape_str(weight->shape()));
    const Tensor wd = weight->to(DType::kFloat64);
    w.assign(wd.data<double>(), wd.data<double>() + C);
  }
  const std::string reduction = n.attr_string("reduction", "mean");
  PERCH_CHECK(reduction == "none" || reduction == "sum" || reduction == "mean", "reduction '", reduction,
              "' is not none, sum or mean");
  const bool has_ignore = n.has_attr("ignore_index");
  const int64_t ignore = n.attr_int("ignore_index", 0);
  const auto t = target.to_i64_vector();
  std::vector<double> loss(t.size());
  double total = 0, weights = 0;
  for (int64_t b = 0; b < N; ++b)
    for (int64_t j = 0; j < rest; ++j) {
      const size_t at = static_cast<size_t>(b * rest + j);
      const int64_t c = t[at];
      if (has_ignore && c == ignore) {
        loss[at] = 0;
        continue;
      }
      PERCH_CHECK(c >= 0 && c < C, "target ", c, " is outside [0, ", C, ")", has_ignore ? " and not ignore_index" : "");
      const double wc = weight ? w[static_cast<size_t>(c)] : 1.0;
      loss[at] = -x[static_cast<size_t>((b * C + c) * rest + j)] * wc;
      total += loss[at], weights += wc;
    }
  if (reduction == "none") return Tensor::from<double>(ts, loss).to(out_type);
  const double v = reduction == "sum" ? total : total / weights;
  return Tensor::from<double>({}, {v}).to(out_type);
}

std::vector<Tensor> nll_loss(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_float(x, "input");
  const Tensor xd = x.to(DType::kFloat64);
  return {nll(n, std::vector<double>(xd.data<double>(), xd.data<double>() + xd.numel()), x.shape(), in(n, a, 1),
              has(a, 2) ? a[2] : nullptr, x.dtype())};
}

std::vector<Tensor> softmax_cross_entropy(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_float(x, "scores");
  PERCH_CHECK(x.rank() >= 2, "scores must be [N, C, ...], got ", shape_str(x.shape()));
  const int64_t N = x.dim(0), C = x.dim(1), rest = x.numel() / std::max<int64_t>(1, N * C);
  const Tensor xd = x.to(DType::kFloat64);
  const double* s = xd.data<double>();
  std::vector<double> lp(static_cast<size_t>(x.numel()));
  for (int64_t b = 0; b < N; ++b)
    for (int64_t j = 0; j < rest; ++j) {
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, s[(b * C + c) * rest + j]);
      double sum = 0;
      for (int64_t c = 0; c < C; ++c) sum += std::exp(s[(b * C + c) * rest + j] - m);
      const double lse = m + std::log(sum);
      for (int64_t c = 0; c < C; ++c) lp[static_cast<size_t>((b * C + c) * rest + j)] = s[(b * C + c) * rest + j] - lse;
    }
  Tensor loss = nll(n, lp, x.shape(), in(n, a, 1), has(a, 2) ? a[2] : nullptr, x.dtype());
  return {loss, Tensor::from<double>(x.shape(), lp).to(x.dtype())};
}

}  // namespace

void register_loss_ops(OpRegistry& r) {
  r.add("NegativeLogLikelihoodLoss", 12, nll_loss);
  r.add("SoftmaxCrossEntropyLoss", 12, softmax_cross_entropy);
}

}  // namespace perch::runtime
