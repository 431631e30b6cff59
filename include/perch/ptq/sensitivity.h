// perch/ptq/sensitivity.h — per-layer sensitivity to quantization, and automatic selective quantization.
//
// Sensitivity: for every weight layer (Conv/Gemm/MatMul weights) and every quantizable activation, two
// experiments per candidate configuration, measured against the float model on evaluation data:
//   "alone"       — only this layer quantized, everything else float;
//   "all-but"     — everything quantized with that configuration, only this layer float.
// Metrics: top-1 accuracy drop (points of accuracy, fp32 − quantized) and output SQNR in dB,
// 10·log10(Σ y_fp32² / Σ (y_q − y_fp32)²) over the logits. Without labels (models that are not image
// classifiers: a CTC text recognizer, a segmenter, a detector's score map) the first metric is agreement
// with the float model instead: the share of positions whose argmax along the class axis equals the
// float model's (see Fidelity), and the "drop" is 1 − agreement (the float model agrees with itself).
// Each variant reuses the cached values of the run it differs from (the float run for "alone", the
// all-quantized run for "all-but"): only the nodes downstream of the change execute.
//
// Selection (`select_config`): each weight layer climbs a ladder of configurations ordered by the
// preference (per-tensor: int8 per-tensor → int8 per-channel → fp32; small: int4 per-channel → int4
// per-group → int8 per-channel → fp32; fast: int8 per-channel → fp32), each quantized activation a ladder
// of two (quantized → float), or of three with act_fallback_bits (e.g. uint8 → uint16 → float: mixed
// precision, the middle rung's "alone" SQNR measured at those bits). All start on the first rung; while the drop on the selection split exceeds
// the budget, the layer or activation whose current rung hurts most on its own (lowest "alone" SQNR)
// moves up one rung. The result is then measured on a disjoint verification split; both numbers are
// reported. The ranking is measured only when the first rung misses the budget, on at most 1 000 images
// of the selection split. The metric is top-1 with labels, agreement with the float model without.
#pragma once

#include <limits>
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
  // `base` with this choice's bits, granularity and group size (its estimator is kept: a candidate is
  // quantized the way the user asked weights to be, e.g. --weight-estimator mse).
  WeightOptions options(const WeightOptions& base = {}) const;
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

// How unlabelled evaluation data is scored: argmax agreement with the float model along `class_axis`,
// counted per position (every index of the other non-batch axes: per time step of [N,T,C], per pixel of
// [N,C,H,W]). class_axis 0 (the batch axis, never a class axis) picks it: axis 1 for rank 2 ([N,K]) and
// rank 4 ([N,C,H,W]), the last axis for rank 3 ([N,T,C], as sequence models emit); negative counts from
// the end. When that axis has a single entry (a sigmoid score map
// [N,1,H,W]) there is no argmax: positions agree when both are above `threshold` or both are not, and a
// threshold must be given.
struct Fidelity {
  int64_t class_axis = 0;
  double threshold = std::numeric_limits<double>::quiet_NaN();
};

// The class axis `f` names for an output of shape `out` (rules above; errors name `out_name`).
int64_t class_axis_of(const Fidelity& f, const std::string& out_name, const Shape& out);

struct SensitivityReport {
  std::string metric = "top-1";  // "top-1" (labels) or "agreement" (with the float model)
  int64_t class_axis = 0;        // agreement: the axis resolved (threshold used when it has one entry)
  double threshold = std::numeric_limits<double>::quiet_NaN();
  int64_t positions = 0;         // agreement: positions scored per variant
  double fp32_accuracy = 0;      // top-1: fp32 accuracy; agreement: 1
  int64_t eval_images = 0;
  std::vector<std::string> configs;         // weight configurations measured
  std::vector<Metric> all_quantized;        // per configuration: every layer quantized with it
  std::vector<LayerSensitivity> layers;     // weights first (graph order), then activations
  int64_t variants = 0, node_runs = 0, node_runs_without_cache = 0;
  double seconds = 0;
};

// What to measure: everything (the `perch sensitivity` table), or only the "alone" variants (what
// selection ranks by).
struct SensitivityScope {
  bool activations = true;
  bool all_but = true;             // weights' all-but variants
  bool activation_all_but = true;  // activations' all-but variants (with `activations`)
};

// batch: images per evaluation batch; every value of the float and each all-quantized model is cached
// for a batch, so 0 picks it from memory: the most images (≤ 64) whose cache stays within 2 GiB,
// measured on one image.
SensitivityReport sensitivity(const Calibration& cal, const Dataset& eval, const PtqOptions& base,
                              const std::vector<WeightChoice>& candidates, int64_t batch = 0,
                              SensitivityScope scope = {}, const Fidelity& fidelity = {});

// kInteger: every weight layer stays int8 per-channel (a one-rung ladder); only activations climb — with
// act_fallback_bits, to wider integer grids before float.
enum class Preference { kPerTensor, kSmall, kFast, kInteger };
Preference parse_preference(const std::string& s);
const char* preference_name(Preference p);

struct Selection {
  std::map<std::string, WeightChoice> weights;  // node -> choice
  std::set<std::string> float_activations;
  std::map<std::string, int> activation_bits;  // activations at other bits than the base options' (PtqOptions)
  // Top-1 accuracy on each split, or (unlabelled data) agreement with the float model, fp32 = 1.
  std::string metric = "top-1";
  double fp32_select = 0, quant_select = 0;      // on the selection split
  double fp32_verify = 0, quant_verify = 0;      // on the verification split
  int steps = 0;
  double int4_byte_fraction = 0, per_tensor_layer_fraction = 0, weight_bytes = 0, fp32_weight_bytes = 0;
  std::vector<std::string> log;  // one line per decision
};

// act_fallback_bits: 0 (activations go from base.activations.bits straight to float) or the bits of a middle
// rung (more than base.activations.bits; 16 for ONNX Runtime's uint16 Q/DQ, opset 21).
Selection select_config(const Calibration& cal, const Dataset& select, const Dataset& verify, const PtqOptions& base,
                        Preference prefer, double max_drop, int64_t group_size = 16, const Fidelity& fidelity = {},
                        int act_fallback_bits = 0);

// Applies a selection to options (per-layer weights, float layers and activations).
PtqOptions apply_selection(const PtqOptions& base, const Selection& s);

}  // namespace perch::ptq
