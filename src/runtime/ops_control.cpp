// Control flow for the float executor: If, Loop and Scan (opset 9+).
//
// A node's subgraphs read values of the enclosing graphs by name; perch's IR lists those after the ONNX inputs
// (graph::Node::captured), so the kernel receives them as trailing arguments and binds them, under the names the
// subgraph uses, beside the subgraph's own inputs. Each subgraph runs on its own Executor (built once per node run;
// a Loop or Scan reuses it across iterations).
//   If:   cond (bool, one element) → the outputs of then_branch or else_branch.
//   Loop: M (int64 trip count, optional), cond (bool, optional), v_initial…; body(iteration_num, cond, v…) →
//         (cond, v…, scan…). Runs while i < M (when given) and cond holds (when given); outputs the final v… and each
//         scan output stacked along a new first axis (an empty [0] float tensor when no iteration ran). A Loop with
//         neither M nor cond never ends and is refused.
//   Scan: state…, scan inputs… (num_scan_inputs of them, sliced along scan_input_axes, reversed where
//         scan_input_directions says 1); body(state…, slice…) → (state…, out slice…); outputs the final states and
//         the slices stacked along scan_output_axes (in reverse where scan_output_directions says 1). Scan-8 (batch
//         axis and sequence_lens) is not supported (named as an unsupported op at opset 8).
#include <algorithm>
#include <cstring>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

// Runs subgraphs of one node: formal inputs are bound by position, captured values by their captured names.
class Subgraph {
 public:
  Subgraph(const Node& n, const graph::Graph& g, const Args& a, int64_t opset, const std::vector<const Tensor*>& formal)
      : graph_(g) {
    graph::Model m;
    m.source = n.describe() + " subgraph '" + g.name + "'";
    m.opsets = {{"", opset}};
    m.graph = g;
    PERCH_CHECK(formal.size() == g.inputs.size(), n.describe(), ": its subgraph '", g.name, "' takes ", g.inputs.size(),
                " inputs, ", formal.size(), " given");
    for (size_t i = 0; i < g.inputs.size(); ++i) {
      auto& vi = m.graph.inputs[i];
      vi.has_shape = false;  // loop-carried values may change shape between iterations
      vi.dtype = formal[i]->dtype();
    }
    const size_t first = n.formal_input_count();
    std::vector<std::string> outer = graph::outer_references(g);
    for (size_t k = 0; k < n.captured.size(); ++k) {
      if (std::find(outer.begin(), outer.end(), n.captured[k]) == outer.end()) continue;  // another subgraph's
      PERCH_CHECK(first + k < a.size() && a[first + k], n.describe(), ": captured value '", n.captured[k], "' missing");
      graph::ValueInfo vi;
      vi.name = n.captured[k];
      vi.dtype = a[first + k]->dtype();
      m.graph.inputs.push_back(vi);
      captured_[n.captured[k]] = *a[first + k];
    }
    m.graph.toposort();
    exec_ = std::make_unique<Executor>(std::move(m));
  }

  // The subgraph's outputs, in order, for these formal inputs.
  std::vector<Tensor> run(const std::vector<const Tensor*>& formal) const {
    TensorMap in = captured_;
    for (size_t i = 0; i < formal.size(); ++i) in[graph_.inputs[i].name] = *formal[i];
    const TensorMap out = exec_->run(in);
    std::vector<Tensor> r;
    for (const auto& o : graph_.outputs) r.push_back(out.at(o.name));
    return r;
  }

 private:
  const graph::Graph& graph_;
  TensorMap captured_;
  std::unique_ptr<Executor> exec_;
};

const graph::Graph& subgraph(const Node& n, const char* key) {
  const graph::Graph* g = n.attr_graph(key);
  PERCH_CHECK(g, "needs the subgraph attribute '", key, "'");
  return *g;
}

bool truth(const Tensor& t, const char* what) {
  PERCH_CHECK(t.numel() == 1, what, " must hold one value, got ", shape_str(t.shape()));
  return detail::scalar_value(t, what) != 0;
}

// Slice i along `axis` (that dim removed).
Tensor take(const Tensor& x, int64_t axis, int64_t i) {
  Shape s = x.shape();
  const int64_t outer = checked_numel(Shape(s.begin(), s.begin() + axis)), len = s[axis],
                inner = checked_numel(Shape(s.begin() + axis + 1, s.end())), es = static_cast<int64_t>(dtype_size(x.dtype()));
  s.erase(s.begin() + axis);
  Tensor y = Tensor::uninitialized(x.dtype(), s);
  const auto* src = static_cast<const std::byte*>(x.raw());
  auto* dst = static_cast<std::byte*>(y.raw());
  for (int64_t o = 0; o < outer; ++o)
    std::memcpy(dst + o * inner * es, src + ((o * len + i) * inner) * es, static_cast<size_t>(inner * es));
  return y;
}

// The parts (equal shapes and types) stacked along a new dim at `axis`.
Tensor stack(const std::vector<Tensor>& parts, int64_t axis, const std::string& what) {
  if (parts.empty()) return Tensor(DType::kFloat32, {0});
  const Tensor& p0 = parts[0];
  for (const auto& p : parts)
    PERCH_CHECK(p.shape() == p0.shape() && p.dtype() == p0.dtype(), what, ": iterations produced ", shape_str(p0.shape()),
                " and ", shape_str(p.shape()), " (scan outputs must keep one shape and type)");
  PERCH_CHECK(axis >= 0 && axis <= p0.rank(), what, ": axis ", axis, " is outside rank ", p0.rank() + 1);
  Shape s = p0.shape();
  s.insert(s.begin() + axis, static_cast<int64_t>(parts.size()));
  const int64_t outer = checked_numel(Shape(p0.shape().begin(), p0.shape().begin() + axis)),
                inner = checked_numel(Shape(p0.shape().begin() + axis, p0.shape().end())),
                es = static_cast<int64_t>(dtype_size(p0.dtype())), n = static_cast<int64_t>(parts.size());
  Tensor y = Tensor::uninitialized(p0.dtype(), s);
  auto* dst = static_cast<std::byte*>(y.raw());
  for (int64_t k = 0; k < n; ++k) {
    const auto* src = static_cast<const std::byte*>(parts[k].raw());
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(dst + ((o * n + k) * inner) * es, src + o * inner * es, static_cast<size_t>(inner * es));
  }
  return y;
}

std::vector<Tensor> if_op(const Node& n, const Args& a, int64_t opset) {
  const bool c = truth(in(n, a, 0), "cond");
  const graph::Graph& g = subgraph(n, c ? "then_branch" : "else_branch");
  std::vector<Tensor> out = Subgraph(n, g, a, opset, {}).run({});
  PERCH_CHECK(out.size() >= n.outputs.size(), c ? "then_branch" : "else_branch", " has ", out.size(), " outputs for ",
              n.outputs.size());
  return out;
}

std::vector<Tensor> loop(const Node& n, const Args& a, int64_t opset) {
  const graph::Graph& body = subgraph(n, "body");
  const size_t formal = n.formal_input_count();
  PERCH_CHECK(formal >= 2, "needs the inputs M and cond (either may be empty)");
  const bool has_m = a[0] != nullptr, has_cond = a[1] != nullptr;
  PERCH_CHECK(has_m || has_cond, "has neither a trip count M nor a condition: it would never end");
  const int64_t M = has_m ? static_cast<int64_t>(detail::scalar_value(*a[0], "M")) : 0;
  bool cond = has_cond ? truth(*a[1], "cond") : true;
  const size_t carried = formal - 2;
  PERCH_CHECK(body.inputs.size() == carried + 2, "its body takes ", body.inputs.size(), " inputs; ", carried + 2,
              " expected (iteration_num, cond and ", carried, " loop-carried values)");
  PERCH_CHECK(body.outputs.size() >= carried + 1, "its body has ", body.outputs.size(), " outputs; at least ", carried + 1,
              " expected");
  const size_t scans = body.outputs.size() - 1 - carried;
  std::vector<Tensor> v;
  for (size_t k = 0; k < carried; ++k) {
    PERCH_CHECK(a[2 + k], "loop-carried input ", k, " is missing");
    v.push_back(*a[2 + k]);
  }
  std::vector<std::vector<Tensor>> scan(scans);
  Tensor iter = Tensor::from<int64_t>({}, {0}), cond_t(DType::kBool, {});
  std::unique_ptr<Subgraph> sg;
  for (int64_t i = 0; (!has_m || i < M) && cond; ++i) {
    iter.data<int64_t>()[0] = i;
    cond_t.data<bool>()[0] = cond;
    std::vector<const Tensor*> f = {&iter, &cond_t};
    for (auto& t : v) f.push_back(&t);
    if (!sg) sg = std::make_unique<Subgraph>(n, body, a, opset, f);
    std::vector<Tensor> out = sg->run(f);
    if (has_cond) cond = truth(out[0], "the body's cond output");
    for (size_t k = 0; k < carried; ++k) v[k] = std::move(out[1 + k]);
    for (size_t k = 0; k < scans; ++k) scan[k].push_back(std::move(out[1 + carried + k]));
  }
  std::vector<Tensor> result = std::move(v);
  for (size_t k = 0; k < scans; ++k) result.push_back(stack(scan[k], 0, "Loop scan output " + std::to_string(k)));
  return result;
}

std::vector<Tensor> scan(const Node& n, const Args& a, int64_t opset) {
  const graph::Graph& body = subgraph(n, "body");
  const int64_t m = n.attr_int("num_scan_inputs", -1);
  const int64_t formal = static_cast<int64_t>(n.formal_input_count());
  PERCH_CHECK(m >= 1 && m <= formal, "num_scan_inputs ", m, " must be in [1, ", formal, "]");
  const int64_t states = formal - m;
  PERCH_CHECK(static_cast<int64_t>(body.inputs.size()) == formal, "its body takes ", body.inputs.size(), " inputs for ",
              formal);
  const int64_t outs = static_cast<int64_t>(body.outputs.size()) - states;
  PERCH_CHECK(outs >= 0, "its body has fewer outputs than states");
  auto list = [&](const char* key, int64_t count) {
    auto v = n.attr_ints(key, std::vector<int64_t>(static_cast<size_t>(count), 0));
    PERCH_CHECK(static_cast<int64_t>(v.size()) == count, key, " has ", v.size(), " values for ", count);
    return v;
  };
  const auto in_axes = list("scan_input_axes", m), in_dirs = list("scan_input_directions", m);
  const auto out_axes = list("scan_output_axes", outs), out_dirs = list("scan_output_directions", outs);
  std::vector<Tensor> st;
  for (int64_t k = 0; k < states; ++k) st.push_back(in(n, a, static_cast<size_t>(k)));
  std::vector<int64_t> axes(static_cast<size_t>(m));
  int64_t T = -1;
  for (int64_t j = 0; j < m; ++j) {
    const Tensor& x = in(n, a, static_cast<size_t>(states + j));
    axes[j] = detail::normalize_axes({in_axes[j]}, x.rank())[0];
    PERCH_CHECK(T < 0 || x.dim(axes[j]) == T, "scan inputs have ", T, " and ", x.dim(axes[j]), " iterations");
    T = x.dim(axes[j]);
  }
  std::vector<std::vector<Tensor>> collected(static_cast<size_t>(outs));
  std::unique_ptr<Subgraph> sg;
  std::vector<Tensor> slices(static_cast<size_t>(m));
  for (int64_t t = 0; t < T; ++t) {
    std::vector<const Tensor*> f;
    for (auto& s : st) f.push_back(&s);
    for (int64_t j = 0; j < m; ++j) {
      slices[j] = take(*a[states + j], axes[j], in_dirs[j] ? T - 1 - t : t);
      f.push_back(&slices[j]);
    }
    if (!sg) sg = std::make_unique<Subgraph>(n, body, a, opset, f);
    std::vector<Tensor> out = sg->run(f);
    for (int64_t k = 0; k < states; ++k) st[k] = std::move(out[k]);
    for (int64_t k = 0; k < outs; ++k) collected[k].push_back(std::move(out[states + k]));
  }
  std::vector<Tensor> result = std::move(st);
  for (int64_t k = 0; k < outs; ++k) {
    auto& parts = collected[k];
    if (out_dirs[k]) std::reverse(parts.begin(), parts.end());
    const int64_t rank = parts.empty() ? 0 : parts[0].rank() + 1;
    const int64_t axis = parts.empty() ? 0 : detail::normalize_axes({out_axes[k]}, rank)[0];
    result.push_back(stack(parts, axis, "Scan output " + std::to_string(k)));
  }
  return result;
}

}  // namespace

void register_control_ops(OpRegistry& r) {
  r.add("If", 1, if_op);
  r.add("Loop", 1, loop);
  r.add("Scan", 9, scan);  // Scan-8 (batch axis, sequence_lens) is not registered: named as unsupported
}

}  // namespace perch::runtime
