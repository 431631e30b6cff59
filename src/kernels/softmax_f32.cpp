// softmax_rows_f32: the reference twin and the dispatch (perch/kernels/softmax_f32.h).
#include "perch/kernels/softmax_f32.h"

#include <algorithm>
#include <cmath>

#include "f32_avx512.h"
#include "perch/core/cpu.h"
#include "perch/core/threads.h"

namespace perch::kernels {

void softmax_rows_f32_reference(const float* x, int64_t rows, int64_t len, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xp = x + r * len;
    float* yp = y + r * len;
    float m = -INFINITY;
    for (int64_t j = 0; j < len; ++j) m = std::max(m, xp[j]);
    double s = 0;
    for (int64_t j = 0; j < len; ++j) s += (yp[j] = std::exp(xp[j] - m));
    for (int64_t j = 0; j < len; ++j) yp[j] = static_cast<float>(yp[j] / s);
  }
}

void softmax_rows_f32(const float* x, int64_t rows, int64_t len, float* y) {
  const bool simd = has_path(active_paths(), Path::kAvx512Vnni) && avx512::compiled();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(len, 1));
  parallel_for(0, rows, [&](int64_t r0, int64_t r1) {
    if (simd)
      avx512::softmax_rows(x + r0 * len, r1 - r0, len, y + r0 * len);
    else
      softmax_rows_f32_reference(x + r0 * len, r1 - r0, len, y + r0 * len);
  }, grain);
}

}  // namespace perch::kernels
