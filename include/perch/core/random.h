// perch/core/random.h — perch's one pseudo-random generator: SplitMix64 (Steele, Lea & Flood 2014).
//
// Tiny, well mixed, and the same numbers on every platform and standard library (std:: distributions are
// implementation-defined), so seeded calibration samples, shuffles, augmentations and initializations
// reproduce everywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

namespace perch {

struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0, without modulo bias (rejection).
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }
  // Uniform in (0, 1): 53 random bits, centred in their cell.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  // Standard normal by Box-Muller (one of the pair).
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * std::numbers::pi * uniform()); }
};

}  // namespace perch
