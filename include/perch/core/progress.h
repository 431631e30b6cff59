// perch/core/progress.h — progress bars on stderr for long work (calibration, evaluation, training).
//
// Silenced globally by set_quiet(true) (the CLI's --quiet and --json). On a terminal the bar redraws in
// place; otherwise (CI logs) it prints a line at most every 10 % so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace perch {

void set_quiet(bool quiet);
bool quiet();

// Quiet for its lifetime, then as before (an inner step whose notes the caller repeats later).
class ScopedQuiet {
 public:
  ScopedQuiet() : was_(quiet()) { set_quiet(true); }
  ~ScopedQuiet() { set_quiet(was_); }
  ScopedQuiet(const ScopedQuiet&) = delete;
  ScopedQuiet& operator=(const ScopedQuiet&) = delete;

 private:
  bool was_;
};

class Progress {
 public:
  Progress(std::string label, int64_t total);
  ~Progress();
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");

 private:
  std::string label_;
  int64_t total_;
  int64_t last_pct_ = -1;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace perch
