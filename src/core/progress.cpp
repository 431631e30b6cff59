#include "perch/core/progress.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

namespace perch {

namespace {
std::atomic<bool> g_quiet{false};
}

void set_quiet(bool q) { g_quiet = q; }
bool quiet() { return g_quiet; }

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(isatty(2) != 0), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_ && tty_ && last_pct_ >= 0 && !quiet()) std::fputc('\n', stderr);
}

void Progress::update(int64_t done, const std::string& extra) {
  if (quiet() || total_ <= 0) return;
  const int64_t pct = done * 100 / total_;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (pct == last_pct_ && now - last_draw_ < std::chrono::milliseconds(200)) return;
    const int width = 30, filled = static_cast<int>(width * done / total_);
    const double secs = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "\r%-14s [%.*s%*s] %3lld%% %lld/%lld %.1fs %s\033[K", label_.c_str(), filled,
                 "##############################", width - filled, "", static_cast<long long>(pct),
                 static_cast<long long>(done), static_cast<long long>(total_), secs, extra.c_str());
  } else {
    if (pct / 10 == last_pct_ / 10 && last_pct_ >= 0) return;
    std::fprintf(stderr, "%s: %lld%% (%lld/%lld) %s\n", label_.c_str(), static_cast<long long>(pct),
                 static_cast<long long>(done), static_cast<long long>(total_), extra.c_str());
  }
  std::fflush(stderr);
  last_pct_ = pct;
  last_draw_ = now;
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  if (quiet()) return;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s: done, %lld in %.2fs %s\n", label_.c_str(), static_cast<long long>(total_), secs, extra.c_str());
}

}  // namespace perch
