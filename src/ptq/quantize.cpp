#include "perch/ptq/quantize.h"

#include "perch/ptq/adaround.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/range_search.h"
#include "perch/ptq/validate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>

#include "perch/core/progress.h"
#include "perch/graph/passes.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/op_geometry.h"

namespace perch::ptq {

using graph::Graph;
using graph::Model;
using graph::Node;

namespace {

bool is_weight_op(const std::string& op) { return quantizes_weights(op); }
bool is_fusable_activation(const Node& n) { return n.op_type == "Relu" || n.op_type == "Clip"; }
// Ops whose output values are a subset/rearrangement of their input's: the output reuses the input's
// quantization parameters (so the integer runtime runs them on the integers directly).
bool is_passthrough(const std::string& op) {
  return op == "MaxPool" || op == "Reshape" || op == "Flatten" || op == "Transpose" || op == "Squeeze" ||
         op == "Unsqueeze" || op == "Identity" || op == "GlobalMaxPool";
}

// Input positions of `n` that carry float activations worth quantizing.
std::vector<size_t> data_inputs(const Node& n, const Graph& g) {
  const std::string& op = n.op_type;
  std::vector<size_t> out;
  auto add_if_activation = [&](size_t i) {
    if (i < n.inputs.size() && !n.inputs[i].empty() && !g.is_initializer(n.inputs[i])) out.push_back(i);
  };
  if (op == "Conv" || op == "ConvTranspose" || op == "Gemm") {
    add_if_activation(0);
    add_if_activation(1);
  } else if (op == "MatMul" || op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Concat" ||
             op == "Max" || op == "Min") {
    for (size_t i = 0; i < n.inputs.size(); ++i) add_if_activation(i);
  } else if (op == "Relu" || op == "Clip" || op == "LeakyRelu" || op == "Sigmoid" || op == "HardSigmoid" ||
             op == "HardSwish" || op == "MaxPool" || op == "AveragePool" || op == "GlobalAveragePool" ||
             op == "GlobalMaxPool" || op == "Flatten" || op == "Reshape" || op == "Transpose" || op == "Squeeze" ||
             op == "Unsqueeze" || op == "Softmax" || op == "Identity" || op == "Tanh") {
    add_if_activation(0);
  }
  return out;
}

// Values that hold float32 at run time, by forward propagation of element types from the graph inputs and
// initializers: shape arithmetic (Shape -> Gather/Slice -> Cast -> Concat -> Reshape, as exporters write
// dynamic reshapes) carries int64/bool values through ops that otherwise read activations, and those are
// not quantized. Ops not listed keep their first input's type.
std::set<std::string> float_values(const Graph& g) {
  std::map<std::string, bool> is_float;
  for (const auto& in : g.inputs) is_float[in.name] = in.dtype == DType::kFloat32;
  for (const auto& [name, t] : g.initializers) is_float[name] = t.dtype() == DType::kFloat32;
  auto input_float = [&](const Node& n, size_t i) {
    if (i >= n.inputs.size() || n.inputs[i].empty()) return false;
    auto it = is_float.find(n.inputs[i]);
    return it == is_float.end() || it->second;
  };
  static const std::set<std::string> integer_ops = {"Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Equal", "Less",
      "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf"};
  for (const Node& n : g.nodes) {
    bool f;
    if (integer_ops.count(n.op_type)) f = false;
    else if (n.op_type == "Cast") f = n.attr_int("to", 1) == 1;  // TensorProto FLOAT
    else if (n.op_type == "ConstantOfShape") {
      const Tensor* v = n.attr_tensor("value");
      f = !v || v->dtype() == DType::kFloat32;
    } else if (n.op_type == "Where") f = input_float(n, 1);
    else f = input_float(n, 0);
    for (size_t i = 0; i < n.outputs.size(); ++i)
      if (!n.outputs[i].empty()) is_float[n.outputs[i]] = f && (i == 0 || n.op_type != "TopK");
  }
  std::set<std::string> out;
  for (const auto& [name, f] : is_float)
    if (f) out.insert(name);
  return out;
}

// Elementwise chains. A node is a chain op when it is elementwise (Add, Sub, Mul, Div, Clip, Relu,
// LeakyRelu, HardSigmoid, HardSwish, Sigmoid, Tanh, Neg, Abs), its constant inputs are scalars (one element:
// the op is then the same function on every element, so the whole chain is y = f(x) elementwise), and its
// other inputs all derive from one root value x: root(v) = x for v made by a chain op from values of root x,
// root(v) = v otherwise. Hardswish as exporters write it —
//   x * Clip(x + 3, 0, 6) / 6,  x * (Clip(x + 3, 0, 6) * (1/6)),  x * HardSigmoid(x)
// — followed by PaddlePaddle's scalar scale/shift (Mul, Add) is one chain of root x (the conv output).
// A chain value is inside when every reader is a chain op of the same root and it is not a graph output:
// such values get no Q/DQ; the root (the chain's input) and the values leaving the chain do, as a deployed
// int8 graph computes f on the 8-bit input and rounds once (ONNX Runtime / TFLite fuse hardswish whole).
// Per-channel constants end the chain: a chain with them is no single function of x.
struct Chains {
  std::map<std::string, std::string> root;  // chain value -> its root
  std::map<size_t, std::string> node_root;  // chain op node -> its root
  std::set<std::string> inside;             // chain values that get no Q/DQ
};

Chains find_chains(const Graph& g) {
  static const std::set<std::string> chain_ops = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu",
      "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Neg", "Abs"};
  Chains ch;
  auto root_of = [&](const std::string& v) {
    auto it = ch.root.find(v);
    return it == ch.root.end() ? v : it->second;
  };
  auto chain_root_of = [&](const Node& n) -> std::string {  // "" when n is not a chain op
    if (!chain_ops.count(n.op_type) || n.outputs.size() != 1 || n.outputs[0].empty()) return "";
    std::string r;
    for (const auto& in : n.inputs) {
      if (in.empty()) continue;
      if (const Tensor* c = g.initializer(in)) {
        if (c->numel() != 1 || c->dtype() != DType::kFloat32) return "";
        continue;
      }
      const std::string ri = root_of(in);
      if (!r.empty() && ri != r) return "";
      r = ri;
    }
    return r;
  };
  for (size_t i = 0; i < g.nodes.size(); ++i) {  // toposorted: inputs' roots are known
    const std::string r = chain_root_of(g.nodes[i]);
    if (r.empty()) continue;
    ch.node_root[i] = r;
    ch.root[g.nodes[i].outputs[0]] = r;
  }
  for (const auto& [v, r] : ch.root) {
    if (g.is_graph_output(v)) continue;
    const auto cons = g.consumers(v);
    bool all_in = !cons.empty();
    for (size_t c : cons) {
      auto it = ch.node_root.find(c);
      if (it == ch.node_root.end() || it->second != r) all_in = false;
    }
    if (all_in) ch.inside.insert(v);
  }
  return ch;
}

// Normalizations written out as elementwise ops (PaddlePaddle's exporter, PyTorch before LayerNormalization):
//   layer norm  m = ReduceMean(x), d = x - m, v = ReduceMean(d^2) [+ eps], s = Sqrt(v), n = d / s [* g] [+ b]
//   RMS norm    the same with d = x (no m)
// with d^2 as Pow(d, 2) or Mul(d, d), both ReduceMeans over the same axes, g and b constants. A deployed int8 graph
// runs a normalization as one float op between its 8-bit input and output (ONNX Runtime fuses the pattern into
// LayerNormalization when nothing sits inside it; perch's integer executor runs these ops in float in any case), so
// Q/DQ on the inner values only adds roundings — the worst on the per-row statistics: one per-tensor scale for the
// variances of all rows gives a row whose variance is far below the largest a few of its levels, and that error
// scales the whole normalized row. The inner values are m, d, d^2, v, v + eps, s, and n (and n * g) when the affine
// follows; each is left without Q/DQ only when every reader is a node of the same normalization and it is not a
// graph output. x and the last value (the normalization's output) are quantized as any value.
std::set<std::string> find_normalization_insides(const Graph& g) {
  std::set<std::string> inside;
  auto scalar = [&](const std::string& v, float* value) {
    const Tensor* t = g.initializer(v);
    if (!t || t->numel() != 1 || t->dtype() != DType::kFloat32) return false;
    if (value) *value = t->data<float>()[0];
    return true;
  };
  auto made_by = [&](const std::string& v, const char* op) -> const Node* {
    const int64_t p = g.producer(v);
    if (p < 0 || g.nodes[static_cast<size_t>(p)].op_type != op) return nullptr;
    const Node& n = g.nodes[static_cast<size_t>(p)];
    return n.outputs.size() == 1 ? &n : nullptr;
  };
  // Axes and keepdims of a ReduceMean (attribute before opset 18, constant input after); false when not constant.
  auto reduce_key = [&](const Node& n, std::vector<int64_t>* key) {
    *key = n.attr_ints("axes");
    if (!n.input(1).empty()) {
      const Tensor* a = g.initializer(n.input(1));
      if (!a || a->dtype() != DType::kInt64) return false;
      for (int64_t i = 0; i < a->numel(); ++i) key->push_back(a->data<int64_t>()[i]);
    }
    key->push_back(n.attr_int("keepdims", 1) + 1000);  // keepdims, apart from any axis
    return true;
  };
  for (const Node& div : g.nodes) {
    if (div.op_type != "Div" || div.inputs.size() != 2 || div.outputs.size() != 1) continue;
    const std::string& d = div.inputs[0];
    std::vector<const Node*> members = {&div};
    const Node* sqrt = made_by(div.inputs[1], "Sqrt");
    if (!sqrt) continue;
    members.push_back(sqrt);
    std::string v = sqrt->inputs[0];
    if (const Node* eps = made_by(v, "Add")) {  // + eps
      const bool first = scalar(eps->inputs[1], nullptr), second = scalar(eps->inputs[0], nullptr);
      if (!first && !second) continue;
      members.push_back(eps);
      v = eps->inputs[first ? 0 : 1];
    }
    const Node* var = made_by(v, "ReduceMean");
    std::vector<int64_t> var_key;
    if (!var || !reduce_key(*var, &var_key)) continue;
    members.push_back(var);
    const Node* sq = made_by(var->inputs[0], "Pow");
    float two = 0;
    if (sq && !(sq->inputs[0] == d && scalar(sq->input(1), &two) && two == 2.0f)) sq = nullptr;
    if (!sq) {
      sq = made_by(var->inputs[0], "Mul");
      if (sq && !(sq->inputs.size() == 2 && sq->inputs[0] == d && sq->inputs[1] == d)) sq = nullptr;
    }
    if (!sq) continue;
    members.push_back(sq);
    if (const Node* sub = made_by(d, "Sub")) {  // layer norm: d = x - ReduceMean(x) over the same axes
      const Node* mean = made_by(sub->input(1), "ReduceMean");
      std::vector<int64_t> mean_key;
      if (mean && mean->inputs[0] == sub->inputs[0] && reduce_key(*mean, &mean_key) && mean_key == var_key) {
        members.push_back(sub);
        members.push_back(mean);
      }
    }
    // The affine after it: * g, + b (constants), each the only reader of the value before it.
    const Node* last = &div;
    for (const char* op : {"Mul", "Add"}) {
      const auto cons = g.consumers(last->outputs[0]);
      if (cons.size() != 1) break;
      const Node& c = g.nodes[cons[0]];
      if (c.op_type != op || c.inputs.size() != 2 || c.outputs.size() != 1) break;
      const std::string& other = c.inputs[0] == last->outputs[0] ? c.inputs[1] : c.inputs[0];
      if (!g.initializer(other)) break;
      members.push_back(&c);
      last = &c;
    }
    std::set<const Node*> in_norm(members.begin(), members.end());
    for (const Node* n : members) {
      const std::string& out = n->outputs[0];
      if (n == last || g.is_graph_output(out)) continue;
      bool all_in = true;
      for (size_t c : g.consumers(out)) all_in &= in_norm.count(&g.nodes[c]) != 0;
      if (all_in) inside.insert(out);
    }
  }
  return inside;
}

// The range of a chain's root that matters. A chain computes y = f(x) elementwise; where f is constant below
// some lo (hardswish: f(x) = 0 for x <= -3; Relu: for x <= 0) or above some hi (Clip), every x beyond gives
// the same y, so the root's 8-bit grid need only span [lo, hi]: calibration clamps the root's observed values
// to [lo, hi] (the values outside still quantize to the end of the grid, where f has the same value). Without
// it a conv output feeding hardswish spends most of its 256 levels on negative values hardswish maps to 0.
// f is evaluated with the executor's own kernels on a grid of x in [-kSpan, kSpan] (step 2^-6), only for
// chains of piecewise-linear ops (for those, constant over [-kSpan, lo] means constant below -kSpan too); lo
// is the largest grid point up to which every end of the chain equals its value at -kSpan (so lo is at or
// below the true breakpoint: clamping there is exact), -inf when f already varies there; hi likewise.
struct Clamp {
  float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
};

std::map<std::string, Clamp> chain_root_clamps(const Model& m, const Chains& ch) {
  static const std::set<std::string> piecewise_linear = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "HardSigmoid",
                                                         "HardSwish", "Neg"};
  const Graph& g = m.graph;
  constexpr float kSpan = 128.0f;
  constexpr int64_t kPoints = 2 * 128 * 64 + 1;
  std::map<std::string, std::vector<size_t>> nodes_of;  // root -> its chain's nodes, graph order
  for (const auto& [ni, r] : ch.node_root) nodes_of[r].push_back(ni);
  std::map<std::string, Clamp> out;
  const auto& registry = runtime::builtin_registry();  // registers the kernels on first use
  for (const auto& [r, nodes] : nodes_of) {
    // The root must be read by its chain only (another reader would need its whole range).
    bool only_chain = !g.is_graph_output(r);
    for (size_t c : g.consumers(r)) {
      auto it = ch.node_root.find(c);
      if (it == ch.node_root.end() || it->second != r) only_chain = false;
    }
    for (size_t ni : nodes) only_chain &= piecewise_linear.count(g.nodes[ni].op_type) != 0;
    if (!only_chain) continue;
    std::map<std::string, Tensor> vals;
    Tensor grid(DType::kFloat32, {kPoints});
    for (int64_t i = 0; i < kPoints; ++i) grid.data<float>()[i] = -kSpan + static_cast<float>(i) / 64.0f;
    vals[r] = grid;
    bool ok = true;
    for (size_t ni : nodes) {
      const Node& n = g.nodes[ni];
      std::vector<const Tensor*> args;
      for (const auto& in : n.inputs) {
        if (in.empty()) args.push_back(nullptr);
        else if (auto it = vals.find(in); it != vals.end()) args.push_back(&it->second);
        else args.push_back(g.initializer(in));
      }
      const runtime::OpKernel* k = registry.find(n.op_type, n.domain, m.opset());
      if (!k) {
        ok = false;
        break;
      }
      try {
        vals[n.outputs[0]] = (*k)(n, args, m.opset()).at(0);
      } catch (const Error&) {
        ok = false;
        break;
      }
      if (vals[n.outputs[0]].numel() != kPoints) ok = false;
    }
    if (!ok) continue;
    int64_t first = kPoints - 1, last = 0;  // f constant on grid [0, first] and [last, kPoints-1]
    for (const auto& [v, vr] : ch.root) {
      if (vr != r || ch.inside.count(v)) continue;  // the chain's ends
      const float* y = vals.at(v).data<float>();
      int64_t a = 0, b = kPoints - 1;
      while (a + 1 < kPoints && y[a + 1] == y[0]) ++a;
      while (b > 0 && y[b - 1] == y[kPoints - 1]) --b;
      first = std::min(first, a);
      last = std::max(last, b);
    }
    Clamp c;
    if (first > 0) c.lo = grid.data<float>()[first];
    if (last < kPoints - 1) c.hi = grid.data<float>()[last];
    if (c.lo < c.hi && (first > 0 || last < kPoints - 1)) out[r] = c;
  }
  return out;
}

quant::QuantSpec activation_spec_impl(const ActivationOptions& o) {
  quant::QuantSpec s;
  s.bits = o.bits;
  s.is_signed = o.is_signed;
  s.symmetric = false;
  s.granularity = quant::Granularity::kPerTensor;
  s.validate();
  return s;
}


Tensor scale_tensor(const quant::QuantParams& p) {
  return Tensor::from<float>(p.param_shape, p.scale);
}

Tensor zero_point_tensor(const quant::QuantParams& p, DType dt) {
  Tensor z(dt, p.param_shape);
  for (int64_t i = 0; i < z.numel(); ++i) {
    switch (dt) {
      case DType::kInt8: z.data<int8_t>()[i] = static_cast<int8_t>(p.zero_point[i]); break;
      case DType::kUInt8: z.data<uint8_t>()[i] = static_cast<uint8_t>(p.zero_point[i]); break;
      case DType::kInt16: z.data<int16_t>()[i] = static_cast<int16_t>(p.zero_point[i]); break;
      case DType::kUInt16: z.data<uint16_t>()[i] = static_cast<uint16_t>(p.zero_point[i]); break;
      case DType::kInt32: z.data<int32_t>()[i] = p.zero_point[i]; break;
      default: PERCH_FAIL("zero point type ", dtype_name(dt), " not supported");
    }
  }
  return z;
}

// Adds a DequantizeLinear reading `qname` with `p`'s parameters; returns its output name.
std::string add_dequantize(Graph& g, const std::string& base, const std::string& qname, const quant::QuantParams& p,
                           DType zp_type) {
  const std::string s = g.unique_name(base + "_scale"), z = g.unique_name(base + "_zero_point");
  g.initializers[s] = scale_tensor(p);
  g.initializers[z] = zero_point_tensor(p, zp_type);
  Node dq;
  dq.op_type = "DequantizeLinear";
  dq.name = g.unique_name(base + "_DequantizeLinear");
  dq.inputs = {qname, s, z};
  dq.outputs = {g.unique_name(base + "_dequantized")};
  if (p.spec.granularity != quant::Granularity::kPerTensor) dq.attrs["axis"] = p.axis;
  if (p.spec.granularity == quant::Granularity::kPerGroup) dq.attrs["block_size"] = p.spec.group_size;
  g.nodes.push_back(dq);
  return dq.outputs[0];
}

}  // namespace

double sqnr_db(const Tensor& w, const Tensor& fq) {
  double sig = 0, err = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    const double a = w.data<float>()[i], b = fq.data<float>()[i];
    sig += a * a;
    err += (a - b) * (a - b);
  }
  if (err == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(sig / err);
}

namespace {

// Ops whose semantics are identical from their introduction up to opset 21 for the attributes perch
// reads — raising the opset of a model made only of these (plus the ones converted below) is exact.
// (Cast: later versions only add types and the float8 `saturate`; Pow: types; ConvTranspose, HardSigmoid,
// Sqrt, Erf...: types only.)
bool opset_stable(const std::string& op) {
  static const std::set<std::string> ok = {
      "Conv", "Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
      "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
      "Concat", "Identity", "Constant", "Transpose", "Shape", "Gather", "Tanh", "Exp", "Sqrt", "Abs", "Neg",
      "QuantizeLinear", "DequantizeLinear", "Max", "Min", "Reciprocal", "Cast", "Pow", "ConvTranspose", "Erf",
      "Log", "Floor", "Ceil", "Sin", "Cos", "Tile", "Expand", "Where", "Equal", "Less", "Greater", "Not", "Range",
      "ConstantOfShape", "Size", "PRelu", "Elu", "Selu", "Softplus", "Softsign", "InstanceNormalization",
      "Sum", "Mean",  // Sum/Mean 6 -> 8: broadcasting added, a superset
      // Later versions add types, negative axes or attributes whose default is the old behaviour: ArgMax/ArgMin
      // (select_last_index 12), DepthToSpace (mode 11, default DCR), GatherND (batch_dims 12), ScatterElements /
      // ScatterND (reduction 16, default none), Compress / OneHot (negative axis 11).
      "ArgMax", "ArgMin", "DepthToSpace", "SpaceToDepth", "Compress", "OneHot", "CumSum", "GatherElements",
      "GatherND", "ScatterElements", "ScatterND", "NonZero", "EyeLike", "Mod", "Round", "Sign", "IsNaN", "IsInf",
      "Shrink", "ThresholdedRelu", "Celu", "Acos", "Asin", "Atan", "Tan", "Cosh", "Sinh", "Acosh", "Asinh", "Atanh",
      "And", "Or", "Xor", "GreaterOrEqual", "LessOrEqual", "MeanVarianceNormalization", "Trilu",
      "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
      "LRN", "NonMaxSuppression", "Einsum", "MaxUnpool", "Det", "Unique", "ReverseSequence", "BitShift", "STFT",
      "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix", "NegativeLogLikelihoodLoss",
      "SoftmaxCrossEntropyLoss",  // later versions change nothing they compute
      // introduced at or after 13: a model that has them is already there
      "CastLike", "LayerNormalization", "Mish", "Gelu"};
  return ok.count(op) != 0;
}

bool is_reduce(const std::string& op) {
  return op == "ReduceSum" || op == "ReduceMean" || op == "ReduceMax" || op == "ReduceMin" || op == "ReduceProd" ||
         op == "ReduceL1" || op == "ReduceL2" || op == "ReduceLogSum" || op == "ReduceLogSumExp" ||
         op == "ReduceSumSquare";
}

// Moves an ints attribute `key` of `n` into a new int64 initializer input (appended); "" when absent.
void attribute_to_input(Graph& g, Node& n, const std::string& key) {
  if (!n.has_attr(key)) {
    n.inputs.push_back("");
    return;
  }
  const auto v = n.attr_ints(key);
  const std::string name = g.unique_name(n.name + "_" + key);
  g.initializers[name] = Tensor::from<int64_t>({static_cast<int64_t>(v.size())}, v);
  n.inputs.push_back(name);
  n.attrs.erase(key);
}

// Shape of value `v` where the model declares it (inputs, outputs, value_info; -1 for unknown dims), else null;
// through QuantizeLinear / DequantizeLinear (the QDQ export raises the opset after inserting them).
const Shape* declared_shape(const Graph& g, const std::string& v) {
  std::string cur = v;
  for (size_t step = 0; step <= g.nodes.size(); ++step) {
    for (const auto* list : {&g.inputs, &g.outputs, &g.value_info})
      for (const auto& vi : *list)
        if (vi.name == cur && vi.has_shape) return &vi.shape;
    const int64_t p = g.producer(cur);
    if (p < 0 || (g.nodes[p].op_type != "QuantizeLinear" && g.nodes[p].op_type != "DequantizeLinear")) return nullptr;
    cur = g.nodes[p].input(0);
  }
  return nullptr;
}
// Rank of value `v` where the model declares its shape, else -1.
int64_t declared_rank(const Graph& g, const std::string& v) {
  const Shape* s = declared_shape(g, v);
  return s ? static_cast<int64_t>(s->size()) : -1;
}

// Upsample (7: `scales` attribute; 9: `scales` input; gone from 10) and Resize-10 (X, scales) map output index x to
// the source coordinate x / scale (asymmetric) and take the nearest pixel by truncation when upsampling, by ceil
// when downsampling (ONNX Runtime's reading of those versions, and perch's executor's). Raised to 10, an Upsample
// becomes that Resize-10; raised to 11 or later, either becomes Resize(X, roi "", scales) with
// coordinate_transformation_mode "asymmetric" and nearest_mode "floor" (every scale >= 1) or "ceil" (every scale
// <= 1), which computes the same (perch's executor: the same taps; `linear` needs no nearest mode). A nearest
// Resize-10 whose scales are computed at run time, or that shrinks one axis and grows another, has no such form:
// refused by name.
void raise_legacy_resize(const Model& m, Graph& g, Node& n, int64_t from, int64_t target) {
  auto refuse = [&](const std::string& why) {
    PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(), " ", why);
  };
  std::string mode = n.attr_string("mode", "nearest");
  if (mode == "bilinear") mode = "linear";  // an early exporters' spelling, as the executor reads it
  if (mode != "nearest" && mode != "linear") refuse("has mode '" + mode + "'");
  std::string scales;
  if (n.op_type == "Upsample" && from < 9) {
    PERCH_CHECK(n.has_attr("scales"), m.source, ": ", n.describe(), " has no scales");
    scales = g.unique_name(n.name + "_scales");
    const auto v = n.attr_floats("scales");
    g.initializers[scales] = Tensor::from<float>({static_cast<int64_t>(v.size())}, v);
    n.attrs.erase("scales");
  } else {
    if (n.inputs.size() < 2 || n.inputs[1].empty()) refuse("has no scales input");
    scales = n.inputs[1];
  }
  n.attrs.clear();
  n.attrs["mode"] = mode;
  if (target < 11) {  // Upsample -> Resize-10: the same attributes and inputs
    n.op_type = "Resize";
    n.inputs = {n.inputs[0], scales};
    return;
  }
  n.attrs["coordinate_transformation_mode"] = std::string("asymmetric");
  if (mode == "nearest") {
    bool up = true, down = true;
    if (n.op_type == "Resize") {
      const Tensor* s = g.initializer(scales);
      if (!s || s->dtype() != DType::kFloat32) refuse("computes its scales at run time (nearest pixel by truncation or ceil per axis: no opset-11 form without their values)");
      for (float v : s->span<float>()) up &= v >= 1.0f, down &= v <= 1.0f;
      if (!up && !down) refuse("shrinks one axis and grows another (nearest by ceil on one, truncation on the other: no opset-11 form)");
    }
    n.attrs["nearest_mode"] = std::string(up ? "floor" : "ceil");
  }
  n.op_type = "Resize";
  n.inputs = {n.inputs[0], "", scales};
}

bool is_legacy_broadcast_op(const std::string& op) {
  return op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow" || op == "And" || op == "Or" ||
         op == "Xor" || op == "Equal" || op == "Greater" || op == "Less";
}

// A binary op before 7 (runtime's legacy_broadcast_operand): `broadcast` 0 means equal shapes and `broadcast` 1
// without `axis` suffix alignment, both what NumPy broadcasting computes — the attributes just go. With an `axis`
// that is not the suffix position, B's dims sit at A's dims axis..: a B initializer gets trailing 1s (a new
// initializer, exact); needs A's rank from the model's declared shapes. Anything else is refused by name.
void raise_legacy_broadcast(const Model& m, Graph& g, Node& n, int64_t from, int64_t target) {
  const bool bc = n.attr_int("broadcast", 0) != 0, has_axis = n.has_attr("axis");
  const std::string& b = n.input(1);
  const Tensor* bt = g.initializer(b);
  if (bc && has_axis) {
    const int64_t ra = declared_rank(g, n.input(0));
    const int64_t rb = bt ? bt->rank() : declared_rank(g, b);
    if (ra < 0 || rb < 0)
      PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
                 " broadcasts at axis ", n.attr_int("axis", 0), " and the ranks of its inputs are not declared");
    const int64_t axis = n.attr_int("axis", 0), trailing = ra - axis - rb;
    if (trailing > 0) {
      if (!bt)
        PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
                   " broadcasts a computed B at axis ", axis);
      Shape s = bt->shape();
      s.resize(s.size() + static_cast<size_t>(trailing), 1);
      const std::string name = g.unique_name(b + "_aligned");
      g.initializers[name] = bt->reshaped(s).clone();
      n.inputs[1] = name;
    }
  }
  n.attrs.erase("broadcast");
  n.attrs.erase("axis");
}

// PRelu before 7 (runtime's legacy_prelu_slope): a rank-1 slope of X.dim(1) = C > 1 values is per channel (axis 1);
// from 7 the slope broadcasts NumPy-style, so it becomes [C, 1, ..., 1] (a new initializer). Needs X's declared
// shape (its rank and dim 1) to tell which reading applies; a slope of one value stays.
void raise_legacy_prelu(const Model& m, Graph& g, Node& n, int64_t from, int64_t target) {
  const Tensor* s = g.initializer(n.input(1));
  if (s && s->numel() == 1) return;  // one slope for every element
  const Shape* xs = declared_shape(g, n.input(0));
  if (!s || s->rank() != 1 || !xs || xs->size() < 2 || (*xs)[1] < 0)
    PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
               " needs a one-dimensional slope initializer and its input's declared shape (to read the slope per channel)");
  if ((*xs)[1] != s->numel()) return;  // not per channel: NumPy broadcasting, as the executor reads it too
  const int64_t rank = static_cast<int64_t>(xs->size());
  Shape shape(static_cast<size_t>(rank - 1), 1);
  shape[0] = s->numel();
  const std::string name = g.unique_name(n.input(1) + "_per_channel");
  g.initializers[name] = s->reshaped(shape).clone();
  n.inputs[1] = name;
}

}  // namespace

// Raises the default-domain opset to `target`, converting the ops whose form changed on the way (a form
// change at version V applies when from < V <= target): Clip (11: min/max
// attributes -> inputs), Squeeze/Unsqueeze (13: axes attribute -> input), Reshape (5: shape attribute
// -> input), Slice (10: starts/ends/axes attributes -> inputs), ReduceSum (13) and the other Reduce*
// (18: axes attribute -> input). Softmax/LogSoftmax/Hardmax below 13 coerce the
// input to 2-D at `axis` (default 1): kept as they are when that axis is the last one (axis -1, or
// rank-1 where the rank is declared) — both definitions agree there —, otherwise rewritten exactly as
// Flatten(axis) -> op(axis -1) -> Reshape(Shape(x)). Resize from 11 is kept unless it uses
// tf_half_pixel_for_nn (gone in 13). Attributes later versions dropped go where their meaning is the default
// (PyTorch's early exporters wrote opset 6): `consumed_inputs` (6), Gemm's `broadcast` (7: C always broadcasts
// unidirectionally, a superset), BatchNormalization's and Dropout's `is_test` (7: inference only) and
// BatchNormalization's `spatial` (9: only 1, per-channel statistics, stays); Concat without `axis` (4) gets
// its old default 1. Pad (11: `pads` and `value` attributes -> inputs) and Split (13: `split` -> input) too;
// TopK (10: `k` -> input K), Cast-1's type name (6: a number), Upsample (10: gone) and Resize-10 (11: coordinate
// and nearest modes; raise_legacy_resize above); RNN/GRU/LSTM's `output_sequence` (7: gone), RoiAlign's coordinate
// mode (16: a new default, so opset 10's is written out), GridSample's mode names (20), DFT's axis (20: an input)
// and Scatter (11: ScatterElements); the nodes of If/Loop/Scan subgraphs likewise. Anything else is refused with
// the op named.
void raise_opset(Model& m, int64_t target) {
  const int64_t from = m.opset();
  if (from >= target) return;
  Graph& g = m.graph;
  std::vector<Node> added;
  auto crosses = [&](int64_t v) { return from < v && target >= v; };
  for (auto& n : g.nodes) {
    if (!n.domain.empty()) PERCH_FAIL(m.source, ": cannot raise opset: ", n.describe(), " is in domain '", n.domain, "'");
    if (crosses(6)) n.attrs.erase("consumed_inputs");
    if (crosses(6) && n.op_type == "Cast" && n.has_attr("to") && std::holds_alternative<std::string>(n.attrs.at("to"))) {
      // Cast-1 names the type ("FLOAT"); from 6 on it is the TensorProto.DataType number.
      static const std::map<std::string, int64_t> codes = {{"FLOAT", 1}, {"UINT8", 2},  {"INT8", 3},  {"UINT16", 4},
                                                           {"INT16", 5}, {"INT32", 6},  {"INT64", 7}, {"BOOL", 9},
                                                           {"DOUBLE", 11}};
      const std::string to = n.attr_string("to", "");
      PERCH_CHECK(codes.count(to), m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
                  " casts to '", to, "'");
      n.attrs["to"] = codes.at(to);
    }
    if (crosses(7) && (n.op_type == "BatchNormalization" || n.op_type == "Dropout")) {
      PERCH_CHECK(n.attr_int("is_test", 1) != 0, m.source, ": cannot raise opset ", from, " -> ", target, ": ",
                  n.describe(), " is in training mode (is_test 0)");
      n.attrs.erase("is_test");
    }
    if (crosses(7) && n.op_type == "Gemm") n.attrs.erase("broadcast");
    if (crosses(7) && is_legacy_broadcast_op(n.op_type)) raise_legacy_broadcast(m, g, n, from, target);
    if (crosses(7) && n.op_type == "PRelu") raise_legacy_prelu(m, g, n, from, target);
    if (crosses(9) && n.op_type == "BatchNormalization") {
      PERCH_CHECK(n.attr_int("spatial", 1) == 1, m.source, ": cannot raise opset ", from, " -> ", target, ": ",
                  n.describe(), " has spatial 0 (statistics per element), which opset 9 dropped");
      n.attrs.erase("spatial");
    }
    if (crosses(4) && n.op_type == "Concat" && !n.has_attr("axis")) n.attrs["axis"] = int64_t{1};
    if (n.op_type == "Clip" && crosses(11)) {
      n.inputs.resize(1);
      for (const char* key : {"min", "max"}) {
        if (n.has_attr(key)) {
          const std::string name = g.unique_name(n.name + "_" + key);
          g.initializers[name] = Tensor::scalar_f32(n.attr_float(key, 0));
          n.inputs.push_back(name);
        } else {
          n.inputs.push_back("");
        }
        n.attrs.erase(key);
      }
      while (!n.inputs.empty() && n.inputs.back().empty()) n.inputs.pop_back();
    } else if ((n.op_type == "Squeeze" || n.op_type == "Unsqueeze") && crosses(13)) {
      if (n.has_attr("axes")) attribute_to_input(g, n, "axes");
    } else if (n.op_type == "Reshape" && crosses(5)) {
      attribute_to_input(g, n, "shape");
    } else if (n.op_type == "Slice" && crosses(10)) {
      n.inputs.resize(1);
      for (const char* key : {"starts", "ends", "axes"}) attribute_to_input(g, n, key);
      while (!n.inputs.empty() && n.inputs.back().empty()) n.inputs.pop_back();
    } else if (is_reduce(n.op_type)) {
      const int64_t moved = n.op_type == "ReduceSum" ? 13 : 18;
      if (crosses(moved)) {
        n.inputs.resize(1);
        if (n.has_attr("axes")) attribute_to_input(g, n, "axes");
      }
    } else if (n.op_type == "Pad" && crosses(11)) {
      n.inputs.resize(1);
      attribute_to_input(g, n, from < 2 ? "paddings" : "pads");
      if (const float value = n.attr_float("value", 0.0f); value != 0.0f) {
        const std::string vname = g.unique_name(n.name + "_value");
        g.initializers[vname] = Tensor::scalar_f32(value);
        n.inputs.push_back(vname);
      }
      n.attrs.erase("value");
    } else if (n.op_type == "Split" && crosses(13)) {
      if (n.has_attr("split")) {
        n.inputs.resize(1);
        attribute_to_input(g, n, "split");
      }
    } else if (n.op_type == "Reshape" || n.op_type == "Clip" || n.op_type == "Squeeze" || n.op_type == "Unsqueeze" ||
               n.op_type == "Slice" || n.op_type == "Pad" || n.op_type == "Split") {
      // already in the newer form
    } else if ((n.op_type == "Upsample" && crosses(10)) || (n.op_type == "Resize" && crosses(11))) {
      raise_legacy_resize(m, g, n, from, target);
    } else if (n.op_type == "Resize") {
      if (target >= 13 && n.attr_string("coordinate_transformation_mode", "half_pixel") == "tf_half_pixel_for_nn")
        PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
                   " uses tf_half_pixel_for_nn, which opset 13 dropped");
    } else if (n.op_type == "Upsample") {
      // below 10: kept
    } else if (n.op_type == "TopK" && crosses(10)) {  // k: attribute -> input K, int64 [1]
      PERCH_CHECK(n.has_attr("k"), m.source, ": ", n.describe(), " has no k");
      const std::string k = g.unique_name(n.name + "_k");
      g.initializers[k] = Tensor::from<int64_t>({1}, {n.attr_int("k", -1)});
      n.inputs.resize(1);
      n.inputs.push_back(k);
      n.attrs.erase("k");
    } else if (n.op_type == "TopK") {
      // already in the input form
    } else if ((n.op_type == "Softmax" || n.op_type == "LogSoftmax" || n.op_type == "Hardmax") && crosses(13)) {
      int64_t axis = n.attr_int("axis", 1);
      const int64_t rank = declared_rank(g, n.inputs[0]) >= 0 ? declared_rank(g, n.inputs[0]) : declared_rank(g, n.outputs[0]);
      if (axis < 0 && rank >= 0) axis += rank;
      if (axis == -1 || (rank >= 0 && axis == rank - 1)) {
        n.attrs["axis"] = int64_t{-1};
        continue;
      }
      Node shape, flat, reshape;
      shape.op_type = "Shape";
      shape.name = g.unique_name(n.name + "_shape");
      shape.inputs = {n.inputs[0]};
      shape.outputs = {g.unique_name(n.name + "_input_shape")};
      flat.op_type = "Flatten";
      flat.name = g.unique_name(n.name + "_flatten");
      flat.attrs["axis"] = axis;
      flat.inputs = {n.inputs[0]};
      flat.outputs = {g.unique_name(n.name + "_2d")};
      reshape.op_type = "Reshape";
      reshape.name = g.unique_name(n.name + "_reshape");
      reshape.outputs = {n.outputs[0]};
      n.outputs[0] = g.unique_name(n.name + "_2d_out");
      reshape.inputs = {n.outputs[0], shape.outputs[0]};
      n.inputs[0] = flat.outputs[0];
      n.attrs["axis"] = int64_t{-1};
      added.push_back(shape);
      added.push_back(flat);
      added.push_back(reshape);
    } else if (n.op_type == "If" || n.op_type == "Loop" || n.op_type == "Scan") {
      // Their later versions add types only; their subgraphs' nodes are raised like the graph's (the values they
      // read from outside declared as inputs of the copy for the duration).
      PERCH_CHECK(n.op_type != "Scan" || from >= 9, m.source, ": cannot raise opset ", from, " -> ", target, ": ",
                  n.describe(), " is Scan-8 (batch axis and sequence_lens), which opset 9 replaced");
      for (auto& [key, value] : n.attrs) {
        auto* ref = std::get_if<graph::GraphRef>(&value);
        if (!ref) continue;
        Model sub;
        sub.source = m.source + ": " + n.describe() + " attribute '" + key + "'";
        sub.opsets = m.opsets;
        sub.graph = **ref;
        const size_t own = sub.graph.inputs.size();
        for (const auto& v : graph::outer_references(sub.graph)) {
          graph::ValueInfo vi;
          vi.name = v;
          sub.graph.inputs.push_back(vi);
        }
        raise_opset(sub, target);
        sub.graph.inputs.resize(own);
        value = std::make_shared<const Graph>(std::move(sub.graph));
      }
    } else if (n.op_type == "Scatter") {
      if (crosses(11)) n.op_type = "ScatterElements";  // 11 replaced Scatter by ScatterElements, the same computation
    } else if (n.op_type == "DFT") {
      if (crosses(20)) {  // 20 moved `axis` (default 1) to input 2 (default −2)
        const int64_t axis = n.attr_int("axis", 1);
        n.attrs.erase("axis");
        n.inputs.resize(std::max<size_t>(n.inputs.size(), 2));
        const std::string name = g.unique_name(n.name + "_axis");
        g.initializers[name] = Tensor::from<int64_t>({}, {axis});
        n.inputs.push_back(name);
      }
    } else if (n.op_type == "GridSample") {
      // 20 renamed the modes bilinear / bicubic to linear / cubic (nearest stays)
      if (crosses(20)) {
        const std::string mode = n.attr_string("mode", "bilinear");
        n.attrs["mode"] = mode == "bilinear" ? std::string("linear") : mode == "bicubic" ? std::string("cubic") : mode;
      }
    } else if (n.op_type == "RoiAlign") {
      // 16 added coordinate_transformation_mode with half_pixel as its default; opset 10's behaviour is output_half_pixel
      if (crosses(16) && !n.has_attr("coordinate_transformation_mode"))
        n.attrs["coordinate_transformation_mode"] = std::string("output_half_pixel");
    } else if (n.op_type == "RNN" || n.op_type == "GRU" || n.op_type == "LSTM") {
      // 7 dropped `output_sequence` (Y is an optional output either way); GRU-3's linear_before_reset and 14's
      // layout were added with the old behaviour as their default: nothing else to convert.
      if (crosses(7)) n.attrs.erase("output_sequence");
    } else if (!opset_stable(n.op_type) && n.op_type != "Softmax" && n.op_type != "LogSoftmax" && n.op_type != "Hardmax") {
      PERCH_FAIL(m.source, ": per-channel/per-group QDQ needs opset >= ", target, " but the model is opset ", from,
                 " and perch does not know how to convert ", n.describe(), " yet");
    }
  }
  for (auto& n : added) g.nodes.push_back(std::move(n));
  if (!added.empty()) g.toposort();
  m.set_opset(target);
}

bool quantizes_weights(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

int64_t weight_channel_axis(const Node& n, int64_t rank) {
  if (n.op_type == "Conv") return 0;
  if (n.op_type == "ConvTranspose") return n.attr_int("group", 1) == 1 ? 1 : 0;  // W [C_in, C_out / group, k...]
  if (n.op_type == "Gemm") return n.attr_int("transB", 0) ? 0 : 1;
  return rank - 1;  // MatMul: N
}

int64_t weight_output_channels(const Node& n, const Tensor& w) {
  if (n.op_type == "ConvTranspose") return w.dim(1) * n.attr_int("group", 1);
  return w.dim(weight_channel_axis(n, w.rank()));
}

int64_t weight_group_axis(const Node& n, int64_t rank) {
  if (n.op_type == "Conv") return 1;
  if (n.op_type == "ConvTranspose") return 0;
  if (n.op_type == "Gemm") return n.attr_int("transB", 0) ? 1 : 0;
  return rank - 2;  // MatMul: K
}

bool weight_scales_follow_outputs(const Node& n, const Tensor& w) {
  if (n.op_type == "ConvTranspose") return n.attr_int("group", 1) == 1 || (w.rank() >= 2 && w.dim(1) == 1);
  return n.op_type != "MatMul";
}

double channel_spread(const Tensor& w, int64_t axis) {
  quant::QuantSpec spec;
  spec.granularity = quant::Granularity::kPerChannel;
  spec.axis = axis;
  const auto layout = quant::SlotLayout::make(spec, w.shape());
  const auto r = quant::slot_ranges(layout, w.data<float>());
  const std::vector<float>& lo = r.min;
  const std::vector<float>& hi = r.max;
  double mx = 0, mn = std::numeric_limits<double>::infinity();
  for (int64_t s = 0; s < layout.slots; ++s) {
    const double r = static_cast<double>(hi[s]) - lo[s];
    mx = std::max(mx, r);
    if (r > 0) mn = std::min(mn, r);
  }
  if (mx == 0) return 1.0;
  return mx / mn;
}

namespace {

quant::QuantSpec weight_spec_impl(const WeightOptions& o, const Node& n, const Tensor& w) {
  quant::QuantSpec ws;
  ws.bits = o.bits;
  ws.is_signed = true;
  ws.symmetric = true;
  ws.narrow_range = true;
  ws.granularity = o.granularity;
  if (ws.granularity == quant::Granularity::kPerChannel) ws.axis = weight_channel_axis(n, w.rank());
  if (ws.granularity == quant::Granularity::kPerGroup) {
    ws.axis = weight_group_axis(n, w.rank());
    ws.group_size = o.group_size;
  }
  ws.validate();
  return ws;
}

std::string granularity_label(const quant::QuantSpec& s) {
  switch (s.granularity) {
    case quant::Granularity::kPerChannel: return "per-channel";
    case quant::Granularity::kPerGroup: return "per-group:" + std::to_string(s.group_size);
    default: return "per-tensor";
  }
}

// Adds, for Conv geometry `s` and input x [N, C, H, W], the patch sums bias correction needs:
//   sum[g*P + (c - g*cg)*KH*KW + kh*KW + kw] += sum over n and output positions (oh, ow) of
//       x[n, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]        (0 where that lies in the padding)
// with P = cg*KH*KW, the layout of the one-hot probe (output channel j of group g picks element j of its
// patch). The double sum factorises: R[kh, iw] = sum over valid oh of x[n, c, ih(oh, kh), iw], then
// sum over valid ow of R[kh, iw(ow, kw)] — O(KH*H*W) per channel instead of the O(KH*KW*OH*OW) one-hot
// convolution output (which for a 3x3 conv on C channels is 9*C full-resolution channels).
// Returns the number of output positions added (N*OH*OW), the mean's denominator.
int64_t add_patch_sums(const kernels::Conv2dShape& s, const float* x, std::vector<double>& sum) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), cg = s.in_channels / s.group;
  const int64_t kk = s.kernel_h * s.kernel_w;
  std::vector<double> rows(static_cast<size_t>(s.kernel_h * s.in_w));
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t c = 0; c < s.in_channels; ++c) {
      const float* xc = x + (n * s.in_channels + c) * s.in_h * s.in_w;
      std::fill(rows.begin(), rows.end(), 0.0);
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        double* r = rows.data() + kh * s.in_w;
        for (int64_t oh = 0; oh < oh_n; ++oh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
          if (ih < 0 || ih >= s.in_h) continue;
          for (int64_t iw = 0; iw < s.in_w; ++iw) r[iw] += xc[ih * s.in_w + iw];
        }
      }
      double* out = sum.data() + (c / cg) * cg * kk + (c % cg) * kk;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh)
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          double acc = 0;
          for (int64_t ow = 0; ow < ow_n; ++ow) {
            const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
            if (iw >= 0 && iw < s.in_w) acc += rows[kh * s.in_w + iw];
          }
          out[kh * s.kernel_w + kw] += acc;
        }
    }
  return s.batch * oh_n * ow_n;
}

}  // namespace

Calibration calibrate(const Model& input_model, const Dataset& calib, const PtqOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  check_no_float16(input_model);
  check_finite_weights(input_model);  // NaN/Inf weights are refused, naming the tensor (ptq/validate.h)
  check_feeds(input_model, calib);     // every model input fed by the data, by name (ptq/evaluate.h)
  Calibration cal;
  cal.model = input_model;
  Model& m = cal.model;
  cal.canonicalize_summary = graph::canonicalize(m);
  check_not_quantized(m);
  if (opt.fold_affine) {
    const int folded = graph::fold_conv_affine(m);
    if (folded) m.graph.toposort();
    cal.canonicalize_summary += "; folded " + std::to_string(folded) + " Mul/Add into Conv";
  }
  if (opt.equalize) cal.equalization = equalize(m);
  // By the global weight granularity only, not by layer_weights: the calibrated model must not depend on per-layer
  // choices, which `--auto` makes after calibrating and `--config` gives before — re-applying a saved configuration
  // has to rebuild the same model. A per-tensor override of a rescaled layer quantizes its rescaled weights.
  if (opt.equalize && opt.equalize_depthwise)
    equalize_depthwise_inputs(m, calib, opt.batch, opt.weights.granularity == quant::Granularity::kPerTensor, {},
                              cal.equalization);
  Graph& g = m.graph;
  PERCH_CHECK(!g.inputs.empty(), m.source, ": model has no inputs");
  PERCH_CHECK(calib.size() > 0, calib.name, ": calibration set is empty");

  // ---- 1. Which activations get Q/DQ (when quantized), and which share their input's parameters.
  std::set<std::string> target_set;
  const std::set<std::string> floats = float_values(g);
  const Chains chains = opt.fuse_chains ? find_chains(g) : Chains{};
  const std::set<std::string> norm_inside = opt.fuse_chains ? find_normalization_insides(g) : std::set<std::string>{};
  std::set<std::string> inside = chains.inside;
  inside.insert(norm_inside.begin(), norm_inside.end());
  const std::map<std::string, Clamp> clamps = opt.fuse_chains ? chain_root_clamps(m, chains) : std::map<std::string, Clamp>{};
  if (opt.fuse_chains) {
    std::set<std::string> roots;
    for (const auto& [v, r] : chains.root) roots.insert(r);
    cal.canonicalize_summary += "; " + std::to_string(roots.size()) + " elementwise chains (" +
                                std::to_string(chains.inside.size()) + " inside values without Q/DQ, " +
                                std::to_string(clamps.size()) + " input ranges clamped)";
    if (!norm_inside.empty())
      cal.canonicalize_summary += "; " + std::to_string(norm_inside.size()) + " values inside written-out normalizations without Q/DQ";
  }
  auto consider = [&](const std::string& v) {
    if (target_set.count(v) || g.is_initializer(v) || !floats.count(v) || inside.count(v)) return;
    if (g.is_graph_output(v) && !opt.quantize_outputs) return;
    const auto cons = g.consumers(v);
    bool read_as_data = false;
    for (size_t c : cons)
      for (size_t i : data_inputs(g.nodes[c], g))
        if (g.nodes[c].inputs[i] == v) read_as_data = true;
    if (!read_as_data && !(g.is_graph_output(v) && opt.quantize_outputs)) return;
    const int64_t p = g.producer(v);
    if (p >= 0) {
      const Node& pn = g.nodes[p];
      const bool fusable_producer = is_weight_op(pn.op_type) || pn.op_type == "Add";
      if (fusable_producer && cons.size() == 1 && is_fusable_activation(g.nodes[cons[0]]) && !g.is_graph_output(v)) return;
      if (is_passthrough(pn.op_type) && target_set.count(pn.inputs[0])) cal.shares[v] = pn.inputs[0];
    }
    cal.targets.push_back(v);
    target_set.insert(v);
  };
  for (const auto& in : g.inputs) consider(in.name);
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs)
      if (!o.empty()) consider(o);

  // ---- 2. Bias-correction statistics. The mean output shift of a weight error dW is linear in dW:
  //   E[conv(x, dW)][c] = sum_k dW[c, k] * E[patch_k]   (patch = the im2col column, zeros in padding)
  //   E[x B + C][n]     = sum_k E[x_k] * dB[k, n]
  // so perch records E[patch] (Conv) or E[x] (Gemm) once and corrects any weight choice later. E[patch]
  // comes from add_patch_sums for 1-D/2-D convs, else from running the node itself with one-hot weights
  // (same pads/strides/dilations/groups).
  struct PatchProbe {
    Node node;       // the layer's op with one-hot weights, no bias
    Tensor onehot;
    int64_t groups = 1, per_group = 1;
  };
  std::map<std::string, std::vector<size_t>> probes_by_input;  // input value -> weight node indices
  std::map<size_t, PatchProbe> probes;
  std::map<size_t, std::pair<std::vector<double>, int64_t>> sums;  // node -> (sum, count)
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    if (n.op_type != "Conv" && n.op_type != "Gemm") continue;
    const Tensor* w = g.initializer(n.input(1));
    if (!w || w->dtype() != DType::kFloat32) continue;
    if (n.op_type == "Gemm" && (n.attr_int("transA", 0) != 0 || n.attr_float("beta", 1.0f) != 1.0f)) continue;
    if (!n.input(2).empty()) {
      const Tensor* b = g.initializer(n.input(2));
      if (!b || b->dtype() != DType::kFloat32 || b->rank() != 1) continue;
    }
    PatchProbe pr;
    if (n.op_type == "Conv") {
      const int64_t groups = n.attr_int("group", 1), cg = w->dim(1), kk = w->numel() / (w->dim(0) * cg);
      pr.groups = groups;
      pr.per_group = cg * kk;
      Shape ws = w->shape();
      ws[0] = groups * pr.per_group;
      pr.onehot = Tensor(DType::kFloat32, ws);
      // Output channel g*P + j of group g picks element j of that group's patch.
      for (int64_t j = 0; j < groups * pr.per_group; ++j) pr.onehot.data<float>()[j * pr.per_group + j % pr.per_group] = 1.0f;
      pr.node = n;
      pr.node.inputs = {n.inputs[0], "onehot"};
    } else {
      pr.per_group = n.attr_int("transB", 0) ? w->dim(1) : w->dim(0);  // K
    }
    probes_by_input[n.input(0)].push_back(ni);
    probes.emplace(ni, std::move(pr));
  }

  // ---- 3. Calibrate: run the float model, feed each (root) target's estimator and the statistics.
  const quant::QuantSpec aspec = activation_spec_impl(opt.activations);
  std::map<std::string, quant::RangeEstimator> est;
  for (const auto& v : cal.targets)
    if (!cal.shares.count(v)) est.emplace(v, quant::RangeEstimator(aspec, opt.activations.estimator));
  // Finite extremes of what each estimator sees (Calibration::activation_extremes).
  auto note_extremes = [&](const std::string& name, const Tensor& t) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (const float v : t.span<float>())
      if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    if (lo > hi) return;
    auto [it, fresh] = cal.activation_extremes.emplace(name, std::make_pair(lo, hi));
    if (!fresh) it->second = {std::min(it->second.first, lo), std::max(it->second.second, hi)};
  };
  {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::Executor exec(m);
    const auto& registry = runtime::OpRegistry::global();
    Progress progress("calibrating", calib.size());
    const std::string in_name = g.inputs[0].name;
    for (const auto& chunk : calib.chunks(opt.batch)) {
      const int64_t b = chunk.first, n = chunk.second;
      const runtime::TensorMap feeds = calib.feeds(in_name, b, n);
      auto observe = [&](const std::string& name, const Tensor& t) {
        if (auto it = est.find(name); it != est.end()) {
          PERCH_CHECK(t.dtype() == DType::kFloat32, m.source, ": activation '", name, "' is ", dtype_name(t.dtype()),
                      ", not float32; it cannot be quantized");
          try {
            if (auto cl = clamps.find(name); cl != clamps.end()) {
              Tensor c = t.clone();
              for (float& v : c.span<float>()) v = std::clamp(v, cl->second.lo, cl->second.hi);  // NaN stays NaN
              it->second.observe(c);
              note_extremes(name, c);
            } else {
              it->second.observe(t);
              note_extremes(name, t);
            }
          } catch (const Error& e) {
            PERCH_FAIL(m.source, ": calibrating activation '", name, "' on ", calib.name, " images ", b, "..",
                       b + n - 1, ": ", e.what());
          }
        }
        if (!opt.bias_correction) return;
        auto it = probes_by_input.find(name);
        if (it == probes_by_input.end()) return;
        for (size_t ni : it->second) {
          try {
            const PatchProbe& pr = probes.at(ni);
            auto& [sum, count] = sums[ni];
            if (sum.empty()) sum.assign(static_cast<size_t>(pr.groups * pr.per_group), 0.0);
            if (pr.node.op_type.empty()) {  // Gemm: mean input row
              const Tensor x2 = t.rank() == 2 ? t : t.reshaped({t.dim(0), t.numel() / t.dim(0)});
              const int64_t rows = x2.dim(0), k = x2.dim(1);
              for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = 0; j < k; ++j) sum[j] += x2.data<float>()[r * k + j];
              count += rows;
            } else if (t.rank() == 4 || t.rank() == 3) {  // 1-D/2-D convs: the sums directly (add_patch_sums)
              const Tensor* w = g.initializer(g.nodes[ni].input(1));  // probes are built for initializer weights only
              count += add_patch_sums(runtime::conv2d_shape(pr.node, t.shape(), w->shape()), t.data<float>(), sum);
            } else {
              const Tensor patches =
                  (*registry.find(pr.node.op_type, pr.node.domain, m.opset()))(pr.node, {&t, &pr.onehot}, m.opset())[0];
              const int64_t ch = patches.dim(1), inner = patches.numel() / (patches.dim(0) * ch);
              const float* d = patches.data<float>();
              for (int64_t i = 0; i < patches.dim(0); ++i)
                for (int64_t c = 0; c < ch; ++c) {
                  double acc = 0;
                  for (int64_t k = 0; k < inner; ++k) acc += d[(i * ch + c) * inner + k];
                  sum[c] += acc;
                }
              count += patches.dim(0) * inner;
            }
          } catch (const Error& e) {
            PERCH_FAIL(m.source, ": bias correction statistics: ", g.nodes[ni].prefixed(e.what()));
          }
        }
      };
      for (const auto& [name, t] : feeds) observe(name, t);
      exec.run(feeds, observe);
      progress.update(b + n);
    }
    progress.finish();
    cal.images = calib.size();
    cal.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  for (const auto& v : cal.targets) {
    const std::string r = cal.share_root(v);
    auto it = est.find(r);
    PERCH_CHECK(it != est.end() && !it->second.empty(), m.source, ": activation '", r,
                "' was never computed during calibration (dead branch?)");
    cal.activation_params[v] = it->second.params();
    // sharers: their root's extremes too (pass-through ops keep one grid)
    if (auto ex = cal.activation_extremes.find(r); r != v && ex != cal.activation_extremes.end())
      cal.activation_extremes[v] = ex->second;
  }
  for (const auto& [name, e] : est) cal.nonfinite_values += e.nonfinite_count();
  for (auto& [ni, sc] : sums) {
    if (sc.second == 0) continue;
    std::vector<double> mean(sc.first.size());
    for (size_t k = 0; k < mean.size(); ++k) mean[k] = sc.first[k] / static_cast<double>(sc.second);
    // NaN/Inf inputs (calibrating with ignore_nonfinite) poison the means: no bias correction for that layer
    // rather than a NaN bias (whose int32 conversion is undefined).
    if (!std::all_of(mean.begin(), mean.end(), [](double v) { return std::isfinite(v); })) continue;
    cal.input_means[g.nodes[ni].name] = {std::move(mean), probes.at(ni).groups};
  }
  cal.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return cal;
}

quant::QuantSpec activation_spec(const ActivationOptions& o) { return activation_spec_impl(o); }
quant::QuantSpec weight_spec(const WeightOptions& o, const graph::Node& n, const Tensor& w) {
  return weight_spec_impl(o, n, w);
}

bool ort_requantizes_float_weight(const Graph& g, size_t ni) {
  const Node& n = g.nodes.at(ni);
  if (n.op_type != "Conv" && n.op_type != "ConvTranspose" && n.op_type != "Gemm") return false;
  if (n.inputs.size() < 2 || n.outputs.size() != 1) return false;
  const Tensor* w = g.initializer(n.input(1));
  if (!w || w->dtype() != DType::kFloat32) return false;  // a DequantizeLinear weight is quantized already
  const int64_t p0 = g.producer(n.input(0));
  if (p0 < 0 || g.nodes[p0].op_type != "DequantizeLinear" || g.nodes[p0].inputs.size() < 2) return false;
  const Tensor* in_scale = g.initializer(g.nodes[p0].input(1));
  if (!in_scale || in_scale->numel() != 1) return false;
  if (!n.input(2).empty()) {
    const Tensor* b = g.initializer(n.input(2));
    if (!b || b->rank() != 1) return false;
  }
  // Output path: exactly one consuming node at each step (graph outputs are not consumers, as in ORT),
  // Relu/Clip continue it, QuantizeLinear ends it.
  std::string v = n.outputs[0];
  for (size_t step = 0; step <= g.nodes.size(); ++step) {
    const std::vector<size_t> cons = g.consumers(v);
    if (cons.size() != 1) return false;
    const Node& c = g.nodes[cons[0]];
    if (c.op_type == "QuantizeLinear") return true;
    if ((c.op_type != "Relu" && c.op_type != "Clip") || c.outputs.size() != 1) return false;
    v = c.outputs[0];
  }
  return false;
}

quant::QuantParams layer_weight_params(const Model& m, const Node& n, const Tensor& w, const WeightOptions& wo,
                                       const PtqOptions& opt, const std::map<std::string, quant::QuantParams>& aparams,
                                       int64_t* scales_raised) {
  const Graph& g = m.graph;
  const std::string& wname = n.input(1);
  const quant::QuantSpec spec = weight_spec_impl(wo, n, w);
  if (auto ov = opt.weight_params.find(wname); ov != opt.weight_params.end()) {
    PERCH_CHECK(ov->second.spec.granularity == spec.granularity &&
                    ov->second.count() == quant::SlotLayout::make(spec, w.shape()).slots,
                m.source, ": ", n.describe(), ": the given parameters of weight '", wname, "' do not fit its ",
                granularity_label(spec), " layout");
    return ov->second;
  }
  quant::RangeEstimator we(spec, wo.estimator);
  we.observe(w);
  quant::QuantParams params = we.params();
  // A per-channel weight whose channel has tiny weights beside a normal bias (PaddlePaddle's learnable
  // affine scale near 0 folded into the conv: rec's p2o.Conv.20 has a channel at scale 1.2e-38) would lose
  // that bias: at the int32 bias scale s_in * s_w[c] it overflows and is clamped to ~0. A channel whose bias
  // would not fit int32 gets its scale raised to |b_c| / (s_in 2^30) (2^30: room for bias correction), as ONNX
  // Runtime's quantizer does for int32 biases — its weights, negligible beside the bias, round to fewer
  // levels — but never above the weight's largest channel scale, so the requantization multipliers stay in
  // the range the other channels use (a bias no sane scale holds is still clamped and counted, below).
  const Tensor* b0 = !weight_scales_follow_outputs(n, w) || n.input(2).empty() ? nullptr : g.initializer(n.input(2));
  auto ain0 = aparams.find(n.input(0));
  if (b0 && b0->dtype() == DType::kFloat32 && ain0 != aparams.end() && spec.granularity == quant::Granularity::kPerChannel &&
      params.count() == b0->numel()) {
    const int64_t raised = raise_scales_for_bias(params, b0->data<float>(), b0->numel(), ain0->second.scale[0]);
    if (scales_raised) *scales_raised += raised;
  }
  return params;
}

int64_t raise_scales_for_bias(quant::QuantParams& p, const float* bias, int64_t count, double s_in) {
  PERCH_CHECK(count == p.count(), "raise_scales_for_bias: ", count, " biases for ", p.count(), " weight scales");
  if (count == 0) return 0;
  const float top = *std::max_element(p.scale.begin(), p.scale.end());
  int64_t raised = 0;
  for (int64_t c = 0; c < count; ++c) {
    const double need = std::fabs(static_cast<double>(bias[c])) / (s_in * 1073741824.0);
    float& sc = p.scale[static_cast<size_t>(c)];
    if (need > 2.0 * sc && need <= top) {  // the bias would not fit int32 (2^31) at s_in * sc
      sc = static_cast<float>(need);
      ++raised;
    }
  }
  return raised;
}

bool same_params(const quant::QuantParams& a, const quant::QuantParams& b) {
  return a.spec.bits == b.spec.bits && a.spec.granularity == b.spec.granularity && a.spec.is_signed == b.spec.is_signed &&
         a.spec.narrow_range == b.spec.narrow_range && a.spec.group_size == b.spec.group_size && a.axis == b.axis &&
         a.param_shape == b.param_shape && a.scale == b.scale && a.zero_point == b.zero_point;
}

// An activation's parameters at other bits (PtqOptions::activation_bits). More bits: the observed extremes
// (choose_params() adds 0). Otherwise, or without extremes: the calibrated grid's span [s (qmin - zp),
// s (qmax - zp)] — the estimator's range, widened to include 0 and nudged by at most one step so that 0 is a
// grid point.
quant::QuantParams activation_params_at(const quant::QuantParams& p, const quant::QuantSpec& spec,
                                        const std::pair<float, float>* extremes) {
  if (extremes && spec.bits > p.spec.bits)
    return quant::choose_params(spec, {}, std::vector<float>{extremes->first}, std::vector<float>{extremes->second});
  const double s = p.scale.at(0), zp = p.zero_point.at(0);
  const float lo = static_cast<float>(s * (p.spec.qmin() - zp)), hi = static_cast<float>(s * (p.spec.qmax() - zp));
  return quant::choose_params(spec, {}, std::vector<float>{lo}, std::vector<float>{hi});
}

std::map<std::string, quant::QuantParams> quantized_activation_params(const Calibration& cal, const PtqOptions& opt) {
  // activation_bits apply to a whole sharing group (pass-through values keep their root's grid): resolve each
  // name to its root first.
  std::map<std::string, std::pair<int, std::string>> group_bits;  // root -> (bits, the name that asked)
  if (!opt.activation_bits.empty()) {
    const std::set<std::string> targets(cal.targets.begin(), cal.targets.end());
    for (const auto& [v, bits] : opt.activation_bits) {
      PERCH_CHECK((bits >= 2 && bits <= 8) || bits == 16, cal.model.source, ": activation_bits: '", v, "' is given ",
                  bits, " bits (2..8 or 16)");
      PERCH_CHECK(targets.count(v), cal.model.source, ": activation_bits: '", v,
                  "' is not a quantizable activation of this model (perch inspect / the report list them)");
      const auto [it, fresh] = group_bits.emplace(cal.share_root(v), std::make_pair(bits, v));
      PERCH_CHECK(fresh || it->second.first == bits, cal.model.source, ": activations '", it->second.second, "' and '",
                  v, "' share one grid (a pass-through op between them) but are given ", it->second.first, " and ",
                  bits, " bits");
    }
  }
  std::map<std::string, quant::QuantParams> aparams;
  for (const auto& v : cal.targets) {
    if (opt.float_activations.count(v)) continue;
    const quant::QuantParams& p = cal.activation_params.at(v);
    const std::string root = cal.share_root(v);
    auto gb = group_bits.find(root);
    if (gb == group_bits.end() || gb->second.first == p.spec.bits) {
      aparams[v] = p;
      continue;
    }
    ActivationOptions ao = opt.activations;
    ao.bits = gb->second.first;
    const auto ex = cal.activation_extremes.find(root);
    aparams[v] = activation_params_at(p, activation_spec_impl(ao), ex == cal.activation_extremes.end() ? nullptr : &ex->second);
  }
  return aparams;
}

PtqResult build_quantized(const Calibration& cal, const PtqOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  PtqResult res;
  res.canonicalize_summary = cal.canonicalize_summary;
  res.equalization = cal.equalization;
  res.calibration_images = cal.images;
  res.calibration_seconds = cal.seconds;
  res.nonfinite_values = cal.nonfinite_values;
  Model m = cal.model;
  Graph& g = m.graph;
  // Activations actually quantized: calibrated targets minus those the caller keeps float.
  const std::map<std::string, quant::QuantParams> aparams = quantized_activation_params(cal, opt);

  // ---- Weights and biases.
  struct Written {
    std::string dq;
    quant::QuantParams params;
    Tensor delta;
    quant::QuantSpec spec;
    bool adaptive = false;  // integers from cal.rounded_weights
  };
  std::map<std::string, Written> written;  // weight name -> its DequantizeLinear (shared weights once)
  bool need_13 = false, need_21 = false;
  const size_t original_nodes = g.nodes.size();
  for (size_t ni = 0; ni < original_nodes; ++ni) {
    const Node n = g.nodes[ni];  // copy: new nodes are appended to g.nodes
    if (!is_weight_op(n.op_type)) continue;
    const std::string wname = n.input(1);
    const Tensor* wp_ = g.initializer(wname);
    if (!wp_ || wp_->dtype() != DType::kFloat32) continue;  // activation x activation MatMul stays float
    const Tensor w = *wp_;
    LayerReport rep;
    rep.node = n.name;
    rep.op_type = n.op_type;
    rep.weight = wname;
    rep.weight_shape = w.shape();
    rep.axis = weight_channel_axis(n, w.rank());
    rep.spread = channel_spread(w, rep.axis);
    if (opt.float_nodes.count(n.name)) {
      rep.granularity = "float";
      rep.bits = 32;
      res.layers.push_back(rep);
      continue;
    }
    const WeightOptions& wo = opt.layer_weights.count(n.name) ? opt.layer_weights.at(n.name) : opt.weights;
    auto it = written.find(wname);
    if (it == written.end()) {
      Written wr;
      wr.spec = weight_spec_impl(wo, n, w);
      wr.params = layer_weight_params(m, n, w, wo, opt, aparams, &rep.weight_scales_raised);
      if (rep.weight_scales_raised && !quiet())
        std::fprintf(stderr, "note: %s: %lld weight channel scales raised so their biases fit int32\n",
                     n.describe().c_str(), static_cast<long long>(rep.weight_scales_raised));
      // Adaptive rounding (round_weights_adaptively) chose this weight's integers for exactly these parameters;
      // any other choice (a sensitivity candidate, other bits) rounds to nearest.
      const auto ar = cal.rounded_weights.find(wname);
      const bool adaptive = ar != cal.rounded_weights.end() && same_params(ar->second.params, wr.params);
      const Tensor q = adaptive ? ar->second.q : quant::quantize(w, wr.params);
      wr.adaptive = adaptive;
      wr.delta = quant::dequantize(q, wr.params);
      for (int64_t i = 0; i < w.numel(); ++i) wr.delta.data<float>()[i] -= w.data<float>()[i];
      const std::string qname = g.unique_name(wname + "_quantized");
      g.initializers[qname] = q;
      wr.dq = add_dequantize(g, wname, qname, wr.params, DType::kInt8);
      it = written.emplace(wname, std::move(wr)).first;
    }
    const Written& wr = it->second;
    rep.adaptive_rounding = wr.adaptive;
    rep.axis = wr.params.axis;
    rep.granularity = granularity_label(wr.spec);
    rep.bits = wr.spec.bits;
    {
      Tensor fq = w.clone();
      for (int64_t i = 0; i < fq.numel(); ++i) fq.data<float>()[i] += wr.delta.data<float>()[i];
      rep.weight_sqnr_db = sqnr_db(w, fq);
    }
    need_13 |= wr.spec.granularity != quant::Granularity::kPerTensor;
    need_21 |= wr.spec.granularity == quant::Granularity::kPerGroup;
    need_21 |= wr.spec.bits > 8;  // int16 DequantizeLinear inputs: opset 21
    g.nodes[ni].inputs[1] = wr.dq;

    // Bias correction: subtract E[op(x, W_q - W)] (see calibrate()).
    std::string bname = n.input(2);
    const Tensor* bias = bname.empty() ? nullptr : g.initializer(bname);
    auto mi = cal.input_means.find(n.name);
    if (opt.bias_correction && mi != cal.input_means.end()) {
      const auto& [mean, groups] = mi->second;
      int64_t channels = 0;
      std::vector<double> shift;
      if (n.op_type == "Conv") {
        channels = w.dim(0);
        const int64_t per = w.numel() / channels, mg = channels / groups;
        shift.assign(static_cast<size_t>(channels), 0.0);
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t k = 0; k < per; ++k)
            shift[c] += wr.delta.data<float>()[c * per + k] * mean[(c / mg) * per + k];
      } else {  // Gemm
        const bool tb = n.attr_int("transB", 0) != 0;
        channels = tb ? w.dim(0) : w.dim(1);
        const int64_t k_dim = tb ? w.dim(1) : w.dim(0);
        shift.assign(static_cast<size_t>(channels), 0.0);
        for (int64_t c = 0; c < channels; ++c)
          for (int64_t k = 0; k < k_dim; ++k)
            shift[c] += (tb ? wr.delta.data<float>()[c * k_dim + k] : wr.delta.data<float>()[k * channels + c]) * mean[k];
      }
      Tensor nb(DType::kFloat32, {channels});
      for (int64_t c = 0; c < channels; ++c) {
        rep.bias_correction_max = std::max(rep.bias_correction_max, std::fabs(shift[c]));
        nb.data<float>()[c] = static_cast<float>((bias ? bias->data<float>()[c] : 0.0) - shift[c]);
      }
      bname = g.unique_name((bname.empty() ? n.name + "_bias" : bname) + "_corrected");
      g.initializers[bname] = nb;
      g.nodes[ni].inputs.resize(3);
      g.nodes[ni].inputs[2] = bname;
      bias = g.initializer(bname);
    }

    // Empirical correction (correct_biases_empirically): delta_c is added to an int32 bias as a whole number of
    // bias steps, nearbyint(delta_c / (s_in s_w[c])) — what the correction itself applied while measuring the
    // layers after this one —, and to a float bias as it is.
    const std::vector<double>* empirical = nullptr;
    if (auto ei = cal.output_shift.find(n.name); ei != cal.output_shift.end()) {
      empirical = &ei->second;
      const int64_t channels = weight_output_channels(n, w);
      PERCH_CHECK(static_cast<int64_t>(empirical->size()) == channels && (!bias || bias->numel() == channels),
                  m.source, ": ", n.describe(), ": empirical bias correction has ", empirical->size(),
                  " channels, the layer ", channels, " (calibration and options do not match)");
      for (double d : *empirical) rep.empirical_correction_max = std::max(rep.empirical_correction_max, std::fabs(d));
      if (!bias) {  // a zero bias to correct
        bname = g.unique_name(n.name + "_bias");
        g.initializers[bname] = Tensor(DType::kFloat32, {channels});
        g.nodes[ni].inputs.resize(3);
        g.nodes[ni].inputs[2] = bname;
        bias = g.initializer(bname);
      }
    }

    // Bias as int32, scale s_in * s_w[c], zero point 0. Needs the input's activation scale and one weight
    // scale per output channel (per-group weights keep a float bias).
    const bool gemm_ok = n.op_type != "Gemm" || (n.attr_float("beta", 1.0f) == 1.0f && bias && bias->rank() == 1);
    auto ain = aparams.find(n.input(0));
    const bool bias_scales = wr.spec.granularity == quant::Granularity::kPerTensor ||
                             (wr.spec.granularity == quant::Granularity::kPerChannel && weight_scales_follow_outputs(n, w));
    if (n.op_type != "MatMul" && bias_scales && bias && bias->dtype() == DType::kFloat32 && gemm_ok &&
        ain != aparams.end()) {
      const int64_t channels = bias->numel();
      const bool per_channel = wr.params.count() > 1;
      PERCH_CHECK(!per_channel || wr.params.count() == channels, m.source, ": ", n.describe(), ": bias has ", channels,
                  " values for ", wr.params.count(), " weight channels");
      const float s_in = ain->second.scale[0];
      quant::QuantParams bp;
      bp.spec.granularity = per_channel ? quant::Granularity::kPerChannel : quant::Granularity::kPerTensor;
      bp.spec.bits = 16;  // layout only: bias storage is int32
      bp.axis = 0;
      bp.param_shape = per_channel ? Shape{channels} : Shape{};
      Tensor bq(DType::kInt32, bias->shape());
      for (int64_t c = 0; c < (per_channel ? channels : 1); ++c) {
        bp.scale.push_back(s_in * wr.params.scale[c]);  // float product, as ONNX Runtime's quantizer computes it
        bp.zero_point.push_back(0);
      }
      for (int64_t c = 0; c < channels; ++c) {
        const double sc = bp.scale[per_channel ? c : 0];
        double r = std::nearbyint(static_cast<double>(bias->data<float>()[c]) / sc);
        if (empirical) r += std::nearbyint((*empirical)[c] / sc);
        if (r > INT32_MAX || r < INT32_MIN) {
          ++rep.bias_clamped;
          r = std::clamp(r, static_cast<double>(INT32_MIN), static_cast<double>(INT32_MAX));
        }
        bq.data<int32_t>()[c] = static_cast<int32_t>(r);
      }
      const std::string qname = g.unique_name(bname + "_quantized");
      g.initializers[qname] = bq;
      g.nodes[ni].inputs[2] = add_dequantize(g, bname, qname, bp, DType::kInt32);
      if (rep.bias_clamped && !quiet())
        std::fprintf(stderr, "warning: %s: %lld bias values clamped to int32\n", n.describe().c_str(),
                     static_cast<long long>(rep.bias_clamped));
    } else if (empirical) {  // the bias stays float
      Tensor nb = bias->clone();
      for (int64_t c = 0; c < nb.numel(); ++c)
        nb.data<float>()[c] = static_cast<float>(nb.data<float>()[c] + (*empirical)[c]);
      const std::string cname = g.unique_name(bname + "_corrected");
      g.initializers[cname] = nb;
      g.nodes[ni].inputs[2] = cname;
    }
    res.layers.push_back(rep);
  }

  // ---- Activation Q/DQ pairs.
  for (const auto& v : cal.targets) {
    auto pit = aparams.find(v);
    if (pit == aparams.end()) continue;
    const quant::QuantParams& p = pit->second;
    const std::string s = g.unique_name(v + "_scale"), z = g.unique_name(v + "_zero_point");
    g.initializers[s] = scale_tensor(p);
    g.initializers[z] = zero_point_tensor(p, p.spec.storage_type());
    Node q;
    q.op_type = "QuantizeLinear";
    q.name = g.unique_name(v + "_QuantizeLinear");
    q.inputs = {v, s, z};
    q.outputs = {g.unique_name(v + "_quantized")};
    Node dq;
    dq.op_type = "DequantizeLinear";
    dq.name = g.unique_name(v + "_DequantizeLinear");
    dq.inputs = {q.outputs[0], s, z};
    dq.outputs = {g.unique_name(v + "_dequantized")};
    for (auto& n : g.nodes)
      for (auto& in : n.inputs)
        if (in == v) in = dq.outputs[0];
    g.nodes.push_back(q);
    g.nodes.push_back(dq);
    ++res.activations_quantized;
  }

  // ---- Float layers ONNX Runtime would not run float (LayerReport::ort_requantized).
  int64_t requantized = 0;
  for (auto& rep : res.layers) {
    if (rep.granularity != "float") continue;
    for (size_t ni = 0; ni < g.nodes.size(); ++ni)
      if (g.nodes[ni].name == rep.node && ort_requantizes_float_weight(g, ni)) {
        rep.ort_requantized = true;
        ++requantized;
        break;
      }
  }
  if (requantized && !quiet())
    std::fprintf(stderr,
                 "note: %lld float weight layer(s) sit between a DequantizeLinear and a QuantizeLinear: ONNX Runtime "
                 "(graph optimizations basic and up) quantizes their weights to symmetric per-tensor int8; run the "
                 "model with graph optimizations disabled, or in perch, to run them float\n",
                 static_cast<long long>(requantized));

  // ---- Opset and metadata. QuantizeLinear / DequantizeLinear take 16-bit integers from opset 21 on (13 allows
  // only int8 / uint8): ONNX Runtime refuses a uint16 zero point in an older model.
  for (const auto& [v, p] : aparams) need_21 |= p.spec.bits > 8;
  if (need_21) {
    raise_opset(m, 21);
    m.ir_version = std::max<int64_t>(m.ir_version, 10);
  } else if (need_13) {
    raise_opset(m, 13);
    m.ir_version = std::max<int64_t>(m.ir_version, 7);
  } else if (m.opset() < 10) {
    raise_opset(m, 10);
  }
  g.prune_unused_initializers();
  g.toposort();
  m.producer_name = "perch";
  m.producer_version = "0.1.0";
  res.model = std::move(m);
  res.total_seconds = cal.total_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

PtqResult quantize_model(const Model& model, const Dataset& calib, const PtqOptions& options) {
  Calibration cal = calibrate(model, calib, options);
  if (options.adaround) (void)round_weights_adaptively(cal, calib, options);
  const bool ebc = options.bias_correction && options.empirical_bias_correction;
  if (ebc) (void)correct_biases_empirically(cal, calib, options);
  if (options.search_ranges) {
    (void)search_activation_ranges(cal, calib, options);
    if (ebc) (void)correct_biases_empirically(cal, calib, options);  // measured again on the new grids
  }
  return build_quantized(cal, options);
}

}  // namespace perch::ptq
