// libFuzzer target: NumPy .npy parsing (header dictionary, descr, shape, versions, sizes) and re-encoding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "perch/core/error.h"
#include "perch/data/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const perch::Tensor t = perch::parse_npy(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.npy");
    const perch::Tensor back = perch::parse_npy(perch::encode_npy(t), "fuzz-reencoded.npy");
    if (back.shape() != t.shape() || back.dtype() != t.dtype()) __builtin_trap();
  } catch (const perch::Error&) {
  }
  return 0;
}
