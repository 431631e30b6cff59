// perch/runtime/profile.h — time spent per node of an executor (Executor, Int8Executor), for `perch bench
// --profile` and for users who want to know where a model's time goes.
//
// Each executor owns at most one StepProfile, created by enable_profiling(); while it exists every step run()
// executes is timed with std::chrono::steady_clock (two clock reads per step, ~40 ns) and its duration added to the
// step's entry. The entries are the executor's steps in execution order: a float node for Executor; for
// Int8Executor the integer op a node (with its fused neighbours) was lowered to, or a float fallback. Several
// threads may call run() at once: the sums are atomic. A run split into sub-batches (Int8Report::sub_batch)
// calls each step once per slice; `calls` counts those.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace perch::runtime {

struct StepTime {
  std::string node;   // Node::describe() of the node the step runs
  std::string what;   // what the step does (Int8Report's "how"; the op type for the float executor)
  int64_t calls = 0;  // times the step ran
  double total_ms = 0.0;
};

class StepProfile {
 public:
  StepProfile(std::vector<std::string> nodes, std::vector<std::string> what);
  // Adds one call of step i taking `ns` nanoseconds.
  void add(size_t i, int64_t ns) {
    ns_[i].fetch_add(ns, std::memory_order_relaxed);
    calls_[i].fetch_add(1, std::memory_order_relaxed);
  }
  size_t size() const { return nodes_.size(); }
  // The entries with their sums so far, in execution order.
  std::vector<StepTime> entries() const;
  void reset();

 private:
  std::vector<std::string> nodes_, what_;
  std::unique_ptr<std::atomic<int64_t>[]> ns_, calls_;
};

}  // namespace perch::runtime
