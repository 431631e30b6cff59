#include "perch/graph/passes.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace perch::graph {

int fold_constant_nodes(Model& model) {
  Graph& g = model.graph;
  int folded = 0;
  for (size_t i = 0; i < g.nodes.size();) {
    Node& n = g.nodes[i];
    const Tensor* t = n.op_type == "Constant" ? n.attr_tensor("value") : nullptr;
    if (t && n.outputs.size() == 1 && !g.is_graph_output(n.outputs[0])) {
      g.initializers[n.outputs[0]] = *t;
      g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
      ++folded;
    } else {
      ++i;
    }
  }
  return folded;
}

int fold_batchnorm(Model& model) {
  Graph& g = model.graph;
  int folded = 0;
  for (size_t bi = 0; bi < g.nodes.size(); ++bi) {
    Node& bn = g.nodes[bi];
    if (bn.op_type != "BatchNormalization" || bn.outputs.size() != 1 || bn.attr_int("training_mode", 0)) continue;
    const int64_t pi = g.producer(bn.inputs[0]);
    if (pi < 0) continue;
    Node& conv = g.nodes[pi];
    if (conv.op_type != "Conv" || g.consumers(conv.outputs[0]).size() != 1 || g.is_graph_output(conv.outputs[0])) continue;
    const Tensor* w = g.initializer(conv.input(1));
    if (!w || w->dtype() != DType::kFloat32) continue;
    const Tensor* scale = g.initializer(bn.input(1));
    const Tensor* beta = g.initializer(bn.input(2));
    const Tensor* mean = g.initializer(bn.input(3));
    const Tensor* var = g.initializer(bn.input(4));
    const Tensor* bias = conv.input(2).empty() ? nullptr : g.initializer(conv.input(2));
    if (!scale || !beta || !mean || !var || (!conv.input(2).empty() && !bias)) continue;
    const int64_t m = w->dim(0);
    if (scale->numel() != m || beta->numel() != m || mean->numel() != m || var->numel() != m) continue;
    // Weights shared with another node cannot be rescaled in place.
    if (g.consumers(conv.input(1)).size() != 1) continue;
    const double eps = bn.attr_float("epsilon", 1e-5f);
    Tensor nw = w->clone();
    Tensor nb(DType::kFloat32, {m});
    const Tensor sf = scale->to_f32(), bf = beta->to_f32(), mf = mean->to_f32(), vf = var->to_f32();
    const int64_t per = w->numel() / m;
    for (int64_t c = 0; c < m; ++c) {
      const double k = sf.data<float>()[c] / std::sqrt(static_cast<double>(vf.data<float>()[c]) + eps);
      for (int64_t j = 0; j < per; ++j) nw.data<float>()[c * per + j] = static_cast<float>(w->data<float>()[c * per + j] * k);
      const double b0 = bias ? bias->to_f32().data<float>()[c] : 0.0;
      nb.data<float>()[c] = static_cast<float>((b0 - mf.data<float>()[c]) * k + bf.data<float>()[c]);
    }
    const std::string wname = g.unique_name(conv.input(1) + "_bnfold");
    const std::string bname = g.unique_name(conv.name.empty() ? "conv_bias_bnfold" : conv.name + "_bias_bnfold");
    g.initializers[wname] = nw;
    g.initializers[bname] = nb;
    conv.inputs.resize(3);
    conv.inputs[1] = wname;
    conv.inputs[2] = bname;
    conv.outputs[0] = bn.outputs[0];
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(bi));
    --bi;
    ++folded;
  }
  if (folded) g.prune_unused_initializers();
  return folded;
}

namespace {

// Whether constant `c` broadcasts against a Conv output [N, M, d1..dk] (rank r) along the output-channel axis
// only: right-aligned against the output, every dim is 1 except possibly the one at axis 1, which is 1 or M,
// and its rank is at most r (a longer constant would broadcast the output to a larger shape). Returns the
// per-channel values (M of them; a scalar or size-1 constant is repeated), or an empty vector.
std::vector<double> per_channel_constant(const Tensor& c, int64_t r, int64_t m) {
  if (c.dtype() != DType::kFloat32 || c.rank() > r) return {};
  int64_t channel_dim = 1;
  for (int64_t i = 0; i < c.rank(); ++i) {
    const int64_t axis = r - c.rank() + i;  // output axis this dim aligns with
    if (axis == 1) channel_dim = c.dim(i);
    else if (c.dim(i) != 1) return {};
  }
  if (channel_dim != 1 && channel_dim != m) return {};
  std::vector<double> v(static_cast<size_t>(m));
  for (int64_t k = 0; k < m; ++k) v[k] = c.data<float>()[channel_dim == 1 ? 0 : k];
  return v;
}

}  // namespace

int fold_conv_affine(Model& model) {
  Graph& g = model.graph;
  int folded = 0;
  for (size_t ai = 0; ai < g.nodes.size(); ++ai) {
    Node& op = g.nodes[ai];
    if ((op.op_type != "Mul" && op.op_type != "Add") || op.inputs.size() != 2 || op.outputs.size() != 1) continue;
    // One input a Conv output, the other a constant.
    size_t xi = 2;
    for (size_t i = 0; i < 2; ++i)
      if (!g.is_initializer(op.inputs[i]) && g.is_initializer(op.inputs[1 - i])) xi = i;
    if (xi == 2) continue;
    const int64_t pi = g.producer(op.inputs[xi]);
    if (pi < 0) continue;
    Node& conv = g.nodes[pi];
    if (conv.op_type != "Conv" || conv.outputs.size() != 1 || g.consumers(conv.outputs[0]).size() != 1 ||
        g.is_graph_output(conv.outputs[0]))
      continue;
    const Tensor* w = g.initializer(conv.input(1));
    if (!w || w->dtype() != DType::kFloat32 || w->rank() < 3) continue;
    const Tensor* bias = conv.input(2).empty() ? nullptr : g.initializer(conv.input(2));
    if (!conv.input(2).empty() && (!bias || bias->dtype() != DType::kFloat32)) continue;
    const int64_t m = w->dim(0);
    if (bias && bias->numel() != m) continue;
    // Weights shared with another node cannot be rescaled in place (same rule as fold_batchnorm).
    if (op.op_type == "Mul" && g.consumers(conv.input(1)).size() != 1) continue;
    const std::vector<double> k = per_channel_constant(*g.initializer(op.inputs[1 - xi]), w->rank(), m);
    if (k.empty()) continue;
    const int64_t per = w->numel() / m;
    Tensor nb(DType::kFloat32, {m});
    std::string wname = conv.input(1);
    if (op.op_type == "Mul") {
      Tensor nw = w->clone();
      for (int64_t c = 0; c < m; ++c)
        for (int64_t j = 0; j < per; ++j)
          nw.data<float>()[c * per + j] = static_cast<float>(w->data<float>()[c * per + j] * k[c]);
      wname = g.unique_name(conv.input(1) + "_affinefold");
      g.initializers[wname] = nw;
    }
    for (int64_t c = 0; c < m; ++c) {
      const double b0 = bias ? bias->data<float>()[c] : 0.0;
      nb.data<float>()[c] = static_cast<float>(op.op_type == "Mul" ? b0 * k[c] : b0 + k[c]);
    }
    const std::string bname = g.unique_name(conv.name.empty() ? "conv_bias_affinefold" : conv.name + "_bias_affinefold");
    g.initializers[bname] = nb;
    conv.inputs.resize(3);
    conv.inputs[1] = wname;
    conv.inputs[2] = bname;
    conv.outputs[0] = op.outputs[0];
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(ai));
    // Rescan from the conv (or the erased position): its new reader may fold too (Conv -> Mul -> Add). The
    // unsigned wrap of 0 - 1 is undone by the loop's ++.
    ai = std::min(static_cast<size_t>(pi), ai) - 1;
    ++folded;
  }
  if (folded) g.prune_unused_initializers();
  return folded;
}

// Dropout that computes its input unchanged, its mask unread (see remove_identities).
bool inference_dropout(const Model& model, const Node& n) {
  if (n.op_type != "Dropout" || !n.domain.empty() || n.inputs.empty() || n.outputs.empty()) return false;
  const Graph& g = model.graph;
  const int64_t opset = model.opset();
  if (opset < 7 && n.attr_int("is_test", 0) == 0) return false;
  if (opset >= 12 && !n.input(2).empty()) {
    const Tensor* t = g.initializer(n.input(2));
    if (!t || t->numel() != 1) return false;
    if (t->dtype() == DType::kBool ? t->data<bool>()[0] : t->to_f32().data<float>()[0] != 0.0f) return false;
  }
  if (n.outputs.size() > 1 && !n.outputs[1].empty()) {
    if (g.is_graph_output(n.outputs[1])) return false;
    for (const auto& m : g.nodes)
      for (const auto& in : m.inputs)
        if (in == n.outputs[1]) return false;
  }
  return true;
}

namespace {

int upcast_float16_graph(Graph& g) {
  int changed = 0;
  for (auto& [name, t] : g.initializers)
    if (is_half_type(t.dtype())) t = t.to_f32(), ++changed;
  for (auto* list : {&g.inputs, &g.outputs, &g.value_info})
    for (ValueInfo& v : *list)
      if (is_half_type(v.dtype)) v.dtype = DType::kFloat32, ++changed;
  for (Node& n : g.nodes) {
    if (!n.domain.empty() && n.domain != "ai.onnx") continue;
    for (auto& [key, value] : n.attrs) {
      if (auto* t = std::get_if<Tensor>(&value); t && is_half_type(t->dtype())) *t = t->to_f32(), ++changed;
      if (auto* sub = std::get_if<GraphRef>(&value)) {  // If/Loop/Scan bodies: widened copies
        Graph copy = **sub;
        if (const int c = upcast_float16_graph(copy)) *sub = std::make_shared<const Graph>(std::move(copy)), changed += c;
      }
    }
    if (n.op_type != "Cast") continue;
    auto to = n.attrs.find("to");
    if (to == n.attrs.end()) continue;
    if (auto* code = std::get_if<int64_t>(&to->second); code && (*code == 10 || *code == 16)) *code = 1, ++changed;  // (B)FLOAT16 -> FLOAT
    if (auto* name = std::get_if<std::string>(&to->second); name && *name == "FLOAT16") *name = "FLOAT", ++changed;
  }
  return changed;
}

}  // namespace

int upcast_float16(Model& model) { return upcast_float16_graph(model.graph); }

int remove_identities(Model& model) {
  Graph& g = model.graph;
  int removed = 0;
  for (size_t i = 0; i < g.nodes.size();) {
    Node& n = g.nodes[i];
    if ((n.op_type != "Identity" && !inference_dropout(model, n)) || g.is_graph_output(n.outputs[0])) {
      ++i;
      continue;
    }
    const std::string from = n.outputs[0], to = n.inputs[0];
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
    for (auto& m : g.nodes)
      for (auto& in : m.inputs)
        if (in == from) in = to;
    ++removed;
  }
  return removed;
}

std::string canonicalize(Model& model) {
  const int c = fold_constant_nodes(model);
  const int q = expand_contrib_qops(model);
  const int b = fold_batchnorm(model);
  const int id = remove_identities(model);
  model.graph.toposort();
  return "folded " + std::to_string(b) + " BatchNormalization, " + std::to_string(c) + " Constant; removed " +
         std::to_string(id) + " Identity/Dropout" + (q ? "; expanded " + std::to_string(q) + " com.microsoft QLinear*/QGemm to QDQ" : "");
}

}  // namespace perch::graph
