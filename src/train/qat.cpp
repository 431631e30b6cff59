#include "perch/train/qat.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "perch/core/error.h"
#include "perch/core/progress.h"
#include "perch/ptq/evaluate.h"
#include "perch/quant/estimators.h"
#include "perch/quant/fake_quant.h"
#include "perch/train/autograd.h"

namespace perch::train {

using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

constexpr const char* kDomain = "perch";

const char* granularity_attr(quant::Granularity g) {
  switch (g) {
    case quant::Granularity::kPerChannel: return "per-channel";
    case quant::Granularity::kPerGroup: return "per-group";
    default: return "per-tensor";
  }
}

quant::QuantSpec spec_from_attrs(const Node& n) {
  quant::QuantSpec s;
  s.bits = static_cast<int>(n.attr_int("bits", 8));
  s.is_signed = n.attr_int("signed", 0) != 0;
  s.symmetric = n.attr_int("symmetric", 0) != 0;
  s.narrow_range = n.attr_int("narrow", 0) != 0;
  const std::string g = n.attr_string("granularity", "per-tensor");
  s.granularity = g == "per-channel" ? quant::Granularity::kPerChannel
                  : g == "per-group" ? quant::Granularity::kPerGroup
                                     : quant::Granularity::kPerTensor;
  s.axis = n.attr_int("axis", 0);
  s.group_size = n.attr_int("group_size", 0);
  s.validate();
  return s;
}

void set_spec_attrs(Node& n, const quant::QuantSpec& s) {
  n.attrs["bits"] = int64_t{s.bits};
  n.attrs["signed"] = int64_t{s.is_signed};
  n.attrs["symmetric"] = int64_t{s.symmetric};
  n.attrs["narrow"] = int64_t{s.narrow_range};
  n.attrs["granularity"] = std::string(granularity_attr(s.granularity));
  n.attrs["axis"] = s.axis;
  n.attrs["group_size"] = s.group_size;
}

// A learned step size, kept positive and away from denormals (as choose_params does).
float step_value(float v) { return std::max(std::fabs(v), quant::min_scale()); }

// Weight parameters: from the current weights (the export's estimator), or the learned steps (input 1).
quant::QuantParams weight_params(const Node& n, const Tensor& w, const Tensor* step) {
  const quant::QuantSpec spec = spec_from_attrs(n);
  if (!step) {
    quant::RangeEstimator e(spec);
    e.observe(w);
    return e.params();
  }
  std::vector<float> sc(static_cast<size_t>(step->numel()));
  for (int64_t i = 0; i < step->numel(); ++i) sc[static_cast<size_t>(i)] = step_value(step->data<float>()[i]);
  return quant::make_params(spec, w.shape(), sc, std::vector<int32_t>(sc.size(), 0));
}

std::vector<Tensor> fq_weight_forward(const Node& n, const Args& a, int64_t, ForwardContext&) {
  PERCH_CHECK(!a.empty() && a[0] && a[0]->dtype() == DType::kFloat32, n.describe(), ": needs a float32 weight");
  const Tensor* step = a.size() > 1 ? a[1] : nullptr;
  return {quant::fake_quant(*a[0], weight_params(n, *a[0], step))};
}

std::vector<Tensor> fq_weight_backward(const GradArgs& a) {
  const Tensor& w = *a.inputs[0];
  const Tensor* step = a.inputs.size() > 1 ? a.inputs[1] : nullptr;
  const quant::QuantParams p = weight_params(a.node, w, step);
  std::vector<Tensor> out(a.inputs.size());
  const Tensor& dy = *a.grad_outputs.at(0);
  if (step && a.needs.size() > 1 && a.needs[1]) {
    quant::LsqGrad g = quant::lsq_backward(dy, w, p, 0.0);
    out[0] = g.dx;
    out[1] = Tensor::from<float>(step->shape(), g.dscale);
  } else {
    out[0] = quant::fake_quant_ste_backward(dy, w, p);
  }
  return out;
}

// Activation parameters in use: inputs scale (1) and zero point (2).
quant::QuantParams act_params(const Node& n, const Tensor& x, const Args& a) {
  const quant::QuantSpec spec = spec_from_attrs(n);
  const float s = step_value(a.at(1)->data<float>()[0]);
  const auto zp = static_cast<int32_t>(std::lrint(a.at(2)->data<float>()[0]));
  return quant::make_params(spec, x.shape(), {s}, {zp});
}

std::vector<Tensor> fq_act_forward(const Node& n, const Args& a, int64_t, ForwardContext& ctx) {
  PERCH_CHECK(a.size() == 5 && a[0] && a[1] && a[2] && a[3] && a[4], n.describe(),
              ": FakeQuantAct needs (x, scale, zero_point, lo, hi)");
  const Tensor& x = *a[0];
  const bool learn = n.attr_int("learn", 0) != 0, frozen = n.attr_int("frozen", 0) != 0;
  if (ctx.training && !learn && !frozen && x.numel() > 0) {
    const float m = n.attr_float("momentum", 0.99f);
    // The batch's range over its finite values (quant::slot_ranges: vectorized, split over the threads).
    const quant::SlotRanges br = quant::slot_ranges(quant::SlotLayout::make(quant::QuantSpec{}, x.shape()), x.data<float>());
    const float bmin = br.min[0], bmax = br.max[0];
    if (bmin <= bmax) {
      const float lo = m * a[3]->data<float>()[0] + (1.0f - m) * bmin;
      const float hi = m * a[4]->data<float>()[0] + (1.0f - m) * bmax;
      const quant::QuantParams p = quant::choose_params(spec_from_attrs(n), x.shape(), {&lo, 1}, {&hi, 1});
      ctx.updates.emplace_back(n.input(1), Tensor::scalar_f32(p.scale[0]).reshaped(a[1]->shape()));
      ctx.updates.emplace_back(n.input(2), Tensor::scalar_f32(static_cast<float>(p.zero_point[0])).reshaped(a[2]->shape()));
      ctx.updates.emplace_back(n.input(3), Tensor::scalar_f32(lo).reshaped(a[3]->shape()));
      ctx.updates.emplace_back(n.input(4), Tensor::scalar_f32(hi).reshaped(a[4]->shape()));
      return {quant::fake_quant(x, p)};
    }
  }
  return {quant::fake_quant(x, act_params(n, x, a))};
}

std::vector<Tensor> fq_act_backward(const GradArgs& a) {
  const Tensor& x = *a.inputs[0];
  const quant::QuantParams p = act_params(a.node, x, a.inputs);
  const Tensor& dy = *a.grad_outputs.at(0);
  std::vector<Tensor> out(a.inputs.size());
  if (a.needs.size() > 1 && a.needs[1]) {
    quant::LsqGrad g = quant::lsq_backward(dy, x, p, 0.0);
    out[0] = g.dx;
    out[1] = Tensor::from<float>(a.inputs[1]->shape(), g.dscale);
  } else {
    out[0] = quant::fake_quant_ste_backward(dy, x, p);
  }
  return out;
}

// FakeQuantBias(b, w, act_scale [, step]): the bias as the export stores it — int32 with scale
// s_in * s_w[c] (a float product, as ptq::build_quantized computes it), rounded half-to-even in double —
// dequantized again. s_w comes from the weight exactly as FakeQuantWeight computes it. Gradient: STE to b.
std::vector<Tensor> fq_bias_forward(const Node& n, const Args& a, int64_t, ForwardContext&) {
  PERCH_CHECK(a.size() >= 3 && a[0] && a[1] && a[2], n.describe(), ": FakeQuantBias needs (b, w, act_scale)");
  const Tensor& b = *a[0];
  const quant::QuantParams wp = weight_params(n, *a[1], a.size() > 3 ? a[3] : nullptr);
  const float s_in = step_value(a[2]->data<float>()[0]);
  const bool per_channel = wp.count() > 1;
  PERCH_CHECK(!per_channel || wp.count() == b.numel(), n.describe(), ": bias has ", b.numel(), " values for ", wp.count(),
              " weight channels");
  Tensor y = Tensor::uninitialized(DType::kFloat32, b.shape());
  for (int64_t c = 0; c < b.numel(); ++c) {
    const float sc = s_in * wp.scale[static_cast<size_t>(per_channel ? c : 0)];
    double r = std::nearbyint(static_cast<double>(b.data<float>()[c]) / sc);
    r = std::clamp(r, static_cast<double>(INT32_MIN), static_cast<double>(INT32_MAX));
    y.data<float>()[c] = quant::dequantize_value(static_cast<int32_t>(r), sc, 0);
  }
  return {y};
}

std::vector<Tensor> fq_bias_backward(const GradArgs& a) {
  std::vector<Tensor> out(a.inputs.size());
  out[0] = *a.grad_outputs.at(0);
  return out;
}

bool is_weight_op(const std::string& t) { return t == "Conv" || t == "Gemm" || t == "MatMul"; }

}  // namespace

void register_qat_ops(GradRegistry& r) {
  r.add("FakeQuantWeight", kDomain, GradOp{fq_weight_backward, fq_weight_forward, {}});
  r.add("FakeQuantAct", kDomain, GradOp{fq_act_backward, fq_act_forward, {2, 3, 4}});
  r.add("FakeQuantBias", kDomain, GradOp{fq_bias_backward, fq_bias_forward, {1, 2, 3}});
}

QatGraph prepare_qat(const graph::Model& model, const Dataset& calib, const QatOptions& o) {
  QatGraph q;
  q.ptq = o.ptq;
  q.ptq.bias_correction = false;
  const ptq::PtqOptions& popt = q.ptq;
  q.calibration = ptq::calibrate(model, calib, popt);
  const ptq::Calibration& cal = q.calibration;
  // ---- The training graph: the canonical model plus fake-quant nodes where the export puts Q/DQ.
  q.model = cal.model;
  graph::Model& tm = q.model;
  for (auto& [name, t] : tm.graph.initializers) t = t.clone();
  auto& g = tm.graph;
  std::vector<std::string>& params = q.params;
  params = default_parameters(tm);
  // Activations first. A pass-through value (MaxPool, Reshape... of a quantized value) shares its root's
  // parameters, as in the export: its fake-quant node reads the root's state and never updates it.
  std::map<std::string, std::string>& act_fq = q.act_state;  // activation -> the FakeQuantAct node whose state it uses
  std::map<std::string, std::string> act_state;  // fake-quant output -> the same
  const quant::QuantSpec aspec = ptq::activation_spec(popt.activations);
  for (const auto& v : cal.targets) {
    if (popt.float_activations.count(v) || g.is_graph_output(v)) continue;
    std::string root = v;
    while (cal.shares.count(root)) root = cal.shares.at(root);
    Node fq;
    fq.name = g.unique_name(v + "_fakequant");
    fq.op_type = "FakeQuantAct";
    fq.domain = kDomain;
    set_spec_attrs(fq, aspec);
    fq.attrs["momentum"] = o.ema_momentum;
    fq.attrs["learn"] = int64_t{o.learn_scales};
    std::string base;
    if (root != v && act_fq.count(root)) {
      base = act_fq.at(root);
      fq.attrs["frozen"] = int64_t{1};  // the root's node moves the range
      fq.attrs["learn"] = int64_t{0};
    } else {
      const quant::QuantParams& p = cal.activation_params.at(v);
      const float lo = static_cast<float>(aspec.qmin() - p.zero_point[0]) * p.scale[0];
      const float hi = static_cast<float>(aspec.qmax() - p.zero_point[0]) * p.scale[0];
      base = fq.name;
      g.initializers[base + ".scale"] = Tensor::from<float>({1}, std::vector<float>{p.scale[0]});
      g.initializers[base + ".zero_point"] =
          Tensor::from<float>({1}, std::vector<float>{static_cast<float>(p.zero_point[0])});
      g.initializers[base + ".lo"] = Tensor::from<float>({1}, std::vector<float>{lo});
      g.initializers[base + ".hi"] = Tensor::from<float>({1}, std::vector<float>{hi});
      if (o.learn_scales) params.push_back(base + ".scale");
    }
    fq.inputs = {v, base + ".scale", base + ".zero_point", base + ".lo", base + ".hi"};
    fq.outputs = {g.unique_name(v + "_fq")};
    for (size_t i : g.consumers(v))
      for (auto& in : g.nodes[i].inputs)
        if (in == v) in = fq.outputs[0];
    g.nodes.push_back(fq);
    act_fq[v] = base;
    act_state[fq.outputs[0]] = base;
  }
  std::map<std::string, std::string> weight_fq;  // weight -> its fake-quant output
  const size_t original = g.nodes.size();
  for (size_t i = 0; i < original; ++i) {
    const Node n = g.nodes[i];
    if (!is_weight_op(n.op_type) || popt.float_nodes.count(n.name)) continue;
    const std::string wname = n.input(1);
    const Tensor* w = g.initializer(wname);
    if (!w || w->dtype() != DType::kFloat32) continue;
    auto it = weight_fq.find(wname);
    if (it == weight_fq.end()) {
      const ptq::WeightOptions& wo = popt.layer_weights.count(n.name) ? popt.layer_weights.at(n.name) : popt.weights;
      Node fq;
      fq.name = g.unique_name(wname + "_fakequant");
      fq.op_type = "FakeQuantWeight";
      fq.domain = kDomain;
      set_spec_attrs(fq, ptq::weight_spec(wo, n, *w));
      fq.inputs = {wname};
      fq.outputs = {g.unique_name(wname + "_fq")};
      if (o.learn_scales) {
        const quant::QuantParams p = weight_params(fq, *w, nullptr);
        const std::string step = g.unique_name(wname + "_step");
        g.initializers[step] = Tensor::from<float>(p.param_shape.empty() ? Shape{1} : p.param_shape, p.scale);
        fq.inputs.push_back(step);
        params.push_back(step);
      }
      g.nodes.push_back(fq);
      it = weight_fq.emplace(wname, fq.outputs[0]).first;
    }
    g.nodes[i].inputs[1] = it->second;
    // The bias as the export stores it (int32 at s_in * s_w), when the export quantizes it.
    const std::string in0 = n.input(0), bname = n.input(2);
    const Tensor* bias = bname.empty() ? nullptr : g.initializer(bname);
    const bool gemm_ok = n.op_type != "Gemm" || (n.attr_float("beta", 1.0f) == 1.0f && bias && bias->rank() == 1);
    const Node& wfq = *std::find_if(g.nodes.begin(), g.nodes.end(), [&](const Node& x) { return x.outputs[0] == it->second; });
    if (n.op_type != "MatMul" && bias && bias->dtype() == DType::kFloat32 && gemm_ok && act_state.count(in0) &&
        wfq.attr_string("granularity", "") != "per-group") {
      Node fb;
      fb.name = g.unique_name(bname + "_fakequant");
      fb.op_type = "FakeQuantBias";
      fb.domain = kDomain;
      fb.attrs = wfq.attrs;
      fb.inputs = {bname, wname, act_state.at(in0) + ".scale"};
      if (wfq.inputs.size() > 1) fb.inputs.push_back(wfq.inputs[1]);
      fb.outputs = {g.unique_name(bname + "_fq")};
      g.nodes[i].inputs[2] = fb.outputs[0];
      g.nodes.push_back(fb);
    }
  }
  g.toposort();
  tm.source = model.source + " (QAT)";

  return q;
}

ptq::PtqResult export_qat(const QatGraph& q) {
  const auto& g = q.model.graph;
  ptq::PtqOptions popt = q.ptq;
  // ---- Export: trained weights and final parameters into the calibration, then the QDQ build.
  ptq::Calibration out = q.calibration;
  for (auto& [name, t] : out.model.graph.initializers)
    if (auto it = g.initializers.find(name); it != g.initializers.end()) t = it->second.clone();
  for (const auto& [v, node] : q.act_state) {
    const float s = step_value(g.initializers.at(node + ".scale").data<float>()[0]);
    const auto zp = static_cast<int32_t>(std::lrint(g.initializers.at(node + ".zero_point").data<float>()[0]));
    out.activation_params[v] = quant::make_params(ptq::activation_spec(popt.activations), {}, {s}, {zp});
  }
  for (const auto& n : g.nodes)
    if (n.op_type == "FakeQuantWeight" && n.inputs.size() > 1)
      popt.weight_params[n.inputs[0]] = weight_params(n, g.initializers.at(n.inputs[0]), &g.initializers.at(n.inputs[1]));
  return ptq::build_quantized(out, popt);
}

QatResult quantization_aware_training(const graph::Model& model, const Dataset& train_data, const QatOptions& o,
                                      const Dataset* eval) {
  PERCH_CHECK(train_data.has_labels(), train_data.name, ": QAT needs labelled training data");
  QatResult res;
  const int64_t ncal = std::min(o.calib_images, train_data.size());
  QatGraph q = prepare_qat(model, sample(train_data, ncal, o.train.seed), o);
  if (eval) {
    const runtime::Executor before(ptq::build_quantized(q.calibration, q.ptq).model);
    res.ptq_accuracy = ptq::evaluate(before, *eval, 256, "PTQ (before QAT)").accuracy();
  }
  auto& g = q.model.graph;
  Tape tape(q.model, q.params);
  TrainOptions to = o.train;
  to.label = "QAT";
  const auto user_step = to.on_step;
  to.on_step = [&](int64_t step, int64_t total) {
    if (o.freeze_ranges < 1.0f && step + 1 == static_cast<int64_t>(static_cast<double>(total) * o.freeze_ranges))
      for (auto& n : g.nodes)
        if (n.op_type == "FakeQuantAct") n.attrs["frozen"] = int64_t{1};
    if (user_step) user_step(step, total);
  };
  res.logs = fit(tape, train_data, to);
  if (eval) res.fq_accuracy = accuracy(tape, *eval, 256, "fake-quant model");

  res.exported = export_qat(q);
  res.fake_quant = q.model;
  return res;
}

}  // namespace perch::train
