// perch/ptq/quantize.h — post-training quantization: float ONNX model + calibration data -> QDQ model.
//
// Scheme (docs/QUANTIZATION.md):
// - Weights of Conv, Gemm and MatMul: symmetric, signed, narrow range ([-127, 127] at 8 bits,
//   [-7, 7] at 4), stored as int8 initializers behind a DequantizeLinear. Granularity per-tensor,
//   per-channel along the op's output-channel axis (Conv: 0 — depthwise and grouped included —,
//   Gemm: 0 if transB else 1, MatMul: last) or per-group (groups of G along the input-channel axis:
//   Conv 1, Gemm 1 if transB else 0, MatMul: second-to-last; written as opset-21 blocked DQ).
// - Biases: int32, scale = input scale * weight scale (per output channel), zero point 0.
// - Activations: per-tensor, asymmetric uint8 by default (int8 optional), ranges from a RangeEstimator
//   fed by running the float model on the calibration set. Every float activation that feeds a node gets
//   a QuantizeLinear -> DequantizeLinear pair, except a Conv/Gemm/MatMul/Add output whose only reader
//   is a Relu/Clip (fused: the activation's output is quantized instead) and the graph outputs (kept
//   float; the last layer's int32 accumulator is dequantized directly). Ops that only move values
//   (MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity) reuse their input's parameters.
// - Opset: raised to 13 when per-channel axes are needed, 21 for per-group, never a silent fallback.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "perch/data/dataset.h"
#include "perch/ptq/equalize.h"
#include "perch/graph/ir.h"
#include "perch/quant/estimators.h"
#include "perch/quant/params.h"

namespace perch::ptq {

struct WeightOptions {
  quant::Granularity granularity = quant::Granularity::kPerChannel;
  int64_t group_size = 0;  // per-group
  int bits = 8;
  quant::EstimatorOptions estimator;  // kMinMax by default (the exact max|w|)
};

struct ActivationOptions {
  int bits = 8;
  bool is_signed = false;  // uint8 (ONNX Runtime's default) or int8
  quant::EstimatorOptions estimator;
};

// Adaptive rounding of weights (AdaRound: Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
// Quantization"; ptq/adaround.h has the objective). Defaults as AIMET's, except the step count and learning rate:
// perch's objective is full-batch (the layer input's second-moment matrix), not minibatches of images.
struct AdaRoundOptions {
  int64_t iterations = 1000;    // Adam steps per layer
  double learning_rate = 1e-2;  // Adam
  double regularization = 0.01;  // lambda of the rounding regularizer
  double beta_start = 20.0, beta_end = 2.0;  // regularizer exponent, annealed linearly after the warm start
  double warm_start = 0.2;      // fraction of the steps without the regularizer
  int64_t samples = 0;          // calibration images for the second moments; 0: all of them
  // Then coordinate descent on the integers (each weight to its other grid point while that lowers the layer's
  // output error; ptq/adaround.h), at most this many sweeps; 0: AdaRound's result as it is.
  int64_t polish_sweeps = 16;
  // Reconstruct the float layer's output on the float input from the *quantized* model's input (AIMET's form):
  // the weights then also absorb the error of the layer's input quantization. Off: float inputs on both sides.
  bool quantized_inputs = false;
};

// Activation ranges refined by the model's output error (search_activation_ranges(), ptq/range_search.h).
struct RangeSearchOptions {
  int64_t images = 64;  // the first N images of the calibration data the error is measured on (all if fewer)
  int sweeps = 1;       // passes over the activations
  // Candidate ends: hi · f, and lo · f when lo < 0, for each f.
  std::vector<double> factors = {0.7, 0.85, 1.15, 1.4};
  double min_gain = 1e-3;  // a candidate replaces the current grid when its error is below (1 - min_gain) × the current
  int64_t class_axis = 0;  // of the first output, as perch/ptq/sensitivity.h's Fidelity (0: the default rule)
};

struct PtqOptions {
  WeightOptions weights;
  ActivationOptions activations;
  int64_t batch = 64;                   // calibration batch size (cache-sized activations)
  bool quantize_outputs = false;        // also QDQ the graph outputs
  bool equalize = true;                 // cross-layer equalization first (ptq/equalize.h)
  // With equalize: also stretch the channels of depthwise convolutions' inputs over their per-tensor range
  // (equalize_depthwise_inputs, ptq/equalize.h; one extra float pass over the calibration set where a model
  // has such pairs). No effect with per-tensor weights.
  bool equalize_depthwise = true;
  bool bias_correction = true;          // subtract the mean output shift of weight rounding (analytic)
  // With bias_correction: also correct_biases_empirically() on the calibration images before building
  // (quantize_model and `perch quantize` do; calibrate() / build_quantized() alone do not). Off by default:
  // at 8 bits on the Fashion-MNIST models it changes top-1 by noise only (-0.08 to +0.14 pt); it pays at 4-bit
  // weights and on the OCR models (docs/QUANTIZATION.md).
  bool empirical_bias_correction = false;
  // Conv -> Mul/Add by per-channel constants folded into the conv (graph::fold_conv_affine) before calibration.
  bool fold_affine = true;
  // Elementwise chains (a unary function of one activation written as several ops with scalar constants, e.g.
  // hardswish as x * Clip(x + 3, 0, 6) / 6, or a scale/shift after it): Q/DQ only on the chain's input and
  // where it leaves the chain, not on its inside values (see calibrate()). Also the inner values of layer / RMS
  // norms written out as ReduceMean / Sub / Pow / Sqrt / Div (their statistics and intermediate rows).
  bool fuse_chains = true;
  std::set<std::string> float_nodes;    // node names whose weights stay float
  std::map<std::string, WeightOptions> layer_weights;  // per-node override of `weights` (selective quantization)
  std::set<std::string> float_activations;             // activation values left float
  // Activation value -> bits (2..8 or 16) instead of activations.bits: mixed precision, e.g. 16-bit activations
  // where 8 bits cost too much. More bits than activations.bits: the grid spans the values calibration saw
  // (Calibration::activation_extremes, with 0), not the estimator's clipped range — clipping trades range for
  // resolution at the calibrated bits, and a finer grid has resolution to spare (measured on PaddleOCR rec,
  // docs/SELECTION.md). Fewer bits, or no recorded extremes: the calibrated grid's span [s (qmin - zp),
  // s (qmax - zp)]. Parameters from choose_params() for that span. Applies to the value's whole sharing group
  // (Calibration::shares: pass-through ops keep one grid); two different bits within a group, or a name that is
  // not a calibrated activation, are errors. float_activations take precedence (sensitivity's variants leave
  // all but one activation float over these bits). Bits above 8 write opset 21.
  std::map<std::string, int> activation_bits;
  // Weight initializer -> parameters to use instead of the estimator's (QAT's learned step sizes). Must have
  // the layout `weights` / `layer_weights` give that weight.
  std::map<std::string, quant::QuantParams> weight_params;
  // correct_biases_empirically(): how many images of its data it uses, all in one batch; 0 = automatic (see
  // empirical_bias_images()).
  int64_t empirical_bias_samples = 0;
  // Round weights adaptively (round_weights_adaptively(), ptq/adaround.h) before the bias corrections; quantize_model
  // and `perch quantize --adaround` do, calibrate() / build_quantized() alone do not.
  bool adaround = false;
  AdaRoundOptions adaround_options;
  // Refine the calibrated activation ranges against the output error (search_activation_ranges(),
  // ptq/range_search.h): quantize_model and `perch quantize --search-ranges` do it after the empirical bias
  // correction, which then runs again; calibrate() / build_quantized() alone do not.
  bool search_ranges = false;
  RangeSearchOptions range_search;
};

// What happened to one weight layer.
struct LayerReport {
  std::string node, op_type, weight;
  Shape weight_shape;
  int64_t axis = 0;            // weight axis of the parameters
  std::string granularity;     // "per-channel", "per-tensor", "per-group:G", "float"
  int bits = 8;
  double spread = 0;           // max channel range / min channel range (output channels)
  double weight_sqnr_db = 0;   // 10 log10(|w|^2 / |w - fq(w)|^2)
  int64_t bias_clamped = 0;    // int32 bias values clamped
  int64_t weight_scales_raised = 0;  // weight channels whose scale was raised so their bias fits int32
  double bias_correction_max = 0;  // largest |mean output shift| removed from the bias (analytic + empirical)
  double empirical_correction_max = 0;  // largest |E[y_float] - E[y_sim]| of correct_biases_empirically()
  // A float layer (granularity "float") that ONNX Runtime does not run float: from graph optimization level
  // basic up, its WeightBiasQuantization pass rewrites a Conv/Gemm whose input comes from a per-tensor
  // DequantizeLinear and whose output goes (through Relu/Clip only, no branch) to a QuantizeLinear with a
  // float weight initializer to symmetric per-tensor int8 weights (and int32 bias). See
  // ort_requantizes_float_weight().
  bool ort_requantized = false;
  bool adaptive_rounding = false;  // integers chosen by round_weights_adaptively(), not rounded to nearest
};

struct PtqResult {
  graph::Model model;
  std::vector<LayerReport> layers;
  int64_t activations_quantized = 0;
  int64_t nonfinite_values = 0;  // NaN/Inf activation values skipped (only with estimator.ignore_nonfinite)
  int64_t calibration_images = 0;
  double calibration_seconds = 0;
  double total_seconds = 0;
  std::string canonicalize_summary;
  EqualizeReport equalization;
};

// True when ONNX Runtime's WeightBiasQuantization pass (graph optimization level basic and up, ORT >= 1.21)
// would quantize the float weight of node `ni` of `g` to symmetric per-tensor int8 (see
// LayerReport::ort_requantized): a Conv/ConvTranspose/Gemm with a float32 weight initializer, input 0 made
// by a DequantizeLinear with a scalar scale, a 1-D initializer bias if any, and an output path of single
// consumers through Relu/Clip only that ends in a QuantizeLinear.
bool ort_requantizes_float_weight(const graph::Graph& g, size_t ni);

// Quantizes `model` (not modified). `calib` feeds the model's inputs: the first through its images, others by
// name (Dataset::inputs; a model with several inputs, check_feeds in ptq/evaluate.h).
// = build_quantized(calibrate(model, calib, options), options), with correct_biases_empirically(cal, calib,
// options) in between when options.bias_correction and options.empirical_bias_correction.
PtqResult quantize_model(const graph::Model& model, const Dataset& calib, const PtqOptions& options);

// What calibration learns, independent of the per-layer weight choices: the canonical (equalized) model,
// the activations that can be quantized and their parameters, and the statistics bias correction needs
// for any weight choice. Calibrate once, then build many candidate models cheaply (selective
// quantization, sensitivity analysis).
struct Calibration {
  graph::Model model;
  std::vector<std::string> targets;                  // quantizable activations, graph order
  std::map<std::string, std::string> shares;         // pass-through value -> value whose parameters it reuses
  // The value whose grid `v` uses: v itself, or the end of its chain of `shares` (the root of its sharing group).
  std::string share_root(std::string v) const {
    while (shares.count(v)) v = shares.at(v);
    return v;
  }
  std::map<std::string, quant::QuantParams> activation_params;
  // Value -> the smallest and largest finite value calibration saw (after the chain-root clamps): the range of a
  // grid wider than the calibrated one (PtqOptions::activation_bits); a calibration made without values has none.
  std::map<std::string, std::pair<float, float>> activation_extremes;
  // Weight node -> (E[patch] per group, concatenated (Conv) or E[x] (Gemm), groups).
  std::map<std::string, std::pair<std::vector<double>, int64_t>> input_means;
  // Weight node -> per-output-channel value added to its bias after the analytic correction: what
  // correct_biases_empirically() measured (empty until it runs).
  std::map<std::string, std::vector<double>> output_shift;
  // Weight initializer -> integers round_weights_adaptively() chose, and the parameters they are for (empty until
  // it runs). build_quantized() uses them only when it derives the same parameters for that weight.
  struct RoundedWeight {
    quant::QuantParams params;
    Tensor q;
  };
  std::map<std::string, RoundedWeight> rounded_weights;
  std::string canonicalize_summary;
  EqualizeReport equalization;
  int64_t images = 0, nonfinite_values = 0;
  double seconds = 0, total_seconds = 0;
};

// The activations build_quantized() quantizes (calibrated targets minus options.float_activations) and their
// parameters (at options.activation_bits where given).
std::map<std::string, quant::QuantParams> quantized_activation_params(const Calibration& cal, const PtqOptions& options);
// The parameters build_quantized() gives the float weight `w` of Conv/Gemm/MatMul node `n` of `m` under `wo`:
// options.weight_params' if given, else the estimator's, with per-channel scales raised where a channel's
// int32 bias would not fit (counted in *scales_raised if not null). `aparams`: quantized_activation_params().
quant::QuantParams layer_weight_params(const graph::Model& m, const graph::Node& n, const Tensor& w,
                                       const WeightOptions& wo, const PtqOptions& options,
                                       const std::map<std::string, quant::QuantParams>& aparams,
                                       int64_t* scales_raised);
// The raise above, on its own: for per-channel `p` (one scale per bias value), every channel whose bias b[c] would
// not fit int32 at the scale s_in * p.scale[c] (with 2x room for bias correction) gets the scale |b[c]| / (s_in 2^30),
// unless that exceeds the largest channel scale. Returns how many were raised. QAT's fake-quant nodes apply it too
// (perch/train/qat.h), so training sees the weights and biases the export writes.
int64_t raise_scales_for_bias(quant::QuantParams& p, const float* bias, int64_t count, double s_in);
bool same_params(const quant::QuantParams& a, const quant::QuantParams& b);
// 10 log10(sum w^2 / sum (w - fq)^2) over all elements (+inf when fq == w): a weight's SQNR after fake-quantization.
double sqnr_db(const Tensor& w, const Tensor& fq);
// Raises `m`'s default-domain opset to `target` (build_quantized does: 13 for per-channel axes, 21 for per-group and
// 16-bit, else at least 10), converting every op whose form changed between the two versions so that the model
// computes exactly what it did (attributes that became inputs, Softmax's 2-D coercion, Upsample and Resize-10 to
// Resize's later form, dropped attributes at their default); an op it cannot convert is refused by name.
void raise_opset(graph::Model& m, int64_t target);

// Uses options.activations, equalize, equalize_depthwise (skipped when options.weights is per-tensor; never by
// layer_weights, so that a configuration chosen after calibrating rebuilds the same model), bias_correction, batch,
// quantize_outputs.
Calibration calibrate(const graph::Model& model, const Dataset& calib, const PtqOptions& options);
// Uses options.weights, layer_weights, float_nodes, float_activations, activation_bits, activations (bits),
// bias_correction.
PtqResult build_quantized(const Calibration& calibration, const PtqOptions& options);

// Empirical bias correction (src/ptq/empirical_bc.cpp has the formula): runs the float model and the
// simulated quantized model build_quantized(cal, options) makes on the first options.empirical_bias_samples
// images of `data`, layer by layer in graph order, and sets cal.output_shift so that every quantized Conv /
// Gemm output has the float model's per-channel mean on those images, given the layers before it corrected.
// Covers the mean shift of activation quantization (clipping, rounding through nonlinear ops) that the
// analytic correction does not. Build with the same options afterwards.
struct EmpiricalBiasReport {
  int64_t layers = 0, images = 0;
  double max_shift = 0;  // largest |delta_c|
  double seconds = 0;
};
EmpiricalBiasReport correct_biases_empirically(Calibration& cal, const Dataset& data, const PtqOptions& options);
// Images correct_biases_empirically() uses out of `available` of `image_bytes` each: `samples` if positive
// (at most `available`), else up to 256 and no more than fit in 64 MiB of input (at least 1) — the live
// activations of the one batch are a model-dependent multiple of that.
int64_t empirical_bias_images(int64_t available, int64_t image_bytes, int64_t samples);

// The quantization spec perch uses for activations with options `o` (per-tensor, asymmetric), and for the
// weight `w` of Conv/Gemm/MatMul node `n` (symmetric, narrow range, the node's axis).
quant::QuantSpec activation_spec(const ActivationOptions& o);
quant::QuantSpec weight_spec(const WeightOptions& o, const graph::Node& n, const Tensor& w);

// The ops whose initializer weight (input 1) perch quantizes: Conv, ConvTranspose, Gemm, MatMul.
bool quantizes_weights(const std::string& op_type);
// Output-channel axis of a weight (see above) for such a node `n` with weight rank `rank`. ConvTranspose's weight
// is [C_in, C_out / group, k...]: axis 1 when group is 1; otherwise 0, which for a depthwise one (C_out / group = 1)
// is its output channel too, and for other grouped ones the input channel (their bias then stays float).
int64_t weight_channel_axis(const graph::Node& n, int64_t rank);
// The node's output channels as its weight `w` gives them: Conv dim 0, ConvTranspose dim 1 times group, Gemm 0 or 1 by
// transB, MatMul the last dim.
int64_t weight_output_channels(const graph::Node& n, const Tensor& w);
// The input-channel axis per-group weights block along: Conv 1, ConvTranspose 0, Gemm 0 or 1 by transB, MatMul K.
int64_t weight_group_axis(const graph::Node& n, int64_t rank);
// Whether the node's per-channel weight scales are one per output channel, in their order — what an int32 bias at
// s_in * s_w[c] needs: Conv, Gemm, ConvTranspose with group 1 or depthwise; not MatMul (no bias). (Per-tensor
// weights always give one; per-group ones keep a float bias.)
bool weight_scales_follow_outputs(const graph::Node& n, const Tensor& w);
// Per-output-channel range spread of a weight: max(max_c - min_c) / min(max_c - min_c) over channels
// with nonzero range (infinite if a channel is all-equal and another is not).
double channel_spread(const Tensor& w, int64_t axis);

}  // namespace perch::ptq
