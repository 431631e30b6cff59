#include "perch/core/cpu.h"

#include <atomic>
#include <cstdlib>
#include <sstream>

#include "perch/core/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace perch {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  f.fma = (c >> 12) & 1;
  if (!osxsave) return f;
  unsigned xlo, xhi;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool ymm_ok = (xlo & 0x6) == 0x6;
  const bool zmm_ok = (xlo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = ymm_ok && ((b >> 5) & 1);
  f.fma = f.fma && ymm_ok;
  f.avx512f = zmm_ok && ((b >> 16) & 1);
  f.avx512bw = zmm_ok && ((b >> 30) & 1);
  f.avx512vl = zmm_ok && ((b >> 31) & 1);
  f.avx512vnni = zmm_ok && ((c >> 11) & 1);
  f.avx512vbmi = zmm_ok && ((c >> 1) & 1);
  const bool tiles_saved = ((xlo >> 17) & 3) == 3;  // XTILECFG, XTILEDATA
  f.amx_int8 = tiles_saved && ((d >> 24) & 1) && ((d >> 25) & 1);
#if defined(__linux__)
  // Linux hands out the 8 KiB tile data state per process, on request (kernel 5.16+): without it TILELOADD faults.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (f.amx_int8) f.amx_int8 = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#endif
#endif
  return f;
}

uint32_t parse_paths(const char* s) {
  uint32_t out = static_cast<uint32_t>(Path::kReference);
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item == "reference") continue;
    else if (item == "optimized") out |= static_cast<uint32_t>(Path::kOptimized);
    else if (item == "avx2") out |= Path::kOptimized | Path::kAvx2;
    else if (item == "avx512vnni") out |= Path::kOptimized | Path::kAvx512Vnni;
    else if (item == "amx") out |= Path::kOptimized | Path::kAvx512Vnni | static_cast<uint32_t>(Path::kAmx);
    else if (item == "all") out = ~0u;
    else PERCH_FAIL("PERCH_PATHS: unknown path '", item, "' (known: reference, optimized, avx2, avx512vnni, amx, all)");
  }
  return out;
}

std::atomic<uint32_t> g_override{0};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

uint32_t supported_paths() {
  static const uint32_t paths = [] {
    const auto& f = cpu_features();
    uint32_t p = Path::kReference | Path::kOptimized;
    if (f.avx2 && f.fma) p |= static_cast<uint32_t>(Path::kAvx2);
    if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni) p |= static_cast<uint32_t>(Path::kAvx512Vnni);
    if (has_path(p, Path::kAvx512Vnni) && f.amx_int8) p |= static_cast<uint32_t>(Path::kAmx);
    return p;
  }();
  return paths;
}

uint32_t active_paths() {
  if (uint32_t o = g_override.load()) return o & supported_paths();
  static const uint32_t env = [] {
    const char* s = std::getenv("PERCH_PATHS");
    return (s && *s) ? parse_paths(s) : ~0u;
  }();
  return env & supported_paths();
}

void set_paths_for_testing(uint32_t paths) { g_override.store(paths); }

std::string paths_string(uint32_t paths) {
  std::string s;
  auto add = [&](Path p, const char* n) {
    if (!has_path(paths, p)) return;
    if (!s.empty()) s += ',';
    s += n;
  };
  add(Path::kReference, "reference");
  add(Path::kOptimized, "optimized");
  add(Path::kAvx2, "avx2");
  add(Path::kAvx512Vnni, "avx512vnni");
  add(Path::kAmx, "amx");
  return s;
}

}  // namespace perch
