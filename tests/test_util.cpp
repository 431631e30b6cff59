#include "test_util.h"

#include <cstdlib>

namespace perch::test {

std::filesystem::path source_dir() { return PERCH_SOURCE_DIR; }
std::filesystem::path binary_dir() { return PERCH_BINARY_DIR; }

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("PERCH_SHARED_DIR"); env && *env) {
    if (std::filesystem::is_directory(env)) return env;
  }
  auto p = source_dir().parent_path() / "shared";
  if (std::filesystem::is_directory(p)) return p;
  return {};
}

std::filesystem::path shared_model(const std::string& name) {
  auto s = shared_dir();
  if (s.empty()) return {};
  auto p = s / "models" / name;
  return std::filesystem::exists(p) ? p : std::filesystem::path{};
}

std::filesystem::path onnx_node_test_dir() { return "/usr/share/libonnx-testdata/data/node"; }

}  // namespace perch::test
