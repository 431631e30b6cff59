// perch/train/optim.h — optimizers and learning-rate schedules.
//
// SGD (momentum mu, optional Nesterov, weight decay wd added to the gradient, as PyTorch's SGD):
//   g = grad + wd * p;  v = mu * v + g;  p -= lr * (nesterov ? g + mu * v : v)
// AdamW (Loshchilov & Hutter; decoupled weight decay, bias-corrected moments, as PyTorch's AdamW):
//   p -= lr * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// Weight decay applies to parameters of rank >= 2 only (conv / linear weights), never to biases and
// BatchNormalization scale/shift — the usual practice, since decaying them only shifts the function.
//
// Schedules give the learning rate of step t in [0, total):
//   constant:  lr
//   cosine:    linear warm-up over the first `warmup` fraction, then lr * (1 + cos(pi * progress)) / 2
//   one-cycle: linear from lr/25 up to lr over the first 30 %, then cosine down to lr/25e4 (Smith's
//              one-cycle policy with PyTorch OneCycleLR's defaults)
#pragma once

#include <map>
#include <string>
#include <vector>

#include "perch/core/tensor.h"

namespace perch::train {

class Tape;

struct OptimizerOptions {
  std::string kind = "adamw";  // "sgd" | "adamw"
  float lr = 2e-3f;
  float momentum = 0.9f;
  bool nesterov = false;
  float weight_decay = 5e-4f;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
};

class Optimizer {
 public:
  explicit Optimizer(OptimizerOptions o);
  // One update of every parameter of `tape` from its gradients, at learning rate `lr`.
  void step(Tape& tape, float lr);
  const OptimizerOptions& options() const { return o_; }

 private:
  OptimizerOptions o_;
  int64_t t_ = 0;
  std::map<std::string, Tensor> m_, v_;
};

struct Schedule {
  std::string kind = "onecycle";  // "constant" | "cosine" | "onecycle"
  float warmup = 0.0f;            // cosine: fraction of steps warming up linearly
  float at(float base_lr, int64_t step, int64_t total) const;
};

}  // namespace perch::train
