// perch/runtime/executor.h — the float executor: runs a Model node by node over a registry of op kernels.
//
// QuantizeLinear/DequantizeLinear run as the ONNX spec defines them, so a QDQ model executed here is
// perch's *simulation* of that quantized model (fake-quant in float). Construction checks every node
// against the registry and names all unsupported ops at once. Intermediate values are freed after their
// last consumer; graph inputs may have any batch size. Runs of element-wise nodes over one tensor (HardSwish
// written out, scalar affine chains) execute fused, block by block, bit-identical to the unfused nodes.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "perch/graph/ir.h"
#include "perch/runtime/profile.h"

namespace perch::runtime {

namespace detail {
struct ElementwiseChain;
}

using TensorMap = std::unordered_map<std::string, Tensor>;

// Highest default-domain (ai.onnx) opset the executor implements: a model declaring a higher one is refused
// at construction (its ops may mean something perch does not implement); below an op's first version, the
// op is reported as unsupported.
inline constexpr int64_t kMaxOpset = 21;

// inputs[i] is nullptr for an omitted optional input.
using OpKernel = std::function<std::vector<Tensor>(const graph::Node& node, const std::vector<const Tensor*>& inputs,
                                                   int64_t opset)>;

class OpRegistry {
 public:
  static OpRegistry& global();
  void add(const std::string& op_type, int64_t min_opset, OpKernel fn);
  // Kernel for op_type in the default domain at `opset`, or nullptr.
  const OpKernel* find(const std::string& op_type, const std::string& domain, int64_t opset) const;
  std::vector<std::string> op_types() const;

 private:
  struct Entry {
    int64_t min_opset;
    OpKernel fn;
  };
  std::unordered_map<std::string, Entry> entries_;
};

class Executor {
 public:
  using Observer = std::function<void(const std::string& value, const Tensor& t)>;
  // Called for every value a node produces, before any reader sees it; may change the tensor in place
  // (same shape and type). What ptq's empirical bias correction uses to correct a layer's output before the
  // layers after it run.
  using Adjuster = std::function<void(const std::string& value, Tensor& t)>;

  explicit Executor(graph::Model model);

  // Runs the graph on named inputs; returns the graph outputs (and `extra_outputs`, if any) by name.
  // `observer` is called for every value a node produces, in execution order.
  TensorMap run(const TensorMap& inputs, const Observer& observer = nullptr,
                const std::vector<std::string>& extra_outputs = {}) const;
  // Like run(), but nodes whose outputs are all present in `known` are skipped and those values used
  // instead: the caller's cache of an unchanged prefix (see ptq/sensitivity.cpp). `known` must hold
  // values these exact nodes would compute. Nodes the graph outputs do not depend on (given `known`) do not run:
  // `known` may hold only the values where the changed part begins, and `observer` sees only what runs.
  TensorMap run_cached(const TensorMap& inputs, const TensorMap& known, const Observer& observer = nullptr) const;
  // Computes only `outputs` (any values of the graph), given `known` values as run_cached() takes them: just the
  // nodes they depend on run. Returns those values. What a caller uses to collect the values where a variant's
  // changed part begins, from the part of the base model before it.
  TensorMap run_for(const TensorMap& inputs, const TensorMap& known, const std::vector<std::string>& outputs) const;
  // Like run(), but every produced value passes through `adjust` first.
  TensorMap run_adjusting(const TensorMap& inputs, const Adjuster& adjust) const;
  // Single-input convenience: runs with the first graph input, returns the first graph output.
  Tensor run1(const Tensor& input) const;

  const graph::Model& model() const { return model_; }
  const std::string& input_name() const { return model_.graph.inputs.at(0).name; }
  const std::string& output_name() const { return model_.graph.outputs.at(0).name; }

  // Per-node timing (runtime/profile.h): after enable_profiling(), every node run() executes adds its time;
  // profile() returns the sums (empty when profiling is off). Calling enable_profiling() again starts over.
  void enable_profiling();
  std::vector<StepTime> profile() const;

 private:
  graph::Model model_;
  std::shared_ptr<StepProfile> profile_;
  std::vector<const OpKernel*> kernels_;
  std::unordered_map<std::string, size_t> last_use_;  // value -> index of the last node reading it
  // Fused element-wise chains (runtime/elementwise_chain.h): chain_of_[i] = index into chains_ + 1 for the
  // nodes of a chain, 0 otherwise. Run fused only when no caller needs their intermediate values.
  std::shared_ptr<const std::vector<detail::ElementwiseChain>> chains_;
  std::vector<size_t> chain_of_;
  // conv_chain_[i] = index into chains_ + 1 when node i is a Conv whose output is read by that chain alone (and is no
  // graph output): the chain then runs inside the Conv, on each finished block of its output (kernels::conv2d_f32's
  // epilogue), under the same conditions as any fused chain. 0 otherwise.
  std::vector<size_t> conv_chain_;
  TensorMap constants_;                                // initializers + folded Constant nodes

  TensorMap run_impl(const TensorMap& inputs, const TensorMap* known, const Observer& observer,
                     const std::vector<std::string>& extra_outputs, const Adjuster* adjust = nullptr,
                     bool only_extra = false) const;
};

// The registry with every built-in op kernel registered (what Executor uses).
const OpRegistry& builtin_registry();

// Ops perch's executor does not support in `model` (op_type and count), empty if none.
std::vector<std::string> unsupported_ops(const graph::Model& model);

}  // namespace perch::runtime
