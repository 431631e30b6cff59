// perch bench / perch eval --engine (cmd_bench.cpp): declarations for main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "perch/data/dataset.h"

namespace perch::cli {

// perch eval MODEL --engine int8|sim|fp32.
int cmd_eval_engine(const std::string& model_path, const std::string& engine, const std::string& spec, int64_t batch,
                    bool as_json, const DataOptions& data_options);

// perch bench: registers the subcommand and its flags on construction; run() when sub->parsed().
struct BenchCommand {
  explicit BenchCommand(CLI::App& app);
  int run() const;

  CLI::App* sub = nullptr;
  std::string model, engine = "int8";
  int64_t batch = 1, iters = 100, warmup = 10, seed = 1;
  double warmup_ms = 500.0;
  std::string shape;  // --shape D1,D2,...: the input's full shape (models with dynamic dims)
  // --input NAME=FILE.npy: the value of another graph input (models with several inputs; float inputs of static
  // shape get random values like the first one when not given).
  std::vector<std::string> inputs;
  int threads = 0;
  bool as_json = false;
  bool profile = false;
};

}  // namespace perch::cli
