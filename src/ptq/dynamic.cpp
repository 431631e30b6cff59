// Dynamic quantization (perch/ptq/dynamic.h has the scheme, the overflow bound and what stays float).
#include "perch/ptq/dynamic.h"

#include <chrono>
#include <cmath>
#include <map>
#include <set>

#include "perch/graph/passes.h"
#include "perch/ptq/validate.h"
#include "perch/quant/params.h"

namespace perch::ptq {

using graph::Graph;
using graph::Model;
using graph::Node;

namespace {

// The names DynamicQuantizeLinear gives one input value: quantized tensor, scale, zero point.
struct DynamicInput {
  std::string q, scale, zero_point;
};

// [R, C] int8 -> [C, R].
Tensor transpose_2d(const Tensor& t) {
  const int64_t r = t.dim(0), c = t.dim(1);
  Tensor out(t.dtype(), {c, r});
  const int8_t* s = t.data<int8_t>();
  int8_t* d = out.data<int8_t>();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) d[j * r + i] = s[i * c + j];
  return out;
}

// Why node `n` (a layer of an op type the caller asked for) stays float, or "" when it can be quantized.
std::string keep_float_reason(const Graph& g, const Node& n, const DynamicOptions& opt) {
  if (opt.float_nodes.count(n.name)) return "named to stay float";
  if (n.op_type == "ConvTranspose") return "ONNX has no integer ConvTranspose";
  if (n.inputs.size() < 2 || n.outputs.size() != 1) return "unexpected inputs/outputs";
  if (g.is_initializer(n.input(0))) return "its input 0 is a constant";
  const Tensor* w = g.initializer(n.input(1));
  if (!w) return "its input 1 '" + n.input(1) + "' is computed at run time, not a weight initializer";
  if (w->dtype() != DType::kFloat32) return "its weight is not float32";
  if (n.op_type == "MatMul" && w->rank() != 2) return "MatMulInteger takes a 2-D weight (this one is rank " + std::to_string(w->rank()) + ")";
  if (n.op_type == "Gemm") {
    if (n.attr_int("transA", 0)) return "Gemm with transA";
    if (!n.input(2).empty() && !g.is_initializer(n.input(2))) return "Gemm's C is not an initializer";
  }
  if (n.op_type == "Conv" && !n.input(2).empty() && !g.is_initializer(n.input(2))) return "its bias is not an initializer";
  // Reduction length: MatMul/Gemm K, Conv C_in / group * prod(kernel) = the weight's elements per output channel.
  const int64_t k = n.op_type == "Conv" ? w->numel() / w->dim(0)
                                        : (n.op_type == "Gemm" && n.attr_int("transB", 0) ? w->dim(1) : w->dim(0));
  const double bound = static_cast<double>(k) * 255.0 * ((1 << (opt.weights.bits - 1)) - 1);
  if (bound >= 2147483648.0)
    return "its int32 accumulator could overflow (reduction " + std::to_string(k) + ": " + std::to_string(k) +
           " x 255 x " + std::to_string((1 << (opt.weights.bits - 1)) - 1) + " >= 2^31)";
  return "";
}

}  // namespace

DynamicResult quantize_dynamic(const Model& input_model, const DynamicOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  PERCH_CHECK(opt.weights.granularity != quant::Granularity::kPerGroup,
              "dynamic quantization: per-group weights are not supported (MatMulInteger and ConvInteger have no blocked "
              "layout); use per-channel or per-tensor");
  PERCH_CHECK(opt.weights.bits >= 2 && opt.weights.bits <= 8, "dynamic quantization: weight bits must be 2..8 (got ",
              opt.weights.bits, ")");
  for (const auto& op : opt.op_types)
    PERCH_CHECK(op == "Conv" || op == "Gemm" || op == "MatMul",
                "dynamic quantization: op type '", op, "' is not one of Conv, Gemm, MatMul");
  check_no_float16(input_model);
  check_finite_weights(input_model);
  DynamicResult res;
  res.model = input_model;
  Model& m = res.model;
  res.canonicalize_summary = graph::canonicalize(m);
  check_not_quantized(m);
  for (const auto& name : opt.float_nodes) {
    bool found = false;
    for (const auto& n : m.graph.nodes) found |= n.name == name;
    PERCH_CHECK(found, m.source, ": no node named '", name, "' (named to stay float)");
  }
  if (opt.fold_affine && graph::fold_conv_affine(m)) m.graph.toposort();
  if (opt.equalize) res.equalization = equalize(m);
  raise_opset(m, 11);  // DynamicQuantizeLinear; MatMulInteger and ConvInteger are 10

  Graph& g = m.graph;
  std::map<std::string, DynamicInput> dynamic;  // layer input value -> its DynamicQuantizeLinear outputs
  std::vector<bool> replaced(g.nodes.size(), false);
  std::set<std::string> replaced_params;  // float weights and biases of the replaced layers
  const size_t original = g.nodes.size();
  for (size_t ni = 0; ni < original; ++ni) {
    const Node n = g.nodes[ni];  // a copy: push_back below may move the vector
    if (!quantizes_weights(n.op_type) || !opt.op_types.count(n.op_type == "ConvTranspose" ? "Conv" : n.op_type))
      continue;
    if (const std::string why = keep_float_reason(g, n, opt); !why.empty()) {
      res.kept_float.emplace_back(n.describe(), why);
      continue;
    }
    const std::string base = n.name.empty() ? n.outputs[0] : n.name;
    const std::string& x = n.input(0);
    const Tensor w = *g.initializer(n.input(1));

    // Weight parameters from the estimator of `weights` on the weight as the node holds it (output axis per
    // weight_channel_axis), then the integers.
    const quant::QuantParams p = layer_weight_params(m, n, w, opt.weights, PtqOptions{}, {}, nullptr);
    Tensor wq = quant::quantize(w, p);
    LayerReport rep;
    rep.node = n.name;
    rep.op_type = n.op_type;
    rep.weight = n.input(1);
    rep.weight_shape = w.shape();
    rep.axis = p.axis;
    rep.granularity = p.spec.granularity == quant::Granularity::kPerChannel ? "per-channel" : "per-tensor";
    rep.bits = p.spec.bits;
    rep.spread = channel_spread(w, weight_channel_axis(n, w.rank()));
    rep.weight_sqnr_db = sqnr_db(w, quant::dequantize(wq, p));

    std::vector<float> scale = p.scale;  // per output channel (or one)
    if (n.op_type == "Gemm") {
      const float alpha = n.attr_float("alpha", 1.0f);
      for (float& s : scale) s *= alpha;
      if (n.attr_int("transB", 0)) wq = transpose_2d(wq);  // [N, K] -> [K, N]: the scales stay per column
    }
    const bool per_channel = scale.size() > 1 || p.spec.granularity == quant::Granularity::kPerChannel;
    const int64_t channels = static_cast<int64_t>(scale.size());
    // Shapes of the per-channel constants: MatMul/Gemm [N] (the output's last axis); Conv [M, 1, ..., 1] (axis 1 of
    // [batch, M, spatial...], right-aligned broadcasting).
    Shape cshape = per_channel ? Shape{channels} : Shape{};
    if (per_channel && n.op_type == "Conv")
      for (int64_t d = 2; d < w.rank(); ++d) cshape.push_back(1);

    auto it = dynamic.find(x);
    if (it == dynamic.end()) {
      Node dq;
      dq.op_type = "DynamicQuantizeLinear";
      dq.name = g.unique_name(x + "_DynamicQuantizeLinear");
      dq.inputs = {x};
      dq.outputs = {g.unique_name(x + "_quantized"), g.unique_name(x + "_scale"), g.unique_name(x + "_zero_point")};
      g.nodes.push_back(dq);
      it = dynamic.emplace(x, DynamicInput{dq.outputs[0], dq.outputs[1], dq.outputs[2]}).first;
      ++res.dynamic_inputs;
    }
    const DynamicInput& dx = it->second;

    const std::string wq_name = g.unique_name(n.input(1) + "_quantized");
    const std::string wz_name = g.unique_name(n.input(1) + "_zero_point");
    const std::string ws_name = g.unique_name(n.input(1) + "_scale");
    g.initializers[wq_name] = wq;
    // Symmetric weights: z_w = 0 for every channel, so one scalar serves per-channel weights too (the channels differ
    // only in s_w, applied after the integer product) — ONNX Runtime's ConvInteger takes no other zero point.
    g.initializers[wz_name] = Tensor(DType::kInt8, Shape{});
    g.initializers[ws_name] = Tensor::from<float>(cshape, scale);

    Node mm;
    mm.op_type = n.op_type == "Conv" ? "ConvInteger" : "MatMulInteger";
    mm.name = g.unique_name(base + "_" + mm.op_type);
    mm.inputs = {dx.q, wq_name, dx.zero_point, wz_name};
    mm.outputs = {g.unique_name(base + "_int32")};
    if (n.op_type == "Conv") mm.attrs = n.attrs;  // auto_pad, dilations, group, kernel_shape, pads, strides
    Node cast;
    cast.op_type = "Cast";
    cast.name = g.unique_name(base + "_Cast");
    cast.inputs = {mm.outputs[0]};
    cast.outputs = {g.unique_name(base + "_int32_float")};
    cast.attrs["to"] = int64_t{1};  // FLOAT
    Node sc;
    sc.op_type = "Mul";
    sc.name = g.unique_name(base + "_scale_Mul");
    sc.inputs = {dx.scale, ws_name};
    sc.outputs = {g.unique_name(base + "_output_scale")};
    Node mul;
    mul.op_type = "Mul";
    mul.name = g.unique_name(base + "_Mul");
    mul.inputs = {cast.outputs[0], sc.outputs[0]};

    // The bias: Conv's B as [M, 1, ..., 1]; Gemm's beta C as given (it broadcasts against [M, N]).
    std::string bias;
    if (!n.input(2).empty()) {
      Tensor b = g.initializer(n.input(2))->clone();
      PERCH_CHECK(b.dtype() == DType::kFloat32, m.source, ": ", n.describe(), ": bias '", n.input(2), "' is not float32");
      if (n.op_type == "Conv") {
        Shape bs{b.numel()};
        for (int64_t d = 2; d < w.rank(); ++d) bs.push_back(1);
        b = b.reshaped(bs);
      } else {
        const float beta = n.attr_float("beta", 1.0f);
        for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] *= beta;
      }
      bias = g.unique_name(n.input(2) + "_dynamic");
      g.initializers[bias] = b;
    }
    mul.outputs = {bias.empty() ? n.outputs[0] : g.unique_name(base + "_unbiased")};
    g.nodes.push_back(mm);
    g.nodes.push_back(cast);
    g.nodes.push_back(sc);
    g.nodes.push_back(mul);
    if (!bias.empty()) {
      Node add;
      add.op_type = "Add";
      add.name = g.unique_name(base + "_bias_Add");
      add.inputs = {mul.outputs[0], bias};
      add.outputs = {n.outputs[0]};
      g.nodes.push_back(add);
    }
    replaced[ni] = true;
    replaced_params.insert(n.input(1));
    if (!n.input(2).empty()) replaced_params.insert(n.input(2));
    res.layers.push_back(rep);
  }
  std::vector<Node> kept;
  kept.reserve(g.nodes.size());
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (i >= original || !replaced[i]) kept.push_back(std::move(g.nodes[i]));
  g.nodes = std::move(kept);
  g.toposort();
  // The replaced layers' float weights and biases, unless something else still reads them.
  std::set<std::string> read;
  for (const auto& n : g.nodes) {
    for (const auto& i : n.inputs) read.insert(i);
    for (const auto& i : n.captured) read.insert(i);
  }
  for (const auto& name : replaced_params)
    if (!read.count(name) && !g.is_graph_output(name)) g.initializers.erase(name);
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace perch::ptq
