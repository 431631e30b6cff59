// src/ptq/model_diff.h — which values two builds of one model compute alike (internal to ptq).
//
// Sensitivity analysis and the activation range search evaluate many variants of one quantized model that
// differ in a few initializers (a layer's weights, an activation's scale and zero point, the biases scaled by
// it). A variant's node computes exactly what the base model's node of the same outputs computes when op,
// attributes and inputs are the same and every input is itself clean (a graph input, an identical initializer,
// or a clean node's output); those values are taken from a run of the base model instead of being recomputed
// (runtime::Executor::run_cached).
#pragma once

#include <string>
#include <vector>

#include "perch/graph/ir.h"

namespace perch::ptq::detail {

bool same_tensor(const Tensor& a, const Tensor& b);
bool same_attrs(const graph::Node& a, const graph::Node& b);
// Output names of `variant`'s clean nodes (see above), in graph order.
std::vector<std::string> clean_outputs(const graph::Model& base, const graph::Model& variant);

}  // namespace perch::ptq::detail
