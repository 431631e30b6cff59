// Distillation (perch/train/distill.h): the loss and its gradient against double-precision formulas and
// finite differences, the output cut on hand-built graphs, and label-free QAT on a Fashion-MNIST model: the
// exported QDQ model moves towards the float model on held-out images.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "perch/data/dataset.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"
#include "perch/train/arch.h"
#include "perch/train/autograd.h"
#include "perch/train/distill.h"
#include "perch/train/qat.h"
#include "perch/train/trainer.h"
#include "test_util.h"
#include "train_util.h"

namespace perch::train {
namespace {

Tensor random_tensor(Shape s, std::mt19937& rng, float lo, float hi) {
  Tensor t(DType::kFloat32, std::move(s));
  std::uniform_real_distribution<float> u(lo, hi);
  for (auto& v : t.span<float>()) v = u(rng);
  return t;
}

TEST(Distill, KlAndMseAgainstDoubleFormulasAndFiniteDifferences) {
  std::mt19937 rng(21);
  const Tensor t = random_tensor({2, 3, 5}, rng, -4.0f, 4.0f), s = random_tensor({2, 3, 5}, rng, -4.0f, 4.0f);
  for (bool kl : {true, false}) {
    Tensor g;
    int64_t agree = -1;
    const double loss = distillation_loss(t, s, kl, 5, &g, &agree);
    // Direct formula in double: mean over the 6 rows of sum_c p_c log(p_c / q_c), or the mean squared error.
    double expect = 0;
    int64_t same = 0;
    for (int64_t r = 0; r < 6; ++r) {
      const float *tr = t.data<float>() + r * 5, *sr = s.data<float>() + r * 5;
      if (!kl) {
        for (int c = 0; c < 5; ++c) expect += std::pow(static_cast<double>(sr[c]) - tr[c], 2) / 30.0;
        continue;
      }
      double zt = 0, zs = 0;
      for (int c = 0; c < 5; ++c) zt += std::exp(static_cast<double>(tr[c])), zs += std::exp(static_cast<double>(sr[c]));
      for (int c = 0; c < 5; ++c) {
        const double p = std::exp(static_cast<double>(tr[c])) / zt, q = std::exp(static_cast<double>(sr[c])) / zs;
        expect += p * std::log(p / q) / 6.0;
      }
      same += std::max_element(tr, tr + 5) - tr == std::max_element(sr, sr + 5) - sr;
    }
    EXPECT_NEAR(loss, expect, 1e-9 * std::max(1.0, expect)) << (kl ? "KL" : "MSE");
    if (kl) {
      EXPECT_EQ(agree, same);
    }
    for (int64_t i = 0; i < s.numel(); ++i) {
      Tensor p = s.clone(), m = s.clone();
      p.data<float>()[i] += 1e-2f;
      m.data<float>()[i] -= 1e-2f;
      const double num = (distillation_loss(t, p, kl, 5, nullptr) - distillation_loss(t, m, kl, 5, nullptr)) / 2e-2;
      EXPECT_NEAR(g.data<float>()[i], num, 2e-4) << (kl ? "KL" : "MSE") << " element " << i;
    }
  }
  // Identical logits: no loss, no gradient, every row agrees.
  Tensor g;
  int64_t agree = 0;
  EXPECT_NEAR(distillation_loss(t, t, true, 5, &g, &agree), 0.0, 1e-12);
  EXPECT_EQ(agree, 6);
  for (float v : g.span<float>()) EXPECT_NEAR(v, 0.0f, 1e-7f);
  test::expect_contains(test::perch_error([&] { distillation_loss(t, s.reshaped({6, 5}), true, 5, nullptr); }),
                        {"teacher output [2,3,5]", "student output [6,5]"});
}

// x -> MatMul -> [perch FakeQuantAct] -> Softmax -> output, plus a branch the logits do not need.
graph::Model softmax_model(int64_t opset, int64_t axis, bool fake_quant) {
  graph::Model m;
  m.set_opset(opset);
  m.source = "distill-test";
  graph::ValueInfo in;
  in.name = "x";
  m.graph.inputs.push_back(in);
  m.graph.initializers["w"] = Tensor::from<float>({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  auto add = [&](const std::string& op, std::vector<std::string> ins, const std::string& out, const std::string& domain = "") {
    graph::Node n;
    n.name = op + "_" + out, n.op_type = op, n.domain = domain, n.inputs = std::move(ins), n.outputs = {out};
    m.graph.nodes.push_back(n);
    return &m.graph.nodes.back();
  };
  add("MatMul", {"x", "w"}, "logits");
  add("Relu", {"x"}, "unused");
  std::string v = "logits";
  if (fake_quant) add("FakeQuantAct", {"logits", "s", "z", "lo", "hi"}, "logits_fq", "perch"), v = "logits_fq";
  add("Softmax", {v}, "probs")->attrs["axis"] = axis;
  graph::ValueInfo out;
  out.name = "probs";
  m.graph.outputs.push_back(out);
  return m;
}

TEST(Distill, CutsBeforeTheOutputSoftmaxThroughFakeQuantNodes) {
  for (bool fq : {false, true}) {
    graph::Model m = softmax_model(13, -1, fq);
    const OutputCut cut = cut_before_output_softmax(m);
    ASSERT_TRUE(cut.softmax) << fq;
    EXPECT_EQ(cut.axis, -1);
    EXPECT_EQ(cut.opset, 13);
    ASSERT_EQ(m.graph.outputs.size(), 1u);
    EXPECT_EQ(m.graph.outputs[0].name, fq ? "logits_fq" : "logits");
    std::vector<std::string> ops;
    for (const auto& n : m.graph.nodes) ops.push_back(n.op_type);
    EXPECT_EQ(ops, fq ? std::vector<std::string>({"MatMul", "FakeQuantAct"}) : std::vector<std::string>({"MatMul"}));
    EXPECT_TRUE(m.graph.initializers.count("w"));
    EXPECT_EQ(softmax_row_length(cut, {4, 7, 9}), 9);
  }
  // Before opset 13 the group is everything from `axis` on; from 13 only the last axis is supported.
  graph::Model old = softmax_model(11, 1, false);
  const OutputCut c11 = cut_before_output_softmax(old);
  ASSERT_TRUE(c11.softmax);
  EXPECT_EQ(softmax_row_length(c11, {4, 7, 9}), 63);
  graph::Model mid = softmax_model(13, 1, false);
  const OutputCut c13 = cut_before_output_softmax(mid);
  test::expect_contains(test::perch_error([&] { softmax_row_length(c13, {4, 7, 9}); }), {"axis 1", "last axis"});
  // No Softmax at the output: untouched.
  graph::Model plain = softmax_model(13, -1, false);
  plain.graph.outputs[0].name = "unused";
  const size_t nodes = plain.graph.nodes.size();
  EXPECT_FALSE(cut_before_output_softmax(plain).softmax);
  EXPECT_EQ(plain.graph.nodes.size(), nodes);
  EXPECT_EQ(plain.graph.outputs[0].name, "unused");
}

// Mean KL(softmax(fp32) || softmax(q)) per image and argmax agreement of model q with the float model.
struct HandFidelity {
  double kl = 0, agreement = 0;
};
// `q` ends in the Softmax the float model was given; it is compared before it.
HandFidelity hand_fidelity(const graph::Model& fp32, graph::Model q, const Dataset& data) {
  EXPECT_TRUE(cut_before_output_softmax(q).softmax);
  const runtime::Executor a(fp32), b(std::move(q));
  HandFidelity f;
  const int64_t n = data.size();
  int64_t agree = 0;
  for (int64_t b0 = 0; b0 < n; b0 += 100) {
    const Tensor x = data.batch(b0, std::min<int64_t>(100, n - b0));
    const Tensor ta = a.run1(x), tb = b.run1(x);
    int64_t same = 0;
    f.kl += distillation_loss(ta, tb, true, ta.dim(1), nullptr, &same) * static_cast<double>(x.dim(0));
    agree += same;
  }
  f.kl /= static_cast<double>(n);
  f.agreement = static_cast<double>(agree) / static_cast<double>(n);
  return f;
}

// A small MobileNetV2 trained for one epoch on 3000 Fashion-MNIST images (once per test binary).
const graph::Model& trained_mbv2() {
  static const graph::Model fp32 = test::one_epoch_mbv2(sample(load_dataset("fashion-mnist:train"), 3000, 7));
  return fp32;
}

// QatOptions::init_ptq_biases: before any step the exported model is the bias-corrected PTQ model.
TEST(Qat, PtqBiasInitStartsFromTheBiasCorrectedPtqModel) {
  const graph::Model& fp32 = trained_mbv2();
  const Dataset calib = sample(load_dataset("fashion-mnist:train"), 256, 8);
  const Dataset test = sample(load_dataset("fashion-mnist:test"), 200, 9);
  QatOptions q;
  q.ptq.weights.bits = 4;
  q.freeze_bn = 0;
  ptq::PtqOptions p = q.ptq;
  p.bias_correction = true;
  const runtime::Executor ptq_bc(ptq::quantize_model(fp32, calib, p).model);
  for (bool init : {false, true}) {
    q.init_ptq_biases = init;
    const runtime::Executor qat0(export_qat(prepare_qat(fp32, calib, q)).model);
    const Tensor x = test.batch(0, 200);
    const Tensor a = qat0.run1(x), b = ptq_bc.run1(x);
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < a.numel(); ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(b.data<float>()[i])));
    }
    // Same weights, ranges and int32 biases: equal up to float summation order. Without the init the biases
    // differ by the correction (W4 weights: a visible one).
    if (init) {
      EXPECT_LT(worst, 1e-5 * scale);
    } else {
      EXPECT_GT(worst, 1e-3 * scale);
    }
  }
}

TEST(Qat, DistillationTrainsWithoutLabelsTowardsTheFloatModel) {
  Dataset train = sample(load_dataset("fashion-mnist:train"), 1024, 5);
  const Dataset test = sample(load_dataset("fashion-mnist:test"), 500, 6);
  const graph::Model& fp32 = trained_mbv2();
  // The classifier with a Softmax on its logits, so distillation takes the KL path.
  graph::Model probs = fp32;
  {
    graph::Node sm;
    sm.name = "softmax", sm.op_type = "Softmax", sm.inputs = {fp32.graph.outputs[0].name}, sm.outputs = {"probs"};
    sm.attrs["axis"] = int64_t{-1};
    probs.graph.nodes.push_back(sm);
    probs.graph.outputs[0].name = "probs";
  }
  train.labels.clear();  // distillation needs none
  QatOptions q;
  q.ptq.weights.bits = 4;  // a scheme with a visible loss to recover
  q.calib_images = 256;
  q.freeze_bn = 0;
  q.train.epochs = 2;
  q.train.batch = 64;
  q.train.optimizer.lr = 2e-4f;
  q.train.flip = false;
  test::expect_contains(test::perch_error([&] { quantization_aware_training(probs, train, q); }), {"labelled", "--distill"});
  q.distill = true;
  // Before training: the same scheme exported from the calibrated, untrained graph.
  const HandFidelity before = hand_fidelity(fp32, export_qat(prepare_qat(probs, sample(train, 256, q.train.seed), q)).model, test);
  const QatResult r = quantization_aware_training(probs, train, q, &test);
  const HandFidelity after = hand_fidelity(fp32, r.exported.model, test);
  // The fidelities QAT reports (train::fidelity, what perch qat prints) are these.
  EXPECT_NEAR(r.ptq_fidelity.loss, before.kl, 1e-6 * before.kl);
  EXPECT_NEAR(r.ptq_fidelity.agreement, before.agreement, 1e-12);
  EXPECT_NEAR(r.qat_fidelity.loss, after.kl, 1e-6 * after.kl);
  EXPECT_NEAR(r.qat_fidelity.agreement, after.agreement, 1e-12);
  EXPECT_EQ(r.qat_fidelity.rows, test.size());
  std::printf("W4A8 per-channel vs fp32 on 500 held-out images: KL %.4f -> %.4f, agreement %.3f -> %.3f; "
              "training loss %.4f -> %.4f\n", before.kl, after.kl, before.agreement, after.agreement, r.logs[0].loss,
              r.logs[1].loss);
  ASSERT_EQ(r.logs.size(), 2u);
  EXPECT_LT(r.logs[1].loss, r.logs[0].loss);
  EXPECT_LT(after.kl, 0.7 * before.kl);
  EXPECT_GE(after.agreement, before.agreement);
}

}  // namespace
}  // namespace perch::train
