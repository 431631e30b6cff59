// Small pieces every perch subcommand file shares (not a public header).
#pragma once

#include <string>

#include "perch/core/error.h"
#include "perch/ptq/quantize.h"

namespace perch::cli {

// --weights: "per-channel" | "per-tensor" | "per-group:G" into `w` (granularity, group_size).
inline void parse_granularity(const std::string& s, ptq::WeightOptions& w) {
  if (s == "per-channel") {
    w.granularity = quant::Granularity::kPerChannel;
  } else if (s == "per-tensor") {
    w.granularity = quant::Granularity::kPerTensor;
  } else if (s.rfind("per-group:", 0) == 0) {
    w.granularity = quant::Granularity::kPerGroup;
    try {
      w.group_size = std::stoll(s.substr(10));
    } catch (...) {
      w.group_size = 0;
    }
    PERCH_CHECK(w.group_size > 0, "--weights ", s, ": group size must be a positive integer");
  } else {
    PERCH_FAIL("--weights '", s, "': expected per-channel, per-tensor or per-group:G");
  }
}

}  // namespace perch::cli
