#!/usr/bin/env bash
# Builds perch with AddressSanitizer + UndefinedBehaviorSanitizer (preset asan: -O1, build/asan) and runs
# the whole test suite under it. Extra arguments go to ctest (e.g. -R Cli). Set PERCH_TSAN=1 to also build
# and run the ThreadSanitizer preset (build/tsan). Jobs: $PERCH_SANITIZE_JOBS (default: the presets' 1).
# Assumes scripts/setup.sh has run (scripts/test.sh does that first).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
jobs=()
[ -n "${PERCH_SANITIZE_JOBS:-}" ] && jobs=(-j "$PERCH_SANITIZE_JOBS")
presets=(asan)
[ "${PERCH_TSAN:-0}" = 1 ] && presets+=(tsan)
for p in "${presets[@]}"; do
  start=$(date +%s)
  cmake --preset "$p" >/dev/null
  cmake --build --preset "$p" "${jobs[@]}"
  built=$(date +%s)
  ctest --preset "$p" "$@"
  echo "test-sanitizers.sh: $p: build $((built - start)) s, tests $(($(date +%s) - built)) s"
done
