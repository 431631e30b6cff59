// Helpers shared by the command-line tests: the perch binary, ONNX Runtime's scripts, per-test scratch folders.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "test_util.h"

namespace perch::test::cli {

inline std::string q(const std::filesystem::path& p) { return shell_quote(p); }
inline std::string perch_bin() { return q(binary_dir() / "perch"); }
// tools/ort: npm onnxruntime-node and the scripts that drive it (run.js, eval.js, optimize.js, bench.js).
inline std::filesystem::path ort_dir() { return source_dir() / "tools" / "ort"; }
inline bool ort_installed() { return std::filesystem::exists(ort_dir() / "node_modules" / "onnxruntime-node"); }

// An empty folder build/test_scratch/<name> (removed and recreated).
inline std::filesystem::path scratch(const std::string& name) {
  std::filesystem::path d = binary_dir() / "test_scratch" / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace perch::test::cli

// ONNX Runtime must be there: scripts/setup.sh (part of the README's test command) installs it. Fails the test
// (and returns from it) when it is not.
#define PERCH_REQUIRE_ORT() \
  ASSERT_TRUE(::perch::test::cli::ort_installed()) << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh"
