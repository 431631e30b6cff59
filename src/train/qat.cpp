#include "perch/train/qat.h"
#include "perch/train/distill.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <set>
#include <string>

#include "perch/core/error.h"
#include "perch/core/progress.h"
#include "perch/core/threads.h"
#include "perch/graph/passes.h"
#include "perch/kernels/pool_f32.h"
#include "perch/ptq/evaluate.h"
#include "perch/quant/estimators.h"
#include "perch/quant/fake_quant.h"
#include "perch/runtime/op_geometry.h"
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

// The weight estimator of ptq::WeightOptions on a FakeQuantWeight node (attributes "estimator", "percentile" as
// text so that the double round-trips, "bins"; none: min/max), so training clips weights as the export does.
void set_estimator_attrs(Node& n, const quant::EstimatorOptions& e) {
  if (e.kind == quant::EstimatorKind::kMinMax) return;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", e.percentile);
  n.attrs["estimator"] = std::string(quant::estimator_name(e.kind));
  n.attrs["percentile"] = std::string(buf);
  n.attrs["bins"] = int64_t{e.bins};
}

quant::EstimatorOptions estimator_from_attrs(const Node& n) {
  quant::EstimatorOptions e;
  if (!n.has_attr("estimator")) return e;
  e.kind = quant::parse_estimator(n.attr_string("estimator", "minmax"));
  e.percentile = std::stod(n.attr_string("percentile", "99.99"));
  e.bins = static_cast<int>(n.attr_int("bins", e.bins));
  return e;
}

// A learned step size, kept positive and away from denormals (as choose_params does).
float step_value(float v) { return std::max(std::fabs(v), quant::min_scale()); }

// Weight parameters: from the current weights (the export's estimator), or the learned steps (input 1).
// Without learned steps and given the layer's bias `b` and input scale, per-channel scales are raised where the
// bias would not fit int32 at s_in * s_w (ptq::raise_scales_for_bias), exactly as the export does — else a channel
// with tiny weights beside a normal bias (PaddlePaddle's learnable affine scales folded in) would train with its
// bias clamped to ~0 and be exported with it restored.
quant::QuantParams weight_params(const Node& n, const Tensor& w, const Tensor* step, const Tensor* b = nullptr,
                                 const Tensor* act_scale = nullptr) {
  const quant::QuantSpec spec = spec_from_attrs(n);
  if (!step) {
    quant::RangeEstimator e(spec, estimator_from_attrs(n));
    e.observe(w);
    quant::QuantParams p = e.params();
    if (b && act_scale && spec.granularity == quant::Granularity::kPerChannel && p.count() == b->numel())
      ptq::raise_scales_for_bias(p, b->data<float>(), b->numel(), step_value(act_scale->data<float>()[0]));
    return p;
  }
  std::vector<float> sc(static_cast<size_t>(step->numel()));
  for (int64_t i = 0; i < step->numel(); ++i) sc[static_cast<size_t>(i)] = step_value(step->data<float>()[i]);
  return quant::make_params(spec, w.shape(), sc, std::vector<int32_t>(sc.size(), 0));
}

std::vector<Tensor> fq_weight_forward(const Node& n, const Args& a, int64_t, ForwardContext&) {
  PERCH_CHECK(!a.empty() && a[0] && a[0]->dtype() == DType::kFloat32, n.describe(), ": needs a float32 weight");
  const Tensor* step = a.size() > 1 ? a[1] : nullptr;
  const Tensor *b = a.size() > 3 ? a[2] : nullptr, *s_in = a.size() > 3 ? a[3] : nullptr;
  return {quant::fake_quant(*a[0], weight_params(n, *a[0], step, b, s_in))};
}

std::vector<Tensor> fq_weight_backward(const GradArgs& a) {
  const Tensor& w = *a.inputs[0];
  const Tensor* step = a.inputs.size() > 1 ? a.inputs[1] : nullptr;
  const bool raise = a.inputs.size() > 3;
  const quant::QuantParams p =
      weight_params(a.node, w, step, raise ? a.inputs[2] : nullptr, raise ? a.inputs[3] : nullptr);
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

// EMA range update of a FakeQuantAct from the batch range [bmin, bmax]: lo/hi move by (1 - momentum),
// the parameters are chosen from them, and all four states are written back as training updates.
quant::QuantParams ema_update(const Node& n, const Args& a, ForwardContext& ctx, float bmin, float bmax) {
  const float m = n.attr_float("momentum", 0.99f);
  const float lo = m * a[3]->data<float>()[0] + (1.0f - m) * bmin;
  const float hi = m * a[4]->data<float>()[0] + (1.0f - m) * bmax;
  const quant::QuantParams p = quant::choose_params(spec_from_attrs(n), a[0]->shape(), {&lo, 1}, {&hi, 1});
  ctx.updates.emplace_back(n.input(1), Tensor::scalar_f32(p.scale[0]).reshaped(a[1]->shape()));
  ctx.updates.emplace_back(n.input(2), Tensor::scalar_f32(static_cast<float>(p.zero_point[0])).reshaped(a[2]->shape()));
  ctx.updates.emplace_back(n.input(3), Tensor::scalar_f32(lo).reshaped(a[3]->shape()));
  ctx.updates.emplace_back(n.input(4), Tensor::scalar_f32(hi).reshaped(a[4]->shape()));
  return p;
}

std::vector<Tensor> fq_act_forward(const Node& n, const Args& a, int64_t, ForwardContext& ctx) {
  PERCH_CHECK(a.size() == 5 && a[0] && a[1] && a[2] && a[3] && a[4], n.describe(),
              ": FakeQuantAct needs (x, scale, zero_point, lo, hi)");
  const Tensor& x = *a[0];
  const bool learn = n.attr_int("learn", 0) != 0, frozen = n.attr_int("frozen", 0) != 0;
  if (ctx.training && !learn && !frozen && x.numel() > 0) {
    // The batch's range over its finite values (quant::slot_ranges: vectorized, split over the threads).
    const quant::SlotRanges br = quant::slot_ranges(quant::SlotLayout::make(quant::QuantSpec{}, x.shape()), x.data<float>());
    const float bmin = br.min[0], bmax = br.max[0];
    if (bmin <= bmax) return {quant::fake_quant(x, ema_update(n, a, ctx, bmin, bmax))};
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

// ReluFakeQuantAct(x, scale, zero_point, lo, hi): FakeQuantAct(Relu(x), ...) as one node. The training tape
// (autograd.cpp) forms it from Relu -> FakeQuantAct when the Relu's output feeds nothing else; it never
// appears in a model. Same values, same state updates and same gradients, bit for bit, as the two nodes:
//   range:    Relu is monotone and maps finite values to finite values, so over an all-finite x the range of
//             Relu(x) is [Relu(min x), Relu(max x)] (min/max are exact; Relu(-0) = +0 as slot_ranges reports
//             it). When x has a non-finite value (Relu maps -inf and NaN to the finite +0) the range is taken
//             from the materialized Relu(x) instead, i.e. the unfused path.
//   forward:  quant::fake_quant_relu (= fake_quant(Relu(x))); backward: quant::fake_quant_relu_ste_backward
//             (= Relu's mask of the STE mask); learned scales (LSQ) go through the unfused ops on Relu(x).
// It saves the Relu's output tensor, its forward pass and its backward pass.
Tensor relu_of(const Tensor& x) {
  Tensor r = Tensor::uninitialized(DType::kFloat32, x.shape());
  const float* xs = x.data<float>();
  float* rs = r.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) rs[i] = xs[i] > 0.0f ? xs[i] : 0.0f;  // the runtime's Relu
  return r;
}

// The parameters ReluFakeQuantAct quantizes with (after this batch's EMA update, pushed to ctx.updates), or
// nullopt when the range needs the materialized Relu(x) (x has a non-finite value): then *y is the output,
// computed by the unfused FakeQuantAct on Relu(x).
std::optional<quant::QuantParams> relu_fq_act_params(const Node& n, const Args& a, int64_t opset, ForwardContext& ctx,
                                                     Tensor* y) {
  PERCH_CHECK(a.size() == 5 && a[0] && a[1] && a[2] && a[3] && a[4], n.describe(),
              ": ReluFakeQuantAct needs (x, scale, zero_point, lo, hi)");
  PERCH_CHECK(a[0]->dtype() == DType::kFloat32, n.describe(), ": expected a float32 input");
  const Tensor& x = *a[0];
  const bool learn = n.attr_int("learn", 0) != 0, frozen = n.attr_int("frozen", 0) != 0;
  if (!ctx.training || learn || frozen || x.numel() == 0) return act_params(n, x, a);
  const quant::SlotRanges br = quant::slot_ranges(quant::SlotLayout::make(quant::QuantSpec{}, x.shape()), x.data<float>());
  if (br.nonfinite > 0) {  // the unfused path (see above)
    const Tensor r = relu_of(x);
    Args ra = a;
    ra[0] = &r;
    *y = fq_act_forward(n, ra, opset, ctx).at(0);
    return std::nullopt;
  }
  const float bmin = br.min[0] > 0.0f ? br.min[0] : 0.0f, bmax = br.max[0] > 0.0f ? br.max[0] : 0.0f;
  return ema_update(n, a, ctx, bmin, bmax);
}

std::vector<Tensor> relu_fq_act_forward(const Node& n, const Args& a, int64_t opset, ForwardContext& ctx) {
  Tensor y;
  const std::optional<quant::QuantParams> p = relu_fq_act_params(n, a, opset, ctx, &y);
  return {p ? quant::fake_quant_relu(*a[0], *p) : y};
}

std::vector<Tensor> relu_fq_act_backward(const GradArgs& a) {
  const Tensor& x = *a.inputs[0];
  if (a.needs.size() > 1 && a.needs[1]) {  // LSQ: the unfused ops on Relu(x), then Relu's backward
    const Tensor r = relu_of(x);
    std::vector<const Tensor*> ins = a.inputs;
    ins[0] = &r;
    GradArgs ra{a.node, a.opset, ins, a.outputs, a.grad_outputs, a.saved, a.needs, a.training};
    std::vector<Tensor> out = fq_act_backward(ra);
    if (!out[0].empty()) {
      float* d = out[0].data<float>();
      const float* xs = x.data<float>();
      for (int64_t i = 0; i < x.numel(); ++i) d[i] = xs[i] > 0.0f ? d[i] : 0.0f;
    }
    return out;
  }
  std::vector<Tensor> out(a.inputs.size());
  out[0] = quant::fake_quant_relu_ste_backward(*a.grad_outputs.at(0), x, act_params(a.node, x, a.inputs));
  return out;
}

// ReluFakeQuantActMaxPool(x, scale, zero_point, lo, hi): MaxPool(ReluFakeQuantAct(x, ...)) as one node, formed
// by the tape when the fake-quant output feeds only the MaxPool (autograd.cpp). The MaxPool's attributes
// come as "pool.<name>". Forward: the range update of ReluFakeQuantAct (above), then per block of (n, c)
// planes (about kBlockFloats values) y = fake_quant(Relu(x)) into a buffer in cache and p = MaxPool(y) from
// it (the runtime's kernel, per plane). y is never written out: the backward recomputes it per block from
// x and the saved parameters (the same kernel on the same inputs: the same bits), runs MaxPool's backward
// from it (kernels::maxpool2d_backward_f32, the call the MaxPool gradient makes) and applies the Relu/STE
// mask in place (quant::fake_quant_relu_ste_run). All of it is per element or per plane, so blocking changes
// nothing; the full-size y and dL/dy never go through memory. Learned scales, non-finite x (the unfused
// range) and inputs that are not 4-D take the unfused computation.
constexpr int64_t kBlockFloats = 8192;  // values per block of planes (32 KB per tensor; at least one plane)

graph::Node pool_node(const Node& n) {
  Node p;
  p.name = n.name;
  p.op_type = "MaxPool";
  p.inputs = {n.inputs.at(0)};
  p.outputs = n.outputs;
  for (const auto& [k, v] : n.attrs)
    if (k.rfind("pool.", 0) == 0) p.attrs[k.substr(5)] = v;
  return p;
}

// The blocked passes of ReluFakeQuantActMaxPool over planes [c0, c0 + nb): y = fake_quant(Relu(x)) into a
// small buffer (in cache), then the pool's forward (out = pooled) or its backward (dp -> dx) from it, and
// for the backward the Relu/STE mask applied to dx in place.
void relu_fq_pool_block(const kernels::Pool2dShape& s, const quant::QuantParams& p, const float* x, float* ybuf,
                        int64_t c0, int64_t nb, float* pooled, const float* dp, float* dx) {
  const int64_t in_hw = s.in_h * s.in_w, out_hw = s.out_h() * s.out_w();
  kernels::Pool2dShape sb = s;
  sb.batch = 1;
  sb.channels = nb;
  const float* xb = x + c0 * in_hw;
  quant::fake_quant_relu_run(xb, ybuf, nb * in_hw, p.scale[0], p.zero_point[0], p.spec);
  if (pooled) {
    kernels::maxpool2d_f32(sb, ybuf, pooled + c0 * out_hw);
    return;
  }
  kernels::maxpool2d_backward_f32(sb, ybuf, dp + c0 * out_hw, dx + c0 * in_hw);
  quant::fake_quant_relu_ste_run(dx + c0 * in_hw, xb, dx + c0 * in_hw, nb * in_hw, p.scale[0], p.zero_point[0], p.spec);
}

template <typename F>
void for_plane_blocks(int64_t planes, int64_t in_hw, F&& f) {
  const int64_t block = std::max<int64_t>(1, kBlockFloats / std::max<int64_t>(1, in_hw));
  parallel_for(0, (planes + block - 1) / block, [&](int64_t b0, int64_t b1) {
    std::vector<float> ybuf(static_cast<size_t>(block * in_hw));
    for (int64_t b = b0; b < b1; ++b) f(b * block, std::min(block, planes - b * block), ybuf.data());
  });
}

std::vector<Tensor> relu_fq_act_pool_forward(const Node& n, const Args& a, int64_t opset, ForwardContext& ctx) {
  Tensor y;
  const std::optional<quant::QuantParams> p = relu_fq_act_params(n, a, opset, ctx, &y);
  const Node pn = pool_node(n);
  const Tensor& x = *a[0];
  if (!p || x.rank() != 4 || p->count() != 1) {
    if (p) y = quant::fake_quant_relu(x, *p);
    const runtime::OpKernel* k = runtime::builtin_registry().find("MaxPool", "", opset);
    PERCH_CHECK(k, "MaxPool kernel missing");
    std::vector<Tensor> out = (*k)(pn, {&y}, opset);
    ctx.saved = {y};  // the backward's unfused path
    return {out.at(0)};
  }
  const kernels::Pool2dShape s = runtime::pool2d_shape(pn, x.shape());
  Tensor out = Tensor::uninitialized(DType::kFloat32, {s.batch, s.channels, s.out_h(), s.out_w()});
  for_plane_blocks(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t c0, int64_t nb, float* ybuf) {
    relu_fq_pool_block(s, *p, x.data<float>(), ybuf, c0, nb, out.data<float>(), nullptr, nullptr);
  });
  // y is not kept: the backward recomputes it block by block from x and these parameters (bit for bit).
  ctx.saved = {Tensor::scalar_f32(p->scale[0]), Tensor::scalar_f32(static_cast<float>(p->zero_point[0]))};
  return {out};
}

std::vector<Tensor> relu_fq_act_pool_backward(const GradArgs& a) {
  PERCH_CHECK(a.saved.size() == 1 || a.saved.size() == 2, a.node.describe(), ": backward without its forward state");
  const Tensor &x = *a.inputs[0], &dp = *a.grad_outputs.at(0);
  const Node pn = pool_node(a.node);
  const bool lsq = a.needs.size() > 1 && a.needs[1];
  std::optional<quant::QuantParams> p;
  if (a.saved.size() == 2)
    p = quant::make_params(spec_from_attrs(a.node), x.shape(), {a.saved[0].data<float>()[0]},
                           {static_cast<int32_t>(a.saved[1].data<float>()[0])});
  if (lsq || !p) {  // unfused: the pool's backward over the whole y, then ReluFakeQuantAct's
    const Tensor y = p ? quant::fake_quant_relu(x, *p) : a.saved[0];
    Tensor d = Tensor::uninitialized(DType::kFloat32, y.shape());
    if (x.rank() >= 5)  // 3-D pools (never fused: the forward saved y)
      kernels::maxpool_nd_backward_f32(runtime::pool_nd_shape(pn, x.shape()), y.data<float>(), dp.data<float>(), d.data<float>());
    else
      kernels::maxpool2d_backward_f32(runtime::pool2d_shape(pn, x.shape()), y.data<float>(), dp.data<float>(), d.data<float>());
    std::vector<const Tensor*> gouts = {&d};
    GradArgs ra{a.node, a.opset, a.inputs, {&y}, gouts, a.saved, a.needs, a.training};
    return relu_fq_act_backward(ra);
  }
  const kernels::Pool2dShape s = runtime::pool2d_shape(pn, x.shape());
  PERCH_CHECK(dp.numel() == s.batch * s.channels * s.out_h() * s.out_w(), a.node.describe(), ": output gradient has ",
              dp.numel(), " values for ", shape_str(x.shape()), " pooled");
  Tensor dx = Tensor::uninitialized(DType::kFloat32, x.shape());
  for_plane_blocks(s.batch * s.channels, s.in_h * s.in_w, [&](int64_t c0, int64_t nb, float* ybuf) {
    relu_fq_pool_block(s, *p, x.data<float>(), ybuf, c0, nb, nullptr, dp.data<float>(), dx.data<float>());
  });
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dx;
  return out;
}

// FakeQuantBias(b, w, act_scale [, step]): the bias as the export stores it — int32 with scale
// s_in * s_w[c] (a float product, as ptq::build_quantized computes it), rounded half-to-even in double —
// dequantized again. s_w comes from the weight exactly as FakeQuantWeight computes it. Gradient: STE to b.
std::vector<Tensor> fq_bias_forward(const Node& n, const Args& a, int64_t, ForwardContext&) {
  PERCH_CHECK(a.size() >= 3 && a[0] && a[1] && a[2], n.describe(), ": FakeQuantBias needs (b, w, act_scale)");
  const Tensor& b = *a[0];
  const quant::QuantParams wp = weight_params(n, *a[1], a.size() > 3 ? a[3] : nullptr, &b, a[2]);
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

// ---- BatchNormalization kept for QAT (the batch-statistics phase) ----
// A Conv -> BN pair of the input model trains in the unfolded parameterization (conv weight w, BN scale
// gamma and shift beta; running mean mu and variance v are state), while the convolution always runs with
// the folded, fake-quantized weights the deployment will see. Per output channel c (e_c: the cross-layer
// equalization factor of the canonical model, W_canonical = W_folded / e_c; 1 without equalization;
// mu is the running mean minus the original conv bias, so the conv itself has none):
//   sigma_c = sqrt(v_c + eps),  k_c = gamma_c / (sigma_c e_c)
//   BnFoldWeight:  W[c, i, ...] = w[c, i, ...] k_c s_i         (the canonical weight; fake-quantized after;
//                  s_i: equalization of the input channels, when the previous layer was equalized with this)
//   BnFoldBias:    b_c = (beta_c - mu_c gamma_c / sigma_c) / e_c   (the canonical bias; fake-quantized after)
//   y = Conv(x, FQ(W), FQ(b))   — exactly the frozen-statistics (deployment) form, and then
//   BnBatchCorrection(y, FQ(b), gamma, beta, mu, v, e):
//     frozen, or evaluation: y unchanged (identity: the running statistics are what the fold used).
//     batch phase (training): with u = y - FQ(b) = conv(x, FQ(W)) and z = u / k_c the unfolded conv output
//     (the one a float BN would see), normalize z with the batch's statistics and undo the equalization:
//       out = (gamma (z - mean_B z) / sqrt(var_B z + eps) + beta) / e
//           = t_c (u - mean_B u) + beta_c / e_c,   t_c = sigma_c |k_c| / D_c,   D_c = sqrt(var_B u + eps k_c^2)
//     (var_B: population variance over N x H x W; in z-space, var_B z = var_B u / k^2, i.e. the conv output is
//     rescaled by sigma_running / sigma_batch: Jacob et al. 2018 Sec. 3.2, Krishnamoorthi 2018 Sec. 3.2).
//     Running statistics: mu = m mu + (1 - m) mean_B(u) / k, v = m v + (1 - m) var_B(u) / k^2 * n / (n - 1)
//     (m = the BN's momentum, ONNX convention; unbiased variance as the BatchNormalization training forward).
// Gradients (g = dL/dout, sums over the channel's n = N H W values, u^ = u - mean_B u):
//   d out/du_i:  t (g_i - mean(g) - u^_i mean(g u^) / D^2)
//   dL/dbeta = sum(g) / e,   dL/dgamma = sign(k) var_B(u) / (e D^3) sum(g u^)   (t depends on gamma via k)
//   BnFoldWeight:  dw = dW k s_i,  dgamma = sum_j dW[c, j] w[c, j] s_i / (sigma e)
//   BnFoldBias:    dbeta = db / e,  dgamma = -db mu / (sigma e)
// FQ(b) enters the correction only through the running mean (u^ does not depend on it): no gradient.

struct BnChannel {
  double sigma, k;  // sqrt(v + eps), gamma / (sigma e)
};

BnChannel bn_channel(const Tensor& gamma, const Tensor& var, const Tensor& eq, int64_t c, double eps) {
  const double sigma = std::sqrt(static_cast<double>(var.data<float>()[c]) + eps);
  return {sigma, static_cast<double>(gamma.data<float>()[c]) / (sigma * static_cast<double>(eq.data<float>()[c]))};
}

// The running statistics are updated in place after BnBatchCorrection runs, i.e. before the backward pass:
// the fold ops save what their gradients need (saved = {k, 1 / (sigma e)} resp. {mean / (sigma e), 1 / e}).
// BnFoldWeight(w, gamma, var, eq, in_scale): W[o, i, ...] = w[o, i, ...] k_o s_i, rounded once to float
// (o: output channel, axis 0; s: the equalization scales of the input channels when this Conv is the second
// layer of an equalized pair — its input is the previous layer's output divided by s — else 1).
std::vector<Tensor> bn_fold_weight_forward(const Node& n, const Args& a, int64_t, ForwardContext& ctx) {
  PERCH_CHECK(a.size() == 5 && a[0] && a[0]->rank() >= 2, n.describe(),
              ": BnFoldWeight needs (w, gamma, var, eq, in_scale)");
  const Tensor& w = *a[0];
  const int64_t m = w.dim(0), per = w.numel() / std::max<int64_t>(1, m), cin = w.dim(1), hw = per / std::max<int64_t>(1, cin);
  for (size_t i = 1; i < 4; ++i)
    PERCH_CHECK(a[i] && a[i]->numel() == m, n.describe(), ": input ", i, " needs ", m, " values");
  PERCH_CHECK(a[4] && a[4]->numel() == cin, n.describe(), ": in_scale needs ", cin, " values");
  const float* in_scale = a[4]->data<float>();
  const double eps = n.attr_float("epsilon", 1e-5f);
  Tensor out = Tensor::uninitialized(DType::kFloat32, w.shape());
  Tensor kt(DType::kFloat32, {m}), gt(DType::kFloat32, {m});
  for (int64_t c = 0; c < m; ++c) {
    const BnChannel ch = bn_channel(*a[1], *a[2], *a[3], c, eps);
    kt.data<float>()[c] = static_cast<float>(ch.k);
    gt.data<float>()[c] = static_cast<float>(1.0 / (ch.sigma * a[3]->data<float>()[c]));
    for (int64_t j = 0; j < per; ++j)
      out.data<float>()[c * per + j] =
          static_cast<float>(static_cast<double>(w.data<float>()[c * per + j]) * ch.k * in_scale[j / hw]);
  }
  ctx.saved = {kt, gt};
  return {out};
}

std::vector<Tensor> bn_fold_weight_backward(const GradArgs& a) {
  const Tensor &w = *a.inputs[0], &gamma = *a.inputs[1];
  const Tensor& dW = *a.grad_outputs.at(0);
  PERCH_CHECK(a.saved.size() == 2, a.node.describe(), ": backward without its forward state");
  const int64_t m = w.dim(0), per = w.numel() / std::max<int64_t>(1, m), hw = per / std::max<int64_t>(1, w.dim(1));
  const float* in_scale = a.inputs[4]->data<float>();
  std::vector<Tensor> out(a.inputs.size());
  Tensor dw = Tensor::uninitialized(DType::kFloat32, w.shape()), dg(DType::kFloat32, gamma.shape());
  for (int64_t c = 0; c < m; ++c) {
    const double k = a.saved[0].data<float>()[c], ginv = a.saved[1].data<float>()[c];
    double s = 0;
    for (int64_t j = 0; j < per; ++j) {
      const double d = dW.data<float>()[c * per + j] * static_cast<double>(in_scale[j / hw]);
      dw.data<float>()[c * per + j] = static_cast<float>(d * k);
      s += d * w.data<float>()[c * per + j];
    }
    dg.data<float>()[c] = static_cast<float>(s * ginv);
  }
  out[0] = dw;
  out[1] = dg;
  return out;
}

// BnFoldBias(gamma, beta, mean, var, eq): b = (beta - mean gamma / sigma) / e.
std::vector<Tensor> bn_fold_bias_forward(const Node& n, const Args& a, int64_t, ForwardContext& ctx) {
  PERCH_CHECK(a.size() == 5 && a[0], n.describe(), ": BnFoldBias needs (gamma, beta, mean, var, eq)");
  const int64_t m = a[0]->numel();
  for (size_t i = 1; i < 5; ++i) PERCH_CHECK(a[i] && a[i]->numel() == m, n.describe(), ": input ", i, " needs ", m, " values");
  const double eps = n.attr_float("epsilon", 1e-5f);
  Tensor out = Tensor::uninitialized(DType::kFloat32, {m});
  Tensor gt(DType::kFloat32, {m}), bt(DType::kFloat32, {m});
  for (int64_t c = 0; c < m; ++c) {
    const BnChannel ch = bn_channel(*a[0], *a[3], *a[4], c, eps);
    const double e = a[4]->data<float>()[c], mu = a[2]->data<float>()[c];
    out.data<float>()[c] = static_cast<float>((static_cast<double>(a[1]->data<float>()[c]) - mu * ch.k * e) / e);
    gt.data<float>()[c] = static_cast<float>(mu / (ch.sigma * e));
    bt.data<float>()[c] = static_cast<float>(1.0 / e);
  }
  ctx.saved = {gt, bt};
  return {out};
}

std::vector<Tensor> bn_fold_bias_backward(const GradArgs& a) {
  const Tensor& gamma = *a.inputs[0];
  const Tensor& db = *a.grad_outputs.at(0);
  PERCH_CHECK(a.saved.size() == 2, a.node.describe(), ": backward without its forward state");
  const int64_t m = gamma.numel();
  Tensor dg(DType::kFloat32, gamma.shape()), dbeta(DType::kFloat32, gamma.shape());
  for (int64_t c = 0; c < m; ++c) {
    const double d = db.data<float>()[c];
    dbeta.data<float>()[c] = static_cast<float>(d * a.saved[1].data<float>()[c]);
    dg.data<float>()[c] = static_cast<float>(-d * a.saved[0].data<float>()[c]);
  }
  std::vector<Tensor> out(a.inputs.size());
  out[0] = dg;
  out[1] = dbeta;
  return out;
}

// BnBatchCorrection(y, bias, gamma, beta, mean, var, eq). saved (batch phase) = {mean_B y, t, 1 / D^2, dgamma
// coefficient sign(k) var_B(u) / (e D^3)} per channel; empty when it ran as the identity.
std::vector<Tensor> bn_correction_forward(const Node& n, const Args& a, int64_t, ForwardContext& ctx) {
  PERCH_CHECK(a.size() == 7 && a[0] && a[0]->rank() >= 2, n.describe(),
              ": BnBatchCorrection needs (y, bias, gamma, beta, mean, var, eq)");
  const Tensor& y = *a[0];
  const int64_t N = y.dim(0), C = y.dim(1), inner = y.numel() / std::max<int64_t>(1, N * C);
  for (size_t i = 1; i < 7; ++i) PERCH_CHECK(a[i] && a[i]->numel() == C, n.describe(), ": input ", i, " needs ", C, " values");
  if (!ctx.training || n.attr_int("frozen", 0) != 0) return {y};
  const int64_t cnt = N * inner;
  PERCH_CHECK(cnt > 1, n.describe(), ": batch statistics need more than one value per channel");
  const double eps = n.attr_float("epsilon", 1e-5f);
  const float mom = n.attr_float("momentum", 0.9f);
  const Tensor &bias = *a[1], &gamma = *a[2], &beta = *a[3], &rm = *a[4], &rv = *a[5], &eq = *a[6];
  Tensor mean_y(DType::kFloat32, {C}), t(DType::kFloat32, {C}), inv_d2(DType::kFloat32, {C}), gcoef(DType::kFloat32, {C});
  Tensor nrm = rm.clone(), nrv = rv.clone();
  Tensor out = Tensor::uninitialized(DType::kFloat32, y.shape());
  const float* yd = y.data<float>();
  parallel_for(0, C, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0, s2 = 0;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) s += yd[(i * C + c) * inner + j];
      const double mu = s / static_cast<double>(cnt);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          const double d = yd[(i * C + c) * inner + j] - mu;
          s2 += d * d;
        }
      const double var_u = s2 / static_cast<double>(cnt);
      const BnChannel ch = bn_channel(gamma, rv, eq, c, eps);
      const double e = eq.data<float>()[c];
      const double d2 = var_u + eps * ch.k * ch.k;
      const double tc = d2 > 0 ? ch.sigma * std::fabs(ch.k) / std::sqrt(d2) : 0.0;
      const double sign = ch.k > 0 ? 1.0 : ch.k < 0 ? -1.0 : 0.0;
      mean_y.data<float>()[c] = static_cast<float>(mu);
      t.data<float>()[c] = static_cast<float>(tc);
      inv_d2.data<float>()[c] = d2 > 0 ? static_cast<float>(1.0 / d2) : 0.0f;
      gcoef.data<float>()[c] = d2 > 0 ? static_cast<float>(sign * var_u / (e * d2 * std::sqrt(d2))) : 0.0f;
      const float off = static_cast<float>(beta.data<float>()[c] / e);
      const auto tf = static_cast<float>(tc), muf = static_cast<float>(mu);
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          const int64_t p = (i * C + c) * inner + j;
          out.data<float>()[p] = tf * (yd[p] - muf) + off;
        }
      if (ch.k != 0) {  // statistics of z = u / k (u = y - bias)
        const double mz = (mu - bias.data<float>()[c]) / ch.k, vz = var_u / (ch.k * ch.k);
        nrm.data<float>()[c] = mom * rm.data<float>()[c] + (1.0f - mom) * static_cast<float>(mz);
        nrv.data<float>()[c] = mom * rv.data<float>()[c] +
                               (1.0f - mom) * static_cast<float>(vz * static_cast<double>(cnt) / static_cast<double>(cnt - 1));
      }
    }
  });
  ctx.updates.emplace_back(n.input(4), nrm);
  ctx.updates.emplace_back(n.input(5), nrv);
  ctx.saved = {mean_y, t, inv_d2, gcoef};
  return {out};
}

std::vector<Tensor> bn_correction_backward(const GradArgs& a) {
  std::vector<Tensor> out(a.inputs.size());
  const Tensor& g = *a.grad_outputs.at(0);
  if (a.saved.empty()) {  // identity
    out[0] = g;
    return out;
  }
  const Tensor& y = *a.inputs[0];
  const Tensor& eq = *a.inputs[6];
  const int64_t N = y.dim(0), C = y.dim(1), inner = y.numel() / std::max<int64_t>(1, N * C);
  const double cnt = static_cast<double>(N * inner);
  Tensor dy = Tensor::uninitialized(DType::kFloat32, y.shape());
  Tensor dgamma(DType::kFloat32, a.inputs[2]->shape()), dbeta(DType::kFloat32, a.inputs[3]->shape());
  const float *yd = y.data<float>(), *gd = g.data<float>();
  parallel_for(0, C, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mu = a.saved[0].data<float>()[c], tc = a.saved[1].data<float>()[c];
      const double id2 = a.saved[2].data<float>()[c], gc = a.saved[3].data<float>()[c];
      double sg = 0, sgu = 0;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          const int64_t p = (i * C + c) * inner + j;
          sg += gd[p];
          sgu += gd[p] * (yd[p] - mu);
        }
      dbeta.data<float>()[c] = static_cast<float>(sg / eq.data<float>()[c]);
      dgamma.data<float>()[c] = static_cast<float>(gc * sgu);
      const double mg = sg / cnt, mgu = sgu / cnt * id2;
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < inner; ++j) {
          const int64_t p = (i * C + c) * inner + j;
          dy.data<float>()[p] = static_cast<float>(tc * (gd[p] - mg - (yd[p] - mu) * mgu));
        }
    }
  });
  out[0] = dy;
  out[2] = dgamma;
  out[3] = dbeta;
  return out;
}

// A Conv -> BatchNormalization pair of the input model that graph::fold_batchnorm folds (same conditions),
// named by the BN's output — the canonical Conv's output after folding.
struct BnPair {
  std::string output;
  Tensor w, conv_bias, gamma, beta, mean, var;  // float32 copies; conv_bias empty if the Conv has none
  float eps = 1e-5f, momentum = 0.9f;
};

std::vector<BnPair> find_bn_pairs(const graph::Model& input) {
  graph::Model m = input;
  graph::fold_constant_nodes(m);
  const graph::Graph& g = m.graph;
  std::vector<BnPair> pairs;
  for (const Node& bn : g.nodes) {
    if (bn.op_type != "BatchNormalization" || bn.outputs.size() != 1 || bn.attr_int("training_mode", 0)) continue;
    const int64_t pi = g.producer(bn.inputs[0]);
    if (pi < 0) continue;
    const Node& conv = g.nodes[static_cast<size_t>(pi)];
    if (conv.op_type != "Conv" || g.consumers(conv.outputs[0]).size() != 1 || g.is_graph_output(conv.outputs[0])) continue;
    const Tensor* w = g.initializer(conv.input(1));
    if (!w || w->dtype() != DType::kFloat32 || g.consumers(conv.input(1)).size() != 1) continue;
    const Tensor *scale = g.initializer(bn.input(1)), *beta = g.initializer(bn.input(2)), *mean = g.initializer(bn.input(3)),
                 *var = g.initializer(bn.input(4));
    const Tensor* bias = conv.input(2).empty() ? nullptr : g.initializer(conv.input(2));
    if (!scale || !beta || !mean || !var || (!conv.input(2).empty() && !bias)) continue;
    const int64_t c = w->dim(0);
    if (scale->numel() != c || beta->numel() != c || mean->numel() != c || var->numel() != c || (bias && bias->numel() != c))
      continue;
    BnPair p;
    p.output = bn.outputs[0];
    p.w = w->clone();
    if (bias) p.conv_bias = bias->to_f32().reshaped({c});
    p.gamma = scale->to_f32().reshaped({c}).clone();
    p.beta = beta->to_f32().reshaped({c}).clone();
    p.mean = mean->to_f32().reshaped({c}).clone();
    p.var = var->to_f32().reshaped({c}).clone();
    p.eps = bn.attr_float("epsilon", 1e-5f);
    p.momentum = bn.attr_float("momentum", 0.9f);
    pairs.push_back(std::move(p));
  }
  return pairs;
}

// Rewrites the canonical Conv producing `p.output` in the training graph `g` (fake-quant nodes already
// inserted) into the kept-BN form described above: its weight and bias initializers become the outputs of
// BnFoldWeight / BnFoldBias, and BnBatchCorrection follows the Conv. `params` trades the folded weight and
// bias for w, gamma, beta. Returns false (graph unchanged) if the Conv is not there as expected.
bool keep_batchnorm(graph::Graph& g, const BnPair& p, const ptq::EqualizeReport& eqr, std::vector<std::string>& params) {
  const int64_t ci = g.producer(p.output);
  if (ci < 0 || g.nodes[static_cast<size_t>(ci)].op_type != "Conv") return false;
  // The Conv's weight and bias, possibly behind their fake-quant nodes.
  auto source = [&](const std::string& v) {
    const int64_t pi = g.producer(v);
    return pi >= 0 && g.nodes[static_cast<size_t>(pi)].domain == kDomain ? g.nodes[static_cast<size_t>(pi)].inputs[0] : v;
  };
  const Node& conv0 = g.nodes[static_cast<size_t>(ci)];
  const std::string wname = source(conv0.input(1)), bname = conv0.input(2).empty() ? "" : source(conv0.input(2));
  const Tensor* wc = g.initializer(wname);
  const Tensor* bc = bname.empty() ? nullptr : g.initializer(bname);
  if (!wc || !bc || wc->shape() != p.w.shape() || bc->numel() != p.w.dim(0)) return false;
  const int64_t m = p.w.dim(0);
  // Cross-layer equalization of the canonical model (ptq/equalize.h): W_canonical[o, i] = W_folded[o, i]
  // s_in[i] / e[o], b_canonical = b_folded / e.
  auto scales = [&](const std::map<std::string, std::vector<double>>& from, int64_t n) {
    Tensor t = Tensor::from<float>({n}, std::vector<float>(static_cast<size_t>(n), 1.0f));
    if (auto it = from.find(p.output); it != from.end() && static_cast<int64_t>(it->second.size()) == n)
      for (int64_t c = 0; c < n; ++c) t.data<float>()[c] = static_cast<float>(it->second[static_cast<size_t>(c)]);
    return t;
  };
  const Tensor eq = scales(eqr.out_scales, m), in_scale = scales(eqr.in_scales, p.w.dim(1));
  const std::string base = g.unique_name(p.output + "_bn");
  const std::string w_unf = base + ".weight", gamma = base + ".scale", beta = base + ".bias", mean = base + ".mean",
                    var = base + ".var", eqn = base + ".equalization", inn = base + ".input_equalization";
  g.initializers[w_unf] = p.w.clone();
  g.initializers[gamma] = p.gamma.clone();
  g.initializers[beta] = p.beta.clone();
  Tensor mu = p.mean.clone();  // the running mean of the conv output without its bias
  if (!p.conv_bias.empty())
    for (int64_t c = 0; c < m; ++c) mu.data<float>()[c] -= p.conv_bias.data<float>()[c];
  g.initializers[mean] = mu;
  g.initializers[var] = p.var.clone();
  g.initializers[eqn] = eq;
  g.initializers[inn] = in_scale;
  g.initializers.erase(wname);
  g.initializers.erase(bname);
  std::erase_if(params, [&](const std::string& s) { return s == wname || s == bname; });
  for (const auto& s : {w_unf, gamma, beta}) params.push_back(s);
  // The three perch-domain nodes of the pair, each with BN's epsilon.
  auto bn_node = [&](const std::string& name, const char* op, std::vector<std::string> ins,
                     std::vector<std::string> outs) {
    Node n;
    n.name = g.unique_name(name);
    n.op_type = op, n.domain = kDomain;
    n.attrs["epsilon"] = p.eps;
    n.inputs = std::move(ins);
    n.outputs = std::move(outs);
    return n;
  };
  Node fw = bn_node(wname + "_bnfold", "BnFoldWeight", {w_unf, gamma, var, eqn, inn}, {wname});
  Node fb = bn_node(bname + "_bnfold", "BnFoldBias", {gamma, beta, mean, var, eqn}, {bname});
  Node bc_node = bn_node(base + "_correction", "BnBatchCorrection", {}, {});
  bc_node.attrs["momentum"] = p.momentum;
  bc_node.attrs["frozen"] = int64_t{0};
  const std::string conv_out = g.unique_name(p.output + "_conv");
  Node& conv = g.nodes[static_cast<size_t>(ci)];
  bc_node.inputs = {conv_out, conv.input(2), gamma, beta, mean, var, eqn};
  bc_node.outputs = {p.output};
  conv.outputs[0] = conv_out;
  g.nodes.push_back(fw);
  g.nodes.push_back(fb);
  g.nodes.push_back(bc_node);
  return true;
}

bool is_weight_op(const std::string& t) { return ptq::quantizes_weights(t); }

}  // namespace

void register_qat_ops(GradRegistry& r) {
  r.add("FakeQuantWeight", kDomain, GradOp{fq_weight_backward, fq_weight_forward, {2, 3}});
  r.add("FakeQuantAct", kDomain, GradOp{fq_act_backward, fq_act_forward, {2, 3, 4}});
  r.add("ReluFakeQuantAct", kDomain, GradOp{relu_fq_act_backward, relu_fq_act_forward, {2, 3, 4}});
  r.add("ReluFakeQuantActMaxPool", kDomain, GradOp{relu_fq_act_pool_backward, relu_fq_act_pool_forward, {2, 3, 4}});
  r.add("FakeQuantBias", kDomain, GradOp{fq_bias_backward, fq_bias_forward, {1, 2, 3}});
  r.add("BnFoldWeight", kDomain, GradOp{bn_fold_weight_backward, bn_fold_weight_forward, {2, 3, 4}});
  r.add("BnFoldBias", kDomain, GradOp{bn_fold_bias_backward, bn_fold_bias_forward, {2, 3, 4}});
  r.add("BnBatchCorrection", kDomain, GradOp{bn_correction_backward, bn_correction_forward, {1, 4, 5, 6}});
}

namespace {

// QatOptions::init_ptq_biases: the biases of the QDQ model PTQ builds from this calibration with bias
// correction (and the empirical one when o.ptq asks for it) become the training graph's initial biases. The
// fake-quant weights at step 0 are PTQ's (same specs, same ranges), so training starts from the bias-corrected
// PTQ model rather than from the uncorrected one; the export then writes the trained biases (its own bias
// correction stays off). Layers whose bias the training graph computes (kept BN) or that have no bias keep theirs.
void init_biases_from_ptq(QatGraph& q, const Dataset& calib, const QatOptions& o) {
  ptq::Calibration cal = q.calibration;
  ptq::PtqOptions popt = o.ptq;
  popt.bias_correction = true;
  if (popt.empirical_bias_correction) (void)ptq::correct_biases_empirically(cal, calib, popt);
  const graph::Model built = ptq::build_quantized(cal, popt).model;
  const auto& bg = built.graph;
  auto& g = q.model.graph;
  for (const Node& n : bg.nodes) {
    if ((n.op_type != "Conv" && n.op_type != "Gemm") || n.input(2).empty()) continue;
    const Node* orig = nullptr;
    for (const Node& c : q.calibration.model.graph.nodes)
      if (c.name == n.name) orig = &c;
    if (!orig || orig->input(2).empty() || !g.initializers.count(orig->input(2))) continue;
    Tensor& b = g.initializers.at(orig->input(2));
    // The built bias: a float initializer, or DequantizeLinear(int32 q, scale) = q * scale (per channel).
    Tensor v;
    if (const Tensor* f = bg.initializer(n.input(2))) {
      v = f->to_f32();
    } else {
      const int64_t pi = bg.producer(n.input(2));
      const Node* dq = pi >= 0 && bg.nodes[static_cast<size_t>(pi)].op_type == "DequantizeLinear" ? &bg.nodes[static_cast<size_t>(pi)] : nullptr;
      const Tensor* qv = dq ? bg.initializer(dq->input(0)) : nullptr;
      const Tensor* sv = dq ? bg.initializer(dq->input(1)) : nullptr;
      if (!qv || !sv) continue;
      const Tensor qf = qv->to_f32(), sf = sv->to_f32();
      v = Tensor(DType::kFloat32, qf.shape());
      for (int64_t c = 0; c < qf.numel(); ++c)
        v.data<float>()[c] = qf.data<float>()[c] * sf.data<float>()[sf.numel() == 1 ? 0 : c];
    }
    PERCH_CHECK(v.numel() == b.numel(), q.model.source, ": ", n.describe(), ": PTQ's bias has ", v.numel(),
                " values, the training graph's ", b.numel());
    std::copy(v.data<float>(), v.data<float>() + v.numel(), b.data<float>());
  }
}

}  // namespace

QatGraph prepare_qat(const graph::Model& model, const Dataset& calib, const QatOptions& o) {
  QatGraph q;
  q.ptq = o.ptq;
  q.ptq.bias_correction = false;
  // The kept-BN form (freeze_bn > 0) re-applies cross-layer equalization's per-channel scales to the weights it
  // folds (keep_batchnorm); the depthwise-input scales are not among them, so that form goes without them
  // (training adapts the ranges). BN folded before training: the calibrated model as PTQ makes it.
  if (o.freeze_bn > 0.0f) q.ptq.equalize_depthwise = false;
  const ptq::PtqOptions& popt = q.ptq;
  {
    ptq::PtqOptions copt = popt;
    copt.bias_correction = o.init_ptq_biases;  // then calibration also gathers what bias correction needs
    q.calibration = ptq::calibrate(model, calib, copt);
  }
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
    const std::string root = cal.share_root(v);
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
      // freeze_ranges <= 0: the calibrated ranges throughout (no batch moves them, not even the first).
      if (o.freeze_ranges <= 0.0f) fq.attrs["frozen"] = int64_t{1};
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
  std::map<std::string, int> weight_layers;  // weight initializer -> weight layers reading it
  for (const Node& n : g.nodes)
    if (is_weight_op(n.op_type) && n.inputs.size() > 1) ++weight_layers[n.input(1)];
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
      set_estimator_attrs(fq, wo.estimator);
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
    Node& wfq = *std::find_if(g.nodes.begin(), g.nodes.end(), [&](const Node& x) { return x.outputs[0] == it->second; });
    // The export raises per-channel weight scales where the bias would not fit int32 (ptq::layer_weight_params):
    // the weight's fake-quant reads the bias and the input scale to do the same (not for a weight two layers
    // share, whose biases could disagree, nor for learned steps, which the export takes as they are).
    // An int32 bias at s_in * s_w[c]: one weight scale, or one per output channel in their order (as the export).
    const std::string gran = wfq.attr_string("granularity", "per-tensor");
    const bool bias_by_weight = n.op_type != "MatMul" && (gran == "per-tensor" ||
                                                          (gran == "per-channel" && ptq::weight_scales_follow_outputs(n, *w)));
    if (bias_by_weight && bias && bias->dtype() == DType::kFloat32 && act_state.count(in0) && !o.learn_scales &&
        gran == "per-channel" && weight_layers[wname] == 1)
      wfq.inputs = {wname, "", bname, act_state.at(in0) + ".scale"};
    if (bias_by_weight && bias && bias->dtype() == DType::kFloat32 && gemm_ok && act_state.count(in0)) {
      Node fb;
      fb.name = g.unique_name(bname + "_fakequant");
      fb.op_type = "FakeQuantBias";
      fb.domain = kDomain;
      fb.attrs = wfq.attrs;
      fb.inputs = {bname, wname, act_state.at(in0) + ".scale"};
      if (wfq.inputs.size() > 1 && !wfq.inputs[1].empty()) fb.inputs.push_back(wfq.inputs[1]);
      fb.outputs = {g.unique_name(bname + "_fq")};
      g.nodes[i].inputs[2] = fb.outputs[0];
      g.nodes.push_back(fb);
    }
  }
  // BatchNormalization kept for the batch-statistics phase (see above), when the input model has it.
  if (o.freeze_bn > 0)
    for (const BnPair& p : find_bn_pairs(model)) q.bn_kept += keep_batchnorm(g, p, cal.equalization, params) ? 1 : 0;
  // BatchNormalization nodes left in the canonical model (not after a Conv): statistics on the same schedule.
  for (auto& n : g.nodes)
    if (n.op_type == "BatchNormalization" && (n.domain.empty() || n.domain == "ai.onnx")) {
      ++q.bn_standalone;
      if (o.freeze_bn <= 0) n.attrs[std::string(kFrozenStatistics)] = int64_t{1};
    }
  g.toposort();
  tm.source = model.source + " (QAT)";
  if (o.init_ptq_biases) init_biases_from_ptq(q, calib, o);

  return q;
}

ptq::PtqResult export_qat(const QatGraph& q) {
  const auto& g = q.model.graph;
  ptq::PtqOptions popt = q.ptq;
  // ---- Export: trained weights and final parameters into the calibration, then the QDQ build.
  ptq::Calibration out = q.calibration;
  // Kept BN: the canonical weights and biases are computed values of the training graph — evaluate them
  // with the same functions the graph ran (frozen statistics: what the last forward folded with).
  std::map<std::string, Tensor> folded;
  for (const auto& n : g.nodes) {
    if (n.domain != kDomain || (n.op_type != "BnFoldWeight" && n.op_type != "BnFoldBias")) continue;
    Args a;
    for (const auto& in : n.inputs) a.push_back(&g.initializers.at(in));
    ForwardContext ctx;
    folded[n.outputs[0]] = (n.op_type == "BnFoldWeight" ? bn_fold_weight_forward : bn_fold_bias_forward)(n, a, 0, ctx)[0];
  }
  auto value = [&](const std::string& name) -> const Tensor& {
    auto it = folded.find(name);
    return it != folded.end() ? it->second : g.initializers.at(name);
  };
  for (auto& [name, t] : out.model.graph.initializers)
    if (auto it = folded.find(name); it != folded.end()) t = it->second;
    else if (auto it2 = g.initializers.find(name); it2 != g.initializers.end()) t = it2->second.clone();
  for (const auto& [v, node] : q.act_state) {
    const float s = step_value(g.initializers.at(node + ".scale").data<float>()[0]);
    const auto zp = static_cast<int32_t>(std::lrint(g.initializers.at(node + ".zero_point").data<float>()[0]));
    out.activation_params[v] = quant::make_params(ptq::activation_spec(popt.activations), {}, {s}, {zp});
  }
  for (const auto& n : g.nodes)
    if (n.op_type == "FakeQuantWeight" && n.inputs.size() > 1 && !n.inputs[1].empty())
      popt.weight_params[n.inputs[0]] = weight_params(n, value(n.inputs[0]), &g.initializers.at(n.inputs[1]));
  return ptq::build_quantized(out, popt);
}

void qat_step_schedule(QatGraph& q, const QatOptions& o, int64_t step, int64_t total) {
  auto& g = q.model.graph;
  if (o.freeze_ranges < 1.0f && step + 1 == static_cast<int64_t>(static_cast<double>(total) * o.freeze_ranges))
    for (auto& n : g.nodes)
      if (n.op_type == "FakeQuantAct") n.attrs["frozen"] = int64_t{1};
  // BN statistics: the batch's for the first freeze_bn of the steps (at least one), then the running ones.
  if (q.bn_kept + q.bn_standalone > 0 && step + 1 >= std::llround(static_cast<double>(total) * o.freeze_bn))
    for (auto& n : g.nodes) {
      if (n.op_type == "BnBatchCorrection") n.attrs["frozen"] = int64_t{1};
      else if (n.op_type == "BatchNormalization") n.attrs[std::string(kFrozenStatistics)] = int64_t{1};
    }
}

QatResult quantization_aware_training(const graph::Model& model, const Dataset& train_data, const QatOptions& o,
                                      const Dataset* eval) {
  PERCH_CHECK(o.distill || train_data.has_labels(), train_data.name,
              ": QAT needs labelled training data (or distillation from the float model: --distill)");
  QatResult res;
  const int64_t ncal = std::min(o.calib_images, train_data.size());
  QatGraph q = prepare_qat(model, sample(train_data, ncal, o.train.seed), o);
  TrainOptions to = o.train;
  if (o.distill) {
    // Student and teacher cut at the same place; the teacher is the canonical float model PTQ calibrated.
    const OutputCut cut = cut_before_output_softmax(q.model);
    graph::Model teacher = q.calibration.model;
    const OutputCut tcut = cut_before_output_softmax(teacher);
    PERCH_CHECK(cut.softmax == tcut.softmax, model.source, ": the training graph and the float model end differently");
    to.objective = distillation_objective(std::move(teacher), cut);
  }
  if (eval && eval->has_labels()) {
    const runtime::Executor before(ptq::build_quantized(q.calibration, q.ptq).model);
    res.ptq_accuracy = ptq::evaluate(before, *eval, 256, "PTQ (before QAT)").accuracy();
  }
  if (eval && o.distill) res.ptq_fidelity = fidelity(q.calibration.model, export_qat(q).model, *eval, 16, "PTQ vs fp32");
  Tape tape(q.model, q.params);
  to.label = "QAT";
  const auto user_step = to.on_step;
  to.on_step = [&](int64_t step, int64_t total) {
    qat_step_schedule(q, o, step, total);
    if (user_step) user_step(step, total);
  };
  res.logs = fit(tape, train_data, to);
  if (eval && eval->has_labels()) res.fq_accuracy = accuracy(tape, *eval, 256, "fake-quant model");

  res.exported = export_qat(q);
  if (eval && o.distill) res.qat_fidelity = fidelity(q.calibration.model, res.exported.model, *eval, 16, "QAT vs fp32");
  res.fake_quant = q.model;
  return res;
}

}  // namespace perch::train
