// perch/ptq/evaluate.h — top-1 accuracy of a model on a labelled dataset.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "perch/data/dataset.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {

struct EvalResult {
  int64_t correct = 0;
  int64_t count = 0;
  double seconds = 0;
  double accuracy() const { return count ? static_cast<double>(correct) / static_cast<double>(count) : 0.0; }
};

// Checks that `data` feeds exactly the inputs of `model` (a model with several inputs needs
// npy:NAME=FILE,... data, see perch/data/dataset.h); throws naming both otherwise.
void check_feeds(const graph::Model& model, const Dataset& data);

// Runs `exec` over `data` in batches; the first output's argmax over its last axis is the prediction
// (ties go to the lowest index, as numpy.argmax). Shows progress labelled `label` unless quiet.
EvalResult evaluate(const runtime::Executor& exec, const Dataset& data, int64_t batch = 64,
                    const std::string& label = "evaluating");
// The same over any engine: `run` maps a batch of inputs (Dataset::feeds, by input name) to the first output;
// `model` is the model it runs (names it in errors, gives the input names).
using FeedsRun = std::function<Tensor(const runtime::TensorMap&)>;
EvalResult evaluate(const FeedsRun& run, const graph::Model& model, const Dataset& data, int64_t batch = 64,
                    const std::string& label = "evaluating");

}  // namespace perch::ptq
