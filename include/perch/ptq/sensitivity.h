// perch/ptq/sensitivity.h — per-layer sensitivity to quantization, and automatic selective quantization.
//
// Sensitivity: for every weight layer (Conv/Gemm/MatMul weights) and every quantizable activation, two
// experiments per candidate configuration, measured against the float model on evaluation data:
//   "alone"       — only this layer quantized, everything else float;
//   "all-but"     — everything quantized with that configuration, only this layer float.
// Metrics: top-1 accuracy drop (points of accuracy, fp32 − quantized) and output SQNR in dB,
// 10·log10(Σ y_fp32² / Σ (y_q − y_fp32)²) over the logits. Each variant reuses the cached values of the
// run it differs from (the float run for "alone", the all-quantized run for "all-but"): only the nodes
// downstream of the change execute.
//
// Selection (`select_config`): each layer climbs a ladder of configurations ordered by the preference
// (per-tensor: int8 per-tensor → int8 per-channel → fp32; small: int4 per-channel → int4 per-group →
// int8 per-channel → fp32; fast: int8 per-channel → fp32). All layers start on the first rung; while
// the accuracy drop on the selection split exceeds the budget, the layer whose current rung hurts most
// on its own (lowest "alone" SQNR) moves up one rung. The result is then measured on a disjoint
// verification split; both numbers are reported. The ranking is measured only when the first rung misses
// the budget, on at most 1 000 images of the selection split.
#pragma once

#include <string>
#include <vector>

#include "perch/ptq/quantize.h"

namespace perch::ptq {

// A weight configuration candidate: "fp32", "int8 per-tensor", "int8 per-channel", "int4 per-channel",
// "int4 per-group" (group size from the options).
struct WeightChoice {
  bool is_float = false;
  int bits = 8;
  quant::Granularity granularity = quant::Granularity::kPerChannel;
  int64_t group_size = 0;
  std::string label() const;
  static WeightChoice parse(const std::string& label, int64_t default_group = 16);
  WeightOptions options() const;
  // Bytes of a weight tensor stored this way (values + scales).
  double bytes(const Shape& weight_shape, int64_t channel_axis, int64_t group_axis) const;
};

std::vector<WeightChoice> default_candidates(int64_t group_size = 16);

struct Metric {
  double accuracy_drop = 0;  // fp32 accuracy − this variant's, in [−1, 1] (×100 for points)
  double sqnr_db = 0;
};

struct LayerSensitivity {
  std::string name;        // node name (weights) or value name (activations)
  std::string kind;        // "weights" or "activation"
  std::string op_type;     // for weights
  Shape weight_shape;
  double spread = 0;       // per-channel range spread (weights)
  std::vector<std::string> configs;  // labels, parallel to the two vectors below
  std::vector<Metric> alone, all_but;
};

struct SensitivityReport {
  double fp32_accuracy = 0;
  int64_t eval_images = 0;
  std::vector<std::string> configs;         // weight configurations measured
  std::vector<Metric> all_quantized;        // per configuration: every layer quantized with it
  std::vector<LayerSensitivity> layers;     // weights first (graph order), then activations
  int64_t variants = 0, node_runs = 0, node_runs_without_cache = 0;
  double seconds = 0;
};

// What to measure: everything (the `perch sensitivity` table), or only the weights' "alone" variants
// (what selection ranks by).
struct SensitivityScope {
  bool activations = true;
  bool all_but = true;
};

SensitivityReport sensitivity(const Calibration& cal, const Dataset& eval, const PtqOptions& base,
                              const std::vector<WeightChoice>& candidates, int64_t batch = 64,
                              SensitivityScope scope = {});

enum class Preference { kPerTensor, kSmall, kFast };
Preference parse_preference(const std::string& s);
const char* preference_name(Preference p);

struct Selection {
  std::map<std::string, WeightChoice> weights;  // node -> choice
  std::set<std::string> float_activations;
  double fp32_select = 0, quant_select = 0;      // accuracy on the selection split
  double fp32_verify = 0, quant_verify = 0;      // accuracy on the verification split
  int steps = 0;
  double int4_byte_fraction = 0, per_tensor_layer_fraction = 0, weight_bytes = 0, fp32_weight_bytes = 0;
  std::vector<std::string> log;  // one line per decision
};

Selection select_config(const Calibration& cal, const Dataset& select, const Dataset& verify, const PtqOptions& base,
                        Preference prefer, double max_drop, int64_t group_size = 16);

// Applies a selection to options (per-layer weights, float layers and activations).
PtqOptions apply_selection(const PtqOptions& base, const Selection& s);

}  // namespace perch::ptq
