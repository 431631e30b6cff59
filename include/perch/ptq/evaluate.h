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

// Runs `exec` over `data` in batches; the first output's argmax over its last axis is the prediction
// (ties go to the lowest index, as numpy.argmax). Shows progress labelled `label` unless quiet.
EvalResult evaluate(const runtime::Executor& exec, const Dataset& data, int64_t batch = 64,
                    const std::string& label = "evaluating");
// The same over any engine: `run` maps a batch of inputs to the first output (e.g. Int8Executor::run1);
// `source` names the model in errors.
EvalResult evaluate(const std::function<Tensor(const Tensor&)>& run, const std::string& source, const Dataset& data,
                    int64_t batch = 64, const std::string& label = "evaluating");

}  // namespace perch::ptq
