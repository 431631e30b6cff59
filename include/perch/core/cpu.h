// perch/core/cpu.h — implementation paths and the CPU features that enable them.
//
// The CPU is inspected once (first call). Kernels ask `active_paths()` and pick the best path it
// contains. The environment variable PERCH_PATHS forces a subset, so one machine can test every path:
//   PERCH_PATHS=reference        plain C++ only (the reference twins)
//   PERCH_PATHS=reference,avx2   at most AVX2
//   PERCH_PATHS=avx512vnni       (reference is always kept as the fallback; no AMX)
//   PERCH_PATHS=amx              AVX-512 VNNI with AMX tiles for the int8 GEMM
// Asking for a path the CPU lacks is not an error: it is dropped (tests skip such paths).
#pragma once

#include <cstdint>
#include <string>

namespace perch {

enum class Path : uint32_t {
  kReference = 1u << 0,   // plain C++, the reference twin of every kernel
  kOptimized = 1u << 1,   // portable optimized code (BLAS, blocked loops) — no ISA requirement
  kAvx2 = 1u << 2,        // AVX2 + FMA
  kAvx512Vnni = 1u << 3,  // AVX-512 F/BW/VL + VNNI (VPDPBUSD)
  kAmx = 1u << 4,         // AVX-512 VNNI plus AMX-INT8 tiles (TDPBUSD) for the int8 GEMM, the OS granting the tile state
};

constexpr uint32_t operator|(Path a, Path b) { return static_cast<uint32_t>(a) | static_cast<uint32_t>(b); }
constexpr bool has_path(uint32_t set, Path p) { return (set & static_cast<uint32_t>(p)) != 0; }

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
  bool avx512vbmi = false;  // VPERMB / VPERMI2B (Ice Lake, Zen 4 and later): byte tables in registers
  // AMX-TILE + AMX-INT8 (Sapphire Rapids and later), the OS saving the tile state (XCR0 bits 17, 18) and, on Linux,
  // granting this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, requested once at detection).
  bool amx_int8 = false;
};

const CpuFeatures& cpu_features();
// Paths the CPU supports (detected once).
uint32_t supported_paths();
// supported_paths() restricted by PERCH_PATHS (read once) or by set_paths_for_testing.
uint32_t active_paths();
// Overrides the active set (tests); pass 0 to go back to the environment's choice.
void set_paths_for_testing(uint32_t paths);
std::string paths_string(uint32_t paths);

}  // namespace perch
