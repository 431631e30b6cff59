#include "perch/ptq/equalize.h"

#include <algorithm>
#include <cmath>

#include "perch/core/progress.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {

using graph::Graph;
using graph::Node;

namespace {

struct Pair {
  size_t a, b;        // node indices
  int64_t features;   // B's input features per channel of A (H*W when a Flatten sits between, else 1)
};

// Weight [rows, cols] view helpers: A's output channels and B's input channels.
struct Layout {
  int64_t channels = 0, per = 0;  // per-channel element count
};

bool single_reader(const Graph& g, const std::string& v) { return g.consumers(v).size() == 1 && !g.is_graph_output(v); }

bool weight_layer(const Graph& g, const Node& n) {
  if (n.op_type != "Conv" && n.op_type != "Gemm") return false;
  const Tensor* w = g.initializer(n.input(1));
  if (!w || w->dtype() != DType::kFloat32 || g.consumers(n.input(1)).size() != 1) return false;
  if (!n.input(2).empty()) {
    const Tensor* b = g.initializer(n.input(2));
    if (!b || b->dtype() != DType::kFloat32 || g.consumers(n.input(2)).size() != 1) return false;
    if (n.op_type == "Gemm" && b->rank() != 1) return false;
  }
  if (n.op_type == "Gemm" && (n.attr_int("transA", 0) != 0 || n.attr_float("alpha", 1.0f) != 1.0f)) return false;
  return true;
}

std::vector<Pair> find_pairs(const Graph& g) {
  std::vector<Pair> pairs;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& a = g.nodes[i];
    if (!weight_layer(g, a)) continue;
    // A Conv with groups: output channel i still depends only on its own weights — scaling it is fine.
    std::string v = a.outputs[0];
    bool flatten = false;
    size_t next = 0;
    for (int hop = 0; hop < 4; ++hop) {
      if (!single_reader(g, v)) break;
      next = g.consumers(v)[0];
      const Node& n = g.nodes[next];
      if (n.op_type == "Relu" || n.op_type == "MaxPool" || (n.op_type == "Flatten" && n.attr_int("axis", 1) == 1)) {
        if (n.op_type == "MaxPool" && n.outputs.size() > 1) break;
        flatten |= n.op_type == "Flatten";
        v = n.outputs[0];
        continue;
      }
      if (!weight_layer(g, n) || n.input(0) != v) break;
      if (n.op_type == "Conv" && (n.attr_int("group", 1) != 1 || flatten)) break;
      if (n.op_type == "Gemm" && a.op_type == "Conv" && !flatten) break;
      const Tensor& wa = *g.initializer(a.input(1));
      const Tensor& wb = *g.initializer(n.input(1));
      const int64_t ca = a.op_type == "Conv" ? wa.dim(0) : (a.attr_int("transB", 0) ? wa.dim(0) : wa.dim(1));
      const int64_t kb = n.op_type == "Conv" ? wb.dim(1) : (n.attr_int("transB", 0) ? wb.dim(1) : wb.dim(0));
      if (kb % ca != 0) break;
      pairs.push_back({i, next, kb / ca});
      break;
    }
  }
  return pairs;
}

// Calls f(element, channel) for every element of A's weight (channel = output channel).
template <typename F>
void for_out_channels(const Node& n, Tensor& w, F f) {
  float* d = w.data<float>();
  if (n.op_type == "Conv" || n.attr_int("transB", 0)) {  // [C, ...]
    const int64_t per = w.numel() / w.dim(0);
    for (int64_t i = 0; i < w.numel(); ++i) f(d[i], i / per);
  } else {  // Gemm [K, N]: channel = column
    const int64_t cols = w.dim(1);
    for (int64_t i = 0; i < w.numel(); ++i) f(d[i], i % cols);
  }
}

// Calls f(element, channel) for every element of B's weight (channel = A's output channel it reads).
template <typename F>
void for_in_channels(const Node& n, Tensor& w, int64_t features, F f) {
  float* d = w.data<float>();
  if (n.op_type == "Conv") {  // [M, C, kh, kw]
    const int64_t c = w.dim(1), per = w.numel() / (w.dim(0) * c);
    for (int64_t i = 0; i < w.numel(); ++i) f(d[i], (i / per) % c);
  } else if (n.attr_int("transB", 0)) {  // [N, K]: feature = column
    const int64_t k = w.dim(1);
    for (int64_t i = 0; i < w.numel(); ++i) f(d[i], (i % k) / features);
  } else {  // [K, N]: feature = row
    const int64_t cols = w.dim(1);
    for (int64_t i = 0; i < w.numel(); ++i) f(d[i], (i / cols) / features);
  }
}

double max_spread(const Graph& g) {
  double s = 0;
  for (const auto& n : g.nodes) {
    if (n.op_type != "Conv" && n.op_type != "Gemm") continue;
    const Tensor* w = g.initializer(n.input(1));
    if (!w || w->dtype() != DType::kFloat32) continue;
    const double sp = channel_spread(*w, weight_channel_axis(n, w->rank()));
    if (std::isfinite(sp)) s = std::max(s, sp);
  }
  return s;
}

// A -> [Relu] -> B, B depthwise (see equalize_depthwise_inputs).
struct DepthwisePair {
  size_t a, b;
  std::string v;     // the value B reads
  int64_t channels;  // C = A's output channels = B's groups
};

std::vector<DepthwisePair> find_depthwise_pairs(const Graph& g) {
  std::vector<DepthwisePair> pairs;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& a = g.nodes[i];
    if (a.op_type != "Conv" || !weight_layer(g, a)) continue;
    std::string v = a.outputs[0];
    if (!single_reader(g, v)) continue;
    size_t next = g.consumers(v)[0];
    if (g.nodes[next].op_type == "Relu") {
      v = g.nodes[next].outputs[0];
      if (!single_reader(g, v)) continue;
      next = g.consumers(v)[0];
    }
    const Node& b = g.nodes[next];
    if (b.op_type != "Conv" || !weight_layer(g, b) || b.input(0) != v) continue;
    const Tensor& wa = *g.initializer(a.input(1));
    const Tensor& wb = *g.initializer(b.input(1));
    const int64_t c = wa.dim(0);
    if (wb.rank() < 3 || wb.dim(1) != 1 || b.attr_int("group", 1) != c || wb.dim(0) % c != 0) continue;
    pairs.push_back({i, next, v, c});
  }
  return pairs;
}

}  // namespace

int equalize_depthwise_inputs(graph::Model& model, const Dataset& data, int64_t batch, bool per_tensor_weights,
                              const std::set<std::string>& per_tensor_nodes, EqualizeReport& report) {
  Graph& g = model.graph;
  if (per_tensor_weights || data.size() == 0 || g.inputs.empty()) return 0;
  std::vector<DepthwisePair> pairs;
  for (const auto& p : find_depthwise_pairs(g))
    if (!per_tensor_nodes.count(g.nodes[p.a].name) && !per_tensor_nodes.count(g.nodes[p.b].name)) pairs.push_back(p);
  if (pairs.empty()) return 0;
  // Per-channel [min, max] of each v over the data (zero included, as the activation quantizer's range is).
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> range;
  for (const auto& p : pairs)
    range[p.v] = {std::vector<float>(static_cast<size_t>(p.channels), 0.0f), std::vector<float>(static_cast<size_t>(p.channels), 0.0f)};
  {
    const runtime::Executor exec(model);
    const std::string in_name = g.inputs[0].name;
    Progress progress("equalizing depthwise inputs", data.size());
    for (const auto& chunk : data.chunks(batch)) {
      const int64_t b0 = chunk.first, n = chunk.second;
      exec.run(data.feeds(in_name, b0, n), [&](const std::string& name, const Tensor& t) {
        auto it = range.find(name);
        if (it == range.end() || t.dtype() != DType::kFloat32 || t.rank() < 2) return;
        auto& [lo, hi] = it->second;
        const int64_t ch = t.dim(1), inner = t.numel() / (t.dim(0) * ch);
        if (ch != static_cast<int64_t>(lo.size())) return;
        const float* d = t.data<float>();
        for (int64_t i = 0; i < t.dim(0); ++i)
          for (int64_t c = 0; c < ch; ++c) {
            const float* x = d + (i * ch + c) * inner;
            float l = lo[static_cast<size_t>(c)], h = hi[static_cast<size_t>(c)];
            for (int64_t k = 0; k < inner; ++k) {
              if (x[k] < l) l = x[k];  // NaN compares false: ignored
              if (x[k] > h) h = x[k];
            }
            lo[static_cast<size_t>(c)] = l, hi[static_cast<size_t>(c)] = h;
          }
      });
      progress.update(b0 + n);
    }
    progress.finish();
  }
  int done = 0;
  for (const auto& p : pairs) {
    const auto& [lo, hi] = range.at(p.v);
    const double gl = *std::min_element(lo.begin(), lo.end()), gh = *std::max_element(hi.begin(), hi.end());
    if (!std::isfinite(gl) || !std::isfinite(gh)) continue;
    std::vector<double> t(static_cast<size_t>(p.channels), 1.0);
    bool any = false;
    for (size_t c = 0; c < t.size(); ++c) {
      double s = kMaxDepthwiseGain;
      if (hi[c] > 0) s = std::min(s, gh / hi[c]);
      if (lo[c] < 0) s = std::min(s, gl / lo[c]);
      if (hi[c] <= 0 && lo[c] >= 0) s = 1;  // never nonzero on the data: nothing to stretch
      t[c] = std::max(1.0, s);
      any |= t[c] > 1.0;
    }
    if (!any) continue;
    const Node& a = g.nodes[p.a];
    const Node& b = g.nodes[p.b];
    for (const std::string* name : {&a.input(1), &a.input(2), &b.input(1)})
      if (!name->empty()) g.initializers[*name] = g.initializers[*name].clone();  // may share the caller's storage
    Tensor& wa = g.initializers[a.input(1)];
    Tensor& wb = g.initializers[b.input(1)];
    for_out_channels(a, wa, [&](float& x, int64_t c) { x = static_cast<float>(x * t[static_cast<size_t>(c)]); });
    if (!a.input(2).empty()) {
      float* ba = g.initializers[a.input(2)].data<float>();
      for (int64_t c = 0; c < p.channels; ++c) ba[c] = static_cast<float>(ba[c] * t[static_cast<size_t>(c)]);
    }
    const int64_t mult = wb.dim(0) / p.channels;
    for_out_channels(b, wb, [&](float& x, int64_t o) { x = static_cast<float>(x / t[static_cast<size_t>(o / mult)]); });
    report.max_depthwise_gain = std::max(report.max_depthwise_gain, *std::max_element(t.begin(), t.end()));
    ++done;
  }
  report.depthwise_pairs += done;
  return done;
}

EqualizeReport equalize(graph::Model& model, int max_sweeps) {
  Graph& g = model.graph;
  EqualizeReport rep;
  rep.max_spread_before = max_spread(g);
  const auto pairs = find_pairs(g);
  rep.pairs = static_cast<int>(pairs.size());
  // Work on private copies of the weights (initializers may share storage with the caller's model).
  for (const auto& p : pairs)
    for (size_t idx : {p.a, p.b})
      for (size_t k = 1; k <= 2; ++k) {
        const std::string& name = g.nodes[idx].input(k);
        if (!name.empty()) g.initializers[name] = g.initializers[name].clone();
      }
  for (int sweep = 0; sweep < max_sweeps && !pairs.empty(); ++sweep) {
    ++rep.sweeps;
    double worst = 0;
    for (const auto& p : pairs) {
      const Node& a = g.nodes[p.a];
      const Node& b = g.nodes[p.b];
      Tensor& wa = g.initializers[a.input(1)];
      Tensor& wb = g.initializers[b.input(1)];
      const int64_t channels = a.op_type == "Conv" || a.attr_int("transB", 0) ? wa.dim(0) : wa.dim(1);
      std::vector<double> ra(channels, 0.0), rb(channels, 0.0);
      for_out_channels(a, wa, [&](float& x, int64_t c) { ra[c] = std::max(ra[c], static_cast<double>(std::fabs(x))); });
      for_in_channels(b, wb, p.features, [&](float& x, int64_t c) { rb[c] = std::max(rb[c], static_cast<double>(std::fabs(x))); });
      std::vector<double> s(channels, 1.0);
      for (int64_t c = 0; c < channels; ++c) {
        if (ra[c] > 0 && rb[c] > 0) s[c] = std::sqrt(ra[c] / rb[c]);
        worst = std::max(worst, std::fabs(std::log(s[c])));
      }
      auto& so = rep.out_scales.try_emplace(a.outputs[0], std::vector<double>(static_cast<size_t>(channels), 1.0)).first->second;
      for (int64_t c = 0; c < channels; ++c) so[static_cast<size_t>(c)] *= s[c];
      if (b.op_type == "Conv") {
        auto& si = rep.in_scales.try_emplace(b.outputs[0], std::vector<double>(static_cast<size_t>(channels), 1.0)).first->second;
        for (int64_t c = 0; c < channels; ++c) si[static_cast<size_t>(c)] *= s[c];
      }
      for_out_channels(a, wa, [&](float& x, int64_t c) { x = static_cast<float>(x / s[c]); });
      for_in_channels(b, wb, p.features, [&](float& x, int64_t c) { x = static_cast<float>(x * s[c]); });
      if (!a.input(2).empty()) {
        Tensor& ba = g.initializers[a.input(2)];
        for (int64_t c = 0; c < channels; ++c) ba.data<float>()[c] = static_cast<float>(ba.data<float>()[c] / s[c]);
      }
    }
    if (worst < 1e-4) break;
  }
  rep.max_spread_after = max_spread(g);
  return rep;
}

}  // namespace perch::ptq
