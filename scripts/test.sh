#!/usr/bin/env bash
# Sets up a fresh machine, builds, and runs every test (CTest: unit, conformance, ONNX Runtime interop,
# bounded fuzzing when clang is installed). Tests that need ../shared/models skip visibly when it is absent.
# PERCH_SANITIZE=1 also builds and runs the whole suite under ASan + UBSan (scripts/test-sanitizers.sh;
# docs/RELIABILITY.md has its cost).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/setup.sh"
"$here/scripts/build.sh"
cd "$here"
ctest --preset release "$@"
if [ "${PERCH_SANITIZE:-0}" = 1 ]; then
  "$here/scripts/test-sanitizers.sh" "$@"
fi
