// perch/train/autograd.h — reverse-mode gradients over the graph IR.
//
// A Tape runs a Model forward with the executor's op kernels (perch/runtime/executor.h), keeping every
// value, then walks the nodes backward calling each op's gradient function (GradRegistry) and summing
// the gradients that reach each value. Gradients flow to the model's *parameters*: float initializers
// chosen by the caller (default_parameters: Conv/Gemm/MatMul weights and biases, BatchNormalization scale
// and bias). Parameters are updated in place by an optimizer (perch/train/optim.h): the Tape and the Model
// share the initializers' storage.
//
// Some ops behave differently while training and carry state (a "training forward"):
//   BatchNormalization  training: normalizes with the batch's statistics (mean, population variance) and
//                       updates the running statistics, running = momentum * running + (1 - momentum) * batch
//                       (ONNX's convention, momentum 0.9 by default; the running variance takes the unbiased
//                       batch variance, as PyTorch does). Evaluation, and a node with the attribute
//                       kFrozenStatistics = 1 (QAT sets it on the training graph): running statistics, unchanged.
//   perch FakeQuant     see perch/train/qat.h.
// Everything else computes the same function in both modes.
//
// Gradient conventions: float32 everywhere; a gradient has its value's shape; broadcasting ops sum the
// gradient over the broadcast dimensions. Piecewise-linear ops take the derivative of the piece the input
// lies in; at the break points: Relu 0 (x <= 0), Clip 0 unless min < x < max, MaxPool the first maximum of
// the window (row-major), Floor-style ops none (not differentiable: refused).
#pragma once

#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "perch/graph/ir.h"
#include "perch/runtime/executor.h"

namespace perch::train {

using runtime::TensorMap;

// State a training forward writes back into the model (initializer name -> new value): BN running
// statistics, fake-quant ranges.
// Attribute of a BatchNormalization node in a training graph: use (and keep) the running statistics in training
// forwards too. Not an ONNX attribute; never written to a model file.
inline constexpr const char* kFrozenStatistics = "perch_frozen_statistics";

struct ForwardContext {
  bool training = false;
  std::vector<Tensor> saved;                            // what backward needs (per node)
  std::vector<std::pair<std::string, Tensor>> updates;  // initializer updates, applied after the node
};

struct GradArgs {
  const graph::Node& node;
  int64_t opset;
  std::vector<const Tensor*> inputs;        // nullptr = omitted optional input
  std::vector<const Tensor*> outputs;
  std::vector<const Tensor*> grad_outputs;  // nullptr = no gradient reaches this output
  const std::vector<Tensor>& saved;         // ForwardContext::saved of the forward, empty for plain ops
  std::vector<bool> needs;                  // needs[i]: input i wants a gradient
  bool training;                            // the mode the forward ran in
};

// Returns one gradient per input (an empty Tensor where none is needed or defined).
using GradFn = std::function<std::vector<Tensor>(const GradArgs&)>;
using TrainForwardFn =
    std::function<std::vector<Tensor>(const graph::Node&, const std::vector<const Tensor*>&, int64_t opset, ForwardContext&)>;

struct GradOp {
  GradFn backward;
  TrainForwardFn forward;  // null: the executor's kernel, same in both modes
  // Inputs that never take a gradient (shapes, axes, running statistics, zero points...).
  std::vector<size_t> non_differentiable;
};

class GradRegistry {
 public:
  // The registry with perch's built-in gradients (grad_ops.cpp, qat.cpp).
  static GradRegistry& global();
  void add(const std::string& op_type, const std::string& domain, GradOp op);
  const GradOp* find(const std::string& op_type, const std::string& domain) const;
  std::vector<std::string> op_types() const;

 private:
  std::map<std::string, GradOp> ops_;  // key: domain + "::" + op_type ("" = ai.onnx)
};

// Float initializers that Conv (W, B), Gemm (B, C), MatMul (either side), BatchNormalization (scale, B),
// Add/Mul (a float constant operand with more than one element: per-channel scales and shifts, e.g. a written-out
// layer norm's gamma and beta) and PRelu read: what training learns by default. Scalar Add/Mul constants are
// structure, not parameters (a layer norm's epsilon, HardSwish's 3 and 1/6 written out), and stay fixed.
std::vector<std::string> default_parameters(const graph::Model& model);

class Tape {
 public:
  // `model` must outlive the Tape; its initializers named in `params` are trained. Throws naming every
  // node on a gradient path whose op has no gradient.
  Tape(graph::Model& model, std::vector<std::string> params);

  // Runs the graph on named inputs; returns the graph outputs. training=true uses the ops' training
  // forward (batch statistics) and applies their state updates to the model; either mode keeps what
  // backward() needs.
  TensorMap forward(const TensorMap& inputs, bool training);
  // Back-propagates dL/d(output) for the named graph outputs of the last forward(); afterwards grad(p)
  // holds dL/dp for every parameter (zeros where no gradient reached it).
  void backward(const TensorMap& grad_outputs);
  // dL/d(name) of the last backward(), for a parameter or a value named in keep_gradients_of().
  const Tensor& grad(const std::string& name) const;
  const std::vector<std::string>& params() const { return params_; }
  Tensor& param(const std::string& name);
  // Also keep the gradient of these non-parameter values (e.g. graph inputs) in backward().
  void keep_gradients_of(std::vector<std::string> values) {
    keep_ = std::move(values);
    plan();
  }

  graph::Model& model() { return model_; }
  // The nodes as executed, after the rewrites of plan() (for tests and diagnostics).
  const std::vector<graph::Node>& executed_nodes() const { return nodes_; }

 private:
  graph::Model& model_;
  std::vector<std::string> params_;
  // The nodes as executed: the model's, with Relu -> MaxPool pairs run as MaxPool -> Relu, Relu ->
  // FakeQuantAct pairs as one ReluFakeQuantAct and that followed by a MaxPool as one ReluFakeQuantActMaxPool
  // (autograd.cpp, execution_nodes(); see executed_nodes()).
  std::vector<graph::Node> nodes_;
  std::vector<size_t> origin_;  // nodes_[i] is the model's node origin_[i] (attributes re-read each forward)
  std::vector<size_t> pool_origin_;  // a fused MaxPool's node (attributes as "pool.<name>"), or SIZE_MAX
  std::vector<std::string> keep_;
  std::vector<const runtime::OpKernel*> kernels_;
  std::vector<const GradOp*> grads_;
  std::vector<bool> node_needs_;                // some input of node i depends on a parameter
  std::map<std::string, bool> value_needs_;     // value depends on a parameter (or a kept value)
  std::vector<std::vector<Tensor>> saved_;
  TensorMap values_;
  TensorMap grad_;
  bool last_training_ = false;
  void plan();
};

// Softmax cross-entropy: loss = mean over the batch of -log softmax(logits[i])[labels[i]] (with label
// smoothing eps: the target is (1 - eps) one-hot + eps / C). logits [N, C]. If dlogits is given it receives
// dloss/dlogits = (softmax - target) / N. Computed in double per row.
double softmax_cross_entropy(const Tensor& logits, std::span<const int64_t> labels, Tensor* dlogits,
                             float label_smoothing = 0.0f);

}  // namespace perch::train
