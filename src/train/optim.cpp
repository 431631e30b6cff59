#include "perch/train/optim.h"

#include <cmath>
#include <numbers>

#include "perch/core/error.h"
#include "perch/train/autograd.h"

namespace perch::train {

Optimizer::Optimizer(OptimizerOptions o) : o_(std::move(o)) {
  PERCH_CHECK(o_.kind == "sgd" || o_.kind == "adamw", "optimizer '", o_.kind, "': expected sgd or adamw");
  PERCH_CHECK(o_.lr > 0 && std::isfinite(o_.lr), "learning rate must be positive, got ", o_.lr);
  PERCH_CHECK(o_.weight_decay >= 0, "weight decay must be >= 0");
}

void Optimizer::step(Tape& tape, float lr) {
  ++t_;
  const bool adam = o_.kind == "adamw";
  const double bc1 = 1.0 - std::pow(static_cast<double>(o_.beta1), static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(static_cast<double>(o_.beta2), static_cast<double>(t_));
  for (const auto& name : tape.params()) {
    Tensor& p = tape.param(name);
    const Tensor& g = tape.grad(name);
    PERCH_CHECK(g.numel() == p.numel(), "gradient of '", name, "' has the wrong size");
    const float wd = p.rank() >= 2 ? o_.weight_decay : 0.0f;
    auto& m = m_[name];
    if (m.empty()) m = Tensor(DType::kFloat32, p.shape());
    float* pd = p.data<float>();
    const float* gd = g.data<float>();
    float* md = m.data<float>();
    const int64_t n = p.numel();
    if (adam) {
      auto& v = v_[name];
      if (v.empty()) v = Tensor(DType::kFloat32, p.shape());
      float* vd = v.data<float>();
      const float a = static_cast<float>(lr / bc1), sb2 = static_cast<float>(1.0 / std::sqrt(bc2));
      for (int64_t i = 0; i < n; ++i) {
        pd[i] -= lr * wd * pd[i];
        md[i] = o_.beta1 * md[i] + (1.0f - o_.beta1) * gd[i];
        vd[i] = o_.beta2 * vd[i] + (1.0f - o_.beta2) * gd[i] * gd[i];
        pd[i] -= a * md[i] / (std::sqrt(vd[i]) * sb2 + o_.eps);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const float gi = gd[i] + wd * pd[i];
        md[i] = o_.momentum * md[i] + gi;
        pd[i] -= lr * (o_.nesterov ? gi + o_.momentum * md[i] : md[i]);
      }
    }
  }
}

float Schedule::at(float lr, int64_t step, int64_t total) const {
  const double t = total > 1 ? static_cast<double>(step) / static_cast<double>(total - 1) : 0.0;
  const double pi = std::numbers::pi;
  if (kind == "constant") return lr;
  if (kind == "cosine") {
    if (warmup > 0 && t < warmup) return static_cast<float>(lr * (t / warmup));
    const double p = warmup > 0 ? (t - warmup) / (1.0 - warmup) : t;
    return static_cast<float>(lr * 0.5 * (1.0 + std::cos(pi * p)));
  }
  PERCH_CHECK(kind == "onecycle", "schedule '", kind, "': expected constant, cosine or onecycle");
  const double lo = lr / 25.0, end = lo / 1e4, up = 0.3;
  if (t < up) return static_cast<float>(lo + (lr - lo) * t / up);
  const double p = (t - up) / (1.0 - up);
  return static_cast<float>(end + (lr - end) * 0.5 * (1.0 + std::cos(pi * p)));
}

}  // namespace perch::train
