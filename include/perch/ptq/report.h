// perch/ptq/report.h — a self-contained HTML report (inline SVG, no scripts, no network): per-layer
// per-channel weight ranges, per-layer sensitivity per configuration, the chosen configuration, and
// the accuracy summary.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "perch/graph/ir.h"
#include "perch/ptq/sensitivity.h"

namespace perch::ptq {

struct ReportInput {
  std::string title;
  const graph::Model* model = nullptr;               // canonical model: weight ranges
  const SensitivityReport* sensitivity = nullptr;    // optional
  const Selection* selection = nullptr;              // optional
  std::vector<std::pair<std::string, double>> accuracy;  // summary rows (label, top-1)
};

std::string render_report_html(const ReportInput& in);

}  // namespace perch::ptq
