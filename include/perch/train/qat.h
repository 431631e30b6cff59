// perch/train/qat.h — quantization-aware training (QAT) on the ONNX graph, exported as QDQ.
//
// Flow: calibrate as PTQ does (ptq::calibrate: canonical model — BN folded, cross-layer equalization —,
// the activations PTQ would quantize and their initial ranges), insert fake-quant nodes exactly where the
// QDQ export will put QuantizeLinear/DequantizeLinear, fine-tune, then export with ptq::build_quantized
// using the trained weights and the final activation parameters — so the exported QDQ model computes what
// the fake-quant model computed while training (bias correction is off: training does its job).
//
// Fake-quant ops (domain "perch", only inside the training graph; conventions of quant/params.h):
//   FakeQuantWeight(w [, step] [, b, s_in])   weight spec of ptq::weight_spec (symmetric, narrow range, the
//       op's axis). Parameters from the current weights each step (max |w| per channel / qmax, the export's
//       estimator) — given the layer's bias b and input scale s_in (step then empty), with the export's raise of
//       channel scales whose bias would not fit int32 (ptq::raise_scales_for_bias) — or, with learned scales, the
//       step-size input (LSQ, Esser et al. 2020). Gradient: STE for w (quant/fake_quant.h), LSQ for the step.
//   FakeQuantAct(x, scale, zero_point, lo, hi)   activation spec of ptq::activation_spec (per-tensor,
//       asymmetric). Training: the range [lo, hi] follows the batches' min/max as an exponential moving
//       average, lo = m lo + (1 - m) min(x) (m = ema_momentum), and (scale, zero_point) are re-derived from it
//       with quant::choose_params; once ranges are frozen (after `freeze_ranges` of the steps) they stay. With
//       learned scales the scale is a parameter (LSQ gradient) and the zero point stays at its calibrated value.
//       Gradient to x: STE inside the clip range.
// BatchNormalization (Jacob et al. 2018 Sec. 3.2, Krishnamoorthi 2018 Sec. 3.2). The convolution always runs
// with the folded weights the deployment runs, fake-quantized. A Conv -> BN pair of the input model (the pairs
// graph::fold_batchnorm folds) is trained in two phases:
//   batch statistics (the first `freeze_bn` of the steps): parameters are the unfolded conv weight w and
//       BN's gamma, beta; the weight is folded with the RUNNING statistics, W = w gamma / sqrt(var + eps)
//       (BnFoldWeight), fake-quantized per channel, and the conv output is rescaled so that the network sees
//       BN with the BATCH statistics (BnBatchCorrection: sigma_running / sigma_batch, and the batch mean);
//       the running statistics follow the batches (BN's momentum).
//   frozen statistics (the rest): running statistics stop; the correction is the identity, so the graph is
//       exactly the folded conv (W, b = beta - mean gamma / sigma) the export writes.
// Evaluation always uses the frozen form. Formulas and gradients: qat.cpp. freeze_bn <= 0, or a model with
// BN already folded (as ../shared's models): the canonical folded weights are the parameters from the first
// step (frozen statistics throughout).
// A BatchNormalization that does not follow a Conv (e.g. after a ConvTranspose: it stays a float op of the QDQ
// model) follows the same schedule: batch statistics, with its running statistics following
// the batches, for the first `freeze_bn` of the steps, then the running statistics, frozen (from the first step
// when freeze_bn <= 0).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "perch/data/dataset.h"
#include "perch/graph/ir.h"
#include "perch/ptq/quantize.h"
#include "perch/train/distill.h"
#include "perch/train/trainer.h"

namespace perch::train {

struct QatOptions {
  ptq::PtqOptions ptq;           // weights, activations, equalize (bias_correction is ignored: off)
  int64_t calib_images = 1024;   // calibration sample from the training data
  TrainOptions train;            // epochs, batch, optimizer (default: SGD-free AdamW, small lr)
  bool learn_scales = false;     // LSQ step sizes for weights and activations
  float ema_momentum = 0.99f;    // activation range EMA
  float freeze_ranges = 0.8f;    // fraction of the steps after which activation ranges stop moving (<= 0: never move)
  // Fraction of the steps trained with BN batch statistics (models with unfolded Conv -> BN; at least one
  // step when > 0); <= 0: BN folded before training.
  float freeze_bn = 0.5f;
  // Train without labels: the float model is the teacher (perch/train/distill.h: KL of the output softmax per
  // row, or MSE of other outputs); train.objective is set by quantization_aware_training.
  bool distill = false;
  // Start from the biases of PTQ's bias correction (ptq.bias_correction; ptq.empirical_bias_correction adds the
  // empirical one) instead of the float model's: training starts at the bias-corrected PTQ model.
  bool init_ptq_biases = false;
};

struct QatResult {
  ptq::PtqResult exported;       // the QDQ model and its layer report
  graph::Model fake_quant;       // the training graph (with perch FakeQuant nodes) after training
  std::vector<EpochLog> logs;
  double ptq_accuracy = -1;      // QDQ export before training (same options, no bias correction), if evaluated
  double fq_accuracy = -1;       // the fake-quant model after training, if evaluated
  // With distill and evaluation data (labels not needed): closeness to the float model (distill.h's fidelity) of
  // the QDQ export before training (same scheme and initial biases) and after. rows == 0: not evaluated.
  Fidelity ptq_fidelity, qat_fidelity;
};

// The pieces, for callers that drive training themselves (benchmarks, custom loops):
struct QatGraph {
  ptq::Calibration calibration;                // what PTQ learned (canonical, equalized model)
  ptq::PtqOptions ptq;                         // options of the export (bias correction off)
  graph::Model model;                          // the training graph (perch FakeQuant nodes inserted)
  std::vector<std::string> params;             // what training updates
  std::map<std::string, std::string> act_state;  // quantized activation -> FakeQuantAct state prefix
  int bn_kept = 0;                             // Conv -> BN pairs trained with the batch-statistics phase
  int bn_standalone = 0;                       // other BatchNormalization nodes (their statistics on the same schedule)
};
QatGraph prepare_qat(const graph::Model& model, const Dataset& calib, const QatOptions& options);
// The QDQ model of the current state of `q` (weights, ranges, learned step sizes).
ptq::PtqResult export_qat(const QatGraph& q);
// The freezes, to call after optimizer step `step` (0-based) of `total`: activation ranges stop after
// freeze_ranges of the steps, BN statistics after freeze_bn of them (BnBatchCorrection nodes become the identity,
// standalone BatchNormalization nodes use their running statistics).
void qat_step_schedule(QatGraph& q, const QatOptions& o, int64_t step, int64_t total);

// `eval`: optional data: the top-1 accuracies above when labelled (evaluated before and after training), and
// with options.distill the fidelities (labels not needed). With options.distill, `train_data` needs no labels.
QatResult quantization_aware_training(const graph::Model& model, const Dataset& train_data, const QatOptions& options,
                                      const Dataset* eval = nullptr);

}  // namespace perch::train
