// perch/train/distill.h — knowledge distillation from the float model: training without labels.
//
// QAT (perch/train/qat.h) normally needs labelled data. Many models users bring have no labels at hand, or no
// classification head at all (a text recognizer emits a softmax per time step, a detector a probability
// map). Distillation trains the fake-quant model to reproduce the float model's outputs on unlabelled
// images — the calibration set is enough. The teacher is the float model (perch's fp32 executor) run on
// the same, identically augmented batch as the student.
//
// Loss (per batch), with the teacher's logits t and the student's s:
//   softmax outputs: the model's first output is made by a Softmax whose groups are the trailing
//     dimensions (opset < 13: the input flattened from `axis` on; opset >= 13: `axis` is the last one). Both
//     models are cut before it, and the loss is the mean over the R rows (groups) of
//       KL(p || q) = sum_c p_c (log p_c - log q_c),  p = softmax(t), q = softmax(s)
//     (temperature 1; computed in double), dL/ds = (q - p) / R. "Agreement" counts the rows whose argmax
//     matches the teacher's.
//   other outputs: mean squared error over the E elements, L = sum (s - t)^2 / E, dL/ds = 2 (s - t) / E.
// Fake-quant nodes between the Softmax and the graph output are cut with it (their ranges keep their
// calibrated values; the export writes them as PTQ would).
#pragma once

#include <memory>
#include <string>

#include "perch/graph/ir.h"
#include "perch/runtime/executor.h"
#include "perch/train/trainer.h"

namespace perch::train {

// Where a model was cut: `softmax` when its first output was made by a Softmax (then the Softmax's axis
// attribute, normalized later against the logits' rank, and the model's opset, which give the row length).
struct OutputCut {
  bool softmax = false;
  int64_t axis = -1;
  int64_t opset = 13;
};

// Cuts `m` before the Softmax that makes its first output (through perch fake-quant nodes only): the
// Softmax's input becomes the only graph output and the nodes no longer needed are dropped (initializers
// stay). Returns {softmax = false}, leaving `m` alone, when the first output is not made that way.
OutputCut cut_before_output_softmax(graph::Model& m);

// The elements per softmax row of logits of shape `s` (the trailing group): throws when an opset >= 13
// Softmax does not normalize over the last axis.
int64_t softmax_row_length(const OutputCut& cut, const Shape& s);

// The distillation loss above between teacher logits t and student logits s (same shape). `softmax_rows`:
// KL per row of the trailing `row` elements (row must divide the element count), else MSE. grad (if given)
// receives dL/ds; agree (if given) the rows whose argmax match (softmax case).
double distillation_loss(const Tensor& t, const Tensor& s, bool softmax_rows, int64_t row, Tensor* grad,
                         int64_t* agree = nullptr);

// An Objective (trainer.h) comparing the trained model's first output with the first output of `teacher`, a
// float model cut as the student was (`cut`: what cut_before_output_softmax returned for both), run on the
// same batch by perch's fp32 executor.
Objective distillation_objective(graph::Model teacher, const OutputCut& cut);

// How close `model` is to `teacher` on `data`: both cut before an output Softmax as above, then the mean
// distillation loss (KL per row, or MSE) and, for softmax outputs, the fraction of rows whose argmax agree
// (-1 otherwise). Runs perch's fp32 executor (a QDQ model as its float simulation) in batches.
struct Fidelity {
  double loss = 0, agreement = -1;
  int64_t rows = 0;  // softmax rows (or elements, MSE) compared
};
Fidelity fidelity(graph::Model teacher, graph::Model model, const Dataset& data, int64_t batch = 16,
                  const std::string& label = "fidelity");

}  // namespace perch::train
