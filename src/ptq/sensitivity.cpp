#include "perch/ptq/sensitivity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>

#include "model_diff.h"
#include "perch/core/progress.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {

using graph::Model;
using graph::Node;

std::string WeightChoice::label() const {
  if (is_float) return "fp32";
  std::string g = granularity == quant::Granularity::kPerTensor    ? "per-tensor"
                  : granularity == quant::Granularity::kPerChannel ? "per-channel"
                                                                   : "per-group";
  return "int" + std::to_string(bits) + " " + g;
}

WeightChoice WeightChoice::parse(const std::string& label, int64_t default_group) {
  WeightChoice c;
  if (label == "fp32") {
    c.is_float = true;
    return c;
  }
  const auto sp = label.find(' ');
  PERCH_CHECK(label.rfind("int", 0) == 0 && sp != std::string::npos, "weight configuration '", label,
              "': expected fp32 or intB per-tensor|per-channel|per-group[:G]");
  c.bits = std::stoi(label.substr(3, sp - 3));
  const std::string g = label.substr(sp + 1);
  if (g == "per-tensor") c.granularity = quant::Granularity::kPerTensor;
  else if (g == "per-channel") c.granularity = quant::Granularity::kPerChannel;
  else if (g.rfind("per-group", 0) == 0) {
    c.granularity = quant::Granularity::kPerGroup;
    c.group_size = g.size() > 10 ? std::stoll(g.substr(10)) : default_group;
  } else {
    PERCH_FAIL("weight configuration '", label, "': unknown granularity '", g, "'");
  }
  return c;
}

WeightOptions WeightChoice::options(const WeightOptions& base) const {
  WeightOptions o = base;
  o.bits = bits;
  o.granularity = granularity;
  o.group_size = group_size;
  return o;
}

double WeightChoice::bytes(const Shape& s, int64_t channel_axis, int64_t group_axis) const {
  const double n = static_cast<double>(checked_numel(s));
  if (is_float) return 4.0 * n;
  double scales = 1;
  if (granularity == quant::Granularity::kPerChannel) scales = static_cast<double>(s[channel_axis]);
  if (granularity == quant::Granularity::kPerGroup)
    scales = n / static_cast<double>(s[group_axis]) * static_cast<double>((s[group_axis] + group_size - 1) / group_size);
  return n * bits / 8.0 + 4.0 * scales;
}

int64_t class_axis_of(const Fidelity& f, const std::string& out_name, const Shape& out) {
  const int64_t rank = static_cast<int64_t>(out.size());
  PERCH_CHECK(rank >= 2, "output '", out_name, "' has shape ", shape_str(out),
              ": scoring against the float model needs a batch axis and a class axis");
  const int64_t axis = f.class_axis == 0 ? (rank == 3 ? 2 : 1) : f.class_axis < 0 ? f.class_axis + rank : f.class_axis;
  PERCH_CHECK(axis >= 1 && axis < rank, "class axis ", f.class_axis, " is not a non-batch axis of output '", out_name,
              "' (shape ", shape_str(out), ")");
  return axis;
}

std::vector<WeightChoice> default_candidates(int64_t group_size) {
  std::vector<WeightChoice> v;
  for (const char* l : {"int8 per-tensor", "int8 per-channel", "int4 per-channel", "int4 per-group"})
    v.push_back(WeightChoice::parse(l, group_size));
  return v;
}

Preference parse_preference(const std::string& s) {
  if (s == "per-tensor") return Preference::kPerTensor;
  if (s == "small") return Preference::kSmall;
  if (s == "fast") return Preference::kFast;
  if (s == "integer") return Preference::kInteger;
  PERCH_FAIL("--prefer '", s, "': expected per-tensor, small, fast or integer");
}

const char* preference_name(Preference p) {
  switch (p) {
    case Preference::kPerTensor: return "per-tensor";
    case Preference::kSmall: return "small";
    case Preference::kFast: return "fast";
    case Preference::kInteger: return "integer";
  }
  return "?";
}

namespace {

struct WeightLayer {
  std::string node, op_type;
  Shape shape;
  int64_t channel_axis = 0, group_axis = 0;
  double spread = 0;
};

std::vector<WeightLayer> weight_layers(const Model& m) {
  std::vector<WeightLayer> out;
  for (const auto& n : m.graph.nodes) {
    if (!quantizes_weights(n.op_type)) continue;
    const Tensor* w = m.graph.initializer(n.input(1));
    if (!w || w->dtype() != DType::kFloat32) continue;
    WeightLayer l;
    l.node = n.name;
    l.op_type = n.op_type;
    l.shape = w->shape();
    l.channel_axis = weight_channel_axis(n, w->rank());
    l.group_axis = weight_group_axis(n, w->rank());
    l.spread = channel_spread(*w, l.channel_axis);
    out.push_back(l);
  }
  return out;
}

// How a variant's output is scored: top-1 against labels, or agreement with the float output (Fidelity).
struct Scoring {
  bool labelled = true;
  int64_t axis = 1;  // agreement: class axis (resolved, non-negative)
  double threshold = 0;
};

Scoring resolve_scoring(const Dataset& eval, const Fidelity& f, const std::string& out_name, const Shape& out) {
  Scoring s;
  s.labelled = eval.has_labels();
  if (s.labelled) return s;
  const int64_t axis = class_axis_of(f, out_name, out);
  s.axis = axis;
  s.threshold = f.threshold;
  PERCH_CHECK(out[static_cast<size_t>(axis)] > 1 || std::isfinite(f.threshold), "output '", out_name, "' (shape ",
              shape_str(out), ") has a single entry on class axis ", axis,
              ": there is no argmax to agree on; give a threshold (agreement of y > threshold)");
  return s;
}

struct Accum {
  int64_t correct = 0, count = 0;
  double ref2 = 0, err2 = 0;
  void add(const Tensor& y, const Tensor& ref, const Scoring& s, const std::vector<int64_t>& labels, int64_t offset) {
    PERCH_CHECK(y.shape() == ref.shape(), "sensitivity: a variant's output shape ", shape_str(y.shape()),
                " differs from the float model's ", shape_str(ref.shape()));
    const float* yd = y.data<float>();
    const float* rd = ref.data<float>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      const double r = rd[i], e = yd[i] - r;
      ref2 += r * r;
      err2 += e * e;
    }
    if (s.labelled) {
      const int64_t n = y.dim(0), k = y.numel() / n;
      for (int64_t i = 0; i < n; ++i)
        correct += (std::max_element(yd + i * k, yd + (i + 1) * k) - (yd + i * k)) == labels[offset + i];
      count += n;
      return;
    }
    // Positions: outer (batch and axes before the class axis) × inner (axes after it); the class index
    // of position (o, i) and class c is at (o·k + c)·inner + i.
    const Shape& sh = y.shape();
    int64_t outer = 1, inner = 1;
    for (int64_t a = 0; a < s.axis; ++a) outer *= sh[static_cast<size_t>(a)];
    for (size_t a = static_cast<size_t>(s.axis) + 1; a < sh.size(); ++a) inner *= sh[a];
    const int64_t k = sh[static_cast<size_t>(s.axis)];
    auto argmax = [&](const float* d, int64_t o, int64_t i) {
      int64_t best = 0;  // the first of tied maxima, for both outputs alike
      for (int64_t c = 1; c < k; ++c)
        if (d[(o * k + c) * inner + i] > d[(o * k + best) * inner + i]) best = c;
      return best;
    };
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < inner; ++i) {
        if (k == 1) correct += (yd[o * inner + i] > s.threshold) == (rd[o * inner + i] > s.threshold);
        else correct += argmax(yd, o, i) == argmax(rd, o, i);
      }
    count += outer * inner;
  }
  double accuracy() const { return count ? static_cast<double>(correct) / static_cast<double>(count) : 0; }
  double sqnr() const { return err2 == 0 ? 200.0 : 10.0 * std::log10(ref2 / err2); }
};

struct Variant {
  size_t base;  // index into bases
  runtime::Executor exec;
  std::vector<std::string> clean;
  Accum acc;
  size_t dirty_nodes = 0;
};

// Scores whole runs of models on one split, quietly (selection evaluates many candidates; one progress
// bar each would drown the log): top-1 against the split's labels, or agreement with the float model's
// outputs, computed once and kept.
class Scorer {
 public:
  Scorer(const Model& fp32, const Dataset& d, const Fidelity& f) : d_(d) {
    if (d.has_labels()) {
      fp32_ = (*this)(runtime::Executor(fp32));
      return;
    }
    const runtime::Executor e(fp32);
    for (const auto& chunk : d.chunks(kBatch)) {
      const int64_t b = chunk.first, n = chunk.second;
      refs_.push_back(e.run(d.feeds(e.input_name(), b, n)).at(e.output_name()));
      if (b == 0) scoring_ = resolve_scoring(d, f, fp32.graph.outputs.at(0).name, refs_[0].shape());
    }
    fp32_ = 1.0;
  }
  bool labelled() const { return d_.has_labels(); }
  double fp32() const { return fp32_; }
  double operator()(const runtime::Executor& e) const {
    Accum acc;
    size_t i = 0;
    for (const auto& chunk : d_.chunks(kBatch)) {
      const int64_t b = chunk.first, n = chunk.second;
      const Tensor y = e.run(d_.feeds(e.input_name(), b, n)).at(e.output_name());
      acc.add(y, labelled() ? y : refs_[i++], scoring_, d_.labels, b);
    }
    return acc.accuracy();
  }

 private:
  static constexpr int64_t kBatch = 32;
  const Dataset& d_;
  Scoring scoring_;  // labelled by default
  std::vector<Tensor> refs_;
  double fp32_ = 0;
};

// Runs `m` on a batch, keeping every value (the cache a variant reads its unchanged prefix from).
runtime::TensorMap run_all(const runtime::Executor& e, const runtime::TensorMap& feeds) {
  runtime::TensorMap all = feeds;
  auto out = e.run(feeds, [&](const std::string& name, const Tensor& t) { all[name] = t; });
  for (auto& [k, v] : out) all[k] = v;
  return all;
}

// Images per batch whose cache (every value of `bases` models, each about the float model's size) stays
// within 2 GiB: measured on one image, at most 64, at least 1.
int64_t cache_batch(const runtime::Executor& fp32, const std::string& in, const Dataset& eval, size_t bases) {
  if (eval.size() == 0) return 1;
  size_t per_image = 0;  // the largest over the shape groups (one chunk each)
  for (const auto& chunk : eval.chunks(std::numeric_limits<int64_t>::max())) {
    size_t bytes = 0;
    for (const auto& [name, t] : run_all(fp32, eval.feeds(in, chunk.first, 1))) bytes += t.nbytes();
    per_image = std::max(per_image, bytes);
  }
  const size_t budget = size_t{2} << 30;
  const size_t per = std::max<size_t>(1, per_image * bases);
  return std::clamp<int64_t>(static_cast<int64_t>(budget / per), 1, 64);
}

}  // namespace

SensitivityReport sensitivity(const Calibration& cal, const Dataset& eval, const PtqOptions& base_opt,
                              const std::vector<WeightChoice>& candidates, int64_t batch, SensitivityScope scope,
                              const Fidelity& fidelity) {
  const auto t0 = std::chrono::steady_clock::now();
  PERCH_CHECK(batch >= 0, "sensitivity: batch must be positive (or 0: automatic)");
  SensitivityReport rep;
  const auto layers = weight_layers(cal.model);
  std::set<std::string> all_weight_nodes, all_acts(cal.targets.begin(), cal.targets.end());
  for (const auto& l : layers) all_weight_nodes.insert(l.node);

  // Base models: float, then all-quantized per candidate.
  std::vector<Model> bases;
  bases.push_back(cal.model);
  for (const auto& c : candidates) {
    PtqOptions o = base_opt;
    o.weights = c.options(base_opt.weights);
    o.layer_weights.clear();
    o.float_nodes.clear();
    o.float_activations.clear();
    bases.push_back(build_quantized(cal, o).model);
    rep.configs.push_back(c.label());
  }
  std::vector<runtime::Executor> base_exec;
  for (const auto& b : bases) base_exec.emplace_back(b);
  const std::string in_name = cal.model.graph.inputs.at(0).name;
  const std::string out_name = cal.model.graph.outputs.at(0).name;
  if (batch == 0) batch = cache_batch(base_exec[0], in_name, eval, bases.size());

  std::vector<Variant> variants;
  auto add_variant = [&](size_t base, const PtqOptions& o) {
    Model vm = build_quantized(cal, o).model;
    auto clean = detail::clean_outputs(bases[base], vm);
    const size_t dirty = vm.graph.nodes.size() - std::min(vm.graph.nodes.size(), clean.size());
    variants.push_back(Variant{base, runtime::Executor(std::move(vm)), std::move(clean), {}, dirty});
  };
  // Layer sensitivities (weights x candidates x {alone, all-but}, then activations).
  for (const auto& l : layers) {
    LayerSensitivity ls;
    ls.name = l.node;
    ls.kind = "weights";
    ls.op_type = l.op_type;
    ls.weight_shape = l.shape;
    ls.spread = l.spread;
    for (size_t ci = 0; ci < candidates.size(); ++ci) {
      ls.configs.push_back(candidates[ci].label());
      PtqOptions alone = base_opt;
      alone.weights = candidates[ci].options(base_opt.weights);
      alone.float_nodes = all_weight_nodes;
      alone.float_nodes.erase(l.node);
      alone.float_activations = all_acts;
      add_variant(0, alone);
      if (!scope.all_but) continue;
      PtqOptions all_but = base_opt;
      all_but.weights = candidates[ci].options(base_opt.weights);
      all_but.float_nodes = {l.node};
      all_but.float_activations.clear();
      add_variant(1 + ci, all_but);
    }
    rep.layers.push_back(ls);
  }
  if (scope.activations) {
  // Activations: uint8 per-tensor, against the int8 per-channel all-quantized base when present.
  size_t act_base = 1;
  for (size_t ci = 0; ci < candidates.size(); ++ci)
    if (candidates[ci].label() == "int8 per-channel") act_base = 1 + ci;
  for (const auto& a : cal.targets) {
    LayerSensitivity ls;
    ls.name = a;
    ls.kind = "activation";
    ls.configs = {"uint" + std::to_string(base_opt.activations.bits) + " per-tensor"};
    PtqOptions alone = base_opt;
    alone.float_nodes = all_weight_nodes;
    alone.float_activations = all_acts;
    alone.float_activations.erase(a);
    add_variant(0, alone);
    if (scope.activation_all_but) {
      PtqOptions all_but = base_opt;
      all_but.weights = candidates.empty() ? base_opt.weights : candidates[act_base - 1].options(base_opt.weights);
      all_but.float_nodes.clear();
      all_but.float_activations = {a};
      add_variant(act_base, all_but);
    }
    rep.layers.push_back(ls);
  }
  }
  rep.variants = static_cast<int64_t>(variants.size());

  // Evaluate.
  std::vector<Accum> base_acc(bases.size());
  std::optional<Scoring> scoring;  // resolved on the float model's first output
  Progress progress("sensitivity", eval.size());
  for (const auto& chunk : eval.chunks(batch)) {
    const int64_t b = chunk.first, n = chunk.second;
    const runtime::TensorMap feeds = eval.feeds(in_name, b, n);
    std::vector<runtime::TensorMap> cache;
    for (size_t i = 0; i < bases.size(); ++i) {
      cache.push_back(run_all(base_exec[i], feeds));
      if (!scoring) scoring = resolve_scoring(eval, fidelity, out_name, cache[0].at(out_name).shape());
      base_acc[i].add(cache[i].at(out_name), cache[0].at(out_name), *scoring, eval.labels, b);
    }
    for (auto& v : variants) {
      runtime::TensorMap known;
      for (const auto& o : v.clean) known[o] = cache[v.base].at(o);
      const Tensor y = v.exec.run_cached(feeds, known).at(out_name);
      v.acc.add(y, cache[0].at(out_name), *scoring, eval.labels, b);
      rep.node_runs += static_cast<int64_t>(v.dirty_nodes);
      rep.node_runs_without_cache += static_cast<int64_t>(v.exec.model().graph.nodes.size());
    }
    progress.update(b + n);
  }
  progress.finish();
  rep.fp32_accuracy = base_acc[0].accuracy();
  rep.eval_images = eval.size();
  if (scoring && !scoring->labelled) {
    rep.metric = "agreement";
    rep.class_axis = scoring->axis;
    rep.threshold = scoring->threshold;
    rep.positions = base_acc[0].count;
  }
  for (size_t i = 1; i < bases.size(); ++i)
    rep.all_quantized.push_back({rep.fp32_accuracy - base_acc[i].accuracy(), base_acc[i].sqnr()});
  size_t vi = 0;
  for (auto& ls : rep.layers) {
    for (size_t c = 0; c < ls.configs.size(); ++c) {
      const Accum& a = variants[vi++].acc;
      ls.alone.push_back({rep.fp32_accuracy - a.accuracy(), a.sqnr()});
      if (ls.kind == "activation" ? scope.activation_all_but : scope.all_but) {
        const Accum& ab = variants[vi++].acc;
        ls.all_but.push_back({rep.fp32_accuracy - ab.accuracy(), ab.sqnr()});
      }
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

PtqOptions apply_selection(const PtqOptions& base, const Selection& s) {
  PtqOptions o = base;
  o.layer_weights.clear();
  o.float_nodes.clear();
  for (const auto& [node, c] : s.weights) {
    if (c.is_float) o.float_nodes.insert(node);
    else o.layer_weights[node] = c.options(base.weights);
  }
  o.float_activations = s.float_activations;
  for (const auto& [v, bits] : s.activation_bits) o.activation_bits[v] = bits;  // over the base options' own
  return o;
}

Selection select_config(const Calibration& cal, const Dataset& select, const Dataset& verify, const PtqOptions& base,
                        Preference prefer, double max_drop, int64_t group_size, const Fidelity& fidelity,
                        int act_fallback_bits) {
  PERCH_CHECK(select.has_labels() == verify.has_labels(), select.name, " and ", verify.name,
              ": both splits labelled, or neither");
  PERCH_CHECK(act_fallback_bits == 0 || (act_fallback_bits > base.activations.bits &&
                                         (act_fallback_bits <= 8 || act_fallback_bits == 16)),
              "selection: the activations' fallback bits (", act_fallback_bits, ") must be more than their bits (",
              base.activations.bits, "): 3..8 or 16");
  std::vector<WeightChoice> ladder;
  switch (prefer) {
    case Preference::kPerTensor:
      for (const char* l : {"int8 per-tensor", "int8 per-channel", "fp32"}) ladder.push_back(WeightChoice::parse(l, group_size));
      break;
    case Preference::kSmall:
      for (const char* l : {"int4 per-channel", "int4 per-group", "int8 per-channel", "fp32"})
        ladder.push_back(WeightChoice::parse(l, group_size));
      break;
    case Preference::kFast:
      for (const char* l : {"int8 per-channel", "fp32"}) ladder.push_back(WeightChoice::parse(l, group_size));
      break;
    case Preference::kInteger:  // weights stay int8 per-channel: only activations move
      ladder.push_back(WeightChoice::parse("int8 per-channel", group_size));
      break;
  }
  const auto layers = weight_layers(cal.model);
  // How much each rung hurts on its own (SQNR of "alone"), measured on first need: weights per rung,
  // activations (their only quantized rung) with every weight float.
  std::map<std::string, std::vector<double>> alone_sqnr;
  std::map<std::string, std::vector<double>> act_alone_sqnr;  // per activation rung below float
  auto rank = [&] {
    const std::vector<WeightChoice> quantized_rungs(ladder.begin(), ladder.end() - 1);
    const Dataset part = take_spread(select, std::min<int64_t>(select.size(), 1000));
    SensitivityScope scope;
    scope.all_but = scope.activation_all_but = false;
    const SensitivityReport sens = sensitivity(cal, part, base, quantized_rungs, 0, scope, fidelity);
    for (const auto& ls : sens.layers) {
      if (ls.kind == "activation") act_alone_sqnr[ls.name].push_back(ls.alone.at(0).sqnr_db);
      else for (const auto& m : ls.alone) alone_sqnr[ls.name].push_back(m.sqnr_db);
    }
    if (act_fallback_bits == 0) return;
    // The middle rung: every activation alone at the fallback bits (no weight candidates: activations only).
    PtqOptions wide = base;
    for (const auto& v : cal.targets) wide.activation_bits[v] = act_fallback_bits;
    const SensitivityReport sens16 = sensitivity(cal, part, wide, {}, 0, scope, fidelity);
    for (const auto& ls : sens16.layers)
      if (ls.kind == "activation") act_alone_sqnr[ls.name].push_back(ls.alone.at(0).sqnr_db);
  };

  Selection sel;
  // Each decision is logged, and shown on stderr as it is made (the climb can take minutes).
  auto say = [&](const char* line) {
    sel.log.push_back(line);
    if (!quiet()) std::fprintf(stderr, "auto: %s\n", line);
  };
  const Scorer on_select(cal.model, select, fidelity), on_verify(cal.model, verify, fidelity);
  sel.metric = on_select.labelled() ? "top-1" : "agreement";
  std::map<std::string, size_t> rung;
  for (const auto& l : layers) rung[l.node] = 0;
  std::set<std::string> float_acts = base.float_activations;
  std::map<std::string, int> wide_acts = base.activation_bits;  // activations on the middle rung (act_fallback_bits)
  // The current weight rungs with the given activation state (sel holds the last one evaluated).
  auto evaluate_with = [&](const Scorer& sc, const std::set<std::string>& fa, const std::map<std::string, int>& wa) {
    for (const auto& l : layers) sel.weights[l.node] = ladder[rung[l.node]];
    sel.float_activations = fa;
    sel.activation_bits = wa;
    return sc(runtime::Executor(build_quantized(cal, apply_selection(base, sel)).model));
  };
  auto evaluate_on = [&](const Scorer& sc) { return evaluate_with(sc, float_acts, wide_acts); };
  sel.fp32_select = on_select.fp32();
  sel.quant_select = evaluate_on(on_select);
  {
    char line[160];
    std::snprintf(line, sizeof line, "start: every layer %s, drop %.2f pt", ladder[0].label().c_str(),
                  100 * (sel.fp32_select - sel.quant_select));
    say(line);
  }
  const int max_steps = static_cast<int>(layers.size() * ladder.size() + cal.targets.size() * (act_fallback_bits ? 2 : 1));
  // Weights that cannot move (--prefer integer): their own drop, with every activation float, is a floor no
  // activation choice goes below. Measured once when the start misses the budget; under it, no climb.
  bool below_floor = false;
  if (ladder.size() == 1 && sel.fp32_select - sel.quant_select > max_drop) {
    const double floor = evaluate_with(on_select, {cal.targets.begin(), cal.targets.end()}, {});
    below_floor = sel.fp32_select - floor > max_drop;
    char line[320];
    std::snprintf(line, sizeof line, "floor: the %s weights alone (every activation float) drop %.2f pt%s", ladder[0].label().c_str(),
                  100 * (sel.fp32_select - floor),
                  below_floor ? ", more than the budget: no activation choice can meet it, so none is made (raise "
                                "--max-drop, or let weights move with another --prefer)"
                              : "");
    say(line);
  }
  while (!below_floor && sel.fp32_select - sel.quant_select > max_drop && sel.steps < max_steps) {
    if (alone_sqnr.empty() && act_alone_sqnr.empty()) rank();
    // The layer or activation whose current (quantized) rung is worst on its own moves up one rung.
    std::string worst;
    bool worst_is_act = false;
    double worst_sqnr = std::numeric_limits<double>::infinity();
    for (const auto& l : layers) {
      const size_t r = rung[l.node];
      if (r + 1 >= ladder.size()) continue;
      const double s = alone_sqnr[l.node][r];
      if (s < worst_sqnr) worst_sqnr = s, worst = l.node, worst_is_act = false;
    }
    for (const auto& [a, s] : act_alone_sqnr) {
      if (float_acts.count(a)) continue;
      const double here = s.at(wide_acts.count(a) ? 1 : 0);
      if (here < worst_sqnr) worst_sqnr = here, worst = a, worst_is_act = true;
    }
    if (worst.empty()) break;
    std::string to;
    if (worst_is_act && act_fallback_bits && !wide_acts.count(worst)) {
      // Bits apply to a sharing group (pass-through ops keep one grid): the whole group moves.
      const std::string root = cal.share_root(worst);
      int moved = 0;
      for (const auto& v : cal.targets)
        if (cal.share_root(v) == root && !float_acts.count(v)) wide_acts[v] = act_fallback_bits, ++moved;
      to = std::to_string(act_fallback_bits) + "-bit";
      if (moved > 1) to += " (with " + std::to_string(moved - 1) + " sharing its grid)";
    } else if (worst_is_act) {
      wide_acts.erase(worst);
      float_acts.insert(worst);
      to = "float";
    } else {
      ++rung[worst];
      to = ladder[rung[worst]].label();
    }
    ++sel.steps;
    sel.quant_select = evaluate_on(on_select);
    char line[256];
    std::snprintf(line, sizeof line, "step %d: %s %s -> %s (its alone SQNR %.1f dB), drop %.2f pt", sel.steps,
                  worst_is_act ? "activation" : "layer", worst.c_str(), to.c_str(), worst_sqnr,
                  100 * (sel.fp32_select - sel.quant_select));
    say(line);
  }
  if (sel.fp32_select - sel.quant_select > max_drop) {
    char line[200];
    std::snprintf(line, sizeof line, "budget not met: %.2f pt > %.2f pt%s", 100 * (sel.fp32_select - sel.quant_select),
                  100 * max_drop, below_floor ? "" : " with every layer and activation at its last rung");
    say(line);
  }
  for (const auto& l : layers) sel.weights[l.node] = ladder[rung[l.node]];
  sel.float_activations = float_acts;
  sel.activation_bits = wide_acts;
  sel.fp32_verify = on_verify.fp32();
  sel.quant_verify = evaluate_on(on_verify);
  double int4 = 0, pt = 0;
  for (const auto& l : layers) {
    const WeightChoice& c = sel.weights[l.node];
    const double bytes = c.bytes(l.shape, l.channel_axis, l.group_axis);
    sel.weight_bytes += bytes;
    sel.fp32_weight_bytes += 4.0 * static_cast<double>(checked_numel(l.shape));
    if (!c.is_float && c.bits == 4) int4 += bytes;
    if (!c.is_float && c.granularity == quant::Granularity::kPerTensor) pt += 1;
  }
  sel.int4_byte_fraction = sel.weight_bytes > 0 ? int4 / sel.weight_bytes : 0;
  sel.per_tensor_layer_fraction = layers.empty() ? 0 : pt / static_cast<double>(layers.size());
  return sel;
}

}  // namespace perch::ptq
