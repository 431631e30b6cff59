#include "perch/ptq/validate.h"

#include <cmath>
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

}  // namespace perch::ptq
