// perch::parallel_for: covers the range exactly once, respects the grain, nests inline, propagates
// exceptions, and works for every pool size.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "perch/core/threads.h"

namespace perch {
namespace {

TEST(Threads, EveryIndexExactlyOnce) {
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    EXPECT_EQ(num_threads(), threads);
    for (int64_t n : {0, 1, 7, 100, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      parallel_for(3, 3 + n, [&](int64_t lo, int64_t hi) {
        ASSERT_LE(3, lo);
        ASSERT_LE(hi, 3 + n);
        for (int64_t i = lo; i < hi; ++i) hits[static_cast<size_t>(i - 3)].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "threads " << threads << " i " << i;
    }
  }
  set_num_threads(0);
}

TEST(Threads, GrainAndNesting) {
  set_num_threads(2);
  std::atomic<int64_t> total{0};
  parallel_for(0, 100, [&](int64_t lo, int64_t hi) {
    if (hi != 100) {
      EXPECT_GE(hi - lo, 30);  // only the last chunk may be short
    }
    parallel_for(lo, hi, [&](int64_t a, int64_t b) { total += b - a; });  // runs inline
  }, 30);
  EXPECT_EQ(total.load(), 100);
  set_num_threads(0);
}

TEST(Threads, ExceptionReachesCaller) {
  set_num_threads(2);
  EXPECT_THROW(parallel_for(0, 64, [](int64_t lo, int64_t) {
                 if (lo == 0) throw std::runtime_error("boom");
               }),
               std::runtime_error);
  // The pool still works afterwards.
  std::atomic<int64_t> total{0};
  parallel_for(0, 64, [&](int64_t lo, int64_t hi) { total += hi - lo; });
  EXPECT_EQ(total.load(), 64);
  set_num_threads(0);
}

}  // namespace
}  // namespace perch
