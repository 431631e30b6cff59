// perch/train/trainer.h — the training loop: shuffled mini-batches, augmentation, optimizer, schedule.
//
// Each epoch visits the data in a fresh random order (perch's seeded generator: the same seed gives the
// same batches everywhere); the last partial batch is dropped when it is smaller than half a batch (BN
// statistics of a handful of images are noise). Augmentation: horizontal flip with probability 1/2, and
// optionally a random shift of up to `shift` pixels (zero padding, i.e. the normalized background).
// Progress (loss, running accuracy, images/s) goes to stderr; one EpochLog per epoch is returned.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "perch/data/dataset.h"
#include "perch/train/autograd.h"
#include "perch/train/optim.h"

namespace perch::train {

// A custom training objective (e.g. distillation, perch/train/distill.h): for a batch input and the model's
// first output, the loss (mean over the batch), dL/d(output) in `grad`, and for the progress line how many
// of `count` items the model got right (the objective defines what an item and "right" are).
struct BatchLoss {
  double loss = 0;
  int64_t correct = 0, count = 0;
};
using Objective = std::function<BatchLoss(const Tensor& input, const Tensor& output, Tensor& grad)>;

struct TrainOptions {
  int64_t epochs = 1;
  int64_t batch = 128;
  int64_t max_steps = 0;  // > 0: stop after this many steps (tests, benchmarks)
  OptimizerOptions optimizer;
  Schedule schedule;
  bool flip = true;
  int64_t shift = 0;
  float label_smoothing = 0.0f;
  uint64_t seed = 1;
  std::string label = "train";  // progress label
  // Null: softmax cross-entropy on the data's labels (label_smoothing); otherwise this, and labels are not needed.
  Objective objective;
  // Called after every optimizer step (QAT uses it to freeze ranges / BN late in training).
  std::function<void(int64_t step, int64_t total)> on_step;
};

struct EpochLog {
  int64_t epoch = 0, steps = 0;
  double loss = 0, train_accuracy = 0, seconds = 0;
  double eval_accuracy = -1;  // < 0: not evaluated
};

// Trains the parameters of `tape` (whose model's first input takes the images and first output gives the
// logits) on labelled `data` (unlabelled with options.objective). `evaluate`, if given, is called after each epoch and its accuracy logged.
std::vector<EpochLog> fit(Tape& tape, const Dataset& data, const TrainOptions& options,
                          const std::function<double()>& evaluate = nullptr);

// Top-1 accuracy of the tape's model (evaluation mode) on labelled data.
double accuracy(Tape& tape, const Dataset& data, int64_t batch = 256, const std::string& label = "eval");

// Exports a trained model for inference: BatchNormalization folded into the preceding convolutions
// (graph/passes.h canonicalize), everything else unchanged.
graph::Model export_inference(const graph::Model& trained);

}  // namespace perch::train
