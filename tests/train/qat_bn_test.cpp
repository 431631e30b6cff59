// QAT with BatchNormalization kept (the batch-statistics phase, perch/train/qat.h): the early-phase forward
// against a double-precision evaluation of the formula, the running statistics' update and freeze, the
// export against the frozen fake-quant model, QAT vs PTQ on a BN model trained by perch, and models with BN
// already folded (../shared) keeping the folded path. Gradients: autograd_test.cpp (QatBatchNormComposition).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/quantize.h"
#include "perch/quant/estimators.h"
#include "perch/runtime/executor.h"
#include "perch/train/arch.h"
#include "perch/train/autograd.h"
#include "perch/train/distill.h"
#include "perch/train/qat.h"
#include "perch/train/trainer.h"
#include "test_util.h"

namespace perch::train {
namespace {

using graph::Model;
using graph::Node;

Tensor uniform(Shape s, std::mt19937& rng, float lo, float hi) {
  Tensor t(DType::kFloat32, std::move(s));
  std::uniform_real_distribution<float> u(lo, hi);
  for (auto& v : t.span<float>()) v = u(rng);
  return t;
}

// x [N, 3, 8, 8] -> Conv 3x3 (6 channels, bias) -> BatchNormalization -> Relu = the graph output.
Model conv_bn_relu(std::mt19937& rng) {
  Model m;
  m.set_opset(13);
  graph::ValueInfo in;
  in.name = "x", in.shape = {-1, 3, 8, 8}, in.has_shape = true;
  m.graph.inputs.push_back(in);
  auto& init = m.graph.initializers;
  init["w"] = uniform({6, 3, 3, 3}, rng, -0.5f, 0.5f);
  init["b"] = uniform({6}, rng, -0.3f, 0.3f);
  init["gamma"] = uniform({6}, rng, 0.5f, 1.5f);
  init["gamma"].data<float>()[2] = -0.8f;  // a negative scale
  init["beta"] = uniform({6}, rng, -0.5f, 0.5f);
  init["mean"] = uniform({6}, rng, -0.2f, 0.2f);
  init["var"] = uniform({6}, rng, 0.3f, 2.0f);
  Node conv;
  conv.name = "conv", conv.op_type = "Conv", conv.inputs = {"x", "w", "b"}, conv.outputs = {"c"};
  conv.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
  Node bn;
  bn.name = "bn", bn.op_type = "BatchNormalization", bn.inputs = {"c", "gamma", "beta", "mean", "var"}, bn.outputs = {"z"};
  bn.attrs["epsilon"] = 1e-3f;
  bn.attrs["momentum"] = 0.8f;
  Node relu;
  relu.name = "relu", relu.op_type = "Relu", relu.inputs = {"z"}, relu.outputs = {"y"};
  m.graph.nodes = {conv, bn, relu};
  graph::ValueInfo out;
  out.name = "y";
  m.graph.outputs.push_back(out);
  m.source = "conv_bn_relu";
  return m;
}

const Node& node_of_type(const Model& m, const std::string& op) {
  for (const auto& n : m.graph.nodes)
    if (n.op_type == op) return n;
  throw std::runtime_error("no " + op);
}

TEST(QatBatchNorm, BatchPhaseForwardMatchesDoubleReference) {
  std::mt19937 rng(11);
  const Model model = conv_bn_relu(rng);
  Dataset calib;
  calib.images = uniform({32, 3, 8, 8}, rng, -1.0f, 2.0f);
  calib.name = "random";
  QatOptions o;
  o.ptq.weights.bits = 4;  // per-channel (default), symmetric
  o.calib_images = 32;
  QatGraph q = prepare_qat(model, calib, o);
  ASSERT_EQ(q.bn_kept, 1);
  auto& g = q.model.graph;
  const Node& corr = node_of_type(q.model, "BnBatchCorrection");
  // A non-trivial equalization factor (this model has no layer pair to equalize), and fixed input ranges.
  Tensor& eq = g.initializers.at(corr.input(6));
  for (int64_t c = 0; c < 6; ++c) eq.data<float>()[c] = 0.5f + 0.3f * static_cast<float>(c);
  std::string act_scale, act_zp;
  for (auto& n : g.nodes)
    if (n.op_type == "FakeQuantAct") {
      n.attrs["frozen"] = int64_t{1};
      act_scale = n.input(1), act_zp = n.input(2);
    }
  ASSERT_FALSE(act_scale.empty());
  const Tensor mean0 = g.initializers.at(corr.input(4)).clone(), var0 = g.initializers.at(corr.input(5)).clone();

  const int64_t N = 5;
  const Tensor x = uniform({N, 3, 8, 8}, rng, -1.0f, 2.0f);
  Tape tape(q.model, q.params);
  const Tensor y = tape.forward({{"x", x}}, true).at("y").clone();

  // Reference. Fake quantization by perch's quant functions (tested in tests/quant); the fold, the
  // convolution and BN with batch statistics in double, in the unfolded (z) space of the input model.
  const auto& I = model.graph.initializers;
  const double eps = 1e-3, mom = 0.8;
  const quant::QuantSpec aspec = ptq::activation_spec(o.ptq.activations);
  const Tensor xq = quant::fake_quant(
      x, quant::make_params(aspec, x.shape(), {g.initializers.at(act_scale).data<float>()[0]},
                            {static_cast<int32_t>(std::lrint(g.initializers.at(act_zp).data<float>()[0]))}));
  std::vector<double> k(6);
  Tensor W(DType::kFloat32, {6, 3, 3, 3});
  for (int64_t c = 0; c < 6; ++c) {
    k[c] = I.at("gamma").data<float>()[c] / std::sqrt(I.at("var").data<float>()[c] + eps) / eq.data<float>()[c];
    for (int64_t j = 0; j < 27; ++j)
      W.data<float>()[c * 27 + j] = static_cast<float>(I.at("w").data<float>()[c * 27 + j] * k[c]);
  }
  quant::RangeEstimator est(ptq::weight_spec(o.ptq.weights, node_of_type(model, "Conv"), W));
  est.observe(W);
  const Tensor Wq = quant::fake_quant(W, est.params());
  double worst = 0, ymax = 0;
  for (int64_t c = 0; c < 6; ++c) {
    // z = conv(xq, Wq) / k + b: the conv output of the unfolded model with the deployment's weights.
    std::vector<double> z(static_cast<size_t>(N * 64));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < 8; ++h)
        for (int64_t w = 0; w < 8; ++w) {
          double s = 0;
          for (int64_t ci = 0; ci < 3; ++ci)
            for (int64_t kh = 0; kh < 3; ++kh)
              for (int64_t kw = 0; kw < 3; ++kw) {
                const int64_t ih = h + kh - 1, iw = w + kw - 1;
                if (ih < 0 || ih >= 8 || iw < 0 || iw >= 8) continue;
                s += static_cast<double>(xq.data<float>()[((n * 3 + ci) * 8 + ih) * 8 + iw]) *
                     Wq.data<float>()[((c * 3 + ci) * 3 + kh) * 3 + kw];
              }
          z[static_cast<size_t>((n * 8 + h) * 8 + w)] = s / k[c] + I.at("b").data<float>()[c];
        }
    double mu = 0, var = 0;
    for (double v : z) mu += v;
    mu /= static_cast<double>(z.size());
    for (double v : z) var += (v - mu) * (v - mu);
    var /= static_cast<double>(z.size());
    const double gamma = I.at("gamma").data<float>()[c], beta = I.at("beta").data<float>()[c], e = eq.data<float>()[c];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < 64; ++p) {
        const double ref = std::max(0.0, (gamma * (z[static_cast<size_t>(n * 64 + p)] - mu) / std::sqrt(var + eps) + beta) / e);
        const double got = y.data<float>()[(n * 6 + c) * 64 + p];
        worst = std::max(worst, std::fabs(got - ref));
        ymax = std::max(ymax, std::fabs(ref));
      }
    // Running statistics (the graph keeps the mean without the conv bias b).
    const double b = I.at("b").data<float>()[c];
    const double n_all = static_cast<double>(z.size());
    EXPECT_NEAR(g.initializers.at(corr.input(4)).data<float>()[c] + b, mom * (mean0.data<float>()[c] + b) + (1 - mom) * mu,
                1e-5 * (1 + std::fabs(mu)))
        << "channel " << c;
    EXPECT_NEAR(g.initializers.at(corr.input(5)).data<float>()[c],
                mom * var0.data<float>()[c] + (1 - mom) * var * n_all / (n_all - 1), 1e-5 * (1 + var))
        << "channel " << c;
  }
  // Float32 conv accumulation against double: a few ulps of the output range.
  EXPECT_LT(worst, 2e-6 * ymax) << "max |y - reference| " << worst << " (max |y| " << ymax << ")";
  EXPECT_GT(ymax, 0.1);
}

// Conv/BN model trained briefly by perch (BN kept): freeze, export equality, QAT vs PTQ.
TEST(QatBatchNorm, FreezeStopsStatisticsExportEqualsFakeQuantAndQatBeatsPtq) {
  const Dataset train = sample(load_dataset("fashion-mnist:train"), 2000, 5);
  const Dataset test = sample(load_dataset("fashion-mnist:test"), 500, 6);
  ArchOptions ao;
  ao.width_mult = 0.5f;
  Model m = build_arch("convnet", ao);
  {
    Tape tape(m, default_parameters(m));
    TrainOptions t;
    t.batch = 64;
    fit(tape, train, t);
  }
  // m keeps its BN nodes (inference form, trained running statistics).
  QatOptions o;
  o.ptq.weights.bits = 4;
  o.calib_images = 256;
  o.train.epochs = 1;
  o.train.batch = 64;
  o.train.max_steps = 16;
  o.train.optimizer.lr = 2e-4f;
  o.freeze_bn = 0.5f;
  QatGraph q = prepare_qat(m, sample(train, 256, 7), o);
  EXPECT_EQ(q.bn_kept, 3);
  std::vector<std::string> stats;
  for (const auto& n : q.model.graph.nodes)
    if (n.op_type == "BnBatchCorrection") stats.push_back(n.input(5)), stats.push_back(n.input(4));
  ASSERT_EQ(stats.size(), 6u);
  // Before training, the kept-BN fold reproduces the canonical (BN folded, equalized) weights PTQ starts
  // from: the equalization factors were recovered.
  {
    const auto& I = q.model.graph.initializers;
    int checked = 0;
    for (const auto& n : q.model.graph.nodes) {
      if (n.op_type != "BnFoldWeight") continue;  // (w, gamma, var, eq, in_scale) -> the canonical weight's name
      const Tensor &w = I.at(n.input(0)), &gamma = I.at(n.input(1)), &var = I.at(n.input(2)), &eq = I.at(n.input(3)),
                   &in_scale = I.at(n.input(4));
      const Tensor& canonical = q.calibration.model.graph.initializers.at(n.outputs[0]);
      ASSERT_EQ(w.shape(), canonical.shape()) << n.outputs[0];
      const int64_t per = w.numel() / w.dim(0), hw = per / w.dim(1);
      double d = 0, mx = 0;
      for (int64_t i = 0; i < w.numel(); ++i) {
        const int64_t c = i / per;
        const double ours = w.data<float>()[i] * static_cast<double>(gamma.data<float>()[c]) /
                            std::sqrt(static_cast<double>(var.data<float>()[c]) + 1e-5) / eq.data<float>()[c] *
                            in_scale.data<float>()[(i % per) / hw];
        d = std::max(d, std::fabs(ours - canonical.data<float>()[i]));
        mx = std::max(mx, std::fabs(static_cast<double>(canonical.data<float>()[i])));
      }
      EXPECT_LT(d, 1e-5 * mx) << n.outputs[0];
      ++checked;
    }
    EXPECT_EQ(checked, 3);
    EXPECT_GT(q.calibration.equalization.pairs, 0);
  }
  std::vector<std::vector<float>> seen;  // running variance of the first BN after each step
  auto& g = q.model.graph;
  Tape tape(q.model, q.params);
  TrainOptions to = o.train;
  to.on_step = [&](int64_t step, int64_t total) {
    std::vector<float> s;
    for (const auto& name : stats) {
      const Tensor& t = g.initializers.at(name);
      s.insert(s.end(), t.data<float>(), t.data<float>() + t.numel());
    }
    seen.push_back(s);
    qat_step_schedule(q, o, step, total);
  };
  fit(tape, train, to);
  ASSERT_EQ(seen.size(), 16u);
  // Steps 0..7 use batch statistics (the running ones move every step), steps 8..15 frozen ones.
  for (size_t i = 1; i < 8; ++i) EXPECT_NE(seen[i], seen[i - 1]) << "step " << i;
  for (size_t i = 8; i < 16; ++i) EXPECT_EQ(seen[i], seen[7]) << "step " << i;
  // The export computes exactly what the frozen fake-quant model computes.
  const ptq::PtqResult exported = export_qat(q);
  runtime::Executor qdq(exported.model);
  for (const auto& n : exported.model.graph.nodes) EXPECT_TRUE(n.domain.empty()) << n.describe();
  double worst = 0;
  for (int64_t b0 = 0; b0 < 256; b0 += 64) {
    const Tensor x = test.batch(b0, 64);
    const Tensor a = tape.forward({{"input", x}}, false).at("logits");
    const Tensor b = qdq.run1(x);
    for (int64_t i = 0; i < a.numel(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
  }
  EXPECT_EQ(worst, 0.0);
  // QAT (16 steps, half with batch statistics) against PTQ of the same scheme (W4 per-channel, A8).
  const double ptq_acc =
      ptq::evaluate(runtime::Executor(ptq::build_quantized(q.calibration, q.ptq).model), test, 256, "PTQ").accuracy();
  const double qat_acc = ptq::evaluate(qdq, test, 256, "QAT").accuracy();
  std::printf("W4A8 per-channel on a BN convnet (1 epoch, 2000 images): PTQ %.4f, QAT %.4f\n", ptq_acc, qat_acc);
  EXPECT_GE(qat_acc, ptq_acc);
}

// MobileNetV2 (residual Adds read the projection convs' BN outputs, which are quantized activations): every
// Conv -> BN pair is kept, and a few batch-statistics steps later the export still equals the fake-quant model.
TEST(QatBatchNorm, EveryMbv2PairIsKeptAndExportEqualsFakeQuant) {
  const Dataset train = sample(load_dataset("fashion-mnist:train"), 256, 8);
  ArchOptions ao;
  ao.width_mult = 0.5f;
  const Model m = build_arch("mbv2", ao);
  int64_t bns = 0;
  for (const auto& n : m.graph.nodes) bns += n.op_type == "BatchNormalization";
  QatOptions o;
  o.ptq.weights.bits = 4;
  o.calib_images = 64;
  o.freeze_bn = 1.0f;  // batch statistics on every step
  QatGraph q = prepare_qat(m, sample(train, 64, 9), o);
  EXPECT_EQ(q.bn_kept, bns);
  Tape tape(q.model, q.params);
  TrainOptions to;
  to.batch = 32;
  to.max_steps = 3;
  to.optimizer.lr = 1e-3f;
  fit(tape, train, to);
  const ptq::PtqResult exported = export_qat(q);
  runtime::Executor qdq(exported.model);
  const Tensor x = train.batch(0, 32);
  const Tensor a = tape.forward({{"input", x}}, false).at("logits");
  const Tensor b = qdq.run1(x);
  double worst = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
  EXPECT_EQ(worst, 0.0);
}

// A BatchNormalization that follows no Conv (DBNet's head: ConvTranspose -> BN -> Relu) stays a float op of the
// QDQ model. QAT runs it with batch statistics for the first freeze_bn of the steps (its running statistics
// follow the batches), then with the running ones, frozen — and from the first step when freeze_bn = 0, so that
// training sees the model the export writes. Gradients reach the layers before the ConvTranspose and a Resize.
TEST(QatBatchNorm, StandaloneBatchNormFollowsTheScheduleThroughConvTransposeAndResize) {
  std::mt19937 rng(11);
  // conv_bn_relu with a 2x2 stride-2 ConvTranspose between the Conv and the BN, and a 2x nearest Resize after.
  Model m = conv_bn_relu(rng);
  auto& init = m.graph.initializers;
  init["wt"] = uniform({6, 6, 2, 2}, rng, -0.5f, 0.5f);
  init["bt"] = uniform({6}, rng, -0.2f, 0.2f);
  init["roi"] = Tensor(DType::kFloat32, {0});
  init["scales"] = Tensor::from<float>({4}, std::vector<float>{1, 1, 2, 2});
  Node up;
  up.name = "up", up.op_type = "ConvTranspose", up.inputs = {"c", "wt", "bt"}, up.outputs = {"t"};
  up.attrs["strides"] = std::vector<int64_t>{2, 2};
  Node rs;
  rs.name = "resize", rs.op_type = "Resize", rs.inputs = {"y", "roi", "scales"}, rs.outputs = {"yr"};
  rs.attrs["mode"] = std::string("nearest");
  rs.attrs["coordinate_transformation_mode"] = std::string("asymmetric");
  rs.attrs["nearest_mode"] = std::string("floor");
  m.graph.nodes[1].inputs[0] = "t";  // the BN
  m.graph.nodes.insert(m.graph.nodes.begin() + 1, up);
  m.graph.nodes.push_back(rs);
  m.graph.outputs[0].name = "yr";
  Dataset data;
  data.images = uniform({64, 3, 8, 8}, rng, -1.0f, 1.0f);
  data.name = "random";
  for (const float freeze_bn : {0.5f, 0.0f}) {
    SCOPED_TRACE("freeze_bn " + std::to_string(freeze_bn));
    QatOptions o;
    o.ptq.weights.bits = 4;
    o.calib_images = 32;
    o.freeze_bn = freeze_bn;
    o.distill = true;
    QatGraph q = prepare_qat(m, data, o);
    EXPECT_EQ(q.bn_kept, 0);
    EXPECT_EQ(q.bn_standalone, 1);
    EXPECT_NE(std::find(q.params.begin(), q.params.end(), "wt"), q.params.end());
    auto& I = q.model.graph.initializers;
    const Tensor w0 = I.at(q.params.front()).clone(), wt0 = I.at("wt").clone();
    std::vector<std::vector<float>> seen;  // running variance after each step
    Tape tape(q.model, q.params);
    TrainOptions to;
    to.batch = 8;
    to.max_steps = 8;
    to.optimizer.lr = 1e-3f;
    to.objective = distillation_objective(q.calibration.model, OutputCut{});
    to.on_step = [&](int64_t step, int64_t total) {
      const Tensor& v = I.at("var");
      seen.emplace_back(v.data<float>(), v.data<float>() + v.numel());
      qat_step_schedule(q, o, step, total);
    };
    if (freeze_bn == 0.0f) {  // training forward = evaluation forward (running statistics) from the first step
      const Tensor x = data.batch(0, 8);
      const Tensor a = tape.forward({{"x", x}}, true).at("yr"), b = tape.forward({{"x", x}}, false).at("yr");
      for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << i;
    }
    fit(tape, data, to);
    ASSERT_EQ(seen.size(), 8u);
    const Tensor& var0 = init.at("var");
    const std::vector<float> initial(var0.data<float>(), var0.data<float>() + var0.numel());
    if (freeze_bn > 0) {
      EXPECT_NE(seen[0], initial);
      for (size_t i = 1; i < 4; ++i) EXPECT_NE(seen[i], seen[i - 1]) << "step " << i;
      for (size_t i = 4; i < 8; ++i) EXPECT_EQ(seen[i], seen[3]) << "step " << i;
    } else {
      for (size_t i = 0; i < 8; ++i) EXPECT_EQ(seen[i], initial) << "step " << i;
    }
    // The Conv before the ConvTranspose and the ConvTranspose itself were trained.
    EXPECT_NE(std::memcmp(w0.raw(), I.at(q.params.front()).raw(), w0.nbytes()), 0) << q.params.front();
    EXPECT_NE(std::memcmp(wt0.raw(), I.at("wt").raw(), wt0.nbytes()), 0);
    // The export computes exactly what the frozen fake-quant model computes (BN and ConvTranspose float).
    const ptq::PtqResult exported = export_qat(q);
    const Tensor x = data.batch(0, 16);
    const Tensor a = tape.forward({{"x", x}}, false).at("yr");
    const Tensor b = runtime::Executor(exported.model).run1(x);
    ASSERT_EQ(a.shape(), (Shape{16, 6, 32, 32}));
    double worst = 0;
    for (int64_t i = 0; i < a.numel(); ++i)
      worst = std::max(worst, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
    EXPECT_EQ(worst, 0.0);
  }
}

// ../shared's models have BN folded already: nothing to keep, the training graph is the folded one.
TEST(QatBatchNorm, FoldedModelsKeepTheFoldedPath) {
  std::mt19937 rng(3);
  Dataset calib;
  calib.images = uniform({16, 1, 28, 28}, rng, -0.8f, 2.0f);
  calib.name = "random";
  for (const char* name : {"fmnist_convnet.onnx", "fmnist_convnet_hard.onnx", "fmnist_mbv2.onnx"}) {
    PERCH_REQUIRE_SHARED_MODEL(path, name);
    const Model m = graph::load_model(path.string());
    QatOptions o;
    o.calib_images = 16;
    const QatGraph q = prepare_qat(m, calib, o);
    EXPECT_EQ(q.bn_kept, 0) << name;
    for (const auto& n : q.model.graph.nodes)
      EXPECT_TRUE(n.op_type.rfind("Bn", 0) != 0 && n.op_type != "BatchNormalization") << name << ": " << n.describe();
  }
}

}  // namespace
}  // namespace perch::train
