// Subcommands defined outside main.cpp register themselves on the CLI11 app and return a runner: after
// parsing, the runner executes whichever of its subcommands was given and returns its exit code, or
// nullopt if none of them was.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <optional>

namespace perch::cli {

// `perch train`, `perch qat` (cmd_train.cpp).
std::function<std::optional<int>()> add_train_commands(CLI::App& app, bool& as_json);

}  // namespace perch::cli
