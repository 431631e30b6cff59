// perch — command-line front end. Every command: errors go to stderr with what they concern and exit
// code 1 (2 for usage errors); progress goes to stderr unless --quiet or --json; --json prints one JSON
// object on stdout.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <set>

#include "perch/core/progress.h"
#include "perch/data/dataset.h"
#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/graph/passes.h"
#include "perch/ptq/adaround.h"
#include "perch/ptq/range_search.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/dynamic.h"
#include "perch/ptq/quantize.h"
#include "perch/ptq/report.h"
#include "perch/ptq/sensitivity.h"
#include "perch/core/file_io.h"
#include <fstream>
#include "perch/ptq/validate.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "cli_common.h"
#include "cmd_train.h"
#include "cmd_bench.h"  // perch bench, perch eval --engine

using namespace perch;
using json = nlohmann::json;

namespace {

struct DataFlags {
  std::optional<float> mean, std;
  DataOptions options() const { return DataOptions{mean, std}; }
  void add(CLI::App* app) {
    app->add_option("--mean", mean, "normalization mean for pixel datasets (default 0.2860)");
    app->add_option("--std", std, "normalization std for pixel datasets (default 0.3530)");
  }
};

using cli::add_scheme_flags;
using cli::apply_scheme_flags;
using cli::parse_granularity;
using cli::upcast_float16_with_note;
using cli::SchemeFlags;

std::string fmt_acc(double a) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4f", a);
  return b;
}

json layers_json(const std::vector<ptq::LayerReport>& layers) {
  json arr = json::array();
  for (const auto& l : layers)
    arr.push_back({{"node", l.node}, {"op", l.op_type}, {"weight", l.weight}, {"shape", l.weight_shape},
                   {"axis", l.axis}, {"granularity", l.granularity}, {"bits", l.bits},
                   {"spread", std::isfinite(l.spread) ? json(l.spread) : json("inf")},
                   {"weight_sqnr_db", std::isfinite(l.weight_sqnr_db) ? json(l.weight_sqnr_db) : json("inf")},
                   {"bias_clamped", l.bias_clamped}, {"weight_scales_raised", l.weight_scales_raised}, {"bias_correction_max", l.bias_correction_max},
                   {"empirical_correction_max", l.empirical_correction_max}, {"ort_requantized", l.ort_requantized},
                   {"adaptive_rounding", l.adaptive_rounding}});
  return arr;
}

// Flags of `perch quantize`, bound by CLI11 directly.
struct QuantizeFlags : SchemeFlags {
  std::string model, output, calib = "fashion-mnist:train", weights = "per-channel";
  std::string eval;
  int64_t calib_count = 1024;
  uint64_t seed = 0;
  int weight_bits = 8, act_bits = 8;
  bool compare = false, no_bias_correction = false, empirical_bc = false;
  int64_t empirical_bc_samples = 0;
  bool adaround = false, adaround_qin = false;
  int64_t adaround_iters = ptq::AdaRoundOptions{}.iterations, adaround_samples = 0;
  bool search_ranges = false;
  int64_t search_ranges_images = ptq::RangeSearchOptions{}.images;
  int search_ranges_sweeps = ptq::RangeSearchOptions{}.sweeps;
  std::string float_nodes;  // comma-separated weight-layer node names left float
  // Dynamic quantization (ptq/dynamic.h): no calibration; `static_only_given` lists the calibration-side flags the
  // command line set, which --dynamic refuses by name rather than ignore.
  bool dynamic = false;
  std::string dynamic_ops = "Conv,Gemm,MatMul";
  std::vector<std::string> static_only_given;
  std::string activation_bits;  // comma-separated NAME=BITS (ptq::PtqOptions::activation_bits)
  // Selective quantization.
  bool auto_select = false;
  int act_fallback_bits = 0;  // with --auto: the activations' middle rung (0: none)
  double max_drop = 0.5;  // points of top-1
  std::string prefer = "per-tensor", data = "fashion-mnist:test", config, save_config, report;
  int64_t group_size = 16;
  // Unlabelled --data (--auto, sensitivity): how agreement with the float model is scored (ptq::Fidelity).
  int64_t class_axis = 0;
  double threshold = std::numeric_limits<double>::quiet_NaN();
  ptq::Fidelity fidelity() const {
    ptq::Fidelity f;
    f.class_axis = class_axis;
    f.threshold = threshold;
    return f;
  }
};

// The saved/re-applied configuration: versioned JSON naming every weight layer's choice and the
// activations left float.
constexpr const char* kConfigSchema = "perch.quantization-config";
constexpr int kConfigVersion = 1;

json selection_json(const ptq::Selection& sel, const QuantizeFlags& f) {
  json layers = json::array();
  for (const auto& [node, c] : sel.weights) layers.push_back({{"node", node}, {"weights", c.label()}});
  return {{"schema", kConfigSchema}, {"version", kConfigVersion}, {"model", f.model},
          {"activations", {{"bits", f.act_bits}, {"signed", f.act_signed}, {"estimator", f.act_estimator}}},
          {"equalize", !f.no_equalize}, {"equalize_depthwise", !f.no_equalize && !f.no_equalize_depthwise}, {"bias_correction", !f.no_bias_correction}, {"empirical_bias_correction", !f.no_bias_correction && f.empirical_bc}, {"adaround", f.adaround}, {"search_ranges", f.search_ranges}, {"group_size", f.group_size},
          {"layers", layers}, {"float_activations", sel.float_activations}, {"activation_bits", sel.activation_bits},
          {"selection", {{"prefer", f.prefer}, {"max_drop_pt", f.max_drop}, {"metric", sel.metric}, {"fp32_select", sel.fp32_select},
                         {"quant_select", sel.quant_select}, {"fp32_verify", sel.fp32_verify},
                         {"quant_verify", sel.quant_verify}, {"int4_byte_fraction", sel.int4_byte_fraction},
                         {"per_tensor_layer_fraction", sel.per_tensor_layer_fraction}, {"steps", sel.steps},
                         {"act_fallback_bits", f.act_fallback_bits}}}};
}

ptq::Selection selection_from_json(const std::string& path) {
  std::ifstream in(path);
  PERCH_CHECK(in, path, ": cannot open configuration");
  json j;
  try {
    j = json::parse(in);
  } catch (const std::exception& e) {
    PERCH_FAIL(path, ": not valid JSON: ", e.what());
  }
  PERCH_CHECK(j.value("schema", "") == kConfigSchema, path, ": not a perch quantization config (schema '",
              j.value("schema", ""), "')");
  PERCH_CHECK(j.value("version", 0) == kConfigVersion, path, ": config version ", j.value("version", 0),
              " is not supported (this perch reads version ", kConfigVersion, ")");
  ptq::Selection sel;
  const int64_t group = j.value("group_size", int64_t{16});
  for (const auto& l : j.at("layers")) sel.weights[l.at("node").get<std::string>()] = ptq::WeightChoice::parse(l.at("weights"), group);
  for (const auto& a : j.value("float_activations", json::array())) sel.float_activations.insert(a.get<std::string>());
  const json bits_map = j.value("activation_bits", json::object());  // items() must not outlive the json it reads
  for (const auto& [name, bits] : bits_map.items()) {
    PERCH_CHECK(bits.is_number_integer(), path, ": activation_bits: '", name, "' must map to an integer bit count");
    sel.activation_bits[name] = bits.get<int>();
  }
  return sel;
}

// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  for (size_t at = 0; at < s.size();) {
    const size_t comma = std::min(s.find(',', at), s.size());
    if (comma > at) out.push_back(s.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

// The PTQ options the flags ask for (quantize, and sensitivity's calibration).
ptq::PtqOptions ptq_options(const QuantizeFlags& f) {
  ptq::PtqOptions opt;
  parse_granularity(f.weights, opt.weights);
  opt.weights.bits = f.weight_bits;
  opt.activations.bits = f.act_bits;
  apply_scheme_flags(f, opt);
  opt.bias_correction = !f.no_bias_correction;
  PERCH_CHECK(!(f.empirical_bc && f.no_bias_correction),
              "--empirical-bias-correction and --no-bias-correction exclude each other");
  opt.empirical_bias_correction = f.empirical_bc;
  PERCH_CHECK(f.empirical_bc_samples >= 0, "--empirical-bias-samples must be positive (or 0: automatic)");
  opt.empirical_bias_samples = f.empirical_bc_samples;
  opt.adaround = f.adaround;
  PERCH_CHECK(f.adaround_iters > 0, "--adaround-iters must be positive");
  opt.adaround_options.iterations = f.adaround_iters;
  PERCH_CHECK(f.adaround_samples >= 0, "--adaround-samples must be positive (or 0: all calibration images)");
  opt.adaround_options.samples = f.adaround_samples;
  PERCH_CHECK(!f.adaround_qin || f.adaround, "--adaround-quantized-inputs needs --adaround");
  opt.adaround_options.quantized_inputs = f.adaround_qin;
  PERCH_CHECK(f.search_ranges_images > 0, "--search-ranges-images must be positive");
  PERCH_CHECK(f.search_ranges_sweeps > 0, "--search-ranges-sweeps must be positive");
  opt.search_ranges = f.search_ranges;
  opt.range_search.images = f.search_ranges_images;
  opt.range_search.sweeps = f.search_ranges_sweeps;
  opt.range_search.class_axis = f.class_axis;
  for (const auto& n : split_commas(f.float_nodes)) opt.float_nodes.insert(n);
  for (const auto& item : split_commas(f.activation_bits)) {
    const size_t eq = item.rfind('=');
    int bits = 0;
    const char* end = item.data() + item.size();
    const bool ok = eq != std::string::npos && eq > 0 &&
                    std::from_chars(item.data() + eq + 1, end, bits).ptr == end && eq + 1 < item.size();
    PERCH_CHECK(ok, "--activation-bits: '", item, "' is not NAME=BITS");
    opt.activation_bits[item.substr(0, eq)] = bits;
  }
  return opt;
}

// The calibration images the flags ask for: a seeded sample of --calib-count from --calib (all of them,
// with a warning, when there are fewer). `source`: the name of the whole set.
Dataset calibration_sample(const QuantizeFlags& f, const DataFlags& df, std::string* source = nullptr) {
  PERCH_CHECK(f.calib_count > 0, "--calib-count must be positive");
  Dataset all = load_dataset(f.calib, df.options());
  if (source) *source = all.name;
  if (f.calib_count > all.size() && !quiet())
    std::fprintf(stderr, "warning: %s has %lld images, fewer than --calib-count %lld; using all of them\n",
                 all.name.c_str(), static_cast<long long>(all.size()), static_cast<long long>(f.calib_count));
  return f.calib_count >= all.size() ? all : sample(all, f.calib_count, f.seed);
}

// How unlabelled data is scored (agreement with the float model): `quantize --auto` and `sensitivity`.
void add_fidelity_flags(CLI::App* c, QuantizeFlags& f) {
  c->add_option("--class-axis", f.class_axis,
                "unlabelled data: output axis argmax agreement runs over (0: axis 1, or the last for rank 3)")
      ->capture_default_str();
  c->add_option("--threshold", f.threshold,
                "unlabelled data, one entry on the class axis (a score map): agreement of output > threshold");
}

// Calibration flags `quantize` and `sensitivity` share, so a sensitivity run measures the configuration
// `quantize` would write.
void add_calibration_flags(CLI::App* c, QuantizeFlags& f) {
  c->add_option("--calib", f.calib, "calibration data spec (fashion-mnist:train|test, idx:IMAGES,LABELS, npy:FILE, npy:NAME=FILE,NAME2=FILE2 for a model with several inputs)")
      ->capture_default_str();
  c->add_option("--calib-count", f.calib_count, "calibration images (a seeded random sample)")->capture_default_str();
  c->add_option("--seed", f.seed, "seed of the calibration sample")->capture_default_str();
  c->add_option("--act-bits", f.act_bits, "activation bits (2..8 or 16)")->capture_default_str();
  add_scheme_flags(c, f);
  c->add_flag("--no-bias-correction", f.no_bias_correction, "skip bias correction (of weight rounding; for quantize, the empirical one too)");
}

// `perch quantize --dynamic`: weights now, activations at run time (ptq/dynamic.h); no calibration data.
int cmd_quantize_dynamic(const QuantizeFlags& f, bool as_json, const DataFlags& df) {
  if (!f.static_only_given.empty()) {
    std::string list;
    for (const auto& o : f.static_only_given) list += (list.empty() ? "" : ", ") + o;
    PERCH_FAIL("--dynamic quantizes activations at run time, without calibration: ", list,
               (f.static_only_given.size() == 1 ? " does" : " do"), " not apply to it");
  }
  graph::Model model = graph::load_model(f.model);
  const int float16_widened = upcast_float16_with_note(model);
  ptq::DynamicOptions opt;
  parse_granularity(f.weights, opt.weights);
  opt.weights.bits = f.weight_bits;
  opt.weights.estimator.kind = quant::parse_estimator(f.weight_estimator);
  opt.equalize = !f.no_equalize;
  opt.fold_affine = !f.no_fold_affine;
  opt.op_types.clear();
  for (const auto& op : split_commas(f.dynamic_ops)) opt.op_types.insert(op);
  PERCH_CHECK(!opt.op_types.empty(), "--dynamic-ops: name at least one of Conv, Gemm, MatMul");
  for (const auto& n : split_commas(f.float_nodes)) opt.float_nodes.insert(n);
  const ptq::DynamicResult res = ptq::quantize_dynamic(model, opt);
  if (!f.output.empty()) graph::save_model(res.model, f.output);

  json kept = json::array();
  for (const auto& [node, why] : res.kept_float) kept.push_back({{"node", node}, {"reason", why}});
  json j = {{"model", f.model}, {"output", f.output}, {"mode", "dynamic"}, {"weights", f.weights},
            {"weight_bits", f.weight_bits}, {"dynamic_inputs", res.dynamic_inputs},
            {"float16_values_widened", float16_widened}, {"kept_float", kept},
            {"equalization", {{"pairs", res.equalization.pairs}, {"sweeps", res.equalization.sweeps},
                              {"max_spread_before", res.equalization.max_spread_before},
                              {"max_spread_after", res.equalization.max_spread_after}}},
            {"quantize_seconds", res.seconds}, {"layers", layers_json(res.layers)}};
  if (!as_json && !quiet()) {
    for (const auto& [node, why] : res.kept_float) std::fprintf(stderr, "note: %s stays float: %s\n", node.c_str(), why.c_str());
    std::fprintf(stderr, "dynamically quantized %zu weight layers (%s, %d-bit), %lld inputs quantized at run time, in %.2fs (%s)\n",
                 res.layers.size(), f.weights.c_str(), f.weight_bits, static_cast<long long>(res.dynamic_inputs),
                 res.seconds, res.canonicalize_summary.c_str());
    if (res.equalization.pairs)
      std::fprintf(stderr, "cross-layer equalization: %d layer pairs, %d sweeps, max channel spread %.1f -> %.1f\n",
                   res.equalization.pairs, res.equalization.sweeps, res.equalization.max_spread_before,
                   res.equalization.max_spread_after);
    if (!f.output.empty()) std::fprintf(stderr, "wrote %s\n", f.output.c_str());
  }
  if (!f.eval.empty()) {
    const Dataset test = load_dataset(f.eval, df.options());
    graph::Model fp = model;
    graph::canonicalize(fp);
    const auto fp32 = ptq::evaluate(runtime::Executor(fp), test, 64, "eval fp32");
    const std::string name = "dynamic W" + std::to_string(f.weight_bits) + "A8 " + f.weights + (opt.equalize ? " +CLE" : "");
    const auto q = ptq::evaluate(runtime::Executor(res.model), test, 64, "eval " + name);
    j["quantized_label"] = name;
    j["quantized_accuracy"] = q.accuracy();
    j["accuracy"] = {{"fp32", fp32.accuracy()}, {name, q.accuracy()}};
    j["eval"] = {{"data", test.name}, {"count", test.size()}};
    if (!as_json) {
      std::printf("%s on %s (%lld images), no calibration (activations quantized at run time)\n", f.model.c_str(),
                  test.name.c_str(), static_cast<long long>(test.size()));
      const int width = std::max<int>(34, static_cast<int>(name.size()));
      std::printf("  %-*s %8s %8s\n", width, "configuration", "top-1", "vs fp32");
      std::printf("  %-*s %8s %+7.2f pt\n", width, "fp32", fmt_acc(fp32.accuracy()).c_str(), 0.0);
      std::printf("  %-*s %8s %+7.2f pt%s\n", width, name.c_str(), fmt_acc(q.accuracy()).c_str(),
                  100.0 * (q.accuracy() - fp32.accuracy()), f.output.empty() ? "" : "   <- written");
    }
  }
  if (as_json) std::cout << j.dump(2) << "\n";
  return 0;
}

int cmd_quantize(const QuantizeFlags& f, bool as_json, const DataFlags& df) {
  if (f.dynamic) return cmd_quantize_dynamic(f, as_json, df);
  const std::string& model_path = f.model;
  const std::string& out_path = f.output;
  const std::string& weights = f.weights;
  const int wbits = f.weight_bits, abits = f.act_bits;
  graph::Model model = graph::load_model(model_path);
  const int float16_widened = upcast_float16_with_note(model);
  ptq::check_finite_weights(model);  // NaN/Inf weights: refused, naming the tensor (ptq/validate.h)
  ptq::PtqOptions opt = ptq_options(f);

  std::optional<ptq::Selection> selection;
  json selection_report;
  PERCH_CHECK(f.act_fallback_bits == 0 || f.auto_select, "--act-fallback-bits needs --auto");
  if (!f.config.empty()) {  // checked before the (slow) calibration
    PERCH_CHECK(!f.auto_select, "--config and --auto exclude each other");
    selection = selection_from_json(f.config);
    for (const auto& [node, c] : selection->weights) {
      bool found = false;
      for (const auto& n : model.graph.nodes) found |= n.name == node;
      PERCH_CHECK(found, f.config, ": layer '", node, "' is not in ", model_path);
    }
    opt = ptq::apply_selection(opt, *selection);
  }
  std::string calib_source;
  const Dataset calib = calibration_sample(f, df, &calib_source);

  ptq::Calibration cal = ptq::calibrate(model, calib, opt);
  // AdaRound runs after the selection (which may change each layer's weight configuration), except under
  // --prefer integer with float inputs: there every weight stays int8 per-channel and the rounding does not depend
  // on which activations are quantized, so it runs first and the selection measures the weights the model will have.
  json adaround_report;
  auto run_adaround = [&] {
    const ptq::AdaRoundReport ar = ptq::round_weights_adaptively(cal, calib, opt);
    int64_t changed = 0, elements = 0, kept = 0;
    double before = 0, after = 0;
    json layers = json::array();
    for (const auto& l : ar.layers) {
      changed += l.stats.changed;
      elements += l.elements;
      kept += l.stats.kept_nearest;
      before += l.stats.loss_nearest;
      after += l.stats.loss;
      layers.push_back({{"node", l.node}, {"weight", l.weight}, {"elements", l.elements}, {"changed", l.stats.changed},
                        {"loss_nearest", l.stats.loss_nearest}, {"loss", l.stats.loss}, {"kept_nearest", l.stats.kept_nearest}});
    }
    adaround_report = {{"layers", layers}, {"images", ar.images}, {"iterations", opt.adaround_options.iterations},
                       {"changed", changed}, {"elements", elements}, {"seconds", ar.seconds}};
    if (!as_json && !quiet())
      std::fprintf(stderr,
                   "adaround: %zu layers on %lld images, %lld of %lld weights rounded the other way, output error "
                   "(sum over layers) %.4g -> %.4g, nearest kept for %lld layers (%.1fs)\n",
                   ar.layers.size(), static_cast<long long>(ar.images), static_cast<long long>(changed),
                   static_cast<long long>(elements), before, after, static_cast<long long>(kept), ar.seconds);
  };
  const bool adaround_first = opt.adaround && !opt.adaround_options.quantized_inputs && f.auto_select &&
                              ptq::parse_preference(f.prefer) == ptq::Preference::kInteger;
  if (adaround_first) run_adaround();
  if (f.auto_select) {
    Dataset data = load_dataset(f.data, df.options());
    PERCH_CHECK(data.size() >= 2, f.data, ": need at least 2 images to split into selection and verification parts");
    const std::pair<Dataset, Dataset> halves = split_halves(data);  // each shape group halved
    const Dataset &sel_part = halves.first, &ver_part = halves.second;
    selection = ptq::select_config(cal, sel_part, ver_part, opt, ptq::parse_preference(f.prefer), f.max_drop / 100.0,
                                   f.group_size, f.fidelity(), f.act_fallback_bits);
    opt = ptq::apply_selection(opt, *selection);
    selection_report = selection_json(*selection, f);
    if (!as_json && !quiet()) {
      std::fprintf(stderr,
                   "auto (--prefer %s, --max-drop %.2f pt, %s): selection split drop %.2f pt, verification split drop %.2f pt; "
                   "int4 share of weight bytes %.1f%%, per-tensor layers %.0f%%; activations: %zu float, %zu at other bits\n",
                   f.prefer.c_str(), f.max_drop, selection->metric.c_str(), 100 * (selection->fp32_select - selection->quant_select),
                   100 * (selection->fp32_verify - selection->quant_verify), 100 * selection->int4_byte_fraction,
                   100 * selection->per_tensor_layer_fraction, selection->float_activations.size(),
                   selection->activation_bits.size());
    }
    if (!f.save_config.empty()) write_file_atomic(f.save_config, selection_report.dump(2) + "\n");
  }
  if (opt.adaround && !adaround_first) run_adaround();
  json empirical_report, range_report;
  auto run_empirical_correction = [&] {
    if (!opt.bias_correction || !opt.empirical_bias_correction) return;
    const ptq::EmpiricalBiasReport er = ptq::correct_biases_empirically(cal, calib, opt);
    empirical_report = {{"layers", er.layers}, {"images", er.images}, {"max_shift", er.max_shift}, {"seconds", er.seconds}};
    if (!as_json && !quiet())
        std::fprintf(stderr, "empirical bias correction: %lld layers on %lld images, largest channel shift %.4g (%.1fs)\n",
                   static_cast<long long>(er.layers), static_cast<long long>(er.images), er.max_shift, er.seconds);
  };
  run_empirical_correction();
  if (opt.search_ranges) {
    const ptq::RangeSearchReport rr = ptq::search_activation_ranges(cal, calib, opt);
    json moves = json::array();
    for (const auto& m : rr.moves)
      moves.push_back({{"activation", m.activation}, {"before", {m.lo_before, m.hi_before}}, {"after", {m.lo, m.hi}},
                       {"error", m.error}});
    range_report = {{"objective", rr.objective}, {"images", rr.images}, {"grids", rr.grids}, {"candidates", rr.candidates},
                    {"error_before", rr.error_before}, {"error_after", rr.error_after}, {"moves", moves},
                    {"seconds", rr.seconds}};
    if (!as_json && !quiet())
      std::fprintf(stderr, "range search: %zu of %lld activation grids moved on %lld images, output error (%s) %.4g -> %.4g (%.1fs)\n",
                   rr.moves.size(), static_cast<long long>(rr.grids), static_cast<long long>(rr.images),
                   rr.objective.c_str(), rr.error_before, rr.error_after, rr.seconds);
    run_empirical_correction();  // the shifts measured with the old grids
  }
  ptq::PtqResult res = ptq::build_quantized(cal, opt);
  if (!out_path.empty()) graph::save_model(res.model, out_path);

  json j = {{"model", model_path}, {"output", out_path}, {"calibration", {{"data", calib.name}, {"images", res.calibration_images}, {"seconds", res.calibration_seconds}}},
            {"weights", weights}, {"weight_bits", wbits}, {"act_bits", abits}, {"act_estimator", f.act_estimator},
            {"activations_quantized", res.activations_quantized},
            {"float16_values_widened", float16_widened},
            {"nonfinite_values_skipped", res.nonfinite_values},
            {"equalization", {{"pairs", res.equalization.pairs}, {"sweeps", res.equalization.sweeps},
                              {"max_spread_before", res.equalization.max_spread_before},
                              {"max_spread_after", res.equalization.max_spread_after},
                              {"depthwise_pairs", res.equalization.depthwise_pairs},
                              {"max_depthwise_gain", res.equalization.max_depthwise_gain}}}, {"quantize_seconds", res.total_seconds},
            {"layers", layers_json(res.layers)}};
  if (!selection_report.is_null()) j["auto"] = selection_report;
  if (!empirical_report.is_null()) j["empirical_bias_correction"] = empirical_report;
  if (!adaround_report.is_null()) j["adaround"] = adaround_report;
  if (!range_report.is_null()) j["range_search"] = range_report;
  if (!as_json && !quiet()) {
    std::fprintf(stderr, "quantized %zu weight layers (%s), %lld activations in %.2fs (%s)\n", res.layers.size(),
                 weights.c_str(), static_cast<long long>(res.activations_quantized), res.total_seconds,
                 res.canonicalize_summary.c_str());
    if (res.nonfinite_values)
      std::fprintf(stderr, "warning: %lld NaN/Inf activation values were skipped during calibration\n",
                   static_cast<long long>(res.nonfinite_values));
    if (res.equalization.pairs)
      std::fprintf(stderr, "cross-layer equalization: %d layer pairs, %d sweeps, max channel spread %.1f -> %.1f\n",
                   res.equalization.pairs, res.equalization.sweeps, res.equalization.max_spread_before,
                   res.equalization.max_spread_after);
    if (res.equalization.depthwise_pairs)
      std::fprintf(stderr, "depthwise input equalization: %d conv -> depthwise pairs, largest channel gain %.1f\n",
                   res.equalization.depthwise_pairs, res.equalization.max_depthwise_gain);
    if (!out_path.empty()) std::fprintf(stderr, "wrote %s\n", out_path.c_str());
  }

  if (!f.eval.empty()) {
    Dataset test = load_dataset(f.eval, df.options());
    struct Row { std::string name; double acc; bool output; };
    std::vector<Row> rows;
    graph::Model fp = model;
    graph::canonicalize(fp);
    auto fp32 = ptq::evaluate(runtime::Executor(fp), test, 64, "eval fp32");
    rows.push_back({"fp32", fp32.accuracy(), false});
    const std::string bits = "W" + std::to_string(wbits) + "A" + std::to_string(abits) + " ";
    auto label = [&](const std::string& g, bool eq, bool bc, bool ar) {
      return bits + g + (eq ? " +CLE" : "") + (ar ? " +AdaRound" : "") + (bc ? " +BC" : "") +
             (bc && opt.empirical_bias_correction ? " +EBC" : "");
    };
    if (f.compare) {
      // The textbook comparison first (plain min/max PTQ: no equalization, no bias correction): what
      // per-tensor weights cost and per-channel recovers; then both with perch's full pipeline. The
      // written model is the last row.
      for (bool tuned : {false, true})
        for (const std::string g : {"per-tensor", "per-channel"}) {
          if (g == weights && tuned == opt.equalize && tuned == opt.bias_correction) continue;
          ptq::PtqOptions o2 = opt;
          parse_granularity(g, o2.weights);
          o2.equalize = o2.bias_correction = tuned;
          o2.adaround = tuned && opt.adaround;
          auto r2 = ptq::quantize_model(model, calib, o2);
          const std::string name = label(g, tuned, tuned, tuned && opt.adaround);
          auto e2 = ptq::evaluate(runtime::Executor(r2.model), test, 64, "eval " + name);
          rows.push_back({name, e2.accuracy(), false});
        }
    }
    const std::string name = label(weights, opt.equalize, opt.bias_correction, opt.adaround);
    auto q = ptq::evaluate(runtime::Executor(res.model), test, 64, "eval " + name);
    rows.push_back({name, q.accuracy(), true});
    j["quantized_label"] = name;
    j["quantized_accuracy"] = q.accuracy();
    json acc = json::object();
    for (const auto& r : rows) acc[r.name] = r.acc;
    j["accuracy"] = acc;
    j["eval"] = {{"data", test.name}, {"count", test.size()}};
    if (!as_json) {
      std::printf("%s on %s (%lld images), calibration %lld images of %s\n", model_path.c_str(), test.name.c_str(),
                  static_cast<long long>(test.size()), static_cast<long long>(calib.size()), calib_source.c_str());
      int width = 34;  // the longest row name
      for (const auto& r : rows) width = std::max(width, static_cast<int>(r.name.size()));
      std::printf("  %-*s %8s %8s\n", width, "configuration", "top-1", "vs fp32");
      for (const auto& r : rows)
        std::printf("  %-*s %8s %+7.2f pt%s\n", width, r.name.c_str(), fmt_acc(r.acc).c_str(), 100.0 * (r.acc - fp32.accuracy()),
                    r.output && !out_path.empty() ? "   <- written" : "");
    }
  }
  if (!f.report.empty()) {
    ptq::ReportInput ri;
    ri.title = "perch quantization report: " + model_path;
    graph::Model as_given = model;  // ranges as the user's model has them (BN folded, not equalized)
    graph::canonicalize(as_given);
    ri.model = &as_given;
    ri.selection = selection ? &*selection : nullptr;
    if (j.contains("accuracy"))
      for (const auto& [k, v] : j["accuracy"].items()) ri.accuracy.emplace_back(k, v.get<double>());
    if (selection) {
      ri.accuracy.emplace_back("fp32 (verification split)", selection->fp32_verify);
      ri.accuracy.emplace_back("chosen (verification split)", selection->quant_verify);
    }
    if (ri.accuracy.empty()) ri.accuracy.emplace_back("(no evaluation: pass --eval)", 0.0);
    write_file_atomic(f.report, ptq::render_report_html(ri));
  }
  if (as_json) std::cout << j.dump(2) << "\n";
  return 0;
}

struct SensitivityFlags {
  QuantizeFlags q;  // model, calibration data and options, evaluation --data, fidelity scoring
  std::string report;
  std::string candidates = "int8 per-tensor,int8 per-channel,int4 per-channel,int4 per-group";
  int64_t eval_count = 2000, batch = 0;
  bool no_activations = false;
};

int cmd_sensitivity(const SensitivityFlags& sf, bool as_json, const DataFlags& df) {
  const std::string& model_path = sf.q.model;
  std::vector<ptq::WeightChoice> candidates;
  for (const auto& label : split_commas(sf.candidates)) {
    candidates.push_back(ptq::WeightChoice::parse(label, sf.q.group_size));
    PERCH_CHECK(!candidates.back().is_float, "--candidates: fp32 is the reference every variant is measured against, not a candidate");
  }
  PERCH_CHECK(!candidates.empty(), "--candidates: no weight configuration given");
  PERCH_CHECK(sf.batch >= 0, "--batch must be positive (or 0: automatic)");
  graph::Model model = graph::load_model(model_path);
  upcast_float16_with_note(model);
  ptq::check_finite_weights(model);
  const ptq::PtqOptions opt = ptq_options(sf.q);
  const Dataset calib = calibration_sample(sf.q, df);
  Dataset data = load_dataset(sf.q.data, df.options());
  if (sf.eval_count > 0 && sf.eval_count < data.size()) data = take_spread(data, sf.eval_count);
  const ptq::Calibration cal = ptq::calibrate(model, calib, opt);
  ptq::SensitivityScope scope;
  scope.activations = !sf.no_activations;
  const auto rep = ptq::sensitivity(cal, data, opt, candidates, sf.batch, scope, sf.q.fidelity());
  json layers = json::array();
  for (const auto& l : rep.layers) {
    json cfg = json::object();
    for (size_t i = 0; i < l.configs.size(); ++i)
      cfg[l.configs[i]] = {{"alone", {{"accuracy_drop_pt", 100 * l.alone[i].accuracy_drop}, {"sqnr_db", l.alone[i].sqnr_db}}},
                           {"all_but", {{"accuracy_drop_pt", 100 * l.all_but[i].accuracy_drop}, {"sqnr_db", l.all_but[i].sqnr_db}}}};
    json e = {{"name", l.name}, {"kind", l.kind}, {"configs", cfg}};
    if (l.kind == "weights") {
      e["op"] = l.op_type;
      e["shape"] = l.weight_shape;
      e["spread"] = std::isfinite(l.spread) ? json(l.spread) : json("inf");
    }
    layers.push_back(e);
  }
  json all = json::object();
  for (size_t i = 0; i < rep.configs.size(); ++i)
    all[rep.configs[i]] = {{"accuracy_drop_pt", 100 * rep.all_quantized[i].accuracy_drop}, {"sqnr_db", rep.all_quantized[i].sqnr_db}};
  json j = {{"model", model_path}, {"data", data.name}, {"images", rep.eval_images}, {"fp32_accuracy", rep.fp32_accuracy},
            {"all_quantized", all}, {"layers", layers}, {"variants", rep.variants}, {"node_runs", rep.node_runs},
            {"node_runs_without_cache", rep.node_runs_without_cache}, {"seconds", rep.seconds},
            {"metric", rep.metric}, {"candidates", rep.configs}};
  const bool agreement = rep.metric == "agreement";
  if (agreement) {
    j["class_axis"] = rep.class_axis;
    j["positions"] = rep.positions;
    if (std::isfinite(rep.threshold)) j["threshold"] = rep.threshold;
  }
  const std::string& report = sf.report;
  if (!report.empty()) {
    ptq::ReportInput ri;
    ri.title = "perch sensitivity: " + model_path;
    graph::Model as_given = model;  // ranges as the user's model has them (BN folded, not equalized)
    graph::canonicalize(as_given);
    ri.model = &as_given;
    ri.sensitivity = &rep;
    ri.accuracy.emplace_back("fp32", rep.fp32_accuracy);
    for (size_t i = 0; i < rep.configs.size(); ++i)
      ri.accuracy.emplace_back("all layers " + rep.configs[i], rep.fp32_accuracy - rep.all_quantized[i].accuracy_drop);
    write_file_atomic(report, ptq::render_report_html(ri));
  }
  if (as_json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  char what[160];
  if (!agreement) std::snprintf(what, sizeof what, "fp32 top-1 %.4f", rep.fp32_accuracy);
  else if (std::isfinite(rep.threshold))
    std::snprintf(what, sizeof what, "no labels: agreement with fp32 of output > %g, %lld positions", rep.threshold,
                  static_cast<long long>(rep.positions));
  else
    std::snprintf(what, sizeof what, "no labels: argmax agreement with fp32 along axis %lld, %lld positions",
                  static_cast<long long>(rep.class_axis), static_cast<long long>(rep.positions));
  std::printf("%s: %lld images of %s, %s; %lld variants, %lld node runs (%lld without prefix caching) in %.1fs\n",
              model_path.c_str(), static_cast<long long>(rep.eval_images), data.name.c_str(), what,
              static_cast<long long>(rep.variants), static_cast<long long>(rep.node_runs),
              static_cast<long long>(rep.node_runs_without_cache), rep.seconds);
  std::printf("%s drop in points, quantizing only this layer (alone) / all but this layer (all-but)\n",
              agreement ? "agreement" : "accuracy");
  std::printf("  %-28s %-10s %8s", "layer", "kind", "spread");
  for (const auto& c : rep.configs) std::printf(" %20s", c.c_str());
  std::printf("\n  %-28s %-10s %8s", "(every layer)", "", "");
  for (const auto& m : rep.all_quantized) std::printf(" %20.2f", 100 * m.accuracy_drop);
  std::printf("\n");
  for (const auto& l : rep.layers) {
    std::printf("  %-28s %-10s %8s", l.name.substr(0, 28).c_str(), l.kind.c_str(),
                l.kind == "weights" ? fmt_acc(l.spread).substr(0, 8).c_str() : "");
    for (size_t i = 0; i < l.configs.size(); ++i) {
      char cell[32];
      std::snprintf(cell, sizeof cell, "%.2f / %.2f", 100 * l.alone[i].accuracy_drop, 100 * l.all_but[i].accuracy_drop);
      std::printf(" %20s", cell);
    }
    std::printf("\n");
  }
  return 0;
}

int cmd_eval(const std::string& model_path, const std::string& spec, int64_t batch, bool as_json, const DataFlags& df) {
  graph::Model model = graph::load_model(model_path);
  graph::canonicalize(model);
  runtime::Executor exec(model);
  Dataset data = load_dataset(spec, df.options());
  auto r = ptq::evaluate(exec, data, batch);
  if (as_json) {
    std::cout << json{{"model", model_path}, {"data", data.name}, {"accuracy", r.accuracy()}, {"count", r.count},
                      {"correct", r.correct}, {"seconds", r.seconds}}.dump()
              << "\n";
  } else {
    std::printf("%s on %s: top-1 %s (%lld/%lld) in %.2fs\n", model_path.c_str(), data.name.c_str(),
                fmt_acc(r.accuracy()).c_str(), static_cast<long long>(r.correct), static_cast<long long>(r.count), r.seconds);
  }
  return 0;
}

int cmd_run(const std::string& model_path, const std::vector<std::string>& inputs, const std::string& out_dir,
            const std::string& engine, bool as_json) {
  PERCH_CHECK(engine == "fp32" || engine == "int8" || engine == "sim", "--engine must be fp32, int8 or sim, got '",
              engine, "'");
  graph::Model model = graph::load_model(model_path);
  runtime::TensorMap in;
  for (const auto& spec : inputs) {
    const auto eq = spec.find('=');
    PERCH_CHECK(eq != std::string::npos, "--input '", spec, "': expected NAME=FILE.npy");
    in[spec.substr(0, eq)] = read_npy(spec.substr(eq + 1));
  }
  runtime::TensorMap out;
  auto check_input = [&](const std::string& input_name) {
    if (inputs.size() == 1 && in.count(input_name) == 0 && model.graph.inputs.size() == 1)
      PERCH_FAIL(model_path, ": input '", in.begin()->first, "' is not a graph input (the model's input is '",
                 input_name, "')");
  };
  if (engine == "fp32") {
    runtime::Executor exec(model);
    check_input(exec.input_name());
    out = exec.run(in);
  } else {
    runtime::Int8Executor exec(model, engine == "int8" ? runtime::Int8Mode::kInteger : runtime::Int8Mode::kSimulate);
    if (exec.report().float_nodes() > 0 && !quiet()) std::fprintf(stderr, "perch: note: %s\n", exec.report().summary().c_str());
    check_input(exec.input_name());
    out = exec.run(in);
  }
  std::filesystem::create_directories(out_dir);
  json j = json::object();
  for (const auto& o : model.graph.outputs) {
    std::string fname = o.name;
    for (char& c : fname)  // same rule as tools/ort/run.js: anything but [A-Za-z0-9._-] becomes '_'
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
    const auto path = std::filesystem::path(out_dir) / (fname + ".npy");
    write_npy(path, out.at(o.name));
    j[o.name] = {{"file", path.string()}, {"shape", out.at(o.name).shape()}, {"dtype", dtype_name(out.at(o.name).dtype())}};
    if (!as_json) std::printf("%s %s -> %s\n", o.name.c_str(), shape_str(out.at(o.name).shape()).c_str(), path.string().c_str());
  }
  if (as_json) std::cout << j.dump() << "\n";
  return 0;
}

int cmd_inspect(const std::string& model_path, bool as_json) {
  graph::Model model = graph::load_model(model_path);
  const std::string summary = graph::canonicalize(model);
  const auto& g = model.graph;
  json layers = json::array();
  if (!as_json) {
    std::printf("%s: opset %lld, %zu nodes, %zu initializers (%s)\n", model_path.c_str(),
                static_cast<long long>(model.opset()), g.nodes.size(), g.initializers.size(), summary.c_str());
    for (const auto& i : g.inputs) std::printf("  input  %s %s %s\n", i.name.c_str(), dtype_name(i.dtype), shape_str(i.shape).c_str());
    for (const auto& o : g.outputs) std::printf("  output %s %s %s\n", o.name.c_str(), dtype_name(o.dtype), shape_str(o.shape).c_str());
    std::printf("  %-24s %-8s %-18s %5s %10s  %s\n", "layer", "op", "weight shape", "axis", "spread", "note");
  }
  for (const auto& n : g.nodes) {
    if (!ptq::quantizes_weights(n.op_type)) continue;
    const Tensor* w0 = g.initializer(n.input(1));
    if (!w0 || (w0->dtype() != DType::kFloat32 && !is_half_type(w0->dtype()))) continue;
    const Tensor wf = w0->to_f32();  // float16 weights: listed (quantize refuses the model until it is float32)
    const Tensor* w = &wf;
    const int64_t axis = ptq::weight_channel_axis(n, w->rank());
    const double spread = ptq::channel_spread(*w, axis);
    std::string note = is_half_type(w0->dtype()) ? dtype_name(w0->dtype()) : "";
    if (n.op_type == "Conv" && n.attr_int("group", 1) > 1)
      note += std::string(note.empty() ? "" : ", ") +
              (n.attr_int("group", 1) == w->dim(0) ? "depthwise" : "grouped(" + std::to_string(n.attr_int("group", 1)) + ")");
    if (spread > 10) note += std::string(note.empty() ? "" : ", ") + "per-tensor risky";
    layers.push_back({{"node", n.name}, {"op", n.op_type}, {"shape", w->shape()}, {"axis", axis},
                      {"spread", std::isfinite(spread) ? json(spread) : json("inf")}, {"note", note}});
    if (!as_json)
      std::printf("  %-24s %-8s %-18s %5lld %10.2f  %s\n", n.name.c_str(), n.op_type.c_str(), shape_str(w->shape()).c_str(),
                  static_cast<long long>(axis), spread, note.c_str());
  }
  if (as_json) {
    std::cout << json{{"model", model_path}, {"opset", model.opset()}, {"nodes", g.nodes.size()}, {"layers", layers}}.dump(2) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"perch — per-channel-first quantization of ONNX models"};
  app.require_subcommand(1);
  app.fallthrough();  // --quiet works before or after the subcommand
  bool quiet_flag = false, as_json = false;
  app.add_flag("--quiet,-q", quiet_flag, "no progress or notes on stderr");

  DataFlags df;
  // quantize
  auto* q = app.add_subcommand("quantize", "calibrate and quantize a float ONNX model to a QDQ ONNX model");
  QuantizeFlags qf;
  q->add_option("model", qf.model, "float ONNX model")->required();
  q->add_option("-o,--output", qf.output, "QDQ ONNX model to write");
  add_calibration_flags(q, qf);
  q->add_option("--weights", qf.weights, "per-channel | per-tensor | per-group:G")->capture_default_str();
  q->add_option("--weight-bits", qf.weight_bits, "weight bits (2..8)")->capture_default_str();
  q->add_option("--eval", qf.eval, "evaluate fp32 and quantized accuracy on this data spec");
  q->add_flag("--compare", qf.compare, "with --eval: also plain per-tensor / per-channel PTQ and perch's pipeline");
  q->add_flag("--empirical-bias-correction", qf.empirical_bc,
              "after calibration, also remove each layer's mean output difference between the float model and the "
              "simulated quantized model (activation effects included), layer by layer, from its bias");
  q->add_option("--empirical-bias-samples", qf.empirical_bc_samples,
                "calibration images the empirical correction uses, in one batch (0: up to 256, at most 64 MiB of input)")
      ->capture_default_str();
  q->add_flag("--adaround", qf.adaround,
              "round each weight up or down to minimise its layer's output error on the calibration images "
              "(AdaRound), instead of to nearest");
  q->add_option("--adaround-iters", qf.adaround_iters, "with --adaround: Adam steps per layer")->capture_default_str();
  q->add_flag("--adaround-quantized-inputs", qf.adaround_qin,
              "with --adaround: fit each layer on the quantized model's input to the float layer's output on the "
              "float input (weights also absorb their input's quantization error)");
  q->add_option("--adaround-samples", qf.adaround_samples,
                "with --adaround: calibration images for the layer inputs' second moments (0: all)")
      ->capture_default_str();
  q->add_flag("--search-ranges", qf.search_ranges,
              "after calibration (and the empirical correction, which then runs again), refine each activation's "
              "range by the model's output error against the float model on calibration images (coordinate search "
              "over the grid ends; docs/QUANTIZATION.md)");
  q->add_option("--search-ranges-images", qf.search_ranges_images,
                "with --search-ranges: the first N calibration images the output error is measured on")
      ->capture_default_str();
  q->add_option("--search-ranges-sweeps", qf.search_ranges_sweeps, "with --search-ranges: passes over the activations")
      ->capture_default_str();
  q->add_option("--float-nodes", qf.float_nodes,
                 "comma-separated Conv/Gemm/MatMul node names whose weights stay float (per-layer sensitivity)");
  q->add_option("--activation-bits", qf.activation_bits,
                "comma-separated NAME=BITS: these activations at other bits than --act-bits (e.g. 16 where 8 "
                "bits cost too much; mixed precision, opset 21)");
  q->add_flag("--auto", qf.auto_select, "choose per layer among fp32/int8/int4 weights under --max-drop");
  q->add_option("--act-fallback-bits", qf.act_fallback_bits,
                "with --auto: activations climb to this many bits (e.g. 16) before float (0: straight to float)")
      ->capture_default_str();
  q->add_option("--max-drop", qf.max_drop, "with --auto: largest accepted drop (top-1, or agreement without labels), in points")->capture_default_str();
  q->add_option("--prefer", qf.prefer, "with --auto: per-tensor | small | fast | integer (weights stay int8)")->capture_default_str();
  q->add_option("--data", qf.data,
                "with --auto: data split into selection and verification halves; labelled (top-1 drop) or not "
                "(agreement with the float model, --class-axis/--threshold)")
      ->capture_default_str();
  add_fidelity_flags(q, qf);
  q->add_option("--group-size", qf.group_size, "group size of int4 per-group candidates")->capture_default_str();
  q->add_option("--save-config", qf.save_config, "with --auto: write the chosen configuration (JSON)");
  q->add_option("--config", qf.config, "apply a configuration saved by --save-config");
  q->add_option("--report", qf.report, "write a self-contained HTML report");
  q->add_flag("--dynamic", qf.dynamic,
              "dynamic quantization: int8 weights (--weights, --weight-bits), each layer input quantized per tensor "
              "at run time by DynamicQuantizeLinear into MatMulInteger/ConvInteger; no calibration data");
  q->add_option("--dynamic-ops", qf.dynamic_ops, "with --dynamic: the layer types to quantize")->capture_default_str();
  q->add_flag("--json", as_json, "print a JSON report on stdout");
  df.add(q);

  // sensitivity
  auto* sens = app.add_subcommand("sensitivity", "per-layer sensitivity to int8/int4 per-tensor/per-channel/per-group");
  SensitivityFlags sf;
  sens->add_option("model", sf.q.model, "float ONNX model")->required();
  add_calibration_flags(sens, sf.q);
  sens->add_option("--data", sf.q.data,
                   "evaluation data spec: labelled (top-1 drop) or unlabelled (agreement with the float model)")
      ->capture_default_str();
  sens->add_option("--eval-count", sf.eval_count, "evaluation images (first N; 0 = all)")->capture_default_str();
  sens->add_option("--candidates", sf.candidates,
                   "comma-separated weight configurations to measure (int8|int4 per-tensor|per-channel|per-group[:G])")
      ->capture_default_str();
  sens->add_option("--group-size", sf.q.group_size, "group size of the int4 per-group candidate")->capture_default_str();
  sens->add_flag("--no-activations", sf.no_activations, "measure weight layers only");
  add_fidelity_flags(sens, sf.q);
  sens->add_option("--batch", sf.batch, "images per evaluation batch (every value of a batch is cached; 0: as many as fit in 2 GiB, up to 64)")
      ->capture_default_str();
  sens->add_option("--report", sf.report, "write a self-contained HTML report");
  sens->add_flag("--json", as_json, "JSON output");
  df.add(sens);

  // eval
  auto* e = app.add_subcommand("eval", "top-1 accuracy of a float or QDQ model");
  std::string model_path, data_spec = "fashion-mnist:test", engine = "fp32";
  int64_t batch = 64;
  e->add_option("model", model_path, "ONNX model")->required();
  e->add_option("--data", data_spec, "data spec")->capture_default_str();
  e->add_option("--batch", batch, "batch size")->capture_default_str();
  e->add_flag("--json", as_json, "print {\"accuracy\", \"count\", ...} on stdout");
  e->add_option("--engine", engine, "int8 (integer executor) | sim (its exact float simulation) | fp32 (float executor)");
  df.add(e);
  perch::cli::BenchCommand bench(app);

  // run
  auto* r = app.add_subcommand("run", "run a model on .npy inputs, write each output as DIR/<name>.npy");
  std::vector<std::string> inputs;
  std::string out_dir;
  r->add_option("model", model_path, "ONNX model")->required();
  r->add_option("--input,-i", inputs, "NAME=FILE.npy (repeatable)")->required();
  r->add_option("-o,--output", out_dir, "output folder")->required();
  std::string run_engine = "fp32";
  r->add_option("--engine", run_engine, "fp32 (ONNX semantics, float kernels) | int8 (integer runtime) | sim (its exact simulation)")
      ->capture_default_str();
  r->add_flag("--json", as_json, "print a JSON summary");

  // inspect
  auto* ins = app.add_subcommand("inspect", "list weight layers with shapes and per-channel range spread");
  ins->add_option("model", model_path, "ONNX model")->required();
  ins->add_flag("--json", as_json, "JSON output");

  auto run_train = cli::add_train_commands(app, as_json);

  // The first word that is not an option must be a command: name an unknown or missing one, with the list (CLI11
  // would only say that a subcommand is required).
  std::string known;
  std::set<std::string> commands;
  for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    known += (known.empty() ? "" : ", ") + sub->get_name();
    commands.insert(sub->get_name());
  }
  bool help = false, command = false;
  for (int i = 1; i < argc && !command; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") help = true;
    if (a.empty() || a[0] == '-') continue;
    if (!commands.count(a)) {
      std::fprintf(stderr, "perch: error: unknown command '%s' (commands: %s; perch --help)\n", a.c_str(), known.c_str());
      return 2;
    }
    command = true;
  }
  if (!command && !help) {
    std::fprintf(stderr, "perch: error: a command is required (commands: %s; perch --help)\n", known.c_str());
    return 2;
  }
  CLI11_PARSE(app, argc, argv);
  set_quiet(quiet_flag || as_json);
  try {
    if (q->parsed()) {
      for (const char* o : {"--calib", "--calib-count", "--seed", "--act-bits", "--act-signed", "--act-estimator",
                            "--percentile", "--no-equalize-depthwise", "--no-fuse-chains", "--ignore-nonfinite",
                            "--no-bias-correction", "--empirical-bias-correction", "--empirical-bias-samples",
                            "--adaround", "--adaround-iters", "--adaround-quantized-inputs", "--adaround-samples",
                            "--search-ranges", "--search-ranges-images", "--search-ranges-sweeps", "--activation-bits",
                            "--auto", "--act-fallback-bits", "--max-drop", "--prefer", "--data", "--class-axis",
                            "--threshold", "--group-size", "--save-config", "--config", "--report", "--compare"})
        if (q->count(o)) qf.static_only_given.push_back(o);
      PERCH_CHECK(qf.dynamic || !q->count("--dynamic-ops"), "--dynamic-ops needs --dynamic");
      return cmd_quantize(qf, as_json, df);
    }
    if (sens->parsed())
      return cmd_sensitivity(sf, as_json, df);
    if (e->parsed() && e->count("--engine")) return perch::cli::cmd_eval_engine(model_path, engine, data_spec, batch, as_json, df.options());
    if (e->parsed()) return cmd_eval(model_path, data_spec, batch, as_json, df);
    if (bench.sub->parsed()) return bench.run();
    if (r->parsed()) return cmd_run(model_path, inputs, out_dir, run_engine, as_json);
    if (ins->parsed()) return cmd_inspect(model_path, as_json);
    if (auto rc = run_train()) return *rc;
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "perch: error: %s\n", ex.what());
    return 1;
  }
  return 0;
}
