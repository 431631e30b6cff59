// Helpers the training tests share.
#pragma once

#include "perch/data/dataset.h"
#include "perch/graph/ir.h"
#include "perch/train/arch.h"
#include "perch/train/autograd.h"
#include "perch/train/trainer.h"

namespace perch::test {

// A MobileNetV2 at width 0.5 trained for one epoch (batch 64, perch's defaults) on `data`, BN folded:
// a small float model with realistic, not converged, weights.
inline graph::Model one_epoch_mbv2(const Dataset& data) {
  train::ArchOptions ao;
  ao.width_mult = 0.5f;
  graph::Model m = train::build_arch("mbv2", ao);
  train::Tape tape(m, train::default_parameters(m));
  train::TrainOptions o;
  o.epochs = 1;
  o.batch = 64;
  train::fit(tape, data, o);
  return train::export_inference(m);
}

}  // namespace perch::test
