// StepProfile (header: perch/runtime/profile.h).
#include "perch/runtime/profile.h"

#include "perch/core/error.h"

namespace perch::runtime {

StepProfile::StepProfile(std::vector<std::string> nodes, std::vector<std::string> what)
    : nodes_(std::move(nodes)), what_(std::move(what)),
      ns_(new std::atomic<int64_t>[nodes_.size()]), calls_(new std::atomic<int64_t>[nodes_.size()]) {
  PERCH_CHECK(what_.size() == nodes_.size(), "StepProfile: ", nodes_.size(), " nodes but ", what_.size(), " descriptions");
  reset();
}

std::vector<StepTime> StepProfile::entries() const {
  std::vector<StepTime> out(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    out[i].node = nodes_[i];
    out[i].what = what_[i];
    out[i].calls = calls_[i].load(std::memory_order_relaxed);
    out[i].total_ms = static_cast<double>(ns_[i].load(std::memory_order_relaxed)) / 1e6;
  }
  return out;
}

void StepProfile::reset() {
  for (size_t i = 0; i < nodes_.size(); ++i) {
    ns_[i].store(0, std::memory_order_relaxed);
    calls_[i].store(0, std::memory_order_relaxed);
  }
}

}  // namespace perch::runtime
