// Shared pieces of the kernel tests: a deterministic generator, the path sets every optimized kernel is run
// on, and the float error bound all comparisons use.
//
// Tolerance policy (all kernel tests). Products of two floats are exact in double, so a double-precision
// loop is the exact value up to ~K * 2^-53 relative to S = sum |a_i b_i| (+ |bias|, |beta c|): that is the
// reference "truth". A float result computed with any summation order (blocked BLAS, FMA, vectorized) is
// within gamma_n * S of it, gamma_n = n u / (1 - n u), u = 2^-24, n = number of terms summed (Higham,
// "Accuracy and Stability of Numerical Algorithms", 3.1). Kernels documented to accumulate in double and
// round once (the *_reference twins, pooling averages) must be within u |exact| + 2 K 2^-53 S. Never a
// fixed epsilon: the bound scales with the data, so a wrong index or a dropped term (error ~ S) fails.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "perch/core/cpu.h"

namespace perch::kernels::test {

// SplitMix64: the same numbers on every platform (std distributions are implementation-defined).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int64_t range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1)); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() >> 40) * 0x1p-24f; }
  std::vector<float> vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
    std::vector<float> v(n);
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }

 private:
  uint64_t s_;
};

inline double unit_roundoff() { return std::ldexp(1.0, -24); }
// gamma_n: worst-case relative error of an n-term float sum in any order.
inline double gamma_n(int64_t n) {
  const double nu = static_cast<double>(n) * unit_roundoff();
  return nu / (1.0 - nu);
}
// Bound for a kernel that accumulates in double and rounds once to float.
inline double double_acc_bound(double exact, double S, int64_t terms) {
  return unit_roundoff() * std::fabs(exact) + 2.0 * static_cast<double>(terms) * std::ldexp(1.0, -53) * S;
}

// Restores the environment's path choice when the test ends.
struct PathGuard {
  explicit PathGuard(uint32_t paths) { set_paths_for_testing(paths); }
  ~PathGuard() { set_paths_for_testing(0); }
};

struct PathSet {
  const char* name;
  uint32_t paths;
};
// Reference only (dispatch must fall back to the twin), portable optimized, and everything this CPU has.
inline std::vector<PathSet> path_sets() {
  return {{"reference", static_cast<uint32_t>(Path::kReference)},
          {"optimized", Path::kReference | Path::kOptimized},
          {"all_supported", supported_paths()}};
}

}  // namespace perch::kernels::test
