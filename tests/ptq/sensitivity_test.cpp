// Sensitivity analysis and selective quantization on a small CNN, against independent full evaluations.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "perch/ptq/report.h"
#include "perch/ptq/sensitivity.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

using namespace perch;

namespace {

// Random inputs labelled with the float model's own predictions (so fp32 accuracy is 1).
Dataset labelled(const graph::Model& m, int64_t n, uint32_t seed) {
  Dataset d = test::tiny_cnn_inputs(n, seed);
  const Tensor y = runtime::Executor(m).run1(d.images);
  for (int64_t i = 0; i < n; ++i) {
    const float* r = y.data<float>() + i * 3;
    d.labels.push_back(std::max_element(r, r + 3) - r);
  }
  return d;
}

struct Direct {
  double accuracy, sqnr;
};

// The metric of one variant computed the plain way: build the model, run it whole.
Direct evaluate_directly(const ptq::Calibration& cal, const ptq::PtqOptions& o, const Dataset& d) {
  const Tensor ref = runtime::Executor(cal.model).run1(d.images);
  const Tensor y = runtime::Executor(ptq::build_quantized(cal, o).model).run1(d.images);
  int64_t correct = 0;
  double r2 = 0, e2 = 0;
  for (int64_t i = 0; i < d.size(); ++i) {
    const float* r = y.data<float>() + i * 3;
    correct += (std::max_element(r, r + 3) - r) == d.labels[i];
    for (int c = 0; c < 3; ++c) {
      const double a = ref.data<float>()[i * 3 + c], e = y.data<float>()[i * 3 + c] - a;
      r2 += a * a, e2 += e * e;
    }
  }
  return {static_cast<double>(correct) / static_cast<double>(d.size()), e2 == 0 ? 200.0 : 10 * std::log10(r2 / e2)};
}

// A layer's two variants as sensitivity() defines them: "alone" quantizes only it (weights with `w`),
// "all-but" everything except it (an activation's with `act_weights`, the int8 per-channel candidate).
std::pair<ptq::PtqOptions, ptq::PtqOptions> variant_options(const ptq::PtqOptions& base, const ptq::LayerSensitivity& l,
                                                            const ptq::WeightOptions& w, const ptq::WeightOptions& act_weights,
                                                            const std::set<std::string>& weights,
                                                            const std::set<std::string>& acts) {
  ptq::PtqOptions alone = base, all_but = base;
  alone.float_nodes = weights;
  alone.float_activations = acts;
  if (l.kind == "weights") {
    alone.weights = all_but.weights = w;
    alone.float_nodes.erase(l.name);
    all_but.float_nodes = {l.name};
  } else {
    alone.float_activations.erase(l.name);
    all_but.weights = act_weights;
    all_but.float_activations = {l.name};
  }
  return {alone, all_but};
}

TEST(Sensitivity, CachedPrefixesGiveTheSameNumbersAsWholeRuns) {
  const graph::Model m = test::tiny_cnn(4);
  const Dataset calib = labelled(m, 64, 1), eval = labelled(m, 96, 2);
  ptq::PtqOptions base;
  const ptq::Calibration cal = ptq::calibrate(m, calib, base);
  const auto cands = ptq::default_candidates(4);
  const auto rep = ptq::sensitivity(cal, eval, base, cands, 32);
  ASSERT_EQ(rep.configs.size(), 4u);
  EXPECT_DOUBLE_EQ(rep.fp32_accuracy, 1.0);
  EXPECT_LT(rep.node_runs, rep.node_runs_without_cache) << "the cache must save work";

  std::set<std::string> weights, acts(cal.targets.begin(), cal.targets.end());
  for (const auto& l : rep.layers)
    if (l.kind == "weights") weights.insert(l.name);
  ASSERT_EQ(weights.size(), 3u);
  ASSERT_EQ(rep.layers.size(), 3u + cal.targets.size());
  for (const auto& l : rep.layers) {
    for (size_t c = 0; c < l.configs.size(); ++c) {
      SCOPED_TRACE(l.name + " " + l.configs[c]);
      const auto [alone, all_but] = variant_options(base, l, cands[c].options(), cands[1].options(), weights, acts);
      const Direct a = evaluate_directly(cal, alone, eval), b = evaluate_directly(cal, all_but, eval);
      EXPECT_NEAR(l.alone[c].accuracy_drop, 1.0 - a.accuracy, 1e-12);
      EXPECT_NEAR(l.all_but[c].accuracy_drop, 1.0 - b.accuracy, 1e-12);
      // Batching differs (32 vs all), float sums differ in the last bits only.
      EXPECT_NEAR(l.alone[c].sqnr_db, a.sqnr, 1e-3);
      EXPECT_NEAR(l.all_but[c].sqnr_db, b.sqnr, 1e-3);
    }
  }
  // The first conv's channels were spread 100x: per-tensor int8 must hurt it more than per-channel.
  const auto& conv1 = rep.layers[0];
  EXPECT_EQ(conv1.name, "Conv_c1");
  EXPECT_LT(conv1.alone[0].sqnr_db + 3.0, conv1.alone[1].sqnr_db);
}

// tiny_cnn cut after its residual Add: a feature map [N, 8, 4, 4] as output (a segmenter's shape); with
// `score_map`, averaged over channels to [N, 1, 4, 4] (a detector's single-channel score map).
graph::Model dense_output_cnn(uint32_t seed, bool score_map) {
  graph::Model m = test::tiny_cnn(seed);
  auto& g = m.graph;
  while (g.nodes.back().op_type != "Add") g.nodes.pop_back();
  g.outputs = {{"a", DType::kFloat32, {-1, 8, 4, 4}, {"N", "", "", ""}, true}};
  if (score_map) {
    graph::Node r;
    r.op_type = "ReduceMean";
    r.name = "mean_channels";
    r.inputs = {"a"};
    r.outputs = {"score"};
    r.attrs = {{"axes", std::vector<int64_t>{1}}, {"keepdims", int64_t{1}}};
    g.nodes.push_back(r);
    g.outputs = {{"score", DType::kFloat32, {-1, 1, 4, 4}, {"N", "", "", ""}, true}};
  }
  return m;
}

// The first index of the largest f(i), i < k.
template <class F>
int64_t first_argmax(int64_t k, F f) {
  int64_t best = 0;
  for (int64_t i = 1; i < k; ++i)
    if (f(i) > f(best)) best = i;
  return best;
}

// Agreement of two [N, C, H, W] outputs, by explicit index arithmetic: along `axis` (1 or 3) the argmax
// (first of ties), or with C = 1 the side of `threshold`.
double agreement_4d(const Tensor& y, const Tensor& ref, int axis, double threshold) {
  const Shape& s = y.shape();
  EXPECT_EQ(s, ref.shape());
  auto at = [&](const Tensor& t, int64_t n, int64_t c, int64_t h, int64_t w) {
    return t.data<float>()[((n * s[1] + c) * s[2] + h) * s[3] + w];
  };
  int64_t agree = 0, count = 0;
  for (int64_t n = 0; n < s[0]; ++n)
    for (int64_t h = 0; h < s[2]; ++h) {
      if (axis == 1) {
        for (int64_t w = 0; w < s[3]; ++w) {
          if (s[1] == 1) {
            agree += (at(y, n, 0, h, w) > threshold) == (at(ref, n, 0, h, w) > threshold);
          } else {
            agree += first_argmax(s[1], [&](int64_t c) { return at(y, n, c, h, w); }) ==
                     first_argmax(s[1], [&](int64_t c) { return at(ref, n, c, h, w); });
          }
          ++count;
        }
      } else {
        for (int64_t c = 0; c < s[1]; ++c) {
          agree += first_argmax(s[3], [&](int64_t w) { return at(y, n, c, h, w); }) ==
                   first_argmax(s[3], [&](int64_t w) { return at(ref, n, c, h, w); });
          ++count;
        }
      }
    }
  return static_cast<double>(agree) / static_cast<double>(count);
}

// Every variant's agreement drop against a whole run of the variant built the plain way.
void check_agreement(const graph::Model& m, int axis_given, int axis, double threshold, int64_t positions_per_image) {
  const Dataset calib = test::tiny_cnn_inputs(48, 11), eval = test::tiny_cnn_inputs(40, 12);
  ptq::PtqOptions base;
  const ptq::Calibration cal = ptq::calibrate(m, calib, base);
  const std::vector<ptq::WeightChoice> cands = {ptq::WeightChoice::parse("int8 per-tensor"),
                                                ptq::WeightChoice::parse("int4 per-channel")};
  ptq::Fidelity fid;
  fid.class_axis = axis_given;
  fid.threshold = threshold;
  const auto rep = ptq::sensitivity(cal, eval, base, cands, 16, {}, fid);
  EXPECT_EQ(rep.metric, "agreement");
  EXPECT_EQ(rep.class_axis, axis);
  EXPECT_EQ(rep.positions, 40 * positions_per_image);
  EXPECT_DOUBLE_EQ(rep.fp32_accuracy, 1.0);
  const Tensor ref = runtime::Executor(cal.model).run1(eval.images);
  std::set<std::string> weights, acts(cal.targets.begin(), cal.targets.end());
  for (const auto& l : rep.layers)
    if (l.kind == "weights") weights.insert(l.name);
  ASSERT_EQ(weights.size(), 2u);
  double worst = 1;
  for (const auto& l : rep.layers)
    for (size_t c = 0; c < l.configs.size(); ++c) {
      SCOPED_TRACE(l.name + " " + l.configs[c]);
      // No int8 per-channel candidate: an activation's all-but variant quantizes weights with the first.
      const auto [alone, all_but] = variant_options(base, l, cands[c].options(), cands[0].options(), weights, acts);
      const double a = agreement_4d(runtime::Executor(ptq::build_quantized(cal, alone).model).run1(eval.images), ref, axis, threshold);
      EXPECT_NEAR(l.alone[c].accuracy_drop, 1.0 - a, 1e-12);
      const double b = agreement_4d(runtime::Executor(ptq::build_quantized(cal, all_but).model).run1(eval.images), ref, axis, threshold);
      EXPECT_NEAR(l.all_but[c].accuracy_drop, 1.0 - b, 1e-12);
      worst = std::min(worst, a);
    }
  EXPECT_LT(worst, 1.0) << "some variant must disagree somewhere, or the comparison shows nothing";
}

TEST(Sensitivity, WithoutLabelsScoresArgmaxAgreementPerPosition) {
  check_agreement(dense_output_cnn(21, false), 0, 1, std::nan(""), 16);   // automatic: channels of [N,C,H,W]
  check_agreement(dense_output_cnn(22, false), -1, 3, std::nan(""), 32);  // the last axis, per (c, h)
}

TEST(Sensitivity, WithoutLabelsAScoreMapAgreesByThreshold) {
  check_agreement(dense_output_cnn(23, true), 0, 1, 0.5, 16);
  const graph::Model m = dense_output_cnn(23, true);
  const ptq::PtqOptions base;
  const ptq::Calibration cal = ptq::calibrate(m, test::tiny_cnn_inputs(16, 1), base);
  const std::vector<ptq::WeightChoice> c8 = {ptq::WeightChoice::parse("int8 per-channel")};
  try {
    ptq::sensitivity(cal, test::tiny_cnn_inputs(8, 2), base, c8, 8, {false, false});
    ADD_FAILURE() << "a single-entry class axis without a threshold must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'score'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("threshold"), std::string::npos) << e.what();
  }
  ptq::Fidelity bad;
  bad.class_axis = 4;
  EXPECT_THROW(ptq::sensitivity(cal, test::tiny_cnn_inputs(8, 2), base, c8, 8, {false, false}, bad), Error);
}

TEST(Sensitivity, WithoutLabelsAClassifierScoresAsIfLabelledByTheFloatModel) {
  // On [N, K] logits, agreement with fp32 is top-1 accuracy against the float model's own predictions.
  const graph::Model m = test::tiny_cnn(24);
  const ptq::PtqOptions base;
  const ptq::Calibration cal = ptq::calibrate(m, labelled(m, 48, 25), base);
  const Dataset with = labelled(m, 80, 26);
  Dataset without = with;
  without.labels.clear();
  const auto cands = ptq::default_candidates(4);
  const auto a = ptq::sensitivity(cal, with, base, cands, 32), b = ptq::sensitivity(cal, without, base, cands, 32);
  EXPECT_EQ(a.metric, "top-1");
  EXPECT_EQ(b.metric, "agreement");
  EXPECT_EQ(b.positions, 80);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  bool any_drop = false;
  for (size_t i = 0; i < a.layers.size(); ++i)
    for (size_t c = 0; c < a.layers[i].configs.size(); ++c) {
      EXPECT_EQ(a.layers[i].alone[c].accuracy_drop, b.layers[i].alone[c].accuracy_drop) << a.layers[i].name;
      EXPECT_EQ(a.layers[i].all_but[c].accuracy_drop, b.layers[i].all_but[c].accuracy_drop) << a.layers[i].name;
      EXPECT_EQ(a.layers[i].alone[c].sqnr_db, b.layers[i].alone[c].sqnr_db);
      any_drop |= a.layers[i].all_but[c].accuracy_drop > 0;
    }
  EXPECT_TRUE(any_drop);
}

TEST(Selection, ClimbsTheLadderUntilTheBudgetHoldsAndReportsBothSplits) {
  const graph::Model m = test::tiny_cnn(6);
  const Dataset calib = labelled(m, 64, 3), sel_data = labelled(m, 200, 4), ver_data = labelled(m, 200, 5);
  ptq::PtqOptions base;
  base.equalize = false;
  base.bias_correction = false;
  const ptq::Calibration cal = ptq::calibrate(m, calib, base);
  const auto sel = ptq::select_config(cal, sel_data, ver_data, base, ptq::Preference::kSmall, 0.0, 4);
  ASSERT_EQ(sel.weights.size(), 3u);
  EXPECT_DOUBLE_EQ(sel.fp32_select, 1.0);
  EXPECT_DOUBLE_EQ(sel.fp32_verify, 1.0);
  // Budget 0: either met exactly, or every weight layer ended in fp32 (activations cost the rest).
  bool all_float = true;
  for (const auto& [n, c] : sel.weights) all_float &= c.is_float;
  EXPECT_TRUE(sel.quant_select >= 1.0 || all_float) << sel.quant_select;
  // The reported verification accuracy is what the chosen configuration really gets.
  const Direct v = evaluate_directly(cal, ptq::apply_selection(base, sel), ver_data);
  EXPECT_DOUBLE_EQ(sel.quant_verify, v.accuracy);
  EXPECT_EQ(sel.steps + 1, static_cast<int>(sel.log.size()) - (sel.quant_select < 1.0 ? 1 : 0));
}

// The unlabelled selection tests' model and splits: a CNN with a dense output, agreement with the float model.
struct UnlabelledSelection {
  const graph::Model m = dense_output_cnn(31, false);
  const Dataset calib = test::tiny_cnn_inputs(48, 30), sel_data = test::tiny_cnn_inputs(64, 32),
                ver_data = test::tiny_cnn_inputs(64, 33);
  const ptq::PtqOptions base = [] {
    ptq::PtqOptions o;
    o.equalize = false;
    o.bias_correction = false;
    return o;
  }();
  const ptq::Calibration cal = ptq::calibrate(m, calib, base);
  ptq::Selection select(ptq::Preference prefer, int act_fallback_bits = 0, double max_drop = 0.0) const {
    return ptq::select_config(cal, sel_data, ver_data, base, prefer, max_drop, 4, {}, act_fallback_bits);
  }
  std::string root_of(std::string v) const {  // the value whose grid v shares (Calibration::shares)
    while (cal.shares.count(v)) v = cal.shares.at(v);
    return v;
  }
};

// The selection log's activation moves, in order: (name, "16-bit" | "float").
std::vector<std::pair<std::string, std::string>> activation_moves(const ptq::Selection& sel) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& l : sel.log) {
    const auto at = l.find("activation ");
    if (at == std::string::npos) continue;
    const std::string rest = l.substr(at + 11), name = rest.substr(0, rest.find(' '));
    if (l.find("-> 16-bit") != std::string::npos) out.emplace_back(name, "16-bit");
    if (l.find("-> float") != std::string::npos) out.emplace_back(name, "float");
  }
  return out;
}

TEST(Selection, WithoutLabelsBudgetsAgreementAndLeavesActivationsFloat) {
  const UnlabelledSelection u;
  const auto sel = u.select(ptq::Preference::kFast);
  EXPECT_EQ(sel.metric, "agreement");
  EXPECT_DOUBLE_EQ(sel.fp32_select, 1.0);
  EXPECT_DOUBLE_EQ(sel.fp32_verify, 1.0);
  ASSERT_GT(sel.steps, 0) << "every quantized configuration agreed everywhere: the budget was never tested";
  // Budget 0: met exactly, or nothing left to move (every layer and activation float).
  bool all_float = sel.float_activations.size() == u.cal.targets.size();
  for (const auto& [n, c] : sel.weights) all_float &= c.is_float;
  EXPECT_TRUE(sel.quant_select >= 1.0 || all_float) << sel.quant_select;
  // On this model the activations' uint8 ranges hurt more than int8 per-channel weights: some went float.
  EXPECT_FALSE(sel.float_activations.empty());
  bool logged = false;
  for (const auto& l : sel.log) logged |= l.find("activation") != std::string::npos;
  EXPECT_TRUE(logged);
  // The reported verification agreement is what the chosen configuration really gets, by a whole run.
  const Tensor ref = runtime::Executor(u.cal.model).run1(u.ver_data.images);
  const Tensor y =
      runtime::Executor(ptq::build_quantized(u.cal, ptq::apply_selection(u.base, sel)).model).run1(u.ver_data.images);
  EXPECT_DOUBLE_EQ(sel.quant_verify, agreement_4d(y, ref, 1, std::nan("")));
}

// With a middle rung (act_fallback_bits 16) activations go uint8 -> uint16 -> float: every activation the climb
// leaves float was at 16 bits first, the chosen 16-bit activations are in the selection (and the configuration
// it applies), and the verification agreement is what a whole run of that model gets.
TEST(Selection, SixteenBitRungComesBeforeFloat) {
  const UnlabelledSelection u;
  const auto sel = u.select(ptq::Preference::kFast, 16);
  ASSERT_GT(sel.steps, 0);
  // A move takes the activation's sharing group (pass-through ops keep one grid) with it.
  std::set<std::string> went_wide, wide_roots;
  for (const auto& [name, to] : activation_moves(sel)) {
    if (to == "16-bit") went_wide.insert(name), wide_roots.insert(u.root_of(name));
    if (to == "float") {
      EXPECT_TRUE(wide_roots.count(u.root_of(name))) << "straight to float: " << name;
    }
  }
  EXPECT_FALSE(went_wide.empty()) << "no activation took the 16-bit rung";
  for (const auto& [a, bits] : sel.activation_bits) {
    EXPECT_EQ(bits, 16) << a;
    EXPECT_TRUE(wide_roots.count(u.root_of(a))) << a;
    EXPECT_FALSE(sel.float_activations.count(a)) << a;
  }
  for (const auto& a : went_wide) EXPECT_TRUE(sel.activation_bits.count(a) || sel.float_activations.count(a)) << a;
  ASSERT_FALSE(u.cal.shares.empty()) << "this model should have a pass-through op (MaxPool)";
  for (const auto& [v, r] : u.cal.shares)
    if (wide_roots.count(u.root_of(v))) {
      EXPECT_EQ(sel.activation_bits.count(v) + sel.float_activations.count(v), 1u) << v << " left behind";
    }
  const ptq::PtqOptions applied = ptq::apply_selection(u.base, sel);
  EXPECT_EQ(applied.activation_bits, sel.activation_bits);
  const graph::Model qm = ptq::build_quantized(u.cal, applied).model;
  int uint16_q = 0;
  for (const auto& n : qm.graph.nodes)
    if (n.op_type == "QuantizeLinear" && !qm.graph.initializer(n.input(0))) {
      uint16_q += qm.graph.initializer(n.input(2))->dtype() == DType::kUInt16;
    }
  EXPECT_GE(uint16_q, static_cast<int>(sel.activation_bits.size()));
  EXPECT_EQ(uint16_q > 0, !sel.activation_bits.empty());
  const Tensor ref = runtime::Executor(u.cal.model).run1(u.ver_data.images);
  const Tensor y = runtime::Executor(qm).run1(u.ver_data.images);
  EXPECT_DOUBLE_EQ(sel.quant_verify, agreement_4d(y, ref, 1, std::nan("")));
  EXPECT_THROW(u.select(ptq::Preference::kFast, 8), Error);  // the middle rung must be wider than 8 bits
}

// --prefer integer: every weight layer stays int8 per-channel whatever the budget; only activations move. On
// this model the start drops 1.17 pt and the int8 weights alone (every activation float) 0.39 pt: a budget
// of 0.5 pt makes activations climb (16 bits before float); a budget of 0 is below that floor, so nothing moves.
TEST(Selection, IntegerPreferenceKeepsEveryWeightInt8) {
  EXPECT_EQ(ptq::parse_preference("integer"), ptq::Preference::kInteger);
  EXPECT_STREQ(ptq::preference_name(ptq::Preference::kInteger), "integer");
  const UnlabelledSelection u;
  {
    const auto stuck = u.select(ptq::Preference::kInteger, 16, 0.0);
    EXPECT_EQ(stuck.steps, 0);
    EXPECT_TRUE(stuck.activation_bits.empty() && stuck.float_activations.empty());
    bool floor_said = false;
    for (const auto& l : stuck.log) floor_said |= l.find("floor:") == 0 && l.find("no activation choice can meet it") != std::string::npos;
    EXPECT_TRUE(floor_said);
  }
  const auto sel = u.select(ptq::Preference::kInteger, 16, 0.005);
  ASSERT_FALSE(sel.weights.empty());
  for (const auto& [node, c] : sel.weights) EXPECT_EQ(c.label(), "int8 per-channel") << node;
  ASSERT_GT(sel.steps, 0);
  for (const auto& l : sel.log) EXPECT_EQ(l.find(": layer "), std::string::npos) << l;
  EXPECT_FALSE(sel.activation_bits.empty() && sel.float_activations.empty());
  // No activation skips the 16-bit rung: each one moved to float had its group (cal.shares) at 16 bits first.
  std::set<std::string> wide_roots;
  int to_float = 0;
  for (const auto& [name, to] : activation_moves(sel)) {
    if (to == "16-bit") wide_roots.insert(u.root_of(name));
    if (to == "float") {
      ++to_float;
      EXPECT_TRUE(wide_roots.count(u.root_of(name))) << "straight to float: " << name;
    }
  }
  // The budget is met (it is above the floor), on the selection split; the floor was measured and said so.
  EXPECT_LE(sel.fp32_select - sel.quant_select, 0.005);
  bool floor_said = false;
  for (const auto& l : sel.log) floor_said |= l.find("floor:") == 0 && l.find("no activation") == std::string::npos;
  EXPECT_TRUE(floor_said);
}

TEST(Selection, WeightBytesFollowTheChoice) {
  const ptq::WeightChoice i8 = ptq::WeightChoice::parse("int8 per-channel"), i4g = ptq::WeightChoice::parse("int4 per-group", 4),
                          f = ptq::WeightChoice::parse("fp32");
  const Shape s{8, 16, 3, 3};  // 1152 weights
  EXPECT_DOUBLE_EQ(f.bytes(s, 0, 1), 4608);
  EXPECT_DOUBLE_EQ(i8.bytes(s, 0, 1), 1152 + 4 * 8);
  EXPECT_DOUBLE_EQ(i4g.bytes(s, 0, 1), 576 + 4 * (8 * 4 * 9));  // scales [8, 16/4, 3, 3]
  EXPECT_EQ(ptq::WeightChoice::parse("int4 per-group:32").group_size, 32);
  EXPECT_THROW(ptq::WeightChoice::parse("int8 per-row"), Error);
}

// A chosen layer is quantized the way the base options quantize weights (e.g. --weight-estimator mse), with
// the choice's bits and granularity.
TEST(Selection, ChoicesKeepTheBaseWeightEstimator) {
  ptq::PtqOptions base;
  base.weights.estimator.kind = quant::EstimatorKind::kMse;
  ptq::Selection sel;
  sel.weights["conv"] = ptq::WeightChoice::parse("int4 per-group:8");
  sel.weights["fc"] = ptq::WeightChoice::parse("fp32");
  const ptq::PtqOptions o = ptq::apply_selection(base, sel);
  ASSERT_TRUE(o.layer_weights.count("conv"));
  const ptq::WeightOptions& w = o.layer_weights.at("conv");
  EXPECT_EQ(w.estimator.kind, quant::EstimatorKind::kMse);
  EXPECT_EQ(w.bits, 4);
  EXPECT_EQ(w.granularity, quant::Granularity::kPerGroup);
  EXPECT_EQ(w.group_size, 8);
  EXPECT_TRUE(o.float_nodes.count("fc"));
}

TEST(Report, HasEverySectionAndEscapesNames) {
  graph::Model m = test::tiny_cnn(2);
  m.graph.nodes[0].name = "conv<1>";
  ptq::Selection sel;
  sel.weights["conv<1>"] = ptq::WeightChoice::parse("int8 per-tensor");
  ptq::SensitivityReport s;
  s.configs = {"int8 per-tensor"};
  s.all_quantized = {{0.01, 30}};
  ptq::LayerSensitivity l;
  l.name = "conv<1>";
  l.kind = "weights";
  l.configs = {"int8 per-tensor"};
  l.alone = {{0.02, 25}};
  l.all_but = {{0.0, 40}};
  s.layers = {l};
  ptq::ReportInput in;
  in.title = "t";
  in.model = &m;
  in.sensitivity = &s;
  in.selection = &sel;
  in.accuracy = {{"fp32", 0.9}, {"q", 0.89}};
  const std::string html = ptq::render_report_html(in);
  for (const char* id : {"id=\"summary\"", "id=\"ranges\"", "id=\"sensitivity\"", "id=\"choice\""})
    EXPECT_NE(html.find(id), std::string::npos) << id;
  EXPECT_EQ(html.find("conv<1>"), std::string::npos);
  EXPECT_NE(html.find("conv&lt;1&gt;"), std::string::npos);
  EXPECT_EQ(html.find("http"), html.find("http://www.w3.org/2000/svg")) << "no network references besides the SVG namespace";
}

}  // namespace
