#include "perch/runtime/executor.h"

#include <algorithm>
#include <functional>
#include <chrono>
#include <map>
#include <sstream>
#include <unordered_set>

#include "elementwise_chain.h"
#include "ops_common.h"
#include "perch/graph/passes.h"

namespace perch::runtime {

OpRegistry& OpRegistry::global() {
  static OpRegistry r;
  return r;
}

void OpRegistry::add(const std::string& op_type, int64_t min_opset, OpKernel fn) {
  entries_[op_type] = Entry{min_opset, std::move(fn)};
}

const OpKernel* OpRegistry::find(const std::string& op_type, const std::string& domain, int64_t opset) const {
  if (!domain.empty() && domain != "ai.onnx") return nullptr;
  auto it = entries_.find(op_type);
  if (it == entries_.end() || opset < it->second.min_opset) return nullptr;
  return &it->second.fn;
}

std::vector<std::string> OpRegistry::op_types() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

void register_builtin_ops(OpRegistry& r);  // ops.cpp

namespace {
const OpRegistry& registry() {
  static const bool once = [] {
    register_builtin_ops(OpRegistry::global());
    return true;
  }();
  (void)once;
  return OpRegistry::global();
}

// float16 (ONNX FLOAT16) and bfloat16 are storage types here: an op other than Cast/CastLike with such an input runs
// on float32 copies of those inputs (exact), and its float32 outputs are rounded back to that type (to nearest even) — one
// rounding per op, as CPU runtimes without half arithmetic compute it, and as NumPy's float16 ufuncs do for the
// element-wise ops (Max, Min, Mod: the float32 result rounded once). Outputs of other types (indices, shapes, int8)
// are kept.
std::vector<Tensor> run_kernel(const OpKernel& k, const graph::Node& n, const std::vector<const Tensor*>& args,
                               int64_t opset) {
  if (n.op_type == "Cast" || n.op_type == "CastLike") return k(n, args, opset);
  // The narrow type: the first 16-bit float input's (a model mixing float16 and bfloat16 in one op gets the first).
  DType narrow = DType::kFloat32;
  for (const Tensor* t : args)
    if (t && is_half_type(t->dtype())) {
      narrow = t->dtype();
      break;
    }
  if (narrow == DType::kFloat32) return k(n, args, opset);
  std::vector<Tensor> widened(args.size());
  std::vector<const Tensor*> a(args.size(), nullptr);
  for (size_t j = 0; j < args.size(); ++j) {
    if (!args[j]) continue;
    if (is_half_type(args[j]->dtype())) widened[j] = args[j]->to_f32();
    a[j] = is_half_type(args[j]->dtype()) ? &widened[j] : args[j];
  }
  std::vector<Tensor> outs = k(n, a, opset);
  for (Tensor& t : outs)
    if (!t.empty() && t.dtype() == DType::kFloat32) t = t.to(narrow);
  return outs;
}
}  // namespace

const OpRegistry& builtin_registry() { return registry(); }

std::vector<std::string> unsupported_ops(const graph::Model& model) {
  std::map<std::string, int> missing;
  const int64_t opset = model.opset();
  // subgraphs (If/Loop/Scan bodies) included
  std::function<void(const graph::Graph&)> visit = [&](const graph::Graph& g) {
    for (const auto& n : g.nodes) {
      if (!registry().find(n.op_type, n.domain, opset)) ++missing[(n.domain.empty() ? "" : n.domain + "::") + n.op_type];
      for (const auto& [key, sub] : n.subgraphs()) visit(*sub);
    }
  };
  visit(model.graph);
  std::vector<std::string> out;
  for (const auto& [op, count] : missing) out.push_back(op + " (x" + std::to_string(count) + ")");
  return out;
}

Executor::Executor(graph::Model model) : model_(std::move(model)) {
  graph::expand_contrib_qops(model_);  // ONNX Runtime's QLinearAdd, QGemm, ... as the QDQ subgraphs they stand for
  PERCH_CHECK(model_.opset() >= 0 && model_.opset() <= kMaxOpset, model_.source, ": default-domain opset ",
              model_.opset(), " is not supported (perch runs ai.onnx opsets 1 to ", kMaxOpset, ")");
  auto missing = unsupported_ops(model_);
  if (!missing.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << missing[i];
    PERCH_FAIL(model_.source, ": unsupported ops at opset ", model_.opset(), ": ", os.str());
  }
  PERCH_CHECK(!model_.graph.outputs.empty(), model_.source, ": the graph has no outputs");
  const int64_t opset = model_.opset();
  for (const auto& [name, t] : model_.graph.initializers) constants_[name] = t;
  for (size_t i = 0; i < model_.graph.nodes.size(); ++i) {
    const auto& n = model_.graph.nodes[i];
    PERCH_CHECK(std::any_of(n.outputs.begin(), n.outputs.end(), [](const std::string& o) { return !o.empty(); }),
                model_.source, ": ", n.describe(), " has no outputs (every ONNX operator produces at least one)");
    kernels_.push_back(registry().find(n.op_type, n.domain, opset));
    for (const auto& in : n.inputs)
      if (!in.empty()) last_use_[in] = i;
  }
  for (const auto& o : model_.graph.outputs) last_use_[o.name] = model_.graph.nodes.size();
  auto chains = std::make_shared<std::vector<detail::ElementwiseChain>>(detail::find_elementwise_chains(model_, constants_));
  chain_of_.assign(model_.graph.nodes.size(), 0);
  for (size_t c = 0; c < chains->size(); ++c)
    for (size_t k : (*chains)[c].nodes) chain_of_[k] = c + 1;
  // Conv -> chain: the Conv producing the chain's X, when X has no other reader and is no graph output.
  conv_chain_.assign(model_.graph.nodes.size(), 0);
  const graph::Graph& g = model_.graph;
  for (size_t c = 0; c < chains->size(); ++c) {
    const auto& ch = (*chains)[c];
    const int64_t p = g.producer(ch.input);
    if (p < 0 || static_cast<size_t>(p) >= ch.first || g.is_graph_output(ch.input)) continue;
    const auto& conv = g.nodes[static_cast<size_t>(p)];
    const auto readers = g.consumers(ch.input);
    if (conv.op_type == "Conv" && (conv.domain.empty() || conv.domain == "ai.onnx") &&
        std::all_of(readers.begin(), readers.end(), [&](size_t r) { return chain_of_[r] == c + 1; }))
      conv_chain_[static_cast<size_t>(p)] = c + 1;
  }
  chains_ = std::move(chains);
}

void Executor::enable_profiling() {
  std::vector<std::string> nodes, what;
  for (size_t i = 0; i < model_.graph.nodes.size(); ++i) {
    const auto& n = model_.graph.nodes[i];
    nodes.push_back(n.describe());
    what.push_back(n.op_type);
    auto ops_of = [&](const detail::ElementwiseChain& c) {
      std::string ops;
      for (size_t k : c.nodes) ops += (ops.empty() ? "" : "+") + model_.graph.nodes[k].op_type;
      return ops;
    };
    if (conv_chain_[i]) {  // the chain runs inside this Conv: both are timed here
      what.back() += " + fused element-wise chain " + ops_of((*chains_)[conv_chain_[i] - 1]) +
                     " on its output blocks (when nothing observes their values)";
    } else if (chain_of_[i]) {  // a fused chain's time is its last node's, or its Conv's
      const auto& c = (*chains_)[chain_of_[i] - 1];
      const auto in_conv = std::find(conv_chain_.begin(), conv_chain_.end(), chain_of_[i]);
      if (in_conv != conv_chain_.end()) {
        what.back() += " (in the fused chain timed at its " +
                       model_.graph.nodes[static_cast<size_t>(in_conv - conv_chain_.begin())].describe() + ")";
      } else if (i == c.last) {
        what.back() = "fused element-wise chain " + ops_of(c) + " (when nothing observes its values)";
      } else {
        what.back() += " (in the fused chain timed at " + model_.graph.nodes[c.last].describe() + ")";
      }
    }
  }
  profile_ = std::make_shared<StepProfile>(std::move(nodes), std::move(what));
}

std::vector<StepTime> Executor::profile() const { return profile_ ? profile_->entries() : std::vector<StepTime>{}; }

TensorMap Executor::run(const TensorMap& inputs, const Observer& observer,
                        const std::vector<std::string>& extra_outputs) const {
  return run_impl(inputs, nullptr, observer, extra_outputs);
}

TensorMap Executor::run_cached(const TensorMap& inputs, const TensorMap& known, const Observer& observer) const {
  return run_impl(inputs, &known, observer, {});
}

TensorMap Executor::run_for(const TensorMap& inputs, const TensorMap& known, const std::vector<std::string>& outputs) const {
  return run_impl(inputs, &known, nullptr, outputs, nullptr, true);
}

TensorMap Executor::run_adjusting(const TensorMap& inputs, const Adjuster& adjust) const {
  return run_impl(inputs, nullptr, nullptr, {}, &adjust);
}

TensorMap Executor::run_impl(const TensorMap& inputs, const TensorMap* known, const Observer& observer,
                             const std::vector<std::string>& extra_outputs, const Adjuster* adjust, bool only_extra) const {
  TensorMap values;
  for (const auto& in : model_.graph.inputs) {
    auto it = inputs.find(in.name);
    PERCH_CHECK(it != inputs.end(), model_.source, ": input '", in.name, "' was not given");
    const Tensor& t = it->second;
    PERCH_CHECK(t.dtype() == in.dtype, model_.source, ": input '", in.name, "' must be ", dtype_name(in.dtype),
                ", got ", dtype_name(t.dtype()));
    if (in.has_shape) {
      bool ok = t.rank() == static_cast<int64_t>(in.shape.size());
      for (size_t d = 0; ok && d < in.shape.size(); ++d) ok = in.shape[d] < 0 || in.shape[d] == t.shape()[d];
      PERCH_CHECK(ok, model_.source, ": input '", in.name, "' has shape ", shape_str(t.shape()),
                  " but the model expects ", shape_str(in.shape), " (-1 = any)");
    }
    values[in.name] = t;
  }
  const int64_t opset = model_.opset();
  std::vector<const Tensor*> args;
  // Fused chains run when nothing needs their intermediate values; decided at a chain's first node, run at its
  // last (only Constant nodes lie between), X kept until then.
  const bool may_fuse = !observer && !adjust && !known;
  // With a cache, only the nodes the graph outputs still depend on run: walking back from the outputs, a node is
  // needed when a needed value is one of its outputs, and its inputs are needed unless all its outputs are known.
  // A caller may then pass just the values where its changed part begins (the rest of the prefix is never read).
  std::vector<char> needed;
  if (known) {
    needed.assign(model_.graph.nodes.size(), 0);
    std::unordered_set<std::string> want;
    if (only_extra) want.insert(extra_outputs.begin(), extra_outputs.end());
    else
      for (const auto& o : model_.graph.outputs) want.insert(o.name);
    for (size_t i = model_.graph.nodes.size(); i-- > 0;) {
      const auto& n = model_.graph.nodes[i];
      bool any = false, all_known = !n.outputs.empty();
      for (const auto& o : n.outputs) {
        if (o.empty()) continue;
        any |= want.count(o) > 0;
        all_known &= known->count(o) > 0;
      }
      if (!any) continue;
      needed[i] = 1;
      if (all_known) continue;
      for (const auto& in : n.inputs)
        if (!in.empty()) want.insert(in);
    }
  }
  size_t fusing = 0;  // chain_of_ value of the chain being skipped over, 0 = none
  size_t in_conv = 0;  // chain_of_ value of a chain already run inside its Conv, 0 = none
  // Whether a caller asked for the chain's X or one of its intermediate values (then its nodes run one by one).
  auto wanted = [&](const detail::ElementwiseChain& c, bool with_x) {
    auto asked = [&](const std::string& v) {
      return std::find(extra_outputs.begin(), extra_outputs.end(), v) != extra_outputs.end();
    };
    if (with_x && asked(c.input)) return true;
    for (size_t k = 0; k + 1 < c.nodes.size(); ++k)
      if (asked(model_.graph.nodes[c.nodes[k]].outputs[0])) return true;
    return false;
  };
  // Frees the values whose last reader is node i (graph outputs and extras are kept).
  auto release_inputs = [&](const graph::Node& n, size_t i) {
    for (const auto& in : n.inputs) {
      auto lu = last_use_.find(in);
      if (lu != last_use_.end() && lu->second == i &&
          std::find(extra_outputs.begin(), extra_outputs.end(), in) == extra_outputs.end())
        values.erase(in);
    }
  };
  for (size_t i = 0; i < model_.graph.nodes.size(); ++i) {
    const auto& n = model_.graph.nodes[i];
    if (known && !needed[i]) continue;
    if (in_conv && chain_of_[i] == in_conv) {  // its result is already there
      if (i == (*chains_)[in_conv - 1].last) in_conv = 0;
      continue;
    }
    if (may_fuse && chain_of_[i]) {
      const auto& c = (*chains_)[chain_of_[i] - 1];
      if (i == c.first) {
        auto x = values.find(c.input);
        const bool ok = x != values.end() && x->second.dtype() == DType::kFloat32 && !wanted(c, false);
        fusing = ok ? chain_of_[i] : 0;
      }
      if (fusing == chain_of_[i]) {
        if (i != c.last) continue;
        const auto t0 = std::chrono::steady_clock::now();
        try {
          values[c.output] = detail::run_elementwise_chain(c, values.at(c.input));
        } catch (const Error& e) {
          PERCH_FAIL(model_.source, ": ", n.describe(), " (fused element-wise chain): ", e.what());
        }
        if (profile_)
          profile_->add(i, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
        for (size_t k : c.nodes)
          for (const auto& in : model_.graph.nodes[k].inputs) {
            auto lu = last_use_.find(in);
            if (lu != last_use_.end() && lu->second < chain_of_.size() && chain_of_[lu->second] == fusing &&
                std::find(extra_outputs.begin(), extra_outputs.end(), in) == extra_outputs.end())
              values.erase(in);
          }
        fusing = 0;
        continue;
      }
    }
    if (known && !n.outputs.empty() &&
        std::all_of(n.outputs.begin(), n.outputs.end(), [&](const std::string& o) { return o.empty() || known->count(o); })) {
      for (const auto& o : n.outputs)
        if (!o.empty()) values[o] = known->at(o);
      continue;
    }
    args.clear();
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        args.push_back(nullptr);
        continue;
      }
      auto it = values.find(in);
      if (it != values.end()) {
        args.push_back(&it->second);
        continue;
      }
      auto c = constants_.find(in);
      PERCH_CHECK(c != constants_.end(), model_.source, ": ", n.describe(), " input '", in, "' is not available");
      args.push_back(&c->second);
    }
    // A Conv whose output only a chain reads: the chain runs on each finished block of the Conv's output, in place.
    if (may_fuse && conv_chain_[i]) {
      const auto& c = (*chains_)[conv_chain_[i] - 1];
      const Tensor* x = args.empty() ? nullptr : args[0];
      if (x && static_cast<size_t>(x->rank()) >= c.const_rank && !wanted(c, true)) {
        const auto t0 = std::chrono::steady_clock::now();
        try {
          values[c.output] = detail::conv_float(
              n, args, [&c](float* block, int64_t count) { detail::run_elementwise_chain_in_place(c, block, count); });
        } catch (const Error& e) {
          PERCH_FAIL(model_.source, ": ", n.describe(), " (with the element-wise chain ending at ",
                     model_.graph.nodes[c.last].describe(), "): ", e.what());
        }
        if (profile_)
          profile_->add(i, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
        in_conv = conv_chain_[i];
        release_inputs(n, i);
        continue;
      }
    }
    std::vector<Tensor> outs;
    try {
      if (profile_) {
        const auto t0 = std::chrono::steady_clock::now();
        outs = run_kernel(*kernels_[i], n, args, opset);
        profile_->add(i, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
      } else {
        outs = run_kernel(*kernels_[i], n, args, opset);
      }
    } catch (const Error& e) {
      PERCH_FAIL(model_.source, ": ", n.prefixed(e.what()));
    }
    PERCH_CHECK(static_cast<std::ptrdiff_t>(outs.size()) >= std::count_if(n.outputs.begin(), n.outputs.end(), [](auto& o) { return !o.empty(); }),
                model_.source, ": ", n.describe(), " produced too few outputs");
    for (size_t o = 0; o < n.outputs.size() && o < outs.size(); ++o) {
      if (n.outputs[o].empty()) continue;
      if (adjust) {
        const Shape shape = outs[o].shape();
        const DType type = outs[o].dtype();
        (*adjust)(n.outputs[o], outs[o]);
        PERCH_CHECK(outs[o].shape() == shape && outs[o].dtype() == type, model_.source, ": ", n.describe(),
                    ": the adjuster changed the shape or type of '", n.outputs[o], "'");
      }
      if (observer) observer(n.outputs[o], outs[o]);
      values[n.outputs[o]] = std::move(outs[o]);
    }
    release_inputs(n, i);
  }
  TensorMap out;
  for (size_t k = 0; !only_extra && k < model_.graph.outputs.size(); ++k) {
    const std::string& o = model_.graph.outputs[k].name;
    auto it = values.find(o);
    if (it == values.end()) {
      auto c = constants_.find(o);
      PERCH_CHECK(c != constants_.end(), model_.source, ": output '", o, "' was never produced");
      out[o] = c->second;
    } else {
      out[o] = it->second;
    }
  }
  for (const auto& e : extra_outputs) {
    auto it = values.find(e);
    PERCH_CHECK(it != values.end(), model_.source, ": value '", e, "' was not produced");
    out[e] = it->second;
  }
  return out;
}

Tensor Executor::run1(const Tensor& input) const {
  // A graph without inputs (only constants) is valid ONNX; run() handles it, run1 needs one input.
  PERCH_CHECK(!model_.graph.inputs.empty(), model_.source, ": run1 needs a graph input, the graph has none");
  TensorMap in{{input_name(), input}};
  return run(in).at(output_name());
}

}  // namespace perch::runtime
