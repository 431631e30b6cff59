// perch bench, and perch eval --engine: the engines side by side (fp32/sim executor, integer executor).
//
//   perch eval MODEL.onnx --engine int8|sim|fp32   top-1 accuracy with the chosen engine
//   perch bench MODEL.onnx [--batch B | --shape D1,D2,...] [--threads T] [--engine int8|fp32|sim] [--iters N]
//               [--warmup W] [--warmup-ms T] [--json]
//               [--profile]
// bench times run() alone on a fixed random input (made once, outside the timing), like tools/ort/bench.js:
// median / p10 / p90 latency in ms and images per second at the median.
// Warm-up runs until both W runs and T ms have passed: this machine's vCPUs run a fresh process ~20 % slower for its
// first ~0.3 s of work (a run of mbv2 int8 at batch 64: 3.1 ms, then 2.5 ms from the ~100th run on; the same speed-up
// from the start when a busy loop ran on that vCPU just before), so a count alone measured the CPU's ramp, and a
// process that had been busy longer (node loading ONNX Runtime) came out ahead. tools/ort/bench.js warms up alike.
#include "cmd_bench.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "perch/core/progress.h"
#include "perch/core/threads.h"
#include "perch/data/npy.h"
#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/graph/passes.h"
#include "perch/ptq/evaluate.h"
#include "perch/ptq/validate.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"

namespace perch::cli {

using json = nlohmann::json;

namespace {

// One engine behind a run function (inputs by name -> the first output):
//   int8  the integer executor (runtime/int8_executor.h, Int8Mode::kInteger)
//   sim   its exact simulation (Int8Mode::kSimulate: float kernels over integer values; bit-identical to int8)
//   fp32  the float executor: the float network, or on a QDQ model the classic fake-quant simulation
//         (float conv then QuantizeLinear, as ONNX defines QDQ; differs from int8 by rounding, docs/INTEGER.md)
struct Engine {
  ptq::FeedsRun run_feeds;                 // inputs by name -> the first output
  std::function<const graph::Model&()> model;
  std::string source, input_name;
  Shape input_shape;  // as declared (-1 for dynamic dims)
  std::string lowering;  // int8: Int8Report::summary()
  int64_t float_nodes = 0;
  std::function<void()> enable_profiling;              // per-step timing from now on (runtime/profile.h)
  std::function<std::vector<runtime::StepTime>()> profile;
};

// Q/DQ pairs, or ONNX's integer ops (a QOperator model, or a dynamically quantized one: DynamicQuantizeLinear into
// MatMulInteger / ConvInteger, which both engines run as the integer ops they are).
bool is_quantized(const graph::Model& m) {
  return std::any_of(m.graph.nodes.begin(), m.graph.nodes.end(), ptq::is_quantization_op);
}

Engine make_engine(const std::string& model_path, const std::string& engine) {
  PERCH_CHECK(engine == "int8" || engine == "sim" || engine == "fp32", "--engine '", engine,
              "': expected int8, sim or fp32");
  graph::Model model = graph::load_model(model_path);
  graph::canonicalize(model);
  PERCH_CHECK(!model.graph.inputs.empty(), model_path, ": the model has no graph input");
  Engine e;
  e.source = model_path;
  e.input_name = model.graph.inputs[0].name;
  e.input_shape = model.graph.inputs[0].shape;
  if (engine == "int8" || engine == "sim") {
    PERCH_CHECK(is_quantized(model), model_path, ": --engine ", engine, " needs a quantized model (QDQ, or ONNX integer ops); this one has ",
                "no QuantizeLinear/DequantizeLinear nor integer ops (quantize it with `perch quantize`, or use --engine fp32)");
    auto ex = std::make_shared<runtime::Int8Executor>(
        std::move(model), engine == "int8" ? runtime::Int8Mode::kInteger : runtime::Int8Mode::kSimulate);
    e.lowering = ex->report().summary();
    e.float_nodes = ex->report().float_nodes();
    e.run_feeds = [ex](const runtime::TensorMap& in) { return ex->run(in).at(ex->output_name()); };
    e.model = [ex]() -> const graph::Model& { return ex->model(); };
    e.enable_profiling = [ex] { ex->enable_profiling(); };
    e.profile = [ex] { return ex->profile(); };
  } else {
    auto ex = std::make_shared<runtime::Executor>(std::move(model));
    e.run_feeds = [ex](const runtime::TensorMap& in) { return ex->run(in).at(ex->output_name()); };
    e.model = [ex]() -> const graph::Model& { return ex->model(); };
    e.enable_profiling = [ex] { ex->enable_profiling(); };
    e.profile = [ex] { return ex->profile(); };
  }
  return e;
}

// The first input `x`, and every other graph input: from --input NAME=FILE.npy, or random uniform [-2, 2) for a float
// input whose dims after the first (the batch, n) are static; anything else is refused, naming the input.
runtime::TensorMap bench_feeds(const Engine& e, const std::vector<std::string>& inputs, const std::string& model,
                               const Tensor& x, int64_t n, std::mt19937& rng) {
  const auto& ins = e.model().graph.inputs;
  std::map<std::string, std::string> given;
  for (const std::string& spec : inputs) {
    const size_t eq = spec.find('=');
    PERCH_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "--input '", spec, "': expected NAME=FILE.npy");
    const std::string name = spec.substr(0, eq);
    PERCH_CHECK(name != e.input_name, "--input ", name, ": the first input gets random values (--batch / --shape)");
    PERCH_CHECK(std::any_of(ins.begin(), ins.end(), [&](const auto& in) { return in.name == name; }), "--input ", name,
                ": ", model, " has no input named '", name, "'");
    PERCH_CHECK(given.emplace(name, spec.substr(eq + 1)).second, "--input ", name, " is given twice");
  }
  runtime::TensorMap feeds{{e.input_name, x}};
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (const auto& in : ins) {
    if (in.name == e.input_name) continue;
    if (auto g = given.find(in.name); g != given.end()) {
      feeds.emplace(in.name, read_npy(g->second));
      continue;
    }
    bool fixed = in.dtype == DType::kFloat32 && in.has_shape && !in.shape.empty();
    Shape s = in.shape;
    for (size_t d = 1; fixed && d < s.size(); ++d) fixed = s[d] > 0;
    PERCH_CHECK(fixed, model, ": input '", in.name, "' (", dtype_name(in.dtype), " ", shape_str(in.shape),
                ") cannot be made up: give its value with --input ", in.name, "=FILE.npy");
    s[0] = s[0] > 0 ? s[0] : n;
    Tensor t(DType::kFloat32, s);
    for (float& v : t.span<float>()) v = u(rng);
    feeds.emplace(in.name, std::move(t));
  }
  return feeds;
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = (static_cast<double>(v.size()) - 1) * q;
  const size_t lo = static_cast<size_t>(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

int cmd_eval_engine(const std::string& model_path, const std::string& engine, const std::string& spec, int64_t batch,
                    bool as_json, const DataOptions& data_options) {
  Engine e = make_engine(model_path, engine);
  // Float fallbacks are never silent: listed on stderr, and counted in --json ("float_nodes").
  if (e.float_nodes > 0 && !quiet()) std::fprintf(stderr, "perch: note: %s\n", e.lowering.c_str());
  Dataset data = load_dataset(spec, data_options);
  PERCH_CHECK(batch >= 1, "--batch must be >= 1, got ", batch);
  auto r = ptq::evaluate(e.run_feeds, e.model(), data, batch, "evaluating (" + engine + ")");
  if (as_json) {
    json j{{"model", model_path}, {"engine", engine}, {"data", data.name}, {"accuracy", r.accuracy()},
           {"count", r.count}, {"correct", r.correct}, {"seconds", r.seconds}};
    if (engine == "int8") j["float_nodes"] = e.float_nodes;
    std::cout << j.dump() << "\n";
  } else {
    std::printf("%s on %s (%s engine): top-1 %.4f (%lld/%lld) in %.2fs\n", model_path.c_str(), data.name.c_str(),
                engine.c_str(), r.accuracy(), static_cast<long long>(r.correct), static_cast<long long>(r.count), r.seconds);
  }
  return 0;
}

BenchCommand::BenchCommand(CLI::App& app) {
  sub = app.add_subcommand("bench", "median latency and throughput of a model on random input (int8 or fp32 engine)");
  sub->add_option("model", model, "ONNX model (QDQ for --engine int8/sim)")->required();
  sub->add_option("--batch", batch, "batch size")->capture_default_str();
  sub->add_option("--threads", threads, "threads (0: PERCH_NUM_THREADS or all hardware threads)")->capture_default_str();
  sub->add_option("--engine", engine, "int8 | fp32 | sim")->capture_default_str();
  sub->add_option("--iters", iters, "timed runs")->capture_default_str();
  sub->add_option("--warmup", warmup, "untimed runs first (at least this many)")->capture_default_str();
  sub->add_option("--warmup-ms", warmup_ms, "untimed runs first for at least this long (the CPU's clock ramps up)")
      ->capture_default_str();
  sub->add_option("--seed", seed, "seed of the random input")->capture_default_str();
  sub->add_option("--shape", shape,
                  "the input's full shape D1,D2,... (its first dim is the batch; needed when the model leaves dims "
                  "after the batch dynamic, e.g. 8,3,48,320)");
  sub->add_option("--input", inputs,
                  "NAME=FILE.npy: the value of another model input (its first dim: the batch); float inputs with "
                  "static dims after the batch get random values when not given");
  sub->add_flag("--json", as_json, "print one JSON object on stdout");
  sub->add_flag("--profile", profile,
                "also time every step (node or fused integer op) and print where the time goes (adds ~40 ns a step)");
}

int BenchCommand::run() const {
  PERCH_CHECK(batch >= 1, "--batch must be >= 1, got ", batch);
  PERCH_CHECK(iters >= 1, "--iters must be >= 1, got ", iters);
  PERCH_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  PERCH_CHECK(warmup_ms >= 0, "--warmup-ms must be >= 0, got ", warmup_ms);
  PERCH_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  set_num_threads(threads);
  Engine e = make_engine(model, engine);
  if (e.float_nodes > 0 && !as_json && !quiet()) std::fprintf(stderr, "perch: note: %s\n", e.lowering.c_str());
  Shape in_shape = e.input_shape;
  int64_t n = batch;
  if (!shape.empty()) {  // --shape: every dim given, the first one is the batch
    in_shape.clear();
    std::stringstream ss(shape);
    for (std::string d; std::getline(ss, d, ',');) {
      char* end = nullptr;
      const long long v = std::strtoll(d.c_str(), &end, 10);
      PERCH_CHECK(!d.empty() && end && *end == '\0' && v >= 1, "--shape '", shape, "': dims must be positive integers");
      in_shape.push_back(v);
    }
    PERCH_CHECK(e.input_shape.empty() || in_shape.size() == e.input_shape.size(), "--shape '", shape, "' has ",
                in_shape.size(), " dims, input '", e.input_name, "' of ", model, " has ", e.input_shape.size(), " (",
                shape_str(e.input_shape), ")");
    for (size_t d = 0; d < in_shape.size() && d < e.input_shape.size(); ++d)
      PERCH_CHECK(e.input_shape[d] < 0 || e.input_shape[d] == in_shape[d] || d == 0, "--shape '", shape, "': dim ", d,
                  " is ", in_shape[d], ", input '", e.input_name, "' of ", model, " fixes it to ", e.input_shape[d]);
    PERCH_CHECK(sub->count("--batch") == 0 || batch == in_shape[0], "--batch ", batch, " and --shape '", shape,
                "' disagree on the batch (--shape's first dim)");
    n = in_shape[0];
  }
  PERCH_CHECK(!in_shape.empty(), model, ": input '", e.input_name, "' has no shape (bench needs one: --shape)");
  in_shape[0] = n;
  for (size_t d = 1; d < in_shape.size(); ++d)
    PERCH_CHECK(in_shape[d] > 0, model, ": input '", e.input_name, "' has a dynamic dim ", d, " (",
                shape_str(e.input_shape), "): give the full input shape with --shape D1,D2,...");
  // Uniform [-2, 2): the range of normalized pixels (like tools/ort/bench.js).
  Tensor x(DType::kFloat32, in_shape);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (float& v : x.span<float>()) v = u(rng);
  const runtime::TensorMap feeds = bench_feeds(e, inputs, model, x, n, rng);
  const auto w0 = std::chrono::steady_clock::now();
  int64_t warm_runs = 0;
  for (; warm_runs < warmup ||
         std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count() < warmup_ms;
       ++warm_runs)
    (void)e.run_feeds(feeds);
  if (profile) e.enable_profiling();
  std::vector<double> ms;
  for (int64_t i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor y = e.run_feeds(feeds);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const double med = quantile(ms, 0.5), p10 = quantile(ms, 0.1), p90 = quantile(ms, 0.9);
  const double ips = static_cast<double>(n) / (med / 1000.0);
  // Profile: mean time per run of every step (sum over the timed runs / iters), its share of the steps' total.
  std::vector<runtime::StepTime> steps = profile ? e.profile() : std::vector<runtime::StepTime>{};
  double steps_ms = 0.0;
  for (const auto& s : steps) steps_ms += s.total_ms;
  if (as_json) {
    json j{{"model", model}, {"engine", engine}, {"batch", n}, {"shape", in_shape}, {"threads", num_threads()}, {"iters", iters},
           {"warmup_runs", warm_runs},
           {"median_ms", med}, {"p10_ms", p10}, {"p90_ms", p90}, {"images_per_second", ips}, {"times_ms", ms}};
    if (engine == "int8") j["float_nodes"] = e.float_nodes;
    if (profile) {
      json p = json::array();
      for (const auto& s : steps)
        p.push_back({{"node", s.node}, {"what", s.what}, {"calls_per_run", static_cast<double>(s.calls) / static_cast<double>(iters)},
                     {"ms_per_run", s.total_ms / static_cast<double>(iters)},
                     {"share", steps_ms > 0 ? s.total_ms / steps_ms : 0.0}});
      j["profile"] = p;
    }
    std::cout << j.dump() << "\n";
  } else {
    std::printf("%s (%s, batch %lld, %d thread%s): median %.4f ms (p10 %.4f, p90 %.4f), %.0f images/s\n", model.c_str(),
                engine.c_str(), static_cast<long long>(n), num_threads(), num_threads() == 1 ? "" : "s", med, p10,
                p90, ips);
    if (profile) {
      // Mean per run (the median above is of whole runs; the steps' sum is their mean plus the timing overhead).
      std::printf("%10s %6s  %s\n", "ms/run", "share", "step (node: what it runs)");
      for (const auto& s : steps)
        std::printf("%10.4f %5.1f%%  %s: %s\n", s.total_ms / static_cast<double>(iters),
                    steps_ms > 0 ? 100.0 * s.total_ms / steps_ms : 0.0, s.node.c_str(), s.what.c_str());
      std::printf("%10.4f %5.1f%%  all steps (mean per run)\n", steps_ms / static_cast<double>(iters), 100.0);
    }
  }
  return 0;
}

}  // namespace perch::cli
