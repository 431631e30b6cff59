#include "perch/ptq/validate.h"

#include <cmath>
#include <map>
#include <set>
#include <string>

namespace perch::ptq {

namespace {

// Input slots of `op` that hold parameters perch folds or quantizes.
std::vector<size_t> parameter_inputs(const std::string& op) {
  if (op == "Conv" || op == "Gemm" || op == "MatMul" || op == "ConvTranspose") return {1, 2};
  if (op == "BatchNormalization") return {1, 2, 3, 4};
  return {};
}

template <typename T>
void check_tensor(const graph::Model& m, const graph::Node& n, const std::string& name, const Tensor& t) {
  const T* d = t.data<T>();
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(d[i]) && bad++ == 0) first = i;
  if (!bad) return;
  Shape coords(t.shape().size());
  int64_t flat = first;
  for (size_t k = coords.size(); k-- > 0;) {
    coords[k] = t.shape()[k] ? flat % t.shape()[k] : 0;
    flat = t.shape()[k] ? flat / t.shape()[k] : 0;
  }
  PERCH_FAIL(m.source, ": ", n.describe(), ": initializer '", name, "' ", shape_str(t.shape()), " holds ", bad,
             " non-finite value(s) (NaN/Inf), the first at index ", shape_str(coords), " (flat ", first, ", value ",
             static_cast<double>(d[first]), "); perch does not quantize non-finite weights: fix the exported model");
}

}  // namespace

void check_finite_weights(const graph::Model& model) {
  for (const auto& n : model.graph.nodes) {
    if (!n.domain.empty() && n.domain != "ai.onnx") continue;
    for (size_t i : parameter_inputs(n.op_type)) {
      const std::string& name = n.input(i);
      const Tensor* t = name.empty() ? nullptr : model.graph.initializer(name);
      if (!t) continue;
      if (t->dtype() == DType::kFloat32) check_tensor<float>(model, n, name, *t);
      if (t->dtype() == DType::kFloat64) check_tensor<double>(model, n, name, *t);
    }
  }
}

void check_no_float16(const graph::Model& model) {
  const auto refuse = [&](const std::string& what) {
    PERCH_FAIL(model.source, ": ", what, " is float16 or bfloat16; perch quantizes float32 models — convert the model to float32 "
               "first (graph::upcast_float16; the perch CLI does it)");
  };
  for (const auto& v : model.graph.inputs)
    if (is_half_type(v.dtype)) refuse("input '" + v.name + "'");
  for (const auto& v : model.graph.outputs)
    if (is_half_type(v.dtype)) refuse("output '" + v.name + "'");
  for (const auto& [name, t] : model.graph.initializers)
    if (is_half_type(t.dtype())) refuse("initializer '" + name + "'");
  for (const auto& n : model.graph.nodes) {
    if (!n.domain.empty() && n.domain != "ai.onnx") continue;
    if (auto to = n.attrs.find("to"); n.op_type == "Cast" && to != n.attrs.end()) {
      const auto* code = std::get_if<int64_t>(&to->second);
      const auto* name = std::get_if<std::string>(&to->second);  // Cast-1 names the type
      if ((code && (*code == 10 || *code == 16)) || (name && *name == "FLOAT16")) refuse(n.describe() + "'s output");
    }
    if (n.op_type == "CastLike" && n.inputs.size() > 1) {
      const Tensor* like = model.graph.initializer(n.inputs[1]);
      if (like && is_half_type(like->dtype())) refuse(n.describe() + "'s output");
    }
  }
}

bool is_quantization_op(const graph::Node& n) {
  static const std::set<std::string> ops = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                            "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"};
  return n.domain.empty() && ops.count(n.op_type) != 0;
}

void check_not_quantized(const graph::Model& model) {
  std::map<std::string, int> found;
  for (const auto& n : model.graph.nodes)
    if (is_quantization_op(n)) ++found[n.op_type];
  if (found.empty()) return;
  std::string list;
  for (const auto& [op, count] : found) list += (list.empty() ? "" : ", ") + std::to_string(count) + " " + op;
  PERCH_FAIL(model.source, ": the model is already quantized (", list, "); perch quantize takes a float model. ",
             "Run a quantized model with perch eval / run / bench --engine int8");
}

}  // namespace perch::ptq
