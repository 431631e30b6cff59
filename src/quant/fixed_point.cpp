#include "perch/quant/fixed_point.h"

#include <cmath>

#include "perch/core/error.h"

namespace perch::quant {

FixedPointMultiplier quantize_multiplier(double real) {
  PERCH_CHECK(std::isfinite(real) && real >= 0.0, "quantize_multiplier: multiplier must be finite and >= 0, got ",
              real);
  if (real == 0.0) return {};
  int e = 0;
  const double q = std::frexp(real, &e);  // real = q * 2^e, q in [0.5, 1)
  // q has 53 significant bits, so q * 2^31 is exact and std::round (ties away from zero) rounds once.
  auto mult = static_cast<int64_t>(std::round(q * 2147483648.0));
  if (mult == (int64_t{1} << 31)) {
    mult /= 2;
    ++e;
  }
  if (e < -31) return {};  // M < 2^-32: |x * M| < 0.5 for every int32 x
  return {static_cast<int32_t>(mult), static_cast<int32_t>(e)};
}

double multiplier_to_double(FixedPointMultiplier m) { return std::ldexp(static_cast<double>(m.multiplier), m.shift - 31); }

}  // namespace perch::quant
