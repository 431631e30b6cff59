// Small pieces every perch subcommand file shares (not a public header).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include <cstdio>

#include "perch/core/error.h"
#include "perch/core/progress.h"
#include "perch/graph/passes.h"
#include "perch/ptq/quantize.h"

namespace perch::cli {

// quantize / sensitivity / qat on a float16 model: it is made float32 (graph::upcast_float16), with a note on stderr.
inline int upcast_float16_with_note(graph::Model& model) {
  const int changed = graph::upcast_float16(model);
  if (changed && !quiet())
    std::fprintf(stderr,
                 "note: %s is a float16 model: quantized as the float32 model it widens to (%d values; the "
                 "QDQ model's inputs and outputs are float32)\n",
                 model.source.c_str(), changed);
  return changed;
}

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

// The quantization-scheme flags `quantize`, `sensitivity` and `qat` share (beyond bits and granularity, whose
// ranges differ per command), so that `perch qat` starts from the model `perch quantize` builds with the same flags.
struct SchemeFlags {
  std::string act_estimator = "minmax", weight_estimator = "minmax";
  double percentile = 99.99;
  bool act_signed = false, no_equalize = false, no_equalize_depthwise = false, no_fold_affine = false;
  bool no_fuse_chains = false, ignore_nonfinite = false;
};

inline void add_scheme_flags(CLI::App* c, SchemeFlags& f) {
  c->add_flag("--act-signed", f.act_signed, "int8 activations instead of uint8");
  c->add_option("--act-estimator", f.act_estimator, "minmax|last|ema|percentile|mse|entropy")->capture_default_str();
  c->add_option("--weight-estimator", f.weight_estimator, "minmax|percentile|mse|entropy")->capture_default_str();
  c->add_option("--percentile", f.percentile, "percentile for --act-estimator percentile")->capture_default_str();
  c->add_flag("--no-equalize", f.no_equalize, "skip cross-layer equalization (of weights and of depthwise inputs)");
  c->add_flag("--no-equalize-depthwise", f.no_equalize_depthwise,
              "keep the channel scales in front of depthwise convs as they are (no activation equalization)");
  c->add_flag("--no-fold-affine", f.no_fold_affine, "keep Conv -> Mul/Add(constant) unfolded");
  c->add_flag("--no-fuse-chains", f.no_fuse_chains,
              "Q/DQ on every value inside elementwise chains (e.g. hardswish as Add/Clip/Mul/Div) and written-out layer "
              "norms, not only at their ends");
  c->add_flag("--ignore-nonfinite", f.ignore_nonfinite,
              "skip NaN/Inf activation values during calibration (counted and reported) instead of failing");
}

inline void apply_scheme_flags(const SchemeFlags& f, ptq::PtqOptions& opt) {
  opt.weights.estimator.kind = quant::parse_estimator(f.weight_estimator);
  opt.activations.is_signed = f.act_signed;
  opt.activations.estimator.kind = quant::parse_estimator(f.act_estimator);
  opt.activations.estimator.percentile = f.percentile;
  opt.activations.estimator.ignore_nonfinite = f.ignore_nonfinite;
  opt.equalize = !f.no_equalize;
  opt.equalize_depthwise = !f.no_equalize_depthwise;
  opt.fold_affine = !f.no_fold_affine;
  opt.fuse_chains = !f.no_fuse_chains;
}

}  // namespace perch::cli
