// perch/core/error.h — the one exception type perch throws, and the check macro.
//
// Every error message names what it is about (file, model, node, tensor, index), so a user who sees it
// knows where to look without a debugger. Build messages with PERCH_FAIL(a, b, c...) — the arguments
// are streamed together.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace perch {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace perch

#define PERCH_FAIL(...) throw ::perch::Error(::perch::detail::concat(__VA_ARGS__))
#define PERCH_CHECK(cond, ...)                 \
  do {                                         \
    if (!(cond)) PERCH_FAIL(__VA_ARGS__);      \
  } while (0)
