// Activation ranges refined by the output error (perch/ptq/range_search.h has the method).
#include "perch/ptq/range_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <set>

#include "model_diff.h"
#include "perch/core/progress.h"
#include "perch/ptq/sensitivity.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {
namespace {

using graph::Model;

// The error of a model's output against the float model's, per batch of images; sums and counts so that
// batches combine into one mean.
class OutputError {
 public:
  OutputError(const std::string& out_name, const std::vector<Tensor>& refs, int64_t class_axis) {
    PERCH_CHECK(!refs.empty(), "range search: no images");
    const Shape& sh = refs[0].shape();
    Fidelity f;
    f.class_axis = class_axis;
    axis_ = class_axis_of(f, out_name, sh);
    k_ = sh[static_cast<size_t>(axis_)];
    kl_ = k_ > 1;
    if (!kl_) {
      refs_ = refs;
      return;
    }
    // Already a distribution along the axis (a softmax output)? Then its log is taken as it is.
    bool probabilities = true;
    for (const Tensor& r : refs) {
      for_rows(r, [&](const float* d, int64_t stride) {
        double sum = 0;
        for (int64_t c = 0; c < k_; ++c) {
          probabilities &= d[c * stride] >= 0;
          sum += d[c * stride];
        }
        probabilities &= std::fabs(sum - 1.0) <= 1e-3;
      });
    }
    probabilities_ = probabilities;
    for (const Tensor& r : refs) {
      Tensor p;
      log_refs_.push_back(log_rows(r, &p));
      refs_.push_back(std::move(p));
    }
  }
  const char* name() const { return kl_ ? "kl" : "relative-mse"; }

  struct Sum {
    double num = 0, den = 0;
    void operator+=(const Sum& o) {
      num += o.num;
      den += o.den;
    }
    double value() const { return den > 0 ? num / den : 0; }
  };

  // Batch `b`'s contribution for output `y`.
  Sum operator()(size_t b, const Tensor& y) const {
    const Tensor& ref = refs_.at(b);
    PERCH_CHECK(y.shape() == ref.shape() && y.dtype() == DType::kFloat32, "range search: a candidate's output has shape ",
                shape_str(y.shape()), ", the float model's ", shape_str(ref.shape()));
    Sum s;
    if (!kl_) {
      const float* yd = y.data<float>();
      const float* rd = ref.data<float>();
      for (int64_t i = 0; i < y.numel(); ++i) {
        const double e = static_cast<double>(yd[i]) - rd[i];
        s.num += e * e;
        s.den += static_cast<double>(rd[i]) * rd[i];
      }
      return s;
    }
    const Tensor lpy = log_rows(y);
    const float* p = refs_[b].data<float>();
    const float* lp = log_refs_[b].data<float>();
    const float* lq = lpy.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i)
      if (p[i] > 0) s.num += static_cast<double>(p[i]) * (static_cast<double>(lp[i]) - lq[i]);
    s.den = static_cast<double>(y.numel() / k_);
    return s;
  }

 private:
  int64_t axis_ = 1, k_ = 1;
  bool kl_ = false, probabilities_ = false;
  std::vector<Tensor> refs_, log_refs_;

  // Calls fn(first element, stride between classes) for every position of `t` (axes other than the class axis).
  template <typename T, typename Fn>
  void for_rows_impl(T* d, const Shape& sh, Fn&& fn) const {
    int64_t outer = 1, inner = 1;
    for (int64_t a = 0; a < axis_; ++a) outer *= sh[static_cast<size_t>(a)];
    for (size_t a = static_cast<size_t>(axis_) + 1; a < sh.size(); ++a) inner *= sh[a];
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) fn(d + o * k_ * inner + i, inner);
  }
  template <typename Fn>
  void for_rows(const Tensor& t, Fn&& fn) const {
    for_rows_impl(t.data<float>(), t.shape(), fn);
  }
  // The log of each row's distribution (a softmax unless the float outputs are distributions), floored at log 1e-30
  // (the floor taken in double); with `p`, also the distribution itself.
  Tensor log_rows(const Tensor& y, Tensor* p = nullptr) const {
    Tensor lp = y.clone();
    if (p) *p = y.clone();
    float* ld = lp.data<float>();
    float* pd = p ? p->data<float>() : nullptr;
    for_rows_impl(ld, lp.shape(), [&](float* lrow, int64_t stride) {
      if (probabilities_) {  // *p is y already
        for (int64_t c = 0; c < k_; ++c)
          lrow[c * stride] = static_cast<float>(std::log(std::max<double>(lrow[c * stride], 1e-30)));
        return;
      }
      float* prow = pd ? pd + (lrow - ld) : nullptr;
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t c = 0; c < k_; ++c) mx = std::max<double>(mx, lrow[c * stride]);
      for (int64_t c = 0; c < k_; ++c) sum += std::exp(lrow[c * stride] - mx);
      const double lse = mx + std::log(sum);
      for (int64_t c = 0; c < k_; ++c) {
        const double l = lrow[c * stride] - lse;
        if (prow) prow[c * stride] = static_cast<float>(std::exp(l));
        lrow[c * stride] = static_cast<float>(std::max(l, std::log(1e-30)));
      }
    });
    return lp;
  }
};

Model build_quietly(const Calibration& cal, const PtqOptions& opt) {
  const ScopedQuiet hush;  // the build's notes come once, from the caller's final build
  return build_quantized(cal, opt).model;
}

std::pair<float, float> grid_span(const quant::QuantParams& p) {
  const float s = p.scale.at(0);
  const int32_t zp = p.zero_point.at(0);
  return {s * static_cast<float>(p.spec.qmin() - zp), s * static_cast<float>(p.spec.qmax() - zp)};
}

}  // namespace

RangeSearchReport search_activation_ranges(Calibration& cal, const Dataset& data, const PtqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const RangeSearchOptions& rs = opt.range_search;
  PERCH_CHECK(rs.sweeps >= 1, "range search: sweeps must be at least 1");
  PERCH_CHECK(!rs.factors.empty(), "range search: no candidate factors");
  for (double f : rs.factors)
    PERCH_CHECK(std::isfinite(f) && f > 0 && f != 1, "range search: factor ", f, " (positive, not 1)");
  PERCH_CHECK(data.size() > 0, "range search: no images in ", data.name);
  RangeSearchReport rep;
  const Dataset part = take_spread(data, std::min<int64_t>(rs.images > 0 ? rs.images : data.size(), data.size()));
  rep.images = part.size();

  // The grids to search: one per sharing group, graph order, quantized at the calibrated bits.
  const std::map<std::string, quant::QuantParams> aparams = quantized_activation_params(cal, opt);
  std::vector<std::string> roots;
  std::map<std::string, std::vector<std::string>> members;
  std::set<std::string> skipped;  // groups with a member left float or at other bits
  for (const auto& v : cal.targets) {
    const std::string r = cal.share_root(v);
    if (!members.count(r)) roots.push_back(r);
    members[r].push_back(v);
    auto a = aparams.find(v);
    if (a == aparams.end() || !same_params(a->second, cal.activation_params.at(v)) ||
        a->second.scale.size() != 1)
      skipped.insert(r);
  }
  std::erase_if(roots, [&](const std::string& r) { return skipped.count(r) > 0; });
  rep.grids = static_cast<int64_t>(roots.size());

  const std::string in_name = cal.model.graph.inputs.at(0).name;
  // At least two batches, so that the images split into two halves (see the acceptance rule).
  const int64_t batch = std::clamp<int64_t>((part.size() + 1) / 2, 1, std::max<int64_t>(1, opt.batch));
  std::vector<runtime::TensorMap> xs;  // the batches' inputs, by name
  std::vector<Tensor> refs;
  {
    const runtime::Executor fexec(cal.model);
    for (const auto& chunk : part.chunks(batch)) {
      const int64_t b = chunk.first, n = chunk.second;
      xs.push_back(part.feeds(in_name, b, n));
      refs.push_back(fexec.run(xs.back()).at(fexec.output_name()));
    }
  }
  Model cur = build_quietly(cal, opt);
  const std::string out_name = cur.graph.outputs.at(0).name;
  const OutputError error(out_name, refs, rs.class_axis);
  rep.objective = error.name();
  refs.clear();
  // Errors of the two halves of the batches (the first half, the rest) and of all images.
  const size_t half = (xs.size() + 1) / 2;
  struct Errors {
    OutputError::Sum a, b;
    double all() const {
      OutputError::Sum s = a;
      s += b;
      return s.value();
    }
  };
  auto add_error = [&](Errors& e, size_t b, const Tensor& y) { (b < half ? e.a : e.b) += error(b, y); };
  auto cur_exec = std::make_unique<runtime::Executor>(cur);
  Errors cur_err;
  for (size_t b = 0; b < xs.size(); ++b) add_error(cur_err, b, cur_exec->run(xs[b]).at(out_name));
  rep.error_before = cur_err.all();

  // Per batch: values of the current model where the last searched grid's changed part began; the next grid's
  // starting values are computed from them (they lie before it in the graph).
  std::vector<runtime::TensorMap> start(xs.size());
  Progress progress("range search", rep.grids * rs.sweeps);
  int64_t done = 0;
  for (int sweep = 0; sweep < rs.sweeps; ++sweep) {
    for (const std::string& r : roots) {
      progress.update(++done);
      const quant::QuantParams p0 = cal.activation_params.at(r);
      const auto [lo, hi] = grid_span(p0);
      struct Candidate {
        quant::QuantParams p;
        Model m;
        std::set<std::string> clean;
      };
      std::vector<Candidate> cands;
      auto add = [&](float nlo, float nhi) {
        const float mins[1] = {nlo}, maxs[1] = {nhi};
        quant::QuantParams p = quant::choose_params(p0.spec, {}, mins, maxs);
        if (same_params(p, p0)) return;
        for (const auto& c : cands)
          if (same_params(c.p, p)) return;
        for (const auto& v : members[r]) cal.activation_params[v] = p;
        Model m = build_quietly(cal, opt);
        const auto clean = detail::clean_outputs(cur, m);
        cands.push_back({std::move(p), std::move(m), std::set<std::string>(clean.begin(), clean.end())});
      };
      for (double f : rs.factors) add(lo, static_cast<float>(hi * f));
      if (lo < 0)
        for (double f : rs.factors) add(static_cast<float>(lo * f), hi);
      for (const auto& v : members[r]) cal.activation_params[v] = p0;
      if (cands.empty()) continue;

      // Where the candidates' changed parts begin: clean values their changed nodes read.
      std::set<std::string> frontier;
      for (const auto& c : cands)
        for (const auto& n : c.m.graph.nodes) {
          if (n.outputs.empty() || c.clean.count(n.outputs[0])) continue;
          for (const auto& v : n.inputs)
            if (!v.empty() && c.clean.count(v)) frontier.insert(v);
        }
      const std::vector<std::string> fvec(frontier.begin(), frontier.end());
      for (size_t b = 0; b < xs.size(); ++b) start[b] = cur_exec->run_for(xs[b], start[b], fvec);

      // Accepted only when both halves improve: a grid that suits some images at the others' expense fits noise
      // that the next images would not share (a single batch: one half).
      auto improves = [&](const OutputError::Sum& now, const OutputError::Sum& was) {
        return std::isfinite(now.value()) && now.value() < was.value() * (1 - rs.min_gain);
      };
      size_t best = cands.size();
      Errors best_err;
      for (size_t ci = 0; ci < cands.size(); ++ci) {
        const runtime::Executor e(cands[ci].m);
        Errors err;
        for (size_t b = 0; b < xs.size(); ++b) {
          runtime::TensorMap known;
          for (const auto& [v, t] : start[b])
            if (cands[ci].clean.count(v)) known.emplace(v, t);
          add_error(err, b, e.run_cached(xs[b], known).at(out_name));
        }
        ++rep.candidates;
        const bool better = improves(err.a, cur_err.a) && (xs.size() < 2 || improves(err.b, cur_err.b));
        if (better && (best == cands.size() || err.all() < best_err.all())) {
          best_err = err;
          best = ci;
        }
      }
      if (best == cands.size()) continue;
      Candidate& c = cands[best];
      for (const auto& v : members[r]) cal.activation_params[v] = c.p;
      const auto [nlo, nhi] = grid_span(c.p);
      rep.moves.push_back({r, lo, hi, nlo, nhi, best_err.all()});
      cur_err = best_err;
      cur = std::move(c.m);
      cur_exec = std::make_unique<runtime::Executor>(cur);
      // Starting values that the move changed are no longer the current model's.
      for (auto& sb : start) std::erase_if(sb, [&](const auto& kv) { return !c.clean.count(kv.first); });
    }
  }
  progress.finish();
  rep.error_after = cur_err.all();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace perch::ptq
