#include "perch/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "perch/core/error.h"
#include "perch/core/random.h"
#include "perch/core/progress.h"
#include "perch/graph/passes.h"

namespace perch::train {

namespace {

using Rng = SplitMix64;  // perch/core/random.h

// Copies image `src` into batch row `dst`, flipped horizontally and/or shifted by (dy, dx) pixels; cells
// shifted in take `fill` (the normalized value of a black pixel).
void augment_copy(const float* src, float* dst, int64_t c, int64_t h, int64_t w, bool flip, int64_t dy, int64_t dx,
                  float fill) {
  for (int64_t ch = 0; ch < c; ++ch)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sy = y - dy, sx0 = x - dx;
        float v = fill;
        if (sy >= 0 && sy < h && sx0 >= 0 && sx0 < w) {
          const int64_t sx = flip ? w - 1 - sx0 : sx0;
          v = src[(ch * h + sy) * w + sx];
        }
        dst[(ch * h + y) * w + x] = v;
      }
}

// Training feeds one tensor per sample: models with several inputs are quantized (perch quantize), not trained.
void check_one_input(const graph::Model& m, const Dataset& data) {
  PERCH_CHECK(m.graph.inputs.size() == 1 && data.inputs.empty(), m.source, " on ", data.name,
              ": training and QAT take a model with one input and data with one tensor per sample (the model has ",
              m.graph.inputs.size(), " inputs, the data ", 1 + data.inputs.size(), ")");
  PERCH_CHECK(data.groups.empty(), m.source, " on ", data.name, ": training and QAT take data of one input shape (it has ",
              data.groups.size() + 1, "; calibration and evaluation take several)");
}

}  // namespace

std::vector<EpochLog> fit(Tape& tape, const Dataset& data, const TrainOptions& o, const std::function<double()>& evaluate) {
  PERCH_CHECK(o.objective || data.has_labels(), data.name, ": training needs labels (or a custom objective)");
  PERCH_CHECK(o.batch > 1, "batch size must be > 1 (BatchNormalization needs batch statistics)");
  PERCH_CHECK(o.epochs > 0, "epochs must be positive");
  const auto& g = tape.model().graph;
  PERCH_CHECK(!g.inputs.empty() && !g.outputs.empty(), tape.model().source, ": model has no input or output");
  check_one_input(tape.model(), data);
  const std::string in_name = g.inputs[0].name, out_name = g.outputs[0].name;
  const Tensor& images = data.images;
  const int64_t n = data.size();
  PERCH_CHECK(n >= 2, data.name, ": ", n, " images are too few to train on");
  const int64_t row = images.numel() / n;
  const bool spatial = images.rank() == 4;
  const int64_t c = spatial ? images.dim(1) : 1, h = spatial ? images.dim(2) : 1, w = spatial ? images.dim(3) : row;
  // Normalized value of a black pixel for shifted-in cells: the minimum of the data (0 before normalizing).
  float fill = 0.0f;
  if (o.shift > 0) {
    fill = images.data<float>()[0];
    for (float v : images.span<float>()) fill = std::min(fill, v);
  }
  // Full batches, plus the last partial one when it holds at least half a batch; data smaller than one batch is
  // one (partial) batch per epoch — never zero steps.
  const int64_t per_epoch = std::max<int64_t>(1, n / o.batch + (n % o.batch >= o.batch / 2 ? 1 : 0));
  int64_t total = per_epoch * o.epochs;
  if (o.max_steps > 0) total = std::min(total, o.max_steps);
  Optimizer opt(o.optimizer);
  Rng rng{o.seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::vector<EpochLog> logs;
  int64_t step = 0;
  Shape in_shape = images.shape();
  for (int64_t epoch = 1; epoch <= o.epochs && step < total; ++epoch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[static_cast<size_t>(i)], order[rng.below(static_cast<uint64_t>(i + 1))]);
    const int64_t steps = std::min(per_epoch, total - step);
    Progress bar(o.label + " epoch " + std::to_string(epoch) + "/" + std::to_string(o.epochs), steps);
    double loss_sum = 0.0;
    int64_t correct = 0, seen = 0, items = 0;
    for (int64_t s = 0; s < steps; ++s, ++step) {
      const int64_t b0 = s * o.batch, bn = std::min(o.batch, n - b0);
      in_shape[0] = bn;
      Tensor x = Tensor::uninitialized(DType::kFloat32, in_shape);
      std::vector<int64_t> labels(static_cast<size_t>(bn));
      for (int64_t i = 0; i < bn; ++i) {
        const int64_t idx = order[static_cast<size_t>(b0 + i)];
        if (!o.objective) labels[static_cast<size_t>(i)] = data.labels[static_cast<size_t>(idx)];
        const bool flip = o.flip && spatial && (rng.next() & 1);
        int64_t dy = 0, dx = 0;
        if (o.shift > 0 && spatial) {
          dy = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * o.shift + 1))) - o.shift;
          dx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * o.shift + 1))) - o.shift;
        }
        augment_copy(images.data<float>() + idx * row, x.data<float>() + i * row, c, h, w, flip, dy, dx, fill);
      }
      TensorMap out = tape.forward({{in_name, x}}, true);
      const Tensor& logits = out.at(out_name);
      Tensor dl;
      BatchLoss bl;
      if (o.objective) {
        bl = o.objective(x, logits, dl);
      } else {
        bl.loss = softmax_cross_entropy(logits, labels, &dl, o.label_smoothing);
        const float* ld = logits.data<float>();
        const int64_t k = logits.dim(1);
        for (int64_t i = 0; i < bn; ++i)
          bl.correct += std::max_element(ld + i * k, ld + (i + 1) * k) - (ld + i * k) == labels[static_cast<size_t>(i)];
        bl.count = bn;
      }
      const double loss = bl.loss;
      PERCH_CHECK(std::isfinite(loss), o.label, ": the loss became ", loss, " at step ", step + 1,
                  " (learning rate too high?)");
      tape.backward({{out_name, dl}});
      opt.step(tape, o.schedule.at(o.optimizer.lr, step, total));
      if (o.on_step) o.on_step(step, total);
      loss_sum += loss * static_cast<double>(bn);
      correct += bl.correct, items += bl.count;
      seen += bn;
      char extra[96];
      std::snprintf(extra, sizeof extra, "loss %.4f acc %.4f", loss_sum / static_cast<double>(seen),
                    static_cast<double>(correct) / static_cast<double>(std::max<int64_t>(1, items)));
      bar.update(s + 1, extra);
    }
    EpochLog log;
    log.epoch = epoch;
    log.steps = steps;
    log.loss = seen ? loss_sum / static_cast<double>(seen) : 0.0;
    log.train_accuracy = items ? static_cast<double>(correct) / static_cast<double>(items) : 0.0;
    log.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char extra[128];
    std::snprintf(extra, sizeof extra, "loss %.4f acc %.4f, %.1f s", log.loss, log.train_accuracy, log.seconds);
    bar.finish(extra);
    if (evaluate) log.eval_accuracy = evaluate();
    logs.push_back(log);
  }
  return logs;
}

double accuracy(Tape& tape, const Dataset& data, int64_t batch, const std::string& label) {
  PERCH_CHECK(data.has_labels(), data.name, ": accuracy needs labels");
  check_one_input(tape.model(), data);
  const auto& g = tape.model().graph;
  const std::string in_name = g.inputs.at(0).name, out_name = g.outputs.at(0).name;
  const int64_t n = data.size();
  int64_t correct = 0;
  Progress bar(label, n);
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t bn = std::min(batch, n - b0);
    TensorMap out = tape.forward({{in_name, data.batch(b0, bn)}}, false);
    const Tensor& logits = out.at(out_name);
    const float* ld = logits.data<float>();
    const int64_t k = logits.dim(1);
    for (int64_t i = 0; i < bn; ++i)
      correct += std::max_element(ld + i * k, ld + (i + 1) * k) - (ld + i * k) == data.labels[static_cast<size_t>(b0 + i)];
    bar.update(b0 + bn);
  }
  const double acc = n ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  char extra[32];
  std::snprintf(extra, sizeof extra, "top-1 %.4f", acc);
  bar.finish(extra);
  return acc;
}

graph::Model export_inference(const graph::Model& trained) {
  graph::Model m = trained;
  // Deep-copy initializers: the trained model keeps training (QAT) while the export is saved.
  for (auto& [name, t] : m.graph.initializers) t = t.clone();
  graph::canonicalize(m);
  for (const auto& n : m.graph.nodes)
    PERCH_CHECK(n.op_type != "BatchNormalization", trained.source, ": ", n.describe(),
                " could not be folded into a preceding convolution");
  return m;
}

}  // namespace perch::train
