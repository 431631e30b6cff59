#include "perch/train/autograd.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <sstream>

#include "perch/core/error.h"

namespace perch::train {

void register_grad_ops(GradRegistry& r);  // grad_ops.cpp
void register_qat_ops(GradRegistry& r);   // qat.cpp

GradRegistry& GradRegistry::global() {
  static GradRegistry* r = [] {
    auto* g = new GradRegistry;
    register_grad_ops(*g);
    register_qat_ops(*g);
    return g;
  }();
  return *r;
}

void GradRegistry::add(const std::string& op_type, const std::string& domain, GradOp op) {
  ops_[(domain == "ai.onnx" ? "" : domain) + "::" + op_type] = std::move(op);
}

const GradOp* GradRegistry::find(const std::string& op_type, const std::string& domain) const {
  auto it = ops_.find((domain == "ai.onnx" ? "" : domain) + "::" + op_type);
  return it == ops_.end() ? nullptr : &it->second;
}

std::vector<std::string> GradRegistry::op_types() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : ops_) out.push_back(k.rfind("::", 0) == 0 ? k.substr(2) : k);
  return out;
}

std::vector<std::string> default_parameters(const graph::Model& model) {
  const auto& g = model.graph;
  std::set<std::string> seen;
  std::vector<std::string> out;
  auto take = [&](const std::string& v) {
    const Tensor* t = g.initializer(v);
    if (!t || t->dtype() != DType::kFloat32 || t->numel() == 0 || !seen.insert(v).second) return;
    out.push_back(v);
  };
  auto take_vector = [&](const std::string& v) {
    const Tensor* t = g.initializer(v);
    if (t && t->numel() > 1) take(v);
  };
  for (const auto& n : g.nodes) {
    if (!n.domain.empty() && n.domain != "ai.onnx") continue;
    if (n.op_type == "Conv" || n.op_type == "ConvTranspose" || n.op_type == "Gemm") take(n.input(1)), take(n.input(2));
    else if (n.op_type == "MatMul") take(n.input(0)), take(n.input(1));
    else if (n.op_type == "Add" || n.op_type == "Mul") take_vector(n.input(0)), take_vector(n.input(1));
    else if (n.op_type == "BatchNormalization") take(n.input(1)), take(n.input(2));
    else if (n.op_type == "PRelu") take(n.input(1));
  }
  return out;
}

Tape::Tape(graph::Model& model, std::vector<std::string> params) : model_(model), params_(std::move(params)) {
  for (const auto& p : params_) {
    const Tensor* t = model_.graph.initializer(p);
    PERCH_CHECK(t, model_.source, ": parameter '", p, "' is not an initializer of the model");
    PERCH_CHECK(t->dtype() == DType::kFloat32, model_.source, ": parameter '", p, "' is ", dtype_name(t->dtype()),
                ", only float32 initializers can be trained");
  }
  plan();
}

namespace {

constexpr size_t kNoOrigin = static_cast<size_t>(-1);

bool is_onnx(const graph::Node& n, const char* op) {
  return n.op_type == op && (n.domain.empty() || n.domain == "ai.onnx");
}

// Second rewrite (QAT graphs): Relu(x) -> v -> FakeQuantAct(v, scale, zp, lo, hi) -> w, where v feeds nothing
// else, is not a graph output and not a kept value, runs as one perch-domain ReluFakeQuantAct(x, scale, zp,
// lo, hi) -> w at the FakeQuantAct's place, taking its attributes (train/qat.cpp: same values, range updates
// and gradients bit for bit). It saves the Relu's output tensor and one forward and one backward pass over it.
void fuse_relu_fake_quant(const graph::Graph& g, const std::vector<std::string>& keep, std::vector<graph::Node>& nodes,
                          std::vector<size_t>& origin, std::vector<size_t>& pool_origin) {
  pool_origin.assign(nodes.size(), kNoOrigin);
  std::map<std::string, int> uses;
  std::map<std::string, size_t> consumer;
  for (size_t j = 0; j < nodes.size(); ++j)
    for (const auto& v : nodes[j].inputs)
      if (!v.empty()) ++uses[v], consumer[v] = j;
  std::vector<bool> drop(nodes.size(), false);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const graph::Node& relu = nodes[i];
    if (!is_onnx(relu, "Relu") || relu.inputs.size() != 1 || relu.outputs.size() != 1 || relu.inputs[0].empty()) continue;
    const std::string& v = relu.outputs[0];
    if (uses[v] != 1 || g.is_graph_output(v) || std::count(keep.begin(), keep.end(), v)) continue;
    graph::Node& fq = nodes[consumer.at(v)];
    if (fq.op_type != "FakeQuantAct" || fq.domain != "perch" || fq.inputs.size() != 5 || fq.inputs[0] != v) continue;
    if (fq.outputs.size() != 1 || fq.outputs[0].empty()) continue;
    fq.op_type = "ReluFakeQuantAct";
    fq.inputs[0] = relu.inputs[0];
    drop[i] = true;
  }
  // Third rewrite: ReluFakeQuantAct(x, ...) -> y -> MaxPool(y) -> p, where y feeds nothing else, is not a
  // graph output and not kept, and the MaxPool has no Indices output, runs as one ReluFakeQuantActMaxPool
  // -> p at the fake-quant's place (train/qat.cpp; its backward runs the pool's and the mask's per block of
  // planes in cache). The MaxPool's attributes are re-read each forward as "pool.<name>" (pool_origin).
  for (size_t j = 0; j < nodes.size(); ++j)
    for (const auto& v : nodes[j].inputs)
      if (!v.empty() && !drop[j]) consumer[v] = j;
  for (size_t i = 0; i < nodes.size(); ++i) {
    graph::Node& fq = nodes[i];
    if (drop[i] || fq.op_type != "ReluFakeQuantAct") continue;
    const std::string& y = fq.outputs[0];
    if (uses[y] != 1 || g.is_graph_output(y) || std::count(keep.begin(), keep.end(), y)) continue;
    const size_t j = consumer.at(y);
    graph::Node& pool = nodes[j];
    if (!is_onnx(pool, "MaxPool") || pool.inputs.size() != 1 || pool.inputs[0] != y) continue;
    if (pool.outputs.size() != 1 || pool.outputs[0].empty()) continue;  // no Indices output
    fq.op_type = "ReluFakeQuantActMaxPool";
    fq.outputs[0] = pool.outputs[0];
    pool_origin[i] = origin[j];
    drop[j] = true;
  }
  size_t k = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (drop[i]) continue;
    if (k != i) nodes[k] = std::move(nodes[i]), origin[k] = origin[i], pool_origin[k] = pool_origin[i];
    ++k;
  }
  nodes.resize(k);
  origin.resize(k);
  pool_origin.resize(k);
}

// The execution order of the Tape. First rewrite: Relu(x) -> v -> MaxPool(v) -> w, where v feeds nothing
// else, is not a graph output and not a kept value, runs as MaxPool(x) -> t -> Relu(t) -> w.
// Exact in value and in gradient: max and relu commute (relu is monotone; max of floats is exact); both
// orders send the gradient to the window's first maximum when it is > 0 and nowhere when it is <= 0
// (Relu's derivative is 0 at x <= 0, ties go to the first maximum in both). Padding (-inf) never wins
// in either order. It saves the Relu's forward and backward pass over the un-pooled tensor (4x the
// pooled one for 2x2 pools) and the memory that keeps it for backward.
std::vector<graph::Node> execution_nodes(const graph::Graph& g, const std::vector<std::string>& keep,
                                        std::vector<size_t>& origin, std::vector<size_t>& pool_origin) {
  std::vector<graph::Node> nodes = g.nodes;
  origin.resize(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) origin[i] = i;
  std::map<std::string, int> uses;
  for (const auto& n : nodes)
    for (const auto& v : n.inputs)
      if (!v.empty()) ++uses[v];
  std::map<std::string, size_t> consumer;
  for (size_t j = 0; j < nodes.size(); ++j)
    for (const auto& v : nodes[j].inputs)
      if (!v.empty()) consumer[v] = j;
  for (size_t i = 0; i < nodes.size(); ++i) {
    graph::Node& relu = nodes[i];
    if (!is_onnx(relu, "Relu") || relu.inputs.size() != 1 || relu.outputs.size() != 1) continue;
    const std::string v = relu.outputs[0];
    if (uses[v] != 1 || g.is_graph_output(v) || std::count(keep.begin(), keep.end(), v)) continue;
    graph::Node& pool = nodes[consumer.at(v)];
    if (!is_onnx(pool, "MaxPool") || pool.inputs.size() != 1 || pool.inputs[0] != v) continue;
    if (pool.outputs.size() != 1 || pool.outputs[0].empty()) continue;  // no Indices output
    const std::string x = relu.inputs[0], w = pool.outputs[0], t = v + "#pooled_before_relu";
    pool.inputs[0] = x;
    pool.outputs[0] = t;
    relu.inputs[0] = t;
    relu.outputs[0] = w;
    const size_t j = consumer.at(v);
    std::swap(relu, pool);  // the pool now runs at the Relu's place, the Relu at the pool's
    std::swap(origin[i], origin[j]);
  }
  fuse_relu_fake_quant(g, keep, nodes, origin, pool_origin);
  return nodes;
}

}  // namespace

void Tape::plan() {
  const auto& g = model_.graph;
  const auto& ops = runtime::builtin_registry();
  const int64_t opset = model_.opset();
  nodes_ = execution_nodes(g, keep_, origin_, pool_origin_);
  value_needs_.clear();
  for (const auto& p : params_) value_needs_[p] = true;
  for (const auto& k : keep_) value_needs_[k] = true;
  kernels_.assign(nodes_.size(), nullptr);
  grads_.assign(nodes_.size(), nullptr);
  node_needs_.assign(nodes_.size(), false);
  std::vector<std::string> missing;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const auto& n = nodes_[i];
    grads_[i] = GradRegistry::global().find(n.op_type, n.domain);
    kernels_[i] = ops.find(n.op_type, n.domain, opset);
    if (!kernels_[i] && !(grads_[i] && grads_[i]->forward))
      PERCH_FAIL(model_.source, ": ", n.describe(), ": op not supported by the executor");
    // The gradients broadcast NumPy-style: opset < 7's axis broadcast and per-channel PRelu slope have none here.
    if (opset < 7 && n.domain.empty() &&
        (n.op_type == "PRelu" || ((n.op_type == "Add" || n.op_type == "Sub" || n.op_type == "Mul" ||
                                   n.op_type == "Div" || n.op_type == "Pow") && n.attr_int("broadcast", 0) != 0)))
      PERCH_FAIL(model_.source, ": ", n.describe(), ": training does not take the opset-", opset,
                 " broadcast forms (quantize it, which raises the opset, or re-export at opset 7 or later)");
    bool needs = false;
    for (size_t j = 0; j < n.inputs.size(); ++j) {
      if (n.inputs[j].empty()) continue;
      auto it = value_needs_.find(n.inputs[j]);
      if (it == value_needs_.end() || !it->second) continue;
      if (grads_[i] && std::count(grads_[i]->non_differentiable.begin(), grads_[i]->non_differentiable.end(), j))
        continue;
      needs = true;
    }
    node_needs_[i] = needs;
    if (needs && !grads_[i]) missing.push_back(n.describe());
    for (const auto& o : n.outputs)
      if (!o.empty()) value_needs_[o] = needs;
  }
  if (!missing.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < missing.size(); ++i) os << (i ? ", " : "") << missing[i];
    PERCH_FAIL(model_.source, ": no gradient for ", missing.size(), " node(s) between the parameters and the outputs: ",
               os.str());
  }
}

Tensor& Tape::param(const std::string& name) {
  auto it = model_.graph.initializers.find(name);
  PERCH_CHECK(it != model_.graph.initializers.end(), "no parameter '", name, "'");
  return it->second;
}

TensorMap Tape::forward(const TensorMap& inputs, bool training) {
  auto& g = model_.graph;
  const int64_t opset = model_.opset();
  values_.clear();
  saved_.assign(nodes_.size(), {});
  // Attributes are read from the model at every forward: training schedules change them between steps
  // (e.g. qat_step_schedule freezes ranges and BN statistics).
  for (size_t i = 0; i < nodes_.size(); ++i) {
    nodes_[i].attrs = g.nodes[origin_[i]].attrs;
    if (pool_origin_[i] != kNoOrigin)
      for (const auto& [k, v] : g.nodes[pool_origin_[i]].attrs) nodes_[i].attrs["pool." + k] = v;
  }
  for (const auto& in : g.inputs) {
    auto it = inputs.find(in.name);
    PERCH_CHECK(it != inputs.end(), model_.source, ": no value given for graph input '", in.name, "'");
    values_[in.name] = it->second;
  }
  std::vector<const Tensor*> args;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const auto& n = nodes_[i];
    args.clear();
    for (const auto& v : n.inputs) {
      if (v.empty()) {
        args.push_back(nullptr);
        continue;
      }
      auto it = values_.find(v);
      if (it != values_.end()) {
        args.push_back(&it->second);
        continue;
      }
      const Tensor* t = g.initializer(v);
      PERCH_CHECK(t, model_.source, ": ", n.describe(), " reads '", v, "', which nothing produces");
      args.push_back(t);
    }
    std::vector<Tensor> outs;
    if (grads_[i] && grads_[i]->forward) {
      ForwardContext ctx;
      ctx.training = training;
      outs = grads_[i]->forward(n, args, opset, ctx);
      saved_[i] = std::move(ctx.saved);
      for (auto& [name, t] : ctx.updates) {
        Tensor* dst = &g.initializers.at(name);
        PERCH_CHECK(dst->numel() == t.numel(), n.describe(), ": state update of '", name, "' changes its size");
        std::copy(t.data<float>(), t.data<float>() + t.numel(), dst->data<float>());
      }
    } else {
      outs = (*kernels_[i])(n, args, opset);
    }
    PERCH_CHECK(outs.size() >= n.outputs.size() || outs.size() == 1, n.describe(), ": kernel returned ", outs.size(),
                " outputs");
    for (size_t j = 0; j < n.outputs.size() && j < outs.size(); ++j)
      if (!n.outputs[j].empty()) values_[n.outputs[j]] = std::move(outs[j]);
  }
  last_training_ = training;
  TensorMap out;
  for (const auto& o : g.outputs) {
    auto it = values_.find(o.name);
    if (it != values_.end()) out[o.name] = it->second;
    else if (const Tensor* t = g.initializer(o.name)) out[o.name] = *t;
  }
  return out;
}

namespace {

// grads[name] += g. A first gradient is stored as given (it may share storage with another gradient or a
// forward value, e.g. from Reshape or Identity); it is copied once, before the first addition into it.
void accumulate(TensorMap& grads, std::set<std::string>& owned, const std::string& name, Tensor g, const graph::Node& n) {
  auto it = grads.find(name);
  if (it == grads.end()) {
    grads.emplace(name, std::move(g));
    return;
  }
  Tensor& acc = it->second;
  PERCH_CHECK(acc.numel() == g.numel(), n.describe(), ": gradient of '", name, "' has ", g.numel(), " values, expected ",
              acc.numel());
  if (owned.insert(name).second) acc = acc.clone();
  float* a = acc.data<float>();
  const float* b = g.data<float>();
  for (int64_t i = 0; i < acc.numel(); ++i) a[i] += b[i];
}

}  // namespace

void Tape::backward(const TensorMap& grad_outputs) {
  auto& g = model_.graph;
  grad_.clear();
  for (const auto& [name, t] : grad_outputs) {
    PERCH_CHECK(g.is_graph_output(name), model_.source, ": backward() given a gradient for '", name,
                "', which is not a graph output");
    auto it = values_.find(name);
    PERCH_CHECK(it != values_.end(), "backward() before forward()");
    PERCH_CHECK(it->second.shape() == t.shape(), model_.source, ": gradient of output '", name, "' has shape ",
                shape_str(t.shape()), ", the output ", shape_str(it->second.shape()));
    grad_[name] = t;
  }
  const std::set<std::string> keep(keep_.begin(), keep_.end());
  const std::set<std::string> params(params_.begin(), params_.end());
  std::set<std::string> owned;
  std::vector<const Tensor*> ins, outs, gouts;
  for (size_t ii = nodes_.size(); ii-- > 0;) {
    if (!node_needs_[ii]) continue;
    const auto& n = nodes_[ii];
    gouts.clear();
    outs.clear();
    bool any = false;
    for (const auto& o : n.outputs) {
      auto it = o.empty() ? grad_.end() : grad_.find(o);
      gouts.push_back(it == grad_.end() ? nullptr : &it->second);
      any |= it != grad_.end();
      auto vt = o.empty() ? values_.end() : values_.find(o);
      outs.push_back(vt == values_.end() ? nullptr : &vt->second);
    }
    if (!any) continue;
    ins.clear();
    std::vector<bool> needs;
    for (size_t j = 0; j < n.inputs.size(); ++j) {
      const auto& v = n.inputs[j];
      if (v.empty()) {
        ins.push_back(nullptr);
        needs.push_back(false);
        continue;
      }
      auto it = values_.find(v);
      ins.push_back(it != values_.end() ? &it->second : g.initializer(v));
      auto nt = value_needs_.find(v);
      const bool nd = std::count(grads_[ii]->non_differentiable.begin(), grads_[ii]->non_differentiable.end(), j) != 0;
      needs.push_back(!nd && nt != value_needs_.end() && nt->second);
    }
    GradArgs args{n, model_.opset(), ins, outs, gouts, saved_[ii], needs, last_training_};
    std::vector<Tensor> res = grads_[ii]->backward(args);
    // The node's output gradients are no longer needed (each value has one producer).
    for (const auto& o : n.outputs)
      if (!o.empty() && !keep.count(o) && !params.count(o)) grad_.erase(o);
    for (size_t j = 0; j < n.inputs.size() && j < res.size(); ++j) {
      if (!needs[j] || res[j].empty()) continue;
      PERCH_CHECK(res[j].numel() == ins[j]->numel(), n.describe(), ": gradient of input ", j, " has ", res[j].numel(),
                  " values for ", shape_str(ins[j]->shape()));
      accumulate(grad_, owned, n.inputs[j], res[j].shape() == ins[j]->shape() ? res[j] : res[j].reshaped(ins[j]->shape()), n);
    }
  }
  for (const auto& p : params_)
    if (!grad_.count(p)) grad_[p] = Tensor(DType::kFloat32, g.initializers.at(p).shape());
}

const Tensor& Tape::grad(const std::string& name) const {
  auto it = grad_.find(name);
  PERCH_CHECK(it != grad_.end(), "no gradient for '", name, "' (not a parameter, or not kept)");
  return it->second;
}

double softmax_cross_entropy(const Tensor& logits, std::span<const int64_t> labels, Tensor* dlogits,
                             float label_smoothing) {
  PERCH_CHECK(logits.rank() == 2, "softmax_cross_entropy: logits must be [N, C], got ", shape_str(logits.shape()));
  const int64_t n = logits.dim(0), c = logits.dim(1);
  PERCH_CHECK(static_cast<int64_t>(labels.size()) == n, "softmax_cross_entropy: ", labels.size(), " labels for ", n,
              " rows of logits");
  PERCH_CHECK(label_smoothing >= 0.0f && label_smoothing < 1.0f, "label smoothing must be in [0, 1)");
  const Tensor l = logits.to_f32();
  const float* x = l.data<float>();
  if (dlogits) *dlogits = Tensor::uninitialized(DType::kFloat32, {n, c});
  double total = 0.0;
  std::vector<double> p(static_cast<size_t>(c));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = labels[static_cast<size_t>(i)];
    PERCH_CHECK(y >= 0 && y < c, "softmax_cross_entropy: label ", y, " of row ", i, " is outside [0, ", c, ")");
    const float* r = x + i * c;
    double mx = r[0];
    for (int64_t j = 1; j < c; ++j) mx = std::max(mx, static_cast<double>(r[j]));
    double z = 0.0;
    for (int64_t j = 0; j < c; ++j) z += p[static_cast<size_t>(j)] = std::exp(r[j] - mx);
    const double logz = std::log(z) + mx;
    double loss = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      const double t = (j == y ? 1.0 - label_smoothing : 0.0) + label_smoothing / static_cast<double>(c);
      loss -= t * (r[j] - logz);
      if (dlogits)
        dlogits->data<float>()[i * c + j] = static_cast<float>((p[static_cast<size_t>(j)] / z - t) / static_cast<double>(n));
    }
    total += loss;
  }
  return n > 0 ? total / static_cast<double>(n) : 0.0;
}

}  // namespace perch::train
