// libFuzzer target: IDX parsing (magic, type code, dims, size checks) and re-encoding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "perch/core/error.h"
#include "perch/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const perch::Tensor t = perch::parse_idx(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.idx");
    const perch::Tensor back = perch::parse_idx(perch::encode_idx(t), "fuzz-reencoded.idx");
    if (back.shape() != t.shape() || back.dtype() != t.dtype()) __builtin_trap();
  } catch (const perch::Error&) {
  }
  return 0;
}
