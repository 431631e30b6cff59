#include "perch/ptq/quantize.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <memory>

#include "perch/core/progress.h"
#include "perch/graph/passes.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {

using graph::Graph;
using graph::Model;
using graph::Node;

namespace {

bool is_weight_op(const std::string& op) { return op == "Conv" || op == "Gemm" || op == "MatMul"; }
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
  if (op == "Conv" || op == "Gemm") {
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

quant::QuantSpec activation_spec(const ActivationOptions& o) {
  quant::QuantSpec s;
  s.bits = o.bits;
  s.is_signed = o.is_signed;
  s.symmetric = false;
  s.granularity = quant::Granularity::kPerTensor;
  s.validate();
  return s;
}

// Input-channel axis (the axis groups run along) for per-group weights.
int64_t weight_group_axis(const Node& n, int64_t rank) {
  if (n.op_type == "Conv") return 1;
  if (n.op_type == "Gemm") return n.attr_int("transB", 0) ? 1 : 0;
  return rank - 2;  // MatMul: K
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
      "ConstantOfShape", "Size", "PRelu", "Elu", "Selu", "Softplus", "Softsign", "InstanceNormalization"};
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

// Rank of value `v` where the model declares its shape (inputs, outputs, value_info), else -1.
int64_t declared_rank(const Graph& g, const std::string& v) {
  for (const auto* list : {&g.inputs, &g.outputs, &g.value_info})
    for (const auto& vi : *list)
      if (vi.name == v && vi.has_shape) return static_cast<int64_t>(vi.shape.size());
  return -1;
}

// Raises the default-domain opset to `target`, converting the ops whose form changed on the way (a form
// change at version V applies when from < V <= target): Clip (11: min/max
// attributes -> inputs), Squeeze/Unsqueeze (13: axes attribute -> input), Reshape (5: shape attribute
// -> input), Slice (10: starts/ends/axes attributes -> inputs), ReduceSum (13) and the other Reduce*
// (18: axes attribute -> input). Softmax/LogSoftmax/Hardmax below 13 coerce the
// input to 2-D at `axis` (default 1): kept as they are when that axis is the last one (axis -1, or
// rank-1 where the rank is declared) — both definitions agree there —, otherwise rewritten exactly as
// Flatten(axis) -> op(axis -1) -> Reshape(Shape(x)). Resize from 11 is kept unless it uses
// tf_half_pixel_for_nn (gone in 13). Anything else is refused with the op named.
void raise_opset(Model& m, int64_t target) {
  const int64_t from = m.opset();
  if (from >= target) return;
  Graph& g = m.graph;
  std::vector<Node> added;
  for (auto& n : g.nodes) {
    if (!n.domain.empty()) PERCH_FAIL(m.source, ": cannot raise opset: ", n.describe(), " is in domain '", n.domain, "'");
    if (n.op_type == "Clip" && from < 11 && target >= 11) {
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
    } else if ((n.op_type == "Squeeze" || n.op_type == "Unsqueeze") && from < 13 && target >= 13) {
      if (n.has_attr("axes")) attribute_to_input(g, n, "axes");
    } else if (n.op_type == "Reshape" && from < 5 && target >= 5) {
      auto shape = n.attr_ints("shape");
      const std::string name = g.unique_name(n.name + "_shape");
      g.initializers[name] = Tensor::from<int64_t>({static_cast<int64_t>(shape.size())}, shape);
      n.inputs.push_back(name);
      n.attrs.erase("shape");
    } else if (n.op_type == "Slice" && from < 10 && target >= 10) {
      n.inputs.resize(1);
      for (const char* key : {"starts", "ends", "axes"}) attribute_to_input(g, n, key);
      while (!n.inputs.empty() && n.inputs.back().empty()) n.inputs.pop_back();
    } else if (is_reduce(n.op_type)) {
      const int64_t moved = n.op_type == "ReduceSum" ? 13 : 18;
      if (from < moved && target >= moved) {
        n.inputs.resize(1);
        if (n.has_attr("axes")) attribute_to_input(g, n, "axes");
      }
    } else if (n.op_type == "Reshape" || n.op_type == "Clip" || n.op_type == "Squeeze" || n.op_type == "Unsqueeze" ||
               n.op_type == "Slice") {
      // already in the newer form
    } else if (n.op_type == "Resize") {
      if ((from < 11 && target >= 11) || (target >= 13 && n.attr_string("coordinate_transformation_mode", "half_pixel") == "tf_half_pixel_for_nn"))
        PERCH_FAIL(m.source, ": cannot raise opset ", from, " -> ", target, ": ", n.describe(),
                   from < 11 ? " has the opset-10 form" : " uses tf_half_pixel_for_nn, which opset 13 dropped");
    } else if ((n.op_type == "Softmax" || n.op_type == "LogSoftmax" || n.op_type == "Hardmax") && from < 13 && target >= 13) {
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
    } else if (!opset_stable(n.op_type) && n.op_type != "Softmax" && n.op_type != "LogSoftmax" && n.op_type != "Hardmax") {
      PERCH_FAIL(m.source, ": per-channel/per-group QDQ needs opset >= ", target, " but the model is opset ", from,
                 " and perch does not know how to convert ", n.describe(), " yet");
    }
  }
  for (auto& n : added) g.nodes.push_back(std::move(n));
  if (!added.empty()) g.toposort();
  m.set_opset(target);
}

}  // namespace

int64_t weight_channel_axis(const Node& n, int64_t rank) {
  if (n.op_type == "Conv") return 0;
  if (n.op_type == "Gemm") return n.attr_int("transB", 0) ? 0 : 1;
  return rank - 1;  // MatMul: N
}

double channel_spread(const Tensor& w, int64_t axis) {
  quant::QuantSpec spec;
  spec.granularity = quant::Granularity::kPerChannel;
  spec.axis = axis;
  const auto layout = quant::SlotLayout::make(spec, w.shape());
  std::vector<float> lo(layout.slots, std::numeric_limits<float>::infinity()), hi(layout.slots, -std::numeric_limits<float>::infinity());
  const float* d = w.data<float>();
  layout.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    for (int64_t k = 0; k < n; ++k) {
      const auto s = static_cast<size_t>(s0 + k * step);
      lo[s] = std::min(lo[s], d[b + k]);
      hi[s] = std::max(hi[s], d[b + k]);
    }
  });
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

// The quantized form of one weight tensor, planned before calibration (weights do not depend on data).
struct WeightPlan {
  quant::QuantSpec spec;
  quant::QuantParams params;
  Tensor q;        // int8 storage
  Tensor delta;    // fake_quant(w) - w, float: the error bias correction measures
  std::string dq;  // DequantizeLinear output, once written
};

quant::QuantSpec weight_spec(const WeightOptions& o, const Node& n, const Tensor& w) {
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

}  // namespace

PtqResult quantize_model(const Model& input_model, const Dataset& calib, const PtqOptions& opt) {
  const auto t_start = std::chrono::steady_clock::now();
  PtqResult res;
  Model m = input_model;
  res.canonicalize_summary = graph::canonicalize(m);
  if (opt.equalize) res.equalization = equalize(m);
  Graph& g = m.graph;
  PERCH_CHECK(!g.inputs.empty(), m.source, ": model has no inputs");
  PERCH_CHECK(calib.size() > 0, calib.name, ": calibration set is empty");

  // ---- 1. Which activations get Q/DQ, and which share their input's parameters.
  std::map<std::string, std::string> shares;  // value -> value whose parameters it reuses
  std::vector<std::string> targets;           // in graph order
  std::set<std::string> target_set;
  const std::set<std::string> floats = float_values(g);
  auto consider = [&](const std::string& v) {
    if (target_set.count(v) || g.is_initializer(v) || !floats.count(v)) return;
    if (g.is_graph_output(v) && !opt.quantize_outputs) return;
    const auto cons = g.consumers(v);
    bool read_as_data = false;
    for (size_t c : cons) {
      const Node& cn = g.nodes[c];
      if (opt.float_nodes.count(cn.name) && is_weight_op(cn.op_type)) continue;
      for (size_t i : data_inputs(cn, g))
        if (cn.inputs[i] == v) read_as_data = true;
    }
    if (!read_as_data && !(g.is_graph_output(v) && opt.quantize_outputs)) return;
    const int64_t p = g.producer(v);
    if (p >= 0) {
      const Node& pn = g.nodes[p];
      const bool fusable_producer = is_weight_op(pn.op_type) || pn.op_type == "Add";
      if (fusable_producer && cons.size() == 1 && is_fusable_activation(g.nodes[cons[0]]) && !g.is_graph_output(v)) return;
      if (is_passthrough(pn.op_type) && target_set.count(pn.inputs[0])) shares[v] = pn.inputs[0];
    }
    targets.push_back(v);
    target_set.insert(v);
  };
  for (const auto& in : g.inputs) consider(in.name);
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs)
      if (!o.empty()) consider(o);
  auto root = [&](std::string v) {
    while (shares.count(v)) v = shares[v];
    return v;
  };

  // ---- 2. Plan the weights of Conv/Gemm/MatMul (independent of the data).
  std::map<std::string, WeightPlan> plans;  // by weight initializer name
  std::vector<size_t> weight_nodes;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    if (!is_weight_op(n.op_type)) continue;
    const Tensor* w = g.initializer(n.input(1));
    if (!w || w->dtype() != DType::kFloat32) continue;  // activation x activation MatMul stays float
    weight_nodes.push_back(ni);
    if (opt.float_nodes.count(n.name) || plans.count(n.input(1))) continue;
    WeightPlan wp;
    wp.spec = weight_spec(opt.weights, n, *w);
    quant::RangeEstimator we(wp.spec, opt.weights.estimator);
    we.observe(*w);
    wp.params = we.params();
    wp.q = quant::quantize(*w, wp.params);
    wp.delta = quant::dequantize(wp.q, wp.params);
    for (int64_t i = 0; i < w->numel(); ++i) wp.delta.data<float>()[i] -= w->data<float>()[i];
    plans.emplace(n.input(1), std::move(wp));
  }

  // Bias correction: E[op(x, W_q - W)] per output channel over the calibration set, with x the layer's
  // float input; subtracting it from the bias removes the mean output shift weight rounding causes.
  struct Correction {
    std::vector<double> sum;
    int64_t count = 0;  // outputs per channel accumulated
  };
  std::map<size_t, Correction> corrections;  // by node index
  std::map<std::string, std::vector<size_t>> corrected_by_input;
  if (opt.bias_correction)
    for (size_t ni : weight_nodes) {
      const Node& n = g.nodes[ni];
      if (opt.float_nodes.count(n.name) || n.op_type == "MatMul") continue;
      if (n.op_type == "Gemm" && (n.attr_float("beta", 1.0f) != 1.0f || n.attr_int("transA", 0) != 0)) continue;
      if (!n.input(2).empty()) {
        const Tensor* b = g.initializer(n.input(2));
        if (!b || b->dtype() != DType::kFloat32 || b->rank() != 1) continue;
      }
      corrections[ni] = Correction{};
      corrected_by_input[n.input(0)].push_back(ni);
    }

  // ---- 3. Calibrate: run the float model, feed each (root) target's estimator and the corrections.
  const quant::QuantSpec aspec = activation_spec(opt.activations);
  std::map<std::string, quant::RangeEstimator> est;
  for (const auto& v : targets)
    if (!shares.count(v)) est.emplace(v, quant::RangeEstimator(aspec, opt.activations.estimator));
  {
    const auto t0 = std::chrono::steady_clock::now();
    runtime::Executor exec(m);
    const auto& registry = runtime::OpRegistry::global();
    Progress progress("calibrating", calib.size());
    const std::string in_name = g.inputs[0].name;
    for (int64_t b = 0; b < calib.size(); b += opt.batch) {
      const int64_t n = std::min(opt.batch, calib.size() - b);
      Tensor x = calib.batch(b, n);
      auto observe = [&](const std::string& name, const Tensor& t) {
        if (auto it = est.find(name); it != est.end()) {
          PERCH_CHECK(t.dtype() == DType::kFloat32, m.source, ": activation '", name, "' is ", dtype_name(t.dtype()),
                      ", not float32; it cannot be quantized");
          try {
            it->second.observe(t);
          } catch (const Error& e) {
            PERCH_FAIL(m.source, ": calibrating activation '", name, "' on ", calib.name, " images ", b, "..",
                       b + n - 1, ": ", e.what());
          }
        }
        if (auto it = corrected_by_input.find(name); it != corrected_by_input.end())
          for (size_t ni : it->second) {
            Node probe = g.nodes[ni];  // the same op without its bias, applied to the weight error
            probe.inputs.resize(2);
            const WeightPlan& wp = plans.at(probe.inputs[1]);
            const Tensor dy = (*registry.find(probe.op_type, probe.domain, m.opset()))(probe, {&t, &wp.delta}, m.opset())[0];
            Correction& c = corrections[ni];
            const int64_t channels = dy.dim(1), inner = dy.numel() / (dy.dim(0) * channels);
            if (c.sum.empty()) c.sum.assign(static_cast<size_t>(channels), 0.0);
            const float* d = dy.data<float>();
            for (int64_t i = 0; i < dy.dim(0); ++i)
              for (int64_t ch = 0; ch < channels; ++ch) {
                double acc = 0;
                for (int64_t k = 0; k < inner; ++k) acc += d[(i * channels + ch) * inner + k];
                c.sum[ch] += acc;
              }
            c.count += dy.dim(0) * inner;
          }
      };
      observe(in_name, x);
      exec.run({{in_name, x}}, observe);
      progress.update(b + n);
    }
    progress.finish();
    res.calibration_images = calib.size();
    res.calibration_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  std::map<std::string, quant::QuantParams> aparams;
  for (const auto& v : targets) {
    const std::string r = root(v);
    auto it = est.find(r);
    PERCH_CHECK(it != est.end() && !it->second.empty(), m.source, ": activation '", r,
                "' was never computed during calibration (dead branch?)");
    aparams[v] = it->second.params();
  }
  for (const auto& [name, e] : est) res.nonfinite_values += e.nonfinite_count();

  // ---- 4. Write weights and biases.
  const DType act_type = aspec.storage_type();
  bool need_13 = false, need_21 = false;
  for (size_t ni : weight_nodes) {
    const Node n = g.nodes[ni];  // copy: add_dequantize appends to g.nodes
    const std::string wname = n.input(1);
    const Tensor& w = *g.initializer(wname);
    LayerReport rep;
    rep.node = n.name;
    rep.op_type = n.op_type;
    rep.weight = wname;
    rep.weight_shape = w.shape();
    rep.axis = weight_channel_axis(n, w.rank());
    rep.spread = channel_spread(w, rep.axis);
    if (opt.float_nodes.count(n.name)) {
      rep.granularity = "float";
      res.layers.push_back(rep);
      continue;
    }
    WeightPlan& wp = plans.at(wname);
    if (wp.dq.empty()) {
      const std::string qname = g.unique_name(wname + "_quantized");
      g.initializers[qname] = wp.q;
      wp.dq = add_dequantize(g, wname, qname, wp.params, DType::kInt8);
    }
    rep.axis = wp.params.axis;
    rep.granularity = granularity_label(wp.spec);
    rep.bits = wp.spec.bits;
    {
      Tensor fq = w.clone();
      for (int64_t i = 0; i < fq.numel(); ++i) fq.data<float>()[i] += wp.delta.data<float>()[i];
      rep.weight_sqnr_db = sqnr_db(w, fq);
    }
    need_13 |= wp.spec.granularity != quant::Granularity::kPerTensor;
    need_21 |= wp.spec.granularity == quant::Granularity::kPerGroup;
    g.nodes[ni].inputs[1] = wp.dq;

    // The float bias, bias-corrected.
    std::string bname = n.input(2);
    const Tensor* bias = bname.empty() ? nullptr : g.initializer(bname);
    if (auto c = corrections.find(ni); c != corrections.end() && c->second.count > 0) {
      const int64_t channels = static_cast<int64_t>(c->second.sum.size());
      Tensor nb(DType::kFloat32, {channels});
      for (int64_t ch = 0; ch < channels; ++ch) {
        const double shift = c->second.sum[ch] / static_cast<double>(c->second.count);
        rep.bias_correction_max = std::max(rep.bias_correction_max, std::fabs(shift));
        nb.data<float>()[ch] = static_cast<float>((bias ? bias->data<float>()[ch] : 0.0) - shift);
      }
      bname = g.unique_name((bname.empty() ? n.name + "_bias" : bname) + "_corrected");
      g.initializers[bname] = nb;
      g.nodes[ni].inputs.resize(3);
      g.nodes[ni].inputs[2] = bname;
      bias = g.initializer(bname);
    }

    // Bias as int32, scale s_in * s_w[c], zero point 0. Needs the input's activation scale and one weight
    // scale per output channel (per-group weights keep a float bias).
    const bool gemm_ok = n.op_type != "Gemm" || (n.attr_float("beta", 1.0f) == 1.0f && bias && bias->rank() == 1);
    auto ain = aparams.find(n.input(0));
    if (n.op_type != "MatMul" && bias && bias->dtype() == DType::kFloat32 && gemm_ok && ain != aparams.end() &&
        wp.spec.granularity != quant::Granularity::kPerGroup) {
      const int64_t channels = bias->numel();
      const bool per_channel = wp.params.count() > 1;
      PERCH_CHECK(!per_channel || wp.params.count() == channels, m.source, ": ", n.describe(), ": bias has ", channels,
                  " values for ", wp.params.count(), " weight channels");
      const float s_in = ain->second.scale[0];
      quant::QuantParams bp;
      bp.spec.granularity = per_channel ? quant::Granularity::kPerChannel : quant::Granularity::kPerTensor;
      bp.spec.bits = 16;  // layout only: bias storage is int32
      bp.axis = 0;
      bp.param_shape = per_channel ? Shape{channels} : Shape{};
      Tensor bq(DType::kInt32, bias->shape());
      for (int64_t c = 0; c < (per_channel ? channels : 1); ++c) {
        bp.scale.push_back(s_in * wp.params.scale[c]);  // float product, as ONNX Runtime's quantizer computes it
        bp.zero_point.push_back(0);
      }
      for (int64_t c = 0; c < channels; ++c) {
        const double sc = bp.scale[per_channel ? c : 0];
        double r = std::nearbyint(static_cast<double>(bias->data<float>()[c]) / sc);
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
    }
    res.layers.push_back(rep);
  }

  // ---- 5. Activation Q/DQ pairs.
  for (const auto& v : targets) {
    const quant::QuantParams& p = aparams[v];
    const std::string s = g.unique_name(v + "_scale"), z = g.unique_name(v + "_zero_point");
    g.initializers[s] = scale_tensor(p);
    g.initializers[z] = zero_point_tensor(p, act_type);
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
  }
  res.activations_quantized = static_cast<int64_t>(targets.size());

  // ---- 6. Opset and metadata.
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
  res.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return res;
}

}  // namespace perch::ptq
